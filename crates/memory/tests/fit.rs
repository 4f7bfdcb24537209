//! `fit`: the batch it returns fits, one more does not.

use vramlab_graph::{zoo, ModelOptions, Shaped};
use vramlab_memory::fit::{find_gpu, fit, lr_advice, max_batch, peak_at};
use vramlab_memory::{Optimizer, OptimizerKind, PlanConfig, Precision, Profile};

fn model(name: &str, input: &[usize]) -> Shaped {
    let opts = ModelOptions {
        num_classes: None,
        input_shape: Some(input.to_vec()),
    };
    zoo::build(name, &opts).unwrap().infer().unwrap()
}

fn cfg(kind: OptimizerKind) -> PlanConfig {
    let mut c = PlanConfig::new(1);
    c.optimizer = Optimizer::new(kind);
    c
}

#[test]
fn the_returned_batch_fits_and_one_more_does_not() {
    let cases = [
        ("simple_cnn", vec![3, 32, 32], OptimizerKind::Adam, "t4"),
        (
            "resnet18",
            vec![3, 224, 224],
            OptimizerKind::Sgd,
            "rtx-3060",
        ),
        ("resnet50", vec![3, 224, 224], OptimizerKind::Adam, "h100"),
        (
            "vgg11_bn",
            vec![3, 224, 224],
            OptimizerKind::AdamW,
            "a100-40gb",
        ),
        (
            "mobilenet_v2",
            vec![3, 224, 224],
            OptimizerKind::RmsProp,
            "rtx-4090",
        ),
        ("alexnet", vec![3, 224, 224], OptimizerKind::Adagrad, "l4"),
    ];
    for (name, input, opt, gpu) in cases {
        let g = model(name, &input);
        let c = cfg(opt);
        let card = find_gpu(gpu).unwrap().memory_bytes;
        let budget = card * 8 / 10;
        let (b, p) = max_batch(&g, &c, budget).unwrap().expect("fits");
        assert!(p <= budget, "{name}: {p} > {budget}");
        assert_eq!(peak_at(&g, &c, b).unwrap(), p);
        assert!(
            peak_at(&g, &c, b + 1).unwrap() > budget,
            "{name} on {gpu}: {} also fits",
            b + 1
        );
    }
}

#[test]
fn simple_cnn_with_adam_on_an_80_gb_card_takes_hundreds_of_thousands() {
    let g = model("simple_cnn", &[3, 32, 32]);
    let r = fit(
        &g,
        &cfg(OptimizerKind::Adam),
        find_gpu("h100").unwrap().memory_bytes,
        0.8,
        None,
    )
    .unwrap();
    let b = r.max_batch_size.unwrap();
    assert!((100_000..2_000_000).contains(&b), "{b}");
    assert_eq!(r.max_power_of_two, Some(1 << (63 - b.leading_zeros())));
    assert!(r.peak_bytes_at_max.unwrap() <= r.budget_bytes);
    assert!(r.peak_bytes_at_max_plus_one.unwrap() > r.budget_bytes);
    // The procedure doubles from 16 and stops at the first batch over the budget.
    assert_eq!(r.procedure[0].batch_size, 16);
    let last = r.procedure.last().unwrap();
    assert!(!last.fits && last.batch_size > b);
    assert!(r.procedure[..r.procedure.len() - 1]
        .iter()
        .all(|row| row.fits));
}

#[test]
fn vgg16_with_adam_in_2_gib_does_not_fit_and_gets_advice() {
    let g = model("vgg16", &[3, 224, 224]);
    let r = fit(&g, &cfg(OptimizerKind::Adam), 2 << 30, 0.8, None).unwrap();
    assert_eq!(r.max_batch_size, None);
    assert_eq!(r.peak_bytes_at_max, None);
    assert!(r.advice.len() >= 5);
    for a in &r.advice {
        assert!(a.peak_bytes.is_some(), "{} has no predicted peak", a.change);
    }
    let sgd = r
        .advice
        .iter()
        .find(|a| a.change.starts_with("SGD with momentum"))
        .unwrap();
    let amp = r
        .advice
        .iter()
        .find(|a| a.change.starts_with("mixed precision"))
        .unwrap();
    assert!(
        sgd.peak_bytes < amp.peak_bytes,
        "SGD drops a whole state tensor of 138M params"
    );
}

#[test]
fn target_batch_is_reached_by_accumulating_micro_batches_that_fit() {
    let g = model("resnet18", &[3, 224, 224]);
    let c = cfg(OptimizerKind::Sgd);
    let card = 8u128 << 30;
    let r = fit(&g, &c, card, 0.8, Some(4096)).unwrap();
    let acc = r.accumulation.unwrap();
    assert_eq!(acc.micro_batch * acc.accumulation_steps, 4096);
    assert!(acc.micro_batch <= r.max_batch_size.unwrap());
    assert!(acc.peak_bytes <= r.budget_bytes);
}

#[test]
fn amp_fits_a_larger_batch_than_fp32() {
    let g = model("resnet50", &[3, 224, 224]);
    let mut c = cfg(OptimizerKind::Adam);
    let budget = 20u128 << 30;
    let fp32 = max_batch(&g, &c, budget).unwrap().unwrap().0;
    c.precision = Precision::AmpFp16;
    let amp = max_batch(&g, &c, budget).unwrap().unwrap().0;
    assert!(amp as f64 > fp32 as f64 * 1.5, "amp {amp} vs fp32 {fp32}");
    c.profile = Profile::PytorchCpu;
    c.precision = Precision::Fp32;
    assert!(
        max_batch(&g, &c, budget).unwrap().unwrap().0 > fp32,
        "no CUDA context on the CPU"
    );
}

#[test]
fn gpu_names_are_forgiving_and_unknown_ones_are_errors() {
    assert_eq!(find_gpu("H100").unwrap().memory_bytes, 80 << 30);
    assert_eq!(find_gpu("RTX 4090").unwrap().name, "rtx-4090");
    assert_eq!(
        find_gpu("NVIDIA GeForce RTX 3090").unwrap().name,
        "rtx-3090"
    );
    assert!(find_gpu("a100").unwrap_err().contains("a100-40gb"));
    assert!(find_gpu("voodoo2").unwrap_err().contains("unknown GPU"));
    assert!(vramlab_memory::fit::GPUS.len() >= 25);
}

#[test]
fn learning_rate_rules_scale_linearly_and_by_square_root() {
    let a = lr_advice(16, 1e-3, 256);
    assert!((a.linear_scaling_rule - 1.6e-2).abs() < 1e-12);
    assert!((a.square_root_scaling_rule - 4e-3).abs() < 1e-12);
}

#[test]
fn a_model_whose_batch_1_fails_in_batchnorm_searches_from_batch_2() {
    // resnet18 at 32x32: BatchNorm sees 1x512x1x1 at batch 1, which PyTorch refuses.
    let g = model("resnet18", &[3, 32, 32]);
    let c = cfg(OptimizerKind::Sgd);
    let budget = 4u128 << 30;
    let (b, p) = max_batch(&g, &c, budget).unwrap().unwrap();
    assert!(b > 2 && p <= budget);
    assert!(peak_at(&g, &c, b + 1).unwrap() > budget);
    let r = fit(&g, &c, 5 << 30, 0.8, None).unwrap();
    assert!(r.max_batch_size.is_some());
}
