//! `cargo xtask bench`: what the tracer costs (issue 7).
//!
//! 1. Userspace: the release benchmarks of decode, validate and aggregate on one core
//!    (`vmatrace/benches/*`), their numbers printed as they come.
//! 2. In-kernel: one boot of Debian's newest 7.x cloud kernel in QEMU (the vm-test rig),
//!    the `vmatrace stress` workload alone, under `vmatrace run`, and under an equivalent
//!    bpftrace script (Debian's bpftrace with its libraries in the initramfs), with BPF
//!    run-time statistics off (slowdown) and on (per-program cost); see `guest`.
//!
//! Slow, so not part of `cargo xtask test`. Missing QEMU, kernels or bpftrace are printed
//! skips, not failures. Results: stdout and `target/bench/vm-<kernel>.json`.

mod bundle;
mod guest;
mod parse;
mod report;

use std::{
    fs,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::bail;

use crate::{
    util::{cargo, workspace_root},
    vm::{self, MatrixOutcome, qemu},
};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Skip the userspace benchmarks.
    #[arg(long)]
    pub no_userspace: bool,
    /// Skip the in-kernel (QEMU) measurement.
    #[arg(long)]
    pub no_vm: bool,
    /// Kernel for the VM run: a generation key or a build name (default: the newest 7.x
    /// cloud build).
    #[arg(long, default_value = "7-cloud")]
    pub kernel: String,
    /// Seconds the workload runs in each VM phase.
    #[arg(long, default_value_t = 10)]
    pub duration: u32,
    /// Workload reader threads. With the writers and `--forks`' two threads the default
    /// oversubscribes the guest's 2 vCPUs 5× (tasks preempted inside the programs).
    #[arg(long, default_value_t = 4)]
    pub readers: u32,
    /// Workload writer threads.
    #[arg(long, default_value_t = 4)]
    pub writers: u32,
    /// Events in the replay benchmark's trace.
    #[arg(long, default_value_t = 5_000_000)]
    pub events: u64,
    /// Do not ask apt for kernels; use the cache only.
    #[arg(long)]
    pub offline: bool,
}

pub fn bench(a: &BenchArgs) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    if !a.no_userspace
        && let Err(e) = userspace(a)
    {
        println!("FAIL userspace benchmarks: {e:#}");
        failed.push("userspace");
    }
    if !a.no_vm
        && let Err(e) = in_kernel(a)
    {
        println!("FAIL in-kernel benchmark: {e:#}");
        failed.push("in-kernel");
    }
    if !failed.is_empty() {
        bail!("bench: {} failed", failed.join(", "));
    }
    Ok(())
}

/// Run one release benchmark, its output streaming to our stdout.
fn cargo_bench(name: &str, extra: &[String]) -> anyhow::Result<()> {
    println!("\n=== cargo bench --bench {name} {}", extra.join(" "));
    let mut c = cargo();
    c.current_dir(workspace_root())
        .args(["bench", "-p", "vmatrace", "--bench", name, "--"])
        .args(extra);
    crate::util::run(&mut c)
}

fn userspace(a: &BenchArgs) -> anyhow::Result<()> {
    let t = Instant::now();
    // Decode + validate + totals over a recorded-format trace (plain and zstd).
    cargo_bench("replay_throughput", &[a.events.to_string()])?;
    // Decode + validate + totals + statistics (the whole `replay` pipeline), many VMAs.
    cargo_bench("pipeline", &[a.events.to_string()])?;
    // Validator alone with 1M live VMAs: throughput and memory.
    cargo_bench("validator", &[])?;
    // Aggregation (statistics, dashboard) ns/event.
    cargo_bench("stats", &[])?;
    println!(
        "\nbench: userspace benchmarks done in {:.0}s (target: ≥ 5 M events/s decoded + \
         validated on one core)",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

fn skip(why: &str) -> anyhow::Result<()> {
    println!("SKIP in-kernel benchmark: {why}");
    Ok(())
}

fn in_kernel(a: &BenchArgs) -> anyhow::Result<()> {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        return skip("qemu-system-x86_64 is not installed (cargo xtask setup installs it)");
    }
    let cache = vm::cache_root();
    let builds = vm::available_builds(&cache, a.offline);
    let mut out = MatrixOutcome::default();
    let targets = vm::select(&builds, std::slice::from_ref(&a.kernel), &mut out);
    let Some(target) = targets.first() else {
        return skip(&format!(
            "no kernel build for {:?} in the index or cache",
            a.kernel
        ));
    };
    let kernel = vm::ensure_kernel(&cache, &target.build)?;
    // A prebuilt static binary (e.g. from CI's vm-test job) saves a second release build.
    let vmatrace = match std::env::var_os("VMATRACE_GUEST_BIN") {
        Some(p) => std::path::PathBuf::from(p),
        None => vm::build_static_vmatrace()?,
    };
    // The comparison needs Debian's bpftrace on the host (copied into the guest).
    if let Err(e) = crate::setup::ensure_packages(&["bpftrace"]) {
        println!("bench: {e:#}");
    }
    let bpftrace = match bundle::bpftrace() {
        Ok(b) => Some(b),
        Err(e) => {
            println!(
                "SKIP bpftrace phases: {e:#} (install Debian's bpftrace: apt-get install bpftrace)"
            );
            None
        }
    };
    let params = guest::Params {
        duration: a.duration,
        readers: a.readers,
        writers: a.writers,
        vmatrace: true,
        bpftrace: bpftrace.is_some(),
    };
    let root = workspace_root();
    let dir = root.join("target/bench").join(&target.build.name);
    let initrd = root.join("target/bench/initrd-bench.cpio");
    bundle::initramfs(
        &vmatrace,
        bpftrace.as_ref(),
        &guest::init_script(&params),
        &initrd,
    )?;
    let phases = guest::phases(&params);
    let timeout =
        Duration::from_secs(120 + phases.len() as u64 * u64::from(guest::phase_budget(&params)));
    println!(
        "\n=== in-kernel benchmark on {} (Debian {}): phases {}, {} s each",
        target.build.name,
        target.build.version,
        phases
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(" → "),
        a.duration
    );
    let t = Instant::now();
    let o = boot(&kernel, &initrd, &dir, timeout)?;
    let raw = fs::read(&o.results).unwrap_or_default();
    let res = vm::results::parse(&raw);
    println!(
        "guest {} ran in {:.0}s ({})",
        res.booted.as_deref().unwrap_or("?"),
        t.elapsed().as_secs_f64(),
        if o.timed_out { "timed out" } else { "finished" }
    );
    let results: Vec<report::PhaseResult> = phases.iter().map(|p| phase_result(p, &res)).collect();
    let (text, json) = report::render(&results);
    println!("{text}");
    let summary = serde_json::json!({
        "kernel": target.build.name,
        "debian_version": target.build.version,
        "release": res.booted,
        "accel": "tcg",
        "duration_per_phase_s": a.duration,
        "readers": a.readers,
        "writers": a.writers,
        "date": date(),
        "results": json,
    });
    let path = root
        .join("target/bench")
        .join(format!("vm-{}.json", target.build.name));
    fs::write(&path, serde_json::to_string_pretty(&summary)?)?;
    println!(
        "bench: results in {}, guest logs in {}",
        path.display(),
        dir.display()
    );
    if res.booted.is_none() || !res.done {
        bail!(
            "the guest did not run the scenario to the end (see {})",
            dir.join("console.log").display()
        );
    }
    Ok(())
}

fn date() -> String {
    crate::util::output(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Boot under TCG (nested KVM does not boot these guests on the build machines), with
/// more memory than vm-test: bpftrace's LLVM libraries live in the initramfs.
fn boot(
    kernel: &Path,
    initrd: &Path,
    dir: &Path,
    timeout: Duration,
) -> anyhow::Result<qemu::Outcome> {
    let b = qemu::Boot {
        kernel,
        initrd,
        dir,
        accel: qemu::Accel::Tcg,
        timeout,
        boot_timeout: Duration::from_secs(180),
        memory_mb: 2048,
        cpus: 2,
        extra: Vec::new(),
    };
    qemu::boot(&b)
}

fn phase_result(p: &guest::Phase, r: &vm::results::GuestResults) -> report::PhaseResult {
    let mut out = report::PhaseResult {
        name: p.name.to_string(),
        ..Default::default()
    };
    let body = |n: &str| r.section(n).map(|s| (s.body.clone(), s.rc));
    match body(&format!("{}.stress", p.name)) {
        Some((b, Some(0))) => match parse::json(&b)
            .as_ref()
            .and_then(parse::Workload::from_json)
        {
            Some(w) => out.workload = Some(w),
            None => out.problems.push("workload report unreadable".into()),
        },
        Some((_, rc)) => {
            let err = body(&format!("{}.stress.err", p.name))
                .map(|b| b.0)
                .unwrap_or_default();
            out.problems
                .push(format!("workload exit status {rc:?}: {}", err.trim()));
        }
        None => out.problems.push("no workload report".into()),
    }
    match p.tool {
        guest::Tool::None => {}
        guest::Tool::Vmatrace | guest::Tool::VmatraceFentry | guest::Tool::VmatraceSlowWait(_) => {
            match body(p.name) {
                Some((b, rc)) => {
                    match parse::json(&b) {
                        Some(j) => out.vmatrace = Some(parse::VmatraceRun::from_json(&j)),
                        None => out.problems.push("vmatrace printed no JSON summary".into()),
                    }
                    if rc != Some(0) {
                        let err = body(&format!("{}.err", p.name))
                            .map(|b| b.0)
                            .unwrap_or_default();
                        out.problems.push(format!(
                            "vmatrace exit status {rc:?}: {}",
                            err.lines().rev().take(4).collect::<Vec<_>>().join(" | ")
                        ));
                    }
                }
                None => out.problems.push("no vmatrace output".into()),
            }
        }
        guest::Tool::Bpftrace => match body(p.name) {
            Some((b, rc)) => {
                let run = parse::bpftrace(&b);
                if run.hist.is_empty() && run.calls.is_empty() {
                    out.problems.push(format!(
                        "bpftrace (exit {rc:?}) printed no maps: {}",
                        b.lines().rev().take(4).collect::<Vec<_>>().join(" | ")
                    ));
                }
                let fds = body(&format!("{}.fdinfo", p.name))
                    .map(|f| parse::fdinfo(&f.0))
                    .unwrap_or_default();
                out.bpftrace_costs = parse::bpftrace_costs(&run, &fds);
                out.bpftrace = Some(run);
            }
            None => out.problems.push("no bpftrace output".into()),
        },
    }
    out
}
