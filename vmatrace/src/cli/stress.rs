//! `vmatrace stress`: run the VMA-lock workload (see `crate::lab::stress`) and print what it did.

use std::time::Duration;

use crate::lab::stress::{self, StressConfig};

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
    /// With --forks: kill each helper once its forking thread sleeps killably (`D`,
    /// polled every 100 µs at real-time priority when allowed) instead of a few random
    /// milliseconds in, so the SIGKILL lands inside `dup_mmap`'s wait for readers (with
    /// --widen-race-us, which makes those waits last). Counted as `killed_in_wait`.
    #[arg(long, requires = "forks")]
    pub kill_asleep: bool,
    /// Test aid (root): busy-wait this many microseconds (1–1000) right before and right
    /// after the `vm_refcnt` increment in `vma_start_read` (kprobes inside
    /// `lock_vma_under_rcu`), for the tasks of this process's cgroup when it has one of its
    /// own (the fork victims too), else for this process's threads only. A writer that write-locks
    /// and detaches the VMA meanwhile then finds the reader's transient reference: the
    /// detach slow path (`__vma_exclude_readers_for_detach`), which is otherwise a race of
    /// a few instructions. The probes only read the clock; they spin with interrupts off.
    /// Kprobe optimisation (`debug.kprobes-optimization`) is off while they are installed.
    #[arg(long, value_name = "US", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub widen_race_us: Option<u64>,
    /// Test aid (root, cgroup v2): count this process's cgroup's calls of
    /// __vma_start_write, lock_vma_under_rcu and vm_area_free with plain kprobes, from
    /// start to the end of the workload (not its exit), as a reference for the tracer's
    /// counts.
    #[arg(long)]
    pub count_calls: bool,
    /// Print the report as one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Internal: be the helper process that `--forks` kills while it forks.
    #[arg(long, hide = true)]
    pub fork_victim: bool,
    /// Internal: the VMAs a fork helper maps.
    #[arg(long, hide = true, default_value_t = stress::fork::VICTIM_VMAS, value_parser = clap::value_parser!(u64).range(2..=4096))]
    pub victim_vmas: u64,
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a duration in seconds (0 to 86400)")),
    }
}

pub fn run(args: StressArgs) -> anyhow::Result<()> {
    if args.fork_victim {
        stress::fork::victim(args.victim_vmas as usize)?;
        return Ok(());
    }
    if args.readers == 0 && args.writers == 0 && !args.forks {
        anyhow::bail!("nothing to do: give --readers, --writers or --forks");
    }
    let cfg = StressConfig {
        duration: Duration::from_secs_f64(args.duration),
        readers: args.readers,
        writers: args.writers,
        forks: args.forks,
        kill_asleep: args.kill_asleep,
        widen_race: args.widen_race_us.map(Duration::from_micros),
        count_calls: args.count_calls,
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
        if let Some(w) = &report.race_widener {
            println!(
                "stress: race widened by {} µs at {}",
                w.delay_us,
                w.probes.join(", ")
            );
        }
        println!("stress: ran {:.1}s", report.duration_s);
        for (op, n) in &report.ops {
            println!("  {op:<20} {n:>12}");
        }
        println!("  {:<20} {:>12}", "minor_faults", report.minor_faults);
        if let Some(c) = &report.kprobe_calls {
            println!(
                "stress: calls counted by plain kprobes (cgroup {}):",
                c.cgroup_id
            );
            for (f, n) in &c.calls {
                let skipped = c.skipped.get(f).copied().unwrap_or(0);
                println!("  {f:<20} {n:>12} (skipped {skipped})");
            }
        }
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
        return Err(super::exit::Failure::Unverified(format!(
            "stress: {failed} operations failed (first error per operation above)"
        ))
        .into());
    }
    Ok(())
}
