//! The planner on the kernel this test runs on (reads /sys/kernel/btf/vmlinux and
//! /proc/kallsyms; no bpf() calls).

use vmatrace::kernel::{Capabilities, KernelInfo, PlanError, plan};
use vmatrace_common::OFFSET_ABSENT;

#[test]
fn plans_for_the_running_kernel() {
    let info = match KernelInfo::from_running_kernel() {
        Ok(i) => i,
        Err(e) => {
            vmatrace::testing::skip("plans_for_the_running_kernel", &format!("{e:#}"));
            return;
        }
    };
    assert!(info.kallsyms.len() > 1000, "kallsyms looks truncated");
    let caps = Capabilities::detect();
    match plan(&info, &caps) {
        Ok(p) => {
            let o = p.offsets;
            for (name, v) in [
                ("vm_start", o.vma_vm_start),
                ("vm_refcnt", o.vma_vm_refcnt),
                ("vm_lock_seq", o.vma_vm_lock_seq),
                ("mm_lock_seq", o.mm_mm_lock_seq),
                ("vma_writer_wait", o.mm_vma_writer_wait),
            ] {
                assert_ne!(v, OFFSET_ABSENT, "{name} unresolved");
            }
            assert_eq!(p.coverage.len(), 13);
            // Whatever this machine allows, the capability notes say it.
            if !caps.kprobes {
                assert!(p.notes.iter().any(|n| n.contains("no kprobe PMU")));
            }
        }
        Err(PlanError::Unsupported { reason }) => {
            vmatrace::testing::skip("plans_for_the_running_kernel", &reason)
        }
        Err(e) => panic!("{e}"),
    }
}
