//! `vmatrace simulate`: run the simulated kernel through the validator.
//!
//! Exit code: 0 when the run verified what it set out to: without `--inject`, no anomaly
//! and no simulator invariant violation; with `--inject`, every armed fault fired and
//! every one was reported with its anomaly kind. 1 otherwise (the summary says why);
//! nothing lost and no leaked reference in both cases. SIGINT, SIGTERM and SIGHUP stop
//! the simulated tasks; the summary of what ran is printed.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vmatrace_common::model::Generation;

use super::{
    exit::Failure,
    runner::{self, Ended, Source},
    signals::{self, OnHangup, Stop, StopReason},
};
use crate::export::{
    snapshots::{LatestSummary, MakeSummary, SNAPSHOT_PERIOD, SnapshotSink},
    summary::{Summary, SummaryInput},
};
use crate::lab::sim::{Injection, ReleaseVisibility, SimConfig, SimOutcome, SimReport};
use crate::pipeline::{Pipeline, SharedSink, Sink};
use crate::stats::Stats;
use crate::trace::TraceHeader;
use crate::tui::{AppState, DashboardContext, DashboardSink, SourceKind};

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Simulated tasks (OS threads, 1-1024); four share one mm.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: u16,
    /// Total operations over all tasks (default 1000000 unless --duration is given).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Stop after this long (e.g. 10s, 500ms, 2m); with --ops, whichever comes first.
    #[arg(long, value_parser = super::session::parse_duration)]
    pub duration: Option<Duration>,
    /// Kernel generation to simulate: 7.0 (7.0 and later), 6.19, 6.15 (6.15-6.18).
    #[arg(long, default_value = "7.0", value_parser = parse_generation)]
    pub generation: Generation,
    /// Inject a fault (repeatable): end-exclude-skipped, reader-ignores-flag,
    /// detach-leaves-refcount, lost-wakeup, double-exclusion, seq-not-stored,
    /// free-while-referenced.
    #[arg(long = "inject", value_name = "KIND")]
    pub inject: Vec<Injection>,
    /// Probability that an armed fault fires at a point where it can (0 to 1).
    #[arg(long, default_value_t = 0.02, value_parser = parse_probability)]
    pub inject_rate: f64,
    /// Seed of every task's random stream.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Which reader releases are visible: all, or kernel (only fault-retry sites).
    #[arg(long, default_value = "all")]
    pub releases: ReleaseVisibility,
    /// Stream one in N reader-acquire results (1 = all, 0 = count only), like the live
    /// tracer's sampling.
    #[arg(long, default_value_t = 1)]
    pub reader_sample_every: u32,
    /// Number of simulated mms (processes, at least 1); default one per four tasks.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub mms: Option<u16>,
    /// Initial mm_lock_seq (rounded down to even); e.g. 4294960000 to run through the
    /// sequence wraparound.
    #[arg(long, default_value_t = 0)]
    pub seq_start: u32,
    /// Print the summary as JSON.
    #[arg(long)]
    pub json: bool,
    /// Show the live dashboard while the simulation runs (quit with q; the summary is
    /// printed afterwards). Without --ops or --duration it runs until you quit.
    #[arg(long, conflicts_with = "json")]
    pub tui: bool,
    /// Serve Prometheus metrics at http://ADDR:PORT/metrics while the simulation runs
    /// (as `run --metrics-listen`; the host is this machine, the kernel `simulated`).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

fn parse_probability(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?}: a probability is a number from 0 to 1")),
    }
}

pub fn run(a: SimulateArgs) -> anyhow::Result<()> {
    // Signals are handled before the tasks start: they end the run with a summary.
    let rt = signals::runtime()?;
    let stop = Stop::new();
    signals::install(&rt, &stop, OnHangup::Stop)?;
    let telemetry = super::telemetry::TelemetryArgs {
        metrics_listen: a.metrics_listen,
        ..Default::default()
    };
    let sinks = match telemetry.start(&rt, a.tui)? {
        Some(latest) => metrics_sinks(a.generation, latest),
        None => Vec::new(),
    };
    // Under the dashboard an open-ended run is the useful default: quitting stops it.
    let open_ended = a.tui && a.ops.is_none() && a.duration.is_none();
    let cfg = SimConfig {
        threads: usize::from(a.threads),
        ops: match (a.ops, a.duration) {
            _ if open_ended => None,
            (None, None) => Some(1_000_000),
            (ops, _) => ops,
        },
        duration: if open_ended {
            Some(Duration::from_secs(365 * 86_400))
        } else {
            a.duration
        },
        generation: a.generation,
        injections: a.inject,
        inject_rate: a.inject_rate,
        seed: a.seed,
        releases: a.releases,
        reader_sample_every: a.reader_sample_every,
        mms: a.mms.map(usize::from),
        seq_start: a.seq_start,
        stop: stop.flag(),
    };
    let (outcome, stop_reason) = simulate(&rt, cfg, &stop, sinks, a.tui)?;
    let mut report = SimReport::new(&outcome);
    report.stop_reason = stop_reason.key();
    // As `session::print_summary`: nothing to print to a terminal that went away.
    crate::tui::tty::detach_hung_up_streams();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
        for ex in &outcome.collected.examples {
            println!(
                "example anomaly {}: {} (state: {}; expected: {})",
                ex.kind.key(),
                ex.observed,
                ex.state,
                ex.expected
            );
        }
    }
    if report.verdict.ok {
        Ok(())
    } else {
        Err(Failure::Unverified(format!(
            "the simulation did not verify: {}",
            report.verdict.reasons.join("; ")
        ))
        .into())
    }
}

/// Run the simulation through the session runner, with the dashboard when `tui`. The
/// dashboard stays up after the run ends (the numbers are final then); quitting it early
/// stops the simulated tasks.
fn simulate(
    rt: &tokio::runtime::Runtime,
    cfg: SimConfig,
    stop: &Stop,
    sinks: Vec<Box<dyn Sink>>,
    tui: bool,
) -> anyhow::Result<(SimOutcome, StopReason)> {
    // Fail before the simulation starts, not after (tui::run checks too).
    anyhow::ensure!(
        !tui || std::io::IsTerminal::is_terminal(&std::io::stdout()),
        "--tui needs a terminal on stdout (run without --tui for the text or --json summary)"
    );
    let mut pipeline = Pipeline::new(cfg.generation);
    for s in sinks {
        pipeline.add_sink(s);
    }
    let dashboard = tui.then(|| {
        let faults: Vec<&str> = cfg.injections.iter().map(|i| i.key()).collect();
        let ctx = DashboardContext::new(SourceKind::Simulate, "simulated", cfg.generation)
            .with_detail(format!(
                "{} tasks, seed {}, faults: {}",
                cfg.threads,
                cfg.seed,
                if faults.is_empty() {
                    "none".to_string()
                } else {
                    faults.join(", ")
                }
            ));
        let shared = Arc::new(Mutex::new(AppState::new(ctx)));
        pipeline.add_sink(Box::new(DashboardSink::new(shared.clone())));
        shared
    });
    let opts = runner::Options {
        dashboard,
        ..Default::default()
    };
    let outcome = runner::run(rt, stop, Source::Simulated(cfg), pipeline, opts)?;
    if let Some(e) = outcome.dashboard_error {
        return Err(e);
    }
    let Ended::Simulated(finished) = outcome.ended else {
        anyhow::bail!("a simulation ended as another source");
    };
    Ok((finished.outcome(outcome.pipeline), outcome.stop))
}

/// The statistics and the snapshot publisher behind `--metrics-listen`: the simulated
/// stream summarised as a tracing session's (mode `simulate`).
fn metrics_sinks(generation: Generation, latest: LatestSummary) -> Vec<Box<dyn Sink>> {
    let (stats_sink, stats) = SharedSink::new(Stats::new(generation));
    let mut header = TraceHeader::synthetic(generation);
    header.source = "simulate".into();
    header.host = crate::export::run_identity::this_run().tracer_host.clone();
    header.kernel_release = "simulated".into();
    let started = Instant::now();
    let make: MakeSummary = Box::new(move |v, t| {
        let stats = Some(
            stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .snapshot(),
        );
        Summary::build(SummaryInput {
            mode: "simulate",
            header: &header,
            totals: t,
            validator: v,
            duration_ns: u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            stop_reason: String::new(),
            anomaly_log: None,
            recording: None,
            replay: None,
            stats,
            programs: Vec::new(),
            startup_cpu_s: None,
            stop_cpu_s: None,
        })
    });
    vec![
        Box::new(stats_sink),
        Box::new(SnapshotSink::new(make, latest, SNAPSHOT_PERIOD)),
    ]
}

/// A generation key, or a kernel version mapped to its generation.
pub fn parse_generation(s: &str) -> Result<Generation, String> {
    let mut parts = s.trim().split('.');
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Generation::of_version(major, minor).ok_or_else(|| {
        format!("no per-VMA refcount generation for `{s}` (6.15 or later: 6.15, 6.19, 7.0)")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations() {
        assert_eq!(parse_generation("7.0"), Ok(Generation::V7_0));
        assert_eq!(parse_generation("7.3"), Ok(Generation::V7_0));
        assert_eq!(parse_generation("6.19"), Ok(Generation::V6_19));
        assert_eq!(parse_generation("6.17"), Ok(Generation::V6_15));
        assert!(parse_generation("6.12").is_err());
        assert!(parse_generation("banana").is_err());
    }
}
