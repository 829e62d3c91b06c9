//! Anomalies grouped by kind and VMA, for the Anomalies screen.
//!
//! A misbehaving VMA raises the same anomaly thousands of times; one row per (kind, VMA)
//! with a count, first and last time shows what is wrong and where, and the newest
//! occurrence of each group keeps its evidence. Counted over every anomaly since the
//! session started (not only the kept list); the table is bounded, the groups least
//! recently seen go first (counted).

use std::collections::HashMap;

use super::state::AnomalyEntry;
use crate::validate::{Anomaly, AnomalyKind};

/// Groups kept; beyond this the least recently seen is dropped.
pub const MAX_GROUPS: usize = 512;

/// (kind, mm, vma): kernel addresses, never shown, only used to tell VMAs apart.
type Key = (AnomalyKind, u64, u64);

#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyGroup {
    /// Occurrences since the session started.
    pub count: u64,
    /// Occurrences since the last reset (`r`): what the header counts.
    pub since_reset: u64,
    pub first_ts_ns: u64,
    /// The newest occurrence (its task, VMA range, evidence).
    pub latest: AnomalyEntry,
}

#[derive(Clone, Debug, Default)]
pub struct AnomalyGroups {
    groups: HashMap<Key, AnomalyGroup>,
    dropped: u64,
}

fn key(a: &Anomaly) -> Key {
    (a.kind, a.event.mm, a.event.vma)
}

impl AnomalyGroups {
    pub fn add(&mut self, e: &AnomalyEntry) {
        let k = key(&e.anomaly);
        if let Some(g) = self.groups.get_mut(&k) {
            g.count += 1;
            g.since_reset += 1;
            g.latest.clone_from(e);
            return;
        }
        if self.groups.len() >= MAX_GROUPS
            && let Some(oldest) = self
                .groups
                .iter()
                .min_by_key(|(_, g)| g.latest.seq)
                .map(|(k, _)| *k)
        {
            self.groups.remove(&oldest);
            self.dropped += 1;
        }
        self.groups.insert(
            k,
            AnomalyGroup {
                count: 1,
                since_reset: 1,
                first_ts_ns: e.anomaly.event.ts_ns,
                latest: e.clone(),
            },
        );
    }

    /// `r`: counts start again; the groups (evidence) stay.
    pub fn reset(&mut self) {
        for g in self.groups.values_mut() {
            g.since_reset = 0;
        }
    }

    /// Groups dropped at the cap.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The groups matching `keep`, the most recently seen last.
    pub fn in_order(&self, keep: impl Fn(&Anomaly) -> bool) -> Vec<&AnomalyGroup> {
        let mut v: Vec<&AnomalyGroup> = self
            .groups
            .values()
            .filter(|g| keep(&g.latest.anomaly))
            .collect();
        v.sort_unstable_by_key(|g| g.latest.seq);
        v
    }
}
