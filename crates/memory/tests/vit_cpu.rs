//! Vision Transformers under the pytorch-cpu profile against real PyTorch 2.15.

use vramlab_graph::zoo::vit::{transformer, Vit};
use vramlab_memory::{plan, Optimizer, OptimizerKind, PlanConfig, Profile};

#[test]
fn a_small_vit_step_matches_pytorch_op_for_op() {
    // torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1,
    // num_heads=2, hidden_dim=64, mlp_dim=128, num_classes=10), batch 2, SGD: PyTorch's
    // step 1 peaks at 415,688 bytes in backward, at the `add` of the second q/k/v
    // select_backward (measured with the oracle's dispatch tracker).
    let g = transformer(
        "vit_tiny",
        vec![3, 32, 32],
        Vit {
            patch: 8,
            layers: 1,
            heads: 2,
            hidden: 64,
            mlp: 128,
            classes: 10,
        },
    )
    .infer()
    .unwrap();
    assert_eq!(g.num_params(), 47_754);
    let mut cfg = PlanConfig::new(2);
    cfg.profile = Profile::PytorchCpu;
    cfg.optimizer = Optimizer::new(OptimizerKind::Sgd);
    let r = plan(&g, &cfg).unwrap();
    let s = &r.steps[0];
    assert_eq!(
        (s.peak_bytes, s.peak_phase.to_string()),
        (415_688, "backward".to_string())
    );
}

#[test]
fn a_small_convnext_step_matches_pytorch_op_for_op() {
    // torchvision.models.convnext.ConvNeXt([CNBlockConfig(16, 32, 1),
    // CNBlockConfig(32, None, 1)], stochastic_depth_prob=0.1, num_classes=10) on
    // 3x32x32, batch 2, SGD: PyTorch's step 1 peaks at 304,120 bytes in backward, at the
    // bias sum of the second stage's MLP (oracle's dispatch tracker).
    let g = vramlab_graph::zoo::convnext::body(
        "convnext_tiny_test",
        vec![3, 32, 32],
        &[16, 32],
        &[1, 1],
        0.1,
        10,
    )
    .infer()
    .unwrap();
    let mut cfg = PlanConfig::new(2);
    cfg.profile = Profile::PytorchCpu;
    cfg.optimizer = Optimizer::new(OptimizerKind::Sgd);
    let r = plan(&g, &cfg).unwrap();
    let s = &r.steps[0];
    // Parameters and the batch (24,576 image bytes, 16 label bytes): 89,976 before the step.
    assert_eq!(g.num_params() * 4 + 24_592, 89_976);
    assert_eq!(
        (s.peak_bytes, s.peak_phase.to_string(), s.peak_op.clone()),
        (
            304_120,
            "backward".to_string(),
            "aten.sum.dim_IntList".to_string()
        )
    );
}

#[test]
fn the_vit_model_file_plans_as_the_zoo_vit() {
    let file = vramlab_graph::model_file::parse(
        include_str!("../../../models/vit_tiny.toml"),
        "vit_tiny.toml",
    )
    .unwrap()
    .infer()
    .unwrap();
    let zoo = vramlab_graph::zoo::build("vit_tiny", &Default::default())
        .unwrap()
        .infer()
        .unwrap();
    assert_eq!(file.num_params(), 139_018);
    assert_eq!(file.num_params(), zoo.num_params());
    for profile in [Profile::PytorchCpu, Profile::Native] {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let mut cfg = PlanConfig::new(8);
            cfg.profile = profile;
            cfg.optimizer = Optimizer::new(kind);
            let (a, b) = (plan(&file, &cfg).unwrap(), plan(&zoo, &cfg).unwrap());
            for s in 0..2 {
                assert_eq!(
                    a.steps[s].peak_bytes, b.steps[s].peak_bytes,
                    "{profile:?} {kind:?}"
                );
            }
        }
    }
}
