//! The exit summary: `--json` prints [`Summary`] as one JSON object (schema in
//! `docs/summary.md`), otherwise [`Summary::human`] prints the same facts as text.
//! A replay of a recorded trace gives the same `events`, `anomalies`, `losses`, `reader`
//! and `wait_ns` sections as the live run that recorded it.

use std::collections::BTreeMap;

use serde::Serialize;
use vmatrace_common::{Counter, EventKind, event::ProbeId, model::Generation};

use super::anomaly_log::LogStats;
use super::clock::LocalZone;
use super::text::printable as p;
use super::units::{duration_ns, size};
use crate::{
    kernel::plan::{LogicalEvent, Observability, ProbePlan},
    pipeline::{
        Totals,
        totals::{LOSS_COUNTERS, saturated, sum},
    },
    stats::{Percentiles, StatsSnapshot},
    trace::{RecordingStatus, SequenceLosses, TraceHeader},
    validate::Validator,
};

pub const SUMMARY_SCHEMA: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub schema: u32,
    pub vmatrace_version: String,
    /// The git revision vmatrace was built from (`unknown` outside git).
    pub git_revision: String,
    /// Random id of this vmatrace process (also on every anomaly-log line).
    pub run_id: String,
    /// Wall clock (RFC 3339 UTC) when this vmatrace process started.
    pub started_at: String,
    /// Wall clock when the summary was made: the end of the session; `null` in a
    /// progress snapshot (`--snapshot-every`) of a session still running.
    pub ended_at: Option<String>,
    /// Wall clock when this summary or snapshot was made.
    pub updated_at: String,
    /// Node name of the machine vmatrace ran on (`host` is the traced machine's).
    pub tracer_host: String,
    /// `run`, `record` or `replay`.
    pub mode: String,
    pub host: String,
    pub kernel: String,
    pub generation: String,
    /// Live: wall time traced. Replay: time between the first and last record.
    pub duration_s: f64,
    /// Why the session ended (`duration`, `SIGINT`, `end of trace`, ...).
    pub stop_reason: String,
    pub events: EventsSection,
    pub anomalies: AnomaliesSection,
    pub losses: LossesSection,
    /// Reader-side kernel counters (`lock_vma_under_rcu` outcomes etc.).
    pub reader: BTreeMap<String, u64>,
    /// Every kernel counter by name (latest snapshot).
    pub counters: BTreeMap<String, u64>,
    /// `exclusion`: waits for readers to leave (see `stats.wait_source`); `write_lock`:
    /// the whole `__vma_start_write` slow path. Empty without statistics.
    pub wait_ns: BTreeMap<String, Percentiles>,
    /// The statistics module's picture: histograms, slowest waits, top processes and
    /// VMAs (user addresses only), reader outcomes.
    pub stats: Option<StatsSnapshot>,
    /// Cost of the eBPF programs (`--bpf-stats`; empty otherwise or on replay).
    pub programs: Vec<ProgramCostSection>,
    pub plan: Option<PlanSection>,
    /// The session's filters and streaming options (a filtered trace is partial;
    /// `slow_wait_ns` says which waits came with their syscall and stack).
    pub filters: crate::trace::FilterInfo,
    /// Every hook of the session: function or tracepoint, program, mechanism, attached?
    /// (from the trace header on replay; empty for a synthetic source).
    pub hooks: Vec<HookStatus>,
    pub validator: ValidatorSection,
    /// What vmatrace itself used so far (this process: decode, validate, statistics,
    /// sinks; not its BPF programs, which are in `programs`).
    pub tracer: TracerSection,
    pub anomaly_log: Option<LogStats>,
    pub recording: Option<RecordingStatus>,
    pub replay: Option<ReplaySection>,
    /// The trace header's clock base, for times of day in the text form (the JSON keeps
    /// monotonic `ts_ns`, as the trace does).
    #[serde(skip)]
    pub clock: crate::trace::ClockBase,
}

#[derive(Clone, Debug, Serialize)]
pub struct EventsSection {
    pub total: u64,
    /// Streamed events by `EventKind` key (every kind listed, zeros included).
    pub by_kind: BTreeMap<String, u64>,
    pub by_logical_event: BTreeMap<String, LogicalCount>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LogicalCount {
    pub count: u64,
    /// How the plan observed it: `direct`, `proxy`, `unobservable`, or `unknown` (no plan).
    pub observed: String,
    /// Where the count comes from.
    pub source: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct AnomaliesSection {
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LossesSection {
    /// Sum of every entry below: zero means nothing was lost anywhere.
    pub total: u64,
    /// Kernel-side loss counters by name (ring buffer full, unmatched returns, ...).
    pub kernel: BTreeMap<String, u64>,
    /// Ring-buffer records userspace could not decode.
    pub undecodable: u64,
    /// Anomaly-log lines that could not be written.
    pub anomaly_log_lines: u64,
    /// Events not written to the trace after a recording failure.
    pub unrecorded_events: u64,
    /// Replay: trace records missing, duplicated or reordered (sequence numbers, format
    /// version 2). Their events were not validated; the validator resynchronised.
    pub trace_records: SequenceLosses,
    /// Entries above (`total` included) that reached `u64::MAX`: counts saturate instead of
    /// wrapping, so the true value may be larger. Empty normally.
    pub saturated: Vec<String>,
}

impl LossesSection {
    /// Every entry by name, kernel counters first.
    fn entries(&self) -> impl Iterator<Item = (&str, u64)> {
        self.kernel.iter().map(|(k, n)| (k.as_str(), *n)).chain([
            ("undecodable", self.undecodable),
            ("anomaly_log_lines", self.anomaly_log_lines),
            ("unrecorded_events", self.unrecorded_events),
            ("trace_records.missing", self.trace_records.missing),
            ("trace_records.duplicate", self.trace_records.duplicate),
            ("trace_records.reordered", self.trace_records.reordered),
        ])
    }

    /// Names of the saturated entries (`total` last).
    fn saturated_names(&self) -> Vec<String> {
        self.entries()
            .chain([("total", self.total)])
            .filter(|(_, n)| saturated(*n))
            .map(|(k, _)| k.to_string())
            .collect()
    }
}

/// A count for the text summary: a saturated one says that the true value may be larger.
fn count(n: u64) -> String {
    if saturated(n) {
        format!("≥ {n} (saturated)")
    } else {
        n.to_string()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PlanSection {
    /// The mechanism tried first per kernel function, and why (preemption model).
    pub attach: crate::kernel::plan::AttachChoice,
    /// Logical event → `direct` / `proxy: <via>` / `unobservable: <reason>`.
    pub coverage: BTreeMap<String, String>,
    pub hooks_attached: usize,
    pub hooks_failed: Vec<HookFailure>,
    /// Whether a fatal signal can end a write lock's wait for readers (`-EINTR`, counted
    /// in `stats.interrupted`): this kernel's profile, 6.19+.
    pub killable_writers: bool,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HookFailure {
    pub target: String,
    pub program: String,
    pub error: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub target: String,
    pub program: String,
    /// `fentry`, `fexit`, `kprobe`, `kretprobe`, `tracepoint`, ...
    pub mode: String,
    pub attached: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramCostSection {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub ns_per_run: Option<f64>,
    /// Runs the kernel skipped (BPF recursion protection): events never seen.
    pub skipped_runs: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TracerSection {
    /// User and system CPU seconds of this process (`getrusage(RUSAGE_SELF)`).
    pub cpu_user_s: f64,
    pub cpu_system_s: f64,
    /// Peak resident set size, MiB.
    pub max_rss_mib: f64,
    /// Resident set size now (`/proc/self/statm`), MiB; 0 if unreadable.
    pub rss_mib: f64,
    /// Live only: CPU seconds spent before tracing began (BTF parsing, program load and
    /// verification, which the kernel charges to this process as system time, attach).
    /// `stop_cpu_s - startup_cpu_s` is the cost while tracing.
    pub startup_cpu_s: Option<f64>,
    /// Live only: CPU seconds when the session was told to stop, before it disarmed,
    /// detached (which the kernel charges as system time) and drained the ring.
    pub stop_cpu_s: Option<f64>,
}

/// Resident pages (`statm`'s second field) times the page size.
fn current_rss_mib() -> Option<f64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages as f64 * u64::try_from(page).ok()? as f64 / (1024.0 * 1024.0))
}

impl TracerSection {
    pub fn of_this_process() -> Self {
        // SAFETY: getrusage fills the struct it is given; a zeroed rusage is valid input.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
            return Self::default();
        }
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        Self {
            cpu_user_s: secs(u.ru_utime),
            cpu_system_s: secs(u.ru_stime),
            // ru_maxrss is in KiB on Linux.
            max_rss_mib: u.ru_maxrss as f64 / 1024.0,
            rss_mib: current_rss_mib().unwrap_or(0.0),
            startup_cpu_s: None,
            stop_cpu_s: None,
        }
    }

    /// CPU seconds (user + system) so far.
    pub fn cpu_s(&self) -> f64 {
        self.cpu_user_s + self.cpu_system_s
    }

    /// Live: CPU seconds between the start of tracing and the stop.
    pub fn tracing_cpu_s(&self) -> Option<f64> {
        Some(self.stop_cpu_s? - self.startup_cpu_s?)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ValidatorSection {
    pub events_observed: u64,
    /// Times the validator forgot per-VMA state because of a loss.
    pub resyncs: u64,
    /// VMAs the model tracks at the end, and how many it had to forget (table bound).
    pub tracked_vmas: usize,
    pub evicted_vmas: u64,
    /// Tracked VMAs per model phase at the end (`unknown`, `detached`, `attached`, ...).
    pub phases: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ReplaySection {
    pub records: u64,
    /// Events read from the trace.
    pub events: u64,
    /// Events dropped by `--pid` / `--comm`.
    pub filtered: u64,
    pub complete: bool,
    pub error: Option<String>,
    pub wall_s: f64,
    pub events_per_s: f64,
    /// Bytes of console output skipped before the trace started (`--follow`).
    pub skipped_bytes: u64,
    /// Bytes after the end record: not part of the trace, reported as an error (an early
    /// end record must not hide what follows it).
    pub trailing_bytes: u64,
    /// Records missing, duplicated or reordered by reason (also in `losses`).
    pub record_losses: SequenceLosses,
}

/// Everything the summary is made from.
pub struct SummaryInput<'a> {
    pub mode: &'a str,
    pub header: &'a TraceHeader,
    pub totals: &'a Totals,
    pub validator: &'a Validator,
    pub duration_ns: u64,
    pub stop_reason: String,
    pub anomaly_log: Option<LogStats>,
    pub recording: Option<RecordingStatus>,
    pub replay: Option<ReplaySection>,
    pub stats: Option<StatsSnapshot>,
    /// BPF run-time statistics of the programs (live, with `--bpf-stats`).
    pub programs: Vec<crate::live::ProgramStat>,
    /// Live: this process's CPU seconds when tracing began.
    pub startup_cpu_s: Option<f64>,
    /// Live: this process's CPU seconds when the stop fired (before detaching).
    pub stop_cpu_s: Option<f64>,
}

const READER_COUNTERS: &[Counter] = &[
    Counter::ReaderAcquireOk,
    Counter::ReaderAcquireFail,
    Counter::ReaderFailExcluded,
    Counter::ReaderFailWriter,
    Counter::ReaderSampled,
    Counter::ReaderRelease,
    Counter::ReaderNextVma,
    Counter::WriterWake,
    Counter::Filtered,
];

fn observed_of(plan: Option<&ProbePlan>, ev: LogicalEvent) -> String {
    let Some(plan) = plan else {
        return "unknown".into();
    };
    match plan
        .coverage
        .iter()
        .find(|c| c.event == ev)
        .map(|c| &c.status)
    {
        Some(Observability::Direct { .. }) => "direct".into(),
        Some(Observability::Proxy { .. }) => "proxy".into(),
        Some(Observability::Unobservable { .. }) => "unobservable".into(),
        None => "unknown".into(),
    }
}

/// Counts per logical event, from event kinds, attach points and kernel counters. Each
/// count is taken from what the plan says observes the event (its own hook when direct,
/// the proxy's events when a proxy), so a direct or proxy event that happened is never
/// shown as 0. `slow_detaches`: the statistics' count, when there are statistics.
///
/// The one counting of logical events: the summary and the dashboard's Coverage pane
/// both show these numbers.
pub fn logical_counts(
    t: &Totals,
    generation: Generation,
    plan: Option<&ProbePlan>,
    slow_detaches: Option<u64>,
) -> BTreeMap<String, LogicalCount> {
    use EventKind as K;
    use LogicalEvent as L;
    let ev = |k: K| t.events_of(k);
    let ctr = |c: Counter| t.counters.get(c);
    let is_proxy =
        |le: L| plan.is_some_and(|p| matches!(p.status(le), Some(Observability::Proxy { .. })));
    // A detach function's calls: its entry and return are both hooked when possible;
    // either one alone still counts every call.
    let calls = |p: ProbeId| {
        t.events_of_probe(K::DetachEnter, p)
            .max(t.events_of_probe(K::DetachExit, p))
    };
    let vmd_exits = t.events_of_probe(K::DetachExit, ProbeId::VmaMarkDetached);
    let mut m = BTreeMap::new();
    for &le in LogicalEvent::ALL {
        let (count, source): (u64, String) = match le {
            L::WriteLockRequest => (ev(K::WriteLockEnter), "write_lock_enter events".into()),
            L::WriteLockResult => (ev(K::WriteLockExit), "write_lock_exit events".into()),
            L::StartExcludeEntry => (ev(K::ExcludeEnter), "exclude_enter events".into()),
            // Start-exclude not hooked (inlined, or notrace): it returns inside the write
            // lock and the detach, whose returns are the proxy.
            L::StartExcludeReturn if is_proxy(le) => (
                ev(K::WriteLockExit).saturating_add(vmd_exits),
                "write_lock_exit events + detach_exit events at vma_mark_detached \
                 (start-exclude returns inside them)"
                    .into(),
            ),
            L::StartExcludeReturn => (ev(K::ExcludeExit), "exclude_exit events".into()),
            L::EndExclude => (
                ev(K::WriteLockExit).saturating_add(ev(K::DetachExit)),
                "write_lock_exit + detach_exit events (end-exclude is inlined into them)".into(),
            ),
            // 7.x: the fast path (1 → 0) has no hook; a freed VMA was detached.
            L::MarkDetachedFast if is_proxy(le) => {
                (ev(K::VmaFree), "vma_free events (proxy)".into())
            }
            L::MarkDetachedFast => {
                match (generation.profile().every_detach_hookable, slow_detaches) {
                    (false, _) => (
                        calls(ProbeId::VmaMarkDetached),
                        "detach events at vma_mark_detached".into(),
                    ),
                    (_, Some(st)) => (
                        calls(ProbeId::VmaMarkDetached).saturating_sub(st),
                        "vma_mark_detached calls minus the slow ones (statistics)".into(),
                    ),
                    (_, None) => (
                        calls(ProbeId::VmaMarkDetached),
                        "vma_mark_detached calls, fast and slow (no statistics to tell them apart)"
                            .into(),
                    ),
                }
            }
            // ≤6.19 every detach goes through vma_mark_detached; the slow ones found readers
            // (refcount above 1 at entry), which the statistics count.
            L::MarkDetachedSlow => {
                match (generation.profile().every_detach_hookable, slow_detaches) {
                    (false, _) => (
                        calls(ProbeId::VmaExcludeReadersForDetach),
                        "detach events at __vma_exclude_readers_for_detach".into(),
                    ),
                    (_, Some(st)) => (
                        st,
                        "vma_mark_detached calls that found readers (statistics)".into(),
                    ),
                    (_, None) => (0, "unknown without statistics".into()),
                }
            }
            L::ReaderAcquire => {
                let counted =
                    ctr(Counter::ReaderAcquireOk).saturating_add(ctr(Counter::ReaderAcquireFail));
                if counted > 0 {
                    (
                        counted,
                        format!(
                            "kernel counters reader_acquire_ok + reader_acquire_fail ({} streamed)",
                            ev(K::ReaderAcquire)
                        ),
                    )
                } else {
                    (ev(K::ReaderAcquire), "reader_acquire events".into())
                }
            }
            L::ReaderRelease => {
                let counted = ctr(Counter::ReaderRelease);
                let (released, source) = if counted > 0 {
                    (counted, "kernel counter reader_release")
                } else {
                    (ev(K::ReaderRelease), "reader_release events")
                };
                // The proxy is vma_refcount_put's out-of-line copy and/or the last
                // reader's rcuwait_wake_up (Debian kernels refuse the notrace put): the two
                // can overlap, so the larger, not the sum.
                let woke = ev(K::WriterWake).max(ctr(Counter::WriterWake));
                if is_proxy(le) && woke > released {
                    (
                        woke,
                        "writer_wake events or kernel counter (last reader's wake-up)".into(),
                    )
                } else {
                    (released, source.into())
                }
            }
            L::WriterWakeup => (
                ev(K::WriterWake).max(ctr(Counter::WriterWake)),
                "writer_wake events or kernel counter writer_wake, the larger".into(),
            ),
            L::MmWriteUnlock => (ev(K::MmWriteUnlock), "mm_write_unlock events".into()),
            L::VmaAlloc => (ev(K::VmaAlloc), "vma_alloc events".into()),
            L::VmaFree => (ev(K::VmaFree), "vma_free events".into()),
        };
        m.insert(
            le.key().to_string(),
            LogicalCount {
                count,
                observed: observed_of(plan, le),
                source,
            },
        );
    }
    m
}

impl Summary {
    pub fn build(i: SummaryInput<'_>) -> Self {
        let t = i.totals;
        let h = i.header;
        let by_kind = EventKind::ALL
            .iter()
            .map(|k| (k.key().to_string(), t.events_of(*k)))
            .collect();
        let kernel_losses: BTreeMap<String, u64> = LOSS_COUNTERS
            .iter()
            .map(|c| (c.key().to_string(), t.counters.get(*c)))
            .collect();
        let log_lost = i.anomaly_log.as_ref().map_or(0, |l| l.lines_lost);
        let unrecorded = i.recording.as_ref().map_or(0, |r| r.events_not_recorded);
        let mut losses = LossesSection {
            total: 0,
            kernel: kernel_losses,
            undecodable: t.undecodable,
            anomaly_log_lines: log_lost,
            unrecorded_events: unrecorded,
            trace_records: t.sequence,
            saturated: Vec::new(),
        };
        // Saturating: a corrupt trace may carry any counter values.
        losses.total = sum(losses.entries().map(|(_, n)| n));
        losses.saturated = losses.saturated_names();
        let plan = h.plan.as_ref().map(|p| PlanSection {
            attach: p.attach.clone(),
            coverage: p
                .coverage
                .iter()
                .map(|c| {
                    let s = match &c.status {
                        Observability::Direct { .. } => "direct".to_string(),
                        Observability::Proxy { via, .. } => format!("proxy: {via}"),
                        Observability::Unobservable { reason } => {
                            format!("unobservable: {reason}")
                        }
                    };
                    (c.event.key().to_string(), s)
                })
                .collect(),
            hooks_attached: h.hooks.iter().filter(|k| k.attached).count(),
            hooks_failed: h
                .hooks
                .iter()
                .filter(|k| !k.attached)
                .map(|k| HookFailure {
                    target: k.target.clone(),
                    program: k.program.clone(),
                    error: k.error.clone().unwrap_or_default(),
                })
                .collect(),
            killable_writers: p.generation.has_killable_writers(),
            notes: p.notes.clone(),
        });
        let mut wait_ns = BTreeMap::new();
        if let Some(st) = &i.stats {
            wait_ns.insert("exclusion".into(), st.exclusion_wait.percentiles);
            wait_ns.insert("write_lock".into(), st.write_lock_wait.percentiles);
            wait_ns.insert("detach".into(), st.detach_wait.percentiles);
        }
        let run = super::run_identity::this_run();
        let now = super::clock::rfc3339(super::clock::realtime_ns());
        Summary {
            schema: SUMMARY_SCHEMA,
            vmatrace_version: env!("CARGO_PKG_VERSION").to_string(),
            git_revision: super::run_identity::GIT_REVISION.to_string(),
            run_id: run.run_id.clone(),
            started_at: run.started_at.clone(),
            ended_at: Some(now.clone()),
            updated_at: now,
            tracer_host: run.tracer_host.clone(),
            mode: i.mode.to_string(),
            host: h.host.clone(),
            kernel: h.kernel_release.clone(),
            generation: h.generation.key().to_string(),
            duration_s: i.duration_ns as f64 / 1e9,
            stop_reason: i.stop_reason,
            events: EventsSection {
                total: t.total_events(),
                by_kind,
                by_logical_event: logical_counts(
                    t,
                    h.generation,
                    h.plan.as_ref(),
                    i.stats.as_ref().map(|st| st.slow_detaches),
                ),
            },
            anomalies: AnomaliesSection {
                total: t.anomalies_total(),
                by_kind: t
                    .anomalies
                    .iter()
                    .map(|(k, n)| (k.key().to_string(), *n))
                    .collect(),
            },
            losses,
            reader: READER_COUNTERS
                .iter()
                .map(|c| (c.key().to_string(), t.counters.get(*c)))
                .collect(),
            counters: Counter::ALL
                .iter()
                .map(|c| (c.key().to_string(), t.counters.get(*c)))
                .collect(),
            wait_ns,
            stats: i.stats,
            programs: i
                .programs
                .iter()
                .map(|p| ProgramCostSection {
                    name: p.name.clone(),
                    run_cnt: p.run_cnt,
                    run_time_ns: p.run_time_ns,
                    ns_per_run: p.ns_per_run(),
                    skipped_runs: p.skipped_runs,
                })
                .collect(),
            plan,
            filters: h.filters.clone(),
            hooks: h
                .hooks
                .iter()
                .map(|k| HookStatus {
                    target: k.target.clone(),
                    program: k.program.clone(),
                    mode: k.mode.clone(),
                    attached: k.attached,
                })
                .collect(),
            validator: ValidatorSection {
                events_observed: i.validator.observed(),
                resyncs: i.validator.losses_noted(),
                tracked_vmas: i.validator.tracked_vmas(),
                evicted_vmas: i.validator.evicted(),
                phases: i
                    .validator
                    .phase_counts()
                    .into_iter()
                    .map(|(k, n)| (k.to_string(), n))
                    .collect(),
            },
            tracer: TracerSection {
                startup_cpu_s: i.startup_cpu_s,
                stop_cpu_s: i.stop_cpu_s,
                ..TracerSection::of_this_process()
            },
            anomaly_log: i.anomaly_log,
            recording: i.recording,
            replay: i.replay,
            clock: h.clock,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialise the summary: {e}\"}}"))
    }

    /// The text form, for a terminal.
    /// Every string that can come from a trace (host, kernel release, plan, errors) goes
    /// through [`printable`](p): this text is meant for a terminal.
    pub fn human(&self) -> String {
        self.human_in(&LocalZone::local_at(super::clock::realtime_ns()))
    }

    /// [`human`](Self::human) with times of day in `zone`.
    pub fn human_in(&self, zone: &LocalZone) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "vmatrace {}: {} on {} (kernel {}, generation {}), {:.1} s, ended by {}",
            self.vmatrace_version,
            self.mode,
            if self.host.is_empty() {
                "?".into()
            } else {
                p(&self.host)
            },
            p(&self.kernel),
            p(&self.generation),
            self.duration_s,
            p(&self.stop_reason)
        );
        let _ = writeln!(
            s,
            "started {}, ended {}",
            self.started_at,
            self.ended_at.as_deref().unwrap_or("-")
        );
        let _ = writeln!(s, "events: {} streamed", count(self.events.total));
        for (k, c) in &self.events.by_logical_event {
            if c.count > 0 || c.observed == "direct" || c.observed == "proxy" {
                let _ = writeln!(
                    s,
                    "  {k:<22} {:>12}  ({}; {})",
                    c.count, c.observed, c.source
                );
            }
        }
        let _ = writeln!(s, "anomalies: {}", count(self.anomalies.total));
        for (k, n) in &self.anomalies.by_kind {
            let _ = writeln!(s, "  {k:<28} {:>10}", count(*n));
        }
        let _ = writeln!(
            s,
            "losses: {}{}",
            count(self.losses.total),
            if self.losses.total == 0 {
                " (nothing lost)"
            } else {
                ""
            }
        );
        for (k, n) in &self.losses.kernel {
            if *n > 0 {
                let _ = writeln!(s, "  {k:<28} {:>10}", count(*n));
            }
        }
        for (k, n) in [
            ("undecodable", self.losses.undecodable),
            ("anomaly log lines", self.losses.anomaly_log_lines),
            ("unrecorded events", self.losses.unrecorded_events),
            ("trace records missing", self.losses.trace_records.missing),
            (
                "trace records duplicated",
                self.losses.trace_records.duplicate,
            ),
            (
                "trace records reordered",
                self.losses.trace_records.reordered,
            ),
        ] {
            if n > 0 {
                let _ = writeln!(s, "  {k:<28} {:>10}", count(n));
            }
        }
        if self.reader.values().any(|n| *n > 0) {
            let _ = writeln!(s, "reader counters:");
            for (k, n) in &self.reader {
                let _ = writeln!(s, "  {k:<28} {n:>12}");
            }
        }
        for (k, q) in &self.wait_ns {
            if q.count > 0 {
                let _ = writeln!(
                    s,
                    "wait {k}: n={} p50 ≤ {} p90 ≤ {} p99 ≤ {} max {}",
                    q.count,
                    duration_ns(q.p50_ns),
                    duration_ns(q.p90_ns),
                    duration_ns(q.p99_ns),
                    duration_ns(q.max_ns)
                );
            }
        }
        if let Some(w) = self.stats.as_ref().and_then(|st| st.slowest.first()) {
            let at = if self.clock.realtime_ns == 0 {
                format!("ts {} ns (no wall clock in the trace)", w.ts_ns)
            } else {
                zone.date_time(self.clock.realtime_of(w.ts_ns))
            };
            let _ = writeln!(
                s,
                "slowest wait: {} by {}[{}] thread {} on {:x} ({}) at {at}",
                duration_ns(w.wait_ns),
                p(&w.comm),
                w.tgid,
                w.tid,
                w.vm_start,
                size(w.vm_end.saturating_sub(w.vm_start)),
            );
            match (&w.syscall, w.origin) {
                (Some(sc), _) => {
                    let _ = writeln!(s, "  in syscall {sc}");
                }
                (None, Some("page_fault")) => {
                    let _ = writeln!(s, "  in a page fault");
                }
                (None, Some("kernel_thread")) => {
                    let _ = writeln!(s, "  in a kernel thread");
                }
                (None, Some("signal_exit")) => {
                    let _ = writeln!(s, "  exiting on a fatal signal");
                }
                _ => {}
            }
            for f in &w.stack {
                let _ = writeln!(s, "    {f}");
            }
        }
        let _ = writeln!(
            s,
            "tracer process: {:.2} s CPU (user {:.2}, system {:.2}{}), peak RSS {:.0} MiB",
            self.tracer.cpu_s(),
            self.tracer.cpu_user_s,
            self.tracer.cpu_system_s,
            [
                self.tracer
                    .startup_cpu_s
                    .map(|c| format!("; {c:.2} before tracing began")),
                self.tracer
                    .tracing_cpu_s()
                    .map(|c| format!(", {c:.2} while tracing")),
            ]
            .into_iter()
            .flatten()
            .collect::<String>(),
            self.tracer.max_rss_mib
        );
        // Costs only with statistics on (`--bpf-stats`); skipped runs always count.
        for prog in self.programs.iter().filter(|q| q.run_cnt > 0) {
            let _ = writeln!(
                s,
                "program {}: {} runs, {:.0} ns/run, {} skipped by the kernel",
                p(&prog.name),
                prog.run_cnt,
                prog.ns_per_run.unwrap_or(0.0),
                prog.skipped_runs
            );
        }
        let skipped: Vec<String> = self
            .programs
            .iter()
            .filter(|q| q.run_cnt == 0 && q.skipped_runs > 0)
            .map(|q| format!("{}={}", p(&q.name), q.skipped_runs))
            .collect();
        if !skipped.is_empty() {
            let _ = writeln!(
                s,
                "runs skipped by the kernel (BPF recursion protection): {}",
                skipped.join(" ")
            );
        }
        if let Some(plan) = &self.plan {
            let _ = writeln!(s, "attach: {}", p(&plan.attach.to_string()));
            let _ = writeln!(
                s,
                "hooks: {} attached, {} failed",
                plan.hooks_attached,
                plan.hooks_failed.len()
            );
            for f in &plan.hooks_failed {
                let _ = writeln!(s, "  {} ({}): {}", p(&f.target), p(&f.program), p(&f.error));
            }
            for (k, v) in &plan.coverage {
                if !v.starts_with("direct") {
                    let _ = writeln!(s, "  {}: {}", p(k), p(v));
                }
            }
        }
        if let Some(l) = &self.anomaly_log {
            let _ = writeln!(
                s,
                "anomaly log {}: {} lines, {} rotations, {} write errors{}",
                p(&l.path),
                l.lines_written,
                l.rotations,
                l.write_errors,
                l.last_error
                    .as_ref()
                    .map(|e| format!(" (last: {})", p(e)))
                    .unwrap_or_default()
            );
        }
        if let Some(r) = &self.recording {
            let _ = writeln!(
                s,
                "recording {}: {} events, {} bytes{}{}",
                p(&r.path),
                r.events_recorded,
                r.bytes,
                if r.complete { "" } else { ", INCOMPLETE" },
                r.error
                    .as_ref()
                    .map(|e| format!(" ({}; {} events not recorded)", p(e), r.events_not_recorded))
                    .unwrap_or_default()
            );
        }
        if let Some(r) = &self.replay {
            let _ = writeln!(
                s,
                "replay: {} records, {} events in {:.3} s ({:.0} events/s){}",
                r.records,
                r.events,
                r.wall_s,
                r.events_per_s,
                if r.complete { "" } else { ", trace incomplete" }
            );
            let q = &r.record_losses;
            if q.total() > 0 {
                let _ = writeln!(
                    s,
                    "  records out of sequence: {} missing, {} duplicated, {} reordered (skipped; the validator resynchronised)",
                    count(q.missing),
                    count(q.duplicate),
                    count(q.reordered)
                );
            }
            if r.trailing_bytes > 0 {
                let _ = writeln!(
                    s,
                    "  {} bytes after the end record were not read as trace",
                    r.trailing_bytes
                );
            }
            if let Some(e) = &r.error {
                let _ = writeln!(s, "  {}", p(e));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use vmatrace_common::{Event, event::flags};

    use super::*;
    use crate::kernel::plan::{EventCoverage, KernelId};
    use crate::stats::Stats;

    /// A plan with the Direct/Proxy statuses the planner gives a Debian kernel
    /// (tests/plan_fixtures.rs); points are irrelevant to the counts.
    fn plan(
        generation: Generation,
        proxies: &[LogicalEvent],
        unobservable: &[LogicalEvent],
    ) -> ProbePlan {
        let coverage = LogicalEvent::ALL
            .iter()
            .map(|&event| EventCoverage {
                event,
                status: if proxies.contains(&event) {
                    Observability::Proxy {
                        via: "test".into(),
                        points: vec![0],
                    }
                } else if unobservable.contains(&event) {
                    Observability::Unobservable {
                        reason: "test".into(),
                    }
                } else {
                    Observability::Direct { points: vec![0] }
                },
            })
            .collect();
        ProbePlan {
            kernel: KernelId::default(),
            generation,
            offsets: vmatrace_common::Offsets::ABSENT,
            points: Vec::new(),
            attach: Default::default(),
            coverage,
            notes: Vec::new(),
        }
    }

    fn event(kind: EventKind, probe: ProbeId) -> Event {
        let mut e = Event::ZERO;
        e.kind = kind as u16;
        e.probe = probe as u8;
        e.pid_tgid = (7 << 32) | 8;
        e.vma = 0xffff_8880_0000_2000;
        e.mm = 0xffff_8880_0000_1000;
        e.flags = flags::VMA_FIELDS;
        e
    }

    /// A detach at `vma_mark_detached` (entry and paired return) that found `refcnt`.
    fn vmd(refcnt: u32) -> [Event; 2] {
        let mut enter = event(EventKind::DetachEnter, ProbeId::VmaMarkDetached);
        enter.refcnt = refcnt;
        let mut exit = event(EventKind::DetachExit, ProbeId::VmaMarkDetached);
        exit.flags |= flags::PAIRED;
        exit.entry_refcnt = refcnt;
        [enter, exit]
    }

    fn counts(
        generation: Generation,
        plan: &ProbePlan,
        events: &[Event],
    ) -> BTreeMap<String, LogicalCount> {
        let mut t = Totals::default();
        let mut st = Stats::with_plan(generation, Some(plan));
        for e in events {
            t.count_event(e);
            st.observe(e);
        }
        logical_counts(&t, generation, Some(plan), Some(st.slow_detaches()))
    }

    #[test]
    fn debian_6_19_proxies_count_what_they_observe() {
        use LogicalEvent as L;
        // EXPECTED_6_19: start-exclude notrace (entry unobservable, return a proxy).
        let p = plan(
            Generation::V6_19,
            &[L::StartExcludeReturn, L::EndExclude, L::ReaderRelease],
            &[L::StartExcludeEntry],
        );
        let mut evs = vec![
            event(EventKind::WriteLockEnter, ProbeId::VmaStartWrite),
            event(EventKind::WriteLockExit, ProbeId::VmaStartWrite),
        ];
        evs.extend(vmd(1));
        evs.extend(vmd(1));
        evs.extend(vmd(3));
        let c = counts(Generation::V6_19, &p, &evs);
        let n = |k: &str| c[k].count;
        assert_eq!(c["start_exclude_return"].observed, "proxy");
        // One write lock + three vma_mark_detached returns.
        assert_eq!(n("start_exclude_return"), 4);
        assert_eq!(n("start_exclude_entry"), 0);
        assert_eq!(n("mark_detached_fast"), 2);
        assert_eq!(n("mark_detached_slow"), 1);
        assert_eq!(n("end_exclude"), 4);
    }

    #[test]
    fn reader_release_proxy_without_vma_refcount_put_counts_wakeups() {
        use LogicalEvent as L;
        // Debian refuses the notrace vma_refcount_put: only rcuwait_wake_up is hooked.
        let p = plan(Generation::V6_19, &[L::ReaderRelease], &[]);
        let wake = event(EventKind::WriterWake, ProbeId::RcuwaitWakeUp);
        let c = counts(Generation::V6_19, &p, &[wake, wake]);
        assert_eq!(c["reader_release"].observed, "proxy");
        assert_eq!(c["reader_release"].count, 2);
        assert_eq!(c["writer_wakeup"].count, 2);
    }

    #[test]
    fn direct_start_exclude_counts_exclude_exits() {
        use LogicalEvent as L;
        // EXPECTED_6_19_ON_NOTRACE: __vma_enter_locked kprobed.
        let p = plan(Generation::V6_19, &[L::EndExclude, L::ReaderRelease], &[]);
        let evs = [
            event(EventKind::WriteLockExit, ProbeId::VmaStartWrite),
            event(EventKind::ExcludeEnter, ProbeId::VmaEnterLocked),
            event(EventKind::ExcludeExit, ProbeId::VmaEnterLocked),
        ];
        let c = counts(Generation::V6_19, &p, &evs);
        assert_eq!(c["start_exclude_return"].observed, "direct");
        assert_eq!(c["start_exclude_return"].count, 1);
        assert_eq!(c["start_exclude_entry"].count, 1);
    }

    #[test]
    fn debian_7x_detaches_count_at_their_hooks() {
        use LogicalEvent as L;
        // EXPECTED_7X: the fast detach is seen at vm_area_free; the slow one has only
        // its return hooked in the coverage (the entry may be missing).
        let p = plan(
            Generation::V7_0,
            &[L::EndExclude, L::MarkDetachedFast, L::ReaderRelease],
            &[],
        );
        let evs = [
            event(EventKind::DetachExit, ProbeId::VmaExcludeReadersForDetach),
            event(EventKind::VmaFree, ProbeId::VmAreaFree),
            event(EventKind::VmaFree, ProbeId::VmAreaFree),
        ];
        let c = counts(Generation::V7_0, &p, &evs);
        assert_eq!(c["mark_detached_fast"].observed, "proxy");
        assert_eq!(c["mark_detached_fast"].count, 2);
        assert_eq!(c["mark_detached_slow"].observed, "direct");
        assert_eq!(c["mark_detached_slow"].count, 1);
    }
}
