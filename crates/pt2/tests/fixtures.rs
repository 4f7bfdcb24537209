//! The committed fixtures (tools/export_pt2_fixtures.py: torch.export.export +
//! torch.export.save, PyTorch 2.15) load with PyTorch's parameter names and counts, and
//! plan to the same peak as the same model built with vramlab's own layers.

use std::path::PathBuf;

use vramlab_graph::{
    zoo, Activation, BatchNorm2d, Conv2d, GraphBuilder, Linear, Op, Pool2d, Shaped,
};
use vramlab_memory::{plan, PlanConfig, Profile};
use vramlab_pt2::load;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn record() -> serde_json::Value {
    let text = std::fs::read_to_string(dir().join("pt2_fixtures.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn shaped(file: &str) -> (Shaped, Vec<String>) {
    let l = load(&dir().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    let s = l.graph.infer().unwrap_or_else(|e| panic!("{file}: {e}"));
    (s, l.notes)
}

fn peak(s: &Shaped, batch: u64) -> u128 {
    let mut cfg = PlanConfig::new(batch);
    cfg.profile = Profile::PytorchCpu;
    plan(s, &cfg).unwrap().peak_bytes
}

/// The layers without names: op and inputs, in order.
fn structure(s: &Shaped) -> Vec<(Op, Vec<usize>)> {
    s.nodes()
        .iter()
        .map(|n| (n.op.clone(), n.inputs.clone()))
        .collect()
}

#[test]
fn every_fixture_has_pytorchs_parameter_names_and_count() {
    let rec = record();
    let fixtures = rec["fixtures"].as_object().unwrap();
    assert_eq!(fixtures.len(), 7);
    for (file, want) in fixtures {
        let (s, notes) = shaped(file);
        assert_eq!(
            s.num_params(),
            want["num_params"].as_u64().unwrap() as u128,
            "{file}"
        );
        let names: Vec<String> = s.params().iter().map(|p| p.name.clone()).collect();
        let want_names: Vec<String> = want["param_names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(names, want_names, "{file}");
        let shapes: Vec<Vec<usize>> = s.params().iter().map(|p| p.shape.clone()).collect();
        let want_shapes: Vec<Vec<usize>> =
            serde_json::from_value(want["param_shapes"].clone()).unwrap();
        assert_eq!(shapes, want_shapes, "{file}");
        let input: Vec<usize> = serde_json::from_value(want["input_shape"].clone()).unwrap();
        assert_eq!(s.graph.input_shape, input, "{file}");
        assert_eq!(s.num_classes(), 10, "{file}");
        let batch_note = if want["mode"] == "train_decomposed" {
            "the batch dimension is symbolic: planned with --batch-size"
        } else {
            "the export traced a fixed batch of 2: planned with --batch-size"
        };
        assert_eq!(notes[0], batch_note, "{file}");
        let eval = want["mode"] == "eval";
        assert_eq!(
            notes.iter().any(|n| n.contains("exported in eval mode")),
            eval,
            "{file}: {notes:?}"
        );
    }
}

#[test]
fn simple_cnn_is_the_zoos_and_plans_to_pytorchs_measured_peak() {
    let (s, _) = shaped("simple_cnn_train.pt2");
    let z = zoo::build("simple_cnn", &Default::default())
        .unwrap()
        .infer()
        .unwrap();
    assert_eq!(structure(&s), structure(&z));
    let names = |s: &Shaped| {
        s.params()
            .iter()
            .map(|p| p.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(names(&s), names(&z));
    for batch in [1, 8, 64] {
        assert_eq!(peak(&s, batch), peak(&z, batch), "batch {batch}");
    }
    // Real PyTorch 2.15 on the CPU, Adam, batch 64: 4,896,408 B at step 1 (shared/reference).
    let mut cfg = PlanConfig::new(64);
    cfg.profile = Profile::PytorchCpu;
    assert_eq!(plan(&s, &cfg).unwrap().steps[0].peak_bytes, 4_896_408);
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, groups: usize, bias: bool) -> Op {
    Op::Conv2d(Conv2d {
        in_channels: cin,
        out_channels: cout,
        kernel_size: (k, k),
        stride: (stride, stride),
        padding: ((k - 1) / 2, (k - 1) / 2),
        dilation: (1, 1),
        groups,
        bias,
    })
}

fn bn(c: usize, eps: f64, momentum: f64) -> Op {
    let mut b = BatchNorm2d::new(c);
    b.eps = eps;
    b.momentum = momentum;
    Op::BatchNorm2d(b)
}

/// tools/export_pt2_fixtures.py's SmallResNet, layer by layer; `inplace` as the training
/// IR keeps it (`ReLU(inplace=True)`, `out += identity`).
fn small_resnet(inplace: bool) -> Shaped {
    let mut b = GraphBuilder::new("small_resnet", vec![3, 32, 32]);
    let relu = Op::act(Activation::Relu, inplace);
    let x = b.then("conv1", conv(3, 16, 3, 1, 1, false), 0);
    let x = b.then("bn1", bn(16, 1e-5, 0.1), x);
    let x = b.then("relu", relu.clone(), x);
    let mut pool = Pool2d::new(3);
    pool.stride = (2, 2);
    pool.padding = (1, 1);
    let mut x = b.then("maxpool", Op::MaxPool2d(pool), x);
    for (layer, cin, cout, stride) in [("layer1.0", 16, 16, 1), ("layer2.0", 16, 32, 2)] {
        let identity = if cin != cout {
            let d = b.then(
                format!("{layer}.downsample.0"),
                conv(cin, cout, 1, stride, 1, false),
                x,
            );
            b.then(format!("{layer}.downsample.1"), bn(cout, 1e-5, 0.1), d)
        } else {
            x
        };
        let y = b.then(
            format!("{layer}.conv1"),
            conv(cin, cout, 3, stride, 1, false),
            x,
        );
        let y = b.then(format!("{layer}.bn1"), bn(cout, 1e-5, 0.1), y);
        let y = b.then(format!("{layer}.relu"), relu.clone(), y);
        let y = b.then(
            format!("{layer}.conv2"),
            conv(cout, cout, 3, 1, 1, false),
            y,
        );
        let y = b.then(format!("{layer}.bn2"), bn(cout, 1e-5, 0.1), y);
        let y = b.add(layer, Op::Add { inplace }, &[y, identity]);
        x = b.then(format!("{layer}.relu_1"), relu.clone(), y);
    }
    let x = b.then(
        "avgpool",
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        x,
    );
    let x = b.then("flatten", Op::Flatten, x);
    b.then("fc", Op::Linear(Linear::new(32, 10)), x);
    let g = b.build();
    g.infer().unwrap()
}

#[test]
fn small_resnet_plans_like_its_graphbuilder_twin() {
    let twin = small_resnet(true);
    for file in ["small_resnet_train.pt2", "small_resnet_eval.pt2"] {
        let (s, notes) = shaped(file);
        assert_eq!(structure(&s), structure(&twin), "{file}: {notes:?}");
        for batch in [1, 8, 32] {
            assert_eq!(peak(&s, batch), peak(&twin, batch), "{file} batch {batch}");
        }
    }
    // A symbolic batch and run_decompositions(), which makes every op functional: the same
    // layers, nothing in place.
    let twin = small_resnet(false);
    let (s, _) = shaped("small_resnet_train_decomposed.pt2");
    assert_eq!(structure(&s), structure(&twin));
    assert_eq!(peak(&s, 8), peak(&twin, 8));
}

/// tools/export_pt2_fixtures.py's TinyMobileNet, layer by layer.
fn tiny_mobilenet() -> Shaped {
    let mut b = GraphBuilder::new("tiny_mobilenet", vec![3, 32, 32]);
    let hs = Op::act(Activation::Hardswish, true);
    let relu = Op::act(Activation::Relu, true);
    let bnm = |c| bn(c, 0.001, 0.01);
    let x = b.then("features.0.0", conv(3, 8, 3, 2, 1, false), 0);
    let x = b.then("features.0.1", bnm(8), x);
    let mut x = b.then("features.0.2", hs.clone(), x);
    let blocks = [
        (1, 8, 8, 8, 2, true, relu.clone()),
        (2, 8, 24, 16, 2, false, relu.clone()),
        (3, 16, 48, 16, 1, true, hs.clone()),
    ];
    for (i, cin, exp, cout, stride, se, act) in blocks {
        let block_in = x;
        let mut k = 0;
        let p = |k: usize| format!("features.{i}.block.{k}");
        let mut y = x;
        if exp != cin {
            y = b.then(format!("{}.0", p(k)), conv(cin, exp, 1, 1, 1, false), y);
            y = b.then(format!("{}.1", p(k)), bnm(exp), y);
            y = b.then(format!("{}.2", p(k)), act.clone(), y);
            k += 1;
        }
        y = b.then(
            format!("{}.0", p(k)),
            conv(exp, exp, 3, stride, exp, false),
            y,
        );
        y = b.then(format!("{}.1", p(k)), bnm(exp), y);
        y = b.then(format!("{}.2", p(k)), act.clone(), y);
        k += 1;
        if se {
            let sq = (exp / 4).max(8);
            let s = b.then(
                format!("{}.avgpool", p(k)),
                Op::AdaptiveAvgPool2d {
                    output_size: (1, 1),
                },
                y,
            );
            let s = b.then(format!("{}.fc1", p(k)), conv(exp, sq, 1, 1, 1, true), s);
            let s = b.then(
                format!("{}.activation", p(k)),
                Op::act(Activation::Relu, false),
                s,
            );
            let s = b.then(format!("{}.fc2", p(k)), conv(sq, exp, 1, 1, 1, true), s);
            let s = b.then(
                format!("{}.scale_activation", p(k)),
                Op::act(Activation::Hardsigmoid, false),
                s,
            );
            y = b.add(p(k), Op::Mul, &[s, y]);
            k += 1;
        }
        y = b.then(format!("{}.0", p(k)), conv(exp, cout, 1, 1, 1, false), y);
        y = b.then(format!("{}.1", p(k)), bnm(cout), y);
        if stride == 1 && cin == cout {
            y = b.add(
                format!("features.{i}"),
                Op::Add { inplace: false },
                &[y, block_in],
            );
        }
        x = y;
    }
    let x = b.then("features.4.0", conv(16, 48, 1, 1, 1, false), x);
    let x = b.then("features.4.1", bnm(48), x);
    let x = b.then("features.4.2", hs.clone(), x);
    let x = b.then(
        "avgpool",
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        x,
    );
    let x = b.then("flatten", Op::Flatten, x);
    let x = b.then("classifier.0", Op::Linear(Linear::new(48, 64)), x);
    let x = b.then("classifier.1", hs, x);
    let x = b.then(
        "classifier.2",
        Op::Dropout {
            p: 0.2,
            inplace: true,
        },
        x,
    );
    b.then("classifier.3", Op::Linear(Linear::new(64, 10)), x);
    b.build().infer().unwrap()
}

#[test]
fn tiny_mobilenet_plans_like_its_graphbuilder_twin() {
    let twin = tiny_mobilenet();
    for file in ["tiny_mobilenet_train.pt2", "tiny_mobilenet_eval.pt2"] {
        let (s, notes) = shaped(file);
        assert_eq!(structure(&s), structure(&twin), "{file}: {notes:?}");
        let names = |s: &Shaped| {
            s.params()
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&s), names(&twin), "{file}");
        for batch in [1, 8, 32] {
            assert_eq!(peak(&s, batch), peak(&twin, batch), "{file} batch {batch}");
        }
    }
}

#[test]
fn train_and_eval_archives_plan_to_real_pytorchs_cpu_peaks() {
    // pt2_fixtures.json's "pytorch_cpu_adam_peaks": the models trained by real PyTorch 2.15
    // on the CPU (fp32, Adam, steps 1 and 2), measured by ../shared/oracle's tracker
    // (tools/export_pt2_fixtures.py --measure).
    let rec = record();
    let measured = rec["pytorch_cpu_adam_peaks"].as_object().unwrap();
    let mut checked = 0;
    for (file, fx) in rec["fixtures"].as_object().unwrap() {
        if fx["mode"] == "train_decomposed" {
            // Functional: planned with nothing in place, unlike the model PyTorch ran.
            continue;
        }
        let (s, _) = shaped(file);
        for (batch, want) in measured[fx["model"].as_str().unwrap()].as_object().unwrap() {
            let mut cfg = PlanConfig::new(batch.parse().unwrap());
            cfg.profile = Profile::PytorchCpu;
            let r = plan(&s, &cfg).unwrap();
            let got: Vec<u128> = r.steps.iter().map(|st| st.peak_bytes).collect();
            let want: Vec<u128> = serde_json::from_value(want.clone()).unwrap();
            assert_eq!(got, want, "{file} batch {batch}");
            checked += 1;
        }
    }
    assert_eq!(checked, 12);
}

#[test]
fn stochastic_depth_noise_becomes_torchvisions_layer() {
    // `torch.empty([B, 1, 1, 1]).bernoulli_(0.8).div_(0.8)`, then `input * noise`.
    let (s, _) = shaped("tiny_effnet_train.pt2");
    let sd: Vec<(&str, &Op)> = s
        .nodes()
        .iter()
        .filter(|n| matches!(n.op, Op::StochasticDepth { .. }))
        .map(|n| (n.name.as_str(), &n.op))
        .collect();
    assert_eq!(
        sd,
        [(
            "features.1.stochastic_depth",
            &Op::StochasticDepth { p: 0.2, row: true }
        )]
    );
    let acts: Vec<&Op> = s
        .nodes()
        .iter()
        .filter(|n| matches!(n.op, Op::Act { .. }))
        .map(|n| &n.op)
        .collect();
    assert!(acts.contains(&&Op::act(Activation::Silu, true)));
    assert!(acts.contains(&&Op::act(Activation::Sigmoid, false)));
}
