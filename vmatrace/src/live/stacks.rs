//! The kernel stacks of slow waits: `STACKS` ids in `SlowWait` events, looked up once
//! each and symbolized, then sent to the pipeline as [`KernelStack`]s.
//!
//! The programs call `bpf_get_stackid` without `BPF_F_REUSE_STACKID`, so an id keeps
//! its stack for the whole session: each is read the first time it is seen (one map
//! lookup), then only remembered. Symbolizing needs `/proc/kallsyms` parsed (~200 000
//! symbols: seconds under TCG), which must never hold up the ring reader, or the ring
//! fills: it is parsed on its own thread from the start of the session, and stacks seen
//! before it is ready wait (as addresses, inside this process) until it is. Only names
//! leave this module (`kernel::symbolize`).
//!
//! A stack map cannot be mmapped, so each first-seen id costs one `bpf()` lookup, which
//! raises its CPU's `bpf_prog_active` with preemption enabled: preempted there, this
//! thread would make the kernel skip every kprobe run on that CPU (see `mapped.rs`). The
//! lookup therefore runs at real-time priority (`SCHED_FIFO` 99, for the one syscall),
//! which no normal task and no threaded interrupt preempts.

use std::{collections::HashSet, thread::JoinHandle};

use aya::maps::{MapData, StackTraceMap};
use vmatrace_common::{Event, EventKind};

use crate::{kernel::symbolize::SymbolIndex, pipeline::KernelStack};

/// Bound on ids remembered: `STACKS` has 1024 entries, so this is never reached unless
/// the map was resized.
const MAX_KNOWN: usize = 1 << 16;

pub(super) struct StackResolver {
    map: StackTraceMap<MapData>,
    symbols: Symbols,
    known: HashSet<u32>,
    /// Read from the map, waiting for the symbols.
    waiting: Vec<(u32, Vec<u64>)>,
}

enum Symbols {
    Loading(JoinHandle<SymbolIndex>),
    Ready(SymbolIndex),
}

impl StackResolver {
    pub fn new(map: StackTraceMap<MapData>) -> StackResolver {
        let symbols = match std::thread::Builder::new()
            .name("vmatrace-kallsyms".into())
            .spawn(SymbolIndex::running)
        {
            Ok(h) => Symbols::Loading(h),
            // No thread: parse here, once (the session has just started).
            Err(_) => Symbols::Ready(SymbolIndex::running()),
        };
        StackResolver {
            map,
            symbols,
            known: HashSet::new(),
            waiting: Vec::new(),
        }
    }

    /// The symbols, if parsed; `wait`: block until they are (the session's end).
    fn symbols(&mut self, wait: bool) -> Option<&SymbolIndex> {
        if let Symbols::Loading(h) = &self.symbols
            && (wait || h.is_finished())
        {
            let Symbols::Loading(h) =
                std::mem::replace(&mut self.symbols, Symbols::Ready(SymbolIndex::default()))
            else {
                unreachable!("checked above")
            };
            self.symbols = Symbols::Ready(h.join().unwrap_or_default());
        }
        match &self.symbols {
            Symbols::Ready(s) => Some(s),
            Symbols::Loading(_) => None,
        }
    }

    /// The stacks named by `events` (and earlier ones still waiting) that can be sent
    /// now, symbolized. An id the map cannot give (it should always be there) is sent
    /// with no frames, once. `wait`: the session is ending, block for the symbols.
    pub fn new_stacks(&mut self, events: &[Event], wait: bool) -> Vec<KernelStack> {
        for e in events {
            if e.kind() != Some(EventKind::SlowWait) || e.ret < 0 {
                continue;
            }
            let Ok(id) = u32::try_from(e.ret) else {
                continue;
            };
            if self.known.len() >= MAX_KNOWN || !self.known.insert(id) {
                continue;
            }
            let ips = match at_realtime_priority(|| self.map.get(&id, 0)) {
                Ok(st) => st.frames().iter().map(|f| f.ip).collect(),
                Err(_) => Vec::new(),
            };
            self.waiting.push((id, ips));
        }
        if self.waiting.is_empty() {
            return Vec::new();
        }
        let waiting = std::mem::take(&mut self.waiting);
        let Some(symbols) = self.symbols(wait) else {
            self.waiting = waiting;
            return Vec::new();
        };
        waiting
            .into_iter()
            .map(|(id, ips)| KernelStack {
                id,
                frames: ips.iter().map(|ip| symbols.symbolize(*ip)).collect(),
            })
            .collect()
    }
}

/// Run `f` with this thread at `SCHED_FIFO` 99, then restore its policy. Without the
/// privilege (no `CAP_SYS_NICE`) `f` just runs.
fn at_realtime_priority<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: 0 is the calling thread; `param` outlives each call.
    unsafe {
        let policy = libc::sched_getscheduler(0);
        let mut old = libc::sched_param { sched_priority: 0 };
        let saved = policy >= 0 && libc::sched_getparam(0, &mut old) == 0;
        let rt = libc::sched_param { sched_priority: 99 };
        let raised = saved && libc::sched_setscheduler(0, libc::SCHED_FIFO, &rt) == 0;
        let out = f();
        if raised {
            libc::sched_setscheduler(0, policy, &old);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_thread_gets_its_policy_back() {
        // SAFETY: queries of the calling thread.
        let before = unsafe { libc::sched_getscheduler(0) };
        let inside = at_realtime_priority(|| unsafe { libc::sched_getscheduler(0) });
        assert_eq!(unsafe { libc::sched_getscheduler(0) }, before);
        // Raised where the privilege exists (root here), untouched otherwise.
        assert!(inside == libc::SCHED_FIFO || inside == before, "{inside}");
    }
}
