//! `cargo xtask vm-test`: the real-kernel matrix. Debian kernel builds (found through apt,
//! cached under `~/.cache/vmatrace`) boot in QEMU with a small initramfs (busybox, a
//! static `vmatrace`, a generated `/init`); each runs the scenario (`scenario`) and the
//! host judges vmatrace's own JSON output (`checks`). Like aya's VM harness, in Rust.

mod apt;
mod checks;
mod debver;
mod faults;
mod gdb;
mod guest_shell;
mod host_prometheus;
pub mod initramfs;
pub mod kernels;
pub mod qemu;
pub mod results;
pub mod scenario;
mod scrape;
pub mod stream;
mod verdict;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::util::{cargo, workspace_root};
use kernels::{Generation, KernelBuild, MATRIX};
use qemu::Accel;
use scenario::{Params, Step};

#[derive(Debug, Clone, clap::Args)]
pub struct VmTestArgs {
    /// Kernels to boot: a generation (6.18, 6.19, 7-cloud, 7-rt) or a build name from the
    /// index (e.g. 7.2.13+deb14-cloud-amd64). Repeatable; default: the whole matrix.
    #[arg(long = "kernel", value_name = "SPEC")]
    pub kernels: Vec<String>,
    /// Keep console logs and summaries under target/vm-artifacts even when a kernel passes.
    #[arg(long)]
    pub keep_artifacts: bool,
    /// Seconds the workload (and tracer) run in each guest. TCG is slow: keep it modest.
    #[arg(long, default_value_t = 8)]
    pub duration: u32,
    /// Workload reader threads. With the writers and `--forks`' two threads the default
    /// oversubscribes the guest's 2 vCPUs 5×: tasks are preempted inside the tracer's
    /// programs, which must lose nothing to it.
    #[arg(long, default_value_t = 4)]
    pub readers: u32,
    /// Workload writer threads.
    #[arg(long, default_value_t = 4)]
    pub writers: u32,
    /// Do not ask apt; use only kernels already in the cache.
    #[arg(long)]
    pub offline: bool,
    /// Also break the VMA-lock protocol inside each guest kernel (through QEMU's
    /// gdbstub) during a last traced step, and require every fault to be reported
    /// (docs/vm-tests.md#faults).
    #[arg(long)]
    pub faults: bool,
}

impl Default for VmTestArgs {
    fn default() -> Self {
        Self {
            kernels: Vec::new(),
            keep_artifacts: false,
            duration: 8,
            readers: 4,
            writers: 4,
            offline: false,
            faults: false,
        }
    }
}

/// `~/.cache/vmatrace` (or `$VMATRACE_CACHE`): outside the work tree, kept between runs.
pub fn cache_root() -> PathBuf {
    if let Some(d) = std::env::var_os("VMATRACE_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
    PathBuf::from(home).join(".cache/vmatrace")
}

/// What `vm-test` ended with, for `cargo xtask test`'s totals.
#[derive(Debug, Default)]
pub struct MatrixOutcome {
    pub passed: Vec<String>,
    pub failed: Vec<String>,
    pub skipped: Vec<String>,
}

/// A kernel the matrix will boot.
#[derive(Clone, Debug)]
pub struct Target {
    pub label: String,
    pub build: KernelBuild,
}

/// The index of available kernel builds: apt (private state) when reachable, else the cache.
pub fn available_builds(cache: &Path, offline: bool) -> Vec<KernelBuild> {
    if !offline {
        match refresh_index(cache) {
            Ok(b) if !b.is_empty() => return b,
            Ok(_) => {
                eprintln!("vm-test: the apt index lists no kernel images; using cached kernels")
            }
            Err(e) => eprintln!("vm-test: cannot query apt ({e:#}); using cached kernels"),
        }
    }
    kernels::cached_builds(cache)
}

fn refresh_index(cache: &Path) -> anyhow::Result<Vec<KernelBuild>> {
    let apt = apt::Apt::new(&cache.join("apt"))?;
    let mirror = apt::find_mirror(&apt::system_sources())
        .context("no Debian archive in /etc/apt/sources.list{,.d} to reuse")?;
    apt.configure(&mirror)?;
    let t = Instant::now();
    if let Err(e) = apt.update() {
        // Stale lists still name real builds; a failed update is not fatal if we have them.
        eprintln!("vm-test: {e:#}");
    }
    let index = apt.kernel_index()?;
    eprintln!(
        "vm-test: apt index ({}) read in {:.1}s: {} linux packages",
        apt::SUITES.join(", "),
        t.elapsed().as_secs_f64(),
        index.len()
    );
    Ok(kernels::builds(&index))
}

/// Resolve `--kernel` specs (or the default matrix) against the index.
pub fn select(builds: &[KernelBuild], specs: &[String], out: &mut MatrixOutcome) -> Vec<Target> {
    let gens: Vec<&Generation> = if specs.is_empty() {
        MATRIX.iter().collect()
    } else {
        Vec::new()
    };
    let mut targets = Vec::new();
    let want_gen =
        |g: &Generation, targets: &mut Vec<Target>, out: &mut MatrixOutcome| match kernels::newest(
            builds, g,
        ) {
            Some(b) => targets.push(Target {
                label: g.key.to_string(),
                build: b.clone(),
            }),
            None => {
                let msg = format!(
                    "vm-test {}: no {} build in the index or cache ({})",
                    g.key, g.flavour, g.why
                );
                println!("SKIP {msg}");
                out.skipped.push(msg);
            }
        };
    for g in gens {
        want_gen(g, &mut targets, out);
    }
    for spec in specs {
        if let Some(g) = MATRIX.iter().find(|g| g.key == spec.as_str()) {
            want_gen(g, &mut targets, out);
        } else if let Some(b) = builds.iter().find(|b| b.name == *spec) {
            targets.push(Target {
                label: spec.clone(),
                build: b.clone(),
            });
        } else {
            let msg = format!(
                "vm-test {spec}: not a generation ({}) nor a kernel build in the index",
                MATRIX.iter().map(|g| g.key).collect::<Vec<_>>().join(", ")
            );
            println!("SKIP {msg}");
            out.skipped.push(msg);
        }
    }
    targets
}

/// The kernel image of a build, downloading and extracting it on a cold cache.
pub fn ensure_kernel(cache: &Path, b: &KernelBuild) -> anyhow::Result<PathBuf> {
    if let Some(p) = kernels::cached(cache, &b.name) {
        return Ok(p);
    }
    if b.image_package.is_empty() {
        bail!("{} is not cached and apt is unavailable", b.name);
    }
    let t = Instant::now();
    let apt = apt::Apt::new(&cache.join("apt"))?;
    let deb = apt.download(&b.image_package, &b.version)?;
    let image = kernels::extract_vmlinuz(&deb, cache, b);
    let _ = fs::remove_file(&deb);
    let image = image?;
    eprintln!(
        "vm-test: fetched {} {} ({}) in {:.1}s",
        b.name,
        b.version,
        b.image_package,
        t.elapsed().as_secs_f64()
    );
    Ok(image)
}

/// True when the ELF file has no program interpreter (statically linked).
fn is_static_elf(bytes: &[u8]) -> bool {
    let u16_at = |o: usize| {
        bytes
            .get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        bytes
            .get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    if bytes.get(..5) != Some(b"\x7fELF\x02") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    const PT_INTERP: u32 = 3;
    (0..phnum).all(|i| {
        let o = phoff as usize + i * phentsize;
        bytes
            .get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .is_some_and(|t| t != PT_INTERP)
    })
}

/// `vmatrace` linked statically (glibc, crt-static) so it runs in the bare initramfs.
pub fn build_static_vmatrace() -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let t = Instant::now();
    crate::util::run(
        cargo()
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "-p",
                "vmatrace",
                "--target",
                "x86_64-unknown-linux-gnu",
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
    )
    .context("building the static vmatrace for the guest")?;
    let bin = root.join("target/x86_64-unknown-linux-gnu/release/vmatrace");
    let bytes = fs::read(&bin).with_context(|| format!("reading {}", bin.display()))?;
    if !is_static_elf(&bytes) {
        bail!(
            "{} is not statically linked; the guest has no libraries",
            bin.display()
        );
    }
    eprintln!(
        "vm-test: static vmatrace ready in {:.1}s",
        t.elapsed().as_secs_f64()
    );
    Ok(bin)
}

pub const BUSYBOX: &str = "/bin/busybox";

/// Write the initramfs for `steps` into `path`.
pub fn build_initramfs(vmatrace: &Path, init: &str, path: &Path) -> anyhow::Result<()> {
    let busybox = fs::read(BUSYBOX).with_context(|| {
        format!("reading {BUSYBOX} (install busybox-static: cargo xtask setup)")
    })?;
    if !is_static_elf(&busybox) {
        bail!("{BUSYBOX} is not statically linked: install busybox-static, not busybox");
    }
    let bin = fs::read(vmatrace).with_context(|| format!("reading {}", vmatrace.display()))?;
    let img = initramfs::build(&busybox, &bin, init)?;
    if let Some(d) = path.parent() {
        fs::create_dir_all(d)?;
    }
    fs::write(path, img).with_context(|| format!("writing {}", path.display()))
}

/// Decide once per run whether KVM works; nested KVM boots fail with an emulation error,
/// which shows up as no "booted" report within a few seconds.
struct AccelChoice {
    tried_kvm: bool,
    accel: Accel,
}

impl AccelChoice {
    fn new() -> Self {
        let kvm = qemu::kvm_usable() && std::env::var_os("VMATRACE_NO_KVM").is_none();
        Self {
            tried_kvm: !kvm,
            accel: if kvm { Accel::Kvm } else { Accel::Tcg },
        }
    }
}

/// Boots after the first when the guest kernel dies for a reason outside vmatrace (before
/// /init, or on a text-patching int3): one retry was not enough in a clean-clone CI run,
/// where the retried RT guest died at boot too. Since the plans attach kprobes (a perf
/// event each, whose static keys are patched again at detach), the 7.3.4 cloud guest
/// oopsed on an int3 at ~40 s in 3 of ~8 boots, each time in a time-keeping function
/// (`sched_clock_cpu`, `ktime_get_mono_fast_ns`), never in a probed one: three retries.
const GUEST_RETRIES: u32 = 3;

/// Boots a kernel gets when the only failures are a widened race the kernel did not take
/// (`Verdict::only_races_missed`). The race needs the guest's writers to detach VMAs while
/// a delayed reader is inside: when the host is busy, TCG's vCPU threads starve the
/// writers (measured on 6.19 with one host core busy: 4x fewer writer operations; with
/// two, ~9x fewer and no slow detach in 8 s). The `killwait` step's kill inside a wait of
/// about a millisecond is such a race too. Another boot is a new draw; a kernel or tracer
/// that cannot show the event fails every one.
const RACE_ATTEMPTS: u32 = 2;

/// The first `Oops: int3` of a console log with the instruction pointer it names.
fn int3_oops(console: &str) -> Option<String> {
    let mut lines = console.lines().skip_while(|l| !l.contains("Oops: int3"));
    let oops = lines.next()?.trim();
    let rip = lines.take(8).find(|l| l.contains("RIP:")).map(str::trim);
    Some(match rip {
        Some(r) => format!("{oops}; {r}"),
        None => oops.to_string(),
    })
}

/// Why the guest died of something outside vmatrace, if it did: it never reached /init,
/// or its kernel oopsed on an int3 the text-patching handler no longer recognised.
fn death_outside_vmatrace(out: &qemu::Outcome) -> Option<String> {
    let console = fs::read(&out.console).unwrap_or_default();
    let console = String::from_utf8_lossy(&console);
    if out.boot_time.is_none() {
        // Seen in a few of many boots: the 7.3 RT kernel oopsed under TCG at 1.0–1.7 s
        // (int3 in sched_clock_cpu, hrtimer_start_range_ns: static-key patching), long
        // before /init.
        let why = console
            .lines()
            .find(|l| l.contains("Oops") || l.contains("Kernel panic"))
            .unwrap_or("no init report");
        return Some(format!("the guest died before /init ({})", why.trim()));
    }
    // The kernel was rewriting live code (ftrace sites and trampolines as programs attach
    // and detach, static keys, kprobes) and a vCPU still executed the temporary int3.
    // vmatrace only asks for attach and detach; the patching and the trap are the
    // kernel's and TCG's: the RT guest also does it at boot, before any vmatrace code
    // runs (above). Measured since the race step turns kprobe optimisation off: 2 of 11
    // runs of the RT guest (both at ~38 s: the race step's tracer detaching while the
    // widener still ran, since fixed by `RACE_TRACER_MARGIN_S`), 0 of ~11 on each other
    // kernel.
    int3_oops(&console)
        .map(|why| format!("the guest kernel oopsed on a text-patching int3 ({why})"))
        .or_else(|| {
            // Seen once (7.3.4 cloud, at the run step's detach of its kprobes): the page
            // fault handler's call into the probed `lock_vma_under_rcu` went to address
            // 0. A supervisor *instruction fetch* from a non-code address is the kernel
            // running half-patched code; BPF programs cannot make the kernel jump.
            instruction_fetch_oops(&console)
                .map(|why| format!("the guest kernel jumped to a non-code address ({why})"))
        })
}

/// The first oops whose fault was a supervisor-mode instruction fetch, with its RIP.
fn instruction_fetch_oops(console: &str) -> Option<String> {
    let mut lines = console
        .lines()
        .skip_while(|l| !l.contains("#PF: supervisor instruction fetch in kernel mode"));
    let first = lines.next()?.trim();
    let rip = lines.take(8).find(|l| l.contains("RIP:")).map(str::trim);
    Some(match rip {
        Some(r) => format!("{first}; {r}"),
        None => first.to_string(),
    })
}

/// Boot one kernel with the scenario; falls back from KVM to TCG on the first failure,
/// and boots again (up to [`GUEST_RETRIES`] times) when the guest died of something
/// outside vmatrace. The whole scenario runs again, so nothing is judged on a half run;
/// each retry is printed.
fn boot_with_fallback(
    choice: &mut AccelChoice,
    kernel: &Path,
    initrd: &Path,
    dir: &Path,
    steps: &[Step],
    metrics_port: Option<u16>,
) -> anyhow::Result<(qemu::Outcome, Accel, Option<faults::Report>)> {
    let inject = steps.iter().any(|s| s.check == scenario::Check::Faults);
    let timeout =
        Duration::from_secs(90 + steps.iter().map(|s| u64::from(s.timeout_s)).sum::<u64>());
    // A step exporting a file (a recorded trace) sends it through its virtio port.
    let ports: Vec<_> = steps
        .iter()
        .filter(|s| s.export.is_some())
        .map(|s| {
            (
                scenario::export_port(s.name),
                dir.join(scenario::export_on_host(s.name)),
            )
        })
        .collect();
    let mut extra = stream::port_args(&ports);
    if let Some(port) = metrics_port {
        if extra.is_empty() {
            extra.extend(["-device".to_string(), "virtio-serial-pci".to_string()]);
        }
        extra.extend(host_prometheus::qemu_args(port));
    }
    let mut retries = 0;
    loop {
        let accel = choice.accel;
        // With faults, QEMU's gdbstub listens and the injector waits for the faults step
        // in its own thread while QEMU runs.
        let gdb_port = if inject {
            Some(faults::free_port()?)
        } else {
            None
        };
        let mut extra = extra.clone();
        if let Some(port) = gdb_port {
            extra.extend(["-gdb".to_string(), format!("tcp:127.0.0.1:{port}")]);
        }
        let boot = qemu::Boot {
            kernel,
            initrd,
            dir,
            accel,
            timeout,
            boot_timeout: Duration::from_secs(if accel == Accel::Kvm { 20 } else { 90 }),
            memory_mb: 1024,
            cpus: 2,
            extra,
        };
        let qemu_gone = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let injector = gdb_port.map(|port| {
            let d = dir.to_path_buf();
            let deadline = Instant::now() + timeout;
            let gone = qemu_gone.clone();
            std::thread::spawn(move || faults::inject(port, &d, deadline, &gone))
        });
        let out = qemu::boot(&boot);
        qemu_gone.store(true, std::sync::atomic::Ordering::Relaxed);
        let out = out?;
        let report = injector.map(|h| {
            h.join().unwrap_or_else(|_| faults::Report {
                error: Some("the injector thread panicked".into()),
                ..Default::default()
            })
        });
        if accel == Accel::Kvm && !choice.tried_kvm {
            choice.tried_kvm = true;
            if out.boot_time.is_none() {
                println!(
                    "vm-test: KVM did not boot the guest (nested KVM?); using TCG from now on"
                );
                choice.accel = Accel::Tcg;
                continue;
            }
        }
        if retries < GUEST_RETRIES
            && let Some(why) = death_outside_vmatrace(&out)
        {
            retries += 1;
            // Kept for a post-mortem: the next boot overwrites the console.
            let _ = fs::copy(
                &out.console,
                dir.join(format!("console-oops-{retries}.log")),
            );
            println!("vm-test: {why}; booting it again");
            continue;
        }
        return Ok((out, accel, report));
    }
}

/// The host Prometheus' last scrape of each scraped step's tracer, judged against that
/// step's summary like the guest's own scrape.
fn host_scrape(
    p: &host_prometheus::HostPrometheus,
    window: Duration,
    steps: &[Step],
    res: &results::GuestResults,
    verdict: &mut verdict::Verdict,
) {
    let (ok, tried) = p.scrapes(window);
    for st in steps.iter().filter(|s| s.scrape.is_some()) {
        let Some(summary) = res
            .section(st.name)
            .and_then(|sec| results::json_of(st.name, &sec.body).ok())
        else {
            continue; // judged already: no summary
        };
        if ok == 0 {
            verdict.failures.push(format!(
                "{}: Prometheus on the host never scraped the guest ({tried} attempts; log {})",
                st.name,
                p.dir.join("prometheus.log").display()
            ));
            continue;
        }
        let text = p.last_values(host_prometheus::JUDGED, window);
        scrape::judge_from(
            st.name,
            &format!(
                "Prometheus on the host, {ok} of {tried} scrapes through the serial relay, last one"
            ),
            &text,
            &summary,
            verdict,
        );
    }
}

/// Run the matrix; prints a report per kernel and returns who passed.
pub fn matrix(args: &VmTestArgs) -> anyhow::Result<MatrixOutcome> {
    let t0 = Instant::now();
    let mut out = MatrixOutcome::default();
    let cache = cache_root();
    let builds = available_builds(&cache, args.offline);
    let targets = select(&builds, &args.kernels, &mut out);
    if targets.is_empty() {
        println!("vm-test: no kernel to boot");
        return Ok(out);
    }
    let vmatrace = build_static_vmatrace()?;
    let params = Params {
        duration: args.duration,
        readers: args.readers,
        writers: args.writers,
        faults: args.faults,
    };
    let steps = scenario::steps(&params);
    println!(
        "vm-test: scenario {}",
        steps.iter().map(|s| s.name).collect::<Vec<_>>().join(" → "),
    );
    let root = workspace_root();
    let initrd = root.join("target/vm/initrd.cpio");
    build_initramfs(&vmatrace, &scenario::init_script(&steps), &initrd)?;
    let mut accel = AccelChoice::new();
    for t in &targets {
        let name = format!("{} ({})", t.label, t.build.name);
        println!("\n=== vm-test {name}, Debian {}", t.build.version);
        let dir = root.join("target/vm-artifacts").join(&t.build.name);
        let guest = Guest {
            vmatrace: &vmatrace,
            initrd: &initrd,
            steps: &steps,
        };
        match run_one(&guest, &cache, t, &mut accel, &dir, args.keep_artifacts) {
            Ok(true) => out.passed.push(name),
            Ok(false) => out.failed.push(name),
            Err(e) => {
                println!("FAIL {name}: {e:#}");
                out.failed.push(name);
            }
        }
    }
    println!(
        "\nvm-test: {} passed, {} failed, {} skipped in {:.0}s",
        out.passed.len(),
        out.failed.len(),
        out.skipped.len(),
        t0.elapsed().as_secs_f64()
    );
    for f in &out.failed {
        println!("  FAILED {f} (artifacts under target/vm-artifacts)");
    }
    Ok(out)
}

/// What every guest of a matrix run boots with.
struct Guest<'a> {
    /// The static binary inside the image (also runs the host-side replay).
    vmatrace: &'a Path,
    initrd: &'a Path,
    steps: &'a [Step],
}

fn run_one(
    guest: &Guest<'_>,
    cache: &Path,
    t: &Target,
    accel: &mut AccelChoice,
    dir: &Path,
    keep: bool,
) -> anyhow::Result<bool> {
    let Guest {
        vmatrace,
        initrd,
        steps,
    } = *guest;
    let tk = Instant::now();
    let kernel = ensure_kernel(cache, &t.build)?;
    let fetch = tk.elapsed();
    // A real Prometheus scrapes the `run` step's tracer from the host. Its data goes
    // beside the artifacts (`<build>.prometheus`), which every boot attempt clears.
    let prometheus = if steps.iter().any(|s| s.scrape.is_some()) {
        let mut data = dir.as_os_str().to_owned();
        data.push(".prometheus");
        Some(host_prometheus::HostPrometheus::start(Path::new(&data))?)
    } else {
        None
    };
    let mut attempt = 1;
    let (o, used, res, mut verdict) = loop {
        let _ = fs::remove_dir_all(dir);
        let (o, used, fault_report) = boot_with_fallback(
            accel,
            &kernel,
            initrd,
            dir,
            steps,
            prometheus.as_ref().map(|p| p.target),
        )?;
        let ended = Instant::now();
        let raw = fs::read(&o.results).unwrap_or_default();
        let res = results::parse(&raw);
        let mut verdict = scenario::judge(steps, &res);
        if let Some(report) = &fault_report {
            let _ = fs::write(dir.join("faults.log"), report.log.join("\n"));
            let log = res
                .section(&format!("faults:{}", scenario::FAULTS_ANOMALY_LOG))
                .map(|s| s.body.as_str())
                .unwrap_or("");
            faults::judge(report, log, &mut verdict.info, &mut verdict.failures);
        }
        // Each recorded trace, replayed here, must give its step's live summary.
        for st in steps.iter().filter(|s| s.export.is_some()) {
            let Some(sec) = res.section(st.name) else {
                continue; // judged already: no output
            };
            let trace = dir.join(scenario::export_on_host(st.name));
            match results::json_of(st.name, &sec.body)
                .and_then(|live| replay_on_host(vmatrace, &trace, &live))
            {
                Ok(line) => verdict.info.push(format!("{}: {line}", st.name)),
                Err(e) => verdict.failures.push(format!("{}: {e}", st.name)),
            }
        }
        if let Some(p) = &prometheus {
            // Only this boot's scrapes: a boot retried after an oops ran another tracer.
            let window = o.elapsed + ended.elapsed() + Duration::from_secs(1);
            host_scrape(p, window, steps, &res, &mut verdict);
        }
        if attempt < RACE_ATTEMPTS && verdict.only_races_missed() && !o.timed_out {
            println!(
                "vm-test: {} (attempt {attempt} of {RACE_ATTEMPTS}; the race workload's lines: {}); \
                 booting it again",
                verdict.failures.join("; "),
                verdict
                    .info
                    .iter()
                    .filter(|l| l.starts_with("race workload"))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
            attempt += 1;
            continue;
        }
        break (o, used, res, verdict);
    };
    if o.timed_out {
        verdict.failures.push(format!(
            "guest killed after {:.0}s (timeout)",
            o.elapsed.as_secs_f64()
        ));
    }
    if let Some(st) = o.exit.filter(|st| !st.success()) {
        let log = fs::read_to_string(&o.qemu_log).unwrap_or_default();
        verdict
            .failures
            .push(format!("qemu exited with {st}: {}", log.trim()));
    }
    println!(
        "kernel {} booted in {} with {} (run {:.1}s, fetch {:.1}s)",
        res.booted.as_deref().unwrap_or("?"),
        o.boot_time
            .map(|b| format!("{:.1}s", b.as_secs_f64()))
            .unwrap_or_else(|| "—".into()),
        used.name(),
        o.elapsed.as_secs_f64(),
        fetch.as_secs_f64()
    );
    for l in &verdict.info {
        println!("  {l}");
    }
    for f in &verdict.failures {
        println!("  FAIL {f}");
    }
    let ok = verdict.failures.is_empty();
    if !ok {
        // The end of the console usually says why (panic, oops, init failure).
        let console = fs::read(&o.console).unwrap_or_default();
        let console = String::from_utf8_lossy(&console);
        let lines: Vec<&str> = console.lines().collect();
        println!("  console.log (last lines):");
        for l in &lines[lines.len().saturating_sub(15)..] {
            println!("    | {l}");
        }
    }
    let summary = serde_json::json!({
        "target": t.label,
        "kernel": t.build.name,
        "debian_version": t.build.version,
        "release": res.booted,
        "accel": used.name(),
        "boot_s": o.boot_time.map(|b| b.as_secs_f64()),
        "run_s": o.elapsed.as_secs_f64(),
        "passed": ok,
        "failures": verdict.failures,
        "info": verdict.info,
        "steps": res.sections.iter().map(|s| serde_json::json!({"name": s.name, "rc": s.rc})).collect::<Vec<_>>(),
    });
    fs::write(
        dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    if ok && !keep {
        let _ = fs::remove_dir_all(dir);
    } else {
        println!("  artifacts: {}", dir.display());
    }
    println!("{} {}", if ok { "PASS" } else { "FAIL" }, t.label);
    Ok(ok)
}

/// Replay the trace the guest recorded with the host's `vmatrace replay --json` (the same
/// static binary) and compare its summary with the guest's live one.
fn replay_on_host(
    vmatrace: &Path,
    trace: &Path,
    live: &serde_json::Value,
) -> Result<String, String> {
    let size = fs::metadata(trace).map(|m| m.len()).unwrap_or(0);
    if size == 0 {
        return Err(format!(
            "replay: no trace came back from the guest ({})",
            trace.display()
        ));
    }
    let t0 = Instant::now();
    let out = std::process::Command::new(vmatrace)
        .arg("replay")
        .arg(trace)
        .arg("--json")
        .output()
        .map_err(|e| format!("replay: cannot run {}: {e}", vmatrace.display()))?;
    if !out.status.success() {
        return Err(format!(
            "replay: `vmatrace replay {}` exited with {}: {}",
            trace.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let replayed = results::json_of("replay", &String::from_utf8_lossy(&out.stdout))?;
    checks::replay_matches(live, &replayed).map(|same| {
        format!(
            "replay on the host: {} of trace ({:.1} MB, {:.1}s), same {same} as live",
            replayed
                .pointer("/replay/complete")
                .and_then(serde_json::Value::as_bool)
                .map_or("?", |c| if c { "all" } else { "part" }),
            size as f64 / 1e6,
            t0.elapsed().as_secs_f64()
        )
    })
}

/// `cargo xtask vm-test`.
pub fn vm_test(args: &VmTestArgs) -> anyhow::Result<()> {
    crate::setup::setup()?;
    let out = matrix(args)?;
    if !out.failed.is_empty() {
        bail!("vm-test failed on: {}", out.failed.join(", "));
    }
    if out.passed.is_empty() {
        println!("vm-test: every kernel was skipped; nothing was tested");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{instruction_fetch_oops, int3_oops, is_static_elf};

    #[test]
    fn int3_oops_is_found_with_its_rip() {
        let log = "[1.0] ok\n[37.9] Oops: int3: 0000 [#1] SMP NOPTI\n[37.9] CPU: 0 UID: 0\n\
                   [37.9] Hardware name: QEMU\n[37.9] RIP: 0010:__vma_start_write+0x5/0xe0\n";
        assert_eq!(
            int3_oops(log).as_deref(),
            Some(
                "[37.9] Oops: int3: 0000 [#1] SMP NOPTI; [37.9] RIP: 0010:__vma_start_write+0x5/0xe0"
            )
        );
        assert_eq!(int3_oops("[1.0] Oops: general protection fault\n"), None);
        assert_eq!(int3_oops(""), None);
        let jump = "[24.81] BUG: kernel NULL pointer dereference, address: 0000000000000000\n\
                    [24.81] #PF: supervisor instruction fetch in kernel mode\n\
                    [24.81] #PF: error_code(0x0010) - not-present page\n\
                    [24.81] Oops: Oops: 0010 [#1] SMP NOPTI\n[24.81] RIP: 0010:0x0\n";
        assert_eq!(
            instruction_fetch_oops(jump).as_deref(),
            Some("[24.81] #PF: supervisor instruction fetch in kernel mode; [24.81] RIP: 0010:0x0")
        );
        // A data access through a bad pointer is not the kernel running patched code.
        assert_eq!(
            instruction_fetch_oops("[1.0] #PF: supervisor read access in kernel mode\n"),
            None
        );
    }

    #[test]
    fn static_elf_detection() {
        assert!(!is_static_elf(b"not an elf"));
        // This test binary is dynamically linked (it has PT_INTERP) unless built static.
        if let Ok(me) = std::env::current_exe().and_then(std::fs::read) {
            let has_interp = me.windows(b"ld-linux".len()).any(|w| w == b"ld-linux");
            assert_eq!(is_static_elf(&me), !has_interp);
        }
        if let Ok(bb) = std::fs::read(super::BUSYBOX) {
            assert!(is_static_elf(&bb), "Debian's busybox-static is static");
        }
    }
}
