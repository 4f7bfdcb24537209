//! The planner's pytorch-cpu profile against real PyTorch 2.15 measurements.

use serde_json::Value;
use vramlab_graph::{zoo, ModelOptions};
use vramlab_memory::{
    plan, Optimizer, OptimizerImpl, OptimizerKind, PlanConfig, PlanError, Profile,
};

fn records() -> Vec<Value> {
    let text = include_str!("fixtures/pytorch-cpu-memory.json");
    serde_json::from_str(text).expect("fixture is JSON")
}

fn config(rec: &Value) -> (vramlab_graph::Shaped, PlanConfig) {
    let model = rec["model"].as_str().unwrap();
    let input: Vec<usize> = rec["input_shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let (name, classes) = match model {
        "resnet18_c10_32" => ("resnet18", Some(10)),
        "vgg11" => ("vgg11", Some(10)),
        other => (other, None),
    };
    let opts = ModelOptions {
        num_classes: classes,
        input_shape: Some(input),
    };
    let g = zoo::build(name, &opts).unwrap().infer().unwrap();
    let mut cfg = PlanConfig::new(rec["batch"].as_u64().unwrap());
    cfg.profile = Profile::PytorchCpu;
    cfg.optimizer = match rec["optimizer"].as_str().unwrap() {
        "sgd" => Optimizer::new(OptimizerKind::Sgd),
        "sgd_momentum" => Optimizer {
            momentum: 0.9,
            ..Optimizer::new(OptimizerKind::Sgd)
        },
        "adam" => Optimizer::new(OptimizerKind::Adam),
        "adam_foreach" => Optimizer {
            implementation: Some(OptimizerImpl::Foreach),
            ..Optimizer::new(OptimizerKind::Adam)
        },
        o => panic!("unknown optimizer {o}"),
    };
    (g, cfg)
}

/// (label, measured, planned) for every compared figure of one record.
fn compare(rec: &Value) -> Vec<(String, u128, u128, String, String)> {
    let (g, cfg) = config(rec);
    let report = plan(&g, &cfg).unwrap();
    let mut rows = Vec::new();
    for (i, key) in ["step1", "step2"].iter().enumerate() {
        let m = &rec[*key];
        let s = &report.steps[i];
        let split = &m["peak_split"];
        let at = &s.at_peak;
        let n = |v: &Value| v.as_u64().unwrap() as u128;
        let phase = m["peak_phase"].as_str().unwrap().to_string();
        let figures = [
            ("peak", n(&m["tracker_peak"]), s.peak_bytes),
            (
                "params+grads",
                n(&split["params_plus_grads"]),
                at.params + at.grads,
            ),
            ("buffers", n(&split["buffers"]), at.buffers),
            ("opt_state", n(&split["opt_state"]), at.optimizer_state),
            ("batch", n(&split["batch"]), at.data_batch),
            (
                "act+temp",
                n(&split["activations_temporaries"]),
                at.activations + at.temporaries,
            ),
            ("after", n(&m["live_after"]), s.after_step.total()),
            ("before", n(&m["live_before"]), s.before_step.total()),
        ];
        for (label, measured, planned) in figures {
            rows.push((
                format!("{key} {label}"),
                measured,
                planned,
                phase.clone(),
                s.peak_phase.to_string(),
            ));
        }
    }
    rows
}

#[test]
fn every_reference_record_is_reproduced_to_the_byte() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for rec in records() {
        let name = format!("{} b{} {}", rec["model"], rec["batch"], rec["optimizer"]);
        if rec.get("error").is_some() {
            continue;
        }
        for (label, measured, planned, mphase, pphase) in compare(&rec) {
            checked += 1;
            if measured != planned || mphase != pphase {
                failures.push(format!(
                    "{name} {label}: measured {measured} ({mphase}), planned {planned} ({pphase}), diff {}",
                    planned as i128 - measured as i128
                ));
            }
        }
    }
    assert!(checked > 400, "checked only {checked} figures");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn resnet18_at_batch_1_fails_as_pytorch_does() {
    for rec in records().iter().filter(|r| r.get("error").is_some()) {
        let (g, cfg) = config(rec);
        let err = plan(&g, &cfg).unwrap_err();
        let expected = rec["error"].as_str().unwrap();
        match err {
            PlanError::Framework { message, .. } => assert_eq!(message, expected),
            other => panic!("expected the BatchNorm error, got {other}"),
        }
    }
}
