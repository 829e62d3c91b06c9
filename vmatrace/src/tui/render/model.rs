//! Model: how the validator's tracked VMAs are distributed over the refcount phases.

use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::style::{Color, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::Paragraph;

use super::{block, dim, fmt, title_style};
use crate::tui::state::AppState;

/// What each phase means, in the kernel's terms.
fn meaning(phase: &str) -> &'static str {
    match phase {
        "unknown" => "not yet synchronised (new to the tracer, or after a loss)",
        "detached" => "vm_refcnt == 0: not in the tree, no reader can get it",
        "attached" => "vm_refcnt == 1: in the tree, unlocked",
        "readers" => "1 < vm_refcnt < F: attached with read references",
        "excluding" => "F set: a writer or detacher is excluding readers",
        "write_locked" => "vm_lock_seq == mm_lock_seq: write-locked until mmap unlock",
        _ => "",
    }
}

pub fn render(frame: &mut Frame, area: Rect, state: &AppState) {
    let d = state.view();
    let title = "Model: phases of tracked VMAs";
    let Some(phases) = d.phases.as_ref() else {
        let p = Paragraph::new(vec![
            Line::raw("The validator does not report a phase distribution in this build."),
            Line::styled(
                format!("validator resyncs after losses: {}", d.validator_resyncs),
                dim(),
            ),
        ]);
        frame.render_widget(p.block(block(title)), area);
        return;
    };
    let total: u64 = phases.iter().map(|(_, n)| *n).sum();
    let inner_w = area.width.saturating_sub(2) as usize;
    let wide = inner_w >= 110;
    // name 13, count 8, pct 7, gaps: the bar gets what is left (and the meaning if wide).
    let bar_w = if wide {
        inner_w.saturating_sub(13 + 8 + 7 + 4 + 62)
    } else {
        inner_w.saturating_sub(13 + 8 + 7 + 3)
    };
    let mut lines: Vec<Line> = phases
        .iter()
        .map(|(name, n)| {
            let pct = if total == 0 {
                0.0
            } else {
                *n as f64 * 100.0 / total as f64
            };
            let len = if total == 0 {
                0
            } else {
                ((*n as f64 / total as f64) * bar_w as f64).round() as usize
            };
            let mut spans = vec![
                Span::styled(format!("{name:<13}"), title_style()),
                Span::raw(format!("{:>8} {pct:>5.1}% ", fmt::count(*n))),
                Span::styled("█".repeat(len), Style::default().fg(Color::Cyan)),
                Span::raw(" ".repeat(bar_w - len)),
            ];
            if wide {
                spans.push(Span::styled(format!(" {}", meaning(name)), dim()));
            }
            Line::from(spans)
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        format!(
            "{} VMAs tracked · {} evicted at the cap · resyncs after losses: {}",
            fmt::count(total),
            fmt::count(d.validator_evicted),
            d.validator_resyncs
        ),
        dim(),
    ));
    if !wide {
        lines.push(Line::raw(""));
        for (name, _) in phases {
            lines.push(Line::styled(format!("{name}: {}", meaning(name)), dim()));
        }
    }
    frame.render_widget(Paragraph::new(lines).block(block(title)), area);
}
