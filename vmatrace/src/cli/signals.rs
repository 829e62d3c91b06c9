//! Why a session stops, and the signals that stop it.
//!
//! Every long-running subcommand (run, record, replay, simulate) installs the same
//! handlers before it does anything that can block: SIGINT and SIGTERM stop the session
//! cleanly (the source drains, the sinks flush, the summary is printed); SIGHUP reopens
//! the anomaly log when there is one (log rotation) and otherwise stops like SIGTERM (the
//! terminal went away). None of them kills the process half-way.

use std::{
    fmt,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;

/// A signal that ends (or, SIGHUP with a log, rotates) a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
    Hup,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Self::Int => "SIGINT",
            Self::Term => "SIGTERM",
            Self::Hup => "SIGHUP",
        }
    }
}

/// Why a session ended: the summary's `stop_reason` is [`StopReason::key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Signal(Signal),
    /// `--duration` elapsed (on replay: that much recorded time was replayed).
    Duration,
    /// The dashboard's user quit.
    Quit,
    /// The live source ended on its own (the ring buffer closed).
    SourceEnded,
    /// Replay: the trace's end record was read.
    EndOfTrace,
    /// Replay: the input ended without an end record (a followed stream that stopped).
    EndOfInput,
    /// Replay: the trace is damaged; what came before was processed.
    TraceError,
    /// Simulate: the requested operations ran.
    OpsDone,
    /// A bug in vmatrace (a panic); exit status 1.
    InternalError,
}

impl StopReason {
    pub fn key(self) -> &'static str {
        match self {
            Self::Signal(s) => s.name(),
            Self::Duration => "duration",
            Self::Quit => "quit",
            Self::SourceEnded => "source ended",
            Self::EndOfTrace => "end of trace",
            Self::EndOfInput => "end of input",
            Self::TraceError => "trace error",
            Self::OpsDone => "ops done",
            Self::InternalError => "internal error",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

/// One stop request shared by every part of a session: the first reason wins, the flag
/// is for blocking threads (trace reader, simulated tasks), the notification for tasks.
#[derive(Clone, Default)]
pub struct Stop {
    inner: Arc<StopInner>,
}

#[derive(Default)]
struct StopInner {
    reason: OnceLock<StopReason>,
    flag: Arc<AtomicBool>,
    notify: Notify,
}

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask the session to stop; only the first reason is kept.
    pub fn request(&self, why: StopReason) {
        let _ = self.inner.reason.set(why);
        self.inner.flag.store(true, Ordering::Relaxed);
        self.inner.notify.notify_waiters();
    }

    /// Record why the session ended without asking anything to stop (the source ended
    /// first): kept only if no stop was requested before.
    pub fn ended(&self, why: StopReason) {
        let _ = self.inner.reason.set(why);
    }

    pub fn reason(&self) -> Option<StopReason> {
        self.inner.reason.get().copied()
    }

    pub fn is_requested(&self) -> bool {
        self.inner.flag.load(Ordering::Relaxed)
    }

    /// The flag blocking threads poll.
    pub fn flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.inner.flag)
    }

    /// Resolves once a stop was requested (at once if it already was).
    pub async fn requested(&self) {
        loop {
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a request between the check and the await
            // is not missed.
            notified.as_mut().enable();
            if self.is_requested() {
                return;
            }
            notified.await;
        }
    }
}

/// What SIGHUP does in this session.
#[derive(Clone)]
pub enum OnHangup {
    /// Stop like SIGTERM.
    Stop,
    /// Raise this flag (the anomaly log reopens its file when it sees it) and go on.
    Reopen(Arc<AtomicBool>),
}

/// Install the SIGINT/SIGTERM/SIGHUP handlers on `rt`, feeding `stop`. Call before
/// anything that can block, so a signal is never the default "kill the process".
pub fn install(rt: &tokio::runtime::Runtime, stop: &Stop, on_hup: OnHangup) -> anyhow::Result<()> {
    use anyhow::Context;
    use tokio::signal::unix::{SignalKind, signal};
    let _guard = rt.enter();
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let stop = stop.clone();
    rt.spawn(async move {
        loop {
            let sig = tokio::select! {
                _ = int.recv() => Signal::Int,
                _ = term.recv() => Signal::Term,
                _ = hup.recv() => Signal::Hup,
            };
            match (&on_hup, sig) {
                (OnHangup::Reopen(flag), Signal::Hup) => {
                    log::info!("SIGHUP: reopening the anomaly log");
                    flag.store(true, Ordering::Relaxed);
                }
                _ => stop.request(StopReason::Signal(sig)),
            }
        }
    });
    Ok(())
}

/// Resolves after `d`, or never when `None`.
pub async fn after(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// A multi-threaded runtime for a session: signal handling and the pipeline run on its
/// workers while the main thread may block (simulated tasks, a trace header search).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reason_wins() {
        let s = Stop::new();
        s.ended(StopReason::EndOfTrace);
        s.request(StopReason::Signal(Signal::Int));
        assert_eq!(s.reason(), Some(StopReason::EndOfTrace));
        assert!(s.is_requested());
        let t = Stop::new();
        t.request(StopReason::Signal(Signal::Hup));
        t.ended(StopReason::EndOfInput);
        assert_eq!(t.reason().map(StopReason::key), Some("SIGHUP"));
    }

    #[test]
    fn requested_resolves_even_when_asked_before() {
        let rt = runtime().expect("runtime");
        let s = Stop::new();
        s.request(StopReason::Quit);
        rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(5), s.requested())
                .await
                .expect("resolves at once");
        });
        let s2 = Stop::new();
        let s3 = s2.clone();
        rt.block_on(async move {
            let waiter = tokio::spawn(async move { s3.requested().await });
            tokio::time::sleep(Duration::from_millis(20)).await;
            s2.request(StopReason::Duration);
            tokio::time::timeout(Duration::from_secs(5), waiter)
                .await
                .expect("woken")
                .expect("task");
        });
    }
}
