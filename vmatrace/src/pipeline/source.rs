//! Where events come from: the live ring buffer, a trace file, a follow stream, or the
//! simulator. Every source yields the same items.

use serde::{Deserialize, Serialize};
use vmatrace_common::{Event, event::flags};

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

/// Add a decoded event to `out` as the rest of vmatrace sees it: a folded return
/// (`flags::FOLDED`, the default since entries are not streamed) becomes its entry and
/// itself, so the validator, totals, statistics and every sink (the trace too) see the
/// stream as if each entry had been sent, and a recorded trace replays to the same
/// result. The ring reader and the trace reader call this as they decode: nothing after
/// them unfolds.
#[inline]
pub fn push_unfolded(out: &mut Vec<Event>, ev: Event) {
    match ev.unfold() {
        Some((entry, exit)) => out.extend([entry, exit]),
        None => out.push(ev),
    }
}

/// A whole batch of decoded events, unfolded like [`push_unfolded`]: a batch without a
/// folded return (a trace recorded with `--stream-entries`, or a burst of readers) is
/// returned as it is, without a second copy.
pub fn unfolded(events: Vec<Event>) -> Vec<Event> {
    if !events.iter().any(|e| e.has(flags::FOLDED)) {
        return events;
    }
    let mut out = Vec::with_capacity(events.len() * 2);
    for ev in events {
        push_unfolded(&mut out, ev);
    }
    out
}

/// One item from a source.
#[derive(Clone, Debug, PartialEq)]
pub enum SourceItem {
    /// Decoded events in the order the ring buffer delivered them, folded returns
    /// unfolded ([`push_unfolded`]).
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

#[cfg(test)]
mod tests {
    use vmatrace_common::EventKind;

    use super::*;

    fn event(kind: EventKind, flags: u16) -> Event {
        let mut e = Event::ZERO;
        e.kind = kind as u16;
        e.flags = flags;
        e
    }

    #[test]
    fn a_batch_is_unfolded_in_place_of_its_folded_returns() {
        let reader = event(EventKind::ReaderAcquire, 0);
        let folded = event(
            EventKind::WriteLockExit,
            flags::RET | flags::PAIRED | flags::FOLDED,
        );
        let (entry, exit) = folded.unfold().expect("a folded return");
        assert_eq!(
            unfolded(vec![reader, folded, reader]),
            [reader, entry, exit, reader]
        );
        // Nothing folded: the same allocation comes back.
        let plain = vec![reader, exit];
        let at = plain.as_ptr();
        let back = unfolded(plain);
        assert_eq!(back.as_ptr(), at);
        assert_eq!(back, [reader, exit]);
    }
}
