//! The scenario run in each guest, as data: which `vmatrace` commands run (the guest's
//! static binary is built from the same commit, so it has all of them), the `/init`
//! script generated from them, and the assertions made on their output.

use std::fmt::Write as _;

use super::{
    results::{GuestResults, MARK, MARK_END, json_of},
    verdict::Verdict,
};

/// How a step's output is judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// `vmatrace probes --json`.
    Plan,
    /// `vmatrace run --headless --json` summary; `race`: the workload widened the detach
    /// race, so `mark_detached_slow` must have been seen.
    RunSummary { race: bool },
    /// `vmatrace run --headless --json` over fork victims killed while they wait
    /// (`checks::kill_wait`): interrupted waits counted, 0 anomalies.
    KillWait,
    /// The traced run the host injected faults into: judged on the host against the
    /// injector's record (`faults::judge`); here only its exit status.
    Faults,
    /// Informational; only the exit status counts.
    Info,
}

#[derive(Clone, Debug)]
pub struct Step {
    pub name: &'static str,
    pub argv: Vec<String>,
    /// The workload under the tracer: `argv` starts in the background, this runs once the
    /// tracer has said it is attached (its stderr contains [`READY`]), then the shell waits
    /// for `argv`. Program load and BTF parsing take seconds under TCG, so a fixed head
    /// start is not enough.
    pub background: Option<Vec<String>>,
    pub timeout_s: u32,
    /// Guest files whose content is sent back after the step (`<step>:<file>` sections).
    pub files: Vec<&'static str>,
    /// A (binary) guest file sent back after the step through the step's own virtio port
    /// ([`export_port`]); the host finds it as [`export_on_host`] in the artifacts
    /// directory.
    pub export: Option<&'static str>,
    /// Traced steps: the workload runs in [`WORKLOAD_CGROUP`], the only cgroup the tracer
    /// traces, and once it has exited the guest scrapes the tracer's `/metrics` into this
    /// file (sent back as `<step>:metrics`): nothing traced changes any more, so the
    /// scrape must equal the summary the tracer prints when its duration ends.
    pub scrape: Option<&'static str>,
    pub check: Check,
}

#[derive(Clone, Debug)]
pub struct Params {
    /// Seconds the workload (and the tracer) run.
    pub duration: u32,
    pub readers: u32,
    pub writers: u32,
    /// Add the `symbols` and `faults` steps: the host injects faults into the kernel
    /// during the last one (`faults.rs`).
    pub faults: bool,
}

pub const ANOMALY_LOG: &str = "/tmp/anomalies.jsonl";
/// The `faults` step's anomaly log (raw addresses: the injector knows the VMAs by them).
pub const FAULTS_ANOMALY_LOG: &str = "/tmp/faults-anomalies.jsonl";
pub const RACE_ANOMALY_LOG: &str = "/tmp/race-anomalies.jsonl";
pub const KILLWAIT_ANOMALY_LOG: &str = "/tmp/killwait-anomalies.jsonl";
/// The `killwait` step's delay on every fault of its cgroup: the fork victims' readers
/// hold their VMA that long, so `dup_mmap`'s killable waits last long enough for the
/// killer to see them (the widener's maximum).
pub const KILLWAIT_DELAY_US: u32 = 1000;
/// The `killwait` tracer's ring buffer: the delayed faults spin with interrupts off and
/// the killer polls at real-time priority, so the tracer may not run for a while; the
/// step is about interrupted waits, not about the ring's size.
pub const KILLWAIT_RING_BYTES: u32 = 32 << 20;
/// The busy-wait `stress --widen-race-us` puts around a reader's refcount increment: long
/// next to a TCG writer's write-lock-to-detach stretch (a few µs), short next to a tick.
pub const RACE_DELAY_US: u32 = 50;
/// The `race` step's workload: one reader and two writers, not the oversubscribed shape
/// of the `run` step. The widener spins inside the reader's fault with preemption off, so
/// a writer detaches inside that window only while the other vCPU is free for it; more
/// spinning readers hold both vCPUs. Slow detaches on 7.3.4 rt in 8 s, readers/writers:
/// 4/4 gave 4 (and 0 in both boots of a clean-clone CI run), 2/2 gave 23, 1/2 gave 115.
pub const RACE_READERS: u32 = 1;
pub const RACE_WRITERS: u32 = 2;
/// The guest's recordings of the traced runs.
pub const TRACE: &str = "/tmp/trace.vmatrace";
pub const RACE_TRACE: &str = "/tmp/race.vmatrace";
/// The cgroup the `run` step's workload runs in; the tracer traces only it.
pub const WORKLOAD_CGROUP: &str = "/sys/fs/cgroup/vmatrace-workload";
/// Where the `run` step's tracer serves metrics (guest loopback). Scraped with busybox
/// `nc` (its `wget` segfaulted in the guests).
pub const METRICS_ADDR: &str = "127.0.0.1:9464";
/// The `run` step's metrics scrape, in the guest.
pub const METRICS_SCRAPE: &str = "/tmp/run.metrics";
/// Seconds between the workload's exit and the scrape: the tracer drains the ring and
/// remakes the summary behind `/metrics` every second.
const SCRAPE_AFTER_S: u32 = 3;

/// The virtio port a step exports its file through.
pub fn export_port(step: &str) -> String {
    format!("vmatrace.{step}")
}

/// The exported file's name on the host, in the kernel's artifacts directory.
pub fn export_on_host(step: &str) -> String {
    format!("{step}.vmatrace")
}

/// What `vmatrace run`/`record` print on stderr once every hook is attached.
pub const READY: &str = "tracing kernel";
/// How long the guest waits for [`READY`] before starting the workload anyway.
pub const READY_TIMEOUT_S: u32 = 120;

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// The steps for one kernel: the plan, the traced runs, and with `p.faults` the
/// faulted one.
pub fn steps(p: &Params) -> Vec<Step> {
    let workload = format!(
        "vmatrace stress --duration {} --readers {} --writers {}",
        p.duration, p.readers, p.writers
    );
    // The traced run also counts its own calls with plain kprobes: the tracer's counts
    // must agree (`checks::kprobe_agreement`).
    let counted = format!("{workload} --forks --count-calls --json");
    let mut v = vec![Step {
        name: "kernel",
        // The preemption model decides how often fentry/fexit runs are skipped (a task
        // preempted inside a program blocks that program on its CPU): worth a line.
        argv: vec![
            "sh".into(),
            "-c".into(),
            "cat /proc/version; echo \"preempt: $(cat /sys/kernel/debug/sched/preempt 2>/dev/null || echo 'not dynamic')\"".into(),
        ],
        background: None,
        timeout_s: 10,
        files: vec![],
        export: None,
        scrape: None,
        check: Check::Info,
    }];
    v.push(Step {
        name: "probes",
        argv: words("vmatrace probes --json"),
        background: None,
        timeout_s: 60,
        files: vec![],
        export: None,
        scrape: None,
        check: Check::Plan,
    });
    v.push(traced("run", p, (TRACE, ANOMALY_LOG), &counted, false));
    // The detach slow path needs a reader inside a few-instruction window (see
    // `checks::RARE_EVENTS`); this run widens it and must see the kernel take it.
    v.push(traced(
        "race",
        p,
        (RACE_TRACE, RACE_ANOMALY_LOG),
        &format!(
            "vmatrace stress --duration {} --readers {RACE_READERS} --writers {RACE_WRITERS} --widen-race-us {RACE_DELAY_US} --json",
            p.duration
        ),
        true,
    ));
    v.push(kill_wait(p));
    if p.faults {
        v.extend(fault_steps(p));
    }
    v
}

/// `killwait`: only fork victims, killed while their `dup_mmap` sleeps in a killable
/// wait for the victim's own reader, whose faults the widener holds inside their VMA
/// ([`KILLWAIT_DELAY_US`]); the tracer traces the workload's cgroup. Where writers are
/// killable (6.19+) the interrupted waits must be counted, and nothing is an anomaly.
fn kill_wait(p: &Params) -> Step {
    // Three times the other steps' duration: a victim costs an exec and a wait for its
    // sleep (~5 victims in 8 s under TCG) and 0–60 % of those killed asleep end a wait
    // with -EINTR (the rest are woken first): 8 s gave 1–3 interrupted waits, 16 s 0–4
    // (0 of 7 once, on 7.3.4 cloud: the boot was retried).
    let duration = 3 * p.duration;
    let workload = format!(
        "vmatrace stress --duration {duration} --forks --kill-asleep --widen-race-us {KILLWAIT_DELAY_US} --json"
    );
    Step {
        name: "killwait",
        argv: words(&format!(
            "vmatrace run --headless --cgroup {WORKLOAD_CGROUP} --ring-buffer-bytes {KILLWAIT_RING_BYTES} --duration {} --json --anomaly-log {KILLWAIT_ANOMALY_LOG}",
            duration + RACE_TRACER_MARGIN_S
        )),
        background: Some(vec![
            "sh".into(),
            "-c".into(),
            format!("echo $$ > {WORKLOAD_CGROUP}/cgroup.procs && exec {workload}"),
        ]),
        timeout_s: budget(p) + 2 * p.duration + READY_TIMEOUT_S,
        files: vec![KILLWAIT_ANOMALY_LOG],
        export: None,
        scrape: None,
        check: Check::KillWait,
    }
}

/// The kernel functions the fault injector breaks at, whatever the generation calls
/// them (`faults::layout` picks what the plan probes).
const FAULT_SYMBOLS: &str =
    "__vma_start_write|vm_area_free|__vma_start_exclude_readers|__vma_enter_locked|current_task";

/// `symbols`: where the injector's functions are (`/proc/kallsyms`, read as root);
/// `faults`: every task traced, raw addresses, the usual workload, while the host injects
/// faults through QEMU's gdbstub.
fn fault_steps(p: &Params) -> Vec<Step> {
    // Twice the usual duration: every fault must be made while the workload runs (the
    // injector starts none after it exits), and under TCG each breakpoint stop is slow.
    let duration = 2 * p.duration;
    let workload = format!(
        "vmatrace stress --duration {duration} --readers {} --writers {}",
        p.readers, p.writers
    );
    let symbols = Step {
        name: "symbols",
        argv: vec![
            "sh".into(),
            "-c".into(),
            format!("grep -E ' ({FAULT_SYMBOLS})$' /proc/kallsyms"),
        ],
        background: None,
        timeout_s: 20,
        files: vec![],
        export: None,
        scrape: None,
        check: Check::Info,
    };
    let faults = Step {
        name: "faults",
        argv: words(&format!(
            "vmatrace run --headless --raw-addresses --duration {} --json --anomaly-log {FAULTS_ANOMALY_LOG}",
            duration + TRACER_MARGIN_S
        )),
        // Run through a symlink so the workload's tasks have their own comm: the
        // injector faults only them (the tracer does not trace itself).
        background: Some(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "ln -sf \"$(command -v vmatrace)\" /tmp/{comm} && exec /tmp/{comm}{} --forks --json",
                workload.trim_start_matches("vmatrace"),
                comm = super::faults::WORKLOAD_COMM
            ),
        ]),
        timeout_s: budget(p) + 4 * p.duration + READY_TIMEOUT_S,
        files: vec![FAULTS_ANOMALY_LOG],
        export: None,
        scrape: None,
        check: Check::Faults,
    };
    vec![symbols, faults]
}

/// Seconds a workload step may take. Generous: TCG is slow and the guest has two vCPUs
/// for all threads.
fn budget(p: &Params) -> u32 {
    60 + 4 * p.duration
}

/// Seconds the tracer runs beyond the workload's `--duration`: the workload starts once
/// the tracer is attached and must end before it, so its whole run is observed and the
/// tracer detaches from a quiet guest.
const TRACER_MARGIN_S: u32 = 4;
/// The same for the race step, whose workload first spends ~4 s under TCG setting up the
/// widener (BTF, kallsyms, /proc/kcore) before its `--duration` starts. With the plain
/// margin the tracer detached (rewriting ftrace sites) while the widener's kprobes still
/// spun, and the RT guest oopsed on a text-patching int3 at that moment in 2 of 11 runs.
const RACE_TRACER_MARGIN_S: u32 = 12;

/// A traced run: the tracer in the background, `workload` once it is attached. `record`
/// is `run --headless` that also writes the trace (`files.0`): the host replays it and must
/// arrive at the same summary. The tracer outlives the workload ([`TRACER_MARGIN_S`]).
fn traced(
    name: &'static str,
    p: &Params,
    files: (&'static str, &'static str),
    workload: &str,
    race: bool,
) -> Step {
    let (trace, anomaly_log) = files;
    let (cmd, export) = (format!("record -o {trace} --force --compress"), Some(trace));
    // The race step streams every entry as its own event (`--stream-entries`), the `run`
    // step folds them into their returns (the default): both forms of the writer path
    // run on every kernel of the matrix.
    let entries = if race { " --stream-entries" } else { "" };
    // The `run` step traces only its workload's cgroup and is scraped once the workload is
    // done; the race step traces every task (the unfiltered path).
    // Both workloads run in their own cgroup: the `run` step's tracer traces only it, the
    // race step's widener delays the faults of every task in it (the fork victims too).
    let background = vec![
        "sh".into(),
        "-c".into(),
        format!("echo $$ > {WORKLOAD_CGROUP}/cgroup.procs && exec {workload}"),
    ];
    let (filter, scrape, margin) = if race {
        (String::new(), None, RACE_TRACER_MARGIN_S)
    } else {
        (
            format!(" --cgroup {WORKLOAD_CGROUP} --metrics-listen {METRICS_ADDR}"),
            Some(METRICS_SCRAPE),
            TRACER_MARGIN_S + SCRAPE_AFTER_S,
        )
    };
    Step {
        name,
        argv: words(&format!(
            "vmatrace {cmd}{entries}{filter} --duration {} --json --anomaly-log {anomaly_log}",
            p.duration + margin
        )),
        background: Some(background),
        timeout_s: budget(p) + READY_TIMEOUT_S,
        files: vec![anomaly_log],
        export,
        scrape,
        check: Check::RunSummary { race },
    }
}

/// The start of every guest `/init`: busybox applets, the filesystems vmatrace needs
/// (proc, sys, dev, tracefs, debugfs, bpffs), and fd 3 = ttyS1 in raw mode (the host's
/// channel: results, or the event stream), binary-safe because raw mode disables the
/// newline translation.
pub const GUEST_PRELUDE: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /sys/fs/cgroup/vmatrace-workload
ifconfig lo 127.0.0.1 up
R=/dev/ttyS1
stty -F $R raw -echo 2>/dev/null
exec 3>$R
"#;

/// Single-quote a word for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub fn sh_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| sh_quote(w))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The guest's `/init`: mount what vmatrace needs, report the boot, run every step with
/// a timeout and send its output back on ttyS1, then power off.
pub fn init_script(steps: &[Step]) -> String {
    let mut s = String::from(GUEST_PRELUDE);
    let mark = |what: &str| format!("echo \"{MARK}{what}{MARK_END}\" >&3\n");
    // Progress lines go to the console and, with a kernel timestamp, to the kernel log
    // (level 3, so `quiet` still prints them): a guest oops can then be placed against
    // the step's phases (tracer started, workload started/ended).
    let say = |s: &mut String, what: &str| {
        let _ = writeln!(
            s,
            "echo \"vm: {what}\"; echo \"<3>vmatrace-vm: {what}\" > /dev/kmsg 2>/dev/null"
        );
    };
    s.push_str(&mark("booted $(uname -r)"));
    for st in steps {
        let n = st.name;
        say(&mut s, &format!("step {n}"));
        match &st.background {
            None => {
                let _ = writeln!(
                    s,
                    "timeout -s KILL {} {} >/tmp/{n}.out 2>/tmp/{n}.err; RC=$?",
                    st.timeout_s,
                    sh_words(&st.argv)
                );
            }
            Some(bg) => {
                let _ = writeln!(
                    s,
                    "timeout -s KILL {} {} >/tmp/{n}.out 2>/tmp/{n}.err & TP=$!",
                    st.timeout_s,
                    sh_words(&st.argv)
                );
                let _ = writeln!(
                    s,
                    "i=0; while [ $i -lt {READY_TIMEOUT_S} ] && kill -0 $TP 2>/dev/null && ! grep -q '{READY}' /tmp/{n}.err; do sleep 1; i=$((i+1)); done"
                );
                say(
                    &mut s,
                    &format!("step {n}: tracer ready after ${{i}}s; starting the workload"),
                );
                if st.scrape.is_some() {
                    // The host's Prometheus scrapes the tracer through a serial port.
                    s.push_str(&super::host_prometheus::relay_sh(METRICS_ADDR));
                }
                let _ = writeln!(
                    s,
                    "timeout -s KILL {} {} >/tmp/{n}.bg.out 2>/tmp/{n}.bg.err; BGRC=$?",
                    st.timeout_s,
                    sh_words(bg)
                );
                say(&mut s, &format!("step {n}: workload exited $BGRC"));
                if let Some(f) = st.scrape {
                    let _ = writeln!(
                        s,
                        "sleep {SCRAPE_AFTER_S}; (printf 'GET /metrics HTTP/1.0\\r\\nHost: guest\\r\\n\\r\\n'; sleep 5) | timeout 15 nc {} > {f}.http; head -1 {f}.http | grep -q ' 200 '; SRC=$?; tr -d '\\r' < {f}.http | sed '1,/^$/d' > {f}",
                        METRICS_ADDR.replace(':', " ")
                    );
                    say(&mut s, &format!("step {n}: metrics scraped ($SRC)"));
                }
                let _ = writeln!(s, "wait $TP; RC=$?");
                if st.scrape.is_some() {
                    s.push_str("[ -n \"$RELAY\" ] && kill $RELAY 2>/dev/null\n");
                }
            }
        }
        s.push_str(&mark(&format!("begin {n}")));
        let _ = writeln!(s, "cat /tmp/{n}.out >&3; echo >&3");
        s.push_str(&mark(&format!("end {n} rc=$RC")));
        s.push_str(&mark(&format!("begin {n}.stderr")));
        let _ = writeln!(s, "cat /tmp/{n}.err >&3; echo >&3; cat /tmp/{n}.err");
        s.push_str(&mark(&format!("end {n}.stderr rc=0")));
        if st.background.is_some() {
            s.push_str(&mark(&format!("begin {n}.background")));
            let _ = writeln!(s, "cat /tmp/{n}.bg.out >&3; echo >&3; cat /tmp/{n}.bg.err");
            s.push_str(&mark(&format!("end {n}.background rc=$BGRC")));
        }
        for f in &st.files {
            s.push_str(&mark(&format!("begin {n}:{f}")));
            let _ = writeln!(s, "cat {f} >&3 2>/dev/null; FRC=$?; echo >&3");
            s.push_str(&mark(&format!("end {n}:{f} rc=$FRC")));
        }
        if let Some(f) = st.scrape {
            s.push_str(&mark(&format!("begin {n}:metrics")));
            let _ = writeln!(s, "cat {f} >&3 2>/dev/null; echo >&3");
            s.push_str(&mark(&format!("end {n}:metrics rc=$SRC")));
        }
        if let Some(f) = st.export {
            s.push_str("PORT=\n");
            s.push_str(&super::guest_shell::find_port_sh("PORT", &export_port(n)));
            let _ = writeln!(s, "[ -n \"$PORT\" ] && cat {f} > $PORT");
        }
        say(&mut s, &format!("step {n} exited $RC"));
    }
    s.push_str(&mark("done"));
    s.push_str("exec 3>&-\nsync\npoweroff -f\n");
    s
}

/// Judge every step of a guest run.
pub fn judge(steps: &[Step], r: &GuestResults) -> Verdict {
    let mut v = Verdict::default();
    if r.booted.is_none() {
        v.failures
            .push("the guest never reported booting (init did not run)".into());
        return v;
    }
    for st in steps {
        let Some(sec) = r.section(st.name) else {
            v.failures.push(format!(
                "{}: no output (guest stopped before this step)",
                st.name
            ));
            continue;
        };
        let stderr = r
            .section(&format!("{}.stderr", st.name))
            .map(|s| s.body.lines().rev().take(5).collect::<Vec<_>>().join(" | "))
            .unwrap_or_default();
        match sec.rc {
            Some(0) => {}
            Some(137) => v.failures.push(format!(
                "{}: killed after its {}s timeout; stderr: {stderr}",
                st.name, st.timeout_s
            )),
            Some(rc) => v
                .failures
                .push(format!("{}: exit status {rc}; stderr: {stderr}", st.name)),
            None => v
                .failures
                .push(format!("{}: did not finish (guest died?)", st.name)),
        }
        match st.check {
            Check::Info => v.info.push(format!("{}: {}", st.name, sec.body.trim())),
            // Judged with the injector's record (`faults::judge`).
            Check::Faults => {}
            Check::Plan => match json_of(st.name, &sec.body) {
                Ok(j) => super::checks::plan(&j, &mut v),
                Err(e) => v.failures.push(e),
            },
            Check::KillWait => {
                no_anomaly_lines(st, r, &mut v);
                let workload = match r.section(&format!("{}.background", st.name)) {
                    Some(b) if b.rc == Some(0) => json_of("workload", &b.body),
                    Some(b) => Err(format!(
                        "{} workload: exit status {:?}: {}",
                        st.name,
                        b.rc,
                        b.body.trim()
                    )),
                    None => Err(format!("{} workload: no output", st.name)),
                };
                match (json_of(st.name, &sec.body), workload) {
                    (Ok(summary), Ok(workload)) => {
                        super::checks::kill_wait(st.name, &summary, &workload, &mut v)
                    }
                    (Err(e), _) | (_, Err(e)) => v.failures.push(e),
                }
            }
            Check::RunSummary { race } => {
                let summary = json_of(st.name, &sec.body);
                match &summary {
                    Ok(j) => {
                        super::checks::run_summary(st.name, j, race, &mut v);
                        if st.scrape.is_some() {
                            match r.section(&format!("{}:metrics", st.name)) {
                                Some(m) if m.rc == Some(0) => {
                                    super::scrape::judge(st.name, &m.body, j, &mut v)
                                }
                                Some(m) => v.failures.push(format!(
                                    "{}: the metrics scrape failed (no HTTP 200 from the tracer: {:?})",
                                    st.name, m.rc
                                )),
                                None => v
                                    .failures
                                    .push(format!("{}: no metrics scrape came back", st.name)),
                            }
                        }
                    }
                    Err(e) => v.failures.push(e.clone()),
                }
                no_anomaly_lines(st, r, &mut v);
                let bg = r.section(&format!("{}.background", st.name));
                match bg {
                    Some(b) if b.rc == Some(0) => match json_of("workload", &b.body) {
                        Ok(j) => {
                            let name = format!("{} workload", st.name);
                            super::checks::stress(&name, &j, !race, &mut v);
                            if race {
                                super::checks::race_widener(&name, &j, &mut v);
                            }
                            // The run step's workload counts its calls (`--count-calls`).
                            match (j.get("kprobe_calls").filter(|c| !c.is_null()), &summary) {
                                (Some(_), Ok(summary)) => super::checks::kprobe_agreement(
                                    st.name, summary, &j, &mut v,
                                ),
                                (None, _) if !race => v.failures.push(format!(
                                    "{name}: no `kprobe_calls` (the workload ran without --count-calls?)"
                                )),
                                _ => {} // no summary: failed above already
                            }
                        }
                        Err(e) => v.failures.push(e),
                    },
                    Some(b) => v.failures.push(format!(
                        "workload under the tracer: exit status {:?}: {}",
                        b.rc,
                        b.body.trim()
                    )),
                    None => v
                        .failures
                        .push("workload under the tracer: no output".into()),
                }
            }
        }
    }
    if !r.done {
        v.failures
            .push("the scenario did not run to the end".into());
    }
    v
}

/// A traced step's anomaly logs (its `files`, sent back) hold no anomaly line.
fn no_anomaly_lines(st: &Step, r: &GuestResults, v: &mut Verdict) {
    for f in &st.files {
        let Some(log) = r.section(&format!("{}:{f}", st.name)) else {
            continue;
        };
        let anomalies: Vec<&str> = log
            .body
            .lines()
            .filter(|l| l.contains("\"type\":\"anomaly\""))
            .collect();
        v.info.push(format!(
            "{f}: {} lines, {} anomalies",
            log.body.lines().count(),
            anomalies.len()
        ));
        if let Some(first) = anomalies.first() {
            v.failures.push(format!(
                "anomaly log: {} anomalies, first: {first}",
                anomalies.len()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::results;

    #[test]
    fn steps_plan_trace_and_optionally_fault() {
        let p = Params {
            duration: 5,
            readers: 2,
            writers: 2,
            faults: false,
        };
        let names: Vec<_> = steps(&p).iter().map(|s| s.name).collect();
        assert_eq!(names, ["kernel", "probes", "run", "race", "killwait"]);
        // With faults: where the injector's functions are, then the faulted run, whose
        // tracer traces every task and writes raw addresses (the injector knows the
        // faulted VMAs by them).
        let fp = Params {
            faults: true,
            ..p.clone()
        };
        let with_faults: Vec<_> = steps(&fp).iter().map(|s| s.name).collect();
        assert_eq!(
            with_faults,
            [
                "kernel", "probes", "run", "race", "killwait", "symbols", "faults"
            ]
        );
        let f = steps(&fp).pop().expect("faults step");
        let argv = f.argv.join(" ");
        assert!(
            argv.contains("--raw-addresses") && !argv.contains("--cgroup"),
            "{argv}"
        );
        assert_eq!(f.check, Check::Faults);
        assert_eq!(f.files, [FAULTS_ANOMALY_LOG]);
        let run = steps(&p)
            .into_iter()
            .find(|s| s.name == "run")
            .expect("run step");
        // The run step's workload goes into the traced cgroup; the tracer traces only it
        // and serves the metrics the guest scrapes.
        let bg = run.background.as_ref().expect("workload").join(" ");
        assert!(
            bg.contains(&format!(
                "echo $$ > {WORKLOAD_CGROUP}/cgroup.procs && exec vmatrace stress"
            )),
            "{bg}"
        );
        let argv = run.argv.join(" ");
        assert!(
            argv.contains(&format!("--cgroup {WORKLOAD_CGROUP}")),
            "{argv}"
        );
        assert!(
            argv.contains(&format!("--metrics-listen {METRICS_ADDR}")),
            "{argv}"
        );
        assert_eq!(run.scrape, Some(METRICS_SCRAPE));
        let race = steps(&p)
            .into_iter()
            .find(|s| s.name == "race")
            .expect("race step");
        assert!(
            !race.argv.join(" ").contains("--cgroup"),
            "the race step traces every task"
        );
        assert_eq!(race.scrape, None);
        // The kill-during-wait step: fork victims only, their faults held long, in the
        // traced cgroup.
        let kill = steps(&p)
            .into_iter()
            .find(|s| s.name == "killwait")
            .expect("killwait step");
        let bg = kill.background.as_ref().expect("workload").join(" ");
        assert!(
            bg.contains("--forks")
                && bg.contains(&format!("--widen-race-us {KILLWAIT_DELAY_US}"))
                && !bg.contains("--readers"),
            "{bg}"
        );
        assert_eq!(kill.check, Check::KillWait);
        assert_eq!(kill.files, [KILLWAIT_ANOMALY_LOG]);
    }

    #[test]
    fn init_script_frames_every_step() {
        let p = Params {
            duration: 5,
            readers: 2,
            writers: 2,
            faults: false,
        };
        let st = steps(&p);
        let s = init_script(&st);
        for name in ["kernel", "probes", "run"] {
            assert!(s.contains(&format!("@@VMATRACE begin {name}@@")), "{name}");
            assert!(
                s.contains(&format!("@@VMATRACE end {name} rc=$RC@@")),
                "{name}"
            );
        }
        assert!(s.contains("mount -t bpf bpf /sys/fs/bpf"));
        assert!(
            s.contains("'vmatrace' 'record' '-o' '/tmp/trace.vmatrace'"),
            "{s}"
        );
        // The workload waits for the tracer to be attached, and the shell for the tracer.
        let ready = s
            .find("grep -q 'tracing kernel' /tmp/run.err")
            .expect("readiness wait");
        let workload = s.find("exec vmatrace stress").expect("workload");
        let scrape = s
            .find("nc 127.0.0.1 9464 > /tmp/run.metrics.http")
            .expect("scrape");
        let wait = s.find("wait $TP; RC=$?").expect("wait for the tracer");
        // The host's Prometheus is relayed to the tracer from its readiness to its end.
        let relay = s.find("nc 127.0.0.1 9464 <&5 >&5").expect("relay");
        assert!(
            ready < relay && relay < workload && workload < scrape && scrape < wait,
            "{s}"
        );
        assert_eq!(s.matches("<&5 >&5").count(), 1, "only the run step relays");
        assert!(s.contains("@@VMATRACE end run:metrics rc=$SRC@@"), "{s}");
        assert!(s.contains("mount -t cgroup2 cgroup2 /sys/fs/cgroup"));
        assert!(s.ends_with("poweroff -f\n"));
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn judge_flags_failures_and_missing_output() {
        let p = Params {
            duration: 5,
            readers: 2,
            writers: 2,
            faults: false,
        };
        let st = steps(&p);
        let raw = b"@@VMATRACE booted 7.3.4@@\n@@VMATRACE begin kernel@@\nLinux version 7.3.4\n@@VMATRACE end kernel rc=0@@\n\
            @@VMATRACE begin probes@@\n{\"plan\":{}}\n@@VMATRACE end probes rc=1@@\n";
        let v = judge(&st, &results::parse(raw));
        let all = v.failures.join("\n");
        assert!(all.contains("probes: exit status 1"), "{all}");
        assert!(all.contains("run: no output"), "{all}");
        assert!(all.contains("did not run to the end"), "{all}");
        assert_eq!(v.info[0], "kernel: Linux version 7.3.4");
        let none = judge(&st, &results::parse(b""));
        assert_eq!(none.failures.len(), 1);
    }
}
