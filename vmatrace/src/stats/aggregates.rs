//! Per-process and per-VMA aggregates, in tables of bounded size.
//!
//! A long incident on a busy host sees many short-lived processes and far more VMAs than
//! anyone will read; the tables keep the entries that matter (most wait, then most
//! activity) and count what they dropped, so a ranking is never silently partial.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash};

use serde::Serialize;

use crate::validate::hash::AddrHasher;

/// What is counted for one process or one VMA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Aggregate {
    /// The process (for a VMA: the last one that touched it).
    pub tgid: u32,
    /// Per-process rows: the thread-group leader's comm once one of its events was
    /// seen (until then the first thread's); threads come and go and rename themselves,
    /// the process label should not. Per-VMA rows: the last task's.
    pub comm: [u8; 16],
    /// Last known VMA range (per-VMA rows only; user addresses, not kernel pointers).
    pub vm_start: u64,
    pub vm_end: u64,
    /// Readers-exclusion attempts that waited or excluded (not "found detached").
    pub exclusions: u64,
    pub total_wait_ns: u64,
    pub max_wait_ns: u64,
    /// Killable waits interrupted by a fatal signal (-EINTR).
    pub interrupted: u64,
    /// Sampled `lock_vma_under_rcu` calls that returned NULL.
    pub reader_failures: u64,
    /// Per-process rows: readers that fell back to `mmap_lock` because of a writer
    /// (every one, counted in the kernel: `READER_FALLBACKS`), since start or reset.
    pub writer_fallbacks: u64,
    /// Detaches that found readers still holding the VMA (the slow path).
    pub slow_detaches: u64,
}

impl Aggregate {
    /// Which rows survive an eviction: the ones an operator would look at first.
    fn keep_score(&self) -> (u64, u64) {
        (
            self.total_wait_ns,
            self.exclusions
                + self.reader_failures
                + self.writer_fallbacks
                + self.slow_detaches
                + self.interrupted,
        )
    }

    pub fn comm_str(&self) -> String {
        comm_to_string(&self.comm)
    }
}

/// A kernel `comm` (NUL-padded, not necessarily UTF-8) as text.
pub fn comm_to_string(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|b| *b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

/// A map capped at `cap` rows. When a new key arrives at the cap, the lower-scoring half is
/// dropped in one pass (amortised O(1) per insert instead of a scan per insert) and
/// counted in `evicted`.
#[derive(Clone, Debug)]
pub struct BoundedTable<K> {
    /// Keyed by tgid or (mm, VMA): the validator's multiply-fold hasher, not SipHash,
    /// which cost more than the rest of the per-event accounting.
    rows: HashMap<K, Aggregate, BuildHasherDefault<AddrHasher>>,
    cap: usize,
    evicted: u64,
}

impl<K: Hash + Eq + Copy> BoundedTable<K> {
    pub fn new(cap: usize) -> Self {
        Self {
            rows: HashMap::default(),
            cap: cap.max(2),
            evicted: 0,
        }
    }

    /// The row for `key`, created (after an eviction pass if needed) when absent.
    #[inline]
    pub fn row(&mut self, key: K) -> &mut Aggregate {
        if self.rows.len() >= self.cap && !self.rows.contains_key(&key) {
            self.evict_half();
        }
        self.rows.entry(key).or_default()
    }

    fn evict_half(&mut self) {
        let keep = self.cap / 2;
        let before = self.rows.len();
        let mut scores: Vec<(u64, u64)> = self.rows.values().map(Aggregate::keep_score).collect();
        // `threshold` is the score of the `keep`-th best row: rows above it stay, rows at it
        // fill the remaining slots, rows below go.
        let cut = before.saturating_sub(keep);
        let (_, threshold, _) = scores.select_nth_unstable(cut.min(before - 1));
        let threshold = *threshold;
        let above = scores.iter().filter(|s| **s > threshold).count();
        let mut tie_slots = keep.saturating_sub(above);
        self.rows.retain(|_, a| {
            let s = a.keep_score();
            if s > threshold {
                true
            } else if s == threshold && tie_slots > 0 {
                tie_slots -= 1;
                true
            } else {
                false
            }
        });
        self.evicted += (before - self.rows.len()) as u64;
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn clear(&mut self) {
        self.rows.clear();
        self.evicted = 0;
    }

    pub fn get(&self, key: &K) -> Option<&Aggregate> {
        self.rows.get(key)
    }

    pub fn values(&self) -> impl Iterator<Item = &Aggregate> {
        self.rows.values()
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut Aggregate> {
        self.rows.values_mut()
    }
}

/// How a ranking is ordered (the Top screen's `s` key cycles through these).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    #[default]
    TotalWait,
    MaxWait,
    Exclusions,
    ReaderFailures,
    WriterFallbacks,
    SlowDetaches,
}

impl SortKey {
    pub const ALL: &'static [SortKey] = &[
        SortKey::TotalWait,
        SortKey::MaxWait,
        SortKey::Exclusions,
        SortKey::ReaderFailures,
        SortKey::WriterFallbacks,
        SortKey::SlowDetaches,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            SortKey::TotalWait => "total wait",
            SortKey::MaxWait => "max wait",
            SortKey::Exclusions => "exclusions",
            SortKey::ReaderFailures => "reader failures",
            SortKey::WriterFallbacks => "fallbacks to mmap_lock",
            SortKey::SlowDetaches => "slow detaches",
        }
    }

    pub fn next(self) -> Self {
        let i = SortKey::ALL.iter().position(|k| *k == self).unwrap_or(0);
        SortKey::ALL[(i + 1) % SortKey::ALL.len()]
    }

    fn value(self, a: &Aggregate) -> u64 {
        match self {
            SortKey::TotalWait => a.total_wait_ns,
            SortKey::MaxWait => a.max_wait_ns,
            SortKey::Exclusions => a.exclusions,
            SortKey::ReaderFailures => a.reader_failures,
            SortKey::WriterFallbacks => a.writer_fallbacks,
            SortKey::SlowDetaches => a.slow_detaches,
        }
    }
}

/// The `limit` highest rows by `key` whose comm or tgid contains `filter` (empty: all).
/// Ties are broken by tgid then range so the order is stable between frames.
pub fn ranking<'a>(
    rows: impl Iterator<Item = &'a Aggregate>,
    key: SortKey,
    filter: &str,
    limit: usize,
) -> Vec<Aggregate> {
    let mut out: Vec<Aggregate> = rows
        .filter(|a| matches_filter(a, filter))
        .copied()
        .collect();
    out.sort_unstable_by(|a, b| {
        key.value(b)
            .cmp(&key.value(a))
            .then(a.tgid.cmp(&b.tgid))
            .then(a.vm_start.cmp(&b.vm_start))
    });
    out.truncate(limit);
    out
}

/// Whether a row matches the Top screen's filter (empty: all).
pub fn matches_filter(a: &Aggregate, filter: &str) -> bool {
    filter.is_empty() || task_matches(a.tgid, &a.comm_str(), filter)
}

/// The dashboard's task filter: a number is a pid and matches exactly (`4200` is not
/// 14200), anything else is a substring of the comm.
pub fn task_matches(tgid: u32, comm: &str, filter: &str) -> bool {
    match filter.parse::<u32>() {
        Ok(pid) if filter.bytes().all(|b| b.is_ascii_digit()) => tgid == pid || comm == filter,
        _ => comm.contains(filter),
    }
}

/// Serialisable row (no kernel addresses).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AggregateRow {
    pub tgid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_start: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vm_end: Option<u64>,
    pub exclusions: u64,
    pub total_wait_ns: u64,
    pub max_wait_ns: u64,
    pub interrupted: u64,
    pub reader_failures: u64,
    /// Readers that fell back to `mmap_lock` because of a writer (per process).
    pub writer_fallbacks: u64,
    pub slow_detaches: u64,
}

impl AggregateRow {
    pub fn from_aggregate(a: &Aggregate, with_range: bool) -> Self {
        Self {
            tgid: a.tgid,
            comm: a.comm_str(),
            vm_start: with_range.then_some(a.vm_start),
            vm_end: with_range.then_some(a.vm_end),
            exclusions: a.exclusions,
            total_wait_ns: a.total_wait_ns,
            max_wait_ns: a.max_wait_ns,
            interrupted: a.interrupted,
            reader_failures: a.reader_failures,
            writer_fallbacks: a.writer_fallbacks,
            slow_detaches: a.slow_detaches,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_bounded_and_counts_evictions() {
        let mut t = BoundedTable::<u32>::new(8);
        for k in 0..100u32 {
            let r = t.row(k);
            r.tgid = k;
            r.total_wait_ns = u64::from(k);
        }
        assert!(t.len() <= 8, "len {}", t.len());
        assert_eq!(t.evicted() + t.len() as u64, 100);
        // The heaviest waiter must have survived.
        assert!(t.values().any(|a| a.tgid == 99));
    }

    #[test]
    fn eviction_keeps_heavy_rows_over_new_light_ones() {
        let mut t = BoundedTable::<u32>::new(4);
        t.row(1).total_wait_ns = 1_000_000;
        for k in 2..50u32 {
            t.row(k).exclusions = 1;
        }
        assert!(t.values().any(|a| a.total_wait_ns == 1_000_000));
    }

    #[test]
    fn ranking_sorts_filters_and_limits() {
        let mk = |tgid, comm: &str, wait, fails| {
            let mut a = Aggregate {
                tgid,
                total_wait_ns: wait,
                reader_failures: fails,
                ..Default::default()
            };
            a.comm[..comm.len()].copy_from_slice(comm.as_bytes());
            a
        };
        let rows = [
            mk(10, "postgres", 500, 1),
            mk(11, "java", 900, 0),
            mk(12, "postgres", 100, 7),
        ];
        let r = ranking(rows.iter(), SortKey::TotalWait, "", 10);
        assert_eq!(r.iter().map(|a| a.tgid).collect::<Vec<_>>(), [11, 10, 12]);
        let r = ranking(rows.iter(), SortKey::ReaderFailures, "postgres", 1);
        assert_eq!(r.iter().map(|a| a.tgid).collect::<Vec<_>>(), [12]);
        let r = ranking(rows.iter(), SortKey::TotalWait, "11", 10);
        assert_eq!(r.iter().map(|a| a.tgid).collect::<Vec<_>>(), [11]);
        // A pid matches exactly: 1 is not 10, 11 or 12.
        assert!(ranking(rows.iter(), SortKey::TotalWait, "1", 10).is_empty());
        assert!(task_matches(4200, "x", "4200"));
        assert!(!task_matches(14200, "x", "4200"));
        assert!(task_matches(14200, "postgres", "gres"));
    }

    #[test]
    fn comm_is_nul_trimmed_and_lossy() {
        let mut c = [0u8; 16];
        c[..3].copy_from_slice(b"a\xffb");
        assert_eq!(comm_to_string(&c), "a\u{fffd}b");
        assert_eq!(comm_to_string(&[b'x'; 16]), "x".repeat(16));
    }
}
