//! Developer chores for vmatrace: provisioning, running, testing, VM tests, benchmarks.
//!
//! `cargo xtask setup` installs what the build needs (idempotent; a second run is a
//! no-op). `cargo xtask run` builds everything and starts tracing. `cargo xtask test`
//! runs every test (unit, eBPF verifier, VM matrix).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod run;
mod setup;
mod test;
mod util;

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "vmatrace developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain (Debian rustc-web, rust-web-src, LLVM 22, bpf-linker
    /// 0.13.0) and the VM-test tools (qemu-system-x86, busybox-static). Idempotent.
    Setup,
    /// Build everything and start tracing (live as root; in QEMU when this kernel cannot attach).
    Run(run::RunArgs),
    /// Run every test: setup, lints, unit and integration tests (incl. the eBPF verifier
    /// test), and the real-kernel VM matrix.
    Test(test::TestArgs),
}

/// The VM matrix; wired to `vm::vm_test` once the rig lands.
fn vm_matrix(_totals: &mut test::Totals) -> anyhow::Result<bool> {
    println!("vm-test: the real-kernel matrix is not built yet");
    Ok(false)
}

/// Live tracing of a Debian kernel in QEMU; wired to the VM rig once it lands.
fn run_vm(_args: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("`cargo xtask run --vm` needs the VM rig, which is not built yet")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Run(a) => run::run(a),
        Cmd::Test(a) => test::test(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
