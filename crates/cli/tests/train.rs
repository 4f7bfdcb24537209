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

/// The memory `train --json` measured at steps 1 and 2 equals the native plan to the
/// byte: the peak, every category at the peak and after the step.
fn measured_equals_plan(v: &serde_json::Value, label: &str) {
    let (m, p) = (
        &v["memory"]["measured"]["steps"],
        &v["memory"]["planned"]["steps"],
    );
    assert!(m[1]["peak_bytes"].as_u64().unwrap_or(0) > 0, "{label}: {v}");
    for s in 0..2 {
        assert_eq!(m[s]["peak_bytes"], p[s]["peak_bytes"], "{label}");
        assert_eq!(m[s]["at_peak"], p[s]["at_peak"], "{label}");
        assert_eq!(m[s]["after_step"], p[s]["after_step"], "{label}");
    }
}

/// A safetensors file's JSON header and where its data begins.
fn safetensors_header(bytes: &[u8]) -> (serde_json::Value, usize) {
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    (serde_json::from_slice(&bytes[8..8 + len]).unwrap(), 8 + len)
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
    measured_equals_plan(&v, "train");
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

/// A run whose last update diverges (the training loss is taken before each update, so
/// it cannot see it) stops at the test evaluation with exit 2 and writes no checkpoint
/// (it reported the accuracy of NaN logits, exit 0, and saved weights of 1e27); a NaN
/// loss before any checkpoint was written claims none was kept.
#[test]
fn a_divergence_on_the_last_update_is_reported_not_scored() {
    let root = tmp("diverge");
    cifar(&root, 16);
    let ck = root.join("d.safetensors");
    let (r, c) = (root.to_str().unwrap(), ck.to_str().unwrap());
    let run = |steps: &str| {
        vramlab(&[
            "train",
            "simple_cnn",
            "--data",
            "cifar10",
            "--root",
            r,
            "--max-steps",
            steps,
            "--batch-size",
            "8",
            "--optimizer",
            "sgd",
            "--lr",
            "1e30",
            "--checkpoint",
            c,
            "--json",
        ])
    };
    let o = run("1");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("training diverged: the loss on cifar10 test is NaN")
            && err.contains("the epoch's checkpoint was not written"),
        "{err}"
    );
    assert!(!ck.exists());
    let o = run("2");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("the loss became NaN at epoch 1 step 2"),
        "{err}"
    );
    assert!(!err.contains("kept"), "{err}");
    assert!(!ck.exists());
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

/// Runs vramlab, expecting exit 2 and one error line; returns it.
fn refused(args: &[&str]) -> String {
    let o = vramlab(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

/// `train simple_cnn` on the generated data at `root` with these options.
fn train_args<'a>(root: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "train",
        "simple_cnn",
        "--data",
        "cifar10",
        "--root",
        root,
        "--batch-size",
        "8",
        "--threads",
        "1",
    ];
    v.extend_from_slice(extra);
    v
}

fn eval_json(ck: &Path, root: &str) -> serde_json::Value {
    json(&vramlab(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        "cifar10",
        "--root",
        root,
        "--threads",
        "1",
        "--json",
    ]))
}

/// Resuming a run stopped by --max-steps goes on from the step it reached, and ends
/// where the run without a stop ends.
#[test]
fn max_steps_then_resume_continues_from_the_exact_step() {
    let root = tmp("position");
    cifar(&root, 16); // 80 training images: 10 batches of 8
    let r = root.to_str().unwrap();
    let (whole, part) = (
        root.join("whole.safetensors"),
        root.join("part.safetensors"),
    );
    json(&vramlab(&train_args(
        r,
        &["--checkpoint", whole.to_str().unwrap(), "--json"],
    )));
    let first = json(&vramlab(&train_args(
        r,
        &[
            "--max-steps",
            "3",
            "--checkpoint",
            part.to_str().unwrap(),
            "--json",
        ],
    )));
    assert_eq!(first["epochs"][0]["steps"], 3);
    let rest = json(&vramlab(&train_args(
        r,
        &[
            "--resume",
            part.to_str().unwrap(),
            "--checkpoint",
            part.to_str().unwrap(),
            "--epochs",
            "1",
            "--json",
        ],
    )));
    let epochs = rest["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 1, "{rest}");
    assert_eq!(epochs[0]["epoch"], 1);
    assert_eq!(epochs[0]["steps"], 7);
    let (a, b) = (eval_json(&whole, r), eval_json(&part, r));
    assert_eq!(a["loss"], b["loss"], "3 + 7 steps end where 10 steps end");
    assert_eq!(a["accuracy"], b["accuracy"]);
    // The position counts batches of 8: another batch size cannot continue it.
    let mid = root.join("mid.safetensors");
    json(&vramlab(&train_args(
        r,
        &[
            "--max-steps",
            "2",
            "--checkpoint",
            mid.to_str().unwrap(),
            "--json",
        ],
    )));
    let mut args = train_args(r, &["--resume", mid.to_str().unwrap()]);
    args[7] = "16"; // --batch-size
    let err = refused(&args);
    assert!(
        err.contains(
            "stopped 2 batches into epoch 1 with batch size 8; resume it with --batch-size 8"
        ),
        "{err}"
    );
    // Finished: another resume with --epochs 1 has nothing to do, and says so.
    let err = refused(&train_args(
        r,
        &["--resume", part.to_str().unwrap(), "--epochs", "1"],
    ));
    assert!(err.contains("has finished 1 epoch(s)"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

/// --resume continues with the checkpoint's optimizer and its state (centred RMSprop
/// with momentum: three state tensors), and refuses a conflicting --optimizer.
#[test]
fn resume_uses_the_checkpoints_optimizer_and_refuses_another() {
    let root = tmp("resume-optim");
    cifar(&root, 16);
    let r = root.to_str().unwrap();
    let (whole, part) = (
        root.join("whole.safetensors"),
        root.join("part.safetensors"),
    );
    let opt = [
        "--optimizer",
        "rmsprop",
        "--centered",
        "--momentum",
        "0.5",
        "--lr",
        "0.001",
    ];
    let with = |extra: &[&'static str]| {
        let mut v: Vec<&str> = opt.to_vec();
        v.extend_from_slice(extra);
        v
    };
    let mut a = with(&["--json", "--checkpoint"]);
    a.push(whole.to_str().unwrap());
    json(&vramlab(&train_args(r, &a)));
    let mut a = with(&["--max-steps", "4", "--checkpoint"]);
    a.push(part.to_str().unwrap());
    json(&vramlab(&train_args(r, &[a, vec!["--json"]].concat())));
    let resumed = json(&vramlab(&train_args(
        r,
        &[
            "--resume",
            part.to_str().unwrap(),
            "--checkpoint",
            part.to_str().unwrap(),
            "--json",
        ],
    )));
    assert_eq!(
        resumed["optimizer"], "rmsprop (lr 0.001, weight decay 0, momentum 0.5, centered)",
        "{resumed}"
    );
    let loss = resumed["epochs"][0]["train_loss"].as_f64().unwrap();
    assert!(loss.is_finite());
    assert_eq!(eval_json(&whole, r)["loss"], eval_json(&part, r)["loss"]);
    // Another optimizer's state cannot continue this run.
    let mid = root.join("mid.safetensors");
    let mut a = with(&["--max-steps", "2", "--checkpoint"]);
    a.push(mid.to_str().unwrap());
    json(&vramlab(&train_args(r, &[a, vec!["--json"]].concat())));
    let err = refused(&train_args(
        r,
        &["--resume", mid.to_str().unwrap(), "--optimizer", "adam"],
    ));
    assert!(
        err.contains("the checkpoint was trained with rmsprop (lr 0.001")
            && err.contains("centered"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// `eval` of the checkpoint on the data at `root`, and `predict` of `image`.
fn eval_and_predict<'a>(ck: &'a Path, root: &'a str, image: &'a Path) -> [Vec<&'a str>; 2] {
    let ck = ck.to_str().unwrap();
    [
        vec![
            "eval",
            "--checkpoint",
            ck,
            "--data",
            "cifar10",
            "--root",
            root,
        ],
        vec!["predict", "--checkpoint", ck, image.to_str().unwrap()],
    ]
}

/// Rewrites a checkpoint's metadata (the tensors stay).
fn edit_metadata(ck: &Path, edit: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let bytes = std::fs::read(ck).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    edit(header["__metadata__"].as_object_mut().unwrap());
    let mut h = serde_json::to_vec(&header).unwrap();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(ck, out).unwrap();
}

/// A checkpoint's `model` is a zoo name or the model file it carries; a path in its
/// metadata is never opened (`model=/etc/passwd` printed its first line).
#[test]
fn a_checkpoint_never_opens_the_model_path_in_its_metadata() {
    let root = tmp("model-meta");
    cifar(&root, 16);
    let r = root.to_str().unwrap();
    // A model file: the checkpoint carries its text, and works once the file is gone.
    let model = root.join("mine.toml");
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/simple_cnn.toml"),
        &model,
    )
    .unwrap();
    let ck = root.join("m.safetensors");
    json(&vramlab(&[
        "train",
        model.to_str().unwrap(),
        "--data",
        "cifar10",
        "--root",
        r,
        "--max-steps",
        "1",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--json",
    ]));
    std::fs::remove_file(&model).unwrap();
    assert!(eval_json(&ck, r)["accuracy"].as_f64().unwrap() >= 0.0);
    // A path instead of a zoo name, with the model file removed: one clear error.
    let secret = root.join("secret.txt");
    std::fs::write(&secret, "root:x:0:0:do not print me\n").unwrap();
    edit_metadata(&ck, |m| {
        m.remove("model_file");
        m.insert("model".into(), secret.to_str().unwrap().into());
    });
    for args in eval_and_predict(&ck, r, &secret) {
        let err = refused(&args);
        assert!(!err.contains("do not print me"), "{err}");
        assert!(err.contains("which is not a zoo model"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
    // An embedded model too large for this machine (3.7 TB of weights) is refused with
    // the planner's number before anything is allocated.
    edit_metadata(&ck, |m| {
        m.insert(
            "model_file".into(),
            "input = [3, 32, 32]\n[[layers]]\ntype = \"Flatten\"\n[[layers]]\ntype = \"Linear\"\n\
             in_features = 3072\nout_features = 300000000\n[[layers]]\ntype = \"Linear\"\n\
             in_features = 300000000\nout_features = 10\n"
                .into(),
        );
    });
    let err = refused(&eval_and_predict(&ck, r, &secret)[0]);
    assert!(
        err.contains("at its peak (the planner's native profile), more than the"),
        "{err}"
    );
    // A model file text that does not parse is one error naming the checkpoint.
    edit_metadata(&ck, |m| {
        m.insert("model_file".into(), "layers = 3".into());
    });
    let err = refused(&[
        "eval",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        "cifar10",
        "--root",
        r,
    ]);
    assert!(
        err.contains(&format!("{} (its model file)", ck.display())),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// Overwrites the first f32 of a tensor in a checkpoint with NaN.
fn poison(ck: &Path, tensor: &str) {
    let mut bytes = std::fs::read(ck).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let at = 8 + n + header[tensor]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(ck, bytes).unwrap();
}

#[test]
fn nan_weights_and_nan_normalisation_are_refused_never_reported() {
    let root = tmp("nan-weights");
    cifar(&root, 16);
    let r = root.to_str().unwrap();
    let ck = root.join("n.safetensors");
    json(&vramlab(&train_args(
        r,
        &[
            "--max-steps",
            "1",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--json",
        ],
    )));
    poison(&ck, "fc3.bias");
    let img = root.join("x.png");
    image::RgbImage::from_pixel(32, 32, image::Rgb([20, 200, 20]))
        .save(&img)
        .unwrap();
    for args in eval_and_predict(&ck, r, &img) {
        let err = refused(&args);
        assert!(
            err.contains("`fc3.bias` holds a non-finite value (NaN)"),
            "{err}"
        );
    }
    for spec in ["nan,1", "0,0", "0,-1", "inf,1", "0,nan"] {
        let err = refused(&train_args(r, &["--normalize", spec, "--max-steps", "1"]));
        assert!(err.contains(&format!("--normalize `{spec}`")), "{err}");
    }
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn senseless_numbers_are_refused_before_training() {
    let root = tmp("numbers");
    cifar(&root, 16);
    let r = root.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (
            &["--optimizer", "sgd", "--momentum=-5"],
            "--momentum must be 0 or more, got -5",
        ),
        (
            &["--weight-decay=-100"],
            "--weight-decay must be 0 or more, got -100",
        ),
        (&["--lr", "NaN"], "--lr must be positive, got NaN"),
        (&["--lr", "0"], "--lr must be positive, got 0"),
        (
            &["--lr", "1e-320"],
            "--lr 1e-320 is outside float32's range (1.2e-38 to 3.4e38)",
        ),
        (&["--lr", "1e39"], "--lr 1e39 is outside float32's range"),
        (
            &["--weight-decay", "1e39"],
            "--weight-decay 1e39 is outside float32's range",
        ),
        (
            &["--optimizer", "sgd", "--momentum", "1e-50"],
            "--momentum 1e-50 is outside float32's range",
        ),
        (
            &["--max-steps", "0"],
            "--max-steps must be at least 1, got 0",
        ),
        (&["--epochs", "0"], "--epochs must be at least 1, got 0"),
        (&["--threads", "100000"], "--threads 100000: at most"),
        (&["--threads", "0"], "--threads must be at least 1"),
    ];
    for (extra, want) in cases {
        let mut args = train_args(r, extra);
        if extra[0] == "--threads" {
            args.drain(8..10); // the default "--threads 1"
        }
        let err = refused(&args);
        assert!(err.contains(want), "{extra:?}: {err}");
        assert!(!err.contains("epoch 1:"), "nothing trained: {err}");
    }
    // --momentum with Adam: the same words as `memory`.
    let train = refused(&train_args(r, &["--momentum", "0.9"]));
    let memory = refused(&["memory", "simple_cnn", "--momentum", "0.9"]);
    assert_eq!(train, memory);
    assert!(
        train.contains("--momentum applies to sgd and rmsprop, not adam"),
        "{train}"
    );
    let err = refused(&[
        "sweep",
        "simple_cnn",
        "--data",
        "cifar10",
        "--root",
        r,
        "--batch-sizes",
        "8",
        "--samples",
        "0",
    ]);
    assert!(err.contains("--samples must be at least 1, got 0"), "{err}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn sweep_with_zero_epochs_or_a_batch_larger_than_the_data_is_an_error_not_a_panic() {
    let root = tmp("sweep-bad");
    cifar(&root, 16);
    let r = root.to_str().unwrap();
    let sweep = |extra: &[&str]| {
        let mut v = vec!["sweep", "simple_cnn", "--data", "cifar10", "--root", r];
        v.extend_from_slice(extra);
        refused(&v)
    };
    // train takes it and says what happens: one step of the whole set per epoch.
    let mut args = train_args(r, &["--max-steps", "1"]);
    args[7] = "1000"; // --batch-size
    let o = vramlab(&args);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "note: batch 1000 is larger than the 80 training images: each epoch is one step of 80"
        ),
        "{err}"
    );
    let err = sweep(&["--epochs", "0", "--batch-sizes", "8"]);
    assert!(err.contains("--epochs must be at least 1, got 0"), "{err}");
    let err = sweep(&["--batch-sizes", "8,1024", "--samples", "16"]);
    assert!(
        err.contains("batch 1024 is larger than the 80 training images"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// Outputs are checked before any training: an unwritable --checkpoint, a --plot-dir
/// that is a file.
#[test]
fn unwritable_outputs_are_reported_before_the_work() {
    let root = tmp("outputs");
    cifar(&root, 16);
    let r = root.to_str().unwrap();
    let missing = root.join("no/such/dir/c.safetensors");
    let err = refused(&train_args(r, &["--checkpoint", missing.to_str().unwrap()]));
    assert!(err.contains("cannot write the checkpoint"), "{err}");
    assert!(
        !err.contains("training simple_cnn"),
        "nothing trained: {err}"
    );
    let err = refused(&train_args(r, &["--checkpoint", r]));
    assert!(err.contains("it is a folder"), "{err}");
    let file = root.join("plots");
    std::fs::write(&file, "a file").unwrap();
    let err = refused(&[
        "sweep",
        "simple_cnn",
        "--data",
        "cifar10",
        "--root",
        r,
        "--batch-sizes",
        "8",
        "--samples",
        "8",
        "--plot-dir",
        file.to_str().unwrap(),
    ]);
    assert!(
        err.contains("--plot-dir") && err.contains("cannot write plots"),
        "{err}"
    );
    assert!(!err.contains("batch 8:"), "nothing trained: {err}");
    let names: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "no probe left: {names:?}");
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn bench_train_refuses_what_cannot_fit_or_never_ends() {
    // batch x per-sample wrapped to 0 and then aborted on a 2^57-byte allocation.
    let err = refused(&["bench", "train", "simple_cnn", "-b", "18014398509481984"]);
    assert!(err.contains("at batch 18014398509481984"), "{err}");
    let err = refused(&["bench", "train", "simple_cnn", "-b", "100000000"]);
    assert!(
        err.contains("needs") && err.contains("at its peak (the planner's native profile)"),
        "{err}"
    );
    for s in ["inf", "NaN", "0", "-1", "1e9"] {
        let arg = format!("--seconds={s}");
        let err = refused(&["bench", "train", "simple_cnn", &arg]);
        assert!(err.contains("--seconds must be more than 0"), "{s}: {err}");
    }
    let err = refused(&["bench", "train", "simple_cnn", "--threads", "100000"]);
    assert!(err.contains("--threads 100000: at most"), "{err}");
    // Weights that diverge: timing NaN arithmetic was reported as a speed with exit 0.
    let err = refused(&[
        "bench",
        "train",
        "simple_cnn",
        "--optimizer",
        "sgd",
        "--lr",
        "1e30",
        "--seconds",
        "0.1",
    ]);
    assert!(
        err.contains("the loss is NaN at step 2 (the weights diverged with lr 1e30)"),
        "{err}"
    );
}

/// The example model files of the modern families (SiLU, squeeze-and-excitation,
/// stochastic depth; channel slices, concatenation, shuffles, Hardswish; Swin's shifted
/// windows and patch merging; MaxViT's partitions and relative-position attention)
/// train, learn, and measure what the native profile plans.
#[test]
fn the_modern_example_model_files_learn_and_measure_their_plan() {
    let root = tmp("modern-files");
    cifar(&root, 64);
    let r = root.to_str().unwrap();
    for file in [
        "mbconv_tiny.toml",
        "shuffle_tiny.toml",
        "convnext_block.toml",
        "swin_tiny.toml",
        "maxvit_tiny.toml",
    ] {
        let path = format!("{}/../../models/{file}", env!("CARGO_MANIFEST_DIR"));
        let v = json(&vramlab(&[
            "train",
            &path,
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
            "--json",
        ]));
        let epochs = v["epochs"].as_array().unwrap();
        assert!(
            epochs[1]["test_accuracy"].as_f64().unwrap() > 0.6,
            "{file}: {}",
            v["epochs"]
        );
        measured_equals_plan(&v, file);
    }
}

/// `vramlab train` on a model from a .pt2 or .onnx file: the graph it reads trains like the
/// zoo's (same parameter names and initialisation order, so the same seed gives the same
/// losses), and its checkpoint carries the graph, so `eval` needs no file.
#[test]
fn models_from_pt2_and_onnx_files_train_like_the_zoo_model() {
    let root = tmp("files");
    cifar(&root, 32);
    let r = root.to_str().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let pt2 = fixtures.join("crates/pt2/tests/fixtures/simple_cnn_train.pt2");
    let onnx = fixtures.join("crates/onnx/tests/fixtures/simple_cnn_torchscript_train.onnx");
    let run = |model: &str, ck: &Path| {
        json(&vramlab(&[
            "train",
            model,
            "--data",
            "cifar10",
            "--root",
            r,
            "--epochs",
            "1",
            "--batch-size",
            "16",
            "--seed",
            "3",
            "--threads",
            "2",
            "--checkpoint",
            ck.to_str().unwrap(),
            "--json",
        ]))
    };
    let zoo = run("simple_cnn", &root.join("zoo.safetensors"));
    let loss = |v: &serde_json::Value| v["epochs"][0]["train_loss"].as_f64().unwrap();
    for (file, ck) in [(&pt2, "pt2.safetensors"), (&onnx, "onnx.safetensors")] {
        let ck = root.join(ck);
        let v = run(file.to_str().unwrap(), &ck);
        assert_eq!(loss(&v), loss(&zoo), "{}", file.display());
        assert!(loss(&v).is_finite());
        // The checkpoint is enough: the file may be gone.
        let eval = |c: &Path| {
            let mut v = json(&vramlab(&[
                "eval",
                "--checkpoint",
                c.to_str().unwrap(),
                "--data",
                "cifar10",
                "--root",
                r,
                "--json",
            ]));
            v.as_object_mut().unwrap().remove("seconds");
            v
        };
        assert_eq!(eval(&ck), eval(&root.join("zoo.safetensors")));
    }
}

#[test]
fn a_swin_v2_model_file_learns_measures_its_plan_and_checkpoints_its_tables() {
    let root = tmp("swin");
    cifar(&root, 64);
    let r = root.to_str().unwrap();
    // models/swin_tiny.toml with Swin V2's attention (cosine scores, logit scales, the
    // position bias MLP over the coordinates table).
    let v1 = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/swin_tiny.toml");
    let text = std::fs::read_to_string(v1).unwrap().replace(
        "type = \"ShiftedWindowAttention\"",
        "type = \"ShiftedWindowAttentionV2\"",
    );
    let file = root.join("swin_v2_tiny.toml");
    std::fs::write(&file, text).unwrap();
    let ck = root.join("v2.safetensors");
    let v = json(&vramlab(&[
        "train",
        file.to_str().unwrap(),
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
    ]));
    let epochs = v["epochs"].as_array().unwrap();
    assert!(
        epochs[1]["test_accuracy"].as_f64().unwrap() > 0.6,
        "{}",
        v["epochs"]
    );
    measured_equals_plan(&v, "swin_v2_tiny");
    // The checkpoint holds torchvision's buffers by their names, and eval reads them.
    let bytes = std::fs::read(&ck).unwrap();
    let (header, _) = safetensors_header(&bytes);
    let at = "features.1.1.attention.body.attn";
    let coords = &header[format!("{at}.relative_coords_table")];
    assert_eq!(coords["shape"], serde_json::json!([1, 7, 7, 2]), "{at}");
    assert_eq!(
        header[format!("{at}.logit_scale")]["shape"],
        serde_json::json!([2, 1, 1])
    );
    let e = eval_json(&ck, r);
    assert!(e["accuracy"].as_f64().unwrap() > 0.6, "{e}");
}

/// On every instruction-set tier this CPU runs (`VRAMLAB_ISA`), training measures what
/// the native profile plans: the engine's convolution kernel, and so its scratch,
/// depends on the tier (direct, batched columns, plane by plane), and both read the one
/// declaration in the engine's layer file.
#[test]
fn on_every_tier_training_measures_the_native_plan() {
    let root = tmp("tiers");
    cifar(&root, 8);
    let r = root.to_str().unwrap();
    let models = format!("{}/../../models", env!("CARGO_MANIFEST_DIR"));
    let tiers = vramlab_engine::isa::available();
    assert!(
        tiers.len() >= 2,
        "{tiers:?}: the scalar tier and this CPU's"
    );
    for tier in tiers {
        for model in [
            "simple_cnn".to_string(),
            format!("{models}/mbconv_tiny.toml"),
            format!("{models}/vgg_bn_tiny.toml"),
        ] {
            let o = Command::new(env!("CARGO_BIN_EXE_vramlab"))
                .env(vramlab_engine::isa::ENV, tier.name())
                .args([
                    "train",
                    &model,
                    "--data",
                    "cifar10",
                    "--root",
                    r,
                    "--max-steps",
                    "2",
                    "--batch-size",
                    "5",
                    "--threads",
                    "2",
                    "--json",
                ])
                .output()
                .expect("runs");
            let v = json(&o);
            measured_equals_plan(&v, &format!("{} {model}", tier.name()));
        }
    }
}

/// A Swin's checkpoint holds its relative position index under torchvision's name (as
/// its state_dict does), eval reads it back, and a checkpoint whose index is not
/// torchvision's is refused by name.
#[test]
fn a_swin_checkpoint_keeps_its_relative_position_index() {
    let root = tmp("swin-ck");
    cifar(&root, 8);
    let r = root.to_str().unwrap();
    let model = format!("{}/../../models/swin_tiny.toml", env!("CARGO_MANIFEST_DIR"));
    let ck = root.join("swin.safetensors");
    json(&vramlab(&[
        "train",
        &model,
        "--data",
        "cifar10",
        "--root",
        r,
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--json",
    ]));
    let v = eval_json(&ck, r);
    assert!(v["accuracy"].as_f64().is_some(), "{v}");
    // The index of the first attention, as safetensors stores it: int64 [16 * 16].
    let bytes = std::fs::read(&ck).unwrap();
    let (header, data) = safetensors_header(&bytes);
    let key = "features.1.0.attention.body.attn.relative_position_index";
    let entry = &header[key];
    assert_eq!(entry["dtype"], "I64", "{key} in the checkpoint");
    assert_eq!(entry["shape"], serde_json::json!([256]));
    // Index (0, 0) of a 4x4 window is (dy, dx) = (3, 3): 3 * 7 + 3 = 24.
    let start = data + entry["data_offsets"][0].as_u64().unwrap() as usize;
    let first = i64::from_le_bytes(bytes[start..start + 8].try_into().unwrap());
    assert_eq!(first, 24);
    // Another index is refused.
    let mut bad = bytes.clone();
    bad[start..start + 8].copy_from_slice(&25i64.to_le_bytes());
    let bad_ck = root.join("bad.safetensors");
    std::fs::write(&bad_ck, bad).unwrap();
    let o = vramlab(&[
        "eval",
        "--checkpoint",
        bad_ck.to_str().unwrap(),
        "--data",
        "cifar10",
        "--root",
        r,
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(key) && err.contains("not the relative position index"),
        "{err}"
    );
}

/// A checkpoint scored on data whose classes are others (another dataset, folders named
/// otherwise) is refused: its labels are indices (it printed an accuracy, exit 0).
#[test]
fn eval_refuses_data_of_other_classes() {
    let root = tmp("classes");
    let folder = |name: &str, classes: [&str; 2]| {
        let d = root.join(name);
        for (i, c) in classes.iter().enumerate() {
            std::fs::create_dir_all(d.join(c)).unwrap();
            for j in 0..4u8 {
                image::RgbImage::from_pixel(32, 32, image::Rgb([40 * i as u8, 10 * j, 90]))
                    .save(d.join(c).join(format!("{j}.png")))
                    .unwrap();
            }
        }
        d.to_str().unwrap().to_string()
    };
    let (a, b) = (folder("a", ["cat", "dog"]), folder("b", ["apple", "car"]));
    let ck = root.join("a.safetensors");
    let c = ck.to_str().unwrap();
    json(&vramlab(&[
        "train",
        "simple_cnn",
        "--data",
        &a,
        "--max-steps",
        "1",
        "--batch-size",
        "4",
        "--checkpoint",
        c,
        "--json",
    ]));
    let ok = vramlab(&["eval", "--checkpoint", c, "--data", &a, "--split", "train"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let err = refused(&["eval", "--checkpoint", c, "--data", &b, "--split", "train"]);
    assert!(
        err.contains("trained on the classes cat, dog, but b has apple, car"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// Images of different sizes train with --resize, which train takes as `data info` does
/// (its error said "need --resize", an option train did not have); --plot-dir is made
/// only in a folder that exists (it made every missing folder of the path).
#[test]
fn folders_of_mixed_sizes_train_with_resize_and_plot_dirs_need_their_parent() {
    let root = tmp("mixed");
    for (c, (w, h)) in [("a", (16, 16)), ("b", (40, 20))] {
        std::fs::create_dir_all(root.join("data").join(c)).unwrap();
        for j in 0..2u8 {
            image::RgbImage::from_pixel(w, h, image::Rgb([60 * j, 30, 90]))
                .save(root.join("data").join(c).join(format!("{j}.png")))
                .unwrap();
        }
    }
    let d = root.join("data");
    let d = d.to_str().unwrap();
    let base = [
        "train",
        "simple_cnn",
        "--data",
        d,
        "--max-steps",
        "1",
        "--batch-size",
        "2",
    ];
    let err = refused(&base);
    assert!(
        err.contains("images of different sizes need --resize"),
        "{err}"
    );
    let mut args = base.to_vec();
    args.extend(["--resize", "32x32", "--json"]);
    let v = json(&vramlab(&args));
    assert_eq!(v["stopped"], "stopped after --max-steps 1");
    let cifar_root = root.join("cifar");
    std::fs::create_dir_all(&cifar_root).unwrap();
    cifar(&cifar_root, 16);
    let missing = root.join("missing").join("plots");
    let err = refused(&[
        "sweep",
        "simple_cnn",
        "--data",
        "cifar10",
        "--root",
        cifar_root.to_str().unwrap(),
        "--batch-sizes",
        "4",
        "--samples",
        "8",
        "--plot-dir",
        missing.to_str().unwrap(),
    ]);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!root.join("missing").exists());
    std::fs::remove_dir_all(&root).ok();
}

/// BatchNorm2d(track_running_stats=False) normalises with the batch's statistics in
/// eval mode too, as PyTorch does: the end-of-epoch evaluation failed, reported as
/// "training diverged" (found by a hostile pass, session 11).
#[test]
fn batchnorm_without_running_statistics_evaluates_with_the_batchs() {
    let root = tmp("bn-nostats");
    cifar(&root, 16);
    let r = root.to_str().unwrap();
    let model = format!(
        "{}/tests/fixtures/hostile11/bn_nostats.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let ck = root.join("bn.safetensors");
    let v = json(&vramlab(&[
        "train",
        &model,
        "--data",
        "cifar10",
        "--root",
        r,
        "--batch-size",
        "8",
        "--threads",
        "1",
        "--max-steps",
        "2",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--json",
    ]));
    let acc = v["epochs"][0]["test_accuracy"].as_f64().expect("evaluated");
    assert!((0.0..=1.0).contains(&acc), "{v}");
    assert!(ck.is_file());
    std::fs::remove_dir_all(&root).ok();
}

/// An ONNX file with an auxiliary output trains without it (as the zoo's GoogLeNet
/// does; it failed with a message about a Rust function), and the note says the file's
/// weights are not read (found by a hostile pass, session 11).
#[test]
fn an_onnx_file_with_an_auxiliary_output_trains_from_a_fresh_initialisation() {
    let root = tmp("onnx-aux");
    cifar(&root, 16);
    let r = root.to_str().unwrap();
    let model = format!(
        "{}/tests/fixtures/hostile11/aux_head.onnx",
        env!("CARGO_MANIFEST_DIR")
    );
    let o = vramlab(&[
        "train",
        &model,
        "--data",
        "cifar10",
        "--root",
        r,
        "--batch-size",
        "4",
        "--threads",
        "1",
        "--max-steps",
        "1",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("aux_head.onnx trains here without its 1 auxiliary output(s)"),
        "{err}"
    );
    assert!(
        err.contains(
            "aux_head.onnx's weights are not read: training starts from PyTorch's default"
        ),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}

/// `train` refuses an in-place ReLU over a Tanh's output as `memory` does: PyTorch fails
/// at backward, and the engine trained it with a gradient no PyTorch run gives (found by
/// a hostile pass, session 11).
#[test]
fn train_refuses_an_inplace_activation_over_an_output_backward_reads() {
    let root = tmp("tanh-inplace");
    cifar(&root, 16);
    let model = format!(
        "{}/tests/fixtures/hostile11/tanh_relu_inplace.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let err = refused(&[
        "train",
        &model,
        "--data",
        "cifar10",
        "--root",
        root.to_str().unwrap(),
        "--max-steps",
        "1",
    ]);
    assert!(
        err.contains("tanh_relu_inplace.toml: layer `2`: PyTorch fails here: ReLU(inplace=True)"),
        "{err}"
    );
    std::fs::remove_dir_all(&root).ok();
}
