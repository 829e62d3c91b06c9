//! `vmatrace stress --widen-race-us` on the machine the tests run on: it installs its
//! kprobes where the kernel allows them, and otherwise fails with a message that names the
//! missing piece (this build host has no kprobe PMU). The QEMU matrix's `race` step runs
//! the installing path on every Debian kernel.

mod common;

use std::path::Path;

use common::*;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

const KPROBE_PMU: &str = "/sys/bus/event_source/devices/kprobe/type";

#[test]
fn widen_race_installs_or_names_what_is_missing() {
    let out = run(&[
        "stress",
        "--duration",
        "0.3",
        "--readers",
        "1",
        "--writers",
        "1",
        "--widen-race-us",
        "5",
        "--json",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    if is_root() && Path::new(KPROBE_PMU).exists() {
        assert!(out.status.success(), "{err}");
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        let probes = j["race_widener"]["probes"].as_array().expect("probes");
        assert!(!probes.is_empty(), "{j}");
        for p in probes {
            assert!(
                p.as_str()
                    .is_some_and(|p| p.starts_with("lock_vma_under_rcu+0x")),
                "{p}"
            );
        }
        assert_eq!(j["race_widener"]["delay_us"], 5);
    } else {
        println!(
            "widener cannot install here (root: {}, {KPROBE_PMU}: {}): checking the error",
            is_root(),
            Path::new(KPROBE_PMU).exists()
        );
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(out.stdout.is_empty());
        let named = [
            "no kprobe PMU",
            "/proc/kcore",
            "/proc/kallsyms",
            "kptr_restrict",
            "race-widener program",
        ];
        assert!(
            named.iter().any(|n| err.contains(n)),
            "the error should name what is missing: {err}"
        );
    }
}

#[test]
fn widen_race_delay_is_bounded() {
    for bad in ["0", "1001", "x"] {
        let out = run(&["stress", "--widen-race-us", bad, "--duration", "0"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {err}");
        assert!(err.contains("--widen-race-us"), "{err}");
    }
}

/// The instruction matcher against the running kernel's own `lock_vma_under_rcu`: the
/// Debian builds of the matrix compile the increment differently (`0x80(%rbx)` or
/// `0x0(%rbp)` after a `lea`), so a kernel-independent unit test is not enough.
#[test]
fn the_refcount_increment_is_found_in_this_kernel() {
    const NAME: &str = "the_refcount_increment_is_found_in_this_kernel";
    let why = if !is_root() {
        Some("needs root to read /proc/kcore")
    } else if !Path::new("/proc/kcore").exists() {
        Some("this kernel has no /proc/kcore (CONFIG_PROC_KCORE off)")
    } else {
        None
    };
    if let Some(why) = why {
        vmatrace::testing::skip(
            NAME,
            &format!("{why}; the VM matrix's race step finds the sites on every Debian kernel"),
        );
        return;
    }
    let sites = vmatrace::lab::stress::race::find_sites().expect("sites in this kernel");
    assert!(!sites.is_empty());
    for s in &sites {
        assert!(s.next > s.cmpxchg && s.next - s.cmpxchg <= 10, "{s:?}");
    }
}
