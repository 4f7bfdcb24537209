//! `x.permute(...)` of the per-sample dimensions, copied.

use super::Ctx;
use crate::tensor::Tensor;

/// `x.permute(0, 1 + dims...)`: the per-sample dimensions of `x` reordered, copied.
/// Allocates the result.
pub(crate) fn permute(ctx: &Ctx, x: &Tensor, dims: &[usize]) -> Tensor {
    let rank = dims.len();
    let xs = &x.shape[1..];
    let out_shape: Vec<usize> = std::iter::once(x.shape[0])
        .chain(dims.iter().map(|&d| xs[d]))
        .collect();
    let o = ctx.zeros(&out_shape);
    {
        // Strides of the input, read in the output's order.
        let mut in_strides = vec![1usize; rank];
        for d in (0..rank.saturating_sub(1)).rev() {
            in_strides[d] = in_strides[d + 1] * xs[d + 1];
        }
        let strides: Vec<usize> = dims.iter().map(|&d| in_strides[d]).collect();
        let os = &out_shape[1..];
        let per: usize = xs.iter().product();
        let (xd, mut od) = (x.data(), o.data_mut());
        for (xsmp, osmp) in xd.chunks(per).zip(od.chunks_mut(per)) {
            let mut pos = vec![0usize; rank];
            let mut at = 0usize;
            for o in osmp.iter_mut() {
                *o = xsmp[at];
                for d in (0..rank).rev() {
                    pos[d] += 1;
                    at += strides[d];
                    if pos[d] < os[d] {
                        break;
                    }
                    at -= strides[d] * os[d];
                    pos[d] = 0;
                }
            }
        }
    }
    o
}

/// The dimension order that undoes `dims`.
pub(crate) fn inverse(dims: &[usize]) -> Vec<usize> {
    let mut inv = vec![0; dims.len()];
    for (k, &d) in dims.iter().enumerate() {
        inv[d] = k;
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{test_ctx, test_parts};
    use crate::tensor::Tensor;

    #[test]
    fn tokens_and_permute_round_trip() {
        let (tr, pool) = test_parts();
        let ctx = test_ctx(&tr, &pool);
        // [1, C=2, H=1, W=3] -> super::tokens::tokens [1, 3, 2]
        let x = Tensor::from_vec(&tr, &[1, 2, 1, 3], vec![1., 2., 3., 4., 5., 6.], None);
        let tk = crate::ops::tokens::tokens(&ctx, &x, &x.shape, false);
        assert_eq!(tk.shape, vec![1, 3, 2]);
        assert_eq!(*tk.data(), vec![1., 4., 2., 5., 3., 6.]);
        let back = crate::ops::tokens::tokens(&ctx, &tk, &x.shape, true);
        assert_eq!(back.shape, x.shape);
        assert_eq!(*back.data(), *x.data());
        let p = permute(&ctx, &x, &[1, 2, 0]);
        assert_eq!(p.shape, vec![1, 1, 3, 2]);
        assert_eq!(*p.data(), vec![1., 4., 2., 5., 3., 6.]);
        let q = permute(&ctx, &p, &inverse(&[1, 2, 0]));
        assert_eq!(*q.data(), *x.data());
    }
}
