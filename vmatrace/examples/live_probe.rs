//! Manual real-kernel check of the live capture path (no planner, no pipeline): start a
//! `LiveSession` on a hand-made 7.x plan, run a VMA-lock workload in a child process, and
//! print what arrived: events per kind and probe, one sample per kind, protocol facts
//! read from the samples, the kernel counters and the per-program BPF statistics.
//!
//! Built static and run as the init payload of a QEMU guest booted with a Debian 7.x
//! kernel (see the ebpf helper's report):
//! `RUSTFLAGS="-C target-feature=+crt-static" cargo build --example live_probe --target x86_64-unknown-linux-gnu`
//!
//! Usage: `live_probe [--kprobes] [--gen 6.18|6.19|7] [--seconds N] [--sample N]`
//! (`--workload N` is the child's mode: N seconds of readers, writers and forks.)

#[path = "../tests/common/plans.rs"]
#[expect(
    dead_code,
    reason = "shared with the tests; this example uses the 7.x plan only"
)]
mod plans;

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};
use vmatrace::{
    live::{Filters, LiveOptions, LiveSession, StreamOptions, tracing_programs_supported},
    pipeline::{CounterSnapshot, SourceItem},
};
use vmatrace_common::{Counter, Event, EventKind, event::flags, model::Generation};

const F: u32 = 1 << 30;

fn arg_value(args: &[String], name: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(secs) = arg_value(&args, "--workload") {
        workload(Duration::from_secs(secs));
        return Ok(());
    }
    let secs = arg_value(&args, "--seconds").unwrap_or(3);
    let sample = arg_value(&args, "--sample").unwrap_or(64) as u32;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("kernel {}", release.trim());
    let tracing = match tracing_programs_supported() {
        Ok(t) => t,
        Err(e) => {
            println!("tracing_programs_supported: error {e}");
            false
        }
    };
    println!("tracing programs supported: {tracing}");
    let use_tracing = tracing && !args.iter().any(|a| a == "--kprobes");
    // `--gen 6.18` (6.16-6.18), `--gen 6.19`, default 7.x.
    let gen_arg = args
        .iter()
        .position(|a| a == "--gen")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let plan = match gen_arg {
        Some("6.18") => plans::plan_6x(Generation::V6_15, use_tracing),
        Some("6.19") => plans::plan_6x(Generation::V6_19, use_tracing),
        _ => plans::plan_7x(use_tracing),
    };
    println!("plan: generation {}", plan.generation.label());
    let session = LiveSession::start(LiveOptions {
        plan,
        filters: Filters::default(),
        stream: StreamOptions {
            reader_sample_every: sample,
            stream_entries: false,
            ring_buffer_bytes: 16 << 20,
            ..StreamOptions::default()
        },
        enable_stats: true,
    })
    .context("LiveSession::start")?;
    for h in session.hooks() {
        match &h.error {
            None => println!(
                "  attached {:<10} {:<36} {}",
                h.point.mode.key(),
                h.point.target,
                h.point.program
            ),
            Some(e) => println!(
                "  FAILED   {:<10} {:<36} {}: {e}",
                h.point.mode.key(),
                h.point.target,
                h.point.program
            ),
        }
    }
    let stats = session.stats_handle();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (events, counters) = rt.block_on(async move {
        let (tx, mut rx) = mpsc::channel(256);
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let streamer = tokio::spawn(session.stream(tx, async {
            let _ = stop_rx.await;
        }));
        let collector = tokio::spawn(async move {
            let mut events = Vec::new();
            let mut counters = CounterSnapshot::default();
            let mut undecodable = 0;
            while let Some(item) = rx.recv().await {
                match item {
                    SourceItem::Events(b) => events.extend(b),
                    SourceItem::Counters(c) => counters = c,
                    SourceItem::Undecodable(n) => undecodable += n,
                    SourceItem::Stack(_) => {}
                    SourceItem::Sequence(_) => unreachable!("a live source has no record sequence"),
                }
            }
            println!("undecodable records: {undecodable}");
            (events, counters)
        });
        let exe = std::env::current_exe().expect("own path");
        let t0 = Instant::now();
        let status = tokio::task::spawn_blocking(move || {
            std::process::Command::new(exe)
                .args(["--workload", &secs.to_string()])
                .status()
        })
        .await
        .expect("join")
        .expect("workload child");
        println!(
            "workload: {status} after {:.1}s",
            t0.elapsed().as_secs_f64()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let ps = stats.program_stats();
        let _ = stop_tx.send(());
        streamer.await.expect("stream task").expect("stream");
        let out = collector.await.expect("collector");
        println!("program stats (BPF_ENABLE_STATS):");
        for s in ps {
            println!(
                "  {:<28} runs {:>9}  {:>8.0} ns/run  {:>5} insns",
                s.name,
                s.run_cnt,
                s.ns_per_run().unwrap_or(0.0),
                s.verified_insns.map(|n| n.to_string()).unwrap_or_default()
            );
        }
        out
    });
    report(&events, &counters);
    Ok(())
}

fn show(e: &Event) -> String {
    let comm = String::from_utf8_lossy(&e.comm);
    format!(
        "{:?}/{} tid {} {} vma {:#x} [{:#x}-{:#x}) refcnt {:#x} (entry {:#x}) vm_lock_seq {} mm_lock_seq {} ret {} wait {} ns ves s={:#x} det'ing={} det'd={} excl={} arg {:#x} flags {:#b}",
        e.kind().map(EventKind::key).unwrap_or("?"),
        e.probe().kernel_name(),
        e.tid(),
        comm.trim_end_matches('\0'),
        e.vma,
        e.vm_start,
        e.vm_end,
        e.refcnt,
        e.entry_refcnt,
        e.vm_lock_seq,
        e.mm_lock_seq,
        e.ret,
        e.wait_ns,
        e.ves_state,
        e.ves_detaching,
        e.ves_detached,
        e.ves_exclusive,
        e.arg,
        e.flags
    )
}

fn report(events: &[Event], counters: &CounterSnapshot) {
    let mut by_kind: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut first: BTreeMap<&str, &Event> = BTreeMap::new();
    for e in events {
        let k = e.kind().map(EventKind::key).unwrap_or("?");
        *by_kind.entry((k, e.probe().kernel_name())).or_default() += 1;
        first.entry(k).or_insert(e);
    }
    println!("{} events:", events.len());
    for ((k, p), n) in &by_kind {
        println!("  {k:<18} {p:<36} {n}");
    }
    println!("one sample per kind:");
    for e in first.values() {
        println!("  {}", show(e));
    }
    // Protocol facts visible in the samples (docs/protocol.md#invariants).
    let mut facts: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        let fact = match e.kind() {
            Some(EventKind::ExcludeExit) => {
                let r = match e.refcnt {
                    0 => "R=0".to_string(),
                    r if r == F + 1 => "R=F+1".to_string(),
                    r if r == F => "R=F".to_string(),
                    r => format!("R={r:#x}"),
                };
                format!(
                    "exclude_exit ret={} exclusive={} detached={} detaching={} {r}",
                    e.ret, e.ves_exclusive, e.ves_detached, e.ves_detaching
                )
            }
            Some(EventKind::WriteLockExit) => format!(
                "write_lock_exit ret={} locked(L==S)={} R<F={} paired={}",
                e.ret,
                e.vm_lock_seq == e.mm_lock_seq,
                e.refcnt < F,
                e.has(flags::PAIRED)
            ),
            Some(EventKind::WriterWake) => format!(
                "writer_wake R={}",
                if e.refcnt == F + 1 {
                    "F+1".into()
                } else if e.refcnt == F {
                    "F".into()
                } else {
                    format!("{:#x}", e.refcnt)
                }
            ),
            Some(EventKind::VmaFree) => format!("vma_free R={}", e.refcnt),
            Some(EventKind::DetachExit) => format!("detach_exit R={}", e.refcnt),
            Some(EventKind::ReaderAcquire) if e.ret != 0 && e.ret > -4096 && e.ret < 0 => {
                format!("reader_acquire err {}", e.ret)
            }
            Some(EventKind::ReaderAcquire) if e.ret != 0 => format!(
                "reader_acquire ok R>=2={} L!=S={} in-range={}",
                e.refcnt >= 2,
                e.vm_lock_seq != e.mm_lock_seq,
                e.vm_start <= e.arg && e.arg < e.vm_end
            ),
            Some(EventKind::ReaderAcquire) => "reader_acquire NULL".into(),
            Some(EventKind::MmWriteUnlock) => format!(
                "mm_write_unlock({}) seq odd={}",
                e.probe().kernel_name(),
                e.mm_lock_seq & 1 == 1
            ),
            _ => continue,
        };
        *facts.entry(fact).or_default() += 1;
    }
    println!("protocol facts:");
    for (f, n) in &facts {
        println!("  {n:>8}  {f}");
    }
    let mut waits: Vec<u64> = events
        .iter()
        .filter(|e| e.kind() == Some(EventKind::ExcludeExit) && e.has(flags::PAIRED))
        .map(|e| e.wait_ns)
        .collect();
    waits.sort_unstable();
    if !waits.is_empty() {
        let q = |p: f64| waits[((waits.len() - 1) as f64 * p) as usize];
        println!(
            "start-exclude wait ns: n={} p50={} p90={} p99={} max={}",
            waits.len(),
            q(0.5),
            q(0.9),
            q(0.99),
            q(1.0)
        );
    }
    println!("kernel counters:");
    for c in Counter::ALL {
        println!("  {:<24} {}", c.key(), counters.get(*c));
    }
}

/// Readers write-fault on a shared mapping (`lock_vma_under_rcu`; a write fault
/// allocates and zeroes a page, so readers hold the VMA lock a while), a zapper drops the
/// pages again, a writer flips PROT_EXEC on parts of it (VMA split/merge:
/// `__vma_start_write` with readers inside → exclusion waits and wake-ups) and maps and
/// unmaps small regions (detach, free), and the main thread forks (`dup_mmap` write-locks
/// every VMA: `vm_area_dup`).
fn workload(duration: Duration) {
    const LEN: usize = 4 << 20;
    const PAGE: usize = 4096;
    const RW: i32 = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: anonymous private mapping owned by this process.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            LEN,
            RW,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(base, libc::MAP_FAILED);
    let base = base as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..3 {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut off = t * PAGE;
                while off < LEN {
                    // SAFETY: inside the mapping, which stays writable (only PROT_EXEC
                    // is toggled).
                    unsafe { ((base + off) as *mut u8).write_volatile(1) };
                    off += 3 * PAGE;
                }
            }
        }));
    }
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: drops the pages of our own mapping.
                unsafe { libc::madvise(base as *mut _, LEN, libc::MADV_DONTNEED) };
                std::thread::sleep(Duration::from_micros(500));
            }
        }));
    }
    {
        let stop = stop.clone();
        threads.push(std::thread::spawn(move || {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let off = (i % 64) * 16 * PAGE;
                // SAFETY: protection changes and a private scratch mapping of our own.
                unsafe {
                    libc::mprotect((base + off) as *mut _, 8 * PAGE, RW | libc::PROT_EXEC);
                    libc::mprotect((base + off) as *mut _, 8 * PAGE, RW);
                    let p = libc::mmap(
                        std::ptr::null_mut(),
                        16 * PAGE,
                        RW,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    );
                    if p != libc::MAP_FAILED {
                        p.cast::<u8>().write_volatile(1);
                        libc::munmap(p, 16 * PAGE);
                    }
                }
                i += 1;
            }
        }));
    }
    let t0 = Instant::now();
    while t0.elapsed() < duration {
        // SAFETY: the child only exits.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                libc::_exit(0);
            }
            if pid > 0 {
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
}
