//! Charts as SVG (written directly, with a font stack that renders CJK text) and as PNG
//! (the same SVG rasterised by resvg with the system's fonts). Files are written through
//! a temporary file and a rename.

use std::fmt::Write as _;
use std::path::Path;

use crate::{Result, UserError};

/// The fonts a chart asks for: Latin first, then common CJK families.
pub const FONT_STACK: &str = "'DejaVu Sans', 'Noto Sans CJK SC', 'Noto Sans SC', 'WenQuanYi Micro Hei', 'Source Han Sans SC', 'PingFang SC', 'Microsoft YaHei', sans-serif";

pub const COLORS: [&str; 9] = [
    "#4c72b0", "#8172b3", "#dd8452", "#c44e52", "#55a868", "#da8bc3", "#937860", "#8c8c8c",
    "#64b5cd",
];

#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub color: String,
}

/// A horizontal reference line.
#[derive(Debug, Clone)]
pub struct HLine {
    pub y: f64,
    pub label: String,
    pub color: String,
    pub dashed: bool,
}

#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_log: bool,
    /// Stack the series as areas (each on top of the previous ones).
    pub stacked: bool,
    pub series: Vec<Series>,
    pub hlines: Vec<HLine>,
    pub vline: Option<(f64, String)>,
}

const W: f64 = 900.0;
const H: f64 = 520.0;
const L: f64 = 80.0;
const R: f64 = 230.0;
const T: f64 = 50.0;
const B: f64 = 60.0;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round step for about `n` ticks over `span`.
fn nice_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    mag * if f < 1.5 {
        1.0
    } else if f < 3.5 {
        2.0
    } else if f < 7.5 {
        5.0
    } else {
        10.0
    }
}

/// Most ticks an axis gets, whatever its data.
const MAX_TICKS: usize = 60;

/// Round ticks over `[lo, hi]`, about `n` of them and never more than [`MAX_TICKS`]. Where
/// the range is below the spacing of doubles at its magnitude (x = 2^53 and 2^53 + 2),
/// or empty, the ends themselves are the ticks.
fn linear_ticks(lo: f64, hi: f64, n: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return Vec::new();
    }
    let ends = || if hi > lo { vec![lo, hi] } else { vec![lo] };
    let step = nice_step(hi - lo, n);
    let first = (lo / step).ceil();
    let mut out: Vec<f64> = Vec::new();
    for i in 0..MAX_TICKS {
        let v = (first + i as f64) * step;
        if !v.is_finite() || v > hi {
            break;
        }
        if out.last().is_some_and(|&prev| v <= prev) {
            // The step vanished in rounding: the ticks would repeat.
            return ends();
        }
        out.push(v);
    }
    if out.len() < 2 {
        return ends();
    }
    out
}

/// 1, 2, 5 times each power of ten within `[lo, hi]` (`lo` > 0), decade by decade: at
/// most one loop turn per decade a double has.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut t = Vec::new();
    if !(lo.is_finite() && hi.is_finite()) || hi < lo {
        return t;
    }
    let lo = lo.max(1e-12);
    let mut p = 10f64.powf(lo.log10().floor());
    for _ in 0..700 {
        if !(p.is_finite() && p <= hi * 1.0001) {
            break;
        }
        for m in [1.0, 2.0, 5.0] {
            let v = p * m;
            if v >= lo * 0.9999 && v <= hi * 1.0001 {
                t.push(v);
            }
        }
        p *= 10.0;
    }
    if t.len() > MAX_TICKS {
        // Many decades: powers of ten only, thinned to fit.
        t.retain(|v| (v.log10() - v.log10().round()).abs() < 1e-9);
        let every = t.len().div_ceil(MAX_TICKS);
        t = t.into_iter().step_by(every).collect();
    }
    t
}

fn fmt_tick(v: f64) -> String {
    let trim = |x: f64| {
        let s = format!("{x:.2}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1e9 {
        format!("{}G", trim(v / 1e9))
    } else if v.abs() >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if v.abs() >= 1e4 {
        format!("{}k", trim(v / 1e3))
    } else if v.abs() < 1e-2 {
        format!("{v:.0e}")
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

impl Chart {
    /// The chart as a standalone SVG document.
    pub fn svg(&self) -> String {
        let mut tops: Vec<Vec<(f64, f64)>> = Vec::new();
        for (i, s) in self.series.iter().enumerate() {
            let pts: Vec<(f64, f64)> = if self.stacked && i > 0 {
                s.points
                    .iter()
                    .zip(&tops[i - 1])
                    .map(|(&(x, y), &(_, below))| (x, y + below))
                    .collect()
            } else {
                s.points.clone()
            };
            tops.push(pts);
        }
        // Points that are not finite (a NaN loss, an infinite rate) are left out of the
        // axes and the drawing.
        for pts in &mut tops {
            pts.retain(|&(x, y)| x.is_finite() && y.is_finite());
        }
        let hlines: Vec<&HLine> = self.hlines.iter().filter(|h| h.y.is_finite()).collect();
        let all: Vec<(f64, f64)> = tops.iter().flatten().copied().collect();
        let (mut x0, mut x1) = all
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &(x, _)| {
                (a.min(x), b.max(x))
            });
        if !x0.is_finite() {
            (x0, x1) = (0.0, 1.0);
        }
        if x1 <= x0 {
            // One x value: a unit-wide axis around it (at least one double wide).
            x1 = (x0 + 1.0).max(x0 + x0.abs() * f64::EPSILON * 4.0);
        }
        let mut y1 = all.iter().map(|p| p.1).fold(0.0f64, f64::max);
        for h in &hlines {
            y1 = y1.max(h.y);
        }
        y1 = if y1 <= 0.0 {
            1.0
        } else {
            (y1 * 1.08).min(f64::MAX)
        };
        let y0 = if self.stacked {
            0.0
        } else {
            all.iter()
                .map(|p| p.1)
                .fold(f64::INFINITY, f64::min)
                .clamp(-1e300, 0.0)
        };
        let lx = |x: f64| if self.x_log { x.max(1e-12).ln() } else { x };
        let (lx0, lx1) = (lx(x0), lx(x1));
        let px = |x: f64| L + (lx(x) - lx0) / (lx1 - lx0).max(1e-12) * (W - L - R);
        let py = |y: f64| H - B - (y - y0) / (y1 - y0) * (H - T - B);
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="{}" font-size="13"><rect width="100%" height="100%" fill="white"/>"#,
            esc(FONT_STACK)
        );
        let _ = write!(
            s,
            r#"<text x="{}" y="28" font-size="17" font-weight="bold">{}</text>"#,
            L,
            esc(&self.title)
        );
        // Grid and ticks.
        for v in linear_ticks(y0, y1, 6.0) {
            let y = py(v);
            let _ = write!(
                s,
                r##"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                W - R,
                L - 6.0,
                y + 4.0,
                fmt_tick(v)
            );
        }
        let xticks: Vec<f64> = if self.x_log {
            log_ticks(x0, x1)
        } else {
            linear_ticks(x0, x1, 8.0)
        };
        for xt in xticks {
            let x = px(xt);
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                T,
                H - B,
                H - B + 18.0,
                fmt_tick(xt)
            );
        }
        let _ = write!(
            s,
            r##"<line x1="{L}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{L}" y1="{T}" x2="{L}" y2="{:.1}" stroke="#333"/>"##,
            H - B,
            W - R,
            H - B,
            H - B
        );
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            (L + W - R) / 2.0,
            H - 18.0,
            esc(&self.x_label)
        );
        let _ = write!(
            s,
            r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
            (T + H - B) / 2.0,
            (T + H - B) / 2.0,
            esc(&self.y_label)
        );
        // Series.
        for (i, (ser, pts)) in self.series.iter().zip(&tops).enumerate() {
            if pts.is_empty() {
                continue;
            }
            let line: Vec<String> = pts
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            if self.stacked {
                let below: Vec<String> = if i == 0 {
                    vec![
                        format!("{:.1},{:.1}", px(pts[pts.len() - 1].0), py(0.0)),
                        format!("{:.1},{:.1}", px(pts[0].0), py(0.0)),
                    ]
                } else {
                    tops[i - 1]
                        .iter()
                        .rev()
                        .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                        .collect()
                };
                let _ = write!(
                    s,
                    r#"<polygon points="{} {}" fill="{}" fill-opacity="0.85" stroke="none"/>"#,
                    line.join(" "),
                    below.join(" "),
                    ser.color
                );
            } else {
                let _ = write!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
                    line.join(" "),
                    ser.color
                );
                for &(x, y) in pts {
                    let _ = write!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                        px(x),
                        py(y),
                        ser.color
                    );
                }
            }
        }
        for h in &hlines {
            let y = py(h.y);
            let dash = if h.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = write!(
                s,
                r#"<line x1="{L}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" fill="{}" text-anchor="end">{}</text>"#,
                W - R,
                h.color,
                W - R - 4.0,
                y - 5.0,
                h.color,
                esc(&h.label)
            );
        }
        if let Some((xv, label)) = self.vline.as_ref().filter(|(x, _)| x.is_finite()) {
            let x = px(*xv);
            let _ = write!(
                s,
                r##"<line x1="{x:.1}" y1="{T}" x2="{x:.1}" y2="{:.1}" stroke="#222" stroke-dasharray="3 3"/><text x="{:.1}" y="{:.1}" fill="#222" text-anchor="end">{}</text>"##,
                H - B,
                x - 4.0,
                T + 14.0,
                esc(label)
            );
        }
        // Legend, top of the stack first.
        let order: Vec<usize> = if self.stacked {
            (0..self.series.len()).rev().collect()
        } else {
            (0..self.series.len()).collect()
        };
        for (row, &i) in order.iter().enumerate() {
            let y = T + 10.0 + row as f64 * 20.0;
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
                W - R + 16.0,
                y - 10.0,
                self.series[i].color,
                W - R + 34.0,
                y,
                esc(&self.series[i].name)
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// Writes `.svg` or `.png` (by extension), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let bytes = match ext.as_str() {
            "svg" => self.svg().into_bytes(),
            "png" => svg_to_png(&self.svg())?,
            _ => {
                return Err(UserError(format!(
                    "{}: a plot is .svg or .png",
                    path.display()
                )))
            }
        };
        write_atomic(path, &bytes)
    }
}

/// Rasterises an SVG document with the system's fonts.
pub fn svg_to_png(svg: &str) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options::default();
    opt.fontdb_mut().load_system_fonts();
    let missing = missing_glyphs(svg, opt.fontdb_mut());
    if !missing.is_empty() {
        // The PNG would show boxes where these characters are; say so (SVG viewers use
        // the reader's fonts, so an .svg is unaffected).
        eprintln!(
            "warning: no installed font can draw {} of the chart's Chinese characters (such as {}): the PNG shows boxes for them. Install a CJK font (apt-get install fonts-noto-cjk or fonts-wqy-microhei), or write .svg",
            missing.len(),
            missing[0]
        );
    }
    let tree = usvg::Tree::from_str(svg, &opt)
        .map_err(|e| UserError(format!("cannot render the chart: {e}")))?;
    let size = tree.size().to_int_size();
    let mut pixmap = tiny_skia::Pixmap::new(size.width(), size.height())
        .ok_or_else(|| UserError("empty chart".into()))?;
    resvg::render(&tree, tiny_skia::Transform::default(), &mut pixmap.as_mut());
    pixmap
        .encode_png()
        .map_err(|e| UserError(format!("cannot encode the PNG: {e}")))
}

/// The wide (CJK) characters of `svg` that no font in `db` can draw.
fn missing_glyphs(svg: &str, db: &resvg::usvg::fontdb::Database) -> Vec<char> {
    let mut wanted: Vec<char> = svg
        .chars()
        .filter(|c| crate::fmt::display_width(&c.to_string()) == 2)
        .collect();
    wanted.sort_unstable();
    wanted.dedup();
    for face in db.faces() {
        if wanted.is_empty() {
            break;
        }
        db.with_face_data(face.id, |data, index| {
            if let Ok(f) = ttf_parser::Face::parse(data, index) {
                wanted.retain(|&c| f.glyph_index(c).is_none());
            }
        });
    }
    wanted
}

pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    vramlab_graph::io::write_atomic(path, bytes)
        .map_err(|e| UserError(format!("{}: cannot write: {e}", path.display())))
}

/// Refuses, before any work, a chart path that is neither .svg nor .png or could not be
/// written.
pub fn check_plot_path(path: &Path, option: &str) -> Result<()> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext != "svg" && ext != "png" {
        return Err(UserError(format!(
            "{option} {}: a plot is .svg or .png",
            path.display()
        )));
    }
    check_output(path, option)
}

/// Refuses, before any work, an output path `option` names that could not be written.
pub fn check_output(path: &Path, option: &str) -> Result<()> {
    vramlab_graph::io::check_writable(path).map_err(|e| {
        UserError(format!(
            "{option} {}: cannot write there: {e}",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_read_as_numbers_people_write() {
        assert_eq!(fmt_tick(12_000.0), "12k");
        assert_eq!(fmt_tick(2_500_000.0), "2.5M");
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(300.0), "300");
        assert_eq!(nice_step(97.0, 6.0), 20.0);
    }

    #[test]
    fn cjk_characters_no_font_can_draw_are_named() {
        let empty = resvg::usvg::fontdb::Database::new();
        let svg = "<svg><text>峰值 peak 显存 峰</text></svg>";
        assert_eq!(
            missing_glyphs(svg, &empty),
            vec!['值', '显', '存', '峰']
                .into_iter()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect::<Vec<_>>()
        );
        assert!(missing_glyphs("<svg><text>peak</text></svg>", &empty).is_empty());
    }

    #[test]
    fn a_chart_is_valid_svg_with_its_labels_and_a_png_renders() {
        let c = Chart {
            title: "t <&> 显存".into(),
            x_label: "batch".into(),
            y_label: "GiB".into(),
            x_log: false,
            stacked: true,
            series: vec![
                Series {
                    name: "a".into(),
                    points: vec![(1.0, 1.0), (2.0, 2.0)],
                    color: COLORS[0].into(),
                },
                Series {
                    name: "b".into(),
                    points: vec![(1.0, 0.5), (2.0, 0.5)],
                    color: COLORS[1].into(),
                },
            ],
            hlines: vec![HLine {
                y: 3.0,
                label: "card".into(),
                color: "#c00".into(),
                dashed: false,
            }],
            vline: Some((1.5, "max".into())),
        };
        let svg = c.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("t &lt;&amp;&gt; 显存"));
        assert!(svg.contains("Noto Sans CJK SC"));
        let png = svg_to_png(&svg).unwrap();
        assert_eq!(&png[1..4], b"PNG");
    }

    fn chart_with_x(xs: &[f64]) -> Chart {
        Chart {
            title: "t".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_log: false,
            stacked: false,
            series: vec![Series {
                name: "a".into(),
                points: xs.iter().map(|&x| (x, 1.0)).collect(),
                color: COLORS[0].into(),
            }],
            hlines: vec![],
            vline: None,
        }
    }

    #[test]
    fn ticks_end_when_the_step_is_below_the_spacing_of_doubles() {
        let big = 9_007_199_254_740_992.0; // 2^53
        let svg = chart_with_x(&[big, big + 2.0]).svg();
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(linear_ticks(big, big + 2.0, 8.0), vec![big, big + 2.0]);
        // One x value, a huge one, and an empty range.
        assert!(chart_with_x(&[1e300]).svg().ends_with("</svg>\n"));
        assert_eq!(linear_ticks(5.0, 5.0, 8.0), vec![5.0]);
        assert!(linear_ticks(1.0, f64::INFINITY, 8.0).is_empty());
        assert!(linear_ticks(0.0, f64::MAX, 8.0).len() <= MAX_TICKS);
        // Ordinary ranges keep their round ticks.
        assert_eq!(
            linear_ticks(0.0, 100.0, 6.0),
            vec![0.0, 20.0, 40.0, 60.0, 80.0, 100.0]
        );
    }

    #[test]
    fn charts_of_non_finite_or_vast_data_are_drawn_in_bounded_time() {
        let mut c = chart_with_x(&[1.0, f64::INFINITY, f64::NAN, 2.0]);
        c.series[0].points.push((3.0, f64::INFINITY));
        c.hlines.push(HLine {
            y: f64::NAN,
            label: "nan".into(),
            color: "#000".into(),
            dashed: false,
        });
        c.vline = Some((f64::INFINITY, "inf".into()));
        let svg = c.svg();
        assert!(!svg.contains("NaN") && !svg.contains("inf\""), "{svg}");
        let mut c = chart_with_x(&[1e-300, 1e300]);
        c.x_log = true;
        assert!(c.svg().ends_with("</svg>\n"));
        assert!(log_ticks(1e-300, 1e300).len() <= MAX_TICKS);
        assert_eq!(
            log_ticks(1.0, 100.0),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
    }
}
