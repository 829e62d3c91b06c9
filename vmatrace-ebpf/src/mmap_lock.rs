//! `mmap_lock` tracepoints: the mm-wide end of every VMA write lock.
//!
//! `mmap_write_unlock` fires `mmap_lock_released(write=true)`; `mmap_write_downgrade`
//! fires `mmap_lock_acquire_returned(write=false, success=true)` while the sequence is
//! still odd (before `vma_end_write_all`), which tells it apart from a plain read lock
//! (the sequence is even whenever no writer holds the lock). Field offsets come from the
//! tracepoint format (`MMAP_LOCK_TP`). `arg` = the tracepoint's `write` field.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use vmatrace_common::{EventKind, event::ProbeId, event::flags};

use crate::{
    emit::{header, now, send},
    filter::traced,
    globals::global,
    struct_reads::{Reads, mm_seq},
};

#[inline(always)]
fn field<T: Copy>(ctx: &TracePointContext, off: u32) -> Option<T> {
    // SAFETY: reads the tracepoint record through bpf_probe_read_kernel.
    unsafe { ctx.read_at::<T>(off as usize) }.ok()
}

#[inline(always)]
fn emit_unlock(probe: ProbeId, pid_tgid: u64, mm: u64, write: u8, seq: Option<u32>, r: Reads) {
    let mut ev = header::<false>(EventKind::MmWriteUnlock, probe, pid_tgid, now());
    ev.mm = mm;
    if let Some(seq) = seq {
        ev.mm_lock_seq = seq;
        ev.flags |= flags::MM_SEQ;
    }
    ev.arg = write as u64;
    send(&mut ev, r);
}

#[tracepoint]
pub fn mmap_lock_released(ctx: TracePointContext) -> u32 {
    // Read unlocks are frequent and irrelevant: decide before anything else.
    if field::<u8>(&ctx, global!(MMAP_LOCK_TP.write)).unwrap_or(0) == 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    let mm = field::<u64>(&ctx, global!(MMAP_LOCK_TP.mm)).unwrap_or(0);
    let mut r = Reads::<false>::new();
    // The odd sequence that is about to end.
    let seq = mm_seq(mm, &mut r);
    emit_unlock(ProbeId::MmapLockReleased, pid_tgid, mm, 1, seq, r);
    0
}

#[tracepoint]
pub fn mmap_lock_acquire_returned(ctx: TracePointContext) -> u32 {
    let write = field::<u8>(&ctx, global!(MMAP_LOCK_TP.write)).unwrap_or(1);
    let success = field::<u8>(&ctx, global!(MMAP_LOCK_TP.success)).unwrap_or(0);
    if write != 0 || success == 0 {
        return 0;
    }
    let mm = field::<u64>(&ctx, global!(MMAP_LOCK_TP.mm)).unwrap_or(0);
    let mut r = Reads::<false>::new();
    // Even (or unreadable): an ordinary read lock. Odd: a write lock being downgraded.
    let Some(seq) = mm_seq(mm, &mut r) else {
        return 0;
    };
    if seq & 1 == 0 || r.failed {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return 0;
    }
    emit_unlock(
        ProbeId::MmapLockAcquireReturned,
        pid_tgid,
        mm,
        0,
        Some(seq),
        r,
    );
    0
}
