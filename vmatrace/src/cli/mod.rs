//! Command line: one module per subcommand, each with its clap `Args` and a `run`.

use clap::{Parser, Subcommand};

pub mod model;
pub mod probes;
pub mod signals;
pub mod stress;

/// vmatrace — trace and validate the kernel's per-VMA lock (vm_refcnt) live.
#[derive(Debug, Parser)]
#[command(name = "vmatrace", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the probe plan for the running kernel (or another one, offline).
    Probes(probes::ProbesArgs),
    /// Print the refcount state machine (Graphviz DOT).
    Model(model::ModelArgs),
    /// Run a workload that exercises every per-VMA lock path.
    Stress(stress::StressArgs),
    /// The dashboard over synthetic events (for the tmux end-to-end test).
    #[command(hide = true)]
    DashboardDemo(crate::tui::demo::DemoArgs),
}

pub fn dispatch(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Probes(a) => probes::run(a),
        Command::Model(a) => model::run(a),
        Command::Stress(a) => stress::run(a),
        Command::DashboardDemo(a) => crate::tui::demo::run(a),
    }
}
