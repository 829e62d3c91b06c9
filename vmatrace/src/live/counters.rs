//! The per-CPU `COUNTERS` array, summed over CPUs into a [`CounterSnapshot`], plus the
//! kernel's own per-program skip counts (`recursion_misses`, and for kprobe programs the
//! hits their links missed: `link_misses`) as `Counter::EntryRunsSkipped` /
//! `Counter::ReturnRunsSkipped` / `Counter::SingleRunsSkipped`.

use std::os::fd::{AsFd, AsRawFd, RawFd};

use anyhow::Context;
use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use vmatrace_common::{Counter, counters::COUNTER_SLOTS, event::ReaderFallbacks};

use crate::{
    kernel::{plan::AttachMode, programs::PROGRAMS},
    pipeline::{CounterSnapshot, ProcessFallbacks},
};

/// Sum per-CPU values; saturating, so a wrapped counter never panics.
pub fn sum_per_cpu(values: &[u64]) -> u64 {
    values.iter().fold(0u64, |a, v| a.saturating_add(*v))
}

/// A loaded program whose skipped runs are read from `/proc/self/fdinfo/<fd>`. The fd
/// belongs to the session's `Ebpf`, which outlives every read.
#[derive(Clone, Copy, Debug)]
pub(super) struct SkipSource {
    pub fd: RawFd,
    /// Which counter its skips go to.
    pub counter: Counter,
    /// The kernel's id of a kprobe/kretprobe program, whose link's missed hits count too.
    pub kprobe_prog_id: Option<u32>,
}

impl SkipSource {
    /// `None` for a program the contract table does not know (cannot happen for planned
    /// programs; tested in `kernel::programs`). `prog_id`: the kernel's id of the program,
    /// kept for kprobe programs (their links' missed hits).
    pub fn new(name: &str, fd: RawFd, prog_id: Option<u32>) -> Option<Self> {
        let spec = PROGRAMS.iter().find(|p| p.name == name)?;
        // Entry and return halves pair through an in-flight map only when the object
        // has both for this function (fentry+fexit or kprobe+kretprobe).
        let partner = match spec.mode {
            AttachMode::FEntry => Some(AttachMode::FExit),
            AttachMode::FExit => Some(AttachMode::FEntry),
            AttachMode::KProbe => Some(AttachMode::KRetProbe),
            AttachMode::KRetProbe => Some(AttachMode::KProbe),
            AttachMode::Tracepoint => None,
        };
        let paired = partner.is_some_and(|m| {
            PROGRAMS
                .iter()
                .any(|p| p.probe == spec.probe && p.mode == m)
        });
        let counter = match spec.mode {
            _ if !paired => Counter::SingleRunsSkipped,
            AttachMode::FExit | AttachMode::KRetProbe => Counter::ReturnRunsSkipped,
            _ => Counter::EntryRunsSkipped,
        };
        let kprobe = matches!(spec.mode, AttachMode::KProbe | AttachMode::KRetProbe);
        Some(Self {
            fd,
            counter,
            kprobe_prog_id: prog_id.filter(|_| kprobe),
        })
    }
}

/// Skip sources for the session's programs (by object name).
pub(super) fn skip_sources(ebpf: &aya::Ebpf, names: &[String]) -> Vec<SkipSource> {
    names
        .iter()
        .filter_map(|name| {
            let program = ebpf.program(name)?;
            let fd = program.fd().ok()?.as_fd().as_raw_fd();
            SkipSource::new(name, fd, program.info().ok().map(|i| i.id()))
        })
        .collect()
}

/// The kernel ids of the kprobe programs among `skips` (whose links' misses count).
pub(super) fn kprobe_ids(skips: &[SkipSource]) -> Vec<u32> {
    skips.iter().filter_map(|s| s.kprobe_prog_id).collect()
}

/// `recursion_misses:` of a BPF program's fdinfo (kernel 5.12+; `bpf_prog_show_fdinfo`).
/// Counted whether or not run-time statistics are enabled.
pub fn recursion_misses(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("recursion_misses:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Skipped runs of a program, 0 when the kernel does not report them.
pub fn skipped_runs(fd: RawFd) -> u64 {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .as_deref()
        .and_then(recursion_misses)
        .unwrap_or(0)
}

/// Bound on the processes read from `READER_FALLBACKS` per snapshot (its size).
const MAX_FALLBACK_ROWS: usize = 8192;

/// `READER_FALLBACKS` summed over CPUs, sorted by tgid. An entry that vanishes between
/// the key walk and its lookup (LRU eviction) is skipped: the next snapshot has the rest.
fn fallbacks(map: &PerCpuHashMap<MapData, u32, ReaderFallbacks>) -> Vec<ProcessFallbacks> {
    let mut out: Vec<ProcessFallbacks> = map
        .iter()
        .filter_map(Result::ok)
        .take(MAX_FALLBACK_ROWS)
        .map(|(tgid, per_cpu)| {
            let count = per_cpu.iter().fold(0u64, |a, v| a.saturating_add(v.count));
            let comm = per_cpu
                .iter()
                .find(|v| v.comm[0] != 0)
                .map_or([0; 16], |v| v.comm);
            ProcessFallbacks { tgid, count, comm }
        })
        .collect();
    out.sort_unstable_by_key(|f| f.tgid);
    out
}

pub(super) fn snapshot(
    map: &PerCpuArray<MapData, u64>,
    fallback_map: Option<&PerCpuHashMap<MapData, u32, ReaderFallbacks>>,
    skips: &[SkipSource],
    seen: &super::link_misses::Seen,
) -> anyhow::Result<CounterSnapshot> {
    let mut values = Vec::with_capacity(Counter::ALL.len());
    for i in 0..COUNTER_SLOTS {
        let per_cpu = map
            .get(&i, 0)
            .with_context(|| format!("reading COUNTERS[{i}]"))?;
        values.push(sum_per_cpu(&per_cpu));
    }
    let link_missed = seen.refresh(&kprobe_ids(skips));
    let skipped = |s: &SkipSource| {
        let linked = s
            .kprobe_prog_id
            .and_then(|id| link_missed.get(&id).copied())
            .unwrap_or(0);
        skipped_runs(s.fd).saturating_add(linked)
    };
    for c in [
        Counter::EntryRunsSkipped,
        Counter::ReturnRunsSkipped,
        Counter::SingleRunsSkipped,
    ] {
        let n = skips
            .iter()
            .filter(|s| s.counter == c)
            .fold(0u64, |a, s| a.saturating_add(skipped(s)));
        let i = c as usize;
        if values.len() <= i {
            values.resize(i + 1, 0);
        }
        values[i] = n;
    }
    Ok(CounterSnapshot {
        values,
        fallbacks: fallback_map.map(fallbacks).unwrap_or_default(),
    })
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

    #[test]
    fn reads_recursion_misses_from_fdinfo() {
        // The layout of `bpf_prog_show_fdinfo` (kernel/bpf/syscall.c).
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nprog_type:\t26\n\
                    prog_jited:\t1\nprog_tag:\t1f4b1b6e1e2f1c2a\nmemlock:\t4096\nprog_id:\t41\n\
                    run_time_ns:\t0\nrun_cnt:\t0\nrecursion_misses:\t37\nverified_insns:\t312\n";
        assert_eq!(recursion_misses(info), Some(37));
        assert_eq!(recursion_misses("prog_id:\t41\n"), None);
        assert_eq!(recursion_misses("recursion_misses:\tx\n"), None);
    }

    #[test]
    fn skips_are_sorted_by_what_they_lose() {
        let c = |name| SkipSource::new(name, 3, None).unwrap().counter;
        assert_eq!(c("vsw_fentry"), Counter::EntryRunsSkipped);
        assert_eq!(c("vser_kprobe"), Counter::EntryRunsSkipped);
        assert_eq!(c("vsw_fexit"), Counter::ReturnRunsSkipped);
        assert_eq!(c("rww_kretprobe"), Counter::ReturnRunsSkipped);
        // No fentry for lock_vma_under_rcu, no return for vm_area_free.
        assert_eq!(c("lvur_fexit"), Counter::SingleRunsSkipped);
        assert_eq!(c("vaf_fentry"), Counter::SingleRunsSkipped);
        assert_eq!(c("mmap_lock_released"), Counter::SingleRunsSkipped);
        assert_eq!(c("lvur_kretprobe"), Counter::ReturnRunsSkipped);
        assert!(SkipSource::new("no_such_program", 3, None).is_none());
    }

    /// Only kprobe programs keep their id: their links' missed hits are counted.
    #[test]
    fn kprobe_programs_keep_their_id() {
        let id = |name| SkipSource::new(name, 3, Some(41)).unwrap().kprobe_prog_id;
        assert_eq!(id("vser_kprobe"), Some(41));
        assert_eq!(id("rww_kretprobe"), Some(41));
        assert_eq!(id("vsw_fexit"), None);
        assert_eq!(id("mmap_lock_released"), None);
    }

    #[test]
    fn an_unreadable_fd_counts_zero() {
        assert_eq!(skipped_runs(-1), 0);
    }
}
