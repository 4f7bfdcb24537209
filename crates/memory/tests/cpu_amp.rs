//! `--profile pytorch-cpu --precision amp-bf16` against real PyTorch 2.15's CPU autocast
//! (fixtures/pytorch-cpu-amp-bf16.json: `../shared/oracle/measure.py --amp bf16`, the
//! forward and loss under `torch.autocast("cpu", dtype=torch.bfloat16)`): step 1 and
//! step 2 peak, phase, and every category at the peak, to the byte. The same autocast
//! mechanics the CUDA profile uses (half copies of conv and linear inputs and weights
//! cached for the forward, each parameter's gradient cast back by its own
//! ToCopyBackward0 node after the matmul's node has released what it saved), proven
//! on the CPU where no GPU is at hand.

use serde_json::Value;
use vramlab_graph::{zoo, ModelOptions};
use vramlab_memory::{plan, PlanConfig, Precision, Profile};

mod common;

#[test]
fn cpu_autocast_bf16_is_exact_on_every_record() {
    let records: Vec<Value> =
        serde_json::from_str(include_str!("fixtures/pytorch-cpu-amp-bf16.json")).unwrap();
    assert_eq!(records.len(), 7);
    let mut failures = Vec::new();
    let mut checked = 0;
    for rec in &records {
        assert_eq!(rec["amp"], "bf16");
        let name = format!("{} b{} {}", rec["model"], rec["batch"], rec["optimizer"]);
        let (g, mut cfg) = common::zoo_cpu_case(rec);
        cfg.precision = Precision::AmpBf16;
        let report = plan(&g, &cfg).unwrap();
        for (label, measured, planned, mphase, pphase) in common::figures(rec, &report) {
            checked += 1;
            if measured != planned || mphase != pphase {
                failures.push(format!(
                    "{name} {label}: measured {measured} ({mphase}), planned {planned} ({pphase})"
                ));
            }
        }
    }
    assert!(checked >= 7 * 16, "checked only {checked} figures");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn what_cpu_autocast_does_not_model_is_refused_by_name() {
    let opts = ModelOptions::default();
    let vit = zoo::build("vit_b_16", &opts).unwrap().infer().unwrap();
    let mut cfg = PlanConfig::new(2);
    cfg.profile = Profile::PytorchCpu;
    cfg.precision = Precision::AmpBf16;
    let e = plan(&vit, &cfg).unwrap_err().to_string();
    assert!(
        e.contains("encoder.layers.encoder_layer_0.self_attention"),
        "{e}"
    );
    cfg.precision = Precision::AmpFp16;
    let e = plan(&vit, &cfg).unwrap_err().to_string();
    assert!(e.contains("pytorch-cpu: fp32 or amp-bf16"), "{e}");
}
