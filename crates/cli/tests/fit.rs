//! `vramlab fit`, sizes and model arguments as a user (and a hostile one) gives them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the binary runs")
}

fn vramlab(args: &[&str]) -> Output {
    run_in(&root(), args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(args: &[&str]) -> String {
    let o = vramlab(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    stdout(&o)
}

/// The text with every run of white space as one space: sentences wrap to the terminal.
fn flat(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn json(args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ok(args)).expect("valid JSON")
}

/// Exit code 2, one line on stderr that contains `want`, nothing on stdout.
fn user_error(args: &[&str], want: &str) -> String {
    let o = vramlab(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(want), "{args:?}: `{want}` not in {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(o.stdout.is_empty(), "{}", stdout(&o));
    err
}

/// A scratch folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vramlab-fit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn fit_vgg16_in_2_gib_explains_its_advice() {
    // A 512 MiB context (not the pre-Hopper table's 666 MiB) keeps plain SGD inside
    // the budget, so that the advice has a change that fits.
    let out = ok(&[
        "fit",
        "vgg16",
        "--memory",
        "2GiB",
        "--cuda-context",
        "512MiB",
    ]);
    // A header for every column, a baseline row first.
    assert!(
        out.contains("change") && out.contains("peak at batch 1"),
        "{out}"
    );
    assert!(
        out.contains("vs as given") && out.contains("result"),
        "{out}"
    );
    let table: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.starts_with("What would make batch 1 fit"))
        .collect();
    assert!(table[3].ends_with("as given: Adam(), fp32"), "{out}");
    assert!(table[3].contains("3.08 GiB"), "{out}");
    let amp = table
        .iter()
        .find(|l| l.contains("mixed precision"))
        .unwrap();
    assert!(amp.contains("no change"), "{amp}");
    // Why rows change nothing, and why all together is worse than one change.
    let text = flat(&out);
    assert!(
        text.contains("because the peak is in the optimizer step, at optimizer.step"),
        "{out}"
    );
    assert!(
        text.contains(
            "All together (2.19 GiB) is worse than --optimizer sgd --momentum 0.9 alone (2.10 GiB)"
        ),
        "{out}"
    );
    assert!(text.contains("--precision amp-bf16 adds memory"), "{out}");
    assert!(out.lines().all(|l| l.chars().count() <= 120), "{out}");
    // The procedure's table has a header over its verdicts too.
    assert!(out.contains("batch      peak  % of card  result"), "{out}");
    let zh = ok(&["fit", "vgg16", "--memory", "2GiB", "--lang", "zh"]);
    assert!(zh.contains("原设置") && zh.contains("没有变化"), "{zh}");
}

#[test]
fn fit_in_inference_mode_does_not_speak_of_training() {
    let out = ok(&["fit", "lenet5", "--memory", "1GiB", "--mode", "inference"]);
    let first = out.lines().next().unwrap();
    assert!(
        !first.contains("training") && !first.contains("Adam"),
        "{first}"
    );
    assert!(first.contains("inference"), "{first}");
    // Nothing fits in 600 MiB of which the CUDA context takes 512: no optimizer advice.
    let out = ok(&["fit", "vgg16", "--memory", "600MiB", "--mode", "inference"]);
    assert!(!out.contains("--optimizer"), "{out}");
    assert!(out.contains("as given: inference, fp32"), "{out}");
}

#[test]
fn a_size_needs_a_unit_and_says_what_it_was_read_as() {
    let e = user_error(
        &["fit", "simple_cnn", "--memory", "6"],
        "--memory: `6` is not a size",
    );
    assert!(
        e.contains("B, KB, MB, GB, TB, PB") && e.contains("KiB, MiB, GiB, TiB, PiB"),
        "{e}"
    );
    user_error(&["fit", "simple_cnn", "--memory", "12G"], "is not a size");
    user_error(&["fit", "simple_cnn", "--memory", "0GiB"], "more than 0");
    user_error(
        &["memory", "simple_cnn", "--cuda-context", "512"],
        "it needs a unit",
    );
    let out = ok(&["fit", "resnet18", "--memory", "12GB"]);
    assert!(
        out.contains("Card: 12GB = 12,000,000,000 B = 11.18 GiB;"),
        "{out}"
    );
    assert!(out.contains("decimal units"), "{out}");
    let out = ok(&["fit", "resnet18", "--gpu", "rtx-4070"]).replace('\n', " ");
    assert!(
        out.contains("NVIDIA GeForce RTX 4070 12 GB (nominal size: no published total known), 12.00 GiB = 12,884,901,888 B;"),
        "{out}"
    );
    // A card with a published PyTorch total: the budget rests on it, and says so.
    let out = ok(&["fit", "resnet18", "--gpu", "h100"]).replace('\n', " ");
    assert!(
        out.contains("NVIDIA H100 80 GB (the total PyTorch sees (total_memory): measured on a lent H100 80GB HBM3: total_memory 85,017,493,504 B, driver 580.159 (vramlab issue 10; 79.11 GiB with driver 535, vllm-project/vllm#27508); nominal 80.00 GiB), 79.18 GiB = 85,017,493,504 B; budget 80 % = 63.34 GiB"),
        "{out}"
    );
    // Only nvidia-smi's total known: the budget rests on it and says PyTorch sees less.
    let out = ok(&["fit", "resnet18", "--gpu", "l4"]).replace('\n', " ");
    assert!(
        out.contains("PyTorch sees a few hundred MiB less, which the driver keeps"),
        "{out}"
    );
    assert!(!out.contains("decimal units"), "{out}");
    let out = ok(&["fit", "resnet18", "--memory", "12GiB"]);
    assert!(
        out.contains("12GiB = 12,884,901,888 B = 12.00 GiB"),
        "{out}"
    );
}

#[test]
fn fit_numbers_are_checked_and_loops_end() {
    let start = Instant::now();
    user_error(
        &[
            "fit",
            "simple_cnn",
            "--gpu",
            "h100",
            "--target-batch",
            "18446744073709551615",
        ],
        "--target-batch must be between 1 and 1099511627776",
    );
    assert!(start.elapsed() < Duration::from_secs(30));
    user_error(
        &["fit", "simple_cnn", "--gpu", "h100", "--base-batch", "0"],
        "--base-batch must be at least 1",
    );
    for lr in ["NaN", "inf", "0", "-0.1"] {
        user_error(
            &[
                "fit",
                "simple_cnn",
                "--gpu",
                "h100",
                &format!("--base-lr={lr}"),
            ],
            "--base-lr must be a finite number more than 0",
        );
    }
    // A large but allowed target finishes.
    let v = json(&[
        "fit",
        "simple_cnn",
        "--gpu",
        "h100",
        "--target-batch",
        "1099511627776",
        "--json",
    ]);
    assert_eq!(v["accumulation"]["target_batch"], 1_099_511_627_776u64);
}

#[test]
fn gpu_takes_a_list_to_compare_cards() {
    let out = ok(&["fit", "resnet50", "--gpu", "t4,a100-40gb, h100"]);
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("NVIDIA")).collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(
        rows[0].contains("NVIDIA T4 16 GB") && rows[2].contains("H100"),
        "{out}"
    );
    assert!(
        out.contains("largest batch") && out.contains("power of two"),
        "{out}"
    );
    let v = json(&["fit", "resnet50", "--gpu", "t4,h100", "--json"]);
    let cards = v.as_array().unwrap();
    assert_eq!(cards.len(), 2);
    assert!(cards[0]["max_batch_size"].as_u64() < cards[1]["max_batch_size"].as_u64());
    user_error(
        &["fit", "resnet50", "--gpu", "t4,h100", "--plot", "x.svg"],
        "--plot draws one card",
    );
    user_error(&["fit", "resnet50", "--gpu", "t4,,h100"], "an empty name");
    let e = user_error(
        &["fit", "resnet50", "--gpu", "t4,voodoo2"],
        "unknown GPU `voodoo2`",
    );
    assert!(e.contains("--memory SIZE"), "{e}");
}

#[test]
fn a_largest_batch_above_the_dataset_is_pointed_out() {
    let out = ok(&["fit", "lenet5", "--gpu", "t4", "--dataset-size", "60000"]);
    assert!(
        flat(&out).contains("That is more than the dataset's 60,000 images"),
        "{out}"
    );
    assert!(
        out.contains("Largest power of two within the dataset: 32,768"),
        "{out}"
    );
    assert!(out.contains("Learning rate at batch 32,768"), "{out}");
    let v = json(&[
        "fit",
        "lenet5",
        "--gpu",
        "t4",
        "--dataset-size",
        "60000",
        "--json",
    ]);
    assert_eq!(v["max_batch_exceeds_dataset"], true);
    assert_eq!(v["recommended_batch"], 32_768);
}

#[test]
fn bad_layer_arguments_are_refused_by_every_command() {
    let dir = scratch("layers");
    let file = |name: &str, layers: &str| {
        let p = dir.join(name);
        std::fs::write(&p, format!("input = [1, 28, 28]\n{layers}")).unwrap();
        p.display().to_string()
    };
    let conv0 = file(
        "conv0.toml",
        "[[layers]]\ntype = \"Conv2d\"\nin_channels = 1\nout_channels = 0\nkernel_size = 3\n",
    );
    for cmd in [
        vec!["memory", conv0.as_str()],
        vec!["summary", conv0.as_str()],
        vec!["fit", conv0.as_str(), "--memory", "1GiB"],
    ] {
        user_error(
            &cmd,
            "layer `0` (Conv2d): out_channels must be a positive integer, got 0",
        );
    }
    let huge = file(
        "huge.toml",
        "[[layers]]\ntype = \"Flatten\"\n[[layers]]\ntype = \"Linear\"\nname = \"fc\"\n\
         in_features = 784\nout_features = 9223372036854775807\n",
    );
    user_error(&["memory", &huge], "layer `fc`: output shape (per image)");
    let wide = dir.join("wide.toml");
    std::fs::write(
        &wide,
        "input = [1, 16, 1152921504606846977]\n[[layers]]\ntype = \"Flatten\"\n",
    )
    .unwrap();
    user_error(
        &["memory", &wide.display().to_string()],
        "more than 1099511627776 elements",
    );
    let bn = file(
        "bn.toml",
        "[[layers]]\ntype = \"BatchNorm2d\"\nnum_features = 1\nmomentum = nan\n",
    );
    user_error(
        &["memory", &bn],
        "momentum must be a number between 0 and 1, got NaN",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn zoo_names_win_over_files_and_typos_get_a_suggestion() {
    let dir = scratch("shadow");
    std::fs::write(dir.join("resnet18"), "[[layers]]\ntype = \"ReLU\"\n").unwrap();
    let o = run_in(&dir, &["summary", "resnet18", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("11689512"),
        "the zoo model, not the file"
    );
    // A path reads the file: one ReLU, nothing to train.
    let o = run_in(&dir, &["memory", "./resnet18"]);
    assert!(
        stderr(&o).contains("the model has no parameters"),
        "{}",
        stderr(&o)
    );
    user_error(
        &["summary", "resnet-18"],
        "unknown model `resnet-18`: did you mean resnet18?",
    );
    user_error(
        &["fit", "ResNet50", "--gpu", "t4"],
        "did you mean resnet50?",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_sweep_chart_whose_x_step_is_below_the_spacing_of_doubles_is_drawn() {
    // Batch sizes 2^53 and 2^53 + 2: a tick step of 0.2 vanishes when added to 2^53,
    // which used to loop for ever.
    let dir = scratch("ticks");
    let row = |b: u64| {
        format!(
            r#"{{"batch_size":{b},"lr":0.01,"steps":1,"samples":1,"seconds":1.0,"images_per_s":10.0,"final_train_loss":1.0,"test_accuracy":0.5,"loss_noise":0.0,"measured_peak_bytes":1000,"planned_peak_bytes":1000,"loss_curve":[[{b},1.0],[{},0.5]]}}"#,
            b + 2
        )
    };
    let sweep = dir.join("sweep.json");
    std::fs::write(
        &sweep,
        format!(
            r#"{{"model":"lenet5","dataset":"fashion-mnist","optimizer":"SGD()","scale_lr":"none","rows":[{},{}]}}"#,
            row(1 << 53),
            row((1 << 53) + 2)
        ),
    )
    .unwrap();
    let out = dir.join("r.html");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(["report", "lenet5", "--sweep"])
        .arg(&sweep)
        .arg("--out")
        .arg(&out)
        .current_dir(root())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("the report did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("</svg>"));
    std::fs::remove_dir_all(&dir).ok();
}
