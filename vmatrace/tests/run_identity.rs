//! Run identity and wall-clock times: the summary and every anomaly-log line say which
//! run wrote them and when; `--version` names the git revision.

mod common;

use common::{run, write_sample};
use serde_json::Value;

fn summary(args: &[&str]) -> Value {
    let out = run(args);
    assert!(
        out.status.success(),
        "status {:?}, stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is one JSON object")
}

#[test]
fn summary_and_log_lines_carry_the_run_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("t.vmatrace");
    write_sample(&trace, false);
    let log = dir.path().join("a.jsonl");
    let (t, l) = (trace.to_str().expect("utf8"), log.to_str().expect("utf8"));
    let first = summary(&["replay", t, "--json", "--anomaly-log", l]);
    let second = summary(&["replay", t, "--json", "--anomaly-log", l]);
    let id = |s: &Value| s["run_id"].as_str().expect("run_id").to_string();
    assert_eq!(id(&first).len(), 36, "a UUID: {first}");
    assert_ne!(id(&first), id(&second), "each process is a run of its own");
    for s in [&first, &second] {
        let started = s["started_at"].as_str().expect("started_at");
        let ended = s["ended_at"].as_str().expect("ended_at");
        // RFC 3339 UTC with nanoseconds: the same length, so text order is time order.
        assert!(started.ends_with('Z') && ended.ends_with('Z'));
        assert!(started <= ended, "{started} > {ended}");
        assert!(!s["host"].as_str().expect("host").is_empty());
        assert!(!s["git_revision"].as_str().expect("rev").is_empty());
    }
    // The appended log: each line says which of the two runs wrote it.
    let text = std::fs::read_to_string(&log).expect("log");
    let ids: Vec<String> = text
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("a JSON line");
            v["run_id"]
                .as_str()
                .expect("run_id on every line")
                .to_string()
        })
        .collect();
    assert!(!ids.is_empty());
    let half = ids.len() / 2;
    assert!(ids[..half].iter().all(|i| *i == id(&first)), "{ids:?}");
    assert!(ids[half..].iter().all(|i| *i == id(&second)), "{ids:?}");
}

#[test]
fn version_names_the_git_revision() {
    let out = run(&["--version"]);
    assert!(out.status.success());
    let v = String::from_utf8_lossy(&out.stdout);
    assert!(
        v.starts_with(&format!("vmatrace {} (git ", env!("CARGO_PKG_VERSION"))),
        "{v}"
    );
}
