//! The `run` step's metrics scrape, judged against the summary the tracer printed.
//!
//! The guest scrapes the tracer's `/metrics` after the workload (the only cgroup traced)
//! has exited and before the tracer's duration ends. Everything the filter lets through
//! is frozen by then, so those series must equal the summary exactly. Series fed by
//! every task (the `filtered` count, the kernel's per-program skip counts) may only have
//! grown between the scrape and the summary.

use std::collections::BTreeMap;

use serde_json::Value;

use super::verdict::Verdict;

/// One sample: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parse OpenMetrics / Prometheus text: `name{a="x",b="y"} value`. Comments and lines
/// that do not parse are skipped (the comparison then reports the series as missing).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, rest) = match line.find('{') {
        Some(open) => {
            let close = open + line[open..].find('}')?;
            (&line[..close + 1], &line[close + 1..])
        }
        None => line.split_at(line.find(' ')?),
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    let (name, labels) = match series.find('{') {
        Some(open) => (&series[..open], &series[open + 1..series.len() - 1]),
        None => (series, ""),
    };
    let mut map = BTreeMap::new();
    // Label values here never hold `",` (kinds, events, reasons, versions).
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"")?;
        map.insert(k.trim().to_string(), v.trim_end_matches('"').to_string());
    }
    Some(Sample {
        name: name.to_string(),
        labels: map,
        value,
    })
}

/// How a scraped series must relate to the summary's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rule {
    /// Fed only by traced tasks: frozen once the workload exited.
    Equal,
    /// Also fed by untraced tasks: may have grown after the scrape, never shrunk.
    AtMost,
}

/// Values of `name` by the value of `label`.
fn by_label(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter_map(|s| s.labels.get(label).map(|l| (l.clone(), s.value)))
        .collect()
}

/// Judge the scrape of `step` against its summary `j`.
pub fn judge(step: &str, text: &str, j: &Value, v: &mut Verdict) {
    judge_from(
        step,
        "metrics scraped in the guest after the workload",
        text,
        j,
        v,
    )
}

/// [`judge`] for a scrape from elsewhere: `source` says whose, in the report line.
pub fn judge_from(step: &str, source: &str, text: &str, j: &Value, v: &mut Verdict) {
    let samples = parse(text);
    if samples.is_empty() {
        v.failures
            .push(format!("{step}: the metrics scrape holds no sample"));
        return;
    }
    // (what, scraped, summary, rule)
    let mut rows: Vec<(String, Option<f64>, Option<f64>, Rule)> = Vec::new();
    let logical = by_label(&samples, "vmatrace_logical_events_total", "event");
    for (event, e) in j
        .pointer("/events/by_logical_event")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        let want = e.get("count").and_then(Value::as_f64);
        rows.push((
            format!("event {event}"),
            logical.get(event).copied(),
            want,
            Rule::Equal,
        ));
    }
    let summary_anomalies = j.pointer("/anomalies/by_kind").and_then(Value::as_object);
    for (kind, n) in by_label(&samples, "vmatrace_anomalies_total", "kind") {
        let want = summary_anomalies
            .and_then(|m| m.get(&kind))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        rows.push((
            format!("anomalies {kind}"),
            Some(n),
            Some(want),
            Rule::Equal,
        ));
    }
    let reader = by_label(&samples, "vmatrace_reader_outcomes_total", "outcome");
    for (k, want) in j
        .get("reader")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        // `filtered` counts the other tasks' calls, which go on after the scrape.
        let rule = if k == "filtered" {
            Rule::AtMost
        } else {
            Rule::Equal
        };
        rows.push((
            format!("reader {k}"),
            reader.get(k).copied(),
            want.as_f64(),
            rule,
        ));
    }
    let waits = by_label(&samples, "vmatrace_writer_wait_seconds_count", "wait");
    for wait in ["exclusion", "write_lock", "detach"] {
        let want = j
            .pointer(&format!("/stats/{wait}_wait/count"))
            .and_then(Value::as_f64);
        rows.push((
            format!("{wait} waits"),
            waits.get(wait).copied(),
            want,
            Rule::Equal,
        ));
    }
    let losses = by_label(&samples, "vmatrace_losses_total", "reason");
    for (k, want) in j
        .pointer("/losses/kernel")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        // Per-program skip counts cover every task, traced or not.
        rows.push((
            format!("loss {k}"),
            losses.get(k).copied(),
            want.as_f64(),
            Rule::AtMost,
        ));
    }
    if !rows.iter().any(|r| r.0.starts_with("event ")) {
        v.failures.push(format!(
            "{step}: the summary has no events.by_logical_event"
        ));
        return;
    }
    let mut differ = Vec::new();
    let mut grown = Vec::new();
    for (what, got, want, rule) in &rows {
        match (got, want, rule) {
            (Some(g), Some(w), Rule::Equal) if g == w => {}
            (Some(g), Some(w), Rule::AtMost) if g == w => {}
            (Some(g), Some(w), Rule::AtMost) if g < w => grown.push(what.clone()),
            _ => differ.push(format!("{what}: scraped {got:?}, summary {want:?}")),
        }
    }
    let mut compared = rows.len();
    let build = samples.iter().find(|s| s.name == "vmatrace_build_info");
    let run = samples.iter().find(|s| s.name == "vmatrace_run_info");
    let label = |s: Option<&Sample>, k: &str| s.and_then(|s| s.labels.get(k)).cloned();
    let text_of = |p: &str| j.pointer(p).and_then(Value::as_str).map(str::to_string);
    for (what, got, want) in [
        (
            "build_info kernel_release",
            label(build, "kernel_release"),
            text_of("/kernel"),
        ),
        (
            "build_info generation",
            label(build, "generation"),
            text_of("/generation"),
        ),
        ("run_info run_id", label(run, "run_id"), text_of("/run_id")),
    ] {
        compared += 1;
        if got.is_none() || got != want {
            differ.push(format!("{what}: scraped {got:?}, summary {want:?}"));
        }
    }
    if differ.is_empty() {
        let events: f64 = logical.values().sum();
        v.info.push(format!(
            "{step}: {source}: {} samples, {compared} \
             series equal to the summary ({events} logical events){}",
            samples.len(),
            if grown.is_empty() {
                String::new()
            } else {
                format!(
                    "; grew after the scrape (untraced tasks): {}",
                    grown.join(", ")
                )
            }
        ));
    } else {
        v.failures.push(format!(
            "{step}: {source}: differs from the summary: {}",
            differ.join("; ")
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TEXT: &str = r#"# HELP vmatrace_build_info Build.
# TYPE vmatrace_build_info gauge
vmatrace_build_info{version="0.1.0",git_revision="abc",kernel_release="6.19.1",generation="6.19"} 1
vmatrace_run_info{run_id="r-1",host="vm"} 1
vmatrace_logical_events_total{event="write_lock_request",observed="direct"} 5
vmatrace_logical_events_total{event="mark_detached_slow",observed="direct"} 0
vmatrace_anomalies_total{kind="lost_wakeup"} 0
vmatrace_reader_outcomes_total{outcome="reader_acquire_ok"} 7
vmatrace_reader_outcomes_total{outcome="filtered"} 3
vmatrace_writer_wait_seconds_count{wait="exclusion"} 2
vmatrace_writer_wait_seconds_count{wait="write_lock"} 2
vmatrace_writer_wait_seconds_count{wait="detach"} 0
vmatrace_writer_wait_seconds_bucket{le="+Inf",wait="detach"} 0
vmatrace_losses_total{reason="return_runs_skipped"} 1
# EOF
"#;

    fn summary() -> Value {
        json!({
            "kernel": "6.19.1", "generation": "6.19", "run_id": "r-1",
            "events": {"by_logical_event": {
                "write_lock_request": {"count": 5, "observed": "direct"},
                "mark_detached_slow": {"count": 0, "observed": "direct"}}},
            "anomalies": {"total": 0, "by_kind": {}},
            "reader": {"reader_acquire_ok": 7, "filtered": 9},
            "stats": {"exclusion_wait": {"count": 2}, "write_lock_wait": {"count": 2},
                      "detach_wait": {"count": 0}},
            "losses": {"kernel": {"return_runs_skipped": 1}}
        })
    }

    #[test]
    fn parses_labels_values_and_infinity() {
        let s = parse(TEXT);
        assert_eq!(s.len(), 12);
        assert_eq!(s[0].labels["kernel_release"], "6.19.1");
        assert_eq!(s[0].labels["version"], "0.1.0");
        let inf = s
            .iter()
            .find(|s| s.labels.contains_key("le"))
            .expect("bucket");
        assert_eq!((inf.labels["le"].as_str(), inf.value), ("+Inf", 0.0));
        assert_eq!(parse_line("x +Inf").map(|s| s.value), Some(f64::INFINITY));
        assert_eq!(parse_line("x{a=\"1\"} nope"), None);
        assert_eq!(
            parse_line("up 1"),
            Some(Sample {
                name: "up".into(),
                labels: BTreeMap::new(),
                value: 1.0
            })
        );
    }

    #[test]
    fn equal_scrape_passes_and_names_what_grew() {
        let mut v = Verdict::default();
        judge("run", TEXT, &summary(), &mut v);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        assert!(v.info[0].contains("grew after the scrape (untraced tasks): reader filtered"));
    }

    #[test]
    fn a_traced_count_that_moved_fails() {
        let mut j = summary();
        j["events"]["by_logical_event"]["write_lock_request"]["count"] = json!(6);
        let mut v = Verdict::default();
        judge("run", TEXT, &j, &mut v);
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
        assert!(
            v.failures[0]
                .contains("event write_lock_request: scraped Some(5.0), summary Some(6.0)")
        );
        // A count that shrank after the scrape is as wrong, and another run's id too.
        let mut j = summary();
        j["reader"]["filtered"] = json!(2);
        j["run_id"] = json!("r-2");
        let mut v = Verdict::default();
        judge("run", TEXT, &j, &mut v);
        assert!(
            v.failures[0].contains("reader filtered"),
            "{:?}",
            v.failures
        );
        assert!(
            v.failures[0].contains("run_info run_id"),
            "{:?}",
            v.failures
        );
        let mut v = Verdict::default();
        judge("run", "# EOF\n", &summary(), &mut v);
        assert!(v.failures[0].contains("no sample"));
    }
}
