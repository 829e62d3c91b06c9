//! What a session shows while it runs, for a fleet: the Prometheus endpoint
//! (`--metrics-listen`) and periodic JSON summary snapshots (`--snapshot-every`). Both read
//! the summary snapshots the pipeline publishes (`export::snapshots`).

use std::{
    io::Write,
    net::SocketAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;

use super::{exit::Failure, session::parse_duration};
use crate::{
    export::{
        anomaly_log::LOG_FILE_MODE,
        metrics_server,
        snapshots::{LatestSummary, MakeSummary, SNAPSHOT_PERIOD, SnapshotSink},
    },
    pipeline::Pipeline,
};

#[derive(Clone, Debug, Default, clap::Args)]
pub struct TelemetryArgs {
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR:PORT/metrics while the
    /// session runs, e.g. 127.0.0.1:9464 (names: docs/fleet.md). Values are the JSON
    /// summary's, remade every second.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Write the JSON summary so far every TIME (e.g. 60s) as one line (JSON Lines), with
    /// `stop_reason: "running"` and `ended_at: null`, so a log shipper sees a long run's
    /// progress. On stdout unless --snapshot-file; stdout then carries only JSON lines
    /// (the final summary too is printed as one JSON line).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub snapshot_every: Option<Duration>,
    /// Append the snapshots to FILE (created mode 0640; reopened for every line, so a
    /// rotated file is let go of at once).
    #[arg(long, value_name = "FILE", requires = "snapshot_every")]
    pub snapshot_file: Option<PathBuf>,
}

impl TelemetryArgs {
    /// Snapshot lines go to stdout.
    pub fn snapshots_on_stdout(&self) -> bool {
        self.snapshot_every.is_some() && self.snapshot_file.is_none()
    }

    /// Check what can be checked before anything is traced, bind the endpoint, and start
    /// serving and writing on `rt`. `None` when neither is asked for. `stdout_busy`: stdout
    /// carries a trace or the dashboard.
    pub fn start(
        &self,
        rt: &tokio::runtime::Runtime,
        stdout_busy: bool,
    ) -> anyhow::Result<Option<LatestSummary>> {
        if self.metrics_listen.is_none() && self.snapshot_every.is_none() {
            return Ok(None);
        }
        if self.snapshots_on_stdout() && stdout_busy {
            return Err(Failure::Usage(
                "--snapshot-every writes to stdout, which the dashboard or the trace uses \
                 here: add --snapshot-file FILE (or --headless)"
                    .into(),
            )
            .into());
        }
        let latest = LatestSummary::default();
        if let Some(addr) = self.metrics_listen {
            let listener = metrics_server::bind(rt, addr)?;
            log::info!(
                "serving metrics at http://{}/metrics",
                listener.local_addr().map_or(addr, |a| a)
            );
            rt.spawn(metrics_server::serve(listener, latest.clone()));
        }
        if let Some(every) = self.snapshot_every {
            if let Some(f) = &self.snapshot_file {
                append_line(f, b"")
                    .with_context(|| format!("cannot open the snapshot file {}", f.display()))?;
            }
            rt.spawn(write_snapshots(
                every,
                self.snapshot_file.clone(),
                latest.clone(),
            ));
        }
        Ok(Some(latest))
    }
}

/// Let the pipeline publish its summary snapshots to `latest` (add after the statistics).
pub fn add_snapshot_sink(
    pipeline: &mut Pipeline,
    latest: Option<&LatestSummary>,
    make: MakeSummary,
) {
    if let Some(latest) = latest {
        pipeline.add_sink(Box::new(SnapshotSink::new(
            make,
            latest.clone(),
            SNAPSHOT_PERIOD,
        )));
    }
}

/// `line` plus a newline in one write (nothing at all for an empty line: an open test).
fn append_line(path: &Path, line: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_FILE_MODE)
        .open(path)?;
    if line.is_empty() {
        return Ok(());
    }
    let mut buf = line.to_vec();
    buf.push(b'\n');
    f.write_all(&buf)
}

async fn write_snapshots(every: Duration, file: Option<PathBuf>, latest: LatestSummary) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate: the first line comes after one period.
    tick.tick().await;
    let mut failing = false;
    loop {
        tick.tick().await;
        let Some(s) = latest.get() else { continue };
        let line = match serde_json::to_vec(&*s) {
            Ok(l) => l,
            Err(e) => {
                log::error!("snapshot: cannot serialise the summary: {e}");
                continue;
            }
        };
        let r = match &file {
            Some(f) => append_line(f, &line),
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(&line)
                    .and_then(|()| out.write_all(b"\n"))
                    .and_then(|()| out.flush())
            }
        };
        match r {
            // Once per run of failures, like the anomaly log.
            Err(e) if !failing => {
                log::warn!("snapshot: cannot write: {e}; retrying every period");
                failing = true;
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
    }
}
