//! Hostile inputs found after issue 13's list: damaged checkpoints, special files as
//! inputs and outputs, sweep JSON that lies, names that drive the terminal. Each test
//! failed before its fix: a panic, a hang, a replaced device node, or nonsense with exit 0.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn vramlab() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vramlab"))
}

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vramlab-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs to the end or kills it after `secs` (a hang fails the test, not the suite).
fn run(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vramlab");
    let t0 = Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t0.elapsed() > Duration::from_secs(secs) {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {secs} s: {:?}\n{}",
                cmd,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit 2 with one error line that contains every `needle`.
fn refused(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    let last = e.lines().last().unwrap_or_default();
    assert!(last.starts_with("error: "), "{e}");
    for n in needles {
        assert!(last.contains(n), "`{n}` not in: {e}");
    }
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

/// A 20-image IDX dataset of 28x28 noise, labels 0..9, with a test split.
fn tiny_idx(dir: &Path) -> PathBuf {
    let d = dir.join("tiny");
    std::fs::create_dir_all(&d).unwrap();
    let mut x = 12345u32;
    let px: Vec<u8> = (0..20 * 784)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (x >> 16) as u8
        })
        .collect();
    let labels: Vec<u8> = (0..20).map(|i| (i % 10) as u8).collect();
    for split in ["train", "t10k"] {
        std::fs::write(
            d.join(format!("{split}-images-idx3-ubyte")),
            idx(&[20, 28, 28], &px),
        )
        .unwrap();
        std::fs::write(
            d.join(format!("{split}-labels-idx1-ubyte")),
            idx(&[20], &labels),
        )
        .unwrap();
    }
    d
}

/// Trains lenet5 for two steps of batch 4 and returns its checkpoint.
fn checkpoint(dir: &Path, data: &Path) -> PathBuf {
    let ck = dir.join("run.safetensors");
    let o = run(
        vramlab()
            .args(["train", "lenet5", "-b", "4", "--max-steps", "2", "--data"])
            .arg(data)
            .arg("--checkpoint")
            .arg(&ck),
        120,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    ck
}

/// A safetensors file split into its JSON header and its data.
fn open_st(path: &Path) -> (serde_json::Value, Vec<u8>) {
    let b = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    (
        serde_json::from_slice(&b[8..8 + n]).unwrap(),
        b[8 + n..].to_vec(),
    )
}

fn save_st(path: &Path, header: &serde_json::Value, data: &[u8]) {
    let mut h = serde_json::to_vec(header).unwrap();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

/// A copy of `ck` with metadata `key` set to `value`.
fn with_meta(ck: &Path, out: &Path, key: &str, value: &str) -> PathBuf {
    let (mut h, d) = open_st(ck);
    h["__metadata__"][key] = serde_json::Value::String(value.into());
    save_st(out, &h, &d);
    out.to_path_buf()
}

/// A copy of `ck` with every f32 of tensor `name` set to `v`.
fn with_tensor(ck: &Path, out: &Path, name: &str, v: f32) -> PathBuf {
    let (h, mut d) = open_st(ck);
    let offs = &h[name]["data_offsets"];
    let (a, b) = (
        offs[0].as_u64().unwrap() as usize,
        offs[1].as_u64().unwrap() as usize,
    );
    for c in d[a..b].chunks_exact_mut(4) {
        c.copy_from_slice(&v.to_le_bytes());
    }
    save_st(out, &h, &d);
    out.to_path_buf()
}

#[cfg(unix)]
fn mkfifo(p: &Path) -> bool {
    Command::new("mkfifo")
        .arg(p)
        .status()
        .is_ok_and(|s| s.success())
}

#[cfg(unix)]
#[test]
fn a_checkpoint_path_that_is_a_fifo_is_refused_before_training_and_kept() {
    // The same holds for /dev/null: run as root, the atomic save's rename replaced the
    // device node with a regular file.
    use std::os::unix::fs::FileTypeExt;
    let dir = scratch("ckfifo");
    let data = tiny_idx(&dir);
    let fifo = dir.join("c.safetensors");
    if !mkfifo(&fifo) {
        return;
    }
    let o = run(
        vramlab()
            .args(["train", "lenet5", "-b", "4", "--data"])
            .arg(&data)
            .arg("--checkpoint")
            .arg(&fifo),
        60,
    );
    refused(&o, &["c.safetensors", "not a regular file"]);
    assert!(
        !stderr(&o).contains("epoch 1"),
        "trained first: {}",
        stderr(&o)
    );
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
    // Nor is a FIFO read as a checkpoint: opening it blocked until a writer came.
    for args in [
        vec!["train", "lenet5", "-b", "4", "--resume"],
        vec!["eval", "--checkpoint"],
    ] {
        let o = run(
            vramlab().args(&args).arg(&fifo).arg("--data").arg(&data),
            30,
        );
        refused(&o, &["c.safetensors", "not a regular file"]);
    }
    let o = run(
        vramlab()
            .args(["predict", "--checkpoint"])
            .arg(&fifo)
            .arg(dir.join("x.png")),
        30,
    );
    refused(&o, &["c.safetensors", "not a regular file"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn damaged_resume_positions_are_refused_not_a_panic() {
    let dir = scratch("resumepos");
    let data = tiny_idx(&dir);
    let ck = checkpoint(&dir, &data);
    // epoch = u64::MAX panicked with "attempt to add with overflow" (+1 in the advice).
    for (key, value, needle) in [
        ("epoch", "18446744073709551615", "`epoch` in its metadata"),
        ("epoch", "9223372036854775808", "`epoch` in its metadata"),
        ("batch_in_epoch", "18446744073709551615", "`batch_in_epoch`"),
        ("batch_size", "0", "`batch_size` in its metadata is 0"),
    ] {
        let bad = with_meta(&ck, &dir.join(format!("{key}.st")), key, value);
        let o = run(
            vramlab()
                .args(["train", "lenet5", "-b", "4", "--epochs", "2", "--data"])
                .arg(&data)
                .arg("--resume")
                .arg(&bad),
            60,
        );
        refused(&o, &[&format!("{key}.st"), needle]);
        assert!(!stderr(&o).contains("--batch-size 0"), "{}", stderr(&o));
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_negative_running_sum_of_squares_is_refused_on_resume() {
    // Adam's exp_avg_sq < 0: the first resumed step took sqrt of it and the loss was NaN.
    let dir = scratch("negsq");
    let data = tiny_idx(&dir);
    let ck = checkpoint(&dir, &data);
    let bad = with_tensor(&ck, &dir.join("neg.st"), "optimizer.conv1.weight.1", -1.0);
    let o = run(
        vramlab()
            .args(["train", "lenet5", "-b", "4", "--epochs", "2", "--data"])
            .arg(&data)
            .arg("--resume")
            .arg(&bad),
        60,
    );
    refused(
        &o,
        &[
            "neg.st",
            "optimizer.conv1.weight.1",
            "exp_avg_sq",
            "negative",
        ],
    );
    // The first moment may be negative: that file resumes.
    let ok = with_tensor(&ck, &dir.join("m.st"), "optimizer.conv1.weight.0", -1e-3);
    let o = run(
        vramlab()
            .args(["train", "lenet5", "-b", "4", "--epochs", "1", "--data"])
            .arg(&data)
            .arg("--resume")
            .arg(&ok),
        120,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_normalisation_that_overflows_float32_is_refused() {
    // `--normalize 0,1e-40` trained to a loss of 6.8e36 with exit 0; a checkpoint whose
    // std is 1e-44 made eval blame "the model's outputs".
    let dir = scratch("normf32");
    let data = tiny_idx(&dir);
    let o = run(
        vramlab()
            .args([
                "train",
                "lenet5",
                "-b",
                "4",
                "--normalize",
                "0,1e-40",
                "--data",
            ])
            .arg(&data),
        60,
    );
    refused(&o, &["--normalize `0,1e-40`", "1e-40", "float32"]);
    assert!(o.stdout.is_empty());
    let ck = checkpoint(&dir, &data);
    let bad = with_meta(&ck, &dir.join("std.st"), "std", "[1e-44]");
    let o = run(
        vramlab()
            .args(["eval", "--checkpoint"])
            .arg(&bad)
            .arg("--data")
            .arg(&data),
        60,
    );
    refused(&o, &["std.st", "its normalisation", "float32"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_checkpoint_whose_model_does_not_fit_its_shapes_is_named() {
    // "error: layer `fc1`: expected 400 input features" named no file.
    let dir = scratch("ckmodel");
    let data = tiny_idx(&dir);
    let ck = checkpoint(&dir, &data);
    let bad = with_meta(&ck, &dir.join("other.st"), "model", "simple_cnn");
    let o = run(
        vramlab()
            .args(["eval", "--checkpoint"])
            .arg(&bad)
            .arg("--data")
            .arg(&data),
        60,
    );
    refused(&o, &["other.st: its model \"simple_cnn\": layer `fc1`"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_loss_that_is_nan_at_the_first_step_prints_no_empty_table() {
    let dir = scratch("nanfirst");
    let data = tiny_idx(&dir);
    let ck = checkpoint(&dir, &data);
    let bad = with_tensor(&ck, &dir.join("big.st"), "fc3.weight", 3e38);
    let o = run(
        vramlab()
            .args(["train", "lenet5", "-b", "4", "--epochs", "2", "--data"])
            .arg(&data)
            .arg("--resume")
            .arg(&bad),
        60,
    );
    refused(&o, &["the loss became NaN at epoch 1"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.trim().is_empty(), "a header without rows: {out}");
    std::fs::remove_dir_all(&dir).ok();
}

/// One row of a sweep JSON as `vramlab sweep --json` writes it.
fn sweep_row(batch: u64, accuracy: f64, curve: &str) -> String {
    format!(
        r#"{{"batch_size":{batch},"lr":0.001,"steps":5,"samples":20,"seconds":0.2,"images_per_s":100.0,"final_train_loss":2.3,"test_accuracy":{accuracy},"loss_noise":0.0,"measured_peak_bytes":1000,"planned_peak_bytes":1000,"loss_curve":{curve}}}"#
    )
}

fn sweep_json(rows: &[String]) -> String {
    format!(
        r#"{{"model":"lenet5","dataset":"idx","optimizer":"adam","scale_lr":"none","rows":[{}]}}"#,
        rows.join(",")
    )
}

#[test]
fn report_reads_a_sweep_json_only_from_a_regular_file_and_checks_its_numbers() {
    let dir = scratch("sweepjson");
    let out = dir.join("r.html");
    let report = |sweep: &Path| {
        run(
            vramlab()
                .args(["report", "lenet5", "--memory", "8GiB", "--sweep"])
                .arg(sweep)
                .arg("--out")
                .arg(&out),
            60,
        )
    };
    // /dev/zero and a FIFO were read for ever.
    let o = report(Path::new("/dev/zero"));
    refused(&o, &["/dev/zero", "not a regular file"]);
    #[cfg(unix)]
    {
        let fifo = dir.join("fifo.json");
        if mkfifo(&fifo) {
            refused(&report(&fifo), &["fifo.json", "not a regular file"]);
        }
    }
    // Each of these made a report with exit 0.
    let good = "[[4,2.3],[8,2.2]]";
    let cases = [
        (
            sweep_json(&[sweep_row(4, 2.0, good)]),
            "rows[0].test_accuracy: expected 0 to 1, got 2",
        ),
        (
            sweep_json(&[sweep_row(0, 0.5, good)]),
            "rows[0].batch_size: expected 1 or more, got 0",
        ),
        (
            sweep_json(&[sweep_row(4, 0.5, good), sweep_row(4, 0.5, good)]),
            "rows[1].batch_size: batch 4 appears twice",
        ),
        (sweep_json(&[]), "`rows` is empty"),
        (
            sweep_json(&[sweep_row(4, 0.5, "[[8,2.3],[4,2.2]]")]),
            "rows[0].loss_curve[1]: samples seen must increase, got 4 after 8",
        ),
        (
            sweep_json(&[sweep_row(4, 0.5, "[[4,1e300]]")]),
            // Beyond f32 (the curve's type): refused while reading (serde_json's exact
            // float parsing), before the finite-number check.
            "number out of range",
        ),
        (
            sweep_json(&[sweep_row(4, 0.5, good).replace("100.0", "-5.0")]),
            "rows[0].images_per_s: expected a finite number of 0 or more, got -5",
        ),
        (
            sweep_json(
                &(1..=65)
                    .map(|b| sweep_row(b, 0.5, good))
                    .collect::<Vec<_>>(),
            ),
            "65 rows: a sweep has at most 64 batch sizes",
        ),
    ];
    for (i, (text, needle)) in cases.iter().enumerate() {
        let f = dir.join(format!("s{i}.json"));
        std::fs::write(&f, text).unwrap();
        let o = report(&f);
        refused(&o, &[&format!("s{i}.json"), needle]);
        assert!(!out.exists(), "case {i} wrote the report");
    }
    // The sweep's own output still reads.
    let f = dir.join("ok.json");
    std::fs::write(
        &f,
        sweep_json(&[sweep_row(4, 0.5, good), sweep_row(8, 0.25, good)]),
    )
    .unwrap();
    let o = report(&f);
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_sweep_refuses_a_batch_size_given_twice_or_too_many() {
    let dir = scratch("sweepdup");
    let data = tiny_idx(&dir);
    let o = run(
        vramlab()
            .args(["sweep", "lenet5", "--batch-sizes", "4,8,4", "--data"])
            .arg(&data),
        60,
    );
    refused(
        &o,
        &["--batch-sizes: batch 4 is given twice (at positions 1 and 3)"],
    );
    let many: Vec<String> = (1..=65).map(|b| b.to_string()).collect();
    let o = run(
        vramlab()
            .args([
                "sweep",
                "lenet5",
                "--batch-sizes",
                &many.join(","),
                "--data",
            ])
            .arg(&data),
        60,
    );
    refused(&o, &["--batch-sizes: 65 sizes, at most 64"]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_checkpoint_class_named_with_a_terminal_escape_is_refused() {
    // predict printed "\x1b[2J\x1b[31mPWNED": the terminal was cleared.
    let dir = scratch("ckclass");
    let data = tiny_idx(&dir);
    let ck = checkpoint(&dir, &data);
    let classes: Vec<String> = (0..10).map(|i| format!("\u{1b}[2Jc{i}")).collect();
    let bad = with_meta(
        &ck,
        &dir.join("esc.st"),
        "classes",
        &serde_json::to_string(&classes).unwrap(),
    );
    let o = run(
        vramlab()
            .args(["eval", "--checkpoint"])
            .arg(&bad)
            .arg("--data")
            .arg(&data),
        60,
    );
    refused(&o, &["esc.st: `classes` in its metadata", "U+001B"]);
    assert!(!stderr(&o).contains('\u{1b}'), "{:?}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn stats_of_a_constant_channel_say_that_normalize_would_divide_by_zero() {
    // It printed `transforms.Normalize(mean=(0.0275,), std=(0.0000,))` and nothing else.
    let dir = scratch("conststats");
    let d = dir.join("const");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("train-images-idx3-ubyte"), idx(&[4, 2, 2], &[7; 16])).unwrap();
    std::fs::write(d.join("train-labels-idx1-ubyte"), idx(&[4], &[0, 1, 0, 1])).unwrap();
    let o = run(vramlab().args(["data", "stats"]).arg(&d), 60);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("std=(0.0000,)"), "{out}");
    assert!(
        out.contains("note: channel 0 is the same in every pixel (std 0)"),
        "{out}"
    );
    // A std that is small but not zero is printed with its digits, not as 0.0000.
    std::fs::write(
        d.join("train-images-idx3-ubyte"),
        idx(&[4, 100, 100], &{
            let mut v = vec![7u8; 40_000];
            v[0] = 8;
            v
        }),
    )
    .unwrap();
    let o = run(vramlab().args(["data", "stats"]).arg(&d), 60);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("std:  1.961e-5"), "{out}");
    assert!(!out.contains("note:"), "{out}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_model_with_batchnorm_over_1x1_maps_evaluates_and_predicts_after_training() {
    // Training at batch 4 worked; eval and predict refused the checkpoint with PyTorch's
    // training-mode error for a batch of 1 ("Expected more than 1 value per channel").
    let dir = scratch("bn1x1");
    let data = tiny_idx(&dir);
    let model = dir.join("bnhead.toml");
    std::fs::write(
        &model,
        "input = [1, 28, 28]\nlayers = [\n  { type = \"Conv2d\", in_channels = 1, out_channels = 10, kernel_size = 28 },\n  { type = \"BatchNorm2d\", num_features = 10 },\n  { type = \"Flatten\" },\n]\n",
    )
    .unwrap();
    let ck = dir.join("bn.st");
    let o = run(
        vramlab()
            .arg("train")
            .arg(&model)
            .args(["-b", "4", "--data"])
            .arg(&data)
            .arg("--checkpoint")
            .arg(&ck),
        120,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(
        vramlab()
            .args(["eval", "--checkpoint"])
            .arg(&ck)
            .arg("--data")
            .arg(&data),
        60,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("20 images: accuracy"));
    let png = dir.join("x.png");
    image::GrayImage::from_pixel(28, 28, image::Luma([50]))
        .save(&png)
        .unwrap();
    let o = run(
        vramlab()
            .args(["predict", "--checkpoint"])
            .arg(&ck)
            .arg(&png),
        60,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_last_batch_that_batchnorm_cannot_take_is_refused_before_the_epoch() {
    // 21 images at batch 4 leave 1 for the last step: PyTorch's BatchNorm error came
    // after the whole epoch had trained.
    let dir = scratch("lastbatch");
    let data = tiny_idx(&dir);
    let mut x = 7u8;
    let px: Vec<u8> = (0..21 * 784)
        .map(|_| {
            x = x.wrapping_mul(31).wrapping_add(11);
            x
        })
        .collect();
    std::fs::write(
        data.join("train-images-idx3-ubyte"),
        idx(&[21, 28, 28], &px),
    )
    .unwrap();
    let labels: Vec<u8> = (0..21).map(|i| (i % 10) as u8).collect();
    std::fs::write(data.join("train-labels-idx1-ubyte"), idx(&[21], &labels)).unwrap();
    let model = dir.join("bnhead.toml");
    std::fs::write(
        &model,
        "input = [1, 28, 28]\nlayers = [\n  { type = \"Conv2d\", in_channels = 1, out_channels = 10, kernel_size = 28 },\n  { type = \"BatchNorm2d\", num_features = 10 },\n  { type = \"Flatten\" },\n]\n",
    )
    .unwrap();
    let o = run(
        vramlab()
            .arg("train")
            .arg(&model)
            .args(["-b", "4", "--data"])
            .arg(&data),
        120,
    );
    refused(
        &o,
        &[
            "the last batch of each epoch holds 1 of the 21 training images (batch 4)",
            "Expected more than 1 value per channel",
        ],
    );
    assert!(!stderr(&o).contains("epoch 1:"), "{}", stderr(&o));
    let o = run(
        vramlab()
            .arg("train")
            .arg(&model)
            .args(["-b", "5", "--data"])
            .arg(&data),
        120,
    );
    refused(&o, &["holds 1 of the 21"]);
    let o = run(
        vramlab()
            .arg("train")
            .arg(&model)
            .args(["-b", "2", "--data"])
            .arg(&data),
        120,
    );
    refused(&o, &["holds 1 of the 21"]);
    let o = run(
        vramlab()
            .arg("train")
            .arg(&model)
            .args(["-b", "3", "--data"])
            .arg(&data),
        120,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // A sweep checks every batch size before it trains the first.
    let o = run(
        vramlab()
            .arg("sweep")
            .arg(&model)
            .args(["--batch-sizes", "3,4", "--data"])
            .arg(&data),
        120,
    );
    refused(&o, &["holds 1 of the 21 training images (batch 4)"]);
    assert!(!stderr(&o).contains("batch 3:"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn every_plot_a_sweep_writes_is_checked_before_it_trains() {
    // Only speed_vs_batch.png was checked: a folder named loss_curves.svg failed the
    // sweep after all its training.
    let dir = scratch("plotdir");
    let data = tiny_idx(&dir);
    let plots = dir.join("plots");
    std::fs::create_dir_all(plots.join("loss_curves.svg")).unwrap();
    let o = run(
        vramlab()
            .args([
                "sweep",
                "lenet5",
                "--batch-sizes",
                "4",
                "--samples",
                "8",
                "--data",
            ])
            .arg(&data)
            .arg("--plot-dir")
            .arg(&plots),
        120,
    );
    refused(&o, &["--plot-dir", "loss_curves.svg", "it is a folder"]);
    assert!(!stderr(&o).contains("batch 4:"), "{}", stderr(&o));
    std::fs::remove_dir_all(&dir).ok();
}
