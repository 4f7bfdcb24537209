//! Checkpoints in the safetensors format: parameters, BatchNorm buffers and optimizer
//! state as named tensors, the rest (model, epoch, RNG state, ...) as string metadata.
//! Written through a temporary file and a rename, so a crash never leaves a torn file.
//!
//! Layout: 8-byte little-endian header length, a JSON header mapping each tensor name
//! to `{dtype, shape, data_offsets}` (plus `__metadata__`), then the raw little-endian
//! data.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};

use crate::model::Engine;
use crate::rng::Rng;

/// What went wrong reading or writing a checkpoint (names the file).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointError(pub String);

impl std::fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CheckpointError {}

enum Data {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

fn tensors(e: &Engine) -> Vec<(String, Vec<usize>, Data)> {
    let mut out = Vec::new();
    for p in &e.params {
        out.push((
            p.name.clone(),
            p.value.shape.clone(),
            Data::F32(p.value.data().clone()),
        ));
    }
    for (i, bn) in e.bn.iter().enumerate() {
        if let Some(b) = bn {
            let name = &e.graph.nodes()[i].name;
            out.push((
                format!("{name}.running_mean"),
                b.running_mean.shape.clone(),
                Data::F32(b.running_mean.data().clone()),
            ));
            out.push((
                format!("{name}.running_var"),
                b.running_var.shape.clone(),
                Data::F32(b.running_var.data().clone()),
            ));
            out.push((
                format!("{name}.num_batches_tracked"),
                vec![],
                Data::I64(b.num_batches_tracked.borrow().clone()),
            ));
        }
    }
    for p in &e.params {
        for (k, s) in p.state.iter().enumerate() {
            out.push((
                format!("optimizer.{}.{k}", p.name),
                s.shape.clone(),
                Data::F32(s.data().clone()),
            ));
        }
    }
    out
}

/// Saves the engine's state with `metadata` (strings) to `path`, atomically.
pub fn save(
    e: &Engine,
    path: &Path,
    mut metadata: BTreeMap<String, String>,
) -> Result<(), CheckpointError> {
    metadata.insert("step".into(), e.step.to_string());
    metadata.insert("rng_state".into(), e.rng.state().to_string());
    metadata.insert(
        "optimizer".into(),
        serde_json::to_string(&e.optimizer).expect("serialisable"),
    );
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!(metadata));
    let mut body: Vec<u8> = Vec::new();
    for (name, shape, data) in tensors(e) {
        let start = body.len();
        let dtype = match &data {
            Data::F32(v) => {
                v.iter()
                    .for_each(|x| body.extend_from_slice(&x.to_le_bytes()));
                "F32"
            }
            Data::I64(v) => {
                v.iter()
                    .for_each(|x| body.extend_from_slice(&x.to_le_bytes()));
                "I64"
            }
        };
        header.insert(
            name,
            json!({"dtype": dtype, "shape": shape, "data_offsets": [start, body.len()]}),
        );
    }
    let mut h = serde_json::to_vec(&Value::Object(header)).expect("serialisable");
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut file = Vec::with_capacity(8 + h.len() + body.len());
    file.extend_from_slice(&(h.len() as u64).to_le_bytes());
    file.extend_from_slice(&h);
    file.extend_from_slice(&body);
    vramlab_graph::io::write_atomic(path, &file).map_err(|e| {
        CheckpointError(format!(
            "{}: cannot write the checkpoint: {e}",
            path.display()
        ))
    })
}

/// A parsed checkpoint file.
pub struct Checkpoint {
    pub metadata: BTreeMap<String, String>,
    header: serde_json::Map<String, Value>,
    body: Vec<u8>,
    path: String,
}

/// Reads and checks the file's structure (not yet against a model).
pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let p = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|e| CheckpointError(format!("{p}: cannot read: {e}")))?;
    let bad = |m: &str| CheckpointError(format!("{p}: not a safetensors checkpoint: {m}"));
    if bytes.len() < 8 {
        return Err(bad("shorter than its 8-byte header length"));
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    if n > bytes.len() - 8 {
        return Err(bad("the header is longer than the file"));
    }
    let header: Value = serde_json::from_slice(&bytes[8..8 + n])
        .map_err(|e| bad(&format!("header is not JSON ({e})")))?;
    let Value::Object(mut header) = header else {
        return Err(bad("header is not a JSON object"));
    };
    let metadata: BTreeMap<String, String> = match header.remove("__metadata__") {
        Some(m) => {
            serde_json::from_value(m).map_err(|_| bad("__metadata__ is not a map of strings"))?
        }
        None => BTreeMap::new(),
    };
    Ok(Checkpoint {
        metadata,
        header,
        body: bytes[8 + n..].to_vec(),
        path: p,
    })
}

impl Checkpoint {
    fn tensor(&self, name: &str, shape: &[usize], dtype: &str) -> Result<&[u8], CheckpointError> {
        let p = &self.path;
        let t = self.header.get(name).ok_or_else(|| {
            CheckpointError(format!(
                "{p}: has no tensor `{name}`: it was saved from another model"
            ))
        })?;
        let got_shape: Vec<usize> = serde_json::from_value(t["shape"].clone()).unwrap_or_default();
        if got_shape != shape {
            return Err(CheckpointError(format!(
                "{p}: `{name}` has shape {got_shape:?} in the checkpoint but {shape:?} in the model"
            )));
        }
        if t["dtype"] != dtype {
            return Err(CheckpointError(format!(
                "{p}: `{name}` is {} in the checkpoint, expected {dtype}",
                t["dtype"]
            )));
        }
        let off: Vec<usize> = serde_json::from_value(t["data_offsets"].clone()).unwrap_or_default();
        let width = if dtype == "I64" { 8 } else { 4 };
        match off.as_slice() {
            [a, b]
                if a <= b
                    && *b <= self.body.len()
                    && b - a == shape.iter().product::<usize>() * width =>
            {
                Ok(&self.body[*a..*b])
            }
            _ => Err(CheckpointError(format!(
                "{p}: `{name}` has bad data offsets"
            ))),
        }
    }

    /// Loads every tensor into the engine, checking names and shapes first; restores the
    /// optimizer step and the RNG.
    pub fn load_into(&self, e: &mut Engine) -> Result<(), CheckpointError> {
        let f32s = |b: &[u8]| {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
                .collect::<Vec<_>>()
        };
        let mut staged: Vec<(usize, Vec<f32>)> = Vec::new();
        for (i, p) in e.params.iter().enumerate() {
            staged.push((i, f32s(self.tensor(&p.name, &p.value.shape, "F32")?)));
        }
        let mut bn_staged = Vec::new();
        for (i, bn) in e.bn.iter().enumerate() {
            if let Some(b) = bn {
                let name = &e.graph.nodes()[i].name;
                let m = f32s(self.tensor(
                    &format!("{name}.running_mean"),
                    &b.running_mean.shape,
                    "F32",
                )?);
                let v = f32s(self.tensor(
                    &format!("{name}.running_var"),
                    &b.running_var.shape,
                    "F32",
                )?);
                let t = self.tensor(&format!("{name}.num_batches_tracked"), &[], "I64")?;
                bn_staged.push((i, m, v, i64::from_le_bytes(t.try_into().expect("8 bytes"))));
            }
        }
        let moments = e.optimizer.moments();
        let has_state = self.header.keys().any(|k| k.starts_with("optimizer."));
        let mut state_staged = Vec::new();
        if has_state {
            for p in &e.params {
                let mut st = Vec::new();
                for k in 0..moments {
                    st.push(f32s(self.tensor(
                        &format!("optimizer.{}.{k}", p.name),
                        &p.value.shape,
                        "F32",
                    )?));
                }
                state_staged.push(st);
            }
        }
        for (i, v) in staged {
            *e.params[i].value.data_mut() = v;
        }
        for (i, m, v, n) in bn_staged {
            let b = e.bn[i].as_ref().expect("staged from it");
            *b.running_mean.data_mut() = m;
            *b.running_var.data_mut() = v;
            b.num_batches_tracked.borrow_mut()[0] = n;
        }
        if has_state {
            e.ensure_state();
            for (p, st) in e.params.iter().zip(state_staged) {
                for (t, v) in p.state.iter().zip(st) {
                    *t.data_mut() = v;
                }
            }
        }
        e.step = self
            .metadata
            .get("step")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if let Some(r) = self
            .metadata
            .get("rng_state")
            .and_then(|s| s.parse::<u64>().ok())
        {
            e.rng = Rng::from_state(r);
        }
        Ok(())
    }
}
