//! Run statistics: wait-time histograms, slowest waits, per-process and per-VMA
//! aggregates, reader outcomes, event rates and losses.
//!
//! [`Stats`] is a pipeline [`Sink`]: the per-event work is a few array increments and at
//! most two hash-table updates on the (rare) writer/detach/sampled-reader events, with no
//! allocation. Memory is bounded (tables capped, evictions counted). The dashboard reads it
//! directly; the JSON summary reads [`Stats::percentiles`] and [`Stats::snapshot`].

pub mod aggregates;
pub mod histogram;
pub mod rates;
pub mod slowest;

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;
use vmatrace_common::event::{ProbeId, flags};
use vmatrace_common::model::{Generation, generation::EINTR};
use vmatrace_common::{Counter, Event, EventKind};

pub use aggregates::{Aggregate, AggregateRow, BoundedTable, SortKey, ranking};
pub use histogram::{HistogramSnapshot, Log2Histogram, Percentiles};
pub use rates::Rates;
pub use slowest::{SlowContext, SlowestWaits, StackTable, WaitSample, WaitSampleRow};

use crate::kernel::plan::{LogicalEvent, Observability, ProbePlan};
use crate::pipeline::{CounterSnapshot, Sink, Totals, totals::LOSS_COUNTERS};
use crate::validate::Validator;

/// Table caps: enough for every process of a large host, and the hottest VMAs.
pub const MAX_PROCESSES: usize = 4096;
pub const MAX_VMAS: usize = 16384;
/// "Recent" for the slowest-waits list.
pub const SLOWEST_WINDOW_NS: u64 = 60_000_000_000;
/// Rows in the serialised rankings.
pub const SNAPSHOT_TOP: usize = 20;

/// Which event carries the readers-exclusion wait in this session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitSource {
    /// Start-exclude's return is hooked (`__vma_start_exclude_readers` on 7.x,
    /// `__vma_enter_locked` on 6.19 with kprobes on notrace): `wait_ns` = time waiting for
    /// readers.
    ExcludeExit,
    /// Start-exclude is not hooked (inlined on 6.15–6.18, notrace on Debian's 6.19): the
    /// paired return of `__vma_start_write` (the whole write-lock slow path) plus the
    /// paired returns of `vma_mark_detached` that found readers are the closest waits.
    WriteLockExit,
}

impl WaitSource {
    /// The source a probe plan implies: start-exclude's return must be hooked directly for
    /// `ExcludeExit` events to exist. `None` when the plan does not say (a plan without
    /// coverage, e.g. hand-made).
    pub fn for_plan(plan: &ProbePlan) -> Option<Self> {
        match plan.status(LogicalEvent::StartExcludeReturn)? {
            Observability::Direct { .. } => Some(WaitSource::ExcludeExit),
            Observability::Proxy { .. } | Observability::Unobservable { .. } => {
                Some(WaitSource::WriteLockExit)
            }
        }
    }

    pub const fn kind(self) -> EventKind {
        match self {
            WaitSource::ExcludeExit => EventKind::ExcludeExit,
            WaitSource::WriteLockExit => EventKind::WriteLockExit,
        }
    }
}

/// How the wait source was decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SourceChoice {
    /// From the probe plan (or a generation where start-exclude cannot be hooked): fixed.
    Fixed,
    /// No plan (replay of an old trace, simulation) on a kernel where start-exclude may be
    /// hooked: `WriteLockExit` until the first `ExcludeExit` arrives, then `ExcludeExit`.
    UntilExcludeExit,
}

/// How one start-exclude call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ExcludeOutcome {
    /// Readers excluded (the caller now holds F).
    Excluded,
    /// The VMA was already detached: nothing was excluded, nobody waited.
    FoundDetached,
    /// The killable wait was interrupted by a fatal signal.
    Interrupted,
}

fn exclude_outcome(ev: &Event, generation: Generation) -> ExcludeOutcome {
    if ev.returned() == Some(EINTR) {
        return ExcludeOutcome::Interrupted;
    }
    let profile = generation.profile();
    // 7.x: ret 0 either way; `ves->exclusive` / `ves->detached` say which.
    if profile.exclude_state_struct
        && let Some(ves) = ev.ves()
    {
        if !ves.exclusive && ves.detached {
            return ExcludeOutcome::FoundDetached;
        }
        return ExcludeOutcome::Excluded;
    }
    // 6.19 `__vma_enter_locked`: 1 = excluded, 0 = detached.
    if profile.exclude_returns_excluded && ev.returned() == Some(0) {
        return ExcludeOutcome::FoundDetached;
    }
    ExcludeOutcome::Excluded
}

/// Reader outcomes, from the kernel's per-CPU counters (since start or the last reset).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReaderOutcomes {
    pub acquire_ok: u64,
    pub acquire_fail: u64,
    /// Failures while the exclusion flag was set (a writer or detacher excluding readers).
    pub fail_excluded: u64,
    pub sampled: u64,
    pub release: u64,
    pub next_vma: u64,
    pub writer_wake: u64,
    pub filtered: u64,
}

/// A serialisable picture of the statistics (for the JSON summary and tests).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatsSnapshot {
    pub generation: &'static str,
    pub wait_source: WaitSource,
    /// Readers-exclusion waits (see `wait_source`).
    pub exclusion_wait: HistogramSnapshot,
    /// Whole `__vma_start_write` slow-path waits (paired returns).
    pub write_lock_wait: HistogramSnapshot,
    /// Exclusions for a detach (a subset of the exclusion waits).
    pub detach_exclusions: u64,
    /// The waits of those detach exclusions (paired returns; a subset of
    /// `exclusion_wait`'s samples).
    pub detach_wait: HistogramSnapshot,
    /// Start-exclude calls that found the VMA already detached (not in the histogram).
    pub exclusions_found_detached: u64,
    /// Killable waits interrupted by a fatal signal (-EINTR).
    pub interrupted: u64,
    /// Detaches that had to wait for readers (slow path).
    pub slow_detaches: u64,
    /// Sampled reader acquisitions that failed.
    pub sampled_reader_failures: u64,
    pub slowest: Vec<WaitSampleRow>,
    pub top_processes: Vec<AggregateRow>,
    pub top_vmas: Vec<AggregateRow>,
    pub processes_tracked: usize,
    pub processes_evicted: u64,
    pub vmas_tracked: usize,
    pub vmas_evicted: u64,
    pub reader: ReaderOutcomes,
    /// Loss counters (kernel) plus `undecodable` (userspace), since start or reset.
    pub losses: BTreeMap<&'static str, u64>,
}

/// Threads with a `SlowWait` not yet matched to its return.
const MAX_PENDING_SLOW: usize = 4096;

#[derive(Clone, Debug)]
pub struct Stats {
    generation: Generation,
    wait_source: WaitSource,
    choice: SourceChoice,
    exclusion: Log2Histogram,
    write_lock: Log2Histogram,
    detach: Log2Histogram,
    detach_exclusions: u64,
    found_detached: u64,
    interrupted: u64,
    slow_detaches: u64,
    reader_failures: u64,
    slowest: SlowestWaits,
    /// The last `SlowWait` per thread, until the return it precedes (same time).
    pending_slow: std::collections::HashMap<u32, (u64, SlowContext)>,
    stacks: StackTable,
    processes: BoundedTable<u32>,
    /// Keyed by (mm, vma) kernel addresses; they never leave this table.
    vmas: BoundedTable<(u64, u64)>,
    rates: Rates,
    newest_ts_ns: u64,
    /// Latest kernel counters and the values at start/reset (shown as differences).
    counters: CounterSnapshot,
    counters_base: CounterSnapshot,
    undecodable: u64,
    undecodable_base: u64,
    /// Counter values at the last rate roll (to turn counters into per-interval counts).
    counters_at_roll: CounterSnapshot,
    last_roll: Option<Instant>,
}

impl Stats {
    /// Statistics without a probe plan: the wait source follows the events (see
    /// [`WaitSource`]).
    pub fn new(generation: Generation) -> Self {
        Self::with_caps(generation, MAX_PROCESSES, MAX_VMAS)
    }

    /// Statistics for a session traced with `plan` (`None`, or a plan without coverage:
    /// as [`Stats::new`]).
    pub fn with_plan(generation: Generation, plan: Option<&ProbePlan>) -> Self {
        let mut s = Self::new(generation);
        if let Some(source) = plan.and_then(WaitSource::for_plan) {
            s.wait_source = source;
            s.choice = SourceChoice::Fixed;
        }
        s
    }

    pub fn with_caps(generation: Generation, max_processes: usize, max_vmas: usize) -> Self {
        // 6.15–6.18 never have a start-exclude function to hook.
        let choice = if generation.profile().start_exclude.is_some() {
            SourceChoice::UntilExcludeExit
        } else {
            SourceChoice::Fixed
        };
        Self {
            generation,
            wait_source: WaitSource::WriteLockExit,
            choice,
            exclusion: Log2Histogram::default(),
            write_lock: Log2Histogram::default(),
            detach: Log2Histogram::default(),
            detach_exclusions: 0,
            found_detached: 0,
            interrupted: 0,
            slow_detaches: 0,
            reader_failures: 0,
            slowest: SlowestWaits::new(SLOWEST_WINDOW_NS),
            pending_slow: std::collections::HashMap::new(),
            stacks: StackTable::default(),
            processes: BoundedTable::new(max_processes),
            vmas: BoundedTable::new(max_vmas),
            rates: Rates::default(),
            newest_ts_ns: 0,
            counters: CounterSnapshot::default(),
            counters_base: CounterSnapshot::default(),
            undecodable: 0,
            undecodable_base: 0,
            counters_at_roll: CounterSnapshot::default(),
            last_roll: None,
        }
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub fn wait_source(&self) -> WaitSource {
        self.wait_source
    }

    /// Account one event.
    #[inline]
    pub fn observe(&mut self, ev: &Event) {
        let Some(kind) = ev.kind() else { return };
        self.rates.add(rates::series_of(kind), 1);
        self.newest_ts_ns = self.newest_ts_ns.max(ev.ts_ns);
        match kind {
            EventKind::ExcludeExit | EventKind::WriteLockExit => self.on_wait_exit(ev, kind),
            EventKind::SlowWait => {
                // Threads inside a write lock at once are few; a flood of unmatched
                // ones (a filtered return) must not grow this.
                if self.pending_slow.len() >= MAX_PENDING_SLOW {
                    self.pending_slow.clear();
                }
                let c = SlowContext {
                    syscall: ev.arg,
                    stack: ev.ret,
                };
                self.pending_slow.insert(ev.tid(), (ev.ts_ns, c));
            }
            EventKind::DetachExit => self.on_detach_exit(ev),
            EventKind::DetachEnter if is_slow_detach(ev) => {
                self.slow_detaches += 1;
                self.process_row(ev).slow_detaches += 1;
                if let Some(v) = self.vma_row(ev) {
                    v.slow_detaches += 1;
                }
            }
            EventKind::ReaderAcquire if ev.returned() == Some(0) => {
                self.reader_failures += 1;
                self.process_row(ev).reader_failures += 1;
                if let Some(v) = self.vma_row(ev) {
                    v.reader_failures += 1;
                }
            }
            _ => {}
        }
    }

    fn on_wait_exit(&mut self, ev: &Event, kind: EventKind) {
        if kind == EventKind::WriteLockExit
            && let Some(wait) = ev.waited_ns()
        {
            self.write_lock.record(wait);
        }
        if kind == EventKind::ExcludeExit && self.choice == SourceChoice::UntilExcludeExit {
            self.switch_to_exclude_exit();
        }
        if kind != self.wait_source.kind() {
            return;
        }
        let outcome = if kind == EventKind::ExcludeExit {
            exclude_outcome(ev, self.generation)
        } else if ev.returned() == Some(EINTR) {
            ExcludeOutcome::Interrupted
        } else {
            ExcludeOutcome::Excluded
        };
        if outcome == ExcludeOutcome::FoundDetached {
            self.found_detached += 1;
            return;
        }
        let interrupted = outcome == ExcludeOutcome::Interrupted;
        let detaching = kind == EventKind::ExcludeExit && ev.ves().is_some_and(|v| v.detaching);
        self.record_exclusion(ev, interrupted, detaching);
    }

    /// Start-exclude turned out to be hooked: the write-lock waits recorded as exclusion
    /// waits so far would double count the exclusions, so they are forgotten (once per
    /// session, and only the few before the first `ExcludeExit`).
    #[cold]
    fn switch_to_exclude_exit(&mut self) {
        self.wait_source = WaitSource::ExcludeExit;
        self.choice = SourceChoice::Fixed;
        self.exclusion = Log2Histogram::default();
        self.detach = Log2Histogram::default();
        self.slowest = SlowestWaits::new(SLOWEST_WINDOW_NS);
        self.detach_exclusions = 0;
        self.interrupted = 0;
        let forget = |a: &mut Aggregate| {
            a.exclusions = 0;
            a.total_wait_ns = 0;
            a.max_wait_ns = 0;
            a.interrupted = 0;
        };
        self.processes.values_mut().for_each(forget);
        self.vmas.values_mut().for_each(forget);
    }

    /// Start-exclude not hooked: a detach that found readers waited for them inside the inlined
    /// start-exclude of `vma_mark_detached`; its paired return carries that wait.
    fn on_detach_exit(&mut self, ev: &Event) {
        if self.wait_source == WaitSource::WriteLockExit
            && ev.probe() == ProbeId::VmaMarkDetached
            && ev.entry_refcnt_read().is_some_and(|r| r > 1)
        {
            self.record_exclusion(ev, false, true);
        }
    }

    fn record_exclusion(&mut self, ev: &Event, interrupted: bool, detaching: bool) {
        self.interrupted += u64::from(interrupted);
        self.detach_exclusions += u64::from(detaching);
        // Without the entry we do not know how long it waited: count the exclusion, keep
        // the wait out of the histogram (an unmatched return is a counted kernel-side loss).
        let wait = ev.waited_ns();
        if let Some(w) = wait {
            self.exclusion.record(w);
            if detaching {
                self.detach.record(w);
            }
            let slow = match self.pending_slow.get(&ev.tid()) {
                Some(&(ts, c)) if ts == ev.ts_ns => {
                    self.pending_slow.remove(&ev.tid());
                    Some(c)
                }
                _ => None,
            };
            self.slowest.offer(WaitSample {
                ts_ns: ev.ts_ns,
                tgid: ev.tgid(),
                tid: ev.tid(),
                comm: ev.comm,
                vm_start: ev.vm_start,
                vm_end: ev.vm_end,
                wait_ns: w,
                detaching,
                interrupted,
                slow,
            });
        }
        let w = wait.unwrap_or(0);
        let bump = |a: &mut Aggregate| {
            a.exclusions += 1;
            a.total_wait_ns = a.total_wait_ns.saturating_add(w);
            a.max_wait_ns = a.max_wait_ns.max(w);
            a.interrupted += u64::from(interrupted);
        };
        bump(self.process_row(ev));
        if let Some(v) = self.vma_row(ev) {
            bump(v);
        }
    }

    #[inline]
    fn process_row(&mut self, ev: &Event) -> &mut Aggregate {
        let row = self.processes.row(ev.tgid());
        row.tgid = ev.tgid();
        if ev.tid() == ev.tgid() || row.comm[0] == 0 {
            row.comm = ev.comm;
        }
        row
    }

    #[inline]
    fn vma_row(&mut self, ev: &Event) -> Option<&mut Aggregate> {
        if !ev.has(flags::VMA_FIELDS) || ev.vma == 0 {
            return None;
        }
        let row = self.vmas.row((ev.mm, ev.vma));
        row.tgid = ev.tgid();
        row.comm = ev.comm;
        row.vm_start = ev.vm_start;
        row.vm_end = ev.vm_end;
        Some(row)
    }

    /// Take a new cumulative kernel counter snapshot.
    pub fn set_counters(&mut self, c: &CounterSnapshot) {
        // Per-process fallbacks are cumulative in the kernel: since start or reset.
        let base = &self.counters_base.fallbacks;
        for f in &c.fallbacks {
            let since = base
                .binary_search_by_key(&f.tgid, |b| b.tgid)
                .map_or(0, |i| base[i].count);
            let n = f.count.saturating_sub(since);
            if n == 0 {
                continue;
            }
            let row = self.processes.row(f.tgid);
            row.tgid = f.tgid;
            if row.comm[0] == 0 {
                row.comm = f.comm;
            }
            row.writer_fallbacks = n;
        }
        self.counters = c.clone();
    }

    pub fn set_undecodable(&mut self, n: u64) {
        self.undecodable = n;
    }

    /// Close the current rate interval if at least a second passed (wall clock), and
    /// expire old slowest waits. Called from `flush`.
    pub fn tick(&mut self, now: Instant) {
        match self.last_roll {
            None => self.last_roll = Some(now),
            Some(t) => {
                let elapsed = now.saturating_duration_since(t);
                if elapsed.as_millis() >= 1000 {
                    self.roll_rates(u32::try_from(elapsed.as_millis()).unwrap_or(u32::MAX));
                    self.last_roll = Some(now);
                }
            }
        }
        self.slowest.expire(self.newest_ts_ns);
    }

    /// Close the current rate interval, `elapsed_ms` long (deterministic form of `tick`).
    pub fn roll_rates(&mut self, elapsed_ms: u32) {
        let ok = self.counters.get(Counter::ReaderAcquireOk);
        let fail = self.counters.get(Counter::ReaderAcquireFail);
        let ok0 = self.counters_at_roll.get(Counter::ReaderAcquireOk);
        let fail0 = self.counters_at_roll.get(Counter::ReaderAcquireFail);
        self.rates
            .add(rates::SERIES_READER_OK, ok.saturating_sub(ok0));
        self.rates
            .add(rates::SERIES_READER_FAIL, fail.saturating_sub(fail0));
        self.counters_at_roll = self.counters.clone();
        self.rates.roll(elapsed_ms);
    }

    /// Forget everything measured so far; counters read as differences from now on.
    pub fn reset(&mut self) {
        let counters = std::mem::take(&mut self.counters);
        let undecodable = self.undecodable;
        let last_roll = self.last_roll;
        let (wait_source, choice) = (self.wait_source, self.choice);
        *self = Self::with_caps(self.generation, self.processes.cap(), self.vmas.cap());
        self.wait_source = wait_source;
        self.choice = choice;
        self.counters_base = counters.clone();
        self.counters_at_roll = counters.clone();
        self.counters = counters;
        self.undecodable = undecodable;
        self.undecodable_base = undecodable;
        self.last_roll = last_roll;
    }

    /// A counter since start or the last reset.
    pub fn counter(&self, c: Counter) -> u64 {
        self.counters
            .get(c)
            .saturating_sub(self.counters_base.get(c))
    }

    pub fn undecodable(&self) -> u64 {
        self.undecodable.saturating_sub(self.undecodable_base)
    }

    pub fn reader_outcomes(&self) -> ReaderOutcomes {
        ReaderOutcomes {
            acquire_ok: self.counter(Counter::ReaderAcquireOk),
            acquire_fail: self.counter(Counter::ReaderAcquireFail),
            fail_excluded: self.counter(Counter::ReaderFailExcluded),
            sampled: self.counter(Counter::ReaderSampled),
            release: self.counter(Counter::ReaderRelease),
            next_vma: self.counter(Counter::ReaderNextVma),
            writer_wake: self.counter(Counter::WriterWake),
            filtered: self.counter(Counter::Filtered),
        }
    }

    /// Loss counters by key (kernel ones, then `undecodable`).
    pub fn losses(&self) -> BTreeMap<&'static str, u64> {
        let mut m: BTreeMap<&'static str, u64> = LOSS_COUNTERS
            .iter()
            .map(|c| (c.key(), self.counter(*c)))
            .collect();
        m.insert("undecodable", self.undecodable());
        m
    }

    pub fn total_losses(&self) -> u64 {
        // Saturating: the counters may come from a trace holding any values.
        crate::pipeline::totals::sum(self.losses().values().copied())
    }

    /// Readers-exclusion wait percentiles (the summary's headline numbers).
    pub fn percentiles(&self) -> Percentiles {
        self.exclusion.percentiles()
    }

    pub fn exclusion_histogram(&self) -> &Log2Histogram {
        &self.exclusion
    }

    pub fn write_lock_histogram(&self) -> &Log2Histogram {
        &self.write_lock
    }

    pub fn interrupted(&self) -> u64 {
        self.interrupted
    }

    pub fn slow_detaches(&self) -> u64 {
        self.slow_detaches
    }

    pub fn detach_exclusions(&self) -> u64 {
        self.detach_exclusions
    }

    pub fn found_detached(&self) -> u64 {
        self.found_detached
    }

    pub fn sampled_reader_failures(&self) -> u64 {
        self.reader_failures
    }

    pub fn slowest(&self) -> &SlowestWaits {
        &self.slowest
    }

    /// A kernel stack that `SlowWait` events name.
    pub fn add_stack(&mut self, s: &crate::pipeline::KernelStack) {
        self.stacks.add(s);
    }

    pub fn stacks(&self) -> &StackTable {
        &self.stacks
    }

    /// One of [`Stats::slowest`]'s waits as the summary and the dashboard show it.
    pub fn wait_row(&self, w: &WaitSample) -> WaitSampleRow {
        WaitSampleRow::new(w, &self.stacks)
    }

    /// The label of a process: its comm as the per-process table knows it (the
    /// thread-group leader's when seen), else `fallback` (an event's thread comm).
    pub fn process_comm(&self, tgid: u32, fallback: &[u8; 16]) -> [u8; 16] {
        self.processes.get(&tgid).map_or(*fallback, |a| a.comm)
    }

    pub fn processes(&self) -> &BoundedTable<u32> {
        &self.processes
    }

    pub fn vmas(&self) -> &BoundedTable<(u64, u64)> {
        &self.vmas
    }

    pub fn rates(&self) -> &Rates {
        &self.rates
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            generation: self.generation.key(),
            wait_source: self.wait_source,
            exclusion_wait: self.exclusion.snapshot(),
            write_lock_wait: self.write_lock.snapshot(),
            detach_exclusions: self.detach_exclusions,
            detach_wait: self.detach.snapshot(),
            exclusions_found_detached: self.found_detached,
            interrupted: self.interrupted,
            slow_detaches: self.slow_detaches,
            sampled_reader_failures: self.reader_failures,
            slowest: self
                .slowest
                .items()
                .iter()
                .map(|w| self.wait_row(w))
                .collect(),
            top_processes: ranking(
                self.processes.values(),
                SortKey::TotalWait,
                "",
                SNAPSHOT_TOP,
            )
            .iter()
            .map(|a| AggregateRow::from_aggregate(a, false))
            .collect(),
            top_vmas: ranking(self.vmas.values(), SortKey::TotalWait, "", SNAPSHOT_TOP)
                .iter()
                .map(|a| AggregateRow::from_aggregate(a, true))
                .collect(),
            processes_tracked: self.processes.len(),
            processes_evicted: self.processes.evicted(),
            vmas_tracked: self.vmas.len(),
            vmas_evicted: self.vmas.evicted(),
            reader: self.reader_outcomes(),
            losses: self.losses(),
        }
    }
}

/// A detach that found readers still holding the VMA.
fn is_slow_detach(ev: &Event) -> bool {
    match ev.probe() {
        // 7.x: this function is only called when the fast-path put did not reach 0.
        ProbeId::VmaExcludeReadersForDetach => true,
        // 6.15–6.19: `vma_mark_detached` sees every detach; the attached reference is 1,
        // anything above it is a reader (or a spurious one) that must be waited for.
        ProbeId::VmaMarkDetached => ev.has(flags::VMA_FIELDS) && ev.refcnt > 1,
        _ => false,
    }
}

impl Sink for Stats {
    fn events(&mut self, events: &[Event]) {
        for ev in events {
            self.observe(ev);
        }
    }

    fn counters(&mut self, c: &CounterSnapshot, _totals: &Totals) {
        self.set_counters(c);
    }

    fn stack(&mut self, s: &crate::pipeline::KernelStack) {
        self.add_stack(s);
    }

    fn flush(&mut self, _validator: &Validator, totals: &Totals) {
        self.set_undecodable(totals.undecodable);
        self.tick(Instant::now());
    }
}

#[cfg(test)]
mod tests;
