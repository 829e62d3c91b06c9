//! Decode + validate throughput of `replay` on one core.
//!
//! `cargo bench -p vmatrace --bench replay_throughput [-- EVENTS]`
//!
//! Writes a synthetic trace (7.x write-lock slow paths and mm write-unlocks over 64 VMAs
//! of 4 mms, with counter snapshots) to a temporary directory, plain and zstd, then
//! times on this thread: (1) reading and checksumming records only, (2) reading and
//! running every event through the pipeline (validator + totals), as `vmatrace replay`
//! does minus the channel hop, each [`PASSES`] times, alternately. Prints events/s
//! (median and best); nothing is asserted but that every event was counted.

use std::{hint::black_box, time::Instant};

use vmatrace::{
    pipeline::{CounterSnapshot, Pipeline, SourceItem},
    trace::{ClockBase, Record, TraceHeader, TraceReader, TraceWriter},
};
use vmatrace_common::{Counter, Event, EventKind, event::ProbeId, model::Generation};

const F: u32 = 1 << 30;

/// An event of `tid` on `vma` of `mm` at `ts`, as a program streams it: the VMA's range,
/// its lock state (`vm_refcnt`, `vm_lock_seq`, `mm_lock_seq`) and the task's comm.
fn event(
    kind: EventKind,
    probe: ProbeId,
    at: (u64, u32),
    vma: u64,
    mm: u64,
    lock: (u32, u32, u32),
) -> Event {
    let (ts, tid) = at;
    let start = 0x7f00_0000_0000 + (vma & 0xffff) * 0x1000;
    Event::new(kind, probe)
        .at(ts)
        .with_task(tid, tid)
        .with_vma(vma, mm, start, start + 0x1000)
        .with_sample(lock.0, lock.1, lock.2)
        .with_comm("stress")
}

/// One write-lock slow path on a VMA with a plausible 7.x refcount story.
fn write_lock(out: &mut Vec<Event>, vma: u64, mm: u64, ts: u64, seq: u32, tid: u32) {
    use EventKind as K;
    use ProbeId::{VmaStartExcludeReaders as Exclude, VmaStartWrite as Write};
    let at = |kind, probe, dt, lock| event(kind, probe, (ts + dt, tid), vma, mm, lock);
    let wait = 300 + (ts % 700);
    let before = seq.wrapping_sub(2);
    out.extend([
        at(K::WriteLockEnter, Write, 0, (1, before, seq)).with_arg(2),
        at(K::ExcludeEnter, Exclude, 50, (1, before, seq))
            .with_arg(2)
            .with_ves(2, false),
        at(K::ExcludeExit, Exclude, 450, (F + 1, before, seq))
            .with_ret(0)
            .with_ves(2, false)
            .with_ves_outcome(false, true)
            .paired(wait, 1),
        at(K::WriteLockExit, Write, 550, (1, seq, seq))
            .with_ret(0)
            .paired(wait + 100, 1),
    ]);
}

fn make_trace(path: &std::path::Path, n_events: usize, compress: bool) -> u64 {
    let mut h = TraceHeader::synthetic(Generation::V7_0);
    h.clock = ClockBase {
        monotonic_ns: 1,
        realtime_ns: 1_800_000_000_000_000_000,
    };
    let mut w = TraceWriter::create(path, &h, compress).expect("create trace");
    let mut batch = Vec::with_capacity(1024);
    let mut ts = 1_000u64;
    let mut seq = 1u32;
    let mut written = 0usize;
    let mut counters = vec![0u64; 16];
    while written < n_events {
        for i in 0..64u64 {
            let mm = 0xffff_8881_0000_0000 + (i % 4) * 0x10000;
            let vma = 0xffff_8882_0000_0000 + (i * 0x100);
            write_lock(&mut batch, vma, mm, ts, seq, 1000 + (i % 8) as u32);
            ts += 1_000;
            if i % 8 == 7 {
                batch.push(
                    Event::new(EventKind::MmWriteUnlock, ProbeId::MmapLockReleased)
                        .at(ts)
                        .with_task(1000, 1000)
                        .with_vma(0, mm, 0, 0)
                        .with_comm("stress"),
                );
                seq = seq.wrapping_add(2);
            }
        }
        written += batch.len();
        w.write_events(ts, &batch).expect("write");
        batch.clear();
        counters[Counter::ReaderAcquireOk as usize] += 1000;
        w.write_counters(ts, &counters).expect("write");
    }
    w.finish(ts).expect("finish")
}

/// Timed passes of each kind over the same file: this host's run-to-run noise is large
/// (±15 % between runs of one pass), so the median and the best of several are printed.
const PASSES: usize = 5;

/// Read every record of the trace at `path`; with a pipeline, run them through it.
/// Returns the events read and, with a pipeline, the anomalies.
fn pass(path: &std::path::Path, validate: bool) -> (u64, u64) {
    let mut r = TraceReader::new(std::fs::File::open(path).expect("open")).expect("trace");
    let mut events = 0u64;
    let mut p = validate.then(|| Pipeline::new(Generation::V7_0));
    while let Some(rec) = r.next_record().expect("valid") {
        let Some(p) = &mut p else {
            if let Record::Events { events: e, .. } = rec {
                events += e.len() as u64;
                black_box(&e);
            }
            continue;
        };
        match rec {
            Record::Events { events: e, .. } => {
                events += e.len() as u64;
                p.handle(SourceItem::Events(e))
            }
            Record::Counters { values, .. } => p.handle(SourceItem::Counters(CounterSnapshot {
                values,
                ..Default::default()
            })),
            Record::Undecodable { count, .. } => p.handle(SourceItem::Undecodable(count)),
            Record::Stack { stack, .. } => p.handle(SourceItem::Stack(stack)),
            Record::Fallbacks { .. } | Record::End { .. } => {}
        }
    }
    let Some(mut p) = p else {
        return (events, 0);
    };
    p.finish();
    assert_eq!(p.totals.total_events(), events);
    (events, p.totals.anomalies_total())
}

/// `median (best)` of the passes' rates, M events/s.
fn rates(events: u64, secs: &mut [f64]) -> String {
    secs.sort_by(f64::total_cmp);
    let rate = |s: f64| events as f64 / s / 1e6;
    format!(
        "{:>6.2} M events/s median, best {:.2} ({} passes, median {:.3} s)",
        rate(secs[secs.len() / 2]),
        rate(secs[0]),
        secs.len(),
        secs[secs.len() / 2]
    )
}

fn main() {
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    for compress in [false, true] {
        let path = dir.path().join("bench.vmatrace");
        let t = Instant::now();
        let bytes = make_trace(&path, n, compress);
        let write_s = t.elapsed().as_secs_f64();
        // The trace's dirty pages go to disk now, not while the replay is timed: the
        // kernel's writeback of a just-written 640 MB file otherwise lands in the read
        // passes (5 M events ran at 16 M/s, 2 M events at 22 M/s, same code).
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .expect("sync the trace");

        // (1) decode only and (2) decode + validate + totals, alternately.
        let (mut decode_s, mut full_s) = (Vec::new(), Vec::new());
        let (mut events, mut anomalies) = (0, 0);
        for _ in 0..PASSES {
            let t = Instant::now();
            events = pass(&path, false).0;
            decode_s.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let (validated, found) = pass(&path, true);
            full_s.push(t.elapsed().as_secs_f64());
            assert_eq!(validated, events);
            anomalies = found;
        }

        println!(
            "{:<5} {events} events, {:.1} MB trace ({:.1} B/event), written at {:.2} M events/s",
            if compress { "zstd" } else { "plain" },
            bytes as f64 / 1e6,
            bytes as f64 / events as f64,
            events as f64 / write_s / 1e6,
        );
        println!(
            "      decode only:                {}",
            rates(events, &mut decode_s)
        );
        println!(
            "      decode + validate + totals: {}, anomalies {anomalies}",
            rates(events, &mut full_s)
        );
    }
}
