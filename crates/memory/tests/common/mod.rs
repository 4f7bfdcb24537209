//! What the tests against real PyTorch measurements share: reading a record's settings
//! and comparing a plan with it figure by figure.

#![allow(dead_code)]

use serde_json::Value;
use vramlab_graph::{zoo, ModelOptions, Shaped};
use vramlab_memory::{MemoryReport, Optimizer, OptimizerImpl, OptimizerKind, PlanConfig, Profile};

/// A record of a torchvision model (its name, `num_classes` and input), planned on the
/// pytorch-cpu profile with the record's batch and optimizer.
pub fn zoo_cpu_case(rec: &Value) -> (Shaped, PlanConfig) {
    let opts = ModelOptions {
        num_classes: Some(rec["num_classes"].as_u64().unwrap() as usize),
        input_shape: Some(input_shape(rec)),
    };
    let g = zoo::build(rec["model"].as_str().unwrap(), &opts)
        .unwrap()
        .infer()
        .unwrap();
    let mut cfg = PlanConfig::new(rec["batch"].as_u64().unwrap());
    cfg.profile = Profile::PytorchCpu;
    cfg.optimizer = optimizer(rec["optimizer"].as_str().unwrap());
    (g, cfg)
}

/// A record's `input_shape`.
pub fn input_shape(rec: &Value) -> Vec<usize> {
    rec["input_shape"]
        .as_array()
        .expect("an input shape")
        .iter()
        .map(|v| v.as_u64().expect("a size") as usize)
        .collect()
}

/// The optimizers of the oracle's records (../shared/oracle/measure.py).
pub fn optimizer(name: &str) -> Optimizer {
    match name {
        "sgd" => Optimizer::new(OptimizerKind::Sgd),
        "sgd_momentum" => Optimizer {
            momentum: 0.9,
            ..Optimizer::new(OptimizerKind::Sgd)
        },
        "adam" => Optimizer::new(OptimizerKind::Adam),
        "adamw" => Optimizer::new(OptimizerKind::AdamW),
        "adam_foreach" => Optimizer {
            implementation: Some(OptimizerImpl::Foreach),
            ..Optimizer::new(OptimizerKind::Adam)
        },
        "adamw_foreach_wd" => Optimizer {
            implementation: Some(OptimizerImpl::Foreach),
            weight_decay: Some(0.05),
            ..Optimizer::new(OptimizerKind::AdamW)
        },
        o => panic!("unknown optimizer {o}"),
    }
}

/// Every compared figure of a record's two steps: (label, measured, planned, measured
/// phase, planned phase). The peak, and at the peak params+grads, buffers, optimizer
/// state, batch, activations+temporaries, and the totals after and before each step.
pub fn figures(rec: &Value, report: &MemoryReport) -> Vec<(String, u128, u128, String, String)> {
    let n = |v: &Value| v.as_u64().expect("a byte count") as u128;
    let mut rows = Vec::new();
    for (i, key) in ["step1", "step2"].iter().enumerate() {
        let m = &rec[*key];
        let s = &report.steps[i];
        let split = &m["peak_split"];
        let at = &s.at_peak;
        let phase = m["peak_phase"].as_str().expect("a phase").to_string();
        for (label, measured, planned) in [
            ("peak", n(&m["tracker_peak"]), s.peak_bytes),
            (
                "params+grads",
                n(&split["params_plus_grads"]),
                at.params + at.grads,
            ),
            ("buffers", n(&split["buffers"]), at.buffers),
            ("opt_state", n(&split["opt_state"]), at.optimizer_state),
            ("batch", n(&split["batch"]), at.data_batch),
            (
                "act+temp",
                n(&split["activations_temporaries"]),
                at.activations + at.temporaries,
            ),
            ("after", n(&m["live_after"]), s.after_step.total()),
            ("before", n(&m["live_before"]), s.before_step.total()),
        ] {
            rows.push((
                format!("{key} {label}"),
                measured,
                planned,
                phase.clone(),
                s.peak_phase.to_string(),
            ));
        }
    }
    rows
}

/// `MaxVit(input_size, stem_channels=16, partition_size, block_channels=[16, 32],
/// block_layers, head_dim=8, stochastic_depth_prob, num_classes=10)`.
pub fn small_maxvit(
    side: usize,
    partition: usize,
    layers: Vec<usize>,
    sd: f64,
) -> vramlab_graph::Shaped {
    vramlab_graph::zoo::maxvit::body(
        "maxvit_test",
        vec![3, side, side],
        &vramlab_graph::zoo::maxvit::MaxVit {
            input_size: (side, side),
            stem_channels: 16,
            partition_size: partition,
            block_channels: vec![16, 32],
            block_layers: layers,
            head_dim: 8,
            stochastic_depth: sd,
            classes: 10,
        },
    )
    .infer()
    .unwrap()
}

/// `SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
/// window_size=[4, 4], stochastic_depth_prob=0.1, num_classes=10)` (V2: with
/// `block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2`).
pub fn small_swin(v2: bool, input: usize) -> vramlab_graph::Shaped {
    vramlab_graph::zoo::swin::transformer(
        "swin_test",
        vec![3, input, input],
        &vramlab_graph::zoo::swin::Swin {
            patch: 4,
            embed_dim: 16,
            depths: vec![2, 2],
            heads: vec![2, 2],
            window: 4,
            stochastic_depth: 0.1,
            v2,
            classes: 10,
        },
    )
    .infer()
    .unwrap()
}
