//! vmatrace's eBPF programs: probes on the per-VMA lock functions of the running kernel.
//!
//! One program per (kernel function, attach mode) listed in
//! `vmatrace/src/kernel/programs.rs`; the fentry/fexit and kprobe/kretprobe variants of a
//! function share the inline helpers of their module, so both modes emit identical
//! events. Programs only read kernel memory (`bpf_probe_read_kernel`), at offsets the
//! loader resolved from this kernel's BTF (`OFFSETS`, a frozen `.rodata` global the
//! verifier treats as constants).
//!
//! Modules: `globals` (load-time configuration), `maps`, `struct_reads` (kernel struct
//! fields at BTF offsets), `filter` (who is traced), `emit` (event records and counters),
//! then one module per group of kernel functions: `write_lock` (write lock, reader
//! exclusion, detach), `read_lock`, `wake`, `lifetime`, `mmap_lock`. The workload's
//! programs are a separate object (`lab.rs`).
#![no_std]
#![no_main]

mod emit;
mod filter;
mod globals;
mod inflight;
mod lifetime;
mod maps;
mod mmap_lock;
mod read_lock;
mod struct_reads;
mod wake;
mod write_lock;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects any reachable loop like this
    // one, so a panic path that survives optimisation fails the load instead of running.
    loop {}
}
