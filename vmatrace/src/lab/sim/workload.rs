//! What each simulated task does: page faults under the per-VMA lock, and mmap-write
//! operations (mprotect-like write-locking, munmap/mmap with detach and free, fork-like
//! killable write-locking of every VMA).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::Serialize;
use vmatrace_common::model::generation::{TASK_KILLABLE, TASK_UNINTERRUPTIBLE};

use super::checks::SimChecks;
use super::lifecycle::{
    mmap_write_downgrade, mmap_write_lock, mmap_write_unlock, vm_area_alloc, vm_area_free,
    vma_mark_attached, vma_mark_detached, vma_set_range,
};
use super::mm::{SLOT_SPAN, SimMm, USER_BASE};
use super::sim_kernel::SimKernel;
use super::task::Task;
use super::vma_start_read::{
    LockFail, NextVma, ReadFail, lock_next_vma, lock_vma_under_rcu, reader_put,
};
use super::vma_start_write::vma_start_write;

/// Operation counts of one task (summed for the report).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct OpStats {
    /// All operations.
    pub ops: u64,
    /// Page faults tried under the per-VMA lock.
    pub faults: u64,
    /// ... that got the VMA read-locked.
    pub faults_locked: u64,
    /// ... that fell back to the mmap read lock.
    pub faults_fallback: u64,
    /// Why the per-VMA lock was not obtained.
    pub fail_no_vma: u64,
    pub fail_out_of_range: u64,
    pub fail_detached: u64,
    pub fail_early_write_locked: u64,
    pub fail_excluded: u64,
    pub fail_other_mm: u64,
    pub fail_recheck: u64,
    /// mprotect-like: write-lock some VMAs.
    pub mprotects: u64,
    pub munmaps: u64,
    pub mmaps: u64,
    /// munmaps that ended with `mmap_write_downgrade`.
    pub downgrades: u64,
    /// `/proc/pid/maps` reads (`lock_next_vma` walks).
    pub maps_reads: u64,
    /// fork-like (`dup_mmap`): write-lock every VMA, killable on 6.19+.
    pub forks: u64,
    /// ... aborted by a fatal signal (-EINTR).
    pub forks_interrupted: u64,
    /// mmap skipped because the slab was exhausted.
    pub alloc_failures: u64,
}

impl OpStats {
    pub fn add(&mut self, o: &OpStats) {
        self.ops += o.ops;
        self.faults += o.faults;
        self.faults_locked += o.faults_locked;
        self.faults_fallback += o.faults_fallback;
        self.fail_no_vma += o.fail_no_vma;
        self.fail_out_of_range += o.fail_out_of_range;
        self.fail_detached += o.fail_detached;
        self.fail_early_write_locked += o.fail_early_write_locked;
        self.fail_excluded += o.fail_excluded;
        self.fail_other_mm += o.fail_other_mm;
        self.fail_recheck += o.fail_recheck;
        self.mprotects += o.mprotects;
        self.munmaps += o.munmaps;
        self.mmaps += o.mmaps;
        self.downgrades += o.downgrades;
        self.maps_reads += o.maps_reads;
        self.forks += o.forks;
        self.forks_interrupted += o.forks_interrupted;
        self.alloc_failures += o.alloc_failures;
    }
}

/// Per mille of operations by kind; the rest are page faults.
const MPROTECT_PERMILLE: u64 = 50;
const MUNMAP_PERMILLE: u64 = 50;
const FORK_PERMILLE: u64 = 15;
/// `/proc/pid/maps` reads (`lock_next_vma`), on generations that have it (6.17+).
const MAPS_PERMILLE: u64 = 10;
/// Chance that a fork-like operation has a fatal signal pending (6.19+ only matters).
const FATAL_SIGNAL_CHANCE: f64 = 0.3;

/// Populate each mm's tree before the tasks start (like exec + a few mmaps).
pub fn populate(k: &SimKernel, t: &mut Task) {
    for mm in &k.mms {
        // A task of the owning process (its main thread: tid == tgid).
        t.tgid = mm.tgid;
        t.tid = mm.tgid;
        let g = mmap_write_lock(k, mm);
        for slot in 0..mm.tree.len() {
            if slot % 4 != 3 {
                mmap_into(k, t, mm, slot);
            }
        }
        mmap_write_unlock(k, t, mm, g);
    }
}

/// Run `quota` operations (or until `deadline`).
pub fn run_task(
    k: &SimKernel,
    t: &mut Task,
    quota: u64,
    deadline: Option<Instant>,
    stop: &AtomicBool,
) -> OpStats {
    let mut st = OpStats::default();
    let mm = &k.mms[t.mm];
    for n in 0..quota {
        let last = n + 1 == quota
            || (n % 256 == 0
                && (deadline.is_some_and(|d| Instant::now() >= d) || stop.load(Ordering::Relaxed)));
        st.ops += 1;
        if last {
            // The task's last event must not be one whose verdict depends on the task's
            // next event (a put that owes a wake-up is judged there): end with a clean
            // fault, no fault injected.
            t.inject_off = true;
            fault(k, t, mm, &mut st);
            t.inject_off = false;
            break;
        }
        let r = t.rng.below(1000);
        if r < MPROTECT_PERMILLE {
            mprotect(k, t, mm, &mut st);
        } else if r < MPROTECT_PERMILLE + MUNMAP_PERMILLE {
            munmap_mmap(k, t, mm, &mut st);
        } else if r < MPROTECT_PERMILLE + MUNMAP_PERMILLE + FORK_PERMILLE {
            fork(k, t, mm, &mut st);
        } else if r < MPROTECT_PERMILLE + MUNMAP_PERMILLE + FORK_PERMILLE + MAPS_PERMILLE
            && k.generation.profile().maps_reader_takes_vma_locks
        {
            read_maps(k, t, mm, &mut st);
        } else {
            fault(k, t, mm, &mut st);
        }
    }
    st
}

/// A page fault: try the per-VMA lock, hold it while "handling", release; on failure
/// fall back to the mmap read lock as `do_user_addr_fault` does.
fn fault(k: &SimKernel, t: &mut Task, mm: &SimMm, st: &mut OpStats) {
    st.faults += 1;
    let slot = t.rng.below(mm.tree.len() as u64);
    let addr = SimMm::slot_start(slot as usize) + (t.rng.below(SLOT_SPAN) & !0xfff);
    match lock_vma_under_rcu(k, t, mm, addr) {
        Ok(idx) => {
            st.faults_locked += 1;
            // handle_mm_fault(): keep the lease for a while; sometimes get preempted.
            for _ in 0..t.rng.below(64) {
                std::hint::spin_loop();
            }
            if t.rng.below(256) == 0 {
                std::thread::yield_now();
            }
            check_lease(k, mm, idx, addr);
            reader_put(k, t, idx, true);
        }
        Err(why) => {
            st.faults_fallback += 1;
            *match why {
                LockFail::NoVma => &mut st.fail_no_vma,
                LockFail::OutOfRange => &mut st.fail_out_of_range,
                LockFail::Detached => &mut st.fail_detached,
                LockFail::Read(ReadFail::EarlyWriteLocked) => &mut st.fail_early_write_locked,
                LockFail::Read(ReadFail::Excluded) => &mut st.fail_excluded,
                LockFail::Read(ReadFail::OtherMm) => &mut st.fail_other_mm,
                LockFail::Read(ReadFail::Recheck) => &mut st.fail_recheck,
            } += 1;
            let g = mm.read_lock();
            let _ = mm.lookup(addr);
            drop(g);
        }
    }
}

/// While a task holds a reader reference, no writer can have finished locking the VMA,
/// and the VMA must be the one it asked for.
fn check_lease(k: &SimKernel, mm: &SimMm, idx: u32, addr: u64) {
    let v = k.vma(idx);
    if k.is_write_locked(v, mm) {
        SimChecks::bump(&k.checks.reader_held_while_write_locked);
    }
    let (start, end) = (
        v.vm_start.load(Ordering::Relaxed),
        v.vm_end.load(Ordering::Relaxed),
    );
    if v.vm_mm.load(Ordering::Acquire) != mm.addr || !(start..end).contains(&addr) {
        // An admitted-by-fault reader skips these checks; only count the clean path.
        if !k.plan.any() {
            SimChecks::bump(&k.checks.reader_held_wrong_vma);
        }
    }
}

/// A `/proc/pid/maps` read: walk every VMA with `lock_next_vma`, each read-locked while
/// it is printed, released before the next.
fn read_maps(k: &SimKernel, t: &mut Task, mm: &SimMm, st: &mut OpStats) {
    st.maps_reads += 1;
    let mut from = USER_BASE;
    while let NextVma::Locked(idx) = lock_next_vma(k, t, mm, from) {
        let v = k.vma(idx);
        let start = v.vm_start.load(Ordering::Relaxed);
        check_lease(k, mm, idx, start);
        reader_put(k, t, idx, false);
        // Continue after this VMA's slot (VMAs never span slots).
        let slot =
            usize::try_from(start.saturating_sub(USER_BASE) / SLOT_SPAN).unwrap_or(usize::MAX);
        if slot + 1 >= mm.tree.len() {
            break;
        }
        from = SimMm::slot_start(slot + 1);
    }
}

/// mprotect-like: write-lock one to three VMAs, then release everything at unlock.
fn mprotect(k: &SimKernel, t: &mut Task, mm: &SimMm, st: &mut OpStats) {
    st.mprotects += 1;
    let g = mmap_write_lock(k, mm);
    for _ in 0..=t.rng.below(3) {
        let slot = t.rng.below(mm.tree.len() as u64) as usize;
        if let Some(idx) = mm.slot_of(slot) {
            vma_start_write(k, t, mm, idx, TASK_UNINTERRUPTIBLE);
        }
    }
    mmap_write_unlock(k, t, mm, g);
}

/// munmap of a slot's VMA (write-lock, unlink, detach, free), then maybe a new mmap
/// into the hole; or an mmap into an empty slot.
fn munmap_mmap(k: &SimKernel, t: &mut Task, mm: &SimMm, st: &mut OpStats) {
    let slot = t.rng.below(mm.tree.len() as u64) as usize;
    let g = mmap_write_lock(k, mm);
    match mm.slot_of(slot) {
        Some(old) => {
            st.munmaps += 1;
            vma_start_write(k, t, mm, old, TASK_UNINTERRUPTIBLE);
            mm.store_slot(slot, None);
            // unmap_region(): zapping page tables takes a while, and readers that passed
            // the early check before the write lock still bump the count meanwhile.
            for _ in 0..t.rng.below(512) {
                std::hint::spin_loop();
            }
            if t.rng.below(4) == 0 {
                std::thread::yield_now();
            }
            vma_mark_detached(k, t, mm, old);
            // Usually mapped again (an munmap+mmap cycle), so most slots stay populated.
            if t.rng.below(8) != 0 {
                vm_area_free(k, t, old);
                if mmap_into(k, t, mm, slot) {
                    st.mmaps += 1;
                } else {
                    st.alloc_failures += 1;
                }
            } else {
                // A plain munmap downgrades to the read lock before freeing
                // (vms_complete_munmap_vmas), so the VMA is freed after the write locks end.
                st.downgrades += 1;
                let r = mmap_write_downgrade(k, t, mm, g);
                vm_area_free(k, t, old);
                drop(r);
                return;
            }
        }
        None => {
            if mmap_into(k, t, mm, slot) {
                st.mmaps += 1;
            } else {
                st.alloc_failures += 1;
            }
        }
    }
    mmap_write_unlock(k, t, mm, g);
}

/// A new VMA: allocate, set the range, write-lock it while detached (no exclusion),
/// attach, link (`vma_iter_store_new`). Caller holds the mmap write lock.
fn mmap_into(k: &SimKernel, t: &mut Task, mm: &SimMm, slot: usize) -> bool {
    let Some(idx) = vm_area_alloc(k, t, mm) else {
        return false;
    };
    let start = SimMm::slot_start(slot);
    // Mostly covering the slot, so that most faults land inside a VMA.
    let len = SLOT_SPAN - t.rng.below(SLOT_SPAN / 0x1000 / 4) * 0x1000;
    vma_set_range(k, idx, start, start + len);
    vma_start_write(k, t, mm, idx, TASK_UNINTERRUPTIBLE);
    vma_mark_attached(k, idx);
    mm.store_slot(slot, Some(idx));
    true
}

/// fork-like `dup_mmap`: write-lock every VMA of the parent, killable on 6.19+; a fatal
/// signal makes the first wait return -EINTR and the fork gives up.
fn fork(k: &SimKernel, t: &mut Task, mm: &SimMm, st: &mut OpStats) {
    st.forks += 1;
    let killable = k.generation.has_killable_writers();
    let state = if killable {
        TASK_KILLABLE
    } else {
        TASK_UNINTERRUPTIBLE
    };
    let g = mmap_write_lock(k, mm);
    t.fatal_signal = killable && t.rng.chance(FATAL_SIGNAL_CHANCE);
    for slot in 0..mm.tree.len() {
        if let Some(idx) = mm.slot_of(slot)
            && vma_start_write(k, t, mm, idx, state) < 0
        {
            st.forks_interrupted += 1;
            break;
        }
    }
    t.fatal_signal = false;
    mmap_write_unlock(k, t, mm, g);
}
