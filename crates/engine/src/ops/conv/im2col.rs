//! im2col and col2im: a convolution's input as columns, and back.

use super::ConvGeom;

/// The output columns `[lo, hi)` whose input column `ox * stride + offset` lies inside
/// `0..width`.
fn valid_range(width: usize, out: usize, stride: usize, offset: isize) -> (usize, usize) {
    // ox * stride + offset >= 0  and  < width
    let lo = if offset >= 0 {
        0
    } else {
        ((-offset) as usize).div_ceil(stride)
    };
    let hi = if (width as isize) <= offset {
        0
    } else {
        ((width as isize - offset) as usize)
            .div_ceil(stride)
            .min(out)
    };
    (lo.min(hi), hi)
}

/// im2col of group `g` of one sample: `col[K x HoWo]`.
pub fn im2col(x: &[f32], g: &ConvGeom, group: usize, col: &mut [f32]) {
    im2col_ld(x, g, group, col, g.hw_out());
}

/// im2col of group `g` of one sample into rows `ld` floats apart: row `r` of the
/// `[K x HoWo]` matrix at `col[r * ld..r * ld + HoWo]` (the samples of a batched column
/// matrix sit side by side, each at its own offset).
pub fn im2col_ld(x: &[f32], g: &ConvGeom, group: usize, col: &mut [f32], ld: usize) {
    let cg = g.cin / g.groups;
    let hw = g.hw_out();
    let mut row = 0;
    for ci in group * cg..(group + 1) * cg {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let out = &mut col[row * ld..row * ld + hw];
                let off = (kx * g.dw) as isize - g.pw as isize;
                let (lo, hi) = valid_range(g.w, g.wo, g.sw, off);
                for oy in 0..g.ho {
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                    let dst = &mut out[oy * g.wo..(oy + 1) * g.wo];
                    if iy < 0 || iy as usize >= g.h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if g.sw == 1 {
                        let s0 = (lo as isize + off) as usize;
                        dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                    } else {
                        for (ox, d) in dst.iter_mut().enumerate().take(hi).skip(lo) {
                            *d = src[(ox as isize * g.sw as isize + off) as usize];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// The column matrix `[K x HoWo]` of group `group` of one sample: im2col into `scratch`,
/// or, for a 1x1 stride-1 convolution (no scratch), the input's own planes.
pub fn columns<'a>(
    x: &'a [f32],
    g: &ConvGeom,
    group: usize,
    scratch: Option<&'a mut [f32]>,
) -> &'a [f32] {
    match scratch {
        Some(cb) => {
            im2col(x, g, group, cb);
            cb
        }
        None => {
            let (k, hw) = (g.k(), g.hw_out());
            &x[group * k * hw..(group + 1) * k * hw]
        }
    }
}

/// Columns a batched matrix product aims for: below this many output positions per
/// sample, a convolution's samples are put side by side in one column matrix, so the
/// weights are packed once per group of samples instead of once per sample.
pub const BATCH_COLUMNS: usize = 256;

/// Samples per matrix product of a convolution (one group, not direct) whose batch
/// chunks hold `per_chunk` samples: 1 (one product per sample, the column matrix of one
/// sample) unless a sample has fewer than [`BATCH_COLUMNS`] output positions. The
/// native profile computes the same number (`conv_batch` there).
pub fn conv_batch(g: &ConvGeom, per_chunk: usize) -> usize {
    if g.groups != 1 {
        return 1;
    }
    (BATCH_COLUMNS / g.hw_out().max(1)).clamp(1, per_chunk.max(1))
}

/// Adds `col[K x HoWo]` of group `g` back into the input gradient of one sample.
pub fn col2im_add(col: &[f32], g: &ConvGeom, group: usize, dx: &mut [f32]) {
    col2im_add_ld(col, g, group, dx, g.hw_out());
}

/// [`col2im_add`] from rows `ld` floats apart (see [`im2col_ld`]).
pub fn col2im_add_ld(col: &[f32], g: &ConvGeom, group: usize, dx: &mut [f32], ld: usize) {
    let cg = g.cin / g.groups;
    let hw = g.hw_out();
    let mut row = 0;
    for ci in group * cg..(group + 1) * cg {
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let src = &col[row * ld..row * ld + hw];
                let off = (kx * g.dw) as isize - g.pw as isize;
                let (lo, hi) = valid_range(g.w, g.wo, g.sw, off);
                for oy in 0..g.ho {
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                    if iy < 0 || iy as usize >= g.h {
                        continue;
                    }
                    let drow = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let srow = &src[oy * g.wo..(oy + 1) * g.wo];
                    if g.sw == 1 {
                        let s0 = (lo as isize + off) as usize;
                        for (d, v) in drow[s0..s0 + (hi - lo)].iter_mut().zip(&srow[lo..hi]) {
                            *d += v;
                        }
                    } else {
                        for ox in lo..hi {
                            drow[(ox as isize * g.sw as isize + off) as usize] += srow[ox];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plain definition, element by element.
    fn im2col_reference(x: &[f32], g: &ConvGeom, group: usize) -> Vec<f32> {
        let cg = g.cin / g.groups;
        let mut col = Vec::new();
        for ci in group * cg..(group + 1) * cg {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    for oy in 0..g.ho {
                        for ox in 0..g.wo {
                            let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                            let ix = (ox * g.sw + kx * g.dw) as isize - g.pw as isize;
                            let inside =
                                iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w;
                            col.push(if inside {
                                x[ci * g.h * g.w + iy as usize * g.w + ix as usize]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_and_col2im_match_the_definition_for_strides_paddings_dilations() {
        for (s, p, d, groups) in [
            (1, 0, 1, 1),
            (1, 2, 1, 1),
            (2, 1, 1, 2),
            (3, 3, 2, 1),
            (2, 0, 3, 2),
        ] {
            let (cin, h, w, k) = (4, 9, 11, 3);
            let ho = (h + 2 * p - d * (k - 1) - 1) / s + 1;
            let wo = (w + 2 * p - d * (k - 1) - 1) / s + 1;
            let g = ConvGeom {
                cin,
                h,
                w,
                cout: 4,
                kh: k,
                kw: k,
                sh: s,
                sw: s,
                ph: p,
                pw: p,
                dh: d,
                dw: d,
                groups,
                ho,
                wo,
            };
            let x: Vec<f32> = (0..cin * h * w).map(|i| i as f32).collect();
            for grp in 0..groups {
                let mut col = vec![f32::NAN; g.k() * g.hw_out()];
                im2col(&x, &g, grp, &mut col);
                assert_eq!(
                    col,
                    im2col_reference(&x, &g, grp),
                    "s{s} p{p} d{d} g{groups}"
                );
                // col2im is the adjoint: <im2col(x), c> == <x, col2im(c)>.
                let c: Vec<f32> = (0..col.len()).map(|i| (i % 7) as f32).collect();
                let mut dx = vec![0.0; x.len()];
                col2im_add(&c, &g, grp, &mut dx);
                let lhs: f64 = col
                    .iter()
                    .zip(&c)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum();
                let rhs: f64 = x
                    .iter()
                    .zip(&dx)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum();
                assert_eq!(lhs, rhs);
            }
        }
    }
}
