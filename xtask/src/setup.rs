//! Provisioning, idempotent: every step checks before it installs.
//!
//! The eBPF toolchain: Debian's rustc 1.96 with its library source
//! (`rustc-web`, `rust-web-src`), LLVM 22 for bpf-linker, and bpf-linker 0.13.0 built
//! against that LLVM. The VM tests need `qemu-system-x86`, `busybox-static`, `cpio`; the
//! dashboard's end-to-end test needs `tmux`. The fleet tests need `prometheus` (with
//! `promtool`: the metrics endpoint scraped for real, the alert rules checked), `systemd`
//! (`systemd-analyze verify` of the unit), `logrotate` (its config) and `lintian` (the
//! `.deb`).

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, bail};

use crate::util::{cargo, cargo_bin_dir, is_root, output, run};

pub const APT_PACKAGES: &[&str] = &[
    "rustc-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "tmux",
    "prometheus",
    "systemd",
    "lintian",
    "logrotate",
];

pub const BPF_LINKER_VERSION: &str = "0.13.0";

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).contains("install ok installed")
        })
        .unwrap_or(false)
}

fn ensure_apt_packages() -> anyhow::Result<()> {
    ensure_packages(APT_PACKAGES)
}

/// Install the Debian packages of `wanted` that are missing (root), or say how.
pub fn ensure_packages(wanted: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: apt packages present ({})", wanted.len());
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}. Run `cargo xtask setup` as root, or install them: apt-get install {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "apt-get is not available on this machine; install these packages by hand: {}",
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"])).context("apt-get update")?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))
    .context("apt-get install")?;
    Ok(())
}

fn bpf_linker_ok(path: &Path) -> bool {
    Command::new(path)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false)
}

fn ensure_bpf_linker() -> anyhow::Result<()> {
    let path = cargo_bin_dir().join("bpf-linker");
    if bpf_linker_ok(&path) {
        eprintln!("setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against Debian's LLVM 22 (about a minute)"
    );
    // Without LLVM 22's bin dir first in PATH, llvm-sys looks in /usr and fails to link -lLLVM.
    let path_env = format!(
        "/usr/lib/llvm-22/bin:{}",
        std::env::var("PATH").unwrap_or_default()
    );
    run(cargo()
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("PATH", path_env)
        .env("LLVM_SYS_221_PREFIX", "/usr/lib/llvm-22"))
    .context("cargo install bpf-linker")?;
    if !bpf_linker_ok(&path) {
        bail!(
            "bpf-linker was installed but {} --version does not report {BPF_LINKER_VERSION}",
            path.display()
        );
    }
    Ok(())
}

fn check_debian_rustc() -> anyhow::Result<()> {
    let v = output(Command::new("/usr/bin/rustc").arg("--version"))
        .context("/usr/bin/rustc (rustc-web)")?;
    if !Path::new("/usr/lib/rustlib/src/rust/library/core").is_dir() {
        bail!("rust-web-src is installed but /usr/lib/rustlib/src/rust/library/core is missing");
    }
    eprintln!("setup: eBPF compiler {}", v.trim());
    Ok(())
}

pub fn setup() -> anyhow::Result<()> {
    let t = Instant::now();
    ensure_apt_packages()?;
    check_debian_rustc()?;
    ensure_bpf_linker()?;
    eprintln!("setup: done in {:.1}s", t.elapsed().as_secs_f64());
    Ok(())
}
