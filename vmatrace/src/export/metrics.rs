//! Prometheus metrics, rendered from a [`Summary`]: the values a scrape shows are the
//! values of the JSON summary made at the same moment, by construction (the summary is
//! the only input). Names, labels and the bounds on label sets: `docs/fleet.md`.
//!
//! Rendering is pure (no I/O, no clock): `export::metrics_server` serves the latest
//! snapshot that `export::snapshots` publishes.

use std::{collections::BTreeMap, fmt};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry, Unit},
};

use super::summary::Summary;
use crate::{
    stats::{HistogramSnapshot, histogram::bucket_range},
    validate::AnomalyKind,
};

/// Highest log2 bucket exposed with its own `le`: bucket `i` holds waits of
/// `[2^(i-1), 2^i - 1]` ns, as in the summary; 2^40 ns is 18 minutes, and waits longer
/// than that fall in `+Inf` only, which keeps every histogram at 42 series.
pub const MAX_BUCKET: usize = 40;

/// Processes exposed with their own series (the summary's top processes by total
/// exclusion wait, at most this many; which processes they are changes over time).
pub const TOP_PROCESSES: usize = 10;

/// The text format to answer a scrape with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/openmetrics-text; version=1.0.0` (what Prometheus asks for first).
    OpenMetrics,
    /// `text/plain; version=0.0.4`, for clients that do not accept OpenMetrics.
    PrometheusText,
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::PrometheusText => "text/plain; version=0.0.4; charset=utf-8",
        }
    }

    /// From a request's `Accept` header: OpenMetrics unless the client names only other
    /// types (no header, `*/*` and OpenMetrics itself all get OpenMetrics).
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(a) if !a.contains("application/openmetrics-text") && a.contains("text/plain") => {
                Format::PrometheusText
            }
            _ => Format::OpenMetrics,
        }
    }
}

/// The metrics text of `summary` (ends with `# EOF` in OpenMetrics).
pub fn render(summary: &Summary, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SummaryCollector(summary.clone())));
    let mut out = String::new();
    let r = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry),
        Format::PrometheusText => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)
        }
    };
    if let Err(e) = r {
        // Writing to a String cannot fail; say so in the output if it ever does.
        out = format!("# vmatrace: cannot encode the metrics: {e}\n");
    }
    out
}

#[derive(Debug)]
struct SummaryCollector(Summary);

type Labels<'a> = Vec<(&'a str, String)>;

fn ns_to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// One metric family: its descriptor, then one sample per label set; nothing at all when
/// there are no samples (e.g. program run times without `--bpf-stats`).
fn family<'a, T>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    ty: MetricType,
    samples: impl IntoIterator<Item = (Labels<'a>, T)>,
    mut encode: impl FnMut(&mut MetricEncoder, &T) -> fmt::Result,
) -> fmt::Result {
    let samples: Vec<_> = samples.into_iter().collect();
    if samples.is_empty() {
        return Ok(());
    }
    let mut m = enc.encode_descriptor(name, help, unit, ty)?;
    for (labels, v) in samples {
        if labels.is_empty() {
            encode(&mut m, &v)?;
        } else {
            encode(&mut m.encode_family(&labels)?, &v)?;
        }
    }
    Ok(())
}

fn counters<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> fmt::Result {
    family(
        enc,
        name,
        help,
        unit,
        MetricType::Counter,
        samples,
        |m, v| m.encode_counter::<NoLabelSet, _, u64>(v, None),
    )
}

fn counters_f64<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels<'a>, f64)>,
) -> fmt::Result {
    family(
        enc,
        name,
        help,
        unit,
        MetricType::Counter,
        samples,
        |m, v| m.encode_counter::<NoLabelSet, _, f64>(v, None),
    )
}

fn gauges<'a>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl IntoIterator<Item = (Labels<'a>, f64)>,
) -> fmt::Result {
    family(enc, name, help, unit, MetricType::Gauge, samples, |m, v| {
        m.encode_gauge(v)
    })
}

/// The summary's log2 buckets as (upper bound in seconds, count) pairs, non-cumulative,
/// `+Inf` last.
pub fn log2_buckets(h: &HistogramSnapshot) -> Vec<(f64, u64)> {
    let mut counts = [0u64; MAX_BUCKET + 2];
    for b in &h.buckets {
        let i = (0..=MAX_BUCKET)
            .find(|&i| bucket_range(i).1 == b.high_ns)
            .unwrap_or(MAX_BUCKET + 1);
        counts[i] += b.count;
    }
    (0..=MAX_BUCKET + 1)
        .map(|i| {
            let le = if i > MAX_BUCKET {
                f64::INFINITY
            } else {
                ns_to_s(bucket_range(i).1)
            };
            (le, counts[i])
        })
        .collect()
}

fn keyed<'a>(label: &'a str, m: &'a BTreeMap<String, u64>) -> Vec<(Labels<'a>, u64)> {
    m.iter()
        .map(|(k, v)| (vec![(label, k.clone())], *v))
        .collect()
}

impl Collector for SummaryCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let s = &self.0;
        let e = &mut enc;
        gauges(
            e,
            "vmatrace_build_info",
            "vmatrace's version and git revision, and the kernel it traces (value 1)",
            None,
            [(
                vec![
                    ("version", s.vmatrace_version.clone()),
                    ("git_revision", s.git_revision.clone()),
                    ("kernel_release", s.kernel.clone()),
                    ("generation", s.generation.clone()),
                ],
                1.0,
            )],
        )?;
        gauges(
            e,
            "vmatrace_run_info",
            "This vmatrace process: run id (as on the summary and anomaly-log lines), mode, \
             traced host (value 1)",
            None,
            [(
                vec![
                    ("run_id", s.run_id.clone()),
                    ("mode", s.mode.clone()),
                    ("host", s.host.clone()),
                ],
                1.0,
            )],
        )?;
        gauges(
            e,
            "vmatrace_session_duration",
            "Live: time traced; replay: recorded time between the first and the last record",
            Some(&Unit::Seconds),
            [(vec![], s.duration_s)],
        )?;
        counters(
            e,
            "vmatrace_logical_events",
            "Per-VMA lock events by logical event, counted as the summary's \
             events.by_logical_event (observed: direct, proxy, unobservable, unknown)",
            None,
            s.events.by_logical_event.iter().map(|(k, c)| {
                (
                    vec![("event", k.clone()), ("observed", c.observed.clone())],
                    c.count,
                )
            }),
        )?;
        counters(
            e,
            "vmatrace_stream_events",
            "Events streamed by the eBPF programs, by event kind",
            None,
            keyed("kind", &s.events.by_kind),
        )?;
        counters(
            e,
            "vmatrace_anomalies",
            "Anomalies the validator reported, by kind (every kind listed)",
            None,
            AnomalyKind::ALL.iter().map(|k| {
                (
                    vec![("kind", k.key().to_string())],
                    s.anomalies.by_kind.get(k.key()).copied().unwrap_or(0),
                )
            }),
        )?;
        let l = &s.losses;
        counters(
            e,
            "vmatrace_losses",
            "Things lost (events, records, log lines) by reason: kernel loss counters, \
             undecodable records, anomaly-log lines, unrecorded events",
            None,
            l.kernel
                .iter()
                .map(|(k, v)| (vec![("reason", k.clone())], *v))
                .chain(
                    [
                        ("undecodable", l.undecodable),
                        ("anomaly_log_lines", l.anomaly_log_lines),
                        ("unrecorded_events", l.unrecorded_events),
                    ]
                    .into_iter()
                    .map(|(k, v)| (vec![("reason", k.to_string())], v)),
                ),
        )?;
        counters(
            e,
            "vmatrace_reader_outcomes",
            "Reader-side kernel counters (lock_vma_under_rcu outcomes, releases, wake-ups)",
            None,
            keyed("outcome", &s.reader),
        )?;
        if let Some(st) = &s.stats {
            let hists = [
                ("exclusion", &st.exclusion_wait),
                ("write_lock", &st.write_lock_wait),
                ("detach", &st.detach_wait),
            ];
            {
                let mut m = e.encode_descriptor(
                    "vmatrace_writer_wait",
                    "Writer waits (paired returns) in the summary's log2 buckets: exclusion \
                 (waiting for readers to leave), write_lock (whole __vma_start_write slow \
                 path), detach (the exclusions of a detach)",
                    Some(&Unit::Seconds),
                    MetricType::Histogram,
                )?;
                for (wait, h) in hists {
                    let labels: Labels = vec![("wait", wait.to_string())];
                    let mut fm = m.encode_family(&labels)?;
                    fm.encode_histogram::<NoLabelSet>(
                        ns_to_s(h.sum_ns),
                        h.percentiles.count,
                        &log2_buckets(h),
                        None,
                    )?;
                }
            }
            let top: Vec<_> = st.top_processes.iter().take(TOP_PROCESSES).collect();
            let who = |r: &crate::stats::AggregateRow| -> Labels {
                vec![("pid", r.tgid.to_string()), ("comm", r.comm.clone())]
            };
            gauges(
                e,
                "vmatrace_top_process_exclusion_wait",
                "Total exclusion wait of the processes that waited longest (at most 10 \
                 series; the set changes as processes come and go)",
                Some(&Unit::Seconds),
                top.iter().map(|r| (who(r), ns_to_s(r.total_wait_ns))),
            )?;
            gauges(
                e,
                "vmatrace_top_process_exclusions",
                "Exclusions of the processes in vmatrace_top_process_exclusion_wait_seconds",
                None,
                top.iter().map(|r| (who(r), r.exclusions as f64)),
            )?;
        }
        let mut hooks: BTreeMap<(String, String, &str), u64> = BTreeMap::new();
        for h in &s.hooks {
            let state = if h.attached { "attached" } else { "failed" };
            *hooks
                .entry((h.target.clone(), h.mode.clone(), state))
                .or_default() += 1;
        }
        gauges(
            e,
            "vmatrace_hooks",
            "eBPF hooks by kernel function (or tracepoint), mechanism and state",
            None,
            hooks.into_iter().map(|((function, mechanism, state), n)| {
                (
                    vec![
                        ("function", function),
                        ("mechanism", mechanism),
                        ("state", state.to_string()),
                    ],
                    n as f64,
                )
            }),
        )?;
        let t = &s.tracer;
        counters_f64(
            e,
            "vmatrace_tracer_cpu",
            "CPU time of the vmatrace process (getrusage), by mode",
            Some(&Unit::Seconds),
            [
                (vec![("mode", "user".to_string())], t.cpu_user_s),
                (vec![("mode", "system".to_string())], t.cpu_system_s),
            ],
        )?;
        gauges(
            e,
            "vmatrace_tracer_resident_memory",
            "Resident set size of the vmatrace process",
            Some(&Unit::Bytes),
            [(vec![], t.rss_mib * 1024.0 * 1024.0)],
        )?;
        gauges(
            e,
            "vmatrace_tracer_max_resident_memory",
            "Peak resident set size of the vmatrace process",
            Some(&Unit::Bytes),
            [(vec![], t.max_rss_mib * 1024.0 * 1024.0)],
        )?;
        let with_stats: Vec<_> = s.programs.iter().filter(|p| p.run_cnt > 0).collect();
        let prog = |name: &str| -> Labels { vec![("program", name.to_string())] };
        counters(
            e,
            "vmatrace_bpf_program_runs",
            "Runs of each eBPF program (with --bpf-stats only)",
            None,
            with_stats.iter().map(|p| (prog(&p.name), p.run_cnt)),
        )?;
        counters_f64(
            e,
            "vmatrace_bpf_program_run_time",
            "Time spent in each eBPF program (with --bpf-stats only)",
            Some(&Unit::Seconds),
            with_stats
                .iter()
                .map(|p| (prog(&p.name), ns_to_s(p.run_time_ns))),
        )?;
        counters(
            e,
            "vmatrace_bpf_program_skipped_runs",
            "Runs of each eBPF program the kernel skipped (recursion protection): events \
             never seen",
            None,
            s.programs.iter().map(|p| (prog(&p.name), p.skipped_runs)),
        )?;
        let v = &s.validator;
        counters(
            e,
            "vmatrace_validator_resyncs",
            "Times the validator forgot per-VMA state because of a loss",
            None,
            [(vec![], v.resyncs)],
        )?;
        gauges(
            e,
            "vmatrace_validator_tracked_vmas",
            "VMAs the refcount model tracks",
            None,
            [(vec![], v.tracked_vmas as f64)],
        )?;
        if let Some(log) = &s.anomaly_log {
            counters(
                e,
                "vmatrace_anomaly_log_lines",
                "Lines written to the anomaly log",
                None,
                [(vec![], log.lines_written)],
            )?;
            counters(
                e,
                "vmatrace_anomaly_log_write_errors",
                "Failed writes (and reopens) of the anomaly log",
                None,
                [(vec![], log.write_errors)],
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use vmatrace_common::{Event, EventKind, event::flags, model::Generation};

    use super::*;
    use crate::{
        export::summary::SummaryInput,
        pipeline::{Pipeline, SharedSink},
        stats::Stats,
        trace::{HookRecord, TraceHeader},
    };

    /// A 6.19 write lock that waited `wait` ns, and a slow detach that waited `detach` ns.
    fn summary(wait: u64, detach: u64) -> Summary {
        let mut p = Pipeline::new(Generation::V6_19);
        let (sink, stats) = SharedSink::new(Stats::new(Generation::V6_19));
        p.add_sink(Box::new(sink));
        let mut w = Event::ZERO;
        w.kind = EventKind::WriteLockExit as u16;
        w.probe = vmatrace_common::event::ProbeId::VmaStartWrite as u8;
        w.pid_tgid = (42 << 32) | 42;
        w.comm[..4].copy_from_slice(b"fork");
        w.flags = flags::PAIRED | flags::RET;
        w.wait_ns = wait;
        let mut d = w;
        d.kind = EventKind::DetachExit as u16;
        d.probe = vmatrace_common::event::ProbeId::VmaMarkDetached as u8;
        d.entry_refcnt = 2;
        d.wait_ns = detach;
        p.handle_events(&[w, d]);
        p.finish();
        let mut header = TraceHeader::synthetic(Generation::V6_19);
        header.kernel_release = "6.19.1".into();
        header.hooks = vec![
            HookRecord {
                target: "__vma_start_write".into(),
                program: "vsw_fentry".into(),
                mode: "fentry".into(),
                attached: true,
                error: None,
            },
            HookRecord {
                target: "__vma_start_write".into(),
                program: "vsw_fexit".into(),
                mode: "fexit".into(),
                attached: true,
                error: None,
            },
            HookRecord {
                target: "vma_refcount_put".into(),
                program: "vrp_kprobe".into(),
                mode: "kprobe".into(),
                attached: false,
                error: Some("notrace".into()),
            },
        ];
        let snapshot = stats.lock().expect("stats").snapshot();
        Summary::build(SummaryInput {
            mode: "replay",
            header: &header,
            totals: &p.totals,
            validator: &p.validator,
            duration_ns: 2_000_000_000,
            stop_reason: "end of trace".into(),
            anomaly_log: None,
            recording: None,
            replay: None,
            stats: Some(snapshot),
            programs: Vec::new(),
            startup_cpu_s: None,
            stop_cpu_s: None,
        })
    }

    /// `name{labels} value` lines of the text (label order as written).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.split(' ').next()?.parse().ok())
    }

    #[test]
    fn values_are_the_summarys() {
        let s = summary(1500, 70_000);
        let text = render(&s, Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        let got =
            |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
        assert_eq!(
            got(r#"vmatrace_logical_events_total{event="write_lock_result",observed="unknown"}"#),
            s.events.by_logical_event["write_lock_result"].count as f64
        );
        assert_eq!(
            got(r#"vmatrace_stream_events_total{kind="write_lock_exit"}"#),
            1.0
        );
        // Every anomaly kind has a series, zeros included.
        assert_eq!(got(r#"vmatrace_anomalies_total{kind="lost_wakeup"}"#), 0.0);
        assert_eq!(got(r#"vmatrace_losses_total{reason="undecodable"}"#), 0.0);
        assert_eq!(
            got(r#"vmatrace_reader_outcomes_total{outcome="reader_acquire_ok"}"#),
            0.0
        );
        // 1500 ns is in bucket [1024, 2047]; 70 µs in [65536, 131071].
        let st = s.stats.as_ref().expect("stats");
        assert_eq!(
            got(r#"vmatrace_writer_wait_seconds_count{wait="write_lock"}"#),
            st.write_lock_wait.percentiles.count as f64
        );
        assert_eq!(
            got(r#"vmatrace_writer_wait_seconds_sum{wait="detach"}"#),
            70e-6
        );
        assert_eq!(
            got(r#"vmatrace_writer_wait_seconds_bucket{le="0.000001023",wait="write_lock"}"#),
            0.0
        );
        assert_eq!(
            got(r#"vmatrace_writer_wait_seconds_bucket{le="0.000002047",wait="write_lock"}"#),
            1.0
        );
        assert_eq!(
            got(r#"vmatrace_writer_wait_seconds_bucket{le="+Inf",wait="detach"}"#),
            1.0
        );
        // 6.19 without a plan: the detach's wait is an exclusion wait too.
        assert_eq!(
            got(r#"vmatrace_writer_wait_seconds_count{wait="exclusion"}"#),
            2.0
        );
        assert_eq!(
            got(
                r#"vmatrace_hooks{function="__vma_start_write",mechanism="fentry",state="attached"}"#
            ),
            1.0
        );
        assert_eq!(
            got(r#"vmatrace_hooks{function="vma_refcount_put",mechanism="kprobe",state="failed"}"#),
            1.0
        );
        assert_eq!(
            got(r#"vmatrace_top_process_exclusions{pid="42",comm="fork"}"#),
            2.0
        );
        let info = format!(
            r#"vmatrace_build_info{{version="{}",git_revision="{}",kernel_release="6.19.1",generation="6.19"}}"#,
            s.vmatrace_version, s.git_revision
        );
        assert_eq!(got(&info), 1.0);
        assert!(text.contains(&format!(r#"run_id="{}""#, s.run_id)));
        // No program statistics: no empty families.
        assert!(!text.contains("vmatrace_bpf_program_runs"), "{text}");
    }

    #[test]
    fn buckets_are_the_summarys_log2_buckets() {
        let s = summary(0, 1 << 45);
        let st = s.stats.expect("stats");
        let b = log2_buckets(&st.write_lock_wait);
        assert_eq!(b.len(), MAX_BUCKET + 2);
        // A zero wait is bucket 0 (le 0), as in the summary.
        assert_eq!(b[0], (0.0, 1));
        assert_eq!(b[1].0, 1e-9);
        assert_eq!(b[10].0, 1023e-9);
        // Beyond 2^40 ns only +Inf.
        let d = log2_buckets(&st.detach_wait);
        assert_eq!(d.last(), Some(&(f64::INFINITY, 1)));
        assert_eq!(d.iter().map(|(_, n)| n).sum::<u64>(), 1);
    }

    #[test]
    fn both_formats_and_negotiation() {
        let s = summary(1, 1);
        let prom = render(&s, Format::PrometheusText);
        assert!(!prom.contains("# EOF"));
        assert!(
            prom.contains("# TYPE vmatrace_anomalies_total counter"),
            "{prom}"
        );
        assert_eq!(Format::negotiate(None), Format::OpenMetrics);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("text/plain")),
            Format::PrometheusText
        );
    }
}
