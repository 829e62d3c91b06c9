//! `vmatrace stress --count-calls`: count, with plain kprobes, how often this workload's
//! cgroup calls the functions vmatrace traces, as a reference the tracer's own counts are
//! compared with (the VM matrix requires them to agree). Independent of vmatrace's eBPF
//! object: one hand-assembled program per function, a cgroup-id test and an atomic add
//! into an array map. kprobe programs run with preemption disabled, so preemption loses
//! none of these runs; a run the kernel does skip (another kprobe program already active
//! on the CPU) shows in the program's `recursion_misses`, reported as `skipped`.

use std::{collections::BTreeMap, os::fd::OwnedFd, os::unix::fs::MetadataExt as _};

use anyhow::{Context, bail};
use serde::Serialize;

use super::raw_bpf::{
    Insn, array_get, array_map, attach_kprobe, insn, ld_imm64, ld_map_fd, load_program,
};

/// The counted functions: the writer's lock, the page-fault reader, the VMA free. Each
/// has a count in vmatrace's summary to compare with (see `docs/vm-tests.md`).
pub const FUNCTIONS: &[&str] = &["__vma_start_write", "lock_vma_under_rcu", "vm_area_free"];

const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_GET_CURRENT_CGROUP_ID: i32 = 80;

/// The counting program for array slot `key`: if the current task is in cgroup `cgid`,
/// add 1 to the slot.
pub fn count_program(cgid: u64, key: u32, map: &OwnedFd) -> Vec<Insn> {
    let mut v = vec![insn(0x85, 0, 0, 0, BPF_FUNC_GET_CURRENT_CGROUP_ID)]; // 0: call
    v.extend(ld_imm64(1, cgid)); // 1-2: r1 = cgid
    v.push(insn(0x5d, 0, 1, 10, 0)); // 3: if r0 != r1 goto 14
    v.push(insn(0xb7, 1, 0, 0, key as i32)); // 4: r1 = key
    v.push(insn(0x63, 10, 1, -4, 0)); // 5: *(u32 *)(r10 - 4) = r1
    v.extend(ld_map_fd(1, map)); // 6-7: r1 = map
    v.push(insn(0xbf, 2, 10, 0, 0)); // 8: r2 = r10
    v.push(insn(0x07, 2, 0, 0, -4)); // 9: r2 += -4
    v.push(insn(0x85, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM)); // 10: call lookup
    v.push(insn(0x15, 0, 0, 2, 0)); // 11: if r0 == 0 goto 14
    v.push(insn(0xb7, 1, 0, 0, 1)); // 12: r1 = 1
    v.push(insn(0xdb, 0, 1, 0, 0)); // 13: lock *(u64 *)(r0 + 0) += r1
    v.push(insn(0xb7, 0, 0, 0, 0)); // 14: r0 = 0
    v.push(insn(0x95, 0, 0, 0, 0)); // 15: exit
    v
}

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
    map: OwnedFd,
    programs: Vec<(String, OwnedFd)>,
    _events: Vec<OwnedFd>,
}

impl CallCounter {
    /// Attach a counter to every function of [`FUNCTIONS`] this kernel has.
    pub fn attach() -> anyhow::Result<CallCounter> {
        let (_, cgid) = own_cgroup()?;
        let map = array_map(FUNCTIONS.len() as u32)?;
        let mut programs = Vec::new();
        let mut events = Vec::new();
        for (key, f) in FUNCTIONS.iter().enumerate() {
            let prog = load_program(&count_program(cgid, key as u32, &map), "vmatrace_count")?;
            events.push(
                attach_kprobe(f, 0, &prog)
                    .with_context(|| format!("attaching a counter to {f}"))?,
            );
            programs.push((f.to_string(), prog));
        }
        Ok(CallCounter {
            cgid,
            map,
            programs,
            _events: events,
        })
    }

    pub fn counts(&self) -> anyhow::Result<CallCounts> {
        let mut c = CallCounts {
            cgroup_id: self.cgid,
            ..Default::default()
        };
        for (key, (f, prog)) in self.programs.iter().enumerate() {
            c.calls.insert(f.clone(), array_get(&self.map, key as u32)?);
            c.skipped.insert(
                f.clone(),
                crate::live::skipped_runs(std::os::fd::AsRawFd::as_raw_fd(prog)),
            );
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The jumps land on `r0 = 0; exit` and the program ends with `exit`.
    #[test]
    fn count_program_jumps_to_its_exit() {
        let map = array_map(1);
        // Without privileges there is no map fd; a placeholder fd shapes the same program.
        let fd = match map {
            Ok(fd) => fd,
            Err(_) => std::fs::File::open("/dev/null").expect("/dev/null").into(),
        };
        let p = count_program(0x1234_5678_9abc, 2, &fd);
        assert_eq!(p.len(), 16);
        assert_eq!(p[15].code, 0x95);
        assert_eq!((p[14].code, p[14].imm), (0xb7, 0));
        for (at, code) in [(3usize, 0x5d), (11, 0x15)] {
            assert_eq!(p[at].code, code);
            assert_eq!(at as i64 + 1 + i64::from(p[at].off), 14, "jump at {at}");
        }
        assert_eq!((p[1].imm as u32, p[2].imm as u32), (0x5678_9abc, 0x1234));
        assert_eq!(p[4].imm, 2);
    }
}
