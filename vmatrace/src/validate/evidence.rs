//! The recent-events ring that anomalies take their evidence from.
//!
//! Keeping the last N events of every VMA would cost N × 128 bytes per tracked VMA
//! (2 GiB for a million VMAs at N = 16). Anomalies are rare, so one global ring of recent
//! events is kept instead and searched backwards when an anomaly needs its VMA's history.

use vmatrace_common::{Event, EventKind};

/// Events of one VMA attached to an anomaly.
pub const EVIDENCE_EVENTS: usize = 16;

pub struct Recent {
    ring: Vec<Event>,
    next: usize,
    filled: bool,
}

impl Recent {
    pub fn new(capacity: usize) -> Self {
        Self {
            ring: vec![Event::ZERO; capacity.max(1)],
            next: 0,
            filled: false,
        }
    }

    #[inline]
    pub fn push(&mut self, ev: &Event) {
        self.ring[self.next..=self.next].copy_from_slice(std::slice::from_ref(ev));
        self.next += 1;
        if self.next == self.ring.len() {
            self.next = 0;
            self.filled = true;
        }
    }

    /// Up to [`EVIDENCE_EVENTS`] most recent events of `vma` (and the write-unlocks of
    /// its `mm`, which end its write lock), oldest first.
    pub fn of_vma(&self, vma: u64, mm: u64) -> Vec<Event> {
        self.of_vma_until(vma, mm, None)
    }

    /// Like [`Recent::of_vma`], but ending with `last` (an anomaly decided after later
    /// events arrived); the newest events when `last` has left the ring.
    pub fn of_vma_until(&self, vma: u64, mm: u64, last: Option<&Event>) -> Vec<Event> {
        let len = if self.filled {
            self.ring.len()
        } else {
            self.next
        };
        let newest = |i: usize| &self.ring[(self.next + self.ring.len() - 1 - i) % self.ring.len()];
        let start = last
            .and_then(|l| (0..len).find(|&i| newest(i) == l))
            .unwrap_or(0);
        let mut out = Vec::with_capacity(EVIDENCE_EVENTS);
        for i in start..len {
            let ev = newest(i);
            let unlock = ev.kind == EventKind::MmWriteUnlock as u16 && mm != 0 && ev.mm == mm;
            if (vma != 0 && ev.vma == vma) || unlock {
                out.push(*ev);
                if out.len() == EVIDENCE_EVENTS {
                    break;
                }
            }
        }
        out.reverse();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_latest_events_of_one_vma_in_order() {
        let mut r = Recent::new(8);
        for i in 0..20u64 {
            let mut e = Event::ZERO;
            e.vma = if i % 2 == 0 { 0x100 } else { 0x200 };
            e.ts_ns = i;
            r.push(&e);
        }
        let ev = r.of_vma(0x100, 0);
        let ts: Vec<u64> = ev.iter().map(|e| e.ts_ns).collect();
        assert_eq!(ts, vec![12, 14, 16, 18]);
        let mut until = Event::ZERO;
        until.vma = 0x100;
        until.ts_ns = 16;
        let ts: Vec<u64> = r
            .of_vma_until(0x100, 0, Some(&until))
            .iter()
            .map(|e| e.ts_ns)
            .collect();
        assert_eq!(ts, vec![12, 14, 16]);
    }
}
