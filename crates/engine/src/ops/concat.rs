//! `torch.cat(xs, dim=1)`: copies in, slices of the gradient out.

use super::Ctx;
use crate::tensor::Tensor;

/// `torch.cat(xs, dim=1)`.
pub(crate) fn forward(ctx: &Ctx, xs: &[Tensor]) -> Tensor {
    let batch = xs[0].shape[0];
    let mut shape = xs[0].shape.clone();
    shape[1] = xs.iter().map(|x| x.shape[1]).sum();
    let o = ctx.zeros(&shape);
    {
        let per: Vec<usize> = xs.iter().map(|x| x.numel() / batch).collect();
        let total: usize = per.iter().sum();
        let mut od = o.data_mut();
        for s in 0..batch {
            let mut at = s * total;
            for (x, &n) in xs.iter().zip(&per) {
                od[at..at + n].copy_from_slice(&x.data()[s * n..(s + 1) * n]);
                at += n;
            }
        }
    }
    o
}

/// The gradient of the concatenation's input that starts at channel `start` and has the
/// shape `in_shape` (a slice of `g` along channels).
pub(crate) fn backward(ctx: &Ctx, g: &Tensor, in_shape: &[usize], start: usize) -> Tensor {
    crate::ops::narrow::forward(ctx, g, start, in_shape[1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{t, test_ctx, test_parts};

    #[test]
    fn concat_slices_and_shuffles_invert() {
        let (tr, pool) = test_parts();
        let ctx = test_ctx(&tr, &pool);
        let a = t(&tr, &[2, 1, 1, 2], vec![1., 2., 3., 4.]);
        let b = t(&tr, &[2, 2, 1, 2], vec![5., 6., 7., 8., 9., 10., 11., 12.]);
        let c = forward(&ctx, &[a.clone(), b.clone()]);
        assert_eq!(
            *c.data(),
            vec![1., 2., 5., 6., 7., 8., 3., 4., 9., 10., 11., 12.]
        );
        assert_eq!(*backward(&ctx, &c, &b.shape, 1).data(), *b.data());
        let n = crate::ops::narrow::forward(&ctx, &c, 1, 2);
        assert_eq!(*n.data(), *b.data());
        let back = crate::ops::narrow::backward(&ctx, &n, &c.shape, 1);
        assert_eq!(
            *back.data(),
            vec![0., 0., 5., 6., 7., 8., 0., 0., 9., 10., 11., 12.]
        );
        let x = t(&tr, &[1, 6, 1, 1], vec![0., 1., 2., 3., 4., 5.]);
        let sh = crate::ops::channel_shuffle::shuffle(&ctx, &x, 2, false);
        // view(1,2,3).transpose(1,2): channels 0,3,1,4,2,5
        assert_eq!(*sh.data(), vec![0., 3., 1., 4., 2., 5.]);
        assert_eq!(
            *crate::ops::channel_shuffle::shuffle(&ctx, &sh, 2, true).data(),
            *x.data()
        );
    }
}
