//! The simulated kernel: a userspace port of the per-VMA lock algorithm with real
//! atomics, locks and threads, emitting the events the eBPF programs would emit on a
//! kernel of the chosen generation, through the same pipeline as the live tracer.
//!
//! Layout: `sim_kernel` the simulated kernel's shared state and knobs, `mm`/`vma` the
//! kernel objects, `vma_start_read` and `vma_start_write` the two sides of the protocol,
//! `lifecycle` attach/detach/alloc/free and the mmap lock, `workload` what the tasks do, `ring` the delivery to the pipeline, `inject` deliberate faults, `checks`
//! the simulator's own invariants, `report` the summary.
//!
//! What a real kernel would not show, the simulator does not emit either (7.x fast
//! detach, attach, 6.15 exclusion), with one documented exception: by default every
//! `vma_refcount_put` is visible ([`ReleaseVisibility::All`]); `Kernel` visibility shows
//! only the fault-retry subset. User-level documentation: `docs/simulate.md`.

pub mod checks;
pub mod inject;
pub mod lifecycle;
pub mod mm;
pub mod report;
pub mod ring;
pub mod rng;
pub mod sim_kernel;
pub mod task;
pub mod vma;
pub mod vma_start_read;
pub mod vma_start_write;
pub mod workload;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;
use vmatrace_common::model::Generation;

use crate::pipeline::{Pipeline, Sink, Totals};
use crate::validate::Anomaly;

pub use inject::{BenignRace, Injection, InjectionSite, ReportedAnomaly};
pub use report::SimReport;
pub use sim_kernel::ReleaseVisibility;
pub use workload::OpStats;

use checks::SimChecks;
use inject::InjectPlan;
use mm::SimMm;
use ring::{Ring, TaskCounters};
use sim_kernel::SimKernel;
use task::Task;
use vma::Slab;

/// Events per batch handed to the pipeline.
const BATCH: usize = 2048;
/// Batches in flight before producers block.
const CHANNEL_DEPTH: usize = 32;
/// How often staged events and counters are handed over while the run goes on.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Simulated tasks per mm (threads of one process share its mm).
const TASKS_PER_MM: usize = 4;
/// Tree slots (VMAs) per mm: few, so that readers and writers meet often.
const SLOTS_PER_MM: usize = 8;

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub threads: usize,
    /// Total operations over all tasks; `None` with a duration = until the duration ends.
    pub ops: Option<u64>,
    pub duration: Option<Duration>,
    pub generation: Generation,
    pub injections: Vec<Injection>,
    /// Probability an armed fault fires at an eligible point.
    pub inject_rate: f64,
    pub seed: u64,
    pub releases: ReleaseVisibility,
    /// Stream 1 in N reader-acquire results, like the eBPF side's
    /// `reader_sample_every` (1 = all, 0 = count only).
    pub reader_sample_every: u32,
    /// Number of mms; default one per four tasks.
    pub mms: Option<usize>,
    /// Initial `mm_lock_seq` of every mm (even; near `u32::MAX` to exercise wraparound,
    /// where a fresh VMA's `vm_lock_seq = UINT_MAX` looks write-locked).
    pub seq_start: u32,
    /// Set to end the run early (e.g. the dashboard was closed); tasks stop between
    /// operations.
    pub stop: Arc<AtomicBool>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            threads: 8,
            ops: Some(1_000_000),
            duration: None,
            generation: Generation::V7_0,
            injections: Vec::new(),
            inject_rate: 0.02,
            seed: 1,
            releases: ReleaseVisibility::All,
            reader_sample_every: 1,
            mms: None,
            seq_start: 0,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Anomalies as the simulator keeps them: all of them reduced (for injection matching,
/// capped), the first few in full (for the summary).
#[derive(Default)]
pub struct Collected {
    pub reduced: Vec<ReportedAnomaly>,
    pub reduced_dropped: u64,
    pub examples: Vec<Anomaly>,
}

const REDUCED_CAP: usize = 1 << 20;
const EXAMPLES_CAP: usize = 3;

struct Collector(Arc<Mutex<Collected>>);

impl Sink for Collector {
    fn anomaly(&mut self, a: &Anomaly) {
        let mut c = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if c.reduced.len() < REDUCED_CAP {
            c.reduced.push(ReportedAnomaly {
                key: a.kind.key(),
                ts_ns: a.event.ts_ns,
                vma: a.event.vma,
                mm: a.event.mm,
            });
        } else {
            c.reduced_dropped += 1;
        }
        if c.examples.len() < EXAMPLES_CAP {
            c.examples.push(a.clone());
        }
    }
}

/// Everything a run produced.
pub struct SimOutcome {
    pub config: SimConfig,
    pub elapsed: Duration,
    pub ops: OpStats,
    pub totals: Totals,
    pub collected: Collected,
    pub sites: Vec<InjectionSite>,
    /// Benign races a validator could mistake for lost wake-ups.
    pub benign: Vec<BenignRace>,
    /// The simulator's own invariant checks (all 0 without faults).
    pub checks: std::collections::BTreeMap<&'static str, u64>,
    pub delivered: u64,
    pub undelivered: u64,
    pub validator_observed: u64,
    /// Objects with a nonzero count after every task finished (must be none).
    pub leaked_refs: Vec<(u64, u32)>,
}

impl SimOutcome {
    /// Injected faults the validator did not report. Reports of benign races do not
    /// count as detections.
    pub fn unmatched_sites(&self) -> Vec<InjectionSite> {
        let benign: std::collections::HashSet<(u64, u64)> =
            self.benign.iter().map(|b| (b.ts_ns, b.vma)).collect();
        let real: Vec<ReportedAnomaly> = self
            .collected
            .reduced
            .iter()
            .filter(|a| !(a.key == "lost_wakeup" && benign.contains(&(a.ts_ns, a.vma))))
            .copied()
            .collect();
        let visible: Vec<InjectionSite> =
            self.sites.iter().filter(|s| !s.hidden).copied().collect();
        inject::unmatched_sites(&visible, &real)
    }

    /// Anomalies that are reports of recorded benign races (validator false positives).
    pub fn false_positives(&self) -> usize {
        inject::explained_by_benign(&self.benign, &self.collected.reduced)
    }

    /// Anomalies that are neither an injected fault's report nor a known false positive
    /// (in a run without faults: all but the false positives).
    pub fn unexplained_anomalies(&self) -> u64 {
        self.totals
            .anomalies_total()
            .saturating_sub(self.false_positives() as u64)
    }

    pub fn fired(&self, k: Injection) -> usize {
        self.sites.iter().filter(|s| s.kind == k).count()
    }

    pub fn anomalies_with_key(&self, key: &str) -> u64 {
        self.totals
            .anomalies
            .iter()
            .filter(|(k, _)| k.key() == key)
            .map(|(_, n)| *n)
            .sum()
    }

    pub fn sim_violations(&self) -> u64 {
        self.checks.values().sum()
    }
}

/// Run the simulation on its own runtime (for the CLI and tests).
pub fn run(cfg: SimConfig, sinks: Vec<Box<dyn Sink>>) -> anyhow::Result<SimOutcome> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("cannot start the tokio runtime")?;
    rt.block_on(run_async(cfg, sinks))
}

/// Run the simulation: tasks on OS threads feed the pipeline, which runs on the calling
/// task until every event was consumed.
pub async fn run_async(cfg: SimConfig, sinks: Vec<Box<dyn Sink>>) -> anyhow::Result<SimOutcome> {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let mut pipeline = Pipeline::new(cfg.generation);
    let sim = Simulation::new(cfg, tx, &mut pipeline)?;
    for s in sinks {
        pipeline.add_sink(s);
    }
    let producers = tokio::task::spawn_blocking(move || sim.run());
    let drive = pipeline.drive(rx, Duration::from_millis(100));
    let (pipeline, finished) = tokio::join!(drive, producers);
    Ok(finished
        .context("simulation tasks panicked")?
        .outcome(pipeline))
}

/// A simulation ready to run: the simulated kernel, whose tasks write into the channel
/// it was made with, and what the pipeline reading that channel collects for the outcome.
pub struct Simulation {
    cfg: SimConfig,
    kernel: Arc<SimKernel>,
    collected: Arc<Mutex<Collected>>,
}

impl Simulation {
    /// Events to queue between the tasks and the pipeline.
    pub const CHANNEL_DEPTH: usize = CHANNEL_DEPTH;

    /// Check `cfg` and build the kernel writing into `tx`; `pipeline` (the one that will
    /// read the channel) gets the sink that collects the anomalies for the outcome.
    pub fn new(
        cfg: SimConfig,
        tx: mpsc::Sender<crate::pipeline::SourceItem>,
        pipeline: &mut Pipeline,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            (1..=mm::MAX_TASKS).contains(&cfg.threads),
            "--threads must be between 1 and {}",
            mm::MAX_TASKS
        );
        anyhow::ensure!(
            cfg.mms.is_none_or(|n| (1..=mm::MAX_TASKS).contains(&n)),
            "--mms must be between 1 and {}",
            mm::MAX_TASKS
        );
        anyhow::ensure!(
            cfg.ops.is_some() || cfg.duration.is_some(),
            "give --ops or --duration"
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&cfg.inject_rate),
            "--inject-rate must be between 0 and 1"
        );
        let collected = Arc::new(Mutex::new(Collected::default()));
        pipeline.add_sink(Box::new(Collector(collected.clone())));
        let kernel = Arc::new(build_kernel(&cfg, tx));
        Ok(Self {
            cfg,
            kernel,
            collected,
        })
    }

    /// Run every task to its end (blocking). The channel closes when this returns: the
    /// kernel, which holds its sender, is gone.
    pub fn run(self) -> Finished {
        let produced = run_tasks(&self.kernel, &self.cfg);
        Finished {
            cfg: self.cfg,
            produced,
            collected: self.collected,
        }
    }
}

/// A simulation whose tasks have all ended.
pub struct Finished {
    cfg: SimConfig,
    produced: Produced,
    collected: Arc<Mutex<Collected>>,
}

impl Finished {
    /// Why it ended on its own: the operations asked for ran, or its duration passed.
    pub fn ended_by_duration(&self) -> bool {
        match self.cfg.ops {
            Some(n) => self.produced.ops.ops < n && self.cfg.duration.is_some(),
            None => self.cfg.duration.is_some(),
        }
    }

    /// The outcome, once `pipeline` has consumed every event.
    pub fn outcome(self, mut pipeline: Pipeline) -> SimOutcome {
        let Finished {
            cfg,
            produced,
            collected,
        } = self;
        // End of stream: what the validator could only judge now (wake-ups still owed).
        // `Pipeline::finish` does not ask the validator for these (yet); doing it here
        // is harmless if it ever does, as `Validator::finish` drains what it reports.
        let mut tail = Vec::new();
        pipeline.validator.finish(&mut tail);
        for a in &tail {
            pipeline.totals.count_anomaly(a);
            Collector(collected.clone()).anomaly(a);
        }
        let collected = std::mem::take(&mut *collected.lock().unwrap_or_else(|e| e.into_inner()));
        SimOutcome {
            elapsed: produced.elapsed,
            ops: produced.ops,
            validator_observed: pipeline.validator.observed(),
            totals: pipeline.totals,
            collected,
            sites: produced.sites,
            benign: produced.benign,
            checks: produced.checks,
            delivered: produced.delivered,
            undelivered: produced.undelivered,
            leaked_refs: produced.leaked_refs,
            config: cfg,
        }
    }
}

fn build_kernel(cfg: &SimConfig, tx: mpsc::Sender<crate::pipeline::SourceItem>) -> SimKernel {
    let nmm = cfg
        .mms
        .unwrap_or_else(|| cfg.threads.div_ceil(TASKS_PER_MM))
        .max(1);
    let slab_capacity = (nmm * SLOTS_PER_MM * 2 + cfg.threads * 2) as u32;
    let lost_wakeups = cfg.injections.contains(&Injection::LostWakeup);
    let g = cfg.generation;
    SimKernel {
        generation: g,
        flag: g.exclude_readers_flag(),
        limit: g.refcnt_limit(),
        mms: (0..nmm)
            .map(|i| SimMm::new(i, SLOTS_PER_MM, cfg.seq_start))
            .collect(),
        slab: Slab::new(slab_capacity),
        ring: Ring::new(tx, BATCH),
        counters: (0..=cfg.threads).map(|_| TaskCounters::default()).collect(),
        checks: SimChecks::default(),
        plan: InjectPlan::new(&cfg.injections, cfg.inject_rate),
        sites: Mutex::new(Vec::new()),
        benign: Mutex::new(Vec::new()),
        releases: cfg.releases,
        reader_sample_every: cfg.reader_sample_every,
        // Without lost wake-ups a waiter only re-checks as a safety net; with them the
        // re-check is how the writer recovers, so keep it short.
        // A lost wake-up is re-issued after the faulty task's next event, so the re-check
        // stays a safety net; a short one would let the waiter recover before that event
        // and hide the fault.
        wait_recheck: if lost_wakeups {
            Duration::from_millis(100)
        } else {
            Duration::from_millis(500)
        },
        // Where the writer sleeps in its function, for the simulated slow-wait stacks:
        // `__vma_start_write` itself, or the out-of-line start-exclude it calls.
        writer_wait_offset: if g.profile().start_exclude.is_some() {
            0x1c8
        } else {
            0xf0
        },
    }
}

/// After every task finished: linked VMAs must hold exactly the attach reference, all
/// other objects none, and no reader may still count as a holder.
fn leaked_refs(k: &SimKernel) -> Vec<(u64, u32)> {
    let linked: std::collections::HashSet<u32> = k
        .mms
        .iter()
        .flat_map(|m| (0..m.tree.len()).filter_map(|s| m.slot_of(s)))
        .collect();
    (0..k.slab.capacity() as u32)
        .filter_map(|i| {
            let v = k.vma(i);
            let r = v.vm_refcnt.load(std::sync::atomic::Ordering::Acquire);
            let holders = v.holders.load(std::sync::atomic::Ordering::Acquire);
            let want = u32::from(linked.contains(&i));
            (r != want || holders != 0).then_some((Slab::addr(i), r))
        })
        .collect()
}

struct Produced {
    elapsed: Duration,
    ops: OpStats,
    sites: Vec<InjectionSite>,
    benign: Vec<BenignRace>,
    checks: std::collections::BTreeMap<&'static str, u64>,
    delivered: u64,
    undelivered: u64,
    leaked_refs: Vec<(u64, u32)>,
}

fn run_tasks(k: &Arc<SimKernel>, cfg: &SimConfig) -> Produced {
    let start = Instant::now();
    let deadline = cfg.duration.map(|d| start + d);
    // The populating task is the extra counter slot at the end.
    let mut init = Task::new(cfg.threads, 0, k.mms[0].tgid, cfg.seed ^ 0x5eed);
    workload::populate(k, &mut init);

    let per_task = |i: usize| -> u64 {
        match cfg.ops {
            Some(n) => {
                let t = cfg.threads as u64;
                n / t + u64::from((i as u64) < n % t)
            }
            None => u64::MAX,
        }
    };
    let handles: Vec<_> = (0..cfg.threads)
        .map(|i| {
            let k = k.clone();
            let quota = per_task(i);
            let mm = i % k.mms.len();
            let tgid = k.mms[mm].tgid;
            let seed = cfg.seed;
            let stop = cfg.stop.clone();
            std::thread::Builder::new()
                .name(format!("vmasim/{i}"))
                .spawn(move || {
                    let mut t = Task::new(i, mm, tgid, seed);
                    let done = workload::run_task(&k, &mut t, quota, deadline, &stop);
                    // A wake-up held back by an injected fault is owed even at the end.
                    t.wake_deferred(&k);
                    done
                })
        })
        .collect();
    let mut ops = OpStats::default();
    let mut live: Vec<_> = handles.into_iter().filter_map(Result::ok).collect();
    let spawned_all = live.len() == cfg.threads;
    while !live.is_empty() {
        std::thread::sleep(FLUSH_EVERY);
        k.ring.send_counters(TaskCounters::snapshot(&k.counters));
        let (done, running): (Vec<_>, Vec<_>) = live.into_iter().partition(|h| h.is_finished());
        for h in done {
            if let Ok(st) = h.join() {
                ops.add(&st);
            }
        }
        live = running;
    }
    let elapsed = start.elapsed();
    k.ring.send_counters(TaskCounters::snapshot(&k.counters));
    k.ring.flush();
    let mut checks = k.checks.snapshot();
    if !spawned_all {
        checks.insert("tasks_not_started", 1);
    }
    let sites = k.take_sites();
    let benign = std::mem::take(&mut *k.benign.lock().unwrap_or_else(|e| e.into_inner()));
    Produced {
        elapsed,
        ops,
        sites,
        benign,
        checks,
        delivered: k.ring.delivered(),
        undelivered: k.ring.undelivered(),
        leaked_refs: leaked_refs(k),
    }
}
