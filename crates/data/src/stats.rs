//! Per-channel mean and standard deviation of a split in one streaming pass: what to
//! pass to `Normalize` (values of `ToTensor`, in [0, 1]).

use serde::Serialize;

use crate::{Dataset, Split};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelStats {
    pub mean: Vec<f64>,
    /// Population standard deviation over all pixels of the channel.
    pub std: Vec<f64>,
    pub pixels_per_channel: u64,
}

/// Exact integer sums of the u8 values and their squares, per channel. A split with no
/// pixels (which [`Dataset::split`] and the readers refuse) gives zeros, never NaN.
pub fn channel_stats(ds: &Dataset, split: &Split) -> ChannelStats {
    let [c, h, w] = ds.shape;
    let plane = h.saturating_mul(w);
    let mut sum = vec![0u64; c];
    let mut sumsq = vec![0u64; c];
    let per_image = c.saturating_mul(plane);
    if per_image == 0 {
        return ChannelStats {
            mean: vec![0.0; c],
            std: vec![0.0; c],
            pixels_per_channel: 0,
        };
    }
    // Sums stay exact: 255^2 per pixel times at most 2^64 / 2^16 pixels.
    for img in split.images.chunks_exact(per_image) {
        for ch in 0..c {
            let (mut s, mut q) = (0u64, 0u64);
            for &v in &img[ch * plane..(ch + 1) * plane] {
                s += v as u64;
                q += (v as u64) * (v as u64);
            }
            sum[ch] += s;
            sumsq[ch] += q;
        }
    }
    let n = (split.images.len() / per_image) as u64 * plane as u64;
    let nf = n.max(1) as f64;
    let mean: Vec<f64> = sum.iter().map(|&s| s as f64 / nf / 255.0).collect();
    let std = (0..c)
        .map(|ch| {
            let m = sum[ch] as f64 / nf;
            let var = (sumsq[ch] as f64 / nf - m * m).max(0.0);
            var.sqrt() / 255.0
        })
        .collect();
    ChannelStats {
        mean,
        std,
        pixels_per_channel: n,
    }
}
