//! Writer-path calls entered and not yet returned, by task and function family.
//!
//! Every `__vma_start_write`, start-exclude and detach call is entered here and removed
//! at its return, and most return a few events later: a map insert and remove per call
//! cost a fifth of the validator's time on a writer-heavy stream. The most recent calls
//! sit in a small array searched first; older ones (long waits, returns never streamed)
//! move to a map. Same contents as one map keyed the same way.

use super::hash::AddrMap;

/// A writer-path call entered and not yet returned: on which VMA, by which task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenCall {
    pub vma: u64,
    pub tid: u32,
}

/// Calls kept in the array before the oldest moves to the map.
const RECENT: usize = 16;

#[derive(Default)]
pub struct OpenCalls {
    /// `(key, call)`, oldest first; `n` are in use.
    recent: [(u64, OpenCall); RECENT],
    n: usize,
    older: AddrMap<OpenCall>,
}

impl OpenCalls {
    pub fn len(&self) -> usize {
        self.n + self.older.len()
    }

    /// Enter `call` under `key`, replacing the call already there.
    pub fn insert(&mut self, key: u64, call: OpenCall) {
        if let Some(i) = self.position(key) {
            self.recent[i].1 = call;
            return;
        }
        if !self.older.is_empty() {
            self.older.remove(&key);
        }
        if self.n == RECENT {
            let (k, c) = self.recent[0];
            self.older.insert(k, c);
            self.recent.copy_within(1.., 0);
            self.n -= 1;
        }
        self.recent[self.n] = (key, call);
        self.n += 1;
    }

    pub fn remove(&mut self, key: u64) {
        match self.position(key) {
            Some(i) => {
                self.recent.copy_within(i + 1..self.n, i);
                self.n -= 1;
            }
            None if !self.older.is_empty() => {
                self.older.remove(&key);
            }
            None => {}
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &OpenCall> {
        self.recent[..self.n]
            .iter()
            .map(|(_, c)| c)
            .chain(self.older.values())
    }

    pub fn clear(&mut self) {
        self.n = 0;
        self.older.clear();
    }

    /// Newest first: a return usually follows its entry closely.
    fn position(&self, key: u64) -> Option<usize> {
        self.recent[..self.n].iter().rposition(|(k, _)| *k == key)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Against a plain map: the same calls, whatever the order of entries and returns,
    /// across the array's size.
    #[test]
    fn holds_what_one_map_holds() {
        let mut calls = OpenCalls::default();
        let mut model: HashMap<u64, OpenCall> = HashMap::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..20_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = x % 40;
            let call = OpenCall {
                vma: step,
                tid: (x >> 32) as u32,
            };
            if x.is_multiple_of(3) {
                calls.remove(key);
                model.remove(&key);
            } else {
                calls.insert(key, call);
                model.insert(key, call);
            }
            assert_eq!(calls.len(), model.len(), "step {step}");
        }
        let mut got: Vec<OpenCall> = calls.values().copied().collect();
        let mut want: Vec<OpenCall> = model.values().copied().collect();
        got.sort_by_key(|c| (c.vma, c.tid));
        want.sort_by_key(|c| (c.vma, c.tid));
        assert_eq!(got, want);
        assert!(calls.len() > RECENT, "the map was used");
        calls.clear();
        assert_eq!(calls.len(), 0);
        assert_eq!(calls.values().count(), 0);
    }
}
