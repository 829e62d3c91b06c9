//! Top: per-process and per-VMA rankings, sortable and filterable.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::Modifier;
use ratatui::text::Line;
use ratatui::widgets::{Cell, Row, Table};

use super::{block, fmt, title_style};
use crate::stats::aggregates::matches_filter;
use crate::stats::{Aggregate, SortKey, ranking};
use crate::tui::state::{AppState, TopView};

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
    let col = |k: SortKey, name: &'static str| {
        let c = Cell::from(name);
        if k == sort {
            c.style(title_style().add_modifier(Modifier::UNDERLINED))
        } else {
            c.style(title_style())
        }
    };
    let mut head = vec![Cell::from("task").style(title_style())];
    if view == TopView::Vmas {
        head.push(Cell::from("VMA").style(title_style()));
    }
    head.extend([
        col(SortKey::Exclusions, "excl"),
        col(SortKey::TotalWait, "total"),
        col(SortKey::MaxWait, "max"),
        col(SortKey::ReaderFailures, "rdfail"),
        col(SortKey::SlowDetaches, "sldet"),
        Cell::from("EINTR").style(title_style()),
    ]);
    let right = |s: String| Cell::from(Line::from(s).right_aligned());
    let body = rows.iter().map(|a: &Aggregate| {
        let mut cells = vec![Cell::from(format!("{}[{}]", fmt::comm(&a.comm), a.tgid))];
        if view == TopView::Vmas {
            cells.push(Cell::from(fmt::vma_range(a.vm_start, a.vm_end)));
        }
        cells.extend([
            right(fmt::count(a.exclusions)),
            right(fmt::ns(a.total_wait_ns)),
            right(fmt::ns(a.max_wait_ns)),
            right(fmt::count(a.reader_failures)),
            right(fmt::count(a.slow_detaches)),
            right(fmt::count(a.interrupted)),
        ]);
        Row::new(cells)
    });
    let mut widths = vec![Constraint::Min(12)];
    if view == TopView::Vmas {
        widths.push(Constraint::Length(15));
    }
    widths.extend([
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(6),
        Constraint::Length(5),
        Constraint::Length(5),
    ]);
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
    let t = Table::new(body, widths)
        .header(Row::new(head))
        .block(block(title));
    frame.render_widget(t, area);
}
