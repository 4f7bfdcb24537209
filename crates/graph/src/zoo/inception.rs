//! torchvision's GoogLeNet and Inception v3, with their auxiliary classifiers (trained
//! with 0.3 x their loss; `without_aux` drops them, as `aux_logits=False`).

use super::{pool_flatten, BatchNorm2d};
use crate::op::{Conv2d, Linear, Op, Pool2d};
use crate::{Graph, GraphBuilder, NodeId};

/// torchvision's BasicConv2d `{p}`: conv without bias, BatchNorm2d(eps=0.001),
/// `F.relu(inplace=True)`.
fn basic(b: &mut GraphBuilder, p: &str, conv: Conv2d, x: NodeId) -> NodeId {
    let out = conv.out_channels;
    let x = b.then(format!("{p}.conv"), Op::Conv2d(conv.no_bias()), x);
    let mut bn = BatchNorm2d::new(out);
    bn.eps = 1e-3;
    let x = b.then(format!("{p}.bn"), Op::BatchNorm2d(bn), x);
    b.then(format!("{p}.relu"), Op::relu(true), x)
}

fn k(i: usize, o: usize, kh: usize, kw: usize) -> Conv2d {
    let mut c = Conv2d::new(i, o, kh);
    c.kernel_size = (kh, kw);
    c
}

fn pad(mut c: Conv2d, ph: usize, pw: usize) -> Conv2d {
    c.padding = (ph, pw);
    c
}

fn max_pool(k: usize, s: usize, p: usize, ceil: bool) -> Op {
    let mut pool = Pool2d::new(k).stride(s).padding(p);
    pool.ceil_mode = ceil;
    Op::MaxPool2d(pool)
}

fn avg_pool(k: usize, s: usize, p: usize) -> Op {
    Op::AvgPool2d(Pool2d::new(k).stride(s).padding(p))
}

/// `googlenet` (aux_logits=True, transform_input=False as without weights).
pub(super) fn googlenet(name: &str, input: Vec<usize>, classes: usize) -> Graph {
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    x = basic(
        &mut b,
        "conv1",
        Conv2d::new(in_ch, 64, 7).stride(2).padding(3),
        x,
    );
    x = b.then("maxpool1", max_pool(3, 2, 0, true), x);
    x = basic(&mut b, "conv2", Conv2d::new(64, 64, 1), x);
    x = basic(&mut b, "conv3", Conv2d::new(64, 192, 3).padding(1), x);
    x = b.then("maxpool2", max_pool(3, 2, 0, true), x);
    let inception = |b: &mut GraphBuilder, p: &str, cfg: [usize; 7], x: NodeId| {
        let [i, c1, r3, c3, r5, c5, pp] = cfg;
        let b1 = basic(b, &format!("{p}.branch1"), Conv2d::new(i, c1, 1), x);
        let mut b2 = basic(b, &format!("{p}.branch2.0"), Conv2d::new(i, r3, 1), x);
        b2 = basic(
            b,
            &format!("{p}.branch2.1"),
            Conv2d::new(r3, c3, 3).padding(1),
            b2,
        );
        // torchvision's branch3 uses a 3x3 kernel (a known deviation from the paper).
        let mut b3 = basic(b, &format!("{p}.branch3.0"), Conv2d::new(i, r5, 1), x);
        b3 = basic(
            b,
            &format!("{p}.branch3.1"),
            Conv2d::new(r5, c5, 3).padding(1),
            b3,
        );
        let mut b4 = b.then(format!("{p}.branch4.0"), max_pool(3, 1, 1, true), x);
        b4 = basic(b, &format!("{p}.branch4.1"), Conv2d::new(i, pp, 1), b4);
        b.add(format!("{p}.cat"), Op::Concat, &[b1, b2, b3, b4])
    };
    let aux = |b: &mut GraphBuilder, p: &str, i: usize, x: NodeId| {
        let mut y = b.then(
            format!("{p}.pool"),
            Op::AdaptiveAvgPool2d {
                output_size: (4, 4),
            },
            x,
        );
        y = basic(b, &format!("{p}.conv"), Conv2d::new(i, 128, 1), y);
        y = b.then(format!("{p}.flatten"), Op::Flatten, y);
        y = b.then(format!("{p}.fc1"), Op::Linear(Linear::new(2048, 1024)), y);
        y = b.then(format!("{p}.relu"), Op::relu(true), y);
        y = b.then(
            format!("{p}.dropout"),
            Op::Dropout {
                p: 0.7,
                inplace: false,
            },
            y,
        );
        b.then(
            format!("{p}.fc2"),
            Op::Linear(Linear::new(1024, classes)),
            y,
        )
    };
    x = inception(&mut b, "inception3a", [192, 64, 96, 128, 16, 32, 32], x);
    x = inception(&mut b, "inception3b", [256, 128, 128, 192, 32, 96, 64], x);
    x = b.then("maxpool3", max_pool(3, 2, 0, true), x);
    x = inception(&mut b, "inception4a", [480, 192, 96, 208, 16, 48, 64], x);
    let aux1_start = b.build_len();
    let a1 = aux(&mut b, "aux1", 512, x);
    b.aux_output(a1);
    let aux1 = aux1_start..b.build_len();
    x = inception(&mut b, "inception4b", [512, 160, 112, 224, 24, 64, 64], x);
    x = inception(&mut b, "inception4c", [512, 128, 128, 256, 24, 64, 64], x);
    x = inception(&mut b, "inception4d", [512, 112, 144, 288, 32, 64, 64], x);
    let aux2_start = b.build_len();
    let a2 = aux(&mut b, "aux2", 528, x);
    b.aux_output(a2);
    let aux2 = aux2_start..b.build_len();
    x = inception(&mut b, "inception4e", [528, 256, 160, 320, 32, 128, 128], x);
    x = b.then("maxpool4", max_pool(2, 2, 0, true), x);
    x = inception(&mut b, "inception5a", [832, 256, 160, 320, 32, 128, 128], x);
    x = inception(&mut b, "inception5b", [832, 384, 192, 384, 48, 128, 128], x);
    x = pool_flatten(&mut b, x);
    x = b.then(
        "dropout",
        Op::Dropout {
            p: 0.2,
            inplace: false,
        },
        x,
    );
    let fc = b.then("fc", Op::Linear(Linear::new(1024, classes)), x);
    // Registered: the trunk, then aux1 and aux2, then fc.
    let mut order: Vec<NodeId> = (0..fc)
        .filter(|i| !aux1.contains(i) && !aux2.contains(i))
        .collect();
    order.extend(aux1);
    order.extend(aux2);
    order.push(fc);
    b.param_order(order);
    b.build()
}

/// `inception_v3` (aux_logits=True; 299x299 images).
pub(super) fn inception_v3(name: &str, input: Vec<usize>, classes: usize) -> Graph {
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    x = basic(
        &mut b,
        "Conv2d_1a_3x3",
        Conv2d::new(in_ch, 32, 3).stride(2),
        x,
    );
    x = basic(&mut b, "Conv2d_2a_3x3", Conv2d::new(32, 32, 3), x);
    x = basic(
        &mut b,
        "Conv2d_2b_3x3",
        Conv2d::new(32, 64, 3).padding(1),
        x,
    );
    x = b.then("maxpool1", max_pool(3, 2, 0, false), x);
    x = basic(&mut b, "Conv2d_3b_1x1", Conv2d::new(64, 80, 1), x);
    x = basic(&mut b, "Conv2d_4a_3x3", Conv2d::new(80, 192, 3), x);
    x = b.then("maxpool2", max_pool(3, 2, 0, false), x);
    let a = |b: &mut GraphBuilder, p: &str, i: usize, pool: usize, x: NodeId| {
        let b1 = basic(b, &format!("{p}.branch1x1"), Conv2d::new(i, 64, 1), x);
        let mut b5 = basic(b, &format!("{p}.branch5x5_1"), Conv2d::new(i, 48, 1), x);
        b5 = basic(
            b,
            &format!("{p}.branch5x5_2"),
            Conv2d::new(48, 64, 5).padding(2),
            b5,
        );
        let mut d = basic(b, &format!("{p}.branch3x3dbl_1"), Conv2d::new(i, 64, 1), x);
        d = basic(
            b,
            &format!("{p}.branch3x3dbl_2"),
            Conv2d::new(64, 96, 3).padding(1),
            d,
        );
        d = basic(
            b,
            &format!("{p}.branch3x3dbl_3"),
            Conv2d::new(96, 96, 3).padding(1),
            d,
        );
        let mut bp = b.then(format!("{p}.avg_pool"), avg_pool(3, 1, 1), x);
        bp = basic(b, &format!("{p}.branch_pool"), Conv2d::new(i, pool, 1), bp);
        b.add(format!("{p}.cat"), Op::Concat, &[b1, b5, d, bp])
    };
    x = a(&mut b, "Mixed_5b", 192, 32, x);
    x = a(&mut b, "Mixed_5c", 256, 64, x);
    x = a(&mut b, "Mixed_5d", 288, 64, x);
    // InceptionB.
    {
        let p = "Mixed_6a";
        let b3 = basic(
            &mut b,
            &format!("{p}.branch3x3"),
            Conv2d::new(288, 384, 3).stride(2),
            x,
        );
        let mut d = basic(
            &mut b,
            &format!("{p}.branch3x3dbl_1"),
            Conv2d::new(288, 64, 1),
            x,
        );
        d = basic(
            &mut b,
            &format!("{p}.branch3x3dbl_2"),
            Conv2d::new(64, 96, 3).padding(1),
            d,
        );
        d = basic(
            &mut b,
            &format!("{p}.branch3x3dbl_3"),
            Conv2d::new(96, 96, 3).stride(2),
            d,
        );
        let bp = b.then(format!("{p}.max_pool"), max_pool(3, 2, 0, false), x);
        x = b.add(format!("{p}.cat"), Op::Concat, &[b3, d, bp]);
    }
    let c = |b: &mut GraphBuilder, p: &str, c7: usize, x: NodeId| {
        let i = 768;
        let b1 = basic(b, &format!("{p}.branch1x1"), Conv2d::new(i, 192, 1), x);
        let mut s = basic(b, &format!("{p}.branch7x7_1"), Conv2d::new(i, c7, 1), x);
        s = basic(
            b,
            &format!("{p}.branch7x7_2"),
            pad(k(c7, c7, 1, 7), 0, 3),
            s,
        );
        s = basic(
            b,
            &format!("{p}.branch7x7_3"),
            pad(k(c7, 192, 7, 1), 3, 0),
            s,
        );
        let mut d = basic(b, &format!("{p}.branch7x7dbl_1"), Conv2d::new(i, c7, 1), x);
        d = basic(
            b,
            &format!("{p}.branch7x7dbl_2"),
            pad(k(c7, c7, 7, 1), 3, 0),
            d,
        );
        d = basic(
            b,
            &format!("{p}.branch7x7dbl_3"),
            pad(k(c7, c7, 1, 7), 0, 3),
            d,
        );
        d = basic(
            b,
            &format!("{p}.branch7x7dbl_4"),
            pad(k(c7, c7, 7, 1), 3, 0),
            d,
        );
        d = basic(
            b,
            &format!("{p}.branch7x7dbl_5"),
            pad(k(c7, 192, 1, 7), 0, 3),
            d,
        );
        let mut bp = b.then(format!("{p}.avg_pool"), avg_pool(3, 1, 1), x);
        bp = basic(b, &format!("{p}.branch_pool"), Conv2d::new(i, 192, 1), bp);
        b.add(format!("{p}.cat"), Op::Concat, &[b1, s, d, bp])
    };
    x = c(&mut b, "Mixed_6b", 128, x);
    x = c(&mut b, "Mixed_6c", 160, x);
    x = c(&mut b, "Mixed_6d", 160, x);
    x = c(&mut b, "Mixed_6e", 192, x);
    // InceptionAux, computed in training only.
    {
        let p = "AuxLogits";
        let mut y = b.then(format!("{p}.avg_pool"), avg_pool(5, 3, 0), x);
        y = basic(&mut b, &format!("{p}.conv0"), Conv2d::new(768, 128, 1), y);
        y = basic(&mut b, &format!("{p}.conv1"), Conv2d::new(128, 768, 5), y);
        y = b.then(
            format!("{p}.pool"),
            Op::AdaptiveAvgPool2d {
                output_size: (1, 1),
            },
            y,
        );
        y = b.then(format!("{p}.flatten"), Op::Flatten, y);
        let fc = b.then(format!("{p}.fc"), Op::Linear(Linear::new(768, classes)), y);
        b.aux_output(fc);
    }
    // InceptionD.
    {
        let p = "Mixed_7a";
        let mut t = basic(
            &mut b,
            &format!("{p}.branch3x3_1"),
            Conv2d::new(768, 192, 1),
            x,
        );
        t = basic(
            &mut b,
            &format!("{p}.branch3x3_2"),
            Conv2d::new(192, 320, 3).stride(2),
            t,
        );
        let mut s = basic(
            &mut b,
            &format!("{p}.branch7x7x3_1"),
            Conv2d::new(768, 192, 1),
            x,
        );
        s = basic(
            &mut b,
            &format!("{p}.branch7x7x3_2"),
            pad(k(192, 192, 1, 7), 0, 3),
            s,
        );
        s = basic(
            &mut b,
            &format!("{p}.branch7x7x3_3"),
            pad(k(192, 192, 7, 1), 3, 0),
            s,
        );
        s = basic(
            &mut b,
            &format!("{p}.branch7x7x3_4"),
            Conv2d::new(192, 192, 3).stride(2),
            s,
        );
        let bp = b.then(format!("{p}.max_pool"), max_pool(3, 2, 0, false), x);
        x = b.add(format!("{p}.cat"), Op::Concat, &[t, s, bp]);
    }
    let e = |b: &mut GraphBuilder, p: &str, i: usize, x: NodeId| {
        let b1 = basic(b, &format!("{p}.branch1x1"), Conv2d::new(i, 320, 1), x);
        let t = basic(b, &format!("{p}.branch3x3_1"), Conv2d::new(i, 384, 1), x);
        let t1 = basic(
            b,
            &format!("{p}.branch3x3_2a"),
            pad(k(384, 384, 1, 3), 0, 1),
            t,
        );
        let t2 = basic(
            b,
            &format!("{p}.branch3x3_2b"),
            pad(k(384, 384, 3, 1), 1, 0),
            t,
        );
        let tc = b.add(format!("{p}.cat3x3"), Op::Concat, &[t1, t2]);
        let mut d = basic(b, &format!("{p}.branch3x3dbl_1"), Conv2d::new(i, 448, 1), x);
        d = basic(
            b,
            &format!("{p}.branch3x3dbl_2"),
            Conv2d::new(448, 384, 3).padding(1),
            d,
        );
        let d1 = basic(
            b,
            &format!("{p}.branch3x3dbl_3a"),
            pad(k(384, 384, 1, 3), 0, 1),
            d,
        );
        let d2 = basic(
            b,
            &format!("{p}.branch3x3dbl_3b"),
            pad(k(384, 384, 3, 1), 1, 0),
            d,
        );
        let dc = b.add(format!("{p}.cat3x3dbl"), Op::Concat, &[d1, d2]);
        let mut bp = b.then(format!("{p}.avg_pool"), avg_pool(3, 1, 1), x);
        bp = basic(b, &format!("{p}.branch_pool"), Conv2d::new(i, 192, 1), bp);
        b.add(format!("{p}.cat"), Op::Concat, &[b1, tc, dc, bp])
    };
    x = e(&mut b, "Mixed_7b", 1280, x);
    x = e(&mut b, "Mixed_7c", 2048, x);
    x = b.then(
        "avgpool",
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        x,
    );
    x = b.then(
        "dropout",
        Op::Dropout {
            p: 0.5,
            inplace: false,
        },
        x,
    );
    x = b.then("flatten", Op::Flatten, x);
    b.then("fc", Op::Linear(Linear::new(2048, classes)), x);
    b.build()
}
