//! Every zoo model against torchvision 0.29 itself: the names, order and shapes of its
//! parameters and buffers, from `tests/fixtures/torchvision_tensors.json` (written by
//! `tools/dump_torchvision_tensors.py` from `torchvision.models.get_model(name)`).

use vramlab_graph::{zoo, ModelOptions};

fn fixture() -> serde_json::Value {
    let text = include_str!("fixtures/torchvision_tensors.json");
    serde_json::from_str(text).expect("the fixture is JSON")
}

fn listed(v: &serde_json::Value) -> Vec<(String, Vec<usize>)> {
    v.as_array()
        .expect("a list")
        .iter()
        .map(|t| {
            let name = t[0].as_str().expect("a name").to_string();
            let shape = t[1]
                .as_array()
                .expect("a shape")
                .iter()
                .map(|d| d.as_u64().expect("a size") as usize)
                .collect();
            (name, shape)
        })
        .collect()
}

#[test]
fn every_zoo_model_has_torchvision_parameter_and_buffer_names_and_shapes() {
    let all = fixture();
    let mut checked = 0;
    for &name in zoo::NAMES {
        let Some(tv) = all.get(name) else {
            // The lesson's own models are not torchvision's.
            assert!(
                matches!(name, "simple_cnn" | "lenet5" | "vit_tiny"),
                "{name} is not in the fixture"
            );
            continue;
        };
        let g = zoo::build(name, &ModelOptions::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .infer()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let ours: Vec<(String, Vec<usize>)> = g
            .params()
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect();
        let theirs = listed(&tv["params"]);
        let first_diff = ours.iter().zip(&theirs).position(|(a, b)| a != b);
        assert!(
            ours.len() == theirs.len() && first_diff.is_none(),
            "{name}: {} params vs torchvision's {}; first difference at {:?}: ours {:?}, torchvision {:?}",
            ours.len(),
            theirs.len(),
            first_diff,
            first_diff.map(|i| &ours[i]),
            first_diff.map(|i| &theirs[i]),
        );
        assert_eq!(
            g.num_params(),
            tv["num_params"].as_u64().unwrap() as u128,
            "{name}"
        );
        let ours: Vec<(String, Vec<usize>)> = g
            .buffers()
            .iter()
            .map(|p| (p.name.clone(), p.shape.clone()))
            .collect();
        assert_eq!(ours, listed(&tv["buffers"]), "{name} buffers");
        if let Some(n) = tv.get("params_no_aux") {
            let plain = g.graph.without_aux().infer().unwrap();
            assert_eq!(
                plain.num_params(),
                n.as_u64().unwrap() as u128,
                "{name} without aux"
            );
            assert!(!g.graph.aux.is_empty() && plain.graph.aux.is_empty());
        }
        checked += 1;
    }
    assert!(checked >= 60, "only {checked} models checked");
}

#[test]
fn the_fixture_lists_torchvisions_80_classifiers_and_the_zoo_says_which_it_lacks() {
    let all = fixture();
    let names: Vec<&String> = all.as_object().unwrap().keys().collect();
    assert_eq!(names.len(), 80);
}
