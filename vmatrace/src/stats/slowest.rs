//! The slowest recent readers-exclusion waits, with who waited and on which VMA.

use std::{collections::HashMap, sync::Arc};

use serde::Serialize;

use super::aggregates::comm_to_string;
use crate::kernel::syscalls;

/// What a `SlowWait` event said about the wait it precedes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlowContext {
    /// `orig_ax` (`u64::MAX`: not read).
    pub syscall: u64,
    /// Id in the session's stack table (negative: the kernel kept no stack).
    pub stack: i64,
}

/// Kernel stacks of slow waits by id, as the source sent them (symbolized).
#[derive(Clone, Debug, Default)]
pub struct StackTable {
    stacks: HashMap<u32, Arc<[String]>>,
}

/// Bound on stacks kept: the programs' `STACKS` map has 1024 entries.
const MAX_STACKS: usize = 4096;

impl StackTable {
    pub fn add(&mut self, s: &crate::pipeline::KernelStack) {
        if self.stacks.len() < MAX_STACKS || self.stacks.contains_key(&s.id) {
            self.stacks.insert(s.id, s.frames.clone().into());
        }
    }

    pub fn frames(&self, stack: i64) -> Option<&Arc<[String]>> {
        u32::try_from(stack)
            .ok()
            .and_then(|id| self.stacks.get(&id))
    }

    /// Where the writer was (its syscall, a page fault, a kernel thread), without
    /// copying its frames (a table cell per row and frame).
    pub fn origin(&self, c: &SlowContext) -> syscalls::Origin {
        syscalls::origin(c.syscall, self.frames(c.stack).map_or(&[][..], |f| &f[..]))
    }

    /// [`StackTable::origin`] and the frames of `c` (empty when unknown).
    pub fn describe(&self, c: &SlowContext) -> (syscalls::Origin, Vec<String>) {
        let frames: Vec<String> = self.frames(c.stack).map(|f| f.to_vec()).unwrap_or_default();
        (self.origin(c), frames)
    }
}

/// One wait worth showing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WaitSample {
    /// Monotonic time of the return event.
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
    pub vm_start: u64,
    pub vm_end: u64,
    pub wait_ns: u64,
    /// The exclusion was for a detach (not a write lock).
    pub detaching: bool,
    /// The killable wait was interrupted (-EINTR).
    pub interrupted: bool,
    /// Sent with the wait when it reached `--slow-wait`.
    pub slow: Option<SlowContext>,
}

/// Serialisable form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WaitSampleRow {
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub comm: String,
    pub vm_start: u64,
    pub vm_end: u64,
    pub wait_ns: u64,
    pub detaching: bool,
    pub interrupted: bool,
    /// Where the writer was, for waits of at least `--slow-wait`: `syscall`,
    /// `page_fault`, `kernel_thread`, `signal_exit` or `unknown` (absent for shorter waits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub origin: Option<&'static str>,
    /// The writer's syscall, when `origin` is `syscall`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<String>,
    /// Its kernel stack, innermost frame first, symbolized (same condition).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
}

impl WaitSampleRow {
    pub fn new(w: &WaitSample, stacks: &StackTable) -> Self {
        let (origin, stack) = match w.slow.map(|c| stacks.describe(&c)) {
            Some((o, frames)) => (Some(o), frames),
            None => (None, Vec::new()),
        };
        let syscall = origin
            .as_ref()
            .and_then(|o| o.syscall().map(str::to_string));
        let origin = origin.as_ref().map(syscalls::Origin::key);
        Self {
            ts_ns: w.ts_ns,
            tgid: w.tgid,
            tid: w.tid,
            comm: comm_to_string(&w.comm),
            vm_start: w.vm_start,
            vm_end: w.vm_end,
            wait_ns: w.wait_ns,
            detaching: w.detaching,
            interrupted: w.interrupted,
            origin,
            syscall,
            stack,
        }
    }
}

pub const SLOWEST_KEPT: usize = 32;

/// The `SLOWEST_KEPT` longest waits whose return lies within `window_ns` of the newest
/// event seen. Fixed capacity, no allocation after construction, sorted slowest first.
#[derive(Clone, Debug)]
pub struct SlowestWaits {
    items: Vec<WaitSample>,
    window_ns: u64,
}

impl SlowestWaits {
    pub fn new(window_ns: u64) -> Self {
        Self {
            items: Vec::with_capacity(SLOWEST_KEPT),
            window_ns,
        }
    }

    #[inline]
    pub fn offer(&mut self, w: WaitSample) {
        // Quick reject: full and not slower than the fastest kept.
        if self.items.len() == SLOWEST_KEPT
            && self.items.last().is_some_and(|l| l.wait_ns >= w.wait_ns)
        {
            return;
        }
        let at = self.items.partition_point(|x| x.wait_ns >= w.wait_ns);
        if self.items.len() == SLOWEST_KEPT {
            self.items.pop();
        }
        self.items.insert(at, w);
    }

    /// Forget waits that ended more than the window before `now_ns`.
    pub fn expire(&mut self, now_ns: u64) {
        let horizon = now_ns.saturating_sub(self.window_ns);
        self.items.retain(|w| w.ts_ns >= horizon);
    }

    pub fn items(&self) -> &[WaitSample] {
        &self.items
    }

    pub fn window_ns(&self) -> u64 {
        self.window_ns
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ts_ns: u64, wait_ns: u64) -> WaitSample {
        WaitSample {
            ts_ns,
            wait_ns,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_the_slowest_sorted_and_bounded() {
        let mut s = SlowestWaits::new(u64::MAX);
        for i in 0..100u64 {
            s.offer(w(i, (i * 37) % 101));
        }
        assert_eq!(s.items().len(), SLOWEST_KEPT);
        let waits: Vec<u64> = s.items().iter().map(|x| x.wait_ns).collect();
        let mut sorted = waits.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        assert_eq!(waits, sorted);
        assert_eq!(waits[0], 100);
    }

    #[test]
    fn old_waits_expire() {
        let mut s = SlowestWaits::new(1_000);
        s.offer(w(100, 9_999));
        s.offer(w(1_900, 5));
        s.expire(2_000);
        assert_eq!(s.items().len(), 1);
        assert_eq!(s.items()[0].wait_ns, 5);
    }
}
