//! Planner behaviour beyond the reference records: optimizers' state, profiles,
//! precision, checkpointing, accumulation, inference, and sizes that overflow u64.

use vramlab_graph::{zoo, ModelOptions, Shaped};
use vramlab_memory::{
    plan, Mode, Optimizer, OptimizerImpl, OptimizerKind, PlanConfig, PlanError, Precision, Profile,
};

fn model(name: &str, input: Option<Vec<usize>>, classes: Option<usize>) -> Shaped {
    let opts = ModelOptions {
        num_classes: classes,
        input_shape: input,
    };
    zoo::build(name, &opts).unwrap().infer().unwrap()
}

fn cpu(batch: u64, opt: Optimizer) -> PlanConfig {
    let mut c = PlanConfig::new(batch);
    c.profile = Profile::PytorchCpu;
    c.optimizer = opt;
    c
}

const P: u128 = 62_006 * 4;
const TENSORS: u128 = 10;

#[test]
fn optimizer_state_sizes_follow_torch_optim() {
    let g = model("simple_cnn", None, None);
    let state = |o: Optimizer| {
        plan(&g, &cpu(8, o)).unwrap().steps[1]
            .after_step
            .optimizer_state
    };
    let o = Optimizer::new;
    assert_eq!(state(o(OptimizerKind::Sgd)), 0);
    assert_eq!(
        state(Optimizer {
            momentum: 0.9,
            ..o(OptimizerKind::Sgd)
        }),
        P
    );
    // Adam and AdamW: two moments and a 4-byte float `step` per parameter tensor.
    assert_eq!(state(o(OptimizerKind::Adam)), 2 * P + 4 * TENSORS);
    assert_eq!(state(o(OptimizerKind::AdamW)), 2 * P + 4 * TENSORS);
    assert_eq!(
        state(Optimizer {
            amsgrad: true,
            ..o(OptimizerKind::Adam)
        }),
        3 * P + 4 * TENSORS
    );
    assert_eq!(state(o(OptimizerKind::RmsProp)), P + 4 * TENSORS);
    assert_eq!(
        state(Optimizer {
            momentum: 0.9,
            ..o(OptimizerKind::RmsProp)
        }),
        2 * P + 4 * TENSORS
    );
    assert_eq!(
        state(Optimizer {
            momentum: 0.9,
            centered: true,
            ..o(OptimizerKind::RmsProp)
        }),
        3 * P + 4 * TENSORS
    );
    assert_eq!(state(o(OptimizerKind::Adagrad)), P + 4 * TENSORS);
}

#[test]
fn adagrad_state_exists_before_the_first_step_and_adams_does_not() {
    let g = model("simple_cnn", None, None);
    let adagrad = plan(&g, &cpu(8, Optimizer::new(OptimizerKind::Adagrad))).unwrap();
    assert_eq!(
        adagrad.steps[0].before_step.optimizer_state,
        P + 4 * TENSORS
    );
    let adam = plan(&g, &cpu(8, Optimizer::new(OptimizerKind::Adam))).unwrap();
    assert_eq!(adam.steps[0].before_step.optimizer_state, 0);
    assert_eq!(
        adam.steps[1].before_step.optimizer_state,
        2 * P + 4 * TENSORS
    );
}

#[test]
fn for_loop_adam_peaks_at_two_copies_of_the_largest_param_plus_the_previous_denominator() {
    // vgg11 at 32x32: fc1 is Linear(25088, 4096); conv features.18's bias (512) precedes it.
    let g = model("vgg11", Some(vec![3, 32, 32]), Some(10));
    let r = plan(&g, &cpu(1, Optimizer::new(OptimizerKind::Adam))).unwrap();
    let s = &r.steps[0];
    assert_eq!(s.peak_op, "aten.div.Tensor");
    let fc1 = 25_088u128 * 4096 * 4;
    // plus the 4-byte loss, the 40-byte logits row held by the loop
    assert_eq!(s.at_peak.temporaries, 2 * fc1 + 512 * 4 + 4 + 40);
}

#[test]
fn foreach_adam_makes_one_copy_of_all_params_and_fused_none() {
    let g = model("simple_cnn", None, None);
    let imp = |i| Optimizer {
        implementation: Some(i),
        ..Optimizer::new(OptimizerKind::Adam)
    };
    let foreach = plan(&g, &cpu(1, imp(OptimizerImpl::Foreach))).unwrap();
    assert_eq!(foreach.steps[1].peak_op, "aten._foreach_sqrt.default");
    assert_eq!(foreach.steps[1].at_peak.temporaries, P + 44);
    let fused = plan(&g, &cpu(1, imp(OptimizerImpl::Fused))).unwrap();
    assert!(fused.steps[1].peak_bytes < foreach.steps[1].peak_bytes);
    assert_eq!(fused.steps[1].peak_phase.to_string(), "backward");
}

#[test]
fn weight_decay_costs_a_gradient_copy_in_adam_but_not_in_adamw() {
    let g = model("simple_cnn", None, None);
    let wd = |k| Optimizer {
        weight_decay: Some(0.01),
        ..Optimizer::new(k)
    };
    let adam = plan(&g, &cpu(1, wd(OptimizerKind::Adam))).unwrap();
    let adamw = plan(&g, &cpu(1, wd(OptimizerKind::AdamW))).unwrap();
    // fc1.weight: 48,000 floats; Adam adds grad + wd * param as a new tensor.
    assert_eq!(
        adam.steps[1].peak_bytes - adamw.steps[1].peak_bytes,
        48_000 * 4
    );
}

#[test]
fn cuda_dropout_keeps_a_bool_mask_where_the_cpu_keeps_a_float_one() {
    let g = model("vgg11", Some(vec![3, 32, 32]), Some(10));
    let mut cfg = PlanConfig::new(64);
    cfg.optimizer = Optimizer::new(OptimizerKind::Sgd);
    cfg.optimizer.implementation = Some(OptimizerImpl::ForLoop);
    let cuda = vramlab_memory::saved_for_backward(&g, &cfg).unwrap();
    cfg.profile = Profile::PytorchCpu;
    let cpu = vramlab_memory::saved_for_backward(&g, &cfg).unwrap();
    let drop = g
        .nodes()
        .iter()
        .position(|n| n.name == "classifier.2")
        .unwrap();
    assert_eq!(cpu[drop], 64 * 4096 * 4);
    assert_eq!(cuda[drop], 64 * 4096);
}

#[test]
fn cuda_rounds_every_block_to_512_bytes_and_adds_the_context() {
    let g = model("simple_cnn", None, None);
    let mut cfg = PlanConfig::new(4);
    cfg.cuda_context_bytes = Some(300 << 20);
    let r = plan(&g, &cfg).unwrap();
    let s = &r.steps[1];
    assert_eq!(r.context_bytes, 300 << 20);
    let padding = s.at_peak.overhead - (300 << 20);
    // 10 params, 10 grads and 20 moments of which the biases are far below 512 B.
    assert!(padding > 0 && padding.is_multiple_of(4));
    assert_eq!(s.at_peak.total(), s.peak_bytes);
    // foreach on CUDA keeps the `step` counters on the host: no 4-byte tensors.
    assert_eq!(s.after_step.optimizer_state, 2 * P);
}

#[test]
fn checkpointing_cuts_activations_and_keeps_the_other_categories() {
    let g = model("resnet18", Some(vec![3, 64, 64]), Some(10));
    let mut cfg = cpu(32, Optimizer::new(OptimizerKind::Sgd));
    let plain = plan(&g, &cfg).unwrap();
    cfg.checkpoint_segments = 4;
    let ckpt = plan(&g, &cfg).unwrap();
    assert!(ckpt.steps[0].peak_bytes < plain.steps[0].peak_bytes);
    for (a, b) in plain.steps.iter().zip(&ckpt.steps) {
        assert_eq!(a.after_step, b.after_step, "no tensor may outlive the step");
    }
    cfg.checkpoint_segments = 1000;
    assert!(matches!(plan(&g, &cfg), Err(PlanError::Config(_))));
}

#[test]
fn accumulation_plans_micro_batches_with_gradients_alive() {
    let g = model("simple_cnn", None, None);
    let mut cfg = cpu(64, Optimizer::new(OptimizerKind::Sgd));
    cfg.accumulation_steps = 4;
    let acc = plan(&g, &cfg).unwrap();
    let micro = plan(&g, &cpu(16, Optimizer::new(OptimizerKind::Sgd))).unwrap();
    let full = plan(&g, &cpu(64, Optimizer::new(OptimizerKind::Sgd))).unwrap();
    assert_eq!(acc.batch_bytes, micro.batch_bytes);
    // step 2's peak is in backward for all three; the later micro-batches run with all
    // gradients alive, like micro's step 2 (whose step-1 grads die at zero_grad).
    assert!(acc.steps[0].peak_bytes > micro.steps[0].peak_bytes);
    assert!(acc.steps[0].peak_bytes < full.steps[0].peak_bytes);
    cfg.accumulation_steps = 5;
    assert!(plan(&g, &cfg).is_err());
}

#[test]
fn micro_batches_after_the_second_repeat_its_memory_exactly() {
    // Each micro-batch from the second on starts with the same tensors alive (all
    // gradients, the previous loss), so the planner simulates at most three; the
    // answer is the same as simulating every one, and a huge count takes no time.
    for (name, opt, profile) in [
        ("simple_cnn", OptimizerKind::Sgd, Profile::PytorchCpu),
        ("resnet18", OptimizerKind::Adam, Profile::PytorchCuda),
    ] {
        let g = model(name, None, None);
        let at = |acc: u32| {
            let mut cfg = cpu(8 * acc as u64, Optimizer::new(opt));
            cfg.profile = profile;
            cfg.accumulation_steps = acc;
            let r = plan(&g, &cfg).unwrap();
            (
                r.peak_bytes,
                r.steps.iter().map(|s| s.after_step).collect::<Vec<_>>(),
            )
        };
        let three = at(3);
        for acc in [4, 7, 16] {
            assert_eq!(at(acc), three, "{name}: {acc} micro-batches");
        }
    }
    let g = model("simple_cnn", None, None);
    let mut cfg = cpu(u32::MAX as u64, Optimizer::new(OptimizerKind::Sgd));
    cfg.accumulation_steps = u32::MAX;
    let start = std::time::Instant::now();
    assert!(plan(&g, &cfg).is_ok());
    assert!(start.elapsed().as_secs() < 10, "{:?}", start.elapsed());
}

#[test]
fn inference_keeps_nothing_for_backward() {
    let g = model("resnet18", None, None);
    let mut cfg = PlanConfig::new(8);
    cfg.mode = Mode::Inference;
    let r = plan(&g, &cfg).unwrap();
    assert_eq!(r.steps.len(), 1);
    let s = &r.steps[0];
    assert_eq!(s.at_peak.activations, 0);
    assert_eq!(s.at_peak.grads + s.at_peak.optimizer_state, 0);
    assert_eq!(s.after_step.temporaries, 0);
    // No labels on the device in inference.
    assert_eq!(r.batch_bytes, 8 * 3 * 224 * 224 * 4);
}

#[test]
fn amp_halves_activations_and_keeps_fp32_master_state() {
    let g = model("resnet18", None, None);
    let mut cfg = PlanConfig::new(32);
    let fp32 = plan(&g, &cfg).unwrap();
    cfg.precision = Precision::AmpFp16;
    let amp = plan(&g, &cfg).unwrap();
    let (a, f) = (&amp.steps[1], &fp32.steps[1]);
    assert_eq!(a.after_step.params, f.after_step.params);
    assert_eq!(a.after_step.grads, f.after_step.grads);
    assert_eq!(a.after_step.optimizer_state, f.after_step.optimizer_state);
    let ratio = a.at_peak.activations as f64 / f.at_peak.activations as f64;
    assert!((0.45..0.7).contains(&ratio), "activation ratio {ratio}");
    cfg.precision = Precision::Bf16;
    let bf16 = plan(&g, &cfg).unwrap();
    assert_eq!(bf16.param_bytes * 2, fp32.param_bytes);
}

#[test]
fn a_batch_of_ten_to_the_twelve_is_computed_without_overflow() {
    // vgg16 has no BatchNorm, whose per-channel statistics do not grow with the batch.
    let g = model("vgg16", None, None);
    // The CPU profile: exact bytes, no 512 B rounding, so activations scale exactly.
    let sgd = || Optimizer::new(OptimizerKind::Sgd);
    let r = plan(&g, &cpu(1_000_000_000_000, sgd())).unwrap();
    let small = plan(&g, &cpu(1_000, sgd())).unwrap();
    let act = r.steps[0].at_peak.activations;
    assert_eq!(act, small.steps[0].at_peak.activations * 1_000_000_000);
    assert!(r.peak_bytes > u64::MAX as u128);
}

#[test]
fn batch_zero_and_fused_rmsprop_are_clear_errors() {
    let g = model("simple_cnn", None, None);
    let e = plan(&g, &PlanConfig::new(0)).unwrap_err().to_string();
    assert_eq!(e, "batch size must be at least 1, got 0");
    let mut cfg = PlanConfig::new(4);
    cfg.optimizer = Optimizer {
        implementation: Some(OptimizerImpl::Fused),
        ..Optimizer::new(OptimizerKind::RmsProp)
    };
    assert!(plan(&g, &cfg).unwrap_err().to_string().contains("no fused"));
}

#[test]
fn step_two_holds_step_ones_gradients_until_zero_grad() {
    let g = model("lenet5", None, None);
    let r = plan(&g, &cpu(16, Optimizer::new(OptimizerKind::Sgd))).unwrap();
    assert_eq!(r.steps[0].before_step.grads, 0);
    assert_eq!(r.steps[1].before_step.grads, 61_706 * 4);
    assert_eq!(r.steps[1].after_step.grads, 61_706 * 4);
}

#[test]
fn mobilenet_v2_plans_depthwise_convs_relu6_and_non_inplace_residuals() {
    let g = model("mobilenet_v2", Some(vec![3, 64, 64]), Some(10));
    let r = plan(&g, &cpu(3, Optimizer::new(OptimizerKind::Sgd))).unwrap();
    let s = &r.steps[0];
    assert_eq!(s.peak_phase.to_string(), "backward");
    assert_eq!(s.after_step.grads, r.param_bytes);
    assert_eq!(s.after_step.activations, 0);
    assert_eq!(s.after_step.temporaries, 4);
}

#[test]
fn an_input_read_twice_by_one_layer_is_dropped_once() {
    // cat([x, x]) from a model file: two identity branches.
    let text = "input = [2, 4, 4]\n[[layers]]\ntype = \"Conv2d\"\nin_channels = 2\nout_channels = 2\nkernel_size = 1\n\
                [[layers]]\ntype = \"Concat\"\n[[layers.branches]]\n[[layers.branches]]\n\
                [[layers]]\ntype = \"Flatten\"\n[[layers]]\ntype = \"Linear\"\nin_features = 64\nout_features = 3\n";
    let g = vramlab_graph::model_file::parse(text, "dup.toml")
        .unwrap()
        .infer()
        .unwrap();
    for profile in [Profile::PytorchCpu, Profile::PytorchCuda] {
        let mut cfg = PlanConfig::new(2);
        cfg.profile = profile;
        let r = vramlab_memory::plan(&g, &cfg).unwrap();
        // After the step: params, grads, Adam's state and the batch; no leaked output.
        let after = r.steps[1].after_step;
        assert_eq!(after.activations, 0, "{profile:?}");
        assert!(after.temporaries <= 4, "{profile:?}: {}", after.temporaries);
    }
}
