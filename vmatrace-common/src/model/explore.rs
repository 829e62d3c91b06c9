//! Exhaustive exploration of every interleaving of a [`World`]'s tasks.
//!
//! Breadth-first over all reachable worlds (so a counterexample is a shortest trace),
//! checking the kernel's documented invariants on every world and every step, and
//! looking at every world where nothing can move: those must have every task finished,
//! otherwise a waiter sleeps forever (a lost wake-up if its condition already holds).

use std::{collections::HashMap, fmt, format, string::String, vec::Vec};

use super::{
    machine::{ModelConfig, Op, Outcome, Pc, Role, Step, Task, World},
    refcnt::{self, F},
};

/// The properties checked (the kernel's own statements, `docs/protocol.md#invariants`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Invariant {
    /// A reader's increment succeeded although the flag was set.
    ReaderIncWhileFlagSet,
    /// A reader holds the VMA while the excluder is past its wait.
    ReaderWhileExcluded,
    /// A reader holds the VMA while it is write-locked.
    ReaderWhileWriteLocked,
    /// The flag is set iff exactly one task is between its add and its sub.
    FlagHeldByOneTask,
    /// `vm_refcnt < 2F`.
    RefcountInRange,
    /// An excluder past its wait sees exactly F+1 (write) / F (detach).
    ExclusionEndsAtTarget,
    /// Once the count is at a waiter's target it stays there until the waiter moves:
    /// the woken waiter sees its target.
    TargetStable,
    /// End-exclude of a write leaves exactly 1 (no reader can have entered).
    WriteEndsAttached,
    /// A completed detach leaves 0.
    DetachEndsAtZero,
    /// `vma_mark_attached` only on a detached VMA (its `WARN_ON_ONCE`).
    AttachOnlyDetached,
    /// A waiter sleeps with its condition true and nobody left to wake it.
    NoLostWakeup,
    /// Tasks blocked forever with their condition false.
    NoDeadlock,
    /// When every task is done: count 1 (or 0 after a detach), no lock, no waiter.
    CleanEnd,
}

impl Invariant {
    pub const fn key(self) -> &'static str {
        match self {
            Invariant::ReaderIncWhileFlagSet => "reader_inc_while_flag_set",
            Invariant::ReaderWhileExcluded => "reader_while_excluded",
            Invariant::ReaderWhileWriteLocked => "reader_while_write_locked",
            Invariant::FlagHeldByOneTask => "flag_held_by_one_task",
            Invariant::RefcountInRange => "refcount_in_range",
            Invariant::ExclusionEndsAtTarget => "exclusion_ends_at_target",
            Invariant::TargetStable => "woken_waiter_sees_target",
            Invariant::WriteEndsAttached => "write_ends_attached",
            Invariant::DetachEndsAtZero => "detach_ends_at_zero",
            Invariant::AttachOnlyDetached => "attach_only_detached",
            Invariant::NoLostWakeup => "no_lost_wakeup",
            Invariant::NoDeadlock => "no_deadlock",
            Invariant::CleanEnd => "clean_end",
        }
    }
}

/// A shortest path from the initial world to a violation.
#[derive(Clone, Debug)]
pub struct Counterexample {
    pub invariant: Invariant,
    pub detail: String,
    pub initial: World,
    pub trace: Vec<(Step, World)>,
    pub config: ModelConfig,
}

#[derive(Clone, Debug)]
pub struct Exploration {
    pub states: usize,
    pub transitions: usize,
    /// Worlds where every task finished.
    pub finished: usize,
    pub violation: Option<Counterexample>,
    /// The state limit was hit before the space was exhausted.
    pub truncated: bool,
}

/// Explore every interleaving from `initial`, up to `max_states` worlds.
pub fn explore(cfg: &ModelConfig, initial: World, max_states: usize) -> Exploration {
    let mut worlds: Vec<World> = Vec::new();
    let mut parent: Vec<Option<(u32, Step)>> = Vec::new();
    let mut index: HashMap<World, u32> = HashMap::new();
    worlds.push(initial);
    parent.push(None);
    index.insert(initial, 0);
    let mut transitions = 0usize;
    let mut finished = 0usize;
    let mut next = 0usize;
    let mut succ: Vec<(Step, World)> = Vec::new();
    let found = |at: usize,
                 extra: Option<(Step, World)>,
                 inv: Invariant,
                 detail: String,
                 worlds: &Vec<World>,
                 parent: &Vec<Option<(u32, Step)>>| {
        let mut trace = Vec::new();
        let mut i = at;
        while let Some((p, step)) = parent[i] {
            trace.push((step, worlds[i]));
            i = p as usize;
        }
        trace.reverse();
        trace.extend(extra);
        Counterexample {
            invariant: inv,
            detail,
            initial,
            trace,
            config: *cfg,
        }
    };
    while next < worlds.len() {
        let at = next;
        next += 1;
        let w = worlds[at];
        if let Some((inv, detail)) = check_world(&w) {
            let cx = found(at, None, inv, detail, &worlds, &parent);
            return done(worlds.len(), transitions, finished, Some(cx), false);
        }
        succ.clear();
        w.successors(cfg, |s, n| succ.push((s, n)));
        if succ.is_empty() {
            if let Some((inv, detail)) = check_stuck(&w, initial.vm_refcnt) {
                let cx = found(at, None, inv, detail, &worlds, &parent);
                return done(worlds.len(), transitions, finished, Some(cx), false);
            }
            finished += 1;
        }
        for &(step, n) in &succ {
            transitions += 1;
            if let Some((inv, detail)) = check_step(&w, step, &n) {
                let cx = found(at, Some((step, n)), inv, detail, &worlds, &parent);
                return done(worlds.len(), transitions, finished, Some(cx), false);
            }
            if index.contains_key(&n) {
                continue;
            }
            if worlds.len() >= max_states {
                return done(worlds.len(), transitions, finished, None, true);
            }
            index.insert(n, worlds.len() as u32);
            worlds.push(n);
            parent.push(Some((at as u32, step)));
        }
    }
    done(worlds.len(), transitions, finished, None, false)
}

fn done(
    states: usize,
    transitions: usize,
    finished: usize,
    violation: Option<Counterexample>,
    truncated: bool,
) -> Exploration {
    Exploration {
        states,
        transitions,
        finished,
        violation,
        truncated,
    }
}

/// A reader that holds a read lock: past the re-check, before its put's decrement.
fn holds_read_lock(t: &Task) -> bool {
    matches!(t.pc, Pc::ReadHolding | Pc::ReadPut { locked: true })
}

pub fn check_world(w: &World) -> Option<(Invariant, String)> {
    let r = w.vm_refcnt;
    if refcnt::out_of_range(r) {
        return Some((Invariant::RefcountInRange, format!("vm_refcnt = {r:#x}")));
    }
    let holders: Vec<usize> = (0..w.tasks.len())
        .filter(|&i| w.tasks[i].holds_flag())
        .collect();
    if holders.len() > 1 || refcnt::flag_set(r) != (holders.len() == 1) {
        return Some((
            Invariant::FlagHeldByOneTask,
            format!("vm_refcnt = {r:#x}, tasks between add and sub of F: {holders:?}"),
        ));
    }
    let readers: Vec<usize> = (0..w.tasks.len())
        .filter(|&i| holds_read_lock(&w.tasks[i]))
        .collect();
    if !readers.is_empty() {
        if let Some(x) = w.tasks.iter().position(Task::readers_excluded) {
            return Some((
                Invariant::ReaderWhileExcluded,
                format!("readers {readers:?} hold the VMA while task {x} has them excluded"),
            ));
        }
        if w.write_locked() {
            return Some((
                Invariant::ReaderWhileWriteLocked,
                format!(
                    "readers {readers:?} hold the VMA while vm_lock_seq == mm_lock_seq = {}",
                    w.mm_lock_seq
                ),
            ));
        }
    }
    for (i, t) in w.tasks.iter().enumerate() {
        let target = match t.pc {
            Pc::StoreSeq { excluded: true } | Pc::EndExclude { detaching: false } => F + 1,
            Pc::EndExclude { detaching: true } => F,
            _ => continue,
        };
        if r != target {
            return Some((
                Invariant::ExclusionEndsAtTarget,
                format!("task {i} past its wait sees vm_refcnt = {r:#x}, target {target:#x}"),
            ));
        }
    }
    if w.tasks.iter().any(|t| t.outcome == Outcome::Detached) && r != 0 {
        return Some((
            Invariant::DetachEndsAtZero,
            format!("detached VMA has vm_refcnt = {r:#x}"),
        ));
    }
    None
}

pub fn check_step(before: &World, step: Step, after: &World) -> Option<(Invariant, String)> {
    match step.op {
        Op::IncNotZeroLimited { result: Ok(old) } if refcnt::flag_set(old) => {
            return Some((
                Invariant::ReaderIncWhileFlagSet,
                format!("reader {} incremented {old:#x}", step.task),
            ));
        }
        Op::MarkAttached { was } if was != 0 => {
            return Some((
                Invariant::AttachOnlyDetached,
                format!("vma_mark_attached over vm_refcnt = {was:#x}"),
            ));
        }
        Op::EndExclude {
            detaching: false, ..
        } if after.vm_refcnt != 1 => {
            return Some((
                Invariant::WriteEndsAttached,
                format!("end-exclude left vm_refcnt = {:#x}", after.vm_refcnt),
            ));
        }
        Op::EndExclude {
            detaching: true, ..
        } if after.vm_refcnt != 0 => {
            return Some((
                Invariant::DetachEndsAtZero,
                format!("detach end-exclude left vm_refcnt = {:#x}", after.vm_refcnt),
            ));
        }
        _ => {}
    }
    // A waiter whose target is reached must find it when it runs again.
    for (i, t) in before.tasks.iter().enumerate() {
        let detaching = match t.pc {
            Pc::PrepareWait { detaching }
            | Pc::WaitCheck { detaching }
            | Pc::Schedule { detaching } => detaching,
            _ => continue,
        };
        if i != step.task as usize
            && before.vm_refcnt == refcnt::exclude_target(detaching)
            && after.vm_refcnt != before.vm_refcnt
        {
            return Some((
                Invariant::TargetStable,
                format!(
                    "task {} moved vm_refcnt {:#x} → {:#x} while task {i} waits for it",
                    step.task, before.vm_refcnt, after.vm_refcnt
                ),
            ));
        }
    }
    None
}

/// Nothing can move: every task must be done, and the end state clean.
pub fn check_stuck(w: &World, initial_refcnt: u32) -> Option<(Invariant, String)> {
    if let Some(i) = w.tasks.iter().position(|t| !t.done()) {
        let t = &w.tasks[i];
        let detail = format!(
            "task {i} ({:?}) blocked at {:?}, vm_refcnt = {:#x}, vma_writer_wait = {:?}",
            t.role, t.pc, w.vm_refcnt, w.vma_writer_wait
        );
        return match t.waiting() {
            Some(d) if w.vm_refcnt == refcnt::exclude_target(d) => {
                Some((Invariant::NoLostWakeup, detail))
            }
            _ => Some((Invariant::NoDeadlock, detail)),
        };
    }
    // A completed detach leaves 0, an attach 1; otherwise the count is back where it
    // started (readers and writers leave it as they found it).
    let detached = w.tasks.iter().any(|t| t.outcome == Outcome::Detached);
    let attached = w
        .tasks
        .iter()
        .any(|t| matches!(t.role, Role::Attacher { .. }));
    let expect = if detached {
        0
    } else if attached {
        1
    } else {
        initial_refcnt
    };
    if w.vm_refcnt != expect || w.mmap_lock_owner.is_some() || w.vma_writer_wait.is_some() {
        return Some((
            Invariant::CleanEnd,
            format!(
                "all done with vm_refcnt = {:#x} (expected {expect}), mmap_lock owner {:?}, \
                 vma_writer_wait {:?}",
                w.vm_refcnt, w.mmap_lock_owner, w.vma_writer_wait
            ),
        ));
    }
    None
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Idle => "idle",
        Role::Reader => "reader",
        Role::Writer {
            killable: true,
            detach: _,
        } => "killable writer",
        Role::Writer {
            killable: false,
            detach: true,
        } => "detacher",
        Role::Writer {
            killable: false,
            detach: false,
        } => "writer",
        Role::Attacher { detach: false } => "attacher",
        Role::Attacher { detach: true } => "attacher+detacher",
    }
}

/// `0x40000002` as `F+2`, small values as decimals.
fn short(r: u32) -> String {
    if refcnt::flag_set(r) {
        format!("F+{}", r - F)
    } else {
        format!("{r}")
    }
}

fn world_line(w: &World) -> String {
    format!(
        "vm_refcnt={} vm_lock_seq={} mm_lock_seq={} mmap_lock={} waiter={}",
        short(w.vm_refcnt),
        if w.vm_lock_seq == u32::MAX {
            "UINT_MAX".into()
        } else {
            format!("{}", w.vm_lock_seq)
        },
        w.mm_lock_seq,
        w.mmap_lock_owner.map_or("-".into(), |t| format!("T{t}")),
        w.vma_writer_wait.map_or("-".into(), |t| format!("T{t}")),
    )
}

impl fmt::Display for Counterexample {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.config.generation;
        writeln!(
            f,
            "counterexample: {} violated ({}), generation {}, bug {:?}",
            self.invariant.key(),
            self.detail,
            g.key(),
            self.config.bug.map(|b| b.key())
        )?;
        let roles: Vec<String> = self
            .initial
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.role != Role::Idle)
            .map(|(i, t)| format!("T{i}={}", role_name(t.role)))
            .collect();
        writeln!(f, "  tasks: {}", roles.join(", "))?;
        writeln!(f, "  start: {}", world_line(&self.initial))?;
        for (n, (step, w)) in self.trace.iter().enumerate() {
            let (func, what) = step.op.label(g);
            writeln!(
                f,
                "  {:>3}. T{} {func}: {what}\n        → {}",
                n + 1,
                step.task,
                world_line(w)
            )?;
        }
        Ok(())
    }
}
