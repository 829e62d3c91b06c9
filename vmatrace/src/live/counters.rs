//! The per-CPU `COUNTERS` array, summed over CPUs into a [`CounterSnapshot`].

use anyhow::Context;
use aya::maps::{MapData, PerCpuArray};
use vmatrace_common::counters::COUNTER_SLOTS;

use crate::pipeline::CounterSnapshot;

/// Sum per-CPU values; saturating, so a wrapped counter never panics.
pub fn sum_per_cpu(values: &[u64]) -> u64 {
    values.iter().fold(0u64, |a, v| a.saturating_add(*v))
}

pub(super) fn snapshot(map: &PerCpuArray<MapData, u64>) -> anyhow::Result<CounterSnapshot> {
    let mut values = Vec::with_capacity(COUNTER_SLOTS as usize);
    for i in 0..COUNTER_SLOTS {
        let per_cpu = map
            .get(&i, 0)
            .with_context(|| format!("reading COUNTERS[{i}]"))?;
        values.push(sum_per_cpu(&per_cpu));
    }
    Ok(CounterSnapshot { values })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_saturate() {
        assert_eq!(sum_per_cpu(&[1, 2, 3]), 6);
        assert_eq!(sum_per_cpu(&[]), 0);
        assert_eq!(sum_per_cpu(&[u64::MAX, 5]), u64::MAX);
    }
}
