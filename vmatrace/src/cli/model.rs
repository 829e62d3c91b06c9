//! `vmatrace model` (not implemented yet).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ModelArgs {}

pub fn run(_args: ModelArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vmatrace model` is not implemented yet")
}
