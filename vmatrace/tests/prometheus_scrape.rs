//! The metrics endpoint against the real thing: Debian's Prometheus scrapes a running
//! `vmatrace replay --follow`, its HTTP API's answers equal vmatrace's own JSON summary,
//! and `promtool check metrics` finds nothing to say about the exposition.

mod common;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, Read, Write},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{END_RECORD_LEN, bin, write_sample};
use serde_json::Value;
use vmatrace::testing::skip;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// Kills the child when the test ends, however it ends.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One HTTP/1.0 GET (so that no server answers in chunks): the head and the body.
fn http_get(port: u16, path_and_query: &str, accept: Option<&str>) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n{accept}\r\n"
    )
    .ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let (head, body) = r.split_once("\r\n\r\n")?;
    Some((head.to_string(), body.to_string()))
}

fn percent_encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query: the vector's samples as (labels, value).
fn query(port: u16, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let Some((_, body)) = http_get(
        port,
        &format!("/api/v1/query?query={}", percent_encode(q)),
        None,
    ) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return Vec::new();
    };
    v["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    let labels = r["metric"]
                        .as_object()?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect();
                    let value = r["value"][1].as_str()?.parse().ok()?;
                    Some((labels, value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `metric` by one label, as Prometheus has it.
fn by_label(port: u16, metric: &str, label: &str) -> BTreeMap<String, f64> {
    query(port, metric)
        .into_iter()
        .map(|(l, v)| (l.get(label).cloned().unwrap_or_default(), v))
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn start_prometheus(dir: &Path, target_port: u16, web_port: u16) -> Reaped {
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
             scrape_configs:\n  - job_name: vmatrace\n    static_configs:\n      \
             - targets: ['127.0.0.1:{target_port}']\n"
        ),
    )
    .expect("config");
    let child = Command::new(PROMETHEUS)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join("prometheus.log")).expect("log"),
        ))
        .spawn()
        .expect("prometheus starts");
    Reaped(child)
}

#[test]
fn prometheus_scrapes_what_the_summary_says() {
    const NAME: &str = "prometheus_scrapes_what_the_summary_says";
    if !Path::new(PROMETHEUS).is_file() {
        skip(
            NAME,
            "no /usr/bin/prometheus (cargo xtask setup installs Debian's prometheus)",
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let full = dir.path().join("full.vmatrace");
    write_sample(&full, false);
    let bytes = std::fs::read(&full).expect("read");
    // Everything but the end record: `--follow` keeps waiting, the session stays up.
    let partial = dir.path().join("partial.vmatrace");
    std::fs::write(&partial, &bytes[..bytes.len() - END_RECORD_LEN]).expect("write");
    let log = dir.path().join("anomalies.jsonl");
    let (metrics_port, web_port) = (free_port(), free_port());
    let tracer = bin()
        .args(["replay", "--follow", "--json", "--metrics-listen"])
        .arg(format!("127.0.0.1:{metrics_port}"))
        .arg("--anomaly-log")
        .arg(&log)
        .arg(&partial)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmatrace starts");
    let mut tracer = Reaped(tracer);
    let _prometheus = start_prometheus(dir.path(), metrics_port, web_port);

    // Every event of the trace is processed and scraped: 100 write-lock sequences.
    wait_for(
        "Prometheus to scrape all 400 events",
        Duration::from_secs(60),
        || {
            query(web_port, "sum(vmatrace_stream_events_total)")
                .first()
                .is_some_and(|(_, v)| *v == 400.0)
        },
    );
    let up = query(web_port, r#"up{job="vmatrace"}"#);
    assert_eq!(up.first().map(|(_, v)| *v), Some(1.0), "{up:?}");

    // The exposition itself: the 0.0.4 text (what promtool reads) lints clean, and the
    // default answer is OpenMetrics.
    let (head, om) = http_get(metrics_port, "/metrics", None).expect("scrape");
    assert!(
        head.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    assert!(om.ends_with("# EOF\n"));
    let (_, text) = http_get(metrics_port, "/metrics", Some("text/plain")).expect("scrape");
    if Path::new(PROMTOOL).is_file() {
        let mut check = Command::new(PROMTOOL)
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool");
        check
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("feed promtool");
        let out = check.wait_with_output().expect("promtool");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}"
        );
    }

    // What Prometheus has, read back before the session ends...
    let logical = by_label(web_port, "vmatrace_logical_events_total", "event");
    let anomalies = by_label(web_port, "vmatrace_anomalies_total", "kind");
    let losses = by_label(web_port, "vmatrace_losses_total", "reason");
    let reader = by_label(web_port, "vmatrace_reader_outcomes_total", "outcome");
    let wait_count = by_label(web_port, "vmatrace_writer_wait_seconds_count", "wait");
    let wait_sum = by_label(web_port, "vmatrace_writer_wait_seconds_sum", "wait");
    let buckets = by_label(
        web_port,
        r#"vmatrace_writer_wait_seconds_bucket{wait="exclusion"}"#,
        "le",
    );
    let cumulative_at = |le: f64| {
        buckets
            .iter()
            .find(|(k, _)| k.parse::<f64>().ok() == Some(le))
            .map(|(_, v)| *v)
    };
    let run_info = query(web_port, "vmatrace_run_info");
    let build_info = query(web_port, "vmatrace_build_info");

    // ...and the summary vmatrace prints when it is stopped.
    // SAFETY: kill sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(tracer.0.id() as i32, libc::SIGINT) }, 0);
    let mut out = String::new();
    tracer
        .0
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("summary");
    assert!(tracer.0.wait().expect("exit").success());
    let s: Value = serde_json::from_str(&out).expect("one JSON summary");

    for (k, c) in s["events"]["by_logical_event"]
        .as_object()
        .expect("logical")
    {
        assert_eq!(
            logical.get(k),
            c["count"].as_f64().as_ref(),
            "logical event {k}: {logical:?}"
        );
    }
    let summary_anomalies = s["anomalies"]["by_kind"].as_object().expect("anomalies");
    for (k, v) in &anomalies {
        let want = summary_anomalies
            .get(k)
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        assert_eq!(*v, want, "anomaly kind {k}");
    }
    for (k, v) in s["losses"]["kernel"].as_object().expect("kernel losses") {
        assert_eq!(losses.get(k), v.as_f64().as_ref(), "loss {k}");
    }
    assert_eq!(losses["undecodable"], 1.0);
    assert_eq!(
        losses["undecodable"],
        s["losses"]["undecodable"].as_f64().expect("n")
    );
    for (k, v) in s["reader"].as_object().expect("reader") {
        assert_eq!(reader.get(k), v.as_f64().as_ref(), "reader {k}");
    }
    for wait in ["exclusion", "write_lock", "detach"] {
        let h = &s["stats"][format!("{wait}_wait")];
        assert_eq!(
            wait_count.get(wait),
            h["count"].as_f64().as_ref(),
            "{wait} count"
        );
        let sum_s = h["sum_ns"].as_f64().expect("sum_ns") / 1e9;
        assert!((wait_sum[wait] - sum_s).abs() < 1e-12, "{wait} sum");
    }
    // write_sample's exclusion waits are 1000..=1099 ns: 24 of them at most 1023 ns, in
    // the log2 bucket [512, 1023]; all of them at most 2047.
    assert_eq!(cumulative_at(511e-9), Some(0.0));
    assert_eq!(cumulative_at(1023e-9), Some(24.0));
    assert_eq!(cumulative_at(2047e-9), Some(100.0));
    assert_eq!(cumulative_at(f64::INFINITY), Some(100.0));
    assert_eq!(wait_count["exclusion"], 100.0);
    assert_eq!(
        run_info.first().and_then(|(l, _)| l.get("run_id")),
        s["run_id"].as_str().map(str::to_string).as_ref()
    );
    let b = &build_info.first().expect("build info").0;
    assert_eq!(
        b.get("git_revision").map(String::as_str),
        s["git_revision"].as_str()
    );
    assert_eq!(
        b.get("kernel_release").map(String::as_str),
        s["kernel"].as_str()
    );
    assert_eq!(b.get("generation").map(String::as_str), Some("7.0"));
}

/// `--snapshot-every`: JSON lines of the running session, then the final summary as one
/// more line, all with the same run id.
#[test]
fn snapshots_are_json_lines_of_the_running_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let full = dir.path().join("full.vmatrace");
    write_sample(&full, false);
    let bytes = std::fs::read(&full).expect("read");
    let partial = dir.path().join("partial.vmatrace");
    std::fs::write(&partial, &bytes[..bytes.len() - END_RECORD_LEN]).expect("write");
    let child = bin()
        .args(["replay", "--follow", "--snapshot-every", "300ms"])
        .arg(&partial)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("vmatrace starts");
    let mut child = Reaped(child);
    // Stop once a running snapshot has every event of the partial trace (not after a
    // fixed time: a loaded machine replays slower), then read the rest.
    let mut stdout = std::io::BufReader::new(child.0.stdout.take().expect("stdout"));
    let mut out = String::new();
    let t0 = std::time::Instant::now();
    loop {
        let mut line = String::new();
        let n = stdout.read_line(&mut line).expect("read");
        assert!(n > 0, "the replay ended before it was stopped: {out}");
        out.push_str(&line);
        let v: Value = serde_json::from_str(&line).expect("every line is one JSON object");
        if v["events"]["total"] == 400 && out.lines().count() >= 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no snapshot with all 400 events within 60 s: {out}"
        );
    }
    // SAFETY: kill sends a signal to our own child.
    assert_eq!(unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) }, 0);
    stdout.read_to_string(&mut out).expect("read");
    assert!(child.0.wait().expect("exit").success());
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is one JSON object"))
        .collect();
    assert!(lines.len() >= 3, "{out}");
    let (last, running) = lines.split_last().expect("lines");
    for l in running {
        assert_eq!(l["stop_reason"], "running");
        assert!(l["ended_at"].is_null());
        assert_eq!(l["run_id"], last["run_id"]);
    }
    assert_eq!(last["stop_reason"], "SIGTERM");
    assert!(last["ended_at"].is_string());
    assert_eq!(running.last().expect("one")["events"]["total"], 400);
}
