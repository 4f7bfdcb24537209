//! Linear: a matrix product over the last dimension (classifier heads, MLPs, tokens).

use rayon::prelude::*;

use super::Ctx;
use crate::kernels::gemm;
use crate::tensor::{Category, Tensor};

/// `x W^T + b` over the last dimension of `x` into a new output of `shape` (every other
/// dimension is a row).
pub(crate) fn forward(
    ctx: &Ctx,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    shape: Vec<usize>,
) -> Tensor {
    // Linear acts on the last dimension: every other dimension is a row.
    let inf = *x.shape.last().expect("an input dimension");
    let outf = *shape.last().expect("an output dimension");
    let out = Tensor::zeros(ctx.tracker, &shape, None);
    let b = x.numel() / inf;
    {
        let w = w.data();
        let xd = x.data();
        let mut od = out.data_mut();
        let rows = b.div_ceil(ctx.chunks(b));
        let w = &w[..];
        let (ods, xd): (&mut [f32], &[f32]) = (&mut od[..], &xd[..]);
        ctx.pool.install(|| {
            ods.par_chunks_mut(rows * outf)
                .zip(xd.par_chunks(rows * inf))
                .for_each(|(o, xc)| {
                    let m = xc.len() / inf;
                    gemm(
                        m,
                        inf,
                        outf,
                        xc,
                        (inf as isize, 1),
                        w,
                        (1, inf as isize),
                        o,
                        (outf as isize, 1),
                        0.0,
                    );
                });
        });
        if let Some(bias) = bias {
            let bv = bias.data();
            for row in od.chunks_mut(outf) {
                row.iter_mut().zip(bv.iter()).for_each(|(o, b)| *o += b);
            }
        }
    }
    out
}

/// The gradients of [`forward`]: the input's (with `need_in`), the weight's and, with
/// `bias`, the bias's, allocated in that order.
#[allow(clippy::type_complexity)]
pub(crate) fn backward(
    ctx: &Ctx,
    x: &Tensor,
    gout: &Tensor,
    w: &Tensor,
    bias: bool,
    need_in: bool,
) -> (Option<Tensor>, Tensor, Option<Tensor>) {
    // Rows are every dimension but the last (tokens, channels-last maps).
    let (inf, outf) = (
        *x.shape.last().expect("an input dimension"),
        *gout.shape.last().expect("an output dimension"),
    );
    let b = x.numel() / inf;
    let gi = need_in.then(|| Tensor::zeros(ctx.tracker, &x.shape, None));
    let gw = Tensor::zeros(ctx.tracker, &[outf, inf], Some(Category::Grads));
    let gb = bias.then(|| Tensor::zeros(ctx.tracker, &[outf], Some(Category::Grads)));
    {
        let w = w.data();
        let (xd, gd) = (x.data(), gout.data());
        let (w, xd, gd) = (&w[..], &xd[..], &gd[..]);
        let chunks = ctx.chunks(b);
        let threads = ctx.threads;
        let mut gid = gi.as_ref().map(|t| t.data_mut());
        let gis: Option<&mut [f32]> = gid.as_deref_mut().map(|v| &mut v[..]);
        let mut gwd = gw.data_mut();
        let gws: &mut [f32] = &mut gwd[..];
        ctx.pool.install(|| {
            if let Some(gis) = gis {
                let rows = b.div_ceil(chunks);
                gis.par_chunks_mut(rows * inf)
                    .zip(gd.par_chunks(rows * outf))
                    .for_each(|(o, gc)| {
                        let m = gc.len() / outf;
                        gemm(
                            m,
                            outf,
                            inf,
                            gc,
                            (outf as isize, 1),
                            w,
                            (inf as isize, 1),
                            o,
                            (inf as isize, 1),
                            0.0,
                        );
                    });
            }
            // dW [out x in] = dY^T [out x B] * X [B x in], split by output rows.
            let rows = outf.div_ceil(threads);
            gws.par_chunks_mut(rows * inf)
                .enumerate()
                .for_each(|(ci, o)| {
                    let m = o.len() / inf;
                    let gslice = &gd[ci * rows..];
                    gemm(
                        m,
                        b,
                        inf,
                        gslice,
                        (1, outf as isize),
                        xd,
                        (inf as isize, 1),
                        o,
                        (inf as isize, 1),
                        0.0,
                    );
                });
        });
        if let Some(gb) = &gb {
            let mut gbd = gb.data_mut();
            for row in gd.chunks(outf) {
                gbd.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            }
        }
    }
    (gi, gw, gb)
}
