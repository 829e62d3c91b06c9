//! `vmatrace probes` (not implemented yet).

use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ProbesArgs {}

pub fn run(_args: ProbesArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`vmatrace probes` is not implemented yet")
}
