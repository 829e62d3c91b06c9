//! The anomaly log: JSON Lines, one record per line (schema in `docs/anomaly-log.md`).
//!
//! Lines are written with one `write` each, unbuffered: anomalies are rare and each one
//! must reach the disk even if the daemon is killed right after. A failed write (full
//! disk, removed directory, read-only file system) is counted and reported in the summary;
//! the daemon keeps running and retries on the next line.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use serde::Serialize;
use serde_json::{Value, json};

use super::{
    clock::rfc3339,
    event_json::{comm, event_json, kind_key},
    redact::Redactor,
};
use crate::{
    mapping::MappingNames,
    pipeline::{CounterSnapshot, Sink, Totals, totals::LOSS_COUNTERS},
    trace::{SequenceLosses, TraceHeader},
    validate::{Anomaly, Validator},
};

/// Version of the line schema; bumped only on incompatible changes (fields are only
/// ever added within a version).
pub const SCHEMA_VERSION: u32 = 1;
/// Mode of log files this process creates.
pub const LOG_FILE_MODE: u32 = 0o640;

/// Rotation policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before a line would make the file larger than this (`None`: never).
    pub max_bytes: Option<u64>,
    /// Rotated files kept: `PATH.1` (newest) … `PATH.keep`.
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: None,
            keep: 5,
        }
    }
}

/// What the log did (shared with the CLI for the summary).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LogStats {
    pub path: String,
    pub lines_written: u64,
    pub bytes_written: u64,
    pub rotations: u64,
    pub write_errors: u64,
    /// Lines that could not be written (each failed line is lost).
    pub lines_lost: u64,
    pub last_error: Option<String>,
}

/// A size-rotated JSON Lines file.
pub struct JsonLinesFile {
    path: PathBuf,
    rotation: Rotation,
    file: Option<File>,
    size: u64,
    /// A write failed part-way: start the next line on a fresh line.
    torn: bool,
    /// Lines lost since the last successful write: the first loss of a run of failures
    /// is logged, and the recovery, not every line in between.
    failing: u64,
    /// Raised by SIGHUP (log rotation by an outside tool): reopen the path.
    reopen_requested: Option<Arc<AtomicBool>>,
    stats: Arc<Mutex<LogStats>>,
}

impl JsonLinesFile {
    /// Open (append) or create `path`. An error here is returned: a log that cannot be
    /// opened at start is a configuration error the operator should see at once.
    pub fn open(path: &Path, rotation: Rotation) -> io::Result<Self> {
        let mut log = Self {
            path: path.to_path_buf(),
            rotation,
            file: None,
            size: 0,
            torn: false,
            failing: 0,
            reopen_requested: None,
            stats: Arc::new(Mutex::new(LogStats {
                path: path.display().to_string(),
                ..LogStats::default()
            })),
        };
        log.reopen()?;
        Ok(log)
    }

    pub fn stats(&self) -> Arc<Mutex<LogStats>> {
        Arc::clone(&self.stats)
    }

    /// Reopen the path whenever `flag` is raised (SIGHUP after an outside rotation).
    pub fn reopen_on(mut self, flag: Arc<AtomicBool>) -> Self {
        self.reopen_requested = Some(flag);
        self
    }

    /// Close and reopen the file if a reopen was requested: the rotated file is released
    /// promptly even when no line is due. Failures are counted like a failed line.
    pub fn poll_reopen(&mut self) {
        if let Some(flag) = &self.reopen_requested
            && flag.swap(false, Ordering::Relaxed)
        {
            self.file = None;
            if let Err(e) = self.reopen() {
                log::warn!("anomaly log {}: cannot reopen: {e}", self.path.display());
                self.with_stats(|s| {
                    s.write_errors += 1;
                    s.last_error = Some(format!("reopen: {e}"));
                });
            }
        }
    }

    fn with_stats(&self, f: impl FnOnce(&mut LogStats)) {
        f(&mut self.stats.lock().unwrap_or_else(PoisonError::into_inner));
    }

    fn reopen(&mut self) -> io::Result<()> {
        self.file = None;
        let f = match OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(LOG_FILE_MODE)
            .open(&self.path)
        {
            Ok(f) => {
                // The umask may have removed bits: the mode is part of the contract.
                f.set_permissions(std::fs::Permissions::from_mode(LOG_FILE_MODE))?;
                f
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                OpenOptions::new().append(true).open(&self.path)?
            }
            Err(e) => return Err(e),
        };
        self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
        self.file = Some(f);
        Ok(())
    }

    fn is_regular(&self) -> bool {
        self.file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.is_file())
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    }

    /// PATH.(keep-1) → PATH.keep, …, PATH → PATH.1, then a fresh PATH.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.rotation.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            for n in (1..self.rotation.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
        }
        self.with_stats(|s| s.rotations += 1);
        self.reopen()
    }

    /// Append one line (`line` without its newline). Never panics; failures are counted.
    pub fn write_line(&mut self, line: &[u8]) {
        self.poll_reopen();
        match self.try_write(line) {
            Ok(()) if self.failing > 0 => {
                log::warn!(
                    "anomaly log {}: writable again; {} line(s) were lost",
                    self.path.display(),
                    self.failing
                );
                self.failing = 0;
            }
            Ok(()) => {}
            Err(e) => self.lost_line(&e),
        }
    }

    fn lost_line(&mut self, e: &io::Error) {
        self.torn = true;
        self.file = None;
        if self.failing == 0 {
            log::warn!(
                "anomaly log {}: {e}; this line and further ones are lost until it is \
                 writable again (counted in the summary)",
                self.path.display()
            );
        }
        self.failing += 1;
        self.with_stats(|s| {
            s.write_errors += 1;
            s.lines_lost += 1;
            s.last_error = Some(e.to_string());
        });
    }

    fn try_write(&mut self, line: &[u8]) -> io::Result<()> {
        if self.file.is_none() {
            self.reopen()?;
        }
        let mut buf = Vec::with_capacity(line.len() + 2);
        if self.torn {
            buf.push(b'\n');
        }
        buf.extend_from_slice(line);
        buf.push(b'\n');
        let len = buf.len() as u64;
        if let Some(max) = self.rotation.max_bytes
            && self.size > 0
            && self.size + len > max
            && self.is_regular()
        {
            self.rotate()?;
        }
        let Some(f) = self.file.as_mut() else {
            return Err(io::Error::other("log file not open"));
        };
        f.write_all(&buf)?;
        self.torn = false;
        self.size += len;
        self.with_stats(|s| {
            s.lines_written += 1;
            s.bytes_written += len;
        });
        Ok(())
    }

    pub fn sync(&mut self) {
        if let Some(f) = &self.file
            && let Err(e) = f.sync_data()
        {
            // Nothing was lost yet if the data reaches the disk later; count it anyway.
            self.with_stats(|s| {
                s.write_errors += 1;
                s.last_error = Some(format!("fsync: {e}"));
            });
        }
    }
}

/// Identity of the traced system, stamped on every line.
#[derive(Clone, Debug)]
pub struct LogContext {
    pub host: String,
    pub kernel_release: String,
    pub generation: String,
    pub clock: crate::trace::ClockBase,
}

impl LogContext {
    pub fn from_header(h: &TraceHeader) -> Self {
        Self {
            host: h.host.clone(),
            kernel_release: h.kernel_release.clone(),
            generation: h.generation.key().to_string(),
            clock: h.clock,
        }
    }
}

/// The pipeline sink that writes anomalies (and losses, which say anomalies may be
/// missing) to a [`JsonLinesFile`].
pub struct AnomalyLogSink {
    file: JsonLinesFile,
    ctx: LogContext,
    redactor: Redactor,
    seq: u64,
    last_counters: CounterSnapshot,
    last_ts_ns: u64,
    undecodable: u64,
    /// Live sources only: names each anomaly's mapping from `/proc` (`vma.name`).
    mappings: Option<MappingNames>,
    /// Slow waits' stacks, and each thread's last `SlowWait` (its return may be the
    /// anomaly's event).
    stacks: crate::stats::StackTable,
    last_slow: std::collections::HashMap<u32, vmatrace_common::Event>,
}

/// Threads whose last `SlowWait` is remembered.
const MAX_LAST_SLOW: usize = 4096;

impl AnomalyLogSink {
    pub fn new(file: JsonLinesFile, ctx: LogContext, redactor: Redactor) -> Self {
        Self {
            file,
            ctx,
            redactor,
            seq: 0,
            last_counters: CounterSnapshot::default(),
            last_ts_ns: 0,
            undecodable: 0,
            mappings: None,
            stacks: Default::default(),
            last_slow: Default::default(),
        }
    }

    /// Add `vma.name`, the mapping as `/proc/PID/maps` names it, to each anomaly. Only for
    /// a live source: a replayed trace's processes are not this machine's.
    pub fn with_mapping_names(mut self, names: MappingNames) -> Self {
        self.mappings = Some(names);
        self
    }

    pub fn stats(&self) -> Arc<Mutex<LogStats>> {
        self.file.stats()
    }

    fn common(&mut self, ty: &str, mono_ns: u64) -> serde_json::Map<String, Value> {
        self.seq += 1;
        let rt = self.ctx.clock.realtime_of(mono_ns);
        let mut m = serde_json::Map::new();
        m.insert("type".into(), json!(ty));
        m.insert("schema".into(), json!(SCHEMA_VERSION));
        m.insert(
            "run_id".into(),
            json!(super::run_identity::this_run().run_id),
        );
        m.insert("seq".into(), json!(self.seq));
        m.insert("time".into(), json!(rfc3339(rt)));
        m.insert("realtime_ns".into(), json!(rt));
        m.insert("monotonic_ns".into(), json!(mono_ns));
        m.insert("host".into(), json!(self.ctx.host));
        m.insert("kernel".into(), json!(self.ctx.kernel_release));
        m.insert("generation".into(), json!(self.ctx.generation));
        m
    }

    fn emit(&mut self, m: serde_json::Map<String, Value>) {
        match serde_json::to_vec(&Value::Object(m)) {
            Ok(line) => self.file.write_line(&line),
            Err(e) => log::error!("anomaly log: cannot serialise a line: {e}"),
        }
    }

    /// The JSON line for one anomaly (public for tests and `--json` consumers).
    pub fn anomaly_line(&mut self, a: &Anomaly) -> serde_json::Map<String, Value> {
        let e = &a.event;
        let r = self.redactor.clone();
        let mut m = self.common("anomaly", e.ts_ns);
        m.insert("addresses".into(), json!(r.mode_key()));
        m.insert("kind".into(), json!(a.kind.key()));
        m.insert("severity".into(), json!(a.severity.key()));
        m.insert(
            "task".into(),
            json!({ "pid": e.tgid(), "tid": e.tid(), "comm": comm(e), "cpu": e.cpu }),
        );
        m.insert("mm".into(), r.pointer(e.mm));
        let mut vma = json!({
            "addr": r.pointer(e.vma),
            "vm_start": format!("{:#x}", e.vm_start),
            "vm_end": format!("{:#x}", e.vm_end),
        });
        // Anomalies are rare: one cached /proc read per new VMA, on the pipeline's thread.
        if let Some(name) = self
            .mappings
            .as_mut()
            .and_then(|n| n.resolve(e.tgid(), e.vm_start, e.vm_end))
        {
            vma["name"] = json!(&*name);
        }
        m.insert("vma".into(), vma);
        m.insert("event_kind".into(), json!(kind_key(e)));
        m.insert("rule".into(), json!(a.rule));
        m.insert("state".into(), json!(a.state));
        m.insert("expected".into(), json!(a.expected));
        m.insert("observed".into(), json!(a.observed));
        m.insert("event".into(), event_json(e, &r));
        m.insert(
            "evidence".into(),
            Value::Array(a.evidence.iter().map(|ev| event_json(ev, &r)).collect()),
        );
        let slow = self.slow_waits(a);
        if !slow.is_empty() {
            m.insert("slow_waits".into(), Value::Array(slow));
        }
        m
    }

    /// Why the writers around this anomaly were slow: every `SlowWait` among the
    /// evidence, and the one sent with the anomaly's own event, with the syscall named
    /// and the stack symbolized.
    fn slow_waits(&self, a: &Anomaly) -> Vec<Value> {
        let slow_kind = Some(vmatrace_common::EventKind::SlowWait);
        let mut evs: Vec<&vmatrace_common::Event> = a
            .evidence
            .iter()
            .filter(|e| e.kind() == slow_kind)
            .collect();
        if let Some(own) = self.last_slow.get(&a.event.tid())
            && own.ts_ns == a.event.ts_ns
            && !evs.contains(&own)
        {
            evs.push(own);
        }
        evs.into_iter()
            .map(|e| {
                let c = crate::stats::SlowContext {
                    syscall: e.arg,
                    stack: e.ret,
                };
                let (origin, stack) = self.stacks.describe(&c);
                json!({
                    "pid": e.tgid(),
                    "tid": e.tid(),
                    "comm": comm(e),
                    "function": e.probe().kernel_name(),
                    "wait_ns": e.wait_ns,
                    "origin": origin.key(),
                    "syscall": origin.syscall(),
                    "stack": stack,
                })
            })
            .collect()
    }

    fn loss(&mut self, source: &str, delta: u64, total: u64) {
        let ts = self.last_ts_ns;
        let mut m = self.common("loss", ts);
        m.insert("counter".into(), json!(source));
        m.insert("delta".into(), json!(delta));
        m.insert("total".into(), json!(total));
        self.emit(m);
    }
}

impl Sink for AnomalyLogSink {
    fn events(&mut self, events: &[vmatrace_common::Event]) {
        if let Some(last) = events.last() {
            self.last_ts_ns = self.last_ts_ns.max(last.ts_ns);
        }
        for e in events {
            if e.kind() == Some(vmatrace_common::EventKind::SlowWait) {
                if self.last_slow.len() >= MAX_LAST_SLOW {
                    self.last_slow.clear();
                }
                self.last_slow.insert(e.tid(), *e);
            }
        }
    }

    fn stack(&mut self, s: &crate::pipeline::KernelStack) {
        self.stacks.add(s);
    }

    fn anomaly(&mut self, a: &Anomaly) {
        let m = self.anomaly_line(a);
        self.emit(m);
    }

    fn counters(&mut self, c: &CounterSnapshot, _totals: &Totals) {
        for k in LOSS_COUNTERS {
            let (now, before) = (c.get(*k), self.last_counters.get(*k));
            if now > before {
                self.loss(k.key(), now - before, now);
            }
        }
        self.last_counters = c.clone();
    }

    fn sequence(&mut self, now: &SequenceLosses, before: &SequenceLosses) {
        for (key, now, before) in [
            ("trace_records_missing", now.missing, before.missing),
            ("trace_records_duplicate", now.duplicate, before.duplicate),
            ("trace_records_reordered", now.reordered, before.reordered),
        ] {
            // `missing` can go down (a late record was found): only rises are losses.
            if now > before {
                self.loss(key, now - before, now);
            }
        }
    }

    fn undecodable(&mut self, n: u64) {
        self.undecodable = self.undecodable.saturating_add(n);
        self.loss("undecodable", n, self.undecodable);
    }

    fn flush(&mut self, _validator: &Validator, _totals: &Totals) {
        self.file.poll_reopen();
    }

    fn finish(&mut self, _validator: &Validator, _totals: &Totals) {
        self.file.sync();
    }
}
