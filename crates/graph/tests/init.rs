//! Each parameter's initialisation comes from its layer's one definition (`Op::params`),
//! as PyTorch's modules set it; the engine draws from it.

use vramlab_graph::op::{Init, Op};
use vramlab_graph::{zoo, ModelOptions};

fn init_of(model: &str, name: &str) -> Init {
    let g = zoo::build(model, &ModelOptions::default()).unwrap();
    let (_, spec) = g
        .nodes
        .iter()
        .flat_map(|n| n.op.params().into_iter().map(move |s| (n, s)))
        .find(|(n, s)| {
            let full = if matches!(n.op, Op::Param { .. }) {
                n.name.clone()
            } else {
                format!("{}.{}", n.name, s.name)
            };
            full == name
        })
        .unwrap_or_else(|| panic!("{model} has no {name}"));
    spec.init
}

#[test]
fn parameters_start_as_pytorchs_modules_start_them() {
    // Conv2d and Linear: kaiming-uniform weights and fan-in uniform biases.
    assert_eq!(init_of("resnet18", "conv1.weight"), Init::FanInUniform);
    assert_eq!(init_of("resnet18", "fc.bias"), Init::FanInUniform);
    // BatchNorm and LayerNorm: weight 1, bias 0.
    assert_eq!(init_of("resnet18", "bn1.weight"), Init::Ones);
    assert_eq!(init_of("resnet18", "bn1.bias"), Init::Zeros);
    assert_eq!(init_of("vit_b_16", "encoder.ln.weight"), Init::Ones);
    // ViT: the class token zeros, the position embedding N(0, 0.02^2), attention's
    // packed projection xavier with zero biases.
    assert_eq!(init_of("vit_b_16", "class_token"), Init::Zeros);
    assert_eq!(
        init_of("vit_b_16", "encoder.pos_embedding"),
        Init::Normal { std: 0.02 }
    );
    assert_eq!(
        init_of(
            "vit_b_16",
            "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"
        ),
        Init::Xavier {
            fan_in: 768,
            fan_out: 2304
        }
    );
    assert_eq!(
        init_of(
            "vit_b_16",
            "encoder.layers.encoder_layer_0.self_attention.out_proj.bias"
        ),
        Init::Zeros
    );
    // ConvNeXt's layer scale: 1e-6.
    assert_eq!(
        init_of("convnext_tiny", "features.1.0.layer_scale"),
        Init::Constant(1e-6)
    );
}
