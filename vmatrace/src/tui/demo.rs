//! `vmatrace dashboard-demo` (hidden): the dashboard over a synthetic, deterministic event
//! stream, with a few made-up anomalies. It exists so the dashboard can be driven end to
//! end (tests/tui_tmux.rs) without a kernel, a trace file or the simulator.

use std::time::Duration;

use tokio::sync::mpsc;
use vmatrace_common::event::{ProbeId, flags};
use vmatrace_common::model::Generation;
use vmatrace_common::{Counter, Event, EventKind};

use super::state::{DashboardContext, SourceKind};
use super::{DashboardExit, SharedState};
use crate::pipeline::{CounterSnapshot, Pipeline, SourceItem};
use crate::validate::{Anomaly, AnomalyKind, Severity};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Quit by itself after this many seconds (default: when the user quits).
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Panic in the event producer after this many rounds of 100 ms (tests the panic path).
    #[arg(long, value_name = "ROUNDS", hide = true)]
    pub panic_after: Option<u64>,
}

const F: u32 = 1 << 30;
const TASKS: &[(u32, &str)] = &[
    (1201, "postgres"),
    (1202, "postgres"),
    (3310, "java"),
    (88, "kswapd0"),
    (4410, "redis-server"),
];

/// xorshift64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn base_event(kind: EventKind, ts_ns: u64, task: usize, vma_no: u64) -> Event {
    let (tgid, name) = TASKS[task % TASKS.len()];
    let mut e = Event::ZERO;
    e.ts_ns = ts_ns;
    e.kind = kind as u16;
    e.pid_tgid = (u64::from(tgid) << 32) | u64::from(tgid + (vma_no % 3) as u32);
    e.vma = 0xffff_8880_0100_0000 + vma_no * 0x100;
    e.mm = 0xffff_8880_0200_0000 + u64::from(tgid) * 0x1000;
    e.vm_start = 0x7f3a_0000_0000 + vma_no * 0x20_0000;
    e.vm_end = e.vm_start + 0x20_0000;
    e.comm[..name.len()].copy_from_slice(name.as_bytes());
    e.flags = flags::VMA_FIELDS | flags::MM_SEQ;
    e.refcnt = 1;
    e.vm_lock_seq = 7;
    e.mm_lock_seq = 8;
    e
}

/// One ~100 ms batch of writer/detach/reader events.
fn batch(rng: &mut Rng, ts_ns: &mut u64) -> Vec<Event> {
    let mut out = Vec::new();
    for _ in 0..(5 + rng.below(20)) {
        *ts_ns += 1_000 + rng.below(4_000_000);
        let task = rng.below(TASKS.len() as u64) as usize;
        let vma = task as u64 * 4 + rng.below(4);
        // Mostly microseconds, a heavy tail into milliseconds.
        let tail = if rng.below(10) == 0 { 14 } else { 6 };
        let wait = (200 + rng.below(2_000)) << rng.below(tail);
        let mut enter = base_event(EventKind::WriteLockEnter, *ts_ns, task, vma);
        enter.probe = ProbeId::VmaStartWrite as u8;
        let mut xe = base_event(EventKind::ExcludeEnter, *ts_ns + 50, task, vma);
        xe.flags |= flags::VES;
        xe.refcnt = 1 + rng.below(3) as u32;
        xe.probe = ProbeId::VmaStartExcludeReaders as u8;
        let mut xx = base_event(EventKind::ExcludeExit, *ts_ns + 50 + wait, task, vma);
        xx.flags |= flags::VES | flags::RET | flags::PAIRED;
        xx.probe = ProbeId::VmaStartExcludeReaders as u8;
        xx.ves_exclusive = 1;
        xx.wait_ns = wait;
        xx.refcnt = F + 1;
        xx.entry_refcnt = xe.refcnt;
        if rng.below(200) == 0 {
            xx.ret = -4;
            xx.ves_exclusive = 0;
        }
        let mut exit = base_event(EventKind::WriteLockExit, *ts_ns + 100 + wait, task, vma);
        exit.flags |= flags::RET | flags::PAIRED;
        exit.wait_ns = wait + 100;
        exit.vm_lock_seq = 8;
        out.extend([enter, xe, xx, exit]);
        if rng.below(4) == 0 {
            let mut d = base_event(EventKind::DetachEnter, *ts_ns + 200 + wait, task, vma + 40);
            d.probe = ProbeId::VmaExcludeReadersForDetach as u8;
            out.push(d);
        }
        if rng.below(3) == 0 {
            let mut r = base_event(EventKind::ReaderAcquire, *ts_ns + 300, task, vma);
            r.flags = flags::RET;
            r.ret = if rng.below(5) == 0 { 0 } else { r.vma as i64 };
            out.push(r);
        }
        out.push(base_event(
            EventKind::MmWriteUnlock,
            *ts_ns + 400 + wait,
            task,
            0,
        ));
    }
    out
}

fn demo_anomaly(rng: &mut Rng, ts_ns: u64, n: u64) -> Anomaly {
    let kinds = [
        (AnomalyKind::ReaderWhileExcluded, Severity::Error),
        (AnomalyKind::ExcludeTargetMismatch, Severity::Error),
        (AnomalyKind::ConcurrentExclusion, Severity::Warning),
    ];
    let (kind, severity) = kinds[(n % 3) as usize];
    let task = rng.below(TASKS.len() as u64) as usize;
    let vma = 100 + n;
    let mut enter = base_event(EventKind::ExcludeEnter, ts_ns - 3_000, task, vma);
    enter.flags |= flags::VES;
    enter.refcnt = 2;
    let mut reader = base_event(EventKind::ReaderAcquire, ts_ns - 1_000, task + 1, vma);
    reader.flags |= flags::RET;
    reader.ret = reader.vma as i64;
    reader.refcnt = F + 2;
    let mut offending = base_event(EventKind::ExcludeExit, ts_ns, task, vma);
    offending.flags |= flags::VES | flags::RET | flags::PAIRED;
    offending.refcnt = F + 2;
    offending.entry_refcnt = 2;
    offending.wait_ns = 2_000;
    Anomaly {
        kind,
        severity,
        event: offending,
        state: "excluding (demo)".into(),
        expected: "vm_refcnt == F+1 when start-exclude returns (demo data)".into(),
        observed: "vm_refcnt == F+2 (demo data)".into(),
        evidence: vec![enter, reader, offending],
    }
}

pub fn context() -> DashboardContext {
    DashboardContext::new(SourceKind::Simulate, "demo", Generation::V7_0)
        .with_detail("synthetic dashboard demo")
}

/// Run the demo until the user quits (or `duration`).
pub fn run(args: DemoArgs) -> anyhow::Result<std::process::ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut pipeline = Pipeline::new(Generation::V7_0);
        let shared = super::attach_to(&mut pipeline, context());
        let (tx, rx) = mpsc::channel(64);
        let producer = tokio::spawn(produce(tx, shared.clone(), args.panic_after));
        let driver = super::spawn_driver(&shared, pipeline.drive(rx, Duration::from_millis(250)));
        let stop = async move {
            match args.duration {
                Some(s) => tokio::time::sleep(Duration::from_secs(s)).await,
                None => std::future::pending().await,
            }
        };
        let exit = super::run(shared, stop).await;
        producer.abort();
        let _ = driver.await;
        match exit? {
            DashboardExit::UserQuit | DashboardExit::Stopped | DashboardExit::Signal => {
                Ok(std::process::ExitCode::SUCCESS)
            }
        }
    })
}

async fn produce(tx: mpsc::Sender<SourceItem>, shared: SharedState, panic_after: Option<u64>) {
    let mut rng = Rng(0x5eed_1234_abcd_9876);
    let mut ts = 10_000_000_000u64;
    let mut counters = CounterSnapshot {
        values: vec![0; vmatrace_common::counters::COUNTER_SLOTS as usize],
    };
    let mut anomalies = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for round in 0u64.. {
        tick.tick().await;
        if panic_after == Some(round) {
            panic!("dashboard-demo: deliberate panic after {round} rounds");
        }
        let evs = batch(&mut rng, &mut ts);
        if tx.send(SourceItem::Events(evs)).await.is_err() {
            return;
        }
        let c = &mut counters.values;
        c[Counter::ReaderAcquireOk as usize] += 20_000 + rng.below(5_000);
        c[Counter::ReaderAcquireFail as usize] += rng.below(30);
        c[Counter::ReaderFailExcluded as usize] += rng.below(10);
        c[Counter::ReaderSampled as usize] += 200;
        c[Counter::ReaderRelease as usize] += rng.below(500);
        c[Counter::WriterWake as usize] += rng.below(20);
        if round % 50 == 49 {
            c[Counter::RingbufReserveFailed as usize] += 3;
        }
        if tx
            .send(SourceItem::Counters(counters.clone()))
            .await
            .is_err()
        {
            return;
        }
        // A few anomalies early on, so the list has something to open.
        if round % 7 == 3 && anomalies < 5 {
            let a = demo_anomaly(&mut rng, ts, anomalies);
            anomalies += 1;
            let mut st = shared.lock().unwrap_or_else(|p| p.into_inner());
            st.live.push_anomaly(&a);
        }
    }
}
