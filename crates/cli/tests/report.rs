//! `vramlab report`: a self-contained HTML file that loads in headless Chromium without
//! console errors (skipped where Chromium is not installed; .ci/run installs it).

use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vramlab-report-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Whether the real Fashion-MNIST is installed; on CI (which installs it) it must be.
fn have_fashion_mnist() -> bool {
    let there = Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file();
    assert!(
        there || std::env::var_os("CI").is_none(),
        "CI must install dataset-fashion-mnist"
    );
    there
}

fn report(dir: &Path, lang: &str) -> (PathBuf, String) {
    let out = dir.join(format!("report-{lang}.html"));
    let mut args = vec![
        "report",
        "lenet5",
        "--gpu",
        "t4",
        "--batch-size",
        "32",
        "--lang",
        lang,
        "--out",
        out.to_str().unwrap(),
    ];
    if have_fashion_mnist() {
        args.extend(["--data", "fashion-mnist"]);
    }
    let o = Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(&out).unwrap();
    (out, html)
}

#[test]
fn the_report_is_one_self_contained_file() {
    let dir = tmp("self");
    let (_, html) = report(&dir, "en");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(!html.contains("<script"), "no scripts");
    assert!(!html.contains("<link"), "no external stylesheets or fonts");
    let external = html.matches("http").count();
    let xmlns = html.matches("http://www.w3.org/2000/svg").count();
    assert_eq!(external, xmlns, "the only URLs are SVG namespaces");
    for needle in [
        "Memory at batch 32",
        "Peak of step 2",
        "Batch size",
        "<svg",
        "conv1",
        "optimizer_state",
        // The memory chart: the tensors alive and the caching allocator's reserve.
        "allocated (tensors alive)",
        "reserved (caching allocator, simulated)",
    ] {
        assert!(html.contains(needle), "missing {needle}");
    }
    if have_fashion_mnist() {
        // lenet5 fits a T4 at a batch far above the 60,000 training images: said so.
        assert!(
            html.contains("more than the dataset&#39;s 60,000 images")
                || html.contains("more than the dataset's 60,000 images"),
            "the report does not say the batch exceeds the dataset"
        );
    }
    let (_, zh) = report(&dir, "zh");
    assert!(zh.contains("lang=\"zh-CN\"") && zh.contains("批大小 32 时的显存"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn the_report_renders_in_headless_chromium_without_console_errors() {
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    let Some(chromium) = chromium else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install chromium (.ci/run does)"
        );
        eprintln!("skipped: Chromium is not installed (apt-get install -y chromium)");
        return;
    };
    let dir = tmp("chromium");
    let (out, _) = report(&dir, "zh");
    let shot = dir.join("shot.png");
    let profile = dir.join("profile");
    let o = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--enable-logging=stderr",
            "--v=0",
            &format!("--user-data-dir={}", profile.display()),
            "--window-size=1200,2400",
            &format!("--screenshot={}", shot.display()),
            &format!("file://{}", out.display()),
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(
        !log.contains("Uncaught") && !log.contains(":CONSOLE("),
        "console output: {log}"
    );
    // The screenshot: the page rendered text and charts, not a blank or error page.
    let img = image::open(&shot).unwrap().to_luma8();
    assert_eq!((img.width(), img.height()), (1200, 2400));
    let dark = img.pixels().filter(|p| p.0[0] < 128).count() as f64 / (1200.0 * 2400.0);
    assert!(dark > 0.01 && dark < 0.6, "dark fraction {dark}");
    let title_band = (20..80)
        .flat_map(|y| (0..600).map(move |x| (x, y)))
        .filter(|&(x, y)| img.get_pixel(x, y).0[0] < 100)
        .count();
    assert!(title_band > 200, "the title is drawn");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn out_dash_writes_the_page_to_stdout_and_no_file() {
    let dir = tmp("dash");
    let o = Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(["report", "simple_cnn", "--memory", "8GiB", "--out", "-"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = String::from_utf8(o.stdout).unwrap();
    assert!(
        html.starts_with("<!DOCTYPE html>"),
        "{}",
        &html[..html.len().min(200)]
    );
    assert!(html.trim_end().ends_with("</html>"));
    assert!(!dir.join("-").exists(), "a file named `-` was written");
}
