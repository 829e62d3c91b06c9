//! Writer wake-ups: `rcuwait_wake_up(w)` where `w` is some mm's `vma_writer_wait`.
//!
//! `rcuwait_wake_up` serves every rcuwait in the kernel; `EXCLUDERS` (filled by the
//! writer/detach entries) tells which `w` belong to an excluding task. The event is not
//! subject to the task filters: the waker is usually a reader of another filter
//! identity, and the entry exists only because the excluding task passed them.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use vmatrace_common::{Counter, EventKind, event::ProbeId, event::flags};

use crate::{
    emit::{count, header, now, send},
    maps::{EXCLUDERS, Excluder, INFLIGHT_WAKE, Inflight, excluding},
    struct_reads::{Reads, fill_vma, int_ret},
};

#[inline(always)]
fn excluder(w: u64) -> Option<Excluder> {
    if w == 0 {
        return None;
    }
    // SAFETY: a value pointer from the lookup. `ready` is read first: the excluder
    // rewrites the element in place and sets `ready` last (`write_lock::register_excluder`).
    EXCLUDERS.get_ptr(w).map(|p| unsafe {
        let ready = core::ptr::read_volatile(&raw const (*p).ready);
        Excluder {
            vma: core::ptr::read_volatile(&raw const (*p).vma),
            pid_tgid: core::ptr::read_volatile(&raw const (*p).pid_tgid),
            ready,
            family: core::ptr::read_volatile(&raw const (*p).family),
        }
    })
}

#[inline(always)]
fn emit_wake(pid_tgid: u64, ts: u64, w: u64, x: &Excluder, ret: Option<i64>) {
    // Only a call that finds (or wakes) a task counts as a wake-up; a call with nobody
    // registered yet is still streamed, because the put that made it did its duty.
    if ret != Some(0) {
        count(Counter::WriterWake);
    }
    let mut r = Reads::<false>::new();
    let mut ev = header::<false>(EventKind::WriterWake, ProbeId::RcuwaitWakeUp, pid_tgid, ts);
    // refcnt here is the value the waker's put left: F or F+1 for a real wake-up.
    fill_vma(&mut ev, x.vma, &mut r);
    ev.arg = w;
    if let Some(ret) = ret {
        ev.ret = ret;
        ev.flags |= flags::RET;
    }
    send(&mut ev, r);
}

/// Entry: emitted before the wake-up happens, so the record is ordered before the woken
/// writer's return. Only while the writer is (still) excluding. `ret` says whether a task
/// was registered in `w->task`: 0 is the legal race where the last reader's put comes
/// after the excluder added the flag but before it entered `rcuwait_wait_event` — the
/// kernel wakes nobody and the excluder finds its target on its first check. The event is
/// streamed anyway: the validator's lost-wake-up rule asks whether the put *called*
/// `rcuwait_wake_up`, not whether somebody was asleep.
#[kprobe]
pub fn rww_kprobe(ctx: ProbeContext) -> u32 {
    let w = ctx.arg::<u64>(0).unwrap_or(0);
    let Some(x) = excluder(w) else {
        return 0;
    };
    if !excluding(&x) {
        return 0;
    }
    let mut r = Reads::<false>::new();
    // `struct rcuwait { struct task_struct *task; }`
    let task = r.at::<u64>(w, 0);
    let pid_tgid = bpf_get_current_pid_tgid();
    let ts = now();
    emit_wake(pid_tgid, ts, w, &x, Some(i64::from(task != 0)));
    if task == 0 {
        return 0;
    }
    let e = Inflight {
        ts,
        ptr: w,
        vma: x.vma,
        arg1: task,
        ..Inflight::NONE
    };
    if INFLIGHT_WAKE.insert(pid_tgid, e, 0).is_err() {
        count(Counter::InflightMapFull);
    }
    0
}

/// Return, paired with a wake the kprobe emitted: 0 means the writer was already
/// running (`WriterWakeNoop`). Calls on other rcuwaits have no entry and are ignored.
#[kretprobe]
pub fn rww_kretprobe(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if INFLIGHT_WAKE.get_ptr(pid_tgid).is_none() {
        return 0;
    }
    let _ = INFLIGHT_WAKE.remove(pid_tgid);
    if int_ret(ctx.ret::<u64>()) == 0 {
        count(Counter::WriterWakeNoop);
    }
    0
}

/// fexit variant: `ret` = 1 means a task was woken. The writer may already have returned
/// (its exclusion then no longer `excluding`, the element still present), so only the return value
/// decides. Records can be ordered after the woken writer's return: prefer the kprobe.
#[fexit]
pub fn rww_fexit(ctx: FExitContext) -> u32 {
    let w = ctx.arg::<u64>(0);
    let Some(x) = excluder(w) else {
        return 0;
    };
    let ret = int_ret(ctx.ret::<u64>().unwrap_or(0));
    // ret 0 while the exclusion is active: a call that found nobody registered (see the
    // kprobe); ret 0 after it ended is some unrelated late call.
    if ret == 0 && !excluding(&x) {
        return 0;
    }
    emit_wake(bpf_get_current_pid_tgid(), now(), w, &x, Some(ret));
    0
}
