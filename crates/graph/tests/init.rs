//! Each parameter's initialisation comes from its layer's one definition (`Op::params`),
//! as PyTorch's modules set it; the engine draws from it.

use vramlab_graph::op::{Init, Op};
use vramlab_graph::Graph;
use vramlab_graph::{zoo, ModelOptions};

fn init_of(model: &str, name: &str) -> Init {
    let g = zoo::build(model, &ModelOptions::default()).unwrap();
    let (node, spec) = g
        .nodes
        .iter()
        .flat_map(|n| n.op.params().into_iter().map(move |s| (n, s)))
        .find(|(n, s)| vramlab_graph::param_name(n, s) == name)
        .unwrap_or_else(|| panic!("{model} has no {name}"));
    g.init_of(node, &spec)
}

#[test]
fn parameters_start_as_pytorchs_modules_start_them() {
    // Conv2d and Linear: kaiming-uniform weights and fan-in uniform biases, unless the
    // model sets its own (ResNet: kaiming-normal convolutions over their fan-out).
    assert_eq!(init_of("alexnet", "features.0.weight"), Init::FanInUniform);
    assert_eq!(init_of("resnet18", "fc.bias"), Init::FanInUniform);
    assert_eq!(
        init_of("resnet18", "conv1.weight"),
        Init::Normal {
            std: (2.0f64 / (64.0 * 49.0)).sqrt()
        }
    );
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

/// The spread a parameter drawn by `init` has: `(mean, std)`.
fn spread(init: Init, fan_in: usize) -> (f64, f64) {
    let uniform = |bound: f64| (0.0, bound / 3f64.sqrt());
    match init {
        Init::FanInUniform => uniform(1.0 / (fan_in as f64).sqrt()),
        Init::FanInOf(f) => uniform(1.0 / (f as f64).sqrt()),
        Init::Uniform { bound } => uniform(bound),
        Init::Xavier { fan_in, fan_out } => uniform((6.0 / (fan_in + fan_out) as f64).sqrt()),
        Init::Normal { std } => (0.0, std),
        Init::Zeros => (0.0, 0.0),
        Init::Ones => (1.0, 0.0),
        Init::Constant(c) => (c, 0.0),
    }
}

/// Every parameter of one model per torchvision family starts as torchvision starts it:
/// constants exactly, random ones with the standard deviation torchvision's draw has
/// (within 15 % for tensors of 256 values or more: a sample's spread is that close).
#[test]
fn every_family_starts_its_parameters_as_torchvision_does() {
    let text = include_str!("fixtures/torchvision_init.json");
    let fixture: serde_json::Value = serde_json::from_str(text).unwrap();
    let models = fixture["models"].as_object().unwrap();
    assert!(models.len() >= 23);
    let mut checked = 0;
    for (model, rows) in models {
        let g: Graph = zoo::build(model, &ModelOptions::default()).unwrap();
        let params: std::collections::HashMap<String, (usize, Init)> = g
            .nodes
            .iter()
            .flat_map(|n| n.op.params().into_iter().map(move |s| (n, s)))
            .map(|(n, s)| {
                (
                    vramlab_graph::param_name(n, &s),
                    (n.op.fan_in(), g.init_of(n, &s)),
                )
            })
            .collect();
        let rows = rows.as_array().unwrap();
        assert_eq!(params.len(), rows.len(), "{model}");
        for row in rows {
            let name = row[0].as_str().unwrap();
            let numel = row[1].as_u64().unwrap();
            let (mean, std) = (row[2].as_f64().unwrap(), row[3].as_f64().unwrap());
            let &(fan_in, init) = params
                .get(name)
                .unwrap_or_else(|| panic!("{model}: no {name}"));
            let (want_mean, want_std) = spread(init, fan_in);
            if want_std == 0.0 {
                assert!(
                    std < 1e-9 && (mean - want_mean).abs() < 1e-6,
                    "{model} {name}: torchvision {mean} +- {std}, vramlab {init:?}"
                );
            } else if numel >= 256 {
                let ratio = std / want_std;
                assert!(
                    (0.85..1.15).contains(&ratio),
                    "{model} {name}: torchvision std {std}, vramlab {init:?} ({want_std})"
                );
            } else {
                assert!(
                    std > 0.0,
                    "{model} {name}: torchvision holds a constant, vramlab {init:?}"
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 3000, "{checked}");
}

/// Window attentions torchvision would build broken are refused with its reason: a
/// shift as large as the window, and Swin V2 with a one-wide window (its coordinates
/// table divides by `window - 1`: a NaN position bias).
#[test]
fn window_attentions_torchvision_would_break_are_refused() {
    let attn = |window: usize, shift: usize, v2: bool| {
        Op::WindowAttention(vramlab_graph::op::WindowAttention {
            dim: 8,
            heads: 2,
            window: (window, window),
            shift: (shift, shift),
            v2,
        })
        .validate()
    };
    assert!(attn(4, 2, true).is_ok());
    assert!(attn(1, 0, false).is_ok());
    let err = attn(1, 0, true).unwrap_err();
    assert!(err.contains("at least 2") && err.contains("NaN"), "{err}");
    let err = attn(2, 2, false).unwrap_err();
    assert!(err.contains("must be smaller than window_size"), "{err}");
}
