//! `cargo xtask test`: every test the project has, in one command.
//!
//! Steps: provisioning, rustfmt, clippy, `cargo test` (unit, integration, eBPF object and
//! verifier tests), then the real-kernel VM matrix. Tests that cannot run on this machine
//! record themselves in `$VMATRACE_SKIP_LOG` (see `vmatrace::testing::skip`); they are
//! reported as skipped, not passed. The last line is the totals.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context, bail};

use crate::util::{cargo, workspace_root};

#[derive(Debug, clap::Args)]
pub struct TestArgs {
    /// Skip the real-kernel VM matrix.
    #[arg(long)]
    pub no_vm: bool,
    /// Skip rustfmt and clippy.
    #[arg(long)]
    pub no_lint: bool,
    /// Skip building the Debian package and its install/purge check.
    #[arg(long)]
    pub no_deb: bool,
    /// Extra arguments for `cargo test` (e.g. a test name filter).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Totals {
    pub passed: u64,
    pub failed: u64,
    pub ignored: u64,
    pub skipped: Vec<String>,
}

/// Parse one of libtest's closing lines:
/// `test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; ...`
pub fn parse_result_line(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let num = |key: &str| -> Option<u64> {
        rest.split(';')
            .find_map(|part| {
                part.trim()
                    .strip_suffix(key)
                    .map(|n| n.trim().rsplit(' ').next().unwrap_or(""))
            })
            .and_then(|n| n.parse().ok())
    };
    Some((
        num(" passed")?,
        num(" failed")?,
        num(" ignored").unwrap_or(0),
    ))
}

fn cargo_test(
    args: &TestArgs,
    totals: &mut Totals,
    skip_log: &std::path::Path,
) -> anyhow::Result<bool> {
    let mut cmd = cargo();
    cmd.current_dir(workspace_root())
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(&args.cargo_args)
        .env("VMATRACE_SKIP_LOG", skip_log)
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some((p, f, i)) = parse_result_line(&line) {
            totals.passed += p;
            totals.failed += f;
            totals.ignored += i;
        }
    }
    Ok(child.wait()?.success())
}

/// The package as a test: built, its contents checked, installed, verified and purged
/// (the install is a skip where it cannot be done: not root, or a vmatrace package
/// already installed).
fn deb_step(totals: &mut Totals, failures: &mut Vec<String>) {
    let r = crate::deb::build().and_then(|deb| {
        crate::deb::check_contents(&deb)?;
        match crate::deb::cannot_install_here() {
            Some(why) => {
                // Counted as passed first, like libtest's skips (`test` subtracts them).
                totals.passed += 1;
                totals.skipped.push(format!("deb install check: {why}"));
                Ok(())
            }
            None => crate::deb::check_install(&deb),
        }
    });
    match r {
        Ok(()) => totals.passed += 1,
        Err(e) => {
            eprintln!("xtask test: deb failed: {e:#}");
            totals.failed += 1;
            failures.push("deb".to_string());
        }
    }
}

fn lint() -> anyhow::Result<()> {
    let root = workspace_root();
    crate::util::run(cargo().current_dir(&root).args(["fmt", "--all", "--check"]))
        .context("rustfmt (run `cargo fmt --all`)")?;
    crate::util::run(cargo().current_dir(&root).args([
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))
    .context("clippy")?;
    Ok(())
}

pub fn test(args: TestArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    crate::setup::setup()?;
    let mut failures = Vec::new();
    if !args.no_lint
        && let Err(e) = lint()
    {
        eprintln!("xtask test: lint failed: {e:#}");
        failures.push("lint".to_string());
    }
    let skip_log = std::env::temp_dir().join(format!("vmatrace-skips-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    let mut totals = Totals::default();
    if !cargo_test(&args, &mut totals, &skip_log)? {
        failures.push("cargo test".to_string());
    }
    if let Ok(s) = std::fs::read_to_string(&skip_log) {
        totals.skipped = s
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect();
    }
    let _ = std::fs::remove_file(&skip_log);
    if !args.no_deb {
        deb_step(&mut totals, &mut failures);
    }
    if !args.no_vm {
        match crate::vm_matrix(&mut totals) {
            Ok(ok) if ok => {}
            Ok(_) => failures.push("vm-test".to_string()),
            Err(e) => {
                eprintln!("xtask test: vm-test failed: {e:#}");
                failures.push("vm-test".to_string());
            }
        }
    }
    // A test that skipped itself returned early and so counted as passed by libtest.
    let skipped = totals.skipped.len() as u64;
    let passed = totals.passed.saturating_sub(skipped);
    if !totals.skipped.is_empty() {
        println!(
            "\nskipped here (each runs in the VM matrix or needs a capability this machine lacks):"
        );
        for s in &totals.skipped {
            println!("  SKIP {s}");
        }
    }
    println!(
        "\nxtask test finished in {:.0}s",
        t0.elapsed().as_secs_f64()
    );
    println!(
        "tests: {passed} passed, {} failed, {skipped} skipped",
        totals.failed
    );
    if !failures.is_empty() {
        bail!("failed steps: {}", failures.join(", "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_result_line;

    #[test]
    fn parses_libtest_summary() {
        let l = "test result: ok. 12 passed; 3 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s";
        assert_eq!(parse_result_line(l), Some((12, 3, 1)));
        assert_eq!(parse_result_line("test foo ... ok"), None);
        assert_eq!(parse_result_line("test result: garbage"), None);
    }
}
