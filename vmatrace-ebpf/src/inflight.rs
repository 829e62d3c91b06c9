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

/// The entry of the `__vma_start_write` call this thread is returning from, saved by its
/// start-exclude (`Inflight::outer`), as that call's own entry would have saved it: `live`
/// 1, `ptr` the VMA, the entry event's `arg` the task state, folded (no
/// `__vma_start_write` entry event exists to stream); [`Inflight::NONE`] and
/// `UnmatchedReturn` when there is none. `vma` (0: not known, kretprobe) must match: an
/// element left `outer` by a skipped return must not pair with another VMA's write lock.
#[inline(always)]
pub fn take_outer(map: &LruHashMap<u64, Inflight>, pid_tgid: u64, vma: u64) -> Inflight {
    if let Some(p) = map.get_ptr_mut(pid_tgid) {
        // SAFETY: a value pointer from the lookup; this thread's own element.
        unsafe {
            if (*p).outer == OUTER_LOST {
                // Start-exclude's return found no entry and counted it already.
                (*p).outer = 0;
                return Inflight::NONE;
            }
            if (*p).outer != 0 && (vma == 0 || (*p).vma == vma) {
                let mut e = *p;
                (*p).outer = 0;
                e.live = 1;
                e.ptr = e.vma;
                e.entry_arg = e.arg1 as u32;
                e.folded = 1;
                return e;
            }
        }
    }
    count(Counter::UnmatchedReturn);
    Inflight::NONE
}

/// `Inflight::outer` once start-exclude's return found no entry (the kernel skipped the
/// entry program): `__vma_start_write`'s return then has none either, and must not count
/// the same loss a second time.
const OUTER_LOST: u32 = 2;

/// Start-exclude's return of a `__vma_start_write` call found no entry: mark the thread's
/// element so [`take_outer`] returns nothing without counting again. A thread whose very
/// first call lost its entry has no element yet: one is made for the mark.
#[inline(always)]
pub fn note_outer_lost(map: &LruHashMap<u64, Inflight>, pid_tgid: u64) {
    if let Some(p) = map.get_ptr_mut(pid_tgid) {
        // SAFETY: a value pointer from the lookup; this thread's own element.
        unsafe { (*p).outer = OUTER_LOST }
        return;
    }
    let mark = Inflight {
        outer: OUTER_LOST,
        ..Inflight::NONE
    };
    if map.insert(pid_tgid, mark, BPF_NOEXIST as u64).is_err() {
        count(Counter::InflightMapFull);
    }
}
