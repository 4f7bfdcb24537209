//! The planner's `native` profile against the engine's measured memory, to the byte:
//! peak, phase, every category at the peak and after the step, steps 1 and 2.

use vramlab_engine::{Engine, OptimizerConfig};
use vramlab_graph::{load, ModelOptions, Shaped};
use vramlab_memory::{plan, Optimizer, OptimizerKind, PlanConfig, Profile};

const THREADS: usize = 2;

fn model(name: &str, input: Option<Vec<usize>>, classes: Option<usize>) -> Shaped {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    let spec = if name.ends_with(".toml") {
        format!("{path}{name}")
    } else {
        name.to_string()
    };
    load(
        &spec,
        &ModelOptions {
            num_classes: classes,
            input_shape: input,
        },
    )
    .unwrap()
    .infer()
    .unwrap()
}

fn optimizers() -> Vec<(&'static str, Optimizer, OptimizerConfig)> {
    let o = Optimizer::new;
    let e = |n: &str| OptimizerConfig::named(n, None).unwrap();
    let mut sgd_m = e("sgd");
    if let OptimizerConfig::Sgd { momentum, .. } = &mut sgd_m {
        *momentum = 0.9;
    }
    let mut ams = e("adam");
    if let OptimizerConfig::Adam { amsgrad, .. } = &mut ams {
        *amsgrad = true;
    }
    let mut rms = e("rmsprop");
    if let OptimizerConfig::RmsProp {
        momentum, centered, ..
    } = &mut rms
    {
        *momentum = 0.9;
        *centered = true;
    }
    vec![
        ("sgd", o(OptimizerKind::Sgd), e("sgd")),
        (
            "sgd momentum",
            Optimizer {
                momentum: 0.9,
                ..o(OptimizerKind::Sgd)
            },
            sgd_m,
        ),
        ("adam", o(OptimizerKind::Adam), e("adam")),
        (
            "adamw amsgrad",
            Optimizer {
                amsgrad: true,
                ..o(OptimizerKind::AdamW)
            },
            ams,
        ),
        (
            "rmsprop centered momentum",
            Optimizer {
                momentum: 0.9,
                centered: true,
                ..o(OptimizerKind::RmsProp)
            },
            rms,
        ),
        ("adagrad", o(OptimizerKind::Adagrad), e("adagrad")),
    ]
}

fn compare(name: &str, g: &Shaped, batch: usize, which: &[usize]) {
    let all = optimizers();
    for &oi in which {
        let (oname, popt, eopt) = &all[oi];
        let mut cfg = PlanConfig::new(batch as u64);
        cfg.profile = Profile::Native;
        cfg.optimizer = popt.clone();
        cfg.threads = THREADS;
        let planned = plan(g, &cfg);
        let mut e = Engine::new(g.clone(), eopt.clone(), 7, THREADS).unwrap();
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
        let planned = match planned {
            Ok(p) => p,
            Err(err) => {
                let measured = e.train_step(&x, &y).unwrap_err();
                assert!(
                    measured
                        .0
                        .contains("Expected more than 1 value per channel"),
                    "{label}: {measured}"
                );
                assert!(
                    err.to_string()
                        .contains("Expected more than 1 value per channel"),
                    "{label}: {err}"
                );
                continue;
            }
        };
        for step in 0..2 {
            let m = e.train_step(&x, &y).unwrap().memory;
            let p = &planned.steps[step];
            // Planner and engine report in one vocabulary (vramlab_graph::categories), so
            // whole values compare: every category, overhead included.
            let s = step + 1;
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

#[test]
fn small_models_every_optimizer_batches_1_3_16() {
    for (name, input) in [
        ("simple_cnn", None),
        ("lenet5", None),
        ("models/vgg_bn_tiny.toml", None),
    ] {
        let g = model(name, input, None);
        for batch in [1, 3, 16] {
            compare(name, &g, batch, &[0, 1, 2, 3, 4, 5]);
        }
    }
}

#[test]
fn resnet18_at_32x32_batches_1_3_16() {
    let g = model("resnet18", Some(vec![3, 32, 32]), Some(10));
    for batch in [1, 3, 16] {
        compare("resnet18", &g, batch, &[0, 1, 2, 3, 4, 5]);
    }
}

#[test]
fn mobilenet_v2_at_64x64_batches_1_3_16() {
    let g = model("mobilenet_v2", Some(vec![3, 64, 64]), Some(10));
    for batch in [1, 3, 16] {
        compare("mobilenet_v2", &g, batch, &[0, 1, 2, 3, 4, 5]);
    }
}
