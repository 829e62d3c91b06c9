//! Table columns as data: every table of the dashboard (Top, Slowest waits, Anomalies,
//! the evidence) is a list of [`Column`]s, laid out here by one rule.
//!
//! The rule, so that a number is never misread:
//! - a column whose values are numbers ([`Width::Content`]) is as wide as its widest
//!   value (or its header): it is never cut. `7ff448cf0000 70` (really 704K) once read as
//!   part of the next column.
//! - only text ([`Width::Flex`]: a task, a mapping name) is shortened, down to its
//!   minimum, with a visible `…`, and never grows past its maximum;
//! - when that is not enough, whole columns go, lowest [`Column::priority`] first.
//!
//! Numbers are right-aligned under right-aligned headers, text left-aligned.

use ratatui::layout::Constraint;
use ratatui::style::Style;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Cell, Row};

use super::{fmt, title_style};
use crate::tui::state::AppState;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// How wide a column may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    /// As wide as the widest value or the header; never cut (numbers, codes).
    Content,
    /// Text: as wide as its content up to `max`, shortened with `…` down to `min`
    /// when the table does not fit.
    Flex { min: u16, max: u16 },
}

/// Which end of a shortened text goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clip {
    /// "postgr…": names read from the start.
    End,
    /// "…/bin/postgres": paths read from the end (the file name).
    Start,
}

/// A cell's text and style, as a column's value function makes it.
pub struct Value {
    pub text: String,
    pub style: Style,
}

impl Value {
    pub fn styled(text: impl Into<String>, style: Style) -> Self {
        Self {
            text: text.into(),
            style,
        }
    }
}

impl From<String> for Value {
    fn from(text: String) -> Self {
        Self {
            text,
            style: Style::default(),
        }
    }
}

impl From<&str> for Value {
    fn from(text: &str) -> Self {
        Self::from(text.to_string())
    }
}

/// One column: header, width rule, alignment, and how a row gives its value.
pub struct Column<'a, R> {
    pub header: &'static str,
    pub width: Width,
    pub align: Align,
    /// When columns must go for lack of room, the lowest priority goes first (ties: the
    /// rightmost first).
    pub priority: u8,
    /// Header style on top of the title style (e.g. the sort column underlined).
    pub header_style: Style,
    pub clip: Clip,
    pub value: Box<dyn Fn(&R) -> Value + 'a>,
}

impl<'a, R> Column<'a, R> {
    /// A number: content-wide, right-aligned.
    pub fn number(header: &'static str, priority: u8, value: impl Fn(&R) -> Value + 'a) -> Self {
        Self {
            header,
            width: Width::Content,
            align: Align::Right,
            priority,
            header_style: Style::default(),
            clip: Clip::End,
            value: Box::new(value),
        }
    }

    /// A code or identifier that must stay whole (a hex address, a kind): content-wide,
    /// left-aligned.
    pub fn code(header: &'static str, priority: u8, value: impl Fn(&R) -> Value + 'a) -> Self {
        Self {
            align: Align::Left,
            ..Self::number(header, priority, value)
        }
    }

    /// Text that may be shortened to `min` characters.
    pub fn text(
        header: &'static str,
        min: u16,
        max: u16,
        priority: u8,
        value: impl Fn(&R) -> Value + 'a,
    ) -> Self {
        Self {
            header,
            width: Width::Flex { min, max },
            align: Align::Left,
            priority,
            header_style: Style::default(),
            clip: Clip::End,
            value: Box::new(value),
        }
    }

    pub fn clipped_at_start(mut self) -> Self {
        self.clip = Clip::Start;
        self
    }

    pub fn with_header_style(mut self, s: Style) -> Self {
        self.header_style = s;
        self
    }
}

/// The mapping-name column (`/proc/PID/maps` names), for the tables that show VMAs;
/// only for live sources (see [`AppState::names_mappings`]).
/// A path shortened keeps its end (the file name).
pub fn mapping<'a, R>(
    state: &'a AppState,
    priority: u8,
    key: impl Fn(&R) -> (u32, u64, u64) + 'a,
) -> Option<Column<'a, R>> {
    state.names_mappings().then(|| {
        Column::text("mapping", 10, 48, priority, move |r: &R| {
            let (tgid, start, end) = key(r);
            Value::from(
                state
                    .mapping_name(tgid, start, end)
                    .map_or(String::new(), fmt::text),
            )
        })
        .clipped_at_start()
    })
}

/// A laid-out table: the header row, the body rows and the column widths for ratatui,
/// plus which columns were kept (indices into the column list) for tests and titles.
pub struct Laid {
    pub header: Row<'static>,
    pub rows: Vec<Row<'static>>,
    pub widths: Vec<Constraint>,
    pub kept: Vec<usize>,
}

/// Gap between columns (ratatui's default column spacing).
const GAP: u16 = 1;

fn chars(s: &str) -> u16 {
    u16::try_from(s.chars().count()).unwrap_or(u16::MAX)
}

/// Lay `columns` out over `rows` in `width` cells.
pub fn layout<R>(columns: &[Column<'_, R>], rows: &[R], width: u16) -> Laid {
    let values: Vec<Vec<Value>> = rows
        .iter()
        .map(|r| columns.iter().map(|c| (c.value)(r)).collect())
        .collect();
    let content: Vec<u16> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            values
                .iter()
                .map(|row| chars(&row[i].text))
                .chain([chars(c.header)])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut widths: Vec<u16> = columns
        .iter()
        .zip(&content)
        .map(|(c, w)| match c.width {
            Width::Content => *w,
            Width::Flex { min, max } => (*w).clamp(min, max.max(min)),
        })
        .collect();
    let mut kept: Vec<usize> = (0..columns.len()).collect();
    let total = |kept: &[usize], widths: &[u16]| -> u16 {
        let sum: u16 = kept.iter().map(|i| widths[*i]).sum();
        sum + GAP * (kept.len().saturating_sub(1) as u16)
    };
    // 1. shorten text, 2. drop columns by priority.
    for i in 0..columns.len() {
        if let Width::Flex { min, .. } = columns[i].width {
            let over = total(&kept, &widths).saturating_sub(width);
            let spare = widths[i].saturating_sub(min);
            widths[i] -= over.min(spare);
        }
    }
    while total(&kept, &widths) > width && kept.len() > 1 {
        let (pos, _) = kept
            .iter()
            .enumerate()
            .min_by_key(|(pos, i)| (columns[**i].priority, std::cmp::Reverse(*pos)))
            .expect("kept is not empty");
        kept.remove(pos);
    }
    // Spare room (after a column was dropped): text columns grow back up to their
    // content, left to right. Beyond that the room stays on the right: stretching a
    // name column would only push the numbers away from what they describe.
    for &i in &kept {
        if let Width::Flex { max, .. } = columns[i].width {
            let spare = width.saturating_sub(total(&kept, &widths));
            let want = content[i].min(max).saturating_sub(widths[i]);
            widths[i] += want.min(spare);
        }
    }
    let cell = |text: String, style: Style, i: usize| {
        let w = usize::from(widths[i]);
        let text = match (columns[i].width, columns[i].clip) {
            (Width::Flex { .. }, Clip::End) => fmt::clip(&text, w),
            (Width::Flex { .. }, Clip::Start) => fmt::clip_start(&text, w),
            (Width::Content, _) => text,
        };
        let line = Line::from(Span::styled(text, style));
        Cell::from(match columns[i].align {
            Align::Left => line,
            Align::Right => line.right_aligned(),
        })
    };
    let header = Row::new(
        kept.iter()
            .map(|&i| {
                cell(
                    columns[i].header.to_string(),
                    title_style().patch(columns[i].header_style),
                    i,
                )
            })
            .collect::<Vec<_>>(),
    );
    let body = values
        .into_iter()
        .map(|mut row| {
            Row::new(
                kept.iter()
                    .map(|&i| {
                        let v = std::mem::replace(&mut row[i], Value::from(String::new()));
                        cell(v.text, v.style, i)
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    Laid {
        header,
        rows: body,
        widths: kept
            .iter()
            .map(|&i| Constraint::Length(widths[i]))
            .collect(),
        kept,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cols<'a>() -> Vec<Column<'a, (String, u64, String)>> {
        vec![
            Column::text("task", 6, 20, 9, |r: &(String, u64, String)| {
                Value::from(r.0.clone())
            }),
            Column::number("waits", 8, |r: &(String, u64, String)| {
                Value::from(r.1.to_string())
            }),
            Column::code("size", 5, |r: &(String, u64, String)| {
                Value::from(r.2.clone())
            }),
            Column::number("extra", 1, |_| Value::from("12345")),
        ]
    }

    fn row() -> (String, u64, String) {
        ("postgres-writer".into(), 1_234_567, "704K".into())
    }

    #[test]
    fn numbers_keep_every_digit_and_text_shrinks_first() {
        let c = cols();
        // 15 + 7 + 4 + 5 + 3 gaps = 34: fits whole.
        let l = layout(&c, &[row()], 34);
        assert_eq!(l.kept, [0, 1, 2, 3]);
        assert_eq!(l.widths[..3], [15, 7, 4].map(Constraint::Length));
        // 30: the task shrinks to 11, numbers untouched.
        let l = layout(&c, &[row()], 30);
        assert_eq!(l.kept, [0, 1, 2, 3]);
        assert_eq!(l.widths, [11, 7, 4, 5].map(Constraint::Length));
    }

    #[test]
    fn columns_drop_by_priority_rather_than_cut() {
        let c = cols();
        // task at its minimum (6) + 7 + 4 + 5 + 3 = 25 > 24: "extra" (priority 1) goes.
        let l = layout(&c, &[row()], 24);
        assert_eq!(l.kept, [0, 1, 2]);
        assert_eq!(l.widths, [11, 7, 4].map(Constraint::Length));
        // Even narrower: "size" goes next, the number stays whole.
        let l = layout(&c, &[row()], 14);
        assert_eq!(l.kept, [0, 1]);
        assert_eq!(l.widths, [6, 7].map(Constraint::Length));
    }

    #[test]
    fn spare_room_stays_on_the_right() {
        let l = layout(&cols(), &[row()], 50);
        assert_eq!(l.widths, [15, 7, 4, 5].map(Constraint::Length));
    }
}
