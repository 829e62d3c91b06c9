//! The run summary (text and `--json`) and the verdict behind the exit code.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use vmatrace_common::{Counter, EventKind};

use super::workload::OpStats;
use super::{Injection, ReleaseVisibility, SimOutcome};

#[derive(Clone, Debug, Serialize)]
pub struct InjectionReport {
    pub kind: Injection,
    /// Faults that fired.
    pub fired: usize,
    /// ... that left no trace a monitor could see (`InjectionSite::hidden`).
    pub hidden: usize,
    /// Faults reported by the validator with an accepted anomaly kind.
    pub detected: usize,
    pub detected_by: &'static [&'static str],
}

#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub ok: bool,
    /// Why not (empty when ok).
    pub reasons: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SimReport {
    /// Identity and time of this vmatrace run, as in the tracing summary
    /// (`docs/summary.md`).
    pub run_id: String,
    pub vmatrace_version: &'static str,
    pub git_revision: &'static str,
    pub host: String,
    pub started_at: String,
    pub ended_at: String,
    pub generation: &'static str,
    pub threads: usize,
    pub seed: u64,
    pub releases: ReleaseVisibility,
    pub elapsed_s: f64,
    pub ops: OpStats,
    pub ops_per_s: f64,
    pub events_total: u64,
    pub events_per_s: f64,
    pub events: BTreeMap<&'static str, u64>,
    pub anomalies_total: u64,
    pub anomalies: BTreeMap<&'static str, u64>,
    /// Puts that left F/F+1 before the excluder registered (no wake-up owed).
    pub benign_unregistered_puts: usize,
    /// Anomalies that report one of those benign puts: validator false positives.
    pub false_positives: usize,
    pub counters: BTreeMap<&'static str, u64>,
    pub sim_checks: BTreeMap<&'static str, u64>,
    pub injections: Vec<InjectionReport>,
    pub events_delivered: u64,
    pub events_undelivered: u64,
    pub validator_observed: u64,
    pub leaked_refs: usize,
    /// Why the run ended (`ops done`, `duration`, `SIGINT`, …): set by the command.
    pub stop_reason: &'static str,
    pub verdict: Verdict,
}

impl SimReport {
    pub fn new(o: &SimOutcome) -> Self {
        let secs = o.elapsed.as_secs_f64().max(1e-9);
        let events: BTreeMap<_, _> = EventKind::ALL
            .iter()
            .map(|k| (k.key(), o.totals.events_of(*k)))
            .collect();
        let anomalies: BTreeMap<_, _> = o
            .totals
            .anomalies
            .iter()
            .map(|(k, n)| (k.key(), *n))
            .collect();
        let counters: BTreeMap<_, _> = Counter::ALL
            .iter()
            .map(|c| (c.key(), o.totals.counters.get(*c)))
            .collect();
        let missed = o.unmatched_sites();
        let mut armed: Vec<Injection> = o.config.injections.clone();
        armed.sort();
        armed.dedup();
        let injections: Vec<InjectionReport> = armed
            .iter()
            .map(|k| {
                let fired = o.fired(*k);
                let hidden = o.sites.iter().filter(|s| s.kind == *k && s.hidden).count();
                let missed_k = missed.iter().filter(|s| s.kind == *k).count();
                InjectionReport {
                    kind: *k,
                    fired,
                    hidden,
                    detected: fired - hidden - missed_k,
                    detected_by: k.detected_by(),
                }
            })
            .collect();
        let anomalies_total = o.totals.anomalies_total();
        let verdict = verdict(o, &injections, anomalies_total);
        let events_total = o.totals.total_events();
        let run = crate::export::run_identity::this_run();
        Self {
            run_id: run.run_id.clone(),
            vmatrace_version: crate::export::run_identity::VERSION,
            git_revision: crate::export::run_identity::GIT_REVISION,
            host: run.tracer_host.clone(),
            started_at: run.started_at.clone(),
            ended_at: crate::export::clock::rfc3339(crate::export::clock::realtime_ns()),
            generation: o.config.generation.key(),
            threads: o.config.threads,
            seed: o.config.seed,
            releases: o.config.releases,
            elapsed_s: secs,
            ops: o.ops,
            ops_per_s: o.ops.ops as f64 / secs,
            events_total,
            events_per_s: events_total as f64 / secs,
            events,
            anomalies_total,
            anomalies,
            benign_unregistered_puts: o.benign.len(),
            false_positives: o.false_positives(),
            counters,
            sim_checks: o.checks.clone(),
            injections,
            events_delivered: o.delivered,
            events_undelivered: o.undelivered,
            validator_observed: o.validator_observed,
            leaked_refs: o.leaked_refs.len(),
            stop_reason: "ops done",
            verdict,
        }
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "vmatrace simulate: generation {}, {} tasks, seed {}, releases {}; stopped: {}",
            self.generation,
            self.threads,
            self.seed,
            self.releases.key(),
            self.stop_reason
        );
        let o = &self.ops;
        let _ = writeln!(
            s,
            "ops {} in {:.2}s ({:.0} ops/s): faults {} (locked {}, fallback {}), mprotect {}, munmap {} (downgraded {}), mmap {}, fork {} (interrupted {})",
            o.ops,
            self.elapsed_s,
            self.ops_per_s,
            o.faults,
            o.faults_locked,
            o.faults_fallback,
            o.mprotects,
            o.munmaps,
            o.downgrades,
            o.mmaps,
            o.forks,
            o.forks_interrupted
        );
        let _ = writeln!(
            s,
            "  per-VMA lock failures: no vma {}, out of range {}, detached {}, early write-locked {}, excluded {}, other mm {}, re-check {}",
            o.fail_no_vma,
            o.fail_out_of_range,
            o.fail_detached,
            o.fail_early_write_locked,
            o.fail_excluded,
            o.fail_other_mm,
            o.fail_recheck
        );
        let _ = writeln!(
            s,
            "events {} ({:.0}/s), validator observed {}, undelivered {}",
            self.events_total, self.events_per_s, self.validator_observed, self.events_undelivered
        );
        for (k, n) in self.events.iter().filter(|(_, n)| **n > 0) {
            let _ = writeln!(s, "  {k:<18} {n}");
        }
        let _ = writeln!(s, "anomalies {}", self.anomalies_total);
        for (k, n) in &self.anomalies {
            let _ = writeln!(s, "  {k:<28} {n}");
        }
        let _ = writeln!(
            s,
            "benign races: {} puts left F/F+1 before the excluder registered; {} reported anyway (false positives)",
            self.benign_unregistered_puts, self.false_positives
        );
        let nonzero: Vec<String> = self
            .sim_checks
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        let _ = writeln!(
            s,
            "simulator checks: {}",
            if nonzero.is_empty() {
                "all 0".to_string()
            } else {
                nonzero.join(", ")
            }
        );
        for i in &self.injections {
            let _ = writeln!(
                s,
                "inject {:<24} fired {:>6}  detected {:>6}  invisible {:>4}  (as {})",
                i.kind.key(),
                i.fired,
                i.detected,
                i.hidden,
                i.detected_by.join(" | ")
            );
        }
        if self.verdict.ok {
            let _ = writeln!(s, "verdict: ok");
        } else {
            let _ = writeln!(s, "verdict: FAILED");
            for r in &self.verdict.reasons {
                let _ = writeln!(s, "  - {r}");
            }
        }
        s
    }
}

/// Clean run: no anomaly, no simulator violation. With faults: every armed fault fired
/// and every one was reported with an accepted kind. Always: nothing lost, no leaked
/// reference.
fn verdict(o: &SimOutcome, injections: &[InjectionReport], anomalies_total: u64) -> Verdict {
    let mut reasons = Vec::new();
    if o.undelivered > 0 {
        reasons.push(format!("{} events could not be delivered", o.undelivered));
    }
    if o.collected.reduced_dropped > 0 {
        reasons.push(format!(
            "{} anomalies beyond the matching cap",
            o.collected.reduced_dropped
        ));
    }
    if !o.leaked_refs.is_empty() {
        reasons.push(format!(
            "{} VMA objects end with an unexpected refcount",
            o.leaked_refs.len()
        ));
    }
    let false_positives = o.false_positives() as u64;
    if false_positives > 0 {
        reasons.push(format!(
            "{false_positives} lost_wakeup reports on puts that came before the excluder \
             registered in w->task (no wake-up is owed there): validator false positives"
        ));
    }
    if injections.is_empty() {
        let unexplained = anomalies_total.saturating_sub(false_positives);
        if unexplained > 0 {
            reasons.push(format!("{unexplained} anomalies in a run without faults"));
        }
        let v = o.sim_violations();
        if v > 0 {
            reasons.push(format!("{v} simulator invariant violations"));
        }
    } else {
        for i in injections {
            if i.fired == 0 {
                reasons.push(format!(
                    "{} never fired (run longer or raise --inject-rate)",
                    i.kind
                ));
            } else if i.detected + i.hidden < i.fired {
                reasons.push(format!(
                    "{}: {} of {} faults not reported",
                    i.kind,
                    i.fired - i.hidden - i.detected,
                    i.fired - i.hidden
                ));
            }
        }
    }
    Verdict {
        ok: reasons.is_empty(),
        reasons,
    }
}
