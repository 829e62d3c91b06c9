//! `vmatrace stress --widen-race-us N`: make the kernel's narrowest VMA-lock race happen on
//! purpose, so the tracer's handling of it can be checked on a real kernel.
//!
//! The race: a detach (`vma_mark_detached`) finds the VMA's refcount above 1 and takes the
//! slow path (`__vma_exclude_readers_for_detach` on 7.x, the waiting half of
//! `vma_mark_detached` on 6.15–6.19). The detaching task already holds the VMA write lock,
//! which waited for readers and makes new ones back off at `vma_start_read`'s first
//! sequence check, so only a reader that passed that check *before* the write lock and
//! increments `vm_refcnt` *after* it can be inside: a window of a few instructions, which
//! natural workloads do not hit in minutes (bpftrace saw none under stress-ng either).
//!
//! The widener puts a busy-wait around that increment, for the tasks of this process's
//! cgroup when it has one of its own (else this process's threads; see [`Scope`]):
//! two kprobes inside `lock_vma_under_rcu` (where `vma_start_read` is inlined), one on the
//! `lock cmpxchg` that increments `vm_refcnt` (the delay falls between the sequence check
//! and the increment) and one on the next instruction (the reader then holds its transient
//! reference for the delay). A writer that write-locks and detaches the VMA meanwhile
//! meets exactly the interleaving the kernel handles with the slow path. The programs only
//! read the clock and the task's id or cgroup; they spin (in the int3 handler: interrupts off) for at
//! most `delay`.
//!
//! Kernel-facing and Linux-only: the function's text is read from `/proc/kcore` at the
//! address `/proc/kallsyms` gives, the field offset comes from BTF, and the program
//! (`lab_race_delay`, the lab's own eBPF object `vmatrace-ebpf/src/lab.rs`) is loaded
//! and attached by `live::lab` with the product's loader. The instruction matcher is pure and tested.

use std::{fs, io::Read as _, os::unix::fs::FileExt as _, time::Duration};

use anyhow::{Context, bail};
use serde::Serialize;

use vmatrace_common::globals::LabConfig;

use crate::kernel::{btf::Btf, input};
use crate::live::lab::{LabProbes, RACE_DELAY};

/// The function whose inlined `vma_start_read` the widener delays: the page-fault reader.
pub const FUNCTION: &str = "lock_vma_under_rcu";
/// Longest delay accepted: the programs spin inside the int3 handler, interrupts off.
pub const MAX_DELAY: Duration = Duration::from_millis(1);

/// One `vm_refcnt` increment found in the function: byte offsets of the `lock cmpxchg` and
/// of the instruction after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Site {
    pub cmpxchg: usize,
    pub next: usize,
}

/// What the widener installed, for the workload's report.
#[derive(Clone, Debug, Serialize)]
pub struct WidenerReport {
    pub function: &'static str,
    /// `function+0xNN` of every kprobe.
    pub probes: Vec<String>,
    pub delay_us: u64,
    /// Whose faults are delayed: `process` or `cgroup <id>`.
    pub scope: String,
}

/// Installed probes; dropping it detaches them (field order is drop order) and then
/// restores the kprobe optimisation setting.
pub struct Widener {
    pub report: WidenerReport,
    _probes: LabProbes,
    _unoptimized: Unoptimized,
}

/// `debug.kprobes-optimization`, turned off while the widener is installed. Optimising a
/// kprobe rewrites the probed instruction into a jump while other CPUs run the function;
/// measured in the Debian 7.3.4 TCG guest with the tracer's trampolines attached: an
/// unhandled-int3 oops in 3 of 6 runs with optimisation on, 0 of 4 with it off. Plain
/// int3 probes never rewrite the text again after they are armed.
const KPROBES_OPTIMIZATION: &str = "/proc/sys/debug/kprobes-optimization";

struct Unoptimized {
    previous: Option<String>,
}

impl Unoptimized {
    fn set() -> anyhow::Result<Self> {
        let Ok(previous) = fs::read_to_string(KPROBES_OPTIMIZATION) else {
            return Ok(Unoptimized { previous: None }); // no CONFIG_OPTPROBES: nothing to do
        };
        fs::write(KPROBES_OPTIMIZATION, "0")
            .with_context(|| format!("turning kprobe optimisation off ({KPROBES_OPTIMIZATION})"))?;
        Ok(Unoptimized {
            previous: Some(previous.trim().to_string()),
        })
    }
}

impl Drop for Unoptimized {
    fn drop(&mut self) {
        if let Some(p) = &self.previous
            && let Err(e) = fs::write(KPROBES_OPTIMIZATION, p)
        {
            eprintln!("stress: could not restore {KPROBES_OPTIMIZATION} to {p}: {e}");
        }
    }
}

/// Every `lock cmpxchg r32, mem` in `text` that increments the 32-bit `vm_refcnt` (at
/// `field_offset` in `vm_area_struct`): its memory operand is `field_offset(%vma)`, or
/// `(%reg)` where `%reg` was set a few instructions before by `lea field_offset(%vma),
/// %reg` (how GCC 14 compiles `vma_start_read` in Debian's 7.3 build: the refcount's
/// address lives in `%rbp`). Encodings: `F0 [REX without W] 0F B1 ModRM [SIB]
/// [disp8|disp32]`; register and RIP-relative operands are skipped. A byte pattern is no
/// proof of an instruction boundary: the kernel checks that when the kprobe is registered
/// (EILSEQ otherwise), and the caller reports it.
pub fn refcount_increments(text: &[u8], field_offset: u32) -> Vec<Site> {
    let mut sites = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match cmpxchg_at(text, i) {
            Some(c)
                if c.disp == i64::from(field_offset)
                    || (c.disp == 0 && lea_before(text, i, c.base, field_offset)) =>
            {
                sites.push(Site {
                    cmpxchg: i,
                    next: c.end,
                });
                i = c.end;
            }
            _ => i += 1,
        }
    }
    sites
}

/// A decoded `lock cmpxchg r32, disp(base)`.
struct Cmpxchg {
    end: usize,
    base: u8,
    disp: i64,
}

/// How far back [`lea_before`] looks for the address computation.
const LEA_WINDOW: usize = 64;

fn cmpxchg_at(t: &[u8], i: usize) -> Option<Cmpxchg> {
    let b = |k: usize| t.get(k).copied();
    if b(i)? != 0xF0 {
        return None;
    }
    let mut p = i + 1;
    let mut rex = 0;
    if let Some(r @ 0x40..=0x4F) = b(p) {
        if r & 0x08 != 0 {
            return None; // REX.W: a 64-bit cmpxchg, not the 32-bit refcount
        }
        rex = r;
        p += 1;
    }
    if b(p)? != 0x0F || b(p + 1)? != 0xB1 {
        return None;
    }
    let modrm = b(p + 2)?;
    p += 3;
    let (md, rm) = (modrm >> 6, modrm & 7);
    if md == 3 {
        return None;
    }
    let mut base = rm;
    if rm == 4 {
        let sib = b(p)?;
        p += 1;
        if md == 0 && sib & 7 == 5 {
            return None; // disp32 without a base register
        }
        base = sib & 7;
    } else if md == 0 && rm == 5 {
        return None; // RIP-relative
    }
    let disp: i64 = match md {
        0 => 0,
        1 => {
            let d = b(p)? as i8;
            p += 1;
            d.into()
        }
        _ => {
            let d = i32::from_le_bytes(t.get(p..p + 4)?.try_into().ok()?);
            p += 4;
            d.into()
        }
    };
    Some(Cmpxchg {
        end: p,
        base: base | (rex & 1) << 3,
        disp,
    })
}

/// Whether `lea field_offset(%x), %base` (64-bit, disp8 or disp32, no SIB) ends within
/// [`LEA_WINDOW`] bytes before `at`.
fn lea_before(t: &[u8], at: usize, base: u8, field_offset: u32) -> bool {
    (at.saturating_sub(LEA_WINDOW)..at).any(|j| {
        let (Some(&rex), Some(&0x8D), Some(&modrm)) = (t.get(j), t.get(j + 1), t.get(j + 2)) else {
            return false;
        };
        if rex & 0xF8 != 0x48 || modrm & 7 == 4 {
            return false;
        }
        let dest = (modrm >> 3) & 7 | (rex & 4) << 1;
        let disp = match modrm >> 6 {
            1 => t.get(j + 3).map(|d| i64::from(*d as i8)),
            2 => t
                .get(j + 3..j + 7)
                .and_then(|d| d.try_into().ok())
                .map(|d| i64::from(i32::from_le_bytes(d))),
            _ => None,
        };
        dest == base && disp == Some(i64::from(field_offset))
    })
}

/// Whose page faults the widener delays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// This process's threads.
    Process(u32),
    /// Every task of this cgroup v2 (by id): also the processes the workload starts, such
    /// as the fork victims, whose killable `dup_mmap` write locks then wait for delayed
    /// readers and can be interrupted by the SIGKILL that ends them.
    Cgroup(u64),
}

impl Scope {
    /// The program's configuration for a busy-wait of `delay`.
    pub fn config(self, delay: Duration) -> LabConfig {
        let delay_ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        match self {
            Scope::Process(tgid) => LabConfig {
                scope: LabConfig::SCOPE_PROCESS,
                tgid,
                delay_ns,
                ..LabConfig::DEFAULT
            },
            Scope::Cgroup(cgroup_id) => LabConfig {
                scope: LabConfig::SCOPE_CGROUP,
                cgroup_id,
                delay_ns,
                ..LabConfig::DEFAULT
            },
        }
    }
}

/// Install the widener for this process's cgroup or threads ([`Scope`]).
pub fn install(delay: Duration) -> anyhow::Result<Widener> {
    if delay.is_zero() || delay > MAX_DELAY {
        bail!("the race delay must be between 1 µs and {MAX_DELAY:?}, not {delay:?}");
    }
    install_at(delay, find_sites()?)
}

/// The refcount increments in the running kernel's [`FUNCTION`] (root: `/proc/kcore`).
pub fn find_sites() -> anyhow::Result<Vec<Site>> {
    let btf = input::read_capped(
        std::path::Path::new(crate::kernel::info::VMLINUX_BTF),
        input::BTF,
    )
    .with_context(|| {
        format!(
            "reading {} (the race widener needs the vm_refcnt offset)",
            crate::kernel::info::VMLINUX_BTF
        )
    })?;
    let btf = Btf::parse(&btf).map_err(|e| anyhow::anyhow!("parsing kernel BTF: {e}"))?;
    let field = btf
        .member_offset("vm_area_struct", "vm_refcnt")
        .map_err(|e| anyhow::anyhow!("kernel BTF: {e}"))?
        .context("this kernel's vm_area_struct has no vm_refcnt (before 6.15): no race to widen")?
        .offset;
    let (addr, len) = function_extent(FUNCTION)?;
    let text = read_kernel_text(addr, len)?;
    let sites = refcount_increments(&text, field);
    if sites.is_empty() {
        bail!(
            "no `lock cmpxchg` on vm_refcnt (+{field:#x}) in {FUNCTION} ({len} bytes): \
             vma_start_read is not inlined there on this kernel, so the race cannot be \
             widened; the function's text: {}",
            text.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
    }
    Ok(sites)
}

/// The widener's scope: this process's cgroup when it has one of its own (the VM tests
/// put the workload in one), else this process.
fn scope() -> Scope {
    match super::calls::own_cgroup() {
        Ok((path, id)) if path != "/" => Scope::Cgroup(id),
        _ => Scope::Process(std::process::id()),
    }
}

fn install_at(delay: Duration, sites: Vec<Site>) -> anyhow::Result<Widener> {
    let scope = scope();
    // Declared first, dropped last: on an error below the probes go before the setting.
    let unoptimized = Unoptimized::set()?;
    let mut lab = LabProbes::load(scope.config(delay))?;
    let mut probes = Vec::new();
    for s in &sites {
        for off in [s.cmpxchg, s.next] {
            lab.attach(RACE_DELAY, FUNCTION, off as u64)
                .context("attaching the race widener")?;
            probes.push(format!("{FUNCTION}+{off:#x}"));
        }
    }
    Ok(Widener {
        report: WidenerReport {
            function: FUNCTION,
            probes,
            delay_us: delay.as_micros() as u64,
            scope: match scope {
                Scope::Process(_) => "process".into(),
                Scope::Cgroup(id) => format!("cgroup {id}"),
            },
        },
        _probes: lab,
        _unoptimized: unoptimized,
    })
}

/// Start address of `name` and the distance to the next text symbol.
fn function_extent(name: &str) -> anyhow::Result<(u64, usize)> {
    let text = input::read_capped_text(std::path::Path::new("/proc/kallsyms"), input::KALLSYMS)?;
    function_extent_in(&text, name)
}

/// Not `kernel::symbols::Kallsyms`: that one keeps whole functions only and drops `.cold`
/// and `.part` fragments, but a fragment right after the function is where its text ends.
pub fn function_extent_in(kallsyms: &str, name: &str) -> anyhow::Result<(u64, usize)> {
    let mut start = None;
    let mut addrs = Vec::new();
    for line in kallsyms.lines() {
        let mut it = line.split_whitespace();
        let (Some(a), Some(kind), Some(sym)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if !matches!(kind, "t" | "T") || it.next().is_some() {
            continue; // text of vmlinux only: module symbols carry `[module]`
        }
        let Ok(a) = u64::from_str_radix(a, 16) else {
            continue;
        };
        if sym == name {
            start = Some(a);
        }
        addrs.push(a);
    }
    let start = start.with_context(|| format!("{name} is not in /proc/kallsyms"))?;
    if start == 0 {
        bail!("/proc/kallsyms hides addresses (kptr_restrict): run as root");
    }
    let end = addrs
        .into_iter()
        .filter(|a| *a > start)
        .min()
        .with_context(|| format!("no text symbol after {name}"))?;
    Ok((start, ((end - start) as usize).min(8192)))
}

/// `len` bytes of kernel text at `addr`, from `/proc/kcore` (an ELF core file whose
/// `PT_LOAD` segments map kernel virtual addresses to file offsets).
fn read_kernel_text(addr: u64, len: usize) -> anyhow::Result<Vec<u8>> {
    let mut f = fs::File::open("/proc/kcore")
        .context("opening /proc/kcore (needs root and a kernel with CONFIG_PROC_KCORE)")?;
    let mut head = [0u8; 64];
    f.read_exact(&mut head)
        .context("reading the /proc/kcore header")?;
    let phoff = u64::from_le_bytes(head[0x20..0x28].try_into()?);
    let phentsize = u16::from_le_bytes(head[0x36..0x38].try_into()?) as u64;
    let phnum = u16::from_le_bytes(head[0x38..0x3a].try_into()?) as u64;
    if &head[..4] != b"\x7fELF" || phentsize < 56 {
        bail!("/proc/kcore is not a 64-bit ELF core file");
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    f.read_exact_at(&mut ph, phoff)
        .context("reading /proc/kcore program headers")?;
    for h in ph.chunks_exact(phentsize as usize) {
        let u = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap_or([0; 8]));
        let (ty, offset, vaddr, filesz) =
            (u32::from_le_bytes(h[0..4].try_into()?), u(8), u(16), u(32));
        if ty == 1 && vaddr <= addr && addr + len as u64 <= vaddr + filesz {
            let mut buf = vec![0u8; len];
            f.read_exact_at(&mut buf, offset + (addr - vaddr))
                .with_context(|| format!("reading kernel text at {addr:#x} from /proc/kcore"))?;
            return Ok(buf);
        }
    }
    bail!("/proc/kcore maps no segment holding {addr:#x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_refcount_cmpxchg_in_its_encodings() {
        // mov 0x80(%rdi),%eax; lea 1(%rax),%edx; lock cmpxchg %edx,0x80(%rdi); jne -…
        let text = [
            0x8b, 0x87, 0x80, 0, 0, 0, 0x8d, 0x50, 0x01, //
            0xf0, 0x0f, 0xb1, 0x97, 0x80, 0, 0, 0, // lock cmpxchg %edx,0x80(%rdi)
            0x75, 0xf0, //
            0xf0, 0x44, 0x0f, 0xb1, 0x83, 0x80, 0, 0, 0, // lock cmpxchg %r8d,0x80(%rbx)
            0xf0, 0x48, 0x0f, 0xb1, 0x97, 0x80, 0, 0, 0, // REX.W: 64-bit, not ours
            0xf0, 0x0f, 0xb1, 0x94, 0x24, 0x80, 0, 0, 0, // lock cmpxchg %edx,0x80(%rsp) (SIB)
            0xf0, 0x0f, 0xb1, 0x57, 0x28, // disp8 0x28: another field
            0xf0, 0x0f, 0xb1, 0xd1, // register form
        ];
        let sites = refcount_increments(&text, 0x80);
        assert_eq!(
            sites,
            vec![
                Site {
                    cmpxchg: 9,
                    next: 17
                },
                Site {
                    cmpxchg: 19,
                    next: 28
                },
                Site {
                    cmpxchg: 37,
                    next: 46
                },
            ]
        );
        assert_eq!(
            refcount_increments(&text, 0x28),
            vec![Site {
                cmpxchg: 46,
                next: 51
            }]
        );
        // Debian 7.3.4 cloud, lock_vma_under_rcu+0x8a..+0xc0: the refcount's address is
        // computed once (`lea 0x80(%rbx),%rbp`) and the cmpxchg uses `0x0(%rbp)`.
        let deb734 = [
            0x8b, 0x93, 0x80, 0, 0, 0, // mov 0x80(%rbx),%edx
            0x48, 0x8d, 0xab, 0x80, 0, 0, 0, // lea 0x80(%rbx),%rbp
            0xbe, 0xff, 0xff, 0xff, 0x3f, // mov $0x3fffffff,%esi
            0x85, 0xd2, 0x0f, 0x84, 0xe1, 0x01, 0, 0, // test; je
            0x89, 0xf0, 0x29, 0xd0, 0x85, 0xc0, 0x0f, 0x8e, 0x8a, 0, 0, 0, // limit check
            0x8d, 0x4a, 0x01, 0x89, 0xd0, // lea 0x1(%rdx),%ecx; mov %edx,%eax
            0xf0, 0x0f, 0xb1, 0x4d, 0x00, // lock cmpxchg %ecx,0x0(%rbp)
            0x0f, 0x85, 0xd2, 0, 0, 0, // jne
        ];
        assert_eq!(
            refcount_increments(&deb734, 0x80),
            vec![Site {
                cmpxchg: 43,
                next: 48
            }]
        );
        // Through another register than the lea's destination, or another field: no.
        let mut other_reg = deb734;
        other_reg[46] = 0x4e; // (%rsi)
        assert!(refcount_increments(&other_reg, 0x80).is_empty());
        assert!(refcount_increments(&deb734, 0x28).is_empty());
        // A truncated instruction at the end is not a match, and never a panic.
        assert!(refcount_increments(&text[..14], 0x80).is_empty());
        assert!(refcount_increments(&[0xf0], 0x80).is_empty());
    }

    #[test]
    fn scopes_configure_the_program() {
        let d = Duration::from_micros(50);
        let p = Scope::Process(1234).config(d);
        assert_eq!(
            (p.scope, p.tgid, p.cgroup_id, p.delay_ns),
            (LabConfig::SCOPE_PROCESS, 1234, 0, 50_000)
        );
        let c = Scope::Cgroup(0x1_0000_0042).config(d);
        assert_eq!(
            (c.scope, c.tgid, c.cgroup_id),
            (LabConfig::SCOPE_CGROUP, 0, 0x1_0000_0042)
        );
    }

    #[test]
    fn function_extent_uses_the_next_text_symbol() {
        let k = "ffffffff81000000 T _stext\n\
                 ffffffff81234500 T lock_vma_under_rcu\n\
                 ffffffff81234400 t before\n\
                 ffffffff812346a0 t lock_next_vma\n\
                 ffffffff81234600 d some_data\n\
                 ffffffff81234580 t mod_fn\t[kvm]\n";
        assert_eq!(
            function_extent_in(k, "lock_vma_under_rcu").unwrap(),
            (0xffffffff81234500, 0x1a0)
        );
        assert!(function_extent_in(k, "absent").is_err());
        let hidden = "0000000000000000 T lock_vma_under_rcu\n0000000000000000 T x\n";
        let e = function_extent_in(hidden, "lock_vma_under_rcu").unwrap_err();
        assert!(e.to_string().contains("kptr_restrict"), "{e}");
    }
}
