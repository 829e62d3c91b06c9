//! Reading what the guest sent back: the workload's own report, vmatrace's `--json`
//! summary, bpftrace's printed maps and `-v` program ids, and `/proc/<pid>/fdinfo` of
//! bpftrace's program fds (run time and count with BPF statistics on).

use std::collections::BTreeMap;

use serde_json::Value;

/// A log2 latency bucket: inclusive `[low, high]` in ns, as vmatrace's
/// `stats::HistogramSnapshot` and bpftrace's `hist()` (`[low, high+1)`) both use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub low: u64,
    pub high: u64,
    pub count: u64,
}

/// The first JSON object in `body` (log lines before it are skipped).
pub fn json(body: &str) -> Option<Value> {
    let start = body.lines().position(|l| l.starts_with('{'))?;
    let text: Vec<&str> = body.lines().skip(start).collect();
    serde_json::from_str(&text.join("\n")).ok()
}

/// Operation counts of `vmatrace stress --json`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Workload {
    pub duration_s: f64,
    /// Page-touching operations (each faults under `lock_vma_under_rcu` when the page is
    /// not mapped).
    pub reader_ops: u64,
    /// mprotect / mmap / munmap / mremap / madvise: VMA write locks and detaches.
    pub writer_ops: u64,
    pub errors: u64,
}

const READER_OPS: &[&str] = &["reader_touch", "reader_copy", "reader_copy_efault"];
const WRITER_OPS: &[&str] = &[
    "mprotect",
    "mmap_replace",
    "munmap",
    "mremap",
    "mremap_grow",
    "madvise_dontneed",
];

impl Workload {
    pub fn from_json(v: &Value) -> Option<Workload> {
        let ops = v.get("ops")?.as_object()?;
        let sum = |keys: &[&str]| {
            keys.iter()
                .filter_map(|k| ops.get(*k).and_then(Value::as_u64))
                .sum::<u64>()
        };
        let duration_s = v.get("duration_s")?.as_f64()?;
        (duration_s > 0.0).then(|| Workload {
            duration_s,
            reader_ops: sum(READER_OPS),
            writer_ops: sum(WRITER_OPS),
            errors: ops.get("errors").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    pub fn reader_per_s(&self) -> f64 {
        self.reader_ops as f64 / self.duration_s
    }

    pub fn writer_per_s(&self) -> f64 {
        self.writer_ops as f64 / self.duration_s
    }

    pub fn total_per_s(&self) -> f64 {
        (self.reader_ops + self.writer_ops) as f64 / self.duration_s
    }
}

/// Cost of one BPF program over a phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgCost {
    /// vmatrace's program name, or bpftrace's probe (`kprobe:__vma_start_write`).
    pub name: String,
    /// The kernel function it is attached to (empty when unknown).
    pub function: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    /// Runs the kernel skipped (the program's `recursion_misses`: another BPF program was
    /// running on the CPU, or this one was still active there). Counted with statistics
    /// off too.
    pub skipped_runs: u64,
}

/// Which kernel function a vmatrace program hooks, from the prefix of its name
/// (`vmatrace/src/kernel/programs.rs`).
pub fn vmatrace_function(program: &str) -> &'static str {
    match program.split('_').next().unwrap_or("") {
        "vsw" => "__vma_start_write",
        "vser" => "__vma_start_exclude_readers",
        "vel" => "__vma_enter_locked",
        "vmd" => "vma_mark_detached",
        "verd" => "__vma_exclude_readers_for_detach",
        "lvur" => "lock_vma_under_rcu",
        "lnv" => "lock_next_vma",
        "vrp" => "vma_refcount_put",
        "rww" => "rcuwait_wake_up",
        "vaa" => "vm_area_alloc",
        "vad" => "vm_area_dup",
        "vaf" => "vm_area_free",
        "mmap" => "mmap_lock tracepoints",
        _ => "",
    }
}

/// What vmatrace's `--json` summary says about one phase.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct VmatraceRun {
    pub programs: Vec<ProgCost>,
    /// `stats.exclusion_wait` buckets.
    pub exclusion_wait: Vec<Bucket>,
    /// `events.by_logical_event.<key>.count`.
    pub logical: BTreeMap<String, u64>,
    pub events_total: u64,
    pub anomalies: u64,
    pub losses: u64,
    /// Program runs the kernel skipped (`losses.kernel.*_runs_skipped`), counted whether
    /// BPF statistics are on or not.
    pub skipped_runs: u64,
    pub hooks_attached: u64,
    /// CPU seconds of the vmatrace process itself (`tracer` in the summary), and the part
    /// spent before tracing began (BTF, load, verification, attach).
    pub tracer_cpu_s: f64,
    pub tracer_startup_s: f64,
    /// CPU seconds when the stop fired, before disarming, detaching and the last drain
    /// (`tracer.stop_cpu_s`; `None` from a vmatrace that does not report it).
    pub tracer_stop_s: Option<f64>,
    pub duration_s: f64,
}

impl VmatraceRun {
    pub fn from_json(v: &Value) -> VmatraceRun {
        let u = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        let f = |p: &str| v.pointer(p).and_then(Value::as_f64).unwrap_or(0.0);
        let programs = v
            .get("programs")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| {
                        let name = p.get("name")?.as_str()?.to_string();
                        Some(ProgCost {
                            function: vmatrace_function(&name).to_string(),
                            run_cnt: p.get("run_cnt")?.as_u64()?,
                            run_time_ns: p.get("run_time_ns")?.as_u64()?,
                            skipped_runs: p
                                .get("skipped_runs")
                                .and_then(Value::as_u64)
                                .unwrap_or(0),
                            name,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let exclusion_wait = v
            .pointer("/stats/exclusion_wait/buckets")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|b| {
                        Some(Bucket {
                            low: b.get("low_ns")?.as_u64()?,
                            high: b.get("high_ns")?.as_u64()?,
                            count: b.get("count")?.as_u64()?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let logical = v
            .pointer("/events/by_logical_event")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, c)| Some((k.clone(), c.get("count")?.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default();
        VmatraceRun {
            programs,
            exclusion_wait,
            logical,
            events_total: u("/events/total"),
            anomalies: u("/anomalies/total"),
            losses: u("/losses/total"),
            skipped_runs: ["entry", "return", "single"]
                .iter()
                .map(|k| u(&format!("/losses/kernel/{k}_runs_skipped")))
                .sum(),
            hooks_attached: u("/plan/hooks_attached"),
            tracer_cpu_s: f("/tracer/cpu_user_s") + f("/tracer/cpu_system_s"),
            tracer_startup_s: f("/tracer/startup_cpu_s"),
            tracer_stop_s: v.pointer("/tracer/stop_cpu_s").and_then(Value::as_f64),
            duration_s: f("/duration_s"),
        }
    }
}

/// What bpftrace printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BpftraceRun {
    /// `@start_exclude_ns` histogram.
    pub hist: Vec<Bucket>,
    /// `@calls[<probe>]` counts.
    pub calls: BTreeMap<String, u64>,
    /// Program id → probe, from `-v` (`Program ID: N` precedes `Attaching <probe>`).
    pub prog_ids: BTreeMap<u32, String>,
}

/// `1K` → 1024 etc. (bpftrace's `hist()` labels use binary prefixes).
fn size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        'K' => (&s[..s.len() - 1], 1u64 << 10),
        'M' => (&s[..s.len() - 1], 1 << 20),
        'G' => (&s[..s.len() - 1], 1 << 30),
        'T' => (&s[..s.len() - 1], 1 << 40),
        'P' => (&s[..s.len() - 1], 1 << 50),
        _ => (s, 1),
    };
    num.parse::<u64>().ok()?.checked_mul(mul)
}

/// One `hist()` line: `[1K, 2K)   345 |@@@@   |` or `[0]  3 |@|`.
fn hist_line(line: &str) -> Option<Bucket> {
    let line = line.trim_start();
    let rest = line.strip_prefix('[')?;
    let close = rest.find([')', ']'])?;
    let (range, after) = (&rest[..close], &rest[close + 1..]);
    let count = after.split_whitespace().next()?.parse().ok()?;
    let (low, high) = match range.split_once(',') {
        Some((a, b)) => (size(a)?, size(b)?.checked_sub(1)?),
        None => {
            let v = size(range)?;
            (v, v)
        }
    };
    Some(Bucket { low, high, count })
}

pub fn bpftrace(out: &str) -> BpftraceRun {
    let mut r = BpftraceRun::default();
    let mut in_hist = false;
    let mut pending_id = None;
    for line in out.lines() {
        let t = line.trim();
        if let Some(id) = t.strip_prefix("Program ID:") {
            pending_id = id.trim().parse::<u32>().ok();
            continue;
        }
        if let Some(probe) = t.strip_prefix("Attaching ")
            && !probe.ends_with("probes...")
        {
            if let Some(id) = pending_id.take() {
                r.prog_ids.insert(id, probe.trim().to_string());
            }
            continue;
        }
        if t.starts_with("@start_exclude_ns:") {
            in_hist = true;
            continue;
        }
        if in_hist {
            match hist_line(t) {
                Some(b) => {
                    r.hist.push(b);
                    continue;
                }
                None if t.is_empty() && r.hist.is_empty() => continue,
                None => in_hist = false,
            }
        }
        if let Some(rest) = t.strip_prefix("@calls[")
            && let Some((probe, n)) = rest.split_once("]:")
            && let Ok(n) = n.trim().parse()
        {
            r.calls.insert(probe.to_string(), n);
        }
    }
    r
}

/// One BPF program as `/proc/<pid>/fdinfo/<fd>` shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdProg {
    pub id: u32,
    pub run_cnt: u64,
    pub run_time_ns: u64,
    /// `recursion_misses`: runs the kernel skipped (kprobes: `bpf_prog_active` held on the
    /// CPU; trampolines: the program already active there).
    pub recursion_misses: u64,
}

/// `/proc/<pid>/fdinfo/*` of the program fds (`fd N` header, then `key:\tvalue` lines),
/// one entry per program id. A link's fd also names its program (`prog_id`) but has no run
/// counts: only program fds (`prog_type`) count.
pub fn fdinfo(text: &str) -> Vec<FdProg> {
    let mut out: Vec<FdProg> = Vec::new();
    let mut cur: Option<(Option<u32>, bool, FdProg)> = None;
    let flush = |c: Option<(Option<u32>, bool, FdProg)>, out: &mut Vec<FdProg>| {
        if let Some((Some(id), true, p)) = c
            && !out.iter().any(|q| q.id == id)
        {
            out.push(FdProg { id, ..p });
        }
    };
    for line in text.lines() {
        if line.starts_with("fd ") {
            flush(cur.take(), &mut out);
            cur = Some((None, false, FdProg::default()));
            continue;
        }
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let Some(c) = cur.as_mut() else { continue };
        let v = v.trim();
        let n = || v.parse().unwrap_or(0);
        match k.trim() {
            "prog_id" => c.0 = v.parse().ok(),
            "prog_type" => c.1 = true,
            "run_cnt" => c.2.run_cnt = n(),
            "run_time_ns" => c.2.run_time_ns = n(),
            "recursion_misses" => c.2.recursion_misses = n(),
            _ => {}
        }
    }
    flush(cur, &mut out);
    out
}

/// bpftrace's programs with their costs: fdinfo joined with the `-v` ids.
pub fn bpftrace_costs(run: &BpftraceRun, fds: &[FdProg]) -> Vec<ProgCost> {
    fds.iter()
        .map(|fd| {
            let name = run
                .prog_ids
                .get(&fd.id)
                .cloned()
                .unwrap_or_else(|| format!("prog {}", fd.id));
            let function = name
                .split_once(':')
                .map(|(_, f)| f.to_string())
                .unwrap_or_default();
            ProgCost {
                name,
                function,
                run_cnt: fd.run_cnt,
                run_time_ns: fd.run_time_ns,
                skipped_runs: fd.recursion_misses,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BT: &str = "Attaching 5 probes...\n\nProgram ID: 41\n\nThe verifier log: \nprocessed 21 insns\n\nAttaching kprobe:__vma_start_exclude_readers\n\nProgram ID: 42\n\nAttaching kretprobe:__vma_start_exclude_readers\n\n\n\
@calls[kprobe:lock_vma_under_rcu]: 36012\n@calls[kprobe:__vma_start_write]: 278000\n\n@start[1234]: 99\n\n\
@start_exclude_ns: \n[0]                    2 |                    |\n[512, 1K)             12 |@@@@                |\n[1K, 2K)             345 |@@@@@@@@@@@@@@@@@@@@|\n[16M, 32M)             1 |                    |\n\n";

    #[test]
    fn bpftrace_maps_and_ids() {
        let r = bpftrace(BT);
        assert_eq!(
            r.hist,
            [
                Bucket {
                    low: 0,
                    high: 0,
                    count: 2
                },
                Bucket {
                    low: 512,
                    high: 1023,
                    count: 12
                },
                Bucket {
                    low: 1024,
                    high: 2047,
                    count: 345
                },
                Bucket {
                    low: 16 << 20,
                    high: (32 << 20) - 1,
                    count: 1
                },
            ]
        );
        assert_eq!(r.calls["kprobe:__vma_start_write"], 278_000);
        assert_eq!(r.calls["kprobe:lock_vma_under_rcu"], 36_012);
        assert_eq!(r.calls.len(), 2, "@start is not a call count");
        assert_eq!(r.prog_ids[&41], "kprobe:__vma_start_exclude_readers");
        assert_eq!(r.prog_ids[&42], "kretprobe:__vma_start_exclude_readers");
    }

    #[test]
    fn fdinfo_joins_with_ids() {
        // A link's fd (fd 8) names the program too, without run counts: not a program.
        let text = "fd 7\npos:\t0\nflags:\t02000002\nprog_type:\t2\nprog_id:\t41\nrun_time_ns:\t5000\nrun_cnt:\t10\nrecursion_misses:\t4\n\
fd 8\nlink_type:\tperf\nlink_id:\t3\nprog_id:\t42\n\
fd 9\nprog_type:\t2\nprog_id:\t42\nrun_time_ns:\t900\nrun_cnt:\t3\nfd 10\nprog_type:\t2\nprog_id:\t42\nrun_time_ns:\t900\nrun_cnt:\t3\nfd 11\nrun_cnt:\t3\n";
        let fds = fdinfo(text);
        let p = |id, run_cnt, run_time_ns, recursion_misses| FdProg {
            id,
            run_cnt,
            run_time_ns,
            recursion_misses,
        };
        assert_eq!(fds, [p(41, 10, 5000, 4), p(42, 3, 900, 0)]);
        let costs = bpftrace_costs(&bpftrace(BT), &[p(41, 10, 5000, 4), p(77, 1, 1, 0)]);
        assert_eq!(costs[0].function, "__vma_start_exclude_readers");
        assert_eq!(costs[0].name, "kprobe:__vma_start_exclude_readers");
        assert_eq!(costs[0].skipped_runs, 4);
        assert_eq!(costs[1].name, "prog 77");
        assert_eq!(costs[1].function, "");
    }

    #[test]
    fn workload_rates_from_the_stress_report() {
        let v: serde_json::Value = serde_json::from_str(
            r#"{"duration_s":2.0,"ops":{"reader_touch":100,"reader_copy":50,"mprotect":10,"munmap":6,"errors":1,"fork":3}}"#,
        )
        .expect("json");
        let w = Workload::from_json(&v).expect("workload");
        assert_eq!((w.reader_ops, w.writer_ops, w.errors), (150, 16, 1));
        assert_eq!(w.total_per_s(), 83.0);
        assert!(Workload::from_json(&serde_json::json!({"ops": {}})).is_none());
    }

    #[test]
    fn vmatrace_summary_fields() {
        let v = json(
            "log line\n{\n \"events\": {\"total\": 9, \"by_logical_event\": {\"write_lock_request\": {\"count\": 4}}},\n \
             \"anomalies\": {\"total\": 0}, \"losses\": {\"total\": 2}, \"plan\": {\"hooks_attached\": 12},\n \
             \"duration_s\": 12.5, \"tracer\": {\"cpu_user_s\": 1.25, \"cpu_system_s\": 0.5, \"startup_cpu_s\": 0.25, \"stop_cpu_s\": 1.5},\n \
             \"programs\": [{\"name\": \"vsw_fentry\", \"run_cnt\": 4, \"run_time_ns\": 400, \"ns_per_run\": 100.0}],\n \
             \"stats\": {\"exclusion_wait\": {\"buckets\": [{\"low_ns\": 1024, \"high_ns\": 2047, \"count\": 3}]}}\n}\n",
        )
        .expect("json");
        let r = VmatraceRun::from_json(&v);
        assert_eq!(r.events_total, 9);
        assert_eq!(r.losses, 2);
        assert_eq!(r.hooks_attached, 12);
        assert_eq!(r.tracer_cpu_s, 1.75);
        assert_eq!(r.tracer_stop_s, Some(1.5));
        assert_eq!(r.tracer_startup_s, 0.25);
        assert_eq!(r.duration_s, 12.5);
        assert_eq!(r.logical["write_lock_request"], 4);
        assert_eq!(r.programs[0].function, "__vma_start_write");
        assert_eq!(
            r.exclusion_wait,
            [Bucket {
                low: 1024,
                high: 2047,
                count: 3
            }]
        );
    }
}
