//! Hits the kernel dropped before a kprobe program could run: the `missed` count of a
//! kprobe/kretprobe perf link (`bpf_link_info.perf_event.kprobe.missed`, kernel 6.7+).
//!
//! A program's `recursion_misses` only counts runs refused at the program. A kprobe also
//! misses hits in the kprobe layer (a hit while another kprobe handler runs on the CPU),
//! and a kretprobe misses returns when all its `maxactive` instances are held by tasks
//! still inside the function (vmatrace's write-lock hooks sleep while readers drain).
//! The kernel sums both per trace_kprobe (`trace_kprobe_missed`) and reports them through
//! the link; these are events lost just the same, so they join the runs skipped.
//!
//! aya 0.14 does not expose the perf-event part of a link's info, so this reads it with
//! `BPF_LINK_GET_NEXT_ID` / `BPF_LINK_GET_FD_BY_ID` / `BPF_OBJ_GET_INFO_BY_FD`, matching
//! the session's programs by id.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// The highest missed count seen per program id, shared by the counter snapshots and the
/// per-program statistics of one session. Links take their count with them when they
/// are detached, so the values read while attached are kept (counts only grow).
#[derive(Clone, Debug, Default)]
pub struct Seen(Arc<Mutex<HashMap<u32, u64>>>);

impl Seen {
    /// Read the links of `prog_ids` now and return every count seen so far.
    pub fn refresh(&self, prog_ids: &[u32]) -> HashMap<u32, u64> {
        let now = missed_by_program(prog_ids);
        let Ok(mut seen) = self.0.lock() else {
            return now;
        };
        for (id, n) in now {
            let e = seen.entry(id).or_insert(0);
            *e = (*e).max(n);
        }
        seen.clone()
    }

    /// The counts read so far, without reading the links again.
    pub fn get(&self) -> HashMap<u32, u64> {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;
const BPF_LINK_TYPE_PERF_EVENT: u32 = 7;
const BPF_PERF_EVENT_KPROBE: u32 = 3;
const BPF_PERF_EVENT_KRETPROBE: u32 = 4;

/// `struct bpf_link_info`, large enough for every member; the kernel copies at most
/// what it knows and checks that the rest is zero.
const LINK_INFO_BYTES: usize = 256;

/// Byte offsets in `struct bpf_link_info` (uapi `linux/bpf.h`): `type`, `id`, `prog_id`,
/// then the 8-aligned union; its `perf_event` is `type`, a pad, then `kprobe`
/// `{ func_name u64, name_len u32, offset u32, addr u64, missed u64, cookie u64 }`.
mod off {
    pub const TYPE: usize = 0;
    pub const PROG_ID: usize = 8;
    pub const PERF_EVENT_TYPE: usize = 16;
    pub const KPROBE_MISSED: usize = 48;
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(a)
}

/// `(prog_id, missed)` when `info` is a kprobe or kretprobe perf link.
pub fn kprobe_link_missed(info: &[u8]) -> Option<(u32, u64)> {
    if info.len() < off::KPROBE_MISSED + 8 || u32_at(info, off::TYPE) != BPF_LINK_TYPE_PERF_EVENT {
        return None;
    }
    let perf = u32_at(info, off::PERF_EVENT_TYPE);
    (perf == BPF_PERF_EVENT_KPROBE || perf == BPF_PERF_EVENT_KRETPROBE)
        .then(|| (u32_at(info, off::PROG_ID), u64_at(info, off::KPROBE_MISSED)))
}

/// A zero-padded `union bpf_attr` prefix, filled field by field at byte offsets.
#[repr(C, align(8))]
struct Attr([u8; 32]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 32])
    }
    fn put_u32(&mut self, at: usize, v: u32) -> &mut Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn put_u64(&mut self, at: usize, v: u64) -> &mut Attr {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u32_at(&self, at: usize) -> u32 {
        u32_at(&self.0, at)
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<libc::c_long> {
    // SAFETY: `attr` is a 32-byte, zero-padded bpf_attr prefix that outlives the call;
    // the commands used here read and write only inside it (and, for
    // BPF_OBJ_GET_INFO_BY_FD, the info buffer it points at, which the caller keeps alive).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Missed hits per program id, summed over every kprobe link of those programs. Links
/// that vanish meanwhile, or kernels before 6.7 (no `missed`: reads as 0), add nothing.
pub fn missed_by_program(prog_ids: &[u32]) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    if prog_ids.is_empty() {
        return out;
    }
    let mut id = 0u32;
    loop {
        // { start_id, next_id, open_flags }
        let mut next = Attr::new();
        if bpf(BPF_LINK_GET_NEXT_ID, next.put_u32(0, id)).is_err() {
            break; // ENOENT: no more links
        }
        id = next.u32_at(4);
        // { link_id, next_id, open_flags }
        let Ok(fd) = bpf(BPF_LINK_GET_FD_BY_ID, Attr::new().put_u32(0, id)) else {
            continue;
        };
        // SAFETY: the kernel just returned this fd and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let mut info = [0u8; LINK_INFO_BYTES];
        // { bpf_fd, info_len, info }
        let mut get = Attr::new();
        get.put_u32(0, fd.as_raw_fd() as u32)
            .put_u32(4, LINK_INFO_BYTES as u32)
            .put_u64(8, info.as_mut_ptr() as u64);
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut get).is_err() {
            continue;
        }
        if let Some((prog, missed)) = kprobe_link_missed(&info)
            && prog_ids.contains(&prog)
        {
            let e = out.entry(prog).or_insert(0u64);
            *e = e.saturating_add(missed);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(link_type: u32, perf_type: u32, prog: u32, missed: u64) -> [u8; LINK_INFO_BYTES] {
        let mut b = [0u8; LINK_INFO_BYTES];
        b[off::TYPE..off::TYPE + 4].copy_from_slice(&link_type.to_ne_bytes());
        b[off::PROG_ID..off::PROG_ID + 4].copy_from_slice(&prog.to_ne_bytes());
        b[off::PERF_EVENT_TYPE..off::PERF_EVENT_TYPE + 4].copy_from_slice(&perf_type.to_ne_bytes());
        b[off::KPROBE_MISSED..off::KPROBE_MISSED + 8].copy_from_slice(&missed.to_ne_bytes());
        b
    }

    #[test]
    fn reads_missed_of_kprobe_and_kretprobe_links_only() {
        assert_eq!(
            kprobe_link_missed(&info(
                BPF_LINK_TYPE_PERF_EVENT,
                BPF_PERF_EVENT_KRETPROBE,
                41,
                7
            )),
            Some((41, 7))
        );
        assert_eq!(
            kprobe_link_missed(&info(
                BPF_LINK_TYPE_PERF_EVENT,
                BPF_PERF_EVENT_KPROBE,
                40,
                0
            )),
            Some((40, 0))
        );
        // A tracepoint perf link, a tracing (fentry) link: not kprobes.
        assert_eq!(
            kprobe_link_missed(&info(BPF_LINK_TYPE_PERF_EVENT, 5, 42, 9)),
            None
        );
        assert_eq!(
            kprobe_link_missed(&info(2, BPF_PERF_EVENT_KPROBE, 43, 9)),
            None
        );
        assert_eq!(kprobe_link_missed(&[0u8; 16]), None);
    }

    #[test]
    fn no_programs_no_syscalls() {
        assert!(missed_by_program(&[]).is_empty());
    }

    #[test]
    fn seen_counts_outlive_their_links() {
        let seen = Seen::default();
        seen.0.lock().unwrap().insert(7, 3);
        // No link of program 7 exists (here: none at all): the 3 read earlier stays.
        assert_eq!(seen.refresh(&[7]).get(&7), Some(&3));
    }
}
