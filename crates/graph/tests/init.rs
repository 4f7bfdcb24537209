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

/// A graph reads back from its JSON unchanged (a checkpoint of a model from a .pt2 or
/// .onnx file carries it), for every zoo model; and JSON that is not a sound graph is
/// refused by `infer`, naming the layer.
#[test]
fn every_zoo_graph_reads_back_from_its_json() {
    for name in vramlab_graph::zoo::NAMES {
        let g = vramlab_graph::zoo::build(name, &Default::default()).unwrap();
        let json = serde_json::to_string(&g).unwrap();
        let back: vramlab_graph::Graph = serde_json::from_str(&json).unwrap();
        let differs = back.nodes.iter().zip(&g.nodes).find(|(a, b)| a != b);
        assert_eq!(differs, None, "{name}");
        assert_eq!(back, g, "{name}");
    }
    let g = vramlab_graph::zoo::build("simple_cnn", &Default::default()).unwrap();
    let mut v = serde_json::to_value(&g).unwrap();
    v["nodes"][2]["inputs"] = serde_json::json!([5]);
    let bad: vramlab_graph::Graph = serde_json::from_value(v).unwrap();
    let e = bad.infer().unwrap_err().to_string();
    assert!(
        e.contains("reads node 5, which does not come before it"),
        "{e}"
    );
    // The input reads nothing (a checkpoint's graph edited so: an error, not a panic).
    let mut v = serde_json::to_value(&g).unwrap();
    v["nodes"][0]["inputs"] = serde_json::json!([0]);
    let bad: vramlab_graph::Graph = serde_json::from_value(v).unwrap();
    let e = bad.infer().unwrap_err().to_string();
    assert!(
        e.contains("the input `input` reads 1 node(s); it reads none"),
        "{e}"
    );
}
