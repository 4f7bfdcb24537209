//! AvgPool2d, with PyTorch's padding and `count_include_pad` rules.

use vramlab_graph::Pool2d;

use super::Ctx;
use crate::tensor::Tensor;

/// Average pooling of `x` into a new output of shape `os`.
pub(crate) fn forward(ctx: &Ctx, x: &Tensor, p: &Pool2d, os: &[usize]) -> Tensor {
    let b = x.shape[0];
    let (c, h, w, ho, wo) = (x.shape[1], x.shape[2], x.shape[3], os[2], os[3]);
    let out = ctx.zeros(os);
    {
        let xd = x.data();
        let mut od = out.data_mut();
        for pl in 0..b * c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let (y0, y1, x0, x1, div) = avg_window(p, oy, ox, h, w);
                    let mut s = 0.0;
                    for y in y0..y1 {
                        for xx in x0..x1 {
                            s += xd[pl * h * w + y * w + xx];
                        }
                    }
                    od[pl * ho * wo + oy * wo + ox] = s / div;
                }
            }
        }
    }
    out
}

/// The input gradient (of shape `xs`) of [`forward`].
pub(crate) fn backward(ctx: &Ctx, xs: &[usize], gout: &Tensor, p: &Pool2d) -> Tensor {
    let gi = ctx.zeros(xs);
    let (c, h, w, ho, wo) = (xs[1], xs[2], xs[3], gout.shape[2], gout.shape[3]);
    {
        let mut gd = gi.data_mut();
        let go = gout.data();
        for pl in 0..xs[0] * c {
            for oy in 0..ho {
                for ox in 0..wo {
                    let (y0, y1, x0, x1, div) = avg_window(p, oy, ox, h, w);
                    let v = go[pl * ho * wo + oy * wo + ox] / div;
                    for y in y0..y1 {
                        for xx in x0..x1 {
                            gd[pl * h * w + y * w + xx] += v;
                        }
                    }
                }
            }
        }
    }
    gi
}

/// The input rows `y0..y1` and columns `x0..x1` that average-pool output (oy, ox)
/// reads, and its divisor (the window with padding, or without it when
/// `count_include_pad` is off): PyTorch's rule, clipped at `input + padding`.
fn avg_window(
    p: &Pool2d,
    oy: usize,
    ox: usize,
    h: usize,
    w: usize,
) -> (usize, usize, usize, usize, f32) {
    let ys = (oy * p.stride.0) as isize - p.padding.0 as isize;
    let xs = (ox * p.stride.1) as isize - p.padding.1 as isize;
    let ye = (ys + p.kernel_size.0 as isize).min((h + p.padding.0) as isize);
    let xe = (xs + p.kernel_size.1 as isize).min((w + p.padding.1) as isize);
    let (y0, x0) = (ys.max(0) as usize, xs.max(0) as usize);
    let (y1, x1) = (ye.min(h as isize) as usize, xe.min(w as isize) as usize);
    let div = if p.count_include_pad {
        ((ye - ys) * (xe - xs)) as f32
    } else {
        ((y1 - y0) * (x1 - x0)) as f32
    };
    (y0, y1, x0, x1, div)
}
