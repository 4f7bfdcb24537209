//! Kernels of the transformer layers (learnable leaves used as values, LayerNorm over the
//! last dimension, multi-head self-attention, and the views a ViT or a channels-last
//! block reads through: select, tokens, permute): forward and backward over [`Tensor`]s,
//! beneath the engine.
//!
//! Every tensor a kernel allocates goes through the [`Ctx`]'s tracker, in the order its
//! doc comment gives; the planner's native profile (`vramlab_memory`'s `native.rs`)
//! plans the same tensors in the same order.

use std::rc::Rc;

use rayon::prelude::*;

use crate::kernels::gemm;
use crate::tensor::{Category, Tensor, Tracker};

/// What a transformer kernel may use of the engine: its tracker, its threads, and how
/// many chunks a batch is split into (one scratch set per chunk).
pub(crate) struct Ctx<'a> {
    pub tracker: &'a Rc<Tracker>,
    pub pool: &'a rayon::ThreadPool,
    pub threads: usize,
}

impl Ctx<'_> {
    fn zeros(&self, shape: &[usize]) -> Tensor {
        Tensor::zeros(self.tracker, shape, None)
    }

    fn grad(&self, shape: &[usize]) -> Tensor {
        Tensor::zeros(self.tracker, shape, Some(Category::Grads))
    }

    /// Chunks a batch of `b` samples is split into: `Engine::chunks`.
    pub fn chunks(&self, b: usize) -> usize {
        self.threads.min(b).max(1)
    }

    /// `c[m x n] = a[m x k] * b` with `a`'s rows contiguous (`lda` apart), split by rows
    /// across the threads.
    #[allow(clippy::too_many_arguments)]
    fn rows_gemm(
        &self,
        m: usize,
        k: usize,
        n: usize,
        a: &[f32],
        lda: usize,
        b: &[f32],
        bs: (isize, isize),
        c: &mut [f32],
    ) {
        let rows = m.div_ceil(self.threads).max(1);
        self.pool.install(|| {
            c.par_chunks_mut(rows * n)
                .zip(a.par_chunks(rows * lda))
                .for_each(|(cc, ac)| {
                    let mr = cc.len() / n;
                    gemm(
                        mr,
                        k,
                        n,
                        ac,
                        (lda as isize, 1),
                        b,
                        bs,
                        cc,
                        (n as isize, 1),
                        0.0,
                    );
                });
        });
    }

    /// `w[n x k] = g^T * x` for `g` `[m x n]` and `x` `[m x k]`, both row-major: a weight
    /// gradient, split by the rows of `w` across the threads.
    fn weight_grad(&self, m: usize, n: usize, k: usize, g: &[f32], x: &[f32], w: &mut [f32]) {
        let rows = n.div_ceil(self.threads).max(1);
        self.pool.install(|| {
            w.par_chunks_mut(rows * k).enumerate().for_each(|(ci, wc)| {
                let nr = wc.len() / k;
                gemm(
                    nr,
                    m,
                    k,
                    &g[ci * rows..],
                    (1, n as isize),
                    x,
                    (k as isize, 1),
                    wc,
                    (k as isize, 1),
                    0.0,
                );
            });
        });
    }
}

/// Adds each row of `g` (rows of `n`) into `sum`.
fn column_sums(g: &[f32], n: usize, sum: &mut [f32]) {
    for row in g.chunks(n) {
        sum.iter_mut().zip(row).for_each(|(s, v)| *s += v);
    }
}

/// A learnable leaf's value: the parameter broadcast over the batch (`shape`, batch
/// first), one copy per sample. Allocates the value.
pub(crate) fn param_forward(ctx: &Ctx, p: &Tensor, shape: &[usize]) -> Tensor {
    let o = ctx.zeros(shape);
    {
        let pd = p.data();
        let mut od = o.data_mut();
        for s in od.chunks_mut(pd.len()) {
            s.copy_from_slice(&pd);
        }
    }
    o
}

/// A learnable leaf's gradient: `g` summed over the batch. Allocates the gradient
/// (category gradients) in the parameter's shape.
pub(crate) fn param_backward(ctx: &Ctx, g: &Tensor, p_shape: &[usize]) -> Tensor {
    let gp = ctx.grad(p_shape);
    {
        let n = gp.numel();
        column_sums(&g.data(), n, &mut gp.data_mut());
    }
    gp
}

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

/// ViT's tokens: `[B, C, H, W]` as `[B, H*W, C]`, copied; with `backward`, a gradient
/// `[B, H*W, C]` back to `shape` `[B, C, H, W]`. Allocates the result.
pub(crate) fn tokens(ctx: &Ctx, x: &Tensor, shape: &[usize], backward: bool) -> Tensor {
    let flat = Tensor {
        buf: Rc::clone(&x.buf),
        shape: if backward {
            x.shape.clone()
        } else {
            vec![shape[0], shape[1], shape[2] * shape[3]]
        },
    };
    let mut o = permute(ctx, &flat, &[1, 0]);
    if backward {
        o.shape = shape.to_vec();
    }
    o
}

/// `x[:, index]` of the first per-sample dimension, copied. Allocates the result.
pub(crate) fn select_forward(ctx: &Ctx, x: &Tensor, index: usize) -> Tensor {
    let (b, n) = (x.shape[0], x.shape[1]);
    let rest: usize = x.shape[2..].iter().product();
    let o = ctx.zeros(&[&[b][..], &x.shape[2..]].concat());
    {
        let (xd, mut od) = (x.data(), o.data_mut());
        for (s, os) in od.chunks_mut(rest).enumerate() {
            let from = (s * n + index) * rest;
            os.copy_from_slice(&xd[from..from + rest]);
        }
    }
    o
}

/// The gradient of [`select_forward`]: `g` written at `index` into zeros of `in_shape`.
/// Allocates the gradient.
pub(crate) fn select_backward(ctx: &Ctx, g: &Tensor, in_shape: &[usize], index: usize) -> Tensor {
    let n = in_shape[1];
    let rest: usize = in_shape[2..].iter().product();
    let gi = ctx.zeros(in_shape);
    {
        let (gd, mut od) = (g.data(), gi.data_mut());
        for (s, gs) in gd.chunks(rest).enumerate() {
            let to = (s * n + index) * rest;
            od[to..to + rest].copy_from_slice(gs);
        }
    }
    gi
}

/// LayerNorm over the last dimension (`d` values a row), with PyTorch's biased variance.
/// Allocates, in order: the output, the mean and the reciprocal standard deviation of
/// each row (`[rows]` each; the engine keeps both with the input).
pub(crate) fn layer_norm_forward(
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

/// The gradients of [`layer_norm_forward`]. Allocates, in order: the input gradient
/// (with `need_in`), then the weight and bias gradients (where the layer has them).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub(crate) fn layer_norm_backward(
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

/// The weights of one `nn.MultiheadAttention`: `in_proj_weight` `[3E, E]`,
/// `in_proj_bias` `[3E]`, `out_proj.weight` `[E, E]`, `out_proj.bias` `[E]`.
pub(crate) struct AttnWeights<'a> {
    pub w_in: &'a Tensor,
    pub b_in: &'a Tensor,
    pub w_out: &'a Tensor,
    pub b_out: &'a Tensor,
}

/// What self-attention keeps for backward besides its input.
pub(crate) struct AttnSaved {
    /// The packed projections `[B, T, 3E]` (q, k, v of every head).
    pub qkv: Tensor,
    /// The attention probabilities `[B, H, T, T]`.
    pub probs: Tensor,
    /// The heads' outputs side by side `[B, T, E]`, before the out-projection.
    pub heads: Tensor,
}

/// Softmax of each row of `s` (rows of `n`), in place, with the row maximum subtracted
/// first so no exponential overflows.
fn softmax_rows(s: &mut [f32], n: usize) {
    for row in s.chunks_mut(n) {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f32;
        for v in row.iter_mut() {
            *v = (*v - m).exp();
            sum += *v;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|v| *v *= inv);
    }
}

/// Self-attention of tokens `x` `[B, T, E]` with `heads` heads:
/// `out_proj(concat_h softmax(Q_h K_h^T / sqrt(d)) V_h)`. Allocates, in order: the
/// packed projections `[B, T, 3E]`, the probabilities `[B, H, T, T]`, the heads' outputs
/// `[B, T, E]` and the output `[B, T, E]`.
pub(crate) fn attention_forward(
    ctx: &Ctx,
    x: &Tensor,
    w: &AttnWeights,
    heads: usize,
) -> (Tensor, AttnSaved) {
    let (b, t, e) = (x.shape[0], x.shape[1], x.shape[2]);
    let d = e / heads;
    let e3 = 3 * e;
    let scale = 1.0 / (d as f32).sqrt();
    let qkv = ctx.zeros(&[b, t, e3]);
    let probs = ctx.zeros(&[b, heads, t, t]);
    let hout = ctx.zeros(&[b, t, e]);
    let out = ctx.zeros(&[b, t, e]);
    {
        let (xd, win, bin) = (x.data(), w.w_in.data(), w.b_in.data());
        let mut qd = qkv.data_mut();
        ctx.rows_gemm(b * t, e, e3, &xd, e, &win, (1, e as isize), &mut qd);
        for row in qd.chunks_mut(e3) {
            row.iter_mut().zip(bin.iter()).for_each(|(v, b)| *v += b);
        }
    }
    {
        let qd = qkv.data();
        let (mut pd, mut hd) = (probs.data_mut(), hout.data_mut());
        let per = b.div_ceil(ctx.chunks(b));
        let (qd, pd, hd): (&[f32], &mut [f32], &mut [f32]) = (&qd[..], &mut pd[..], &mut hd[..]);
        ctx.pool.install(|| {
            pd.par_chunks_mut(per * heads * t * t)
                .zip(hd.par_chunks_mut(per * t * e))
                .zip(qd.par_chunks(per * t * e3))
                .for_each(|((pc, hc), qc)| {
                    for ((ps, hs), qs) in pc
                        .chunks_mut(heads * t * t)
                        .zip(hc.chunks_mut(t * e))
                        .zip(qc.chunks(t * e3))
                    {
                        for h in 0..heads {
                            let p = &mut ps[h * t * t..(h + 1) * t * t];
                            let (q, k, v) = (&qs[h * d..], &qs[e + h * d..], &qs[2 * e + h * d..]);
                            // S = Q K^T, scaled, then softmax by rows.
                            gemm(
                                t,
                                d,
                                t,
                                q,
                                (e3 as isize, 1),
                                k,
                                (1, e3 as isize),
                                p,
                                (t as isize, 1),
                                0.0,
                            );
                            p.iter_mut().for_each(|v| *v *= scale);
                            softmax_rows(p, t);
                            gemm(
                                t,
                                t,
                                d,
                                p,
                                (t as isize, 1),
                                v,
                                (e3 as isize, 1),
                                &mut hs[h * d..],
                                (e as isize, 1),
                                0.0,
                            );
                        }
                    }
                });
        });
    }
    {
        let (hd, wout, bout) = (hout.data(), w.w_out.data(), w.b_out.data());
        let mut od = out.data_mut();
        ctx.rows_gemm(b * t, e, e, &hd, e, &wout, (1, e as isize), &mut od);
        for row in od.chunks_mut(e) {
            row.iter_mut().zip(bout.iter()).for_each(|(v, b)| *v += b);
        }
    }
    (
        out,
        AttnSaved {
            qkv,
            probs,
            heads: hout,
        },
    )
}

/// The gradients of self-attention.
pub(crate) struct AttnGrads {
    pub input: Option<Tensor>,
    /// `in_proj_weight`, `in_proj_bias`, `out_proj.weight`, `out_proj.bias`.
    pub params: [Tensor; 4],
}

/// The gradients of [`attention_forward`] from the output gradient `g`. Allocates, in
/// order: the input gradient (with `need_in`), the four parameter gradients (in
/// parameter order), then scratch: the heads' output gradient `[B, T, E]`, the packed
/// projections' gradient `[B, T, 3E]`, and one `T x T` probability gradient per chunk
/// of the batch; the scratch is freed before returning.
pub(crate) fn attention_backward(
    ctx: &Ctx,
    x: &Tensor,
    saved: &AttnSaved,
    g: &Tensor,
    w: &AttnWeights,
    heads: usize,
    need_in: bool,
) -> AttnGrads {
    let (b, t, e) = (x.shape[0], x.shape[1], x.shape[2]);
    let d = e / heads;
    let e3 = 3 * e;
    let scale = 1.0 / (d as f32).sqrt();
    let chunks = ctx.chunks(b);
    let per = b.div_ceil(chunks);
    let gi = need_in.then(|| ctx.zeros(&x.shape));
    let gw_in = ctx.grad(&[e3, e]);
    let gb_in = ctx.grad(&[e3]);
    let gw_out = ctx.grad(&[e, e]);
    let gb_out = ctx.grad(&[e]);
    let dheads = ctx.zeros(&[b, t, e]);
    let dqkv = ctx.zeros(&[b, t, e3]);
    let dp = ctx.zeros(&[chunks * t * t]);
    {
        let (gd, hd) = (g.data(), saved.heads.data());
        ctx.weight_grad(b * t, e, e, &gd, &hd, &mut gw_out.data_mut());
        column_sums(&gd, e, &mut gb_out.data_mut());
        let wout = w.w_out.data();
        ctx.rows_gemm(
            b * t,
            e,
            e,
            &gd,
            e,
            &wout,
            (e as isize, 1),
            &mut dheads.data_mut(),
        );
    }
    {
        let (qd, pd, dhd) = (saved.qkv.data(), saved.probs.data(), dheads.data());
        let (mut dqd, mut dpd) = (dqkv.data_mut(), dp.data_mut());
        let (qd, pd, dhd): (&[f32], &[f32], &[f32]) = (&qd[..], &pd[..], &dhd[..]);
        let (dqd, dpd): (&mut [f32], &mut [f32]) = (&mut dqd[..], &mut dpd[..]);
        ctx.pool.install(|| {
            dqd.par_chunks_mut(per * t * e3)
                .zip(dpd.par_chunks_mut(t * t))
                .zip(
                    qd.par_chunks(per * t * e3)
                        .zip(pd.par_chunks(per * heads * t * t))
                        .zip(dhd.par_chunks(per * t * e)),
                )
                .for_each(|((dqc, dps), ((qc, pc), dhc))| {
                    for (((dqs, qs), ps), dhs) in dqc
                        .chunks_mut(t * e3)
                        .zip(qc.chunks(t * e3))
                        .zip(pc.chunks(heads * t * t))
                        .zip(dhc.chunks(t * e))
                    {
                        for h in 0..heads {
                            let p = &ps[h * t * t..(h + 1) * t * t];
                            let da = &dhs[h * d..];
                            let (q, k, v) = (&qs[h * d..], &qs[e + h * d..], &qs[2 * e + h * d..]);
                            // dV = P^T dA.
                            gemm(
                                t,
                                t,
                                d,
                                p,
                                (1, t as isize),
                                da,
                                (e as isize, 1),
                                &mut dqs[2 * e + h * d..],
                                (e3 as isize, 1),
                                0.0,
                            );
                            // dP = dA V^T, then dS = P * (dP - rowsum(P * dP)), scaled.
                            gemm(
                                t,
                                d,
                                t,
                                da,
                                (e as isize, 1),
                                v,
                                (1, e3 as isize),
                                dps,
                                (t as isize, 1),
                                0.0,
                            );
                            for (dr, pr) in dps.chunks_mut(t).zip(p.chunks(t)) {
                                let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
                                for (dv, &pv) in dr.iter_mut().zip(pr) {
                                    *dv = pv * (*dv - dot) * scale;
                                }
                            }
                            // dQ = dS K, dK = dS^T Q.
                            gemm(
                                t,
                                t,
                                d,
                                dps,
                                (t as isize, 1),
                                k,
                                (e3 as isize, 1),
                                &mut dqs[h * d..],
                                (e3 as isize, 1),
                                0.0,
                            );
                            gemm(
                                t,
                                t,
                                d,
                                dps,
                                (1, t as isize),
                                q,
                                (e3 as isize, 1),
                                &mut dqs[e + h * d..],
                                (e3 as isize, 1),
                                0.0,
                            );
                        }
                    }
                });
        });
    }
    drop(dp);
    drop(dheads);
    {
        let (dqd, xd) = (dqkv.data(), x.data());
        ctx.weight_grad(b * t, e3, e, &dqd, &xd, &mut gw_in.data_mut());
        column_sums(&dqd, e3, &mut gb_in.data_mut());
        if let Some(gi) = &gi {
            let win = w.w_in.data();
            ctx.rows_gemm(
                b * t,
                e3,
                e,
                &dqd,
                e3,
                &win,
                (e as isize, 1),
                &mut gi.data_mut(),
            );
        }
    }
    drop(dqkv);
    AttnGrads {
        input: gi,
        params: [gw_in, gb_in, gw_out, gb_out],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx_parts() -> (Rc<Tracker>, rayon::ThreadPool) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool");
        (Tracker::new(), pool)
    }

    #[test]
    fn tokens_and_permute_round_trip() {
        let (tr, pool) = ctx_parts();
        let ctx = Ctx {
            tracker: &tr,
            pool: &pool,
            threads: 2,
        };
        // [1, C=2, H=1, W=3] -> tokens [1, 3, 2]
        let x = Tensor::from_vec(&tr, &[1, 2, 1, 3], vec![1., 2., 3., 4., 5., 6.], None);
        let tk = tokens(&ctx, &x, &x.shape, false);
        assert_eq!(tk.shape, vec![1, 3, 2]);
        assert_eq!(*tk.data(), vec![1., 4., 2., 5., 3., 6.]);
        let back = tokens(&ctx, &tk, &x.shape, true);
        assert_eq!(back.shape, x.shape);
        assert_eq!(*back.data(), *x.data());
        let p = permute(&ctx, &x, &[1, 2, 0]);
        assert_eq!(p.shape, vec![1, 1, 3, 2]);
        assert_eq!(*p.data(), vec![1., 4., 2., 5., 3., 6.]);
        let q = permute(&ctx, &p, &inverse(&[1, 2, 0]));
        assert_eq!(*q.data(), *x.data());
    }

    #[test]
    fn layer_norm_has_zero_mean_and_unit_biased_variance() {
        let (tr, pool) = ctx_parts();
        let ctx = Ctx {
            tracker: &tr,
            pool: &pool,
            threads: 2,
        };
        let x = Tensor::from_vec(&tr, &[1, 2, 2], vec![1., 3., -2., 2.], None);
        let (o, m, r) = layer_norm_forward(&ctx, &x, None, None, 0.0);
        assert_eq!(*m.data(), vec![2.0, 0.0]);
        assert_eq!(*r.data(), vec![1.0, 0.5]);
        assert_eq!(*o.data(), vec![-1., 1., -1., 1.]);
    }

    #[test]
    fn softmax_of_large_scores_stays_finite() {
        let mut s = vec![1000.0f32, 1000.0, -1000.0];
        softmax_rows(&mut s, 3);
        assert_eq!(s, vec![0.5, 0.5, 0.0]);
    }
}
