//! Command line: one module per subcommand, each with its clap `Args` and a `run`.

use clap::{Parser, Subcommand};

pub mod capture_kernel;
pub mod exit;
pub mod model;
pub mod probes;
pub mod replay;
pub mod run;
pub mod runner;
pub mod session;
pub mod signals;
pub mod simulate;
pub mod stress;
pub mod telemetry;
pub mod trace_output;

pub use exit::{EXIT_BAD_TRACE, EXIT_CANNOT_ATTACH};

/// vmatrace — trace and validate the kernel's per-VMA lock (vm_refcnt) live.
#[derive(Debug, Parser)]
#[command(name = "vmatrace", version = env!("VMATRACE_LONG_VERSION"), about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace the per-VMA lock live: attach, validate, report (root; exit 3 if nothing
    /// can attach here).
    Run(run::RunArgs),
    /// Trace live like `run --headless` and write a trace file for `replay`.
    Record(run::RecordArgs),
    /// Print the probe plan for the running kernel (or another one, offline).
    Probes(probes::ProbesArgs),
    /// Save what `probes` needs to plan this kernel elsewhere (`probes --bundle DIR`).
    CaptureKernel(capture_kernel::CaptureKernelArgs),
    /// Print the refcount state machine (Graphviz DOT).
    Model(model::ModelArgs),
    /// Run a workload that exercises every per-VMA lock path.
    Stress(stress::StressArgs),
    /// Run the simulated kernel (real atomics and threads) through the validator.
    Simulate(simulate::SimulateArgs),
    /// Replay a recorded trace offline through the validator (no root needed).
    Replay(replay::ReplayArgs),
}

/// Run the command; an error carries its exit status ([`exit::status_of`]).
pub fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(a) => run::run(a),
        Command::Record(a) => run::record(a),
        Command::Probes(a) => probes::run(a),
        Command::CaptureKernel(a) => capture_kernel::run(a),
        Command::Model(a) => model::run(a),
        Command::Stress(a) => stress::run(a),
        Command::Simulate(a) => simulate::run(a),
        Command::Replay(a) => replay::run(a),
    }
}
