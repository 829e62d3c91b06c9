//! A transition the model does not allow, with its evidence.
//!
//! The JSON form (the exported anomaly log) is documented in `docs/anomaly-log.md`;
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
        }
    }
}

/// One violation, as the validator reports it ("event X not expected in state Y").
#[derive(Clone, Debug, PartialEq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub severity: Severity,
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
