//! `vmatrace stress` (not implemented yet).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct StressArgs {}

pub fn run(_args: StressArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vmatrace stress` is not implemented yet")
}
