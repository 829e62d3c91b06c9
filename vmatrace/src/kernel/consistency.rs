//! Whether an offline plan's inputs describe one kernel.
//!
//! `vmatrace probes --btf B --kallsyms K [--release R]` takes files an operator gathered,
//! possibly from different machines. A mismatched pair still plans: a missing function
//! reads as "inlined", and the plan is wrong without a word. So before planning:
//!
//! - the kallsyms dump must have text symbols at all;
//! - the BTF's generation and the symbol names must agree: a 7.0+ BTF (it has
//!   `struct vma_exclude_readers_state`) goes with `__vma_start_exclude_readers` /
//!   `__vma_exclude_readers_for_detach`, an older one with neither;
//! - every per-VMA lock function the BTF declares as a `FUNC` (pahole emits one only for
//!   a function with an out-of-line copy) must be in kallsyms, whole or as a fragment;
//! - a release string (`--release`) of 7.0 or later cannot go with an older BTF (a
//!   distribution may backport the 7.0 rework into an older release, not the other way).

use vmatrace_common::event::ProbeId;

use super::btf::{Btf, Kind};
use super::info::KernelInfo;
use super::symbols::Kallsyms;

/// The names 7.0 gave the exclusion functions.
const NAMES_7_0: &[&str] = &[
    "__vma_start_exclude_readers",
    "__vma_exclude_readers_for_detach",
];
/// 6.19's out-of-line start-exclude, renamed in 7.0.
const NAME_6_19: &str = "__vma_enter_locked";

/// The kernel functions the planner looks up (the attach points that are functions).
const FAMILY: &[ProbeId] = &[
    ProbeId::VmaStartWrite,
    ProbeId::VmaStartExcludeReaders,
    ProbeId::VmaEnterLocked,
    ProbeId::VmaMarkDetached,
    ProbeId::VmaExcludeReadersForDetach,
    ProbeId::LockVmaUnderRcu,
    ProbeId::LockNextVma,
    ProbeId::VmaRefcountPut,
    ProbeId::RcuwaitWakeUp,
    ProbeId::VmAreaAlloc,
    ProbeId::VmAreaDup,
    ProbeId::VmAreaFree,
];

/// Which side of the 7.0 rework the BTF is on, when it says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Era {
    /// `struct vma_exclude_readers_state` or a 7.0 function.
    V7,
    /// A refcount-era `__vma_start_write` and none of the 7.0 types and functions.
    Before7,
}

fn btf_era(btf: &Btf) -> Option<Era> {
    let func = |n: &str| !btf.ids_by_name(n, Kind::Func).is_empty();
    if btf.has_struct("vma_exclude_readers_state") || NAMES_7_0.iter().any(|n| func(n)) {
        Some(Era::V7)
    } else if func("__vma_start_write") {
        Some(Era::Before7)
    } else {
        None
    }
}

/// In kallsyms at all: whole, a clone, or a fragment.
fn present(k: &Kallsyms, name: &str) -> bool {
    !k.entries(name).is_empty() || k.has_fragment(name)
}

/// `7.3.4+deb13-cloud-amd64` → (7, 3).
fn version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

const DIFFERENT: &str = "the BTF and the kallsyms dump are from different kernels";

fn check_era(info: &KernelInfo) -> Result<(), String> {
    let k = &info.kallsyms;
    let has_7 = NAMES_7_0.iter().any(|n| present(k, n));
    match btf_era(&info.btf) {
        Some(Era::V7) if !has_7 => Err(format!(
            "{DIFFERENT}: the BTF is a 7.0+ kernel's (struct vma_exclude_readers_state), \
             the kallsyms has none of its {}{}",
            NAMES_7_0.join(", "),
            if present(k, NAME_6_19) {
                format!(" but 6.19's {NAME_6_19}")
            } else {
                String::new()
            }
        )),
        Some(Era::Before7) if has_7 => Err(format!(
            "{DIFFERENT}: the BTF is a kernel's from before 7.0 (no struct \
             vma_exclude_readers_state), the kallsyms has 7.0's {}",
            NAMES_7_0
                .iter()
                .filter(|n| present(k, n))
                .copied()
                .collect::<Vec<_>>()
                .join(", ")
        )),
        _ => Ok(()),
    }
}

fn check_functions(info: &KernelInfo) -> Result<(), String> {
    let missing: Vec<&str> = FAMILY
        .iter()
        .map(|p| p.kernel_name())
        .filter(|n| !info.btf.ids_by_name(n, Kind::Func).is_empty())
        .filter(|n| !present(&info.kallsyms, n))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the kallsyms dump lacks {} the BTF declares out of line ({}): a truncated or \
         filtered dump, or {DIFFERENT}",
        if missing.len() == 1 {
            "a function"
        } else {
            "functions"
        },
        missing.join(", ")
    ))
}

fn check_release(info: &KernelInfo) -> Result<(), String> {
    let Some((major, minor)) = version(&info.release) else {
        return Ok(());
    };
    if major >= 7 && btf_era(&info.btf) == Some(Era::Before7) {
        return Err(format!(
            "the BTF is a kernel's from before 7.0 (no struct vma_exclude_readers_state), \
             the release is {} ({major}.{minor}): they are from different kernels",
            info.release
        ));
    }
    Ok(())
}

/// Refuse inputs that cannot be one kernel's, saying why.
pub fn check(info: &KernelInfo) -> Result<(), String> {
    if info.kallsyms.is_empty() {
        return Err("the kallsyms dump has no text symbols: empty, or not /proc/kallsyms".into());
    }
    check_era(info)?;
    check_functions(info)?;
    check_release(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_versions() {
        assert_eq!(version("7.3.4+deb13-cloud-amd64"), Some((7, 3)));
        assert_eq!(version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(version("offline"), None);
        assert_eq!(version(""), None);
    }
}
