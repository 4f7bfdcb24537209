//! Conv2d: the engine's convolution kernels (forward and backward), which of them runs
//! a convolution on an instruction-set tier, and the scratch each declares. The
//! planner's native profile plans a convolution from [`forward_scratch`] and
//! [`backward_scratch`], the same declarations the kernels allocate from.

use rayon::prelude::*;

use super::{buffer, chunks, Ctx, Scratch};
use crate::kernels::{gemm, Tier};
use crate::tensor::{Category, Tensor};

pub mod depthwise;
pub mod direct;
pub mod im2col;

/// Geometry of one 2-D convolution.
#[derive(Debug, Clone, Copy)]
pub struct ConvGeom {
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub dh: usize,
    pub dw: usize,
    pub groups: usize,
    pub ho: usize,
    pub wo: usize,
}

impl ConvGeom {
    /// Rows of the im2col matrix of one group.
    pub fn k(&self) -> usize {
        self.cin / self.groups * self.kh * self.kw
    }
    pub fn hw_out(&self) -> usize {
        self.ho * self.wo
    }
    /// A 1x1 convolution with stride 1 and no padding reads its input as the matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
    pub fn in_plane(&self) -> usize {
        self.h * self.w
    }

    /// The geometry of `c` from its input and output shapes `[C, H, W]`.
    pub fn new(c: &vramlab_graph::Conv2d, input: &[usize], output: &[usize]) -> ConvGeom {
        ConvGeom {
            cin: c.in_channels,
            h: input[1],
            w: input[2],
            cout: c.out_channels,
            kh: c.kernel_size.0,
            kw: c.kernel_size.1,
            sh: c.stride.0,
            sw: c.stride.1,
            ph: c.padding.0,
            pw: c.padding.1,
            dh: c.dilation.0,
            dw: c.dilation.1,
            groups: c.groups,
            ho: output[1],
            wo: output[2],
        }
    }

    /// Values of the weight (`[cout, cin / groups, kh, kw]`).
    pub fn weight_len(&self) -> usize {
        self.cout * self.k()
    }
}

/// Adds the chunks' partial sums `parts` (per chunk: `wsize` weight-gradient values,
/// then `cout` bias-gradient values) into the weight gradient `gw` and the bias's `gb`.
fn sum_partials(parts: &[f32], wsize: usize, cout: usize, gw: &Tensor, gb: Option<&Tensor>) {
    let mut gwd = gw.data_mut();
    for part in parts.chunks(wsize + cout) {
        gwd.iter_mut()
            .zip(&part[..wsize])
            .for_each(|(a, b)| *a += b);
    }
    if let Some(gb) = gb {
        let mut gbd = gb.data_mut();
        for part in parts.chunks(wsize + cout) {
            gbd.iter_mut()
                .zip(&part[wsize..])
                .for_each(|(a, b)| *a += b);
        }
    }
}

/// How the engine computes a convolution (or its weight gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The direct convolution over zero-padded rows ([`direct`]).
    Direct,
    /// Channels-last, eight channels at a time ([`depthwise`]).
    Depthwise,
    /// The column matrices of this many samples side by side, one matrix product.
    Batched(usize),
    /// One column matrix per sample and group (none for a 1x1 stride-1 convolution).
    Columns,
}

/// Whether `tier` runs convolution `g` directly: a tier with a direct tile and a shape
/// [`direct::direct_shape`] accepts.
pub fn direct(g: &ConvGeom, tier: Tier) -> bool {
    direct::tile(tier).is_some() && direct::direct_shape(g)
}

/// Samples per matrix product of a batch of `batch` on `threads` threads.
fn samples(g: &ConvGeom, batch: usize, threads: usize) -> usize {
    im2col::conv_batch(g, batch.div_ceil(chunks(threads, batch)))
}

/// The forward kernel of convolution `g` for a batch of `batch` on `threads` threads.
pub fn forward_kernel(g: &ConvGeom, tier: Tier, batch: usize, threads: usize) -> Kernel {
    if direct(g, tier) {
        Kernel::Direct
    } else if depthwise::is_depthwise(g) {
        Kernel::Depthwise
    } else {
        match samples(g, batch, threads) {
            1 => Kernel::Columns,
            sb => Kernel::Batched(sb),
        }
    }
}

/// The kernel of convolution `g`'s weight gradient ([`Kernel::Direct`] only on a tier
/// with a direct weight gradient); its input gradient is a direct convolution wherever
/// [`direct`] holds.
pub fn backward_kernel(g: &ConvGeom, tier: Tier, batch: usize, threads: usize) -> Kernel {
    if depthwise::is_depthwise(g) {
        Kernel::Depthwise
    } else if direct(g, tier) && direct::direct_wgrad(tier) {
        Kernel::Direct
    } else {
        match samples(g, batch, threads) {
            1 => Kernel::Columns,
            sb => Kernel::Batched(sb),
        }
    }
}

/// The scratch of convolution `g`'s forward pass for a batch of `batch` on `threads`
/// threads (one set per chunk of the batch), allocated after the output.
pub fn forward_scratch(g: &ConvGeom, tier: Tier, batch: usize, threads: usize) -> Scratch {
    let c = chunks(threads, batch) as u128;
    let (k, hw, cout) = (g.k() as u128, g.hw_out() as u128, g.cout as u128);
    match forward_kernel(g, tier, batch, threads) {
        Kernel::Direct => {
            let (hp, wp) = (g.h + 2 * g.ph, direct::direct_row(g.wo, g.kw));
            Scratch::one(&[
                buffer(
                    "direct_weights",
                    direct::direct_weight_len(tier, g.cout, g.cin, g.kh, g.kw) as u128,
                ),
                buffer("pad", c * (g.cin * hp * wp) as u128),
            ])
        }
        Kernel::Depthwise => Scratch::one(&[buffer(
            "depthwise",
            c * depthwise::depthwise_scratch(g, false) as u128,
        )]),
        // Where a sample has more than one position, the product before it is copied
        // to the samples' planes.
        Kernel::Batched(sb) => {
            let ld = sb as u128 * hw;
            Scratch::one(&[
                buffer("im2col", c * k * ld),
                buffer("product", if hw > 1 { c * cout * ld } else { 0 }),
            ])
        }
        Kernel::Columns => Scratch::one(&[buffer(
            "im2col",
            if g.is_pointwise() { 0 } else { c * k * hw },
        )]),
    }
}

/// The scratch of convolution `g`'s backward pass, allocated after its gradients: the
/// weight gradient's phase (per-chunk partial sums and the kernel's buffers), then,
/// where the input gradient is a direct convolution, its flipped weights and padded
/// output gradient.
pub fn backward_scratch(
    g: &ConvGeom,
    tier: Tier,
    batch: usize,
    threads: usize,
    need_in: bool,
) -> Scratch {
    let c = chunks(threads, batch) as u128;
    let (k, hw, cout) = (g.k() as u128, g.hw_out() as u128, g.cout as u128);
    let partials = buffer("partials", c * (g.weight_len() as u128 + cout));
    let mut s = Scratch::default();
    match backward_kernel(g, tier, batch, threads) {
        Kernel::Depthwise => s.push(&[
            partials,
            buffer(
                "depthwise",
                c * depthwise::depthwise_scratch(g, true) as u128,
            ),
        ]),
        Kernel::Direct => {
            let (hp, wp) = (g.h + 2 * g.ph, direct::direct_row(g.wo, g.kw));
            s.push(&[buffer("pad", c * (g.cin * hp * wp) as u128), partials]);
        }
        // The output gradients of a group of samples gathered where a sample has more
        // than one position.
        Kernel::Batched(sb) => {
            let ld = sb as u128 * hw;
            s.push(&[
                buffer("im2col", c * k * ld),
                partials,
                buffer("gathered", if hw > 1 { c * cout * ld } else { 0 }),
            ]);
        }
        Kernel::Columns => s.push(&[
            buffer("im2col", if g.is_pointwise() { 0 } else { c * k * hw }),
            partials,
        ]),
    }
    if need_in && direct(g, tier) {
        let (hq, wq) = (g.ho + 2 * (g.kh - 1 - g.ph), direct::direct_row(g.w, g.kw));
        s.push(&[
            buffer(
                "direct_weights",
                direct::direct_weight_len(tier, g.cin, g.cout, g.kh, g.kw) as u128,
            ),
            buffer("pad", c * (g.cout * hq * wq) as u128),
        ]);
    }
    s
}

/// A convolution's gradient tensors and its batch's chunking, from [`grads`].
struct ConvGrads {
    gi: Option<Tensor>,
    gw: Tensor,
    gb: Option<Tensor>,
    wsize: usize,
    chunks: usize,
    per_chunk: usize,
}

/// Convolution `g` of `x` into a new output of `shape`, by the kernel
/// [`forward_kernel`] picks, with the scratch [`forward_scratch`] declares.
pub(crate) fn forward(
    ctx: &Ctx,
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    shape: Vec<usize>,
) -> Tensor {
    let b = x.shape[0];
    let s = forward_scratch(g, ctx.tier, b, ctx.threads);
    match forward_kernel(g, ctx.tier, b, ctx.threads) {
        Kernel::Direct => forward_direct(ctx, g, x, w, bias, shape, &s),
        Kernel::Depthwise => forward_depthwise(ctx, g, x, w, bias, shape, &s),
        Kernel::Batched(sb) => forward_batched(ctx, g, x, w, bias, shape, sb, &s),
        Kernel::Columns => forward_columns(ctx, g, x, w, bias, shape, &s),
    }
}

/// One column matrix per sample and group (none for a 1x1 stride-1 convolution, whose
/// input is the matrix), one matrix product each.
fn forward_columns(
    ctx: &Ctx,
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    shape: Vec<usize>,
    s: &Scratch,
) -> Tensor {
    let b = x.shape[0];
    let g = *g;
    let out = Tensor::zeros(ctx.tracker, &shape, None);
    let chunks = ctx.chunks(b);
    let per_chunk = b.div_ceil(chunks);
    let k = g.k();
    let hw = g.hw_out();
    let col = ctx
        .phase(s, 0)
        .take("im2col", (!g.is_pointwise()).then_some(chunks * k * hw));
    {
        let w = w.data();
        let bvec = bias.map(|b| b.data());
        let xd = x.data();
        let mut od = out.data_mut();
        let mut cold = col.as_ref().map(|c| c.data_mut());
        let in_per = g.cin * g.in_plane();
        let out_per = g.cout * hw;
        let cog = g.cout / g.groups;
        let col_chunks: Vec<Option<&mut [f32]>> = match cold.as_deref_mut() {
            Some(c) => c.chunks_mut(k * hw).map(Some).collect(),
            None => (0..chunks).map(|_| None).collect(),
        };
        let w = &w[..];
        let bvec = bvec.as_deref();
        let (od, xd): (&mut [f32], &[f32]) = (&mut od[..], &xd[..]);
        ctx.pool.install(|| {
            od.par_chunks_mut(per_chunk * out_per)
                .zip(xd.par_chunks(per_chunk * in_per))
                .zip(col_chunks.into_par_iter())
                .for_each(|((o, xc), mut colbuf)| {
                    for (os, xs) in o.chunks_mut(out_per).zip(xc.chunks(in_per)) {
                        for grp in 0..g.groups {
                            let wg = &w[grp * cog * k..(grp + 1) * cog * k];
                            let og = &mut os[grp * cog * hw..(grp + 1) * cog * hw];
                            let col = im2col::columns(xs, &g, grp, colbuf.as_deref_mut());
                            gemm(
                                cog,
                                k,
                                hw,
                                wg,
                                (k as isize, 1),
                                col,
                                (hw as isize, 1),
                                og,
                                (hw as isize, 1),
                                0.0,
                            );
                        }
                        if let Some(bv) = bvec {
                            for (co, plane) in os.chunks_mut(hw).enumerate() {
                                plane.iter_mut().for_each(|v| *v += bv[co]);
                            }
                        }
                    }
                });
        });
    }
    drop(col);
    out
}

/// A convolution whose samples have few output positions: the column matrices of
/// up to `sb` samples side by side, one matrix product per group of samples (the
/// weights packed once per group, not once per sample), the product then copied to
/// the samples' planes (straight into them where a sample has one position).
#[allow(clippy::too_many_arguments)]
fn forward_batched(
    ctx: &Ctx,
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    shape: Vec<usize>,
    sb: usize,
    s: &Scratch,
) -> Tensor {
    let b = x.shape[0];
    let out = Tensor::zeros(ctx.tracker, &shape, None);
    let chunks = ctx.chunks(b);
    let per_chunk = b.div_ceil(chunks);
    let (k, hw, cout) = (g.k(), g.hw_out(), g.cout);
    let ld = sb * hw;
    let mut held = ctx.phase(s, 0);
    let col = held.need("im2col", chunks * k * ld);
    let osc = held.take("product", (hw > 1).then_some(chunks * cout * ld));
    {
        let w = w.data();
        let bvec = bias.map(|b| b.data().clone());
        let (xd, mut od, mut cold) = (x.data(), out.data_mut(), col.data_mut());
        let mut oscd = osc.as_ref().map(|t| t.data_mut());
        let osc_chunks: Vec<Option<&mut [f32]>> = match oscd.as_deref_mut() {
            Some(o) => o.chunks_mut(cout * ld).map(Some).collect(),
            None => (0..chunks).map(|_| None).collect(),
        };
        let (w, xd, od, cold): (&[f32], &[f32], &mut [f32], &mut [f32]) =
            (&w[..], &xd[..], &mut od[..], &mut cold[..]);
        let (in_per, out_per) = (g.cin * g.in_plane(), cout * hw);
        let (g, bvec) = (*g, bvec.as_deref());
        ctx.pool.install(|| {
            od.par_chunks_mut(per_chunk * out_per)
                .zip(xd.par_chunks(per_chunk * in_per))
                .zip(cold.par_chunks_mut(k * ld))
                .zip(osc_chunks.into_par_iter())
                .for_each(|(((o, xc), cb), mut oc)| {
                    for (os, xs) in o.chunks_mut(sb * out_per).zip(xc.chunks(sb * in_per)) {
                        let n = xs.len() / in_per;
                        let ldn = n * hw;
                        for (s, x1) in xs.chunks(in_per).enumerate() {
                            im2col::im2col_ld(x1, &g, 0, &mut cb[s * hw..], ldn);
                        }
                        match oc.as_deref_mut() {
                            // One position per sample: C[co][s] is out[s][co].
                            None => gemm(
                                cout,
                                k,
                                n,
                                w,
                                (k as isize, 1),
                                cb,
                                (ldn as isize, 1),
                                os,
                                (1, cout as isize),
                                0.0,
                            ),
                            Some(oc) => {
                                gemm(
                                    cout,
                                    k,
                                    ldn,
                                    w,
                                    (k as isize, 1),
                                    cb,
                                    (ldn as isize, 1),
                                    oc,
                                    (ldn as isize, 1),
                                    0.0,
                                );
                                for (s, o1) in os.chunks_mut(out_per).enumerate() {
                                    for (co, plane) in o1.chunks_mut(hw).enumerate() {
                                        let at = co * ldn + s * hw;
                                        plane.copy_from_slice(&oc[at..at + hw]);
                                    }
                                }
                            }
                        }
                        if let Some(bv) = bvec {
                            for o1 in os.chunks_mut(out_per) {
                                for (co, plane) in o1.chunks_mut(hw).enumerate() {
                                    plane.iter_mut().for_each(|v| *v += bv[co]);
                                }
                            }
                        }
                    }
                });
        });
    }
    drop(col);
    drop(osc);
    out
}

/// The direct convolution: blocked weights, then one zero-padded input per chunk.
fn forward_direct(
    ctx: &Ctx,
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    shape: Vec<usize>,
    s: &Scratch,
) -> Tensor {
    let b = x.shape[0];
    let out = Tensor::zeros(ctx.tracker, &shape, None);
    let chunks = ctx.chunks(b);
    let per_chunk = b.div_ceil(chunks);
    let (hp, wp) = (g.h + 2 * g.ph, direct::direct_row(g.wo, g.kw));
    let mut held = ctx.phase(s, 0);
    let wb = held.need(
        "direct_weights",
        direct::direct_weight_len(ctx.tier, g.cout, g.cin, g.kh, g.kw),
    );
    let xpad = held.need("pad", chunks * g.cin * hp * wp);
    {
        direct::direct_weights(
            ctx.tier,
            &w.data(),
            g.cout,
            g.cin,
            g.kh,
            g.kw,
            false,
            &mut wb.data_mut(),
        );
        let bvec = bias.map(|b| b.data().clone());
        let (wbd, xd) = (wb.data(), x.data());
        let (mut od, mut xpd) = (out.data_mut(), xpad.data_mut());
        let (wbd, xd, od, xpd): (&[f32], &[f32], &mut [f32], &mut [f32]) =
            (&wbd[..], &xd[..], &mut od[..], &mut xpd[..]);
        let (in_per, out_per, pad_per, hw) = (
            g.cin * g.in_plane(),
            g.cout * g.hw_out(),
            g.cin * hp * wp,
            g.hw_out(),
        );
        let (g, tier) = (*g, ctx.tier);
        ctx.pool.install(|| {
            od.par_chunks_mut(per_chunk * out_per)
                .zip(xd.par_chunks(per_chunk * in_per))
                .zip(xpd.par_chunks_mut(pad_per))
                .for_each(|((o, xc), xp)| {
                    for (os, xs) in o.chunks_mut(out_per).zip(xc.chunks(in_per)) {
                        direct::pad_planes(xs, g.cin, g.h, g.w, g.ph, g.pw, hp, wp, xp);
                        direct::conv_direct(
                            tier, xp, g.cin, hp, wp, wbd, g.cout, g.kh, g.kw, os, g.ho, g.wo,
                        );
                        if let Some(bv) = &bvec {
                            for (co, plane) in os.chunks_mut(hw).enumerate() {
                                plane.iter_mut().for_each(|v| *v += bv[co]);
                            }
                        }
                    }
                });
        });
    }
    drop(wb);
    drop(xpad);
    out
}

/// A depthwise convolution: each chunk of samples channels-last ([`depthwise`]).
fn forward_depthwise(
    ctx: &Ctx,
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    shape: Vec<usize>,
    s: &Scratch,
) -> Tensor {
    let b = x.shape[0];
    let out = Tensor::zeros(ctx.tracker, &shape, None);
    let chunks = ctx.chunks(b);
    let per_chunk = b.div_ceil(chunks);
    let per_scr = depthwise::depthwise_scratch(g, false);
    let scr = ctx.phase(s, 0).need("depthwise", chunks * per_scr);
    {
        let w = w.data();
        let bvec = bias.map(|b| b.data().clone());
        let (xd, mut od, mut sd) = (x.data(), out.data_mut(), scr.data_mut());
        let (w, xd, od, sd): (&[f32], &[f32], &mut [f32], &mut [f32]) =
            (&w[..], &xd[..], &mut od[..], &mut sd[..]);
        let (in_per, out_per, hw) = (g.cin * g.in_plane(), g.cout * g.hw_out(), g.hw_out());
        let (g, tier, bvec) = (*g, ctx.tier, bvec.as_deref());
        ctx.pool.install(|| {
            od.par_chunks_mut(per_chunk * out_per)
                .zip(xd.par_chunks(per_chunk * in_per))
                .zip(sd.par_chunks_mut(per_scr))
                .for_each(|((o, xc), sc)| {
                    let n = xc.len() / in_per;
                    depthwise::depthwise_forward(tier, n, xc, w, &g, sc, o);
                    if let Some(bv) = bvec {
                        for os in o.chunks_mut(out_per) {
                            for (co, plane) in os.chunks_mut(hw).enumerate() {
                                plane.iter_mut().for_each(|v| *v += bv[co]);
                            }
                        }
                    }
                });
        });
    }
    drop(scr);
    out
}

/// The gradients of convolution `g` (input with `need_in`, weight, bias), by the
/// kernel [`backward_kernel`] picks, with the scratch [`backward_scratch`] declares.
#[allow(clippy::type_complexity)]
pub(crate) fn backward(
    ctx: &Ctx,
    g: &ConvGeom,
    x: &Tensor,
    gout: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    need_in: bool,
) -> (Option<Tensor>, Tensor, Option<Tensor>) {
    let b = x.shape[0];
    let s = backward_scratch(g, ctx.tier, b, ctx.threads, need_in);
    // The input gradient of a small stride-1 convolution is itself a direct
    // convolution (of the padded output gradient with flipped weights), done last.
    let direct_in = need_in && direct(g, ctx.tier);
    let (gi, gw, gb) = match backward_kernel(g, ctx.tier, b, ctx.threads) {
        Kernel::Depthwise => backward_depthwise(ctx, g, x, gout, w, bias, need_in, &s),
        Kernel::Direct => backward_direct(ctx, g, x, gout, w, bias, need_in, &s),
        Kernel::Batched(sb) => {
            backward_batched(ctx, g, x, gout, w, bias, need_in, !direct_in, sb, &s)
        }
        Kernel::Columns => backward_columns(ctx, g, x, gout, w, bias, need_in, !direct_in, &s),
    };
    if let (true, Some(gi)) = (direct_in, &gi) {
        input_grad_direct(ctx, g, gout, w, gi, &s);
    }
    (gi, gw, gb)
}

/// The gradients by one column matrix per sample and group (see [`forward_columns`]);
/// the input gradient here unless `dx_here` is off.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn backward_columns(
    ctx: &Ctx,
    g: &ConvGeom,
    x: &Tensor,
    gout: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    need_in: bool,
    dx_here: bool,
    s: &Scratch,
) -> (Option<Tensor>, Tensor, Option<Tensor>) {
    let g = *g;
    let direct_in = !dx_here;
    let ConvGrads {
        gi,
        gw,
        gb,
        wsize,
        chunks,
        per_chunk,
    } = grads(ctx, &g, x, w, bias, need_in);
    let k = g.k();
    let hw = g.hw_out();
    let mut held = ctx.phase(s, 0);
    let col = held.take("im2col", (!g.is_pointwise()).then_some(chunks * k * hw));
    let partial = held.need("partials", chunks * (wsize + g.cout));
    {
        let w = w.data();
        let xd = x.data();
        let gd = gout.data();
        let mut gid = gi.as_ref().map(|t| t.data_mut());
        let mut cold = col.as_ref().map(|c| c.data_mut());
        let mut pd = partial.data_mut();
        let in_per = g.cin * g.in_plane();
        let out_per = g.cout * hw;
        let cog = g.cout / g.groups;
        let col_chunks: Vec<Option<&mut [f32]>> = match cold.as_deref_mut() {
            Some(c) => c.chunks_mut(k * hw).map(Some).collect(),
            None => (0..chunks).map(|_| None).collect(),
        };
        let gi_chunks: Vec<Option<&mut [f32]>> = match gid.as_deref_mut().filter(|_| !direct_in) {
            Some(d) => d.chunks_mut(per_chunk * in_per).map(Some).collect(),
            None => (0..chunks).map(|_| None).collect(),
        };
        let w = &w[..];
        let (pds, xd, gd): (&mut [f32], &[f32], &[f32]) = (&mut pd[..], &xd[..], &gd[..]);
        ctx.pool.install(|| {
            pds.par_chunks_mut(wsize + g.cout)
                .zip(xd.par_chunks(per_chunk * in_per))
                .zip(gd.par_chunks(per_chunk * out_per))
                .zip(col_chunks.into_par_iter())
                .zip(gi_chunks.into_par_iter())
                .for_each(|((((part, xc), gc), mut colbuf), mut gic)| {
                    let (pw, pb) = part.split_at_mut(wsize);
                    for (s, (xs, gs)) in xc.chunks(in_per).zip(gc.chunks(out_per)).enumerate() {
                        for (co, plane) in gs.chunks(hw).enumerate() {
                            pb[co] += plane.iter().sum::<f32>();
                        }
                        for grp in 0..g.groups {
                            let gg = &gs[grp * cog * hw..(grp + 1) * cog * hw];
                            let pwg = &mut pw[grp * cog * k..(grp + 1) * cog * k];
                            let wg = &w[grp * cog * k..(grp + 1) * cog * k];
                            let col = im2col::columns(xs, &g, grp, colbuf.as_deref_mut());
                            // dW_g += dY_g [cog x hw] * col^T [hw x k]
                            gemm(
                                cog,
                                hw,
                                k,
                                gg,
                                (hw as isize, 1),
                                col,
                                (1, hw as isize),
                                pwg,
                                (k as isize, 1),
                                1.0,
                            );
                            if let Some(gis) = gic.as_deref_mut() {
                                let dx = &mut gis[s * in_per..(s + 1) * in_per];
                                // W_g^T [k x cog] * dY_g [cog x hw]: into the column
                                // scratch (then back to the image), or straight into dX
                                // for a 1x1 stride-1 convolution.
                                {
                                    let dst: &mut [f32] = match colbuf.as_deref_mut() {
                                        Some(cb) => cb,
                                        None => &mut dx[grp * k * hw..(grp + 1) * k * hw],
                                    };
                                    gemm(
                                        k,
                                        cog,
                                        hw,
                                        wg,
                                        (1, k as isize),
                                        gg,
                                        (hw as isize, 1),
                                        dst,
                                        (hw as isize, 1),
                                        0.0,
                                    );
                                }
                                if let Some(cb) = colbuf.as_deref_mut() {
                                    im2col::col2im_add(cb, &g, grp, dx);
                                }
                            }
                        }
                    }
                });
        });
        sum_partials(&pd, wsize, g.cout, &gw, gb.as_ref());
    }
    drop(col);
    drop(partial);
    (gi, gw, gb)
}

/// The gradient tensors a convolution's backward fills, made in the order every
/// variant makes them (input, weight, bias: the native profile counts that order),
/// and how its batch splits into chunks.
fn grads(
    ctx: &Ctx,
    g: &ConvGeom,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    need_in: bool,
) -> ConvGrads {
    let gi = need_in.then(|| Tensor::zeros(ctx.tracker, &x.shape, None));
    let wshape = w.shape.clone();
    let wsize: usize = wshape.iter().product();
    let gw = Tensor::zeros(ctx.tracker, &wshape, Some(Category::Grads));
    let gb = bias
        .is_some()
        .then(|| Tensor::zeros(ctx.tracker, &[g.cout], Some(Category::Grads)));
    let chunks = ctx.chunks(x.shape[0]);
    let per_chunk = x.shape[0].div_ceil(chunks);
    ConvGrads {
        gi,
        gw,
        gb,
        wsize,
        chunks,
        per_chunk,
    }
}

/// The weight (and bias, and with `dx_here` input) gradients of a convolution whose
/// samples have few output positions, `sb` samples per matrix product (see
/// [`Engine::forward_batched`]): the output gradients of a group of samples
/// gathered as one `[cout x n*HoWo]` matrix (read in place where a sample has one
/// position).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn backward_batched(
    ctx: &Ctx,
    g: &ConvGeom,
    x: &Tensor,
    gout: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    need_in: bool,
    dx_here: bool,
    sb: usize,
    s: &Scratch,
) -> (Option<Tensor>, Tensor, Option<Tensor>) {
    let ConvGrads {
        gi,
        gw,
        gb,
        wsize,
        chunks,
        per_chunk,
    } = grads(ctx, g, x, w, bias, need_in);
    let (k, hw, cout) = (g.k(), g.hw_out(), g.cout);
    let ld = sb * hw;
    let mut held = ctx.phase(s, 0);
    let col = held.need("im2col", chunks * k * ld);
    let partial = held.need("partials", chunks * (wsize + cout));
    let gsc = held.take("gathered", (hw > 1).then_some(chunks * cout * ld));
    {
        let w = w.data();
        let (xd, gd) = (x.data(), gout.data());
        let mut gid = gi.as_ref().filter(|_| dx_here).map(|t| t.data_mut());
        let (mut cold, mut pd) = (col.data_mut(), partial.data_mut());
        let mut gscd = gsc.as_ref().map(|t| t.data_mut());
        let (in_per, out_per) = (g.cin * g.in_plane(), cout * hw);
        let gi_chunks: Vec<Option<&mut [f32]>> = match gid.as_deref_mut() {
            Some(d) => d.chunks_mut(per_chunk * in_per).map(Some).collect(),
            None => (0..chunks).map(|_| None).collect(),
        };
        let gsc_chunks: Vec<Option<&mut [f32]>> = match gscd.as_deref_mut() {
            Some(o) => o.chunks_mut(cout * ld).map(Some).collect(),
            None => (0..chunks).map(|_| None).collect(),
        };
        let (w, xd, gd, cold, pds): (&[f32], &[f32], &[f32], &mut [f32], &mut [f32]) =
            (&w[..], &xd[..], &gd[..], &mut cold[..], &mut pd[..]);
        let g = *g;
        ctx.pool.install(|| {
            pds.par_chunks_mut(wsize + cout)
                .zip(xd.par_chunks(per_chunk * in_per))
                .zip(gd.par_chunks(per_chunk * out_per))
                .zip(cold.par_chunks_mut(k * ld))
                .zip(gsc_chunks.into_par_iter().zip(gi_chunks.into_par_iter()))
                .for_each(|((((part, xc), gc), cb), (mut gs_buf, mut gic))| {
                    let (pw, pb) = part.split_at_mut(wsize);
                    let groups = xc.chunks(sb * in_per).zip(gc.chunks(sb * out_per));
                    for (t, (xs, gs)) in groups.enumerate() {
                        let n = xs.len() / in_per;
                        let ldn = n * hw;
                        for g1 in gs.chunks(out_per) {
                            for (co, plane) in g1.chunks(hw).enumerate() {
                                pb[co] += plane.iter().sum::<f32>();
                            }
                        }
                        for (s, x1) in xs.chunks(in_per).enumerate() {
                            im2col::im2col_ld(x1, &g, 0, &mut cb[s * hw..], ldn);
                        }
                        // dY of the group as [cout x n*hw].
                        let (dy, dys): (&[f32], (isize, isize)) = match gs_buf.as_deref_mut() {
                            None => (gs, (1, cout as isize)),
                            Some(buf) => {
                                for (s, g1) in gs.chunks(out_per).enumerate() {
                                    for (co, plane) in g1.chunks(hw).enumerate() {
                                        let at = co * ldn + s * hw;
                                        buf[at..at + hw].copy_from_slice(plane);
                                    }
                                }
                                (&buf[..cout * ldn], (ldn as isize, 1))
                            }
                        };
                        // dW += dY [cout x n*hw] * col^T [n*hw x k]
                        gemm(
                            cout,
                            ldn,
                            k,
                            dy,
                            dys,
                            cb,
                            (1, ldn as isize),
                            pw,
                            (k as isize, 1),
                            1.0,
                        );
                        if let Some(gis) = gic.as_deref_mut() {
                            // col = W^T [k x cout] * dY, then back to each image.
                            gemm(
                                k,
                                cout,
                                ldn,
                                w,
                                (1, k as isize),
                                dy,
                                dys,
                                cb,
                                (ldn as isize, 1),
                                0.0,
                            );
                            let dx = &mut gis[t * sb * in_per..];
                            for (s, dx1) in dx.chunks_mut(in_per).take(n).enumerate() {
                                im2col::col2im_add_ld(&cb[s * hw..], &g, 0, dx1, ldn);
                            }
                        }
                    }
                });
        });
        sum_partials(&pd, wsize, cout, &gw, gb.as_ref());
    }
    drop(col);
    drop(partial);
    drop(gsc);
    (gi, gw, gb)
}

/// The gradients of a direct-shaped convolution on a tier with a direct weight
/// gradient: each sample padded as in the forward pass, the weight gradient summed
/// straight from it (no im2col, no matrix packing), then the input gradient (if
/// needed) as a direct convolution.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn backward_direct(
    ctx: &Ctx,
    g: &ConvGeom,
    x: &Tensor,
    gout: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    need_in: bool,
    s: &Scratch,
) -> (Option<Tensor>, Tensor, Option<Tensor>) {
    let ConvGrads {
        gi,
        gw,
        gb,
        wsize,
        chunks,
        per_chunk,
    } = grads(ctx, g, x, w, bias, need_in);
    let (hp, wp) = (g.h + 2 * g.ph, direct::direct_row(g.wo, g.kw));
    let mut held = ctx.phase(s, 0);
    let xpad = held.need("pad", chunks * g.cin * hp * wp);
    let partial = held.need("partials", chunks * (wsize + g.cout));
    {
        let (xd, gd) = (x.data(), gout.data());
        let (mut xpd, mut pd) = (xpad.data_mut(), partial.data_mut());
        let (in_per, out_per, pad_per, hw) = (
            g.cin * g.in_plane(),
            g.cout * g.hw_out(),
            g.cin * hp * wp,
            g.hw_out(),
        );
        let (xd, gd, xpd, pds): (&[f32], &[f32], &mut [f32], &mut [f32]) =
            (&xd[..], &gd[..], &mut xpd[..], &mut pd[..]);
        let (g, tier) = (*g, ctx.tier);
        ctx.pool.install(|| {
            pds.par_chunks_mut(wsize + g.cout)
                .zip(xd.par_chunks(per_chunk * in_per))
                .zip(gd.par_chunks(per_chunk * out_per))
                .zip(xpd.par_chunks_mut(pad_per))
                .for_each(|(((part, xc), gc), xp)| {
                    let (pw, pb) = part.split_at_mut(wsize);
                    for (xs, gs) in xc.chunks(in_per).zip(gc.chunks(out_per)) {
                        for (co, plane) in gs.chunks(hw).enumerate() {
                            pb[co] += plane.iter().sum::<f32>();
                        }
                        direct::pad_planes(xs, g.cin, g.h, g.w, g.ph, g.pw, hp, wp, xp);
                        direct::conv_wgrad_direct(
                            tier, xp, g.cin, hp, wp, gs, g.cout, g.ho, g.wo, g.kh, g.kw, pw,
                        );
                    }
                });
        });
        sum_partials(&pd, wsize, g.cout, &gw, gb.as_ref());
    }
    drop(xpad);
    drop(partial);
    (gi, gw, gb)
}

/// The gradients of a depthwise convolution, each chunk of samples channels-last; the
/// weight gradient summed per chunk in the partials scratch.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn backward_depthwise(
    ctx: &Ctx,
    g: &ConvGeom,
    x: &Tensor,
    gout: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    need_in: bool,
    s: &Scratch,
) -> (Option<Tensor>, Tensor, Option<Tensor>) {
    let ConvGrads {
        gi,
        gw,
        gb,
        wsize,
        chunks,
        per_chunk,
    } = grads(ctx, g, x, w, bias, need_in);
    let mut held = ctx.phase(s, 0);
    let partial = held.need("partials", chunks * (wsize + g.cout));
    let per_scr = depthwise::depthwise_scratch(g, true);
    let scr = held.need("depthwise", chunks * per_scr);
    {
        let w = w.data();
        let (xd, gd) = (x.data(), gout.data());
        let mut gid = gi.as_ref().map(|t| t.data_mut());
        let mut pd = partial.data_mut();
        let mut sdg = scr.data_mut();
        let sd: &mut [f32] = &mut sdg[..];
        let (in_per, out_per, hw) = (g.cin * g.in_plane(), g.cout * g.hw_out(), g.hw_out());
        let gi_chunks: Vec<Option<&mut [f32]>> = match gid.as_deref_mut() {
            Some(d) => d.chunks_mut(per_chunk * in_per).map(Some).collect(),
            None => (0..chunks).map(|_| None).collect(),
        };
        let (w, xd, gd, pds): (&[f32], &[f32], &[f32], &mut [f32]) =
            (&w[..], &xd[..], &gd[..], &mut pd[..]);
        let (g, tier) = (*g, ctx.tier);
        ctx.pool.install(|| {
            pds.par_chunks_mut(wsize + g.cout)
                .zip(xd.par_chunks(per_chunk * in_per))
                .zip(gd.par_chunks(per_chunk * out_per))
                .zip(gi_chunks.into_par_iter().zip(sd.par_chunks_mut(per_scr)))
                .for_each(|(((part, xc), gc), (gic, sc))| {
                    let (pw, pb) = part.split_at_mut(wsize);
                    for gs in gc.chunks(out_per) {
                        for (co, plane) in gs.chunks(hw).enumerate() {
                            pb[co] += plane.iter().sum::<f32>();
                        }
                    }
                    let n = xc.len() / in_per;
                    depthwise::depthwise_backward(tier, n, xc, w, gc, &g, sc, pw, gic);
                });
        });
        sum_partials(&pd, wsize, g.cout, &gw, gb.as_ref());
    }
    drop(partial);
    drop(scr);
    (gi, gw, gb)
}

/// dX of a stride-1 convolution as a direct convolution: the output gradient padded
/// by `k - 1 - p` on each side, with the weights transposed and flipped.
fn input_grad_direct(ctx: &Ctx, g: &ConvGeom, gout: &Tensor, w: &Tensor, gi: &Tensor, s: &Scratch) {
    let b = gout.shape[0];
    let chunks = ctx.chunks(b);
    let per_chunk = b.div_ceil(chunks);
    let (qh, qw) = (g.kh - 1 - g.ph, g.kw - 1 - g.pw);
    let (hq, wq) = (g.ho + 2 * qh, direct::direct_row(g.w, g.kw));
    let mut held = ctx.phase(s, 1);
    let wf = held.need(
        "direct_weights",
        direct::direct_weight_len(ctx.tier, g.cin, g.cout, g.kh, g.kw),
    );
    let gpad = held.need("pad", chunks * g.cout * hq * wq);
    {
        direct::direct_weights(
            ctx.tier,
            &w.data(),
            g.cout,
            g.cin,
            g.kh,
            g.kw,
            true,
            &mut wf.data_mut(),
        );
        let (wfd, gd) = (wf.data(), gout.data());
        let (mut gid, mut gpd) = (gi.data_mut(), gpad.data_mut());
        let (wfd, gd, gid, gpd): (&[f32], &[f32], &mut [f32], &mut [f32]) =
            (&wfd[..], &gd[..], &mut gid[..], &mut gpd[..]);
        let (in_per, out_per, pad_per) =
            (g.cin * g.in_plane(), g.cout * g.hw_out(), g.cout * hq * wq);
        let (g, tier) = (*g, ctx.tier);
        ctx.pool.install(|| {
            gid.par_chunks_mut(per_chunk * in_per)
                .zip(gd.par_chunks(per_chunk * out_per))
                .zip(gpd.par_chunks_mut(pad_per))
                .for_each(|((dx, gc), gp)| {
                    for (dxs, gs) in dx.chunks_mut(in_per).zip(gc.chunks(out_per)) {
                        direct::pad_planes(gs, g.cout, g.ho, g.wo, qh, qw, hq, wq, gp);
                        direct::conv_direct(
                            tier, gp, g.cout, hq, wq, wfd, g.cin, g.kh, g.kw, dxs, g.h, g.w,
                        );
                    }
                });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{test_parts, test_tiers};

    #[allow(clippy::too_many_arguments)]
    fn geom(
        cin: usize,
        h: usize,
        cout: usize,
        k: usize,
        s: usize,
        p: usize,
        groups: usize,
    ) -> ConvGeom {
        let ho = (h + 2 * p - k) / s + 1;
        ConvGeom {
            cin,
            h,
            w: h,
            cout,
            kh: k,
            kw: k,
            sh: s,
            sw: s,
            ph: p,
            pw: p,
            dh: 1,
            dw: 1,
            groups,
            ho,
            wo: ho,
        }
    }

    /// The most bytes one phase of `s` holds at once.
    fn widest(s: &Scratch) -> u128 {
        let sums = s
            .phases
            .iter()
            .map(|p| p.iter().map(|b| b.floats * 4).sum::<u128>());
        sums.max().unwrap_or(0)
    }

    /// Every kernel on every tier this CPU runs allocates exactly the scratch its
    /// declaration says (the planner's native profile plans from the declaration): the
    /// peak of a forward pass is the output plus its widest phase, that of a backward pass
    /// the gradients plus theirs.
    #[test]
    fn every_kernel_allocates_exactly_the_scratch_it_declares_on_every_tier() {
        let shapes = [
            geom(8, 12, 16, 3, 1, 1, 1),  // direct-shaped, 144 positions
            geom(8, 4, 16, 3, 1, 1, 1),   // direct-shaped, few positions: batched
            geom(4, 8, 12, 1, 1, 0, 1),   // 1x1, 64 positions: batched
            geom(4, 20, 12, 1, 1, 0, 1),  // 1x1, 400 positions: the input is the matrix
            geom(6, 17, 10, 3, 2, 1, 1),  // strided
            geom(12, 9, 12, 3, 2, 1, 12), // depthwise
            geom(8, 14, 8, 3, 1, 1, 2),   // grouped
            geom(5, 3, 7, 3, 1, 0, 1),    // one position per sample
        ];
        let (tracker, pool) = test_parts();
        for tier in test_tiers() {
            let ctx = Ctx {
                tracker: &tracker,
                pool: &pool,
                threads: 2,
                tier,
            };
            let mut seen = Vec::new();
            for g in &shapes {
                for batch in [1, 3] {
                    let x = ctx.zeros(&[batch, g.cin, g.h, g.w]);
                    let w = ctx.zeros(&[g.cout, g.cin / g.groups, g.kh, g.kw]);
                    let b = ctx.zeros(&[g.cout]);
                    let out_shape = vec![batch, g.cout, g.ho, g.wo];
                    let base = tracker.live().total();
                    tracker.reset_peak();
                    let out = forward(&ctx, g, &x, &w, Some(&b), out_shape);
                    let s = forward_scratch(g, tier, batch, 2);
                    let out_bytes = out.numel() as u128 * 4;
                    let what = format!("{tier} {g:?} batch {batch}");
                    let peak = tracker.peak().expect("allocated").bytes;
                    assert_eq!(peak, base + out_bytes + widest(&s), "forward {what}");
                    let gout = ctx.zeros(&out.shape);
                    let base = tracker.live().total();
                    tracker.reset_peak();
                    let (gi, gw, gb) = backward(&ctx, g, &x, &gout, &w, Some(&b), true);
                    let grads = [gi.as_ref(), Some(&gw), gb.as_ref()]
                        .iter()
                        .flatten()
                        .map(|t| t.numel() as u128 * 4)
                        .sum::<u128>();
                    let s = backward_scratch(g, tier, batch, 2, true);
                    let peak = tracker.peak().expect("allocated").bytes;
                    assert_eq!(peak, base + grads + widest(&s), "backward {what}");
                    seen.push(format!("{:?}", forward_kernel(g, tier, batch, 2)));
                    seen.push(format!("{:?}", backward_kernel(g, tier, batch, 2)));
                }
            }
            seen.sort();
            seen.dedup();
            let kinds: Vec<&str> = seen
                .iter()
                .map(|k| k.split('(').next().unwrap_or(""))
                .collect();
            for want in ["Depthwise", "Batched", "Columns"] {
                assert!(
                    kinds.contains(&want),
                    "{tier}: no {want} kernel in {seen:?}"
                );
            }
            if direct::tile(tier).is_some() {
                assert!(
                    kinds.contains(&"Direct"),
                    "{tier}: no direct kernel in {seen:?}"
                );
            }
        }
    }
}
