//! Exact probe plans for kernels captured from real running systems
//! (`tests/data/kernels`, produced by `tests/data/kernels/capture.sh`; see its README).
//! The expectations restate `docs/protocol.md#observability`: if the planner drifts from
//! what these kernels really expose, these fail.

use std::path::PathBuf;

use vmatrace::kernel::plan::{AttachMode, AttachPreference, Observability, ProbePlan};
use vmatrace::kernel::{Capabilities, KernelInfo, PlanError, plan_with, report};
use vmatrace_common::OFFSET_ABSENT;
use vmatrace_common::model::Generation;

/// The fentry-first plan (`--attach fentry`): the expectations below restate it; what
/// `--attach auto` picks per preemption model is tested at the end.
fn fentry_plan(info: &KernelInfo, caps: &Capabilities) -> Result<ProbePlan, PlanError> {
    plan_with(info, caps, AttachPreference::Fentry)
}

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/kernels")
        .join(name)
}

/// A fixture, parsed once per test binary (BTF is ~5 MB) and cloned for each test.
fn load(name: &str) -> KernelInfo {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static CACHE: OnceLock<Mutex<HashMap<String, KernelInfo>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(info) = cache.lock().unwrap().get(name) {
        return info.clone();
    }
    let info = load_uncached(name);
    cache.lock().unwrap().insert(name.to_string(), info.clone());
    info
}

/// Load a fixture the way an operator would pass it to `vmatrace probes --btf ...`.
fn load_uncached(name: &str) -> KernelInfo {
    let d = dir(name);
    let opt = |f: &str| {
        let p = d.join(f);
        p.exists().then_some(p)
    };
    let release = std::fs::read_to_string(d.join("release"))
        .unwrap()
        .trim()
        .to_string();
    let mut info = KernelInfo::from_files(
        &d.join("btf.zst"),
        &d.join("kallsyms"),
        opt("available_filter_functions").as_deref(),
        opt("kprobe_blacklist").as_deref(),
        Some(release),
    )
    .unwrap();
    // The kernel config's relevant lines, from the image package's /boot/config-* (the
    // 6.19/7.x `linux-binary` packages ship none: those plans assume Debian's default).
    if let Some(c) = opt("config") {
        info = info.with_config(&c).unwrap();
    }
    info.mmap_lock_tracepoints = opt("tracepoints").map(|p| {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    });
    info
}

/// One line per logical event: `event status: mode target program, ...` (or the reason's
/// first words for unobservable events), so an expectation reads like the plan table.
fn compact(plan: &ProbePlan) -> String {
    let pts = |idx: &[usize]| {
        idx.iter()
            .map(|&i| {
                let p = &plan.points[i];
                format!("{} {} {}", p.mode.key(), p.target, p.program)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    plan.coverage
        .iter()
        .map(|c| match &c.status {
            Observability::Direct { points } => {
                format!("{} direct: {}", c.event.key(), pts(points))
            }
            Observability::Proxy { points, .. } => {
                format!("{} proxy: {}", c.event.key(), pts(points))
            }
            Observability::Unobservable { reason } => {
                format!("{} unobservable: {reason}", c.event.key())
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn reason(plan: &ProbePlan, event: &str) -> String {
    plan.coverage
        .iter()
        .find(|c| c.event.key() == event)
        .map(|c| match &c.status {
            Observability::Proxy { via, .. } => via.clone(),
            Observability::Unobservable { reason } => reason.clone(),
            Observability::Direct { .. } => String::new(),
        })
        .unwrap()
}

/// This machine: no kprobe PMU, tracing programs not tried yet.
fn host_caps() -> Capabilities {
    Capabilities {
        kprobes: false,
        tracing_programs: None,
        ..Capabilities::assume_all()
    }
}

/// The plan `docs/protocol.md#observability` predicts for Debian's 7.x cloud builds: start-exclude
/// direct via fentry/fexit; end-exclude and the fast detach via proxies;
/// `vma_refcount_put` (notrace) through a kprobe. The write lock's request is seen at
/// start-exclude's entry (its first callee), so `__vma_start_write` has no entry program.
const EXPECTED_7X: &str = "\
write_lock_request proxy: fentry __vma_start_exclude_readers vser_fentry
write_lock_result direct: fexit __vma_start_write vsw_fexit
start_exclude_entry direct: fentry __vma_start_exclude_readers vser_fentry
start_exclude_return direct: fexit __vma_start_exclude_readers vser_fexit
end_exclude proxy: fexit __vma_start_write vsw_fexit, fexit __vma_exclude_readers_for_detach verd_fexit
mark_detached_fast proxy: fentry vm_area_free vaf_fentry
mark_detached_slow direct: fexit __vma_exclude_readers_for_detach verd_fexit
reader_acquire direct: fexit lock_vma_under_rcu lvur_fexit, fexit lock_next_vma lnv_fexit
reader_release proxy: kprobe rcuwait_wake_up rww_kprobe, kretprobe rcuwait_wake_up rww_kretprobe
writer_wakeup direct: kprobe rcuwait_wake_up rww_kprobe, kretprobe rcuwait_wake_up rww_kretprobe
mm_write_unlock direct: tracepoint mmap_lock:mmap_lock_released mmap_lock_released, tracepoint mmap_lock:mmap_lock_acquire_returned mmap_lock_acquire_returned
vma_alloc direct: fexit vm_area_alloc vaa_fexit, fexit vm_area_dup vad_fexit
vma_free direct: fentry vm_area_free vaf_fentry";

#[test]
fn debian_7_2_13_cloud() {
    let info = load("debian-7.2.13-cloud");
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    assert_eq!(plan.generation, Generation::V7_0);
    assert_eq!(plan.kernel.release, "7.2.13+deb14-cloud-amd64");
    assert_eq!(compact(&plan), EXPECTED_7X);
    assert!(reason(&plan, "end_exclude").contains("__vma_end_exclude_readers is inlined"));
    assert!(reason(&plan, "mark_detached_fast").contains("vma_mark_detached is inline"));
    // vma_refcount_put is out of line but notrace there: never fentry, and no kprobe
    // either without CONFIG_KPROBE_EVENTS_ON_NOTRACE (Debian's default; EINVAL on 7.2).
    assert!(plan.points.iter().all(|p| p.target != "vma_refcount_put"));
    assert_eq!(
        reason(&plan, "reader_release"),
        "rcuwait_wake_up when the last reader leaves under a waiting writer; other releases are inlined"
    );
    // Offsets as read from this kernel's BTF (`docs/protocol.md#struct-offsets`: 7.2 column).
    let o = plan.offsets;
    assert_eq!(
        [o.vma_vm_start, o.vma_vm_end, o.vma_vm_mm, o.vma_vm_flags],
        [0, 8, 0x10, 0x20]
    );
    assert_eq!([o.vma_vm_lock_seq, o.vma_vm_refcnt], [0x28, 0x80]);
    assert_eq!([o.mm_mm_lock_seq, o.mm_vma_writer_wait], [0x1d0, 0x1c8]);
    assert_eq!(
        [
            o.ves_vma,
            o.ves_state,
            o.ves_detaching,
            o.ves_detached,
            o.ves_exclusive
        ],
        [0, 8, 12, 13, 14]
    );
    // `char comm[16]`: its size is checked through the array type (16 × 1 byte).
    assert_eq!(o.task_comm, 0xd10);
    assert_eq!(
        report::coverage_summary(&plan),
        "13 of 13 logical events observable, 4 via proxy"
    );
    assert!(reason(&plan, "write_lock_request").contains("ves->detaching = 0"));
    assert!(plan.write_entry_from_exclude());
    assert!(
        plan.points
            .iter()
            .all(|p| p.program != "vsw_fentry" && p.program != "vsw_kprobe")
    );
}

#[test]
fn debian_7_3_4_cloud() {
    let info = load("debian-7.3.4-cloud");
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    assert_eq!(plan.generation, Generation::V7_0);
    assert_eq!(plan.kernel.release, "7.3.4+deb13-cloud-amd64");
    assert_eq!(compact(&plan), EXPECTED_7X);
    // 7.3 filled holes in vm_area_struct; the fields the programs read did not move
    // (`docs/protocol.md#struct-offsets`, 7.3 column).
    let o = plan.offsets;
    assert_eq!([o.vma_vm_lock_seq, o.vma_vm_refcnt], [0x28, 0x80]);
    assert_eq!([o.mm_mm_lock_seq, o.mm_vma_writer_wait], [0x1d0, 0x1c8]);
    assert_eq!([o.ves_detaching, o.ves_exclusive], [12, 14]);
    assert_eq!(o.task_comm, 0xd50);
}

#[test]
fn debian_7_2_13_without_kprobes_loses_only_the_notrace_release_hook() {
    let info = load("debian-7.2.13-cloud");
    let plan = fentry_plan(&info, &host_caps()).unwrap();
    assert!(plan.points.iter().all(|p| p.target != "vma_refcount_put"));
    assert_eq!(
        reason(&plan, "reader_release"),
        "rcuwait_wake_up when the last reader leaves under a waiting writer; other releases are inlined"
    );
    assert!(
        plan.notes
            .iter()
            .any(|n| n.starts_with("not attached: vma_refcount_put") && n.contains("no kprobe PMU")),
        "{:#?}",
        plan.notes
    );
    // With neither kprobes nor tracing programs nothing attaches, and every event says why.
    let none = Capabilities {
        tracing_programs: Some(false),
        ..host_caps()
    };
    let plan = fentry_plan(&info, &none).unwrap();
    let tracepoints_only: Vec<_> = plan.points.iter().map(|p| p.mode.key()).collect();
    assert_eq!(tracepoints_only, ["tracepoint", "tracepoint"]);
    assert_eq!(
        report::coverage_summary(&plan),
        "1 of 13 logical events observable, 0 via proxy"
    );
    let r = reason(&plan, "write_lock_request");
    assert!(
        r.contains("tracing programs cannot load here); kprobe impossible (no kprobe PMU)"),
        "{r}"
    );
}

/// Debian's 6.19 build: `__vma_enter_locked` is out of line but notrace and Debian does
/// not set `CONFIG_KPROBE_EVENTS_ON_NOTRACE`, so (as the eBPF helper saw: EINVAL) neither
/// fentry nor kprobe attaches; the wait is seen as on 6.15-6.18, at its parents' return.
const EXPECTED_6_19: &str = "\
write_lock_request direct: fentry __vma_start_write vsw_fentry
write_lock_result direct: fexit __vma_start_write vsw_fexit
start_exclude_entry unobservable: __vma_enter_locked: notrace: out-of-line copy of an inline function; kprobe events refuse notrace functions without CONFIG_KPROBE_EVENTS_ON_NOTRACE (kernel config unknown: assumed not set, as in Debian's builds)
start_exclude_return proxy: fexit __vma_start_write vsw_fexit, fexit vma_mark_detached vmd_fexit
end_exclude proxy: fexit __vma_start_write vsw_fexit, fexit vma_mark_detached vmd_fexit
mark_detached_fast direct: fexit vma_mark_detached vmd_fexit
mark_detached_slow direct: fexit vma_mark_detached vmd_fexit
reader_acquire direct: fexit lock_vma_under_rcu lvur_fexit, fexit lock_next_vma lnv_fexit
reader_release proxy: kprobe rcuwait_wake_up rww_kprobe, kretprobe rcuwait_wake_up rww_kretprobe
writer_wakeup direct: kprobe rcuwait_wake_up rww_kprobe, kretprobe rcuwait_wake_up rww_kretprobe
mm_write_unlock direct: tracepoint mmap_lock:mmap_lock_released mmap_lock_released, tracepoint mmap_lock:mmap_lock_acquire_returned mmap_lock_acquire_returned
vma_alloc direct: fexit vm_area_alloc vaa_fexit, fexit vm_area_dup vad_fexit
vma_free direct: fentry vm_area_free vaf_fentry";

/// The same kernel built with `CONFIG_KPROBE_EVENTS_ON_NOTRACE=y`: both notrace copies
/// are kprobed.
const EXPECTED_6_19_ON_NOTRACE: &str = "\
write_lock_request direct: fentry __vma_start_write vsw_fentry
write_lock_result direct: fexit __vma_start_write vsw_fexit
start_exclude_entry direct: kprobe __vma_enter_locked vel_kprobe
start_exclude_return direct: kprobe __vma_enter_locked vel_kprobe, kretprobe __vma_enter_locked vel_kretprobe
end_exclude proxy: fexit __vma_start_write vsw_fexit, fexit vma_mark_detached vmd_fexit
mark_detached_fast direct: fexit vma_mark_detached vmd_fexit
mark_detached_slow direct: fexit vma_mark_detached vmd_fexit
reader_acquire direct: fexit lock_vma_under_rcu lvur_fexit, fexit lock_next_vma lnv_fexit
reader_release proxy: kprobe vma_refcount_put vrp_kprobe, kprobe rcuwait_wake_up rww_kprobe, kretprobe rcuwait_wake_up rww_kretprobe
writer_wakeup direct: kprobe rcuwait_wake_up rww_kprobe, kretprobe rcuwait_wake_up rww_kretprobe
mm_write_unlock direct: tracepoint mmap_lock:mmap_lock_released mmap_lock_released, tracepoint mmap_lock:mmap_lock_acquire_returned mmap_lock_acquire_returned
vma_alloc direct: fexit vm_area_alloc vaa_fexit, fexit vm_area_dup vad_fexit
vma_free direct: fentry vm_area_free vaf_fentry";

/// A config with kprobes allowed on notrace functions (not Debian's).
fn on_notrace_config() -> vmatrace::kernel::config::KernelConfig {
    vmatrace::kernel::config::KernelConfig::parse(
        "CONFIG_KPROBES=y\nCONFIG_KPROBE_EVENTS=y\nCONFIG_KPROBE_EVENTS_ON_NOTRACE=y\n",
        "test",
    )
    .unwrap()
}

#[test]
fn debian_6_19_14_cloud() {
    let info = load("debian-6.19.14-cloud");
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    assert_eq!(plan.generation, Generation::V6_19);
    assert_eq!(compact(&plan), EXPECTED_6_19);
    let o = plan.offsets;
    assert_eq!([o.vma_vm_lock_seq, o.vma_vm_refcnt], [0x28, 0x80]);
    assert_eq!([o.mm_mm_lock_seq, o.mm_vma_writer_wait], [0x1d0, 0x1c8]);
    assert_eq!(o.ves_exclusive, OFFSET_ABSENT);
    assert!(
        plan.notes
            .iter()
            .all(|n| !n.starts_with("kretprobes on sleeping")),
        "{:#?}",
        plan.notes
    );
    assert!(
        plan.notes
            .iter()
            .any(|n| n.starts_with("kernel config unknown") && n.contains("assuming Debian's")),
        "{:#?}",
        plan.notes
    );
    assert!(
        plan.notes.iter().any(|n| n
            == "not attached: vma_refcount_put: notrace: out-of-line copy of an inline function; \
                kprobe events refuse notrace functions without CONFIG_KPROBE_EVENTS_ON_NOTRACE \
                (kernel config unknown: assumed not set, as in Debian's builds)"),
        "{:#?}",
        plan.notes
    );
    // Built with CONFIG_KPROBE_EVENTS_ON_NOTRACE=y, the kprobes on the notrace copies
    // come back (and the sleeping __vma_enter_locked's kretprobe warning with them).
    assert!(
        reason(&plan, "end_exclude")
            .contains("after a fatal signal (-EINTR) at the -EINTR return of __vma_start_write"),
        "{}",
        reason(&plan, "end_exclude")
    );
    let mut on = info.clone();
    on.config = Some(on_notrace_config());
    let plan = fentry_plan(&on, &Capabilities::assume_all()).unwrap();
    assert_eq!(compact(&plan), EXPECTED_6_19_ON_NOTRACE);
    assert!(
        reason(&plan, "end_exclude")
            .contains("after a fatal signal (-EINTR) at the return of start-exclude"),
        "{}",
        reason(&plan, "end_exclude")
    );
    assert!(
        plan.notes
            .iter()
            .any(|n| n.starts_with("kretprobes on sleeping functions (__vma_enter_locked)")),
        "{:#?}",
        plan.notes
    );
    // Without kprobes, the notrace __vma_enter_locked is gone: entry unobservable, its
    // outcome inferred at the parents' return.
    let plan = fentry_plan(&info, &host_caps()).unwrap();
    let c = compact(&plan);
    assert!(
        c.contains("start_exclude_entry unobservable: __vma_enter_locked: fentry/fexit impossible"),
        "{c}"
    );
    assert!(
        c.contains(
            "start_exclude_return proxy: fexit __vma_start_write vsw_fexit, fexit vma_mark_detached vmd_fexit"
        ),
        "{c}"
    );
}

/// Debian's 6.16–6.18 builds: the global `vma_mark_detached` sees every detach; the
/// exclusion helpers are inlined.
const EXPECTED_6_16: &str = "\
write_lock_request direct: fentry __vma_start_write vsw_fentry
write_lock_result direct: fexit __vma_start_write vsw_fexit
start_exclude_entry unobservable: __vma_enter_locked is static inline here: inlined into __vma_start_write and vma_mark_detached
start_exclude_return proxy: fexit __vma_start_write vsw_fexit, fexit vma_mark_detached vmd_fexit
end_exclude proxy: fexit __vma_start_write vsw_fexit, fexit vma_mark_detached vmd_fexit
mark_detached_fast direct: fexit vma_mark_detached vmd_fexit
mark_detached_slow direct: fexit vma_mark_detached vmd_fexit
reader_acquire direct: fexit lock_vma_under_rcu lvur_fexit
reader_release proxy: kprobe rcuwait_wake_up rww_kprobe, kretprobe rcuwait_wake_up rww_kretprobe
writer_wakeup direct: kprobe rcuwait_wake_up rww_kprobe, kretprobe rcuwait_wake_up rww_kretprobe
mm_write_unlock direct: tracepoint mmap_lock:mmap_lock_released mmap_lock_released, tracepoint mmap_lock:mmap_lock_acquire_returned mmap_lock_acquire_returned
vma_alloc direct: fexit vm_area_alloc vaa_fexit, fexit vm_area_dup vad_fexit
vma_free direct: fentry vm_area_free vaf_fentry";

#[test]
fn debian_6_16_12_cloud() {
    let info = load("debian-6.16.12-cloud");
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    assert_eq!(plan.generation, Generation::V6_15);
    // lock_next_vma (per-VMA-locked /proc/pid/maps) arrived in 6.17.
    assert_eq!(compact(&plan), EXPECTED_6_16);
    assert!(
        plan.notes
            .iter()
            .any(|n| n == "not attached: lock_next_vma is not in kallsyms or BTF (inlined, or not in this kernel version)"),
        "{:#?}",
        plan.notes
    );
    let o = plan.offsets;
    assert_eq!([o.vma_vm_lock_seq, o.vma_vm_refcnt], [0x28, 0x80]);
    assert_eq!([o.mm_mm_lock_seq, o.mm_vma_writer_wait], [0xf8, 0xf0]);
}

#[test]
fn host_6_18() {
    let info = load("host-6.18");
    // The host's ftrace list is unreadable, so the fixture has none.
    assert!(info.filter_functions.is_none());
    let plan = fentry_plan(&info, &host_caps()).unwrap();
    assert_eq!(plan.generation, Generation::V6_15);
    assert_eq!(
        compact(&plan),
        "\
write_lock_request direct: fentry __vma_start_write vsw_fentry
write_lock_result direct: fexit __vma_start_write vsw_fexit
start_exclude_entry unobservable: __vma_enter_locked is static inline here: inlined into __vma_start_write and vma_mark_detached
start_exclude_return proxy: fexit __vma_start_write vsw_fexit, fexit vma_mark_detached vmd_fexit
end_exclude proxy: fexit __vma_start_write vsw_fexit, fexit vma_mark_detached vmd_fexit
mark_detached_fast direct: fexit vma_mark_detached vmd_fexit
mark_detached_slow direct: fexit vma_mark_detached vmd_fexit
reader_acquire direct: fexit lock_vma_under_rcu lvur_fexit, fexit lock_next_vma lnv_fexit
reader_release proxy: fexit rcuwait_wake_up rww_fexit
writer_wakeup direct: fexit rcuwait_wake_up rww_fexit
mm_write_unlock direct: tracepoint mmap_lock:mmap_lock_released mmap_lock_released, tracepoint mmap_lock:mmap_lock_acquire_returned mmap_lock_acquire_returned
vma_alloc direct: fexit vm_area_alloc vaa_fexit, fexit vm_area_dup vad_fexit
vma_free direct: fentry vm_area_free vaf_fentry"
    );
    let o = plan.offsets;
    assert_eq!([o.mm_mm_lock_seq, o.mm_vma_writer_wait], [0xf8, 0xf0]);
    let notes = plan.notes.join("\n");
    assert!(
        notes.contains("kprobes cannot attach here: no kprobe PMU"),
        "{notes}"
    );
    assert!(
        notes.contains("fentry/fexit availability is checked at load"),
        "{notes}"
    );
    assert!(notes.contains("not attached: vma_refcount_put"), "{notes}");
}

#[test]
fn plan_json_round_trips() {
    let info = load("debian-7.2.13-cloud");
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    let json = serde_json::to_string(&plan).unwrap();
    let back: ProbePlan = serde_json::from_str(&json).unwrap();
    assert_eq!(back, plan);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["generation"], "7.0");
    assert_eq!(v["offsets"]["ves_exclusive"], 14);
    assert_eq!(v["coverage"][5]["status"]["status"], "proxy");
}

#[test]
fn table_shows_every_event_and_point() {
    let info = load("debian-7.2.13-cloud");
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    let t = report::render_table(&plan);
    assert!(t.contains("coverage: 13 of 13 logical events observable, 4 via proxy"));
    for c in &plan.coverage {
        assert!(t.contains(c.event.key()), "{} missing", c.event.key());
    }
    for p in &plan.points {
        assert!(t.contains(&p.program), "{} missing", p.program);
    }
    assert!(
        t.contains("vma_exclude_readers_state.exclusive    0xe"),
        "{t}"
    );
}

#[test]
fn pre_refcount_kernel_is_unsupported() {
    let info = load("debian-6.12.117-cloud");
    match fentry_plan(&info, &Capabilities::assume_all()) {
        Err(PlanError::Unsupported { reason }) => {
            assert!(reason.contains("pre-6.15"), "{reason}")
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

/// The 7.2.13 fixture with its kallsyms/ftrace excerpts rewritten, to check each rule
/// against an otherwise real kernel.
fn edited_7_2(
    edit_kallsyms: impl Fn(&str) -> String,
    edit_ftrace: impl Fn(&str) -> String,
) -> KernelInfo {
    use vmatrace::kernel::ftrace::FilterFunctions;
    use vmatrace::kernel::symbols::Kallsyms;
    let d = dir("debian-7.2.13-cloud");
    let mut info = load("debian-7.2.13-cloud");
    let k = std::fs::read_to_string(d.join("kallsyms")).unwrap();
    info.kallsyms = Kallsyms::parse(&edit_kallsyms(&k)).unwrap();
    let f = std::fs::read_to_string(d.join("available_filter_functions")).unwrap();
    info.filter_functions = Some(FilterFunctions::parse(&edit_ftrace(&f)).unwrap());
    info
}

#[test]
fn duplicate_name_makes_a_function_unattachable() {
    let info = edited_7_2(
        |k| format!("{k}ffffffffb3000000 t __vma_start_exclude_readers\n"),
        |f| format!("{f}__vma_start_exclude_readers\n"),
    );
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    let r = reason(&plan, "start_exclude_entry");
    assert!(
        r.contains("__vma_start_exclude_readers is ambiguous: 2 kallsyms entries"),
        "{r}"
    );
    assert!(
        plan.points
            .iter()
            .all(|p| p.target != "__vma_start_exclude_readers")
    );
    // Everything else is unaffected.
    assert_eq!(
        report::coverage_summary(&plan),
        "11 of 13 logical events observable, 3 via proxy"
    );
}

#[test]
fn clone_only_function_falls_back_to_kprobe_on_the_clone() {
    // The compiler emitted only `vm_area_free.isra.0` (and a .cold fragment, which must
    // not count): fentry needs the exact BTF name, so the clone is kprobed.
    let info = edited_7_2(
        |k| {
            k.replace("T vm_area_free\n", "t vm_area_free.isra.0\n")
                + "ffffffffb3000100 t vm_area_free.cold\n"
        },
        |f| f.replace("vm_area_free\n", "vm_area_free.isra.0\n"),
    );
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    let c = compact(&plan);
    assert!(
        c.contains("vma_free direct: kprobe vm_area_free.isra.0 vaf_kprobe"),
        "{c}"
    );
}

#[test]
fn blacklisted_notrace_function_is_unobservable() {
    use vmatrace::kernel::ftrace::KprobeBlacklist;
    let mut info = load("debian-7.2.13-cloud");
    // Allowed on notrace functions, so that only the blacklist stands in the way.
    info.config = Some(on_notrace_config());
    info.kprobe_blacklist = Some(
        KprobeBlacklist::parse("0xffffffffb2700ef0-0xffffffffb2700f40\tvma_refcount_put\n")
            .unwrap(),
    );
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    assert!(plan.points.iter().all(|p| p.target != "vma_refcount_put"));
    let notes = plan.notes.join("\n");
    assert!(
        notes.contains("not attached: vma_refcount_put: fentry/fexit impossible (vmatrace has no fentry/fexit program for it, notrace (not in available_filter_functions)); kprobe impossible (in the kprobe blacklist)"),
        "{notes}"
    );
}

#[test]
fn untraceable_function_needs_kprobe_events_on_notrace() {
    // __vma_start_write missing from the ftrace list (as if notrace): no fentry, and no
    // kprobe under Debian's config.
    let mut info = edited_7_2(|k| k.to_string(), |f| f.replace("__vma_start_write\n", ""));
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    assert!(plan.points.iter().all(|p| p.target != "__vma_start_write"));
    assert_eq!(
        reason(&plan, "write_lock_result"),
        "__vma_start_write: notrace: out-of-line copy of an inline function; kprobe events \
         refuse notrace functions without CONFIG_KPROBE_EVENTS_ON_NOTRACE (kernel config \
         unknown: assumed not set, as in Debian's builds)"
    );
    // A config that says "not set" explicitly gives the same plan, with its own wording.
    info.config = Some(
        vmatrace::kernel::config::KernelConfig::parse(
            "CONFIG_KPROBES=y\n# CONFIG_KPROBE_EVENTS_ON_NOTRACE is not set\n",
            "test",
        )
        .unwrap(),
    );
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    assert!(
        reason(&plan, "write_lock_result").ends_with("(not set in this kernel's config)"),
        "{}",
        reason(&plan, "write_lock_result")
    );
    // With CONFIG_KPROBE_EVENTS_ON_NOTRACE=y: kprobe + kretprobe.
    info.config = Some(on_notrace_config());
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    let c = compact(&plan);
    // 7.x: the request is seen at start-exclude's entry, so no kprobe on entry.
    assert!(
        c.contains("write_lock_request proxy: fentry __vma_start_exclude_readers vser_fentry\n"),
        "{c}"
    );
    assert!(
        c.contains("write_lock_result direct: kretprobe __vma_start_write vsw_kretprobe\n"),
        "{c}"
    );
}

#[test]
fn missing_tracepoints_are_reported() {
    let mut info = load("debian-7.2.13-cloud");
    info.mmap_lock_tracepoints = Some(vec!["mmap_lock_start_locking".into()]);
    let plan = fentry_plan(&info, &Capabilities::assume_all()).unwrap();
    let r = reason(&plan, "mm_write_unlock");
    assert!(
        r.contains("tracepoint mmap_lock:mmap_lock_released does not exist here"),
        "{r}"
    );
}

#[test]
fn every_point_names_a_program_of_the_table() {
    use vmatrace::kernel::programs::program_for;
    for name in ["debian-7.2.13-cloud", "debian-6.19.14-cloud", "host-6.18"] {
        let info = load(name);
        for caps in [Capabilities::assume_all(), host_caps()] {
            let plan = fentry_plan(&info, &caps).unwrap();
            for p in &plan.points {
                assert_eq!(
                    program_for(p.probe, p.mode),
                    Some(p.program.as_str()),
                    "{p:?}"
                );
            }
        }
    }
}

#[test]
fn no_tracefs_means_no_tracepoints() {
    let info = load("debian-7.2.13-cloud");
    let caps = Capabilities {
        tracefs: false,
        ..Capabilities::assume_all()
    };
    let plan = fentry_plan(&info, &caps).unwrap();
    assert!(matches!(
        plan.status(vmatrace::kernel::plan::LogicalEvent::MmWriteUnlock),
        Some(Observability::Unobservable { reason }) if reason.contains("tracefs is not mounted or not readable")
    ));
    assert_eq!(
        plan.points_for(vmatrace_common::event::ProbeId::MmapLockReleased)
            .count(),
        0
    );
    assert_eq!(plan.exclude_readers_flag(), 0x4000_0000);
}

#[test]
fn debian_6_18_15_cloud_matches_the_host_plan() {
    let deb = fentry_plan(&load("debian-6.18.15-cloud"), &Capabilities::assume_all()).unwrap();
    assert_eq!(deb.generation, Generation::V6_15);
    // Same as 6.16 plus lock_next_vma (6.17+).
    let expected = EXPECTED_6_16.replace(
        "reader_acquire direct: fexit lock_vma_under_rcu lvur_fexit",
        "reader_acquire direct: fexit lock_vma_under_rcu lvur_fexit, fexit lock_next_vma lnv_fexit",
    );
    assert_eq!(compact(&deb), expected);
    // The host's ftrace list is unreadable, so its plan relies on the kernel-source list
    // of notrace functions; Debian's 6.18 has a real list. Both must agree.
    // The host's own config has no CONFIG_KPROBES (its rcuwait_wake_up kprobe goes): plan
    // it as if its config were unknown, which is Debian's.
    let mut host = load("host-6.18");
    assert!(
        host.config
            .as_ref()
            .is_some_and(|c| !c.is_enabled("KPROBES"))
    );
    host.config = None;
    let host = fentry_plan(&host, &Capabilities::assume_all()).unwrap();
    assert_eq!(compact(&host), compact(&deb));
    // The VMA and mm fields agree; `task_struct` depends on the build's config.
    assert_eq!(
        (host.offsets.task_comm, deb.offsets.task_comm),
        (0x6d8, 0xcb0)
    );
    let vma_mm = |o: &vmatrace_common::Offsets| vmatrace_common::Offsets {
        task_comm: vmatrace_common::OFFSET_ABSENT,
        ..*o
    };
    assert_eq!(vma_mm(&host.offsets), vma_mm(&deb.offsets));
}

/// The modes a plan attaches, without tracepoints.
fn function_modes(p: &ProbePlan) -> Vec<AttachMode> {
    let mut v: Vec<AttachMode> = p
        .points
        .iter()
        .map(|a| a.mode)
        .filter(|&m| m != AttachMode::Tracepoint)
        .collect();
    v.sort_by_key(|m| m.key());
    v.dedup();
    v
}

fn with_preemption(mut info: KernelInfo, sched_preempt: &str) -> KernelInfo {
    info.preemption = vmatrace::kernel::preempt::detect(vmatrace::kernel::preempt::Sources {
        sched_preempt: Some(sched_preempt),
        ..Default::default()
    });
    info
}

/// On a kernel that preempts kernel code (or whose mode is unknown), `--attach auto`
/// attaches every function through kprobe/kretprobe: no run is lost to preemption.
#[test]
fn auto_attach_uses_kprobes_where_kernel_code_is_preempted() {
    let all = Capabilities::assume_all();
    for fixture in [
        "debian-7.2.13-cloud",
        "debian-6.19.14-cloud",
        "debian-6.18.15-cloud",
    ] {
        for mode in ["none voluntary full (lazy)", "none voluntary (full) lazy"] {
            let info = with_preemption(load(fixture), mode);
            let p = plan_with(&info, &all, AttachPreference::Auto).unwrap();
            assert_eq!(p.attach.first, AttachMode::KProbe, "{fixture} {mode}");
            assert_eq!(
                function_modes(&p),
                [AttachMode::KProbe, AttachMode::KRetProbe],
                "{fixture} {mode}"
            );
            assert!(
                p.attach
                    .to_string()
                    .starts_with("kprobe/kretprobe first: preemption")
            );
            // Same coverage as the fentry plan: only the mechanism changes.
            let f = fentry_plan(&info, &all).unwrap();
            let observable = |p: &ProbePlan| {
                p.coverage
                    .iter()
                    .map(|c| !matches!(c.status, Observability::Unobservable { .. }))
                    .collect::<Vec<_>>()
            };
            assert_eq!(observable(&p), observable(&f), "{fixture}");
        }
        // Nothing says which mode runs (the fixtures carry no config): kprobes too.
        let p = plan_with(&load(fixture), &all, AttachPreference::Auto).unwrap();
        assert_eq!(p.attach.first, AttachMode::KProbe, "{fixture}");
        assert!(p.attach.reason.contains("unknown"), "{}", p.attach);
    }
    let p = plan_with(&load("debian-7.2.13-cloud"), &all, AttachPreference::Auto).unwrap();
    assert!(p.write_entry_from_exclude());
    assert!(p.points.iter().all(|a| a.program != "vsw_kprobe"));
}

/// A kernel that does not preempt kernel code keeps the cheaper fentry/fexit plan.
#[test]
fn auto_attach_keeps_fentry_where_kernel_code_is_not_preempted() {
    let all = Capabilities::assume_all();
    let info = with_preemption(load("debian-7.2.13-cloud"), "none (voluntary) full lazy");
    let p = plan_with(&info, &all, AttachPreference::Auto).unwrap();
    assert_eq!(p.attach.first, AttachMode::FEntry);
    assert!(p.attach.reason.contains("not preempted"), "{}", p.attach);
    assert_eq!(compact(&p), EXPECTED_7X);
}

/// Without a kprobe PMU the preference cannot be honoured: fentry/fexit, and the reason
/// says so. `--attach kprobe` forces kprobes whatever the model.
#[test]
fn attach_choice_follows_the_capabilities_and_the_option() {
    let info = with_preemption(load("debian-7.2.13-cloud"), "none voluntary full (lazy)");
    let p = plan_with(&info, &host_caps(), AttachPreference::Auto).unwrap();
    assert_eq!(p.attach.first, AttachMode::FEntry);
    assert!(p.attach.reason.contains("no kprobe PMU"), "{}", p.attach);
    let none = with_preemption(load("debian-7.2.13-cloud"), "(none) voluntary full lazy");
    let p = plan_with(&none, &Capabilities::assume_all(), AttachPreference::Kprobe).unwrap();
    assert_eq!(p.attach.first, AttachMode::KProbe);
    assert_eq!(p.attach.reason, "--attach kprobe");
    assert!(
        p.points
            .iter()
            .all(|a| a.mode != AttachMode::FEntry && a.mode != AttachMode::FExit)
    );
}

/// A config's default mode is not the running one on a `PREEMPT_DYNAMIC` kernel (the boot
/// may say `preempt=full`): kprobes. A kernel built `voluntary` without the dynamic
/// switch cannot preempt kernel code: fentry/fexit.
#[test]
fn a_dynamic_kernels_config_default_is_not_trusted() {
    use vmatrace::kernel::{config::KernelConfig, preempt};
    let all = Capabilities::assume_all();
    for (config, first) in [
        (
            "CONFIG_PREEMPT_VOLUNTARY=y\nCONFIG_PREEMPT_DYNAMIC=y\n",
            AttachMode::KProbe,
        ),
        ("CONFIG_PREEMPT_VOLUNTARY=y\n", AttachMode::FEntry),
        ("CONFIG_PREEMPT_NONE=y\n", AttachMode::FEntry),
        ("CONFIG_PREEMPT_RT=y\n", AttachMode::KProbe),
    ] {
        let mut info = load("debian-7.2.13-cloud");
        let c = KernelConfig::parse(config, "test").expect("config");
        info.preemption = preempt::detect(preempt::Sources {
            config: Some(&c),
            ..Default::default()
        });
        let p = plan_with(&info, &all, AttachPreference::Auto).unwrap();
        assert_eq!(p.attach.first, first, "{config}: {}", p.attach);
    }
}
