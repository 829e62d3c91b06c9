//! Building and sending event records; per-CPU counters.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_smp_processor_id, bpf_ktime_get_ns, generated},
};
use vmatrace_common::{Counter, Event, EventKind, event::ProbeId, event::flags};

use crate::{
    globals::global,
    kernel::Reads,
    maps::{COUNTERS, EVENTS},
};

/// Add one to a per-CPU counter (no atomics needed: the slot is this CPU's, and BPF
/// programs do not nest on one CPU).
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(c as u32) {
        // SAFETY: a valid per-CPU slot of the array.
        unsafe { *p += 1 }
    }
}

/// This CPU's value of a counter.
#[inline(always)]
pub fn counter_value(c: Counter) -> u64 {
    COUNTERS.get(c as u32).copied().unwrap_or(0)
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Attach the pairing data of a return event.
#[inline(always)]
pub fn paired(ev: &mut Event, entry_ts: u64, entry_refcnt: u32) {
    ev.wait_ns = ev.ts_ns.wrapping_sub(entry_ts);
    ev.entry_refcnt = entry_refcnt;
    ev.flags |= flags::PAIRED;
}

/// Build a record where it is sent and send it: the ring slot is reserved first, the
/// header written into it, `fill` writes the rest, and the slot is submitted. Read
/// failures become a flag and a counter, a full ring buffer becomes
/// `RingbufReserveFailed` (and `fill` does not run). Never silent.
///
/// Building the 128-byte record in the slot saves zeroing one on the stack and copying it
/// over (`bpf_ringbuf_output`, which copies, measured no cheaper than reserve + submit).
/// `fill` must only write the record: bookkeeping that has to happen even when the ring
/// is full belongs to the caller.
///
/// The slot is submitted without waking the reader (`BPF_RB_NO_WAKEUP`): a wake-up per
/// event (what flags 0 asks for whenever the reader has caught up, i.e. almost always at
/// a few hundred events per second) queues an irq_work and a wake-up of the reader thread
/// inside this program run, which cost 20–660 µs per event under TCG
/// (docs/performance.md). The reader drains on a timer instead; a wake-up is forced only
/// once a quarter of the ring is filled, so a burst is drained long before the ring
/// overflows.
#[inline(always)]
pub fn emit<const D: bool>(
    kind: EventKind,
    probe: ProbeId,
    pid_tgid: u64,
    ts: u64,
    mut r: Reads<D>,
    fill: impl FnOnce(&mut Event, &mut Reads<D>),
) {
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        count(Counter::RingbufReserveFailed);
        return;
    };
    // SAFETY: the reservation is this program's alone until submitted, 8-aligned and
    // `size_of::<Event>()` bytes; every byte is written below before anyone reads it.
    let ev = unsafe { &mut *slot.as_mut_ptr() };
    *ev = Event::ZERO;
    ev.ts_ns = ts;
    ev.pid_tgid = pid_tgid;
    ev.kind = kind as u16;
    ev.probe = probe as u8;
    // SAFETY: helpers; the comm one writes at most 16 bytes into the record's `comm`.
    unsafe {
        ev.cpu = bpf_get_smp_processor_id();
        generated::bpf_get_current_comm(ev.comm.as_mut_ptr().cast(), ev.comm.len() as u32);
    }
    fill(ev, &mut r);
    if r.failed {
        ev.flags |= flags::READ_FAILED;
        count(Counter::ProbeReadFailed);
    }
    slot.submit(wakeup_flag());
}

/// `BPF_RB_FORCE_WAKEUP` once the unread data reaches `CONFIG.ring_wake_bytes` (a quarter
/// of the ring, set by the loader, which sizes the ring), else `BPF_RB_NO_WAKEUP`.
#[inline(always)]
fn wakeup_flag() -> u64 {
    let avail = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if avail >= global!(CONFIG.ring_wake_bytes) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
