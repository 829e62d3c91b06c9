//! Per-process time lines: waits per second and the longest wait of each second, over the
//! last [`SECONDS`] seconds of event time. They answer "since when": the second a
//! process's waits jumped is the start of its stall.
//!
//! Fed with the same waits the statistics rank (the session's wait source, paired
//! returns); a fixed ring per process and a bounded number of processes (the least
//! recently waiting go first), so the cost per wait is one hash lookup.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use crate::validate::hash::AddrHasher;

/// Seconds kept per process.
pub const SECONDS: usize = 60;
/// Processes kept.
pub const MAX_PROCESSES: usize = 512;

#[derive(Clone, Debug)]
struct Series {
    /// Event-time second of the newest slot written.
    last_sec: u64,
    waits: [u32; SECONDS],
    max_ns: [u64; SECONDS],
}

impl Series {
    fn new(sec: u64) -> Self {
        Self {
            last_sec: sec,
            waits: [0; SECONDS],
            max_ns: [0; SECONDS],
        }
    }

    /// Clear the slots of the seconds between the newest one written and `sec`.
    fn advance(&mut self, sec: u64) {
        if sec <= self.last_sec {
            return;
        }
        let gap = (sec - self.last_sec).min(SECONDS as u64);
        for s in 1..=gap {
            let i = ((self.last_sec + s) % SECONDS as u64) as usize;
            self.waits[i] = 0;
            self.max_ns[i] = 0;
        }
        self.last_sec = sec;
    }
}

/// One process's line over a window, oldest second first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Line {
    pub waits: Vec<u64>,
    /// The longest wait in the window.
    pub max_ns: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Timelines {
    by_tgid: HashMap<u32, Series, BuildHasherDefault<AddrHasher>>,
}

impl Timelines {
    #[inline]
    pub fn record(&mut self, tgid: u32, ts_ns: u64, wait_ns: u64) {
        let sec = ts_ns / 1_000_000_000;
        if !self.by_tgid.contains_key(&tgid) && self.by_tgid.len() >= MAX_PROCESSES {
            self.evict();
        }
        let s = self.by_tgid.entry(tgid).or_insert_with(|| Series::new(sec));
        // A wait older than the window (events slightly out of order across CPUs are
        // within it) is not drawn.
        if sec + (SECONDS as u64) <= s.last_sec {
            return;
        }
        s.advance(sec);
        let i = (sec % SECONDS as u64) as usize;
        s.waits[i] = s.waits[i].saturating_add(1);
        s.max_ns[i] = s.max_ns[i].max(wait_ns);
    }

    /// Drop the half that waited least recently, in one pass: one scan per
    /// `MAX_PROCESSES / 2` new processes, not one per new process (a fork-heavy host
    /// brings a new tgid with nearly every wait).
    #[cold]
    fn evict(&mut self) {
        let mut secs: Vec<u64> = self.by_tgid.values().map(|s| s.last_sec).collect();
        let mid = secs.len() / 2;
        let (_, cut, _) = secs.select_nth_unstable(mid);
        let cut = *cut;
        let mut keep_at_cut =
            self.by_tgid.len() - mid - self.by_tgid.values().filter(|s| s.last_sec > cut).count();
        self.by_tgid.retain(|_, s| {
            if s.last_sec > cut {
                true
            } else if s.last_sec == cut && keep_at_cut > 0 {
                keep_at_cut -= 1;
                true
            } else {
                false
            }
        });
    }

    /// The last `n` (≤ [`SECONDS`]) seconds up to `now_ns` for `tgid` (zeros when it did
    /// not wait).
    pub fn line(&self, tgid: u32, now_ns: u64, n: usize) -> Line {
        let n = n.min(SECONDS);
        let now = now_ns / 1_000_000_000;
        let Some(s) = self.by_tgid.get(&tgid) else {
            return Line {
                waits: vec![0; n],
                max_ns: 0,
            };
        };
        let mut out = Line {
            waits: Vec::with_capacity(n),
            max_ns: 0,
        };
        for back in (0..n as u64).rev() {
            let Some(sec) = now.checked_sub(back) else {
                out.waits.push(0);
                continue;
            };
            // Slots newer than the series' last write, or fallen out of its ring, are 0.
            if sec > s.last_sec || sec + (SECONDS as u64) <= s.last_sec {
                out.waits.push(0);
                continue;
            }
            let i = (sec % SECONDS as u64) as usize;
            out.waits.push(u64::from(s.waits[i]));
            out.max_ns = out.max_ns.max(s.max_ns[i]);
        }
        out
    }

    pub fn clear(&mut self) {
        self.by_tgid.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn waits_per_second_with_the_stall_at_the_right_place() {
        let mut t = Timelines::default();
        // Quiet 1/s for 10 s, then a stall: 5 waits of 40 ms in second 100.
        for sec in 90..100 {
            t.record(7, sec * S, 1_000);
        }
        for _ in 0..5 {
            t.record(7, 100 * S + 5, 40_000_000);
        }
        let l = t.line(7, 100 * S, 5);
        assert_eq!(l.waits, [1, 1, 1, 1, 5]);
        assert_eq!(l.max_ns, 40_000_000);
        // 3 s later without waits: the stall moved left, the right is empty.
        let l = t.line(7, 103 * S, 5);
        assert_eq!(l.waits, [1, 5, 0, 0, 0]);
        assert_eq!(t.line(8, 103 * S, 3).waits, [0, 0, 0]);
    }

    #[test]
    fn old_slots_are_cleared_when_the_ring_wraps() {
        let mut t = Timelines::default();
        t.record(1, 10 * S, 9);
        t.record(1, (10 + SECONDS as u64) * S, 1);
        let l = t.line(1, (10 + SECONDS as u64) * S, SECONDS);
        assert_eq!(l.waits.iter().sum::<u64>(), 1);
        assert_eq!(l.max_ns, 1);
    }

    #[test]
    fn bounded() {
        let mut t = Timelines::default();
        for tgid in 0..(MAX_PROCESSES as u32 + 10) {
            t.record(tgid, u64::from(tgid) * S, 1);
        }
        assert!(t.by_tgid.len() <= MAX_PROCESSES);
        assert!(t.by_tgid.len() > MAX_PROCESSES / 2);
        // The most recent stay, the oldest go.
        assert!(t.by_tgid.contains_key(&(MAX_PROCESSES as u32 + 9)));
        assert!(!t.by_tgid.contains_key(&0));
    }
}
