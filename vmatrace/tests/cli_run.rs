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
        err.contains("-o /nonexistent-dir/t.vmatrace: no directory /nonexistent-dir"),
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

/// Files in `dir`, sorted (to see that nothing was created or left behind).
fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Issue 14.1: a `record` that fails (here: nothing attaches, exit 3; or refused) must not
/// remove, truncate or create anything the user had or did not ask for.
#[test]
fn a_failed_record_never_costs_the_user_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sample =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/sample-7.3.4-cloud.vmatrace");
    let precious = std::fs::read(&sample).expect("sample trace");
    let old = dir.path().join("x.vmatrace");
    std::fs::write(&old, &precious).expect("copy");
    let link = dir.path().join("link.vmatrace");
    std::os::unix::fs::symlink(&old, &link).expect("symlink");
    let s = |p: &Path| p.to_str().expect("utf8").to_string();

    // Existing file or a link to one: refused without --force, untouched.
    for target in [&old, &link] {
        let out = run(&["record", "-o", &s(target), "--duration", "1"]);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("refusing to overwrite"));
        assert_eq!(std::fs::read(&old).expect("read"), precious);
    }
    assert!(
        std::fs::symlink_metadata(&link)
            .expect("link")
            .file_type()
            .is_symlink()
    );

    // --force: replaced only by a complete recording; a failed one leaves it as it was.
    let out = run(&["record", "-o", &s(&old), "--force", "--duration", "1"]);
    let after = std::fs::read(&old).expect("still there");
    match out.status.code() {
        Some(3) => assert_eq!(after, precious, "a failed --force record changed the file"),
        Some(0) => assert!(after.starts_with(b"VMATRACE") || after != precious),
        other => panic!(
            "unexpected exit {other:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
    let attaches = out.status.code() == Some(0);

    // A new path: created only once tracing starts.
    let new = dir.path().join("new.vmatrace");
    let out = run(&["record", "-o", &s(&new), "--duration", "1"]);
    if !attaches {
        assert_eq!(out.status.code(), Some(3));
        assert!(
            !new.exists(),
            "a record that never started created its output"
        );
    }
    assert_eq!(
        listing(dir.path()),
        if attaches {
            vec!["link.vmatrace", "new.vmatrace", "x.vmatrace"]
        } else {
            vec!["link.vmatrace", "x.vmatrace"]
        },
        "no temporary file is left behind"
    );

    // A FIFO (like a device or a serial port) is written as it is, never removed. The
    // test holds it open read-write so an attaching host does not block on open.
    let fifo = dir.path().join("pipe");
    let c = std::ffi::CString::new(s(&fifo)).expect("cstr");
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let _hold = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("hold");
    let out = run(&["record", "-o", &s(&fifo), "--duration", "1"]);
    assert!(
        matches!(out.status.code(), Some(0 | 3)),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::symlink_metadata(&fifo)
            .expect("fifo still there")
            .file_type()
            .is_fifo()
    );

    // Unprivileged: refused before anything is created.
    let mine = dir.path().join("mine.vmatrace");
    let out = unprivileged(&["record", "-o", &s(&mine), "--duration", "1"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(!mine.exists());
}
