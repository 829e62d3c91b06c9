//! Number and text formatting shared by the screens: short, fixed-width-friendly forms.

use vmatrace_common::model::Generation;

use crate::export::printable;
use crate::stats::aggregates::comm_to_string;

/// Text from the trace or the session (kernel release, plan notes, log lines) with its
/// control characters spelled out. ratatui drops them silently, which would leave the
/// rest of an escape sequence (`]0;title`) looking like part of the name.
pub fn text(s: &str) -> String {
    printable(s).into_owned()
}

/// A task's `comm`, as [`text`].
pub fn comm(c: &[u8; 16]) -> String {
    text(&comm_to_string(c))
}

/// A process: "comm[tgid]".
pub fn process(tgid: u32, c: &[u8; 16]) -> String {
    format!("{}[{tgid}]", comm(c))
}

/// 1234 → "1234", 12345 → "12.3k", 1234567 → "1.23M".
pub fn count(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=999_999 => format!("{:.1}k", n as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}M", n as f64 / 1e6),
        _ => format!("{:.2}G", n as f64 / 1e9),
    }
}

/// A rate per second, short.
pub fn rate(r: f64) -> String {
    if r <= 0.0 {
        "0".into()
    } else if r < 10.0 {
        format!("{r:.1}")
    } else {
        count(r.round() as u64)
    }
}

/// Nanoseconds as a human duration: "850ns", "12.3µs", "4.56ms", "1.20s" (the text
/// summary's units too).
pub fn ns(v: u64) -> String {
    crate::export::units::duration_ns(v)
}

/// Seconds since the first event: "+12.345s".
pub fn rel_time(ns: u64) -> String {
    format!("+{}.{:03}s", ns / 1_000_000_000, (ns / 1_000_000) % 1000)
}

/// hh:mm:ss
pub fn hms(secs: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// A VMA range as the user sees it in /proc/PID/maps, shortened to start + size.
pub fn vma_range(start: u64, end: u64) -> String {
    format!("{start:x} {}", size(end.saturating_sub(start)))
}

/// Byte size: "4K", "704K", "2M", "1G" (rounded down).
pub fn size(bytes: u64) -> String {
    crate::export::units::size(bytes)
}

/// `vm_refcnt` with the exclusion flag spelled out: "3", "F+1", "F".
pub fn refcnt(v: u32, generation: Generation) -> String {
    let flag = generation.exclude_readers_flag();
    if v & flag != 0 {
        let rest = v & !flag;
        if rest == 0 {
            "F".into()
        } else {
            format!("F+{rest}")
        }
    } else {
        v.to_string()
    }
}

/// Sparkline as text, one cell per value, scaled to the largest value shown.
pub fn sparkline(values: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let values = &values[values.len().saturating_sub(width)..];
    let max = values.iter().copied().max().unwrap_or(0);
    let mut s: String = std::iter::repeat_n(' ', width - values.len()).collect();
    for v in values {
        s.push(if max == 0 || *v == 0 {
            if max == 0 { ' ' } else { '▁' }
        } else {
            BARS[((v * 7).div_ceil(max)).min(7) as usize]
        });
    }
    s
}

/// Cut `s` to `width` characters, marking the cut with '…'.
pub fn clip(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else if width == 0 {
        String::new()
    } else {
        let mut out: String = s.chars().take(width - 1).collect();
        out.push('…');
        out
    }
}

/// Cut `s` to `width` characters keeping its end, marking the cut with '…'.
pub fn clip_start(s: &str, width: usize) -> String {
    let n = s.chars().count();
    if n <= width {
        s.to_string()
    } else if width == 0 {
        String::new()
    } else {
        std::iter::once('…')
            .chain(s.chars().skip(n - (width - 1)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(count(999), "999");
        assert_eq!(count(12_345), "12.3k");
        assert_eq!(count(1_234_567), "1.23M");
        assert_eq!(ns(850), "850ns");
        assert_eq!(ns(12_300), "12.3µs");
        assert_eq!(ns(4_560_000), "4.56ms");
        assert_eq!(ns(1_200_000_000), "1.20s");
        assert_eq!(rel_time(12_345_678_901), "+12.345s");
        assert_eq!(hms(3723), "01:02:03");
        assert_eq!(
            vma_range(0x7f00_0000_0000, 0x7f00_0020_0000),
            "7f0000000000 2M"
        );
        assert_eq!(refcnt(3, Generation::V7_0), "3");
        assert_eq!(refcnt((1 << 30) + 1, Generation::V7_0), "F+1");
        assert_eq!(refcnt(1 << 30, Generation::V6_19), "F");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip_start("/usr/bin/postgres", 10), "…/postgres");
    }

    #[test]
    fn sparkline_scales_to_max() {
        assert_eq!(sparkline(&[0, 1, 2, 4, 8], 5), "▁▂▃▅█");
        assert_eq!(sparkline(&[5], 3), "  █");
        assert_eq!(sparkline(&[], 2), "  ");
        assert_eq!(sparkline(&[0, 0], 2), "  ");
        assert_eq!(sparkline(&[1, 2, 3], 2).chars().count(), 2);
    }
}
