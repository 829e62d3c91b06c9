//! BPF run-time statistics per program (`BPF_ENABLE_STATS` / `kernel.bpf_stats_enabled`).
//!
//! Programs are found again by their kernel id through `BPF_PROG_GET_NEXT_ID`
//! (`aya::programs::loaded_programs`), so a [`StatsHandle`] works from any task while the
//! session itself is busy streaming.

use std::{
    collections::HashMap,
    os::fd::{AsFd, AsRawFd},
};

use aya::programs::loaded_programs;

use super::load::Loaded;

/// Cost of one loaded program so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramStat {
    /// The program's name in the eBPF object.
    pub name: String,
    /// Times the program ran (0 when statistics are off).
    pub run_cnt: u64,
    /// Total time spent in the program, ns (0 when statistics are off).
    pub run_time_ns: u64,
    /// Instructions the verifier processed at load (if the kernel reports it).
    pub verified_insns: Option<u32>,
    /// Runs the kernel skipped (`recursion_misses`: the program was already active on
    /// that CPU; for kprobe programs also the hits their links missed, see
    /// `live::link_misses`); counted whether or not statistics are on.
    pub skipped_runs: u64,
}

impl ProgramStat {
    /// Mean cost per run, ns.
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

/// Reads the statistics of a session's programs; cheap to clone, usable from any task
/// while [`super::LiveSession::stream`] runs. After the session ends the programs are
/// gone and the list is empty.
#[derive(Clone, Debug, Default)]
pub struct StatsHandle {
    /// Kernel program id → object name, in load order.
    ids: Vec<(u32, String)>,
    /// The session's kprobe links' missed counts (kept after the links are gone).
    link_misses: super::link_misses::Seen,
}

impl StatsHandle {
    pub(super) fn new(loaded: &Loaded) -> Self {
        let ids = loaded
            .programs
            .iter()
            .filter_map(|name| {
                let id = loaded.ebpf.program(name)?.info().ok()?.id();
                Some((id, name.clone()))
            })
            .collect();
        Self {
            ids,
            link_misses: loaded.link_misses.clone(),
        }
    }

    /// Current run count and run time of every program of the session, in load order.
    pub fn program_stats(&self) -> Vec<ProgramStat> {
        let mut found: HashMap<u32, ProgramStat> = HashMap::new();
        // Read by the session's counter snapshots (every second, and before detach).
        let link_missed = self.link_misses.get();
        for info in loaded_programs().flatten() {
            if let Some((id, name)) = self.ids.iter().find(|(id, _)| *id == info.id()) {
                found.insert(
                    *id,
                    ProgramStat {
                        name: name.clone(),
                        run_cnt: info.run_count(),
                        run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                        verified_insns: info.verified_instruction_count(),
                        // A new fd for the id (the session's own fds are not ours here).
                        skipped_runs: info
                            .fd()
                            .map(|fd| super::counters::skipped_runs(fd.as_fd().as_raw_fd()))
                            .unwrap_or(0)
                            .saturating_add(link_missed.get(id).copied().unwrap_or(0)),
                    },
                );
            }
        }
        self.ids
            .iter()
            .filter_map(|(id, _)| found.remove(id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_cost() {
        let mut s = ProgramStat {
            name: "x".into(),
            run_cnt: 4,
            run_time_ns: 1000,
            verified_insns: None,
            skipped_runs: 0,
        };
        assert_eq!(s.ns_per_run(), Some(250.0));
        s.run_cnt = 0;
        assert_eq!(s.ns_per_run(), None);
    }

    #[test]
    fn an_empty_handle_reports_nothing() {
        assert!(StatsHandle::default().program_stats().is_empty());
    }
}
