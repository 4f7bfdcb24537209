//! Dropout in training: a float mask of `0` or `1 / (1 - p)` (kept for backward, as
//! PyTorch keeps it), the output the input times the mask.

use super::{alias, Ctx};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// Dropout of `x` with probability `p`: allocates the mask, then the output (none with
/// `inplace`: `x` is scaled where it is).
pub(crate) fn forward(
    ctx: &Ctx,
    x: &Tensor,
    p: f64,
    inplace: bool,
    rng: &mut Rng,
) -> (Tensor, Tensor) {
    let mask = ctx.zeros(&x.shape);
    let keep = 1.0 - p;
    let scale = if keep > 0.0 { 1.0 / keep } else { 0.0 };
    mask.data_mut().iter_mut().for_each(|m| {
        *m = if rng.unit_f64() < keep {
            scale as f32
        } else {
            0.0
        }
    });
    let out = if inplace {
        x.data_mut()
            .iter_mut()
            .zip(mask.data().iter())
            .for_each(|(v, m)| *v *= m);
        alias(x)
    } else {
        let o = ctx.zeros(&x.shape);
        o.data_mut()
            .iter_mut()
            .zip(x.data().iter().zip(mask.data().iter()))
            .for_each(|(o, (v, m))| *o = v * m);
        o
    };
    (out, mask)
}

/// The input gradient: `g` times the kept mask.
pub(crate) fn backward(ctx: &Ctx, g: &Tensor, mask: &Tensor) -> Tensor {
    let gi = ctx.zeros(&g.shape);
    gi.data_mut()
        .iter_mut()
        .zip(g.data().iter().zip(mask.data().iter()))
        .for_each(|(o, (a, m))| *o = a * m);
    gi
}
