//! `vmatrace run` (and `vmatrace record`, which is `run` plus a trace file): detect the
//! kernel, plan the probes, attach, and feed the live stream through the pipeline.
//!
//! The phases, each a function: signals first (nothing may kill the session half-way),
//! then [`plan_here`] (privileges, kernel, plan), [`attach`], the trace output (only now
//! is a file created), [`stream`] until a stop, and the summary.

use std::{
    io::IsTerminal,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;

use super::{
    exit::{Failure, Missing},
    runner::{self, Ended, Source},
    session::{self, FilterArgs, OutputArgs},
    signals::{self, Stop, StopReason},
    trace_output::{Pending, TraceTarget},
};
use crate::{
    export::{
        clock::{clock_base_now, hostname},
        printable,
        summary::{Summary, SummaryInput, TracerSection},
    },
    kernel::{
        Capabilities, KernelInfo,
        caps::TracingProbe,
        plan::{AttachMode, AttachPreference, ProbePlan},
        plan_with,
    },
    live::{
        DEFAULT_RING_BUFFER_BYTES, Filters, LiveOptions, LiveSession, ProgramStat, StreamOptions,
    },
    pipeline::Pipeline,
    trace::{FilterInfo, HookRecord, Recorder, RecordingStatus, TraceHeader, TraceWriter},
    tui::{ProgramCost, SharedState, SourceKind},
};

/// Options of every live session.
#[derive(Clone, Debug, clap::Args)]
pub struct LiveArgs {
    /// Only trace tasks in this cgroup v2: a directory under /sys/fs/cgroup (its inode
    /// number is the cgroup id) or the numeric id. Filtered in the kernel.
    #[arg(long, value_name = "PATH|ID")]
    pub cgroup: Option<String>,
    /// Stream one in N `lock_vma_under_rcu` results as events (with the VMA's refcount
    /// and sequence numbers) so the validator can check readers; 0 = only count outcomes
    /// in per-CPU counters. Every page fault takes this path: keep N large (e.g. 1000).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub reader_sample: u32,
    /// Size of the event ring buffer (a power of two; rounded up).
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BUFFER_BYTES)]
    pub ring_buffer_bytes: u32,
    /// Stream every writer-path entry (`__vma_start_write`, start-exclude, detach) as its
    /// own event, so a wait still in progress shows before it ends. By default an entry
    /// only saves what its return needs and the return's event stands for both: half the
    /// events, and a much cheaper entry program (docs/performance.md).
    #[arg(long)]
    pub stream_entries: bool,
    /// A writer that waited at least this long for readers (`__vma_start_write`,
    /// start-exclude, detach) is reported with its syscall and kernel stack, symbolized
    /// from kallsyms (Slowest waits, anomaly log, summary). `0` or `off`: never. Shorter
    /// waits cost one comparison.
    #[arg(long, value_name = "TIME", default_value = "1ms", value_parser = crate::cli::session::parse_slow_wait)]
    pub slow_wait: std::time::Duration,
    /// Enable the kernel's BPF run-time statistics for the session (costs ~20 ns per
    /// program run) to report the tracer's own overhead.
    #[arg(long)]
    pub bpf_stats: bool,
    /// Which mechanism to try first per kernel function. `auto`: kprobe/kretprobe where
    /// the kernel can preempt a task inside an fentry/fexit program (preempt=full, lazy,
    /// RT, or unknown: the kernel then skips that program's other runs on the CPU, and
    /// those events are lost), fentry/fexit (cheaper) where it cannot.
    #[arg(long, value_enum, default_value_t = AttachPreference::Auto)]
    pub attach: AttachPreference,
}

/// Trace the per-VMA lock live: attach to the running kernel (root or CAP_BPF +
/// CAP_PERFMON), validate every event against the refcount model, report anomalies.
/// Exit status 3 when nothing can be attached here (the message says what is missing).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// No dashboard: trace until --duration / SIGINT / SIGTERM, then print the summary.
    /// Implied when stdout is not a terminal.
    #[arg(long)]
    pub headless: bool,
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// Like `run --headless`, and write every event and counter snapshot to a trace that
/// `vmatrace replay` reads without root (format: docs/trace-format.md).
#[derive(Debug, clap::Args)]
pub struct RecordArgs {
    /// The trace file (created mode 0600 once tracing starts), a device or FIFO, or `-`
    /// for stdout (the summary then goes to stderr). An existing file is refused unless
    /// --force.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: String,
    /// Replace an existing FILE, but only once the new recording is complete: until then
    /// it goes to a temporary file beside it, removed if the session fails.
    #[arg(long)]
    pub force: bool,
    /// Compress the records with zstd (about 5-10× smaller).
    #[arg(long)]
    pub compress: bool,
    #[command(flatten)]
    pub live: LiveArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub out: OutputArgs,
}

/// A recording asked for by `record`.
struct Recording {
    output: String,
    force: bool,
    compress: bool,
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let tui = !args.headless && std::io::stdout().is_terminal();
    live("run", &args.live, &args.filter, &args.out, None, tui)
}

pub fn record(args: RecordArgs) -> anyhow::Result<()> {
    // Checked now, so a wrong path fails before anything is attached; nothing is created
    // until tracing starts.
    let rec = Recording {
        output: args.output.clone(),
        force: args.force,
        compress: args.compress,
    };
    live(
        "record",
        &args.live,
        &args.filter,
        &args.out,
        Some(rec),
        false,
    )
}

fn cgroup_id(spec: &str) -> anyhow::Result<u64> {
    if let Ok(id) = spec.parse::<u64>() {
        return Ok(id);
    }
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(spec)
        .with_context(|| format!("--cgroup {spec}: not a cgroup id nor a readable directory"))?;
    anyhow::ensure!(md.is_dir(), "--cgroup {spec}: not a directory");
    Ok(md.ino())
}

/// The in-kernel filters (`live::program_config` turns them into `CONFIG`). A wrong
/// `--cgroup` fails here, before anything else is set up.
fn filters(live: &LiveArgs, filter: &FilterArgs) -> anyhow::Result<Filters> {
    Ok(Filters {
        self_tgid: None,
        tgid: filter.pid,
        comm: filter.comm.clone(),
        cgroup: live.cgroup.as_deref().map(cgroup_id).transpose()?,
    })
}

fn live(
    mode: &str,
    live: &LiveArgs,
    filter: &FilterArgs,
    out: &OutputArgs,
    record: Option<Recording>,
    tui: bool,
) -> anyhow::Result<()> {
    let filters = filters(live, filter)?;
    let rt = signals::runtime()?;
    let stop = Stop::new();
    let on_hup = out.on_hangup();
    signals::install(&rt, &stop, on_hup.clone())?;
    check_privileges()?;
    // Checked now, so a wrong path fails before anything is attached; nothing is created
    // until tracing starts.
    let record = record
        .map(|r| TraceTarget::check(&r.output, r.force).map(|t| (t, r)))
        .transpose()?;
    let stdout_busy = tui || matches!(record, Some((TraceTarget::Stdout, _)));
    let latest = out.telemetry.start(&rt, stdout_busy)?;
    let plan = plan_here(live.attach)?;
    let session = attach(plan.clone(), filters, live)?;
    let header = header(plan, &session, filter);

    let mut pipeline = Pipeline::new(header.generation);
    if !header.sees_every_detach() {
        pipeline.validator.detaches_unseen();
    }
    let handles =
        session::add_output_sinks(&mut pipeline, out, &header, &on_hup, session::Source::Live)?;
    let stdout_taken = matches!(record, Some((TraceTarget::Stdout, _)));
    let (recording, pending) = match record {
        Some((target, rec)) => add_recorder(&mut pipeline, target, &rec, &header)?,
        None => (None, None),
    };
    let dashboard = tui.then(|| live_dashboard(&mut pipeline, &header, &handles));
    if dashboard.is_none() {
        announce(&header, out.duration);
    }
    // What loading, verifying and attaching cost, so the summary can tell it apart.
    let startup_cpu_s = Some(TracerSection::of_this_process().cpu_s());
    let programs = Arc::new(Mutex::new(Vec::<ProgramStat>::new()));
    let make = snapshot_summary(
        mode,
        &header,
        &handles,
        recording.clone(),
        &programs,
        startup_cpu_s,
    );
    super::telemetry::add_snapshot_sink(&mut pipeline, latest.as_ref(), make);
    let streamed = stream(
        &rt,
        &stop,
        session,
        pipeline,
        dashboard,
        out.duration,
        programs,
    )?;
    let recording = recording.map(|r| r.lock().map(|g| g.clone()).unwrap_or_default());
    let (ended, status) = ((streamed.stop, startup_cpu_s), recording.clone());
    let summary = final_summary(mode, &header, &streamed, ended, &handles, status);
    session::print_summary(&summary, out, stdout_taken);
    if let Some(p) = pending {
        finish_replacement(p, recording.as_ref())?;
    }
    match streamed.error {
        Some(e) => Err(Failure::Unverified(format!("capture ended with an error: {e:#}")).into()),
        None => Ok(()),
    }
}

/// The session's summary once the source has ended.
/// `(stop, startup_cpu_s)`: why the session ended, and its CPU before tracing began.
fn final_summary(
    mode: &str,
    header: &TraceHeader,
    streamed: &Streamed,
    (stop, startup_cpu_s): (StopReason, Option<f64>),
    handles: &session::OutputHandles,
    recording: Option<RecordingStatus>,
) -> Summary {
    Summary::build(SummaryInput {
        mode,
        header,
        totals: &streamed.pipeline.totals,
        validator: &streamed.pipeline.validator,
        duration_ns: u64::try_from(streamed.wall.as_nanos()).unwrap_or(u64::MAX),
        stop_reason: stop.key().into(),
        anomaly_log: handles.anomaly_log_stats(),
        stats: handles.stats_snapshot(),
        recording,
        replay: None,
        programs: streamed.programs.clone(),
        startup_cpu_s,
        stop_cpu_s: streamed.stop_cpu_s,
    })
}

/// The dashboard of a live session, titled with how many hooks attached.
fn live_dashboard(
    pipeline: &mut Pipeline,
    header: &TraceHeader,
    handles: &session::OutputHandles,
) -> SharedState {
    let attached = header.hooks.iter().filter(|h| h.attached).count();
    let hooks = format!("{attached}/{} hooks", header.hooks.len());
    session::attach_dashboard(pipeline, SourceKind::Live, header, hooks, handles)
}

/// The running summary (`--snapshot-every`, metrics) while a live session traces.
fn snapshot_summary(
    mode: &str,
    header: &TraceHeader,
    handles: &session::OutputHandles,
    recording: Option<Arc<Mutex<RecordingStatus>>>,
    programs: &Arc<Mutex<Vec<ProgramStat>>>,
    startup_cpu_s: Option<f64>,
) -> crate::export::snapshots::MakeSummary {
    let (mode, header, programs) = (mode.to_string(), header.clone(), Arc::clone(programs));
    let handles = handles.share();
    let started = Instant::now();
    Box::new(move |v: &_, t: &_| {
        Summary::build(SummaryInput {
            mode: &mode,
            header: &header,
            totals: t,
            validator: v,
            duration_ns: u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            stop_reason: String::new(),
            anomaly_log: handles.anomaly_log_stats(),
            stats: handles.stats_snapshot(),
            recording: recording
                .as_ref()
                .map(|r| r.lock().map(|g| g.clone()).unwrap_or_default()),
            replay: None,
            programs: programs.lock().map(|g| g.clone()).unwrap_or_default(),
            startup_cpu_s,
            stop_cpu_s: None,
        })
    })
}

/// Privileges first: without them every later step fails with a less clear EPERM.
fn check_privileges() -> anyhow::Result<()> {
    if !Capabilities::detect().can_bpf() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        return Err(Failure::cannot_attach(
            Missing::Privileges,
            format!(
                "loading BPF programs needs root, or CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); \
                 this process runs as euid {euid} without them"
            ),
        )
        .into());
    }
    Ok(())
}

/// The running kernel and the probe plan: every way this can fail is a
/// [`Failure::CannotAttach`] saying what is missing.
fn plan_here(pref: AttachPreference) -> anyhow::Result<ProbePlan> {
    let mut caps = Capabilities::detect();
    let info = KernelInfo::from_running_kernel().map_err(|e| {
        Failure::cannot_attach(
            Missing::Kernel,
            format!(
                "cannot introspect the running kernel ({e:#}); vmatrace needs its BTF \
                 (CONFIG_DEBUG_INFO_BTF=y, /sys/kernel/btf/vmlinux) and /proc/kallsyms"
            ),
        )
    })?;
    let tracing = caps.probe_tracing_programs(&info);
    // Unsupported generation or unresolvable offsets: both are the kernel's.
    let plan = plan_with(&info, &caps, pref)
        .map_err(|e| Failure::cannot_attach(Missing::Kernel, e.to_string()))?;
    // The mm-wide mmap_lock tracepoints alone say nothing about any VMA's lock: a plan
    // without a single function hook cannot validate anything.
    if !plan.points.iter().any(|p| p.mode != AttachMode::Tracepoint) {
        return Err(Failure::cannot_attach(
            Missing::Kernel,
            nothing_attachable(&plan, &caps, &tracing),
        )
        .into());
    }
    Ok(plan)
}

fn nothing_attachable(plan: &ProbePlan, caps: &Capabilities, tracing: &TracingProbe) -> String {
    let mut why = format!(
        "none of the per-VMA lock functions of kernel {} can be attached here{}",
        plan.kernel.release,
        if plan.points.is_empty() {
            ""
        } else {
            " (only the mm-wide mmap_lock tracepoints could)"
        }
    );
    if !caps.kprobes {
        why += "; kprobes: no kprobe PMU (/sys/bus/event_source/devices/kprobe)";
    }
    match tracing {
        TracingProbe::Refused(e) => why += &format!("; fentry/fexit: refused ({e})"),
        TracingProbe::Unknown(e) => why += &format!("; fentry/fexit: unknown ({e})"),
        TracingProbe::Loads => {}
    }
    for n in &plan.notes {
        why += &format!("\n  note: {n}");
    }
    why
}

/// Load and attach per plan; at least one function hook must attach.
fn attach(plan: ProbePlan, filters: Filters, live: &LiveArgs) -> anyhow::Result<LiveSession> {
    let session = LiveSession::start(LiveOptions {
        plan,
        filters,
        stream: StreamOptions {
            reader_sample_every: live.reader_sample,
            stream_entries: live.stream_entries,
            ring_buffer_bytes: live.ring_buffer_bytes,
            slow_wait_ns: u64::try_from(live.slow_wait.as_nanos()).unwrap_or(u64::MAX),
        },
        enable_stats: live.bpf_stats,
    })
    .map_err(|e| Failure::cannot_attach(Missing::Kernel, format!("{e:#}")))?;
    let functions_attached = session
        .hooks()
        .iter()
        .filter(|h| h.attached && h.point.mode != AttachMode::Tracepoint)
        .count();
    if functions_attached == 0 {
        let errors: String = session
            .hooks()
            .iter()
            .filter(|h| !h.attached)
            .map(|h| {
                format!(
                    "\n  {} ({}): {}",
                    h.point.target,
                    h.point.mode.key(),
                    h.error.as_deref().unwrap_or("?")
                )
            })
            .collect();
        return Err(Failure::cannot_attach(
            Missing::Kernel,
            format!("no per-VMA lock function hook attached{errors}"),
        )
        .into());
    }
    Ok(session)
}

/// The session's header: what the summary, the anomaly log and a recording describe.
fn header(plan: ProbePlan, session: &LiveSession, filter: &FilterArgs) -> TraceHeader {
    let config = session.config();
    let hooks = session
        .hooks()
        .iter()
        .map(|h| HookRecord {
            target: h.point.target.clone(),
            program: h.point.program.clone(),
            mode: h.point.mode.key().to_string(),
            attached: h.attached,
            error: h.error.clone(),
        })
        .collect();
    TraceHeader {
        vmatrace_version: env!("CARGO_PKG_VERSION").to_string(),
        source: "live".into(),
        host: hostname(),
        kernel_release: plan.kernel.release.clone(),
        generation: plan.generation,
        offsets: plan.offsets,
        clock: clock_base_now(),
        plan: Some(plan),
        hooks,
        filters: FilterInfo {
            self_tgid: config.self_tgid,
            pid: filter.pid,
            comm: filter.comm.clone(),
            cgroup: (config.filter_cgroup != 0).then_some(config.filter_cgroup),
            reader_sample_every: config.reader_sample_every,
            stream_entries: config.stream_entries != 0,
            slow_wait_ns: config.slow_wait_ns,
        },
    }
}

/// Open the trace output (tracing has started: only now is a file created) and add the
/// recorder to the pipeline.
/// What the recorder reports while it records.
type SharedRecording = Arc<Mutex<RecordingStatus>>;

fn add_recorder(
    pipeline: &mut Pipeline,
    target: TraceTarget,
    rec: &Recording,
    header: &TraceHeader,
) -> anyhow::Result<(Option<SharedRecording>, Option<Pending>)> {
    let (w, pending) = target.open()?.into_parts();
    let w = TraceWriter::new(w, header, rec.compress)
        .with_context(|| format!("cannot start the trace {}", rec.output))?;
    let recorder = Recorder::new(w, &rec.output, rec.compress);
    let status = recorder.status();
    pipeline.add_sink(Box::new(recorder));
    Ok((Some(status), pending))
}

/// `--force`: the new recording replaces the old file only if it is complete.
fn finish_replacement(p: Pending, recording: Option<&RecordingStatus>) -> anyhow::Result<()> {
    match recording {
        Some(r) if r.complete && r.error.is_none() => p.commit(),
        _ => {
            let kept = p.keep();
            Err(anyhow::anyhow!(
                "the recording did not complete: the old file was left as it was, and what was \
                 recorded is in {}",
                kept.display()
            ))
        }
    }
}

fn announce(header: &TraceHeader, duration: Option<Duration>) {
    eprintln!(
        "vmatrace: tracing kernel {} (generation {}), {}/{} hooks attached{}; \
         SIGINT or SIGTERM stops",
        printable(&header.kernel_release),
        header.generation.key(),
        header.hooks.iter().filter(|h| h.attached).count(),
        header.hooks.len(),
        duration
            .map(|d| format!(", for {:.1} s", d.as_secs_f64()))
            .unwrap_or_default()
    );
}

/// What streaming produced.
struct Streamed {
    pipeline: Pipeline,
    stop: StopReason,
    wall: Duration,
    error: Option<anyhow::Error>,
    programs: Vec<ProgramStat>,
    /// This process's CPU when the stop fired, before the session disarmed, detached and
    /// drained: tracing's own cost lies between it and the start-up CPU.
    stop_cpu_s: Option<f64>,
}

/// Stream until a signal, `duration`, the dashboard's quit or the source's end; the
/// session detaches, drains and closes the channel, the pipeline finishes its sinks.
fn stream(
    rt: &tokio::runtime::Runtime,
    stop: &Stop,
    session: LiveSession,
    pipeline: Pipeline,
    dashboard: Option<SharedState>,
    duration: Option<Duration>,
    programs: Arc<Mutex<Vec<ProgramStat>>>,
) -> anyhow::Result<Streamed> {
    let stop_cpu = Arc::new(Mutex::new(None::<f64>));
    let sampler = rt.spawn(sample_program_stats(
        session.stats_handle(),
        dashboard.clone(),
        Arc::clone(&programs),
    ));
    let on_stop = {
        let stop_cpu = Arc::clone(&stop_cpu);
        Box::new(move || {
            if let Ok(mut c) = stop_cpu.lock() {
                *c = Some(TracerSection::of_this_process().cpu_s());
            }
        })
    };
    let opts = runner::Options {
        dashboard,
        duration,
        on_stop: Some(on_stop),
    };
    let outcome = runner::run(rt, stop, Source::Live(session), pipeline, opts);
    sampler.abort();
    let outcome = outcome?;
    if let Some(e) = &outcome.dashboard_error {
        eprintln!("vmatrace: dashboard: {e:#}");
    }
    let Ended::Live(error) = outcome.ended else {
        anyhow::bail!("a live session ended as another source");
    };
    Ok(Streamed {
        pipeline: outcome.pipeline,
        stop: outcome.stop,
        wall: outcome.wall,
        error,
        programs: programs.lock().map(|g| g.clone()).unwrap_or_default(),
        stop_cpu_s: stop_cpu.lock().ok().and_then(|c| *c),
    })
}

/// BPF run-time statistics, sampled while the programs exist (for the dashboard and the
/// summary); nothing when statistics are off.
async fn sample_program_stats(
    stats: crate::live::StatsHandle,
    dashboard: Option<SharedState>,
    into: Arc<Mutex<Vec<ProgramStat>>>,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = Instant::now();
    loop {
        tick.tick().await;
        let now = stats.program_stats();
        if now.is_empty() {
            continue;
        }
        if let Some(shared) = &dashboard {
            let costs = now
                .iter()
                .map(|p| ProgramCost {
                    name: p.name.clone(),
                    run_cnt: p.run_cnt,
                    run_time_ns: p.run_time_ns,
                })
                .collect();
            crate::tui::set_program_stats(shared, costs, last.elapsed());
        }
        last = Instant::now();
        if let Ok(mut g) = into.lock() {
            *g = now;
        }
    }
}
