//! ONNX models for vramlab: reads a `.onnx` file exported from PyTorch (the TorchScript
//! exporter, `dynamo=False`, and the dynamo exporter, `dynamo=True`, opsets 13 to 20) and
//! maps its nodes back to the layers of [`vramlab_graph`].
//!
//! The reader ([`proto`]) is a small hand-written decoder of the protobuf wire format that
//! never reads weight bytes: an initializer's dims and dtype are enough, so a model saved
//! with external data loads without its `.data` file, and one with its weights inline
//! costs a seek per tensor.
//!
//! What ONNX cannot say is returned as [`Loaded::notes`]: in-place ops (ONNX has none;
//! torchvision's convention is assumed unless [`Options::inplace`] says otherwise), and
//! BatchNorm layers that an exporter folded into the convolutions before them (restored
//! by default, see [`Options::restore_bn`]).

pub mod proto;
mod transformer;
mod whole;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::Path;

use proto::{Dim, Values};
use vramlab_graph::Activation;
use vramlab_graph::{
    BatchNorm2d, Conv2d, Graph, GraphBuilder, Linear, Node, NodeId, Op, Pool2d, Shape,
};

/// The ONNX ops vramlab maps, as the error for any other lists them.
pub const SUPPORTED_OPS: &[&str] = &[
    "Add",
    "AveragePool",
    "BatchNormalization",
    "Cast",
    "Clip",
    "Concat",
    "Constant",
    "ConstantOfShape",
    "Conv",
    "Div",
    "Dropout",
    "Erf",
    "Expand",
    "Flatten",
    "Gather",
    "Gelu",
    "Gemm",
    "GlobalAveragePool",
    "HardSigmoid",
    "HardSwish",
    "Identity",
    "LayerNormalization",
    "Less",
    "MatMul",
    "MaxPool",
    "Mul",
    "RandomUniformLike",
    "ReduceMean",
    "Relu",
    "Reshape",
    "SequenceAt",
    "Shape",
    "Sigmoid",
    "Slice",
    "Softmax",
    "Split",
    "SplitToSequence",
    "Squeeze",
    "Tanh",
    "Transpose",
    "Unsqueeze",
];

/// The largest file read (protobuf's own limit is 2 GiB; weights are skipped, not read).
pub const MAX_FILE_BYTES: u64 = 1 << 36;

/// The newest opset whose rules this reader follows (the exporters of PyTorch 2.15 write
/// 17 to 20).
pub const NEWEST_OPSET: i64 = 20;

/// Which ops ran in place; ONNX cannot say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Inplace {
    /// torchvision's convention: `ReLU(inplace=True)`, and `out += identity` when a ReLU
    /// is all that reads the sum.
    #[default]
    Torchvision,
    /// Nothing in place (`F.relu`, `x + y`).
    None,
}

impl Inplace {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "torchvision" => Ok(Inplace::Torchvision),
            "none" => Ok(Inplace::None),
            _ => Err(format!(
                "unknown --onnx-inplace `{s}`: expected torchvision or none"
            )),
        }
    }
}

/// How to read what an ONNX file cannot say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Options {
    pub inplace: Inplace,
    /// A convolution whose bias the exporter made by folding a BatchNorm into it
    /// (`conv1.weight_bias`, `onnx::Conv_194`) is planned as the model had it:
    /// `Conv2d(bias=False)` then `BatchNorm2d`.
    pub restore_bn: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            inplace: Inplace::Torchvision,
            restore_bn: true,
        }
    }
}

/// A model read from ONNX, with what vramlab assumed.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub graph: Graph,
    /// One sentence each: what the file could not say and what was assumed.
    pub notes: Vec<String>,
    /// The default ONNX opset the file imports.
    pub opset: i64,
}

/// Why a file could not be used: one line naming the file (and the node).
#[derive(Debug, Clone, PartialEq)]
pub struct OnnxError(pub String);

impl fmt::Display for OnnxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OnnxError {}

/// Reads `path` and maps it to a graph.
pub fn load(path: &Path, opts: &Options) -> Result<Loaded, OnnxError> {
    let file = path.display().to_string();
    // Only a regular file: opening a FIFO or a device would block or never end.
    let meta = std::fs::metadata(path).map_err(|e| OnnxError(format!("{file}: {e}")))?;
    if !meta.is_file() {
        return Err(OnnxError(format!(
            "{file}: not a regular file: expected an .onnx model"
        )));
    }
    let f = std::fs::File::open(path).map_err(|e| OnnxError(format!("{file}: {e}")))?;
    let mut src = proto::FileSource::new(f).map_err(|e| OnnxError(format!("{file}: {e}")))?;
    let len = src.file_len();
    if len > MAX_FILE_BYTES {
        return Err(OnnxError(format!(
            "{file}: {len} bytes, more than the {MAX_FILE_BYTES} an ONNX file may have"
        )));
    }
    let model = proto::decode_model(&mut src, len)
        .map_err(|e| OnnxError(format!("{file}: not a readable ONNX model: {}", e.0)))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    from_model(&model, &file, &name, opts)
}

/// Maps a decoded model to a graph. `file` names it in errors; `name` is the graph's name.
pub fn from_model(
    m: &proto::Model,
    file: &str,
    name: &str,
    opts: &Options,
) -> Result<Loaded, OnnxError> {
    let opset = m
        .opset_import
        .iter()
        .find(|(d, _)| d.is_empty() || d == "ai.onnx")
        .map(|&(_, v)| v)
        .ok_or_else(|| OnnxError(format!("{file}: imports no default ONNX opset")))?;
    // Opsets count from 1 (ONNX's first release); a newer one than the reader knows is
    // read by the latest rules it has.
    if opset < 1 {
        return Err(OnnxError(format!(
            "{file}: imports opset {opset}: ONNX's opsets count from 1"
        )));
    }
    let mut cx = Cx {
        file,
        opset,
        opts,
        vals: HashMap::new(),
        uses: HashMap::new(),
        graph: GraphBuilder::new(name, Vec::new()).build(),
        shapes: Vec::new(),
        notes: Notes::default(),
        pending_matmul: HashMap::new(),
        training_export: false,
        names: HashMap::new(),
        param_nodes: HashMap::new(),
        wholes: whole::by_params(&m.graph.initializers),
        declared: m
            .graph
            .value_info
            .iter()
            .filter_map(|v| Some((v.name.clone(), v.shape.clone()?)))
            .collect(),
    };
    cx.run(&m.graph, name)?;
    let Cx { graph, notes, .. } = cx;
    Ok(Loaded {
        graph,
        notes: notes.sentences(opts, opset),
        opset,
    })
}

/// What a tensor name stands for while the nodes are read.
#[derive(Debug, Clone)]
enum Val {
    /// An activation: the output of a graph node.
    Act(NodeId),
    /// An initializer or constant: dims and (when small) values.
    Const {
        name: String,
        dims: Vec<i64>,
        values: Option<Values>,
    },
    /// An integer vector computed from shapes; `None` is the batch size.
    Ints(Vec<Option<i64>>),
    /// Anything else the model computes off the activation path (buffer updates,
    /// masks); reading it into an activation is unsupported.
    Other,
    /// `Sigmoid(x)` or `HardSigmoid(x)` not yet placed: multiplied by `x` itself it is
    /// PyTorch's SiLU or Hardswish (how the exporters write them); any other use places
    /// it as its own layer.
    Gate {
        kind: Activation,
        x: NodeId,
        /// The activation tensor it reads, and the node's name.
        input: String,
        name: String,
    },
    /// `x.reshape(B, C, H * W)` of a feature map, to become tokens once transposed.
    Flat(NodeId),
    /// MaxViT's `SwapAxes(-2, -3)` of an activation, waiting for the `WindowDepartition`
    /// that says what it was for.
    Swapped(NodeId),
    /// `x.reshape(-1)`, batch and all: how the dynamo exporter begins an `as_strided`
    /// view (a `Gather` of computed positions), here of `x` in its own layout.
    Strided(NodeId),
    /// `channel_shuffle` halfway: viewed as `[B, groups, C / groups, H, W]`, then
    /// transposed.
    Shuffle {
        x: NodeId,
        groups: usize,
        transposed: bool,
    },
    /// A parameter broadcast over the batch (`class_token.expand(B, -1, -1)`).
    Expanded { name: String, dims: Vec<i64> },
    /// torch's decomposition of `adaptive_avg_pool2d` under way: the map `x` with its
    /// planes transposed first, then (`gathered`) its windows gathered, then (`moved`)
    /// the window dimensions moved last, for a mean.
    Windows {
        x: NodeId,
        gathered: bool,
        moved: bool,
    },
    /// GELU's erf form, halfway ([`transformer::ErfStage`]).
    Erf {
        x: NodeId,
        stage: transformer::ErfStage,
        input: String,
    },
    /// Stochastic depth's noise, `[B, 1, 1, 1]` (`row`) or `[1, 1, 1, 1]`, with the
    /// survival rate once `Less` gave it.
    Noise { row: bool, keep: Option<f64> },
    /// Inside an `nn.MultiheadAttention`.
    Attn(Box<transformer::AttnVal>),
    /// The parts of `SplitToSequence`: (input, first channel, channels).
    Seq { parts: Vec<(NodeId, usize, usize)> },
}

impl Val {
    /// Computed from the image (directly or halfway through a pattern).
    fn is_flow(&self) -> bool {
        match self {
            Val::Act(_)
            | Val::Gate { .. }
            | Val::Flat(_)
            | Val::Swapped(_)
            | Val::Strided(_)
            | Val::Shuffle { .. }
            | Val::Erf { .. }
            | Val::Attn(_)
            | Val::Windows { .. }
            | Val::Seq { .. } => true,
            Val::Const { .. }
            | Val::Ints(_)
            | Val::Other
            | Val::Expanded { .. }
            | Val::Noise { .. } => false,
        }
    }
}

#[derive(Default)]
struct Notes {
    /// Outputs besides the logits, planned as auxiliary classifiers.
    aux: usize,
    relu_inplace: usize,
    add_inplace: usize,
    add_total: usize,
    /// Convolutions with a folded BatchNorm: with the bias folding made...
    folded_bn: usize,
    /// ...and without one (an untrained model's all-zero bias, dropped by the optimiser).
    folded_bn_zero_bias: usize,
    /// Parameters the restored BatchNorm layers add to the file's.
    folded_bn_params: u128,
    bn_training: usize,
    bn_eval: usize,
    dropout_training: usize,
    dropout_eval: usize,
    linear_no_bias: usize,
    linear_no_bias_features: u128,
    /// Convolutions over 1x1 maps (squeeze-and-excitation) without a bias in the file.
    pooled_conv_no_bias: usize,
    pooled_conv_no_bias_params: u128,
    /// Initializers that more than one layer reads as a parameter.
    shared_params: usize,
    batch: Option<String>,
    fixed_batch: Option<i64>,
}

impl Notes {
    fn sentences(&self, opts: &Options, opset: i64) -> Vec<String> {
        let mut v = Vec::new();
        match (&self.batch, self.fixed_batch) {
            (Some(p), _) => v.push(format!(
                "opset {opset}; the batch dimension `{p}` is symbolic: planned with --batch-size"
            )),
            (None, Some(n)) => v.push(format!(
                "opset {opset}; the file fixes the batch at {n}: planned with --batch-size instead"
            )),
            _ => {}
        }
        if opset > NEWEST_OPSET {
            v.push(format!(
                "opset {opset} is newer than the {NEWEST_OPSET} this reader was written for: its \
                 ops are read by opset {NEWEST_OPSET}'s rules"
            ));
        }
        if self.aux > 0 {
            v.push(format!(
                "the graph has {} outputs besides the logits: planned as auxiliary classifiers \
                 trained with 0.3 x their loss (torchvision's GoogLeNet and Inception v3 \
                 recipe); export with aux_logits=False if the model has none",
                self.aux
            ));
        }
        let folded = self.folded_bn + self.folded_bn_zero_bias;
        if folded > 0 {
            let how = match (self.folded_bn, self.folded_bn_zero_bias) {
                (_, 0) => "carry a bias the exporter made by folding a BatchNorm into them".into(),
                (0, _) => "have no bias and no BatchNorm after them: the exporter folded a \
                           BatchNorm into each and dropped the all-zero bias (an untrained \
                           model's)"
                    .to_string(),
                (b, z) => format!(
                    "had a BatchNorm folded into them by the exporter ({b} carry the folded \
                     bias, {z} lost it as all zeros)"
                ),
            };
            if opts.restore_bn {
                v.push(format!(
                    "{folded} convolutions {how}: planned as Conv2d(bias=False) + BatchNorm2d, \
                     as torchvision builds them ({} parameters more than the file holds); \
                     --onnx-bn folded plans the file as it is",
                    self.folded_bn_params
                ));
            } else {
                v.push(format!(
                    "{folded} convolutions {how}: planned as exported, without those BatchNorm \
                     layers ({} parameters and their running statistics fewer than the model \
                     trains); export with dynamo=True, optimize=False or \
                     training=TrainingMode.TRAINING to keep them",
                    self.folded_bn_params
                ));
            }
        }
        if self.bn_eval > 0 {
            v.push(format!(
                "{} BatchNormalization nodes were exported in inference form (training_mode 0): \
                 planned as training BatchNorm2d",
                self.bn_eval
            ));
        }
        if self.bn_training + self.dropout_training == 0 {
            v.push(
                "no BatchNormalization or Dropout node says the file was exported in training \
                 mode: if it is an eval export, the exporter dropped the model's Dropout layers \
                 (and auxiliary heads) and they are not planned"
                    .into(),
            );
        }
        if self.dropout_eval > 0 {
            v.push(format!(
                "{} Dropout nodes were exported for inference: planned as training Dropout",
                self.dropout_eval
            ));
        }
        if self.linear_no_bias > 0 {
            v.push(format!(
                "{} Linear layers have no bias in the file ({} parameters): if the model has \
                 them, the exporter dropped them (the dynamo exporter's optimiser removes \
                 all-zero biases, and torchvision initialises some to zero); export with \
                 optimize=False to keep them",
                self.linear_no_bias, self.linear_no_bias_features
            ));
        }
        if self.pooled_conv_no_bias > 0 {
            v.push(format!(
                "{} convolutions over 1x1 maps (squeeze-and-excitation) have no bias in the file \
                 ({} parameters): planned without one and without a BatchNorm; if the model \
                 has them, the exporter dropped them (torchvision zero-initialises those biases \
                 and the dynamo exporter's optimiser removes all-zero ones); export with \
                 optimize=False to keep them",
                self.pooled_conv_no_bias, self.pooled_conv_no_bias_params
            ));
        }
        if self.shared_params > 0 {
            v.push(format!(
                "{} weights are read by more than one layer: planned as one parameter per \
                 layer (the dynamo exporter's optimiser merges identical initializers, such as \
                 an untrained model's equal biases; a model that really ties weights has fewer \
                 parameters)",
                self.shared_params
            ));
        }
        if self.relu_inplace > 0 || self.add_inplace > 0 {
            v.push(format!(
                "ONNX has no in-place ops: assumed torchvision's ReLU(inplace=True) ({} ReLU) \
                 and `out += identity` ({} of {} adds); --onnx-inplace none if the model uses \
                 F.relu and `x + y`",
                self.relu_inplace, self.add_inplace, self.add_total
            ));
        }
        v
    }
}

struct Cx<'a> {
    file: &'a str,
    opset: i64,
    opts: &'a Options,
    vals: HashMap<String, Val>,
    /// The op types of the nodes that read each tensor name (`output` for a graph output).
    uses: HashMap<String, Vec<String>>,
    graph: Graph,
    /// Each node's per-image output shape (empty where it does not infer).
    shapes: Vec<Shape>,
    notes: Notes,
    /// MatMul outputs mapped to a bias-less Linear, which an Add of a vector may complete.
    pending_matmul: HashMap<String, NodeId>,
    /// The file is a training-mode export (BatchNorm never folded).
    training_export: bool,
    /// Layer names given so far (parameter names must be unique).
    names: HashMap<String, usize>,
    /// Parameters used as values (`Op::Param`), by initializer name.
    param_nodes: HashMap<String, NodeId>,
    /// Modules planned whole, told by their parameters ([`whole::by_params`]).
    wholes: HashMap<String, whole::Whole>,
    /// The shapes the file declares for intermediate tensors (`value_info`), by name.
    declared: HashMap<String, Vec<proto::Dim>>,
}

/// A constant input: its name, dims and (when small) values.
type ConstInput = (String, Vec<i64>, Option<Values>);

fn ints_of(v: &Values) -> Vec<i64> {
    match v {
        Values::Ints(v) => v.clone(),
        Values::Floats(v) => v.iter().map(|&f| f as i64).collect(),
    }
}

fn floats_of(v: &Values) -> Vec<f64> {
    match v {
        Values::Ints(v) => v.iter().map(|&i| i as f64).collect(),
        Values::Floats(v) => v.clone(),
    }
}

/// A module path from a TorchScript node name: `/layer1/layer1.0/relu/Relu` ->
/// `layer1.0.relu`; dynamo names (`node_relu_2`) are kept.
fn module_path(node_name: &str) -> Option<String> {
    if !node_name.starts_with('/') {
        return None;
    }
    let comps: Vec<&str> = node_name.split('/').filter(|c| !c.is_empty()).collect();
    if comps.len() < 2 {
        return None;
    }
    let mut path: Vec<String> = Vec::new();
    for c in &comps[..comps.len() - 1] {
        match path.last_mut() {
            Some(last) if c.starts_with(&format!("{last}.")) => *last = c.to_string(),
            _ => path.push(c.to_string()),
        }
    }
    Some(path.join("."))
}

impl Cx<'_> {
    fn push(&mut self, name: String, op: Op, inputs: &[NodeId]) -> NodeId {
        // Shapes as the nodes come, for Shape and Reshape (an error here is reported by
        // the graph's own inference at the end).
        let ins: Vec<&Shape> = inputs.iter().filter_map(|&i| self.shapes.get(i)).collect();
        let out = op.output_shape(&ins).unwrap_or_default();
        self.shapes.push(out);
        self.graph.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
        });
        self.graph.nodes.len() - 1
    }

    fn readers(&self, tensor: &str) -> usize {
        self.uses.get(tensor).map_or(0, Vec::len)
    }

    fn fail(&self, n: &proto::Node, msg: impl fmt::Display) -> OnnxError {
        OnnxError(format!(
            "{}: node `{}` ({} opset {}): {msg}",
            self.file, n.name, n.op_type, self.opset
        ))
    }

    fn unsupported(&self, n: &proto::Node, why: &str) -> OnnxError {
        // An op the reader knows, refused for how it is used, lists no other ops.
        let known = (n.domain.is_empty() || n.domain == "ai.onnx")
            && SUPPORTED_OPS.contains(&n.op_type.as_str());
        let list = if known {
            String::new()
        } else {
            format!("; supported ops: {}", SUPPORTED_OPS.join(", "))
        };
        OnnxError(format!(
            "{}: node `{}`: op {}{} (opset {}) {why}{list}",
            self.file,
            n.name,
            if n.domain.is_empty() || n.domain == "ai.onnx" {
                String::new()
            } else {
                format!("{}::", n.domain)
            },
            n.op_type,
            self.opset,
        ))
    }

    fn run(&mut self, g: &proto::Graph, name: &str) -> Result<(), OnnxError> {
        for n in &g.nodes {
            // Shape and CastLike read only an activation's shape or dtype.
            // A training-mode export keeps every BatchNorm (training_mode, or the running
            // statistics as extra outputs): nothing was folded into a convolution.
            if n.op_type == "BatchNormalization"
                && (n.attr("training_mode").and_then(|a| a.i).unwrap_or(0) != 0
                    || n.outputs.len() > 1)
            {
                self.training_export = true;
            }
            if matches!(n.op_type.as_str(), "Shape" | "CastLike" | "Size") {
                continue;
            }
            for i in &n.inputs {
                self.uses
                    .entry(i.clone())
                    .or_default()
                    .push(n.op_type.clone());
            }
        }
        for o in &g.outputs {
            self.uses
                .entry(o.name.clone())
                .or_default()
                .push("output".into());
        }
        for t in &g.initializers {
            self.vals.insert(
                t.name.clone(),
                Val::Const {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    values: t.values.clone(),
                },
            );
        }
        // Parameters shared between layers (merged initializers, or tied weights).
        let mut param_uses: HashMap<&str, usize> = HashMap::new();
        let data_types: HashMap<&str, i32> = g
            .initializers
            .iter()
            .map(|t| (t.name.as_str(), t.data_type))
            .collect();
        for n in &g.nodes {
            let params = match n.op_type.as_str() {
                "Conv" | "Gemm" => 1..3,
                "MatMul" => 1..2,
                "BatchNormalization" => 1..5,
                "LayerNormalization" => 1..3,
                _ => continue,
            };
            for i in params {
                if let Some(name) = n.inputs.get(i) {
                    if matches!(self.vals.get(name), Some(Val::Const { .. })) {
                        *param_uses.entry(name.as_str()).or_default() += 1;
                    }
                    // A weight is planned as float32: one stored as anything else (a
                    // model exported after .half(), integers) is refused, not resized.
                    if let Some(&t) = data_types.get(name.as_str()) {
                        if t != proto::FLOAT {
                            return Err(self.fail(
                                n,
                                format!(
                                    "weight `{name}` is stored as {}, not float32: export the \
                                     float32 model (vramlab plans precision with --precision)",
                                    proto::dtype_name(t)
                                ),
                            ));
                        }
                    }
                }
            }
        }
        self.notes.shared_params = param_uses.values().filter(|&&c| c > 1).count();
        // The image input: the one graph input that is not an initializer.
        let inputs: Vec<&proto::ValueInfo> = g
            .inputs
            .iter()
            .filter(|v| !self.vals.contains_key(&v.name))
            .collect();
        let input = match inputs.as_slice() {
            [one] => *one,
            _ => {
                return Err(OnnxError(format!(
                    "{}: expected one image input, the graph has {} ({})",
                    self.file,
                    inputs.len(),
                    inputs
                        .iter()
                        .map(|v| v.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
            }
        };
        if !matches!(input.elem_type, proto::FLOAT | 0) {
            return Err(OnnxError(format!(
                "{}: input `{}` is {}, expected float32 images",
                self.file,
                input.name,
                proto::dtype_name(input.elem_type)
            )));
        }
        let dims = input.shape.clone().unwrap_or_default();
        let chw: Option<Shape> = match dims.as_slice() {
            [_, c, h, w] => [c, h, w]
                .iter()
                .map(|d| match d {
                    Dim::Value(v) if *v > 0 => usize::try_from(*v).ok(),
                    _ => None,
                })
                .collect(),
            _ => None,
        };
        let Some(chw) = chw else {
            return Err(OnnxError(format!(
                "{}: input `{}` has shape {}, expected [batch, C, H, W] with fixed C, H, W",
                self.file,
                input.name,
                fmt_dims(&dims)
            )));
        };
        match &dims[0] {
            Dim::Param(p) => self.notes.batch = Some(p.clone()),
            Dim::Value(v) if *v >= 1 => self.notes.fixed_batch = Some(*v),
            Dim::Value(v) => {
                return Err(OnnxError(format!(
                    "{}: input `{}` has a batch dimension of {v}: a batch is at least 1 (or \
                     symbolic)",
                    self.file, input.name
                )))
            }
            Dim::Unknown => self.notes.batch = Some("?".into()),
        }
        let _ = name;
        self.shapes = vec![chw.clone()];
        self.graph.input_shape = chw;
        self.vals.insert(input.name.clone(), Val::Act(0));

        // ONNX lists nodes in topological order, each value written once: a node that
        // reads what nothing before it wrote (a dangling name, a cycle) or writes a
        // value again is a broken file, named here rather than as a missing output.
        let mut written: HashSet<&str> = g.inputs.iter().map(|v| v.name.as_str()).collect();
        written.extend(g.initializers.iter().map(|t| t.name.as_str()));
        for n in &g.nodes {
            if let Some(i) = n
                .inputs
                .iter()
                .find(|i| !i.is_empty() && !written.contains(i.as_str()))
            {
                return Err(self.fail(
                    n,
                    format!(
                        "reads `{i}`, which no node before it, initializer or graph input \
                         writes (ONNX lists nodes in topological order)"
                    ),
                ));
            }
            for o in n.outputs.iter().filter(|o| !o.is_empty()) {
                if !written.insert(o.as_str()) {
                    return Err(self.fail(n, format!("writes `{o}`, which was written before")));
                }
            }
        }

        // The nodes of a module planned as one layer are gathered until the graph
        // leaves it (constants written anywhere do not end the module).
        let mut group: Option<(String, whole::Whole, Vec<&proto::Node>)> = None;
        for n in &g.nodes {
            let w = self.whole_of(n);
            if let Some((path, _, members)) = &mut group {
                // The TorchScript exporter writes some of a module's nodes (its in-place
                // index assignments) without a scope: they read the module's values.
                let unscoped = w.is_none()
                    && whole::scopes(n).is_empty()
                    && n.inputs
                        .iter()
                        .any(|i| members.iter().any(|m| m.outputs.iter().any(|o| o == i)));
                if unscoped || w.as_ref().is_some_and(|(p, _)| p == path) {
                    members.push(n);
                    continue;
                }
                if n.op_type == "Constant" {
                    self.node(n)?;
                    continue;
                }
                if let Some((path, kind, members)) = group.take() {
                    self.whole(&path, kind, &members)?;
                }
            }
            if let Some((path, kind)) = w {
                group = Some((path, kind, vec![n]));
                continue;
            }
            self.node(n)?;
        }
        if let Some((path, kind, members)) = group.take() {
            self.whole(&path, kind, &members)?;
        }
        // A model ending in a Sigmoid: the gate is its last layer.
        for o in &g.outputs {
            if let Some(Val::Gate { kind, x, name, .. }) = self.vals.get(&o.name).cloned() {
                let id = self.push(name, Op::act(kind, false), &[x]);
                self.vals.insert(o.name.clone(), Val::Act(id));
            }
        }
        // The model's output must be the last layer (the logits).
        let out = g
            .outputs
            .iter()
            .find_map(|o| match self.vals.get(&o.name) {
                Some(Val::Act(id)) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| {
                OnnxError(format!(
                    "{}: no graph output is computed from the input image",
                    self.file
                ))
            })?;
        let last = self.graph.nodes.len() - 1;
        if out != last || last == 0 {
            return Err(OnnxError(format!(
                "{}: the graph's output is not its last layer; vramlab plans models whose \
                 forward ends in the logits",
                self.file
            )));
        }
        // More outputs computed from the image: auxiliary classifiers (GoogLeNet's and
        // Inception v3's in training mode), in the order they run.
        let mut aux: Vec<NodeId> = g
            .outputs
            .iter()
            .filter_map(|o| match self.vals.get(&o.name) {
                Some(Val::Act(id)) if *id != out => Some(*id),
                _ => None,
            })
            .collect();
        aux.sort_unstable();
        aux.dedup();
        // An auxiliary classifier gives logits like the model's: another output (a
        // feature map) is no loss vramlab can plan.
        let logits = self.shape_of(out);
        if let Some(&odd) = aux.iter().find(|&&a| self.shape_of(a) != logits) {
            return Err(OnnxError(format!(
                "{}: the output of `{}` is {}, not logits like the model's {}: vramlab plans \
                 extra outputs as auxiliary classifiers (GoogLeNet's), trained with 0.3 x \
                 their loss",
                self.file,
                self.graph.nodes[odd].name,
                vramlab_graph::fmt_shape(&self.shape_of(odd)),
                vramlab_graph::fmt_shape(&logits)
            )));
        }
        self.notes.aux = aux.len();
        self.graph.aux = aux;
        self.graph.param_order = param_order(&self.graph, &g.initializers);
        Ok(())
    }

    /// What a `Shape` node gives of a tensor of (full) shape `v`: its `start` and `end`
    /// (opset 15), negative from the end, clamped.
    fn shape_val(&self, n: &proto::Node, v: Vec<Option<i64>>) -> Val {
        let len = v.len() as i64;
        let clamp = |i: i64| (if i < 0 { i + len } else { i }).clamp(0, len) as usize;
        let start = clamp(self.int_attr(n, "start", 0));
        let end = clamp(self.int_attr(n, "end", len));
        Val::Ints(if start < end {
            v[start..end].to_vec()
        } else {
            Vec::new()
        })
    }

    fn act(&self, n: &proto::Node, i: usize) -> Result<NodeId, OnnxError> {
        match n.inputs.get(i).and_then(|s| self.vals.get(s)) {
            Some(Val::Act(id)) => Ok(*id),
            _ => Err(self.fail(n, format!("input {i} is not computed from the image"))),
        }
    }

    /// A constant input: (name, dims, values).
    fn konst(&self, n: &proto::Node, i: usize) -> Result<Option<ConstInput>, OnnxError> {
        let Some(s) = n.inputs.get(i).filter(|s| !s.is_empty()) else {
            return Ok(None);
        };
        match self.vals.get(s) {
            Some(Val::Const { name, dims, values }) => {
                Ok(Some((name.clone(), dims.clone(), values.clone())))
            }
            Some(Val::Ints(v)) if v.iter().all(|x| x.is_some()) => Ok(Some((
                s.clone(),
                vec![v.len() as i64],
                Some(Values::Ints(v.iter().map(|x| x.unwrap_or(0)).collect())),
            ))),
            _ => Err(self.fail(n, format!("input {i} (`{s}`) must be a constant or weight"))),
        }
    }

    /// A parameter input: the initializer's name, or None when the input is absent or
    /// computed (dynamo writes a bias-less conv's bias as an expanded zero).
    fn param(&self, n: &proto::Node, i: usize) -> Option<String> {
        let s = n.inputs.get(i).filter(|s| !s.is_empty())?;
        match self.vals.get(s) {
            Some(Val::Const { name, .. }) if !name.is_empty() => Some(name.clone()),
            _ => None,
        }
    }

    fn weight_dims(
        &self,
        n: &proto::Node,
        i: usize,
        rank: usize,
    ) -> Result<(String, Vec<usize>), OnnxError> {
        let (name, dims, _) = self
            .konst(n, i)?
            .ok_or_else(|| self.fail(n, format!("missing input {i}")))?;
        if dims.len() != rank || dims.iter().any(|&d| d <= 0) {
            return Err(self.fail(
                n,
                format!("weight `{name}` has dims {dims:?}, expected {rank} positive sizes"),
            ));
        }
        let dims = dims
            .iter()
            .map(|&d| usize::try_from(d).map_err(|_| self.fail(n, "dimension too large")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((name, dims))
    }

    /// Inputs `inputs` of `n`, where given as weights, are vectors of `len` (a bias, a
    /// BatchNorm's shift and statistics): a file whose sizes say otherwise is broken,
    /// or (a Gemm's broadcast scalar bias) no layer vramlab plans.
    fn check_vectors(
        &self,
        n: &proto::Node,
        inputs: std::ops::Range<usize>,
        len: usize,
    ) -> Result<(), OnnxError> {
        for i in inputs {
            if self.param(n, i).is_none() {
                continue;
            }
            if let Some((name, dims, _)) = self.konst(n, i)? {
                if dims.len() != 1 || dims[0] != len as i64 {
                    return Err(self.fail(
                        n,
                        format!(
                            "`{name}` has dims {dims:?}, expected [{len}] (one per output channel \
                             or feature)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// A layer name, unique: the PyTorch module path where the file keeps it.
    fn layer_name(&mut self, n: &proto::Node, weight: Option<&str>) -> String {
        let from_weight = weight
            .and_then(|w| w.strip_suffix(".weight"))
            .map(str::to_string);
        let base = from_weight
            .or_else(|| module_path(&n.name))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| {
                if n.name.is_empty() {
                    n.op_type.to_lowercase()
                } else {
                    n.name.clone()
                }
            });
        self.unique(base)
    }

    /// `base`, or `base_k` if it was given before.
    fn unique(&mut self, base: String) -> String {
        let count = self.names.entry(base.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            base
        } else {
            format!("{base}_{}", *count - 1)
        }
    }

    fn int_attr(&self, n: &proto::Node, a: &str, default: i64) -> i64 {
        n.attr(a).and_then(|a| a.i).unwrap_or(default)
    }

    fn pair_attr(
        &self,
        n: &proto::Node,
        a: &str,
        default: usize,
    ) -> Result<(usize, usize), OnnxError> {
        match n.attr(a) {
            None => Ok((default, default)),
            Some(at) => match at.ints.as_slice() {
                [h, w] if *h >= 0 && *w >= 0 => Ok((*h as usize, *w as usize)),
                v => Err(self.fail(n, format!("`{a}` is {v:?}, expected 2 values"))),
            },
        }
    }

    fn pads(&self, n: &proto::Node) -> Result<(usize, usize), OnnxError> {
        if let Some(p) = n.attr("auto_pad").and_then(|a| a.s.as_deref()) {
            if p != "NOTSET" && p != "VALID" {
                return Err(self.fail(n, format!("auto_pad {p} is not supported")));
            }
            // The spec: pads "cannot be used simultaneously with auto_pad".
            if p == "VALID"
                && n.attr("pads")
                    .is_some_and(|a| a.ints.iter().any(|&v| v != 0))
            {
                return Err(self.fail(
                    n,
                    "auto_pad VALID (no padding) with explicit pads: the spec allows one or the \
                     other",
                ));
            }
        }
        match n.attr("pads").map(|a| a.ints.as_slice()) {
            None => Ok((0, 0)),
            Some([t, l, b, r]) if t == b && l == r && *t >= 0 && *l >= 0 => {
                Ok((*t as usize, *l as usize))
            }
            Some(v) => Err(self.fail(
                n,
                format!("pads {v:?}: only symmetric 2-D padding maps to a PyTorch layer"),
            )),
        }
    }

    fn set_out(&mut self, n: &proto::Node, v: Val) {
        if let Some(o) = n.outputs.first() {
            self.vals.insert(o.clone(), v);
        }
        for o in n.outputs.iter().skip(1) {
            self.vals.insert(o.clone(), Val::Other);
        }
    }

    fn add_op(&mut self, n: &proto::Node, name: String, op: Op, inputs: &[NodeId]) -> NodeId {
        let id = self.push(name, op, inputs);
        self.set_out(n, Val::Act(id));
        id
    }

    /// Whether an in-place activation may overwrite node `x`'s output: not where `x`'s
    /// own backward reads it (ReLU, Sigmoid, Tanh keep their result), which PyTorch
    /// refuses at backward, so the model behind the file ran it out of place.
    fn overwritable(&self, x: NodeId) -> bool {
        let Op::Act { kind, .. } = &self.graph.nodes[x].op else {
            return true;
        };
        kind.record().saves != vramlab_graph::act::Saves::Result
    }

    /// The attributes this reader reads have the types the ONNX spec gives them
    /// (onnx's checker refuses others): one of another type was read as absent, its
    /// default planned (a FLOAT ceil_mode as floor mode).
    fn check_attribute_types(&self, n: &proto::Node) -> Result<(), OnnxError> {
        const INT: &[&str] = &[
            "axis",
            "ceil_mode",
            "count_include_pad",
            "group",
            "keepdims",
            "num_outputs",
            "training_mode",
            "transA",
            "transB",
            "noop_with_empty_axes",
            "to",
        ];
        const FLOAT: &[&str] = &["alpha", "beta", "epsilon", "momentum", "ratio"];
        const INTS: &[&str] = &["dilations", "kernel_shape", "pads", "perm", "strides"];
        const STRING: &[&str] = &["approximate", "auto_pad"];
        for a in &n.attributes {
            let name = a.name.as_str();
            let (ok, want) = if INT.contains(&name) {
                (a.i.is_some(), "an INT")
            } else if FLOAT.contains(&name) {
                (a.f.is_some(), "a FLOAT")
            } else if INTS.contains(&name) {
                (
                    a.floats.is_empty() && a.i.is_none() && a.f.is_none(),
                    "INTS",
                )
            } else if STRING.contains(&name) {
                (a.s.is_some(), "a STRING")
            } else {
                (true, "")
            };
            if !ok {
                return Err(self.fail(
                    n,
                    format!("attribute `{name}` is not {want}, as the ONNX spec has it"),
                ));
            }
        }
        Ok(())
    }

    fn node(&mut self, n: &proto::Node) -> Result<(), OnnxError> {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(self.unsupported(n, "is not in the default ONNX domain"));
        }
        self.check_attribute_types(n)?;
        let has_act = n
            .inputs
            .iter()
            .any(|i| self.vals.get(i).is_some_and(Val::is_flow));
        if self.pattern(n, has_act)? {
            return Ok(());
        }
        match n.op_type.as_str() {
            "Constant" => {
                let t = n.attr("value").and_then(|a| a.t.clone());
                let v = if let Some(t) = t {
                    // Unnamed: a Constant node is never a parameter.
                    Val::Const {
                        name: String::new(),
                        dims: t.dims,
                        values: t.values,
                    }
                } else if let Some(a) = n.attr("value_ints") {
                    Val::Ints(a.ints.iter().map(|&i| Some(i)).collect())
                } else if let Some(i) = n.attr("value_int").and_then(|a| a.i) {
                    Val::Const {
                        name: String::new(),
                        dims: vec![],
                        values: Some(Values::Ints(vec![i])),
                    }
                } else if let Some(f) = n.attr("value_float").and_then(|a| a.f) {
                    Val::Const {
                        name: String::new(),
                        dims: vec![],
                        values: Some(Values::Floats(vec![f as f64])),
                    }
                } else {
                    Val::Other
                };
                self.set_out(n, v);
                return Ok(());
            }
            "Shape" if has_act => {
                let x = self.act(n, 0)?;
                let shape = self.shape_of(x);
                let mut v: Vec<Option<i64>> = vec![None];
                v.extend(shape.iter().map(|&d| Some(d as i64)));
                let v = self.shape_val(n, v);
                self.set_out(n, v);
                return Ok(());
            }
            // Casts keep what their first input is; CastLike's second input only lends
            // its dtype.
            "Identity" | "Cast" | "CastLike" => {
                let v = n.inputs.first().and_then(|i| self.vals.get(i)).cloned();
                self.set_out(n, v.unwrap_or(Val::Other));
                return Ok(());
            }
            "Gather" | "Unsqueeze" | "Squeeze" | "Concat" | "Reshape" if !has_act => {
                let v = self.int_arith(n);
                self.set_out(n, v);
                return Ok(());
            }
            _ if !has_act => {
                // Computed from weights and constants only (buffer updates, a zero bias,
                // shape arithmetic): nothing the image goes through, and no parameter
                // (parameters are initializers).
                self.set_out(n, Val::Other);
                return Ok(());
            }
            _ => {}
        }
        if n.op_type != "Mul" {
            self.place_gates(n);
        }
        self.layer(n)
    }

    /// Places the deferred Sigmoid/HardSigmoid gates `n` reads as layers of their own.
    fn place_gates(&mut self, n: &proto::Node) {
        for i in n.inputs.clone() {
            if let Some(Val::Gate { kind, x, name, .. }) = self.vals.get(&i).cloned() {
                let id = self.push(name, Op::act(kind, false), &[x]);
                self.vals.insert(i, Val::Act(id));
            }
        }
    }

    /// Shape arithmetic: Gather, Unsqueeze, Squeeze, Concat, Slice on integer vectors.
    fn int_arith(&self, n: &proto::Node) -> Val {
        let get = |i: usize| self.int_input(n, i);
        let out = match n.op_type.as_str() {
            "Gather" => get(0).zip(get(1)).and_then(|(data, idx)| {
                idx.iter()
                    .map(|i| {
                        let i = (*i)?;
                        let i = if i < 0 { i + data.len() as i64 } else { i };
                        usize::try_from(i).ok().and_then(|i| data.get(i).copied())
                    })
                    .collect::<Option<Vec<_>>>()
            }),
            "Unsqueeze" | "Squeeze" | "Reshape" => get(0),
            "Concat" => {
                let mut all = Vec::new();
                for i in 0..n.inputs.len().min(proto::MAX_DIMS) {
                    match get(i) {
                        Some(v) => all.extend(v),
                        None => return Val::Other,
                    }
                }
                (n.inputs.len() <= proto::MAX_DIMS).then_some(all)
            }
            _ => None,
        };
        out.filter(|v| v.len() <= proto::MAX_DIMS)
            .map(Val::Ints)
            .unwrap_or(Val::Other)
    }

    fn shape_of(&self, id: NodeId) -> Shape {
        self.shapes.get(id).cloned().unwrap_or_default()
    }

    fn layer(&mut self, n: &proto::Node) -> Result<(), OnnxError> {
        let op = n.op_type.as_str();
        match op {
            "Conv" => {
                let x = self.act(n, 0)?;
                let (wname, w) = self.weight_dims(n, 1, 4)?;
                // kernel_shape, where given, is the weight's: one that says otherwise is
                // a broken file, not a kernel to plan.
                if let Some(k) = n.attr("kernel_shape").map(|a| a.ints.clone()) {
                    if k.len() != 2 || k[0] != w[2] as i64 || k[1] != w[3] as i64 {
                        return Err(self.fail(
                            n,
                            format!(
                                "kernel_shape {k:?} does not match the weight `{wname}`'s \
                                 {}x{}",
                                w[2], w[3]
                            ),
                        ));
                    }
                }
                let bias = self.param(n, 2);
                self.check_vectors(n, 2..3, w[0])?;
                let group = self.int_attr(n, "group", 1);
                let group = usize::try_from(group)
                    .ok()
                    .filter(|&g| g > 0)
                    .ok_or_else(|| self.fail(n, format!("group {group}")))?;
                let conv = Conv2d {
                    in_channels: w[1]
                        .checked_mul(group)
                        .ok_or_else(|| self.fail(n, "channels overflow"))?,
                    out_channels: w[0],
                    kernel_size: (w[2], w[3]),
                    stride: self.pair_attr(n, "strides", 1)?,
                    padding: self.pads(n)?,
                    dilation: self.pair_attr(n, "dilations", 1)?,
                    groups: group,
                    bias: bias.is_some(),
                };
                // A bias that the exporter made by folding a BatchNorm: its name is not
                // `<module>.bias` next to `<module>.weight`. Without a bias, a convolution
                // that no BatchNorm reads had one folded into it whose bias was all zeros
                // (PyTorch convolutions drop their bias only before a norm layer).
                let feeds_bn = n
                    .outputs
                    .first()
                    .and_then(|o| self.uses.get(o))
                    .is_some_and(|r| r.iter().any(|op| op == "BatchNormalization"));
                let patchify = n
                    .outputs
                    .first()
                    .and_then(|o| self.uses.get(o))
                    .is_some_and(|r| r.iter().all(|op| op == "Reshape" || op == "Transpose"));
                // Squeeze-and-excitation's fc1 (over the global average pool) and fc2
                // (over fc1's activation): torchvision puts no BatchNorm there, and
                // zero-initialises those biases, which the dynamo exporter's optimiser
                // drops.
                let pooled = {
                    let nodes = &self.graph.nodes;
                    let is_pool = |j: NodeId| {
                        matches!(
                            nodes[j].op,
                            Op::AdaptiveAvgPool2d {
                                output_size: (1, 1)
                            }
                        )
                    };
                    let fc1_of = |j: NodeId| {
                        matches!(nodes[j].op, Op::Conv2d(_))
                            && nodes[j].inputs.first().is_some_and(|&k| is_pool(k))
                    };
                    is_pool(x)
                        || (matches!(nodes[x].op, Op::Act { .. })
                            && nodes[x].inputs.first().is_some_and(|&k| fc1_of(k)))
                };
                let folded = match &bias {
                    Some(bname) => match wname.strip_suffix(".weight") {
                        Some(p) => *bname != format!("{p}.bias"),
                        None => true,
                    },
                    // A pre-activation network (DenseNet) has bias-free convolutions
                    // that no BatchNorm follows; in a training export none is folded.
                    // A patch embedding (ViT's conv_proj, reshaped into tokens) has
                    // none either: its zero bias was dropped.
                    None => !feeds_bn && !self.training_export && !patchify && !pooled,
                };
                if bias.is_none() && pooled && !feeds_bn {
                    self.notes.pooled_conv_no_bias += 1;
                    self.notes.pooled_conv_no_bias_params += conv.out_channels as u128;
                }
                let weight_name = if wname.ends_with(".weight") {
                    Some(wname.as_str())
                } else {
                    None
                };
                let lname = self.layer_name(n, weight_name);
                if folded {
                    let ch = conv.out_channels as u128;
                    if conv.bias {
                        self.notes.folded_bn += 1;
                        self.notes.folded_bn_params += ch;
                    } else {
                        self.notes.folded_bn_zero_bias += 1;
                        self.notes.folded_bn_params += 2 * ch;
                    }
                }
                if folded && self.opts.restore_bn {
                    let ch = conv.out_channels;
                    let c = self.push(
                        lname.clone(),
                        Op::Conv2d(Conv2d {
                            bias: false,
                            ..conv
                        }),
                        &[x],
                    );
                    let bn_name = self.layer_name(n, Some(&format!("{lname}.bn.weight")));
                    self.add_op(n, bn_name, Op::BatchNorm2d(BatchNorm2d::new(ch)), &[c]);
                } else {
                    self.add_op(n, lname, Op::Conv2d(conv), &[x]);
                }
            }
            "BatchNormalization" => {
                let x = self.act(n, 0)?;
                let (sname, s) = self.weight_dims(n, 1, 1)?;
                self.check_vectors(n, 2..5, s[0])?;
                // float32 attributes, read back to the decimal they were written as (7
                // significant digits): 1e-5 is not 9.99999974738e-06, 1e-10 not 0.
                let decimal = |v: f64| format!("{v:.6e}").parse::<f64>().unwrap_or(v);
                let eps = decimal(n.attr("epsilon").and_then(|a| a.f).unwrap_or(1e-5) as f64);
                let m = n.attr("momentum").and_then(|a| a.f).unwrap_or(0.9);
                if !(0.0..=1.0).contains(&m) {
                    return Err(self.fail(
                        n,
                        format!(
                            "momentum {m}: expected a number between 0 and 1 (PyTorch's \
                             momentum is 1 minus it)"
                        ),
                    ));
                }
                let momentum = decimal(1.0 - decimal(m as f64));
                let training = self.int_attr(n, "training_mode", 0) != 0 || n.outputs.len() > 1;
                if training {
                    self.notes.bn_training += 1;
                } else {
                    self.notes.bn_eval += 1;
                }
                let bn = BatchNorm2d {
                    num_features: s[0],
                    eps,
                    momentum,
                    affine: true,
                    track_running_stats: true,
                };
                let name = self.layer_name(n, Some(&sname));
                self.add_op(n, name, Op::BatchNorm2d(bn), &[x]);
            }
            "Relu" | "Clip" => {
                let x = self.act(n, 0)?;
                let six = if op == "Clip" {
                    let (lo, hi) = self.clip_bounds(n)?;
                    match (lo, hi) {
                        (Some(l), Some(h)) if l == 0.0 && h == 6.0 => true,
                        (Some(0.0), None) => false,
                        _ => {
                            return Err(self.unsupported(
                                n,
                                &format!(
                                    "with bounds ({}, {}) is not supported (Clip(0, 6) is ReLU6, \
                                     Clip(0) is ReLU)",
                                    lo.map_or("none".into(), |v| v.to_string()),
                                    hi.map_or("none".into(), |v| v.to_string())
                                ),
                            ))
                        }
                    }
                } else {
                    false
                };
                let input_name = n.inputs[0].clone();
                let inplace = self.opts.inplace == Inplace::Torchvision
                    && x != 0
                    && self.readers(&input_name) == 1
                    && self.overwritable(x);
                if inplace {
                    self.notes.relu_inplace += 1;
                }
                let name = self.layer_name(n, None);
                let op = if six {
                    Op::relu6(inplace)
                } else {
                    Op::relu(inplace)
                };
                self.add_op(n, name, op, &[x]);
            }
            "MaxPool" | "AveragePool" => {
                let x = self.act(n, 0)?;
                let k = self.pair_attr(n, "kernel_shape", 0)?;
                if n.outputs.len() > 1 && self.readers(&n.outputs[1]) > 0 {
                    return Err(
                        self.unsupported(n, "with its indices output read is not supported")
                    );
                }
                let dilation = self.pair_attr(n, "dilations", 1)?;
                // PyTorch's AvgPool2d has no dilation (ONNX's AveragePool has since
                // opset 19): no layer of PyTorch's computes it.
                if op == "AveragePool" && dilation != (1, 1) {
                    return Err(self.unsupported(
                        n,
                        &format!(
                            "with dilations {dilation:?} is not supported (PyTorch's AvgPool2d \
                             has no dilation)"
                        ),
                    ));
                }
                let p = Pool2d {
                    kernel_size: k,
                    stride: self.pair_attr(n, "strides", 1)?,
                    padding: self.pads(n)?,
                    dilation,
                    ceil_mode: self.int_attr(n, "ceil_mode", 0) != 0,
                    // MaxPool2d keeps PyTorch's default; AvgPool2d says it in the file.
                    count_include_pad: op == "MaxPool"
                        || self.int_attr(n, "count_include_pad", 0) != 0,
                };
                let name = self.layer_name(n, None);
                let shape = self.shape_of(x);
                let op = if op == "MaxPool" {
                    Op::MaxPool2d(p)
                } else if p.kernel_size == (1, 1)
                    && p.stride == (1, 1)
                    && p.padding == (0, 0)
                    && shape.len() == 3
                {
                    // An identity pool: what exporters make of AdaptiveAvgPool2d(output)
                    // on a map of that size (VGG's 7x7 at 224x224).
                    Op::AdaptiveAvgPool2d {
                        output_size: (shape[1], shape[2]),
                    }
                } else {
                    Op::AvgPool2d(p)
                };
                self.add_op(n, name, op, &[x]);
            }
            "GlobalAveragePool" => {
                let x = self.act(n, 0)?;
                let name = self.layer_name(n, None);
                self.add_op(
                    n,
                    name,
                    Op::AdaptiveAvgPool2d {
                        output_size: (1, 1),
                    },
                    &[x],
                );
            }
            "ReduceMean" => {
                let x = self.act(n, 0)?;
                let axes: Vec<i64> = if self.opset >= 18 {
                    match self.konst(n, 1)? {
                        Some((_, _, Some(v))) => ints_of(&v),
                        _ => Vec::new(),
                    }
                } else {
                    n.attr("axes").map(|a| a.ints.clone()).unwrap_or_default()
                };
                let mut axes: Vec<i64> = axes
                    .iter()
                    .map(|&a| if a < 0 { a + 4 } else { a })
                    .collect();
                axes.sort_unstable();
                if axes != [2, 3] || self.shape_of(x).len() != 3 {
                    return Err(self.unsupported(
                        n,
                        &format!("over axes {axes:?} is not supported (only the spatial mean over axes [2, 3])"),
                    ));
                }
                let keep = self.int_attr(n, "keepdims", 1) != 0;
                let name = self.layer_name(n, None);
                let p = self.push(
                    name.clone(),
                    Op::AdaptiveAvgPool2d {
                        output_size: (1, 1),
                    },
                    &[x],
                );
                if keep {
                    self.set_out(n, Val::Act(p));
                } else {
                    self.add_op(n, format!("{name}.flatten"), Op::Flatten, &[p]);
                }
            }
            "Flatten" | "Reshape" | "Squeeze" => {
                let x = self.act(n, 0)?;
                let shape = self.shape_of(x);
                let numel = i64::try_from(vramlab_graph::op::numel(&shape)).unwrap_or(i64::MAX);
                let flat = match op {
                    "Flatten" => {
                        let axis = self.int_attr(n, "axis", 1);
                        if axis != 1 {
                            return Err(self.unsupported(
                                n,
                                &format!("with axis {axis} is not supported (only axis 1)"),
                            ));
                        }
                        true
                    }
                    "Squeeze" => {
                        // x.squeeze(-1).squeeze(-1) of a [C, 1, 1] map: a flatten.
                        shape.len() == 3 && shape[1] == 1 && shape[2] == 1
                            || shape.len() == 2 && shape[1] == 1
                    }
                    _ => {
                        let target: Option<Vec<Option<i64>>> =
                            match n.inputs.get(1).and_then(|s| self.vals.get(s)) {
                                Some(Val::Ints(v)) => Some(v.clone()),
                                Some(Val::Const {
                                    values: Some(v), ..
                                }) => Some(ints_of(v).into_iter().map(Some).collect()),
                                _ => None,
                            };
                        match target.as_deref() {
                            // [B, -1], [-1, F], [B, F], [0, -1]
                            Some([b, f]) => {
                                let b_ok = matches!(b, None | Some(-1) | Some(0));
                                let f_ok = *f == Some(numel) || (*f == Some(-1) && *b != Some(-1));
                                b_ok && f_ok
                            }
                            Some(t) if t.len() == shape.len() + 1 => {
                                // A reshape to its own shape.
                                t[1..]
                                    .iter()
                                    .zip(&shape)
                                    .all(|(a, &b)| *a == Some(b as i64))
                            }
                            _ => false,
                        }
                    }
                };
                if !flat {
                    return Err(self.unsupported(
                        n,
                        &format!(
                            "to this shape is not supported: only a flatten of the image \
                             features to [batch, {numel}] maps to a layer"
                        ),
                    ));
                }
                if shape.len() == 1 {
                    self.set_out(n, Val::Act(x));
                } else {
                    let name = self.layer_name(n, None);
                    self.add_op(n, name, Op::Flatten, &[x]);
                }
            }
            "Gemm" => {
                let x = self.act(n, 0)?;
                // Gemm multiplies matrices: A is [batch, features] (MatMul is the one
                // that takes any rank).
                if self.shape_of(x).len() != 1 {
                    return Err(self.fail(
                        n,
                        format!(
                            "input A is [N, {}]: Gemm takes a matrix [batch, features]",
                            vramlab_graph::fmt_shape(&self.shape_of(x))
                        ),
                    ));
                }
                if self.int_attr(n, "transA", 0) != 0 {
                    return Err(self.unsupported(n, "with transA is not supported"));
                }
                let (wname, w) = self.weight_dims(n, 1, 2)?;
                // Linear is Gemm with alpha = beta = 1 and transB 0 or 1 (the spec's
                // only values).
                for (attr, default) in [("alpha", 1.0f32), ("beta", 1.0)] {
                    let v = n.attr(attr).and_then(|a| a.f).unwrap_or(default);
                    if v != 1.0 {
                        return Err(
                            self.fail(n, format!("{attr} {v}: only 1 is read (a Linear layer's)"))
                        );
                    }
                }
                let trans_b = match self.int_attr(n, "transB", 0) {
                    0 => false,
                    1 => true,
                    t => return Err(self.fail(n, format!("transB {t}: expected 0 or 1"))),
                };
                let (out_f, in_f) = if trans_b { (w[0], w[1]) } else { (w[1], w[0]) };
                let bias = self.param(n, 2).is_some();
                self.check_vectors(n, 2..3, out_f)?;
                let name = self.layer_name(n, Some(&wname));
                let id = self.add_op(
                    n,
                    name,
                    Op::Linear(Linear {
                        in_features: in_f,
                        out_features: out_f,
                        bias,
                    }),
                    &[x],
                );
                if let (false, Some(o)) = (bias, n.outputs.first()) {
                    self.pending_matmul.insert(o.clone(), id);
                    self.notes.linear_no_bias += 1;
                    self.notes.linear_no_bias_features += out_f as u128;
                }
            }
            "MatMul" => {
                let x = self.act(n, 0)?;
                let (wname, w) = self.weight_dims(n, 1, 2)?;
                let name = self.layer_name(n, Some(&wname));
                let id = self.add_op(
                    n,
                    name,
                    Op::Linear(Linear {
                        in_features: w[0],
                        out_features: w[1],
                        bias: false,
                    }),
                    &[x],
                );
                if let Some(o) = n.outputs.first() {
                    self.pending_matmul.insert(o.clone(), id);
                    self.notes.linear_no_bias += 1;
                    self.notes.linear_no_bias_features += w[1] as u128;
                }
            }
            "Add" => {
                let acts: Vec<Option<NodeId>> = n
                    .inputs
                    .iter()
                    .map(|i| match self.vals.get(i) {
                        Some(Val::Act(id)) => Some(*id),
                        _ => None,
                    })
                    .collect();
                match acts.as_slice() {
                    [Some(a), Some(b)] => {
                        self.notes.add_total += 1;
                        let first = n.inputs[0].clone();
                        let out = n.outputs.first().cloned().unwrap_or_default();
                        // torchvision's `out += identity` before a ReLU (ResNet), and
                        // `result += input` after stochastic depth or a layer scale
                        // (EfficientNet, ConvNeXt).
                        let residual = self.uses.get(&out).map(Vec::as_slice)
                            == Some(&["Relu".to_string()][..])
                            || matches!(
                                self.graph.nodes[*a].op,
                                Op::StochasticDepth { .. } | Op::Mul
                            );
                        let inplace = self.opts.inplace == Inplace::Torchvision
                            && *a != 0
                            && self.readers(&first) == 1
                            && residual;
                        if inplace {
                            self.notes.add_inplace += 1;
                        }
                        let name = self.layer_name(n, None);
                        self.add_op(n, name, Op::Add { inplace }, &[*a, *b]);
                    }
                    [Some(a), None] | [None, Some(a)] => {
                        // MatMul + Add of a vector: the Linear's bias.
                        let src = if acts[0].is_some() {
                            &n.inputs[0]
                        } else {
                            &n.inputs[1]
                        };
                        let lin = self
                            .pending_matmul
                            .remove(src.as_str())
                            .filter(|&id| id == *a);
                        let Some(id) = lin else {
                            return Err(self.unsupported(
                                n,
                                "of a constant to an activation is not supported (only a \
                                 MatMul's bias)",
                            ));
                        };
                        if let Op::Linear(l) = &mut self.graph.nodes[id].op {
                            l.bias = true;
                            self.notes.linear_no_bias -= 1;
                            self.notes.linear_no_bias_features -= l.out_features as u128;
                        }
                        self.set_out(n, Val::Act(id));
                    }
                    _ => return Err(self.unsupported(n, "with these inputs is not supported")),
                }
            }
            "Sigmoid" | "HardSigmoid" => {
                let x = self.act(n, 0)?;
                let kind = if op == "Sigmoid" {
                    Activation::Sigmoid
                } else {
                    // PyTorch's Hardsigmoid is HardSigmoid(alpha=1/6, beta=0.5).
                    let alpha = n.attr("alpha").and_then(|a| a.f).unwrap_or(0.2);
                    let beta = n.attr("beta").and_then(|a| a.f).unwrap_or(0.5);
                    if (alpha - 1.0 / 6.0).abs() > 1e-6 || (beta - 0.5).abs() > 1e-6 {
                        return Err(self.unsupported(
                            n,
                            &format!(
                                "with alpha {alpha} and beta {beta} is not supported (PyTorch's \
                                 Hardsigmoid is alpha 1/6, beta 0.5)"
                            ),
                        ));
                    }
                    Activation::Hardsigmoid
                };
                let name = self.layer_name(n, None);
                let v = Val::Gate {
                    kind,
                    x,
                    input: n.inputs[0].clone(),
                    name,
                };
                self.set_out(n, v);
            }
            "HardSwish" | "Tanh" | "Gelu" => {
                let x = self.act(n, 0)?;
                let kind = match op {
                    "HardSwish" => Activation::Hardswish,
                    "Tanh" => Activation::Tanh,
                    _ => match n.attr("approximate").and_then(|a| a.s.as_deref()) {
                        Some("tanh") => Activation::GeluTanh,
                        None | Some("none") => Activation::Gelu,
                        Some(other) => {
                            return Err(self
                                .fail(n, format!("approximate `{other}`: expected none or tanh")))
                        }
                    },
                };
                // torchvision's Hardswish runs in place after a BatchNorm.
                let inplace = kind.has_inplace()
                    && self.opts.inplace == Inplace::Torchvision
                    && x != 0
                    && self.readers(&n.inputs[0]) == 1
                    && self.overwritable(x);
                if inplace {
                    self.notes.relu_inplace += 1;
                }
                let name = self.layer_name(n, None);
                self.add_op(n, name, Op::act(kind, inplace), &[x]);
            }
            "Mul" => {
                let vals: Vec<Option<Val>> =
                    n.inputs.iter().map(|i| self.vals.get(i).cloned()).collect();
                // x * Sigmoid(x) is SiLU, x * HardSigmoid(x) Hardswish.
                let fused = match vals.as_slice() {
                    [Some(Val::Act(a)), Some(Val::Gate { kind, x, input, .. })]
                    | [Some(Val::Gate { kind, x, input, .. }), Some(Val::Act(a))]
                        if a == x =>
                    {
                        Some((*kind, *x, input.clone()))
                    }
                    _ => None,
                };
                if let Some((kind, x, input)) = fused {
                    let act = if kind == Activation::Sigmoid {
                        Activation::Silu
                    } else {
                        Activation::Hardswish
                    };
                    // In place (torchvision's modules) when the gate and the product are
                    // the input's only readers.
                    let inplace = self.opts.inplace == Inplace::Torchvision
                        && x != 0
                        && self.readers(&input) == 2
                        && self.overwritable(x);
                    if inplace {
                        self.notes.relu_inplace += 1;
                    }
                    let name = self.layer_name(n, None);
                    self.add_op(n, name, Op::act(act, inplace), &[x]);
                } else {
                    self.place_gates(n);
                    let a = self.act(n, 0)?;
                    let b = self.act(n, 1).map_err(|_| {
                        self.unsupported(n, "of an activation by a constant is not supported")
                    })?;
                    let name = self.layer_name(n, None);
                    self.add_op(n, name, Op::Mul, &[a, b]);
                }
            }
            "Concat" => {
                let axis = self.int_attr(n, "axis", 0);
                if axis != 1 {
                    return Err(self.unsupported(
                        n,
                        &format!("along axis {axis} is not supported (only channels, axis 1)"),
                    ));
                }
                let mut xs = Vec::with_capacity(n.inputs.len());
                for i in 0..n.inputs.len() {
                    xs.push(self.act(n, i)?);
                }
                let name = self.layer_name(n, None);
                self.add_op(n, name, Op::Concat, &xs);
            }
            "Dropout" => {
                let x = self.act(n, 0)?;
                let ratio = if self.opset >= 12 {
                    match self.konst(n, 1)? {
                        Some((_, _, Some(v))) => floats_of(&v).first().copied().unwrap_or(0.5),
                        Some(_) => return Err(self.fail(n, "the ratio is not a readable constant")),
                        None => 0.5,
                    }
                } else {
                    n.attr("ratio")
                        .and_then(|a| a.f)
                        .map(f64::from)
                        .unwrap_or(0.5)
                };
                let training = match self.konst(n, 2)? {
                    Some((_, _, Some(v))) => ints_of(&v).first().copied().unwrap_or(0) != 0,
                    _ => false,
                };
                if training {
                    self.notes.dropout_training += 1;
                } else {
                    self.notes.dropout_eval += 1;
                }
                let p = (ratio * 1e6).round() / 1e6;
                let name = self.layer_name(n, None);
                self.add_op(n, name, Op::Dropout { p, inplace: false }, &[x]);
            }
            _ => return Err(self.unsupported(n, "is not supported")),
        }
        Ok(())
    }

    fn clip_bounds(&self, n: &proto::Node) -> Result<(Option<f64>, Option<f64>), OnnxError> {
        if self.opset < 11 {
            let lo = n.attr("min").and_then(|a| a.f).map(f64::from);
            let hi = n.attr("max").and_then(|a| a.f).map(f64::from);
            return Ok((lo, hi));
        }
        let bound = |i: usize| -> Result<Option<f64>, OnnxError> {
            match self.konst(n, i)? {
                None => Ok(None),
                Some((_, _, Some(v))) => Ok(floats_of(&v).first().copied()),
                Some(_) => Err(self.fail(n, format!("bound {i} is not a readable constant"))),
            }
        };
        Ok((bound(1)?, bound(2)?))
    }
}

/// PyTorch's `named_parameters()` order where it differs from the order the layers run
/// (a parameter of the root module, such as ViT's `class_token`, comes first): the
/// exporters write the initializers in that order. `None` when every layer runs in that
/// order already, or when some parameter is not an initializer of its own name (merged
/// or folded by an exporter).
fn param_order(g: &Graph, inits: &[proto::Tensor]) -> Option<Vec<NodeId>> {
    let pos: HashMap<&str, usize> = inits
        .iter()
        .enumerate()
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut keyed = Vec::new();
    let mut rest = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let specs = n.op.params();
        if specs.is_empty() {
            rest.push(i);
            continue;
        }
        let mut first = usize::MAX;
        for t in specs {
            let name = if matches!(n.op, Op::Param { .. }) {
                n.name.clone()
            } else {
                format!("{}.{}", n.name, t.name)
            };
            first = first.min(*pos.get(name.as_str())?);
        }
        keyed.push((first, i));
    }
    keyed.sort_unstable();
    if keyed.windows(2).all(|w| w[0].1 < w[1].1) {
        return None;
    }
    let mut order: Vec<NodeId> = keyed.into_iter().map(|(_, i)| i).collect();
    order.extend(rest);
    Some(order)
}

fn fmt_dims(d: &[Dim]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|d| match d {
            Dim::Value(v) => v.to_string(),
            Dim::Param(p) => p.clone(),
            Dim::Unknown => "?".into(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::{Attribute, Model, Node as PNode, Tensor, ValueInfo};

    fn node(op: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> PNode {
        PNode {
            name: name.into(),
            op_type: op.into(),
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: outputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn ints(name: &str, v: &[i64]) -> Attribute {
        Attribute {
            name: name.into(),
            ints: v.to_vec(),
            ..Default::default()
        }
    }

    fn int(name: &str, v: i64) -> Attribute {
        Attribute {
            name: name.into(),
            i: Some(v),
            ..Default::default()
        }
    }

    fn weight(name: &str, dims: &[i64]) -> Tensor {
        Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: proto::FLOAT,
            values: None,
            external_location: Some("w.data".into()),
        }
    }

    fn konst(name: &str, v: Values, dims: &[i64]) -> Tensor {
        Tensor {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: match v {
                Values::Ints(_) => proto::INT64,
                Values::Floats(_) => proto::FLOAT,
            },
            values: Some(v),
            external_location: None,
        }
    }

    fn model(opset: i64, nodes: Vec<PNode>, inits: Vec<Tensor>, out: &str) -> Model {
        let input = ValueInfo {
            name: "x".into(),
            elem_type: proto::FLOAT,
            shape: Some(vec![
                Dim::Param("N".into()),
                Dim::Value(3),
                Dim::Value(8),
                Dim::Value(8),
            ]),
        };
        Model {
            opset_import: vec![(String::new(), opset)],
            graph: proto::Graph {
                nodes,
                initializers: inits,
                inputs: vec![input],
                outputs: vec![ValueInfo {
                    name: out.into(),
                    ..Default::default()
                }],
                value_info: vec![],
            },
            ..Default::default()
        }
    }

    fn ops(m: &Model, opts: &Options) -> Vec<Op> {
        let l = from_model(m, "t.onnx", "t", opts).unwrap();
        l.graph.infer().unwrap();
        l.graph.nodes.into_iter().skip(1).map(|n| n.op).collect()
    }

    /// What contradicts the graph or PyTorch's layers is refused, naming the node (a
    /// kernel_shape the weight does not have, Gemm's alpha NaN or transB 5, a float16
    /// or integer weight, integer images were all read as if fine).
    #[test]
    fn attributes_and_types_that_contradict_the_layer_are_refused() {
        let err = |m: &Model| {
            from_model(m, "t.onnx", "t", &Options::default())
                .err()
                .unwrap()
                .0
        };
        let conv_model = |k: &[i64], w: Tensor| {
            let mut conv = node("Conv", "/c/Conv", &["x", "c.weight"], &["y"]);
            conv.attributes = vec![ints("kernel_shape", k)];
            model(17, vec![conv], vec![w], "y")
        };
        let e = err(&conv_model(&[7, 7], weight("c.weight", &[4, 3, 3, 3])));
        assert!(
            e.contains("kernel_shape [7, 7] does not match the weight `c.weight`'s 3x3"),
            "{e}"
        );
        let mut half = weight("c.weight", &[4, 3, 3, 3]);
        half.data_type = proto::FLOAT16;
        let e = err(&conv_model(&[3, 3], half));
        assert!(
            e.contains("weight `c.weight` is stored as float16, not float32"),
            "{e}"
        );
        let gemm_model = |attrs: Vec<Attribute>| {
            let mut g = node("Gemm", "/fc/Gemm", &["flat", "fc.weight"], &["y"]);
            g.attributes = attrs;
            let nodes = vec![node("Flatten", "flat", &["x"], &["flat"]), g];
            model(17, nodes, vec![weight("fc.weight", &[192, 5])], "y")
        };
        let nan = Attribute {
            name: "alpha".into(),
            f: Some(f32::NAN),
            ..Default::default()
        };
        let e = err(&gemm_model(vec![nan]));
        assert!(e.contains("alpha NaN: only 1 is read"), "{e}");
        let e = err(&gemm_model(vec![int("transB", 5)]));
        assert!(e.contains("transB 5: expected 0 or 1"), "{e}");
        let mut ints_in = gemm_model(vec![]);
        ints_in.graph.inputs[0].elem_type = proto::INT64;
        let e = err(&ints_in);
        assert!(
            e.contains("input `x` is int64, expected float32 images"),
            "{e}"
        );
        // The same Gemm as PyTorch writes it reads.
        assert!(from_model(&gemm_model(vec![]), "t.onnx", "t", &Options::default()).is_ok());
        // A name nothing wrote before (dangling, or a cycle), a value written twice:
        // named, not "no graph output is computed".
        let relus = |a: [&str; 2], b: [&str; 2]| {
            model(
                17,
                vec![
                    node("Relu", "r1", &[a[0]], &[a[1]]),
                    node("Relu", "r2", &[b[0]], &[b[1]]),
                ],
                vec![],
                "z",
            )
        };
        let e = err(&relus(["nope", "y"], ["y", "z"]));
        assert!(
            e.contains("node `r1` (Relu opset 17): reads `nope`, which no node before it"),
            "{e}"
        );
        let e = err(&relus(["z", "y"], ["y", "z"]));
        assert!(e.contains("node `r1` (Relu opset 17): reads `z`"), "{e}");
        let e = err(&relus(["x", "z"], ["x", "z"]));
        assert!(
            e.contains("node `r2` (Relu opset 17): writes `z`, which was written before"),
            "{e}"
        );
    }

    #[test]
    fn clip_matmul_add_reduce_mean_and_a_computed_flatten_map_to_layers() {
        let mut conv = node("Conv", "/c/Conv", &["x", "c.weight", "c.bias"], &["c"]);
        conv.attributes = vec![ints("pads", &[1, 1, 1, 1])];
        let mut mean = node("ReduceMean", "mean", &["r6", "axes"], &["m"]);
        mean.attributes = vec![int("keepdims", 1)];
        let mut shape = node("Shape", "shape", &["m"], &["s"]);
        shape.attributes = vec![int("end", 1)];
        let nodes = vec![
            conv,
            node("Clip", "clip", &["c", "lo", "hi"], &["r6"]),
            mean,
            shape,
            node("Concat", "cat", &["s", "minus1"], &["target"]),
            node("Reshape", "view", &["m", "target"], &["flat"]),
            node("MatMul", "mm", &["flat", "fc.weight"], &["mm"]),
            node("Add", "bias", &["mm", "fc.bias"], &["y"]),
        ];
        let inits = vec![
            weight("c.weight", &[4, 3, 3, 3]),
            weight("c.bias", &[4]),
            konst("lo", Values::Floats(vec![0.0]), &[]),
            konst("hi", Values::Floats(vec![6.0]), &[]),
            konst("axes", Values::Ints(vec![-1, -2]), &[2]),
            konst("minus1", Values::Ints(vec![-1]), &[1]),
            weight("fc.weight", &[4, 5]),
            weight("fc.bias", &[5]),
        ];
        let m = model(18, nodes, inits, "y");
        let got = ops(&m, &Options::default());
        assert_eq!(
            got,
            vec![
                Op::Conv2d(Conv2d::new(3, 4, 3).padding(1)),
                // The conv's output is read once: torchvision's in-place ReLU6.
                Op::relu6(true),
                Op::AdaptiveAvgPool2d {
                    output_size: (1, 1)
                },
                Op::Flatten,
                Op::Linear(Linear::new(4, 5)),
            ]
        );
        let l = from_model(&m, "t.onnx", "t", &Options::default()).unwrap();
        assert_eq!(l.graph.nodes[1].name, "c");
        assert_eq!(l.graph.nodes[5].name, "fc");
        assert!(!l
            .notes
            .iter()
            .any(|n| n.contains("Linear layers have no bias")));
        // Nothing in place on request.
        let none = Options {
            inplace: Inplace::None,
            restore_bn: true,
        };
        assert_eq!(ops(&m, &none)[1], Op::relu6(false));
    }

    #[test]
    fn a_conv_without_bias_nor_batchnorm_after_it_had_one_folded() {
        // What the dynamo exporter makes of an untrained Conv2d(bias=False) + BatchNorm2d:
        // the folded bias is all zeros, and its optimiser drops it.
        let nodes = vec![
            node("Conv", "node_Conv_1", &["x", "conv1.weight"], &["c"]),
            node("Relu", "node_relu", &["c"], &["r"]),
            node("GlobalAveragePool", "gap", &["r"], &["g"]),
            node("Flatten", "flat", &["g"], &["f"]),
            node("Gemm", "fc", &["f", "fc.weight", "fc.bias"], &["y"]),
        ];
        let mut gemm_t = nodes;
        gemm_t[4].attributes = vec![int("transB", 1)];
        let inits = vec![
            weight("conv1.weight", &[8, 3, 3, 3]),
            weight("fc.weight", &[2, 8]),
            weight("fc.bias", &[2]),
        ];
        let m = model(20, gemm_t, inits, "y");
        let l = from_model(&m, "m.onnx", "m", &Options::default()).unwrap();
        let s = l.graph.infer().unwrap();
        assert_eq!(s.num_params(), 8 * 27 + 2 * 8 + 2 * 8 + 2);
        assert_eq!(s.nodes()[2].name, "conv1.bn");
        assert!(
            l.notes.iter().any(|n| n.starts_with(
                "1 convolutions have no bias and no BatchNorm after them: the exporter folded a \
             BatchNorm into each and dropped the all-zero bias (an untrained model's): planned \
             as Conv2d(bias=False) + BatchNorm2d, as torchvision builds them (16 parameters \
             more than the file holds)"
            )),
            "{:?}",
            l.notes
        );
        let folded = Options {
            inplace: Inplace::Torchvision,
            restore_bn: false,
        };
        let l = from_model(&m, "m.onnx", "m", &folded).unwrap();
        assert_eq!(l.graph.infer().unwrap().num_params(), 8 * 27 + 2 * 8 + 2);
    }

    #[test]
    fn errors_name_the_file_node_op_and_opset() {
        let mut bad_clip = model(
            17,
            vec![node("Clip", "clip0", &["x", "lo", "hi"], &["y"])],
            vec![
                konst("lo", Values::Floats(vec![-1.0]), &[]),
                konst("hi", Values::Floats(vec![1.0]), &[]),
            ],
            "y",
        );
        let e = from_model(&bad_clip, "m.onnx", "m", &Options::default()).unwrap_err();
        // A known op refused for its use: no list of the ops it is among.
        assert_eq!(
            e.0,
            "m.onnx: node `clip0`: op Clip (opset 17) with bounds (-1, 1) is not supported \
             (Clip(0, 6) is ReLU6, Clip(0) is ReLU)"
        );
        // A custom domain is named.
        bad_clip.graph.nodes[0].domain = "com.microsoft".into();
        let e = from_model(&bad_clip, "m.onnx", "m", &Options::default()).unwrap_err();
        assert!(
            e.0.contains("op com.microsoft::Clip (opset 17) is not in the default ONNX domain"),
            "{e}"
        );
        // Asymmetric padding has no PyTorch layer.
        let mut conv = node("Conv", "/c/Conv", &["x", "w"], &["y"]);
        conv.attributes = vec![ints("pads", &[0, 0, 1, 1])];
        let m = model(13, vec![conv], vec![weight("w", &[4, 3, 3, 3])], "y");
        let e = from_model(&m, "m.onnx", "m", &Options::default()).unwrap_err();
        assert_eq!(
            e.0,
            "m.onnx: node `/c/Conv` (Conv opset 13): pads [0, 0, 1, 1]: only symmetric 2-D \
             padding maps to a PyTorch layer"
        );
        // A fixed batch is said, and replaced by --batch-size.
        let mut m = model(13, vec![node("Relu", "r", &["x"], &["y"])], vec![], "y");
        m.graph.inputs[0].shape.as_mut().unwrap()[0] = Dim::Value(1);
        let l = from_model(&m, "m.onnx", "m", &Options::default()).unwrap();
        assert_eq!(
            l.notes[0],
            "opset 13; the file fixes the batch at 1: planned with --batch-size instead"
        );
        // One image input.
        let mut two = m.clone();
        two.graph.inputs.push(ValueInfo {
            name: "mask".into(),
            ..Default::default()
        });
        let e = from_model(&two, "m.onnx", "m", &Options::default()).unwrap_err();
        assert_eq!(
            e.0,
            "m.onnx: expected one image input, the graph has 2 (x, mask)"
        );
        // The input must be an image batch.
        let mut m = model(13, vec![node("Relu", "r", &["x"], &["y"])], vec![], "y");
        m.graph.inputs[0].shape = Some(vec![Dim::Param("N".into()), Dim::Value(10)]);
        let e = from_model(&m, "m.onnx", "m", &Options::default()).unwrap_err();
        assert_eq!(
            e.0,
            "m.onnx: input `x` has shape [N, 10], expected [batch, C, H, W] with fixed C, H, W"
        );
    }

    #[test]
    fn a_weight_read_by_two_layers_is_said() {
        let nodes = vec![
            node("Conv", "c1", &["x", "w", "b"], &["c1"]),
            node("Conv", "c2", &["c1", "w2", "b"], &["y"]),
        ];
        let inits = vec![
            weight("w", &[3, 3, 1, 1]),
            weight("w2", &[3, 3, 1, 1]),
            weight("b", &[3]),
        ];
        let m = model(20, nodes, inits, "y");
        // As the file has it (the shared bias's name also marks a folded BatchNorm).
        let as_is = Options {
            inplace: Inplace::Torchvision,
            restore_bn: false,
        };
        let l = from_model(&m, "m.onnx", "m", &as_is).unwrap();
        assert!(
            l.notes
                .iter()
                .any(|n| n.starts_with("1 weights are read by more than one layer")),
            "{:?}",
            l.notes
        );
        // Two layers, two parameters each.
        assert_eq!(l.graph.infer().unwrap().num_params(), 2 * (9 + 3));
    }

    #[test]
    fn absurd_sizes_are_errors_not_overflows() {
        let nodes = vec![
            node("Conv", "c", &["x", "w", "b"], &["c"]),
            node("Reshape", "view", &["c", "target"], &["y"]),
        ];
        let inits = vec![
            weight("w", &[1 << 62, 3, 1, 1]),
            weight("b", &[1 << 62]),
            konst("target", Values::Ints(vec![-1, 1 << 62]), &[2]),
        ];
        let m = model(17, nodes, inits, "y");
        let r = from_model(&m, "m.onnx", "m", &Options::default()).map(|l| l.graph.infer());
        assert!(!matches!(r, Ok(Ok(_))));
    }

    #[test]
    fn module_paths_come_from_torchscript_scopes() {
        assert_eq!(
            module_path("/layer1/layer1.0/relu/Relu").as_deref(),
            Some("layer1.0.relu")
        );
        assert_eq!(
            module_path("/layer2/layer2.0/downsample/downsample.0/Conv").as_deref(),
            Some("layer2.0.downsample.0")
        );
        assert_eq!(module_path("/Relu"), None);
        assert_eq!(module_path("node_relu_2"), None);
    }
}
