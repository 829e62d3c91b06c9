//! The reader side: `lock_vma_under_rcu` (every page fault: counted per outcome, streamed
//! only 1 in `CONFIG.reader_sample_every`), `lock_next_vma` (/proc/pid/maps readers) and
//! the out-of-line `vma_refcount_put` (fault-retry release sites only).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fexit, kprobe, kretprobe},
    programs::{FExitContext, ProbeContext, RetProbeContext},
};
use vmatrace_common::{
    Counter, EventKind,
    counters::{FALLBACK_PROBES, FALLBACK_SLOTS},
    event::{ProbeId, flags},
};

use crate::{
    emit::{count, counter_value, header, now, send},
    filter::traced,
    globals::global,
    inflight::{remember, take},
    maps::{EXCLUDERS, INFLIGHT_READER, Inflight, READER_FALLBACKS, excluding},
    struct_reads::{
        EXCLUDE_READERS_FLAG, Reads, fill_mm, fill_vma, is_err_ptr, mm_seq, writer_wait_of,
    },
};

/// Whether to stream this call: 1 in N by this CPU's running count of `c`.
#[inline(always)]
fn sampled(c: Counter) -> bool {
    let every = global!(CONFIG.reader_sample_every);
    every != 0 && counter_value(c) % every as u64 == 0
}

/// A NULL result while a writer of this mm excludes readers from the VMA that covers
/// `addr`: the reader failed because of the exclusion (`ReaderFailExcluded`).
#[inline(always)]
fn failed_under_exclusion(mm: u64, addr: u64) -> bool {
    let w = writer_wait_of(mm);
    if w == 0 {
        return false;
    }
    let Some(x) = EXCLUDERS.get_ptr(w) else {
        return false;
    };
    // SAFETY: a value pointer from the lookup, read once.
    let x = unsafe { *x };
    if !excluding(&x) {
        return false;
    }
    let mut r = Reads::<false>::new();
    let refcnt = r.at::<u32>(x.vma, global!(OFFSETS.vma_vm_refcnt));
    let start = r.at::<u64>(x.vma, global!(OFFSETS.vma_vm_start));
    let end = r.at::<u64>(x.vma, global!(OFFSETS.vma_vm_end));
    !r.failed && refcnt & EXCLUDE_READERS_FLAG != 0 && start <= addr && addr < end
}

/// A writer holds `mm`'s `mmap_lock` for write: `mm_lock_seq` is odd from
/// `mmap_write_lock` to `mmap_write_unlock` (or a downgrade), and every VMA it locked
/// meanwhile refuses readers (`docs/protocol.md#sequence-numbers`).
#[inline(always)]
fn mm_write_locked(mm: u64) -> bool {
    let mut r = Reads::<false>::new();
    mm_seq(mm, &mut r).is_some_and(|seq| !r.failed && seq & 1 == 1)
}

/// One more writer-caused fallback for this process (every one: not sampled), in this
/// CPU's row of `READER_FALLBACKS`: the tgid's slot, or the first free one of
/// `FALLBACK_PROBES` from `tgid % FALLBACK_SLOTS`. With all of them taken by other
/// processes it stays in `ReaderFailWriter` only (userspace shows the unattributed rest).
#[inline(always)]
fn count_fallback(pid_tgid: u64) {
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: helper without arguments.
    let row = unsafe { aya_ebpf::helpers::bpf_get_smp_processor_id() }.wrapping_mul(FALLBACK_SLOTS);
    for i in 0..FALLBACK_PROBES {
        let slot = row.wrapping_add(tgid.wrapping_add(i) & (FALLBACK_SLOTS - 1));
        let Some(p) = READER_FALLBACKS.get_ptr_mut(slot) else {
            return;
        };
        // SAFETY: a valid slot of this CPU's row; programs do not nest on one CPU.
        unsafe {
            if (*p).tgid == tgid {
                (*p).count += 1;
                return;
            }
            if (*p).tgid == 0 {
                (*p).comm = aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; 16]);
                (*p).count = 1;
                // Last: userspace takes a slot with a tgid as filled.
                (*p).tgid = tgid;
                return;
            }
        }
    }
}

/// Return half of `lock_vma_under_rcu(mm, addr)`. `entry` carries the kretprobe's saved
/// arguments and entry time; `ts` was taken first thing at return (0: take it here).
#[inline(always)]
fn reader_exit(ts: u64, pid_tgid: u64, mm: u64, addr: u64, ret: u64, entry: Inflight) {
    if ret != 0 {
        count(Counter::ReaderAcquireOk);
    } else {
        count(Counter::ReaderAcquireFail);
        let excluded = failed_under_exclusion(mm, addr);
        if excluded {
            count(Counter::ReaderFailExcluded);
        }
        if excluded || mm_write_locked(mm) {
            count(Counter::ReaderFailWriter);
            count_fallback(pid_tgid);
        }
    }
    // Sample by the combined per-CPU count of both outcomes.
    let every = global!(CONFIG.reader_sample_every);
    if every == 0 {
        return;
    }
    let n = counter_value(Counter::ReaderAcquireOk) + counter_value(Counter::ReaderAcquireFail);
    if n % every as u64 != 0 {
        return;
    }
    count(Counter::ReaderSampled);
    let mut r = Reads::<false>::new();
    let mut ev = header::<false>(
        EventKind::ReaderAcquire,
        ProbeId::LockVmaUnderRcu,
        pid_tgid,
        if ts != 0 { ts } else { now() },
    );
    if ret != 0 {
        fill_vma(&mut ev, ret, &mut r);
    } else {
        fill_mm(&mut ev, mm, &mut r);
    }
    if ev.mm == 0 {
        ev.mm = mm;
    }
    ev.arg = addr;
    ev.ret = ret as i64;
    ev.flags |= flags::RET;
    // The lock latency, when the kretprobe's entry saw the call start. Not flagged
    // PAIRED: there is no VMA at entry, so no entry refcount.
    if entry.found() {
        ev.wait_ns = ev.ts_ns.wrapping_sub(entry.ts);
    }
    send(&mut ev, r);
}

#[fexit]
pub fn lvur_fexit(ctx: FExitContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let ret = ctx.ret::<u64>().unwrap_or(0);
    reader_exit(
        0,
        pid_tgid,
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(1),
        ret,
        Inflight::NONE,
    );
    0
}

/// Saves `mm` and `addr` for the kretprobe.
#[kprobe]
pub fn lvur_kprobe(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let mm = ctx.arg::<u64>(0).unwrap_or(0);
    let e = Inflight {
        ts: now(),
        ptr: mm,
        arg1: ctx.arg::<u64>(1).unwrap_or(0),
        ..Inflight::NONE
    };
    remember(&INFLIGHT_READER, pid_tgid, &e);
    0
}

#[kretprobe]
pub fn lvur_kretprobe(ctx: RetProbeContext) -> u32 {
    // First thing at return, so the sampled lock latency stops where the kernel did;
    // skipped (a constant to the verifier) when nothing is sampled: this is the hot path.
    let ts = if global!(CONFIG.reader_sample_every) != 0 {
        now()
    } else {
        0
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let ret = ctx.ret::<u64>();
    // Without an entry the outcome is still counted; only the arguments are unknown.
    let entry = take(&INFLIGHT_READER, pid_tgid);
    let (mm, addr) = (entry.ptr, entry.arg1);
    reader_exit(ts, pid_tgid, mm, addr, ret, entry);
    0
}

/// Return half of `lock_next_vma(mm, vmi, from_addr)`: a locked VMA, NULL (end of the
/// address space) or an `ERR_PTR`.
#[inline(always)]
fn next_vma_exit(pid_tgid: u64, mm: u64, from_addr: u64, ret: u64) {
    count(Counter::ReaderNextVma);
    if !sampled(Counter::ReaderNextVma) {
        return;
    }
    count(Counter::ReaderSampled);
    let mut r = Reads::<false>::new();
    let mut ev = header::<false>(
        EventKind::ReaderAcquire,
        ProbeId::LockNextVma,
        pid_tgid,
        now(),
    );
    if ret != 0 && !is_err_ptr(ret) {
        fill_vma(&mut ev, ret, &mut r);
    } else if mm != 0 {
        fill_mm(&mut ev, mm, &mut r);
    }
    ev.arg = from_addr;
    ev.ret = ret as i64;
    ev.flags |= flags::RET;
    send(&mut ev, r);
}

#[fexit]
pub fn lnv_fexit(ctx: FExitContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let ret = ctx.ret::<u64>().unwrap_or(0);
    next_vma_exit(pid_tgid, ctx.arg::<u64>(0), ctx.arg::<u64>(2), ret);
    0
}

#[kretprobe]
pub fn lnv_kretprobe(ctx: RetProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    next_vma_exit(pid_tgid, 0, 0, ctx.ret::<u64>());
    0
}

/// `vma_refcount_put(vma)` entry: a reader drops its reference. `refcnt` is the value
/// before the decrement.
#[kprobe]
pub fn vrp_kprobe(ctx: ProbeContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    count(Counter::ReaderRelease);
    let mut r = Reads::<false>::new();
    let mut ev = header::<false>(
        EventKind::ReaderRelease,
        ProbeId::VmaRefcountPut,
        pid_tgid,
        now(),
    );
    fill_vma(&mut ev, ctx.arg::<u64>(0).unwrap_or(0), &mut r);
    send(&mut ev, r);
    0
}
