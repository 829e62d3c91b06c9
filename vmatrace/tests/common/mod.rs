//! Helpers shared by the CLI integration tests: synthetic traces and running the binary.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::{
    path::Path,
    process::{Command, Output},
};

use vmatrace::trace::{ClockBase, TraceHeader, TraceWriter};
use vmatrace_common::{Counter, Event, EventKind, event::ProbeId, model::Generation};

pub mod plans;

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vmatrace"))
}

pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().expect("the vmatrace binary runs")
}

pub fn header() -> TraceHeader {
    let mut h = TraceHeader::synthetic(Generation::V7_0);
    h.host = "synthetic-host".into();
    h.kernel_release = "7.2.13+deb14-cloud-amd64".into();
    h.clock = ClockBase {
        monotonic_ns: 1_000_000_000,
        realtime_ns: 1_798_761_600_000_000_000,
    };
    h
}

/// A write-lock slow path on one VMA: enter, exclude enter/exit (waited `wait` ns), exit.
pub fn write_lock_events(tgid: u32, comm: &[u8], ts: u64, wait: u64) -> Vec<Event> {
    use ProbeId::{VmaStartExcludeReaders as Exclude, VmaStartWrite as Write};
    let comm = std::str::from_utf8(comm).expect("a test's comm is text");
    let mk = |kind: EventKind, probe: ProbeId, dt: u64, refcnt: u32| {
        Event::new(kind, probe)
            .at(ts + dt)
            .with_task(tgid, tgid)
            .with_comm(comm)
            .with_vma(
                0xffff_8881_0000_0100,
                0xffff_8881_0000_8000,
                0x7f00_0000_0000,
                0x7f00_0001_0000,
            )
            .with_sample(refcnt, 0, 0)
    };
    vec![
        mk(EventKind::WriteLockEnter, Write, 0, 0),
        mk(EventKind::ExcludeEnter, Exclude, 1, 0),
        mk(EventKind::ExcludeExit, Exclude, 2, 0x4000_0001)
            .with_ret(0)
            .with_ves(0, false)
            .paired(wait, 0),
        mk(EventKind::WriteLockExit, Write, 3, 0)
            .with_ret(0)
            .paired(wait + 100, 0),
    ]
}

pub fn counters(ringbuf_lost: u64, reader_ok: u64) -> Vec<u64> {
    let mut v = vec![0u64; 16];
    v[Counter::RingbufReserveFailed as usize] = ringbuf_lost;
    v[Counter::ReaderAcquireOk as usize] = reader_ok;
    v
}

/// 100 write-lock sequences by two processes (tgid 100 "stress", 200 "other"), a
/// counter snapshot with 3 ring-buffer losses, and 1 undecodable record.
pub fn write_sample(path: &Path, compress: bool) {
    let mut w = TraceWriter::create(path, &header(), compress).expect("create trace");
    for i in 0..100u64 {
        let (tgid, comm): (u32, &[u8]) = if i % 2 == 0 {
            (100, b"stress")
        } else {
            (200, b"other")
        };
        let evs = write_lock_events(tgid, comm, 1_000_000_000 + i * 1000, 1000 + i);
        w.write_events(1_000_000_000 + i * 1000, &evs)
            .expect("write");
    }
    w.write_counters(1_000_200_000, &counters(3, 500))
        .expect("write");
    w.write_undecodable(1_000_300_000, 1).expect("write");
    w.finish(1_000_400_000).expect("finish");
}

/// A plain (uncompressed) trace cut into its prefix + header and its records, each with
/// its header and checksum, so tests can drop, copy or move whole records.
pub fn split_records(trace: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
    let u32_at = |at: usize| u32::from_le_bytes(trace[at..at + 4].try_into().expect("4 bytes"));
    let version = u16::from_le_bytes([trace[8], trace[9]]);
    let header_len = vmatrace::trace::format::record_header_len(version);
    let body_at = 16 + u32_at(12) as usize + 4;
    let mut records = Vec::new();
    let mut at = body_at;
    while at + header_len <= trace.len() {
        let end = (at + header_len + u32_at(at + 4) as usize + 4).min(trace.len());
        records.push(trace[at..end].to_vec());
        at = end;
    }
    (trace[..body_at].to_vec(), records)
}

/// Join what [`split_records`] cut.
pub fn join_records(head: &[u8], records: &[Vec<u8>]) -> Vec<u8> {
    let mut out = head.to_vec();
    for r in records {
        out.extend_from_slice(r);
    }
    out
}

/// Bytes of the end record at the end of an uncompressed trace: cut them off and a
/// follower keeps waiting for more.
pub const END_RECORD_LEN: usize = vmatrace::trace::format::RECORD_HEADER_LEN + 16 + 4;
