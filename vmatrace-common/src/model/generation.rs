//! Generations of the per-VMA lock code: which functions exist and what they mean.

/// The refcount-era generations. Detected from BTF and symbols, never from the version
/// string (distributions backport).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Generation {
    /// 6.15–6.18: `vm_refcnt` with `VMA_LOCK_OFFSET`; `__vma_start_write(vma, seq)` void;
    /// global `vma_mark_detached`; `__vma_enter_locked`/`__vma_exit_locked` inline.
    V6_15 = 1,
    /// 6.19: `__vma_start_write(vma, seq, state)` returns 0/-EINTR (killable writers in
    /// `dup_mmap`); `__vma_enter_locked(vma, detaching, state)` out of line (notrace).
    V6_19 = 2,
    /// 7.0+: `struct vma_exclude_readers_state`, `__vma_start_exclude_readers`,
    /// `VM_REFCNT_EXCLUDE_READERS_FLAG`, inline `vma_mark_detached` with
    /// `__vma_exclude_readers_for_detach` as its slow path, `__vma_start_write(vma, state)`.
    V7_0 = 3,
}

impl Generation {
    pub const ALL: &'static [Generation] =
        &[Generation::V6_15, Generation::V6_19, Generation::V7_0];

    pub const fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Generation::V6_15),
            2 => Some(Generation::V6_19),
            3 => Some(Generation::V7_0),
            _ => None,
        }
    }

    /// `VMA_LOCK_OFFSET` (≤6.19) / `VM_REFCNT_EXCLUDE_READERS_FLAG` (7.0+): bit 30 in both.
    pub const fn exclude_readers_flag(self) -> u32 {
        1 << 30
    }

    /// `VMA_REF_LIMIT` / `VM_REFCNT_LIMIT`.
    pub const fn refcnt_limit(self) -> u32 {
        self.exclude_readers_flag() - 1
    }

    /// Whether write-locking can be interrupted by a fatal signal (`TASK_KILLABLE`).
    pub const fn has_killable_writers(self) -> bool {
        !matches!(self, Generation::V6_15)
    }

    pub const fn label(self) -> &'static str {
        match self {
            Generation::V6_15 => "6.15-6.18 (vm_refcnt, VMA_LOCK_OFFSET)",
            Generation::V6_19 => "6.19 (killable __vma_enter_locked)",
            Generation::V7_0 => "7.0+ (vma_exclude_readers_state)",
        }
    }

    pub const fn key(self) -> &'static str {
        match self {
            Generation::V6_15 => "6.15",
            Generation::V6_19 => "6.19",
            Generation::V7_0 => "7.0",
        }
    }
}

/// `TASK_UNINTERRUPTIBLE`
pub const TASK_UNINTERRUPTIBLE: u32 = 0x2;
/// `TASK_KILLABLE` = `TASK_WAKEKILL | TASK_UNINTERRUPTIBLE`
pub const TASK_KILLABLE: u32 = 0x102;
/// `-EINTR`
pub const EINTR: i64 = -4;
