//! The ONNX reader never panics: any bytes give a model or an error, and a model that maps
//! to a graph whose shapes infer has sizes the planner can take.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = vramlab_onnx::proto::decode_bytes(data) else {
        return;
    };
    for opts in [
        vramlab_onnx::Options::default(),
        vramlab_onnx::Options {
            inplace: vramlab_onnx::Inplace::None,
            restore_bn: false,
        },
    ] {
        let Ok(loaded) = vramlab_onnx::from_model(&model, "fuzz.onnx", "fuzz", &opts) else {
            continue;
        };
        if let Ok(shaped) = loaded.graph.infer() {
            for i in 0..shaped.nodes().len() {
                assert!(shaped.numel(i) <= vramlab_graph::MAX_TENSOR_ELEMENTS);
            }
            let _ = shaped.num_params();
            let _ = shaped.macs();
        }
    }
});
