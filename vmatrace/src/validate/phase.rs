//! The phase of one tracked VMA, as the dashboard's Model screen counts them.

use vmatrace_common::model::refcnt::{self, RefcntClass};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// No trustworthy history (first seen without a telling sample, or after a loss).
    Unknown,
    /// `vm_refcnt == 0`: allocated but not attached, or detached.
    Detached,
    /// `vm_refcnt == 1`, not write-locked.
    Attached,
    /// Last sample showed read references.
    Readers,
    /// A start-exclude is in progress (the flag is set).
    Excluding,
    /// `__vma_start_write` succeeded and the mm has not been write-unlocked since.
    WriteLocked,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Unknown,
        Phase::Detached,
        Phase::Attached,
        Phase::Readers,
        Phase::Excluding,
        Phase::WriteLocked,
    ];

    /// Stable key (dashboard, JSON).
    pub const fn key(self) -> &'static str {
        match self {
            Phase::Unknown => "unknown",
            Phase::Detached => "detached",
            Phase::Attached => "attached",
            Phase::Readers => "readers",
            Phase::Excluding => "excluding",
            Phase::WriteLocked => "write_locked",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    /// What a refcount sample alone says.
    pub const fn of_refcnt(r: u32) -> Phase {
        match RefcntClass::of(r) {
            RefcntClass::Detached => Phase::Detached,
            RefcntClass::Attached => Phase::Attached,
            RefcntClass::Readers(_) => Phase::Readers,
            _ if refcnt::flag_set(r) => Phase::Excluding,
            _ => Phase::Unknown,
        }
    }
}
