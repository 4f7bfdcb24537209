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

fn modern_zoo(name: &str) -> Shaped {
    let opts = ModelOptions {
        num_classes: Some(10),
        input_shape: Some(vec![3, 64, 64]),
    };
    zoo::build(name, &opts).unwrap().infer().unwrap()
}

#[test]
fn modern_training_exports_are_the_zoo_models() {
    // tools/export_onnx_modern_fixtures.py: TorchScript training exports of MobileNetV3
    // (Hardswish and Hardsigmoid gates, written x * HardSigmoid(x) and HardSwish),
    // DenseNet-121 (concatenations, bias-free convolutions before no BatchNorm) and
    // EfficientNet-B0 (SiLU as x * Sigmoid(x), squeeze-and-excitation, stochastic depth
    // as a product with `RandomUniformLike(...) < survival rate`).
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/params_modern.json");
    let counts: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
    for model in ["mobilenet_v3_small", "densenet121", "efficientnet_b0"] {
        let zoo = modern_zoo(model);
        let want = counts[model]["params"].as_u64().unwrap() as u128;
        assert_eq!(zoo.num_params(), want, "{model}");
        let (s, notes) = shaped(&format!("{model}_torchscript_train"), &Options::default());
        assert_eq!(s.num_params(), want, "{model}: {notes:?}");
        // ONNX cannot say what ran in place (the squeeze-and-excitation ReLU is not,
        // `result += input` is): the layers equal the zoo's up to those flags, and the
        // planned training peak is the zoo model's.
        assert_eq!(
            without_inplace(&s),
            without_inplace(&zoo),
            "{model}: {notes:?}"
        );
        let peak = |g: &Shaped| {
            let mut cfg = vramlab_memory::PlanConfig::new(8);
            cfg.profile = vramlab_memory::Profile::PytorchCpu;
            cfg.optimizer = vramlab_memory::Optimizer::new(vramlab_memory::OptimizerKind::Sgd);
            vramlab_memory::plan(g, &cfg).unwrap().peak_bytes
        };
        assert_eq!(peak(&s), peak(&zoo), "{model}");
    }
}

/// The layers with every in-place flag cleared.
fn without_inplace(s: &Shaped) -> Vec<(Op, Vec<usize>)> {
    structure(s)
        .into_iter()
        .map(|(op, ins)| {
            let op = match op {
                Op::Act { kind, .. } => Op::act(kind, false),
                Op::Add { .. } => Op::Add { inplace: false },
                Op::Dropout { p, .. } => Op::Dropout { p, inplace: false },
                // The file holds the rate as a float32.
                Op::StochasticDepth { p, row } => Op::StochasticDepth {
                    p: (p * 1e6).round() / 1e6,
                    row,
                },
                other => other,
            };
            (op, ins)
        })
        .collect()
}

#[test]
fn modern_eval_exports_map_their_gates_to_pytorchs_layers() {
    use vramlab_graph::Activation;
    let count = |s: &Shaped, f: &dyn Fn(&Op) -> bool| s.nodes().iter().filter(|n| f(&n.op)).count();
    // EfficientNet-B0: 49 SiLU (x * Sigmoid(x)) and 16 squeeze-and-excitation gates
    // (Sigmoid, then scale * x).
    let (e, _) = shaped("efficientnet_b0_torchscript_eval", &Options::default());
    let silu = |o: &Op| {
        matches!(
            o,
            Op::Act {
                kind: Activation::Silu,
                ..
            }
        )
    };
    let sigmoid = |o: &Op| {
        matches!(
            o,
            Op::Act {
                kind: Activation::Sigmoid,
                ..
            }
        )
    };
    assert_eq!(count(&e, &silu), 49);
    assert_eq!(count(&e, &sigmoid), 16);
    assert_eq!(count(&e, &|o| matches!(o, Op::Mul)), 16);
    // MobileNetV3-Small from the dynamo exporter: HardSwish nodes and 9 Hardsigmoid gates.
    let (m, _) = shaped("mobilenet_v3_small_dynamo_eval", &Options::default());
    let hs = |o: &Op| {
        matches!(
            o,
            Op::Act {
                kind: Activation::Hardswish,
                ..
            }
        )
    };
    let hsig = |o: &Op| {
        matches!(
            o,
            Op::Act {
                kind: Activation::Hardsigmoid,
                ..
            }
        )
    };
    assert_eq!(count(&m, &hs), 19);
    assert_eq!(count(&m, &hsig), 9);
    assert_eq!(m.output_shape(), &vec![10]);
}

#[test]
fn googlenet_with_its_auxiliary_heads_through_the_dynamo_exporter() {
    // tools/export_onnx_zoo.py: torchvision's GoogLeNet in training mode, aux heads on
    // (the TorchScript exporter refuses its 14 -> 4 adaptive pooling; dynamo decomposes
    // it into a gather of every window and their mean, read back as the pooling).
    let zoo = zoo::build("googlenet", &ModelOptions::default())
        .unwrap()
        .infer()
        .unwrap();
    let (s, notes) = shaped("googlenet_dynamo_train_noopt", &Options::default());
    // torchvision's count with the aux heads (aux_logits=True), and the zoo's.
    assert_eq!(s.num_params(), 13_004_888, "{notes:?}");
    assert_eq!(zoo.num_params(), 13_004_888);
    assert_eq!(s.graph.aux.len(), 2, "{notes:?}");
    let pools: Vec<&Op> = s
        .nodes()
        .iter()
        .map(|n| &n.op)
        .filter(|op| {
            matches!(
                op,
                Op::AdaptiveAvgPool2d {
                    output_size: (4, 4)
                }
            )
        })
        .collect();
    assert_eq!(pools.len(), 2, "{notes:?}");
    for profile in [
        vramlab_memory::Profile::PytorchCpu,
        vramlab_memory::Profile::PytorchCuda,
    ] {
        let peaks = |g: &Shaped| {
            let mut cfg = vramlab_memory::PlanConfig::new(2);
            cfg.profile = profile;
            let r = vramlab_memory::plan(g, &cfg).unwrap();
            r.steps.iter().map(|s| s.peak_bytes).collect::<Vec<_>>()
        };
        assert_eq!(peaks(&s), peaks(&zoo), "{profile:?}");
    }
}
