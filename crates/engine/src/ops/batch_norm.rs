//! BatchNorm2d: batch statistics in f64 per channel, running statistics, PyTorch's
//! error for a single value per channel.

use std::rc::Rc;

use rayon::prelude::*;
use vramlab_graph::BatchNorm2d;

use super::Ctx;
use crate::tensor::{Buf, Tensor};

/// BatchNorm buffers of one layer.
#[derive(Debug)]
pub struct BnBuffers {
    pub running_mean: Tensor,
    pub running_var: Tensor,
    pub num_batches_tracked: Rc<Buf<i64>>,
}

/// The output of BatchNorm `bn` (weight and bias `affine`) and, in training, the batch's
/// mean and reciprocal standard deviation per channel (what backward keeps), allocated
/// in that order; the running statistics `running` updated in training and read in eval.
/// The error is PyTorch's message.
#[allow(clippy::type_complexity)]
pub(crate) fn forward(
    ctx: &Ctx,
    x: &Tensor,
    affine: Option<(&Tensor, &Tensor)>,
    running: Option<&BnBuffers>,
    bn: &BatchNorm2d,
    train: bool,
) -> Result<(Tensor, Option<(Tensor, Tensor)>), String> {
    let (b, c) = (x.shape[0], x.shape[1]);
    let plane: usize = x.shape[2..].iter().product();
    let out = Tensor::zeros(ctx.tracker, &x.shape, None);
    let (gamma, beta): (Vec<f32>, Vec<f32>) = match affine {
        Some((w, b)) => (w.data().clone(), b.data().clone()),
        None => (vec![1.0; c], vec![0.0; c]),
    };
    // Without running statistics (track_running_stats=False) PyTorch normalises with
    // the batch's statistics in eval mode too (`bn_training` in F.batch_norm).
    if let (false, Some(bufs)) = (train, running) {
        let (rm, rv) = (bufs.running_mean.data(), bufs.running_var.data());
        let xd = x.data();
        let mut od = out.data_mut();
        for s in 0..b {
            for ch in 0..c {
                let inv = 1.0 / (rv[ch] + bn.eps as f32).sqrt();
                let base = (s * c + ch) * plane;
                for k in base..base + plane {
                    od[k] = (xd[k] - rm[ch]) * inv * gamma[ch] + beta[ch];
                }
            }
        }
        drop((rm, rv, xd, od));
        return Ok((out, None));
    }
    let n = b * plane;
    if n <= 1 {
        return Err(format!(
            "Expected more than 1 value per channel when training, got input size torch.Size([{}])",
            x.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mean = Tensor::zeros(ctx.tracker, &[c], None);
    let invstd = Tensor::zeros(ctx.tracker, &[c], None);
    {
        let xd = x.data();
        let mut od = out.data_mut();
        let mut md = mean.data_mut();
        let mut id = invstd.data_mut();
        let xs: &[f32] = &xd[..];
        let stats: Vec<(f64, f64)> = ctx.pool.install(|| {
            (0..c)
                .into_par_iter()
                .map(|ch| {
                    let mut s = 0.0f64;
                    for smp in 0..b {
                        let base = (smp * c + ch) * plane;
                        s += sum_f64(&xs[base..base + plane]);
                    }
                    let m = s / n as f64;
                    let mut q = 0.0f64;
                    for smp in 0..b {
                        let base = (smp * c + ch) * plane;
                        q += sq_dev_f64(&xs[base..base + plane], m);
                    }
                    (m, q / n as f64)
                })
                .collect()
        });
        for (ch, &(m, var)) in stats.iter().enumerate() {
            md[ch] = m as f32;
            id[ch] = (1.0 / (var + bn.eps).sqrt()) as f32;
        }
        {
            let (md, id, gamma, beta): (&[f32], &[f32], &[f32], &[f32]) =
                (&md[..], &id[..], &gamma[..], &beta[..]);
            let od: &mut [f32] = &mut od[..];
            // One sample's planes per task, on all threads.
            ctx.pool.install(|| {
                od.par_chunks_mut(c * plane)
                    .zip(xs.par_chunks(c * plane))
                    .for_each(|(os, xsmp)| {
                        for ch in 0..c {
                            let (m, inv, g, bt) = (md[ch], id[ch], gamma[ch], beta[ch]);
                            let r = ch * plane..(ch + 1) * plane;
                            for (o, &v) in os[r.clone()].iter_mut().zip(&xsmp[r]) {
                                *o = (v - m) * inv * g + bt;
                            }
                        }
                    });
            });
        }
        if let Some(bufs) = running {
            let mom = bn.momentum as f32;
            let mut rm = bufs.running_mean.data_mut();
            let mut rv = bufs.running_var.data_mut();
            for (ch, &(m, var)) in stats.iter().enumerate() {
                rm[ch] = (1.0 - mom) * rm[ch] + mom * m as f32;
                let unbiased = var * n as f64 / (n as f64 - 1.0);
                rv[ch] = (1.0 - mom) * rv[ch] + mom * unbiased as f32;
            }
            bufs.num_batches_tracked.borrow_mut()[0] += 1;
        }
    }
    Ok((out, Some((mean, invstd))))
}

#[allow(clippy::too_many_arguments, clippy::type_complexity)]
/// The gradients of [`forward`] in training from its kept input, mean and reciprocal
/// standard deviation: the input's (with `need_in`), then the weight's and the bias's
/// (with `gamma`, the weight).
pub(crate) fn backward(
    ctx: &Ctx,
    x: &Tensor,
    mean: &Tensor,
    invstd: &Tensor,
    gout: &Tensor,
    gamma: Option<&Tensor>,
    need_in: bool,
) -> (Option<Tensor>, Option<Tensor>, Option<Tensor>) {
    let (b, c) = (x.shape[0], x.shape[1]);
    let plane: usize = x.shape[2..].iter().product();
    let n = (b * plane) as f32;
    let gi = need_in.then(|| Tensor::zeros(ctx.tracker, &x.shape, None));
    let gw = gamma.map(|_| ctx.grad(&[c]));
    let gb = gamma.map(|_| ctx.grad(&[c]));
    let gamma: Vec<f32> = match gamma {
        Some(w) => w.data().clone(),
        None => vec![1.0; c],
    };
    let (xg, gg, mg, ig) = (x.data(), gout.data(), mean.data(), invstd.data());
    let (xd, gd, md, id): (&[f32], &[f32], &[f32], &[f32]) = (&xg[..], &gg[..], &mg[..], &ig[..]);
    // Per channel on all threads (each channel's sums in the same order as before).
    let sums: Vec<(f32, f32)> = ctx.pool.install(|| {
        (0..c)
            .into_par_iter()
            .map(|ch| {
                let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                for s in 0..b {
                    let r = (s * c + ch) * plane..(s * c + ch + 1) * plane;
                    let (a, bb) = bn_grad_sums(&gd[r.clone()], &xd[r], md[ch], id[ch]);
                    sg += a;
                    sgx += bb;
                }
                (sg as f32, sgx as f32)
            })
            .collect()
    });
    if let (Some(gw), Some(gb)) = (&gw, &gb) {
        let (mut w, mut bb) = (gw.data_mut(), gb.data_mut());
        for (ch, &(sg, sgx)) in sums.iter().enumerate() {
            w[ch] = sgx;
            bb[ch] = sg;
        }
    }
    if let Some(gi) = &gi {
        let mut og = gi.data_mut();
        let o: &mut [f32] = &mut og[..];
        let (sums, gamma) = (&sums[..], &gamma[..]);
        // One sample's planes per task, on all threads.
        ctx.pool.install(|| {
            o.par_chunks_mut(c * plane)
                .zip(xd.par_chunks(c * plane).zip(gd.par_chunks(c * plane)))
                .for_each(|(os, (xs, gs))| {
                    for ch in 0..c {
                        let (sg, sgx) = sums[ch];
                        let scale = gamma[ch] * id[ch] / n;
                        let r = ch * plane..(ch + 1) * plane;
                        for ((o, &xv), &gv) in
                            os[r.clone()].iter_mut().zip(&xs[r.clone()]).zip(&gs[r])
                        {
                            let xhat = (xv - md[ch]) * id[ch];
                            *o = scale * (n * gv - sg - xhat * sgx);
                        }
                    }
                });
        });
    }
    (gi, gw, gb)
}

/// The sum of `xs` in f64, in eight interleaved partial sums (so that it vectorises).
pub fn sum_f64(xs: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let c = xs.chunks_exact(8);
    let r = c.remainder();
    for v in c {
        for i in 0..8 {
            acc[i] += v[i] as f64;
        }
    }
    acc.iter().sum::<f64>() + r.iter().map(|&v| v as f64).sum::<f64>()
}

/// The sum of `(x - m)^2` over `xs` in f64, as [`sum_f64`].
pub fn sq_dev_f64(xs: &[f32], m: f64) -> f64 {
    let mut acc = [0f64; 8];
    let c = xs.chunks_exact(8);
    let r = c.remainder();
    for v in c {
        for i in 0..8 {
            let d = v[i] as f64 - m;
            acc[i] += d * d;
        }
    }
    acc.iter().sum::<f64>()
        + r.iter()
            .map(|&v| (v as f64 - m) * (v as f64 - m))
            .sum::<f64>()
}

/// BatchNorm backward's two sums over one plane, in f64: of the output gradient `g`,
/// and of `g * (x - mean) * invstd` (each product in f32, as before).
pub fn bn_grad_sums(g: &[f32], x: &[f32], mean: f32, invstd: f32) -> (f64, f64) {
    let (mut a, mut b) = ([0f64; 8], [0f64; 8]);
    let (cg, cx) = (g.chunks_exact(8), x.chunks_exact(8));
    let (rg, rx) = (cg.remainder(), cx.remainder());
    for (gv, xv) in cg.zip(cx) {
        for i in 0..8 {
            a[i] += gv[i] as f64;
            b[i] += (gv[i] * (xv[i] - mean) * invstd) as f64;
        }
    }
    let (mut sa, mut sb) = (a.iter().sum::<f64>(), b.iter().sum::<f64>());
    for (&gv, &xv) in rg.iter().zip(rx) {
        sa += gv as f64;
        sb += (gv * (xv - mean) * invstd) as f64;
    }
    (sa, sb)
}
