//! VMA object lifetime: `vm_area_alloc(mm)` / `vm_area_dup(orig)` returns start a new
//! life of a (possibly reused, `SLAB_TYPESAFE_BY_RCU`) object; `vm_area_free(vma)` ends it.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid,
    macros::{fentry, fexit, kprobe, kretprobe},
    programs::{FEntryContext, FExitContext, ProbeContext, RetProbeContext},
};
use vmatrace_common::{EventKind, event::ProbeId};

use crate::{
    emit::{header, now, send},
    filter::traced,
    struct_reads::{Reads, fill_vma},
};

/// `arg` = the `mm` (alloc) or the original VMA (dup), 0 from a kretprobe.
///
/// fexit (`D`): the new VMA is read as the context slot after the arguments
/// (`ctx.arg(1)`: both functions take one argument). The verifier types that slot by the
/// function's BTF return type, `struct vm_area_struct *`, so its fields are direct loads.
/// (aya's `FExitContext::ret` goes through `bpf_get_func_ret`, which yields a plain number
/// the verifier refuses to load through: every field then cost a probe-read call.)
#[inline(always)]
fn alloc_exit<const D: bool>(probe: ProbeId, arg: u64, vma: u64) {
    // A failed allocation starts no life.
    if vma == 0 {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let mut r = Reads::<D>::new();
    let mut ev = header::<D>(EventKind::VmaAlloc, probe, pid_tgid, now());
    fill_vma(&mut ev, vma, &mut r);
    ev.arg = arg;
    send(&mut ev, r);
}

#[inline(always)]
fn free_enter<const D: bool>(vma: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !traced(pid_tgid) {
        return;
    }
    let mut r = Reads::<D>::new();
    let mut ev = header::<D>(EventKind::VmaFree, ProbeId::VmAreaFree, pid_tgid, now());
    fill_vma(&mut ev, vma, &mut r);
    send(&mut ev, r);
}

/// The return value as the typed context slot after the one argument (see `alloc_exit`).
const RET_SLOT: usize = 1;

#[fexit]
pub fn vaa_fexit(ctx: FExitContext) -> u32 {
    alloc_exit::<true>(
        ProbeId::VmAreaAlloc,
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(RET_SLOT),
    );
    0
}

#[kretprobe]
pub fn vaa_kretprobe(ctx: RetProbeContext) -> u32 {
    alloc_exit::<false>(ProbeId::VmAreaAlloc, 0, ctx.ret::<u64>());
    0
}

#[fexit]
pub fn vad_fexit(ctx: FExitContext) -> u32 {
    alloc_exit::<true>(
        ProbeId::VmAreaDup,
        ctx.arg::<u64>(0),
        ctx.arg::<u64>(RET_SLOT),
    );
    0
}

#[kretprobe]
pub fn vad_kretprobe(ctx: RetProbeContext) -> u32 {
    alloc_exit::<false>(ProbeId::VmAreaDup, 0, ctx.ret::<u64>());
    0
}

#[fentry]
pub fn vaf_fentry(ctx: FEntryContext) -> u32 {
    free_enter::<true>(ctx.arg::<u64>(0));
    0
}

#[kprobe]
pub fn vaf_kprobe(ctx: ProbeContext) -> u32 {
    free_enter::<false>(ctx.arg::<u64>(0).unwrap_or(0));
    0
}
