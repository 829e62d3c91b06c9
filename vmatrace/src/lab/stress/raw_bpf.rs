//! The raw `bpf(2)` and `perf_event_open(2)` calls of the reference call counter's
//! hand-assembled kprobe programs (`calls.rs`). Not aya, on purpose: the counter is the
//! independent witness the tracer's counts are checked against, and it must start
//! counting without touching much memory first (each page the workload faults in is a
//! `lock_vma_under_rcu` call the tracer sees): aya's `EbpfLoader::new` parses the
//! kernel's BTF, 4 600 page faults in this process, 11 % of a matrix run's reader calls.
//! The race widener's program is loaded by aya (`live::lab`).

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, bail};

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

pub const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (src << 4) | dst,
        off,
        imm,
    }
}

pub fn sys_bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zero-initialised 128-byte `union bpf_attr` for `cmd`; pointers in
    // it refer to buffers the caller keeps alive across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: BPF_PROG_LOAD returns a new descriptor that we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub fn load_program(insns: &[Insn], name: &str) -> anyhow::Result<OwnedFd> {
    const BPF_PROG_LOAD: libc::c_long = 5;
    const BPF_PROG_TYPE_KPROBE: u64 = 2;
    let raw: Vec<u64> = insns
        .iter()
        .map(|i| {
            u64::from(i.code)
                | u64::from(i.regs) << 8
                | u64::from(i.off as u16) << 16
                | u64::from(i.imm as u32) << 32
        })
        .collect();
    let license = c"GPL";
    let load = |log: &mut [u8]| {
        let mut attr = [0u64; 16];
        attr[0] = BPF_PROG_TYPE_KPROBE | (raw.len() as u64) << 32; // prog_type, insn_cnt
        attr[1] = raw.as_ptr() as u64; // insns
        attr[2] = license.as_ptr() as u64; // license
        if !log.is_empty() {
            attr[3] = 1 | (log.len() as u64) << 32; // log_level, log_size
            attr[4] = log.as_mut_ptr() as u64; // log_buf
        }
        // kern_version (attr[5] low) stays 0; prog_name: 16 bytes at byte offset 48.
        let mut pname = [0u8; 16];
        for (d, s) in pname.iter_mut().zip(name.bytes().take(15)) {
            *d = s;
        }
        attr[6] = u64::from_le_bytes(pname[..8].try_into().unwrap_or_default());
        attr[7] = u64::from_le_bytes(pname[8..].try_into().unwrap_or_default());
        sys_bpf(BPF_PROG_LOAD, &mut attr)
    };
    // Without a log first: the verifier walks every loop iteration, and a level-1 log of
    // that would overflow any buffer (ENOSPC). On failure, load again for the reason.
    load(&mut []).map_err(|e| {
        let mut log = vec![0u8; 256 * 1024];
        let _ = load(&mut log);
        let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
        let tail = String::from_utf8_lossy(&log[end.saturating_sub(600)..end]).into_owned();
        anyhow::anyhow!("loading the {name} program: {e}; verifier: {}", tail.trim())
    })
}

pub fn kprobe_pmu_type() -> anyhow::Result<u32> {
    let p = "/sys/bus/event_source/devices/kprobe/type";
    let s = fs::read_to_string(p)
        .with_context(|| format!("reading {p}: this kernel has no kprobe PMU"))?;
    s.trim()
        .parse()
        .with_context(|| format!("{p} holds {s:?}, not a PMU type"))
}

pub fn attach_kprobe(func: &str, offset: u64, prog: &OwnedFd) -> anyhow::Result<OwnedFd> {
    const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
    const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
    const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
    let name = CString::new(func)?;
    // `struct perf_event_attr` (PERF_ATTR_SIZE_VER7, 128 bytes), zeroed, then: type and
    // size, sample_period = 1, kprobe_func (config1) and probe_offset (config2).
    let mut attr = [0u64; 16];
    attr[0] = u64::from(kprobe_pmu_type()?) | 128 << 32;
    attr[2] = 1;
    attr[7] = name.as_ptr() as u64;
    attr[8] = offset;
    // SAFETY: `attr` is a valid perf_event_attr of the size it declares; `name` outlives
    // the call. pid -1 with cpu 0 is how kprobe events are opened for BPF: the program
    // runs on every CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.as_ptr(),
            -1 as libc::c_int,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EILSEQ) {
            bail!(
                "{func}+{offset:#x} is not an instruction boundary (the matcher misread the text)"
            );
        }
        return Err(e).context("perf_event_open(kprobe)");
    }
    // SAFETY: a new descriptor we own.
    let ev = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: plain ioctls on our perf event fd; SET_BPF takes the program fd by value.
    unsafe {
        if libc::ioctl(ev.as_raw_fd(), PERF_EVENT_IOC_SET_BPF, prog.as_raw_fd()) < 0 {
            return Err(io::Error::last_os_error()).context("PERF_EVENT_IOC_SET_BPF");
        }
        if libc::ioctl(ev.as_raw_fd(), PERF_EVENT_IOC_ENABLE, 0) < 0 {
            return Err(io::Error::last_os_error()).context("PERF_EVENT_IOC_ENABLE");
        }
    }
    Ok(ev)
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_TYPE_ARRAY: u64 = 2;

/// `r{dst} = <map fd>` (`BPF_LD | BPF_IMM | BPF_DW` with `BPF_PSEUDO_MAP_FD`): two slots.
pub fn ld_map_fd(dst: u8, map: &OwnedFd) -> [Insn; 2] {
    [insn(0x18, dst, 1, 0, map.as_raw_fd()), insn(0, 0, 0, 0, 0)]
}

/// `r{dst} = imm` for a 64-bit constant (`BPF_LD | BPF_IMM | BPF_DW`): two slots.
pub fn ld_imm64(dst: u8, imm: u64) -> [Insn; 2] {
    [
        insn(0x18, dst, 0, 0, imm as u32 as i32),
        insn(0, 0, 0, 0, (imm >> 32) as u32 as i32),
    ]
}

/// An array map of `entries` u64 values.
pub fn array_map(entries: u32) -> anyhow::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    // map_type, key_size (u32); value_size (u64), max_entries.
    attr[0] = BPF_MAP_TYPE_ARRAY | 4 << 32;
    attr[1] = 8 | u64::from(entries) << 32;
    sys_bpf(BPF_MAP_CREATE, &mut attr).context("creating an array map")
}

/// Value `key` of an array map of u64.
pub fn array_get(map: &OwnedFd, key: u32) -> anyhow::Result<u64> {
    let mut value = 0u64;
    let mut attr = [0u64; 16];
    // map_fd (u32, padded), key pointer, value pointer.
    attr[0] = map.as_raw_fd() as u32 as u64;
    attr[1] = &key as *const u32 as u64;
    attr[2] = &mut value as *mut u64 as u64;
    // BPF_MAP_LOOKUP_ELEM returns 0, not a descriptor: do not wrap it in an OwnedFd.
    // SAFETY: `attr` is a zeroed bpf_attr whose pointers refer to live locals.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error()).context("reading an array map");
    }
    Ok(value)
}
