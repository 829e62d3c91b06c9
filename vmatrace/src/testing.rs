//! Test support shared by unit and integration tests.

/// Record that a test could not run here and why. The test then returns early; libtest
/// counts it as passed, so `cargo xtask test` reads `$VMATRACE_SKIP_LOG` and reports it as
/// skipped instead. The same test must really run somewhere (the VM matrix).
pub fn skip(test: &str, reason: &str) {
    eprintln!("SKIP {test}: {reason}");
    if let Some(path) = std::env::var_os("VMATRACE_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {reason}");
        }
    }
}
