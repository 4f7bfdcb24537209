//! `.onnx` files wherever a model is accepted: the plan of a PyTorch training export equals
//! the zoo model's to the byte, eval exports load with what was assumed printed, and what
//! cannot be mapped is refused naming the node. Fixtures: crates/onnx/tests/fixtures
//! (tools/export_onnx_fixtures.py, weights stripped).

use std::process::{Command, Output};

fn fixture(name: &str) -> String {
    format!(
        "{}/../onnx/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn vramlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(args)
        .output()
        .unwrap()
}

/// `memory --json` without the model's name.
fn plan(model: &str, extra: &[&str], profile: &str) -> serde_json::Value {
    let mut args = vec!["memory", model, "--json", "--profile", profile];
    if !extra.contains(&"--batch-size") {
        args.extend_from_slice(&["--batch-size", "32"]);
    }
    args.extend_from_slice(extra);
    let out = vramlab(&args);
    assert!(
        out.status.success(),
        "{model}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_object_mut().unwrap().remove("model");
    without_layer_names(&mut v);
    v
}

/// Layer names differ where the exporter kept none (`relu_2` for `layer4.1.relu`): the
/// peak's layer is dropped, its op kept.
fn without_layer_names(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            m.remove("peak_layer");
            if let Some(serde_json::Value::String(at)) = m.get_mut("peak_at") {
                if let Some(i) = at.rfind(" (") {
                    *at = at[i..].to_string();
                }
            }
            m.values_mut().for_each(without_layer_names);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(without_layer_names),
        _ => {}
    }
}

#[test]
fn training_exports_plan_like_the_zoo_model_to_the_byte() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "resnet18",
            &["--input", "3x32x32", "--num-classes", "10"],
            &[],
        ),
        ("mobilenet_v2", &[], &[]),
        ("vgg11_bn", &[], &[]),
        ("alexnet", &[], &[]),
        ("vgg11", &[], &[]),
        ("vgg16", &[], &[]),
        ("resnet34", &[], &[]),
        ("resnet50", &[], &[]),
        ("simple_cnn", &[], &["--onnx-inplace", "none"]),
        ("lenet5", &[], &["--onnx-inplace", "none"]),
    ];
    for (model, zoo_args, onnx_args) in cases {
        for profile in ["pytorch-cpu", "pytorch-cuda"] {
            let zoo = plan(model, zoo_args, profile);
            for export in ["torchscript_train", "dynamo_train_noopt"] {
                let f = fixture(&format!("{model}_{export}.onnx"));
                assert_eq!(
                    plan(&f, onnx_args, profile),
                    zoo,
                    "{model} {export} {profile}"
                );
            }
        }
    }
    // BatchNorm folded by the exporter and restored: resnet18's convolutions have no
    // bias, so the restored model is torchvision's.
    let zoo = plan(
        "resnet18",
        &["--input", "3x32x32", "--num-classes", "10"],
        "pytorch-cpu",
    );
    for export in [
        "torchscript_eval",
        "dynamo_eval",
        "dynamo_train",
        "dynamo_eval_fresh",
    ] {
        let f = fixture(&format!("resnet18_{export}.onnx"));
        assert_eq!(plan(&f, &[], "pytorch-cpu"), zoo, "resnet18 {export}");
    }
}

#[test]
fn a_model_not_in_the_zoo_plans_like_its_model_file() {
    let twin = plan(&fixture("tinyres.toml"), &[], "pytorch-cpu");
    for export in ["torchscript_train", "dynamo_train_noopt"] {
        let f = fixture(&format!("tinyres_{export}.onnx"));
        assert_eq!(plan(&f, &[], "pytorch-cpu"), twin, "{export}");
    }
    // PyTorch counts 5,306 (tests/fixtures/params.json).
    assert_eq!(twin["num_params"], 5_306);
}

#[test]
fn eval_exports_load_and_say_what_was_assumed() {
    let out = vramlab(&["summary", &fixture("resnet18_dynamo_eval.onnx"), "--json"]);
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(
        "note: 20 convolutions carry a bias the exporter made by folding a BatchNorm into them: \
         planned as Conv2d(bias=False) + BatchNorm2d"
    ), "{err}");
    assert!(
        err.contains("the exporter dropped the model's Dropout layers"),
        "{err}"
    );
    assert!(
        err.contains("assumed torchvision's ReLU(inplace=True) (17 ReLU)"),
        "{err}"
    );
    assert!(
        err.contains("opset 18; the batch dimension `batch` is symbolic"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["num_params"], 11_181_642);

    // As the file has it: 20 BatchNorm layers fewer, their channels as conv biases.
    let out = vramlab(&[
        "summary",
        &fixture("resnet18_dynamo_eval.onnx"),
        "--json",
        "--onnx-bn",
        "folded",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["num_params"], 11_181_642 - 4_800);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("4800 parameters and their running statistics fewer"),
        "{err}"
    );

    // MobileNetV2 through the dynamo exporter's optimiser: the all-zero classifier bias
    // is gone from the file, and the note says so.
    let out = vramlab(&[
        "summary",
        &fixture("mobilenet_v2_dynamo_eval.onnx"),
        "--json",
    ]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("1 Linear layers have no bias in the file (1000 parameters)"),
        "{err}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["num_params"], 3_504_872 - 1_000);
}

#[test]
fn onnx_works_in_fit_report_bench_and_train() {
    let f = fixture("tinyres_torchscript_train.onnx");
    let out = vramlab(&["fit", &f, "--memory", "1GiB", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let html = std::env::temp_dir().join(format!("vramlab-onnx-{}.html", std::process::id()));
    let out = vramlab(&[
        "report",
        &f,
        "--memory",
        "1GiB",
        "--out",
        html.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read_to_string(&html)
        .unwrap()
        .contains("tinyres_torchscript_train"));
    std::fs::remove_file(&html).ok();
    // A CIFAR-10 folder of one blank image per file: the ONNX model trains on it
    // (tests/train.rs holds training from files to the zoo model's losses).
    let root = std::env::temp_dir().join(format!("vramlab-onnx-cifar-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    for f in [
        "data_batch_1",
        "data_batch_2",
        "data_batch_3",
        "data_batch_4",
        "data_batch_5",
        "test_batch",
    ] {
        std::fs::write(root.join(format!("{f}.bin")), vec![0u8; 3073]).unwrap();
    }
    let out = vramlab(&[
        "train",
        &f,
        "--data",
        "cifar10",
        "--root",
        root.to_str().unwrap(),
        "--batch-size",
        "2",
        "--json",
    ]);
    std::fs::remove_dir_all(&root).ok();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["epochs"].as_array().unwrap().len(), 1);
}

#[test]
fn a_model_saved_with_external_data_loads_without_its_data_file() {
    let f = fixture("resnet18_torchscript_train.onnx");
    let bytes = std::fs::read(&f).unwrap();
    // The initializers point at weights.data, which is not there.
    assert!(bytes.windows(12).any(|w| w == b"weights.data"));
    assert!(!std::path::Path::new(&fixture("weights.data")).exists());
    let out = vramlab(&["summary", &f, "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["num_params"], 11_181_642);
}

#[test]
fn an_unsupported_op_is_refused_naming_node_op_and_opset() {
    let f = fixture("unsupported_leakyrelu.onnx");
    let out = vramlab(&["memory", &f]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!(
            "error: {f}: node `/act/LeakyRelu`: op LeakyRelu (opset 17) is not supported; \
             supported ops: {}\n",
            vramlab_onnx::SUPPORTED_OPS.join(", ")
        )
    );
    // Not ONNX at all, and a bad option.
    let toml = fixture("tinyres.toml");
    let copy = std::env::temp_dir().join(format!("vramlab-not-onnx-{}.onnx", std::process::id()));
    std::fs::copy(&toml, &copy).unwrap();
    let out = vramlab(&["summary", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(": not a readable ONNX model: "), "{err}");
    std::fs::remove_file(&copy).ok();
    let out = vramlab(&["summary", &f, "--onnx-inplace", "maybe"]);
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "error: unknown --onnx-inplace `maybe`: expected torchvision or none\n"
    );
}

#[test]
fn an_eval_export_of_resnet18_plans_what_pytorch_measured() {
    // ../shared/reference/pytorch-cpu-memory.json, resnet18_c10_32, batch 64, Adam (CPU
    // default): step 1's tracker_peak 198,611,004 B, step 2's 203,224,384 B, measured on
    // PyTorch 2.15.0. The file is the dynamo exporter's eval export, BatchNorm folded into
    // the convolutions and restored: with the folded bias kept (a model that ran in
    // training mode first), and without it (the README's untrained model, whose folded
    // bias is all zeros and dropped).
    for f in [
        "resnet18_dynamo_eval.onnx",
        "resnet18_dynamo_eval_fresh.onnx",
    ] {
        let v = plan(
            &fixture(f),
            &["--batch-size", "64", "--optimizer", "adam"],
            "pytorch-cpu",
        );
        assert_eq!(v["steps"][0]["peak_bytes"], 198_611_004, "{f}");
        assert_eq!(v["steps"][1]["peak_bytes"], 203_224_384, "{f}");
    }
}
