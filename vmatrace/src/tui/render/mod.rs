//! Renderers: pure functions of [`AppState`] onto a ratatui [`Frame`].
//!
//! Layout: header (session), tabs, the screen, a key-hint footer; the help and the log
//! pane are overlays. Every screen degrades to 80x24 and spreads out on larger terminals.

pub mod anomalies;
pub mod columns;
pub mod fmt;
pub mod model;
pub mod overview;
pub mod top;
pub mod writers;

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, Paragraph, Tabs, Wrap};

use super::state::{AppState, Screen};

/// Below this the dashboard only says it needs more room.
pub const MIN_WIDTH: u16 = 60;
pub const MIN_HEIGHT: u16 = 16;

pub(crate) fn title_style() -> Style {
    Style::default().add_modifier(Modifier::BOLD)
}

pub(crate) fn dim() -> Style {
    Style::default().fg(Color::DarkGray)
}

pub(crate) fn warn() -> Style {
    Style::default().fg(Color::Yellow)
}

pub(crate) fn bad() -> Style {
    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD)
}

pub(crate) fn block(title: impl Into<String>) -> Block<'static> {
    Block::default()
        .borders(Borders::ALL)
        .title(Span::styled(format!(" {} ", title.into()), title_style()))
}

/// Draw the whole dashboard.
pub fn render(frame: &mut Frame, state: &AppState) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "vmatrace needs at least {MIN_WIDTH}x{MIN_HEIGHT} (now {}x{}). q quits.",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    let [header, tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(0),
        Constraint::Length(1),
    ])
    .areas(area);
    render_header(frame, header, state);
    render_tabs(frame, tabs, state);
    let body = if state.ui.log_pane {
        let [main, log] = Layout::vertical([
            Constraint::Min(0),
            Constraint::Length(log_height(state, body.height / 3 + 2)),
        ])
        .areas(body);
        render_log(frame, log, state);
        main
    } else {
        body
    };
    match state.ui.screen {
        Screen::Overview => overview::render(frame, body, state),
        Screen::Writers => writers::render(frame, body, state),
        Screen::Top => top::render(frame, body, state),
        Screen::Anomalies => anomalies::render(frame, body, state),
        Screen::Model => model::render(frame, body, state),
    }
    render_footer(frame, footer, state);
    if state.ui.help {
        render_help(frame, area);
    }
}

fn render_header(frame: &mut Frame, area: Rect, state: &AppState) {
    let d = state.view();
    let ctx = &state.ctx;
    let source = if ctx.source_detail.is_empty() {
        ctx.source.label().to_string()
    } else {
        format!("{} {}", ctx.source.label(), fmt::text(&ctx.source_detail))
    };
    let (status, status_style) = if state.paused() {
        ("PAUSED", warn().add_modifier(Modifier::REVERSED))
    } else if d.source_ended {
        ("ENDED", dim().add_modifier(Modifier::REVERSED))
    } else {
        ("LIVE", Style::default().fg(Color::Green))
    };
    let sep = Span::styled(" │ ", dim());
    // Most important first: on a narrow terminal the tail is what gets cut.
    let mut spans = vec![
        Span::styled("vmatrace ", title_style()),
        Span::styled(status, status_style),
        sep.clone(),
        validation(d),
        sep.clone(),
    ];
    // The time of day first: what an operator matches against the incident timeline.
    if let Some(now) = d.now_realtime_ns(ctx.clock) {
        spans.splice(
            1..1,
            [
                Span::styled(
                    format!("{} {}", ctx.zone.hms(now), fmt::text(&ctx.zone.name)),
                    title_style(),
                ),
                sep.clone(),
            ],
        );
    }
    // What is being looked at (the trace file of a replay) before how long.
    spans.extend([
        Span::raw(fmt::clip(&source, 40)),
        sep.clone(),
        Span::raw(format!("gen {}", ctx.generation.key())),
        sep.clone(),
        Span::raw(format!(
            "kernel {}",
            fmt::clip(&fmt::text(&ctx.kernel_release), 24)
        )),
        sep,
        Span::raw(format!("up {}", fmt::hms(d.uptime.as_secs()))),
    ]);
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The validation verdict. With losses the validator resynchronised and saw only part of
/// the transitions: "0 anomalies" would overstate what was checked.
fn validation(d: &crate::tui::state::DashboardData) -> Span<'static> {
    // Since start or the last reset, like the Overview's anomaly pane.
    let anomalies = d.anomalies_total();
    let lost = d.stats.total_losses();
    let gaps = if lost > 0 {
        Some(format!("{} lost", fmt::count(lost)))
    } else if d.validator_resyncs > 0 {
        Some(format!("{} resyncs", fmt::count(d.validator_resyncs)))
    } else {
        None
    };
    match (anomalies, gaps) {
        (0, None) => Span::raw("validated, 0 anomalies"),
        (0, Some(g)) => Span::styled(format!("validated with gaps ({g})"), warn()),
        (n, None) => Span::styled(format!("{} anomalies", fmt::count(n)), bad()),
        (n, Some(g)) => Span::styled(format!("{} anomalies, gaps ({g})", fmt::count(n)), bad()),
    }
}

fn render_tabs(frame: &mut Frame, area: Rect, state: &AppState) {
    let titles = Screen::ALL
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{} {}", i + 1, s.title()));
    let selected = Screen::ALL.iter().position(|s| *s == state.ui.screen);
    let tabs = Tabs::new(titles)
        .select(selected)
        .highlight_style(Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD))
        .divider(" ");
    frame.render_widget(tabs, area);
}

fn render_footer(frame: &mut Frame, area: Rect, state: &AppState) {
    let line = if state.ui.editing_filter {
        Line::from(vec![
            Span::styled("filter: ", title_style()),
            Span::raw(state.ui.filter.clone()),
            Span::styled("▏", warn()),
            Span::styled("  Enter apply · Esc clear", dim()),
        ])
    } else {
        let hints = match state.ui.screen {
            Screen::Top => "s sort · v procs/VMAs · / filter · Esc clear",
            Screen::Anomalies if state.ui.evidence => "Esc back · ↑↓ other group",
            Screen::Anomalies => "↑↓ select · Home/End oldest/newest · Enter evidence · / filter",
            _ => "1-5/Tab screens",
        };
        let mut spans = vec![
            Span::styled(hints, dim()),
            Span::styled(" · p pause · r reset · l log · ? help · q quit", dim()),
        ];
        if !state.ui.filter.is_empty() {
            spans.push(Span::styled(
                format!("  [filter: {}]", state.ui.filter),
                warn(),
            ));
        }
        Line::from(spans)
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// Rows for the log pane: its lines and borders, at least one line, at most `max`.
pub(crate) fn log_height(state: &AppState, max: u16) -> u16 {
    let lines = u16::try_from(state.log.len()).unwrap_or(u16::MAX).max(1);
    lines.saturating_add(2).min(max.max(3))
}

pub(crate) fn render_log(frame: &mut Frame, area: Rect, state: &AppState) {
    let rows = area.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = state
        .log
        .iter()
        .skip(state.log.len().saturating_sub(rows))
        .map(|l| Line::raw(fmt::text(l)))
        .collect();
    let body = if lines.is_empty() {
        Paragraph::new(Line::styled("(no log messages)", dim()))
    } else {
        Paragraph::new(lines)
    };
    frame.render_widget(Clear, area);
    frame.render_widget(body.block(block("Log")), area);
}

const HELP: &[(&str, &str)] = &[
    ("1-5, Tab", "Overview, Writers, Top, Anomalies, Model"),
    ("?", "this help (any key closes)"),
    ("p", "pause / resume the display (tracing goes on)"),
    ("r", "reset counters, histograms and rates"),
    ("l", "show / hide the log pane"),
    ("q, Ctrl-C", "quit"),
    ("Top: s", "cycle the sort column"),
    ("Top: v", "per-process / per-VMA table"),
    (
        "Top: excl",
        "readers-exclusion waits (write locks, detaches)",
    ),
    (
        "Top: rdfail",
        "sampled failed lock_vma_under_rcu (– not sampled)",
    ),
    (
        "Top: fallbk",
        "readers a writer sent to mmap_lock (every one)",
    ),
    (
        "Top: sldet",
        "slow-path detaches (readers still held the VMA)",
    ),
    ("/", "filter: comm or kind substring, pid exact"),
    (
        "Anomalies: ↑↓",
        "select; Enter opens the newest one's evidence",
    ),
    ("Home/End", "oldest group / newest (follows new ones)"),
    ("Esc", "back / close / clear the filter"),
];

fn render_help(frame: &mut Frame, area: Rect) {
    let width = 68.min(area.width.saturating_sub(2));
    let height = (HELP.len() as u16 + 4).min(area.height.saturating_sub(2));
    let popup = Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    };
    let mut lines: Vec<Line> = HELP
        .iter()
        .map(|(k, v)| {
            Line::from(vec![
                Span::styled(format!("{k:>14}  "), title_style()),
                Span::raw(*v),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        "Wait percentiles are log2 bucket upper edges (at most 2x high).",
        dim(),
    ));
    frame.render_widget(Clear, popup);
    frame.render_widget(Paragraph::new(lines).block(block("Keys")), popup);
}
