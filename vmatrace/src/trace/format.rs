//! The on-disk layout of a vmatrace trace (documented in `docs/trace-format.md`).
//!
//! ```text
//! prefix (never compressed)
//!   0  8  magic "VMATRACE"
//!   8  2  format version (u16 LE)            = FORMAT_VERSION
//!  10  2  flags (u16 LE)                      bit 0: body is one zstd stream
//!  12  4  header length N (u32 LE)            <= MAX_HEADER_LEN
//!  16  N  header, UTF-8 JSON (TraceHeader)
//!  16+N 4 CRC-32 of the header bytes
//! body (zstd-compressed as a whole when flag bit 0 is set): records
//!   0  1  tag (RecordTag)
//!   1  3  zero
//!   4  4  payload length L (u32 LE)          <= MAX_PAYLOAD_LEN
//!   8  8  CLOCK_MONOTONIC ns when the record was written (u64 LE)
//!  16  8  sequence number: records before this one (u64 LE; version 2)
//!  24  L  payload
//!  24+L 4 CRC-32 of the 24 header bytes and the payload
//! ```
//!
//! Every integer is little-endian. A trace ends with an `End` record that repeats how many
//! records and events were written, so a reader can tell a complete trace from a truncated
//! one even when the cut falls exactly between two records. Sequence numbers tell a
//! missing, duplicated or reordered record even when every checksum is valid
//! ([`super::sequence`]). Version 1 traces (16-byte record headers, no sequence numbers)
//! are still read.

use serde::{Deserialize, Serialize};
use vmatrace_common::{Counter, Event, Offsets, event::EVENT_SIZE, model::Generation};

use crate::kernel::plan::ProbePlan;

pub const MAGIC: [u8; 8] = *b"VMATRACE";
/// Bumped on any incompatible change of the prefix, framing or payloads. Writers write
/// this one; readers read `MIN_FORMAT_VERSION..=FORMAT_VERSION` and refuse others (with a
/// message naming both). 2: record sequence numbers.
pub const FORMAT_VERSION: u16 = 2;
pub const MIN_FORMAT_VERSION: u16 = 1;
/// Flag bit: the body is a single zstd stream.
pub const FLAG_ZSTD: u16 = 1 << 0;
pub const KNOWN_FLAGS: u16 = FLAG_ZSTD;

pub const PREFIX_LEN: usize = 16;
pub const RECORD_HEADER_LEN: usize = 24;
/// Version 1 record headers had no sequence number.
pub const RECORD_HEADER_LEN_V1: usize = 16;

/// Record header length of a format version.
pub const fn record_header_len(version: u16) -> usize {
    if version >= 2 {
        RECORD_HEADER_LEN
    } else {
        RECORD_HEADER_LEN_V1
    }
}
pub const CRC_LEN: usize = 4;
/// Sanity bounds: a corrupt length must not make the reader allocate gigabytes.
pub const MAX_HEADER_LEN: u32 = 1 << 20;
pub const MAX_PAYLOAD_LEN: u32 = 16 << 20;
/// Largest zstd window a reader accepts (8 MiB; the writer's level 3 uses 2 MiB): a
/// corrupt frame header cannot make the decoder allocate more.
pub const MAX_ZSTD_WINDOW_LOG: u32 = 23;
/// Most counter slots a `Counters` record may carry.
pub const MAX_COUNTER_SLOTS: usize = 64;

/// Record types. Values are part of the format: never renumber, only append.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordTag {
    /// `n × 128` bytes: [`Event`] records as the ring buffer delivered them, folded
    /// returns (`flags::FOLDED`) written as the entry and return events they stand for.
    Events = 1,
    /// `n × u64`: cumulative kernel counters indexed by [`Counter`].
    Counters = 2,
    /// One u64: ring-buffer items userspace could not decode.
    Undecodable = 3,
    /// Two u64: records and events written before this one. Last record of a trace.
    End = 4,
    /// UTF-8 JSON `{"id": N, "frames": ["function+0xoff", ...]}`: a slow wait's kernel
    /// stack, written before the first `SlowWait` event that names it.
    Stack = 5,
    /// `n × 32` bytes, sorted by tgid: `tgid` (u32), 4 zero bytes, `count` (u64), `comm`
    /// (16 bytes): each process's readers that fell back to `mmap_lock` because of a
    /// writer so far (cumulative, like `Counters`, which it precedes).
    Fallbacks = 6,
}

/// Bytes per process in a `Fallbacks` record.
pub const FALLBACK_LEN: usize = 32;
/// Most processes a `Fallbacks` record may carry (the kernel map holds 8192).
pub const MAX_FALLBACKS: usize = 1 << 16;

impl RecordTag {
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            1 => RecordTag::Events,
            2 => RecordTag::Counters,
            3 => RecordTag::Undecodable,
            4 => RecordTag::End,
            5 => RecordTag::Stack,
            6 => RecordTag::Fallbacks,
            _ => return None,
        })
    }
}

/// CLOCK_MONOTONIC and CLOCK_REALTIME read together at the start of the session. Event
/// timestamps are `bpf_ktime_get_ns()` (monotonic); wall-clock time of an event is
/// `realtime_ns + (ts_ns - monotonic_ns)`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockBase {
    pub monotonic_ns: u64,
    pub realtime_ns: u64,
}

impl ClockBase {
    /// Wall-clock ns since the epoch of a monotonic timestamp.
    pub fn realtime_of(&self, monotonic_ns: u64) -> u64 {
        let delta = i128::from(monotonic_ns) - i128::from(self.monotonic_ns);
        let rt = i128::from(self.realtime_ns) + delta;
        u64::try_from(rt.max(0)).unwrap_or(u64::MAX)
    }
}

/// The filters the session ran with (they explain counts: a filtered trace is partial).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FilterInfo {
    /// The tracer's own tgid, always filtered out.
    pub self_tgid: u32,
    pub pid: Option<u32>,
    pub comm: Option<String>,
    pub cgroup: Option<u64>,
    /// Stream one in N reader acquires (0 = count only).
    pub reader_sample_every: u32,
    /// Writer-path entries were streamed as their own events (`--stream-entries`);
    /// otherwise each return stood for its entry (`flags::FOLDED`, unfolded before the
    /// trace was written).
    pub stream_entries: bool,
    /// Writer-path waits at least this long were sent with their syscall and kernel
    /// stack (`SlowWait` events; 0: none were).
    pub slow_wait_ns: u64,
}

/// What happened to one attach point when the session started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookRecord {
    /// Kernel function or tracepoint attached to.
    pub target: String,
    /// Program name in the eBPF object.
    pub program: String,
    /// `fentry`, `kprobe`, ...
    pub mode: String,
    pub attached: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The JSON header: everything needed to interpret the records offline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceHeader {
    /// Version of the vmatrace that wrote the trace.
    pub vmatrace_version: String,
    /// Where the events came from: `live`, `simulate`, `synthetic`.
    pub source: String,
    pub host: String,
    /// `uname -r` of the traced kernel.
    pub kernel_release: String,
    pub generation: Generation,
    /// Field offsets the programs used (also in `plan`, kept here for plan-less traces).
    pub offsets: Offsets,
    pub clock: ClockBase,
    #[serde(default)]
    pub plan: Option<ProbePlan>,
    #[serde(default)]
    pub hooks: Vec<HookRecord>,
    #[serde(default)]
    pub filters: FilterInfo,
}

impl TraceHeader {
    /// A header for traces that do not come from a live kernel (tests, simulator).
    pub fn synthetic(generation: Generation) -> Self {
        Self {
            vmatrace_version: env!("CARGO_PKG_VERSION").to_string(),
            source: "synthetic".to_string(),
            host: String::new(),
            kernel_release: "synthetic".to_string(),
            generation,
            offsets: Offsets::ABSENT,
            clock: ClockBase::default(),
            plan: None,
            hooks: Vec::new(),
            filters: FilterInfo::default(),
        }
    }

    /// Whether every detach of the traced kernel reached the stream: the plan sees both
    /// detach paths at their own function, and each hook it needs for them attached. A
    /// header without a plan (simulator, tests) streams what its model does, all of it.
    pub fn sees_every_detach(&self) -> bool {
        use crate::kernel::plan::{LogicalEvent, Observability};
        let Some(plan) = &self.plan else {
            return true;
        };
        [
            LogicalEvent::MarkDetachedFast,
            LogicalEvent::MarkDetachedSlow,
        ]
        .into_iter()
        .all(|e| match plan.status(e) {
            Some(Observability::Direct { points }) => points.iter().all(|&i| {
                plan.points.get(i).is_some_and(|p| {
                    self.hooks
                        .iter()
                        .filter(|h| h.target == p.target)
                        .all(|h| h.attached)
                })
            }),
            _ => false,
        })
    }
}

/// One decoded record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    Events {
        mono_ns: u64,
        events: Vec<Event>,
    },
    Counters {
        mono_ns: u64,
        values: Vec<u64>,
    },
    Undecodable {
        mono_ns: u64,
        count: u64,
    },
    End {
        mono_ns: u64,
        records: u64,
        events: u64,
    },
    Stack {
        mono_ns: u64,
        stack: crate::pipeline::KernelStack,
    },
    Fallbacks {
        mono_ns: u64,
        fallbacks: Vec<crate::pipeline::ProcessFallbacks>,
    },
}

impl Record {
    pub fn mono_ns(&self) -> u64 {
        match self {
            Record::Events { mono_ns, .. }
            | Record::Counters { mono_ns, .. }
            | Record::Undecodable { mono_ns, .. }
            | Record::End { mono_ns, .. }
            | Record::Stack { mono_ns, .. }
            | Record::Fallbacks { mono_ns, .. } => *mono_ns,
        }
    }
}

/// Why a trace could not be read. Offsets are from the start of the file for the prefix
/// and for uncompressed bodies; for a compressed body they count bytes of the
/// decompressed record stream after the prefix (the message says which).
#[derive(Debug)]
pub enum TraceError {
    /// Not a vmatrace trace at all.
    BadMagic {
        found: [u8; 8],
    },
    UnsupportedVersion {
        found: u16,
    },
    UnknownFlags {
        flags: u16,
    },
    /// The data stops inside a structure.
    Truncated {
        offset: u64,
        what: &'static str,
        compressed: bool,
    },
    /// The data is there but wrong (checksum, length, tag, JSON).
    Corrupt {
        offset: u64,
        what: String,
        compressed: bool,
    },
    /// The stream ended cleanly between records but without the `End` record: the writer
    /// was interrupted. Everything before `offset` was read.
    MissingEnd {
        offset: u64,
        compressed: bool,
    },
    /// The trace is complete but `bytes` more follow its end record (counted to the end
    /// of the input: inside the zstd frame, then after it). An early end record must not
    /// hide records behind it.
    TrailingData {
        offset: u64,
        bytes: u64,
        compressed: bool,
    },
    /// The underlying read failed (not a format problem).
    Io {
        offset: u64,
        source: std::io::Error,
    },
}

impl TraceError {
    fn place(offset: u64, compressed: bool) -> String {
        if compressed {
            format!("at byte {offset} of the decompressed record stream")
        } else {
            format!("at byte {offset}")
        }
    }
}

impl std::fmt::Display for TraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceError::BadMagic { found } => write!(
                f,
                "not a vmatrace trace: the file starts with {:?}, expected \"VMATRACE\"",
                String::from_utf8_lossy(found)
            ),
            TraceError::UnsupportedVersion { found } => write!(
                f,
                "trace format version {found} is not supported (this vmatrace reads versions {MIN_FORMAT_VERSION} to {FORMAT_VERSION})"
            ),
            TraceError::UnknownFlags { flags } => write!(
                f,
                "trace has unknown flag bits {:#06x} (known: {KNOWN_FLAGS:#06x}); written by a newer vmatrace?",
                flags & !KNOWN_FLAGS
            ),
            TraceError::Truncated {
                offset,
                what,
                compressed,
            } => write!(
                f,
                "trace truncated {}: the data ends inside {what}",
                Self::place(*offset, *compressed)
            ),
            TraceError::Corrupt {
                offset,
                what,
                compressed,
            } => write!(
                f,
                "trace corrupt {}: {what}",
                Self::place(*offset, *compressed)
            ),
            TraceError::MissingEnd { offset, compressed } => write!(
                f,
                "trace incomplete: it stops {} without an end record (the recording was interrupted); everything before was read",
                Self::place(*offset, *compressed)
            ),
            TraceError::TrailingData {
                offset,
                bytes,
                compressed,
            } => write!(
                f,
                "{bytes} bytes follow the end record {} (ignored; the trace before them was read)",
                Self::place(*offset, *compressed)
            ),
            TraceError::Io { offset, source } => {
                write!(f, "reading the trace failed at byte {offset}: {source}")
            }
        }
    }
}

impl std::error::Error for TraceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TraceError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Encode a record's header + payload + CRC into `out` (cleared first). `seq`: records
/// written before this one.
pub fn encode_record(out: &mut Vec<u8>, tag: RecordTag, mono_ns: u64, seq: u64, payload: &[&[u8]]) {
    out.clear();
    let len: usize = payload.iter().map(|p| p.len()).sum();
    out.push(tag as u8);
    out.extend_from_slice(&[0; 3]);
    // Callers keep payloads far below MAX_PAYLOAD_LEN (batches are split).
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&mono_ns.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    for p in payload {
        out.extend_from_slice(p);
    }
    let crc = crc32fast::hash(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

/// Most events per `Events` record (keeps records well under `MAX_PAYLOAD_LEN`).
pub const MAX_EVENTS_PER_RECORD: usize = 4096;
const _: () = assert!(MAX_EVENTS_PER_RECORD * EVENT_SIZE <= MAX_PAYLOAD_LEN as usize);
const _: () = assert!(Counter::ALL.len() <= MAX_COUNTER_SLOTS);
