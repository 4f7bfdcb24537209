//! The pytorch-cuda profile and the caching-allocator simulation against real GPUs:
//! `tools/gpu_check.py` on an NVIDIA H200 and an H100 80GB HBM3 (PyTorch 2.11.0+cu130,
//! cuDNN 9.19, driver 580.159.04), fixtures/gpu/h200-torch2.11.json and
//! h100-torch2.11.json (`--second`). Per case and step, what
//! `torch.cuda.max_memory_allocated()` and `max_memory_reserved()` said, against the
//! plan; and the largest batch that ran under `set_per_process_memory_fraction`.
//!
//! Each case carries the error the planner has today as its bound, so a change that
//! makes any case worse fails here; the targets (allocated within 1 %, reserved
//! within 3 %) are met where the bound says so, and docs/PERFORMANCE.md lists the rest.

use serde_json::Value;
use vramlab_graph::{zoo, ModelOptions, Shaped};
use vramlab_memory::cuda_alloc::AllocConf;
use vramlab_memory::device_fit::{device_fit, DeviceBudget};
use vramlab_memory::{plan, PlanConfig, Precision};

mod common;

fn fixtures() -> [(&'static str, Value); 2] {
    let parse = |text: &str| serde_json::from_str(text).expect("the GPU fixture is JSON");
    [
        (
            "h200",
            parse(include_str!("fixtures/gpu/h200-torch2.11.json")),
        ),
        (
            "h100",
            parse(include_str!("fixtures/gpu/h100-torch2.11.json")),
        ),
    ]
}

/// The measured model: a zoo model at its input, or the script's small CNN (which the
/// H200 run measured under the name simple_cnn).
fn graph(card: &str, name: &str, input: &str) -> Shaped {
    let shape: Vec<usize> = input.split('x').map(|d| d.parse().unwrap()).collect();
    if name == "small_cnn" || (card == "h200" && name == "simple_cnn") {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/gpu/small_cnn.toml"
        );
        let opts = ModelOptions::default();
        return vramlab_graph::load(path, &opts).unwrap().infer().unwrap();
    }
    let opts = ModelOptions {
        num_classes: None,
        input_shape: Some(shape),
    };
    zoo::build(name, &opts).unwrap().infer().unwrap()
}

fn config(batch: u64, opt: &str, precision: &str, conf: Option<&str>) -> PlanConfig {
    let mut cfg = PlanConfig::new(batch);
    cfg.optimizer = common::optimizer(opt);
    cfg.precision = Precision::parse(precision).unwrap();
    // Hopper: PyTorch's cuBLAS workspace is 32 MiB.
    cfg.cublas_workspace_bytes = vramlab_memory::cublas_workspace_bytes(9);
    if let Some(c) = conf {
        cfg.alloc_conf = AllocConf::parse(c).unwrap();
    }
    cfg
}

/// (card, case, allocated bound %, reserved bound %): the planner's error today,
/// rounded up. Since cuDNN's workspaces are estimated per convolution
/// (`vramlab_memory::cudnn`), 22 cases of 25 are within 1 % allocated (18 before) and 17
/// within 3 % reserved (15 before; resnet18 -21.8 % -> -7.3 %, max_split_size_mb -19.0 %
/// -> -3.6 %, resnet50 -5.9 % -> -0.3 %; the small CNN at batch 256 went from -12.4 % to
/// +17.3 %, its convolutions' workspaces estimated above what cuDNN took). What is left
/// is the workspaces' exact sizes: with the ones the traces recorded in their place, 23 of
/// 25 are within 3 % reserved (tests/alloc_replay.rs holds the simulator itself exact).
const BOUNDS: &[(&str, &str, f64, f64)] = &[
    ("h200", "simple_cnn 3x32x32 4 sgd fp32", 0.5, 2.3),
    ("h200", "simple_cnn 3x32x32 256 adam fp32", 0.6, 17.3),
    ("h200", "simple_cnn 3x32x32 256 sgd amp-fp16", 0.6, 12.5),
    ("h200", "resnet50 3x224x224 32 sgd fp32", 0.7, 0.4),
    ("h200", "resnet50 3x224x224 64 adam fp32", 0.1, 0.3),
    ("h200", "resnet50 3x224x224 64 adam amp-fp16", 0.2, 3.6),
    ("h200", "vit_b_16 3x224x224 32 adam fp32", 0.1, 0.8),
    ("h200", "vit_b_16 3x224x224 32 adam amp-fp16", 0.3, 0.9),
    (
        "h200",
        "efficientnet_b0 3x224x224 64 sgd_momentum fp32",
        0.1,
        1.0,
    ),
    // Its depthwise convolutions' weight gradients in fp16 take input plus output
    // (measured, not modelled: with it reserved got worse, +8.6 %).
    (
        "h200",
        "efficientnet_b0 3x224x224 64 adam amp-fp16",
        2.8,
        2.2,
    ),
    // ConvNeXt's fp32 7x7 depthwise weight gradients took 164 and 318 MB (not modelled).
    ("h200", "convnext_tiny 3x224x224 32 adam fp32", 0.1, 7.5),
    ("h200", "convnext_tiny 3x224x224 32 sgd amp-bf16", 0.2, 0.3),
    ("h200", "resnet18 3x224x224 64 sgd_momentum fp32", 0.2, 7.3),
    ("h200", "mobilenet_v2 3x224x224 64 adam fp32", 0.1, 0.8),
    ("h200", "vgg11 3x224x224 32 sgd fp32", 0.1, 8.7),
    ("h200", "densenet121 3x224x224 32 adam fp32", 0.1, 3.3),
    (
        "h200",
        "resnet50 3x224x224 64 adam fp32 expandable_segments:True",
        0.1,
        0.4,
    ),
    (
        "h200",
        "resnet50 3x224x224 64 adam fp32 max_split_size_mb:128",
        0.1,
        3.7,
    ),
    ("h100", "simple_cnn 3x32x32 64 adam fp32", 1.3, 0.1),
    // The peak is conv1's weight-gradient workspace: 9.4 MB measured, 4.0 MB estimated.
    (
        "h100",
        "simple_cnn 3x32x32 256 sgd_momentum amp-fp16",
        4.0,
        0.1,
    ),
    // The class-token concatenation held through the encoder's forward (as
    // VisionTransformer.forward's local `x` holds it) moved the reserved figure from
    // -0.65 % to -1.00 %: the peak allocated is unchanged.
    ("h100", "vit_b_16 3x224x224 64 adam fp32", 0.1, 0.7),
    ("h100", "resnet50 3x224x224 32 sgd fp32", 0.7, 0.4),
    ("h100", "swin_t 3x224x224 32 adam fp32", 0.1, 0.3),
    ("h100", "swin_t 3x224x224 32 adamw amp-bf16", 0.2, 2.1),
    ("h100", "maxvit_t 3x224x224 16 adam fp32", 0.7, 1.3),
];

fn pct(planned: u128, measured: u128) -> f64 {
    100.0 * (planned as f64 - measured as f64) / measured as f64
}

#[test]
fn allocated_and_reserved_per_step_stay_within_each_cases_bound() {
    let mut report = String::new();
    let mut worse = Vec::new();
    let mut seen = 0;
    for (card, fx) in fixtures() {
        for c in fx["cases"].as_array().unwrap() {
            let case: Vec<String> = c["case"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                .collect();
            let label = case.join(" ");
            let &(_, _, a_bound, r_bound) = BOUNDS
                .iter()
                .find(|b| b.0 == card && b.1 == label)
                .unwrap_or_else(|| panic!("no bound for {card} {label}"));
            seen += 1;
            let g = graph(card, &case[0], &case[1]);
            let cfg = config(
                case[2].parse().unwrap(),
                &case[3],
                &case[4],
                case.get(5).map(String::as_str),
            );
            let r = plan(&g, &cfg).unwrap();
            let d = r.device.unwrap();
            let steps = c["measured"]["ok"]["steps"].as_array().unwrap();
            for (i, m) in steps.iter().enumerate() {
                let (ma, mr) = (
                    m["allocated"].as_u64().unwrap() as u128,
                    m["reserved"].as_u64().unwrap() as u128,
                );
                let (ea, er) = (
                    pct(d.steps[i].allocated_peak_bytes, ma),
                    pct(d.steps[i].reserved_peak_bytes, mr),
                );
                report.push_str(&format!(
                    "{card} {label:<58} step {} allocated {ea:+6.2} % reserved {er:+6.2} %\n",
                    i + 1
                ));
                if ea.abs() > a_bound || er.abs() > r_bound {
                    worse.push(format!(
                        "{card} {label} step {}: {ea:+.2} % / {er:+.2} %",
                        i + 1
                    ));
                }
            }
        }
    }
    assert_eq!(seen, BOUNDS.len());
    println!("{report}");
    assert!(worse.is_empty(), "past the bound: {worse:#?}\n{report}");
}

#[test]
fn the_largest_batch_under_a_memory_fraction_is_the_one_that_ran() {
    let mut n = 0;
    for (card, fx) in fixtures() {
        for b in fx["boundaries"].as_array().unwrap() {
            let spec = b["spec"].as_array().unwrap();
            let s = |k: usize| spec[k].as_str().unwrap();
            let (model, input, opt, precision) = (s(0), s(1), s(2), s(3));
            let fraction = spec[4].as_f64().unwrap();
            let g = graph(card, model, input);
            let budget = DeviceBudget {
                // What PyTorch saw as the device's total (cudaMemGetInfo), which the
                // fraction is taken of.
                card_total_bytes: b["total_memory"].as_u64().unwrap() as u128,
                card_total_source: format!("the {card} measured"),
                fraction,
            };
            let fit = device_fit(&g, &config(1, opt, precision, None), &budget).unwrap();
            let ran = b["largest_that_runs"].as_u64().unwrap();
            let failed = b["smallest_that_fails"].as_u64().unwrap();
            let predicted = fit.max_batch_size.unwrap();
            println!(
                "{card} {model} {precision}: predicted {predicted}, ran {ran}, failed {failed}"
            );
            // predicted/ran/failed: 114/114/115 (H200 resnet50), 128/126/130 (H200
            // vit_b_16, 127 to 129 untried; 125 before autocast cast the input after the
            // weight), 62/63/64 (H100 vit_b_16), 128/129/130 (H100 convnext_tiny; 130,
            // one over, before cuDNN's workspaces were estimated), 91/92/93 (H100
            // efficientnet_b0).
            // The real boundary lies in [ran, failed - 1] (batches in between untried):
            // the prediction at most one below it and never at a batch that failed.
            assert!(
                predicted + 1 >= ran && predicted < failed,
                "{card} {model}: {predicted}"
            );
            if (card, model) == ("h200", "resnet50") {
                // Exact: the largest that ran, and one more failed.
                assert_eq!((predicted, failed), (ran, ran + 1), "{card} {model}");
            }
            n += 1;
        }
    }
    assert_eq!(n, 5);
}
