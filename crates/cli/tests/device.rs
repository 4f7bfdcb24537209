//! `memory` and `fit` with the simulated CUDA caching allocator: allocated, reserved and
//! the nvidia-smi total, each marked modelled or estimated.

use std::process::{Command, Output};

fn vramlab(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vramlab"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
        .output()
        .expect("the binary runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(args: &[&str]) -> serde_json::Value {
    let o = vramlab(args);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_slice(&o.stdout).expect("valid JSON")
}

fn n(v: &serde_json::Value) -> u128 {
    v.as_u64()
        .map(u128::from)
        .or_else(|| v.as_f64().map(|f| f as u128))
        .expect("a number")
}

#[test]
fn memory_shows_allocated_reserved_and_the_nvidia_smi_total_with_what_each_rests_on() {
    let o = vramlab(&["memory", "resnet18", "--batch-size", "16"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    for needle in [
        "caching allocator simulated (PYTORCH_CUDA_ALLOC_CONF: default)",
        "allocated peak",
        "reserved peak",
        "nvidia-smi total",
        "3 (steady state)",
        "allocated: modelled",
        "reserved: modelled",
        "nvidia-smi total: estimated",
        "the cuBLAS and cuBLASLt workspaces (17.25 MiB: one cuBLAS workspace for forward's thread, one for backward's, 1 MiB for cuBLASLt) are included",
        "Estimates: the CUDA context depends on the driver",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in\n{out}");
    }
    // The CPU profile has no allocator to simulate.
    let o = vramlab(&["memory", "simple_cnn", "--profile", "pytorch-cpu"]);
    assert!(!stdout(&o).contains("nvidia-smi"));
}

#[test]
fn memory_json_carries_the_device_section() {
    let r = json(&["memory", "resnet18", "--batch-size", "16", "--json"]);
    let d = &r["device"];
    assert_eq!(d["alloc_conf"], "default");
    assert_eq!(d["steps"].as_array().unwrap().len(), 3);
    // One cuBLAS workspace per thread (forward, backward) and the cuBLASLt one.
    assert_eq!(n(&d["cublas_workspace_bytes"]), 2 * 8_519_680 + (1 << 20));
    // cuDNN's largest workspace, estimated: conv1's weight gradient at batch 16 (input
    // 9,633,792 B + output 51,380,224 B + weight 37,632 B, 14 fp32 partial weights of
    // split-K and 16 B; crates/memory/src/cudnn.rs).
    assert_eq!(
        n(&d["cudnn_workspace_peak_bytes"]),
        9_633_792 + 51_380_224 + 37_632 + 14 * 37_632 + 16
    );
    // No card: the pre-Hopper row of the context table (lazy loading).
    assert_eq!(n(&d["cuda_context_bytes"]), 666 << 20);
    let reserved = n(&d["reserved_peak_bytes"]);
    assert!(reserved >= n(&d["allocated_peak_bytes"]));
    // The workspaces are requests like any other: inside reserved.
    assert_eq!(n(&d["device_total_bytes"]), (666 << 20) + reserved);
    // CUDA before 11.7 loads every kernel: 362 MiB more; on Hopper the measured row.
    let old = json(&[
        "memory",
        "resnet18",
        "--batch-size",
        "16",
        "--json",
        "--cuda-version",
        "11.6",
    ]);
    assert_eq!(n(&old["device"]["cuda_context_bytes"]), (666 + 362) << 20);
    let h100 = json(&[
        "memory",
        "resnet18",
        "--batch-size",
        "16",
        "--json",
        "--gpu",
        "h100",
        "--cuda-version",
        "12.4",
    ]);
    assert_eq!(n(&h100["device"]["cuda_context_bytes"]), 760 << 20);
    let o = vramlab(&["memory", "resnet18", "--cuda-version", "twelve"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--cuda-version: expected MAJOR.MINOR"));
    let r = json(&[
        "memory",
        "resnet18",
        "--batch-size",
        "16",
        "--json",
        "--alloc-conf",
        "expandable_segments:True",
        "--cudnn-workspace",
        "16MiB",
    ]);
    assert_eq!(r["device"]["alloc_conf"], "expandable_segments:True");
    assert_eq!(n(&r["device"]["cudnn_workspace_peak_bytes"]), 16 << 20);
    assert!(n(&r["device"]["reserved_peak_bytes"]) <= reserved);
    let r = json(&[
        "memory",
        "resnet18",
        "--batch-size",
        "16",
        "--json",
        "--cudnn-workspace",
        "0",
    ]);
    assert_eq!(n(&r["device"]["cudnn_workspace_peak_bytes"]), 0);
    assert!(n(&r["device"]["reserved_peak_bytes"]) < reserved);
}

#[test]
fn a_bad_alloc_conf_is_one_clear_message() {
    for (conf, needle) in [
        (
            "max_split_size_mb:4",
            "`max_split_size_mb` must be at least 20",
        ),
        ("expandable_segments:1", "takes True or False"),
        ("garbage_collection_threshold:2", "must be in (0, 1)"),
        ("foo:bar", "unknown option `foo`"),
    ] {
        let o = vramlab(&["memory", "simple_cnn", "--alloc-conf", conf]);
        assert_eq!(o.status.code(), Some(2), "{conf}: {}", stderr(&o));
        assert!(stderr(&o).contains("--alloc-conf"), "{}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn gpus_show_the_total_a_process_sees_and_its_source() {
    let v = json(&["gpus", "--json"]);
    let h100 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "h100")
        .unwrap();
    assert_eq!(n(&h100["usable_bytes"]), 81_559 << 20);
    assert!(h100["usable_source"]
        .as_str()
        .unwrap()
        .contains("nvidia-smi"));
    assert_eq!(h100["compute_capability_major"], 9);
    // What PyTorch sees, measured on a lent H100 (79.18 GiB).
    assert_eq!(n(&h100["pytorch_total_bytes"]), 85_017_493_504);
    assert!(h100["pytorch_total_source"]
        .as_str()
        .unwrap()
        .contains("measured"));
    assert_eq!(n(&h100["cuda_context_bytes"]), 760 << 20);
    let o = vramlab(&["gpus"]);
    let out = stdout(&o);
    assert!(out.contains("nvidia-smi total"), "{out}");
    assert!(out.contains("PyTorch total"), "{out}");
    assert!(out.contains("139.80 GiB"), "{out}");
    assert!(out.contains("79.65 GiB"), "{out}");
    assert!(out.contains("16.00 GiB (nominal)"), "{out}");
}

#[test]
fn fit_decides_by_what_the_allocator_serves_and_shows_what_expandable_segments_buy() {
    let v = json(&[
        "fit",
        "resnet50",
        "--input",
        "3x224x224",
        "--gpu",
        "h100",
        "--json",
    ]);
    let d = &v["device"];
    // The budget rests on what PyTorch sees, less the Hopper context (measured).
    assert_eq!(n(&d["card_total_bytes"]), 85_017_493_504);
    assert_eq!(n(&d["cuda_context_bytes"]), 760 << 20);
    let b = n(&d["max_batch_size"]);
    assert!(b > 0);
    assert!(n(&d["reserved_peak_bytes"]) <= n(&d["allocator_limit_bytes"]));
    assert!(
        d["out_of_memory_above"]["tried_to_allocate_bytes"]
            .as_u64()
            .unwrap()
            > 0
    );
    let o = vramlab(&[
        "fit",
        "resnet50",
        "--input",
        "3x224x224",
        "--gpu",
        "h100",
        "--alloc-conf",
        "expandable_segments:True",
    ]);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.contains("Largest batch found to run"), "{out}");
    assert!(
        out.contains("expandable_segments:True gives batch"),
        "{out}"
    );
    assert!(out.contains("the default settings give"), "{out}");
    assert!(out.contains("Estimates: the CUDA context"), "{out}");
    assert!(out.lines().all(|l| l.chars().count() <= 120), "{out}");
    // The CPU profile has no allocator to simulate.
    let v = json(&[
        "fit",
        "simple_cnn",
        "--memory",
        "1GiB",
        "--profile",
        "pytorch-cpu",
        "--json",
    ]);
    assert!(v.get("device").is_none());
    // Chinese has every sentence.
    let o = vramlab(&["fit", "resnet18", "--gpu", "t4,h100", "--lang", "zh"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("能运行的最大批大小"));
}

#[test]
fn bad_device_options_name_themselves() {
    let o = vramlab(&["memory", "simple_cnn", "--cudnn-workspace", "lots"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--cudnn-workspace"), "{}", stderr(&o));
    let o = vramlab(&["fit", "simple_cnn", "--gpu", "t4", "--cuda-context", "1e3"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).starts_with("error: --cuda-context: `1e3` is not a size"),
        "{}",
        stderr(&o)
    );
    let o = vramlab(&["fit", "simple_cnn", "--gpu", "t4", "--fraction", "0"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--fraction must be in (0, 1]"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn the_cublas_workspace_follows_the_card_or_the_option() {
    let r = json(&[
        "memory",
        "resnet18",
        "--batch-size",
        "8",
        "--json",
        "--cublas-workspace",
        "32MiB",
        "--cudnn-workspace",
        "0",
    ]);
    assert_eq!(
        n(&r["device"]["cublas_workspace_bytes"]),
        (64 << 20) + (1 << 20)
    );
    let base = json(&[
        "memory",
        "resnet18",
        "--batch-size",
        "8",
        "--json",
        "--cudnn-workspace",
        "0",
    ]);
    // Each workspace is one allocation the whole run keeps: 2 x 32 MiB against
    // 2 x 8.125 MiB, less what the smaller ones' 20 MiB segments waste where a block is
    // handed out whole (cuDNN's transient workspaces off, to see these alone).
    let (big, small) = (
        n(&r["device"]["allocated_peak_bytes"]),
        n(&base["device"]["allocated_peak_bytes"]),
    );
    assert!(big > small + (32 << 20), "{big} {small}");
    assert!(big - small <= 2 * ((32 << 20) - 8_519_680), "{big} {small}");
}

#[test]
fn device_trace_lists_every_malloc_and_free_in_order() {
    let r = json(&[
        "memory",
        "simple_cnn",
        "--batch-size",
        "4",
        "--optimizer",
        "sgd",
        "--json",
        "--device-trace",
    ]);
    let t = r["device"]["trace"].as_array().expect("a trace");
    // The parameters first (conv1's weight: 6x3x5x5 floats), in registration order.
    assert_eq!(t[0]["action"], "alloc");
    assert_eq!(n(&t[0]["bytes"]), 6 * 3 * 5 * 5 * 4);
    // Every free names the block of an earlier alloc of the same size (as the address
    // does in PyTorch's trace); what is left at the end is what the run keeps (weights,
    // batch, workspaces, the last loss).
    let mut live: std::collections::HashMap<u128, u128> = Default::default();
    let mut transient = 0;
    for (i, e) in t.iter().enumerate() {
        let (bytes, block) = (n(&e["bytes"]), n(&e["block"]));
        match e["action"].as_str().unwrap() {
            "alloc" => assert!(live.insert(block, bytes).is_none(), "block {block} twice"),
            "free" => {
                assert_eq!(live.remove(&block), Some(bytes), "event {i}");
                // cuDNN's workspaces: freed right after their alloc.
                if t[i - 1]["action"] == "alloc" && n(&t[i - 1]["block"]) == block {
                    transient += 1;
                }
            }
            a => panic!("unknown action {a}"),
        }
    }
    // Two cuBLAS workspaces (forward's thread and backward's) and the cuBLASLt one.
    assert_eq!(live.values().filter(|&&b| b == 8_519_680).count(), 2);
    assert_eq!(live.values().filter(|&&b| b == 1 << 20).count(), 1);
    // Each step: conv1's weight-gradient workspace (its forward over 3 x 5 x 5 inputs
    // takes none, its input needs no gradient), conv2's forward, input-gradient and
    // weight-gradient ones; three steps.
    assert_eq!(transient, 3 * 4);
    // Without --json there is nowhere to put it: one line, exit 2.
    let o = vramlab(&["memory", "simple_cnn", "--device-trace"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--device-trace is part of the JSON"),
        "{}",
        stderr(&o)
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn memory_on_a_card_uses_its_workspaces_and_context_and_says_where_it_fails() {
    // Hopper: two 32 MiB cuBLAS workspaces and the 1 MiB cuBLASLt one; the measured
    // 760 MiB context; the limit is what PyTorch sees on an H100.
    let r = json(&[
        "memory",
        "resnet50",
        "--batch-size",
        "32",
        "--gpu",
        "h100",
        "--json",
    ]);
    let d = &r["device"];
    assert_eq!(n(&d["cublas_workspace_bytes"]), (64 << 20) + (1 << 20));
    assert_eq!(n(&d["cuda_context_bytes"]), 760 << 20);
    assert_eq!(n(&d["device_limit_bytes"]), 85_017_493_504 - (760 << 20));
    assert!(d["out_of_memory"].is_null());
    let o = vramlab(&["memory", "resnet50", "--batch-size", "32", "--gpu", "h100"]);
    assert!(
        stdout(&o).contains(
            "Fits: the allocator served every request of the 3 steps within a limit of 78.44 GiB."
        ),
        "{}",
        stdout(&o)
    );
    // A batch a T4 cannot hold: the step, phase and layer where the allocator fails.
    let o = vramlab(&["memory", "resnet50", "--batch-size", "512", "--gpu", "t4"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("CUDA out of memory under a limit of 13.91 GiB: step 1, forward"),
        "{out}"
    );
    // Its allocator trace ends with the request that failed, as PyTorch's history does.
    let r = json(&[
        "memory",
        "resnet50",
        "--batch-size",
        "512",
        "--gpu",
        "t4",
        "--json",
        "--device-trace",
    ]);
    let d = &r["device"];
    let last = d["trace"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["action"], "oom");
    assert_eq!(n(&last["bytes"]), n(&d["out_of_memory"]["requested_bytes"]));
    // A card with the CPU profile, or an unknown card: one line, exit 2.
    let o = vramlab(&[
        "memory",
        "resnet50",
        "--gpu",
        "t4",
        "--profile",
        "pytorch-cpu",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("--gpu is for the pytorch-cuda profile"),
        "{}",
        stderr(&o)
    );
    for bad in ["gtx-480", "../t4", "t4!", "titan"] {
        let o = vramlab(&["memory", "resnet50", "--gpu", bad]);
        assert_eq!(o.status.code(), Some(2), "{bad}");
        assert!(stderr(&o).contains(bad), "{}", stderr(&o));
    }
    // fit: a card named twice (an alias included), or accumulation steps it does not search.
    let o = vramlab(&["fit", "simple_cnn", "--gpu", "h100,h100-sxm"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("h100 is listed twice"),
        "{}",
        stderr(&o)
    );
    let o = vramlab(&[
        "fit",
        "simple_cnn",
        "--gpu",
        "t4",
        "--accumulation-steps",
        "2",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--target-batch"), "{}", stderr(&o));
    // The whole card as the budget: the planner's answer is above what the allocator
    // serves, and the output says which to use.
    let o = vramlab(&["fit", "resnet50", "--gpu", "t4", "--fraction", "1"]);
    assert!(stdout(&o).contains("Use 165, not 168"), "{}", stdout(&o));
    // What only a GPU has, asked of a CPU profile or larger than the card: refused.
    for (args, expect) in [
        (
            vec![
                "memory",
                "resnet50",
                "--profile",
                "pytorch-cpu",
                "--cuda-context",
                "1GiB",
            ],
            "--cuda-context is for the pytorch-cuda profile",
        ),
        (
            vec![
                "memory",
                "resnet50",
                "--profile",
                "native",
                "--alloc-conf",
                "expandable_segments:True",
            ],
            "--alloc-conf is for the pytorch-cuda profile",
        ),
        (
            vec![
                "memory",
                "resnet50",
                "--profile",
                "pytorch-cpu",
                "--json",
                "--device-trace",
            ],
            "--device-trace is the simulated CUDA allocator's",
        ),
        (
            vec!["fit", "resnet50", "--gpu", "t4", "--cuda-context", "1TiB"],
            "--cuda-context 1.00 TiB is not less than the card's 14.56 GiB",
        ),
    ] {
        let o = vramlab(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(stderr(&o).contains(expect), "{}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
}
