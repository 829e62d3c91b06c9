//! The reader side: `lock_vma_under_rcu`, `vma_start_read`, `vma_refcount_put` and
//! `rcuwait_wake_up`, ported from `mm/mmap_lock.c` and `include/linux/mmap_lock.h`
//! (`docs/protocol.md#reader-path`, `docs/protocol.md#wake-up-rule`).

use std::sync::atomic::Ordering;

use vmatrace_common::event::{ProbeId, flags};
use vmatrace_common::{Counter, EventKind};

use super::checks::SimChecks;
use super::inject::Injection;
use super::mm::SimMm;
use super::sim_kernel::SimKernel;
use super::task::{DeferredWake, Task};
use super::vma::{SimVma, Slab};

/// Why `vma_start_read` returned NULL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFail {
    /// The lockless early check found the VMA write-locked.
    EarlyWriteLocked,
    /// The increment was refused: flag set (or the reader limit).
    Excluded,
    /// The object now belongs to another mm (reused).
    OtherMm,
    /// The acquire re-check found it write-locked: the increment was ephemeral.
    Recheck,
}

pub enum StartRead {
    Locked,
    /// `ERR_PTR(-EAGAIN)`: the VMA is detached; walk the tree again.
    Again,
    Fail(ReadFail),
    /// Injected fault: admitted although the flag was set; the `ReaderAcquire` event has
    /// already been emitted.
    AdmittedByFault,
}

/// How many -EAGAIN retries a lookup makes before giving up (the kernel loops until the
/// tree changes; the cap keeps a reader from spinning against a preempted writer).
const MAX_MISSES: u32 = 64;
/// One reader in this many is preempted right after its increment.
const PREEMPT_ONE_IN: u64 = 32;

/// Why `lock_vma_under_rcu` returned NULL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockFail {
    /// No VMA at that address.
    NoVma,
    /// The VMA found does not cover the address (any more).
    OutOfRange,
    /// Detached on every walk, up to the retry cap.
    Detached,
    Read(ReadFail),
}

/// `lock_vma_under_rcu(mm, addr)`: the read-locked VMA's slab index, or why not.
/// Emits the `ReaderAcquire` event its fexit program would.
pub fn lock_vma_under_rcu(
    k: &SimKernel,
    t: &mut Task,
    mm: &SimMm,
    addr: u64,
) -> Result<u32, LockFail> {
    let mut misses = 0;
    let got = loop {
        let Some(idx) = mm.lookup(addr) else {
            break Err(LockFail::NoVma);
        };
        match vma_start_read(k, t, mm, idx, addr) {
            StartRead::Locked => {
                let v = k.vma(idx);
                let (start, end) = (
                    v.vm_start.load(Ordering::Relaxed),
                    v.vm_end.load(Ordering::Relaxed),
                );
                if !(start..end).contains(&addr) {
                    // vma_end_read(): inlined here, so invisible on a real kernel.
                    reader_put(k, t, idx, false);
                    break Err(LockFail::OutOfRange);
                }
                break Ok(idx);
            }
            StartRead::AdmittedByFault => {
                // Always streamed: an unsampled fault would be invisible by construction.
                k.count(t, Counter::ReaderAcquireOk);
                k.count(t, Counter::ReaderSampled);
                return Ok(idx);
            }
            StartRead::Again => {
                misses += 1;
                if misses > MAX_MISSES {
                    break Err(LockFail::Detached);
                }
            }
            StartRead::Fail(why) => break Err(LockFail::Read(why)),
        }
    };
    // Stream 1 in `reader_sample_every` results by this task's running count of both
    // outcomes, as the eBPF side does per CPU (0 = count only).
    t.acquires += 1;
    let every = k.reader_sample_every;
    let sampled = !t.quiet && every != 0 && t.acquires.is_multiple_of(u64::from(every));
    match got {
        Ok(idx) => {
            k.count(t, Counter::ReaderAcquireOk);
            if !sampled {
                return got;
            }
            k.emit(t, || {
                let mut ev = k.event(t, EventKind::ReaderAcquire, ProbeId::LockVmaUnderRcu);
                k.read_vma(&mut ev, idx);
                ev.arg = addr;
                ev.ret = Slab::addr(idx) as i64;
                ev.flags |= flags::RET;
                ev
            });
        }
        Err(why) => {
            k.count(t, Counter::ReaderAcquireFail);
            if why == LockFail::Read(ReadFail::Excluded) {
                k.count(t, Counter::ReaderFailExcluded);
            }
            if !sampled {
                return got;
            }
            // The fexit program only has (mm, addr) and a NULL return: no VMA to read.
            k.emit(t, || {
                let mut ev = k.event(t, EventKind::ReaderAcquire, ProbeId::LockVmaUnderRcu);
                k.read_mm(&mut ev, mm);
                ev.arg = addr;
                ev.ret = 0;
                ev.flags |= flags::RET;
                ev
            });
        }
    }
    k.count(t, Counter::ReaderSampled);
    got
}

/// What `lock_next_vma` returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextVma {
    /// A read-locked VMA (slab index).
    Locked(u32),
    /// NULL: no VMA at or after the address.
    End,
    /// `ERR_PTR(-EAGAIN)`: the fallback found the VMA detached.
    Again,
}

/// `-EAGAIN`
const EAGAIN: i64 = -11;

/// `lock_next_vma(mm, vmi, from_addr)` (6.17+, `/proc/pid/maps` and `PROCMAP_QUERY`): the
/// first VMA at or after `from_addr`, read-locked by `vma_start_read`; when that fails,
/// the fallback takes the mmap read lock and uses `vma_start_read_locked` (whose
/// increment no probe sees). Emits the `ReaderAcquire` of its fexit program.
pub fn lock_next_vma(k: &SimKernel, t: &mut Task, mm: &SimMm, from_addr: u64) -> NextVma {
    let first =
        usize::try_from(from_addr.saturating_sub(super::mm::USER_BASE) / super::mm::SLOT_SPAN)
            .unwrap_or(usize::MAX);
    // mas_find(): the next populated slot.
    let find = |from: usize| (from..mm.tree.len()).find_map(|s| mm.slot_of(s));
    let mut misses = 0;
    let result = loop {
        let Some(idx) = find(first) else {
            break NextVma::End;
        };
        match vma_start_read(k, t, mm, idx, from_addr) {
            // Injected faults only target lock_vma_under_rcu's callers; treat as locked.
            StartRead::Locked | StartRead::AdmittedByFault => {
                // The VMA must not be behind the search position, and no other VMA may
                // have been installed ahead of it since the lookup (the object may have
                // been reused within this mm).
                let end = k.vma(idx).vm_end.load(Ordering::Acquire);
                if from_addr >= end || find(first) != Some(idx) {
                    reader_put(k, t, idx, false);
                    break next_vma_under_mmap_lock(k, mm, first);
                }
                break NextVma::Locked(idx);
            }
            // Detached under us: search again from the same address.
            StartRead::Again => {
                misses += 1;
                if misses > MAX_MISSES {
                    break next_vma_under_mmap_lock(k, mm, first);
                }
            }
            StartRead::Fail(_) => break next_vma_under_mmap_lock(k, mm, first),
        }
    };
    k.count(t, Counter::ReaderNextVma);
    t.next_vmas += 1;
    let every = k.reader_sample_every;
    if t.quiet || every == 0 || !t.next_vmas.is_multiple_of(u64::from(every)) {
        return result;
    }
    k.count(t, Counter::ReaderSampled);
    k.emit(t, || {
        let mut ev = k.event(t, EventKind::ReaderAcquire, ProbeId::LockNextVma);
        match result {
            NextVma::Locked(idx) => {
                k.read_vma(&mut ev, idx);
                ev.ret = Slab::addr(idx) as i64;
            }
            NextVma::End => {
                k.read_mm(&mut ev, mm);
                ev.ret = 0;
            }
            NextVma::Again => {
                k.read_mm(&mut ev, mm);
                ev.ret = EAGAIN;
            }
        }
        ev.arg = from_addr;
        ev.flags |= flags::RET;
        ev
    });
    result
}

/// `lock_vma_under_mmap_lock()`: the fallback of `lock_next_vma`. Under the mmap read
/// lock no writer runs, so the tree and the VMA ranges are stable.
fn next_vma_under_mmap_lock(k: &SimKernel, mm: &SimMm, first: usize) -> NextVma {
    let g = mm.read_lock();
    let r = match (first..mm.tree.len()).find_map(|s| mm.slot_of(s)) {
        None => NextVma::End,
        Some(idx) if vma_start_read_locked(k, idx) => NextVma::Locked(idx),
        Some(_) => NextVma::Again,
    };
    drop(g);
    r
}

/// `vma_start_read_locked(vma)`: the caller holds the mmap read lock, so no writer can
/// be excluding; fails only on a detached VMA (or the reader limit).
fn vma_start_read_locked(k: &SimKernel, idx: u32) -> bool {
    let v = k.vma(idx);
    match inc_not_zero_limited(k, v) {
        Ok(old) => {
            note_admitted(k, v, old);
            true
        }
        Err(_) => false,
    }
}

/// `__refcount_inc_not_zero_limited_acquire(&vm_refcnt, &old, VM_REFCNT_LIMIT)`:
/// `Ok(old)` after the increment, `Err(old)` without a store when `old == 0` or
/// `1 > limit - old`.
fn inc_not_zero_limited(k: &SimKernel, v: &SimVma) -> Result<u32, u32> {
    let mut old = v.vm_refcnt.load(Ordering::Relaxed);
    loop {
        if old == 0 || old > k.limit - 1 {
            return Err(old);
        }
        match v
            .vm_refcnt
            .compare_exchange_weak(old, old + 1, Ordering::Acquire, Ordering::Relaxed)
        {
            Ok(_) => return Ok(old),
            Err(cur) => old = cur,
        }
    }
}

/// A reader holds a reference now; one taken while readers were excluded is what the
/// simulation's checks look for.
fn note_admitted(k: &SimKernel, v: &SimVma, old: u32) {
    v.holders.fetch_add(1, Ordering::AcqRel);
    if old & k.flag != 0 {
        SimChecks::bump(&k.checks.reader_admitted_while_excluded);
    }
}

/// `vma_start_read(mm, vma)` (6.18+ form; the checks are the same in 6.15–6.17).
pub fn vma_start_read(k: &SimKernel, t: &mut Task, mm: &SimMm, idx: u32, addr: u64) -> StartRead {
    let v = k.vma(idx);
    // 1. Lockless early check (READ_ONCE both).
    if v.vm_lock_seq.load(Ordering::Relaxed) == mm.mm_lock_seq.load(Ordering::Relaxed) {
        if k.inject(t, Injection::ReaderIgnoresFlag, idx)
            && let Some(r) = admit_ignoring_flag(k, t, mm, idx, addr)
        {
            return r;
        }
        return StartRead::Fail(ReadFail::EarlyWriteLocked);
    }
    // Preemption between the early check and the increment: a writer can lock the VMA
    // (and a detacher start) in between, leaving this reader's increment ephemeral.
    if t.rng.below(PREEMPT_ONE_IN) == 0 {
        std::thread::yield_now();
    }
    // 2. __refcount_inc_not_zero_limited_acquire(&vm_refcnt, &old, VM_REFCNT_LIMIT):
    //    fails without a store when old == 0 or 1 > limit - old.
    let old = match inc_not_zero_limited(k, v) {
        Ok(old) => old,
        Err(0) => return StartRead::Again,
        Err(old) => {
            if old & k.flag != 0
                && k.inject(t, Injection::ReaderIgnoresFlag, idx)
                && let Some(r) = admit_ignoring_flag(k, t, mm, idx, addr)
            {
                return r;
            }
            return StartRead::Fail(ReadFail::Excluded);
        }
    };
    note_admitted(k, v, old);
    // An interrupt between the increment and the checks keeps the reference longer.
    if t.rng.below(PREEMPT_ONE_IN * 2) == 0 {
        std::thread::yield_now();
    }
    // 4. The object may have been freed and reused by another mm (SLAB_TYPESAFE_BY_RCU).
    if v.vm_mm.load(Ordering::Acquire) != mm.addr {
        reader_put(k, t, idx, false);
        return StartRead::Fail(ReadFail::OtherMm);
    }
    // 5. Acquire re-check: a writer that locked the VMA after the early check.
    if k.is_write_locked(v, mm) {
        reader_put(k, t, idx, false);
        return StartRead::Fail(ReadFail::Recheck);
    }
    StartRead::Locked
}

/// Injected fault: a reader that ignores the exclusion (flag and write lock alike),
/// increments and reports success. It fires only where the event stream can prove it
/// wrong: after the writer's `ExcludeExit` showed the readers excluded (flag still set),
/// or after its `WriteLockExit` showed the VMA write-locked. Earlier, an admitted reader
/// looks exactly like one that got in before the flag, which the kernel allows. The
/// window check, the increment and the fexit sample happen with the ring held.
fn admit_ignoring_flag(
    k: &SimKernel,
    t: &mut Task,
    mm: &SimMm,
    idx: u32,
    addr: u64,
) -> Option<StartRead> {
    let v = k.vma(idx);
    let (ts, ev_mm) = k.ring.with(|w| {
        let r = v.vm_refcnt.load(Ordering::Acquire);
        let seq = mm.mm_lock_seq.load(Ordering::Acquire);
        let excluded = v.excluded_visible.load(Ordering::Relaxed) && r & k.flag != 0;
        let locked = r != 0
            && r & k.flag == 0
            && v.vm_lock_seq.load(Ordering::Acquire) == seq
            && v.locked_visible_seq.load(Ordering::Relaxed) == seq;
        if !(excluded || locked) {
            return None;
        }
        let old = v.vm_refcnt.fetch_add(1, Ordering::Acquire);
        note_admitted(k, v, old);
        let mut ev = k.event(t, EventKind::ReaderAcquire, ProbeId::LockVmaUnderRcu);
        k.read_vma(&mut ev, idx);
        ev.arg = addr;
        ev.ret = Slab::addr(idx) as i64;
        ev.flags |= flags::RET;
        Some((w.push(ev), ev.mm))
    })?;
    k.record_site(Injection::ReaderIgnoresFlag, ts, idx, ev_mm);
    Some(StartRead::AdmittedByFault)
}

/// Drop a reader reference this task owns (`vma_end_read` / the error paths).
/// `lease_release` marks the end of a fault handled under the VMA lock: with
/// [`ReleaseVisibility::Kernel`](super::sim_kernel::ReleaseVisibility) only those can be
/// the out-of-line, probed `vma_refcount_put` (fault-retry sites); error-path and
/// ephemeral puts are always inlined there.
pub fn reader_put(k: &SimKernel, t: &mut Task, idx: u32, lease_release: bool) {
    let v = k.vma(idx);
    v.holders.fetch_sub(1, Ordering::AcqRel);
    let visible = match k.releases {
        super::sim_kernel::ReleaseVisibility::All => true,
        super::sim_kernel::ReleaseVisibility::Kernel => lease_release && t.rng.below(8) == 0,
    };
    vma_refcount_put(k, t, idx, visible);
}

/// `vma_refcount_put(vma)`: decrement, and wake the excluding task if this put leaves
/// the count at F or F+1 (`__vma_are_readers_excluded(newcnt)` / `is_vma_writer_only`).
pub fn vma_refcount_put(k: &SimKernel, t: &mut Task, idx: u32, visible: bool) {
    let v = k.vma(idx);
    // The kernel saves vm_mm first: after the decrement the VMA may be freed and reused.
    let mm_addr = v.vm_mm.load(Ordering::Acquire);
    let (old, put_ts) = if visible && !t.quiet {
        k.count(t, Counter::ReaderRelease);
        // The kprobe reads vm_refcnt at entry; the decrement follows a few instructions
        // later. Doing both with the ring held makes the sample exact.
        k.ring.with(|w| {
            let mut ev = k.event(t, EventKind::ReaderRelease, ProbeId::VmaRefcountPut);
            k.read_vma(&mut ev, idx);
            let old = v.vm_refcnt.fetch_sub(1, Ordering::Release);
            ev.refcnt = old;
            (old, w.push(ev))
        })
    } else {
        (v.vm_refcnt.fetch_sub(1, Ordering::Release), 0)
    };
    if old == 0 {
        SimChecks::bump(&k.checks.refcount_underflow);
        return;
    }
    let new = old - 1;
    if new != 0
        && new & k.flag != 0
        && new <= k.flag + 1
        && let Some(mm) = k.mm_by_addr(mm_addr)
    {
        rcuwait_wake_up(k, t, mm, Some((idx, put_ts)));
    }
}

/// `rcuwait_wake_up(&mm->vma_writer_wait)`: wake the waiting task, if any. Emitted as the
/// eBPF kprobe does: only when a task waits there (`w->task` set), with the fields of the
/// VMA that task excludes readers from, before the wake-up happens.
pub fn rcuwait_wake_up(k: &SimKernel, t: &mut Task, mm: &SimMm, put: Option<(u32, u64)>) {
    let w = &mm.vma_writer_wait;
    let guard = w.task.lock().unwrap_or_else(|e| e.into_inner());
    // Nobody waits yet (the excluder added the flag but has not entered
    // rcuwait_wait_event): nothing to wake. The eBPF kprobe still streams the call with
    // ret 0 (it fires while the exclusion is active), so the put is seen to have done its
    // duty and no lost wake-up is owed.
    let Some(waiter) = guard.as_ref() else {
        if let Some((idx, put_ts)) = put
            && put_ts != 0
        {
            k.record_benign(put_ts, idx, mm.addr);
            let addr = mm.writer_wait_addr(k.writer_wait_offset);
            k.emit(t, || {
                let mut ev = k.event(t, EventKind::WriterWake, ProbeId::RcuwaitWakeUp);
                k.read_vma(&mut ev, idx);
                ev.arg = addr;
                ev.ret = 0;
                ev.flags |= vmatrace_common::event::flags::RET;
                ev
            });
        }
        return;
    };
    // Only a put the validator can see makes a detectable lost wake-up.
    if let Some((idx, put_ts)) = put
        && put_ts != 0
        && k.inject(t, Injection::LostWakeup, idx)
    {
        let site = k.record_site(Injection::LostWakeup, put_ts, idx, mm.addr);
        // The wake-up comes late, after this task's next event: the waiter does not hang,
        // and the stream shows the task going on without waking it.
        w.owed_sites
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(site);
        k.time_site(site, t.tid, false);
        t.deferred_wake.set(Some(DeferredWake {
            waiter: waiter.thread.clone(),
            mm: mm.index,
            site,
        }));
        return;
    }
    let vma = waiter.vma;
    let addr = mm.writer_wait_addr(k.writer_wait_offset);
    k.emit(t, || {
        let mut ev = k.event(t, EventKind::WriterWake, ProbeId::RcuwaitWakeUp);
        k.read_vma(&mut ev, vma);
        ev.arg = addr;
        ev.ret = 1;
        ev.flags |= vmatrace_common::event::flags::RET;
        ev
    });
    k.count(t, Counter::WriterWake);
    // wake_up_process(): 0 if the task was running already.
    if !w.sleeping.swap(false, Ordering::SeqCst) {
        k.count(t, Counter::WriterWakeNoop);
    }
    waiter.thread.unpark();
    drop(guard);
}
