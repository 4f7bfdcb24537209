//! The pytorch-cpu profile against real PyTorch 2.15 on modern torchvision classifiers
//! (fixtures/pytorch-cpu-memory-modern.json, a copy of
//! ../shared/reference/pytorch-cpu-memory-modern.json measured with
//! ../shared/oracle/measure.py): step 1 and step 2 peak, phase, and every category at
//! the peak, to the byte.

use serde_json::Value;
use vramlab_memory::plan;

mod common;

fn records() -> Vec<Value> {
    let text = include_str!("fixtures/pytorch-cpu-memory-modern.json");
    serde_json::from_str(text).expect("fixture is JSON")
}

/// Every mismatch of the records of `model`, and how many figures were compared.
fn mismatches(model: &str) -> (Vec<String>, usize) {
    let mut failures = Vec::new();
    let mut checked = 0;
    for rec in records().iter().filter(|r| r["model"] == model) {
        let name = format!("{} b{} {}", rec["model"], rec["batch"], rec["optimizer"]);
        let (g, cfg) = common::zoo_cpu_case(rec);
        let report = plan(&g, &cfg).unwrap();
        assert_eq!(
            report.param_bytes,
            rec["param_bytes"].as_u64().unwrap() as u128,
            "{name}"
        );
        for (label, measured, planned, mphase, pphase) in common::figures(rec, &report) {
            checked += 1;
            if measured != planned || mphase != pphase {
                failures.push(format!(
                    "{name} {label}: measured {measured} ({mphase}), planned {planned} \
                     ({pphase}), diff {}",
                    planned as i128 - measured as i128
                ));
            }
        }
    }
    (failures, checked)
}

fn exact(model: &str) {
    let (failures, checked) = mismatches(model);
    assert!(checked >= 96, "{model}: checked only {checked} figures");
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn efficientnet_b0_is_exact() {
    exact("efficientnet_b0");
}

#[test]
fn densenet121_is_exact() {
    exact("densenet121");
}

#[test]
fn vit_b_16_is_exact() {
    exact("vit_b_16");
}

#[test]
fn convnext_tiny_is_exact() {
    exact("convnext_tiny");
}

/// GoogLeNet and Inception v3 train with their auxiliary heads, loss = main + 0.3 x
/// each auxiliary loss (fixtures/aux_heads_cpu.json, measured by
/// tools/measure_aux_heads.py with the oracle's tracker): step 1 and 2 peaks, phases and
/// the op at the peak.
#[test]
fn auxiliary_heads_train_as_pytorch_does() {
    let recs: Vec<Value> =
        serde_json::from_str(include_str!("fixtures/aux_heads_cpu.json")).unwrap();
    assert_eq!(recs.len(), 3);
    for rec in &recs {
        let (g, cfg) = common::zoo_cpu_case(rec);
        assert!(!g.graph.aux.is_empty());
        let report = plan(&g, &cfg).unwrap();
        for (i, key) in ["step1", "step2"].iter().enumerate() {
            let m = &rec[*key];
            let s = &report.steps[i];
            assert_eq!(
                (s.peak_bytes, s.peak_phase.to_string(), s.peak_op.clone()),
                (
                    m["tracker_peak"].as_u64().unwrap() as u128,
                    m["peak_phase"].as_str().unwrap().to_string(),
                    m["peak_op"].as_str().unwrap().to_string()
                ),
                "{} {:?} {key}",
                rec["model"],
                rec["input_shape"]
            );
        }
    }
}
