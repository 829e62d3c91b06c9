//! A transition the model does not allow, with its evidence.
//!
//! The JSON form (the exported anomaly log) is documented in `docs/anomaly-log.md`, the
//! rule behind each kind in `docs/anomaly-kinds.md`;
//! `AnomalyKind` keys are stable: never rename, only add.

use serde::Serialize;
use vmatrace_common::Event;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Suspicious but possibly an observation artefact.
    Warning,
    /// The kernel's documented protocol was violated.
    Error,
}

impl Severity {
    pub const fn key(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// What kind of violation. The validator extends this list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    /// A reader obtained the VMA while it was write-locked (`vm_lock_seq == mm_lock_seq`).
    ReaderWhileWriteLocked,
    /// A reader obtained the VMA while the exclusion flag was set.
    ReaderWhileExcluded,
    /// Start-exclude returned with readers excluded but `vm_refcnt` was not exactly
    /// F+1 (write) / F (detach).
    ExcludeTargetMismatch,
    /// A detach completed with `vm_refcnt != 0`.
    DetachNotZero,
    /// `vm_area_free` on a VMA whose refcount is not 0.
    FreeWhileReferenced,
    /// `__vma_start_write` returned success but `vm_lock_seq != mm_lock_seq`.
    WriteLockNotTaken,
    /// `vm_refcnt` out of range (two exclusions at once, or above `2F-1`).
    RefcountOutOfRange,
    /// A second exclusion started on a VMA that is already being excluded.
    ConcurrentExclusion,
    /// `__vma_start_write` / a detach / an interrupted start-exclude returned with the
    /// exclusion flag still set (end-exclude skipped).
    ExclusionNotEnded,
    /// The put that left `F` or `F+1` (readers excluded) was not followed by
    /// `rcuwait_wake_up` from the same task: the excluding task may sleep forever.
    LostWakeup,
    /// `lock_vma_under_rcu` returned a VMA but the sampled `vm_refcnt` cannot include the
    /// reader's own reference (0, 1, `F` or `F+1`).
    ReaderWithoutReference,
    /// A start-exclude or `__vma_start_write` returned `-EINTR` where the kernel cannot:
    /// uninterruptible wait, a detach, or a generation without killable writers.
    UnexpectedEintr,
}

impl AnomalyKind {
    pub fn key(self) -> &'static str {
        match self {
            AnomalyKind::ReaderWhileWriteLocked => "reader_while_write_locked",
            AnomalyKind::ReaderWhileExcluded => "reader_while_excluded",
            AnomalyKind::ExcludeTargetMismatch => "exclude_target_mismatch",
            AnomalyKind::DetachNotZero => "detach_not_zero",
            AnomalyKind::FreeWhileReferenced => "free_while_referenced",
            AnomalyKind::WriteLockNotTaken => "write_lock_not_taken",
            AnomalyKind::RefcountOutOfRange => "refcount_out_of_range",
            AnomalyKind::ConcurrentExclusion => "concurrent_exclusion",
            AnomalyKind::ExclusionNotEnded => "exclusion_not_ended",
            AnomalyKind::LostWakeup => "lost_wakeup",
            AnomalyKind::ReaderWithoutReference => "reader_without_reference",
            AnomalyKind::UnexpectedEintr => "unexpected_eintr",
        }
    }

    pub const ALL: &'static [AnomalyKind] = &[
        AnomalyKind::ReaderWhileWriteLocked,
        AnomalyKind::ReaderWhileExcluded,
        AnomalyKind::ExcludeTargetMismatch,
        AnomalyKind::DetachNotZero,
        AnomalyKind::FreeWhileReferenced,
        AnomalyKind::WriteLockNotTaken,
        AnomalyKind::RefcountOutOfRange,
        AnomalyKind::ConcurrentExclusion,
        AnomalyKind::ExclusionNotEnded,
        AnomalyKind::LostWakeup,
        AnomalyKind::ReaderWithoutReference,
        AnomalyKind::UnexpectedEintr,
    ];

    /// Inverse of [`AnomalyKind::key`].
    pub fn from_key(key: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.key() == key)
    }

    /// Every kind is a breach of the kernel's documented protocol except where the
    /// observation itself may be at fault.
    pub const fn severity(self) -> Severity {
        match self {
            AnomalyKind::ReaderWithoutReference => Severity::Warning,
            _ => Severity::Error,
        }
    }
}

/// One violation, as the validator reports it ("event X not expected in state Y").
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub severity: Severity,
    /// The rule it breaks (`validate::rules`, docs/anomaly-kinds.md, "Rules").
    pub rule: &'static str,
    /// The offending event.
    pub event: Event,
    /// The model's state of this VMA before the event (human-readable, stable wording).
    pub state: String,
    /// What the model allowed at this point.
    pub expected: String,
    /// What was observed instead.
    pub observed: String,
    /// The last events of this VMA, oldest first, ending with the offending one.
    pub evidence: Vec<Event>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/anomaly-kinds.md`'s table lists exactly these kinds with their severity:
    /// adding a kind without documenting it (or the reverse) fails here.
    #[test]
    fn the_documented_kinds_are_these() {
        let doc = include_str!("../../../docs/anomaly-kinds.md");
        let rows: Vec<(String, String)> = doc
            .lines()
            .take_while(|l| !l.starts_with("## Rules"))
            .filter_map(|l| {
                let mut cells = l.strip_prefix("| `")?.split(" | ");
                let key = cells.next()?.strip_suffix('`')?.to_string();
                Some((key, cells.next()?.to_string()))
            })
            .collect();
        let ours: Vec<(String, String)> = AnomalyKind::ALL
            .iter()
            .map(|k| (k.key().to_string(), k.severity().key().to_string()))
            .collect();
        let mut sorted = ours.clone();
        sorted.sort();
        let mut doc_sorted = rows.clone();
        doc_sorted.sort();
        assert_eq!(
            doc_sorted, sorted,
            "docs/anomaly-kinds.md vs AnomalyKind::ALL"
        );
        for k in AnomalyKind::ALL {
            assert_eq!(AnomalyKind::from_key(k.key()), Some(*k));
        }
    }
}
