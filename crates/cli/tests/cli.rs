//! The `vramlab` binary as a user runs it.

use std::process::{Command, Output};

fn vramlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(args: &[&str]) -> serde_json::Value {
    let o = vramlab(args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("valid JSON")
}

#[test]
fn tour_prints_the_lessons_six_numbers_exactly() {
    let o = vramlab(&["tour"]);
    assert!(o.status.success());
    let out = stdout(&o);
    for line in [
        "Total parameters: 62006",
        "Parameter memory: 0.24 MB",
        "Adam optimizer state: 0.47 MB",
        "One image: 12.00 KB",
        "Batch of 4: 48.00 KB",
        "Batch of 64: 0.75 MB",
    ] {
        assert!(out.contains(line), "missing `{line}` in:\n{out}");
    }
    assert!(out.contains("Gradients: 0.24 MB"));
    assert!(out.contains("What the lesson leaves out"));
}

#[test]
fn memory_json_has_steps_with_every_category() {
    let v = json(&[
        "memory",
        "simple_cnn",
        "--batch-size",
        "64",
        "--optimizer",
        "adam",
        "--profile",
        "pytorch-cpu",
        "--json",
    ]);
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["step"], 1);
    // Real PyTorch 2.15 measured 4,896,408 and 5,392,496 bytes (shared/reference).
    assert_eq!(steps[0]["peak_bytes"], 4_896_408u64);
    assert_eq!(steps[1]["peak_bytes"], 5_392_496u64);
    assert_eq!(steps[1]["peak_phase"], "backward");
    assert_eq!(steps[1]["peak_at"], "relu1 (aten.threshold_backward)");
    for key in [
        "params",
        "buffers",
        "grads",
        "optimizer_state",
        "data_batch",
        "activations",
        "temporaries",
        "overhead",
    ] {
        assert!(steps[1]["at_peak"][key].is_u64(), "{key}");
        assert!(steps[1]["after_step"][key].is_u64(), "{key}");
    }
    assert_eq!(steps[1]["after_step"]["optimizer_state"], 2 * 248_024 + 40);
}

#[test]
fn memory_table_explains_each_category_and_the_peak() {
    let o = vramlab(&["memory", "resnet18", "--batch-size", "16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("optimizer_state"));
    assert!(out.contains("what forward keeps for backward"));
    assert!(out.contains("Peak of step 2:"));
    assert!(out.contains("CUDA context"));
}

#[test]
fn a_model_file_works_wherever_a_zoo_name_does() {
    let v = json(&["summary", "models/simple_cnn.toml", "--json"]);
    assert_eq!(v["num_params"], 62_006);
    assert_eq!(v["layers"][0]["name"], "conv1");
    assert_eq!(
        v["layers"][0]["output_shape"],
        serde_json::json!([6, 28, 28])
    );
    let m = json(&[
        "memory",
        "models/simple_cnn.toml",
        "--profile",
        "pytorch-cpu",
        "--json",
    ]);
    assert_eq!(m["steps"][0]["peak_bytes"], 4_896_408u64);
}

#[test]
fn summary_shows_bytes_kept_for_backward_per_layer() {
    let v = json(&[
        "summary",
        "simple_cnn",
        "--json",
        "--profile",
        "pytorch-cpu",
    ]);
    let layer = |name: &str| {
        v["layers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()
            .clone()
    };
    // relu1 keeps its 6x28x28 output; pool1 keeps its int64 indices (its input is
    // relu1's output, counted there); conv1's input is the batch, not an activation.
    assert_eq!(layer("relu1")["saved_bytes"], 6 * 28 * 28 * 4);
    assert_eq!(layer("pool1")["saved_bytes"], 6 * 14 * 14 * 8);
    assert_eq!(layer("conv1")["saved_bytes"], 0);
    assert_eq!(layer("fc1")["macs"], 400 * 120);
}

#[test]
fn models_lists_the_zoo_with_torchvision_counts() {
    let v = json(&["models", "--json"]);
    let find = |n: &str| {
        v.as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == n)
            .unwrap()["num_params"]
            .clone()
    };
    assert_eq!(find("resnet50"), 25_557_032);
    assert_eq!(find("mobilenet_v2"), 3_504_872);
}

fn assert_user_error(args: &[&str], needle: &str) {
    let o = vramlab(args);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
    assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
    assert!(o.stdout.is_empty(), "nothing half-written on stdout");
}

#[test]
fn bad_input_is_one_clear_message_and_exit_code_2() {
    assert_user_error(&["memory", "resnet99"], "unknown model `resnet99`");
    assert_user_error(
        &["memory", "simple_cnn", "--optimizer", "adamax"],
        "unknown optimizer `adamax`",
    );
    assert_user_error(
        &["memory", "simple_cnn", "--batch-size", "0"],
        "batch size must be at least 1",
    );
    assert_user_error(
        &["memory", "simple_cnn", "--input", "3x64x64"],
        "layer `fc1`: expected 400 input features",
    );
    assert_user_error(
        &["memory", "simple_cnn", "--input", "3x0x4"],
        "not an image shape",
    );
    assert_user_error(
        &["memory", "simple_cnn", "--profile", "tpu"],
        "unknown profile",
    );
    assert_user_error(
        &[
            "memory",
            "resnet18",
            "--input",
            "3x32x32",
            "--batch-size",
            "1",
        ],
        "Expected more than 1 value per channel when training",
    );
    assert_user_error(
        &[
            "memory",
            "simple_cnn",
            "--batch-size",
            "99999999999999999999999",
        ],
        "--batch-size",
    );
    assert_user_error(
        &["memory", "no/such/model.toml"],
        "no/such/model.toml: cannot read",
    );
}

#[test]
fn a_malformed_model_file_names_the_file_and_the_layer() {
    let dir = std::env::temp_dir().join(format!("vramlab-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "[[layers]]\ntype = \"Linear\"\nin_features = 3\n").unwrap();
    assert_user_error(
        &["memory", bad.to_str().unwrap()],
        "bad.toml: layer `0` (Linear): missing field `out_features`",
    );
    let shape = dir.join("shape.toml");
    std::fs::write(
        &shape,
        "input = [1, 28, 28]\n[[layers]]\ntype = \"Conv2d\"\nname = \"stem\"\nin_channels = 3\nout_channels = 8\nkernel_size = 3\n",
    )
    .unwrap();
    assert_user_error(
        &["memory", shape.to_str().unwrap()],
        "layer `stem`: expected input with 3 channels, got 1",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_batch_of_ten_to_the_eight_gets_a_huge_correct_answer() {
    let v = json(&[
        "memory",
        "simple_cnn",
        "--batch-size",
        "100000000",
        "--profile",
        "pytorch-cpu",
        "--json",
    ]);
    let peak = v["peak_bytes"].as_f64().unwrap();
    // About 70 KB per image at the peak: 7e12 bytes, far past u32.
    assert!(peak > 6.0e12 && peak < 9.0e12, "{peak}");
    // 10^12 images of 3x32x32 are 3e15 values in one batch tensor: more than a tensor may
    // hold (2^40, as for a layer's own tensors), refused by name.
    let o = vramlab(&["memory", "simple_cnn", "--batch-size", "1000000000000"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--batch-size 1000000000000: the batch of"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in ["tour", "models", "summary", "memory", "fit", "gpus"] {
        let o = vramlab(&[cmd, "--help"]);
        assert!(o.status.success());
        assert!(
            stdout(&o).contains("Example"),
            "{cmd} --help has no example"
        );
    }
}

#[test]
fn fit_reports_the_exact_largest_batch_and_the_procedure() {
    let v = json(&[
        "fit",
        "resnet18",
        "--gpu",
        "rtx-3060",
        "--optimizer",
        "sgd",
        "--json",
    ]);
    let b = v["max_batch_size"].as_u64().unwrap();
    assert!(v["peak_bytes_at_max"].as_u64().unwrap() <= v["budget_bytes"].as_u64().unwrap());
    assert!(
        v["peak_bytes_at_max_plus_one"].as_u64().unwrap() > v["budget_bytes"].as_u64().unwrap()
    );
    assert_eq!(
        v["max_power_of_two"].as_u64().unwrap(),
        1 << (63 - b.leading_zeros())
    );
    // 80 % of what PyTorch sees on an RTX 3060 (11.76 GiB, the catalog's published figure).
    assert_eq!(v["budget_bytes"], (12_042u64 << 20) * 8 / 10);
    assert_eq!(v["procedure"][0]["batch_size"], 16);
    assert!(v["lr_advice"]["linear_scaling_rule"].is_f64());
}

#[test]
fn fit_says_when_nothing_fits_and_what_would() {
    let o = vramlab(&["fit", "vgg16", "--input", "3x224x224", "--memory", "2GiB"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("does not fit even at batch 1"), "{out}");
    assert!(out.contains("mixed precision (--precision amp-bf16)"));
    assert!(out.contains("activation checkpointing"));
    assert!(out.contains("SGD with momentum instead"));
    assert!(out.contains("a smaller input (--input 3x112x112)"));
    let v = json(&[
        "fit",
        "vgg16",
        "--input",
        "3x224x224",
        "--memory",
        "2GiB",
        "--json",
    ]);
    assert!(v["max_batch_size"].is_null());
    assert!(v["max_power_of_two"].is_null());
    assert!(v["peak_bytes_at_max"].is_null());
}

#[test]
fn gpus_lists_at_least_25_cards_and_fit_rejects_unknown_ones() {
    let v = json(&["gpus", "--json"]);
    assert!(v.as_array().unwrap().len() >= 25);
    assert_user_error(
        &["fit", "simple_cnn", "--gpu", "voodoo2"],
        "unknown GPU `voodoo2`",
    );
    assert_user_error(&["fit", "simple_cnn", "--memory", "lots"], "is not a size");
    assert_user_error(&["fit", "simple_cnn"], "--gpu");
}

#[test]
fn tour_memory_and_fit_speak_chinese() {
    let o = vramlab(&["tour", "--lang", "zh"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("参数总数：62006"), "{out}");
    assert!(out.contains("Adam 优化器状态：0.47 MB"));
    assert!(out.contains("64 张一批：0.75 MB"));
    let o = vramlab(&["memory", "resnet18", "--batch-size", "8", "--lang", "zh"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("第 2 步峰值"));
    assert!(stdout(&o).contains("CUDA 上下文"));
    let o = vramlab(&["fit", "vgg16", "--memory", "2GiB", "--lang", "zh"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("即使批大小为 1 也放不下"));
    assert!(stdout(&o).contains("混合精度（--precision amp-bf16）"));
    let o = vramlab(&[
        "fit",
        "resnet18",
        "--gpu",
        "t4",
        "--target-batch",
        "4096",
        "--lang",
        "zh",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("可容纳的最大批大小")
            && out.contains("线性缩放规则")
            && out.contains("等效批大小 4,096"),
        "{out}"
    );
}
