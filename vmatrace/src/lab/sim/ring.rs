//! Event delivery: the simulator's stand-in for the BPF ring buffer.
//!
//! The kernel's BPF ring buffer is one ring shared by all CPUs; `bpf_ringbuf_reserve`
//! serialises producers with a spinlock, so the consumer sees events in reservation
//! order, which is what the validator's per-VMA replay relies on. Per-thread queues would
//! reorder events of different tasks on the same VMA, so the simulator keeps one ring too:
//! a mutex-protected staging batch, handed to the pipeline's bounded channel when full.
//! A full channel blocks the producer that holds the ring (backpressure: every producer
//! waits, nothing is dropped). Events that cannot be delivered because the consumer is
//! gone are counted in `undelivered`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::mpsc;
use vmatrace_common::Event;
use vmatrace_common::counters::COUNTER_SLOTS;

use crate::pipeline::{CounterSnapshot, SourceItem};

/// Staged events, and the timestamp source that keeps them strictly ordered.
pub struct RingInner {
    buf: Vec<Event>,
    last_ts: u64,
    /// Tasks whose next event's timestamp is wanted (see [`Ring::watch_next`]).
    watches: Vec<Watch>,
    /// What the watches saw: (watch, timestamp of the task's next event).
    seen: Vec<(Watch, u64)>,
}

/// "Note the timestamp of task `tid`'s next event under `tag`."
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watch {
    pub tid: u32,
    pub tag: usize,
}

pub struct Ring {
    inner: Mutex<RingInner>,
    tx: mpsc::Sender<SourceItem>,
    batch: usize,
    start: Instant,
    undelivered: AtomicU64,
    delivered: AtomicU64,
}

/// The ring while held: events pushed through one writer are contiguous and ordered.
pub struct RingWriter<'a> {
    ring: &'a Ring,
    inner: MutexGuard<'a, RingInner>,
}

impl RingWriter<'_> {
    /// Append one event; returns its timestamp (strictly increasing over the run).
    pub fn push(&mut self, mut ev: Event) -> u64 {
        let now = self.ring.now_ns();
        let ts = now.max(self.inner.last_ts + 1);
        self.inner.last_ts = ts;
        ev.ts_ns = ts;
        if !self.inner.watches.is_empty() {
            let tid = ev.tid();
            let inner = &mut *self.inner;
            inner.watches.retain(|w| {
                let hit = w.tid == tid;
                if hit {
                    inner.seen.push((*w, ts));
                }
                !hit
            });
        }
        self.inner.buf.push(ev);
        if self.inner.buf.len() >= self.ring.batch {
            let full = std::mem::replace(&mut self.inner.buf, Vec::with_capacity(self.ring.batch));
            // Sent while the ring is held: order across batches is preserved and a slow
            // consumer throttles every producer.
            self.ring.send(full);
        }
        ts
    }

    /// The timestamp the next event would get at the earliest (for `wait_ns`).
    pub fn now_ns(&self) -> u64 {
        self.ring.now_ns().max(self.inner.last_ts + 1)
    }
}

impl Ring {
    pub fn new(tx: mpsc::Sender<SourceItem>, batch: usize) -> Self {
        Self {
            inner: Mutex::new(RingInner {
                buf: Vec::with_capacity(batch.max(1)),
                last_ts: 0,
                watches: Vec::new(),
                seen: Vec::new(),
            }),
            tx,
            batch: batch.max(1),
            start: Instant::now(),
            undelivered: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
        }
    }

    /// Monotonic nanoseconds since the ring was created (the simulated `bpf_ktime_get_ns`).
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Note the timestamp of task `tid`'s next event (whichever path emits it).
    pub fn watch_next(&self, tid: u32, tag: usize) {
        self.with(|w| w.inner.watches.push(Watch { tid, tag }));
    }

    /// The timestamps the watches saw so far (taken).
    pub fn take_seen(&self) -> Vec<(Watch, u64)> {
        self.with(|w| std::mem::take(&mut w.inner.seen))
    }

    /// Hold the ring: everything done inside `f` is ordered with respect to every other
    /// task's events, like a probe's reads and its reservation with nothing in between.
    pub fn with<R>(&self, f: impl FnOnce(&mut RingWriter<'_>) -> R) -> R {
        // A panicking producer cannot leave the buffer half-written (push is one
        // Vec::push), so a poisoned lock is still usable.
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut w = RingWriter { ring: self, inner };
        f(&mut w)
    }

    /// Build and push one event while the ring is held.
    pub fn emit(&self, f: impl FnOnce() -> Event) -> u64 {
        self.with(|w| {
            let ev = f();
            w.push(ev)
        })
    }

    /// Hand over whatever is staged (periodic flush and shutdown).
    pub fn flush(&self) {
        self.with(|w| {
            if !w.inner.buf.is_empty() {
                let part = std::mem::take(&mut w.inner.buf);
                self.send(part);
            }
        });
    }

    /// Send a counter snapshot after the events staged so far.
    pub fn send_counters(&self, snap: CounterSnapshot) {
        self.with(|w| {
            if !w.inner.buf.is_empty() {
                let part = std::mem::take(&mut w.inner.buf);
                self.send(part);
            }
            if self.tx.blocking_send(SourceItem::Counters(snap)).is_err() {
                // The consumer is gone; the final totals are taken elsewhere.
            }
        });
    }

    fn send(&self, events: Vec<Event>) {
        let n = events.len() as u64;
        match self.tx.blocking_send(SourceItem::Events(events)) {
            Ok(()) => {
                self.delivered.fetch_add(n, Ordering::Relaxed);
            }
            Err(_) => {
                self.undelivered.fetch_add(n, Ordering::Relaxed);
            }
        }
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }

    /// Events that could not be handed over because the consumer had stopped.
    pub fn undelivered(&self) -> u64 {
        self.undelivered.load(Ordering::Relaxed)
    }
}

/// Per-task counters, the simulated `PerCpuArray<u64>` (one slot per task instead of per
/// CPU: each is written by one thread only, so increments need no read-modify-write race).
#[repr(align(128))]
pub struct TaskCounters {
    slots: [AtomicU64; COUNTER_SLOTS as usize],
}

impl Default for TaskCounters {
    fn default() -> Self {
        Self {
            slots: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl TaskCounters {
    pub fn inc(&self, c: vmatrace_common::Counter) {
        if let Some(s) = self.slots.get(c as usize) {
            s.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sum over all tasks, as userspace sums the per-CPU values.
    pub fn snapshot(all: &[TaskCounters]) -> CounterSnapshot {
        let mut values = vec![0u64; COUNTER_SLOTS as usize];
        for t in all {
            for (v, s) in values.iter_mut().zip(&t.slots) {
                *v += s.load(Ordering::Relaxed);
            }
        }
        CounterSnapshot {
            values,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmatrace_common::EventKind;

    #[test]
    fn batches_keep_order_and_timestamps_increase() {
        let (tx, mut rx) = mpsc::channel(64);
        let ring = Ring::new(tx, 3);
        for i in 0..7u64 {
            ring.emit(|| {
                let mut e = Event::ZERO;
                e.kind = EventKind::VmaAlloc as u16;
                e.arg = i;
                e
            });
        }
        ring.flush();
        drop(ring);
        let mut seen = Vec::new();
        while let Ok(item) = rx.try_recv() {
            match item {
                SourceItem::Events(evs) => {
                    assert!(evs.len() <= 3);
                    seen.extend(evs);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(
            seen.iter().map(|e| e.arg).collect::<Vec<_>>(),
            (0..7).collect::<Vec<_>>()
        );
        assert!(seen.windows(2).all(|w| w[0].ts_ns < w[1].ts_ns));
    }

    #[test]
    fn closed_consumer_is_counted_not_silent() {
        let (tx, rx) = mpsc::channel(1);
        drop(rx);
        let ring = Ring::new(tx, 2);
        for _ in 0..5 {
            ring.emit(|| Event::ZERO);
        }
        ring.flush();
        assert_eq!(ring.undelivered(), 5);
        assert_eq!(ring.delivered(), 0);
    }
}
