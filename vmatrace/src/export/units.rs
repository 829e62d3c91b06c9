//! Human units shared by every view of a number (dashboard, text summary), so that a
//! histogram label and the percentile beside it read the same for the same value.

/// Nanoseconds as a human duration: "850ns", "12.3µs", "4.56ms", "1.20s".
pub fn duration_ns(v: u64) -> String {
    match v {
        0..=999 => format!("{v}ns"),
        1_000..=999_999 => format!("{:.1}µs", v as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}ms", v as f64 / 1e6),
        _ => format!("{:.2}s", v as f64 / 1e9),
    }
}

/// Byte size as `/proc/PID/maps` readers think of it: "4K", "704K", "2M", "1G" (rounded
/// down).
pub fn size(bytes: u64) -> String {
    match bytes {
        0..=1023 => format!("{bytes}B"),
        1024..=1_048_575 => format!("{}K", bytes / 1024),
        1_048_576..=1_073_741_823 => format!("{}M", bytes / 1_048_576),
        _ => format!("{}G", bytes / 1_073_741_824),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration_ns(850), "850ns");
        assert_eq!(duration_ns(65_535), "65.5µs");
        assert_eq!(duration_ns(4_560_000), "4.56ms");
        assert_eq!(duration_ns(1_200_000_000), "1.20s");
        assert_eq!(size(704 * 1024), "704K");
        assert_eq!(size(2 << 20), "2M");
    }
}
