//! The lab's programs (`vmatrace stress`), not the tracer's: loaded by
//! `vmatrace::live::lab` from this same object, attached only by the workload, never by
//! `vmatrace run`. They read the clock and the current task's ids, nothing else.
//!
//! - `lab_race_delay`: the race widener (`lab/stress/race.rs`), a kprobe placed inside
//!   `lock_vma_under_rcu` around the `vm_refcnt` increment that busy-waits `delay_ns`
//!   for the tasks in scope.
//! - `lab_count_*`: plain kprobe counters of the functions vmatrace traces, one per
//!   function (`lab/stress/calls.rs`), the reference the tracer's counts are compared
//!   with in the VM matrix.

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{kprobe, map},
    maps::PerCpuArray,
    programs::ProbeContext,
};
use vmatrace_common::globals::{LAB_COUNTED_FUNCTIONS, LabConfig};

use crate::globals::global;

/// Calls counted per function slot (`lab_count_*`), per CPU.
#[map]
pub static LAB_CALLS: PerCpuArray<u64> = PerCpuArray::with_max_entries(LAB_COUNTED_FUNCTIONS, 0);

/// Loop bound the verifier can see; far more iterations than any accepted delay (at most
/// 1 ms) needs, each iteration reading the clock, and few enough to verify quickly (the
/// verifier walks every iteration, below its 1M-instruction budget).
const MAX_SPINS: u32 = 100_000;

#[inline(always)]
fn in_scope() -> bool {
    match global!(LAB.scope) {
        LabConfig::SCOPE_PROCESS => (bpf_get_current_pid_tgid() >> 32) as u32 == global!(LAB.tgid),
        LabConfig::SCOPE_CGROUP => {
            // SAFETY: a helper without arguments.
            let id = unsafe { bpf_get_current_cgroup_id() };
            id == global!(LAB.cgroup_id)
        }
        _ => false,
    }
}

/// The race widener: spin until `delay_ns` have passed (or [`MAX_SPINS`] clock reads).
#[kprobe]
pub fn lab_race_delay(_ctx: ProbeContext) -> u32 {
    if !in_scope() {
        return 0;
    }
    let delay = global!(LAB.delay_ns);
    // SAFETY: helpers without arguments.
    let start = unsafe { bpf_ktime_get_ns() };
    let mut spins = 0;
    while spins < MAX_SPINS {
        // SAFETY: as above.
        if unsafe { bpf_ktime_get_ns() }.wrapping_sub(start) > delay {
            break;
        }
        // The way on is the unlikely one, so the loop's exit is the branch's fall-through:
        // the verifier explores a fall-through first, so it finishes each exit before the
        // next iteration instead of stacking one pending exit per iteration (E2BIG).
        core::hint::cold_path();
        spins += 1;
    }
    0
}

#[inline(always)]
fn count(slot: u32) -> u32 {
    if in_scope() {
        if let Some(n) = LAB_CALLS.get_ptr_mut(slot) {
            // SAFETY: this CPU's slot, valid while the program runs; only this CPU
            // writes it, with preemption disabled (a kprobe).
            unsafe { *n += 1 };
        }
    }
    0
}

/// Slot 0: `__vma_start_write`.
#[kprobe]
pub fn lab_count_0(_ctx: ProbeContext) -> u32 {
    count(0)
}

/// Slot 1: `lock_vma_under_rcu`.
#[kprobe]
pub fn lab_count_1(_ctx: ProbeContext) -> u32 {
    count(1)
}

/// Slot 2: `vm_area_free`.
#[kprobe]
pub fn lab_count_2(_ctx: ProbeContext) -> u32 {
    count(2)
}
