//! Damaged archives: every truncation, flipped bytes in the zip records and the program's
//! JSON, and absurd sizes and offsets in the headers give one error line, never a panic.

mod common;

use common::{fixture, model_json};
use std::io::Cursor;

use vramlab_pt2::{from_reader, Loaded, Pt2Error};

fn read(bytes: &[u8]) -> Result<Loaded, Pt2Error> {
    from_reader(Cursor::new(bytes), "m.pt2", "m")
}

fn one_line(r: &Result<Loaded, Pt2Error>) {
    if let Err(e) = r {
        assert!(e.0.starts_with("m.pt2: "), "{e}");
        assert!(!e.0.contains('\n'), "{e}");
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// The offset of the end of central directory record.
fn eocd(b: &[u8]) -> usize {
    (0..b.len() - 21)
        .rev()
        .find(|&i| u32_at(b, i) == 0x0605_4b50)
        .unwrap()
}

/// A stored zip archive of `entries`, as torch.export.save lays one out (no zip64).
fn stored_zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cd = Vec::new();
    for (name, data) in entries {
        let off = out.len() as u32;
        let mut h = Vec::new();
        h.extend(0x0403_4b50u32.to_le_bytes());
        h.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        h.extend(0u32.to_le_bytes()); // crc, not checked
        h.extend((data.len() as u32).to_le_bytes());
        h.extend((data.len() as u32).to_le_bytes());
        h.extend((name.len() as u16).to_le_bytes());
        h.extend(0u16.to_le_bytes());
        out.extend(&h);
        out.extend(name.as_bytes());
        out.extend(*data);
        cd.extend(0x0201_4b50u32.to_le_bytes());
        cd.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        cd.extend(0u32.to_le_bytes());
        cd.extend((data.len() as u32).to_le_bytes());
        cd.extend((data.len() as u32).to_le_bytes());
        cd.extend((name.len() as u16).to_le_bytes());
        cd.extend([0u8; 8]);
        cd.extend(0u32.to_le_bytes());
        cd.extend(off.to_le_bytes());
        cd.extend(name.as_bytes());
    }
    let cd_off = out.len() as u32;
    out.extend(&cd);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    out.extend((cd.len() as u32).to_le_bytes());
    out.extend(cd_off.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

fn simple_cnn_json() -> String {
    model_json("simple_cnn_train.pt2")
}

#[test]
fn the_fixture_reads_and_a_rezipped_program_reads_the_same() {
    let whole = read(&fixture("simple_cnn_train.pt2")).unwrap();
    let json = simple_cnn_json();
    let z = stored_zip(&[("m/models/model.json", json.as_bytes())]);
    let again = read(&z).unwrap();
    assert_eq!(whole.graph, again.graph);
    // The older layout: serialized_exported_program.json at the top.
    let z = stored_zip(&[("serialized_exported_program.json", json.as_bytes())]);
    assert_eq!(read(&z).unwrap().graph.nodes.len(), whole.graph.nodes.len());
}

#[test]
fn every_truncation_is_an_error() {
    let b = fixture("small_resnet_train.pt2");
    let tail = b.len().saturating_sub(4096);
    for len in (0..tail).step_by(509).chain(tail..b.len()) {
        let r = read(&b[..len]);
        assert!(r.is_err(), "{len} bytes");
        one_line(&r);
    }
}

#[test]
fn flipped_bytes_never_panic() {
    let b = fixture("tiny_mobilenet_train.pt2");
    let e = eocd(&b);
    let cd_off = u32_at(&b, e + 16) as usize;
    // Every byte of the central directory and the end records.
    for i in cd_off.saturating_sub(200)..b.len() {
        let mut m = b.clone();
        m[i] ^= if i % 2 == 0 { 0xFF } else { 0x01 };
        one_line(&read(&m));
    }
    // Bytes of the program's JSON, through a small archive holding only it.
    let json = simple_cnn_json();
    for i in (0..json.len()).step_by(5) {
        let mut m = json.clone().into_bytes();
        m[i] ^= 0x20;
        one_line(&read(&stored_zip(&[("m/models/model.json", &m)])));
    }
}

#[test]
fn absurd_sizes_and_offsets_are_refused() {
    let json = simple_cnn_json();
    let good = stored_zip(&[("m/models/model.json", json.as_bytes())]);
    let e = eocd(&good);
    let cd_off = u32_at(&good, e + 16) as usize;
    let set = |at: usize, v: &[u8]| {
        let mut m = good.clone();
        m[at..at + v.len()].copy_from_slice(v);
        read(&m).unwrap_err().0
    };
    let cases: [(usize, &[u8], &str); 8] = [
        // Entry count, central directory size and offset in the end record.
        (e + 10, &[0xFE, 0xFF], "central directory entry"),
        (e + 12, &[0xFE, 0xFF, 0xFF, 0xFF], "more than"),
        (e + 16, &[0xFE, 0xFF, 0xFF, 0x7F], "past the end"),
        // All three saturated: zip64, with no locator.
        (e + 10, &[0xFF, 0xFF], "zip64"),
        // The entry's method, sizes and local header offset.
        (cd_off + 10, &[8, 0], "compressed (method 8)"),
        (cd_off + 20, &[0xFE, 0xFF, 0xFF, 0xFF], "sizes differ"),
        (cd_off + 24, &[0xFE, 0xFF, 0xFF, 0x7F], "sizes differ"),
        (cd_off + 42, &[0xFE, 0xFF, 0xFF, 0x7F], "past the end"),
    ];
    for (at, v, want) in cases {
        let msg = set(at, v);
        assert!(msg.starts_with("m.pt2: "), "{msg}");
        assert!(msg.contains(want), "{at}: {msg}");
    }
    // Both sizes absurd and equal: refused before anything is allocated.
    let mut m = good.clone();
    m[cd_off + 20..cd_off + 28].copy_from_slice(&[0xFE, 0xFF, 0xFF, 0x7F, 0xFE, 0xFF, 0xFF, 0x7F]);
    let msg = read(&m).unwrap_err().0;
    assert!(msg.contains("more than the 67108864 read"), "{msg}");
}

#[test]
fn an_unknown_op_names_the_op_and_the_node() {
    let json =
        simple_cnn_json().replace("torch.ops.aten.relu.default", "torch.ops.aten.elu.default");
    let msg = read(&stored_zip(&[("m/models/model.json", json.as_bytes())]))
        .unwrap_err()
        .0;
    assert!(
        msg.starts_with("m.pt2: node `relu`: op torch.ops.aten.elu.default is not supported; supported aten ops: "),
        "{msg}"
    );
}

#[test]
fn a_permute_without_a_permutation_is_refused_by_name() {
    // relu's node made a permute: it has no `dims`.
    let json = simple_cnn_json().replace(
        "torch.ops.aten.relu.default",
        "torch.ops.aten.permute.default",
    );
    let msg = read(&stored_zip(&[("m/models/model.json", json.as_bytes())]))
        .unwrap_err()
        .0;
    assert_eq!(
        msg,
        "m.pt2: node `relu` (torch.ops.aten.permute.default): the dimensions are not a permutation"
    );
}

#[test]
fn other_bad_archives_say_what_is_wrong() {
    let msg = read(b"not a zip at all").unwrap_err().0;
    assert_eq!(
        msg,
        "m.pt2: not a readable torch.export archive: not a zip archive (no end of central directory record)"
    );
    let msg = read(&stored_zip(&[("m/data/weights/w", b"1234")]))
        .unwrap_err()
        .0;
    assert!(msg.contains("no exported program in the archive"), "{msg}");
    let msg = read(&stored_zip(&[(
        "m/models/model.json",
        b"{\"graph_module\": 3",
    )]))
    .unwrap_err()
    .0;
    assert!(
        msg.contains("`m/models/model.json` is not valid JSON"),
        "{msg}"
    );
    let msg = read(&stored_zip(&[("m/models/model.json", b"[]")]))
        .unwrap_err()
        .0;
    assert_eq!(msg, "m.pt2: the exported program has no graph_module");
}

#[test]
fn absurd_numbers_in_the_program_never_panic() {
    // Every integer of the JSON (sizes, strides, kernel sizes, groups, ...) replaced in
    // turn by 0, -1, 2^40 and i64::MAX: an error line, or a graph that infers and plans.
    let json = simple_cnn_json();
    let b = json.as_bytes();
    let mut runs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((start, i));
        } else {
            i += 1;
        }
    }
    assert!(runs.len() > 100, "{}", runs.len());
    for (s, e) in runs {
        for v in ["0", "-1", "1099511627776", "9223372036854775807"] {
            let m = format!("{}{v}{}", &json[..s], &json[e..]);
            let r = read(&stored_zip(&[("m/models/model.json", m.as_bytes())]));
            one_line(&r);
            if let Ok(Ok(s)) = r.map(|l| l.graph.infer()) {
                let mut cfg = vramlab_memory::PlanConfig::new(8);
                cfg.profile = vramlab_memory::Profile::PytorchCpu;
                let _ = vramlab_memory::plan(&s, &cfg);
            }
        }
    }
}

#[test]
fn a_view_of_a_huge_input_is_an_error_not_an_overflow() {
    // The input's C, H, W at i64::MAX, and a first node that flattens it.
    let mut v: serde_json::Value = serde_json::from_str(&simple_cnn_json()).unwrap();
    let g = &mut v["graph_module"]["graph"];
    let big = serde_json::json!({ "as_int": i64::MAX });
    for d in 1..4 {
        g["tensor_values"]["x"]["sizes"][d] = big.clone();
    }
    g["nodes"] = serde_json::json!([{
        "target": "torch.ops.aten.view.default",
        "name": "view",
        "inputs": [
            { "name": "self", "arg": { "as_tensor": { "name": "x" } }, "kind": 1 },
            { "name": "size", "arg": { "as_ints": [-1, 5] }, "kind": 1 }
        ],
        "outputs": [{ "as_tensor": { "name": "view" } }],
        "metadata": {}
    }]);
    v["graph_module"]["signature"]["output_specs"] =
        serde_json::json!([{ "user_output": { "arg": { "as_tensor": { "name": "view" } } } }]);
    let text = v.to_string();
    let r = read(&stored_zip(&[("m/models/model.json", text.as_bytes())]));
    one_line(&r);
    let msg = r.unwrap_err().0;
    // Refused at the input, before any node reads it (it was refused at the `view`, and
    // with 2^40 sides a convolution's silent shape failure blamed the node after it).
    assert!(
        msg.contains("input `x` is 9223372036854775807x")
            && msg.contains("values a tensor may have"),
        "{msg}"
    );
}

/// A frozen parameter, a parameter that is not float32, and `x.detach()` in forward are
/// refused by name: planned as a float32 model trained end to end, each would be a
/// silently wrong answer.
#[test]
fn frozen_half_and_detached_models_are_refused_not_misplanned() {
    let base: serde_json::Value = serde_json::from_str(&simple_cnn_json()).unwrap();
    let load = |v: &serde_json::Value| {
        let text = v.to_string();
        read(&stored_zip(&[("m/models/model.json", text.as_bytes())]))
    };
    assert!(load(&base).is_ok());
    let meta = "/graph_module/graph/tensor_values/p_conv1_weight";
    let mut v = base.clone();
    v.pointer_mut(meta).unwrap()["requires_grad"] = false.into();
    let msg = load(&v).unwrap_err().0;
    assert!(
        msg.starts_with("m.pt2: 1 parameter(s) do not require gradients (conv1.weight)"),
        "{msg}"
    );
    let mut v = base.clone();
    v.pointer_mut(meta).unwrap()["dtype"] = 13.into();
    let msg = load(&v).unwrap_err().0;
    assert!(
        msg.starts_with("m.pt2: 1 parameter(s) are not float32 (conv1.weight (bfloat16))"),
        "{msg}"
    );
    // relu's node made a detach of the activation.
    let json = simple_cnn_json().replace(
        "torch.ops.aten.relu.default",
        "torch.ops.aten.detach.default",
    );
    let msg = read(&stored_zip(&[("m/models/model.json", json.as_bytes())]))
        .unwrap_err()
        .0;
    assert!(
        msg.contains("`x.detach()` in forward stops backward there"),
        "{msg}"
    );
}

/// Parameters that do not line up with the export's are named at the first difference,
/// with both counts (the message listed every name of both sides: 300 KB for a file of
/// duplicated nodes).
#[test]
fn a_parameter_mismatch_names_the_first_difference() {
    let json = simple_cnn_json().replace(
        r#""parameter_name": "conv1.weight""#,
        r#""parameter_name": "conv9.weight""#,
    );
    let r = read(&stored_zip(&[("m/models/model.json", json.as_bytes())]));
    one_line(&r);
    let e = r.err().unwrap().to_string();
    assert!(
        e.contains(
            "parameter 2 is `conv9.bias`, but the export lists `conv1.bias` there (10 parameters \
             mapped, 10 in the export)"
        ),
        "{e}"
    );
}

/// The simple CNN's program with `change` made to its graph, re-zipped: the reader's
/// error.
fn refused_after(change: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut j: serde_json::Value = serde_json::from_str(&simple_cnn_json()).unwrap();
    change(&mut j["graph_module"]["graph"]);
    let json = j.to_string();
    let r = read(&stored_zip(&[("m/models/model.json", json.as_bytes())]));
    one_line(&r);
    match r {
        Ok(_) => panic!("the changed program is refused"),
        Err(e) => e.0,
    }
}

/// A bias whose sizes contradict its layer (found by a hostile pass, session 11): read
/// as the layer's and counted as such (62,006 parameters where the export held 62,007).
#[test]
fn a_bias_whose_sizes_contradict_its_layer_is_refused() {
    for (param, sizes, want) in [
        (
            "p_conv1_bias",
            serde_json::json!([{ "as_int": 7 }]),
            "node `conv2d` (torch.ops.aten.conv2d.default): `conv1.bias` has sizes [7], \
             expected [6] (one per output channel or feature)",
        ),
        (
            "p_fc3_bias",
            serde_json::json!([{ "as_int": 3 }, { "as_int": 5 }]),
            "`fc3.bias` has sizes [3, 5], expected [10] (one per output channel or feature)",
        ),
        (
            "p_fc3_bias",
            serde_json::json!([]),
            "`fc3.bias` has sizes [], expected [10] (one per output channel or feature)",
        ),
    ] {
        let msg = refused_after(|g| g["tensor_values"][param]["sizes"] = sizes);
        assert!(msg.contains(want), "{msg}");
    }
}

/// Sizes recorded as numbers that are no positive integers (2^70, 32.5, a batch of -7)
/// were called symbolic, or noted as a fixed batch.
#[test]
fn input_sizes_that_are_not_positive_integers_are_named() {
    for (k, size, want) in [
        (
            2,
            serde_json::json!(32.5),
            "input `x`: size 2 is 32.5, not a positive integer",
        ),
        (
            0,
            serde_json::json!(-7),
            "input `x`: size 0 is -7, not a positive integer",
        ),
        (
            3,
            serde_json::json!(0),
            "input `x`: size 3 is 0, not a positive integer",
        ),
    ] {
        let msg = refused_after(|g| {
            g["tensor_values"]["x"]["sizes"][k] = serde_json::json!({ "as_int": size })
        });
        assert!(msg.contains(want), "{msg}");
    }
}

/// A layer whose shape rule fails is named at its own node (it was stored with an empty
/// shape, and the node after it failed instead, blaming itself).
#[test]
fn a_layer_whose_shape_fails_is_named_at_its_node() {
    // conv1's weight reads 5 input channels of an RGB image.
    let msg = refused_after(|g| {
        g["tensor_values"]["p_conv1_weight"]["sizes"] = serde_json::json!([
            { "as_int": 6 }, { "as_int": 5 }, { "as_int": 5 }, { "as_int": 5 }
        ])
    });
    assert!(
        msg.contains("node `conv2d` (torch.ops.aten.conv2d.default): layer `conv1`"),
        "{msg}"
    );
}
