//! Booting a kernel in QEMU: console on ttyS0, results on ttyS1 (both to files), a hard
//! timeout, and KVM when it works (nested KVM fails on the CI machines: "emulation
//! failure" during boot) with TCG as the fallback.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context;

use super::results::{self, MARK};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// Where console.log, results.log and qemu.log go.
    pub dir: &'a Path,
    pub accel: Accel,
    /// Kill the guest after this long.
    pub timeout: Duration,
    /// Give up (and report `booted: false`) when init has not reported within this long.
    pub boot_timeout: Duration,
    pub memory_mb: u32,
    pub cpus: u32,
    /// Further QEMU arguments (e.g. the virtio port a trace file comes back through).
    pub extra: Vec<String>,
}

#[derive(Debug)]
pub struct Outcome {
    pub console: PathBuf,
    pub results: PathBuf,
    pub qemu_log: PathBuf,
    pub elapsed: Duration,
    /// Time until init reported on ttyS1.
    pub boot_time: Option<Duration>,
    pub timed_out: bool,
    /// QEMU's own exit status (None when we killed it).
    pub exit: Option<std::process::ExitStatus>,
}

pub fn kvm_usable() -> bool {
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

pub fn command(b: &Boot<'_>, console: &str, second_serial: &str) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    match b.accel {
        Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
        Accel::Tcg => c.args(["-accel", "tcg", "-cpu", "max"]),
    };
    c.args(["-m", &b.memory_mb.to_string(), "-smp", &b.cpus.to_string()])
        .args([
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-monitor",
            "none",
        ])
        .arg("-kernel")
        .arg(b.kernel)
        .arg("-initrd")
        .arg(b.initrd)
        // panic=-1: a panic reboots at once, and -no-reboot turns that into an exit.
        // no_timer_check: on a loaded host the TCG guest's IO-APIC timer check can fail
        // ("IO-APIC + timer doesn't work!", a panic at 0.05 s); the timer itself works.
        // Not tsc=reliable: tried, because on a loaded host the clocksource watchdog once
        // marked TCG's TSC unstable mid-run and the sched_clock static-key patch oopsed the
        // RT guest (int3). It did not help: the RT guest oopsed the same way at boot
        // (~1–1.7 s, static-key patching) with it and without it, in about 1 of 5 boots
        // lately; `vm::death_outside_vmatrace` boots such a guest again.
        .args([
            "-append",
            "console=ttyS0 quiet panic=-1 oops=panic no_timer_check",
        ])
        .args(["-serial", console, "-serial", second_serial]);
    c
}

fn booted(results: &Path) -> bool {
    fs::read(results).is_ok_and(|r| String::from_utf8_lossy(&r).contains(&format!("{MARK}booted")))
}

fn done(results: &Path) -> bool {
    fs::read(results).is_ok_and(|r| results::parse(&r).done)
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub fn boot(b: &Boot<'_>) -> anyhow::Result<Outcome> {
    fs::create_dir_all(b.dir).with_context(|| format!("creating {}", b.dir.display()))?;
    let console = b.dir.join("console.log");
    let results = b.dir.join("results.log");
    let qemu_log = b.dir.join("qemu.log");
    for p in [&console, &results] {
        let _ = fs::remove_file(p);
    }
    let log = fs::File::create(&qemu_log)?;
    let mut child = command(
        b,
        &format!("file:{}", console.display()),
        &format!("file:{}", results.display()),
    )
    .args(&b.extra)
    .stdin(Stdio::null())
    .stdout(log.try_clone()?)
    .stderr(log)
    .spawn()
    .context("starting qemu-system-x86_64 (install qemu-system-x86: cargo xtask setup)")?;
    let t0 = Instant::now();
    let mut boot_time = None;
    let mut done_at = None;
    loop {
        if let Some(status) = child.try_wait()? {
            if boot_time.is_none() && booted(&results) {
                boot_time = Some(t0.elapsed());
            }
            return Ok(Outcome {
                console,
                results,
                qemu_log,
                elapsed: t0.elapsed(),
                boot_time,
                timed_out: false,
                exit: Some(status),
            });
        }
        let now = t0.elapsed();
        if boot_time.is_none() && booted(&results) {
            boot_time = Some(now);
        }
        // After the scenario is done, poweroff should end QEMU within moments.
        if done_at.is_none() && boot_time.is_some() && done(&results) {
            done_at = Some(now);
        }
        let hung_after_done = done_at.is_some_and(|d| now > d + Duration::from_secs(15));
        let no_boot = boot_time.is_none() && now > b.boot_timeout;
        if now > b.timeout || no_boot || hung_after_done {
            kill(&mut child);
            return Ok(Outcome {
                console,
                results,
                qemu_log,
                elapsed: now,
                boot_time,
                timed_out: !hung_after_done,
                exit: None,
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
