//! Reading kernel structs at the BTF offsets of the running kernel.
//!
//! Every read goes through `bpf_probe_read_kernel` (the programs never dereference kernel
//! pointers directly: kprobe arguments are plain scalars to the verifier). An absent
//! offset (`OFFSET_ABSENT`) or a NULL base reads as 0 without a helper call; a failing
//! helper reads as 0 and sets `Reads::failed`, which the caller turns into the event's
//! `READ_FAILED` flag and the `ProbeReadFailed` counter.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use vmatrace_common::{Event, OFFSET_ABSENT, event::flags};

use crate::globals::global;

/// `VMA_LOCK_OFFSET` / `VM_REFCNT_EXCLUDE_READERS_FLAG`: bit 30 on every generation.
pub const EXCLUDE_READERS_FLAG: u32 = 1 << 30;

/// Accumulates failed reads for one event.
#[derive(Clone, Copy)]
pub struct Reads {
    pub failed: bool,
}

impl Reads {
    #[inline(always)]
    pub const fn new() -> Self {
        Self { failed: false }
    }

    /// Read a `T` at `base + off`.
    #[inline(always)]
    pub fn at<T: Copy + Default>(&mut self, base: u64, off: u32) -> T {
        if off == OFFSET_ABSENT || base == 0 {
            return T::default();
        }
        let p = base.wrapping_add(off as u64) as *const T;
        // SAFETY: bpf_probe_read_kernel copies through the kernel's fault-safe path; a
        // bad address returns an error instead of faulting.
        match unsafe { bpf_probe_read_kernel(p) } {
            Ok(v) => v,
            Err(_) => {
                self.failed = true;
                T::default()
            }
        }
    }

    /// Whether the offset exists on this kernel (a verifier constant).
    #[inline(always)]
    pub fn present(off: u32) -> bool {
        off != OFFSET_ABSENT
    }
}

/// `&mm->vma_writer_wait`, or 0 when the offset is absent or `mm` is NULL.
#[inline(always)]
pub fn writer_wait_of(mm: u64) -> u64 {
    let off = global!(OFFSETS.mm_vma_writer_wait);
    if off == OFFSET_ABSENT || mm == 0 {
        0
    } else {
        mm.wrapping_add(off as u64)
    }
}

/// `mm->mm_lock_seq.sequence`; `None` when the offset is absent or `mm` is NULL.
#[inline(always)]
pub fn mm_seq(mm: u64, r: &mut Reads) -> Option<u32> {
    let off = global!(OFFSETS.mm_mm_lock_seq);
    if mm != 0 && Reads::present(off) {
        Some(r.at::<u32>(mm, off))
    } else {
        None
    }
}

/// `mm->mm_lock_seq.sequence` into the event (sets `MM_SEQ`).
#[inline(always)]
pub fn fill_mm(ev: &mut Event, mm: u64, r: &mut Reads) {
    ev.mm = mm;
    if let Some(seq) = mm_seq(mm, r) {
        ev.mm_lock_seq = seq;
        ev.flags |= flags::MM_SEQ;
    }
}

/// The VMA's identity and lock state into the event: `vm_refcnt` first (the value the
/// protocol is about), then `vm_lock_seq`, then the mm's sequence. Sets `VMA_FIELDS` and,
/// through [`fill_mm`], `MM_SEQ`.
#[inline(always)]
pub fn fill_vma(ev: &mut Event, vma: u64, r: &mut Reads) {
    ev.vma = vma;
    if vma == 0 {
        return;
    }
    ev.refcnt = r.at::<u32>(vma, global!(OFFSETS.vma_vm_refcnt));
    ev.vm_lock_seq = r.at::<u32>(vma, global!(OFFSETS.vma_vm_lock_seq));
    ev.vm_start = r.at::<u64>(vma, global!(OFFSETS.vma_vm_start));
    ev.vm_end = r.at::<u64>(vma, global!(OFFSETS.vma_vm_end));
    ev.vm_flags = r.at::<u64>(vma, global!(OFFSETS.vma_vm_flags));
    let mm = r.at::<u64>(vma, global!(OFFSETS.vma_vm_mm));
    if Reads::present(global!(OFFSETS.vma_vm_refcnt)) {
        ev.flags |= flags::VMA_FIELDS;
    }
    fill_mm(ev, mm, r);
}

/// The `mm` of a VMA.
#[inline(always)]
pub fn mm_of(vma: u64, r: &mut Reads) -> u64 {
    r.at::<u64>(vma, global!(OFFSETS.vma_vm_mm))
}

/// `struct vma_exclude_readers_state` (7.0+), read in full.
#[derive(Clone, Copy, Default)]
pub struct Ves {
    pub vma: u64,
    pub state: u32,
    pub detaching: u8,
    pub detached: u8,
    pub exclusive: u8,
}

#[inline(always)]
pub fn read_ves(ves: u64, r: &mut Reads) -> Ves {
    Ves {
        vma: r.at::<u64>(ves, global!(OFFSETS.ves_vma)),
        state: r.at::<u32>(ves, global!(OFFSETS.ves_state)),
        detaching: r.at::<u8>(ves, global!(OFFSETS.ves_detaching)),
        detached: r.at::<u8>(ves, global!(OFFSETS.ves_detached)),
        exclusive: r.at::<u8>(ves, global!(OFFSETS.ves_exclusive)),
    }
}

/// Whether a pointer-returning function returned an error pointer (`IS_ERR_VALUE`).
#[inline(always)]
pub fn is_err_ptr(p: u64) -> bool {
    p >= (-4095i64) as u64
}

/// A C `int` return value from a 64-bit register, sign-extended.
#[inline(always)]
pub fn int_ret(raw: u64) -> i64 {
    raw as u32 as i32 as i64
}
