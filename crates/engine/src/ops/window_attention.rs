//! torchvision's `ShiftedWindowAttention` (Swin V1) on a channels-last map `[H, W, C]`:
//! pad to whole windows, roll by the shift, attention inside each window with the
//! relative position bias (and, when shifted, the mask that keeps the regions the roll
//! brought together apart), then roll back and crop. The engine gathers the windows in
//! one copy, runs [`super::attention`] on them, and scatters the result back.

use vramlab_graph::op::WindowAttention;

use super::attention::{self, AttnSaved, AttnWeights, BiasGrad, PositionBias, Scores};
use super::{buffer, column_sums, Ctx, Scratch};
use crate::kernels::gemm;
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

    /// Rows of the relative position bias table: `(2 wh - 1) (2 ww - 1)`.
    pub fn table_rows(&self) -> usize {
        (2 * self.wh - 1) * (2 * self.ww - 1)
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

/// How a layer makes its relative position bias.
pub(crate) enum Bias<'a> {
    /// V1: the learned `relative_position_bias_table` `[L, heads]`.
    Table(&'a Tensor),
    /// V2: `16 * sigmoid(cpb_mlp(relative_coords_table))`, the MLP `Linear(2, 512)`,
    /// ReLU, `Linear(512, heads, bias=False)`; and the cosine scores' `logit_scale`.
    Mlp {
        coords: &'a Tensor,
        w1: &'a Tensor,
        b1: &'a Tensor,
        w2: &'a Tensor,
        logit_scale: &'a Tensor,
    },
}

/// The weights of one layer: its bias and the attention's projections (`qkv`, `proj`).
pub(crate) struct Weights<'a> {
    pub bias: Bias<'a>,
    pub attn: AttnWeights<'a>,
}

impl Weights<'_> {
    fn scores(&self, a: &WindowAttention) -> Scores<'_> {
        match &self.bias {
            Bias::Table(_) => Scores::Scaled(scale(a)),
            Bias::Mlp { logit_scale, .. } => Scores::Cosine(logit_scale),
        }
    }
}

/// What [`forward`] keeps: the window tokens and the attention's saved tensors.
pub(crate) struct Saved {
    pub windows: Tensor,
    pub attn: AttnSaved,
}

/// The continuous position bias MLP's hidden layer (after its ReLU) `[L, 512]` and output
/// `[L, heads]`, allocated in that order.
fn cpb_mlp(ctx: &Ctx, coords: &Tensor, w1: &Tensor, b1: &Tensor, w2: &Tensor) -> (Tensor, Tensor) {
    let rows = coords.numel() / 2;
    let (hidden_n, heads) = (w1.shape[0], w2.shape[0]);
    let hidden = ctx.zeros(&[rows, hidden_n]);
    let raw = ctx.zeros(&[rows, heads]);
    {
        let (cd, w1d, b1d, w2d) = (coords.data(), w1.data(), b1.data(), w2.data());
        let mut hd = hidden.data_mut();
        gemm(
            rows,
            2,
            hidden_n,
            &cd,
            (2, 1),
            &w1d,
            (1, 2),
            &mut hd,
            (hidden_n as isize, 1),
            0.0,
        );
        for row in hd.chunks_mut(hidden_n) {
            row.iter_mut()
                .zip(b1d.iter())
                .for_each(|(v, b)| *v = (*v + b).max(0.0));
        }
        gemm(
            rows,
            hidden_n,
            heads,
            &hd,
            (hidden_n as isize, 1),
            &w2d,
            (1, hidden_n as isize),
            &mut raw.data_mut(),
            (heads as isize, 1),
            0.0,
        );
    }
    (hidden, raw)
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// Shifted-window attention `a` of `x` `[B, H, W, C]` with the relative position index
/// `index`. Allocates, in order: the window tokens, the mask (when shifted), for V2 the
/// MLP's hidden layer and output and the bias table (the first two freed then), the
/// attention's tensors ([`attention::forward`]), then frees the V2 table and the mask,
/// allocates the output `[B, H, W, C]` and frees the attention's output.
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
    let made = match &w.bias {
        Bias::Table(_) => None,
        Bias::Mlp {
            coords, w1, b1, w2, ..
        } => {
            let (hidden, raw) = cpb_mlp(ctx, coords, w1, b1, w2);
            let table = ctx.zeros(&raw.shape);
            table
                .data_mut()
                .iter_mut()
                .zip(raw.data().iter())
                .for_each(|(t, &r)| *t = 16.0 * sigmoid(r));
            drop((hidden, raw));
            Some(table)
        }
    };
    let table = match (&w.bias, &made) {
        (Bias::Table(t), _) => *t,
        (Bias::Mlp { .. }, Some(t)) => t,
        (Bias::Mlp { .. }, None) => unreachable!("made above"),
    };
    let pos = PositionBias {
        table,
        index,
        mask: mask.as_ref().map(|m| (m, win.count())),
    };
    let (y, attn) = attention::forward(ctx, &windows, &w.attn, a.heads, w.scores(a), Some(&pos));
    drop(made);
    drop(mask);
    let out = scatter(ctx, &y, &win, &src, b);
    drop(y);
    (out, Saved { windows, attn })
}

/// torchvision's scale of the queries: `(C / heads) ** -0.5`.
fn scale(a: &WindowAttention) -> f32 {
    1.0 / ((a.dim / a.heads) as f32).sqrt()
}

/// The gradients of a window attention: its input's and its parameters' (by their
/// position among the layer's parameters).
pub(crate) struct Grads {
    pub input: Option<Tensor>,
    pub params: Vec<(usize, Tensor)>,
}

/// The gradients of [`forward`] from `g` `[B, H, W, C]`: allocates the window tokens'
/// output gradient, then what [`attention::backward`] allocates (V1: the table's gradient
/// first; V2: an intermediate table gradient, the logit scale's), frees the first; for
/// V2 then the MLP again (hidden layer, output), `cpb_mlp.2.weight`'s gradient, the hidden
/// layer's, `cpb_mlp.0`'s weight and bias gradients, freeing the intermediates; last the
/// input gradient (with `need_in`) from the windows'.
pub(crate) fn backward(
    ctx: &Ctx,
    saved: &Saved,
    g: &Tensor,
    a: &WindowAttention,
    w: &Weights,
    index: &[usize],
    need_in: bool,
) -> Grads {
    let (b, h, wd, c) = (g.shape[0], g.shape[1], g.shape[2], g.shape[3]);
    let win = Windows::new(a, h, wd, c);
    let src = win.source();
    let gy = gather(ctx, g, &win, &src);
    let pos = BiasGrad {
        index,
        rows: win.table_rows(),
        learned: matches!(w.bias, Bias::Table(_)),
    };
    let grads = attention::backward(
        ctx,
        &saved.windows,
        &saved.attn,
        &gy,
        &w.attn,
        a.heads,
        w.scores(a),
        Some(&pos),
        need_in,
    );
    drop(gy);
    let [w_in, b_in, w_out, b_out] = grads.params;
    let mut params = Vec::new();
    let dtable = grads.table.expect("a position bias");
    match &w.bias {
        Bias::Table(_) => {
            params.push((0, dtable));
            params.extend((1..).zip([w_in, b_in, w_out, b_out]));
        }
        Bias::Mlp {
            coords, w1, b1, w2, ..
        } => {
            params.push((0, grads.logit_scale.expect("cosine scores")));
            params.extend((1..).zip([w_in, b_in, w_out, b_out]));
            let (hidden, raw) = cpb_mlp(ctx, coords, w1, b1, w2);
            let (rows, hn, heads) = (hidden.shape[0], hidden.shape[1], raw.shape[1]);
            // Through 16 * sigmoid.
            dtable
                .data_mut()
                .iter_mut()
                .zip(raw.data().iter())
                .for_each(|(d, &r)| {
                    let s = sigmoid(r);
                    *d *= 16.0 * s * (1.0 - s);
                });
            let gw2 = ctx.grad(&w2.shape);
            let dhidden = ctx.zeros(&hidden.shape);
            let gw1 = ctx.grad(&w1.shape);
            let gb1 = ctx.grad(&b1.shape);
            {
                let (dt, hd, w2d, cd) = (dtable.data(), hidden.data(), w2.data(), coords.data());
                // dW2 [heads x 512] = dRaw^T hidden.
                gemm(
                    heads,
                    rows,
                    hn,
                    &dt,
                    (1, heads as isize),
                    &hd,
                    (hn as isize, 1),
                    &mut gw2.data_mut(),
                    (hn as isize, 1),
                    0.0,
                );
                // dHidden = dRaw W2, through the ReLU (where its result is positive).
                let mut dh = dhidden.data_mut();
                gemm(
                    rows,
                    heads,
                    hn,
                    &dt,
                    (heads as isize, 1),
                    &w2d,
                    (hn as isize, 1),
                    &mut dh,
                    (hn as isize, 1),
                    0.0,
                );
                dh.iter_mut()
                    .zip(hd.iter())
                    .for_each(|(d, &v)| *d = if v > 0.0 { *d } else { 0.0 });
                // dW1 [512 x 2] = dHidden^T coords; db1 = column sums.
                gemm(
                    hn,
                    rows,
                    2,
                    &dh,
                    (1, hn as isize),
                    &cd,
                    (2, 1),
                    &mut gw1.data_mut(),
                    (2, 1),
                    0.0,
                );
                column_sums(&dh, hn, &mut gb1.data_mut());
            }
            drop((dhidden, hidden, raw, dtable));
            params.extend([(5, gw1), (6, gb1), (7, gw2)]);
        }
    }
    let input = grads.input.map(|gw| scatter(ctx, &gw, &win, &src, b));
    Grads { input, params }
}

/// Swin V2's `relative_coords_table` for a `wh x ww` window: each relative offset
/// `(dy, dx)` over `window - 1`, times 8, as `sign(v) * log2(|v| + 1) / 3` (float32, as
/// torchvision computes it), `[2wh - 1, 2ww - 1, 2]` row-major.
pub(crate) fn relative_coords_table(wh: usize, ww: usize) -> Vec<f32> {
    let f = |v: f32| v.signum() * (v.abs() + 1.0).log2() / 3.0;
    let mut out = Vec::with_capacity((2 * wh - 1) * (2 * ww - 1) * 2);
    for dy in -(wh as isize - 1)..wh as isize {
        for dx in -(ww as isize - 1)..ww as isize {
            let y = dy as f32 / (wh as f32 - 1.0) * 8.0;
            let x = dx as f32 / (ww as f32 - 1.0) * 8.0;
            out.push(if y == 0.0 { 0.0 } else { f(y) });
            out.push(if x == 0.0 { 0.0 } else { f(x) });
        }
    }
    out
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
