//! Which refcount-era generation a kernel is, from its BTF and symbols.
//!
//! Never from the version string: distributions backport (Debian's 6.12 already has the
//! `seqcount_t mm_lock_seq` of 6.15), and what matters is the code actually built.
//!
//! - 7.0+: `struct vma_exclude_readers_state` exists (or its functions do);
//! - 6.19: `__vma_start_write` takes `(vma, mm_lock_seq, state)`, or `__vma_enter_locked`
//!   is out of line with a `state` parameter;
//! - 6.15–6.18: `vm_area_struct.vm_refcnt` exists;
//! - ≤6.14: `vm_lock` (a `struct vma_lock` rwsem) and `detached`: unsupported.

use vmatrace_common::model::Generation;

use super::btf::{Btf, Kind};
use super::info::KernelInfo;
use super::symbols::Resolved;

/// The outcome, with the evidence used (shown in plan notes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detected {
    pub generation: Generation,
    pub evidence: String,
}

/// Why a kernel cannot be planned for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotSupported(pub String);

pub fn detect(info: &KernelInfo) -> Result<Detected, NotSupported> {
    let btf = &info.btf;
    if btf.ids_by_name("vm_area_struct", Kind::Struct).is_empty() {
        return Err(NotSupported(
            "the BTF has no struct vm_area_struct (is this the vmlinux BTF?)".into(),
        ));
    }
    let has = |path: &str| {
        btf.member_offset("vm_area_struct", path)
            .ok()
            .flatten()
            .is_some()
    };
    if !has("vm_refcnt") {
        let reason = if has("vm_lock") || has("detached") {
            "pre-6.15 per-VMA lock: vm_area_struct has vm_lock (a vma_lock rwsem) and no \
             vm_refcnt; vmatrace models the vm_refcnt protocol of 6.15 and later"
        } else if has("vm_lock_seq") {
            "vm_area_struct has vm_lock_seq but no vm_refcnt: an unknown per-VMA lock variant"
        } else {
            "the kernel has no per-VMA locks (CONFIG_PER_VMA_LOCK is off): nothing to trace"
        };
        return Err(NotSupported(reason.into()));
    }
    if btf.has_struct("vma_exclude_readers_state") {
        return Ok(Detected {
            generation: Generation::V7_0,
            evidence: "BTF has struct vma_exclude_readers_state".into(),
        });
    }
    for name in [
        "__vma_start_exclude_readers",
        "__vma_exclude_readers_for_detach",
    ] {
        if !matches!(info.kallsyms.resolve(name), Resolved::Absent)
            || !btf.ids_by_name(name, Kind::Func).is_empty()
        {
            return Ok(Detected {
                generation: Generation::V7_0,
                evidence: format!("{name} exists"),
            });
        }
    }
    if let Some(n) = param_count(btf, "__vma_start_write") {
        if n == 3 {
            return Ok(Detected {
                generation: Generation::V6_19,
                evidence: "__vma_start_write(vma, mm_lock_seq, state) takes 3 parameters".into(),
            });
        }
        if n == 2 && has_param(btf, "__vma_start_write", "mm_lock_seq") {
            return Ok(Detected {
                generation: Generation::V6_15,
                evidence: "vm_area_struct has vm_refcnt; __vma_start_write(vma, mm_lock_seq)"
                    .into(),
            });
        }
    }
    if param_count(btf, "__vma_enter_locked") == Some(3) {
        return Ok(Detected {
            generation: Generation::V6_19,
            evidence: "__vma_enter_locked(vma, detaching, state) is out of line".into(),
        });
    }
    Ok(Detected {
        generation: Generation::V6_15,
        evidence: "vm_area_struct has vm_refcnt, no 6.19/7.0 markers".into(),
    })
}

fn param_count(btf: &Btf, func: &str) -> Option<usize> {
    btf.functions(func)
        .ok()
        .and_then(|f| f.first().map(|f| f.params.len()))
}

fn has_param(btf: &Btf, func: &str, param: &str) -> bool {
    btf.functions(func)
        .ok()
        .and_then(|f| f.first().map(|f| f.params.iter().any(|p| p.name == param)))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::super::btf::builder::Builder;
    use super::super::symbols::Kallsyms;
    use super::*;

    fn info(btf: Vec<u8>, kallsyms: &str) -> KernelInfo {
        KernelInfo {
            release: "test".into(),
            btf: Btf::parse(&btf).unwrap(),
            kallsyms: Kallsyms::parse(kallsyms).unwrap(),
            filter_functions: None,
            kprobe_blacklist: None,
            mmap_lock_tracepoints: None,
            config: None,
            preemption: crate::kernel::preempt::detect(Default::default()),
            remarks: Vec::new(),
        }
    }

    /// A `vm_area_struct` with the given members (all `unsigned int`), plus functions.
    fn kernel(members: &[&str], funcs: &[(&str, &[&str])]) -> Vec<u8> {
        let mut b = Builder::new();
        let uint = b.int("unsigned int", 4);
        let m: Vec<(&str, u32, u32, u32)> = members
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, uint, 32 * i as u32, 0))
            .collect();
        let vma = b.composite(false, "vm_area_struct", 4 * m.len() as u32, &m);
        let vmap = b.ptr(vma);
        for (name, params) in funcs {
            let p: Vec<(&str, u32)> = params.iter().map(|n| (*n, vmap)).collect();
            b.func(name, uint, &p);
        }
        b.build()
    }

    #[test]
    fn generations_from_btf_and_symbols() {
        let g = |members: &[&str], funcs: &[(&str, &[&str])], syms: &str| {
            detect(&info(kernel(members, funcs), syms)).map(|d| d.generation)
        };
        let refcnt: &[&str] = &["vm_refcnt", "vm_lock_seq"];
        assert_eq!(
            g(
                refcnt,
                &[("__vma_start_write", &["vma", "mm_lock_seq"])],
                ""
            ),
            Ok(Generation::V6_15)
        );
        assert_eq!(
            g(
                refcnt,
                &[("__vma_start_write", &["vma", "mm_lock_seq", "state"])],
                ""
            ),
            Ok(Generation::V6_19)
        );
        // __vma_start_write missing from BTF, but the 6.19 helper is out of line.
        assert_eq!(
            g(
                refcnt,
                &[("__vma_enter_locked", &["vma", "detaching", "state"])],
                ""
            ),
            Ok(Generation::V6_19)
        );
        // A 7.x symbol in kallsyms is enough even without the struct in BTF.
        assert_eq!(
            g(
                refcnt,
                &[],
                "ffffffff81000000 T __vma_exclude_readers_for_detach\n"
            ),
            Ok(Generation::V7_0)
        );
        let unsupported = |members: &[&str]| match g(members, &[], "") {
            Err(NotSupported(r)) => r,
            Ok(g) => panic!("{g:?}"),
        };
        assert!(unsupported(&["vm_lock", "detached", "vm_lock_seq"]).contains("pre-6.15"));
        assert!(unsupported(&["vm_lock_seq"]).contains("unknown per-VMA lock variant"));
        assert!(unsupported(&["vm_start"]).contains("CONFIG_PER_VMA_LOCK is off"));
        let mut b = Builder::new();
        b.int("int", 4);
        assert!(
            detect(&info(b.build(), ""))
                .unwrap_err()
                .0
                .contains("no struct vm_area_struct")
        );
    }
}
