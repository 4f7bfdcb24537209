//! Elementwise multiply with broadcasting (squeeze-and-excitation gating, layer scale).

use super::Ctx;
use crate::tensor::Tensor;

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
pub(crate) fn forward(ctx: &Ctx, a: &Tensor, b: &Tensor) -> Tensor {
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
pub(crate) fn backward(ctx: &Ctx, g: &Tensor, a_shape: &[usize], b: &Tensor) -> Tensor {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{t, test_ctx, test_parts};

    #[test]
    fn broadcast_multiply_and_its_gradient_sum_over_the_broadcast_dims() {
        let (tr, pool) = test_parts();
        let ctx = test_ctx(&tr, &pool);
        // scale [2,2,1,1] * x [2,2,1,3]
        let s = t(&tr, &[2, 2, 1, 1], vec![1.0, 2.0, 3.0, 4.0]);
        let x = t(&tr, &[2, 2, 1, 3], (0..12).map(|v| v as f32).collect());
        let o = forward(&ctx, &s, &x);
        assert_eq!(
            *o.data(),
            vec![0., 1., 2., 6., 8., 10., 18., 21., 24., 36., 40., 44.]
        );
        let g = t(&tr, &[2, 2, 1, 3], vec![1.0; 12]);
        let gs = backward(&ctx, &g, &s.shape, &x);
        assert_eq!(*gs.data(), vec![3., 12., 21., 30.]);
        let gx = backward(&ctx, &g, &x.shape, &s);
        assert_eq!(
            *gx.data(),
            vec![1., 1., 1., 2., 2., 2., 3., 3., 3., 4., 4., 4.]
        );
    }
}
