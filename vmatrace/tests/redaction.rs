//! No raw kernel address leaves vmatrace unless `--raw-addresses`: the shipped traces
//! (`sample-7.x` was recorded on a 5-level-paging host, pointers `0xff33…`) and the same
//! events moved to a 4-level layout (`0xffff_8880…`), replayed through the anomaly log
//! and both summaries. The output is scanned for every hex and decimal spelling of every
//! kernel pointer of the trace.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::run;
use vmatrace::export::{AnomalyLogSink, JsonLinesFile, LogContext, Redactor, Rotation};
use vmatrace::trace::{Record, TraceHeader, TraceReader, TraceWriter};
use vmatrace::validate::{Anomaly, AnomalyKind, Severity};
use vmatrace_common::{Event, EventKind};

fn samples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/data")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "vmatrace"))
        .collect();
    v.sort();
    assert!(
        !v.is_empty(),
        "no shipped sample traces in {}",
        dir.display()
    );
    v
}

/// Every record of a trace, in order.
fn read(path: &Path) -> (TraceHeader, Vec<Record>) {
    let f = std::fs::File::open(path).expect("open trace");
    let mut r = TraceReader::new(f).expect("a trace");
    let header = r.header().clone();
    let mut records = Vec::new();
    while let Some(rec) = r.next_record().expect("readable trace") {
        records.push(rec);
    }
    (header, records)
}

fn events(records: &[Record]) -> Vec<Event> {
    records
        .iter()
        .flat_map(|r| match r {
            Record::Events { events, .. } => events.clone(),
            _ => Vec::new(),
        })
        .collect()
}

/// `ERR_PTR` values: errnos, not addresses.
fn is_err(v: u64) -> bool {
    v >= 4095u64.wrapping_neg()
}

fn kernel_half(v: u64) -> bool {
    v >> 63 == 1 && !is_err(v)
}

/// Every kernel pointer an event carries: its VMA and mm, the pointer arguments and
/// returns of its kind, and anything else in the kernel half.
fn pointers(e: &Event) -> Vec<u64> {
    let mut v = vec![e.vma, e.mm];
    if matches!(e.kind(), Some(EventKind::WriterWake | EventKind::VmaAlloc)) {
        v.push(e.arg);
    }
    if e.kind() == Some(EventKind::ReaderAcquire) && !is_err(e.ret as u64) {
        v.push(e.ret as u64);
    }
    v.extend(
        [e.arg, e.ret as u64, e.vm_start, e.vm_end, e.vm_flags]
            .into_iter()
            .filter(|x| kernel_half(*x)),
    );
    v.retain(|x| *x != 0);
    v
}

fn all_pointers(evs: &[Event]) -> BTreeSet<u64> {
    evs.iter().flat_map(pointers).collect()
}

/// Every number the text spells, read as hex (with or without `0x`) and as decimal
/// (and its negation): a pointer in any of those forms is found.
fn numbers_in(text: &str) -> BTreeSet<u64> {
    let mut out = BTreeSet::new();
    for tok in text.split(|c: char| !c.is_ascii_alphanumeric()) {
        let hex = tok
            .strip_prefix("0x")
            .or_else(|| tok.strip_prefix("0X"))
            .unwrap_or(tok);
        if let Ok(v) = u64::from_str_radix(hex, 16) {
            out.insert(v);
        }
        if let Ok(v) = tok.parse::<u64>() {
            out.insert(v);
            out.insert(v.wrapping_neg());
        }
    }
    out
}

fn assert_no_pointer(what: &str, text: &str, ptrs: &BTreeSet<u64>) {
    let found = numbers_in(text);
    let leaked: Vec<String> = ptrs
        .intersection(&found)
        .take(5)
        .map(|p| format!("{p:#x}"))
        .collect();
    assert!(leaked.is_empty(), "{what}: raw kernel addresses {leaked:?}");
}

/// The anomaly-log lines of a synthetic anomaly for each run of 16 events (the last one
/// offending, all of them evidence): every event of the trace goes through `event_json`.
fn anomaly_lines(header: &TraceHeader, evs: &[Event], dir: &Path) -> String {
    let path = dir.join("all.jsonl");
    let file = JsonLinesFile::open(&path, Rotation::default()).expect("open log");
    let mut sink = AnomalyLogSink::new(
        file,
        LogContext::from_header(header),
        Redactor::random().expect("randomness"),
    );
    let mut out = String::new();
    for chunk in evs.chunks(16) {
        let a = Anomaly {
            kind: AnomalyKind::FreeWhileReferenced,
            severity: Severity::Error,
            rule: "free_unreferenced",
            event: *chunk.last().expect("non-empty chunk"),
            state: "s".into(),
            expected: "e".into(),
            observed: "o".into(),
            evidence: chunk.to_vec(),
        };
        out += &serde_json::to_string(&sink.anomaly_line(&a)).expect("JSON");
        out.push('\n');
    }
    out
}

/// The replay's JSON summary, its anomaly log and its text summary.
fn replay_outputs(trace: &Path, dir: &Path) -> String {
    let p = trace.to_str().expect("utf8");
    let log = dir.join("replay.jsonl");
    let _ = std::fs::remove_file(&log);
    let l = log.to_str().expect("utf8");
    let json = run(&["replay", p, "--json", "--anomaly-log", l]);
    assert!(
        json.status.success(),
        "{}",
        String::from_utf8_lossy(&json.stderr)
    );
    let text = run(&["replay", p, "--headless"]);
    assert!(
        text.status.success(),
        "{}",
        String::from_utf8_lossy(&text.stderr)
    );
    [&json.stdout, &json.stderr, &text.stdout, &text.stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .chain(std::iter::once(
            std::fs::read_to_string(&log).unwrap_or_default(),
        ))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The same pointer on a 4-level-paging host: in the direct map at `0xffff_8880…`.
fn four_level(p: u64) -> u64 {
    0xffff_8880_0000_0000 | (p & 0x0000_003f_ffff_fff8)
}

/// `src` rewritten with every pointer moved by `map`.
fn remap(header: &TraceHeader, records: &[Record], ptrs: &BTreeSet<u64>, dst: &Path) {
    let map = |v: u64| if ptrs.contains(&v) { four_level(v) } else { v };
    let mut w = TraceWriter::create(dst, header, true).expect("create trace");
    let mut last = 0;
    for r in records {
        match r {
            Record::Events { mono_ns, events } => {
                let moved: Vec<Event> = events
                    .iter()
                    .map(|e| {
                        let mut e = *e;
                        (e.vma, e.mm, e.arg) = (map(e.vma), map(e.mm), map(e.arg));
                        e.ret = map(e.ret as u64) as i64;
                        e
                    })
                    .collect();
                w.write_events(*mono_ns, &moved).expect("write");
                last = *mono_ns;
            }
            Record::Counters { mono_ns, values } => {
                w.write_counters(*mono_ns, values).expect("write");
                last = *mono_ns;
            }
            Record::Undecodable { mono_ns, count } => {
                w.write_undecodable(*mono_ns, *count).expect("write");
                last = *mono_ns;
            }
            Record::Stack { mono_ns, stack } => {
                w.write_stack(*mono_ns, stack).expect("write");
                last = *mono_ns;
            }
            Record::Fallbacks { mono_ns, fallbacks } => {
                w.write_fallbacks(*mono_ns, fallbacks).expect("write");
                last = *mono_ns;
            }
            Record::End { mono_ns, .. } => last = *mono_ns,
        }
    }
    w.finish(last).expect("finish");
}

fn check(trace: &Path, dir: &Path) -> usize {
    let (header, records) = read(trace);
    let evs = events(&records);
    let ptrs = all_pointers(&evs);
    assert!(!ptrs.is_empty(), "{}: no kernel pointers", trace.display());
    let name = trace.display().to_string();
    assert_no_pointer(
        &format!("{name}: anomaly lines"),
        &anomaly_lines(&header, &evs, dir),
        &ptrs,
    );
    assert_no_pointer(
        &format!("{name}: replay outputs"),
        &replay_outputs(trace, dir),
        &ptrs,
    );
    ptrs.len()
}

#[test]
fn shipped_traces_leak_no_kernel_address_in_either_paging_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut five_level = false;
    for trace in samples() {
        let (header, records) = read(&trace);
        let ptrs = all_pointers(&events(&records));
        // Pointers of a 5-level host: bit 63 set, below the 4-level kernel half.
        five_level |= ptrs.iter().any(|p| *p < 0xffff_8000_0000_0000);
        check(&trace, dir.path());
        let moved = dir.path().join("four-level.vmatrace");
        remap(&header, &records, &ptrs, &moved);
        let n = check(&moved, dir.path());
        assert!(n > 0);
    }
    assert!(five_level, "no shipped trace has 5-level-paging pointers");
}

/// The opt-in still shows them: the check above is not blind.
#[test]
fn raw_addresses_show_the_5_level_pointers() {
    let trace = samples()
        .into_iter()
        .find(|t| {
            all_pointers(&events(&read(t).1))
                .iter()
                .any(|p| *p < 0xffff_8000_0000_0000)
        })
        .expect("a 5-level trace");
    let (header, records) = read(&trace);
    let evs = events(&records);
    let ptrs = all_pointers(&evs);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raw.jsonl");
    let file = JsonLinesFile::open(&path, Rotation::default()).expect("open log");
    let mut sink = AnomalyLogSink::new(file, LogContext::from_header(&header), Redactor::raw());
    let a = Anomaly {
        kind: AnomalyKind::FreeWhileReferenced,
        severity: Severity::Error,
        rule: "free_unreferenced",
        event: evs[0],
        state: "s".into(),
        expected: "e".into(),
        observed: "o".into(),
        evidence: evs.iter().take(64).copied().collect(),
    };
    let text = serde_json::to_string(&sink.anomaly_line(&a)).expect("JSON");
    assert!(
        numbers_in(&text).intersection(&ptrs).next().is_some(),
        "{text}"
    );
}
