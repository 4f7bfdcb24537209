//! LayerNorm over the last dimension.

use rayon::prelude::*;

use super::{column_sums, Ctx};
use crate::tensor::Tensor;

/// LayerNorm over the last dimension (`d` values a row), with PyTorch's biased variance.
/// Allocates, in order: the output, the mean and the reciprocal standard deviation of
/// each row (`[rows]` each; the engine keeps both with the input).
pub(crate) fn forward(
    ctx: &Ctx,
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> (Tensor, Tensor, Tensor) {
    let d = *x.shape.last().expect("a last dimension");
    let rows = x.numel() / d;
    let out = ctx.zeros(&x.shape);
    let mean = ctx.zeros(&[rows]);
    let rstd = ctx.zeros(&[rows]);
    {
        let (xd, mut od, mut md, mut rd) =
            (x.data(), out.data_mut(), mean.data_mut(), rstd.data_mut());
        let w = weight.map(|t| t.data());
        let bv = bias.map(|t| t.data());
        let (w, bv) = (w.as_deref().map(|v| &v[..]), bv.as_deref().map(|v| &v[..]));
        let per = rows.div_ceil(ctx.threads).max(1);
        let (xd, od, md, rd): (&[f32], &mut [f32], &mut [f32], &mut [f32]) =
            (&xd[..], &mut od[..], &mut md[..], &mut rd[..]);
        ctx.pool.install(|| {
            od.par_chunks_mut(per * d)
                .zip(xd.par_chunks(per * d))
                .zip(md.par_chunks_mut(per).zip(rd.par_chunks_mut(per)))
                .for_each(|((oc, xc), (mc, rc))| {
                    for (((o, xr), m), r) in oc
                        .chunks_mut(d)
                        .zip(xc.chunks(d))
                        .zip(mc.iter_mut())
                        .zip(rc.iter_mut())
                    {
                        let mu = xr.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
                        let var = xr
                            .iter()
                            .map(|&v| (v as f64 - mu) * (v as f64 - mu))
                            .sum::<f64>()
                            / d as f64;
                        let inv = 1.0 / (var + eps).sqrt();
                        *m = mu as f32;
                        *r = inv as f32;
                        let (mu, inv) = (mu as f32, inv as f32);
                        for (j, (o, &v)) in o.iter_mut().zip(xr).enumerate() {
                            let mut y = (v - mu) * inv;
                            if let Some(w) = w {
                                y *= w[j];
                            }
                            if let Some(b) = bv {
                                y += b[j];
                            }
                            *o = y;
                        }
                    }
                });
        });
    }
    (out, mean, rstd)
}

/// The gradients of [`forward`]. Allocates, in order: the input gradient
/// (with `need_in`), then the weight and bias gradients (where the layer has them).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn backward(
    ctx: &Ctx,
    x: &Tensor,
    mean: &Tensor,
    rstd: &Tensor,
    g: &Tensor,
    weight: Option<&Tensor>,
    has_bias: bool,
    need_in: bool,
) -> (Option<Tensor>, Option<Tensor>, Option<Tensor>) {
    let d = *x.shape.last().expect("a last dimension");
    let rows = x.numel() / d;
    let gi = need_in.then(|| ctx.zeros(&x.shape));
    let gw = weight.map(|_| ctx.grad(&[d]));
    let gb = (weight.is_some() && has_bias).then(|| ctx.grad(&[d]));
    {
        let (xd, gd, md, rd) = (x.data(), g.data(), mean.data(), rstd.data());
        if let Some(gw) = &gw {
            let mut gwd = gw.data_mut();
            for ((xr, gr), (&m, &r)) in xd.chunks(d).zip(gd.chunks(d)).zip(md.iter().zip(rd.iter()))
            {
                for ((w, &v), &gv) in gwd.iter_mut().zip(xr).zip(gr) {
                    *w += gv * (v - m) * r;
                }
            }
        }
        if let Some(gb) = &gb {
            column_sums(&gd, d, &mut gb.data_mut());
        }
        if let Some(gi) = &gi {
            let w = weight.map(|t| t.data());
            let w = w.as_deref().map(|v| &v[..]);
            let mut gid = gi.data_mut();
            let per = rows.div_ceil(ctx.threads).max(1);
            let (xd, gd, md, rd, gid): (&[f32], &[f32], &[f32], &[f32], &mut [f32]) =
                (&xd[..], &gd[..], &md[..], &rd[..], &mut gid[..]);
            ctx.pool.install(|| {
                gid.par_chunks_mut(per * d)
                    .zip(xd.par_chunks(per * d).zip(gd.par_chunks(per * d)))
                    .zip(md.par_chunks(per).zip(rd.par_chunks(per)))
                    .for_each(|((oc, (xc, gc)), (mc, rc))| {
                        for (((o, xr), gr), (&m, &r)) in oc
                            .chunks_mut(d)
                            .zip(xc.chunks(d))
                            .zip(gc.chunks(d))
                            .zip(mc.iter().zip(rc))
                        {
                            // dx = r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
                            let (mut s1, mut s2) = (0.0f64, 0.0f64);
                            for (j, (&v, &gv)) in xr.iter().zip(gr).enumerate() {
                                let dxh = gv * w.map_or(1.0, |w| w[j]);
                                s1 += dxh as f64;
                                s2 += (dxh * (v - m) * r) as f64;
                            }
                            let (a1, a2) = ((s1 / d as f64) as f32, (s2 / d as f64) as f32);
                            for (j, (o, (&v, &gv))) in
                                o.iter_mut().zip(xr.iter().zip(gr)).enumerate()
                            {
                                let dxh = gv * w.map_or(1.0, |w| w[j]);
                                *o = r * (dxh - a1 - (v - m) * r * a2);
                            }
                        }
                    });
            });
        }
    }
    (gi, gw, gb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{test_ctx, test_parts};
    use crate::tensor::Tensor;

    #[test]
    fn layer_norm_has_zero_mean_and_unit_biased_variance() {
        let (tr, pool) = test_parts();
        let ctx = test_ctx(&tr, &pool);
        let x = Tensor::from_vec(&tr, &[1, 2, 2], vec![1., 3., -2., 2.], None);
        let (o, m, r) = forward(&ctx, &x, None, None, 0.0);
        assert_eq!(*m.data(), vec![2.0, 0.0]);
        assert_eq!(*r.data(), vec![1.0, 0.5]);
        assert_eq!(*o.data(), vec![-1., 1., -1., 1.]);
    }
}
