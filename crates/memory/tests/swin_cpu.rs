//! Swin Transformers (V1 and V2) under the pytorch-cpu profile against real PyTorch
//! 2.15, measured with /work/notes/mbv2/trace.py (the oracle's dispatch tracker, one
//! training step): small torchvision `SwinTransformer`s, 3x32x32, batch 2, 10 classes,
//! SGD.

use vramlab_graph::zoo::swin::{transformer, Swin};
use vramlab_memory::{plan, Optimizer, OptimizerKind, PlanConfig, Profile};

/// `SwinTransformer(patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
/// window_size=[4, 4], stochastic_depth_prob=0.1, num_classes=10)` (V2: with
/// `block=SwinTransformerBlockV2, downsample_layer=PatchMergingV2`).
fn small(v2: bool, input: usize) -> vramlab_graph::Shaped {
    transformer(
        "swin_test",
        vec![3, input, input],
        &Swin {
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

fn step1(g: &vramlab_graph::Shaped) -> (u128, String, String) {
    let mut cfg = PlanConfig::new(2);
    cfg.profile = Profile::PytorchCpu;
    cfg.optimizer = Optimizer::new(OptimizerKind::Sgd);
    let r = plan(g, &cfg).unwrap();
    let s = &r.steps[0];
    (s.peak_bytes, s.peak_phase.to_string(), s.peak_op.clone())
}

#[test]
fn a_small_swin_v1_step_matches_pytorch() {
    let g = small(false, 32);
    assert_eq!(
        step1(&g),
        (
            683_712,
            "backward".to_string(),
            "aten.sum.dim_IntList".to_string()
        )
    );
}
