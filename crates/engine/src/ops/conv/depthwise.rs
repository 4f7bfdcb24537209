//! The depthwise convolution, two ways. Stride-1 planes of 16 x 16 and more, plane by
//! plane: the zero-padded plane in column phases, every tap one long vector operation
//! over it. Smaller or strided planes, channels-last: each sample copied into a
//! zero-padded `[h][w][c]` layout, every output position summed over its taps eight
//! channels at a time, and copied back (mobilenet's and EfficientNet's small planes of
//! many channels vectorise over the channels, not over a plane of four pixels).
//! Measured on mobilenet_v2's layers (AVX2): each way is the faster one where it runs.

use super::ConvGeom;
use crate::kernels::Tier;

/// Whether a convolution is depthwise (one input and one output channel per group):
/// the engine runs it with the `depthwise_*` kernels, no im2col and no matrix product.
pub fn is_depthwise(g: &ConvGeom) -> bool {
    g.groups > 1 && g.groups == g.cin && g.groups == g.cout
}

/// The channels-last buffers of one call, in the order [`depthwise_scratch`] counts
/// them: the taps' weights `[kh * kw][c]`, the padded input `[hp][wp][c]`, the output
/// (or output gradient) `[ho][wo][c]`, and in backward the weight gradient `[kh * kw][c]`
/// and the padded input gradient `[hp][wp][c]`.
#[derive(Clone, Copy)]
struct Layout {
    c: usize,
    wp: usize,
    taps: usize,
    padded: usize,
    out: usize,
}

impl Layout {
    fn new(g: &ConvGeom) -> Layout {
        let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
        let c = g.cin;
        Layout {
            c,
            wp,
            taps: g.kh * g.kw * c,
            padded: hp * wp * c,
            out: g.ho * g.wo * c,
        }
    }
}

/// Floats of scratch per batch chunk a depthwise convolution uses: plane by plane, the
/// phases and the flat output (in backward also the phases of the input gradient);
/// channels-last, the buffers of [`Layout`]. The native profile plans this same figure.
pub fn depthwise_scratch(g: &ConvGeom, backward: bool) -> usize {
    if by_planes(g) {
        let l = DwLayout::new(g);
        return l.phases(g) * if backward { 2 } else { 1 } + l.flat(g);
    }
    let l = Layout::new(g);
    if backward {
        2 * l.taps + 2 * l.padded + l.out
    } else {
        l.taps + l.padded + l.out
    }
}

/// Whether convolution `g` runs plane by plane (stride 1, planes of 16 x 16 or more) or
/// channels-last.
fn by_planes(g: &ConvGeom) -> bool {
    g.sh == 1 && g.sw == 1 && g.h * g.w >= 256
}

/// A depthwise convolution's per-plane layout: the zero-padded input split into `sw`
/// column phases (phase `q` holds padded columns `q, q + sw, ...`), each `hp x wq`, and
/// a flat output of rows `sh * wq` apart. Output `(oy, ox)` is flat index
/// `oy * sh * wq + ox`, and its tap `(ky, kx)` reads phase `(kx * dw) % sw` at that index
/// plus `ky * dh * wq + (kx * dw) / sw`: every tap is one long vector operation over the
/// plane, whatever the stride, padding and dilation.
#[derive(Clone, Copy)]
struct DwLayout {
    hp: usize,
    wq: usize,
    /// Flat outputs computed (the last row's columns past `wo` skipped).
    len: usize,
}

impl DwLayout {
    fn new(g: &ConvGeom) -> DwLayout {
        let (hp, wp) = (g.h + 2 * g.ph, g.w + 2 * g.pw);
        let wq = wp.div_ceil(g.sw);
        DwLayout {
            hp,
            wq,
            len: (g.ho - 1) * g.sh * wq + g.wo,
        }
    }
    fn phases(&self, g: &ConvGeom) -> usize {
        g.sw * self.hp * self.wq
    }
    fn flat(&self, g: &ConvGeom) -> usize {
        g.ho * g.sh * self.wq
    }
    /// Phase plane start plus offset of tap (ky, kx).
    fn tap(&self, g: &ConvGeom, ky: usize, kx: usize) -> usize {
        let q = (kx * g.dw) % g.sw;
        q * self.hp * self.wq + ky * g.dh * self.wq + (kx * g.dw) / g.sw
    }
}

/// Copies one input plane into the phases' interior; the padding around it is zero
/// from [`Plan::new`] and never written.
#[inline(always)]
fn dw_fill_phases(x: &[f32], g: &ConvGeom, l: &DwLayout, ph: &mut [f32]) {
    for iy in 0..g.h {
        let row = &x[iy * g.w..(iy + 1) * g.w];
        if g.sw == 1 {
            let d0 = (iy + g.ph) * l.wq + g.pw;
            ph[d0..d0 + g.w].copy_from_slice(row);
        } else {
            for q in 0..g.sw {
                let (ix0, p0) = phase_start(g, q);
                let d0 = (q * l.hp + iy + g.ph) * l.wq + p0;
                for (d, &v) in ph[d0..].iter_mut().zip(row.iter().skip(ix0).step_by(g.sw)) {
                    *d = v;
                }
            }
        }
    }
}

/// Column phase `q` of a strided plane: the first input column it holds and that
/// column's place in the phase's rows (padded column `c = ix + pw` is in phase
/// `c % sw` at `c / sw`), so that the copies in and out step without a division.
#[inline(always)]
fn phase_start(g: &ConvGeom, q: usize) -> (usize, usize) {
    let c0 = if g.pw <= q {
        q
    } else {
        q + (g.pw - q).div_ceil(g.sw) * g.sw
    };
    (c0 - g.pw, c0 / g.sw)
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (u, v) in y.iter_mut().zip(x) {
        *u += a * v;
    }
}

/// `y[i] = sum over taps t, in order, of w[t] * ph[off[t] + i]`: every tap in one pass
/// (eight outputs in a register across the taps), the same sums as one `axpy` per tap
/// into zeros. `K` taps known at compile time unrolls them (3x3, 5x5, 7x7 kernels).
#[inline(always)]
fn taps_sum<const K: usize>(y: &mut [f32], w: &[f32], ph: &[f32], off: &[usize]) {
    let (w, off) = (&w[..K], &off[..K]);
    let n = y.len();
    let mut i = 0;
    while i + 8 <= n {
        let mut acc = [0f32; 8];
        for t in 0..K {
            let src = &ph[off[t] + i..off[t] + i + 8];
            for j in 0..8 {
                acc[j] += w[t] * src[j];
            }
        }
        y[i..i + 8].copy_from_slice(&acc);
        i += 8;
    }
    for (k, v) in y.iter_mut().enumerate().skip(i) {
        let mut s = 0.0;
        for t in 0..K {
            s += w[t] * ph[off[t] + k];
        }
        *v = s;
    }
}

/// `gw[t] += dot(gf, ph[off[t]..])` for every tap in one pass over `gf` (eight partial
/// sums per tap, as [`dot8`] sums them).
#[inline(always)]
fn taps_dot<const K: usize>(gw: &mut [f32], gf: &[f32], ph: &[f32], off: &[usize]) {
    let off = &off[..K];
    let n = gf.len();
    let mut acc = [[0f32; 8]; K];
    let mut i = 0;
    while i + 8 <= n {
        let g = &gf[i..i + 8];
        for t in 0..K {
            let src = &ph[off[t] + i..off[t] + i + 8];
            for j in 0..8 {
                acc[t][j] += g[j] * src[j];
            }
        }
        i += 8;
    }
    for t in 0..K {
        let mut s: f32 = acc[t].iter().sum();
        for k in i..n {
            s += gf[k] * ph[off[t] + k];
        }
        gw[t] += s;
    }
}

/// A dot product with eight partial sums (so that it vectorises).
#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// What every plane of one call shares: the layout, each tap's offset, and how the taps
/// are summed (`K` known at compile time for 3x3, 5x5 and 7x7 kernels).
struct Plan {
    l: DwLayout,
    off: [usize; 49],
    kk: usize,
}

impl Plan {
    /// The plan, with the phases (`ph`) and the flat buffer (`flat`) zeroed: the planes
    /// then write only what they use, so padding and the columns past `wo` stay zero.
    fn new(g: &ConvGeom, ph: &mut [f32], flat: &mut [f32]) -> Plan {
        let l = DwLayout::new(g);
        let kk = g.kh * g.kw;
        let mut off = [0usize; 49];
        if kk <= 49 {
            for (t, o) in off[..kk].iter_mut().enumerate() {
                *o = l.tap(g, t / g.kw, t % g.kw);
            }
        }
        ph.fill(0.0);
        flat.fill(0.0);
        Plan { l, off, kk }
    }

    /// `y = sum over taps of w[t] * ph[tap t..]` (flat layout).
    #[inline(always)]
    fn sum(&self, g: &ConvGeom, y: &mut [f32], w: &[f32], ph: &[f32]) {
        match self.kk {
            9 => taps_sum::<9>(y, w, ph, &self.off),
            25 => taps_sum::<25>(y, w, ph, &self.off),
            49 => taps_sum::<49>(y, w, ph, &self.off),
            _ => {
                y.fill(0.0);
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let t = self.l.tap(g, ky, kx);
                        axpy(y, w[ky * g.kw + kx], &ph[t..t + self.l.len]);
                    }
                }
            }
        }
    }

    /// `gw[t] += dot(gf, ph[tap t..])`.
    #[inline(always)]
    fn dots(&self, g: &ConvGeom, gw: &mut [f32], gf: &[f32], ph: &[f32]) {
        match self.kk {
            9 => taps_dot::<9>(gw, gf, ph, &self.off),
            25 => taps_dot::<25>(gw, gf, ph, &self.off),
            49 => taps_dot::<49>(gw, gf, ph, &self.off),
            _ => {
                for ky in 0..g.kh {
                    for kx in 0..g.kw {
                        let t = self.l.tap(g, ky, kx);
                        gw[ky * g.kw + kx] += dot8(gf, &ph[t..t + self.l.len]);
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn dw_forward_plane(
    p: &Plan,
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    (ph, y): (&mut [f32], &mut [f32]),
    out: &mut [f32],
) {
    let l = &p.l;
    dw_fill_phases(x, g, l, ph);
    let y = &mut y[..l.len];
    p.sum(g, y, w, ph);
    for oy in 0..g.ho {
        let at = oy * g.sh * l.wq;
        out[oy * g.wo..(oy + 1) * g.wo].copy_from_slice(&y[at..at + g.wo]);
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn dw_backward_plane(
    p: &Plan,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &ConvGeom,
    (ph, dph, gf): (&mut [f32], &mut [f32], &mut [f32]),
    gw: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let l = &p.l;
    dw_fill_phases(x, g, l, ph);
    // The output gradient in the flat layout (zero past `wo` in each row since
    // `Plan::new`).
    let gf = &mut gf[..l.len];
    for oy in 0..g.ho {
        let at = oy * g.sh * l.wq;
        gf[at..at + g.wo].copy_from_slice(&dy[oy * g.wo..(oy + 1) * g.wo]);
    }
    p.dots(g, gw, gf, ph);
    let Some(dx) = dx else { return };
    dph.fill(0.0);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let t = if p.kk <= 49 {
                p.off[ky * g.kw + kx]
            } else {
                l.tap(g, ky, kx)
            };
            axpy(&mut dph[t..t + l.len], w[ky * g.kw + kx], gf);
        }
    }
    for iy in 0..g.h {
        let row = &mut dx[iy * g.w..(iy + 1) * g.w];
        if g.sw == 1 {
            let s0 = (iy + g.ph) * l.wq + g.pw;
            for (d, v) in row.iter_mut().zip(&dph[s0..s0 + g.w]) {
                *d += v;
            }
        } else {
            for q in 0..g.sw {
                let (ix0, p0) = phase_start(g, q);
                let s0 = (q * l.hp + iy + g.ph) * l.wq + p0;
                for (d, v) in row.iter_mut().skip(ix0).step_by(g.sw).zip(&dph[s0..]) {
                    *d += v;
                }
            }
        }
    }
}

#[inline(always)]
fn planes_forward(
    n: usize,
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let (ip, op, kk) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    let l = DwLayout::new(g);
    let (ph, y) = scratch.split_at_mut(l.phases(g));
    let (ph, y) = (ph, &mut y[..l.flat(g)]);
    let p = Plan::new(g, ph, y);
    for c in 0..n * g.cin {
        dw_forward_plane(
            &p,
            &x[c * ip..],
            &w[(c % g.cin) * kk..],
            g,
            (&mut *ph, &mut *y),
            &mut out[c * op..],
        );
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn planes_backward(
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    gw: &mut [f32],
    mut dx: Option<&mut [f32]>,
) {
    let (ip, op, kk) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    let l = DwLayout::new(g);
    let np = l.phases(g);
    let (ph, rest) = scratch.split_at_mut(np);
    let (dph, gf) = rest.split_at_mut(np);
    let gf = &mut gf[..l.flat(g)];
    let p = Plan::new(g, ph, gf);
    for c in 0..n * g.cin {
        dw_backward_plane(
            &p,
            &x[c * ip..],
            &w[(c % g.cin) * kk..],
            &dy[c * op..],
            g,
            (&mut *ph, &mut *dph, &mut *gf),
            &mut gw[(c % g.cin) * kk..],
            dx.as_deref_mut().map(|d| &mut d[c * ip..]),
        );
    }
}

/// Splits `n` floats off the front of `s`.
fn take<'a>(s: &mut &'a mut [f32], n: usize) -> &'a mut [f32] {
    let (a, b) = std::mem::take(s).split_at_mut(n);
    *s = b;
    a
}

/// The weights `[c][kh * kw]` as `[kh * kw][c]`.
#[inline(always)]
fn taps_last(w: &[f32], c: usize, kk: usize, wt: &mut [f32]) {
    for ch in 0..c {
        for t in 0..kk {
            wt[t * c + ch] = w[ch * kk + t];
        }
    }
}

/// `dst[j * ds + i] = src[i * ss + j]` (or `+=` with `ADD`) for `i < rows`, `j < cols`,
/// in 8 x 8 blocks: between `[c][h * w]` and `[h * w][c]` a plane can be 4 KiB apart, and
/// element-by-element stores that far apart thrash the cache's sets.
#[inline(always)]
fn transpose<const ADD: bool>(
    src: &[f32],
    ss: usize,
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    ds: usize,
) {
    for i0 in (0..rows).step_by(8) {
        let i1 = (i0 + 8).min(rows);
        for j0 in (0..cols).step_by(8) {
            let j1 = (j0 + 8).min(cols);
            for j in j0..j1 {
                let d = &mut dst[j * ds + i0..j * ds + i1];
                for (k, v) in d.iter_mut().enumerate() {
                    let x = src[(i0 + k) * ss + j];
                    if ADD {
                        *v += x;
                    } else {
                        *v = x;
                    }
                }
            }
        }
    }
}

/// One sample `[c][h][w]` into the padded channels-last buffer's interior (its border
/// is zero since the call began and never written).
#[inline(always)]
fn to_padded(x: &[f32], g: &ConvGeom, l: &Layout, xp: &mut [f32]) {
    let plane = g.h * g.w;
    for iy in 0..g.h {
        let d = ((iy + g.ph) * l.wp + g.pw) * l.c;
        transpose::<false>(&x[iy * g.w..], plane, l.c, g.w, &mut xp[d..], l.c);
    }
}

/// Each tap's offset in the padded buffer from an output position's corner.
#[inline(always)]
fn tap_offsets(g: &ConvGeom, l: &Layout) -> Vec<usize> {
    (0..g.kh * g.kw)
        .map(|t| ((t / g.kw) * g.dh * l.wp + (t % g.kw) * g.dw) * l.c)
        .collect()
}

/// The corner of output position `o` in the padded buffer.
#[inline(always)]
fn corner(g: &ConvGeom, l: &Layout, o: usize) -> usize {
    let (oy, ox) = (o / g.wo, o % g.wo);
    (oy * g.sh * l.wp + ox * g.sw) * l.c
}

#[inline(always)]
fn channels_last_forward(
    n: usize,
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    let l = Layout::new(g);
    let (c, kk, hw) = (l.c, g.kh * g.kw, g.ho * g.wo);
    let mut rest = &mut scratch[..];
    let wt = take(&mut rest, l.taps);
    let xp = take(&mut rest, l.padded);
    let y = take(&mut rest, l.out);
    taps_last(w, c, kk, wt);
    xp.fill(0.0);
    let off = tap_offsets(g, &l);
    let full = c - c % 8;
    for s in 0..n {
        to_padded(&x[s * c * g.h * g.w..], g, &l, xp);
        for o in 0..hw {
            let base = corner(g, &l, o);
            let yo = &mut y[o * c..(o + 1) * c];
            // Each output the sum over the taps in order, from zero.
            for c0 in (0..full).step_by(8) {
                let mut acc = [0f32; 8];
                for (t, &ot) in off.iter().enumerate() {
                    let wv = &wt[t * c + c0..t * c + c0 + 8];
                    let xv = &xp[base + ot + c0..base + ot + c0 + 8];
                    for j in 0..8 {
                        acc[j] += wv[j] * xv[j];
                    }
                }
                yo[c0..c0 + 8].copy_from_slice(&acc);
            }
            for (ch, v) in yo.iter_mut().enumerate().skip(full) {
                let mut a = 0.0;
                for (t, &ot) in off.iter().enumerate() {
                    a += wt[t * c + ch] * xp[base + ot + ch];
                }
                *v = a;
            }
        }
        transpose::<false>(y, c, hw, c, &mut out[s * c * hw..(s + 1) * c * hw], hw);
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn channels_last_backward(
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    gw: &mut [f32],
    mut dx: Option<&mut [f32]>,
) {
    let l = Layout::new(g);
    let (c, kk, hw, plane) = (l.c, g.kh * g.kw, g.ho * g.wo, g.h * g.w);
    let mut rest = &mut scratch[..];
    let wt = take(&mut rest, l.taps);
    let xp = take(&mut rest, l.padded);
    let gt = take(&mut rest, l.out);
    let gwt = take(&mut rest, l.taps);
    let dxp = take(&mut rest, l.padded);
    taps_last(w, c, kk, wt);
    xp.fill(0.0);
    gwt.fill(0.0);
    let off = tap_offsets(g, &l);
    for s in 0..n {
        to_padded(&x[s * c * plane..], g, &l, xp);
        transpose::<false>(&dy[s * c * hw..(s + 1) * c * hw], hw, c, hw, gt, c);
        // The weight gradient: every position's output gradient times each tap's input.
        for o in 0..hw {
            let base = corner(g, &l, o);
            let go = &gt[o * c..(o + 1) * c];
            for (t, &ot) in off.iter().enumerate() {
                let xv = &xp[base + ot..base + ot + c];
                let gv = &mut gwt[t * c..(t + 1) * c];
                for ((a, &gy), &xx) in gv.iter_mut().zip(go).zip(xv) {
                    *a += gy * xx;
                }
            }
        }
        let Some(dx) = dx.as_deref_mut() else {
            continue;
        };
        // The input gradient: each position's output gradient through each tap,
        // added into the padded buffer, whose interior is then added to `dx`.
        dxp.fill(0.0);
        for o in 0..hw {
            let base = corner(g, &l, o);
            let go = &gt[o * c..(o + 1) * c];
            for (t, &ot) in off.iter().enumerate() {
                let wv = &wt[t * c..(t + 1) * c];
                let dv = &mut dxp[base + ot..base + ot + c];
                for ((d, &gy), &wk) in dv.iter_mut().zip(go).zip(wv) {
                    *d += wk * gy;
                }
            }
        }
        let dxs = &mut dx[s * c * plane..(s + 1) * c * plane];
        for iy in 0..g.h {
            let src = ((iy + g.ph) * l.wp + g.pw) * c;
            transpose::<true>(&dxp[src..], c, g.w, c, &mut dxs[iy * g.w..], plane);
        }
    }
    for ch in 0..c {
        for t in 0..kk {
            gw[ch * kk + t] += gwt[t * c + ch];
        }
    }
}

#[inline(always)]
fn forward_all(n: usize, x: &[f32], w: &[f32], g: &ConvGeom, scratch: &mut [f32], out: &mut [f32]) {
    if by_planes(g) {
        planes_forward(n, x, w, g, scratch, out)
    } else {
        channels_last_forward(n, x, w, g, scratch, out)
    }
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn backward_all(
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    gw: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    if by_planes(g) {
        planes_backward(n, x, w, dy, g, scratch, gw, dx)
    } else {
        channels_last_backward(n, x, w, dy, g, scratch, gw, dx)
    }
}

/// A depthwise convolution of `n` samples ([`is_depthwise`]): assigns `out`
/// (`n x cout x ho x wo`) from `x` (`n x cin x h x w`) and the weights `[c][kh][kw]`, with
/// `scratch` of [`depthwise_scratch`]`(g, false)` floats. The same code on every tier,
/// compiled for AVX2+FMA where the tier has it.
pub fn depthwise_forward(
    tier: Tier,
    n: usize,
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    assert!(is_depthwise(g), "not a depthwise convolution");
    let (ip, op, kk) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    assert!(
        x.len() >= n * g.cin * ip
            && w.len() >= g.cin * kk
            && out.len() >= n * g.cout * op
            && scratch.len() >= depthwise_scratch(g, false),
        "depthwise buffers"
    );
    #[cfg(target_arch = "x86_64")]
    if matches!(tier, Tier::Avx2 | Tier::Avx512) && tier.supported() {
        // SAFETY: the tier has AVX2 and FMA; the code is the safe slice code below.
        unsafe { forward_avx2(n, x, w, g, scratch, out) };
        return;
    }
    let _ = tier;
    forward_all(n, x, w, g, scratch, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2(
    n: usize,
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    forward_all(n, x, w, g, scratch, out)
}

/// The gradients of a depthwise convolution for `n` samples: adds the weight gradient
/// to `gw` (`[c][kh][kw]`) and, if given, the input gradient to `dx`; `scratch` holds
/// [`depthwise_scratch`]`(g, true)` floats.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_backward(
    tier: Tier,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    gw: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    assert!(is_depthwise(g), "not a depthwise convolution");
    let (ip, op, kk) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    // (`Option::is_none_or` is newer than the crate's minimum Rust.)
    let dx_fits = match &dx {
        Some(d) => d.len() >= n * g.cin * ip,
        None => true,
    };
    assert!(
        x.len() >= n * g.cin * ip
            && w.len() >= g.cin * kk
            && dy.len() >= n * g.cout * op
            && gw.len() >= g.cin * kk
            && scratch.len() >= depthwise_scratch(g, true)
            && dx_fits,
        "depthwise buffers"
    );
    #[cfg(target_arch = "x86_64")]
    if matches!(tier, Tier::Avx2 | Tier::Avx512) && tier.supported() {
        // SAFETY: the tier has AVX2 and FMA; the code is the safe slice code below.
        unsafe { backward_avx2(n, x, w, dy, g, scratch, gw, dx) };
        return;
    }
    let _ = tier;
    backward_all(n, x, w, dy, g, scratch, gw, dx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn backward_avx2(
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    gw: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    backward_all(n, x, w, dy, g, scratch, gw, dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm;
    use crate::ops::conv::im2col::{col2im_add, im2col};
    use crate::ops::test_tiers as tiers;

    #[test]
    fn every_tiers_depthwise_convolution_equals_im2col_per_group() {
        let mut covered = Vec::new();
        for tier in tiers() {
            for (c, h, w, k, s, p, d) in [
                (4, 9, 11, 3, 1, 1, 1),
                (3, 16, 16, 3, 2, 1, 1),
                (5, 7, 13, 3, 2, 0, 1),
                (2, 10, 10, 5, 1, 2, 2),
                (6, 2, 2, 3, 1, 1, 1),
                (3, 33, 20, 3, 1, 1, 1),
                (2, 9, 12, 3, 3, 2, 1),
                (2, 8, 11, 2, 2, 0, 3),
                (3, 13, 9, 7, 1, 3, 1),
                (4, 16, 16, 3, 1, 1, 1),
                (2, 18, 17, 5, 1, 2, 1),
                (2, 12, 12, 5, 2, 2, 1),
            ] {
                let ho = (h + 2 * p - d * (k - 1) - 1) / s + 1;
                let wo = (w + 2 * p - d * (k - 1) - 1) / s + 1;
                let g = ConvGeom {
                    cin: c,
                    h,
                    w,
                    cout: c,
                    kh: k,
                    kw: k,
                    sh: s,
                    sw: s,
                    ph: p,
                    pw: p,
                    dh: d,
                    dw: d,
                    groups: c,
                    ho,
                    wo,
                };
                let x: Vec<f32> = (0..c * h * w)
                    .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                    .collect();
                let wt: Vec<f32> = (0..c * k * k)
                    .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
                    .collect();
                let dy: Vec<f32> = (0..c * ho * wo)
                    .map(|i| ((i * 29 % 89) as f32 - 44.0) / 30.0)
                    .collect();
                let (hw, kk) = (ho * wo, k * k);
                let (mut out, mut gw_ref, mut dx_ref) =
                    (vec![0.0; c * hw], vec![0.25; c * kk], vec![0.5; c * h * w]);
                let mut col = vec![0.0; kk * hw];
                for grp in 0..c {
                    im2col(&x, &g, grp, &mut col);
                    let wg = &wt[grp * kk..(grp + 1) * kk];
                    gemm(
                        1,
                        kk,
                        hw,
                        wg,
                        (kk as isize, 1),
                        &col,
                        (hw as isize, 1),
                        &mut out[grp * hw..(grp + 1) * hw],
                        (hw as isize, 1),
                        0.0,
                    );
                    let dg = &dy[grp * hw..(grp + 1) * hw];
                    gemm(
                        1,
                        hw,
                        kk,
                        dg,
                        (hw as isize, 1),
                        &col,
                        (1, hw as isize),
                        &mut gw_ref[grp * kk..(grp + 1) * kk],
                        (kk as isize, 1),
                        1.0,
                    );
                    gemm(
                        kk,
                        1,
                        hw,
                        wg,
                        (1, kk as isize),
                        dg,
                        (hw as isize, 1),
                        &mut col,
                        (hw as isize, 1),
                        0.0,
                    );
                    col2im_add(&col, &g, grp, &mut dx_ref);
                }
                let mut out2 = vec![f32::NAN; c * hw];
                let mut scr = vec![f32::NAN; depthwise_scratch(&g, false)];
                depthwise_forward(tier, 1, &x, &wt, &g, &mut scr, &mut out2);
                let (mut gw2, mut dx2) = (vec![0.25; c * kk], vec![0.5; c * h * w]);
                let mut scr = vec![f32::NAN; depthwise_scratch(&g, true)];
                depthwise_backward(
                    tier,
                    1,
                    &x,
                    &wt,
                    &dy,
                    &g,
                    &mut scr,
                    &mut gw2,
                    Some(&mut dx2),
                );
                // Without the input gradient, the same weight gradient.
                let mut gw3 = vec![0.25; c * kk];
                depthwise_backward(tier, 1, &x, &wt, &dy, &g, &mut scr, &mut gw3, None);
                assert_eq!(gw3, gw2);
                // Two samples in one call (the scratch reused, NaN at first): each
                // sample's output and input gradient, the weight gradient summed.
                let two = |v: &[f32]| [v, v].concat();
                let mut scr = vec![f32::NAN; depthwise_scratch(&g, false)];
                let mut out4 = vec![f32::NAN; 2 * c * hw];
                depthwise_forward(tier, 2, &two(&x), &wt, &g, &mut scr, &mut out4);
                assert_eq!(out4, two(&out2), "{tier} two samples forward");
                let mut scr = vec![f32::NAN; depthwise_scratch(&g, true)];
                let (mut gw4, mut dx4) = (vec![0.25; c * kk], vec![0.5; 2 * c * h * w]);
                let (xx, dd) = (two(&x), two(&dy));
                depthwise_backward(
                    tier,
                    2,
                    &xx,
                    &wt,
                    &dd,
                    &g,
                    &mut scr,
                    &mut gw4,
                    Some(&mut dx4),
                );
                assert_eq!(dx4, two(&dx2), "{tier} two samples dx");
                for (u, v) in gw4.iter().zip(&gw2) {
                    let want = 0.25 + 2.0 * (v - 0.25);
                    assert!(
                        (u - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{tier} two samples dw"
                    );
                }
                for (what, a, b) in [
                    ("out", &out2, &out),
                    ("dw", &gw2, &gw_ref),
                    ("dx", &dx2, &dx_ref),
                ] {
                    for (u, v) in a.iter().zip(b.iter()) {
                        assert!(
                            (u - v).abs() < 1e-4 * (1.0 + v.abs()),
                            "{tier} {what} c{c} {h}x{w} k{k} s{s} p{p} d{d}: {u} vs {v}"
                        );
                    }
                }
            }
            covered.push(tier.name());
        }
        eprintln!(
            "depthwise convolution tiers covered: {}",
            covered.join(", ")
        );
    }
}
