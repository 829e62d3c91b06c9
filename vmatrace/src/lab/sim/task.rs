//! A simulated task: identity for the events it emits, its random stream, and the state
//! the kernel would keep in `task_struct` (a pending fatal signal).

use super::rng::Rng;

pub struct Task {
    /// Index of the worker thread (and of its counter slot).
    pub idx: usize,
    pub tid: u32,
    pub tgid: u32,
    pub comm: [u8; 16],
    /// Index of the mm this task's process owns.
    pub mm: usize,
    pub rng: Rng,
    /// `fatal_signal_pending(current)`: only a `TASK_KILLABLE` wait notices it.
    pub fatal_signal: bool,
    /// Emit no events and inject nothing (used while repairing after an injected fault,
    /// so the repair is not itself reported as protocol traffic).
    pub quiet: bool,
    /// Inject nothing (events are still emitted).
    pub inject_off: bool,
    /// `lock_vma_under_rcu` calls so far (for reader sampling).
    pub acquires: u64,
    /// `lock_next_vma` calls so far (sampled separately, as on the eBPF side).
    pub next_vmas: u64,
    /// An injected lost wake-up, re-issued once this task's next event is out: the
    /// fault stays visible (the task went on without waking) and the waiter does not
    /// hang. See `vma_start_read::rcuwait_wake_up`.
    pub deferred_wake: std::cell::Cell<Option<DeferredWake>>,
}

/// A wake-up held back by an injected fault.
pub struct DeferredWake {
    pub waiter: std::thread::Thread,
    /// Index of the waiter's mm.
    pub mm: usize,
    /// The injection site.
    pub site: usize,
}

impl Task {
    pub fn new(idx: usize, mm: usize, tgid: u32, seed: u64) -> Self {
        let mut comm = [0u8; 16];
        let name = format!("vmasim/{idx}");
        let n = name.len().min(15);
        comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        Self {
            idx,
            tid: tgid + 1 + idx as u32,
            tgid,
            comm,
            mm,
            rng: Rng::new(seed, idx as u64 + 1),
            fatal_signal: false,
            quiet: false,
            inject_off: false,
            acquires: 0,
            next_vmas: 0,
            deferred_wake: std::cell::Cell::new(None),
        }
    }

    /// Re-issue a wake-up an injected fault held back (on the waiter of mm `mm`).
    pub fn wake_deferred(&self, k: &super::sim_kernel::SimKernel) {
        if let Some(d) = self.deferred_wake.take() {
            if let Some(m) = k.mms.get(d.mm) {
                m.vma_writer_wait
                    .owed_sites
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|s| *s != d.site);
            }
            d.waiter.unpark();
        }
    }

    pub fn pid_tgid(&self) -> u64 {
        (u64::from(self.tgid) << 32) | u64::from(self.tid)
    }
}
