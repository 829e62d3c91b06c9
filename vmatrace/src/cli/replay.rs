//! `vmatrace replay`: run a recorded trace through the same pipeline as a live session.
//!
//! Signals are handled from the start, also while a followed stream is still searched for
//! the trace's start; whatever ends the replay, the summary tells what was read.

use std::{
    fs::File,
    io::{IsTerminal, Read},
    sync::{Arc, atomic::AtomicBool, mpsc as std_mpsc},
    time::{Duration, Instant},
};

use anyhow::Context;
use vmatrace_common::model::Generation;

use super::{
    exit::Failure,
    runner::{self, Ended, Source},
    session::{self, FilterArgs, OutputArgs},
    signals::{self, Stop, StopReason},
};
use crate::{
    export::{
        printable,
        summary::{ReplaySection, Summary, SummaryInput},
    },
    pipeline::Pipeline,
    trace::{
        ReadOptions, ReplayOptions, ReplayOutcome, TraceError, TraceHeader, TraceReader,
        replay::{self, GrowingFile, Progress},
    },
    tui::{SharedState, SourceKind},
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

/// Replay factors outside this range are refused: slower than 1/1000 of the recorded
/// pace a trace never ends, faster than a million times is "as fast as possible".
const SPEED_RANGE: std::ops::RangeInclusive<f64> = 1e-3..=1e6;

fn parse_speed(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if SPEED_RANGE.contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?}: the speed factor is a number from 0.001 to 1000000 (1 = recorded pace; \
             leave it out for as fast as possible)"
        )),
    }
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    if args.tui && !std::io::stdout().is_terminal() {
        return Err(Failure::Usage(
            "--tui needs a terminal on stdout; use --headless (or --json) otherwise".into(),
        )
        .into());
    }
    let rt = signals::runtime()?;
    let stop = Stop::new();
    let on_hup = args.out.on_hangup();
    signals::install(&rt, &stop, on_hup.clone())?;
    let dashboard_wanted = !args.headless && std::io::stdout().is_terminal();
    let latest = args.out.telemetry.start(&rt, dashboard_wanted)?;
    let Some(reader) = start_reading(&args, &stop)? else {
        return Ok(());
    };
    let header = reader.header().clone();
    let skipped = reader.skipped();
    let mut pipeline = Pipeline::new(header.generation);
    if !header.sees_every_detach() {
        pipeline.validator.detaches_unseen();
    }
    let handles = session::add_output_sinks(
        &mut pipeline,
        &args.out,
        &header,
        &on_hup,
        session::Source::Replay,
    )?;
    let progress = Arc::new(Progress::default());
    let make = snapshot_summary(&header, &progress, &handles, skipped);
    super::telemetry::add_snapshot_sink(&mut pipeline, latest.as_ref(), make);
    let dashboard = dashboard_wanted.then(|| {
        session::attach_dashboard(
            &mut pipeline,
            SourceKind::Replay,
            &header,
            args.input.clone(),
            &handles,
        )
    });
    let played = play(&rt, &stop, &args, reader, pipeline, dashboard, progress)?;
    let report = Report {
        header: &header,
        pipeline: &played.pipeline,
        outcome: &played.outcome,
        stop: Some(played.stop),
        handles: Some(&handles),
        wall: played.wall,
        skipped,
    };
    session::print_summary(&report.summary(), &args.out, false);
    match &played.outcome.error {
        None => Ok(()),
        // A followed stream that just stops is how a VM's serial output ends: said, not
        // an error.
        Some(e @ TraceError::MissingEnd { .. }) if args.follow => {
            eprintln!("vmatrace: {}: {e}", printable(&args.input));
            Ok(())
        }
        Some(e) => Err(failure(&args.input, Some(e))),
    }
}

/// Open the input and find the trace's start. `None`: stopped before a trace appeared
/// (said, with a summary); an input that is no trace is an error, also with a summary.
fn start_reading(args: &ReplayArgs, stop: &Stop) -> anyhow::Result<Option<TraceReader>> {
    let (input, end_seen) = open_input(args, stop)?;
    let opts = ReadOptions {
        scan_for_magic: args.follow,
        end_seen,
    };
    match find_start(input, opts, stop) {
        Start::Found(r) => Ok(Some(*r)),
        Start::Stopped => {
            // Nothing of a trace yet: say so, with a summary like any other stop.
            no_trace(args, ReplayOutcome::default(), stop.reason());
            eprintln!(
                "vmatrace: {}: stopped before the trace started",
                printable(&args.input)
            );
            Ok(None)
        }
        Start::Failed(e) => {
            let outcome = ReplayOutcome {
                error: Some(e),
                ..ReplayOutcome::default()
            };
            let err = failure(&args.input, outcome.error.as_ref());
            no_trace(args, outcome, None);
            Err(err)
        }
    }
}

/// The summary of a replay that found no trace to play (stopped, or the input is not a
/// trace), printed like any other.
fn no_trace(args: &ReplayArgs, outcome: ReplayOutcome, stop: Option<StopReason>) {
    let header = unknown_header();
    let pipeline = Pipeline::new(header.generation);
    let report = Report::without_trace(&header, &pipeline, &outcome, stop);
    session::print_summary(&report.summary(), &args.out, false);
}

/// The running summary (`--snapshot-every`, metrics) as the replay goes.
fn snapshot_summary(
    header: &TraceHeader,
    progress: &Arc<Progress>,
    handles: &session::OutputHandles,
    skipped: u64,
) -> crate::export::snapshots::MakeSummary {
    let (header, progress, handles) = (header.clone(), Arc::clone(progress), handles.share());
    let started = Instant::now();
    Box::new(move |v: &_, t: &_| {
        let o = progress.outcome();
        let wall_s = started.elapsed().as_secs_f64();
        Summary::build(SummaryInput {
            mode: "replay",
            header: &header,
            totals: t,
            validator: v,
            duration_ns: o.recorded_duration_ns(),
            stop_reason: String::new(),
            anomaly_log: handles.anomaly_log_stats(),
            stats: handles.stats_snapshot(),
            programs: Vec::new(),
            startup_cpu_s: None,
            stop_cpu_s: None,
            recording: None,
            replay: Some(replay_section(&o, wall_s, skipped)),
        })
    })
}

/// A trace input, and for a followed file the flag that tells it the end record was
/// read (it then stops waiting for more).
type Input = (Box<dyn Read + Send>, Option<Arc<AtomicBool>>);

/// The input, opened (errors here are status 1: nothing was read).
fn open_input(args: &ReplayArgs, stop: &Stop) -> anyhow::Result<Input> {
    if args.input == "-" {
        return Ok((Box::new(std::io::stdin()), None));
    }
    let f =
        File::open(&args.input).with_context(|| format!("cannot open the trace {}", args.input))?;
    let md = f
        .metadata()
        .with_context(|| format!("cannot read the trace {}", args.input))?;
    anyhow::ensure!(
        !md.is_dir(),
        "cannot read the trace {}: it is a directory",
        args.input
    );
    Ok(if args.follow && md.is_file() {
        let g = GrowingFile::new(f, stop.flag());
        let end_seen = g.end_seen();
        (Box::new(g), Some(end_seen))
    } else {
        (Box::new(f), None)
    })
}

enum Start {
    Found(Box<TraceReader>),
    /// A stop came while the start was still being searched for.
    Stopped,
    Failed(TraceError),
}

/// Read the header on a thread of its own: a followed stream may show nothing for a long
/// time (a VM still booting), and a signal must still end the replay cleanly.
fn find_start(input: Box<dyn Read + Send>, opts: ReadOptions, stop: &Stop) -> Start {
    let (tx, rx) = std_mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("vmatrace-header".into())
        .spawn(move || {
            let _ = tx.send(TraceReader::with_options(input, opts));
        });
    if let Err(e) = spawned {
        return Start::Failed(TraceError::Io {
            offset: 0,
            source: e,
        });
    }
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(r)) => return Start::Found(Box::new(r)),
            Ok(Err(e)) => return Start::Failed(e),
            // The thread panicked (the panic hook makes the exit status 1).
            Err(std_mpsc::RecvTimeoutError::Disconnected) => return Start::Stopped,
            Err(std_mpsc::RecvTimeoutError::Timeout) if stop.is_requested() => {
                return Start::Stopped;
            }
            Err(std_mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// The header of a replay that never read one.
fn unknown_header() -> TraceHeader {
    let mut h = TraceHeader::synthetic(Generation::V7_0);
    h.source = "unknown".into();
    h.kernel_release = "unknown (no trace header was read)".into();
    h
}

/// Status 4 for a damaged trace, 1 for a failed read (a directory, EIO): the trace may
/// be fine, the machine is not.
fn failure(input: &str, e: Option<&TraceError>) -> anyhow::Error {
    match e {
        Some(e @ TraceError::Io { .. }) => anyhow::anyhow!("{input}: {e}"),
        Some(e) => Failure::BadTrace(format!("{input}: {e}")).into(),
        None => anyhow::anyhow!("{input}: the replay failed"),
    }
}

struct Played {
    pipeline: Pipeline,
    outcome: ReplayOutcome,
    stop: StopReason,
    /// Until the source ended (throughput), not until the user closed the dashboard.
    wall: Duration,
}

/// Run the reader thread into the pipeline (and the dashboard) until the trace ends or
/// a stop.
fn play(
    rt: &tokio::runtime::Runtime,
    stop: &Stop,
    args: &ReplayArgs,
    reader: TraceReader,
    pipeline: Pipeline,
    dashboard: Option<SharedState>,
    progress: Arc<Progress>,
) -> anyhow::Result<Played> {
    let options = ReplayOptions {
        speed: args.speed,
        duration: args.out.duration,
        filter: (!args.filter.is_empty()).then(|| {
            let f = args.filter.clone();
            Arc::new(move |e: &vmatrace_common::Event| f.matches(e)) as replay::EventFilter
        }),
        progress,
    };
    // The user reads the final numbers and quits; --duration is the reader's.
    let opts = runner::Options {
        dashboard,
        ..Default::default()
    };
    let outcome = runner::run(rt, stop, Source::Replay { reader, options }, pipeline, opts)?;
    if let Some(e) = &outcome.dashboard_error {
        eprintln!("vmatrace: dashboard: {e:#}");
    }
    let Ended::Replay(replayed) = outcome.ended else {
        anyhow::bail!("a replay ended as another source");
    };
    Ok(Played {
        outcome: replayed,
        stop: outcome.stop,
        pipeline: outcome.pipeline,
        wall: outcome.wall,
    })
}

fn stop_reason(given: Option<StopReason>, o: &ReplayOutcome) -> StopReason {
    given.unwrap_or(if o.duration_reached {
        StopReason::Duration
    } else if o.complete {
        StopReason::EndOfTrace
    } else if o.error.is_some() {
        StopReason::TraceError
    } else {
        StopReason::EndOfInput
    })
}

/// The summary's replay section for what the reader delivered so far (a running
/// snapshot: not complete, no error yet) or in all.
fn replay_section(o: &ReplayOutcome, wall_s: f64, skipped: u64) -> ReplaySection {
    ReplaySection {
        records: o.records,
        events: o.events,
        filtered: o.filtered,
        complete: o.complete,
        error: o.error.as_ref().map(ToString::to_string),
        wall_s,
        events_per_s: if wall_s > 0.0 {
            o.events as f64 / wall_s
        } else {
            0.0
        },
        skipped_bytes: skipped,
        trailing_bytes: o.trailing_bytes,
        record_losses: o.sequence,
    }
}

/// Everything a replay summary is made of.
struct Report<'a> {
    header: &'a TraceHeader,
    pipeline: &'a Pipeline,
    outcome: &'a ReplayOutcome,
    stop: Option<StopReason>,
    handles: Option<&'a session::OutputHandles>,
    wall: Duration,
    skipped: u64,
}

impl<'a> Report<'a> {
    fn summary(&self) -> Summary {
        let wall_s = self.wall.as_secs_f64();
        let o = self.outcome;
        Summary::build(SummaryInput {
            mode: "replay",
            header: self.header,
            totals: &self.pipeline.totals,
            validator: &self.pipeline.validator,
            duration_ns: o.recorded_duration_ns(),
            stop_reason: stop_reason(self.stop, o).key().into(),
            anomaly_log: self
                .handles
                .and_then(session::OutputHandles::anomaly_log_stats),
            stats: self
                .handles
                .and_then(session::OutputHandles::stats_snapshot),
            programs: Vec::new(),
            startup_cpu_s: None,
            stop_cpu_s: None,
            recording: None,
            replay: Some(replay_section(o, wall_s, self.skipped)),
        })
    }

    /// A replay that never got to a trace header.
    fn without_trace(
        header: &'a TraceHeader,
        pipeline: &'a Pipeline,
        outcome: &'a ReplayOutcome,
        stop: Option<StopReason>,
    ) -> Report<'a> {
        Report {
            header,
            pipeline,
            outcome,
            stop,
            handles: None,
            wall: Duration::ZERO,
            skipped: 0,
        }
    }
}
