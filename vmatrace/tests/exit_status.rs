//! Every exit status documented in docs/summary.md ("Exit status"), and every way a
//! session can be stopped, through the built binary (issue 14: signals, exit codes, a
//! panic reported as success).

mod common;

use std::{
    io::Write,
    process::{Child, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn summary(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON summary ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            stderr(out)
        )
    })
}

/// Send `sig` once the child has a handler for it (`SigCgt` in `/proc/PID/status`, up to
/// 10 s): on a loaded machine start-up can outlast any fixed sleep, and a signal that
/// came before the handler would kill it the default way.
fn signal(child: &Child, sig: i32) {
    let status = format!("/proc/{}/status", child.id());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        let caught = std::fs::read_to_string(&status).ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        });
        if caught.is_some_and(|mask| mask & (1 << (sig - 1)) != 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // SAFETY: kill sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn status_0_1_2_4_as_documented() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.vmatrace");
    write_sample(&good, false);
    let good = good.to_str().expect("utf8");
    // 0: finished.
    assert_eq!(run(&["replay", good, "--json"]).status.code(), Some(0));
    // 1: an unreadable input is an error, not a corrupt trace: a directory, a missing file.
    let out = run(&["replay", dir.path().to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("is a directory"), "{}", stderr(&out));
    assert_eq!(
        run(&["replay", "/nonexistent/trace"]).status.code(),
        Some(1)
    );
    // 2: bad command line, also for values clap parses but the command cannot use.
    for args in [
        &["simulate", "--threads", "0"][..],
        &["simulate", "--inject-rate", "2"],
        &["simulate", "--mms", "0"],
        &["replay", good, "--speed", "1e-30"],
        &["replay", good, "--speed", "nan"],
        &["replay", "--no-such-flag", good],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    }
    // 4: not a trace; header-level damage still prints the --json summary.
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"VMATRACE\x01\x00\x00\x00garbage garbage").expect("write");
    let out = run(&["replay", junk.to_str().expect("utf8"), "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["replay"]["records"], 0);
    assert!(s["replay"]["error"].is_string(), "{s}");
}

/// 3: cannot attach (not root here: deterministic on any host).
#[test]
fn status_3_without_privileges() {
    use std::os::unix::process::CommandExt;
    let mut cmd = bin();
    cmd.args(["run", "--headless", "--duration", "1"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // SAFETY: only async-signal-safe calls between fork and exec.
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
    let out = cmd.output().expect("runs");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("CAP_BPF"));
}

/// SIGINT, SIGTERM and SIGHUP stop `simulate` with its summary (it had no handler).
#[test]
fn simulate_stops_cleanly_on_every_signal() {
    for (sig, name) in [
        (libc::SIGINT, "SIGINT"),
        (libc::SIGTERM, "SIGTERM"),
        (libc::SIGHUP, "SIGHUP"),
    ] {
        let child = bin()
            .args(["simulate", "--threads", "2", "--duration", "60s", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(700));
        signal(&child, sig);
        let out = child.wait_with_output().expect("wait");
        let s = summary(&out);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}\nanomalies: {}, simulator checks: {}",
            stderr(&out),
            s["anomalies"],
            s["sim_checks"]
        );
        assert_eq!(s["stop_reason"], name);
        assert!(s["events_total"].as_u64().unwrap_or(0) > 0, "{s}");
        assert!(s["elapsed_s"].as_f64().unwrap_or(99.0) < 30.0, "{s}");
    }
}

/// `vmatrace … | head`: the reader of the summary went away. Ended as by SIGPIPE, not
/// reported as an internal error.
#[test]
fn a_closed_stdout_is_not_a_bug() {
    let mut child = bin()
        .args(["simulate", "--threads", "2", "--ops", "2000", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(141), "{}", stderr(&out));
    assert!(!stderr(&out).contains("internal error"), "{}", stderr(&out));
}

/// The terminal went away while a headless session ran (an ssh connection dropped
/// without a SIGHUP reaching it): the summary has nowhere to go, which is not a bug:
/// exit status 0, not a panic on EIO.
#[test]
fn a_terminal_gone_before_the_summary_is_not_a_bug() {
    use std::os::fd::{FromRawFd, OwnedFd};
    // SAFETY: plain libc calls on descriptors this test owns. Close-on-exec: a master
    // inherited by the child would keep the terminal up.
    let (master, slave) = unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0, "posix_openpt: {}", std::io::Error::last_os_error());
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let name = std::ffi::CStr::from_ptr(libc::ptsname(m)).to_owned();
        let s = libc::open(
            name.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        );
        assert!(s >= 0, "open {name:?}: {}", std::io::Error::last_os_error());
        (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s))
    };
    let mut child = bin()
        .args(["simulate", "--threads", "2", "--duration", "2", "--json"])
        .stdin(Stdio::null())
        .stdout(slave.try_clone().expect("dup"))
        .stderr(slave)
        .spawn()
        .expect("spawn");
    drop(master); // the terminal hangs up while the simulation runs
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// A followed stream that never starts (a VM still booting): a signal ends it with a
/// summary, not silence.
#[test]
fn follow_stopped_before_the_trace_starts_still_summarises() {
    let mut child = bin()
        .args(["replay", "--follow", "--json", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(b"[    0.000000] Linux version 7.3 booting...\n")
        .expect("feed");
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().expect("wait");
    drop(input);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["stop_reason"], "SIGTERM");
    assert_eq!(s["replay"]["records"], 0);
    assert!(stderr(&out).contains("stopped before the trace started"));
}

/// SIGINT on a FIFO that stays open: the reader is blocked in read(2), the summary still
/// counts what it read (it said `records: 0`).
#[test]
fn a_blocked_reader_still_reports_what_it_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = dir.path().join("full.vmatrace");
    write_sample(&full, false);
    let bytes = std::fs::read(&full).expect("read");
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().expect("utf8")).expect("cstr");
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let child = bin()
        .args(["replay", "--follow", "--json", fifo.to_str().expect("utf8")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .expect("open fifo");
    // Everything but the end record; the writer stays open.
    w.write_all(&bytes[..bytes.len() - END_RECORD_LEN])
        .expect("feed");
    std::thread::sleep(Duration::from_millis(700));
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().expect("wait");
    drop(w);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["stop_reason"], "SIGINT");
    assert_eq!(s["events"]["total"], 400);
    assert_eq!(s["replay"]["events"], 400, "{s}");
    assert!(s["replay"]["records"].as_u64().unwrap_or(0) >= 100, "{s}");
}

/// SIGHUP: with an anomaly log it reopens the log (an outside tool rotated it) and goes
/// on; without one it stops like SIGTERM. It never kills the process.
#[test]
fn sighup_reopens_the_anomaly_log_or_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = dir.path().join("full.vmatrace");
    write_sample(&full, false);
    let bytes = std::fs::read(&full).expect("read");
    let partial = dir.path().join("partial.vmatrace");
    std::fs::write(&partial, &bytes[..bytes.len() - END_RECORD_LEN]).expect("write");
    let log = dir.path().join("a.jsonl");
    let child = bin()
        .args(["replay", "--follow", "--json", "--anomaly-log"])
        .arg(&log)
        .arg(&partial)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(700));
    assert!(log.exists(), "the log is open");
    let rotated = dir.path().join("a.jsonl.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    signal(&child, libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(700));
    assert!(log.exists(), "SIGHUP reopened the log at its path");
    signal(&child, libc::SIGINT);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(summary(&out)["stop_reason"], "SIGINT");

    let child = bin()
        .args(["replay", "--follow", "--json"])
        .arg(&partial)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(700));
    signal(&child, libc::SIGHUP);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = summary(&out);
    assert_eq!(s["stop_reason"], "SIGHUP");
    assert_eq!(s["events"]["total"], 400);
}
