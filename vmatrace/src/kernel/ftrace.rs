//! ftrace's list of traceable functions and the kprobe blacklist.
//!
//! `<tracefs>/available_filter_functions` lists every function with an `__fentry__` call
//! site, i.e. what fentry/fexit can attach to (and where kprobes take the cheap ftrace
//! path). A function out of line in kallsyms but missing here is `notrace` (for example
//! every out-of-line copy of a `static inline`: `inline` implies `notrace`).
//! `/sys/kernel/debug/kprobes/blacklist` lists `NOKPROBE_SYMBOL` functions.

use std::collections::{HashMap, HashSet};
use std::fmt;

use super::symbols::clone_base;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListError {
    pub file: &'static str,
    pub line: usize,
    pub text: String,
}

impl fmt::Display for ListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line {}: unexpected {:?}",
            self.file, self.line, self.text
        )
    }
}

impl std::error::Error for ListError {}

/// The traceable functions, by base name (clones grouped under the function).
#[derive(Clone, Debug, Default)]
pub struct FilterFunctions {
    by_base: HashMap<String, Vec<String>>,
}

impl FilterFunctions {
    /// Parse `available_filter_functions`: `name` or `name [module]` per line.
    pub fn parse(text: &str) -> Result<FilterFunctions, ListError> {
        let mut f = FilterFunctions::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut it = line.split_whitespace();
            let name = it.next().unwrap_or_default();
            let module = it.next();
            let trailing = it.next();
            if trailing.is_some()
                || module.is_some_and(|m| !(m.starts_with('[') && m.ends_with(']')))
            {
                return Err(ListError {
                    file: "available_filter_functions",
                    line: i + 1,
                    text: line.chars().take(120).collect(),
                });
            }
            if let Some((base, _)) = clone_base(name) {
                f.by_base
                    .entry(base.to_string())
                    .or_default()
                    .push(name.to_string());
            }
        }
        Ok(f)
    }

    /// Whether `exact` (a kallsyms name, suffix included) is traceable.
    pub fn contains(&self, exact: &str) -> bool {
        let base = clone_base(exact).map_or(exact, |(b, _)| b);
        self.by_base
            .get(base)
            .is_some_and(|v| v.iter().any(|n| n == exact))
    }

    /// How many traceable entries carry this exact name (ftrace lists same-name static
    /// functions once each).
    pub fn count(&self, exact: &str) -> usize {
        let base = clone_base(exact).map_or(exact, |(b, _)| b);
        self.by_base
            .get(base)
            .map_or(0, |v| v.iter().filter(|n| *n == exact).count())
    }

    pub fn is_empty(&self) -> bool {
        self.by_base.is_empty()
    }
}

/// `NOKPROBE_SYMBOL` functions (exact names).
#[derive(Clone, Debug, Default)]
pub struct KprobeBlacklist {
    names: HashSet<String>,
}

impl KprobeBlacklist {
    /// Parse the debugfs blacklist: `0xSTART-0xEND\tname` (optionally ` [module]`).
    pub fn parse(text: &str) -> Result<KprobeBlacklist, ListError> {
        let mut b = KprobeBlacklist::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let mut it = line.split_whitespace();
            let range = it.next().unwrap_or_default();
            let name = it.next();
            let ok_range = range
                .split_once('-')
                .is_some_and(|(a, z)| is_hex(a) && is_hex(z));
            match name {
                Some(name) if ok_range => {
                    b.names.insert(name.to_string());
                }
                _ => {
                    return Err(ListError {
                        file: "kprobes/blacklist",
                        line: i + 1,
                        text: line.chars().take(120).collect(),
                    });
                }
            }
        }
        Ok(b)
    }

    pub fn contains(&self, exact: &str) -> bool {
        self.names.contains(exact)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

fn is_hex(s: &str) -> bool {
    let s = s.strip_prefix("0x").unwrap_or(s);
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "[0-9a-fx .\\[\\]_\\-\n\t]{0,300}") {
            if let Ok(f) = FilterFunctions::parse(&text) {
                for name in text.split_whitespace() {
                    let _ = (f.contains(name), f.count(name));
                }
            }
            let _ = KprobeBlacklist::parse(&text);
        }
    }

    #[test]
    fn filter_functions_with_modules_and_clones() {
        let f = FilterFunctions::parse(
            "__vma_start_write\nlock_vma_under_rcu\nfoo.isra.0\nvirtblk_probe [virtio_blk]\n\
             same_static\nsame_static\n",
        )
        .unwrap();
        assert!(f.contains("__vma_start_write"));
        assert!(!f.contains("vma_refcount_put"));
        assert!(f.contains("foo.isra.0"));
        assert!(!f.contains("foo"));
        assert!(f.contains("virtblk_probe"));
        assert_eq!(f.count("same_static"), 2);
        assert!(FilterFunctions::parse("a b c\n").is_err());
        assert!(FilterFunctions::parse("a module\n").is_err());
    }

    #[test]
    fn blacklist() {
        let b = KprobeBlacklist::parse(
            "0xffffffff81001000-0xffffffff81001040\tnmi_handle\n\
             0xffffffffc0001000-0xffffffffc0001010\tmodfn [mymod]\n",
        )
        .unwrap();
        assert!(b.contains("nmi_handle"));
        assert!(b.contains("modfn"));
        assert!(!b.contains("vma_refcount_put"));
        assert_eq!(b.len(), 2);
        assert!(KprobeBlacklist::parse("garbage\n").is_err());
        assert!(KprobeBlacklist::parse("0xzz-0x1 f\n").is_err());
    }
}
