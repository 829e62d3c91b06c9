//! The lab's program (`vmatrace stress`), not the tracer's: an object of its own
//! (`vmatrace-lab`), loaded by `vmatrace::live::lab` with the product's loader, attached
//! only by the workload. It reads the clock and the current task's ids, nothing else.
//!
//! `lab_race_delay` is the race widener (`lab/stress/race.rs`): a kprobe placed inside
//! `lock_vma_under_rcu` around the `vm_refcnt` increment that busy-waits `delay_ns` for
//! the tasks in scope.

#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::kprobe,
    programs::ProbeContext,
};
use vmatrace_common::globals::LabConfig;

/// Load-time configuration (`.rodata`, frozen: constants to the verifier). Nobody is in
/// scope unless the workload sets it.
#[unsafe(no_mangle)]
pub static LAB: LabConfig = LabConfig::DEFAULT;

/// One field of [`LAB`], by a volatile load so the default cannot be folded in.
macro_rules! lab {
    ($f:ident) => {
        // SAFETY: a field of a static that lives as long as the program.
        unsafe { core::ptr::read_volatile(&raw const LAB.$f) }
    };
}

/// Loop bound the verifier can see; far more iterations than any accepted delay (at most
/// 1 ms) needs, each iteration reading the clock, and few enough to verify quickly (the
/// verifier walks every iteration, below its 1M-instruction budget).
const MAX_SPINS: u32 = 100_000;

#[inline(always)]
fn in_scope() -> bool {
    match lab!(scope) {
        LabConfig::SCOPE_PROCESS => (bpf_get_current_pid_tgid() >> 32) as u32 == lab!(tgid),
        LabConfig::SCOPE_CGROUP => {
            // SAFETY: a helper without arguments.
            let id = unsafe { bpf_get_current_cgroup_id() };
            id == lab!(cgroup_id)
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
    let delay = lab!(delay_ns);
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program (see main.rs).
    loop {}
}
