//! Looking at samples: an image scaled up (nearest neighbour), a grid of K samples per
//! class in labelled rows, PNG files written atomically, and an inline terminal preview
//! in ANSI true colour with half blocks.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::{DataError, Dataset, Split};

/// Image `i` of a split as RGB, each pixel a `scale x scale` square.
pub fn sample(ds: &Dataset, split: &Split, i: usize, scale: u32) -> RgbImage {
    let [c, h, w] = ds.shape;
    let px = ds.image(split, i);
    let scale = scale.max(1);
    RgbImage::from_fn(w as u32 * scale, h as u32 * scale, |x, y| {
        let (sx, sy) = ((x / scale) as usize, (y / scale) as usize);
        let at = |ch: usize| px[ch * h * w + sy * w + sx];
        if c >= 3 {
            Rgb([at(0), at(1), at(2)])
        } else {
            Rgb([at(0); 3])
        }
    })
}

/// Draws text with the 8x8 public-domain font, each dot `size` pixels.
fn draw_text(img: &mut RgbImage, text: &str, x0: u32, y0: u32, size: u32, color: Rgb<u8>) {
    use font8x8::UnicodeFonts;
    let mut x = x0;
    for ch in text.chars() {
        let glyph = font8x8::BASIC_FONTS
            .get(ch)
            .or_else(|| font8x8::BASIC_FONTS.get('?'));
        if let Some(rows) = glyph {
            for (gy, row) in rows.iter().enumerate() {
                for gx in 0..8 {
                    if row & (1 << gx) != 0 {
                        for dy in 0..size {
                            for dx in 0..size {
                                let (px, py) = (x + gx * size + dx, y0 + gy as u32 * size + dy);
                                if px < img.width() && py < img.height() {
                                    img.put_pixel(px, py, color);
                                }
                            }
                        }
                    }
                }
            }
        }
        x += 8 * size;
    }
}

/// `k` samples of each class (the first ones in the split), one labelled row per class.
pub fn grid(ds: &Dataset, split: &Split, k: usize, scale: u32) -> RgbImage {
    let [_, h, w] = ds.shape;
    let (cw, ch) = (w as u32 * scale, h as u32 * scale);
    let text = 2u32;
    let label_w = ds
        .classes
        .iter()
        .map(|c| c.chars().count() as u32)
        .max()
        .unwrap_or(1)
        * 8
        * text
        + 16;
    let gap = 4u32;
    let width = label_w + k as u32 * (cw + gap);
    let row_h = ch.max(8 * text) + gap;
    let mut img =
        RgbImage::from_pixel(width, row_h * ds.classes.len() as u32, Rgb([255, 255, 255]));
    let mut picked = vec![Vec::new(); ds.classes.len()];
    for (i, &l) in split.labels.iter().enumerate() {
        if picked[l as usize].len() < k {
            picked[l as usize].push(i);
        }
    }
    for (row, (name, samples)) in ds.classes.iter().zip(&picked).enumerate() {
        let y = row as u32 * row_h;
        draw_text(
            &mut img,
            name,
            8,
            y + (ch.saturating_sub(8 * text)) / 2,
            text,
            Rgb([0, 0, 0]),
        );
        for (j, &i) in samples.iter().enumerate() {
            let s = sample(ds, split, i, scale);
            image::imageops::replace(
                &mut img,
                &s,
                (label_w + j as u32 * (cw + gap)) as i64,
                y as i64,
            );
        }
    }
    img
}

/// The image as PNG bytes (for inlining into a report).
pub fn png_bytes(img: &RgbImage) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .map_err(|e| DataError::Config(format!("cannot encode a PNG: {e}")))?;
    Ok(out)
}

/// Writes a PNG through a temporary file and a rename: never a half-written file.
pub fn save_png(img: &RgbImage, path: &Path) -> Result<(), DataError> {
    let bytes = png_bytes(img)?;
    vramlab_graph::io::write_atomic(path, &bytes)
        .map_err(|e| DataError::file(path, format!("cannot write the PNG: {e}")))
}

/// The image in ANSI true colour: each character cell shows two pixels (upper half
/// block, foreground the upper pixel, background the lower).
pub fn ansi_preview(img: &RgbImage) -> String {
    let mut s = String::new();
    for y in (0..img.height()).step_by(2) {
        for x in 0..img.width() {
            let t = img.get_pixel(x, y);
            let b = if y + 1 < img.height() {
                *img.get_pixel(x, y + 1)
            } else {
                Rgb([0, 0, 0])
            };
            s.push_str(&format!(
                "\x1b[38;2;{};{};{}m\x1b[48;2;{};{};{}m\u{2580}",
                t[0], t[1], t[2], b[0], b[1], b[2]
            ));
        }
        s.push_str("\x1b[0m\n");
    }
    s
}
