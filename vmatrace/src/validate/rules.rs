//! The validator's rules as data: one row per check the monitor makes.
//!
//! As in the kernel's runtime-verification monitors, a violation reads "event X not
//! expected in state Y"; each row says which events it judges, which anomaly kind it
//! reports, what the model expects there (the anomaly's `expected`, word for word), and
//! what the rule needs to decide on a stream whose tasks' events arrive in any order and
//! whose samples are read one field after another (its [`Basis`]), and for a sample
//! rule the predicate on the sample that breaks it (`breaks`). The validator's code
//! keeps the per-VMA state, decides where a row applies (which return value, whether
//! the flag is already known stuck) and settles the same-task, window and stream-end
//! rows; *what* is violated, and how it is reported, is this table.
//! `docs/anomaly-kinds.md` lists the same rows (a test fails when they differ), and
//! `Validator::without_rule` switches one off to show that the checks depend on it.

use vmatrace_common::{
    Event, EventKind,
    event::flags,
    model::refcnt::{self, F, VM_LOCK_SEQ_INIT},
};

use super::AnomalyKind;

/// What one event's sample says: its fields as the program read them, one after
/// another (docs/anomaly-kinds.md).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// `vm_refcnt`
    pub r: u32,
    /// `vm_lock_seq`
    pub l: u32,
    /// `mm->mm_lock_seq.sequence`, when read.
    pub s: Option<u32>,
}

impl Sample {
    pub fn of(ev: &Event) -> Option<Self> {
        if ev.vma == 0 || !ev.has(flags::VMA_FIELDS) || ev.has(flags::READ_FAILED) {
            return None;
        }
        Some(Self {
            r: ev.refcnt,
            l: ev.vm_lock_seq,
            s: ev.mm_seq(),
        })
    }

    pub fn write_locked(&self) -> Option<bool> {
        self.s.map(|s| refcnt::is_write_locked(self.l, s))
    }

    /// The exclusion flag set, in a count that is not out of range.
    fn flagged(self) -> bool {
        refcnt::flag_set(self.r) && !refcnt::out_of_range(self.r)
    }
}

/// What a rule needs to judge an out-of-order, non-atomic stream
/// (docs/anomaly-kinds.md, "How the rules stay free of false positives").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// One event's own fields: a fact that holds whatever other tasks do.
    Sample,
    /// One task's events, which arrive in program order.
    SameTask,
    /// Timestamps of another task's events bound a window the event must be outside of.
    Window,
    /// Only decidable once a finite stream (a trace, a simulation) has ended.
    StreamEnd,
}

impl Basis {
    pub const fn key(self) -> &'static str {
        match self {
            Basis::Sample => "sample",
            Basis::SameTask => "same task",
            Basis::Window => "window",
            Basis::StreamEnd => "stream end",
        }
    }
}

/// One check of the monitor.
#[derive(Debug)]
pub struct Rule {
    /// Stable name (the anomaly log's `rule`).
    pub name: &'static str,
    /// The events it judges; empty: every event that carries a sample.
    pub events: &'static [EventKind],
    pub kind: AnomalyKind,
    pub basis: Basis,
    /// What the model allows there.
    pub expected: &'static str,
    /// For a sample rule: whether a sample breaks it (where the row applies: which
    /// events, and the return value the handler checks first).
    pub breaks: Option<fn(Sample) -> bool>,
}

impl Rule {
    /// Whether `s` breaks this sample rule.
    pub fn broken_by(&self, s: Sample) -> bool {
        self.breaks.is_some_and(|f| f(s))
    }
}

use AnomalyKind as K;
use Basis as B;
use EventKind as E;

pub const REFCOUNT_IN_RANGE: Rule = Rule {
    name: "refcount_in_range",
    events: &[],
    kind: K::RefcountOutOfRange,
    basis: B::Sample,
    expected: "vm_refcnt < 2F (at most one exclusion at a time)",
    breaks: Some(|s| refcnt::out_of_range(s.r)),
};
pub const ONE_EXCLUDER: Rule = Rule {
    name: "one_excluder",
    events: &[E::WriteLockEnter, E::ExcludeEnter, E::DetachEnter],
    kind: K::ConcurrentExclusion,
    basis: B::Sample,
    expected: "flag clear when a write lock, an exclusion or a detach starts (the mmap write \
               lock admits one excluder per mm)",
    breaks: Some(|s| s.flagged()),
};
pub const WRITE_LOCK_TAKEN: Rule = Rule {
    name: "write_lock_taken",
    events: &[E::WriteLockExit],
    kind: K::WriteLockNotTaken,
    basis: B::Sample,
    expected: "vm_lock_seq == mm_lock_seq after __vma_start_write returned 0",
    breaks: Some(|s| s.write_locked() == Some(false)),
};
pub const WRITE_LOCK_ENDS_EXCLUSION: Rule = Rule {
    name: "write_lock_ends_exclusion",
    events: &[E::WriteLockExit],
    kind: K::ExclusionNotEnded,
    basis: B::Sample,
    expected: "exclusion flag removed by the time __vma_start_write returns (0 or -EINTR)",
    breaks: Some(|s| s.flagged()),
};
pub const WRITE_LOCK_EINTR_ONLY_KILLABLE: Rule = Rule {
    name: "write_lock_eintr_only_killable",
    events: &[E::WriteLockExit],
    kind: K::UnexpectedEintr,
    basis: B::SameTask,
    expected: "-EINTR only from vma_start_write_killable (TASK_KILLABLE, 6.19+)",
    breaks: None,
};
pub const EXCLUDE_REACHES_TARGET: Rule = Rule {
    name: "exclude_reaches_target",
    events: &[E::ExcludeExit],
    kind: K::ExcludeTargetMismatch,
    basis: B::Sample,
    expected: "vm_refcnt == F+1 (write) or F (detach) exactly when start-exclude returns \
               with readers excluded",
    breaks: None,
};
pub const EXCLUDE_DETACHED_AT_ZERO: Rule = Rule {
    name: "exclude_detached_at_zero",
    events: &[E::ExcludeExit],
    kind: K::ExcludeTargetMismatch,
    basis: B::Sample,
    expected: "vm_refcnt == 0 when start-exclude reports the VMA detached",
    breaks: Some(|s| s.r != 0 && !refcnt::out_of_range(s.r)),
};
pub const EXCLUDE_EINTR_ONLY_KILLABLE: Rule = Rule {
    name: "exclude_eintr_only_killable",
    events: &[E::ExcludeExit],
    kind: K::UnexpectedEintr,
    basis: B::SameTask,
    expected: "-EINTR only from a TASK_KILLABLE write-lock wait (6.19+), never from a detach",
    breaks: None,
};
pub const INTERRUPTED_EXCLUDE_ENDS_EXCLUSION: Rule = Rule {
    name: "interrupted_exclude_ends_exclusion",
    events: &[E::ExcludeExit],
    kind: K::ExclusionNotEnded,
    basis: B::Sample,
    expected: "exclusion flag removed by the time an interrupted start-exclude returns",
    breaks: Some(|s| s.flagged()),
};
pub const DETACH_AT_ZERO: Rule = Rule {
    name: "detach_at_zero",
    events: &[E::DetachExit],
    kind: K::DetachNotZero,
    basis: B::Sample,
    expected: "vm_refcnt == 0 when the detach returns",
    breaks: Some(|s| s.r != 0 && !refcnt::flag_set(s.r) && !refcnt::out_of_range(s.r)),
};
pub const DETACH_ENDS_EXCLUSION: Rule = Rule {
    name: "detach_ends_exclusion",
    events: &[E::DetachExit],
    kind: K::ExclusionNotEnded,
    basis: B::Sample,
    expected: "exclusion flag removed by the time the detach returns",
    breaks: Some(|s| s.flagged()),
};
pub const READER_NOT_WRITE_LOCKED: Rule = Rule {
    name: "reader_not_write_locked",
    events: &[E::ReaderAcquire],
    kind: K::ReaderWhileWriteLocked,
    basis: B::Sample,
    expected: "lock_vma_under_rcu fails while vm_lock_seq == mm_lock_seq",
    breaks: Some(|s| s.write_locked() == Some(true) && s.l != VM_LOCK_SEQ_INIT),
};
pub const READER_HOLDS_REFERENCE: Rule = Rule {
    name: "reader_holds_reference",
    events: &[E::ReaderAcquire],
    kind: K::ReaderWithoutReference,
    basis: B::Sample,
    expected: "vm_refcnt includes the reader's reference (2..F-1, or above F if an excluder \
               raced in)",
    breaks: Some(|s| matches!(s.r, 0 | 1) || s.r == F),
};
pub const PUT_HOLDS_REFERENCE: Rule = Rule {
    name: "put_holds_reference",
    events: &[E::ReaderRelease],
    kind: K::ReaderWithoutReference,
    basis: B::Sample,
    expected: "vma_refcount_put on a count that holds a read reference",
    breaks: Some(|s| s.r == 0 || s.r == F),
};
pub const READER_OUTSIDE_EXCLUSION: Rule = Rule {
    name: "reader_outside_exclusion",
    events: &[E::ReaderAcquire, E::ReaderRelease],
    kind: K::ReaderWhileExcluded,
    basis: B::Window,
    expected: "no reader holds the VMA between readers excluded (start-exclude's return) \
               and the end of the exclusion",
    breaks: None,
};
pub const READERS_DRAINED_BEFORE_STORE: Rule = Rule {
    name: "readers_drained_before_store",
    events: &[E::ReaderRelease],
    kind: K::ReaderWhileExcluded,
    basis: B::Window,
    expected: "no put reads the flag set and vm_lock_seq == mm_lock_seq between its time and \
               its task's next event, both inside a __vma_start_write call on its VMA, nor \
               at a time after that call's entry and before the writer's last event ahead \
               of its mmap write-unlock, when the writer did not detach the VMA in between \
               (where every detach is seen): the writer stores vm_lock_seq only after \
               readers drained and holds the mmap lock, so only its own detach could be \
               waiting",
    breaks: None,
};
pub const FREE_UNREFERENCED: Rule = Rule {
    name: "free_unreferenced",
    events: &[E::VmaFree],
    kind: K::FreeWhileReferenced,
    basis: B::Sample,
    expected: "vm_refcnt == 0 at vm_area_free",
    breaks: Some(|s| s.r != 0 && !refcnt::out_of_range(s.r)),
};
pub const PUT_WAKES_EXCLUDER: Rule = Rule {
    name: "put_wakes_excluder",
    events: &[E::ReaderRelease],
    kind: K::LostWakeup,
    basis: B::SameTask,
    expected: "rcuwait_wake_up by the task whose put left F or F+1, before its next event \
               (unless the excluder returned in between)",
    breaks: None,
};
pub const OWED_WAKE_BY_THE_END: Rule = Rule {
    name: "owed_wake_by_the_end",
    events: &[E::ReaderRelease],
    kind: K::LostWakeup,
    basis: B::StreamEnd,
    expected: "rcuwait_wake_up by the task whose put left F or F+1 before the stream ends \
               (unless the excluder returned after the put)",
    breaks: None,
};
pub const WOKEN_EXCLUDER_RETURNS: Rule = Rule {
    name: "woken_excluder_returns",
    events: &[E::WriterWake],
    kind: K::LostWakeup,
    basis: B::StreamEnd,
    expected: "the excluder returns after rcuwait_wake_up (it re-checks its condition once \
               woken)",
    breaks: None,
};
pub const EXCLUDER_WAIT_ENDS: Rule = Rule {
    name: "excluder_wait_ends",
    events: &[E::WriteLockEnter, E::ExcludeEnter, E::DetachEnter],
    kind: K::LostWakeup,
    basis: B::StreamEnd,
    expected: "an excluder's wait for readers ends once they leave (its call returns)",
    breaks: None,
};

/// Every rule, in the order `docs/anomaly-kinds.md` lists them.
pub const RULES: &[&Rule] = &[
    &REFCOUNT_IN_RANGE,
    &ONE_EXCLUDER,
    &WRITE_LOCK_TAKEN,
    &WRITE_LOCK_ENDS_EXCLUSION,
    &WRITE_LOCK_EINTR_ONLY_KILLABLE,
    &EXCLUDE_REACHES_TARGET,
    &EXCLUDE_DETACHED_AT_ZERO,
    &EXCLUDE_EINTR_ONLY_KILLABLE,
    &INTERRUPTED_EXCLUDE_ENDS_EXCLUSION,
    &DETACH_AT_ZERO,
    &DETACH_ENDS_EXCLUSION,
    &READER_NOT_WRITE_LOCKED,
    &READER_HOLDS_REFERENCE,
    &PUT_HOLDS_REFERENCE,
    &READER_OUTSIDE_EXCLUSION,
    &READERS_DRAINED_BEFORE_STORE,
    &FREE_UNREFERENCED,
    &PUT_WAKES_EXCLUDER,
    &OWED_WAKE_BY_THE_END,
    &WOKEN_EXCLUDER_RETURNS,
    &EXCLUDER_WAIT_ENDS,
];

/// The rule with this name.
pub fn by_name(name: &str) -> Option<&'static Rule> {
    RULES.iter().copied().find(|r| r.name == name)
}

/// The table as `docs/anomaly-kinds.md` shows it (Markdown, one row per rule).
pub fn markdown_table() -> String {
    let mut s =
        String::from("| rule | events | basis | kind | expected |\n|---|---|---|---|---|\n");
    for r in RULES {
        let events = if r.events.is_empty() {
            "every sampled event".to_string()
        } else {
            r.events
                .iter()
                .map(|e| format!("`{}`", e.key()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        s.push_str(&format!(
            "| `{}` | {} | {} | `{}` | {} |\n",
            r.name,
            events,
            r.basis.key(),
            r.kind.key(),
            r.expected
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `docs/anomaly-kinds.md` shows this table as it is: change a row and the test
    /// prints the table to paste.
    #[test]
    fn the_documented_rules_are_these() {
        let doc = include_str!("../../../docs/anomaly-kinds.md");
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/anomaly-kinds.md, \"Rules\", must hold exactly this table:\n\n{table}"
        );
    }

    #[test]
    fn names_are_unique_and_every_kind_has_a_rule() {
        for r in RULES {
            assert_eq!(
                RULES.iter().filter(|o| o.name == r.name).count(),
                1,
                "{} twice",
                r.name
            );
            assert_eq!(by_name(r.name).map(|f| f.expected), Some(r.expected));
            // A sample rule (but the exclusion target, which needs the excluder's own
            // report of write or detach) says which samples break it.
            assert_eq!(
                r.breaks.is_some(),
                r.basis == Basis::Sample && r.name != EXCLUDE_REACHES_TARGET.name,
                "{}",
                r.name
            );
        }
        for k in AnomalyKind::ALL {
            assert!(
                RULES.iter().any(|r| r.kind == *k),
                "{} has no rule",
                k.key()
            );
        }
    }
}
