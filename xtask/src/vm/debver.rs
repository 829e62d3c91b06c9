//! Debian version ordering (deb-version(7)), to pick the newest kernel build from the
//! index: `7.3~rc7-1~exp1` < `7.3.4-1~bpo13+1` < `7.3.4-1`.

use std::cmp::Ordering;

/// Compare two Debian versions `[epoch:]upstream[-revision]`.
pub fn compare(a: &str, b: &str) -> Ordering {
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

fn split(v: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match v.split_once(':') {
        Some((e, r)) if e.bytes().all(|c| c.is_ascii_digit()) => (e.parse().unwrap_or(0), r),
        _ => (0, v),
    };
    match rest.rsplit_once('-') {
        Some((u, r)) => (epoch, u, r),
        None => (epoch, rest, ""),
    }
}

/// Sort weight of one non-digit character: `~` before everything (even the end of the
/// string), then the end, letters, and other characters.
fn weight(c: Option<u8>) -> i32 {
    match c {
        Some(b'~') => -1,
        None => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn compare_part(mut a: &str, mut b: &str) -> Ordering {
    while !a.is_empty() || !b.is_empty() {
        // Non-digit prefixes, character by character.
        let na = a.bytes().take_while(|c| !c.is_ascii_digit()).count();
        let nb = b.bytes().take_while(|c| !c.is_ascii_digit()).count();
        let (pa, pb) = (&a.as_bytes()[..na], &b.as_bytes()[..nb]);
        for i in 0..na.max(nb) {
            let o = weight(pa.get(i).copied()).cmp(&weight(pb.get(i).copied()));
            if o != Ordering::Equal {
                return o;
            }
        }
        a = &a[na..];
        b = &b[nb..];
        // Numeric prefixes, as numbers (leading zeros do not matter).
        let da = a.bytes().take_while(u8::is_ascii_digit).count();
        let db = b.bytes().take_while(u8::is_ascii_digit).count();
        let (xa, xb) = (
            a[..da].trim_start_matches('0'),
            b[..db].trim_start_matches('0'),
        );
        let o = xa.len().cmp(&xb.len()).then_with(|| xa.cmp(xb));
        if o != Ordering::Equal {
            return o;
        }
        a = &a[da..];
        b = &b[db..];
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use std::cmp::Ordering::{Equal, Greater, Less};

    use super::compare;

    #[test]
    fn debian_ordering() {
        assert_eq!(compare("7.3~rc7-1~exp1", "7.3.4-1~bpo13+1"), Less);
        assert_eq!(compare("7.3.4-1~bpo13+1", "7.3.4-1"), Less);
        assert_eq!(compare("7.3.4-1", "7.2.13-1"), Greater);
        assert_eq!(compare("6.19.14-1~bpo13+1", "6.19.6-1~bpo13+1"), Greater);
        assert_eq!(compare("1:1.0", "2.0"), Greater);
        assert_eq!(compare("1.0", "1.0"), Equal);
        assert_eq!(compare("1.0a", "1.0"), Greater);
        assert_eq!(compare("1.0~", "1.0"), Less);
        assert_eq!(compare("1.0+x", "1.0a"), Greater);
        assert_eq!(compare("1.010", "1.9"), Greater);
        assert_eq!(compare("1.0-1", "1.0-1.1"), Less);
    }
}
