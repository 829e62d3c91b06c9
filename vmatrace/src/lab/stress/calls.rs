//! `vmatrace stress --count-calls`: count, with plain kprobes, how often this workload's
//! cgroup calls the functions vmatrace traces, as a reference the tracer's own counts are
//! compared with (the VM matrix requires them to agree). Independent of the tracer's
//! programs: the lab's `lab_count_*` (a cgroup-id test and a per-CPU increment, one
//! program per function), loaded from the same object by `live::lab`. kprobe programs run
//! with preemption disabled, so preemption loses none of these runs; a run the kernel
//! does skip (another kprobe program already active on the CPU) shows in the program's
//! `recursion_misses`, reported as `skipped`.

use std::{collections::BTreeMap, os::unix::fs::MetadataExt as _};

use anyhow::{Context, bail};
use serde::Serialize;
use vmatrace_common::globals::{LAB_COUNTED_FUNCTIONS, LabConfig};

use crate::live::lab::{COUNTERS, LabProbes};

/// The counted functions: the writer's lock, the page-fault reader, the VMA free. Each
/// has a count in vmatrace's summary to compare with (see `docs/vm-tests.md`).
pub const FUNCTIONS: &[&str] = &["__vma_start_write", "lock_vma_under_rcu", "vm_area_free"];

// One counter program per function.
const _: () = assert!(FUNCTIONS.len() == LAB_COUNTED_FUNCTIONS as usize);

/// This process's cgroup v2: its path (`/` for the root) and its id, the inode of its
/// directory under `/sys/fs/cgroup`.
pub fn own_cgroup() -> anyhow::Result<(String, u64)> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        bail!("this process is in no cgroup v2 (no `0::` line in /proc/self/cgroup)");
    };
    let path = path.trim().to_string();
    let dir = format!("/sys/fs/cgroup{path}");
    let id = std::fs::metadata(&dir)
        .with_context(|| format!("stat {dir}"))?
        .ino();
    Ok((path, id))
}

/// Counts per function, with the runs the kernel skipped.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CallCounts {
    pub cgroup_id: u64,
    pub calls: BTreeMap<String, u64>,
    pub skipped: BTreeMap<String, u64>,
}

/// Attached counters; dropping detaches them.
pub struct CallCounter {
    cgid: u64,
    lab: LabProbes,
}

impl CallCounter {
    /// Attach a counter to every function of [`FUNCTIONS`].
    pub fn attach() -> anyhow::Result<CallCounter> {
        let (_, cgid) = own_cgroup()?;
        let mut lab = LabProbes::load(LabConfig {
            scope: LabConfig::SCOPE_CGROUP,
            cgroup_id: cgid,
            ..LabConfig::DEFAULT
        })?;
        for (slot, f) in (0..).zip(FUNCTIONS) {
            lab.attach(COUNTERS[slot as usize], f, 0)
                .with_context(|| format!("attaching a counter to {f}"))?;
        }
        Ok(CallCounter { cgid, lab })
    }

    pub fn counts(&self) -> anyhow::Result<CallCounts> {
        let mut c = CallCounts {
            cgroup_id: self.cgid,
            ..Default::default()
        };
        for (slot, f) in (0..).zip(FUNCTIONS) {
            c.calls.insert(f.to_string(), self.lab.calls(slot)?);
            c.skipped.insert(
                f.to_string(),
                self.lab.skipped_runs(COUNTERS[slot as usize]),
            );
        }
        Ok(c)
    }
}
