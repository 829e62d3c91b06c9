//! Simulated `mm_struct`: the mmap lock, `mm_lock_seq`, the `vma_writer_wait` slot and a
//! tiny maple tree.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::Thread;

/// Fake `mm_struct` addresses: one per simulated process.
pub const MM_BASE: u64 = 0xffff_8881_0c10_0000;
pub const MM_STRIDE: u64 = 0x800;
/// User address of the first tree slot and the span each slot covers.
pub const USER_BASE: u64 = 0x7f3a_0000_0000;
pub const SLOT_SPAN: u64 = 0x10_000;
/// Process ids: mm `i` belongs to tgid `TGID_BASE + i * TGID_STRIDE`; its tasks have
/// tids just above it (at most `MAX_TASKS`, so no two tasks share a tid).
pub const TGID_BASE: u32 = 4200;
pub const TGID_STRIDE: u32 = 10_000;
pub const MAX_TASKS: usize = 4096;
/// The tid of the simulated rogue second excluder (`double-exclusion`), per process.
pub const ROGUE_TID_OFFSET: u32 = TGID_STRIDE - 1;

/// `struct rcuwait`: one waiting task per mm (the mmap write lock holder), woken by the
/// last reader. The mutex stands in for RCU protection of the `task` pointer (the waker
/// must not use a task that already left); sleeping and waking are `park`/`unpark`.
pub struct RcuWait {
    /// `w->task`: the waiting task, if any.
    pub task: Mutex<Option<Waiter>>,
    /// The waiter's task state is not `TASK_RUNNING` (set before each condition check,
    /// cleared when it leaves): waking it then changes its state (`wake_up_process`
    /// returns 1); otherwise the wake-up is a no-op.
    pub sleeping: AtomicBool,
    /// Injection sites of wake-ups held back from the waiter and not re-issued yet: a
    /// waiter whose wait ends while one is listed notes the time of its next event there.
    pub owed_sites: Mutex<Vec<usize>>,
}

/// Who waits on an mm's `vma_writer_wait`.
#[derive(Clone, Debug)]
pub struct Waiter {
    pub tid: u32,
    /// The VMA it excludes readers from (what the eBPF side keeps in `EXCLUDERS`).
    pub vma: u32,
    pub thread: Thread,
}

pub struct SimMm {
    pub index: usize,
    /// Fake `struct mm_struct *`.
    pub addr: u64,
    /// The process that owns this mm.
    pub tgid: u32,
    /// `mm->mmap_lock`.
    pub mmap_lock: RwLock<()>,
    /// `mm->mm_lock_seq.sequence`: odd while the mmap lock is write-held.
    pub mm_lock_seq: AtomicU32,
    /// `mm->vma_writer_wait`.
    pub vma_writer_wait: RcuWait,
    /// The maple tree, reduced to fixed slots: slot `i` covers
    /// `USER_BASE + i * SLOT_SPAN ..` and holds a slab index + 1 (0 = no VMA). Readers
    /// walk it locklessly; only the mmap write lock holder stores to it.
    pub tree: Box<[AtomicU32]>,
}

impl SimMm {
    pub fn new(index: usize, slots: usize, seq_start: u32) -> Self {
        Self {
            index,
            addr: MM_BASE + index as u64 * MM_STRIDE,
            tgid: TGID_BASE + index as u32 * TGID_STRIDE,
            mmap_lock: RwLock::new(()),
            // The sequence is even while unlocked.
            mm_lock_seq: AtomicU32::new(seq_start & !1),
            vma_writer_wait: RcuWait {
                task: Mutex::new(None),
                sleeping: AtomicBool::new(false),
                owed_sites: Mutex::new(Vec::new()),
            },
            tree: (0..slots).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// `&mm->vma_writer_wait` for the generation's layout.
    pub fn writer_wait_addr(&self, offset: u64) -> u64 {
        self.addr + offset
    }

    /// `mas_walk`: the VMA covering `addr`'s slot, if any.
    pub fn lookup(&self, addr: u64) -> Option<u32> {
        let slot = addr.checked_sub(USER_BASE)? / SLOT_SPAN;
        let v = self
            .tree
            .get(usize::try_from(slot).ok()?)?
            .load(Ordering::Acquire);
        v.checked_sub(1)
    }

    pub fn slot_of(&self, slot: usize) -> Option<u32> {
        self.tree.get(slot)?.load(Ordering::Acquire).checked_sub(1)
    }

    /// `mas_store`: only under the mmap write lock.
    pub fn store_slot(&self, slot: usize, vma: Option<u32>) {
        if let Some(s) = self.tree.get(slot) {
            s.store(vma.map_or(0, |v| v + 1), Ordering::Release);
        }
    }

    pub fn slot_start(slot: usize) -> u64 {
        USER_BASE + slot as u64 * SLOT_SPAN
    }

    pub fn write_lock(&self) -> RwLockWriteGuard<'_, ()> {
        self.mmap_lock.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn read_lock(&self) -> RwLockReadGuard<'_, ()> {
        self.mmap_lock.read().unwrap_or_else(|e| e.into_inner())
    }
}
