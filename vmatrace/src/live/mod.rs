//! Live capture: load the eBPF object with this kernel's offsets, attach the probe plan,
//! and stream the ring buffer and the per-CPU counters into the pipeline.
//!
//! This is the only module that talks to `bpf()`. Everything it produces is a
//! [`SourceItem`], so the rest of the daemon cannot tell a live session from a replay.
//!
//! API used by the CLI, the dashboard and the VM tests (keep these names):
//! [`LiveOptions`], [`LiveSession::start`], [`LiveSession::hooks`],
//! [`LiveSession::program_stats`], [`LiveSession::stream`], [`tracing_programs_supported`].

mod attach;
mod counters;
pub mod lab;
mod link_misses;
mod load;
mod mapped;
mod privileges;
pub mod program_config;
mod ring;
mod stacks;
mod stats;
pub mod tracepoint_format;

use std::future::Future;

use tokio::sync::mpsc;

use crate::{
    kernel::plan::{AttachPoint, ProbePlan},
    pipeline::SourceItem,
};

pub use counters::skipped_runs;
pub use load::{names, ring_size};
pub use privileges::{check_privileges, raise_memlock_limit};
pub use program_config::{Filters, StreamOptions};
pub use ring::decode;
pub use stats::{ProgramStat, StatsHandle};

/// Default size of the `EVENTS` ring buffer (bytes; a power of two, multiple of the page size).
pub const DEFAULT_RING_BUFFER_BYTES: u32 = 8 << 20;

/// What to load and how.
#[derive(Clone, Debug)]
pub struct LiveOptions {
    /// Which programs to attach where, and the field offsets of this kernel.
    pub plan: ProbePlan,
    /// Which tasks to trace; with the plan and `stream`, the load-time global `CONFIG`
    /// ([`program_config::build`]).
    pub filters: Filters,
    /// Sampling, entry streaming and the ring buffer's size.
    pub stream: StreamOptions,
    /// Turn on the kernel's BPF run-time statistics (`BPF_ENABLE_STATS`) for the session,
    /// so [`LiveSession::program_stats`] reports run counts and times.
    pub enable_stats: bool,
}

/// The outcome of attaching one point of the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookStatus {
    pub point: AttachPoint,
    pub attached: bool,
    /// Why it failed: the full error chain including the errno (and the tail of the
    /// verifier log when the program was rejected).
    pub error: Option<String>,
}

/// A loaded and attached set of programs. Dropping it detaches everything.
pub struct LiveSession {
    inner: load::Loaded,
    hooks: Vec<HookStatus>,
    stats: StatsHandle,
    config: vmatrace_common::ProgramConfig,
}

impl LiveSession {
    /// Check privileges, raise `RLIMIT_MEMLOCK`, load the object with the plan's offsets
    /// and the `CONFIG` built from `opts` as globals, and attach every point of the plan. One failed hook
    /// does not abort the others (see [`LiveSession::hooks`]); this returns `Err` only when
    /// the object cannot be loaded at all or nothing attached.
    pub fn start(opts: LiveOptions) -> anyhow::Result<LiveSession> {
        let config = program_config::build(&opts.plan, &opts.filters, &opts.stream);
        let (inner, hooks) = load::start(&opts, &config)?;
        let stats = StatsHandle::new(&inner);
        Ok(LiveSession {
            inner,
            hooks,
            stats,
            config,
        })
    }

    /// The `CONFIG` the programs were loaded with (what a session header records).
    pub fn config(&self) -> &vmatrace_common::ProgramConfig {
        &self.config
    }

    /// Per point of the plan, in plan order: attached or why not.
    pub fn hooks(&self) -> &[HookStatus] {
        &self.hooks
    }

    /// Run count and run time of every loaded program (zero unless
    /// `LiveOptions::enable_stats` or the `kernel.bpf_stats_enabled` sysctl is on).
    pub fn program_stats(&self) -> Vec<ProgramStat> {
        self.stats.program_stats()
    }

    /// A handle that keeps reporting [`ProgramStat`]s while [`LiveSession::stream`] owns
    /// the session (for the dashboard and the exit summary).
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// The current kernel counters (per-CPU values summed).
    pub fn counters(&self) -> crate::pipeline::CounterSnapshot {
        counters::snapshot(
            &self.inner.counters,
            self.inner.fallbacks.as_ref(),
            &counters::skip_sources(&self.inner.ebpf, &self.inner.programs),
            &self.inner.link_misses,
        )
    }

    /// Stream until `stop` completes: ring-buffer records as [`SourceItem::Events`]
    /// batches (short or unknown records as [`SourceItem::Undecodable`]) and a
    /// [`SourceItem::Counters`] snapshot about every 250 ms. On stop: detach every link,
    /// drain what is left in the ring, send the final counters and return; dropping `tx`
    /// then closes the pipeline. Also returns (Ok) when the receiver goes away.
    pub async fn stream(
        self,
        tx: mpsc::Sender<SourceItem>,
        stop: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        ring::stream(self.inner, tx, stop).await
    }
}

/// Whether this kernel lets us load a tracing (fentry) program: tries to load one of the
/// object's fentry programs against a BTF function that every kernel has. `Ok(false)`
/// with the kernel saying no (EPERM/EINVAL/ENOTSUPP, no BTF); `Err` when the check itself
/// could not run (not root, object unparsable).
pub fn tracing_programs_supported() -> Result<bool, String> {
    load::tracing_programs_supported()
}
