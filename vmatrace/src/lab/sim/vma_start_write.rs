//! The writer side: `__vma_start_write` and reader exclusion
//! (`__vma_start_exclude_readers`/`__vma_end_exclude_readers` on 7.x,
//! `__vma_enter_locked`/`__vma_exit_locked` on 6.x), with `rcuwait_wait_event`
//! (`docs/protocol.md#writer-path`, `docs/protocol.md#generations`).

use std::sync::atomic::Ordering;
use std::time::Instant;

use vmatrace_common::event::{ProbeId, flags};
use vmatrace_common::model::generation::{EINTR, TASK_KILLABLE};
use vmatrace_common::{Event, EventKind};

use super::checks::SimChecks;
use super::inject::Injection;
use super::mm::{SimMm, Waiter};
use super::sim_kernel::SimKernel;
use super::task::Task;

/// `struct vma_exclude_readers_state` (7.x); on 6.x the same data lives in arguments and
/// locals of `__vma_enter_locked`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ves {
    pub state: u32,
    /// Target F (detach) rather than F+1 (write).
    pub detaching: bool,
    /// Output: the count is, or became, 0.
    pub detached: bool,
    /// Output: readers were excluded; the caller must end the exclusion.
    pub exclusive: bool,
}

/// `rcuwait_wait_event(&mm->vma_writer_wait, refcount_read(&vma->vm_refcnt) == target,
/// state)`: 0, or -EINTR when a `TASK_KILLABLE` wait sees a fatal signal.
///
/// Like the kernel's: register in `w->task`, then loop { set the task state, check the
/// condition, check for a fatal signal, sleep }. Sleeping is `park`: an `unpark` that
/// comes between the check and the park makes the park return at once, which is what
/// setting the task state before the check achieves in the kernel, so no wake-up is lost.
/// The park is timed (`SimKernel::wait_recheck`) so that a lost wake-up (injected) costs a
/// delay instead of a hang.
fn rcuwait_wait_event(
    k: &SimKernel,
    t: &Task,
    mm: &SimMm,
    idx: u32,
    target: u32,
    state: u32,
) -> i64 {
    let v = k.vma(idx);
    let w = &mm.vma_writer_wait;
    // prepare_to_rcuwait(): rcu_assign_pointer(w->task, current)
    *w.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(Waiter {
        tid: t.tid,
        vma: idx,
        thread: std::thread::current(),
    });
    let mut slept_out = false;
    let ret = loop {
        // set_current_state(state)
        w.sleeping.store(true, Ordering::SeqCst);
        if v.vm_refcnt.load(Ordering::SeqCst) == target {
            if slept_out {
                SimChecks::bump(&k.checks.wait_timeout_recoveries);
            }
            break 0;
        }
        if state == TASK_KILLABLE && t.fatal_signal {
            break EINTR;
        }
        // schedule()
        let t0 = Instant::now();
        std::thread::park_timeout(k.wait_recheck);
        slept_out = t0.elapsed() >= k.wait_recheck;
    };
    // finish_rcuwait(): __set_current_state(TASK_RUNNING); w->task = NULL
    w.sleeping.store(false, Ordering::SeqCst);
    let mut task = w.task.lock().unwrap_or_else(|e| e.into_inner());
    *task = None;
    // Under `w->task`'s lock: a put that found this waiter registered has stored the
    // wake-up it held back. Ending the wait without it is visible only if this task's
    // next event comes after the faulty task's (`InjectionSite::settle_visibility`).
    let owed = std::mem::take(&mut *w.owed_sites.lock().unwrap_or_else(|e| e.into_inner()));
    for site in owed {
        k.time_site(site, t.tid, true);
    }
    drop(task);
    ret
}

/// `refcount_add_not_zero(F)`, then wait for the readers to leave. Sets `ves.detached`
/// when the count was already 0, `ves.exclusive` when readers are excluded; on -EINTR
/// the flag has already been removed again.
fn start_exclude(k: &SimKernel, t: &mut Task, mm: &SimMm, idx: u32, ves: &mut Ves) -> i64 {
    let v = k.vma(idx);
    let mut old = v.vm_refcnt.load(Ordering::Relaxed);
    loop {
        if old == 0 {
            ves.detached = true;
            return 0;
        }
        match v.vm_refcnt.compare_exchange_weak(
            old,
            old.wrapping_add(k.flag),
            Ordering::AcqRel,
            Ordering::Relaxed,
        ) {
            Ok(_) => break,
            Err(cur) => old = cur,
        }
    }
    if old & k.flag != 0 {
        SimChecks::bump(&k.checks.concurrent_exclusion);
    }
    if k.inject(t, Injection::DoubleExclusion, idx) {
        rogue_exclusion(k, t, idx);
    }
    let target = k.flag | u32::from(!ves.detaching);
    let err = rcuwait_wait_event(k, t, mm, idx, target, ves.state);
    if err != 0 {
        end_exclude(k, idx, ves);
        return err;
    }
    ves.exclusive = true;
    // Nothing can change the count now; the simulator's holder count must agree.
    if v.vm_refcnt.load(Ordering::Acquire) != target {
        SimChecks::bump(&k.checks.exclusion_target_mismatch);
    }
    if v.holders.load(Ordering::Acquire) != 0 {
        SimChecks::bump(&k.checks.exclusion_with_holders);
    }
    0
}

/// `__vma_end_exclude_readers`: `detached = refcount_sub_and_test(F)`.
fn end_exclude(k: &SimKernel, idx: u32, ves: &mut Ves) {
    let old = k.vma(idx).vm_refcnt.fetch_sub(k.flag, Ordering::AcqRel);
    ves.detached = old.wrapping_sub(k.flag) == 0;
}

/// Injected fault: a second task adds the flag while this exclusion is in progress. Its
/// entry and return are emitted with the doubled count between them, then it backs out.
fn rogue_exclusion(k: &SimKernel, t: &Task, idx: u32) {
    let v = k.vma(idx);
    // Another task of the same process (e.g. a kworker acting without the mmap lock).
    let rogue_tid = t.tgid + super::mm::ROGUE_TID_OFFSET;
    let ts = k.ring.with(|w| {
        let profile = k.generation.profile();
        let seven = profile.exclude_state_struct;
        // Seen at start-exclude where it is a function, else at `__vma_start_write`.
        let (enter_kind, exit_kind, probe) = match profile.start_exclude {
            Some(probe) => (EventKind::ExcludeEnter, EventKind::ExcludeExit, probe),
            None => (
                EventKind::WriteLockEnter,
                EventKind::WriteLockExit,
                ProbeId::VmaStartWrite,
            ),
        };
        let mut enter = k.event(t, enter_kind, probe);
        enter.pid_tgid = (u64::from(t.tgid) << 32) | u64::from(rogue_tid);
        k.read_vma(&mut enter, idx);
        if enter_kind == EventKind::ExcludeEnter {
            enter.flags |= flags::VES;
            enter.ves_state = vmatrace_common::model::generation::TASK_UNINTERRUPTIBLE;
        }
        let entry_refcnt = enter.refcnt;
        let ts = w.push(enter);
        v.vm_refcnt.fetch_add(k.flag, Ordering::AcqRel);
        let mut exit = k.event(t, exit_kind, probe);
        exit.pid_tgid = enter.pid_tgid;
        k.read_vma(&mut exit, idx);
        exit.flags |= flags::RET | flags::PAIRED;
        exit.entry_refcnt = entry_refcnt;
        exit.wait_ns = w.now_ns().saturating_sub(ts);
        if exit_kind == EventKind::ExcludeExit {
            // It "waited" and claims the readers are excluded.
            exit.flags |= flags::VES;
            exit.ves_state = enter.ves_state;
            exit.ves_exclusive = u8::from(seven);
            exit.ret = if seven { 0 } else { 1 };
        }
        w.push(exit);
        v.vm_refcnt.fetch_sub(k.flag, Ordering::AcqRel);
        ts
    });
    let mm = k.vma(idx).vm_mm.load(Ordering::Relaxed);
    k.record_site(Injection::DoubleExclusion, ts, idx, mm);
}

/// Start-exclude as the probes see it: `ExcludeEnter`/`ExcludeExit` on 6.19 and 7.x,
/// nothing on 6.15 (inlined). Returns the function's own result: 7.x 0/-EINTR, 6.19
/// 1/0/-EINTR, 6.15 1 (excluded) / 0 (detached).
pub fn exclude_traced(k: &SimKernel, t: &mut Task, mm: &SimMm, idx: u32, ves: &mut Ves) -> i64 {
    let Some(probe) = k.generation.profile().start_exclude else {
        let _ = start_exclude(k, t, mm, idx, ves);
        return i64::from(ves.exclusive);
    };
    let mut entry_refcnt = 0;
    let entry_ts = k.emit(t, || {
        let mut ev = k.event(t, EventKind::ExcludeEnter, probe);
        k.read_vma(&mut ev, idx);
        ev.flags |= flags::VES;
        ev.ves_state = ves.state;
        ev.ves_detaching = u8::from(ves.detaching);
        entry_refcnt = ev.refcnt;
        ev
    });
    let err = start_exclude(k, t, mm, idx, ves);
    let ret = match k.generation.profile() {
        p if p.exclude_state_struct => err,
        // __vma_enter_locked: an error that still left the VMA detached becomes 0.
        _ if err != 0 => {
            if ves.detached {
                0
            } else {
                err
            }
        }
        _ => i64::from(ves.exclusive),
    };
    if !t.quiet {
        k.ring.with(|w| {
            let mut ev = k.event(t, EventKind::ExcludeExit, probe);
            k.read_vma(&mut ev, idx);
            ev.ret = ret;
            ev.flags |= flags::RET | flags::VES | flags::PAIRED;
            ev.ves_state = ves.state;
            ev.ves_detaching = u8::from(ves.detaching);
            // 7.x reads these through the saved `ves`; 6.19 has no struct, so they are
            // derived from the return value (1 = excluded, 0 = detached).
            ev.ves_detached = u8::from(ves.detached);
            ev.ves_exclusive = u8::from(ves.exclusive);
            ev.entry_refcnt = entry_refcnt;
            ev.wait_ns = w.now_ns().saturating_sub(entry_ts);
            w.push(ev);
            if ves.exclusive && !ves.detaching {
                k.vma(idx).excluded_visible.store(true, Ordering::Relaxed);
            }
        });
    }
    ret
}

/// Inline `vma_start_write` / `vma_start_write_killable`: return at once if this mmap
/// write cycle already locked the VMA, else take the slow path.
pub fn vma_start_write(k: &SimKernel, t: &mut Task, mm: &SimMm, idx: u32, state: u32) -> i64 {
    let v = k.vma(idx);
    if v.vm_lock_seq.load(Ordering::Relaxed) == mm.mm_lock_seq.load(Ordering::Relaxed) {
        return 0;
    }
    vma_start_write_slow(k, t, mm, idx, state)
}

/// `__vma_start_write`: record the sequence, exclude readers, store `vm_lock_seq`, end
/// the exclusion. Emits `WriteLockEnter`/`WriteLockExit` (fentry/fexit).
pub fn vma_start_write_slow(k: &SimKernel, t: &mut Task, mm: &SimMm, idx: u32, state: u32) -> i64 {
    let v = k.vma(idx);
    // 7.x: __vma_raw_mm_seqnum(vma); 6.x: the caller passes mm->mm_lock_seq.
    let seq = mm.mm_lock_seq.load(Ordering::Acquire);
    let mut entry_refcnt = 0;
    let entry_ts = k.emit(t, || {
        let mut ev = k.event(t, EventKind::WriteLockEnter, ProbeId::VmaStartWrite);
        k.read_vma(&mut ev, idx);
        ev.arg = if k.generation.profile().writer_takes_state {
            u64::from(state)
        } else {
            u64::from(seq)
        };
        entry_refcnt = ev.refcnt;
        ev
    });
    let mut ves = Ves {
        state,
        ..Ves::default()
    };
    let r = exclude_traced(k, t, mm, idx, &mut ves);
    let err = if r < 0 { r } else { 0 };
    let exit_event = |t: &Task, w: &mut super::ring::RingWriter<'_>, ret: i64| -> u64 {
        let mut ev: Event = k.event(t, EventKind::WriteLockExit, ProbeId::VmaStartWrite);
        k.read_vma(&mut ev, idx);
        // void before 6.19: reported as success, as the eBPF side does.
        ev.ret = ret;
        ev.flags |= flags::RET | flags::PAIRED;
        ev.entry_refcnt = entry_refcnt;
        ev.wait_ns = w.now_ns().saturating_sub(entry_ts);
        if ret == 0 {
            v.locked_visible_seq
                .store(ev.vm_lock_seq, Ordering::Relaxed);
        }
        w.push(ev)
    };
    if err != 0 {
        // The flag is already gone and vm_lock_seq is not updated.
        if !t.quiet {
            k.ring.with(|w| exit_event(t, w, err));
        }
        return err;
    }
    if k.inject(t, Injection::SeqNotStored, idx) {
        let ts = k.ring.with(|w| {
            if ves.exclusive {
                v.excluded_visible.store(false, Ordering::Relaxed);
                end_exclude(k, idx, &mut ves);
            }
            exit_event(t, w, 0)
        });
        k.record_site(Injection::SeqNotStored, ts, idx, mm.addr);
        return 0;
    }
    // WRITE_ONCE(vma->vm_lock_seq, mm_lock_seq)
    v.vm_lock_seq.store(seq, Ordering::Release);
    if ves.exclusive {
        if k.inject(t, Injection::EndExcludeSkipped, idx) {
            // Returned with the flag still set; the simulator removes it right after the
            // sample so the run can go on (the next writer would wait forever).
            let ts = k.ring.with(|w| {
                let ts = exit_event(t, w, 0);
                v.excluded_visible.store(false, Ordering::Relaxed);
                v.vm_refcnt.fetch_sub(k.flag, Ordering::AcqRel);
                ts
            });
            k.record_site(Injection::EndExcludeSkipped, ts, idx, mm.addr);
            return 0;
        }
        // With the ring held only to keep the injected reader's window exact (see
        // `vma_start_read::admit_ignoring_flag`); the kernel's end-exclude is one atomic op.
        k.ring.with(|_| {
            v.excluded_visible.store(false, Ordering::Relaxed);
            end_exclude(k, idx, &mut ves);
        });
        if ves.detached {
            SimChecks::bump(&k.checks.write_end_exclude_detached);
        }
    }
    if !k.is_write_locked(v, mm) {
        SimChecks::bump(&k.checks.write_lock_not_taken);
    }
    if !t.quiet {
        k.ring.with(|w| exit_event(t, w, 0));
    }
    0
}
