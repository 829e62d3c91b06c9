//! The eBPF programs' load-time globals: the kernel's struct offsets and their configuration.
//!
//! Rust eBPF has no CO-RE, so every struct field offset the programs read comes from the
//! running kernel's BTF and is written into these globals before load
//! (`EbpfLoader::override_global`). The globals live in `.rodata`, which aya freezes before
//! the programs load, so the verifier sees them as constants: a branch on
//! [`OFFSET_ABSENT`] is pruned and the offsets count as known scalars.

/// Marks an offset the running kernel does not have (e.g. `vma_exclude_readers_state` on
/// 6.x). Programs never read a field whose offset is absent.
pub const OFFSET_ABSENT: u32 = u32::MAX;

/// The [`Offsets`] struct, its all-absent value and its field table, from one list:
/// `name => "struct.field"`.
macro_rules! offsets {
    ($($(#[$m:meta])* $name:ident => $kernel:literal,)*) => {
        /// Byte offsets of every kernel field the programs read. Names follow the kernel's.
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct Offsets {
            $($(#[$m])* pub $name: u32,)*
        }

        impl Offsets {
            /// Every field absent: a program reading with these offsets reads nothing.
            pub const ABSENT: Self = Self { $($name: OFFSET_ABSENT,)* };

            /// Every field in declaration order: its name here (the serde key) and the
            /// kernel's `struct.field` it is the offset of.
            pub const FIELDS: &'static [(&'static str, &'static str)] =
                &[$((stringify!($name), $kernel),)*];

            /// The field named `name` (a [`Offsets::FIELDS`] name).
            pub fn get(&self, name: &str) -> Option<u32> {
                match name {
                    $(stringify!($name) => Some(self.$name),)*
                    _ => None,
                }
            }

            /// Set the field named `name`; false when there is none.
            pub fn set(&mut self, name: &str, value: u32) -> bool {
                match name {
                    $(stringify!($name) => {
                        self.$name = value;
                        true
                    })*
                    _ => false,
                }
            }
        }
    };
}

offsets! {
    /// `vm_area_struct.vm_start`
    vma_vm_start => "vm_area_struct.vm_start",
    /// `vm_area_struct.vm_end`
    vma_vm_end => "vm_area_struct.vm_end",
    /// `vm_area_struct.vm_mm`
    vma_vm_mm => "vm_area_struct.vm_mm",
    /// `vm_area_struct.vm_flags`
    vma_vm_flags => "vm_area_struct.vm_flags",
    /// `vm_area_struct.vm_lock_seq`
    vma_vm_lock_seq => "vm_area_struct.vm_lock_seq",
    /// `vm_area_struct.vm_refcnt` (`refcount_t` → `atomic_t` → `int counter`)
    vma_vm_refcnt => "vm_area_struct.vm_refcnt",
    /// `mm_struct.mm_lock_seq` (`seqcount_t`; `.sequence` is its first member)
    mm_mm_lock_seq => "mm_struct.mm_lock_seq",
    /// `mm_struct.vma_writer_wait` (`struct rcuwait`; `.task` is its first member)
    mm_vma_writer_wait => "mm_struct.vma_writer_wait",
    /// `vma_exclude_readers_state.vma` (7.0+)
    ves_vma => "vma_exclude_readers_state.vma",
    /// `vma_exclude_readers_state.state` (7.0+)
    ves_state => "vma_exclude_readers_state.state",
    /// `vma_exclude_readers_state.detaching` (7.0+)
    ves_detaching => "vma_exclude_readers_state.detaching",
    /// `vma_exclude_readers_state.detached` (7.0+)
    ves_detached => "vma_exclude_readers_state.detached",
    /// `vma_exclude_readers_state.exclusive` (7.0+)
    ves_exclusive => "vma_exclude_readers_state.exclusive",
    /// `task_struct.comm` (`char[16]`): fentry/fexit programs read it with two loads
    /// through `bpf_get_current_task_btf()` instead of the `bpf_get_current_comm` helper.
    /// Absent: the helper.
    task_comm => "task_struct.comm",
    /// `pt_regs.orig_ax` (x86-64): the syscall number, read through `bpf_task_pt_regs`
    /// for slow waits. Absent: not read.
    pt_regs_syscall => "pt_regs.syscall",
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

/// The lab's program (`vmatrace stress`, not the tracer): whose page faults the race
/// widener delays, and for how long.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LabConfig {
    /// [`LabConfig::SCOPE_PROCESS`]: the tasks of process `tgid`;
    /// [`LabConfig::SCOPE_CGROUP`]: the tasks of cgroup v2 `cgroup_id`; 0: nobody.
    pub scope: u32,
    pub tgid: u32,
    pub cgroup_id: u64,
    /// The widener's busy-wait per probe hit.
    pub delay_ns: u64,
}

impl LabConfig {
    pub const SCOPE_PROCESS: u32 = 1;
    pub const SCOPE_CGROUP: u32 = 2;
    /// Nobody in scope: the programs do nothing.
    pub const DEFAULT: Self = Self {
        scope: 0,
        tgid: 0,
        cgroup_id: 0,
        delay_ns: 0,
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
#[cfg(feature = "user")]
// SAFETY: `repr(C)`, `Copy`, two `u32`s then two `u64`s, no padding.
unsafe impl aya::Pod for LabConfig {}
