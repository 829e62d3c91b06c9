//! What this process may do with bpf(): privileges and the kernel facilities attach needs.

use std::path::Path;

/// `/sys/bus/event_source/devices/kprobe/type`: aya opens kprobes through this PMU; without
/// it (kernel built without `CONFIG_KPROBES`, or a sandbox hiding it) no kprobe attaches.
pub const KPROBE_PMU_TYPE: &str = "/sys/bus/event_source/devices/kprobe/type";

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

    /// Fill in [`Self::tracing_programs`] by test-loading an fentry program aimed at a
    /// function of the running kernel (`info` must describe the running kernel: the BTF
    /// id is only meaningful there). Leaves it `None` when it cannot tell.
    pub fn probe_tracing_programs(&mut self, info: &super::KernelInfo) -> TracingProbe {
        if !self.can_bpf() {
            return TracingProbe::Unknown("not privileged to load BPF programs".into());
        }
        let id = ["vm_area_free", "__vma_start_write", "lock_vma_under_rcu"]
            .iter()
            .find_map(|f| {
                let ids = info.btf.ids_by_name(f, super::btf::Kind::Func);
                (ids.len() == 1).then(|| ids[0])
            });
        let Some(id) = id else {
            return TracingProbe::Unknown("no BTF FUNC to aim a test program at".into());
        };
        let r = try_load_fentry(id);
        self.tracing_programs = match r {
            TracingProbe::Loads => Some(true),
            TracingProbe::Refused(_) => Some(false),
            TracingProbe::Unknown(_) => None,
        };
        r
    }

    /// Whether the plan should use fentry/fexit: unknown counts as yes (the loader
    /// falls back to kprobes when the load fails).
    pub fn fentry_usable(&self) -> bool {
        self.tracing_programs != Some(false)
    }
}

/// Outcome of [`try_load_fentry`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TracingProbe {
    /// A minimal fentry program loaded (and was closed again).
    Loads,
    /// The kernel refused tracing programs (e.g. EPERM on sandboxed kernels): the error.
    Refused(String),
    /// Could not tell (no BTF FUNC to aim at, or an unrelated error such as EINVAL).
    Unknown(String),
}

/// `union bpf_attr` for `BPF_PROG_LOAD`, up to `attach_btf_obj_fd` (the kernel accepts a
/// shorter attr and requires unknown trailing bytes to be zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    _pad: u32,
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_FENTRY: u32 = 24;

/// Try to load (not attach) a two-instruction fentry program aimed at `func_btf_id` (a
/// FUNC id of the running kernel's vmlinux BTF). This answers
/// [`Capabilities::tracing_programs`] without the eBPF object: some kernels (this build
/// machine's sandbox) accept every other program type but refuse tracing programs.
pub fn try_load_fentry(func_btf_id: u32) -> TracingProbe {
    // r0 = 0; exit
    let insns: [u64; 2] = [
        u64::from_le_bytes([0xb7, 0, 0, 0, 0, 0, 0, 0]),
        u64::from_le_bytes([0x95, 0, 0, 0, 0, 0, 0, 0]),
    ];
    let license = c"GPL";
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"vmatrace_prbe");
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACING,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name,
        expected_attach_type: BPF_TRACE_FENTRY,
        attach_btf_id: func_btf_id,
        ..ProgLoadAttr::default()
    };
    // SAFETY: `attr` is a properly laid out bpf_attr prefix that outlives the call; the
    // pointers in it (insns, license) point at live locals.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoadAttr,
            std::mem::size_of::<ProgLoadAttr>() as u32,
        )
    };
    if fd >= 0 {
        // SAFETY: the kernel just returned this fd to us and nothing else owns it.
        unsafe { libc::close(fd as libc::c_int) };
        return TracingProbe::Loads;
    }
    let err = std::io::Error::last_os_error();
    // 524 is the kernel's ENOTSUPP (no trampoline support on this arch/config).
    match err.raw_os_error() {
        Some(libc::EPERM | libc::EACCES | libc::EOPNOTSUPP | 524) => {
            TracingProbe::Refused(err.to_string())
        }
        _ => TracingProbe::Unknown(format!("test load of an fentry program failed: {err}")),
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
