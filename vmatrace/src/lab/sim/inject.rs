//! Fault injection: deliberate protocol violations the validator must catch.
//!
//! Each fault is performed on the simulator's real atomics at a point where it matters,
//! observed by the event that would show it on a real kernel, and then repaired so the
//! simulation can go on (a sleeping writer would otherwise wait forever). A fault that
//! fired is recorded as an [`InjectionSite`] so tests can check that every single one was
//! reported, with the right anomaly kind.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// The faults `vmatrace simulate --inject KIND` can inject. Keys are stable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Injection {
    /// The writer returns from `__vma_start_write` without ending the exclusion: the
    /// flag stays in `vm_refcnt`.
    EndExcludeSkipped,
    /// A reader increments `vm_refcnt` although the exclusion flag is set, and returns
    /// the VMA as read-locked.
    ReaderIgnoresFlag,
    /// `vma_mark_detached` returns without dropping the attach reference.
    DetachLeavesRefcount,
    /// The last reader's `vma_refcount_put` does not call `rcuwait_wake_up` although a
    /// writer waits for it.
    LostWakeup,
    /// A second task starts an exclusion on a VMA whose exclusion is in progress.
    DoubleExclusion,
    /// `__vma_start_write` succeeds without storing `vm_lock_seq`.
    SeqNotStored,
    /// `vm_area_free` on a VMA that still holds a reference.
    FreeWhileReferenced,
}

impl Injection {
    pub const ALL: &'static [Injection] = &[
        Injection::EndExcludeSkipped,
        Injection::ReaderIgnoresFlag,
        Injection::DetachLeavesRefcount,
        Injection::LostWakeup,
        Injection::DoubleExclusion,
        Injection::SeqNotStored,
        Injection::FreeWhileReferenced,
    ];

    /// The `--inject` argument.
    pub const fn key(self) -> &'static str {
        match self {
            Injection::EndExcludeSkipped => "end-exclude-skipped",
            Injection::ReaderIgnoresFlag => "reader-ignores-flag",
            Injection::DetachLeavesRefcount => "detach-leaves-refcount",
            Injection::LostWakeup => "lost-wakeup",
            Injection::DoubleExclusion => "double-exclusion",
            Injection::SeqNotStored => "seq-not-stored",
            Injection::FreeWhileReferenced => "free-while-referenced",
        }
    }

    /// Anomaly kinds (`AnomalyKind::key`) any of which counts as detecting this fault.
    pub const fn detected_by(self) -> &'static [&'static str] {
        match self {
            Injection::EndExcludeSkipped => &["exclusion_not_ended"],
            Injection::ReaderIgnoresFlag => &["reader_while_excluded", "reader_while_write_locked"],
            Injection::DetachLeavesRefcount => &["detach_not_zero"],
            Injection::LostWakeup => &["lost_wakeup"],
            Injection::DoubleExclusion => &["concurrent_exclusion", "refcount_out_of_range"],
            Injection::SeqNotStored => &["write_lock_not_taken"],
            Injection::FreeWhileReferenced => &["free_while_referenced"],
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for Injection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Injection::ALL
            .iter()
            .copied()
            .find(|i| i.key() == s)
            .ok_or_else(|| {
                let keys: Vec<&str> = Injection::ALL.iter().map(|i| i.key()).collect();
                format!("unknown fault `{s}`; expected one of: {}", keys.join(", "))
            })
    }
}

/// Which faults are armed and how often they fire at an eligible point.
#[derive(Clone, Debug, Default)]
pub struct InjectPlan {
    armed: [bool; Injection::ALL.len()],
    /// Probability that an eligible point fires (per task draw, deterministic by seed).
    pub rate: f64,
}

impl InjectPlan {
    pub fn new(kinds: &[Injection], rate: f64) -> Self {
        let mut armed = [false; Injection::ALL.len()];
        for k in kinds {
            armed[k.index()] = true;
        }
        Self { armed, rate }
    }

    pub fn is_armed(&self, k: Injection) -> bool {
        self.armed[k.index()]
    }

    pub fn any(&self) -> bool {
        self.armed.iter().any(|a| *a)
    }

    pub fn armed(&self) -> impl Iterator<Item = Injection> + '_ {
        Injection::ALL.iter().copied().filter(|k| self.is_armed(*k))
    }
}

/// One fault that fired: where the validator should report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct InjectionSite {
    pub kind: Injection,
    /// Timestamp of the event that shows the fault (the detection cannot come earlier).
    pub ts_ns: u64,
    /// The VMA object (its fake kernel address).
    pub vma: u64,
    /// The mm whose lock was involved.
    pub mm: u64,
    /// A lost wake-up the waiter recovered from (its timed re-check) before the faulty
    /// task's next event: the stream is then exactly a legal one (the excluder found its
    /// target and returned before the wake-up call, which is not streamed), so no monitor
    /// can see it. Counted apart, not as detected or missed. Decided when the run ends,
    /// from the two timestamps below.
    pub hidden: bool,
    /// Lost wake-up: timestamp of the faulty task's next event (0: it had none).
    pub owed_until: u64,
    /// Lost wake-up: timestamp of the cheated waiter's next event after its wait ended
    /// while the wake-up was still held back (0: it was re-issued first).
    pub answered_at: u64,
}

impl InjectionSite {
    /// Whether the stream shows this fault: a held-back wake-up the waiter did without,
    /// returning before the faulty task went on, leaves exactly a legal stream.
    pub fn settle_visibility(&mut self) {
        self.hidden = self.kind == Injection::LostWakeup
            && self.answered_at != 0
            && (self.owed_until == 0 || self.answered_at < self.owed_until);
    }
}

/// A race the kernel allows that a validator could mistake for a fault: a visible put
/// left the count at F or F+1 before the excluder registered in `w->task`, so nobody was
/// woken (and the eBPF side, which only reports wake-ups of a registered task, emits no
/// `WriterWake`); the excluder finds its target on its first check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BenignRace {
    /// Timestamp of the `ReaderRelease`.
    pub ts_ns: u64,
    pub vma: u64,
    pub mm: u64,
}

/// How many `lost_wakeup` reports are about one of these benign puts (the validator
/// reports the put event itself).
pub fn explained_by_benign(benign: &[BenignRace], anomalies: &[ReportedAnomaly]) -> usize {
    let puts: std::collections::HashSet<(u64, u64)> =
        benign.iter().map(|b| (b.ts_ns, b.vma)).collect();
    anomalies
        .iter()
        .filter(|a| a.key == "lost_wakeup" && puts.contains(&(a.ts_ns, a.vma)))
        .count()
}

/// What the validator reported, reduced to what matching needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportedAnomaly {
    pub key: &'static str,
    pub ts_ns: u64,
    pub vma: u64,
    pub mm: u64,
}

/// Match every injection site to a distinct anomaly of an accepted kind, on the same VMA
/// (or, when the anomaly names no VMA, the same mm), reported at or after the site.
/// Returns the sites nobody reported.
///
/// The anomalies are indexed by (VMA, kind) and, for those naming no VMA, (mm, kind), in
/// time order, so a site's candidates are a binary search away: scanning every anomaly
/// for every site took 17 s after a dashboard quit (`simulate --inject-rate 0.05`:
/// ~280 000 anomalies).
pub fn unmatched_sites(
    sites: &[InjectionSite],
    anomalies: &[ReportedAnomaly],
) -> Vec<InjectionSite> {
    use std::collections::HashMap;
    let mut by_vma: HashMap<(u64, &str), Vec<usize>> = HashMap::new();
    let mut by_mm: HashMap<(u64, &str), Vec<usize>> = HashMap::new();
    for i in in_time_order(anomalies) {
        let a = &anomalies[i];
        by_vma.entry((a.vma, a.key)).or_default().push(i);
        if a.vma == 0 {
            by_mm.entry((a.mm, a.key)).or_default().push(i);
        }
    }
    match_greedily(sites, anomalies, |s, used| {
        // The oldest free candidate of each list; the oldest of those (ties: the first
        // reported), as one scan of all anomalies in time order would find.
        let mut hit: Option<usize> = None;
        for key in s.kind.detected_by() {
            for list in [by_vma.get(&(s.vma, *key)), by_mm.get(&(s.mm, *key))]
                .into_iter()
                .flatten()
            {
                let from = list.partition_point(|&i| anomalies[i].ts_ns < s.ts_ns);
                if let Some(i) = list[from..].iter().copied().find(|&i| !used[i])
                    && hit.is_none_or(|h| (anomalies[i].ts_ns, i) < (anomalies[h].ts_ns, h))
                {
                    hit = Some(i);
                }
            }
        }
        hit
    })
}

/// Anomaly indexes by report time (stable: ties keep the report order).
fn in_time_order(anomalies: &[ReportedAnomaly]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..anomalies.len()).collect();
    order.sort_by_key(|i| anomalies[*i].ts_ns);
    order
}

/// Greedy in time: each site, oldest first, takes the anomaly `find` picks among the free
/// ones (`used` marks those taken); the sites left without one are returned.
fn match_greedily(
    sites: &[InjectionSite],
    anomalies: &[ReportedAnomaly],
    mut find: impl FnMut(&InjectionSite, &[bool]) -> Option<usize>,
) -> Vec<InjectionSite> {
    let mut sites: Vec<InjectionSite> = sites.to_vec();
    sites.sort_by_key(|s| s.ts_ns);
    let mut used = vec![false; anomalies.len()];
    let mut missed = Vec::new();
    for s in sites {
        match find(&s, &used) {
            Some(i) => used[i] = true,
            None => missed.push(s),
        }
    }
    missed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_roundtrip() {
        for k in Injection::ALL {
            assert_eq!(k.key().parse::<Injection>(), Ok(*k));
            assert!(!k.detected_by().is_empty());
        }
        assert!("no-such-fault".parse::<Injection>().is_err());
    }

    fn site(ts: u64, vma: u64) -> InjectionSite {
        InjectionSite {
            hidden: false,
            owed_until: 0,
            answered_at: 0,
            kind: Injection::DetachLeavesRefcount,
            ts_ns: ts,
            vma,
            mm: 1,
        }
    }

    fn found(key: &'static str, ts: u64, vma: u64) -> ReportedAnomaly {
        ReportedAnomaly {
            key,
            ts_ns: ts,
            vma,
            mm: 1,
        }
    }

    /// The definition: every site, oldest first, scans all anomalies in time order.
    fn unmatched_by_scanning(
        sites: &[InjectionSite],
        anomalies: &[ReportedAnomaly],
    ) -> Vec<InjectionSite> {
        let order = in_time_order(anomalies);
        match_greedily(sites, anomalies, |s, used| {
            order.iter().copied().find(|&i| {
                let a = &anomalies[i];
                !used[i]
                    && a.ts_ns >= s.ts_ns
                    && s.kind.detected_by().contains(&a.key)
                    && (a.vma == s.vma || (a.vma == 0 && a.mm == s.mm))
            })
        })
    }

    #[test]
    fn the_index_matches_as_the_scan_does() {
        let keys = [
            "detach_not_zero",
            "free_while_referenced",
            "exclusion_not_ended",
            "reader_while_excluded",
        ];
        let kinds = [
            Injection::DetachLeavesRefcount,
            Injection::EndExcludeSkipped,
            Injection::ReaderIgnoresFlag,
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for _ in 0..200 {
            // Small ranges of time, VMA (0: none) and mm, so that sites and anomalies meet.
            let mut draw = |kinds: usize, until: u64| {
                let k = next(kinds as u64) as usize;
                (k, next(until), next(3), 1 + next(2))
            };
            let sites: Vec<InjectionSite> = (0..12)
                .map(|_| draw(kinds.len(), 20))
                .map(|(k, ts_ns, vma, mm)| InjectionSite {
                    kind: kinds[k],
                    ts_ns,
                    vma,
                    mm,
                    ..site(0, 0)
                })
                .collect();
            let anomalies: Vec<ReportedAnomaly> = (0..16)
                .map(|_| draw(keys.len(), 24))
                .map(|(k, ts_ns, vma, mm)| ReportedAnomaly {
                    key: keys[k],
                    ts_ns,
                    vma,
                    mm,
                })
                .collect();
            assert_eq!(
                unmatched_sites(&sites, &anomalies),
                unmatched_by_scanning(&sites, &anomalies),
                "sites {sites:?}, anomalies {anomalies:?}"
            );
        }
    }

    #[test]
    fn matching_needs_kind_vma_order_and_one_anomaly_per_site() {
        let sites = [site(10, 0xa), site(20, 0xa)];
        // One anomaly cannot account for two faults.
        let one = [found("detach_not_zero", 25, 0xa)];
        assert_eq!(unmatched_sites(&sites, &one).len(), 1);
        // Earlier than the fault, wrong VMA, wrong kind: none counts.
        let wrong = [
            found("detach_not_zero", 5, 0xa),
            found("detach_not_zero", 30, 0xb),
            found("free_while_referenced", 30, 0xa),
        ];
        assert_eq!(unmatched_sites(&sites, &wrong).len(), 2);
        let both = [
            found("detach_not_zero", 11, 0xa),
            found("detach_not_zero", 21, 0xa),
        ];
        assert!(unmatched_sites(&sites, &both).is_empty());
        // An anomaly without a VMA (e.g. on a wake-up) matches by mm.
        let by_mm = [
            found("detach_not_zero", 11, 0),
            found("detach_not_zero", 21, 0),
        ];
        assert!(unmatched_sites(&sites, &by_mm).is_empty());
    }
}

#[cfg(test)]
mod benign_tests {
    use super::*;

    #[test]
    fn only_lost_wakeups_on_the_recorded_put_are_explained() {
        let benign = [BenignRace {
            ts_ns: 40,
            vma: 0xa,
            mm: 1,
        }];
        let found = |key, ts, vma| ReportedAnomaly {
            key,
            ts_ns: ts,
            vma,
            mm: 1,
        };
        let anomalies = [
            found("lost_wakeup", 40, 0xa),
            found("lost_wakeup", 41, 0xa),
            found("lost_wakeup", 40, 0xb),
            found("detach_not_zero", 40, 0xa),
        ];
        assert_eq!(explained_by_benign(&benign, &anomalies), 1);
        assert_eq!(explained_by_benign(&[], &anomalies), 0);
    }
}
