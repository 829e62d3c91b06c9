//! The eBPF programs' load-time global `CONFIG`, built in one place from the plan, the
//! operator's filters and the streaming options.
//!
//! Every field has exactly one source here, so the CLI, the examples and the tests cannot
//! disagree with the loader about what the programs were told: the header a session
//! writes reads [`super::LiveSession::config`], the value that was loaded.

use vmatrace_common::ProgramConfig;

use crate::kernel::plan::ProbePlan;

/// Which tasks the programs trace. Everything else is dropped in the kernel.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filters {
    /// The tracer's own tgid, whose events are dropped (the kernel itself calls
    /// `lock_vma_under_rcu` for BPF stack maps and task-VMA iterators,
    /// `docs/protocol.md#race-9`). `None`: this process.
    pub self_tgid: Option<u32>,
    /// Only this tgid (`None`: all).
    pub tgid: Option<u32>,
    /// Only tasks whose comm starts with this (the kernel keeps 15 bytes of a comm, so
    /// longer prefixes are cut there).
    pub comm: Option<String>,
    /// Only tasks in this cgroup v2 id.
    pub cgroup: Option<u64>,
}

/// How the programs stream what they see.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamOptions {
    /// Stream one in N reader-acquire results (0: count only).
    pub reader_sample_every: u32,
    /// Entry programs stream their own event instead of folding it into the return's.
    pub stream_entries: bool,
    /// Size of the `EVENTS` ring buffer in bytes: a power of two and a multiple of the
    /// page size (rounded up to the next one otherwise).
    pub ring_buffer_bytes: u32,
    /// Writer-path waits at least this long get a `SlowWait` event (syscall and kernel
    /// stack); 0: never.
    pub slow_wait_ns: u64,
}

/// `--slow-wait`'s default: 1 ms.
pub const DEFAULT_SLOW_WAIT_NS: u64 = 1_000_000;

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            reader_sample_every: 0,
            stream_entries: false,
            ring_buffer_bytes: super::DEFAULT_RING_BUFFER_BYTES,
            slow_wait_ns: DEFAULT_SLOW_WAIT_NS,
        }
    }
}

/// `CONFIG` for `plan`, `filters` and `options` on this machine's possible CPUs.
pub fn build(plan: &ProbePlan, filters: &Filters, options: &StreamOptions) -> ProgramConfig {
    build_for_cpus(plan, filters, options, super::load::possible_cpus())
}

fn build_for_cpus(
    plan: &ProbePlan,
    filters: &Filters,
    options: &StreamOptions,
    cpus: usize,
) -> ProgramConfig {
    let mut c = ProgramConfig::DEFAULT;
    c.self_tgid = filters.self_tgid.unwrap_or_else(std::process::id);
    c.filter_tgid = filters.tgid.unwrap_or(0);
    if let Some(comm) = &filters.comm {
        let b = comm.as_bytes();
        let n = b.len().min(15);
        c.filter_comm[..n].copy_from_slice(&b[..n]);
        c.filter_comm_len = n as u32;
    }
    c.filter_cgroup = filters.cgroup.unwrap_or(0);
    c.reader_sample_every = options.reader_sample_every;
    c.stream_entries = u32::from(options.stream_entries);
    c.wake_every_records =
        super::load::wake_every_records(super::ring_size(options.ring_buffer_bytes), cpus);
    c.write_entry_from_exclude = u32::from(plan.write_entry_from_exclude());
    c.slow_wait_ns = options.slow_wait_ns;
    c
}

#[cfg(test)]
mod tests {
    use vmatrace_common::model::Generation;

    use super::*;
    use crate::kernel::plan::{
        AttachMode, AttachPoint, EventCoverage, KernelId, LogicalEvent, Observability,
    };
    use vmatrace_common::event::ProbeId;

    /// A plan whose write-lock request is (7.x) or is not (6.x) seen at start-exclude.
    fn plan(request_at_exclude: bool) -> ProbePlan {
        let (probe, target) = if request_at_exclude {
            (
                ProbeId::VmaStartExcludeReaders,
                "__vma_start_exclude_readers",
            )
        } else {
            (ProbeId::VmaStartWrite, "__vma_start_write")
        };
        ProbePlan {
            kernel: KernelId::default(),
            generation: Generation::V7_0,
            offsets: vmatrace_common::Offsets::ABSENT,
            points: vec![AttachPoint {
                probe,
                target: target.into(),
                mode: AttachMode::FEntry,
                program: "p".into(),
            }],
            attach: Default::default(),
            coverage: vec![EventCoverage {
                event: LogicalEvent::WriteLockRequest,
                status: if request_at_exclude {
                    Observability::Proxy {
                        via: "fentry __vma_start_exclude_readers".into(),
                        points: vec![0],
                    }
                } else {
                    Observability::Direct { points: vec![0] }
                },
            }],
            notes: Vec::new(),
        }
    }

    #[test]
    fn no_filters_trace_everything_but_the_tracer() {
        let c = build_for_cpus(
            &plan(false),
            &Filters::default(),
            &StreamOptions::default(),
            2,
        );
        assert_eq!(c.self_tgid, std::process::id());
        assert_eq!(
            (c.filter_tgid, c.filter_comm_len, c.filter_cgroup),
            (0, 0, 0)
        );
        assert_eq!((c.reader_sample_every, c.stream_entries), (0, 0));
        assert_eq!(c.write_entry_from_exclude, 0);
        // 8 MiB ring over 2 CPUs: a quarter of 65 536 records, halved.
        assert_eq!(c.wake_every_records, 8192);
    }

    #[test]
    fn every_field_comes_from_its_one_source() {
        let filters = Filters {
            self_tgid: Some(u32::MAX),
            tgid: Some(42),
            comm: Some("a-comm-longer-than-fifteen".into()),
            cgroup: Some(7),
        };
        let options = StreamOptions {
            reader_sample_every: 100,
            stream_entries: true,
            ring_buffer_bytes: 5000,
            slow_wait_ns: 2_000_000,
        };
        let c = build_for_cpus(&plan(true), &filters, &options, 1);
        assert_eq!(
            (c.self_tgid, c.filter_tgid, c.filter_cgroup),
            (u32::MAX, 42, 7)
        );
        assert_eq!(c.filter_comm_len, 15);
        assert_eq!(&c.filter_comm[..15], b"a-comm-longer-t");
        assert_eq!(c.filter_comm[15], 0);
        assert_eq!((c.reader_sample_every, c.stream_entries), (100, 1));
        // The plan says the write lock's request is seen at start-exclude's entry.
        assert_eq!(c.write_entry_from_exclude, 1);
        // 5000 bytes round up to an 8 KiB ring: a quarter is 16 records.
        assert_eq!(c.wake_every_records, 16);
    }
}
