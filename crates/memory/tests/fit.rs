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
        // `fit` finds it its own way (from the doubling table's last two rows): the
        // same batch, its peak and the peak one above.
        let r = fit(&g, &c, card, 0.8, None).unwrap();
        assert_eq!(r.max_batch_size, Some(b), "{name} on {gpu}");
        assert_eq!(
            r.peak_bytes_at_max_plus_one,
            Some(peak_at(&g, &c, b + 1).unwrap())
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
    let adv = r.advice.as_ref().unwrap();
    assert!(adv.changes.len() >= 5);
    for a in &adv.changes {
        assert!(a.peak_bytes.is_some(), "{} has no predicted peak", a.change);
    }
    let sgd = adv
        .changes
        .iter()
        .find(|a| a.change.starts_with("SGD with momentum"))
        .unwrap();
    let amp = adv
        .changes
        .iter()
        .find(|a| a.change.starts_with("mixed precision"))
        .unwrap();
    assert!(
        sgd.peak_bytes < amp.peak_bytes,
        "SGD drops a whole state tensor of 138M params"
    );
}

#[test]
fn advice_has_a_baseline_and_explains_changes_that_save_nothing() {
    use vramlab_memory::Phase;
    let g = model("vgg16", &[3, 224, 224]);
    // A 512 MiB context keeps plain SGD inside the 1.6 GiB budget.
    let mut c = cfg(OptimizerKind::Adam);
    c.cuda_context_bytes = Some(512 << 20);
    let r = fit(&g, &c, 2 << 30, 0.8, None).unwrap();
    let adv = r.advice.unwrap();
    assert_eq!(adv.batch, 1);
    // The plan as given: Adam's peak at batch 1 is in its step, where weights,
    // gradients and two moments (4 x 527.79 MiB) are alive.
    let base = adv.baseline.unwrap();
    assert_eq!(base.peak_bytes, 3_304_633_344);
    assert_eq!(base.phase, Phase::Optimizer);
    assert_eq!(base.state_bytes, 4 * 138_357_544 * 4);
    let row = |prefix: &str| {
        adv.changes
            .iter()
            .find(|a| a.change.starts_with(prefix))
            .unwrap()
    };
    // Mixed precision and a smaller input shrink activations, which are dead by then.
    assert!(row("mixed precision").changes_nothing);
    assert!(row("a smaller input").changes_nothing);
    assert!(!row("SGD with momentum").changes_nothing);
    assert!(!row("plain SGD").changes_nothing && row("plain SGD").fits);
    // All together is worse than SGD with momentum alone, and the note names AMP as
    // the cost.
    let c = adv.combination.unwrap();
    assert!(c.best_alone.starts_with("SGD with momentum"), "{c:?}");
    assert!(c.together_bytes > row("SGD with momentum").peak_bytes.unwrap());
    assert_eq!(c.costly_flags, "--precision amp-bf16");
    assert!(c.without_costly_bytes < c.together_bytes);
}

#[test]
fn inference_advice_has_no_optimizer_rows() {
    let g = model("vgg16", &[3, 224, 224]);
    let mut c = cfg(OptimizerKind::Adam);
    c.mode = vramlab_memory::Mode::Inference;
    let r = fit(&g, &c, 600 << 20, 0.8, None).unwrap();
    assert_eq!(r.mode, vramlab_memory::Mode::Inference);
    let adv = r.advice.unwrap();
    for a in &adv.changes {
        assert!(
            !a.flags.contains("optimizer") && !a.flags.contains("checkpoint"),
            "{}",
            a.change
        );
    }
    assert!(adv.combination.is_none());
}

#[test]
fn a_huge_target_batch_is_an_error_not_an_endless_loop() {
    let g = model("simple_cnn", &[3, 32, 32]);
    let c = cfg(OptimizerKind::Sgd);
    let start = std::time::Instant::now();
    for t in [u64::MAX, (1 << 40) + 1, 0] {
        let e = fit(&g, &c, 8 << 30, 0.8, Some(t)).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("--target-batch must be between 1 and 1099511627776, got {t}")
        );
    }
    // The largest allowed target, a prime-free power of two, and a large prime: quick.
    for t in [1u64 << 40, 1_099_511_627_689] {
        let r = fit(&g, &c, 8 << 30, 0.8, Some(t)).unwrap();
        if let Some(acc) = r.accumulation {
            assert_eq!(acc.micro_batch * acc.accumulation_steps, t);
        }
    }
    assert!(start.elapsed().as_secs() < 60, "{:?}", start.elapsed());
}

#[test]
fn base_batch_and_base_lr_must_be_usable() {
    assert_eq!(
        lr_advice(0, 1e-3, 256).unwrap_err().to_string(),
        "--base-batch must be at least 1"
    );
    for lr in [f64::NAN, f64::INFINITY, 0.0, -1e-3] {
        let e = lr_advice(16, lr, 256).unwrap_err().to_string();
        assert!(
            e.starts_with("--base-lr must be a finite number more than 0"),
            "{e}"
        );
    }
}

#[test]
fn a_largest_batch_above_the_dataset_size_is_flagged() {
    use vramlab_memory::fit::{fit_with, FitRequest};
    let g = model("lenet5", &[1, 28, 28]);
    let c = cfg(OptimizerKind::Adam);
    let mut req = FitRequest::new(16 << 30);
    req.dataset_size = Some(60_000);
    let r = fit_with(&g, &c, &req).unwrap();
    assert!(r.max_batch_size.unwrap() > 60_000);
    assert!(r.max_batch_exceeds_dataset);
    assert_eq!(r.dataset_size, Some(60_000));
    assert_eq!(r.recommended_batch, Some(32_768));
    // Unknown dataset: nothing flagged, the recommendation is the power of two under
    // the largest batch.
    req.dataset_size = None;
    let r = fit_with(&g, &c, &req).unwrap();
    assert!(!r.max_batch_exceeds_dataset);
    assert_eq!(r.recommended_batch, r.max_power_of_two);
    req.dataset_size = Some(0);
    assert!(fit_with(&g, &c, &req).is_err());
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
    assert!(find_gpu("voodoo2")
        .unwrap_err()
        .contains("--memory SIZE, e.g. --memory 24GiB"));
    assert!(find_gpu("a100").unwrap_err().contains("--memory SIZE"));
    assert!(vramlab_memory::fit::GPUS.len() >= 25);
}

#[test]
fn learning_rate_rules_scale_linearly_and_by_square_root() {
    let a = lr_advice(16, 1e-3, 256).unwrap();
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
