//! The lab's program (`vmatrace-ebpf/src/lab.rs`: the race widener of `vmatrace
//! stress`), its own small object ([`crate::LAB_OBJECT`]) loaded by the product's loader.
//! Nothing here is attached by a tracing session. (The reference call counter is not
//! here: see `lab/stress/raw_bpf.rs` for why.)

use anyhow::{Context, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    programs::{KProbe, ProgramError},
};
use vmatrace_common::globals::LabConfig;

use super::{load::names, privileges};

/// The widener's program: a busy-wait for the tasks in scope.
pub const RACE_DELAY: &str = "lab_race_delay";
/// Every program of the lab object.
pub const PROGRAMS: [&str; 1] = [RACE_DELAY];

/// The loaded lab object with the programs attached so far; dropping it detaches them.
pub struct LabProbes {
    ebpf: Ebpf,
}

impl LabProbes {
    /// Load the lab object configured with `lab`: root (or CAP_BPF + CAP_PERFMON)
    /// needed. No kernel BTF: kprobes need none (aya's `EbpfLoader::new` parses it anyway).
    pub fn load(lab: LabConfig) -> anyhow::Result<Self> {
        privileges::check_privileges()?;
        let _ = privileges::raise_memlock_limit();
        let ebpf = EbpfLoader::new()
            .btf(None)
            .override_global(names::LAB, &lab, true)
            .load(crate::LAB_OBJECT)
            .context("loading the lab's eBPF object")?;
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
}
