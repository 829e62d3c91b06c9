//! The one event record the eBPF programs stream through the `EVENTS` ring buffer.
//!
//! A single fixed-size `repr(C)` record keeps the kernel side simple (one reserve, one
//! submit) and makes userspace decode a bounds check plus an unaligned read. Which fields
//! are meaningful is said by [`Event::flags`]; what the kernel function was is said by
//! [`Event::probe`], the logical meaning by [`Event::kind`].

/// What happened, in the kernel's terms. The discriminants are part of the trace file
/// format: never renumber, only append.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    /// Entry of `__vma_start_write` (the slow path of `vma_start_write[_killable]`).
    /// `arg` = `state` (7.x, 6.19) or the `mm_lock_seq` argument (6.15–6.18).
    WriteLockEnter = 1,
    /// Return of `__vma_start_write`: `ret` = 0 / -EINTR (void before 6.19 → 0);
    /// refcount, `vm_lock_seq` and `mm_lock_seq` read after the write lock was taken.
    /// On 6.x and 7.x this also closes the exclusion (end-exclude is inlined).
    WriteLockExit = 2,
    /// Entry of start-exclude: `__vma_start_exclude_readers(ves)` (7.x) or
    /// `__vma_enter_locked(vma, detaching, state)` (6.19). `ves_*` fields valid.
    ExcludeEnter = 3,
    /// Return of start-exclude: `ret` (7.x 0/-EINTR; 6.19 1/0/-EINTR), `ves_detached`,
    /// `ves_exclusive` (7.x), `wait_ns` = time spent waiting for readers.
    ExcludeExit = 4,
    /// Entry of a detach: `vma_mark_detached` (6.15–6.19, every detach) or
    /// `__vma_exclude_readers_for_detach` (7.x, slow path only: a spurious reader).
    DetachEnter = 5,
    /// Return of the detach function: refcount must be 0.
    DetachExit = 6,
    /// Return of `lock_vma_under_rcu` (sampled): `arg` = address, `ret` = VMA or 0.
    ReaderAcquire = 7,
    /// `vma_refcount_put` entry (only its out-of-line copy, fault-retry sites).
    ReaderRelease = 8,
    /// `rcuwait_wake_up(&mm->vma_writer_wait)` called while that mm has an excluding task
    /// (the last reader's put). `arg` = rcuwait*; VMA fields are the excluded VMA's.
    /// `ret` (with `flags::RET`): 1 = a task was registered in `w->task` (kprobe entry) or
    /// was woken (fexit); 0 = nobody registered yet — the legal race where the put comes
    /// before the excluder enters `rcuwait_wait_event`.
    WriterWake = 9,
    /// All VMA write locks of `mm` end: `mmap_lock_released(write=true)` or a downgrade.
    MmWriteUnlock = 10,
    /// A VMA object starts a new life: return of `vm_area_alloc` / `vm_area_dup`.
    VmaAlloc = 11,
    /// `vm_area_free` entry: the object leaves; the refcount must be 0.
    VmaFree = 12,
    /// Sent just before a writer-path return (`probe` says which function) whose wait
    /// reached `--slow-wait`: why that writer was slow. `arg` = the task's syscall number
    /// (`orig_ax`; `u64::MAX` when it could not be read), `ret` = the kernel stack's id in
    /// `STACKS` (negative: `bpf_get_stackid` failed), `wait_ns` = the return's wait; the
    /// header and VMA fields are the return's. Not a lock transition: the validator skips it.
    SlowWait = 13,
}

impl EventKind {
    pub const ALL: &'static [EventKind] = &[
        EventKind::WriteLockEnter,
        EventKind::WriteLockExit,
        EventKind::ExcludeEnter,
        EventKind::ExcludeExit,
        EventKind::DetachEnter,
        EventKind::DetachExit,
        EventKind::ReaderAcquire,
        EventKind::ReaderRelease,
        EventKind::WriterWake,
        EventKind::MmWriteUnlock,
        EventKind::VmaAlloc,
        EventKind::VmaFree,
        EventKind::SlowWait,
    ];

    pub const fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => EventKind::WriteLockEnter,
            2 => EventKind::WriteLockExit,
            3 => EventKind::ExcludeEnter,
            4 => EventKind::ExcludeExit,
            5 => EventKind::DetachEnter,
            6 => EventKind::DetachExit,
            7 => EventKind::ReaderAcquire,
            8 => EventKind::ReaderRelease,
            9 => EventKind::WriterWake,
            10 => EventKind::MmWriteUnlock,
            11 => EventKind::VmaAlloc,
            12 => EventKind::VmaFree,
            13 => EventKind::SlowWait,
            _ => return None,
        })
    }

    /// Stable snake_case name (logs, JSON, the TUI).
    pub const fn key(self) -> &'static str {
        match self {
            EventKind::WriteLockEnter => "write_lock_enter",
            EventKind::WriteLockExit => "write_lock_exit",
            EventKind::ExcludeEnter => "exclude_enter",
            EventKind::ExcludeExit => "exclude_exit",
            EventKind::DetachEnter => "detach_enter",
            EventKind::DetachExit => "detach_exit",
            EventKind::ReaderAcquire => "reader_acquire",
            EventKind::ReaderRelease => "reader_release",
            EventKind::WriterWake => "writer_wake",
            EventKind::MmWriteUnlock => "mm_write_unlock",
            EventKind::VmaAlloc => "vma_alloc",
            EventKind::VmaFree => "vma_free",
            EventKind::SlowWait => "slow_wait",
        }
    }
}

/// Which kernel function (attach point) produced an event. Part of the trace format.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeId {
    Unknown = 0,
    VmaStartWrite = 1,
    VmaStartExcludeReaders = 2,
    VmaEnterLocked = 3,
    VmaMarkDetached = 4,
    VmaExcludeReadersForDetach = 5,
    LockVmaUnderRcu = 6,
    LockNextVma = 7,
    VmaRefcountPut = 8,
    RcuwaitWakeUp = 9,
    MmapLockReleased = 10,
    MmapLockAcquireReturned = 11,
    VmAreaAlloc = 12,
    VmAreaDup = 13,
    VmAreaFree = 14,
}

impl ProbeId {
    pub const fn from_u8(v: u8) -> Self {
        match v {
            1 => ProbeId::VmaStartWrite,
            2 => ProbeId::VmaStartExcludeReaders,
            3 => ProbeId::VmaEnterLocked,
            4 => ProbeId::VmaMarkDetached,
            5 => ProbeId::VmaExcludeReadersForDetach,
            6 => ProbeId::LockVmaUnderRcu,
            7 => ProbeId::LockNextVma,
            8 => ProbeId::VmaRefcountPut,
            9 => ProbeId::RcuwaitWakeUp,
            10 => ProbeId::MmapLockReleased,
            11 => ProbeId::MmapLockAcquireReturned,
            12 => ProbeId::VmAreaAlloc,
            13 => ProbeId::VmAreaDup,
            14 => ProbeId::VmAreaFree,
            _ => ProbeId::Unknown,
        }
    }

    /// The kernel function or tracepoint name.
    pub const fn kernel_name(self) -> &'static str {
        match self {
            ProbeId::Unknown => "?",
            ProbeId::VmaStartWrite => "__vma_start_write",
            ProbeId::VmaStartExcludeReaders => "__vma_start_exclude_readers",
            ProbeId::VmaEnterLocked => "__vma_enter_locked",
            ProbeId::VmaMarkDetached => "vma_mark_detached",
            ProbeId::VmaExcludeReadersForDetach => "__vma_exclude_readers_for_detach",
            ProbeId::LockVmaUnderRcu => "lock_vma_under_rcu",
            ProbeId::LockNextVma => "lock_next_vma",
            ProbeId::VmaRefcountPut => "vma_refcount_put",
            ProbeId::RcuwaitWakeUp => "rcuwait_wake_up",
            ProbeId::MmapLockReleased => "mmap_lock:mmap_lock_released",
            ProbeId::MmapLockAcquireReturned => "mmap_lock:mmap_lock_acquire_returned",
            ProbeId::VmAreaAlloc => "vm_area_alloc",
            ProbeId::VmAreaDup => "vm_area_dup",
            ProbeId::VmAreaFree => "vm_area_free",
        }
    }
}

/// One slot of `READER_FALLBACKS`: on one CPU, one process's readers that fell back to
/// `mmap_lock` because of a writer (every one, not sampled). `tgid` 0: a free slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderFallbacks {
    pub tgid: u32,
    pub pad: u32,
    pub count: u64,
    /// The comm of the task whose fallback took the slot.
    pub comm: [u8; 16],
}

/// `struct vma_exclude_readers_state` (7.0+) or 6.19's start-exclude arguments, as an
/// event read them ([`Event::ves`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VesRead {
    pub state: u32,
    pub detaching: bool,
    pub detached: bool,
    pub exclusive: bool,
}

/// [`Event::flags`] bits: which groups of fields were read.
pub mod flags {
    /// `vma`, `vm_start`, `vm_end`, `vm_flags`, `refcnt`, `vm_lock_seq` were read.
    pub const VMA_FIELDS: u16 = 1 << 0;
    /// `mm` and `mm_lock_seq` were read.
    pub const MM_SEQ: u16 = 1 << 1;
    /// `ves_state`, `ves_detaching` (and at exit `ves_detached`, `ves_exclusive`) valid.
    pub const VES: u16 = 1 << 2;
    /// `ret` valid.
    pub const RET: u16 = 1 << 3;
    /// This return event was paired with its entry in the kernel: `wait_ns` and
    /// `entry_refcnt` are valid.
    pub const PAIRED: u16 = 1 << 4;
    /// A `bpf_probe_read_kernel` failed while filling this event.
    pub const READ_FAILED: u16 = 1 << 5;
    /// This return event also stands for its entry, which was not streamed (the default:
    /// an entry program then only saves what the return needs, see `Event::folded_entry`).
    /// `arg` holds the entry's `vm_lock_seq` (high half) and the entry event's own `arg`
    /// (low half); the entry's `vm_refcnt` is `entry_refcnt`, its time `ts_ns - wait_ns`.
    pub const FOLDED: u16 = 1 << 6;
}

/// One observed sample. 128 bytes, 8-aligned, no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    /// `bpf_get_current_pid_tgid()`: tgid << 32 | tid.
    pub pid_tgid: u64,
    /// `struct vm_area_struct *` (0 when none).
    pub vma: u64,
    /// `struct mm_struct *` (`vma->vm_mm`, or the tracepoint's mm).
    pub mm: u64,
    pub vm_start: u64,
    pub vm_end: u64,
    pub vm_flags: u64,
    /// Per-kind argument (see [`EventKind`]).
    pub arg: u64,
    /// Return value, sign-extended (pointers as their bits).
    pub ret: i64,
    /// For paired return events: ns between entry and return.
    pub wait_ns: u64,
    /// `vma->vm_refcnt` at the probe.
    pub refcnt: u32,
    /// `vma->vm_lock_seq` at the probe.
    pub vm_lock_seq: u32,
    /// `vma->vm_mm->mm_lock_seq.sequence` at the probe.
    pub mm_lock_seq: u32,
    /// `ves->state` (7.x) / `state` argument (6.19).
    pub ves_state: u32,
    /// [`EventKind`] as u16.
    pub kind: u16,
    /// [`flags`] bits.
    pub flags: u16,
    pub ves_detaching: u8,
    pub ves_detached: u8,
    pub ves_exclusive: u8,
    /// [`ProbeId`] as u8.
    pub probe: u8,
    /// `bpf_get_smp_processor_id()`.
    pub cpu: u32,
    /// For paired return events: `vm_refcnt` read at entry.
    pub entry_refcnt: u32,
    /// `bpf_get_current_comm()`.
    pub comm: [u8; 16],
}

pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();

impl Event {
    pub const ZERO: Self = Self {
        ts_ns: 0,
        pid_tgid: 0,
        vma: 0,
        mm: 0,
        vm_start: 0,
        vm_end: 0,
        vm_flags: 0,
        arg: 0,
        ret: 0,
        wait_ns: 0,
        refcnt: 0,
        vm_lock_seq: 0,
        mm_lock_seq: 0,
        ves_state: 0,
        kind: 0,
        flags: 0,
        ves_detaching: 0,
        ves_detached: 0,
        ves_exclusive: 0,
        probe: 0,
        cpu: 0,
        entry_refcnt: 0,
        comm: [0; 16],
    };

    pub const fn kind(&self) -> Option<EventKind> {
        EventKind::from_u16(self.kind)
    }
    pub const fn probe(&self) -> ProbeId {
        ProbeId::from_u8(self.probe)
    }
    pub const fn tgid(&self) -> u32 {
        (self.pid_tgid >> 32) as u32
    }
    pub const fn tid(&self) -> u32 {
        self.pid_tgid as u32
    }
    pub const fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    // The typed view: each field group only where its flag says it was read, so a
    // consumer never tests flags itself.

    /// The function's return value, for a return that read it ([`flags::RET`]).
    pub const fn returned(&self) -> Option<i64> {
        if self.has(flags::RET) {
            Some(self.ret)
        } else {
            None
        }
    }

    /// The mm's `mm_lock_seq`, when read ([`flags::MM_SEQ`]).
    pub const fn mm_seq(&self) -> Option<u32> {
        if self.has(flags::MM_SEQ) {
            Some(self.mm_lock_seq)
        } else {
            None
        }
    }

    /// How long the call took, for a return paired with its entry ([`flags::PAIRED`]).
    pub const fn waited_ns(&self) -> Option<u64> {
        if self.has(flags::PAIRED) {
            Some(self.wait_ns)
        } else {
            None
        }
    }

    /// `vm_refcnt` at the entry, for a return paired with its entry ([`flags::PAIRED`]).
    pub const fn entry_refcnt_read(&self) -> Option<u32> {
        if self.has(flags::PAIRED) {
            Some(self.entry_refcnt)
        } else {
            None
        }
    }

    /// The exclusion's state as read ([`flags::VES`]).
    pub const fn ves(&self) -> Option<VesRead> {
        if self.has(flags::VES) {
            Some(VesRead {
                state: self.ves_state,
                detaching: self.ves_detaching != 0,
                detached: self.ves_detached != 0,
                exclusive: self.ves_exclusive != 0,
            })
        } else {
            None
        }
    }

    /// The entry event a [`flags::FOLDED`] return stands for, and the return as it would
    /// have been streamed next to it; `None` for any other event.
    ///
    /// The entry is what its program would have sent: same task, VMA, mm and `ves` inputs
    /// (`state`, `detaching`: the callee does not change them), the entry's time,
    /// `vm_refcnt` and `vm_lock_seq`, no return value. Two things are the return's: `cpu`
    /// (a waiting writer may return on another CPU) and `mm_lock_seq`, which cannot move
    /// in between because every folded function runs under the mmap write lock.
    pub fn unfold(&self) -> Option<(Event, Event)> {
        if !self.has(flags::FOLDED) || !self.has(flags::PAIRED) {
            return None;
        }
        let enter = match self.kind()? {
            EventKind::WriteLockExit => EventKind::WriteLockEnter,
            EventKind::ExcludeExit => EventKind::ExcludeEnter,
            EventKind::DetachExit => EventKind::DetachEnter,
            _ => return None,
        };
        let mut exit = *self;
        exit.arg = 0;
        exit.flags &= !flags::FOLDED;
        let mut entry = exit;
        entry.kind = enter as u16;
        entry.ts_ns = self.ts_ns.wrapping_sub(self.wait_ns);
        entry.refcnt = self.entry_refcnt;
        entry.vm_lock_seq = (self.arg >> 32) as u32;
        entry.arg = self.arg & 0xffff_ffff;
        entry.ret = 0;
        entry.wait_ns = 0;
        entry.entry_refcnt = 0;
        entry.ves_detached = 0;
        entry.ves_exclusive = 0;
        entry.flags &= !(flags::RET | flags::PAIRED);
        Some((entry, exit))
    }

    /// Decode one record from a byte slice (ring-buffer item or trace file).
    /// Returns `None` if the slice is too short; never panics.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.first_chunk::<EVENT_SIZE>().map(Self::from_array)
    }

    /// A whole record (what the ring buffer and the trace file hold).
    pub fn from_array(bytes: &[u8; EVENT_SIZE]) -> Self {
        // SAFETY: exactly EVENT_SIZE bytes; `Event` is `repr(C)` made only of integers,
        // so every bit pattern is a valid value; `read_unaligned` has no alignment demand.
        unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) }
    }

    /// An event built by hand (tests, benchmarks, the simulator): `kind` from `probe`,
    /// every other field zero; the `with_*` methods fill the rest and set the flags
    /// that say the fields were read, as a program does.
    pub const fn new(kind: EventKind, probe: ProbeId) -> Self {
        let mut e = Self::ZERO;
        e.kind = kind as u16;
        e.probe = probe as u8;
        e
    }

    pub const fn at(mut self, ts_ns: u64) -> Self {
        self.ts_ns = ts_ns;
        self
    }

    /// The task: `tgid` (the process) and `tid`.
    pub const fn with_task(mut self, tgid: u32, tid: u32) -> Self {
        self.pid_tgid = ((tgid as u64) << 32) | tid as u64;
        self
    }

    /// `comm`, cut to 15 bytes as the kernel's is.
    pub fn with_comm(mut self, name: &str) -> Self {
        self.comm = [0; 16];
        let n = name.len().min(15);
        self.comm[..n].copy_from_slice(&name.as_bytes()[..n]);
        self
    }

    /// The VMA, its mm and its user range (`vm_start..vm_end`).
    pub const fn with_vma(mut self, vma: u64, mm: u64, vm_start: u64, vm_end: u64) -> Self {
        self.vma = vma;
        self.mm = mm;
        self.vm_start = vm_start;
        self.vm_end = vm_end;
        self
    }

    /// A sample: `vm_refcnt`, `vm_lock_seq` and the mm's `mm_lock_seq` (sets
    /// `VMA_FIELDS` and `MM_SEQ`).
    pub const fn with_sample(mut self, refcnt: u32, vm_lock_seq: u32, mm_lock_seq: u32) -> Self {
        self.refcnt = refcnt;
        self.vm_lock_seq = vm_lock_seq;
        self.mm_lock_seq = mm_lock_seq;
        self.flags |= flags::VMA_FIELDS | flags::MM_SEQ;
        self
    }

    /// The return value (sets `RET`).
    pub const fn with_ret(mut self, ret: i64) -> Self {
        self.ret = ret;
        self.flags |= flags::RET;
        self
    }

    pub const fn with_arg(mut self, arg: u64) -> Self {
        self.arg = arg;
        self
    }

    /// The exclusion's inputs, as start-exclude's entry reads them: `ves->state` and
    /// `ves->detaching` (sets `VES`).
    pub const fn with_ves(mut self, state: u32, detaching: bool) -> Self {
        self.ves_state = state;
        self.ves_detaching = detaching as u8;
        self.flags |= flags::VES;
        self
    }

    /// The exclusion's outcome, as start-exclude's return reads it: `ves->detached` and
    /// `ves->exclusive` (sets `VES`).
    pub const fn with_ves_outcome(mut self, detached: bool, exclusive: bool) -> Self {
        self.ves_detached = detached as u8;
        self.ves_exclusive = exclusive as u8;
        self.flags |= flags::VES;
        self
    }

    /// A return paired with its entry in the kernel: the call took `wait_ns` and its
    /// entry read `vm_refcnt` = `entry_refcnt` (sets `PAIRED`).
    pub const fn paired(mut self, wait_ns: u64, entry_refcnt: u32) -> Self {
        self.wait_ns = wait_ns;
        self.entry_refcnt = entry_refcnt;
        self.flags |= flags::PAIRED;
        self
    }

    /// The record's bytes, as the kernel wrote them.
    pub fn as_bytes(&self) -> &[u8; EVENT_SIZE] {
        // SAFETY: `Event` has no padding (asserted by `const _` below) and is
        // plain-old-data, so viewing it as bytes is sound.
        unsafe { &*(self as *const Event).cast::<[u8; EVENT_SIZE]>() }
    }
}

// The record is part of the kernel↔userspace ABI and of the trace file format.
const _: () = assert!(EVENT_SIZE == 128);
const _: () = assert!(core::mem::align_of::<Event>() == 8);
const _: () = assert!(core::mem::offset_of!(Event, refcnt) == 80);
const _: () = assert!(core::mem::offset_of!(Event, kind) == 96);
const _: () = assert!(core::mem::offset_of!(Event, comm) == 112);

#[cfg(feature = "user")]
// SAFETY: repr(C), Copy, integers only, no padding.
unsafe impl aya::Pod for Event {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each group of the typed view is there exactly when its flag is.
    #[test]
    fn the_typed_view_follows_the_flags() {
        let mut e = Event::ZERO;
        e.ret = -4;
        e.mm_lock_seq = 7;
        e.wait_ns = 9;
        e.entry_refcnt = 3;
        e.ves_state = 2;
        e.ves_detaching = 1;
        assert_eq!(
            (
                e.returned(),
                e.mm_seq(),
                e.waited_ns(),
                e.entry_refcnt_read()
            ),
            (None, None, None, None)
        );
        assert_eq!(e.ves(), None);
        e.flags = flags::RET | flags::MM_SEQ | flags::PAIRED | flags::VES;
        assert_eq!(e.returned(), Some(-4));
        assert_eq!(e.mm_seq(), Some(7));
        assert_eq!((e.waited_ns(), e.entry_refcnt_read()), (Some(9), Some(3)));
        let v = e.ves().unwrap();
        assert!(v.detaching && !v.detached && !v.exclusive && v.state == 2);
    }

    /// The builder sets each field group with the flag that says it was read, so the
    /// typed view sees exactly what was built.
    #[test]
    fn the_builder_sets_fields_with_their_flags() {
        let e = Event::new(EventKind::ExcludeExit, ProbeId::VmaStartExcludeReaders)
            .at(500)
            .with_task(7, 9)
            .with_sample(0x4000_0001, 3, 5)
            .with_ret(0)
            .with_ves(2, true)
            .with_ves_outcome(false, true)
            .paired(120, 2);
        assert_eq!((e.ts_ns, e.tgid(), e.tid()), (500, 7, 9));
        assert_eq!((e.returned(), e.mm_seq()), (Some(0), Some(5)));
        assert_eq!((e.waited_ns(), e.entry_refcnt_read()), (Some(120), Some(2)));
        assert_eq!(
            e.ves(),
            Some(VesRead {
                state: 2,
                detaching: true,
                detached: false,
                exclusive: true
            })
        );
        assert!(e.has(flags::VMA_FIELDS) && !e.has(flags::FOLDED));
        let bare = Event::new(EventKind::ExcludeEnter, ProbeId::VmaStartExcludeReaders);
        assert_eq!(bare.flags, 0);
        assert_eq!(bare.ves(), None);
    }

    #[test]
    fn roundtrip_bytes() {
        let mut e = Event::ZERO;
        e.kind = EventKind::ExcludeExit as u16;
        e.refcnt = 0x4000_0001;
        e.pid_tgid = (7u64 << 32) | 9;
        let b = *e.as_bytes();
        let d = Event::from_bytes(&b).unwrap();
        assert_eq!(d, e);
        assert_eq!(d.kind(), Some(EventKind::ExcludeExit));
        assert_eq!((d.tgid(), d.tid()), (7, 9));
        assert!(Event::from_bytes(&b[..127]).is_none());
    }

    #[test]
    fn kinds_roundtrip() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::from_u16(*k as u16), Some(*k));
        }
        assert_eq!(EventKind::from_u16(0), None);
        assert_eq!(EventKind::from_u16(999), None);
    }

    /// A start-exclude return that folded its entry: writer excluded readers from a VMA
    /// that had one reader (entry `vm_refcnt` 2), return with F+1.
    fn folded_exclude() -> Event {
        let mut e = Event::ZERO;
        e.kind = EventKind::ExcludeExit as u16;
        e.probe = ProbeId::VmaStartExcludeReaders as u8;
        e.flags = flags::VMA_FIELDS | flags::MM_SEQ | flags::VES | flags::RET | flags::PAIRED;
        e.flags |= flags::FOLDED;
        e.ts_ns = 10_000;
        e.wait_ns = 2_500;
        e.pid_tgid = (7u64 << 32) | 9;
        e.vma = 0xffff_8880_0000_1000;
        e.refcnt = 0x4000_0001;
        e.entry_refcnt = 2;
        e.vm_lock_seq = 41;
        e.mm_lock_seq = 43;
        e.arg = (41u64 << 32) | 0x102;
        e.ves_state = 2;
        e.ves_exclusive = 1;
        e
    }

    #[test]
    fn a_folded_return_unfolds_into_its_entry_and_itself() {
        let f = folded_exclude();
        let (entry, exit) = f.unfold().unwrap();
        assert_eq!(entry.kind(), Some(EventKind::ExcludeEnter));
        assert_eq!(entry.ts_ns, 7_500);
        assert_eq!((entry.refcnt, entry.vm_lock_seq, entry.arg), (2, 41, 0x102));
        assert_eq!((entry.ves_state, entry.ves_exclusive, entry.ret), (2, 0, 0));
        assert!(!entry.has(flags::RET) && !entry.has(flags::PAIRED) && !entry.has(flags::FOLDED));
        assert!(entry.has(flags::VES) && entry.has(flags::VMA_FIELDS));
        assert_eq!(
            (entry.vma, entry.pid_tgid, entry.mm_lock_seq),
            (f.vma, f.pid_tgid, 43)
        );
        // The return is the one that would have been streamed: no fold, no packed arg.
        let mut want = f;
        want.flags &= !flags::FOLDED;
        want.arg = 0;
        assert_eq!(exit, want);
    }

    #[test]
    fn only_folded_paired_returns_unfold() {
        let mut f = folded_exclude();
        f.flags &= !flags::FOLDED;
        assert!(f.unfold().is_none());
        let mut f = folded_exclude();
        f.flags &= !flags::PAIRED;
        assert!(f.unfold().is_none());
        let mut f = folded_exclude();
        f.kind = EventKind::ReaderAcquire as u16;
        assert!(f.unfold().is_none());
        let mut f = folded_exclude();
        f.kind = 999;
        assert!(f.unfold().is_none());
        for (exit, enter) in [
            (EventKind::WriteLockExit, EventKind::WriteLockEnter),
            (EventKind::DetachExit, EventKind::DetachEnter),
        ] {
            let mut f = folded_exclude();
            f.kind = exit as u16;
            assert_eq!(f.unfold().unwrap().0.kind(), Some(enter));
        }
    }
}
