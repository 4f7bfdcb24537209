//! `x[:, index]`: one token of each sample (ViT's class token).

use super::Ctx;
use crate::tensor::Tensor;

/// `x[:, index]` of the first per-sample dimension, copied. Allocates the result.
pub(crate) fn forward(ctx: &Ctx, x: &Tensor, index: usize) -> Tensor {
    let (b, n) = (x.shape[0], x.shape[1]);
    let rest: usize = x.shape[2..].iter().product();
    let o = ctx.zeros(&[&[b][..], &x.shape[2..]].concat());
    {
        let (xd, mut od) = (x.data(), o.data_mut());
        for (s, os) in od.chunks_mut(rest).enumerate() {
            let from = (s * n + index) * rest;
            os.copy_from_slice(&xd[from..from + rest]);
        }
    }
    o
}

/// The gradient of [`forward`]: `g` written at `index` into zeros of `in_shape`.
/// Allocates the gradient.
pub(crate) fn backward(ctx: &Ctx, g: &Tensor, in_shape: &[usize], index: usize) -> Tensor {
    let n = in_shape[1];
    let rest: usize = in_shape[2..].iter().product();
    let gi = ctx.zeros(in_shape);
    {
        let (gd, mut od) = (g.data(), gi.data_mut());
        for (s, gs) in gd.chunks(rest).enumerate() {
            let to = (s * n + index) * rest;
            od[to..to + rest].copy_from_slice(gs);
        }
    }
    gi
}
