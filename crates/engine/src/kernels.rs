//! Numeric kernels on plain slices, NCHW layout. Matrix products go through
//! `matrixmultiply`; the callers split work across threads with rayon.

/// `c[m x n] = alpha * a[m x k] * b[k x n] + beta * c`, each matrix given by its row and
/// column strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (isize, isize),
    b: &[f32],
    (rsb, csb): (isize, isize),
    c: &mut [f32],
    (rsc, csc): (isize, isize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == 0.0 {
            c.iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    }
    // SAFETY: the callers pass slices that hold every element the strides address:
    // a holds m*k, b k*n and c m*n elements laid out by those strides.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            rsc,
            csc,
        );
    }
}

/// Geometry of one 2-D convolution.
#[derive(Debug, Clone, Copy)]
pub struct ConvGeom {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub dh: usize,
    pub dw: usize,
    pub groups: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvGeom {
    /// Rows of the im2col matrix of one group.
    pub fn k(&self) -> usize {
        self.cin / self.groups * self.kh * self.kw
    }
    pub fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
    /// A 1x1 convolution with stride 1 and no padding reads its input as the matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }
}

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
    let cg = g.cin / g.groups;
    let hw = g.hw_out();
    let mut row = 0;
    for ci in group * cg..(group + 1) * cg {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let out = &mut col[row * hw..(row + 1) * hw];
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

/// Adds `col[K x HoWo]` of group `g` back into the input gradient of one sample.
pub fn col2im_add(col: &[f32], g: &ConvGeom, group: usize, dx: &mut [f32]) {
    let cg = g.cin / g.groups;
    let hw = g.hw_out();
    let mut row = 0;
    for ci in group * cg..(group + 1) * cg {
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let src = &col[row * hw..(row + 1) * hw];
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

/// Window `[start, end)` of adaptive pooling output index `i` (PyTorch's rule).
pub fn adaptive_window(i: usize, input: usize, output: usize) -> (usize, usize) {
    let start = (i * input) / output;
    let end = ((i + 1) * input).div_ceil(output);
    (start, end)
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
