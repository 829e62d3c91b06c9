//! A sink whose state stays readable after the pipeline has taken it: the pipeline owns
//! a `SharedSink`, the caller keeps a clone of the `Arc` (e.g. to read the statistics for
//! the exit summary). One lock per call, i.e. per batch, not per event.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmatrace_common::Event;

use super::{CounterSnapshot, Sink, Totals};
use crate::validate::{Anomaly, Validator};

pub struct SharedSink<S>(pub Arc<Mutex<S>>);

impl<S> SharedSink<S> {
    pub fn new(inner: S) -> (Self, Arc<Mutex<S>>) {
        let a = Arc::new(Mutex::new(inner));
        (Self(Arc::clone(&a)), a)
    }

    fn get(&self) -> MutexGuard<'_, S> {
        // The inner state is plain data: still usable after a panic elsewhere.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<S: Sink> Sink for SharedSink<S> {
    fn events(&mut self, events: &[Event]) {
        self.get().events(events);
    }
    fn anomaly(&mut self, a: &Anomaly) {
        self.get().anomaly(a);
    }
    fn counters(&mut self, c: &CounterSnapshot, totals: &Totals) {
        self.get().counters(c, totals);
    }
    fn undecodable(&mut self, n: u64) {
        self.get().undecodable(n);
    }
    fn stack(&mut self, s: &super::KernelStack) {
        self.get().stack(s);
    }
    fn flush(&mut self, validator: &Validator, totals: &Totals) {
        self.get().flush(validator, totals);
    }
    fn finish(&mut self, validator: &Validator, totals: &Totals) {
        self.get().finish(validator, totals);
    }
}
