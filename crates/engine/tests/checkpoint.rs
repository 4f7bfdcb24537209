//! Checkpoints: written by vramlab, read by the `safetensors` crate and back; every bad
//! file is one error naming it; saves are atomic and leave no temporary files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use vramlab_engine::checkpoint::{self, CheckpointError};
use vramlab_engine::{Engine, OptimizerConfig};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vramlab-ck-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn engine(optimizer: &str) -> Engine {
    let g = vramlab_graph::zoo::build("lenet5", &Default::default())
        .unwrap()
        .infer()
        .unwrap();
    Engine::new(
        g,
        OptimizerConfig::named(optimizer, Some(0.01)).unwrap(),
        7,
        1,
    )
    .unwrap()
}

/// One training step, so the optimizer state exists.
fn step(e: &mut Engine) {
    let x = e.batch(vec![0.25; 2 * 28 * 28], 2).unwrap();
    let y = e.labels(vec![1, 2]);
    e.train_step(&x, &y).unwrap();
}

fn saved(dir: &Path, optimizer: &str) -> (Engine, PathBuf) {
    let mut e = engine(optimizer);
    step(&mut e);
    let f = dir.join("run.safetensors");
    let meta = BTreeMap::from([("model".to_string(), "lenet5".to_string())]);
    checkpoint::save(&e, &f, meta).unwrap();
    (e, f)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_saved_checkpoint_is_a_safetensors_file_and_loads_back_exactly() {
    let dir = tmp("roundtrip");
    let (e, f) = saved(&dir, "adam");
    let bytes = std::fs::read(&f).unwrap();
    // Hugging Face's own reader accepts it, with our metadata and tensors.
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let w = st.tensor("conv1.weight").unwrap();
    assert_eq!(w.shape(), &[6, 1, 5, 5]);
    assert_eq!(w.dtype(), safetensors::Dtype::F32);
    let first = f32::from_le_bytes(w.data()[..4].try_into().unwrap());
    assert_eq!(first, e.params[0].value.data()[0]);
    assert!(st.tensor("optimizer.conv1.weight.1").is_ok());
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    assert_eq!(meta.get("model").map(String::as_str), Some("lenet5"));
    assert_eq!(meta.get("step").map(String::as_str), Some("1"));

    let ck = checkpoint::read(&f).unwrap();
    let mut back = engine("adam");
    ck.load_into(&mut back).unwrap();
    assert_eq!(back.step, 1);
    for (a, b) in e.params.iter().zip(&back.params) {
        assert_eq!(*a.value.data(), *b.value.data(), "{}", a.name);
        assert_eq!(a.state.len(), 2);
        for (s, t) in a.state.iter().zip(&b.state) {
            assert_eq!(*s.data(), *t.data());
        }
    }
    assert_eq!(names(&dir), vec!["run.safetensors"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// A file the crate itself wrote (tensors sorted its way) reads as well.
#[test]
fn a_file_written_by_the_safetensors_crate_is_read() {
    let dir = tmp("foreign");
    let e = engine("sgd");
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = e
        .params
        .iter()
        .map(|p| {
            let b = p
                .value
                .data()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            (p.name.clone(), p.value.shape.clone(), b)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(n, s, b)| {
            let v = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .unwrap();
            (n.clone(), v)
        })
        .collect();
    let ghost = [0u8; 8];
    let mut with_ghost = views.clone();
    with_ghost.push((
        "ghost.weight".to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &ghost).unwrap(),
    ));
    let bytes = safetensors::serialize(views, None).unwrap();
    let f = dir.join("foreign.safetensors");
    std::fs::write(&f, bytes).unwrap();
    let mut back = engine("sgd");
    back.params[0].value.data_mut()[0] = 9.0;
    checkpoint::read(&f).unwrap().load_into(&mut back).unwrap();
    assert_eq!(*back.params[0].value.data(), *e.params[0].value.data());
    // A tensor the model does not have: saved from another model.
    std::fs::write(&f, safetensors::serialize(with_ghost, None).unwrap()).unwrap();
    let m = err(checkpoint::read(&f).unwrap().load_into(&mut engine("sgd")));
    assert!(
        m.contains("holds a tensor `ghost.weight` the model does not have"),
        "{m}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

fn err(r: Result<impl Sized, CheckpointError>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.0,
    }
}

#[test]
fn truncated_or_lying_files_are_one_error_naming_the_file() {
    let dir = tmp("bad");
    let (_, f) = saved(&dir, "sgd");
    let bytes = std::fs::read(&f).unwrap();
    let name = f.display().to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", bytes[..bytes.len() - 3].to_vec()),
        ("one byte more", [bytes.clone(), vec![0]].concat()),
        ("huge header length", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("header longer than the file", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&((bytes.len() as u64) * 2).to_le_bytes());
            b
        }),
        ("not JSON", {
            let mut b = bytes.clone();
            b[8] = b'#';
            b
        }),
    ];
    for (what, b) in cases {
        let g = dir.join("bad.safetensors");
        std::fs::write(&g, &b).unwrap();
        let m = err(checkpoint::read(&g).and_then(|c| c.load_into(&mut engine("sgd"))));
        assert!(
            m.starts_with(&g.display().to_string()),
            "{what}: {m} names the file"
        );
    }
    assert!(err(checkpoint::read(&dir.join("missing"))).contains("cannot read"));
    assert!(!name.is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

/// Replaces the bytes of one f32 of tensor `name` in a saved file.
fn poke(f: &Path, name: &str, value: f32) {
    let mut bytes = std::fs::read(f).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[8 + n + start..8 + n + start + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(f, bytes).unwrap();
}

#[test]
fn non_finite_weights_are_refused_naming_the_tensor() {
    let dir = tmp("nan");
    let (_, f) = saved(&dir, "sgd");
    poke(&f, "fc3.bias", f32::NAN);
    let mut e = engine("sgd");
    let before = e.params[0].value.data().clone();
    let m = err(checkpoint::read(&f).unwrap().load_into(&mut e));
    assert!(m.contains("`fc3.bias`") && m.contains("NaN"), "{m}");
    assert_eq!(*e.params[0].value.data(), before, "nothing loaded");
    poke(&f, "fc3.bias", 0.0);
    poke(&f, "conv1.weight", f32::INFINITY);
    let m = err(checkpoint::read(&f).unwrap().load_into(&mut engine("sgd")));
    assert!(m.contains("`conv1.weight`") && m.contains("inf"), "{m}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn optimizer_state_of_another_optimizer_is_refused() {
    let dir = tmp("state");
    let (_, f) = saved(&dir, "adam");
    let ck = checkpoint::read(&f).unwrap();
    assert_eq!(
        ck.optimizer().unwrap(),
        Some(OptimizerConfig::named("adam", Some(0.01)).unwrap())
    );
    let mut sgd = {
        let mut c = OptimizerConfig::named("sgd", Some(0.01)).unwrap();
        if let OptimizerConfig::Sgd { momentum, .. } = &mut c {
            *momentum = 0.9;
        }
        let g = vramlab_graph::zoo::build("lenet5", &Default::default())
            .unwrap()
            .infer()
            .unwrap();
        Engine::new(g, c, 0, 1).unwrap()
    };
    let m = err(ck.load_into(&mut sgd));
    assert!(
        m.contains("holds 20 optimizer state tensors") && m.contains("sgd keeps 1"),
        "{m}"
    );
    // Adam after a step has state; loading it without state into Adam is refused too.
    let plain = dir.join("plain.safetensors");
    let mut e = engine("sgd");
    step(&mut e);
    checkpoint::save(&e, &plain, BTreeMap::new()).unwrap();
    let m = err(checkpoint::read(&plain)
        .unwrap()
        .load_into(&mut engine("adam")));
    assert!(m.contains("has no optimizer state after 1 steps"), "{m}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn saves_leave_no_temporary_files_and_clear_those_of_killed_saves() {
    let dir = tmp("temps");
    let f = dir.join("run.safetensors");
    // A save killed earlier (its process is gone) left this; a running one (pid 1) not.
    let stale = dir.join(".run.safetensors.tmp-999999999");
    let live = dir.join(".run.safetensors.tmp-1");
    let other = dir.join(".other.safetensors.tmp-999999999");
    for p in [&stale, &live, &other] {
        std::fs::write(p, b"partial").unwrap();
    }
    let mut e = engine("sgd");
    step(&mut e);
    checkpoint::save(&e, &f, BTreeMap::new()).unwrap();
    assert_eq!(
        names(&dir),
        vec![
            ".other.safetensors.tmp-999999999",
            ".run.safetensors.tmp-1",
            "run.safetensors"
        ]
    );
    // A failed save (its folder does not exist) leaves nothing and names the file.
    let m = err(checkpoint::save(
        &e,
        &dir.join("no/such.safetensors"),
        BTreeMap::new(),
    ));
    assert!(
        m.contains("no/such.safetensors: cannot write the checkpoint"),
        "{m}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn check_writable_probes_the_folder_before_any_work() {
    let dir = tmp("probe");
    checkpoint::check_writable(&dir.join("ok.safetensors")).unwrap();
    assert!(names(&dir).is_empty(), "the probe is removed");
    let m = err(checkpoint::check_writable(
        &dir.join("missing/x.safetensors"),
    ));
    assert!(
        m.contains("missing/x.safetensors: cannot write the checkpoint"),
        "{m}"
    );
    let m = err(checkpoint::check_writable(&dir));
    assert!(m.contains("it is a folder"), "{m}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Bytes in memory read like a file (the fuzz target's way in).
#[test]
fn read_from_memory_bounds_every_length() {
    let mut b = vec![0u8; 16];
    b[..8].copy_from_slice(&8u64.to_le_bytes());
    b[8..].copy_from_slice(b"{}      ");
    let ck = checkpoint::read_from(std::io::Cursor::new(b), 16, "mem").unwrap();
    assert!(ck.tensor_names().is_empty());
    let m = err(checkpoint::read_from(
        std::io::Cursor::new(vec![0xffu8; 8]),
        8,
        "mem",
    ));
    assert!(m.starts_with("mem: not a safetensors checkpoint"), "{m}");
}

/// Every single-byte change of a valid file reads, or is one error naming the file;
/// none panics (the fuzz target's property, on a budget a test can afford).
#[test]
fn damaged_bytes_never_panic() {
    let dir = tmp("flips");
    let (_, f) = saved(&dir, "adam");
    let good = std::fs::read(&f).unwrap();
    let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    // Every byte of the length and the header, and a sample of the data.
    let positions = (0..8 + n).chain((8 + n..good.len()).step_by(997));
    let mut e = engine("adam");
    for at in positions {
        for value in [0u8, b'9', b'"', 0xff] {
            let mut b = good.clone();
            if b[at] == value {
                continue;
            }
            b[at] = value;
            let len = b.len() as u64;
            match checkpoint::read_from(std::io::Cursor::new(b), len, "flip") {
                Ok(ck) => {
                    if let Err(m) = ck.optimizer().and_then(|_| ck.load_into(&mut e)) {
                        assert!(m.0.starts_with("flip: "), "{}", m.0);
                    }
                }
                Err(m) => assert!(m.0.starts_with("flip: "), "{}", m.0),
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn metadata_numbers_out_of_range_are_refused() {
    let dir = tmp("meta");
    let mut e = engine("adam");
    step(&mut e);
    let f = dir.join("m.safetensors");
    for (key, value, want) in [
        (
            "step",
            "18446744073709551615",
            "`step` in its metadata is 18446744073709551615",
        ),
        ("step", "-1", "`step` in its metadata is not a number"),
        (
            "rng_state",
            "x",
            "`rng_state` in its metadata is not a number",
        ),
    ] {
        // save() writes its own step and RNG: replace them in the header afterwards.
        checkpoint::save(&e, &f, BTreeMap::new()).unwrap();
        let bytes = std::fs::read(&f).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        header["__metadata__"][key] = value.into();
        let mut h = serde_json::to_vec(&header).unwrap();
        h.resize(h.len().next_multiple_of(8), b' ');
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&h);
        out.extend_from_slice(&bytes[8 + n..]);
        std::fs::write(&f, out).unwrap();
        let m = err(checkpoint::read(&f).unwrap().load_into(&mut engine("adam")));
        assert!(m.contains(want), "{m}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
