//! Dashboard state: what the pipeline feeds in ([`DashboardData`]) and what the user
//! controls ([`UiState`]). Renderers read an [`AppState`] and nothing else.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use vmatrace_common::model::Generation;

use super::anomaly_groups::{AnomalyGroup, AnomalyGroups};
use super::timeline::Timelines;
use crate::export::clock::LocalZone;
use crate::kernel::plan::ProbePlan;
use crate::pipeline::{CounterSnapshot, Totals};
use crate::stats::{SortKey, Stats};
use crate::trace::ClockBase;
use crate::validate::{Anomaly, AnomalyKind};

/// Anomalies kept for browsing; older ones are dropped and counted.
pub const MAX_ANOMALIES: usize = 1000;
/// Log lines kept for the log pane.
pub const MAX_LOG_LINES: usize = 200;

/// Where the events come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    Live,
    Replay,
    Simulate,
}

impl SourceKind {
    pub const fn label(self) -> &'static str {
        match self {
            SourceKind::Live => "live",
            SourceKind::Replay => "replay",
            SourceKind::Simulate => "simulate",
        }
    }
}

/// What the dashboard is looking at (fixed for a session).
#[derive(Clone, Debug)]
pub struct DashboardContext {
    pub source: SourceKind,
    /// Free text next to the source (trace file name, simulator settings...).
    pub source_detail: String,
    /// `uname -r` of the traced kernel (recorded one for a replay).
    pub kernel_release: String,
    pub generation: Generation,
    pub plan: Option<ProbePlan>,
    /// Maps event timestamps (monotonic) to the wall clock; `None` (simulation): times
    /// are shown since the first event.
    pub clock: Option<ClockBase>,
    /// The viewer's zone for times of day (UTC in tests).
    pub zone: LocalZone,
}

impl DashboardContext {
    pub fn new(
        source: SourceKind,
        kernel_release: impl Into<String>,
        generation: Generation,
    ) -> Self {
        Self {
            source,
            source_detail: String::new(),
            kernel_release: kernel_release.into(),
            generation,
            plan: None,
            clock: None,
            zone: LocalZone::utc(),
        }
    }

    /// Show times of day: `clock` from the trace header, in `zone`.
    pub fn with_clock(mut self, clock: ClockBase, zone: LocalZone) -> Self {
        self.clock = Some(clock);
        self.zone = zone;
        self
    }

    /// Wall-clock time of an event timestamp, `hh:mm:ss.mmm` (or `+s.mmm` since the
    /// first event without a clock).
    pub fn time_of(&self, ts_ns: u64, first_ts_ns: Option<u64>) -> String {
        match self.clock {
            Some(c) => self.zone.hms_millis(c.realtime_of(ts_ns)),
            None => crate::tui::render::fmt::rel_time(
                ts_ns.saturating_sub(first_ts_ns.unwrap_or(ts_ns)),
            ),
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.source_detail = detail.into();
        self
    }

    pub fn with_plan(mut self, plan: Option<ProbePlan>) -> Self {
        self.plan = plan;
        self
    }
}

/// BPF run-time statistics of one program (`BPF_ENABLE_STATS`), cumulative.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramCost {
    pub name: String,
    pub run_cnt: u64,
    pub run_time_ns: u64,
}

/// Tracer self-cost derived from two BPF stats readings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SelfCost {
    pub programs: Vec<ProgramCost>,
    /// Average ns per program run since the start.
    pub ns_per_run: f64,
    /// Share of one CPU spent in the programs over the last interval (0.0..).
    pub cpu_fraction: f64,
}

/// One anomaly as browsed in the dashboard.
#[derive(Clone, Debug, PartialEq)]
pub struct AnomalyEntry {
    /// 1-based sequence number since the session started.
    pub seq: u64,
    pub anomaly: Anomaly,
}

/// Data fed by the pipeline.
#[derive(Clone, Debug)]
pub struct DashboardData {
    pub stats: Stats,
    /// `stats` is fed event by event by the dashboard's sink. `false` while the session's
    /// statistics can be copied instead (see [`crate::tui::attach_sharing_stats`]): until
    /// the user resets them, the dashboard shows the session's own.
    pub stats_own: bool,
    /// Latest pipeline totals.
    pub totals: Totals,
    /// Event totals at the last reset (shown as differences).
    pub events_base: [u64; 16],
    /// Events by kind and attach point at the last reset.
    pub kind_probe_base: [[u64; 16]; 16],
    pub anomalies: VecDeque<AnomalyEntry>,
    pub anomalies_seen: u64,
    pub anomalies_dropped: u64,
    /// Anomalies by kind since start or reset.
    pub anomaly_counts: BTreeMap<AnomalyKind, u64>,
    /// Waits per second per process (the Top screen's time lines).
    pub timelines: Timelines,
    /// Anomalies by kind and VMA (the Anomalies screen's rows).
    pub anomaly_groups: AnomalyGroups,
    /// The validator's phase distribution of tracked VMAs (`None`: not reported).
    pub phases: Option<Vec<(&'static str, u64)>>,
    /// VMAs the validator tracks, and how many it dropped at its cap.
    pub tracked_vmas: usize,
    pub validator_evicted: u64,
    /// Loss notifications the validator got (it resynchronised that many times).
    pub validator_resyncs: u64,
    /// Timestamp of the first event: anomaly times are shown relative to it.
    pub first_ts_ns: Option<u64>,
    /// Timestamp of the newest event (the "now" of a replay).
    pub newest_ts_ns: u64,
    /// Wall clock now, set by the dashboard loop for a live source (a replay's "now" is
    /// its newest event).
    pub wall_now_ns: Option<u64>,
    /// Session time, set by the dashboard loop.
    pub uptime: Duration,
    pub self_cost: Option<SelfCost>,
    /// The source has ended (replay at EOF, simulation done): numbers are final.
    pub source_ended: bool,
}

impl DashboardData {
    pub fn new(generation: Generation) -> Self {
        Self::with_plan(generation, None)
    }

    /// The statistics follow the plan's view of start-exclude (see `stats::WaitSource`).
    pub fn with_plan(generation: Generation, plan: Option<&ProbePlan>) -> Self {
        Self {
            stats: Stats::with_plan(generation, plan),
            stats_own: true,
            totals: Totals::default(),
            events_base: [0; 16],
            kind_probe_base: [[0; 16]; 16],
            anomalies: VecDeque::new(),
            anomalies_seen: 0,
            anomalies_dropped: 0,
            anomaly_counts: BTreeMap::new(),
            anomaly_groups: AnomalyGroups::default(),
            timelines: Timelines::default(),
            phases: None,
            tracked_vmas: 0,
            validator_evicted: 0,
            validator_resyncs: 0,
            first_ts_ns: None,
            newest_ts_ns: 0,
            wall_now_ns: None,
            uptime: Duration::ZERO,
            self_cost: None,
            source_ended: false,
        }
    }

    pub fn push_anomaly(&mut self, a: &Anomaly) {
        self.anomalies_seen += 1;
        *self.anomaly_counts.entry(a.kind).or_default() += 1;
        if self.anomalies.len() == MAX_ANOMALIES {
            self.anomalies.pop_front();
            self.anomalies_dropped += 1;
        }
        let entry = AnomalyEntry {
            seq: self.anomalies_seen,
            anomaly: a.clone(),
        };
        self.anomaly_groups.add(&entry);
        self.anomalies.push_back(entry);
    }

    pub fn set_counters(&mut self, c: &CounterSnapshot) {
        self.stats.set_counters(c);
        self.totals.counters = c.clone();
    }

    /// Events of one kind (index `EventKind as usize`) since start or reset.
    pub fn events(&self, kind_index: usize) -> u64 {
        let now = self.totals.events.get(kind_index).copied().unwrap_or(0);
        let base = self.events_base.get(kind_index).copied().unwrap_or(0);
        now.saturating_sub(base)
    }

    /// Event and counter totals since start or the last reset, for the summary's
    /// counting of logical events.
    pub fn totals_since_reset(&self) -> Totals {
        let mut t = Totals::default();
        for (i, n) in t.events.iter_mut().enumerate() {
            *n = self.events(i);
        }
        for (k, row) in t.kind_probe.iter_mut().enumerate() {
            for (p, n) in row.iter_mut().enumerate() {
                *n = self.totals.kind_probe[k][p].saturating_sub(self.kind_probe_base[k][p]);
            }
        }
        // Indexed by counter number (`CounterSnapshot::get`), not by position in `ALL`.
        let all = vmatrace_common::Counter::ALL;
        let mut values = vec![0; all.iter().map(|c| *c as usize + 1).max().unwrap_or(0)];
        for c in all {
            values[*c as usize] = self.stats.counter(*c);
        }
        t.counters = CounterSnapshot {
            values,
            ..Default::default()
        };
        t
    }

    pub fn total_events(&self) -> u64 {
        crate::pipeline::totals::sum((0..self.totals.events.len()).map(|i| self.events(i)))
    }

    pub fn anomalies_total(&self) -> u64 {
        crate::pipeline::totals::sum(self.anomaly_counts.values().copied())
    }

    /// Reset counters: statistics, rates, event and anomaly counts start again from zero.
    /// The anomaly list is kept: it is evidence, not a counter.
    pub fn reset(&mut self) {
        self.stats.reset();
        // From now on the view's statistics differ from the session's: its own.
        self.stats_own = true;
        self.events_base = self.totals.events;
        self.kind_probe_base = self.totals.kind_probe;
        self.anomaly_counts.clear();
        self.anomaly_groups.reset();
        self.timelines.clear();
    }

    /// Nanoseconds of `ts_ns` after the first event (0 if before or unknown).
    pub fn relative_ns(&self, ts_ns: u64) -> u64 {
        ts_ns.saturating_sub(self.first_ts_ns.unwrap_or(ts_ns))
    }

    /// Wall-clock now: the loop's for a live source, else the newest event's.
    pub fn now_realtime_ns(&self, clock: Option<ClockBase>) -> Option<u64> {
        self.wall_now_ns.or_else(|| {
            clock
                .filter(|_| self.newest_ts_ns != 0)
                .map(|c| c.realtime_of(self.newest_ts_ns))
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Screen {
    #[default]
    Overview,
    Writers,
    Top,
    Anomalies,
    Model,
}

impl Screen {
    pub const ALL: &'static [Screen] = &[
        Screen::Overview,
        Screen::Writers,
        Screen::Top,
        Screen::Anomalies,
        Screen::Model,
    ];

    pub const fn title(self) -> &'static str {
        match self {
            Screen::Overview => "Overview",
            Screen::Writers => "Writers",
            Screen::Top => "Top",
            Screen::Anomalies => "Anomalies",
            Screen::Model => "Model",
        }
    }

    fn index(self) -> usize {
        Screen::ALL.iter().position(|s| *s == self).unwrap_or(0)
    }

    fn offset(self, by: isize) -> Self {
        let n = Screen::ALL.len() as isize;
        Screen::ALL[((self.index() as isize + by).rem_euclid(n)) as usize]
    }
}

/// The Top screen's table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TopView {
    #[default]
    Processes,
    Vmas,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UiState {
    pub screen: Screen,
    pub help: bool,
    pub log_pane: bool,
    pub top_sort: SortKey,
    pub top_view: TopView,
    pub filter: String,
    /// `/` was pressed: keys edit the filter until Enter/Esc.
    pub editing_filter: bool,
    /// Selected row in the anomaly list (index into the visible groups), when the user
    /// moved away from the newest.
    pub selected: usize,
    /// The user scrolled the anomaly list: it stops following the newest row (End, or
    /// moving down to the last row, follows again).
    pub anomaly_scrolled: bool,
    /// The evidence of the selected anomaly is open.
    pub evidence: bool,
}

/// What a key asks of the dashboard loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
}

/// Everything a renderer may look at.
#[derive(Clone, Debug)]
pub struct AppState {
    pub ctx: DashboardContext,
    pub live: DashboardData,
    /// Set while paused: the picture the user froze. The pipeline keeps feeding `live`.
    pub frozen: Option<Box<DashboardData>>,
    pub ui: UiState,
    /// Recent log lines (the log pane), oldest first.
    pub log: VecDeque<String>,
    /// Mapping names of the VMAs on screen (live sources), by (tgid, vm_start, vm_end);
    /// filled by the dashboard loop from `/proc` (see [`crate::mapping`]).
    pub mapping_names: HashMap<MappingKey, Arc<str>>,
}

/// (tgid, vm_start, vm_end) of a VMA as events report it.
pub type MappingKey = (u32, u64, u64);

/// Names kept for the screen; beyond this the table starts again.
const MAX_MAPPING_NAMES: usize = 4096;
/// Rows per table whose mappings are named (more than any screen shows).
const NAMED_ROWS: usize = 64;

impl AppState {
    /// Wall-clock time of an event, as the tables show it.
    pub fn time_of(&self, ts_ns: u64) -> String {
        self.ctx.time_of(ts_ns, self.view().first_ts_ns)
    }

    pub fn new(ctx: DashboardContext) -> Self {
        let live = DashboardData::with_plan(ctx.generation, ctx.plan.as_ref());
        Self {
            ctx,
            live,
            frozen: None,
            ui: UiState::default(),
            log: VecDeque::new(),
            mapping_names: HashMap::new(),
        }
    }

    /// Mapping names are resolved only where `/proc` describes the traced processes.
    pub fn names_mappings(&self) -> bool {
        self.ctx.source == SourceKind::Live
    }

    pub fn mapping_name(&self, tgid: u32, start: u64, end: u64) -> Option<&str> {
        self.mapping_names.get(&(tgid, start, end)).map(|n| &**n)
    }

    /// The VMAs a screen may show whose mapping is not named yet: the slowest waits, the
    /// top VMAs (current sort) and the newest anomaly groups.
    pub fn unnamed_mappings(&self) -> Vec<MappingKey> {
        let d = self.view();
        let slowest = d
            .stats
            .slowest()
            .items()
            .iter()
            .map(|w| (w.tgid, w.vm_start, w.vm_end));
        let top = crate::stats::ranking(
            d.stats.vmas().values(),
            self.ui.top_sort,
            &self.ui.filter,
            NAMED_ROWS,
        )
        .into_iter()
        .map(|a| (a.tgid, a.vm_start, a.vm_end));
        let groups = d.anomaly_groups.in_order(|_| true);
        let anomalies = groups.iter().rev().take(NAMED_ROWS).map(|g| {
            let e = &g.latest.anomaly.event;
            (e.tgid(), e.vm_start, e.vm_end)
        });
        let mut keys: Vec<MappingKey> = slowest
            .chain(top)
            .chain(anomalies)
            .filter(|k| k.1 != 0 && !self.mapping_names.contains_key(k))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }

    pub fn add_mapping_names(&mut self, names: impl IntoIterator<Item = (MappingKey, Arc<str>)>) {
        for (k, n) in names {
            if self.mapping_names.len() >= MAX_MAPPING_NAMES {
                self.mapping_names.clear();
            }
            self.mapping_names.insert(k, n);
        }
    }

    /// The data to draw: the frozen picture while paused, else the live one.
    pub fn view(&self) -> &DashboardData {
        self.frozen.as_deref().unwrap_or(&self.live)
    }

    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    pub fn push_log(&mut self, line: String) {
        if self.log.len() == MAX_LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    /// Anomaly groups on the Anomalies screen, the most recently seen last, after the
    /// filter.
    pub fn visible_groups(&self) -> Vec<&AnomalyGroup> {
        let f = self.ui.filter.as_str();
        self.view()
            .anomaly_groups
            .in_order(|a| f.is_empty() || anomaly_matches(a, f))
    }

    /// The selected row: the newest unless the user scrolled.
    pub fn selected_row(&self, rows: usize) -> usize {
        let last = rows.saturating_sub(1);
        if self.ui.anomaly_scrolled {
            self.ui.selected.min(last)
        } else {
            last
        }
    }

    /// The newest occurrence of the selected group (its evidence).
    pub fn selected_anomaly(&self) -> Option<&AnomalyEntry> {
        let v = self.visible_groups();
        v.get(self.selected_row(v.len())).map(|g| &g.latest)
    }

    /// Apply one key press. Pure state change; the loop acts on the returned [`Action`].
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        // A terminal sends Alt+x as ESC x, and an Esc read together with the next key x
        // arrives the same way: the dashboard binds no Alt key, so it is the Esc, then x
        // (otherwise the Esc is lost, and with it, say, the clearing of a filter).
        if key.modifiers.contains(KeyModifiers::ALT) {
            if self.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)) == Action::Quit {
                return Action::Quit;
            }
            return self.on_key(KeyEvent::new(key.code, key.modifiers - KeyModifiers::ALT));
        }
        if self.ui.editing_filter {
            self.edit_filter(key.code);
            return Action::None;
        }
        if self.ui.help {
            // Any key closes the help; q still quits.
            self.ui.help = false;
            return if key.code == KeyCode::Char('q') {
                Action::Quit
            } else {
                Action::None
            };
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') => self.ui.help = true,
            KeyCode::Char(c @ '1'..='5') => {
                self.switch_to(Screen::ALL[(c as u8 - b'1') as usize]);
            }
            KeyCode::Tab => self.switch_to(self.ui.screen.offset(1)),
            KeyCode::BackTab => self.switch_to(self.ui.screen.offset(-1)),
            KeyCode::Char('p') => self.toggle_pause(),
            KeyCode::Char('r') => {
                self.live.reset();
                if let Some(f) = self.frozen.as_mut() {
                    f.reset();
                }
            }
            KeyCode::Char('l') => self.ui.log_pane = !self.ui.log_pane,
            KeyCode::Char('/') if matches!(self.ui.screen, Screen::Top | Screen::Anomalies) => {
                self.ui.editing_filter = true;
            }
            KeyCode::Char('s') if self.ui.screen == Screen::Top => {
                self.ui.top_sort = self.ui.top_sort.next();
            }
            KeyCode::Char('v') if self.ui.screen == Screen::Top => {
                self.ui.top_view = match self.ui.top_view {
                    TopView::Processes => TopView::Vmas,
                    TopView::Vmas => TopView::Processes,
                };
            }
            KeyCode::Esc => {
                if self.ui.evidence {
                    self.ui.evidence = false;
                } else if self.ui.log_pane {
                    self.ui.log_pane = false;
                } else if !self.ui.filter.is_empty() {
                    self.ui.filter.clear();
                    self.ui.anomaly_scrolled = false;
                }
            }
            code if self.ui.screen == Screen::Anomalies => self.anomaly_key(code),
            _ => {}
        }
        Action::None
    }

    fn switch_to(&mut self, s: Screen) {
        if s != self.ui.screen {
            self.ui.screen = s;
            self.ui.evidence = false;
        }
    }

    fn toggle_pause(&mut self) {
        self.frozen = match self.frozen.take() {
            Some(_) => None,
            None => Some(Box::new(self.live.clone())),
        };
    }

    fn edit_filter(&mut self, code: KeyCode) {
        match code {
            KeyCode::Enter => self.ui.editing_filter = false,
            KeyCode::Esc => {
                self.ui.editing_filter = false;
                self.ui.filter.clear();
            }
            KeyCode::Backspace => {
                self.ui.filter.pop();
            }
            KeyCode::Char(c) if !c.is_control() && self.ui.filter.len() < 32 => {
                self.ui.filter.push(c);
            }
            _ => {}
        }
        self.ui.anomaly_scrolled = false;
    }

    fn anomaly_key(&mut self, code: KeyCode) {
        let n = self.visible_groups().len();
        let last = n.saturating_sub(1);
        let mut sel = self.selected_row(n);
        match code {
            KeyCode::Down | KeyCode::Char('j') => sel = (sel + 1).min(last),
            KeyCode::Up | KeyCode::Char('k') => sel = sel.saturating_sub(1),
            KeyCode::PageDown => sel = (sel + 10).min(last),
            KeyCode::PageUp => sel = sel.saturating_sub(10),
            KeyCode::Home | KeyCode::Char('g') => sel = 0,
            KeyCode::End | KeyCode::Char('G') => sel = last,
            KeyCode::Enter if n > 0 => {
                // Evidence of this group: stay on it while new anomalies arrive.
                self.ui.evidence = true;
                self.ui.anomaly_scrolled = true;
                self.ui.selected = sel;
                return;
            }
            _ => return,
        }
        self.ui.selected = sel;
        // On the last row the list follows the newest again.
        self.ui.anomaly_scrolled = sel < last;
    }
}

fn anomaly_matches(a: &Anomaly, f: &str) -> bool {
    let comm = crate::stats::aggregates::comm_to_string(&a.event.comm);
    a.kind.key().contains(f)
        || crate::stats::aggregates::task_matches(a.event.tgid(), &comm, f)
        || a.severity.key().contains(f)
}
