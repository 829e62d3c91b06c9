//! Writers: the readers-exclusion wait histogram, percentiles and the slowest recent waits.

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Paragraph, Table};

use super::columns::{self, Column, Value};
use super::{bad, block, dim, fmt, title_style};
use crate::stats::histogram::bucket_range;
use crate::stats::{Log2Histogram, WaitSample, WaitSource};
use crate::tui::state::{AppState, DashboardData};

pub fn render(frame: &mut Frame, area: Rect, state: &AppState) {
    let d = state.view();
    let [top, bottom] =
        Layout::vertical([Constraint::Percentage(55), Constraint::Min(0)]).areas(area);
    let [hist, write, pct] = Layout::horizontal([
        Constraint::Ratio(1, 2),
        Constraint::Ratio(1, 2),
        Constraint::Length(30),
    ])
    .areas(top);
    let title = match d.stats.wait_source() {
        WaitSource::ExcludeExit => ["Readers-exclusion wait", "Exclusion wait"],
        // Start-exclude is inlined (6.15–6.18) or notrace (Debian 6.19): not hooked.
        WaitSource::WriteLockExit => ["Exclusion wait (write/detach proxy)", "Exclusion (proxy)"],
    };
    render_histogram(frame, hist, d.stats.exclusion_histogram(), title);
    // The whole write-lock slow path (`__vma_start_write`), exclusion included.
    render_histogram(
        frame,
        write,
        d.stats.write_lock_histogram(),
        ["Write lock", "Write lock"],
    );
    render_percentiles(frame, pct, d);
    render_slowest(frame, bottom, state);
}

/// One line per log2 bucket from the fastest to the slowest occupied one; when they do not
/// all fit, the fastest are folded into the first line.
/// `titles`: the full title and a short one for when the full one (with its sample
/// count) does not fit the border.
fn render_histogram(frame: &mut Frame, area: Rect, h: &Log2Histogram, titles: [&str; 2]) {
    let fits =
        |t: &str, n: &str| t.chars().count() + n.chars().count() + 4 <= usize::from(area.width);
    let full = format!(" ({} samples)", fmt::count(h.count()));
    let short = format!(" ({})", fmt::count(h.count()));
    let (title, count) = [
        (titles[0], &full),
        (titles[0], &short),
        (titles[1], &full),
        (titles[1], &short),
    ]
    .into_iter()
    .find(|(t, n)| fits(t, n))
    .unwrap_or((titles[1], &short));
    let rows = area.height.saturating_sub(2) as usize;
    let Some((first, last)) = h.occupied() else {
        let p = Paragraph::new(Line::styled("no waits observed yet", dim()));
        frame.render_widget(p.block(block(titles[0])), area);
        return;
    };
    let b = h.buckets();
    let start = if last - first + 1 > rows && rows > 0 {
        last + 1 - rows
    } else {
        first
    };
    let folded: u64 = b[first..start].iter().sum();
    // Each line is labelled with its bucket's upper edge, in the percentiles' units: a
    // percentile is the upper edge of its bucket, so "p50 65.5µs" is the "≤65.5µs" line.
    let shown: Vec<(String, u64)> = (start..=last)
        .map(|i| {
            let n = if i == start { b[i] + folded } else { b[i] };
            (format!("≤{}", fmt::ns(bucket_range(i).1)), n)
        })
        .collect();
    let max = shown.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let bar_w = area.width.saturating_sub(2 + 9 + 1 + 8) as u64;
    let lines: Vec<Line> = shown
        .into_iter()
        .map(|(label, n)| {
            let len = (n * bar_w).div_ceil(max) as usize;
            Line::from(vec![
                Span::raw(format!("{label:>9} ")),
                Span::styled("█".repeat(len), Style::default().fg(Color::Cyan)),
                Span::raw(" ".repeat(bar_w as usize - len + 1)),
                Span::raw(format!("{:>7}", fmt::count(n))),
            ])
        })
        .collect();
    let title = format!("{title}{count}");
    frame.render_widget(Paragraph::new(lines).block(block(title)), area);
}

fn render_percentiles(frame: &mut Frame, area: Rect, d: &DashboardData) {
    let s = &d.stats;
    let p = s.percentiles();
    let w = s.write_lock_histogram().percentiles();
    let line = |k: &str, v: String| {
        Line::from(vec![
            Span::raw(format!("{k:<15}")),
            Span::styled(v, title_style()),
        ])
    };
    let mut lines = vec![
        line("p50", fmt::ns(p.p50_ns)),
        line("p90", fmt::ns(p.p90_ns)),
        line("p99", fmt::ns(p.p99_ns)),
        line("max", fmt::ns(p.max_ns)),
        Line::from(vec![
            Span::raw(format!("{:<15}", "-EINTR")),
            Span::styled(
                fmt::count(s.interrupted()),
                if s.interrupted() > 0 {
                    bad()
                } else {
                    title_style()
                },
            ),
        ]),
        line("for detach", fmt::count(s.detach_exclusions())),
        line("slow detaches", fmt::count(s.slow_detaches())),
        line("found detached", fmt::count(s.found_detached())),
    ];
    lines.push(line("write p50", fmt::ns(w.p50_ns)));
    lines.push(line("write p99", fmt::ns(w.p99_ns)));
    frame.render_widget(Paragraph::new(lines).block(block("Percentiles")), area);
}

/// Width from which the slowest wait's stack gets a pane beside the table.
const STACK_PANE_MIN_WIDTH: u16 = 120;

fn render_slowest(frame: &mut Frame, area: Rect, state: &AppState) {
    let d = state.view();
    let area = if area.width >= STACK_PANE_MIN_WIDTH {
        let [table, stack] =
            Layout::horizontal([Constraint::Percentage(58), Constraint::Min(0)]).areas(area);
        render_slow_stack(frame, stack, state);
        table
    } else {
        area
    };
    let rows = d.stats.slowest().items();
    let mut columns = slowest_columns(state);
    if let Some(c) = columns::mapping(state, 6, |w: &WaitSample| (w.tgid, w.vm_start, w.vm_end)) {
        columns.insert(5, c);
    }
    let laid = columns::layout(&columns, rows, area.width.saturating_sub(2));
    let window = d.stats.slowest().window_ns() / 1_000_000_000;
    let t = Table::new(laid.rows, laid.widths)
        .header(laid.header)
        .block(block(format!("Slowest waits (last {window}s)")));
    frame.render_widget(t, area);
}

/// Why the slowest wait that reached `--slow-wait` was slow: the writer's syscall and
/// its kernel stack, innermost frame first.
fn render_slow_stack(frame: &mut Frame, area: Rect, state: &AppState) {
    let d = state.view();
    let stats = &d.stats;
    let Some((w, c)) = stats
        .slowest()
        .items()
        .iter()
        .find_map(|w| w.slow.map(|c| (w, c)))
    else {
        let p = Paragraph::new(Line::styled(
            "no wait reached --slow-wait in this window",
            dim(),
        ));
        frame.render_widget(p.block(block("Why the slowest writer waited")), area);
        return;
    };
    let (origin, frames) = stats.stacks().describe(&c);
    let who = fmt::process(w.tgid, &stats.process_comm(w.tgid, &w.comm));
    let mut lines = vec![Line::from(vec![
        Span::styled(origin.label().to_string(), title_style()),
        Span::raw(format!(" · {who} tid {} · {}", w.tid, fmt::ns(w.wait_ns))),
    ])];
    if frames.is_empty() {
        lines.push(Line::styled(
            if c.stack < 0 {
                "stack not kept (slow_stack_failed)"
            } else {
                "stack not received"
            },
            dim(),
        ));
    }
    lines.extend(frames.iter().map(|f| Line::raw(format!("  {f}"))));
    frame.render_widget(
        Paragraph::new(lines).block(block("Why the slowest writer waited")),
        area,
    );
}

/// Slowest waits: the wait and when first, then who and on which VMA; the thread id and
/// the time go first when the terminal is narrow.
fn slowest_columns(state: &AppState) -> Vec<Column<'_, WaitSample>> {
    let stats = &state.view().stats;
    vec![
        Column::number("wait", 10, |w: &WaitSample| Value::from(fmt::ns(w.wait_ns))),
        Column::text("task", 14, 24, 9, move |w: &WaitSample| {
            Value::from(fmt::process(w.tgid, &stats.process_comm(w.tgid, &w.comm)))
        }),
        Column::number("tid", 2, |w: &WaitSample| Value::from(w.tid.to_string())),
        Column::code("VMA start", 8, |w: &WaitSample| {
            Value::from(format!("{:x}", w.vm_start))
        }),
        Column::number("size", 7, |w: &WaitSample| {
            Value::from(fmt::size(w.vm_end.saturating_sub(w.vm_start)))
        }),
        Column::code("for", 6, |w: &WaitSample| {
            if w.interrupted {
                Value::styled("EINTR", bad())
            } else if w.detaching {
                Value::from("detach")
            } else {
                Value::from("write")
            }
        }),
        Column::code("syscall", 6, move |w: &WaitSample| match w.slow {
            Some(c) => Value::from(stats.stacks().origin(&c).label().to_string()),
            None => Value::styled("–", dim()),
        }),
        Column::number("at", 5, move |w: &WaitSample| {
            Value::styled(state.time_of(w.ts_ns), dim())
        }),
    ]
}
