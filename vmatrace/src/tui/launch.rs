//! Running a source under the dashboard: the glue the CLI commands call for `--tui`.
//!
//! The pattern: register the dashboard sink, drive the pipeline on its own task, run the
//! dashboard until the user quits (or a signal), then tell the source to stop and collect
//! the pipeline for the exit summary. When the source ends first, the dashboard stays up
//! with "ENDED" in the header until the user quits.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use tokio::sync::Notify;

use super::state::{DashboardContext, ProgramCost, SourceKind};
use super::{DashboardExit, SharedState, run};
use crate::kernel::plan::ProbePlan;
use crate::live::StatsHandle;
use crate::sim::{self, SimConfig, SimOutcome};
use crate::trace::TraceHeader;

/// Fail early, before any source starts, when there is no terminal to draw on.
pub fn require_terminal() -> anyhow::Result<()> {
    anyhow::ensure!(
        super::stdout_is_terminal(),
        "--tui needs a terminal on stdout (run without --tui for the text or --json summary)"
    );
    Ok(())
}

/// "The user quit" for the source's stop future. `fire` before anyone waits is kept.
#[derive(Clone, Default)]
pub struct QuitSignal(Arc<Notify>);

impl QuitSignal {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fire(&self) {
        self.0.notify_one();
    }

    /// Resolves once [`QuitSignal::fire`] was called.
    pub async fn wait(&self) {
        self.0.notified().await;
    }
}

/// Run the dashboard while `driver` (the pipeline's drive future, whose stop condition
/// includes `quit.wait()`) runs on its own task. After the user quits, `quit` fires and
/// the driver's result is awaited, so every sink is flushed and finished.
pub async fn run_session<T: Send + 'static>(
    shared: SharedState,
    quit: QuitSignal,
    driver: impl Future<Output = T> + Send + 'static,
) -> anyhow::Result<(DashboardExit, T)> {
    let handle = tokio::spawn(driver);
    let exit = run(shared, std::future::pending()).await;
    quit.fire();
    let out = handle.await.context("the pipeline task failed")?;
    Ok((exit?, out))
}

/// The dashboard context of a trace replay.
pub fn replay_context(header: &TraceHeader, input: &str) -> DashboardContext {
    let name = std::path::Path::new(input)
        .file_name()
        .map_or_else(|| input.to_string(), |n| n.to_string_lossy().into_owned());
    DashboardContext::new(
        SourceKind::Replay,
        header.kernel_release.clone(),
        header.generation,
    )
    .with_detail(name)
    .with_plan(header.plan.clone())
}

/// The dashboard context of a live session on the running kernel.
pub fn live_context(plan: &ProbePlan) -> DashboardContext {
    DashboardContext::new(
        SourceKind::Live,
        plan.kernel.release.clone(),
        plan.generation,
    )
    .with_plan(Some(plan.clone()))
}

/// Feed the Overview's tracer self-cost from BPF run-time statistics (`BPF_ENABLE_STATS`)
/// every `every`, until the returned task is aborted. Counts stay 0 when statistics are
/// off; the pane then says so.
pub fn spawn_self_cost(
    shared: SharedState,
    stats: StatsHandle,
    every: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last = std::time::Instant::now();
        loop {
            tick.tick().await;
            let programs: Vec<ProgramCost> = stats
                .program_stats()
                .into_iter()
                .map(|p| ProgramCost {
                    name: p.name,
                    run_cnt: p.run_cnt,
                    run_time_ns: p.run_time_ns,
                })
                .collect();
            if programs.iter().all(|p| p.run_cnt == 0) {
                continue;
            }
            let now = std::time::Instant::now();
            super::set_program_stats(&shared, programs, now.duration_since(last));
            last = now;
        }
    })
}

/// `vmatrace simulate --tui`: the simulation under the dashboard. Returns the outcome
/// when the simulation finished before the user quit, `None` when it was cut short (the
/// simulated tasks are plain threads that cannot be stopped early; they end with the
/// process).
pub fn simulate(cfg: SimConfig) -> anyhow::Result<Option<SimOutcome>> {
    require_terminal()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    let detail = format!(
        "{} tasks{}",
        cfg.threads,
        if cfg.injections.is_empty() {
            String::new()
        } else {
            format!(
                ", inject {}",
                cfg.injections
                    .iter()
                    .map(|i| format!("{i:?}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        }
    );
    let ctx = DashboardContext::new(SourceKind::Simulate, "simulated", cfg.generation)
        .with_detail(detail);
    let shared = Arc::new(std::sync::Mutex::new(super::AppState::new(ctx)));
    let sink = super::DashboardSink::new(shared.clone());
    let result = rt.block_on(async move {
        let sim = tokio::spawn(sim::run_async(cfg, vec![Box::new(sink)]));
        run(shared, std::future::pending()).await?;
        if sim.is_finished() {
            Ok(Some(sim.await.context("the simulation task failed")??))
        } else {
            Ok(None)
        }
    });
    // Dropping the runtime would wait for the simulation's blocking threads; a user who
    // quit does not want to wait for a million operations.
    rt.shutdown_background();
    result
}
