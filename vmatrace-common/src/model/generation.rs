//! Generations of the per-VMA lock code: which functions exist and what they mean.

use crate::event::ProbeId;

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

/// What a generation's code looks like to a tracer, as data: the consumers (planner,
/// offsets, validator, statistics, summary) ask the profile, not the generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// `__vma_start_write` takes a task state and returns 0 or `-EINTR` (killable
    /// writers, 6.19+); before, it takes the mm's sequence and returns nothing.
    pub writer_takes_state: bool,
    /// Start-exclude as a function of its own a probe can hook: `__vma_enter_locked`
    /// (6.19, out of line), `__vma_start_exclude_readers` (7.0+). 6.15–6.18 inline it.
    pub start_exclude: Option<ProbeId>,
    /// The function that ends an exclusion (inlined everywhere so far).
    pub end_exclude_function: &'static str,
    /// Where a detach that found readers is seen: the global `vma_mark_detached`
    /// (≤6.19), or its out-of-line slow path `__vma_exclude_readers_for_detach` (7.0+).
    pub detach_probe: ProbeId,
    /// An exclusion's state is a `struct vma_exclude_readers_state` (7.0+), read at
    /// start-exclude's entry and return through its pointer.
    pub exclude_state_struct: bool,
    /// Start-exclude returns 1 when it excluded readers, 0 when it found the VMA
    /// detached (6.19 `__vma_enter_locked`); 7.0+ says so in the state struct.
    pub exclude_returns_excluded: bool,
    /// Every detach goes through an out-of-line `vma_mark_detached` (≤6.19). 7.0+:
    /// `vma_mark_detached` is inline and only its slow path,
    /// `__vma_exclude_readers_for_detach`, is a function.
    pub every_detach_hookable: bool,
    /// The wait for readers is in the hookable start-exclude function (7.0+), so its
    /// calls are the excluders a reader's wake-up is for; before, the wait is inlined
    /// into `__vma_start_write` and the detach (6.19: into the notrace
    /// `__vma_enter_locked`), whose calls are.
    pub waits_in_start_exclude: bool,
    /// `/proc/PID/maps` readers take per-VMA read locks through `lock_next_vma`
    /// (6.19+ as simulated; 6.15–6.18 read maps under the mmap lock).
    pub maps_reader_takes_vma_locks: bool,
    /// Short name (`--generation`, JSON) and the long label of this generation.
    pub key: &'static str,
    pub label: &'static str,
}

/// One row per generation, in [`Generation::ALL`] order.
const PROFILES: [Profile; 3] = [
    // 6.15–6.18
    Profile {
        writer_takes_state: false,
        start_exclude: None,
        end_exclude_function: "__vma_exit_locked",
        detach_probe: ProbeId::VmaMarkDetached,
        exclude_state_struct: false,
        exclude_returns_excluded: false,
        every_detach_hookable: true,
        waits_in_start_exclude: false,
        maps_reader_takes_vma_locks: false,
        key: "6.15",
        label: "6.15-6.18 (vm_refcnt, VMA_LOCK_OFFSET)",
    },
    // 6.19
    Profile {
        writer_takes_state: true,
        start_exclude: Some(ProbeId::VmaEnterLocked),
        end_exclude_function: "__vma_exit_locked",
        detach_probe: ProbeId::VmaMarkDetached,
        exclude_state_struct: false,
        exclude_returns_excluded: true,
        every_detach_hookable: true,
        waits_in_start_exclude: false,
        maps_reader_takes_vma_locks: true,
        key: "6.19",
        label: "6.19 (killable __vma_enter_locked)",
    },
    // 7.0+
    Profile {
        writer_takes_state: true,
        start_exclude: Some(ProbeId::VmaStartExcludeReaders),
        end_exclude_function: "__vma_end_exclude_readers",
        detach_probe: ProbeId::VmaExcludeReadersForDetach,
        exclude_state_struct: true,
        exclude_returns_excluded: false,
        every_detach_hookable: false,
        waits_in_start_exclude: true,
        maps_reader_takes_vma_locks: true,
        key: "7.0",
        label: "7.0+ (vma_exclude_readers_state)",
    },
];

impl Generation {
    pub const ALL: &'static [Generation] =
        &[Generation::V6_15, Generation::V6_19, Generation::V7_0];

    /// This generation's row of the profile table.
    pub const fn profile(self) -> &'static Profile {
        &PROFILES[self as usize - 1]
    }

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
        self.profile().writer_takes_state
    }

    pub const fn label(self) -> &'static str {
        self.profile().label
    }

    pub const fn key(self) -> &'static str {
        self.profile().key
    }

    /// The generation a kernel of this version would have, for choosing a simulated
    /// one from `--generation 6.17` (a real kernel's generation comes from BTF and
    /// symbols, never from its version).
    pub fn of_version(major: u32, minor: u32) -> Option<Self> {
        match (major, minor) {
            (6, 15..=18) => Some(Generation::V6_15),
            (6, 19) => Some(Generation::V6_19),
            (m, _) if m >= 7 => Some(Generation::V7_0),
            _ => None,
        }
    }
}

/// `TASK_UNINTERRUPTIBLE`
pub const TASK_UNINTERRUPTIBLE: u32 = 0x2;
/// `TASK_KILLABLE` = `TASK_WAKEKILL | TASK_UNINTERRUPTIBLE`
pub const TASK_KILLABLE: u32 = 0x102;
/// `-EINTR`
pub const EINTR: i64 = -4;

#[cfg(test)]
mod tests {
    use super::*;

    /// The table's rows are the generations' (a row out of place would give one
    /// generation another's code).
    #[test]
    fn each_generation_has_its_row() {
        let p = |g: Generation| *g.profile();
        assert!(!p(Generation::V6_15).writer_takes_state);
        assert_eq!(p(Generation::V6_15).start_exclude, None);
        assert_eq!(
            p(Generation::V7_0).detach_probe,
            ProbeId::VmaExcludeReadersForDetach
        );
        assert!(p(Generation::V6_19).exclude_returns_excluded);
        assert!(!p(Generation::V6_19).exclude_state_struct);
        assert!(p(Generation::V7_0).exclude_state_struct);
        assert!(!p(Generation::V7_0).every_detach_hookable);
        for g in Generation::ALL {
            assert_eq!(g.has_killable_writers(), g.profile().writer_takes_state);
            assert!(g.label().starts_with(g.key()), "{g:?}");
            assert_eq!(
                Generation::ALL
                    .iter()
                    .filter(|o| o.key() == g.key())
                    .count(),
                1
            );
        }
        assert!(p(Generation::V7_0).waits_in_start_exclude);
        assert!(!p(Generation::V6_19).waits_in_start_exclude);
        assert!(!p(Generation::V6_15).maps_reader_takes_vma_locks);
    }
}
