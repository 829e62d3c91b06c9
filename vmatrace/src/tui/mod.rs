//! The ratatui dashboard.
//!
//! - [`state`]: [`AppState`], updated from typed events by [`DashboardSink`] (a pipeline
//!   [`Sink`](crate::pipeline::Sink)) and by key presses.
//! - [`render`]: pure functions `AppState -> Frame`, tested with `TestBackend` snapshots.
//! - [`terminal`]: [`run`], the loop that owns the terminal.
//!
//! Wiring from a CLI command (inside a tokio runtime), as `run`, `replay` and `simulate`
//! do it:
//! ```ignore
//! let shared = tui::attach_to(&mut pipeline, ctx);             // before driving
//! let driver = tokio::spawn(pipeline.drive(rx, flush_every));
//! let exit = tui::run(shared, stop_future).await?;             // user quit, stop, hang-up
//! stop_the_source();                                           // e.g. set its stop flag
//! let pipeline = driver.await?;                                // drained, flushed
//! ```
//! When the source ends first (replay EOF, simulation done) the dashboard stays up with
//! "ENDED" in the header until the user quits (`DashboardSink::finish` or
//! [`mark_source_ended`]). [`set_program_stats`] feeds the tracer's self-cost.

pub mod anomaly_groups;
pub mod render;
pub mod sink;
pub mod state;
pub mod stderr_capture;
pub mod terminal;
pub mod timeline;
pub mod tty;

use std::sync::{Arc, Mutex};

pub use sink::DashboardSink;
pub use state::{AppState, DashboardContext, ProgramCost, SelfCost, SourceKind};
pub use terminal::{DashboardExit, run};

use crate::pipeline::Pipeline;

/// Shared dashboard state, as held by the sink and the drawing loop.
pub type SharedState = Arc<Mutex<AppState>>;

/// Create the dashboard state for `ctx` and register its sink on `pipeline`. Hand the
/// returned state to [`run`].
pub fn attach_to(pipeline: &mut Pipeline, ctx: DashboardContext) -> SharedState {
    let shared = Arc::new(Mutex::new(AppState::new(ctx)));
    pipeline.add_sink(Box::new(DashboardSink::new(shared.clone())));
    shared
}

/// As [`attach_to`], showing the session's statistics `stats` (fed by a sink added
/// before this one) instead of computing them a second time: the dashboard then costs
/// the pipeline almost nothing per event (`benches/pipeline.rs`).
pub fn attach_sharing_stats(
    pipeline: &mut Pipeline,
    ctx: DashboardContext,
    stats: Arc<Mutex<crate::stats::Stats>>,
) -> SharedState {
    let shared = Arc::new(Mutex::new(AppState::new(ctx)));
    pipeline.add_sink(Box::new(DashboardSink::sharing(shared.clone(), stats)));
    shared
}

/// Times of day from the trace header's clock base, in this machine's zone. A trace
/// without one (all zero) keeps times since the first event.
pub fn with_wall_clock(ctx: DashboardContext, clock: crate::trace::ClockBase) -> DashboardContext {
    if clock.realtime_ns == 0 {
        return ctx;
    }
    let zone = crate::export::clock::LocalZone::local_at(clock.realtime_ns);
    ctx.with_clock(clock, zone)
}

fn lock(shared: &SharedState) -> std::sync::MutexGuard<'_, AppState> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tell the dashboard the source has ended (numbers are final; the user quits when done).
pub fn mark_source_ended(shared: &SharedState) {
    lock(shared).live.source_ended = true;
}

/// Feed BPF run-time statistics (cumulative per program). `interval` is the wall time
/// since the previous call, for the CPU share.
pub fn set_program_stats(
    shared: &SharedState,
    mut programs: Vec<ProgramCost>,
    interval: std::time::Duration,
) {
    let mut st = lock(shared);
    // The first reading is cumulative since load: only a difference is a CPU share.
    let prev_ns: Option<u64> = st
        .live
        .self_cost
        .as_ref()
        .map(|c| c.programs.iter().map(|p| p.run_time_ns).sum());
    let runs: u64 = programs.iter().map(|p| p.run_cnt).sum();
    let ns: u64 = programs.iter().map(|p| p.run_time_ns).sum();
    let secs = interval.as_secs_f64();
    programs.sort_by(|a, b| b.run_time_ns.cmp(&a.run_time_ns).then(a.name.cmp(&b.name)));
    st.live.self_cost = Some(SelfCost {
        ns_per_run: if runs == 0 {
            0.0
        } else {
            ns as f64 / runs as f64
        },
        cpu_fraction: match prev_ns {
            Some(prev) if secs > 0.0 => ns.saturating_sub(prev) as f64 / 1e9 / secs,
            _ => 0.0,
        },
        programs,
    });
}

#[cfg(test)]
mod tests;
