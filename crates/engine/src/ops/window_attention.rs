//! torchvision's `ShiftedWindowAttention` (Swin V1) on a channels-last map `[H, W, C]`:
//! pad to whole windows, roll by the shift, attention inside each window with the
//! relative position bias (and, when shifted, the mask that keeps the regions the roll
//! brought together apart), then roll back and crop. The engine gathers the windows in
//! one copy, runs [`super::attention`] on them, and scatters the result back.

use vramlab_graph::op::WindowAttention;

use super::attention::{self, AttnSaved, AttnWeights, PositionBias};
use super::{buffer, Ctx, Scratch};
use crate::tensor::Tensor;

/// The windows of one map: its size, the padded size, the shift torchvision applies (none
/// along a side the window covers), and the windows' layout.
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub wh: usize,
    pub ww: usize,
    pub hp: usize,
    pub wp: usize,
    pub sh: usize,
    pub sw: usize,
}

impl Windows {
    /// The windows of attention `a` over a map `[h, w, c]`.
    pub fn new(a: &WindowAttention, h: usize, w: usize, c: usize) -> Windows {
        let (wh, ww) = a.window;
        let (hp, wp) = (h.div_ceil(wh) * wh, w.div_ceil(ww) * ww);
        Windows {
            h,
            w,
            c,
            wh,
            ww,
            hp,
            wp,
            sh: if wh >= hp { 0 } else { a.shift.0 },
            sw: if ww >= wp { 0 } else { a.shift.1 },
        }
    }

    /// Tokens in a window.
    pub fn tokens(&self) -> usize {
        self.wh * self.ww
    }

    /// Windows in a map.
    pub fn count(&self) -> usize {
        (self.hp / self.wh) * (self.wp / self.ww)
    }

    /// Whether the windows are shifted (and so masked).
    pub fn shifted(&self) -> bool {
        self.sh + self.sw > 0
    }

    /// For each token of each window (window-major), the position `y * w + x` of the map
    /// it reads, or `None` for the padding.
    fn source(&self) -> Vec<Option<usize>> {
        let across = self.wp / self.ww;
        let mut src = Vec::with_capacity(self.count() * self.tokens());
        for win in 0..self.count() {
            for tok in 0..self.tokens() {
                // Rolled by (-sh, -sw): rolled position y reads y + sh of the padded map.
                let y = ((win / across) * self.wh + tok / self.ww + self.sh) % self.hp;
                let x = ((win % across) * self.ww + tok % self.ww + self.sw) % self.wp;
                src.push((y < self.h && x < self.w).then_some(y * self.w + x));
            }
        }
        src
    }

    /// The shifted windows' mask `[windows, n, n]`: 0 between tokens of one region of the
    /// rolled map, -100 between regions (torchvision's slices, Python's semantics).
    fn mask(&self) -> Vec<f32> {
        let region = |len: usize, win: usize, shift: usize| {
            let at = |v: isize| -> usize {
                if v < 0 {
                    (len as isize + v).max(0) as usize
                } else {
                    (v as usize).min(len)
                }
            };
            let (win, shift) = (win as isize, shift as isize);
            let slices = [(0, at(-win)), (at(-win), at(-shift)), (at(-shift), len)];
            let mut id = vec![0; len];
            for (k, (a, b)) in slices.into_iter().enumerate() {
                for v in id.iter_mut().take(b).skip(a) {
                    *v = k;
                }
            }
            id
        };
        let (rh, rw) = (
            region(self.hp, self.wh, self.sh),
            region(self.wp, self.ww, self.sw),
        );
        let (n, across) = (self.tokens(), self.wp / self.ww);
        let mut mask = vec![0.0; self.count() * n * n];
        for win in 0..self.count() {
            let id = |tok: usize| {
                let y = (win / across) * self.wh + tok / self.ww;
                let x = (win % across) * self.ww + tok % self.ww;
                rh[y] * 3 + rw[x]
            };
            for i in 0..n {
                for j in 0..n {
                    if id(i) != id(j) {
                        mask[(win * n + i) * n + j] = -100.0;
                    }
                }
            }
        }
        mask
    }
}

/// The scratch of [`forward`] before the attention: the shifted windows' mask.
pub fn forward_scratch(win: &Windows) -> Scratch {
    let (n, count) = (win.tokens() as u128, win.count() as u128);
    Scratch::one(&[buffer(
        "mask",
        if win.shifted() { count * n * n } else { 0 },
    )])
}

/// The window tokens `[B * windows, n, C]` of maps `x` `[B, H, W, C]` (zeros for the
/// padding).
fn gather(ctx: &Ctx, x: &Tensor, win: &Windows, src: &[Option<usize>]) -> Tensor {
    let (b, c) = (x.shape[0], win.c);
    let o = ctx.zeros(&[b * win.count(), win.tokens(), c]);
    {
        let (xd, mut od) = (x.data(), o.data_mut());
        let per = win.h * win.w * c;
        for (os, xs) in od.chunks_mut(src.len() * c).zip(xd.chunks(per)) {
            for (row, at) in os.chunks_mut(c).zip(src) {
                if let Some(at) = at {
                    row.copy_from_slice(&xs[at * c..(at + 1) * c]);
                }
            }
        }
    }
    o
}

/// The maps `[B, H, W, C]` of window tokens `t` (the padding dropped).
fn scatter(ctx: &Ctx, t: &Tensor, win: &Windows, src: &[Option<usize>], b: usize) -> Tensor {
    let c = win.c;
    let o = ctx.zeros(&[b, win.h, win.w, c]);
    {
        let (td, mut od) = (t.data(), o.data_mut());
        let per = win.h * win.w * c;
        for (ts, os) in td.chunks(src.len() * c).zip(od.chunks_mut(per)) {
            for (row, at) in ts.chunks(c).zip(src) {
                if let Some(at) = at {
                    os[at * c..(at + 1) * c].copy_from_slice(row);
                }
            }
        }
    }
    o
}

/// The weights of one layer in parameter order: `relative_position_bias_table`,
/// `qkv.weight`, `qkv.bias`, `proj.weight`, `proj.bias`.
pub(crate) struct Weights<'a> {
    pub table: &'a Tensor,
    pub attn: AttnWeights<'a>,
}

/// What [`forward`] keeps: the window tokens and the attention's saved tensors.
pub(crate) struct Saved {
    pub windows: Tensor,
    pub attn: AttnSaved,
}

/// Shifted-window attention `a` of `x` `[B, H, W, C]` with the relative position index
/// `index`. Allocates, in order: the window tokens, the mask (when shifted), the
/// attention's tensors ([`attention::forward`]), then frees the mask, allocates the
/// output `[B, H, W, C]` and frees the attention's output.
pub(crate) fn forward(
    ctx: &Ctx,
    x: &Tensor,
    a: &WindowAttention,
    w: &Weights,
    index: &[usize],
) -> (Tensor, Saved) {
    let (b, h, wd, c) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
    let win = Windows::new(a, h, wd, c);
    let src = win.source();
    let windows = gather(ctx, x, &win, &src);
    let n = win.tokens();
    let mask = ctx
        .phase(&forward_scratch(&win), 0)
        .take("mask", win.shifted().then_some(win.count() * n * n));
    if let Some(m) = &mask {
        m.data_mut().copy_from_slice(&win.mask());
    }
    let pos = PositionBias {
        table: w.table,
        index,
        mask: mask.as_ref().map(|m| (m, win.count())),
    };
    let (y, attn) = attention::forward(ctx, &windows, &w.attn, a.heads, scale(a), Some(&pos));
    drop(mask);
    let out = scatter(ctx, &y, &win, &src, b);
    drop(y);
    (out, Saved { windows, attn })
}

/// torchvision's scale of the queries: `(C / heads) ** -0.5`.
fn scale(a: &WindowAttention) -> f32 {
    1.0 / ((a.dim / a.heads) as f32).sqrt()
}

/// The gradients of [`forward`] from `g` `[B, H, W, C]`: allocates the window tokens'
/// output gradient, then what [`attention::backward`] allocates, frees the first, and
/// allocates the input gradient (with `need_in`) from the windows'.
pub(crate) fn backward(
    ctx: &Ctx,
    saved: &Saved,
    g: &Tensor,
    a: &WindowAttention,
    w: &Weights,
    index: &[usize],
    need_in: bool,
) -> attention::AttnGrads {
    let (b, h, wd, c) = (g.shape[0], g.shape[1], g.shape[2], g.shape[3]);
    let win = Windows::new(a, h, wd, c);
    let src = win.source();
    let gy = gather(ctx, g, &win, &src);
    let pos = PositionBias {
        table: w.table,
        index,
        mask: None,
    };
    let mut grads = attention::backward(
        ctx,
        &saved.windows,
        &saved.attn,
        &gy,
        &w.attn,
        a.heads,
        scale(a),
        Some(&pos),
        need_in,
    );
    drop(gy);
    grads.input = grads.input.map(|gw| scatter(ctx, &gw, &win, &src, b));
    grads
}

#[cfg(test)]
mod tests {
    use super::*;

    fn windows(h: usize, w: usize, window: usize, shift: usize) -> Windows {
        let a = WindowAttention {
            dim: 4,
            heads: 2,
            window: (window, window),
            shift: (shift, shift),
            v2: false,
        };
        Windows::new(&a, h, w, 4)
    }

    #[test]
    fn the_mask_separates_the_regions_the_roll_brings_together() {
        // An 8x8 map, windows of 4 shifted by 2: torchvision's mask has 0 within a
        // region and -100 across; the first window is one region, the last has four.
        let win = windows(8, 8, 4, 2);
        let m = win.mask();
        let n = 16;
        assert!(m[..n * n].iter().all(|&v| v == 0.0));
        let last = &m[3 * n * n..];
        // Tokens 0 and 3 (columns 4 and 7 of the rolled map) lie in different regions.
        assert_eq!(last[3], -100.0);
        assert_eq!(last[1], 0.0);
        assert_eq!(last.iter().filter(|&&v| v == 0.0).count(), 4 * 4 * 4);
    }

    #[test]
    fn a_window_as_large_as_the_map_is_not_shifted_and_padding_reads_nothing() {
        let win = windows(3, 3, 4, 2);
        assert!(!win.shifted());
        let src = win.source();
        assert_eq!(src.len(), 16);
        assert_eq!(src[0], Some(0));
        assert_eq!(src[3], None);
        assert_eq!(src[4], Some(3));
        assert_eq!(src.iter().flatten().count(), 9);
    }

    #[test]
    fn the_roll_reads_the_shifted_position() {
        let win = windows(8, 8, 4, 2);
        let src = win.source();
        // Window 0, token 0 reads the map at (2, 2); the last window's last token wraps
        // to (1, 1).
        assert_eq!(src[0], Some(2 * 8 + 2));
        assert_eq!(src[4 * 16 - 1], Some(8 + 1));
    }
}
