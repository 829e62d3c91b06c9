//! vmatrace: live tracer and validator for the Linux kernel's per-VMA lock
//! (`vm_area_struct.vm_refcnt`, `vm_lock_seq` vs `mm->mm_lock_seq`).
//!
//! Layout: kernel-facing code (`kernel`: symbols/BTF/plan; `live`: load and attach) is
//! kept apart from pure logic (`validate`, `stats`, `trace`, `export`, `tui` renderers),
//! which is testable without root. The lab (`lab`: the simulated kernel and the stress
//! workload) is a room of its own that only the CLI wires in.

pub mod cli;
pub mod export;
pub mod kernel;
pub mod lab;
pub mod live;
pub mod logging;
pub mod mapping;
pub mod pipeline;
pub mod stats;
pub mod testing;
pub mod trace;
pub mod tui;
pub mod validate;

/// The eBPF object built by build.rs from `vmatrace-ebpf`, embedded 8-byte aligned.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("VMATRACE_EBPF_OBJ"));

/// The lab's eBPF object (`vmatrace-ebpf/src/lab.rs`: the workload's race widener and
/// reference counters), loaded by [`live::lab`].
pub static LAB_OBJECT: &[u8] = aya::include_bytes_aligned!(env!("VMATRACE_LAB_OBJ"));
