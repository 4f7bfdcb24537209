//! Checkpoints in the safetensors format: parameters, BatchNorm buffers and optimizer
//! state as named tensors, the rest (model, position, optimizer, RNG state, ...) as
//! string metadata. The header is built and validated by the `safetensors` crate;
//! vramlab streams the tensor data itself, so neither saving nor loading holds a second
//! copy of the model in memory.
//!
//! Saving is atomic: the file is written as `.NAME.tmp-PID` in the target's folder,
//! synced, renamed over the target, and the folder synced. The temporary file is removed
//! on any error, and stale ones left by a killed save (their process is gone) are removed
//! by the next save or [`check_writable`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;
use vramlab_graph::io;

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::Dtype;

use crate::model::Engine;
use crate::optim::OptimizerConfig;
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

/// The largest JSON header read (the `safetensors` crate's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// One tensor to save, borrowed from the engine.
enum Source<'a> {
    F32(&'a crate::tensor::Tensor),
    I64(&'a crate::tensor::Buf<i64>),
}

impl Source<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Source::F32(_) => Dtype::F32,
            Source::I64(_) => Dtype::I64,
        }
    }

    fn byte_len(&self) -> Option<usize> {
        match self {
            Source::F32(t) => t.data().len().checked_mul(4),
            Source::I64(b) => b.len().checked_mul(8),
        }
    }

    /// Writes the little-endian bytes through a small buffer (no copy of the tensor).
    fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let mut chunk = Vec::with_capacity(64 * 1024);
        match self {
            Source::F32(t) => {
                for part in t.data().chunks(16 * 1024) {
                    chunk.clear();
                    part.iter()
                        .for_each(|v| chunk.extend_from_slice(&v.to_le_bytes()));
                    w.write_all(&chunk)?;
                }
            }
            Source::I64(b) => {
                for part in b.borrow().chunks(8 * 1024) {
                    chunk.clear();
                    part.iter()
                        .for_each(|v| chunk.extend_from_slice(&v.to_le_bytes()));
                    w.write_all(&chunk)?;
                }
            }
        }
        Ok(())
    }
}

/// Every tensor of the engine, by its state_dict name.
fn tensors(e: &Engine) -> Vec<(String, Vec<usize>, Source<'_>)> {
    let mut out = Vec::new();
    for p in &e.params {
        out.push((p.name.clone(), p.value.shape.clone(), Source::F32(&p.value)));
    }
    for (i, bn) in e.bn.iter().enumerate() {
        if let Some(b) = bn {
            let name = &e.graph.nodes()[i].name;
            out.push((
                format!("{name}.running_mean"),
                b.running_mean.shape.clone(),
                Source::F32(&b.running_mean),
            ));
            out.push((
                format!("{name}.running_var"),
                b.running_var.shape.clone(),
                Source::F32(&b.running_var),
            ));
            out.push((
                format!("{name}.num_batches_tracked"),
                vec![],
                Source::I64(&b.num_batches_tracked),
            ));
        }
    }
    for (i, index) in e.position_index.iter().enumerate() {
        if let Some(b) = index {
            let node = &e.graph.nodes()[i];
            out.push((
                format!("{}.relative_position_index", node.name),
                index_shape(node, b.len()),
                Source::I64(b),
            ));
        }
    }
    for (i, coords) in e.position_coords.iter().enumerate() {
        if let Some(t) = coords {
            let node = &e.graph.nodes()[i];
            out.push((
                format!("{}.relative_coords_table", node.name),
                t.shape.clone(),
                Source::F32(t),
            ));
        }
    }
    for p in &e.params {
        for (k, s) in p.state.iter().enumerate() {
            out.push((
                format!("optimizer.{}.{k}", p.name),
                s.shape.clone(),
                Source::F32(s),
            ));
        }
    }
    out
}

/// The shape torchvision registers a node's `relative_position_index` with (`len` values).
fn index_shape(node: &vramlab_graph::Node, len: usize) -> Vec<usize> {
    node.op
        .buffers()
        .into_iter()
        .find(|s| s.name == "relative_position_index")
        .map_or_else(|| vec![len], |s| s.shape)
}

fn write_error(path: &Path, e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError(format!(
        "{}: cannot write the checkpoint: {e}",
        path.display()
    ))
}

/// Checks, before any work, that a checkpoint can be written at `path`: creates the
/// temporary file a save would create in its folder, then removes it.
pub fn check_writable(path: &Path) -> Result<(), CheckpointError> {
    vramlab_graph::io::check_writable(path).map_err(|e| write_error(path, e))
}

/// Writes the file to `tmp`: length, header, tensor data; then syncs it to disk.
fn write_file(tmp: &Path, header: &[u8], sources: &[Source<'_>]) -> std::io::Result<()> {
    let file = File::create_new(tmp)?;
    let mut w = BufWriter::with_capacity(1 << 20, &file);
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(header)?;
    for s in sources {
        s.write_to(&mut w)?;
    }
    w.flush()?;
    drop(w);
    file.sync_all()
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
    let mut infos = Vec::new();
    let mut sources = Vec::new();
    let mut offset = 0usize;
    for (name, shape, source) in tensors(e) {
        let end = source
            .byte_len()
            .and_then(|n| offset.checked_add(n))
            .ok_or_else(|| write_error(path, format!("`{name}` is too large")))?;
        infos.push((
            name,
            TensorInfo {
                dtype: source.dtype(),
                shape,
                data_offsets: (offset, end),
            },
        ));
        sources.push(source);
        offset = end;
    }
    let header = Metadata::new(Some(metadata.into_iter().collect()), infos)
        .map_err(|e| write_error(path, e))?;
    let mut header = serde_json::to_vec(&header).map_err(|e| write_error(path, e))?;
    // safetensors aligns the data to 8 bytes by padding the header with spaces.
    header.resize(header.len().next_multiple_of(8), b' ');
    // A device, FIFO or folder at `path` is refused, a link is written through: the
    // rename never replaces anything but a regular file.
    let target = io::write_target(path).map_err(|e| write_error(path, e))?;
    io::remove_stale_temps(&target);
    let tmp = io::temp_path(&target).map_err(|e| write_error(path, e))?;
    let res = write_file(&tmp, &header, &sources).and_then(|()| std::fs::rename(&tmp, &target));
    if let Err(err) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(write_error(path, err));
    }
    // The rename itself reaches the disk with the folder.
    #[cfg(unix)]
    File::open(io::folder_of(&target))
        .and_then(|d| d.sync_all())
        .map_err(|e| write_error(path, e))?;
    Ok(())
}

/// A source the reader can read and seek (a file, or bytes in memory).
trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

/// A parsed checkpoint: its metadata and validated header; tensor data is read from the
/// file on demand.
pub struct Checkpoint {
    pub metadata: BTreeMap<String, String>,
    header: Metadata,
    /// Where the data starts in the file.
    data_start: u64,
    source: RefCell<Box<dyn ReadSeek>>,
    path: String,
}

/// Reads and checks the file's structure (not yet against a model).
pub fn read(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let p = path.display().to_string();
    let not_regular = || {
        CheckpointError(format!(
            "{p}: cannot read: not a regular file (a folder, device, FIFO or socket)"
        ))
    };
    // Checked before opening: opening a FIFO blocks until a writer comes.
    let before =
        std::fs::metadata(path).map_err(|e| CheckpointError(format!("{p}: cannot read: {e}")))?;
    if !before.is_file() {
        return Err(not_regular());
    }
    let file = File::open(path).map_err(|e| CheckpointError(format!("{p}: cannot read: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| CheckpointError(format!("{p}: cannot read: {e}")))?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    read_from(file, meta.len(), &p)
}

/// Reads a checkpoint from `len` bytes of `source`; `name` names it in errors.
pub fn read_from(
    mut source: impl Read + Seek + 'static,
    len: u64,
    name: &str,
) -> Result<Checkpoint, CheckpointError> {
    let bad = |m: &dyn std::fmt::Display| {
        CheckpointError(format!("{name}: not a safetensors checkpoint: {m}"))
    };
    let io = |e: std::io::Error| CheckpointError(format!("{name}: cannot read: {e}"));
    if len < 8 {
        return Err(bad(&"shorter than its 8-byte header length"));
    }
    let mut n = [0u8; 8];
    source.read_exact(&mut n).map_err(io)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_HEADER_BYTES {
        return Err(bad(&format!(
            "a header of {n} bytes is larger than the {MAX_HEADER_BYTES} allowed"
        )));
    }
    if n > len - 8 {
        return Err(bad(&format!(
            "the header says {n} bytes but the file has {len} in all"
        )));
    }
    let mut header = vec![0u8; n as usize];
    source.read_exact(&mut header).map_err(io)?;
    let header: Metadata = serde_json::from_slice(&header).map_err(|e| bad(&e))?;
    let data_len = header.data_len() as u64;
    let data_start = 8 + n;
    if data_start.checked_add(data_len) != Some(len) {
        return Err(bad(&format!(
            "the header describes {data_len} bytes of tensors but the file has {}",
            len - data_start
        )));
    }
    let metadata = header
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(Checkpoint {
        metadata,
        header,
        data_start,
        source: RefCell::new(Box::new(source)),
        path: name.to_string(),
    })
}

/// The optimizer state tensors that are sums or averages of squared gradients, by their
/// index, with PyTorch's names: never negative, or the step takes a square root of a
/// negative number and the weights become NaN.
fn squared_state(o: &OptimizerConfig) -> Vec<(usize, &'static str)> {
    match o {
        OptimizerConfig::Sgd { .. } => vec![],
        OptimizerConfig::Adam { amsgrad, .. } => {
            let mut v = vec![(1, "exp_avg_sq")];
            if *amsgrad {
                v.push((2, "max_exp_avg_sq"));
            }
            v
        }
        OptimizerConfig::RmsProp { .. } => vec![(0, "square_avg")],
        OptimizerConfig::Adagrad { .. } => vec![(0, "sum")],
    }
}

/// The most optimizer steps a checkpoint may record (the engine counts on with `+ 1`).
const MAX_STEP: u64 = 1 << 53;

/// Bytes read at a time when converting tensor data.
const READ_CHUNK: usize = 64 * 1024;

impl Checkpoint {
    /// Names of the tensors in the file, in file order.
    pub fn tensor_names(&self) -> Vec<String> {
        self.header.offset_keys()
    }

    /// The optimizer the checkpoint was trained with (`None`: not recorded).
    pub fn optimizer(&self) -> Result<Option<OptimizerConfig>, CheckpointError> {
        let Some(text) = self.metadata.get("optimizer") else {
            return Ok(None);
        };
        let c: OptimizerConfig = serde_json::from_str(text).map_err(|e| {
            CheckpointError(format!(
                "{}: the `optimizer` in its metadata is not one vramlab knows: {e}",
                self.path
            ))
        })?;
        c.validate().map_err(|m| {
            CheckpointError(format!(
                "{}: the `optimizer` in its metadata is invalid: {m}",
                self.path
            ))
        })?;
        Ok(Some(c))
    }

    fn err(&self, m: impl std::fmt::Display) -> CheckpointError {
        CheckpointError(format!("{}: {m}", self.path))
    }

    /// Checks a tensor's presence, shape and type, and reads its raw bytes through
    /// `each` in chunks.
    fn read_tensor(
        &self,
        name: &str,
        shape: &[usize],
        dtype: Dtype,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), CheckpointError> {
        let t = self.header.info(name).ok_or_else(|| {
            self.err(format!(
                "has no tensor `{name}`: it was saved from another model"
            ))
        })?;
        if t.shape != shape {
            return Err(self.err(format!(
                "`{name}` has shape {:?} in the checkpoint but {shape:?} in the model",
                t.shape
            )));
        }
        if t.dtype != dtype {
            return Err(self.err(format!(
                "`{name}` is {:?} in the checkpoint, expected {dtype:?}",
                t.dtype
            )));
        }
        let (a, b) = t.data_offsets;
        let mut src = self.source.borrow_mut();
        src.seek(SeekFrom::Start(self.data_start + a as u64))
            .map_err(|e| self.err(format!("cannot read `{name}`: {e}")))?;
        let mut left = b - a;
        let mut buf = vec![0u8; READ_CHUNK.min(left)];
        while left > 0 {
            let k = READ_CHUNK.min(left);
            src.read_exact(&mut buf[..k])
                .map_err(|e| self.err(format!("cannot read `{name}`: {e}")))?;
            each(&buf[..k]);
            left -= k;
        }
        Ok(())
    }

    /// A float tensor of this shape, checked to be finite.
    pub fn read_f32(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, CheckpointError> {
        let numel = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| self.err(format!("`{name}` is too large")))?;
        let mut v = Vec::with_capacity(numel);
        self.read_tensor(name, shape, Dtype::F32, |bytes| {
            v.extend(
                bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))),
            )
        })?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(self.err(format!(
                "`{name}` holds a non-finite value ({}) at index {i}: the run it was saved \
                 from diverged or the file is damaged",
                v[i]
            )));
        }
        Ok(v)
    }

    /// An int64 tensor of this shape.
    fn read_i64(&self, name: &str, shape: &[usize]) -> Result<Vec<i64>, CheckpointError> {
        let mut v = Vec::new();
        self.read_tensor(name, shape, Dtype::I64, |bytes| {
            v.extend(
                bytes
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))),
            )
        })?;
        Ok(v)
    }

    fn read_i64_scalar(&self, name: &str) -> Result<i64, CheckpointError> {
        let mut v = Vec::with_capacity(8);
        self.read_tensor(name, &[], Dtype::I64, |b| v.extend_from_slice(b))?;
        let v = i64::from_le_bytes(v.try_into().expect("8 bytes for a scalar"));
        if v < 0 {
            return Err(self.err(format!("`{name}` is negative ({v})")));
        }
        Ok(v)
    }

    fn meta_number<T: std::str::FromStr>(&self, key: &str) -> Result<Option<T>, CheckpointError> {
        self.metadata
            .get(key)
            .map(|s| {
                s.parse().map_err(|_| {
                    self.err(format!("`{key}` in its metadata is not a number: `{s}`"))
                })
            })
            .transpose()
    }

    /// Loads every tensor into the engine, checking names, shapes, finiteness and the
    /// optimizer state's count first (nothing changes on an error); restores the optimizer
    /// step and the RNG. Every tensor of the file must belong to the model.
    pub fn load_into(&self, e: &mut Engine) -> Result<(), CheckpointError> {
        let step: u64 = self.meta_number("step")?.unwrap_or(0);
        if step > MAX_STEP {
            return Err(self.err(format!(
                "`step` in its metadata is {step}, more than the {MAX_STEP} a run can take"
            )));
        }
        let rng: Option<u64> = self.meta_number("rng_state")?;
        let mut expected = std::collections::BTreeSet::new();
        let mut staged: Vec<(usize, Vec<f32>)> = Vec::new();
        for (i, p) in e.params.iter().enumerate() {
            staged.push((i, self.read_f32(&p.name, &p.value.shape)?));
            expected.insert(p.name.clone());
        }
        let mut bn_staged = Vec::new();
        for (i, bn) in e.bn.iter().enumerate() {
            if let Some(b) = bn {
                let name = &e.graph.nodes()[i].name;
                let keys = [
                    format!("{name}.running_mean"),
                    format!("{name}.running_var"),
                    format!("{name}.num_batches_tracked"),
                ];
                let m = self.read_f32(&keys[0], &b.running_mean.shape)?;
                let v = self.read_f32(&keys[1], &b.running_var.shape)?;
                if let Some(bad) = v.iter().find(|&&x| x < 0.0) {
                    return Err(
                        self.err(format!("`{}` holds a negative variance ({bad})", keys[1]))
                    );
                }
                let t = self.read_i64_scalar(&keys[2])?;
                expected.extend(keys);
                bn_staged.push((i, m, v, t));
            }
        }
        // The relative position index is torchvision's constant: it must be that.
        for (i, index) in e.position_index.iter().enumerate() {
            if let Some(b) = index {
                let node = &e.graph.nodes()[i];
                let key = format!("{}.relative_position_index", node.name);
                let v = self.read_i64(&key, &index_shape(node, b.len()))?;
                if v != *b.borrow() {
                    return Err(self.err(format!(
                        "`{key}` is not the relative position index of {}'s window",
                        node.op.type_name()
                    )));
                }
                expected.insert(key);
            }
        }
        // So is Swin V2's coordinates table.
        for (i, coords) in e.position_coords.iter().enumerate() {
            if let Some(t) = coords {
                let node = &e.graph.nodes()[i];
                let key = format!("{}.relative_coords_table", node.name);
                let v = self.read_f32(&key, &t.shape)?;
                if v != *t.data() {
                    return Err(self.err(format!(
                        "`{key}` is not the coordinates table of {}'s window",
                        node.op.type_name()
                    )));
                }
                expected.insert(key);
            }
        }
        let moments = e.optimizer.moments();
        let stored: Vec<String> = self
            .tensor_names()
            .into_iter()
            .filter(|k| k.starts_with("optimizer."))
            .collect();
        let has_state = !stored.is_empty();
        if !has_state && moments > 0 && step > 0 && !e.optimizer.eager_state() {
            return Err(self.err(format!(
                "has no optimizer state after {step} steps, but {} keeps {moments} tensor(s) \
                 per parameter",
                e.optimizer.name()
            )));
        }
        let mut state_staged = Vec::new();
        if has_state {
            if stored.len() != moments * e.params.len() {
                return Err(self.err(format!(
                    "holds {} optimizer state tensors, but {} keeps {moments} for each of the \
                     model's {} parameters ({} in all)",
                    stored.len(),
                    e.optimizer.name(),
                    e.params.len(),
                    moments * e.params.len()
                )));
            }
            let squares = squared_state(&e.optimizer);
            for p in &e.params {
                let mut st = Vec::new();
                for k in 0..moments {
                    let key = format!("optimizer.{}.{k}", p.name);
                    let v = self.read_f32(&key, &p.value.shape)?;
                    if let Some((what, i)) = squares
                        .iter()
                        .find(|(k2, _)| *k2 == k)
                        .and_then(|(_, what)| Some((what, v.iter().position(|&x| x < 0.0)?)))
                    {
                        return Err(self.err(format!(
                            "`{key}` ({} {what}, a running sum of squares) holds a negative \
                             value ({}) at index {i}: the file is damaged",
                            e.optimizer.name(),
                            v[i]
                        )));
                    }
                    st.push(v);
                    expected.insert(key);
                }
                state_staged.push(st);
            }
        }
        if let Some(extra) = self
            .tensor_names()
            .into_iter()
            .find(|k| !expected.contains(k))
        {
            return Err(self.err(format!(
                "holds a tensor `{extra}` the model does not have: it was saved from another \
                 model"
            )));
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
        e.step = step;
        if let Some(r) = rng {
            e.rng = Rng::from_state(r);
        }
        Ok(())
    }
}
