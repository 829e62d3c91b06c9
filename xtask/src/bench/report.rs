//! Turning the guest's phases into the numbers issue 7 asks for: workload slowdown per
//! tool, per-hook cost, and the start-exclude histograms side by side.

use std::{collections::BTreeMap, fmt::Write as _};

use super::parse::{BpftraceRun, Bucket, ProgCost, VmatraceRun, Workload};

/// Index of the log2 bucket holding `v` (0 → 0, 1 → 1, 2..3 → 2, ...), as both tools
/// bucket.
pub fn log2_index(v: u64) -> u32 {
    u64::BITS - v.leading_zeros()
}

/// The bucket index holding quantile `q` of a histogram; `None` when empty.
pub fn quantile_bucket(h: &[Bucket], q: f64) -> Option<u32> {
    let total: u64 = h.iter().map(|b| b.count).sum();
    if total == 0 {
        return None;
    }
    let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for b in h {
        seen += b.count;
        if seen >= rank {
            return Some(log2_index(b.high));
        }
    }
    h.last().map(|b| log2_index(b.high))
}

/// The bucket index a tool's own measurement overhead puts its shortest waits in: the
/// lowest bucket holding at least 1 % of the waits (`None` when empty).
pub fn floor_bucket(h: &[Bucket]) -> Option<u32> {
    let total: u64 = h.iter().map(|b| b.count).sum();
    h.iter()
        .filter(|b| b.count * 100 >= total && b.count > 0)
        .map(|b| log2_index(b.high))
        .min()
}

/// How many log2 buckets above the higher of the two floors the compared waits start
/// (≥ 64 µs with the floors of these runs, 32× bpftrace's floor).
/// Below that a histogram shows mostly the tool's own overhead, not the kernel's wait:
/// both tools time from the end of their entry program to the start of their return
/// program, but how much of the tracing machinery falls inside that span differs (under
/// TCG one program run is 1–2 µs; bpftrace's kretprobe return path is inside its span,
/// vmatrace's fexit reads the clock first), and vmatrace leaves out the start-excludes that
/// found the VMA detached (no wait at all), which bpftrace's script cannot tell apart.
/// bpftrace's overhead shoulder reaches five buckets over its floor: with a floor in
/// [1K, 2K) it had 1.9 %, 0.2 % and 0.1 % of its waits in [8K, 16K), [16K, 32K) and
/// [32K, 64K) against vmatrace's 0.0 %, 0.1 % and 0.1 % (04:40 run), enough to move the
/// median of the waits above 16 µs by two buckets.
pub const TAIL_FROM_FLOOR: u32 = 6;

/// Fewest waits each tool must have in the compared tail.
pub const MIN_TAIL_WAITS: u64 = 20;

/// The buckets of `h` from log2 index `from` on.
fn tail(h: &[Bucket], from: u32) -> Vec<Bucket> {
    h.iter()
        .filter(|b| log2_index(b.high) >= from)
        .cloned()
        .collect()
}

/// The correctness cross-check of the two start-exclude histograms: the kernel's waits,
/// i.e. the waits from [`TAIL_FROM_FLOOR`] buckets above the higher floor on, must have
/// their median, p90 and p99 in the same or an adjacent log2 bucket. They come from
/// separate runs of the same workload, so only the distribution, not each sample, can
/// match. The whole-histogram quantiles are printed too, not compared.
pub fn histograms_agree(a: &[Bucket], b: &[Bucket]) -> Result<String, String> {
    let (Some(fa), Some(fb)) = (floor_bucket(a), floor_bucket(b)) else {
        return Err("a histogram is empty".into());
    };
    let from = fa.max(fb) + TAIL_FROM_FLOOR;
    let (ta, tb) = (tail(a, from), tail(b, from));
    let count = |h: &[Bucket]| h.iter().map(|b| b.count).sum::<u64>();
    let (na, nb) = (count(&ta), count(&tb));
    let mut notes = vec![format!(
        "waits ≥{} ns (floors ≤{} vs ≤{} ns): {na} vs {nb}",
        bucket_high(from - 1) + 1,
        bucket_high(fa),
        bucket_high(fb)
    )];
    if na < MIN_TAIL_WAITS || nb < MIN_TAIL_WAITS {
        notes.push(format!("fewer than {MIN_TAIL_WAITS} waits to compare"));
        return Err(notes.join(", "));
    }
    let mut ok = true;
    for (label, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)] {
        if let (Some(x), Some(y)) = (quantile_bucket(&ta, q), quantile_bucket(&tb, q)) {
            ok &= x.abs_diff(y) <= 1;
            notes.push(format!(
                "{label} ≤{} vs ≤{} ns",
                bucket_high(x),
                bucket_high(y)
            ));
        }
    }
    let whole: Vec<String> = [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)]
        .iter()
        .filter_map(|&(label, q)| {
            let (x, y) = (quantile_bucket(a, q)?, quantile_bucket(b, q)?);
            Some(format!(
                "{label} ≤{} vs ≤{}",
                bucket_high(x),
                bucket_high(y)
            ))
        })
        .collect();
    notes.push(format!("(all waits, not compared: {})", whole.join(", ")));
    let s = notes.join(", ");
    if ok { Ok(s) } else { Err(s) }
}

fn bucket_high(i: u32) -> u64 {
    match i {
        0 => 0,
        64.. => u64::MAX,
        _ => (1u64 << i) - 1,
    }
}

fn human_ns(v: u64) -> String {
    match v {
        0..1024 => format!("{v}"),
        1024..1_048_576 => format!("{}K", v >> 10),
        1_048_576..1_073_741_824 => format!("{}M", v >> 20),
        _ => format!("{}G", v >> 30),
    }
}

/// Both histograms, one row per bucket.
pub fn histogram_table(ours: &[Bucket], theirs: &[Bucket]) -> String {
    let mut idx: Vec<u32> = ours
        .iter()
        .chain(theirs)
        .map(|b| log2_index(b.high))
        .collect();
    idx.sort_unstable();
    idx.dedup();
    let count = |h: &[Bucket], i: u32| {
        h.iter()
            .filter(|b| log2_index(b.high) == i)
            .map(|b| b.count)
            .sum::<u64>()
    };
    let (to, tt) = (
        ours.iter().map(|b| b.count).sum::<u64>().max(1),
        theirs.iter().map(|b| b.count).sum::<u64>().max(1),
    );
    let mut s = format!(
        "  {:<16} {:>10} {:>7} {:>10} {:>7}\n",
        "wait (ns)", "vmatrace", "%", "bpftrace", "%"
    );
    for i in idx {
        let range = if i == 0 {
            "[0]".to_string()
        } else {
            let low = 1u64 << (i - 1);
            format!("[{}, {})", human_ns(low), human_ns(low.saturating_mul(2)))
        };
        let (a, b) = (count(ours, i), count(theirs, i));
        let _ = writeln!(
            s,
            "  {range:<16} {a:>10} {:>6.1}% {b:>10} {:>6.1}%",
            a as f64 * 100.0 / to as f64,
            b as f64 * 100.0 / tt as f64
        );
    }
    s
}

/// Per hooked function: calls (the entry program's run count) and total ns of every
/// program on it, so entry+exit pairs compare with entry+exit pairs.
pub fn per_function(progs: &[ProgCost]) -> BTreeMap<String, (u64, u64)> {
    let mut m: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for p in progs {
        let key = if p.function.is_empty() {
            p.name.clone()
        } else {
            p.function.clone()
        };
        let e = m.entry(key).or_default();
        e.0 = e.0.max(p.run_cnt);
        e.1 += p.run_time_ns;
    }
    m
}

/// One phase's parsed outputs.
#[derive(Debug, Default)]
pub struct PhaseResult {
    pub name: String,
    pub workload: Option<Workload>,
    pub vmatrace: Option<VmatraceRun>,
    pub bpftrace: Option<BpftraceRun>,
    pub bpftrace_costs: Vec<ProgCost>,
    pub problems: Vec<String>,
}

pub fn slowdown(base: f64, with: f64) -> f64 {
    if base > 0.0 { 1.0 - with / base } else { 0.0 }
}

/// The comparison, printed; also returned as JSON for target/bench/.
pub fn render(phases: &[PhaseResult]) -> (String, serde_json::Value) {
    let mut s = String::new();
    let get = |n: &str| phases.iter().find(|p| p.name == n);
    let w = |n: &str| get(n).and_then(|p| p.workload.clone());
    let bases: Vec<Workload> = ["base1", "base2"].iter().filter_map(|n| w(n)).collect();
    let mut json = serde_json::Map::new();
    let _ = writeln!(
        s,
        "\nworkload ops/s (the workload's own counts):\n  {:<16} {:>12} {:>12} {:>12} {:>10} {:>10}",
        "phase", "total/s", "reader/s", "writer/s", "slowdown", "writer sl."
    );
    let base_total =
        bases.iter().map(Workload::total_per_s).sum::<f64>() / bases.len().max(1) as f64;
    let base_writer =
        bases.iter().map(Workload::writer_per_s).sum::<f64>() / bases.len().max(1) as f64;
    let mut rows = Vec::new();
    for p in phases {
        let Some(wl) = &p.workload else {
            let _ = writeln!(s, "  {:<16} (no workload report)", p.name);
            continue;
        };
        let (sd, wsd) = (
            slowdown(base_total, wl.total_per_s()),
            slowdown(base_writer, wl.writer_per_s()),
        );
        let _ = writeln!(
            s,
            "  {:<16} {:>12.0} {:>12.0} {:>12.0} {:>9.1}% {:>9.1}%",
            p.name,
            wl.total_per_s(),
            wl.reader_per_s(),
            wl.writer_per_s(),
            sd * 100.0,
            wsd * 100.0
        );
        rows.push(serde_json::json!({
            "phase": p.name, "total_per_s": wl.total_per_s(), "reader_per_s": wl.reader_per_s(),
            "writer_per_s": wl.writer_per_s(), "slowdown": sd, "writer_slowdown": wsd,
            "errors": wl.errors,
        }));
    }
    if let [a, b] = bases.as_slice() {
        let _ = writeln!(
            s,
            "  baseline drift base1→base2: {:+.1}% (the noise floor of the slowdowns)",
            (b.total_per_s() / a.total_per_s() - 1.0) * 100.0
        );
    }
    json.insert("workload".into(), rows.into());

    // Per-hook cost, with statistics on.
    let ours = get("vmatrace_stats")
        .and_then(|p| p.vmatrace.as_ref())
        .map(|v| v.programs.clone())
        .unwrap_or_default();
    let theirs = get("bpftrace_stats")
        .map(|p| p.bpftrace_costs.clone())
        .unwrap_or_default();
    let fentry = get("vmatrace_fentry_stats")
        .and_then(|p| p.vmatrace.as_ref())
        .map(|v| v.programs.clone())
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "\nper-program cost (BPF run-time statistics; TCG inflates absolute times):"
    );
    let _ = writeln!(
        s,
        "  {:<50} {:<34} {:>10} {:>10}",
        "program", "function", "runs", "ns/run"
    );
    let mut prog_rows = Vec::new();
    for (tool, list) in [
        ("vmatrace", &ours),
        ("vmatrace_fentry", &fentry),
        ("bpftrace", &theirs),
    ] {
        for p in list.iter() {
            let per = (p.run_cnt > 0).then(|| p.run_time_ns as f64 / p.run_cnt as f64);
            let _ = writeln!(
                s,
                "  {:<50} {:<34} {:>10} {:>10}",
                format!("{tool} {}", p.name),
                p.function,
                p.run_cnt,
                per.map(|v| format!("{v:.0}")).unwrap_or_else(|| "—".into())
            );
            prog_rows.push(serde_json::json!({
                "tool": tool, "program": p.name, "function": p.function,
                "run_cnt": p.run_cnt, "run_time_ns": p.run_time_ns, "ns_per_run": per,
            }));
        }
    }
    json.insert("programs".into(), prog_rows.into());
    skipped_runs(phases, &mut s, &mut json);
    let (fo, ft, ff) = (
        per_function(&ours),
        per_function(&theirs),
        per_function(&fentry),
    );
    let _ = writeln!(
        s,
        "\nper hooked call (all programs on the function; entry+exit where both exist):\n  {:<34} {:>12} {:>12} {:>8} {:>12}",
        "function", "vmatrace ns", "bpftrace ns", "ratio", "fentry ns"
    );
    let mut fn_rows = Vec::new();
    for (f, (tc, tns)) in &ft {
        let Some((oc, ons)) = fo.get(f) else { continue };
        let (o, t) = (
            (*oc > 0).then(|| *ons as f64 / *oc as f64),
            (*tc > 0).then(|| *tns as f64 / *tc as f64),
        );
        let ratio = o.zip(t).map(|(o, t)| o / t);
        let fe = ff
            .get(f)
            .and_then(|(c, ns)| (*c > 0).then(|| *ns as f64 / *c as f64));
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "—".into());
        let _ = writeln!(
            s,
            "  {f:<34} {:>12} {:>12} {:>8} {:>12}",
            fmt(o),
            fmt(t),
            ratio
                .map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "—".into()),
            fmt(fe)
        );
        fn_rows.push(
            serde_json::json!({"function": f, "vmatrace_ns": o, "bpftrace_ns": t,
            "ratio": ratio, "vmatrace_fentry_ns": fe}),
        );
    }
    json.insert("per_call".into(), fn_rows.into());

    // What the slow-wait capture (syscall and stack of waits >= --slow-wait) costs the
    // writer-path returns: never compared (off), compared and never reached (1h), and
    // the default 1 ms, which under TCG many waits reach.
    let progs = |name: &str| {
        get(name)
            .and_then(|p| p.vmatrace.as_ref())
            .map(|v| v.programs.clone())
            .unwrap_or_default()
    };
    let (off, unreached) = (
        progs("vmatrace_noslow_stats"),
        progs("vmatrace_slowunreached_stats"),
    );
    if !off.is_empty() {
        let _ = writeln!(
            s,
            "
slow-wait capture, writer-path returns (ns/run): --slow-wait off / 1h (never reached) / 1ms (default):"
        );
        let mut rows = Vec::new();
        for p in off.iter().filter(|p| is_writer_return(&p.name)) {
            let per = |list: &[super::parse::ProgCost]| {
                list.iter()
                    .find(|q| q.name == p.name)
                    .and_then(|q| (q.run_cnt > 0).then(|| q.run_time_ns as f64 / q.run_cnt as f64))
            };
            let (a, b, c) = (per(&off), per(&unreached), per(&ours));
            let fmt = |v: Option<f64>| v.map(|v| format!("{v:.0}")).unwrap_or_else(|| "—".into());
            let _ = writeln!(
                s,
                "  {:<24} {:>8} {:>8} {:>8}   unreached/off {}",
                p.name,
                fmt(a),
                fmt(b),
                fmt(c),
                a.zip(b)
                    .map(|(a, b)| format!("{:.2}", b / a))
                    .unwrap_or_else(|| "—".into())
            );
            rows.push(serde_json::json!({"program": p.name, "off_ns": a, "unreached_ns": b, "default_ns": c}));
        }
        json.insert("slow_wait_capture".into(), rows.into());
    }

    // The correctness cross-check.
    for (vp, bp) in [
        ("vmatrace", "bpftrace"),
        ("vmatrace_stats", "bpftrace_stats"),
        ("vmatrace_fentry", "bpftrace"),
        ("vmatrace_fentry_stats", "bpftrace_stats"),
    ] {
        let (Some(v), Some(b)) = (
            get(vp).and_then(|p| p.vmatrace.as_ref()),
            get(bp).and_then(|p| p.bpftrace.as_ref()),
        ) else {
            continue;
        };
        let _ = writeln!(s, "\nstart-exclude wait histogram, {vp} vs {bp}:");
        s.push_str(&histogram_table(&v.exclusion_wait, &b.hist));
        let verdict = histograms_agree(&v.exclusion_wait, &b.hist);
        let _ = writeln!(
            s,
            "  {}: {}",
            if verdict.is_ok() {
                "AGREE within one log2 bucket"
            } else {
                "DISAGREE"
            },
            verdict.as_ref().unwrap_or_else(|e| e)
        );
        json.insert(
            format!("histograms_{vp}"),
            serde_json::json!({"agree": verdict.is_ok(), "detail": verdict.unwrap_or_else(|e| e),
                "vmatrace": v.exclusion_wait.iter().map(|b| [b.low, b.high, b.count]).collect::<Vec<_>>(),
                "bpftrace": b.hist.iter().map(|b| [b.low, b.high, b.count]).collect::<Vec<_>>()}),
        );
        // Event counts per workload op: separate runs, so compare rates.
        let ops = |n: &str| {
            w(n).map(|w| (w.reader_ops + w.writer_ops) as f64)
                .filter(|v| *v > 0.0)
        };
        if let (Some(vo), Some(bo)) = (ops(vp), ops(bp)) {
            let bt_hist: u64 = b.hist.iter().map(|x| x.count).sum();
            let pairs = [
                (
                    "__vma_start_write",
                    v.logical.get("write_lock_request").copied(),
                    b.calls.get("kprobe:__vma_start_write").copied(),
                ),
                (
                    "__vma_start_exclude_readers",
                    v.logical.get("start_exclude_entry").copied(),
                    Some(bt_hist),
                ),
                (
                    "__vma_exclude_readers_for_detach",
                    v.logical.get("mark_detached_slow").copied(),
                    b.calls
                        .get("kprobe:__vma_exclude_readers_for_detach")
                        .copied(),
                ),
                (
                    "lock_vma_under_rcu",
                    v.logical.get("reader_acquire").copied(),
                    b.calls.get("kprobe:lock_vma_under_rcu").copied(),
                ),
            ];
            let _ = writeln!(
                s,
                "  calls per 1000 workload ops:  {:<34} {:>10} {:>10}",
                "", "vmatrace", "bpftrace"
            );
            for (f, a, c) in pairs {
                let f1 = |x: Option<u64>, o: f64| {
                    x.map(|x| format!("{:.1}", x as f64 * 1000.0 / o))
                        .unwrap_or_else(|| "—".into())
                };
                let _ = writeln!(s, "    {f:<60} {:>10} {:>10}", f1(a, vo), f1(c, bo));
            }
        }
        // Where the tracer's cost goes: its own process (decode, validate, statistics)
        // shares the guest's vCPUs with the workload; the BPF time is in the programs.
        let bpf_s = v.programs.iter().map(|p| p.run_time_ns).sum::<u64>() as f64 / 1e9;
        // Tracing proper ends when the stop fires; detaching (trampoline teardown, charged
        // as system time) and the last drain come after the workload has ended.
        let stop = v.tracer_stop_s.unwrap_or(v.tracer_cpu_s);
        let _ = writeln!(
            s,
            "  vmatrace {vp}: {} events, {} losses, {} anomalies; tracer process {:.2} s CPU \
             while tracing for {:.1} s (+{:.2} s to load and attach, +{:.2} s to detach and \
             drain){}",
            v.events_total,
            v.losses,
            v.anomalies,
            stop - v.tracer_startup_s,
            v.duration_s,
            v.tracer_startup_s,
            v.tracer_cpu_s - stop,
            if bpf_s > 0.0 {
                format!(", BPF programs {bpf_s:.2} s")
            } else {
                String::new()
            }
        );
    }
    for p in phases {
        for e in &p.problems {
            let _ = writeln!(s, "  problem in {}: {e}", p.name);
        }
    }
    (s, serde_json::Value::Object(json))
}

/// Program runs the kernel skipped, per traced phase and tool: vmatrace's from its
/// summary (`losses.kernel.*_runs_skipped`), bpftrace's from its programs'
/// `recursion_misses` (fdinfo). Both are counted with statistics off too; the runs they
/// are a share of only with statistics on (bpftrace) or as events (vmatrace). Misses of
/// the kprobe layer itself (a kprobe hit inside another kprobe's handler, a kretprobe out
/// of instances) are in neither count for bpftrace, whose perf-event kprobes show no
/// link; vmatrace reads them from its links.
fn skipped_runs(
    phases: &[PhaseResult],
    s: &mut String,
    json: &mut serde_json::Map<String, serde_json::Value>,
) {
    let _ = writeln!(
        s,
        "\nprogram runs the kernel skipped (lost events):\n  {:<24} {:<10} {:>10} {:>14} {:>8}",
        "phase", "tool", "skipped", "of runs/events", "share"
    );
    let mut rows = Vec::new();
    for p in phases {
        let counts = if let Some(v) = &p.vmatrace {
            Some(("vmatrace", v.skipped_runs, v.events_total))
        } else if p.bpftrace.is_some() {
            let c = &p.bpftrace_costs;
            Some((
                "bpftrace",
                c.iter().map(|c| c.skipped_runs).sum(),
                c.iter().map(|c| c.run_cnt).sum(),
            ))
        } else {
            None
        };
        let Some((tool, skipped, of)) = counts else {
            continue;
        };
        let share = (of > 0).then(|| skipped as f64 / (skipped + of) as f64);
        let _ = writeln!(
            s,
            "  {:<24} {:<10} {:>10} {:>14} {:>8}",
            p.name,
            tool,
            skipped,
            if of > 0 { of.to_string() } else { "—".into() },
            share
                .map(|v| format!("{:.3}%", v * 100.0))
                .unwrap_or_else(|| "—".into())
        );
        rows.push(
            serde_json::json!({"phase": p.name, "tool": tool, "skipped_runs": skipped,
            "of": of, "share": share}),
        );
    }
    json.insert("skipped_runs".into(), rows.into());
}

/// The writer-path return programs, which carry the slow-wait comparison.
fn is_writer_return(name: &str) -> bool {
    ["vsw_", "vser_", "vel_", "vmd_", "verd_"]
        .iter()
        .any(|p| name.starts_with(p))
        && (name.ends_with("_fexit") || name.ends_with("_kretprobe"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(low: u64, count: u64) -> Bucket {
        Bucket {
            low,
            high: if low == 0 { 0 } else { low * 2 - 1 },
            count,
        }
    }

    #[test]
    fn quantiles_and_agreement() {
        let a = [b(512, 10), b(1024, 80), b(2048, 9), b(1 << 20, 1)];
        assert_eq!(quantile_bucket(&a, 0.5), Some(11));
        assert_eq!(quantile_bucket(&a, 0.99), Some(12));
        assert_eq!(quantile_bucket(&[], 0.5), None);
        assert_eq!(floor_bucket(&a), Some(10));
        assert!(histograms_agree(&a, &[]).is_err());
        // One wait above the floors: too few to compare.
        let shifted = [b(1024, 10), b(2048, 80), b(4096, 10), b(1 << 20, 1)];
        let e = histograms_agree(&a, &shifted).unwrap_err();
        assert!(e.contains("fewer than 20 waits"), "{e}");
        let t = histogram_table(&a, &shifted);
        assert!(t.contains("[1K, 2K)"), "{t}");
        assert!(t.contains("[1M, 2M)"), "{t}");
    }

    /// The stats-on pair of the 03:50 run (counts as measured): the whole-histogram p99
    /// was 3 buckets apart (vmatrace leaves out the detached no-wait calls, so its tail
    /// starts at a lower quantile), the waits above the floors agree.
    #[test]
    fn the_kernels_waits_are_compared_above_both_floors() {
        // Consecutive log2 buckets from `low` on.
        let run = |low: u64, counts: &[u64]| -> Vec<Bucket> {
            counts
                .iter()
                .enumerate()
                .map(|(i, &n)| b(low << i, n))
                .collect()
        };
        let ours = run(
            256,
            &[
                2022, 38857, 14509, 3882, 800, 31, 46, 30, 30, 27, 25, 49, 109, 311, 60, 3,
            ],
        );
        let theirs = run(
            1024,
            &[
                68662, 28670, 6257, 1840, 128, 140, 99, 56, 31, 47, 161, 341, 34,
            ],
        );
        let v = histograms_agree(&ours, &theirs).unwrap();
        assert!(
            v.contains("waits ≥65536 ns (floors ≤511 vs ≤2047 ns): 614 vs 769"),
            "{v}"
        );
        assert!(
            v.contains("all waits, not compared: p50 ≤1023 vs ≤2047"),
            "{v}"
        );
        // The same shapes with bpftrace's long waits 8× longer disagree.
        let mut late = theirs.clone();
        for x in late.iter_mut().skip(4) {
            *x = b(x.low * 8, x.count);
        }
        assert!(histograms_agree(&ours, &late).is_err());
    }

    #[test]
    fn per_function_pairs_entry_and_exit() {
        let p = |name: &str, f: &str, c, ns| ProgCost {
            name: name.into(),
            function: f.into(),
            run_cnt: c,
            run_time_ns: ns,
            skipped_runs: 0,
        };
        let m = per_function(&[
            p("vsw_fentry", "__vma_start_write", 10, 100),
            p("vsw_fexit", "__vma_start_write", 10, 300),
            p("prog 9", "", 1, 5),
        ]);
        assert_eq!(m["__vma_start_write"], (10, 400));
        assert_eq!(m["prog 9"], (1, 5));
        assert!((slowdown(100.0, 97.0) - 0.03).abs() < 1e-9);
    }

    #[test]
    fn skipped_runs_of_each_tool() {
        let prog = |skipped_runs| ProgCost {
            name: "kprobe:__vma_start_write".into(),
            function: "__vma_start_write".into(),
            run_cnt: 995,
            run_time_ns: 1,
            skipped_runs,
        };
        let phases = [
            PhaseResult {
                name: "base1".into(),
                ..Default::default()
            },
            PhaseResult {
                name: "vmatrace".into(),
                vmatrace: Some(VmatraceRun {
                    skipped_runs: 3,
                    events_total: 1000,
                    ..Default::default()
                }),
                ..Default::default()
            },
            PhaseResult {
                name: "bpftrace".into(),
                bpftrace: Some(BpftraceRun::default()),
                bpftrace_costs: vec![prog(5), prog(0)],
                ..Default::default()
            },
        ];
        let (text, json) = render(&phases);
        let rows = json["skipped_runs"].as_array().expect("rows");
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(
            (
                rows[0]["tool"].as_str(),
                rows[0]["skipped_runs"].as_u64(),
                rows[0]["of"].as_u64()
            ),
            (Some("vmatrace"), Some(3), Some(1000))
        );
        assert_eq!(
            (
                rows[1]["tool"].as_str(),
                rows[1]["skipped_runs"].as_u64(),
                rows[1]["of"].as_u64()
            ),
            (Some("bpftrace"), Some(5), Some(1990))
        );
        assert!(text.contains("0.251%"), "{text}");
    }
}
