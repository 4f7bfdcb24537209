//! Activations (ReLU, ReLU6, SiLU, GELU, ...): elementwise, in place or not; the
//! gradient from the kept result or input ([`Activation::grad_from_result`]).

use rayon::prelude::*;
use vramlab_graph::Activation;

use super::{alias, Ctx};
use crate::tensor::Tensor;

/// Elements per task when an activation is split across the threads (and the size
/// below which it is not: one task's worth is not worth a wake-up).
const CHUNK: usize = 1 << 14;

/// Runs `body` with `$k` bound to `kind` as a constant, so that `apply` and `grad`
/// inline into one loop per kind (no match per element: the loops vectorise).
macro_rules! each_kind {
    ($kind:expr, $k:ident => $body:expr) => {
        match $kind {
            Activation::Relu => {
                const $k: Activation = Activation::Relu;
                $body
            }
            Activation::Relu6 => {
                const $k: Activation = Activation::Relu6;
                $body
            }
            Activation::Silu => {
                const $k: Activation = Activation::Silu;
                $body
            }
            Activation::Sigmoid => {
                const $k: Activation = Activation::Sigmoid;
                $body
            }
            Activation::Hardswish => {
                const $k: Activation = Activation::Hardswish;
                $body
            }
            Activation::Hardsigmoid => {
                const $k: Activation = Activation::Hardsigmoid;
                $body
            }
            Activation::Gelu => {
                const $k: Activation = Activation::Gelu;
                $body
            }
            Activation::GeluTanh => {
                const $k: Activation = Activation::GeluTanh;
                $body
            }
            Activation::Tanh => {
                const $k: Activation = Activation::Tanh;
                $body
            }
        }
    };
}

/// `out[i] = f(out[i], a[i], b[i])` over equal-length slices, on the pool's threads for
/// large tensors.
fn zip3<F>(ctx: &Ctx, out: &mut [f32], a: &[f32], b: &[f32], f: F)
where
    F: Fn(&mut f32, f32, f32) + Sync,
{
    let run = |o: &mut [f32], a: &[f32], b: &[f32]| {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            f(o, a, b);
        }
    };
    if ctx.threads < 2 || out.len() < 2 * CHUNK {
        run(out, a, b);
    } else {
        ctx.pool.install(|| {
            out.par_chunks_mut(CHUNK)
                .zip(a.par_chunks(CHUNK))
                .zip(b.par_chunks(CHUNK))
                .for_each(|((o, a), b)| run(o, a, b));
        });
    }
}

/// `out[i] = f(out[i])`, on the pool's threads for large tensors.
fn each<F>(ctx: &Ctx, out: &mut [f32], f: F)
where
    F: Fn(f32) -> f32 + Sync,
{
    let run = |o: &mut [f32]| o.iter_mut().for_each(|v| *v = f(*v));
    if ctx.threads < 2 || out.len() < 2 * CHUNK {
        run(out);
    } else {
        ctx.pool.install(|| out.par_chunks_mut(CHUNK).for_each(run));
    }
}

/// `out[i] = f(x[i])`, on the pool's threads for large tensors.
fn map<F>(ctx: &Ctx, out: &mut [f32], x: &[f32], f: F)
where
    F: Fn(f32) -> f32 + Sync,
{
    zip3(ctx, out, x, x, |o, v, _| *o = f(v));
}

/// Activation forward: in place into `x`'s storage, or a new tensor.
pub(crate) fn forward(ctx: &Ctx, kind: Activation, x: &Tensor, inplace: bool) -> Tensor {
    if inplace {
        each_kind!(kind, K => each(ctx, &mut x.data_mut(), |v| K.apply(v)));
        alias(x)
    } else {
        let o = ctx.zeros(&x.shape);
        each_kind!(kind, K => map(ctx, &mut o.data_mut(), &x.data(), |v| K.apply(v)));
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
    each_kind!(kind, K => zip3(ctx, &mut gi.data_mut(), &g.data(), &v.data(), |o, gv, vv| {
        *o = K.grad(gv, vv)
    }));
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
