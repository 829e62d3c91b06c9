//! Load the embedded object with this kernel's globals and attach the plan.

use std::os::fd::OwnedFd;

use anyhow::{Context, bail};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{MapData, RingBuf, StackTraceMap},
    programs::{FEntry, ProgramError},
};
use vmatrace_common::globals::MmapLockTpOffsets;

use super::{
    HookStatus, LiveOptions,
    attach::{OwnedLink, attach_point, error_chain},
    counters::FallbackTable,
    mapped::{MappedArray, cpu_rows},
    privileges, tracepoint_format,
};
use crate::kernel::plan::AttachMode;

/// Arm (every hook attached) or disarm (about to detach) the programs: see `ARMED` in
/// `vmatrace-ebpf/src/maps.rs`.
pub(super) fn set_armed(ebpf: &mut aya::Ebpf, on: bool) -> anyhow::Result<()> {
    let map = ebpf
        .map_mut(names::ARMED)
        .context("the eBPF object has no ARMED map")?;
    let mut armed: aya::maps::Array<_, u32> = aya::maps::Array::try_from(map)?;
    armed
        .set(0, u32::from(on), 0)
        .context("writing the ARMED map")?;
    Ok(())
}

/// Names in the eBPF object that userspace relies on (checked by the object test).
pub mod names {
    /// `RingBuf` of [`vmatrace_common::Event`] records.
    pub const EVENTS: &str = "EVENTS";
    /// `Array<u64>`, mmap-able: a row of `COUNTER_SLOTS` per CPU, indexed by
    /// [`vmatrace_common::Counter`].
    pub const COUNTERS: &str = "COUNTERS";
    /// `Array<u32>` of one: 1 while the session is armed (every hook attached).
    pub const ARMED: &str = "ARMED";
    pub const SINCE_WAKE: &str = "SINCE_WAKE";
    /// `StackTrace`: kernel stacks of slow waits (`SlowWait` events' `ret`).
    pub const STACKS: &str = "STACKS";
    /// `Array<ReaderFallbacks>`, mmap-able: a row of `FALLBACK_SLOTS` per CPU of
    /// writer-caused reader fallbacks by tgid.
    pub const READER_FALLBACKS: &str = "READER_FALLBACKS";
    /// In-flight maps pairing entry and return per thread, one per function family so
    /// nested calls (`__vma_start_write` → start-exclude) and the hot reader path do not
    /// disturb each other.
    pub const INFLIGHT_MAPS: &[&str] = &[
        "INFLIGHT_WRITE",
        "INFLIGHT_EXCLUDE",
        "INFLIGHT_DETACH",
        "INFLIGHT_READER",
        "INFLIGHT_WAKE",
    ];
    /// mm's `vma_writer_wait` address → the VMA being excluded (identifies writer wake-ups).
    pub const EXCLUDERS: &str = "EXCLUDERS";
    /// Load-time globals (`.rodata`).
    pub const OFFSETS: &str = "OFFSETS";
    pub const CONFIG: &str = "CONFIG";
    /// `Generation as u32`: selects argument positions and return conventions.
    pub const GENERATION: &str = "GENERATION";
    /// [`vmatrace_common::globals::MmapLockTpOffsets`].
    pub const MMAP_LOCK_TP: &str = "MMAP_LOCK_TP";
    pub const GLOBALS: &[&str] = &[OFFSETS, CONFIG, GENERATION, MMAP_LOCK_TP];
    /// The lab object's ([`crate::LAB_OBJECT`]) global: a
    /// [`vmatrace_common::globals::LabConfig`].
    pub const LAB: &str = "LAB";
}

/// Everything a running session owns. Field order is drop order: links first (detach),
/// then the maps, then the programs.
pub(super) struct Loaded {
    pub links: Vec<OwnedLink>,
    pub ring: RingBuf<MapData>,
    pub counters: MappedArray<u64>,
    /// `None` in objects without the map (it is always there; a missing one only
    /// costs the slow waits' stacks).
    pub stacks: Option<StackTraceMap<MapData>>,
    /// `None` likewise: only the per-process fallback counts are missing then.
    pub fallbacks: Option<FallbackTable>,
    pub ebpf: Ebpf,
    /// Loaded program names (object names, not the kernel's 15-char truncations).
    pub programs: Vec<String>,
    /// Keeps `BPF_ENABLE_STATS` on while the session lives.
    pub _stats: Option<OwnedFd>,
    /// The kprobe links' missed counts read so far (they vanish with the links).
    pub link_misses: super::link_misses::Seen,
}

/// Round a ring-buffer size up to what the kernel accepts: a power of two, at least one page.
pub fn ring_size(bytes: u32) -> u32 {
    // SAFETY: sysconf has no preconditions.
    let page = u32::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096);
    bytes
        .max(page)
        .checked_next_power_of_two()
        .unwrap_or(1 << 31)
}

/// Mount tracefs at /sys/kernel/tracing if it is nowhere (classic tracepoint attach needs
/// the event ids it lists). Returns where it is.
fn ensure_tracefs() -> Result<std::path::PathBuf, String> {
    if let Some(p) = tracepoint_format::tracefs_dir() {
        return Ok(p);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: NUL-terminated static strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "tracefs is not mounted and mounting it at /sys/kernel/tracing failed: {}",
            std::io::Error::last_os_error()
        ));
    }
    tracepoint_format::tracefs_dir()
        .ok_or_else(|| "tracefs mounted but has no events directory".to_string())
}

fn loader<'a>(
    offsets: &'a vmatrace_common::Offsets,
    config: &'a vmatrace_common::ProgramConfig,
    generation: &'a u32,
    tp: &'a MmapLockTpOffsets,
    ring_bytes: u32,
    btf: Option<&'a Btf>,
    cpu_rows: u32,
) -> EbpfLoader<'a> {
    use vmatrace_common::counters::{COUNTER_SLOTS, FALLBACK_SLOTS};
    let mut l = EbpfLoader::new();
    l.btf(btf)
        .override_global(names::OFFSETS, offsets, true)
        .override_global(names::CONFIG, config, true)
        .override_global(names::GENERATION, generation, true)
        .override_global(names::MMAP_LOCK_TP, tp, true)
        .map_max_entries(names::EVENTS, ring_bytes)
        .map_max_entries(names::COUNTERS, cpu_rows.saturating_mul(COUNTER_SLOTS))
        .map_max_entries(
            names::READER_FALLBACKS,
            cpu_rows.saturating_mul(FALLBACK_SLOTS),
        );
    l
}

pub(super) fn start(
    opts: &LiveOptions,
    config: &vmatrace_common::ProgramConfig,
) -> anyhow::Result<(Loaded, Vec<HookStatus>)> {
    privileges::check_privileges()?;
    let memlock = privileges::raise_memlock_limit();
    let plan = &opts.plan;
    if plan.points.is_empty() {
        bail!("the probe plan has no attach points: nothing to trace on this kernel");
    }

    let generation = plan.generation as u32;
    let needs_tracefs = plan.points.iter().any(|p| p.mode == AttachMode::Tracepoint);
    let mut tp = MmapLockTpOffsets::DEFAULT;
    let mut tp_problem = None;
    if needs_tracefs {
        match ensure_tracefs().and_then(|d| tracepoint_format::read_mmap_lock_offsets(&d)) {
            Ok(o) => tp = o,
            Err(e) => tp_problem = Some(e),
        }
    }
    let needs_btf = plan
        .points
        .iter()
        .any(|p| matches!(p.mode, AttachMode::FEntry | AttachMode::FExit));
    let btf = match Btf::from_sys_fs() {
        Ok(b) => Some(b),
        Err(e) if needs_btf => {
            return Err(anyhow::Error::new(e).context(
                "the plan uses fentry/fexit but the kernel's BTF (/sys/kernel/btf/vmlinux) \
                 cannot be read; a kernel built with CONFIG_DEBUG_INFO_BTF=y is required",
            ));
        }
        Err(_) => None,
    };

    let ring_bytes = ring_size(opts.stream.ring_buffer_bytes);
    let rows = cpu_rows().context("sizing the per-CPU counter rows")?;
    let mut ebpf = loader(
        &plan.offsets,
        config,
        &generation,
        &tp,
        ring_bytes,
        btf.as_ref(),
        rows,
    )
    .load(crate::EBPF_OBJECT)
    .map_err(anyhow::Error::new)
    .with_context(|| {
        let mut msg = format!("creating the eBPF maps ({ring_bytes}-byte ring buffer)");
        if let Err(m) = &memlock {
            msg.push_str(&format!("; note: {m}"));
        }
        msg
    })?;

    let stats = if opts.enable_stats {
        match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
            Ok(fd) => Some(fd),
            Err(e) => {
                log::warn!("BPF run-time statistics unavailable: {e:#}");
                None
            }
        }
    } else {
        None
    };

    let mut links = Vec::new();
    let mut hooks: Vec<Option<HookStatus>> = vec![None; plan.points.len()];
    // Return probes first: an entry that fires before its function's return probe exists
    // leaves an in-flight record nobody pairs, which the next entry of that thread then
    // reports as a missed return. Attaching takes seconds on a slow machine, so the
    // window is not small. Hooks are still reported in plan order.
    let mut order: Vec<usize> = (0..plan.points.len()).collect();
    order.sort_by_key(|&i| {
        !matches!(
            plan.points[i].mode,
            AttachMode::FExit | AttachMode::KRetProbe
        )
    });
    for i in order {
        let point = &plan.points[i];
        let result = if point.mode == AttachMode::Tracepoint
            && let Some(problem) = &tp_problem
        {
            Err(anyhow::anyhow!("{problem}"))
        } else {
            attach_point(&mut ebpf, point, btf.as_ref())
        };
        match result {
            Ok(link) => {
                links.push(link);
                hooks[i] = Some(HookStatus {
                    point: point.clone(),
                    attached: true,
                    error: None,
                });
            }
            Err(e) => {
                hooks[i] = Some(HookStatus {
                    point: point.clone(),
                    attached: false,
                    error: Some(error_chain(&e)),
                })
            }
        }
    }
    let hooks: Vec<HookStatus> = hooks.into_iter().flatten().collect();
    if links.is_empty() {
        let mut msg = String::from("no probe of the plan could be attached:");
        for h in &hooks {
            msg.push_str(&format!(
                "\n  {} {} ({}): {}",
                h.point.mode.key(),
                h.point.target,
                h.point.program,
                h.error.as_deref().unwrap_or("?")
            ));
        }
        bail!(msg);
    }

    // Every hook is in place: from now on entries and returns pair up.
    set_armed(&mut ebpf, true)?;

    let ring = RingBuf::try_from(
        ebpf.take_map(names::EVENTS)
            .context("the eBPF object has no EVENTS map")?,
    )?;
    let counters = MappedArray::new(
        ebpf.take_map(names::COUNTERS)
            .context("the eBPF object has no COUNTERS map")
            .and_then(array_data)?,
    )
    .context("mapping the COUNTERS array (BPF_F_MMAPABLE)")?;
    let stacks = ebpf
        .take_map(names::STACKS)
        .and_then(|m| StackTraceMap::try_from(m).ok());
    let fallbacks = match ebpf.take_map(names::READER_FALLBACKS) {
        Some(m) => Some(FallbackTable::new(
            MappedArray::new(array_data(m)?)
                .context("mapping the READER_FALLBACKS array (BPF_F_MMAPABLE)")?,
        )),
        None => None,
    };
    let programs = ebpf
        .programs()
        .filter(|(_, p)| p.fd().is_ok())
        .map(|(n, _)| n.to_string())
        .collect();
    Ok((
        Loaded {
            links,
            ring,
            counters,
            stacks,
            fallbacks,
            ebpf,
            programs,
            _stats: stats,
            link_misses: Default::default(),
        },
        hooks,
    ))
}

/// The data of an `Array` map (the mmap-able ones).
fn array_data(map: aya::maps::Map) -> anyhow::Result<MapData> {
    match map {
        aya::maps::Map::Array(d) => Ok(d),
        other => bail!("expected an array map, found {other:?}"),
    }
}

/// BTF functions present in every refcount-era kernel, tried in order.
const PROBE_TARGETS: &[&str] = &["vm_area_free", "lock_vma_under_rcu"];

pub(super) fn tracing_programs_supported() -> Result<bool, String> {
    privileges::check_privileges().map_err(|e| format!("{e:#}"))?;
    let _ = privileges::raise_memlock_limit();
    let btf = match Btf::from_sys_fs() {
        Ok(b) => b,
        // No kernel BTF: fentry cannot work at all.
        Err(_) => return Ok(false),
    };
    let offsets = vmatrace_common::Offsets::ABSENT;
    let config = vmatrace_common::ProgramConfig::DEFAULT;
    let tp = MmapLockTpOffsets::DEFAULT;
    let generation = 0u32;
    // Nothing runs: one CPU row is enough.
    let mut l = loader(&offsets, &config, &generation, &tp, 4096, Some(&btf), 1);
    // Nothing runs: keep the probe's maps tiny.
    for m in names::INFLIGHT_MAPS.iter().chain([&names::EXCLUDERS]) {
        l.map_max_entries(m, 1);
    }
    let mut ebpf = l
        .load(crate::EBPF_OBJECT)
        .map_err(|e| format!("creating the eBPF maps: {e:#}"))?;
    let prog: &mut FEntry = ebpf
        .program_mut("vaf_fentry")
        .ok_or("the eBPF object has no program vaf_fentry")?
        .try_into()
        .map_err(|e: ProgramError| format!("{e:#}"))?;
    let mut last = String::new();
    for target in PROBE_TARGETS {
        match prog.load(target, &btf) {
            Ok(()) => return Ok(true),
            // Not in this BTF: try the next one.
            Err(ProgramError::Btf(e)) => last = format!("{e:#}"),
            // The kernel refused (EPERM without tracing support, ENOTSUPP without
            // trampolines, ...): that is the answer.
            Err(ProgramError::LoadError { io_error, .. }) => {
                log::info!("fentry load refused: {io_error}");
                return Ok(false);
            }
            Err(e) => return Err(format!("loading a probe fentry program: {e:#}")),
        }
    }
    Err(format!(
        "none of {PROBE_TARGETS:?} is a BTF function of this kernel ({last})"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_are_powers_of_two_of_at_least_a_page() {
        assert_eq!(ring_size(0), 4096);
        assert_eq!(ring_size(4096), 4096);
        assert_eq!(ring_size(5000), 8192);
        assert_eq!(ring_size(8 << 20), 8 << 20);
        assert_eq!(ring_size(u32::MAX), 1 << 31);
    }
}

/// `ProgramConfig::wake_every_records`: a quarter of the ring's records over `cpus`, at least 1.
pub fn wake_every_records(ring_bytes: u32, cpus: usize) -> u64 {
    let quarter = u64::from(ring_bytes / 4) / vmatrace_common::event::EVENT_SIZE as u64;
    (quarter / cpus.max(1) as u64).max(1)
}

/// Possible CPUs (per-CPU maps have a slot for each); 1 if unknown.
pub(super) fn possible_cpus() -> usize {
    aya::util::nr_cpus().unwrap_or(1)
}

#[cfg(test)]
mod wake_tests {
    use super::wake_every_records;

    #[test]
    fn a_quarter_of_the_ring_over_the_cpus() {
        // 8 MiB ring: 65 536 records, a quarter is 16 384.
        assert_eq!(wake_every_records(8 << 20, 2), 8192);
        assert_eq!(wake_every_records(8 << 20, 64), 256);
        assert_eq!(wake_every_records(8 << 20, 0), 16384);
        // A tiny ring on a big machine still wakes, every record.
        assert_eq!(wake_every_records(4096, 512), 1);
    }
}
