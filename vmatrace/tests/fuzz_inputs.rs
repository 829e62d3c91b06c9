//! Seeded mutation fuzzing of everything vmatrace parses from outside: the trace reader
//! (files and `--follow` streams), and the planner's inputs (BTF, kallsyms, ftrace lists).
//! Part of `cargo test` (so of `cargo xtask test`): a fixed seed, printed, makes a failure
//! reproducible; `VMATRACE_FUZZ_SEED=N` runs another.
//!
//! Seeds are the shipped fixtures (`tests/data`) and a synthetic trace. Mutations: bit
//! flips, byte inserts and deletes, truncation at every record boundary, records
//! duplicated, reordered, deleted or renumbered (checksums valid or recomputed, so only the
//! sequence check can catch them), huge length fields, zstd-compressed variants. Checked:
//! no panic, no hang (a watchdog gives each case a deadline), allocations bounded by the
//! input (a counting allocator), the outcome is one of the documented exit classes, and
//! the real binary never exits with anything but 0 or 4 on a few hundred mutants.

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    cell::Cell,
    io::{Cursor, Write},
    panic::{AssertUnwindSafe, catch_unwind},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use common::*;
use vmatrace::{
    kernel::{btf::Btf, ftrace, symbols::Kallsyms},
    trace::{
        ReadOptions, TraceError, TraceReader, TraceWriter,
        format::{FLAG_ZSTD, MAX_PAYLOAD_LEN},
    },
};

const DEFAULT_SEED: u64 = 0x1414_5eed_c0ff_ee01;
/// A case taking longer than this is a hang.
const CASE_DEADLINE: Duration = Duration::from_secs(20);

// ---- allocation accounting -------------------------------------------------------------

/// Counts the largest single allocation of the current thread (the reader runs on one
/// thread; other tests' threads do not disturb it).
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = LARGEST.try_with(|c| c.set(c.get().max(l.size())));
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` with `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let _ = LARGEST.try_with(|c| c.set(c.get().max(new)));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn largest_since_reset() -> usize {
    LARGEST.with(|c| c.replace(0))
}

// ---- PRNG ---------------------------------------------------------------------------------

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}

fn seed() -> u64 {
    std::env::var("VMATRACE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED)
}

// ---- seeds ----------------------------------------------------------------------------------

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

/// A trace in plain form (body not compressed), with its format version.
struct Seed {
    name: String,
    bytes: Vec<u8>,
}

fn body_at(trace: &[u8]) -> usize {
    match trace.get(12..16) {
        Some(l) => 16 + u32::from_le_bytes(l.try_into().expect("4 bytes")) as usize + 4,
        None => trace.len(),
    }
}

/// The plain form of a compressed trace (same version, flag cleared).
fn decompressed(trace: &[u8]) -> Vec<u8> {
    if trace[10] & FLAG_ZSTD as u8 == 0 {
        return trace.to_vec();
    }
    let at = body_at(trace);
    let mut out = trace[..at].to_vec();
    out[10] &= !(FLAG_ZSTD as u8);
    out.extend(zstd::stream::decode_all(&trace[at..]).expect("fixture decompresses"));
    out
}

/// The compressed form of a plain trace (maybe mutated: the body is compressed as is).
fn compressed(trace: &[u8]) -> Vec<u8> {
    let at = body_at(trace).min(trace.len());
    let mut out = trace[..at].to_vec();
    if out.len() > 10 {
        out[10] |= FLAG_ZSTD as u8;
    }
    out.extend(zstd::stream::encode_all(&trace[at..], 3).expect("compress"));
    out
}

/// Rewrite a trace with this vmatrace's writer (the current format version).
fn rerecorded(trace: &[u8]) -> Vec<u8> {
    let mut r = TraceReader::new(Cursor::new(trace.to_vec())).expect("fixture");
    let shared = Shared::default();
    let mut w = TraceWriter::new(shared.clone(), r.header(), false).expect("writer");
    let mut end = 0;
    while let Some(rec) = r.next_record().expect("fixture reads") {
        use vmatrace::trace::Record;
        match rec {
            Record::Events { mono_ns, events } => w.write_events(mono_ns, &events),
            Record::Counters { mono_ns, values } => w.write_counters(mono_ns, &values),
            Record::Undecodable { mono_ns, count } => w.write_undecodable(mono_ns, count),
            Record::Stack { mono_ns, stack } => w.write_stack(mono_ns, &stack),
            Record::Fallbacks { mono_ns, fallbacks } => w.write_fallbacks(mono_ns, &fallbacks),
            Record::End { mono_ns, .. } => {
                end = mono_ns;
                Ok(())
            }
        }
        .expect("write");
    }
    w.finish(end).expect("finish");
    shared.take()
}

#[derive(Clone, Default)]
struct Shared(Arc<std::sync::Mutex<Vec<u8>>>);
impl Shared {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().expect("lock"))
    }
}
impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn seeds() -> Vec<Seed> {
    let dir = tempfile::tempdir().expect("tempdir");
    let synthetic = dir.path().join("synthetic.vmatrace");
    write_sample(&synthetic, false);
    let small = decompressed(
        &std::fs::read(data_dir().join("sample-7.3.4-cloud.vmatrace")).expect("fixture"),
    );
    vec![
        Seed {
            name: "synthetic v2".into(),
            bytes: std::fs::read(&synthetic).expect("read"),
        },
        Seed {
            name: "sample-7.3.4-cloud v2".into(),
            bytes: rerecorded(&small),
        },
        Seed {
            name: "sample-7.3.4-cloud v1".into(),
            bytes: small,
        },
    ]
}

// ---- mutations ------------------------------------------------------------------------------

fn version(trace: &[u8]) -> u16 {
    u16::from_le_bytes([trace[8], trace[9]])
}

/// Recompute a record's checksum after editing its header or payload.
fn reseal(rec: &mut [u8]) {
    let n = rec.len();
    if n < 4 {
        return;
    }
    let crc = crc32fast::hash(&rec[..n - 4]);
    rec[n - 4..].copy_from_slice(&crc.to_le_bytes());
}

/// One mutant of a plain trace, and whether it must not read as the original (a record
/// moved, copied or deleted whole must be noticed: an error or counted losses).
fn mutate(rng: &mut Rng, seed: &[u8]) -> (Vec<u8>, &'static str, bool) {
    let mut b = seed.to_vec();
    let (head, mut recs) = split_records(seed);
    let n = recs.len();
    let v2 = version(seed) >= 2;
    let (what, structural) = match rng.below(9) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            return (b, "bit flips", false);
        }
        1 => {
            let i = rng.below(b.len() + 1);
            let extra: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.next() as u8).collect();
            b.splice(i..i, extra);
            return (b, "byte insert", false);
        }
        2 => {
            let i = rng.below(b.len());
            let k = (1 + rng.below(16)).min(b.len() - i);
            b.drain(i..i + k);
            return (b, "byte delete", false);
        }
        3 if n > 2 => {
            let i = rng.below(n - 1);
            recs.insert(i + 1, recs[i].clone());
            ("record duplicated", v2)
        }
        4 if n > 2 => {
            // Two records other than the end record.
            let i = rng.below(n - 2);
            let j = i + 1 + rng.below(n - 2 - i);
            recs.swap(i, j);
            ("records reordered", v2)
        }
        5 if n > 2 => {
            recs.remove(rng.below(n - 1));
            ("record deleted", v2)
        }
        6 if v2 && n > 2 => {
            // A sequence number changed, checksum recomputed: only the order check sees it.
            let i = rng.below(n - 1);
            let delta = 1 + rng.below(3) as u64;
            let at = 16;
            let old = u64::from_le_bytes(recs[i][at..at + 8].try_into().expect("8"));
            let new = if rng.coin() {
                old + delta
            } else {
                old.saturating_sub(delta)
            };
            recs[i][at..at + 8].copy_from_slice(&new.to_le_bytes());
            reseal(&mut recs[i]);
            ("record renumbered", new != old)
        }
        7 => {
            // A huge declared length (record or header), checksum recomputed.
            let len = [
                u32::MAX,
                MAX_PAYLOAD_LEN,
                MAX_PAYLOAD_LEN + 1,
                rng.next() as u32,
            ][rng.below(4)];
            if rng.coin() || n == 0 {
                b[12..16].copy_from_slice(&len.to_le_bytes());
                return (b, "huge header length", false);
            }
            let i = rng.below(n);
            recs[i][4..8].copy_from_slice(&len.to_le_bytes());
            reseal(&mut recs[i]);
            ("huge record length", false)
        }
        _ => {
            let cut = rng.below(b.len() + 1);
            b.truncate(cut);
            return (b, "truncated", false);
        }
    };
    (join_records(&head, &recs), what, structural)
}

// ---- the reader under test ---------------------------------------------------------------

/// The exit class `vmatrace replay` maps an outcome to (docs/summary.md): 0 ok, 4 bad.
#[derive(Debug, PartialEq)]
enum Class {
    Ok,
    Bad,
}

struct Outcome {
    class: Class,
    /// Read completely and in order, nothing lost: indistinguishable from the original.
    clean: bool,
}

/// Read a trace as `replay` (or `replay --follow`) does and classify the outcome.
fn read(bytes: Vec<u8>, follow: bool) -> Outcome {
    let opts = ReadOptions {
        scan_for_magic: follow,
        end_seen: follow.then(|| Arc::new(AtomicBool::new(false))),
    };
    let mut r = match TraceReader::with_options(Cursor::new(bytes), opts) {
        Ok(r) => r,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return Outcome {
                class: Class::Bad,
                clean: false,
            };
        }
    };
    let end = loop {
        match r.next_record() {
            Ok(Some(_)) => {}
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    let class = match &end {
        None => Class::Ok,
        Some(TraceError::MissingEnd { .. }) if follow => Class::Ok,
        Some(e) => {
            // Every error names where it happened (or what is wrong with the input).
            let msg = e.to_string();
            assert!(
                msg.contains("byte") || msg.contains("vmatrace trace") || msg.contains("version"),
                "{msg}"
            );
            Class::Bad
        }
    };
    Outcome {
        clean: end.is_none() && r.sequence().total() == 0,
        class,
    }
}

/// Allocation bound for reading `input` bytes: the reader's fixed buffers, plus a
/// multiple of what actually arrives (compressed input can inflate up to one record).
fn allocation_bound(input: &[u8], compressed: bool) -> usize {
    const FIXED: usize = 1 << 20;
    let data = if compressed {
        MAX_PAYLOAD_LEN as usize
    } else {
        input.len()
    };
    FIXED + 4 * data
}

/// Run every case of `cases` on a worker thread under a watchdog: a panic fails with the
/// case's name; a case that exceeds the deadline fails as a hang.
fn with_watchdog(label: &str, f: impl FnOnce(&AtomicU64) + Send + 'static) {
    let progress = Arc::new(AtomicU64::new(0));
    let p = Arc::clone(&progress);
    let worker = std::thread::Builder::new()
        .name(format!("fuzz-{label}"))
        .stack_size(16 << 20)
        .spawn(move || f(&p))
        .expect("spawn");
    let mut last = (0, Instant::now());
    while !worker.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
        let now = progress.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
        assert!(
            last.1.elapsed() < CASE_DEADLINE,
            "{label}: case {now} hangs (over {CASE_DEADLINE:?}; seed {:#x})",
            seed()
        );
    }
    if let Err(e) = worker.join() {
        std::panic::resume_unwind(e);
    }
}

/// One reader case: no panic, bounded allocations, a documented class.
fn reader_case(id: u64, what: &str, bytes: Vec<u8>, follow: bool, is_zstd: bool) -> Outcome {
    let bound = allocation_bound(&bytes, is_zstd);
    largest_since_reset();
    let out = catch_unwind(AssertUnwindSafe(|| read(bytes, follow)))
        .unwrap_or_else(|_| panic!("case {id} ({what}) panicked; seed {:#x}", seed()));
    let largest = largest_since_reset();
    assert!(
        largest <= bound,
        "case {id} ({what}): one allocation of {largest} bytes (bound {bound}); seed {:#x}",
        seed()
    );
    out
}

#[test]
fn fuzz_trace_reader_and_planner_inputs() {
    let seed = seed();
    println!("fuzz seed {seed:#x} (VMATRACE_FUZZ_SEED={seed} reproduces)");
    let t0 = Instant::now();
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    with_watchdog("trace", move |progress| {
        let mut rng = Rng(seed | 1);
        let id = Cell::new(0u64);
        let case = |what: &str, bytes: Vec<u8>, follow: bool, is_zstd: bool| {
            id.set(id.get() + 1);
            progress.store(id.get(), Ordering::Relaxed);
            reader_case(id.get(), what, bytes, follow, is_zstd)
        };
        for s in seeds() {
            // The seed itself reads cleanly, plain and compressed.
            for follow in [false, true] {
                let out = case("seed", s.bytes.clone(), follow, false);
                assert!(out.clean && out.class == Class::Ok, "{}", s.name);
                let out = case("seed zstd", compressed(&s.bytes), follow, true);
                assert!(out.clean && out.class == Class::Ok, "{}", s.name);
            }
            // Truncation at every record boundary (and one byte into each record): a
            // followed stream cut between records ends cleanly, nothing else is clean.
            let (head, recs) = split_records(&s.bytes);
            let mut at = head.len();
            let step = (recs.len() / 60).max(1);
            for (i, r) in recs.iter().enumerate() {
                if i % step == 0 {
                    for follow in [false, true] {
                        let out = case("cut at a record", s.bytes[..at].to_vec(), follow, false);
                        assert_eq!(out.class == Class::Ok, follow, "{} cut {at}", s.name);
                        let out =
                            case("cut in a record", s.bytes[..at + 1].to_vec(), follow, false);
                        assert_eq!(out.class, Class::Bad, "{} cut {}", s.name, at + 1);
                    }
                }
                at += r.len();
            }
            // Random mutants, plain and compressed, read as a file and as a stream.
            for _ in 0..400 {
                let (m, what, structural) = mutate(&mut rng, &s.bytes);
                let follow = rng.coin();
                let (m, is_zstd) = if rng.below(4) == 0 {
                    let mut z = compressed(&m);
                    if rng.coin() {
                        let cut = rng.below(z.len() + 1);
                        z.truncate(cut);
                    }
                    (z, true)
                } else {
                    (m, false)
                };
                let out = case(what, m, follow, is_zstd);
                if structural {
                    assert!(
                        !out.clean,
                        "{} ({what}) read as if nothing happened; seed {seed:#x}, case {}",
                        s.name,
                        id.get()
                    );
                }
            }
        }
        c.fetch_add(id.get(), Ordering::Relaxed);
    });
    let planner = fuzz_planner_inputs(seed);
    let total = count.load(Ordering::Relaxed) + planner;
    println!(
        "fuzz: {} trace cases + {planner} planner-input cases = {total} in {:.2} s",
        count.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64()
    );
    assert!(total >= 2000, "only {total} cases");
}

// ---- planner inputs -------------------------------------------------------------------------

/// A small BTF blob from the head of a real one: the header, the first 16 KiB of types
/// and 16 KiB of strings (a parse of the full 5 MB blob is too slow for hundreds of
/// debug-build cases; the truncated last type exercises the error paths too).
fn small_btf() -> Vec<u8> {
    let raw = std::fs::read(data_dir().join("kernels/host-6.18/btf.zst")).expect("btf");
    let btf = zstd::stream::decode_all(raw.as_slice()).expect("btf");
    let u32_at = |at: usize| u32::from_le_bytes(btf[at..at + 4].try_into().expect("4")) as usize;
    let (hdr, toff, tlen, soff, slen) = (u32_at(4), u32_at(8), u32_at(12), u32_at(16), u32_at(20));
    let types = &btf[hdr + toff..hdr + toff + tlen.min(16 << 10)];
    let strings = &btf[hdr + soff..hdr + soff + slen.min(16 << 10)];
    let mut out = btf[..hdr].to_vec();
    let put = |out: &mut Vec<u8>, at: usize, v: usize| {
        out[at..at + 4].copy_from_slice(&(v as u32).to_le_bytes());
    };
    put(&mut out, 8, 0);
    put(&mut out, 12, types.len());
    put(&mut out, 16, types.len());
    put(&mut out, 20, strings.len());
    out.extend_from_slice(types);
    out.extend_from_slice(strings);
    out
}

fn mutate_bytes(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..1 + rng.below(3) {
        match rng.below(4) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] ^= 1 << rng.below(8);
            }
            1 => {
                let i = rng.below(b.len() + 1);
                b.insert(i, rng.next() as u8);
            }
            2 if !b.is_empty() => {
                b.remove(rng.below(b.len()));
            }
            _ => {
                let cut = rng.below(b.len() + 1);
                b.truncate(cut);
            }
        }
    }
    // Huge length fields in BTF headers.
    if rng.below(8) == 0 && b.len() >= 24 {
        let at = 4 + 4 * rng.below(5);
        b[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    }
    b
}

/// BTF, kallsyms and ftrace-list parsers on mutated fixtures: no panic, no hang, bounded
/// allocations. Returns the number of cases.
fn fuzz_planner_inputs(seed: u64) -> u64 {
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    with_watchdog("planner", move |progress| {
        let mut rng = Rng(seed.rotate_left(17) | 1);
        let dir = data_dir().join("kernels/debian-7.3.4-cloud");
        let text = |f: &str| std::fs::read(dir.join(f)).expect("fixture");
        let btf = small_btf();
        let sources = [
            ("btf", btf),
            ("kallsyms", text("kallsyms")),
            (
                "available_filter_functions",
                text("available_filter_functions"),
            ),
            ("kprobe_blacklist", text("kprobe_blacklist")),
        ];
        let mut id = 0u64;
        for (name, seed_bytes) in &sources {
            for i in 0..150 {
                id += 1;
                progress.store(id, Ordering::Relaxed);
                let m = if i == 0 {
                    seed_bytes.clone()
                } else {
                    mutate_bytes(&mut rng, seed_bytes)
                };
                let bound = (1 << 20) + 16 * m.len();
                largest_since_reset();
                let r = catch_unwind(AssertUnwindSafe(|| {
                    let s = String::from_utf8_lossy(&m);
                    match *name {
                        "btf" => Btf::parse(&m).map(|_| ()).map_err(|e| e.to_string()),
                        "kallsyms" => Kallsyms::parse(&s).map(|_| ()).map_err(|e| e.to_string()),
                        "available_filter_functions" => ftrace::FilterFunctions::parse(&s)
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                        _ => ftrace::KprobeBlacklist::parse(&s)
                            .map(|_| ())
                            .map_err(|e| e.to_string()),
                    }
                }));
                let largest = largest_since_reset();
                assert!(r.is_ok(), "{name} case {i} panicked; seed {seed:#x}");
                assert!(
                    largest <= bound,
                    "{name} case {i}: one allocation of {largest} bytes; seed {seed:#x}"
                );
            }
        }
        c.store(id, Ordering::Relaxed);
    });
    count.load(Ordering::Relaxed)
}

// ---- the real binary ------------------------------------------------------------------------

/// `vmatrace replay` on mutants: exit 0 or 4, never a panic (101) or anything else, and
/// never a hang.
#[test]
fn replay_binary_exits_0_or_4_on_mutants() {
    let seed = seed();
    println!("fuzz seed {seed:#x} (VMATRACE_FUZZ_SEED={seed} reproduces)");
    let t0 = Instant::now();
    let mut rng = Rng(seed.rotate_left(33) | 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let seeds = seeds();
    let mut n = 0;
    for i in 0..240 {
        let s = &seeds[i % seeds.len()];
        let (m, what, _) = mutate(&mut rng, &s.bytes);
        let m = if rng.below(3) == 0 { compressed(&m) } else { m };
        let follow = rng.coin();
        let path = dir.path().join(format!("m{i}.vmatrace"));
        std::fs::write(&path, &m).expect("write");
        let mut cmd = bin();
        cmd.args(["replay", "--json"]);
        if follow {
            // On stdin: a followed regular file would wait for more data.
            cmd.args(["--follow", "-"])
                .stdin(std::fs::File::open(&path).expect("open"));
        } else {
            cmd.arg(&path).stdin(Stdio::null());
        }
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let started = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break st;
            }
            if started.elapsed() > CASE_DEADLINE {
                let _ = child.kill();
                panic!("mutant {i} ({what}, follow={follow}) hangs; seed {seed:#x}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        let code = status.code();
        assert!(
            matches!(code, Some(0 | 4)),
            "mutant {i} ({what}, follow={follow}) exited {code:?}; seed {seed:#x}; kept at {}\n{err}",
            path.display()
        );
        n += 1;
        let _ = std::fs::remove_file(&path);
    }
    println!(
        "fuzz: {n} replay runs of the binary in {:.2} s",
        t0.elapsed().as_secs_f64()
    );
}
