//! Reading kernel structs at the BTF offsets of the running kernel.
//!
//! Two ways to read, chosen per program at compile time (`Reads<DIRECT>`):
//! - kprobe/kretprobe programs see their arguments as plain scalars, so every read goes
//!   through `bpf_probe_read_kernel` (`DIRECT = false`);
//! - fentry/fexit programs get typed pointers (the verifier knows `vma` is a
//!   `struct vm_area_struct *` from the function's BTF), so a field is a plain load
//!   (`DIRECT = true`): the verifier checks it against the BTF layout and turns it into a
//!   fault-safe `PROBE_MEM` load, an instruction instead of a helper call. Pointers loaded
//!   that way (`vma->vm_mm`, `ves->vma`) are typed again, so the walk stays direct. A
//!   pointer that went through a map (a saved entry) is a scalar again: only the probe
//!   reads may use it.
//!
//! An absent offset (`OFFSET_ABSENT`) or a NULL base reads as 0 without touching memory; a
//! failing helper reads as 0 and sets `Reads::failed`, which the caller turns into the
//! event's `READ_FAILED` flag and the `ProbeReadFailed` counter (a direct load that faults
//! reads as 0 without a trace: the kernel's exception fixup).

use aya_ebpf::helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_buf};
use vmatrace_common::{Event, OFFSET_ABSENT, event::flags};

use crate::globals::global;

/// `VMA_LOCK_OFFSET` / `VM_REFCNT_EXCLUDE_READERS_FLAG`: bit 30 on every generation.
pub const EXCLUDE_READERS_FLAG: u32 = 1 << 30;

/// Accumulates failed reads for one event; `DIRECT`: plain loads through BTF-typed
/// pointers (fentry/fexit only, see the module comment).
#[derive(Clone, Copy)]
pub struct Reads<const DIRECT: bool = false> {
    pub failed: bool,
}

impl<const DIRECT: bool> Reads<DIRECT> {
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
        if DIRECT {
            // SAFETY: `base` is a BTF-typed kernel pointer of a tracing program and `off` a
            // verifier constant from BTF: the verifier checks the access against the type
            // and emits a fault-safe load.
            return unsafe { core::ptr::read_volatile(p) };
        }
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
}

/// Whether the offset exists on this kernel (a verifier constant).
#[inline(always)]
pub fn present(off: u32) -> bool {
    off != OFFSET_ABSENT
}

/// The first `N` bytes of a kernel struct, read with one helper call. Fields inside are
/// then taken from this copy: their offsets are verifier constants (frozen `.rodata`), so
/// the bounds test is decided at load time and the copy is a plain stack load. Helper
/// calls are what the writer-path programs spend their time on (docs/performance.md).
#[repr(C, align(8))]
pub struct Block<const N: usize> {
    bytes: [u8; N],
    /// The base was NULL or the read failed: every field falls back to its own read.
    valid: bool,
}

impl<const N: usize> Block<N> {
    /// With `DIRECT` reads nothing: each field is then its own plain load, cheaper than one
    /// helper call for the block.
    #[inline(always)]
    pub fn read<const DIRECT: bool>(base: u64) -> Self {
        let mut b = Block {
            bytes: [0u8; N],
            valid: false,
        };
        if !DIRECT && base != 0 {
            // SAFETY: fault-safe kernel read into a stack buffer of exactly N bytes.
            b.valid = unsafe { bpf_probe_read_kernel_buf(base as *const u8, &mut b.bytes) }.is_ok();
        }
        b
    }

    /// The `T` at `base + off`: from the block when it lies inside and is naturally
    /// aligned, else read on its own (absent offsets and NULL bases read as 0).
    #[inline(always)]
    pub fn field<T: Copy + Default, const D: bool>(
        &self,
        base: u64,
        off: u32,
        r: &mut Reads<D>,
    ) -> T {
        let size = core::mem::size_of::<T>() as u32;
        if self.valid && off < N as u32 && off + size <= N as u32 && off % size == 0 {
            // SAFETY: in bounds (checked above) and aligned: the block is 8-aligned and
            // `off` a multiple of T's size.
            unsafe { core::ptr::read(self.bytes.as_ptr().add(off as usize) as *const T) }
        } else {
            r.at::<T>(base, off)
        }
    }
}

/// Bytes of a VMA's head read at once: `vm_start`, `vm_end`, `vm_mm`, `vm_flags` and
/// `vm_lock_seq` lie in the first 48 bytes on 6.15–7.3 (`vm_refcnt` is further down).
const VMA_HEAD: usize = 48;
/// `struct vma_exclude_readers_state` is 16 bytes on 7.0–7.3.
const VES_SIZE: usize = 16;

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
pub fn mm_seq<const D: bool>(mm: u64, r: &mut Reads<D>) -> Option<u32> {
    let off = global!(OFFSETS.mm_mm_lock_seq);
    if mm != 0 && present(off) {
        Some(r.at::<u32>(mm, off))
    } else {
        None
    }
}

/// `mm->mm_lock_seq.sequence` into the event (sets `MM_SEQ`).
#[inline(always)]
pub fn fill_mm<const D: bool>(ev: &mut Event, mm: u64, r: &mut Reads<D>) {
    ev.mm = mm;
    if let Some(seq) = mm_seq(mm, r) {
        ev.mm_lock_seq = seq;
        ev.flags |= flags::MM_SEQ;
    }
}

/// The VMA's identity and lock state into the event: [`read_head`]'s fields, then the
/// range and flags from the same head block, then the mm's sequence. Sets `VMA_FIELDS`
/// and, through [`fill_mm`], `MM_SEQ`.
#[inline(always)]
pub fn fill_vma<const D: bool>(ev: &mut Event, vma: u64, r: &mut Reads<D>) {
    ev.vma = vma;
    if vma == 0 {
        return;
    }
    let (h, head) = read_head_block(vma, r);
    ev.refcnt = h.refcnt;
    ev.vm_lock_seq = h.lock_seq;
    ev.vm_start = head.field::<u64, D>(vma, global!(OFFSETS.vma_vm_start), r);
    ev.vm_end = head.field::<u64, D>(vma, global!(OFFSETS.vma_vm_end), r);
    ev.vm_flags = head.field::<u64, D>(vma, global!(OFFSETS.vma_vm_flags), r);
    if present(global!(OFFSETS.vma_vm_refcnt)) {
        ev.flags |= flags::VMA_FIELDS;
    }
    fill_mm(ev, h.mm, r);
}

/// The lock state of a VMA: the count and write sequence (what a folded entry hands to
/// its return), and the mm (the `EXCLUDERS` key).
#[derive(Clone, Copy, Default)]
pub struct Head {
    pub refcnt: u32,
    pub lock_seq: u32,
    pub mm: u64,
}

/// A VMA's [`Head`]; NULL reads as all 0.
#[inline(always)]
pub fn read_head<const D: bool>(vma: u64, r: &mut Reads<D>) -> Head {
    if vma == 0 {
        return Head::default();
    }
    read_head_block(vma, r).0
}

/// [`Head`] and the head block it came from (for [`fill_vma`]'s other fields).
/// `vm_refcnt` is read first, the value the protocol is about.
#[inline(always)]
fn read_head_block<const D: bool>(vma: u64, r: &mut Reads<D>) -> (Head, Block<VMA_HEAD>) {
    let refcnt = r.at::<u32>(vma, global!(OFFSETS.vma_vm_refcnt));
    let head = Block::<VMA_HEAD>::read::<D>(vma);
    let h = Head {
        refcnt,
        lock_seq: head.field::<u32, D>(vma, global!(OFFSETS.vma_vm_lock_seq), r),
        mm: head.field::<u64, D>(vma, global!(OFFSETS.vma_vm_mm), r),
    };
    (h, head)
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
pub fn read_ves<const D: bool>(ves: u64, r: &mut Reads<D>) -> Ves {
    let b = Block::<VES_SIZE>::read::<D>(ves);
    Ves {
        vma: b.field::<u64, D>(ves, global!(OFFSETS.ves_vma), r),
        state: b.field::<u32, D>(ves, global!(OFFSETS.ves_state), r),
        detaching: b.field::<u8, D>(ves, global!(OFFSETS.ves_detaching), r),
        detached: b.field::<u8, D>(ves, global!(OFFSETS.ves_detached), r),
        exclusive: b.field::<u8, D>(ves, global!(OFFSETS.ves_exclusive), r),
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
