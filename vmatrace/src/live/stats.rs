//! BPF run-time statistics per program (`BPF_ENABLE_STATS` / `kernel.bpf_stats_enabled`).

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
}

impl ProgramStat {
    /// Mean cost per run, ns.
    pub fn ns_per_run(&self) -> Option<f64> {
        (self.run_cnt > 0).then(|| self.run_time_ns as f64 / self.run_cnt as f64)
    }
}

pub(super) fn program_stats(loaded: &Loaded) -> Vec<ProgramStat> {
    loaded
        .programs
        .iter()
        .filter_map(|name| {
            let info = loaded.ebpf.program(name)?.info().ok()?;
            Some(ProgramStat {
                name: name.clone(),
                run_cnt: info.run_count(),
                run_time_ns: u64::try_from(info.run_time().as_nanos()).unwrap_or(u64::MAX),
                verified_insns: info.verified_instruction_count(),
            })
        })
        .collect()
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
        };
        assert_eq!(s.ns_per_run(), Some(250.0));
        s.run_cnt = 0;
        assert_eq!(s.ns_per_run(), None);
    }
}
