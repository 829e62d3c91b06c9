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
    maps::LruHashMap,
    programs::{
        FEntryContext, FExitContext, ProbeContext, RetProbeContext, tracing::StackIdContext,
    },
};
use vmatrace_common::{Counter, Event, EventKind, event::ProbeId, event::flags};

use crate::{
    emit::{count, header, now, paired, send, slow_wait},
    filter::traced,
    globals::{GEN_6_15, GEN_6_19, GEN_7_0, generation, global},
    inflight::{note_outer_lost, remember, take, take_outer},
    maps::{
        EXCLUDERS, Excluder, FAMILY_DETACH, FAMILY_EXCLUDE, FAMILY_WRITE, INFLIGHT_DETACH,
        INFLIGHT_EXCLUDE, INFLIGHT_WRITE, Inflight,
    },
    struct_reads::{Reads, Ves, fill_vma, int_ret, read_head, read_ves, writer_wait_of},
};

/// This task may now wait on `vma->vm_mm->vma_writer_wait`, inside a call whose
/// in-flight element is in `family`'s map.
#[inline(always)]
fn register_excluder(mm: u64, vma: u64, pid_tgid: u64, family: u32) {
    let w = writer_wait_of(mm);
    if w == 0 {
        return;
    }
    let x = Excluder {
        vma,
        pid_tgid,
        ready: 1,
        family,
    };
    // One element per mm, rewritten in place by each exclusion (the mmap write lock
    // serialises excluders of one mm): a lockless lookup instead of an LRU insert, which
    // takes the bucket and LRU locks, on every write lock. `rcuwait_wake_up` programs read
    // the element concurrently, `ready` first (`wake::excluder`): it is cleared before
    // and set after the other fields, in program order (volatile stores, and x86 keeps
    // stores in order), so a reader that sees `ready` = 1 sees this exclusion's fields.
    // Nothing is undone at the return: the call's in-flight element says whether the
    // exclusion is still in progress (`maps::excluding`).
    if let Some(p) = EXCLUDERS.get_ptr_mut(w) {
        // SAFETY: a value pointer from the lookup; only this mm's excluder writes it.
        unsafe {
            core::ptr::write_volatile(&raw mut (*p).ready, 0);
            core::ptr::write_volatile(&raw mut (*p).vma, vma);
            core::ptr::write_volatile(&raw mut (*p).pid_tgid, pid_tgid);
            core::ptr::write_volatile(&raw mut (*p).family, family);
            core::ptr::write_volatile(&raw mut (*p).ready, 1);
        }
        return;
    }
    if EXCLUDERS.insert(w, x, 0).is_err() {
        count(Counter::InflightMapFull);
    }
}

/// Whether `__vma_start_write`'s entry is the one its start-exclude saved (7.x: the write
/// lock has no entry program, `CONFIG.write_entry_from_exclude`; a verifier constant).
#[inline(always)]
fn write_entry_from_exclude() -> bool {
    global!(CONFIG.write_entry_from_exclude) != 0
}

/// Whether entry programs stream their own event (`--stream-entries`) instead of folding
/// it into the return's (a verifier constant: the other branch is pruned).
#[inline(always)]
fn streams_entries() -> bool {
    global!(CONFIG.stream_entries) != 0
}

/// The common body of every entry half: the task may now wait on its mm's rcuwait (when
/// the function `waits` for readers itself), and the entry is saved for the return.
///
/// By default nothing is streamed here: the entry saves the VMA's `vm_refcnt` and
/// `vm_lock_seq`, and the return's event carries them (`flags::FOLDED`; userspace unfolds
/// it, `Event::unfold`). That halves the events of the writer path and makes the entry
/// as cheap as a map update. With `--stream-entries` the entry sends its own event
/// (`kind`, filled by `fill`), so a wait still in progress is visible before it ends.
///
/// The entry time is taken last, after this program's own work, so the return's
/// `wait_ns` measures the kernel function, not the tracer.
#[inline(always)]
fn entry<const D: bool>(
    (map, family): (&LruHashMap<u64, Inflight>, u32),
    pid_tgid: u64,
    (kind, probe): (EventKind, ProbeId),
    vma: u64,
    mut saved: Inflight,
    waits: bool,
    mut r: Reads<D>,
    fill: impl FnOnce(&mut Event, &mut Reads<D>),
) {
    let h = read_head(vma, &mut r);
    if waits {
        register_excluder(h.mm, vma, pid_tgid, family);
    }
    saved.refcnt = h.refcnt;
    if streams_entries() {
        let mut ev = header::<D>(kind, probe, pid_tgid, now());
        fill(&mut ev, &mut r);
        send(&mut ev, r);
    } else {
        saved.lock_seq = h.lock_seq;
        saved.folded = 1;
        if r.failed {
            count(Counter::ProbeReadFailed);
            saved.read_failed = 1;
        }
    }
    saved.ts = now();
    remember(map, pid_tgid, &saved);
}

/// What a return half starts from.
struct Exit<const D: bool> {
    pid_tgid: u64,
    /// This thread's saved entry, or `Inflight::NONE`.
    entry: Inflight,
    /// The pointer argument: from the fexit arguments, or (kretprobe: `ptr_arg` 0) the
    /// one saved at entry.
    ptr: u64,
    /// The event, header filled in with the return's time.
    ev: Event,
    r: Reads<D>,
}

/// The common start of every return half: the time first (so `wait_ns` stops where the
/// kernel function did), then the filter, then this thread's saved entry (if any), then
/// the event's header. With direct reads (`D`, fexit) the pointer is always the typed
/// argument: the saved one went through a map and is a plain number to the verifier.
#[inline(always)]
fn begin_exit<const D: bool>(
    ptr_arg: u64,
    kind: EventKind,
    probe: ProbeId,
    take_entry: impl FnOnce(u64) -> Inflight,
) -> Option<Exit<D>> {
    let ts = now();
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return None;
    }
    let entry = take_entry(pid_tgid);
    let ptr = if !D && ptr_arg == 0 && entry.found() {
        entry.ptr
    } else {
        ptr_arg
    };
    Some(Exit {
        pid_tgid,
        entry,
        ptr,
        ev: header::<D>(kind, probe, pid_tgid, ts),
        r: Reads::new(),
    })
}

/// The common end of every return half: pairing data (folded into this event unless the
/// entry streamed its own), then the event goes out. Nothing to undo in `EXCLUDERS`:
/// taking the entry ended the exclusion there (`maps::excluding`).
#[inline(always)]
fn finish_exit<const D: bool, C: StackIdContext>(
    ctx: &C,
    ev: &mut Event,
    r: Reads<D>,
    entry: Inflight,
) {
    if entry.found() {
        paired(ev, entry.ts, entry.refcnt);
        if entry.folded != 0 {
            ev.flags |= flags::FOLDED;
            ev.arg = (u64::from(entry.lock_seq) << 32) | u64::from(entry.entry_arg);
            if entry.read_failed != 0 {
                ev.flags |= flags::READ_FAILED;
            }
        }
    }
    slow_wait(ctx, ev);
    send(ev, r);
}

/// Whether `__vma_start_write` waits for readers itself, so its entry must register the
/// task in `EXCLUDERS`. Before 7.0 the wait is inlined into it (6.19:
/// into the notrace `__vma_enter_locked`); on 7.x it is left to
/// `__vma_start_exclude_readers`, whose own hooks register: doing it twice per write lock
/// cost a map update per call for nothing.
#[inline(always)]
fn write_lock_waits() -> bool {
    generation() != GEN_7_0
}

/// What an entry saves before its timestamp and refcount are known.
#[inline(always)]
const fn saved(ptr: u64, vma: u64, arg1: u64, arg2: u64) -> Inflight {
    Inflight {
        ptr,
        vma,
        arg1,
        arg2,
        ..Inflight::NONE
    }
}

/// The `ves` fields and its VMA into the event (sets `VES`).
#[inline(always)]
fn put_ves<const D: bool>(ev: &mut Event, s: &Ves, r: &mut Reads<D>) {
    ev.ves_state = s.state;
    ev.ves_detaching = s.detaching;
    ev.ves_detached = s.detached;
    ev.ves_exclusive = s.exclusive;
    ev.flags |= flags::VES;
    fill_vma(ev, s.vma, r);
}

// ---------------------------------------------------------------- __vma_start_write

/// `__vma_start_write(vma, seq)` (6.15–6.18), `(vma, seq, state)` (6.19),
/// `(vma, state)` (7.x): `arg` = the seq argument before 6.19, the state after.
#[inline(always)]
fn write_enter<const D: bool>(vma: u64, a1: u64, a2: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let arg = match generation() {
        GEN_6_19 => a2 as u32,
        _ => a1 as u32,
    };
    let mut keep = saved(vma, vma, a1, a2);
    keep.entry_arg = arg;
    entry::<D>(
        (&INFLIGHT_WRITE, FAMILY_WRITE),
        pid_tgid,
        (EventKind::WriteLockEnter, ProbeId::VmaStartWrite),
        vma,
        keep,
        write_lock_waits(),
        Reads::new(),
        |ev, r| {
            fill_vma(ev, vma, r);
            ev.arg = u64::from(arg);
        },
    );
}

/// Return of `__vma_start_write`: `vma` from the fexit arguments, or 0 for the kretprobe
/// (taken from the saved entry).
#[inline(always)]
fn write_exit<const D: bool, C: StackIdContext>(ctx: &C, vma_arg: u64, raw_ret: u64) {
    let Some(Exit {
        entry,
        ptr: vma,
        mut ev,
        mut r,
        ..
    }) = begin_exit::<D>(
        vma_arg,
        EventKind::WriteLockExit,
        ProbeId::VmaStartWrite,
        |pid_tgid| {
            if write_entry_from_exclude() {
                take_outer(&INFLIGHT_EXCLUDE, pid_tgid, vma_arg)
            } else {
                take(&INFLIGHT_WRITE, pid_tgid)
            }
        },
    )
    else {
        return;
    };
    fill_vma(&mut ev, vma, &mut r);
    // void before 6.19: the register holds garbage, report success.
    ev.ret = if generation() == GEN_6_15 {
        0
    } else {
        int_ret(raw_ret)
    };
    ev.flags |= flags::RET;
    finish_exit(ctx, &mut ev, r, entry);
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
    write_enter::<true>(ctx.arg::<u64>(0), ctx.arg::<u64>(1), a2);
    0
}

#[fexit]
pub fn vsw_fexit(ctx: FExitContext) -> u32 {
    let ret = ctx.ret::<u64>().unwrap_or(0);
    write_exit::<true, _>(&ctx, ctx.arg::<u64>(0), ret);
    0
}

#[kprobe]
pub fn vsw_kprobe(ctx: ProbeContext) -> u32 {
    write_enter::<false>(
        ctx.arg::<u64>(0).unwrap_or(0),
        ctx.arg::<u64>(1).unwrap_or(0),
        ctx.arg::<u64>(2).unwrap_or(0),
    );
    0
}

#[kretprobe]
pub fn vsw_kretprobe(ctx: RetProbeContext) -> u32 {
    write_exit::<false, _>(&ctx, 0, ctx.ret::<u64>());
    0
}

// ------------------------------------------------------- __vma_start_exclude_readers

/// Entry of `__vma_start_exclude_readers(ves)` (7.x): all five `ves` fields (the outputs
/// must still be 0 here).
#[inline(always)]
fn exclude_enter_ves<const D: bool>(ves: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let mut r = Reads::<D>::new();
    let s = read_ves(ves, &mut r);
    let mut keep = saved(ves, s.vma, u64::from(s.state), u64::from(s.detaching));
    // `__vma_start_write`'s call (not the detach's): also that call's entry.
    keep.outer = u32::from(write_entry_from_exclude() && s.detaching == 0);
    entry::<D>(
        (&INFLIGHT_EXCLUDE, FAMILY_EXCLUDE),
        pid_tgid,
        (EventKind::ExcludeEnter, ProbeId::VmaStartExcludeReaders),
        s.vma,
        keep,
        true,
        r,
        |ev, r| put_ves(ev, &s, r),
    );
}

/// Return of `__vma_start_exclude_readers`: the outputs `detached`/`exclusive` are read
/// through `ves` (fexit argument, or the pointer saved at entry: the struct lives in the
/// caller's frame, which is still there).
#[inline(always)]
fn exclude_exit_ves<const D: bool, C: StackIdContext>(ctx: &C, ves_arg: u64, raw_ret: u64) {
    let Some(Exit {
        pid_tgid,
        entry,
        ptr: ves,
        mut ev,
        mut r,
    }) = begin_exit::<D>(
        ves_arg,
        EventKind::ExcludeExit,
        ProbeId::VmaStartExcludeReaders,
        |pid_tgid| take(&INFLIGHT_EXCLUDE, pid_tgid),
    )
    else {
        return;
    };
    if ves != 0 {
        let s = read_ves(ves, &mut r);
        put_ves(&mut ev, &s, &mut r);
        if !entry.found() && write_entry_from_exclude() && s.detaching == 0 {
            note_outer_lost(&INFLIGHT_EXCLUDE, pid_tgid);
        }
    }
    ev.ret = int_ret(raw_ret);
    ev.flags |= flags::RET;
    finish_exit(ctx, &mut ev, r, entry);
}

#[fentry]
pub fn vser_fentry(ctx: FEntryContext) -> u32 {
    exclude_enter_ves::<true>(ctx.arg::<u64>(0));
    0
}

#[fexit]
pub fn vser_fexit(ctx: FExitContext) -> u32 {
    let ret = ctx.ret::<u64>().unwrap_or(0);
    exclude_exit_ves::<true, _>(&ctx, ctx.arg::<u64>(0), ret);
    0
}

#[kprobe]
pub fn vser_kprobe(ctx: ProbeContext) -> u32 {
    exclude_enter_ves::<false>(ctx.arg::<u64>(0).unwrap_or(0));
    0
}

#[kretprobe]
pub fn vser_kretprobe(ctx: RetProbeContext) -> u32 {
    exclude_exit_ves::<false, _>(&ctx, 0, ctx.ret::<u64>());
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
    entry::<false>(
        (&INFLIGHT_EXCLUDE, FAMILY_EXCLUDE),
        pid_tgid,
        (EventKind::ExcludeEnter, ProbeId::VmaEnterLocked),
        vma,
        saved(vma, vma, state as u64, detaching as u64),
        true,
        Reads::new(),
        |ev, r| {
            fill_vma(ev, vma, r);
            ev.ves_state = state;
            ev.ves_detaching = detaching;
            ev.flags |= flags::VES;
        },
    );
    0
}

/// Return of `__vma_enter_locked`: 1 = readers excluded, 0 = detached, -EINTR. The 7.x
/// output fields are derived from it (`exclusive` = ret 1, `detached` = ret 0) so both
/// generations read the same way.
#[kretprobe]
pub fn vel_kretprobe(ctx: RetProbeContext) -> u32 {
    let Some(Exit {
        entry,
        mut ev,
        mut r,
        ..
    }) = begin_exit::<false>(
        0,
        EventKind::ExcludeExit,
        ProbeId::VmaEnterLocked,
        |pid_tgid| take(&INFLIGHT_EXCLUDE, pid_tgid),
    )
    else {
        return 0;
    };
    let ret = int_ret(ctx.ret::<u64>());
    if entry.found() {
        let e = entry;
        fill_vma(&mut ev, e.vma, &mut r);
        ev.ves_state = e.arg1 as u32;
        ev.ves_detaching = e.arg2 as u8;
        ev.ves_exclusive = (ret == 1) as u8;
        ev.ves_detached = (ret == 0) as u8;
        ev.flags |= flags::VES;
    }
    ev.ret = ret;
    ev.flags |= flags::RET;
    finish_exit(&ctx, &mut ev, r, entry);
    0
}

// ------------------------------------------------------------------------- detach

#[inline(always)]
fn detach_enter<const D: bool>(vma: u64, probe: ProbeId) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    entry::<D>(
        (&INFLIGHT_DETACH, FAMILY_DETACH),
        pid_tgid,
        (EventKind::DetachEnter, probe),
        vma,
        saved(vma, vma, 0, 0),
        true,
        Reads::new(),
        |ev, r| fill_vma(ev, vma, r),
    );
}

#[inline(always)]
fn detach_exit<const D: bool, C: StackIdContext>(ctx: &C, vma_arg: u64, probe: ProbeId) {
    let Some(Exit {
        entry,
        ptr: vma,
        mut ev,
        mut r,
        ..
    }) = begin_exit::<D>(vma_arg, EventKind::DetachExit, probe, |pid_tgid| {
        take(&INFLIGHT_DETACH, pid_tgid)
    })
    else {
        return;
    };
    fill_vma(&mut ev, vma, &mut r);
    finish_exit(ctx, &mut ev, r, entry);
}

#[fentry]
pub fn vmd_fentry(ctx: FEntryContext) -> u32 {
    detach_enter::<true>(ctx.arg::<u64>(0), ProbeId::VmaMarkDetached);
    0
}

#[fexit]
pub fn vmd_fexit(ctx: FExitContext) -> u32 {
    detach_exit::<true, _>(&ctx, ctx.arg::<u64>(0), ProbeId::VmaMarkDetached);
    0
}

#[kprobe]
pub fn vmd_kprobe(ctx: ProbeContext) -> u32 {
    detach_enter::<false>(ctx.arg::<u64>(0).unwrap_or(0), ProbeId::VmaMarkDetached);
    0
}

#[kretprobe]
pub fn vmd_kretprobe(ctx: RetProbeContext) -> u32 {
    detach_exit::<false, _>(&ctx, 0, ProbeId::VmaMarkDetached);
    0
}

#[fentry]
pub fn verd_fentry(ctx: FEntryContext) -> u32 {
    detach_enter::<true>(ctx.arg::<u64>(0), ProbeId::VmaExcludeReadersForDetach);
    0
}

#[fexit]
pub fn verd_fexit(ctx: FExitContext) -> u32 {
    detach_exit::<true, _>(&ctx, ctx.arg::<u64>(0), ProbeId::VmaExcludeReadersForDetach);
    0
}

#[kprobe]
pub fn verd_kprobe(ctx: ProbeContext) -> u32 {
    detach_enter::<false>(
        ctx.arg::<u64>(0).unwrap_or(0),
        ProbeId::VmaExcludeReadersForDetach,
    );
    0
}

#[kretprobe]
pub fn verd_kretprobe(ctx: RetProbeContext) -> u32 {
    detach_exit::<false, _>(&ctx, 0, ProbeId::VmaExcludeReadersForDetach);
    0
}
