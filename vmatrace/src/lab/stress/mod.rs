//! `vmatrace stress`: a workload that drives every per-VMA lock path at once.
//!
//! Reader threads fault on two shared arenas (`lock_vma_under_rcu`) while writer threads
//! reshape the same ranges: mprotect (split/merge, write lock), MAP_FIXED replacement,
//! munmap and mremap (detach under reader pressure), madvise(MADV_DONTNEED) (readers
//! fault again). With `forks`, a thread forks the whole process (`dup_mmap` write-locks
//! every VMA, killable on 6.19+) and another SIGKILLs helper processes while they fork.

pub mod arena;
pub mod calls;
pub mod fork;
pub mod ops;
pub mod race;
pub mod raw_bpf;
mod readers;
mod rng;
pub mod sys;
mod writers;

use std::{
    io,
    os::fd::{FromRawFd, OwnedFd},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;

pub use ops::{Op, OpCounts, Report};

#[derive(Clone, Debug)]
pub struct StressConfig {
    pub duration: Duration,
    pub readers: usize,
    pub writers: usize,
    pub forks: bool,
    /// With `forks`: kill each fork victim once it sleeps in a killable wait, rather
    /// than a few random milliseconds into its fork loop (`fork::killer`).
    pub kill_asleep: bool,
    /// Busy-wait this long around `vma_start_read`'s refcount increment (see `race`).
    pub widen_race: Option<Duration>,
    /// Count this cgroup's calls of the traced functions with plain kprobes (`calls`).
    pub count_calls: bool,
}

/// Arena geometry: 64 slots of 16 pages each (4 MiB with 4 KiB pages) is small enough for
/// a 1 GiB guest and big enough that readers and writers meet in the same slots.
const DIRECT_SLOTS: usize = 64;
const GUARDED_SLOTS: usize = 32;
const SLOT_PAGES: usize = 16;
/// Slots of the direct and guarded arenas when the race is widened: the slow detach needs
/// a delayed reader on the very VMA a writer detaches, so readers and writers share two
/// slots instead of spreading over 64 (measured on 7.3.4 cloud, TCG, 8 s: 2–10 slow
/// detaches with 64 slots, 13–31 with 2).
const RACE_SLOTS: usize = 2;
/// The huge-page arena: 8 slots of 2 MiB (16 MiB), each a THP candidate.
const HUGE_SLOTS: usize = 8;
const HUGE_SLOT_BYTES: usize = 2 << 20;

/// State shared by all workload threads.
pub struct Shared {
    pub direct: arena::Arena,
    pub guarded: arena::Arena,
    /// 2 MiB-aligned slots with MADV_HUGEPAGE: accessible at all times, like `direct`.
    pub huge: arena::Arena,
    pub ops: OpCounts,
    errors: Mutex<Vec<(Op, String)>>,
}

impl Shared {
    /// Count a failed operation; keep the first message per operation kind.
    pub fn error(&self, op: Op, e: &dyn std::fmt::Display) {
        self.ops.add(Op::Error, 1);
        if let Ok(mut errs) = self.errors.lock()
            && !errs.iter().any(|(o, _)| *o == op)
        {
            errs.push((op, e.to_string()));
        }
    }
}

fn memfd() -> io::Result<OwnedFd> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it returns a new fd.
    let fd = unsafe { libc::memfd_create(c"vmatrace-stress".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn run(cfg: &StressConfig) -> anyhow::Result<Report> {
    // First, so the counts cover as much of the process's life as the tracer sees.
    let counter = cfg
        .count_calls
        .then(calls::CallCounter::attach)
        .transpose()?;
    let (direct_slots, guarded_slots) = match cfg.widen_race {
        Some(_) => (RACE_SLOTS, RACE_SLOTS),
        None => (DIRECT_SLOTS, GUARDED_SLOTS),
    };
    let shared = Shared {
        direct: arena::Arena::new(direct_slots, SLOT_PAGES).context("mapping the direct arena")?,
        guarded: arena::Arena::new(guarded_slots, SLOT_PAGES)
            .context("mapping the guarded arena")?,
        huge: arena::Arena::aligned(
            HUGE_SLOTS,
            HUGE_SLOT_BYTES / sys::page_size(),
            HUGE_SLOT_BYTES,
        )
        .context("mapping the huge-page arena")?,
        ops: OpCounts::default(),
        errors: Mutex::new(Vec::new()),
    };
    for slot in 0..shared.huge.slots {
        sys::madvise_hugepage(shared.huge.slot_addr(slot), shared.huge.slot_len());
    }
    // Each reader copies into its own memfd so pwrite does not serialise on one inode.
    // Created before any thread starts, so a failure cannot leave threads running.
    let sinks = (0..cfg.readers)
        .map(|_| memfd())
        .collect::<io::Result<Vec<_>>>()
        .context("memfd_create for the readers")?;
    // Installed before any thread starts and dropped (detached) after they all stopped.
    let widener = cfg.widen_race.map(race::install).transpose()?;

    let faults0 = sys::minor_faults();
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, sink) in sinks.into_iter().enumerate() {
            let (shared, stop) = (&shared, &stop);
            handles.push(s.spawn(move || readers::run(shared, &sink, stop, 1 + i as u64)));
        }
        for i in 0..cfg.writers {
            let (shared, stop) = (&shared, &stop);
            handles.push(s.spawn(move || writers::run(shared, stop, 1000 + i as u64)));
        }
        if cfg.forks {
            let (shared, stop) = (&shared, &stop);
            handles.push(s.spawn(move || fork::forker(shared, stop)));
            let asleep = cfg.kill_asleep;
            // One killer: two (a victim each) doubled the victims but not the interrupted
            // waits, and their sleeping writers outnumbered the kretprobes' instances on
            // 6.18 (88 returns the kernel skipped, 0.15 % of the step's events).
            handles.push(s.spawn(move || fork::killer(shared, stop, 77, asleep)));
        }
        std::thread::sleep(cfg.duration);
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            if h.join().is_err() {
                shared.error(Op::Error, &"a workload thread panicked");
            }
        }
    });
    let ops = shared
        .ops
        .snapshot()
        .into_iter()
        .map(|(op, n)| (op.key().to_string(), serde_json::Value::from(n)))
        .collect();
    let errors = shared
        .errors
        .lock()
        .map(|e| {
            e.iter()
                .map(|(op, m)| format!("{}: {m}", op.key()))
                .collect()
        })
        .unwrap_or_default();
    // The arenas' VMAs (a few hundred after the writers' splits) are unmapped while the
    // counter still counts, so their write locks and frees are in both counts; only the
    // process's exit of its last few mappings is the tracer's alone.
    drop(shared);
    Ok(Report {
        duration_s: t0.elapsed().as_secs_f64(),
        readers: cfg.readers,
        writers: cfg.writers,
        forks: cfg.forks,
        ops,
        minor_faults: sys::minor_faults().saturating_sub(faults0),
        errors,
        race_widener: widener.map(|w| w.report.clone()),
        // Read after every thread and child is gone and the arenas are unmapped (the
        // process's exit comes later and is not counted).
        kprobe_calls: counter.map(|c| c.counts()).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Op, StressConfig, run};

    /// A short run really reshapes and faults on the arenas, without errors. (Forks are
    /// left out: the kill-during-fork helper re-executes `vmatrace`, not the test binary.)
    #[test]
    fn short_run_does_every_reader_and_writer_op() {
        let report = run(&StressConfig {
            duration: Duration::from_millis(300),
            readers: 1,
            writers: 1,
            forks: false,
            kill_asleep: false,
            widen_race: None,
            count_calls: false,
        })
        .expect("stress run");
        let n = |op: Op| {
            report
                .ops
                .get(op.key())
                .and_then(|v| v.as_u64())
                .unwrap_or(0)
        };
        for op in [
            Op::ReaderTouch,
            Op::ReaderCopy,
            Op::Mprotect,
            Op::MmapReplace,
            Op::Munmap,
            Op::Mremap,
            Op::MremapGrow,
            Op::MadviseDontneed,
            Op::HugeReshape,
        ] {
            assert!(n(op) > 0, "{} never happened: {:?}", op.key(), report.ops);
        }
        assert_eq!(n(Op::Error), 0, "errors: {:?}", report.errors);
        assert_eq!(n(Op::Fork), 0);
        assert!(report.minor_faults > 0);
    }
}
