//! Gradient checks by central finite differences for the transformer layers: LayerNorm,
//! multi-head self-attention, learnable leaves (class token, position embedding, layer
//! scale), select, tokens, permute and Linear on tokens.

use vramlab_engine::rng::Rng;
use vramlab_engine::{Engine, OptimizerConfig};
use vramlab_graph::zoo::vit::{transformer, Vit};
use vramlab_graph::{Conv2d, GraphBuilder, LayerNorm, Linear, Op, Shaped};

fn engine(g: Shaped, seed: u64) -> Engine {
    Engine::new(g, OptimizerConfig::named("sgd", None).unwrap(), seed, 2).unwrap()
}

/// Checks d(loss)/d(param) for every parameter (up to `per_param` elements of each).
/// Every parameter is first moved by U(-0.3, 0.3): torchvision's constant
/// initialisations (a zero class token, a 1e-6 layer scale, LayerNorm's ones and zeros)
/// would otherwise hide a wrong gradient behind a vanishing one.
fn check(g: Shaped, batch: usize, per_param: usize) -> usize {
    let name = g.graph.name.clone();
    let mut e = engine(g.clone(), 1);
    let mut r = Rng::new(9);
    for p in &e.params {
        p.value
            .data_mut()
            .iter_mut()
            .for_each(|v| *v += (r.unit_f64() * 0.6 - 0.3) as f32);
    }
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
        .map(|p| {
            p.grad
                .as_ref()
                .unwrap_or_else(|| panic!("{name}: {} has no gradient", p.name))
                .data()
                .clone()
        })
        .collect();
    let mut checked = 0;
    for (pi, grad) in grads.iter().enumerate() {
        let n = grad.len();
        for j in (0..n).step_by((n / per_param).max(1)) {
            let orig = e.params[pi].value.data()[j];
            let at = |v: f32, e: &mut Engine| {
                e.params[pi].value.data_mut()[j] = v;
                e.rng = rng0.clone();
                e.loss(&images, &labels).unwrap()
            };
            let analytic = grad[j] as f64;
            // The smooth layers have no kinks: the best of a few steps must agree.
            let mut best = f64::INFINITY;
            let mut seen = 0.0;
            for h in [1e-2f32, 2e-3, 5e-4] {
                let up = at(orig + h, &mut e);
                let down = at(orig - h, &mut e);
                e.params[pi].value.data_mut()[j] = orig;
                let numeric = (up - down) / (2.0 * h as f64);
                let tol = 2e-3 + 2e-2 * numeric.abs().max(analytic.abs());
                if (numeric - analytic).abs() / tol < best {
                    best = (numeric - analytic).abs() / tol;
                    seen = numeric;
                }
            }
            assert!(
                best <= 1.0,
                "{name}: {} [{j}]: analytic {analytic:.6}, numeric {seen:.6}",
                e.params[pi].name
            );
            checked += 1;
        }
    }
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

#[test]
fn layer_norm_over_the_last_dimension_of_tokens() {
    let ops = vec![
        Op::Linear(Linear::new(6, 6)),
        Op::LayerNorm(LayerNorm::new(6).eps(1e-6)),
        Op::Flatten,
        Op::Linear(Linear::new(24, 3)),
    ];
    assert!(check(chain("ln", vec![4, 6], ops), 3, 12) > 40);
}

#[test]
fn layer_norm_without_affine_parameters_passes_the_gradient_through() {
    let mut ln = LayerNorm::new(5);
    ln.elementwise_affine = false;
    let ops = vec![
        Op::Linear(Linear::new(5, 5)),
        Op::LayerNorm(ln),
        Op::Flatten,
        Op::Linear(Linear::new(15, 3)),
    ];
    check(chain("ln_plain", vec![3, 5], ops), 2, 12);
}

#[test]
fn multi_head_attention_with_two_heads() {
    let ops = vec![
        Op::Linear(Linear::new(4, 8)),
        Op::MultiheadAttention {
            embed_dim: 8,
            num_heads: 2,
        },
        Op::Flatten,
        Op::Linear(Linear::new(40, 3)),
    ];
    // Every parameter of the attention: in- and out-projections and their biases.
    assert!(check(chain("mha", vec![5, 4], ops), 3, 24) > 80);
}

#[test]
fn select_and_linear_on_tokens() {
    let ops = vec![
        Op::Linear(Linear::new(4, 5)),
        Op::Select { index: 1 },
        Op::Linear(Linear::new(5, 3)),
    ];
    check(chain("select", vec![3, 4], ops), 3, 20);
}

#[test]
fn tokens_of_an_image_and_a_permute_to_channels_last() {
    let ops = vec![
        Op::Conv2d(Conv2d::new(2, 3, 1)),
        Op::Tokens,
        Op::Linear(Linear::new(3, 4)),
        Op::Flatten,
        Op::Linear(Linear::new(24, 3)),
    ];
    check(chain("tokens", vec![2, 2, 3], ops), 2, 20);
    let ops = vec![
        Op::Conv2d(Conv2d::new(2, 3, 1)),
        Op::Permute {
            dims: vec![1, 2, 0],
        },
        Op::Linear(Linear::new(3, 4)),
        Op::Permute {
            dims: vec![2, 0, 1],
        },
        Op::Flatten,
        Op::Linear(Linear::new(24, 3)),
    ];
    check(chain("permute", vec![2, 2, 3], ops), 2, 20);
}

#[test]
fn a_small_vit_class_token_position_embedding_and_every_layer() {
    let g = transformer(
        "vit_mini",
        vec![1, 8, 8],
        Vit {
            patch: 4,
            layers: 1,
            heads: 2,
            hidden: 8,
            mlp: 16,
            classes: 3,
        },
    )
    .infer()
    .unwrap();
    let names: Vec<String> = Engine::new(
        g.clone(),
        OptimizerConfig::named("sgd", None).unwrap(),
        1,
        2,
    )
    .unwrap()
    .params
    .iter()
    .map(|p| p.name.clone())
    .collect();
    assert!(names.contains(&"class_token".to_string()), "{names:?}");
    assert!(names.contains(&"encoder.pos_embedding".to_string()));
    check(g, 2, 12);
}

#[test]
fn a_small_convnext_layer_scale_channels_last_layer_norm_and_mlp() {
    let g = vramlab_graph::zoo::convnext::body("cnx_mini", vec![2, 8, 8], &[4, 8], &[1, 1], 0.0, 3)
        .infer()
        .unwrap();
    check(g, 2, 8);
}

#[test]
fn torchvision_initialisation_of_the_transformer_parameters() {
    let g = transformer(
        "vit_init",
        vec![1, 8, 8],
        Vit {
            patch: 4,
            layers: 1,
            heads: 2,
            hidden: 16,
            mlp: 16,
            classes: 3,
        },
    )
    .infer()
    .unwrap();
    let e = engine(g, 3);
    let get = |name: &str| -> Vec<f32> {
        e.params
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no {name}"))
            .value
            .data()
            .clone()
    };
    assert!(get("class_token").iter().all(|&v| v == 0.0));
    let pos = get("encoder.pos_embedding");
    let std = (pos.iter().map(|v| v * v).sum::<f32>() / pos.len() as f32).sqrt();
    assert!((0.01..0.03).contains(&std), "pos_embedding std {std}");
    let l = "encoder.layers.encoder_layer_0";
    assert!(get(&format!("{l}.ln_1.weight")).iter().all(|&v| v == 1.0));
    assert!(get(&format!("{l}.ln_1.bias")).iter().all(|&v| v == 0.0));
    // xavier_uniform on [3E, E]: bound sqrt(6 / (E + 3E)).
    let bound = (6.0f32 / 64.0).sqrt();
    let w = get(&format!("{l}.self_attention.in_proj_weight"));
    assert!(w.iter().all(|v| v.abs() <= bound));
    assert!(w.iter().any(|v| v.abs() > 0.8 * bound));
    assert!(get(&format!("{l}.self_attention.in_proj_bias"))
        .iter()
        .all(|&v| v == 0.0));
    assert!(get(&format!("{l}.self_attention.out_proj.bias"))
        .iter()
        .all(|&v| v == 0.0));
    let g = vramlab_graph::zoo::convnext::body("cnx_init", vec![2, 8, 8], &[4, 8], &[1, 1], 0.0, 3)
        .infer()
        .unwrap();
    let e = engine(g, 3);
    let scale = e
        .params
        .iter()
        .find(|p| p.name.ends_with("layer_scale"))
        .expect("a layer scale");
    assert_eq!(scale.value.shape, vec![4, 1, 1]);
    assert!(scale.value.data().iter().all(|&v| v == 1e-6));
}

/// A convolution, then the channels-last map a Swin block reads.
fn channels_last(cin: usize, c: usize) -> Vec<Op> {
    vec![
        Op::Conv2d(Conv2d::new(cin, c, 1)),
        Op::Permute {
            dims: vec![1, 2, 0],
        },
    ]
}

/// A 2-channel `side x side` image through a 1x1 convolution to 4 channels last, window
/// attention `(window, shift, heads, v2)` on it, and a linear head.
fn window_model(
    name: &str,
    side: usize,
    window: usize,
    shift: usize,
    heads: usize,
    v2: bool,
) -> Shaped {
    let mut ops = channels_last(2, 4);
    ops.push(Op::WindowAttention(vramlab_graph::op::WindowAttention {
        dim: 4,
        heads,
        window: (window, window),
        shift: (shift, shift),
        v2,
    }));
    ops.extend([Op::Flatten, Op::Linear(Linear::new(side * side * 4, 3))]);
    chain(name, vec![2, side, side], ops)
}

#[test]
fn shifted_window_attention_on_a_padded_map_with_its_mask_and_position_bias() {
    // A 6x6 map in 4x4 windows: padded to 8x8, rolled by 2, masked across regions.
    // Every parameter: the bias table (49 x 2), qkv, proj.
    assert!(check(window_model("swin_window", 6, 4, 2, 2, false), 2, 24) > 100);
    // Unshifted, the windows exactly cover the map.
    check(window_model("swin_plain", 4, 2, 0, 1, false), 2, 16);
}

#[test]
fn swin_v2_cosine_attention_logit_scale_and_position_bias_mlp() {
    // Padded and shifted as above; every parameter: the logit scales, qkv (its k bias
    // unused: zero gradient both ways), proj, and the position bias MLP.
    assert!(check(window_model("swin_v2_window", 6, 4, 2, 2, true), 2, 24) > 150);
}

#[test]
fn patch_merging_of_an_odd_map() {
    let mut ops = channels_last(2, 3);
    ops.extend([
        Op::PatchMerge,
        Op::Linear(Linear::new(12, 4)),
        Op::Flatten,
        Op::Linear(Linear::new(3 * 3 * 4, 3)),
    ]);
    check(chain("merge", vec![2, 5, 5], ops), 2, 16);
}

#[test]
fn window_and_grid_partitions_with_relative_position_attention() {
    for grid in [false, true] {
        let ops = vec![
            Op::Conv2d(Conv2d::new(2, 4, 1)),
            Op::Partition { p: 2, grid },
            Op::RelPosAttention {
                dim: 4,
                head_dim: 2,
                size: 2,
            },
            Op::Departition {
                p: 2,
                grid,
                parts: (2, 2),
            },
            Op::Flatten,
            Op::Linear(Linear::new(4 * 4 * 4, 3)),
        ];
        let g = chain(if grid { "grid" } else { "window" }, vec![2, 4, 4], ops);
        assert!(check(g, 2, 16) > 60);
    }
}
