//! The direct convolution: blocked weights over zero-padded rows, `tier`'s vector tile.

use super::ConvGeom;

pub use vramlab_isa::Tier;

/// Columns of a direct-convolution output tile, the same for every tier that has one
/// (one AVX-512 register, two AVX2 registers).
pub const LANES: usize = 16;

/// The tier's direct convolution tile, `(columns, output channels)`, if it has one.
pub fn tile(tier: Tier) -> Option<(usize, usize)> {
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
    #[cfg(target_arch = "aarch64")]
    // SAFETY: NEON is part of aarch64. Reads of `xp` stay inside each padded row (at
    // most column kw-1 + round4(wo) - 1 < direct_row(wo, kw) <= wp); `dy` is read only
    // below `wo` (the last partial vector goes through a zeroed buffer); writes go to
    // `pw[..cout*cin*kh*kw]` (asserted).
    unsafe {
        let (xp, dy, pw) = (xp.as_ptr(), dy.as_ptr(), pw.as_mut_ptr());
        wgrad_neon::<3, 3>(xp, cin, hp, wp, dy, cout, ho, wo, kh, kw, pw)
    }
}

/// The NEON weight gradient, the AVX2 one's loops with four columns per vector: `CO`
/// output channels by `KX` kernel columns of accumulators, streamed over the whole
/// output plane, then summed across lanes once.
#[cfg(target_arch = "aarch64")]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn wgrad_neon<const CO: usize, const KX: usize>(
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
    use std::arch::aarch64::*;
    let full = wo / 4 * 4;
    let rem = wo - full;
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
                    let mut acc = [[vdupq_n_f32(0.0); KX]; CO];
                    for oy in 0..ho {
                        let xrow = xp.add((ci * hp + oy + ky) * wp + kx0);
                        let mut ox = 0;
                        while ox < full {
                            let mut d = [vdupq_n_f32(0.0); CO];
                            for c in 0..CO {
                                d[c] = vld1q_f32(dyp[c].add(oy * wo + ox));
                            }
                            for j in 0..KX {
                                let xv = vld1q_f32(xrow.add(ox + j.min(kb - 1)));
                                for c in 0..CO {
                                    acc[c][j] = vfmaq_f32(acc[c][j], d[c], xv);
                                }
                            }
                            ox += 4;
                        }
                        if rem > 0 {
                            let mut d = [vdupq_n_f32(0.0); CO];
                            for c in 0..CO {
                                let mut tail = [0f32; 4];
                                std::ptr::copy_nonoverlapping(
                                    dyp[c].add(oy * wo + ox),
                                    tail.as_mut_ptr(),
                                    rem,
                                );
                                d[c] = vld1q_f32(tail.as_ptr());
                            }
                            for j in 0..KX {
                                let xv = vld1q_f32(xrow.add(ox + j.min(kb - 1)));
                                for c in 0..CO {
                                    acc[c][j] = vfmaq_f32(acc[c][j], d[c], xv);
                                }
                            }
                        }
                    }
                    for (c, row) in acc.iter().enumerate().take(cb) {
                        let dst = pw.add((co0 + c) * cin * kk + ci * kk + ky * kw + kx0);
                        for (j, a) in row.iter().enumerate().take(kb) {
                            *dst.add(j) += vaddvq_f32(*a);
                        }
                    }
                    kx0 += KX;
                }
            }
        }
        co0 += CO;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::gemm;
    use crate::ops::conv::im2col::{col2im_add, im2col};
    use crate::ops::test_tiers as tiers;

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
        assert!(covered.contains(&"neon") && wgrad.contains(&"neon"));
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
}
