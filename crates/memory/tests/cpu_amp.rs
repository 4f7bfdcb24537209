//! `--profile pytorch-cpu --precision amp-bf16` against real PyTorch 2.15's CPU autocast
//! (fixtures/pytorch-cpu-amp-bf16.json: `../shared/oracle/measure.py --amp bf16`, the
//! forward and loss under `torch.autocast("cpu", dtype=torch.bfloat16)`): step 1 and
//! step 2 peak, phase, and every category at the peak, to the byte. The same autocast
//! mechanics the CUDA profile uses (half copies of conv and linear inputs and weights
//! cached for the forward, each parameter's gradient cast back by its own
//! ToCopyBackward0 node after the matmul's node has released what it saved), proven
//! on the CPU where no GPU is at hand.

use serde_json::Value;
use vramlab_graph::zoo::vit::{transformer, Vit};
use vramlab_graph::{zoo, ModelOptions, Shaped};
use vramlab_memory::{plan, PlanConfig, Precision, Profile};

mod common;

/// Plans every record of a fixture under CPU autocast (bfloat16), the model and
/// settings from `case`, and holds every figure of steps 1 and 2 to the measurement.
fn exact_on_every_record(fixture: &str, count: usize, case: fn(&Value) -> (Shaped, PlanConfig)) {
    let records: Vec<Value> = serde_json::from_str(fixture).unwrap();
    assert_eq!(records.len(), count);
    let mut failures = Vec::new();
    let mut checked = 0;
    for rec in &records {
        assert_eq!(rec["amp"], "bf16");
        let name = format!("{} b{} {}", rec["model"], rec["batch"], rec["optimizer"]);
        let (g, mut cfg) = case(rec);
        assert_eq!(
            g.num_params() as u64,
            rec["num_params"].as_u64().unwrap(),
            "{name}"
        );
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
    assert!(checked >= count * 16, "checked only {checked} figures");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn cpu_autocast_bf16_is_exact_on_every_record() {
    exact_on_every_record(
        include_str!("fixtures/pytorch-cpu-amp-bf16.json"),
        15,
        common::zoo_cpu_case,
    );
}

/// The models of tools/cpu_amp_models.py, or a zoo model.
fn transformer_case(rec: &Value) -> (Shaped, PlanConfig) {
    let small = |patch, layers, heads, hidden, mlp| {
        transformer(
            "vit",
            vec![3, 32, 32],
            Vit {
                patch,
                layers,
                heads,
                hidden,
                mlp,
                classes: 10,
            },
        )
        .infer()
        .unwrap()
    };
    let g = match rec["model"].as_str().unwrap() {
        "tools/cpu_amp_models.py:vit_1x2" => small(8, 1, 2, 64, 128),
        "tools/cpu_amp_models.py:vit_2x4" => small(4, 2, 4, 96, 192),
        "tools/cpu_amp_models.py:maxvit_32" => common::small_maxvit(32, 2, vec![1, 1], 0.1),
        "tools/cpu_amp_models.py:maxvit_64" => common::small_maxvit(64, 4, vec![2, 1], 0.2),
        "tools/cpu_amp_models.py:swin_v1" => common::small_swin(false, common::input_shape(rec)[1]),
        "tools/cpu_amp_models.py:swin_v2" => common::small_swin(true, common::input_shape(rec)[1]),
        _ => return common::zoo_cpu_case(rec),
    };
    let mut cfg = PlanConfig::new(rec["batch"].as_u64().unwrap());
    cfg.profile = Profile::PytorchCpu;
    cfg.optimizer = common::optimizer(rec["optimizer"].as_str().unwrap());
    (g, cfg)
}

#[test]
fn cpu_autocast_bf16_transformers_are_exact() {
    // nn.MultiheadAttention under CPU autocast: the projections' casts, the flash
    // kernel in bfloat16 with an fp32 log-sum-exp, the engine's cast of the residual
    // add's fp32 gradient into the attention's bfloat16 output, and the casts of the
    // parameters' and the input's gradients back to fp32 in the engine's order.
    // MaxViT's relative-position attention: bfloat16 products, the fp32 bias table
    // promoting the scores and softmax to fp32, the probabilities cast back for the
    // second product. vit_b_16 and maxvit_t at batch 1: the class token's `.grad` is
    // a slice keeping the whole concatenation's gradient alive. Swin V1 (3x32x32 and the
    // padded 3x40x40): layer_norm in bfloat16 on the CPU, so the windows' input is not
    // cast; the bias gathered from the fp32 table promotes the scores and softmax.
    // Swin V2 (the same two inputs, and torchvision's swin_v2_t at 3x224x224, batch 1:
    // 286,284,748 B): its bias MLP in bfloat16 (the bias, weights and
    // the fp32 coordinates cast, the coordinates kept for the weight's gradient), the
    // fp32 logit scale promoting the cosine scores and softmax, the bias's fp32
    // gradient sum cast down. (fixtures/pytorch-cpu-amp-bf16-transformers.json,
    // tools/measure_cpu_amp_transformers.sh).
    exact_on_every_record(
        include_str!("fixtures/pytorch-cpu-amp-bf16-transformers.json"),
        16,
        transformer_case,
    );
}

#[test]
fn cpu_autocast_in_half_precision_is_refused() {
    // PyTorch's CPU autocast is used with bfloat16; fp16 is modelled for CUDA only.
    let opts = ModelOptions::default();
    let vit = zoo::build("vit_b_16", &opts).unwrap().infer().unwrap();
    let mut cfg = PlanConfig::new(2);
    cfg.profile = Profile::PytorchCpu;
    cfg.precision = Precision::AmpFp16;
    let e = plan(&vit, &cfg).unwrap_err().to_string();
    assert!(e.contains("pytorch-cpu: fp32 or amp-bf16"), "{e}");
}
