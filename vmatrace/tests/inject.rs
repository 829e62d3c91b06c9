//! Every injectable fault is reported by the validator, every single time it fires, with
//! the anomaly kind it stands for, on every generation.

use vmatrace::lab::sim::{self, Injection, SimConfig, SimOutcome, SimReport};
use vmatrace_common::model::Generation;

fn run(generation: Generation, kinds: &[Injection], ops: u64, rate: f64) -> SimOutcome {
    let cfg = SimConfig {
        threads: 8,
        ops: Some(ops),
        generation,
        injections: kinds.to_vec(),
        inject_rate: rate,
        seed: 11,
        ..SimConfig::default()
    };
    sim::run(cfg, Vec::new()).expect("simulation runs")
}

/// Some points where a fault can fire are rare (a reader meeting a write-locked VMA), so
/// those kinds fire at every eligible point.
fn rate(kind: Injection) -> f64 {
    match kind {
        Injection::ReaderIgnoresFlag | Injection::LostWakeup => 1.0,
        _ => 0.05,
    }
}

fn assert_all_detected(generation: Generation, kind: Injection, out: &SimOutcome) {
    let fired = out.fired(kind);
    let missed = out.unmatched_sites();
    let report = SimReport::new(out);
    println!(
        "{} {}: fired {fired}, missed {}, anomalies {:?}",
        generation.key(),
        kind,
        missed.len(),
        report.anomalies
    );
    assert!(fired > 0, "{kind} never fired on {}", generation.key());
    assert!(
        missed.is_empty(),
        "{kind}: {} of {fired} not reported: {:?}",
        missed.len(),
        &missed[..missed.len().min(5)]
    );
    let accepted: u64 = kind
        .detected_by()
        .iter()
        .map(|key| out.anomalies_with_key(key))
        .sum();
    // Faults the waiter recovered from before anything showed them are invisible to any
    // monitor (`InjectionSite::hidden`); they must stay the exception.
    let hidden = out
        .sites
        .iter()
        .filter(|s| s.kind == kind && s.hidden)
        .count();
    assert!(hidden * 4 < fired, "{kind}: {hidden} of {fired} hidden");
    assert!(accepted >= (fired - hidden) as u64);
    // Only the known validator false positive may spoil the verdict (see tests/simulate.rs).
    let fp = usize::from(out.false_positives() > 0);
    assert_eq!(report.verdict.reasons.len(), fp, "{}", report.to_text());
    assert!(out.leaked_refs.is_empty(), "{:?}", out.leaked_refs);
}

/// Runs until the fault fired at least once (at most 4 runs): the rare points depend on
/// how the simulator's threads interleave, and a busy machine sometimes gives a run
/// without one. Detection is then judged on that run.
fn each_kind(generation: Generation) {
    for kind in Injection::ALL {
        let mut out = run(generation, &[*kind], 60_000, rate(*kind));
        for _ in 1..4 {
            if out.fired(*kind) > 0 {
                break;
            }
            out = run(generation, &[*kind], 60_000, rate(*kind));
        }
        assert_all_detected(generation, *kind, &out);
    }
}

#[test]
fn every_fault_is_detected_on_7_0() {
    each_kind(Generation::V7_0);
}

#[test]
fn every_fault_is_detected_on_6_19() {
    each_kind(Generation::V6_19);
}

#[test]
fn every_fault_is_detected_on_6_15() {
    each_kind(Generation::V6_15);
}

/// All faults armed at once: still one report per fault, each with its own kind.
#[test]
fn all_faults_together_are_each_detected() {
    let out = run(Generation::V7_0, Injection::ALL, 100_000, 0.05);
    let missed = out.unmatched_sites();
    assert!(
        missed.is_empty(),
        "{} not reported: {:?}",
        missed.len(),
        &missed[..missed.len().min(5)]
    );
    for kind in Injection::ALL {
        if *kind != Injection::ReaderIgnoresFlag {
            assert!(out.fired(*kind) > 0, "{kind} never fired");
        }
    }
}

/// The matching is strict: a run without faults has no sites, and a fault the validator
/// cannot see is not counted as detected.
#[test]
fn the_detection_check_can_fail() {
    let out = run(Generation::V7_0, &[Injection::SeqNotStored], 30_000, 0.05);
    assert!(out.fired(Injection::SeqNotStored) > 0);
    // Pretend the validator reported nothing: every site is unmatched.
    assert_eq!(
        sim::inject::unmatched_sites(&out.sites, &[]).len(),
        out.sites.len()
    );
}
