//! The simulated kernel: all mms, the VMA slab, the event ring, counters and the checks,
//! plus the helpers that read fields into events the way the eBPF programs do.

use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use vmatrace_common::event::{ProbeId, flags};
use vmatrace_common::model::Generation;
use vmatrace_common::{Counter, Event, EventKind};

use super::checks::SimChecks;
use super::inject::{BenignRace, InjectPlan, Injection, InjectionSite};
use super::mm::{MM_BASE, MM_STRIDE, SimMm};
use super::ring::{Ring, TaskCounters};
use super::task::Task;
use super::vma::{SimVma, Slab};

/// Which `vma_refcount_put` calls produce a `ReaderRelease` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseVisibility {
    /// Every put, including the ones the kernel inlines (ephemeral and error-path puts
    /// inside `lock_vma_under_rcu`, `vma_end_read` after a fault).
    All,
    /// What a real kernel shows: only the out-of-line copy at fault-retry sites, here one
    /// lease release in eight; every other put is invisible (its wake-up is still seen).
    Kernel,
}

impl ReleaseVisibility {
    pub const fn key(self) -> &'static str {
        match self {
            Self::All => "all",
            Self::Kernel => "kernel",
        }
    }
}

impl std::str::FromStr for ReleaseVisibility {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "all" => Ok(Self::All),
            "kernel" => Ok(Self::Kernel),
            _ => Err(format!("unknown release visibility `{s}` (all, kernel)")),
        }
    }
}

pub struct SimKernel {
    pub generation: Generation,
    /// `VM_REFCNT_EXCLUDE_READERS_FLAG` / `VMA_LOCK_OFFSET`.
    pub flag: u32,
    /// `VM_REFCNT_LIMIT` / `VMA_REF_LIMIT`.
    pub limit: u32,
    pub mms: Vec<SimMm>,
    pub slab: Slab,
    pub ring: Ring,
    pub counters: Vec<TaskCounters>,
    pub checks: SimChecks,
    pub plan: InjectPlan,
    pub sites: Mutex<Vec<InjectionSite>>,
    pub benign: Mutex<Vec<BenignRace>>,
    pub releases: ReleaseVisibility,
    /// Stream 1 in N reader-acquire results (`ProgramConfig::reader_sample_every`; 0 = none).
    pub reader_sample_every: u32,
    /// The waiter's timed re-check: it never hangs, and a lost wake-up costs this long.
    pub wait_recheck: Duration,
    /// `offsetof(struct mm_struct, vma_writer_wait)` for the generation
    /// (`docs/protocol.md#struct-offsets`).
    pub writer_wait_offset: u64,
}

impl SimKernel {
    pub fn mm_by_addr(&self, addr: u64) -> Option<&SimMm> {
        let off = addr.checked_sub(MM_BASE)?;
        if off % MM_STRIDE != 0 {
            return None;
        }
        self.mms.get(usize::try_from(off / MM_STRIDE).ok()?)
    }

    pub fn vma(&self, idx: u32) -> &SimVma {
        self.slab.get(idx)
    }

    pub fn count(&self, t: &Task, c: Counter) {
        if let Some(slot) = self.counters.get(t.idx) {
            slot.inc(c);
        }
    }

    /// Whether an armed fault fires at this eligible point on VMA `idx` (never while
    /// repairing, and at most once per object lifetime).
    pub fn inject(&self, t: &mut Task, k: Injection, idx: u32) -> bool {
        !t.quiet
            && !t.inject_off
            && self.plan.is_armed(k)
            && !self.vma(idx).faulted.load(Ordering::Relaxed)
            && t.rng.chance(self.plan.rate)
    }

    /// A put left the count at F or F+1 while nobody was registered in `w->task` yet (the
    /// excluder added the flag and had not entered its wait). The kernel wakes nobody,
    /// the eBPF side emits no `WriterWake`, and the excluder sees its target on its first
    /// check: not a lost wake-up. Recorded so a report of one can be told apart.
    pub fn record_benign(&self, ts_ns: u64, idx: u32, mm: u64) {
        self.benign
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(BenignRace {
                ts_ns,
                vma: Slab::addr(idx),
                mm,
            });
    }

    /// Record a fault that fired on VMA `idx`; returns its index.
    pub fn record_site(&self, kind: Injection, ts_ns: u64, idx: u32, mm: u64) -> usize {
        self.vma(idx).faulted.store(true, Ordering::Relaxed);
        let vma = Slab::addr(idx);
        let mut sites = self.sites.lock().unwrap_or_else(|e| e.into_inner());
        sites.push(InjectionSite {
            kind,
            ts_ns,
            vma,
            mm,
            hidden: false,
            owed_until: 0,
            answered_at: 0,
        });
        sites.len() - 1
    }

    /// Note the timestamp of task `tid`'s next event for lost wake-up `site`: as the
    /// faulty task (`answered` false) or as the cheated waiter. The two decide whether
    /// the stream shows the fault ([`InjectionSite::settle_visibility`]).
    pub fn time_site(&self, site: usize, tid: u32, answered: bool) {
        self.ring.watch_next(tid, site * 2 + usize::from(answered));
    }

    /// The sites recorded so far, with the times their watches saw, visibility settled.
    pub fn take_sites(&self) -> Vec<InjectionSite> {
        let mut sites = std::mem::take(&mut *self.sites.lock().unwrap_or_else(|e| e.into_inner()));
        for (w, ts) in self.ring.take_seen() {
            if let Some(s) = sites.get_mut(w.tag / 2) {
                if w.tag % 2 == 1 {
                    s.answered_at = ts;
                } else {
                    s.owed_until = ts;
                }
            }
        }
        sites.iter_mut().for_each(InjectionSite::settle_visibility);
        sites
    }

    /// An event header for task `t`: identity, CPU, kind and attach point.
    pub fn event(&self, t: &Task, kind: EventKind, probe: ProbeId) -> Event {
        let mut ev = Event::ZERO;
        ev.pid_tgid = t.pid_tgid();
        ev.cpu = current_cpu();
        ev.comm = t.comm;
        ev.kind = kind as u16;
        ev.probe = probe as u8;
        ev
    }

    /// Read the VMA's fields and its mm's sequence, as a probe with a `vma` argument does
    /// (`vma->vm_mm->mm_lock_seq`, so a reused object reports its new mm).
    pub fn read_vma(&self, ev: &mut Event, idx: u32) {
        let v = self.vma(idx);
        ev.vma = Slab::addr(idx);
        ev.refcnt = v.vm_refcnt.load(Ordering::Acquire);
        ev.vm_lock_seq = v.vm_lock_seq.load(Ordering::Acquire);
        ev.vm_start = v.vm_start.load(Ordering::Relaxed);
        ev.vm_end = v.vm_end.load(Ordering::Relaxed);
        ev.vm_flags = v.vm_flags.load(Ordering::Relaxed);
        ev.flags |= flags::VMA_FIELDS;
        let mm = v.vm_mm.load(Ordering::Acquire);
        if let Some(m) = self.mm_by_addr(mm) {
            self.read_mm(ev, m);
        } else {
            ev.mm = mm;
        }
    }

    pub fn read_mm(&self, ev: &mut Event, mm: &SimMm) {
        ev.mm = mm.addr;
        ev.mm_lock_seq = mm.mm_lock_seq.load(Ordering::Acquire);
        ev.flags |= flags::MM_SEQ;
    }

    /// Push one event unless the task is quiet; returns its timestamp (0 when quiet).
    pub fn emit(&self, t: &Task, f: impl FnOnce() -> Event) -> u64 {
        let ts = if t.quiet { 0 } else { self.ring.emit(f) };
        t.wake_deferred(self);
        ts
    }

    pub fn is_write_locked(&self, v: &SimVma, mm: &SimMm) -> bool {
        v.vm_lock_seq.load(Ordering::Acquire) == mm.mm_lock_seq.load(Ordering::Acquire)
    }
}

/// `bpf_get_smp_processor_id()`.
fn current_cpu() -> u32 {
    // SAFETY: sched_getcpu has no preconditions; it returns -1 on error.
    let c = unsafe { libc::sched_getcpu() };
    u32::try_from(c).unwrap_or(0)
}
