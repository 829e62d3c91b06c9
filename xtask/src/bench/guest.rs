//! The performance scenario run inside one guest boot: the workload alone, under
//! vmatrace, under an equivalent bpftrace script, each with BPF run-time statistics off
//! (slowdown) and on (per-hit cost), then the workload alone again (drift).
//!
//! Results come back on ttyS1 in the vm-test framing (`vm::results`): one section per
//! output file, named `<phase>.<what>`.

use std::fmt::Write as _;

use crate::vm::{
    results::{MARK, MARK_END},
    scenario::GUEST_PRELUDE,
};

/// Where the bpftrace script lives in the guest.
pub const BPFTRACE_SCRIPT_PATH: &str = "/bench.bt";

/// The least a user would write for the question vmatrace answers by default: how long
/// do writers wait for readers to leave (start-exclude latency histogram), and how often
/// are the write lock, the slow detach and the reader lock taken. Same functions, same
/// question; kprobes because that is what a bpftrace one-liner uses.
pub const BPFTRACE_SCRIPT: &str = "\
kprobe:__vma_start_exclude_readers { @start[tid] = nsecs; }
kretprobe:__vma_start_exclude_readers /@start[tid]/ {
  @start_exclude_ns = hist(nsecs - @start[tid]);
  delete(@start[tid]);
}
kprobe:__vma_start_write { @calls[probe] = count(); }
kprobe:__vma_exclude_readers_for_detach { @calls[probe] = count(); }
kprobe:lock_vma_under_rcu { @calls[probe] = count(); }
";

/// Probes in [`BPFTRACE_SCRIPT`]: bpftrace prints one `Attaching <probe>` line per probe
/// with `-v`, which is how the guest knows the script is live.
pub const BPFTRACE_PROBES: usize = 5;

#[derive(Clone, Debug)]
pub struct Params {
    /// Seconds the workload runs in each phase.
    pub duration: u32,
    pub readers: u32,
    pub writers: u32,
    /// Whether the static vmatrace has `run` (the vmatrace phases need it).
    pub vmatrace: bool,
    /// Whether a bpftrace binary is in the image.
    pub bpftrace: bool,
}

/// What a phase runs next to the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    None,
    /// `vmatrace run` as planned for the kernel (`--attach auto`: kprobes on a
    /// preemptible kernel).
    Vmatrace,
    /// `vmatrace run --attach fentry`: the cheaper mechanism that loses runs to preemption.
    VmatraceFentry,
    /// `vmatrace run --slow-wait ARG`: what the slow-wait capture costs (`off`: never
    /// compared; `1h`: compared on every return, never reached).
    VmatraceSlowWait(&'static str),
    Bpftrace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Phase {
    pub name: &'static str,
    pub tool: Tool,
    /// `kernel.bpf_stats_enabled` during the phase.
    pub bpf_stats: bool,
}

/// Phase order: the tools alternate so slow drift of the guest hits both alike, and the
/// baseline is taken at both ends.
pub fn phases(p: &Params) -> Vec<Phase> {
    let ph = |name, tool, bpf_stats| Phase {
        name,
        tool,
        bpf_stats,
    };
    [
        ph("base1", Tool::None, false),
        ph("vmatrace", Tool::Vmatrace, false),
        ph("bpftrace", Tool::Bpftrace, false),
        ph("vmatrace_fentry", Tool::VmatraceFentry, false),
        ph("vmatrace_stats", Tool::Vmatrace, true),
        ph("bpftrace_stats", Tool::Bpftrace, true),
        ph("vmatrace_fentry_stats", Tool::VmatraceFentry, true),
        ph("vmatrace_noslow_stats", Tool::VmatraceSlowWait("off"), true),
        ph(
            "vmatrace_slowunreached_stats",
            Tool::VmatraceSlowWait("1h"),
            true,
        ),
        ph("base2", Tool::None, false),
    ]
    .into_iter()
    .filter(|x| match x.tool {
        Tool::None => true,
        Tool::Vmatrace | Tool::VmatraceFentry | Tool::VmatraceSlowWait(_) => p.vmatrace,
        Tool::Bpftrace => p.bpftrace,
    })
    .collect()
}

/// Seconds one phase may take at most (tool start-up under TCG included).
pub fn phase_budget(p: &Params) -> u32 {
    // bpftrace compiles its script with LLVM in the guest: slow under TCG.
    180 + 3 * p.duration
}

/// The guest's `/init`.
pub fn init_script(p: &Params) -> String {
    let mut s = String::from(GUEST_PRELUDE);
    let stress = format!(
        "vmatrace stress --duration {} --readers {} --writers {} --forks --json",
        p.duration, p.readers, p.writers
    );
    let budget = phase_budget(p);
    let _ = write!(
        s,
        r#"echo "{MARK}booted $(uname -r){MARK_END}" >&3
ulimit -l unlimited 2>/dev/null
# sec NAME FILE RC: send FILE back as section NAME.
sec() {{ echo "{MARK}begin $1{MARK_END}" >&3; cat "$2" >&3 2>/dev/null; echo >&3; echo "{MARK}end $1 rc=$3{MARK_END}" >&3; }}
# lines FILE PATTERN N MAX: wait until FILE has N lines matching PATTERN (at most MAX s).
lines() {{ i=0; while [ "$(grep -c "$2" "$1" 2>/dev/null)" -lt "$3" ]; do i=$((i+1)); [ $i -gt $4 ] && return 1; sleep 1; done; return 0; }}
stats() {{ echo $1 >/proc/sys/kernel/bpf_stats_enabled; }}
workload() {{ timeout -s KILL {budget} {stress} >/tmp/$1.stress 2>/tmp/$1.stress.err; sec $1.stress /tmp/$1.stress $?; sec $1.stress.err /tmp/$1.stress.err 0; }}
# The tracer starts first and the workload only once it is attached; the tracer is
# stopped with SIGINT as soon as the workload ends, so it covers the workload exactly.
vmat() {{
  n=$1; shift
  timeout -s KILL {budget} vmatrace run --headless --json --duration {tracer_s} "$@" >/tmp/$n.out 2>/tmp/$n.err & P=$!
  if lines /tmp/$n.err 'hooks attached' 1 120; then workload $n; else echo "vmatrace did not attach in 120 s" >>/tmp/$n.err; fi
  kill -INT $P 2>/dev/null; wait $P; RC=$?
  sec $n /tmp/$n.out $RC; sec $n.err /tmp/$n.err 0
}}
bt() {{
  n=$1
  timeout -s KILL {budget} bpftrace -v {script} >/tmp/$n.out 2>&1 & P=$!
  if lines /tmp/$n.out '^Attaching [a-z]*:' {probes} 150; then
    sleep 1; workload $n
    # Per-program run time and count while the programs still exist (with stats on).
    for f in /proc/$P/fdinfo/*; do grep -q '^prog_id' $f 2>/dev/null && {{ echo "fd ${{f##*/}}"; cat $f; }}; done >/tmp/$n.fdinfo
    sec $n.fdinfo /tmp/$n.fdinfo 0
  else echo "bpftrace did not attach in 150 s" >>/tmp/$n.out; fi
  kill -INT $P 2>/dev/null; wait $P; RC=$?
  sec $n /tmp/$n.out $RC
}}
"#,
        tracer_s = budget,
        script = BPFTRACE_SCRIPT_PATH,
        probes = BPFTRACE_PROBES,
    );
    for ph in phases(p) {
        let _ = writeln!(s, "echo \"bench: phase {}\"", ph.name);
        let _ = writeln!(s, "stats {}", u8::from(ph.bpf_stats));
        match ph.tool {
            Tool::None => {
                let _ = writeln!(s, "workload {}", ph.name);
            }
            Tool::Vmatrace if ph.bpf_stats => {
                let _ = writeln!(s, "vmat {} --bpf-stats", ph.name);
            }
            Tool::Vmatrace => {
                let _ = writeln!(s, "vmat {}", ph.name);
            }
            Tool::VmatraceFentry if ph.bpf_stats => {
                let _ = writeln!(s, "vmat {} --attach fentry --bpf-stats", ph.name);
            }
            Tool::VmatraceFentry => {
                let _ = writeln!(s, "vmat {} --attach fentry", ph.name);
            }
            Tool::VmatraceSlowWait(arg) => {
                let stats = if ph.bpf_stats { " --bpf-stats" } else { "" };
                let _ = writeln!(s, "vmat {} --slow-wait {arg}{stats}", ph.name);
            }
            Tool::Bpftrace => {
                let _ = writeln!(s, "bt {}", ph.name);
            }
        }
    }
    let _ = writeln!(s, "stats 0");
    let _ = writeln!(s, "echo \"{MARK}done{MARK_END}\" >&3");
    s.push_str("exec 3>&-\nsync\npoweroff -f\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(bpftrace: bool) -> Params {
        Params {
            duration: 7,
            readers: 2,
            writers: 2,
            vmatrace: true,
            bpftrace,
        }
    }

    #[test]
    fn phases_alternate_and_drop_bpftrace_when_absent() {
        let names = |b| {
            phases(&params(b))
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            names(true),
            [
                "base1",
                "vmatrace",
                "bpftrace",
                "vmatrace_fentry",
                "vmatrace_stats",
                "bpftrace_stats",
                "vmatrace_fentry_stats",
                "vmatrace_noslow_stats",
                "vmatrace_slowunreached_stats",
                "base2"
            ]
        );
        assert_eq!(
            names(false),
            [
                "base1",
                "vmatrace",
                "vmatrace_fentry",
                "vmatrace_stats",
                "vmatrace_fentry_stats",
                "vmatrace_noslow_stats",
                "vmatrace_slowunreached_stats",
                "base2"
            ]
        );
    }

    #[test]
    fn init_runs_every_phase_with_its_stats_setting() {
        let s = init_script(&params(true));
        assert!(s.contains("vmat vmatrace_noslow_stats --slow-wait off --bpf-stats\n"));
        assert!(s.contains("vmat vmatrace_slowunreached_stats --slow-wait 1h --bpf-stats\n"));
        assert!(s.starts_with("#!/bin/busybox sh"));
        assert!(s.contains("vmatrace stress --duration 7 --readers 2 --writers 2 --forks --json"));
        assert!(s.contains("stats 1\nvmat vmatrace_fentry_stats --attach fentry --bpf-stats\n"));
        assert!(s.contains("stats 1\nvmat vmatrace_stats --bpf-stats\n"));
        assert!(s.contains("stats 0\nvmat vmatrace\n"));
        assert!(s.contains("stats 1\nbt bpftrace_stats\n"));
        assert!(s.contains("stats 0\nworkload base2\n"));
        assert!(s.contains("@@VMATRACE done@@"));
        assert!(s.ends_with("poweroff -f\n"));
        // The script attaches exactly the probes the guest waits for.
        let attach_points = BPFTRACE_SCRIPT
            .lines()
            .filter(|l| l.starts_with("kprobe:") || l.starts_with("kretprobe:"))
            .count();
        assert_eq!(attach_points, BPFTRACE_PROBES);
    }
}
