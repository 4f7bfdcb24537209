//! The planner's `native` profile against the engine's measured memory, to the byte:
//! peak, phase, every category at the peak and after the step, steps 1 and 2.

mod common;

use vramlab_engine::OptimizerConfig;
use vramlab_graph::{load, ModelOptions, Shaped};
use vramlab_memory::{Optimizer, OptimizerKind};

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
        common::engine_equals_native_plan(
            &format!("{name} batch {batch} {oname}"),
            g,
            batch,
            popt,
            eopt,
        );
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
