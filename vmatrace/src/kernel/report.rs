//! Human renderings of a [`ProbePlan`]: the table `vmatrace probes` prints (also shown by
//! the dashboard and written into trace headers) and the one-line coverage summary. The
//! machine form is the plan's serde JSON.

use std::fmt::Write as _;

use super::offsets;
use super::plan::{Observability, ProbePlan};

/// Counts behind the coverage summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoverageCounts {
    pub total: usize,
    pub direct: usize,
    pub proxy: usize,
    pub unobservable: usize,
}

impl CoverageCounts {
    pub fn observable(&self) -> usize {
        self.direct + self.proxy
    }
}

pub fn coverage_counts(plan: &ProbePlan) -> CoverageCounts {
    let mut c = CoverageCounts {
        total: plan.coverage.len(),
        direct: 0,
        proxy: 0,
        unobservable: 0,
    };
    for e in &plan.coverage {
        match e.status {
            Observability::Direct { .. } => c.direct += 1,
            Observability::Proxy { .. } => c.proxy += 1,
            Observability::Unobservable { .. } => c.unobservable += 1,
        }
    }
    c
}

/// "11 of 13 logical events observable, 4 via proxy".
pub fn coverage_summary(plan: &ProbePlan) -> String {
    let c = coverage_counts(plan);
    format!(
        "{} of {} logical events observable, {} via proxy",
        c.observable(),
        c.total,
        c.proxy
    )
}

fn points_text(plan: &ProbePlan, points: &[usize]) -> String {
    points
        .iter()
        .filter_map(|&i| plan.points.get(i))
        .map(|p| format!("{} {}", p.mode.key(), p.target))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The full human table.
pub fn render_table(plan: &ProbePlan) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "kernel {}: generation {}",
        plan.kernel.release,
        plan.generation.label()
    );
    let _ = writeln!(s, "coverage: {}", coverage_summary(plan));
    let _ = writeln!(s, "attach: {}", plan.attach);
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<22} {:<13} HOW", "EVENT", "STATUS");
    for e in &plan.coverage {
        let (status, how) = match &e.status {
            Observability::Direct { points } => ("direct", points_text(plan, points)),
            Observability::Proxy { via, points } => (
                "proxy",
                format!("{} — via {via}", points_text(plan, points)),
            ),
            Observability::Unobservable { reason } => ("unobservable", reason.clone()),
        };
        let _ = writeln!(s, "{:<22} {:<13} {how}", e.event.key(), status);
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "{:<3} {:<11} {:<40} PROGRAM", "#", "MODE", "TARGET");
    for (i, p) in plan.points.iter().enumerate() {
        let _ = writeln!(
            s,
            "{:<3} {:<11} {:<40} {}",
            i,
            p.mode.key(),
            p.target,
            p.program
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "field offsets (from BTF):");
    for (name, off) in offsets::named(&plan.offsets) {
        match off {
            Some(o) => {
                let _ = writeln!(s, "  {name:<38} 0x{o:x}");
            }
            None => {
                let _ = writeln!(s, "  {name:<38} absent");
            }
        }
    }
    if !plan.notes.is_empty() {
        let _ = writeln!(s);
        let _ = writeln!(s, "notes:");
        for n in &plan.notes {
            let _ = writeln!(s, "  - {n}");
        }
    }
    s
}
