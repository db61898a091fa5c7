//! Plain-text output: aligned tables, `Field: value` blocks, and readable
//! times and JSON snippets. No colours, no box drawing: the output is meant
//! to be read on a terminal and grepped.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Widest a cell may be before it is cut (with `…`), so one long details
/// object does not push every other column off the screen.
const MAX_CELL: usize = 60;

/// A table: a header row and rows, columns padded to the widest cell.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Add a row (one cell per header).
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| cell(&c)).collect());
    }

    /// The table as text, one line per row, header first.
    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        let headers: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, c) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(c);
                if i + 1 < row.len() {
                    let pad = widths[i].saturating_sub(c.chars().count());
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A block of `Field: value` lines, values aligned.
pub fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let v = escape_controls(v, false);
        out.push_str(&format!("{:<w$}  {v}\n", format!("{k}:"), w = width + 1));
    }
    out
}

/// `s` made safe to write to a terminal: every control character (ESC,
/// BEL, CR, C1 codes, and LF unless `keep_newlines`) becomes a visible
/// escape such as `\u{1b}`, so text that came from an agent or the network
/// can never clear the screen, retitle the window or forge an output line.
pub fn escape_controls(s: &str, keep_newlines: bool) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() && !(keep_newlines && c == '\n') {
            out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    out
}

/// One line, at most `MAX_CELL` characters.
fn cell(s: &str) -> String {
    let one_line = escape_controls(&s.replace(['\n', '\r', '\t'], " "), false);
    if one_line.chars().count() <= MAX_CELL {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(MAX_CELL - 1).collect();
    cut.push('…');
    cut
}

/// A time in UTC, to the millisecond: `2026-11-28 10:00:00.123Z`.
pub fn time(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string()
}

/// An optional time, `-` when absent.
pub fn opt_time(t: &Option<DateTime<Utc>>) -> String {
    t.as_ref().map_or_else(|| "-".to_owned(), time)
}

/// An optional text, `-` when absent or empty.
pub fn opt(s: Option<&str>) -> String {
    match s {
        Some(s) if !s.is_empty() => s.to_owned(),
        _ => "-".to_owned(),
    }
}

/// Compact JSON (a value, or JSON text as received), `-` for none or null.
pub fn json<T: Serialize + ?Sized>(v: Option<&T>) -> String {
    match v.map(serde_json::to_string) {
        Some(Ok(text)) if text != "null" => text,
        _ => "-".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_long_cells_are_cut() {
        let mut t = Table::new(&["AGENT", "STATE", "DETAILS"]);
        t.row(vec!["a1".into(), "idle".into(), "-".into()]);
        t.row(vec![
            "agent-22".into(),
            "active\nnow".into(),
            "x".repeat(100),
        ]);
        let text = t.render();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "AGENT     STATE       DETAILS");
        assert_eq!(lines[1], "a1        idle        -");
        assert!(lines[2].starts_with("agent-22  active now  xxx"));
        assert!(lines[2].ends_with('…'));
        assert_eq!(lines[2].chars().count(), 10 + 12 + MAX_CELL);
    }

    #[test]
    fn control_characters_are_shown_escaped() {
        let evil = "Evil\u{1b}[2J\u{1b}]0;PWNED\u{7}\r\nFAKE-ROW  idle\u{9b}";
        let mut t = Table::new(&["NAME", "STATE"]);
        t.row(vec![evil.into(), "idle".into()]);
        let text = t.render();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{text:?}"
        );
        assert!(
            text.contains(r"Evil\u{1b}[2J\u{1b}]0;PWNED\u{7}  FAKE-ROW  idle\u{9b}"),
            "{text}"
        );
        let block = fields(&[("Name", evil.into())]);
        assert_eq!(
            block,
            "Name:  Evil\\u{1b}[2J\\u{1b}]0;PWNED\\u{7}\\u{d}\\u{a}FAKE-ROW  idle\\u{9b}\n"
        );
        assert_eq!(escape_controls("a\nb\u{1b}", true), "a\nb\\u{1b}");
        assert_eq!(escape_controls("plain é", false), "plain é");
    }

    #[test]
    fn field_blocks_align() {
        let text = fields(&[("Agent", "a1".into()), ("Last seen", "now".into())]);
        assert_eq!(text, "Agent:      a1\nLast seen:  now\n");
    }
}
