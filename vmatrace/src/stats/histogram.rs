//! Log2-bucket histogram of nanosecond wait times.
//!
//! Fixed size (65 counters), no allocation, O(1) per sample. Percentiles are read from the
//! buckets, so they are an upper bound within a factor of two (the bucket's upper edge,
//! clamped to the exact maximum): good enough to tell 2 µs from 2 ms, which is the question
//! an operator asks of a lock wait.

use serde::Serialize;

/// Bucket 0 holds 0; bucket `i >= 1` holds `[2^(i-1), 2^i - 1]`.
pub const BUCKETS: usize = 65;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log2Histogram {
    buckets: [u64; BUCKETS],
    count: u64,
    sum: u64,
    max: u64,
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Self {
            buckets: [0; BUCKETS],
            count: 0,
            sum: 0,
            max: 0,
        }
    }
}

/// Percentiles of one histogram, in nanoseconds (0 when empty).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// Index of the bucket holding `v`.
#[inline]
pub const fn bucket_of(v: u64) -> usize {
    (u64::BITS - v.leading_zeros()) as usize
}

/// Inclusive `[low, high]` range of bucket `i`.
pub const fn bucket_range(i: usize) -> (u64, u64) {
    match i {
        0 => (0, 0),
        64.. => (1 << 63, u64::MAX),
        _ => (1 << (i - 1), (1 << i) - 1),
    }
}

impl Log2Histogram {
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.buckets[bucket_of(v)] += 1;
        self.count += 1;
        self.sum = self.sum.saturating_add(v);
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> u64 {
        self.sum
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn buckets(&self) -> &[u64; BUCKETS] {
        &self.buckets
    }

    /// The value at quantile `q` (0..=1): the upper edge of the bucket holding the
    /// `ceil(q * count)`-th smallest sample, never above the exact maximum.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_range(i).1.min(self.max);
            }
        }
        self.max
    }

    pub fn percentiles(&self) -> Percentiles {
        Percentiles {
            count: self.count,
            p50_ns: self.quantile(0.50),
            p90_ns: self.quantile(0.90),
            p99_ns: self.quantile(0.99),
            max_ns: self.max,
        }
    }

    /// The occupied bucket range `(first, last)`, or `None` when empty.
    pub fn occupied(&self) -> Option<(usize, usize)> {
        let first = self.buckets.iter().position(|n| *n != 0)?;
        let last = self.buckets.iter().rposition(|n| *n != 0)?;
        Some((first, last))
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            percentiles: self.percentiles(),
            sum_ns: self.sum,
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .filter(|(_, n)| **n != 0)
                .map(|(i, n)| {
                    let (low_ns, high_ns) = bucket_range(i);
                    BucketSnapshot {
                        low_ns,
                        high_ns,
                        count: *n,
                    }
                })
                .collect(),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HistogramSnapshot {
    #[serde(flatten)]
    pub percentiles: Percentiles,
    pub sum_ns: u64,
    /// Non-empty buckets only, ascending.
    pub buckets: Vec<BucketSnapshot>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct BucketSnapshot {
    pub low_ns: u64,
    pub high_ns: u64,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn buckets_cover_powers_of_two() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 1);
        assert_eq!(bucket_of(2), 2);
        assert_eq!(bucket_of(3), 2);
        assert_eq!(bucket_of(4), 3);
        assert_eq!(bucket_of(1023), 10);
        assert_eq!(bucket_of(1024), 11);
        assert_eq!(bucket_of(u64::MAX), 64);
        assert_eq!(bucket_range(11), (1024, 2047));
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Log2Histogram::default();
        // 90 fast waits of 1000 ns, 9 of 100 µs, 1 of 5 ms.
        for _ in 0..90 {
            h.record(1000);
        }
        for _ in 0..9 {
            h.record(100_000);
        }
        h.record(5_000_000);
        let p = h.percentiles();
        assert_eq!(p.count, 100);
        assert_eq!(p.p50_ns, 1023, "upper edge of [512, 1023]");
        assert_eq!(p.p90_ns, 1023);
        assert_eq!(p.p99_ns, 131_071, "upper edge of [65536, 131071]");
        assert_eq!(p.max_ns, 5_000_000);
        assert_eq!(h.sum(), 90_000 + 900_000 + 5_000_000);
    }

    #[test]
    fn empty_histogram_reads_zero() {
        let h = Log2Histogram::default();
        assert_eq!(h.percentiles(), Percentiles::default());
        assert_eq!(h.occupied(), None);
        assert!(h.snapshot().buckets.is_empty());
    }

    proptest! {
        /// The bucket estimate is never below the true quantile and at most 2x above it
        /// (and never above the maximum).
        #[test]
        fn quantile_bounds_true_value(mut vs in proptest::collection::vec(1u64..1<<40, 1..300), q in 0.01f64..1.0) {
            let mut h = Log2Histogram::default();
            for v in &vs { h.record(*v); }
            vs.sort_unstable();
            let rank = ((q * vs.len() as f64).ceil() as usize).max(1);
            let truth = vs[rank - 1];
            let est = h.quantile(q);
            prop_assert!(est >= truth, "est {est} < truth {truth}");
            prop_assert!(est <= truth.saturating_mul(2), "est {est} > 2*truth {truth}");
            prop_assert!(est <= *vs.last().unwrap());
        }
    }
}
