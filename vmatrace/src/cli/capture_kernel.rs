//! `vmatrace capture-kernel -o DIR`: save what `probes` needs to plan this kernel
//! offline (`vmatrace probes --bundle DIR` on another machine), e.g. to check a fleet's
//! kernels before deploying. Layout and manifest: `kernel::bundle`, `docs/fleet.md`.

use std::path::PathBuf;

use super::exit::Failure;
use crate::kernel::bundle;

#[derive(Debug, clap::Args)]
pub struct CaptureKernelArgs {
    /// The bundle directory: created, or an existing empty one (nothing is overwritten).
    #[arg(short, long, value_name = "DIR")]
    pub output: PathBuf,
    /// Keep kernel addresses in kallsyms and the kprobe blacklist (planning does not need
    /// them; by default they are zeroed, so a bundle can be shared like a log).
    #[arg(long)]
    pub keep_addresses: bool,
}

pub fn run(args: CaptureKernelArgs) -> anyhow::Result<()> {
    if let Ok(mut entries) = std::fs::read_dir(&args.output)
        && entries.next().is_some()
    {
        return Err(Failure::Usage(format!(
            "{} exists and is not empty: give a new directory (nothing is overwritten)",
            args.output.display()
        ))
        .into());
    }
    if args.output.exists() && !args.output.is_dir() {
        return Err(Failure::Usage(format!(
            "{} exists and is not a directory",
            args.output.display()
        ))
        .into());
    }
    let now = crate::export::clock::rfc3339(crate::export::clock::realtime_ns());
    let m = bundle::capture(&args.output, args.keep_addresses, &now)?;
    println!(
        "captured kernel {} into {} ({})",
        m.release,
        args.output.display(),
        m.files.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    for w in &m.missing {
        println!("  not captured: {w}");
    }
    if !m.addresses {
        println!("  kernel addresses zeroed (--keep-addresses keeps them)");
    }
    println!(
        "plan it anywhere with: vmatrace probes --bundle {}",
        args.output.display()
    );
    Ok(())
}
