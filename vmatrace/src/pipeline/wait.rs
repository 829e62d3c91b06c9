//! Wait-time distributions for the exit summary: log2 buckets, exact count/sum/max.
//!
//! Deliberately small: the dashboard's `stats::Stats` keeps richer per-process and
//! per-VMA distributions; this one only answers "p50/p90/p99 of the waits" at exit and
//! costs one `leading_zeros` per paired return event.

use serde::Serialize;

/// 64 buckets: bucket `i` holds values in `[2^i, 2^(i+1))`; 0 goes to bucket 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Hist {
    buckets: [u64; 64],
    count: u64,
    sum: u128,
    max: u64,
}

impl Default for Log2Hist {
    fn default() -> Self {
        Self {
            buckets: [0; 64],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

/// Percentiles of a [`Log2Hist`]. Percentiles are the upper bound of the bucket the
/// rank falls in (never below the true value, at most 2× above it), capped by `max`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

impl Log2Hist {
    #[inline]
    pub fn record(&mut self, v: u64) {
        let i = 63 - (v | 1).leading_zeros() as usize;
        self.buckets[i] += 1;
        self.count += 1;
        self.sum += u128::from(v);
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Upper bound of the value at quantile `q` (0..=1), 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper = if i >= 63 {
                    u64::MAX
                } else {
                    (1u64 << (i + 1)) - 1
                };
                return upper.min(self.max);
            }
        }
        self.max
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            count: self.count,
            mean_ns: if self.count == 0 {
                0
            } else {
                u64::try_from(self.sum / u128::from(self.count)).unwrap_or(u64::MAX)
            },
            p50_ns: self.quantile(0.50),
            p90_ns: self.quantile(0.90),
            p99_ns: self.quantile(0.99),
            max_ns: self.max,
        }
    }
}

/// The waits the summary reports.
#[derive(Clone, Debug, Default)]
pub struct WaitTimes {
    /// Start-exclude: time a writer or detacher waited for readers to leave
    /// (`ExcludeExit.wait_ns`).
    pub start_exclude: Log2Hist,
    /// Whole slow path of `__vma_start_write` (`WriteLockExit.wait_ns`).
    pub write_lock: Log2Hist,
    /// Slow-path detach (`DetachExit.wait_ns`).
    pub detach: Log2Hist,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_bound_the_true_values() {
        let mut h = Log2Hist::default();
        for v in 1..=1000u64 {
            h.record(v);
        }
        let p = h.percentiles();
        assert_eq!(p.count, 1000);
        assert_eq!(p.max_ns, 1000);
        assert_eq!(p.mean_ns, 500);
        // True p50 = 500 → bucket [256, 512) → 511; p90 = 900 → [512,1024) capped at max.
        assert_eq!(p.p50_ns, 511);
        assert_eq!(p.p90_ns, 1000);
        assert_eq!(p.p99_ns, 1000);
        assert!(p.p50_ns >= 500 && p.p50_ns < 1000);
    }

    #[test]
    fn empty_and_zero() {
        assert_eq!(Log2Hist::default().percentiles(), Percentiles::default());
        let mut h = Log2Hist::default();
        h.record(0);
        h.record(u64::MAX);
        assert_eq!(h.quantile(0.5), 1);
        assert_eq!(h.quantile(1.0), u64::MAX);
    }
}
