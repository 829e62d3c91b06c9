//! The phase of one tracked VMA, as the dashboard's Model screen counts them: the
//! model's abstract state (`vmatrace_common::model::automaton::VmaState`), with what a
//! race-free sample cannot tell apart folded together.

use vmatrace_common::model::{
    automaton::VmaState,
    refcnt::{self, RefcntClass},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// No trustworthy history (first seen without a telling sample, or after a loss).
    Unknown,
    /// `vm_refcnt == 0`: allocated but not attached, or detached.
    Detached,
    /// `vm_refcnt == 1`, not write-locked.
    Attached,
    /// Last sample showed read references.
    Readers,
    /// A start-exclude is in progress (the flag is set).
    Excluding,
    /// `__vma_start_write` succeeded and the mm has not been write-unlocked since.
    WriteLocked,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Unknown,
        Phase::Detached,
        Phase::Attached,
        Phase::Readers,
        Phase::Excluding,
        Phase::WriteLocked,
    ];

    /// Stable key (dashboard, JSON).
    pub const fn key(self) -> &'static str {
        match self {
            Phase::Unknown => "unknown",
            Phase::Detached => "detached",
            Phase::Attached => "attached",
            Phase::Readers => "readers",
            Phase::Excluding => "excluding",
            Phase::WriteLocked => "write_locked",
        }
    }

    pub const fn index(self) -> usize {
        self as usize
    }

    /// The phase of each of the model's abstract states. An exclusion's sub-states
    /// (write or detach, waiting or readers excluded) are one phase: which one is known
    /// only from the excluder's own events, not from a sample. So are a write-locked
    /// VMA and one with ephemeral readers (they fail their re-check and leave).
    pub const fn of_model(s: VmaState) -> Phase {
        match s {
            VmaState::Detached => Phase::Detached,
            VmaState::Attached => Phase::Attached,
            VmaState::ReadLocked => Phase::Readers,
            VmaState::WriteLocked | VmaState::WriteLockedEphemeralReaders => Phase::WriteLocked,
            VmaState::WriteWaiting
            | VmaState::WriteExcluded
            | VmaState::DetachWaiting
            | VmaState::DetachExcluded => Phase::Excluding,
            // Not a state of the correct model: the validator reports it and resyncs.
            VmaState::OutOfRange => Phase::Unknown,
        }
    }

    /// What a refcount sample alone says.
    pub const fn of_refcnt(r: u32) -> Phase {
        match RefcntClass::of(r) {
            RefcntClass::Detached => Phase::Detached,
            RefcntClass::Attached => Phase::Attached,
            RefcntClass::Readers(_) => Phase::Readers,
            _ if refcnt::flag_set(r) => Phase::Excluding,
            _ => Phase::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use vmatrace_common::model::{Generation, automaton::automaton};

    use super::*;

    /// Every state of every generation's automaton has its phase, and every phase but
    /// `unknown` (no trustworthy history) is some model state's: the validator tracks
    /// the model's states, not states of its own.
    #[test]
    fn the_phases_are_the_models_states() {
        let mut reached = Vec::new();
        for g in Generation::ALL {
            let a = automaton(*g);
            for label in &a.states {
                let s = VmaState::of_label(label)
                    .unwrap_or_else(|| panic!("{}: state {label:?} has no VmaState", g.key()));
                reached.push(Phase::of_model(s));
            }
            assert_eq!(
                VmaState::of_label(a.initial).map(Phase::of_model),
                Some(Phase::Detached),
                "a VMA is born detached"
            );
        }
        for p in Phase::ALL {
            assert_eq!(
                reached.contains(&p),
                p != Phase::Unknown,
                "{}: a phase is a model state's exactly when it is not `unknown`",
                p.key()
            );
        }
    }

    /// Where a sample alone decides, it decides as the model's state does.
    #[test]
    fn a_sample_gives_its_model_states_phase() {
        use vmatrace_common::model::refcnt::F;
        for (r, s) in [
            (0, VmaState::Detached),
            (1, VmaState::Attached),
            (3, VmaState::ReadLocked),
            (F + 1, VmaState::WriteExcluded),
            (F + 3, VmaState::WriteWaiting),
            (F, VmaState::DetachExcluded),
        ] {
            assert_eq!(Phase::of_refcnt(r), Phase::of_model(s), "{r:#x}");
        }
    }
}
