//! Plain-text tables laid out exactly as the Python CLI's PrettyTable 0.7.2
//! prints them with `align = 'l'`: `+---+` rules, one space of padding on each
//! side, the header box even for an empty table, and multi-line cells split at
//! `\n` and top-aligned.
//!
//! Column widths count display cells the way PrettyTable 0.7.2 does (not the
//! way a modern `wcwidth` would): CJK ideographs, Hangul, kana, full-width Latin
//! and CJK punctuation are 2 wide, combining marks 0, backspace and DEL -1,
//! NUL and U+001F 0, everything else 1. ANSI colour sequences (`ESC[…m`) are
//! not counted.

/// A table: a header row and rows of already formatted cells.
#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Table { headers: headers.into_iter().map(Into::into).collect(), rows: Vec::new() }
    }

    /// Appends a row; missing cells are empty, extra cells are dropped.
    pub fn add_row(&mut self, mut row: Vec<String>) {
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    /// The rendered table, without a trailing newline (as `str(table)`).
    pub fn render(&self) -> String {
        let mut widths: Vec<i64> = self.headers.iter().map(|h| block_size(h).0).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(block_size(cell).0);
            }
        }
        let mut rule = String::from("+");
        for w in &widths {
            rule.push_str(&"-".repeat(usize::try_from(*w + 2).unwrap_or(0)));
            rule.push('+');
        }
        let mut out = String::with_capacity((rule.len() + 1) * (self.rows.len() + 4));
        out.push_str(&rule);
        out.push('\n');
        push_line(&mut out, self.headers.iter().map(String::as_str), &widths);
        out.push('\n');
        out.push_str(&rule);
        for row in &self.rows {
            let cells: Vec<Vec<&str>> = row.iter().map(|c| c.split('\n').collect()).collect();
            let height = cells.iter().map(Vec::len).max().unwrap_or(1);
            for y in 0..height {
                out.push('\n');
                push_line(&mut out, cells.iter().map(|lines| lines.get(y).copied().unwrap_or("")), &widths);
            }
        }
        out.push('\n');
        out.push_str(&rule);
        out
    }
}

fn push_line<'a>(out: &mut String, cells: impl Iterator<Item = &'a str>, widths: &[i64]) {
    out.push('|');
    for (cell, w) in cells.zip(widths) {
        out.push(' ');
        out.push_str(cell);
        let excess = w - block_width(cell);
        if excess > 0 {
            out.push_str(&" ".repeat(usize::try_from(excess).unwrap_or(0)));
        }
        out.push_str(" |");
    }
}

/// `(width, height)` of a possibly multi-line cell.
fn block_size(text: &str) -> (i64, i64) {
    let mut width = 0;
    let mut height = 0;
    for line in text.split('\n') {
        width = width.max(block_width(line));
        height += 1;
    }
    (width, height)
}

/// Display width of one line, as PrettyTable 0.7.2's `_str_block_width`.
pub fn block_width(line: &str) -> i64 {
    let mut total = 0;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        // Skip ANSI SGR sequences: ESC [ digits/semicolons m.
        if c == '\u{1b}' {
            let mut probe = chars.clone();
            if probe.next() == Some('[') {
                let mut ok = false;
                for p in probe.by_ref() {
                    if p == 'm' {
                        ok = true;
                        break;
                    }
                    if !(p.is_ascii_digit() || p == ';') {
                        break;
                    }
                }
                if ok {
                    chars = probe;
                    continue;
                }
            }
        }
        total += char_width(c);
    }
    total
}

fn char_width(c: char) -> i64 {
    let cp = u32::from(c);
    if (0x21..=0x7e).contains(&cp) {
        return 1;
    }
    if (0x4e00..=0x9fff).contains(&cp) || (0xac00..=0xd7af).contains(&cp) {
        return 2;
    }
    if is_combining(cp) {
        return 0;
    }
    if (0x3040..=0x30ff).contains(&cp) || (0xff01..=0xff60).contains(&cp) || (0x3000..=0x303e).contains(&cp) {
        return 2;
    }
    match cp {
        0x08 | 0x7f => -1,
        0x00 | 0x1f => 0,
        _ => 1,
    }
}

/// Characters with a non-zero canonical combining class (Python's
/// `unicodedata.combining`), for the blocks where they occur in practice.
fn is_combining(cp: u32) -> bool {
    const RANGES: &[(u32, u32)] = &[
        (0x0300, 0x034e),
        (0x0350, 0x036f),
        (0x0483, 0x0487),
        (0x0591, 0x05bd),
        (0x05bf, 0x05bf),
        (0x05c1, 0x05c2),
        (0x05c4, 0x05c5),
        (0x05c7, 0x05c7),
        (0x0610, 0x061a),
        (0x064b, 0x065f),
        (0x0670, 0x0670),
        (0x06d6, 0x06dc),
        (0x06df, 0x06e4),
        (0x06e7, 0x06e8),
        (0x06ea, 0x06ed),
        (0x0711, 0x0711),
        (0x0730, 0x074a),
        (0x093c, 0x093c),
        (0x094d, 0x094d),
        (0x0951, 0x0954),
        (0x09bc, 0x09bc),
        (0x09cd, 0x09cd),
        (0x0e38, 0x0e3a),
        (0x0e48, 0x0e4b),
        (0x1ab0, 0x1abd),
        (0x1dc0, 0x1dff),
        (0x20d0, 0x20dc),
        (0x20e1, 0x20e1),
        (0x20e5, 0x20f0),
        (0x302a, 0x302f),
        (0x3099, 0x309a),
        (0xfe20, 0xfe2f),
    ];
    RANGES.iter().any(|(lo, hi)| (*lo..=*hi).contains(&cp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_table_prints_the_header_box() {
        let t = Table::new(["Image Name", "Build ID", "Upload IDs"]);
        assert_eq!(
            t.render(),
            "+------------+----------+------------+\n\
             | Image Name | Build ID | Upload IDs |\n\
             +------------+----------+------------+\n\
             +------------+----------+------------+"
        );
    }

    #[test]
    fn image_status_sample() {
        // evidence/table_samples.txt, "image-status".
        let mut t = Table::new(["Image", "Paused", "Build Request", "Build Request Age"]);
        t.add_row(vec!["fake-image".into(), "False".into(), "pending".into(), "00:00:01:05".into()]);
        assert_eq!(
            t.render(),
            "+------------+--------+---------------+-------------------+\n\
             | Image      | Paused | Build Request | Build Request Age |\n\
             +------------+--------+---------------+-------------------+\n\
             | fake-image | False  | pending       | 00:00:01:05       |\n\
             +------------+--------+---------------+-------------------+"
        );
    }

    #[test]
    fn wide_and_multiline_cells() {
        let mut t = Table::new(["A", "B"]);
        t.add_row(vec!["日本".into(), "x\nlonger".into()]);
        assert_eq!(
            t.render(),
            "+------+--------+\n\
             | A    | B      |\n\
             +------+--------+\n\
             | 日本 | x      |\n\
             |      | longer |\n\
             +------+--------+"
        );
        assert_eq!(block_width("\u{1b}[31mred\u{1b}[0m"), 3);
        assert_eq!(block_width("e\u{301}"), 1);
    }
}
