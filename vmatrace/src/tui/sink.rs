//! The pipeline side of the dashboard: a [`Sink`] that updates the shared [`AppState`].
//!
//! Each call takes the lock once per batch (not per event), so the pipeline task and the
//! drawing loop contend at most a few hundred times a second.

use std::sync::{Arc, Mutex, MutexGuard};

use vmatrace_common::Event;

use super::state::AppState;
use crate::pipeline::{CounterSnapshot, Sink, Totals};
use crate::stats::Stats;
use crate::validate::{Anomaly, Validator};

pub struct DashboardSink {
    shared: Arc<Mutex<AppState>>,
    /// The session's statistics, copied at each flush while the view has none of its own.
    session_stats: Option<Arc<Mutex<Stats>>>,
}

impl DashboardSink {
    pub fn new(shared: Arc<Mutex<AppState>>) -> Self {
        Self {
            shared,
            session_stats: None,
        }
    }

    /// A sink that shows `stats` (fed by the session's own statistics sink, before this
    /// one) instead of computing them again: the dashboard's per-event cost was the
    /// statistics a second time (a quarter of the pipeline's throughput). After a reset
    /// (`r`) the view counts on its own from zero, and pays that cost.
    pub fn sharing(shared: Arc<Mutex<AppState>>, stats: Arc<Mutex<Stats>>) -> Self {
        lock_or_recover(&shared).live.stats_own = false;
        Self {
            shared,
            session_stats: Some(stats),
        }
    }

    fn state(&self) -> MutexGuard<'_, AppState> {
        lock_or_recover(&self.shared)
    }
}

/// A panic while drawing must not take the pipeline down with it: the state is plain
/// counters, still usable after a poisoned lock.
fn lock_or_recover<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sink for DashboardSink {
    fn events(&mut self, events: &[Event]) {
        let mut st = self.state();
        let live = &mut st.live;
        if live.first_ts_ns.is_none() {
            live.first_ts_ns = events.iter().map(|e| e.ts_ns).find(|t| *t != 0);
        }
        let own = live.stats_own;
        for ev in events {
            if own {
                live.stats.observe(ev);
            }
            // The waits the statistics rank, per process and second.
            if ev.kind == live.stats.wait_source().kind() as u16
                && let Some(wait) = ev.waited_ns()
            {
                live.timelines.record(ev.tgid(), ev.ts_ns, wait);
            }
        }
        if let Some(t) = events.iter().map(|e| e.ts_ns).max() {
            live.newest_ts_ns = live.newest_ts_ns.max(t);
        }
    }

    fn anomaly(&mut self, a: &Anomaly) {
        self.state().live.push_anomaly(a);
    }

    fn stack(&mut self, s: &crate::pipeline::KernelStack) {
        // Shared statistics get it through their own sink (`stats_own` false).
        let mut st = self.state();
        if st.live.stats_own {
            st.live.stats.add_stack(s);
        }
    }

    fn counters(&mut self, c: &CounterSnapshot, _totals: &Totals) {
        let mut st = self.state();
        if st.live.stats_own {
            st.live.set_counters(c);
        } else {
            st.live.totals.counters = c.clone();
        }
    }

    fn finish(&mut self, validator: &Validator, totals: &Totals) {
        self.flush(validator, totals);
        self.state().live.source_ended = true;
    }

    fn flush(&mut self, validator: &Validator, totals: &Totals) {
        let mut st = self.state();
        let live = &mut st.live;
        if !live.stats_own
            && let Some(stats) = &self.session_stats
        {
            live.stats.clone_from(&lock_or_recover(stats));
        }
        live.totals.events = totals.events;
        live.totals.kind_probe = totals.kind_probe;
        live.totals.undecodable = totals.undecodable;
        live.totals.anomalies.clone_from(&totals.anomalies);
        if live.stats_own {
            live.stats.set_undecodable(totals.undecodable);
            live.stats.tick(std::time::Instant::now());
        }
        live.phases = Some(validator.phase_counts());
        live.tracked_vmas = validator.tracked_vmas();
        live.validator_evicted = validator.evicted();
        live.validator_resyncs = validator.losses_noted();
    }
}
