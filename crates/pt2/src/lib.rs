//! torch.export archives for vramlab: reads a `.pt2` file written by `torch.export.save`
//! (`<name>/models/model.json`, as PyTorch 2.15 writes it; an archive with
//! `serialized_exported_program.json` instead is read the same way) and maps the exported
//! program's aten ops back to the layers of [`vramlab_graph`], with the parameter names
//! the export records (`layer1.0.conv1.weight`) and PyTorch's `named_parameters()` order.
//!
//! The archive is read by [`zip`], a small bounded reader: only the central directory
//! and the program's JSON are read, never the weights.
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
    "clone",
    "contiguous",
    "conv2d",
    "convolution",
    "detach",
    "div_",
    "dropout",
    "dropout_",
    "empty",
    "flatten",
    "gelu",
    "gelu_",
    "hardsigmoid",
    "hardsigmoid_",
    "hardswish",
    "hardswish_",
    "hardtanh",
    "hardtanh_",
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
    "sigmoid",
    "sigmoid_",
    "silu",
    "silu_",
    "sym_size",
    "t",
    "tanh",
    "tanh_",
    "view",
    "_unsafe_view",
];

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
    };
    let param_fqns = cx.signature()?;
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
    let names: Vec<String> = shaped.params().into_iter().map(|p| p.name).collect();
    if names != param_fqns {
        return Err(Pt2Error(format!(
            "{file}: the mapped layers name their parameters {} but the export lists {}",
            names.join(", "),
            param_fqns.join(", ")
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
        for s in specs {
            if let Some(p) = s.get("parameter") {
                let arg = p.pointer("/arg/name").and_then(Value::as_str);
                let fqn = p.get("parameter_name").and_then(Value::as_str);
                let (Some(arg), Some(fqn)) = (arg, fqn) else {
                    return Err(self.err("a parameter input_spec lacks arg.name or parameter_name"));
                };
                let dims = self.dims(arg).unwrap_or_default();
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
        let Some(chw) = chw else {
            return Err(self.err(format!(
                "input `{input}` has {} sizes, expected [batch, C, H, W] with fixed C, H, W",
                sizes.len()
            )));
        };
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
        for n in nodes {
            let node = N::parse(n).ok_or_else(|| self.err("a graph node lacks target or name"))?;
            self.node(&node)?;
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
        Some(N {
            name,
            op,
            target,
            args,
            outputs,
            module,
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
        let base = weight
            .and_then(|w| w.rsplit_once('.').map(|(m, _)| m.to_string()))
            .or_else(|| n.module.clone())
            .unwrap_or_else(|| n.name.to_string());
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
        let out = op.output_shape(&ins).unwrap_or_default();
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
            let one = tensor_name(a).map(|t| matches!(self.vals.get(t), Some(Val::Act(_))));
            let many = a.get("as_tensors").and_then(Value::as_array).map(|l| {
                l.iter().any(|t| {
                    t.get("name")
                        .and_then(Value::as_str)
                        .is_some_and(|t| matches!(self.vals.get(t), Some(Val::Act(_))))
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
            "permute" | "t" => {
                return Err(self.fail(
                    n,
                    "permuting an activation (channels-last blocks, tokens) is not supported; \
                     only a Linear weight's transpose maps",
                ))
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
                let v = match (
                    self.val(n, "self", 0),
                    n.arg(first, 1)
                        .and_then(|v| v.get("as_float"))
                        .and_then(Value::as_f64),
                ) {
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
                let op = Op::BatchNorm2d(BatchNorm2d {
                    num_features,
                    eps: self.float(n, "eps", eps_pos, 1e-5)?,
                    momentum: self.float(n, "momentum", mom_pos, 0.1)?,
                    affine: w.is_some() && b.is_some(),
                    track_running_stats: n.arg("running_mean", 3).is_some(),
                });
                let name = self.layer_name(n, w.as_ref().map(|(w, _)| w.as_str()));
                let params: Vec<&str> = [&w, &b]
                    .into_iter()
                    .flatten()
                    .map(|(p, _)| p.as_str())
                    .collect();
                self.push(n, name, op, &[x], &params);
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
                    match self.ints(n, "size", 1)?.as_deref() {
                        Some([_, f]) => per_sample
                            .is_some_and(|p| u128::try_from(*f).ok() == Some(p) || *f == -1),
                        _ => false,
                    }
                };
                if !flat_ok {
                    return Err(self.fail(
                        n,
                        "only flattening each sample (`x.view(B, -1)`, `torch.flatten(x, 1)`) maps",
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
            "linear" => {
                let x = self.act(n, "input", 0)?;
                let (w, wd) = self
                    .param(n, "weight", 1)?
                    .ok_or_else(|| self.fail(n, "no weight"))?;
                let [out_f, in_f] = wd[..] else {
                    return Err(self.fail(n, format!("weight `{w}` has sizes {wd:?}, expected 2")));
                };
                let bias = self.param(n, "bias", 2)?;
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
                    _ => {
                        return Err(self.fail(
                            n,
                            "only the sum of two activations (a residual) or a Linear's bias maps",
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
                _ => return Err(self.fail(n, "only the product of two activations maps")),
            },
            "cat" => {
                let dim = self.int(n, "dim", 1, 0)?;
                if dim != 1 && dim != -3 {
                    return Err(self.fail(n, format!("cat on dim {dim}: only channels (1) map")));
                }
                let list = n
                    .arg("tensors", 0)
                    .and_then(|v| v.get("as_tensors"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| self.fail(n, "`tensors` is not a list"))?;
                let mut ins = Vec::new();
                for t in list {
                    match t
                        .get("name")
                        .and_then(Value::as_str)
                        .and_then(|t| self.vals.get(t))
                    {
                        Some(Val::Act(id)) => ins.push(*id),
                        _ => return Err(self.fail(n, "a concatenated tensor is not an activation")),
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
                if !self.boolean(n, "train", 2, true)? {
                    self.notes.dropout_eval += 1;
                }
                let name = self.layer_name(n, None);
                self.push(n, name, Op::Dropout { p, inplace }, &[x], &[]);
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
