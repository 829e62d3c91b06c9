//! `vmatrace model`: the refcount automaton, generated from the model code.
//!
//! `--dot` (default) prints Graphviz DOT, `--json` the same states and transitions as
//! JSON, `--check` runs, per generation, the exhaustive check of the kernel's invariants
//! and the validator's conformance to the model (`validate::conformance`): every
//! execution replayed without a false anomaly, every visible bug reported.

use std::io::Write;

use anyhow::Context;
use serde_json::json;
use vmatrace_common::model::{
    Generation,
    automaton::{Automaton, automaton},
    explore::explore,
    machine::{ModelConfig, World},
};

use crate::validate::rules::{self, Rule};

#[derive(Debug, clap::Args)]
pub struct ModelArgs {
    /// Print the automaton as Graphviz DOT (the default).
    #[arg(long, conflicts_with_all = ["json", "check"])]
    pub dot: bool,
    /// Print the automaton as JSON (with --check: the check's results, one object per
    /// generation).
    #[arg(long)]
    pub json: bool,
    /// For every generation: explore every interleaving of 2 readers, a writer, a
    /// detacher and a killable writer and check the invariants, then replay the model's
    /// executions through the validator (docs/anomaly-kinds.md, "Conformance"); exit
    /// code 1 on a counterexample, a false anomaly or a missed bug.
    #[arg(long)]
    pub check: bool,
    /// With --check: switch one row of the validator's rule table off (see
    /// docs/anomaly-kinds.md, "Rules") to see what the proof loses without it.
    #[arg(long, value_name = "RULE", requires = "check", value_parser = parse_rule)]
    pub without_rule: Option<&'static Rule>,
    /// Kernel generation to model: 6.15 (6.15–6.18), 6.19 or 7.0 (7.0+).
    #[arg(long, default_value = "7.0", value_parser = parse_generation)]
    pub generation: Generation,
}

fn parse_rule(s: &str) -> Result<&'static Rule, String> {
    rules::by_name(s).ok_or_else(|| {
        let names: Vec<&str> = rules::RULES.iter().map(|r| r.name).collect();
        format!("unknown rule {s:?}; one of {}", names.join(", "))
    })
}

fn parse_generation(s: &str) -> Result<Generation, String> {
    Generation::ALL
        .iter()
        .copied()
        .find(|g| g.key() == s)
        .ok_or_else(|| {
            let keys: Vec<&str> = Generation::ALL.iter().map(|g| g.key()).collect();
            format!("unknown generation {s:?}; one of {}", keys.join(", "))
        })
}

pub fn run(args: ModelArgs) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    if args.check {
        return check_all(args.json, args.without_rule, &mut stdout);
    }
    let a = automaton(args.generation);
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&to_json(&a))?;
        s.push('\n');
        s
    } else {
        a.to_dot()
    };
    stdout
        .write_all(text.as_bytes())
        .context("writing the automaton to stdout")?;
    Ok(())
}

pub fn to_json(a: &Automaton) -> serde_json::Value {
    json!({
        "generation": a.generation.key(),
        "initial": a.initial,
        "worlds_explored": a.worlds,
        "states": a.states,
        "transitions": a.transitions.iter().map(|t| json!({
            "from": t.from,
            "to": t.to,
            "function": t.function,
            "action": t.action,
            "event": t.event.map(|e| e.key()),
        })).collect::<Vec<_>>(),
    })
}

/// The invariants, then the validator's conformance, for every generation.
fn check_all(
    json: bool,
    without: Option<&'static Rule>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    use crate::validate::conformance::{self, Budget};
    let mut failed = Vec::new();
    let mut all = Vec::new();
    for g in Generation::ALL {
        let mut text = Vec::new();
        if let Err(e) = check(*g, &mut text) {
            failed.push(e.to_string());
        }
        let c = conformance::check_without(*g, Budget::FULL, without);
        if !json {
            out.write_all(&text)?;
            writeln!(
                out,
                "generation {}: conformance: {} executions replayed in {} delivery orders, \
                 {} false anomalies",
                g.key(),
                c.executions_replayed,
                c.delivery_orders,
                c.false_anomalies
            )?;
            for (bug, r) in &c.bugs {
                writeln!(
                    out,
                    "  bug {bug}: {} executions show it, {} reported as {} ({} look exactly \
                     like correct ones, {} of them with an untraced reader)",
                    r.executions, r.detected, r.kind, r.indistinguishable, r.untraced_explains
                )?;
            }
        }
        // With --json, stdout is the JSON document alone: counterexamples go to stderr.
        let mut counterexamples = String::new();
        if let Some(cx) = &c.counterexample {
            counterexamples.push_str(&format!("false anomaly:\n{cx}\n"));
        }
        for (bug, r) in &c.bugs {
            if let Some(m) = &r.missed {
                counterexamples.push_str(&format!("missed {bug}:\n{m}\n"));
            }
        }
        if json {
            eprint!("{counterexamples}");
        } else {
            out.write_all(counterexamples.as_bytes())?;
        }
        if !c.ok() {
            failed.push(format!(
                "generation {}: the validator does not conform",
                g.key()
            ));
        }
        all.push(json!({
            "generation": g.key(),
            "states": c.states.0,
            "transitions": c.states.1,
            "executions_replayed": c.executions_replayed,
            "delivery_orders": c.delivery_orders,
            "false_anomalies": c.false_anomalies,
            "bugs": c.bugs,
        }));
    }
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&all)?)?;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(super::exit::Failure::Unverified(failed.join("; ")).into())
    }
}

/// Explore the model; a violated invariant is an error (status 1) after its counterexample.
fn check(generation: Generation, out: &mut impl Write) -> anyhow::Result<()> {
    let roles = crate::validate::conformance::CHECK_ROLES;
    let cfg = ModelConfig {
        generation,
        bug: None,
    };
    let x = explore(&cfg, World::new(&roles), 10_000_000);
    writeln!(
        out,
        "generation {}: {} states, {} transitions, {} finished worlds{}",
        generation.key(),
        x.states,
        x.transitions,
        x.finished,
        if x.truncated {
            " (state limit hit)"
        } else {
            ""
        }
    )?;
    match x.violation {
        Some(cx) => {
            write!(out, "{cx}")?;
            Err(super::exit::Failure::Unverified(format!(
                "generation {}: an invariant of the model does not hold",
                generation.key()
            ))
            .into())
        }
        None => {
            writeln!(out, "all invariants hold")?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automaton_has_the_protocol_states_and_edges() {
        for &g in Generation::ALL {
            let a = automaton(g);
            for s in [
                "attached (1)",
                "read-locked (1+n)",
                "write: waiting for readers (F+1+n)",
                "write: readers excluded (F+1)",
                "write-locked (1)",
                "detached (0)",
            ] {
                assert!(
                    a.states.contains(&s),
                    "{}: missing {s}: {:?}",
                    g.key(),
                    a.states
                );
            }
            let has = |from: &str, to: &str, f: &str| {
                a.transitions
                    .iter()
                    .any(|t| t.from == from && t.to == to && t.function == f)
            };
            assert!(has("attached (1)", "read-locked (1+n)", "vma_start_read"));
            assert!(has(
                "write: waiting for readers (F+1+n)",
                "write: readers excluded (F+1)",
                "vma_refcount_put"
            ));
            assert!(has("write-locked (1)", "attached (1)", "mmap_write_unlock"));
            // Only vma_mark_attached leaves the detached state: readers cannot raise 0
            // (inc_not_zero), and no exclusion starts on 0.
            assert_eq!(a.initial, "detached (0)");
            let out_of_detached: Vec<_> = a
                .transitions
                .iter()
                .filter(|t| t.from == "detached (0)")
                .collect();
            assert!(
                !out_of_detached.is_empty()
                    && out_of_detached
                        .iter()
                        .all(|t| t.function == "vma_mark_attached"),
                "{out_of_detached:?}"
            );
            let dot = a.to_dot();
            assert!(dot.starts_with("// vm_refcnt automaton"));
            assert!(dot.contains("  rankdir=TB;\n"), "laid out top to bottom");
            assert!(!dot.contains("rankdir=LR"));
            assert!(dot.contains("\"attached (1)\" -> \"read-locked (1+n)\""));
            assert_eq!(dot.matches('{').count(), dot.matches('}').count());
        }
        // Generation-specific names come from the model's function table.
        let a7 = automaton(Generation::V7_0);
        assert!(
            a7.transitions
                .iter()
                .any(|t| t.function == "__vma_start_exclude_readers")
        );
        let a6 = automaton(Generation::V6_19);
        assert!(
            a6.transitions
                .iter()
                .any(|t| t.function == "__vma_enter_locked")
        );
        // Only killable generations have the -EINTR edge.
        let eintr = |a: &Automaton| a.transitions.iter().any(|t| t.action == "sub F on -EINTR");
        assert!(eintr(&a7));
        assert!(!eintr(&automaton(Generation::V6_15)));
    }

    #[test]
    fn json_form_lists_every_transition() {
        let a = automaton(Generation::V7_0);
        let v = to_json(&a);
        assert_eq!(v["generation"], "7.0");
        assert_eq!(
            v["transitions"].as_array().map(Vec::len),
            Some(a.transitions.len())
        );
    }

    #[test]
    fn check_reports_states_and_passes() {
        let mut out = Vec::new();
        let res = check(Generation::V6_19, &mut out);
        let text = String::from_utf8_lossy(&out);
        assert!(res.is_ok(), "{text}");
        assert!(
            text.contains(" states, ") && text.contains("all invariants hold"),
            "{text}"
        );
    }

    #[test]
    fn unknown_generation_is_a_clear_error() {
        let e = parse_generation("5.4").expect_err("5.4 is not a refcount generation");
        assert!(e.contains("6.15") && e.contains("7.0"), "{e}");
    }
}
