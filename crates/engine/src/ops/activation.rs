//! Activations (ReLU, ReLU6, SiLU, GELU, ...): elementwise, in place or not; the
//! gradient from the kept result or input ([`Activation::grad_from_result`]).

use vramlab_graph::Activation;

use super::{alias, Ctx};
use crate::tensor::Tensor;

/// Activation forward: in place into `x`'s storage, or a new tensor.
pub(crate) fn forward(ctx: &Ctx, kind: Activation, x: &Tensor, inplace: bool) -> Tensor {
    if inplace {
        x.data_mut().iter_mut().for_each(|v| *v = kind.apply(*v));
        alias(x)
    } else {
        let o = ctx.zeros(&x.shape);
        o.data_mut()
            .iter_mut()
            .zip(x.data().iter())
            .for_each(|(o, &v)| *o = kind.apply(v));
        o
    }
}

/// A copy of `x` (what an in-place activation keeps when its gradient needs the input).
pub(crate) fn copy(ctx: &Ctx, x: &Tensor) -> Tensor {
    let o = ctx.zeros(&x.shape);
    o.data_mut().copy_from_slice(&x.data());
    o
}

/// Activation backward from the kept tensor `v` (the result where
/// [`Activation::grad_from_result`], else the input).
pub(crate) fn backward(ctx: &Ctx, kind: Activation, g: &Tensor, v: &Tensor) -> Tensor {
    let gi = ctx.zeros(&g.shape);
    gi.data_mut()
        .iter_mut()
        .zip(g.data().iter().zip(v.data().iter()))
        .for_each(|(o, (&gv, &vv))| *o = kind.grad(gv, vv));
    gi
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{t, test_ctx, test_parts};
    use std::rc::Rc;

    #[test]
    fn an_in_place_activation_writes_its_input_and_shares_its_storage() {
        let (tr, pool) = test_parts();
        let ctx = test_ctx(&tr, &pool);
        let x = t(&tr, &[1, 4, 1, 1], vec![-4., -1., 1., 7.]);
        let o = forward(&ctx, Activation::Hardswish, &x, false);
        assert_eq!(*x.data(), vec![-4., -1., 1., 7.]);
        let want = vec![0., -1. / 3., 2. / 3., 7.];
        assert_eq!(*o.data(), want);
        let kept = copy(&ctx, &x);
        let o = forward(&ctx, Activation::Hardswish, &x, true);
        assert!(Rc::ptr_eq(&o.buf, &x.buf));
        assert_eq!(*x.data(), want);
        // The gradient reads the copy of the input kept before the write.
        let g = t(&tr, &[1, 4, 1, 1], vec![1.0; 4]);
        let gi = backward(&ctx, Activation::Hardswish, &g, &kept);
        for (got, want) in gi.data().iter().zip([0., 1. / 6., 5. / 6., 1.]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
