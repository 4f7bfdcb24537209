//! Kernels of the elementwise and data-movement layers (activations, multiply with
//! broadcasting, concatenation, channel slices and shuffles, stochastic depth): forward
//! and backward as plain functions over [`Tensor`]s, beneath the engine. Each allocates
//! only its output (or gradient) through the [`Ctx`]'s tracker, which is what the
//! planner's native profile counts for them (no scratch).

use std::rc::Rc;

use vramlab_graph::Activation;

use crate::tensor::{Tensor, Tracker};

/// What a layer kernel may use of the engine: its memory tracker.
pub(crate) struct Ctx<'a> {
    pub tracker: &'a Rc<Tracker>,
}

impl Ctx<'_> {
    fn zeros(&self, shape: &[usize]) -> Tensor {
        Tensor::zeros(self.tracker, shape, None)
    }
}

/// A view of the same storage with the same shape.
fn alias(x: &Tensor) -> Tensor {
    Tensor {
        buf: Rc::clone(&x.buf),
        shape: x.shape.clone(),
    }
}

/// Activation forward: in place into `x`'s storage, or a new tensor.
pub(crate) fn act_forward(ctx: &Ctx, kind: Activation, x: &Tensor, inplace: bool) -> Tensor {
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
pub(crate) fn clone(ctx: &Ctx, x: &Tensor) -> Tensor {
    let o = ctx.zeros(&x.shape);
    o.data_mut().copy_from_slice(&x.data());
    o
}

/// Activation backward from the kept tensor `v` (the result where
/// [`Activation::grad_from_result`], else the input).
pub(crate) fn act_backward(ctx: &Ctx, kind: Activation, g: &Tensor, v: &Tensor) -> Tensor {
    let gi = ctx.zeros(&g.shape);
    gi.data_mut()
        .iter_mut()
        .zip(g.data().iter().zip(v.data().iter()))
        .for_each(|(o, (&gv, &vv))| *o = kind.grad(gv, vv));
    gi
}

/// Strides of `shape` read at the positions of `out` (0 along broadcast dimensions).
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut s = 1;
    for d in (0..shape.len()).rev() {
        strides[d] = if shape[d] == 1 && out[d] != 1 { 0 } else { s };
        s *= shape[d];
    }
    strides
}

/// Visits every position of `out` with the flat indices into `a` and `b`.
fn each_broadcast(out: &[usize], a: &[usize], b: &[usize], mut f: impl FnMut(usize, usize, usize)) {
    let (sa, sb) = (broadcast_strides(a, out), broadcast_strides(b, out));
    let n: usize = out.iter().product();
    let mut pos = vec![0usize; out.len()];
    let (mut ia, mut ib) = (0usize, 0usize);
    for o in 0..n {
        f(o, ia, ib);
        // Odometer step over the output's dimensions.
        for d in (0..out.len()).rev() {
            pos[d] += 1;
            ia += sa[d];
            ib += sb[d];
            if pos[d] < out[d] {
                break;
            }
            ia -= sa[d] * out[d];
            ib -= sb[d] * out[d];
            pos[d] = 0;
        }
    }
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Vec<usize> {
    a.iter().zip(b).map(|(&x, &y)| x.max(y)).collect()
}

/// `a * b` with broadcasting.
pub(crate) fn mul_forward(ctx: &Ctx, a: &Tensor, b: &Tensor) -> Tensor {
    let shape = broadcast_shape(&a.shape, &b.shape);
    let o = ctx.zeros(&shape);
    {
        let (ad, bd, mut od) = (a.data(), b.data(), o.data_mut());
        if a.shape == b.shape {
            od.iter_mut()
                .zip(ad.iter().zip(bd.iter()))
                .for_each(|(o, (x, y))| *o = x * y);
        } else {
            each_broadcast(&shape, &a.shape, &b.shape, |k, i, j| od[k] = ad[i] * bd[j]);
        }
    }
    o
}

/// The gradient of `a` in `a * b`: `g * b`, summed down to `a`'s shape.
pub(crate) fn mul_backward(ctx: &Ctx, g: &Tensor, a_shape: &[usize], b: &Tensor) -> Tensor {
    let ga = ctx.zeros(a_shape);
    {
        let (gd, bd, mut od) = (g.data(), b.data(), ga.data_mut());
        if a_shape == b.shape.as_slice() && g.shape == b.shape {
            od.iter_mut()
                .zip(gd.iter().zip(bd.iter()))
                .for_each(|(o, (x, y))| *o = x * y);
        } else {
            each_broadcast(&g.shape, a_shape, &b.shape, |k, i, j| {
                od[i] += gd[k] * bd[j]
            });
        }
    }
    ga
}

/// `torch.cat(xs, dim=1)`.
pub(crate) fn concat_forward(ctx: &Ctx, xs: &[Tensor]) -> Tensor {
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

/// Channels `start..start+len` of `x` (a copy), per sample.
pub(crate) fn narrow_forward(ctx: &Ctx, x: &Tensor, start: usize, len: usize) -> Tensor {
    let batch = x.shape[0];
    let rest: usize = x.shape[2..].iter().product();
    let mut shape = x.shape.clone();
    shape[1] = len;
    let o = ctx.zeros(&shape);
    {
        let per_in = x.numel() / batch;
        let (xd, mut od) = (x.data(), o.data_mut());
        for s in 0..batch {
            let from = s * per_in + start * rest;
            od[s * len * rest..(s + 1) * len * rest].copy_from_slice(&xd[from..from + len * rest]);
        }
    }
    o
}

/// The gradient of one channel slice: `g` written into zeros of the input's shape.
/// Concatenation's backward is this for each of its inputs.
pub(crate) fn narrow_backward(ctx: &Ctx, g: &Tensor, in_shape: &[usize], start: usize) -> Tensor {
    let batch = in_shape[0];
    let rest: usize = in_shape[2..].iter().product();
    let len = g.shape[1];
    let gi = ctx.zeros(in_shape);
    {
        let per_in: usize = in_shape[1..].iter().product();
        let (gd, mut od) = (g.data(), gi.data_mut());
        for s in 0..batch {
            let to = s * per_in + start * rest;
            od[to..to + len * rest].copy_from_slice(&gd[s * len * rest..(s + 1) * len * rest]);
        }
    }
    gi
}

/// The gradient of the concatenation's input that starts at channel `start` and has the
/// shape `in_shape` (a slice of `g` along channels).
pub(crate) fn concat_backward(ctx: &Ctx, g: &Tensor, in_shape: &[usize], start: usize) -> Tensor {
    narrow_forward(ctx, g, start, in_shape[1])
}

/// torchvision's channel shuffle: output channel `j * groups + i` is input channel
/// `i * (C / groups) + j`; backward is the inverse permutation.
pub(crate) fn shuffle(ctx: &Ctx, x: &Tensor, groups: usize, inverse: bool) -> Tensor {
    let (batch, c) = (x.shape[0], x.shape[1]);
    let plane: usize = x.shape[2..].iter().product();
    let per_group = c / groups;
    let o = ctx.zeros(&x.shape);
    {
        let (xd, mut od) = (x.data(), o.data_mut());
        for s in 0..batch {
            for i in 0..groups {
                for j in 0..per_group {
                    let (src, dst) = (i * per_group + j, j * groups + i);
                    let (src, dst) = if inverse { (dst, src) } else { (src, dst) };
                    let (from, to) = ((s * c + src) * plane, (s * c + dst) * plane);
                    od[to..to + plane].copy_from_slice(&xd[from..from + plane]);
                }
            }
        }
    }
    o
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

    fn t(tr: &Rc<Tracker>, shape: &[usize], v: Vec<f32>) -> Tensor {
        Tensor::from_vec(tr, shape, v, None)
    }

    #[test]
    fn broadcast_multiply_and_its_gradient_sum_over_the_broadcast_dims() {
        let tr = Tracker::new();
        let ctx = Ctx { tracker: &tr };
        // scale [2,2,1,1] * x [2,2,1,3]
        let s = t(&tr, &[2, 2, 1, 1], vec![1.0, 2.0, 3.0, 4.0]);
        let x = t(&tr, &[2, 2, 1, 3], (0..12).map(|v| v as f32).collect());
        let o = mul_forward(&ctx, &s, &x);
        assert_eq!(
            *o.data(),
            vec![0., 1., 2., 6., 8., 10., 18., 21., 24., 36., 40., 44.]
        );
        let g = t(&tr, &[2, 2, 1, 3], vec![1.0; 12]);
        let gs = mul_backward(&ctx, &g, &s.shape, &x);
        assert_eq!(*gs.data(), vec![3., 12., 21., 30.]);
        let gx = mul_backward(&ctx, &g, &x.shape, &s);
        assert_eq!(
            *gx.data(),
            vec![1., 1., 1., 2., 2., 2., 3., 3., 3., 4., 4., 4.]
        );
    }

    #[test]
    fn concat_slices_and_shuffles_invert() {
        let tr = Tracker::new();
        let ctx = Ctx { tracker: &tr };
        let a = t(&tr, &[2, 1, 1, 2], vec![1., 2., 3., 4.]);
        let b = t(&tr, &[2, 2, 1, 2], vec![5., 6., 7., 8., 9., 10., 11., 12.]);
        let c = concat_forward(&ctx, &[a.clone(), b.clone()]);
        assert_eq!(
            *c.data(),
            vec![1., 2., 5., 6., 7., 8., 3., 4., 9., 10., 11., 12.]
        );
        assert_eq!(*concat_backward(&ctx, &c, &b.shape, 1).data(), *b.data());
        let n = narrow_forward(&ctx, &c, 1, 2);
        assert_eq!(*n.data(), *b.data());
        let back = narrow_backward(&ctx, &n, &c.shape, 1);
        assert_eq!(
            *back.data(),
            vec![0., 0., 5., 6., 7., 8., 0., 0., 9., 10., 11., 12.]
        );
        let x = t(&tr, &[1, 6, 1, 1], vec![0., 1., 2., 3., 4., 5.]);
        let sh = shuffle(&ctx, &x, 2, false);
        // view(1,2,3).transpose(1,2): channels 0,3,1,4,2,5
        assert_eq!(*sh.data(), vec![0., 3., 1., 4., 2., 5.]);
        assert_eq!(*shuffle(&ctx, &sh, 2, true).data(), *x.data());
    }

    #[test]
    fn stochastic_depth_scales_each_sample_or_the_whole_batch() {
        let tr = Tracker::new();
        let ctx = Ctx { tracker: &tr };
        let x = t(&tr, &[2, 1, 1, 2], vec![1., 2., 3., 4.]);
        let row = t(&tr, &[2], vec![0.0, 2.0]);
        assert_eq!(*scale_by(&ctx, &x, &row).data(), vec![0., 0., 6., 8.]);
        let batch = t(&tr, &[1], vec![2.0]);
        assert_eq!(*scale_by(&ctx, &x, &batch).data(), vec![2., 4., 6., 8.]);
    }

    #[test]
    fn an_in_place_activation_writes_its_input_and_shares_its_storage() {
        let tr = Tracker::new();
        let ctx = Ctx { tracker: &tr };
        let x = t(&tr, &[1, 4, 1, 1], vec![-4., -1., 1., 7.]);
        let o = act_forward(&ctx, Activation::Hardswish, &x, false);
        assert_eq!(*x.data(), vec![-4., -1., 1., 7.]);
        let want = vec![0., -1. / 3., 2. / 3., 7.];
        assert_eq!(*o.data(), want);
        let kept = clone(&ctx, &x);
        let o = act_forward(&ctx, Activation::Hardswish, &x, true);
        assert!(Rc::ptr_eq(&o.buf, &x.buf));
        assert_eq!(*x.data(), want);
        // The gradient reads the copy of the input kept before the write.
        let g = t(&tr, &[1, 4, 1, 1], vec![1.0; 4]);
        let gi = act_backward(&ctx, Activation::Hardswish, &g, &kept);
        for (got, want) in gi.data().iter().zip([0., 1. / 6., 5. / 6., 1.]) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
