//! The planner's pytorch-cpu profile against real PyTorch 2.15 measurements.

use serde_json::Value;
use vramlab_graph::{zoo, ModelOptions};
use vramlab_memory::{plan, PlanConfig, PlanError, Profile};

mod common;

fn records() -> Vec<Value> {
    let text = include_str!("fixtures/pytorch-cpu-memory.json");
    serde_json::from_str(text).expect("fixture is JSON")
}

fn config(rec: &Value) -> (vramlab_graph::Shaped, PlanConfig) {
    let (name, classes) = match rec["model"].as_str().unwrap() {
        "resnet18_c10_32" => ("resnet18", Some(10)),
        "vgg11" => ("vgg11", Some(10)),
        other => (other, None),
    };
    let opts = ModelOptions {
        num_classes: classes,
        input_shape: Some(common::input_shape(rec)),
    };
    let g = zoo::build(name, &opts).unwrap().infer().unwrap();
    let mut cfg = PlanConfig::new(rec["batch"].as_u64().unwrap());
    cfg.profile = Profile::PytorchCpu;
    cfg.optimizer = common::optimizer(rec["optimizer"].as_str().unwrap());
    (g, cfg)
}

/// (label, measured, planned) for every compared figure of one record.
fn compare(rec: &Value) -> Vec<(String, u128, u128, String, String)> {
    let (g, cfg) = config(rec);
    common::figures(rec, &plan(&g, &cfg).unwrap())
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
