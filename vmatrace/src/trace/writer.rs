//! Writing a trace. Write errors are returned to the caller, never panicked on; the
//! recorder sink turns them into a counted, reported stop of the recording.

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use vmatrace_common::Event;

use super::format::{
    FLAG_ZSTD, FORMAT_VERSION, MAGIC, MAX_EVENTS_PER_RECORD, MAX_HEADER_LEN, RecordTag,
    TraceHeader, encode_record,
};

/// Counts bytes that reached the underlying writer (the file size of the trace).
struct Counting<W> {
    inner: W,
    bytes: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

type Sink = BufWriter<Counting<Box<dyn Write + Send>>>;

enum Body {
    Plain(Sink),
    Zstd(zstd::stream::write::Encoder<'static, Sink>),
}

impl Body {
    fn out(&mut self) -> &mut dyn Write {
        match self {
            Body::Plain(w) => w,
            Body::Zstd(w) => w,
        }
    }
    fn counting(&self) -> &Counting<Box<dyn Write + Send>> {
        match self {
            Body::Plain(w) => w.get_ref(),
            Body::Zstd(w) => w.get_ref().get_ref(),
        }
    }
}

pub struct TraceWriter {
    body: Body,
    records: u64,
    events: u64,
    scratch: Vec<u8>,
}

/// zstd level: 3 is zstd's default, fast enough to keep up with the ring buffer.
const ZSTD_LEVEL: i32 = 3;

impl TraceWriter {
    /// Start a trace on any writer: writes the prefix and the header.
    pub fn new<W: Write + Send + 'static>(
        w: W,
        header: &TraceHeader,
        compress: bool,
    ) -> io::Result<Self> {
        let json = serde_json::to_vec(header).map_err(io::Error::other)?;
        let len = u32::try_from(json.len())
            .ok()
            .filter(|l| *l <= MAX_HEADER_LEN)
            .ok_or_else(|| io::Error::other("trace header too large"))?;
        let mut out: Sink = BufWriter::with_capacity(
            256 * 1024,
            Counting {
                inner: Box::new(w) as Box<dyn Write + Send>,
                bytes: 0,
            },
        );
        out.write_all(&MAGIC)?;
        out.write_all(&FORMAT_VERSION.to_le_bytes())?;
        let flags = if compress { FLAG_ZSTD } else { 0 };
        out.write_all(&flags.to_le_bytes())?;
        out.write_all(&len.to_le_bytes())?;
        out.write_all(&json)?;
        out.write_all(&crc32fast::hash(&json).to_le_bytes())?;
        let body = if compress {
            Body::Zstd(zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?)
        } else {
            Body::Plain(out)
        };
        Ok(Self {
            body,
            records: 0,
            events: 0,
            scratch: Vec::new(),
        })
    }

    /// Create `path` (mode 0600: a trace holds raw kernel addresses) and start a trace.
    pub fn create(path: &Path, header: &TraceHeader, compress: bool) -> io::Result<Self> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        Self::new(f, header, compress)
    }

    fn record(&mut self, tag: RecordTag, mono_ns: u64, payload: &[&[u8]]) -> io::Result<()> {
        let mut buf = std::mem::take(&mut self.scratch);
        encode_record(&mut buf, tag, mono_ns, self.records, payload);
        let r = self.body.out().write_all(&buf);
        self.scratch = buf;
        r?;
        self.records += 1;
        Ok(())
    }

    pub fn write_events(&mut self, mono_ns: u64, events: &[Event]) -> io::Result<()> {
        for chunk in events.chunks(MAX_EVENTS_PER_RECORD) {
            let parts: Vec<&[u8]> = chunk.iter().map(|e| &e.as_bytes()[..]).collect();
            self.record(RecordTag::Events, mono_ns, &parts)?;
            self.events += chunk.len() as u64;
        }
        Ok(())
    }

    pub fn write_counters(&mut self, mono_ns: u64, values: &[u64]) -> io::Result<()> {
        let bytes: Vec<u8> = values
            .iter()
            .take(super::format::MAX_COUNTER_SLOTS)
            .flat_map(|v| v.to_le_bytes())
            .collect();
        self.record(RecordTag::Counters, mono_ns, &[&bytes])
    }

    pub fn write_undecodable(&mut self, mono_ns: u64, count: u64) -> io::Result<()> {
        self.record(RecordTag::Undecodable, mono_ns, &[&count.to_le_bytes()])
    }

    pub fn write_fallbacks(
        &mut self,
        mono_ns: u64,
        fallbacks: &[crate::pipeline::ProcessFallbacks],
    ) -> io::Result<()> {
        let mut bytes = Vec::with_capacity(fallbacks.len() * super::format::FALLBACK_LEN);
        for f in fallbacks.iter().take(super::format::MAX_FALLBACKS) {
            bytes.extend_from_slice(&f.tgid.to_le_bytes());
            bytes.extend_from_slice(&[0; 4]);
            bytes.extend_from_slice(&f.count.to_le_bytes());
            bytes.extend_from_slice(&f.comm);
        }
        self.record(RecordTag::Fallbacks, mono_ns, &[&bytes])
    }

    pub fn write_stack(
        &mut self,
        mono_ns: u64,
        stack: &crate::pipeline::KernelStack,
    ) -> io::Result<()> {
        let json = serde_json::to_vec(stack).map_err(io::Error::other)?;
        self.record(RecordTag::Stack, mono_ns, &[&json])
    }

    /// Any record with any payload, for tests of the reader's checks.
    #[cfg(test)]
    pub(crate) fn record_raw_for_tests(
        &mut self,
        tag: RecordTag,
        mono_ns: u64,
        payload: &[u8],
    ) -> io::Result<()> {
        self.record(tag, mono_ns, &[payload])
    }

    /// Push everything written so far to the file (a follower sees it). With zstd this
    /// ends a block, costing a few bytes; call it per drained burst, not per event.
    pub fn flush(&mut self) -> io::Result<()> {
        self.body.out().flush()
    }

    pub fn records(&self) -> u64 {
        self.records
    }
    pub fn events(&self) -> u64 {
        self.events
    }
    /// Bytes that reached the file so far.
    pub fn bytes(&self) -> u64 {
        self.body.counting().bytes
    }

    /// Write the end record and close the stream. Returns the trace's size in bytes.
    pub fn finish(mut self, mono_ns: u64) -> io::Result<u64> {
        let (records, events) = (self.records, self.events);
        self.record(
            RecordTag::End,
            mono_ns,
            &[&records.to_le_bytes(), &events.to_le_bytes()],
        )?;
        let mut out = match self.body {
            Body::Plain(w) => w,
            Body::Zstd(w) => w.finish()?,
        };
        out.flush()?;
        let counting = out.into_inner().map_err(|e| e.into_error())?;
        Ok(counting.bytes)
    }
}
