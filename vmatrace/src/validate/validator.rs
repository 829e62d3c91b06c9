//! Per-VMA replay of the observed stream through the refcount model.
//!
//! Contract used by the pipeline (keep it stable): `Validator::new(generation)`,
//! `observe(&Event, &mut Vec<Anomaly>)` appends zero or more anomalies for one event, and
//! `note_loss()` tells it that events were lost (every tracked VMA goes back to
//! "unknown" and resynchronises on its next sample, so a gap never yields a false anomaly).

use vmatrace_common::{Event, model::Generation};

use super::Anomaly;

pub struct Validator {
    generation: Generation,
    observed: u64,
    losses: u64,
}

impl Validator {
    pub fn new(generation: Generation) -> Self {
        Self {
            generation,
            observed: 0,
            losses: 0,
        }
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    /// Check one event; anomalies are appended to `out`.
    pub fn observe(&mut self, _ev: &Event, _out: &mut Vec<Anomaly>) {
        self.observed += 1;
    }

    /// Events were lost: forget per-VMA state and resynchronise.
    pub fn note_loss(&mut self) {
        self.losses += 1;
    }

    pub fn observed(&self) -> u64 {
        self.observed
    }

    pub fn losses_noted(&self) -> u64 {
        self.losses
    }
}
