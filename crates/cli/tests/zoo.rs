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
fn a_layer_the_engine_does_not_run_is_named_with_the_profiles_that_plan_it() {
    let o = vramlab(&["memory", "swin_t", "--profile", "native"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("vramlab's CPU engine does not run ShiftedWindowAttention yet"),
        "{err}"
    );
    assert!(err.contains("--profile pytorch-cpu"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // The pytorch profiles plan it.
    let o = vramlab(&["memory", "swin_t", "--profile", "pytorch-cpu", "-b", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
