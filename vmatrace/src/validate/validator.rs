//! Per-VMA replay of the observed stream through the refcount model.
//!
//! Contract used by the pipeline (keep it stable): `Validator::new(generation)`,
//! `observe(&Event, &mut Vec<Anomaly>)` appends zero or more anomalies for one event, and
//! `note_loss()` tells it that events were lost (every tracked VMA goes back to
//! "unknown" and resynchronises on its next sample, so a gap never yields a false anomaly).
//!
//! # How checks stay free of false positives
//!
//! Events of different tasks reach the validator in no guaranteed order (per-CPU ring
//! reservations, per-thread simulator batches), and one sample's fields are read one after
//! another, not atomically (`docs/protocol.md#race-10`). So every check is one of:
//!
//! - **sample checks**: a fact about one event's own fields that holds whatever other
//!   tasks do, e.g. at `__vma_start_write`'s return the caller holds the mmap write lock,
//!   so `vm_lock_seq == mm_lock_seq` and a clear flag are stable. Most kinds are these.
//! - **same-task checks**: one task's events arrive in program order, e.g. the put that
//!   leaves `F`/`F+1` must be followed by that task's `rcuwait_wake_up` (`lost_wakeup`).
//!   The wake-up is streamed only while the excluder's call is in flight: if the
//!   excluder found its target on its own and returned between the put and the task's
//!   next event, the wake-up was not owed to the stream (a timestamp window, settled
//!   when the excluder's return arrives). [`Validator::finish`] settles what is still
//!   owed when a finite stream ends, and reports an excluder that never returned after a
//!   wake-up was sent to it (it slept through it).
//! - **timestamp windows**: a reader that succeeded with the flag set in its sample is
//!   legal if it took its reference before the flag was added and a writer raced in
//!   (`docs/protocol.md#race-2`). It is a violation if its timestamp falls after the
//!   excluder saw the readers excluded and before the exclusion ended: no reader can hold
//!   a reference then. The decision waits until both ends of that window have been seen.
//!   Where start-exclude is inlined (6.15-6.18) the window is a `__vma_start_write` call:
//!   a put that read the flag set on a write-locked VMA, with its own time and its task's
//!   next event both inside the call, held its reference past the writer's wait
//!   (`readers_drained_before_store`); so did one stamped inside the writer's hold (from
//!   the call to its last event before its mmap unlock) if the writer detached nothing.
//!   Each VMA keeps its two latest windows in time, and keeps them past its detach, for
//!   readers' events delivered late.
//!
//! A reader admitted with the flag set *while the excluder still waits* cannot be told
//! from that legal race by any sample; it is detected only once it is write-locked
//! (`reader_while_write_locked`) or past the excluder's wait (`reader_while_excluded`).
//!
//! # Memory
//!
//! One small record per tracked VMA (no per-VMA event history: evidence comes from a
//! global ring of recent events). Records go on `vm_area_free`, on a completed detach, and
//! when the cap is reached the least recently touched quarter is evicted and counted.

use vmatrace_common::{
    Event, EventKind,
    event::flags,
    model::{
        ExcludeResult, Generation,
        generation::{EINTR, TASK_KILLABLE},
        refcnt::{self, F},
    },
};

use super::{
    Anomaly,
    evidence::Recent,
    hash::{AddrMap, TidMap},
    open_calls::{OpenCall, OpenCalls},
    phase::Phase,
    rules::{self, Rule, Sample},
};

/// Default cap on tracked VMAs (a busy host has a few hundred thousand live VMAs).
pub const DEFAULT_MAX_VMAS: usize = 1 << 20;
/// Tracked VMAs from which [`Validator::observe_batch`] looks records up ahead: 64 Ki
/// records (4 MiB, and the table's control bytes) no longer fit in a core's caches.
const PREFETCH_FROM: usize = 1 << 16;
/// Events kept for evidence (2 MiB).
const RECENT_EVENTS: usize = 1 << 14;
/// Reader successes with the flag set kept per VMA until their window is known.
const MAX_SUSPECTS: usize = 4;
/// Tasks with a wake-up still owed; more means the stream is not what we think.
const MAX_PENDING_WAKES: usize = 1 << 14;
/// VMAs remembered per mm write-lock cycle (only used to end their write lock).
const MAX_LOCKED_PER_MM: usize = 1 << 16;
const MAX_MMS: usize = 1 << 16;
/// Detached VMAs whose windows are remembered (see `Validator::detached_windows`).
const MAX_DETACHED_WINDOWS: usize = 1 << 10;

/// An exclusion in progress on one VMA, as its excluding task reported it.
#[derive(Clone, Copy, Debug)]
struct Exclusion {
    tid: u32,
    /// `ves->detaching` / the `detaching` argument, when read.
    detaching: Option<bool>,
    /// `ves->state` / the `state` argument, 0 when unknown.
    state: u32,
    /// Timestamp of the start-exclude return that reported readers excluded.
    exclusive_ts: Option<u64>,
}

#[derive(Debug)]
struct VmaTrack {
    mm: u64,
    phase: Phase,
    /// `__vma_start_write` succeeded and the mm has not been write-unlocked since.
    write_locked: bool,
    /// An exclusion was reported as never ended: the flag is stuck, and everything
    /// that follows from it on this VMA would only repeat that report.
    flag_stuck: bool,
    /// State that only exists around a write lock or exclusion, boxed so the record of
    /// the many idle VMAs stays small (one cache line).
    rare: Option<Box<Rare>>,
    /// The two latest closed windows `(readers excluded, exclusion ended)` in time.
    windows: Windows,
    /// Timestamp of the `vm_area_alloc`/`vm_area_dup` return that started this life.
    born_ts: u64,
    last_touch: u64,
}

/// Closed exclusion windows of one VMA: the two latest in time (not in delivery: an
/// earlier exclusion's end can be delivered after a later one's), because a reader's
/// event can be delivered after the next exclusion on its VMA has closed too. Packed
/// (start, length; length 0: none) so a VMA's record stays one cache line; a window
/// longer than `u32::MAX` ns is cut short, which can only miss a reader, never accuse one.
#[derive(Clone, Copy, Debug, Default)]
struct Windows {
    from: [u64; 2],
    len: [u32; 2],
}

impl Windows {
    fn get(&self, i: usize) -> Option<(u64, u64)> {
        (self.len[i] != 0).then(|| (self.from[i], self.from[i] + u64::from(self.len[i])))
    }

    fn close(&mut self, (from, to): (u64, u64)) {
        let len = u32::try_from(to.saturating_sub(from)).unwrap_or(u32::MAX);
        if len == 0 {
            return;
        }
        let end = |i: usize| self.get(i).map_or(0, |(_, to)| to);
        if to >= end(0) {
            self.from = [from, self.from[0]];
            self.len = [len, self.len[0]];
        } else if to >= end(1) {
            self.from[1] = from;
            self.len[1] = len;
        }
    }

    /// The window that has `ts` strictly inside it.
    fn containing(&self, ts: u64) -> Option<(u64, u64)> {
        (0..2)
            .filter_map(|i| self.get(i))
            .find(|&(from, to)| from < ts && ts < to)
    }

    fn is_empty(&self) -> bool {
        self.len[0] == 0
    }
}

#[derive(Debug, Default)]
struct Rare {
    excl: Option<Exclusion>,
    /// Another task's exclusion whose end has not arrived yet when this one began: the
    /// ring delivers tasks' events out of order, so two exclusions the mmap lock
    /// serialised can overlap in the stream. Its window is still judged when it ends.
    earlier: Option<Exclusion>,
    /// `state` argument of the last `__vma_start_write` entry and its task.
    start_write: Option<(u32, u32)>,
    /// Reader successes whose sample had the flag set, waiting for their window.
    suspects: Vec<Event>,
    /// Puts that read the flag set on a write-locked VMA, with their task's next event's
    /// time, waiting for a write call around both (`readers_drained_before_store`).
    locked_puts: Vec<(Event, u64)>,
}

/// Emptied [`Rare`] boxes, reused: every write lock needs one for the length of its call,
/// and a `malloc` and `free` per call showed in the validator's profile. Per thread (each
/// validator runs on one); only boxes whose vectors hold no allocation are kept.
const SPARE_RARE_KEPT: usize = 64;
thread_local! {
    // The boxes are what is reused: `Rare` lives boxed in the record.
    #[allow(clippy::vec_box)]
    static SPARE_RARE: std::cell::RefCell<Vec<Box<Rare>>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl VmaTrack {
    fn excl(&self) -> Option<Exclusion> {
        self.rare.as_ref().and_then(|r| r.excl)
    }

    /// Task `tid`'s exclusion still open on this VMA, if any.
    fn excl_of(&self, tid: u32) -> Option<Exclusion> {
        let r = self.rare.as_ref()?;
        [r.excl, r.earlier]
            .into_iter()
            .flatten()
            .find(|x| x.tid == tid)
    }

    /// Record `x` as the exclusion in progress; another task's still open moves aside
    /// (it ended, but its end is delivered later).
    fn begin_exclusion(&mut self, x: Exclusion) {
        let r = self.rare();
        match r.excl {
            Some(cur) if cur.tid == x.tid => {}
            Some(cur) => r.earlier = Some(cur),
            None => {}
        }
        r.excl = Some(x);
    }

    fn start_write(&self) -> Option<(u32, u32)> {
        self.rare.as_ref().and_then(|r| r.start_write)
    }

    fn rare(&mut self) -> &mut Rare {
        self.rare
            .get_or_insert_with(|| SPARE_RARE.with_borrow_mut(Vec::pop).unwrap_or_default())
    }

    /// Give the boxed state back once nothing is in it.
    fn tidy(&mut self) {
        if self.rare.as_ref().is_some_and(|r| {
            r.excl.is_none()
                && r.earlier.is_none()
                && r.start_write.is_none()
                && r.suspects.is_empty()
                && r.locked_puts.is_empty()
        }) && let Some(spare) = self.rare.take()
        {
            SPARE_RARE.with_borrow_mut(|s| {
                let unallocated =
                    spare.suspects.capacity() == 0 && spare.locked_puts.capacity() == 0;
                if s.len() < SPARE_RARE_KEPT && unallocated {
                    s.push(spare);
                }
            });
        }
    }

    fn new(mm: u64, phase: Phase, born_ts: u64, tick: u64) -> Self {
        Self {
            mm,
            phase,
            write_locked: false,
            flag_stuck: false,
            rare: None,
            windows: Windows::default(),
            born_ts,
            last_touch: tick,
        }
    }

    fn describe(&self) -> String {
        let mut s = String::from(self.phase.key());
        if self.write_locked && self.phase != Phase::WriteLocked {
            s.push_str(", write-locked");
        }
        if let Some(x) = &self.excl() {
            s.push_str(&format!(", excluder tid {}", x.tid));
            match x.detaching {
                Some(true) => s.push_str(" (detach, target F)"),
                Some(false) => s.push_str(" (write, target F+1)"),
                None => {}
            }
            if x.exclusive_ts.is_some() {
                s.push_str(", readers excluded");
            }
        }
        if self.flag_stuck {
            s.push_str(", flag stuck");
        }
        s
    }
}

/// An owed `rcuwait_wake_up`: the put that left readers excluded.
struct PendingWake {
    release: Event,
}

/// Writer-path returns remembered to settle owed wake-ups delivered out of order.
const RECENT_RETURNS: usize = 256;

/// One mm write-lock cycle of task `tid` (its mmap write-lock holder), where every
/// detach is seen and no start-exclude is (6.15–6.18): the VMAs it write-locked. Until
/// the task's unlock only it can detach them, so a put that read the flag set on one it
/// did not detach, at a time inside its hold, read a writer's flag past that writer's
/// wait (`readers_drained_before_store`).
#[derive(Debug, Default)]
struct HoldCycle {
    tid: u32,
    /// The latest time of this task's writer events in the cycle. The unlock's own time
    /// is no bound (its event may be stamped after the release); this one is earlier.
    last: u64,
    holds: Vec<Hold>,
}

/// A VMA write-locked from `from` (its `__vma_start_write` call's entry) on.
#[derive(Clone, Copy, Debug)]
struct Hold {
    vma: u64,
    from: u64,
    detached: bool,
}

pub struct Validator {
    generation: Generation,
    observed: u64,
    losses: u64,
    vmas: AddrMap<VmaTrack>,
    /// mm → VMAs write-locked since its last write-unlock.
    mms: AddrMap<Vec<u64>>,
    pending_wakes: TidMap<PendingWake>,
    /// Owed wake-ups whose task went on without one (its next event), waiting for the
    /// excluder's return to say whether it was still in flight then.
    unsettled: Vec<(PendingWake, Event)>,
    /// `(vma, ts)` of the latest writer-path returns (the excluder's call ended).
    recent_returns: std::collections::VecDeque<(u64, u64)>,
    /// `(vma, entry ts, return ts)` of the latest `__vma_start_write` calls.
    recent_write_calls: std::collections::VecDeque<(u64, u64, u64)>,
    /// Puts that read the flag set on a write-locked VMA, by task, until the task's next
    /// event bounds when their reads happened.
    locked_puts: TidMap<Event>,
    /// Where every detach is seen and no start-exclude is (6.15–6.18): mm → its
    /// write-lock holder's cycle ([`HoldCycle`]), until its write-unlock.
    holds: Option<AddrMap<HoldCycle>>,
    /// `(vma, from, to)` of holds closed without a detach, until the kernel's loss
    /// counters say no event went missing meanwhile ([`Validator::no_new_losses`]): a
    /// detach whose program run was lost (a kretprobe out of instances) would leave a
    /// put inside its hold unexplained, and the counters arrive after the events.
    unconfirmed_holds: Vec<(u64, u64, u64)>,
    /// `(vma, from, to)` of the latest confirmed holds, for puts delivered later.
    recent_holds: std::collections::VecDeque<(u64, u64, u64)>,
    /// Wake-ups streamed to an excluder whose return has not been seen since.
    unanswered: Vec<Event>,
    /// Writer-path calls entered and not yet returned, by task and function family.
    open_calls: OpenCalls,
    /// Closed windows of VMAs forgotten at their detach, for their readers' events
    /// that are delivered after it, and the order they came in (at most
    /// [`MAX_DETACHED_WINDOWS`]: the oldest go first).
    detached_windows: AddrMap<Windows>,
    detached_order: std::collections::VecDeque<u64>,
    /// [`Validator::finish`] judged the stream's end already.
    ended: bool,
    recent: Recent,
    counts: [u64; Phase::ALL.len()],
    max_vmas: usize,
    evicted: u64,
    /// A rule switched off ([`Validator::without_rule`]).
    off: Option<&'static str>,
}

/// Everything an anomaly needs besides the evidence.
struct Finding {
    rule: &'static Rule,
    state: String,
    observed: String,
}

impl Validator {
    pub fn new(generation: Generation) -> Self {
        Self::with_capacity(generation, DEFAULT_MAX_VMAS)
    }

    /// A validator that tracks at most `max_vmas` VMAs at once.
    pub fn with_capacity(generation: Generation, max_vmas: usize) -> Self {
        Self::with_limits(generation, max_vmas, RECENT_EVENTS)
    }

    /// ... and keeps `recent_events` for evidence (the conformance check replays
    /// millions of short streams through fresh validators: a small ring is cheap).
    pub fn with_limits(generation: Generation, max_vmas: usize, recent_events: usize) -> Self {
        Self {
            generation,
            observed: 0,
            losses: 0,
            vmas: AddrMap::default(),
            mms: AddrMap::default(),
            pending_wakes: TidMap::default(),
            unsettled: Vec::new(),
            recent_returns: std::collections::VecDeque::new(),
            recent_write_calls: std::collections::VecDeque::new(),
            locked_puts: TidMap::default(),
            holds: judges_holds(generation).then(AddrMap::default),
            unconfirmed_holds: Vec::new(),
            recent_holds: std::collections::VecDeque::new(),
            unanswered: Vec::new(),
            open_calls: OpenCalls::default(),
            detached_windows: AddrMap::default(),
            detached_order: std::collections::VecDeque::new(),
            ended: false,
            recent: Recent::new(recent_events),
            counts: [0; Phase::ALL.len()],
            max_vmas: max_vmas.max(4),
            evicted: 0,
            off: None,
        }
    }

    /// The same validator with one row of the rule table switched off: what the
    /// conformance check and the tests use to show that a rule is needed (breaking a
    /// row makes them fail).
    pub fn without_rule(mut self, rule: &'static Rule) -> Self {
        self.off = Some(rule.name);
        self
    }

    /// The session cannot see every detach (its hook did not attach): a put's flag
    /// may then be an unseen detach's, so write-lock holds no longer judge puts.
    pub fn detaches_unseen(&mut self) {
        self.holds = None;
    }

    /// The kernel's loss counters, read after the events so far, show no new loss:
    /// the holds closed meanwhile lost no detach, and judge their puts now.
    pub fn no_new_losses(&mut self, out: &mut Vec<Anomaly>) {
        for (vma, from, to) in std::mem::take(&mut self.unconfirmed_holds) {
            self.judge_hold(vma, from, to, out);
        }
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub fn observed(&self) -> u64 {
        self.observed
    }

    pub fn losses_noted(&self) -> u64 {
        self.losses
    }

    /// VMAs currently tracked.
    pub fn tracked_vmas(&self) -> usize {
        self.vmas.len()
    }

    /// VMAs dropped because the cap was reached (not counting frees and detaches).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Tracked VMAs per phase, with stable keys: unknown, detached, attached, readers,
    /// excluding, write_locked.
    pub fn phase_counts(&self) -> Vec<(&'static str, u64)> {
        Phase::ALL
            .iter()
            .map(|p| (p.key(), self.counts[p.index()]))
            .collect()
    }

    /// Events were lost: forget per-VMA state and resynchronise.
    pub fn note_loss(&mut self) {
        self.losses += 1;
        for t in self.vmas.values_mut() {
            self.counts[t.phase.index()] -= 1;
            self.counts[Phase::Unknown.index()] += 1;
            t.phase = Phase::Unknown;
            t.write_locked = false;
            t.flag_stuck = false;
            t.rare = None;
            t.windows = Windows::default();
        }
        self.mms.clear();
        self.pending_wakes.clear();
        self.unsettled.clear();
        self.unanswered.clear();
        self.open_calls.clear();
        self.detached_windows.clear();
        self.detached_order.clear();
        self.recent_write_calls.clear();
        self.locked_puts.clear();
        if let Some(h) = &mut self.holds {
            h.clear();
        }
        self.unconfirmed_holds.clear();
        self.recent_holds.clear();
    }

    /// The stream has ended (end of a simulation or of a trace file): report the
    /// wake-ups still owed. A task whose put left readers excluded calls
    /// `rcuwait_wake_up` right after it; once nothing more will arrive, the missing call
    /// is a lost wake-up. Not for a live capture cut at an arbitrary point.
    pub fn finish(&mut self, out: &mut Vec<Anomaly>) {
        // Every loss of a finished stream has been noted (which dropped these).
        self.no_new_losses(out);
        let before = out.len();
        let mut owed: Vec<PendingWake> = self.pending_wakes.drain().map(|(_, p)| p).collect();
        owed.sort_by_key(|p| p.release.ts_ns);
        for p in owed {
            // Excused when the excluder returned after the put: the wake-up, if any, was
            // no longer streamed.
            if !self.returned_within(p.release.vma, p.release.ts_ns, u64::MAX) {
                self.report_lost_wakeup(&p.release, None, out);
            }
        }
        for (p, next) in std::mem::take(&mut self.unsettled) {
            self.report_lost_wakeup(&p.release, next.kind().map(|k| (&next, k)), out);
        }
        for w in std::mem::take(&mut self.unanswered) {
            self.report_unanswered_wake(&w, out);
        }
        // One report per VMA: a hung excluder behind a lost wake-up already reported is
        // the same fault.
        let reported: Vec<u64> = out[before..].iter().map(|a| a.event.vma).collect();
        // With a gap in the stream a missing return may just be lost: the rules below
        // need the whole stream, and they judge its end once.
        if self.losses > 0 || std::mem::replace(&mut self.ended, true) {
            return;
        }
        // An excluder still waiting for readers when a finite stream ends slept through
        // its wake-up: every reader leaves, so the wait ends in every correct run. So does
        // a VMA whose last sample shows the flag with no excluder's call ended after it.
        let mut waiting: Vec<(u64, u32)> = self
            .open_calls
            .values()
            .filter(|c| c.vma != 0 && !reported.contains(&c.vma))
            .map(|c| (c.vma, c.tid))
            .collect();
        waiting.sort_unstable();
        waiting.dedup_by_key(|(vma, _)| *vma);
        let flagged: Vec<(u64, u32)> = self
            .vmas
            .iter()
            .filter(|(vma, t)| {
                !t.flag_stuck && !reported.contains(vma) && !waiting.iter().any(|(v, _)| v == *vma)
            })
            .filter_map(|(vma, t)| {
                let last = self
                    .recent
                    .of_vma(*vma, t.mm)
                    .into_iter()
                    .filter(|e| {
                        e.vma == *vma && e.has(flags::VMA_FIELDS) && !e.has(flags::READ_FAILED)
                    })
                    .max_by_key(|e| e.ts_ns)?;
                (refcnt::flag_set(last.refcnt)
                    && !refcnt::out_of_range(last.refcnt)
                    && !self.returned_within(*vma, last.ts_ns, u64::MAX))
                .then_some((*vma, 0))
            })
            .collect();
        waiting.extend(flagged);
        waiting.sort_unstable();
        for (vma, tid) in waiting {
            self.report_never_woken(vma, tid, out);
        }
    }

    fn report_never_woken(&self, vma: u64, tid: u32, out: &mut Vec<Anomaly>) {
        let mm = self.vmas.get(&vma).map_or(0, |t| t.mm);
        let evidence = self.recent.of_vma(vma, mm);
        let Some(last) = evidence.last().copied() else {
            return;
        };
        self.push(
            out,
            &rules::EXCLUDER_WAIT_ENDS,
            last,
            self.state_of(vma),
            format!(
                "the stream ended with {} still waiting for readers to leave (last vm_refcnt \
                 seen = {})",
                if tid == 0 {
                    "the excluder".to_string()
                } else {
                    format!("tid {tid}")
                },
                refcnt::describe(last.refcnt)
            ),
            evidence,
        );
    }

    /// Whether a writer-path return on `vma` happened strictly between `from` and `to`.
    fn returned_within(&self, vma: u64, from: u64, to: u64) -> bool {
        self.recent_returns
            .iter()
            .any(|&(v, ts)| v == vma && from < ts && ts < to)
    }

    /// An excluder's call ended (`ExcludeExit`, `WriteLockExit`, `DetachExit`): settle
    /// the owed wake-ups it decides, and the wake-ups it answers.
    fn on_writer_return(&mut self, ev: &Event, out: &mut Vec<Anomaly>) {
        if ev.vma == 0 {
            return;
        }
        if self.recent_returns.len() == RECENT_RETURNS {
            self.recent_returns.pop_front();
        }
        self.recent_returns.push_back((ev.vma, ev.ts_ns));
        let (vma, ts) = (ev.vma, ev.ts_ns);
        let mut i = 0;
        while i < self.unsettled.len() {
            let (p, next) = &self.unsettled[i];
            if p.release.vma != vma || ts <= p.release.ts_ns {
                i += 1;
                continue;
            }
            let (p, next) = (p.release, *next);
            self.unsettled.swap_remove(i);
            // The first return after the put decides: before the task's next event, the
            // wake-up was no longer streamed; after it, the task went on without waking
            // an excluder still in flight.
            if ts >= next.ts_ns {
                let kind = next.kind();
                self.report_lost_wakeup(&p, kind.map(|k| (&next, k)), out);
            }
        }
        self.unanswered.retain(|w| !(w.vma == vma && w.ts_ns < ts));
    }

    /// A wake-up streamed to an excluder that never returned afterwards: it slept with
    /// its condition met (a finite stream ended with it still waiting).
    fn report_unanswered_wake(&self, w: &Event, out: &mut Vec<Anomaly>) {
        let state = self.state_of(w.vma);
        let mut evidence = self.recent.of_vma(w.vma, w.mm);
        if evidence.is_empty() {
            evidence.push(*w);
        }
        self.push(
            out,
            &rules::WOKEN_EXCLUDER_RETURNS,
            *w,
            state,
            format!(
                "event writer_wake not expected in state excluding: the stream ended with the \
                 excluder still waiting after tid {}'s rcuwait_wake_up ({}), vm_refcnt = {}",
                w.tid(),
                if w.returned() == Some(0) {
                    "nobody was registered"
                } else {
                    "a task was registered"
                },
                refcnt::describe(w.refcnt)
            ),
            evidence,
        );
    }

    /// Check a batch of events in stream order, as [`Validator::observe`] one by one.
    ///
    /// With many live VMAs their records do not fit in the CPU's caches, and a lookup is
    /// a cache miss (two: the table's control bytes, then the record). Looking up the
    /// next few events' records first, independently of each other, lets those misses
    /// overlap instead of being paid one after another; the checks then find them
    /// cached (docs/performance.md, "The validator's lookups").
    /// While the records fit in the caches (fewer than [`PREFETCH_FROM`]) the early
    /// lookups would only be paid twice, so they are skipped.
    pub fn observe_batch(&mut self, evs: &[Event], out: &mut Vec<Anomaly>) {
        const AHEAD: usize = 8;
        if self.vmas.len() < PREFETCH_FROM {
            for ev in evs {
                self.observe(ev, out);
            }
            return;
        }
        for chunk in evs.chunks(AHEAD) {
            let mut touched = 0u64;
            for ev in chunk {
                if let Some(t) = self.vmas.get(&ev.vma) {
                    touched ^= t.last_touch;
                }
            }
            std::hint::black_box(touched);
            for ev in chunk {
                self.observe(ev, out);
            }
        }
    }

    /// Check one event; anomalies are appended to `out`.
    pub fn observe(&mut self, ev: &Event, out: &mut Vec<Anomaly>) {
        self.observed += 1;
        self.recent.push(ev);
        let Some(kind) = ev.kind() else { return };
        if !self.pending_wakes.is_empty() {
            self.settle_wake(ev, kind);
        }
        if !self.locked_puts.is_empty()
            && let Some(put) = self.locked_puts.remove(&ev.tid())
        {
            self.locked_put(&put, ev.ts_ns, out);
        }
        match kind {
            EventKind::WriteLockEnter | EventKind::ExcludeEnter | EventKind::DetachEnter
                if self.open_calls.len() < MAX_PENDING_WAKES =>
            {
                self.open_calls.insert(
                    call_key(ev.tid(), kind),
                    OpenCall {
                        vma: ev.vma,
                        tid: ev.tid(),
                    },
                );
            }
            EventKind::WriteLockExit | EventKind::ExcludeExit | EventKind::DetachExit => {
                self.open_calls.remove(call_key(ev.tid(), kind));
                self.on_writer_return(ev, out);
            }
            EventKind::WriterWake
                if ev.vma != 0
                    && self.unanswered.len() < MAX_PENDING_WAKES
                    && !self.returned_within(ev.vma, ev.ts_ns, u64::MAX) =>
            {
                self.unanswered.push(*ev);
            }
            _ => {}
        }
        let sample = Sample::of(ev);
        if let Some(s) = sample
            && rules::REFCOUNT_IN_RANGE.broken_by(s)
        {
            let stuck = self.vmas.get(&ev.vma).is_some_and(|t| t.flag_stuck);
            if !stuck {
                let state = self.state_of(ev.vma);
                self.emit(
                    out,
                    ev,
                    Finding {
                        rule: &rules::REFCOUNT_IN_RANGE,
                        state,
                        observed: format!("vm_refcnt = {}", refcnt::describe(s.r)),
                    },
                );
            }
        }
        match kind {
            EventKind::WriteLockEnter => self.on_write_lock_enter(ev, sample, out),
            EventKind::WriteLockExit => self.on_write_lock_exit(ev, sample, out),
            EventKind::ExcludeEnter => self.on_exclude_enter(ev, sample, out),
            EventKind::ExcludeExit => self.on_exclude_exit(ev, sample, out),
            EventKind::DetachEnter => self.on_detach_enter(ev, sample, out),
            EventKind::DetachExit => self.on_detach_exit(ev, sample, out),
            EventKind::ReaderAcquire => self.on_reader_acquire(ev, sample, out),
            EventKind::ReaderRelease => self.on_reader_release(ev, sample, out),
            // What the writer was doing, not a transition of the lock.
            EventKind::WriterWake | EventKind::SlowWait => {}
            EventKind::MmWriteUnlock => self.on_mm_write_unlock(ev),
            EventKind::VmaAlloc => self.on_vma_alloc(ev),
            EventKind::VmaFree => self.on_vma_free(ev, sample, out),
        }
    }

    // ----- per kind -------------------------------------------------------------------

    fn on_write_lock_enter(&mut self, ev: &Event, sample: Option<Sample>, out: &mut Vec<Anomaly>) {
        self.check_no_exclusion_yet(ev, sample, out);
        self.holder_went_on(ev);
        // 6.15–6.18 pass the mm sequence, not a task state.
        let state = if self.generation.profile().writer_takes_state {
            ev.arg as u32
        } else {
            0
        };
        let Some((t, _)) = self.track(ev, sample) else {
            return;
        };
        t.rare().start_write = Some((ev.tid(), state));
    }

    fn on_write_lock_exit(&mut self, ev: &Event, sample: Option<Sample>, out: &mut Vec<Anomaly>) {
        // `__vma_start_write` is void before 6.19: returning is success.
        let ret = match ev.returned() {
            None if !self.generation.profile().writer_takes_state => Some(0),
            r => r,
        };
        if ret.is_none()
            && let Some(s) = sample
            && rules::WRITE_LOCK_ENDS_EXCLUSION.broken_by(s)
            && !self.stuck(ev.vma)
        {
            // Success or -EINTR, the flag is gone by the return either way.
            self.report_flag_stuck(ev, s, &rules::WRITE_LOCK_ENDS_EXCLUSION, out);
        }
        if ret == Some(0) {
            if let Some(s) = sample {
                if rules::WRITE_LOCK_ENDS_EXCLUSION.broken_by(s) && !self.stuck(ev.vma) {
                    self.report_flag_stuck(ev, s, &rules::WRITE_LOCK_ENDS_EXCLUSION, out);
                } else if rules::WRITE_LOCK_TAKEN.broken_by(s) {
                    let state = self.state_of(ev.vma);
                    self.emit(
                        out,
                        ev,
                        Finding {
                            rule: &rules::WRITE_LOCK_TAKEN,
                            state,
                            observed: format!(
                                "vm_lock_seq = {}, mm_lock_seq = {}",
                                s.l,
                                s.s.unwrap_or_default()
                            ),
                        },
                    );
                }
            }
        } else if ret == Some(EINTR) {
            let killable = self.generation.has_killable_writers()
                && self
                    .vmas
                    .get(&ev.vma)
                    .and_then(VmaTrack::start_write)
                    .is_none_or(|(tid, st)| tid != ev.tid() || st == 0 || st == TASK_KILLABLE);
            if !killable {
                let state = self.state_of(ev.vma);
                self.emit(
                    out,
                    ev,
                    Finding {
                        rule: &rules::WRITE_LOCK_EINTR_ONLY_KILLABLE,
                        state,
                        observed: "__vma_start_write returned -EINTR".into(),
                    },
                );
            }
            if let Some(s) = sample
                && rules::WRITE_LOCK_ENDS_EXCLUSION.broken_by(s)
                && !self.stuck(ev.vma)
            {
                self.report_flag_stuck(ev, s, &rules::WRITE_LOCK_ENDS_EXCLUSION, out);
            }
        }
        let success = ret == Some(0);
        let tid = ev.tid();
        let mm = ev.mm;
        let ts = ev.ts_ns;
        let Some((t, counts)) = self.track(ev, sample) else {
            return;
        };
        if t.born_ts > ts {
            return;
        }
        if let Some(r) = &mut t.rare {
            r.start_write = None;
        }
        let suspects = close_exclusion(t, tid, ts);
        let mut newly_locked = false;
        if success {
            newly_locked = !t.write_locked;
            t.write_locked = true;
        }
        let phase = match sample {
            Some(s) if s.r == 0 => Phase::Detached,
            _ if t.write_locked => Phase::WriteLocked,
            Some(s) => Phase::of_refcnt(s.r),
            None => Phase::Unknown,
        };
        set_phase(counts, t, phase);
        let vma = ev.vma;
        if newly_locked && mm != 0 && (self.mms.len() < MAX_MMS || self.mms.contains_key(&mm)) {
            let locked = self.mms.entry(mm).or_default();
            if locked.len() < MAX_LOCKED_PER_MM {
                locked.push(vma);
            }
            if let Some(holds) = &mut self.holds {
                let cycle = holds.entry(mm).or_default();
                if cycle.tid != tid {
                    // A new holder: the last one's unlock was not seen.
                    *cycle = HoldCycle {
                        tid,
                        ..HoldCycle::default()
                    };
                }
                if cycle.holds.len() < MAX_LOCKED_PER_MM {
                    // The call's entry when it travelled with the return, else the return.
                    let from = if ev.has(flags::PAIRED) {
                        ts.saturating_sub(ev.wait_ns)
                    } else {
                        ts
                    };
                    cycle.holds.push(Hold {
                        vma,
                        from,
                        detached: false,
                    });
                }
            }
        }
        self.holder_went_on(ev);
        self.report_suspects(ev, suspects, out);
        // The call's entry travels with its return (folded, or paired by the pipeline).
        if ev.has(flags::PAIRED) {
            self.write_call_ended(ev, ev.ts_ns.saturating_sub(ev.wait_ns), out);
        }
    }

    fn on_exclude_enter(&mut self, ev: &Event, sample: Option<Sample>, out: &mut Vec<Anomaly>) {
        self.check_no_exclusion_yet(ev, sample, out);
        let ves = ev.ves();
        let excl = Exclusion {
            tid: ev.tid(),
            detaching: ves.map(|v| v.detaching),
            state: ves.map_or(0, |v| v.state),
            exclusive_ts: None,
        };
        let Some((t, counts)) = self.track(ev, sample) else {
            return;
        };
        if t.born_ts > ev.ts_ns {
            return;
        }
        t.begin_exclusion(excl);
        set_phase(counts, t, Phase::Excluding);
    }

    fn on_exclude_exit(&mut self, ev: &Event, sample: Option<Sample>, out: &mut Vec<Anomaly>) {
        let result = match ev.returned() {
            Some(ret) => ExcludeResult::decode(
                self.generation,
                ret,
                ev.ves().map(|v| (v.detached, v.exclusive)),
            ),
            None => ExcludeResult::Unknown,
        };
        let tid = ev.tid();
        // One lookup for both.
        let (mine, stuck) = self
            .vmas
            .get(&ev.vma)
            .map_or((None, false), |t| (t.excl_of(tid), t.flag_stuck));
        let ves = ev.ves();
        let detaching = match ves {
            Some(v) => Some(v.detaching),
            None => mine.and_then(|x| x.detaching),
        };
        let state = match ves {
            Some(v) if v.state != 0 => v.state,
            _ => mine.map_or(0, |x| x.state),
        };
        match (result, sample) {
            (ExcludeResult::Exclusive, Some(s)) if !refcnt::out_of_range(s.r) && !stuck => {
                let ok = match detaching {
                    Some(d) => s.r == refcnt::exclude_target(d),
                    None => s.r == F || s.r == F + 1,
                };
                if !ok {
                    let target = match detaching {
                        Some(true) => "F (detach)",
                        Some(false) => "F+1 (write)",
                        None => "F+1 (write) or F (detach)",
                    };
                    let st = self.state_of(ev.vma);
                    self.emit(
                        out,
                        ev,
                        Finding {
                            rule: &rules::EXCLUDE_REACHES_TARGET,
                            state: st,
                            observed: format!(
                                "start-exclude returned exclusive with vm_refcnt = {}, target \
                                 {target}",
                                refcnt::describe(s.r)
                            ),
                        },
                    );
                }
            }
            (ExcludeResult::Detached, Some(s))
                if rules::EXCLUDE_DETACHED_AT_ZERO.broken_by(s) && !stuck =>
            {
                let st = self.state_of(ev.vma);
                self.emit(
                    out,
                    ev,
                    Finding {
                        rule: &rules::EXCLUDE_DETACHED_AT_ZERO,
                        state: st,
                        observed: format!("vm_refcnt = {}", refcnt::describe(s.r)),
                    },
                );
            }
            (ExcludeResult::Interrupted, _) => {
                let allowed = self.generation.has_killable_writers()
                    && (state == 0 || state == TASK_KILLABLE)
                    && detaching != Some(true);
                if !allowed {
                    let st = self.state_of(ev.vma);
                    self.emit(
                        out,
                        ev,
                        Finding {
                            rule: &rules::EXCLUDE_EINTR_ONLY_KILLABLE,
                            state: st,
                            observed: format!(
                                "start-exclude returned -EINTR (state {state:#x}, detaching \
                                 {detaching:?})"
                            ),
                        },
                    );
                }
                if let Some(s) = sample
                    && rules::INTERRUPTED_EXCLUDE_ENDS_EXCLUSION.broken_by(s)
                    && !stuck
                {
                    self.report_flag_stuck(ev, s, &rules::INTERRUPTED_EXCLUDE_ENDS_EXCLUSION, out);
                }
            }
            _ => {}
        }
        let ts = ev.ts_ns;
        let Some((t, counts)) = self.track(ev, sample) else {
            return;
        };
        if t.born_ts > ts {
            return;
        }
        let suspects = match result {
            ExcludeResult::Exclusive => {
                // Without this task's start (tracing started mid-flight, or a gap) the
                // exclusion begins here.
                match &mut t.rare().excl {
                    Some(x) if x.tid == tid => x.exclusive_ts = Some(ts),
                    _ => match &mut t.rare().earlier {
                        Some(x) if x.tid == tid => x.exclusive_ts = Some(ts),
                        _ => t.begin_exclusion(Exclusion {
                            tid,
                            detaching,
                            state,
                            exclusive_ts: Some(ts),
                        }),
                    },
                }
                set_phase(counts, t, Phase::Excluding);
                Vec::new()
            }
            ExcludeResult::Detached | ExcludeResult::Interrupted => {
                let suspects = close_exclusion(t, tid, ts);
                let phase = sample.map_or(Phase::Unknown, |s| Phase::of_refcnt(s.r));
                let phase = if phase == Phase::Attached && t.write_locked {
                    Phase::WriteLocked
                } else {
                    phase
                };
                set_phase(counts, t, phase);
                suspects
            }
            ExcludeResult::Unknown => Vec::new(),
        };
        self.report_suspects(ev, suspects, out);
    }

    fn on_detach_enter(&mut self, ev: &Event, sample: Option<Sample>, out: &mut Vec<Anomaly>) {
        self.check_no_exclusion_yet(ev, sample, out);
        if let Some(holds) = &mut self.holds {
            // Its mm's cycle; an unknown mm (a failed read) could be any, so every hold of
            // the VMA ends then.
            let cycles: Vec<&mut HoldCycle> = match holds.get_mut(&ev.mm) {
                Some(c) => vec![c],
                None if ev.mm == 0 => holds.values_mut().collect(),
                None => Vec::new(),
            };
            for c in cycles {
                for held in c.holds.iter_mut().filter(|h| h.vma == ev.vma) {
                    held.detached = true;
                }
            }
        }
        self.holder_went_on(ev);
        let _ = self.track(ev, sample);
    }

    fn on_detach_exit(&mut self, ev: &Event, sample: Option<Sample>, out: &mut Vec<Anomaly>) {
        self.holder_went_on(ev);
        let stuck = self.stuck(ev.vma);
        if let Some(s) = sample
            && !stuck
        {
            if rules::DETACH_ENDS_EXCLUSION.broken_by(s) {
                self.report_flag_stuck(ev, s, &rules::DETACH_ENDS_EXCLUSION, out);
            } else if rules::DETACH_AT_ZERO.broken_by(s) {
                let state = self.state_of(ev.vma);
                self.emit(
                    out,
                    ev,
                    Finding {
                        rule: &rules::DETACH_AT_ZERO,
                        state,
                        observed: format!("vm_refcnt = {}", refcnt::describe(s.r)),
                    },
                );
            }
        }
        // The detach completed: this life of the VMA is over for the model (a later
        // re-attach is invisible anyway, `docs/protocol.md#detach-invariants`). Decide
        // pending suspects, then forget it.
        let tid = ev.tid();
        let ts = ev.ts_ns;
        let Some(t) = self.vmas.get_mut(&ev.vma) else {
            return;
        };
        if t.born_ts > ts {
            return;
        }
        let suspects = close_exclusion(t, tid, ts);
        // Another task's exclusion whose end is delivered later, or readers waiting for
        // their window: keep the record until they are decided.
        let undecided = t.rare.is_some();
        self.report_suspects(ev, suspects, out);
        if !self.stuck(ev.vma) && !undecided {
            let windows = self.vmas.get(&ev.vma).map(|t| t.windows);
            if let Some(w) = windows.filter(|w| !w.is_empty()) {
                self.detached_windows.insert(ev.vma, w);
                self.detached_order.push_back(ev.vma);
                if self.detached_order.len() > MAX_DETACHED_WINDOWS
                    && let Some(old) = self.detached_order.pop_front()
                {
                    self.detached_windows.remove(&old);
                }
            }
            self.forget(ev.vma);
        }
    }

    fn on_reader_acquire(&mut self, ev: &Event, sample: Option<Sample>, out: &mut Vec<Anomaly>) {
        // `lock_next_vma` may return ERR_PTR(-EINTR / -EAGAIN): no reference held.
        let success = ev.returned().is_some_and(|r| r != 0 && !is_err_value(r));
        if success && let Some(s) = sample {
            if rules::READER_NOT_WRITE_LOCKED.broken_by(s) {
                let state = self.state_of(ev.vma);
                self.emit(
                    out,
                    ev,
                    Finding {
                        rule: &rules::READER_NOT_WRITE_LOCKED,
                        state,
                        observed: format!(
                            "reader got the VMA with vm_lock_seq = mm_lock_seq = {}",
                            s.l
                        ),
                    },
                );
            } else if rules::READER_HOLDS_REFERENCE.broken_by(s) {
                // F+1 is not here: a writer's F+1 leaves no room for this reader, but
                // a detacher's F plus this reader is F+1 (then the window decides).
                let state = self.state_of(ev.vma);
                self.emit(
                    out,
                    ev,
                    Finding {
                        rule: &rules::READER_HOLDS_REFERENCE,
                        state,
                        observed: format!("vm_refcnt = {}", refcnt::describe(s.r)),
                    },
                );
            }
        }
        let ts = ev.ts_ns;
        let flagged = sample.is_some_and(|s| refcnt::flag_set(s.r) && !refcnt::out_of_range(s.r));
        let Some((t, counts)) = self.track(ev, sample) else {
            return;
        };
        if t.born_ts > ts {
            return;
        }
        if success && flagged && !t.flag_stuck {
            if let Some((from, to)) = t.windows.containing(ts) {
                let state = t.describe();
                let f = reader_excluded_finding(state, from, to);
                self.emit(out, ev, f);
                return;
            }
            let suspects = &mut t.rare().suspects;
            if suspects.len() == MAX_SUSPECTS {
                suspects.remove(0);
            }
            suspects.push(*ev);
        }
        if let Some(s) = sample {
            let phase = match Phase::of_refcnt(s.r) {
                Phase::Attached | Phase::Readers if t.write_locked => Phase::WriteLocked,
                Phase::Excluding if t.excl().is_none() => Phase::Unknown,
                p => p,
            };
            set_phase(counts, t, phase);
        }
    }

    fn on_reader_release(&mut self, ev: &Event, sample: Option<Sample>, out: &mut Vec<Anomaly>) {
        let Some(s) = sample else { return };
        if refcnt::out_of_range(s.r) {
            return;
        }
        if rules::PUT_HOLDS_REFERENCE.broken_by(s) {
            let state = self.state_of(ev.vma);
            self.emit(
                out,
                ev,
                Finding {
                    rule: &rules::PUT_HOLDS_REFERENCE,
                    state,
                    observed: format!("put with vm_refcnt = {}", refcnt::describe(s.r)),
                },
            );
        }
        if refcnt::put_must_wake(s.r) && self.pending_wakes.len() < MAX_PENDING_WAKES {
            self.pending_wakes
                .insert(ev.tid(), PendingWake { release: *ev });
        }
        // A put holds a reference until its decrement: one with the flag set is a reader
        // inside the exclusion, which the window decides like a flagged acquire.
        if refcnt::flag_set(s.r) {
            self.window_check(ev, out);
            if s.write_locked() == Some(true) {
                if let Some((from, to)) = self.hold_around(ev) {
                    let state = self.state_of(ev.vma);
                    self.emit(out, ev, held_put_finding(state, ev.ts_ns, from, to));
                } else if self.locked_puts.len() < MAX_PENDING_WAKES {
                    self.locked_puts.insert(ev.tid(), *ev);
                }
            }
        }
    }

    /// A put that read the flag set and the VMA write-locked, its reads between its
    /// time and `bound` (its task's next event). If both times fall inside a task's
    /// `__vma_start_write` call on the VMA, no detach could have been waiting (the writer
    /// held the mmap lock): the flag was that writer's, past its wait (it had stored
    /// `vm_lock_seq`), with this reader still holding its reference.
    fn locked_put(&mut self, put: &Event, bound: u64, out: &mut Vec<Anomaly>) {
        let ts = put.ts_ns;
        if let Some(&(_, from, to)) = self
            .recent_write_calls
            .iter()
            .find(|&&(v, from, to)| v == put.vma && from < ts && bound < to)
        {
            let state = self.state_of(put.vma);
            self.emit(out, put, locked_put_finding(state, from, to));
            return;
        }
        if let Some((from, to)) = self.hold_around(put) {
            let state = self.state_of(put.vma);
            self.emit(out, put, held_put_finding(state, ts, from, to));
            return;
        }
        let Some(t) = self.vmas.get_mut(&put.vma) else {
            return;
        };
        if t.born_ts > ts || t.flag_stuck {
            return;
        }
        let puts = &mut t.rare().locked_puts;
        if puts.len() == MAX_SUSPECTS {
            puts.remove(0);
        }
        puts.push((*put, bound));
    }

    /// The mm's write-lock holder unlocked it (`ev`): each VMA it write-locked in this
    /// cycle and did not detach becomes a closed hold, judged once the loss counters
    /// confirm it. An unlock by another task closes the holds unjudged (the holder's
    /// detaches may not have been delivered yet).
    fn close_holds(&mut self, ev: &Event) {
        let Some(cycle) = self.holds.as_mut().and_then(|h| h.remove(&ev.mm)) else {
            return;
        };
        if cycle.tid != ev.tid() {
            return;
        }
        let to = cycle.last;
        for h in cycle.holds {
            if !h.detached && h.from < to && self.unconfirmed_holds.len() < MAX_PENDING_WAKES {
                self.unconfirmed_holds.push((h.vma, h.from, to));
            }
        }
    }

    /// A confirmed hold of `vma` from `from` to `to`: report the puts waiting inside it,
    /// and remember it for the puts delivered later.
    fn judge_hold(&mut self, vma: u64, from: u64, to: u64, out: &mut Vec<Anomaly>) {
        if self.recent_holds.len() == RECENT_RETURNS {
            self.recent_holds.pop_front();
        }
        self.recent_holds.push_back((vma, from, to));
        let inside = |p: &Event| p.vma == vma && from < p.ts_ns && p.ts_ns < to;
        let mut found: Vec<Event> = Vec::new();
        // Those still waiting for their task's next event, then those waiting for a call.
        self.locked_puts.retain(|_, p| {
            let hit = inside(p);
            if hit {
                found.push(*p);
            }
            !hit
        });
        found.extend(self.take_waiting_puts(vma, |p, _| inside(p)));
        for p in found {
            let state = self.state_of(vma);
            self.emit(out, &p, held_put_finding(state, p.ts_ns, from, to));
        }
    }

    /// The puts kept on `vma`'s record (bounded by their task's next event) that `hit`
    /// picks, taken off the record.
    fn take_waiting_puts(&mut self, vma: u64, hit: impl Fn(&Event, u64) -> bool) -> Vec<Event> {
        let Some(t) = self.vmas.get_mut(&vma) else {
            return Vec::new();
        };
        let Some(r) = &mut t.rare else {
            return Vec::new();
        };
        let mut found = Vec::new();
        r.locked_puts.retain(|&(p, bound)| {
            let h = hit(&p, bound);
            if h {
                found.push(p);
            }
            !h
        });
        t.tidy();
        found
    }

    /// A writer event of `ev`'s task: if it holds its mm's write lock in a cycle, the
    /// lock was still held at `ev`'s time.
    fn holder_went_on(&mut self, ev: &Event) {
        if let Some(c) = self.holds.as_mut().and_then(|h| h.get_mut(&ev.mm))
            && c.tid == ev.tid()
        {
            c.last = c.last.max(ev.ts_ns);
        }
    }

    /// A closed hold of `put`'s VMA around its time, if one is remembered.
    fn hold_around(&self, put: &Event) -> Option<(u64, u64)> {
        self.recent_holds
            .iter()
            .find(|&&(v, from, to)| v == put.vma && from < put.ts_ns && put.ts_ns < to)
            .map(|&(_, from, to)| (from, to))
    }

    /// A `__vma_start_write` call on `ev`'s VMA from `from` to `ev`'s time: judge the puts
    /// waiting for it, and remember it for the puts delivered later.
    fn write_call_ended(&mut self, ev: &Event, from: u64, out: &mut Vec<Anomaly>) {
        let to = ev.ts_ns;
        if self.recent_write_calls.len() == RECENT_RETURNS {
            self.recent_write_calls.pop_front();
        }
        self.recent_write_calls.push_back((ev.vma, from, to));
        let found = self.take_waiting_puts(ev.vma, |p, bound| from < p.ts_ns && bound < to);
        for p in found {
            let state = self.state_of(ev.vma);
            self.emit(out, &p, locked_put_finding(state, from, to));
        }
    }

    /// A reader event with the flag set in its sample: a violation inside a closed
    /// exclusion window, else kept until its window is known.
    fn window_check(&mut self, ev: &Event, out: &mut Vec<Anomaly>) {
        let ts = ev.ts_ns;
        // A VMA first seen through this reader is tracked from here: its excluder's
        // events may follow (flagged samples are rare, so this costs little memory).
        let Some((t, _)) = self.track(ev, Sample::of(ev)) else {
            return;
        };
        if t.born_ts > ts || t.flag_stuck {
            return;
        }
        if let Some((from, to)) = t.windows.containing(ts) {
            let f = reader_excluded_finding(t.describe(), from, to);
            self.emit(out, ev, f);
            return;
        }
        // No exclusion known yet is no proof of innocence: the excluder's events may
        // reach us after this reader's (another CPU's ring slot). A flagged sample means
        // some exclusion was in progress; its window decides once it closes.
        let suspects = &mut t.rare().suspects;
        if suspects.len() == MAX_SUSPECTS {
            suspects.remove(0);
        }
        suspects.push(*ev);
    }

    fn on_mm_write_unlock(&mut self, ev: &Event) {
        self.close_holds(ev);
        let Some(locked) = self.mms.remove(&ev.mm) else {
            return;
        };
        for vma in locked {
            if let Some(t) = self.vmas.get_mut(&vma)
                && t.mm == ev.mm
                && t.write_locked
            {
                t.write_locked = false;
                if t.phase == Phase::WriteLocked {
                    set_phase(&mut self.counts, t, Phase::Attached);
                }
            }
        }
    }

    fn on_vma_alloc(&mut self, ev: &Event) {
        if ev.vma == 0 {
            return;
        }
        // A new life: SLAB_TYPESAFE_BY_RCU reuses objects, nothing carries over.
        let fresh = VmaTrack::new(ev.mm, Phase::Detached, ev.ts_ns, self.observed);
        self.counts[Phase::Detached.index()] += 1;
        if let Some(t) = self.vmas.get_mut(&ev.vma) {
            self.counts[t.phase.index()] -= 1;
            *t = fresh;
        } else {
            self.make_room();
            self.vmas.insert(ev.vma, fresh);
        }
    }

    fn on_vma_free(&mut self, ev: &Event, sample: Option<Sample>, out: &mut Vec<Anomaly>) {
        if let Some(s) = sample
            && rules::FREE_UNREFERENCED.broken_by(s)
            && !self.stuck(ev.vma)
        {
            let state = self.state_of(ev.vma);
            self.emit(
                out,
                ev,
                Finding {
                    rule: &rules::FREE_UNREFERENCED,
                    state,
                    observed: format!("vm_refcnt = {}", refcnt::describe(s.r)),
                },
            );
        }
        if self.vmas.get(&ev.vma).is_none_or(|t| t.born_ts <= ev.ts_ns) {
            self.forget(ev.vma);
        }
    }

    // ----- shared checks ----------------------------------------------------------------

    /// At the start of a write-lock, exclusion or detach the caller holds the mmap write
    /// lock, so no other task can be excluding this VMA: the flag must be clear.
    fn check_no_exclusion_yet(
        &mut self,
        ev: &Event,
        sample: Option<Sample>,
        out: &mut Vec<Anomaly>,
    ) {
        let Some(s) = sample else { return };
        if rules::ONE_EXCLUDER.broken_by(s) && !self.stuck(ev.vma) {
            let state = self.state_of(ev.vma);
            self.emit(
                out,
                ev,
                Finding {
                    rule: &rules::ONE_EXCLUDER,
                    state,
                    observed: format!("vm_refcnt = {}", refcnt::describe(s.r)),
                },
            );
        }
    }

    fn report_flag_stuck(
        &mut self,
        ev: &Event,
        s: Sample,
        rule: &'static Rule,
        out: &mut Vec<Anomaly>,
    ) {
        let state = self.state_of(ev.vma);
        self.emit(
            out,
            ev,
            Finding {
                rule,
                state,
                observed: format!("vm_refcnt = {}", refcnt::describe(s.r)),
            },
        );
        if let Some(t) = self.vmas.get_mut(&ev.vma) {
            t.flag_stuck = true;
        }
    }

    /// Settle an owed wake-up: the task's next event must be its `rcuwait_wake_up`.
    fn settle_wake(&mut self, ev: &Event, kind: EventKind) {
        let Some(p) = self.pending_wakes.remove(&ev.tid()) else {
            return;
        };
        if kind == EventKind::WriterWake {
            return;
        }
        // The excluder returned in between: the wake-up was not streamed. Otherwise the
        // excluder's next return decides (it may be delivered later).
        if self.returned_within(p.release.vma, p.release.ts_ns, ev.ts_ns) {
            return;
        }
        if self.unsettled.len() < MAX_PENDING_WAKES {
            self.unsettled.push((p, *ev));
        }
    }

    /// `next`: the task's next event, which came instead of `rcuwait_wake_up` (`None`
    /// at the end of the stream).
    fn report_lost_wakeup(
        &self,
        r: &Event,
        next: Option<(&Event, EventKind)>,
        out: &mut Vec<Anomaly>,
    ) {
        let state = self.state_of(r.vma);
        let mut evidence = self.recent.of_vma(r.vma, r.mm);
        if let Some((ev, _)) = next
            && evidence.last() != Some(ev)
        {
            evidence.push(*ev);
        }
        if evidence.is_empty() {
            evidence.push(*r);
        }
        let observed = match next {
            Some((_, kind)) => format!(
                "event {} not expected in state wake-owed: next event of tid {} without \
                 rcuwait_wake_up",
                kind.key(),
                r.tid()
            ),
            None => format!("the stream ended without tid {}'s rcuwait_wake_up", r.tid()),
        };
        let rule = if next.is_some() {
            &rules::PUT_WAKES_EXCLUDER
        } else {
            &rules::OWED_WAKE_BY_THE_END
        };
        self.push(
            out,
            rule,
            *r,
            state,
            format!(
                "{observed} (its put left vm_refcnt = {})",
                refcnt::describe(r.refcnt.wrapping_sub(1))
            ),
            evidence,
        );
    }

    fn report_suspects(
        &mut self,
        end: &Event,
        suspects: Vec<(Event, u64, u64)>,
        out: &mut Vec<Anomaly>,
    ) {
        for (ev, from, to) in suspects {
            let state = format!("excluding, readers excluded by tid {}", end.tid());
            let f = reader_excluded_finding(state, from, to);
            self.emit(out, &ev, f);
        }
    }

    // ----- bookkeeping -------------------------------------------------------------------

    fn emit(&self, out: &mut Vec<Anomaly>, ev: &Event, f: Finding) {
        if self.is_off(f.rule) {
            return;
        }
        let mm = self.vmas.get(&ev.vma).map_or(ev.mm, |t| t.mm);
        let mut evidence = self.recent.of_vma_until(ev.vma, mm, Some(ev));
        if evidence.last() != Some(ev) {
            evidence.push(*ev);
        }
        let label = ev.kind().map_or("unknown", EventKind::key);
        out.push(Anomaly {
            kind: f.rule.kind,
            severity: f.rule.kind.severity(),
            rule: f.rule.name,
            event: *ev,
            observed: format!(
                "event {label} ({}) not expected in state {}: {}",
                ev.probe().kernel_name(),
                f.state,
                f.observed
            ),
            state: f.state,
            expected: f.rule.expected.to_string(),
            evidence,
        });
    }

    /// Report a violation of `rule` found outside a per-event handler (stream end,
    /// same-task settlement), with its own evidence.
    fn push(
        &self,
        out: &mut Vec<Anomaly>,
        rule: &'static Rule,
        event: Event,
        state: String,
        observed: String,
        evidence: Vec<Event>,
    ) {
        if self.is_off(rule) {
            return;
        }
        out.push(Anomaly {
            kind: rule.kind,
            severity: rule.kind.severity(),
            rule: rule.name,
            event,
            state,
            expected: rule.expected.to_string(),
            observed,
            evidence,
        });
    }

    fn is_off(&self, rule: &Rule) -> bool {
        self.off == Some(rule.name)
    }

    fn state_of(&self, vma: u64) -> String {
        self.vmas
            .get(&vma)
            .map_or_else(|| Phase::Unknown.key().to_string(), VmaTrack::describe)
    }

    fn stuck(&self, vma: u64) -> bool {
        self.vmas.get(&vma).is_some_and(|t| t.flag_stuck)
    }

    /// The record of the event's VMA, created from the sample if new.
    fn track(
        &mut self,
        ev: &Event,
        sample: Option<Sample>,
    ) -> Option<(&mut VmaTrack, &mut [u64; Phase::ALL.len()])> {
        if ev.vma == 0 {
            return None;
        }
        if self.vmas.len() >= self.max_vmas && !self.vmas.contains_key(&ev.vma) {
            self.make_room();
        }
        let counts = &mut self.counts;
        let observed = self.observed;
        let detached = &mut self.detached_windows;
        // One probe: the entry API finds or inserts.
        let t = self.vmas.entry(ev.vma).or_insert_with(|| {
            let phase = sample.map_or(Phase::Unknown, |s| Phase::of_refcnt(s.r));
            // Tracing that starts mid-flight: a flag seen without its start-exclude gives
            // no excluder to check against, so the phase stays unknown.
            let phase = if phase == Phase::Excluding {
                Phase::Unknown
            } else {
                phase
            };
            counts[phase.index()] += 1;
            let mut t = VmaTrack::new(ev.mm, phase, 0, observed);
            // A late event of a VMA detached since: its windows still judge it.
            if !detached.is_empty()
                && let Some(w) = detached.remove(&ev.vma)
            {
                t.windows = w;
            }
            t
        });
        t.last_touch = observed;
        if ev.mm != 0 {
            t.mm = ev.mm;
        }
        Some((t, &mut self.counts))
    }

    fn forget(&mut self, vma: u64) {
        if let Some(t) = self.vmas.remove(&vma) {
            self.counts[t.phase.index()] -= 1;
        }
    }

    /// Keep memory bounded: at the cap, evict the least recently touched quarter.
    fn make_room(&mut self) {
        if self.vmas.len() < self.max_vmas {
            return;
        }
        let mut sample: Vec<u64> = self.vmas.values().take(256).map(|t| t.last_touch).collect();
        sample.sort_unstable();
        let cutoff = sample.get(sample.len() / 4).copied().unwrap_or(u64::MAX);
        let before = self.vmas.len();
        let counts = &mut self.counts;
        self.vmas.retain(|_, t| {
            let keep = t.last_touch > cutoff;
            if !keep {
                counts[t.phase.index()] -= 1;
            }
            keep
        });
        self.evicted += (before - self.vmas.len()) as u64;
    }
}

/// A writer-path call in flight: its task and function family (entry and return kinds
/// map to the same key).
fn call_key(tid: u32, kind: EventKind) -> u64 {
    let family: u64 = match kind {
        EventKind::WriteLockEnter | EventKind::WriteLockExit => 0,
        EventKind::ExcludeEnter | EventKind::ExcludeExit => 1,
        _ => 2,
    };
    (u64::from(tid) << 2) | family
}

/// Whether write-lock holds judge puts ([`Hold`]): every detach is seen (so a hold
/// without one had none), and there is no start-exclude event to judge readers by.
fn judges_holds(g: Generation) -> bool {
    let p = g.profile();
    p.every_detach_hookable && p.start_exclude.is_none()
}

/// `IS_ERR_VALUE`: the top 4095 values are errnos, not pointers.
const fn is_err_value(ret: i64) -> bool {
    ret < 0 && ret >= -4095
}

fn set_phase(counts: &mut [u64; Phase::ALL.len()], t: &mut VmaTrack, phase: Phase) {
    if t.phase != phase {
        counts[t.phase.index()] -= 1;
        counts[phase.index()] += 1;
        t.phase = phase;
    }
}

/// The excluding task `tid` ended its exclusion at `ts`: close the window and return the
/// suspect readers that fell inside it. The others stay (up to [`MAX_SUSPECTS`]): one
/// before this window may sit inside another task's whose end is delivered later.
fn close_exclusion(t: &mut VmaTrack, tid: u32, ts: u64) -> Vec<(Event, u64, u64)> {
    let Some(x) = t.excl_of(tid) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let window = x.exclusive_ts.map(|from| (from, ts));
    if let Some(r) = &mut t.rare {
        if r.excl.is_some_and(|c| c.tid == tid) {
            r.excl = r.earlier.take();
        } else {
            r.earlier = None;
        }
        r.suspects.retain(|s| match window {
            Some((from, to)) if from < s.ts_ns && s.ts_ns < to => {
                found.push((*s, from, to));
                false
            }
            _ => true,
        });
    }
    if let Some(w) = window {
        t.windows.close(w);
    }
    t.tidy();
    found
}

fn locked_put_finding(state: String, from: u64, to: u64) -> Finding {
    Finding {
        rule: &rules::READERS_DRAINED_BEFORE_STORE,
        state,
        observed: format!(
            "a reader's put read the exclusion flag set and vm_lock_seq = mm_lock_seq, between \
             its time and its task's next event, inside a __vma_start_write call (ts {from} \
             to {to})"
        ),
    }
}

fn held_put_finding(state: String, ts: u64, from: u64, to: u64) -> Finding {
    Finding {
        rule: &rules::READERS_DRAINED_BEFORE_STORE,
        state,
        observed: format!(
            "a reader's put (ts {ts}) read the exclusion flag set and vm_lock_seq = \
             mm_lock_seq while one writer held the mmap write lock, from its \
             __vma_start_write on this VMA (ts {from}) to its last event before its \
             unlock (ts {to}), without detaching the VMA"
        ),
    }
}

fn reader_excluded_finding(state: String, from: u64, to: u64) -> Finding {
    Finding {
        rule: &rules::READER_OUTSIDE_EXCLUSION,
        state,
        observed: format!(
            "a reader held the VMA with the exclusion flag set inside the window from \
             readers excluded (ts {from}) to the end of the exclusion (ts {to})"
        ),
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;

    /// ≤ 160 bytes per tracked VMA (docs/performance.md) rests on this: the record of an
    /// idle VMA is one cache line, the rest is the map's own.
    #[test]
    fn a_vma_record_is_one_cache_line() {
        assert!(
            std::mem::size_of::<VmaTrack>() <= 64,
            "{}",
            std::mem::size_of::<VmaTrack>()
        );
    }

    /// The two latest windows in time are kept, whatever order their ends come in.
    #[test]
    fn windows_keep_the_two_latest_in_time() {
        let mut w = Windows::default();
        w.close((143, 193));
        w.close((62, 82));
        w.close((253, 263));
        assert_eq!(w.containing(161), Some((143, 193)));
        assert_eq!(w.containing(258), Some((253, 263)));
        assert_eq!(w.containing(70), None, "the oldest in time went");
        w.close((100, 120));
        assert_eq!(w.containing(110), None, "older than both: not kept");
        // A window longer than u32::MAX ns is cut short: it can only miss a reader.
        let long = 2 * u64::from(u32::MAX);
        w.close((1_000, 1_000 + long));
        assert!(w.containing(2_000).is_some());
        assert_eq!(w.containing(long), None);
    }
}
