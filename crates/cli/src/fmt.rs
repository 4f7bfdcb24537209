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
    ("kib", 1 << 10),
    ("mib", 1 << 20),
    ("gib", 1 << 30),
    ("tib", 1 << 40),
];

const SIZE_HELP: &str = "a number with a unit: B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, \
                         GiB, TiB (powers of 1024), e.g. 24GiB";

/// Parses `24GiB`, `80GB`, `512MiB`, `1.5 GiB`. A unit is required (a bare `6` is not
/// 6 bytes by accident): GB, MB, KB and TB are decimal (10^9), GiB, MiB, KiB and TiB
/// binary (2^30). The result is whole bytes, at most 2^80.
pub fn parse_size(s: &str) -> Result<u128, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
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
    let too_big = || format!("`{s}` is too large a size (at most 2^80 bytes)");
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
    if total > 1 << 80 {
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

    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut width = vec![0; n];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(display_width(c));
            }
        }
        let mut out = String::new();
        let line = |r: &Vec<String>, out: &mut String| {
            let mut cells = Vec::new();
            for (i, c) in r.iter().enumerate().take(n) {
                let pad = width[i] - display_width(c);
                let last = i + 1 == n;
                if self.right.get(i).copied().unwrap_or(false) {
                    cells.push(format!("{}{c}", " ".repeat(pad)));
                } else if last {
                    cells.push(c.clone());
                } else {
                    cells.push(format!("{c}{}", " ".repeat(pad)));
                }
            }
            out.push_str(cells.join("  ").trim_end());
            out.push('\n');
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
            "`6` is not a size: it needs a unit, a number with a unit: B, KB, MB, GB, TB \
             (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 24GiB"
        );
        // Single letters are ambiguous between the two systems.
        assert!(parse_size("12G")
            .unwrap_err()
            .contains("KiB, MiB, GiB, TiB"));
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
    fn bytes_print_in_binary_units() {
        assert_eq!(bytes(1000), "1000 B");
        assert_eq!(bytes(786_432), "768.00 KiB");
        assert_eq!(bytes(4_896_408), "4.67 MiB");
        assert_eq!(thousands(62_006), "62,006");
        assert_eq!(thousands(128_807_306), "128,807,306");
    }
}
