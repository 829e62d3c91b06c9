//! Everything the planner knows about one kernel, read from the running system or from
//! files (an operator's dumps of another kernel, or the test fixtures).

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::btf::Btf;
use super::config::{KernelConfig, PROC_CONFIG_GZ};
use super::consistency;
use super::ftrace::{FilterFunctions, KprobeBlacklist};
use super::input::{self, read_capped, read_capped_text};
use super::preempt::{self, Preemption};
use super::symbols::Kallsyms;

/// Where the kernel's tracing filesystem may be mounted, in order of preference.
pub const TRACEFS_DIRS: &[&str] = &["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];
pub const KPROBE_BLACKLIST: &str = "/sys/kernel/debug/kprobes/blacklist";
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";
pub const KALLSYMS: &str = "/proc/kallsyms";

/// The introspected kernel.
#[derive(Clone, Debug)]
pub struct KernelInfo {
    /// `uname -r`, or what the operator passed (`"offline"` when unknown).
    pub release: String,
    pub btf: Btf,
    pub kallsyms: Kallsyms,
    /// `None`: the list could not be read (not root, no tracefs, or not given offline).
    pub filter_functions: Option<FilterFunctions>,
    /// `None`: not readable / not given.
    pub kprobe_blacklist: Option<KprobeBlacklist>,
    /// Event names under `<tracefs>/events/mmap_lock`; `None` when unknown (offline).
    pub mmap_lock_tracepoints: Option<Vec<String>>,
    /// The build configuration; `None` when neither `/proc/config.gz` nor
    /// `/boot/config-<release>` is readable (or none was given offline).
    pub config: Option<KernelConfig>,
    /// Whether tasks can be preempted inside a tracing program, and how that is known.
    pub preemption: Preemption,
    /// Why an optional source is missing (shown as plan notes).
    pub remarks: Vec<String>,
}

impl KernelInfo {
    /// Build from files. `btf` is a raw BTF blob (e.g. a copy of `/sys/kernel/btf/vmlinux`,
    /// optionally zstd-compressed); `kallsyms` a `/proc/kallsyms` dump. The optional lists
    /// sharpen the plan (notrace detection, blacklisted functions); without them the
    /// planner uses what the kernel source says and notes it.
    pub fn from_files(
        btf: &Path,
        kallsyms: &Path,
        filter_functions: Option<&Path>,
        kprobe_blacklist: Option<&Path>,
        release: Option<String>,
    ) -> anyhow::Result<KernelInfo> {
        let files = format!("{} with {}", btf.display(), kallsyms.display());
        let btf_bytes = read_capped(btf, input::BTF)?;
        let btf = Btf::parse(&btf_bytes).with_context(|| format!("{}: bad BTF", btf.display()))?;
        let kallsyms = Kallsyms::parse(&read_capped_text(kallsyms, input::KALLSYMS)?)
            .with_context(|| format!("{}: bad kallsyms dump", kallsyms.display()))?;
        let filter_functions = filter_functions
            .map(|p| {
                FilterFunctions::parse(&read_capped_text(p, input::FTRACE_LIST)?)
                    .with_context(|| format!("{}: bad available_filter_functions", p.display()))
            })
            .transpose()?;
        let kprobe_blacklist = kprobe_blacklist
            .map(|p| {
                KprobeBlacklist::parse(&read_capped_text(p, input::FTRACE_LIST)?)
                    .with_context(|| format!("{}: bad kprobe blacklist", p.display()))
            })
            .transpose()?;
        let mut remarks = Vec::new();
        if filter_functions.is_none() {
            remarks.push(
                "no available_filter_functions given: notrace functions are taken from the \
                 kernel source (vma_refcount_put, 6.19's __vma_enter_locked)"
                    .to_string(),
            );
        }
        let info = KernelInfo {
            release: release.unwrap_or_else(|| "offline".to_string()),
            btf,
            kallsyms,
            filter_functions,
            kprobe_blacklist,
            mmap_lock_tracepoints: None,
            config: None,
            preemption: preempt::detect(preempt::Sources::default()),
            remarks,
        };
        // Files gathered by hand can be from two machines: refuse a pair that cannot be
        // one kernel rather than plan with "inlined" for every missing function.
        consistency::check(&info).map_err(|why| anyhow::anyhow!("{files}: {why}"))?;
        Ok(info)
    }

    /// Add the kernel's build configuration (a `.config`, plain, gzip or zstd), as
    /// `vmatrace probes --config FILE` does for an offline plan.
    pub fn with_config(mut self, path: &Path) -> anyhow::Result<KernelInfo> {
        self.config = Some(KernelConfig::read(path)?);
        self.preemption = preempt::detect(preempt::Sources {
            config: self.config.as_ref(),
            ..preempt::Sources::default()
        });
        Ok(self)
    }

    /// Introspect the running kernel. BTF and kallsyms are required; the ftrace list,
    /// the kprobe blacklist and the tracepoint directory are optional (not root, not
    /// mounted) and their absence is recorded in `remarks`.
    pub fn from_running_kernel() -> anyhow::Result<KernelInfo> {
        if !Path::new(VMLINUX_BTF).exists() {
            anyhow::bail!(
                "cannot read {VMLINUX_BTF} (kernel built without CONFIG_DEBUG_INFO_BTF?)"
            );
        }
        let btf_bytes = read_capped(Path::new(VMLINUX_BTF), input::BTF)?;
        let btf = Btf::parse(&btf_bytes).with_context(|| format!("{VMLINUX_BTF}: bad BTF"))?;
        let kallsyms = Kallsyms::parse(&read_capped_text(Path::new(KALLSYMS), input::KALLSYMS)?)
            .with_context(|| format!("{KALLSYMS}: unexpected format"))?;
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        let mut remarks = Vec::new();

        let tracefs = TRACEFS_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("events").is_dir());
        let mut filter_functions = None;
        let mut mmap_lock_tracepoints = None;
        match &tracefs {
            Some(dir) => {
                let aff = dir.join("available_filter_functions");
                match read_capped_text(&aff, input::FTRACE_LIST) {
                    Ok(text) => match FilterFunctions::parse(&text) {
                        Ok(f) => filter_functions = Some(f),
                        Err(e) => remarks.push(format!("{}: {e}; ignored", aff.display())),
                    },
                    Err(e) => remarks.push(format!(
                        "{e:#}: notrace functions are taken from the kernel source"
                    )),
                }
                let ev = dir.join("events/mmap_lock");
                mmap_lock_tracepoints = Some(match std::fs::read_dir(&ev) {
                    Ok(rd) => {
                        let mut v: Vec<String> = rd
                            .filter_map(|e| e.ok())
                            .filter(|e| e.path().is_dir())
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect();
                        v.sort();
                        v
                    }
                    Err(_) => Vec::new(),
                });
            }
            None => remarks.push(
                "tracefs is not mounted or not readable by this user (/sys/kernel/tracing): \
                 ftrace-ability and the mmap_lock tracepoints are not verified"
                    .to_string(),
            ),
        }
        let kprobe_blacklist =
            match read_capped_text(Path::new(KPROBE_BLACKLIST), input::FTRACE_LIST) {
                Ok(text) => match KprobeBlacklist::parse(&text) {
                    Ok(b) => Some(b),
                    Err(e) => {
                        remarks.push(format!("{KPROBE_BLACKLIST}: {e}; ignored"));
                        None
                    }
                },
                Err(_) => None,
            };
        let config = read_running_config(&release, &mut remarks);
        let read = |p: &str| std::fs::read_to_string(p).ok();
        let (sched, realtime, version) = (
            read(preempt::SCHED_PREEMPT),
            read(preempt::REALTIME),
            read("/proc/sys/kernel/version"),
        );
        let preemption = preempt::detect(preempt::Sources {
            sched_preempt: sched.as_deref(),
            realtime: realtime.as_deref(),
            config: config.as_ref(),
            version: version.as_deref(),
        });
        Ok(KernelInfo {
            release,
            btf,
            kallsyms,
            filter_functions,
            kprobe_blacklist,
            mmap_lock_tracepoints,
            config,
            preemption,
            remarks,
        })
    }
}

/// `/proc/config.gz` (CONFIG_IKCONFIG_PROC), else `/boot/config-<release>` (Debian ships
/// it in the image package). A corrupt file is a remark, not a failure: the planner then
/// assumes Debian's defaults and says so.
fn read_running_config(release: &str, remarks: &mut Vec<String>) -> Option<KernelConfig> {
    let boot = PathBuf::from(format!("/boot/config-{release}"));
    for path in [Path::new(PROC_CONFIG_GZ), boot.as_path()] {
        if !path.exists() {
            continue;
        }
        match KernelConfig::read(path) {
            Ok(c) => return Some(c),
            Err(e) => remarks.push(format!("{e:#}; ignored")),
        }
    }
    None
}
