//! Privilege checks done before anything is loaded, so a missing capability gives one
//! clear sentence instead of an EPERM deep inside the loader.

use anyhow::bail;

/// Capability numbers from `include/uapi/linux/capability.h`.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Parse the effective capability mask (`CapEff:` line of `/proc/<pid>/status`).
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// What loading and attaching tracing programs needs: `CAP_BPF` + `CAP_PERFMON` (5.8+),
/// or `CAP_SYS_ADMIN`. Returns the missing capabilities' names, empty when all is well.
pub fn missing_capabilities(cap_eff: u64) -> Vec<&'static str> {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Fail with a clear message unless this process may load and attach tracing programs.
pub fn check_privileges() -> anyhow::Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(cap_eff) = parse_cap_eff(&status) else {
        bail!("cannot read the effective capabilities from /proc/self/status (is /proc mounted?)");
    };
    let missing = missing_capabilities(cap_eff);
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    bail!(
        "live tracing needs root, or CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN); this process \
         (euid {euid}) lacks {}. Run as root (sudo) or grant the capabilities \
         (e.g. `setcap cap_bpf,cap_perfmon+ep` on the binary)",
        missing.join(" and ")
    )
}

/// Lift `RLIMIT_MEMLOCK`: kernels before 5.11 charge BPF maps and programs against it, and
/// the default 64 KiB is not enough for the ring buffer. Newer kernels account memory to
/// the cgroup instead, so a failure here is reported by the caller only if the load fails.
pub fn raise_memlock_limit() -> Result<(), String> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads a valid, initialised rlimit struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    if rc == 0 {
        Ok(())
    } else {
        Err(format!(
            "setrlimit(RLIMIT_MEMLOCK, unlimited) failed: {}",
            std::io::Error::last_os_error()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_eff_is_parsed_from_status() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\nCapBnd:\t0\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name:\tx\n"), None);
        assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
    }

    #[test]
    fn capability_requirements() {
        assert!(missing_capabilities(1 << CAP_SYS_ADMIN).is_empty());
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
        assert_eq!(missing_capabilities(1 << CAP_BPF), vec!["CAP_PERFMON"]);
        assert_eq!(missing_capabilities(0), vec!["CAP_BPF", "CAP_PERFMON"]);
    }
}
