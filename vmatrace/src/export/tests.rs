//! Anomaly log: schema, redaction, rotation, file mode, failed writes.

use std::{fs, os::unix::fs::PermissionsExt};

use serde_json::Value;
use vmatrace_common::{
    Event, EventKind,
    event::{ProbeId, flags},
    model::Generation,
};

use super::*;
use crate::{
    pipeline::{CounterSnapshot, Sink, Totals},
    trace::{ClockBase, TraceHeader},
    validate::{Anomaly, AnomalyKind, Severity, Validator},
};

const VMA: u64 = 0xffff_8881_0abc_de00;
const MM: u64 = 0xffff_8881_0fed_c000;

fn event(kind: EventKind, ts: u64) -> Event {
    let mut e = Event::new(kind, ProbeId::LockVmaUnderRcu)
        .at(ts)
        .with_task(1234, 1240)
        .with_vma(VMA, MM, 0x7f00_0000_0000, 0x7f00_0000_4000)
        .with_sample(0x4000_0001, 7, 7)
        .with_ret(VMA as i64)
        .with_arg(0x7f00_0000_1000)
        .with_comm("stress");
    e.cpu = 1;
    e
}

fn anomaly() -> Anomaly {
    let ev = event(EventKind::ReaderAcquire, 2_000_000_500);
    Anomaly {
        kind: AnomalyKind::ReaderWhileWriteLocked,
        severity: Severity::Error,
        rule: "reader_not_write_locked",
        event: ev,
        state: "write-locked".into(),
        expected: "reader acquire fails".into(),
        observed: "reader acquired the VMA".into(),
        evidence: vec![event(EventKind::WriteLockExit, 2_000_000_000), ev],
    }
}

fn ctx() -> LogContext {
    let mut h = TraceHeader::synthetic(Generation::V7_0);
    h.host = "host1".into();
    h.kernel_release = "7.2.13+deb14-cloud-amd64".into();
    h.clock = ClockBase {
        monotonic_ns: 1_000_000_000,
        realtime_ns: 1_798_761_600_000_000_000,
    };
    LogContext::from_header(&h)
}

fn lines(path: &std::path::Path) -> Vec<Value> {
    fs::read_to_string(path)
        .expect("log readable")
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

#[test]
fn anomaly_line_schema() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("anomalies.jsonl");
    let file = JsonLinesFile::open(&path, Rotation::default()).expect("open");
    let mut sink = AnomalyLogSink::new(file, ctx(), Redactor::with_key(1, 2));
    sink.anomaly(&anomaly());
    let v = lines(&path);
    assert_eq!(v.len(), 1);
    let l = &v[0];
    assert_eq!(l["type"], "anomaly");
    assert_eq!(l["schema"], 1);
    assert_eq!(l["seq"], 1);
    assert_eq!(l["time"], "2027-01-01T00:00:01.000000500Z");
    assert_eq!(l["monotonic_ns"], 2_000_000_500u64);
    assert_eq!(l["realtime_ns"], 1_798_761_601_000_000_500u64);
    assert_eq!(l["host"], "host1");
    assert_eq!(l["kernel"], "7.2.13+deb14-cloud-amd64");
    assert_eq!(l["generation"], "7.0");
    assert_eq!(l["kind"], "reader_while_write_locked");
    assert_eq!(l["severity"], "error");
    assert_eq!(l["task"]["pid"], 1234);
    assert_eq!(l["task"]["tid"], 1240);
    assert_eq!(l["task"]["comm"], "stress");
    assert_eq!(l["vma"]["vm_start"], "0x7f0000000000");
    assert_eq!(l["vma"]["vm_end"], "0x7f0000004000");
    assert_eq!(l["state"], "write-locked");
    assert_eq!(l["expected"], "reader acquire fails");
    assert_eq!(l["observed"], "reader acquired the VMA");
    assert_eq!(l["event"]["kind"], "reader_acquire");
    assert_eq!(l["event"]["probe"], "lock_vma_under_rcu");
    assert_eq!(l["event"]["refcnt_hex"], "0x40000001");
    assert_eq!(l["event"]["arg"], 0x7f00_0000_1000u64);
    let ev = l["evidence"].as_array().expect("evidence array");
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0]["kind"], "write_lock_exit");
    // The same object hashes the same everywhere in the run.
    assert_eq!(l["vma"]["addr"], l["event"]["vma"]);
    assert_eq!(l["vma"]["addr"], l["event"]["ret"]);
    assert_eq!(l["mm"], ev[0]["mm"]);
}

#[test]
fn default_redaction_leaks_no_kernel_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.jsonl");
    let file = JsonLinesFile::open(&path, Rotation::default()).expect("open");
    let mut sink = AnomalyLogSink::new(file, ctx(), Redactor::random().expect("rng"));
    sink.anomaly(&anomaly());
    let text = fs::read_to_string(&path).expect("read");
    for needle in ["ffff8881", "18446612", "0abcde00", "fedc000"] {
        assert!(!text.contains(needle), "{needle} leaked: {text}");
    }
    // Decimal forms of the pointers must not appear either.
    assert!(!text.contains(&VMA.to_string()) && !text.contains(&(VMA as i64).to_string()));
    assert!(text.contains("\"addresses\":\"keyed_hash\""));

    let raw_path = dir.path().join("raw.jsonl");
    let file = JsonLinesFile::open(&raw_path, Rotation::default()).expect("open");
    let mut sink = AnomalyLogSink::new(file, ctx(), Redactor::raw());
    sink.anomaly(&anomaly());
    let l = &lines(&raw_path)[0];
    assert_eq!(l["vma"]["addr"], "0xffff88810abcde00");
    assert_eq!(l["mm"], "0xffff88810fedc000");
    assert_eq!(l["addresses"], "raw");
}

#[test]
fn files_are_created_0640_even_under_a_strict_umask() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("m.jsonl");
    // SAFETY: umask only changes this process's file-creation mask.
    let old = unsafe { libc::umask(0o077) };
    let opened = JsonLinesFile::open(&path, Rotation::default());
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    drop(opened.expect("open"));
    let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
fn rotation_by_size_keeps_n_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("r.jsonl");
    let rotation = Rotation {
        max_bytes: Some(100),
        keep: 2,
    };
    let mut f = JsonLinesFile::open(&path, rotation).expect("open");
    // 40-byte lines (39 + newline): two fit in 100 bytes, the third rotates.
    for i in 0..7u8 {
        let line = vec![b'a' + i; 39];
        f.write_line(&line);
    }
    let stats = f.stats().lock().expect("stats").clone();
    assert_eq!(stats.lines_written, 7);
    assert_eq!(stats.rotations, 3);
    assert_eq!(stats.write_errors, 0);
    let read = |p: &std::path::Path| fs::read_to_string(p).expect("exists");
    assert_eq!(read(&path), format!("{}\n", "g".repeat(39)));
    let one = dir.path().join("r.jsonl.1");
    let two = dir.path().join("r.jsonl.2");
    assert_eq!(
        read(&one),
        format!("{}\n{}\n", "e".repeat(39), "f".repeat(39))
    );
    assert_eq!(
        read(&two),
        format!("{}\n{}\n", "c".repeat(39), "d".repeat(39))
    );
    assert!(!dir.path().join("r.jsonl.3").exists());
    for p in [&path, &one, &two] {
        assert!(fs::metadata(p).expect("stat").len() <= 100);
        assert_eq!(
            fs::metadata(p).expect("stat").permissions().mode() & 0o777,
            0o640
        );
    }
}

#[test]
fn full_disk_is_counted_not_fatal() {
    let path = std::path::Path::new("/dev/full");
    if !path.exists() {
        crate::testing::skip("full_disk_is_counted_not_fatal", "/dev/full is missing");
        return;
    }
    let file = JsonLinesFile::open(
        path,
        Rotation {
            max_bytes: Some(10),
            keep: 1,
        },
    )
    .expect("/dev/full opens");
    let mut sink = AnomalyLogSink::new(file, ctx(), Redactor::with_key(0, 0));
    let stats = sink.stats();
    sink.anomaly(&anomaly());
    sink.anomaly(&anomaly());
    let s = stats.lock().expect("stats").clone();
    assert_eq!(s.lines_written, 0);
    assert_eq!(s.write_errors, 2);
    assert_eq!(s.lines_lost, 2);
    assert!(
        s.last_error
            .as_deref()
            .is_some_and(|e| e.contains("No space left")),
        "{s:?}"
    );
    assert_eq!(s.rotations, 0, "a device is never rotated");
}

#[test]
fn unwritable_path_is_a_clear_error() {
    let err = JsonLinesFile::open(
        std::path::Path::new("/nonexistent-dir/vmatrace/a.jsonl"),
        Rotation::default(),
    )
    .err()
    .expect("cannot open");
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn a_removed_directory_loses_lines_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sub = dir.path().join("logs");
    fs::create_dir(&sub).expect("mkdir");
    let path = sub.join("a.jsonl");
    let mut f = JsonLinesFile::open(
        &path,
        Rotation {
            max_bytes: Some(30),
            keep: 1,
        },
    )
    .expect("open");
    f.write_line(b"first line, twenty+");
    // The directory disappears: rotation cannot rename, the line is lost and counted.
    fs::remove_dir_all(&sub).expect("rm");
    f.write_line(b"second line, lost!!");
    let s = f.stats().lock().expect("stats").clone();
    assert_eq!((s.lines_written, s.lines_lost, s.write_errors), (1, 1, 1));
    fs::create_dir(&sub).expect("mkdir again");
    f.write_line(b"third");
    let s = f.stats().lock().expect("stats").clone();
    assert_eq!(s.lines_written, 2);
    // The torn marker starts the recovered line on a line of its own.
    assert_eq!(fs::read_to_string(&path).expect("read"), "\nthird\n");
}

#[test]
fn kernel_losses_and_undecodable_records_are_logged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("l.jsonl");
    let file = JsonLinesFile::open(&path, Rotation::default()).expect("open");
    let mut sink = AnomalyLogSink::new(file, ctx(), Redactor::with_key(3, 4));
    let totals = Totals::default();
    let mut values = vec![0u64; 16];
    sink.counters(
        &CounterSnapshot {
            values: values.clone(),
            ..Default::default()
        },
        &totals,
    );
    values[vmatrace_common::Counter::RingbufReserveFailed as usize] = 5;
    values[vmatrace_common::Counter::ReaderAcquireOk as usize] = 1000;
    sink.counters(
        &CounterSnapshot {
            values: values.clone(),
            ..Default::default()
        },
        &totals,
    );
    values[vmatrace_common::Counter::RingbufReserveFailed as usize] = 8;
    sink.counters(
        &CounterSnapshot {
            values,
            ..Default::default()
        },
        &totals,
    );
    sink.undecodable(2);
    sink.finish(&Validator::new(Generation::V7_0), &totals);
    let v = lines(&path);
    let losses: Vec<(String, u64, u64)> = v
        .iter()
        .map(|l| {
            assert_eq!(l["type"], "loss");
            (
                l["counter"].as_str().unwrap_or_default().to_string(),
                l["delta"].as_u64().unwrap_or(0),
                l["total"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        losses,
        vec![
            ("ringbuf_reserve_failed".to_string(), 5, 5),
            ("ringbuf_reserve_failed".to_string(), 3, 8),
            ("undecodable".to_string(), 2, 2),
        ]
    );
}

mod any_input {
    use proptest::prelude::*;
    use vmatrace_common::event::EVENT_SIZE;

    use super::*;
    use crate::{
        export::summary::{Summary, SummaryInput},
        pipeline::{Pipeline, SharedSink, SourceItem},
        stats::Stats,
    };

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Arbitrary records (any kind, flags, pointers, comm bytes) through the
        /// validator, the statistics, the anomaly log and the summary: no panic, and every
        /// log line is JSON.
        #[test]
        fn arbitrary_events_never_panic_the_exporters(
            raw in proptest::collection::vec(any::<u8>(), 0..(EVENT_SIZE * 64)),
            counters in proptest::collection::vec(any::<u64>(), 0..20),
            undecodable in any::<u64>(),
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("a.jsonl");
            let file = JsonLinesFile::open(&path, Rotation { max_bytes: Some(4096), keep: 2 })
                .expect("open");
            let log = AnomalyLogSink::new(file, ctx(), Redactor::with_key(5, 6));
            let log_stats = log.stats();
            let mut p = Pipeline::new(Generation::V7_0);
            p.add_sink(Box::new(log));
            let (sink, stats) = SharedSink::new(Stats::new(Generation::V7_0));
            p.add_sink(Box::new(sink));
            let events: Vec<Event> = raw.chunks_exact(EVENT_SIZE).filter_map(Event::from_bytes).collect();
            p.handle(SourceItem::Events(events));
            p.handle(SourceItem::Counters(CounterSnapshot { values: counters, ..Default::default() }));
            p.handle(SourceItem::Undecodable(undecodable % 1000));
            p.finish();
            let header = TraceHeader::synthetic(Generation::V7_0);
            let s = Summary::build(SummaryInput {
                mode: "replay",
                header: &header,
                totals: &p.totals,
                validator: &p.validator,
                duration_ns: 1,
                stop_reason: "end of trace".into(),
                anomaly_log: Some(log_stats.lock().expect("stats").clone()),
                recording: None,
                replay: None,
                stats: Some(stats.lock().expect("stats").snapshot()),
                programs: Vec::new(),
                startup_cpu_s: None,
                stop_cpu_s: None,
            });
            let json: Value = serde_json::from_str(&s.to_json()).expect("summary is JSON");
            prop_assert_eq!(&json["anomalies"]["total"], &Value::from(p.totals.anomalies_total()));
            let _ = s.human();
            for f in [path.clone(), dir.path().join("a.jsonl.1"), dir.path().join("a.jsonl.2")] {
                if let Ok(text) = fs::read_to_string(&f) {
                    for line in text.lines() {
                        prop_assert!(serde_json::from_str::<Value>(line).is_ok(), "{}", line);
                    }
                }
            }
        }
    }
}

/// Program costs print only when statistics were on; kernel-skipped runs always do.
#[test]
fn human_summary_lists_costs_with_statistics_and_skips_always() {
    use crate::{
        export::summary::{Summary, SummaryInput},
        live::ProgramStat,
        pipeline::Pipeline,
    };
    let p = Pipeline::new(Generation::V7_0);
    let header = TraceHeader::synthetic(Generation::V7_0);
    let stat = |name: &str, run_cnt, skipped_runs| ProgramStat {
        name: name.into(),
        run_cnt,
        run_time_ns: run_cnt * 100,
        verified_insns: None,
        skipped_runs,
    };
    let build = |programs| {
        Summary::build(SummaryInput {
            mode: "run",
            header: &header,
            totals: &p.totals,
            validator: &p.validator,
            duration_ns: 1,
            stop_reason: "duration".into(),
            anomaly_log: None,
            recording: None,
            replay: None,
            stats: None,
            programs,
            startup_cpu_s: None,
            stop_cpu_s: None,
        })
        .human()
    };
    let off = build(vec![stat("vsw_fentry", 0, 7), stat("vsw_fexit", 0, 0)]);
    assert!(!off.contains("program vsw_fentry"), "{off}");
    assert!(
        off.contains("runs skipped by the kernel (BPF recursion protection): vsw_fentry=7\n"),
        "{off}"
    );
    let on = build(vec![stat("vsw_fentry", 10, 2)]);
    assert!(
        on.contains("program vsw_fentry: 10 runs, 100 ns/run, 2 skipped by the kernel"),
        "{on}"
    );
    assert!(!on.contains("runs skipped by the kernel (BPF"), "{on}");
}

/// Counts fed from a trace saturate instead of wrapping: two `Undecodable` records of 2⁶³
/// used to sum to 0 and print "losses: 0 (nothing lost)" (or panic a debug build). The
/// summary says which counts saturated. Counter snapshots that jump between 0 and
/// `u64::MAX` (deltas that overflow) do not break the anomaly log or the statistics.
#[test]
fn loss_counts_saturate_and_the_summary_says_so() {
    use vmatrace_common::Counter;

    use crate::{
        export::summary::{Summary, SummaryInput},
        pipeline::{Pipeline, SharedSink, SourceItem},
        stats::Stats,
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let file = JsonLinesFile::open(&dir.path().join("a.jsonl"), Rotation::default()).expect("open");
    let log = AnomalyLogSink::new(file, ctx(), Redactor::with_key(5, 6));
    let mut p = Pipeline::new(Generation::V7_0);
    p.add_sink(Box::new(log));
    let (sink, stats) = SharedSink::new(Stats::new(Generation::V7_0));
    p.add_sink(Box::new(sink));
    for n in [1 << 63, 1 << 63, 1] {
        p.handle(SourceItem::Undecodable(n));
    }
    for v in [u64::MAX, 0, u64::MAX] {
        let mut values = vec![0u64; Counter::ALL.len()];
        values[Counter::RingbufReserveFailed as usize] = v;
        values[Counter::ReaderAcquireOk as usize] = v;
        p.handle(SourceItem::Counters(CounterSnapshot {
            values,
            ..Default::default()
        }));
        p.flush();
        stats.lock().expect("stats").roll_rates(1000);
    }
    p.finish();
    assert_eq!(p.totals.undecodable, u64::MAX);
    let header = TraceHeader::synthetic(Generation::V7_0);
    let s = Summary::build(SummaryInput {
        mode: "replay",
        header: &header,
        totals: &p.totals,
        validator: &p.validator,
        duration_ns: 1,
        stop_reason: "end of trace".into(),
        anomaly_log: None,
        recording: None,
        replay: None,
        stats: Some(stats.lock().expect("stats").snapshot()),
        programs: Vec::new(),
        startup_cpu_s: None,
        stop_cpu_s: None,
    });
    assert_eq!(s.losses.undecodable, u64::MAX);
    assert_eq!(s.losses.total, u64::MAX);
    assert_eq!(
        s.losses.saturated,
        ["ringbuf_reserve_failed", "undecodable", "total"]
    );
    let text = s.human();
    assert!(
        text.contains("losses: ≥ 18446744073709551615 (saturated)\n"),
        "{text}"
    );
    assert!(!text.contains("nothing lost"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("undecodable") && l.ends_with("≥ 18446744073709551615 (saturated)")),
        "{text}"
    );
}

/// The text summary says when (wall clock, the viewer's zone) and how long in human
/// units: `p99 ≤ 65.5µs`, not `p99<=65535 ns`.
#[test]
fn text_summary_has_times_of_day_and_human_units() {
    use crate::{
        export::{
            clock::LocalZone,
            summary::{Summary, SummaryInput},
        },
        stats::Stats,
    };
    let mut stats = Stats::new(Generation::V6_15);
    let mut w = event(EventKind::WriteLockExit, 3_500_000_000);
    w.flags |= flags::PAIRED;
    w.wait_ns = 48_000_000;
    w.vm_end = w.vm_start + 704 * 1024;
    stats.observe(&w);
    let mut header = TraceHeader::synthetic(Generation::V6_15);
    header.clock = ClockBase {
        monotonic_ns: 1_000_000_000,
        realtime_ns: 1_798_761_600_000_000_000,
    };
    let validator = Validator::new(Generation::V6_15);
    let s = Summary::build(SummaryInput {
        mode: "replay",
        header: &header,
        totals: &Totals::default(),
        validator: &validator,
        duration_ns: 1,
        stop_reason: "end of trace".into(),
        anomaly_log: None,
        recording: None,
        replay: None,
        stats: Some(stats.snapshot()),
        programs: Vec::new(),
        startup_cpu_s: None,
        stop_cpu_s: None,
    });
    let text = s.human_in(&LocalZone::utc());
    assert!(
        text.contains(
            "wait exclusion: n=1 p50 ≤ 48.00ms p90 ≤ 48.00ms p99 ≤ 48.00ms max 48.00ms\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "slowest wait: 48.00ms by stress[1234] thread 1240 on 7f0000000000 (704K) at \
             2027-01-01 00:00:02.500 UTC\n"
        ),
        "{text}"
    );
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("started ")),
        "{text}"
    );
    assert!(!text.contains(" ns\n"), "{text}");
}

/// A live session's anomaly lines name the mapping (`vma.name`, as /proc/PID/maps does);
/// without a resolver (replay) the field is absent.
#[test]
fn anomaly_lines_name_the_mapping_when_live() {
    use crate::mapping::MappingNames;
    let dir = tempfile::tempdir().expect("tempdir");
    let proc_root = dir.path().join("proc");
    fs::create_dir_all(proc_root.join("1234")).expect("dir");
    fs::write(
        proc_root.join("1234/maps"),
        "7f0000000000-7f0000004000 rw-s 00000000 00:01 77     /dev/shm/pg (deleted)\n",
    )
    .expect("maps");
    let path = dir.path().join("a.jsonl");
    let file = JsonLinesFile::open(&path, Rotation::default()).expect("open");
    let mut sink = AnomalyLogSink::new(file, ctx(), Redactor::with_key(1, 2))
        .with_mapping_names(MappingNames::with_proc_root(&proc_root));
    assert_eq!(
        sink.anomaly_line(&anomaly())["vma"]["name"],
        "/dev/shm/pg (deleted)"
    );
    let file = JsonLinesFile::open(&dir.path().join("b.jsonl"), Rotation::default()).expect("open");
    let mut replay = AnomalyLogSink::new(file, ctx(), Redactor::with_key(1, 2));
    assert!(replay.anomaly_line(&anomaly())["vma"].get("name").is_none());
}

/// A writer's slow wait in the evidence comes out with its syscall named and its stack
/// symbolized; the anomaly's own return brings the `SlowWait` sent just before it; a
/// stack id nobody sent gives the syscall and no frames.
#[test]
fn anomaly_lines_say_why_writers_were_slow() {
    use crate::pipeline::KernelStack;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("anomalies.jsonl");
    let file = JsonLinesFile::open(&path, Rotation::default()).expect("open");
    let mut sink = AnomalyLogSink::new(file, ctx(), Redactor::with_key(1, 2));
    sink.stack(&KernelStack {
        id: 4,
        frames: vec![
            "__vma_start_write+0x3c".into(),
            "mprotect_fixup+0x1d0".into(),
            "do_mprotect_pkey+0x2b4".into(),
            "__x64_sys_mprotect+0x1f".into(),
            "do_syscall_64+0x82".into(),
        ],
    });
    let mut slow = event(EventKind::SlowWait, 2_000_000_000);
    slow.flags = vmatrace_common::event::flags::RET;
    slow.arg = 10;
    slow.ret = 4;
    slow.probe = vmatrace_common::event::ProbeId::VmaStartWrite as u8;
    slow.wait_ns = 3_000_000;
    let mut a = anomaly();
    a.evidence.insert(0, slow);
    sink.anomaly(&a);
    // The anomaly is the writer's return itself; its SlowWait came just before, with a
    // stack the kernel could not keep.
    let mut own = event(EventKind::SlowWait, 2_000_000_500);
    own.flags = vmatrace_common::event::flags::RET;
    own.arg = 11;
    own.ret = -17;
    sink.events(&[own]);
    sink.anomaly(&anomaly());
    let v = lines(&path);
    let s = v[0]["slow_waits"].as_array().expect("slow waits");
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["syscall"], "mprotect");
    assert_eq!(s[0]["origin"], "syscall");
    assert_eq!(s[0]["wait_ns"], 3_000_000);
    assert_eq!(s[0]["function"], "__vma_start_write");
    assert_eq!(s[0]["stack"][1], "mprotect_fixup+0x1d0");
    let s = v[1]["slow_waits"].as_array().expect("own slow wait");
    assert_eq!(s[0]["syscall"], "munmap");
    assert_eq!(s[0]["stack"].as_array().map(Vec::len), Some(0));
    // Without any slow wait there is no such field.
    let mut later = anomaly();
    later.event.ts_ns += 1;
    later.evidence.clear();
    sink.anomaly(&later);
    assert!(lines(&path)[2].get("slow_waits").is_none());
}
