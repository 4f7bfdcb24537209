//! MaxViT's `RelativePositionalMultiHeadAttention` on partitions `[G, P, D]`: attention
//! inside each partition with a relative position bias, torchvision's scale `D ** -0.5`
//! (of the whole feature dimension). Runs [`super::attention`] on `[B * G, P, D]`.

use super::attention::{self, AttnSaved, AttnWeights, BiasGrad, PositionBias, Scores};
use super::Ctx;
use crate::tensor::Tensor;

/// `x` `[B, G, P, D]` seen as `[B * G, P, D]`.
fn flat(x: &Tensor) -> Tensor {
    Tensor {
        buf: std::rc::Rc::clone(&x.buf),
        shape: vec![x.shape[0] * x.shape[1], x.shape[2], x.shape[3]],
    }
}

/// `x` `[B * G, P, D]` seen as `[B, G, P, D]` for `batch` samples.
fn unflat(x: Tensor, batch: usize) -> Tensor {
    let shape = vec![batch, x.shape[0] / batch, x.shape[1], x.shape[2]];
    Tensor { buf: x.buf, shape }
}

/// torchvision's scale: `feat_dim ** -0.5`.
fn scale(dim: usize) -> f32 {
    1.0 / (dim as f32).sqrt()
}

/// The attention of `x` `[B, G, P, D]` with `heads` heads, the bias `table` and the
/// relative position `index`: what [`attention::forward`] allocates, and its saved
/// tensors (the input seen as `[B * G, P, D]` first).
pub(crate) fn forward(
    ctx: &Ctx,
    x: &Tensor,
    table: &Tensor,
    w: &AttnWeights,
    heads: usize,
    index: &[usize],
) -> (Tensor, Tensor, AttnSaved) {
    let b = x.shape[0];
    let xf = flat(x);
    let pos = PositionBias {
        table,
        index,
        mask: None,
    };
    let (out, saved) = attention::forward(
        ctx,
        &xf,
        w,
        heads,
        Scores::Scaled(scale(x.shape[3])),
        Some(&pos),
    );
    (unflat(out, b), xf, saved)
}

/// The gradients of [`forward`] from `g` `[B, G, P, D]` (`x` the input as it kept it).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    ctx: &Ctx,
    x: &Tensor,
    saved: &AttnSaved,
    g: &Tensor,
    table: &Tensor,
    w: &AttnWeights,
    heads: usize,
    index: &[usize],
    need_in: bool,
) -> attention::AttnGrads {
    let b = g.shape[0];
    let pos = BiasGrad {
        index,
        rows: table.shape[0],
        learned: true,
    };
    let dim = g.shape[3];
    let mut grads = attention::backward(
        ctx,
        x,
        saved,
        &flat(g),
        w,
        heads,
        Scores::Scaled(scale(dim)),
        Some(&pos),
        need_in,
    );
    grads.input = grads.input.map(|gi| unflat(gi, b));
    grads
}
