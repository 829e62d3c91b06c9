//! Run totals: what the exit summary reports. Cheap per event (array increments).
//!
//! Every count saturates instead of wrapping: some are fed straight from a trace (an
//! `Undecodable` record carries any u64), and a wrapped loss count would read "nothing
//! lost". A count at `u64::MAX` is shown as saturated ([`saturated`]).

use std::collections::BTreeMap;

use vmatrace_common::{Counter, Event, EventKind};

use super::source::CounterSnapshot;
use crate::{
    trace::SequenceLosses,
    validate::{Anomaly, AnomalyKind},
};

/// Counters that mean "something was lost" (the validator resynchronises when they rise).
pub const LOSS_COUNTERS: &[Counter] = &[
    Counter::RingbufReserveFailed,
    Counter::UnmatchedReturn,
    Counter::InflightMapFull,
    Counter::ProbeReadFailed,
    Counter::MissedReturn,
    Counter::EntryRunsSkipped,
    Counter::ReturnRunsSkipped,
    Counter::SingleRunsSkipped,
];

#[derive(Clone, Debug, Default)]
pub struct Totals {
    /// Events by `EventKind as usize` (index 0 unused).
    pub events: [u64; 16],
    /// Records with an unknown kind or short length.
    pub undecodable: u64,
    /// Replay only: trace records missing, duplicated or reordered (latest snapshot).
    pub sequence: SequenceLosses,
    /// Latest kernel counter snapshot.
    pub counters: CounterSnapshot,
    pub anomalies: BTreeMap<AnomalyKind, u64>,
    /// Events by kind and attach point: `[kind][probe]` (kind/probe values ≥ 16 are
    /// counted in row/column 0). Tells e.g. fast from slow detaches.
    pub kind_probe: [[u64; 16]; 16],
}

impl Totals {
    #[inline]
    pub fn count_event(&mut self, ev: &Event) {
        match self.events.get_mut(ev.kind as usize) {
            Some(slot) if ev.kind().is_some() => bump(slot, 1),
            _ => bump(&mut self.undecodable, 1),
        }
        let (k, p) = (usize::from(ev.kind), usize::from(ev.probe));
        bump(
            &mut self.kind_probe[if k < 16 { k } else { 0 }][if p < 16 { p } else { 0 }],
            1,
        );
    }

    pub fn count_anomaly(&mut self, a: &Anomaly) {
        bump(self.anomalies.entry(a.kind).or_default(), 1);
    }

    pub fn events_of(&self, k: EventKind) -> u64 {
        self.events.get(k as usize).copied().unwrap_or(0)
    }

    pub fn events_of_probe(&self, k: EventKind, p: vmatrace_common::event::ProbeId) -> u64 {
        self.kind_probe
            .get(k as usize)
            .and_then(|row| row.get(p as usize))
            .copied()
            .unwrap_or(0)
    }

    pub fn total_events(&self) -> u64 {
        sum(self.events.iter().copied())
    }

    pub fn anomalies_total(&self) -> u64 {
        sum(self.anomalies.values().copied())
    }

    /// Sum of the kernel-side loss counters in a snapshot.
    pub fn kernel_losses(c: &CounterSnapshot) -> u64 {
        // Saturating: a corrupt trace may carry any counter values.
        sum(LOSS_COUNTERS.iter().map(|k| c.get(*k)))
    }
}

/// Add to a count, stopping at `u64::MAX` instead of wrapping.
#[inline]
pub fn bump(slot: &mut u64, n: u64) {
    *slot = slot.saturating_add(n);
}

/// Saturating sum.
pub fn sum(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0u64, u64::saturating_add)
}

/// A count reached `u64::MAX`: the true value may be larger (the summary says so).
pub const fn saturated(n: u64) -> bool {
    n == u64::MAX
}
