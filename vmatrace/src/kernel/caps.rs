//! What this process may do with bpf(): privileges and the kernel facilities attach needs.

use std::path::Path;

/// `/sys/bus/event_source/devices/kprobe/type`: aya opens kprobes through this PMU; without
/// it (kernel built without `CONFIG_KPROBES`, or a sandbox hiding it) no kprobe attaches.
pub const KPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capabilities {
    /// Effective uid 0.
    pub root: bool,
    pub cap_bpf: bool,
    pub cap_perfmon: bool,
    pub cap_sys_admin: bool,
    /// The kprobe PMU exists.
    pub kprobes: bool,
    /// Whether fentry/fexit programs can load here. Detecting it needs a real load, which
    /// the live loader does; `None` = not tried yet (the plan then assumes they can and
    /// says so).
    pub tracing_programs: Option<bool>,
    /// tracefs is mounted (tracepoints by name, `available_filter_functions`).
    pub tracefs: bool,
    /// `/sys/kernel/btf/vmlinux` exists.
    pub btf: bool,
}

impl Capabilities {
    /// Probe the running system (no bpf() calls).
    pub fn detect() -> Capabilities {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let caps = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| parse_cap_eff(&s))
            .unwrap_or(0);
        let has = |bit: u32| caps & (1u64 << bit) != 0;
        Capabilities {
            root,
            cap_bpf: has(CAP_BPF),
            cap_perfmon: has(CAP_PERFMON),
            cap_sys_admin: has(CAP_SYS_ADMIN),
            kprobes: Path::new(KPROBE_PMU_TYPE).exists(),
            tracing_programs: None,
            tracefs: super::info::TRACEFS_DIRS
                .iter()
                .any(|d| Path::new(d).join("events").is_dir()),
            btf: Path::new(super::info::VMLINUX_BTF).exists(),
        }
    }

    /// Assume everything works: for offline plans of another kernel ("what would a
    /// normal root deployment see there").
    pub const fn assume_all() -> Capabilities {
        Capabilities {
            root: true,
            cap_bpf: true,
            cap_perfmon: true,
            cap_sys_admin: true,
            kprobes: true,
            tracing_programs: Some(true),
            tracefs: true,
            btf: true,
        }
    }

    /// May load BPF programs at all (tracing programs need CAP_BPF + CAP_PERFMON, or
    /// CAP_SYS_ADMIN).
    pub fn can_bpf(&self) -> bool {
        self.cap_sys_admin || (self.cap_bpf && self.cap_perfmon)
    }

    /// Whether the plan should use fentry/fexit: unknown counts as yes (the loader
    /// falls back to kprobes when the load fails).
    pub fn fentry_usable(&self) -> bool {
        self.tracing_programs != Some(false)
    }
}

/// The `CapEff:` mask from `/proc/self/status`.
fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let m = parse_cap_eff(s).unwrap();
        assert!(m & (1 << CAP_BPF) != 0);
        assert_eq!(
            parse_cap_eff("CapEff:\t0000000000200000\n"),
            Some(1 << CAP_SYS_ADMIN)
        );
        assert_eq!(parse_cap_eff("nothing"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }
}
