//! MaxPool2d: the maximum of each window and its index, and the gradient scattered back
//! through the indices; 2x2 stride-2 windows by the tier's vector code.

use std::rc::Rc;

use rayon::prelude::*;
use vramlab_graph::Pool2d;

use super::Ctx;
use crate::kernels::Tier;
use crate::tensor::{Buf, Tensor};

/// Max pooling of `x` into a new output of shape `os`, and the flat index in its plane
/// of each output's maximum (int64, as PyTorch keeps them for backward).
pub(crate) fn forward(ctx: &Ctx, x: &Tensor, p: &Pool2d, os: &[usize]) -> (Tensor, Rc<Buf<i64>>) {
    let b = x.shape[0];
    let (c, h, w, ho, wo) = (x.shape[1], x.shape[2], x.shape[3], os[2], os[3]);
    let out = ctx.zeros(os);
    let idx = Buf::<i64>::zeros(ctx.tracker, b * c * ho * wo, None);
    {
        let xd = x.data();
        let mut od = out.data_mut();
        let mut id = idx.borrow_mut();
        let (xd, od, id): (&[f32], &mut [f32], &mut [i64]) = (&xd[..], &mut od[..], &mut id[..]);
        let simple = p.kernel_size == (2, 2)
            && p.stride == (2, 2)
            && p.padding == (0, 0)
            && p.dilation == (1, 1);
        let (p, tier) = (p.clone(), ctx.tier);
        // One contiguous run of planes per thread: a task per plane costs more than it does.
        let per = (b * c).div_ceil(ctx.threads);
        ctx.pool.install(|| {
            od.par_chunks_mut(per * ho * wo)
                .zip(id.par_chunks_mut(per * ho * wo))
                .zip(xd.par_chunks(per * h * w))
                .for_each(|((ob, ixb), srcb)| {
                    for ((o, ix), src) in ob
                        .chunks_mut(ho * wo)
                        .zip(ixb.chunks_mut(ho * wo))
                        .zip(srcb.chunks(h * w))
                    {
                        if simple {
                            maxpool2x2_plane(tier, src, w, ho, wo, o, ix);
                            continue;
                        }
                        for oy in 0..ho {
                            for ox in 0..wo {
                                let mut best = f32::NEG_INFINITY;
                                let mut at = -1i64;
                                for ky in 0..p.kernel_size.0 {
                                    let iy = (oy * p.stride.0 + ky * p.dilation.0) as isize
                                        - p.padding.0 as isize;
                                    if iy < 0 || iy as usize >= h {
                                        continue;
                                    }
                                    for kx in 0..p.kernel_size.1 {
                                        let ixx = (ox * p.stride.1 + kx * p.dilation.1) as isize
                                            - p.padding.1 as isize;
                                        if ixx < 0 || ixx as usize >= w {
                                            continue;
                                        }
                                        let k = iy as usize * w + ixx as usize;
                                        let v = src[k];
                                        if v > best || v.is_nan() || at < 0 {
                                            best = v;
                                            at = k as i64;
                                        }
                                    }
                                }
                                o[oy * wo + ox] = best;
                                ix[oy * wo + ox] = at;
                            }
                        }
                    }
                });
        });
    }
    (out, idx)
}

/// The input gradient (of shape `xs`) of [`forward`]: each output's gradient added at the
/// index of its maximum.
pub(crate) fn backward(ctx: &Ctx, xs: &[usize], g: &Tensor, idx: &Buf<i64>) -> Tensor {
    let gi = ctx.zeros(xs);
    {
        let plane_in: usize = xs[2..].iter().product();
        let plane_out: usize = g.shape[2..].iter().product();
        let mut gd = gi.data_mut();
        let (go, id) = (g.data(), idx.borrow());
        let (gd, go, id): (&mut [f32], &[f32], &[i64]) = (&mut gd[..], &go[..], &id[..]);
        ctx.pool.install(|| {
            gd.par_chunks_mut(plane_in)
                .zip(go.par_chunks(plane_out).zip(id.par_chunks(plane_out)))
                .for_each(|(gp, (gop, idp))| {
                    for (&at, &v) in idp.iter().zip(gop) {
                        if at >= 0 {
                            gp[at as usize] += v;
                        }
                    }
                })
        });
    }
    gi
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_tiers as tiers;

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
}
