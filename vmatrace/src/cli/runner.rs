//! The one loop every session runs. `run`, `record`, `replay` and `simulate` differ in
//! their [`Source`] and in the sinks their pipeline carries, not in how they are driven.
//!
//! The source feeds the pipeline through a channel until it ends or the session's
//! [`Stop`] fires (a signal, `--duration`, the dashboard's quit); the dashboard, when
//! there is one, runs beside it. What comes back is an [`Outcome`]: the pipeline with
//! its sinks finished, the typed reason the session stopped, how long the source ran,
//! and the source's own ending ([`Ended`]).

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;

use super::signals::{self, Stop, StopReason};
use crate::{
    lab::sim::{Finished, SimConfig, Simulation},
    live::LiveSession,
    pipeline::Pipeline,
    trace::{
        TraceError, TraceReader,
        replay::{self, ReplayOptions, ReplayOutcome},
    },
    tui::{DashboardExit, SharedState},
};

/// Where a session's events come from.
pub enum Source {
    /// The attached programs' ring buffer (`run`, `record`).
    Live(LiveSession),
    /// A recorded trace, read on a thread of its own (`replay`).
    Replay {
        reader: TraceReader,
        options: ReplayOptions,
    },
    /// The simulated kernel's tasks (`simulate`).
    Simulated(SimConfig),
}

impl Source {
    /// Batches queued between the source and the pipeline: a simulation's are large.
    fn channel_depth(&self) -> usize {
        match self {
            Source::Live(_) => 256,
            Source::Replay { .. } => 64,
            Source::Simulated(_) => Simulation::CHANNEL_DEPTH,
        }
    }
}

/// How the source ended, in its own terms.
pub enum Ended {
    /// `Some`: the capture failed (the events before it were processed).
    Live(Option<anyhow::Error>),
    Replay(ReplayOutcome),
    Simulated(Box<Finished>),
}

/// What a session produced.
pub struct Outcome {
    pub pipeline: Pipeline,
    pub stop: StopReason,
    /// Until the source ended (throughput), not until the user closed the dashboard.
    pub wall: Duration,
    pub ended: Ended,
    /// The dashboard failed (it stopped the session); the terminal is restored now.
    pub dashboard_error: Option<anyhow::Error>,
}

/// How the session runs beside its source.
#[derive(Default)]
pub struct Options {
    /// The dashboard, already attached to the pipeline's sinks.
    pub dashboard: Option<SharedState>,
    /// Live: stop after this long. (A replay's `--duration` is recorded time, which its
    /// reader counts; a simulation's is its configuration's.)
    pub duration: Option<Duration>,
    /// Called once when the stop fires, before the source drains.
    pub on_stop: Option<Box<dyn FnOnce() + Send>>,
}

/// Run `source` into `pipeline` on `rt` until it ends or `stop` fires.
pub fn run(
    rt: &tokio::runtime::Runtime,
    stop: &Stop,
    source: Source,
    pipeline: Pipeline,
    opts: Options,
) -> anyhow::Result<Outcome> {
    let Options {
        dashboard,
        duration,
        on_stop,
    } = opts;
    let started = Instant::now();
    let generation = pipeline.validator.generation();
    let (pipeline, wall, ended, dashboard_error) = rt.block_on(async {
        // The stop as the source sees it: `--duration` turned into a stop, `on_stop` run.
        let stopped = {
            let stop = stop.clone();
            async move {
                stop_or_after(&stop, duration).await;
                if let Some(f) = on_stop {
                    f();
                }
            }
        };
        let ended_dashboard = dashboard.clone();
        let finish = move |p: Pipeline| {
            if let Some(shared) = &ended_dashboard {
                crate::tui::mark_source_ended(shared);
            }
            (p, started.elapsed())
        };
        let (driver, producer) = start(source, pipeline, stop, stopped, finish)?;
        let dashboard_error = match dashboard {
            Some(shared) => run_dashboard(shared, stop, duration).await,
            None => None,
        };
        let (pipeline, wall) = match driver.await {
            Ok(done) => done,
            Err(e) => {
                // The pipeline task panicked (the panic hook made the exit status 1):
                // summarise an empty pipeline rather than nothing.
                eprintln!("vmatrace: the pipeline task failed: {e}");
                (Pipeline::new(generation), started.elapsed())
            }
        };
        let ended = producer.join().await?;
        anyhow::Ok((pipeline, wall, ended, dashboard_error))
    })?;
    let stop = stop.reason().unwrap_or_else(|| ended.stop_reason());
    Ok(Outcome {
        pipeline,
        stop,
        wall,
        ended,
        dashboard_error,
    })
}

/// The pipeline's task and what the source needs, started. The pipeline ends when its
/// channel closes; a replay's reader may block on a read, so its pipeline also ends at
/// the stop (`stopped`).
fn start(
    source: Source,
    mut pipeline: Pipeline,
    stop: &Stop,
    stopped: impl Future<Output = ()> + Send + 'static,
    finish: impl FnOnce(Pipeline) -> (Pipeline, Duration) + Send + 'static,
) -> anyhow::Result<(tokio::task::JoinHandle<(Pipeline, Duration)>, Producer)> {
    let (tx, rx) = mpsc::channel(source.channel_depth());
    let flush = Duration::from_millis(250);
    Ok(match source {
        Source::Live(session) => {
            let capture = tokio::spawn(session.stream(tx, stopped));
            let driver = tokio::spawn(async move { finish(pipeline.drive(rx, flush).await) });
            (driver, Producer::Live(capture))
        }
        Source::Replay { reader, options } => {
            let thread = replay::spawn(reader, tx, options.clone(), stop.flag())
                .context("cannot start the reader thread")?;
            let driver =
                tokio::spawn(async move { finish(pipeline.drive_until(rx, flush, stopped).await) });
            (driver, Producer::Replay(thread, options))
        }
        Source::Simulated(cfg) => {
            let sim = Simulation::new(cfg, tx, &mut pipeline)?;
            let tasks = tokio::task::spawn_blocking(move || sim.run());
            tokio::spawn(stopped);
            let driver = tokio::spawn(async move { finish(pipeline.drive(rx, flush).await) });
            (driver, Producer::Simulated(tasks))
        }
    })
}

/// A source at work.
enum Producer {
    Live(tokio::task::JoinHandle<anyhow::Result<()>>),
    Replay(std::thread::JoinHandle<ReplayOutcome>, ReplayOptions),
    Simulated(tokio::task::JoinHandle<Finished>),
}

impl Producer {
    async fn join(self) -> anyhow::Result<Ended> {
        Ok(match self {
            Producer::Live(capture) => Ended::Live(match capture.await {
                Ok(r) => r.err(),
                Err(e) => Some(anyhow::anyhow!("the capture task failed: {e}")),
            }),
            Producer::Replay(thread, options) => Ended::Replay(join_reader(thread, &options)),
            Producer::Simulated(tasks) => {
                Ended::Simulated(Box::new(tasks.await.context("simulation tasks panicked")?))
            }
        })
    }
}

impl Ended {
    /// Why the source ended on its own, when nothing stopped the session.
    fn stop_reason(&self) -> StopReason {
        match self {
            Ended::Live(_) => StopReason::SourceEnded,
            Ended::Replay(o) if o.duration_reached => StopReason::Duration,
            Ended::Replay(o) if o.complete => StopReason::EndOfTrace,
            Ended::Replay(o) if o.error.is_some() => StopReason::TraceError,
            Ended::Replay(_) => StopReason::EndOfInput,
            Ended::Simulated(f) if f.ended_by_duration() => StopReason::Duration,
            Ended::Simulated(_) => StopReason::OpsDone,
        }
    }
}

/// The reader's outcome. A reader blocked on a read of stdin or a FIFO cannot be
/// interrupted: give it a moment, then take what it published.
fn join_reader(
    thread: std::thread::JoinHandle<ReplayOutcome>,
    options: &ReplayOptions,
) -> ReplayOutcome {
    let deadline = Instant::now() + Duration::from_secs(1);
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if !thread.is_finished() {
        return options.progress.outcome();
    }
    thread.join().unwrap_or_else(|_| {
        // Panicked: the hook printed it and the exit status will be 1.
        let mut o = options.progress.outcome();
        o.error = Some(TraceError::Io {
            offset: 0,
            source: std::io::Error::other("the reader thread panicked (a bug in vmatrace)"),
        });
        o
    })
}

/// The dashboard stops on its own keys and signals; either way the source stops too. Its
/// failure (a panic in a frame included) stops the session and is returned, to be said
/// once the terminal is restored.
async fn run_dashboard(
    shared: SharedState,
    stop: &Stop,
    duration: Option<Duration>,
) -> Option<anyhow::Error> {
    let until = {
        let stop = stop.clone();
        async move { stop_or_after(&stop, duration).await }
    };
    match crate::tui::run(shared, until).await {
        Ok(DashboardExit::UserQuit) => stop.request(StopReason::Quit),
        Ok(DashboardExit::HungUp) => stop.request(StopReason::Signal(signals::Signal::Hup)),
        Ok(DashboardExit::Stopped) => {}
        Err(e) => {
            stop.request(StopReason::Quit);
            return Some(e);
        }
    }
    None
}

/// Until `stop` fires, or `duration` passes (which fires it, as `--duration`).
async fn stop_or_after(stop: &Stop, duration: Option<Duration>) {
    tokio::select! {
        () = stop.requested() => {}
        () = signals::after(duration) => stop.request(StopReason::Duration),
    }
}
