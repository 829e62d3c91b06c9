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
        let out = run(&["replay", p, "--json", "--anomaly-log", "/dev/full"]);
        // The first lost line is visible on stderr (a logger is installed), once.
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.matches("vmatrace: warning: anomaly log /dev/full: No space left on device")
                .count(),
            1,
            "{err}"
        );
        let s = json_summary(&out);
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
    // The shell creates the file before it writes the line: wait for the line itself.
    let t = std::time::Instant::now();
    let mut status = String::new();
    while !status.contains('\n') && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
        status = std::fs::read_to_string(&out_file).unwrap_or_default();
    }
    let _ = tmux(&["kill-server"]);
    assert_eq!(status.trim(), "exit=0");
}

#[test]
fn speed_paces_by_the_recorded_timestamps() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("slow.vmatrace");
    let mut w = vmatrace::trace::TraceWriter::create(&path, &header(), false).expect("create");
    // Three batches 300 ms apart (recorded time).
    for i in 0..3u64 {
        let t = 1_000_000_000 + i * 300_000_000;
        w.write_events(t, &write_lock_events(100, b"stress", t, 500))
            .expect("write");
    }
    w.finish(1_600_000_000).expect("finish");
    let p = path.to_str().expect("utf8");
    let s = json_summary(&run(&["replay", p, "--json", "--speed", "1"]));
    assert_eq!(s["events"]["total"], 12);
    // Recorded pace: at least the 600 ms the recording spans (an upper bound would
    // depend on the machine's load, so none is asserted).
    let wall = s["replay"]["wall_s"].as_f64().expect("wall_s");
    assert!(wall >= 0.6, "replayed in {wall} s");
    assert!((s["duration_s"].as_f64().expect("duration") - 0.6).abs() < 1e-9);
    // --duration on replay is recorded time: the first 400 ms hold two batches.
    let s = json_summary(&run(&["replay", p, "--json", "--duration", "400ms"]));
    assert_eq!(s["events"]["total"], 8);
    assert_eq!(s["stop_reason"], "duration");
    let s = json_summary(&run(&["replay", p, "--json", "--speed", "4"]));
    let wall4 = s["replay"]["wall_s"].as_f64().expect("wall_s");
    assert!(wall4 >= 0.15, "replayed in {wall4} s at 4x");
}

/// SIGINT/SIGTERM end a follow that would otherwise wait forever: everything received is
/// processed, the sinks are flushed, the summary printed, exit 0.
#[test]
fn signals_end_a_follow_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = dir.path().join("full.vmatrace");
    write_sample(&full, false);
    let bytes = std::fs::read(&full).expect("read");
    // Everything but the end record: the follower keeps waiting for more.
    let partial = dir.path().join("partial.vmatrace");
    let end_record = vmatrace::trace::format::RECORD_HEADER_LEN + 16 + 4;
    std::fs::write(&partial, &bytes[..bytes.len() - end_record]).expect("write");
    let log = dir.path().join("a.jsonl");
    for (sig, name, stdin) in [
        (libc::SIGINT, "SIGINT", false),
        (libc::SIGTERM, "SIGTERM", true),
    ] {
        let mut cmd = bin();
        cmd.args([
            "replay",
            "--follow",
            "--json",
            "--anomaly-log",
            log.to_str().expect("utf8"),
        ]);
        if stdin {
            // A pipe that stays open: the reader blocks in read(2).
            cmd.arg("-").stdin(Stdio::piped());
        } else {
            cmd.arg(partial.to_str().expect("utf8"));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let _keep_open = if stdin {
            let mut i = child.stdin.take().expect("stdin");
            i.write_all(&bytes[..bytes.len() - end_record])
                .expect("feed");
            Some(i)
        } else {
            None
        };
        std::thread::sleep(Duration::from_millis(700));
        // SAFETY: kill sends a signal to our own child.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        let out = child.wait_with_output().expect("wait");
        let s = json_summary(&out);
        assert_eq!(s["stop_reason"], name);
        assert_eq!(
            s["events"]["total"], 400,
            "{name}: everything received was processed"
        );
        assert_eq!(s["replay"]["complete"], false);
        assert_eq!(s["anomaly_log"]["write_errors"], 0);
    }
}

/// A real anomaly from the validator, end to end: trace → replay → anomaly log line.
#[test]
fn anomalies_reach_the_log_with_redacted_addresses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.vmatrace");
    let mut w = vmatrace::trace::TraceWriter::create(&path, &header(), true).expect("create");
    // vm_area_free of a VMA that still holds a reference.
    let mut free = write_lock_events(300, b"victim", 1_500_000_000, 10)[0];
    free.kind = vmatrace_common::EventKind::VmaFree as u16;
    free.probe = 14;
    free.refcnt = 1;
    w.write_events(1_500_000_000, &[free]).expect("write");
    w.finish(1_500_000_001).expect("finish");
    let p = path.to_str().expect("utf8");
    let log = dir.path().join("anomalies.jsonl");
    let l = log.to_str().expect("utf8");
    let s = json_summary(&run(&["replay", p, "--json", "--anomaly-log", l]));
    assert_eq!(s["anomalies"]["total"], 1);
    assert_eq!(s["anomalies"]["by_kind"]["free_while_referenced"], 1);
    assert_eq!(s["anomaly_log"]["lines_written"], 1);
    let text = std::fs::read_to_string(&log).expect("log");
    let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
    assert_eq!(line["type"], "anomaly");
    assert_eq!(line["kind"], "free_while_referenced");
    assert_eq!(line["task"]["comm"], "victim");
    assert_eq!(line["host"], "synthetic-host");
    assert_eq!(line["time"], "2027-01-01T00:00:00.500000000Z");
    assert!(
        line["vma"]["addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("h:"))
    );
    assert!(!text.contains("ffff8881"), "{text}");
    let mode = std::fs::metadata(&log).expect("stat").permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o640
    );

    std::fs::remove_file(&log).expect("rm");
    let s = json_summary(&run(&[
        "replay",
        p,
        "--json",
        "--anomaly-log",
        l,
        "--raw-addresses",
    ]));
    assert_eq!(s["anomalies"]["total"], 1);
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("\"addr\":\"0xffff888100000100\""), "{text}");
}

/// A trace whose header and tasks carry terminal control sequences (retitle, clear
/// screen, the one-byte CSI): the text summary and the messages on stderr spell them
/// out instead of sending them to the reader's terminal.
#[test]
fn trace_strings_reach_the_terminal_escaped() {
    const EVIL: &str = "\x1b]0;pwned\x07\x1b[2J";
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("evil.vmatrace");
    let mut h = header();
    h.kernel_release = format!("7.2{EVIL}");
    h.host = format!("host\u{9b}2J{EVIL}");
    let mut plan = common::plans::plan_7x(true);
    plan.notes.push(format!("note{EVIL}"));
    plan.coverage.push(vmatrace::kernel::plan::EventCoverage {
        event: vmatrace::kernel::plan::LogicalEvent::EndExclude,
        status: vmatrace::kernel::plan::Observability::Unobservable {
            reason: format!("inlined{EVIL}"),
        },
    });
    h.plan = Some(plan);
    h.hooks.push(vmatrace::trace::HookRecord {
        target: format!("fn{EVIL}"),
        program: "prog".into(),
        mode: "kprobe".into(),
        attached: false,
        error: Some(format!("refused{EVIL}")),
    });
    let mut w = vmatrace::trace::TraceWriter::create(&path, &h, false).expect("create");
    let evs = write_lock_events(300, EVIL.as_bytes(), 1_500_000_000, 10);
    w.write_events(1_500_000_000, &evs).expect("write");
    w.finish(1_500_000_100).expect("finish");
    // Cut the end record off: the replay also reports an error on stderr.
    let bytes = std::fs::read(&path).expect("read");
    let cut = dir.path().join(format!("evil{EVIL}.vmatrace"));
    std::fs::write(&cut, &bytes[..bytes.len() - 8]).expect("write");
    for p in [&path, &cut] {
        let out = run(&["replay", p.to_str().expect("utf8"), "--headless"]);
        let all = [out.stdout.as_slice(), out.stderr.as_slice()].concat();
        let text = String::from_utf8_lossy(&all);
        assert!(!all.contains(&0x1b), "{text:?}");
        assert!(
            !text.contains('\u{9b}') && !text.contains('\x07'),
            "{text:?}"
        );
        assert!(
            text.contains("kernel 7.2\\x1b]0;pwned\\x07\\x1b[2J"),
            "{text}"
        );
        assert!(text.contains("host\\x9b2J\\x1b]0;pwned"), "{text}");
        assert!(text.contains("inlined\\x1b]0;pwned"), "{text}");
        assert!(text.contains("fn\\x1b]0;pwned"), "{text}");
    }
}
/// Run `replay` with `bytes` on standard input.
fn replay_stdin(args: &[&str], bytes: &[u8]) -> std::process::Output {
    let mut child = bin()
        .arg("replay")
        .args(args)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(bytes).expect("feed");
    drop(stdin);
    child.wait_with_output().expect("wait")
}

/// `record --compress -o -` cut exactly where it flushed: following it ends cleanly at
/// the last complete record (a missing end record, exit 0), as for a plain stream;
/// without --follow it is an incomplete trace (exit 4), never a corrupt one.
#[test]
fn follow_ends_a_compressed_stream_cut_at_a_flush_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("live.vmatrace");
    let mut w = vmatrace::trace::TraceWriter::create(&path, &header(), true).expect("create");
    for i in 0..10u64 {
        let t = 1_000_000_000 + i * 1000;
        w.write_events(t, &write_lock_events(100, b"stress", t, 500))
            .expect("write");
    }
    w.flush().expect("flush");
    let flushed = usize::try_from(w.bytes()).expect("size");
    w.write_counters(1_000_100_000, &counters(0, 1))
        .expect("write");
    w.finish(1_000_200_000).expect("finish");
    let bytes = std::fs::read(&path).expect("read");
    let cut = &bytes[..flushed];

    let out = replay_stdin(&["--follow", "--json"], cut);
    let s = json_summary(&out);
    assert_eq!(s["events"]["total"], 40);
    assert_eq!(s["replay"]["complete"], false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without an end record"), "{err}");
    assert!(!err.contains("incomplete frame"), "{err}");

    let out = replay_stdin(&["--json"], cut);
    assert_eq!(out.status.code(), Some(4));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("without an end record"), "{err}");
}

/// `--follow` used to stop at the end record and ignore the rest of the stream: an early
/// end record could hide anything after it. What follows is now counted and reported
/// (exit 4), on a followed file (which must not wait forever after the end) and on stdin.
#[test]
fn follow_reports_data_after_the_end_record() {
    let dir = tempfile::tempdir().expect("tempdir");
    for compress in [false, true] {
        let path = dir.path().join(format!("t{compress}.vmatrace"));
        write_sample(&path, compress);
        let mut bytes = std::fs::read(&path).expect("read");
        let trailing = bytes.clone();
        bytes.extend_from_slice(&trailing);
        std::fs::write(&path, &bytes).expect("write");
        let n = trailing.len() as u64;

        let t = std::time::Instant::now();
        let out = run(&["replay", "--follow", "--json", path.to_str().expect("utf8")]);
        assert!(t.elapsed() < Duration::from_secs(20), "the follower waited");
        let stdin = replay_stdin(&["--follow", "--json"], &bytes);
        for out in [out, stdin] {
            assert_eq!(out.status.code(), Some(4), "compress={compress}");
            let s: Value = serde_json::from_slice(&out.stdout).expect("summary");
            assert_eq!(s["events"]["total"], 400);
            assert_eq!(s["replay"]["complete"], true);
            assert_eq!(s["replay"]["trailing_bytes"], n);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("{n} bytes follow the end record")),
                "{err}"
            );
        }
    }
}

/// A trace claiming 2 × 2⁶³ undecodable records: the count saturates (it used to wrap to
/// "losses: 0 (nothing lost)", or panic a debug build) and the summary says so.
#[test]
fn undecodable_counts_from_a_trace_saturate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wrap.vmatrace");
    let mut w = vmatrace::trace::TraceWriter::create(&path, &header(), false).expect("create");
    w.write_undecodable(1_000_000_000, 1 << 63).expect("write");
    w.write_undecodable(1_000_000_001, 1 << 63).expect("write");
    w.finish(1_000_000_002).expect("finish");
    let out = run(&["replay", path.to_str().expect("utf8")]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("losses: ≥ 18446744073709551615 (saturated)"),
        "{text}"
    );
    let s = json_summary(&run(&["replay", path.to_str().expect("utf8"), "--json"]));
    assert_eq!(s["losses"]["undecodable"], u64::MAX);
    assert_eq!(s["losses"]["saturated"][0], "undecodable");
}

/// Records moved, copied or deleted whole (every checksum valid) used to replay with 0
/// anomalies and no warning. Sequence numbers (format version 2) report them as losses by
/// reason, in `losses` and in the replay section, and the validator resynchronises.
#[test]
fn reordered_duplicated_and_deleted_records_are_losses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.vmatrace");
    write_sample(&path, false);
    let (head, recs) = split_records(&std::fs::read(&path).expect("read"));
    assert_eq!(recs.len(), 103);

    let mut swapped = recs.clone();
    swapped.swap(10, 11);
    let moved = dir.path().join("swapped.vmatrace");
    std::fs::write(&moved, join_records(&head, &swapped)).expect("write");
    let s = json_summary(&run(&["replay", moved.to_str().expect("utf8"), "--json"]));
    assert_eq!(s["losses"]["trace_records"]["reordered"], 1);
    assert_eq!(s["losses"]["trace_records"]["missing"], 0);
    assert_eq!(s["replay"]["record_losses"]["reordered"], 1);
    assert_eq!(s["losses"]["total"], 3 + 1 + 1);
    assert_eq!(s["events"]["total"], 396, "the late record is not replayed");
    assert_eq!(s["validator"]["resyncs"], 3);

    // A followed stream (no end record to count against): one record copied, one lost.
    let mut v = recs[..102].to_vec();
    v.remove(20);
    v.insert(5, recs[4].clone());
    let bytes = join_records(&head, &v);
    let s = json_summary(&replay_stdin(&["--follow", "--json"], &bytes));
    assert_eq!(s["losses"]["trace_records"]["duplicate"], 1);
    assert_eq!(s["losses"]["trace_records"]["missing"], 1);
    assert_eq!(s["replay"]["record_losses"]["duplicate"], 1);
    assert_eq!(s["events"]["total"], 396);
    let out = replay_stdin(&["--follow"], &bytes);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("trace records duplicated"), "{text}");
    assert!(text.contains("trace records missing"), "{text}");
    assert!(
        text.contains("records out of sequence: 1 missing, 1 duplicated, 0 reordered"),
        "{text}"
    );
}
