//! `vmatrace probes`: print the probe plan for the running kernel, or for another kernel
//! from its BTF and kallsyms dump (offline: check a fleet's kernel before deploying).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;

use crate::kernel::caps::TracingProbe;
use crate::kernel::{Capabilities, KernelInfo, plan::AttachPreference, plan_with, report};

#[derive(Debug, clap::Args)]
pub struct ProbesArgs {
    /// Print the plan as JSON (the `ProbePlan` serde form).
    #[arg(long)]
    pub json: bool,
    /// Plan offline for the kernel whose BTF this is (a copy of /sys/kernel/btf/vmlinux,
    /// optionally zstd-compressed). Needs --kallsyms.
    #[arg(long, value_name = "FILE", requires = "kallsyms")]
    pub btf: Option<PathBuf>,
    /// That kernel's /proc/kallsyms dump (read as root, or addresses are zero: fine).
    #[arg(long, value_name = "FILE", requires = "btf")]
    pub kallsyms: Option<PathBuf>,
    /// That kernel's <tracefs>/available_filter_functions (sharpens notrace detection).
    #[arg(long, value_name = "FILE", requires = "btf")]
    pub filter_functions: Option<PathBuf>,
    /// That kernel's /sys/kernel/debug/kprobes/blacklist.
    #[arg(long, value_name = "FILE", requires = "btf")]
    pub blacklist: Option<PathBuf>,
    /// That kernel's build config (/boot/config-<release> or /proc/config.gz; plain, gzip
    /// or zstd). Without it the plan assumes Debian's defaults (no kprobes on notrace
    /// functions) and says so.
    #[arg(long, value_name = "FILE", requires = "btf")]
    pub config: Option<PathBuf>,
    /// That kernel's release string (shown in the plan).
    #[arg(long, value_name = "R", requires = "btf")]
    pub release: Option<String>,
    /// Plan offline for the kernel captured in this bundle (`vmatrace capture-kernel -o
    /// DIR` on a host running it).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["btf", "kallsyms", "filter_functions", "blacklist", "config", "release"])]
    pub bundle: Option<PathBuf>,
    /// Which mechanism to try first (as `run --attach`): `auto` picks kprobes where the
    /// kernel can preempt a task inside an fentry/fexit program.
    #[arg(long, value_enum, default_value_t = AttachPreference::Auto)]
    pub attach: AttachPreference,
}

pub fn run(args: ProbesArgs) -> anyhow::Result<()> {
    let mut tracing = None;
    let (info, caps, offline) = match (&args.bundle, &args.btf, &args.kallsyms) {
        (Some(dir), _, _) => (
            crate::kernel::bundle::load(dir)?,
            Capabilities::assume_all(),
            true,
        ),
        (None, Some(btf), Some(kallsyms)) => (
            KernelInfo::from_files(
                btf,
                kallsyms,
                args.filter_functions.as_deref(),
                args.blacklist.as_deref(),
                args.release.clone(),
            )
            .and_then(|info| match &args.config {
                Some(c) => info.with_config(c),
                None => Ok(info),
            })?,
            // Offline: what a normal root deployment on that kernel would get.
            Capabilities::assume_all(),
            true,
        ),
        _ => {
            let info = KernelInfo::from_running_kernel()
                .context("cannot introspect the running kernel")?;
            let mut caps = Capabilities::detect();
            // A two-instruction fentry load (no attach) settles whether tracing programs
            // work here; without privileges it stays unknown.
            tracing = Some(caps.probe_tracing_programs(&info));
            (info, caps, false)
        }
    };
    let here = plan_with(&info, &caps, args.attach)?;
    // When this machine's capabilities rule hooks out, also show what the same kernel
    // would give with kprobes and tracing programs available.
    let ideal = if !offline && (!caps.kprobes || caps.tracing_programs != Some(true)) {
        Some(plan_with(&info, &Capabilities::assume_all(), args.attach)?)
    } else {
        None
    };

    let mut out = String::new();
    if args.json {
        let v = serde_json::json!({
            "plan": here,
            "preemption": info.preemption,
            "capabilities": if offline { None } else { Some(caps) },
            "with_all_capabilities": ideal,
        });
        out = serde_json::to_string_pretty(&v)? + "\n";
    } else {
        if offline {
            out += "offline plan (assuming root, kprobes and tracing programs work there)\n";
        } else {
            out += "plan for the running kernel\n";
            out += &attach_summary(&caps, tracing.as_ref());
            out += "\n";
            out += &info.preemption.describe();
            out += "\n";
        }
        out += "\n";
        out += &report::render_table(&here);
        if let Some(ideal) = ideal {
            out += &format!(
                "\nwith kprobes and tracing programs available, this kernel would give: {}\n\n",
                report::coverage_summary(&ideal)
            );
            out += &report::render_table(&ideal);
        }
    }
    // A closed pipe (`vmatrace probes | head`) is not an error worth a panic.
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// One paragraph on what can attach on this machine.
fn attach_summary(caps: &Capabilities, tracing: Option<&TracingProbe>) -> String {
    let kprobes = if caps.kprobes {
        "kprobes: available (kprobe PMU present)".to_string()
    } else {
        "kprobes: CANNOT attach here (no kprobe PMU at /sys/bus/event_source/devices/kprobe)"
            .to_string()
    };
    let fentry = match (caps.tracing_programs, tracing) {
        (Some(true), _) => "fentry/fexit: a test tracing program loads".to_string(),
        (Some(false), Some(TracingProbe::Refused(e))) => {
            format!("fentry/fexit: CANNOT attach here (loading a tracing program fails: {e})")
        }
        (Some(false), _) => "fentry/fexit: CANNOT attach here (tracing programs refused)".into(),
        (None, Some(TracingProbe::Unknown(why))) => {
            format!("fentry/fexit: unknown ({why}); checked again when the programs load")
        }
        (None, _) => "fentry/fexit: not verified yet (checked when the programs load)".into(),
    };
    let privs = if caps.can_bpf() {
        "privileges: enough to load BPF programs"
    } else {
        "privileges: NOT enough to load BPF programs (run as root)"
    };
    format!("{kprobes}\n{fentry}\n{privs}")
}
