//! Run totals: what the exit summary reports. Cheap per event (array increments).

use std::collections::BTreeMap;

use vmatrace_common::{Counter, Event, EventKind};

use super::source::CounterSnapshot;
use crate::validate::{Anomaly, AnomalyKind};

/// Counters that mean "something was lost" (the validator resynchronises when they rise).
pub const LOSS_COUNTERS: &[Counter] = &[
    Counter::RingbufReserveFailed,
    Counter::UnmatchedReturn,
    Counter::InflightMapFull,
    Counter::ProbeReadFailed,
];

#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Events by `EventKind as usize` (index 0 unused).
    pub events: [u64; 16],
    /// Records with an unknown kind or short length.
    pub undecodable: u64,
    /// Latest kernel counter snapshot.
    pub counters: CounterSnapshot,
    pub anomalies: BTreeMap<AnomalyKind, u64>,
}

impl Totals {
    #[inline]
    pub fn count_event(&mut self, ev: &Event) {
        match self.events.get_mut(ev.kind as usize) {
            Some(slot) if ev.kind().is_some() => *slot += 1,
            _ => self.undecodable += 1,
        }
    }

    pub fn count_anomaly(&mut self, a: &Anomaly) {
        *self.anomalies.entry(a.kind).or_default() += 1;
    }

    pub fn events_of(&self, k: EventKind) -> u64 {
        self.events.get(k as usize).copied().unwrap_or(0)
    }

    pub fn total_events(&self) -> u64 {
        self.events.iter().sum()
    }

    pub fn anomalies_total(&self) -> u64 {
        self.anomalies.values().sum()
    }

    /// Sum of the kernel-side loss counters in a snapshot.
    pub fn kernel_losses(c: &CounterSnapshot) -> u64 {
        LOSS_COUNTERS.iter().map(|k| c.get(*k)).sum()
    }
}
