//! `vmatrace probes`: print the probe plan for the running kernel, or for another kernel
//! from its BTF and kallsyms dump (offline: check a fleet's kernel before deploying).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::kernel::{Capabilities, KernelInfo, plan, report};

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
    /// That kernel's release string (shown in the plan).
    #[arg(long, value_name = "R", requires = "btf")]
    pub release: Option<String>,
}

pub fn run(args: ProbesArgs) -> anyhow::Result<ExitCode> {
    let (info, caps, offline) = match (&args.btf, &args.kallsyms) {
        (Some(btf), Some(kallsyms)) => (
            KernelInfo::from_files(
                btf,
                kallsyms,
                args.filter_functions.as_deref(),
                args.blacklist.as_deref(),
                args.release.clone(),
            )?,
            // Offline: what a normal root deployment on that kernel would get.
            Capabilities::assume_all(),
            true,
        ),
        _ => (
            KernelInfo::from_running_kernel().context("cannot introspect the running kernel")?,
            Capabilities::detect(),
            false,
        ),
    };
    let here = plan(&info, &caps)?;
    // When this machine's capabilities rule hooks out, also show what the same kernel
    // would give with kprobes and tracing programs available.
    let ideal = if !offline && (!caps.kprobes || caps.tracing_programs != Some(true)) {
        Some(plan(&info, &Capabilities::assume_all())?)
    } else {
        None
    };

    if args.json {
        let out = match &ideal {
            Some(ideal) => serde_json::json!({ "plan": here, "with_all_capabilities": ideal }),
            None => serde_json::json!({ "plan": here }),
        };
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }

    if offline {
        println!("offline plan (assuming root, kprobes and tracing programs work there)");
    } else {
        println!("plan for the running kernel");
        println!("{}", attach_summary(&caps));
    }
    println!();
    print!("{}", report::render_table(&here));
    if let Some(ideal) = ideal {
        println!();
        println!(
            "with kprobes and tracing programs available, this kernel would give: {}",
            report::coverage_summary(&ideal)
        );
        println!();
        print!("{}", report::render_table(&ideal));
    }
    Ok(ExitCode::SUCCESS)
}

/// One paragraph on what can attach on this machine.
fn attach_summary(caps: &Capabilities) -> String {
    let kprobes = if caps.kprobes {
        "kprobes: available (kprobe PMU present)".to_string()
    } else {
        "kprobes: CANNOT attach here (no kprobe PMU at /sys/bus/event_source/devices/kprobe)"
            .to_string()
    };
    let fentry = match caps.tracing_programs {
        Some(true) => "fentry/fexit: tracing programs load".to_string(),
        Some(false) => {
            "fentry/fexit: CANNOT attach here (loading a tracing program fails with EPERM)"
                .to_string()
        }
        None => "fentry/fexit: not verified yet (checked when programs load; sandboxed kernels \
                 refuse tracing programs with EPERM)"
            .to_string(),
    };
    let privs = if caps.can_bpf() {
        "privileges: enough to load BPF programs"
    } else {
        "privileges: NOT enough to load BPF programs (run as root)"
    };
    format!("{kprobes}\n{fentry}\n{privs}")
}
