use vmatrace_common::event::{ProbeId, flags};
use vmatrace_common::model::{Generation, generation::EINTR};
use vmatrace_common::{Counter, Event, EventKind};

use super::*;
use crate::kernel::plan::{LogicalEvent, Observability, ProbePlan};

fn comm(s: &str) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..s.len()].copy_from_slice(s.as_bytes());
    c
}

fn ev(kind: EventKind, tgid: u32, vma: u64) -> Event {
    let start = 0x7f00_0000_0000 + vma % 0x1000 * 0x1000;
    Event::new(kind, ProbeId::Unknown)
        .with_task(tgid, tgid + 1)
        .with_vma(vma, 0xffff_8880_0000_1000, start, start + 0x1000)
        .with_sample(0, 0, 0)
        .with_comm("worker")
}

fn exclude_exit(tgid: u32, vma: u64, wait_ns: u64) -> Event {
    let mut e = ev(EventKind::ExcludeExit, tgid, vma);
    e.flags |= flags::PAIRED | flags::RET | flags::VES;
    e.wait_ns = wait_ns;
    e.ves_exclusive = 1;
    e.probe = ProbeId::VmaStartExcludeReaders as u8;
    e
}

#[test]
fn exclusion_waits_feed_histogram_tables_and_slowest() {
    let mut s = Stats::new(Generation::V7_0);
    s.observe(&exclude_exit(100, 0xa000, 1_000));
    s.observe(&exclude_exit(100, 0xa000, 3_000));
    s.observe(&exclude_exit(200, 0xb000, 2_000_000));
    let p = s.percentiles();
    assert_eq!(p.count, 3);
    assert_eq!(p.max_ns, 2_000_000);
    assert_eq!(s.slowest().items()[0].tgid, 200);
    let snap = s.snapshot();
    assert_eq!(snap.top_processes[0].tgid, 200);
    assert_eq!(snap.top_processes[1].exclusions, 2);
    assert_eq!(snap.top_processes[1].total_wait_ns, 4_000);
    assert_eq!(snap.top_processes[1].max_wait_ns, 3_000);
    assert_eq!(snap.top_vmas.len(), 2);
    assert_eq!(snap.top_vmas[1].vm_start, Some(0x7f00_0000_0000));
}

#[test]
fn found_detached_and_unpaired_exits_stay_out_of_the_histogram() {
    let mut s = Stats::new(Generation::V7_0);
    let mut detached = exclude_exit(1, 0xa000, 0);
    detached.ves_exclusive = 0;
    detached.ves_detached = 1;
    s.observe(&detached);
    let mut unpaired = exclude_exit(1, 0xa000, 0);
    unpaired.flags &= !flags::PAIRED;
    s.observe(&unpaired);
    assert_eq!(s.found_detached(), 1);
    assert_eq!(s.percentiles().count, 0);
    // The unpaired one still counts as an exclusion for the process.
    assert_eq!(s.snapshot().top_processes[0].exclusions, 1);
}

#[test]
fn six_nineteen_return_values() {
    let mut s = Stats::new(Generation::V6_19);
    let mut excluded = exclude_exit(1, 0xa000, 50);
    excluded.flags &= !flags::VES;
    excluded.ret = 1;
    let mut detached = excluded;
    detached.ret = 0;
    let mut intr = excluded;
    intr.ret = EINTR;
    for e in [excluded, detached, intr] {
        s.observe(&e);
    }
    assert_eq!(s.percentiles().count, 2);
    assert_eq!(s.found_detached(), 1);
    assert_eq!(s.interrupted(), 1);
}

#[test]
fn interrupted_killable_waits_are_counted_per_process() {
    let mut s = Stats::new(Generation::V7_0);
    let mut e = exclude_exit(7, 0xa000, 9_000_000);
    e.ret = EINTR;
    e.ves_exclusive = 0;
    s.observe(&e);
    assert_eq!(s.interrupted(), 1);
    assert!(s.slowest().items()[0].interrupted);
    assert_eq!(s.snapshot().top_processes[0].interrupted, 1);
}

#[test]
fn old_kernels_use_write_lock_exit_as_the_wait() {
    let mut s = Stats::new(Generation::V6_15);
    let mut e = ev(EventKind::WriteLockExit, 3, 0xa000);
    e.flags |= flags::PAIRED;
    e.wait_ns = 777;
    s.observe(&e);
    // An ExcludeExit on 6.15 cannot happen; if one did, it must not double count.
    s.observe(&exclude_exit(3, 0xa000, 5));
    assert_eq!(s.wait_source(), WaitSource::WriteLockExit);
    assert_eq!(s.percentiles().count, 1);
    assert_eq!(s.percentiles().max_ns, 777);
    assert_eq!(s.write_lock_histogram().count(), 1);

    let mut s7 = Stats::with_plan(Generation::V7_0, Some(&plan_with(direct())));
    s7.observe(&e);
    assert_eq!(
        s7.percentiles().count,
        0,
        "start-exclude hooked: exclusion waits come from ExcludeExit"
    );
    assert_eq!(s7.write_lock_histogram().count(), 1);
}

fn direct() -> Observability {
    Observability::Direct { points: vec![0] }
}

/// A plan whose only interesting entry is how start-exclude's return is seen.
fn plan_with(start_exclude_return: Observability) -> ProbePlan {
    ProbePlan {
        kernel: crate::kernel::plan::KernelId::default(),
        generation: Generation::V6_19,
        offsets: vmatrace_common::Offsets::ABSENT,
        points: Vec::new(),
        attach: Default::default(),
        coverage: vec![crate::kernel::plan::EventCoverage {
            event: LogicalEvent::StartExcludeReturn,
            status: start_exclude_return,
        }],
        notes: Vec::new(),
    }
}

fn proxy() -> Observability {
    Observability::Proxy {
        via: "fexit __vma_start_write, fexit vma_mark_detached".into(),
        points: vec![0, 1],
    }
}

fn paired_write_lock_exit(tgid: u32, vma: u64, wait_ns: u64) -> Event {
    let mut e = ev(EventKind::WriteLockExit, tgid, vma);
    e.flags |= flags::PAIRED | flags::RET;
    e.wait_ns = wait_ns;
    e
}

fn slow_vma_mark_detached(tgid: u32, vma: u64, wait_ns: u64) -> Event {
    let mut e = ev(EventKind::DetachExit, tgid, vma);
    e.probe = ProbeId::VmaMarkDetached as u8;
    e.flags |= flags::PAIRED;
    e.entry_refcnt = 2;
    e.wait_ns = wait_ns;
    e
}

#[test]
fn debian_6_19_proxy_plan_measures_write_lock_and_detach_waits() {
    // Debian's 6.19: __vma_enter_locked is notrace, start-exclude's return is a proxy.
    let mut s = Stats::with_plan(Generation::V6_19, Some(&plan_with(proxy())));
    assert_eq!(s.wait_source(), WaitSource::WriteLockExit);
    s.observe(&paired_write_lock_exit(3, 0xa000, 900));
    s.observe(&slow_vma_mark_detached(3, 0xb000, 50_000));
    assert_eq!(s.percentiles().count, 2);
    assert_eq!(s.percentiles().max_ns, 50_000);
    assert_eq!(s.detach_exclusions(), 1);
    assert_eq!(s.snapshot().top_processes[0].exclusions, 2);
    // The detach's wait has a histogram of its own (for the metrics), a subset.
    let d = s.snapshot().detach_wait;
    assert_eq!(
        (d.percentiles.count, d.sum_ns, d.percentiles.max_ns),
        (1, 50_000, 50_000)
    );
    // A reset keeps the plan's choice.
    s.reset();
    s.observe(&paired_write_lock_exit(3, 0xa000, 900));
    assert_eq!(s.percentiles().count, 1);
}

#[test]
fn direct_plan_on_6_19_uses_exclude_exit() {
    // The same kernel with CONFIG_KPROBE_EVENTS_ON_NOTRACE=y: __vma_enter_locked kprobed.
    let mut s = Stats::with_plan(Generation::V6_19, Some(&plan_with(direct())));
    assert_eq!(s.wait_source(), WaitSource::ExcludeExit);
    s.observe(&paired_write_lock_exit(3, 0xa000, 900));
    s.observe(&slow_vma_mark_detached(3, 0xb000, 50_000));
    assert_eq!(
        s.percentiles().count,
        0,
        "waits come from exclude_exit only"
    );
    let mut x = exclude_exit(3, 0xa000, 700);
    x.ret = 1;
    s.observe(&x);
    assert_eq!(s.percentiles().count, 1);
    assert_eq!(s.write_lock_histogram().count(), 1);
}

#[test]
fn without_a_plan_the_source_follows_the_events() {
    // Replay of an old trace from Debian's 6.19: no exclude events ever arrive.
    let mut s = Stats::new(Generation::V6_19);
    s.observe(&paired_write_lock_exit(3, 0xa000, 900));
    s.observe(&slow_vma_mark_detached(3, 0xb000, 50_000));
    assert_eq!(s.wait_source(), WaitSource::WriteLockExit);
    assert_eq!(s.percentiles().count, 2);

    // A trace where start-exclude was hooked: the first exclude_exit switches the source
    // and forgets the write-lock waits counted before it (they would double count).
    let mut s = Stats::new(Generation::V7_0);
    s.observe(&paired_write_lock_exit(3, 0xa000, 900));
    assert_eq!(s.percentiles().count, 1);
    s.observe(&exclude_exit(3, 0xa000, 700));
    s.observe(&paired_write_lock_exit(3, 0xa000, 900));
    s.observe(&slow_vma_mark_detached(3, 0xb000, 50_000));
    assert_eq!(s.wait_source(), WaitSource::ExcludeExit);
    assert_eq!(s.percentiles().count, 1);
    assert_eq!(s.percentiles().max_ns, 700);
    assert_eq!(s.detach_exclusions(), 0);
    let top = &s.snapshot().top_processes[0];
    assert_eq!((top.exclusions, top.max_wait_ns), (1, 700));
    assert_eq!(s.slowest().items().len(), 1);
    assert_eq!(s.write_lock_histogram().count(), 2);

    // A plan that does not say how start-exclude is seen (hand-made, no coverage) is
    // treated as no plan.
    let mut bare = plan_with(direct());
    bare.coverage.clear();
    let mut s = Stats::with_plan(Generation::V7_0, Some(&bare));
    s.observe(&exclude_exit(3, 0xa000, 700));
    assert_eq!(s.wait_source(), WaitSource::ExcludeExit);
    let mut s = Stats::with_plan(Generation::V7_0, Some(&bare));
    s.observe(&paired_write_lock_exit(3, 0xa000, 900));
    assert_eq!(s.percentiles().count, 1);
}

#[test]
fn slow_detaches_and_reader_failures() {
    let mut s = Stats::new(Generation::V6_19);
    let mut fast = ev(EventKind::DetachEnter, 5, 0xa000);
    fast.probe = ProbeId::VmaMarkDetached as u8;
    fast.refcnt = 1;
    let mut slow = fast;
    slow.refcnt = 3;
    let mut slow7 = ev(EventKind::DetachEnter, 5, 0xb000);
    slow7.probe = ProbeId::VmaExcludeReadersForDetach as u8;
    let mut rfail = ev(EventKind::ReaderAcquire, 6, 0);
    rfail.flags = flags::RET;
    rfail.ret = 0;
    let mut rok = rfail;
    rok.ret = 0xffff_8880_dead_0000_u64 as i64;
    for e in [fast, slow, slow7, rfail, rok] {
        s.observe(&e);
    }
    assert_eq!(s.slow_detaches(), 2);
    assert_eq!(s.sampled_reader_failures(), 1);
    let snap = s.snapshot();
    let p5 = snap.top_processes.iter().find(|r| r.tgid == 5).unwrap();
    assert_eq!(p5.slow_detaches, 2);
    let p6 = snap.top_processes.iter().find(|r| r.tgid == 6).unwrap();
    assert_eq!(p6.reader_failures, 1);
    // A failed reader has no VMA: no per-VMA row for it.
    assert!(snap.top_vmas.iter().all(|r| r.tgid != 6));
}

#[test]
fn counters_losses_and_reset_baseline() {
    let mut s = Stats::new(Generation::V7_0);
    let mut c = CounterSnapshot {
        values: vec![0; 16],
        ..Default::default()
    };
    c.values[Counter::RingbufReserveFailed as usize] = 5;
    c.values[Counter::ReaderAcquireOk as usize] = 1000;
    c.values[Counter::ReaderAcquireFail as usize] = 10;
    s.set_counters(&c);
    s.set_undecodable(2);
    assert_eq!(s.losses()["ringbuf_reserve_failed"], 5);
    assert_eq!(s.losses()["undecodable"], 2);
    assert_eq!(s.total_losses(), 7);
    assert_eq!(s.reader_outcomes().acquire_ok, 1000);
    s.roll_rates(1000);
    assert_eq!(s.rates().last_rate(rates::SERIES_READER_OK), 1000.0);

    s.observe(&exclude_exit(1, 0xa000, 10));
    s.reset();
    assert_eq!(s.percentiles().count, 0);
    assert_eq!(s.total_losses(), 0);
    assert!(s.processes().is_empty());
    c.values[Counter::RingbufReserveFailed as usize] = 8;
    c.values[Counter::ReaderAcquireOk as usize] = 1500;
    s.set_counters(&c);
    assert_eq!(s.losses()["ringbuf_reserve_failed"], 3);
    s.roll_rates(1000);
    assert_eq!(s.rates().last_rate(rates::SERIES_READER_OK), 500.0);
}

#[test]
fn event_rates_per_kind() {
    let mut s = Stats::new(Generation::V7_0);
    for _ in 0..4 {
        s.observe(&ev(EventKind::VmaAlloc, 1, 0xa000));
    }
    s.observe(&ev(EventKind::VmaFree, 1, 0xa000));
    s.roll_rates(2000);
    assert_eq!(
        s.rates().last_rate(rates::series_of(EventKind::VmaAlloc)),
        2.0
    );
    assert_eq!(
        s.rates().last_rate(rates::series_of(EventKind::VmaFree)),
        0.5
    );
}

#[test]
fn tables_stay_bounded_under_pid_churn() {
    let mut s = Stats::with_caps(Generation::V7_0, 64, 64);
    for i in 0..10_000u32 {
        s.observe(&exclude_exit(
            i,
            u64::from(i) * 0x1000 + 0xa000,
            u64::from(i % 97),
        ));
    }
    assert!(s.processes().len() <= 64);
    assert!(s.vmas().len() <= 64);
    assert_eq!(s.processes().evicted() + s.processes().len() as u64, 10_000);
    let snap = s.snapshot();
    assert_eq!(snap.processes_evicted, s.processes().evicted());
    assert_eq!(snap.exclusion_wait.percentiles.count, 10_000);
}

#[test]
fn snapshot_serialises_without_kernel_addresses() {
    let mut s = Stats::new(Generation::V7_0);
    s.observe(&exclude_exit(1, 0xffff_8880_1234_5678, 10));
    let json = serde_json::to_string(&s.snapshot()).unwrap();
    assert!(json.contains("\"p99_ns\""), "{json}");
    assert!(json.contains("\"wait_source\":\"exclude_exit\""), "{json}");
    // Neither the vma nor the mm pointer appears (decimal or hex).
    for addr in [0xffff_8880_1234_5678_u64, 0xffff_8880_0000_1000] {
        assert!(!json.contains(&addr.to_string()), "{json}");
        assert!(!json.contains(&format!("{addr:x}")), "{json}");
    }
}

#[test]
fn undecodable_kinds_are_ignored_without_panic() {
    let mut s = Stats::new(Generation::V7_0);
    let mut e = Event::ZERO;
    e.kind = 999;
    s.observe(&e);
    e.kind = 0;
    s.observe(&e);
    assert_eq!(s.percentiles().count, 0);
    assert!(s.processes().is_empty());
}

#[test]
fn old_kernels_count_detach_waits_from_vma_mark_detached() {
    let mut s = Stats::new(Generation::V6_15);
    let mut slow = ev(EventKind::DetachExit, 4, 0xa000);
    slow.probe = ProbeId::VmaMarkDetached as u8;
    slow.flags |= flags::PAIRED;
    slow.entry_refcnt = 3;
    slow.wait_ns = 40_000;
    let mut fast = slow;
    fast.entry_refcnt = 1;
    fast.wait_ns = 30;
    s.observe(&slow);
    s.observe(&fast);
    assert_eq!(
        s.percentiles().count,
        1,
        "only the detach that waited for readers"
    );
    assert_eq!(s.detach_exclusions(), 1);
    assert!(s.slowest().items()[0].detaching);
    // With start-exclude hooked the same event is not an exclusion wait.
    let mut s7 = Stats::with_plan(Generation::V7_0, Some(&plan_with(direct())));
    s7.observe(&slow);
    assert_eq!(s7.percentiles().count, 0);
}

/// A `SlowWait` names the return sent right after it (same thread and time): the
/// slowest waits carry its syscall and symbolized stack; one of another time does not
/// attach to a later return.
#[test]
fn slow_waits_carry_their_syscall_and_stack() {
    let mut s = Stats::new(Generation::V7_0);
    s.add_stack(&crate::pipeline::KernelStack {
        id: 9,
        frames: vec![
            "__vma_start_exclude_readers+0x1b2".into(),
            "__x64_sys_munmap+0x20".into(),
        ],
    });
    let mut ret = exclude_exit(100, 0xa000, 5_000_000);
    ret.ts_ns = 1_000;
    let mut slow = ev(EventKind::SlowWait, 100, 0xa000);
    slow.flags = flags::RET;
    slow.ts_ns = 1_000;
    slow.arg = 11;
    slow.ret = 9;
    s.observe(&slow);
    s.observe(&ret);
    // A stale one (its return was filtered or lost) must not name the next wait.
    let mut stale = slow;
    stale.ts_ns = 1_500;
    s.observe(&stale);
    let mut next = exclude_exit(100, 0xa000, 4_000_000);
    next.ts_ns = 2_000;
    s.observe(&next);
    let snap = s.snapshot();
    assert_eq!(snap.slowest[0].wait_ns, 5_000_000);
    assert_eq!(snap.slowest[0].syscall.as_deref(), Some("munmap"));
    assert_eq!(snap.slowest[0].stack.len(), 2);
    assert_eq!(snap.slowest[1].syscall, None);
    assert!(snap.slowest[1].stack.is_empty());
}

/// The kernel's per-process fallback counts become the processes' `writer_fallbacks`,
/// counted from the last reset, with the kernel's comm for a process seen nowhere else.
#[test]
fn writer_fallbacks_per_process_since_reset() {
    use crate::pipeline::ProcessFallbacks;
    let snap = |a: u64, b: u64| CounterSnapshot {
        values: vec![0; 16],
        fallbacks: vec![
            ProcessFallbacks {
                tgid: 100,
                count: a,
                comm: comm("reader"),
            },
            ProcessFallbacks {
                tgid: 200,
                count: b,
                comm: comm("other"),
            },
        ],
    };
    let mut s = Stats::new(Generation::V7_0);
    s.observe(&exclude_exit(100, 0xa000, 1_000));
    s.set_counters(&snap(5, 3));
    let rows = s.snapshot().top_processes;
    let of = |tgid: u32| rows.iter().find(|r| r.tgid == tgid).expect("row").clone();
    assert_eq!(of(100).writer_fallbacks, 5);
    assert_eq!(of(100).comm, "worker", "the events' comm wins");
    assert_eq!(of(200).writer_fallbacks, 3);
    assert_eq!(of(200).comm, "other", "known only from the kernel's entry");
    s.reset();
    s.set_counters(&snap(9, 3));
    let rows = s.snapshot().top_processes;
    assert_eq!(
        rows.iter()
            .find(|r| r.tgid == 100)
            .map(|r| r.writer_fallbacks),
        Some(4)
    );
    assert!(
        rows.iter().all(|r| r.tgid != 200),
        "nothing new since the reset"
    );
}
