//! Pairing entry and return per thread: the in-flight maps of `maps`.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    maps::LruHashMap,
};
use vmatrace_common::Counter;

use crate::{emit::count, maps::Inflight};

/// Save an entry; a failed insert is counted, never ignored. These functions do not
/// recurse, so an entry of this thread that is still there means its return was missed.
#[inline(always)]
pub fn remember(map: &LruHashMap<u64, Inflight>, pid_tgid: u64, e: &Inflight) {
    match map.insert(pid_tgid, e, BPF_NOEXIST as u64) {
        Ok(()) => {}
        Err(EEXIST) => {
            count(Counter::MissedReturn);
            if map.insert(pid_tgid, e, BPF_ANY as u64).is_err() {
                count(Counter::InflightMapFull);
            }
        }
        Err(_) => count(Counter::InflightMapFull),
    }
}

/// `-EEXIST` from `bpf_map_update_elem` with `BPF_NOEXIST`.
const EEXIST: i32 = -17;

/// Take the entry saved by this thread's entry probe; `UnmatchedReturn` when there is
/// none (the call began before the entry probe was attached, or the LRU evicted it).
#[inline(always)]
pub fn take(map: &LruHashMap<u64, Inflight>, pid_tgid: u64) -> Option<Inflight> {
    match map.get_ptr(pid_tgid) {
        Some(p) => {
            // SAFETY: a value pointer returned by the map lookup, read once.
            let e = unsafe { *p };
            let _ = map.remove(pid_tgid);
            Some(e)
        }
        None => {
            count(Counter::UnmatchedReturn);
            None
        }
    }
}
