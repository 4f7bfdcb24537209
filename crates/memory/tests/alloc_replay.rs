//! The caching-allocator simulation replayed on what PyTorch's allocator really did:
//! every malloc and free `torch.cuda.memory._record_memory_history` recorded in the
//! GPU runs (tools/gpu_check.py on an H200 and an H100, PyTorch 2.11.0+cu130; 25 cases
//! of 3 training steps each, 1,000 to 17,000 events per case:
//! fixtures/gpu/*-traces.json.gz), fed in order to `CachingAllocator`.
//!
//! The simulation must make the same decisions as c10's allocator: a new segment
//! exactly where PyTorch made one (same size, same request), the measured
//! `max_memory_reserved()` and `max_memory_allocated()` to the byte, and at the end the
//! same segments split into the same blocks as `torch.cuda.memory._snapshot()` listed.
//! Each new segment gets the address the driver gave it, because the pools break ties
//! between equal-size blocks by address.
//!
//! This holds the simulator apart from the planner: tests/gpu.rs compares the planned
//! trace, whose remaining differences (cuDNN's workspaces) are the planner's.

use std::collections::HashMap;
use std::io::Read;

use serde_json::Value;
use vramlab_memory::cuda_alloc::{AllocConf, CachingAllocator};

/// `ACTIONS` in tools/gpu_check.py.
const ALLOC: u64 = 0;
const FREE_COMPLETED: u64 = 2;
const SEGMENT_ALLOC: u64 = 3;
const SEGMENT_MAP: u64 = 5;

fn fixture(card: &str) -> (Value, Value) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/gpu");
    let gz = std::fs::File::open(format!("{dir}/{card}-torch2.11-traces.json.gz")).unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .unwrap();
    let traces = serde_json::from_str(&text).unwrap();
    let cases = std::fs::read_to_string(format!("{dir}/{card}-torch2.11.json")).unwrap();
    (traces, serde_json::from_str(&cases).unwrap())
}

fn label(case: &Value) -> String {
    case["case"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        .collect::<Vec<_>>()
        .join(" ")
}

struct Replayed {
    alloc: CachingAllocator,
    /// Segments PyTorch made (or pages it mapped into an expandable segment): (index of
    /// the request, bytes).
    real_segments: Vec<(usize, u128)>,
    /// The same of the simulation.
    sim_segments: Vec<(usize, u128)>,
}

fn replay(trace: &[Value], conf: AllocConf) -> Replayed {
    let mut alloc = CachingAllocator::new(conf, None, None);
    let mut live = HashMap::new();
    let (mut real_segments, mut sim_segments) = (Vec::new(), Vec::new());
    let mut requests = 0;
    for e in trace {
        let n = |i: usize| e[i].as_u64().unwrap();
        let (action, address, size) = (n(0), n(1) as u128, n(2) as u128);
        match action {
            SEGMENT_ALLOC => {
                real_segments.push((requests, size));
                alloc.set_next_segment_address(address);
            }
            SEGMENT_MAP => real_segments.push((requests, size)),
            ALLOC => {
                let before = alloc.stats().reserved_bytes.current;
                let block = alloc
                    .malloc(size)
                    .expect("no limit: every request is served");
                let after = alloc.stats().reserved_bytes.current;
                if after > before {
                    sim_segments.push((requests, after - before));
                }
                assert!(live.insert(address, block).is_none(), "{address:#x} twice");
                requests += 1;
            }
            FREE_COMPLETED => alloc.free(live.remove(&address).expect("freed once")),
            // free_requested (the completion follows), segment_free and segment_unmap
            // (none without retries).
            _ => {}
        }
    }
    Replayed {
        alloc,
        real_segments,
        sim_segments,
    }
}

#[test]
fn the_simulation_replays_every_recorded_gpu_trace_to_the_byte() {
    let mut cases = 0;
    for card in ["h200", "h100"] {
        let (traces, fx) = fixture(card);
        for case in fx["cases"].as_array().unwrap() {
            let name = label(case);
            let trace = traces[&name].as_array().unwrap();
            let conf = match case["case"].as_array().unwrap().get(5) {
                Some(c) => AllocConf::parse(c.as_str().unwrap()).unwrap(),
                None => AllocConf::default(),
            };
            let expandable = conf.expandable_segments;
            let r = replay(trace, conf);
            let m = &case["measured"]["ok"];
            let steps = m["steps"].as_array().unwrap();
            let max = |k: &str| steps.iter().map(|s| s[k].as_u64().unwrap()).max().unwrap();
            let stats = r.alloc.stats();
            assert_eq!(
                stats.reserved_bytes.peak,
                max("reserved") as u128,
                "{card} {name}: max_memory_reserved"
            );
            assert_eq!(
                stats.allocated_bytes.peak,
                max("allocated") as u128,
                "{card} {name}: max_memory_allocated"
            );
            assert_eq!(r.sim_segments, r.real_segments, "{card} {name}: segments");
            if !expandable {
                // The final snapshot: every segment's blocks, in address order, with their
                // sizes and whether each is allocated or cached.
                let mut real: Vec<(u128, Vec<(u128, bool)>)> = m["segments"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| {
                        let blocks =
                            s["blocks"].as_array().unwrap().iter().map(|b| {
                                (b[0].as_u64().unwrap() as u128, b[2] == "active_allocated")
                            });
                        (s["size"].as_u64().unwrap() as u128, blocks.collect())
                    })
                    .collect();
                let mut sim: Vec<(u128, Vec<(u128, bool)>)> = r
                    .alloc
                    .segments()
                    .into_iter()
                    .map(|s| (s.size, s.blocks))
                    .collect();
                real.sort();
                sim.sort();
                assert_eq!(sim, real, "{card} {name}: the snapshot's segments");
            }
            cases += 1;
        }
    }
    assert_eq!(cases, 25);
}

/// Without the recorded addresses (the planner's case: new segments at rising
/// addresses), ties between equal-size blocks can break the other way: on this trace,
/// one 100 MiB segment more or less. The recorded addresses are what make the replay
/// exact, so the tie-break rule (size, then address) is exercised.
#[test]
fn equal_size_blocks_are_chosen_by_address() {
    let (traces, fx) = fixture("h200");
    let case = fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| label(c) == "resnet18 3x224x224 64 sgd_momentum fp32")
        .unwrap();
    let trace = traces[&label(case)].as_array().unwrap();
    let without: Vec<Value> = trace
        .iter()
        .filter(|e| e[0].as_u64() != Some(SEGMENT_ALLOC))
        .cloned()
        .collect();
    let measured = case["measured"]["ok"]["steps"][2]["reserved"]
        .as_u64()
        .unwrap() as u128;
    let with = replay(trace, AllocConf::default());
    let without = replay(&without, AllocConf::default());
    assert_eq!(with.alloc.stats().reserved_bytes.peak, measured);
    assert_eq!(
        measured - without.alloc.stats().reserved_bytes.peak,
        100 << 20
    );
}
