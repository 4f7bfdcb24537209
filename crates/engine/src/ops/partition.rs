//! MaxViT's `WindowPartition(p)` of a map `[C, H, W]` into `[(H/p)(W/p), p*p, C]` (a
//! copy), followed for a grid partition by `SwapAxes(-2, -3)` to `[p*p, (H/p)(W/p), C]`.
//! A permutation: forward gathers, backward scatters back.

use super::Ctx;
use crate::tensor::Tensor;

/// For each value of one sample's partitioned output, the index of the value of the
/// `[c, h, w]` map it copies.
pub(crate) fn source(c: usize, h: usize, w: usize, p: usize, grid: bool) -> Vec<usize> {
    let (gh, gw) = (h / p, w / p);
    let (groups, size) = (gh * gw, p * p);
    let mut src = vec![0; c * h * w];
    for g in 0..groups {
        for s in 0..size {
            let (y, x) = ((g / gw) * p + s / p, (g % gw) * p + s % p);
            let row = if grid { s * groups + g } else { g * size + s };
            for ch in 0..c {
                src[row * c + ch] = (ch * h + y) * w + x;
            }
        }
    }
    src
}

/// `out[o] = x[src[o]]` for each sample, into a new tensor of `shape`.
pub(crate) fn gather(ctx: &Ctx, x: &Tensor, src: &[usize], shape: &[usize]) -> Tensor {
    let o = ctx.zeros(shape);
    {
        let (xd, mut od) = (x.data(), o.data_mut());
        let n = src.len();
        for (os, xs) in od.chunks_mut(n).zip(xd.chunks(n)) {
            for (v, &at) in os.iter_mut().zip(src) {
                *v = xs[at];
            }
        }
    }
    o
}

/// `out[src[o]] = x[o]` for each sample (the inverse of [`gather`]), into a new tensor
/// of `shape`.
pub(crate) fn scatter(ctx: &Ctx, x: &Tensor, src: &[usize], shape: &[usize]) -> Tensor {
    let o = ctx.zeros(shape);
    {
        let (xd, mut od) = (x.data(), o.data_mut());
        let n = src.len();
        for (os, xs) in od.chunks_mut(n).zip(xd.chunks(n)) {
            for (&v, &at) in xs.iter().zip(src) {
                os[at] = v;
            }
        }
    }
    o
}

/// The partition of `x` `[B, C, H, W]` into `shape` (`[B, ...]`, the node's output).
pub(crate) fn forward(ctx: &Ctx, x: &Tensor, p: usize, grid: bool, shape: &[usize]) -> Tensor {
    let src = source(x.shape[1], x.shape[2], x.shape[3], p, grid);
    gather(ctx, x, &src, shape)
}

/// The input gradient (of shape `xs`, `[B, C, H, W]`) of [`forward`].
pub(crate) fn backward(ctx: &Ctx, g: &Tensor, p: usize, grid: bool, xs: &[usize]) -> Tensor {
    let src = source(xs[1], xs[2], xs[3], p, grid);
    scatter(ctx, g, &src, xs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{t, test_ctx, test_parts};

    #[test]
    fn window_and_grid_partitions_match_torchvisions_reshapes() {
        let (tr, pool) = test_parts();
        let ctx = test_ctx(&tr, &pool);
        // One channel, a 4x4 map of 0..16, partitions of 2x2.
        let x = t(&tr, &[1, 1, 4, 4], (0..16).map(|v| v as f32).collect());
        let win = forward(&ctx, &x, 2, false, &[1, 4, 4, 1]);
        // Window (0, 0) holds 0, 1, 4, 5; window (0, 1) holds 2, 3, 6, 7.
        assert_eq!(win.data()[..8], [0., 1., 4., 5., 2., 3., 6., 7.]);
        let grid = forward(&ctx, &x, 2, true, &[1, 4, 4, 1]);
        // Grid position 0 of every window: 0, 2, 8, 10.
        assert_eq!(grid.data()[..4], [0., 2., 8., 10.]);
        let back = backward(&ctx, &grid, 2, true, &[1, 1, 4, 4]);
        assert_eq!(*back.data(), *x.data());
    }
}
