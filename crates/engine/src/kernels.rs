//! Numeric kernels on plain slices, NCHW layout. Matrix products go through
//! `matrixmultiply`; the callers split work across threads with rayon.

/// `c[m x n] = alpha * a[m x k] * b[k x n] + beta * c`, each matrix given by its row and
/// column strides.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    (rsa, csa): (isize, isize),
    b: &[f32],
    (rsb, csb): (isize, isize),
    c: &mut [f32],
    (rsc, csc): (isize, isize),
    beta: f32,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if beta == 0.0 {
            c.iter_mut().for_each(|v| *v = 0.0);
        }
        return;
    }
    // SAFETY: the callers pass slices that hold every element the strides address:
    // a holds m*k, b k*n and c m*n elements laid out by those strides.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            rsc,
            csc,
        );
    }
}

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
}

/// The output columns `[lo, hi)` whose input column `ox * stride + offset` lies inside
/// `0..width`.
fn valid_range(width: usize, out: usize, stride: usize, offset: isize) -> (usize, usize) {
    // ox * stride + offset >= 0  and  < width
    let lo = if offset >= 0 {
        0
    } else {
        ((-offset) as usize).div_ceil(stride)
    };
    let hi = if (width as isize) <= offset {
        0
    } else {
        ((width as isize - offset) as usize)
            .div_ceil(stride)
            .min(out)
    };
    (lo.min(hi), hi)
}

/// im2col of group `g` of one sample: `col[K x HoWo]`.
pub fn im2col(x: &[f32], g: &ConvGeom, group: usize, col: &mut [f32]) {
    im2col_ld(x, g, group, col, g.hw_out());
}

/// im2col of group `g` of one sample into rows `ld` floats apart: row `r` of the
/// `[K x HoWo]` matrix at `col[r * ld..r * ld + HoWo]` (the samples of a batched column
/// matrix sit side by side, each at its own offset).
pub fn im2col_ld(x: &[f32], g: &ConvGeom, group: usize, col: &mut [f32], ld: usize) {
    let cg = g.cin / g.groups;
    let hw = g.hw_out();
    let mut row = 0;
    for ci in group * cg..(group + 1) * cg {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let out = &mut col[row * ld..row * ld + hw];
                let off = (kx * g.dw) as isize - g.pw as isize;
                let (lo, hi) = valid_range(g.w, g.wo, g.sw, off);
                for oy in 0..g.ho {
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                    let dst = &mut out[oy * g.wo..(oy + 1) * g.wo];
                    if iy < 0 || iy as usize >= g.h {
                        dst.fill(0.0);
                        continue;
                    }
                    let src = &plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    dst[..lo].fill(0.0);
                    dst[hi..].fill(0.0);
                    if g.sw == 1 {
                        let s0 = (lo as isize + off) as usize;
                        dst[lo..hi].copy_from_slice(&src[s0..s0 + (hi - lo)]);
                    } else {
                        for (ox, d) in dst.iter_mut().enumerate().take(hi).skip(lo) {
                            *d = src[(ox as isize * g.sw as isize + off) as usize];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

/// The column matrix `[K x HoWo]` of group `group` of one sample: im2col into `scratch`,
/// or, for a 1x1 stride-1 convolution (no scratch), the input's own planes.
pub fn columns<'a>(
    x: &'a [f32],
    g: &ConvGeom,
    group: usize,
    scratch: Option<&'a mut [f32]>,
) -> &'a [f32] {
    match scratch {
        Some(cb) => {
            im2col(x, g, group, cb);
            cb
        }
        None => {
            let (k, hw) = (g.k(), g.hw_out());
            &x[group * k * hw..(group + 1) * k * hw]
        }
    }
}

/// Columns a batched matrix product aims for: below this many output positions per
/// sample, a convolution's samples are put side by side in one column matrix, so the
/// weights are packed once per group of samples instead of once per sample.
pub const BATCH_COLUMNS: usize = 256;

/// Samples per matrix product of a convolution (one group, not direct) whose batch
/// chunks hold `per_chunk` samples: 1 (one product per sample, the column matrix of one
/// sample) unless a sample has fewer than [`BATCH_COLUMNS`] output positions. The
/// native profile computes the same number (`conv_batch` there).
pub fn conv_batch(g: &ConvGeom, per_chunk: usize) -> usize {
    if g.groups != 1 {
        return 1;
    }
    (BATCH_COLUMNS / g.hw_out().max(1)).clamp(1, per_chunk.max(1))
}

/// Adds `col[K x HoWo]` of group `g` back into the input gradient of one sample.
pub fn col2im_add(col: &[f32], g: &ConvGeom, group: usize, dx: &mut [f32]) {
    col2im_add_ld(col, g, group, dx, g.hw_out());
}

/// [`col2im_add`] from rows `ld` floats apart (see [`im2col_ld`]).
pub fn col2im_add_ld(col: &[f32], g: &ConvGeom, group: usize, dx: &mut [f32], ld: usize) {
    let cg = g.cin / g.groups;
    let hw = g.hw_out();
    let mut row = 0;
    for ci in group * cg..(group + 1) * cg {
        let plane = &mut dx[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let src = &col[row * ld..row * ld + hw];
                let off = (kx * g.dw) as isize - g.pw as isize;
                let (lo, hi) = valid_range(g.w, g.wo, g.sw, off);
                for oy in 0..g.ho {
                    let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                    if iy < 0 || iy as usize >= g.h {
                        continue;
                    }
                    let drow = &mut plane[iy as usize * g.w..(iy as usize + 1) * g.w];
                    let srow = &src[oy * g.wo..(oy + 1) * g.wo];
                    if g.sw == 1 {
                        let s0 = (lo as isize + off) as usize;
                        for (d, v) in drow[s0..s0 + (hi - lo)].iter_mut().zip(&srow[lo..hi]) {
                            *d += v;
                        }
                    } else {
                        for ox in lo..hi {
                            drow[(ox as isize * g.sw as isize + off) as usize] += srow[ox];
                        }
                    }
                }
                row += 1;
            }
        }
    }
}

pub use vramlab_isa::Tier;

/// Columns of a direct-convolution output tile, the same for every tier that has one
/// (one AVX-512 register, two AVX2 registers).
pub const LANES: usize = 16;

/// The tier's direct convolution tile, `(columns, output channels)`, if it has one.
fn tile(tier: Tier) -> Option<(usize, usize)> {
    let t = tier.direct_tile()?;
    debug_assert_eq!(t.0, LANES);
    tier.supported().then_some(t)
}

/// Output channels of the direct convolution's tile on `tier` (the weights' blocking);
/// 1 where the tier has none.
pub fn co_block(tier: Tier) -> usize {
    tile(tier).map_or(1, |t| t.1)
}

/// Whether this process's tier ([`vramlab_isa::active`]) runs the direct convolution.
pub fn direct_available() -> bool {
    tile(vramlab_isa::active()).is_some()
}

/// Whether a convolution of this shape takes the direct path (when the CPU has it):
/// stride 1, no dilation, one group, few channels, where im2col plus a matrix product
/// spends most of its time copying.
pub fn direct_shape(g: &ConvGeom) -> bool {
    g.sh == 1
        && g.sw == 1
        && g.dh == 1
        && g.dw == 1
        && g.groups == 1
        && g.cout <= 64
        && g.cin <= 64
        && !g.is_pointwise()
        && g.ph < g.kh
        && g.pw < g.kw
}

/// Width of a zero-padded row for a direct convolution with `wo` output columns.
pub fn direct_row(wo: usize, kw: usize) -> usize {
    wo.div_ceil(LANES) * LANES + kw - 1
}

/// Floats of the blocked weights of a direct convolution on `tier`.
pub fn direct_weight_len(tier: Tier, cout: usize, cin: usize, kh: usize, kw: usize) -> usize {
    let cb = co_block(tier);
    cout.div_ceil(cb) * cb * cin * kh * kw
}

/// Re-lays weights `w[co][ci][ky][kx]` out as `[co/B][ci][ky][kx][B]` for the tile's
/// `B` output channels on `tier` (channels past `cout` zero); with `flip`, as the
/// weights of the input gradient instead: `w'[ci][co][kh-1-ky][kw-1-kx]`, blocked over
/// `ci`.
#[allow(clippy::too_many_arguments)]
pub fn direct_weights(
    tier: Tier,
    w: &[f32],
    cout: usize,
    cin: usize,
    kh: usize,
    kw: usize,
    flip: bool,
    out: &mut [f32],
) {
    let cb = co_block(tier);
    let (o, i) = if flip { (cin, cout) } else { (cout, cin) };
    out.fill(0.0);
    let kk = i * kh * kw;
    for a in 0..o {
        for b in 0..i {
            for ky in 0..kh {
                for kx in 0..kw {
                    let v = if flip {
                        w[((b * cin + a) * kh + kh - 1 - ky) * kw + kw - 1 - kx]
                    } else {
                        w[((a * cin + b) * kh + ky) * kw + kx]
                    };
                    let j = (b * kh + ky) * kw + kx;
                    out[((a / cb) * kk + j) * cb + a % cb] = v;
                }
            }
        }
    }
}

/// Copies `c` planes of `h x w` into planes of `hp x wp` at (top, left), zero around.
#[allow(clippy::too_many_arguments)]
pub fn pad_planes(
    src: &[f32],
    c: usize,
    h: usize,
    w: usize,
    top: usize,
    left: usize,
    hp: usize,
    wp: usize,
    dst: &mut [f32],
) {
    dst[..c * hp * wp].fill(0.0);
    for ch in 0..c {
        for y in 0..h {
            let d0 = ch * hp * wp + (y + top) * wp + left;
            dst[d0..d0 + w].copy_from_slice(&src[ch * h * w + y * w..ch * h * w + (y + 1) * w]);
        }
    }
}

/// Direct stride-1 convolution of one sample on `tier`: `out[co][oy][ox] = sum over ci,
/// ky, kx of w[co][ci][ky][kx] * xp[ci][oy+ky][ox+kx]`, over a zero-padded input `xp`
/// (`cin` planes of `hp x wp`, `wp >= direct_row(wo, kw)`) and blocked weights from
/// [`direct_weights`] for the same tier. Assigns `out` (`cout x ho x wo`). Panics when
/// the tier has no direct convolution or this CPU lacks it.
#[allow(clippy::too_many_arguments)]
pub fn conv_direct(
    tier: Tier,
    xp: &[f32],
    cin: usize,
    hp: usize,
    wp: usize,
    wb: &[f32],
    cout: usize,
    kh: usize,
    kw: usize,
    out: &mut [f32],
    ho: usize,
    wo: usize,
) {
    assert!(
        tile(tier).is_some(),
        "conv_direct: no direct convolution on {tier}"
    );
    assert!(
        wp >= direct_row(wo, kw) && hp >= ho + kh - 1 && xp.len() >= cin * hp * wp,
        "padded input too small"
    );
    assert!(
        wb.len() >= direct_weight_len(tier, cout, cin, kh, kw) && out.len() >= cout * ho * wo,
        "buffers too small"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the tier is supported by this CPU (`tile` checks); the asserts above bound
    // every load and store: rows are read at most `direct_row(wo, kw)` floats wide inside
    // `wp`, stores are limited to `wo` columns and `cout` channels.
    unsafe {
        let (xp, wb, out) = (xp.as_ptr(), wb.as_ptr(), out.as_mut_ptr());
        match tier {
            Tier::Avx512 => direct_avx512(xp, cin, hp, wp, wb, cout, kh, kw, out, ho, wo),
            Tier::Avx2 => direct_avx2(xp, cin, hp, wp, wb, cout, kh, kw, out, ho, wo),
            Tier::Scalar | Tier::Neon => unreachable!("no direct tile"),
        }
    }
    #[cfg(target_arch = "aarch64")]
    // SAFETY: as above; NEON is aarch64's baseline, and the only tier with a tile here.
    unsafe {
        let (xp, wb, out) = (xp.as_ptr(), wb.as_ptr(), out.as_mut_ptr());
        match tier {
            Tier::Neon => direct_neon(xp, cin, hp, wp, wb, cout, kh, kw, out, ho, wo),
            Tier::Scalar | Tier::Avx2 | Tier::Avx512 => unreachable!("no direct tile"),
        }
    }
}

/// The NEON direct convolution: a tile of 16 columns (four 4-lane registers) by 6
/// output channels, 24 accumulators; each weight is loaded once and used for the four.
/// Rows are read 16 columns wide (inside the padded row, as on x86); a tile narrower
/// than 16 columns is stored through a small buffer.
#[cfg(target_arch = "aarch64")]
#[allow(clippy::too_many_arguments)]
unsafe fn direct_neon(
    xp: *const f32,
    cin: usize,
    hp: usize,
    wp: usize,
    wb: *const f32,
    cout: usize,
    kh: usize,
    kw: usize,
    out: *mut f32,
    ho: usize,
    wo: usize,
) {
    use std::arch::aarch64::*;
    const CB: usize = 6;
    let kk = cin * kh * kw;
    for blk in 0..cout.div_ceil(CB) {
        let wblk = wb.add(blk * kk * CB);
        let cb = CB.min(cout - blk * CB);
        for oy in 0..ho {
            let mut ox0 = 0;
            while ox0 < wo {
                let n = LANES.min(wo - ox0);
                let mut acc = [[vdupq_n_f32(0.0); 4]; CB];
                let mut wj = wblk;
                for ci in 0..cin {
                    for ky in 0..kh {
                        let row = xp.add((ci * hp + oy + ky) * wp + ox0);
                        for kx in 0..kw {
                            let r = row.add(kx);
                            let x = [
                                vld1q_f32(r),
                                vld1q_f32(r.add(4)),
                                vld1q_f32(r.add(8)),
                                vld1q_f32(r.add(12)),
                            ];
                            for (c, a) in acc.iter_mut().enumerate() {
                                let wv = vdupq_n_f32(*wj.add(c));
                                for q in 0..4 {
                                    a[q] = vfmaq_f32(a[q], x[q], wv);
                                }
                            }
                            wj = wj.add(CB);
                        }
                    }
                }
                let base = out.add((blk * CB) * ho * wo + oy * wo + ox0);
                for (c, a) in acc.iter().enumerate().take(cb) {
                    let dst = base.add(c * ho * wo);
                    if n == LANES {
                        for (q, v) in a.iter().enumerate() {
                            vst1q_f32(dst.add(4 * q), *v);
                        }
                    } else {
                        let mut tmp = [0f32; LANES];
                        for (q, v) in a.iter().enumerate() {
                            vst1q_f32(tmp.as_mut_ptr().add(4 * q), *v);
                        }
                        std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, n);
                    }
                }
                ox0 += LANES;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn direct_avx512(
    xp: *const f32,
    cin: usize,
    hp: usize,
    wp: usize,
    wb: *const f32,
    cout: usize,
    kh: usize,
    kw: usize,
    out: *mut f32,
    ho: usize,
    wo: usize,
) {
    use std::arch::x86_64::*;
    const CB: usize = 8;
    let kk = cin * kh * kw;
    for blk in 0..cout.div_ceil(CB) {
        let wblk = wb.add(blk * kk * CB);
        let cb = CB.min(cout - blk * CB);
        for oy in 0..ho {
            let mut ox0 = 0;
            while ox0 < wo {
                let mut acc = [_mm512_setzero_ps(); CB];
                let mut j = 0;
                for ci in 0..cin {
                    for ky in 0..kh {
                        let row = xp.add((ci * hp + oy + ky) * wp + ox0);
                        for kx in 0..kw {
                            let xv = _mm512_loadu_ps(row.add(kx));
                            let w8 = wblk.add(j * CB);
                            for (c, a) in acc.iter_mut().enumerate() {
                                *a = _mm512_fmadd_ps(_mm512_set1_ps(*w8.add(c)), xv, *a);
                            }
                            j += 1;
                        }
                    }
                }
                let n = LANES.min(wo - ox0);
                let mask: __mmask16 = if n == LANES { 0xffff } else { (1u16 << n) - 1 };
                for (c, a) in acc.iter().enumerate().take(cb) {
                    let dst = out.add((blk * CB + c) * ho * wo + oy * wo + ox0);
                    _mm512_mask_storeu_ps(dst, mask, *a);
                }
                ox0 += LANES;
            }
        }
    }
}

/// The AVX2+FMA direct convolution: a tile of 16 columns (two ymm) by 6 output channels,
/// twelve accumulators, each weight broadcast once and used for both halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn direct_avx2(
    xp: *const f32,
    cin: usize,
    hp: usize,
    wp: usize,
    wb: *const f32,
    cout: usize,
    kh: usize,
    kw: usize,
    out: *mut f32,
    ho: usize,
    wo: usize,
) {
    use std::arch::x86_64::*;
    const CB: usize = 6;
    let kk = cin * kh * kw;
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for blk in 0..cout.div_ceil(CB) {
        let wblk = wb.add(blk * kk * CB);
        let cb = CB.min(cout - blk * CB);
        for oy in 0..ho {
            let mut ox0 = 0;
            while ox0 < wo {
                let n = LANES.min(wo - ox0);
                let base = out.add((blk * CB) * ho * wo + oy * wo + ox0);
                if n <= 8 {
                    // A narrow tail: one register of columns.
                    let mut acc = [_mm256_setzero_ps(); CB];
                    let mut wj = wblk;
                    for ci in 0..cin {
                        for ky in 0..kh {
                            let row = xp.add((ci * hp + oy + ky) * wp + ox0);
                            for kx in 0..kw {
                                let x0 = _mm256_loadu_ps(row.add(kx));
                                for (c, a) in acc.iter_mut().enumerate() {
                                    *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*wj.add(c)), x0, *a);
                                }
                                wj = wj.add(CB);
                            }
                        }
                    }
                    let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane);
                    for (c, a) in acc.iter().enumerate().take(cb) {
                        _mm256_maskstore_ps(base.add(c * ho * wo), m, *a);
                    }
                } else {
                    let mut lo = [_mm256_setzero_ps(); CB];
                    let mut hi = [_mm256_setzero_ps(); CB];
                    let mut wj = wblk;
                    for ci in 0..cin {
                        for ky in 0..kh {
                            let row = xp.add((ci * hp + oy + ky) * wp + ox0);
                            for kx in 0..kw {
                                let x0 = _mm256_loadu_ps(row.add(kx));
                                let x1 = _mm256_loadu_ps(row.add(kx + 8));
                                for c in 0..CB {
                                    let wv = _mm256_broadcast_ss(&*wj.add(c));
                                    lo[c] = _mm256_fmadd_ps(wv, x0, lo[c]);
                                    hi[c] = _mm256_fmadd_ps(wv, x1, hi[c]);
                                }
                                wj = wj.add(CB);
                            }
                        }
                    }
                    let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32 - 8), lane);
                    for c in 0..cb {
                        let dst = base.add(c * ho * wo);
                        _mm256_storeu_ps(dst, lo[c]);
                        _mm256_maskstore_ps(dst.add(8), m, hi[c]);
                    }
                }
                ox0 += LANES;
            }
        }
    }
}

/// Whether `tier` computes the weight gradient of a direct-shaped convolution directly
/// (over a padded input, no im2col and no matrix packing): [`Tier::direct_wgrad`].
pub fn direct_wgrad(tier: Tier) -> bool {
    tier.direct_wgrad() && tier.supported()
}

/// Adds the weight gradient of one sample of a stride-1 convolution to `pw`:
/// `pw[co][ci][ky][kx] += sum over oy, ox of dy[co][oy][ox] * xp[ci][oy+ky][ox+kx]`,
/// over the zero-padded input `xp` of the forward pass (`cin` planes of `hp x wp`,
/// `wp >= direct_row(wo, kw)`). Panics where [`direct_wgrad`] is false for `tier`.
#[allow(clippy::too_many_arguments)]
pub fn conv_wgrad_direct(
    tier: Tier,
    xp: &[f32],
    cin: usize,
    hp: usize,
    wp: usize,
    dy: &[f32],
    cout: usize,
    ho: usize,
    wo: usize,
    kh: usize,
    kw: usize,
    pw: &mut [f32],
) {
    assert!(direct_wgrad(tier), "conv_wgrad_direct: not on {tier}");
    assert!(
        wp >= direct_row(wo, kw) && hp >= ho + kh - 1 && xp.len() >= cin * hp * wp,
        "padded input too small"
    );
    assert!(
        dy.len() >= cout * ho * wo && pw.len() >= cout * cin * kh * kw && kw >= 1 && cout >= 1,
        "buffers too small"
    );
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and FMA are present (`direct_wgrad` checks the tier is supported, and
    // both x86 tiers that have it include AVX2+FMA). Reads of `xp` stay inside each
    // padded row: at most column kw-1 + round8(wo) - 1 < direct_row(wo, kw) <= wp; reads
    // of `dy` are masked past `wo`; writes go to `pw[..cout*cin*kh*kw]` (asserted).
    unsafe {
        let (xp, dy, pw) = (xp.as_ptr(), dy.as_ptr(), pw.as_mut_ptr());
        if kw == 5 {
            wgrad_avx2::<2, 5>(xp, cin, hp, wp, dy, cout, ho, wo, kh, kw, pw)
        } else {
            wgrad_avx2::<3, 3>(xp, cin, hp, wp, dy, cout, ho, wo, kh, kw, pw)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps::<1>(s, s)))
}

/// The AVX2+FMA weight gradient: `CO` output channels by `KX` kernel columns of
/// accumulators (eight output columns each), streamed over the whole output plane, then
/// summed across lanes once.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn wgrad_avx2<const CO: usize, const KX: usize>(
    xp: *const f32,
    cin: usize,
    hp: usize,
    wp: usize,
    dy: *const f32,
    cout: usize,
    ho: usize,
    wo: usize,
    kh: usize,
    kw: usize,
    pw: *mut f32,
) {
    use std::arch::x86_64::*;
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let full = wo / 8 * 8;
    let rem = wo - full;
    let mrem = _mm256_cmpgt_epi32(_mm256_set1_epi32(rem as i32), lane);
    let kk = kh * kw;
    let mut co0 = 0;
    while co0 < cout {
        let cb = CO.min(cout - co0);
        // Channels past `cout` read the last one again; their sums are dropped.
        let mut dyp = [dy; CO];
        for (c, d) in dyp.iter_mut().enumerate() {
            *d = dy.add((co0 + c.min(cb - 1)) * ho * wo);
        }
        for ci in 0..cin {
            for ky in 0..kh {
                let mut kx0 = 0;
                while kx0 < kw {
                    let kb = KX.min(kw - kx0);
                    let mut acc = [[_mm256_setzero_ps(); KX]; CO];
                    for oy in 0..ho {
                        let xrow = xp.add((ci * hp + oy + ky) * wp + kx0);
                        let mut ox = 0;
                        while ox < full {
                            let mut d = [_mm256_setzero_ps(); CO];
                            for c in 0..CO {
                                d[c] = _mm256_loadu_ps(dyp[c].add(oy * wo + ox));
                            }
                            for j in 0..KX {
                                let xv = _mm256_loadu_ps(xrow.add(ox + j.min(kb - 1)));
                                for c in 0..CO {
                                    acc[c][j] = _mm256_fmadd_ps(d[c], xv, acc[c][j]);
                                }
                            }
                            ox += 8;
                        }
                        if rem > 0 {
                            let mut d = [_mm256_setzero_ps(); CO];
                            for c in 0..CO {
                                d[c] = _mm256_maskload_ps(dyp[c].add(oy * wo + ox), mrem);
                            }
                            for j in 0..KX {
                                let xv = _mm256_loadu_ps(xrow.add(ox + j.min(kb - 1)));
                                for c in 0..CO {
                                    acc[c][j] = _mm256_fmadd_ps(d[c], xv, acc[c][j]);
                                }
                            }
                        }
                    }
                    for (c, row) in acc.iter().enumerate().take(cb) {
                        let dst = pw.add((co0 + c) * cin * kk + ci * kk + ky * kw + kx0);
                        for (j, a) in row.iter().enumerate().take(kb) {
                            *dst.add(j) += hsum256(*a);
                        }
                    }
                    kx0 += KX;
                }
            }
        }
        co0 += CO;
    }
}

/// Whether a convolution is depthwise (one input and one output channel per group):
/// the engine runs it plane by plane with the `depthwise_*` kernels, no im2col and no
/// matrix product, and no scratch besides the weight-gradient partials.
pub fn is_depthwise(g: &ConvGeom) -> bool {
    g.groups > 1 && g.groups == g.cin && g.groups == g.cout
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

/// Floats of scratch per batch chunk a depthwise convolution uses: the phases and the
/// flat output forward; in backward also the phases of the input gradient. The native
/// profile computes the same (`depthwise_scratch` there).
pub fn depthwise_scratch(g: &ConvGeom, backward: bool) -> usize {
    let l = DwLayout::new(g);
    l.phases(g) * if backward { 2 } else { 1 } + l.flat(g)
}

#[inline(always)]
fn dw_fill_phases(x: &[f32], g: &ConvGeom, l: &DwLayout, ph: &mut [f32]) {
    ph[..l.phases(g)].fill(0.0);
    for iy in 0..g.h {
        let row = &x[iy * g.w..(iy + 1) * g.w];
        if g.sw == 1 {
            let d0 = (iy + g.ph) * l.wq + g.pw;
            ph[d0..d0 + g.w].copy_from_slice(row);
        } else {
            for (ix, &v) in row.iter().enumerate() {
                let c = ix + g.pw;
                ph[((c % g.sw) * l.hp + iy + g.ph) * l.wq + c / g.sw] = v;
            }
        }
    }
}

#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (u, v) in y.iter_mut().zip(x) {
        *u += a * v;
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

#[inline(always)]
fn dw_forward_plane(x: &[f32], w: &[f32], g: &ConvGeom, scratch: &mut [f32], out: &mut [f32]) {
    let l = DwLayout::new(g);
    let (ph, y) = scratch.split_at_mut(l.phases(g));
    dw_fill_phases(x, g, &l, ph);
    let y = &mut y[..l.len];
    y.fill(0.0);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let t = l.tap(g, ky, kx);
            axpy(y, w[ky * g.kw + kx], &ph[t..t + l.len]);
        }
    }
    for oy in 0..g.ho {
        let at = oy * g.sh * l.wq;
        out[oy * g.wo..(oy + 1) * g.wo].copy_from_slice(&y[at..at + g.wo]);
    }
}

#[inline(always)]
fn dw_backward_plane(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    gw: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    let l = DwLayout::new(g);
    let np = l.phases(g);
    let (ph, rest) = scratch.split_at_mut(np);
    let (dph, gf) = rest.split_at_mut(np);
    dw_fill_phases(x, g, &l, ph);
    // The output gradient in the flat layout, zero past `wo` in each row.
    let gf = &mut gf[..l.len];
    gf.fill(0.0);
    for oy in 0..g.ho {
        let at = oy * g.sh * l.wq;
        gf[at..at + g.wo].copy_from_slice(&dy[oy * g.wo..(oy + 1) * g.wo]);
    }
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let t = l.tap(g, ky, kx);
            gw[ky * g.kw + kx] += dot8(gf, &ph[t..t + l.len]);
        }
    }
    let Some(dx) = dx else { return };
    dph.fill(0.0);
    for ky in 0..g.kh {
        for kx in 0..g.kw {
            let t = l.tap(g, ky, kx);
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
            for (ix, d) in row.iter_mut().enumerate() {
                let c = ix + g.pw;
                *d += dph[((c % g.sw) * l.hp + iy + g.ph) * l.wq + c / g.sw];
            }
        }
    }
}

/// A depthwise convolution of one sample ([`is_depthwise`]): assigns `out`
/// (`cout x ho x wo`) from `x` (`cin x h x w`) and the weights `[c][kh][kw]`, with
/// `scratch` of [`depthwise_scratch`]`(g, false)` floats. The same code on every tier,
/// compiled for AVX2+FMA where the tier has it.
pub fn depthwise_forward(
    tier: Tier,
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    assert!(is_depthwise(g), "not a depthwise convolution");
    let (ip, op, kk) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    assert!(
        x.len() >= g.cin * ip
            && w.len() >= g.cin * kk
            && out.len() >= g.cout * op
            && scratch.len() >= depthwise_scratch(g, false),
        "depthwise buffers"
    );
    #[cfg(target_arch = "x86_64")]
    if matches!(tier, Tier::Avx2 | Tier::Avx512) && tier.supported() {
        // SAFETY: the tier has AVX2 and FMA; the code is the safe slice code below.
        unsafe { dw_forward_avx2(x, w, g, scratch, out) };
        return;
    }
    let _ = tier;
    dw_forward_all(x, w, g, scratch, out)
}

#[inline(always)]
fn dw_forward_all(x: &[f32], w: &[f32], g: &ConvGeom, scratch: &mut [f32], out: &mut [f32]) {
    let (ip, op, kk) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    for c in 0..g.cin {
        dw_forward_plane(&x[c * ip..], &w[c * kk..], g, scratch, &mut out[c * op..]);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_forward_avx2(
    x: &[f32],
    w: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    out: &mut [f32],
) {
    dw_forward_all(x, w, g, scratch, out)
}

/// The gradients of a depthwise convolution for one sample: adds the weight gradient
/// to `gw` (`[c][kh][kw]`) and, if given, the input gradient to `dx`; `scratch` holds
/// [`depthwise_scratch`]`(g, true)` floats.
#[allow(clippy::too_many_arguments)]
pub fn depthwise_backward(
    tier: Tier,
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
        Some(d) => d.len() >= g.cin * ip,
        None => true,
    };
    assert!(
        x.len() >= g.cin * ip
            && w.len() >= g.cin * kk
            && dy.len() >= g.cout * op
            && gw.len() >= g.cin * kk
            && scratch.len() >= depthwise_scratch(g, true)
            && dx_fits,
        "depthwise buffers"
    );
    #[cfg(target_arch = "x86_64")]
    if matches!(tier, Tier::Avx2 | Tier::Avx512) && tier.supported() {
        // SAFETY: the tier has AVX2 and FMA; the code is the safe slice code below.
        unsafe { dw_backward_avx2(x, w, dy, g, scratch, gw, dx) };
        return;
    }
    let _ = tier;
    dw_backward_all(x, w, dy, g, scratch, gw, dx)
}

#[inline(always)]
fn dw_backward_all(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    gw: &mut [f32],
    mut dx: Option<&mut [f32]>,
) {
    let (ip, op, kk) = (g.h * g.w, g.ho * g.wo, g.kh * g.kw);
    for c in 0..g.cin {
        dw_backward_plane(
            &x[c * ip..],
            &w[c * kk..],
            &dy[c * op..],
            g,
            scratch,
            &mut gw[c * kk..],
            dx.as_deref_mut().map(|d| &mut d[c * ip..]),
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dw_backward_avx2(
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    g: &ConvGeom,
    scratch: &mut [f32],
    gw: &mut [f32],
    dx: Option<&mut [f32]>,
) {
    dw_backward_all(x, w, dy, g, scratch, gw, dx)
}

/// 2x2 max-pooling with stride 2 of one plane (`src` is `h x w`, outputs `ho x wo`):
/// the maximum and its flat index in the plane. PyTorch keeps the first maximum in scan
/// order, and NaN wins. Runs `tier`'s vector code where it has one (AVX-512, AVX2).
pub fn maxpool2x2_plane(
    tier: Tier,
    src: &[f32],
    w: usize,
    ho: usize,
    wo: usize,
    out: &mut [f32],
    idx: &mut [i64],
) {
    assert!(
        src.len() >= 2 * ho * w && 2 * wo <= w && out.len() >= ho * wo && idx.len() >= ho * wo,
        "plane sizes"
    );
    assert!(tier.supported(), "maxpool2x2_plane: this CPU has no {tier}");
    // The vector code computes flat indices in 32 bits.
    let small = 2 * ho * w <= i32::MAX as usize;
    #[cfg(target_arch = "x86_64")]
    match tier {
        // SAFETY: the tier is present (asserted); the assert bounds every row read
        // (2*wo <= w floats of rows 2*oy and 2*oy+1 < 2*ho) and every write (ho*wo
        // outputs), and the loads and stores below stay inside those bounds.
        Tier::Avx512 if small => return unsafe { maxpool2x2_avx512(src, w, ho, wo, out, idx) },
        Tier::Avx2 if small => return unsafe { maxpool2x2_avx2(src, w, ho, wo, out, idx) },
        _ => {}
    }
    let _ = small;
    maxpool2x2_scalar(src, w, ho, wo, out, idx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn maxpool2x2_avx512(
    src: &[f32],
    w: usize,
    ho: usize,
    wo: usize,
    out: &mut [f32],
    idx: &mut [i64],
) {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    let (one, two, three) = (
        _mm512_set1_epi32(1),
        _mm512_set1_epi32(2),
        _mm512_set1_epi32(3),
    );
    for oy in 0..ho {
        let (p0, p1) = (
            src.as_ptr().add(2 * oy * w),
            src.as_ptr().add((2 * oy + 1) * w),
        );
        let mut ox0 = 0;
        while ox0 < wo {
            let n = (wo - ox0).min(16);
            // 2n floats of each row, as two masked halves of 16.
            let m_lo: __mmask16 = if 2 * n >= 16 {
                0xffff
            } else {
                ((1u32 << (2 * n)) - 1) as u16
            };
            let m_hi: __mmask16 = if 2 * n > 16 {
                ((1u32 << (2 * n - 16)) - 1) as u16
            } else {
                0
            };
            let r0 = (
                _mm512_maskz_loadu_ps(m_lo, p0.add(2 * ox0)),
                _mm512_maskz_loadu_ps(m_hi, p0.add(2 * ox0 + 16)),
            );
            let r1 = (
                _mm512_maskz_loadu_ps(m_lo, p1.add(2 * ox0)),
                _mm512_maskz_loadu_ps(m_hi, p1.add(2 * ox0 + 16)),
            );
            let a0 = _mm512_permutex2var_ps(r0.0, even, r0.1);
            let a1 = _mm512_permutex2var_ps(r0.0, odd, r0.1);
            let b0 = _mm512_permutex2var_ps(r1.0, even, r1.1);
            let b1 = _mm512_permutex2var_ps(r1.0, odd, r1.1);
            let mut best = a0;
            let mut at = _mm512_setzero_si512();
            for (v, k) in [(a1, one), (b0, two), (b1, three)] {
                let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best)
                    | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                best = _mm512_mask_blend_ps(take, best, v);
                at = _mm512_mask_blend_epi32(take, at, k);
            }
            let m: __mmask16 = if n == 16 {
                0xffff
            } else {
                ((1u32 << n) - 1) as u16
            };
            _mm512_mask_storeu_ps(out.as_mut_ptr().add(oy * wo + ox0), m, best);
            // Flat index: 2*oy*w + 2*(ox0+lane) + (at & 1) + (at >> 1) * w.
            let col = _mm512_slli_epi32::<1>(_mm512_add_epi32(lane, _mm512_set1_epi32(ox0 as i32)));
            let off = _mm512_add_epi32(
                _mm512_and_si512(at, one),
                _mm512_mullo_epi32(_mm512_srli_epi32::<1>(at), _mm512_set1_epi32(w as i32)),
            );
            let flat = _mm512_add_epi32(
                _mm512_add_epi32(col, off),
                _mm512_set1_epi32((2 * oy * w) as i32),
            );
            let lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(flat));
            let hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64::<1>(flat));
            let dst = idx.as_mut_ptr().add(oy * wo + ox0);
            _mm512_mask_storeu_epi64(dst, (m & 0xff) as u8, lo);
            _mm512_mask_storeu_epi64(dst.add(8), (m >> 8) as u8, hi);
            ox0 += 16;
        }
    }
}

/// 16 floats at `p` as their even and odd columns, in order; with `n < 8`, only the
/// first `2n` floats are read (the rest are zero).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn split_even_odd(
    p: *const f32,
    n: usize,
) -> (std::arch::x86_64::__m256, std::arch::x86_64::__m256) {
    use std::arch::x86_64::*;
    let (l, h) = if n >= 8 {
        (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
    } else {
        let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
        let m_lo = _mm256_cmpgt_epi32(_mm256_set1_epi32((2 * n).min(8) as i32), lane);
        let m_hi = _mm256_cmpgt_epi32(_mm256_set1_epi32(2 * n as i32 - 8), lane);
        (
            _mm256_maskload_ps(p, m_lo),
            _mm256_maskload_ps(p.add(8), m_hi),
        )
    };
    // [l0 l2 h0 h2 | l4 l6 h4 h6] -> [l0 l2 l4 l6 h0 h2 h4 h6]
    let e = _mm256_shuffle_ps::<0b10_00_10_00>(l, h);
    let o = _mm256_shuffle_ps::<0b11_01_11_01>(l, h);
    (
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e))),
        _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(o))),
    )
}

/// The AVX2 2x2 max-pool: eight outputs at a time (two rows of 16 floats, split into
/// even and odd columns), compares and blends; the last `wo % 8` outputs of a row with
/// masked loads and stores.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn maxpool2x2_avx2(
    src: &[f32],
    w: usize,
    ho: usize,
    wo: usize,
    out: &mut [f32],
    idx: &mut [i64],
) {
    use std::arch::x86_64::*;
    let lane2 = _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14);
    let one = _mm256_set1_epi32(1);
    let wv = _mm256_set1_epi32(w as i32);
    let ks = [one, _mm256_set1_epi32(2), _mm256_set1_epi32(3)];
    for oy in 0..ho {
        let (p0, p1) = (
            src.as_ptr().add(2 * oy * w),
            src.as_ptr().add((2 * oy + 1) * w),
        );
        let row0 = _mm256_set1_epi32((2 * oy * w) as i32);
        let mut ox0 = 0;
        while ox0 < wo {
            let n = (wo - ox0).min(8);
            let (a0, a1) = split_even_odd(p0.add(2 * ox0), n);
            let (b0, b1) = split_even_odd(p1.add(2 * ox0), n);
            let mut best = a0;
            let mut at = _mm256_setzero_si256();
            for (v, k) in [a1, b0, b1].into_iter().zip(ks) {
                let take = _mm256_or_ps(
                    _mm256_cmp_ps::<_CMP_GT_OQ>(v, best),
                    _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v),
                );
                best = _mm256_blendv_ps(best, v, take);
                at = _mm256_castps_si256(_mm256_blendv_ps(
                    _mm256_castsi256_ps(at),
                    _mm256_castsi256_ps(k),
                    take,
                ));
            }
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let m = _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), lane);
            _mm256_maskstore_ps(out.as_mut_ptr().add(oy * wo + ox0), m, best);
            // Flat index: 2*oy*w + 2*ox0 + 2*lane + (at & 1) + (at >> 1) * w.
            let flat = _mm256_add_epi32(
                _mm256_add_epi32(row0, _mm256_set1_epi32(2 * ox0 as i32)),
                _mm256_add_epi32(
                    _mm256_add_epi32(lane2, _mm256_and_si256(at, one)),
                    _mm256_mullo_epi32(_mm256_srli_epi32::<1>(at), wv),
                ),
            );
            let dst = idx.as_mut_ptr().add(oy * wo + ox0);
            let l4 = _mm256_setr_epi64x(0, 1, 2, 3);
            let m_lo = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n as i64), l4);
            let m_hi = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n as i64 - 4), l4);
            _mm256_maskstore_epi64(
                dst,
                m_lo,
                _mm256_cvtepi32_epi64(_mm256_castsi256_si128(flat)),
            );
            _mm256_maskstore_epi64(
                dst.add(4),
                m_hi,
                _mm256_cvtepi32_epi64(_mm256_extracti128_si256::<1>(flat)),
            );
            ox0 += 8;
        }
    }
}

fn maxpool2x2_scalar(
    src: &[f32],
    w: usize,
    ho: usize,
    wo: usize,
    out: &mut [f32],
    idx: &mut [i64],
) {
    for oy in 0..ho {
        maxpool2x2_row(src, w, oy, 0..wo, out, idx);
    }
}

/// Outputs `cols` of output row `oy`; `cols.end` is the output width `wo`.
fn maxpool2x2_row(
    src: &[f32],
    w: usize,
    oy: usize,
    cols: std::ops::Range<usize>,
    out: &mut [f32],
    idx: &mut [i64],
) {
    let wo = cols.end;
    let r0 = &src[2 * oy * w..2 * oy * w + 2 * wo];
    let r1 = &src[(2 * oy + 1) * w..(2 * oy + 1) * w + 2 * wo];
    let orow = &mut out[oy * wo..(oy + 1) * wo];
    let irow = &mut idx[oy * wo..(oy + 1) * wo];
    let w64 = w as i64;
    for ox in cols {
        let (a, b) = (&r0[2 * ox..2 * ox + 2], &r1[2 * ox..2 * ox + 2]);
        let base = (2 * oy * w + 2 * ox) as i64;
        let (mut best, mut at) = (a[0], base);
        for (v, k) in [(a[1], base + 1), (b[0], base + w64), (b[1], base + w64 + 1)] {
            // Arithmetic selects: data-dependent branches mispredict half the time on
            // real activations.
            let take = ((v > best) | v.is_nan()) as u32;
            let m = take.wrapping_neg();
            best = f32::from_bits((v.to_bits() & m) | (best.to_bits() & !m));
            at += (take as i64) * (k - at);
        }
        orow[ox] = best;
        irow[ox] = at;
    }
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

/// Window `[start, end)` of adaptive pooling output index `i` (PyTorch's rule).
pub fn adaptive_window(i: usize, input: usize, output: usize) -> (usize, usize) {
    let start = (i * input) / output;
    let end = ((i + 1) * input).div_ceil(output);
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiers this CPU runs, and a check that a tier the CPU has was covered: a test
    /// over tiers cannot pass on a tier it skipped.
    fn tiers() -> Vec<Tier> {
        let t = vramlab_isa::available();
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                assert!(t.contains(&Tier::Avx2), "AVX2+FMA present but not tested");
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                assert!(t.contains(&Tier::Avx512), "AVX-512 present but not tested");
            }
        }
        #[cfg(target_arch = "aarch64")]
        assert!(t.contains(&Tier::Neon), "NEON present but not tested");
        t
    }

    #[test]
    fn every_tiers_2x2_max_pool_equals_the_scalar_one_with_ties_and_nans() {
        let mut covered = Vec::new();
        for tier in tiers() {
            for (h, w) in [
                (28, 28),
                (10, 10),
                (4, 40),
                (2, 2),
                (7, 9),
                (32, 33),
                (6, 70),
            ] {
                let (ho, wo) = (h / 2, w / 2);
                let mut src: Vec<f32> =
                    (0..h * w).map(|i| ((i * 7919) % 13) as f32 - 6.0).collect();
                src[3] = f32::NAN;
                if src.len() > 40 {
                    src[40] = src[41];
                    src[2 * w + 5] = f32::NAN;
                    src[3 * w + 5] = f32::NAN;
                    src[w + 17.min(w - 1)] = 100.0;
                }
                let (mut o1, mut i1) = (vec![0.0; ho * wo], vec![0i64; ho * wo]);
                let (mut o2, mut i2) = (vec![0.0; ho * wo], vec![0i64; ho * wo]);
                maxpool2x2_plane(tier, &src, w, ho, wo, &mut o1, &mut i1);
                maxpool2x2_scalar(&src, w, ho, wo, &mut o2, &mut i2);
                assert_eq!(i1, i2, "{tier} {h}x{w}");
                for (a, b) in o1.iter().zip(&o2) {
                    assert!(
                        a == b || (a.is_nan() && b.is_nan()),
                        "{tier} {h}x{w}: {a} vs {b}"
                    );
                }
            }
            covered.push(tier.name());
        }
        eprintln!("2x2 max-pool tiers covered: {}", covered.join(", "));
    }

    #[test]
    fn every_tiers_direct_convolution_and_its_flipped_form_equal_the_scalar_definition() {
        let (mut covered, mut wgrad) = (Vec::new(), Vec::new());
        for tier in tiers().into_iter().filter(|t| t.direct_tile().is_some()) {
            direct_against_im2col(tier, &mut wgrad);
            covered.push(tier.name());
        }
        eprintln!(
            "direct convolution tiers covered: {}",
            if covered.is_empty() {
                "none (this CPU has no tier with one)".to_string()
            } else {
                covered.join(", ")
            }
        );
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            assert!(covered.contains(&"avx2") && wgrad.contains(&"avx2"));
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            assert!(covered.contains(&"avx512") && wgrad.contains(&"avx512"));
        }
        #[cfg(target_arch = "aarch64")]
        assert!(covered.contains(&"neon"));
        wgrad.dedup();
        eprintln!("direct weight gradient tiers covered: {}", wgrad.join(", "));
    }

    fn direct_against_im2col(tier: Tier, wgrad_covered: &mut Vec<&'static str>) {
        for (cin, h, w, cout, k, p) in [
            (3, 32, 32, 6, 5, 0),
            (6, 14, 14, 16, 5, 0),
            (2, 7, 9, 11, 3, 1),
            (1, 28, 28, 6, 5, 2),
            (9, 5, 37, 17, 3, 1),
            (16, 8, 8, 64, 3, 1),
            (5, 6, 40, 7, 3, 2),
            (4, 3, 3, 13, 2, 0),
        ] {
            let (ho, wo) = (h + 2 * p - k + 1, w + 2 * p - k + 1);
            let g = ConvGeom {
                cin,
                h,
                w,
                cout,
                kh: k,
                kw: k,
                sh: 1,
                sw: 1,
                ph: p,
                pw: p,
                dh: 1,
                dw: 1,
                groups: 1,
                ho,
                wo,
            };
            let x: Vec<f32> = (0..cin * h * w)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let wt: Vec<f32> = (0..cout * g.k())
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0)
                .collect();
            let mut col = vec![0.0; g.k() * g.hw_out()];
            im2col(&x, &g, 0, &mut col);
            let mut expect = vec![0.0; cout * g.hw_out()];
            gemm(
                cout,
                g.k(),
                g.hw_out(),
                &wt,
                (g.k() as isize, 1),
                &col,
                (g.hw_out() as isize, 1),
                &mut expect,
                (g.hw_out() as isize, 1),
                0.0,
            );
            let (hp, wp) = (h + 2 * p, direct_row(wo, k));
            let mut xp = vec![f32::NAN; cin * hp * wp];
            pad_planes(&x, cin, h, w, p, p, hp, wp, &mut xp);
            let mut wb = vec![f32::NAN; direct_weight_len(tier, cout, cin, k, k)];
            direct_weights(tier, &wt, cout, cin, k, k, false, &mut wb);
            // One extra float past the output: it must stay untouched.
            let mut out = vec![f32::NAN; cout * ho * wo + 1];
            out[cout * ho * wo] = 7.0;
            conv_direct(tier, &xp, cin, hp, wp, &wb, cout, k, k, &mut out, ho, wo);
            assert_eq!(out[cout * ho * wo], 7.0, "{tier}: wrote past the output");
            for (a, b) in out.iter().zip(&expect) {
                assert!((a - b).abs() < 1e-3 * (1.0 + b.abs()), "{tier}: {a} vs {b}");
            }
            // The input gradient: W^T * dY then col2im, against the flipped direct form.
            let dy: Vec<f32> = (0..cout * ho * wo)
                .map(|i| ((i * 29 % 89) as f32 - 44.0) / 30.0)
                .collect();
            let mut colg = vec![0.0; g.k() * g.hw_out()];
            gemm(
                g.k(),
                cout,
                g.hw_out(),
                &wt,
                (1, g.k() as isize),
                &dy,
                (g.hw_out() as isize, 1),
                &mut colg,
                (g.hw_out() as isize, 1),
                0.0,
            );
            let mut dx = vec![0.0; cin * h * w];
            col2im_add(&colg, &g, 0, &mut dx);
            let q = k - 1 - p;
            let (hq, wq) = (ho + 2 * q, direct_row(w, k));
            let mut dyp = vec![f32::NAN; cout * hq * wq];
            pad_planes(&dy, cout, ho, wo, q, q, hq, wq, &mut dyp);
            let mut wf = vec![f32::NAN; direct_weight_len(tier, cin, cout, k, k)];
            direct_weights(tier, &wt, cout, cin, k, k, true, &mut wf);
            let mut dx2 = vec![f32::NAN; cin * h * w];
            conv_direct(tier, &dyp, cout, hq, wq, &wf, cin, k, k, &mut dx2, h, w);
            for (a, b) in dx2.iter().zip(&dx) {
                assert!(
                    (a - b).abs() < 1e-3 * (1.0 + b.abs()),
                    "{tier} dx {a} vs {b}"
                );
            }
            // The weight gradient: dY * col^T, against the direct sum over the padded
            // input (added to what the buffer held).
            if direct_wgrad(tier) {
                let mut dw = vec![0.5; cout * g.k()];
                gemm(
                    cout,
                    g.hw_out(),
                    g.k(),
                    &dy,
                    (g.hw_out() as isize, 1),
                    &col,
                    (1, g.hw_out() as isize),
                    &mut dw,
                    (g.k() as isize, 1),
                    1.0,
                );
                let mut dw2 = vec![0.5; cout * g.k() + 1];
                dw2[cout * g.k()] = 7.0;
                let mut xp0 = vec![f32::NAN; cin * hp * wp];
                pad_planes(&x, cin, h, w, p, p, hp, wp, &mut xp0);
                conv_wgrad_direct(tier, &xp0, cin, hp, wp, &dy, cout, ho, wo, k, k, &mut dw2);
                assert_eq!(
                    dw2[cout * g.k()],
                    7.0,
                    "{tier}: wrote past the weight gradient"
                );
                for (a, b) in dw2.iter().zip(&dw) {
                    assert!(
                        (a - b).abs() < 1e-3 * (1.0 + b.abs()),
                        "{tier} dw {a} vs {b}"
                    );
                }
                wgrad_covered.push(tier.name());
            }
        }
    }

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
                depthwise_forward(tier, &x, &wt, &g, &mut scr, &mut out2);
                let (mut gw2, mut dx2) = (vec![0.25; c * kk], vec![0.5; c * h * w]);
                let mut scr = vec![f32::NAN; depthwise_scratch(&g, true)];
                depthwise_backward(tier, &x, &wt, &dy, &g, &mut scr, &mut gw2, Some(&mut dx2));
                // Without the input gradient, the same weight gradient.
                let mut gw3 = vec![0.25; c * kk];
                depthwise_backward(tier, &x, &wt, &dy, &g, &mut scr, &mut gw3, None);
                assert_eq!(gw3, gw2);
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

    /// The plain definition, element by element.
    fn im2col_reference(x: &[f32], g: &ConvGeom, group: usize) -> Vec<f32> {
        let cg = g.cin / g.groups;
        let mut col = Vec::new();
        for ci in group * cg..(group + 1) * cg {
            for ky in 0..g.kh {
                for kx in 0..g.kw {
                    for oy in 0..g.ho {
                        for ox in 0..g.wo {
                            let iy = (oy * g.sh + ky * g.dh) as isize - g.ph as isize;
                            let ix = (ox * g.sw + kx * g.dw) as isize - g.pw as isize;
                            let inside =
                                iy >= 0 && ix >= 0 && (iy as usize) < g.h && (ix as usize) < g.w;
                            col.push(if inside {
                                x[ci * g.h * g.w + iy as usize * g.w + ix as usize]
                            } else {
                                0.0
                            });
                        }
                    }
                }
            }
        }
        col
    }

    #[test]
    fn im2col_and_col2im_match_the_definition_for_strides_paddings_dilations() {
        for (s, p, d, groups) in [
            (1, 0, 1, 1),
            (1, 2, 1, 1),
            (2, 1, 1, 2),
            (3, 3, 2, 1),
            (2, 0, 3, 2),
        ] {
            let (cin, h, w, k) = (4, 9, 11, 3);
            let ho = (h + 2 * p - d * (k - 1) - 1) / s + 1;
            let wo = (w + 2 * p - d * (k - 1) - 1) / s + 1;
            let g = ConvGeom {
                cin,
                h,
                w,
                cout: 4,
                kh: k,
                kw: k,
                sh: s,
                sw: s,
                ph: p,
                pw: p,
                dh: d,
                dw: d,
                groups,
                ho,
                wo,
            };
            let x: Vec<f32> = (0..cin * h * w).map(|i| i as f32).collect();
            for grp in 0..groups {
                let mut col = vec![f32::NAN; g.k() * g.hw_out()];
                im2col(&x, &g, grp, &mut col);
                assert_eq!(
                    col,
                    im2col_reference(&x, &g, grp),
                    "s{s} p{p} d{d} g{groups}"
                );
                // col2im is the adjoint: <im2col(x), c> == <x, col2im(c)>.
                let c: Vec<f32> = (0..col.len()).map(|i| (i % 7) as f32).collect();
                let mut dx = vec![0.0; x.len()];
                col2im_add(&c, &g, grp, &mut dx);
                let lhs: f64 = col
                    .iter()
                    .zip(&c)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum();
                let rhs: f64 = x
                    .iter()
                    .zip(&dx)
                    .map(|(a, b)| (*a as f64) * (*b as f64))
                    .sum();
                assert_eq!(lhs, rhs);
            }
        }
    }
}
