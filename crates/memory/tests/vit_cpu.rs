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
