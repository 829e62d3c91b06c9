//! The probe plan: per running kernel, which function is attached how, and through
//! which attach point each logical event is observed.
//!
//! These are the data types shared by the planner (`kernel::planner`), the loader
//! (`live::attach`), the trace file header and the dashboard. Producing a plan is pure:
//! it only needs the kernel's symbols and BTF (see `kernel::KernelInfo`).

use serde::{Deserialize, Serialize};
use vmatrace_common::{Offsets, event::ProbeId, model::Generation};

/// How a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    FEntry,
    FExit,
    KProbe,
    KRetProbe,
    /// A classic tracepoint, `category:name`.
    Tracepoint,
}

impl AttachMode {
    pub const fn key(self) -> &'static str {
        match self {
            AttachMode::FEntry => "fentry",
            AttachMode::FExit => "fexit",
            AttachMode::KProbe => "kprobe",
            AttachMode::KRetProbe => "kretprobe",
            AttachMode::Tracepoint => "tracepoint",
        }
    }
}

/// One program to attach.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachPoint {
    /// What kernel function (or tracepoint) this is.
    pub probe: ProbeId,
    /// The exact name to attach to: a kallsyms/BTF function name (possibly with a
    /// `.isra.N`/`.constprop.N` suffix for kprobes) or `category:name` for tracepoints.
    pub target: String,
    pub mode: AttachMode,
    /// The program's name in the eBPF object (see `vmatrace-ebpf`).
    pub program: String,
}

/// The logical events vmatrace reports, independent of kernel version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogicalEvent {
    WriteLockRequest,
    WriteLockResult,
    StartExcludeEntry,
    StartExcludeReturn,
    EndExclude,
    MarkDetachedFast,
    MarkDetachedSlow,
    ReaderAcquire,
    ReaderRelease,
    WriterWakeup,
    MmWriteUnlock,
    VmaAlloc,
    VmaFree,
}

impl LogicalEvent {
    pub const ALL: &'static [LogicalEvent] = &[
        LogicalEvent::WriteLockRequest,
        LogicalEvent::WriteLockResult,
        LogicalEvent::StartExcludeEntry,
        LogicalEvent::StartExcludeReturn,
        LogicalEvent::EndExclude,
        LogicalEvent::MarkDetachedFast,
        LogicalEvent::MarkDetachedSlow,
        LogicalEvent::ReaderAcquire,
        LogicalEvent::ReaderRelease,
        LogicalEvent::WriterWakeup,
        LogicalEvent::MmWriteUnlock,
        LogicalEvent::VmaAlloc,
        LogicalEvent::VmaFree,
    ];

    pub const fn key(self) -> &'static str {
        match self {
            LogicalEvent::WriteLockRequest => "write_lock_request",
            LogicalEvent::WriteLockResult => "write_lock_result",
            LogicalEvent::StartExcludeEntry => "start_exclude_entry",
            LogicalEvent::StartExcludeReturn => "start_exclude_return",
            LogicalEvent::EndExclude => "end_exclude",
            LogicalEvent::MarkDetachedFast => "mark_detached_fast",
            LogicalEvent::MarkDetachedSlow => "mark_detached_slow",
            LogicalEvent::ReaderAcquire => "reader_acquire",
            LogicalEvent::ReaderRelease => "reader_release",
            LogicalEvent::WriterWakeup => "writer_wakeup",
            LogicalEvent::MmWriteUnlock => "mm_write_unlock",
            LogicalEvent::VmaAlloc => "vma_alloc",
            LogicalEvent::VmaFree => "vma_free",
        }
    }
}

/// How (whether) a logical event can be seen on this kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum Observability {
    /// Seen at its own function: indices into [`ProbePlan::points`].
    Direct { points: Vec<usize> },
    /// Inferred from another attach point (`via` says which and why).
    Proxy { via: String, points: Vec<usize> },
    /// Not observable here, with the reason (inlined, notrace, blacklisted, ambiguous
    /// name, missing capability...).
    Unobservable { reason: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCoverage {
    pub event: LogicalEvent,
    pub status: Observability,
}

/// Identity of the kernel a plan was made for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelId {
    /// `uname -r` (or "offline" when planned from files).
    pub release: String,
}

/// Which mechanism the planner tries first for a kernel function.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AttachPreference {
    /// From the kernel's preemption model: kprobes where tasks can be preempted inside
    /// an fentry/fexit program (full, lazy, RT, or unknown), fentry/fexit elsewhere.
    #[default]
    Auto,
    /// fentry/fexit first (cheaper per call; loses runs to preemption).
    Fentry,
    /// kprobe/kretprobe first (run with preemption disabled: no run lost to it).
    Kprobe,
}

/// The mechanism tried first and why: what `probes` and the summary report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachChoice {
    /// `fentry` or `kprobe`.
    pub first: AttachMode,
    /// The kernel's preemption model (`none`, `voluntary`, `full`, `lazy`, `rt`,
    /// `unknown`); empty in plans recorded before it was detected.
    #[serde(default)]
    pub preemption: String,
    pub reason: String,
}

impl AttachChoice {
    /// A few words for the dashboard: `kprobe first · preempt lazy`.
    pub fn short(&self) -> String {
        let first = match self.first {
            AttachMode::KProbe | AttachMode::KRetProbe => "kprobe",
            _ => "fentry",
        };
        if self.preemption.is_empty() {
            format!("{first} first")
        } else {
            format!("{first} first · preempt {}", self.preemption)
        }
    }
}

impl Default for AttachChoice {
    /// Plans recorded before the choice existed tried fentry/fexit first.
    fn default() -> Self {
        AttachChoice {
            first: AttachMode::FEntry,
            preemption: String::new(),
            reason: "recorded before vmatrace chose per preemption model".into(),
        }
    }
}

impl std::fmt::Display for AttachChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pair = match self.first {
            AttachMode::KProbe | AttachMode::KRetProbe => "kprobe/kretprobe",
            _ => "fentry/fexit",
        };
        write!(f, "{pair} first: {}", self.reason)
    }
}

/// The plan for one kernel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbePlan {
    pub kernel: KernelId,
    pub generation: Generation,
    /// Field offsets for the programs (absent fields = `OFFSET_ABSENT`).
    pub offsets: Offsets,
    pub points: Vec<AttachPoint>,
    /// Which mechanism was tried first per function, and why.
    #[serde(default)]
    pub attach: AttachChoice,
    pub coverage: Vec<EventCoverage>,
    /// Free-form remarks for the operator (e.g. "tracing programs cannot load: using kprobes").
    pub notes: Vec<String>,
}

impl ProbePlan {
    /// How `event` is observed (every plan covers every [`LogicalEvent`]).
    pub fn status(&self, event: LogicalEvent) -> Option<&Observability> {
        self.coverage
            .iter()
            .find(|c| c.event == event)
            .map(|c| &c.status)
    }

    /// The attach points of one kernel function (or tracepoint).
    pub fn points_for(&self, probe: ProbeId) -> impl Iterator<Item = &AttachPoint> {
        self.points.iter().filter(move |p| p.probe == probe)
    }

    /// Whether `__vma_start_write`'s entry is observed at start-exclude's entry (7.x):
    /// the programs must then pair its return with that entry
    /// (`ProgramConfig::write_entry_from_exclude`).
    pub fn write_entry_from_exclude(&self) -> bool {
        matches!(
            self.status(LogicalEvent::WriteLockRequest),
            Some(Observability::Proxy { points, .. })
                if points.iter().any(|&i| self
                    .points
                    .get(i)
                    .is_some_and(|p| p.probe == ProbeId::VmaStartExcludeReaders))
        )
    }

    /// The refcount's readers-excluded flag on this kernel (`VMA_LOCK_OFFSET` before
    /// 7.0, `VM_REFCNT_EXCLUDE_READERS_FLAG` from 7.0; bit 30 in both).
    pub fn exclude_readers_flag(&self) -> u32 {
        self.generation.exclude_readers_flag()
    }
}
