//! Building and sending event records; per-CPU counters.

use aya_ebpf::{
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, generated::bpf_task_pt_regs,
    },
    programs::tracing::StackIdContext,
};
use vmatrace_common::{
    Counter, Event, EventKind, counters::COUNTER_SLOTS, event::ProbeId, event::flags,
};

use crate::{
    globals::global,
    maps::{COUNTERS, EVENTS, SINCE_WAKE, STACKS},
    struct_reads::{Reads, present},
};

/// This CPU's slot of counter `c` in `COUNTERS` (out of the array, so uncounted, only
/// if userspace sized it below the CPU's id).
#[inline(always)]
fn counter_slot(c: Counter) -> u32 {
    // SAFETY: helper without arguments; stable while the program runs (migration is
    // disabled for every program type).
    let cpu = unsafe { bpf_get_smp_processor_id() };
    cpu.wrapping_mul(COUNTER_SLOTS).wrapping_add(c as u32)
}

/// Add one to this CPU's counter (no atomics needed: the row is this CPU's, and BPF
/// programs do not nest on one CPU).
#[inline(always)]
pub fn count(c: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter_slot(c)) {
        // SAFETY: a valid slot of the array.
        unsafe { *p += 1 }
    }
}

/// This CPU's value of a counter.
#[inline(always)]
pub fn counter_value(c: Counter) -> u64 {
    COUNTERS.get(counter_slot(c)).copied().unwrap_or(0)
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// A record with the common header filled in. `D`: a fentry/fexit program (see `comm`).
#[inline(always)]
pub fn header<const D: bool>(kind: EventKind, probe: ProbeId, pid_tgid: u64, ts: u64) -> Event {
    let mut ev = Event::ZERO;
    ev.ts_ns = ts;
    ev.pid_tgid = pid_tgid;
    ev.kind = kind as u16;
    ev.probe = probe as u8;
    // SAFETY: helper without arguments.
    ev.cpu = unsafe { bpf_get_smp_processor_id() };
    comm::<D>(&mut ev.comm);
    ev
}

/// The current task's `comm`. In fentry/fexit programs (`D`), when BTF gave
/// `task_struct.comm`'s offset, two direct 8-byte loads through
/// `bpf_get_current_task_btf()`, which the verifier types as `struct task_struct *`
/// (see `struct_reads::Reads`); otherwise the `bpf_get_current_comm` helper, whose `strscpy_pad`
/// copy was the largest single cost of a streaming program under TCG.
#[inline(always)]
fn comm<const D: bool>(out: &mut [u8; 16]) {
    let off = global!(OFFSETS.task_comm);
    if D && present(off) {
        // SAFETY: helper without arguments; it returns the current task, never NULL.
        let task = unsafe { bpf_get_current_task_btf() } as u64;
        let mut r = Reads::<true>::new();
        out[..8].copy_from_slice(&r.at::<u64>(task, off).to_le_bytes());
        out[8..].copy_from_slice(&r.at::<u64>(task, off + 8).to_le_bytes());
        return;
    }
    if let Ok(c) = bpf_get_current_comm() {
        *out = c;
    }
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
///
/// The record is reserved in the ring and submitted without waking the reader
/// (`BPF_RB_NO_WAKEUP`): a wake-up per event (what flags 0 asks for whenever the reader
/// has caught up, i.e. almost always at a few hundred events per second) queues an
/// irq_work and a wake-up of the reader thread inside this program run, which cost
/// 20–660 µs per event under TCG (docs/performance.md). The reader drains on a timer
/// instead; a wake-up is forced only once a quarter of the ring is filled, so a burst
/// is drained long before the ring overflows. (`bpf_ringbuf_output`, one helper call
/// instead of reserve + submit, measured no cheaper: its in-kernel copy of the record
/// costs what the second call saves.)
#[inline(always)]
pub fn send<const D: bool>(ev: &mut Event, r: Reads<D>) {
    if r.failed {
        ev.flags |= flags::READ_FAILED;
        count(Counter::ProbeReadFailed);
    }
    match EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            slot.write(*ev);
            slot.submit(wakeup_flag());
        }
        None => count(Counter::RingbufReserveFailed),
    }
}

/// `BPF_RB_FORCE_WAKEUP` once this CPU has submitted `CONFIG.wake_every_records` records
/// since its last forced wake-up (a quarter of the ring shared out over the CPUs, set by
/// the loader), else `BPF_RB_NO_WAKEUP`. A per-CPU count is a few instructions (the
/// verifier inlines per-CPU array lookups); asking the ring for its unread bytes was a
/// helper call on every event.
#[inline(always)]
fn wakeup_flag() -> u64 {
    let every = global!(CONFIG.wake_every_records);
    if let Some(n) = SINCE_WAKE.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; programs do not nest on one CPU.
        unsafe {
            *n += 1;
            if *n >= every {
                *n = 0;
                return BPF_RB_FORCE_WAKEUP as u64;
            }
        }
    }
    BPF_RB_NO_WAKEUP as u64
}

/// Why a writer was slow: when a writer-path return's wait reached
/// `CONFIG.slow_wait_ns`, a `SlowWait` event goes out just before it (same CPU, so the
/// ring keeps that order) with the task's syscall number and its kernel stack's id in
/// `STACKS`. Below the threshold this is one comparison; the stack walk is only paid by
/// slow waits. Written in place in the ring slot: a second 128-byte record on the
/// program's stack would crowd the verifier's 512 bytes.
#[inline(always)]
pub fn slow_wait<C: StackIdContext>(ctx: &C, ret: &Event) {
    let min = global!(CONFIG.slow_wait_ns);
    if min == 0 || ret.flags & flags::PAIRED == 0 || ret.wait_ns < min {
        return;
    }
    let stack = match ctx.get_stackid(&STACKS, 0) {
        Ok(id) => id,
        Err(e) => {
            count(Counter::SlowStackFailed);
            i64::from(e)
        }
    };
    let off = global!(OFFSETS.pt_regs_syscall);
    let syscall = if present(off) {
        // SAFETY: helpers on the current task; `bpf_task_pt_regs` returns its user
        // register frame (never NULL for the current task), read through the fault-safe
        // path.
        unsafe {
            let task = bpf_get_current_task_btf();
            let regs = bpf_task_pt_regs(task.cast()) as u64;
            bpf_probe_read_kernel((regs + u64::from(off)) as *const u64).unwrap_or(u64::MAX)
        }
    } else {
        u64::MAX
    };
    let Some(mut slot) = EVENTS.reserve::<Event>(0) else {
        count(Counter::RingbufReserveFailed);
        return;
    };
    let p = slot.as_mut_ptr();
    // SAFETY: `p` is the reserved slot, sized and aligned for one `Event`.
    unsafe {
        core::ptr::write_bytes(p, 0, 1);
        (*p).ts_ns = ret.ts_ns;
        (*p).pid_tgid = ret.pid_tgid;
        (*p).vma = ret.vma;
        (*p).mm = ret.mm;
        (*p).vm_start = ret.vm_start;
        (*p).vm_end = ret.vm_end;
        (*p).vm_flags = ret.vm_flags;
        (*p).arg = syscall;
        (*p).ret = stack;
        (*p).wait_ns = ret.wait_ns;
        (*p).kind = EventKind::SlowWait as u16;
        (*p).flags = flags::RET;
        (*p).probe = ret.probe;
        (*p).cpu = ret.cpu;
        (*p).comm = ret.comm;
    }
    slot.submit(wakeup_flag());
}
