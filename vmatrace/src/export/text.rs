//! Text from a trace on a terminal.
//!
//! A trace's header and events carry strings the tracer did not write: the kernel
//! release and host name of the recording machine, every task's `comm` (which any process
//! sets with `prctl(PR_SET_NAME)`), the plan's notes. Printed raw, a control sequence in
//! one of them (`ESC ] 0 ; … BEL` retitles the terminal, `ESC [ 2 J` clears it, and the
//! single-byte CSI U+009B does the same on terminals that honour C1) acts on the reader's
//! terminal. [`printable`] spells those characters out instead.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` with every control character (C0, DEL, C1: what `char::is_control` says, ESC and
/// U+009B among them) written as a `\x1b`-style escape; unchanged (borrowed) when it has
/// none, which is nearly always.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Like [`printable`], but line breaks stay: for messages of several lines (an error
/// with its advice) that quote trace text.
pub fn printable_lines(s: &str) -> String {
    s.split('\n').map(printable).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_spelled_out() {
        assert_eq!(
            printable("7.2\x1b]0;pwned\x07\x1b[2J"),
            "7.2\\x1b]0;pwned\\x07\\x1b[2J"
        );
        assert_eq!(printable("a\u{9b}2Jb"), "a\\x9b2Jb");
        assert_eq!(
            printable("tab\there\nDEL\x7f\0"),
            "tab\\x09here\\x0aDEL\\x7f\\x00"
        );
    }

    #[test]
    fn line_breaks_can_stay() {
        assert_eq!(printable_lines("a\x1b[2J\nb\tc"), "a\\x1b[2J\nb\\x09c");
    }

    #[test]
    fn ordinary_text_is_borrowed_unchanged() {
        for s in ["7.2.13+deb14-cloud-amd64", "kworker/u8:2", "ünïcødé ✓", ""] {
            assert!(matches!(printable(s), Cow::Borrowed(b) if b == s));
        }
    }
}
