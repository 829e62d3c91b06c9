//! Round trips and hostile input for the trace reader.

use std::{
    io::Cursor,
    sync::{Arc, atomic::AtomicBool},
};

use proptest::prelude::*;
use vmatrace_common::{Event, EventKind, model::Generation};

use super::*;

fn ev(i: u64, kind: EventKind) -> Event {
    let mut e = Event::ZERO;
    e.ts_ns = 1_000 + i;
    e.kind = kind as u16;
    e.vma = 0xffff_8880_0000_0000 + i * 0x100;
    e.pid_tgid = (42 << 32) | 43;
    e.comm[..4].copy_from_slice(b"test");
    e
}

fn header() -> TraceHeader {
    let mut h = TraceHeader::synthetic(Generation::V7_0);
    h.kernel_release = "7.2.13+deb14-cloud-amd64".into();
    h.host = "testhost".into();
    h.clock = ClockBase {
        monotonic_ns: 1_000,
        realtime_ns: 1_800_000_000_000_000_000,
    };
    h
}

/// A small trace with every record type; returns (bytes, records excluding End).
fn sample(compress: bool) -> (Vec<u8>, Vec<Record>) {
    let recs = vec![
        Record::Events {
            mono_ns: 10,
            events: (0..5).map(|i| ev(i, EventKind::ExcludeExit)).collect(),
        },
        Record::Counters {
            mono_ns: 20,
            values: vec![1, 2, 3],
        },
        Record::Undecodable {
            mono_ns: 30,
            count: 7,
        },
        Record::Events {
            mono_ns: 40,
            events: (5..8).map(|i| ev(i, EventKind::VmaFree)).collect(),
        },
    ];
    let shared = SharedBuf::default();
    let mut w = TraceWriter::new(shared.clone(), &header(), compress).expect("writer");
    for r in &recs {
        match r {
            Record::Events { mono_ns, events } => w.write_events(*mono_ns, events),
            Record::Counters { mono_ns, values } => w.write_counters(*mono_ns, values),
            Record::Undecodable { mono_ns, count } => w.write_undecodable(*mono_ns, *count),
            Record::Stack { mono_ns, stack } => w.write_stack(*mono_ns, stack),
            Record::Fallbacks { mono_ns, fallbacks } => w.write_fallbacks(*mono_ns, fallbacks),
            Record::End { .. } => Ok(()),
        }
        .expect("write");
    }
    let size = w.finish(50).expect("finish");
    let bytes = shared.take();
    assert_eq!(size, bytes.len() as u64);
    (bytes, recs)
}

#[derive(Clone, Default)]
struct SharedBuf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
impl SharedBuf {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }
}
impl std::io::Write for SharedBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Read everything; Ok(records) only if the trace is complete.
fn read_all(bytes: Vec<u8>, opts: ReadOptions) -> Result<(TraceHeader, Vec<Record>), TraceError> {
    let mut r = TraceReader::with_options(Cursor::new(bytes), opts)?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok((r.header().clone(), out))
}

#[test]
fn roundtrip_plain_and_compressed() {
    for compress in [false, true] {
        let (bytes, recs) = sample(compress);
        let (h, got) = read_all(bytes, ReadOptions::default()).expect("valid trace");
        assert_eq!(h, header());
        assert_eq!(&got[..recs.len()], &recs[..], "compress={compress}");
        assert_eq!(
            got.last(),
            Some(&Record::End {
                mono_ns: 50,
                records: 4,
                events: 8
            })
        );
    }
}

/// The events of every events record, in order.
fn events_of(recs: Vec<Record>) -> Vec<Event> {
    recs.into_iter()
        .flat_map(|r| match r {
            Record::Events { events, .. } => events,
            _ => Vec::new(),
        })
        .collect()
}

/// A folded return read from a trace comes out as its entry and itself: the reader
/// decodes as the ring reader does, and nothing after them unfolds.
#[test]
fn folded_returns_are_unfolded_when_read() {
    use vmatrace_common::event::flags;
    let mut folded = ev(1, EventKind::ExcludeExit);
    folded.flags = flags::VMA_FIELDS | flags::RET | flags::PAIRED | flags::FOLDED;
    folded.wait_ns = 400;
    folded.entry_refcnt = 2;
    let plain = ev(2, EventKind::ReaderAcquire);
    let shared = SharedBuf::default();
    let mut w = TraceWriter::new(shared.clone(), &header(), false).expect("writer");
    w.write_events(1, &[folded, plain]).expect("write");
    w.finish(2).expect("finish");
    let (_, recs) = read_all(shared.take(), ReadOptions::default()).expect("valid");
    let events = events_of(recs);
    let (entry, exit) = folded.unfold().expect("a folded return");
    assert_eq!(events, [entry, exit, plain]);
    assert_eq!(events[0].kind(), Some(EventKind::ExcludeEnter));
    assert!(!events[1].has(flags::FOLDED));
}

#[test]
fn large_batches_are_split_into_records() {
    let shared = SharedBuf::default();
    let mut w = TraceWriter::new(shared.clone(), &header(), false).expect("writer");
    let n = format::MAX_EVENTS_PER_RECORD * 2 + 3;
    let batch: Vec<Event> = (0..n as u64)
        .map(|i| ev(i, EventKind::WriteLockExit))
        .collect();
    w.write_events(1, &batch).expect("write");
    assert_eq!(w.records(), 3);
    w.finish(2).expect("finish");
    let (_, recs) = read_all(shared.take(), ReadOptions::default()).expect("valid");
    let events = events_of(recs);
    assert_eq!(events, batch);
}

#[test]
fn every_truncation_is_an_error_with_offset() {
    for compress in [false, true] {
        let (bytes, _) = sample(compress);
        for cut in 0..bytes.len() {
            let err = read_all(bytes[..cut].to_vec(), ReadOptions::default())
                .expect_err("a truncated trace must not read as complete");
            let msg = err.to_string();
            assert!(
                matches!(
                    err,
                    TraceError::Truncated { .. }
                        | TraceError::MissingEnd { .. }
                        | TraceError::Corrupt { .. }
                ),
                "cut {cut} compress {compress}: {msg}"
            );
            assert!(msg.contains("byte") || msg.contains("too short"), "{msg}");
        }
    }
}

#[test]
fn truncation_offsets_are_exact_for_plain_traces() {
    let (bytes, _) = sample(false);
    // Cut in the middle of the second record's payload.
    const H: usize = format::RECORD_HEADER_LEN;
    let body_at = bytes.len()
        - (H + 5 * 128 + 4)
        - (H + 24 + 4)
        - (H + 8 + 4)
        - (H + 3 * 128 + 4)
        - (H + 16 + 4);
    let second = body_at + H + 5 * 128 + 4;
    let cut = second + H + 10;
    match read_all(bytes[..cut].to_vec(), ReadOptions::default()) {
        Err(TraceError::Truncated {
            offset,
            what,
            compressed: false,
        }) => {
            assert_eq!(offset as usize, cut);
            assert_eq!(what, "a record payload");
        }
        other => panic!("expected truncation, got {other:?}"),
    }
    match read_all(bytes[..second].to_vec(), ReadOptions::default()) {
        Err(TraceError::MissingEnd { offset, .. }) => assert_eq!(offset as usize, second),
        other => panic!("expected a missing end record, got {other:?}"),
    }
}

#[test]
fn bad_magic_version_and_flags_are_named() {
    let (bytes, _) = sample(false);
    let mut b = bytes.clone();
    b[0] = b'X';
    assert!(matches!(
        read_all(b, ReadOptions::default()),
        Err(TraceError::BadMagic { .. })
    ));
    let mut b = bytes.clone();
    b[8] = 9;
    let e = read_all(b, ReadOptions::default()).expect_err("version");
    assert!(e.to_string().contains("version 9"), "{e}");
    let mut b = bytes;
    b[11] = 0x80;
    assert!(matches!(
        read_all(b, ReadOptions::default()),
        Err(TraceError::UnknownFlags { .. })
    ));
}

#[test]
fn every_single_bit_flip_is_detected() {
    // CRC-32 detects every single-bit error, so no flipped trace may read as valid with
    // different content.
    let (bytes, recs) = sample(false);
    for i in 0..bytes.len() {
        for bit in 0..8 {
            let mut b = bytes.clone();
            b[i] ^= 1 << bit;
            match read_all(b, ReadOptions::default()) {
                Err(e) => {
                    let _ = e.to_string();
                }
                Ok((_, got)) => panic!(
                    "flip at byte {i} bit {bit} went undetected ({} records, expected {})",
                    got.len(),
                    recs.len() + 1
                ),
            }
        }
    }
}

/// Data after the end record is counted to the end of the input and reported, also when
/// following a stream (an early end record must not silently hide what follows).
#[test]
fn trailing_data_is_counted_and_reported() {
    for compress in [false, true] {
        for scan in [false, true] {
            let (mut bytes, recs) = sample(compress);
            bytes.extend_from_slice(b"junk after the trace");
            let opts = ReadOptions {
                scan_for_magic: scan,
                end_seen: Some(Arc::new(AtomicBool::new(false))),
            };
            let flag = opts.end_seen.clone().expect("flag");
            let mut r = TraceReader::with_options(Cursor::new(bytes), opts).expect("header");
            for _ in 0..recs.len() {
                assert!(r.next_record().expect("record").is_some());
            }
            assert!(!flag.load(std::sync::atomic::Ordering::Acquire));
            assert!(matches!(r.next_record(), Ok(Some(Record::End { .. }))));
            assert!(flag.load(std::sync::atomic::Ordering::Acquire));
            assert_eq!(r.trailing_bytes(), 20, "compress={compress}");
            match r.next_record() {
                Err(e @ TraceError::TrailingData { bytes: 20, .. }) => {
                    assert!(e.to_string().contains("20 bytes follow the end record"));
                }
                other => panic!("expected trailing data, got {other:?}"),
            }
            assert!(matches!(r.next_record(), Ok(None)));
        }
    }
}

/// An end record placed early (a whole second trace after the first here) does not end
/// reading silently: everything after it is counted.
#[test]
fn an_early_end_record_does_not_hide_what_follows() {
    let (first, _) = sample(true);
    let (second, _) = sample(true);
    let mut bytes = first;
    bytes.extend_from_slice(&second);
    let err = read_all(bytes, ReadOptions::default()).expect_err("trailing data");
    assert!(
        matches!(err, TraceError::TrailingData { bytes, .. } if bytes == second.len() as u64),
        "{err:?}"
    );
}

#[test]
fn scan_skips_console_noise_before_the_magic() {
    for compress in [false, true] {
        let (bytes, recs) = sample(compress);
        let mut noisy = b"[    0.000000] Linux version 7.2 VMAT VMATRAC\r\n".to_vec();
        let noise = noisy.len() as u64;
        noisy.extend_from_slice(&bytes);
        let opts = ReadOptions {
            scan_for_magic: true,
            ..ReadOptions::default()
        };
        let mut r = TraceReader::with_options(Cursor::new(noisy), opts).expect("found");
        assert_eq!(r.skipped(), noise);
        let mut n = 0;
        while r.next_record().expect("valid").is_some() {
            n += 1;
        }
        assert_eq!(n, recs.len() + 1);
    }
    let opts = ReadOptions {
        scan_for_magic: true,
        ..ReadOptions::default()
    };
    assert!(matches!(
        TraceReader::with_options(Cursor::new(b"no trace here".to_vec()), opts),
        Err(TraceError::Truncated { .. })
    ));
}

#[test]
fn oversized_lengths_do_not_allocate() {
    let (bytes, _) = sample(false);
    let mut b = bytes;
    // Header length field → 0xffff_ffff.
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    match read_all(b, ReadOptions::default()) {
        Err(TraceError::Corrupt { offset: 12, .. }) => {}
        other => panic!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096), scan in any::<bool>()) {
        let opts = ReadOptions { scan_for_magic: scan, ..ReadOptions::default() };
        let r = read_all(data, opts);
        prop_assert!(r.is_err());
    }

    #[test]
    fn random_bodies_after_a_valid_prefix_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..4096),
        compress in any::<bool>(),
    ) {
        let (bytes, _) = sample(compress);
        // Keep the prefix and header, replace the body with noise.
        let json_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        let mut b = bytes[..16 + json_len + 4].to_vec();
        b.extend_from_slice(&body);
        let _ = read_all(b, ReadOptions::default()).map(|_| ()).map_err(|e| e.to_string());
    }

    #[test]
    fn mutated_traces_never_panic(
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        compress in any::<bool>(),
    ) {
        let (mut b, _) = sample(compress);
        for (i, v) in flips {
            let at = i.index(b.len());
            b[at] ^= v | 1;
        }
        let keep = cut.index(b.len() + 1);
        b.truncate(keep);
        let _ = read_all(b, ReadOptions::default()).map(|_| ()).map_err(|e| e.to_string());
    }
}

mod through_the_pipeline {
    use std::sync::{Arc, atomic::AtomicBool};

    use tokio::sync::mpsc;
    use vmatrace_common::{Counter, event::flags};

    use super::*;
    use crate::pipeline::{CounterSnapshot, Pipeline, SourceItem};

    fn items() -> Vec<SourceItem> {
        let mut v = Vec::new();
        for b in 0..20u64 {
            let evs: Vec<Event> = (0..50)
                .map(|i| {
                    let mut e = ev(b * 50 + i, EventKind::ExcludeExit);
                    e.flags = flags::PAIRED;
                    e.wait_ns = 100 * (i + 1);
                    e
                })
                .collect();
            v.push(SourceItem::Events(evs));
            if b % 5 == 4 {
                let mut c = vec![0u64; 12];
                c[Counter::RingbufReserveFailed as usize] = b;
                c[Counter::ReaderAcquireOk as usize] = 10 * b;
                v.push(SourceItem::Counters(CounterSnapshot {
                    values: c,
                    ..Default::default()
                }));
            }
        }
        v.push(SourceItem::Undecodable(2));
        v
    }

    fn run_pipeline(p: Pipeline, items: Vec<SourceItem>) -> Pipeline {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (tx, rx) = mpsc::channel(4);
            let feeder = tokio::spawn(async move {
                for it in items {
                    if tx.send(it).await.is_err() {
                        break;
                    }
                }
            });
            let p = p.drive(rx, std::time::Duration::from_millis(5)).await;
            let _ = feeder.await;
            p
        })
    }

    #[test]
    fn record_then_replay_gives_the_same_totals() {
        let dir = tempfile::tempdir().expect("tempdir");
        for compress in [false, true] {
            let path = dir.path().join(format!("rt-{compress}.vmatrace"));
            let w = TraceWriter::create(&path, &header(), compress).expect("create");
            let rec = Recorder::new(w, &path.display().to_string(), compress);
            let status = rec.status();
            let mut live = Pipeline::new(Generation::V7_0);
            live.add_sink(Box::new(rec));
            let live = run_pipeline(live, items());
            let st = status.lock().expect("status").clone();
            assert!(st.complete && st.error.is_none(), "{st:?}");
            assert_eq!(st.events_recorded, 1000);
            assert_eq!(st.bytes, std::fs::metadata(&path).expect("stat").len());

            let reader =
                TraceReader::new(std::fs::File::open(&path).expect("open")).expect("valid trace");
            let (tx, rx) = mpsc::channel(4);
            let stop = Arc::new(AtomicBool::new(false));
            let h = replay::spawn(reader, tx, ReplayOptions::default(), stop).expect("thread");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let replayed = rt.block_on(
                Pipeline::new(Generation::V7_0).drive(rx, std::time::Duration::from_millis(5)),
            );
            let outcome = h.join().expect("reader thread");
            assert!(outcome.complete && outcome.error.is_none(), "{outcome:?}");
            assert_eq!(outcome.events, 1000);

            let (a, b) = (&live.totals, &replayed.totals);
            assert_eq!(a.events, b.events);
            assert_eq!(a.undecodable, b.undecodable);
            assert_eq!(a.counters, b.counters);
            assert_eq!(a.anomalies, b.anomalies);
            assert_eq!(a.kind_probe, b.kind_probe);
            assert_eq!(b.counters.get(Counter::RingbufReserveFailed), 19);
            assert_eq!(
                live.validator.losses_noted(),
                replayed.validator.losses_noted()
            );
        }
    }

    #[test]
    fn a_full_disk_stops_recording_not_the_pipeline() {
        let path = std::path::Path::new("/dev/full");
        if !path.exists() {
            crate::testing::skip(
                "a_full_disk_stops_recording_not_the_pipeline",
                "no /dev/full",
            );
            return;
        }
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .expect("open /dev/full");
        // The header fits in the writer's buffer; the failure shows at the first flush.
        let w = TraceWriter::new(f, &header(), false).expect("buffered header");
        let rec = Recorder::new(w, "/dev/full", false);
        let status = rec.status();
        let mut p = Pipeline::new(Generation::V7_0);
        p.add_sink(Box::new(rec));
        let p = run_pipeline(p, items());
        assert_eq!(p.totals.total_events(), 1000, "tracing went on");
        let st = status.lock().expect("status").clone();
        assert!(!st.complete);
        let err = st.error.expect("the error is kept");
        assert!(err.contains("No space left"), "{err}");
        // Nothing ever reached the device: every event is accounted as not recorded.
        assert_eq!(st.events_not_recorded, 1000);
        assert_eq!(st.events_recorded, 0);
    }
}

/// A follower of a live recording sees each flushed batch before the trace ends, also
/// through zstd (a flush ends a zstd block).
#[test]
fn flushed_records_are_readable_before_the_end() {
    for compress in [false, true] {
        let (rx, tx) = std::io::pipe().expect("pipe");
        let mut w = TraceWriter::new(tx, &header(), compress).expect("writer");
        let batch: Vec<Event> = (0..3).map(|i| ev(i, EventKind::WriteLockEnter)).collect();
        w.write_events(5, &batch).expect("write");
        w.flush().expect("flush");
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            let mut r = TraceReader::new(rx).expect("header");
            let first = r.next_record().expect("first record");
            done_tx.send(first).expect("send");
            // Then the rest, once the writer finishes.
            while r.next_record().expect("valid").is_some() {}
            r.records_read()
        });
        // The first record arrives while the writer is still open.
        let first = done_rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the flushed record was readable before the end");
        assert_eq!(
            first,
            Some(Record::Events {
                mono_ns: 5,
                events: batch
            }),
            "compress={compress}"
        );
        w.write_counters(6, &[1]).expect("write");
        w.finish(7).expect("finish");
        assert_eq!(t.join().expect("reader"), 3);
    }
}

/// The bytes of a compressed trace as written so far (the writer is still open).
fn written_so_far(shared: &SharedBuf) -> Vec<u8> {
    shared.0.lock().expect("lock").clone()
}

/// A live compressed recording (`record --compress -o -`) cut right after a flush ends at
/// its last complete record, like a plain one: a missing end record (tolerated when
/// following), not an "incomplete frame" corruption.
#[test]
fn compressed_stream_cut_at_a_flush_is_a_missing_end() {
    let shared = SharedBuf::default();
    let mut w = TraceWriter::new(shared.clone(), &header(), true).expect("writer");
    let batch: Vec<Event> = (0..3).map(|i| ev(i, EventKind::WriteLockEnter)).collect();
    w.write_events(5, &batch).expect("write");
    w.flush().expect("flush");
    let first = written_so_far(&shared);
    w.write_counters(6, &[1, 2]).expect("write");
    w.flush().expect("flush");
    let second = written_so_far(&shared);
    for (cut, records) in [(first, 1), (second, 2)] {
        let mut r = TraceReader::new(Cursor::new(cut)).expect("header");
        for _ in 0..records {
            assert!(r.next_record().expect("complete record").is_some());
        }
        match r.next_record() {
            Err(TraceError::MissingEnd {
                compressed: true, ..
            }) => {}
            other => panic!("expected a missing end record, got {other:?}"),
        }
    }
}

/// A compressed stream whose decoded records stop inside a record is still a truncation,
/// as for a plain trace.
#[test]
fn compressed_stream_cut_inside_a_record_is_truncated() {
    use std::io::Write;
    let (plain, _) = sample(false);
    let json_len = u32::from_le_bytes([plain[12], plain[13], plain[14], plain[15]]) as usize;
    let body_at = 16 + json_len + 4;
    let mut cut = plain[..body_at].to_vec();
    cut[10] |= format::FLAG_ZSTD as u8;
    // The first record and half of the second, flushed but the frame left open.
    let first_len = format::RECORD_HEADER_LEN + 5 * 128 + 4;
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
    enc.write_all(&plain[body_at..body_at + first_len + format::RECORD_HEADER_LEN + 10])
        .expect("compress");
    enc.flush().expect("flush");
    cut.extend_from_slice(enc.get_ref());
    let mut r = TraceReader::new(Cursor::new(cut)).expect("header");
    assert!(r.next_record().expect("first record").is_some());
    match r.next_record() {
        Err(TraceError::Truncated {
            what: "a record payload",
            compressed: true,
            ..
        }) => {}
        other => panic!("expected a truncated record, got {other:?}"),
    }
}

/// Version 1 traces (no sequence numbers), such as the shipped samples, still read.
#[test]
fn version_1_traces_still_read() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
    for name in ["sample-7.x.vmatrace", "sample-7.3.4-cloud.vmatrace"] {
        let f = std::fs::File::open(dir.join(name)).expect("sample");
        let mut r = TraceReader::new(f).expect("version 1 header");
        assert_eq!(r.version(), 1);
        while r.next_record().expect("valid").is_some() {}
        assert_eq!(r.sequence(), SequenceLosses::default());
        assert!(r.records_read() > 1, "{name}");
    }
}

/// A plain trace's prefix + header, and its records (version 2 framing).
fn split(bytes: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let json_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
    let mut at = 16 + json_len + 4;
    let head = bytes[..at].to_vec();
    let mut recs = Vec::new();
    while at < bytes.len() {
        let len = u32::from_le_bytes([bytes[at + 4], bytes[at + 5], bytes[at + 6], bytes[at + 7]]);
        let end = at + format::RECORD_HEADER_LEN + len as usize + 4;
        recs.push(bytes[at..end].to_vec());
        at = end;
    }
    (head, recs)
}

/// Records copied, moved or deleted whole keep valid checksums: the sequence numbers
/// catch them, the reader skips what is out of order and counts why.
#[test]
fn records_out_of_sequence_are_skipped_and_counted() {
    let (bytes, recs) = sample(false);
    let (head, raw) = split(&bytes);
    assert_eq!(raw.len(), recs.len() + 1);
    let read = |order: &[usize]| {
        let mut b = head.clone();
        for &i in order {
            b.extend_from_slice(&raw[i]);
        }
        let mut r = TraceReader::new(Cursor::new(b)).expect("header");
        let mut got = Vec::new();
        let end = loop {
            match r.next_record() {
                Ok(Some(rec)) => got.push(rec),
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        (got.len(), r.sequence(), end)
    };
    let l = |missing, duplicate, reordered| SequenceLosses {
        missing,
        duplicate,
        reordered,
    };
    // Duplicate, swap, deletion: the trace still ends with its end record.
    assert!(matches!(read(&[0, 1, 1, 2, 3, 4]), (5, s, None) if s == l(0, 1, 0)));
    assert!(matches!(read(&[0, 2, 1, 3, 4]), (4, s, None) if s == l(0, 0, 1)));
    assert!(matches!(read(&[0, 1, 3, 4]), (4, s, None) if s == l(1, 0, 0)));
    // An early end record: the records after it are trailing data.
    assert!(matches!(
        read(&[0, 4, 1, 2, 3]),
        (2, s, Some(TraceError::TrailingData { .. })) if s == l(3, 0, 0)
    ));
}

/// A slow wait's stack goes through a trace (plain and compressed) as it was written,
/// and a stack record that is not the JSON it should be is a corrupt trace, not a panic.
#[test]
fn stack_records_roundtrip_and_bad_ones_are_errors() {
    use crate::pipeline::KernelStack;
    for compress in [false, true] {
        let stack = KernelStack {
            id: 3,
            frames: vec!["__vma_start_write+0x5a".into(), "?".into()],
        };
        let shared = SharedBuf::default();
        let mut w = TraceWriter::new(shared.clone(), &header(), compress).expect("writer");
        w.write_stack(35, &stack).expect("stack");
        w.write_events(40, &[ev(1, EventKind::SlowWait)])
            .expect("events");
        w.finish(50).expect("finish");
        let bytes = shared.take();
        let mut r = TraceReader::new(std::io::Cursor::new(bytes)).expect("reader");
        assert_eq!(
            r.next_record().expect("record"),
            Some(Record::Stack {
                mono_ns: 35,
                stack: stack.clone()
            })
        );
        assert!(matches!(
            r.next_record().expect("record"),
            Some(Record::Events { .. })
        ));
    }
    let shared = SharedBuf::default();
    let mut w = TraceWriter::new(shared.clone(), &header(), false).expect("writer");
    w.record_raw_for_tests(super::format::RecordTag::Stack, 35, b"{not json")
        .expect("raw");
    w.finish(50).expect("finish");
    let mut r = TraceReader::new(std::io::Cursor::new(shared.take())).expect("reader");
    let e = r.next_record().expect_err("a corrupt stack record");
    assert!(format!("{e}").contains("stack record"), "{e}");
}

/// Per-process fallbacks go through a trace as written; a record whose length is not a
/// whole number of entries is a corrupt trace.
#[test]
fn fallback_records_roundtrip_and_bad_lengths_are_errors() {
    use crate::pipeline::ProcessFallbacks;
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"java");
    let f = vec![
        ProcessFallbacks {
            tgid: 42,
            count: 7,
            comm,
        },
        ProcessFallbacks {
            tgid: 3310,
            count: u64::MAX,
            comm: [0; 16],
        },
    ];
    let shared = SharedBuf::default();
    let mut w = TraceWriter::new(shared.clone(), &header(), true).expect("writer");
    w.write_fallbacks(30, &f).expect("fallbacks");
    w.write_counters(30, &[1, 2]).expect("counters");
    w.finish(50).expect("finish");
    let mut r = TraceReader::new(std::io::Cursor::new(shared.take())).expect("reader");
    assert_eq!(
        r.next_record().expect("record"),
        Some(Record::Fallbacks {
            mono_ns: 30,
            fallbacks: f
        })
    );
    let shared = SharedBuf::default();
    let mut w = TraceWriter::new(shared.clone(), &header(), false).expect("writer");
    w.record_raw_for_tests(super::format::RecordTag::Fallbacks, 35, &[0; 31])
        .expect("raw");
    w.finish(50).expect("finish");
    let mut r = TraceReader::new(std::io::Cursor::new(shared.take())).expect("reader");
    let e = r.next_record().expect_err("a corrupt fallbacks record");
    assert!(
        format!("{e}").contains("fallbacks record of 31 bytes"),
        "{e}"
    );
}

/// The shared types' serde forms (`vmatrace-common`, feature `serde`) as the header
/// stores them.
mod serde_forms {
    use vmatrace_common::{OFFSET_ABSENT, Offsets, event::ProbeId, model::Generation};

    /// One list names the fields (`Offsets::FIELDS`): every field round-trips under its
    /// name, absent ones as `null`, and a trace from before a field existed reads it as
    /// absent.
    #[test]
    fn offsets_round_trip_by_name() {
        let mut o = Offsets::ABSENT;
        for (i, (name, _)) in Offsets::FIELDS.iter().enumerate() {
            if i % 3 != 0 {
                assert!(o.set(name, i as u32 * 8), "{name}");
            }
        }
        assert!(!o.set("no_such_field", 1));
        let json = serde_json::to_value(o).unwrap();
        let map = json.as_object().unwrap();
        assert_eq!(map.len(), Offsets::FIELDS.len());
        assert!(map["vma_vm_start"].is_null());
        assert_eq!(map["vma_vm_end"], 8);
        let back: Offsets = serde_json::from_value(json).unwrap();
        assert_eq!(back, o);
        let old: Offsets =
            serde_json::from_str(r#"{"vma_vm_start": 0, "vma_vm_refcnt": 128}"#).unwrap();
        assert_eq!(old.vma_vm_refcnt, 128);
        assert_eq!(old.pt_regs_syscall, OFFSET_ABSENT);
        // Names are unique.
        let mut names: Vec<_> = Offsets::FIELDS.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Offsets::FIELDS.len());
    }

    #[test]
    fn generations_and_probes_by_name() {
        for g in Generation::ALL {
            let json = serde_json::to_value(g).unwrap();
            assert_eq!(json, g.key());
            assert_eq!(serde_json::from_value::<Generation>(json).unwrap(), *g);
        }
        assert!(serde_json::from_str::<Generation>("\"5.4\"").is_err());
        let p = ProbeId::VmaStartWrite;
        let json = serde_json::to_value(p).unwrap();
        assert_eq!(json, p.kernel_name());
        assert_eq!(serde_json::from_value::<ProbeId>(json).unwrap(), p);
        assert!(serde_json::from_str::<ProbeId>("\"no_such_function\"").is_err());
    }
}

/// The validator judges 6.15's write-lock holds only when every detach reached the
/// stream: a plan that sees both detach paths at `vma_mark_detached`, with its hooks
/// attached.
#[test]
fn a_header_says_whether_every_detach_was_seen() {
    use crate::kernel::plan::{
        AttachMode, AttachPoint, EventCoverage, KernelId, LogicalEvent, Observability, ProbePlan,
    };
    use vmatrace_common::event::ProbeId;
    let point = AttachPoint {
        probe: ProbeId::VmaMarkDetached,
        target: "vma_mark_detached".into(),
        mode: AttachMode::KRetProbe,
        program: "vmd_kretprobe".into(),
    };
    let seen = |e| EventCoverage {
        event: e,
        status: Observability::Direct { points: vec![0] },
    };
    let mut h = TraceHeader::synthetic(Generation::V6_15);
    assert!(
        h.sees_every_detach(),
        "no plan: a synthetic stream has them all"
    );
    h.plan = Some(ProbePlan {
        kernel: KernelId::default(),
        generation: Generation::V6_15,
        offsets: vmatrace_common::Offsets::ABSENT,
        points: vec![point],
        attach: Default::default(),
        coverage: vec![
            seen(LogicalEvent::MarkDetachedFast),
            seen(LogicalEvent::MarkDetachedSlow),
        ],
        notes: Vec::new(),
    });
    let hook = |attached| HookRecord {
        target: "vma_mark_detached".into(),
        program: "vmd_kretprobe".into(),
        mode: "kretprobe".into(),
        attached,
        error: None,
    };
    h.hooks = vec![hook(true)];
    assert!(h.sees_every_detach());
    h.hooks = vec![hook(false)];
    assert!(!h.sees_every_detach(), "the hook did not attach");
    h.hooks = vec![hook(true)];
    if let Some(p) = &mut h.plan {
        p.coverage[0].status = Observability::Unobservable {
            reason: "inline".into(),
        };
    }
    assert!(!h.sees_every_detach(), "the fast path has no probe point");
}
