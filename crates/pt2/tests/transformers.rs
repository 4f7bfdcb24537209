//! Transformer-era models from torch.export archives (tools/export_pt2_transformers.py,
//! PyTorch 2.15, weights stripped): scaled-down torchvision ViT, Swin (v1 and v2),
//! ConvNeXt and MaxViT, ShuffleNetV2, and AttnNet of our own. Each loads with PyTorch's parameter
//! count and plans exactly like the zoo's graph of the same sizes (pytorch-cpu and
//! pytorch-cuda, both steps); AttnNet plans what real PyTorch measured training it.

mod common;

use common::model_json;
use std::path::PathBuf;

use vramlab_graph::zoo::{convnext, maxvit, swin, vit};
use vramlab_graph::{Graph, ModelOptions, Shaped};
use vramlab_memory::{plan, PlanConfig, Profile};
use vramlab_pt2::{from_json, load};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn record() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("transformer_fixtures.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn shaped(file: &str) -> (Shaped, Vec<String>) {
    let l = load(&dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let s = l.graph.infer().unwrap_or_else(|e| panic!("{file}: {e}"));
    (s, l.notes)
}

fn peaks(s: &Shaped, profile: Profile, batch: u64) -> Vec<u128> {
    let mut cfg = PlanConfig::new(batch);
    cfg.profile = profile;
    plan(s, &cfg)
        .unwrap()
        .steps
        .iter()
        .map(|st| st.peak_bytes)
        .collect()
}

/// The zoo's graph of the fixture's sizes (tools/export_pt2_transformers.py).
fn twin(model: &str) -> Graph {
    let input = vec![3, 32, 32];
    match model {
        "tiny_vit" => vit::transformer(
            model,
            input,
            vit::Vit {
                patch: 8,
                layers: 2,
                heads: 2,
                hidden: 32,
                mlp: 64,
                classes: 10,
            },
        ),
        "tiny_swin" | "tiny_swin_v2" => swin::transformer(
            model,
            input,
            &swin::Swin {
                patch: 4,
                embed_dim: 16,
                depths: vec![2, 2],
                heads: vec![2, 4],
                window: 4,
                stochastic_depth: 0.2,
                v2: model == "tiny_swin_v2",
                classes: 10,
            },
        ),
        "tiny_convnext" => convnext::body(model, input, &[16, 32], &[2, 2], 0.1, 10),
        "tiny_maxvit" => maxvit::body(
            model,
            input,
            &maxvit::MaxVit {
                input_size: (32, 32),
                stem_channels: 8,
                partition_size: 2,
                block_channels: vec![16, 32],
                block_layers: vec![1, 1],
                head_dim: 8,
                stochastic_depth: 0.2,
                classes: 10,
            },
        ),
        "shufflenet_v2_x0_5" => vramlab_graph::load(
            model,
            &ModelOptions {
                num_classes: Some(10),
                input_shape: Some(input),
            },
        )
        .unwrap(),
        other => panic!("no twin for {other}"),
    }
}

#[test]
fn torchvision_transformers_plan_like_the_zoo_to_the_byte() {
    let rec = record();
    let mut checked = 0;
    for (file, fx) in rec["fixtures"].as_object().unwrap() {
        let model = fx["model"].as_str().unwrap();
        let (s, notes) = shaped(file);
        assert_eq!(
            s.num_params() as u64,
            fx["num_params"].as_u64().unwrap(),
            "{file}"
        );
        assert_eq!(
            notes,
            ["the export traced a fixed batch of 2: planned with --batch-size"]
        );
        if model == "attn_net" {
            continue;
        }
        let z = twin(model).infer().unwrap();
        assert_eq!(z.num_params(), s.num_params(), "{file}");
        for profile in [Profile::PytorchCpu, Profile::PytorchCuda] {
            for batch in [4, 32] {
                assert_eq!(
                    peaks(&s, profile, batch),
                    peaks(&z, profile, batch),
                    "{file} {profile:?} batch {batch}"
                );
            }
        }
        // Parameter names as PyTorch's named_parameters() gives them.
        let zn: Vec<String> = z.params().iter().map(|p| p.name.clone()).collect();
        let sn: Vec<String> = s.params().iter().map(|p| p.name.clone()).collect();
        assert_eq!(sn, zn, "{file}");
        checked += 1;
    }
    assert_eq!(checked, 6);
}

#[test]
fn attention_of_our_own_plans_pytorchs_measured_cpu_peaks() {
    let rec = record();
    let (s, _) = shaped("attn_net_train.pt2");
    let measured = rec["pytorch_cpu_adam_peaks"]["attn_net"]
        .as_object()
        .unwrap();
    assert_eq!(measured.len(), 2);
    for (batch, want) in measured {
        let want: Vec<u128> = serde_json::from_value(want.clone()).unwrap();
        assert_eq!(
            peaks(&s, Profile::PytorchCpu, batch.parse().unwrap()),
            want,
            "batch {batch}"
        );
    }
}

fn load_json(json: &str) -> Result<vramlab_pt2::Loaded, vramlab_pt2::Pt2Error> {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    from_json(&v, "m.pt2", "m")
}

#[test]
fn what_is_not_planned_is_refused_naming_the_module() {
    let json = model_json("attn_net_train.pt2");
    assert!(load_json(&json).is_ok());
    let with_sdpa = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let nodes = v
            .pointer_mut("/graph_module/graph/nodes")
            .unwrap()
            .as_array_mut()
            .unwrap();
        let sdpa = nodes
            .iter_mut()
            .find(|n| n["target"] == "torch.ops.aten.scaled_dot_product_attention.default")
            .unwrap();
        f(sdpa);
        load_json(&v.to_string()).unwrap_err().0
    };
    // need_weights=True: no scaled_dot_product_attention inside nn.MultiheadAttention.
    let msg = with_sdpa(&|n| n["target"] = "torch.ops.aten._softmax.default".into());
    assert!(
        msg.starts_with(
            "m.pt2: module `attn` (torch.nn.modules.activation.MultiheadAttention): no \
             scaled_dot_product_attention: with need_weights=True"
        ),
        "{msg}"
    );
    // Dropout inside the attention, and a mask.
    let msg = with_sdpa(&|n| {
        n["inputs"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "dropout_p", "arg": {"as_float": 0.1}, "kind": 1}))
    });
    assert!(
        msg.ends_with("attention dropout is not planned (dropout=0.0 is)"),
        "{msg}"
    );
    let msg = with_sdpa(&|n| {
        n["inputs"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "is_causal", "arg": {"as_bool": true}, "kind": 1}))
    });
    assert!(msg.ends_with("an attention mask is not planned"), "{msg}");
    // A permutation that moves the batch.
    let cn = model_json("tiny_convnext_train.pt2");
    let moved = cn.replacen("[0, 2, 3, 1]", "[1, 0, 2, 3]", 1);
    assert_ne!(moved, cn);
    let msg = load_json(&moved).unwrap_err().0;
    assert!(
        msg.contains("permutation [1, 0, 2, 3] moves the batch from the first dimension"),
        "{msg}"
    );
}

/// Integer arguments of the transformer fixtures' nodes set to absurd values, one at a
/// time (up to 3 per node): a graph whose shapes infer, or a one-line error, never a panic.
#[test]
fn absurd_arguments_in_transformer_archives_never_panic() {
    /// JSON pointers to the integers under `v`.
    fn ints(v: &serde_json::Value, at: String, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Number(n) if n.is_i64() => out.push(at),
            serde_json::Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    ints(x, format!("{at}/{i}"), out);
                }
            }
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    ints(x, format!("{at}/{k}"), out);
                }
            }
            _ => {}
        }
    }
    let mut tried = 0;
    for file in [
        "tiny_vit_train.pt2",
        "tiny_swin_train.pt2",
        "tiny_convnext_train.pt2",
        "tiny_maxvit_train.pt2",
        "shufflenet_v2_x0_5_train.pt2",
        "attn_net_train.pt2",
    ] {
        let mut v: serde_json::Value = serde_json::from_str(&model_json(file)).unwrap();
        let nodes = v["graph_module"]["graph"]["nodes"]
            .as_array()
            .unwrap()
            .len();
        for i in 0..nodes {
            let node = format!("/graph_module/graph/nodes/{i}/inputs");
            let mut slots = Vec::new();
            ints(v.pointer(&node).unwrap(), node, &mut slots);
            for slot in slots.iter().take(3) {
                let was = v.pointer(slot).unwrap().clone();
                for bad in [-1i64, 1 << 40] {
                    *v.pointer_mut(slot).unwrap() = bad.into();
                    tried += 1;
                    match from_json(&v, "m.pt2", "m") {
                        Ok(l) => {
                            if let Ok(sh) = l.graph.infer() {
                                let _ = sh.num_params();
                            }
                        }
                        Err(e) => assert!(e.0.starts_with("m.pt2: ") && !e.0.contains('\n'), "{e}"),
                    }
                }
                *v.pointer_mut(slot).unwrap() = was;
            }
        }
    }
    assert!(tried > 500, "{tried}");
}

/// `bernoulli_(0.5)` is written without its `p` (aten's default): ConvNeXt-B's and
/// Swin-B's last blocks, whose stochastic depth is 0.5, still map to the layer.
#[test]
fn stochastic_depth_of_one_half_is_read_without_its_p() {
    let mut v: serde_json::Value =
        serde_json::from_str(&model_json("tiny_convnext_train.pt2")).unwrap();
    let nodes = v
        .pointer_mut("/graph_module/graph/nodes")
        .unwrap()
        .as_array_mut()
        .unwrap();
    let b = nodes
        .iter()
        .position(|n| n["target"] == "torch.ops.aten.bernoulli_.float")
        .unwrap();
    nodes[b]["inputs"]
        .as_array_mut()
        .unwrap()
        .retain(|a| a["name"] != "p");
    let div = nodes[b + 1]["inputs"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|a| a["name"] == "other")
        .unwrap();
    div["arg"] = serde_json::json!({"as_float": 0.5});
    let l = from_json(&v, "m.pt2", "m").unwrap();
    let p: Vec<f64> = l
        .graph
        .nodes
        .iter()
        .filter_map(|n| match n.op {
            vramlab_graph::Op::StochasticDepth { p, .. } => Some(p),
            _ => None,
        })
        .collect();
    assert!(p.contains(&0.5), "{p:?}");
}
