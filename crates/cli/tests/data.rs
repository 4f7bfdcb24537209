//! `vramlab data ...` and `vramlab bench loader`, on real Fashion-MNIST where installed
//! and on generated files otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

fn vramlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(args)
        .output()
        .expect("runs")
}

fn json(args: &[&str]) -> serde_json::Value {
    let o = vramlab(args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn fashion() -> bool {
    let ok = Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file();
    if !ok {
        eprintln!(
            "skipped: Fashion-MNIST is not installed (apt-get install -y dataset-fashion-mnist)"
        );
    }
    ok
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vramlab-cli-data-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn data_info_and_stats_on_real_fashion_mnist() {
    if !fashion() {
        return;
    }
    let v = json(&["data", "info", "fashion-mnist", "--json"]);
    assert_eq!(v["splits"]["train"]["samples"], 60_000);
    assert_eq!(v["splits"]["test"]["samples"], 10_000);
    assert_eq!(v["shape"], serde_json::json!([1, 28, 28]));
    assert_eq!(v["classes"][9], "Ankle boot");
    assert_eq!(v["bytes_per_image_f32"], 3136);
    let s = json(&[
        "data",
        "stats",
        "fashion-mnist",
        "--split",
        "train",
        "--json",
    ]);
    assert_eq!(format!("{:.4}", s["mean"][0].as_f64().unwrap()), "0.2860");
    assert_eq!(format!("{:.4}", s["std"][0].as_f64().unwrap()), "0.3530");
}

#[test]
fn data_show_writes_the_png_and_names_the_class() {
    if !fashion() {
        return;
    }
    let dir = tmp("show");
    let out = dir.join("boot.png");
    let o = vramlab(&[
        "data",
        "show",
        "fashion-mnist",
        "--index",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("Ankle boot"));
    let img = image::open(&out).unwrap();
    assert_eq!((img.width(), img.height()), (224, 224));
    let grid = dir.join("grid.png");
    let o = vramlab(&[
        "data",
        "show",
        "fashion-mnist",
        "--grid",
        "3",
        "--out",
        grid.to_str().unwrap(),
    ]);
    assert!(o.status.success());
    assert!(image::open(&grid).unwrap().height() >= 10 * 28 * 4);
    let o = vramlab(&[
        "data",
        "show",
        "fashion-mnist",
        "--index",
        "60000",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--index 60000 is out of range"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_loader_reports_images_per_second() {
    if !fashion() {
        return;
    }
    let v = json(&[
        "bench",
        "loader",
        "--data",
        "fashion-mnist",
        "--batch-size",
        "64",
        "--json",
    ]);
    assert_eq!(v["images"], 60_000);
    assert_eq!(v["batches"], 938);
    assert!(v["images_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_data_is_a_clear_error_with_exit_code_2() {
    let dir = tmp("bad");
    std::fs::write(
        dir.join("train-images-idx3-ubyte"),
        b"\x08\x03\x00\x00garbage",
    )
    .unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), b"").unwrap();
    let o = vramlab(&["data", "info", "mnist", "--root", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("train-images-idx3-ubyte: wrong magic number 08 03 00 00"),
        "{e}"
    );
    let o = vramlab(&["data", "info", "cifar10"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs --root DIR"));
    let o = vramlab(&["data", "info", "imagenet"]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown dataset `imagenet`"));
    std::fs::remove_dir_all(&dir).ok();
}

/// The planner's data_batch category and the loader's real batch are the same bytes.
#[test]
fn planned_data_batch_equals_the_loaders_batch() {
    use vramlab_data::cifar::{encode, PIXELS};
    use vramlab_data::loader::{Loader, LoaderConfig};
    use vramlab_data::transform::Pipeline;
    let root = tmp("c10");
    for f in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        let labels: Vec<Vec<u8>> = (0..40).map(|i| vec![(i % 10) as u8]).collect();
        let pixels: Vec<Vec<u8>> = (0..40).map(|i| vec![i as u8; PIXELS]).collect();
        std::fs::write(root.join(f), encode(&labels, &pixels)).unwrap();
    }
    let ds = Arc::new(vramlab_data::open("cifar10", Some(&root), &Default::default()).unwrap());
    let g = vramlab_graph::zoo::build("simple_cnn", &Default::default())
        .unwrap()
        .infer()
        .unwrap();
    for batch in [1usize, 16, 64] {
        let p = Pipeline::normalize(ds.shape, vec![0.5; 3], vec![0.5; 3]).unwrap();
        let cfg = LoaderConfig {
            batch_size: batch,
            ..Default::default()
        };
        let loader = Loader::new(Arc::clone(&ds), "train", p, cfg).unwrap();
        let real = loader.epoch(0).next().unwrap();
        let mut plan_cfg = vramlab_memory::PlanConfig::new(batch as u64);
        plan_cfg.profile = vramlab_memory::Profile::PytorchCpu;
        let report = vramlab_memory::plan(&g, &plan_cfg).unwrap();
        assert_eq!(real.bytes(), report.batch_bytes, "batch {batch}");
        assert_eq!(real.bytes(), report.steps[0].at_peak.data_batch);
    }
    std::fs::remove_dir_all(&root).ok();
}
