//! The zoo from the command line: every torchvision classifier, auxiliary heads, and
//! PyTorch's own error for an input a model does not take.

use std::process::{Command, Output};

fn vramlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(args)
        .output()
        .expect("runs")
}

#[test]
fn models_lists_every_torchvision_classifier() {
    let o = vramlab(&["models", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let text = v.to_string();
    // A sample across the families; graph/tests/torchvision.rs checks all 80 in full.
    for name in [
        "alexnet",
        "convnext_tiny",
        "densenet201",
        "efficientnet_b7",
        "efficientnet_v2_l",
        "googlenet",
        "inception_v3",
        "maxvit_t",
        "mnasnet1_3",
        "mobilenet_v3_small",
        "regnet_y_128gf",
        "resnext101_64x4d",
        "shufflenet_v2_x2_0",
        "squeezenet1_1",
        "swin_v2_b",
        "vgg19_bn",
        "vit_h_14",
        "wide_resnet101_2",
    ] {
        assert!(text.contains(&format!("\"{name}\"")), "{name}");
    }
}

#[test]
fn auxiliary_heads_are_on_by_default_and_no_aux_drops_them() {
    let params = |args: &[&str]| {
        let o = vramlab(args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["num_params"].as_u64().unwrap()
    };
    // torchvision's counts, with and without aux_logits.
    assert_eq!(
        params(&["memory", "googlenet", "-b", "2", "--json"]),
        13_004_888
    );
    assert_eq!(
        params(&["memory", "googlenet", "-b", "2", "--no-aux", "--json"]),
        6_624_904
    );
    assert_eq!(
        params(&["memory", "inception_v3", "-b", "2", "--no-aux", "--json"]),
        23_834_568
    );
    let o = vramlab(&["memory", "resnet18", "--no-aux"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no auxiliary classifiers"));
}

#[test]
fn an_input_a_vit_does_not_take_is_pytorchs_error() {
    let o = vramlab(&["memory", "vit_b_16", "--input", "3x200x200"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("Wrong image height! Expected 224 but got 200!"),
        "{err}"
    );
    // Any size EfficientNet takes works.
    let o = vramlab(&["memory", "efficientnet_b0", "--input", "3x64x64", "-b", "4"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn the_native_profile_plans_every_family_the_engine_trains() {
    // Swin (V1, V2) and MaxViT, the last families the engine took on, at batch 2, Adam:
    // more than the parameters, their gradients and Adam's two moments.
    for model in ["swin_t", "swin_v2_t", "maxvit_t"] {
        let peak = |profile: &'static str| {
            let args = [
                "memory",
                model,
                "--profile",
                profile,
                "-b",
                "2",
                "--optimizer",
                "adam",
                "--json",
            ];
            let o = vramlab(&args);
            assert!(
                o.status.success(),
                "{model}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            let params = v["param_bytes"].as_u64().unwrap();
            (v["steps"][1]["peak_bytes"].as_u64().unwrap(), params)
        };
        let (native, params) = peak("native");
        assert!(
            native > 4 * params,
            "{model}: {native} for {params} B of parameters"
        );
    }
}

/// A FIFO named like a model is refused at once, never waited on (it would block until
/// a writer came).
#[cfg(unix)]
#[test]
fn a_fifo_named_like_an_onnx_or_pt2_model_is_refused_not_waited_on() {
    let dir = std::env::temp_dir().join(format!("vramlab-fifo-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["m.onnx", "m.pt2"] {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        // Waited on for at most 10 s: a reader that blocks is killed, and fails the test.
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vramlab"))
            .args(["memory", path.to_str().unwrap()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            if start.elapsed().as_secs() >= 10 {
                child.kill().ok();
                child.wait().ok();
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let status = status.unwrap_or_else(|| panic!("{name}: still reading the FIFO after 10 s"));
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        assert_eq!(status.code(), Some(2), "{name}: {err}");
        assert!(err.contains("not a regular file"), "{name}: {err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
