//! The writer side: `__vma_start_write`, start-exclude (`__vma_start_exclude_readers`
//! 7.x, `__vma_enter_locked` 6.19) and the detach functions (`vma_mark_detached` 6.x,
//! `__vma_exclude_readers_for_detach` 7.x).
//!
//! Each function has an entry and a return half shared by its fentry/fexit and
//! kprobe/kretprobe programs. The entry saves what the return needs (timestamp, refcount,
//! and for kretprobes the arguments) in an in-flight map keyed by `pid_tgid`, one map per
//! function family because a writer is inside `__vma_start_write` and start-exclude at
//! once. Entries also register the task in `EXCLUDERS` so `rcuwait_wake_up` can recognise
//! a wake-up of this mm's writer.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use vmatrace_common::{Counter, EventKind, event::ProbeId, event::flags};

use crate::{
    emit::{count, header, now, paired, send},
    filter::traced,
    globals::{GEN_6_15, GEN_6_19, GEN_7_0, generation},
    inflight::{remember, take},
    kernel::{Reads, fill_vma, int_ret, mm_of, read_ves, writer_wait_of},
    maps::{EXCLUDERS, Excluder, INFLIGHT_DETACH, INFLIGHT_EXCLUDE, INFLIGHT_WRITE, Inflight},
};

/// This task may now wait on `vma->vm_mm->vma_writer_wait`.
#[inline(always)]
fn register_excluder(mm: u64, vma: u64, pid_tgid: u64) {
    let w = writer_wait_of(mm);
    if w == 0 {
        return;
    }
    let x = Excluder {
        vma,
        pid_tgid,
        active: 1,
        pad: 0,
    };
    if EXCLUDERS.insert(w, x, 0).is_err() {
        count(Counter::InflightMapFull);
    }
}

/// The exclusion (if any) is over: nobody waits on this mm's rcuwait any more. The entry
/// stays (marked inactive) so a late `rcuwait_wake_up` fexit can still tell that `w` is a
/// writer wait.
#[inline(always)]
fn retire_excluder(mm: u64, pid_tgid: u64) {
    let w = writer_wait_of(mm);
    if w == 0 {
        return;
    }
    if let Some(x) = EXCLUDERS.get_ptr_mut(w) {
        // SAFETY: a value pointer from the lookup; only this field is written.
        unsafe {
            if (*x).pid_tgid == pid_tgid {
                (*x).active = 0;
            }
        }
    }
}

// ---------------------------------------------------------------- __vma_start_write

/// `__vma_start_write(vma, seq)` (6.15–6.18), `(vma, seq, state)` (6.19),
/// `(vma, state)` (7.x): `arg` = the seq argument before 6.19, the state after.
#[inline(always)]
fn write_enter(vma: u64, a1: u64, a2: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let mut r = Reads::new();
    let mut ev = header(
        EventKind::WriteLockEnter,
        ProbeId::VmaStartWrite,
        pid_tgid,
        now(),
    );
    fill_vma(&mut ev, vma, &mut r);
    ev.arg = match generation() {
        GEN_6_19 => a2 as u32 as u64,
        GEN_7_0 => a1 as u32 as u64,
        _ => a1 as u32 as u64,
    };
    register_excluder(ev.mm, vma, pid_tgid);
    send(&mut ev, r);
    // The entry time is taken last, after this program's own work (reads, send), so
    // the return's `wait_ns` measures the kernel function, not the tracer.
    remember(
        &INFLIGHT_WRITE,
        pid_tgid,
        &Inflight {
            ts: now(),
            ptr: vma,
            vma,
            arg1: a1,
            arg2: a2,
            refcnt: ev.refcnt,
            pad: 0,
        },
    );
}

/// Return of `__vma_start_write`: `vma` from the fexit arguments, or 0 for the kretprobe
/// (taken from the saved entry).
#[inline(always)]
fn write_exit(vma_arg: u64, raw_ret: u64) {
    // First thing at return, so `wait_ns` stops where the kernel function did.
    let ts = now();
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let entry = take(&INFLIGHT_WRITE, pid_tgid);
    let vma = match (vma_arg, &entry) {
        (0, Some(e)) => e.ptr,
        _ => vma_arg,
    };
    let mut r = Reads::new();
    let mut ev = header(
        EventKind::WriteLockExit,
        ProbeId::VmaStartWrite,
        pid_tgid,
        ts,
    );
    fill_vma(&mut ev, vma, &mut r);
    // void before 6.19: the register holds garbage, report success.
    ev.ret = if generation() == GEN_6_15 {
        0
    } else {
        int_ret(raw_ret)
    };
    ev.flags |= flags::RET;
    if let Some(e) = entry {
        paired(&mut ev, e.ts, e.refcnt);
    }
    retire_excluder(ev.mm, pid_tgid);
    send(&mut ev, r);
}

#[fentry]
pub fn vsw_fentry(ctx: FEntryContext) -> u32 {
    // The verifier rejects reading a BTF argument the function does not have: only
    // 6.19's __vma_start_write(vma, seq, state) has a third one.
    let a2 = if generation() == GEN_6_19 {
        ctx.arg::<u64>(2)
    } else {
        0
    };
    write_enter(ctx.arg::<u64>(0), ctx.arg::<u64>(1), a2);
    0
}

#[fexit]
pub fn vsw_fexit(ctx: FExitContext) -> u32 {
    let ret = ctx.ret::<u64>().unwrap_or(0);
    write_exit(ctx.arg::<u64>(0), ret);
    0
}

#[kprobe]
pub fn vsw_kprobe(ctx: ProbeContext) -> u32 {
    write_enter(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u64>(1).unwrap_or(0),
        ctx.arg::<u64>(2).unwrap_or(0),
    );
    0
}

#[kretprobe]
pub fn vsw_kretprobe(ctx: RetProbeContext) -> u32 {
    write_exit(0, ctx.ret::<u64>());
    0
}

// ------------------------------------------------------- __vma_start_exclude_readers

/// Entry of `__vma_start_exclude_readers(ves)` (7.x): all five `ves` fields (the outputs
/// must still be 0 here).
#[inline(always)]
fn exclude_enter_ves(ves: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let mut r = Reads::new();
    let mut ev = header(
        EventKind::ExcludeEnter,
        ProbeId::VmaStartExcludeReaders,
        pid_tgid,
        now(),
    );
    let s = read_ves(ves, &mut r);
    ev.ves_state = s.state;
    ev.ves_detaching = s.detaching;
    ev.ves_detached = s.detached;
    ev.ves_exclusive = s.exclusive;
    ev.flags |= flags::VES;
    fill_vma(&mut ev, s.vma, &mut r);
    register_excluder(ev.mm, s.vma, pid_tgid);
    send(&mut ev, r);
    // The entry time is taken last, after this program's own work (reads, send), so
    // the return's `wait_ns` measures the kernel function, not the tracer.
    remember(
        &INFLIGHT_EXCLUDE,
        pid_tgid,
        &Inflight {
            ts: now(),
            ptr: ves,
            vma: s.vma,
            arg1: s.state as u64,
            arg2: s.detaching as u64,
            refcnt: ev.refcnt,
            pad: 0,
        },
    );
}

/// Return of `__vma_start_exclude_readers`: the outputs `detached`/`exclusive` are read
/// through `ves` (fexit argument, or the pointer saved at entry: the struct lives in the
/// caller's frame, which is still there).
#[inline(always)]
fn exclude_exit_ves(ves_arg: u64, raw_ret: u64) {
    // First thing at return, so `wait_ns` stops where the kernel function did.
    let ts = now();
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let entry = take(&INFLIGHT_EXCLUDE, pid_tgid);
    let ves = match (ves_arg, &entry) {
        (0, Some(e)) => e.ptr,
        _ => ves_arg,
    };
    let mut r = Reads::new();
    let mut ev = header(
        EventKind::ExcludeExit,
        ProbeId::VmaStartExcludeReaders,
        pid_tgid,
        ts,
    );
    if ves != 0 {
        let s = read_ves(ves, &mut r);
        ev.ves_state = s.state;
        ev.ves_detaching = s.detaching;
        ev.ves_detached = s.detached;
        ev.ves_exclusive = s.exclusive;
        ev.flags |= flags::VES;
        fill_vma(&mut ev, s.vma, &mut r);
    }
    ev.ret = int_ret(raw_ret);
    ev.flags |= flags::RET;
    if let Some(e) = entry {
        paired(&mut ev, e.ts, e.refcnt);
    }
    retire_excluder(ev.mm, pid_tgid);
    send(&mut ev, r);
}

#[fentry]
pub fn vser_fentry(ctx: FEntryContext) -> u32 {
    exclude_enter_ves(ctx.arg::<u64>(0));
    0
}

#[fexit]
pub fn vser_fexit(ctx: FExitContext) -> u32 {
    let ret = ctx.ret::<u64>().unwrap_or(0);
    exclude_exit_ves(ctx.arg::<u64>(0), ret);
    0
}

#[kprobe]
pub fn vser_kprobe(ctx: ProbeContext) -> u32 {
    exclude_enter_ves(ctx.arg::<u64>(0).unwrap_or(0));
    0
}

#[kretprobe]
pub fn vser_kretprobe(ctx: RetProbeContext) -> u32 {
    exclude_exit_ves(0, ctx.ret::<u64>());
    0
}

// ---------------------------------------------------------------- __vma_enter_locked

/// Entry of `__vma_enter_locked(vma, bool detaching, int state)` (6.19; notrace, so
/// kprobe only). `state`/`detaching` go into the `ves_*` fields.
#[kprobe]
pub fn vel_kprobe(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let vma = ctx.arg::<u64>(0).unwrap_or(0);
    let detaching = ctx.arg::<u64>(1).unwrap_or(0) as u8 & 1;
    let state = ctx.arg::<u64>(2).unwrap_or(0) as u32;
    let mut r = Reads::new();
    let mut ev = header(
        EventKind::ExcludeEnter,
        ProbeId::VmaEnterLocked,
        pid_tgid,
        now(),
    );
    fill_vma(&mut ev, vma, &mut r);
    ev.ves_state = state;
    ev.ves_detaching = detaching;
    ev.flags |= flags::VES;
    register_excluder(ev.mm, vma, pid_tgid);
    send(&mut ev, r);
    // The entry time is taken last, after this program's own work (reads, send), so
    // the return's `wait_ns` measures the kernel function, not the tracer.
    remember(
        &INFLIGHT_EXCLUDE,
        pid_tgid,
        &Inflight {
            ts: now(),
            ptr: vma,
            vma,
            arg1: state as u64,
            arg2: detaching as u64,
            refcnt: ev.refcnt,
            pad: 0,
        },
    );
    0
}

/// Return of `__vma_enter_locked`: 1 = readers excluded, 0 = detached, -EINTR. The 7.x
/// output fields are derived from it (`exclusive` = ret 1, `detached` = ret 0) so both
/// generations read the same way.
#[kretprobe]
pub fn vel_kretprobe(ctx: RetProbeContext) -> u32 {
    let ts = now();
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let ret = int_ret(ctx.ret::<u64>());
    let entry = take(&INFLIGHT_EXCLUDE, pid_tgid);
    let mut r = Reads::new();
    let mut ev = header(
        EventKind::ExcludeExit,
        ProbeId::VmaEnterLocked,
        pid_tgid,
        ts,
    );
    if let Some(e) = entry {
        fill_vma(&mut ev, e.vma, &mut r);
        ev.ves_state = e.arg1 as u32;
        ev.ves_detaching = e.arg2 as u8;
        ev.ves_exclusive = (ret == 1) as u8;
        ev.ves_detached = (ret == 0) as u8;
        ev.flags |= flags::VES;
        paired(&mut ev, e.ts, e.refcnt);
    }
    ev.ret = ret;
    ev.flags |= flags::RET;
    retire_excluder(ev.mm, pid_tgid);
    send(&mut ev, r);
    0
}

// ------------------------------------------------------------------------- detach

#[inline(always)]
fn detach_enter(vma: u64, probe: ProbeId) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let mut r = Reads::new();
    let mut ev = header(EventKind::DetachEnter, probe, pid_tgid, now());
    fill_vma(&mut ev, vma, &mut r);
    register_excluder(ev.mm, vma, pid_tgid);
    send(&mut ev, r);
    // The entry time is taken last, after this program's own work (reads, send), so
    // the return's `wait_ns` measures the kernel function, not the tracer.
    remember(
        &INFLIGHT_DETACH,
        pid_tgid,
        &Inflight {
            ts: now(),
            ptr: vma,
            vma,
            arg1: 0,
            arg2: 0,
            refcnt: ev.refcnt,
            pad: 0,
        },
    );
}

#[inline(always)]
fn detach_exit(vma_arg: u64, probe: ProbeId) {
    // First thing at return, so `wait_ns` stops where the kernel function did.
    let ts = now();
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let entry = take(&INFLIGHT_DETACH, pid_tgid);
    let vma = match (vma_arg, &entry) {
        (0, Some(e)) => e.ptr,
        _ => vma_arg,
    };
    let mut r = Reads::new();
    let mut ev = header(EventKind::DetachExit, probe, pid_tgid, ts);
    fill_vma(&mut ev, vma, &mut r);
    if let Some(e) = entry {
        paired(&mut ev, e.ts, e.refcnt);
    }
    // The VMA is detached but not freed (RCU-typesafe slab): its vm_mm is still valid.
    let mm = if ev.mm != 0 {
        ev.mm
    } else {
        mm_of(vma, &mut r)
    };
    retire_excluder(mm, pid_tgid);
    send(&mut ev, r);
}

#[fentry]
pub fn vmd_fentry(ctx: FEntryContext) -> u32 {
    detach_enter(ctx.arg::<u64>(0), ProbeId::VmaMarkDetached);
    0
}

#[fexit]
pub fn vmd_fexit(ctx: FExitContext) -> u32 {
    detach_exit(ctx.arg::<u64>(0), ProbeId::VmaMarkDetached);
    0
}

#[kprobe]
pub fn vmd_kprobe(ctx: ProbeContext) -> u32 {
    detach_enter(ctx.arg::<u64>(0).unwrap_or(0), ProbeId::VmaMarkDetached);
    0
}

#[kretprobe]
pub fn vmd_kretprobe(_ctx: RetProbeContext) -> u32 {
    detach_exit(0, ProbeId::VmaMarkDetached);
    0
}

#[fentry]
pub fn verd_fentry(ctx: FEntryContext) -> u32 {
    detach_enter(ctx.arg::<u64>(0), ProbeId::VmaExcludeReadersForDetach);
    0
}

#[fexit]
pub fn verd_fexit(ctx: FExitContext) -> u32 {
    detach_exit(ctx.arg::<u64>(0), ProbeId::VmaExcludeReadersForDetach);
    0
}

#[kprobe]
pub fn verd_kprobe(ctx: ProbeContext) -> u32 {
    detach_enter(
        ctx.arg::<u64>(0).unwrap_or(0),
        ProbeId::VmaExcludeReadersForDetach,
    );
    0
}

#[kretprobe]
pub fn verd_kretprobe(_ctx: RetProbeContext) -> u32 {
    detach_exit(0, ProbeId::VmaExcludeReadersForDetach);
    0
}
