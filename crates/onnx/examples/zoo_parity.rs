//! Every torchvision classifier through ONNX, against the zoo: reads the training-mode
//! exports a run of `tools/export_onnx_zoo.py DIR` wrote (weights stripped, with
//! `DIR/zoo_onnx.json`: PyTorch's parameter count of each), maps each file and compares
//! its parameter count with PyTorch's and its planned peaks (pytorch-cpu and pytorch-cuda,
//! both steps, batches 2 and 16) with the zoo model's. Prints one JSON object; the run of
//! record is `docs/measurements/onnx_zoo_parity.json`.
//!
//!     cargo run --release -p vramlab-onnx --example zoo_parity -- DIR > parity.json

use std::path::Path;

use vramlab_graph::{zoo, ModelOptions, Shaped};
use vramlab_memory::{plan, PlanConfig, Profile};
use vramlab_onnx::{load, Options};

fn peaks(s: &Shaped, profile: Profile, batch: u64) -> Result<Vec<u128>, String> {
    let mut cfg = PlanConfig::new(batch);
    cfg.profile = profile;
    let r = plan(s, &cfg).map_err(|e| e.to_string())?;
    Ok(r.steps.iter().map(|st| st.peak_bytes).collect())
}

/// One export against the zoo's graph: parameter counts and planned peaks.
fn compare(
    zoo: &vramlab_graph::Graph,
    file: &Path,
    want: u128,
) -> Result<serde_json::Value, String> {
    let zoo = zoo.infer().map_err(|e| e.to_string())?;
    let l = load(file, &Options::default()).map_err(|e| e.to_string())?;
    let s = l.graph.infer().map_err(|e| e.to_string())?;
    let mut same = s.num_params() == want && zoo.num_params() == want;
    let mut cases = Vec::new();
    for profile in [Profile::PytorchCpu, Profile::PytorchCuda] {
        for batch in [2, 16] {
            let (a, b) = (peaks(&s, profile, batch)?, peaks(&zoo, profile, batch)?);
            same &= a == b;
            cases.push(serde_json::json!({
                "profile": format!("{profile:?}"), "batch": batch,
                "onnx_peaks": a, "zoo_peaks": b, "equal": a == b,
            }));
        }
    }
    Ok(serde_json::json!({
        "file": file.file_name().map(|f| f.to_string_lossy().into_owned()),
        "params_pytorch": want, "params_onnx": s.num_params(),
        "params_zoo": zoo.num_params(), "equal": same,
        "notes": l.notes, "plans": cases,
    }))
}

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: zoo_parity DIR (written by tools/export_onnx_zoo.py)");
        std::process::exit(2);
    };
    let dir = Path::new(&dir);
    let text = std::fs::read_to_string(dir.join("zoo_onnx.json")).unwrap_or_else(|e| {
        eprintln!("{}: {e}", dir.join("zoo_onnx.json").display());
        std::process::exit(2)
    });
    let records: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| {
        eprintln!("zoo_onnx.json: {e}");
        std::process::exit(2)
    });
    let mut out = serde_json::Map::new();
    let (mut equal, mut total) = (0, 0);
    for (name, rec) in records.as_object().into_iter().flatten() {
        let mut r = serde_json::Map::new();
        let Some(file) = rec["file"].as_str().filter(|_| rec.get("error").is_none()) else {
            r.insert("status".into(), "not exported".into());
            r.insert("error".into(), rec["error"].clone());
            out.insert(name.clone(), r.into());
            continue;
        };
        total += 1;
        let input: Vec<usize> = rec["input"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.as_u64())
                    .map(|d| d as usize)
                    .collect()
            })
            .unwrap_or_default();
        let opts = ModelOptions {
            num_classes: None,
            input_shape: Some(input),
        };
        let result = zoo::build(name, &opts).map_err(|e| e.to_string()).map(|g| {
            let want = rec["params"].as_u64().unwrap_or(0) as u128;
            let mut v = compare(&g, &dir.join(file), want)
                .unwrap_or_else(|e| serde_json::json!({ "equal": false, "error": e }));
            // GoogLeNet's auxiliary heads pool 14x14 maps to 4x4, which the TorchScript
            // exporter refuses (dynamo decomposes it): its TorchScript export without
            // them is compared too.
            if let Some(f) = rec["no_aux_file"].as_str() {
                let want = rec["params_no_aux"].as_u64().unwrap_or(0) as u128;
                v["without_aux"] = compare(&g.without_aux(), &dir.join(f), want)
                    .unwrap_or_else(|e| serde_json::json!({ "equal": false, "error": e }));
            }
            v
        });
        let v = match result {
            Ok(v) => {
                if v["equal"] == true {
                    equal += 1;
                }
                v
            }
            Err(e) => serde_json::json!({ "equal": false, "error": e }),
        };
        eprintln!(
            "{name}: {}",
            if v["equal"] == true {
                "equal"
            } else {
                "DIFFERS"
            }
        );
        out.insert(name.clone(), v);
    }
    eprintln!("{equal} of {total} exports plan like the zoo");
    let summary = serde_json::json!({ "equal": equal, "exported": total, "models": out });
    println!(
        "{}",
        serde_json::to_string_pretty(&summary).unwrap_or_default()
    );
}
