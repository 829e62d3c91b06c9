//! The simulated kernel through the real pipeline: clean runs report nothing, the emitted
//! events have the shape the eBPF side gives them on each generation, the simulator's own
//! invariant checks hold, and they do catch a broken protocol.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmatrace::lab::sim::{self, Injection, ReleaseVisibility, SimConfig, SimOutcome, SimReport};
use vmatrace::pipeline::Sink;
use vmatrace_common::event::{ProbeId, flags};
use vmatrace_common::model::Generation;
use vmatrace_common::model::generation::{EINTR, TASK_KILLABLE};
use vmatrace_common::{Counter, Event, EventKind};

const F: u32 = 1 << 30;

fn config(generation: Generation, ops: u64) -> SimConfig {
    SimConfig {
        threads: 8,
        ops: Some(ops),
        generation,
        seed: 7,
        ..SimConfig::default()
    }
}

/// Checks every event against what the simulator's emission guarantees exactly (the
/// validator must tolerate more; these are facts about the samples themselves).
#[derive(Default)]
struct Shape {
    violations: Vec<String>,
    last_ts: u64,
    by_probe: std::collections::BTreeMap<(u16, u8), u64>,
    exclusive_exits: u64,
    eintr_exits: u64,
    reader_ok: u64,
    /// `mm_lock_seq` values seen just below the wrap and just after it.
    seq_high: bool,
    seq_low: bool,
}

impl Shape {
    fn bad(&mut self, what: &str, ev: &Event) {
        if self.violations.len() < 20 {
            self.violations.push(format!("{what}: {ev:?}"));
        }
    }

    fn check(&mut self, generation: Generation, ev: &Event) {
        if ev.ts_ns <= self.last_ts {
            self.bad("timestamps must increase", ev);
        }
        self.last_ts = ev.ts_ns;
        if ev.has(flags::MM_SEQ) {
            self.seq_high |= ev.mm_lock_seq > u32::MAX - 10_000;
            self.seq_low |= ev.mm_lock_seq < 10_000;
        }
        *self.by_probe.entry((ev.kind, ev.probe)).or_default() += 1;
        let locked = ev.vm_lock_seq == ev.mm_lock_seq;
        let Some(kind) = ev.kind() else {
            self.bad("unknown kind", ev);
            return;
        };
        match kind {
            EventKind::WriteLockExit => {
                if ev.ret == 0 && (!locked || ev.refcnt >= F || ev.mm_lock_seq & 1 == 0) {
                    self.bad("write lock must be held, flag gone", ev);
                }
                if ev.ret == EINTR && (locked || ev.refcnt >= F) {
                    self.bad("-EINTR leaves the VMA unlocked, flag gone", ev);
                }
            }
            EventKind::ExcludeExit => {
                let exclusive = match generation {
                    Generation::V6_19 => ev.ret == 1,
                    _ => ev.ret == 0 && ev.ves_exclusive == 1,
                };
                if exclusive {
                    self.exclusive_exits += 1;
                    let target = if ev.ves_detaching == 1 { F } else { F + 1 };
                    if ev.refcnt != target {
                        self.bad("exclusion must end exactly at its target", ev);
                    }
                }
                if ev.ret == EINTR {
                    self.eintr_exits += 1;
                    if ev.ves_state != TASK_KILLABLE || ev.refcnt >= F || ev.ves_exclusive != 0 {
                        self.bad("-EINTR only for killable waits, flag removed", ev);
                    }
                }
                if !ev.has(flags::VES | flags::PAIRED) {
                    self.bad("exclude exit carries ves and pairing", ev);
                }
            }
            EventKind::ReaderAcquire if ev.ret != 0 => {
                self.reader_ok += 1;
                let count_ok = (2..F).contains(&ev.refcnt) || ev.refcnt > F + 1;
                // lock_vma_under_rcu: the VMA covers addr; lock_next_vma: the first VMA
                // ending after from_addr.
                let place_ok = match ev.probe() {
                    ProbeId::LockNextVma => ev.arg < ev.vm_end,
                    _ => (ev.vm_start..ev.vm_end).contains(&ev.arg),
                };
                if !count_ok || locked || !place_ok {
                    self.bad(
                        "a read-locked VMA is referenced, unlocked, and covers addr",
                        ev,
                    );
                }
                if ev.ret as u64 != ev.vma {
                    self.bad("ret is the VMA", ev);
                }
            }
            EventKind::ReaderAcquire if ev.vma != 0 || ev.has(flags::VMA_FIELDS) => {
                self.bad("a NULL return has no VMA to read", ev);
            }
            EventKind::ReaderRelease if ev.refcnt == 0 => {
                self.bad("a put needs a reference", ev);
            }
            EventKind::DetachEnter => {
                if generation == Generation::V7_0 && ev.refcnt >= F {
                    self.bad("7.x slow detach starts below F", ev);
                }
                if generation != Generation::V7_0 && (ev.refcnt == 0 || !locked) {
                    self.bad("6.x detach of a write-locked, attached VMA", ev);
                }
            }
            EventKind::DetachExit | EventKind::VmaFree if ev.refcnt != 0 => {
                self.bad("detached and freed VMAs have no references", ev);
            }
            EventKind::MmWriteUnlock if ev.mm_lock_seq & 1 == 0 => {
                self.bad("the tracepoint fires before the sequence turns even", ev);
            }
            EventKind::WriterWake => {
                let offset = if generation == Generation::V6_15 {
                    0xf0
                } else {
                    0x1c8
                };
                if ev.arg != ev.mm + offset || !(0..=1).contains(&ev.ret) {
                    self.bad("rcuwait is &mm->vma_writer_wait, ret 0/1", ev);
                }
            }
            _ => {}
        }
    }
}

struct ShapeSink(Generation, Arc<Mutex<Shape>>);

impl Sink for ShapeSink {
    fn events(&mut self, events: &[Event]) {
        let mut s = self.1.lock().unwrap();
        for ev in events {
            s.check(self.0, ev);
        }
    }
}

fn run_checked(cfg: SimConfig) -> (SimOutcome, Shape) {
    let shape = Arc::new(Mutex::new(Shape::default()));
    let g = cfg.generation;
    let out = sim::run(cfg, vec![Box::new(ShapeSink(g, shape.clone()))]).expect("simulation runs");
    let shape = std::mem::take(&mut *shape.lock().unwrap());
    (out, shape)
}

fn assert_clean(out: &SimOutcome, shape: &Shape) {
    let report = SimReport::new(out);
    // Puts that leave F/F+1 before the excluder registers in `w->task` are streamed as
    // `WriterWake` with ret 0 (as the eBPF kprobe does), so they owe no wake-up: a clean
    // run has no anomaly at all, not even a "known" one.
    assert_eq!(out.false_positives(), 0, "{}", report.to_text());
    assert!(report.verdict.reasons.is_empty(), "{}", report.to_text());
    assert_eq!(out.totals.anomalies_total(), 0, "{}", report.to_text());
    assert_eq!(out.sim_violations(), 0, "{:?}", out.checks);
    assert!(out.leaked_refs.is_empty(), "{:?}", out.leaked_refs);
    assert_eq!(out.undelivered, 0);
    assert_eq!(out.delivered, out.totals.total_events());
    assert_eq!(out.validator_observed, out.delivered);
    assert!(shape.violations.is_empty(), "{:#?}", shape.violations);
    assert!(out.ops.faults_locked > 0 && out.ops.munmaps > 0 && out.ops.mprotects > 0);
    assert!(shape.exclusive_exits > 0 || out.config.generation == Generation::V6_15);
}

fn probes(shape: &Shape, kind: EventKind) -> Vec<ProbeId> {
    shape
        .by_probe
        .keys()
        .filter(|(k, _)| *k == kind as u16)
        .map(|(_, p)| ProbeId::from_u8(*p))
        .collect()
}

fn count(shape: &Shape, kind: EventKind) -> u64 {
    shape
        .by_probe
        .iter()
        .filter(|((k, _), _)| *k == kind as u16)
        .map(|(_, n)| *n)
        .sum()
}

#[test]
fn one_million_ops_on_8_threads_report_nothing() {
    let t0 = Instant::now();
    let (out, shape) = run_checked(config(Generation::V7_0, 1_000_000));
    println!(
        "1M ops, 8 threads: {:.2}s wall ({:.0} ops/s in the simulator), {} events",
        t0.elapsed().as_secs_f64(),
        out.ops.ops as f64 / out.elapsed.as_secs_f64(),
        out.totals.total_events()
    );
    assert_eq!(out.ops.ops, 1_000_000);
    assert_clean(&out, &shape);
    // A real workload: writers waited for readers and were woken by them.
    assert!(out.totals.events_of(EventKind::WriterWake) > 0);
    assert!(shape.eintr_exits > 0, "killable writers were interrupted");
}

#[test]
fn v7_emits_the_7x_event_set() {
    let (out, shape) = run_checked(config(Generation::V7_0, 150_000));
    assert_clean(&out, &shape);
    assert_eq!(
        probes(&shape, EventKind::ExcludeEnter),
        [ProbeId::VmaStartExcludeReaders]
    );
    assert_eq!(
        probes(&shape, EventKind::ReaderAcquire),
        [ProbeId::LockVmaUnderRcu, ProbeId::LockNextVma]
    );
    // Only the slow path of vma_mark_detached is visible on 7.x.
    assert!(count(&shape, EventKind::DetachEnter) < out.ops.munmaps);
    for p in probes(&shape, EventKind::DetachEnter) {
        assert_eq!(p, ProbeId::VmaExcludeReadersForDetach);
    }
}

#[test]
fn v6_19_emits_enter_locked_and_every_detach() {
    let (out, shape) = run_checked(config(Generation::V6_19, 150_000));
    assert_clean(&out, &shape);
    assert_eq!(
        probes(&shape, EventKind::ExcludeEnter),
        [ProbeId::VmaEnterLocked]
    );
    assert_eq!(
        probes(&shape, EventKind::DetachEnter),
        [ProbeId::VmaMarkDetached]
    );
    assert_eq!(count(&shape, EventKind::DetachEnter), out.ops.munmaps);
    assert!(shape.eintr_exits > 0, "killable writers were interrupted");
}

#[test]
fn v6_15_has_no_exclusion_events_and_no_killable_writers() {
    let (out, shape) = run_checked(config(Generation::V6_15, 150_000));
    assert_clean(&out, &shape);
    assert_eq!(count(&shape, EventKind::ExcludeEnter), 0);
    assert_eq!(count(&shape, EventKind::ExcludeExit), 0);
    // lock_next_vma arrived in 6.17; the 6.15 generation stands for 6.15-6.18.
    assert_eq!(
        probes(&shape, EventKind::ReaderAcquire),
        [ProbeId::LockVmaUnderRcu]
    );
    assert_eq!(count(&shape, EventKind::DetachEnter), out.ops.munmaps);
    assert_eq!(out.ops.forks_interrupted, 0);
}

#[test]
fn kernel_release_visibility_hides_most_puts() {
    let mut cfg = config(Generation::V7_0, 100_000);
    cfg.releases = ReleaseVisibility::Kernel;
    let (out, shape) = run_checked(cfg);
    assert_clean(&out, &shape);
    let released = out.totals.events_of(EventKind::ReaderRelease);
    assert!(
        released > 0 && released * 4 < out.ops.faults_locked,
        "{released}"
    );
}

/// What a live session sees: 1 in 16 reader results, only fault-retry puts. The
/// validator has to live with unseen leases; the counters still count every outcome.
#[test]
fn sampled_readers_and_kernel_releases_report_nothing() {
    for g in Generation::ALL {
        let mut cfg = config(*g, 100_000);
        cfg.releases = ReleaseVisibility::Kernel;
        cfg.reader_sample_every = 16;
        let (out, shape) = run_checked(cfg);
        assert_clean(&out, &shape);
        let c = &out.totals.counters;
        let outcomes = c.get(Counter::ReaderAcquireOk) + c.get(Counter::ReaderAcquireFail);
        assert_eq!(outcomes, out.ops.faults);
        // Both reader probes stream samples; lock_vma_under_rcu's are 1 in 16 of its
        // outcomes.
        assert_eq!(
            out.totals.events_of(EventKind::ReaderAcquire),
            c.get(Counter::ReaderSampled)
        );
        let sampled = shape.by_probe[&(
            EventKind::ReaderAcquire as u16,
            ProbeId::LockVmaUnderRcu as u8,
        )];
        assert!(
            sampled * 15 < outcomes && sampled * 17 > outcomes,
            "{sampled} of {outcomes}"
        );
    }
}

/// The simulator's own checks are not vacuous: a broken reader or a lost wake-up shows
/// up in them, independently of the validator.
#[test]
fn simulator_checks_catch_a_broken_protocol() {
    let mut cfg = config(Generation::V7_0, 150_000);
    cfg.injections = vec![Injection::ReaderIgnoresFlag, Injection::LostWakeup];
    cfg.inject_rate = 1.0;
    let out = sim::run(cfg, Vec::new()).unwrap();
    assert!(out.fired(Injection::ReaderIgnoresFlag) > 0);
    assert!(out.fired(Injection::LostWakeup) > 0);
    // Admitted while excluded, or found the VMA write-locked while holding it.
    assert!(
        out.checks["reader_admitted_while_excluded"] + out.checks["reader_held_while_write_locked"]
            > 0,
        "{:?}",
        out.checks
    );
    assert!(out.checks["wait_timeout_recoveries"] > 0);
    // The repairs keep the object lifecycle sound even so.
    assert!(out.leaked_refs.is_empty(), "{:?}", out.leaked_refs);
}

#[test]
fn duration_bound_run_stops() {
    let cfg = SimConfig {
        ops: None,
        duration: Some(std::time::Duration::from_millis(300)),
        ..config(Generation::V6_19, 0)
    };
    let t0 = Instant::now();
    let (out, shape) = run_checked(cfg);
    assert!(t0.elapsed().as_secs() < 10);
    assert!(out.ops.ops > 0);
    assert_clean(&out, &shape);
}

#[test]
fn bad_configuration_is_an_error() {
    let cfg = SimConfig {
        threads: 0,
        ..SimConfig::default()
    };
    assert!(sim::run(cfg, Vec::new()).is_err());
    let cfg = SimConfig {
        ops: None,
        duration: None,
        ..SimConfig::default()
    };
    assert!(sim::run(cfg, Vec::new()).is_err());
    for cfg in [
        SimConfig {
            threads: 100_000,
            ..SimConfig::default()
        },
        SimConfig {
            mms: Some(0),
            ..SimConfig::default()
        },
        SimConfig {
            inject_rate: 1.5,
            ..SimConfig::default()
        },
    ] {
        assert!(sim::run(cfg, Vec::new()).is_err());
    }
}

/// The event-shape checks above are not vacuous either: injected faults violate them.
#[test]
fn shape_checks_see_injected_faults() {
    for k in [
        Injection::EndExcludeSkipped,
        Injection::SeqNotStored,
        Injection::DetachLeavesRefcount,
        Injection::FreeWhileReferenced,
        Injection::ReaderIgnoresFlag,
    ] {
        let mut cfg = config(Generation::V6_19, 60_000);
        cfg.injections = vec![k];
        cfg.inject_rate = 0.2;
        let (out, shape) = run_checked(cfg);
        assert!(out.fired(k) > 0, "{k} never fired");
        assert!(
            !shape.violations.is_empty(),
            "{k} went unnoticed by the shape checks"
        );
    }
}

/// `mm_lock_seq` wraps through `UINT_MAX`, where a fresh VMA (`vm_lock_seq = UINT_MAX`)
/// counts as write-locked without `__vma_start_write`: still nothing to report.
#[test]
fn sequence_wraparound_reports_nothing() {
    for g in Generation::ALL {
        let mut cfg = config(*g, 100_000);
        cfg.seq_start = u32::MAX - 3_000;
        let (out, shape) = run_checked(cfg);
        assert!(
            shape.seq_high && shape.seq_low,
            "the sequence did not wrap on {}",
            g.key()
        );
        assert_clean(&out, &shape);
    }
}

/// One task has no interleaving, so its whole event stream is fixed by the seed.
#[test]
fn one_task_runs_are_reproducible_from_the_seed() {
    #[derive(Default)]
    struct Keep(Arc<Mutex<Vec<Event>>>);
    impl Sink for Keep {
        fn events(&mut self, events: &[Event]) {
            self.0.lock().unwrap().extend_from_slice(events);
        }
    }
    let run = |seed: u64| {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let cfg = SimConfig {
            threads: 1,
            ops: Some(20_000),
            seed,
            injections: vec![Injection::SeqNotStored, Injection::FreeWhileReferenced],
            inject_rate: 0.05,
            ..SimConfig::default()
        };
        let out = sim::run(cfg, vec![Box::new(Keep(kept.clone()))]).unwrap();
        let evs: Vec<_> = kept
            .lock()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e.kind,
                    e.probe,
                    e.vma,
                    e.refcnt,
                    e.vm_lock_seq,
                    e.mm_lock_seq,
                    e.arg,
                    e.ret,
                )
            })
            .collect();
        (evs, out.sites.len())
    };
    let (a, sites_a) = run(3);
    let (b, sites_b) = run(3);
    let (c, _) = run(4);
    assert!(a.len() > 20_000 && sites_a > 0);
    assert_eq!(a, b);
    assert_eq!(sites_a, sites_b);
    assert_ne!(a, c);
}

/// A consumer slower than the producers throttles them; nothing is dropped.
#[test]
fn slow_consumer_gets_backpressure_not_loss() {
    struct Slow;
    impl Sink for Slow {
        fn events(&mut self, _: &[Event]) {
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
    }
    let (out, shape) = {
        let shape = Arc::new(Mutex::new(Shape::default()));
        let cfg = config(Generation::V7_0, 120_000);
        let sinks: Vec<Box<dyn Sink>> = vec![
            Box::new(Slow),
            Box::new(ShapeSink(Generation::V7_0, shape.clone())),
        ];
        let out = sim::run(cfg, sinks).unwrap();
        let shape = std::mem::take(&mut *shape.lock().unwrap());
        (out, shape)
    };
    // More batches than the channel holds went through the slow sink.
    assert!(out.delivered > 100 * 2048, "{}", out.delivered);
    assert_clean(&out, &shape);
}
