//! What one guest run showed, as the checks (`checks.rs`, `scrape.rs`, `faults.rs`) fill
//! it in and the matrix (`mod.rs`) reports it.

/// What one kernel's run showed: lines for the report, and failed assertions.
#[derive(Clone, Debug, Default)]
pub struct Verdict {
    pub info: Vec<String>,
    pub failures: Vec<String>,
    /// Logical events the plan observes directly (from `probes`), for the run check.
    pub direct_events: Vec<String>,
    /// Failures that are a widened race the kernel did not take this boot (a rare event
    /// never seen), not a wrong result: the scenario may run again.
    pub races_missed: usize,
}

impl Verdict {
    /// Every failure is a race not taken: worth another boot.
    pub fn only_races_missed(&self) -> bool {
        !self.failures.is_empty() && self.failures.len() == self.races_missed
    }
}
