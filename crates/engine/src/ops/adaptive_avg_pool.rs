//! AdaptiveAvgPool2d: PyTorch's windows of `floor(i * in / out)` to `ceil((i + 1) * in / out)`.

use super::Ctx;
use crate::tensor::Tensor;

/// Adaptive average pooling of `x` into a new output of shape `os`.
pub(crate) fn forward(ctx: &Ctx, x: &Tensor, os: &[usize]) -> Tensor {
    let b = x.shape[0];
    let (c, h, w, ho, wo) = (x.shape[1], x.shape[2], x.shape[3], os[2], os[3]);
    let out = ctx.zeros(os);
    {
        let xd = x.data();
        let mut od = out.data_mut();
        for pl in 0..b * c {
            for oy in 0..ho {
                let (y0, y1) = adaptive_window(oy, h, ho);
                for ox in 0..wo {
                    let (x0, x1) = adaptive_window(ox, w, wo);
                    let mut s = 0.0;
                    for y in y0..y1 {
                        for xx in x0..x1 {
                            s += xd[pl * h * w + y * w + xx];
                        }
                    }
                    od[pl * ho * wo + oy * wo + ox] = s / ((y1 - y0) * (x1 - x0)) as f32;
                }
            }
        }
    }
    out
}

/// The input gradient (of shape `xs`) of [`forward`].
pub(crate) fn backward(ctx: &Ctx, xs: &[usize], gout: &Tensor) -> Tensor {
    let gi = ctx.zeros(xs);
    let (c, h, w, ho, wo) = (xs[1], xs[2], xs[3], gout.shape[2], gout.shape[3]);
    {
        let mut gd = gi.data_mut();
        let go = gout.data();
        for pl in 0..xs[0] * c {
            for oy in 0..ho {
                let (y0, y1) = adaptive_window(oy, h, ho);
                for ox in 0..wo {
                    let (x0, x1) = adaptive_window(ox, w, wo);
                    let v = go[pl * ho * wo + oy * wo + ox] / ((y1 - y0) * (x1 - x0)) as f32;
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

/// Window `[start, end)` of adaptive pooling output index `i` (PyTorch's rule).
pub fn adaptive_window(i: usize, input: usize, output: usize) -> (usize, usize) {
    let start = (i * input) / output;
    let end = ((i + 1) * input).div_ceil(output);
    (start, end)
}
