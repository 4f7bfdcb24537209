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
    assert!(
        ok || std::env::var_os("CI").is_none(),
        "CI must install dataset-fashion-mnist (.ci/run does)"
    );
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
    // PNG bytes are not written under another format's name (they were, to x.jpg).
    let jpg = dir.join("x.jpg");
    let o = vramlab(&[
        "data",
        "show",
        "fashion-mnist",
        "--index",
        "0",
        "--out",
        jpg.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("written as PNG; name it .png"));
    assert!(!jpg.exists());
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

fn idx_set(dir: &Path, dims: &[usize], labels: usize) {
    use vramlab_data::idx::encode;
    let n: usize = dims.iter().product();
    std::fs::write(
        dir.join("train-images-idx3-ubyte"),
        encode(dims, &vec![7u8; n]),
    )
    .unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        encode(&[labels], &vec![0u8; labels]),
    )
    .unwrap();
}

fn fails_with(args: &[&str], expected: &str) {
    let o = vramlab(args);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {e}");
    assert!(e.contains(expected), "{args:?}: {e}");
    assert_eq!(e.lines().count(), 1, "one line: {e}");
}

#[test]
fn idx_sets_of_0x0_images_or_no_images_are_clear_errors_in_every_command() {
    let zero = tmp("zero");
    idx_set(&zero, &[5, 0, 0], 5);
    let empty = tmp("empty");
    idx_set(&empty, &[0, 28, 28], 0);
    for (dir, msg) in [
        (
            &zero,
            "train-images-idx3-ubyte: images of 0x0 pixels: height and width must be at least 1",
        ),
        (
            &empty,
            "train-images-idx3-ubyte: no images: the train split is empty",
        ),
    ] {
        let d = dir.to_str().unwrap();
        fails_with(&["data", "stats", d], msg);
        fails_with(&["data", "info", d], msg);
        fails_with(&["bench", "loader", "--data", d], msg);
        fails_with(
            &[
                "sweep",
                "lenet5",
                "--data",
                d,
                "--epochs",
                "1",
                "--batch-sizes",
                "2",
            ],
            msg,
        );
    }
    // The output is checked before the dataset is read.
    fails_with(
        &[
            "data",
            "show",
            zero.to_str().unwrap(),
            "--index",
            "0",
            "--out",
            "/nonexistent-dir/x.png",
        ],
        "--out /nonexistent-dir/x.png: cannot write",
    );
    std::fs::remove_dir_all(&zero).ok();
    std::fs::remove_dir_all(&empty).ok();
}

#[test]
fn sizes_beyond_the_limits_are_errors_not_aborts() {
    let dir = tmp("folder");
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        image::RgbImage::new(8, 6)
            .save(dir.join(class).join("x.png"))
            .unwrap();
    }
    let d = dir.to_str().unwrap();
    fails_with(
        &["data", "info", d, "--resize", "4294967295"],
        "--resize 4294967295: a size must be between 1 and 65536",
    );
    fails_with(
        &["bench", "loader", "--data", d, "--workers", "100000"],
        "100000 loader workers with 4 batches each ahead: at most 256 of each",
    );
    let thin = tmp("thin");
    idx_set(&thin, &[1, 1, 4_000_000], 1);
    let out = thin.join("x.png");
    fails_with(
        &[
            "data",
            "show",
            thin.to_str().unwrap(),
            "--index",
            "0",
            "--scale",
            "64",
            "--out",
            out.to_str().unwrap(),
        ],
        "a 1x4000000 image at --scale 64 would be 64x256000000 pixels (height x width), larger than the limit",
    );
    assert!(!out.exists());
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&thin).ok();
}

#[test]
fn a_report_on_a_folder_of_large_photos_shows_thumbnails() {
    let dir = tmp("photos");
    for class in ["a", "b"] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        image::RgbImage::from_pixel(4000, 3000, image::Rgb([1, 2, 3]))
            .save(dir.join(class).join("photo.jpg"))
            .unwrap();
    }
    let out = dir.join("r.html");
    let o = vramlab(&[
        "report",
        "lenet5",
        "--data",
        dir.to_str().unwrap(),
        "--memory",
        "8GiB",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(
        html.contains("3×3000×4000") || html.contains("3x3000x4000"),
        "shape in the report"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[cfg(unix)]
#[test]
fn a_fifo_named_like_an_image_is_refused_without_hanging() {
    let dir = tmp("fifo");
    std::fs::create_dir_all(dir.join("a")).unwrap();
    image::RgbImage::new(2, 2)
        .save(dir.join("a/0.png"))
        .unwrap();
    let fifo = dir.join("a/1.png");
    if !Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("skipped: no mkfifo");
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(["data", "info", dir.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for(&mut child, 20).expect("no hang");
    assert_eq!(status.code(), Some(2));
    let mut e = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut e).unwrap();
    assert!(
        e.contains("1.png: not a regular file (a FIFO, socket or device)"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Waits up to `secs` for a child; kills it and returns None if it is still running.
fn wait_for(child: &mut std::process::Child, secs: u64) -> Option<std::process::ExitStatus> {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < end {
        if let Some(s) = child.try_wait().unwrap() {
            return Some(s);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// A local server on 127.0.0.1 for one request: `answer` gets the connection.
fn serve(answer: impl FnOnce(std::net::TcpStream) + Send + 'static) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Some(Ok(s)) = listener.incoming().next() {
            answer(s);
        }
    });
    format!("http://{addr}/")
}

fn read_request(s: &mut std::net::TcpStream) {
    let mut req = [0u8; 4096];
    let _ = std::io::Read::read(s, &mut req);
}

fn listing(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `vramlab data fetch mnist` from the mirror `url` (with `extra` options) fails with
/// `expected` within `secs` seconds and leaves nothing in its folder.
fn fetch_fails_cleanly(url: &str, extra: &[&str], expected: &str, secs: u64) {
    let root = tmp("fetch");
    let mut args = vec![
        "data",
        "fetch",
        "mnist",
        "--root",
        root.to_str().unwrap(),
        "--mirror",
        url,
    ];
    args.extend(extra);
    let start = std::time::Instant::now();
    fails_with(&args, expected);
    assert!(start.elapsed() < std::time::Duration::from_secs(secs));
    assert!(listing(&root).is_empty(), "{:?}", listing(&root));
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn fetch_cuts_an_endless_body_and_leaves_nothing() {
    use std::io::Write;
    let url = serve(|mut s| {
        read_request(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
        let chunk = vec![0u8; 1 << 16];
        while s.write_all(&chunk).is_ok() {}
    });
    fetch_fails_cleanly(
        &url,
        &[],
        "bytes expected of train-images-idx3-ubyte.gz; nothing was kept",
        30,
    );
}

#[test]
fn fetch_gives_up_a_silent_server_after_the_timeout() {
    let (_tx, rx) = std::sync::mpsc::channel::<()>();
    let url = serve(move |s| {
        let _ = rx.recv_timeout(std::time::Duration::from_secs(60));
        drop(s);
    });
    fetch_fails_cleanly(&url, &["--timeout", "1"], "nothing for 1 s", 15);
}

/// Ctrl-C, and a SIGTERM or SIGHUP (a job killed, a terminal closed; the partial file
/// stayed behind before), remove the partial download.
#[cfg(unix)]
#[test]
fn ctrl_c_during_fetch_removes_the_partial_file() {
    for signal in ["-INT", "-TERM", "-HUP"] {
        interrupted_fetch_leaves_nothing(signal);
    }
}

#[cfg(unix)]
fn interrupted_fetch_leaves_nothing(signal: &str) {
    use std::io::Write;
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let url = serve(move |mut s| {
        read_request(&mut s);
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 9912422\r\n\r\n");
        let _ = s.write_all(&[0u8; 50_000]);
        let _ = s.flush();
        let _ = rx.recv_timeout(std::time::Duration::from_secs(60));
    });
    let root = tmp(&format!("signal{signal}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args([
            "data",
            "fetch",
            "mnist",
            "--root",
            root.to_str().unwrap(),
            "--mirror",
            &url,
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the partial file, then interrupt.
    let end = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !listing(&root).iter().any(|f| f.contains(".part-")) {
        assert!(std::time::Instant::now() < end, "no partial file appeared");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let killed = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_for(&mut child, 20).expect("exits after the signal");
    drop(tx);
    assert_eq!(status.code(), Some(130), "{signal}");
    assert!(listing(&root).is_empty(), "{signal}: {:?}", listing(&root));
    std::fs::remove_dir_all(&root).ok();
}

#[test]
fn every_option_of_the_data_commands_is_described() {
    for cmd in [
        &["data", "info"][..],
        &["data", "stats"],
        &["data", "show"],
        &["data", "fetch"],
        &["bench", "loader"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = vramlab(&args);
        assert!(o.status.success());
        let help = String::from_utf8_lossy(&o.stdout).into_owned();
        let lines: Vec<&str> = help.lines().collect();
        for (i, l) in lines.iter().enumerate() {
            let t = l.trim_start();
            if !t.starts_with('-') {
                continue;
            }
            // The description follows the option after two spaces, or on the next
            // line (indented, not another option) when the option is long.
            let same_line = t.contains("  ");
            let next = lines.get(i + 1).map(|n| n.trim_start()).unwrap_or("");
            let next_line = !next.is_empty() && !next.starts_with('-');
            assert!(same_line || next_line, "{cmd:?}: `{t}` has no description");
        }
    }
}

/// `data info` on an image folder reads headers, not pixels, and says so; its shape is
/// the one training reads (after --resize and --center-crop); counts take their noun's
/// number.
#[test]
fn data_info_of_a_folder_reads_headers_and_says_so() {
    let dir = tmp("headers");
    std::fs::create_dir_all(dir.join("only")).unwrap();
    image::RgbImage::new(9, 7)
        .save(dir.join("only/a.png"))
        .unwrap();
    let d = dir.to_str().unwrap();
    let o = vramlab(&["data", "info", d, "--resize", "5", "--center-crop", "4"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(text.contains("3x4x4 images, 1 class\n"), "{text}");
    assert!(text.contains("  train: 1 image\n"), "{text}");
    assert!(
        text.contains("(sizes from each image's header, after the preprocessing asked for"),
        "{text}"
    );
    let v = json(&[
        "data",
        "info",
        d,
        "--resize",
        "5",
        "--center-crop",
        "4",
        "--json",
    ]);
    assert_eq!(v["shape"], serde_json::json!([3, 4, 4]));
    assert_eq!(v["decoded"], false);
    assert_eq!(v["bytes_per_image_u8"], 48);
    // What training reads: the same shape, from the decoded pixels.
    let v = json(&[
        "data",
        "stats",
        d,
        "--resize",
        "5",
        "--center-crop",
        "4",
        "--json",
    ]);
    assert_eq!(v["pixels_per_channel"], 16, "{v}");
    assert_eq!(v["mean"].as_array().map(|m| m.len()), Some(3), "{v}");
    std::fs::remove_dir_all(&dir).ok();
}
