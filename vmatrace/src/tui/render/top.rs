//! Top: per-process and per-VMA rankings, sortable and filterable.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::Table;
use vmatrace_common::Counter;

use super::columns::{self, Column, Value};
use super::{block, dim, fmt};
use crate::stats::aggregates::matches_filter;
use crate::stats::{Aggregate, SortKey, Stats, ranking};
use crate::tui::state::{AppState, DashboardData, TopView};
use crate::tui::timeline::SECONDS;

/// Both tables side by side from this width.
const SPLIT_WIDTH: u16 = 170;

pub fn render(frame: &mut Frame, area: Rect, state: &AppState) {
    if area.width >= SPLIT_WIDTH {
        let [l, r] =
            Layout::horizontal([Constraint::Percentage(45), Constraint::Min(0)]).areas(area);
        render_table(frame, l, state, TopView::Processes);
        render_table(frame, r, state, TopView::Vmas);
    } else {
        render_table(frame, area, state, state.ui.top_view);
    }
}

fn render_table(frame: &mut Frame, area: Rect, state: &AppState, view: TopView) {
    let d = state.view();
    let sort = state.ui.top_sort;
    let limit = area.height.saturating_sub(3) as usize;
    let (rows, tracked, evicted, what) = match view {
        TopView::Processes => (
            ranking(d.stats.processes().values(), sort, &state.ui.filter, limit),
            d.stats.processes().len(),
            d.stats.processes().evicted(),
            "processes",
        ),
        TopView::Vmas => (
            ranking(d.stats.vmas().values(), sort, &state.ui.filter, limit),
            d.stats.vmas().len(),
            d.stats.vmas().evicted(),
            "VMAs",
        ),
    };
    let readers_sampled =
        d.stats.counter(Counter::ReaderSampled) > 0 || d.stats.sampled_reader_failures() > 0;
    let mut columns = columns(view, sort, readers_sampled, &d.stats);
    if view == TopView::Vmas
        && let Some(c) = columns::mapping(state, 6, |a: &Aggregate| (a.tgid, a.vm_start, a.vm_end))
    {
        columns.insert(3, c);
    }
    if view == TopView::Processes {
        // Since when: each process's waits per second up to the newest event, as wide as
        // the terminal allows next to the numbers.
        let room = area.width.saturating_sub(70);
        let seconds = [SECONDS, 30, 10]
            .into_iter()
            .find(|s| usize::from(room) >= *s)
            .unwrap_or(10);
        columns.extend(timeline_columns(d, seconds));
    }
    let laid = columns::layout(&columns, &rows, area.width.saturating_sub(2));
    let filter = if state.ui.filter.is_empty() {
        String::new()
    } else {
        let table = match view {
            TopView::Processes => d.stats.processes().values().collect::<Vec<_>>(),
            TopView::Vmas => d.stats.vmas().values().collect(),
        };
        let matching = table
            .into_iter()
            .filter(|a| matches_filter(a, &state.ui.filter))
            .count();
        format!(", filter \"{}\": {matching} match", state.ui.filter)
    };
    let evicted = if evicted > 0 {
        format!(", {} evicted", fmt::count(evicted))
    } else {
        String::new()
    };
    let title = format!(
        "Top {what} by {} ({tracked} tracked{evicted}{filter})",
        sort.label()
    );
    let mut b = block(title);
    if area.height >= 8 {
        let legend = if usize::from(area.width) >= LEGEND.chars().count() + 2 {
            LEGEND
        } else {
            LEGEND_SHORT
        };
        b = b.title_bottom(Line::styled(legend, dim()));
    }
    let t = Table::new(laid.rows, laid.widths)
        .header(laid.header)
        .block(b);
    frame.render_widget(t, area);
}

/// What the short headers mean (also in the help).
pub const LEGEND: &str = " excl exclusions · rdfail sampled reader failures · fallbk readers a writer sent to mmap_lock (all) · sldet slow detaches ";
/// The same for 80 columns (`?` explains every header).
pub const LEGEND_SHORT: &str =
    " rdfail sampled fails · fallbk writer sent to mmap_lock · sldet slow detach ";

/// The Top table's columns. Numbers are never cut: on a narrow terminal the task name
/// shrinks, then the rarest counts go (EINTR, slow detaches, reader failures).
fn columns(
    view: TopView,
    sort: SortKey,
    readers_sampled: bool,
    stats: &Stats,
) -> Vec<Column<'_, Aggregate>> {
    let sorted = move |k: SortKey| {
        if k == sort {
            Style::default().add_modifier(Modifier::UNDERLINED)
        } else {
            Style::default()
        }
    };
    // A process by its tgid and its leader's comm (a VMA row's own comm is the last
    // thread's).
    let mut c = vec![Column::text("task", 14, 24, 10, move |a: &Aggregate| {
        Value::from(fmt::process(a.tgid, &stats.process_comm(a.tgid, &a.comm)))
    })];
    if view == TopView::Vmas {
        c.push(Column::code("VMA start", 9, |a: &Aggregate| {
            Value::from(format!("{:x}", a.vm_start))
        }));
        c.push(Column::number("size", 6, |a: &Aggregate| {
            Value::from(fmt::size(a.vm_end.saturating_sub(a.vm_start)))
        }));
    }
    c.extend([
        Column::number("excl", 7, |a: &Aggregate| {
            Value::from(fmt::count(a.exclusions))
        })
        .with_header_style(sorted(SortKey::Exclusions)),
        Column::number("total", 8, |a: &Aggregate| {
            Value::from(fmt::ns(a.total_wait_ns))
        })
        .with_header_style(sorted(SortKey::TotalWait)),
        Column::number("max", 8, |a: &Aggregate| {
            Value::from(fmt::ns(a.max_wait_ns))
        })
        .with_header_style(sorted(SortKey::MaxWait)),
        Column::number("rdfail", 4, move |a: &Aggregate| {
            Value::from(if readers_sampled {
                fmt::count(a.reader_failures)
            } else {
                NOT_SAMPLED.to_string()
            })
        })
        .with_header_style(sorted(SortKey::ReaderFailures)),
    ]);
    // Counted per process in the kernel; a VMA row has no such count.
    if view == TopView::Processes {
        c.push(
            Column::number("fallbk", 5, |a: &Aggregate| {
                Value::from(fmt::count(a.writer_fallbacks))
            })
            .with_header_style(sorted(SortKey::WriterFallbacks)),
        );
    }
    c.extend([
        Column::number("sldet", 3, |a: &Aggregate| {
            Value::from(fmt::count(a.slow_detaches))
        })
        .with_header_style(sorted(SortKey::SlowDetaches)),
        Column::number("EINTR", 2, |a: &Aggregate| {
            Value::from(fmt::count(a.interrupted))
        }),
    ]);
    c
}

/// Waits per second over the last `seconds` (10, 30 or 60; a sparkline, newest on the right) and the
/// longest wait among them.
fn timeline_columns(d: &DashboardData, seconds: usize) -> [Column<'_, Aggregate>; 2] {
    let (header, max_header) = match seconds {
        60 => ("waits/s, last 60s", "max 60s"),
        30 => ("waits/s, last 30s", "max 30s"),
        _ => ("waits/s 10s", "max 10s"),
    };
    let line = move |a: &Aggregate| d.timelines.line(a.tgid, d.newest_ts_ns, seconds);
    [
        Column::code(header, 5, move |a: &Aggregate| {
            let spark = fmt::sparkline(&line(a).waits, seconds);
            Value::styled(spark, Style::default().fg(Color::Cyan))
        }),
        Column::number(max_header, 4, move |a: &Aggregate| {
            Value::from(fmt::ns(line(a).max_ns))
        }),
    ]
}

/// A count that was not measured (readers not sampled), not a zero.
pub const NOT_SAMPLED: &str = "–";
