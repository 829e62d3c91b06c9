//! State-update tests and renderer snapshots (ratatui `TestBackend` + insta).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use vmatrace_common::event::{ProbeId, flags};
use vmatrace_common::model::Generation;
use vmatrace_common::{Counter, Event, EventKind, Offsets};

use super::render::fmt;
use super::state::{Action, AppState, DashboardContext, Screen, SourceKind, TopView};
use super::*;
use crate::kernel::plan::{
    AttachChoice, AttachMode, AttachPoint, EventCoverage, KernelId, LogicalEvent, Observability,
    ProbePlan,
};
use crate::pipeline::{CounterSnapshot, Sink, SourceItem, Totals};
use crate::stats::SortKey;
use crate::validate::Validator;
use crate::validate::{Anomaly, AnomalyKind, Severity};

const T0: u64 = 1_000_000_000_000;
/// The wall clock at T0: 2026-11-28 14:03:00 UTC.
const WALL_T0: u64 = 1_795_874_580_000_000_000;
const F: u32 = 1 << 30;

fn ev(kind: EventKind, ts_ms: u64, tgid: u32, name: &str, vma_no: u64) -> Event {
    let start = 0x7f3a_0000_0000 + vma_no * 0x20_0000;
    // Mostly 2M; some 704K, a size whose digits once got cut to "70".
    let size = if vma_no % 3 == 1 {
        704 * 1024
    } else {
        0x20_0000
    };
    let mut e = Event::new(kind, ProbeId::Unknown)
        .at(T0 + ts_ms * 1_000_000)
        .with_task(tgid, tgid + 3)
        .with_vma(
            0xffff_8880_0100_0000 + vma_no * 0x100,
            0xffff_8880_0200_0000 + u64::from(tgid) * 0x1000,
            start,
            start + size,
        )
        .with_sample(1, 41, 42)
        .with_comm(name);
    e.cpu = tgid % 4;
    e
}

fn exclude_exit(ts_ms: u64, tgid: u32, name: &str, vma_no: u64, wait_ns: u64) -> Event {
    let mut e = ev(EventKind::ExcludeExit, ts_ms, tgid, name, vma_no);
    e.flags |= flags::PAIRED | flags::RET | flags::VES;
    e.probe = ProbeId::VmaStartExcludeReaders as u8;
    e.wait_ns = wait_ns;
    e.ves_exclusive = 1;
    e.refcnt = F + 1;
    e.entry_refcnt = 3;
    e
}

fn sample_plan() -> ProbePlan {
    let point = |probe, target: &str, mode, program: &str| AttachPoint {
        probe,
        target: target.into(),
        mode,
        program: program.into(),
    };
    let points = vec![
        point(
            ProbeId::VmaStartWrite,
            "__vma_start_write",
            AttachMode::FEntry,
            "vma_start_write_entry",
        ),
        point(
            ProbeId::VmaStartWrite,
            "__vma_start_write",
            AttachMode::FExit,
            "vma_start_write_exit",
        ),
        point(
            ProbeId::VmaStartExcludeReaders,
            "__vma_start_exclude_readers",
            AttachMode::FEntry,
            "exclude_entry",
        ),
        point(
            ProbeId::VmaStartExcludeReaders,
            "__vma_start_exclude_readers",
            AttachMode::FExit,
            "exclude_exit",
        ),
        point(
            ProbeId::LockVmaUnderRcu,
            "lock_vma_under_rcu",
            AttachMode::FExit,
            "lock_vma_under_rcu_exit",
        ),
    ];
    let direct = |p: usize| Observability::Direct { points: vec![p] };
    let coverage = LogicalEvent::ALL
        .iter()
        .map(|e| EventCoverage {
            event: *e,
            status: match e {
                LogicalEvent::WriteLockRequest => direct(0),
                LogicalEvent::WriteLockResult => direct(1),
                LogicalEvent::StartExcludeEntry => direct(2),
                LogicalEvent::StartExcludeReturn => direct(3),
                LogicalEvent::ReaderAcquire => direct(4),
                LogicalEvent::EndExclude => Observability::Proxy {
                    via: "exit of __vma_start_write (end-exclude inlined)".into(),
                    points: vec![1],
                },
                LogicalEvent::MarkDetachedFast => Observability::Unobservable {
                    reason: "vma_mark_detached is inline in 7.x".into(),
                },
                _ => Observability::Unobservable {
                    reason: "not attached in this fixture".into(),
                },
            },
        })
        .collect();
    ProbePlan {
        kernel: KernelId {
            release: "7.2.13+deb14-amd64".into(),
        },
        generation: Generation::V7_0,
        offsets: Offsets::ABSENT,
        points,
        attach: AttachChoice {
            first: AttachMode::KProbe,
            preemption: "lazy".into(),
            reason: "preemption lazy (/sys/kernel/debug/sched/preempt)".into(),
        },
        coverage,
        notes: vec![],
    }
}

fn anomaly(ts_ms: u64, kind: AnomalyKind, sev: Severity, tgid: u32, name: &str) -> Anomaly {
    let mut evidence = Vec::new();
    let mut enter = ev(EventKind::ExcludeEnter, ts_ms - 2, tgid, name, 7);
    enter.refcnt = 2;
    evidence.push(enter);
    let mut acq = ev(EventKind::ReaderAcquire, ts_ms - 1, 777, "reader", 7);
    acq.flags |= flags::RET;
    acq.ret = 0xffff_8880_0100_0700_u64 as i64;
    acq.refcnt = F + 2;
    evidence.push(acq);
    let offending = exclude_exit(ts_ms, tgid, name, 7, 12_345);
    let mut offending = offending;
    offending.refcnt = F + 2;
    // Long sequence numbers, equal: write-locked. Every digit must show.
    offending.vm_lock_seq = 1_234_567_890;
    offending.mm_lock_seq = 1_234_567_890;
    evidence.push(offending);
    Anomaly {
        kind,
        severity: sev,
        rule: "exclude_reaches_target",
        event: offending,
        state: "excluding (F set by this task)".into(),
        expected: "vm_refcnt == F+1 when start-exclude returns with readers excluded".into(),
        observed: "vm_refcnt == F+2: a reader got in while the flag was set".into(),
        evidence,
    }
}

/// A state with a bit of everything, deterministic.
fn fixture() -> AppState {
    let ctx = DashboardContext::new(SourceKind::Replay, "7.2.13+deb14-amd64", Generation::V7_0)
        .with_detail("tests/data/sample.vtr")
        .with_plan(Some(sample_plan()))
        .with_clock(
            crate::trace::ClockBase {
                monotonic_ns: T0,
                realtime_ns: WALL_T0,
            },
            crate::export::clock::LocalZone::utc(),
        );
    let shared = Arc::new(Mutex::new(AppState::new(ctx)));
    // Feed the sink directly (not through a Pipeline): these screens test the dashboard,
    // not the validator's verdict on hand-made events.
    let validator = Validator::new(Generation::V7_0);
    let mut totals = Totals::default();
    let mut sink = DashboardSink::new(shared.clone());
    let mut feed = |item: SourceItem, sink: &mut DashboardSink| match item {
        SourceItem::Events(evs) => {
            for e in &evs {
                totals.count_event(e);
            }
            sink.events(&evs);
            sink.flush(&validator, &totals);
        }
        SourceItem::Counters(c) => {
            sink.counters(&c, &totals);
            totals.counters = c;
            sink.flush(&validator, &totals);
        }
        SourceItem::Stack(s) => sink.stack(&s),
        SourceItem::Undecodable(_) | SourceItem::Sequence(_) => {}
    };
    let procs = [
        (1201, "postgres"),
        (1202, "postgres"),
        (3310, "java"),
        (88, "kswapd0"),
    ];
    for sec in 0..12u64 {
        let mut batch = Vec::new();
        for (i, (tgid, name)) in procs.iter().enumerate() {
            let n = (sec as usize + i) % 5 + 1;
            for j in 0..n {
                let wait = 800
                    + ((sec * 7919 + j as u64 * 104_729 + i as u64 * 13) % 60_000) * (i as u64 + 1);
                let ts = sec * 1000 + j as u64 * 10 + i as u64;
                batch.push(ev(
                    EventKind::ExcludeEnter,
                    ts,
                    *tgid,
                    name,
                    (i * 3 + j % 2) as u64,
                ));
                batch.push(exclude_exit(ts, *tgid, name, (i * 3 + j % 2) as u64, wait));
                // The whole write-lock slow path: the exclusion and a bit more.
                let mut w = ev(
                    EventKind::WriteLockExit,
                    ts,
                    *tgid,
                    name,
                    (i * 3 + j % 2) as u64,
                );
                w.flags |= flags::PAIRED;
                w.wait_ns = wait + 300 * (j as u64 + 1);
                batch.push(w);
            }
        }
        let mut rfail = ev(EventKind::ReaderAcquire, sec * 1000 + 5, 3310, "java", 9);
        rfail.flags = flags::RET;
        rfail.ret = 0;
        batch.push(rfail);
        let mut slow = ev(EventKind::DetachEnter, sec * 1000 + 6, 1201, "postgres", 0);
        slow.probe = ProbeId::VmaExcludeReadersForDetach as u8;
        batch.push(slow);
        batch.push(ev(
            EventKind::VmaAlloc,
            sec * 1000 + 7,
            88,
            "kswapd0",
            20 + sec,
        ));
        batch.push(ev(
            EventKind::MmWriteUnlock,
            sec * 1000 + 8,
            1201,
            "postgres",
            0,
        ));
        feed(SourceItem::Events(batch), &mut sink);
        let mut c = CounterSnapshot {
            values: vec![0; 16],
            ..Default::default()
        };
        c.values[Counter::ReaderAcquireOk as usize] = 250_000 * (sec + 1) + sec * sec * 1000;
        c.values[Counter::ReaderAcquireFail as usize] = 40 * (sec + 1);
        c.values[Counter::ReaderFailExcluded as usize] = 12 * (sec + 1);
        c.values[Counter::ReaderSampled as usize] = 2_500 * (sec + 1);
        c.values[Counter::ReaderRelease as usize] = 900 * (sec + 1);
        c.values[Counter::WriterWake as usize] = 30 * (sec + 1);
        c.values[Counter::RingbufReserveFailed as usize] = if sec > 8 { 17 } else { 0 };
        c.values[Counter::ReaderFailWriter as usize] = 30 * (sec + 1);
        // Every writer-caused fallback, per process (the kernel's map, not sampled).
        c.fallbacks = [(1201u32, 21u64), (3310, 9)]
            .map(|(tgid, per_s)| crate::pipeline::ProcessFallbacks {
                tgid,
                count: per_s * (sec + 1),
                comm: [0; 16],
            })
            .to_vec();
        feed(SourceItem::Counters(c), &mut sink);
        shared.lock().unwrap().live.stats.roll_rates(1000);
    }
    let mut interrupted = exclude_exit(11_500, 3310, "java", 4, 48_000_000);
    interrupted.ret = -4;
    interrupted.ves_exclusive = 0;
    // -EINTR returns with the flag already removed (the readers it waited for remain);
    // F+1 here would be a genuine `exclusion_not_ended` for the validator.
    interrupted.refcnt = 2;
    // The fork's killable wait reached --slow-wait: its syscall and stack came first.
    feed(
        SourceItem::Stack(crate::pipeline::KernelStack {
            id: 7,
            frames: [
                "__vma_start_exclude_readers+0x1b2",
                "__vma_start_write+0x3c",
                "dup_mmap+0x2f1",
                "copy_process+0x1a0c",
                "kernel_clone+0xbd",
                "__x64_sys_clone+0x93",
                "do_syscall_64+0x82",
                "entry_SYSCALL_64_after_hwframe+0x76",
            ]
            .map(String::from)
            .to_vec(),
        }),
        &mut sink,
    );
    let mut slow = ev(EventKind::SlowWait, 11_500, 3310, "java", 4);
    slow.flags = flags::RET;
    slow.arg = 56;
    slow.ret = 7;
    slow.wait_ns = interrupted.wait_ns;
    feed(SourceItem::Events(vec![slow, interrupted]), &mut sink);
    let mut st = shared.lock().unwrap().clone();
    st.live.push_anomaly(&anomaly(
        3_210,
        AnomalyKind::ExcludeTargetMismatch,
        Severity::Error,
        1201,
        "postgres",
    ));
    st.live.push_anomaly(&anomaly(
        7_002,
        AnomalyKind::ReaderWhileExcluded,
        Severity::Error,
        777,
        "reader",
    ));
    st.live.push_anomaly(&anomaly(
        9_999,
        AnomalyKind::ConcurrentExclusion,
        Severity::Warning,
        3310,
        "java",
    ));
    st.live.phases = Some(vec![
        ("unknown", 12),
        ("detached", 40),
        ("attached", 1830),
        ("readers", 95),
        ("excluding", 3),
        ("write_locked", 21),
    ]);
    st.live.uptime = Duration::from_secs(754);
    super::set_program_stats(
        &Arc::new(Mutex::new(st.clone())),
        vec![],
        Duration::from_secs(1),
    );
    st.live.self_cost = Some(SelfCost {
        programs: vec![
            ProgramCost {
                name: "lock_vma_under_rcu_exit".into(),
                run_cnt: 3_000_000,
                run_time_ns: 54_000_000,
            },
            ProgramCost {
                name: "exclude_exit".into(),
                run_cnt: 120,
                run_time_ns: 9_600,
            },
        ],
        ns_per_run: 18.0,
        cpu_fraction: 0.0042,
    });
    st
}

fn key(c: KeyCode) -> KeyEvent {
    KeyEvent::new(c, KeyModifiers::NONE)
}

fn press(st: &mut AppState, keys: &[KeyCode]) -> Action {
    let mut last = Action::None;
    for k in keys {
        last = st.on_key(key(*k));
    }
    last
}

fn draw(st: &AppState, w: u16, h: u16) -> String {
    let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
    t.draw(|f| render::render(f, st)).unwrap();
    t.backend().to_string()
}

// ---- state updates ----

#[test]
fn sink_feeds_stats_totals_counters_and_anomalies() {
    let st = fixture();
    let d = &st.live;
    assert!(d.stats.percentiles().count > 100);
    assert_eq!(d.stats.interrupted(), 1);
    assert_eq!(d.stats.slow_detaches(), 12);
    assert_eq!(d.stats.sampled_reader_failures(), 12);
    assert_eq!(d.events(EventKind::VmaAlloc as usize), 12);
    assert_eq!(d.stats.reader_outcomes().acquire_fail, 480);
    assert_eq!(d.stats.losses()["ringbuf_reserve_failed"], 17);
    assert_eq!(d.anomalies_seen, 3);
    assert_eq!(d.first_ts_ns, Some(T0));
    assert_eq!(d.anomaly_counts[&AnomalyKind::ReaderWhileExcluded], 1);
}

#[test]
fn keys_switch_screens_and_quit() {
    let mut st = fixture();
    assert_eq!(st.ui.screen, Screen::Overview);
    press(&mut st, &[KeyCode::Char('3')]);
    assert_eq!(st.ui.screen, Screen::Top);
    press(&mut st, &[KeyCode::Tab, KeyCode::Tab]);
    assert_eq!(st.ui.screen, Screen::Model);
    press(&mut st, &[KeyCode::Tab]);
    assert_eq!(st.ui.screen, Screen::Overview, "Tab wraps");
    press(&mut st, &[KeyCode::BackTab]);
    assert_eq!(st.ui.screen, Screen::Model);
    assert_eq!(press(&mut st, &[KeyCode::Char('?')]), Action::None);
    assert!(st.ui.help);
    press(&mut st, &[KeyCode::Char('x')]);
    assert!(!st.ui.help, "any key closes the help");
    assert_eq!(press(&mut st, &[KeyCode::Char('q')]), Action::Quit);
    assert_eq!(
        st.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Action::Quit
    );
}

/// Esc then a key, read together, arrive as Alt+key (ESC x is how terminals send Alt): the
/// Esc still clears the filter and the key still acts.
#[test]
fn esc_read_together_with_the_next_key_is_both() {
    let mut st = fixture();
    press(&mut st, &[KeyCode::Char('3'), KeyCode::Char('/')]);
    press(&mut st, &[KeyCode::Char('z'), KeyCode::Enter]);
    assert_eq!(st.ui.filter, "z");
    st.on_key(KeyEvent::new(KeyCode::Char('4'), KeyModifiers::ALT));
    assert_eq!(st.ui.filter, "", "the Esc cleared the filter");
    assert_eq!(st.ui.screen, Screen::Anomalies, "the 4 switched screens");
    // While editing a filter, the Esc ends the editing first.
    press(&mut st, &[KeyCode::Char('/'), KeyCode::Char('y')]);
    assert!(st.ui.editing_filter);
    st.on_key(KeyEvent::new(KeyCode::Char('1'), KeyModifiers::ALT));
    assert!(!st.ui.editing_filter);
    assert_eq!(st.ui.screen, Screen::Overview);
    assert_eq!(
        st.on_key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::ALT)),
        Action::Quit
    );
}

#[test]
fn pause_freezes_the_view_while_data_flows() {
    let mut st = fixture();
    let before = st.view().stats.percentiles().count;
    press(&mut st, &[KeyCode::Char('p')]);
    assert!(st.paused());
    st.live
        .stats
        .observe(&exclude_exit(20_000, 1, "late", 1, 5));
    assert_eq!(st.view().stats.percentiles().count, before);
    assert_eq!(st.live.stats.percentiles().count, before + 1);
    press(&mut st, &[KeyCode::Char('p')]);
    assert!(!st.paused());
    assert_eq!(st.view().stats.percentiles().count, before + 1);
}

#[test]
fn reset_zeroes_counters_but_keeps_the_anomaly_list() {
    let mut st = fixture();
    press(&mut st, &[KeyCode::Char('r')]);
    let d = st.view();
    assert_eq!(d.stats.percentiles().count, 0);
    assert_eq!(d.total_events(), 0);
    assert_eq!(d.anomalies_total(), 0);
    assert_eq!(d.stats.total_losses(), 0);
    assert_eq!(d.anomalies.len(), 3);
}

#[test]
fn top_sort_view_and_filter_editing() {
    let mut st = fixture();
    press(&mut st, &[KeyCode::Char('3'), KeyCode::Char('s')]);
    assert_eq!(st.ui.top_sort, SortKey::MaxWait);
    press(&mut st, &[KeyCode::Char('v')]);
    assert_eq!(st.ui.top_view, TopView::Vmas);
    press(
        &mut st,
        &[KeyCode::Char('/'), KeyCode::Char('j'), KeyCode::Char('a')],
    );
    assert!(st.ui.editing_filter);
    // While editing, q is text, not quit.
    assert_eq!(press(&mut st, &[KeyCode::Char('q')]), Action::None);
    press(&mut st, &[KeyCode::Backspace, KeyCode::Enter]);
    assert!(!st.ui.editing_filter);
    assert_eq!(st.ui.filter, "ja");
    press(&mut st, &[KeyCode::Esc]);
    assert_eq!(st.ui.filter, "");
}

#[test]
fn anomaly_selection_follows_the_newest_until_scrolled() {
    let mut st = fixture();
    press(&mut st, &[KeyCode::Char('4'), KeyCode::Enter]);
    assert!(st.ui.evidence);
    assert_eq!(st.selected_anomaly().map(|e| e.seq), Some(3), "newest");
    press(
        &mut st,
        &[KeyCode::Esc, KeyCode::Up, KeyCode::Up, KeyCode::Up],
    );
    assert!(!st.ui.evidence);
    assert_eq!(
        st.selected_anomaly().map(|e| e.seq),
        Some(1),
        "stops at the first"
    );
    // Scrolled: a new anomaly does not move the selection.
    let a = anomaly(
        10_500,
        AnomalyKind::DetachNotZero,
        Severity::Error,
        88,
        "kswapd0",
    );
    st.live.push_anomaly(&a);
    assert_eq!(st.selected_anomaly().map(|e| e.seq), Some(1));
    press(&mut st, &[KeyCode::End]);
    assert_eq!(st.selected_anomaly().map(|e| e.seq), Some(4), "End follows");
    st.live.push_anomaly(&a);
    assert_eq!(
        st.selected_anomaly().map(|e| e.seq),
        Some(5),
        "and keeps following"
    );
    press(&mut st, &[KeyCode::Home]);
    assert_eq!(st.selected_anomaly().map(|e| e.seq), Some(1));
    press(
        &mut st,
        &[
            KeyCode::Char('/'),
            KeyCode::Char('j'),
            KeyCode::Char('a'),
            KeyCode::Enter,
        ],
    );
    assert_eq!(st.visible_groups().len(), 1);
    assert_eq!(st.selected_anomaly().map(|e| e.seq), Some(3));
    press(&mut st, &[KeyCode::Char('1')]);
    assert!(!st.ui.evidence);
}

/// Ten thousand identical anomalies are one row with a count, not ten thousand rows.
#[test]
fn anomalies_are_grouped_by_kind_and_vma() {
    let mut st = fixture();
    let a = anomaly(
        10_500,
        AnomalyKind::DetachNotZero,
        Severity::Error,
        88,
        "kswapd0",
    );
    for _ in 0..10_000 {
        st.live.push_anomaly(&a);
    }
    let groups = st.visible_groups();
    assert_eq!(groups.len(), 4);
    let last = groups.last().expect("a group");
    assert_eq!(last.count, 10_000);
    assert_eq!(last.latest.seq, 10_003);
    press(&mut st, &[KeyCode::Char('4')]);
    let screen = draw(&st, 80, 24);
    assert!(screen.contains("10.0k"), "{screen}");
    assert_eq!(screen.matches("detach_not_zero").count(), 1, "{screen}");
}

/// After `r` the header and the Anomalies pane count the same anomalies (since the
/// reset); the rows stay as evidence.
#[test]
fn after_reset_the_header_and_the_anomaly_pane_agree() {
    let mut st = fixture();
    press(&mut st, &[KeyCode::Char('4'), KeyCode::Char('r')]);
    let screen = draw(&st, 160, 45);
    assert!(screen.contains("│ validated, 0 anomalies │"), "{screen}");
    assert!(
        screen.contains("Anomalies (0 since reset, 3 before) by kind and VMA: 3 groups"),
        "{screen}"
    );
    st.live.push_anomaly(&anomaly(
        10_500,
        AnomalyKind::DetachNotZero,
        Severity::Error,
        88,
        "kswapd0",
    ));
    let screen = draw(&st, 160, 45);
    assert!(screen.contains("│ 1 anomalies │"), "{screen}");
    assert!(
        screen.contains("Anomalies (1 since reset, 3 before)"),
        "{screen}"
    );
}

#[test]
fn anomaly_list_is_bounded() {
    let mut st = fixture();
    let a = anomaly(5, AnomalyKind::DetachNotZero, Severity::Error, 1, "x");
    for _ in 0..state::MAX_ANOMALIES + 10 {
        st.live.push_anomaly(&a);
    }
    assert_eq!(st.live.anomalies.len(), state::MAX_ANOMALIES);
    assert_eq!(st.live.anomalies_dropped, 13);
    assert_eq!(st.live.anomalies_seen, state::MAX_ANOMALIES as u64 + 13);
}

#[test]
fn self_cost_from_program_stats() {
    let shared = Arc::new(Mutex::new(AppState::new(DashboardContext::new(
        SourceKind::Live,
        "6.19.6",
        Generation::V6_19,
    ))));
    let prog = |ns| ProgramCost {
        name: "p".into(),
        run_cnt: 1000,
        run_time_ns: ns,
    };
    set_program_stats(&shared, vec![prog(20_000)], Duration::from_secs(1));
    set_program_stats(&shared, vec![prog(10_020_000)], Duration::from_secs(1));
    let st = shared.lock().unwrap();
    let c = st.live.self_cost.as_ref().unwrap();
    assert!((c.cpu_fraction - 0.01).abs() < 1e-9, "{}", c.cpu_fraction);
    assert!((c.ns_per_run - 10_020.0).abs() < 1e-9);
}

#[test]
fn tiny_terminal_says_so_instead_of_panicking() {
    let st = fixture();
    for (w, h) in [(10, 3), (59, 40), (200, 15), (1, 1)] {
        let s = draw(&st, w, h);
        assert!(s.contains("vmatrace") || w < 20, "{w}x{h}: {s}");
    }
}

#[test]
fn every_screen_renders_at_odd_sizes() {
    let mut st = fixture();
    for screen in ['1', '2', '3', '4', '5'] {
        press(&mut st, &[KeyCode::Char(screen)]);
        for (w, h) in [(60, 16), (61, 17), (97, 31), (300, 100)] {
            draw(&st, w, h);
        }
    }
    press(
        &mut st,
        &[KeyCode::Char('4'), KeyCode::Enter, KeyCode::Char('l')],
    );
    for (w, h) in [(60, 16), (120, 50)] {
        draw(&st, w, h);
    }
}

// ---- snapshots: every screen at 80x24 and at 160x45 ----

fn snap(name: &str, st: &AppState) {
    for (w, h) in [(80, 24), (160, 45)] {
        insta::assert_snapshot!(format!("{name}_{w}x{h}"), draw(st, w, h));
    }
}

#[test]
fn snapshot_overview() {
    snap("overview", &fixture());
}

/// A histogram line reads like the percentile beside it: the bucket holding p50 is
/// labelled with the very string the p50 line shows.
#[test]
fn histogram_labels_agree_with_percentiles() {
    let mut st = fixture();
    press(&mut st, &[KeyCode::Char('2')]);
    let screen = draw(&st, 160, 45);
    let p = st.live.stats.percentiles();
    for v in [p.p50_ns, p.p90_ns] {
        let label = format!("≤{} ", fmt::ns(v));
        assert!(screen.contains(&label), "{label} in {screen}");
    }
    assert!(screen.contains("┌ Write lock ("), "{screen}");
}

#[test]
fn snapshot_writers() {
    let mut st = fixture();
    press(&mut st, &[KeyCode::Char('2')]);
    snap("writers", &st);
}

#[test]
fn snapshot_top() {
    let mut st = fixture();
    press(&mut st, &[KeyCode::Char('3')]);
    snap("top_processes", &st);
    press(
        &mut st,
        &[KeyCode::Char('v'), KeyCode::Char('s'), KeyCode::Char('s')],
    );
    snap("top_vmas_by_exclusions", &st);
    press(
        &mut st,
        &[KeyCode::Char('/'), KeyCode::Char('p'), KeyCode::Char('o')],
    );
    snap("top_filter_editing", &st);
}

#[test]
fn snapshot_anomalies() {
    let mut st = fixture();
    // Following the newest; Up selects the one before.
    press(&mut st, &[KeyCode::Char('4')]);
    snap("anomalies_following", &st);
    press(&mut st, &[KeyCode::Up]);
    snap("anomalies", &st);
    press(&mut st, &[KeyCode::Enter]);
    snap("anomaly_evidence", &st);
}

#[test]
fn snapshot_model() {
    let mut st = fixture();
    press(&mut st, &[KeyCode::Char('5')]);
    snap("model", &st);
    st.live.phases = None;
    insta::assert_snapshot!("model_not_reported_80x24", draw(&st, 80, 24));
}

#[test]
fn snapshot_help_and_paused() {
    let mut st = fixture();
    press(&mut st, &[KeyCode::Char('p'), KeyCode::Char('?')]);
    insta::assert_snapshot!("help_paused_80x24", draw(&st, 80, 24));
}

#[test]
fn snapshot_empty_simulate_session() {
    let st = AppState::new(DashboardContext::new(
        SourceKind::Simulate,
        "simulated",
        Generation::V6_15,
    ));
    insta::assert_snapshot!("empty_overview_80x24", draw(&st, 80, 24));
    let mut st = st;
    press(&mut st, &[KeyCode::Char('2')]);
    insta::assert_snapshot!("empty_writers_80x24", draw(&st, 80, 24));
    press(&mut st, &[KeyCode::Char('4')]);
    insta::assert_snapshot!("empty_anomalies_80x24", draw(&st, 80, 24));
}

// ---- text from the trace ----

/// Terminal control sequences in the kernel release, a comm, the source and the plan
/// reach the screen spelled out: no ESC (nor BEL, nor the one-byte CSI) in any cell.
#[test]
fn trace_strings_are_rendered_escaped() {
    const EVIL: &str = "\x1b]0;pwned\x07\x1b[2J";
    let mut plan = sample_plan();
    plan.coverage[0].status = Observability::Unobservable {
        reason: format!("inlined{EVIL}"),
    };
    let ctx = DashboardContext::new(SourceKind::Replay, format!("7.2{EVIL}"), Generation::V7_0)
        .with_detail(format!("t\u{9b}2J{EVIL}"))
        .with_plan(Some(plan));
    let mut st = AppState::new(ctx);
    let name = std::str::from_utf8(&EVIL.as_bytes()[..14]).unwrap();
    st.live.push_anomaly(&anomaly(
        3_210,
        AnomalyKind::ExcludeTargetMismatch,
        Severity::Error,
        1201,
        name,
    ));
    st.log.push_back(format!("log{EVIL}"));
    st.ui.log_pane = true;
    let mut screens = Vec::new();
    for keys in [
        &[KeyCode::Char('1')][..],
        &[KeyCode::Char('4')],
        &[KeyCode::Enter],
    ] {
        press(&mut st, keys);
        screens.push(draw(&st, 200, 60));
    }
    let all = screens.join("\n");
    for c in ['\x1b', '\x07', '\u{9b}'] {
        assert!(!all.contains(c), "{c:?} in {all}");
    }
    for want in [
        "kernel 7.2\\x1b]0;pwned\\x07",
        "t\\x9b2J\\x1b]0;pwned",
        "inlined\\x1b]0;pwned",
        "\\x1b]0;pwned\\x07\\x1b[2J[1201]",
        "log\\x1b]0;pwned",
    ] {
        assert!(all.contains(want), "{want} not in {all}");
    }
}

// ---- header ----

/// With losses the validator saw only part of the transitions: the header says
/// "validated with gaps", not a bare "0 anomalies". The time of day leads it.
#[test]
fn header_says_validated_with_gaps_when_events_were_lost() {
    let header = |st: &AppState| {
        let s = draw(st, 160, 45);
        s.lines()
            .next()
            .unwrap_or("")
            .trim_start_matches('"')
            .to_string()
    };
    let mut st = AppState::new(DashboardContext::new(
        SourceKind::Live,
        "6.19.6",
        Generation::V6_19,
    ));
    assert!(
        header(&st).contains("│ validated, 0 anomalies │"),
        "{}",
        header(&st)
    );
    st.live.validator_resyncs = 2;
    assert!(header(&st).contains("│ validated with gaps (2 resyncs) │"));
    let mut c = CounterSnapshot {
        values: vec![0; 16],
        ..Default::default()
    };
    c.values[Counter::RingbufReserveFailed as usize] = 5;
    st.live.set_counters(&c);
    assert!(header(&st).contains("│ validated with gaps (5 lost) │"));
    st.live.wall_now_ns = Some(WALL_T0 + 3_723_000_000_000);
    assert!(
        header(&st).starts_with("vmatrace 15:05:03 UTC │ LIVE │"),
        "{}",
        header(&st)
    );
}

// ---- coverage ----

/// The Coverage pane counts logical events as the exit summary does: proxied ones
/// (end-exclude by the write-lock and detach returns) are counted, not shown as `-`.
#[test]
fn coverage_counts_like_the_summary() {
    use crate::export::summary::logical_counts;
    use crate::pipeline::Pipeline;
    let plan = sample_plan();
    let ctx = DashboardContext::new(SourceKind::Replay, "7.2", Generation::V7_0)
        .with_plan(Some(plan.clone()));
    let mut p = Pipeline::new(Generation::V7_0);
    let shared = attach_to(&mut p, ctx);
    let mut batch = Vec::new();
    for i in 0..20u64 {
        let mut w = ev(EventKind::WriteLockExit, i, 1201, "postgres", i % 4);
        w.probe = ProbeId::VmaStartWrite as u8;
        batch.push(w);
        let mut d = ev(EventKind::DetachExit, i, 1201, "postgres", 10 + i);
        d.probe = ProbeId::VmaMarkDetached as u8;
        batch.push(d);
        batch.push(ev(EventKind::VmaFree, i, 1201, "postgres", 10 + i));
    }
    p.handle(SourceItem::Events(batch));
    p.flush();
    let st = shared.lock().unwrap();
    let d = st.view();
    let summary = logical_counts(
        &p.totals,
        Generation::V7_0,
        Some(&plan),
        Some(d.stats.slow_detaches()),
    );
    let pane = logical_counts(
        &d.totals_since_reset(),
        Generation::V7_0,
        Some(&plan),
        Some(d.stats.slow_detaches()),
    );
    for (k, c) in &summary {
        assert_eq!(pane[k].count, c.count, "{k}");
    }
    assert_eq!(pane["end_exclude"].count, 40);
    let screen = draw(&st, 160, 45);
    assert!(
        screen.contains("│end_exclude          proxy       40 "),
        "{screen}"
    );
}

// ---- process labels ----

/// A process is labelled by its tgid and its leader's comm, whatever its threads are
/// called; a pid filter matches exactly.
#[test]
fn processes_are_labelled_by_leader_comm_and_filtered_by_exact_pid() {
    let mut st = AppState::new(DashboardContext::new(
        SourceKind::Live,
        "7.2",
        Generation::V7_0,
    ));
    let thread = |tid: u32, name: &str, ts: u64| {
        let mut e = exclude_exit(ts, 4200, name, 1, 1000);
        e.pid_tgid = (4200 << 32) | u64::from(tid);
        e
    };
    for e in [
        thread(4201, "worker-1", 1),
        thread(4200, "postgres", 2),
        thread(4202, "worker-2", 3),
        exclude_exit(4, 14200, "other", 2, 500),
    ] {
        st.live.stats.observe(&e);
    }
    press(&mut st, &[KeyCode::Char('3')]);
    let screen = draw(&st, 80, 24);
    assert!(screen.contains("│postgres[4200] "), "{screen}");
    assert!(!screen.contains("worker"), "{screen}");
    press(
        &mut st,
        &[
            KeyCode::Char('/'),
            KeyCode::Char('4'),
            KeyCode::Char('2'),
            KeyCode::Char('0'),
            KeyCode::Char('0'),
            KeyCode::Enter,
        ],
    );
    let screen = draw(&st, 80, 24);
    assert!(screen.contains("postgres[4200]"), "{screen}");
    assert!(!screen.contains("14200"), "{screen}");
}

/// Without sampled readers the reader-failure column says "not measured" (–), not 0.
#[test]
fn reader_failures_show_a_dash_when_readers_are_not_sampled() {
    let mut st = AppState::new(DashboardContext::new(
        SourceKind::Live,
        "7.2",
        Generation::V7_0,
    ));
    st.live
        .stats
        .observe(&exclude_exit(1, 4200, "postgres", 1, 1000));
    press(&mut st, &[KeyCode::Char('3')]);
    insta::assert_snapshot!("top_readers_not_sampled_80x24", draw(&st, 80, 24));
    let screen = draw(&st, 160, 45);
    assert!(screen.contains("     – "), "{screen}");
}

// ---- since when ----

/// Each top process has a time line of its waits per second; a stall that started 3 s
/// ago shows as a jump 3 cells from the right, with its longest wait.
#[test]
fn top_processes_show_when_a_stall_started() {
    let ctx = DashboardContext::new(SourceKind::Live, "7.2", Generation::V7_0);
    let shared = Arc::new(Mutex::new(AppState::new(ctx)));
    let mut sink = DashboardSink::new(shared.clone());
    let mut batch = Vec::new();
    for sec in 0..20u64 {
        batch.push(exclude_exit(sec * 1000, 4200, "postgres", 1, 2_000));
        if sec >= 17 {
            for j in 0..8 {
                batch.push(exclude_exit(
                    sec * 1000 + j,
                    4200,
                    "postgres",
                    1,
                    30_000_000,
                ));
            }
        }
    }
    sink.events(&batch);
    let mut st = shared.lock().unwrap().clone();
    press(&mut st, &[KeyCode::Char('3')]);
    let line = st.live.timelines.line(4200, st.live.newest_ts_ns, 10);
    assert_eq!(line.waits, [1, 1, 1, 1, 1, 1, 1, 9, 9, 9]);
    assert_eq!(line.max_ns, 30_000_000);
    insta::assert_snapshot!("top_since_when_80x24", draw(&st, 80, 24));
    insta::assert_snapshot!("top_since_when_160x45", draw(&st, 160, 45));
}

// ---- which mapping ----

/// A live session names the VMAs on screen as /proc/PID/maps does; the loop resolves
/// what `unnamed_mappings` lists (here from a fake /proc).
#[test]
fn live_sessions_name_the_mappings_on_screen() {
    let mut st = fixture();
    st.ctx.source = SourceKind::Live;
    let unnamed = st.unnamed_mappings();
    assert!(!unnamed.is_empty());
    let proc_root = tempfile::tempdir().expect("tempdir");
    for tgid in [88, 777, 1201, 1202, 3310] {
        let dir = proc_root.path().join(tgid.to_string());
        std::fs::create_dir(&dir).expect("dir");
        // Every fixture VMA lies in 0x7f3a00000000..0x7f3a02000000: name them by slot.
        let mut maps = String::new();
        for vma_no in 0..16u64 {
            let start = 0x7f3a_0000_0000 + vma_no * 0x20_0000;
            let name = match vma_no % 3 {
                0 => "/usr/lib/postgresql/16/bin/postgres",
                1 => "[heap]",
                _ => "",
            };
            maps.push_str(&format!(
                "{start:x}-{:x} rw-p 00000000 00:00 0          {name}\n",
                start + 0x20_0000
            ));
        }
        std::fs::write(dir.join("maps"), maps).expect("maps");
    }
    let mut resolver = crate::mapping::MappingNames::with_proc_root(proc_root.path());
    let named: Vec<_> = unnamed
        .iter()
        .filter_map(|k| resolver.resolve(k.0, k.1, k.2).map(|n| (*k, n)))
        .collect();
    assert_eq!(named.len(), unnamed.len());
    st.add_mapping_names(named);
    assert!(st.unnamed_mappings().is_empty());
    press(&mut st, &[KeyCode::Char('2')]);
    snap("writers_live_mappings", &st);
    press(&mut st, &[KeyCode::Char('3'), KeyCode::Char('v')]);
    snap("top_vmas_live_mappings", &st);
    press(&mut st, &[KeyCode::Char('4')]);
    snap("anomalies_live_mappings", &st);
}

/// A replay names nothing: its trace may come from another host.
#[test]
fn replays_do_not_name_mappings() {
    let st = fixture();
    assert!(!st.names_mappings());
    let mut st = st;
    press(&mut st, &[KeyCode::Char('2')]);
    assert!(!draw(&st, 160, 45).contains("mapping"));
}

// ---- cost ----

/// The loop redraws at most four times a second (a key press redraws at once).
#[test]
fn redraw_is_at_most_four_hertz() {
    assert!(terminal::FRAME >= Duration::from_millis(250));
}

/// With the session's statistics shared, the dashboard shows them without observing
/// events itself; after `r` it counts on its own from zero.
#[test]
fn dashboard_shares_the_session_statistics_until_reset() {
    use crate::pipeline::{Pipeline, SharedSink};
    use crate::stats::Stats;
    let mut p = Pipeline::new(Generation::V7_0);
    let (sink, stats) = SharedSink::new(Stats::new(Generation::V7_0));
    p.add_sink(Box::new(sink));
    let ctx = DashboardContext::new(SourceKind::Live, "7.2", Generation::V7_0);
    let shared = attach_sharing_stats(&mut p, ctx, stats.clone());
    let batch: Vec<Event> = (0..10)
        .map(|i| exclude_exit(i, 4200, "postgres", 1, 1000 + i))
        .collect();
    p.handle(SourceItem::Events(batch.clone()));
    assert_eq!(shared.lock().unwrap().live.stats.percentiles().count, 0);
    p.flush();
    assert_eq!(shared.lock().unwrap().live.stats.percentiles().count, 10);
    assert!(!shared.lock().unwrap().live.stats_own);
    shared.lock().unwrap().on_key(key(KeyCode::Char('r')));
    p.handle(SourceItem::Events(batch[..3].to_vec()));
    p.flush();
    let st = shared.lock().unwrap();
    assert_eq!(
        st.live.stats.percentiles().count,
        3,
        "own count since the reset"
    );
    assert_eq!(
        stats.lock().unwrap().percentiles().count,
        13,
        "the session's untouched"
    );
}
