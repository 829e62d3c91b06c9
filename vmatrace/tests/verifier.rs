//! Verifier acceptance (root): every program of the embedded object is loaded, not
//! attached, into the running kernel with realistic globals for each generation, so
//! every generation-specific path (pruned by the verifier on the others) is verified.
//!
//! kprobe/kretprobe and tracepoint programs load on any kernel with bpf(). fentry/fexit
//! programs need their target in this kernel's BTF and permission to load tracing
//! programs (this CI host answers EPERM); those cases are reported as skipped with the
//! reason, never as passed. The verifier's instruction counts are printed.

pub mod common;

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{FEntry, FExit, Program, ProgramError},
};
use common::plans::{
    OFFSETS_6_18, OFFSETS_6_19, OFFSETS_7_2, non_tracing_programs, tracing_programs,
};
use vmatrace::{
    EBPF_OBJECT,
    live::{check_privileges, names, raise_memlock_limit},
    testing::skip,
};
use vmatrace_common::{Offsets, ProgramConfig, globals::MmapLockTpOffsets, model::Generation};

/// Why bpf() cannot be used here, if so.
fn bpf_unavailable() -> Option<String> {
    if let Err(e) = check_privileges() {
        return Some(format!("{e:#}"));
    }
    let _ = raise_memlock_limit();
    None
}

/// A config with every filter on, so the filter code is verified too.
fn filtering_config() -> ProgramConfig {
    let mut c = ProgramConfig::DEFAULT;
    c.self_tgid = std::process::id();
    c.filter_tgid = 1;
    c.filter_comm[..4].copy_from_slice(b"stre");
    c.filter_comm_len = 4;
    c.filter_cgroup = 1;
    c.reader_sample_every = 64;
    c.stream_entries = 1;
    c.slow_wait_ns = 1_000_000;
    c
}

fn sampling_config() -> ProgramConfig {
    let mut c = ProgramConfig::DEFAULT;
    c.self_tgid = std::process::id();
    c.reader_sample_every = 1;
    c.stream_entries = 1;
    // Every paired return takes the slow-wait path (stack and syscall).
    c.slow_wait_ns = 1;
    c
}

struct Setup {
    label: &'static str,
    generation: u32,
    offsets: Offsets,
    config: ProgramConfig,
}

fn setups() -> Vec<Setup> {
    vec![
        Setup {
            label: "6.18 offsets, gen 6.15, no filters, entries folded, slow waits",
            generation: Generation::V6_15 as u32,
            offsets: OFFSETS_6_18,
            config: ProgramConfig {
                slow_wait_ns: 1_000_000,
                ..ProgramConfig::DEFAULT
            },
        },
        Setup {
            label: "6.19 offsets, gen 6.19, all filters, entries streamed",
            generation: Generation::V6_19 as u32,
            offsets: OFFSETS_6_19,
            config: filtering_config(),
        },
        Setup {
            label: "7.2 offsets (ves), gen 7.0, sample every reader, entries streamed",
            generation: Generation::V7_0 as u32,
            offsets: OFFSETS_7_2,
            config: sampling_config(),
        },
        Setup {
            label: "all offsets absent",
            generation: 0,
            offsets: Offsets::ABSENT,
            config: ProgramConfig::DEFAULT,
        },
    ]
}

fn load_object(s: &Setup, btf: Option<&Btf>) -> Ebpf {
    let tp = MmapLockTpOffsets::DEFAULT;
    EbpfLoader::new()
        .btf(btf)
        .override_global(names::OFFSETS, &s.offsets, true)
        .override_global(names::CONFIG, &s.config, true)
        .override_global(names::GENERATION, &s.generation, true)
        .override_global(names::MMAP_LOCK_TP, &tp, true)
        .map_max_entries(names::EVENTS, 1 << 16)
        .load(EBPF_OBJECT)
        .unwrap_or_else(|e| panic!("[{}] creating maps: {e:#}", s.label))
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(25)..].join("\n")
}

fn describe(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!(
            "{io_error}; verifier log tail:\n{}",
            tail(&verifier_log.to_string())
        ),
        e => format!("{e:#}"),
    }
}

fn insns(p: &Program) -> String {
    p.info()
        .ok()
        .and_then(|i| i.verified_instruction_count())
        .map(|n| n.to_string())
        .unwrap_or_else(|| "?".into())
}

#[test]
fn kprobe_and_tracepoint_programs_pass_the_verifier() {
    if let Some(why) = bpf_unavailable() {
        skip(
            "kprobe_and_tracepoint_programs_pass_the_verifier",
            &format!("bpf() not usable: {why}"),
        );
        return;
    }
    let mut failures = Vec::new();
    let mut loaded = 0;
    for s in setups() {
        let mut ebpf = load_object(&s, None);
        let mut line = format!("[{}] verified instructions:", s.label);
        for name in non_tracing_programs() {
            let prog = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("program {name} missing"));
            let r = match prog {
                Program::KProbe(p) => p.load(),
                Program::TracePoint(p) => p.load(),
                other => panic!("{name}: unexpected type {:?}", other.prog_type()),
            };
            match r {
                Ok(()) => {
                    loaded += 1;
                    line.push_str(&format!(" {name}={}", insns(prog)));
                }
                Err(e) => failures.push(format!("[{}] {name}: {}", s.label, describe(&e))),
            }
        }
        println!("{line}");
    }
    assert!(
        failures.is_empty(),
        "verifier rejected:\n{}",
        failures.join("\n\n")
    );
    assert_eq!(loaded, setups().len() * non_tracing_programs().len());
}

#[test]
fn tracing_programs_pass_the_verifier() {
    const NAME: &str = "tracing_programs_pass_the_verifier";
    if let Some(why) = bpf_unavailable() {
        skip(NAME, &format!("bpf() not usable: {why}"));
        return;
    }
    let btf = match Btf::from_sys_fs() {
        Ok(b) => b,
        Err(e) => {
            skip(NAME, &format!("no kernel BTF: {e}"));
            return;
        }
    };
    let mut failures = Vec::new();
    let mut not_here = Vec::new();
    let mut refused = Vec::new();
    let mut loaded = 0;
    for s in setups() {
        let mut ebpf = load_object(&s, Some(&btf));
        for (name, target) in tracing_programs() {
            let prog = ebpf.program_mut(name).expect("program exists");
            let r = match prog {
                Program::FEntry(p) => FEntry::load(p, target, &btf),
                Program::FExit(p) => FExit::load(p, target, &btf),
                other => panic!("{name}: unexpected type {:?}", other.prog_type()),
            };
            match r {
                Ok(()) => {
                    loaded += 1;
                    println!("[{}] {name} ({target}): {} insns", s.label, insns(prog));
                }
                Err(ProgramError::Btf(_)) => not_here.push(format!("{name} ({target})")),
                Err(ProgramError::LoadError { io_error, .. })
                    if matches!(
                        io_error.raw_os_error(),
                        Some(libc::EPERM | libc::ENOTSUP | 524)
                    ) =>
                {
                    refused.push(format!("{name}: {io_error}"));
                }
                Err(e) => failures.push(format!("[{}] {name}: {}", s.label, describe(&e))),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "verifier rejected:\n{}",
        failures.join("\n\n")
    );
    not_here.sort();
    not_here.dedup();
    if !not_here.is_empty() {
        println!("targets not in this kernel's BTF: {}", not_here.join(", "));
    }
    if loaded == 0 {
        refused.sort();
        refused.dedup();
        skip(
            NAME,
            &format!(
                "this kernel refuses tracing programs ({}); they are verified in the VM matrix",
                refused
                    .first()
                    .map(String::as_str)
                    .unwrap_or("every target missing from BTF")
            ),
        );
    }
}

#[test]
fn tracing_support_probe_answers() {
    // The probe used by the planner must give an answer here, not an error.
    if let Some(why) = bpf_unavailable() {
        skip(
            "tracing_support_probe_answers",
            &format!("bpf() not usable: {why}"),
        );
        return;
    }
    let r = vmatrace::live::tracing_programs_supported();
    println!("tracing_programs_supported() = {r:?}");
    assert!(r.is_ok(), "{r:?}");
}

/// The workload's programs (`live::lab`), loaded by the product's loader, in both scopes
/// (a process, a cgroup): the race widener's bounded busy-wait and the counters.
#[test]
fn lab_programs_pass_the_verifier() {
    if let Some(why) = bpf_unavailable() {
        skip(
            "lab_programs_pass_the_verifier",
            &format!("bpf() not usable: {why}"),
        );
        return;
    }
    use vmatrace::live::lab::{LabProbes, PROGRAMS};
    use vmatrace_common::globals::LabConfig;
    for config in [
        LabConfig {
            scope: LabConfig::SCOPE_PROCESS,
            tgid: std::process::id(),
            delay_ns: 1_000_000,
            ..LabConfig::DEFAULT
        },
        LabConfig {
            scope: LabConfig::SCOPE_CGROUP,
            cgroup_id: 0x1234,
            delay_ns: 50_000,
            ..LabConfig::DEFAULT
        },
    ] {
        let mut lab = LabProbes::load(config).expect("loading the object for the lab");
        for name in PROGRAMS {
            if let Err(e) = lab.load_program(name) {
                panic!("{name} with {config:?}: {e:#}");
            }
        }
    }
}
