//! Kernel addresses to `function+0xoffset`, for the stacks of slow waits.
//!
//! Built from `/proc/kallsyms` text (every text symbol, modules included) at the start of
//! a live session; a stack is symbolized once, when its id is first seen, and only the
//! names leave the process: an address with no symbol is shown as `?`, never as the
//! address itself (`docs/summary.md`: no raw kernel addresses unless asked).

/// Text symbols sorted by address.
#[derive(Clone, Debug, Default)]
pub struct SymbolIndex {
    /// `(address, name)`, name with `[module]` appended for module symbols.
    syms: Vec<(u64, String)>,
}

/// The longest distance from a symbol's start that is still taken as inside it: past
/// the last symbol of a region an address belongs to nothing we know.
const MAX_FUNCTION_BYTES: u64 = 1 << 20;

impl SymbolIndex {
    /// From kallsyms text. Lines that do not parse are skipped (the planner reports a
    /// malformed kallsyms; a stack with a `?` frame is the only cost here). All-zero
    /// addresses (`kptr_restrict`) give an empty index.
    pub fn parse(text: &str) -> SymbolIndex {
        let mut syms = Vec::new();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(addr), Some(kind), Some(name)) = (it.next(), it.next(), it.next()) else {
                continue;
            };
            if !matches!(kind, "t" | "T" | "w" | "W") {
                continue;
            }
            let Ok(addr) = u64::from_str_radix(addr, 16) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            let name = match it.next() {
                Some(m) => format!("{name} {m}"),
                None => name.to_string(),
            };
            syms.push((addr, name));
        }
        syms.sort_unstable_by_key(|s| s.0);
        SymbolIndex { syms }
    }

    /// `/proc/kallsyms` of the running kernel (bounded read); empty when unreadable.
    pub fn running() -> SymbolIndex {
        crate::kernel::input::read_capped(
            std::path::Path::new("/proc/kallsyms"),
            crate::kernel::input::KALLSYMS,
        )
        .map(|b| SymbolIndex::parse(&String::from_utf8_lossy(&b)))
        .unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// `name+0xoff`, or `?` when the address is in no known function.
    pub fn symbolize(&self, addr: u64) -> String {
        let i = self.syms.partition_point(|s| s.0 <= addr);
        if i == 0 {
            return "?".into();
        }
        let (start, name) = &self.syms[i - 1];
        let off = addr - start;
        if off > MAX_FUNCTION_BYTES {
            return "?".into();
        }
        // `name [module]+0x..` reads badly: the offset goes with the function.
        match name.split_once(' ') {
            Some((f, m)) => format!("{f}+{off:#x} {m}"),
            None => format!("{name}+{off:#x}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
ffffffff81000000 T _stext
ffffffff81234500 T __vma_start_write
ffffffff81234600 t mprotect_fixup
ffffffff81234800 D some_data
ffffffffc0001000 t helper\t[virtio_net]
";

    #[test]
    fn symbolizes_inside_functions_and_hides_unknown_addresses() {
        let s = SymbolIndex::parse(TEXT);
        assert_eq!(s.symbolize(0xffff_ffff_8123_4512), "__vma_start_write+0x12");
        assert_eq!(s.symbolize(0xffff_ffff_8123_4600), "mprotect_fixup+0x0");
        // Data symbols are not functions: the address stays in mprotect_fixup.
        assert_eq!(s.symbolize(0xffff_ffff_8123_4810), "mprotect_fixup+0x210");
        assert_eq!(
            s.symbolize(0xffff_ffff_c000_1004),
            "helper+0x4 [virtio_net]"
        );
        assert_eq!(
            s.symbolize(0xffff_ffff_8000_0000),
            "?",
            "below every symbol"
        );
        assert_eq!(
            s.symbolize(0xffff_ffff_c100_0000),
            "?",
            "far past the last one"
        );
    }

    #[test]
    fn hidden_addresses_give_an_empty_index() {
        let s = SymbolIndex::parse("0000000000000000 T __vma_start_write\n");
        assert!(s.is_empty());
        assert_eq!(s.symbolize(0xffff_ffff_8123_4512), "?");
    }
}
