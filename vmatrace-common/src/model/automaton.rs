//! The automaton of one VMA's lock state, generated from the step machine.
//!
//! Every reachable world of two representative scenarios (a new VMA attached and
//! unmapped under the mmap write lock while readers try it; an attached VMA with two
//! readers, a writer, a detacher and, where the generation has it, a killable writer
//! with a fatal signal) is projected
//! onto the VMA's abstract state (what `vm_refcnt` and the seqs say), and every step that
//! changes that state becomes a labelled edge. Nothing here is written by hand: change the
//! machine and the picture changes with it.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    format,
    string::String,
    vec,
    vec::Vec,
};

use super::{
    Generation,
    machine::{ModelConfig, Pc, Role, World},
    refcnt::{self, F},
};
use crate::event::EventKind;

/// One edge: a step of a kernel function that moves the VMA between abstract states.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Transition {
    pub from: &'static str,
    pub to: &'static str,
    /// Kernel function.
    pub function: &'static str,
    /// What the step does.
    pub action: &'static str,
    /// The tracer's event for it on this generation, if visible.
    pub event: Option<EventKind>,
}

#[derive(Clone, Debug)]
pub struct Automaton {
    pub generation: Generation,
    pub initial: &'static str,
    /// Abstract states, in a stable order.
    pub states: Vec<&'static str>,
    pub transitions: Vec<Transition>,
    /// Concrete worlds explored to build it.
    pub worlds: usize,
}

/// The abstract states of one VMA's lock: what `vm_refcnt` and the seqs say, with
/// whether an exclusion is for a write or a detach. The validator tracks a coarser
/// phase of each (`Phase::of_model` in the daemon).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmaState {
    Detached,
    Attached,
    ReadLocked,
    WriteLocked,
    WriteLockedEphemeralReaders,
    WriteWaiting,
    WriteExcluded,
    DetachWaiting,
    DetachExcluded,
    OutOfRange,
}

impl VmaState {
    pub const ALL: [VmaState; 10] = [
        VmaState::Detached,
        VmaState::Attached,
        VmaState::ReadLocked,
        VmaState::WriteLocked,
        VmaState::WriteLockedEphemeralReaders,
        VmaState::WriteWaiting,
        VmaState::WriteExcluded,
        VmaState::DetachWaiting,
        VmaState::DetachExcluded,
        VmaState::OutOfRange,
    ];

    /// The label the automaton's DOT and JSON use.
    pub const fn label(self) -> &'static str {
        match self {
            VmaState::Detached => "detached (0)",
            VmaState::Attached => "attached (1)",
            VmaState::ReadLocked => "read-locked (1+n)",
            VmaState::WriteLocked => "write-locked (1)",
            VmaState::WriteLockedEphemeralReaders => "write-locked + ephemeral readers (1+n)",
            VmaState::WriteWaiting => "write: waiting for readers (F+1+n)",
            VmaState::WriteExcluded => "write: readers excluded (F+1)",
            VmaState::DetachWaiting => "detach: waiting for readers (F+n)",
            VmaState::DetachExcluded => "detach: readers excluded (F)",
            VmaState::OutOfRange => "out of range (>= 2F)",
        }
    }

    pub fn of_label(label: &str) -> Option<VmaState> {
        VmaState::ALL.into_iter().find(|s| s.label() == label)
    }
}

/// The abstract state of the VMA in a world.
pub fn vma_state(w: &World) -> VmaState {
    let r = w.vm_refcnt;
    if refcnt::out_of_range(r) {
        return VmaState::OutOfRange;
    }
    if refcnt::flag_set(r) {
        let detaching = w.tasks.iter().any(|t| {
            matches!(
                t.pc,
                Pc::PrepareWait { detaching: true }
                    | Pc::WaitCheck { detaching: true }
                    | Pc::Schedule { detaching: true }
                    | Pc::EndExclude { detaching: true }
            )
        });
        return match (detaching, r) {
            (true, r) if r == F => VmaState::DetachExcluded,
            (true, _) => VmaState::DetachWaiting,
            (false, r) if r == F + 1 => VmaState::WriteExcluded,
            (false, _) => VmaState::WriteWaiting,
        };
    }
    match (r, w.write_locked()) {
        (0, _) => VmaState::Detached,
        (1, false) => VmaState::Attached,
        (1, true) => VmaState::WriteLocked,
        (_, false) => VmaState::ReadLocked,
        (_, true) => VmaState::WriteLockedEphemeralReaders,
    }
}

/// The abstract state's label.
pub fn abstract_state(w: &World) -> &'static str {
    vma_state(w).label()
}

/// Build the automaton for `generation` by exhaustive exploration.
pub fn automaton(generation: Generation) -> Automaton {
    let cfg = ModelConfig {
        generation,
        bug: None,
    };
    let mut roles = vec![
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
    ];
    if generation.has_killable_writers() {
        roles.push(Role::Writer {
            killable: true,
            detach: false,
        });
    }
    // A VMA is born detached (vm_area_alloc): one world follows a new VMA through
    // attach and munmap with readers around, the other an attached VMA through writers,
    // a detach and (where it exists) a killed fork.
    let born = World::new_detached(&[Role::Attacher { detach: true }, Role::Reader, Role::Reader]);
    let attached = World::new(&roles);
    let mut seen: HashSet<World> = HashSet::new();
    let mut stack = vec![born, attached];
    let mut edges: BTreeSet<Transition> = BTreeSet::new();
    let mut states: BTreeMap<&'static str, ()> = BTreeMap::new();
    while let Some(w) = stack.pop() {
        if !seen.insert(w) {
            continue;
        }
        let from = abstract_state(&w);
        states.insert(from, ());
        w.successors(&cfg, |step, n| {
            let to = abstract_state(&n);
            if to != from {
                let (function, action) = step.op.label(generation);
                edges.insert(Transition {
                    from,
                    to,
                    function,
                    action,
                    event: step.op.observed_as(generation),
                });
            }
            stack.push(n);
        });
    }
    Automaton {
        generation,
        initial: abstract_state(&born),
        states: states.into_keys().collect(),
        transitions: edges.into_iter().collect(),
        worlds: seen.len(),
    }
}

fn esc(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl Automaton {
    /// Graphviz DOT: one node per abstract state, one edge per (from, to) pair with every
    /// step that makes it, as `function: action [event]`.
    pub fn to_dot(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "// vm_refcnt automaton for {} generated from the model ({} worlds explored)\n",
            self.generation.label(),
            self.worlds
        ));
        out.push_str(&format!(
            "digraph vma_lock_{} {{\n",
            self.generation.key().replace('.', "_")
        ));
        // Top to bottom: left to right spreads the states over a strip too wide to read.
        out.push_str("  rankdir=TB;\n  node [shape=box, style=rounded, fontname=\"monospace\"];\n");
        out.push_str("  edge [fontname=\"monospace\", fontsize=9];\n");
        out.push_str("  __start [shape=point];\n");
        out.push_str(&format!("  __start -> \"{}\";\n", esc(self.initial)));
        for s in &self.states {
            let shape = if s.starts_with("detached") {
                " [peripheries=2]"
            } else {
                ""
            };
            out.push_str(&format!("  \"{}\"{shape};\n", esc(s)));
        }
        let mut grouped: BTreeMap<(&str, &str), Vec<String>> = BTreeMap::new();
        for t in &self.transitions {
            let ev = t.event.map_or(String::new(), |e| format!(" [{}]", e.key()));
            grouped
                .entry((t.from, t.to))
                .or_default()
                .push(format!("{}: {}{ev}", t.function, t.action));
        }
        for ((from, to), labels) in grouped {
            out.push_str(&format!(
                "  \"{}\" -> \"{}\" [label=\"{}\"];\n",
                esc(from),
                esc(to),
                esc(&labels.join("\n")).replace('\n', "\\n")
            ));
        }
        out.push_str("}\n");
        out
    }
}
