//! `vmatrace stress`: run the VMA-lock workload (see `crate::stress`) and print what it did.

use std::{process::ExitCode, time::Duration};

use crate::stress::{self, StressConfig};

#[derive(Debug, clap::Args)]
pub struct StressArgs {
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    pub duration: f64,
    /// Threads faulting on the shared arenas (per-VMA read lock: `lock_vma_under_rcu`).
    #[arg(long, default_value_t = 4)]
    pub readers: usize,
    /// Threads reshaping the same arenas (mprotect, mmap MAP_FIXED, munmap, mremap,
    /// madvise(MADV_DONTNEED)): VMA write locks, splits, merges and detaches.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Also fork the workload in a loop (`dup_mmap` write-locks every VMA) and SIGKILL
    /// helper processes while they fork.
    #[arg(long)]
    pub forks: bool,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Internal: be the helper process that `--forks` kills while it forks.
    #[arg(long, hide = true)]
    pub fork_victim: bool,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a duration in seconds (0 to 86400)")),
    }
}

pub fn run(args: StressArgs) -> anyhow::Result<ExitCode> {
    if args.fork_victim {
        stress::fork::victim()?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.readers == 0 && args.writers == 0 && !args.forks {
        anyhow::bail!("nothing to do: give --readers, --writers or --forks");
    }
    let cfg = StressConfig {
        duration: Duration::from_secs_f64(args.duration),
        readers: args.readers,
        writers: args.writers,
        forks: args.forks,
    };
    if !args.json {
        eprintln!(
            "stress: {} readers, {} writers{} for {:.1}s",
            cfg.readers,
            cfg.writers,
            if cfg.forks {
                ", forks, kills during fork"
            } else {
                ""
            },
            args.duration
        );
    }
    let report = stress::run(&cfg)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("stress: ran {:.1}s", report.duration_s);
        for (op, n) in &report.ops {
            println!("  {op:<20} {n:>12}");
        }
        println!("  {:<20} {:>12}", "minor_faults", report.minor_faults);
        for e in &report.errors {
            println!("  first error: {e}");
        }
    }
    let failed = report
        .ops
        .get("errors")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    if failed > 0 {
        eprintln!("stress: {failed} operations failed (first error per operation above)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
