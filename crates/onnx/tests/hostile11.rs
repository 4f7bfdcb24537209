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

/// Attributes of the wrong type were read as absent (a FLOAT ceil_mode planned as floor
/// mode); a dilated AveragePool (no PyTorch layer), auto_pad VALID with pads, a Gemm
/// over a 4-D map and an unknown GELU approximation were planned as something else.
#[test]
fn nodes_pytorch_has_no_layer_for_are_refused_naming_them() {
    assert!(read("pool_ceil_int.onnx").is_ok());
    assert!(read("avgpool_plain.onnx").is_ok());
    for (f, want) in [
        (
            "pool_ceil_float.onnx",
            "node `/pool0/MaxPool` (MaxPool opset 17): attribute `ceil_mode` is not an INT",
        ),
        ("bn_eps_intattr.onnx", "attribute `epsilon` is not a FLOAT"),
        ("conv_group_float.onnx", "attribute `group` is not an INT"),
        (
            "avgpool_dilated.onnx",
            "with dilations (3, 3) is not supported (PyTorch's AvgPool2d has no dilation)",
        ),
        (
            "conv_valid_pads.onnx",
            "auto_pad VALID (no padding) with explicit pads",
        ),
        (
            "gemm_4d.onnx",
            "input A is [N, 4x8x8]: Gemm takes a matrix [batch, features]",
        ),
        (
            "gelu_bogus.onnx",
            "approximate `bogus`: expected none or tanh",
        ),
    ] {
        let e = read(f).unwrap_err();
        assert!(e.contains(want), "{f}: {e}");
    }
}

/// Counts from the file drove allocations and loops before they were checked: a Split's
/// num_outputs of 1e15 aborted on an 8 PB allocation (2^62 panicked), a SplitToSequence
/// over 2^40 channels likewise, and a declared adaptive-pool size of 1e13 looped for
/// hours. Each is refused at once.
#[test]
fn counts_from_the_file_are_checked_before_they_are_used() {
    assert!(read("split_ok.onnx").is_ok());
    assert!(read("adaptive_windows_ok.onnx").is_ok());
    for (f, want) in [
        (
            "split_huge_numout.onnx",
            "num_outputs 1000000000000000 but the node has 2 outputs",
        ),
        (
            "split_2p62.onnx",
            "num_outputs 4611686018427387904 but the node has 2 outputs",
        ),
        (
            "splitseq_2p40.onnx",
            "splits 1099511627776 channels into 1099511627776 parts of 1, more than the 1024",
        ),
        (
            "adaptive_windows_hang.onnx",
            "are not PyTorch's even adaptive windows",
        ),
    ] {
        let start = std::time::Instant::now();
        let e = read(f).unwrap_err();
        assert!(e.contains(want), "{f}: {e}");
        // Not a timing target: a guard that the loop is gone (it ran for hours).
        assert!(start.elapsed().as_secs() < 30, "{f}");
    }
}

/// An in-place ReLU after a Tanh (whose backward reads its output) cannot be what ran
/// in PyTorch (autograd's version check fails): the reader's in-place guess leaves it
/// out of place.
#[test]
fn the_inplace_guess_spares_outputs_their_backward_reads() {
    let g = read("tanh_relu.onnx").unwrap();
    let relu = g
        .nodes
        .iter()
        .find_map(|n| match &n.op {
            vramlab_graph::Op::Act { kind, inplace } if kind.class_name() == "ReLU" => {
                Some(*inplace)
            }
            _ => None,
        })
        .expect("a ReLU");
    assert!(!relu);
}

/// A dynamo eval export of mobilenet_v3_small (the repo's fixture): its
/// squeeze-and-excitation convolutions, whose zero biases the exporter dropped, were
/// planned with an invented BatchNorm each (1,854 parameters too many; batch 1 refused).
#[test]
fn squeeze_excitation_convolutions_get_no_invented_batchnorm() {
    let path = format!(
        "{}/tests/fixtures/mobilenet_v3_small_dynamo_eval.onnx",
        env!("CARGO_MANIFEST_DIR")
    );
    let l = vramlab_onnx::load(std::path::Path::new(&path), &Options::default()).unwrap();
    let s = l.graph.infer().unwrap();
    // torchvision's model (10 classes, 1,528,106 parameters) less the biases the file
    // lacks: 18 squeeze-and-excitation convolutions' (2,888) and 2 Linears' (1,034).
    assert_eq!(s.num_params(), 1_528_106 - 2_888 - 1_034);
    assert!(!s
        .nodes()
        .iter()
        .any(|n| n.name.contains(".fc1.bn") || n.name.contains(".fc2.bn")));
    assert!(
        l.notes
            .iter()
            .any(|n| n.starts_with("18 convolutions over 1x1 maps (squeeze-and-excitation)")),
        "{:?}",
        l.notes
    );
}

/// A second output that is a feature map, not logits, was planned as an auxiliary
/// classifier trained on cross-entropy; one that is logits still is.
#[test]
fn only_outputs_shaped_like_the_logits_are_auxiliary_classifiers() {
    let g = read("aux_head.onnx").unwrap();
    assert_eq!(g.aux.len(), 1);
    let e = read("two_outputs_feature.onnx").unwrap_err();
    assert!(
        e.contains("the output of `relu` is 4x8x8, not logits like the model's 10"),
        "{e}"
    );
}

/// A batch dimension of -5 or 0 and opset -3 or 0 were read with a note ("the file fixes
/// the batch at -5").
#[test]
fn a_batch_below_one_and_an_opset_below_one_are_refused() {
    let e = read("batchneg.onnx").unwrap_err();
    assert!(
        e.contains("input `x` has a batch dimension of -5: a batch is at least 1"),
        "{e}"
    );
    let e = read("opset0.onnx").unwrap_err();
    assert!(
        e.contains("imports opset 0: ONNX's opsets count from 1"),
        "{e}"
    );
}

/// An op the reader knows, refused for how it is used (a dilated AveragePool), does not
/// end its error with the list of supported ops that holds it.
#[test]
fn a_known_op_refused_for_its_use_lists_no_ops() {
    let e = read("avgpool_dilated.onnx").unwrap_err();
    assert!(!e.contains("supported ops"), "{e}");
}
