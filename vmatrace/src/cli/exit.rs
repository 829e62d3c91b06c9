//! Exit status: a command either succeeds or returns an error; `main` turns the error into
//! the documented status (docs/summary.md, "Exit status"). Errors that are not a
//! [`Failure`] are status 1. A panic anywhere, even on a thread whose result is lost, is
//! status 1 too.

use std::{
    fmt,
    sync::atomic::{AtomicBool, Ordering},
};

/// Why nothing can be traced here: it decides what to advise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    /// Not root / capabilities.
    Privileges,
    /// The kernel or the machine (BTF, generation, PMU, tracing programs).
    Kernel,
}

/// A failure with its own exit status.
#[derive(Debug)]
pub enum Failure {
    /// Status 2: the command line asks for something impossible (clap's own usage
    /// errors exit 2 before a command runs).
    Usage(String),
    /// Status 3: nothing can be attached here.
    CannotAttach { missing: Missing, what: String },
    /// Status 4: the trace is not a trace, or is corrupt or truncated (the summary of
    /// what could be read was printed already).
    BadTrace(String),
    /// Status 1 after a summary was printed: the session ran but did not do what it set
    /// out to (a simulation that did not verify, a capture that ended with an error).
    Unverified(String),
}

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
/// `cargo xtask run` relies on it to fall back to a VM.
pub const EXIT_CANNOT_ATTACH: u8 = 3;
pub const EXIT_BAD_TRACE: u8 = 4;
/// What a shell reports for a process killed by SIGPIPE (128 + 13): the reader of our
/// standard output went away (`vmatrace … | head`).
pub const EXIT_STDOUT_CLOSED: i32 = 141;

impl Failure {
    pub fn code(&self) -> u8 {
        match self {
            Self::Usage(_) => EXIT_USAGE,
            Self::CannotAttach { .. } => EXIT_CANNOT_ATTACH,
            Self::BadTrace(_) => EXIT_BAD_TRACE,
            Self::Unverified(_) => EXIT_ERROR,
        }
    }

    pub fn cannot_attach(missing: Missing, what: impl Into<String>) -> Self {
        Self::CannotAttach {
            missing,
            what: what.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(m) | Self::BadTrace(m) | Self::Unverified(m) => f.write_str(m),
            Self::CannotAttach { missing, what } => {
                let todo = match missing {
                    Missing::Privileges => {
                        "  - run as root (e.g. `sudo vmatrace run`), or give the binary CAP_BPF \
                         and CAP_PERFMON: `setcap cap_bpf,cap_perfmon+ep vmatrace`;\n"
                    }
                    Missing::Kernel => {
                        "  - trace a real Debian kernel in QEMU instead: `cargo xtask run --vm`;\n  \
                         - `vmatrace probes` shows what this kernel offers and why each hook is out;\n"
                    }
                };
                write!(
                    f,
                    "cannot trace on this machine: {what}\nwhat to do:\n{todo}  \
                     - to analyse a trace recorded elsewhere: `vmatrace replay FILE` (no root needed)."
                )
            }
        }
    }
}

impl std::error::Error for Failure {}

/// The exit status for an error a command returned.
pub fn status_of(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<Failure>()
        .map_or(EXIT_ERROR, Failure::code)
}

static PANICKED: AtomicBool = AtomicBool::new(false);

/// Note every panic (then print it as the default hook does), so `main` exits 1 even when
/// the panicking thread's result was never joined or was turned into an ordinary end.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // Rust ignores SIGPIPE, so `print!` to a closed pipe panics. Not a bug: end as
        // a program killed by SIGPIPE would, without a report (files were closed before
        // the summary is printed).
        if stdout_closed(info) {
            std::process::exit(EXIT_STDOUT_CLOSED);
        }
        PANICKED.store(true, Ordering::SeqCst);
        eprintln!("vmatrace: internal error (a bug; please report it):");
        default(info);
    }));
}

/// Whether a panic is `print!`'s failure on a standard output whose reader has gone.
fn stdout_closed(info: &std::panic::PanicHookInfo<'_>) -> bool {
    let msg = info
        .payload()
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| info.payload().downcast_ref::<&str>().copied())
        .unwrap_or_default();
    msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe")
}

/// Whether any thread of this process panicked.
pub fn panicked() -> bool {
    PANICKED.load(Ordering::SeqCst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_documented_table() {
        let e: anyhow::Error = Failure::Usage("x".into()).into();
        assert_eq!(status_of(&e), 2);
        let e: anyhow::Error = Failure::cannot_attach(Missing::Kernel, "no BTF").into();
        assert_eq!(status_of(&e), 3);
        assert!(e.to_string().contains("cargo xtask run --vm"), "{e}");
        let e: anyhow::Error = Failure::BadTrace("truncated".into()).into();
        assert_eq!(status_of(&e), 4);
        // Context added on the way up keeps the status.
        let e = anyhow::Error::from(Failure::BadTrace("t".into())).context("replay x");
        assert_eq!(status_of(&e), 4);
        assert_eq!(status_of(&anyhow::anyhow!("disk on fire")), 1);
    }
}
