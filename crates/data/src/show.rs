//! Looking at samples: an image scaled up (nearest neighbour), a grid of K samples per
//! class in labelled rows, PNG files written atomically, and an inline terminal preview
//! in ANSI true colour with half blocks.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::limits::check_image_size;
use crate::{DataError, Dataset, Split};

/// Largest side of one cell of a [`grid`]: larger images are shrunk to fit.
pub const MAX_GRID_CELL: u32 = 256;

/// Image `i` of a split as RGB, each pixel a `scale x scale` square; an error when `i`
/// is out of range or the result would pass [`check_image_size`]'s limits.
pub fn sample(ds: &Dataset, split: &Split, i: usize, scale: u32) -> Result<RgbImage, DataError> {
    let [_, h, w] = ds.shape;
    if i >= split.len() {
        return Err(DataError::Config(format!(
            "image {i} is out of range: the split has {} images",
            split.len()
        )));
    }
    let scale = scale.max(1) as u64;
    let (out_w, out_h) = (
        (w as u64).saturating_mul(scale),
        (h as u64).saturating_mul(scale),
    );
    check_image_size(
        out_w,
        out_h,
        &format!("a {h}x{w} image at --scale {scale} would be"),
    )
    .map_err(DataError::Config)?;
    Ok(scaled(ds, split, i, out_w as u32, out_h as u32))
}

/// Image `i` (in range, of a size within the limits) at `out_w x out_h`, nearest
/// neighbour.
fn scaled(ds: &Dataset, split: &Split, i: usize, out_w: u32, out_h: u32) -> RgbImage {
    let [c, h, w] = ds.shape;
    let px = ds.image(split, i);
    RgbImage::from_fn(out_w, out_h, |x, y| {
        let sx = (x as u64 * w as u64 / out_w as u64) as usize;
        let sy = (y as u64 * h as u64 / out_h as u64) as usize;
        let at = |ch: usize| px[ch * h * w + sy * w + sx];
        if c >= 3 {
            Rgb([at(0), at(1), at(2)])
        } else {
            Rgb([at(0); 3])
        }
    })
}

/// The size of a grid cell: the image at `scale`, or shrunk (keeping its aspect) to fit
/// [`MAX_GRID_CELL`].
fn cell_size(w: u64, h: u64, scale: u64) -> (u32, u32) {
    let cell = MAX_GRID_CELL as u64;
    let (sw, sh) = (w.saturating_mul(scale), h.saturating_mul(scale));
    let (cw, ch) = if sw <= cell && sh <= cell {
        (sw, sh)
    } else if w >= h {
        (cell, (h * cell / w).max(1))
    } else {
        ((w * cell / h).max(1), cell)
    };
    (cw as u32, ch as u32)
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

/// `k` samples of each class (the first ones in the split), one labelled row per class;
/// an error when the grid would pass [`check_image_size`]'s limits.
pub fn grid(ds: &Dataset, split: &Split, k: usize, scale: u32) -> Result<RgbImage, DataError> {
    let [_, h, w] = ds.shape;
    if h == 0 || w == 0 {
        return Err(DataError::Config(format!(
            "images of {h}x{w} pixels: nothing to show"
        )));
    }
    let (cw, ch) = cell_size(w as u64, h as u64, scale.max(1) as u64);
    let text = 2u64;
    let longest = ds
        .classes
        .iter()
        .map(|c| c.chars().count())
        .max()
        .unwrap_or(1) as u64;
    let label_w = longest.saturating_mul(8 * text).saturating_add(16);
    let gap = 4u64;
    let width = (k as u64)
        .saturating_mul(cw as u64 + gap)
        .saturating_add(label_w);
    let row_h = (ch as u64).max(8 * text) + gap;
    let height = row_h.saturating_mul(ds.classes.len() as u64);
    check_image_size(
        width,
        height,
        &format!(
            "a grid of {k} samples of each of {} classes would be",
            ds.classes.len()
        ),
    )
    .map_err(DataError::Config)?;
    // Within the limits every coordinate below fits a u32.
    let (label_w, gap, row_h) = (label_w as u32, gap as u32, row_h as u32);
    let mut img = RgbImage::from_pixel(width as u32, height as u32, Rgb([255, 255, 255]));
    let mut picked = vec![Vec::new(); ds.classes.len()];
    for (i, &l) in split.labels.iter().enumerate() {
        if let Some(p) = picked.get_mut(l as usize) {
            if p.len() < k {
                p.push(i);
            }
        }
    }
    for (row, (name, samples)) in ds.classes.iter().zip(&picked).enumerate() {
        let y = row as u32 * row_h;
        draw_text(
            &mut img,
            name,
            8,
            y + (ch.saturating_sub(8 * text as u32)) / 2,
            text as u32,
            Rgb([0, 0, 0]),
        );
        for (j, &i) in samples.iter().enumerate() {
            let s = scaled(ds, split, i, cw, ch);
            image::imageops::replace(
                &mut img,
                &s,
                (label_w + j as u32 * (cw + gap)) as i64,
                y as i64,
            );
        }
    }
    Ok(img)
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
