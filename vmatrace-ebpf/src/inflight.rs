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

/// Take the entry saved by this thread's entry probe (`live` 1 in the copy, 0 in the
/// map); [`Inflight::NONE`] and `UnmatchedReturn` when there is none (the call began
/// before the programs were armed, the LRU evicted the element, or the kernel skipped the
/// entry program).
///
/// A plain struct, not an `Option`: the absent case must still define every field. LLVM
/// computes `wait_ns = ts - entry.ts` before testing whether there was an entry, and with
/// an `Option` the payload of `None` is a stack slot that may hold a pointer from earlier
/// in the program; the verifier refuses that subtraction.
#[inline(always)]
pub fn take(map: &LruHashMap<u64, Inflight>, pid_tgid: u64) -> Inflight {
    if let Some(p) = map.get_ptr_mut(pid_tgid) {
        // SAFETY: a value pointer from the lookup; this thread's own element.
        unsafe {
            if (*p).live != 0 {
                let e = *p;
                (*p).live = 0;
                return e;
            }
        }
    }
    count(Counter::UnmatchedReturn);
    Inflight::NONE
}
