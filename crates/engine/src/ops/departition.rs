//! MaxViT's `SwapAxes(-2, -3)` (for a grid) and `WindowDepartition(p, hp, wp)`: the
//! partitions back into a map `[C, hp*p, wp*p]` (a copy), the inverse of
//! [`super::partition`].

use super::partition::{gather, scatter, source};
use super::Ctx;
use crate::tensor::Tensor;

/// The map `[B, C, H, W]` (`shape`, the node's output) of the partitions `x`.
pub(crate) fn forward(ctx: &Ctx, x: &Tensor, p: usize, grid: bool, shape: &[usize]) -> Tensor {
    let src = source(shape[1], shape[2], shape[3], p, grid);
    scatter(ctx, x, &src, shape)
}

/// The input gradient (of shape `xs`, the partitions) of [`forward`] from the map's `g`.
pub(crate) fn backward(ctx: &Ctx, g: &Tensor, p: usize, grid: bool, xs: &[usize]) -> Tensor {
    let src = source(g.shape[1], g.shape[2], g.shape[3], p, grid);
    gather(ctx, g, &src, xs)
}
