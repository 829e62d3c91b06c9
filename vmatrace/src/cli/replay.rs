//! `vmatrace replay`: run a recorded trace through the same pipeline as a live session.

use std::{
    fs::File,
    io::{IsTerminal, Read},
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::sync::mpsc;

use super::{
    EXIT_BAD_TRACE,
    session::{self, FilterArgs, OutputArgs},
    signals,
};
use crate::{
    export::summary::{ReplaySection, Summary, SummaryInput},
    pipeline::Pipeline,
    trace::{
        ReadOptions, ReplayOptions, ReplayOutcome, TraceError, TraceReader,
        replay::{self, GrowingFile},
    },
    tui::{DashboardContext, DashboardExit, SourceKind},
};

/// Replay a trace written by `vmatrace record` through the validator, the statistics and
/// the anomaly log, without root. Exit status 4 if the trace is corrupt or truncated
/// (everything before the damage is still processed and summarised).
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The trace file, or `-` for standard input.
    #[arg(value_name = "FILE")]
    pub input: String,
    /// Pace the replay by the recorded timestamps, FACTOR times faster (1 = as recorded).
    /// Default: as fast as possible.
    #[arg(long, value_name = "FACTOR", value_parser = parse_speed)]
    pub speed: Option<f64>,
    /// Read a trace that is still being written: wait for more data at the end of a
    /// regular file until the trace's end record arrives (or SIGINT / --duration); skip
    /// any output before the trace starts (serial console boot messages). On stdin or a
    /// pipe, reading ends at EOF.
    #[arg(long)]
    pub follow: bool,
    /// No dashboard: print the summary when the trace ends. Implied when stdout is not a
    /// terminal.
    #[arg(long)]
    pub headless: bool,
    /// Insist on the dashboard: fail instead of falling back to the summary when stdout is
    /// not a terminal.
    #[arg(long, conflicts_with = "headless")]
    pub tui: bool,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

fn set_reason(slot: &std::sync::Mutex<Option<String>>, why: &str) {
    if let Ok(mut g) = slot.lock()
        && g.is_none()
    {
        *g = Some(why.to_string());
    }
}

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!(
            "{s:?}: the speed factor must be a positive number (1 = recorded pace)"
        )),
    }
}

pub fn run(args: ReplayArgs) -> anyhow::Result<ExitCode> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut end_seen = None;
    let input: Box<dyn Read + Send> = if args.input == "-" {
        Box::new(std::io::stdin())
    } else {
        let f = File::open(&args.input)
            .with_context(|| format!("cannot open the trace {}", args.input))?;
        let regular = f.metadata().map(|m| m.is_file()).unwrap_or(false);
        if args.follow && regular {
            let g = GrowingFile::new(f, Arc::clone(&stop));
            end_seen = Some(g.end_seen());
            Box::new(g)
        } else {
            Box::new(f)
        }
    };
    let opts = ReadOptions {
        scan_for_magic: args.follow,
        end_seen,
    };
    let reader = match TraceReader::with_options(input, opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmatrace: {}: {e}", args.input);
            return Ok(ExitCode::from(EXIT_BAD_TRACE));
        }
    };
    let header = reader.header().clone();
    let skipped = reader.skipped();

    let mut pipeline = Pipeline::new(header.generation);
    let handles = session::add_output_sinks(&mut pipeline, &args.out, &header)?;

    let (tx, rx) = mpsc::channel(64);
    let replay_opts = ReplayOptions {
        speed: args.speed,
        duration: args.out.duration,
        filter: (!args.filter.is_empty()).then(|| {
            let f = args.filter.clone();
            Arc::new(move |e: &vmatrace_common::Event| f.matches(e)) as replay::EventFilter
        }),
    };
    let started = Instant::now();
    let thread = replay::spawn(reader, tx, replay_opts, Arc::clone(&stop))
        .context("cannot start the reader thread")?;

    if args.tui && !std::io::stdout().is_terminal() {
        anyhow::bail!("--tui needs a terminal on stdout; use --headless (or --json) otherwise");
    }
    let dashboard = (!args.headless && std::io::stdout().is_terminal()).then(|| {
        let ctx = DashboardContext::new(
            SourceKind::Replay,
            header.kernel_release.clone(),
            header.generation,
        )
        .with_detail(args.input.clone())
        .with_plan(header.plan.clone());
        crate::tui::attach_to(&mut pipeline, ctx)
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stop_flag = Arc::clone(&stop);
    let reason = Arc::new(std::sync::Mutex::new(None::<String>));
    let r2 = Arc::clone(&reason);
    let (pipeline, wall, dash_result) = rt.block_on(async move {
        let quit = Arc::new(tokio::sync::Notify::new());
        let stop_fut = {
            let quit = Arc::clone(&quit);
            let r2 = Arc::clone(&r2);
            async move {
                // --duration is applied by the reader, in recorded time.
                let why = tokio::select! {
                    sig = signals::terminated() => sig.to_string(),
                    _ = quit.notified() => "quit".to_string(),
                };
                if let Ok(mut g) = r2.lock()
                    && g.is_none()
                {
                    *g = Some(why);
                }
                stop_flag.store(true, Ordering::Relaxed);
            }
        };
        let ended = dashboard.clone();
        let driver = tokio::spawn(async move {
            let p = pipeline
                .drive_until(rx, Duration::from_millis(250), stop_fut)
                .await;
            // Throughput is measured to here, not to when the user closes the dashboard.
            let wall = started.elapsed();
            if let Some(shared) = &ended {
                crate::tui::mark_source_ended(shared);
            }
            (p, wall)
        });
        let mut dash_result = Ok(());
        if let Some(shared) = dashboard {
            // The user reads the final numbers and quits.
            match crate::tui::run(shared, std::future::pending::<()>()).await {
                Ok(DashboardExit::UserQuit) => set_reason(&r2, "quit"),
                Ok(DashboardExit::Signal) => set_reason(&r2, "signal"),
                Ok(DashboardExit::Stopped) => {}
                Err(e) => dash_result = Err(e),
            }
            quit.notify_one();
        }
        match driver.await {
            Ok((p, wall)) => (Some(p), wall, dash_result),
            Err(e) => (
                None,
                Duration::ZERO,
                Err(anyhow::anyhow!("pipeline task: {e}")),
            ),
        }
    });
    if let Err(e) = &dash_result {
        eprintln!("vmatrace: {e:#}");
    }
    let Some(pipeline) = pipeline else {
        return Ok(ExitCode::FAILURE);
    };
    let reason = reason.lock().ok().and_then(|mut g| g.take());

    // A reader blocked on a read of stdin cannot be interrupted: give it a moment, then
    // summarise without its outcome rather than hang.
    let deadline = Instant::now() + Duration::from_secs(1);
    while !thread.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let outcome = if thread.is_finished() {
        thread.join().unwrap_or_else(|_| ReplayOutcome {
            error: None,
            stopped: true,
            ..ReplayOutcome::default()
        })
    } else {
        ReplayOutcome {
            stopped: true,
            events: pipeline.totals.total_events(),
            ..ReplayOutcome::default()
        }
    };

    let (error_text, bad) = match &outcome.error {
        None => (None, false),
        // A followed stream that just stops is how a VM's serial output ends.
        Some(e @ TraceError::MissingEnd { .. }) if args.follow => (Some(e.to_string()), false),
        Some(e) => (Some(e.to_string()), true),
    };
    let stop_reason = reason.unwrap_or_else(|| {
        if outcome.duration_reached {
            "duration".into()
        } else if outcome.complete {
            "end of trace".into()
        } else if outcome.error.is_some() {
            "trace error".into()
        } else {
            "end of input".into()
        }
    });
    let wall_s = wall.as_secs_f64();
    let summary = Summary::build(SummaryInput {
        mode: "replay",
        header: &header,
        totals: &pipeline.totals,
        validator: &pipeline.validator,
        duration_ns: outcome.recorded_duration_ns(),
        stop_reason,
        anomaly_log: handles.anomaly_log_stats(),
        stats: handles.stats_snapshot(),
        programs: Vec::new(),
        startup_cpu_s: None,
        stop_cpu_s: None,
        recording: None,
        replay: Some(ReplaySection {
            records: outcome.records,
            events: outcome.events,
            filtered: outcome.filtered,
            complete: outcome.complete,
            error: error_text.clone(),
            wall_s,
            events_per_s: if wall_s > 0.0 {
                outcome.events as f64 / wall_s
            } else {
                0.0
            },
            skipped_bytes: skipped,
            trailing_bytes: outcome.trailing_bytes,
            record_losses: outcome.sequence,
        }),
    });
    session::print_summary(&summary, args.out.json, false);
    if let Some(e) = error_text {
        eprintln!("vmatrace: {}: {e}", args.input);
    }
    Ok(if bad {
        ExitCode::from(EXIT_BAD_TRACE)
    } else {
        ExitCode::SUCCESS
    })
}
