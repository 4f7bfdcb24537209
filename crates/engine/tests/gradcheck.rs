//! Gradient checks by central finite differences, for every layer and the loss.

use vramlab_engine::rng::Rng;
use vramlab_engine::{Engine, OptimizerConfig};
use vramlab_graph::{BatchNorm2d, Conv2d, GraphBuilder, Linear, Op, Pool2d, Shaped};

fn engine(g: Shaped, seed: u64) -> Engine {
    Engine::new(g, OptimizerConfig::named("sgd", None).unwrap(), seed, 2).unwrap()
}

/// Checks d(loss)/d(param) for every parameter element (up to `per_param` of them).
fn check(g: Shaped, batch: usize, per_param: usize) {
    let name = g.graph.name.clone();
    let mut e = engine(g.clone(), 1);
    let per: usize = g.shapes[0].iter().product();
    let mut r = Rng::new(5);
    let x: Vec<f32> = (0..batch * per)
        .map(|_| (r.unit_f64() * 2.0 - 1.0) as f32)
        .collect();
    let k = g.num_classes();
    let labels: Vec<i64> = (0..batch).map(|i| (i % k) as i64).collect();
    let images = e.batch(x, batch).unwrap();
    let rng0 = e.rng.clone();
    e.gradients(&images, &labels).unwrap();
    let grads: Vec<Vec<f32>> = e
        .params
        .iter()
        .map(|p| p.grad.as_ref().unwrap().data().clone())
        .collect();
    let h = 1e-2f32;
    let (mut checked, mut kinks) = (0, 0);
    e.rng = rng0.clone();
    let f0 = e.loss(&images, &labels).unwrap();
    for (pi, grad) in grads.iter().enumerate() {
        let n = grad.len();
        for j in (0..n).step_by((n / per_param).max(1)) {
            let orig = e.params[pi].value.data()[j];
            let at = |v: f32, e: &mut Engine| {
                e.params[pi].value.data_mut()[j] = v;
                e.rng = rng0.clone();
                e.loss(&images, &labels).unwrap()
            };
            let up = at(orig + h, &mut e);
            let down = at(orig - h, &mut e);
            e.params[pi].value.data_mut()[j] = orig;
            let numeric = (up - down) / (2.0 * h as f64);
            let analytic = grad[j] as f64;
            let tol = 2e-3 + 2e-2 * numeric.abs().max(analytic.abs());
            // A ReLU or max-pool kink within +-h: the one-sided slopes disagree and the
            // central difference means nothing there.
            let (left, right) = ((f0 - down) / h as f64, (up - f0) / h as f64);
            if (numeric - analytic).abs() > tol && (left - right).abs() > tol {
                kinks += 1;
                continue;
            }
            checked += 1;
            assert!(
                (numeric - analytic).abs() <= tol,
                "{name}: {} [{j}]: analytic {analytic:.6}, numeric {numeric:.6}",
                e.params[pi].name
            );
        }
    }
    assert!(
        checked >= 4 * kinks,
        "{name}: {checked} checked, {kinks} at kinks"
    );
}

fn chain(name: &str, input: Vec<usize>, ops: Vec<Op>) -> Shaped {
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    for (i, op) in ops.into_iter().enumerate() {
        x = b.then(format!("l{i}"), op, x);
    }
    b.build().infer().unwrap()
}

fn head(features: usize) -> Vec<Op> {
    vec![Op::Flatten, Op::Linear(Linear::new(features, 3))]
}

#[test]
fn conv2d_with_stride_padding_dilation_groups_and_bias() {
    let mut c = Conv2d::new(4, 6, 3).stride(2).padding(2).groups(2);
    c.dilation = (2, 1);
    let mut ops = vec![Op::Conv2d(c)];
    ops.extend(head(6 * 4 * 5));
    check(chain("conv", vec![4, 7, 8], ops), 3, 40);
}

#[test]
fn depthwise_and_pointwise_convolutions_and_a_conv_below_a_conv() {
    let ops = vec![
        Op::Conv2d(Conv2d::new(2, 4, 3).padding(1)),
        Op::Conv2d(Conv2d::new(4, 4, 3).padding(1).groups(4).no_bias()),
        Op::Conv2d(Conv2d::new(4, 3, 1)),
        Op::Flatten,
        Op::Linear(Linear {
            in_features: 3 * 5 * 5,
            out_features: 4,
            bias: false,
        }),
    ];
    check(chain("dw", vec![2, 5, 5], ops), 2, 30);
}

#[test]
fn batchnorm_in_training_mode() {
    let mut ops = vec![
        Op::Conv2d(Conv2d::new(2, 3, 3)),
        Op::BatchNorm2d(BatchNorm2d::new(3)),
    ];
    ops.extend(head(3 * 4 * 4));
    check(chain("bn", vec![2, 6, 6], ops), 4, 30);
}

#[test]
fn relu_and_relu6_in_place_or_not() {
    for (a, b) in [(false, true), (true, false)] {
        let mut ops = vec![
            Op::Conv2d(Conv2d::new(1, 3, 3)),
            Op::relu(a),
            Op::Conv2d(Conv2d::new(3, 2, 1)),
            Op::relu6(b),
        ];
        ops.extend(head(2 * 4 * 4));
        check(chain("relu", vec![1, 6, 6], ops), 3, 30);
    }
}

#[test]
fn max_avg_and_adaptive_pooling() {
    let mut mp = Pool2d::new(3).stride(2).padding(1);
    mp.ceil_mode = true;
    let mut ap = Pool2d::new(2).padding(1);
    ap.count_include_pad = false;
    let ops = vec![
        Op::Conv2d(Conv2d::new(1, 2, 3)),
        Op::MaxPool2d(mp),
        Op::Conv2d(Conv2d::new(2, 2, 1)),
        Op::AvgPool2d(ap),
        Op::AdaptiveAvgPool2d {
            output_size: (3, 2),
        },
        Op::Conv2d(Conv2d::new(2, 2, 1)),
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
    ];
    let mut all = ops;
    all.extend(head(2));
    check(chain("pool", vec![1, 9, 9], all), 3, 30);
}

#[test]
fn dropout_with_a_fixed_mask() {
    let mut ops = vec![
        Op::Conv2d(Conv2d::new(1, 2, 3)),
        Op::Flatten,
        Op::Dropout {
            p: 0.3,
            inplace: false,
        },
    ];
    ops.push(Op::Linear(Linear::new(2 * 3 * 3, 3)));
    check(chain("drop", vec![1, 5, 5], ops), 4, 30);
}

#[test]
fn residual_adds_in_place_and_not() {
    for inplace in [true, false] {
        let mut b = GraphBuilder::new("res", vec![2, 5, 5]);
        let x = b.input();
        let stem = b.then("stem", Op::Conv2d(Conv2d::new(2, 3, 3).padding(1)), x);
        let y = b.then("body", Op::Conv2d(Conv2d::new(3, 3, 3).padding(1)), stem);
        let s = b.add("add", Op::Add { inplace }, &[y, stem]);
        let f = b.then("flat", Op::Flatten, s);
        b.then("fc", Op::Linear(Linear::new(75, 3)), f);
        check(b.build().infer().unwrap(), 2, 30);
    }
}

#[test]
fn the_zoo_lenet_checks_end_to_end() {
    let g = vramlab_graph::zoo::build("lenet5", &Default::default())
        .unwrap()
        .infer()
        .unwrap();
    check(g, 2, 12);
}
