//! Where events come from: the live ring buffer, a trace file, a follow stream, or the
//! simulator. Every source yields the same items.

use serde::{Deserialize, Serialize};
use vmatrace_common::Event;

/// A slow wait's kernel stack, symbolized (a `SlowWait` event's `ret` is its `id`).
/// Innermost frame first, each `function+0xoffset` (or `?`): never a raw address.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelStack {
    pub id: u32,
    pub frames: Vec<String>,
}

/// Loss and count totals from the kernel (per-CPU counters summed) at one instant.
/// Indexed by `vmatrace_common::Counter as usize`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub values: Vec<u64>,
    /// Per process, cumulative: readers that fell back to `mmap_lock` because of a
    /// writer (`READER_FALLBACKS`; every one, not sampled). Sorted by tgid.
    pub fallbacks: Vec<ProcessFallbacks>,
}

/// One process's writer-caused reader fallbacks so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessFallbacks {
    pub tgid: u32,
    pub count: u64,
    /// The comm of the task that fell back first (the kernel's entry).
    pub comm: [u8; 16],
}

impl CounterSnapshot {
    pub fn get(&self, c: vmatrace_common::Counter) -> u64 {
        self.values.get(c as usize).copied().unwrap_or(0)
    }
}

/// One item from a source.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceItem {
    /// Decoded events in the order the ring buffer delivered them.
    Events(Vec<Event>),
    /// Cumulative kernel counters (replaces the previous snapshot).
    Counters(CounterSnapshot),
    /// Records userspace could not decode (short or unknown kind): counted, not dropped silently.
    Undecodable(u64),
    /// A replayed trace's records lost to the order check so far (missing, duplicated,
    /// reordered; replaces the previous snapshot). Sent before the record that revealed
    /// a gap, so the validator resynchronises before judging it.
    Sequence(crate::trace::SequenceLosses),
    /// A kernel stack that `SlowWait` events refer to, sent before the first of them.
    Stack(KernelStack),
}
