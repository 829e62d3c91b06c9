//! Building and sending event records; per-CPU counters.

use aya_ebpf::helpers::{bpf_get_current_comm, bpf_get_smp_processor_id, bpf_ktime_get_ns};
use vmatrace_common::{Counter, Event, EventKind, event::ProbeId, event::flags};

use crate::{
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

/// A record with the common header filled in.
#[inline(always)]
pub fn header(kind: EventKind, probe: ProbeId, pid_tgid: u64, ts: u64) -> Event {
    let mut ev = Event::ZERO;
    ev.ts_ns = ts;
    ev.pid_tgid = pid_tgid;
    ev.kind = kind as u16;
    ev.probe = probe as u8;
    // SAFETY: helper without arguments.
    ev.cpu = unsafe { bpf_get_smp_processor_id() };
    if let Ok(comm) = bpf_get_current_comm() {
        ev.comm = comm;
    }
    ev
}

/// Attach the pairing data of a return event.
#[inline(always)]
pub fn paired(ev: &mut Event, entry_ts: u64, entry_refcnt: u32) {
    ev.wait_ns = ev.ts_ns.wrapping_sub(entry_ts);
    ev.entry_refcnt = entry_refcnt;
    ev.flags |= flags::PAIRED;
}

/// Finish and send a record: read failures become a flag and a counter, a full ring
/// buffer becomes `RingbufReserveFailed`. Never silent.
#[inline(always)]
pub fn send(ev: &mut Event, r: Reads) {
    if r.failed {
        ev.flags |= flags::READ_FAILED;
        count(Counter::ProbeReadFailed);
    }
    if EVENTS.output::<Event>(&*ev, 0).is_err() {
        count(Counter::RingbufReserveFailed);
    }
}
