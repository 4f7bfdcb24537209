//! The model-file parser never panics: any text gives a graph or an error, and a graph
//! whose shapes infer has sizes the planner can take (every tensor within the cap).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(graph) = vramlab_graph::model_file::parse(text, "fuzz.toml") else {
        return;
    };
    if let Ok(shaped) = graph.infer() {
        for i in 0..shaped.nodes().len() {
            assert!(shaped.numel(i) <= vramlab_graph::MAX_TENSOR_ELEMENTS);
        }
        let _ = shaped.num_params();
        let _ = shaped.macs();
        let _ = shaped.num_classes();
    }
});
