//! Printing helpers: byte sizes, thousands separators, plain text tables.

/// `1.50 MiB`: binary units, two decimals.
pub fn bytes(b: u128) -> String {
    const UNITS: [&str; 7] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

/// `62,006`.
pub fn thousands(n: u128) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The units a size may have: decimal (powers of 1000, as cards and disks are sold)
/// and binary (powers of 1024, as vramlab prints).
const SIZE_UNITS: &[(&str, u128)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("pb", 1_000_000_000_000_000),
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
    ("pib", 1 << 50),
];

/// `n` and its noun, singular for 1: "1 class", "3 classes", "1,200 images".
pub fn count(n: u128, one: &str, many: &str) -> String {
    format!("{} {}", thousands(n), if n == 1 { one } else { many })
}

const SIZE_HELP: &str = "a number with a unit: B, KB, MB, GB, TB, PB (powers of 1000) or KiB, \
                         MiB, GiB, TiB, PiB (powers of 1024), e.g. 24GiB";

/// Parses `24GiB`, `80GB`, `512MiB`, `1.5 GiB`. A unit is required (a bare `6` is not
/// 6 bytes by accident): GB, MB, KB and TB are decimal (10^9), GiB, MiB, KiB and TiB
/// binary (2^30). The result is whole bytes, at most 1 PiB (2^50: no card, context or
/// buffer comes near it, and every figure derived from it stays a JSON-safe integer).
pub fn parse_size(s: &str) -> Result<u128, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    // `Gb`, `Mb`: bits, as network speeds are written (all lower case, `gb`, is read as
    // the bytes it casually means); memory is counted in bytes.
    let raw_unit = unit.trim();
    if raw_unit.ends_with('b') && raw_unit.chars().any(|c| c.is_ascii_uppercase()) {
        // `Gb` and `Gib` alike: the prefix's letter, as bytes in both bases.
        let p = raw_unit
            .chars()
            .next()
            .map_or(String::new(), |c| c.to_ascii_uppercase().to_string());
        return Err(format!(
            "`{s}` reads as bits ({raw_unit}); memory is counted in bytes: write {p}B or {p}iB"
        ));
    }
    let unit = raw_unit.to_ascii_lowercase();
    if unit.is_empty() {
        return Err(format!("`{s}` is not a size: it needs a unit, {SIZE_HELP}"));
    }
    let Some(&(_, mult)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) else {
        return Err(format!("`{s}` is not a size: expected {SIZE_HELP}"));
    };
    // Digits with at most one point: exact decimal arithmetic, no float rounding.
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let digits_ok = |d: &str| d.chars().all(|c| c.is_ascii_digit());
    if int.is_empty() && frac.is_empty() || !digits_ok(int) || !digits_ok(frac) {
        return Err(format!("`{s}` is not a size: expected {SIZE_HELP}"));
    }
    let too_big = || format!("`{s}` is too large a size (at most 1 PiB, 2^50 bytes)");
    if int.len() > 30 || frac.len() > 30 {
        return Err(too_big());
    }
    let int_v: u128 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| too_big())?
    };
    let frac_v: u128 = if frac.is_empty() {
        0
    } else {
        frac.parse().map_err(|_| too_big())?
    };
    let scale = 10u128.pow(frac.len() as u32);
    let whole = int_v.checked_mul(mult).ok_or_else(too_big)?;
    let part = frac_v.checked_mul(mult).ok_or_else(too_big)?;
    if part % scale != 0 {
        return Err(format!("`{s}` is not a whole number of bytes"));
    }
    let total = whole.checked_add(part / scale).ok_or_else(too_big)?;
    if total > 1 << 50 {
        return Err(too_big());
    }
    Ok(total)
}

/// What a size was read as: `12GB = 12,000,000,000 B = 11.18 GiB`.
pub fn size_as_read(given: &str, b: u128) -> String {
    let given = given.trim();
    let mut out = format!("{given} = {} B", thousands(b));
    if b >= 1024 {
        out.push_str(&format!(" = {}", bytes(b)));
    }
    out
}

/// Whether a size was given in decimal units (GB = 10^9 B), which differ from the
/// binary units cards are measured in.
pub fn is_decimal_size(given: &str) -> bool {
    let unit = given
        .trim()
        .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.')
        .trim()
        .to_ascii_lowercase();
    matches!(unit.as_str(), "kb" | "mb" | "gb" | "tb")
}

/// Columns a string takes in a terminal: East Asian wide characters take two.
pub fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| {
            let u = c as u32;
            let wide = matches!(u, 0x1100..=0x115F | 0x2E80..=0xA4CF | 0xAC00..=0xD7A3 | 0xF900..=0xFAFF | 0xFE30..=0xFE4F | 0xFF00..=0xFF60 | 0xFFE0..=0xFFE6);
            if wide { 2 } else { 1 }
        })
        .sum()
}

/// A plain text table with right-aligned numeric columns.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    pub fn new(header: &[&str], right: &[bool]) -> Self {
        Table {
            header: header.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
            right: right.to_vec(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table fitted to the terminal's width (or `$COLUMNS`, else 120 columns).
    pub fn render(&self) -> String {
        self.render_within(terminal_width())
    }

    /// The table within `max_width` columns: a left-aligned last column (the prose
    /// "what it is" kind) wraps onto indented continuation lines instead of making the
    /// terminal wrap the whole row.
    pub fn render_within(&self, max_width: usize) -> String {
        let n = self.header.len();
        let mut width = vec![0; n];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(display_width(c));
            }
        }
        let last_is_prose = n > 1 && !self.right.get(n - 1).copied().unwrap_or(false);
        let indent: usize = width[..n.saturating_sub(1)].iter().map(|w| w + 2).sum();
        // Wrap only where a readable column (at least 24 wide) remains.
        let wrap_at =
            (last_is_prose && indent + width[n - 1] > max_width && max_width >= indent + 24)
                .then(|| max_width - indent);
        if let Some(w) = wrap_at {
            width[n - 1] = w;
        }
        let mut out = String::new();
        let line = |r: &Vec<String>, out: &mut String| {
            let mut cells = Vec::new();
            let mut rest = Vec::new();
            for (i, c) in r.iter().enumerate().take(n) {
                let last = i + 1 == n;
                let mut c = c.clone();
                if let (true, Some(w)) = (last, wrap_at) {
                    let mut parts = wrap_words(&c, w);
                    c = parts.remove(0);
                    rest = parts;
                }
                let pad = width[i].saturating_sub(display_width(&c));
                if self.right.get(i).copied().unwrap_or(false) {
                    cells.push(format!("{}{c}", " ".repeat(pad)));
                } else if last {
                    cells.push(c);
                } else {
                    cells.push(format!("{c}{}", " ".repeat(pad)));
                }
            }
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
            for part in rest {
                out.push_str(&" ".repeat(indent));
                out.push_str(&part);
                out.push('\n');
            }
        };
        line(&self.header, &mut out);
        let rule: Vec<String> = width.iter().map(|&w| "-".repeat(w)).collect();
        out.push_str(&rule.join("  "));
        out.push('\n');
        for r in &self.rows {
            line(r, &mut out);
        }
        out
    }
}

/// Columns to fit printed tables in: the terminal's, else `$COLUMNS`, else 120.
pub fn terminal_width() -> usize {
    #[cfg(unix)]
    {
        // SAFETY: TIOCGWINSZ writes a `winsize` into the struct we own; a failing call
        // (stdout not a terminal) leaves it zeroed and we fall through.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
        if ok && ws.ws_col >= 40 {
            return ws.ws_col as usize;
        }
    }
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .filter(|&c| (40..=10_000).contains(&c))
        .unwrap_or(120)
}

/// `text` in lines of at most `width` columns, broken at spaces (CJK text, which has
/// none, breaks between characters); always at least one line.
pub fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut cur_w = 0;
    let push_piece = |piece: &str, lines: &mut Vec<String>, cur: &mut String, cur_w: &mut usize| {
        let pw = display_width(piece);
        let sep = usize::from(!cur.is_empty());
        if *cur_w + sep + pw > width && !cur.is_empty() {
            lines.push(std::mem::take(cur));
            *cur_w = 0;
        }
        if !cur.is_empty() && sep == 1 {
            cur.push(' ');
            *cur_w += 1;
        }
        cur.push_str(piece);
        *cur_w += pw;
    };
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if display_width(word) <= width {
            push_piece(word, &mut lines, &mut cur, &mut cur_w);
        } else {
            // A word longer than the line (or CJK prose): break between characters.
            if !cur.is_empty() {
                cur.push(' ');
                cur_w += 1;
            }
            for ch in word.chars() {
                let mut b = [0u8; 4];
                let piece: &str = ch.encode_utf8(&mut b);
                if cur_w + display_width(piece) > width && !cur.is_empty() {
                    lines.push(std::mem::take(&mut cur));
                    cur_w = 0;
                }
                cur.push_str(piece);
                cur_w += display_width(piece);
            }
        }
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_decimal_and_binary_units() {
        assert_eq!(parse_size("24GiB").unwrap(), 24 << 30);
        assert_eq!(parse_size("80GB").unwrap(), 80_000_000_000);
        assert_eq!(parse_size("1.5 MiB").unwrap(), 1_572_864);
        assert_eq!(parse_size("512B").unwrap(), 512);
        assert_eq!(parse_size("2tib").unwrap(), 2 << 40);
        assert_eq!(parse_size(".5KB").unwrap(), 500);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn a_size_without_a_unit_is_refused_naming_the_units() {
        let e = parse_size("6").unwrap_err();
        assert_eq!(
            e,
            "`6` is not a size: it needs a unit, a number with a unit: B, KB, MB, GB, TB, PB \
             (powers of 1000) or KiB, MiB, GiB, TiB, PiB (powers of 1024), e.g. 24GiB"
        );
        // The largest size printed is one that can be given (1 PiB).
        assert_eq!(parse_size("1PiB").unwrap(), 1 << 50);
        assert_eq!(parse_size("1PB").unwrap(), 1_000_000_000_000_000);
        assert!(parse_size("2PiB").unwrap_err().contains("at most 1 PiB"));
        // Single letters are ambiguous between the two systems.
        assert!(parse_size("12G")
            .unwrap_err()
            .contains("KiB, MiB, GiB, TiB, PiB"));
        assert!(parse_size("1.2.3GB").is_err());
        assert!(parse_size(".GB").is_err());
        assert!(parse_size("0.1B")
            .unwrap_err()
            .contains("whole number of bytes"));
        assert!(parse_size("99999999999999999999999999TiB")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_size("1e9GB").is_err());
    }

    #[test]
    fn a_size_says_what_it_was_read_as() {
        assert_eq!(
            size_as_read("12GB", parse_size("12GB").unwrap()),
            "12GB = 12,000,000,000 B = 11.18 GiB"
        );
        assert_eq!(
            size_as_read("12GiB", 12 << 30),
            "12GiB = 12,884,901,888 B = 12.00 GiB"
        );
        assert!(is_decimal_size("12 GB") && !is_decimal_size("12GiB"));
    }

    #[test]
    fn a_size_in_bits_is_refused() {
        let e = parse_size("8Gb").unwrap_err();
        assert!(
            e.contains("reads as bits") && e.contains("8Gb") && e.contains("write GB or GiB"),
            "{e}"
        );
        assert!(parse_size("8Mb").is_err());
        let e = parse_size("5Gib").unwrap_err();
        assert!(e.contains("write GB or GiB"), "{e}");
        assert!(parse_size("1025TiB").unwrap_err().contains("at most 1 PiB"));
        assert_eq!(parse_size("1024TiB").unwrap(), 1 << 50);
        assert_eq!(parse_size("8GB").unwrap(), 8_000_000_000);
        assert_eq!(parse_size("8gib").unwrap(), 8 << 30);
        assert_eq!(parse_size("12gb").unwrap(), 12_000_000_000);
    }

    #[test]
    fn a_long_prose_column_wraps_within_the_width() {
        let mut t = Table::new(&["category", "bytes", "what it is"], &[false, true, false]);
        let prose = "what forward keeps for backward: conv and linear inputs, ReLU outputs, max-pool indices, BatchNorm statistics";
        t.row(vec!["activations".into(), "1.00 MiB".into(), prose.into()]);
        let out = t.render_within(80);
        assert!(out.lines().all(|l| display_width(l) <= 80), "{out}");
        assert!(out.lines().count() >= 4, "{out}");
        let words: Vec<&str> = out.split_whitespace().collect();
        assert!(
            words.ends_with(&["max-pool", "indices,", "BatchNorm", "statistics"]),
            "{out}"
        );
        // Wide enough: one line a row, as before.
        assert_eq!(t.render_within(400).lines().count(), 3);
    }

    #[test]
    fn chinese_prose_wraps_between_characters() {
        let lines = wrap_words("不参与学习的状态：BatchNorm 的滑动均值和方差", 10);
        assert!(lines.iter().all(|l| display_width(l) <= 10), "{lines:?}");
        assert_eq!(
            lines.concat().replace(' ', ""),
            "不参与学习的状态：BatchNorm的滑动均值和方差"
        );
    }

    #[test]
    fn bytes_print_in_binary_units() {
        assert_eq!(bytes(1000), "1000 B");
        assert_eq!(bytes(786_432), "768.00 KiB");
        assert_eq!(bytes(4_896_408), "4.67 MiB");
        assert_eq!(thousands(62_006), "62,006");
        assert_eq!(thousands(128_807_306), "128,807,306");
    }
}
