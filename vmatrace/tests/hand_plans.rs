//! The hand-made plans of `common::plans` attach what the planner attaches on the
//! matching Debian kernel fixtures (tests/data/kernels), so tests using them do not ask
//! for hooks real kernels refuse (kprobes on notrace functions). They are the
//! fentry-first plans (`--attach fentry`).

pub mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::plans::{plan_6x, plan_7x};
use vmatrace::kernel::plan::AttachPreference;
use vmatrace::kernel::plan::ProbePlan;
use vmatrace::kernel::{Capabilities, KernelInfo, plan_with};
use vmatrace_common::model::Generation;

fn planned(name: &str) -> ProbePlan {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/kernels")
        .join(name);
    let opt = |f: &str| {
        let p = d.join(f);
        p.exists().then_some(p)
    };
    let release = std::fs::read_to_string(d.join("release")).expect("fixture release");
    let mut info = KernelInfo::from_files(
        &d.join("btf.zst"),
        &d.join("kallsyms"),
        opt("available_filter_functions").as_deref(),
        opt("kprobe_blacklist").as_deref(),
        Some(release.trim().to_string()),
    )
    .expect("fixture loads");
    if let Some(c) = opt("config") {
        info = info.with_config(&c).expect("fixture config");
    }
    plan_with(&info, &Capabilities::assume_all(), AttachPreference::Fentry).expect("fixture plans")
}

fn programs(p: &ProbePlan) -> BTreeSet<(String, String)> {
    p.points
        .iter()
        .map(|a| (a.program.clone(), a.target.clone()))
        .collect()
}

fn assert_same(hand: &ProbePlan, fixture: &str) {
    let planned = planned(fixture);
    assert_eq!(hand.generation, planned.generation, "{fixture}");
    let (h, p) = (programs(hand), programs(&planned));
    assert!(
        h == p,
        "{fixture}: hand-made only {:?}, planner only {:?}",
        h.difference(&p).collect::<Vec<_>>(),
        p.difference(&h).collect::<Vec<_>>()
    );
}

#[test]
fn hand_made_6_19_plan_matches_the_planner() {
    assert_same(&plan_6x(Generation::V6_19, true), "debian-6.19.14-cloud");
}

#[test]
fn hand_made_6_18_plan_matches_the_planner() {
    assert_same(&plan_6x(Generation::V6_15, true), "debian-6.18.15-cloud");
}

#[test]
fn hand_made_7x_plan_matches_the_planner() {
    assert_same(&plan_7x(true), "debian-7.2.13-cloud");
}
