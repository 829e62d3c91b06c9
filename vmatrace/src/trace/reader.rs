//! Reading a trace: validates every structure and checksum and reports the first problem
//! with its byte offset. Never panics, whatever the input; buffers grow with the data that
//! arrives (never with a declared length alone), at most `MAX_PAYLOAD_LEN` for one record,
//! and the zstd window is capped (`MAX_ZSTD_WINDOW_LOG`). `tests/fuzz_inputs.rs` checks
//! all of this on mutated traces.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use vmatrace_common::{Event, event::EVENT_SIZE};

use crate::pipeline::unfolded;

use super::{
    format::{
        CRC_LEN, FALLBACK_LEN, FLAG_ZSTD, FORMAT_VERSION, KNOWN_FLAGS, MAGIC, MAX_COUNTER_SLOTS,
        MAX_FALLBACKS, MAX_HEADER_LEN, MAX_PAYLOAD_LEN, MAX_ZSTD_WINDOW_LOG, MIN_FORMAT_VERSION,
        PREFIX_LEN, RECORD_HEADER_LEN, Record, RecordTag, TraceError, TraceHeader,
        record_header_len,
    },
    sequence::{SequenceCheck, SequenceLosses, Verdict},
};

/// Options for opening a stream.
#[derive(Clone, Debug, Default)]
pub struct ReadOptions {
    /// Skip bytes before the magic number (a serial console prints boot messages before
    /// the trace starts). The number skipped is in [`TraceReader::skipped`].
    pub scan_for_magic: bool,
    /// Set once the end record has been read. What follows it is counted up to the end of
    /// the input and reported ([`TraceError::TrailingData`]); an input that waits for more
    /// data at EOF (a followed file that is still growing) must stop waiting when this is
    /// set, or counting would never end.
    pub end_seen: Option<Arc<AtomicBool>>,
}

type Raw = BufReader<Box<dyn Read + Send>>;

/// The record stream: the raw input, or one zstd frame over it. The frame is decoded
/// alone (not as a sequence of frames) so that bytes after it are counted as trailing
/// data instead of failing to decode.
enum Body {
    Plain(Raw),
    Zstd(zstd::stream::read::Decoder<'static, Raw>),
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Body::Plain(r) => r.read(buf),
            Body::Zstd(d) => d.read(buf),
        }
    }
}

/// Sequential reader of records.
pub struct TraceReader {
    body: Body,
    header: TraceHeader,
    compressed: bool,
    /// Position in body coordinates: file offset for uncompressed traces, offset into the
    /// decompressed stream (starting after the prefix) for compressed ones.
    offset: u64,
    skipped: u64,
    records: u64,
    events: u64,
    /// Format version (decides the record header's length and the order check).
    version: u16,
    sequence: SequenceCheck,
    finished: bool,
    end_seen: Option<Arc<AtomicBool>>,
    /// Bytes found after the end record.
    trailing: u64,
    /// The problem found after the end record, reported by the call after it.
    after_end: Option<TraceError>,
    buf: Vec<u8>,
}

/// Read until `buf` is full or the data ends; returns how much was read.
///
/// A zstd stream that stops inside its frame reports `UnexpectedEof` ("incomplete frame")
/// after it has delivered everything it could decode. That is how a live compressed
/// recording ends when it is cut (`record --compress -o -` flushes whole blocks, the frame
/// is only closed by the end record), so it ends the data here exactly like EOF ends a
/// plain stream: the caller then tells a cut between two records (a missing end record)
/// from a cut inside one (a truncation), the same way for both.
fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn le_u16(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}
fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}
fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

impl TraceReader {
    /// Open a trace from any byte stream (file, stdin, pipe).
    pub fn new<R: Read + Send + 'static>(r: R) -> Result<Self, TraceError> {
        Self::with_options(r, ReadOptions::default())
    }

    pub fn with_options<R: Read + Send + 'static>(
        r: R,
        opts: ReadOptions,
    ) -> Result<Self, TraceError> {
        let mut raw: Raw = BufReader::with_capacity(256 * 1024, Box::new(r));
        let io = |offset: u64| move |source| TraceError::Io { offset, source };

        let mut skipped = 0u64;
        let mut prefix = [0u8; PREFIX_LEN];
        let n = if opts.scan_for_magic {
            match scan_to_magic(&mut raw).map_err(io(0))? {
                Some(s) => skipped = s,
                None => {
                    return Err(TraceError::Truncated {
                        offset: 0,
                        what: "the stream: no trace magic number was found in it",
                        compressed: false,
                    });
                }
            }
            prefix[..MAGIC.len()].copy_from_slice(&MAGIC);
            MAGIC.len() + fill(&mut raw, &mut prefix[MAGIC.len()..]).map_err(io(skipped + 8))?
        } else {
            fill(&mut raw, &mut prefix).map_err(io(0))?
        };
        let base = skipped;
        if n < MAGIC.len() {
            return Err(TraceError::Truncated {
                offset: base + n as u64,
                what: "the magic number (the file is too short to be a trace)",
                compressed: false,
            });
        }
        let mut found = [0u8; 8];
        found.copy_from_slice(&prefix[..8]);
        if found != MAGIC {
            return Err(TraceError::BadMagic { found });
        }
        if n < PREFIX_LEN {
            return Err(TraceError::Truncated {
                offset: base + n as u64,
                what: "the file prefix (version, flags, header length)",
                compressed: false,
            });
        }
        let version = le_u16(&prefix, 8);
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
            return Err(TraceError::UnsupportedVersion { found: version });
        }
        let flags = le_u16(&prefix, 10);
        if flags & !KNOWN_FLAGS != 0 {
            return Err(TraceError::UnknownFlags { flags });
        }
        let header_len = le_u32(&prefix, 12);
        if header_len > MAX_HEADER_LEN {
            return Err(TraceError::Corrupt {
                offset: base + 12,
                what: format!("header length {header_len} exceeds the limit of {MAX_HEADER_LEN}"),
                compressed: false,
            });
        }
        let hdr_at = base + PREFIX_LEN as u64;
        let want = header_len as usize + CRC_LEN;
        let mut hdr = Vec::new();
        let n = fill_vec(&mut raw, &mut hdr, want).map_err(io(hdr_at))?;
        if n < want {
            return Err(TraceError::Truncated {
                offset: hdr_at + n as u64,
                what: "the JSON header",
                compressed: false,
            });
        }
        let (json, crc) = hdr[..n].split_at(header_len as usize);
        if crc32fast::hash(json) != le_u32(crc, 0) {
            return Err(TraceError::Corrupt {
                offset: hdr_at,
                what: "header checksum mismatch".to_string(),
                compressed: false,
            });
        }
        let header: TraceHeader =
            serde_json::from_slice(json).map_err(|e| TraceError::Corrupt {
                offset: hdr_at,
                what: format!("header JSON does not parse: {e}"),
                compressed: false,
            })?;
        let body_at = hdr_at + hdr.len() as u64;
        let compressed = flags & FLAG_ZSTD != 0;
        let body = if compressed {
            let mut dec = zstd::stream::read::Decoder::with_buffer(raw).map_err(io(body_at))?;
            // A damaged frame header must not make the decoder allocate its default
            // maximum window (128 MiB): the writer's frames need far less.
            dec.window_log_max(MAX_ZSTD_WINDOW_LOG)
                .map_err(io(body_at))?;
            Body::Zstd(dec.single_frame())
        } else {
            Body::Plain(raw)
        };
        Ok(Self {
            body,
            header,
            compressed,
            offset: if compressed { 0 } else { body_at },
            skipped,
            records: 0,
            events: 0,
            version,
            sequence: SequenceCheck::default(),
            finished: false,
            end_seen: opts.end_seen,
            trailing: 0,
            after_end: None,
            buf: Vec::new(),
        })
    }

    pub fn header(&self) -> &TraceHeader {
        &self.header
    }

    pub fn compressed(&self) -> bool {
        self.compressed
    }

    /// Bytes skipped before the magic number (with `scan_for_magic`).
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Records read so far (the end record included once read).
    pub fn records_read(&self) -> u64 {
        self.records
    }

    /// Events read so far as the trace holds them (a folded return counts once, though
    /// it is decoded as its entry and itself).
    pub fn events_read(&self) -> u64 {
        self.events
    }

    /// Format version of the trace.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Records missing, duplicated or reordered so far (always zero for version 1
    /// traces, which carry no sequence numbers).
    pub fn sequence(&self) -> SequenceLosses {
        self.sequence.losses()
    }

    /// Bytes that followed the end record (counted once it has been read).
    pub fn trailing_bytes(&self) -> u64 {
        self.trailing
    }

    fn read_err(&self, offset: u64, e: std::io::Error) -> TraceError {
        if self.compressed {
            TraceError::Corrupt {
                offset,
                what: format!("decompression failed: {e}"),
                compressed: true,
            }
        } else {
            TraceError::Io { offset, source: e }
        }
    }

    fn corrupt(&self, offset: u64, what: String) -> TraceError {
        TraceError::Corrupt {
            offset,
            what,
            compressed: self.compressed,
        }
    }

    /// The next record, `Ok(None)` after the end record. A stream that ends between two
    /// records without an end record gives [`TraceError::MissingEnd`]; data after the end
    /// record gives [`TraceError::TrailingData`] on the call after the one that returned
    /// the end record (the trace itself is complete; something else is in the input).
    pub fn next_record(&mut self) -> Result<Option<Record>, TraceError> {
        loop {
            if self.finished {
                return self.after_end.take().map_or(Ok(None), Err);
            }
            if let Some(rec) = self.read_record()? {
                return Ok(Some(rec));
            }
            // A duplicated or late record, counted in `sequence()`: read on.
        }
    }

    /// One record from the stream; `None` when the order check dropped it.
    fn read_record(&mut self) -> Result<Option<Record>, TraceError> {
        let at = self.offset;
        let hlen = record_header_len(self.version);
        let mut h = [0u8; RECORD_HEADER_LEN];
        let h = &mut h[..hlen];
        let n = fill(&mut self.body, h).map_err(|e| self.read_err(at, e))?;
        if n == 0 {
            return Err(TraceError::MissingEnd {
                offset: at,
                compressed: self.compressed,
            });
        }
        if n < hlen {
            return Err(TraceError::Truncated {
                offset: at + n as u64,
                what: "a record header",
                compressed: self.compressed,
            });
        }
        let Some(tag) = RecordTag::from_u8(h[0]) else {
            return Err(self.corrupt(at, format!("unknown record tag {}", h[0])));
        };
        if h[1..4] != [0, 0, 0] {
            return Err(self.corrupt(at + 1, "reserved record header bytes are not zero".into()));
        }
        let len = le_u32(h, 4);
        if len > MAX_PAYLOAD_LEN {
            return Err(self.corrupt(
                at + 4,
                format!("record length {len} exceeds the limit of {MAX_PAYLOAD_LEN}"),
            ));
        }
        let mono_ns = le_u64(h, 8);
        let seq = (hlen == RECORD_HEADER_LEN).then(|| le_u64(h, 16));
        let payload_at = at + hlen as u64;
        let total = len as usize + CRC_LEN;
        let mut buf = std::mem::take(&mut self.buf);
        let n = match fill_vec(&mut self.body, &mut buf, total) {
            Ok(n) => n,
            Err(e) => {
                self.buf = buf;
                return Err(self.read_err(payload_at, e));
            }
        };
        if n < total {
            self.buf = buf;
            return Err(TraceError::Truncated {
                offset: payload_at + n as u64,
                what: "a record payload",
                compressed: self.compressed,
            });
        }
        let (payload, crc) = buf[..n].split_at(len as usize);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(h);
        hasher.update(payload);
        if hasher.finalize() != le_u32(crc, 0) {
            self.buf = buf;
            return Err(self.corrupt(at, format!("checksum mismatch in a {tag:?} record")));
        }
        // Checked after the checksum: a damaged number is corruption, not a reordering.
        if let Some(seq) = seq
            && self.sequence.check(seq) == Verdict::Drop
        {
            self.buf = buf;
            self.offset = payload_at + total as u64;
            return Ok(None);
        }
        let rec = self.decode(tag, mono_ns, seq, payload, at);
        // Events as written (a folded return is one), which the end record counts too.
        let written = if tag == RecordTag::Events {
            (payload.len() / EVENT_SIZE) as u64
        } else {
            0
        };
        self.buf = buf;
        let rec = rec?;
        self.offset = payload_at + total as u64;
        self.records = self.records.saturating_add(1);
        self.events = self.events.saturating_add(written);
        if matches!(rec, Record::End { .. }) {
            self.finished = true;
            self.after_end = self.check_trailing().err();
        }
        Ok(Some(rec))
    }

    fn decode(
        &self,
        tag: RecordTag,
        mono_ns: u64,
        seq: Option<u64>,
        payload: &[u8],
        at: u64,
    ) -> Result<Record, TraceError> {
        let len = payload.len();
        Ok(match tag {
            RecordTag::Events => {
                if !len.is_multiple_of(EVENT_SIZE) {
                    return Err(self.corrupt(
                        at,
                        format!("events record of {len} bytes is not a multiple of {EVENT_SIZE}"),
                    ));
                }
                // Whole records only (checked above): an exact-size collect, one
                // allocation per record (another only if it holds folded returns).
                let (records, _) = payload.as_chunks::<EVENT_SIZE>();
                let events = unfolded(records.iter().map(Event::from_array).collect());
                Record::Events { mono_ns, events }
            }
            RecordTag::Counters => {
                if !len.is_multiple_of(8) || len / 8 > MAX_COUNTER_SLOTS {
                    return Err(self.corrupt(
                        at,
                        format!("counters record of {len} bytes (expected up to {MAX_COUNTER_SLOTS} u64)"),
                    ));
                }
                let values = (0..len / 8).map(|i| le_u64(payload, i * 8)).collect();
                Record::Counters { mono_ns, values }
            }
            RecordTag::Undecodable => {
                if len != 8 {
                    return Err(
                        self.corrupt(at, format!("undecodable record of {len} bytes, expected 8"))
                    );
                }
                Record::Undecodable {
                    mono_ns,
                    count: le_u64(payload, 0),
                }
            }
            RecordTag::Fallbacks => {
                if !len.is_multiple_of(FALLBACK_LEN) || len / FALLBACK_LEN > MAX_FALLBACKS {
                    return Err(self.corrupt(
                        at,
                        format!("fallbacks record of {len} bytes (expected up to {MAX_FALLBACKS} × {FALLBACK_LEN})"),
                    ));
                }
                let fallbacks = payload
                    .chunks_exact(FALLBACK_LEN)
                    .map(|c| crate::pipeline::ProcessFallbacks {
                        tgid: u32::from_le_bytes([c[0], c[1], c[2], c[3]]),
                        count: le_u64(c, 8),
                        comm: c[16..32].try_into().unwrap_or([0; 16]),
                    })
                    .collect();
                Record::Fallbacks { mono_ns, fallbacks }
            }
            RecordTag::Stack => match serde_json::from_slice(payload) {
                Ok(stack) => Record::Stack { mono_ns, stack },
                Err(e) => return Err(self.corrupt(at, format!("stack record: {e}"))),
            },
            RecordTag::End => {
                if len != 16 {
                    return Err(self.corrupt(at, format!("end record of {len} bytes, expected 16")));
                }
                let (records, events) = (le_u64(payload, 0), le_u64(payload, 8));
                if let Some(seq) = seq
                    && seq != records
                {
                    return Err(self.corrupt(
                        at,
                        format!(
                            "end record says {records} records were written but is record {seq}"
                        ),
                    ));
                }
                // Records the order check dropped or saw missing are already reported as
                // losses: the counts cannot match then, and say nothing more.
                let exact = self.sequence.losses().total() == 0;
                if exact && (records != self.records || events != self.events) {
                    return Err(self.corrupt(
                        at,
                        format!(
                            "end record says {records} records / {events} events were written, {} / {} were read",
                            self.records, self.events
                        ),
                    ));
                }
                Record::End {
                    mono_ns,
                    records,
                    events,
                }
            }
        })
    }

    /// Count everything after the end record, up to the end of the input: an early end
    /// record must not hide what follows it (a followed stream would otherwise stop there
    /// and silently drop the rest).
    fn check_trailing(&mut self) -> Result<(), TraceError> {
        if let Some(f) = &self.end_seen {
            f.store(true, Ordering::Release);
        }
        let at = self.offset;
        // Inside the record stream (the rest of the zstd frame, decoded)...
        let inside = drain(&mut self.body).map_err(|e| self.read_err(at, e))?;
        // ...then the raw input after the frame.
        let after = match &mut self.body {
            Body::Zstd(d) => {
                drain(d.get_mut()).map_err(|source| TraceError::Io { offset: at, source })?
            }
            Body::Plain(_) => 0,
        };
        self.trailing = inside.saturating_add(after);
        if self.trailing == 0 {
            return Ok(());
        }
        Err(TraceError::TrailingData {
            offset: at,
            bytes: self.trailing,
            compressed: self.compressed,
        })
    }
}

/// Read up to `want` bytes into the start of `buf` and return how many came. The buffer
/// grows with the data that actually arrives, not with the length a (possibly corrupt)
/// header declared: a short input never costs a 16 MiB allocation. It keeps its length
/// between calls (only `buf[..n]` is this call's data), so the bytes zeroed when it grew
/// are not zeroed again for every record.
fn fill_vec(r: &mut dyn Read, buf: &mut Vec<u8>, want: usize) -> std::io::Result<usize> {
    const STEP: usize = 64 * 1024;
    let mut got = 0;
    while got < want {
        let chunk = (want - got).min(STEP.max(got));
        if buf.len() < got + chunk {
            buf.resize(got + chunk, 0);
        }
        let n = fill(r, &mut buf[got..got + chunk])?;
        got += n;
        if n < chunk {
            break;
        }
    }
    Ok(got)
}

/// Read `r` to its end, counting bytes (a fixed buffer: never grows with the input).
/// `UnexpectedEof` ends it like EOF (see [`fill`]).
fn drain(r: &mut dyn Read) -> std::io::Result<u64> {
    let mut buf = [0u8; 8192];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(n),
            Ok(k) => n = n.saturating_add(k as u64),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(n),
            Err(e) => return Err(e),
        }
    }
}

/// Consume bytes up to and including the magic number; returns how many bytes came
/// before it, or `None` at EOF without a magic.
fn scan_to_magic(r: &mut Raw) -> std::io::Result<Option<u64>> {
    let mut consumed_total = 0u64;
    // How many bytes of MAGIC matched at the end of what was consumed so far.
    let mut matched = 0usize;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(None);
        }
        let mut consumed = 0;
        for &b in buf {
            consumed += 1;
            if b == MAGIC[matched] {
                matched += 1;
            } else {
                // No proper suffix of a partial "VMATRACE" match is a prefix of it other
                // than a lone 'V', so restarting like this finds every occurrence.
                matched = usize::from(b == MAGIC[0]);
            }
            if matched == MAGIC.len() {
                break;
            }
        }
        r.consume(consumed);
        consumed_total += consumed as u64;
        if matched == MAGIC.len() {
            return Ok(Some(consumed_total - MAGIC.len() as u64));
        }
    }
}
