//! `cargo xtask run --vm`: live tracing of a real kernel where the host cannot attach.
//!
//! The newest Debian cloud kernel boots in QEMU with the workload. In the guest,
//! `vmatrace record -o -` writes the event stream to a virtio serial port
//! (`vmatrace.events`); QEMU writes that port to its stdout, which is piped straight into
//! the host's `vmatrace replay --follow -` (dashboard, or headless summary). The console
//! (ttyS0) goes to a log file so kernel messages never mix into the stream.
//!
//! Why virtio and not the second UART: measured under TCG, the 16550 emulation moves about
//! 115 KB/s (4 MiB in 36 s) while the virtio port moved 4 MiB in under a second; an event
//! is 128 bytes, so a UART would throttle `record` to under 1000 events/s. The guest falls
//! back to ttyS1 if the port is missing (a kernel without `virtio_console`).
//!
//! The guest's binary is built from the same commit as the host's, so both have every
//! subcommand: no capability probing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use super::{
    kernels::{self, KernelBuild},
    qemu::{self, Accel},
    scenario::{self, READY, READY_TIMEOUT_S},
};
use crate::util::workspace_root;

/// Name of the virtio serial port carrying the stream.
pub const PORT_NAME: &str = "vmatrace.events";

/// QEMU arguments for the event port, written to `path` on the host (`/dev/stdout` to pipe
/// it on).
pub fn event_port_args(path: &Path) -> Vec<String> {
    port_args(&[(PORT_NAME.to_string(), path.to_path_buf())])
}

/// QEMU arguments for virtio serial ports on one controller: `(port name, host file)`;
/// none (no controller either) without ports.
pub fn port_args(ports: &[(String, std::path::PathBuf)]) -> Vec<String> {
    if ports.is_empty() {
        return Vec::new();
    }
    let mut v = vec!["-device".into(), "virtio-serial-pci".into()];
    for (i, (name, path)) in ports.iter().enumerate() {
        v.push("-chardev".into());
        v.push(format!("file,id=port{i},path={}", path.display()));
        v.push("-device".into());
        v.push(format!("virtserialport,chardev=port{i},name={name}"));
    }
    v
}

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

/// What the guest runs: the tracer (`record -o -` on fd 3, ttyS1 or the virtio port),
/// then the workload once the tracer is attached (seconds under TCG).
pub fn stream_init(duration: u32, compress: bool) -> String {
    let mut s = String::from(scenario::GUEST_PRELUDE);
    s.push_str("EV=/dev/ttyS1\n");
    s.push_str(&super::guest_shell::find_port_sh("EV", PORT_NAME));
    s.push_str("echo \"vm: event stream on $EV\"\nexec 3>$EV\n");
    let stress = format!("vmatrace stress --duration {duration} --forks");
    let producer = duration + 4;
    let z = if compress { " --compress" } else { "" };
    s.push_str(&format!(
        "vmatrace record -o -{z} --duration {producer} >&3 2>/tmp/tracer.err & TP=$!\n"
    ));
    s.push_str(&format!(
        "i=0; while [ $i -lt {READY_TIMEOUT_S} ] && kill -0 $TP 2>/dev/null && ! grep -q '{READY}' /tmp/tracer.err; do sleep 1; i=$((i+1)); done\n"
    ));
    s.push_str("cat /tmp/tracer.err\n");
    s.push_str(&format!("{stress} 2>&1\n"));
    s.push_str("wait $TP\ncat /tmp/tracer.err\n");
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

/// Where the guest's stream goes.
pub enum Sink {
    /// Into `vmatrace replay --follow -` with these arguments (or printed, before record).
    Follow(Vec<String>),
    /// Into a trace file (`cargo xtask vm-record`).
    File(PathBuf),
}

/// The arguments without `--duration N`: it sets the guest's run time; the host's replay
/// must read the stream to its end, or the guest blocks on a full port and never powers off.
pub fn without_duration(args: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--duration" {
            it.next();
        } else if !a.starts_with("--duration=") {
            out.push(a.clone());
        }
    }
    out
}

/// `cargo xtask run --vm [-- ARGS]`.
pub fn run_vm(args: &[String]) -> anyhow::Result<()> {
    let duration = duration_arg(args).unwrap_or(DEFAULT_DURATION);
    stream(None, duration, Sink::Follow(without_duration(args)))
}

/// Boot `kernel` (a generation or build name; default: the newest cloud build) with the
/// workload and send the guest's stream to `sink`.
pub fn stream(kernel: Option<&str>, duration: u32, sink: Sink) -> anyhow::Result<()> {
    let cache = super::cache_root();
    let builds = super::available_builds(&cache, false);
    let build = match kernel {
        None => newest_cloud(&builds).cloned(),
        Some(spec) => {
            let mut out = super::MatrixOutcome::default();
            super::select(&builds, &[spec.to_string()], &mut out)
                .into_iter()
                .next()
                .map(|t| t.build)
        }
    };
    let Some(build) = build else {
        bail!(
            "no matching Debian kernel in the apt index or in {}",
            cache.display()
        );
    };
    let kernel = super::ensure_kernel(&cache, &build)?;
    let vmatrace = super::build_static_vmatrace()?;
    let root = workspace_root();
    let initrd = root.join("target/vm/stream-initrd.cpio");
    super::build_initramfs(
        &vmatrace,
        &stream_init(duration, matches!(sink, Sink::File(_))),
        &initrd,
    )?;
    let dir = root.join("target/vm-artifacts/run-vm");
    fs::create_dir_all(&dir)?;
    let console = dir.join("console.log");
    eprintln!(
        "xtask: Debian {} ({}) in QEMU for {duration}s; guest console: {}",
        build.name,
        build.version,
        console.display()
    );
    eprintln!(
        "xtask: {}",
        match &sink {
            Sink::File(p) => format!(
                "guest `vmatrace record -o -` → virtio port → {}",
                p.display()
            ),
            Sink::Follow(_) =>
                "guest `vmatrace record -o -` → virtio port → host `vmatrace replay --follow -`"
                    .into(),
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
        extra: Vec::new(),
    };
    let out_path = match &sink {
        Sink::File(p) => p.clone(),
        Sink::Follow(_) => PathBuf::from("/dev/stdout"),
    };
    let mut qemu = qemu::command(&boot, &format!("file:{}", console.display()), "null");
    let mut qemu = qemu
        .args(event_port_args(&out_path))
        .stdin(Stdio::null())
        .stdout(if matches!(sink, Sink::File(_)) {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let t0 = Instant::now();
    let consumer_ok = match (&sink, qemu.stdout.take()) {
        (Sink::Follow(args), Some(stream)) => Command::new(&vmatrace)
            .args(["replay", "--follow", "-"])
            .args(args)
            .stdin(Stdio::from(stream))
            .status()
            .context("starting vmatrace replay --follow -")?
            .success(),
        _ => true,
    };
    // The stream ends when the guest powers off; make sure QEMU is gone either way.
    let mut deadline = Instant::now() + Duration::from_secs(15);
    if matches!(sink, Sink::File(_)) {
        deadline = t0 + boot.timeout;
    }
    let qemu_status = loop {
        if let Some(st) = qemu.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "xtask: guest ran {:.0}s; QEMU {}",
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
    if let Sink::File(p) = &sink {
        let len = fs::metadata(p).map(|m| m.len()).unwrap_or(0);
        if qemu_status.is_none() || len == 0 {
            bail!(
                "recording incomplete ({len} bytes in {}); guest console: {}",
                p.display(),
                console.display()
            );
        }
        eprintln!("xtask: wrote {} ({len} bytes)", p.display());
    }
    Ok(())
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
        assert_eq!(
            without_duration(&a(&[
                "--headless",
                "--duration",
                "4",
                "--json",
                "--duration=2"
            ])),
            a(&["--headless", "--json"])
        );
    }

    #[test]
    fn stream_init_starts_the_workload_once_the_recorder_is_attached() {
        let s = stream_init(10, false);
        assert!(
            s.contains("vmatrace record -o - --duration 14 >&3 2>/tmp/tracer.err & TP=$!"),
            "{s}"
        );
        assert!(
            s.find("grep -q 'tracing kernel'") < s.find("vmatrace stress"),
            "{s}"
        );
        assert!(s.contains("vmatrace stress --duration 10 --forks"));
        assert!(stream_init(10, true).contains("record -o - --compress --duration 14"));
        assert!(s.ends_with("poweroff -f\n"));
    }
}
