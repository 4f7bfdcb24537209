//! A small reader of the protobuf wire format for the part of `onnx.proto` that vramlab
//! needs. It streams: large fields (an initializer's `raw_data`, a Constant's big tensor,
//! subgraphs, docs) are skipped with a seek and never read, so a model saved with its
//! weights costs no more than one without. Every count and length is bounded.

use std::io::{BufReader, Read};

/// Limits of what a model may hold.
pub const MAX_NODES: usize = 1 << 20;
pub const MAX_TENSORS: usize = 1 << 20;
pub const MAX_ATTRIBUTES: usize = 256;
pub const MAX_STRING: u64 = 1 << 16;
pub const MAX_DIMS: usize = 16;
pub const MAX_IO: usize = 1024;
/// Values of a tensor are read only up to this many bytes (shapes, clip bounds, ratios).
pub const MAX_VALUE_BYTES: u64 = 1024;
const MAX_REPEATED_INTS: usize = 1024;

/// `TensorProto.DataType` values vramlab names.
pub const FLOAT: i32 = 1;
pub const INT64: i32 = 7;
pub const DOUBLE: i32 = 11;
pub const FLOAT16: i32 = 10;
pub const BFLOAT16: i32 = 16;
pub const INT32: i32 = 6;
pub const BOOL: i32 = 9;

/// A `TensorProto.DataType` in words, for errors.
pub fn dtype_name(t: i32) -> String {
    match t {
        FLOAT => "float32".into(),
        2 => "uint8".into(),
        3 => "int8".into(),
        4 => "uint16".into(),
        5 => "int16".into(),
        INT32 => "int32".into(),
        INT64 => "int64".into(),
        8 => "string".into(),
        BOOL => "bool".into(),
        FLOAT16 => "float16".into(),
        DOUBLE => "float64".into(),
        BFLOAT16 => "bfloat16".into(),
        0 => "no data type (0)".into(),
        t => format!("data type {t}"),
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Model {
    pub producer_name: String,
    pub producer_version: String,
    /// (domain, version); `""` is the default ONNX domain.
    pub opset_import: Vec<(String, i64)>,
    pub graph: Graph,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub initializers: Vec<Tensor>,
    pub inputs: Vec<ValueInfo>,
    pub outputs: Vec<ValueInfo>,
    pub value_info: Vec<ValueInfo>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub name: String,
    pub op_type: String,
    pub domain: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub attributes: Vec<Attribute>,
    /// The dynamo exporter's `pkg.torch.onnx.name_scopes` metadata: the module path of
    /// the node, outermost first, as a Python list literal.
    pub name_scopes: Option<String>,
    /// Its `pkg.torch.onnx.class_hierarchy`: each of those modules' class.
    pub class_hierarchy: Option<String>,
}

impl Node {
    pub fn attr(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Attribute {
    pub name: String,
    pub i: Option<i64>,
    pub f: Option<f32>,
    pub s: Option<String>,
    pub t: Option<Tensor>,
    pub ints: Vec<i64>,
    pub floats: Vec<f32>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dims: Vec<i64>,
    pub data_type: i32,
    /// The values when the tensor is small ([`MAX_VALUE_BYTES`]) and stored in the file;
    /// `None` for weights (external or large).
    pub values: Option<Values>,
    /// `external_data`'s `location`, when the bytes live in another file.
    pub external_location: Option<String>,
}

/// Small tensor contents, widened.
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    Ints(Vec<i64>),
    Floats(Vec<f64>),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValueInfo {
    pub name: String,
    pub elem_type: i32,
    /// `None` when the type has no shape.
    pub shape: Option<Vec<Dim>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Value(i64),
    /// A named symbolic dimension (`batch`, `s0`).
    Param(String),
    Unknown,
}

/// Where reading failed, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeError(pub String);

type R<T> = Result<T, DecodeError>;

fn err<T>(m: impl Into<String>) -> R<T> {
    Err(DecodeError(m.into()))
}

/// A byte source that can skip.
pub trait Source {
    fn pos(&self) -> u64;
    fn read_exact_into(&mut self, buf: &mut [u8]) -> R<()>;
    fn skip(&mut self, n: u64) -> R<()>;
}

/// An in-memory source (tests, fuzzing).
pub struct SliceSource<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> SliceSource<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        SliceSource { data, pos: 0 }
    }
}

impl Source for SliceSource<'_> {
    fn pos(&self) -> u64 {
        self.pos as u64
    }
    fn read_exact_into(&mut self, buf: &mut [u8]) -> R<()> {
        let end = self
            .pos
            .checked_add(buf.len())
            .filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return err("the file ends in the middle of a field");
        };
        buf.copy_from_slice(&self.data[self.pos..end]);
        self.pos = end;
        Ok(())
    }
    fn skip(&mut self, n: u64) -> R<()> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return err("the file ends in the middle of a field");
        };
        self.pos = end;
        Ok(())
    }
}

/// A file, read through a buffer; skipped fields are seeked over.
pub struct FileSource {
    r: BufReader<std::fs::File>,
    pos: u64,
    len: u64,
}

impl FileSource {
    pub fn new(f: std::fs::File) -> std::io::Result<Self> {
        let len = f.metadata()?.len();
        Ok(FileSource {
            r: BufReader::with_capacity(1 << 16, f),
            pos: 0,
            len,
        })
    }
    /// The file's size in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
    }
}

impl Source for FileSource {
    fn pos(&self) -> u64 {
        self.pos
    }
    fn read_exact_into(&mut self, buf: &mut [u8]) -> R<()> {
        if self.pos.saturating_add(buf.len() as u64) > self.len {
            return err("the file ends in the middle of a field");
        }
        self.r
            .read_exact(buf)
            .map_err(|e| DecodeError(format!("read error: {e}")))?;
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn skip(&mut self, n: u64) -> R<()> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.len);
        let Some(end) = end else {
            return err("the file ends in the middle of a field");
        };
        let delta = i64::try_from(n).map_err(|_| DecodeError("field too long".into()))?;
        self.r
            .seek_relative(delta)
            .map_err(|e| DecodeError(format!("read error: {e}")))?;
        self.pos = end;
        Ok(())
    }
}

/// Wire types.
const VARINT: u8 = 0;
const I64: u8 = 1;
const LEN: u8 = 2;
const I32: u8 = 5;

/// How many bytes of names, attributes and shapes a model may decode to (weights are
/// skipped and do not count): far above any real graph's, and a bound on memory.
pub const MAX_DECODED_BYTES: u64 = 256 << 20;

struct Reader<'s, S: Source> {
    src: &'s mut S,
    /// Decoded bytes left ([`MAX_DECODED_BYTES`]).
    budget: u64,
}

impl<S: Source> Reader<'_, S> {
    /// Charges `n` decoded bytes against the budget.
    fn charge(&mut self, n: u64) -> R<()> {
        match self.budget.checked_sub(n) {
            Some(left) => {
                self.budget = left;
                Ok(())
            }
            None => err(format!(
                "the graph decodes to more than {MAX_DECODED_BYTES} bytes of names and attributes"
            )),
        }
    }

    fn byte(&mut self) -> R<u8> {
        let mut b = [0u8; 1];
        self.src.read_exact_into(&mut b)?;
        Ok(b[0])
    }

    fn varint(&mut self) -> R<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            if i == 9 && b > 1 {
                return err("a varint is longer than 64 bits");
            }
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        err("a varint is longer than 10 bytes")
    }

    /// The next field's (number, wire type), or None at `end`.
    fn key(&mut self, end: u64) -> R<Option<(u32, u8)>> {
        let pos = self.src.pos();
        if pos == end {
            return Ok(None);
        }
        if pos > end {
            return err("a field runs past the end of its message");
        }
        let k = self.varint()?;
        let field = u32::try_from(k >> 3).map_err(|_| DecodeError("bad field number".into()))?;
        if field == 0 {
            return err("field number 0");
        }
        Ok(Some((field, (k & 7) as u8)))
    }

    /// The end position of a length-delimited field, checked against its message's end.
    fn len_end(&mut self, end: u64) -> R<u64> {
        let n = self.varint()?;
        let e = self
            .src
            .pos()
            .checked_add(n)
            .filter(|&e| e <= end)
            .ok_or_else(|| DecodeError("a field is longer than its message".into()))?;
        Ok(e)
    }

    fn skip_field(&mut self, wire: u8, end: u64) -> R<()> {
        match wire {
            VARINT => self.varint().map(|_| ()),
            I64 => self.bounded_skip(8, end),
            I32 => self.bounded_skip(4, end),
            LEN => {
                let e = self.len_end(end)?;
                let n = e - self.src.pos();
                self.src.skip(n)
            }
            w => err(format!("unsupported wire type {w}")),
        }
    }

    fn bounded_skip(&mut self, n: u64, end: u64) -> R<()> {
        if self.src.pos().saturating_add(n) > end {
            return err("a field runs past the end of its message");
        }
        self.src.skip(n)
    }

    fn bytes(&mut self, end: u64, max: u64, what: &str) -> R<Vec<u8>> {
        let e = self.len_end(end)?;
        let n = e - self.src.pos();
        if n > max {
            return err(format!("{what} is {n} bytes, more than the {max} allowed"));
        }
        // Every decoded string or value also costs its container's bookkeeping.
        self.charge(n + 32)?;
        let mut buf = vec![0u8; n as usize];
        self.src.read_exact_into(&mut buf)?;
        Ok(buf)
    }

    fn string(&mut self, end: u64, what: &str) -> R<String> {
        let b = self.bytes(end, MAX_STRING, what)?;
        String::from_utf8(b).map_err(|_| DecodeError(format!("{what} is not UTF-8")))
    }

    fn fixed32(&mut self, end: u64) -> R<u32> {
        if self.src.pos().saturating_add(4) > end {
            return err("a field runs past the end of its message");
        }
        let mut b = [0u8; 4];
        self.src.read_exact_into(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn fixed64(&mut self, end: u64) -> R<u64> {
        if self.src.pos().saturating_add(8) > end {
            return err("a field runs past the end of its message");
        }
        let mut b = [0u8; 8];
        self.src.read_exact_into(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn expect(&self, wire: u8, want: u8, what: &str) -> R<()> {
        if wire != want {
            return err(format!("{what} has wire type {wire}, expected {want}"));
        }
        Ok(())
    }

    /// A repeated int64 field, packed or not, into `out` (at most `max`).
    fn ints(&mut self, wire: u8, end: u64, out: &mut Vec<i64>, max: usize, what: &str) -> R<()> {
        let push = |out: &mut Vec<i64>, v: u64| {
            if out.len() >= max {
                return err(format!("{what} has more than {max} values"));
            }
            out.push(v as i64);
            Ok(())
        };
        match wire {
            VARINT => {
                let v = self.varint()?;
                self.charge(8)?;
                push(out, v)
            }
            LEN => {
                let e = self.len_end(end)?;
                while self.src.pos() < e {
                    let v = self.varint()?;
                    self.charge(8)?;
                    push(out, v)?;
                }
                if self.src.pos() != e {
                    return err(format!("{what}: a packed value runs past its field"));
                }
                Ok(())
            }
            w => err(format!("{what} has wire type {w}")),
        }
    }

    /// A repeated float field, packed or not.
    fn floats(&mut self, wire: u8, end: u64, out: &mut Vec<f32>, max: usize, what: &str) -> R<()> {
        match wire {
            I32 => {
                if out.len() >= max {
                    return err(format!("{what} has more than {max} values"));
                }
                let v = self.fixed32(end)?;
                self.charge(4)?;
                out.push(f32::from_bits(v));
                Ok(())
            }
            LEN => {
                let e = self.len_end(end)?;
                let n = e - self.src.pos();
                if !n.is_multiple_of(4) {
                    return err(format!("{what}: packed floats of {n} bytes"));
                }
                if out.len() as u64 + n / 4 > max as u64 {
                    return err(format!("{what} has more than {max} values"));
                }
                self.charge(n)?;
                while self.src.pos() < e {
                    let v = self.fixed32(e)?;
                    out.push(f32::from_bits(v));
                }
                Ok(())
            }
            w => err(format!("{what} has wire type {w}")),
        }
    }

    fn model(&mut self, end: u64) -> R<Model> {
        let mut m = Model::default();
        let mut saw_graph = false;
        while let Some((f, w)) = self.key(end)? {
            match f {
                2 => {
                    self.expect(w, LEN, "producer_name")?;
                    m.producer_name = self.string(end, "producer_name")?;
                }
                3 => {
                    self.expect(w, LEN, "producer_version")?;
                    m.producer_version = self.string(end, "producer_version")?;
                }
                7 => {
                    self.expect(w, LEN, "graph")?;
                    if saw_graph {
                        return err("two graphs in one model");
                    }
                    saw_graph = true;
                    let e = self.len_end(end)?;
                    m.graph = self.graph(e)?;
                }
                8 => {
                    self.expect(w, LEN, "opset_import")?;
                    if m.opset_import.len() >= MAX_IO {
                        return err("too many opset imports");
                    }
                    let e = self.len_end(end)?;
                    let mut domain = String::new();
                    let mut version = 0i64;
                    while let Some((f, w)) = self.key(e)? {
                        match (f, w) {
                            (1, LEN) => domain = self.string(e, "opset domain")?,
                            (2, VARINT) => version = self.varint()? as i64,
                            _ => self.skip_field(w, e)?,
                        }
                    }
                    m.opset_import.push((domain, version));
                }
                _ => self.skip_field(w, end)?,
            }
        }
        if !saw_graph {
            return err("no graph: not an ONNX model");
        }
        Ok(m)
    }

    fn graph(&mut self, end: u64) -> R<Graph> {
        let mut g = Graph::default();
        while let Some((f, w)) = self.key(end)? {
            match f {
                1 => {
                    self.expect(w, LEN, "node")?;
                    if g.nodes.len() >= MAX_NODES {
                        return err(format!("more than {MAX_NODES} nodes"));
                    }
                    let e = self.len_end(end)?;
                    self.charge(256)?;
                    g.nodes.push(self.node(e)?);
                }
                5 => {
                    self.expect(w, LEN, "initializer")?;
                    if g.initializers.len() >= MAX_TENSORS {
                        return err(format!("more than {MAX_TENSORS} initializers"));
                    }
                    let e = self.len_end(end)?;
                    self.charge(256)?;
                    g.initializers.push(self.tensor(e)?);
                }
                11..=13 => {
                    self.expect(w, LEN, "value info")?;
                    let e = self.len_end(end)?;
                    self.charge(128)?;
                    let v = self.value_info(e)?;
                    let list = match f {
                        11 => &mut g.inputs,
                        12 => &mut g.outputs,
                        _ => &mut g.value_info,
                    };
                    if list.len() >= MAX_TENSORS {
                        return err("too many graph inputs, outputs or value infos");
                    }
                    list.push(v);
                }
                _ => self.skip_field(w, end)?,
            }
        }
        Ok(g)
    }

    fn node(&mut self, end: u64) -> R<Node> {
        let mut n = Node::default();
        while let Some((f, w)) = self.key(end)? {
            match f {
                1 | 2 => {
                    self.expect(w, LEN, "node input/output")?;
                    let s = self.string(end, "a node's input name")?;
                    let list = if f == 1 {
                        &mut n.inputs
                    } else {
                        &mut n.outputs
                    };
                    if list.len() >= MAX_IO {
                        return err(format!("a node has more than {MAX_IO} inputs or outputs"));
                    }
                    list.push(s);
                }
                3 => {
                    self.expect(w, LEN, "node name")?;
                    n.name = self.string(end, "node name")?;
                }
                4 => {
                    self.expect(w, LEN, "op_type")?;
                    n.op_type = self.string(end, "op_type")?;
                }
                7 => {
                    self.expect(w, LEN, "domain")?;
                    n.domain = self.string(end, "domain")?;
                }
                5 => {
                    self.expect(w, LEN, "attribute")?;
                    if n.attributes.len() >= MAX_ATTRIBUTES {
                        return err(format!("a node has more than {MAX_ATTRIBUTES} attributes"));
                    }
                    let e = self.len_end(end)?;
                    self.charge(256)?;
                    n.attributes.push(self.attribute(e)?);
                }
                9 => {
                    self.expect(w, LEN, "metadata_props")?;
                    let e = self.len_end(end)?;
                    let (mut key, mut value) = (String::new(), String::new());
                    while let Some((f, w)) = self.key(e)? {
                        match f {
                            1 => {
                                self.expect(w, LEN, "metadata key")?;
                                key = self.string(e, "metadata key")?;
                            }
                            2 if key == "pkg.torch.onnx.name_scopes"
                                || key == "pkg.torch.onnx.class_hierarchy" =>
                            {
                                self.expect(w, LEN, "metadata value")?;
                                value = self.string(e, "metadata value")?;
                            }
                            _ => self.skip_field(w, e)?,
                        }
                    }
                    match key.as_str() {
                        "pkg.torch.onnx.name_scopes" => n.name_scopes = Some(value),
                        "pkg.torch.onnx.class_hierarchy" => n.class_hierarchy = Some(value),
                        _ => {}
                    }
                }
                _ => self.skip_field(w, end)?,
            }
        }
        Ok(n)
    }

    fn attribute(&mut self, end: u64) -> R<Attribute> {
        let mut a = Attribute::default();
        while let Some((f, w)) = self.key(end)? {
            match (f, w) {
                (1, LEN) => a.name = self.string(end, "attribute name")?,
                (2, I32) => a.f = Some(f32::from_bits(self.fixed32(end)?)),
                (3, VARINT) => a.i = Some(self.varint()? as i64),
                (4, LEN) => {
                    // Bytes; kept when UTF-8 (auto_pad, mode), else ignored.
                    let b = self.bytes(end, MAX_STRING, "string attribute")?;
                    a.s = String::from_utf8(b).ok();
                }
                (5, LEN) => {
                    let e = self.len_end(end)?;
                    a.t = Some(self.tensor(e)?);
                }
                (7, _) => self.floats(w, end, &mut a.floats, MAX_REPEATED_INTS, "floats")?,
                (8, _) => self.ints(w, end, &mut a.ints, MAX_REPEATED_INTS, "ints")?,
                _ => self.skip_field(w, end)?,
            }
        }
        Ok(a)
    }

    fn tensor(&mut self, end: u64) -> R<Tensor> {
        let mut t = Tensor::default();
        let mut raw: Option<Vec<u8>> = None;
        let mut ints: Vec<i64> = Vec::new();
        let mut floats: Vec<f32> = Vec::new();
        let mut doubles: Vec<f64> = Vec::new();
        let mut skipped_values = false;
        let small = MAX_VALUE_BYTES as usize / 4;
        while let Some((f, w)) = self.key(end)? {
            match f {
                1 => self.ints(w, end, &mut t.dims, MAX_DIMS, "tensor dims")?,
                2 => {
                    self.expect(w, VARINT, "data_type")?;
                    t.data_type = self.varint()? as i32;
                }
                8 => {
                    self.expect(w, LEN, "tensor name")?;
                    t.name = self.string(end, "tensor name")?;
                }
                // raw_data: read only when small.
                9 if w == LEN => {
                    let e = self.len_end(end)?;
                    let n = e - self.src.pos();
                    if n <= MAX_VALUE_BYTES {
                        let mut b = vec![0u8; n as usize];
                        self.src.read_exact_into(&mut b)?;
                        raw = Some(b);
                    } else {
                        self.src.skip(n)?;
                        skipped_values = true;
                    }
                }
                4 | 5 | 7 | 10 if w == LEN => {
                    let e = self.len_end(end)?;
                    let n = e - self.src.pos();
                    if n > MAX_VALUE_BYTES {
                        self.src.skip(n)?;
                        skipped_values = true;
                        continue;
                    }
                    while self.src.pos() < e {
                        match f {
                            4 => floats.push(f32::from_bits(self.fixed32(e)?)),
                            10 => doubles.push(f64::from_bits(self.fixed64(e)?)),
                            _ => ints.push(self.varint()? as i64),
                        }
                    }
                    if self.src.pos() != e {
                        return err("tensor data: a packed value runs past its field");
                    }
                }
                4 if w == I32 => {
                    let v = f32::from_bits(self.fixed32(end)?);
                    if floats.len() < small {
                        floats.push(v);
                    } else {
                        skipped_values = true;
                    }
                }
                5 | 7 if w == VARINT => {
                    let v = self.varint()? as i64;
                    if ints.len() < small {
                        ints.push(v);
                    } else {
                        skipped_values = true;
                    }
                }
                13 => {
                    self.expect(w, LEN, "external_data")?;
                    let e = self.len_end(end)?;
                    let (mut key, mut value) = (String::new(), String::new());
                    while let Some((f, w)) = self.key(e)? {
                        match (f, w) {
                            (1, LEN) => key = self.string(e, "external_data key")?,
                            (2, LEN) => value = self.string(e, "external_data value")?,
                            _ => self.skip_field(w, e)?,
                        }
                    }
                    if key == "location" {
                        t.external_location = Some(value);
                    }
                }
                _ => self.skip_field(w, end)?,
            }
        }
        if !skipped_values && t.external_location.is_none() {
            let elem = match t.data_type {
                DOUBLE | INT64 => 8,
                FLOAT | INT32 => 4,
                _ => 1,
            };
            let raw_len_rest = raw.as_ref().map_or(0, |b| b.len() % elem);
            t.values = match t.data_type {
                FLOAT => match raw {
                    Some(b) => Some(Values::Floats(
                        b.chunks_exact(4)
                            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                            .collect(),
                    )),
                    None => Some(Values::Floats(floats.iter().map(|&v| v as f64).collect())),
                },
                DOUBLE => match raw {
                    Some(b) => Some(Values::Floats(
                        b.chunks_exact(8)
                            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
                            .collect(),
                    )),
                    None => Some(Values::Floats(doubles)),
                },
                INT64 => match raw {
                    Some(b) => Some(Values::Ints(
                        b.chunks_exact(8)
                            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                            .collect(),
                    )),
                    None => Some(Values::Ints(ints)),
                },
                INT32 | BOOL => match raw {
                    Some(b) if t.data_type == INT32 => Some(Values::Ints(
                        b.chunks_exact(4)
                            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64)
                            .collect(),
                    )),
                    Some(b) => Some(Values::Ints(b.iter().map(|&v| v as i64).collect())),
                    None => Some(Values::Ints(ints)),
                },
                _ => None,
            };
            // The values must be what the dims declare (onnx's checker refuses others):
            // a cut raw_data would otherwise read as fewer values, or as none.
            if let Some(v) = &t.values {
                let count = match v {
                    Values::Floats(f) => f.len(),
                    Values::Ints(i) => i.len(),
                } as u128;
                let expected = t.dims.iter().try_fold(1u128, |acc, &d| {
                    u128::try_from(d).ok().map(|d| acc.saturating_mul(d))
                });
                if expected != Some(count) || raw_len_rest != 0 {
                    let name = if t.name.is_empty() {
                        "a constant"
                    } else {
                        t.name.as_str()
                    };
                    return err(format!(
                        "tensor `{name}`: holds {count} value{}{} but its dims {:?} declare {}",
                        if count == 1 { "" } else { "s" },
                        if raw_len_rest != 0 {
                            format!(" and {raw_len_rest} stray bytes of raw_data")
                        } else {
                            String::new()
                        },
                        t.dims,
                        expected.map_or("a negative size".to_string(), |e| e.to_string())
                    ));
                }
            }
        }
        Ok(t)
    }

    fn value_info(&mut self, end: u64) -> R<ValueInfo> {
        let mut v = ValueInfo::default();
        while let Some((f, w)) = self.key(end)? {
            match (f, w) {
                (1, LEN) => v.name = self.string(end, "value name")?,
                (2, LEN) => {
                    // TypeProto: tensor_type = 1.
                    let e = self.len_end(end)?;
                    while let Some((f, w)) = self.key(e)? {
                        if (f, w) != (1, LEN) {
                            self.skip_field(w, e)?;
                            continue;
                        }
                        let te = self.len_end(e)?;
                        while let Some((f, w)) = self.key(te)? {
                            match (f, w) {
                                (1, VARINT) => v.elem_type = self.varint()? as i32,
                                (2, LEN) => {
                                    let se = self.len_end(te)?;
                                    v.shape = Some(self.shape(se)?);
                                }
                                _ => self.skip_field(w, te)?,
                            }
                        }
                    }
                }
                _ => self.skip_field(w, end)?,
            }
        }
        Ok(v)
    }

    fn shape(&mut self, end: u64) -> R<Vec<Dim>> {
        let mut dims = Vec::new();
        while let Some((f, w)) = self.key(end)? {
            if (f, w) != (1, LEN) {
                self.skip_field(w, end)?;
                continue;
            }
            if dims.len() >= MAX_DIMS {
                return err(format!("a shape has more than {MAX_DIMS} dimensions"));
            }
            let e = self.len_end(end)?;
            self.charge(32)?;
            let mut d = Dim::Unknown;
            while let Some((f, w)) = self.key(e)? {
                match (f, w) {
                    (1, VARINT) => d = Dim::Value(self.varint()? as i64),
                    (2, LEN) => d = Dim::Param(self.string(e, "dim_param")?),
                    _ => self.skip_field(w, e)?,
                }
            }
            dims.push(d);
        }
        Ok(dims)
    }
}

/// Decodes a `ModelProto` of `len` bytes from `src`.
pub fn decode_model<S: Source>(src: &mut S, len: u64) -> Result<Model, DecodeError> {
    let mut r = Reader {
        src,
        budget: MAX_DECODED_BYTES,
    };
    r.model(len).map_err(|e| {
        let at = r.src.pos();
        DecodeError(format!("{} (at byte {at})", e.0))
    })
}

/// Decodes a model held in memory.
pub fn decode_bytes(data: &[u8]) -> Result<Model, DecodeError> {
    let mut s = SliceSource::new(data);
    decode_model(&mut s, data.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    fn field(num: u32, payload: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(num) << 3 | 2, out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }

    #[test]
    fn a_tiny_model_decodes_and_large_raw_data_is_skipped() {
        let mut tensor = Vec::new();
        field(8, b"fc.weight", &mut tensor);
        varint(1 << 3, &mut tensor); // dims 10 (unpacked)
        varint(10, &mut tensor);
        field(1, &[4], &mut tensor); // dims 4 (packed)
        varint(2 << 3, &mut tensor);
        varint(1, &mut tensor);
        field(9, &vec![0u8; 4000], &mut tensor); // raw_data, skipped
        let mut node = Vec::new();
        field(1, b"x", &mut node);
        field(2, b"y", &mut node);
        field(3, b"relu0", &mut node);
        field(4, b"Relu", &mut node);
        let mut graph = Vec::new();
        field(1, &node, &mut graph);
        field(5, &tensor, &mut graph);
        let mut opset = Vec::new();
        varint(2 << 3, &mut opset);
        varint(17, &mut opset);
        let mut model = Vec::new();
        field(8, &opset, &mut model);
        field(7, &graph, &mut model);
        let m = decode_bytes(&model).unwrap();
        assert_eq!(m.opset_import, vec![(String::new(), 17)]);
        assert_eq!(m.graph.nodes[0].op_type, "Relu");
        assert_eq!(m.graph.nodes[0].inputs, vec!["x".to_string()]);
        let t = &m.graph.initializers[0];
        assert_eq!(
            (t.name.as_str(), &t.dims[..], t.data_type),
            ("fc.weight", &[10, 4][..], 1)
        );
        assert_eq!(t.values, None);
        // Every truncation is an error, never a panic.
        for cut in 0..model.len() {
            assert!(decode_bytes(&model[..cut]).is_err(), "{cut}");
        }
        // From a file, the weight bytes are seeked over, and the model is the same.
        let path = std::env::temp_dir().join(format!("vramlab-proto-{}.onnx", std::process::id()));
        std::fs::write(&path, &model).unwrap();
        let mut src = FileSource::new(std::fs::File::open(&path).unwrap()).unwrap();
        let len = src.file_len();
        assert_eq!(decode_model(&mut src, len).unwrap(), m);
        std::fs::write(&path, &model[..model.len() - 1]).unwrap();
        let mut src = FileSource::new(std::fs::File::open(&path).unwrap()).unwrap();
        let len = src.file_len();
        assert!(decode_model(&mut src, len).is_err());
        std::fs::remove_file(&path).ok();
    }

    /// A small tensor's values must be what its dims declare: a cut or overlong
    /// raw_data (a Clip's bound, a Dropout's ratio) was read as fewer values, or none.
    #[test]
    fn small_tensors_hold_what_their_dims_declare() {
        let model = |dims: &[u64], raw: &[u8]| {
            let mut tensor = Vec::new();
            field(8, b"cmax", &mut tensor);
            for &d in dims {
                varint(1 << 3, &mut tensor);
                varint(d, &mut tensor);
            }
            varint(2 << 3, &mut tensor); // FLOAT
            varint(1, &mut tensor);
            field(9, raw, &mut tensor);
            let mut graph = Vec::new();
            field(5, &tensor, &mut graph);
            let mut model = Vec::new();
            field(7, &graph, &mut model);
            decode_bytes(&model)
        };
        let six = 6f32.to_le_bytes();
        let m = model(&[], &six).unwrap();
        assert_eq!(
            m.graph.initializers[0].values,
            Some(Values::Floats(vec![6.0]))
        );
        assert!(model(&[2], &[six, six].concat()).is_ok());
        for (dims, raw, want) in [
            (
                &[][..],
                &six[..3],
                "holds 0 values and 3 stray bytes of raw_data but its dims [] declare 1",
            ),
            (
                &[],
                &[six, six, six].concat()[..],
                "holds 3 values but its dims [] declare 1",
            ),
            (&[], &[][..], "holds 0 values but its dims [] declare 1"),
            (
                &[1 << 40],
                &six[..],
                "holds 1 value but its dims [1099511627776] declare 1099511627776",
            ),
        ] {
            let e = model(dims, raw).unwrap_err().0;
            assert!(e.contains(&format!("tensor `cmax`: {want}")), "{e}");
        }
    }

    #[test]
    fn overlong_varints_and_lengths_are_errors() {
        assert!(decode_bytes(&[0xff; 16]).is_err());
        assert!(decode_bytes(&[0x3a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode_bytes(&[0x3b]).is_err()); // wire type 3 (groups)
        assert_eq!(
            decode_bytes(&[]).unwrap_err().0,
            "no graph: not an ONNX model (at byte 0)"
        );
    }
}
