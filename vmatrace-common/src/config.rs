//! Load-time configuration of the eBPF programs.
//!
//! Rust eBPF has no CO-RE, so every struct field offset the programs read comes from the
//! running kernel's BTF and is written into these globals before load
//! (`EbpfLoader::override_global`). The globals live in `.rodata`, which aya freezes before
//! the programs load, so the verifier sees them as constants: a branch on
//! [`OFFSET_ABSENT`] is pruned and the offsets count as known scalars.

/// Marks an offset the running kernel does not have (e.g. `vma_exclude_readers_state` on
/// 6.x). Programs never read a field whose offset is absent.
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// Byte offsets of every kernel field the programs read. Names follow the kernel's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// `vm_area_struct.vm_start`
    pub vma_vm_start: u32,
    /// `vm_area_struct.vm_end`
    pub vma_vm_end: u32,
    /// `vm_area_struct.vm_mm`
    pub vma_vm_mm: u32,
    /// `vm_area_struct.vm_flags`
    pub vma_vm_flags: u32,
    /// `vm_area_struct.vm_lock_seq`
    pub vma_vm_lock_seq: u32,
    /// `vm_area_struct.vm_refcnt` (`refcount_t` → `atomic_t` → `int counter`)
    pub vma_vm_refcnt: u32,
    /// `mm_struct.mm_lock_seq` (`seqcount_t`; `.sequence` is its first member)
    pub mm_mm_lock_seq: u32,
    /// `mm_struct.vma_writer_wait` (`struct rcuwait`; `.task` is its first member)
    pub mm_vma_writer_wait: u32,
    /// `vma_exclude_readers_state.vma` (7.0+)
    pub ves_vma: u32,
    /// `vma_exclude_readers_state.state` (7.0+)
    pub ves_state: u32,
    /// `vma_exclude_readers_state.detaching` (7.0+)
    pub ves_detaching: u32,
    /// `vma_exclude_readers_state.detached` (7.0+)
    pub ves_detached: u32,
    /// `vma_exclude_readers_state.exclusive` (7.0+)
    pub ves_exclusive: u32,
    /// `task_struct.comm` (`char[16]`): fentry/fexit programs read it with two loads
    /// through `bpf_get_current_task_btf()` instead of the `bpf_get_current_comm` helper.
    /// Absent: the helper.
    pub task_comm: u32,
    /// `pt_regs.orig_ax` (x86-64): the syscall number, read through `bpf_task_pt_regs`
    /// for slow waits. Absent: not read.
    pub pt_regs_syscall: u32,
}

impl Offsets {
    /// Every field absent: a program reading with these offsets reads nothing.
    pub const ABSENT: Self = Self {
        vma_vm_start: OFFSET_ABSENT,
        vma_vm_end: OFFSET_ABSENT,
        vma_vm_mm: OFFSET_ABSENT,
        vma_vm_flags: OFFSET_ABSENT,
        vma_vm_lock_seq: OFFSET_ABSENT,
        vma_vm_refcnt: OFFSET_ABSENT,
        mm_mm_lock_seq: OFFSET_ABSENT,
        mm_vma_writer_wait: OFFSET_ABSENT,
        ves_vma: OFFSET_ABSENT,
        ves_state: OFFSET_ABSENT,
        ves_detaching: OFFSET_ABSENT,
        ves_detached: OFFSET_ABSENT,
        ves_exclusive: OFFSET_ABSENT,
        task_comm: OFFSET_ABSENT,
        pt_regs_syscall: OFFSET_ABSENT,
    };
}

/// Filters and knobs, also a load-time global.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgramConfig {
    /// The tracer's own tgid: its events are dropped in the kernel (the kernel itself
    /// calls `lock_vma_under_rcu` for BPF stack maps and task-VMA iterators).
    pub self_tgid: u32,
    /// Only trace this tgid (0 = all).
    pub filter_tgid: u32,
    /// Only trace tasks whose comm starts with `filter_comm` (`filter_comm_len` = 0: all).
    pub filter_comm: [u8; 16],
    pub filter_comm_len: u32,
    /// Stream one in N reader-acquire results (0 = never stream, count only). Failed
    /// acquires under an exclusion are always counted per outcome.
    pub reader_sample_every: u32,
    /// Only trace tasks in this cgroup v2 id (0 = all).
    pub filter_cgroup: u64,
    /// Records a CPU submits between two forced wake-ups of the reader: a quarter of the
    /// ring's records shared out over the possible CPUs (the loader sets it from the ring
    /// size it creates and the CPU count), so all CPUs together force one before a quarter
    /// of the ring can be unread. Counted per CPU, with no question to the ring.
    pub wake_every_records: u64,
    /// 1: entry programs stream their own event (`--stream-entries`), so a wait still in
    /// progress is visible before it ends. 0 (default): an entry only saves what its
    /// return needs, and the return's event stands for both (`flags::FOLDED`): half the
    /// events and the cheaper program on every write lock.
    pub stream_entries: u32,
    /// 1 (7.x, set from the plan): `__vma_start_write` has no entry program. Its first
    /// act is to call `__vma_start_exclude_readers` (`detaching` 0), whose entry saves
    /// what the write lock's return needs as well (`write_lock_request` is a proxy).
    pub write_entry_from_exclude: u32,
    /// A writer-path return whose wait is at least this many ns is preceded by a
    /// `SlowWait` event (syscall and kernel stack); 0 = never. Below it the return
    /// program pays one comparison.
    pub slow_wait_ns: u64,
}

impl ProgramConfig {
    pub const DEFAULT: Self = Self {
        self_tgid: 0,
        filter_tgid: 0,
        filter_comm: [0; 16],
        filter_comm_len: 0,
        reader_sample_every: 0,
        filter_cgroup: 0,
        wake_every_records: 128,
        stream_entries: 0,
        write_entry_from_exclude: 0,
        slow_wait_ns: 0,
    };
}

/// Byte offsets of the fields the programs read in the `mmap_lock` tracepoint records
/// (`/sys/kernel/tracing/events/mmap_lock/*/format`). Load-time global `MMAP_LOCK_TP`.
/// Added next to [`Offsets`] (not inside it) so the shared `Offsets` layout stays as is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmapLockTpOffsets {
    /// `struct mm_struct *mm` (both tracepoints)
    pub mm: u32,
    /// `bool write` (both tracepoints)
    pub write: u32,
    /// `bool success` (`mmap_lock_acquire_returned` only)
    pub success: u32,
    /// Keeps the size a multiple of 8; always 0.
    pub reserved: u32,
}

impl MmapLockTpOffsets {
    /// The layout of every kernel from 6.0 on (after `memcg_path` became `memcg_id`).
    pub const DEFAULT: Self = Self {
        mm: 8,
        write: 24,
        success: 25,
        reserved: 0,
    };
}

#[cfg(feature = "user")]
// SAFETY: both are `repr(C)`, `Copy`, and contain only integers with no padding holes
// that matter to the kernel (the layout is asserted in tests).
unsafe impl aya::Pod for Offsets {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for ProgramConfig {}
#[cfg(feature = "user")]
// SAFETY: `repr(C)`, `Copy`, two `u32`s, a `u64` and 16 bytes, no padding.
unsafe impl aya::Pod for crate::event::ReaderFallbacks {}
#[cfg(feature = "user")]
// SAFETY: `repr(C)`, `Copy`, four `u32`s, no padding.
unsafe impl aya::Pod for MmapLockTpOffsets {}
