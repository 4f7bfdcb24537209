//! Swin's `PatchMerging` gather: a channels-last map `[H, W, C]` padded to even sides,
//! its four 2x2 neighbours `x[0::2, 0::2]`, `x[1::2, 0::2]`, `x[0::2, 1::2]`,
//! `x[1::2, 1::2]` concatenated on the channels: `[ceil(H/2), ceil(W/2), 4C]` (a copy).

use super::Ctx;
use crate::tensor::Tensor;

/// For each value of one sample's output, the index of the input value it copies, or
/// `None` for the padding.
fn source(h: usize, w: usize, c: usize) -> Vec<Option<usize>> {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    let mut src = Vec::with_capacity(ho * wo * 4 * c);
    for i in 0..ho {
        for j in 0..wo {
            for (dy, dx) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (y, x) = (2 * i + dy, 2 * j + dx);
                for ch in 0..c {
                    src.push((y < h && x < w).then(|| (y * w + x) * c + ch));
                }
            }
        }
    }
    src
}

/// The merge of `x` `[B, H, W, C]` into `shape` (`[B, H/2, W/2, 4C]`).
pub(crate) fn forward(ctx: &Ctx, x: &Tensor, shape: &[usize]) -> Tensor {
    let src = source(x.shape[1], x.shape[2], x.shape[3]);
    let o = ctx.zeros(shape);
    {
        let (xd, mut od) = (x.data(), o.data_mut());
        let per_in: usize = x.shape[1..].iter().product();
        for (os, xs) in od.chunks_mut(src.len()).zip(xd.chunks(per_in)) {
            for (v, at) in os.iter_mut().zip(&src) {
                if let Some(at) = at {
                    *v = xs[*at];
                }
            }
        }
    }
    o
}

/// The input gradient (of shape `xs`, `[B, H, W, C]`) of [`forward`].
pub(crate) fn backward(ctx: &Ctx, g: &Tensor, xs: &[usize]) -> Tensor {
    let src = source(xs[1], xs[2], xs[3]);
    let gi = ctx.zeros(xs);
    {
        let (gd, mut od) = (g.data(), gi.data_mut());
        let per_in: usize = xs[1..].iter().product();
        for (gs, os) in gd.chunks(src.len()).zip(od.chunks_mut(per_in)) {
            for (&v, at) in gs.iter().zip(&src) {
                if let Some(at) = at {
                    os[*at] = v;
                }
            }
        }
    }
    gi
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{t, test_ctx, test_parts};

    #[test]
    fn an_odd_map_is_padded_and_its_neighbours_concatenated_in_torchvisions_order() {
        let (tr, pool) = test_parts();
        let ctx = test_ctx(&tr, &pool);
        // A 3x3 map of one channel: 0..9.
        let x = t(&tr, &[1, 3, 3, 1], (0..9).map(|v| v as f32).collect());
        let o = forward(&ctx, &x, &[1, 2, 2, 4]);
        // Output (0, 0): x[0,0], x[1,0], x[0,1], x[1,1]; (1, 1) is x[2,2] and padding.
        assert_eq!(o.data()[..4], [0., 3., 1., 4.]);
        assert_eq!(o.data()[12..], [8., 0., 0., 0.]);
        let g = backward(&ctx, &o, &[1, 3, 3, 1]);
        assert_eq!(*g.data(), *x.data());
    }
}
