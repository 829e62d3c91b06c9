//! `/proc/kallsyms`: which functions exist out of line, under which (possibly cloned) names.
//!
//! The compiler may emit a function under a suffixed name: `.isra.N`, `.constprop.N` and
//! `.llvm.N` are whole, callable copies (a kprobe on them sees the function), so they count
//! as entries of the base name. `.part.N` and `.cold` are fragments of a function split by
//! the compiler: probing them does not observe the function's entry, so they do not count.

use std::collections::HashMap;
use std::fmt;

/// One text symbol.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub addr: u64,
    /// The kallsyms type letter: `t`/`T` (text), `w`/`W` (weak).
    pub kind: char,
    /// The exact name, suffix included (what a kprobe attaches to).
    pub name: String,
    /// `[module]` for module symbols.
    pub module: Option<String>,
}

impl Symbol {
    pub fn is_global(&self) -> bool {
        self.kind.is_ascii_uppercase()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KallsymsError {
    pub line: usize,
    pub text: String,
}

impl fmt::Display for KallsymsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kallsyms line {}: not `ADDRESS TYPE NAME [module]`: {:?}",
            self.line, self.text
        )
    }
}

impl std::error::Error for KallsymsError {}

/// How a function name maps onto kallsyms entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolved<'a> {
    /// No whole out-of-line copy: inlined everywhere (or the function does not exist).
    Absent,
    /// Exactly one entry (the exact name or a single clone).
    Unique(&'a Symbol),
    /// Several entries: attaching by name is ambiguous (kprobe gets EADDRNOTAVAIL).
    Ambiguous(Vec<&'a Symbol>),
}

/// Text symbols of the kernel (vmlinux and loaded modules), indexed by base name.
#[derive(Clone, Debug, Default)]
pub struct Kallsyms {
    by_base: HashMap<String, Vec<Symbol>>,
    count: usize,
    /// Base names that have only fragments (`.part.N`, `.cold`) or other suffixed copies:
    /// the function exists in the kernel, just not whole under its name.
    fragments: std::collections::HashSet<String>,
    /// Every address was 0: `kptr_restrict` hid them (the names are still usable).
    pub addresses_hidden: bool,
}

/// Split a symbol into (base name, is a whole-function clone). `None` for fragments
/// (`.part.N`, `.cold`) and other suffixes the planner does not treat as the function.
pub fn clone_base(name: &str) -> Option<(&str, bool)> {
    let Some(dot) = name.find('.') else {
        return Some((name, false));
    };
    let (base, mut rest) = name.split_at(dot);
    // The rest is a chain like `.constprop.0.isra.0`: every link must be a whole-function
    // clone suffix with a number.
    while !rest.is_empty() {
        let r = rest.strip_prefix('.')?;
        let (tag, after) = r.split_once('.').unwrap_or((r, ""));
        if !matches!(tag, "isra" | "constprop" | "llvm") {
            return None;
        }
        let (num, next) = match after.find('.') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        if num.is_empty() || !num.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        rest = next;
    }
    Some((base, true))
}

impl Kallsyms {
    /// Parse `/proc/kallsyms` text. Non-text symbols are skipped; malformed lines are
    /// errors (a truncated or wrong file should not quietly plan with half the symbols).
    pub fn parse(text: &str) -> Result<Kallsyms, KallsymsError> {
        let mut k = Kallsyms::default();
        let mut all_zero = true;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let bad = || KallsymsError {
                line: i + 1,
                text: line.chars().take(120).collect(),
            };
            let mut it = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                return Err(bad());
            };
            let addr = u64::from_str_radix(addr, 16).map_err(|_| bad())?;
            let mut kc = kind.chars();
            let (Some(kind), None) = (kc.next(), kc.next()) else {
                return Err(bad());
            };
            let module = it
                .next()
                .map(|m| m.trim_start_matches('[').trim_end_matches(']').to_string());
            if addr != 0 {
                all_zero = false;
            }
            if !matches!(kind, 't' | 'T' | 'w' | 'W') {
                continue;
            }
            let Some((base, _)) = clone_base(name) else {
                let base = name.split('.').next().unwrap_or(name);
                k.fragments.insert(base.to_string());
                continue;
            };
            k.by_base.entry(base.to_string()).or_default().push(Symbol {
                addr,
                kind,
                name: name.to_string(),
                module,
            });
            k.count += 1;
        }
        k.addresses_hidden = all_zero && k.count > 0;
        Ok(k)
    }

    /// Number of text symbols kept (clones included, fragments not).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Whether `name` has a fragment or a suffixed copy that is not a whole function.
    pub fn has_fragment(&self, name: &str) -> bool {
        self.fragments.contains(name)
    }

    /// Every whole out-of-line copy of `name` (exact name and clones), vmlinux first.
    pub fn entries(&self, name: &str) -> Vec<&Symbol> {
        let mut v: Vec<&Symbol> = self
            .by_base
            .get(name)
            .map(|v| v.iter().collect())
            .unwrap_or_default();
        v.sort_by_key(|s| (s.module.is_some(), s.name != name, s.addr));
        v
    }

    /// Resolve `name` for attaching. Two identical lines (same name and address, as
    /// kallsyms sometimes lists aliases) count once.
    pub fn resolve(&self, name: &str) -> Resolved<'_> {
        let mut v = self.entries(name);
        v.dedup_by(|a, b| a.name == b.name && a.addr == b.addr && a.module == b.module);
        match v.len() {
            0 => Resolved::Absent,
            1 => Resolved::Unique(v[0]),
            _ => Resolved::Ambiguous(v),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "[0-9a-fA-FtTwWdD .\\[\\]_\n\t]{0,300}") {
            if let Ok(k) = Kallsyms::parse(&text) {
                for name in text.split_whitespace() {
                    let _ = k.resolve(name);
                }
            }
            let _ = clone_base(&text);
        }
    }

    #[test]
    fn clone_suffixes() {
        assert_eq!(
            clone_base("vma_refcount_put"),
            Some(("vma_refcount_put", false))
        );
        assert_eq!(clone_base("foo.isra.0"), Some(("foo", true)));
        assert_eq!(clone_base("foo.constprop.12"), Some(("foo", true)));
        assert_eq!(clone_base("foo.constprop.0.isra.0"), Some(("foo", true)));
        assert_eq!(clone_base("foo.llvm.1234567890"), Some(("foo", true)));
        assert_eq!(clone_base("foo.part.0"), None);
        assert_eq!(clone_base("foo.cold"), None);
        assert_eq!(clone_base("foo.isra.0.cold"), None);
        assert_eq!(clone_base("foo.isra"), None);
        assert_eq!(clone_base("foo.isra.x"), None);
    }

    const SAMPLE: &str = "\
ffffffff81000000 T _stext
ffffffff81234560 t vma_refcount_put
ffffffff81234600 T __vma_start_write
ffffffff81234700 t __vma_start_exclude_readers
ffffffff81234800 t __vma_start_exclude_readers.cold
ffffffff81234900 t dup_helper
ffffffff81234a00 t dup_helper
ffffffff81234b00 t cloned.isra.0
ffffffff81234c00 t split.part.0
ffffffff81234d00 t split.cold
ffffffff81234e00 t two.constprop.0
ffffffff81234f00 t two.isra.0
ffffffff82000000 D some_data
ffffffff82000100 d __vma_start_write_data
ffffffffc0000000 t modfn\t[virtio_blk]
ffffffff81235000 T alias
ffffffff81235000 T alias
";

    #[test]
    fn resolution() {
        let k = Kallsyms::parse(SAMPLE).unwrap();
        let name = |r: Resolved<'_>| match r {
            Resolved::Unique(s) => s.name.clone(),
            Resolved::Absent => "-".into(),
            Resolved::Ambiguous(v) => format!("ambiguous {}", v.len()),
        };
        assert_eq!(name(k.resolve("__vma_start_write")), "__vma_start_write");
        // The .cold fragment is not a second entry.
        assert_eq!(
            name(k.resolve("__vma_start_exclude_readers")),
            "__vma_start_exclude_readers"
        );
        assert_eq!(name(k.resolve("dup_helper")), "ambiguous 2");
        assert_eq!(name(k.resolve("cloned")), "cloned.isra.0");
        // Only fragments: the function's entry is not out of line anywhere.
        assert_eq!(name(k.resolve("split")), "-");
        assert_eq!(name(k.resolve("two")), "ambiguous 2");
        assert_eq!(name(k.resolve("some_data")), "-");
        assert_eq!(name(k.resolve("__vma_start_write_data")), "-");
        assert_eq!(name(k.resolve("alias")), "alias");
        match k.resolve("modfn") {
            Resolved::Unique(s) => assert_eq!(s.module.as_deref(), Some("virtio_blk")),
            r => panic!("{r:?}"),
        }
        assert!(!k.addresses_hidden);
    }

    #[test]
    fn hidden_addresses_and_errors() {
        let k = Kallsyms::parse("0000000000000000 T a\n0000000000000000 t b\n").unwrap();
        assert!(k.addresses_hidden);
        assert_eq!(k.len(), 2);
        assert!(Kallsyms::parse("zzzz T a\n").is_err());
        assert!(Kallsyms::parse("ffffffff81000000 T\n").is_err());
        assert!(Kallsyms::parse("ffffffff81000000 TT a\n").is_err());
        let e = Kallsyms::parse("ffffffff81000000 T a\nnot a line at all\n").unwrap_err();
        assert_eq!(e.line, 2);
    }
}
