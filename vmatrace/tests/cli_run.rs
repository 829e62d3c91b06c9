//! `vmatrace run` / `record` through the built binary: privilege and attach errors.

mod common;

use std::{os::unix::process::CommandExt, path::Path};

use common::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The binary as an unprivileged user: drop to nobody when the tests run as root.
fn unprivileged(args: &[&str]) -> std::process::Output {
    let mut cmd = bin();
    cmd.args(args);
    if is_root() {
        // SAFETY: setgroups/setgid/setuid are async-signal-safe and touch only the
        // child between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    cmd.output().expect("the vmatrace binary runs")
}

#[test]
fn run_without_privileges_exits_3_and_says_why() {
    for sub in ["run", "record"] {
        let mut args = vec![sub, "--headless", "--duration", "1"];
        if sub == "record" {
            args = vec![sub, "-o", "/dev/null", "--duration", "1"];
        }
        let out = unprivileged(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{sub}: {err}");
        assert!(
            err.contains("needs root, or CAP_BPF and CAP_PERFMON"),
            "{err}"
        );
        assert!(err.contains("setcap cap_bpf,cap_perfmon+ep"), "{err}");
        assert!(err.contains("vmatrace replay FILE"), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_record_that_cannot_start_leaves_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.vmatrace");
    let out = unprivileged(&[
        "record",
        "-o",
        path.to_str().expect("utf8"),
        "--duration",
        "1",
    ]);
    // As nobody the temp dir is not writable (exit 1) or, when it is, privileges fail
    // (exit 3); either way no empty trace is left behind.
    assert!(matches!(out.status.code(), Some(1 | 3)), "{out:?}");
    assert!(!path.exists(), "an empty trace was left behind");
    if is_root() {
        let out = run(&[
            "record",
            "-o",
            path.to_str().expect("utf8"),
            "--duration",
            "1",
        ]);
        if out.status.code() == Some(3) {
            assert!(!path.exists(), "an empty trace was left behind");
        } else {
            vmatrace::testing::skip(
                "a_record_that_cannot_start_leaves_no_file",
                "this kernel can attach: record started",
            );
        }
    }
}

#[test]
fn run_as_root_attaches_or_explains_exit_3() {
    if !is_root() {
        vmatrace::testing::skip("run_as_root_attaches_or_explains_exit_3", "not root");
        return;
    }
    let out = run(&["run", "--headless", "--duration", "1", "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(3) => {
            // A host that cannot attach (this project's build machines: no kprobe PMU,
            // tracing programs refused): the message names what is missing.
            assert!(err.contains("cannot trace on this machine"), "{err}");
            assert!(err.contains("cargo xtask run --vm"), "{err}");
            if !Path::new("/sys/bus/event_source/devices/kprobe").exists() {
                assert!(err.contains("no kprobe PMU"), "{err}");
            }
            assert!(out.stdout.is_empty());
        }
        Some(0) => {
            // A kernel that can attach: a summary with at least one function hook.
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("summary");
            assert_eq!(s["mode"], "run");
            assert!(s["plan"]["hooks_attached"].as_u64().unwrap_or(0) > 0, "{s}");
            assert_eq!(s["stop_reason"], "duration");
        }
        other => panic!("unexpected exit {other:?}: {err}"),
    }
}

#[test]
fn record_output_errors_come_first() {
    let out = run(&[
        "record",
        "-o",
        "/nonexistent-dir/t.vmatrace",
        "--duration",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot create the trace /nonexistent-dir/t.vmatrace"),
        "{err}"
    );
}

#[test]
fn help_is_precise() {
    let out = run(&["run", "--help"]);
    assert!(out.status.success());
    let h = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--pid",
        "--comm",
        "--cgroup",
        "--anomaly-log",
        "--raw-addresses",
        "--duration",
        "--json",
        "--reader-sample",
        "--headless",
        "lock_vma_under_rcu",
        "KASLR",
    ] {
        assert!(h.contains(needle), "{needle} missing from run --help:\n{h}");
    }
    let out = run(&["record", "--help"]);
    let h = String::from_utf8_lossy(&out.stdout);
    assert!(
        h.contains("--compress") && h.contains("-o, --output"),
        "{h}"
    );
    let out = run(&["replay", "--help"]);
    let h = String::from_utf8_lossy(&out.stdout);
    assert!(h.contains("--follow") && h.contains("--speed"), "{h}");
}
