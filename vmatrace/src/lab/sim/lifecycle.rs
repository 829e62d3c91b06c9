//! VMA lifetime and the mm-wide lock: `vm_area_alloc`, `vma_mark_attached`,
//! `vma_mark_detached` (with its 7.x slow path `__vma_exclude_readers_for_detach`),
//! `vm_area_free`, `mmap_write_lock` and `mmap_write_unlock`
//! (`docs/protocol.md#sequence-numbers`, `docs/protocol.md#detach-and-attach`).

use std::sync::atomic::Ordering;
use std::sync::{RwLockReadGuard, RwLockWriteGuard};

use vmatrace_common::event::{ProbeId, flags};
use vmatrace_common::model::generation::TASK_UNINTERRUPTIBLE;
use vmatrace_common::{Event, EventKind};

use super::checks::SimChecks;
use super::inject::Injection;
use super::mm::SimMm;
use super::sim_kernel::SimKernel;
use super::task::Task;
use super::vma::{VM_FLAGS_ANON_RW, VM_LOCK_SEQ_INIT};
use super::vma_start_write::{Ves, exclude_traced};

/// `mmap_write_lock(mm)`: take the rwsem, then `mm_lock_seqcount_begin` (odd).
pub fn mmap_write_lock<'a>(k: &SimKernel, mm: &'a SimMm) -> RwLockWriteGuard<'a, ()> {
    let g = mm.write_lock();
    let old = mm.mm_lock_seq.fetch_add(1, Ordering::AcqRel);
    if old & 1 != 0 {
        SimChecks::bump(&k.checks.mm_lock_seq_parity);
    }
    g
}

/// `mmap_write_unlock(mm)`: the `mmap_lock_released` tracepoint fires first, then
/// `vma_end_write_all` makes the sequence even (every VMA write lock of the mm ends).
pub fn mmap_write_unlock(k: &SimKernel, t: &Task, mm: &SimMm, guard: RwLockWriteGuard<'_, ()>) {
    // With the ring held, so that no sample of this mm lands between the tracepoint and
    // the increment (the kernel has a window there; the validator treats the VMAs as
    // unlocked from the tracepoint on).
    let old = k.ring.with(|w| {
        if !t.quiet {
            let mut ev = k.event(t, EventKind::MmWriteUnlock, ProbeId::MmapLockReleased);
            k.read_mm(&mut ev, mm);
            ev.arg = 1; // write
            w.push(ev);
        }
        mm.mm_lock_seq.fetch_add(1, Ordering::AcqRel)
    });
    if old & 1 == 0 {
        SimChecks::bump(&k.checks.mm_lock_seq_parity);
    }
    drop(guard);
}

/// `mmap_write_downgrade(mm)`: `mmap_lock_acquire_returned(write=false)` fires while the
/// sequence is still odd, then `vma_end_write_all` ends every VMA write lock and the lock
/// is kept for reading. std's `RwLock` cannot downgrade atomically, so the simulator
/// releases and re-takes it; another writer may get in between, which the per-VMA
/// protocol does not care about (only the sequence matters to it).
pub fn mmap_write_downgrade<'a>(
    k: &SimKernel,
    t: &Task,
    mm: &'a SimMm,
    guard: RwLockWriteGuard<'a, ()>,
) -> RwLockReadGuard<'a, ()> {
    let old = k.ring.with(|w| {
        if !t.quiet {
            let mut ev = k.event(
                t,
                EventKind::MmWriteUnlock,
                ProbeId::MmapLockAcquireReturned,
            );
            k.read_mm(&mut ev, mm);
            ev.arg = 0; // write = false: a downgrade
            w.push(ev);
        }
        mm.mm_lock_seq.fetch_add(1, Ordering::AcqRel)
    });
    if old & 1 == 0 {
        SimChecks::bump(&k.checks.mm_lock_seq_parity);
    }
    drop(guard);
    mm.read_lock()
}

/// `vm_area_alloc(mm)`: a fresh object, detached (0), `vm_lock_seq = UINT_MAX`.
pub fn vm_area_alloc(k: &SimKernel, t: &Task, mm: &SimMm) -> Option<u32> {
    let idx = k.slab.alloc()?;
    let v = k.vma(idx);
    // vma_init(): the refcount of a freed object is already 0 (vm_area_free checks it).
    v.vm_lock_seq.store(VM_LOCK_SEQ_INIT, Ordering::Relaxed);
    v.faulted.store(false, Ordering::Relaxed);
    v.excluded_visible.store(false, Ordering::Relaxed);
    v.locked_visible_seq
        .store(VM_LOCK_SEQ_INIT, Ordering::Relaxed);
    v.vm_start.store(0, Ordering::Relaxed);
    v.vm_end.store(0, Ordering::Relaxed);
    v.vm_flags.store(0, Ordering::Relaxed);
    v.vm_mm.store(mm.addr, Ordering::Release);
    k.emit(t, || {
        let mut ev = k.event(t, EventKind::VmaAlloc, ProbeId::VmAreaAlloc);
        k.read_vma(&mut ev, idx);
        // The fexit program's `mm` argument; the new object is `vma`.
        ev.arg = mm.addr;
        ev
    });
    Some(idx)
}

/// Set the range before the VMA becomes visible (`vma_set_range`).
pub fn vma_set_range(k: &SimKernel, idx: u32, start: u64, end: u64) {
    let v = k.vma(idx);
    v.vm_start.store(start, Ordering::Relaxed);
    v.vm_end.store(end, Ordering::Relaxed);
    v.vm_flags.store(VM_FLAGS_ANON_RW, Ordering::Relaxed);
}

/// `vma_mark_attached`: `refcount_set_release(&vm_refcnt, 1)`. Inline: no event.
pub fn vma_mark_attached(k: &SimKernel, idx: u32) {
    k.vma(idx).vm_refcnt.store(1, Ordering::Release);
}

/// `vma_mark_detached(vma)`; the VMA is write-locked by the caller.
pub fn vma_mark_detached(k: &SimKernel, t: &mut Task, mm: &SimMm, idx: u32) {
    if k.inject(t, Injection::DetachLeavesRefcount, idx) {
        detach_leaving_refcount(k, t, mm, idx);
        return;
    }
    let v = k.vma(idx);
    if !k.generation.profile().every_detach_hookable {
        // Inline fast path (`__vma_refcount_put_return() == 0`): invisible.
        let old = v.vm_refcnt.fetch_sub(1, Ordering::AcqRel);
        if old == 0 {
            SimChecks::bump(&k.checks.refcount_underflow);
            return;
        }
        if old - 1 != 0 {
            exclude_readers_for_detach(k, t, mm, idx);
        }
        return;
    }
    let entry = detach_event(k, t, idx, EventKind::DetachEnter, None);
    let old = v.vm_refcnt.fetch_sub(1, Ordering::AcqRel);
    if old == 0 {
        SimChecks::bump(&k.checks.refcount_underflow);
    } else if old - 1 != 0 {
        // A spurious (ephemeral) reader is still there: wait for it.
        let mut ves = Ves {
            state: TASK_UNINTERRUPTIBLE,
            detaching: true,
            ..Ves::default()
        };
        if exclude_traced(k, t, mm, idx, &mut ves) == 1 {
            end_exclude_for_detach(k, idx, &mut ves);
        }
    }
    if v.vm_refcnt.load(Ordering::Acquire) != 0 {
        SimChecks::bump(&k.checks.detach_not_zero);
    }
    detach_event(k, t, idx, EventKind::DetachExit, Some(entry));
}

/// 7.x `__vma_exclude_readers_for_detach(vma)`: the decrement already happened and left
/// a spurious reader; exclude with target F, then end, which must reach 0.
fn exclude_readers_for_detach(k: &SimKernel, t: &mut Task, mm: &SimMm, idx: u32) {
    let entry = detach_event(k, t, idx, EventKind::DetachEnter, None);
    let mut ves = Ves {
        state: TASK_UNINTERRUPTIBLE,
        detaching: true,
        ..Ves::default()
    };
    let err = exclude_traced(k, t, mm, idx, &mut ves);
    if err == 0 && ves.exclusive {
        end_exclude_for_detach(k, idx, &mut ves);
    }
    // WARN_ON_ONCE(!ves.detached)
    if !ves.detached {
        SimChecks::bump(&k.checks.detach_not_zero);
    }
    detach_event(k, t, idx, EventKind::DetachExit, Some(entry));
}

fn end_exclude_for_detach(k: &SimKernel, idx: u32, ves: &mut Ves) {
    let old = k.vma(idx).vm_refcnt.fetch_sub(k.flag, Ordering::AcqRel);
    ves.detached = old.wrapping_sub(k.flag) == 0;
}

/// Entry returns (ts, refcnt); exit is paired with it.
fn detach_event(
    k: &SimKernel,
    t: &Task,
    idx: u32,
    kind: EventKind,
    entry: Option<(u64, u32)>,
) -> (u64, u32) {
    if t.quiet {
        return (0, 0);
    }
    let probe = k.generation.profile().detach_probe;
    k.ring.with(|w| {
        let mut ev: Event = k.event(t, kind, probe);
        k.read_vma(&mut ev, idx);
        if let Some((ts, refcnt)) = entry {
            ev.flags |= flags::PAIRED;
            ev.entry_refcnt = refcnt;
            ev.wait_ns = w.now_ns().saturating_sub(ts);
        }
        (w.push(ev), ev.refcnt)
    })
}

/// Injected fault: the detach returns without dropping the attach reference. On 7.x
/// that takes it into the (visible) slow path, which then skips the exclusion. The
/// simulator then detaches properly, quietly, so the object can be freed.
fn detach_leaving_refcount(k: &SimKernel, t: &mut Task, mm: &SimMm, idx: u32) {
    let entry = detach_event(k, t, idx, EventKind::DetachEnter, None);
    let (ts, _) = detach_event(k, t, idx, EventKind::DetachExit, Some(entry));
    k.record_site(Injection::DetachLeavesRefcount, ts, idx, mm.addr);
    t.quiet = true;
    vma_mark_detached(k, t, mm, idx);
    t.quiet = false;
}

/// `vm_area_free(vma)`: the object goes back to the slab; its count must be 0.
pub fn vm_area_free(k: &SimKernel, t: &mut Task, idx: u32) {
    let v = k.vma(idx);
    if k.inject(t, Injection::FreeWhileReferenced, idx) {
        // A reference nobody dropped: present while the probe samples, repaired after.
        let (ts, mm) = k.ring.with(|w| {
            v.vm_refcnt.fetch_add(1, Ordering::AcqRel);
            let mut ev = k.event(t, EventKind::VmaFree, ProbeId::VmAreaFree);
            k.read_vma(&mut ev, idx);
            let ts = w.push(ev);
            v.vm_refcnt.fetch_sub(1, Ordering::AcqRel);
            (ts, ev.mm)
        });
        k.record_site(Injection::FreeWhileReferenced, ts, idx, mm);
    } else {
        k.emit(t, || {
            let mut ev = k.event(t, EventKind::VmaFree, ProbeId::VmAreaFree);
            k.read_vma(&mut ev, idx);
            ev
        });
        if v.vm_refcnt.load(Ordering::Acquire) != 0 {
            SimChecks::bump(&k.checks.free_not_zero);
        }
    }
    // A stale RCU reader may have slipped an increment into the injected window; the
    // object must be back at 0 before anyone can allocate it again.
    while v.vm_refcnt.load(Ordering::Acquire) != 0 {
        std::thread::yield_now();
    }
    k.slab.free(idx);
}
