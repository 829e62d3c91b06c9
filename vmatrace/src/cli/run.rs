//! `vmatrace run` (and `vmatrace record`, which is `run` plus a trace file): detect the
//! kernel, plan the probes, attach, and feed the live stream through the pipeline.

use std::{
    io::IsTerminal,
    process::ExitCode,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::sync::mpsc;
use vmatrace_common::Config;

use super::{
    EXIT_CANNOT_ATTACH,
    session::{self, FilterArgs, OutputArgs},
    signals,
};
use crate::{
    export::{
        clock::{clock_base_now, hostname},
        printable,
        summary::{Summary, SummaryInput, TracerSection},
    },
    kernel::{Capabilities, KernelInfo, caps::TracingProbe, plan, plan::AttachMode},
    live::{DEFAULT_RING_BUFFER_BYTES, LiveOptions, LiveSession, ProgramStat},
    pipeline::Pipeline,
    trace::{FilterInfo, HookRecord, Recorder, RecordingStatus, TraceHeader, TraceWriter},
    tui::{DashboardContext, DashboardExit, ProgramCost, SourceKind},
};

/// Keep the first stop reason (several triggers may fire during shutdown).
fn set_once(slot: &Mutex<Option<String>>, why: String) {
    if let Ok(mut g) = slot.lock()
        && g.is_none()
    {
        *g = Some(why);
    }
}

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
    /// Enable the kernel's BPF run-time statistics for the session (costs ~20 ns per
    /// program run) to report the tracer's own overhead.
    #[arg(long)]
    pub bpf_stats: bool,
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
    /// The trace file (created mode 0600, truncated), or `-` for stdout (the summary then
    /// goes to stderr).
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: String,
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

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let tui = !args.headless && std::io::stdout().is_terminal();
    live("run", &args.live, &args.filter, &args.out, None, tui)
}

pub fn record(args: RecordArgs) -> anyhow::Result<ExitCode> {
    live(
        "record",
        &args.live,
        &args.filter,
        &args.out,
        Some((args.output.as_str(), args.compress)),
        false,
    )
}

/// Why a live session cannot start here.
enum Missing {
    /// Not root / capabilities: what to do is about privileges.
    Privileges,
    /// The kernel or the machine cannot attach (BTF, generation, PMU, tracing programs).
    Kernel,
}

/// Print why nothing can be traced here and what to do; exit status 3.
fn cannot_attach(missing: Missing, what: &str) -> ExitCode {
    let todo = match missing {
        Missing::Privileges => {
            "  - run as root (e.g. `sudo vmatrace run`), or give the binary CAP_BPF and \
             CAP_PERFMON: `setcap cap_bpf,cap_perfmon+ep vmatrace`;\n"
        }
        Missing::Kernel => {
            "  - trace a real Debian kernel in QEMU instead: `cargo xtask run --vm`;\n  \
             - `vmatrace probes` shows what this kernel offers and why each hook is out;\n"
        }
    };
    eprintln!(
        "vmatrace: cannot trace on this machine: {what}\n\
         what to do:\n{todo}  \
         - to analyse a trace recorded elsewhere: `vmatrace replay FILE` (no root needed)."
    );
    ExitCode::from(EXIT_CANNOT_ATTACH)
}

/// A serial line or terminal as trace output must pass bytes unchanged (no `\n` →
/// `\r\n`, no flow-control characters): put it in raw mode.
fn make_raw_if_tty(fd: std::os::fd::RawFd) -> anyhow::Result<()> {
    // SAFETY: isatty only inspects the descriptor.
    if unsafe { libc::isatty(fd) } != 1 {
        return Ok(());
    }
    // SAFETY: termios is plain data; tcgetattr fills it for a valid terminal fd.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open terminal, `t` a valid out-pointer.
    if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
        return Err(std::io::Error::last_os_error()).context("tcgetattr on the trace output");
    }
    // SAFETY: cfmakeraw only edits the struct.
    unsafe { libc::cfmakeraw(&mut t) };
    // SAFETY: as above; TCSANOW applies the settings at once.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
        return Err(std::io::Error::last_os_error())
            .context("cannot put the trace output terminal in raw mode");
    }
    Ok(())
}

/// Removes a just-created output file when the session does not start.
struct RemoveOnDrop(Option<std::path::PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
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

fn config(live: &LiveArgs, filter: &FilterArgs) -> anyhow::Result<Config> {
    let mut c = Config::DEFAULT;
    c.self_tgid = std::process::id();
    c.filter_tgid = filter.pid.unwrap_or(0);
    if let Some(comm) = &filter.comm {
        let b = comm.as_bytes();
        let n = b.len().min(15);
        c.filter_comm[..n].copy_from_slice(&b[..n]);
        c.filter_comm_len = n as u32;
    }
    c.reader_sample_every = live.reader_sample;
    c.stream_entries = u32::from(live.stream_entries);
    if let Some(cg) = &live.cgroup {
        c.filter_cgroup = cgroup_id(cg)?;
    }
    Ok(c)
}

fn live(
    mode: &str,
    live: &LiveArgs,
    filter: &FilterArgs,
    out: &OutputArgs,
    record: Option<(&str, bool)>,
    tui: bool,
) -> anyhow::Result<ExitCode> {
    let config = config(live, filter)?;
    // Open the trace output before attaching anything: a wrong path fails at once. If
    // the session then cannot start, the empty file is removed again.
    let mut unfinished: Option<RemoveOnDrop> = None;
    let trace_out: Option<(Box<dyn std::io::Write + Send>, &str, bool)> = match record {
        None => None,
        Some(("-", compress)) => {
            // SAFETY: tcgetpgrp/getpgrp only query; fd 1 may be anything.
            let interactive = unsafe { libc::tcgetpgrp(1) == libc::getpgrp() };
            anyhow::ensure!(
                !interactive,
                "refusing to write a binary trace to your terminal: redirect stdout or use -o FILE"
            );
            // A serial line on stdout (a VM's ttyS1 as `>&3`) must pass bytes unchanged.
            make_raw_if_tty(1)?;
            Some((Box::new(std::io::stdout()), "-", compress))
        }
        Some((path, compress)) => {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("cannot create the trace {path}"))?;
            make_raw_if_tty(std::os::fd::AsRawFd::as_raw_fd(&f))?;
            unfinished = Some(RemoveOnDrop(Some(path.into())));
            Some((Box::new(f), path, compress))
        }
    };

    // 1. Privileges first: without them every later step fails with a less clear EPERM.
    let mut caps = Capabilities::detect();
    if !caps.can_bpf() {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        return Ok(cannot_attach(
            Missing::Privileges,
            &format!(
                "loading BPF programs needs root, or CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); \
             this process runs as euid {euid} without them"
            ),
        ));
    }
    // 2. The kernel: BTF, symbols, generation, offsets → the plan.
    let info = match KernelInfo::from_running_kernel() {
        Ok(i) => i,
        Err(e) => {
            return Ok(cannot_attach(
                Missing::Kernel,
                &format!(
                    "cannot introspect the running kernel ({e:#}); vmatrace needs its BTF \
                 (CONFIG_DEBUG_INFO_BTF=y, /sys/kernel/btf/vmlinux) and /proc/kallsyms"
                ),
            ));
        }
    };
    let tracing = caps.probe_tracing_programs(&info);
    let plan = match plan(&info, &caps) {
        Ok(p) => p,
        // Unsupported generation or unresolvable offsets: both are the kernel's.
        Err(e) => return Ok(cannot_attach(Missing::Kernel, &e.to_string())),
    };
    // The mm-wide mmap_lock tracepoints alone say nothing about any VMA's lock: a plan
    // without a single function hook cannot validate anything.
    if !plan.points.iter().any(|p| p.mode != AttachMode::Tracepoint) {
        let mut why = format!(
            "none of the per-VMA lock functions of kernel {} can be attached here{}",
            plan.kernel.release,
            if plan.points.is_empty() {
                String::new()
            } else {
                " (only the mm-wide mmap_lock tracepoints could)".to_string()
            }
        );
        if !caps.kprobes {
            why += "; kprobes: no kprobe PMU (/sys/bus/event_source/devices/kprobe)";
        }
        match &tracing {
            TracingProbe::Refused(e) => why += &format!("; fentry/fexit: refused ({e})"),
            TracingProbe::Unknown(e) => why += &format!("; fentry/fexit: unknown ({e})"),
            TracingProbe::Loads => {}
        }
        for n in &plan.notes {
            why += &format!("\n  note: {n}");
        }
        return Ok(cannot_attach(Missing::Kernel, &why));
    }

    // 3. Load and attach.
    let session = match LiveSession::start(LiveOptions {
        plan: plan.clone(),
        config,
        ring_buffer_bytes: live.ring_buffer_bytes,
        enable_stats: live.bpf_stats,
    }) {
        Ok(s) => s,
        Err(e) => return Ok(cannot_attach(Missing::Kernel, &format!("{e:#}"))),
    };
    let hooks: Vec<HookRecord> = session
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
    let attached = hooks.iter().filter(|h| h.attached).count();
    let functions_attached = session
        .hooks()
        .iter()
        .filter(|h| h.attached && h.point.mode != AttachMode::Tracepoint)
        .count();
    if functions_attached == 0 {
        let errors: Vec<String> = hooks
            .iter()
            .filter(|h| !h.attached)
            .map(|h| {
                format!(
                    "\n  {} ({}): {}",
                    h.target,
                    h.mode,
                    h.error.as_deref().unwrap_or("?")
                )
            })
            .collect();
        return Ok(cannot_attach(
            Missing::Kernel,
            &format!("no per-VMA lock function hook attached{}", errors.concat()),
        ));
    }

    let header = TraceHeader {
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
        },
    };

    // 4. The pipeline and its sinks.
    let mut pipeline = Pipeline::new(header.generation);
    let handles = session::add_output_sinks(&mut pipeline, out, &header)?;
    let mut recording: Option<Arc<Mutex<RecordingStatus>>> = None;
    let stdout_taken = matches!(record, Some(("-", _)));
    if let Some((w, path, compress)) = trace_out {
        let w = TraceWriter::new(w, &header, compress)
            .with_context(|| format!("cannot start the trace {path}"))?;
        let rec = Recorder::new(w, path, compress);
        if let Some(f) = &mut unfinished {
            f.0 = None;
        }
        recording = Some(rec.status());
        pipeline.add_sink(Box::new(rec));
    }
    // The dashboard, when on a terminal: its sink sees every batch; quitting it is one
    // more stop trigger.
    let dashboard = tui.then(|| {
        let ctx = DashboardContext::new(
            SourceKind::Live,
            header.kernel_release.clone(),
            header.generation,
        )
        .with_detail(format!("{attached}/{} hooks", header.hooks.len()))
        .with_plan(header.plan.clone());
        crate::tui::attach_to(&mut pipeline, ctx)
    });
    if dashboard.is_none() {
        eprintln!(
            "vmatrace: tracing kernel {} (generation {}), {attached}/{} hooks attached{}; \
             SIGINT or SIGTERM stops",
            printable(&header.kernel_release),
            header.generation.key(),
            header.hooks.len(),
            out.duration
                .map(|d| format!(", for {:.1} s", d.as_secs_f64()))
                .unwrap_or_default()
        );
    }

    // What loading, verifying and attaching cost, so the summary can tell it apart.
    let startup_cpu_s = Some(TracerSection::of_this_process().cpu_s());

    // 5. Stream until stopped; the session detaches, drains and closes the channel.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = Instant::now();
    let reason = Arc::new(Mutex::new(None::<String>));
    let programs = Arc::new(Mutex::new(Vec::<ProgramStat>::new()));
    let duration = out.duration;
    let stats_handle = session.stats_handle();
    let (r2, p2) = (Arc::clone(&reason), Arc::clone(&programs));
    // This process's CPU when the stop fires, before the session disarms, detaches and
    // drains: tracing's own cost is what lies between it and `startup_cpu_s`.
    let stop_cpu: Arc<Mutex<Option<f64>>> = Arc::new(Mutex::new(None));
    let stop_cpu2 = Arc::clone(&stop_cpu);
    let (pipeline, stream_result, dash_result) = rt.block_on(async move {
        let (tx, rx) = mpsc::channel(256);
        let quit = Arc::new(tokio::sync::Notify::new());
        let stop = {
            let quit = Arc::clone(&quit);
            let r2 = Arc::clone(&r2);
            async move {
                let why = tokio::select! {
                    sig = signals::terminated() => sig.to_string(),
                    _ = signals::after(duration) => "duration".to_string(),
                    _ = quit.notified() => "quit".to_string(),
                };
                set_once(&r2, why);
                if let Ok(mut c) = stop_cpu2.lock() {
                    *c = Some(TracerSection::of_this_process().cpu_s());
                }
            }
        };
        let stream = tokio::spawn(session.stream(tx, stop));
        // BPF run-time statistics, sampled while the programs exist (for the dashboard
        // and the summary); a no-op list when statistics are off.
        let sampler = {
            let shared = dashboard.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let mut last = Instant::now();
                loop {
                    tick.tick().await;
                    let now = stats_handle.program_stats();
                    if now.is_empty() {
                        continue;
                    }
                    if let Some(shared) = &shared {
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
                    if let Ok(mut g) = p2.lock() {
                        *g = now;
                    }
                }
            })
        };
        let driver = tokio::spawn(pipeline.drive(rx, Duration::from_millis(250)));
        let mut dash_result = Ok(());
        if let Some(shared) = dashboard {
            // The dashboard stops on its own keys and signals; either way the capture
            // must stop too.
            let until = {
                let r2 = Arc::clone(&r2);
                async move {
                    signals::after(duration).await;
                    set_once(&r2, "duration".into());
                }
            };
            match crate::tui::run(shared.clone(), until).await {
                Ok(DashboardExit::UserQuit) => set_once(&r2, "quit".into()),
                Ok(DashboardExit::Signal) => set_once(&r2, "signal".into()),
                Ok(DashboardExit::Stopped) => {}
                Err(e) => dash_result = Err(e),
            }
            quit.notify_one();
        }
        let res = match stream.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("the capture task failed: {e}")),
        };
        sampler.abort();
        let pipeline = match driver.await {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("vmatrace: the pipeline task failed: {e}");
                None
            }
        };
        (pipeline, res, dash_result)
    });
    let Some(pipeline) = pipeline else {
        return Ok(ExitCode::FAILURE);
    };
    if let Err(e) = dash_result {
        eprintln!("vmatrace: dashboard: {e:#}");
    }
    let elapsed = started.elapsed();
    let stop_reason = reason
        .lock()
        .ok()
        .and_then(|mut g| g.take())
        .unwrap_or_else(|| "source ended".into());

    let summary = Summary::build(SummaryInput {
        mode,
        header: &header,
        totals: &pipeline.totals,
        validator: &pipeline.validator,
        duration_ns: u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
        stop_reason,
        anomaly_log: handles.anomaly_log_stats(),
        stats: handles.stats_snapshot(),
        recording: recording.map(|r| r.lock().map(|g| g.clone()).unwrap_or_default()),
        replay: None,
        programs: programs.lock().map(|g| g.clone()).unwrap_or_default(),
        startup_cpu_s,
        stop_cpu_s: stop_cpu.lock().ok().and_then(|c| *c),
    });
    session::print_summary(&summary, out.json, stdout_taken);
    if let Err(e) = stream_result {
        eprintln!("vmatrace: capture ended with an error: {e:#}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
