//! Which run of vmatrace produced a record, and when it started: one identity per process,
//! stamped on the summary, every anomaly-log line, snapshots and metrics, so records of
//! two runs appended to one file (or shipped to one index) can be told apart.

use std::sync::OnceLock;

use super::clock::{hostname, realtime_ns, rfc3339};

/// The version and the git revision the binary was built from (`build.rs`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// `git rev-parse --short HEAD` at build time, `-dirty` appended when tracked files had
/// changes; `unknown` when built outside git.
pub const GIT_REVISION: &str = env!("VMATRACE_GIT_REVISION");

#[derive(Clone, Debug)]
pub struct RunIdentity {
    /// A random version-4 UUID, new for every process.
    pub run_id: String,
    /// Wall clock when the process started (RFC 3339 UTC).
    pub started_at: String,
    pub started_realtime_ns: u64,
    /// Node name of the machine vmatrace runs on (a replay's summary `host` is the traced
    /// machine's, from the trace header).
    pub tracer_host: String,
}

/// This process's identity, fixed at the first call (`main` makes it first, so
/// `started_at` is the process start).
pub fn this_run() -> &'static RunIdentity {
    static RUN: OnceLock<RunIdentity> = OnceLock::new();
    RUN.get_or_init(|| {
        let now = realtime_ns();
        RunIdentity {
            run_id: uuid_v4(random_128()),
            started_at: rfc3339(now),
            started_realtime_ns: now,
            tracer_host: hostname(),
        }
    })
}

fn random_128() -> u128 {
    let mut b = [0u8; 16];
    // SAFETY: `b` is valid for 16 bytes of writes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if usize::try_from(n).ok() != Some(b.len()) {
        // No kernel randomness at all: time and pid still tell runs apart.
        let t = u128::from(realtime_ns());
        return (t << 32) | u128::from(std::process::id());
    }
    u128::from_le_bytes(b)
}

/// The textual UUID form (8-4-4-4-12 lower-case hex) with the version-4 and RFC 4122
/// variant bits set, which log tools recognise as a random id.
fn uuid_v4(r: u128) -> String {
    let r = (r & !(0xf << 76) | (0x4 << 76)) & !(0x3 << 62) | (0x2 << 62);
    let h = format!("{r:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_form() {
        let u = uuid_v4(u128::MAX);
        assert_eq!(u, "ffffffff-ffff-4fff-bfff-ffffffffffff");
        assert_eq!(uuid_v4(0), "00000000-0000-4000-8000-000000000000");
        let a = this_run();
        assert_eq!(a.run_id.len(), 36);
        assert_eq!(&a.run_id[14..15], "4");
        assert_eq!(a.run_id, this_run().run_id, "one identity per process");
        assert!(a.started_at.ends_with('Z'));
        assert_ne!(uuid_v4(random_128()), uuid_v4(random_128()));
    }

    #[test]
    fn revision_is_set() {
        assert!(!GIT_REVISION.is_empty());
    }
}
