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
                for oy in 0..g.ho {
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                    let dst = &mut out[oy * g.wo..(oy + 1) * g.wo];
                    if iy < 0 || iy as usize >= g.h {
                        dst.iter_mut().for_each(|v| *v = 0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    if g.sw == 1 && g.dw == 1 {
                        let off = kx as isize - g.pw as isize;
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let ix = ox as isize + off;
                            *d = if ix >= 0 && (ix as usize) < g.w {
                                src[ix as usize]
                            } else {
                                0.0
                            };
                        }
                    } else {
                        for (ox, d) in dst.iter_mut().enumerate() {
                            let ix = (ox * g.sw + kx * g.dw) as isize - g.pw as isize;
                            *d = if ix >= 0 && (ix as usize) < g.w {
                                src[ix as usize]
                            } else {
                                0.0
                            };
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
                for oy in 0..g.ho {
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                    if iy < 0 || iy as usize >= g.h {
                        continue;
                    }
                    let drow = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    for ox in 0..g.wo {
                        let ix = (ox * g.sw + kx * g.dw) as isize - g.pw as isize;
                        if ix >= 0 && (ix as usize) < g.w {
                            drow[ix as usize] += src[oy * g.wo + ox];
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
