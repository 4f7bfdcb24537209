//! `vramlab train`, `eval`, `predict`, `bench train` on a small generated CIFAR-10.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vramlab_data::cifar::{encode, PIXELS};

fn vramlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(args)
        .output()
        .expect("runs")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vramlab-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A learnable CIFAR-10: the label is which colour plane is bright.
fn cifar(root: &Path, per_file: usize) {
    let make = |n: usize, salt: usize| {
        let labels: Vec<Vec<u8>> = (0..n).map(|i| vec![((i + salt) % 3) as u8]).collect();
        let pixels: Vec<Vec<u8>> = (0..n)
            .map(|i| {
                let c = (i + salt) % 3;
                let mut p = vec![20u8; PIXELS];
                p[c * 1024..(c + 1) * 1024]
                    .iter_mut()
                    .enumerate()
                    .for_each(|(j, v)| *v = 150 + ((j * 7 + i) % 100) as u8);
                p
            })
            .collect();
        encode(&labels, &pixels)
    };
    for i in 1..=5 {
        std::fs::write(root.join(format!("data_batch_{i}.bin")), make(per_file, i)).unwrap();
    }
    std::fs::write(root.join("test_batch.bin"), make(per_file, 0)).unwrap();
}

/// `vramlab train simple_cnn` for one epoch, batch 8, on the generated CIFAR-10 at
/// `root`, saving the checkpoint `ck`.
fn train_checkpoint(root: &Path, ck: &Path) -> serde_json::Value {
    let (r, c) = (root.to_str().unwrap(), ck.to_str().unwrap());
    json(&vramlab(&[
        "train",
        "simple_cnn",
        "--data",
        "cifar10",
        "--root",
        r,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--checkpoint",
        c,
        "--json",
    ]))
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn training_learns_and_its_measured_memory_equals_the_plan() {
    let root = tmp("learn");
    cifar(&root, 64);
    let ck = root.join("run.safetensors");
    let r = root.to_str().unwrap();
    let args = [
        "train",
        "simple_cnn",
        "--data",
        "cifar10",
        "--root",
        r,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--threads",
        "2",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--json",
    ];
    let v = json(&vramlab(&args));
    let epochs = v["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    assert!(
        epochs[1]["test_accuracy"].as_f64().unwrap() > 0.9,
        "{}",
        v["epochs"]
    );
    let (m, p) = (
        &v["memory"]["measured"]["steps"],
        &v["memory"]["planned"]["steps"],
    );
    for s in 0..2 {
        assert_eq!(m[s]["peak_bytes"], p[s]["peak_bytes"]);
        assert_eq!(m[s]["at_peak"], p[s]["at_peak"]);
        assert_eq!(m[s]["after_step"], p[s]["after_step"]);
    }
    // The same seed gives the same result.
    let again = json(&vramlab(&args));
    assert_eq!(
        again["epochs"][1]["train_loss"],
        v["epochs"][1]["train_loss"]
    );
    assert_eq!(
        again["epochs"][1]["test_accuracy"],
        v["epochs"][1]["test_accuracy"]
    );
    // The checkpoint evaluates to the same test accuracy.
    let e = json(&vramlab(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        "cifar10",
        "--root",
        r,
        "--json",
    ]));
    assert_eq!(e["accuracy"], v["epochs"][1]["test_accuracy"]);
    // Resuming at epoch 2 of 3 runs one more epoch.
    let resumed = json(&vramlab(&[
        "train",
        "simple_cnn",
        "--data",
        "cifar10",
        "--root",
        r,
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--seed",
        "3",
        "--resume",
        ck.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(resumed["epochs"].as_array().unwrap().len(), 1);
    assert_eq!(resumed["epochs"][0]["epoch"], 3);
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn predict_gives_the_top_5_classes() {
    let root = tmp("predict");
    cifar(&root, 32);
    let ck = root.join("p.safetensors");
    train_checkpoint(&root, &ck);
    let img = root.join("green.png");
    let mut px = image::RgbImage::from_pixel(32, 32, image::Rgb([20, 20, 20]));
    px.pixels_mut().for_each(|p| p.0[1] = 200);
    px.save(&img).unwrap();
    let v = json(&vramlab(&[
        "predict",
        "--checkpoint",
        ck.to_str().unwrap(),
        img.to_str().unwrap(),
        "--json",
    ]));
    let top = v.as_array().unwrap();
    assert_eq!(top.len(), 5);
    let sum: f64 = top.iter().map(|g| g["probability"].as_f64().unwrap()).sum();
    assert!(sum <= 1.0001);
    assert!(top
        .windows(2)
        .all(|w| w[0]["probability"].as_f64() >= w[1]["probability"].as_f64()));
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let root = tmp("nan");
    cifar(&root, 16);
    let ck = root.join("good.safetensors");
    let (r, c) = (root.to_str().unwrap(), ck.to_str().unwrap());
    train_checkpoint(&root, &ck);
    let good = std::fs::read(&ck).unwrap();
    let o = vramlab(&[
        "train",
        "simple_cnn",
        "--data",
        "cifar10",
        "--root",
        r,
        "--epochs",
        "3",
        "--batch-size",
        "8",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--resume",
        c,
        "--checkpoint",
        c,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("the loss became") && err.contains("last good checkpoint"),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        good,
        "the good checkpoint is untouched"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn ctrl_c_saves_and_exits_cleanly() {
    let root = tmp("sigint");
    cifar(&root, 400);
    let ck = root.join("int.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args([
            "train",
            "simple_cnn",
            "--data",
            "cifar10",
            "--root",
            root.to_str().unwrap(),
            "--epochs",
            "50",
            "--batch-size",
            "4",
            "--checkpoint",
            ck.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The "training ..." line comes after the Ctrl-C handler is installed.
    let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut err, &mut first).unwrap();
    assert!(first.starts_with("training simple_cnn"), "{first}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut err, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("interrupted: saved to"), "{rest}");
    let resumed = vramlab(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        "cifar10",
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(resumed.status.success());
    let names: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains(".tmp-")),
        "no temporary file left: {names:?}"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn a_checkpoint_of_another_model_is_a_clear_error() {
    let root = tmp("other");
    cifar(&root, 16);
    let ck = root.join("a.safetensors");
    let r = root.to_str().unwrap();
    train_checkpoint(&root, &ck);
    let model = root.join("wider.toml");
    let zoo = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../models/simple_cnn.toml"
    ))
    .unwrap();
    std::fs::write(
        &model,
        zoo.replace("out_channels = 6", "out_channels = 8")
            .replace("in_channels = 6", "in_channels = 8"),
    )
    .unwrap();
    let o = vramlab(&[
        "train",
        model.to_str().unwrap(),
        "--data",
        "cifar10",
        "--root",
        r,
        "--epochs",
        "2",
        "--resume",
        ck.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "`conv1.weight` has shape [6, 3, 5, 5] in the checkpoint but [8, 3, 5, 5] in the model"
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn bench_train_reports_images_per_second() {
    let o = vramlab(&[
        "bench",
        "train",
        "simple_cnn",
        "--batch-size",
        "8",
        "--seconds",
        "0.2",
        "--json",
    ]);
    let v = json(&o);
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(v["batch_size"], 8);
}

#[test]
fn augment_applies_random_crops_and_flips_to_training_images() {
    let root = tmp("augment");
    cifar(&root, 32);
    let r = root.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "simple_cnn",
            "--data",
            "cifar10",
            "--root",
            r,
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--seed",
            "5",
            "--json",
        ];
        args.extend(extra);
        json(&vramlab(&args))["epochs"][0]["train_loss"]
            .as_f64()
            .unwrap()
    };
    let plain = run(&[]);
    let augmented = run(&["--augment"]);
    assert_ne!(plain, augmented);
    assert_eq!(augmented, run(&["--augment"]), "augmentation is seeded");
    std::fs::remove_dir_all(&root).ok();
}
