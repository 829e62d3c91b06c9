//! `cargo xtask run --vm`: live tracing of a real kernel where the host cannot attach.
//!
//! The newest Debian cloud kernel boots in QEMU with the workload. In the guest,
//! `vmatrace record -o -` writes the event stream to ttyS1 (raw mode, binary-safe); QEMU
//! connects ttyS1 to its stdout (`-serial stdio`), which is piped straight into the
//! host's `vmatrace replay --follow -` (dashboard, or headless summary). The console
//! (ttyS0) goes to a log file so kernel messages never mix into the stream.
//!
//! While `record`/`replay --follow` are missing from vmatrace, the guest falls back to
//! `run --headless --json`, or to the plan and the workload's report, and the host prints
//! that text as it arrives.

use std::{
    fs,
    io::{self, Read, Write},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    kernels::{self, KernelBuild},
    qemu::{self, Accel},
    scenario::{self, Capabilities},
};
use crate::util::workspace_root;

/// Default guest run time when `--duration` is not among the arguments.
const DEFAULT_DURATION: u32 = 30;

/// `--duration N` from the arguments meant for vmatrace, if any.
pub fn duration_arg(args: &[String]) -> Option<u32> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--duration" {
            return it.next()?.parse::<f64>().ok().map(|d| d.ceil() as u32);
        }
        if let Some(v) = a.strip_prefix("--duration=") {
            return v.parse::<f64>().ok().map(|d| d.ceil() as u32);
        }
    }
    None
}

/// What the guest runs: the workload in the background, and the producer of the stream
/// on fd 3 (ttyS1).
pub fn stream_init(caps: Capabilities, duration: u32) -> String {
    let mut s = String::from(scenario::GUEST_PRELUDE);
    let stress = format!("vmatrace stress --duration {duration} --forks");
    let producer = duration + 3;
    if caps.record || caps.run {
        // The tracer first, then the workload after it has had time to attach.
        s.push_str(&format!("(sleep 3; exec {stress}) >/dev/console 2>&1 &\n"));
        if caps.record {
            s.push_str(&format!(
                "vmatrace record -o - --duration {producer} >&3 2>/dev/console\n"
            ));
        } else {
            s.push_str(&format!(
                "vmatrace run --headless --json --duration {producer} >&3 2>/dev/console\n"
            ));
        }
        s.push_str("wait\n");
    } else {
        if caps.probes {
            s.push_str("vmatrace probes >&3 2>&1\n");
        }
        s.push_str(&format!("{stress} >&3 2>&1\n"));
    }
    s.push_str("exec 3>&-\nsync\npoweroff -f\n");
    s
}

/// The newest cloud build in the index.
fn newest_cloud(builds: &[KernelBuild]) -> Option<&KernelBuild> {
    kernels::MATRIX
        .iter()
        .filter(|g| g.flavour == "cloud-amd64")
        .filter_map(|g| kernels::newest(builds, g))
        .max_by(|a, b| super::debver::compare(&a.version, &b.version))
}

fn host_follows(vmatrace: &Path) -> bool {
    Command::new(vmatrace)
        .args(["replay", "--help"])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--follow")
        })
}

pub fn run_vm(args: &[String]) -> anyhow::Result<()> {
    let cache = super::cache_root();
    let builds = super::available_builds(&cache, false);
    let Some(build) = newest_cloud(&builds).cloned() else {
        bail!(
            "no Debian cloud kernel in the apt index or in {}",
            cache.display()
        );
    };
    let kernel = super::ensure_kernel(&cache, &build)?;
    let vmatrace = super::build_static_vmatrace()?;
    let caps = super::capabilities(&vmatrace)?;
    let duration = duration_arg(args).unwrap_or(DEFAULT_DURATION);
    let root = workspace_root();
    let initrd = root.join("target/vm/stream-initrd.cpio");
    super::build_initramfs(&vmatrace, &stream_init(caps, duration), &initrd)?;
    let dir = root.join("target/vm-artifacts/run-vm");
    fs::create_dir_all(&dir)?;
    let console = dir.join("console.log");
    let follow = caps.record && host_follows(&vmatrace);
    eprintln!(
        "xtask run --vm: Debian {} ({}) in QEMU for {duration}s; guest console: {}",
        build.name,
        build.version,
        console.display()
    );
    eprintln!(
        "xtask run --vm: {}",
        if follow {
            "guest `vmatrace record -o -` → ttyS1 → host `vmatrace replay --follow -`"
        } else if caps.run {
            "guest `vmatrace run --headless --json` → ttyS1 → here (record/replay --follow not available yet)"
        } else {
            "guest plan + workload report → ttyS1 → here (vmatrace has no run/record yet)"
        }
    );
    // KVM does not work nested on the CI machines; an env var opts in where it does.
    let accel = if std::env::var_os("VMATRACE_KVM").is_some() && qemu::kvm_usable() {
        Accel::Kvm
    } else {
        Accel::Tcg
    };
    let boot = qemu::Boot {
        kernel: &kernel,
        initrd: &initrd,
        dir: &dir,
        accel,
        timeout: Duration::from_secs(u64::from(duration) + 180),
        boot_timeout: Duration::from_secs(90),
        memory_mb: 1024,
        cpus: 2,
    };
    let mut qemu = qemu::command(&boot, &format!("file:{}", console.display()), "stdio")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let stream = qemu.stdout.take().context("qemu stdout")?;
    let t0 = Instant::now();
    let consumer_ok = if follow {
        let status = Command::new(&vmatrace)
            .args(["replay", "--follow", "-"])
            .args(args)
            .stdin(Stdio::from(stream))
            .status()
            .context("starting vmatrace replay --follow -")?;
        status.success()
    } else {
        copy_text(stream)?;
        true
    };
    // The stream ends when the guest powers off; make sure QEMU is gone either way.
    let deadline = Instant::now() + Duration::from_secs(15);
    let qemu_status = loop {
        if let Some(st) = qemu.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline || t0.elapsed() > boot.timeout {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "xtask run --vm: guest ran {:.0}s; QEMU {}",
        t0.elapsed().as_secs_f64(),
        qemu_status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "killed (did not power off)".into())
    );
    if !consumer_ok {
        bail!(
            "vmatrace replay --follow failed (guest console: {})",
            console.display()
        );
    }
    Ok(())
}

/// Print the guest's text stream as it arrives.
fn copy_text(mut from: impl Read) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let mut buf = [0u8; 4096];
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        // Raw mode on the guest side: no \r to strip, but be tolerant if stty failed.
        let text: Vec<u8> = buf[..n].iter().copied().filter(|b| *b != b'\r').collect();
        out.write_all(&text)?;
        out.flush()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_duration_from_args() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            duration_arg(&a(&["--headless", "--duration", "12"])),
            Some(12)
        );
        assert_eq!(duration_arg(&a(&["--duration=2.5"])), Some(3));
        assert_eq!(duration_arg(&a(&["--duration"])), None);
        assert_eq!(duration_arg(&a(&["--json"])), None);
    }

    #[test]
    fn stream_init_picks_the_producer() {
        let rec = Capabilities {
            probes: true,
            stress: true,
            run: true,
            record: true,
        };
        let s = stream_init(rec, 10);
        assert!(s.contains("vmatrace record -o - --duration 13 >&3"), "{s}");
        assert!(s.contains("vmatrace stress --duration 10 --forks"));
        let run = stream_init(
            Capabilities {
                record: false,
                ..rec
            },
            10,
        );
        assert!(
            run.contains("vmatrace run --headless --json --duration 13 >&3"),
            "{run}"
        );
        let none = stream_init(
            Capabilities {
                probes: true,
                stress: true,
                ..Default::default()
            },
            5,
        );
        assert!(
            none.contains("vmatrace probes >&3") && none.contains("--duration 5 --forks >&3"),
            "{none}"
        );
        assert!(none.ends_with("poweroff -f\n"));
    }
}
