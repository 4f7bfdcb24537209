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

/// A relative position bias added to every group's scores before the softmax (Swin's
/// and MaxViT's attention): head `h`'s bias for tokens `(i, j)` is
/// `table[index[i * n + j]][h]`; with `mask` (Swin's shifted windows, `[windows, n, n]`
/// of 0 or -100), group `g` also adds window `g % windows`'s.
pub(crate) struct PositionBias<'a> {
    /// `relative_position_bias_table` `[L, heads]`.
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

/// The scratch of [`forward`] with a position bias: the bias of every head `[heads, n, n]`
/// gathered from the table, held while the attention runs.
pub fn forward_scratch(heads: usize, tokens: usize) -> Scratch {
    let (h, t) = (heads as u128, tokens as u128);
    Scratch::one(&[buffer("position_bias", h * t * t)])
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
/// `out_proj(concat_h softmax(Q_h K_h^T * scale + bias_h) V_h)` (`nn.MultiheadAttention`:
/// `scale` = `1 / sqrt(E / heads)`, no bias). Allocates, in order: the position bias (the
/// scratch of [`forward_scratch`], with `pos`), the packed projections `[B, T, 3E]`, the
/// probabilities `[B, H, T, T]`, the heads' outputs `[B, T, E]` and the output
/// `[B, T, E]`; then frees the position bias.
pub(crate) fn forward(
    ctx: &Ctx,
    x: &Tensor,
    w: &AttnWeights,
    heads: usize,
    scale: f32,
    pos: Option<&PositionBias>,
) -> (Tensor, AttnSaved) {
    let (b, t, e) = (x.shape[0], x.shape[1], x.shape[2]);
    let d = e / heads;
    let e3 = 3 * e;
    let bias = pos.map(|p| {
        let bias = ctx
            .phase(&forward_scratch(heads, t), 0)
            .need("position_bias", heads * t * t);
        {
            let (tb, mut bd) = (p.table.data(), bias.data_mut());
            for h in 0..heads {
                for (k, &at) in p.index.iter().enumerate() {
                    bd[h * t * t + k] = tb[at * heads + h];
                }
            }
        }
        bias
    });
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
        let bias_data = bias.as_ref().map(|t| t.data());
        let bias_data = bias_data.as_deref().map(|v| &v[..]);
        let mask_data = pos.and_then(|p| p.mask).map(|(m, wins)| (m.data(), wins));
        let mask = mask_data.as_ref().map(|(m, wins)| (&m[..], *wins));
        ctx.pool.install(|| {
            pd.par_chunks_mut(per * heads * t * t)
                .zip(hd.par_chunks_mut(per * t * e))
                .zip(qd.par_chunks(per * t * e3))
                .enumerate()
                .for_each(|(c, ((pc, hc), qc))| {
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
}

/// The scratch of [`backward`] for a batch of `batch` sequences of `tokens` tokens of
/// `embed` values in `heads` heads on `threads` threads, allocated after the gradients:
/// the heads' output gradient `[B, T, E]`, the packed projections' gradient `[B, T, 3E]`,
/// one `T x T` probability gradient per chunk of the batch, and with a position bias
/// (`biased`) one bias gradient `[heads, T, T]` per chunk.
pub fn backward_scratch(
    batch: u128,
    tokens: usize,
    embed: usize,
    heads: usize,
    threads: usize,
    biased: bool,
) -> Scratch {
    let (b, t, e, h) = (batch, tokens as u128, embed as u128, heads as u128);
    let c = (threads as u128).min(batch).max(1);
    Scratch::one(&[
        buffer("heads_grad", b * t * e),
        buffer("qkv_grad", b * t * 3 * e),
        buffer("probs_grad", c * t * t),
        buffer("bias_grad", if biased { c * h * t * t } else { 0 }),
    ])
}

/// The gradients of [`forward`] from the output gradient `g`. Allocates, in
/// order: the input gradient (with `need_in`), the position bias table's gradient (with
/// `pos`), the four projection gradients (in parameter order), then the scratch of
/// [`backward_scratch`], freed before returning.
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    ctx: &Ctx,
    x: &Tensor,
    saved: &AttnSaved,
    g: &Tensor,
    w: &AttnWeights,
    heads: usize,
    scale: f32,
    pos: Option<&PositionBias>,
    need_in: bool,
) -> AttnGrads {
    let (b, t, e) = (x.shape[0], x.shape[1], x.shape[2]);
    let d = e / heads;
    let e3 = 3 * e;
    let chunks = ctx.chunks(b);
    let per = b.div_ceil(chunks);
    let gi = need_in.then(|| ctx.zeros(&x.shape));
    let gtable = pos.map(|p| ctx.grad(&p.table.shape));
    let gw_in = ctx.grad(&[e3, e]);
    let gb_in = ctx.grad(&[e3]);
    let gw_out = ctx.grad(&[e, e]);
    let gb_out = ctx.grad(&[e]);
    let s = backward_scratch(b as u128, t, e, heads, ctx.threads, pos.is_some());
    let mut held = ctx.phase(&s, 0);
    let dheads = held.need("heads_grad", b * t * e);
    let dqkv = held.need("qkv_grad", b * t * e3);
    let dp = held.need("probs_grad", chunks * t * t);
    let dbias = held.take("bias_grad", pos.map(|_| chunks * heads * t * t));
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
        ctx.pool.install(|| {
            dqd.par_chunks_mut(per * t * e3)
                .zip(dpd.par_chunks_mut(t * t))
                .zip(
                    qd.par_chunks(per * t * e3)
                        .zip(pd.par_chunks(per * heads * t * t))
                        .zip(dhd.par_chunks(per * t * e)),
                )
                .zip(db_chunks.into_par_iter())
                .for_each(|(((dqc, dps), ((qc, pc), dhc)), mut dbc)| {
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
        table: gtable,
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
