//! Developer chores for vmatrace: provisioning, running, testing, VM tests, benchmarks.
//!
//! `cargo xtask setup` installs what the build needs (idempotent; a second run is a
//! no-op). `cargo xtask run` builds everything and starts tracing. `cargo xtask test`
//! runs every test (unit, eBPF verifier, VM matrix).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod deb;
mod run;
mod setup;
mod test;
mod util;
mod vm;

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
    /// Boot Debian kernels in QEMU and run vmatrace under a VMA-lock workload in each
    /// (the real-kernel matrix: 6.18, 6.19, 7.2/7.3 cloud, 7.x PREEMPT_RT).
    VmTest(vm::VmTestArgs),
    /// Record a trace on a real kernel: boot a Debian kernel in QEMU with the workload and
    /// write the guest's `vmatrace record -o -` stream to a file (how
    /// tests/data/sample-7.x.vmatrace is made; see docs/vm-tests.md).
    VmRecord(VmRecordArgs),
    /// Measure the tracer's cost: userspace decode/validate/aggregate throughput (release
    /// benches) and, in one QEMU boot of the newest 7.x cloud kernel, workload slowdown and
    /// per-program BPF cost of vmatrace next to an equivalent bpftrace script. Slow; not
    /// part of `test`. Results: docs/performance.md explains them.
    Bench(bench::BenchArgs),
    /// Build the Debian package (target/deb/vmatrace_VERSION_ARCH.deb): release binary,
    /// systemd unit, logrotate config, man pages, shell completions, docs; lintian if
    /// installed. --check installs it, verifies it and purges it (root).
    Deb(deb::DebArgs),
}

#[derive(Debug, clap::Args)]
struct VmRecordArgs {
    /// Output trace file.
    #[arg(short, long)]
    output: std::path::PathBuf,
    /// Kernel: a generation (6.18, 6.19, 7-cloud, 7-rt) or a build name; default: the
    /// newest cloud build.
    #[arg(long)]
    kernel: Option<String>,
    /// Seconds the workload runs (the recorder runs 3 s longer).
    #[arg(long, default_value_t = 10)]
    duration: u32,
}

/// The VM matrix as part of `cargo xtask test`: each kernel is one test (faults injected
/// and caught included); a generation missing from the index is a skip.
fn vm_matrix(totals: &mut test::Totals) -> anyhow::Result<bool> {
    let out = vm::matrix(&vm::VmTestArgs {
        faults: true,
        ..Default::default()
    })?;
    totals.passed += out.passed.len() as u64;
    totals.failed += out.failed.len() as u64;
    // `test` subtracts skips from the passed count (libtest counts them as passed), and
    // these never were: count them as passed first so the totals stay right.
    totals.passed += out.skipped.len() as u64;
    totals.skipped.extend(out.skipped);
    Ok(out.failed.is_empty())
}

/// Live tracing of a Debian kernel in QEMU, streamed to this host (see `vm::stream`).
fn run_vm(args: &[String]) -> anyhow::Result<()> {
    vm::stream::run_vm(args)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Run(a) => run::run(a),
        Cmd::Test(a) => test::test(a),
        Cmd::VmTest(a) => vm::vm_test(&a),
        Cmd::Bench(a) => setup::setup().and_then(|()| bench::bench(&a)),
        Cmd::Deb(a) => setup::setup().and_then(|()| deb::deb(&a)),
        Cmd::VmRecord(a) => setup::setup().and_then(|()| {
            vm::stream::stream(
                a.kernel.as_deref(),
                a.duration,
                vm::stream::Sink::File(a.output),
            )
        }),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
