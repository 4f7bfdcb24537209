//! The planner's `native` profile against the engine's measured memory, to the byte, on
//! a small ViT (class token, position embedding, LayerNorm, multi-head attention,
//! select, Linear on tokens) and a small ConvNeXt (layer scale, permutes, channels-last
//! LayerNorm and MLP, stochastic depth): peak, phase, every category at the peak and
//! before and after the step, steps 1 and 2.

mod common;

use vramlab_engine::OptimizerConfig;
use vramlab_graph::zoo::vit::{transformer, Vit};
use vramlab_graph::Shaped;
use vramlab_memory::{Optimizer, OptimizerKind};

fn optimizers() -> Vec<(&'static str, Optimizer, OptimizerConfig)> {
    let mut sgd_m = OptimizerConfig::named("sgd", None).unwrap();
    if let OptimizerConfig::Sgd { momentum, .. } = &mut sgd_m {
        *momentum = 0.9;
    }
    vec![
        (
            "sgd momentum",
            Optimizer {
                momentum: 0.9,
                ..Optimizer::new(OptimizerKind::Sgd)
            },
            sgd_m,
        ),
        (
            "adam",
            Optimizer::new(OptimizerKind::Adam),
            OptimizerConfig::named("adam", None).unwrap(),
        ),
    ]
}

fn compare(name: &str, g: &Shaped, batch: usize) {
    for (oname, popt, eopt) in optimizers() {
        common::engine_equals_native_plan(
            &format!("{name} batch {batch} {oname}"),
            g,
            batch,
            &popt,
            &eopt,
        );
    }
}

fn small_vit() -> Shaped {
    transformer(
        "vit_tiny",
        vec![1, 28, 28],
        Vit {
            patch: 4,
            layers: 2,
            heads: 4,
            hidden: 64,
            mlp: 128,
            classes: 10,
        },
    )
    .infer()
    .unwrap()
}

fn small_convnext() -> Shaped {
    vramlab_graph::zoo::convnext::body("cnx", vec![3, 32, 32], &[16, 32], &[1, 1], 0.1, 10)
        .infer()
        .unwrap()
}

#[test]
fn native_matches_the_engine_on_a_small_vit() {
    let g = small_vit();
    for batch in [2, 8] {
        compare("vit_tiny", &g, batch);
    }
}

#[test]
fn native_matches_the_engine_on_a_small_convnext() {
    let g = small_convnext();
    for batch in [2, 8] {
        compare("cnx", &g, batch);
    }
}

#[test]
fn native_matches_the_engine_on_the_zoo_vit_tiny() {
    // The zoo's vit_tiny (depth 4) plans and trains a step on the native profile.
    let g = vramlab_graph::load("vit_tiny", &Default::default())
        .unwrap()
        .infer()
        .unwrap();
    assert_eq!(g.shapes[0], vec![1, 28, 28]);
    compare("zoo vit_tiny", &g, 3);
}

#[test]
fn native_matches_the_engine_on_the_vit_model_file() {
    let g = vramlab_graph::model_file::parse(
        include_str!("../../../models/vit_tiny.toml"),
        "vit_tiny.toml",
    )
    .unwrap()
    .infer()
    .unwrap();
    compare("models/vit_tiny.toml", &g, 2);
}

fn model_file(text: &str, name: &str) -> Shaped {
    vramlab_graph::model_file::parse(text, name)
        .unwrap()
        .infer()
        .unwrap()
}

#[test]
fn native_matches_the_engine_on_a_small_swin() {
    // Shifted and unshifted windows, patch merging (4x4 windows on 8x8 then 4x4 maps).
    let g = model_file(
        include_str!("../../../models/swin_tiny.toml"),
        "swin_tiny.toml",
    );
    for batch in [1, 3] {
        compare("models/swin_tiny.toml", &g, batch);
    }
}

#[test]
fn native_matches_the_engine_on_a_small_maxvit() {
    // Window and grid partitions, relative-position attention, MBConv.
    let g = model_file(
        include_str!("../../../models/maxvit_tiny.toml"),
        "maxvit_tiny.toml",
    );
    for batch in [2, 3] {
        compare("models/maxvit_tiny.toml", &g, batch);
    }
}

#[test]
fn native_matches_the_engine_on_a_small_swin_v2() {
    // models/swin_tiny.toml with Swin V2's attention: cosine scores, logit scales, the
    // position bias MLP.
    let text = include_str!("../../../models/swin_tiny.toml").replace(
        "type = \"ShiftedWindowAttention\"",
        "type = \"ShiftedWindowAttentionV2\"",
    );
    let g = model_file(&text, "swin_v2_tiny.toml");
    for batch in [1, 3] {
        compare("swin_v2_tiny", &g, batch);
    }
}

#[test]
fn native_matches_the_engine_on_torchvisions_swin_and_maxvit() {
    // The zoo's full-size builders (28 to 31 M parameters) at their 224 / 256 inputs,
    // batch 1: one step each in the engine, planned to the byte.
    for name in ["swin_t", "swin_v2_t", "maxvit_t"] {
        let t = std::time::Instant::now();
        let g = vramlab_graph::load(name, &Default::default())
            .unwrap()
            .infer()
            .unwrap();
        compare(name, &g, 1);
        eprintln!("{name}: {:?}", t.elapsed());
    }
}
