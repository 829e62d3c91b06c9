//! The exit summary: `--json` prints [`Summary`] as one JSON object (schema in
//! `docs/summary.md`), otherwise [`Summary::human`] prints the same facts as text.
//! A replay of a recorded trace gives the same `events`, `anomalies`, `losses`, `reader`
//! and `wait_ns` sections as the live run that recorded it.

use std::collections::BTreeMap;

use serde::Serialize;
use vmatrace_common::{Counter, EventKind, event::ProbeId};

use super::anomaly_log::LogStats;
use crate::{
    kernel::plan::{LogicalEvent, Observability, ProbePlan},
    pipeline::{Totals, totals::LOSS_COUNTERS},
    stats::{Percentiles, StatsSnapshot},
    trace::{RecordingStatus, TraceHeader},
    validate::Validator,
};

pub const SUMMARY_SCHEMA: u32 = 1;

#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub schema: u32,
    pub vmatrace_version: String,
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
    pub validator: ValidatorSection,
    pub anomaly_log: Option<LogStats>,
    pub recording: Option<RecordingStatus>,
    pub replay: Option<ReplaySection>,
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
}

#[derive(Clone, Debug, Serialize)]
pub struct PlanSection {
    /// Logical event → `direct` / `proxy: <via>` / `unobservable: <reason>`.
    pub coverage: BTreeMap<String, String>,
    pub hooks_attached: usize,
    pub hooks_failed: Vec<HookFailure>,
    pub notes: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct HookFailure {
    pub target: String,
    pub program: String,
    pub error: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramCostSection {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    pub ns_per_run: Option<f64>,
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
}

const READER_COUNTERS: &[Counter] = &[
    Counter::ReaderAcquireOk,
    Counter::ReaderAcquireFail,
    Counter::ReaderFailExcluded,
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

/// Counts per logical event, from event kinds, attach points and kernel counters.
fn logical_counts(t: &Totals, plan: Option<&ProbePlan>) -> BTreeMap<String, LogicalCount> {
    use EventKind as K;
    use LogicalEvent as L;
    let ev = |k: K| t.events_of(k);
    let ctr = |c: Counter| t.counters.get(c);
    let mut m = BTreeMap::new();
    for &le in LogicalEvent::ALL {
        let (count, source): (u64, String) = match le {
            L::WriteLockRequest => (ev(K::WriteLockEnter), "write_lock_enter events".into()),
            L::WriteLockResult => (ev(K::WriteLockExit), "write_lock_exit events".into()),
            L::StartExcludeEntry => (ev(K::ExcludeEnter), "exclude_enter events".into()),
            L::StartExcludeReturn => (ev(K::ExcludeExit), "exclude_exit events".into()),
            L::EndExclude => (
                ev(K::WriteLockExit).saturating_add(ev(K::DetachExit)),
                "write_lock_exit + detach_exit events (end-exclude is inlined into them)".into(),
            ),
            L::MarkDetachedFast => (
                t.events_of_probe(K::DetachEnter, ProbeId::VmaMarkDetached),
                "detach_enter events at vma_mark_detached".into(),
            ),
            L::MarkDetachedSlow => (
                t.events_of_probe(K::DetachEnter, ProbeId::VmaExcludeReadersForDetach),
                "detach_enter events at __vma_exclude_readers_for_detach".into(),
            ),
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
                if counted > 0 {
                    (counted, "kernel counter reader_release".into())
                } else {
                    (ev(K::ReaderRelease), "reader_release events".into())
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
        let losses = LossesSection {
            // Saturating: a corrupt trace may carry any counter values.
            total: kernel_losses
                .values()
                .chain([&t.undecodable, &log_lost, &unrecorded])
                .fold(0u64, |acc, v| acc.saturating_add(*v)),
            kernel: kernel_losses,
            undecodable: t.undecodable,
            anomaly_log_lines: log_lost,
            unrecorded_events: unrecorded,
        };
        let plan = h.plan.as_ref().map(|p| PlanSection {
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
            notes: p.notes.clone(),
        });
        let mut wait_ns = BTreeMap::new();
        if let Some(st) = &i.stats {
            wait_ns.insert("exclusion".into(), st.exclusion_wait.percentiles);
            wait_ns.insert("write_lock".into(), st.write_lock_wait.percentiles);
        }
        Summary {
            schema: SUMMARY_SCHEMA,
            vmatrace_version: env!("CARGO_PKG_VERSION").to_string(),
            mode: i.mode.to_string(),
            host: h.host.clone(),
            kernel: h.kernel_release.clone(),
            generation: h.generation.key().to_string(),
            duration_s: i.duration_ns as f64 / 1e9,
            stop_reason: i.stop_reason,
            events: EventsSection {
                total: t.total_events(),
                by_kind,
                by_logical_event: logical_counts(t, h.plan.as_ref()),
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
                })
                .collect(),
            plan,
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
            anomaly_log: i.anomaly_log,
            recording: i.recording,
            replay: i.replay,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialise the summary: {e}\"}}"))
    }

    /// The text form, for a terminal.
    pub fn human(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "vmatrace {}: {} on {} (kernel {}, generation {}), {:.1} s, ended by {}",
            self.vmatrace_version,
            self.mode,
            if self.host.is_empty() {
                "?"
            } else {
                &self.host
            },
            self.kernel,
            self.generation,
            self.duration_s,
            self.stop_reason
        );
        let _ = writeln!(s, "events: {} streamed", self.events.total);
        for (k, c) in &self.events.by_logical_event {
            if c.count > 0 || c.observed == "direct" || c.observed == "proxy" {
                let _ = writeln!(
                    s,
                    "  {k:<22} {:>12}  ({}; {})",
                    c.count, c.observed, c.source
                );
            }
        }
        let _ = writeln!(s, "anomalies: {}", self.anomalies.total);
        for (k, n) in &self.anomalies.by_kind {
            let _ = writeln!(s, "  {k:<28} {n:>10}");
        }
        let _ = writeln!(
            s,
            "losses: {}{}",
            self.losses.total,
            if self.losses.total == 0 {
                " (nothing lost)"
            } else {
                ""
            }
        );
        for (k, n) in &self.losses.kernel {
            if *n > 0 {
                let _ = writeln!(s, "  {k:<28} {n:>10}");
            }
        }
        for (k, n) in [
            ("undecodable", self.losses.undecodable),
            ("anomaly log lines", self.losses.anomaly_log_lines),
            ("unrecorded events", self.losses.unrecorded_events),
        ] {
            if n > 0 {
                let _ = writeln!(s, "  {k:<28} {n:>10}");
            }
        }
        if self.reader.values().any(|n| *n > 0) {
            let _ = writeln!(s, "reader counters:");
            for (k, n) in &self.reader {
                let _ = writeln!(s, "  {k:<28} {n:>12}");
            }
        }
        for (k, p) in &self.wait_ns {
            if p.count > 0 {
                let _ = writeln!(
                    s,
                    "wait {k}: n={} p50<={} p90<={} p99<={} max={} ns",
                    p.count, p.p50_ns, p.p90_ns, p.p99_ns, p.max_ns
                );
            }
        }
        for p in &self.programs {
            let _ = writeln!(
                s,
                "program {}: {} runs, {:.0} ns/run",
                p.name,
                p.run_cnt,
                p.ns_per_run.unwrap_or(0.0)
            );
        }
        if let Some(p) = &self.plan {
            let _ = writeln!(
                s,
                "hooks: {} attached, {} failed",
                p.hooks_attached,
                p.hooks_failed.len()
            );
            for f in &p.hooks_failed {
                let _ = writeln!(s, "  {} ({}): {}", f.target, f.program, f.error);
            }
            for (k, v) in &p.coverage {
                if !v.starts_with("direct") {
                    let _ = writeln!(s, "  {k}: {v}");
                }
            }
        }
        if let Some(l) = &self.anomaly_log {
            let _ = writeln!(
                s,
                "anomaly log {}: {} lines, {} rotations, {} write errors{}",
                l.path,
                l.lines_written,
                l.rotations,
                l.write_errors,
                l.last_error
                    .as_ref()
                    .map(|e| format!(" (last: {e})"))
                    .unwrap_or_default()
            );
        }
        if let Some(r) = &self.recording {
            let _ = writeln!(
                s,
                "recording {}: {} events, {} bytes{}{}",
                r.path,
                r.events_recorded,
                r.bytes,
                if r.complete { "" } else { ", INCOMPLETE" },
                r.error
                    .as_ref()
                    .map(|e| format!(" ({e}; {} events not recorded)", r.events_not_recorded))
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
            if let Some(e) = &r.error {
                let _ = writeln!(s, "  {e}");
            }
        }
        s
    }
}
