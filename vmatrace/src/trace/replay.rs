//! A trace as a pipeline source: a blocking reader thread that turns records into
//! [`SourceItem`]s, as fast as the pipeline takes them or paced like the recording.

use std::{
    fs::File,
    io::{self, Read},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::{
    format::{Record, TraceError},
    reader::TraceReader,
    sequence::SequenceLosses,
};
use crate::pipeline::{CounterSnapshot, SourceItem};

/// Keeps an event when it returns true.
pub type EventFilter = Arc<dyn Fn(&vmatrace_common::Event) -> bool + Send + Sync>;

#[derive(Clone, Default)]
pub struct ReplayOptions {
    /// `None`: as fast as possible. `Some(1.0)`: recorded pace; `Some(2.0)`: twice as fast.
    pub speed: Option<f64>,
    /// Userspace version of the kernel's task filters (`--pid`, `--comm`).
    pub filter: Option<EventFilter>,
    /// Stop after this much recorded time from the first record (`--duration`): the same
    /// slice of the trace however fast it is replayed or however late a followed stream
    /// starts.
    pub duration: Option<Duration>,
    /// Counts published as reading goes, for a summary while the reader thread is still
    /// blocked in a read (a FIFO or stdin that stays open after a signal).
    pub progress: Arc<Progress>,
}

/// What the reader thread has delivered so far.
#[derive(Debug, Default)]
pub struct Progress {
    pub records: AtomicU64,
    pub events: AtomicU64,
    pub filtered: AtomicU64,
    /// `u64::MAX` until the first record.
    pub first_mono_ns: AtomicU64,
    pub last_mono_ns: AtomicU64,
}

impl Progress {
    fn publish(&self, o: &ReplayOutcome) {
        self.records.store(o.records, Ordering::Relaxed);
        self.events.store(o.events, Ordering::Relaxed);
        self.filtered.store(o.filtered, Ordering::Relaxed);
        if let (Some(a), Some(b)) = (o.first_mono_ns, o.last_mono_ns) {
            self.first_mono_ns.store(a, Ordering::Relaxed);
            self.last_mono_ns.store(b, Ordering::Relaxed);
        }
    }

    /// The outcome of a reader that did not finish: what it had delivered, stopped.
    pub fn outcome(&self) -> ReplayOutcome {
        let first = self.first_mono_ns.load(Ordering::Relaxed);
        let last = self.last_mono_ns.load(Ordering::Relaxed);
        let seen = self.records.load(Ordering::Relaxed) > 0;
        ReplayOutcome {
            records: self.records.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            filtered: self.filtered.load(Ordering::Relaxed),
            first_mono_ns: seen.then_some(first),
            last_mono_ns: seen.then_some(last),
            stopped: true,
            ..ReplayOutcome::default()
        }
    }
}

/// How a replay ended.
#[derive(Debug, Default)]
pub struct ReplayOutcome {
    pub records: u64,
    /// Events read from the trace (before the filter).
    pub events: u64,
    /// Events the filter dropped.
    pub filtered: u64,
    /// Monotonic timestamps of the first and last record (recorded duration).
    pub first_mono_ns: Option<u64>,
    pub last_mono_ns: Option<u64>,
    /// The end record was reached: the trace is complete.
    pub complete: bool,
    /// Bytes after the end record (then `error` is [`TraceError::TrailingData`]).
    pub trailing_bytes: u64,
    /// Records lost to the order check (version 2 traces).
    pub sequence: SequenceLosses,
    /// Stopped early (signal) before the end of the trace.
    pub stopped: bool,
    /// Stopped because `duration` of recorded time was replayed.
    pub duration_reached: bool,
    /// The problem that ended reading (all records before it were delivered).
    pub error: Option<TraceError>,
}

impl ReplayOutcome {
    pub fn recorded_duration_ns(&self) -> u64 {
        match (self.first_mono_ns, self.last_mono_ns) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => 0,
        }
    }
}

/// Run `reader` on its own thread, sending items on `tx` until the end record, an error,
/// `stop`, or the receiver closing. The sender is dropped when the thread ends, which
/// ends the pipeline.
pub fn spawn(
    mut reader: TraceReader,
    tx: mpsc::Sender<SourceItem>,
    opts: ReplayOptions,
    stop: Arc<AtomicBool>,
) -> io::Result<thread::JoinHandle<ReplayOutcome>> {
    thread::Builder::new()
        .name("vmatrace-replay".into())
        .spawn(move || {
            let mut out = ReplayOutcome::default();
            let start = Instant::now();
            // A `Fallbacks` record goes with the `Counters` record that follows it.
            let mut fallbacks = Vec::new();
            loop {
                if stop.load(Ordering::Relaxed) {
                    out.stopped = true;
                    break;
                }
                let next = reader.next_record();
                // Before the record that revealed a gap: the validator must resync first.
                if reader.sequence() != out.sequence {
                    out.sequence = reader.sequence();
                    if tx
                        .blocking_send(SourceItem::Sequence(out.sequence))
                        .is_err()
                    {
                        out.stopped = true;
                        break;
                    }
                }
                let rec = match next {
                    Ok(Some(r)) => r,
                    Ok(None) => break,
                    Err(e) => {
                        out.error = Some(e);
                        break;
                    }
                };
                let mono = rec.mono_ns();
                let first = *out.first_mono_ns.get_or_insert(mono);
                if let Some(d) = opts.duration
                    && u128::from(mono.saturating_sub(first)) > d.as_nanos()
                    && !matches!(rec, Record::End { .. })
                {
                    out.duration_reached = true;
                    break;
                }
                out.last_mono_ns = Some(mono);
                out.records = out.records.saturating_add(1);
                if let Some(speed) = opts.speed
                    && speed > 0.0
                {
                    // Checked: a tiny factor must not overflow a Duration (it panics).
                    let cap = Duration::from_secs(86_400 * 365);
                    let due = Duration::try_from_secs_f64(
                        mono.saturating_sub(first) as f64 / 1e9 / speed,
                    )
                    .map_or(cap, |d| d.min(cap));
                    if !sleep_until(start + due, &stop) {
                        out.stopped = true;
                        break;
                    }
                }
                opts.progress.publish(&out);
                let item = match rec {
                    Record::Events { mut events, .. } => {
                        out.events = out.events.saturating_add(events.len() as u64);
                        opts.progress.publish(&out);
                        if let Some(f) = &opts.filter {
                            let before = events.len();
                            events.retain(|e| f(e));
                            out.filtered =
                                out.filtered.saturating_add((before - events.len()) as u64);
                            opts.progress.publish(&out);
                            if events.is_empty() {
                                continue;
                            }
                        }
                        SourceItem::Events(events)
                    }
                    Record::Counters { values, .. } => SourceItem::Counters(CounterSnapshot {
                        values,
                        fallbacks: std::mem::take(&mut fallbacks),
                    }),
                    Record::Fallbacks { fallbacks: f, .. } => {
                        fallbacks = f;
                        continue;
                    }
                    Record::Undecodable { count, .. } => SourceItem::Undecodable(count),
                    Record::Stack { stack, .. } => SourceItem::Stack(stack),
                    Record::End { .. } => {
                        out.complete = true;
                        // The reader has counted what follows the end record.
                        out.trailing_bytes = reader.trailing_bytes();
                        out.error = reader.next_record().err();
                        break;
                    }
                };
                if tx.blocking_send(item).is_err() {
                    // The pipeline stopped listening (shutdown).
                    out.stopped = true;
                    break;
                }
            }
            out
        })
}

/// Sleep until `when` in short steps so a stop request is seen; false if stopped.
fn sleep_until(when: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= when {
            return true;
        }
        thread::sleep((when - now).min(Duration::from_millis(50)));
    }
}

/// A regular file that is still being written: at EOF wait for more data instead of
/// ending, until `stop` is set or the trace's end record has been read (then report EOF:
/// what is already in the file after the end record is still counted).
pub struct GrowingFile {
    file: File,
    stop: Arc<AtomicBool>,
    end_seen: Arc<AtomicBool>,
    poll: Duration,
}

impl GrowingFile {
    pub fn new(file: File, stop: Arc<AtomicBool>) -> Self {
        Self {
            file,
            stop,
            end_seen: Arc::new(AtomicBool::new(false)),
            poll: Duration::from_millis(100),
        }
    }

    /// The flag to pass as [`super::ReadOptions::end_seen`].
    pub fn end_seen(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.end_seen)
    }
}

impl Read for GrowingFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let n = self.file.read(buf)?;
            if n > 0
                || buf.is_empty()
                || self.stop.load(Ordering::Relaxed)
                || self.end_seen.load(Ordering::Acquire)
            {
                return Ok(n);
            }
            thread::sleep(self.poll);
        }
    }
}
