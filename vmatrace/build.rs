//! Builds the eBPF object from `../vmatrace-ebpf` and hands its path to the crate
//! (`VMATRACE_EBPF_OBJ`), which embeds it with `include_bytes_aligned!`.
//!
//! Why not `aya-build`: the eBPF object must be compiled with Debian's rustc 1.96 (the
//! only compiler here with `rust-src`) and `-Z build-std=core`, not with the rustup
//! toolchain building this crate. So we run cargo ourselves with `RUSTC=/usr/bin/rustc`
//! and `RUSTC_BOOTSTRAP=1`, in a target directory of its own (the outer cargo holds the
//! lock on ours). If that toolchain is missing, the build fails with one line that says
//! how to install it — never with a linker error, never with an empty object.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Where `cargo xtask setup` installs things; overridable for unusual machines.
const DEFAULT_RUSTC: &str = "/usr/bin/rustc";
const DEFAULT_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library/core";
const SETUP_HINT: &str = "run `cargo xtask setup` (as root) to install it";

fn main() {
    if let Err(e) = run() {
        // One line, first thing on stderr, says what is wrong and what to do.
        eprintln!("error: vmatrace: {e:#}");
        println!("cargo::error=vmatrace: {e:#}");
        std::process::exit(1);
    }
}

fn bpf_linker() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        env::split_paths(&env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    }
    if let Some(home) = env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}

/// `git rev-parse --short HEAD` (+ `-dirty` when tracked files differ from it), for
/// `--version`, the summary and `vmatrace_build_info`. `VMATRACE_GIT_REVISION` overrides
/// it (a build from a source tarball); outside git it is `unknown`.
fn git_revision(manifest_dir: &Path) -> String {
    println!("cargo::rerun-if-env-changed=VMATRACE_GIT_REVISION");
    if let Ok(r) = env::var("VMATRACE_GIT_REVISION") {
        return r;
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .current_dir(manifest_dir)
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let Some(rev) = git(&["rev-parse", "--short", "HEAD"]) else {
        return "unknown".into();
    };
    // Rebuild when HEAD moves (a commit, a checkout) or the index changes (staging makes
    // the tree dirty or clean); edits not yet staged do not rerun this script, so `-dirty`
    // is as of the last build that ran it.
    // (A path that does not exist would make cargo rerun this script on every build.)
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for f in ["HEAD", "index", "packed-refs"]
        .into_iter()
        .chain(branch.as_deref())
    {
        if let Some(p) = git(&["rev-parse", "--git-path", f]) {
            let p = manifest_dir.join(p);
            if p.exists() {
                println!("cargo::rerun-if-changed={}", p.display());
            }
        }
    }
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{rev}-dirty") } else { rev }
}

fn run() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let revision = git_revision(&manifest_dir);
    println!("cargo::rustc-env=VMATRACE_GIT_REVISION={revision}");
    println!(
        "cargo::rustc-env=VMATRACE_LONG_VERSION={} (git {revision})",
        env::var("CARGO_PKG_VERSION")?
    );
    let ebpf_dir = manifest_dir.join("../vmatrace-ebpf");
    let common_dir = manifest_dir.join("../vmatrace-common");
    for d in [&ebpf_dir, &common_dir] {
        println!("cargo::rerun-if-changed={}", d.display());
    }
    println!(
        "cargo::rerun-if-changed={}",
        manifest_dir.join("../Cargo.lock").display()
    );
    println!("cargo::rerun-if-env-changed=VMATRACE_BPF_RUSTC");

    let rustc = env::var("VMATRACE_BPF_RUSTC").unwrap_or_else(|_| DEFAULT_RUSTC.to_string());
    if !Path::new(&rustc).is_file() {
        anyhow::bail!("eBPF toolchain missing: no Debian rustc at {rustc}; {SETUP_HINT}");
    }
    // build-std needs the library sources next to that compiler's sysroot.
    let sysroot = Command::new(&rustc)
        .arg("--print")
        .arg("sysroot")
        .output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !src.is_dir() && !Path::new(DEFAULT_RUST_SRC).is_dir() {
        anyhow::bail!(
            "eBPF toolchain missing: no rust-src for {rustc} (Debian rust-web-src); {SETUP_HINT}"
        );
    }
    let Some(linker) = bpf_linker() else {
        anyhow::bail!(
            "eBPF toolchain missing: bpf-linker not found in PATH or ~/.cargo/bin; {SETUP_HINT}"
        );
    };

    // OUT_DIR is <target>[/<triple>]/<profile>/build/vmatrace-<hash>/out. Share one eBPF
    // target dir per outer target dir, so debug, release and static builds reuse it.
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|t| t.join("bpf"))
        .unwrap_or_else(|| out_dir.join("bpf"));
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&ebpf_dir)
        .args([
            "build",
            "--release",
            "--locked",
            "-Z",
            "build-std=core",
            "--target",
            "bpfel-unknown-none",
            "--ignore-rust-version",
            "-p",
            "vmatrace-ebpf",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // Strip what the outer build set for *this* crate; it must not leak into the BPF one.
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO_") && k != "CARGO_HOME"
            || k.starts_with("RUSTC")
            || k == "RUSTFLAGS"
            || k == "RUSTDOCFLAGS"
        {
            cmd.env_remove(&k);
        }
    }
    let mut path = vec![linker.parent().unwrap_or(Path::new("/")).to_path_buf()];
    path.extend(env::split_paths(&env::var_os("PATH").unwrap_or_default()));
    cmd.env("PATH", env::join_paths(path)?)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_CFG_BPF_TARGET_ARCH", "x86_64")
        // BTF kept in the object (as aya-build does): readable verifier logs, and the
        // kernel needs it for fentry/fexit programs' BTF func info.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            [
                "--cfg=bpf_target_arch=\"x86_64\"",
                "-Cdebuginfo=2",
                "-Clink-arg=--btf",
            ]
            .join("\x1f"),
        );
    let out = cmd.output()?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Keep the error lines (cargo prints much else) and say which stage failed.
        for line in stderr.lines() {
            eprintln!("{line}");
        }
        anyhow::bail!(
            "building the eBPF object (vmatrace-ebpf) failed; see the cargo output above"
        );
    }
    // The eBPF crate is not a workspace default member, so its warnings would otherwise
    // never be seen: surface them as build-script warnings.
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        if let Some(w) = line.strip_prefix("warning: ")
            && !w.starts_with('`')
        {
            println!("cargo::warning=vmatrace-ebpf: {w}");
        }
    }
    // The tracer's object and the lab's (vmatrace-ebpf's two binaries).
    for (bin, var) in [
        ("vmatrace", "VMATRACE_EBPF_OBJ"),
        ("vmatrace-lab", "VMATRACE_LAB_OBJ"),
    ] {
        let obj = target_dir.join("bpfel-unknown-none/release").join(bin);
        let len = std::fs::metadata(&obj).map(|m| m.len()).unwrap_or(0);
        if len == 0 {
            anyhow::bail!("the eBPF build produced no object at {}", obj.display());
        }
        println!("cargo::rustc-env={var}={}", obj.display());
    }
    Ok(())
}
