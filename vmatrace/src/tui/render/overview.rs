//! Overview: probe coverage, event rates with sparklines, losses, anomalies, reader
//! outcomes and the tracer's own cost.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Paragraph, Row, Table};
use vmatrace_common::{Counter, EventKind};

use super::{bad, block, dim, fmt, title_style, warn};
use crate::export::summary::logical_counts;
use crate::kernel::plan::{LogicalEvent, Observability, ProbePlan};
use crate::stats::rates;
use crate::tui::state::{AppState, DashboardData};

pub fn render(frame: &mut Frame, area: Rect, state: &AppState) {
    let d = state.view();
    // The top half must fit 13 logical events / 12 event kinds plus borders.
    // On a tall terminal the spare rows go to the log pane (unless it is open anyway).
    let (top, bottom, log) = if area.height >= 36 && !state.ui.log_pane {
        // The log gets what its lines need (an empty one a single row), the bottom
        // panes the rest: there the losses and reader costs can list everything.
        let log_h = super::log_height(state, area.height.saturating_sub(25));
        let [t, b, l] = Layout::vertical([
            Constraint::Length(15),
            Constraint::Min(10),
            Constraint::Length(log_h),
        ])
        .areas(area);
        (t, b, Some(l))
    } else {
        let bottom_h = area.height.saturating_sub(15).clamp(4, 10);
        let [t, b] =
            Layout::vertical([Constraint::Min(0), Constraint::Length(bottom_h)]).areas(area);
        (t, b, None)
    };
    if let Some(log) = log {
        super::render_log(frame, log, state);
    }
    let cov_w = if area.width >= 140 {
        area.width / 2
    } else {
        34
    };
    let [cov, events] =
        Layout::horizontal([Constraint::Length(cov_w), Constraint::Min(0)]).areas(top);
    render_coverage(frame, cov, state.ctx.plan.as_ref(), d);
    render_events(frame, events, d);
    let [losses, anomalies, readers] = Layout::horizontal([
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
        Constraint::Ratio(1, 3),
    ])
    .areas(bottom);
    render_losses(frame, losses, d);
    render_anomalies(frame, anomalies, d);
    render_readers(frame, readers, d);
}

fn status_of(plan: &ProbePlan, ev: LogicalEvent) -> (&'static str, String, Style) {
    let point_desc = |points: &[usize]| {
        points
            .iter()
            .filter_map(|i| plan.points.get(*i))
            .map(|p| format!("{} {}", p.mode.key(), fmt::text(&p.target)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match plan
        .coverage
        .iter()
        .find(|c| c.event == ev)
        .map(|c| &c.status)
    {
        Some(Observability::Direct { points }) => ("direct", point_desc(points), Style::default()),
        Some(Observability::Proxy { via, .. }) => ("proxy", fmt::text(via), warn()),
        Some(Observability::Unobservable { reason }) => ("none", fmt::text(reason), dim()),
        None => ("none", "not in plan".into(), dim()),
    }
}

fn render_coverage(frame: &mut Frame, area: Rect, plan: Option<&ProbePlan>, d: &DashboardData) {
    let Some(plan) = plan else {
        let p = Paragraph::new(vec![
            Line::raw("No probe plan:"),
            Line::styled("events are simulated or", dim()),
            Line::styled("the trace has no plan.", dim()),
        ]);
        frame.render_widget(p.block(block("Coverage")), area);
        return;
    };
    // Counts and the attach detail only where they can be read; at 80 columns the
    // status says enough (the Events table has the per-kind counts).
    let wide = area.width >= 60;
    // Counted as the exit summary counts them (a proxied event by its proxy's events).
    let counts = wide.then(|| {
        logical_counts(
            &d.totals_since_reset(),
            plan.generation,
            Some(plan),
            Some(d.stats.slow_detaches()),
        )
    });
    let rows = LogicalEvent::ALL.iter().map(|ev| {
        let (status, detail, style) = status_of(plan, *ev);
        let mut cells = vec![
            Cell::from(ev.key()),
            Cell::from(Span::styled(status, style)),
        ];
        if wide {
            let seen = counts
                .as_ref()
                .and_then(|c| c.get(ev.key()))
                .map_or("-".into(), |c| fmt::count(c.count));
            cells.push(Cell::from(Line::from(seen).right_aligned()));
            cells.push(Cell::from(Span::styled(detail, dim())));
        }
        Row::new(cells)
    });
    let mut widths = vec![Constraint::Length(20), Constraint::Length(6)];
    if wide {
        widths.extend([Constraint::Length(7), Constraint::Min(0)]);
    }
    // How the hooks attach decides whether preemption can lose runs: worth the title.
    let title = if wide {
        format!("Coverage · seen · {}", plan.attach.short())
    } else {
        "Coverage".to_string()
    };
    let t = Table::new(rows, widths).block(block(title));
    frame.render_widget(t, area);
}

fn render_events(frame: &mut Frame, area: Rect, d: &DashboardData) {
    // name 16, total 7, rate 7, 3 gaps: the rest is sparkline.
    let spark_w = area.width.saturating_sub(2 + 16 + 7 + 7 + 3) as usize;
    let r = d.stats.rates();
    let rows = EventKind::ALL.iter().map(|k| {
        let series = rates::series_of(*k);
        let total = d.events(*k as usize);
        Row::new(vec![
            Cell::from(k.key()),
            Cell::from(Line::from(fmt::count(total)).right_aligned()),
            // After the source ended the last interval's rate would be stale.
            Cell::from(
                Line::from(if d.source_ended {
                    "-".to_string()
                } else {
                    fmt::rate(r.last_rate(series))
                })
                .right_aligned(),
            ),
            Cell::from(Span::styled(
                fmt::sparkline(&r.history(series, spark_w), spark_w),
                Style::default().fg(ratatui::style::Color::Cyan),
            )),
        ])
    });
    let title = format!("Events ({} total, /s)", fmt::count(d.total_events()));
    let t = Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(7),
            Constraint::Length(7),
            Constraint::Min(0),
        ],
    )
    .block(block(title));
    frame.render_widget(t, area);
}

fn kv(key: &str, v: u64, width: usize) -> Line<'static> {
    let value = fmt::count(v);
    let key = fmt::clip(key, width.saturating_sub(value.len() + 1));
    let pad = width
        .saturating_sub(key.chars().count() + value.len())
        .max(1);
    Line::from(vec![
        Span::raw(key),
        Span::raw(" ".repeat(pad)),
        Span::styled(value, if v > 0 { bad() } else { Style::default() }),
    ])
}

fn render_losses(frame: &mut Frame, area: Rect, d: &DashboardData) {
    let w = area.width.saturating_sub(2) as usize;
    let losses = d.stats.losses();
    let total: u64 = losses.values().sum();
    // Non-zero losses first: at 80x24 only the first few lines fit.
    let mut sorted: Vec<_> = losses.iter().collect();
    sorted.sort_by_key(|(_, v)| std::cmp::Reverse(**v));
    let mut lines: Vec<Line> = sorted.iter().map(|(k, v)| kv(k, **v, w)).collect();
    lines.push(Line::styled(
        format!(
            "validator resyncs {} · filtered {}",
            d.validator_resyncs,
            fmt::count(d.stats.counter(Counter::Filtered))
        ),
        dim(),
    ));
    let title = format!("Losses ({})", fmt::count(total));
    frame.render_widget(Paragraph::new(lines).block(block(title)), area);
}

fn render_anomalies(frame: &mut Frame, area: Rect, d: &DashboardData) {
    let w = area.width.saturating_sub(2) as usize;
    let mut by: Vec<_> = d.anomaly_counts.iter().collect();
    by.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let lines: Vec<Line> = if by.is_empty() {
        vec![Line::styled(
            "none",
            Style::default().fg(ratatui::style::Color::Green),
        )]
    } else {
        by.iter().map(|(k, v)| kv(k.key(), **v, w)).collect()
    };
    let title = format!("Anomalies ({})", fmt::count(d.anomalies_total()));
    frame.render_widget(Paragraph::new(lines).block(block(title)), area);
}

fn render_readers(frame: &mut Frame, area: Rect, d: &DashboardData) {
    let r = d.stats.reader_outcomes();
    let attempts = r.acquire_ok + r.acquire_fail;
    let fail_pct = if attempts == 0 {
        0.0
    } else {
        r.acquire_fail as f64 * 100.0 / attempts as f64
    };
    let mut lines = vec![
        Line::from(vec![
            Span::raw("ok "),
            Span::styled(fmt::count(r.acquire_ok), title_style()),
            Span::raw(format!(
                " fail {} ({fail_pct:.2}%)",
                fmt::count(r.acquire_fail)
            )),
        ]),
        Line::raw(format!(
            "excluded {} · sampled {}",
            fmt::count(r.fail_excluded),
            fmt::count(r.sampled)
        )),
        Line::raw(format!(
            "puts {} · wakes {}",
            fmt::count(r.release),
            fmt::count(r.writer_wake)
        )),
    ];
    lines.push(match &d.self_cost {
        Some(c) => Line::raw(format!(
            "self {:.0}ns/run · {:.2}% CPU",
            c.ns_per_run,
            c.cpu_fraction * 100.0
        )),
        None => Line::styled("self-cost: no BPF stats", dim()),
    });
    if let Some(c) = &d.self_cost {
        for p in &c.programs {
            let per = p.run_time_ns.checked_div(p.run_cnt).unwrap_or(0);
            lines.push(Line::styled(
                format!("{} {}× {}ns", p.name, fmt::count(p.run_cnt), per),
                dim(),
            ));
        }
    }
    frame.render_widget(Paragraph::new(lines).block(block("Readers · cost")), area);
}
