//! Validator tests: every anomaly kind from a hand-made sequence, every race of
//! `docs/protocol.md#races` producing none, and random streams never panicking.

use proptest::prelude::*;
use vmatrace_common::{
    Event, EventKind,
    event::{ProbeId, flags},
    model::{
        Generation,
        generation::{EINTR, TASK_KILLABLE, TASK_UNINTERRUPTIBLE},
        refcnt::F,
    },
};

use super::{
    Anomaly, AnomalyKind, Validator,
    rules::{self, Rule},
};

const VMA: u64 = 0xffff_8880_0123_4000;
const VMA2: u64 = 0xffff_8880_0123_40c0;
const MM: u64 = 0xffff_8880_0999_0000;
const MM2: u64 = 0xffff_8880_0aaa_0000;
const WRITER: u32 = 100;
const READER: u32 = 200;
const READER2: u32 = 201;

/// Builds a stream with increasing timestamps; `seq` is the mm's current sequence.
struct Stream {
    ts: u64,
    seq: u32,
    events: Vec<Event>,
}

impl Stream {
    fn new() -> Self {
        Self {
            ts: 1_000,
            seq: 4,
            events: Vec::new(),
        }
    }

    fn push(&mut self, kind: EventKind, tid: u32, r: u32, l: u32) -> &mut Event {
        self.ts += 10;
        let e = Event::new(kind, probe_of(kind))
            .at(self.ts)
            .with_task(tid, tid)
            .with_vma(VMA, MM, 0, 0)
            .with_sample(r, l, self.seq)
            .with_ret(0);
        self.events.push(e);
        self.events.last_mut().expect("just pushed")
    }

    fn mmap_write_lock(&mut self) {
        self.seq += 1;
    }

    fn mmap_write_unlock(&mut self) {
        self.ts += 10;
        let mut e = Event::ZERO;
        e.ts_ns = self.ts;
        e.pid_tgid = (u64::from(WRITER) << 32) | u64::from(WRITER);
        e.kind = EventKind::MmWriteUnlock as u16;
        e.probe = ProbeId::MmapLockReleased as u8;
        e.mm = MM;
        e.arg = 1;
        self.events.push(e);
        self.seq += 1;
    }

    /// A complete 7.x `__vma_start_write` with no readers around.
    fn write_lock_7(&mut self, l_before: u32) {
        self.mmap_write_lock();
        self.exclude_readers_7(WRITER, l_before);
        let seq = self.seq;
        self.push(EventKind::WriteLockExit, WRITER, 1, seq);
    }

    /// A 7.x `__vma_start_write` by `tid` up to readers excluded: its entry,
    /// start-exclude's entry, and start-exclude's return with `F+1`.
    fn exclude_readers_7(&mut self, tid: u32, l_before: u32) {
        self.push(EventKind::WriteLockEnter, tid, 1, l_before).arg =
            u64::from(TASK_UNINTERRUPTIBLE);
        ves(
            self.push(EventKind::ExcludeEnter, tid, 1, l_before),
            false,
            false,
            false,
        );
        ves(
            self.push(EventKind::ExcludeExit, tid, F + 1, l_before),
            false,
            false,
            true,
        );
    }
}

fn probe_of(kind: EventKind) -> ProbeId {
    match kind {
        EventKind::WriteLockEnter | EventKind::WriteLockExit | EventKind::SlowWait => {
            ProbeId::VmaStartWrite
        }
        EventKind::ExcludeEnter | EventKind::ExcludeExit => ProbeId::VmaStartExcludeReaders,
        EventKind::DetachEnter | EventKind::DetachExit => ProbeId::VmaExcludeReadersForDetach,
        EventKind::ReaderAcquire => ProbeId::LockVmaUnderRcu,
        EventKind::ReaderRelease => ProbeId::VmaRefcountPut,
        EventKind::WriterWake => ProbeId::RcuwaitWakeUp,
        EventKind::MmWriteUnlock => ProbeId::MmapLockReleased,
        EventKind::VmaAlloc => ProbeId::VmAreaAlloc,
        EventKind::VmaFree => ProbeId::VmAreaFree,
    }
}

fn ves(e: &mut Event, detaching: bool, detached: bool, exclusive: bool) {
    e.flags |= flags::VES;
    e.ves_state = TASK_UNINTERRUPTIBLE;
    e.ves_detaching = u8::from(detaching);
    e.ves_detached = u8::from(detached);
    e.ves_exclusive = u8::from(exclusive);
}

fn run(generation: Generation, events: &[Event]) -> Vec<Anomaly> {
    let out = run_without(generation, events, None);
    // Every report comes from a row of the rule table, and that row is what makes it:
    // switched off, its reports go (and nothing else needs to stand in for it).
    let mut fired: Vec<&'static str> = out.iter().map(|a| a.rule).collect();
    fired.sort_unstable();
    fired.dedup();
    for name in fired {
        let rule = rules::by_name(name).expect("a row of the table");
        assert_eq!(
            out.iter()
                .find(|a| a.rule == name)
                .map(|a| (a.kind, a.expected.as_str())),
            Some((rule.kind, rule.expected)),
            "{name}: kind and expected come from the row"
        );
        let without = run_without(generation, events, Some(rule));
        assert!(
            without.iter().all(|a| a.rule != name),
            "{name} still reported with its row switched off"
        );
    }
    out
}

fn run_without(
    generation: Generation,
    events: &[Event],
    off: Option<&'static Rule>,
) -> Vec<Anomaly> {
    let mut v = Validator::new(generation);
    if let Some(rule) = off {
        v = v.without_rule(rule);
    }
    let mut out = Vec::new();
    for e in events {
        v.observe(e, &mut out);
    }
    // The kernel's loss counters, read after the events, show no loss.
    v.no_new_losses(&mut out);
    out
}

/// `events` delivered with every writer event first, then the reader's (each task's
/// own order kept): the late reader a ring buffer can produce.
fn writer_first(events: &[Event]) -> Vec<Event> {
    let (reader, writer): (Vec<Event>, Vec<Event>) = events.iter().partition(|e| e.tid() == READER);
    writer.into_iter().chain(reader).collect()
}

fn kinds(a: &[Anomaly]) -> Vec<&'static str> {
    a.iter().map(|a| a.kind.key()).collect()
}

fn assert_clean(generation: Generation, s: &Stream) {
    let a = run(generation, &s.events);
    assert!(a.is_empty(), "false anomalies: {:#?}", a);
}

// ----- each kind from a hand-made sequence --------------------------------------------

#[test]
fn exclusion_not_ended_at_write_lock_return() {
    let mut s = Stream::new();
    s.mmap_write_lock();
    s.exclude_readers_7(WRITER, 0);
    let seq = s.seq;
    s.push(EventKind::WriteLockExit, WRITER, F + 1, seq);
    let a = run(Generation::V7_0, &s.events);
    assert_eq!(kinds(&a), ["exclusion_not_ended"]);
    // Evidence: this VMA's history, ending with the offending event.
    assert_eq!(a[0].evidence.len(), 4);
    assert_eq!(a[0].evidence.last(), Some(&a[0].event));
    assert!(
        a[0].observed.contains("not expected in state"),
        "{}",
        a[0].observed
    );
}

#[test]
fn exclusion_not_ended_at_detach_return() {
    let mut s = Stream::new();
    s.push(EventKind::DetachExit, WRITER, F, 0);
    assert_eq!(
        kinds(&run(Generation::V7_0, &s.events)),
        ["exclusion_not_ended"]
    );
}

/// A 7.x write lock with a reader admitted between readers excluded and the lock's
/// return.
fn reader_inside_a_write_lock() -> Stream {
    let mut s = Stream::new();
    s.mmap_write_lock();
    s.exclude_readers_7(WRITER, 0);
    s.push(EventKind::ReaderAcquire, READER, F + 2, 0).ret = VMA as i64;
    let seq = s.seq;
    s.push(EventKind::WriteLockExit, WRITER, 1, seq);
    s
}

#[test]
fn reader_while_excluded_decided_when_the_window_closes() {
    let s = reader_inside_a_write_lock();
    let a = run(Generation::V7_0, &s.events);
    assert_eq!(kinds(&a), ["reader_while_excluded"]);
    assert_eq!(a[0].event.kind(), Some(EventKind::ReaderAcquire));
    // Evidence ends with the offending reader, not with the later write-lock return.
    assert_eq!(a[0].evidence.last(), Some(&a[0].event));
    assert_eq!(a[0].evidence.len(), 4);
}

/// Two write locks the mmap lock serialised, delivered interleaved (per-CPU rings): the
/// second writer's whole exclusion arrives before the first one's. A reader inside the
/// first window is still reported when that window's end arrives.
#[test]
fn reader_inside_an_exclusion_whose_end_arrives_after_the_next_one() {
    const WRITER2: u32 = WRITER + 7;
    let mut s = reader_inside_a_write_lock();
    let seq = s.seq;
    s.mmap_write_unlock();
    let first = s.events.len();
    s.mmap_write_lock();
    s.exclude_readers_7(WRITER2, seq);
    let seq2 = s.seq;
    s.push(EventKind::WriteLockExit, WRITER2, 1, seq2);
    // Delivered: the reader, the second writer, then the first writer and its unlock.
    let (w1, w2) = s.events.split_at(first);
    let reader = w1.iter().copied().filter(|e| e.tid() == READER);
    let writer1 = w1.iter().copied().filter(|e| e.tid() != READER);
    let order: Vec<Event> = reader.chain(w2.iter().copied()).chain(writer1).collect();
    let a = run(Generation::V7_0, &order);
    assert_eq!(kinds(&a), ["reader_while_excluded"], "{a:#?}");
    assert_eq!(a[0].event.kind(), Some(EventKind::ReaderAcquire));
    // In stream order there is nothing else to report.
    assert_eq!(
        kinds(&run(Generation::V7_0, &s.events)),
        ["reader_while_excluded"]
    );
}

/// The writer of a window also detaches the VMA, and the reader's event inside the
/// window is delivered after all of it (found by the model's conformance check: the
/// record was forgotten at the detach, and the late reader judged against nothing).
#[test]
fn reader_inside_a_window_delivered_after_the_vma_is_detached() {
    let mut s = reader_inside_a_write_lock();
    let seq = s.seq;
    s.push(EventKind::DetachEnter, WRITER, 1, seq);
    s.push(EventKind::DetachExit, WRITER, 0, seq);
    s.mmap_write_unlock();
    let order = writer_first(&s.events);
    let a = run(Generation::V7_0, &order);
    assert_eq!(kinds(&a), ["reader_while_excluded"], "{a:#?}");
    assert_eq!(a[0].event.kind(), Some(EventKind::ReaderAcquire));
}

/// 6.15: a `__vma_start_write` whose wait is inlined (no start-exclude events), and a
/// reader whose put reads the flag set and the VMA write-locked (the writer stored
/// `vm_lock_seq`, so it is past its wait) and whose next event comes while the writer
/// still holds its call: the reader held its reference through the writer's wait.
fn locked_put_inside_a_write_call(next_after_the_call: bool) -> Stream {
    let mut s = Stream::new();
    s.mmap_write_lock();
    let seq = s.seq;
    let enter = s.push(EventKind::WriteLockEnter, WRITER, 1, 0);
    enter.arg = u64::from(seq);
    enter.flags &= !flags::RET;
    let from = enter.ts_ns;
    s.push(EventKind::ReaderRelease, READER, F + 2, seq).flags &= !flags::RET;
    if !next_after_the_call {
        s.push(EventKind::WriterWake, READER, F + 1, seq).ret = 1;
    }
    let exit = s.push(EventKind::WriteLockExit, WRITER, 2, seq);
    exit.flags &= !flags::RET;
    exit.flags |= flags::PAIRED;
    exit.wait_ns = exit.ts_ns - from;
    if next_after_the_call {
        s.push(EventKind::WriterWake, READER, 1, seq).ret = 0;
    }
    s.mmap_write_unlock();
    s
}

#[test]
fn reader_holding_past_the_writers_wait_on_6_15() {
    let s = locked_put_inside_a_write_call(false);
    let a = run(Generation::V6_15, &s.events);
    assert_eq!(kinds(&a), ["reader_while_excluded"], "{a:#?}");
    assert_eq!(a[0].rule, rules::READERS_DRAINED_BEFORE_STORE.name);
    assert_eq!(a[0].event.kind(), Some(EventKind::ReaderRelease));
    // Delivered writer first: the call is remembered for the late reader.
    let order = writer_first(&s.events);
    assert_eq!(
        kinds(&run(Generation::V6_15, &order)),
        ["reader_while_excluded"]
    );
}

/// The same put, but its task's next event comes after the writer's call: its reads
/// may fall after the call, where only a detach's flag would make them legal. Until the
/// writer's unlock says whether it detached the VMA, nothing is decided.
#[test]
fn a_locked_put_not_bounded_inside_the_call_waits_for_the_writers_unlock() {
    let mut s = locked_put_inside_a_write_call(true);
    assert_eq!(
        s.events.pop().map(|e| e.kind()),
        Some(Some(EventKind::MmWriteUnlock))
    );
    assert_eq!(
        kinds(&run(Generation::V6_15, &s.events)),
        Vec::<&str>::new()
    );
}

/// ... and the writer unlocked the mm without detaching the VMA: from its call to its
/// unlock only it could have detached it, so no excluder but the writer past its wait
/// set the flag the put read, whatever the order the events arrive in.
#[test]
fn a_locked_put_inside_the_writers_hold_without_a_detach() {
    let s = locked_put_inside_a_write_call(true);
    let a = run(Generation::V6_15, &s.events);
    assert_eq!(kinds(&a), ["reader_while_excluded"], "{a:#?}");
    assert_eq!(a[0].rule, rules::READERS_DRAINED_BEFORE_STORE.name);
    assert_eq!(a[0].event.kind(), Some(EventKind::ReaderRelease));
    let late_reader = writer_first(&s.events);
    assert_eq!(
        kinds(&run(Generation::V6_15, &late_reader)),
        ["reader_while_excluded"]
    );
    // 6.19+ judge readers by their start-exclude windows instead.
    assert_eq!(
        kinds(&run(Generation::V6_19, &s.events)),
        Vec::<&str>::new()
    );
}

/// ... but the writer detached the VMA before its unlock: the put may have read the
/// detach's flag (legal), so nothing is reported; nor when the session cannot see every
/// detach (its hook did not attach).
#[test]
fn a_locked_put_is_not_judged_by_a_hold_with_a_detach_or_without_detach_events() {
    let mut s = locked_put_inside_a_write_call(true);
    let unlock = s.events.pop().expect("the unlock");
    let seq = s.seq - 1;
    s.push(EventKind::DetachEnter, WRITER, 1, seq);
    s.push(EventKind::DetachExit, WRITER, 0, seq);
    s.events.push(Event {
        ts_ns: s.ts + 10,
        ..unlock
    });
    assert_eq!(
        kinds(&run(Generation::V6_15, &s.events)),
        Vec::<&str>::new()
    );

    let s = locked_put_inside_a_write_call(true);
    let mut v = Validator::new(Generation::V6_15);
    v.detaches_unseen();
    let mut a = Vec::new();
    for e in &s.events {
        v.observe(e, &mut a);
    }
    v.no_new_losses(&mut a);
    assert_eq!(kinds(&a), Vec::<&str>::new());
}

/// A hold is judged only once the loss counters, which arrive after the events, show
/// that nothing was lost meanwhile: a lost detach (a kretprobe out of instances) would
/// explain the put.
#[test]
fn a_hold_waits_for_the_loss_counters() {
    let s = locked_put_inside_a_write_call(true);
    let mut v = Validator::new(Generation::V6_15);
    let mut a = Vec::new();
    for e in &s.events {
        v.observe(e, &mut a);
    }
    assert_eq!(kinds(&a), Vec::<&str>::new(), "not before the counters");
    v.note_loss();
    v.no_new_losses(&mut a);
    assert_eq!(kinds(&a), Vec::<&str>::new(), "a loss drops the hold");
    let mut v = Validator::new(Generation::V6_15);
    for e in &s.events {
        v.observe(e, &mut a);
    }
    v.finish(&mut a);
    // (The end of this short stream also owes the put's wake-up: `lost_wakeup` follows.)
    assert_eq!(
        kinds(&a).first(),
        Some(&"reader_while_excluded"),
        "the end of a finite stream confirms it: {a:#?}"
    );
}

#[test]
fn reader_while_excluded_arriving_after_the_window() {
    // The reader's event is delivered late (another CPU's batch): timestamps decide.
    let mut s = Stream::new();
    s.mmap_write_lock();
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 1, 0),
        false,
        false,
        false,
    );
    ves(
        s.push(EventKind::ExcludeExit, WRITER, F + 1, 0),
        false,
        false,
        true,
    );
    let mut reader = *s.push(EventKind::ReaderAcquire, READER, F + 2, 0);
    s.events.pop();
    reader.ret = VMA as i64;
    let seq = s.seq;
    s.push(EventKind::WriteLockExit, WRITER, 1, seq);
    s.events.push(reader);
    assert_eq!(
        kinds(&run(Generation::V7_0, &s.events)),
        ["reader_while_excluded"]
    );
}

#[test]
fn reader_while_excluded_arriving_before_any_writer_event() {
    // The reader's put is delivered first (its CPU's batch came before the writer's),
    // on a VMA the validator has not seen yet: a reference held inside the window
    // (found by the model's conformance check) must wait for the window, not be dropped.
    let mut s = Stream::new();
    s.mmap_write_lock();
    s.exclude_readers_7(WRITER, 0);
    let mut reader = *s.push(EventKind::ReaderRelease, READER, F + 2, 0);
    s.events.pop();
    reader.flags &= !flags::RET;
    let seq = s.seq;
    s.push(EventKind::WriteLockExit, WRITER, 1, seq);
    s.events.insert(0, reader);
    let a = run(Generation::V7_0, &s.events);
    assert_eq!(kinds(&a), ["reader_while_excluded"]);
    assert_eq!(a[0].event, reader);
}

#[test]
fn reader_while_write_locked() {
    let mut s = Stream::new();
    s.write_lock_7(0);
    let seq = s.seq;
    s.push(EventKind::ReaderAcquire, READER, 2, seq).ret = VMA as i64;
    assert_eq!(
        kinds(&run(Generation::V7_0, &s.events)),
        ["reader_while_write_locked"]
    );
}

#[test]
fn detach_not_zero() {
    let mut s = Stream::new();
    s.push(EventKind::DetachEnter, WRITER, 1, 5);
    s.push(EventKind::DetachExit, WRITER, 1, 5);
    assert_eq!(
        kinds(&run(Generation::V6_15, &s.events)),
        ["detach_not_zero"]
    );
}

#[test]
fn lost_wakeup_when_the_task_moves_on() {
    let mut s = Stream::new();
    s.mmap_write_lock();
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 2, 0),
        false,
        false,
        false,
    );
    // The last reader's put leaves F+1 but it goes on to its next fault without waking,
    // while the excluder is still in its call (its return comes after).
    s.push(EventKind::ReaderRelease, READER, F + 2, 0);
    s.push(EventKind::ReaderAcquire, READER, F + 1, 0);
    ves(
        s.push(EventKind::ExcludeExit, WRITER, F + 1, 0),
        false,
        false,
        true,
    );
    let a = run(Generation::V7_0, &s.events);
    assert_eq!(kinds(&a), ["lost_wakeup"]);
    assert_eq!(a[0].event.kind(), Some(EventKind::ReaderRelease));
    assert_eq!(
        a[0].evidence.last().and_then(Event::kind),
        Some(EventKind::ReaderAcquire)
    );
}

#[test]
fn no_lost_wakeup_when_woken() {
    let mut s = Stream::new();
    s.mmap_write_lock();
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 2, 0),
        false,
        false,
        false,
    );
    s.push(EventKind::ReaderRelease, READER, F + 2, 0);
    s.push(EventKind::WriterWake, READER, 0, 0).ret = 1;
    s.push(EventKind::ReaderAcquire, READER, F + 1, 0);
    ves(
        s.push(EventKind::ExcludeExit, WRITER, F + 1, 0),
        false,
        false,
        true,
    );
    let seq = s.seq;
    s.push(EventKind::WriteLockExit, WRITER, 1, seq);
    assert_clean(Generation::V7_0, &s);
}

#[test]
fn concurrent_exclusion() {
    let mut s = Stream::new();
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, F + 1, 0),
        false,
        false,
        false,
    );
    assert_eq!(
        kinds(&run(Generation::V7_0, &s.events)),
        ["concurrent_exclusion"]
    );
}

#[test]
fn refcount_out_of_range() {
    let mut s = Stream::new();
    s.push(EventKind::ReaderAcquire, READER, 2 * F + 1, 0);
    assert_eq!(
        kinds(&run(Generation::V7_0, &s.events)),
        ["refcount_out_of_range"]
    );
}

#[test]
fn write_lock_not_taken() {
    let mut s = Stream::new();
    s.mmap_write_lock();
    s.push(EventKind::WriteLockExit, WRITER, 1, 3);
    assert_eq!(
        kinds(&run(Generation::V6_15, &s.events)),
        ["write_lock_not_taken"]
    );
}

#[test]
fn free_while_referenced() {
    let mut s = Stream::new();
    s.push(EventKind::VmaFree, WRITER, 1, 0);
    assert_eq!(
        kinds(&run(Generation::V7_0, &s.events)),
        ["free_while_referenced"]
    );
}

#[test]
fn exclude_target_mismatch() {
    let mut s = Stream::new();
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 1, 0),
        false,
        false,
        false,
    );
    ves(
        s.push(EventKind::ExcludeExit, WRITER, F + 2, 0),
        false,
        false,
        true,
    );
    assert_eq!(
        kinds(&run(Generation::V7_0, &s.events)),
        ["exclude_target_mismatch"]
    );
    // 6.19: detaching saved at entry, `1` means exclusive; a detach must end at F.
    let mut s = Stream::new();
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 1, 0),
        true,
        false,
        false,
    );
    let e = s.push(EventKind::ExcludeExit, WRITER, F + 1, 0);
    e.ret = 1;
    assert_eq!(
        kinds(&run(Generation::V6_19, &s.events)),
        ["exclude_target_mismatch"]
    );
}

#[test]
fn unexpected_eintr() {
    // Uninterruptible wait cannot return -EINTR.
    let mut s = Stream::new();
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 2, 0),
        false,
        false,
        false,
    );
    let e = s.push(EventKind::ExcludeExit, WRITER, 2, 0);
    ves(e, false, false, false);
    e.ret = EINTR;
    assert_eq!(
        kinds(&run(Generation::V7_0, &s.events)),
        ["unexpected_eintr"]
    );
    // 6.15–6.18 have no killable writers at all.
    let mut s = Stream::new();
    s.push(EventKind::WriteLockExit, WRITER, 2, 0).ret = EINTR;
    assert_eq!(
        kinds(&run(Generation::V6_15, &s.events)),
        ["unexpected_eintr"]
    );
}

#[test]
fn reader_without_reference() {
    let mut s = Stream::new();
    s.push(EventKind::ReaderAcquire, READER, 1, 0).ret = VMA as i64;
    let a = run(Generation::V7_0, &s.events);
    assert_eq!(kinds(&a), ["reader_without_reference"]);
    assert_eq!(a[0].severity, super::Severity::Warning);
}

#[test]
fn every_kind_has_a_distinct_stable_key() {
    let mut keys: Vec<&str> = AnomalyKind::ALL.iter().map(|k| k.key()).collect();
    for k in AnomalyKind::ALL {
        assert_eq!(AnomalyKind::from_key(k.key()), Some(*k));
        assert_eq!(
            serde_json::to_value(k).ok(),
            Some(serde_json::json!(k.key()))
        );
    }
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), AnomalyKind::ALL.len());
}

#[test]
fn a_stuck_flag_is_reported_once_not_as_a_cascade() {
    let mut s = Stream::new();
    s.write_lock_7(0);
    // End-exclude skipped: the flag stays; later events on the VMA all see it.
    s.events.last_mut().expect("write lock exit").refcnt = F + 1;
    s.mmap_write_unlock();
    s.push(EventKind::ReaderAcquire, READER, F + 1, 5);
    s.mmap_write_lock();
    s.push(EventKind::WriteLockEnter, WRITER, F + 1, 5);
    s.push(EventKind::VmaFree, WRITER, F + 1, 5);
    assert_eq!(
        kinds(&run(Generation::V7_0, &s.events)),
        ["exclusion_not_ended"]
    );
}

// ----- the races of docs/protocol.md#races produce nothing -------------------------

#[test]
fn race_ephemeral_readers_while_write_locked() {
    let mut s = Stream::new();
    s.write_lock_7(0);
    let seq = s.seq;
    // Readers that passed the early check bump and drop the count; they all fail.
    s.push(EventKind::ReaderAcquire, READER, 2, seq);
    s.push(EventKind::ReaderAcquire, READER2, 3, seq);
    s.push(EventKind::ReaderRelease, READER2, 3, seq);
    s.push(EventKind::ReaderRelease, READER, 2, seq);
    s.mmap_write_unlock();
    s.push(EventKind::ReaderAcquire, READER, 2, seq).ret = VMA as i64;
    assert_clean(Generation::V7_0, &s);
}

#[test]
fn race_writer_arrives_while_readers_hold() {
    let mut s = Stream::new();
    s.mmap_write_lock();
    s.push(EventKind::WriteLockEnter, WRITER, 2, 0).arg = u64::from(TASK_UNINTERRUPTIBLE);
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 2, 0),
        false,
        false,
        false,
    );
    // The reader took its reference before the flag; its fexit sample sees the flag.
    s.push(EventKind::ReaderAcquire, READER, F + 2, 0).ret = VMA as i64;
    s.push(EventKind::ReaderRelease, READER, F + 2, 0);
    s.push(EventKind::WriterWake, READER, 0, 0).ret = 1;
    ves(
        s.push(EventKind::ExcludeExit, WRITER, F + 1, 0),
        false,
        false,
        true,
    );
    let seq = s.seq;
    s.push(EventKind::WriteLockExit, WRITER, 1, seq);
    s.mmap_write_unlock();
    assert_clean(Generation::V7_0, &s);
}

#[test]
fn race_spurious_reader_during_detach_7x() {
    // Fast path left 1 (a spurious reader); slow path excludes with target F.
    let mut s = Stream::new();
    s.write_lock_7(0);
    let seq = s.seq;
    s.push(EventKind::DetachEnter, WRITER, 1, seq);
    let e = s.push(EventKind::ExcludeEnter, WRITER, 1, seq);
    ves(e, true, false, false);
    // The spurious reader's put leaves F: it wakes the detacher.
    s.push(EventKind::ReaderRelease, READER, F + 1, seq);
    s.push(EventKind::WriterWake, READER, 0, 0).ret = 1;
    ves(
        s.push(EventKind::ExcludeExit, WRITER, F, seq),
        true,
        false,
        true,
    );
    s.push(EventKind::DetachExit, WRITER, 0, seq);
    s.push(EventKind::VmaFree, WRITER, 0, seq);
    assert_clean(Generation::V7_0, &s);
}

#[test]
fn race_spurious_reader_already_gone_at_add() {
    let mut s = Stream::new();
    s.write_lock_7(0);
    let seq = s.seq;
    s.push(EventKind::DetachEnter, WRITER, 0, seq);
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 0, seq),
        true,
        false,
        false,
    );
    ves(
        s.push(EventKind::ExcludeExit, WRITER, 0, seq),
        true,
        true,
        false,
    );
    s.push(EventKind::DetachExit, WRITER, 0, seq);
    assert_clean(Generation::V7_0, &s);
}

#[test]
fn race_spurious_wake_during_detach() {
    // Two spurious readers: the first put leaves F+1, which wakes the detacher for
    // nothing; it must still call rcuwait_wake_up.
    let mut s = Stream::new();
    s.write_lock_7(0);
    let seq = s.seq;
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 2, seq),
        true,
        false,
        false,
    );
    s.push(EventKind::ReaderRelease, READER, F + 2, seq);
    s.push(EventKind::WriterWake, READER, 0, 0).ret = 1;
    s.push(EventKind::ReaderRelease, READER2, F + 1, seq);
    s.push(EventKind::WriterWake, READER2, 0, 0).ret = 1;
    ves(
        s.push(EventKind::ExcludeExit, WRITER, F, seq),
        true,
        false,
        true,
    );
    s.push(EventKind::DetachExit, WRITER, 0, seq);
    assert_clean(Generation::V7_0, &s);
}

#[test]
fn race_reused_object_and_other_mm() {
    let mut s = Stream::new();
    s.push(EventKind::VmaFree, WRITER, 0, 0);
    s.push(EventKind::VmaAlloc, WRITER, 0, u32::MAX);
    // A reader of another mm bumps and drops the reused object (vm_mm mismatch).
    let e = s.push(EventKind::ReaderAcquire, READER, 2, u32::MAX);
    e.mm = MM2;
    let e = s.push(EventKind::ReaderRelease, READER, 2, u32::MAX);
    e.mm = MM2;
    assert_clean(Generation::V7_0, &s);
}

#[test]
fn race_killable_writer_interrupted() {
    for generation in [Generation::V6_19, Generation::V7_0] {
        let mut s = Stream::new();
        s.mmap_write_lock();
        s.push(EventKind::WriteLockEnter, WRITER, 2, 0).arg = u64::from(TASK_KILLABLE);
        let e = s.push(EventKind::ExcludeEnter, WRITER, 2, 0);
        ves(e, false, false, false);
        e.ves_state = TASK_KILLABLE;
        let e = s.push(EventKind::ExcludeExit, WRITER, 2, 0);
        ves(e, false, false, false);
        e.ves_state = TASK_KILLABLE;
        e.ret = EINTR;
        s.push(EventKind::WriteLockExit, WRITER, 2, 0).ret = EINTR;
        s.mmap_write_unlock();
        assert_clean(generation, &s);
    }
}

#[test]
fn race_fresh_vma_looks_write_locked_at_seq_wrap() {
    let mut s = Stream::new();
    s.seq = u32::MAX;
    s.push(EventKind::ReaderAcquire, READER, 2, u32::MAX).ret = VMA as i64;
    assert_clean(Generation::V7_0, &s);
}

#[test]
fn race_invisible_attach_and_mid_flight_start() {
    let mut s = Stream::new();
    // Tracing starts while a writer is excluding: its exit and end arrive alone.
    ves(
        s.push(EventKind::ExcludeExit, WRITER, F + 1, 0),
        false,
        false,
        true,
    );
    let seq = s.seq;
    s.push(EventKind::WriteLockExit, WRITER, 1, seq);
    s.mmap_write_unlock();
    // A detach completes, then the VMA is re-attached without any event (reattach_vmas).
    s.push(EventKind::DetachExit, WRITER, 0, seq);
    s.push(EventKind::ReaderAcquire, READER, 2, seq).ret = VMA as i64;
    assert_clean(Generation::V7_0, &s);
}

#[test]
fn full_cycles_per_generation_are_clean() {
    // 6.15: no exclude events, every detach visible.
    let mut s = Stream::new();
    s.push(EventKind::VmaAlloc, WRITER, 0, u32::MAX);
    s.mmap_write_lock();
    let seq = s.seq;
    s.push(EventKind::WriteLockEnter, WRITER, 0, u32::MAX).arg = u64::from(seq);
    s.push(EventKind::WriteLockExit, WRITER, 0, seq);
    s.mmap_write_unlock();
    s.push(EventKind::ReaderAcquire, READER, 2, seq).ret = VMA as i64;
    s.mmap_write_lock();
    let seq2 = s.seq;
    s.push(EventKind::WriteLockEnter, WRITER, 2, seq).arg = u64::from(seq2);
    s.push(EventKind::ReaderRelease, READER, F + 2, seq);
    s.push(EventKind::WriterWake, READER, 0, 0).ret = 1;
    s.push(EventKind::WriteLockExit, WRITER, 1, seq2);
    s.push(EventKind::DetachEnter, WRITER, 1, seq2);
    s.push(EventKind::DetachExit, WRITER, 0, seq2);
    s.push(EventKind::VmaFree, WRITER, 0, seq2);
    s.mmap_write_unlock();
    assert_clean(Generation::V6_15, &s);

    // 6.19: __vma_enter_locked returns 1 when exclusive.
    let mut s = Stream::new();
    s.mmap_write_lock();
    s.push(EventKind::WriteLockEnter, WRITER, 1, 0).arg = u64::from(TASK_UNINTERRUPTIBLE);
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 1, 0),
        false,
        false,
        false,
    );
    s.push(EventKind::ExcludeExit, WRITER, F + 1, 0).ret = 1;
    let seq = s.seq;
    s.push(EventKind::WriteLockExit, WRITER, 1, seq);
    s.push(EventKind::DetachEnter, WRITER, 1, seq);
    s.push(EventKind::DetachExit, WRITER, 0, seq);
    s.mmap_write_unlock();
    assert_clean(Generation::V6_19, &s);
}

#[test]
fn no_false_anomaly_after_a_loss() {
    let mut v = Validator::new(Generation::V7_0);
    let mut out = Vec::new();
    let mut s = Stream::new();
    s.push(EventKind::ReaderRelease, READER, F + 2, 0);
    for e in &s.events {
        v.observe(e, &mut out);
    }
    // The WriterWake was lost; the loss is noted before the task's next event.
    v.note_loss();
    s.events.clear();
    s.push(EventKind::ReaderAcquire, READER, 2, 0);
    for e in &s.events {
        v.observe(e, &mut out);
    }
    assert!(out.is_empty(), "{out:#?}");
    assert_eq!(v.phase_counts()[0], ("unknown", 0));
    assert_eq!(v.losses_noted(), 1);
}

// ----- bookkeeping ---------------------------------------------------------------------

#[test]
fn phase_counts_follow_the_lifecycle() {
    let mut v = Validator::new(Generation::V7_0);
    let mut out = Vec::new();
    let count = |v: &Validator, k: &str| {
        v.phase_counts()
            .into_iter()
            .find(|(n, _)| *n == k)
            .map(|(_, c)| c)
    };
    let keys: Vec<&str> = v.phase_counts().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [
            "unknown",
            "detached",
            "attached",
            "readers",
            "excluding",
            "write_locked"
        ]
    );
    let mut s = Stream::new();
    s.push(EventKind::VmaAlloc, WRITER, 0, u32::MAX);
    s.write_lock_7(u32::MAX);
    for e in &s.events {
        v.observe(e, &mut out);
    }
    assert_eq!(count(&v, "write_locked"), Some(1));
    s.events.clear();
    s.mmap_write_unlock();
    for e in &s.events {
        v.observe(e, &mut out);
    }
    assert_eq!(count(&v, "write_locked"), Some(0));
    assert_eq!(count(&v, "attached"), Some(1));
    v.note_loss();
    assert_eq!(count(&v, "unknown"), Some(1));
    s.events.clear();
    s.push(EventKind::VmaFree, WRITER, 0, 0);
    for e in &s.events {
        v.observe(e, &mut out);
    }
    assert_eq!(v.tracked_vmas(), 0);
    assert_eq!(v.phase_counts().iter().map(|(_, c)| c).sum::<u64>(), 0);
    assert!(out.is_empty(), "{out:#?}");
}

#[test]
fn tracked_vmas_are_capped_and_evictions_counted() {
    let mut v = Validator::with_capacity(Generation::V7_0, 1000);
    let mut out = Vec::new();
    for i in 0..10_000u64 {
        let mut e = Event::ZERO;
        e.kind = EventKind::VmaAlloc as u16;
        e.vma = VMA + i * 192;
        e.mm = MM;
        e.ts_ns = i;
        v.observe(&e, &mut out);
    }
    assert!(v.tracked_vmas() <= 1000, "{}", v.tracked_vmas());
    assert!(v.evicted() >= 9000, "{}", v.evicted());
    assert_eq!(
        v.phase_counts().iter().map(|(_, c)| c).sum::<u64>(),
        v.tracked_vmas() as u64
    );
    // A second VMA in the same stream is unaffected by the first one's history.
    let mut s = Stream::new();
    s.push(EventKind::VmaAlloc, WRITER, 0, 0).vma = VMA2;
    for e in &s.events {
        v.observe(e, &mut out);
    }
    assert!(out.is_empty());
}

fn arb_event() -> impl Strategy<Value = Event> {
    (
        1u16..14,
        0u32..4,
        0usize..3,
        prop_oneof![
            Just(0u32),
            Just(1),
            Just(2),
            Just(F),
            Just(F + 1),
            Just(F + 2),
            Just(2 * F),
            any::<u32>()
        ],
        0u32..4,
        0u32..4,
        prop_oneof![Just(0i64), Just(1), Just(EINTR), any::<i64>()],
        any::<u16>(),
        any::<(u8, u8, u8)>(),
        any::<u32>(),
    )
        .prop_map(|(kind, tid, vma, r, l, s, ret, fl, ves, state)| {
            let mut e = Event::ZERO;
            e.kind = kind;
            e.pid_tgid = u64::from(tid);
            e.vma = [0, VMA, VMA2][vma];
            e.mm = MM;
            e.refcnt = r;
            e.vm_lock_seq = l;
            e.mm_lock_seq = s;
            e.ret = ret;
            e.flags = fl;
            (e.ves_detaching, e.ves_detached, e.ves_exclusive) = ves;
            e.ves_state = state;
            e
        })
}

proptest! {
    #[test]
    fn random_streams_never_panic(
        events in prop::collection::vec(arb_event(), 0..200),
        gen_idx in 0usize..3,
        loss_at in any::<prop::sample::Index>(),
    ) {
        let mut v = Validator::with_capacity(Generation::ALL[gen_idx], 4);
        let mut out = Vec::new();
        let loss = loss_at.index(events.len().max(1));
        for (i, mut e) in events.into_iter().enumerate() {
            e.ts_ns = i as u64;
            if i == loss {
                v.note_loss();
            }
            v.observe(&e, &mut out);
        }
        let total: u64 = v.phase_counts().iter().map(|(_, c)| c).sum();
        prop_assert_eq!(total, v.tracked_vmas() as u64);
        for a in &out {
            prop_assert!(!a.evidence.is_empty());
        }
    }

    /// The pipeline's batched path (lookups ahead) decides exactly as one event at a
    /// time, whatever the stream (random ones give plenty of anomalies).
    #[test]
    fn a_batch_is_judged_as_its_events_one_by_one(
        events in prop::collection::vec(arb_event(), 0..200),
        gen_idx in 0usize..3,
        split in any::<prop::sample::Index>(),
    ) {
        let g = Generation::ALL[gen_idx];
        let events: Vec<Event> = events
            .into_iter()
            .enumerate()
            .map(|(i, mut e)| {
                e.ts_ns = i as u64;
                e
            })
            .collect();
        let one_by_one = run(g, &events);
        let mut v = Validator::new(g);
        let mut batched = Vec::new();
        let (a, b) = events.split_at(split.index(events.len() + 1));
        v.observe_batch(a, &mut batched);
        v.observe_batch(b, &mut batched);
        prop_assert_eq!(batched.len(), one_by_one.len());
        for (x, y) in batched.iter().zip(&one_by_one) {
            prop_assert_eq!(x.kind, y.kind);
            prop_assert_eq!(&x.observed, &y.observed);
            prop_assert_eq!(x.event.ts_ns, y.event.ts_ns);
        }
    }
}

#[test]
fn exclude_exit_before_the_last_readers_wake_is_legal() {
    // The writer checks its condition after the reader's decrement but before the
    // reader's rcuwait_wake_up: it never sleeps, and returns first.
    let mut s = Stream::new();
    s.mmap_write_lock();
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 2, 0),
        false,
        false,
        false,
    );
    s.push(EventKind::ReaderRelease, READER, F + 2, 0);
    ves(
        s.push(EventKind::ExcludeExit, WRITER, F + 1, 0),
        false,
        false,
        true,
    );
    let seq = s.seq;
    s.push(EventKind::WriteLockExit, WRITER, 1, seq);
    s.push(EventKind::WriterWake, READER, 0, 0).ret = 0;
    s.push(EventKind::ReaderAcquire, READER, 2, seq);
    assert_clean(Generation::V7_0, &s);
}

/// The excluder found its target on its own and returned between the put and the
/// task's next event: `rcuwait_wake_up` then finds no excluder in flight and is not
/// streamed. Legal (the conformance check found it).
#[test]
fn no_lost_wakeup_when_the_excluder_returned_first() {
    let mut s = Stream::new();
    s.mmap_write_lock();
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 2, 0),
        false,
        false,
        false,
    );
    s.push(EventKind::ReaderRelease, READER, F + 2, 0);
    ves(
        s.push(EventKind::ExcludeExit, WRITER, F + 1, 0),
        false,
        false,
        true,
    );
    s.push(EventKind::ReaderAcquire, READER, F + 1, 0);
    assert_eq!(kinds(&run(Generation::V7_0, &s.events)), Vec::<&str>::new());
}

#[test]
fn finish_reports_wakes_still_owed() {
    let mut v = Validator::new(Generation::V7_0);
    let mut out = Vec::new();
    let mut s = Stream::new();
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 2, 0),
        false,
        false,
        false,
    );
    s.push(EventKind::ReaderRelease, READER, F + 2, 0);
    for e in &s.events {
        v.observe(e, &mut out);
    }
    assert!(out.is_empty());
    v.finish(&mut out);
    assert_eq!(kinds(&out), ["lost_wakeup"]);
    assert!(
        out[0].observed.contains("stream ended"),
        "{}",
        out[0].observed
    );
    // Settled: a second finish reports nothing more.
    out.clear();
    v.finish(&mut out);
    assert!(out.is_empty());
}

#[test]
fn reader_admitted_during_a_detach_window() {
    // A detacher reached F; a reader ignoring the flag makes it F+1 and "succeeds".
    let mut s = Stream::new();
    s.write_lock_7(0);
    let seq = s.seq;
    s.push(EventKind::DetachEnter, WRITER, 1, seq);
    ves(
        s.push(EventKind::ExcludeEnter, WRITER, 1, seq),
        true,
        false,
        false,
    );
    s.push(EventKind::ReaderRelease, READER, F + 1, seq);
    s.push(EventKind::WriterWake, READER, 0, 0).ret = 1;
    ves(
        s.push(EventKind::ExcludeExit, WRITER, F, seq),
        true,
        false,
        true,
    );
    s.push(EventKind::ReaderAcquire, READER2, F + 1, 7).ret = VMA as i64;
    s.push(EventKind::DetachExit, WRITER, 1, seq);
    let a = run(Generation::V7_0, &s.events);
    let mut k = kinds(&a);
    k.sort_unstable();
    assert_eq!(k, ["detach_not_zero", "reader_while_excluded"]);
}

#[test]
fn lock_next_vma_error_pointer_is_not_a_reader_success() {
    let mut s = Stream::new();
    s.write_lock_7(0);
    let seq = s.seq;
    let e = s.push(EventKind::ReaderAcquire, READER, 1, seq);
    e.probe = ProbeId::LockNextVma as u8;
    e.ret = -4; // ERR_PTR(-EINTR)
    assert_clean(Generation::V7_0, &s);
}

#[test]
fn ret_is_only_read_when_the_probe_read_it() {
    // Without flags::RET the result of a 7.x __vma_start_write is unknown: no
    // write_lock_not_taken; a stuck flag is still a stuck flag.
    let mut s = Stream::new();
    s.mmap_write_lock();
    let e = s.push(EventKind::WriteLockExit, WRITER, 1, 3);
    e.flags &= !flags::RET;
    assert_clean(Generation::V7_0, &s);
    s.events[0].refcnt = F + 1;
    assert_eq!(
        kinds(&run(Generation::V7_0, &s.events)),
        ["exclusion_not_ended"]
    );
    // 6.15–6.18: void, so returning means success.
    s.events[0].refcnt = 1;
    assert_eq!(
        kinds(&run(Generation::V6_15, &s.events)),
        ["write_lock_not_taken"]
    );
    // A reader return without RET is not a success.
    let mut s = Stream::new();
    let seq = s.seq;
    let e = s.push(EventKind::ReaderAcquire, READER, 1, seq);
    e.ret = VMA as i64;
    e.flags &= !flags::RET;
    assert_clean(Generation::V7_0, &s);
}
