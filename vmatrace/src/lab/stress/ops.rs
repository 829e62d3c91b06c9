//! What the workload did: one counter per operation, shared by all threads.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Every operation the workload performs, with the kernel path it is there to drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// A store into the shared arena (a write fault when the page is absent:
    /// `lock_vma_under_rcu` → `handle_mm_fault` under the per-VMA read lock).
    ReaderTouch,
    /// `pwrite()` from a guarded slot into a memfd: the kernel faults on the user page
    /// (read fault, per-VMA read lock) and returns EFAULT instead of SIGSEGV when a writer
    /// has unmapped or protected the slot.
    ReaderCopy,
    /// A guarded-slot copy that met an unmapped or PROT_NONE slot (EFAULT).
    ReaderCopyFault,
    /// `mprotect` of part of a slot (VMA split, write lock) or back (merge).
    Mprotect,
    /// `mmap(MAP_FIXED)` over a live slot: the old VMA is detached under reader pressure.
    MmapReplace,
    /// `munmap` of a slot (detach) followed by a fresh `mmap` of the same range.
    Munmap,
    /// `mremap(MREMAP_FIXED)` of a freshly populated chunk over a slot (detach + move).
    Mremap,
    /// `mremap` growing a scratch mapping (may move it).
    MremapGrow,
    /// `madvise(MADV_DONTNEED)` of part of a slot: readers fault the pages back in.
    MadviseDontneed,
    /// A reshape (MAP_FIXED replace, MADV_DONTNEED, or mprotect) of a whole 2 MiB slot of
    /// the huge-page arena, where a reader's fault zeroes a whole huge page while holding
    /// the VMA read lock: write locks then really find readers inside (waits in
    /// start-exclude, writer wake-ups). A detach cannot: it follows the write lock (see
    /// `race` for the one reader that can still be inside).
    HugeReshape,
    /// A guarded slot's hole was taken by another mapping between munmap and the re-mmap
    /// (the slot stays vacant and is retried later): a race the workload allows.
    SlotTaken,
    /// `fork()` of the workload itself: `dup_mmap` write-locks every VMA of this mm.
    Fork,
    /// A helper process killed with SIGKILL while it was forking in a loop.
    KilledDuringFork,
    /// Of those, the ones killed while their forking thread slept killably (`D`): the
    /// kills that can end a `dup_mmap` write-lock wait with -EINTR.
    KilledInWait,
    /// A system call that failed unexpectedly (the error is printed once per op kind).
    Error,
}

impl Op {
    pub const ALL: &'static [Op] = &[
        Op::ReaderTouch,
        Op::ReaderCopy,
        Op::ReaderCopyFault,
        Op::Mprotect,
        Op::MmapReplace,
        Op::Munmap,
        Op::Mremap,
        Op::MremapGrow,
        Op::MadviseDontneed,
        Op::HugeReshape,
        Op::SlotTaken,
        Op::Fork,
        Op::KilledDuringFork,
        Op::KilledInWait,
        Op::Error,
    ];

    pub const fn key(self) -> &'static str {
        match self {
            Op::ReaderTouch => "reader_touch",
            Op::ReaderCopy => "reader_copy",
            Op::ReaderCopyFault => "reader_copy_efault",
            Op::Mprotect => "mprotect",
            Op::MmapReplace => "mmap_replace",
            Op::Munmap => "munmap",
            Op::Mremap => "mremap",
            Op::MremapGrow => "mremap_grow",
            Op::MadviseDontneed => "madvise_dontneed",
            Op::HugeReshape => "huge_reshape",
            Op::SlotTaken => "slot_taken",
            Op::Fork => "fork",
            Op::KilledDuringFork => "killed_during_fork",
            Op::KilledInWait => "killed_in_wait",
            Op::Error => "errors",
        }
    }
}

#[derive(Debug, Default)]
pub struct OpCounts {
    counts: [AtomicU64; Op::ALL.len()],
}

impl OpCounts {
    #[inline]
    pub fn add(&self, op: Op, n: u64) {
        self.counts[op as usize].fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self, op: Op) -> u64 {
        self.counts[op as usize].load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Vec<(Op, u64)> {
        Op::ALL.iter().map(|op| (*op, self.get(*op))).collect()
    }
}

/// The final report: op counts plus what the kernel says happened to us.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub duration_s: f64,
    pub readers: usize,
    pub writers: usize,
    pub forks: bool,
    /// Op name → count (keys are [`Op::key`]).
    pub ops: serde_json::Map<String, serde_json::Value>,
    /// Minor page faults of this process (getrusage), i.e. faults the readers caused.
    pub minor_faults: u64,
    /// First error message per failing operation, if any.
    pub errors: Vec<String>,
    /// The kprobes `--widen-race-us` installed, if any.
    pub race_widener: Option<super::race::WidenerReport>,
    /// The workload's calls of the traced functions, counted by plain kprobes
    /// (`--count-calls`).
    pub kprobe_calls: Option<super::calls::CallCounts>,
}

#[cfg(test)]
mod tests {
    use super::{Op, OpCounts};

    #[test]
    fn op_indices_match_all() {
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "{op:?} out of order in Op::ALL");
        }
        let c = OpCounts::default();
        c.add(Op::Mremap, 3);
        c.add(Op::Fork, 1);
        let s = c.snapshot();
        assert_eq!(s[Op::Mremap as usize], (Op::Mremap, 3));
        assert_eq!(s[Op::Fork as usize], (Op::Fork, 1));
        assert_eq!(s.iter().map(|(_, n)| n).sum::<u64>(), 4);
    }
}
