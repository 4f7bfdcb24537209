//! The planner's `native` profile against the engine's measured memory, to the byte, on
//! a small ViT (class token, position embedding, LayerNorm, multi-head attention,
//! select, Linear on tokens) and a small ConvNeXt (layer scale, permutes, channels-last
//! LayerNorm and MLP, stochastic depth): peak, phase, every category at the peak and
//! before and after the step, steps 1 and 2.

use vramlab_engine::{Engine, OptimizerConfig};
use vramlab_graph::zoo::vit::{transformer, Vit};
use vramlab_graph::Shaped;
use vramlab_memory::{plan, Optimizer, OptimizerKind, PlanConfig, Profile};

const THREADS: usize = 2;

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
        let mut cfg = PlanConfig::new(batch as u64);
        cfg.profile = Profile::Native;
        cfg.optimizer = popt;
        cfg.threads = THREADS;
        let planned = plan(g, &cfg).unwrap();
        let mut e = Engine::new(g.clone(), eopt, 7, THREADS).unwrap();
        let per: usize = g.shapes[0].iter().product();
        let x = e
            .batch(
                (0..batch * per)
                    .map(|i| ((i % 17) as f32) / 17.0 - 0.5)
                    .collect(),
                batch,
            )
            .unwrap();
        let y = e.labels((0..batch).map(|i| (i % g.num_classes()) as i64).collect());
        let label = format!("{name} batch {batch} {oname}");
        for step in 0..2 {
            let r = e.train_step(&x, &y).unwrap();
            assert!(r.loss.is_finite(), "{label}: loss {}", r.loss);
            let (m, p, s) = (r.memory, &planned.steps[step], step + 1);
            assert_eq!(m.peak.bytes, p.peak_bytes, "{label} step {s}: peak");
            assert_eq!(m.peak.phase, p.peak_phase, "{label} step {s}: phase");
            assert_eq!(
                m.peak.at, p.at_peak,
                "{label} step {s}: categories at the peak"
            );
            assert_eq!(
                m.after_step, p.after_step,
                "{label} step {s}: after the step"
            );
            assert_eq!(
                m.before_step, p.before_step,
                "{label} step {s}: before the step"
            );
        }
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
