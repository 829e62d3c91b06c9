//! Who is traced: the load-time filters of `CONFIG`. All comparisons are against
//! verifier constants, so a disabled filter costs nothing.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm};
use vmatrace_common::Counter;

use crate::{
    emit::count,
    globals::{CONFIG, global},
    maps::ARMED,
};

/// Whether the current task passes the filters; counts `Filtered` when it does not.
/// Nobody is traced while the session is not armed (`ARMED`), and that is not counted.
#[inline(always)]
pub fn traced(pid_tgid: u64) -> bool {
    if !armed() {
        return false;
    }
    if passes(pid_tgid) {
        true
    } else {
        count(Counter::Filtered);
        false
    }
}

#[inline(always)]
fn armed() -> bool {
    ARMED.get(0).is_some_and(|a| *a != 0)
}

#[inline(always)]
fn passes(pid_tgid: u64) -> bool {
    let tgid = (pid_tgid >> 32) as u32;
    // The tracer itself (the kernel calls lock_vma_under_rcu for BPF stack maps and task
    // VMA iterators on its behalf, and it faults like any process).
    if tgid == global!(CONFIG.self_tgid) {
        return false;
    }
    let want = global!(CONFIG.filter_tgid);
    if want != 0 && tgid != want {
        return false;
    }
    let cgroup = global!(CONFIG.filter_cgroup);
    // SAFETY: helper without arguments.
    if cgroup != 0 && unsafe { bpf_get_current_cgroup_id() } != cgroup {
        return false;
    }
    let len = global!(CONFIG.filter_comm_len);
    if len != 0 {
        let Ok(comm) = bpf_get_current_comm() else {
            return false;
        };
        let mut i = 0usize;
        while i < 16 {
            // SAFETY: i < 16, a byte of a static array.
            let want = unsafe { core::ptr::read_volatile(&raw const CONFIG.filter_comm[i]) };
            if (i as u32) < len && comm[i] != want {
                return false;
            }
            i += 1;
        }
    }
    true
}
