//! `vma->vm_refcnt` values and what they mean (`docs/protocol.md#refcount-encoding`).
//!
//! Everything here is a pure function of sampled values, so the validator, the explorer
//! and the eBPF side can share it. The names follow the kernel (7.0 names, with the
//! 6.x names noted where they differ).

use super::Generation;

/// `VM_REFCNT_EXCLUDE_READERS_FLAG` (7.0+) = `VMA_LOCK_OFFSET` (6.15–6.19): bit 30.
pub const VM_REFCNT_EXCLUDE_READERS_FLAG: u32 = 1 << 30;
/// Short name used in messages and docs.
pub const F: u32 = VM_REFCNT_EXCLUDE_READERS_FLAG;
/// `VM_REFCNT_LIMIT` = `VMA_REF_LIMIT`: a reader's increment may not exceed it.
pub const VM_REFCNT_LIMIT: u32 = F - 1;
/// `vma_lock_init()` starts `vm_lock_seq` here; it is odd, so an mm whose sequence
/// passes through it sees fresh VMAs as write-locked (`docs/protocol.md#race-7`).
pub const VM_LOCK_SEQ_INIT: u32 = u32::MAX;

/// What a sampled `vm_refcnt` value says on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefcntClass {
    /// 0: not in the maple tree.
    Detached,
    /// 1: attached, no readers (unlocked or write-locked: only the seqs tell).
    Attached,
    /// `1 + n`, `n` read references (real, or ephemeral while write-locked).
    Readers(u32),
    /// `F`: a detacher has excluded every reader.
    ExcludedDetach,
    /// `F + 1`: a writer has excluded every reader, or a detacher waits for one reader.
    ExcludedWrite,
    /// `F + 1 + n`: an excluder waits for `n` (writer) or `n + 1` (detacher) readers.
    Excluding(u32),
    /// `>= 2F`: two exclusions at once, or a refcount bug.
    OutOfRange,
}

impl RefcntClass {
    pub const fn of(refcnt: u32) -> Self {
        match refcnt {
            0 => RefcntClass::Detached,
            1 => RefcntClass::Attached,
            r if r < F => RefcntClass::Readers(r - 1),
            r if r == F => RefcntClass::ExcludedDetach,
            r if r == F + 1 => RefcntClass::ExcludedWrite,
            r if r < 2 * F => RefcntClass::Excluding(r - F - 1),
            _ => RefcntClass::OutOfRange,
        }
    }
}

/// The exclusion flag is set: some task is between start- and end-exclude.
pub const fn flag_set(refcnt: u32) -> bool {
    refcnt & F != 0
}

/// `refcnt >= 2F`: more than one exclusion, impossible while mmap_lock serialises writers.
pub const fn out_of_range(refcnt: u32) -> bool {
    refcnt >= 2 * F
}

/// `__vma_are_readers_excluded(refcnt)` (7.0+) = `is_vma_writer_only(refcnt)` (6.x):
/// the flag is set and at most the excluder's own reference is left.
pub const fn vma_readers_excluded(refcnt: u32) -> bool {
    flag_set(refcnt) && refcnt <= F + 1
}

/// Whether `vma_refcount_put` must call `rcuwait_wake_up`, given the value **before** its
/// decrement: the new value is nonzero and readers are excluded (it is `F` or `F + 1`).
/// During a detach a put leaving `F + 1` wakes the detacher spuriously; the kernel
/// accepts that (`docs/protocol.md#race-2`).
pub const fn put_must_wake(old: u32) -> bool {
    let new = old.wrapping_sub(1);
    new != 0 && vma_readers_excluded(new)
}

/// `get_target_refcnt()`: what start-exclude waits for.
pub const fn exclude_target(detaching: bool) -> u32 {
    if detaching { F } else { F + 1 }
}

/// `vm_lock_seq == mm->mm_lock_seq.sequence`: the VMA is write-locked.
pub const fn is_write_locked(vm_lock_seq: u32, mm_lock_seq: u32) -> bool {
    vm_lock_seq == mm_lock_seq
}

/// The three results a start-exclude can report (`docs/protocol.md#writer-invariants`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExcludeResult {
    /// Readers excluded: `vm_refcnt` is exactly the target; the caller must end it.
    Exclusive,
    /// The add found 0: the VMA is (or became) detached; nothing to end.
    Detached,
    /// `-EINTR` from a killable wait; the flag was already removed.
    Interrupted,
    /// A return value or field combination the generation does not define.
    Unknown,
}

impl ExcludeResult {
    /// Decode the return of `__vma_start_exclude_readers` (7.0+: 0/-EINTR plus
    /// `ves->exclusive`/`ves->detached`) or `__vma_enter_locked` (6.19: 1/0/-EINTR).
    /// `ves` is `(detached, exclusive)` when those fields were read.
    pub const fn decode(generation: Generation, ret: i64, ves: Option<(bool, bool)>) -> Self {
        if ret == super::generation::EINTR {
            return ExcludeResult::Interrupted;
        }
        match generation {
            Generation::V7_0 => match (ret, ves) {
                (0, Some((_, true))) => ExcludeResult::Exclusive,
                (0, Some((true, false))) => ExcludeResult::Detached,
                _ => ExcludeResult::Unknown,
            },
            // 6.15–6.18 inline it (no event); decode like 6.19 should one appear.
            Generation::V6_19 | Generation::V6_15 => match ret {
                1 => ExcludeResult::Exclusive,
                0 => ExcludeResult::Detached,
                _ => ExcludeResult::Unknown,
            },
        }
    }

    pub const fn key(self) -> &'static str {
        match self {
            ExcludeResult::Exclusive => "exclusive",
            ExcludeResult::Detached => "detached",
            ExcludeResult::Interrupted => "interrupted",
            ExcludeResult::Unknown => "unknown",
        }
    }
}

/// Human form of a refcount for messages: `0x40000001 (F+1)`.
#[cfg(feature = "std")]
pub fn describe(refcnt: u32) -> std::string::String {
    use std::format;
    match RefcntClass::of(refcnt) {
        RefcntClass::Detached => format!("{refcnt} (detached)"),
        RefcntClass::Attached => format!("{refcnt} (attached)"),
        RefcntClass::Readers(n) => format!("{refcnt} (1+{n} readers)"),
        RefcntClass::ExcludedDetach => format!("{refcnt:#x} (F)"),
        RefcntClass::ExcludedWrite => format!("{refcnt:#x} (F+1)"),
        RefcntClass::Excluding(n) => format!("{refcnt:#x} (F+1+{n})"),
        RefcntClass::OutOfRange => format!("{refcnt:#x} (>= 2F)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes() {
        assert_eq!(RefcntClass::of(0), RefcntClass::Detached);
        assert_eq!(RefcntClass::of(1), RefcntClass::Attached);
        assert_eq!(RefcntClass::of(3), RefcntClass::Readers(2));
        assert_eq!(RefcntClass::of(F - 1), RefcntClass::Readers(F - 2));
        assert_eq!(RefcntClass::of(F), RefcntClass::ExcludedDetach);
        assert_eq!(RefcntClass::of(F + 1), RefcntClass::ExcludedWrite);
        assert_eq!(RefcntClass::of(F + 4), RefcntClass::Excluding(3));
        assert_eq!(RefcntClass::of(2 * F), RefcntClass::OutOfRange);
        assert_eq!(RefcntClass::of(u32::MAX), RefcntClass::OutOfRange);
    }

    #[test]
    fn wake_predicate_matches_kernel() {
        // The put leaving F+1 (writer's target) or F (detacher's target) wakes.
        assert!(put_must_wake(F + 2));
        assert!(put_must_wake(F + 1));
        // Leaving more readers, leaving an unflagged count, or reaching 0 does not.
        assert!(!put_must_wake(F + 3));
        assert!(!put_must_wake(2));
        assert!(!put_must_wake(1));
        assert!(!put_must_wake(0));
    }

    #[test]
    fn decode_results() {
        use Generation::*;
        assert_eq!(
            ExcludeResult::decode(V7_0, 0, Some((false, true))),
            ExcludeResult::Exclusive
        );
        assert_eq!(
            ExcludeResult::decode(V7_0, 0, Some((true, false))),
            ExcludeResult::Detached
        );
        assert_eq!(
            ExcludeResult::decode(V7_0, -4, Some((false, false))),
            ExcludeResult::Interrupted
        );
        assert_eq!(ExcludeResult::decode(V7_0, 0, None), ExcludeResult::Unknown);
        assert_eq!(
            ExcludeResult::decode(V6_19, 1, None),
            ExcludeResult::Exclusive
        );
        assert_eq!(
            ExcludeResult::decode(V6_19, 0, None),
            ExcludeResult::Detached
        );
        assert_eq!(
            ExcludeResult::decode(V6_19, 7, None),
            ExcludeResult::Unknown
        );
    }
}
