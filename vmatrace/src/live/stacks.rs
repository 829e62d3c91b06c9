//! The kernel stacks of slow waits: `STACKS` ids in `SlowWait` events, looked up once
//! each and symbolized before the events that name them leave the ring reader.
//!
//! The programs call `bpf_get_stackid` without `BPF_F_REUSE_STACKID`, so an id keeps
//! its stack for the whole session: each is read and symbolized the first time it is
//! seen, then only remembered. Only names leave this module (`kernel::symbolize`).

use std::collections::HashSet;

use aya::maps::{MapData, StackTraceMap};
use vmatrace_common::{Event, EventKind};

use crate::{kernel::symbolize::SymbolIndex, pipeline::KernelStack};

/// Bound on ids remembered: `STACKS` has 1024 entries, so this is never reached unless
/// the map was resized.
const MAX_KNOWN: usize = 1 << 16;

pub(super) struct StackResolver {
    map: StackTraceMap<MapData>,
    /// Read on the first new stack: most sessions have no slow wait, and parsing
    /// kallsyms (~200 000 symbols) at start would delay the first drain.
    symbols: Option<SymbolIndex>,
    known: HashSet<u32>,
}

impl StackResolver {
    pub fn new(map: StackTraceMap<MapData>) -> StackResolver {
        StackResolver {
            map,
            symbols: None,
            known: HashSet::new(),
        }
    }

    /// The stacks named by `events` that were not sent yet, symbolized. An id the map
    /// cannot give (it should always be there) is sent with no frames, once.
    pub fn new_stacks(&mut self, events: &[Event]) -> Vec<KernelStack> {
        let mut out = Vec::new();
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
            let symbols = self.symbols.get_or_insert_with(SymbolIndex::running);
            let frames = match self.map.get(&id, 0) {
                Ok(st) => st
                    .frames()
                    .iter()
                    .map(|f| symbols.symbolize(f.ip))
                    .collect(),
                Err(_) => Vec::new(),
            };
            out.push(KernelStack { id, frames });
        }
        out
    }
}
