//! Always-run checks of the embedded eBPF object (no bpf() calls, no root): every program
//! of the contract table exists with the right section kind, and the maps and load-time
//! globals userspace relies on are there.

pub mod common;

use aya_obj::{Object, ProgramSection, maps::Map};
use object::{Object as _, ObjectSymbol};
use vmatrace::{
    EBPF_OBJECT,
    kernel::{plan::AttachMode, programs::PROGRAMS},
    live::names,
};

fn parse() -> Object {
    Object::parse(EBPF_OBJECT).expect("the embedded eBPF object parses")
}

fn mode_of(section: &ProgramSection) -> Option<AttachMode> {
    Some(match section {
        ProgramSection::KProbe => AttachMode::KProbe,
        ProgramSection::KRetProbe => AttachMode::KRetProbe,
        ProgramSection::FEntry { sleepable: false } => AttachMode::FEntry,
        ProgramSection::FExit { sleepable: false } => AttachMode::FExit,
        ProgramSection::TracePoint => AttachMode::Tracepoint,
        _ => return None,
    })
}

#[test]
fn every_program_of_the_table_exists_with_its_kind() {
    let obj = parse();
    let mut problems = Vec::new();
    for spec in PROGRAMS {
        match obj.programs.get(spec.name) {
            None => problems.push(format!("{}: missing", spec.name)),
            Some(p) => {
                let got = mode_of(&p.section);
                if got != Some(spec.mode) {
                    problems.push(format!(
                        "{}: section {:?}, want {}",
                        spec.name,
                        p.section,
                        spec.mode.key()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "program table mismatch: {problems:#?}");
}

#[test]
fn the_object_has_no_programs_outside_the_table() {
    let obj = parse();
    let mut extra: Vec<_> = obj
        .programs
        .keys()
        .filter(|n| !PROGRAMS.iter().any(|p| p.name == n.as_str()))
        .cloned()
        .collect();
    extra.sort();
    assert!(
        extra.is_empty(),
        "programs not in kernel::programs::PROGRAMS: {extra:?}"
    );
}

/// The lab's object (`live::lab`): exactly its kprobe programs, its configuration in
/// `.rodata`.
#[test]
fn the_lab_object_has_its_kprobes_and_global() {
    let obj = Object::parse(vmatrace::LAB_OBJECT).expect("the lab's eBPF object parses");
    let mut got: Vec<_> = obj.programs.keys().map(String::as_str).collect();
    got.sort();
    let mut want = vmatrace::live::lab::PROGRAMS.to_vec();
    want.sort();
    assert_eq!(got, want);
    for name in want {
        let section = &obj.programs[name].section;
        assert_eq!(mode_of(section), Some(AttachMode::KProbe), "{name}");
    }
    assert_eq!(
        rodata_size(vmatrace::LAB_OBJECT, names::LAB),
        std::mem::size_of::<vmatrace_common::globals::LabConfig>() as u64
    );
}

#[test]
fn maps_exist_with_their_types() {
    let obj = parse();
    let ty = |name: &str| -> u32 {
        match obj.maps.get(name) {
            Some(m) => m.map_type(),
            None => panic!("map {name} missing; maps: {:?}", obj.maps.keys()),
        }
    };
    // Values from include/uapi/linux/bpf.h (enum bpf_map_type).
    const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    assert_eq!(ty(names::EVENTS), BPF_MAP_TYPE_RINGBUF);
    assert_eq!(ty(names::SINCE_WAKE), BPF_MAP_TYPE_PERCPU_ARRAY);
    for m in names::INFLIGHT_MAPS {
        assert_eq!(ty(m), BPF_MAP_TYPE_LRU_HASH, "{m}");
    }
    assert_eq!(ty(names::EXCLUDERS), BPF_MAP_TYPE_LRU_HASH);
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    assert_eq!(ty(names::ARMED), BPF_MAP_TYPE_ARRAY);
    // Read by userspace through mmap, never a bpf() lookup (which would make the kernel
    // skip kprobe runs while the reader is preempted inside it).
    for m in [names::COUNTERS, names::READER_FALLBACKS] {
        assert_eq!(ty(m), BPF_MAP_TYPE_ARRAY, "{m}");
        let flags = obj.maps.get(m).map(|m| m.map_flags()).unwrap_or(0);
        assert_ne!(
            flags & vmatrace_common::counters::BPF_F_MMAPABLE,
            0,
            "{m}: not mmap-able"
        );
    }
    // The globals live in .rodata (frozen before the programs load).
}

#[test]
fn counters_map_has_a_slot_for_every_counter() {
    let obj = parse();
    let slots = obj
        .maps
        .get(names::COUNTERS)
        .map(Map::max_entries)
        .expect("COUNTERS map");
    assert_eq!(slots, vmatrace_common::counters::COUNTER_SLOTS);
    // Every counter the programs keep has a slot; the ones past the map are kept by
    // userspace (kernel per-program skip counts) and must not collide with it.
    let userspace = [
        vmatrace_common::Counter::EntryRunsSkipped,
        vmatrace_common::Counter::ReturnRunsSkipped,
        vmatrace_common::Counter::SingleRunsSkipped,
    ];
    for c in vmatrace_common::Counter::ALL {
        if userspace.contains(c) {
            assert!((*c as u32) >= slots, "{c:?} collides with a kernel slot");
        } else {
            assert!((*c as u32) < slots, "{c:?} has no slot");
        }
    }
}

/// The size of global `name` in the object `elf`; fails unless it is in `.rodata`.
fn rodata_size(elf: &[u8], name: &str) -> u64 {
    let elf = object::File::parse(elf).expect("ELF parses");
    let sym = elf
        .symbols()
        .find(|s| s.name() == Ok(name))
        .unwrap_or_else(|| panic!("global {name} missing"));
    let section = sym
        .section_index()
        .and_then(|i| elf.section_by_index(i).ok())
        .and_then(|s| object::ObjectSection::name(&s).ok().map(str::to_string));
    assert!(
        section.as_deref().is_some_and(|s| s.starts_with(".rodata")),
        "{name} is in {section:?}, not .rodata: it would not be a verifier constant"
    );
    sym.size()
}

#[test]
fn globals_exist_in_rodata_with_their_sizes() {
    let size_of = |name: &str| rodata_size(EBPF_OBJECT, name);
    use std::mem::size_of as sz;
    assert_eq!(
        size_of(names::OFFSETS),
        sz::<vmatrace_common::Offsets>() as u64
    );
    assert_eq!(
        size_of(names::CONFIG),
        sz::<vmatrace_common::ProgramConfig>() as u64
    );
    assert_eq!(size_of(names::GENERATION), 4);
    assert_eq!(
        size_of(names::MMAP_LOCK_TP),
        sz::<vmatrace_common::globals::MmapLockTpOffsets>() as u64
    );
    assert_eq!(names::GLOBALS.len(), 4);
}

#[test]
fn programs_only_read() {
    // No helper that writes user memory or changes control flow of the traced kernel:
    // bpf_probe_write_user (36), bpf_override_return (58), bpf_send_signal (109),
    // bpf_send_signal_thread (117). A call instruction is opcode 0x85 with src_reg 0.
    const FORBIDDEN: &[i32] = &[36, 58, 109, 117];
    const BPF_FUNC_PROBE_READ_KERNEL: i32 = 113;
    let obj = parse();
    let mut reads = 0;
    for (name, prog) in &obj.programs {
        let f = obj
            .functions
            .get(&(prog.section_index, prog.address))
            .unwrap_or_else(|| panic!("{name}: no function body"));
        for ins in &f.instructions {
            let is_helper_call = ins.code == 0x85 && ins.src_reg() == 0;
            reads += usize::from(is_helper_call && ins.imm == BPF_FUNC_PROBE_READ_KERNEL);
            assert!(
                !(is_helper_call && FORBIDDEN.contains(&ins.imm)),
                "{name} calls forbidden helper {}",
                ins.imm
            );
        }
    }
    // The scan sees the calls at all (it would pass vacuously on an empty body).
    assert!(
        reads > 0,
        "no bpf_probe_read_kernel call found: the scan is broken"
    );
}
