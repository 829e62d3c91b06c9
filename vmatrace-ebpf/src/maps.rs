//! Maps shared by the programs. Names are part of the userspace contract
//! (`vmatrace::live::names`).

use aya_ebpf::{
    macros::map,
    maps::{Array, LruHashMap, PerCpuArray, RingBuf, StackTrace},
};
use vmatrace_common::{
    Event,
    counters::{BPF_F_MMAPABLE, COUNTER_SLOTS, FALLBACK_SLOTS},
    event::ReaderFallbacks,
};

/// Every streamed [`Event`]. Resized at load time (`map_max_entries`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Kernel stacks of slow waits (`EventKind::SlowWait`'s `ret`). No
/// `BPF_F_REUSE_STACKID`: an id keeps its stack for the session, so userspace resolves
/// each id once; a stack whose bucket is taken is counted (`SlowStackFailed`).
#[map]
pub static STACKS: StackTrace = StackTrace::with_max_entries(1024, 0);

/// Readers that fell back to `mmap_lock` because of a writer (`Counter::ReaderFailWriter`),
/// per process: one row of `FALLBACK_SLOTS` per CPU (resized at load time), a slot per
/// tgid found from `tgid % FALLBACK_SLOTS` by linear probing. A CPU writes only its row,
/// so plain stores; userspace sums the rows through mmap (no `bpf()` lookup: see
/// `BPF_F_MMAPABLE`) and frees the slots of processes that are gone.
#[map]
pub static READER_FALLBACKS: Array<ReaderFallbacks> =
    Array::with_max_entries(FALLBACK_SLOTS, BPF_F_MMAPABLE);

/// `[0]` = 1 while the session is armed: set by userspace once every hook is attached,
/// cleared before the first is detached. Until then the task filter refuses everyone, so
/// a call that starts while only its return probe is attached (or ends after its entry
/// probe was detached) is neither streamed nor reported as an unmatched return.
#[map]
pub static ARMED: Array<u32> = Array::with_max_entries(1, 0);

/// `[0]`: records this CPU submitted since it last forced a wake-up of the reader
/// (`emit::wakeup_flag`).
#[map]
pub static SINCE_WAKE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// `vmatrace_common::Counter`-indexed counters, one row of `COUNTER_SLOTS` per CPU
/// (resized at load time to the possible CPUs): plain increments, a CPU writes only its
/// row. Not a per-CPU map: userspace reads it through mmap, because a `bpf()` lookup
/// would make the kernel skip kprobe runs (see `BPF_F_MMAPABLE`).
#[map]
pub static COUNTERS: Array<u64> = Array::with_max_entries(COUNTER_SLOTS, BPF_F_MMAPABLE);

/// Saved at a function's entry, consumed at its return (per thread, keyed by
/// `pid_tgid`). A thread that sleeps in the rcuwait may return on another CPU, so these
/// are not per-CPU; LRU, so entries whose return was missed age out.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    /// `bpf_ktime_get_ns()` at entry.
    pub ts: u64,
    /// The pointer argument: the VMA, `ves` (7.x start-exclude), or the mm (readers).
    pub ptr: u64,
    /// The VMA when `ptr` is not the VMA (start-exclude), else `ptr`.
    pub vma: u64,
    /// Second / third argument as needed (state, detaching, address).
    pub arg1: u64,
    pub arg2: u64,
    /// `vm_refcnt` at entry.
    pub refcnt: u32,
    /// `vm_lock_seq` at entry (folded entries only).
    pub lock_seq: u32,
    /// The entry event's `arg` (folded entries only).
    pub entry_arg: u32,
    /// 1: the entry sent no event; its return stands for both (`flags::FOLDED`).
    pub folded: u32,
    /// 1: a read of the folded entry failed (its return is marked `READ_FAILED`).
    pub read_failed: u32,
    /// 1: a start-exclude entry of `__vma_start_write` (`detaching` 0) that also stands
    /// for that call's entry (`CONFIG.write_entry_from_exclude`): `__vma_start_write`'s
    /// return consumes it (`inflight::take_outer`) after start-exclude's return took the
    /// element's `live`.
    pub outer: u32,
    pub pad: u32,
    /// 1 from the entry to its return; 0 once the return consumed it. The element stays
    /// in the map (one per thread and family, reused in place by the next call), so a
    /// call costs two lockless lookups instead of an insert and a delete, which take the
    /// bucket and LRU locks.
    pub live: u32,
}

impl Inflight {
    /// No entry (`live` 0), every field defined: what `take` returns when there is none.
    pub const NONE: Inflight = Inflight {
        ts: 0,
        ptr: 0,
        vma: 0,
        arg1: 0,
        arg2: 0,
        refcnt: 0,
        lock_seq: 0,
        entry_arg: 0,
        folded: 0,
        read_failed: 0,
        outer: 0,
        pad: 0,
        live: 0,
    };

    /// Whether this is a saved entry (from `take`) rather than [`Inflight::NONE`].
    #[inline(always)]
    pub fn found(&self) -> bool {
        self.live != 0
    }
}

const INFLIGHT_ENTRIES: u32 = 16384;

/// `__vma_start_write`.
#[map]
pub static INFLIGHT_WRITE: LruHashMap<u64, Inflight> =
    LruHashMap::with_max_entries(INFLIGHT_ENTRIES, 0);
/// Start-exclude: `__vma_start_exclude_readers` (7.x) or `__vma_enter_locked` (6.19).
/// Separate from `INFLIGHT_WRITE` because one thread is inside both at once.
#[map]
pub static INFLIGHT_EXCLUDE: LruHashMap<u64, Inflight> =
    LruHashMap::with_max_entries(INFLIGHT_ENTRIES, 0);
/// `vma_mark_detached` (6.x) / `__vma_exclude_readers_for_detach` (7.x).
#[map]
pub static INFLIGHT_DETACH: LruHashMap<u64, Inflight> =
    LruHashMap::with_max_entries(INFLIGHT_ENTRIES, 0);
/// `lock_vma_under_rcu` arguments for its kretprobe (the hot path: kept apart so page
/// faults never evict a sleeping writer's entry).
#[map]
pub static INFLIGHT_READER: LruHashMap<u64, Inflight> =
    LruHashMap::with_max_entries(INFLIGHT_ENTRIES, 0);
/// `rcuwait_wake_up` calls that woke a writer (kprobe → kretprobe).
#[map]
pub static INFLIGHT_WAKE: LruHashMap<u64, Inflight> =
    LruHashMap::with_max_entries(INFLIGHT_ENTRIES, 0);

/// A task excluding readers from a VMA of some mm: the last one that started to.
///
/// Whether its exclusion is still in progress is not stored here but read from its call's
/// in-flight element (`family`'s map, key `pid_tgid`: `live` and the same VMA, see
/// [`excluding`]): the return, which clears `live` anyway, then has nothing to undo here,
/// one map lookup less on every writer-path return. `rcuwait_wake_up` is rare next to
/// write locks, so the extra lookup lands on the rare side.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Excluder {
    pub vma: u64,
    pub pid_tgid: u64,
    /// 0 while the excluder rewrites the element in place, 1 once it is consistent.
    pub ready: u32,
    /// [`FAMILY_WRITE`], [`FAMILY_EXCLUDE`] or [`FAMILY_DETACH`].
    pub family: u32,
}

/// Which in-flight map holds an excluder's call.
pub const FAMILY_WRITE: u32 = 0;
pub const FAMILY_EXCLUDE: u32 = 1;
pub const FAMILY_DETACH: u32 = 2;

/// Whether `x`'s exclusion is in progress: its call's in-flight element is live (between
/// the entry and the return) for the same VMA.
#[inline(always)]
pub fn excluding(x: &Excluder) -> bool {
    if x.ready == 0 || x.vma == 0 {
        return false;
    }
    let e = match x.family {
        FAMILY_WRITE => INFLIGHT_WRITE.get_ptr(x.pid_tgid),
        FAMILY_EXCLUDE => INFLIGHT_EXCLUDE.get_ptr(x.pid_tgid),
        _ => INFLIGHT_DETACH.get_ptr(x.pid_tgid),
    };
    // SAFETY: a value pointer from the lookup; the owning thread writes it concurrently,
    // each field is read once.
    e.is_some_and(|p| unsafe {
        core::ptr::read_volatile(&raw const (*p).live) != 0
            && core::ptr::read_volatile(&raw const (*p).vma) == x.vma
    })
}

/// Keyed by `&mm->vma_writer_wait` (mm + offset). Only excluders wait on that rcuwait,
/// so a key hit tells `rcuwait_wake_up(w)` that `w` is a writer wait, and which VMA.
#[map]
pub static EXCLUDERS: LruHashMap<u64, Excluder> = LruHashMap::with_max_entries(4096, 0);

/// Ring-buffer record size check (the reserve/output size is this constant).
const _: () = assert!(core::mem::size_of::<Event>() == 128);
