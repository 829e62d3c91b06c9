//! The daemon pipeline: source → decode → validator → statistics → sinks.
//!
//! Sources (live ring buffer, trace file, follow stream, simulator) all produce
//! [`SourceItem`]s on a bounded channel. One task owns the [`Pipeline`]: it validates each
//! event against the refcount model, keeps [`Totals`], and hands batches and anomalies to
//! the sinks (dashboard state, anomaly log, trace recorder). Keeping all of that on one
//! task avoids locks on the per-event path.

pub mod shared;
pub mod source;
pub mod totals;

use std::time::Duration;

use tokio::sync::mpsc;
use vmatrace_common::{Event, model::Generation};

pub use shared::SharedSink;
pub use source::{
    CounterSnapshot, KernelStack, ProcessFallbacks, SourceItem, push_unfolded, unfolded,
};
pub use totals::Totals;

use crate::{
    trace::SequenceLosses,
    validate::{Anomaly, Validator},
};

/// A consumer of the validated stream. Implementations must not block for long: they run
/// on the pipeline task.
pub trait Sink: Send {
    fn events(&mut self, _events: &[Event]) {}
    fn anomaly(&mut self, _a: &Anomaly) {}
    fn counters(&mut self, _c: &CounterSnapshot, _totals: &Totals) {}
    /// `n` ring-buffer records could not be decoded (already counted in [`Totals`]).
    fn undecodable(&mut self, _n: u64) {}
    /// A kernel stack that later `SlowWait` events name by id.
    fn stack(&mut self, _s: &KernelStack) {}
    /// A replayed trace lost records to the order check: the new cumulative counts, and
    /// the previous ones (`Totals::sequence` before this snapshot).
    fn sequence(&mut self, _now: &SequenceLosses, _before: &SequenceLosses) {}
    /// Called after each drained burst and at shutdown.
    fn flush(&mut self, _validator: &Validator, _totals: &Totals) {}
    /// Called once when the source has ended, after the last `flush`: close files,
    /// write trailers. Nothing is delivered afterwards.
    fn finish(&mut self, _validator: &Validator, _totals: &Totals) {}
}

pub struct Pipeline {
    pub validator: Validator,
    pub totals: Totals,
    sinks: Vec<Box<dyn Sink>>,
    scratch: Vec<Anomaly>,
    last_losses: u64,
    finished: bool,
}

impl Pipeline {
    pub fn new(generation: Generation) -> Self {
        Self {
            validator: Validator::new(generation),
            totals: Totals::default(),
            sinks: Vec::new(),
            scratch: Vec::new(),
            last_losses: 0,
            finished: false,
        }
    }

    pub fn add_sink(&mut self, s: Box<dyn Sink>) {
        self.sinks.push(s);
    }

    /// Process one item. Never panics on any input.
    pub fn handle(&mut self, item: SourceItem) {
        match item {
            SourceItem::Events(evs) => self.handle_events(&evs),
            SourceItem::Counters(c) => {
                // A loss means the per-VMA histories have gaps: the validator must not
                // judge the next samples against stale state.
                let losses = Totals::kernel_losses(&c);
                if losses > self.last_losses {
                    self.validator.note_loss();
                } else {
                    // Judgments that waited for the counters to rule out a lost event.
                    self.validator.no_new_losses(&mut self.scratch);
                    self.deliver_anomalies();
                }
                self.last_losses = losses;
                for s in &mut self.sinks {
                    s.counters(&c, &self.totals);
                }
                self.totals.counters = c;
            }
            SourceItem::Sequence(s) => {
                // Records of the trace are gone (or dropped as out of order): the per-VMA
                // histories have gaps, as after a kernel-side loss.
                if s.total() > self.totals.sequence.total() {
                    self.validator.note_loss();
                }
                for sink in &mut self.sinks {
                    sink.sequence(&s, &self.totals.sequence);
                }
                self.totals.sequence = s;
            }
            SourceItem::Stack(st) => {
                for s in &mut self.sinks {
                    s.stack(&st);
                }
            }
            SourceItem::Undecodable(n) => {
                // Saturating: the count comes from the trace, which may carry any value.
                self.totals.undecodable = self.totals.undecodable.saturating_add(n);
                self.validator.note_loss();
                for s in &mut self.sinks {
                    s.undecodable(n);
                }
            }
        }
    }

    /// Events as the sources decode them (folded returns already unfolded:
    /// [`source::push_unfolded`]).
    pub fn handle_events(&mut self, evs: &[Event]) {
        self.validate_and_deliver(evs);
    }

    fn validate_and_deliver(&mut self, evs: &[Event]) {
        for ev in evs {
            self.totals.count_event(ev);
        }
        self.validator.observe_batch(evs, &mut self.scratch);
        for s in &mut self.sinks {
            s.events(evs);
        }
        self.deliver_anomalies();
    }

    fn deliver_anomalies(&mut self) {
        for a in self.scratch.drain(..) {
            self.totals.count_anomaly(&a);
            for s in &mut self.sinks {
                s.anomaly(&a);
            }
        }
    }

    pub fn flush(&mut self) {
        for s in &mut self.sinks {
            s.flush(&self.validator, &self.totals);
        }
    }

    /// Final flush, then [`Sink::finish`] on every sink (once; later calls do nothing).
    pub fn finish(&mut self) {
        if self.finished {
            return;
        }
        self.finished = true;
        self.flush();
        for s in &mut self.sinks {
            s.finish(&self.validator, &self.totals);
        }
    }

    /// Drive the pipeline until the channel closes. Sources close it when they end: at
    /// EOF, or on shutdown after detaching and draining the ring buffer, so nothing that
    /// was captured is left unprocessed. Flushes the sinks every `flush_every`; at the end
    /// [`Pipeline::finish`]es them.
    pub async fn drive(self, rx: mpsc::Receiver<SourceItem>, flush_every: Duration) -> Self {
        self.drive_until(rx, flush_every, std::future::pending())
            .await
    }

    /// Like [`Pipeline::drive`], but also ends when `stop` resolves: the channel is closed
    /// to senders, what is already queued is processed, and the sinks are finished. For
    /// sources that cannot be interrupted themselves (a blocking read of stdin).
    pub async fn drive_until(
        mut self,
        mut rx: mpsc::Receiver<SourceItem>,
        flush_every: Duration,
        stop: impl std::future::Future<Output = ()>,
    ) -> Self {
        let mut tick = tokio::time::interval(flush_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => {
                        self.handle(item);
                        // Drain what is already queued before yielding: batches, not wakeups.
                        while let Ok(item) = rx.try_recv() {
                            self.handle(item);
                        }
                    }
                    None => break,
                },
                _ = tick.tick() => self.flush(),
                _ = &mut stop => {
                    rx.close();
                    while let Some(item) = rx.recv().await {
                        self.handle(item);
                    }
                    break;
                }
            }
        }
        self.finish();
        self
    }
}
