//! Per-event cost of `stats::Stats` (and the dashboard sink, which adds a lock per batch).
//! Prints numbers; run with `cargo bench -p vmatrace --bench stats`.

use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vmatrace::pipeline::Sink;
use vmatrace::stats::Stats;
use vmatrace::tui::{AppState, DashboardContext, DashboardSink, SourceKind};
use vmatrace_common::event::ProbeId;
use vmatrace_common::model::Generation;
use vmatrace_common::{Event, EventKind};

/// A writer-heavy mix over `procs` processes and `vmas` VMAs.
fn events(n: usize, procs: u32, vmas: u64) -> Vec<Event> {
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let kind = match i % 8 {
                0 | 1 => EventKind::ExcludeExit,
                2 => EventKind::WriteLockExit,
                3 => EventKind::ReaderAcquire,
                4 => EventKind::DetachEnter,
                5 => EventKind::ExcludeEnter,
                6 => EventKind::WriteLockEnter,
                _ => EventKind::MmWriteUnlock,
            };
            let tgid = (x % u64::from(procs)) as u32 + 1;
            let slot = (x >> 8) % vmas;
            let start = 0x7f00_0000_0000 + slot * 0x1000;
            let mm = 0xffff_8881_0000_0000 + u64::from(tgid) * 0x1000;
            let failed = kind == EventKind::ReaderAcquire && x.is_multiple_of(5);
            Event::new(kind, ProbeId::VmaExcludeReadersForDetach)
                .at(i as u64 * 1000)
                .with_task(tgid, tgid)
                .with_vma(
                    0xffff_8880_0000_0000 + slot * 0x100,
                    mm,
                    start,
                    start + 0x1000,
                )
                .with_sample(0, 0, 0)
                .with_ret(if failed { 0 } else { 1 })
                .with_ves_outcome(false, true)
                .paired((x >> 20) % 100_000, 0)
                .with_comm("worker")
        })
        .collect()
}

fn measure(label: &str, evs: &[Event], sink: &mut dyn Sink) {
    const BATCH: usize = 256;
    // Warm up (tables filled), then time.
    for c in evs.chunks(BATCH) {
        sink.events(c);
    }
    let rounds = 5;
    let t = Instant::now();
    for _ in 0..rounds {
        for c in evs.chunks(BATCH) {
            sink.events(black_box(c));
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let n = (evs.len() * rounds) as f64;
    println!(
        "{label:<44} {:>7.1} ns/event  {:>6.2} M events/s",
        secs * 1e9 / n,
        n / secs / 1e6
    );
}

fn main() {
    let n = 1_000_000;
    for (procs, vmas) in [(16, 256), (2_000, 50_000)] {
        let evs = events(n, procs, vmas);
        let mut stats = Stats::new(Generation::V7_0);
        measure(
            &format!("Stats ({procs} procs, {vmas} VMAs)"),
            &evs,
            &mut stats,
        );
        let shared = Arc::new(Mutex::new(AppState::new(DashboardContext::new(
            SourceKind::Replay,
            "bench",
            Generation::V7_0,
        ))));
        let mut dash = DashboardSink::new(shared);
        measure(
            &format!("DashboardSink ({procs} procs, {vmas} VMAs)"),
            &evs,
            &mut dash,
        );
    }
}
