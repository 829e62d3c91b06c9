//! The kernel's per-VMA lock functions as atomic steps on one VMA and its mm.
//!
//! Each task runs one kernel path, one atomic step at a time, so an explorer can try
//! every interleaving:
//!
//! - [`Role::Reader`]: `lock_vma_under_rcu` → `vma_start_read` (early seq check,
//!   `__refcount_inc_not_zero_limited_acquire`, re-check, `vma_refcount_put` on failure),
//!   and on success `vma_end_read` → `vma_refcount_put` → `rcuwait_wake_up`.
//! - [`Role::Writer`]: `mmap_write_lock`, `vma_start_write[_killable]` →
//!   `__vma_start_write` (start-exclude: add F unless 0, `rcuwait_wait_event`, store
//!   `vm_lock_seq`, end-exclude: sub F), optionally `vma_mark_detached` (fast decrement,
//!   slow path excluding with target F), then `mmap_write_unlock`.
//!
//! The step granularity follows what is atomic in the kernel: one atomic RMW on
//! `vm_refcnt`, one read/write of a seq, one `rcuwait` operation. In the wait loop,
//! `set_current_state()` and the condition check are one step: the full barrier in
//! `set_current_state` orders them, and a waker's decrement and its wake-up stay separate
//! steps, which is where lost wake-ups would hide.
//!
//! `no_std`, no allocation: the explorer (std) and the eBPF-free tests drive it.

use crate::event::EventKind;

use super::{
    Generation,
    refcnt::{self, F, VM_LOCK_SEQ_INIT, VM_REFCNT_LIMIT},
};

/// Tasks in one world (readers + writers).
pub const MAX_TASKS: usize = 6;

/// Which kernel path a task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// An unused slot.
    Idle,
    /// `lock_vma_under_rcu`, then `vma_end_read` if it got the VMA.
    Reader,
    /// `mmap_write_lock`; `vma_start_write` (or `vma_start_write_killable` when
    /// `killable`, 6.19+ `dup_mmap`); `vma_mark_detached` when `detach`;
    /// `mmap_write_unlock`.
    Writer { killable: bool, detach: bool },
    /// A new VMA's life under one `mmap_write_lock`: `vma_start_write` on the detached
    /// VMA (no exclusion, `docs/protocol.md#race-8`), `vma_mark_attached`, then `vma_mark_detached`
    /// when `detach` (a failed mmap / munmap), `mmap_write_unlock`.
    Attacher { detach: bool },
}

/// Deliberately broken variants, to show that the checks can fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Bug {
    /// The reader increments with plain `refcount_inc_not_zero`, ignoring the flag.
    ReaderIgnoresFlag,
    /// `vma_refcount_put` never calls `rcuwait_wake_up`.
    PutNeverWakes,
    /// The waiter checks its condition before publishing itself in `rcuwait`, then sleeps
    /// without re-checking: the classic lost wake-up.
    CheckBeforeRegister,
}

impl Bug {
    pub const ALL: [Bug; 3] = [
        Bug::ReaderIgnoresFlag,
        Bug::PutNeverWakes,
        Bug::CheckBeforeRegister,
    ];

    pub const fn key(self) -> &'static str {
        match self {
            Bug::ReaderIgnoresFlag => "reader_ignores_flag",
            Bug::PutNeverWakes => "put_never_wakes",
            Bug::CheckBeforeRegister => "check_before_register",
        }
    }
}

/// What a step machine models: the generation's semantics, and an optional bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    pub generation: Generation,
    pub bug: Option<Bug>,
}

/// Program counter: the next step of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pc {
    // --- reader: vma_start_read / vma_end_read
    /// `READ_ONCE(vm_lock_seq) == mm_lock_seq` early check.
    ReadEarlyCheck,
    /// `__refcount_inc_not_zero_limited_acquire(&vm_refcnt, &old, VM_REFCNT_LIMIT)`.
    ReadInc,
    /// Acquire re-check of `vm_lock_seq` against the mm sequence.
    ReadRecheck,
    /// Holds a read lock (the fault is being handled).
    ReadHolding,
    /// `vma_refcount_put`: the decrement. `locked`: this ends a real read lock
    /// (`vma_end_read`), not an ephemeral increment.
    ReadPut {
        locked: bool,
    },
    /// `vma_refcount_put`: `rcuwait_wake_up(&mm->vma_writer_wait)` after the decrement.
    ReadWake {
        locked: bool,
    },

    // --- writer: mmap_write_lock / __vma_start_write / vma_mark_detached
    MmapWriteLock,
    /// Inline `vma_start_write`: return if already locked, else record the mm sequence.
    StartWrite,
    /// Start-exclude: `refcount_add_not_zero(F, &vm_refcnt)`.
    StartExclude {
        detaching: bool,
    },
    /// `prepare_to_rcuwait`: publish the task in `mm->vma_writer_wait`.
    PrepareWait {
        detaching: bool,
    },
    /// `set_current_state(state)` + condition check (+ `signal_pending_state`).
    WaitCheck {
        detaching: bool,
    },
    /// `schedule()`: runs only once the task state is back to running.
    Schedule {
        detaching: bool,
    },
    /// Interrupted wait: the flag is removed inside start-exclude, `-EINTR` returned.
    ExcludeInterrupted,
    /// `WRITE_ONCE(vma->vm_lock_seq, mm_lock_seq)`. `excluded`: readers were excluded.
    StoreSeq {
        excluded: bool,
    },
    /// End-exclude: `refcount_sub_and_test(F, &vm_refcnt)`.
    EndExclude {
        detaching: bool,
    },
    /// `vma_mark_attached`: `refcount_set_release(&vm_refcnt, 1)`.
    MarkAttached,
    /// `vma_mark_detached` fast path: the plain decrement.
    DetachDec,
    MmapWriteUnlock,

    Done,
}

/// How a task's kernel path ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    Running,
    /// `lock_vma_under_rcu` returned the VMA (and it was released).
    ReadLocked,
    /// `vma_start_read` returned NULL: write-locked, flag set or limit.
    ReadBusy,
    /// `vma_start_read` returned `-EAGAIN`: the VMA is detached.
    ReadDetached,
    /// `__vma_start_write` returned 0 (the VMA is write-locked).
    WriteLocked,
    /// `__vma_start_write` returned `-EINTR`.
    WriteInterrupted,
    /// Write-locked, then `vma_mark_detached` completed.
    Detached,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Task {
    pub role: Role,
    pub pc: Pc,
    /// `current->__state` is not `TASK_RUNNING`: `schedule()` would block.
    pub sleeping: bool,
    /// A fatal signal is pending (`SIGKILL`).
    pub fatal_signal: bool,
    /// The mm sequence recorded by `__vma_start_write`.
    pub seq: u32,
    pub outcome: Outcome,
}

impl Task {
    pub const IDLE: Task = Task {
        role: Role::Idle,
        pc: Pc::Done,
        sleeping: false,
        fatal_signal: false,
        seq: 0,
        outcome: Outcome::Running,
    };

    pub const fn new(role: Role) -> Self {
        let pc = match role {
            Role::Idle => Pc::Done,
            Role::Reader => Pc::ReadEarlyCheck,
            Role::Writer { .. } | Role::Attacher { .. } => Pc::MmapWriteLock,
        };
        Task {
            role,
            pc,
            ..Task::IDLE
        }
    }

    pub const fn done(&self) -> bool {
        matches!(self.pc, Pc::Done)
    }

    /// Between its add of F and its sub of F: this task holds the exclusion flag.
    pub const fn holds_flag(&self) -> bool {
        matches!(
            self.pc,
            Pc::PrepareWait { .. }
                | Pc::WaitCheck { .. }
                | Pc::Schedule { .. }
                | Pc::ExcludeInterrupted
                | Pc::StoreSeq { excluded: true }
                | Pc::EndExclude { .. }
        )
    }

    /// Past the wait with readers excluded: no reader may hold the VMA now.
    pub const fn readers_excluded(&self) -> bool {
        matches!(
            self.pc,
            Pc::StoreSeq { excluded: true } | Pc::EndExclude { .. }
        )
    }

    /// Asleep in `rcuwait_wait_event` (nothing but a wake-up or signal moves it).
    pub const fn waiting(&self) -> Option<bool> {
        match self.pc {
            Pc::Schedule { detaching } if self.sleeping => Some(detaching),
            _ => None,
        }
    }

    /// The wait state this task uses: `TASK_KILLABLE` only for
    /// `vma_start_write_killable` on generations that have it, and never for a detach.
    pub const fn killable(&self, generation: Generation, detaching: bool) -> bool {
        matches!(self.role, Role::Writer { killable: true, .. })
            && !detaching
            && generation.has_killable_writers()
    }
}

/// One atomic step: which task did what, in kernel terms, with its typed result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `vma_start_read` early check; `locked`: the VMA looked write-locked (NULL).
    EarlyCheck {
        locked: bool,
    },
    /// The limited increment; `Err(old)` when it refused (`old == 0` → `-EAGAIN`).
    IncNotZeroLimited {
        result: Result<u32, u32>,
    },
    /// The acquire re-check; `locked`: the reader drops its increment and fails.
    Recheck {
        locked: bool,
    },
    /// `vma_end_read` begins.
    EndRead,
    /// `vma_refcount_put`'s decrement; `wake`: the new value leaves readers excluded.
    RefcountPut {
        new: u32,
        wake: bool,
    },
    /// `rcuwait_wake_up`; `woke`: a task was waiting.
    RcuwaitWakeUp {
        woke: bool,
    },
    MmapWriteLock {
        seq: u32,
    },
    /// Inline `vma_start_write`: `already`: `vm_lock_seq == mm_lock_seq`, nothing to do.
    StartWrite {
        already: bool,
    },
    /// Start-exclude's add; `detached`: the count was 0, nothing excluded.
    AddExcludeFlag {
        detaching: bool,
        detached: bool,
    },
    PrepareToRcuwait,
    /// Wait condition; `reached`: `vm_refcnt` is the target; `interrupted`: fatal signal.
    WaitCheck {
        reached: bool,
        interrupted: bool,
    },
    Schedule,
    /// The `-EINTR` path removes the flag.
    ExcludeInterrupted {
        now: u32,
    },
    /// `excluded`: readers were excluded first (end-exclude follows).
    StoreVmLockSeq {
        seq: u32,
        excluded: bool,
    },
    /// End-exclude's sub; `detached`: it reached 0.
    EndExclude {
        detaching: bool,
        detached: bool,
    },
    /// `vma_mark_attached`; `was`: the count it overwrote (the kernel WARNs unless 0).
    MarkAttached {
        was: u32,
    },
    /// `vma_mark_detached` fast path; `zero`: no spurious reader, done.
    DetachDec {
        zero: bool,
    },
    MmapWriteUnlock {
        seq: u32,
    },
    /// A fatal signal is delivered to a killable writer.
    FatalSignal,
}

impl Op {
    /// The kernel function (7.0 names; 6.x where they differ) this step belongs to.
    pub const fn function(&self, generation: Generation) -> &'static str {
        let v7 = matches!(generation, Generation::V7_0);
        match self {
            Op::EarlyCheck { .. } | Op::IncNotZeroLimited { .. } | Op::Recheck { .. } => {
                "vma_start_read"
            }
            Op::EndRead => "vma_end_read",
            Op::RefcountPut { .. } => "vma_refcount_put",
            Op::RcuwaitWakeUp { .. } => "rcuwait_wake_up",
            Op::MmapWriteLock { .. } => "mmap_write_lock",
            Op::StartWrite { .. } | Op::StoreVmLockSeq { .. } => "__vma_start_write",
            Op::AddExcludeFlag { .. }
            | Op::PrepareToRcuwait
            | Op::WaitCheck { .. }
            | Op::Schedule
            | Op::ExcludeInterrupted { .. } => {
                if v7 {
                    "__vma_start_exclude_readers"
                } else {
                    "__vma_enter_locked"
                }
            }
            Op::EndExclude { .. } => {
                if v7 {
                    "__vma_end_exclude_readers"
                } else {
                    "__vma_exit_locked"
                }
            }
            Op::MarkAttached { .. } => "vma_mark_attached",
            Op::DetachDec { .. } => "vma_mark_detached",
            Op::MmapWriteUnlock { .. } => "mmap_write_unlock",
            Op::FatalSignal => "signal (SIGKILL)",
        }
    }

    /// The event the tracer records for this step on `generation`, if the step is
    /// observable there (`docs/protocol.md#observability`). Most reader puts are inlined
    /// and invisible; the wake-up they make is not.
    pub const fn observed_as(&self, generation: Generation) -> Option<EventKind> {
        // 6.15–6.18 inline start/end-exclude; 7.x inlines the fast detach.
        let excl_visible = !matches!(generation, Generation::V6_15);
        let fast_detach_visible = !matches!(generation, Generation::V7_0);
        Some(match self {
            Op::IncNotZeroLimited { .. } => EventKind::ReaderAcquire,
            Op::RefcountPut { .. } => EventKind::ReaderRelease,
            Op::RcuwaitWakeUp { .. } => EventKind::WriterWake,
            Op::StartWrite { already: false } => EventKind::WriteLockEnter,
            Op::AddExcludeFlag {
                detaching: true,
                detached: true,
            } => EventKind::DetachExit,
            Op::AddExcludeFlag { .. } if excl_visible => EventKind::ExcludeEnter,
            Op::WaitCheck { reached: true, .. } | Op::ExcludeInterrupted { .. } if excl_visible => {
                EventKind::ExcludeExit
            }
            Op::StoreVmLockSeq {
                excluded: false, ..
            }
            | Op::EndExclude {
                detaching: false, ..
            } => EventKind::WriteLockExit,
            Op::DetachDec { zero: true } if fast_detach_visible => EventKind::DetachExit,
            Op::DetachDec { zero: false } => EventKind::DetachEnter,
            Op::EndExclude {
                detaching: true, ..
            } => EventKind::DetachExit,
            Op::MmapWriteUnlock { .. } => EventKind::MmWriteUnlock,
            _ => return None,
        })
    }

    /// A short label for the automaton's edges: function plus the step's meaning.
    pub const fn label(&self, generation: Generation) -> (&'static str, &'static str) {
        let what = match self {
            Op::EarlyCheck { locked: true } => "early check: write-locked → NULL",
            Op::EarlyCheck { locked: false } => "early check passes",
            Op::IncNotZeroLimited { result: Ok(_) } => "inc (not zero, below limit)",
            Op::IncNotZeroLimited { result: Err(0) } => "inc refused: detached → -EAGAIN",
            Op::IncNotZeroLimited { result: Err(_) } => "inc refused: flag set / limit → NULL",
            Op::Recheck { locked: true } => "re-check: write-locked → drop",
            Op::Recheck { locked: false } => "re-check passes: read-locked",
            Op::EndRead => "release",
            Op::RefcountPut { wake: true, .. } => "dec, leaves readers excluded",
            Op::RefcountPut { wake: false, .. } => "dec",
            Op::RcuwaitWakeUp { woke: true } => "wakes the excluder",
            Op::RcuwaitWakeUp { woke: false } => "nobody waiting",
            Op::MmapWriteLock { .. } => "mm_lock_seq++ (odd)",
            Op::StartWrite { already: true } => "already write-locked",
            Op::StartWrite { already: false } => "record mm_lock_seq",
            Op::AddExcludeFlag { detached: true, .. } => "add F refused: count is 0",
            Op::AddExcludeFlag {
                detaching: true, ..
            } => "add F (detach, target F)",
            Op::AddExcludeFlag {
                detaching: false, ..
            } => "add F (write, target F+1)",
            Op::PrepareToRcuwait => "publish waiter",
            Op::WaitCheck { reached: true, .. } => "target reached",
            Op::WaitCheck {
                interrupted: true, ..
            } => "fatal signal → -EINTR",
            Op::WaitCheck { .. } => "target not reached: sleep",
            Op::Schedule => "woken",
            Op::ExcludeInterrupted { .. } => "sub F on -EINTR",
            Op::StoreVmLockSeq { .. } => "vm_lock_seq = mm_lock_seq",
            Op::EndExclude {
                detaching: true, ..
            } => "sub F → 0 (detached)",
            Op::EndExclude {
                detaching: false, ..
            } => "sub F",
            Op::MarkAttached { .. } => "set 1",
            Op::DetachDec { zero: true } => "dec 1 → 0",
            Op::DetachDec { zero: false } => "dec leaves a spurious reader",
            Op::MmapWriteUnlock { .. } => "mm_lock_seq++ (even): write locks end",
            Op::FatalSignal => "fatal signal pending",
        };
        (self.function(generation), what)
    }
}

/// One step with the index of the task that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Step {
    pub task: u8,
    pub op: Op,
}

/// One VMA, its mm, and the tasks working on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct World {
    /// `vma->vm_refcnt`
    pub vm_refcnt: u32,
    /// `vma->vm_lock_seq`
    pub vm_lock_seq: u32,
    /// `mm->mm_lock_seq.sequence`
    pub mm_lock_seq: u32,
    /// Task holding `mm->mmap_lock` for write.
    pub mmap_lock_owner: Option<u8>,
    /// `mm->vma_writer_wait.task`
    pub vma_writer_wait: Option<u8>,
    pub tasks: [Task; MAX_TASKS],
}

impl World {
    /// An attached, unlocked VMA (`vm_refcnt == 1`, `vm_lock_seq` as `vma_lock_init`
    /// leaves it) and the given tasks. Extra roles beyond [`MAX_TASKS`] are ignored.
    pub fn new(roles: &[Role]) -> Self {
        let mut tasks = [Task::IDLE; MAX_TASKS];
        for (slot, role) in tasks.iter_mut().zip(roles) {
            *slot = Task::new(*role);
        }
        World {
            vm_refcnt: 1,
            vm_lock_seq: VM_LOCK_SEQ_INIT,
            mm_lock_seq: 0,
            mmap_lock_owner: None,
            vma_writer_wait: None,
            tasks,
        }
    }

    /// `vm_lock_seq == mm_lock_seq`.
    pub const fn write_locked(&self) -> bool {
        refcnt::is_write_locked(self.vm_lock_seq, self.mm_lock_seq)
    }

    /// A new VMA as `vm_area_alloc` returns it: detached, `vm_lock_seq` at its init.
    pub fn new_detached(roles: &[Role]) -> Self {
        World {
            vm_refcnt: 0,
            ..World::new(roles)
        }
    }

    pub fn all_done(&self) -> bool {
        self.tasks.iter().all(Task::done)
    }

    // ----- the kernel's primitives ---------------------------------------------------

    /// `__refcount_inc_not_zero_limited_acquire`: `Ok(old)` after incrementing, or
    /// `Err(old)` without writing when `old == 0` or `old + 1 > limit`.
    pub fn refcount_inc_not_zero_limited(&mut self, limit: u32) -> Result<u32, u32> {
        let old = self.vm_refcnt;
        if old == 0 || 1 > limit.wrapping_sub(old) || old > limit {
            return Err(old);
        }
        self.vm_refcnt = old + 1;
        Ok(old)
    }

    /// `refcount_add_not_zero(i)`: false (no write) if the count is 0.
    pub fn refcount_add_not_zero(&mut self, i: u32) -> bool {
        if self.vm_refcnt == 0 {
            return false;
        }
        self.vm_refcnt = self.vm_refcnt.wrapping_add(i);
        true
    }

    /// `refcount_sub_and_test(i)`: true if the count reached 0.
    pub fn refcount_sub_and_test(&mut self, i: u32) -> bool {
        self.vm_refcnt = self.vm_refcnt.wrapping_sub(i);
        self.vm_refcnt == 0
    }

    /// `vma_refcount_put`'s decrement: the new value, and whether the kernel then calls
    /// `rcuwait_wake_up` (`__vma_are_readers_excluded(new)` / `is_vma_writer_only`).
    pub fn vma_refcount_put_dec(&mut self) -> (u32, bool) {
        let old = self.vm_refcnt;
        self.vm_refcnt = old.wrapping_sub(1);
        (self.vm_refcnt, refcnt::put_must_wake(old))
    }

    /// `rcuwait_wake_up(&mm->vma_writer_wait)`: wake the published task, if any.
    pub fn rcuwait_wake_up(&mut self) -> bool {
        match self.vma_writer_wait {
            Some(t) => {
                if let Some(task) = self.tasks.get_mut(t as usize) {
                    task.sleeping = false;
                }
                true
            }
            None => false,
        }
    }

    /// `vma_mark_attached`: `refcount_set_release(&vm_refcnt, 1)` on a detached VMA.
    pub fn vma_mark_attached(&mut self) {
        self.vm_refcnt = 1;
    }

    // ----- steps ---------------------------------------------------------------------

    /// Every step the world can take next, with the resulting world.
    pub fn successors(&self, cfg: &ModelConfig, mut emit: impl FnMut(Step, World)) {
        for i in 0..MAX_TASKS {
            let mut next = *self;
            if let Some(op) = next.step(cfg, i) {
                emit(Step { task: i as u8, op }, next);
            }
            // The environment: a fatal signal may arrive at any time.
            let t = &self.tasks[i];
            if matches!(t.role, Role::Writer { killable: true, .. })
                && cfg.generation.has_killable_writers()
                && !t.fatal_signal
                && !t.done()
            {
                let mut next = *self;
                let t = &mut next.tasks[i];
                t.fatal_signal = true;
                // signal_wake_up: TASK_KILLABLE includes TASK_WAKEKILL.
                if matches!(t.pc, Pc::Schedule { detaching: false }) {
                    t.sleeping = false;
                }
                emit(
                    Step {
                        task: i as u8,
                        op: Op::FatalSignal,
                    },
                    next,
                );
            }
        }
    }

    /// Task `i` takes its next step, if it can.
    pub fn step(&mut self, cfg: &ModelConfig, i: usize) -> Option<Op> {
        let me = i as u8;
        let task = self.tasks[i];
        let bug = cfg.bug;
        let (pc, op) = match task.pc {
            Pc::Done => return None,

            Pc::ReadEarlyCheck => {
                let locked = self.write_locked();
                if locked {
                    self.tasks[i].outcome = Outcome::ReadBusy;
                    (Pc::Done, Op::EarlyCheck { locked })
                } else {
                    (Pc::ReadInc, Op::EarlyCheck { locked })
                }
            }
            Pc::ReadInc => {
                let result = if bug == Some(Bug::ReaderIgnoresFlag) {
                    // refcount_inc_not_zero: only 0 stops it.
                    self.refcount_inc_not_zero_limited(u32::MAX - 1)
                } else {
                    self.refcount_inc_not_zero_limited(VM_REFCNT_LIMIT)
                };
                match result {
                    Ok(_) => (Pc::ReadRecheck, Op::IncNotZeroLimited { result }),
                    Err(old) => {
                        self.tasks[i].outcome = if old == 0 {
                            Outcome::ReadDetached
                        } else {
                            Outcome::ReadBusy
                        };
                        (Pc::Done, Op::IncNotZeroLimited { result })
                    }
                }
            }
            Pc::ReadRecheck => {
                let locked = self.write_locked();
                if locked {
                    (Pc::ReadPut { locked: false }, Op::Recheck { locked })
                } else {
                    (Pc::ReadHolding, Op::Recheck { locked })
                }
            }
            Pc::ReadHolding => (Pc::ReadPut { locked: true }, Op::EndRead),
            Pc::ReadPut { locked } => {
                let (new, wake) = self.vma_refcount_put_dec();
                if wake && bug != Some(Bug::PutNeverWakes) {
                    (Pc::ReadWake { locked }, Op::RefcountPut { new, wake })
                } else {
                    self.tasks[i].outcome = read_outcome(locked);
                    (Pc::Done, Op::RefcountPut { new, wake })
                }
            }
            Pc::ReadWake { locked } => {
                let woke = self.rcuwait_wake_up();
                self.tasks[i].outcome = read_outcome(locked);
                (Pc::Done, Op::RcuwaitWakeUp { woke })
            }

            Pc::MmapWriteLock => {
                if self.mmap_lock_owner.is_some() {
                    return None;
                }
                self.mmap_lock_owner = Some(me);
                // mm_lock_seqcount_begin: odd while write-held.
                self.mm_lock_seq = self.mm_lock_seq.wrapping_add(1);
                (
                    Pc::StartWrite,
                    Op::MmapWriteLock {
                        seq: self.mm_lock_seq,
                    },
                )
            }
            Pc::StartWrite => {
                let already = self.write_locked();
                if already {
                    self.tasks[i].outcome = Outcome::WriteLocked;
                    (after_write_lock(task.role), Op::StartWrite { already })
                } else {
                    self.tasks[i].seq = self.mm_lock_seq;
                    (
                        Pc::StartExclude { detaching: false },
                        Op::StartWrite { already },
                    )
                }
            }
            Pc::StartExclude { detaching } => {
                let added = self.refcount_add_not_zero(F);
                let op = Op::AddExcludeFlag {
                    detaching,
                    detached: !added,
                };
                match (added, detaching) {
                    (true, _) if bug == Some(Bug::CheckBeforeRegister) => {
                        (Pc::WaitCheck { detaching }, op)
                    }
                    (true, _) => (Pc::PrepareWait { detaching }, op),
                    // A new VMA not linked yet: nothing to exclude, the seq is still stored.
                    (false, false) => (Pc::StoreSeq { excluded: false }, op),
                    // The spurious reader already left: detached.
                    (false, true) => {
                        self.tasks[i].outcome = Outcome::Detached;
                        (Pc::MmapWriteUnlock, op)
                    }
                }
            }
            Pc::PrepareWait { detaching } => {
                self.vma_writer_wait = Some(me);
                if bug == Some(Bug::CheckBeforeRegister) {
                    // Publishes itself after the check, then sleeps without re-checking.
                    self.tasks[i].sleeping = true;
                    (Pc::Schedule { detaching }, Op::PrepareToRcuwait)
                } else {
                    (Pc::WaitCheck { detaching }, Op::PrepareToRcuwait)
                }
            }
            Pc::WaitCheck { detaching } => {
                let reached = self.vm_refcnt == refcnt::exclude_target(detaching);
                let interrupted =
                    !reached && task.fatal_signal && task.killable(cfg.generation, detaching);
                if reached || interrupted {
                    // finish_rcuwait
                    self.vma_writer_wait = None;
                    self.tasks[i].sleeping = false;
                    let pc = match (interrupted, detaching) {
                        (true, _) => Pc::ExcludeInterrupted,
                        (false, true) => Pc::EndExclude { detaching: true },
                        (false, false) => Pc::StoreSeq { excluded: true },
                    };
                    (
                        pc,
                        Op::WaitCheck {
                            reached,
                            interrupted,
                        },
                    )
                } else if bug == Some(Bug::CheckBeforeRegister) {
                    (
                        Pc::PrepareWait { detaching },
                        Op::WaitCheck {
                            reached,
                            interrupted,
                        },
                    )
                } else {
                    self.tasks[i].sleeping = true;
                    (
                        Pc::Schedule { detaching },
                        Op::WaitCheck {
                            reached,
                            interrupted,
                        },
                    )
                }
            }
            Pc::Schedule { detaching } => {
                if task.sleeping {
                    return None;
                }
                (Pc::WaitCheck { detaching }, Op::Schedule)
            }
            Pc::ExcludeInterrupted => {
                self.refcount_sub_and_test(F);
                self.tasks[i].outcome = Outcome::WriteInterrupted;
                (
                    Pc::MmapWriteUnlock,
                    Op::ExcludeInterrupted {
                        now: self.vm_refcnt,
                    },
                )
            }
            Pc::StoreSeq { excluded } => {
                self.vm_lock_seq = task.seq;
                let op = Op::StoreVmLockSeq {
                    seq: task.seq,
                    excluded,
                };
                if excluded {
                    (Pc::EndExclude { detaching: false }, op)
                } else {
                    self.tasks[i].outcome = Outcome::WriteLocked;
                    (after_write_lock(task.role), op)
                }
            }
            Pc::EndExclude { detaching } => {
                let detached = self.refcount_sub_and_test(F);
                let op = Op::EndExclude {
                    detaching,
                    detached,
                };
                if detaching {
                    self.tasks[i].outcome = Outcome::Detached;
                    (Pc::MmapWriteUnlock, op)
                } else {
                    self.tasks[i].outcome = Outcome::WriteLocked;
                    (after_write_lock(task.role), op)
                }
            }
            Pc::MarkAttached => {
                let was = self.vm_refcnt;
                self.vma_mark_attached();
                let pc = match task.role {
                    Role::Attacher { detach: true } => Pc::DetachDec,
                    _ => Pc::MmapWriteUnlock,
                };
                (pc, Op::MarkAttached { was })
            }
            Pc::DetachDec => {
                let zero = self.refcount_sub_and_test(1);
                if zero {
                    self.tasks[i].outcome = Outcome::Detached;
                    (Pc::MmapWriteUnlock, Op::DetachDec { zero })
                } else {
                    (Pc::StartExclude { detaching: true }, Op::DetachDec { zero })
                }
            }
            Pc::MmapWriteUnlock => {
                // vma_end_write_all → mm_lock_seqcount_end: every VMA write lock ends.
                self.mm_lock_seq = self.mm_lock_seq.wrapping_add(1);
                self.mmap_lock_owner = None;
                (
                    Pc::Done,
                    Op::MmapWriteUnlock {
                        seq: self.mm_lock_seq,
                    },
                )
            }
        };
        self.tasks[i].pc = pc;
        Some(op)
    }
}

const fn read_outcome(locked: bool) -> Outcome {
    if locked {
        Outcome::ReadLocked
    } else {
        Outcome::ReadBusy
    }
}

const fn after_write_lock(role: Role) -> Pc {
    match role {
        Role::Writer { detach: true, .. } => Pc::DetachDec,
        Role::Attacher { .. } => Pc::MarkAttached,
        _ => Pc::MmapWriteUnlock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: ModelConfig = ModelConfig {
        generation: Generation::V7_0,
        bug: None,
    };

    /// Run the tasks in the given order until each blocks or finishes.
    fn run(w: &mut World, order: &[usize]) {
        for &i in order {
            while w.step(&CFG, i).is_some() {}
        }
    }

    #[test]
    fn reader_alone_locks_and_releases() {
        let mut w = World::new(&[Role::Reader]);
        run(&mut w, &[0]);
        assert_eq!(w.tasks[0].outcome, Outcome::ReadLocked);
        assert_eq!(w.vm_refcnt, 1);
    }

    #[test]
    fn writer_then_detach_then_reader_gets_eagain() {
        let mut w = World::new(&[
            Role::Writer {
                killable: false,
                detach: true,
            },
            Role::Reader,
        ]);
        run(&mut w, &[0, 1]);
        assert_eq!(w.tasks[0].outcome, Outcome::Detached);
        assert_eq!(w.vm_refcnt, 0);
        assert_eq!(w.tasks[1].outcome, Outcome::ReadDetached);
        assert_eq!(w.mm_lock_seq, 2);
    }

    #[test]
    fn writer_waits_for_a_holding_reader_and_is_woken() {
        let mut w = World::new(&[
            Role::Reader,
            Role::Writer {
                killable: false,
                detach: false,
            },
        ]);
        // Reader: early check, inc, re-check → holding.
        for _ in 0..3 {
            w.step(&CFG, 0);
        }
        assert_eq!(w.tasks[0].pc, Pc::ReadHolding);
        run(&mut w, &[1]);
        assert_eq!(w.tasks[1].pc, Pc::Schedule { detaching: false });
        assert_eq!(w.vm_refcnt, F + 2);
        run(&mut w, &[0]);
        assert_eq!(w.vm_refcnt, F + 1);
        assert!(!w.tasks[1].sleeping);
        run(&mut w, &[1]);
        assert_eq!(w.tasks[1].outcome, Outcome::WriteLocked);
        assert_eq!(w.vm_refcnt, 1);
    }
}
