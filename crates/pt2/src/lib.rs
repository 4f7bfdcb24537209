//! torch.export archives for vramlab: reads a `.pt2` file written by `torch.export.save`
//! (`<name>/models/model.json`, as PyTorch 2.15 writes it; an archive with
//! `serialized_exported_program.json` instead is read the same way) and maps the exported
//! program's aten ops back to the layers of [`vramlab_graph`], with the parameter names
//! the export records (`layer1.0.conv1.weight`) and PyTorch's `named_parameters()` order.
//!
//! The archive is read by [`zip`], a small bounded reader: only the central directory
//! and the program's JSON are read, never the weights.
//!
//! Three modules are planned whole from every node the trace records inside them (their
//! class is in each node's `nn_module_stack`): `nn.MultiheadAttention` and torchvision's
//! `ShiftedWindowAttention(V2)` and `PatchMerging(V2)`.
//!
//! What the file cannot say, or what was assumed, is returned as [`Loaded::notes`].

pub mod zip;

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek};
use std::path::Path;

use serde_json::Value;
use vramlab_graph::{
    Activation, BatchNorm2d, Conv2d, Graph, GraphBuilder, Linear, Node, NodeId, Op, Pool2d, Shape,
};

/// The aten ops vramlab maps (without the `torch.ops.aten.` prefix and overload), as the
/// error for any other lists them.
pub const SUPPORTED_OPS: &[&str] = &[
    "_adaptive_avg_pool2d",
    "_native_batch_norm_legit",
    "_native_batch_norm_legit_functional",
    "_native_batch_norm_legit_no_training",
    "adaptive_avg_pool2d",
    "add",
    "add_",
    "addmm",
    "alias",
    "avg_pool2d",
    "batch_norm",
    "bernoulli_",
    "cat",
    "chunk",
    "clone",
    "contiguous",
    "conv2d",
    "convolution",
    "detach",
    "div_",
    "dropout",
    "dropout_",
    "empty",
    "expand",
    "flatten",
    "gelu",
    "gelu_",
    "hardsigmoid",
    "hardsigmoid_",
    "hardswish",
    "hardswish_",
    "hardtanh",
    "hardtanh_",
    "layer_norm",
    "linear",
    "max_pool2d",
    "max_pool2d_with_indices",
    "mean",
    "mm",
    "mul",
    "native_batch_norm",
    "native_dropout",
    "permute",
    "relu",
    "relu_",
    "reshape",
    "select",
    "sigmoid",
    "sigmoid_",
    "silu",
    "silu_",
    "sym_size",
    "t",
    "tanh",
    "tanh_",
    "transpose",
    "view",
    "_unsafe_view",
];

/// torch.export's schema number of `torch.float32` (`ScalarType.FLOAT`).
const FLOAT32: i64 = 7;

/// A dtype of torch.export's schema, by name.
fn dtype_name(t: i64) -> String {
    match t {
        1 => "uint8".into(),
        2 => "int8".into(),
        3 => "int16".into(),
        4 => "int32".into(),
        5 => "int64".into(),
        6 => "float16".into(),
        7 => "float32".into(),
        8 => "float64".into(),
        12 => "bool".into(),
        13 => "bfloat16".into(),
        t => format!("dtype {t}"),
    }
}

/// The largest number of graph nodes read.
pub const MAX_NODES: usize = 1 << 20;

/// A model read from a torch.export archive, with what vramlab assumed.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub graph: Graph,
    /// One sentence each: what the file could not say and what was assumed.
    pub notes: Vec<String>,
}

/// Why a file could not be used: one line naming the file (and the node).
#[derive(Debug, Clone, PartialEq)]
pub struct Pt2Error(pub String);

impl fmt::Display for Pt2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Pt2Error {}

/// Reads `path` and maps it to a graph.
pub fn load(path: &Path) -> Result<Loaded, Pt2Error> {
    let file = path.display().to_string();
    // Only a regular file: opening a FIFO or a device would block or never end.
    let meta = std::fs::metadata(path).map_err(|e| Pt2Error(format!("{file}: {e}")))?;
    if !meta.is_file() {
        return Err(Pt2Error(format!(
            "{file}: not a regular file: expected a .pt2 archive written by torch.export.save"
        )));
    }
    let f = std::fs::File::open(path).map_err(|e| Pt2Error(format!("{file}: {e}")))?;
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    from_reader(f, &file, &name)
}

/// Reads an archive from `src`. `file` names it in errors; `name` is the graph's name.
pub fn from_reader<R: Read + Seek>(src: R, file: &str, name: &str) -> Result<Loaded, Pt2Error> {
    let zerr = |m: String| Pt2Error(format!("{file}: not a readable torch.export archive: {m}"));
    let mut ar = zip::Archive::open(src).map_err(zerr)?;
    let entry = ar
        .entries
        .iter()
        .find(|e| e.name.ends_with("/models/model.json") || e.name == "models/model.json")
        .or_else(|| {
            ar.entries
                .iter()
                .find(|e| e.name.ends_with("serialized_exported_program.json"))
        })
        .cloned()
        .ok_or_else(|| {
            Pt2Error(format!(
                "{file}: no exported program in the archive (expected models/model.json or \
                 serialized_exported_program.json; is it a torch.export.save file?)"
            ))
        })?;
    let bytes = ar.read(&entry).map_err(zerr)?;
    let json: Value = serde_json::from_slice(&bytes)
        .map_err(|e| Pt2Error(format!("{file}: `{}` is not valid JSON: {e}", entry.name)))?;
    from_json(&json, file, name)
}

fn tensor_name(arg: &Value) -> Option<&str> {
    arg.get("as_tensor")?.get("name")?.as_str()
}

/// What a value name stands for while the nodes are read.
#[derive(Debug, Clone)]
enum Val {
    /// An activation: the output of a graph node.
    Act(NodeId),
    /// A parameter: its full name and sizes; `transposed` after `t` or `permute`.
    Param {
        fqn: String,
        dims: Vec<i64>,
        transposed: bool,
    },
    /// `torch.empty([B, 1, 1, 1])` (`row`) or `[1, 1, 1, 1]`, then filled by `bernoulli_`
    /// and divided by the survival rate: torchvision's stochastic depth noise.
    Noise { survival: Option<f64>, row: bool },
    /// `[C, H, W]` viewed as `[C, H*W]` (`x.flatten(2)`, `x.reshape(n, c, h * w)`): tokens
    /// once transposed (ViT's `_process_input`).
    ChannelsFlat(NodeId),
    /// `channel_shuffle`'s `x.view(B, groups, C / groups, H, W)`, then (`transposed`) its
    /// `transpose(1, 2).contiguous()`, waiting for the view back to `[B, C, H, W]`.
    Shuffle {
        x: NodeId,
        groups: usize,
        transposed: bool,
    },
    /// MaxViT's `SwapAxes(-2, -3)` of an activation, waiting for the `WindowDepartition`
    /// it comes before in a grid attention layer.
    Swapped(NodeId),
    /// A buffer (running statistics), a constant, or anything computed off the
    /// activation path.
    Other,
}

#[derive(Default)]
struct Notes {
    bn_eval: usize,
    dropout_eval: usize,
    batch: Option<String>,
}

struct Cx<'a> {
    file: &'a str,
    json: &'a Value,
    vals: HashMap<String, Val>,
    graph: Graph,
    shapes: Vec<Shape>,
    names: HashMap<String, usize>,
    /// The node owning each parameter, by full name.
    owner: HashMap<String, NodeId>,
    notes: Notes,
    /// The graph node of a parameter used as a value (`Op::Param`), by full name.
    param_nodes: HashMap<String, NodeId>,
    /// The modules that own parameters directly (`layer1.0.conv1`).
    param_modules: std::collections::HashSet<String>,
    /// The first layer over activations whose shape rule failed: named when its node
    /// is done, not as an odd shape at a later node.
    shape_error: Option<Pt2Error>,
}

/// Maps the exported program's JSON (`models/model.json`) to a graph.
pub fn from_json(json: &Value, file: &str, name: &str) -> Result<Loaded, Pt2Error> {
    let gm = json
        .get("graph_module")
        .ok_or_else(|| Pt2Error(format!("{file}: the exported program has no graph_module")))?;
    let mut cx = Cx {
        file,
        json: gm,
        vals: HashMap::new(),
        graph: GraphBuilder::new(name, Vec::new()).build(),
        shapes: Vec::new(),
        names: HashMap::new(),
        owner: HashMap::new(),
        notes: Notes::default(),
        param_nodes: HashMap::new(),
        param_modules: Default::default(),
        shape_error: None,
    };
    let param_fqns = cx.signature()?;
    cx.param_modules = param_fqns
        .iter()
        .filter_map(|f| f.rsplit_once('.').map(|(m, _)| m.to_string()))
        .collect();
    cx.nodes()?;
    cx.output()?;
    // PyTorch's named_parameters() order: the nodes owning the parameters in the order
    // the signature lists them, then every other node.
    let mut order: Vec<NodeId> = Vec::new();
    let mut listed = vec![false; cx.graph.nodes.len()];
    for fqn in &param_fqns {
        let Some(&id) = cx.owner.get(fqn) else {
            return Err(Pt2Error(format!(
                "{file}: parameter `{fqn}` is read by no layer vramlab maps"
            )));
        };
        if !std::mem::replace(&mut listed[id], true) {
            order.push(id);
        }
    }
    order.extend((0..listed.len()).filter(|&i| !listed[i]));
    cx.graph.param_order = Some(order);
    let Cx { graph, notes, .. } = cx;
    let shaped = graph
        .infer()
        .map_err(|e| Pt2Error(format!("{file}: {e}")))?;
    let names: Vec<String> = shaped.params().iter().map(|p| p.name.clone()).collect();
    if names != param_fqns {
        // The first difference, not both lists: a hostile file lists thousands.
        let i = names
            .iter()
            .zip(&param_fqns)
            .position(|(a, b)| a != b)
            .unwrap_or(names.len().min(param_fqns.len()));
        let at = |v: &[String]| v.get(i).map_or("nothing".to_string(), |n| format!("`{n}`"));
        return Err(Pt2Error(format!(
            "{file}: the mapped layers' parameter {} is {}, but the export lists {} there ({} \
             parameters mapped, {} in the export)",
            i + 1,
            at(&names),
            at(&param_fqns),
            names.len(),
            param_fqns.len()
        )));
    }
    let mut v = Vec::new();
    if let Some(b) = &notes.batch {
        v.push(format!("{b}: planned with --batch-size"));
    }
    if notes.bn_eval > 0 {
        v.push(format!(
            "{} BatchNorm layers were exported in eval mode: planned as training BatchNorm2d",
            notes.bn_eval
        ));
    }
    if notes.dropout_eval > 0 {
        v.push(format!(
            "{} Dropout layers were exported in eval mode: planned as training Dropout",
            notes.dropout_eval
        ));
    }
    Ok(Loaded { graph, notes: v })
}

impl Cx<'_> {
    fn err(&self, msg: impl fmt::Display) -> Pt2Error {
        Pt2Error(format!("{}: {msg}", self.file))
    }

    /// Reads the signature: parameters and buffers by placeholder name, and the one image
    /// input with its shape. Returns the parameters' full names in order.
    fn signature(&mut self) -> Result<Vec<String>, Pt2Error> {
        let specs = self
            .json
            .pointer("/signature/input_specs")
            .and_then(Value::as_array)
            .ok_or_else(|| self.err("the exported program has no signature input_specs"))?;
        let mut params = Vec::new();
        let mut inputs = Vec::new();
        let mut frozen = Vec::new();
        let mut not_f32 = Vec::new();
        for s in specs {
            if let Some(p) = s.get("parameter") {
                let arg = p.pointer("/arg/name").and_then(Value::as_str);
                let fqn = p.get("parameter_name").and_then(Value::as_str);
                let (Some(arg), Some(fqn)) = (arg, fqn) else {
                    return Err(self.err("a parameter input_spec lacks arg.name or parameter_name"));
                };
                let dims = self.dims(arg).unwrap_or_default();
                let meta = self
                    .json
                    .pointer(&format!("/graph/tensor_values/{}", escape(arg)));
                if meta
                    .and_then(|m| m.get("requires_grad"))
                    .and_then(Value::as_bool)
                    == Some(false)
                {
                    frozen.push(fqn.to_string());
                }
                if let Some(t) = meta
                    .and_then(|m| m.get("dtype"))
                    .and_then(Value::as_i64)
                    .filter(|&t| t != FLOAT32)
                {
                    not_f32.push(format!("{fqn} ({})", dtype_name(t)));
                }
                self.vals.insert(
                    arg.to_string(),
                    Val::Param {
                        fqn: fqn.to_string(),
                        dims,
                        transposed: false,
                    },
                );
                params.push(fqn.to_string());
            } else if let Some(u) = s.get("user_input") {
                match u.get("arg").and_then(tensor_name) {
                    Some(n) => inputs.push(n.to_string()),
                    None => return Err(self.err("a user input is not a tensor")),
                }
            } else if let Some(name) = s
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(|v| v.get("arg"))
                .and_then(|a| {
                    a.get("name")
                        .and_then(Value::as_str)
                        .or_else(|| tensor_name(a))
                })
            {
                // Buffers, constants, tokens.
                self.vals.insert(name.to_string(), Val::Other);
            }
        }
        if !frozen.is_empty() {
            return Err(self.err(format!(
                "{} parameter(s) do not require gradients ({}{}): vramlab plans every \
                 parameter trained (no frozen layers yet), which would overstate this model's \
                 gradients, optimizer state and saved activations",
                frozen.len(),
                frozen
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if frozen.len() > 3 { ", ..." } else { "" }
            )));
        }
        if !not_f32.is_empty() {
            return Err(self.err(format!(
                "{} parameter(s) are not float32 ({}{}): vramlab plans a float32 model; \
                 export it in float32 and plan half precision with --precision (bf16, \
                 amp-bf16, amp-fp16)",
                not_f32.len(),
                not_f32
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if not_f32.len() > 3 { ", ..." } else { "" }
            )));
        }
        let [input] = inputs.as_slice() else {
            return Err(self.err(format!(
                "expected one image input, the export has {} ({})",
                inputs.len(),
                inputs.join(", ")
            )));
        };
        let sizes = self
            .json
            .pointer(&format!("/graph/tensor_values/{}", escape(input)))
            .and_then(|t| t.get("sizes"))
            .and_then(Value::as_array)
            .ok_or_else(|| self.err(format!("input `{input}` has no recorded sizes")))?;
        let dim = |d: &Value| d.get("as_int").and_then(Value::as_i64);
        let chw: Option<Shape> = match sizes.as_slice() {
            [_, c, h, w] => [c, h, w]
                .iter()
                .map(|d| {
                    dim(d)
                        .filter(|&v| v > 0)
                        .and_then(|v| usize::try_from(v).ok())
                })
                .collect(),
            _ => None,
        };
        // A size recorded as a number that is no positive integer is no symbol: named.
        if let Some((k, d)) = sizes.iter().enumerate().find_map(|(k, d)| {
            d.get("as_int")
                .filter(|v| v.as_i64().is_none_or(|v| v <= 0))
                .map(|v| (k, v))
        }) {
            return Err(self.err(format!(
                "input `{input}`: size {k} is {d}, not a positive integer below 2^63"
            )));
        }
        let Some(chw) = chw else {
            return Err(self.err(if sizes.len() == 4 {
                format!(
                    "input `{input}`: C, H or W is symbolic (dynamic_shapes on them); vramlab \
                     plans a fixed image size, only the batch may be symbolic"
                )
            } else {
                format!(
                    "input `{input}` has {} sizes, expected [batch, C, H, W] with fixed C, H, W",
                    sizes.len()
                )
            }));
        };
        if vramlab_graph::op::numel(&chw) > vramlab_graph::MAX_TENSOR_ELEMENTS {
            return Err(self.err(format!(
                "input `{input}` is {} per image, more than the {} values a tensor may have",
                vramlab_graph::fmt_shape(&chw),
                vramlab_graph::MAX_TENSOR_ELEMENTS
            )));
        }
        self.notes.batch = Some(match dim(&sizes[0]) {
            Some(b) => format!("the export traced a fixed batch of {b}"),
            None => "the batch dimension is symbolic".into(),
        });
        self.graph.input_shape = chw.clone();
        self.shapes = vec![chw];
        self.vals.insert(input.clone(), Val::Act(0));
        Ok(params)
    }

    /// A tensor's recorded sizes (None where one is symbolic).
    fn dims(&self, name: &str) -> Option<Vec<i64>> {
        self.json
            .pointer(&format!("/graph/tensor_values/{}", escape(name)))?
            .get("sizes")?
            .as_array()?
            .iter()
            .map(|d| d.get("as_int").and_then(Value::as_i64))
            .collect()
    }

    fn nodes(&mut self) -> Result<(), Pt2Error> {
        let json = self.json;
        let nodes = json
            .pointer("/graph/nodes")
            .and_then(Value::as_array)
            .ok_or_else(|| self.err("the exported program's graph has no nodes"))?;
        if nodes.len() > MAX_NODES {
            return Err(self.err(format!(
                "{} graph nodes, more than the {MAX_NODES} read",
                nodes.len()
            )));
        }
        // The nodes of a module vramlab plans as one layer (`Whole`), gathered until the
        // trace leaves it.
        let mut group: Option<(&str, &str, Whole, Vec<N>)> = None;
        for n in nodes {
            let node = N::parse(n).ok_or_else(|| self.err("a graph node lacks target or name"))?;
            let whole = Whole::of(&node.stack);
            if let Some((path, _, _, members)) = &mut group {
                if whole.is_some_and(|(p, _, _)| p == *path) {
                    members.push(node);
                    continue;
                }
                let (path, class, kind, members) = group.take().expect("a group");
                self.whole(path, class, kind, &members)?;
            }
            if let Some((path, class, kind)) = whole {
                group = Some((path, class, kind, vec![node]));
                continue;
            }
            self.node(&node)?;
            if let Some(e) = self.shape_error.take() {
                return Err(e);
            }
        }
        if let Some((path, class, kind, members)) = group {
            self.whole(path, class, kind, &members)?;
        }
        Ok(())
    }

    fn output(&mut self) -> Result<(), Pt2Error> {
        let specs = self
            .json
            .pointer("/signature/output_specs")
            .and_then(Value::as_array)
            .ok_or_else(|| self.err("the exported program has no signature output_specs"))?;
        let out = specs
            .iter()
            .filter_map(|s| s.get("user_output"))
            .filter_map(|u| u.get("arg").and_then(tensor_name))
            .find_map(|n| match self.vals.get(n) {
                Some(Val::Act(id)) => Some(*id),
                _ => None,
            })
            .ok_or_else(|| self.err("no user output is computed from the input image"))?;
        let last = self.graph.nodes.len() - 1;
        if out != last || last == 0 {
            return Err(self.err(
                "the program's output is not its last layer; vramlab plans models whose \
                 forward ends in the logits",
            ));
        }
        Ok(())
    }
}

/// A JSON pointer token.
fn escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// One graph node of the serialized program.
struct N<'a> {
    name: &'a str,
    /// `conv2d` of `torch.ops.aten.conv2d.default`, or the whole target.
    op: &'a str,
    target: &'a str,
    args: Vec<(&'a str, &'a Value)>,
    outputs: Vec<Option<&'a str>>,
    /// The innermost module path of nn_module_stack (`layer1.0.relu`).
    module: Option<String>,
    /// nn_module_stack, outermost first: each module's path and class.
    stack: Vec<(&'a str, &'a str)>,
}

impl<'a> N<'a> {
    fn parse(v: &'a Value) -> Option<Self> {
        let target = v.get("target")?.as_str()?;
        let name = v.get("name")?.as_str()?;
        let op = target
            .strip_prefix("torch.ops.aten.")
            .map(|t| t.split('.').next().unwrap_or(t))
            .unwrap_or(target);
        let args = v
            .get("inputs")?
            .as_array()?
            .iter()
            .filter_map(|a| Some((a.get("name")?.as_str()?, a.get("arg")?)))
            .collect();
        let mut outputs = Vec::new();
        for o in v.get("outputs")?.as_array()? {
            if let Some(list) = o.get("as_tensors").and_then(Value::as_array) {
                outputs.extend(list.iter().map(|t| t.get("name").and_then(Value::as_str)));
            } else {
                outputs.push(tensor_name(o));
            }
        }
        let module = v
            .pointer("/metadata/nn_module_stack")
            .and_then(Value::as_str)
            .and_then(|s| s.rsplit(';').next())
            .and_then(|e| e.split(',').nth(1))
            .filter(|p| !p.is_empty())
            .map(str::to_string);
        // `key,path,class;key,path,class;...`
        let stack = v
            .pointer("/metadata/nn_module_stack")
            .and_then(Value::as_str)
            .map(|s| {
                s.split(';')
                    .filter_map(|e| {
                        let mut parts = e.splitn(3, ',');
                        let _key = parts.next()?;
                        Some((parts.next()?, parts.next()?))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(N {
            name,
            op,
            target,
            args,
            outputs,
            module,
            stack,
        })
    }

    fn arg(&self, name: &str, _pos: usize) -> Option<&'a Value> {
        self.args
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .filter(|v| v.get("as_none").is_none())
    }
}

impl Cx<'_> {
    fn fail(&self, n: &N, msg: impl fmt::Display) -> Pt2Error {
        Pt2Error(format!(
            "{}: node `{}` ({}): {msg}",
            self.file, n.name, n.target
        ))
    }

    fn val(&self, n: &N, name: &str, pos: usize) -> Option<Val> {
        n.arg(name, pos)
            .and_then(tensor_name)
            .and_then(|t| self.vals.get(t))
            .cloned()
    }

    fn act(&self, n: &N, name: &str, pos: usize) -> Result<NodeId, Pt2Error> {
        match self.val(n, name, pos) {
            Some(Val::Act(id)) => Ok(id),
            _ => Err(self.fail(n, format!("`{name}` is not computed from the image"))),
        }
    }

    fn param(
        &self,
        n: &N,
        name: &str,
        pos: usize,
    ) -> Result<Option<(String, Vec<usize>)>, Pt2Error> {
        match (n.arg(name, pos), self.val(n, name, pos)) {
            (None, _) => Ok(None),
            (_, Some(Val::Param { fqn, dims, .. })) => {
                let d = dims
                    .iter()
                    .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| self.fail(n, format!("`{fqn}` has sizes {dims:?}")))?;
                Ok(Some((fqn, d)))
            }
            _ => Err(self.fail(n, format!("`{name}` is not a parameter of the model"))),
        }
    }

    /// A parameter that is one value per channel (a bias, a norm's weight) has `len`
    /// of them: the export's sizes, not the layer's, are what the file holds.
    fn per_channel(
        &self,
        n: &N,
        p: &Option<(String, Vec<usize>)>,
        len: usize,
    ) -> Result<(), Pt2Error> {
        match p {
            Some((fqn, d)) if d[..] != [len] => Err(self.fail(
                n,
                format!(
                    "`{fqn}` has sizes {d:?}, expected [{len}] (one per output channel or \
                     feature)"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn ints(&self, n: &N, name: &str, pos: usize) -> Result<Option<Vec<i64>>, Pt2Error> {
        let Some(v) = n.arg(name, pos) else {
            return Ok(None);
        };
        if let Some(i) = v.get("as_int").and_then(Value::as_i64) {
            return Ok(Some(vec![i]));
        }
        // `x.view(s0, 32)` with a symbolic batch: the symbol reads as -1.
        if let Some(a) = v.get("as_sym_ints").and_then(Value::as_array) {
            return Ok(Some(
                a.iter()
                    .map(|d| d.get("as_int").and_then(Value::as_i64).unwrap_or(-1))
                    .collect(),
            ));
        }
        v.get("as_ints")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(Value::as_i64).collect::<Option<Vec<_>>>())
            .map(Some)
            .ok_or_else(|| self.fail(n, format!("`{name}` is not a list of integers")))
    }

    /// A 2-D argument (`[1]` or `[1, 1]`), `default` when absent or empty.
    fn pair(
        &self,
        n: &N,
        name: &str,
        pos: usize,
        default: usize,
    ) -> Result<(usize, usize), Pt2Error> {
        let v = self.ints(n, name, pos)?.unwrap_or_default();
        let u = |x: i64| usize::try_from(x).map_err(|_| self.fail(n, format!("`{name}` is {v:?}")));
        match v.as_slice() {
            [] => Ok((default, default)),
            [a] => Ok((u(*a)?, u(*a)?)),
            [a, b] => Ok((u(*a)?, u(*b)?)),
            _ => Err(self.fail(n, format!("`{name}` is {v:?}, expected 2 values"))),
        }
    }

    fn int(&self, n: &N, name: &str, pos: usize, default: i64) -> Result<i64, Pt2Error> {
        match n.arg(name, pos) {
            None => Ok(default),
            Some(v) => v
                .get("as_int")
                .and_then(Value::as_i64)
                .ok_or_else(|| self.fail(n, format!("`{name}` is not an integer"))),
        }
    }

    fn float(&self, n: &N, name: &str, pos: usize, default: f64) -> Result<f64, Pt2Error> {
        match n.arg(name, pos) {
            None => Ok(default),
            Some(v) => v
                .get("as_float")
                .and_then(Value::as_f64)
                .or_else(|| v.get("as_int").and_then(Value::as_i64).map(|i| i as f64))
                .filter(|f| f.is_finite())
                .ok_or_else(|| self.fail(n, format!("`{name}` is not a number"))),
        }
    }

    fn boolean(&self, n: &N, name: &str, pos: usize, default: bool) -> Result<bool, Pt2Error> {
        match n.arg(name, pos) {
            None => Ok(default),
            Some(v) => v
                .get("as_bool")
                .and_then(Value::as_bool)
                .ok_or_else(|| self.fail(n, format!("`{name}` is not a boolean"))),
        }
    }

    /// A unique layer name: the parameter's module, else the innermost module, else the
    /// node's name.
    fn layer_name(&mut self, n: &N, weight: Option<&str>) -> String {
        let base = match weight.and_then(|w| w.rsplit_once('.').map(|(m, _)| m.to_string())) {
            Some(m) => m,
            // A parameter-free op inside a module with parameters (LayerNorm2d's permutes)
            // leaves the module's path to the layer that owns them.
            None => match n.module.clone() {
                Some(m) if self.param_modules.contains(&m) => format!("{m}.{}", n.op),
                Some(m) => m,
                None => n.name.to_string(),
            },
        };
        let count = self.names.entry(base.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            base
        } else {
            format!("{base}_{}", *count - 1)
        }
    }

    fn set_out(&mut self, n: &N, v: Val) {
        for (i, o) in n.outputs.iter().enumerate() {
            if let Some(o) = o {
                let v = if i == 0 { v.clone() } else { Val::Other };
                self.vals.insert(o.to_string(), v);
            }
        }
    }

    fn push(&mut self, n: &N, name: String, op: Op, inputs: &[NodeId], params: &[&str]) -> NodeId {
        let ins: Vec<&Shape> = inputs.iter().filter_map(|&i| self.shapes.get(i)).collect();
        let out = match op.output_shape(&ins) {
            Ok(s) => s,
            Err(e) => {
                if !inputs.is_empty() && self.shape_error.is_none() {
                    self.shape_error = Some(self.fail(n, format!("layer `{name}`: {e}")));
                }
                Vec::new()
            }
        };
        self.shapes.push(out);
        self.graph.nodes.push(Node {
            name,
            op,
            inputs: inputs.to_vec(),
        });
        let id = self.graph.nodes.len() - 1;
        for p in params {
            self.owner.insert((*p).to_string(), id);
        }
        self.set_out(n, Val::Act(id));
        id
    }

    fn node(&mut self, n: &N) -> Result<(), Pt2Error> {
        let has_act = n.args.iter().any(|(_, a)| {
            let is_act = |v: Option<&Val>| {
                matches!(
                    v,
                    Some(
                        Val::Act(_) | Val::ChannelsFlat(_) | Val::Shuffle { .. } | Val::Swapped(_)
                    )
                )
            };
            let one = tensor_name(a).map(|t| is_act(self.vals.get(t)));
            let many = a.get("as_tensors").and_then(Value::as_array).map(|l| {
                l.iter().any(|t| {
                    t.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|t| is_act(self.vals.get(t)))
                })
            });
            one.or(many).unwrap_or(false)
        });
        let inplace = n.op.ends_with('_') && !n.op.starts_with('_');
        match n.op {
            "permute" | "t" if !has_act => {
                if let Some(Val::Param { fqn, dims, .. }) = self.val(n, "self", 0) {
                    if dims.len() == 2 {
                        self.set_out(
                            n,
                            Val::Param {
                                fqn,
                                dims,
                                transposed: true,
                            },
                        );
                        return Ok(());
                    }
                }
                self.set_out(n, Val::Other);
            }
            "t" => {
                return Err(self.fail(
                    n,
                    "transposing an activation with .t() is not supported; only a Linear \
                     weight's transpose maps",
                ))
            }
            "permute" | "transpose" => self.permute(n)?,
            "expand" if !has_act => {
                // `class_token.expand(n, -1, -1)`: the parameter, broadcast by cat.
                let v = match self.val(n, "self", 0) {
                    Some(p @ Val::Param { .. }) => p,
                    _ => Val::Other,
                };
                self.set_out(n, v);
            }
            // The batch size of a symbolic batch, for a later view: shape arithmetic.
            "sym_size" | "sym_numel" | "sym_stride" | "sym_storage_offset" => {
                self.set_out(n, Val::Other);
            }
            "empty" | "new_empty" if !has_act => {
                let size = self.ints(n, "size", 0).ok().flatten().unwrap_or_default();
                let v = match size.as_slice() {
                    [b, 1, 1, 1] => Val::Noise {
                        survival: None,
                        row: *b != 1,
                    },
                    _ => Val::Other,
                };
                self.set_out(n, v);
            }
            "bernoulli_" | "bernoulli" | "div_" | "div" if !has_act => {
                let first = if n.op.starts_with("bernoulli") {
                    "p"
                } else {
                    "other"
                };
                // `bernoulli_(p)` with p = 0.5, aten's default, is written without it
                // (ConvNeXt-B's and Swin-B's last block: stochastic depth 0.5).
                let given = match n.arg(first, 1) {
                    None if n.op.starts_with("bernoulli") => Some(0.5),
                    a => a.and_then(|v| v.get("as_float")).and_then(Value::as_f64),
                };
                let v = match (self.val(n, "self", 0), given) {
                    (
                        Some(Val::Noise {
                            survival: None,
                            row,
                        }),
                        Some(p),
                    ) if n.op.starts_with("bernoulli") => Val::Noise {
                        survival: Some(p),
                        row,
                    },
                    (
                        Some(Val::Noise {
                            survival: Some(s),
                            row,
                        }),
                        Some(d),
                    ) if d == s => Val::Noise {
                        survival: Some(s),
                        row,
                    },
                    _ => Val::Other,
                };
                self.set_out(n, v);
            }
            _ if !has_act => {
                // Buffer updates (num_batches_tracked += 1), shape arithmetic.
                self.set_out(n, Val::Other);
            }
            "conv2d" | "convolution" => {
                let x = self.act(n, "input", 0)?;
                let (w, wd) = self
                    .param(n, "weight", 1)?
                    .ok_or_else(|| self.fail(n, "no weight"))?;
                let [out_c, in_per_group, kh, kw] = wd[..] else {
                    return Err(self.fail(n, format!("weight `{w}` has sizes {wd:?}, expected 4")));
                };
                let bias = self.param(n, "bias", 2)?;
                self.per_channel(n, &bias, out_c)?;
                if n.op == "convolution" && self.boolean(n, "transposed", 6, false)? {
                    return Err(self.fail(n, "transposed convolutions are not supported"));
                }
                if let Some(p) = n.arg("padding", 4).and_then(|v| v.get("as_string")) {
                    if p.as_str() != Some("valid") {
                        return Err(self.fail(n, format!("padding {p} is not supported")));
                    }
                }
                let padding = if n
                    .arg("padding", 4)
                    .is_some_and(|v| v.get("as_string").is_some())
                {
                    (0, 0)
                } else {
                    self.pair(n, "padding", 4, 0)?
                };
                let groups = self.int(n, "groups", if n.op == "conv2d" { 6 } else { 8 }, 1)?;
                let groups = usize::try_from(groups)
                    .ok()
                    .filter(|&g| g > 0)
                    .ok_or_else(|| self.fail(n, format!("groups {groups}")))?;
                let in_channels = in_per_group
                    .checked_mul(groups)
                    .ok_or_else(|| self.fail(n, "in_channels out of range"))?;
                let op = Op::Conv2d(Conv2d {
                    in_channels,
                    out_channels: out_c,
                    kernel_size: (kh, kw),
                    stride: self.pair(n, "stride", 3, 1)?,
                    padding,
                    dilation: self.pair(n, "dilation", 5, 1)?,
                    groups,
                    bias: bias.is_some(),
                });
                let name = self.layer_name(n, Some(&w));
                let mut params = vec![w.as_str()];
                if let Some((b, _)) = &bias {
                    params.push(b);
                }
                self.push(n, name, op, &[x], &params);
            }
            "batch_norm"
            | "native_batch_norm"
            | "_native_batch_norm_legit"
            | "_native_batch_norm_legit_functional"
            | "_native_batch_norm_legit_no_training" => {
                let x = self.act(n, "input", 0)?;
                let w = self.param(n, "weight", 1)?;
                let b = self.param(n, "bias", 2)?;
                let eval = n.op == "_native_batch_norm_legit_no_training";
                let (mom_pos, eps_pos) = if eval { (5, 6) } else { (6, 7) };
                let training = !eval && self.boolean(n, "training", 5, true)?;
                if !training {
                    self.notes.bn_eval += 1;
                }
                let num_features = match (&w, self.shapes.get(x).and_then(|s| s.first())) {
                    (Some((_, d)), _) if d.len() == 1 => d[0],
                    (None, Some(&c)) => c,
                    _ => return Err(self.fail(n, "cannot tell the number of features")),
                };
                self.per_channel(n, &w, num_features)?;
                self.per_channel(n, &b, num_features)?;
                let op = Op::BatchNorm2d(BatchNorm2d {
                    num_features,
                    eps: self.float(n, "eps", eps_pos, 1e-5)?,
                    momentum: self.float(n, "momentum", mom_pos, 0.1)?,
                    affine: w.is_some() && b.is_some(),
                    track_running_stats: n.arg("running_mean", 3).is_some(),
                });
                self.push_with_weight_and_bias(n, op, x, &w, &b);
            }
            "relu" | "relu_" | "silu" | "silu_" | "sigmoid" | "sigmoid_" | "hardswish"
            | "hardswish_" | "hardsigmoid" | "hardsigmoid_" | "tanh" | "tanh_" | "gelu"
            | "gelu_" | "hardtanh" | "hardtanh_" => {
                let x = self.act(n, "self", 0)?;
                let kind = match n.op.trim_end_matches('_') {
                    "relu" => Activation::Relu,
                    "silu" => Activation::Silu,
                    "sigmoid" => Activation::Sigmoid,
                    "hardswish" => Activation::Hardswish,
                    "hardsigmoid" => Activation::Hardsigmoid,
                    "tanh" => Activation::Tanh,
                    "gelu" => match n
                        .arg("approximate", 1)
                        .and_then(|v| v.get("as_string"))
                        .and_then(Value::as_str)
                    {
                        None | Some("none") => Activation::Gelu,
                        Some("tanh") => Activation::GeluTanh,
                        Some(a) => return Err(self.fail(n, format!("approximate `{a}`"))),
                    },
                    _ => {
                        let lo = self.float(n, "min_val", 1, -1.0)?;
                        let hi = self.float(n, "max_val", 2, 1.0)?;
                        if lo != 0.0 || hi != 6.0 {
                            return Err(self.fail(
                                n,
                                format!("hardtanh({lo}, {hi}): only ReLU6 (0, 6) maps to a layer"),
                            ));
                        }
                        Activation::Relu6
                    }
                };
                let name = self.layer_name(n, None);
                self.push(n, name, Op::act(kind, inplace), &[x], &[]);
            }
            "max_pool2d" | "max_pool2d_with_indices" | "avg_pool2d" => {
                let x = self.act(n, "self", 0)?;
                let kernel_size = self.pair(n, "kernel_size", 1, 0)?;
                if kernel_size.0 == 0 || kernel_size.1 == 0 {
                    return Err(self.fail(n, "no kernel_size"));
                }
                let stride = match self.ints(n, "stride", 2)?.as_deref() {
                    None | Some([]) => kernel_size,
                    _ => self.pair(n, "stride", 2, 1)?,
                };
                let avg = n.op == "avg_pool2d";
                let pool = Pool2d {
                    kernel_size,
                    stride,
                    padding: self.pair(n, "padding", 3, 0)?,
                    dilation: if avg {
                        (1, 1)
                    } else {
                        self.pair(n, "dilation", 4, 1)?
                    },
                    ceil_mode: self.boolean(n, "ceil_mode", if avg { 4 } else { 5 }, false)?,
                    count_include_pad: !avg || self.boolean(n, "count_include_pad", 5, true)?,
                };
                if avg && n.arg("divisor_override", 6).is_some() {
                    return Err(self.fail(n, "divisor_override is not supported"));
                }
                let op = if avg {
                    Op::AvgPool2d(pool)
                } else {
                    Op::MaxPool2d(pool)
                };
                let name = self.layer_name(n, None);
                self.push(n, name, op, &[x], &[]);
            }
            "adaptive_avg_pool2d" | "_adaptive_avg_pool2d" => {
                let x = self.act(n, "self", 0)?;
                let output_size = self.pair(n, "output_size", 1, 0)?;
                let name = self.layer_name(n, None);
                self.push(n, name, Op::AdaptiveAvgPool2d { output_size }, &[x], &[]);
            }
            "mean" => {
                let x = self.act(n, "self", 0)?;
                let mut dims = self.ints(n, "dim", 1)?.unwrap_or_default();
                dims.sort_unstable();
                if dims != [-2, -1] && dims != [2, 3] {
                    return Err(self.fail(
                        n,
                        format!("mean over {dims:?}: only the spatial mean (global pooling) maps"),
                    ));
                }
                let keepdim = self.boolean(n, "keepdim", 2, false)?;
                let name = self.layer_name(n, None);
                let pooled = self.push(
                    n,
                    name.clone(),
                    Op::AdaptiveAvgPool2d {
                        output_size: (1, 1),
                    },
                    &[x],
                    &[],
                );
                if !keepdim {
                    let flat = format!("{name}.flatten");
                    let flat = self.layer_name_raw(flat);
                    self.push(n, flat, Op::Flatten, &[pooled], &[]);
                }
            }
            "view" | "reshape" | "_unsafe_view" | "flatten" if self.reshape(n)? => {}
            "view" | "reshape" | "_unsafe_view" | "flatten" => {
                let x = self.act(n, "self", 0)?;
                let per_sample: Option<u128> = self
                    .shapes
                    .get(x)
                    .filter(|s| !s.is_empty())
                    .and_then(|s| s.iter().try_fold(1u128, |a, &d| a.checked_mul(d as u128)));
                let flat_ok = if n.op == "flatten" {
                    let start = self.int(n, "start_dim", 1, 0)?;
                    let end = self.int(n, "end_dim", 2, -1)?;
                    start == 1 && end == -1
                } else {
                    let sizes = match self.ints(n, "size", 1)? {
                        Some(s) => Some(s),
                        None => self.ints(n, "shape", 1)?,
                    };
                    match sizes.as_deref() {
                        Some([_, f]) => per_sample
                            .is_some_and(|p| u128::try_from(*f).ok() == Some(p) || *f == -1),
                        _ => false,
                    }
                };
                if !flat_ok {
                    return Err(self.fail(
                        n,
                        "only flattening each sample (`x.view(B, -1)`, `torch.flatten(x, 1)`), \
                         an image's positions as tokens (`x.flatten(2)`) and torchvision's \
                         channel_shuffle map",
                    ));
                }
                if self.shapes.get(x).is_some_and(|s| s.len() == 1) {
                    // Already flat: an alias.
                    self.set_out(n, Val::Act(x));
                } else {
                    let name = self.layer_name(n, None);
                    self.push(n, name, Op::Flatten, &[x], &[]);
                }
            }
            "layer_norm" => {
                let x = self.act(n, "input", 0)?;
                let shape = self.ints(n, "normalized_shape", 1)?.unwrap_or_default();
                let last = self.shapes.get(x).and_then(|s| s.last()).copied();
                let [d] = shape[..] else {
                    return Err(self.fail(
                        n,
                        format!("normalized_shape {shape:?}: only the last dimension maps"),
                    ));
                };
                if usize::try_from(d).ok() != last {
                    return Err(self.fail(
                        n,
                        format!("normalized_shape [{d}] is not the input's last dimension"),
                    ));
                }
                let w = self.param(n, "weight", 2)?;
                let b = self.param(n, "bias", 3)?;
                self.per_channel(n, &w, d as usize)?;
                self.per_channel(n, &b, d as usize)?;
                let op = Op::LayerNorm(vramlab_graph::LayerNorm {
                    normalized_shape: d as usize,
                    eps: self.float(n, "eps", 4, 1e-5)?,
                    elementwise_affine: w.is_some(),
                    bias: b.is_some(),
                });
                self.push_with_weight_and_bias(n, op, x, &w, &b);
            }
            "select" => {
                let x = self.act(n, "self", 0)?;
                let rank = self.rank(x) as i64;
                let dim = self.int(n, "dim", 1, 0)?;
                let index = self.int(n, "index", 2, 0)?;
                if dim != 1 && dim != -rank {
                    return Err(self.fail(n, format!("select on dim {dim}: only `x[:, i]` maps")));
                }
                let index = usize::try_from(index).map_err(|_| {
                    self.fail(n, format!("index {index}: only `x[:, i]` with i >= 0 maps"))
                })?;
                let name = self.layer_name(n, None);
                self.push(n, name, Op::Select { index }, &[x], &[]);
            }
            "chunk" => self.chunk(n)?,
            "linear" => {
                let x = self.act(n, "input", 0)?;
                let (w, wd) = self
                    .param(n, "weight", 1)?
                    .ok_or_else(|| self.fail(n, "no weight"))?;
                let [out_f, in_f] = wd[..] else {
                    return Err(self.fail(n, format!("weight `{w}` has sizes {wd:?}, expected 2")));
                };
                let bias = self.param(n, "bias", 2)?;
                self.per_channel(n, &bias, out_f)?;
                let op = Op::Linear(Linear {
                    in_features: in_f,
                    out_features: out_f,
                    bias: bias.is_some(),
                });
                let name = self.layer_name(n, Some(&w));
                let mut params = vec![w.as_str()];
                if let Some((b, _)) = &bias {
                    params.push(b);
                }
                self.push(n, name, op, &[x], &params);
            }
            "addmm" | "mm" => {
                let (xi, wi, bias) = if n.op == "addmm" {
                    (("mat1", 1), ("mat2", 2), self.param(n, "self", 0)?)
                } else {
                    (("self", 0), ("mat2", 1), None)
                };
                let x = self.act(n, xi.0, xi.1)?;
                let (w, wd) =
                    match self.val(n, wi.0, wi.1) {
                        Some(Val::Param {
                            fqn,
                            dims,
                            transposed: true,
                        }) if dims.len() == 2 && dims.iter().all(|&d| d > 0) => (fqn, dims),
                        _ => return Err(self.fail(
                            n,
                            "only `x @ weight.t()` with a parameter weight maps (a Linear layer)",
                        )),
                    };
                self.per_channel(n, &bias, wd[0] as usize)?;
                let op = Op::Linear(Linear {
                    in_features: wd[1] as usize,
                    out_features: wd[0] as usize,
                    bias: bias.is_some(),
                });
                let name = self.layer_name(n, Some(&w));
                let mut params = vec![w.as_str()];
                if let Some((b, _)) = &bias {
                    params.push(b);
                }
                self.push(n, name, op, &[x], &params);
            }
            "add" | "add_" => {
                if self.float(n, "alpha", 2, 1.0)? != 1.0 {
                    return Err(self.fail(n, "alpha other than 1 is not supported"));
                }
                let a = self.val(n, "self", 0);
                let b = self.val(n, "other", 1);
                match (a, b) {
                    (Some(Val::Act(a)), Some(Val::Act(b))) => {
                        let name = self.layer_name(n, None);
                        self.push(n, name, Op::Add { inplace }, &[a, b], &[]);
                    }
                    // `x @ w.t() + b` after mm: the Linear's bias.
                    (Some(Val::Act(a)), Some(Val::Param { fqn, dims, .. }))
                        if dims.len() == 1
                            && a + 1 == self.graph.nodes.len()
                            && matches!(self.graph.nodes[a].op, Op::Linear(Linear { bias: false, out_features, .. }) if dims[0] as usize == out_features) =>
                    {
                        if let Op::Linear(l) = &mut self.graph.nodes[a].op {
                            l.bias = true;
                        }
                        self.owner.insert(fqn, a);
                        self.set_out(n, Val::Act(a));
                    }
                    // `x + self.pos_embedding`: a parameter as a value.
                    (Some(Val::Act(a)), Some(p @ Val::Param { .. })) => {
                        let rank = self.rank(a);
                        let p = self
                            .operand(n, Some(p), rank)?
                            .ok_or_else(|| self.fail(n, "a transposed parameter is added"))?;
                        let name = self.layer_name(n, None);
                        self.push(n, name, Op::Add { inplace }, &[a, p], &[]);
                    }
                    _ => {
                        return Err(self.fail(
                            n,
                            "only the sum of two activations (a residual), of an activation \
                             and a parameter, or a Linear's bias maps",
                        ))
                    }
                }
            }
            "mul" => match (self.val(n, "self", 0), self.val(n, "other", 1)) {
                (Some(Val::Act(a)), Some(Val::Act(b))) => {
                    let name = self.layer_name(n, None);
                    self.push(n, name, Op::Mul, &[a, b], &[]);
                }
                // torchvision's StochasticDepth in training: `input * noise`.
                (
                    Some(Val::Act(x)),
                    Some(Val::Noise {
                        survival: Some(s),
                        row,
                    }),
                )
                | (
                    Some(Val::Noise {
                        survival: Some(s),
                        row,
                    }),
                    Some(Val::Act(x)),
                ) if s > 0.0 && s <= 1.0 => {
                    // 1 - 0.975 is 0.025000000000000022: as the model wrote it.
                    let p = ((1.0 - s) * 1e12).round() / 1e12;
                    let name = self.layer_name(n, None);
                    self.push(n, name, Op::StochasticDepth { p, row }, &[x], &[]);
                }
                // `self.layer_scale * x` (ConvNeXt): a parameter as a value.
                (Some(p @ Val::Param { .. }), Some(Val::Act(x)))
                | (Some(Val::Act(x)), Some(p @ Val::Param { .. })) => {
                    let param_first = matches!(self.val(n, "self", 0), Some(Val::Param { .. }));
                    let rank = self.rank(x);
                    let p = self
                        .operand(n, Some(p), rank)?
                        .ok_or_else(|| self.fail(n, "a transposed parameter is multiplied"))?;
                    let ins = if param_first { [p, x] } else { [x, p] };
                    let name = self.layer_name(n, None);
                    self.push(n, name, Op::Mul, &ins, &[]);
                }
                _ => return Err(self.fail(
                    n,
                    "only the product of two activations or of an activation and a parameter maps",
                )),
            },
            "cat" => {
                let dim = self.int(n, "dim", 1, 0)?;
                let list = n
                    .arg("tensors", 0)
                    .and_then(|v| v.get("as_tensors"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| self.fail(n, "`tensors` is not a list"))?;
                let vals: Vec<Option<Val>> = list
                    .iter()
                    .map(|t| {
                        t.get("name")
                            .and_then(Value::as_str)
                            .and_then(|t| self.vals.get(t))
                            .cloned()
                    })
                    .collect();
                // The per-sample rank of the activations: cat joins their first dimension
                // (channels of an image, positions of tokens).
                let rank = vals
                    .iter()
                    .find_map(|v| match v {
                        Some(Val::Act(id)) => Some(self.rank(*id)),
                        _ => None,
                    })
                    .ok_or_else(|| self.fail(n, "no concatenated tensor is an activation"))?;
                if dim != 1 && dim != -(rank as i64) {
                    return Err(self.fail(
                        n,
                        format!("cat on dim {dim}: only the first per-sample dimension (1) maps"),
                    ));
                }
                let mut ins = Vec::new();
                for v in vals {
                    match self.operand(n, v, rank)? {
                        Some(id) => ins.push(id),
                        None => {
                            return Err(self.fail(
                                n,
                                "a concatenated tensor is not an activation or a parameter",
                            ))
                        }
                    }
                }
                let name = self.layer_name(n, None);
                self.push(n, name, Op::Concat, &ins, &[]);
            }
            "dropout" | "dropout_" | "native_dropout" => {
                let x = self
                    .act(n, "input", 0)
                    .or_else(|_| self.act(n, "self", 0))?;
                let p = self.float(n, "p", 1, 0.5)?;
                if !(0.0..1.0).contains(&p) {
                    return Err(self.fail(n, format!("p {p} is outside [0, 1)")));
                }
                if p == 0.0 {
                    // torchvision's ViT and Swin keep Dropout(0.0): ATen returns the input.
                    self.set_out(n, Val::Act(x));
                    return Ok(());
                }
                if !self.boolean(n, "train", 2, true)? {
                    self.notes.dropout_eval += 1;
                }
                let name = self.layer_name(n, None);
                self.push(n, name, Op::Dropout { p, inplace }, &[x], &[]);
            }
            "clone" | "contiguous" | "detach" | "alias" | "_to_copy" | "to"
                if matches!(self.val(n, "self", 0), Some(Val::Shuffle { .. })) =>
            {
                // channel_shuffle's `.contiguous()`: the copy its layer plans.
                let v = self.val(n, "self", 0).expect("matched");
                self.set_out(n, v);
            }
            "detach" | "detach_" if has_act => {
                return Err(self.fail(
                    n,
                    "`x.detach()` in forward stops backward there, which vramlab does not plan \
                     (it plans backward through every layer)",
                ))
            }
            "_to_copy" | "to"
                if n.arg("dtype", 1)
                    .and_then(|v| v.get("as_scalar_type"))
                    .and_then(Value::as_i64)
                    .is_some_and(|t| t != FLOAT32) =>
            {
                return Err(self.fail(
                    n,
                    "a cast of an activation to another dtype: vramlab plans float32 models \
                     (half precision with --precision)",
                ))
            }
            "clone" | "contiguous" | "detach" | "alias" | "_to_copy" | "to" => {
                let x = self
                    .act(n, "self", 0)
                    .or_else(|_| self.act(n, "input", 0))?;
                self.set_out(n, Val::Act(x));
            }
            _ => {
                return Err(Pt2Error(format!(
                    "{}: node `{}`: op {} is not supported; supported aten ops: {}",
                    self.file,
                    n.name,
                    n.target,
                    SUPPORTED_OPS.join(", ")
                )))
            }
        }
        Ok(())
    }

    fn layer_name_raw(&mut self, base: String) -> String {
        let count = self.names.entry(base.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            base
        } else {
            format!("{base}_{}", *count - 1)
        }
    }
}

/// A module vramlab plans as one layer: every node the trace records inside it is one
/// graph node (attention's projections, head reshapes and kernel; Swin's pad, roll and
/// masks; PatchMerging's 2x2 gather).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Whole {
    /// `nn.MultiheadAttention` as self-attention, batch first, need_weights=False.
    Mha,
    /// torchvision's `ShiftedWindowAttention(V2)`.
    WindowAttention {
        v2: bool,
    },
    /// torchvision's `PatchMerging(V2)`'s own nodes (its `norm` and `reduction` map as
    /// LayerNorm and Linear).
    PatchMerge,
    /// MaxViT's `WindowPartition`, `SwapAxes` and `WindowDepartition`.
    Partition,
    Swap,
    Departition,
    /// MaxViT's `RelativePositionalMultiHeadAttention`.
    RelPos,
}

impl Whole {
    /// The outermost module of a node's stack that is planned whole: its path and class.
    fn of<'a>(stack: &[(&'a str, &'a str)]) -> Option<(&'a str, &'a str, Whole)> {
        let last = stack.len().checked_sub(1)?;
        stack.iter().enumerate().find_map(|(i, &(path, class))| {
            let kind = match class {
                "torch.nn.modules.activation.MultiheadAttention" => Whole::Mha,
                "torchvision.models.swin_transformer.ShiftedWindowAttention" => {
                    Whole::WindowAttention { v2: false }
                }
                "torchvision.models.swin_transformer.ShiftedWindowAttentionV2" => {
                    Whole::WindowAttention { v2: true }
                }
                "torchvision.models.swin_transformer.PatchMerging"
                | "torchvision.models.swin_transformer.PatchMergingV2"
                    if i == last =>
                {
                    Whole::PatchMerge
                }
                "torchvision.models.maxvit.WindowPartition" if i == last => Whole::Partition,
                "torchvision.models.maxvit.SwapAxes" if i == last => Whole::Swap,
                "torchvision.models.maxvit.WindowDepartition" if i == last => Whole::Departition,
                "torchvision.models.maxvit.RelativePositionalMultiHeadAttention" => Whole::RelPos,
                _ => return None,
            };
            Some((path, class, kind))
        })
    }
}

/// The tensor names an argument holds: one, or a list's.
fn tensor_names(a: &Value) -> Vec<&str> {
    match a.get("as_tensors").and_then(Value::as_array) {
        Some(list) => list
            .iter()
            .filter_map(|t| t.get("name").and_then(Value::as_str))
            .collect(),
        None => tensor_name(a).into_iter().collect(),
    }
}

impl Cx<'_> {
    /// A module planned as one layer from the nodes the trace recorded inside it.
    fn whole(
        &mut self,
        path: &str,
        class: &str,
        kind: Whole,
        members: &[N],
    ) -> Result<(), Pt2Error> {
        let fail =
            |msg: String| Pt2Error(format!("{}: module `{path}` ({class}): {msg}", self.file));
        let produced: std::collections::HashSet<&str> = members
            .iter()
            .flat_map(|m| m.outputs.iter().flatten().copied())
            .collect();
        let mut inputs: Vec<NodeId> = Vec::new();
        let mut swapped = false;
        let mut params: Vec<(String, Vec<i64>)> = Vec::new();
        let mut buffers: Vec<&str> = Vec::new();
        for m in members {
            for (_, a) in &m.args {
                for t in tensor_names(a) {
                    if produced.contains(t) {
                        continue;
                    }
                    match self.vals.get(t) {
                        Some(Val::Act(id)) if !inputs.contains(id) => inputs.push(*id),
                        Some(Val::Swapped(id)) if !inputs.contains(id) => {
                            swapped = true;
                            inputs.push(*id)
                        }
                        Some(Val::Param { fqn, dims, .. })
                            if !params.iter().any(|(f, _)| f == fqn) =>
                        {
                            params.push((fqn.clone(), dims.clone()))
                        }
                        Some(Val::Other) => buffers.push(t),
                        _ => {}
                    }
                }
            }
        }
        let [x] = inputs[..] else {
            return Err(fail(format!(
                "reads {} activations; vramlab plans it on one input (self-attention)",
                inputs.len()
            )));
        };
        let dims_of = |suffix: &str| vramlab_graph::whole::dims_of(&params, suffix);
        let size = |d: i64| usize::try_from(d).ok().filter(|&d| d > 0);
        let shape = self.shapes.get(x).cloned().unwrap_or_default();
        // The sizes of the module's first reshape (MaxViT's partitions).
        let first_reshape = || -> Vec<Option<i64>> {
            members
                .iter()
                .find(|m| matches!(m.op, "reshape" | "view" | "_unsafe_view"))
                .and_then(|m| {
                    let v = m.arg("shape", 1).or_else(|| m.arg("size", 1))?;
                    v.get("as_ints")?
                        .as_array()?
                        .iter()
                        .map(|d| d.as_i64().map(Some))
                        .collect()
                })
                .unwrap_or_default()
        };
        let op = match kind {
            Whole::Swap => {
                // After a window partition: a grid partition. Before a departition: said
                // by the departition.
                if vramlab_graph::whole::make_grid(&mut self.graph, &mut self.shapes, x) {
                    for m in members {
                        self.set_out(m, Val::Act(x));
                    }
                    return Ok(());
                }
                for m in members {
                    self.set_out(m, Val::Swapped(x));
                }
                return Ok(());
            }
            Whole::Partition => vramlab_graph::whole::partition(&first_reshape()).map_err(fail)?,
            Whole::Departition => {
                vramlab_graph::whole::departition(&first_reshape(), swapped).map_err(fail)?
            }
            Whole::RelPos => vramlab_graph::whole::rel_pos_attention(
                &dims_of("to_qkv.weight").unwrap_or_default(),
                &dims_of("relative_position_bias_table").unwrap_or_default(),
            )
            .map_err(fail)?,
            Whole::Mha => {
                let sdpa = members
                    .iter()
                    .find(|m| m.op == "scaled_dot_product_attention")
                    .ok_or_else(|| {
                        fail(
                            "no scaled_dot_product_attention: with need_weights=True (its default) \
                             nn.MultiheadAttention computes the attention weights itself, which \
                             vramlab does not plan; call it with need_weights=False"
                                .into(),
                        )
                    })?;
                if self.float(sdpa, "dropout_p", 3, 0.0)? != 0.0 {
                    return Err(fail(
                        "attention dropout is not planned (dropout=0.0 is)".into(),
                    ));
                }
                if sdpa.arg("attn_mask", 3).is_some()
                    || self.boolean(sdpa, "is_causal", 5, false)?
                {
                    return Err(fail("an attention mask is not planned".into()));
                }
                // batch_first=True: `query.transpose(1, 0)` of the module's input comes first.
                let batch_first = members.first().is_some_and(|m| {
                    m.op == "transpose"
                        && matches!(self.val(m, "self", 0), Some(Val::Act(a)) if a == x)
                });
                if !batch_first {
                    return Err(fail(
                        "batch_first=False: vramlab plans tokens as [batch, T, E] (batch_first=True)"
                            .into(),
                    ));
                }
                let w = dims_of("in_proj_weight").ok_or_else(|| {
                    fail("no in_proj_weight: separate q, k, v projections (kdim, vdim) are not planned".into())
                })?;
                let e = match w[..] {
                    [three_e, e] if Some(three_e) == e.checked_mul(3) => size(e),
                    _ => None,
                }
                .ok_or_else(|| fail(format!("in_proj_weight has sizes {w:?}")))?;
                let q = sdpa
                    .arg("query", 0)
                    .and_then(tensor_name)
                    .and_then(|q| self.dims(q))
                    .unwrap_or_default();
                let heads = match q[..] {
                    [_, h, _, _] => size(h),
                    _ => None,
                }
                .ok_or_else(|| {
                    fail(format!(
                        "the query has sizes {q:?}, expected [B, heads, T, d]"
                    ))
                })?;
                if shape.len() != 2 || shape[1] != e {
                    return Err(fail(format!(
                        "input of per-sample shape {shape:?}, expected tokens [T, {e}]"
                    )));
                }
                Op::MultiheadAttention {
                    embed_dim: e,
                    num_heads: heads,
                }
            }
            Whole::WindowAttention { v2 } => {
                let heads = if v2 {
                    dims_of("logit_scale").and_then(|d| d.first().copied())
                } else {
                    dims_of("relative_position_bias_table").and_then(|d| d.get(1).copied())
                };
                // relative_position_index holds (window area)^2 entries.
                let index = buffers
                    .iter()
                    .find(|b| b.ends_with("relative_position_index"))
                    .and_then(|b| self.dims(b))
                    .and_then(|d| d.first().copied());
                // `torch.roll(x, shifts=(-sh, -sw))` when the block shifts.
                let mut shift = (0, 0);
                if let Some(r) = members.iter().find(|m| m.op == "roll") {
                    if let Some([a, b]) = self.ints(r, "shifts", 1)?.as_deref() {
                        shift = (a.unsigned_abs() as usize, b.unsigned_abs() as usize);
                    }
                }
                vramlab_graph::whole::window_attention(
                    &dims_of("qkv.weight").unwrap_or_default(),
                    heads,
                    index,
                    shift,
                    v2,
                    &shape,
                )
                .map_err(fail)?
            }
            Whole::PatchMerge => {
                if !params.is_empty() {
                    return Err(fail("parameters outside its norm and reduction".into()));
                }
                Op::PatchMerge
            }
        };
        let name = match kind {
            Whole::PatchMerge => self.layer_name_raw(format!("{path}.merge")),
            Whole::Mha
            | Whole::WindowAttention { .. }
            | Whole::Partition
            | Whole::Swap
            | Whole::Departition
            | Whole::RelPos => self.layer_name_raw(path.to_string()),
        };
        let fqns: Vec<String> = params.into_iter().map(|(f, _)| f).collect();
        let refs: Vec<&str> = fqns.iter().map(String::as_str).collect();
        let last = members.last().expect("a group has a node");
        let id = self.push(last, name, op, &[x], &refs);
        for m in members {
            self.set_out(m, Val::Act(id));
        }
        Ok(())
    }

    /// The graph node of a parameter used as a value (ViT's class token and position
    /// embedding, ConvNeXt's layer scale), made once; `rank` is the other operand's
    /// per-sample rank, so that a leading 1 beyond it is the batch dimension.
    fn param_node(
        &mut self,
        n: &N,
        fqn: &str,
        dims: &[i64],
        rank: usize,
    ) -> Result<NodeId, Pt2Error> {
        if let Some(&id) = self.param_nodes.get(fqn) {
            return Ok(id);
        }
        let op = vramlab_graph::whole::param_value(dims, rank)
            .ok_or_else(|| self.fail(n, format!("`{fqn}` has sizes {dims:?}")))?;
        let name = self.layer_name_raw(fqn.to_string());
        let id = self.push(n, name, op, &[], &[fqn]);
        self.param_nodes.insert(fqn.to_string(), id);
        Ok(id)
    }

    /// An activation operand, or a parameter made a graph node.
    fn operand(&mut self, n: &N, v: Option<Val>, rank: usize) -> Result<Option<NodeId>, Pt2Error> {
        Ok(match v {
            Some(Val::Act(id)) => Some(id),
            Some(Val::Param {
                fqn,
                dims,
                transposed: false,
            }) => Some(self.param_node(n, &fqn, &dims, rank)?),
            _ => None,
        })
    }

    /// A layer with an optional weight and bias (BatchNorm, LayerNorm), named after the
    /// weight's module.
    fn push_with_weight_and_bias(
        &mut self,
        n: &N,
        op: Op,
        x: NodeId,
        w: &Option<(String, Vec<usize>)>,
        b: &Option<(String, Vec<usize>)>,
    ) {
        let name = self.layer_name(n, w.as_ref().map(|(w, _)| w.as_str()));
        let params: Vec<&str> = [w, b]
            .into_iter()
            .flatten()
            .map(|(p, _)| p.as_str())
            .collect();
        self.push(n, name, op, &[x], &params);
    }

    /// The per-sample rank of an activation.
    fn rank(&self, id: NodeId) -> usize {
        self.shapes.get(id).map_or(0, Vec::len)
    }

    /// `x.permute(dims)` and `x.transpose(a, b)` of an activation: a per-sample
    /// permutation (channels last and back), tokens after `flatten(2)`, or
    /// channel_shuffle's transpose.
    fn permute(&mut self, n: &N) -> Result<(), Pt2Error> {
        let v = self.val(n, "self", 0);
        let full = match &v {
            Some(Val::Act(id)) => self.rank(*id) + 1,
            Some(Val::ChannelsFlat(_)) => 3,
            Some(Val::Shuffle { .. }) => 5,
            _ => return Err(self.fail(n, "`self` is not computed from the image")),
        };
        let norm = |d: i64| -> Option<usize> {
            let d = if d < 0 { d + full as i64 } else { d };
            usize::try_from(d).ok().filter(|&d| d < full)
        };
        let perm: Option<Vec<usize>> = if n.op == "permute" {
            self.ints(n, "dims", 1)?
                .unwrap_or_default()
                .into_iter()
                .map(norm)
                .collect()
        } else {
            let (a, b) = (self.int(n, "dim0", 1, 0)?, self.int(n, "dim1", 2, 0)?);
            norm(a).zip(norm(b)).map(|(a, b)| {
                let mut p: Vec<usize> = (0..full).collect();
                p.swap(a, b);
                p
            })
        };
        let perm = perm
            .filter(|p| {
                let mut sorted = p.clone();
                sorted.sort_unstable();
                sorted == (0..full).collect::<Vec<_>>()
            })
            .ok_or_else(|| self.fail(n, "the dimensions are not a permutation"))?;
        match v {
            Some(Val::ChannelsFlat(x)) if perm == [0, 2, 1] => {
                let name = self.layer_name(n, None);
                self.push(n, name, Op::Tokens, &[x], &[]);
            }
            Some(Val::Shuffle {
                x,
                groups,
                transposed: false,
            }) if perm == [0, 2, 1, 3, 4] => self.set_out(
                n,
                Val::Shuffle {
                    x,
                    groups,
                    transposed: true,
                },
            ),
            Some(Val::Act(x)) if perm[0] == 0 => {
                let dims: Vec<usize> = perm[1..].iter().map(|d| d - 1).collect();
                if dims.iter().enumerate().all(|(i, &d)| i == d) {
                    self.set_out(n, Val::Act(x));
                } else {
                    let name = self.layer_name(n, None);
                    self.push(n, name, Op::Permute { dims }, &[x], &[]);
                }
            }
            _ => {
                return Err(self.fail(
                    n,
                    format!(
                        "permutation {perm:?} moves the batch from the first dimension (as \
                         attention with batch_first=False does): only permutations that keep \
                         the batch first map"
                    ),
                ))
            }
        }
        Ok(())
    }

    /// The views beyond flattening each sample: `[C, H, W]` as `[C, H*W]` (tokens once
    /// transposed), channel_shuffle's `view(B, g, C/g, H, W)` and its view back, and a view
    /// to the same shape. False when none applies.
    fn reshape(&mut self, n: &N) -> Result<bool, Pt2Error> {
        let v = self.val(n, "self", 0);
        let sizes = if n.op == "flatten" {
            None
        } else if n.arg("shape", 1).is_some() {
            self.ints(n, "shape", 1)?
        } else {
            self.ints(n, "size", 1)?
        };
        let fits = |sizes: &[i64], want: &[usize]| {
            sizes.len() == want.len()
                && sizes
                    .iter()
                    .zip(want)
                    .all(|(&s, &w)| s == -1 || usize::try_from(s).ok() == Some(w))
        };
        match v {
            Some(Val::Shuffle {
                x,
                groups,
                transposed: true,
            }) => {
                let shape = self.shapes.get(x).cloned().unwrap_or_default();
                if !sizes
                    .as_deref()
                    .is_some_and(|s| s.len() == 4 && fits(&s[1..], &shape))
                {
                    return Err(self.fail(
                        n,
                        "channel_shuffle's view back to [B, C, H, W] was expected",
                    ));
                }
                let name = self.layer_name(n, None);
                self.push(n, name, Op::ChannelShuffle { groups }, &[x], &[]);
                Ok(true)
            }
            Some(Val::Act(x)) => {
                let shape = self.shapes.get(x).cloned().unwrap_or_default();
                let [c, h, w] = shape[..] else {
                    // A view to the same per-sample shape is an alias.
                    if sizes
                        .as_deref()
                        .is_some_and(|s| s.len() == shape.len() + 1 && fits(&s[1..], &shape))
                    {
                        self.set_out(n, Val::Act(x));
                        return Ok(true);
                    }
                    return Ok(false);
                };
                let positions = h.checked_mul(w);
                let flat2 = match &sizes {
                    None => {
                        let start = self.int(n, "start_dim", 1, 0)?;
                        let end = self.int(n, "end_dim", 2, -1)?;
                        start == 2 && (end == -1 || end == 3)
                    }
                    Some(s) => positions.is_some_and(|p| s.len() == 3 && fits(&s[1..], &[c, p])),
                };
                if flat2 {
                    self.set_out(n, Val::ChannelsFlat(x));
                    return Ok(true);
                }
                if let Some(s) = sizes.as_deref() {
                    if s.len() == 4 && fits(&s[1..], &shape) {
                        self.set_out(n, Val::Act(x));
                        return Ok(true);
                    }
                    if let [_, g, per, sh, sw] = *s {
                        let g = usize::try_from(g).ok().filter(|&g| g > 1);
                        if let Some(g) = g {
                            if Some(c) == usize::try_from(per).ok().and_then(|p| p.checked_mul(g))
                                && fits(&[sh, sw], &[h, w])
                            {
                                self.set_out(
                                    n,
                                    Val::Shuffle {
                                        x,
                                        groups: g,
                                        transposed: false,
                                    },
                                );
                                return Ok(true);
                            }
                        }
                    }
                }
                Ok(false)
            }
            _ => Ok(false),
        }
    }

    /// `x.chunk(k, dim=1)`: one Narrow (a view) per part.
    fn chunk(&mut self, n: &N) -> Result<(), Pt2Error> {
        let x = self.act(n, "self", 0)?;
        let chunks = self.int(n, "chunks", 1, 0)?;
        let dim = self.int(n, "dim", 2, 0)?;
        let rank = self.rank(x) as i64;
        if dim != 1 && dim != -rank {
            return Err(self.fail(n, format!("chunk on dim {dim}: only channels (1) map")));
        }
        let c = self
            .shapes
            .get(x)
            .and_then(|s| s.first())
            .copied()
            .unwrap_or(0);
        let k = usize::try_from(chunks)
            .ok()
            .filter(|&k| k > 0 && k <= c)
            .ok_or_else(|| self.fail(n, format!("{chunks} chunks of {c} channels")))?;
        let len = c.div_ceil(k);
        let base = self.layer_name(n, None);
        let mut parts = Vec::new();
        for i in 0..n.outputs.len() {
            let start = i * len;
            if start >= c {
                break;
            }
            let op = Op::Narrow {
                start,
                len: len.min(c - start),
            };
            let name = self.layer_name_raw(format!("{base}.{i}"));
            parts.push(self.push(n, name, op, &[x], &[]));
        }
        // `push` named each part the first output: each output is its own part.
        for (out, id) in n.outputs.iter().zip(parts) {
            if let Some(o) = out {
                self.vals.insert(o.to_string(), Val::Act(id));
            }
        }
        Ok(())
    }
}
