//! Gradient checks by central finite differences, for every layer and the loss.

use vramlab_engine::rng::Rng;
use vramlab_engine::{Engine, OptimizerConfig};
use vramlab_graph::{Activation, BatchNorm2d, Conv2d, GraphBuilder, Linear, Op, Pool2d, Shaped};

fn engine(g: Shaped, seed: u64) -> Engine {
    Engine::new(g, OptimizerConfig::named("sgd", None).unwrap(), seed, 2).unwrap()
}

/// Checks d(loss)/d(param) for every parameter element (up to `per_param` of them).
fn check(g: Shaped, batch: usize, per_param: usize) {
    check_with_gain(g, batch, per_param, 1.0);
}

/// [`check`], with the first parameter (the first layer's weight) scaled by `gain` first:
/// pre-activations then spread over a few units, across the saturation points of
/// ReLU6, Hardswish and Hardsigmoid (at -3, 0, 3 and 6) and into the tails of the smooth
/// ones. Returns how many elements were checked away from kinks.
fn check_with_gain(g: Shaped, batch: usize, per_param: usize, gain: f32) -> usize {
    check_seeded(g, batch, per_param, gain, 1, 1)
}

/// [`check_with_gain`] with the engine's seed (initial weights and rng) given, on every
/// `param_step`-th parameter tensor only.
fn check_seeded(
    g: Shaped,
    batch: usize,
    per_param: usize,
    gain: f32,
    seed: u64,
    param_step: usize,
) -> usize {
    let name = g.graph.name.clone();
    let mut e = engine(g.clone(), seed);
    e.params[0]
        .value
        .data_mut()
        .iter_mut()
        .for_each(|v| *v *= gain);
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
    let (mut checked, mut kinks) = (0, 0);
    e.rng = rng0.clone();
    let f0 = e.loss(&images, &labels).unwrap();
    for (pi, grad) in grads.iter().enumerate().step_by(param_step) {
        let n = grad.len();
        for j in (0..n).step_by((n / per_param).max(1)) {
            let orig = e.params[pi].value.data()[j];
            let at = |v: f32, e: &mut Engine| {
                e.params[pi].value.data_mut()[j] = v;
                e.rng = rng0.clone();
                e.loss(&images, &labels).unwrap()
            };
            let analytic = grad[j] as f64;
            // A ReLU or max-pool kink within +-h makes the central difference meaningless;
            // so can two kinks, one each side, whose one-sided slopes happen to agree. A
            // mismatch is retried with a step five times smaller before it counts: a kink
            // is a mismatch whose one-sided slopes disagree at the smallest step.
            let mut verdict = None;
            for h in [1e-2f32, 2e-3, 5e-4] {
                let up = at(orig + h, &mut e);
                let down = at(orig - h, &mut e);
                e.params[pi].value.data_mut()[j] = orig;
                let numeric = (up - down) / (2.0 * h as f64);
                let tol = 2e-3 + 2e-2 * numeric.abs().max(analytic.abs());
                let (left, right) = ((f0 - down) / h as f64, (up - f0) / h as f64);
                verdict = Some((numeric, tol, (left - right).abs() > tol));
                if (numeric - analytic).abs() <= tol {
                    break;
                }
            }
            let (numeric, tol, kink) = verdict.expect("two steps tried");
            if (numeric - analytic).abs() > tol && kink {
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
    checked
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

/// Every activation, in place and not where the module takes `inplace`: twice in a chain
/// (after a conv, whose backward does not read its output, and after a second conv),
/// with the first conv's weights scaled so the pre-activations cross the kinks.
#[test]
fn every_activation_in_place_and_not() {
    for kind in Activation::ALL {
        let modes: &[bool] = if kind.has_inplace() {
            &[false, true]
        } else {
            &[false]
        };
        for &inplace in modes {
            for gain in [1.0, 4.0, 10.0] {
                let mut ops = vec![
                    Op::Conv2d(Conv2d::new(2, 3, 3).padding(1)),
                    Op::act(kind, inplace),
                    Op::Conv2d(Conv2d::new(3, 2, 1)),
                    Op::act(kind, inplace),
                ];
                ops.extend(head(2 * 4 * 4));
                let name = format!("{kind:?} inplace={inplace} gain={gain}");
                let checked = check_with_gain(chain(&name, vec![2, 4, 4], ops), 3, 30, gain);
                assert!(checked >= 40, "{name}: only {checked} checked");
            }
        }
    }
}

/// The activations' own gradients against central differences of `apply`, on a grid
/// that crosses every saturation point (away from the kinks themselves).
#[test]
fn activation_gradients_match_their_values_on_a_grid() {
    let kinks = [-3.0f64, 0.0, 3.0, 6.0];
    for kind in Activation::ALL {
        let mut n = 0;
        for i in -80..=80 {
            let x = i as f64 * 0.1 + 0.013;
            let h = 1e-3;
            if kinks.iter().any(|k| (x - k).abs() < 2.0 * h) {
                continue;
            }
            let f = |v: f64| kind.apply(v as f32) as f64;
            let numeric = (f(x + h) - f(x - h)) / (2.0 * h);
            // The kept tensor is the result where the gradient is computed from it.
            let v = if kind.grad_from_result() {
                kind.apply(x as f32)
            } else {
                x as f32
            };
            let analytic = kind.grad(1.0, v) as f64;
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 1e-2 * numeric.abs(),
                "{kind:?} at {x}: analytic {analytic}, numeric {numeric}"
            );
            n += 1;
        }
        assert!(n > 150, "{kind:?}: {n} points");
    }
}

/// The values themselves at a few points (references from Python's `math`: erf for GELU,
/// the tanh formula for GELU(approximate='tanh')), and NaN passing through as in PyTorch.
#[test]
fn activation_values_at_known_points() {
    use Activation::*;
    let cases: [(Activation, f32, f64); 22] = [
        (Relu, -1.5, 0.0),
        (Relu, 2.5, 2.5),
        (Relu6, -1.0, 0.0),
        (Relu6, 3.5, 3.5),
        (Relu6, 7.0, 6.0),
        (Silu, 1.0, 0.7310585786300049),
        (Silu, -2.5, -0.18964545005310887),
        (Sigmoid, 0.0, 0.5),
        (Sigmoid, 2.0, 0.8807970779778823),
        (Hardswish, -4.0, 0.0),
        (Hardswish, 1.0, 4.0 / 6.0),
        (Hardswish, 4.0, 4.0),
        (Hardsigmoid, -1.0, 2.0 / 6.0),
        (Hardsigmoid, 3.5, 1.0),
        (Gelu, 1.0, 0.8413447460685429),
        (Gelu, -1.0, -0.15865525393145707),
        (Gelu, -2.5, -0.015524163314440398),
        (Gelu, 0.5, 0.34573123063700656),
        (GeluTanh, 1.0, 0.8411919906082768),
        (GeluTanh, -2.5, -0.015084266089998577),
        (GeluTanh, 2.0, 1.954597694087775),
        (Tanh, 1.0, 0.7615941559557649),
    ];
    for (kind, x, want) in cases {
        let got = kind.apply(x) as f64;
        assert!(
            (got - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{kind:?}({x}) = {got}, want {want}"
        );
    }
    for kind in Activation::ALL {
        assert!(kind.apply(f32::NAN).is_nan(), "{kind:?}(NaN)");
    }
}

/// A squeeze-and-excitation block: adaptive avgpool -> conv1x1 -> act -> conv1x1 ->
/// sigmoid -> scale * x, the [C,1,1] scale broadcast over [C,H,W], in both operand
/// orders; `x` is read by the pool and by the multiply.
fn se_block(name: &str, scale_first: bool, act: Activation, inplace: bool) -> Shaped {
    let mut b = GraphBuilder::new(name, vec![2, 4, 4]);
    let x = b.input();
    let stem = b.then("stem", Op::Conv2d(Conv2d::new(2, 4, 3).padding(1)), x);
    let feat = b.then("act", Op::act(Activation::Silu, false), stem);
    let pool = b.then(
        "pool",
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        feat,
    );
    let fc1 = b.then("fc1", Op::Conv2d(Conv2d::new(4, 2, 1)), pool);
    let a = b.then("se_act", Op::act(act, inplace), fc1);
    let fc2 = b.then("fc2", Op::Conv2d(Conv2d::new(2, 4, 1)), a);
    let s = b.then("gate", Op::act(Activation::Sigmoid, false), fc2);
    let ins = if scale_first { [s, feat] } else { [feat, s] };
    let m = b.add("mul", Op::Mul, &ins);
    let f = b.then("flat", Op::Flatten, m);
    b.then("fc", Op::Linear(Linear::new(4 * 4 * 4, 3)), f);
    b.build().infer().unwrap()
}

#[test]
fn squeeze_excitation_multiply_broadcasts_in_both_operand_orders() {
    for scale_first in [true, false] {
        for (act, inplace) in [
            (Activation::Relu, true),
            (Activation::Silu, false),
            (Activation::Hardswish, true),
        ] {
            let name = format!("se scale_first={scale_first} {act:?}");
            let g = se_block(&name, scale_first, act, inplace);
            assert_eq!(g.shapes[g.graph.nodes.len() - 3], vec![4, 4, 4]);
            check(g, 3, 40);
        }
    }
}

/// `a * a` (both gradients go to one input) and a [1,H,W] map broadcast over channels.
#[test]
fn multiply_of_a_tensor_by_itself_and_a_spatial_broadcast() {
    let mut b = GraphBuilder::new("mul_self", vec![2, 4, 4]);
    let x = b.input();
    let a = b.then("a", Op::Conv2d(Conv2d::new(2, 3, 3).padding(1)), x);
    let sq = b.add("sq", Op::Mul, &[a, a]);
    let map = b.then("map", Op::Conv2d(Conv2d::new(3, 1, 1)), a);
    let gate = b.then("gate", Op::act(Activation::Tanh, false), map);
    let m = b.add("mul", Op::Mul, &[sq, gate]);
    let f = b.then("flat", Op::Flatten, m);
    b.then("fc", Op::Linear(Linear::new(3 * 4 * 4, 3)), f);
    check(b.build().infer().unwrap(), 2, 40);
}

/// Concatenations of one, two and three inputs, DenseNet-style: `stem` is read by a conv
/// and by two concatenations, `a` by a one-input concatenation and by a three-input one,
/// and `r` twice by one concatenation (`torch.cat([r, r])`).
#[test]
fn concat_of_one_two_and_three_inputs_with_shared_inputs() {
    let mut b = GraphBuilder::new("concat", vec![2, 4, 4]);
    let x = b.input();
    let stem = b.then("stem", Op::Conv2d(Conv2d::new(2, 3, 3).padding(1)), x);
    let a = b.then("a", Op::Conv2d(Conv2d::new(3, 2, 1)), stem);
    let one = b.add("cat1", Op::Concat, &[a]);
    let r = b.then("relu", Op::relu(false), one);
    let twice = b.add("cat_rr", Op::Concat, &[r, r]);
    let c = b.then("c", Op::Conv2d(Conv2d::new(4, 2, 3).padding(1)), twice);
    let two = b.add("cat2", Op::Concat, &[stem, c]);
    let d = b.then("d", Op::Conv2d(Conv2d::new(5, 1, 1)), two);
    let three = b.add("cat3", Op::Concat, &[a, stem, d]);
    let f = b.then("flat", Op::Flatten, three);
    b.then("fc", Op::Linear(Linear::new(6 * 4 * 4, 3)), f);
    let g = b.build().infer().unwrap();
    assert_eq!(g.shapes[three], vec![6, 4, 4]);
    check(g, 3, 30);
}

/// ShuffleNetV2's stride-1 unit: `x.chunk(2, dim=1)`, the second half through a branch,
/// both halves concatenated and the channels shuffled. Also both halves straight into a
/// concatenation in swapped order (every channel's gradient goes through a slice).
#[test]
fn narrow_halves_into_a_concat_and_a_channel_shuffle() {
    for through_branch in [true, false] {
        let mut b = GraphBuilder::new("shuffle_unit", vec![2, 4, 4]);
        let x = b.input();
        let stem = b.then("stem", Op::Conv2d(Conv2d::new(2, 4, 3).padding(1)), x);
        let lo = b.then("lo", Op::Narrow { start: 0, len: 2 }, stem);
        let hi = b.then("hi", Op::Narrow { start: 2, len: 2 }, stem);
        let cat = if through_branch {
            let c = b.then("pw", Op::Conv2d(Conv2d::new(2, 2, 1)), hi);
            let dw = b.then(
                "dw",
                Op::Conv2d(Conv2d::new(2, 2, 3).padding(1).groups(2)),
                c,
            );
            let r = b.then("relu", Op::relu(true), dw);
            b.add("cat", Op::Concat, &[lo, r])
        } else {
            b.add("cat", Op::Concat, &[hi, lo])
        };
        let sh = b.then("shuffle", Op::ChannelShuffle { groups: 2 }, cat);
        let mix = b.then("mix", Op::Conv2d(Conv2d::new(4, 3, 1)), sh);
        let f = b.then("flat", Op::Flatten, mix);
        b.then("fc", Op::Linear(Linear::new(3 * 4 * 4, 3)), f);
        check(b.build().infer().unwrap(), 3, 30);
    }
}

/// A channel shuffle of three groups of two between convolutions, and a slice from the
/// middle of the channels.
#[test]
fn channel_shuffle_of_three_groups_and_a_middle_slice() {
    let ops = vec![
        Op::Conv2d(Conv2d::new(2, 6, 3).padding(1)),
        Op::ChannelShuffle { groups: 3 },
        Op::Conv2d(Conv2d::new(6, 6, 1).groups(2)),
        Op::Narrow { start: 1, len: 4 },
        Op::Conv2d(Conv2d::new(4, 2, 1)),
        Op::Flatten,
        Op::Linear(Linear::new(2 * 3 * 3, 3)),
    ];
    check(chain("shuffle3", vec![2, 3, 3], ops), 3, 40);
}

/// A residual block whose branch goes through StochasticDepth (p = 0.5, per sample or
/// per batch) before the add, as in EfficientNet.
fn stochastic_depth_block(row: bool, p: f64) -> Shaped {
    let mut b = GraphBuilder::new("sd", vec![2, 4, 4]);
    let x = b.input();
    // No biases: a zero image then gives the body a zero input, which
    // `body_kept_by_sample` relies on.
    let stem = b.then(
        "stem",
        Op::Conv2d(Conv2d::new(2, 3, 3).padding(1).no_bias()),
        x,
    );
    let body = b.then(
        "body",
        Op::Conv2d(Conv2d::new(3, 3, 3).padding(1).no_bias()),
        stem,
    );
    let sd = b.then("sd", Op::StochasticDepth { p, row }, body);
    let s = b.add("add", Op::Add { inplace: false }, &[sd, stem]);
    let f = b.then("flat", Op::Flatten, s);
    b.then("fc", Op::Linear(Linear::new(3 * 4 * 4, 3)), f);
    b.build().infer().unwrap()
}

/// Whether the body's weight gets a gradient from each sample of a batch of 4, for an
/// engine made with `seed` (so with the rng the check starts from): zero exactly for the
/// samples whose branch was dropped.
fn body_kept_by_sample(g: &Shaped, seed: u64) -> Vec<bool> {
    let mut e = engine(g.clone(), seed);
    let rng0 = e.rng.clone();
    let per: usize = g.shapes[0].iter().product();
    let body = e
        .params
        .iter()
        .position(|p| p.name == "body.weight")
        .unwrap();
    (0..4)
        .map(|s| {
            // Only sample `s` is nonzero: the body's gradient then comes from it alone.
            let x: Vec<f32> = (0..4 * per)
                .map(|i| {
                    if i / per == s {
                        ((i % 7) as f32) / 7.0 - 0.4
                    } else {
                        0.0
                    }
                })
                .collect();
            let images = e.batch(x, 4).unwrap();
            e.rng = rng0.clone();
            e.gradients(&images, &[0, 1, 2, 0]).unwrap();
            let gb = e.params[body].grad.as_ref().unwrap().data().clone();
            gb.iter().any(|v| *v != 0.0)
        })
        .collect()
}

#[test]
fn stochastic_depth_row_and_batch_modes_in_training() {
    for row in [true, false] {
        let g = stochastic_depth_block(row, 0.5);
        // The check resets the rng before every loss: the noise must then repeat, and
        // without the reset it must not (else the check would not test the noise).
        let mut e = engine(g.clone(), 1);
        let per: usize = g.shapes[0].iter().product();
        let images = e
            .batch((0..4 * per).map(|i| (i % 5) as f32 - 2.0).collect(), 4)
            .unwrap();
        let labels = [0, 1, 2, 0];
        let rng0 = e.rng.clone();
        let first = e.loss(&images, &labels).unwrap();
        e.rng = rng0.clone();
        assert_eq!(e.loss(&images, &labels).unwrap(), first, "row={row}");
        let mut other = Vec::new();
        for _ in 0..8 {
            other.push(e.loss(&images, &labels).unwrap());
        }
        assert!(other.iter().any(|&l| l != first), "row={row}: {other:?}");
        // A seed whose noise keeps the branch for some samples and drops it for others
        // (row mode), or keeps it for the whole batch (batch mode; all or none), so the
        // check sees the scaled branch and, per sample, a dropped one.
        let seed = (1..40)
            .find(|&seed| {
                let kept = body_kept_by_sample(&g, seed);
                if row {
                    kept.iter().any(|&k| k) && kept.iter().any(|&k| !k)
                } else {
                    assert!(kept.iter().all(|&k| k == kept[0]), "{kept:?}");
                    kept[0]
                }
            })
            .expect("a seed that keeps the branch");
        let checked = check_seeded(g, 4, 30, 1.0, seed, 1);
        assert!(checked >= 60, "row={row}: only {checked} checked");
    }
}

/// p = 0 passes the input through; p = 1 drops the branch entirely
/// (its gradient is zero, and the check still holds).
#[test]
fn stochastic_depth_with_p_zero_and_one() {
    for p in [0.0, 1.0] {
        check(stochastic_depth_block(true, p), 2, 30);
    }
}

/// The noise itself: kept with probability 1 - p and then scaled by 1 / (1 - p), one draw
/// per sample (row) or one for the whole batch. A 1x1 input of ones through a unit conv,
/// the StochasticDepth and a linear layer with weights [1, 0] gives logits [noise, 0]: the
/// loss of label 1 is ln(1 + e^noise), so it tells which samples were kept.
#[test]
fn stochastic_depth_noise_keeps_one_minus_p_scaled_by_its_inverse() {
    let p: f64 = 0.25;
    let kept_loss = (1.0f64 + (1.0f64 / (1.0 - p)).exp()).ln();
    let dropped_loss = 2.0f64.ln();
    for row in [true, false] {
        let ops = vec![
            Op::Conv2d(Conv2d::new(1, 1, 1).no_bias()),
            Op::StochasticDepth { p, row },
            Op::Flatten,
            Op::Linear(Linear {
                in_features: 1,
                out_features: 2,
                bias: false,
            }),
        ];
        let g = chain("sd_noise", vec![1, 1, 1], ops);
        let mut e = engine(g, 3);
        e.params[0].value.data_mut()[0] = 1.0;
        e.params[1].value.data_mut().copy_from_slice(&[1.0, 0.0]);
        let n = 4000;
        let images = e.batch(vec![1.0; n], n).unwrap();
        let labels = vec![1; n];
        let mut kept = 0.0;
        let draws = if row { 1 } else { 400 };
        for _ in 0..draws {
            let loss = e.loss(&images, &labels).unwrap();
            // The mean loss is q * kept_loss + (1 - q) * dropped_loss.
            let q = (loss - dropped_loss) / (kept_loss - dropped_loss);
            if !row {
                assert!(
                    q.abs() < 1e-5 || (q - 1.0).abs() < 1e-5,
                    "batch mode keeps all or none: {q}"
                );
            }
            kept += q;
        }
        let q = kept / draws as f64;
        assert!((q - 0.75).abs() < 0.05, "row={row}: kept {q}");
    }
}

/// A zoo model at a small input with 3 classes, every ReLU and ReLU6 swapped for SiLU
/// (in place where it was) so that the loss is smooth: thousands of ReLU kinks within a
/// step of every weight would otherwise leave the central differences meaningless.
fn smooth_zoo(name: &str, input: Vec<usize>) -> Shaped {
    let mut g = vramlab_graph::zoo::build(
        name,
        &vramlab_graph::ModelOptions {
            num_classes: Some(3),
            input_shape: Some(input),
        },
    )
    .unwrap();
    for node in &mut g.nodes {
        if let Op::Act {
            kind: Activation::Relu | Activation::Relu6,
            inplace,
        } = node.op
        {
            node.op = Op::act(Activation::Silu, inplace);
        }
    }
    g.infer().unwrap()
}

/// A whole model end to end: one element of every `param_step`-th parameter, batch 4
/// (BatchNorm over fewer values, at 1x1 or 2x2 maps, curves the loss too sharply for
/// central differences: hence inputs of 64x64 for the deeper models).
fn check_zoo(name: &str, input: Vec<usize>, param_step: usize) {
    let g = smooth_zoo(name, input);
    let tensors = g.params().len().div_ceil(param_step);
    let checked = check_seeded(g, 4, 1, 1.0, 1, param_step);
    assert!(
        checked + 2 >= tensors,
        "{name}: {checked} of {tensors} checked"
    );
}

/// Fire modules: two expand branches into a concatenation.
#[test]
fn squeezenet1_1_end_to_end() {
    check_zoo("squeezenet1_1", vec![3, 32, 32], 1);
}

/// Squeeze-excitation with Hardsigmoid gates, Hardswish in place.
#[test]
fn mobilenet_v3_small_end_to_end() {
    check_zoo("mobilenet_v3_small", vec![3, 64, 64], 1);
}

/// chunk + branch + concat + channel shuffle units.
#[test]
fn shufflenet_v2_x0_5_end_to_end() {
    check_zoo("shufflenet_v2_x0_5", vec![3, 64, 64], 1);
}

/// MBConv with SiLU, squeeze-excitation and stochastic depth in training.
#[test]
fn efficientnet_b0_end_to_end() {
    check_zoo("efficientnet_b0", vec![3, 64, 64], 4);
}

/// Dense blocks: every layer reads a concatenation of all before it.
#[test]
fn densenet121_end_to_end() {
    check_zoo("densenet121", vec![3, 64, 64], 10);
}

/// Grouped bottlenecks with squeeze-excitation.
#[test]
fn regnet_y_400mf_end_to_end() {
    check_zoo("regnet_y_400mf", vec![3, 64, 64], 4);
}

#[test]
fn mnasnet0_5_end_to_end() {
    check_zoo("mnasnet0_5", vec![3, 64, 64], 1);
}
