//! StochasticDepth: each sample (`row`) or the whole batch scaled by its kept noise.

use super::Ctx;
use crate::rng::Rng;
use crate::tensor::Tensor;

/// The noise of one training step: per sample (`row`, `batch` values) or one for the
/// batch, each `1 / (1 - p)` with probability `1 - p`, else 0. Allocated before the output.
pub(crate) fn noise(ctx: &Ctx, p: f64, row: bool, batch: usize, rng: &mut Rng) -> Tensor {
    let survive = 1.0 - p;
    let noise = ctx.zeros(&[if row { batch } else { 1 }]);
    noise.data_mut().iter_mut().for_each(|v| {
        *v = if survive > 0.0 && rng.unit_f64() < survive {
            (1.0 / survive) as f32
        } else {
            0.0
        }
    });
    noise
}

/// `x * noise`, the noise one value per sample (`row`) or one for the batch.
pub(crate) fn scale_by(ctx: &Ctx, x: &Tensor, noise: &Tensor) -> Tensor {
    let o = ctx.zeros(&x.shape);
    {
        let per = x.numel() / noise.numel().max(1);
        let (xd, nd, mut od) = (x.data(), noise.data(), o.data_mut());
        for (k, (o, v)) in od.iter_mut().zip(xd.iter()).enumerate() {
            *o = v * nd[k / per];
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{t, test_ctx, test_parts};

    #[test]
    fn stochastic_depth_scales_each_sample_or_the_whole_batch() {
        let (tr, pool) = test_parts();
        let ctx = test_ctx(&tr, &pool);
        let x = t(&tr, &[2, 1, 1, 2], vec![1., 2., 3., 4.]);
        let row = t(&tr, &[2], vec![0.0, 2.0]);
        assert_eq!(*scale_by(&ctx, &x, &row).data(), vec![0., 0., 6., 8.]);
        let batch = t(&tr, &[1], vec![2.0]);
        assert_eq!(*scale_by(&ctx, &x, &batch).data(), vec![2., 4., 6., 8.]);
    }
}
