//! `vmatrace replay` through the built binary: summaries, errors, exit codes.

mod common;

use std::{
    io::Write,
    process::{Command, Stdio},
    time::Duration,
};

use common::*;
use serde_json::Value;

fn json_summary(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn replay_summarises_a_synthetic_trace() {
    let dir = tempfile::tempdir().expect("tempdir");
    for compress in [false, true] {
        let path = dir.path().join(format!("t{compress}.vmatrace"));
        write_sample(&path, compress);
        let s = json_summary(&run(&["replay", path.to_str().expect("utf8"), "--json"]));
        assert_eq!(s["mode"], "replay");
        assert_eq!(s["kernel"], "7.2.13+deb14-cloud-amd64");
        assert_eq!(s["generation"], "7.0");
        assert_eq!(s["events"]["total"], 400);
        assert_eq!(s["events"]["by_kind"]["exclude_exit"], 100);
        assert_eq!(s["events"]["by_kind"]["vma_free"], 0);
        assert_eq!(
            s["events"]["by_logical_event"]["write_lock_request"]["count"],
            100
        );
        assert_eq!(
            s["events"]["by_logical_event"]["reader_acquire"]["count"],
            500
        );
        assert_eq!(s["losses"]["kernel"]["ringbuf_reserve_failed"], 3);
        assert_eq!(s["losses"]["undecodable"], 1);
        assert_eq!(s["losses"]["total"], 4);
        assert_eq!(s["reader"]["reader_acquire_ok"], 500);
        assert_eq!(s["wait_ns"]["exclusion"]["count"], 100);
        assert_eq!(s["wait_ns"]["exclusion"]["max_ns"], 1099);
        assert_eq!(s["wait_ns"]["write_lock"]["max_ns"], 1199);
        assert_eq!(s["stats"]["top_processes"][0]["exclusions"], 50);
        assert_eq!(s["replay"]["complete"], true);
        assert_eq!(s["replay"]["records"], 103);
        assert_eq!(s["stop_reason"], "end of trace");
        assert_eq!(s["validator"]["events_observed"], 400);
        // The counter rise and the undecodable record made the validator resync.
        assert_eq!(s["validator"]["resyncs"], 2);
    }
}

#[test]
fn human_summary_names_losses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.vmatrace");
    write_sample(&path, false);
    let out = run(&["replay", path.to_str().expect("utf8")]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("losses: 4"), "{text}");
    assert!(text.contains("ringbuf_reserve_failed"), "{text}");
    assert!(text.contains("events: 400 streamed"), "{text}");
}

#[test]
fn pid_and_comm_filters_apply_on_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.vmatrace");
    write_sample(&path, false);
    let p = path.to_str().expect("utf8");
    let s = json_summary(&run(&["replay", p, "--json", "--pid", "100"]));
    assert_eq!(s["events"]["total"], 200);
    assert_eq!(s["replay"]["filtered"], 200);
    let s = json_summary(&run(&["replay", p, "--json", "--comm", "oth"]));
    assert_eq!(s["events"]["total"], 200);
    let s = json_summary(&run(&["replay", p, "--json", "--comm", "nobody"]));
    assert_eq!(s["events"]["total"], 0);
}

#[test]
fn truncated_trace_exits_4_with_offset_after_summarising_the_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.vmatrace");
    write_sample(&path, false);
    let bytes = std::fs::read(&path).expect("read");
    let cut = dir.path().join("cut.vmatrace");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let out = run(&["replay", cut.to_str().expect("utf8"), "--json"]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("truncated at byte"), "{err}");
    let s: Value = serde_json::from_slice(&out.stdout).expect("summary still printed");
    assert_eq!(s["replay"]["complete"], false);
    let n = s["events"]["total"].as_u64().expect("count");
    assert!(n > 0 && n < 400, "{n}");
}

#[test]
fn not_a_trace_exits_4() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("junk");
    std::fs::write(&path, b"hello, this is not a trace").expect("write");
    let out = run(&["replay", path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a vmatrace trace"), "{err}");
    // Missing file: a plain error, not a crash.
    let out = run(&["replay", "/nonexistent/trace"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open the trace"));
}

#[test]
fn replay_reads_stdin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.vmatrace");
    write_sample(&path, true);
    let bytes = std::fs::read(&path).expect("read");
    let mut child = bin()
        .args(["replay", "-", "--json"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&bytes)
        .expect("feed");
    let out = child.wait_with_output().expect("wait");
    let s = json_summary(&out);
    assert_eq!(s["events"]["total"], 400);
}

#[test]
fn follow_reads_a_growing_file_until_the_end_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = dir.path().join("full.vmatrace");
    write_sample(&full, false);
    let bytes = std::fs::read(&full).expect("read");
    let growing = dir.path().join("growing.vmatrace");
    // Console noise, then the first part of the trace.
    let mut first = b"[    1.234] booting\n".to_vec();
    first.extend_from_slice(&bytes[..bytes.len() / 3]);
    std::fs::write(&growing, &first).expect("write");
    let child = bin()
        .args([
            "replay",
            "--follow",
            "--json",
            growing.to_str().expect("utf8"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::thread::sleep(Duration::from_millis(400));
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&growing)
        .expect("open");
    f.write_all(&bytes[bytes.len() / 3..]).expect("append");
    drop(f);
    let out = child.wait_with_output().expect("wait");
    let s = json_summary(&out);
    assert_eq!(s["events"]["total"], 400);
    assert_eq!(s["replay"]["complete"], true);
    assert_eq!(s["replay"]["skipped_bytes"], 20);
}

#[test]
fn anomaly_log_failures_are_reported_not_fatal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.vmatrace");
    write_sample(&path, false);
    let p = path.to_str().expect("utf8");
    if std::path::Path::new("/dev/full").exists() {
        let s = json_summary(&run(&["replay", p, "--json", "--anomaly-log", "/dev/full"]));
        // Two loss lines (ring buffer, undecodable) could not be written.
        assert_eq!(s["anomaly_log"]["lines_lost"], 2);
        assert_eq!(s["losses"]["anomaly_log_lines"], 2);
        assert_eq!(s["losses"]["total"], 6);
    } else {
        vmatrace::testing::skip(
            "anomaly_log_failures_are_reported_not_fatal",
            "no /dev/full",
        );
    }
    let out = run(&["replay", p, "--anomaly-log", "/nonexistent/dir/a.jsonl"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open the anomaly log /nonexistent/dir/a.jsonl"),
        "{err}"
    );

    let log = dir.path().join("a.jsonl");
    let s = json_summary(&run(&[
        "replay",
        p,
        "--json",
        "--anomaly-log",
        log.to_str().expect("utf8"),
    ]));
    assert_eq!(s["anomaly_log"]["lines_written"], 2);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.lines().all(|l| l.contains("\"type\":\"loss\"")),
        "{text}"
    );
}

#[test]
fn bad_arguments_are_usage_errors() {
    for args in [
        &["replay", "x", "--speed", "0"][..],
        &["replay", "x", "--duration", "10 parsecs"],
        &["replay", "x", "--comm", "much-too-long-for-a-comm"],
        &["replay", "x", "--anomaly-log-max-bytes", "10"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// A trace recorded on a real kernel by the VM rig, when one is checked in.
#[test]
fn replay_of_the_real_kernel_sample() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
    let samples: Vec<_> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "vmatrace"))
        .collect();
    if samples.is_empty() {
        vmatrace::testing::skip(
            "replay_of_the_real_kernel_sample",
            "no tests/data/*.vmatrace recorded on a real kernel yet",
        );
        return;
    }
    for p in samples {
        let s = json_summary(&run(&["replay", p.to_str().expect("utf8"), "--json"]));
        assert_eq!(s["replay"]["complete"], true, "{}", p.display());
        assert!(
            s["events"]["total"].as_u64().unwrap_or(0) > 0,
            "{}",
            p.display()
        );
        assert_ne!(s["kernel"], "synthetic");
    }
}

/// On a terminal, replay shows the dashboard; quitting it prints the summary on the
/// restored terminal.
#[test]
fn replay_on_a_terminal_shows_the_dashboard_then_the_summary() {
    if Command::new("tmux").arg("-V").output().is_err() {
        vmatrace::testing::skip(
            "replay_on_a_terminal_shows_the_dashboard_then_the_summary",
            "tmux is not installed",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.vmatrace");
    write_sample(&path, false);
    let out_file = dir.path().join("out.txt");
    let socket = format!("vmatrace-replay-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-L")
            .arg(&socket)
            .args(args)
            .env_remove("TMUX")
            .env("TERM", "xterm-256color")
            .output()
            .expect("tmux runs")
    };
    // The shell keeps the pane open after vmatrace exits and saves what it printed.
    let cmd = format!(
        "{} replay {} > /dev/tty; echo \"exit=$?\" > {}; sleep 30",
        env!("CARGO_BIN_EXE_vmatrace"),
        path.display(),
        out_file.display()
    );
    let o = tmux(&[
        "-f",
        "/dev/null",
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "160",
        "-y",
        "48",
        &cmd,
    ]);
    assert!(o.status.success(), "{o:?}");
    let capture =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned();
    let wait_for = |needle: &str| {
        let t = std::time::Instant::now();
        loop {
            let c = capture();
            if c.contains(needle) {
                return c;
            }
            if t.elapsed() > Duration::from_secs(20) {
                let _ = tmux(&["kill-server"]);
                panic!("{needle:?} never appeared:\n{c}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The dashboard shows the replayed numbers.
    let screen = wait_for("Events (400 total");
    assert!(screen.contains("7.2.13"), "{screen}");
    assert!(screen.contains("Losses (4)"), "{screen}");
    tmux(&["send-keys", "-t", "t", "q"]);
    let after = wait_for("events: 400 streamed");
    assert!(after.contains("losses: 4"), "{after}");
    let t = std::time::Instant::now();
    while !out_file.exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = std::fs::read_to_string(&out_file).unwrap_or_default();
    let _ = tmux(&["kill-server"]);
    assert_eq!(status.trim(), "exit=0");
}
