//! Events per second per series, with a short history for sparklines.
//!
//! Counts accumulate in the current interval; `roll` closes it. Fixed-size arrays: no
//! allocation per event or per roll.

use vmatrace_common::EventKind;

/// One series per `EventKind` (index `kind - 1`), then the counter-derived reader outcomes.
pub const SERIES: usize = 14;
pub const SERIES_READER_OK: usize = 12;
pub const SERIES_READER_FAIL: usize = 13;
/// Samples kept per series (one per interval, ~1 s).
pub const HISTORY: usize = 120;

pub const fn series_of(kind: EventKind) -> usize {
    kind as usize - 1
}

pub fn series_label(i: usize) -> &'static str {
    match i {
        SERIES_READER_OK => "reader_ok",
        SERIES_READER_FAIL => "reader_fail",
        _ => EventKind::ALL.get(i).map_or("?", |k| k.key()),
    }
}

#[derive(Clone, Debug)]
pub struct Rates {
    current: [u64; SERIES],
    /// Ring of closed intervals: per-series counts and the interval length.
    history: Box<[[u64; SERIES]; HISTORY]>,
    lengths_ms: [u32; HISTORY],
    /// Next slot to write; `filled` slots are valid.
    head: usize,
    filled: usize,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            current: [0; SERIES],
            history: Box::new([[0; SERIES]; HISTORY]),
            lengths_ms: [0; HISTORY],
            head: 0,
            filled: 0,
        }
    }
}

impl Rates {
    #[inline]
    pub fn add(&mut self, series: usize, n: u64) {
        if let Some(c) = self.current.get_mut(series) {
            // Saturating: deltas of counter snapshots from a trace can be anything.
            *c = c.saturating_add(n);
        }
    }

    /// Close the current interval, `elapsed_ms` long.
    pub fn roll(&mut self, elapsed_ms: u32) {
        self.history[self.head] = self.current;
        self.lengths_ms[self.head] = elapsed_ms.max(1);
        self.head = (self.head + 1) % HISTORY;
        self.filled = (self.filled + 1).min(HISTORY);
        self.current = [0; SERIES];
    }

    /// Per-second rate of `series` over the last closed interval.
    pub fn last_rate(&self, series: usize) -> f64 {
        if self.filled == 0 || series >= SERIES {
            return 0.0;
        }
        let i = (self.head + HISTORY - 1) % HISTORY;
        self.history[i][series] as f64 * 1000.0 / f64::from(self.lengths_ms[i])
    }

    /// Per-second rates of `series`, oldest first, at most `n` (the newest `n`).
    pub fn history(&self, series: usize, n: usize) -> Vec<u64> {
        let n = n.min(self.filled);
        if series >= SERIES {
            return Vec::new();
        }
        (0..n)
            .map(|k| {
                let i = (self.head + HISTORY - n + k) % HISTORY;
                self.history[i][series] * 1000 / u64::from(self.lengths_ms[i])
            })
            .collect()
    }

    pub fn intervals(&self) -> usize {
        self.filled
    }

    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_second_and_history_is_ordered() {
        let mut r = Rates::default();
        r.add(series_of(EventKind::WriteLockExit), 10);
        r.roll(500);
        r.add(series_of(EventKind::WriteLockExit), 30);
        r.roll(1000);
        assert_eq!(r.last_rate(series_of(EventKind::WriteLockExit)), 30.0);
        assert_eq!(r.history(series_of(EventKind::WriteLockExit), 10), [20, 30]);
        assert_eq!(r.history(series_of(EventKind::VmaFree), 10), [0, 0]);
    }

    #[test]
    fn history_wraps() {
        let mut r = Rates::default();
        for i in 0..(HISTORY as u64 + 5) {
            r.add(0, i);
            r.roll(1000);
        }
        let h = r.history(0, 3);
        let n = HISTORY as u64 + 5;
        assert_eq!(h, [n - 3, n - 2, n - 1]);
        assert_eq!(r.history(0, usize::MAX).len(), HISTORY);
    }
}
