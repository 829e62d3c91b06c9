//! What a correct kernel can show: the reference that tells a bug's executions a
//! monitor could report from those it cannot (docs/anomaly-kinds.md, "Conformance").
//!
//! Two levels. First, signatures: every projection of every correct execution of every
//! scenario and of each of its parts, with the programs' reads at three fixed points
//! (early, late, spread). Then, for a bug's projection that no signature matches, a
//! search of the correct executions of the same tasks with *each program run's reads
//! placed on their own*: a program reads its fields one after another at any point
//! between its probed step and its task's next step, while the other tasks go on, so one
//! correct execution can show, event by event, any sample its windows allow. A bug's
//! projection that a correct execution shows this way, in the same timestamp order,
//! looks exactly like a correct kernel's: no monitor can report it.

use std::{
    collections::{HashMap, HashSet},
    hash::{Hash, Hasher},
};

use vmatrace_common::{
    Event, EventKind,
    event::flags,
    model::{
        Generation,
        machine::{Bug, ModelConfig as Config, Role, World},
    },
};

use super::{
    Budget, ENTRIES, Entries, Execution, READS, Reads, Scenario, excluder_pairs, executions,
    for_each_execution_up_to, is_entry, pair_entries, project, runs, sample, scenarios,
};

/// What the events of one projection say, without their timestamps: every event's
/// fields in timestamp order. Two projections with the same signature cannot be told
/// apart by any monitor.
pub(super) fn signature(per_task: &[Vec<Event>]) -> u64 {
    let mut all: Vec<(u64, u32, usize, &Event)> = per_task
        .iter()
        .flat_map(|evs| {
            evs.iter()
                .enumerate()
                .map(|(i, e)| (e.ts_ns, e.tid(), i, e))
        })
        .collect();
    all.sort_by_key(|&(ts, tid, i, _)| (ts, tid, i));
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (_, tid, _, e) in all {
        // The mm's sequence moves with writers of the mm's other VMAs, which leave no
        // event on this one: only whether this VMA is write-locked is information, and
        // mm write-unlocks are not this VMA's.
        if e.kind() == Some(EventKind::MmWriteUnlock) {
            continue;
        }
        (
            e.kind,
            tid,
            e.flags & !flags::PAIRED,
            e.has(flags::RET).then_some(e.ret),
            e.refcnt,
            e.vm_lock_seq,
            e.vm_lock_seq == e.mm_lock_seq,
            e.arg,
        )
            .hash(&mut h);
        (
            e.ves_state,
            e.ves_detaching,
            e.ves_detached,
            e.ves_exclusive,
            e.vma,
        )
            .hash(&mut h);
    }
    h.finish()
}

/// Signatures of every projection of every correct execution of every scenario and of
/// each of its parts (any subset of its tasks, the others idle): what a correct kernel
/// can show. Sampled scenarios give an incomplete set, so bugs are only required to be
/// found in scenarios enumerated whole.
pub(super) fn reference(g: Generation, budget: Budget) -> HashSet<u64> {
    let mut set = HashSet::new();
    let cfg = Config {
        generation: g,
        bug: None,
    };
    let mut seen = HashSet::new();
    for sc in scenarios(g).into_iter().filter(|s| s.untraced == 0) {
        let roles = sc.roles;
        for mask in 1u32..(1 << roles.len()) {
            let part: Vec<Role> = roles
                .iter()
                .enumerate()
                .map(|(i, r)| if mask & (1 << i) != 0 { *r } else { Role::Idle })
                .collect();
            if !seen.insert(part.clone()) {
                continue;
            }
            executions(
                &cfg,
                World::new(&part),
                budget.sampled_executions,
                &mut |x| {
                    for reads in READS {
                        for entries in ENTRIES {
                            set.insert(signature(&project(g, x, (reads, entries), 0)));
                        }
                    }
                },
            );
        }
    }
    set
}

/// What a program's run shows that does not depend on when it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Fixed {
    kind: u16,
    flags: u16,
    ret: Option<i64>,
    arg: u64,
    ves: (u32, u8, u8, u8),
}

impl Fixed {
    fn of(e: &Event) -> Self {
        Fixed {
            kind: e.kind,
            flags: e.flags & !flags::PAIRED,
            ret: e.has(flags::RET).then_some(e.ret),
            arg: e.arg,
            ves: (
                e.ves_state,
                e.ves_detaching,
                e.ves_detached,
                e.ves_exclusive,
            ),
        }
    }

    fn is_wake(&self) -> bool {
        self.kind == EventKind::WriterWake as u16
    }
}

/// What a run read: `vm_refcnt`, `vm_lock_seq`, and whether `vm_lock_seq` equalled
/// `mm_lock_seq` (the mm's own sequence moves with other VMAs' writers: not information,
/// as in [`signature`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Read {
    refcnt: u32,
    vm_lock_seq: u32,
    locked: bool,
}

/// A bug's projection: its events in timestamp order (mm write-unlocks left out, as in
/// [`signature`]), each with its task.
struct Target {
    events: Vec<(usize, Fixed, Read)>,
}

impl Target {
    fn of(per_task: &[Vec<Event>]) -> Self {
        let mut all: Vec<(u64, u32, usize, usize, &Event)> = per_task
            .iter()
            .enumerate()
            .flat_map(|(t, evs)| {
                evs.iter()
                    .enumerate()
                    .map(move |(i, e)| (e.ts_ns, e.tid(), i, t, e))
            })
            .collect();
        all.sort_by_key(|&(ts, tid, i, _, _)| (ts, tid, i));
        let events = all
            .into_iter()
            .filter(|(.., e)| e.kind() != Some(EventKind::MmWriteUnlock))
            .map(|(.., t, e)| {
                let read = Read {
                    refcnt: e.refcnt,
                    vm_lock_seq: e.vm_lock_seq,
                    locked: e.vm_lock_seq == e.mm_lock_seq,
                };
                (t, Fixed::of(e), read)
            })
            .collect();
        Target { events }
    }

    /// A correct execution can only show this projection if its runs have the same
    /// shape ([`shape_of`]).
    fn shape(&self, tasks: usize) -> u64 {
        shape_of((0..tasks).map(|t| {
            self.events
                .iter()
                .filter(move |(task, ..)| *task == t)
                .map(|(_, fixed, _)| fixed)
        }))
    }
}

/// One program run of a correct execution: the worlds its reads may see (`lo..=hi`).
#[derive(Clone, Copy, Debug)]
struct Sketch {
    lo: usize,
    hi: usize,
    fixed: Fixed,
    /// False for an entry folded into a return that never came: its program ran, but
    /// nothing reached userspace.
    streamed: bool,
}

/// A correct execution, ready to be matched against targets.
struct Shown {
    /// `(vm_refcnt, vm_lock_seq, mm_lock_seq)` of each world.
    worlds: Vec<[u32; 3]>,
    /// Each task's runs in program order (mm write-unlocks left out).
    tasks: Vec<Vec<Sketch>>,
    /// The excluders' calls as `(task, entry run, return run)`: a reader's wake-up is
    /// streamed only while one is in flight (`project`).
    calls: Vec<Call>,
    shape: u64,
}

/// An excluder's call: `(task, entry run, return run)`.
type Call = (usize, usize, Option<usize>);

/// Each task's runs in the order `entries` streams them: folded entries just before
/// their return, then sorted by time (as `Target` sorts, by time, then by that order);
/// and the excluders' calls as `(task, entry run, return run)` in that order.
fn in_stream_order(
    g: Generation,
    tasks: &[Vec<(Sketch, EventKind)>],
    entries: Entries,
) -> (Vec<Vec<Sketch>>, Vec<Call>) {
    let excluder = excluder_pairs(g);
    let mut calls = Vec::new();
    let mut ordered = Vec::with_capacity(tasks.len());
    for (t, runs) in tasks.iter().enumerate() {
        let entry_of = pair_entries(runs.iter().map(|(_, k)| (Some(*k), is_entry(*k))));
        let mut streamed = vec![true; runs.len()];
        let mut order: Vec<usize> = Vec::with_capacity(runs.len());
        for i in 0..runs.len() {
            match entry_of[i] {
                _ if entries == Entries::Streamed => order.push(i),
                Some(e) => order.extend([e, i]),
                None if is_entry(runs[i].1) => {
                    if !entry_of.contains(&Some(i)) {
                        streamed[i] = false;
                        order.push(i);
                    }
                }
                None => order.push(i),
            }
        }
        order.sort_by_key(|&i| runs[i].0.lo);
        let mut at = vec![0; runs.len()];
        for (new, &old) in order.iter().enumerate() {
            at[old] = new;
        }
        for (i, (_, kind)) in runs.iter().enumerate() {
            if excluder.iter().any(|(enter, _)| enter == kind) {
                let ret = entry_of.iter().position(|e| *e == Some(i));
                calls.push((t, at[i], ret.map(|r| at[r])));
            }
        }
        ordered.push(
            order
                .into_iter()
                .map(|i| Sketch {
                    streamed: streamed[i],
                    ..runs[i].0
                })
                .collect(),
        );
    }
    (ordered, calls)
}

/// The shape of what each task streams: its events but wake-ups (which a correct run
/// may or may not stream), in order, without what they read.
fn shape_of<'a, T: IntoIterator<Item = &'a Fixed>>(tasks: impl IntoIterator<Item = T>) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for runs in tasks {
        for fixed in runs {
            if !fixed.is_wake() {
                fixed.hash(&mut h);
            }
        }
        u8::MAX.hash(&mut h);
    }
    h.finish()
}

impl Shown {
    /// The execution as each entry mode streams it, for the modes whose shape `wanted`.
    fn of(
        g: Generation,
        x: &Execution,
        untraced: u32,
        mut wanted: impl FnMut(u64) -> bool,
    ) -> Vec<Shown> {
        let mut tasks: Vec<Vec<(Sketch, EventKind)>> = vec![Vec::new(); x.initial.tasks.len()];
        for r in runs(g, x) {
            if r.kind == EventKind::MmWriteUnlock || untraced & 1 << r.task != 0 {
                continue;
            }
            let fixed = Fixed::of(&sample(x, &r, Reads::Early));
            let sketch = Sketch {
                lo: r.lo,
                hi: r.hi,
                fixed,
                streamed: true,
            };
            tasks[r.task].push((sketch, r.kind));
        }
        let mut out = Vec::new();
        for entries in ENTRIES {
            let (ordered, calls) = in_stream_order(g, &tasks, entries);
            let shape = shape_of(
                ordered
                    .iter()
                    .map(|runs| runs.iter().filter(|s| s.streamed).map(|s| &s.fixed)),
            );
            if !wanted(shape) {
                continue;
            }
            let worlds = (0..=x.steps.len())
                .map(|i| {
                    let w = x.world(i);
                    [w.vm_refcnt, w.vm_lock_seq, w.mm_lock_seq]
                })
                .collect();
            out.push(Shown {
                worlds,
                tasks: ordered,
                calls,
                shape,
            });
        }
        out
    }
    /// Whether some placement of every run's reads streams exactly `t`'s events in
    /// `t`'s order. Each run's reads come at the earliest world that fits (after the
    /// previous event's): the earliest choice leaves the most room to the later events,
    /// so if any placement works this one does.
    fn shows(&self, t: &Target) -> bool {
        // Which run streams each event; a wake-up that streams nothing was dropped.
        let mut next = vec![0; self.tasks.len()];
        let mut run_of = Vec::with_capacity(t.events.len());
        let mut dropped = Vec::new();
        for (task, fixed, _) in &t.events {
            let runs = &self.tasks[*task];
            loop {
                let j = next[*task];
                let Some(r) = runs.get(j) else {
                    return false;
                };
                next[*task] += 1;
                if !r.streamed {
                    continue;
                }
                if r.fixed == *fixed {
                    run_of.push(j);
                    break;
                }
                if !r.fixed.is_wake() {
                    return false;
                }
                dropped.push((*task, j));
            }
        }
        for (task, runs) in self.tasks.iter().enumerate() {
            for (j, r) in runs.iter().enumerate().skip(next[task]) {
                if r.streamed && !r.fixed.is_wake() {
                    return false;
                }
                if r.fixed.is_wake() {
                    dropped.push((task, j));
                }
            }
        }
        let mut at: Vec<Vec<Option<usize>>> =
            self.tasks.iter().map(|r| vec![None; r.len()]).collect();
        let mut prev = 0;
        for ((task, _, read), &j) in t.events.iter().zip(&run_of) {
            let r = self.tasks[*task][j];
            let Some(ra) = (r.lo.max(prev)..=r.hi).find(|&ra| self.can_read(ra, r.hi, read)) else {
                return false;
            };
            at[*task][j] = Some(ra);
            prev = ra;
        }
        // A dropped wake-up read where no excluder's call was in flight. (An entry that
        // streamed nothing may have run anywhere in its window: its earliest world is
        // taken, which only makes dropping harder.)
        let in_flight: Vec<(usize, usize)> = self
            .calls
            .iter()
            .map(|&(task, entry, ret)| {
                let from = at[task][entry].unwrap_or(self.tasks[task][entry].lo);
                let to = ret.and_then(|r| at[task][r]).unwrap_or(usize::MAX);
                (from, to)
            })
            .collect();
        dropped.iter().all(|&(task, j)| {
            let w = self.tasks[task][j];
            (w.lo..=w.hi).any(|p| in_flight.iter().all(|&(from, to)| p < from || p >= to))
        })
    }

    /// Reads `vm_refcnt` at world `ra`, then `vm_lock_seq` and `mm_lock_seq` in that
    /// order at or before world `hi`, and sees `read`.
    fn can_read(&self, ra: usize, hi: usize, read: &Read) -> bool {
        let w = &self.worlds;
        w[ra][0] == read.refcnt
            && (ra..=hi).any(|la| {
                w[la][1] == read.vm_lock_seq
                    && (la..=hi).any(|sa| (w[la][1] == w[sa][2]) == read.locked)
            })
    }
}

/// The signatures of the bugs' projections (all read points, both entry modes) that no
/// fixed-read signature of `reference` matches but some correct execution shows with its
/// reads placed run by run, with the same tasks. Scenarios whose correct executions are
/// too many to enumerate are left out (the bugs are not judged there).
pub(super) fn shown_by_correct(
    g: Generation,
    budget: Budget,
    reference: &HashSet<u64>,
    judged: &[Scenario],
) -> HashSet<u64> {
    let mut shown = HashSet::new();
    for sc in judged {
        let mut targets = bug_targets(g, budget, &sc.roles, reference);
        search(g, sc, usize::MAX, &mut targets, &mut shown);
    }
    shown
}

/// Match `targets` (by shape) against up to `cap` correct executions of `sc`: each one
/// a correct execution shows goes from `targets` into `shown`.
fn search(
    g: Generation,
    sc: &Scenario,
    cap: usize,
    targets: &mut HashMap<u64, Vec<(u64, Target)>>,
    shown: &mut HashSet<u64>,
) {
    let correct = Config {
        generation: g,
        bug: None,
    };
    for_each_execution_up_to(&correct, World::new(&sc.roles), cap, &mut |x| {
        let wanted = |shape| targets.get(&shape).is_some_and(|t| !t.is_empty());
        for s in Shown::of(g, x, sc.untraced, wanted) {
            if let Some(ts) = targets.get_mut(&s.shape) {
                ts.retain(|(sig, t)| {
                    let hit = s.shows(t);
                    if hit {
                        shown.insert(*sig);
                    }
                    !hit
                });
            }
        }
    });
}

/// The signatures of `targets` (projections of executions of `sc`) that a correct
/// execution of `sc` with one more reader, untraced, streams with its reads placed run
/// by run. At most `cap` of those executions are searched (a match is a witness either
/// way).
pub(super) fn shown_with_untraced_reader(
    g: Generation,
    sc: &Scenario,
    targets: &[&Vec<Vec<Event>>],
    cap: usize,
) -> HashSet<u64> {
    let mut by_shape: HashMap<u64, Vec<(u64, Target)>> = HashMap::new();
    let mut seen = HashSet::new();
    for per_task in targets {
        let sig = signature(per_task);
        if seen.insert(sig) {
            let t = Target::of(per_task);
            by_shape
                .entry(t.shape(per_task.len()))
                .or_default()
                .push((sig, t));
        }
    }
    let open = sc.with_untraced_reader();
    if open.roles.len() > vmatrace_common::model::machine::MAX_TASKS {
        return HashSet::new();
    }
    let mut shown = HashSet::new();
    search(g, &open, cap, &mut by_shape, &mut shown);
    shown
}

/// The projections of every bug's executions of `roles` that show a violation and that
/// no signature of `reference` matches, by shape.
fn bug_targets(
    g: Generation,
    budget: Budget,
    roles: &[Role],
    reference: &HashSet<u64>,
) -> HashMap<u64, Vec<(u64, Target)>> {
    let mut targets: HashMap<u64, Vec<(u64, Target)>> = HashMap::new();
    let mut seen = HashSet::new();
    for bug in Bug::ALL {
        let cfg = Config {
            generation: g,
            bug: Some(bug),
        };
        executions(
            &cfg,
            World::new(roles),
            budget.sampled_executions,
            &mut |x| {
                if x.violation().is_none() {
                    return;
                }
                for reads in READS {
                    for entries in ENTRIES {
                        let per_task = project(g, x, (reads, entries), 0);
                        let sig = signature(&per_task);
                        if reference.contains(&sig) || !seen.insert(sig) {
                            continue;
                        }
                        let t = Target::of(&per_task);
                        targets
                            .entry(t.shape(per_task.len()))
                            .or_default()
                            .push((sig, t));
                    }
                }
            },
        );
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::conformance::for_each_execution;

    /// Every correct execution of the scenario named `name` on 7.0.
    fn correct_executions(name: &str, f: &mut impl FnMut(&Execution)) {
        let g = Generation::V7_0;
        let cfg = Config {
            generation: g,
            bug: None,
        };
        let sc = scenarios(g).into_iter().find(|s| s.name == name);
        let sc = sc.expect("a scenario of that name");
        for_each_execution(&cfg, World::new(&sc.roles), f);
    }

    /// A projection as a target, and `x` prepared to be matched against it.
    fn target_and_shown(x: &Execution, per_task: &[Vec<Event>]) -> (Target, Vec<Shown>) {
        let t = Target::of(per_task);
        let shape = t.shape(per_task.len());
        let shown = Shown::of(Generation::V7_0, x, 0, |s| s == shape);
        (t, shown)
    }

    /// Every fixed placement of the reads (early, late, spread) is one of the
    /// placements the search tries: each correct execution shows its own projections.
    #[test]
    fn a_correct_execution_shows_each_of_its_projections() {
        let mut checked = 0;
        correct_executions("reader + detacher", &mut |x| {
            for reads in READS {
                for entries in ENTRIES {
                    let per_task = project(Generation::V7_0, x, (reads, entries), 0);
                    let (t, shown) = target_and_shown(x, &per_task);
                    assert!(
                        shown.iter().any(|s| s.shows(&t)),
                        "{reads:?} {entries:?}\n{}",
                        x.describe()
                    );
                    checked += 1;
                }
            }
        });
        assert!(checked > 1000, "{checked}");
    }

    /// A sample no world of the run's window holds is not shown.
    #[test]
    fn a_sample_outside_the_window_is_not_shown() {
        let mut x0 = None;
        correct_executions("reader + writer", &mut |x| {
            if x0.is_none() {
                x0 = Some(Execution {
                    initial: x.initial,
                    steps: x.steps.clone(),
                });
            }
        });
        let x = x0.expect("an execution");
        let per_task = project(Generation::V7_0, &x, (Reads::Early, Entries::Streamed), 0);
        let (mut t, shown) = target_and_shown(&x, &per_task);
        assert!(shown[0].shows(&t));
        t.events[0].2.refcnt = 0x4000_0007;
        assert!(!shown[0].shows(&t));
    }
}
