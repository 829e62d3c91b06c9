//! The lab's programs (`vmatrace-ebpf/src/lab.rs`: the race widener and the reference
//! call counters of `vmatrace stress`), loaded from the product's own object by the
//! product's loader. Nothing here is attached by a tracing session.

use anyhow::{Context, anyhow};
use aya::{
    Btf, Ebpf,
    maps::PerCpuArray,
    programs::{KProbe, ProgramError},
};
use vmatrace_common::{
    Offsets, ProgramConfig,
    globals::{LAB_COUNTED_FUNCTIONS, LabConfig, MmapLockTpOffsets},
};

use super::{load, load::names, privileges};

/// The widener's program: a busy-wait for the tasks in scope.
pub const RACE_DELAY: &str = "lab_race_delay";
/// The counter of each `LAB_CALLS` slot.
pub const COUNTERS: [&str; LAB_COUNTED_FUNCTIONS as usize] =
    ["lab_count_0", "lab_count_1", "lab_count_2"];
/// Every lab program of the object (outside the tracer's contract table).
pub const PROGRAMS: [&str; 4] = [RACE_DELAY, COUNTERS[0], COUNTERS[1], COUNTERS[2]];

/// The loaded object (its tracer programs never loaded, its tracer maps at their
/// smallest) with the lab's programs attached so far; dropping it detaches them.
pub struct LabProbes {
    ebpf: Ebpf,
}

impl LabProbes {
    /// Load the object for the lab: root (or CAP_BPF + CAP_PERFMON) needed.
    pub fn load(lab: LabConfig) -> anyhow::Result<Self> {
        privileges::check_privileges()?;
        let _ = privileges::raise_memlock_limit();
        let btf = Btf::from_sys_fs().ok();
        let (offsets, config) = (Offsets::ABSENT, ProgramConfig::DEFAULT);
        let (generation, tp) = (0u32, MmapLockTpOffsets::DEFAULT);
        // The tracer's maps are created with the object but never used here: smallest.
        let mut l = load::loader(&offsets, &config, &generation, &tp, 4096, btf.as_ref(), 1);
        for m in names::INFLIGHT_MAPS.iter().chain([&names::EXCLUDERS]) {
            l.map_max_entries(m, 1);
        }
        l.override_global(names::LAB, &lab, true);
        let ebpf = l
            .load(crate::EBPF_OBJECT)
            .context("loading the eBPF object for the lab's programs")?;
        Ok(LabProbes { ebpf })
    }

    /// Load `program` (verify it) unless it is loaded already.
    pub fn load_program(&mut self, program: &str) -> anyhow::Result<&mut KProbe> {
        let p: &mut KProbe = self
            .ebpf
            .program_mut(program)
            .ok_or_else(|| anyhow!("the eBPF object has no program {program}"))?
            .try_into()?;
        if p.fd().is_err() {
            p.load()
                .with_context(|| format!("loading the lab program {program}"))?;
        }
        Ok(p)
    }

    /// Attach `program` (loaded on first use) as a kprobe at `function+offset`.
    pub fn attach(&mut self, program: &str, function: &str, offset: u64) -> anyhow::Result<()> {
        self.load_program(program)?
            .attach(function, offset)
            .map_err(|e| match e {
                ProgramError::SyscallError(e) => anyhow!("{e}"),
                e => anyhow!(e),
            })
            .with_context(|| format!("attaching {program} at {function}+{offset:#x}"))?;
        Ok(())
    }

    /// Calls counted in `slot` so far, all CPUs. A `bpf()` lookup: read once the
    /// workload is done (while it runs, the lookup itself would make the kernel skip
    /// kprobe runs on its CPU).
    pub fn calls(&self, slot: u32) -> anyhow::Result<u64> {
        let map = self
            .ebpf
            .map(names::LAB_CALLS)
            .ok_or_else(|| anyhow!("the eBPF object has no map {}", names::LAB_CALLS))?;
        let calls = PerCpuArray::<_, u64>::try_from(map)?;
        Ok(calls.get(&slot, 0)?.iter().sum())
    }

    /// Runs of `program` the kernel skipped (`recursion_misses`; 0 if not loaded).
    pub fn skipped_runs(&self, program: &str) -> u64 {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let Some(aya::programs::Program::KProbe(p)) = self.ebpf.program(program) else {
            return 0;
        };
        p.fd()
            .map(|fd| super::skipped_runs(fd.as_fd().as_raw_fd()))
            .unwrap_or(0)
    }
}
