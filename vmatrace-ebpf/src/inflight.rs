//! Pairing entry and return per thread: the in-flight maps of `maps`.
//!
//! Each thread has one element per function family, created at its first call and then
//! rewritten in place: `remember` and `take` are lockless lookups plus plain stores to
//! the thread's own element (only that thread writes it). Elements of threads that are
//! gone age out of the LRU.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::LruHashMap};
use vmatrace_common::Counter;

use crate::{emit::count, maps::Inflight};

/// Save an entry; a failed insert is counted, never ignored. These functions do not
/// recurse, so an entry of this thread that is still live means its return was missed.
#[inline(always)]
pub fn remember(map: &LruHashMap<u64, Inflight>, pid_tgid: u64, e: &Inflight) {
    let mut e = *e;
    e.live = 1;
    if let Some(p) = map.get_ptr_mut(pid_tgid) {
        // SAFETY: a value pointer from the lookup; this thread's own element.
        unsafe {
            if (*p).live != 0 {
                count(Counter::MissedReturn);
            }
            *p = e;
        }
        return;
    }
    if map.insert(pid_tgid, e, BPF_NOEXIST as u64).is_err() {
        count(Counter::InflightMapFull);
    }
}

/// Take the entry saved by this thread's entry probe; `UnmatchedReturn` when there is
/// none (the call began before the programs were armed, the LRU evicted the element, or
/// the kernel skipped the entry program).
#[inline(always)]
pub fn take(map: &LruHashMap<u64, Inflight>, pid_tgid: u64) -> Option<Inflight> {
    if let Some(p) = map.get_ptr_mut(pid_tgid) {
        // SAFETY: a value pointer from the lookup; this thread's own element.
        unsafe {
            if (*p).live != 0 {
                (*p).live = 0;
                return Some(*p);
            }
        }
    }
    count(Counter::UnmatchedReturn);
    None
}
