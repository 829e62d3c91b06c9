//! `cargo xtask run`: build everything and start tracing.
//!
//! Live on this host when it can attach; when the host kernel cannot attach (no kprobe
//! PMU, tracing programs refused — vmatrace exits with [`EXIT_CANNOT_ATTACH`]), it says so
//! and boots the newest Debian kernel in QEMU with the workload instead, streaming the
//! guest's events to the host's dashboard (`--vm`).

use std::process::Command;

use anyhow::{Context, bail};

use crate::util::{cargo, is_root, workspace_root};

/// vmatrace's exit code for "this kernel offers nothing to attach to" (see vmatrace::cli).
pub const EXIT_CANNOT_ATTACH: i32 = 3;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Do not try the host kernel; trace a Debian kernel booted in QEMU.
    #[arg(long)]
    pub vm: bool,
    /// Never fall back to the VM when the host cannot attach.
    #[arg(long, conflicts_with = "vm")]
    pub no_vm_fallback: bool,
    /// Arguments passed to `vmatrace run` (after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn build_release() -> anyhow::Result<std::path::PathBuf> {
    let root = workspace_root();
    crate::util::run(
        cargo()
            .current_dir(&root)
            .args(["build", "--release", "-p", "vmatrace"]),
    )
    .context("building vmatrace")?;
    Ok(root.join("target/release/vmatrace"))
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::setup::setup()?;
    if args.vm {
        return crate::run_vm(&args.args);
    }
    let bin = build_release()?;
    if !is_root() {
        bail!(
            "tracing needs root (or CAP_BPF + CAP_PERFMON): run `sudo -E cargo xtask run`, or `{} run` as root",
            bin.display()
        );
    }
    let status = Command::new(&bin)
        .arg("run")
        .args(&args.args)
        .status()
        .context("starting vmatrace")?;
    match status.code() {
        Some(0) => Ok(()),
        Some(EXIT_CANNOT_ATTACH) if !args.no_vm_fallback => {
            eprintln!(
                "\nxtask run: this host's kernel cannot attach vmatrace's probes (see above).\n\
                 xtask run: falling back to a real Debian kernel in QEMU, streaming its events here (cargo xtask run --vm)\n"
            );
            crate::run_vm(&args.args)
        }
        _ => bail!("vmatrace run exited with {status}"),
    }
}
