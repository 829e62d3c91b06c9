//! Clocks and host identity for exported records.

use crate::trace::ClockBase;

fn clock_ns(id: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; clock_gettime only writes it.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nsec = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns()`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

pub fn realtime_ns() -> u64 {
    clock_ns(libc::CLOCK_REALTIME)
}

/// Read both clocks as close together as possible: the realtime read sits between two
/// monotonic reads and is paired with their midpoint.
pub fn clock_base_now() -> ClockBase {
    let m1 = monotonic_ns();
    let rt = realtime_ns();
    let m2 = monotonic_ns();
    ClockBase {
        monotonic_ns: m1 + (m2.saturating_sub(m1)) / 2,
        realtime_ns: rt,
    }
}

/// The viewer's time zone, for times of day on a screen or in a text summary: an
/// operator compares them with the wall clock on the wall, not with UTC.
///
/// Taken once (at the start of a session): a DST change during a session shifts the
/// displayed times by an hour, which the label (`CET`/`CEST`) would then misstate; a
/// session spanning that is rare enough not to pay a `localtime_r` per cell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalZone {
    /// Seconds east of UTC.
    pub offset_s: i64,
    /// Abbreviation (`UTC`, `CET`, ...).
    pub name: String,
}

impl LocalZone {
    pub fn utc() -> Self {
        Self {
            offset_s: 0,
            name: "UTC".into(),
        }
    }

    /// The zone of this process (`TZ`, `/etc/localtime`) at `realtime_ns`; UTC if the C
    /// library cannot say.
    pub fn local_at(realtime_ns: u64) -> Self {
        let t = libc::time_t::try_from(realtime_ns / 1_000_000_000).unwrap_or(0);
        // SAFETY: `tm` is plain data (all-zero valid); localtime_r only writes it.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers to a time_t and a tm.
        if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
            return Self::utc();
        }
        let name = if tm.tm_zone.is_null() {
            String::new()
        } else {
            // SAFETY: tm_zone points to a NUL-terminated static string of the C library.
            unsafe { std::ffi::CStr::from_ptr(tm.tm_zone) }
                .to_string_lossy()
                .into_owned()
        };
        Self {
            offset_s: tm.tm_gmtoff,
            name: if name.is_empty() { "UTC".into() } else { name },
        }
    }

    /// `hh:mm:ss` of `realtime_ns` in this zone.
    pub fn hms(&self, realtime_ns: u64) -> String {
        let s = self.seconds_of_day(realtime_ns);
        format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }

    /// `hh:mm:ss.mmm` of `realtime_ns` in this zone.
    pub fn hms_millis(&self, realtime_ns: u64) -> String {
        format!(
            "{}.{:03}",
            self.hms(realtime_ns),
            realtime_ns / 1_000_000 % 1000
        )
    }

    /// `yyyy-mm-dd hh:mm:ss.mmm ZONE`.
    pub fn date_time(&self, realtime_ns: u64) -> String {
        let local = i128::from(realtime_ns) + i128::from(self.offset_s) * 1_000_000_000;
        let local = u64::try_from(local.max(0)).unwrap_or(0);
        let date = &rfc3339(local)[..10];
        format!("{date} {} {}", self.hms_millis(realtime_ns), self.name)
    }

    fn seconds_of_day(&self, realtime_ns: u64) -> i64 {
        let secs = i64::try_from(realtime_ns / 1_000_000_000).unwrap_or(i64::MAX);
        secs.saturating_add(self.offset_s).rem_euclid(86_400)
    }
}

/// `uname -n`, or "unknown".
pub fn hostname() -> String {
    uname_field(|u| &u.nodename)
}

/// `uname -r`, or "unknown".
pub fn kernel_release() -> String {
    uname_field(|u| &u.release)
}

fn uname_field(f: impl Fn(&libc::utsname) -> &[libc::c_char; 65]) -> String {
    // SAFETY: utsname is plain data; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid out-pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".to_string();
    }
    let field = f(&u);
    let bytes: Vec<u8> = field
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// RFC 3339 UTC with nanoseconds, e.g. `2026-11-28T19:46:26.123456789Z`.
pub fn rfc3339(realtime_ns: u64) -> String {
    let secs = realtime_ns / 1_000_000_000;
    let nanos = realtime_ns % 1_000_000_000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000000000Z");
        // 2000-02-29 (leap day) 12:34:56.000000007
        assert_eq!(
            rfc3339(951_827_696_000_000_007),
            "2000-02-29T12:34:56.000000007Z"
        );
        assert_eq!(
            rfc3339(1_798_761_600_000_000_000),
            "2027-01-01T00:00:00.000000000Z"
        );
    }

    #[test]
    fn times_of_day_in_a_zone() {
        // 2027-01-01T00:00:00.250Z
        let t = 1_798_761_600_250_000_000;
        let utc = LocalZone::utc();
        assert_eq!(utc.hms(t), "00:00:00");
        assert_eq!(utc.hms_millis(t), "00:00:00.250");
        assert_eq!(utc.date_time(t), "2027-01-01 00:00:00.250 UTC");
        let ny = LocalZone {
            offset_s: -5 * 3600,
            name: "EST".into(),
        };
        assert_eq!(ny.hms(t), "19:00:00");
        assert_eq!(ny.date_time(t), "2026-12-31 19:00:00.250 EST");
        assert!(!LocalZone::local_at(t).name.is_empty());
    }

    #[test]
    fn clock_base_pairs_clocks() {
        let b = clock_base_now();
        assert!(b.monotonic_ns > 0);
        // Realtime is after 2020 on any machine running these tests.
        assert!(b.realtime_ns > 1_577_836_800_000_000_000);
        let later = b.realtime_of(b.monotonic_ns + 5);
        assert_eq!(later, b.realtime_ns + 5);
        assert_eq!(b.realtime_of(b.monotonic_ns - 5), b.realtime_ns - 5);
    }
}
