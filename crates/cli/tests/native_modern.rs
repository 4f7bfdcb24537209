//! The planner's `native` profile against the engine's measured memory, to the byte, on a
//! small member of each family built from the newer layers (activations beyond ReLU,
//! broadcast multiply, concatenation, channel slices and shuffles, stochastic depth):
//! peak, phase, every category at the peak, before and after the step, steps 1 and 2.

mod common;

use vramlab_engine::OptimizerConfig;
use vramlab_graph::{
    load, Activation, Conv2d, GraphBuilder, Linear, ModelOptions, NodeId, Op, Shaped,
};
use vramlab_memory::{Optimizer, OptimizerKind};

const BATCH: usize = 2;

fn model(name: &str, input: Vec<usize>) -> Shaped {
    load(
        name,
        &ModelOptions {
            num_classes: Some(10),
            input_shape: Some(input),
        },
    )
    .unwrap()
    .infer()
    .unwrap()
}

/// SGD with momentum 0.9, or Adam, as the planner and the engine each spell it.
fn optimizer(adam: bool) -> (&'static str, Optimizer, OptimizerConfig) {
    if adam {
        (
            "adam",
            Optimizer::new(OptimizerKind::Adam),
            OptimizerConfig::named("adam", None).unwrap(),
        )
    } else {
        let mut e = OptimizerConfig::named("sgd", None).unwrap();
        if let OptimizerConfig::Sgd { momentum, .. } = &mut e {
            *momentum = 0.9;
        }
        (
            "sgd momentum",
            Optimizer {
                momentum: 0.9,
                ..Optimizer::new(OptimizerKind::Sgd)
            },
            e,
        )
    }
}

fn compare(name: &str, input: Vec<usize>, adam: bool) {
    compare_batch(name, input, adam, BATCH);
}

/// The engine's two steps against the plan. A batch whose BatchNorm sees one value per
/// channel must fail in both, with PyTorch's message.
fn compare_batch(name: &str, input: Vec<usize>, adam: bool, batch: usize) {
    compare_graph(name, &model(name, input), adam, batch);
}

fn compare_graph(name: &str, g: &Shaped, adam: bool, batch: usize) {
    let (oname, popt, eopt) = optimizer(adam);
    common::engine_equals_native_plan(
        &format!("{name} batch {batch} {oname}"),
        g,
        batch,
        &popt,
        &eopt,
    );
}

#[test]
fn efficientnet_b0_at_32x32_sgd_momentum() {
    compare("efficientnet_b0", vec![3, 32, 32], false);
}

#[test]
fn densenet121_at_32x32_adam() {
    compare("densenet121", vec![3, 32, 32], true);
}

#[test]
fn mobilenet_v3_small_at_32x32_adam() {
    compare("mobilenet_v3_small", vec![3, 32, 32], true);
}

#[test]
fn shufflenet_v2_x0_5_at_32x32_sgd_momentum() {
    compare("shufflenet_v2_x0_5", vec![3, 32, 32], false);
}

#[test]
fn squeezenet1_1_at_64x64_sgd_momentum() {
    compare("squeezenet1_1", vec![3, 64, 64], false);
}

#[test]
fn regnet_y_400mf_at_32x32_adam() {
    compare("regnet_y_400mf", vec![3, 32, 32], true);
}

#[test]
fn mnasnet0_5_at_32x32_sgd_momentum() {
    compare("mnasnet0_5", vec![3, 32, 32], false);
}

/// More members (Fused-MBConv, RegNetX without SE, SqueezeNet 1.0's ceil-mode pools,
/// MobileNetV3-Large, DenseNet-169, ShuffleNetV2 1.0), batches 1 and 3, both optimizers.
#[test]
fn more_members_batches_1_and_3_both_optimizers() {
    for (name, input) in [
        ("efficientnet_v2_s", vec![3, 32, 32]),
        ("regnet_x_400mf", vec![3, 32, 32]),
        ("squeezenet1_0", vec![3, 64, 64]),
        ("mobilenet_v3_large", vec![3, 32, 32]),
        ("densenet169", vec![3, 32, 32]),
        ("shufflenet_v2_x1_0", vec![3, 32, 32]),
        ("mnasnet1_0", vec![3, 32, 32]),
        ("efficientnet_b0", vec![3, 32, 32]),
    ] {
        for batch in [1, 3] {
            for adam in [false, true] {
                compare_batch(name, input.clone(), adam, batch);
            }
        }
    }
}

/// Small graphs at the edges of the new layers: inputs that need no gradient (the image
/// itself into a Concat, a Mul, a Narrow, a StochasticDepth, an in-place activation),
/// stochastic depth at p = 0 and p = 1 and in batch mode, an in-place activation on a
/// concatenation and on a product, a tensor read by a Mul twice and by a Concat twice.
#[test]
fn edge_graphs_of_the_new_layers() {
    type Body = fn(&mut GraphBuilder, NodeId) -> NodeId;
    let graphs: Vec<(&str, Body)> = vec![
        ("image into concat, mul and narrow", |b, x| {
            let c = b.then("c", Op::Conv2d(Conv2d::new(3, 3, 3).padding(1)), x);
            let cat = b.add("cat", Op::Concat, &[x, c, x]);
            let n = b.then("n", Op::Narrow { start: 2, len: 3 }, cat);
            let m = b.add("m", Op::Mul, &[x, n]);
            b.then("act", Op::act(Activation::Silu, true), m)
        }),
        (
            "in-place activation and stochastic depth on the image",
            |b, x| {
                let a = b.then("a", Op::act(Activation::Hardswish, true), x);
                let sd = b.then("sd", Op::StochasticDepth { p: 0.5, row: true }, a);
                let c = b.then("c", Op::Conv2d(Conv2d::new(3, 4, 3).padding(1)), sd);
                b.then("act", Op::act(Activation::Gelu, false), c)
            },
        ),
        ("stochastic depth p=0, p=1 and batch mode", |b, x| {
            let c = b.then("c", Op::Conv2d(Conv2d::new(3, 4, 3).padding(1)), x);
            let s0 = b.then("s0", Op::StochasticDepth { p: 0.0, row: true }, c);
            let s1 = b.then("s1", Op::StochasticDepth { p: 1.0, row: true }, c);
            let sb = b.then("sb", Op::StochasticDepth { p: 0.2, row: false }, c);
            let a = b.add("a", Op::Add { inplace: false }, &[s0, s1]);
            b.add("a2", Op::Add { inplace: true }, &[a, sb])
        }),
        ("in-place activations on a concat and a product", |b, x| {
            let c = b.then("c", Op::Conv2d(Conv2d::new(3, 4, 3).padding(1)), x);
            let d = b.then("d", Op::Conv2d(Conv2d::new(3, 2, 1)), x);
            let cat = b.add("cat", Op::Concat, &[c, d, c]);
            let r = b.then("r", Op::act(Activation::Relu6, true), cat);
            let m = b.add("m", Op::Mul, &[r, r]);
            let h = b.then("h", Op::act(Activation::Hardsigmoid, true), m);
            let sh = b.then("sh", Op::ChannelShuffle { groups: 5 }, h);
            b.then("t", Op::act(Activation::Tanh, false), sh)
        }),
    ];
    for (name, body) in graphs {
        let mut b = GraphBuilder::new(name, vec![3, 6, 6]);
        let x = b.input();
        let y = body(&mut b, x);
        let pool = b.then(
            "pool",
            Op::AdaptiveAvgPool2d {
                output_size: (1, 1),
            },
            y,
        );
        let f = b.then("flat", Op::Flatten, pool);
        let g = b.build().infer().unwrap();
        let ch = g.shapes[f][0];
        let mut g = g.graph.clone();
        g.nodes.push(vramlab_graph::Node {
            name: "fc".into(),
            op: Op::Linear(Linear::new(ch, 10)),
            inputs: vec![f],
        });
        let g = g.infer().unwrap();
        for batch in [1, 3] {
            for adam in [false, true] {
                compare_graph(name, &g, adam, batch);
            }
        }
    }
}
