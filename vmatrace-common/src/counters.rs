//! Per-CPU counters kept by the eBPF programs (`COUNTERS`: one row of
//! [`COUNTER_SLOTS`] per CPU in an mmap-able array).
//!
//! Hot paths count instead of streaming; every loss is a counter, never silent.

macro_rules! counters {
    ($($(#[$m:meta])* $name:ident = $idx:literal, $key:literal;)*) => {
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Counter { $($(#[$m])* $name = $idx,)* }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name,)*];
            /// Stable snake_case name used in summaries and logs.
            pub const fn key(self) -> &'static str {
                match self { $(Counter::$name => $key,)* }
            }
        }
    };
}

counters! {
    /// `bpf_ringbuf_reserve` failed: the ring buffer was full, an event was lost.
    RingbufReserveFailed = 0, "ringbuf_reserve_failed";
    /// A return probe found no matching entry (the call began before attach, or the entry
    /// was evicted from the LRU in-flight map). Missed returns are `MissedReturn`.
    UnmatchedReturn = 1, "unmatched_return";
    /// The in-flight map was full; an entry could not be remembered.
    InflightMapFull = 2, "inflight_map_full";
    /// A `bpf_probe_read_kernel` failed; the affected fields read as 0.
    ProbeReadFailed = 3, "probe_read_failed";
    /// `lock_vma_under_rcu` returned a locked VMA.
    ReaderAcquireOk = 4, "reader_acquire_ok";
    /// `lock_vma_under_rcu` returned NULL.
    ReaderAcquireFail = 5, "reader_acquire_fail";
    /// `lock_vma_under_rcu` returned NULL while the VMA's refcount had the exclusion flag set.
    ReaderFailExcluded = 6, "reader_fail_excluded";
    /// Reader-acquire results streamed (sampled).
    ReaderSampled = 7, "reader_sampled";
    /// `vma_refcount_put` calls seen (reader release, fault-retry sites only).
    ReaderRelease = 8, "reader_release";
    /// Events filtered out in the kernel (tgid/comm/cgroup filter or the tracer itself).
    Filtered = 9, "filtered";
    /// `rcuwait_wake_up` calls on an mm's `vma_writer_wait` that woke a task.
    WriterWake = 10, "writer_wake";
    /// `lock_next_vma` results.
    ReaderNextVma = 11, "reader_next_vma";
    /// `rcuwait_wake_up` on a waiting writer returned 0: the writer was already running
    /// (it had not gone to sleep yet), so the wake-up changed nothing. kretprobe mode only.
    WriterWakeNoop = 12, "writer_wake_noop";
    /// An entry probe found the same thread's previous entry of that function still in
    /// flight: the previous call's return was missed. Measured cause: the kernel skipped
    /// the return program (`ReturnRunsSkipped`); also possible with kretprobes when the
    /// instance pool is exhausted while writers sleep.
    MissedReturn = 13, "missed_return";
    /// A slow wait's kernel stack could not be kept (`bpf_get_stackid` failed: the
    /// `STACKS` map is full or its bucket holds another stack). Its `SlowWait` event
    /// still carries the syscall.
    SlowStackFailed = 14, "slow_stack_failed";
    /// `lock_vma_under_rcu` returned NULL while a writer held the mm's write lock
    /// (`mm_lock_seq` odd) or excluded readers from the VMA at the address: the reader
    /// fell back to `mmap_lock` because of a writer. Every one, per process in
    /// `READER_FALLBACKS`.
    ReaderFailWriter = 15, "reader_fail_writer";
    /// Runs of this session's entry programs (fentry, kprobe) that have a return program
    /// (fexit, kretprobe) on the same function, which the kernel skipped:
    /// `recursion_misses` in the programs' fdinfo. A fentry program is
    /// skipped when another run of the same program is active on the CPU, which happens
    /// when a task is preempted inside the program (trampolines run with migration, not
    /// preemption, disabled); a kprobe program when any kprobe program is active on the CPU
    /// (an interrupt on top of one). Each is an event never seen, and usually the
    /// `UnmatchedReturn` of its call. Kept by userspace (not in the `COUNTERS` map).
    EntryRunsSkipped = 16, "entry_runs_skipped";
    /// The same for their return programs (fexit, kretprobe): each is a return never
    /// seen, and usually the `MissedReturn` of that thread's next call.
    ReturnRunsSkipped = 17, "return_runs_skipped";
    /// The same for programs without a partner (`lock_vma_under_rcu` fexit, the VMA
    /// lifetime hooks, tracepoints): each is one event or one counted outcome never seen.
    SingleRunsSkipped = 18, "single_runs_skipped";
}

/// Slots of one CPU's row of the in-kernel `COUNTERS` map (counters below this index are
/// kept by the programs; the ones above by userspace from the kernel's own per-program
/// accounting). 16 × 8 bytes: a row is two whole cache lines, so CPUs never share one.
pub const COUNTER_SLOTS: u32 = 16;

/// Slots of one CPU's row of `READER_FALLBACKS` (a power of two: indexed by tgid).
pub const FALLBACK_SLOTS: u32 = 1024;

/// Slots tried from a tgid's own before its fallback goes uncounted per process (it is
/// still in `Counter::ReaderFailWriter`).
pub const FALLBACK_PROBES: u32 = 4;

/// `BPF_F_MMAPABLE`: userspace reads `COUNTERS` and `READER_FALLBACKS` through mmap.
/// A `bpf()` lookup raises the CPU's `bpf_prog_active` with preemption enabled; a reader
/// preempted there makes the kernel skip every kprobe program run on that CPU until it
/// resumes (seen in the VM matrix: 1 350 runs in one oversubscribed run).
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
