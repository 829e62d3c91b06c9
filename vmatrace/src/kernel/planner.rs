//! From a kernel's symbols, ftrace list and BTF to a [`ProbePlan`]: for every logical
//! event, where (and whether) it can be seen on this kernel, and which program attaches
//! where in which mode.
//!
//! Which mechanism is tried first is the plan's [`AttachChoice`] (see [`choose`]): on
//! kernels that preempt kernel code, fentry/fexit runs are lost to preemption and kprobes
//! come first. Rules, per kernel function, in that order (`PREFER_KPROBE` functions
//! always try kprobes first):
//! - fentry/fexit when the function has exactly one whole out-of-line copy under its own
//!   name, a BTF `FUNC` of that name, is ftrace-able (listed in
//!   `available_filter_functions`, or, when the list is unreadable, not known from the
//!   kernel source to be `notrace`) and tracing programs can load;
//! - otherwise kprobe/kretprobe, when the kprobe PMU exists, the copy is unique (a
//!   duplicated name makes attach-by-name fail with EADDRNOTAVAIL), not blacklisted, and
//!   ftrace-able, unless the kernel has `CONFIG_KPROBE_EVENTS_ON_NOTRACE=y` (without it
//!   kprobe events on notrace functions fail with EINVAL; an unknown config is taken as
//!   Debian's default: not set);
//! - otherwise the function is unattachable, with the reason.
//!
//! Which function serves which logical event depends on the generation (see
//! `docs/protocol.md#observability`).

use std::collections::BTreeMap;
use std::fmt;

use vmatrace_common::event::ProbeId;
use vmatrace_common::model::Generation;

use super::caps::Capabilities;
use super::generation;
use super::info::KernelInfo;
use super::offsets::{self, OffsetError};
use super::plan::{
    AttachChoice, AttachMode, AttachPoint, AttachPreference, EventCoverage, KernelId, LogicalEvent,
    Observability, ProbePlan,
};
use super::programs::{PROGRAMS, program_for};
use super::symbols::Resolved;

#[derive(Debug)]
pub enum PlanError {
    /// The kernel has no refcount-based per-VMA lock (≤6.14, or no `CONFIG_PER_VMA_LOCK`)
    /// or is not a vmlinux BTF.
    Unsupported { reason: String },
    /// A field the programs must read could not be resolved.
    Offsets(OffsetError),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Unsupported { reason } => write!(f, "unsupported kernel: {reason}"),
            PlanError::Offsets(e) => write!(f, "cannot resolve field offsets: {e}"),
        }
    }
}

impl std::error::Error for PlanError {}

/// Functions known from the kernel source to be `notrace` (every `inline` function is:
/// `include/linux/compiler_types.h`), used only when `available_filter_functions` is not
/// readable. Their out-of-line copies have no `__fentry__` call, so fentry cannot attach.
const KNOWN_NOTRACE: &[&str] = &["vma_refcount_put", "__vma_enter_locked"];

/// Functions where a kprobe beats fentry/fexit when both work. `rcuwait_wake_up`: the
/// kprobe emits the wake-up before it happens, so it is ordered before the woken writer's
/// return; an fexit record can land after it (see `vmatrace-ebpf/src/wake.rs`).
const PREFER_KPROBE: &[ProbeId] = &[ProbeId::RcuwaitWakeUp];

/// How one kernel function can be attached.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Hook {
    /// Attach with these modes to `target` (the kallsyms name).
    Attach {
        target: String,
        modes: Vec<AttachMode>,
    },
    Unattachable {
        reason: String,
    },
}

/// The planner's working state: the kernel, what may be used, and the plan so far.
struct Planner<'a> {
    info: &'a KernelInfo,
    caps: &'a Capabilities,
    generation: Generation,
    /// Try kprobe/kretprobe before fentry/fexit for every function.
    kprobe_first: bool,
    points: Vec<AttachPoint>,
    notes: Vec<String>,
    /// Functions that could not be attached, with the reason (reported as notes even
    /// when another attach point covers their event).
    failed: BTreeMap<ProbeId, String>,
    /// Functions that get no entry program because their entry is observed at another
    /// function's (7.x `__vma_start_write`, see [`write_lock_request`]).
    entry_elsewhere: Vec<ProbeId>,
}

impl Planner<'_> {
    fn traceable(&self, exact: &str) -> Option<bool> {
        match &self.info.filter_functions {
            Some(f) => Some(f.contains(exact)),
            None => Some(!KNOWN_NOTRACE.contains(&exact)),
        }
    }

    /// Whether kprobes may attach to notrace functions: `CONFIG_KPROBE_EVENTS_ON_NOTRACE`.
    /// Unknown config: Debian's default (not set).
    fn kprobe_on_notrace(&self) -> bool {
        self.info
            .config
            .as_ref()
            .is_some_and(|c| c.is_enabled("KPROBE_EVENTS_ON_NOTRACE"))
    }

    /// Why the notrace rule applies, for the reason text.
    fn notrace_config_state(&self) -> &'static str {
        match &self.info.config {
            Some(_) => " (not set in this kernel's config)",
            None => " (kernel config unknown: assumed not set, as in Debian's builds)",
        }
    }

    /// Decide how `probe`'s function can be attached.
    fn hook(&self, probe: ProbeId) -> Hook {
        let name = probe.kernel_name();
        let sym = match self.info.kallsyms.resolve(name) {
            Resolved::Unique(s) => s,
            Resolved::Absent => {
                // Inlined functions usually leave no BTF FUNC either, so the two cases
                // cannot always be told apart; say which one the evidence supports.
                let in_btf = self.info.btf.functions(name).is_ok_and(|f| !f.is_empty());
                let reason = if in_btf {
                    format!("{name} has no out-of-line copy in kallsyms (inlined)")
                } else {
                    format!(
                        "{name} is not in kallsyms or BTF (inlined, or not in this kernel version)"
                    )
                };
                return Hook::Unattachable { reason };
            }
            Resolved::Ambiguous(v) => {
                return Hook::Unattachable {
                    reason: format!(
                        "{name} is ambiguous: {} kallsyms entries ({}); attaching by name \
                         fails (EADDRNOTAVAIL)",
                        v.len(),
                        v.iter()
                            .map(|s| s.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
            }
        };
        let target = sym.name.clone();
        let tracing_modes = modes_of(probe, &[AttachMode::FEntry, AttachMode::FExit]);
        let kprobe_modes = modes_of(probe, &[AttachMode::KProbe, AttachMode::KRetProbe]);

        // fentry/fexit: by BTF name, so only the exact (unsuffixed) name qualifies.
        let btf_funcs = self.info.btf.functions(name).map(|f| f.len()).unwrap_or(0);
        let traceable = self.traceable(&target);
        let mut why_not_fentry = Vec::new();
        if tracing_modes.is_empty() {
            why_not_fentry.push("vmatrace has no fentry/fexit program for it".to_string());
        }
        if target != name {
            why_not_fentry.push(format!("only the compiler clone {target} is out of line"));
        }
        if btf_funcs != 1 {
            why_not_fentry.push(if btf_funcs == 0 {
                "no BTF FUNC".to_string()
            } else {
                format!("{btf_funcs} BTF FUNCs share the name")
            });
        }
        if traceable == Some(false) {
            why_not_fentry.push(if self.info.filter_functions.is_some() {
                "notrace (not in available_filter_functions)".to_string()
            } else {
                "notrace (an inline function's out-of-line copy, per the kernel source)".to_string()
            });
        }
        if !self.caps.fentry_usable() {
            why_not_fentry.push("tracing programs cannot load here".to_string());
        }
        let fentry_ok = why_not_fentry.is_empty();
        if fentry_ok && !self.kprobe_first && !PREFER_KPROBE.contains(&probe) {
            return Hook::Attach {
                target,
                modes: tracing_modes,
            };
        }

        let mut why_not_kprobe = Vec::new();
        if kprobe_modes.is_empty() {
            why_not_kprobe.push("vmatrace has no kprobe program for it".to_string());
        }
        if !self.caps.kprobes {
            why_not_kprobe.push("no kprobe PMU".to_string());
        }
        if self
            .info
            .config
            .as_ref()
            .is_some_and(|c| !c.is_enabled("KPROBES"))
        {
            why_not_kprobe.push("CONFIG_KPROBES is not set".to_string());
        }
        // trace_kprobe.c (__register_trace_kprobe -> within_notrace_func) refuses, with
        // EINVAL, a kprobe event on a function without an ftrace site unless the kernel
        // is built with CONFIG_KPROBE_EVENTS_ON_NOTRACE; the perf kprobe PMU aya uses goes
        // through the same check.
        let notrace = traceable == Some(false);
        let refused_notrace = notrace && !self.kprobe_on_notrace();
        if refused_notrace {
            why_not_kprobe.push(
                "kprobe events refuse notrace functions without \
                 CONFIG_KPROBE_EVENTS_ON_NOTRACE"
                    .to_string(),
            );
        }
        if self
            .info
            .kprobe_blacklist
            .as_ref()
            .is_some_and(|b| b.contains(&target))
        {
            why_not_kprobe.push("in the kprobe blacklist".to_string());
        }
        if why_not_kprobe.is_empty() {
            return Hook::Attach {
                target,
                modes: kprobe_modes,
            };
        }
        if fentry_ok {
            return Hook::Attach {
                target,
                modes: tracing_modes,
            };
        }
        if refused_notrace && why_not_kprobe.len() == 1 {
            // The common case on distribution kernels: say it in one sentence.
            return Hook::Unattachable {
                reason: format!(
                    "{name}: notrace: out-of-line copy of an inline function; kprobe events \
                     refuse notrace functions without CONFIG_KPROBE_EVENTS_ON_NOTRACE{}",
                    self.notrace_config_state()
                ),
            };
        }
        Hook::Unattachable {
            reason: format!(
                "{name}: fentry/fexit impossible ({}); kprobe impossible ({})",
                why_not_fentry.join(", "),
                why_not_kprobe.join(", ")
            ),
        }
    }

    /// Attach `probe` and return the indices of its points (entry side first), or the
    /// reason it cannot be attached.
    fn attach(&mut self, probe: ProbeId) -> Result<Vec<usize>, String> {
        if let Some(existing) = self.existing(probe) {
            return Ok(existing);
        }
        match self.hook(probe) {
            Hook::Attach { target, modes } => Ok(modes
                .into_iter()
                .filter(|&mode| {
                    !(self.entry_elsewhere.contains(&probe)
                        && matches!(mode, AttachMode::FEntry | AttachMode::KProbe))
                })
                .filter_map(|mode| {
                    let program = program_for(probe, mode)?;
                    self.points.push(AttachPoint {
                        probe,
                        target: target.clone(),
                        mode,
                        program: program.to_string(),
                    });
                    Some(self.points.len() - 1)
                })
                .collect()),
            Hook::Unattachable { reason } => {
                self.failed.insert(probe, reason.clone());
                Err(reason)
            }
        }
    }

    fn existing(&self, probe: ProbeId) -> Option<Vec<usize>> {
        let v: Vec<usize> = (0..self.points.len())
            .filter(|&i| self.points[i].probe == probe)
            .collect();
        (!v.is_empty()).then_some(v)
    }

    /// The entry-side points of `probe` (fentry/kprobe).
    fn entry(&mut self, probe: ProbeId) -> Result<Vec<usize>, String> {
        let all = self.attach(probe)?;
        let v = self.filter(&all, |m| {
            matches!(m, AttachMode::FEntry | AttachMode::KProbe)
        });
        if v.is_empty() {
            return Err(format!("{}: no entry program", probe.kernel_name()));
        }
        Ok(v)
    }

    /// The return-side points of `probe`: the fexit, or the kretprobe together with the
    /// kprobe that saves the arguments for it.
    fn exit(&mut self, probe: ProbeId) -> Result<Vec<usize>, String> {
        let all = self.attach(probe)?;
        let fexit = self.filter(&all, |m| m == AttachMode::FExit);
        if !fexit.is_empty() {
            return Ok(fexit);
        }
        if self.filter(&all, |m| m == AttachMode::KRetProbe).is_empty() {
            return Err(format!("{}: no return program", probe.kernel_name()));
        }
        Ok(self.filter(&all, |m| {
            matches!(m, AttachMode::KProbe | AttachMode::KRetProbe)
        }))
    }

    fn filter(&self, idx: &[usize], pred: impl Fn(AttachMode) -> bool) -> Vec<usize> {
        idx.iter()
            .copied()
            .filter(|&i| pred(self.points[i].mode))
            .collect()
    }

    fn tracepoint(&mut self, probe: ProbeId) -> Result<usize, String> {
        if let Some(v) = self.existing(probe) {
            return Ok(v[0]);
        }
        let full = probe.kernel_name();
        let event = full.split_once(':').map_or(full, |(_, e)| e);
        if !self.caps.tracefs {
            return Err(format!(
                "tracepoint {full}: tracefs is not mounted or not readable (tracepoints attach through \
                 <tracefs>/events)"
            ));
        }
        if let Some(tps) = &self.info.mmap_lock_tracepoints
            && !tps.iter().any(|t| t == event)
        {
            return Err(format!("tracepoint {full} does not exist here"));
        }
        let program = program_for(probe, AttachMode::Tracepoint)
            .ok_or_else(|| format!("vmatrace has no program for {full}"))?;
        self.points.push(AttachPoint {
            probe,
            target: full.to_string(),
            mode: AttachMode::Tracepoint,
            program: program.to_string(),
        });
        Ok(self.points.len() - 1)
    }
}

fn modes_of(probe: ProbeId, wanted: &[AttachMode]) -> Vec<AttachMode> {
    wanted
        .iter()
        .copied()
        .filter(|&m| PROGRAMS.iter().any(|p| p.probe == probe && p.mode == m))
        .collect()
}

fn direct(r: Result<Vec<usize>, String>) -> Observability {
    match r {
        Ok(points) => Observability::Direct { points },
        Err(reason) => Observability::Unobservable { reason },
    }
}

fn proxy(via: String, r: Result<Vec<usize>, String>, why_not_direct: &str) -> Observability {
    match r {
        Ok(points) if !points.is_empty() => Observability::Proxy { via, points },
        Ok(_) => Observability::Unobservable {
            reason: why_not_direct.to_string(),
        },
        Err(reason) => Observability::Unobservable {
            reason: format!("{why_not_direct}; the proxy is unavailable too: {reason}"),
        },
    }
}

/// Union of the successful results; Err only when all fail (reasons joined).
fn any_of(results: Vec<Result<Vec<usize>, String>>) -> Result<Vec<usize>, String> {
    let mut ok = Vec::new();
    let mut errs = Vec::new();
    let mut any = false;
    for r in results {
        match r {
            Ok(v) => {
                any = true;
                ok.extend(v);
            }
            Err(e) => errs.push(e),
        }
    }
    if any { Ok(ok) } else { Err(errs.join("; ")) }
}

/// Which mechanism to try first on this kernel, and why.
pub fn choose(info: &KernelInfo, caps: &Capabilities, pref: AttachPreference) -> AttachChoice {
    let pm = &info.preemption;
    let model = pm.model.map_or("unknown", |m| m.key());
    let lossy = "a task preempted inside an fentry/fexit program makes the kernel skip \
                 that program's other runs on its CPU until it resumes; kprobe programs run \
                 with preemption disabled";
    let (kprobe, reason) = match pref {
        AttachPreference::Kprobe => (true, "--attach kprobe".to_string()),
        AttachPreference::Fentry => (
            false,
            format!("--attach fentry (preemption {model}: runs it skips are counted as losses)"),
        ),
        AttachPreference::Auto => match pm.model {
            // The running mode, read from debugfs, or a kernel that cannot change it.
            Some(m)
                if !m.preempts_kernel_code()
                    && (pm.source == super::preempt::SCHED_PREEMPT
                        || pm.dynamic == Some(false)) =>
            {
                (
                    false,
                    format!(
                        "preemption {model} ({}): kernel code is not preempted, so the cheaper \
                         fentry/fexit lose no runs to it",
                        pm.source
                    ),
                )
            }
            Some(m) if m.preempts_kernel_code() => {
                (true, format!("preemption {model} ({}): {lossy}", pm.source))
            }
            Some(_) => (
                true,
                format!(
                    "preemption {model} is only the default ({}): a PREEMPT_DYNAMIC kernel may \
                     run full or lazy, and kprobes lose no runs to preemption whatever the mode",
                    pm.source
                ),
            ),
            None => (
                true,
                format!(
                    "preemption model unknown ({}): kprobes lose no runs to preemption \
                     whatever the mode",
                    pm.source
                ),
            ),
        },
    };
    if kprobe && !caps.kprobes {
        return AttachChoice {
            first: AttachMode::FEntry,
            preemption: model.into(),
            reason: format!(
                "{reason}; but no kprobe PMU here, so fentry/fexit (runs the kernel skips \
                 are counted as losses)"
            ),
        };
    }
    AttachChoice {
        first: if kprobe {
            AttachMode::KProbe
        } else {
            AttachMode::FEntry
        },
        preemption: model.into(),
        reason,
    }
}

/// Make the plan for `info` under `caps`, choosing the attach mechanism from the
/// kernel's preemption model.
pub fn plan(info: &KernelInfo, caps: &Capabilities) -> Result<ProbePlan, PlanError> {
    plan_with(info, caps, AttachPreference::Auto)
}

/// Make the plan for `info` under `caps` with an explicit attach preference.
pub fn plan_with(
    info: &KernelInfo,
    caps: &Capabilities,
    pref: AttachPreference,
) -> Result<ProbePlan, PlanError> {
    let attach = choose(info, caps, pref);
    let detected = generation::detect(info).map_err(|e| PlanError::Unsupported { reason: e.0 })?;
    let generation = detected.generation;
    let offsets = offsets::resolve(&info.btf, generation).map_err(PlanError::Offsets)?;
    let mut p = Planner {
        info,
        caps,
        generation,
        kprobe_first: attach.first == AttachMode::KProbe,
        points: Vec::new(),
        notes: Vec::new(),
        failed: BTreeMap::new(),
        entry_elsewhere: Vec::new(),
    };
    p.notes.push(format!(
        "generation {} ({}); readers-excluded flag 0x{:x}",
        generation.label(),
        detected.evidence,
        generation.exclude_readers_flag()
    ));

    use LogicalEvent as E;
    use ProbeId as P;
    let mut coverage = Vec::new();
    for &event in LogicalEvent::ALL {
        let status = match event {
            E::WriteLockRequest => write_lock_request(&mut p),
            E::WriteLockResult => direct(p.exit(P::VmaStartWrite)),
            E::StartExcludeEntry => start_exclude(&mut p, true),
            E::StartExcludeReturn => start_exclude(&mut p, false),
            E::EndExclude => end_exclude(&mut p),
            E::MarkDetachedFast => mark_detached(&mut p, true),
            E::MarkDetachedSlow => mark_detached(&mut p, false),
            E::ReaderAcquire => direct(any_of(vec![
                p.exit(P::LockVmaUnderRcu),
                p.exit(P::LockNextVma),
            ])),
            E::ReaderRelease => reader_release(&mut p),
            E::WriterWakeup => direct(p.exit(P::RcuwaitWakeUp)),
            E::MmWriteUnlock => direct(any_of(vec![
                p.tracepoint(P::MmapLockReleased).map(|i| vec![i]),
                p.tracepoint(P::MmapLockAcquireReturned).map(|i| vec![i]),
            ])),
            E::VmaAlloc => direct(any_of(vec![p.exit(P::VmAreaAlloc), p.exit(P::VmAreaDup)])),
            E::VmaFree => direct(p.entry(P::VmAreaFree)),
        };
        coverage.push(EventCoverage { event, status });
    }

    // Each reason starts with the function's name.
    for reason in std::mem::take(&mut p.failed).into_values() {
        p.notes.push(format!("not attached: {reason}"));
    }
    // These can sleep while waiting for readers: a kretprobe instance is held for the
    // whole wait, and the kernel drops returns beyond `maxactive` (counted as nmissed).
    let sleepers: Vec<&str> = p
        .points
        .iter()
        .filter(|a| {
            a.mode == AttachMode::KRetProbe
                && matches!(
                    a.probe,
                    ProbeId::VmaStartWrite
                        | ProbeId::VmaEnterLocked
                        | ProbeId::VmaStartExcludeReaders
                        | ProbeId::VmaExcludeReadersForDetach
                        | ProbeId::VmaMarkDetached
                )
        })
        .map(|a| a.target.as_str())
        .collect();
    if !sleepers.is_empty() {
        let list = sleepers.join(", ");
        p.notes.push(format!(
            "kretprobes on sleeping functions ({list}): returns beyond the kretprobe's \
             maxactive instances are missed by the kernel (nmissed), not by vmatrace"
        ));
    }
    if generation.profile().exclude_state_struct {
        p.notes.push(
            "start-exclude reads struct vma_exclude_readers_state: vma, state, detaching at \
             entry; exclusive, detached at return (through the saved ves pointer)"
                .into(),
        );
    }
    capability_notes(&mut p);
    p.notes.push(match &info.config {
        Some(c) => format!("kernel config ({}): {}", c.source, c.summary()),
        None => "kernel config unknown (no /proc/config.gz or /boot/config-<release>, or no \
                 --config): assuming Debian's defaults, CONFIG_KPROBE_EVENTS_ON_NOTRACE not \
                 set, so notrace functions cannot be kprobed"
            .into(),
    });
    p.notes.push(info.preemption.describe());
    p.notes.extend(info.remarks.iter().cloned());
    // Signatures of the hooked functions, so the operator sees what the programs assume.
    for name in [
        "__vma_start_write",
        "__vma_start_exclude_readers",
        "__vma_enter_locked",
    ] {
        if let Ok(f) = info.btf.functions(name)
            && let Some(f) = f.first()
        {
            let params: Vec<String> = f
                .params
                .iter()
                .map(|a| {
                    let t = info.btf.type_name(a.type_id);
                    let sep = if t.ends_with('*') { "" } else { " " };
                    format!("{t}{sep}{}", a.name)
                })
                .collect();
            let ret = f.ret.map_or("void".into(), |r| info.btf.type_name(r));
            p.notes
                .push(format!("BTF: {ret} {name}({})", params.join(", ")));
        }
    }

    Ok(ProbePlan {
        kernel: KernelId {
            release: info.release.clone(),
        },
        generation,
        offsets,
        points: p.points,
        attach,
        coverage,
        notes: p.notes,
    })
}

fn reader_release(p: &mut Planner<'_>) -> Observability {
    let put = p.entry(ProbeId::VmaRefcountPut);
    let wake = p.exit(ProbeId::RcuwaitWakeUp);
    let mut via = Vec::new();
    if put.is_ok() {
        via.push("vma_refcount_put (its out-of-line copy only, called from fault retry sites)");
    }
    if wake.is_ok() {
        via.push("rcuwait_wake_up when the last reader leaves under a waiting writer");
    }
    proxy(
        format!("{}; other releases are inlined", via.join(" and ")),
        any_of(vec![put, wake]),
        "vma_end_read/vma_refcount_put are inline",
    )
}

/// 7.x: `__vma_start_write(vma, state)` calls `__vma_start_exclude_readers(&ves)` before it
/// touches the VMA (it only reads the mm's sequence first), with `ves.vma = vma`,
/// `ves.state = state`, `ves.detaching = false`. That entry's sample (time, `vm_refcnt`,
/// `vm_lock_seq`, state) is therefore the write lock's, and `__vma_start_write`'s own
/// entry program, a second program run on every write lock, is left out. Its return
/// takes the entry start-exclude saved (`vmatrace-ebpf` `inflight::take_outer`). Where
/// start-exclude's entry cannot be attached, `__vma_start_write`'s own is used.
fn write_lock_request(p: &mut Planner<'_>) -> Observability {
    if p.generation.profile().exclude_state_struct
        && let Ok(points) = p.entry(ProbeId::VmaStartExcludeReaders)
    {
        p.entry_elsewhere.push(ProbeId::VmaStartWrite);
        return Observability::Proxy {
            via: "the entry of __vma_start_exclude_readers with ves->detaching = 0: \
                  __vma_start_write calls it first, with the same VMA and state, so its \
                  entry sample is the write lock's (one program less per write lock)"
                .into(),
            points,
        };
    }
    direct(p.entry(ProbeId::VmaStartWrite))
}

fn start_exclude(p: &mut Planner<'_>, entry: bool) -> Observability {
    let profile = p.generation.profile();
    let Some(probe) = profile.start_exclude else {
        let inlined = "__vma_enter_locked is static inline here: inlined into \
                       __vma_start_write and vma_mark_detached";
        if entry {
            return Observability::Unobservable {
                reason: inlined.into(),
            };
        }
        return proxy(
            "the wait's outcome, at the return of __vma_start_write / vma_mark_detached".into(),
            any_of(vec![
                p.exit(ProbeId::VmaStartWrite),
                p.exit(ProbeId::VmaMarkDetached),
            ]),
            inlined,
        );
    };
    let r = if entry { p.entry(probe) } else { p.exit(probe) };
    // 7.0+: the outcome is in the state struct, read only at start-exclude's return.
    if profile.exclude_state_struct {
        return direct(r);
    }
    match r {
        Ok(points) => Observability::Direct { points },
        Err(reason) if entry => Observability::Unobservable { reason },
        Err(reason) => proxy(
            "the wait's outcome, at the return of __vma_start_write / vma_mark_detached".into(),
            any_of(vec![
                p.exit(ProbeId::VmaStartWrite),
                p.exit(ProbeId::VmaMarkDetached),
            ]),
            &reason,
        ),
    }
}

fn end_exclude(p: &mut Planner<'_>) -> Observability {
    let profile = p.generation.profile();
    let (name, detach) = (profile.end_exclude_function, profile.detach_probe);
    let why = if matches!(p.info.kallsyms.resolve(name), Resolved::Absent) {
        format!("{name} is inlined")
    } else {
        format!("{name} is out of line here but vmatrace has no program for it")
    };
    // On the -EINTR path (6.19+, killable writers) start-exclude removes the flag itself
    // before returning: that end is seen at start-exclude's return.
    // Start-exclude is planned before end-exclude (LogicalEvent::ALL order), so whether
    // its return is hooked is known here; 6.19 without kprobes on notrace has no hook.
    let start_hooked = p.existing(ProbeId::VmaEnterLocked).is_some()
        || p.existing(ProbeId::VmaStartExcludeReaders).is_some();
    let eintr = match (p.generation.has_killable_writers(), start_hooked) {
        (false, _) => "",
        (true, true) => "; after a fatal signal (-EINTR) at the return of start-exclude",
        (true, false) => {
            "; after a fatal signal (-EINTR) at the -EINTR return of __vma_start_write"
        }
    };
    proxy(
        format!(
            "the return of __vma_start_write (write path) and {} (detach){eintr}; {why}",
            detach.kernel_name()
        ),
        any_of(vec![p.exit(ProbeId::VmaStartWrite), p.exit(detach)]),
        &why,
    )
}

fn mark_detached(p: &mut Planner<'_>, fast: bool) -> Observability {
    let detach = p.generation.profile().detach_probe;
    // ≤6.19: the global vma_mark_detached sees every detach (fast = it finds R == 1).
    if p.generation.profile().every_detach_hookable {
        return match p.exit(detach) {
            Ok(points) => Observability::Direct { points },
            Err(reason) if fast => proxy(
                "vm_area_free entry (the refcount must be 0 when the VMA is freed)".into(),
                p.entry(ProbeId::VmAreaFree),
                &reason,
            ),
            Err(reason) => Observability::Unobservable { reason },
        };
    }
    // 7.0+: only the slow path is a function.
    if !fast {
        return direct(p.exit(detach));
    }
    let why = if matches!(
        p.info.kallsyms.resolve("vma_mark_detached"),
        Resolved::Absent
    ) {
        "vma_mark_detached is inline: its fast path (1 → 0) has no probe point"
    } else {
        "vma_mark_detached is out of line here but vmatrace hooks only its slow path"
    };
    proxy(
        format!("vm_area_free entry (the refcount must be 0 when the VMA is freed); {why}"),
        p.entry(ProbeId::VmAreaFree),
        why,
    )
}

fn capability_notes(p: &mut Planner<'_>) {
    let c = p.caps;
    if !c.kprobes {
        p.notes.push(
            "kprobes cannot attach here: no kprobe PMU (/sys/bus/event_source/devices/kprobe); \
             notrace functions are unobservable"
                .into(),
        );
    }
    match c.tracing_programs {
        Some(false) => p.notes.push(
            "fentry/fexit cannot attach here: loading a tracing program failed (EPERM); \
             kprobes are used instead where possible"
                .into(),
        ),
        None => p.notes.push(
            "fentry/fexit availability is checked at load: if tracing programs cannot load \
             (EPERM on sandboxed kernels), those hooks fall back to kprobes or fail"
                .into(),
        ),
        Some(true) => {}
    }
    if !c.can_bpf() {
        p.notes.push(
            "this process lacks CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN): nothing can load \
             until run as root"
                .into(),
        );
    }
    if p.info.kallsyms.addresses_hidden {
        p.notes
            .push("kallsyms addresses are hidden (kptr_restrict): names are still usable".into());
    }
}
