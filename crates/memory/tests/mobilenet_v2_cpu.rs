//! mobilenet_v2 under the pytorch-cpu profile against real PyTorch 2.15 on the CPU
//! (fixtures/mobilenet_v2_cpu.json, made by tools/measure_mobilenet_v2_cpu.sh), with a
//! small ReLU6 model (fixtures/relu6_models.py, relu6net.toml), plain and checkpointed.
//!
//! ReLU6 is `hardtanh_` in place there. `hardtanh_` has no derivatives.yaml entry of its
//! own, so autograd uses `hardtanh`'s formula, `hardtanh_backward(grad, self, ...)`; as it
//! reads the input, autograd clones the input before writing over it and keeps the
//! clone until backward. Without that clone the planner was 22 % (batch 1) to 30 %
//! (batch 16) below these records.

use serde_json::Value;
use vramlab_graph::{model_file, zoo, ModelOptions};
use vramlab_memory::{plan, PlanConfig, Profile};

mod common;

fn records() -> Vec<Value> {
    let text = include_str!("fixtures/mobilenet_v2_cpu.json");
    serde_json::from_str(text).expect("fixture is JSON")
}

/// Records of fixtures/relu6_models.py name the model file with the same layers.
fn model_file(name: &str) -> &'static str {
    match name {
        "relu6net.toml" => include_str!("fixtures/relu6net.toml"),
        other => panic!("no model file {other}"),
    }
}

fn config(rec: &Value) -> (vramlab_graph::Shaped, PlanConfig) {
    let input = common::input_shape(rec);
    let g = match rec["vramlab_model"].as_str() {
        Some(file) => {
            let g = model_file::parse(model_file(file), file).unwrap();
            assert_eq!(g.input_shape, input);
            g.infer().unwrap()
        }
        None => {
            assert_eq!(rec["model"], "mobilenet_v2");
            let opts = ModelOptions {
                num_classes: Some(rec["num_classes"].as_u64().unwrap() as usize),
                input_shape: Some(input),
            };
            zoo::build("mobilenet_v2", &opts).unwrap().infer().unwrap()
        }
    };
    assert_eq!(g.num_classes() as u64, rec["num_classes"].as_u64().unwrap());
    let mut cfg = PlanConfig::new(rec["batch"].as_u64().unwrap());
    cfg.profile = Profile::PytorchCpu;
    cfg.checkpoint_segments = rec["checkpoint_segments"].as_u64().unwrap_or(0) as u32;
    cfg.optimizer = common::optimizer(rec["optimizer"].as_str().unwrap());
    (g, cfg)
}

#[test]
fn mobilenet_v2_matches_real_pytorch_cpu_to_the_byte() {
    let recs = records();
    assert!(recs.len() >= 13, "only {} records", recs.len());
    let mut failures = Vec::new();
    for rec in &recs {
        let name = format!(
            "{} {:?} b{} {}",
            rec["model"], rec["input_shape"], rec["batch"], rec["optimizer"]
        );
        let (g, cfg) = config(rec);
        let report = plan(&g, &cfg).unwrap();
        assert_eq!(
            report.param_bytes,
            rec["param_bytes"].as_u64().unwrap() as u128
        );
        for (label, measured, planned, _, _) in common::figures(rec, &report) {
            if measured != planned {
                failures.push(format!(
                    "{name} {label}: measured {measured}, planned {planned}, diff {}",
                    planned as i128 - measured as i128
                ));
            }
        }
        for (i, key) in ["step1", "step2"].iter().enumerate() {
            let (m, s) = (&rec[*key], &report.steps[i]);
            let phase = m["peak_phase"].as_str().unwrap();
            if s.peak_phase.to_string() != phase || s.peak_op != m["peak_op"].as_str().unwrap() {
                failures.push(format!(
                    "{name} {key}: measured peak at {phase} {}, planned {} {}",
                    m["peak_op"], s.peak_phase, s.peak_op
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The clone is autograd's: in inference (no grad) `hardtanh_` writes in place and
/// nothing is copied or kept.
#[test]
fn relu6_in_place_clones_its_input_only_when_training() {
    let opts = ModelOptions {
        num_classes: Some(10),
        input_shape: Some(vec![3, 32, 32]),
    };
    let g = zoo::build("mobilenet_v2", &opts).unwrap().infer().unwrap();
    let mut cfg = PlanConfig::new(2);
    cfg.profile = Profile::PytorchCpu;
    cfg.record_timeline = true;
    let train = plan(&g, &cfg).unwrap();
    let clones = |r: &vramlab_memory::MemoryReport| {
        r.timeline
            .as_ref()
            .unwrap()
            .iter()
            .filter(|p| p.op == "aten.clone.default")
            .count()
    };
    // 35 ReLU6 layers (17 blocks: 16 with an expansion conv, the first without, plus the
    // stem and the last conv), each cloned once per step, two steps.
    assert_eq!(clones(&train), 2 * 35);
    cfg.mode = vramlab_memory::Mode::Inference;
    let infer = plan(&g, &cfg).unwrap();
    assert_eq!(clones(&infer), 0);
}
