//! Files a hostile pass found read as if fine (session 11): biases and BatchNorm
//! statistics whose sizes contradict their layer, constants whose raw_data is cut or
//! overlong, and BatchNorm attributes rounded away before they were checked.
//! The files and the script that made them: tests/fixtures/hostile11/.

use vramlab_onnx::{from_model, proto, Options};

fn read(file: &str) -> Result<vramlab_graph::Graph, String> {
    let path = format!(
        "{}/tests/fixtures/hostile11/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let bytes = std::fs::read(&path).expect("fixture");
    let m = proto::decode_bytes(&bytes).map_err(|e| e.0)?;
    from_model(&m, &path, "m", &Options::default())
        .map(|l| l.graph)
        .map_err(|e| e.to_string())
}

#[test]
fn valid_baselines_read() {
    for f in ["bn_ok.onnx", "clip_ok6.onnx", "drop_ok.onnx"] {
        let g = read(f).unwrap_or_else(|e| panic!("{f}: {e}"));
        let s = g.infer().unwrap();
        // Conv 3->4 3x3 (108 + 4), Gemm 4->10 (40 + 10), and BatchNorm's 8 in bn_ok.
        let bn = if f == "bn_ok.onnx" { 8 } else { 0 };
        assert_eq!(s.num_params(), 162 + bn, "{f}");
    }
}

#[test]
fn sizes_that_contradict_the_layer_are_refused_naming_the_node() {
    for (f, want) in [
        (
            "conv_bias_wrong.onnx",
            "node `/conv1/Conv` (Conv opset 17): `conv1.bias` has dims [7], expected [4]",
        ),
        (
            "gemm_bias_2d.onnx",
            "node `/fc/Gemm` (Gemm opset 17): `fc.bias` has dims [3, 5], expected [10]",
        ),
        // Valid ONNX (C broadcasts) but no Linear: 153 parameters were counted as 162.
        (
            "gemm_bias_scalar.onnx",
            "node `/fc/Gemm` (Gemm opset 17): `fc.bias` has dims [1], expected [10]",
        ),
        (
            "bn_wrong_dims.onnx",
            "node `/bn/BatchNormalization` (BatchNormalization opset 17): `bn.bias` has dims \
             [2], expected [4]",
        ),
        (
            "bn_mom_5.onnx",
            "momentum 5: expected a number between 0 and 1 (PyTorch's momentum is 1 minus it)",
        ),
    ] {
        let e = read(f).unwrap_err();
        assert!(e.contains(want), "{f}: {e}");
    }
}

#[test]
fn constants_hold_what_their_dims_declare() {
    for (f, want) in [
        (
            "clip_max_3bytes.onnx",
            "tensor `cmax`: holds 0 values and 3 stray bytes of raw_data but its dims [] declare 1",
        ),
        (
            "clip_max_3vals.onnx",
            "tensor `cmax`: holds 3 values but its dims [] declare 1",
        ),
        (
            "drop_empty.onnx",
            "tensor `ratio`: holds 0 values but its dims [] declare 1",
        ),
        (
            "drop_2bytes.onnx",
            "tensor `ratio`: holds 0 values and 2 stray bytes",
        ),
        (
            "drop_hugedims.onnx",
            "tensor `ratio`: holds 1 value but its dims [1099511627776] declare 1099511627776",
        ),
    ] {
        let e = read(f).unwrap_err();
        assert!(e.contains(want), "{f}: {e}");
    }
}

/// nn.BatchNorm2d(eps=1e-10) exports as is: it was rounded to 0 and refused.
#[test]
fn a_small_batchnorm_epsilon_is_read_as_written() {
    let g = read("bn_eps_tiny.onnx").unwrap();
    let eps = g
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            vramlab_graph::Op::BatchNorm2d(b) => Some(b.eps),
            _ => None,
        })
        .expect("a BatchNorm");
    assert_eq!(eps, 1e-10);
    let g = read("bn_ok.onnx").unwrap();
    let bn = g
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            vramlab_graph::Op::BatchNorm2d(b) => Some((b.eps, b.momentum)),
            _ => None,
        })
        .expect("a BatchNorm");
    // float32's 1e-5 and 0.9, read back as the decimals they were written as.
    assert_eq!(bn, (1e-5, 0.1));
}
