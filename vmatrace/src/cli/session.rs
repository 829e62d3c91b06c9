//! What `run`, `record` and `replay` share: output options, the sinks they imply, the
//! userspace event filter, and printing the exit summary.

use std::{
    io::Write,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError, atomic::AtomicBool},
    time::Duration,
};

use anyhow::Context;
use vmatrace_common::Event;

use super::signals::OnHangup;
use crate::{
    export::{
        AnomalyLogSink, JsonLinesFile, LogContext, LogStats, Redactor, Rotation, summary::Summary,
    },
    mapping::MappingNames,
    pipeline::{Pipeline, SharedSink},
    stats::{Stats, StatsSnapshot},
    trace::TraceHeader,
};

/// Output options of every tracing subcommand.
#[derive(Clone, Debug, clap::Args)]
pub struct OutputArgs {
    /// Append every anomaly (and every counted loss) to PATH as JSON Lines, one object
    /// per line (schema: docs/anomaly-log.md). Created with mode 0640.
    #[arg(long, value_name = "PATH")]
    pub anomaly_log: Option<PathBuf>,
    /// Rotate the anomaly log before a line would make it larger than BYTES
    /// (PATH → PATH.1 → PATH.2 …). Default: never rotate.
    #[arg(long, value_name = "BYTES", requires = "anomaly_log")]
    pub anomaly_log_max_bytes: Option<u64>,
    /// Rotated anomaly logs to keep (PATH.1 … PATH.N); 0 keeps none.
    #[arg(long, value_name = "N", default_value_t = 5, requires = "anomaly_log")]
    pub anomaly_log_keep: u32,
    /// Write kernel addresses (vm_area_struct *, mm_struct *, …) as they are. By default
    /// they are replaced by keyed hashes with a per-run random key (same object → same
    /// hash within one run), so an exported log does not reveal the KASLR layout.
    #[arg(long)]
    pub raw_addresses: bool,
    /// Print the exit summary as one JSON object on stdout (schema: docs/summary.md)
    /// instead of text.
    #[arg(long)]
    pub json: bool,
    /// Stop after this long: `10` (seconds), `500ms`, `10s`, `2m`, `1h`. On replay: this
    /// much recorded time from the first record, however fast it is replayed.
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub telemetry: super::telemetry::TelemetryArgs,
}

impl OutputArgs {
    /// SIGHUP reopens the anomaly log when there is one (after an outside rotation, e.g.
    /// logrotate), and otherwise stops the session like SIGTERM.
    pub fn on_hangup(&self) -> OnHangup {
        if self.anomaly_log.is_some() {
            OnHangup::Reopen(Arc::new(AtomicBool::new(false)))
        } else {
            OnHangup::Stop
        }
    }
}

/// Task filters. Live they are applied in the kernel; on replay in userspace.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct FilterArgs {
    /// Only trace this process (tgid).
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only trace tasks whose comm (task name, at most 15 bytes) starts with COMM.
    #[arg(long, value_name = "COMM", value_parser = parse_comm)]
    pub comm: Option<String>,
}

impl FilterArgs {
    pub fn is_empty(&self) -> bool {
        self.pid.is_none() && self.comm.is_none()
    }

    /// The same test the eBPF programs make, for replayed events.
    pub fn matches(&self, e: &Event) -> bool {
        if let Some(pid) = self.pid
            && e.tgid() != pid
        {
            return false;
        }
        if let Some(c) = &self.comm
            && !e.comm.starts_with(c.as_bytes())
        {
            return false;
        }
        true
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (examples: 10, 10s, 500ms, 2m)"))?;
    let secs = match unit {
        "" | "s" => v,
        "ms" => v / 1e3,
        "us" | "µs" => v / 1e6,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit {unit:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    if !secs.is_finite() || secs <= 0.0 || secs > 366.0 * 86_400.0 {
        return Err(format!(
            "{s:?}: the duration must be positive and under a year"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--slow-wait`: a duration, or `0`/`off` for never.
pub fn parse_slow_wait(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "0" | "off" => Ok(Duration::ZERO),
        _ => parse_duration(s),
    }
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!(
            "{s:?}: a comm is 1 to 15 bytes (the kernel's TASK_COMM_LEN is 16 with the NUL)"
        ));
    }
    Ok(s.to_string())
}

/// Handles to what the output sinks report, read after the pipeline ends.
#[derive(Default)]
pub struct OutputHandles {
    pub anomaly_log: Option<Arc<Mutex<LogStats>>>,
    /// Wait-time histograms, top processes/VMAs, reader outcomes for the summary.
    pub stats: Option<Arc<Mutex<Stats>>>,
}

impl OutputHandles {
    pub fn stats_snapshot(&self) -> Option<StatsSnapshot> {
        self.stats
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).snapshot())
    }

    pub fn anomaly_log_stats(&self) -> Option<LogStats> {
        self.anomaly_log
            .as_ref()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    /// Another handle to the same sinks' reports (for the running snapshot's closure).
    pub fn share(&self) -> OutputHandles {
        OutputHandles {
            anomaly_log: self.anomaly_log.clone(),
            stats: self.stats.clone(),
        }
    }
}

/// Attach the dashboard for a session described by `header` (`detail`: what the header
/// line names after the source). It shows the session's own statistics when the output
/// sinks already keep them, rather than computing them twice.
pub fn attach_dashboard(
    pipeline: &mut crate::pipeline::Pipeline,
    kind: crate::tui::SourceKind,
    header: &crate::trace::TraceHeader,
    detail: String,
    handles: &OutputHandles,
) -> crate::tui::SharedState {
    let ctx =
        crate::tui::DashboardContext::new(kind, header.kernel_release.clone(), header.generation)
            .with_detail(detail)
            .with_plan(header.plan.clone());
    let ctx = crate::tui::with_wall_clock(ctx, header.clock);
    match &handles.stats {
        Some(stats) => crate::tui::attach_sharing_stats(pipeline, ctx, stats.clone()),
        None => crate::tui::attach_to(pipeline, ctx),
    }
}

/// Where a session's events come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Live,
    Replay,
}

/// Add the statistics and the sinks `out` asks for. Fails (before tracing starts) if the
/// anomaly log cannot be opened: better to refuse than to trace without the log the
/// operator asked for.
///
/// `source`: a live session's anomalies name their mappings from `/proc`; a replay's do
/// not (its processes are not this machine's).
pub fn add_output_sinks(
    pipeline: &mut Pipeline,
    out: &OutputArgs,
    header: &TraceHeader,
    on_hup: &OnHangup,
    source: Source,
) -> anyhow::Result<OutputHandles> {
    let mut handles = OutputHandles::default();
    let (sink, stats) = SharedSink::new(Stats::with_plan(header.generation, header.plan.as_ref()));
    pipeline.add_sink(Box::new(sink));
    handles.stats = Some(stats);
    if let Some(path) = &out.anomaly_log {
        let rotation = Rotation {
            max_bytes: out.anomaly_log_max_bytes,
            keep: out.anomaly_log_keep,
        };
        let mut file = JsonLinesFile::open(path, rotation)
            .with_context(|| format!("cannot open the anomaly log {}", path.display()))?;
        if let OnHangup::Reopen(flag) = on_hup {
            file = file.reopen_on(Arc::clone(flag));
        }
        let redactor = if out.raw_addresses {
            Redactor::raw()
        } else {
            Redactor::random().context("no randomness for the address-hashing key")?
        };
        let mut sink = AnomalyLogSink::new(file, LogContext::from_header(header), redactor);
        if source == Source::Live {
            sink = sink.with_mapping_names(MappingNames::default());
        }
        handles.anomaly_log = Some(sink.stats());
        pipeline.add_sink(Box::new(sink));
    }
    Ok(handles)
}

/// Print the summary: JSON or text, on stdout unless stdout carries a trace. When stdout
/// carries `--snapshot-every` lines, the summary is one JSON line like them.
pub fn print_summary(summary: &Summary, out: &OutputArgs, stdout_taken: bool) {
    // A terminal that went away (ssh dropped) would fail the print with EIO, and the
    // message about it too (a panic in `eprintln!`): drop both instead.
    crate::tui::tty::detach_hung_up_streams();
    let text = if out.telemetry.snapshots_on_stdout() && !stdout_taken {
        let mut s = serde_json::to_string(summary)
            .unwrap_or_else(|e| format!("{{\"error\":\"cannot serialise the summary: {e}\"}}"));
        s.push('\n');
        s
    } else if out.json {
        let mut s = summary.to_json();
        s.push('\n');
        s
    } else {
        summary.human()
    };
    let r = if stdout_taken {
        std::io::stderr().write_all(text.as_bytes())
    } else {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes()).and_then(|()| out.flush())
    };
    if let Err(e) = r {
        // stdout closed (e.g. `| head`): the summary is lost, say so where we still can.
        eprintln!("vmatrace: cannot print the summary: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("1e999").is_err());
    }

    #[test]
    fn filter_matches_like_the_kernel() {
        let mut e = Event::ZERO;
        e.pid_tgid = (77 << 32) | 78;
        e.comm[..6].copy_from_slice(b"stress");
        let f = FilterArgs {
            pid: Some(77),
            comm: Some("str".into()),
        };
        assert!(f.matches(&e));
        assert!(
            !FilterArgs {
                pid: Some(78),
                comm: None
            }
            .matches(&e)
        );
        assert!(
            !FilterArgs {
                pid: None,
                comm: Some("stx".into())
            }
            .matches(&e)
        );
        assert!(FilterArgs::default().matches(&e));
        assert!(parse_comm("0123456789abcdef").is_err());
    }
}
