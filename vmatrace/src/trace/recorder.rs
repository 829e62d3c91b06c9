//! The pipeline sink that writes a live session to a trace.
//!
//! A failed write (full disk, closed pipe) stops the recording, never the tracing: the
//! error and the number of events that could not be recorded are kept in
//! [`RecordingStatus`] for the summary.

use std::sync::{Arc, Mutex, PoisonError};

use serde::Serialize;
use vmatrace_common::Event;

use super::writer::TraceWriter;
use crate::{
    export::clock::monotonic_ns,
    pipeline::{CounterSnapshot, Sink, Totals},
    validate::Validator,
};

/// What happened to the recording (shared with the CLI for the summary).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RecordingStatus {
    /// Where the trace goes (`-` = stdout).
    pub path: String,
    pub compressed: bool,
    pub events_recorded: u64,
    pub records: u64,
    /// Bytes written so far (final size once finished).
    pub bytes: u64,
    /// The write error that stopped the recording.
    pub error: Option<String>,
    /// Events seen after the recording stopped (they are in the summary, not the trace).
    pub events_not_recorded: u64,
    /// The end record was written and the file closed.
    pub complete: bool,
}

pub struct Recorder {
    writer: Option<TraceWriter>,
    status: Arc<Mutex<RecordingStatus>>,
    /// Events known to have reached the file (at the last successful flush): on a
    /// failure, everything after them may be lost with the writer's buffer.
    flushed_events: u64,
}

impl Recorder {
    pub fn new(writer: TraceWriter, path: &str, compressed: bool) -> Self {
        let status = RecordingStatus {
            path: path.to_string(),
            compressed,
            ..RecordingStatus::default()
        };
        Self {
            writer: Some(writer),
            status: Arc::new(Mutex::new(status)),
            flushed_events: 0,
        }
    }

    /// A handle to read the status after the pipeline has consumed the sink.
    pub fn status(&self) -> Arc<Mutex<RecordingStatus>> {
        Arc::clone(&self.status)
    }

    fn with_status(&self, f: impl FnOnce(&mut RecordingStatus)) {
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut s);
    }

    fn fail(&mut self, e: std::io::Error) {
        let (bytes, buffered) = self.writer.as_ref().map_or((0, 0), |w| {
            (w.bytes(), w.events().saturating_sub(self.flushed_events))
        });
        self.writer = None;
        let durable = self.flushed_events;
        log::error!("recording stopped after {bytes} bytes: {e}; tracing continues");
        self.with_status(|s| {
            s.bytes = bytes;
            s.events_recorded = durable;
            s.events_not_recorded += buffered;
            s.error = Some(format!("write failed after {bytes} bytes: {e}"));
        });
    }

    fn sync_status(&self) {
        if let Some(w) = &self.writer {
            let (events, records, bytes) = (w.events(), w.records(), w.bytes());
            self.with_status(|s| {
                s.events_recorded = events;
                s.records = records;
                s.bytes = bytes;
            });
        }
    }
}

impl Sink for Recorder {
    fn events(&mut self, events: &[Event]) {
        let Some(w) = &mut self.writer else {
            let n = events.len() as u64;
            self.with_status(|s| s.events_not_recorded += n);
            return;
        };
        if let Err(e) = w.write_events(monotonic_ns(), events) {
            self.fail(e);
            let n = events.len() as u64;
            self.with_status(|s| s.events_not_recorded += n);
        }
    }

    fn counters(&mut self, c: &CounterSnapshot, _totals: &Totals) {
        let Some(w) = &mut self.writer else { return };
        let now = monotonic_ns();
        // The per-process fallbacks first: a replay hands them on with these counters.
        let r = if c.fallbacks.is_empty() {
            Ok(())
        } else {
            w.write_fallbacks(now, &c.fallbacks)
        };
        if let Err(e) = r.and_then(|()| w.write_counters(now, &c.values)) {
            self.fail(e);
        }
    }

    fn undecodable(&mut self, n: u64) {
        if let Some(w) = &mut self.writer
            && let Err(e) = w.write_undecodable(monotonic_ns(), n)
        {
            self.fail(e);
        }
    }

    fn stack(&mut self, s: &crate::pipeline::KernelStack) {
        if let Some(w) = &mut self.writer
            && let Err(e) = w.write_stack(monotonic_ns(), s)
        {
            self.fail(e);
        }
    }

    fn flush(&mut self, _validator: &Validator, _totals: &Totals) {
        if let Some(w) = &mut self.writer {
            match w.flush() {
                Ok(()) => self.flushed_events = w.events(),
                Err(e) => self.fail(e),
            }
        }
        self.sync_status();
    }

    fn finish(&mut self, _validator: &Validator, _totals: &Totals) {
        self.sync_status();
        let Some(w) = self.writer.take() else { return };
        let (events, records) = (w.events(), w.records() + 1);
        match w.finish(monotonic_ns()) {
            Ok(bytes) => self.with_status(|s| {
                s.events_recorded = events;
                s.records = records;
                s.bytes = bytes;
                s.complete = true;
            }),
            Err(e) => {
                log::error!("finishing the trace failed: {e}");
                let lost = events.saturating_sub(self.flushed_events);
                let durable = self.flushed_events;
                self.with_status(|s| {
                    s.events_recorded = durable;
                    s.events_not_recorded += lost;
                    s.error = Some(format!("finishing the trace failed: {e}"));
                });
            }
        }
    }
}
