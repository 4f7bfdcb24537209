//! Multi-head self-attention as `nn.MultiheadAttention` runs it (packed in-projection,
//! softmax of scaled scores, out-projection), keeping what PyTorch's CPU math path keeps.

use rayon::prelude::*;

use super::{buffer, column_sums, Ctx, Scratch};
use crate::kernels::gemm;
use crate::tensor::Tensor;

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

/// How a head's scores are made from its queries and keys.
#[derive(Clone, Copy)]
pub(crate) enum Scores<'a> {
    /// `q k^T * scale` (`nn.MultiheadAttention`, Swin V1, MaxViT).
    Scaled(f32),
    /// Swin V2's cosine attention: `normalize(q) normalize(k)^T` times
    /// `exp(min(logit_scale_h, ln 100))` (`logit_scale` `[heads, 1, 1]`), the k part of
    /// the qkv bias left out.
    Cosine(&'a Tensor),
}

impl Scores<'_> {
    /// The scale of `q k^T` (none for cosine scores).
    fn scale(&self) -> Option<f32> {
        match self {
            Scores::Scaled(s) => Some(*s),
            Scores::Cosine(_) => None,
        }
    }

    /// Each head's scale of the cosines, and whether its logit scale is under the clamp
    /// (and so gets a gradient).
    fn cosine_scales(&self) -> Option<Vec<(f32, bool)>> {
        let Scores::Cosine(ls) = self else {
            return None;
        };
        let max = 100f64.ln() as f32;
        Some(
            ls.data()
                .iter()
                .map(|&v| (v.min(max).exp(), v <= max))
                .collect(),
        )
    }
}

/// `F.normalize`'s floor of a norm.
const NORM_EPS: f32 = 1e-12;

/// Copies the `t` rows of `d` values `src` (`stride` apart) into `dst`, each divided by
/// its norm (at least [`NORM_EPS`]).
fn normalize_rows(src: &[f32], stride: usize, t: usize, d: usize, dst: &mut [f32]) {
    for (i, out) in dst.chunks_mut(d).take(t).enumerate() {
        let row = &src[i * stride..i * stride + d];
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(NORM_EPS);
        out.iter_mut().zip(row).for_each(|(o, v)| *o = v / norm);
    }
}

/// The gradient through [`normalize_rows`], in place: `g` (rows `stride` apart) is the
/// gradient of the normalised rows `n`, made that of the raw rows `src`.
fn normalize_backward(src: &[f32], n: &[f32], stride: usize, t: usize, d: usize, g: &mut [f32]) {
    for i in 0..t {
        let row = &src[i * stride..i * stride + d];
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        let gr = &mut g[i * stride..i * stride + d];
        if norm > NORM_EPS {
            let nr = &n[i * d..(i + 1) * d];
            let dot: f32 = nr.iter().zip(gr.iter()).map(|(a, b)| a * b).sum();
            gr.iter_mut()
                .zip(nr)
                .for_each(|(gv, nv)| *gv = (*gv - nv * dot) / norm);
        } else {
            gr.iter_mut().for_each(|gv| *gv /= NORM_EPS);
        }
    }
}

/// A relative position bias added to every group's scores before the softmax (Swin's
/// and MaxViT's attention): head `h`'s bias for tokens `(i, j)` is
/// `table[index[i * n + j]][h]`; with `mask` (Swin's shifted windows, `[windows, n, n]`
/// of 0 or -100), group `g` also adds window `g % windows`'s.
pub(crate) struct PositionBias<'a> {
    /// `relative_position_bias_table` `[L, heads]` (Swin V2: the values its MLP made).
    pub table: &'a Tensor,
    /// `relative_position_index` `[n * n]`.
    pub index: &'a [usize],
    pub mask: Option<(&'a Tensor, usize)>,
}

/// The relative position index of a `wh x ww` window (torchvision's
/// `relative_position_index`): `(dy + wh - 1) * (2 ww - 1) + dx + ww - 1` for token pairs
/// `(i, j)` row-major in the window, `(dy, dx)` = position of `i` minus that of `j`.
pub(crate) fn relative_position_index(wh: usize, ww: usize) -> Vec<usize> {
    let n = wh * ww;
    let mut index = Vec::with_capacity(n * n);
    for i in 0..n {
        for j in 0..n {
            let dy = (i / ww) + wh - 1 - (j / ww);
            let dx = (i % ww) + ww - 1 - (j % ww);
            index.push(dy * (2 * ww - 1) + dx);
        }
    }
    index
}

/// The scratch of [`forward`] over `seqs` sequences of `tokens` tokens of `embed` values
/// in `heads` heads on `threads` threads, held while the attention runs: with a position
/// bias (`biased`) the bias of every head `[heads, n, n]` gathered from the table; with
/// cosine scores the normalised queries and keys of one head per chunk of the batch.
pub fn forward_scratch(
    seqs: u128,
    tokens: usize,
    embed: usize,
    heads: usize,
    threads: usize,
    biased: bool,
    cosine: bool,
) -> Scratch {
    let (h, t, d) = (
        heads as u128,
        tokens as u128,
        (embed / heads.max(1)) as u128,
    );
    let c = (threads as u128).min(seqs).max(1);
    Scratch::one(&[
        buffer("position_bias", if biased { h * t * t } else { 0 }),
        buffer("cosine", if cosine { c * 2 * t * d } else { 0 }),
    ])
}

/// What the backward of a position bias needs: the index, the table's rows, and whether
/// the table is a parameter (its gradient a parameter's) or an intermediate.
pub(crate) struct BiasGrad<'a> {
    pub index: &'a [usize],
    pub rows: usize,
    pub learned: bool,
}

/// `nn.MultiheadAttention`'s scale of the scores: `1 / sqrt(embed / heads)`.
pub(crate) fn mha_scale(embed: usize, heads: usize) -> f32 {
    1.0 / ((embed / heads) as f32).sqrt()
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
/// `out_proj(concat_h softmax(scores_h + bias_h) V_h)` (`nn.MultiheadAttention`: scores
/// scaled by `1 / sqrt(E / heads)`, no bias). Allocates, in order: the scratch of
/// [`forward_scratch`], the packed projections `[B, T, 3E]`, the probabilities
/// `[B, H, T, T]`, the heads' outputs `[B, T, E]` and the output `[B, T, E]`; then frees
/// the scratch.
pub(crate) fn forward(
    ctx: &Ctx,
    x: &Tensor,
    w: &AttnWeights,
    heads: usize,
    scores: Scores,
    pos: Option<&PositionBias>,
) -> (Tensor, AttnSaved) {
    let (b, t, e) = (x.shape[0], x.shape[1], x.shape[2]);
    let d = e / heads;
    let e3 = 3 * e;
    let chunks = ctx.chunks(b);
    let cos = scores.cosine_scales();
    let scaled = scores.scale();
    let s = forward_scratch(
        b as u128,
        t,
        e,
        heads,
        ctx.threads,
        pos.is_some(),
        cos.is_some(),
    );
    let mut held = ctx.phase(&s, 0);
    let bias = held.take("position_bias", pos.map(|_| heads * t * t));
    let cosine = held.take("cosine", cos.as_ref().map(|_| chunks * 2 * t * d));
    if let (Some(p), Some(bias)) = (pos, &bias) {
        {
            let (tb, mut bd) = (p.table.data(), bias.data_mut());
            for h in 0..heads {
                for (k, &at) in p.index.iter().enumerate() {
                    bd[h * t * t + k] = tb[at * heads + h];
                }
            }
        }
    }
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
            // Cosine attention zeroes the k part of a copy of the bias.
            if cos.is_some() {
                row[e..2 * e]
                    .iter_mut()
                    .zip(&bin[e..2 * e])
                    .for_each(|(v, b)| *v -= b);
            }
        }
    }
    {
        let qd = qkv.data();
        let (mut pd, mut hd) = (probs.data_mut(), hout.data_mut());
        let per = b.div_ceil(ctx.chunks(b));
        let (qd, pd, hd): (&[f32], &mut [f32], &mut [f32]) = (&qd[..], &mut pd[..], &mut hd[..]);
        let bias_data = bias.as_ref().map(|t| t.data());
        let bias_data = bias_data.as_deref().map(|v| &v[..]);
        let mask_data = pos.and_then(|p| p.mask).map(|(m, wins)| (m.data(), wins));
        let mask = mask_data.as_ref().map(|(m, wins)| (&m[..], *wins));
        let mut csd = cosine.as_ref().map(|t| t.data_mut());
        let cs_chunks: Vec<Option<&mut [f32]>> = match csd.as_deref_mut() {
            Some(v) => v.chunks_mut(2 * t * d).map(Some).collect(),
            None => (0..chunks).map(|_| None).collect(),
        };
        let cos = cos.as_deref();
        ctx.pool.install(|| {
            pd.par_chunks_mut(per * heads * t * t)
                .zip(hd.par_chunks_mut(per * t * e))
                .zip(qd.par_chunks(per * t * e3))
                .zip(cs_chunks.into_par_iter())
                .enumerate()
                .for_each(|(c, (((pc, hc), qc), mut cs))| {
                    for (s, ((ps, hs), qs)) in pc
                        .chunks_mut(heads * t * t)
                        .zip(hc.chunks_mut(t * e))
                        .zip(qc.chunks(t * e3))
                        .enumerate()
                    {
                        let group = c * per + s;
                        for h in 0..heads {
                            let p = &mut ps[h * t * t..(h + 1) * t * t];
                            let (q, k, v) = (&qs[h * d..], &qs[e + h * d..], &qs[2 * e + h * d..]);
                            // S = Q K^T scaled (or the cosines, times the head's
                            // scale), plus the bias and mask, then softmax by rows.
                            match (cs.as_deref_mut(), cos, scaled) {
                                (Some(cs), Some(cos), _) => {
                                    let (qn, kn) = cs.split_at_mut(t * d);
                                    normalize_rows(q, e3, t, d, qn);
                                    normalize_rows(k, e3, t, d, kn);
                                    gemm(
                                        t,
                                        d,
                                        t,
                                        qn,
                                        (d as isize, 1),
                                        kn,
                                        (1, d as isize),
                                        p,
                                        (t as isize, 1),
                                        0.0,
                                    );
                                    p.iter_mut().for_each(|v| *v *= cos[h].0);
                                }
                                (_, _, scale) => {
                                    let scale = scale.unwrap_or_else(|| unreachable!("scaled"));
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
                                }
                            }
                            if let Some(bias) = bias_data {
                                let bh = &bias[h * t * t..(h + 1) * t * t];
                                p.iter_mut().zip(bh).for_each(|(v, b)| *v += b);
                            }
                            if let Some((m, wins)) = mask {
                                let at = (group % wins) * t * t;
                                p.iter_mut()
                                    .zip(&m[at..at + t * t])
                                    .for_each(|(v, b)| *v += b);
                            }
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
    drop(bias);
    drop(cosine);
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
    /// The position bias table's gradient `[L, heads]` (with a position bias).
    pub table: Option<Tensor>,
    /// The logit scale's gradient `[heads, 1, 1]` (cosine scores).
    pub logit_scale: Option<Tensor>,
}

/// The scratch of [`backward`] for a batch of `batch` sequences of `tokens` tokens of
/// `embed` values in `heads` heads on `threads` threads, allocated after the gradients:
/// the heads' output gradient `[B, T, E]`, the packed projections' gradient `[B, T, 3E]`,
/// one `T x T` probability gradient per chunk of the batch, with a position bias
/// (`biased`) one bias gradient `[heads, T, T]` per chunk, and with cosine scores one
/// head's normalised queries and keys and the logit scales' gradient per chunk.
pub fn backward_scratch(
    batch: u128,
    tokens: usize,
    embed: usize,
    heads: usize,
    threads: usize,
    biased: bool,
    cosine: bool,
) -> Scratch {
    let (b, t, e, h) = (batch, tokens as u128, embed as u128, heads as u128);
    let d = (embed / heads.max(1)) as u128;
    let c = (threads as u128).min(batch).max(1);
    Scratch::one(&[
        buffer("heads_grad", b * t * e),
        buffer("qkv_grad", b * t * 3 * e),
        buffer("probs_grad", c * t * t),
        buffer("bias_grad", if biased { c * h * t * t } else { 0 }),
        buffer("cosine", if cosine { c * 2 * t * d } else { 0 }),
        buffer("scale_grad", if cosine { c * h } else { 0 }),
    ])
}

/// The gradients of [`forward`] from the output gradient `g`. Allocates, in
/// order: the input gradient (with `need_in`), the position bias table's gradient (with
/// `pos`), the logit scale's (cosine scores), the four projection gradients (in
/// parameter order), then the scratch of [`backward_scratch`], freed before returning.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    ctx: &Ctx,
    x: &Tensor,
    saved: &AttnSaved,
    g: &Tensor,
    w: &AttnWeights,
    heads: usize,
    scores: Scores,
    pos: Option<&BiasGrad>,
    need_in: bool,
) -> AttnGrads {
    let (b, t, e) = (x.shape[0], x.shape[1], x.shape[2]);
    let d = e / heads;
    let e3 = 3 * e;
    let chunks = ctx.chunks(b);
    let per = b.div_ceil(chunks);
    let gi = need_in.then(|| ctx.zeros(&x.shape));
    let gtable = pos.map(|p| {
        if p.learned {
            ctx.grad(&[p.rows, heads])
        } else {
            ctx.zeros(&[p.rows, heads])
        }
    });
    let cos = scores.cosine_scales();
    let scaled = scores.scale();
    let gscale = match scores {
        Scores::Cosine(ls) => Some(ctx.grad(&ls.shape)),
        Scores::Scaled(_) => None,
    };
    let gw_in = ctx.grad(&[e3, e]);
    let gb_in = ctx.grad(&[e3]);
    let gw_out = ctx.grad(&[e, e]);
    let gb_out = ctx.grad(&[e]);
    let s = backward_scratch(
        b as u128,
        t,
        e,
        heads,
        ctx.threads,
        pos.is_some(),
        cos.is_some(),
    );
    let mut held = ctx.phase(&s, 0);
    let dheads = held.need("heads_grad", b * t * e);
    let dqkv = held.need("qkv_grad", b * t * e3);
    let dp = held.need("probs_grad", chunks * t * t);
    let dbias = held.take("bias_grad", pos.map(|_| chunks * heads * t * t));
    let cosine = held.take("cosine", cos.as_ref().map(|_| chunks * 2 * t * d));
    let dscale = held.take("scale_grad", cos.as_ref().map(|_| chunks * heads));
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
        let mut dbd = dbias.as_ref().map(|t| t.data_mut());
        let db_chunks: Vec<Option<&mut [f32]>> = match dbd.as_deref_mut() {
            Some(v) => v.chunks_mut(heads * t * t).map(Some).collect(),
            None => (0..chunks).map(|_| None).collect(),
        };
        let (mut csd, mut dsd) = (
            cosine.as_ref().map(|t| t.data_mut()),
            dscale.as_ref().map(|t| t.data_mut()),
        );
        let cos_chunks: Vec<Option<(&mut [f32], &mut [f32])>> =
            match (csd.as_deref_mut(), dsd.as_deref_mut()) {
                (Some(c), Some(s)) => c
                    .chunks_mut(2 * t * d)
                    .zip(s.chunks_mut(heads))
                    .map(Some)
                    .collect(),
                _ => (0..chunks).map(|_| None).collect(),
            };
        let cos = cos.as_deref();
        ctx.pool.install(|| {
            dqd.par_chunks_mut(per * t * e3)
                .zip(dpd.par_chunks_mut(t * t))
                .zip(
                    qd.par_chunks(per * t * e3)
                        .zip(pd.par_chunks(per * heads * t * t))
                        .zip(dhd.par_chunks(per * t * e)),
                )
                .zip(db_chunks.into_par_iter().zip(cos_chunks.into_par_iter()))
                .for_each(|(((dqc, dps), ((qc, pc), dhc)), (mut dbc, mut csc))| {
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
                                    *dv = pv * (*dv - dot);
                                }
                            }
                            // The bias is added after the scale: its gradient is the
                            // scores' before it.
                            if let Some(db) = dbc.as_deref_mut() {
                                let dbh = &mut db[h * t * t..(h + 1) * t * t];
                                dbh.iter_mut().zip(dps.iter()).for_each(|(a, b)| *a += b);
                            }
                            if let (Some((cs, ds)), Some(cos)) = (csc.as_mut(), cos) {
                                // Through the cosines: dQn = s dZ Kn, dKn = s dZ^T Qn,
                                // the logit scale's gradient sum(Qn . dQn) (its clamp
                                // passes it below ln 100), then through the norms.
                                let (qn, kn) = cs.split_at_mut(t * d);
                                normalize_rows(q, e3, t, d, qn);
                                normalize_rows(k, e3, t, d, kn);
                                let (sh, open) = cos[h];
                                dps.iter_mut().for_each(|v| *v *= sh);
                                gemm(
                                    t,
                                    t,
                                    d,
                                    dps,
                                    (t as isize, 1),
                                    kn,
                                    (d as isize, 1),
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
                                    qn,
                                    (d as isize, 1),
                                    &mut dqs[e + h * d..],
                                    (e3 as isize, 1),
                                    0.0,
                                );
                                if open {
                                    let mut sum = 0.0f32;
                                    for i in 0..t {
                                        let dq = &dqs[i * e3 + h * d..i * e3 + h * d + d];
                                        let nq = &qn[i * d..(i + 1) * d];
                                        sum += nq.iter().zip(dq).map(|(a, b)| a * b).sum::<f32>();
                                    }
                                    ds[h] += sum;
                                }
                                normalize_backward(q, qn, e3, t, d, &mut dqs[h * d..]);
                                normalize_backward(k, kn, e3, t, d, &mut dqs[e + h * d..]);
                                continue;
                            }
                            let scale = scaled.unwrap_or_else(|| unreachable!("scaled"));
                            dps.iter_mut().for_each(|v| *v *= scale);
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
    if let (Some(p), Some(gt), Some(db)) = (pos, &gtable, &dbias) {
        // The chunks' bias gradients summed, then added into the table by the index.
        let (dbd, mut gtd) = (db.data(), gt.data_mut());
        for h in 0..heads {
            for (k, &at) in p.index.iter().enumerate() {
                let sum: f32 = dbd.chunks(heads * t * t).map(|c| c[h * t * t + k]).sum();
                gtd[at * heads + h] += sum;
            }
        }
    }
    drop(dbias);
    if let (Some(gs), Some(ds)) = (&gscale, &dscale) {
        let (dsd, mut gsd) = (ds.data(), gs.data_mut());
        for (h, g) in gsd.iter_mut().enumerate() {
            *g = dsd.chunks(heads).map(|c| c[h]).sum();
        }
    }
    drop(cosine);
    drop(dscale);
    {
        let (dqd, xd) = (dqkv.data(), x.data());
        ctx.weight_grad(b * t, e3, e, &dqd, &xd, &mut gw_in.data_mut());
        column_sums(&dqd, e3, &mut gb_in.data_mut());
        if cos.is_some() {
            // The k part of the bias was zeroed in a copy: no gradient reaches it.
            gb_in.data_mut()[e..2 * e].fill(0.0);
        }
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
        table: gtable,
        logit_scale: gscale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_of_large_scores_stays_finite() {
        let mut s = vec![1000.0f32, 1000.0, -1000.0];
        softmax_rows(&mut s, 3);
        assert_eq!(s, vec![0.5, 0.5, 0.0]);
    }
}
