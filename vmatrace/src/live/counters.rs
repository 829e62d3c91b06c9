//! The `COUNTERS` array (a row per CPU, read through mmap), summed over CPUs into a
//! [`CounterSnapshot`] with the per-process `READER_FALLBACKS`, plus the
//! kernel's own per-program skip counts (`recursion_misses`, and for kprobe programs the
//! hits their links missed: `link_misses`) as `Counter::EntryRunsSkipped` /
//! `Counter::ReturnRunsSkipped` / `Counter::SingleRunsSkipped`.

use std::{
    collections::BTreeMap,
    os::fd::{AsFd, AsRawFd, RawFd},
    sync::Mutex,
};

use vmatrace_common::{Counter, counters::COUNTER_SLOTS, event::ReaderFallbacks};

use super::mapped::MappedArray;
use crate::{
    kernel::{plan::AttachMode, programs::PROGRAMS},
    pipeline::{CounterSnapshot, ProcessFallbacks},
};

/// Sum per-CPU values; saturating, so a wrapped counter never panics.
pub fn sum_per_cpu(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0u64, u64::saturating_add)
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

/// Bound on the processes kept after they are gone (their slots freed); past it the
/// smallest counts are dropped (they stay in `Counter::ReaderFailWriter`).
const MAX_GONE_ROWS: usize = 8192;

/// `READER_FALLBACKS` read through mmap: per-CPU rows of slots summed per tgid, plus the
/// counts of processes that are gone, whose slots were freed for new ones.
pub(super) struct FallbackTable {
    slots: MappedArray<ReaderFallbacks>,
    gone: Mutex<BTreeMap<u32, ProcessFallbacks>>,
}

impl FallbackTable {
    pub fn new(slots: MappedArray<ReaderFallbacks>) -> Self {
        Self {
            slots,
            gone: Mutex::new(BTreeMap::new()),
        }
    }

    /// Every process's fallbacks so far, sorted by tgid. Slots of processes without a
    /// `/proc/<tgid>` move to the gone table and are freed.
    fn read(&self, alive: &mut dyn FnMut(u32) -> bool) -> Vec<ProcessFallbacks> {
        let taken: Vec<(usize, ReaderFallbacks)> = (0..self.slots.len())
            .filter_map(|i| self.slots.get(i).map(|s| (i, s)))
            .filter(|(_, s)| s.tgid != 0)
            .collect();
        let mut gone = self.gone.lock().unwrap_or_else(|e| e.into_inner());
        let (rows, freed) = account(&taken, &mut gone, alive);
        for i in freed {
            self.slots.free(i);
        }
        rows
    }
}

/// Sum the taken slots per tgid with the gone processes' counts. Slots of processes
/// that `alive` says are gone join `gone` (bounded by [`MAX_GONE_ROWS`], the smallest
/// dropped) and are returned to be freed.
fn account(
    taken: &[(usize, ReaderFallbacks)],
    gone: &mut BTreeMap<u32, ProcessFallbacks>,
    alive: &mut dyn FnMut(u32) -> bool,
) -> (Vec<ProcessFallbacks>, Vec<usize>) {
    let mut live = BTreeMap::<u32, ProcessFallbacks>::new();
    let mut checked = std::collections::HashMap::<u32, bool>::new();
    let mut freed = Vec::new();
    for (i, slot) in taken {
        if *checked.entry(slot.tgid).or_insert_with(|| alive(slot.tgid)) {
            add(&mut live, slot.tgid, slot.count, slot.comm);
        } else {
            add(gone, slot.tgid, slot.count, slot.comm);
            freed.push(*i);
        }
    }
    if gone.len() > MAX_GONE_ROWS {
        let mut by_count: Vec<(u64, u32)> = gone.values().map(|f| (f.count, f.tgid)).collect();
        by_count.sort_unstable();
        for (_, tgid) in &by_count[..gone.len() - MAX_GONE_ROWS] {
            gone.remove(tgid);
        }
    }
    for f in gone.values() {
        add(&mut live, f.tgid, f.count, f.comm);
    }
    (live.into_values().collect(), freed)
}

/// `count` more fallbacks of `tgid`; the first non-empty comm names the process.
fn add(into: &mut BTreeMap<u32, ProcessFallbacks>, tgid: u32, count: u64, comm: [u8; 16]) {
    let e = into.entry(tgid).or_insert(ProcessFallbacks {
        tgid,
        count: 0,
        comm,
    });
    e.count = e.count.saturating_add(count);
    if e.comm[0] == 0 {
        e.comm = comm;
    }
}

fn process_exists(tgid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{tgid}")).exists()
}

/// `COUNTERS` (one row of `COUNTER_SLOTS` per CPU) summed over the rows.
fn kernel_counters(map: &MappedArray<u64>) -> Vec<u64> {
    let slots = COUNTER_SLOTS as usize;
    (0..slots)
        .map(|c| sum_per_cpu((c..map.len()).step_by(slots).filter_map(|i| map.get(i))))
        .collect()
}

pub(super) fn snapshot(
    map: &MappedArray<u64>,
    fallbacks: Option<&FallbackTable>,
    skips: &[SkipSource],
    seen: &super::link_misses::Seen,
) -> CounterSnapshot {
    let mut values = kernel_counters(map);
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
    CounterSnapshot {
        values,
        fallbacks: fallbacks
            .map(|t| t.read(&mut process_exists))
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(tgid: u32, count: u64, comm: &str) -> ReaderFallbacks {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        ReaderFallbacks {
            tgid,
            pad: 0,
            count,
            comm: c,
        }
    }

    #[test]
    fn fallbacks_sum_cpus_and_keep_the_gone_processes_counts() {
        let mut gone = BTreeMap::new();
        // tgid 7 on two CPUs (rows at 0 and 1024), tgid 9 gone.
        let taken = [
            (3, slot(7, 2, "a")),
            (1027, slot(7, 5, "a")),
            (9, slot(9, 4, "b")),
        ];
        let (rows, freed) = account(&taken, &mut gone, &mut |t| t != 9);
        let got: Vec<(u32, u64)> = rows.iter().map(|f| (f.tgid, f.count)).collect();
        assert_eq!(got, [(7, 7), (9, 4)]);
        assert_eq!(freed, [9]);
        assert_eq!(&rows[1].comm[..1], b"b");
        // Next read: 9's slot is free, its count stays; a new fallback of 9's reused
        // slot by tgid 11 is 11's.
        let taken = [(3, slot(7, 3, "a")), (9, slot(11, 1, "c"))];
        let (rows, freed) = account(&taken, &mut gone, &mut |_| true);
        let got: Vec<(u32, u64)> = rows.iter().map(|f| (f.tgid, f.count)).collect();
        assert_eq!(got, [(7, 3), (9, 4), (11, 1)]);
        assert!(freed.is_empty());
    }

    #[test]
    fn gone_processes_are_bounded_dropping_the_smallest() {
        let mut gone = BTreeMap::new();
        let taken: Vec<(usize, ReaderFallbacks)> = (1..=MAX_GONE_ROWS as u32 + 2)
            .map(|t| (t as usize, slot(t, u64::from(t), "x")))
            .collect();
        let (rows, freed) = account(&taken, &mut gone, &mut |_| false);
        assert_eq!(freed.len(), MAX_GONE_ROWS + 2);
        assert_eq!(rows.len(), MAX_GONE_ROWS);
        assert_eq!(rows[0].tgid, 3, "tgids 1 and 2 had the smallest counts");
    }

    #[test]
    fn sums_saturate() {
        assert_eq!(sum_per_cpu([1, 2, 3]), 6);
        assert_eq!(sum_per_cpu([]), 0);
        assert_eq!(sum_per_cpu([u64::MAX, 5]), u64::MAX);
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
