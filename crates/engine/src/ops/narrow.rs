//! A slice of channels (`torch.chunk`, `split`, `narrow` along dim 1).

use super::Ctx;
use crate::tensor::Tensor;

/// Channels `start..start+len` of `x` (a copy), per sample.
pub(crate) fn forward(ctx: &Ctx, x: &Tensor, start: usize, len: usize) -> Tensor {
    let batch = x.shape[0];
    let rest: usize = x.shape[2..].iter().product();
    let mut shape = x.shape.clone();
    shape[1] = len;
    let o = ctx.zeros(&shape);
    {
        let per_in = x.numel() / batch;
        let (xd, mut od) = (x.data(), o.data_mut());
        for s in 0..batch {
            let from = s * per_in + start * rest;
            od[s * len * rest..(s + 1) * len * rest].copy_from_slice(&xd[from..from + len * rest]);
        }
    }
    o
}

/// The gradient of one channel slice: `g` written into zeros of the input's shape.
/// Concatenation's backward is this for each of its inputs.
pub(crate) fn backward(ctx: &Ctx, g: &Tensor, in_shape: &[usize], start: usize) -> Tensor {
    let batch = in_shape[0];
    let rest: usize = in_shape[2..].iter().product();
    let len = g.shape[1];
    let gi = ctx.zeros(in_shape);
    {
        let per_in: usize = in_shape[1..].iter().product();
        let (gd, mut od) = (g.data(), gi.data_mut());
        for s in 0..batch {
            let to = s * per_in + start * rest;
            od[to..to + len * rest].copy_from_slice(&gd[s * len * rest..(s + 1) * len * rest]);
        }
    }
    gi
}
