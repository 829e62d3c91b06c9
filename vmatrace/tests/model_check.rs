//! Exhaustive check of the refcount model: every interleaving of readers, a writer, a
//! detacher and a killable writer (with a fatal signal) on one VMA, for each generation,
//! against the kernel's documented invariants. Broken variants must yield counterexamples.

use vmatrace_common::model::{
    Generation,
    explore::{Exploration, Invariant, explore},
    machine::{Bug, ModelConfig, Role, World},
};

const MAX_STATES: usize = 3_000_000;

const READER: Role = Role::Reader;
const WRITER: Role = Role::Writer {
    killable: false,
    detach: false,
};
const DETACHER: Role = Role::Writer {
    killable: false,
    detach: true,
};
const KILLABLE: Role = Role::Writer {
    killable: true,
    detach: false,
};

fn check(generation: Generation, bug: Option<Bug>, roles: &[Role]) -> Exploration {
    let cfg = ModelConfig { generation, bug };
    let started = std::time::Instant::now();
    let x = explore(&cfg, World::new(roles), MAX_STATES);
    println!(
        "generation {} bug {:?} roles {roles:?}: {} states, {} transitions, {} finished \
         worlds, {:?}",
        generation.key(),
        bug.map(Bug::key),
        x.states,
        x.transitions,
        x.finished,
        started.elapsed()
    );
    assert!(!x.truncated, "state limit {MAX_STATES} reached");
    x
}

fn assert_holds(x: &Exploration) {
    if let Some(cx) = &x.violation {
        panic!("{cx}");
    }
    assert!(x.finished > 0, "no interleaving finished");
}

#[test]
fn two_readers_writer_detacher_killable_writer_all_generations() {
    for &g in Generation::ALL {
        let x = check(g, None, &[READER, READER, WRITER, DETACHER, KILLABLE]);
        assert_holds(&x);
        // Every task kind really ran: the space is far larger than one schedule.
        assert!(x.states > 1_000, "{} states", x.states);
    }
}

#[test]
fn readers_racing_a_detach_with_spurious_readers() {
    // Readers may hold the VMA when the detacher's write lock starts: the ephemeral /
    // spurious-reader paths and the detach slow path (target F) are all reached.
    for &g in Generation::ALL {
        assert_holds(&check(g, None, &[READER, READER, READER, DETACHER]));
    }
}

#[test]
fn killable_writer_races_readers_and_signal() {
    let x = check(Generation::V7_0, None, &[READER, READER, KILLABLE, WRITER]);
    assert_holds(&x);
}

#[test]
fn the_fatal_signal_path_is_reached() {
    // With the signal, some finished world has the killable writer interrupted; on 6.15
    // (no vma_start_write_killable) none does. Checked by running to that outcome.
    use vmatrace_common::model::machine::Outcome;
    for &(g, expect) in &[(Generation::V7_0, true), (Generation::V6_15, false)] {
        let cfg = ModelConfig {
            generation: g,
            bug: None,
        };
        let mut seen = false;
        let mut stack = vec![World::new(&[READER, KILLABLE])];
        let mut visited = std::collections::HashSet::new();
        while let Some(w) = stack.pop() {
            if !visited.insert(w) {
                continue;
            }
            seen |= w.tasks[1].outcome == Outcome::WriteInterrupted;
            w.successors(&cfg, |_, n| stack.push(n));
        }
        assert_eq!(seen, expect, "generation {}", g.key());
    }
}

fn assert_counterexample(bug: Bug, roles: &[Role], expect: &[Invariant]) {
    let x = check(Generation::V7_0, Some(bug), roles);
    let Some(cx) = &x.violation else {
        panic!("broken variant {} passed the check", bug.key());
    };
    println!("{cx}");
    assert!(
        expect.contains(&cx.invariant),
        "{} found {} instead of {expect:?}",
        bug.key(),
        cx.invariant.key()
    );
    assert!(!cx.trace.is_empty());
    // The printed trace names kernel functions and ends in the violating world.
    let text = cx.to_string();
    assert!(
        text.contains(cx.invariant.key()) && text.contains("vm_refcnt="),
        "{text}"
    );
}

#[test]
fn broken_reader_ignoring_the_flag_yields_a_counterexample() {
    assert_counterexample(
        Bug::ReaderIgnoresFlag,
        &[READER, READER, WRITER, DETACHER],
        &[Invariant::ReaderIncWhileFlagSet],
    );
}

#[test]
fn broken_put_that_never_wakes_yields_a_lost_wakeup() {
    assert_counterexample(
        Bug::PutNeverWakes,
        &[READER, READER, WRITER, DETACHER],
        &[Invariant::NoLostWakeup],
    );
}

#[test]
fn broken_wait_checking_before_registering_yields_a_lost_wakeup() {
    assert_counterexample(
        Bug::CheckBeforeRegister,
        &[READER, WRITER],
        &[Invariant::NoLostWakeup],
    );
}

#[test]
fn the_races_are_reached() {
    // Without this, a model that never reaches the interesting paths would pass.
    use std::collections::HashSet;
    use vmatrace_common::model::machine::Op;
    let cfg = ModelConfig {
        generation: Generation::V7_0,
        bug: None,
    };
    let mut seen: HashSet<&'static str> = HashSet::new();
    let mut stack = vec![World::new(&[READER, READER, KILLABLE, DETACHER])];
    let mut visited = std::collections::HashSet::new();
    while let Some(w) = stack.pop() {
        if !visited.insert(w) {
            continue;
        }
        w.successors(&cfg, |s, n| {
            let what = match s.op {
                Op::Recheck { locked: true } => "ephemeral reader (re-check fails)",
                Op::IncNotZeroLimited { result: Err(0) } => "reader finds it detached",
                Op::IncNotZeroLimited { result: Err(_) } => "reader refused by the flag",
                Op::DetachDec { zero: false } => "spurious reader during detach",
                Op::AddExcludeFlag {
                    detaching: true,
                    detached: true,
                } => "spurious reader gone before add",
                Op::AddExcludeFlag {
                    detaching: true,
                    detached: false,
                } => "detach excludes with target F",
                Op::Schedule => "waiter woken",
                Op::WaitCheck {
                    interrupted: true, ..
                } => "killable wait interrupted",
                Op::RcuwaitWakeUp { woke: true } => "put wakes the excluder",
                _ => "",
            };
            seen.insert(what);
            stack.push(n);
        });
    }
    for want in [
        "ephemeral reader (re-check fails)",
        "reader finds it detached",
        "reader refused by the flag",
        "spurious reader during detach",
        "spurious reader gone before add",
        "detach excludes with target F",
        "waiter woken",
        "killable wait interrupted",
        "put wakes the excluder",
    ] {
        assert!(seen.contains(want), "never reached: {want}");
    }
}

#[test]
fn three_readers_and_three_writers() {
    // The largest configuration (MAX_TASKS): still a few seconds in a debug build.
    let x = check(
        Generation::V7_0,
        None,
        &[READER, READER, READER, WRITER, DETACHER, KILLABLE],
    );
    assert_holds(&x);
}

#[test]
fn new_vma_attached_under_the_write_lock_races_readers() {
    // vm_area_alloc → vma_start_write on the detached VMA (no exclusion) →
    // vma_mark_attached → (munmap) vma_mark_detached, with readers finding it detached,
    // making ephemeral increments once attached, and a writer after the unlock.
    use vmatrace_common::model::machine::Role;
    for &g in Generation::ALL {
        let cfg = ModelConfig {
            generation: g,
            bug: None,
        };
        for detach in [false, true] {
            let roles = [
                Role::Attacher { detach },
                READER,
                READER,
                if detach { READER } else { WRITER },
            ];
            let x = explore(&cfg, World::new_detached(&roles), MAX_STATES);
            println!(
                "generation {} attacher(detach={detach}): {} states, {} finished",
                g.key(),
                x.states,
                x.finished
            );
            assert!(!x.truncated);
            assert_holds(&x);
        }
    }
}
