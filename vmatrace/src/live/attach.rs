//! Load (on first use) and attach the program named by one point of the plan.

use anyhow::{Context, anyhow, bail};
use aya::{
    Btf, Ebpf,
    programs::{
        FEntry, FExit, KProbe, Program, ProgramError, TracePoint, fentry::FEntryLink,
        fexit::FExitLink, kprobe::KProbeLink, trace_point::TracePointLink,
    },
};

use crate::kernel::plan::{AttachMode, AttachPoint};

/// A link this session owns; dropping it detaches the program from that point.
pub(super) enum OwnedLink {
    KProbe(#[expect(dead_code, reason = "held only to keep the probe attached")] KProbeLink),
    FEntry(#[expect(dead_code, reason = "held only to keep the probe attached")] FEntryLink),
    FExit(#[expect(dead_code, reason = "held only to keep the probe attached")] FExitLink),
    TracePoint(
        #[expect(dead_code, reason = "held only to keep the probe attached")] TracePointLink,
    ),
}

/// The verifier log can be thousands of lines; an operator needs the error and the
/// last instructions before the rejection.
const VERIFIER_TAIL_LINES: usize = 40;

/// Render an error with its whole cause chain (aya's `SyscallError` shows the errno only
/// in its source), shortening an embedded verifier log to its tail.
pub(super) fn error_chain(e: &anyhow::Error) -> String {
    let full = format!("{e:#}");
    let lines: Vec<&str> = full.lines().collect();
    if lines.len() <= VERIFIER_TAIL_LINES + 1 {
        return full;
    }
    let skipped = lines.len() - 1 - VERIFIER_TAIL_LINES;
    let mut out = String::from(lines[0]);
    out.push_str(&format!("\n[... {skipped} verifier log lines omitted ...]"));
    for l in &lines[lines.len() - VERIFIER_TAIL_LINES..] {
        out.push('\n');
        out.push_str(l);
    }
    out
}

/// What an attach errno means for a kprobe or fentry (from the kernel's kprobe
/// and trampoline code). `None` for errnos without a specific meaning here.
pub(super) fn errno_hint(errno: i32, mode: AttachMode) -> Option<&'static str> {
    let kprobe = matches!(mode, AttachMode::KProbe | AttachMode::KRetProbe);
    Some(match errno {
        libc::ENOENT if kprobe => "no such symbol in kallsyms (inlined, or a module not loaded)",
        libc::EINVAL if kprobe => {
            "the kernel refuses to probe this function (notrace, kprobe blacklist, or kretprobe blacklist)"
        }
        libc::EADDRNOTAVAIL => {
            "the name is ambiguous (several kallsyms entries); kprobes by name cannot choose one"
        }
        libc::EILSEQ => "the probe offset is not on an instruction boundary",
        libc::EPERM | libc::EACCES => {
            "not permitted: missing CAP_BPF/CAP_PERFMON, lockdown, or this kernel refuses tracing programs"
        }
        libc::EBUSY => "another trampoline or ftrace user holds this function exclusively",
        _ => return None,
    })
}

/// The errno of the innermost `std::io::Error` in an error chain.
pub(super) fn errno_of(e: &anyhow::Error) -> Option<i32> {
    e.chain()
        .filter_map(|c| c.downcast_ref::<std::io::Error>())
        .filter_map(std::io::Error::raw_os_error)
        .last()
}

fn mode_of(program: &Program) -> Option<AttachMode> {
    Some(match program {
        Program::KProbe(p) => match p.kind() {
            aya::programs::ProbeKind::Entry => AttachMode::KProbe,
            aya::programs::ProbeKind::Return => AttachMode::KRetProbe,
        },
        Program::FEntry(_) => AttachMode::FEntry,
        Program::FExit(_) => AttachMode::FExit,
        Program::TracePoint(_) => AttachMode::Tracepoint,
        _ => return None,
    })
}

fn not_yet_loaded(fd: Result<impl Sized, ProgramError>) -> bool {
    matches!(fd, Err(ProgramError::NotLoaded))
}

/// Load the program named by `point` if it is not loaded yet, then attach it.
pub(super) fn attach_point(
    ebpf: &mut Ebpf,
    point: &AttachPoint,
    btf: Option<&Btf>,
) -> anyhow::Result<OwnedLink> {
    let name = point.program.as_str();
    let target = point.target.as_str();
    let program = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("the eBPF object has no program `{name}`"))?;
    let found = mode_of(program);
    if found != Some(point.mode) {
        bail!(
            "program `{name}` is a {} program, the plan wants {}",
            found.map(AttachMode::key).unwrap_or("different kind of"),
            point.mode.key()
        );
    }
    Ok(match point.mode {
        AttachMode::KProbe | AttachMode::KRetProbe => {
            let p: &mut KProbe = program.try_into()?;
            if not_yet_loaded(p.fd()) {
                p.load()
                    .with_context(|| format!("loading {name} (verifier)"))?;
            }
            let id = p.attach(target, 0).map_err(|e| {
                let e = anyhow::Error::new(e);
                let hint = errno_of(&e).and_then(|n| errno_hint(n, point.mode));
                let what = format!("attaching {name} to {} {target}", point.mode.key());
                match hint {
                    Some(h) => e.context(format!("{what} ({h})")),
                    None => e.context(what),
                }
            })?;
            OwnedLink::KProbe(p.take_link(id)?)
        }
        AttachMode::FEntry => {
            let btf = btf.context("fentry needs the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
            let p: &mut FEntry = program.try_into()?;
            if !not_yet_loaded(p.fd()) {
                bail!("fentry program `{name}` is already loaded for another function");
            }
            p.load(target, btf)
                .with_context(|| format!("loading {name} for fentry {target}"))?;
            let id = p
                .attach()
                .with_context(|| format!("attaching {name} to fentry {target}"))?;
            OwnedLink::FEntry(p.take_link(id)?)
        }
        AttachMode::FExit => {
            let btf = btf.context("fexit needs the kernel's BTF (/sys/kernel/btf/vmlinux)")?;
            let p: &mut FExit = program.try_into()?;
            if !not_yet_loaded(p.fd()) {
                bail!("fexit program `{name}` is already loaded for another function");
            }
            p.load(target, btf)
                .with_context(|| format!("loading {name} for fexit {target}"))?;
            let id = p
                .attach()
                .with_context(|| format!("attaching {name} to fexit {target}"))?;
            OwnedLink::FExit(p.take_link(id)?)
        }
        AttachMode::Tracepoint => {
            let (category, event) = target
                .split_once(':')
                .with_context(|| format!("tracepoint target `{target}` is not category:name"))?;
            let p: &mut TracePoint = program.try_into()?;
            if not_yet_loaded(p.fd()) {
                p.load()
                    .with_context(|| format!("loading {name} (verifier)"))?;
            }
            let id = p
                .attach(category, event)
                .with_context(|| format!("attaching {name} to tracepoint {target}"))?;
            OwnedLink::TracePoint(p.take_link(id)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_errnos_are_explained() {
        let e = anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EINVAL))
            .context("`perf_event_open` failed");
        assert_eq!(errno_of(&e), Some(libc::EINVAL));
        assert!(
            errno_hint(libc::EINVAL, AttachMode::KProbe).is_some_and(|h| h.contains("notrace"))
        );
        // EINVAL from a trampoline means something else: no kprobe-specific guess.
        assert_eq!(errno_hint(libc::EINVAL, AttachMode::FEntry), None);
        assert!(errno_hint(libc::EADDRNOTAVAIL, AttachMode::KRetProbe).is_some());
        assert_eq!(errno_of(&anyhow!("no io error")), None);
        for errno in 1..200 {
            for mode in [AttachMode::KProbe, AttachMode::FEntry] {
                if let Some(h) = errno_hint(errno, mode) {
                    assert!(!h.contains("  "), "badly wrapped hint: {h:?}");
                }
            }
        }
    }

    #[test]
    fn long_verifier_logs_keep_their_tail() {
        let mut log = String::from("loading x: the BPF_PROG_LOAD syscall returned EACCES");
        for i in 0..100 {
            log.push_str(&format!("\n{i}: insn"));
        }
        let e = anyhow!(log);
        let s = error_chain(&e);
        assert!(s.starts_with("loading x: the BPF_PROG_LOAD syscall returned EACCES"));
        assert!(s.contains("[... 60 verifier log lines omitted ...]"));
        assert!(s.ends_with("99: insn"));
        assert!(!s.contains("\n59: insn"));
        let short = anyhow!("attach failed").context("outer");
        assert_eq!(error_chain(&short), "outer: attach failed");
    }
}
