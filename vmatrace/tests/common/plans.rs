//! Hand-made probe plans for tests and the manual VM check, until plans come from the
//! planner. Offsets are Debian cloud-amd64 values read from BTF
//! (`docs/protocol.md#struct-offsets`); the 6.18 ones also match this host's 6.18.44.

use vmatrace::kernel::plan::{AttachMode, AttachPoint, KernelId, ProbePlan};
use vmatrace::kernel::programs::PROGRAMS;
use vmatrace_common::{Offsets, model::Generation};

/// `vm_area_struct` fields, identical from 6.16 to 7.3 on Debian cloud-amd64.
const fn vma_fields(mm_lock_seq: u32, vma_writer_wait: u32) -> Offsets {
    let mut o = Offsets::ABSENT;
    o.vma_vm_start = 0;
    o.vma_vm_end = 8;
    o.vma_vm_mm = 0x10;
    o.vma_vm_flags = 0x20;
    o.vma_vm_lock_seq = 0x28;
    o.vma_vm_refcnt = 0x80;
    o.mm_mm_lock_seq = mm_lock_seq;
    o.mm_vma_writer_wait = vma_writer_wait;
    // x86-64 `struct pt_regs.orig_ax`: the ABI's register frame, the same everywhere.
    o.pt_regs_syscall = 0x78;
    o
}

/// 6.17 / 6.18 (also this host).
pub const OFFSETS_6_18: Offsets = vma_fields(0xf8, 0xf0);

/// 6.19 / 7.0: no `vma_exclude_readers_state` on 6.19 (7.0 has it; see OFFSETS_7_2).
pub const OFFSETS_6_19: Offsets = vma_fields(0x1d0, 0x1c8);

/// 7.2 / 7.3, with `struct vma_exclude_readers_state` at 0/8/12/13/14.
pub const OFFSETS_7_2: Offsets = {
    let mut o = vma_fields(0x1d0, 0x1c8);
    o.ves_vma = 0;
    o.ves_state = 8;
    o.ves_detaching = 12;
    o.ves_detached = 13;
    o.ves_exclusive = 14;
    o.task_comm = 0xd10;
    o
};

/// An attach point for a program of the table.
pub fn point(program: &str, target: &str) -> AttachPoint {
    let spec = PROGRAMS
        .iter()
        .find(|p| p.name == program)
        .unwrap_or_else(|| panic!("no program {program} in the table"));
    AttachPoint {
        probe: spec.probe,
        target: target.to_string(),
        mode: spec.mode,
        program: program.to_string(),
    }
}

pub fn plan(generation: Generation, offsets: Offsets, points: Vec<AttachPoint>) -> ProbePlan {
    ProbePlan {
        kernel: KernelId {
            release: "hand-made".into(),
        },
        generation,
        offsets,
        points,
        attach: Default::default(),
        coverage: Vec::new(),
        notes: vec!["hand-made test plan".into()],
    }
}

/// The mmap_lock tracepoints (attachable on this host).
pub fn tracepoint_points() -> Vec<AttachPoint> {
    vec![
        point("mmap_lock_released", "mmap_lock:mmap_lock_released"),
        point(
            "mmap_lock_acquire_returned",
            "mmap_lock:mmap_lock_acquire_returned",
        ),
    ]
}

/// The 7.x plan: fentry/fexit where the functions are ftrace-able, kprobes for the rest.
/// `tracing` = false gives the all-kprobe variant.
pub fn plan_7x(tracing: bool) -> ProbePlan {
    let mut pts = Vec::new();
    let pair = |pts: &mut Vec<AttachPoint>, base: &str, target: &str, entry: bool| {
        let (e, x) = if tracing {
            ("fentry", "fexit")
        } else {
            ("kprobe", "kretprobe")
        };
        if entry {
            pts.push(point(&format!("{base}_{e}"), target));
        }
        pts.push(point(&format!("{base}_{x}"), target));
    };
    // No `__vma_start_write` entry: start-exclude's entry stands for it (the planner's
    // `write_lock_request` proxy).
    pair(&mut pts, "vsw", "__vma_start_write", false);
    pair(&mut pts, "vser", "__vma_start_exclude_readers", true);
    pair(&mut pts, "verd", "__vma_exclude_readers_for_detach", true);
    if tracing {
        pts.push(point("lvur_fexit", "lock_vma_under_rcu"));
        pts.push(point("vaa_fexit", "vm_area_alloc"));
        pts.push(point("vad_fexit", "vm_area_dup"));
        pts.push(point("vaf_fentry", "vm_area_free"));
        pts.push(point("lnv_fexit", "lock_next_vma"));
    } else {
        pts.push(point("lvur_kprobe", "lock_vma_under_rcu"));
        pts.push(point("lvur_kretprobe", "lock_vma_under_rcu"));
        pts.push(point("vaa_kretprobe", "vm_area_alloc"));
        pts.push(point("vad_kretprobe", "vm_area_dup"));
        pts.push(point("vaf_kprobe", "vm_area_free"));
        pts.push(point("lnv_kretprobe", "lock_next_vma"));
    }
    // Entry-time wake-ups (ordered before the woken writer's return) + the result.
    pts.push(point("rww_kprobe", "rcuwait_wake_up"));
    pts.push(point("rww_kretprobe", "rcuwait_wake_up"));
    // No `vrp_kprobe`: `vma_refcount_put` is notrace and Debian's kernels (no
    // CONFIG_KPROBE_EVENTS_ON_NOTRACE) refuse kprobes on it, as the planner knows.
    pts.extend(tracepoint_points());
    plan(Generation::V7_0, OFFSETS_7_2, pts)
}

/// The 6.x plan (6.16–6.18: `Generation::V6_15`, 6.19: `V6_19`): `vma_mark_detached` is
/// global and covers every detach. 6.19's out-of-line `__vma_enter_locked` is notrace:
/// Debian's kernels (no CONFIG_KPROBE_EVENTS_ON_NOTRACE) refuse kprobes on it, so, as in
/// the planner's plan, start-exclude is not hooked and its return is seen at the
/// returns of `__vma_start_write` / `vma_mark_detached`.
pub fn plan_6x(generation: Generation, tracing: bool) -> ProbePlan {
    let (e, x) = if tracing {
        ("fentry", "fexit")
    } else {
        ("kprobe", "kretprobe")
    };
    let mut pts = vec![
        point(&format!("vsw_{e}"), "__vma_start_write"),
        point(&format!("vsw_{x}"), "__vma_start_write"),
        point(&format!("vmd_{e}"), "vma_mark_detached"),
        point(&format!("vmd_{x}"), "vma_mark_detached"),
    ];
    if tracing {
        pts.push(point("lvur_fexit", "lock_vma_under_rcu"));
        pts.push(point("vaa_fexit", "vm_area_alloc"));
        pts.push(point("vad_fexit", "vm_area_dup"));
        pts.push(point("vaf_fentry", "vm_area_free"));
        pts.push(point("lnv_fexit", "lock_next_vma"));
    } else {
        pts.push(point("lvur_kprobe", "lock_vma_under_rcu"));
        pts.push(point("lvur_kretprobe", "lock_vma_under_rcu"));
        pts.push(point("vaa_kretprobe", "vm_area_alloc"));
        pts.push(point("vad_kretprobe", "vm_area_dup"));
        pts.push(point("vaf_kprobe", "vm_area_free"));
        pts.push(point("lnv_kretprobe", "lock_next_vma"));
    }
    pts.push(point("rww_kprobe", "rcuwait_wake_up"));
    pts.push(point("rww_kretprobe", "rcuwait_wake_up"));
    pts.extend(tracepoint_points());
    let offsets = if generation == Generation::V6_19 {
        OFFSETS_6_19
    } else {
        OFFSETS_6_18
    };
    plan(generation, offsets, pts)
}

/// Every kprobe/kretprobe/tracepoint program of the table (verifier test).
pub fn non_tracing_programs() -> Vec<&'static str> {
    PROGRAMS
        .iter()
        .filter(|p| {
            matches!(
                p.mode,
                AttachMode::KProbe | AttachMode::KRetProbe | AttachMode::Tracepoint
            )
        })
        .map(|p| p.name)
        .collect()
}

/// Every fentry/fexit program of the table with the function it is for.
pub fn tracing_programs() -> Vec<(&'static str, &'static str)> {
    PROGRAMS
        .iter()
        .filter(|p| matches!(p.mode, AttachMode::FEntry | AttachMode::FExit))
        .map(|p| (p.name, p.probe.kernel_name()))
        .collect()
}
