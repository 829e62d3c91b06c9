//! The simulator's own invariant checks, made on its real atomics (independently of the
//! event stream and the validator): if the port of the algorithm were wrong, these
//! counters would show it even where no event is emitted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! checks {
    ($($(#[$m:meta])* $field:ident,)*) => {
        /// Violations counted by the simulator. All must stay 0 without `--inject`.
        #[derive(Default)]
        pub struct SimChecks { $($(#[$m])* pub $field: AtomicU64,)* }

        impl SimChecks {
            /// Stable snake_case name → count.
            pub fn snapshot(&self) -> BTreeMap<&'static str, u64> {
                let mut m = BTreeMap::new();
                $(m.insert(stringify!($field), self.$field.load(Ordering::Relaxed));)*
                m
            }
        }
    };
}

checks! {
    /// A reader's increment succeeded on a count with the exclusion flag set.
    reader_admitted_while_excluded,
    /// A task holding a reader reference saw its VMA write-locked (`vm_lock_seq ==
    /// mm_lock_seq`): a writer finished while a reader was inside.
    reader_held_while_write_locked,
    /// A reader kept a VMA that belongs to another mm or does not cover its address.
    reader_held_wrong_vma,
    /// An exclusion's wait ended while the simulator's own holder count was nonzero.
    exclusion_with_holders,
    /// An exclusion's wait ended with a count other than its target (F+1 write, F detach).
    exclusion_target_mismatch,
    /// `refcount_add_not_zero(F)` found the flag already set (two exclusions at once).
    concurrent_exclusion,
    /// A detach finished with a nonzero count.
    detach_not_zero,
    /// `vm_area_free` saw a nonzero count.
    free_not_zero,
    /// A decrement went below zero.
    refcount_underflow,
    /// A waiter found its condition true only after a timed re-check: a wake-up was lost
    /// (or arrived very late).
    wait_timeout_recoveries,
    /// `__vma_start_write` returned 0 without `vm_lock_seq == mm_lock_seq`.
    write_lock_not_taken,
    /// The write path's end-exclude reached 0 (the kernel WARNs).
    write_end_exclude_detached,
    /// An mm's lock sequence was odd while unlocked, or even while write-locked.
    mm_lock_seq_parity,
}

impl SimChecks {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn total(&self) -> u64 {
        self.snapshot().values().sum()
    }
}
