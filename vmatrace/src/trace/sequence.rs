//! Record sequence numbers (format version 2): every record carries its index in the
//! trace, so a record that went missing, arrived twice or arrived late is seen even when
//! each record's checksum is valid (a copy, a splice, a replayed stream). Such records are
//! reported as losses, by reason, never silently replayed.

use serde::Serialize;

/// Records lost to the order check, cumulative for the whole trace. Replayed to the
/// pipeline like a kernel counter snapshot (each replaces the previous one).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SequenceLosses {
    /// Sequence numbers skipped: records deleted (or not yet arrived, see `reordered`).
    pub missing: u64,
    /// Records whose sequence number was already read: dropped, their events were
    /// validated once.
    pub duplicate: u64,
    /// Records that arrived after a later one: dropped (their events would be judged
    /// against newer state). One that arrives within [`WINDOW`] records of its place is
    /// taken out of `missing`, so a swap of two records counts once; an older one cannot
    /// be told from a duplicate and is counted here.
    pub reordered: u64,
}

impl SequenceLosses {
    /// Records lost to the order check (saturating).
    pub fn total(&self) -> u64 {
        self.missing
            .saturating_add(self.duplicate)
            .saturating_add(self.reordered)
    }
}

/// How far back (in records) a late record can be told from a duplicate.
pub const WINDOW: u64 = 1024;
const WORDS: usize = (WINDOW / 64) as usize;

/// What to do with a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// In order (possibly after a gap, counted): deliver it.
    Deliver,
    /// Already seen or out of order (counted): drop it.
    Drop,
}

/// Checks sequence numbers as records arrive. Bounded state: the next expected number and
/// which of the last [`WINDOW`] numbers were seen.
#[derive(Clone, Debug, Default)]
pub struct SequenceCheck {
    /// u128: after a record numbered `u64::MAX` the next one is still above it.
    next: u128,
    seen: [u64; WORDS],
    losses: SequenceLosses,
}

impl SequenceCheck {
    pub fn losses(&self) -> SequenceLosses {
        self.losses
    }

    fn bit(seq: u64) -> (usize, u64) {
        let i = seq % WINDOW;
        ((i / 64) as usize, 1u64 << (i % 64))
    }

    fn seen(&self, seq: u64) -> bool {
        let (w, b) = Self::bit(seq);
        self.seen[w] & b != 0
    }

    fn set(&mut self, seq: u64, on: bool) {
        let (w, b) = Self::bit(seq);
        if on {
            self.seen[w] |= b;
        } else {
            self.seen[w] &= !b;
        }
    }

    pub fn check(&mut self, seq: u64) -> Verdict {
        let at = u128::from(seq);
        if at >= self.next {
            let gap = u64::try_from(at - self.next).unwrap_or(u64::MAX);
            self.losses.missing = self.losses.missing.saturating_add(gap);
            // The window slides past the skipped numbers: they were not seen.
            if gap >= WINDOW {
                self.seen = [0; WORDS];
            } else {
                for s in 0..gap {
                    self.set(seq - 1 - s, false);
                }
            }
            self.set(seq, true);
            self.next = at + 1;
            return Verdict::Deliver;
        }
        let late_by = self.next - at;
        if late_by <= u128::from(WINDOW) && self.seen(seq) {
            self.losses.duplicate = self.losses.duplicate.saturating_add(1);
        } else {
            if late_by <= u128::from(WINDOW) {
                // Counted as missing when it was skipped: it was reordered, not lost.
                self.set(seq, true);
                self.losses.missing = self.losses.missing.saturating_sub(1);
            }
            self.losses.reordered = self.losses.reordered.saturating_add(1);
        }
        Verdict::Drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> (Vec<Verdict>, SequenceLosses) {
        let mut c = SequenceCheck::default();
        let v = seqs.iter().map(|s| c.check(*s)).collect();
        (v, c.losses())
    }

    #[test]
    fn in_order_loses_nothing() {
        let (v, l) = run(&[0, 1, 2, 3]);
        assert!(v.iter().all(|v| *v == Verdict::Deliver));
        assert_eq!(l, SequenceLosses::default());
    }

    #[test]
    fn gaps_duplicates_and_swaps_are_told_apart() {
        use Verdict::*;
        let (v, l) = run(&[0, 1, 3, 4]);
        assert_eq!(v, [Deliver; 4]);
        assert_eq!(l.missing, 1);
        let (v, l) = run(&[0, 1, 1, 2]);
        assert_eq!(v, [Deliver, Deliver, Drop, Deliver]);
        assert_eq!((l.duplicate, l.total()), (1, 1));
        // A swap: 2 is first counted missing, then found late.
        let (v, l) = run(&[0, 1, 3, 2, 4]);
        assert_eq!(v, [Deliver, Deliver, Deliver, Drop, Deliver]);
        assert_eq!((l.missing, l.reordered, l.total()), (0, 1, 1));
        // The same late record twice: reordered once, then a duplicate.
        let (_, l) = run(&[0, 2, 1, 1]);
        assert_eq!((l.missing, l.reordered, l.duplicate), (0, 1, 1));
    }

    #[test]
    fn far_jumps_and_extremes_stay_bounded() {
        let (_, l) = run(&[0, u64::MAX, u64::MAX, 5]);
        assert_eq!(l.missing, u64::MAX - 1);
        assert_eq!(l.duplicate, 1);
        assert_eq!(l.reordered, 1);
        // A record far older than the window cannot be told from a duplicate.
        let (_, l) = run(&[0, 1, 5000, 1]);
        assert_eq!((l.missing, l.reordered, l.duplicate), (4998, 1, 0));
    }
}
