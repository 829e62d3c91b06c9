//! Anomalies: the list, and for the selected one its evidence (the VMA's last events and
//! the model's expected vs observed state).

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Table, TableState, Wrap};
use vmatrace_common::Event;
use vmatrace_common::event::flags;
use vmatrace_common::model::Generation;

use super::columns::{self, Column, Value};
use super::{bad, block, dim, fmt, title_style, warn};
use crate::tui::anomaly_groups::AnomalyGroup;
use crate::tui::state::{AnomalyEntry, AppState};
use crate::validate::Severity;

pub fn render(frame: &mut Frame, area: Rect, state: &AppState) {
    if state.ui.evidence
        && let Some(e) = state.selected_anomaly()
    {
        render_evidence(frame, area, state, e);
        return;
    }
    render_list(frame, area, state);
}

fn severity(s: Severity) -> Span<'static> {
    match s {
        Severity::Error => Span::styled("error", bad()),
        Severity::Warning => Span::styled("warning", warn()),
    }
}

fn task(ev: &Event) -> String {
    format!("{}[{}/{}]", fmt::comm(&ev.comm), ev.tgid(), ev.tid())
}

fn render_list(frame: &mut Frame, area: Rect, state: &AppState) {
    let d = state.view();
    let groups = state.visible_groups();
    // The same count as the header (since start or the last reset).
    let since_reset = d.anomalies_total();
    if groups.is_empty() {
        let msg = if d.anomaly_groups.is_empty() {
            "No anomalies: every observed transition was allowed by the model."
        } else {
            "No anomaly matches the filter."
        };
        let p = Paragraph::new(Line::styled(msg, dim())).wrap(Wrap { trim: true });
        frame.render_widget(p.block(block(format!("Anomalies ({since_reset})"))), area);
        return;
    }
    let mut columns = group_columns(state);
    if let Some(c) = columns::mapping(state, 7, |g: &&AnomalyGroup| {
        let e = &g.latest.anomaly.event;
        (e.tgid(), e.vm_start, e.vm_end)
    }) {
        columns.insert(7, c);
    }
    let laid = columns::layout(&columns, &groups, area.width.saturating_sub(2));
    let before = d.anomalies_seen.saturating_sub(since_reset);
    let mut title = format!(
        "Anomalies ({since_reset}{}) by kind and VMA: {} groups",
        if before > 0 {
            format!(" since reset, {before} before")
        } else {
            String::new()
        },
        groups.len()
    );
    if d.anomaly_groups.dropped() > 0 {
        title.push_str(&format!(
            ", {} oldest dropped",
            fmt::count(d.anomaly_groups.dropped())
        ));
    }
    title.push_str(if state.ui.anomaly_scrolled {
        " · End: follow newest"
    } else {
        " · following newest"
    });
    let t = Table::new(laid.rows, laid.widths)
        .header(laid.header)
        .row_highlight_style(Style::default().add_modifier(Modifier::REVERSED))
        .block(block(title));
    let mut ts = TableState::default().with_selected(Some(state.selected_row(groups.len())));
    frame.render_stateful_widget(t, area, &mut ts);
}

/// One row per (kind, VMA): how often, when last and first, who last, where.
fn group_columns<'a>(state: &'a AppState) -> Vec<Column<'a, &'a AnomalyGroup>> {
    vec![
        Column::code("last", 9, move |g: &&AnomalyGroup| {
            Value::from(state.time_of(g.latest.anomaly.event.ts_ns))
        }),
        Column::number("count", 10, |g: &&AnomalyGroup| {
            Value::from(fmt::count(g.count))
        }),
        Column::code("sev", 4, |g: &&AnomalyGroup| {
            let s = severity(g.latest.anomaly.severity);
            Value::styled(s.content.into_owned(), s.style)
        }),
        Column::code("kind", 10, |g: &&AnomalyGroup| {
            Value::from(g.latest.anomaly.kind.key())
        }),
        Column::text("last task", 14, 40, 7, move |g: &&AnomalyGroup| {
            let ev = &g.latest.anomaly.event;
            let comm = state.view().stats.process_comm(ev.tgid(), &ev.comm);
            Value::from(fmt::process(ev.tgid(), &comm))
        }),
        Column::code("VMA start", 8, |g: &&AnomalyGroup| {
            Value::from(format!("{:x}", g.latest.anomaly.event.vm_start))
        }),
        Column::number("size", 6, |g: &&AnomalyGroup| {
            let ev = &g.latest.anomaly.event;
            Value::from(fmt::size(ev.vm_end.saturating_sub(ev.vm_start)))
        }),
        Column::code("first", 3, move |g: &&AnomalyGroup| {
            Value::styled(state.time_of(g.first_ts_ns), dim())
        }),
    ]
}

fn render_evidence(frame: &mut Frame, area: Rect, state: &AppState, e: &AnomalyEntry) {
    let a = &e.anomaly;
    let ev = &a.event;
    let label = |k: &str| Span::styled(format!("{k:<9}"), title_style());
    let detail = vec![
        Line::from(vec![
            label("anomaly"),
            Span::styled(a.kind.key(), bad()),
            Span::raw(" ("),
            severity(a.severity),
            Span::raw(format!(") #{} at {}", e.seq, state.time_of(ev.ts_ns))),
        ]),
        Line::from(vec![
            label("task"),
            Span::raw(format!("{} cpu {}", task(ev), ev.cpu)),
        ]),
        Line::from(vec![
            label("VMA"),
            Span::raw(format!(
                "{:x}-{:x} ({}) {}",
                ev.vm_start,
                ev.vm_end,
                fmt::size(ev.vm_end.saturating_sub(ev.vm_start)),
                state
                    .mapping_name(ev.tgid(), ev.vm_start, ev.vm_end)
                    .map_or(String::new(), fmt::text)
            )),
        ]),
        Line::from(vec![label("state"), Span::raw(fmt::text(&a.state))]),
        Line::from(vec![label("expected"), Span::raw(fmt::text(&a.expected))]),
        Line::from(vec![
            label("observed"),
            Span::styled(fmt::text(&a.observed), warn()),
        ]),
    ];
    let p = Paragraph::new(detail)
        .wrap(Wrap { trim: false })
        .block(block(format!("Evidence #{} (Esc back)", e.seq)));
    // As tall as the wrapped text (a long "expected" takes several rows), up to half.
    let detail_h = u16::try_from(p.line_count(area.width))
        .unwrap_or(u16::MAX)
        .min(area.height / 2);
    let [top, bottom] =
        Layout::vertical([Constraint::Length(detail_h), Constraint::Min(0)]).areas(area);
    frame.render_widget(p, top);
    render_events(frame, bottom, &a.evidence, ev, state.ctx.generation);
}

/// The VMA's recent events, oldest first; the offending one (last) is highlighted.
fn render_events(
    frame: &mut Frame,
    area: Rect,
    events: &[Event],
    offending: &Event,
    g: Generation,
) {
    let columns = event_columns(offending, g);
    let laid = columns::layout(&columns, events, area.width.saturating_sub(2));
    let rows = laid.rows.into_iter().zip(events).map(|(row, ev)| {
        if ev == offending {
            row.style(bad())
        } else {
            row
        }
    });
    let t = Table::new(rows, laid.widths)
        .header(laid.header)
        .block(block(format!(
            "Events of this VMA ({}, oldest first)",
            events.len()
        )));
    frame.render_widget(t, area);
}

/// The evidence columns. `L/S seq` (`vm_lock_seq`/`mm_lock_seq`: equal means
/// write-locked) keeps every digit; the kernel function name goes first when narrow.
fn event_columns(offending: &Event, g: Generation) -> Vec<Column<'_, Event>> {
    let or_dash = |ok: bool, s: String| Value::from(if ok { s } else { "-".into() });
    let dash = || Value::from("-");
    vec![
        Column::number("Δt", 9, move |ev: &Event| {
            Value::from(signed_ns(ev.ts_ns as i128 - offending.ts_ns as i128))
        }),
        Column::code("event", 10, |ev: &Event| {
            Value::from(ev.kind().map_or("?", |k| k.key()))
        }),
        Column::code("function", 1, |ev: &Event| {
            Value::from(ev.probe().kernel_name())
        }),
        Column::number("tid", 3, |ev: &Event| Value::from(ev.tid().to_string())),
        Column::number("refcnt", 8, move |ev: &Event| {
            or_dash(ev.has(flags::VMA_FIELDS), fmt::refcnt(ev.refcnt, g))
        }),
        Column::number("entry", 6, move |ev: &Event| {
            ev.entry_refcnt_read()
                .map_or_else(dash, |r| Value::from(fmt::refcnt(r, g)))
        }),
        Column::number("L/S seq", 9, move |ev: &Event| match ev.mm_seq() {
            Some(s) if ev.has(flags::VMA_FIELDS) => {
                Value::from(format!("{}/{}", ev.vm_lock_seq as i32, s as i32))
            }
            _ => dash(),
        }),
        Column::number("ret", 5, move |ev: &Event| {
            ev.returned().map_or_else(dash, |r| Value::from(ret_str(r)))
        }),
        Column::number("wait", 7, move |ev: &Event| {
            ev.waited_ns()
                .map_or_else(dash, |w| Value::from(fmt::ns(w)))
        }),
    ]
}

/// A time difference: "-2.00ms", "0ns".
fn signed_ns(dt: i128) -> String {
    let abs = fmt::ns(u64::try_from(dt.unsigned_abs()).unwrap_or(u64::MAX));
    if dt < 0 { format!("-{abs}") } else { abs }
}

/// Return values: small errnos and booleans as numbers, pointers as "ptr".
fn ret_str(ret: i64) -> String {
    if (-4095..=4095).contains(&ret) {
        ret.to_string()
    } else {
        "ptr".into()
    }
}
