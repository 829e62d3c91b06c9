//! End to end on this host: the mmap_lock tracepoint programs really attach through
//! `LiveSession`, and deliver events through the ring buffer while this test maps,
//! protects and unmaps memory. Needs root (skipped with the reason otherwise).

pub mod common;

use std::time::Duration;

use common::plans::{OFFSETS_6_18, plan, tracepoint_points};
use tokio::sync::{mpsc, oneshot};
use vmatrace::{
    live::{Filters, LiveOptions, LiveSession, StreamOptions, check_privileges},
    pipeline::{CounterSnapshot, SourceItem},
    testing::skip,
};
use vmatrace_common::{
    Counter, Event, EventKind,
    event::{ProbeId, flags},
    model::Generation,
};

const ROUNDS: usize = 300;

/// mmap → mprotect → munmap, `ROUNDS` times: two write-lock releases (mmap, mprotect)
/// and one downgrade (munmap) per round.
fn workload() {
    for _ in 0..ROUNDS {
        // SAFETY: a fresh anonymous private mapping, protected and unmapped by us only.
        unsafe {
            let len = 64 * 1024;
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            p.cast::<u8>().write_volatile(1);
            assert_eq!(libc::mprotect(p, len / 2, libc::PROT_READ), 0);
            assert_eq!(libc::munmap(p, len), 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mmap_lock_tracepoints_deliver_events_through_the_ring_buffer() {
    const NAME: &str = "mmap_lock_tracepoints_deliver_events_through_the_ring_buffer";
    if let Err(e) = check_privileges() {
        skip(NAME, &format!("{e:#}"));
        return;
    }
    let pid = std::process::id();
    // Trace only this process, which is also the tracer: lift the self filter (any
    // non-zero tgid that is not ours).
    let filters = Filters {
        self_tgid: Some(u32::MAX),
        tgid: Some(pid),
        ..Filters::default()
    };
    let session = match LiveSession::start(LiveOptions {
        plan: plan(Generation::V6_15, OFFSETS_6_18, tracepoint_points()),
        filters,
        stream: StreamOptions {
            ring_buffer_bytes: 1 << 20,
            ..StreamOptions::default()
        },
        enable_stats: true,
    }) {
        Ok(s) => s,
        Err(e) if format!("{e:#}").contains("tracefs") => {
            skip(NAME, &format!("no tracefs: {e:#}"));
            return;
        }
        Err(e) => panic!("LiveSession::start: {e:#}"),
    };
    for h in session.hooks() {
        assert!(h.attached, "{} not attached: {:?}", h.point.target, h.error);
    }
    let names: Vec<String> = session
        .program_stats()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(
        names.contains(&"mmap_lock_released".to_string()),
        "{names:?}"
    );

    let stats = session.stats_handle();
    let (tx, mut rx) = mpsc::channel(64);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let streamer = tokio::spawn(session.stream(tx, async {
        let _ = stop_rx.await;
    }));
    tokio::task::spawn_blocking(workload)
        .await
        .expect("workload ran");
    // Give the reader one counter period, then stop: it must still drain everything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = stats.program_stats();
    // The programs submit without waking the reader while the ring is less than a
    // quarter full (this workload's ~900 records are far less): the workload ended
    // 300 ms ago, so all its records (2 write unlocks + 1 downgrade per round) must
    // have arrived before the stop anyway, from the reader's drain timer.
    let mut events: Vec<Event> = Vec::new();
    let mut counters = CounterSnapshot::default();
    let mut undecodable = 0;
    while let Ok(item) = rx.try_recv() {
        match item {
            SourceItem::Events(b) => events.extend(b),
            SourceItem::Counters(c) => counters = c,
            SourceItem::Undecodable(n) => undecodable += n,
            SourceItem::Stack(_) => {}
            SourceItem::Sequence(_) => unreachable!("a live source has no record sequence"),
        }
    }
    let before_stop = events.len();
    assert!(
        before_stop >= 3 * ROUNDS,
        "only {before_stop} events reached the pipeline before the stop: not drained on the timer"
    );
    stop_tx.send(()).expect("streamer alive");
    let collect = async {
        while let Some(item) = rx.recv().await {
            match item {
                SourceItem::Events(b) => events.extend(b),
                SourceItem::Counters(c) => counters = c,
                SourceItem::Undecodable(n) => undecodable += n,
                SourceItem::Stack(_) => {}
                SourceItem::Sequence(_) => unreachable!("a live source has no record sequence"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), collect)
        .await
        .expect("the stream closes after stop");
    streamer
        .await
        .expect("stream task")
        .expect("stream returns Ok");

    assert_eq!(undecodable, 0);
    assert_eq!(
        counters.get(Counter::RingbufReserveFailed),
        0,
        "{counters:?}"
    );
    assert_eq!(counters.get(Counter::ProbeReadFailed), 0, "{counters:?}");
    let ours: Vec<&Event> = events.iter().filter(|e| e.tgid() == pid).collect();
    assert_eq!(
        ours.len(),
        events.len(),
        "the tgid filter let others through"
    );
    let released = ours
        .iter()
        .filter(|e| e.probe() == ProbeId::MmapLockReleased)
        .count();
    let downgrades = ours
        .iter()
        .filter(|e| e.probe() == ProbeId::MmapLockAcquireReturned)
        .count();
    println!(
        "{} events ({before_stop} before the stop): {released} write unlocks, {downgrades} downgrades; counters {:?}",
        events.len(),
        counters.values
    );
    assert!(released >= 2 * ROUNDS, "only {released} write unlocks");
    assert!(
        downgrades >= ROUNDS,
        "only {downgrades} downgrades (munmap)"
    );
    // BPF_ENABLE_STATS was on: the program ran at least once per write unlock (it also
    // runs for read unlocks, which it filters out).
    let rel = during
        .iter()
        .find(|s| s.name == "mmap_lock_released")
        .expect("stats of mmap_lock_released");
    println!("{during:?}");
    assert!(rel.run_cnt >= released as u64, "{rel:?}");
    assert!(rel.run_time_ns > 0, "{rel:?}");
    assert!(rel.verified_insns.is_some_and(|n| n > 0), "{rel:?}");
    let mm = ours[0].mm;
    assert_ne!(mm, 0);
    let mut last_seq = None;
    for e in &ours {
        assert_eq!(e.kind(), Some(EventKind::MmWriteUnlock));
        assert_eq!(e.mm, mm, "one process, one mm");
        assert!(e.has(flags::MM_SEQ));
        // Read through the 6.18 offset of mm_lock_seq: odd while the write lock is held,
        // and the mm's write locks are serialised, so it only grows.
        assert_eq!(e.mm_lock_seq & 1, 1, "seq {} not odd: {e:?}", e.mm_lock_seq);
        if let Some(prev) = last_seq {
            assert!(e.mm_lock_seq > prev, "seq went {prev} -> {}", e.mm_lock_seq);
        }
        last_seq = Some(e.mm_lock_seq);
        assert_eq!(e.arg, u64::from(e.probe() == ProbeId::MmapLockReleased));
        assert!(e.ts_ns > 0);
    }
}

/// The planner's plan for this host goes through `LiveSession` as is: every point it
/// chose attaches, and its BTF-resolved offsets agree with the hand-filled 6.18 table.
#[test]
fn the_planners_plan_for_this_host_attaches() {
    const NAME: &str = "the_planners_plan_for_this_host_attaches";
    if let Err(e) = check_privileges() {
        skip(NAME, &format!("{e:#}"));
        return;
    }
    let info = match vmatrace::kernel::KernelInfo::from_running_kernel() {
        Ok(i) => i,
        Err(e) => {
            skip(
                NAME,
                &format!("cannot read this kernel's symbols/BTF: {e:#}"),
            );
            return;
        }
    };
    let mut caps = vmatrace::kernel::Capabilities::detect();
    caps.probe_tracing_programs(&info);
    let plan = match vmatrace::kernel::plan(&info, &caps) {
        Ok(p) => p,
        Err(e) => {
            skip(NAME, &format!("no plan for this kernel: {e}"));
            return;
        }
    };
    if plan.generation == Generation::V6_15 && plan.offsets.mm_mm_lock_seq == 0xf8 {
        // A Debian-like 6.16-6.18 layout (this host): the resolver and the table agree.
        let o = plan.offsets;
        let t = OFFSETS_6_18;
        assert_eq!(
            (o.vma_vm_start, o.vma_vm_end, o.vma_vm_mm, o.vma_vm_flags),
            (t.vma_vm_start, t.vma_vm_end, t.vma_vm_mm, t.vma_vm_flags)
        );
        assert_eq!(
            (o.vma_vm_lock_seq, o.vma_vm_refcnt, o.mm_vma_writer_wait),
            (t.vma_vm_lock_seq, t.vma_vm_refcnt, t.mm_vma_writer_wait)
        );
    }
    println!("plan points: {:?}", plan.points);
    let session = LiveSession::start(LiveOptions {
        plan: plan.clone(),
        filters: Filters::default(),
        stream: StreamOptions {
            ring_buffer_bytes: 1 << 16,
            ..StreamOptions::default()
        },
        enable_stats: false,
    })
    .unwrap_or_else(|e| panic!("the planner's plan does not start: {e:#}"));
    assert_eq!(session.hooks().len(), plan.points.len());
    for h in session.hooks() {
        assert!(
            h.attached,
            "planned point {} {} did not attach: {:?}",
            h.point.mode.key(),
            h.point.target,
            h.error
        );
    }
}
