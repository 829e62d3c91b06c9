//! The service files in `vmatrace/dist/` checked by the tools that will read them:
//! `systemd-analyze verify` (the unit), `promtool check rules` and `promtool test rules`
//! (the alert rules), `logrotate --debug` (the rotation config), and the unit's command
//! line parsed by vmatrace itself.

use std::{path::Path, process::Command};

use vmatrace::testing::skip;

fn dist(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(name)
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("the tool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}: {said}");
    said
}

fn find(tool: &str) -> Option<std::path::PathBuf> {
    ["/usr/bin", "/bin", "/usr/sbin", "/sbin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// The unit as installed, with ExecStart pointing at the binary under test (verify
/// checks that the command exists).
fn unit_for_this_build(dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(dist("vmatrace.service")).expect("unit");
    let p = dir.join("vmatrace.service");
    std::fs::write(
        &p,
        text.replace("/usr/bin/vmatrace", env!("CARGO_BIN_EXE_vmatrace")),
    )
    .expect("write");
    p
}

#[test]
fn systemd_accepts_the_unit() {
    let Some(analyze) = find("systemd-analyze") else {
        skip(
            "systemd_accepts_the_unit",
            "no systemd-analyze (Debian's systemd)",
        );
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = unit_for_this_build(dir.path());
    let said = ok(Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&unit));
    assert!(said.trim().is_empty(), "systemd-analyze verify: {said}");
    // The exposure score (offline: no running systemd needed). Keep it "OK" (< 2.0 is
    // the score when this test was written: 1.9).
    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for").nth(1))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in: {text}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.0, "exposure {score} (was 1.9):\n{text}");
}

/// The unit's ExecStart is a valid vmatrace command line (clap rejects unknown flags).
#[test]
fn the_units_command_line_parses() {
    let text = std::fs::read_to_string(dist("vmatrace.service")).expect("unit");
    let exec = text
        .replace("\\\n", " ")
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=").map(str::to_string))
        .expect("ExecStart");
    let args: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(args.first(), Some(&"run"));
    use clap::Parser;
    let parsed = vmatrace::cli::Cli::try_parse_from(std::iter::once("vmatrace").chain(args));
    assert!(parsed.is_ok(), "{:?}", parsed.err());
}

#[test]
fn prometheus_accepts_the_alert_rules() {
    let Some(promtool) = find("promtool") else {
        skip(
            "prometheus_accepts_the_alert_rules",
            "no promtool (Debian's prometheus)",
        );
        return;
    };
    let rules = dist("vmatrace.rules.yml");
    let said = ok(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(&rules));
    assert!(said.contains("SUCCESS"), "{said}");
    // And they fire as meant: an anomaly pages at once, a short loss does not.
    let dir = tempfile::tempdir().expect("tempdir");
    let test = dir.path().join("rules_test.yml");
    std::fs::write(
        &test,
        format!(
            r#"rule_files: ["{}"]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'vmatrace_anomalies_total{{instance="h1", kind="lost_wakeup"}}'
        values: '0 0 0 1 1 1'
      - series: 'vmatrace_losses_total{{instance="h1", reason="ringbuf_reserve_failed"}}'
        values: '0 5 5 5 5 5'
      - series: 'up{{job="vmatrace", instance="h1"}}'
        values: '1 1 1 1 1 1'
    alert_rule_test:
      - eval_time: 4m
        alertname: VmatraceAnomaly
        exp_alerts:
          - exp_labels: {{severity: page, instance: h1, kind: lost_wakeup}}
            exp_annotations:
              summary: "vmatrace on h1 reported lost_wakeup anomalies"
              description: "1 lost_wakeup anomalies in 10 minutes. Each one is a line in /var/log/vmatrace/anomalies.jsonl with the task, the VMA and the evidence (docs/anomaly-kinds.md says what the kind means)."
      - eval_time: 5m
        alertname: VmatraceLosingEvents
        exp_alerts: []
      - eval_time: 5m
        alertname: VmatraceDown
        exp_alerts: []
"#,
            rules.display()
        ),
    )
    .expect("write");
    ok(Command::new(&promtool).arg("test").arg("rules").arg(&test));
}

#[test]
fn logrotate_accepts_its_config() {
    let Some(logrotate) = find("logrotate") else {
        skip("logrotate_accepts_its_config", "no logrotate installed");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    // --debug: parse and plan, touch nothing.
    ok(Command::new(&logrotate)
        .arg("--debug")
        .arg("--state")
        .arg(&state)
        .arg(dist("vmatrace.logrotate")));
}
