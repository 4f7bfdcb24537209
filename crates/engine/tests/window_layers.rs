//! Swin's and MaxViT's layers in the engine against torchvision's forward values
//! (`tools/window_layers_forward.py`, PyTorch 2.15): shifted windows on a padded map
//! (roll, mask, relative position bias), a shift along one side only, Swin V2's cosine
//! attention and position bias MLP, patch merging of an odd map, window and grid
//! partitions with relative-position attention.

use serde_json::Value;
use vramlab_engine::{Engine, OptimizerConfig};
use vramlab_graph::op::WindowAttention;
use vramlab_graph::{GraphBuilder, Op};

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

fn ops(case: &Value) -> Vec<Op> {
    let name = case["name"].as_str().unwrap();
    let op = &case["op"];
    let n = |k: &str| op[k].as_u64().unwrap() as usize;
    if name.starts_with("swin") {
        let (w, s) = (n("window"), n("shift"));
        return vec![Op::WindowAttention(WindowAttention {
            dim: n("dim"),
            heads: n("heads"),
            window: (w, w),
            shift: (s, s),
            v2: op["v2"].as_bool().unwrap_or(false),
        })];
    }
    if name == "patch_merge" {
        return vec![Op::PatchMerge];
    }
    let (p, grid) = (n("p"), op["grid"].as_bool().unwrap());
    let parts = usizes(&op["parts"]);
    vec![
        Op::Partition { p, grid },
        Op::RelPosAttention {
            dim: n("dim"),
            head_dim: n("head_dim"),
            size: n("size"),
        },
        Op::Departition {
            p,
            grid,
            parts: (parts[0], parts[1]),
        },
    ]
}

#[test]
fn the_engine_computes_torchvisions_values() {
    let text = include_str!("fixtures/window_layers.json");
    let fixture: Value = serde_json::from_str(text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let mut b = GraphBuilder::new(name, usizes(&case["input"]));
        let mut x = b.input();
        for (i, op) in ops(case).into_iter().enumerate() {
            x = b.then(format!("l{i}"), op, x);
        }
        b.then("flat", Op::Flatten, x);
        let g = b.build().infer().unwrap();
        let mut e = Engine::new(g, OptimizerConfig::named("sgd", None).unwrap(), 0, 2).unwrap();
        let ps = case["params"].as_array().unwrap();
        assert_eq!(e.params.len(), ps.len(), "{name}");
        for (p, want) in e.params.iter().zip(ps) {
            let pname = want["name"].as_str().unwrap();
            assert!(p.name.ends_with(pname), "{name}: {} vs {pname}", p.name);
            assert_eq!(p.value.shape, usizes(&want["shape"]), "{name}: {pname}");
            p.value.data_mut().copy_from_slice(&floats(&want["data"]));
        }
        if let Some(coords) = case.get("coords") {
            // Swin V2's coordinates table, as torchvision computes it.
            let mine = e.position_coords[1].as_ref().expect("a V2 layer");
            let worst = mine
                .data()
                .iter()
                .zip(floats(coords))
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-6, "{name}: coordinates off by {worst}");
        }
        let xs = floats(&case["x"]);
        let images = e.batch(xs, 2).unwrap();
        let got = e.predict(&images).unwrap();
        let want = floats(&case["y"]);
        assert_eq!(got.len(), want.len(), "{name}");
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "{name}: off by {worst}");
    }
}
