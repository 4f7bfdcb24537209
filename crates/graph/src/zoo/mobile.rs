//! torchvision's mobile families: MobileNetV3, MNASNet, EfficientNet (B0-B7) and
//! EfficientNetV2, layer for layer as torchvision 0.29 builds them.

use super::{conv1x1, conv_norm_act, make_divisible, pool_flatten, squeeze_excitation, Norm, BN};
use crate::op::{BatchNorm2d, Conv2d, Linear, Op};
use crate::{Activation, Graph, GraphBuilder};

/// `mobilenet_v3_large` / `mobilenet_v3_small` (width 1, no reduced tail).
pub(super) fn mobilenet_v3(name: &str, input: Vec<usize>, small: bool, classes: usize) -> Graph {
    // (input, kernel, expanded, out, SE, Hardswish, stride): torchvision's tables.
    #[rustfmt::skip]
    const LARGE: &[(usize, usize, usize, usize, bool, bool, usize)] = &[
        (16, 3, 16, 16, false, false, 1), (16, 3, 64, 24, false, false, 2),
        (24, 3, 72, 24, false, false, 1), (24, 5, 72, 40, true, false, 2),
        (40, 5, 120, 40, true, false, 1), (40, 5, 120, 40, true, false, 1),
        (40, 3, 240, 80, false, true, 2), (80, 3, 200, 80, false, true, 1),
        (80, 3, 184, 80, false, true, 1), (80, 3, 184, 80, false, true, 1),
        (80, 3, 480, 112, true, true, 1), (112, 3, 672, 112, true, true, 1),
        (112, 5, 672, 160, true, true, 2), (160, 5, 960, 160, true, true, 1),
        (160, 5, 960, 160, true, true, 1),
    ];
    #[rustfmt::skip]
    const SMALL: &[(usize, usize, usize, usize, bool, bool, usize)] = &[
        (16, 3, 16, 16, true, false, 2), (16, 3, 72, 24, false, false, 2),
        (24, 3, 88, 24, false, false, 1), (24, 5, 96, 40, true, true, 2),
        (40, 5, 240, 40, true, true, 1), (40, 5, 240, 40, true, true, 1),
        (40, 5, 120, 48, true, true, 1), (48, 5, 144, 48, true, true, 1),
        (48, 5, 288, 96, true, true, 2), (96, 5, 576, 96, true, true, 1),
        (96, 5, 576, 96, true, true, 1),
    ];
    let (table, last_channel) = if small { (SMALL, 1024) } else { (LARGE, 1280) };
    let norm = Norm {
        eps: 1e-3,
        momentum: 0.01,
    };
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    let first = table[0].0;
    x = conv_norm_act(
        &mut b,
        "features.0",
        Conv2d::new(in_ch, first, 3).stride(2),
        norm,
        Some(Activation::Hardswish),
        x,
    );
    for (i, &(inp, k, exp, out, se, hs, stride)) in table.iter().enumerate() {
        let p = format!("features.{}.block", i + 1);
        let act = if hs {
            Activation::Hardswish
        } else {
            Activation::Relu
        };
        let mut y = x;
        let mut li = 0;
        if exp != inp {
            y = conv_norm_act(
                &mut b,
                &format!("{p}.{li}"),
                Conv2d::new(inp, exp, 1),
                norm,
                Some(act),
                y,
            );
            li += 1;
        }
        y = conv_norm_act(
            &mut b,
            &format!("{p}.{li}"),
            Conv2d::new(exp, exp, k).stride(stride).groups(exp),
            norm,
            Some(act),
            y,
        );
        li += 1;
        if se {
            y = squeeze_excitation(
                &mut b,
                &format!("{p}.{li}"),
                exp,
                make_divisible((exp / 4) as f64, 8),
                Op::relu(false),
                Op::act(Activation::Hardsigmoid, false),
                y,
            );
            li += 1;
        }
        y = conv_norm_act(
            &mut b,
            &format!("{p}.{li}"),
            Conv2d::new(exp, out, 1),
            norm,
            None,
            y,
        );
        x = if stride == 1 && inp == out {
            b.add(
                format!("features.{}.add", i + 1),
                Op::Add { inplace: true },
                &[y, x],
            )
        } else {
            y
        };
    }
    let last_in = table[table.len() - 1].3;
    x = conv_norm_act(
        &mut b,
        &format!("features.{}", table.len() + 1),
        Conv2d::new(last_in, 6 * last_in, 1),
        norm,
        Some(Activation::Hardswish),
        x,
    );
    x = pool_flatten(&mut b, x);
    x = b.then(
        "classifier.0",
        Op::Linear(Linear::new(6 * last_in, last_channel)),
        x,
    );
    x = b.then("classifier.1", Op::act(Activation::Hardswish, true), x);
    x = b.then(
        "classifier.2",
        Op::Dropout {
            p: 0.2,
            inplace: true,
        },
        x,
    );
    b.then(
        "classifier.3",
        Op::Linear(Linear::new(last_channel, classes)),
        x,
    );
    b.build()
}

/// torchvision's `_round_to_multiple_of(val, 8)` with its 0.9 round-up bias.
fn round_to_multiple_of(val: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let new = (((val + d / 2.0) as usize) / divisor * divisor).max(divisor);
    if new as f64 >= 0.9 * val {
        new
    } else {
        new + divisor
    }
}

/// `mnasnet0_5`, `mnasnet0_75`, `mnasnet1_0`, `mnasnet1_3` (MNASNet B1, version 2).
pub(super) fn mnasnet(name: &str, input: Vec<usize>, classes: usize) -> Graph {
    let alpha = match name {
        "mnasnet0_5" => 0.5,
        "mnasnet0_75" => 0.75,
        "mnasnet1_0" => 1.0,
        "mnasnet1_3" => 1.3,
        other => unreachable!("zoo ENTRIES lists no {other}"),
    };
    let depths: Vec<usize> = [32, 16, 24, 40, 80, 96, 192, 320]
        .iter()
        .map(|&d| round_to_multiple_of(d as f64 * alpha, 8))
        .collect();
    let norm = Norm {
        eps: 1e-5,
        momentum: 1.0 - 0.9997,
    };
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    let l = |i: usize| format!("layers.{i}");
    let bnm = |c: usize| {
        let mut n = BatchNorm2d::new(c);
        n.momentum = norm.momentum;
        Op::BatchNorm2d(n)
    };
    x = b.then(
        l(0),
        Op::Conv2d(
            Conv2d::new(in_ch, depths[0], 3)
                .stride(2)
                .padding(1)
                .no_bias(),
        ),
        x,
    );
    x = b.then(l(1), bnm(depths[0]), x);
    x = b.then(l(2), Op::relu(true), x);
    x = b.then(
        l(3),
        Op::Conv2d(
            Conv2d::new(depths[0], depths[0], 3)
                .padding(1)
                .groups(depths[0])
                .no_bias(),
        ),
        x,
    );
    x = b.then(l(4), bnm(depths[0]), x);
    x = b.then(l(5), Op::relu(true), x);
    x = b.then(l(6), conv1x1(depths[0], depths[1], 1), x);
    x = b.then(l(7), bnm(depths[1]), x);
    // (kernel, stride, expansion, repeats) of the six stacks.
    let stacks = [
        (3, 2, 3, 3),
        (5, 2, 3, 3),
        (5, 2, 6, 3),
        (3, 1, 6, 2),
        (5, 2, 6, 4),
        (3, 1, 6, 1),
    ];
    for (si, &(k, s, t, n)) in stacks.iter().enumerate() {
        for r in 0..n {
            let (inp, out) = (
                if r == 0 {
                    depths[si + 1]
                } else {
                    depths[si + 2]
                },
                depths[si + 2],
            );
            let stride = if r == 0 { s } else { 1 };
            let mid = inp * t;
            let p = format!("layers.{}.{r}.layers", 8 + si);
            let mut y = b.then(format!("{p}.0"), conv1x1(inp, mid, 1), x);
            y = b.then(format!("{p}.1"), bnm(mid), y);
            y = b.then(format!("{p}.2"), Op::relu(true), y);
            y = b.then(
                format!("{p}.3"),
                Op::Conv2d(
                    Conv2d::new(mid, mid, k)
                        .padding(k / 2)
                        .stride(stride)
                        .groups(mid)
                        .no_bias(),
                ),
                y,
            );
            y = b.then(format!("{p}.4"), bnm(mid), y);
            y = b.then(format!("{p}.5"), Op::relu(true), y);
            y = b.then(format!("{p}.6"), conv1x1(mid, out, 1), y);
            y = b.then(format!("{p}.7"), bnm(out), y);
            x = if inp == out && stride == 1 {
                b.add(
                    format!("layers.{}.{r}.add", 8 + si),
                    Op::Add { inplace: false },
                    &[y, x],
                )
            } else {
                y
            };
        }
    }
    x = b.then(l(14), conv1x1(depths[7], 1280, 1), x);
    x = b.then(l(15), bnm(1280), x);
    x = b.then(l(16), Op::relu(true), x);
    x = pool_flatten(&mut b, x);
    x = b.then(
        "classifier.0",
        Op::Dropout {
            p: 0.2,
            inplace: true,
        },
        x,
    );
    b.then("classifier.1", Op::Linear(Linear::new(1280, classes)), x);
    b.build()
}

/// One stage of an EfficientNet: (fused, expand ratio, kernel, stride, input channels,
/// output channels, layers).
type Stage = (bool, usize, usize, usize, usize, usize, usize);

/// `efficientnet_b0` ... `efficientnet_b7`: width and depth multipliers, dropout.
pub(super) fn efficientnet(name: &str, input: Vec<usize>, classes: usize) -> Graph {
    let (width, depth, drop) = match name {
        "efficientnet_b0" => (1.0, 1.0, 0.2),
        "efficientnet_b1" => (1.0, 1.1, 0.2),
        "efficientnet_b2" => (1.1, 1.2, 0.3),
        "efficientnet_b3" => (1.2, 1.4, 0.3),
        "efficientnet_b4" => (1.4, 1.8, 0.4),
        "efficientnet_b5" => (1.6, 2.2, 0.4),
        "efficientnet_b6" => (1.8, 2.6, 0.5),
        "efficientnet_b7" => (2.0, 3.1, 0.5),
        other => unreachable!("zoo ENTRIES lists no {other}"),
    };
    // B5-B7 use BatchNorm2d(eps=0.001, momentum=0.01).
    let norm = if matches!(
        name,
        "efficientnet_b5" | "efficientnet_b6" | "efficientnet_b7"
    ) {
        Norm {
            eps: 1e-3,
            momentum: 0.01,
        }
    } else {
        BN
    };
    let ch = |c: usize| make_divisible(c as f64 * width, 8);
    let layers = |n: usize| (n as f64 * depth).ceil() as usize;
    #[rustfmt::skip]
    let base = [
        (1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
        (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1),
    ];
    let stages: Vec<Stage> = base
        .iter()
        .map(|&(t, k, s, i, o, n)| (false, t, k, s, ch(i), ch(o), layers(n)))
        .collect();
    efficientnet_body(name, input, &stages, None, norm, drop, classes)
}

/// `efficientnet_v2_s`, `_m`, `_l`: fused MBConv stages first, BatchNorm eps 0.001.
pub(super) fn efficientnet_v2(name: &str, input: Vec<usize>, classes: usize) -> Graph {
    #[rustfmt::skip]
    let (stages, drop): (Vec<Stage>, f64) = match name {
        "efficientnet_v2_s" => (vec![
            (true, 1, 3, 1, 24, 24, 2), (true, 4, 3, 2, 24, 48, 4), (true, 4, 3, 2, 48, 64, 4),
            (false, 4, 3, 2, 64, 128, 6), (false, 6, 3, 1, 128, 160, 9),
            (false, 6, 3, 2, 160, 256, 15),
        ], 0.2),
        "efficientnet_v2_m" => (vec![
            (true, 1, 3, 1, 24, 24, 3), (true, 4, 3, 2, 24, 48, 5), (true, 4, 3, 2, 48, 80, 5),
            (false, 4, 3, 2, 80, 160, 7), (false, 6, 3, 1, 160, 176, 14),
            (false, 6, 3, 2, 176, 304, 18), (false, 6, 3, 1, 304, 512, 5),
        ], 0.3),
        "efficientnet_v2_l" => (vec![
            (true, 1, 3, 1, 32, 32, 4), (true, 4, 3, 2, 32, 64, 7), (true, 4, 3, 2, 64, 96, 7),
            (false, 4, 3, 2, 96, 192, 10), (false, 6, 3, 1, 192, 224, 19),
            (false, 6, 3, 2, 224, 384, 25), (false, 6, 3, 1, 384, 640, 7),
        ], 0.4),
        other => unreachable!("zoo ENTRIES lists no {other}"),
    };
    let norm = Norm {
        eps: 1e-3,
        momentum: 0.1,
    };
    efficientnet_body(name, input, &stages, Some(1280), norm, drop, classes)
}

/// torchvision's `EfficientNet` module: stem, MBConv / FusedMBConv stages with
/// stochastic depth rising linearly to 0.2, head conv, pool, dropout, linear.
fn efficientnet_body(
    name: &str,
    input: Vec<usize>,
    stages: &[Stage],
    last_channel: Option<usize>,
    norm: Norm,
    drop: f64,
    classes: usize,
) -> Graph {
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    let silu = Some(Activation::Silu);
    x = conv_norm_act(
        &mut b,
        "features.0",
        Conv2d::new(in_ch, stages[0].4, 3).stride(2),
        norm,
        silu,
        x,
    );
    let total: usize = stages.iter().map(|s| s.6).sum();
    let mut block_id = 0;
    for (si, &(fused, t, k, s, inp0, out, n)) in stages.iter().enumerate() {
        for r in 0..n {
            let (inp, stride) = if r == 0 { (inp0, s) } else { (out, 1) };
            let sd = 0.2 * block_id as f64 / total as f64;
            block_id += 1;
            let p = format!("features.{}.{r}", si + 1);
            let blk = format!("{p}.block");
            let expanded = make_divisible((inp * t) as f64, 8);
            let mut y = x;
            if fused {
                if expanded != inp {
                    let c = Conv2d::new(inp, expanded, k).stride(stride);
                    y = conv_norm_act(&mut b, &format!("{blk}.0"), c, norm, silu, y);
                    let c = Conv2d::new(expanded, out, 1);
                    y = conv_norm_act(&mut b, &format!("{blk}.1"), c, norm, None, y);
                } else {
                    let c = Conv2d::new(inp, out, k).stride(stride);
                    y = conv_norm_act(&mut b, &format!("{blk}.0"), c, norm, silu, y);
                }
            } else {
                let mut li = 0;
                if expanded != inp {
                    let c = Conv2d::new(inp, expanded, 1);
                    y = conv_norm_act(&mut b, &format!("{blk}.{li}"), c, norm, silu, y);
                    li += 1;
                }
                let c = Conv2d::new(expanded, expanded, k)
                    .stride(stride)
                    .groups(expanded);
                y = conv_norm_act(&mut b, &format!("{blk}.{li}"), c, norm, silu, y);
                y = squeeze_excitation(
                    &mut b,
                    &format!("{blk}.{}", li + 1),
                    expanded,
                    (inp / 4).max(1),
                    Op::act(Activation::Silu, true),
                    Op::act(Activation::Sigmoid, false),
                    y,
                );
                let c = Conv2d::new(expanded, out, 1);
                y = conv_norm_act(&mut b, &format!("{blk}.{}", li + 2), c, norm, None, y);
            }
            x = if stride == 1 && inp == out {
                y = b.then(
                    format!("{p}.stochastic_depth"),
                    Op::StochasticDepth { p: sd, row: true },
                    y,
                );
                b.add(format!("{p}.add"), Op::Add { inplace: true }, &[y, x])
            } else {
                y
            };
        }
    }
    let last_in = stages[stages.len() - 1].5;
    let head = last_channel.unwrap_or(4 * last_in);
    x = conv_norm_act(
        &mut b,
        &format!("features.{}", stages.len() + 1),
        Conv2d::new(last_in, head, 1),
        norm,
        silu,
        x,
    );
    x = pool_flatten(&mut b, x);
    x = b.then(
        "classifier.0",
        Op::Dropout {
            p: drop,
            inplace: true,
        },
        x,
    );
    b.then("classifier.1", Op::Linear(Linear::new(head, classes)), x);
    b.build()
}
