//! torchvision's families built on concatenation: DenseNet, SqueezeNet and ShuffleNetV2.

use super::{bn, conv1x1, dropout, pool_flatten};
use crate::op::{Conv2d, Linear, Op, Pool2d};
use crate::{Graph, GraphBuilder, NodeId};

/// `densenet121`, `densenet161`, `densenet169`, `densenet201` (memory_efficient off:
/// each layer concatenates every earlier feature map).
pub(super) fn densenet(name: &str, input: Vec<usize>, classes: usize) -> Graph {
    let (growth, blocks, init): (usize, [usize; 4], usize) = match name {
        "densenet121" => (32, [6, 12, 24, 16], 64),
        "densenet161" => (48, [6, 12, 36, 24], 96),
        "densenet169" => (32, [6, 12, 32, 32], 64),
        "densenet201" => (32, [6, 12, 48, 32], 64),
        other => unreachable!("zoo ENTRIES lists no {other}"),
    };
    let bn_size = 4;
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    x = b.then(
        "features.conv0",
        Op::Conv2d(Conv2d::new(in_ch, init, 7).stride(2).padding(3).no_bias()),
        x,
    );
    x = bn(&mut b, "features.norm0".into(), init, x);
    x = b.then("features.relu0", Op::relu(true), x);
    x = b.then(
        "features.pool0",
        Op::MaxPool2d(Pool2d::new(3).stride(2).padding(1)),
        x,
    );
    let mut features = init;
    for (bi, &n) in blocks.iter().enumerate() {
        let mut parts: Vec<NodeId> = vec![x];
        for li in 0..n {
            let p = format!("features.denseblock{}.denselayer{}", bi + 1, li + 1);
            let c_in = features + li * growth;
            let mut y = b.add(format!("{p}.cat"), Op::Concat, &parts);
            y = bn(&mut b, format!("{p}.norm1"), c_in, y);
            y = b.then(format!("{p}.relu1"), Op::relu(true), y);
            y = b.then(format!("{p}.conv1"), conv1x1(c_in, bn_size * growth, 1), y);
            y = bn(&mut b, format!("{p}.norm2"), bn_size * growth, y);
            y = b.then(format!("{p}.relu2"), Op::relu(true), y);
            y = b.then(
                format!("{p}.conv2"),
                Op::Conv2d(
                    Conv2d::new(bn_size * growth, growth, 3)
                        .padding(1)
                        .no_bias(),
                ),
                y,
            );
            parts.push(y);
        }
        features += n * growth;
        x = b.add(
            format!("features.denseblock{}.cat", bi + 1),
            Op::Concat,
            &parts,
        );
        if bi + 1 < blocks.len() {
            let p = format!("features.transition{}", bi + 1);
            x = bn(&mut b, format!("{p}.norm"), features, x);
            x = b.then(format!("{p}.relu"), Op::relu(true), x);
            x = b.then(format!("{p}.conv"), conv1x1(features, features / 2, 1), x);
            x = b.then(format!("{p}.pool"), Op::AvgPool2d(Pool2d::new(2)), x);
            features /= 2;
        }
    }
    x = bn(&mut b, "features.norm5".into(), features, x);
    x = b.then("relu", Op::relu(true), x);
    x = pool_flatten(&mut b, x);
    b.then("classifier", Op::Linear(Linear::new(features, classes)), x);
    b.build()
}

/// `squeezenet1_0` and `squeezenet1_1`: Fire modules (squeeze, then two expand
/// branches concatenated), a 1x1 conv classifier.
pub(super) fn squeezenet(name: &str, input: Vec<usize>, classes: usize) -> Graph {
    let v1_0 = name == "squeezenet1_0";
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    let pool = || {
        let mut p = Pool2d::new(3).stride(2);
        p.ceil_mode = true;
        Op::MaxPool2d(p)
    };
    // 0: max pool; else (in, squeeze, expand1x1, expand3x3) of a Fire module.
    #[rustfmt::skip]
    let body: &[(usize, usize, usize, usize)] = if v1_0 {
        &[(96, 16, 64, 64), (128, 16, 64, 64), (128, 32, 128, 128), (0, 0, 0, 0),
          (256, 32, 128, 128), (256, 48, 192, 192), (384, 48, 192, 192), (384, 64, 256, 256),
          (0, 0, 0, 0), (512, 64, 256, 256)]
    } else {
        &[(64, 16, 64, 64), (128, 16, 64, 64), (0, 0, 0, 0), (128, 32, 128, 128),
          (256, 32, 128, 128), (0, 0, 0, 0), (256, 48, 192, 192), (384, 48, 192, 192),
          (384, 64, 256, 256), (512, 64, 256, 256)]
    };
    let stem = if v1_0 {
        Conv2d::new(in_ch, 96, 7).stride(2)
    } else {
        Conv2d::new(in_ch, 64, 3).stride(2)
    };
    x = b.then("features.0", Op::Conv2d(stem), x);
    x = b.then("features.1", Op::relu(true), x);
    x = b.then("features.2", pool(), x);
    for (i, &(inp, sq, e1, e3)) in body.iter().enumerate() {
        let p = format!("features.{}", i + 3);
        if inp == 0 {
            x = b.then(p, pool(), x);
            continue;
        }
        let mut s = b.then(
            format!("{p}.squeeze"),
            Op::Conv2d(Conv2d::new(inp, sq, 1)),
            x,
        );
        s = b.then(format!("{p}.squeeze_activation"), Op::relu(true), s);
        let mut a = b.then(
            format!("{p}.expand1x1"),
            Op::Conv2d(Conv2d::new(sq, e1, 1)),
            s,
        );
        a = b.then(format!("{p}.expand1x1_activation"), Op::relu(true), a);
        let mut c = b.then(
            format!("{p}.expand3x3"),
            Op::Conv2d(Conv2d::new(sq, e3, 3).padding(1)),
            s,
        );
        c = b.then(format!("{p}.expand3x3_activation"), Op::relu(true), c);
        x = b.add(format!("{p}.cat"), Op::Concat, &[a, c]);
    }
    x = b.then("classifier.0", dropout(0.5), x);
    x = b.then("classifier.1", Op::Conv2d(Conv2d::new(512, classes, 1)), x);
    x = b.then("classifier.2", Op::relu(true), x);
    x = b.then(
        "classifier.3",
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        x,
    );
    b.then("flatten", Op::Flatten, x);
    b.build()
}

/// `shufflenet_v2_x0_5` ... `shufflenet_v2_x2_0`.
pub(super) fn shufflenet_v2(name: &str, input: Vec<usize>, classes: usize) -> Graph {
    let widths: [usize; 5] = match name {
        "shufflenet_v2_x0_5" => [24, 48, 96, 192, 1024],
        "shufflenet_v2_x1_0" => [24, 116, 232, 464, 1024],
        "shufflenet_v2_x1_5" => [24, 176, 352, 704, 1024],
        "shufflenet_v2_x2_0" => [24, 244, 488, 976, 2048],
        other => unreachable!("zoo ENTRIES lists no {other}"),
    };
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    x = b.then(
        "conv1.0",
        Op::Conv2d(
            Conv2d::new(in_ch, widths[0], 3)
                .stride(2)
                .padding(1)
                .no_bias(),
        ),
        x,
    );
    x = bn(&mut b, "conv1.1".into(), widths[0], x);
    x = b.then("conv1.2", Op::relu(true), x);
    x = b.then(
        "maxpool",
        Op::MaxPool2d(Pool2d::new(3).stride(2).padding(1)),
        x,
    );
    let depthwise = |c: usize, stride: usize| {
        Op::Conv2d(
            Conv2d::new(c, c, 3)
                .stride(stride)
                .padding(1)
                .groups(c)
                .no_bias(),
        )
    };
    let mut inp = widths[0];
    for (si, &repeats) in [4usize, 8, 4].iter().enumerate() {
        let oup = widths[si + 1];
        let half = oup / 2;
        for r in 0..repeats {
            let p = format!("stage{}.{r}", si + 2);
            let stride = if r == 0 { 2 } else { 1 };
            let (left, right) = if stride == 1 {
                let x1 = b.then(
                    format!("{p}.chunk0"),
                    Op::Narrow {
                        start: 0,
                        len: half,
                    },
                    x,
                );
                let x2 = b.then(
                    format!("{p}.chunk1"),
                    Op::Narrow {
                        start: half,
                        len: half,
                    },
                    x,
                );
                (x1, x2)
            } else {
                let q = format!("{p}.branch1");
                let mut l = b.then(format!("{q}.0"), depthwise(inp, 2), x);
                l = bn(&mut b, format!("{q}.1"), inp, l);
                l = b.then(format!("{q}.2"), conv1x1(inp, half, 1), l);
                l = bn(&mut b, format!("{q}.3"), half, l);
                l = b.then(format!("{q}.4"), Op::relu(true), l);
                (l, x)
            };
            let q = format!("{p}.branch2");
            let c_in = if stride > 1 { inp } else { half };
            let mut y = b.then(format!("{q}.0"), conv1x1(c_in, half, 1), right);
            y = bn(&mut b, format!("{q}.1"), half, y);
            y = b.then(format!("{q}.2"), Op::relu(true), y);
            y = b.then(format!("{q}.3"), depthwise(half, stride), y);
            y = bn(&mut b, format!("{q}.4"), half, y);
            y = b.then(format!("{q}.5"), conv1x1(half, half, 1), y);
            y = bn(&mut b, format!("{q}.6"), half, y);
            y = b.then(format!("{q}.7"), Op::relu(true), y);
            let cat = b.add(format!("{p}.cat"), Op::Concat, &[left, y]);
            x = b.then(
                format!("{p}.shuffle"),
                Op::ChannelShuffle { groups: 2 },
                cat,
            );
            inp = oup;
        }
    }
    x = b.then("conv5.0", conv1x1(inp, widths[4], 1), x);
    x = bn(&mut b, "conv5.1".into(), widths[4], x);
    x = b.then("conv5.2", Op::relu(true), x);
    x = pool_flatten(&mut b, x);
    b.then("fc", Op::Linear(Linear::new(widths[4], classes)), x);
    b.build()
}
