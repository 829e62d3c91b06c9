//! The validator checked against the model it monitors.
//!
//! For each generation: enumerate every complete execution of small scenarios of the
//! refcount model (`vmatrace_common::model::machine`), project each one onto the events
//! the eBPF programs would stream for it (which function is probed where on that
//! generation, what each program reads and when), and deliver the events to a fresh
//! [`Validator`] in the cross-task orders the ring buffer can produce. Then:
//!
//! - on the correct model, every delivery of every execution must give no anomaly (the
//!   validator accepts every behaviour the model allows);
//! - with a [`Bug`], every execution in which the bug shows (an observable invariant of
//!   the model is violated along it) and whose events no correct execution can stream
//!   ([`reference`]) must be reported, in every delivery, with the anomaly kind
//!   documented for that bug.
//!
//! What a program reads is a sample taken while other tasks go on: its fields are read
//! one after another at some point between the probed step and the task's next step.
//! Each execution is projected with the reads at the earliest point, at the latest, and
//! spread (`vm_refcnt` first, the sequences last), and with writer-path entries streamed
//! when they happen or folded into their returns (the default). Cross-task orders: all
//! of them up to [`Budget::orders`] per projection, else that many: the timestamp order
//! and seeded random merges. Scenarios with too many executions to enumerate are
//! sampled by seeded random walks; each two-task scenario comes again with an untraced
//! reader (its steps move the count, its programs stream nothing). Every count is
//! reported.

use std::collections::{BTreeMap, HashSet};

use vmatrace_common::{
    Event, EventKind,
    event::{ProbeId, flags},
    model::{
        Generation,
        explore::{Invariant, check_step, check_stuck, check_world},
        generation::{EINTR, TASK_KILLABLE, TASK_UNINTERRUPTIBLE},
        machine::{Bug, ModelConfig as Config, Op, Pc, Role, Step, World},
    },
};

use super::{Anomaly, AnomalyKind, Validator, rules::Rule};

mod reference;

use reference::{reference, shown_by_correct, shown_with_untraced_reader, signature};

const VMA: u64 = 0xffff_8880_0bad_1000;
const MM: u64 = 0xffff_8880_0bad_2000;
const TGID: u64 = 4242;
/// Executions enumerated per scenario at most; a scenario with more is sampled.
const MAX_EXECUTIONS: usize = 50_000;

/// How much to replay.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// Delivery orders per projection: all of them when there are at most this many,
    /// else the timestamp order and seeded random ones up to this many.
    pub orders: usize,
    /// Scenarios with more than [`MAX_EXECUTIONS`] executions (two readers and a
    /// writer: hundreds of thousands) are sampled with this many seeded random walks.
    pub sampled_executions: usize,
    /// Correct executions with an untraced reader searched, per scenario, for one that
    /// streams the events of an execution the validator missed (0: no search).
    pub untraced_executions: usize,
}

impl Budget {
    /// `vmatrace model --check` (release build, a few seconds per generation).
    pub const FULL: Budget = Budget {
        orders: 24,
        sampled_executions: 4_000,
        untraced_executions: 1_500_000,
    };
    /// The unit test (debug build).
    pub const QUICK: Budget = Budget {
        orders: 2,
        sampled_executions: 100,
        untraced_executions: 0,
    };
}

/// The anomaly kinds that report each bug (docs/anomaly-kinds.md).
pub fn documented_kinds(bug: Bug) -> &'static [AnomalyKind] {
    match bug {
        // The reader's increment ignores the flag: it shows as a reader holding the VMA
        // inside an exclusion or under a write lock, or as an excluder that did not find
        // its target.
        Bug::ReaderIgnoresFlag => &[
            AnomalyKind::ReaderWhileExcluded,
            AnomalyKind::ReaderWhileWriteLocked,
            AnomalyKind::ExcludeTargetMismatch,
        ],
        Bug::PutNeverWakes | Bug::CheckBeforeRegister => &[AnomalyKind::LostWakeup],
    }
}

/// Invariants that have an observable effect. A reader's increment with the flag set
/// that is undone before the excluder finds its target (`reader_inc_while_flag_set`,
/// `woken_waiter_sees_target` alone) leaves the same events as the legal race where the
/// reader came first: no monitor can tell them apart, so such executions do not count
/// as the bug showing.
fn observable(inv: Invariant) -> bool {
    !matches!(
        inv,
        Invariant::ReaderIncWhileFlagSet | Invariant::TargetStable
    )
}

/// A scenario: the tasks' roles, and which of them are *untraced* (bit `i`: task `i`):
/// tasks whose programs stream nothing (outside `--pid`/`--comm`, or on a reader path
/// without a probe) though their steps change the VMA like any other's.
pub struct Scenario {
    pub name: String,
    pub roles: Vec<Role>,
    pub untraced: u32,
}

impl Scenario {
    fn traced(name: &str, roles: Vec<Role>) -> Self {
        Scenario {
            name: name.to_string(),
            roles,
            untraced: 0,
        }
    }

    /// The same tasks and one more reader that is not traced.
    pub fn with_untraced_reader(&self) -> Self {
        let mut roles = self.roles.clone();
        roles.push(Role::Reader);
        Scenario {
            name: format!("{} + untraced reader", self.name),
            untraced: self.untraced | 1 << self.roles.len(),
            roles,
        }
    }
}

/// The scenarios whose executions are enumerated. The model check's five tasks have far
/// too many executions to replay each; these cover every path of every role. The
/// two-task ones come again with an untraced reader: the validator must accept what a
/// correct kernel shows when it does not see every reader (their executions are
/// sampled: too many to enumerate).
pub fn scenarios(generation: Generation) -> Vec<Scenario> {
    let writer = Role::Writer {
        killable: false,
        detach: false,
    };
    let detacher = Role::Writer {
        killable: false,
        detach: true,
    };
    let mut v = vec![
        Scenario::traced("reader + writer", vec![Role::Reader, writer]),
        Scenario::traced("reader + detacher", vec![Role::Reader, detacher]),
        Scenario::traced(
            "2 readers + writer",
            vec![Role::Reader, Role::Reader, writer],
        ),
        Scenario::traced(
            "2 readers + detacher",
            vec![Role::Reader, Role::Reader, detacher],
        ),
        Scenario::traced(
            "reader + writer + detacher",
            vec![Role::Reader, writer, detacher],
        ),
    ];
    if generation.has_killable_writers() {
        let killable = Role::Writer {
            killable: true,
            detach: false,
        };
        v.push(Scenario::traced(
            "reader + killable writer",
            vec![Role::Reader, killable],
        ));
        v.push(Scenario::traced(
            "2 readers + killable writer",
            vec![Role::Reader, Role::Reader, killable],
        ));
    }
    let open: Vec<Scenario> = v
        .iter()
        .filter(|s| s.roles.len() == 2)
        .map(Scenario::with_untraced_reader)
        .collect();
    v.extend(open);
    v
}

/// One complete execution: the steps and the world after each.
pub struct Execution {
    pub initial: World,
    pub steps: Vec<(Step, World)>,
}

impl Execution {
    /// The world before step `i` (`i == steps.len()`: the final world).
    fn world(&self, i: usize) -> &World {
        if i == 0 {
            &self.initial
        } else {
            &self.steps[i - 1].1
        }
    }

    /// The first observable invariant violated along the execution.
    pub fn violation(&self) -> Option<(Invariant, String)> {
        let mut before = self.initial;
        let found = check_world(&before).filter(|(i, _)| observable(*i));
        if found.is_some() {
            return found;
        }
        for (step, after) in &self.steps {
            let v = check_step(&before, *step, after)
                .or_else(|| check_world(after))
                .filter(|(i, _)| observable(*i));
            if v.is_some() {
                return v;
            }
            before = *after;
        }
        check_stuck(&before, self.initial.vm_refcnt).filter(|(i, _)| observable(*i))
    }

    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (n, (step, after)) in self.steps.iter().enumerate() {
            s.push_str(&format!(
                "  {n:>3}. task {} {:?} → vm_refcnt {:#x}, vm_lock_seq {}, mm_lock_seq {}\n",
                step.task, step.op, after.vm_refcnt, after.vm_lock_seq, after.mm_lock_seq
            ));
        }
        s
    }
}

/// Call `f` on every maximal execution from `initial` when there are at most
/// [`MAX_EXECUTIONS`], else on `sampled` seeded random walks. Returns how many, and
/// whether they were sampled.
pub fn executions(
    cfg: &Config,
    initial: World,
    sampled: usize,
    f: &mut impl FnMut(&Execution),
) -> (usize, bool) {
    let (n, truncated) = for_each_execution(cfg, initial, &mut |_| {});
    if !truncated {
        for_each_execution(cfg, initial, f);
        return (n, false);
    }
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = Vec::new();
    for _ in 0..sampled {
        let mut x = Execution {
            initial,
            steps: Vec::new(),
        };
        let mut w = initial;
        loop {
            next.clear();
            w.successors(cfg, |s, n| next.push((s, n)));
            if next.is_empty() {
                break;
            }
            let (s, n) = next[(xorshift(&mut rng) % next.len() as u64) as usize];
            x.steps.push((s, n));
            w = n;
        }
        f(&x);
    }
    (sampled, true)
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// Call `f` on every maximal execution from `initial` (finished, or stuck with a task
/// that can never move). Returns how many, and whether [`MAX_EXECUTIONS`] cut it short.
pub fn for_each_execution(
    cfg: &Config,
    initial: World,
    f: &mut impl FnMut(&Execution),
) -> (usize, bool) {
    for_each_execution_up_to(cfg, initial, MAX_EXECUTIONS, f)
}

/// [`for_each_execution`] with another cap.
pub fn for_each_execution_up_to(
    cfg: &Config,
    initial: World,
    cap: usize,
    f: &mut impl FnMut(&Execution),
) -> (usize, bool) {
    let mut exec = Execution {
        initial,
        steps: Vec::new(),
    };
    let mut count = 0;
    let truncated = dfs(cfg, initial, &mut exec, (&mut count, cap), f);
    (count, truncated)
}

fn dfs(
    cfg: &Config,
    w: World,
    exec: &mut Execution,
    (count, cap): (&mut usize, usize),
    f: &mut impl FnMut(&Execution),
) -> bool {
    let mut next = Vec::new();
    w.successors(cfg, |s, n| next.push((s, n)));
    if next.is_empty() {
        f(exec);
        *count += 1;
        return *count >= cap;
    }
    for (s, n) in next {
        exec.steps.push((s, n));
        let stop = dfs(cfg, n, exec, (&mut *count, cap), f);
        exec.steps.pop();
        if stop {
            return true;
        }
    }
    false
}

/// When a program's reads happen within its window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reads {
    /// Right after the probed step.
    Early,
    /// Just before the task's next step.
    Late,
    /// `vm_refcnt` early, the sequences late (the program reads them in that order).
    Spread,
}

/// How writer-path entries reach userspace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entries {
    /// `--stream-entries`: when they happen.
    Streamed,
    /// The default: each entry travels in its return's record.
    Folded,
}

/// A program run: which event, and the window of worlds its reads may see.
struct Run {
    task: usize,
    kind: EventKind,
    probe: ProbeId,
    /// World indices: the reads happen at some world in `lo..=hi`.
    lo: usize,
    hi: usize,
    arg: u64,
    ret: Option<i64>,
    /// `(detaching, state, detached, exclusive)` of the `ves` argument.
    ves: Option<(bool, u32, bool, bool)>,
    vma_fields: bool,
}

/// The events each task's programs stream for `x` on `g`, per task in program order
/// (none for the `untraced` tasks).
pub fn project(
    g: Generation,
    x: &Execution,
    (reads, entries): (Reads, Entries),
    untraced: u32,
) -> Vec<Vec<Event>> {
    let mut runs = runs(g, x);
    runs.retain(|r| untraced & 1 << r.task == 0);
    let in_flight = excluder_calls(g, &runs, reads);
    let tasks = x.initial.tasks.len();
    let mut per_task: Vec<Vec<(Event, bool)>> = vec![Vec::new(); tasks];
    for r in &runs {
        // `rcuwait_wake_up` is streamed only while an excluder's call is in flight (its
        // entry program ran, its return program not yet).
        if r.kind == EventKind::WriterWake {
            let at = read_at(r, reads).0;
            if !in_flight.iter().any(|&(from, to)| from <= at && at < to) {
                continue;
            }
        }
        per_task[r.task].push((sample(x, r, reads), is_entry(r.kind)));
    }
    per_task
        .into_iter()
        .map(|evs| pair_and_fold(evs, entries))
        .collect()
}

/// Returns carry their entry's time (`wait_ns`) and count (`entry_refcnt`); folded
/// entries travel with their return, as the pipeline unfolds them (and an entry whose
/// return never came is lost with it).
fn pair_and_fold(evs: Vec<(Event, bool)>, entries: Entries) -> Vec<Event> {
    let entry_of = pair_entries(evs.iter().map(|(e, is_entry)| (e.kind(), *is_entry)));
    let mut out = Vec::with_capacity(evs.len());
    for (i, (ev, is_entry)) in evs.iter().enumerate() {
        if *is_entry {
            if entries == Entries::Streamed {
                out.push(*ev);
            }
            continue;
        }
        let mut ev = *ev;
        if let Some(e) = entry_of[i] {
            let entry = evs[e].0;
            if entries == Entries::Folded {
                out.push(entry);
            }
            ev.flags |= flags::PAIRED;
            ev.wait_ns = ev.ts_ns.saturating_sub(entry.ts_ns);
            ev.entry_refcnt = entry.refcnt;
        }
        out.push(ev);
    }
    out
}

fn is_entry(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::WriteLockEnter | EventKind::ExcludeEnter | EventKind::DetachEnter
    )
}

/// For each run of one task (its kind, whether it is an entry), the entry its return
/// pairs with: the latest open entry of the same call.
fn pair_entries(runs: impl Iterator<Item = (Option<EventKind>, bool)>) -> Vec<Option<usize>> {
    let exit_of = |k: Option<EventKind>| match k {
        Some(EventKind::WriteLockEnter) => EventKind::WriteLockExit,
        Some(EventKind::ExcludeEnter) => EventKind::ExcludeExit,
        _ => EventKind::DetachExit,
    };
    let mut entry_of = Vec::new();
    let mut open: Vec<(usize, EventKind)> = Vec::new();
    for (i, (kind, is_entry)) in runs.enumerate() {
        entry_of.push(None);
        if is_entry {
            open.push((i, exit_of(kind)));
        } else if let Some(pos) = open.iter().rposition(|(_, k)| Some(*k) == kind) {
            entry_of[i] = Some(open.remove(pos).0);
        }
    }
    entry_of
}

/// Where a run's reads of `vm_refcnt`, `vm_lock_seq` and `mm_lock_seq` happen.
fn read_at(r: &Run, reads: Reads) -> (usize, usize, usize) {
    match reads {
        Reads::Early => (r.lo, r.lo, r.lo),
        Reads::Late => (r.hi, r.hi, r.hi),
        Reads::Spread => (r.lo, r.hi, r.hi),
    }
}

/// The `(entry, return)` events of the calls that register their task in `EXCLUDERS` on
/// `g`: start-exclude on 7.x, `__vma_start_write` and the detach before.
fn excluder_pairs(g: Generation) -> &'static [(EventKind, EventKind)] {
    if g.profile().waits_in_start_exclude {
        &[(EventKind::ExcludeEnter, EventKind::ExcludeExit)]
    } else {
        &[
            (EventKind::WriteLockEnter, EventKind::WriteLockExit),
            (EventKind::DetachEnter, EventKind::DetachExit),
        ]
    }
}

/// The calls that register their task in `EXCLUDERS`, as `[entry program, return
/// program)` world indices: start-exclude on 7.x, `__vma_start_write` and the detach
/// before (their wait is inlined there). A call that never returns stays in flight.
fn excluder_calls(g: Generation, runs: &[Run], reads: Reads) -> Vec<(usize, usize)> {
    let pairs = excluder_pairs(g);
    let mut out = Vec::new();
    for (i, r) in runs.iter().enumerate() {
        let Some(&(_, exit)) = pairs.iter().find(|(enter, _)| *enter == r.kind) else {
            continue;
        };
        let from = read_at(r, reads).0;
        let to = runs[i + 1..]
            .iter()
            .find(|o| o.task == r.task && o.kind == exit)
            .map_or(usize::MAX, |o| read_at(o, reads).0);
        out.push((from, to));
    }
    out
}

fn sample(x: &Execution, r: &Run, reads: Reads) -> Event {
    let (ra, la, sa) = read_at(r, reads);
    let mut ev = Event::ZERO;
    ev.ts_ns = 10 * ra as u64 + r.task as u64 + 1;
    ev.pid_tgid = (TGID << 32) | (100 + r.task as u64);
    ev.kind = r.kind as u16;
    ev.probe = r.probe as u8;
    ev.cpu = r.task as u32;
    ev.mm = MM;
    ev.arg = r.arg;
    ev.mm_lock_seq = x.world(sa).mm_lock_seq;
    ev.flags |= flags::MM_SEQ;
    if r.vma_fields {
        ev.vma = VMA;
        ev.refcnt = x.world(ra).vm_refcnt;
        ev.vm_lock_seq = x.world(la).vm_lock_seq;
        ev.flags |= flags::VMA_FIELDS;
    }
    if let Some(ret) = r.ret {
        ev.ret = ret;
        ev.flags |= flags::RET;
    }
    if let Some((detaching, state, detached, exclusive)) = r.ves {
        ev.flags |= flags::VES;
        ev.ves_detaching = u8::from(detaching);
        ev.ves_state = state;
        ev.ves_detached = u8::from(detached);
        ev.ves_exclusive = u8::from(exclusive);
    }
    ev.comm[..4].copy_from_slice(b"task");
    ev
}

/// Which programs run, where, on generation `g` (docs/ebpf.md, the program contract):
/// 6.15–6.18 inline start/end-exclude; 6.19 has `__vma_enter_locked`; 7.x has
/// `__vma_start_exclude_readers`, takes the write lock's entry at start-exclude's entry,
/// and inlines `vma_mark_detached` (its slow path is `__vma_exclude_readers_for_detach`).
fn runs(g: Generation, x: &Execution) -> Vec<Run> {
    let n = x.steps.len();
    let steps_of = |t: usize| -> Vec<usize> {
        (0..n)
            .filter(|&i| x.steps[i].0.task as usize == t)
            .collect()
    };
    let tasks: Vec<Vec<usize>> = (0..x.initial.tasks.len()).map(steps_of).collect();
    // Window of a program run right after step `i` of task `t`, or right before it.
    let after = |t: usize, i: usize| -> (usize, usize) {
        let next = tasks[t].iter().find(|&&j| j > i).copied().unwrap_or(n);
        (i + 1, next)
    };
    let before = |t: usize, i: usize| -> (usize, usize) {
        let prev = tasks[t]
            .iter()
            .rev()
            .find(|&&j| j < i)
            .map_or(0, |&j| j + 1);
        (prev, i)
    };
    let profile = g.profile();
    let excl_probe = profile.start_exclude;
    let detach_probe = profile.detach_probe;
    let mut out = Vec::new();
    let mut push = |task: usize,
                    (lo, hi): (usize, usize),
                    kind: EventKind,
                    probe: ProbeId,
                    ret: Option<i64>,
                    arg: u64,
                    ves: Option<(bool, u32, bool, bool)>| {
        out.push(Run {
            task,
            kind,
            probe,
            lo,
            hi,
            arg,
            ret,
            ves,
            vma_fields: kind != EventKind::MmWriteUnlock,
        });
    };
    for i in 0..n {
        let (step, _) = x.steps[i];
        let t = step.task as usize;
        let w = x.world(i);
        let me = w.tasks[t];
        let write_state = if me.killable(g, false) {
            TASK_KILLABLE
        } else {
            TASK_UNINTERRUPTIBLE
        };
        let fail = Some(0);
        match (me.pc, step.op) {
            // ----- lock_vma_under_rcu (its return) and vma_refcount_put
            (_, Op::EarlyCheck { locked: true })
            | (_, Op::IncNotZeroLimited { result: Err(_) }) => push(
                t,
                after(t, i),
                EventKind::ReaderAcquire,
                ProbeId::LockVmaUnderRcu,
                fail,
                0,
                None,
            ),
            (_, Op::Recheck { locked: false }) => push(
                t,
                after(t, i),
                EventKind::ReaderAcquire,
                ProbeId::LockVmaUnderRcu,
                Some(VMA as i64),
                0,
                None,
            ),
            (Pc::ReadPut { locked }, Op::RefcountPut { wake, .. }) => {
                push(
                    t,
                    before(t, i),
                    EventKind::ReaderRelease,
                    ProbeId::VmaRefcountPut,
                    None,
                    0,
                    None,
                );
                // A reader that lost its re-check returns NULL after its put.
                let woke_next = x
                    .steps
                    .get(i + 1..)
                    .and_then(|rest| rest.iter().find(|(s, _)| s.task as usize == t))
                    .is_some_and(|(s, _)| matches!(s.op, Op::RcuwaitWakeUp { .. }));
                // The put's wake-up, when it follows, comes before the NULL return.
                if !(locked || wake && woke_next) {
                    push(
                        t,
                        after(t, i),
                        EventKind::ReaderAcquire,
                        ProbeId::LockVmaUnderRcu,
                        fail,
                        0,
                        None,
                    );
                }
            }
            (Pc::ReadWake { locked }, Op::RcuwaitWakeUp { .. }) => {
                // Kept by `project` only while an excluder's call is in flight.
                push(
                    t,
                    before(t, i),
                    EventKind::WriterWake,
                    ProbeId::RcuwaitWakeUp,
                    Some(i64::from(w.vma_writer_wait.is_some())),
                    0,
                    None,
                );
                if !locked {
                    push(
                        t,
                        after(t, i),
                        EventKind::ReaderAcquire,
                        ProbeId::LockVmaUnderRcu,
                        fail,
                        0,
                        None,
                    );
                }
            }
            // ----- __vma_start_write
            (Pc::StartWrite, Op::StartWrite { already: false }) => {
                let arg = if profile.writer_takes_state {
                    u64::from(write_state)
                } else {
                    u64::from(w.mm_lock_seq)
                };
                // 7.x: no entry program; the entry is start-exclude's, its first callee.
                push(
                    t,
                    after(t, i),
                    EventKind::WriteLockEnter,
                    ProbeId::VmaStartWrite,
                    None,
                    arg,
                    None,
                );
            }
            (Pc::StartExclude { detaching }, Op::AddExcludeFlag { detached, .. }) => {
                let state = if detaching {
                    TASK_UNINTERRUPTIBLE
                } else {
                    write_state
                };
                if let Some(p) = excl_probe {
                    let ves = Some((detaching, state, false, false));
                    push(t, before(t, i), EventKind::ExcludeEnter, p, None, 0, ves);
                    if detached {
                        let ves = Some((detaching, state, true, false));
                        push(t, after(t, i), EventKind::ExcludeExit, p, Some(0), 0, ves);
                    }
                }
                if detached && detaching {
                    push(
                        t,
                        after(t, i),
                        EventKind::DetachExit,
                        detach_probe,
                        None,
                        0,
                        None,
                    );
                }
            }
            (Pc::WaitCheck { detaching }, Op::WaitCheck { reached: true, .. }) => {
                if let Some(p) = excl_probe {
                    let state = if detaching {
                        TASK_UNINTERRUPTIBLE
                    } else {
                        write_state
                    };
                    let ret = i64::from(profile.exclude_returns_excluded);
                    let ves = Some((detaching, state, false, true));
                    push(t, after(t, i), EventKind::ExcludeExit, p, Some(ret), 0, ves);
                }
            }
            (Pc::ExcludeInterrupted, Op::ExcludeInterrupted { .. }) => {
                if let Some(p) = excl_probe {
                    let ves = Some((false, write_state, false, false));
                    push(
                        t,
                        after(t, i),
                        EventKind::ExcludeExit,
                        p,
                        Some(EINTR),
                        0,
                        ves,
                    );
                }
                push(
                    t,
                    after(t, i),
                    EventKind::WriteLockExit,
                    ProbeId::VmaStartWrite,
                    Some(EINTR),
                    0,
                    None,
                );
            }
            (Pc::StoreSeq { excluded: false }, Op::StoreVmLockSeq { .. })
            | (
                Pc::EndExclude { detaching: false },
                Op::EndExclude {
                    detaching: false, ..
                },
            ) => {
                // Void before 6.19: no return value.
                let ret = profile.writer_takes_state.then_some(0);
                push(
                    t,
                    after(t, i),
                    EventKind::WriteLockExit,
                    ProbeId::VmaStartWrite,
                    ret,
                    0,
                    None,
                );
            }
            (Pc::EndExclude { detaching: true }, Op::EndExclude { .. }) => push(
                t,
                after(t, i),
                EventKind::DetachExit,
                detach_probe,
                None,
                0,
                None,
            ),
            // ----- vma_mark_detached (6.x) / its slow path (7.x)
            (Pc::DetachDec, Op::DetachDec { zero }) => {
                if !profile.every_detach_hookable {
                    if !zero {
                        push(
                            t,
                            after(t, i),
                            EventKind::DetachEnter,
                            detach_probe,
                            None,
                            0,
                            None,
                        );
                    }
                } else {
                    push(
                        t,
                        before(t, i),
                        EventKind::DetachEnter,
                        detach_probe,
                        None,
                        0,
                        None,
                    );
                    if zero {
                        push(
                            t,
                            after(t, i),
                            EventKind::DetachExit,
                            detach_probe,
                            None,
                            0,
                            None,
                        );
                    }
                }
            }
            (_, Op::MmapWriteUnlock { .. }) => push(
                t,
                after(t, i),
                EventKind::MmWriteUnlock,
                ProbeId::MmapLockReleased,
                None,
                0,
                None,
            ),
            _ => {}
        }
    }
    // Program order within a task: by where the run starts, then by emission order.
    out.sort_by_key(|r| (r.task, r.lo));
    out
}

/// Orders of delivery that keep each task's own order: all of them when there are at
/// most `cap`, else the timestamp order plus seeded random merges, `cap` in all.
pub fn deliveries(per_task: &[Vec<Event>], seed: u64, cap: usize) -> Vec<Vec<Event>> {
    let lens: Vec<usize> = per_task.iter().map(Vec::len).collect();
    if merges(&lens) <= cap as u128 {
        let mut all = Vec::new();
        let mut cur = Vec::new();
        let mut pos = vec![0; per_task.len()];
        every_merge(per_task, &mut pos, &mut cur, &mut all);
        return all;
    }
    let mut by_ts: Vec<Event> = per_task.iter().flatten().copied().collect();
    by_ts.sort_by_key(|e| e.ts_ns);
    let mut out = vec![by_ts];
    let mut rng = seed | 1;
    for _ in 1..cap {
        let mut pos = vec![0; per_task.len()];
        let mut order = Vec::new();
        loop {
            let open: Vec<usize> = (0..per_task.len())
                .filter(|&t| pos[t] < per_task[t].len())
                .collect();
            if open.is_empty() {
                break;
            }
            let t = open[(xorshift(&mut rng) % open.len() as u64) as usize];
            order.push(per_task[t][pos[t]]);
            pos[t] += 1;
        }
        out.push(order);
    }
    out
}

fn merges(lens: &[usize]) -> u128 {
    // Multinomial coefficient, saturating.
    let mut total: u128 = 1;
    let mut n: u128 = 0;
    for &l in lens {
        for k in 1..=l as u128 {
            n += 1;
            total = total.saturating_mul(n) / k;
        }
    }
    total
}

fn every_merge(
    per_task: &[Vec<Event>],
    pos: &mut [usize],
    cur: &mut Vec<Event>,
    all: &mut Vec<Vec<Event>>,
) {
    let mut any = false;
    for t in 0..per_task.len() {
        if pos[t] < per_task[t].len() {
            any = true;
            cur.push(per_task[t][pos[t]]);
            pos[t] += 1;
            every_merge(per_task, pos, cur, all);
            pos[t] -= 1;
            cur.pop();
        }
    }
    if !any {
        all.push(cur.clone());
    }
}

/// Replay one delivery order through a fresh validator (a finite stream: it ends).
pub fn replay(g: Generation, order: &[Event]) -> Vec<Anomaly> {
    replay_without(g, order, None)
}

/// ... with one row of the rule table switched off.
fn replay_without(g: Generation, order: &[Event], off: Option<&'static Rule>) -> Vec<Anomaly> {
    let mut v = Validator::with_limits(g, 64, 256);
    if let Some(rule) = off {
        v = v.without_rule(rule);
    }
    let mut out = Vec::new();
    for ev in order {
        v.observe(ev, &mut out);
    }
    v.finish(&mut out);
    out
}

/// What one bug's replays showed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BugResult {
    /// Executions in which the bug shows (an observable invariant is violated) and whose
    /// events differ from every correct execution's in at least one projection.
    pub executions: u64,
    /// Executions in which the bug shows but whose events, in every projection, are
    /// exactly those of some correct execution: no monitor can see them.
    pub indistinguishable: u64,
    /// ... of which a correct execution with an untraced reader streams the events
    /// (searched only for executions the validator missed).
    pub untraced_explains: u64,
    /// Projections with later or spread reads that differ from the reference, and how
    /// many of them were reported (timestamp order only; informative).
    pub skewed_projections: u64,
    pub skewed_detected: u64,
    /// ... reported with a documented kind in every delivery order.
    pub detected: u64,
    /// The documented kinds, `|`-separated.
    pub kind: String,
    /// The first execution and delivery order that was not reported.
    #[serde(skip)]
    pub missed: Option<String>,
}

/// One generation's conformance result (`vmatrace model --check --json`).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Conformance {
    /// States and transitions of the model check's scenario.
    #[serde(skip)]
    pub states: (usize, usize),
    pub executions_replayed: u64,
    pub delivery_orders: u64,
    pub false_anomalies: u64,
    /// False anomalies by kind (zero when the validator conforms).
    pub false_by_kind: BTreeMap<&'static str, u64>,
    pub bugs: BTreeMap<&'static str, BugResult>,
    /// The first false anomaly or missed bug, with its execution and delivery order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counterexample: Option<String>,
}

impl Conformance {
    pub fn ok(&self) -> bool {
        self.false_anomalies == 0 && self.bugs.values().all(|b| b.detected == b.executions)
    }
}

const READS: [Reads; 3] = [Reads::Early, Reads::Late, Reads::Spread];
const ENTRIES: [Entries; 2] = [Entries::Streamed, Entries::Folded];

/// Check generation `g`: the correct model, then each bug.
pub fn check(g: Generation, budget: Budget) -> Conformance {
    check_without(g, budget, None)
}

/// [`check`] with one row of the validator's rule table switched off (`off`): what
/// breaking that row costs (`vmatrace model --check --without-rule NAME`).
pub fn check_without(g: Generation, budget: Budget, off: Option<&'static Rule>) -> Conformance {
    let mut c = Conformance::default();
    for sc in scenarios(g) {
        let cfg = Config {
            generation: g,
            bug: None,
        };
        executions(
            &cfg,
            World::new(&sc.roles),
            budget.sampled_executions,
            &mut |x| {
                c.executions_replayed += 1;
                for reads in READS {
                    for entries in ENTRIES {
                        let per_task = project(g, x, (reads, entries), sc.untraced);
                        for order in deliveries(&per_task, c.executions_replayed, budget.orders) {
                            c.delivery_orders += 1;
                            let found = replay_without(g, &order, off);
                            if !found.is_empty() {
                                c.false_anomalies += 1;
                                for a in &found {
                                    *c.false_by_kind.entry(a.kind.key()).or_default() += 1;
                                }
                                if c.counterexample.is_none() {
                                    c.counterexample = Some(counterexample(
                                        &sc.name, None, x, reads, entries, &order, &found,
                                    ));
                                }
                            }
                        }
                    }
                }
            },
        );
    }
    let reference = reference(g, budget);
    let judged = judged_scenarios(g);
    let shown = shown_by_correct(g, budget, &reference, &judged);
    c.states = states(g);
    for bug in Bug::ALL {
        let r = check_bug(g, bug, budget, &judged, (&reference, &shown), off, &mut c);
        c.bugs.insert(bug.key(), r);
    }
    c
}

/// The model check's scenario: two readers, a writer, a detacher and a killable writer.
pub const CHECK_ROLES: [Role; 5] = [
    Role::Reader,
    Role::Reader,
    Role::Writer {
        killable: false,
        detach: false,
    },
    Role::Writer {
        killable: false,
        detach: true,
    },
    Role::Writer {
        killable: true,
        detach: false,
    },
];

/// The explored state space of the model check's scenario (two readers, a writer, a
/// detacher and a killable writer), as `vmatrace model --check` reports it.
fn states(g: Generation) -> (usize, usize) {
    let roles = CHECK_ROLES;
    let cfg = Config {
        generation: g,
        bug: None,
    };
    let x = vmatrace_common::model::explore::explore(&cfg, World::new(&roles), 10_000_000);
    (x.states, x.transitions)
}

/// The scenarios bugs are judged in: every task traced (an untraced reader can hide a
/// bug), and few enough correct executions to know every one of them.
fn judged_scenarios(g: Generation) -> Vec<Scenario> {
    let correct = Config {
        generation: g,
        bug: None,
    };
    scenarios(g)
        .into_iter()
        .filter(|s| {
            s.untraced == 0 && !for_each_execution(&correct, World::new(&s.roles), &mut |_| {}).1
        })
        .collect()
}

fn check_bug(
    g: Generation,
    bug: Bug,
    budget: Budget,
    judged: &[Scenario],
    (reference, shown): (&HashSet<u64>, &HashSet<u64>),
    off: Option<&'static Rule>,
    c: &mut Conformance,
) -> BugResult {
    let kinds = documented_kinds(bug);
    let mut r = BugResult {
        kind: kinds.iter().map(|k| k.key()).collect::<Vec<_>>().join("|"),
        ..BugResult::default()
    };
    let mut missed: Vec<(Vec<Vec<Vec<Event>>>, String)> = Vec::new();
    let cfg = Config {
        generation: g,
        bug: Some(bug),
    };
    for sc in judged {
        executions(
            &cfg,
            World::new(&sc.roles),
            budget.sampled_executions,
            &mut |x| {
                if x.violation().is_none() {
                    return;
                }
                let mut visible = Vec::new();
                let mut first_miss = None;
                // Judged with the programs reading right after the probed step. Later reads
                // can mix a correct run's timings event by event, beyond what the reference
                // holds, so they are reported apart (`skewed_*`), not judged.
                for reads in READS {
                    for entries in ENTRIES {
                        let per_task = project(g, x, (reads, entries), 0);
                        let sig = signature(&per_task);
                        if reference.contains(&sig) || shown.contains(&sig) {
                            continue;
                        }
                        if reads != Reads::Early {
                            r.skewed_projections += 1;
                            let order: Vec<Event> = deliveries(&per_task, 1, 1).remove(0);
                            if replay_without(g, &order, off)
                                .iter()
                                .any(|a| kinds.contains(&a.kind))
                            {
                                r.skewed_detected += 1;
                            }
                            continue;
                        }
                        let seed = r.executions + missed.len() as u64 + 1;
                        for order in deliveries(&per_task, seed, budget.orders) {
                            c.delivery_orders += 1;
                            let found = replay_without(g, &order, off);
                            if first_miss.is_none()
                                && !found.iter().any(|a| kinds.contains(&a.kind))
                            {
                                first_miss = Some(counterexample(
                                    &sc.name,
                                    Some(bug),
                                    x,
                                    reads,
                                    entries,
                                    &order,
                                    &found,
                                ));
                            }
                        }
                        visible.push(per_task);
                    }
                }
                if visible.is_empty() {
                    r.indistinguishable += 1;
                    return;
                }
                c.executions_replayed += 1;
                match first_miss {
                    None => {
                        r.executions += 1;
                        r.detected += 1;
                    }
                    Some(m) => missed.push((visible, m)),
                }
            },
        );
        // A missed execution whose every visible projection a correct execution with an
        // untraced reader streams exactly is one no monitor can report either: a task
        // outside the trace's filter, or a reader path without a probe, explains it.
        let explained = if missed.is_empty() || budget.untraced_executions == 0 {
            HashSet::new()
        } else {
            let targets: Vec<&Vec<Vec<Event>>> = missed.iter().flat_map(|(v, _)| v).collect();
            shown_with_untraced_reader(g, sc, &targets, budget.untraced_executions)
        };
        for (visible, m) in missed.drain(..) {
            if visible.iter().all(|p| explained.contains(&signature(p))) {
                r.indistinguishable += 1;
                r.untraced_explains += 1;
            } else {
                r.executions += 1;
                r.missed.get_or_insert(m);
            }
        }
    }
    r
}

fn counterexample(
    scenario: &str,
    bug: Option<Bug>,
    x: &Execution,
    reads: Reads,
    entries: Entries,
    order: &[Event],
    found: &[Anomaly],
) -> String {
    let mut s = format!(
        "scenario {scenario}, bug {}, reads {reads:?}, entries {entries:?}\n",
        bug.map_or("none", Bug::key)
    );
    if let Some((inv, detail)) = x.violation() {
        s.push_str(&format!("model: {} violated: {detail}\n", inv.key()));
    }
    s.push_str("execution:\n");
    s.push_str(&x.describe());
    s.push_str("delivery order:\n");
    for e in order {
        s.push_str(&format!(
            "  ts {:>4} tid {} {:<16} vm_refcnt {:#x} vm_lock_seq {} mm_lock_seq {} ret {}\n",
            e.ts_ns,
            e.tid(),
            e.kind().map_or("?", EventKind::key),
            e.refcnt,
            e.vm_lock_seq,
            e.mm_lock_seq,
            if e.has(flags::RET) {
                e.ret.to_string()
            } else {
                "-".into()
            }
        ));
    }
    if found.is_empty() {
        s.push_str("anomalies: none\n");
    }
    for a in found {
        s.push_str(&format!("anomaly {}: {}\n", a.kind.key(), a.observed));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The quick budget of the full check (`vmatrace model --check` runs the larger one):
    /// no false anomaly on any generation, and the bugs whose effect the monitor can see
    /// in every projection are reported every time.
    #[test]
    fn the_validator_conforms_to_the_model() {
        for g in Generation::ALL {
            let c = check(*g, Budget::QUICK);
            eprintln!(
                "{}: {} executions, {} delivery orders, {} false anomalies, bugs {:?}",
                g.key(),
                c.executions_replayed,
                c.delivery_orders,
                c.false_anomalies,
                c.bugs
                    .iter()
                    .map(|(k, r)| (k, r.executions, r.detected, r.indistinguishable))
                    .collect::<Vec<_>>()
            );
            assert!(c.executions_replayed > 1000, "{}", g.key());
            assert_eq!(
                c.false_anomalies,
                0,
                "{}: {}",
                g.key(),
                c.counterexample.as_deref().unwrap_or("")
            );
            // Without start-exclude events (6.15-6.18) the flag-ignoring reader has no
            // window to be judged in (docs/anomaly-kinds.md, "Known blind spots").
            let mut every = vec![Bug::PutNeverWakes, Bug::CheckBeforeRegister];
            if g.profile().start_exclude.is_some() {
                every.push(Bug::ReaderIgnoresFlag);
            }
            for bug in every {
                let r = &c.bugs[bug.key()];
                assert!(r.executions > 0, "{}: {} never shows", g.key(), bug.key());
                assert_eq!(
                    r.detected,
                    r.executions,
                    "{}: {}",
                    g.key(),
                    r.missed.as_deref().unwrap_or("")
                );
            }
        }
    }

    /// Breaking a row of the rule table breaks the proof: the bug a row is there for
    /// goes unreported in executions it was reported in. (In the model's finite runs a
    /// put that never wakes is caught at the stream's end, by the excluder still
    /// waiting; the same-task rule is what catches it in an endless live stream.)
    #[test]
    fn switching_off_a_rule_row_fails_the_check() {
        use crate::validate::rules;
        let mut checked = std::collections::BTreeMap::new();
        for (g, rule, bug) in [
            (
                Generation::V7_0,
                &rules::EXCLUDER_WAIT_ENDS,
                Bug::PutNeverWakes,
            ),
            (
                Generation::V7_0,
                &rules::READER_OUTSIDE_EXCLUSION,
                Bug::ReaderIgnoresFlag,
            ),
            // 6.15 has no start-exclude event: its puts are judged by this row alone.
            (
                Generation::V6_15,
                &rules::READERS_DRAINED_BEFORE_STORE,
                Bug::ReaderIgnoresFlag,
            ),
        ] {
            let with = checked
                .entry(g.key())
                .or_insert_with(|| check(g, Budget::QUICK));
            let before = &with.bugs[bug.key()];
            assert!(before.detected > 0, "{}", bug.key());
            let without = check_without(g, Budget::QUICK, Some(rule));
            let after = &without.bugs[bug.key()];
            assert!(
                after.detected < before.detected,
                "{} still detected in {} of {} executions without {}",
                bug.key(),
                after.detected,
                after.executions,
                rule.name
            );
            assert!(!without.ok());
        }
    }

    #[test]
    fn every_merge_keeps_each_tasks_order() {
        let mk = |tid: u64, ts: u64| Event {
            pid_tgid: tid,
            ts_ns: ts,
            ..Event::ZERO
        };
        let per_task = vec![vec![mk(1, 1), mk(1, 2)], vec![mk(2, 3), mk(2, 4)]];
        let all = deliveries(&per_task, 1, 100);
        assert_eq!(all.len(), 6, "C(4,2) merges");
        for order in &all {
            for t in [1, 2] {
                let ts: Vec<u64> = order
                    .iter()
                    .filter(|e| e.pid_tgid == t)
                    .map(|e| e.ts_ns)
                    .collect();
                assert!(ts.windows(2).all(|w| w[0] < w[1]), "{order:?}");
            }
        }
        assert_eq!(deliveries(&per_task, 1, 3).len(), 3, "capped");
    }
}
