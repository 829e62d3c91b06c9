//! The contract between the planner and the eBPF object: which program in
//! `vmatrace-ebpf` serves which kernel function in which attach mode.
//!
//! The planner only ever names programs from [`PROGRAMS`]; a test parses the embedded
//! object and checks that every name here exists there with the right section kind, so a
//! renamed eBPF function cannot silently break attach.

use vmatrace_common::event::ProbeId;

use super::plan::AttachMode;

/// One program of the eBPF object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramSpec {
    pub probe: ProbeId,
    pub mode: AttachMode,
    /// The function name in `vmatrace-ebpf` (= program name in the object).
    pub name: &'static str,
}

const fn spec(probe: ProbeId, mode: AttachMode, name: &'static str) -> ProgramSpec {
    ProgramSpec { probe, mode, name }
}

use AttachMode::{FEntry, FExit, KProbe, KRetProbe, Tracepoint};
use ProbeId as P;

/// Every program the object provides. fentry/fexit are preferred where the function is
/// ftrace-able and tracing programs load; kprobe/kretprobe are the fallback (and the only
/// way into notrace out-of-line copies such as `vma_refcount_put`, 6.19's
/// `__vma_enter_locked`).
pub const PROGRAMS: &[ProgramSpec] = &[
    // __vma_start_write: write-lock request (entry) and result (return).
    spec(P::VmaStartWrite, FEntry, "vsw_fentry"),
    spec(P::VmaStartWrite, FExit, "vsw_fexit"),
    spec(P::VmaStartWrite, KProbe, "vsw_kprobe"),
    spec(P::VmaStartWrite, KRetProbe, "vsw_kretprobe"),
    // __vma_start_exclude_readers(ves) (7.0+).
    spec(P::VmaStartExcludeReaders, FEntry, "vser_fentry"),
    spec(P::VmaStartExcludeReaders, FExit, "vser_fexit"),
    spec(P::VmaStartExcludeReaders, KProbe, "vser_kprobe"),
    spec(P::VmaStartExcludeReaders, KRetProbe, "vser_kretprobe"),
    // __vma_enter_locked(vma, detaching, state) (6.19, out of line but notrace).
    spec(P::VmaEnterLocked, KProbe, "vel_kprobe"),
    spec(P::VmaEnterLocked, KRetProbe, "vel_kretprobe"),
    // vma_mark_detached(vma) (6.15-6.19, global).
    spec(P::VmaMarkDetached, FEntry, "vmd_fentry"),
    spec(P::VmaMarkDetached, FExit, "vmd_fexit"),
    spec(P::VmaMarkDetached, KProbe, "vmd_kprobe"),
    spec(P::VmaMarkDetached, KRetProbe, "vmd_kretprobe"),
    // __vma_exclude_readers_for_detach(vma) (7.0+, slow path of the inline detach).
    spec(P::VmaExcludeReadersForDetach, FEntry, "verd_fentry"),
    spec(P::VmaExcludeReadersForDetach, FExit, "verd_fexit"),
    spec(P::VmaExcludeReadersForDetach, KProbe, "verd_kprobe"),
    spec(P::VmaExcludeReadersForDetach, KRetProbe, "verd_kretprobe"),
    // lock_vma_under_rcu(mm, addr): reader acquire result (counted; sampled stream).
    spec(P::LockVmaUnderRcu, FExit, "lvur_fexit"),
    spec(P::LockVmaUnderRcu, KProbe, "lvur_kprobe"),
    spec(P::LockVmaUnderRcu, KRetProbe, "lvur_kretprobe"),
    // lock_next_vma(mm, vmi, from_addr) (6.17+): /proc/pid/maps readers.
    spec(P::LockNextVma, FExit, "lnv_fexit"),
    spec(P::LockNextVma, KRetProbe, "lnv_kretprobe"),
    // vma_refcount_put(vma): notrace everywhere, kprobe only.
    spec(P::VmaRefcountPut, KProbe, "vrp_kprobe"),
    // rcuwait_wake_up(w): writer wake-up (filtered to mm->vma_writer_wait of excluders).
    spec(P::RcuwaitWakeUp, FExit, "rww_fexit"),
    spec(P::RcuwaitWakeUp, KProbe, "rww_kprobe"),
    spec(P::RcuwaitWakeUp, KRetProbe, "rww_kretprobe"),
    // mmap_lock tracepoints: mm-wide end of all VMA write locks.
    spec(P::MmapLockReleased, Tracepoint, "mmap_lock_released"),
    spec(
        P::MmapLockAcquireReturned,
        Tracepoint,
        "mmap_lock_acquire_returned",
    ),
    // VMA object lifetime.
    spec(P::VmAreaAlloc, FExit, "vaa_fexit"),
    spec(P::VmAreaAlloc, KRetProbe, "vaa_kretprobe"),
    spec(P::VmAreaDup, FExit, "vad_fexit"),
    spec(P::VmAreaDup, KRetProbe, "vad_kretprobe"),
    spec(P::VmAreaFree, FEntry, "vaf_fentry"),
    spec(P::VmAreaFree, KProbe, "vaf_kprobe"),
];

/// The program serving `probe` in `mode`, if the object has one.
pub fn program_for(probe: ProbeId, mode: AttachMode) -> Option<&'static str> {
    PROGRAMS
        .iter()
        .find(|p| p.probe == probe && p.mode == mode)
        .map(|p| p.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        let mut names: Vec<_> = PROGRAMS.iter().map(|p| p.name).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "duplicate program names");
    }

    #[test]
    fn lookup() {
        assert_eq!(program_for(P::VmaStartWrite, FEntry), Some("vsw_fentry"));
        assert_eq!(program_for(P::VmaRefcountPut, FEntry), None);
    }
}
