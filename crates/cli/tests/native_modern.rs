//! The planner's `native` profile against the engine's measured memory, to the byte, on a
//! small member of each family built from the newer layers (activations beyond ReLU,
//! broadcast multiply, concatenation, channel slices and shuffles, stochastic depth):
//! peak, phase, every category at the peak, before and after the step, steps 1 and 2.

use vramlab_engine::{Engine, OptimizerConfig};
use vramlab_graph::{load, ModelOptions, Shaped};
use vramlab_memory::{plan, Optimizer, OptimizerKind, PlanConfig, Profile};

const THREADS: usize = 2;
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
    let g = model(name, input);
    let (oname, popt, eopt) = optimizer(adam);
    let mut cfg = PlanConfig::new(batch as u64);
    cfg.profile = Profile::Native;
    cfg.optimizer = popt;
    cfg.threads = THREADS;
    let label = format!("{name} batch {batch} {oname}");
    let planned = plan(&g, &cfg);
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
    let planned = match planned {
        Ok(p) => p,
        Err(err) => {
            let measured = e.train_step(&x, &y).unwrap_err();
            let want = "Expected more than 1 value per channel";
            assert!(measured.0.contains(want), "{label}: {measured}");
            assert!(err.to_string().contains(want), "{label}: {err}");
            return;
        }
    };
    for step in 0..2 {
        let m = e.train_step(&x, &y).unwrap().memory;
        let p = &planned.steps[step];
        let s = step + 1;
        assert_eq!(m.peak.bytes, p.peak_bytes, "{label} step {s}: peak");
        assert_eq!(m.peak.phase, p.peak_phase, "{label} step {s}: phase");
        assert_eq!(
            m.peak.at, p.at_peak,
            "{label} step {s}: categories at the peak"
        );
        assert_eq!(
            m.before_step, p.before_step,
            "{label} step {s}: before the step"
        );
        assert_eq!(
            m.after_step, p.after_step,
            "{label} step {s}: after the step"
        );
    }
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
