//! torchvision's RegNetX and RegNetY: stage widths and depths computed from the
//! design-space parameters (w_0, w_a, w_m, depth, group width) as torchvision's
//! `BlockParams.from_init_params` does, in float32 like its tensors.

use super::{conv_norm_act, make_divisible, pool_flatten, squeeze_excitation, BN};
use crate::op::{Conv2d, Linear, Op};
use crate::{Activation, Graph, GraphBuilder};

/// (depth, w_0, w_a, w_m, group width, squeeze-excitation) of each builder.
fn params(name: &str) -> (usize, usize, f32, f32, usize, bool) {
    match name {
        "regnet_y_400mf" => (16, 48, 27.89, 2.09, 8, true),
        "regnet_y_800mf" => (14, 56, 38.84, 2.4, 16, true),
        "regnet_y_1_6gf" => (27, 48, 20.71, 2.65, 24, true),
        "regnet_y_3_2gf" => (21, 80, 42.63, 2.66, 24, true),
        "regnet_y_8gf" => (17, 192, 76.82, 2.19, 56, true),
        "regnet_y_16gf" => (18, 200, 106.23, 2.48, 112, true),
        "regnet_y_32gf" => (20, 232, 115.89, 2.53, 232, true),
        "regnet_y_128gf" => (27, 456, 160.83, 2.52, 264, true),
        "regnet_x_400mf" => (22, 24, 24.48, 2.54, 16, false),
        "regnet_x_800mf" => (16, 56, 35.73, 2.28, 16, false),
        "regnet_x_1_6gf" => (18, 80, 34.01, 2.25, 24, false),
        "regnet_x_3_2gf" => (25, 88, 26.31, 2.25, 48, false),
        "regnet_x_8gf" => (23, 80, 49.56, 2.88, 120, false),
        "regnet_x_16gf" => (22, 216, 55.59, 2.1, 128, false),
        "regnet_x_32gf" => (23, 320, 69.86, 2.0, 168, false),
        other => unreachable!("zoo ENTRIES lists no {other}"),
    }
}

/// Per stage: (width, depth, group width).
fn stages(depth: usize, w0: usize, wa: f32, wm: f32, group: usize) -> Vec<(usize, usize, usize)> {
    let mut widths: Vec<usize> = Vec::with_capacity(depth);
    for i in 0..depth {
        let cont = i as f32 * wa + w0 as f32;
        let capacity = ((cont / w0 as f32).ln() / (wm as f64).ln() as f32).round_ties_even();
        let w = ((w0 as f32 * wm.powf(capacity)) / 8.0).round_ties_even() * 8.0;
        widths.push(w as usize);
    }
    let mut out: Vec<(usize, usize, usize)> = Vec::new();
    for w in widths {
        match out.last_mut() {
            Some(last) if last.0 == w => last.1 += 1,
            _ => out.push((w, 1, group)),
        }
    }
    // Widths and group widths made compatible (bottleneck multiplier 1).
    for s in &mut out {
        let g = s.2.min(s.0);
        s.0 = make_divisible(s.0 as f64, g);
        s.2 = g;
    }
    out
}

/// Python's `round` (half to even) of a float64.
fn round_half_even(v: f64) -> usize {
    v.round_ties_even() as usize
}

pub(super) fn regnet(name: &str, input: Vec<usize>, classes: usize) -> Graph {
    let (depth, w0, wa, wm, group, se) = params(name);
    let relu = Some(Activation::Relu);
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    x = conv_norm_act(
        &mut b,
        "stem",
        Conv2d::new(in_ch, 32, 3).stride(2),
        BN,
        relu,
        x,
    );
    let mut width_in = 32;
    for (si, &(width, n, gw)) in stages(depth, w0, wa, wm, group).iter().enumerate() {
        for r in 0..n {
            let p = format!("trunk_output.block{}.block{}-{r}", si + 1, si + 1);
            let stride = if r == 0 { 2 } else { 1 };
            let proj = (width_in != width || stride != 1).then(|| {
                let c = Conv2d::new(width_in, width, 1).stride(stride);
                conv_norm_act(&mut b, &format!("{p}.proj"), c, BN, None, x)
            });
            let mut y = conv_norm_act(
                &mut b,
                &format!("{p}.f.a"),
                Conv2d::new(width_in, width, 1),
                BN,
                relu,
                x,
            );
            let c = Conv2d::new(width, width, 3)
                .stride(stride)
                .groups(width / gw);
            y = conv_norm_act(&mut b, &format!("{p}.f.b"), c, BN, relu, y);
            if se {
                y = squeeze_excitation(
                    &mut b,
                    &format!("{p}.f.se"),
                    width,
                    round_half_even(0.25 * width_in as f64),
                    Op::relu(false),
                    Op::act(Activation::Sigmoid, false),
                    y,
                );
            }
            y = conv_norm_act(
                &mut b,
                &format!("{p}.f.c"),
                Conv2d::new(width, width, 1),
                BN,
                None,
                y,
            );
            let sum = match proj {
                Some(s) => b.add(format!("{p}.add"), Op::Add { inplace: false }, &[s, y]),
                None => b.add(format!("{p}.add"), Op::Add { inplace: false }, &[x, y]),
            };
            x = b.then(format!("{p}.activation"), Op::relu(true), sum);
            width_in = width;
        }
    }
    x = pool_flatten(&mut b, x);
    b.then("fc", Op::Linear(Linear::new(width_in, classes)), x);
    b.build()
}
