//! Assertions on vmatrace's own JSON output, read as `serde_json::Value` so a changed
//! schema fails with the missing field's name rather than a parse error.

use serde_json::Value;

use super::scenario::Verdict;

/// Walk a dotted path (`plan.coverage`).
fn at<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// `vmatrace probes --json`: `{ "plan": ProbePlan, "with_all_capabilities"?: ProbePlan }`.
/// Records the coverage line and which events are directly observed.
pub fn plan(j: &Value, v: &mut Verdict) {
    let Some(plan) = j.get("plan") else {
        v.failures.push("probes: no `plan` in the JSON".into());
        return;
    };
    let points = at(plan, "points").and_then(Value::as_array);
    let coverage = at(plan, "coverage").and_then(Value::as_array);
    let (Some(points), Some(coverage)) = (points, coverage) else {
        v.failures
            .push("probes: `plan.points` or `plan.coverage` missing or not arrays".into());
        return;
    };
    if points.is_empty() {
        v.failures
            .push("probes: the plan attaches nothing on this kernel".into());
    }
    let (mut direct, mut proxy, mut none) = (Vec::new(), Vec::new(), Vec::new());
    for c in coverage {
        let event = c
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_string();
        match at(c, "status.status").and_then(Value::as_str) {
            Some("direct") => direct.push(event),
            Some("proxy") => proxy.push(event),
            Some("unobservable") => {
                let why = at(c, "status.reason").and_then(Value::as_str).unwrap_or("");
                none.push(format!("{event} ({why})"));
            }
            other => v.failures.push(format!(
                "probes: coverage of {event} has unknown status {other:?}"
            )),
        }
    }
    let generation = plan
        .get("generation")
        .map(|g| g.to_string())
        .unwrap_or_default();
    v.info.push(format!(
        "plan: generation {generation}, {} attach points; {} of {} logical events direct, {} via proxy",
        points.len(),
        direct.len(),
        coverage.len(),
        proxy.len()
    ));
    v.info.push(format!("plan: direct: {}", direct.join(" ")));
    if !proxy.is_empty() {
        v.info.push(format!("plan: proxy: {}", proxy.join(" ")));
    }
    if !none.is_empty() {
        v.info
            .push(format!("plan: unobservable: {}", none.join("; ")));
    }
    v.direct_events = direct;
}

/// Operations a `--forks` workload run must have done at least once.
const STRESS_OPS: &[&str] = &[
    "reader_touch",
    "reader_copy",
    "mprotect",
    "mmap_replace",
    "munmap",
    "mremap",
    "madvise_dontneed",
];
const FORK_OPS: &[&str] = &["fork", "killed_during_fork"];

/// `vmatrace stress --json`.
pub fn stress(step: &str, j: &Value, forks: bool, v: &mut Verdict) {
    let Some(ops) = j.get("ops").and_then(Value::as_object) else {
        v.failures
            .push(format!("{step}: no `ops` object in the stress report"));
        return;
    };
    let n = |k: &str| ops.get(k).and_then(Value::as_u64);
    let wanted = STRESS_OPS.iter().chain(if forks { FORK_OPS } else { &[] });
    for k in wanted {
        match n(k) {
            Some(0) => v
                .failures
                .push(format!("{step}: the workload never did `{k}`")),
            None => v
                .failures
                .push(format!("{step}: `ops.{k}` missing from the stress report")),
            Some(_) => {}
        }
    }
    if let Some(e) = n("errors").filter(|e| *e > 0) {
        v.failures.push(format!(
            "{step}: {e} workload operations failed: {}",
            j.get("errors").map(|e| e.to_string()).unwrap_or_default()
        ));
    }
    let line: Vec<String> = ops.iter().map(|(k, n)| format!("{k}={n}")).collect();
    v.info.push(format!(
        "{step}: {} (minor faults {})",
        line.join(" "),
        j.get("minor_faults")
            .map(|m| m.to_string())
            .unwrap_or_default()
    ));
}

/// The first path that exists.
fn first<'a>(j: &'a Value, paths: &[&str]) -> Option<(&'a Value, String)> {
    paths
        .iter()
        .find_map(|p| at(j, p).map(|v| (v, p.to_string())))
}

/// A count that may be a number or an object with a `total`.
fn count(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.get("total").and_then(Value::as_u64))
}

/// `vmatrace run --headless --json`: the plan attached what it said, each directly
/// observed event was seen, no anomalies, no unexplained loss.
pub fn run_summary(j: &Value, v: &mut Verdict) {
    // Attach: every planned point attached (or the summary lists the failures).
    match first(j, &["attach.failed", "attached.failed", "plan.failed"]) {
        Some((f, _)) => {
            let failed = f
                .as_array()
                .map(Vec::len)
                .or_else(|| f.as_u64().map(|n| n as usize));
            match failed {
                Some(0) => {}
                Some(n) => v.failures.push(format!(
                    "run: {n} planned attach points did not attach: {f}"
                )),
                None => v
                    .failures
                    .push(format!("run: unreadable attach failures: {f}")),
            }
        }
        None => v
            .failures
            .push("run: summary has no attach outcome (`attach.failed`)".into()),
    }
    // Events per logical event.
    match first(j, &["events", "events_by_logical_event", "logical_events"]) {
        Some((ev, path)) => {
            let get = |k: &str| ev.get(k).and_then(count);
            let mut seen = Vec::new();
            for e in v.direct_events.clone() {
                match get(&e) {
                    Some(0) => v
                        .failures
                        .push(format!("run: directly observed event `{e}` was never seen")),
                    None => v
                        .failures
                        .push(format!("run: `{path}.{e}` missing from the summary")),
                    Some(n) => seen.push(format!("{e}={n}")),
                }
            }
            if let Some(obj) = ev.as_object() {
                let all: Vec<String> = obj
                    .iter()
                    .map(|(k, n)| {
                        format!(
                            "{k}={}",
                            count(n)
                                .map(|c| c.to_string())
                                .unwrap_or_else(|| n.to_string())
                        )
                    })
                    .collect();
                v.info.push(format!("run: events {}", all.join(" ")));
            }
        }
        None => v
            .failures
            .push("run: summary has no per-event counts (`events`)".into()),
    }
    match first(j, &["anomalies.total", "anomalies"]).and_then(|(a, _)| count(a).map(|n| (n, a))) {
        Some((0, _)) => v.info.push("run: anomalies 0".into()),
        Some((n, a)) => v.failures.push(format!("run: {n} anomalies: {a}")),
        None => v
            .failures
            .push("run: summary has no anomaly total (`anomalies`)".into()),
    }
    match first(j, &["losses.total", "losses", "lost"]).and_then(|(l, _)| count(l).map(|n| (n, l)))
    {
        Some((0, _)) => v.info.push("run: losses 0".into()),
        Some((n, l)) => {
            // A loss is acceptable only when the summary says what it was.
            let explained = l.get("explained").and_then(Value::as_bool).unwrap_or(false)
                || l.get("reason").is_some();
            if explained {
                v.info.push(format!("run: losses {n} (explained: {l})"));
            } else {
                v.failures
                    .push(format!("run: {n} events lost without explanation: {l}"));
            }
        }
        None => v
            .failures
            .push("run: summary has no loss total (`losses`)".into()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn plan_coverage_and_direct_events() {
        let j = json!({"plan": {"generation": "D", "points": [{"target": "__vma_start_write"}],
            "coverage": [
                {"event": "write_lock_request", "status": {"status": "direct", "points": [0]}},
                {"event": "vma_free", "status": {"status": "proxy", "via": "x", "points": [0]}},
                {"event": "mark_detached_fast", "status": {"status": "unobservable", "reason": "inlined"}}]}});
        let mut v = Verdict::default();
        plan(&j, &mut v);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        assert_eq!(v.direct_events, ["write_lock_request"]);
        assert!(
            v.info[0].contains("1 of 3 logical events direct, 1 via proxy"),
            "{:?}",
            v.info
        );
        let mut bad = Verdict::default();
        plan(&json!({"plan": {"points": [], "coverage": []}}), &mut bad);
        assert_eq!(bad.failures.len(), 1);
    }

    #[test]
    fn stress_needs_every_op() {
        let mut ops = serde_json::Map::new();
        for k in STRESS_OPS.iter().chain(FORK_OPS) {
            ops.insert(k.to_string(), json!(3));
        }
        ops.insert("errors".into(), json!(0));
        let mut v = Verdict::default();
        stress("stress", &json!({"ops": ops.clone()}), true, &mut v);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        ops.insert("fork".into(), json!(0));
        let mut v = Verdict::default();
        stress("stress", &json!({"ops": ops.clone()}), true, &mut v);
        assert_eq!(v.failures.len(), 1, "{:?}", v.failures);
        let mut v = Verdict::default();
        stress("stress", &json!({"ops": ops}), false, &mut v);
        assert!(
            v.failures.is_empty(),
            "without --forks a zero fork count is fine"
        );
    }

    #[test]
    fn run_summary_asserts() {
        let mut v = Verdict {
            direct_events: vec!["write_lock_request".into(), "vma_free".into()],
            ..Default::default()
        };
        let good = json!({"attach": {"failed": []}, "events": {"write_lock_request": 5, "vma_free": {"total": 2}},
            "anomalies": {"total": 0}, "losses": 0});
        run_summary(&good, &mut v);
        assert!(v.failures.is_empty(), "{:?}", v.failures);
        let mut v = Verdict {
            direct_events: vec!["write_lock_request".into()],
            ..Default::default()
        };
        run_summary(
            &json!({"events": {"write_lock_request": 0}, "anomalies": 2, "losses": {"total": 4}}),
            &mut v,
        );
        let all = v.failures.join("\n");
        assert!(
            all.contains("never seen")
                && all.contains("2 anomalies")
                && all.contains("without explanation")
                && all.contains("attach outcome"),
            "{all}"
        );
    }
}
