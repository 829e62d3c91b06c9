//! Shutdown triggers shared by the long-running subcommands.

use std::time::Duration;

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Signal(&'static str),
    Duration,
    SourceEnded,
    UserQuit,
}

/// Resolves on SIGINT or SIGTERM. If the handlers cannot be installed the future never
/// resolves (the session then ends by duration or source end) and says so once.
pub async fn terminated() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        (Err(e), _) | (_, Err(e)) => {
            log::warn!("cannot install SIGINT/SIGTERM handlers: {e}");
            std::future::pending().await
        }
    }
}

/// Resolves after `d`, or never when `None`.
pub async fn after(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}
