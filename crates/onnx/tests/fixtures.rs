//! The committed fixtures (tools/export_onnx_fixtures.py: PyTorch 2.15 and torchvision
//! 0.29, both exporters, weights stripped to external data that is not there) load, with
//! PyTorch's parameter counts and the zoo's layers.

use std::path::PathBuf;

use vramlab_graph::{zoo, ModelOptions, Op, Shaped};
use vramlab_onnx::{load, Inplace, Options};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.onnx"))
}

fn params_json() -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/params.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn shaped(name: &str, opts: &Options) -> (Shaped, Vec<String>) {
    let l = load(&fixture(name), opts).unwrap_or_else(|e| panic!("{name}: {e}"));
    let s = l.graph.infer().unwrap_or_else(|e| panic!("{name}: {e}"));
    (s, l.notes)
}

fn zoo_model(name: &str) -> Shaped {
    let (classes, input) = match name {
        "resnet18" => (Some(10), Some(vec![3, 32, 32])),
        _ => (None, None),
    };
    let opts = ModelOptions {
        num_classes: classes,
        input_shape: input,
    };
    zoo::build(name, &opts).unwrap().infer().unwrap()
}

/// The layers without names: op and inputs, in order.
fn structure(s: &Shaped) -> Vec<(Op, Vec<usize>)> {
    s.nodes()
        .iter()
        .map(|n| (n.op.clone(), n.inputs.clone()))
        .collect()
}

/// The layers' ops in order, without Dropout (which eval exports drop) and inputs.
fn without_dropout(s: &Shaped) -> Vec<(Op, Vec<usize>)> {
    s.nodes()
        .iter()
        .filter(|n| !matches!(n.op, Op::Dropout { .. }))
        .map(|n| (n.op.clone(), vec![]))
        .collect()
}

const ZOO: &[&str] = &[
    "simple_cnn",
    "lenet5",
    "resnet18",
    "mobilenet_v2",
    "vgg11_bn",
];
const EXPORTS: &[&str] = &[
    "torchscript_train",
    "torchscript_eval",
    "dynamo_train",
    "dynamo_eval",
    "dynamo_train_noopt",
];

fn opts_for(model: &str) -> Options {
    Options {
        // The lesson's models call F.relu; torchvision's use ReLU(inplace=True).
        inplace: if model == "simple_cnn" || model == "lenet5" {
            Inplace::None
        } else {
            Inplace::Torchvision
        },
        restore_bn: true,
    }
}

#[test]
fn every_export_has_pytorch_parameter_count_and_the_zoo_graph() {
    let counts = params_json();
    let mut bad = Vec::new();
    for model in ZOO {
        let zoo = zoo_model(model);
        let want = counts[model]["params"].as_u64().unwrap() as u128;
        assert_eq!(zoo.num_params(), want, "{model}: zoo vs PyTorch");
        for export in EXPORTS {
            let name = format!("{model}_{export}");
            let l = match load(&fixture(&name), &opts_for(model)) {
                Ok(l) => l,
                Err(e) => {
                    bad.push(e.to_string());
                    continue;
                }
            };
            let s = match l.graph.infer() {
                Ok(s) => s,
                Err(e) => {
                    bad.push(format!("{name}: {e}"));
                    continue;
                }
            };
            // VGG-11-BN's convolutions have a bias before their BatchNorm: an export that
            // folds the BatchNorm into it cannot say so, and the restored
            // Conv2d(bias=False) + BatchNorm2d is one bias (2,752 parameters) short, as
            // the note says.
            let folded_vgg = *model == "vgg11_bn"
                && l.notes
                    .iter()
                    .any(|n| n.starts_with("8 convolutions carry a bias"));
            // The dynamo exporter's optimiser drops an all-zero Linear bias (torchvision
            // initialises MobileNetV2's and VGG's to zero); the note says how many.
            let zero_bias = match (
                *model,
                export.starts_with("dynamo") && !export.ends_with("noopt"),
            ) {
                ("mobilenet_v2", true) => 1000,
                ("vgg11_bn", true) => 4096 + 4096 + 1000,
                _ => 0,
            };
            if zero_bias > 0 {
                let note =
                    format!("Linear layers have no bias in the file ({zero_bias} parameters)");
                assert!(
                    l.notes.iter().any(|n| n.contains(&note)),
                    "{name}: {:?}",
                    l.notes
                );
            }
            let want = if folded_vgg { want - 2752 } else { want } - zero_bias;
            let eval = export.contains("eval");
            let zoo_s = if eval {
                without_dropout(&zoo)
            } else {
                structure(&zoo)
            };
            let got_s = if eval {
                without_dropout(&s)
            } else {
                structure(&s)
            };
            if s.num_params() != want || s.buffer_bytes() != zoo.buffer_bytes() {
                bad.push(format!("{name}: {} params, want {want}", s.num_params()));
            } else if got_s != zoo_s && !folded_vgg && zero_bias == 0 {
                let (a, b) = (got_s, zoo_s);
                let i = a
                    .iter()
                    .zip(&b)
                    .position(|(x, y)| x != y)
                    .unwrap_or(a.len().min(b.len()));
                bad.push(format!(
                    "{name}: layer {i} differs: {:?} vs zoo {:?} ({} vs {} layers)",
                    a.get(i),
                    b.get(i),
                    a.len(),
                    b.len()
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn tinyres_matches_its_model_file_twin() {
    let counts = params_json();
    let want = counts["tinyres"]["params"].as_u64().unwrap() as u128;
    let twin = vramlab_graph::model_file::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tinyres.toml"),
    )
    .unwrap()
    .infer()
    .unwrap();
    assert_eq!(twin.num_params(), want);
    for export in ["torchscript_train", "dynamo_train_noopt"] {
        let (s, notes) = shaped(&format!("tinyres_{export}"), &Options::default());
        assert_eq!(s.num_params(), want, "{export}");
        assert_eq!(structure(&s), structure(&twin), "{export}: {notes:?}");
    }
}

#[test]
fn every_opset_of_both_exporters_gives_the_same_model() {
    // TorchScript at opsets 13 to 20 and dynamo (optimize=False) at 18 to 20, in training
    // mode; TinyRes pooled with `x.mean((2, 3))` (ReduceMean, axes an attribute before
    // opset 18 and an input from 18) is the same layers as tests/fixtures/tinyres.toml.
    let twin = vramlab_graph::model_file::load(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tinyres.toml"),
    )
    .unwrap()
    .infer()
    .unwrap();
    let files = (13..=20)
        .map(|o| (format!("tinyres_mean_torchscript_opset{o}"), o))
        .chain((18..=20).map(|o| (format!("tinyres_mean_dynamo_opset{o}"), o)));
    for (name, opset) in files {
        let l = load(&fixture(&name), &Options::default()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(l.opset, opset, "{name}");
        let s = l.graph.infer().unwrap();
        assert_eq!(s.num_params(), 5_306, "{name}");
        assert_eq!(structure(&s), structure(&twin), "{name}: {:?}", l.notes);
        // The training mode is read from BatchNormalization (TorchScript) or Dropout.
        assert!(
            !l.notes
                .iter()
                .any(|n| n.contains("exported in training mode")),
            "{name}: {:?}",
            l.notes
        );
    }
}

#[test]
fn the_rest_of_the_zoo_exports_like_torchvision() {
    // alexnet, vgg11, vgg16, resnet34, resnet50: training exports of both exporters
    // (dynamo with optimize=False) give PyTorch's parameter count and the zoo's layers.
    let counts = params_json();
    for model in ["alexnet", "vgg11", "vgg16", "resnet34", "resnet50"] {
        let zoo = zoo_model(model);
        let want = counts[model]["params"].as_u64().unwrap() as u128;
        assert_eq!(zoo.num_params(), want, "{model}");
        for export in ["torchscript_train", "dynamo_train_noopt"] {
            let (s, notes) = shaped(&format!("{model}_{export}"), &Options::default());
            assert_eq!(s.num_params(), want, "{model} {export}");
            assert_eq!(
                structure(&s),
                structure(&zoo),
                "{model} {export}: {notes:?}"
            );
        }
    }
}
