//! Validator throughput and memory on a large, realistic event stream.
//!
//! `cargo bench -p vmatrace --bench validator` (release). Prints numbers, asserts
//! nothing about time. The stream: 1000 mms × 1000 VMAs (1M live VMAs), then a steady
//! mix of page faults (`lock_vma_under_rcu`, some retried with an out-of-line
//! `vma_refcount_put`; uniform over all VMAs, the worst case for caches, or with 90% of
//! faults on 1% of the VMAs), write-lock cycles (`__vma_start_write` with start/end-exclude on
//! 7.x, ephemeral readers, `mmap_write_unlock`) and munmap-like churn (slow-path detach,
//! `vm_area_free`, reuse by `vm_area_alloc`). Generated in chunks; only `observe` is timed.

mod common;

use std::time::{Duration, Instant};

use common::{rss_kib, thread_cpu};
use vmatrace::validate::Validator;
use vmatrace_common::{
    Event, EventKind,
    event::{ProbeId, flags},
    model::{Generation, generation::TASK_UNINTERRUPTIBLE, refcnt::F},
};

const MMS: u64 = 1000;
const VMAS_PER_MM: u64 = 1000;
const VMA_BASE: u64 = 0xffff_8881_0000_0000;
const MM_BASE: u64 = 0xffff_8882_0000_0000;
const CHUNK: usize = 1 << 16;

struct Gen {
    /// Faults with locality: this share (in %) of them hit 1% of the VMAs.
    hot_pct: u64,
    rng: u64,
    ts: u64,
    seqs: Vec<u32>,
    out: Vec<Event>,
}

impl Gen {
    fn new(hot_pct: u64) -> Self {
        Self {
            hot_pct,
            rng: 0x9E37_79B9_7F4A_7C15,
            ts: 1,
            seqs: vec![0; MMS as usize],
            out: Vec::with_capacity(CHUNK + 64),
        }
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn vma(mm: u64, i: u64) -> u64 {
        VMA_BASE + (mm * VMAS_PER_MM + i) * 192
    }

    fn mm(mm: u64) -> u64 {
        MM_BASE + mm * 0x400
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one event's fields, in Event order"
    )]
    fn ev(
        &mut self,
        kind: EventKind,
        probe: ProbeId,
        tid: u32,
        mm: u64,
        vma: u64,
        r: u32,
        l: u32,
        ret: i64,
    ) -> &mut Event {
        self.ts += 37;
        let e = Event::new(kind, probe)
            .at(self.ts)
            .with_task(tid, tid)
            .with_vma(vma, Self::mm(mm), 0, 0)
            .with_sample(r, l, self.seqs[mm as usize])
            .with_ret(ret);
        self.out.push(e);
        self.out.last_mut().expect("just pushed")
    }

    /// One VMA of every mm comes to life (the initial population).
    fn populate(&mut self, mm: u64, i: u64) {
        let vma = Self::vma(mm, i);
        self.ev(
            EventKind::VmaAlloc,
            ProbeId::VmAreaAlloc,
            1,
            mm,
            vma,
            0,
            u32::MAX,
            vma as i64,
        );
    }

    /// A chunk of steady-state traffic.
    fn chunk(&mut self) {
        self.out.clear();
        while self.out.len() < CHUNK {
            let x = self.next();
            let mm = x % MMS;
            let i = (x >> 16) % VMAS_PER_MM;
            // Hot VMAs: the first 1% of every mm's VMAs (stack, heap, text).
            let i = if (x >> 24) % 100 < self.hot_pct {
                i % (VMAS_PER_MM / 100)
            } else {
                i
            };
            let vma = Self::vma(mm, i);
            let tid = 1000 + (mm as u32) * 4 + ((x >> 40) as u32 & 3);
            let writer = 900_000 + mm as u32;
            let seq = self.seqs[mm as usize];
            match x >> 56 {
                // Page fault handled under the VMA lock; a few retry and release
                // through the out-of-line vma_refcount_put.
                0..=239 => {
                    self.ev(
                        EventKind::ReaderAcquire,
                        ProbeId::LockVmaUnderRcu,
                        tid,
                        mm,
                        vma,
                        2,
                        seq.wrapping_sub(3),
                        vma as i64,
                    );
                    if x & 0xf == 0 {
                        self.ev(
                            EventKind::ReaderRelease,
                            ProbeId::VmaRefcountPut,
                            tid,
                            mm,
                            vma,
                            2,
                            seq.wrapping_sub(3),
                            0,
                        );
                    }
                }
                // mmap/mprotect-like: write-lock one or two VMAs, ephemeral readers.
                240..=252 => {
                    self.seqs[mm as usize] += 1;
                    let s = self.seqs[mm as usize];
                    for k in 0..1 + (x & 1) {
                        let v = Self::vma(mm, (i + k) % VMAS_PER_MM);
                        let e = self.ev(
                            EventKind::WriteLockEnter,
                            ProbeId::VmaStartWrite,
                            writer,
                            mm,
                            v,
                            1,
                            7,
                            0,
                        );
                        *e = e.with_arg(u64::from(TASK_UNINTERRUPTIBLE));
                        let e = self.ev(
                            EventKind::ExcludeEnter,
                            ProbeId::VmaStartExcludeReaders,
                            writer,
                            mm,
                            v,
                            1,
                            7,
                            0,
                        );
                        *e = e.with_ves(TASK_UNINTERRUPTIBLE, false);
                        let e = self.ev(
                            EventKind::ExcludeExit,
                            ProbeId::VmaStartExcludeReaders,
                            writer,
                            mm,
                            v,
                            F + 1,
                            7,
                            0,
                        );
                        *e = e
                            .with_ves(TASK_UNINTERRUPTIBLE, false)
                            .with_ves_outcome(false, true);
                        self.ev(
                            EventKind::WriteLockExit,
                            ProbeId::VmaStartWrite,
                            writer,
                            mm,
                            v,
                            1,
                            s,
                            0,
                        );
                        if x & 4 == 0 {
                            self.ev(
                                EventKind::ReaderAcquire,
                                ProbeId::LockVmaUnderRcu,
                                tid,
                                mm,
                                v,
                                2,
                                s,
                                0,
                            );
                        }
                    }
                    self.seqs[mm as usize] += 1;
                    let e = self.ev(
                        EventKind::MmWriteUnlock,
                        ProbeId::MmapLockReleased,
                        writer,
                        mm,
                        0,
                        0,
                        0,
                        0,
                    );
                    *e = Event {
                        flags: flags::MM_SEQ,
                        ..e.with_arg(1)
                    };
                }
                // munmap-like: write-lock, slow-path detach (a spurious reader), free, and
                // the object comes back as a new VMA.
                _ => {
                    self.seqs[mm as usize] += 1;
                    let s = self.seqs[mm as usize];
                    let e = self.ev(
                        EventKind::WriteLockEnter,
                        ProbeId::VmaStartWrite,
                        writer,
                        mm,
                        vma,
                        1,
                        7,
                        0,
                    );
                    *e = e.with_arg(u64::from(TASK_UNINTERRUPTIBLE));
                    self.ev(
                        EventKind::WriteLockExit,
                        ProbeId::VmaStartWrite,
                        writer,
                        mm,
                        vma,
                        1,
                        s,
                        0,
                    );
                    self.ev(
                        EventKind::DetachEnter,
                        ProbeId::VmaExcludeReadersForDetach,
                        writer,
                        mm,
                        vma,
                        1,
                        s,
                        0,
                    );
                    let e = self.ev(
                        EventKind::ExcludeEnter,
                        ProbeId::VmaStartExcludeReaders,
                        writer,
                        mm,
                        vma,
                        1,
                        s,
                        0,
                    );
                    *e = e.with_ves(TASK_UNINTERRUPTIBLE, true);
                    self.ev(
                        EventKind::ReaderRelease,
                        ProbeId::VmaRefcountPut,
                        tid,
                        mm,
                        vma,
                        F + 1,
                        s,
                        0,
                    );
                    self.ev(
                        EventKind::WriterWake,
                        ProbeId::RcuwaitWakeUp,
                        tid,
                        mm,
                        0,
                        0,
                        0,
                        1,
                    )
                    .flags = flags::RET;
                    let e = self.ev(
                        EventKind::ExcludeExit,
                        ProbeId::VmaStartExcludeReaders,
                        writer,
                        mm,
                        vma,
                        F,
                        s,
                        0,
                    );
                    *e = e
                        .with_ves(TASK_UNINTERRUPTIBLE, true)
                        .with_ves_outcome(false, true);
                    self.ev(
                        EventKind::DetachExit,
                        ProbeId::VmaExcludeReadersForDetach,
                        writer,
                        mm,
                        vma,
                        0,
                        s,
                        0,
                    );
                    self.ev(
                        EventKind::VmaFree,
                        ProbeId::VmAreaFree,
                        writer,
                        mm,
                        vma,
                        0,
                        s,
                        0,
                    );
                    self.ev(
                        EventKind::VmaAlloc,
                        ProbeId::VmAreaAlloc,
                        writer,
                        mm,
                        vma,
                        0,
                        u32::MAX,
                        vma as i64,
                    );
                    self.seqs[mm as usize] += 1;
                    let e = self.ev(
                        EventKind::MmWriteUnlock,
                        ProbeId::MmapLockReleased,
                        writer,
                        mm,
                        0,
                        0,
                        0,
                        0,
                    );
                    *e = Event {
                        flags: flags::MM_SEQ,
                        ..e.with_arg(1)
                    };
                }
            }
        }
    }
}

/// Wall and CPU time spent in `observe`.
#[derive(Default)]
struct Busy {
    wall: Duration,
    cpu: Duration,
}

impl Busy {
    fn time(&mut self, f: impl FnOnce()) {
        let (w, c) = (Instant::now(), thread_cpu());
        f();
        self.cpu += thread_cpu() - c;
        self.wall += w.elapsed();
    }

    fn rates(&self, n: u64) -> String {
        format!(
            "{:.2} M events/s CPU time ({:.0} ns/event), {:.2} M events/s wall",
            n as f64 / self.cpu.as_secs_f64() / 1e6,
            self.cpu.as_nanos() as f64 / n as f64,
            n as f64 / self.wall.as_secs_f64() / 1e6
        )
    }
}

fn run(label: &str, cap: usize, hot_pct: u64, steady_events: u64) {
    let rss0 = rss_kib().unwrap_or(0);
    let mut v = Validator::with_capacity(Generation::V7_0, cap);
    let mut g = Gen::new(hot_pct);
    let mut anomalies = Vec::new();

    // Populate 1M live VMAs.
    let mut busy = Busy::default();
    let mut populated = 0u64;
    for mm in 0..MMS {
        g.out.clear();
        for i in 0..VMAS_PER_MM {
            g.populate(mm, i);
        }
        busy.time(|| {
            for e in &g.out {
                v.observe(e, &mut anomalies);
            }
        });
        populated += g.out.len() as u64;
    }
    let rss1 = rss_kib().unwrap_or(0);
    println!(
        "[{label}] populate: {populated} vm_area_alloc events: {}; \
         tracked {} VMAs, evicted {}, RSS +{} MiB ({:.0} B per tracked VMA incl. map overhead)",
        busy.rates(populated),
        v.tracked_vmas(),
        v.evicted(),
        rss1.saturating_sub(rss0) / 1024,
        (rss1.saturating_sub(rss0) * 1024) as f64 / v.tracked_vmas().max(1) as f64,
    );

    // Steady state.
    let mut busy = Busy::default();
    let mut n = 0u64;
    let mut by_kind = [0u64; 16];
    while n < steady_events {
        g.chunk();
        for e in &g.out {
            by_kind[e.kind as usize] += 1;
        }
        busy.time(|| {
            for e in &g.out {
                v.observe(e, &mut anomalies);
            }
        });
        n += g.out.len() as u64;
    }
    let rss2 = rss_kib().unwrap_or(0);
    let mix: Vec<String> = EventKind::ALL
        .iter()
        .filter(|k| by_kind[**k as usize] > 0)
        .map(|k| {
            format!(
                "{}={:.1}%",
                k.key(),
                by_kind[*k as usize] as f64 * 100.0 / n as f64
            )
        })
        .collect();
    println!(
        "[{label}] steady: {n} events on one core: {}; anomalies {}; tracked {} VMAs, \
         evicted {}, RSS {} MiB",
        busy.rates(n),
        anomalies.len(),
        v.tracked_vmas(),
        v.evicted(),
        rss2 / 1024,
    );
    println!("[{label}] mix: {}", mix.join(" "));
    println!("[{label}] phases: {:?}", v.phase_counts());
}

fn main() {
    // `cargo bench` passes `--bench`; a quick smoke run under `cargo test --benches`.
    let quick = !std::env::args().any(|a| a == "--bench");
    let steady = if quick { 200_000 } else { 20_000_000 };
    run("cap 1M, uniform", 1 << 20, 0, steady);
    run("cap 1M, 90% of faults on 1% of VMAs", 1 << 20, 90, steady);
    run("cap 256K (eviction), uniform", 1 << 18, 0, steady);
}
