//! Faults injected into a running guest kernel through QEMU's gdbstub (`gdb.rs`), and
//! the verdict on whether the tracer caught each one (`docs/vm-tests.md#faults`).
//!
//! The guest's `faults` step traces every task with raw addresses while the usual
//! workload runs. Once its tracer is attached the injector stops the guest, puts
//! breakpoints on the kernel functions of the VMA-lock protocol (addresses from the
//! guest's `/proc/kallsyms`, the `symbols` step; struct offsets and hooked functions from
//! the `probes` step's plan) and, each time one is hit, breaks the protocol in kernel
//! memory or registers for one call: the tracer's programs see the broken state, and the
//! injector repairs it before the kernel can suffer from it (every fault heals itself).
//! One fault is in flight at a time, each on a VMA not faulted before.
//!
//! Breakpoints sit at a function's first instruction (`+0`, before the `call __fentry__`
//! through which kprobes and fentry programs run), at its body (`+9` after `endbr64` (or
//! the nop it is sealed into) and the 5-byte call; `+5` without either), at the return address the body sees (the
//! kretprobe or fexit trampoline: reached before the return programs run) and at the
//! caller's return address (after them).

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::gdb::{Gdb, Stop, reg};

/// `VM_REFCNT_EXCLUDE_READERS_FLAG`.
const F: u32 = 1 << 30;

/// A fault of the protocol, and the anomaly kind that must report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultClass {
    /// `__vma_start_write` stores a stale `vm_lock_seq` (its `mm_lock_seq` argument
    /// lowered by 2): the VMA is not write-locked when the writer goes on. Repaired at
    /// the caller (the right sequence stored).
    StaleLockSeq,
    /// `__vma_start_write` returns with `VM_REFCNT_EXCLUDE_READERS_FLAG` still set
    /// (the end of the exclusion skipped). Set after the body returned, cleared once the
    /// return programs ran.
    FlagLeftSet,
    /// The VMA is freed with a reader reference (`vm_refcnt` 1 instead of 0). Set at
    /// `vm_area_free`'s entry, dropped after the entry programs ran.
    FreeWithReference,
    /// `vm_refcnt` corrupted past its range (2 × the flag added) when the VMA is freed.
    RefcountCorrupted,
    /// A second exclusion: the flag already set when the writer starts excluding
    /// readers (start-exclude's entry). Set at its entry, cleared after the entry
    /// programs ran, before its body.
    ConcurrentExclusion,
}

impl FaultClass {
    pub const ALL: [FaultClass; 5] = [
        FaultClass::StaleLockSeq,
        FaultClass::FlagLeftSet,
        FaultClass::FreeWithReference,
        FaultClass::RefcountCorrupted,
        FaultClass::ConcurrentExclusion,
    ];

    pub fn key(self) -> &'static str {
        match self {
            FaultClass::StaleLockSeq => "stale_lock_seq",
            FaultClass::FlagLeftSet => "flag_left_set",
            FaultClass::FreeWithReference => "free_with_reference",
            FaultClass::RefcountCorrupted => "refcount_corrupted",
            FaultClass::ConcurrentExclusion => "concurrent_exclusion",
        }
    }

    /// What an entry fault adds to `vm_refcnt` at the function's entry (`None`: the
    /// class is made when the body returns).
    pub fn entry_delta(self) -> Option<u32> {
        match self {
            FaultClass::FreeWithReference => Some(1),
            FaultClass::RefcountCorrupted => Some(2 * F),
            FaultClass::ConcurrentExclusion => Some(F),
            FaultClass::StaleLockSeq | FaultClass::FlagLeftSet => None,
        }
    }

    /// The anomaly kind documented for it (`docs/anomaly-kinds.md`).
    pub fn kind(self) -> &'static str {
        match self {
            FaultClass::StaleLockSeq => "write_lock_not_taken",
            FaultClass::FlagLeftSet => "exclusion_not_ended",
            FaultClass::FreeWithReference => "free_while_referenced",
            FaultClass::RefcountCorrupted => "refcount_out_of_range",
            FaultClass::ConcurrentExclusion => "concurrent_exclusion",
        }
    }
}

/// One fault, injected: on which VMA, and the value the tracer's programs saw (the
/// faulted `vm_refcnt`, or the stale `vm_lock_seq`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    pub class: FaultClass,
    pub vma: u64,
    pub seen: u32,
}

#[derive(Debug, Default)]
pub struct Report {
    pub injections: Vec<Injection>,
    /// Classes that could not be injected on this kernel, and why.
    pub unavailable: Vec<(FaultClass, String)>,
    /// What went wrong in the injector itself.
    pub error: Option<String>,
    /// Breakpoint hits, for the log.
    pub stops: u64,
    /// Every stop and what was done there (`faults.log` in the artifacts).
    pub log: Vec<String>,
}

/// Faults of each class to inject.
pub const PER_CLASS: usize = 4;
/// Give up injecting after this long (wall clock, from the tracer being ready).
const INJECT_FOR: Duration = Duration::from_secs(90);

/// The guest's side: offsets and functions, read from the results of earlier steps.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub vm_refcnt: u64,
    pub vm_lock_seq: u64,
    pub vm_mm: u64,
    pub mm_lock_seq: u64,
    /// `ves->vma` when start-exclude takes a `struct vma_exclude_readers_state *`.
    pub ves_vma: Option<u64>,
    pub start_write: Option<u64>,
    pub vm_area_free: Option<u64>,
    /// The function whose entry sample starts an exclusion (start-exclude, else
    /// `__vma_start_write`), by name and address, and whether its argument is a `ves`.
    pub exclude_entry: Option<(String, u64)>,
    pub exclude_takes_ves: bool,
    /// The per-CPU `current_task` (added to the GS base) and `task_struct.comm`: faults
    /// go only to the workload's tasks ([`WORKLOAD_COMM`]), which the tracer traces (it
    /// does not trace itself).
    pub current_task: Option<u64>,
    pub task_comm: Option<u64>,
}

/// The comm of the faults step's workload (`vmatrace` run through a symlink of this
/// name, so its tasks differ from the tracer's).
pub const WORKLOAD_COMM: &str = "faultload";

/// Programs whose entry samples `vm_refcnt` at the start of an exclusion, preferred
/// first (`__vma_start_write`'s entry where no start-exclude entry is probed: 6.18).
const EXCLUDE_ENTRY_PROGRAMS: &[&str] = &[
    "vser_kprobe",
    "vser_fentry",
    "vel_kprobe",
    "vsw_kprobe",
    "vsw_fentry",
];

/// The layout from the plan (`vmatrace probes --json`) and `/proc/kallsyms` lines.
pub fn layout(plan: &Value, kallsyms: &str) -> anyhow::Result<Layout> {
    let off = |k: &str| {
        plan.pointer(&format!("/plan/offsets/{k}"))
            .and_then(Value::as_u64)
    };
    let need = |k: &str| off(k).with_context(|| format!("the plan has no offset {k}"));
    let syms: BTreeMap<&str, u64> = kallsyms
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let addr = u64::from_str_radix(w.next()?, 16).ok()?;
            let _type = w.next()?;
            Some((w.next()?, addr))
        })
        .filter(|(_, a)| *a != 0)
        .collect();
    let points = plan
        .pointer("/plan/points")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let exclude = EXCLUDE_ENTRY_PROGRAMS.iter().find_map(|want| {
        points.iter().find_map(|p| {
            let target = p.get("target")?.as_str()?;
            (p.get("program")?.as_str()? == *want)
                .then(|| syms.get(target).map(|a| ((target.to_string(), *a), *want)))?
        })
    });
    Ok(Layout {
        vm_refcnt: need("vma_vm_refcnt")?,
        vm_lock_seq: need("vma_vm_lock_seq")?,
        vm_mm: need("vma_vm_mm")?,
        mm_lock_seq: need("mm_mm_lock_seq")?,
        ves_vma: off("ves_vma"),
        start_write: syms.get("__vma_start_write").copied(),
        vm_area_free: syms.get("vm_area_free").copied(),
        exclude_takes_ves: exclude.as_ref().is_some_and(|(_, p)| p.starts_with("vser")),
        exclude_entry: exclude.map(|(e, _)| e),
        current_task: syms.get("current_task").copied(),
        task_comm: off("task_comm"),
    })
}

/// A fault in flight: what to do at the next breakpoint.
#[derive(Clone, Debug)]
enum Pending {
    /// At the body of the function entered at `entry` by the task whose stack pointer was
    /// `rsp0` there.
    Body {
        class: FaultClass,
        entry: u64,
        vma: u64,
        rsp0: u64,
        /// The return address at the entry (a kretprobe replaces it in place).
        caller: u64,
    },
    /// At the body's return address (`tramp`), before the return programs: the body
    /// returns with its stack pointer at `rsp`.
    BeforeReturn {
        class: FaultClass,
        tramp: u64,
        rsp: u64,
        vma: u64,
        caller: u64,
        rsp0: u64,
    },
    /// At the caller, after every program ran: repair.
    AfterReturn {
        caller: u64,
        rsp0: u64,
        vma: u64,
        fix: Fix,
    },
}

/// The repair owed once the programs have seen the fault.
#[derive(Clone, Copy, Debug)]
enum Fix {
    /// Subtract from `vm_refcnt` what was added (read-modify-write: readers may have
    /// come and gone meanwhile).
    Refcnt(u32),
    /// Store this `vm_lock_seq` if the function stored the stale one.
    LockSeq {
        stale: u32,
        good: u32,
    },
    Nothing,
}

struct Injector<'a> {
    gdb: Gdb,
    layout: &'a Layout,
    report: Report,
    used: HashSet<u64>,
    /// Entry breakpoints and the classes injected there, in turn.
    entries: Vec<(u64, Vec<FaultClass>)>,
    turn: usize,
    pending: Option<Pending>,
    /// Per function entry: offset of its body.
    body: BTreeMap<u64, u64>,
}

impl Injector<'_> {
    fn count(&self, c: FaultClass) -> usize {
        self.report
            .injections
            .iter()
            .filter(|i| i.class == c)
            .count()
    }

    fn done(&self) -> bool {
        self.entries
            .iter()
            .all(|(_, cs)| cs.iter().all(|c| self.count(*c) >= PER_CLASS))
    }

    fn arm_entries(&mut self, on: bool) -> anyhow::Result<()> {
        for (a, cs) in self.entries.clone() {
            if cs.iter().any(|c| self.count(*c) < PER_CLASS) {
                if on {
                    self.gdb.insert_breakpoint(a)?;
                } else {
                    self.gdb.remove_breakpoint(a)?;
                }
            }
        }
        Ok(())
    }

    fn refcnt(&mut self, vma: u64) -> anyhow::Result<u32> {
        self.gdb.read_u32(vma + self.layout.vm_refcnt)
    }

    fn add_refcnt(&mut self, vma: u64, d: u32) -> anyhow::Result<u32> {
        let r = self.refcnt(vma)?.wrapping_add(d);
        self.gdb.write_u32(vma + self.layout.vm_refcnt, r)?;
        Ok(r)
    }

    /// The function's body offset: after `endbr64` (if any) and the 5-byte call.
    fn body_of(&mut self, entry: u64) -> anyhow::Result<u64> {
        if let Some(b) = self.body.get(&entry) {
            return Ok(*b);
        }
        let text = self.gdb.read_mem(entry, 9)?;
        // `endbr64`, or the 4-byte nop the kernel seals it into when nothing calls the
        // function indirectly (`nopl -42(%rax)`).
        let endbr = text[..4] == [0xf3, 0x0f, 0x1e, 0xfa] || text[..4] == [0x0f, 0x1f, 0x40, 0xd6];
        let call = &text[if endbr { 4 } else { 0 }..];
        if call[0] != 0xe8 && call[..5] != [0x0f, 0x1f, 0x44, 0x00, 0x00] {
            bail!("{entry:#x} does not start with the ftrace call site ({text:02x?})");
        }
        let b = entry + if endbr { 9 } else { 5 };
        self.body.insert(entry, b);
        Ok(b)
    }

    /// A hit at an entry breakpoint: inject the next class due there, or pass.
    fn at_entry(&mut self, stop: &Stop, entry: u64) -> anyhow::Result<()> {
        let classes = self
            .entries
            .iter()
            .find(|(a, _)| *a == entry)
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        let due: Vec<FaultClass> = classes
            .iter()
            .copied()
            .filter(|c| self.count(*c) < PER_CLASS)
            .collect();
        if due.is_empty() || !self.in_workload(stop)? {
            return self.pass(stop);
        }
        let class = due[self.turn % due.len()];
        let rdi = stop.regs[reg::RDI];
        let exclude = self
            .layout
            .exclude_entry
            .as_ref()
            .is_some_and(|(_, a)| *a == entry);
        let vma = match self.layout.ves_vma {
            Some(off) if exclude && self.layout.exclude_takes_ves => {
                self.gdb.read_u64(rdi + off)?
            }
            _ => rdi,
        };
        if vma == 0 || self.used.contains(&vma) {
            return self.pass(stop);
        }
        self.turn += 1;
        self.used.insert(vma);
        // One fault at a time: no entry breakpoint until it is repaired.
        self.arm_entries(false)?;
        let rsp0 = stop.rsp();
        let caller = self.gdb.read_u64(rsp0)?;
        // Entry faults are made now and taken back at the body; return faults are made
        // when the body returns (`Pending::Body` finds where that is).
        let body = self.body_of(entry)?;
        if let Some(d) = class.entry_delta() {
            let seen = self.add_refcnt(vma, d)?;
            self.report.injections.push(Injection { class, vma, seen });
        }
        self.pending = Some(Pending::Body {
            class,
            entry,
            vma,
            rsp0,
            caller,
        });
        self.gdb.insert_breakpoint(body)?;
        self.gdb.resume()
    }

    /// Whether the stopped vCPU runs a task of the workload (`current->comm`). Without
    /// `current_task` or the comm offset every task qualifies.
    fn in_workload(&mut self, stop: &Stop) -> anyhow::Result<bool> {
        let (Some(cur), Some(comm)) = (self.layout.current_task, self.layout.task_comm) else {
            return Ok(true);
        };
        let task = self.gdb.read_u64(stop.gs_base.wrapping_add(cur))?;
        let name = self.gdb.read_mem(task + comm, 16)?;
        Ok(name.starts_with(WORKLOAD_COMM.as_bytes()))
    }

    /// Let the vCPU that stopped go past the breakpoint, which stays, and resume.
    fn pass(&mut self, stop: &Stop) -> anyhow::Result<()> {
        self.gdb.step_over(stop)?;
        self.gdb.resume()
    }

    /// The same task: its stack pointer within a trampoline frame of where it was.
    fn same_task(rsp0: u64, rsp: u64) -> bool {
        rsp <= rsp0 + 8 && rsp0 + 8 - rsp < 4096
    }

    fn at_pending(&mut self, stop: &Stop, p: Pending) -> anyhow::Result<()> {
        match p {
            Pending::Body {
                class,
                entry,
                vma,
                rsp0,
                caller,
            } => {
                if !Self::same_task(rsp0, stop.rsp()) {
                    self.pending = Some(p);
                    return self.pass(stop);
                }
                self.gdb.remove_breakpoint(stop.rip())?;
                if class.entry_delta().is_none() {
                    let tramp = self.gdb.read_u64(stop.rsp())?;
                    if caller == tramp {
                        bail!(
                            "{}: {entry:#x} has no return probe to see the fault",
                            class.key()
                        );
                    }
                    self.pending = Some(Pending::BeforeReturn {
                        class,
                        tramp,
                        rsp: stop.rsp() + 8,
                        vma,
                        caller,
                        rsp0,
                    });
                    self.gdb.insert_breakpoint(tramp)?;
                } else {
                    // The entry programs have run: take the fault back.
                    let d = class.entry_delta().unwrap_or(0);
                    self.add_refcnt(vma, d.wrapping_neg())?;
                    self.arm_entries(true)?;
                }
                self.gdb.resume()
            }
            Pending::BeforeReturn {
                class,
                tramp,
                rsp,
                vma,
                caller,
                rsp0,
            } => {
                if stop.rsp() != rsp {
                    self.pending = Some(p);
                    return self.pass(stop);
                }
                self.gdb.remove_breakpoint(tramp)?;
                let r = self.refcnt(vma)?;
                let mm = self.gdb.read_u64(vma + self.layout.vm_mm)?;
                let l = self.gdb.read_u32(vma + self.layout.vm_lock_seq)?;
                let s = self.gdb.read_u32(mm + self.layout.mm_lock_seq)?;
                // Only a write lock that was taken (not an interrupted wait).
                let fix = match class {
                    _ if l != s => Fix::Nothing,
                    FaultClass::FlagLeftSet if r & F == 0 => {
                        let seen = self.add_refcnt(vma, F)?;
                        self.report.injections.push(Injection { class, vma, seen });
                        Fix::Refcnt(F)
                    }
                    FaultClass::StaleLockSeq => {
                        let stale = l.wrapping_sub(2);
                        self.gdb.write_u32(vma + self.layout.vm_lock_seq, stale)?;
                        self.report.injections.push(Injection {
                            class,
                            vma,
                            seen: stale,
                        });
                        Fix::LockSeq { stale, good: l }
                    }
                    _ => Fix::Nothing,
                };
                self.pending = Some(Pending::AfterReturn {
                    caller,
                    rsp0,
                    vma,
                    fix,
                });
                self.gdb.insert_breakpoint(caller)?;
                self.gdb.resume()
            }
            Pending::AfterReturn {
                caller,
                rsp0,
                vma,
                fix,
            } => {
                if stop.rsp() != rsp0 + 8 {
                    self.pending = Some(p);
                    return self.pass(stop);
                }
                self.gdb.remove_breakpoint(caller)?;
                match fix {
                    Fix::Refcnt(d) => {
                        self.add_refcnt(vma, d.wrapping_neg())?;
                    }
                    Fix::LockSeq { stale, good } => {
                        let at = vma + self.layout.vm_lock_seq;
                        let l = self.gdb.read_u32(at)?;
                        self.report
                            .log
                            .push(format!("  vm_lock_seq {l} (stale {stale}, good {good})"));
                        // Nobody else stores it: this task holds the mmap write lock.
                        if l == stale {
                            self.gdb.write_u32(at, good)?;
                        }
                    }
                    Fix::Nothing => {}
                }
                self.arm_entries(true)?;
                self.gdb.resume()
            }
        }
    }

    /// Inject until every class is done, or `until` / `stop_when` (the workload ended);
    /// a fault in flight is healed first (its task may sleep in the wait for readers)
    /// unless the guest's whole time, `hard`, is up.
    fn run(
        &mut self,
        until: Instant,
        hard: Instant,
        stop_when: &dyn Fn() -> bool,
    ) -> anyhow::Result<()> {
        self.arm_entries(true)?;
        self.gdb.resume()?;
        // Once the workload has exited no new fault starts: its exit frees VMAs
        // (`vm_area_free`) up to the moment the tracer stops, and a fault whose events
        // reach the ring buffer after the tracer stopped reading cannot be reported.
        let mut ended = false;
        let mut checked = Instant::now();
        while !self.done() || self.pending.is_some() {
            if !ended && checked.elapsed() > Duration::from_millis(200) {
                checked = Instant::now();
                ended = stop_when();
            }
            let Some(stop) = self.gdb.wait_stop(Duration::from_millis(500))? else {
                let now = Instant::now();
                if (now > until || ended) && (self.pending.is_none() || now > hard) {
                    break;
                }
                continue;
            };
            self.report.stops += 1;
            let top = self.gdb.read_u64(stop.rsp()).unwrap_or(0);
            self.report.log.push(format!(
                "stop cpu{} rip={:#x} rsp={:#x} [rsp]={top:#x} rdi={:#x} rsi={:#x} pending={:?}",
                stop.thread,
                stop.rip(),
                stop.rsp(),
                stop.regs[reg::RDI],
                stop.regs[reg::RSI],
                self.pending
            ));
            let rip = stop.rip();
            if let Some(p) = self.pending.take() {
                self.at_pending(&stop, p)?;
            } else if self.entries.iter().any(|(a, _)| *a == rip) {
                if ended {
                    // Removing the breakpoints lets this vCPU run the instruction.
                    self.arm_entries(false)?;
                    self.gdb.resume()?;
                    break;
                }
                self.at_entry(&stop, rip)?;
            } else {
                // Not ours (a stale hit): go on.
                self.gdb.resume()?;
            }
        }
        // Leave the guest as it was: no breakpoint, running.
        let _ = self.gdb.interrupt();
        for (a, _) in self.entries.clone() {
            let _ = self.gdb.remove_breakpoint(a);
        }
        if self.pending.is_some() {
            bail!(
                "a fault was still in flight when the step ended: {:?}",
                self.pending
            );
        }
        Ok(())
    }
}

fn console_has(console: &Path, what: &str) -> bool {
    std::fs::read(console).is_ok_and(|b| String::from_utf8_lossy(&b).contains(what))
}

/// Run the injector for the guest whose console and results are being written under
/// `dir`, through QEMU's gdbstub on `port`. Waits for the `faults` step's tracer, then
/// injects until every class has [`PER_CLASS`] faults, the workload ended, or
/// `deadline`.
pub fn inject(port: u16, dir: &Path, deadline: Instant, qemu_gone: &AtomicBool) -> Report {
    let console = dir.join("console.log");
    let results = dir.join("results.log");
    let mut report = Report::default();
    let ready = "step faults: tracer ready";
    let ended = "step faults: workload exited";
    while !console_has(&console, ready) {
        if Instant::now() > deadline || qemu_gone.load(Ordering::Relaxed) {
            report.error = Some("the faults step's tracer never became ready".into());
            return report;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let res = super::results::parse(&std::fs::read(&results).unwrap_or_default());
    let plan = res
        .section("probes")
        .and_then(|s| super::results::json_of("probes", &s.body).ok());
    let kallsyms = res.section("symbols").map(|s| s.body.clone());
    let (Some(plan), Some(kallsyms)) = (plan, kallsyms) else {
        report.error =
            Some("no plan (probes step) or no symbols step before the faults step".into());
        return report;
    };
    let layout = match layout(&plan, &kallsyms) {
        Ok(l) => l,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report;
        }
    };
    let mut entries = Vec::new();
    match layout.start_write {
        Some(a) => entries.push((a, vec![FaultClass::StaleLockSeq, FaultClass::FlagLeftSet])),
        None => {
            for c in [FaultClass::StaleLockSeq, FaultClass::FlagLeftSet] {
                report
                    .unavailable
                    .push((c, "__vma_start_write is not in kallsyms".into()));
            }
        }
    }
    match layout.vm_area_free {
        Some(a) => entries.push((
            a,
            vec![FaultClass::FreeWithReference, FaultClass::RefcountCorrupted],
        )),
        None => {
            for c in [FaultClass::FreeWithReference, FaultClass::RefcountCorrupted] {
                report
                    .unavailable
                    .push((c, "vm_area_free is not in kallsyms".into()));
            }
        }
    }
    match &layout.exclude_entry {
        Some((_, a)) => match entries.iter_mut().find(|(e, _)| e == a) {
            Some((_, cs)) => cs.push(FaultClass::ConcurrentExclusion),
            None => entries.push((*a, vec![FaultClass::ConcurrentExclusion])),
        },
        None => report.unavailable.push((
            FaultClass::ConcurrentExclusion,
            format!(
                "the plan probes no start-exclude entry ({})",
                EXCLUDE_ENTRY_PROGRAMS.join(", ")
            ),
        )),
    }
    let mut gdb = match Gdb::connect(port, Duration::from_secs(10)) {
        Ok(g) => g,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            return report;
        }
    };
    // Attaching stopped the guest; from here on every way out lets it run again.
    if let Err(e) = gdb.status() {
        report.error = Some(format!("{e:#}"));
        let _ = gdb.detach();
        return report;
    }
    let mut inj = Injector {
        gdb,
        layout: &layout,
        report,
        used: HashSet::new(),
        entries,
        turn: 0,
        pending: None,
        body: BTreeMap::new(),
    };
    let until = Instant::now() + INJECT_FOR;
    let stop_when = || console_has(&console, ended);
    if let Err(e) = inj.run(until.min(deadline), deadline, &stop_when) {
        inj.report.error = Some(format!("{e:#}"));
    }
    let Injector { gdb, report, .. } = inj;
    let _ = gdb.detach();
    report
}

/// A free TCP port on the loopback for QEMU's gdbstub.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Whether an anomaly line reports `inj`: its kind, on the faulted VMA, raised by (or with
/// evidence of) an event that carries the faulted value.
fn reports(line: &Value, inj: &Injection) -> bool {
    let hex = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
    };
    if line.get("kind").and_then(Value::as_str) != Some(inj.class.kind()) {
        return false;
    }
    if hex(line.pointer("/vma/addr")) != Some(inj.vma) {
        return false;
    }
    let carries = |e: &Value| {
        let n = |k: &str| e.get(k).and_then(Value::as_u64);
        match inj.class {
            FaultClass::StaleLockSeq => n("vm_lock_seq") == Some(u64::from(inj.seen)),
            _ => {
                n("refcnt") == Some(u64::from(inj.seen))
                    || n("entry_refcnt") == Some(u64::from(inj.seen))
            }
        }
    };
    line.get("event").is_some_and(carries)
        || line
            .get("evidence")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(carries))
}

/// One line per class (`fault CLASS: injected N, detected N as KIND (evidence ok)`),
/// failures for every fault not reported, every class not injected, and every anomaly
/// on a VMA no fault touched.
pub fn judge(report: &Report, anomalies: &str, info: &mut Vec<String>, failures: &mut Vec<String>) {
    let lines: Vec<Value> = anomalies
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &Value| v.get("type").and_then(Value::as_str) == Some("anomaly"))
        .collect();
    if let Some(e) = &report.error {
        failures.push(format!("faults: the injector failed: {e}"));
    }
    for c in FaultClass::ALL {
        if let Some((_, why)) = report.unavailable.iter().find(|(u, _)| *u == c) {
            failures.push(format!(
                "fault {}: not injected on this kernel: {why}",
                c.key()
            ));
            continue;
        }
        let injected: Vec<&Injection> = report.injections.iter().filter(|i| i.class == c).collect();
        let detected = injected
            .iter()
            .filter(|i| lines.iter().any(|l| reports(l, i)))
            .count();
        let line = format!(
            "fault {}: injected {}, detected {} as {} ({})",
            c.key(),
            injected.len(),
            detected,
            c.kind(),
            if detected == injected.len() {
                "evidence ok"
            } else {
                "MISSED"
            }
        );
        if injected.len() < PER_CLASS || detected < injected.len() {
            failures.push(line);
        } else {
            info.push(line);
        }
    }
    let faulted: HashSet<u64> = report.injections.iter().map(|i| i.vma).collect();
    let stray: Vec<String> = lines
        .iter()
        .filter(|l| {
            l.pointer("/vma/addr")
                .and_then(Value::as_str)
                .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                .is_none_or(|a| !faulted.contains(&a))
        })
        .map(|l| {
            format!(
                "{} on {}",
                l.get("kind").and_then(Value::as_str).unwrap_or("?"),
                l.pointer("/vma/addr")
                    .and_then(Value::as_str)
                    .unwrap_or("?")
            )
        })
        .collect();
    if !stray.is_empty() {
        failures.push(format!(
            "faults: {} anomalies on VMAs no fault touched: {}",
            stray.len(),
            stray.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    info.push(format!(
        "faults: {} anomalies in the faulted phase, {} breakpoint stops",
        lines.len(),
        report.stops
    ));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(points: &[(&str, &str)], ves_vma: Option<u64>) -> Value {
        json!({"plan": {
            "offsets": {"vma_vm_refcnt": 128, "vma_vm_lock_seq": 40, "vma_vm_mm": 16,
                        "mm_mm_lock_seq": 248, "ves_vma": ves_vma},
            "points": points.iter().map(|(t, p)| json!({"target": t, "program": p}))
                .collect::<Vec<_>>(),
        }})
    }

    const KALLSYMS: &str = "ffffffff81234560 T __vma_start_write\n\
        ffffffff81234800 t __vma_start_exclude_readers\n\
        ffffffff81300000 T vm_area_free\n";

    #[test]
    fn the_layout_comes_from_the_plan_and_kallsyms() {
        let p = plan(
            &[
                ("__vma_start_exclude_readers", "vser_kprobe"),
                ("vm_area_free", "vaf_kprobe"),
            ],
            Some(0),
        );
        let l = layout(&p, KALLSYMS).unwrap();
        assert_eq!(
            (l.vm_refcnt, l.vm_lock_seq, l.vm_mm, l.mm_lock_seq),
            (128, 40, 16, 248)
        );
        assert_eq!(l.ves_vma, Some(0));
        assert_eq!(l.start_write, Some(0xffffffff81234560));
        assert_eq!(l.vm_area_free, Some(0xffffffff81300000));
        assert_eq!(
            l.exclude_entry,
            Some(("__vma_start_exclude_readers".into(), 0xffffffff81234800))
        );
        // Start-exclude's return alone is not an entry sample; kallsyms zeroed (no
        // root) gives no address at all.
        let p = plan(&[("__vma_start_exclude_readers", "vser_kretprobe")], None);
        assert_eq!(layout(&p, KALLSYMS).unwrap().exclude_entry, None);
        let zeroed: String = KALLSYMS
            .lines()
            .map(|l| format!("0000000000000000{}\n", &l[16..]))
            .collect();
        assert_eq!(layout(&p, &zeroed).unwrap().start_write, None);
        // An offset missing from the plan is an error, not a guess.
        assert!(layout(&json!({"plan": {"offsets": {}}}), KALLSYMS).is_err());
    }

    fn anomaly(kind: &str, vma: u64, event: Value) -> String {
        json!({"type": "anomaly", "kind": kind, "vma": {"addr": format!("{vma:#x}")},
               "event": event, "evidence": []})
        .to_string()
    }

    fn report(n: usize) -> Report {
        let mut r = Report::default();
        for (i, c) in FaultClass::ALL.iter().enumerate() {
            for k in 0..n {
                let seen = match c {
                    FaultClass::StaleLockSeq => 7,
                    FaultClass::FreeWithReference => 1,
                    FaultClass::RefcountCorrupted => 2 * F,
                    _ => F + 1,
                };
                r.injections.push(Injection {
                    class: *c,
                    vma: 0xff00_0000 + (i * 16 + k) as u64 * 0x100,
                    seen,
                });
            }
        }
        r
    }

    fn log_for(r: &Report) -> String {
        r.injections
            .iter()
            .map(|i| {
                let ev = match i.class {
                    FaultClass::StaleLockSeq => json!({"vm_lock_seq": i.seen}),
                    _ => json!({"refcnt": i.seen}),
                };
                anomaly(i.class.kind(), i.vma, ev)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn every_fault_must_be_reported_with_its_kind_on_its_vma() {
        let r = report(PER_CLASS);
        let (mut info, mut failures) = (vec![], vec![]);
        judge(&r, &log_for(&r), &mut info, &mut failures);
        assert!(failures.is_empty(), "{failures:?}");
        assert!(info.iter().any(|l| l
            == &format!(
                "fault stale_lock_seq: injected {PER_CLASS}, detected {PER_CLASS} as write_lock_not_taken (evidence ok)"
            )));
        // One report missing, one of the wrong kind, one without the faulted value, and
        // one on a VMA no fault touched: each fails.
        let mut lines: Vec<String> = log_for(&r).lines().map(str::to_string).collect();
        lines.remove(0);
        lines[PER_CLASS] = lines[PER_CLASS].replace("exclusion_not_ended", "lost_wakeup");
        lines[2 * PER_CLASS] = lines[2 * PER_CLASS].replace("\"refcnt\":1", "\"refcnt\":0");
        lines.push(anomaly(
            "free_while_referenced",
            0x1234,
            json!({"refcnt": 1}),
        ));
        let (mut info, mut failures) = (vec![], vec![]);
        judge(&r, &lines.join("\n"), &mut info, &mut failures);
        assert_eq!(failures.len(), 4, "{failures:?}");
        assert!(
            failures
                .iter()
                .any(|f| f.contains("stale_lock_seq") && f.contains("MISSED"))
        );
        assert!(
            failures
                .iter()
                .any(|f| f.contains("on VMAs no fault touched"))
        );
        // Too few injections fail even when each was seen; so does an injector error.
        let mut few = report(PER_CLASS - 1);
        few.error = Some("boom".into());
        let (mut info, mut failures) = (vec![], vec![]);
        judge(&few, &log_for(&few), &mut info, &mut failures);
        assert_eq!(failures.len(), FaultClass::ALL.len() + 1, "{failures:?}");
    }

    #[test]
    fn the_docs_name_every_fault_class_with_its_kind() {
        let vm = include_str!("../../../docs/vm-tests.md");
        let kinds = include_str!("../../../docs/anomaly-kinds.md");
        for c in FaultClass::ALL {
            let row = vm
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", c.key())))
                .unwrap_or_else(|| panic!("docs/vm-tests.md has no row for {}", c.key()));
            assert!(row.ends_with(&format!("| `{}` |", c.kind())), "{row}");
            let row = kinds
                .lines()
                .find(|l| l.starts_with(&format!("| `{}` |", c.kind())))
                .unwrap_or_else(|| panic!("docs/anomaly-kinds.md has no row for {}", c.kind()));
            assert!(row.ends_with(&format!("| `{}` |", c.key())), "{row}");
        }
    }
}
