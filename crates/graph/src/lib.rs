//! The model graph of vramlab: one description of a network that the memory planner
//! reads symbolically and the engine runs numerically.
//!
//! A [`Graph`] is a list of [`Node`]s in execution order (the order PyTorch's `forward`
//! runs them). Each node is one [`Op`] (a PyTorch layer such as `Conv2d` or a functional
//! op such as a residual add) and names its inputs by index, so residual networks are
//! DAGs. [`Graph::infer`] computes every node's output shape and fails with an error that
//! names the layer. Parameters carry PyTorch's names (`features.0.weight`).
//!
//! ```
//! let g = vramlab_graph::zoo::build("simple_cnn", &Default::default()).unwrap();
//! let shaped = g.infer().unwrap();
//! assert_eq!(shaped.num_params(), 62_006);
//! assert_eq!(shaped.output_shape(), &vec![10]);
//! ```
//!
//! Main types: [`Graph`], [`GraphBuilder`], [`Shaped`], [`Op`]; models come from
//! [`zoo`] or from TOML [`model_file`]s, both through [`load`].

pub mod act;
pub mod categories;
pub mod io;
pub mod model_file;
pub mod op;
pub mod rng;
pub mod text;
pub mod whole;
pub mod zoo;

pub use act::Activation;
pub use op::{
    fmt_shape, BatchNorm2d, Conv2d, LayerNorm, Linear, Op, Pool2d, Shape, TensorSpec,
    MAX_TENSOR_ELEMENTS,
};

use std::fmt;

/// A parameter's `named_parameters()` name: `<node>.<name>`, or the node's own name for a
/// parameter used as a value (a class token, a layer scale).
pub fn param_name(node: &Node, spec: &op::TensorSpec) -> String {
    if let Op::Param { .. } = node.op {
        node.name.clone()
    } else {
        format!("{}.{}", node.name, spec.name)
    }
}

/// Index of a node in its graph.
pub type NodeId = usize;

/// The longest layer name (characters): torchvision's module paths are under 100.
pub const MAX_NAME_CHARS: usize = 512;

/// One operation and the nodes it reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// PyTorch module path (`layer1.0.conv1`); parameters are named `<name>.weight`.
    pub name: String,
    pub op: Op,
    pub inputs: Vec<NodeId>,
}

use serde::{Deserialize, Serialize};

/// A model: nodes in execution order, node 0 is the input. It reads back from its JSON
/// (a checkpoint of a model from a .pt2 or .onnx file carries it); `infer` checks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub name: String,
    /// Per-sample input shape, `[C, H, W]`.
    pub input_shape: Shape,
    pub nodes: Vec<Node>,
    /// Logits of auxiliary classifiers (GoogLeNet's aux1 and aux2, Inception v3's
    /// AuxLogits), trained with 0.3 x their loss as torchvision's recipes do; computed
    /// only in training.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aux: Vec<NodeId>,
    /// The order the modules register their parameters (`model.parameters()`), where it
    /// differs from the order they run (GoogLeNet's aux heads run mid-network and are
    /// registered last): every node once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub param_order: Option<Vec<NodeId>>,
    /// Initialisations the model sets over its layers' defaults, by parameter name
    /// (torchvision's families re-initialise their convolutions and Linears after
    /// building them: `zoo::init`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub init: std::collections::BTreeMap<String, op::Init>,
    /// The file the model was read from, for the errors that name a layer of it (not
    /// saved with the graph).
    #[serde(skip)]
    pub source: Option<String>,
}

/// What can be wrong with a graph or a model description.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphError {
    /// Shapes do not fit; names the layer.
    Shape { layer: String, message: String },
    /// The graph's structure is wrong (bad input index, ...).
    Structure(String),
    /// An unknown zoo model name.
    UnknownModel(String),
    /// A model file could not be read or parsed.
    ModelFile { path: String, message: String },
}

impl fmt::Display for GraphError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GraphError::Shape { layer, message } => write!(f, "layer `{layer}`: {message}"),
            GraphError::Structure(m) => write!(f, "invalid graph: {m}"),
            GraphError::UnknownModel(name) => {
                write!(f, "unknown model `{name}`")?;
                if let Some(close) = zoo::suggest(name) {
                    write!(f, ": did you mean {close}?")?;
                } else {
                    write!(
                        f,
                        ": expected one of {} or a path to a .toml model file, a .onnx file or a .pt2 archive",
                        zoo::NAMES.join(", ")
                    )?;
                }
                if std::path::Path::new(name).is_file() {
                    write!(f, " (to read the file `{name}`, write ./{name})")?;
                }
                Ok(())
            }
            GraphError::ModelFile { path, message } => write!(f, "{path}: {message}"),
        }
    }
}

impl std::error::Error for GraphError {}

/// Builds a graph in execution order, the way a `forward` method reads.
#[derive(Debug, Clone)]
pub struct GraphBuilder {
    graph: Graph,
}

impl GraphBuilder {
    pub fn new(name: &str, input_shape: Shape) -> Self {
        GraphBuilder {
            graph: Graph {
                name: name.to_string(),
                input_shape,
                nodes: vec![Node {
                    name: "input".into(),
                    op: Op::Input,
                    inputs: vec![],
                }],
                aux: Vec::new(),
                param_order: None,
                init: Default::default(),
                source: None,
            },
        }
    }

    /// Marks `node` as the logits of an auxiliary classifier.
    pub fn aux_output(&mut self, node: NodeId) {
        self.graph.aux.push(node);
    }

    /// The order `model.parameters()` lists the nodes' parameters in.
    pub fn param_order(&mut self, order: Vec<NodeId>) {
        self.graph.param_order = Some(order);
    }

    /// The input node.
    pub fn input(&self) -> NodeId {
        0
    }

    /// Appends `op` reading `inputs`; returns its id.
    pub fn add(&mut self, name: impl Into<String>, op: Op, inputs: &[NodeId]) -> NodeId {
        self.graph.nodes.push(Node {
            name: name.into(),
            op,
            inputs: inputs.to_vec(),
        });
        self.graph.nodes.len() - 1
    }

    /// Appends a one-input op after `x`.
    pub fn then(&mut self, name: impl Into<String>, op: Op, x: NodeId) -> NodeId {
        self.add(name, op, &[x])
    }

    /// How many nodes there are so far (the next node's id).
    pub fn build_len(&self) -> NodeId {
        self.graph.nodes.len()
    }

    pub fn build(self) -> Graph {
        self.graph
    }
}

/// A graph with every node's per-sample output shape.
#[derive(Debug, Clone, PartialEq)]
pub struct Shaped {
    pub graph: Graph,
    /// `shapes[i]` is node i's output shape per sample.
    pub shapes: Vec<Shape>,
    /// For each node, the nodes that read it, in execution order.
    pub consumers: Vec<Vec<NodeId>>,
    /// The named parameters and buffers, made on first use (a planner asks for them in
    /// every simulation; naming them is string formatting).
    named: NamedCache,
}

/// [`Shaped::params`] and [`Shaped::buffers`], computed once. Not part of a graph's
/// identity: two graphs are equal whether or not either was asked for its names.
#[derive(Debug, Clone, Default)]
struct NamedCache(std::sync::OnceLock<Named>);

#[derive(Debug, Clone)]
struct Named {
    params: Vec<NamedTensor>,
    buffers: Vec<NamedTensor>,
    /// Each node's parameters (`Op::params`), and the index of its first in `params`.
    node_params: Vec<Vec<TensorSpec>>,
    first_param: Vec<usize>,
}

impl PartialEq for NamedCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// A parameter or buffer of the model with its full PyTorch name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedTensor {
    pub name: String,
    pub node: NodeId,
    pub shape: Vec<usize>,
    pub elem_bytes: usize,
}

impl NamedTensor {
    pub fn numel(&self) -> u128 {
        op::numel(&self.shape)
    }
    pub fn bytes(&self) -> u128 {
        self.numel().saturating_mul(self.elem_bytes as u128)
    }
}

impl Graph {
    /// Whether each node feeds the main output (the last node): an auxiliary head's
    /// nodes do not.
    pub fn feeds_output(&self) -> Vec<bool> {
        let mut keep = vec![false; self.nodes.len()];
        if let Some(last) = keep.last_mut() {
            *last = true;
        }
        for i in (0..self.nodes.len()).rev() {
            if keep[i] {
                for &j in &self.nodes[i].inputs {
                    if let Some(k) = keep.get_mut(j) {
                        *k = true;
                    }
                }
            }
        }
        if let Some(first) = keep.first_mut() {
            *first = true;
        }
        keep
    }

    /// The model without its auxiliary classifiers (torchvision's `aux_logits=False`).
    pub fn without_aux(&self) -> Graph {
        if self.aux.is_empty() {
            return self.clone();
        }
        let keep = self.feeds_output();
        let mut new_index = vec![usize::MAX; self.nodes.len()];
        let mut nodes = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if keep[i] {
                new_index[i] = nodes.len();
                let mut n = n.clone();
                n.inputs = n.inputs.iter().map(|&j| new_index[j]).collect();
                nodes.push(n);
            }
        }
        let param_order = self.param_order.as_ref().map(|o| {
            o.iter()
                .filter(|&&k| keep[k])
                .map(|&k| new_index[k])
                .collect()
        });
        Graph {
            name: self.name.clone(),
            input_shape: self.input_shape.clone(),
            nodes,
            aux: Vec::new(),
            param_order,
            init: self.init.clone(),
            source: self.source.clone(),
        }
    }

    /// How parameter `spec` of `node` starts: the model's own rule where it has one,
    /// else the layer's default.
    pub fn init_of(&self, node: &Node, spec: &op::TensorSpec) -> op::Init {
        self.init
            .get(&param_name(node, spec))
            .copied()
            .unwrap_or(spec.init)
    }

    /// Checks the structure and infers all shapes.
    pub fn infer(&self) -> Result<Shaped, GraphError> {
        if self.nodes.first().map(|n| &n.op) != Some(&Op::Input) {
            return Err(GraphError::Structure("node 0 must be the input".into()));
        }
        if self.input_shape.is_empty() || self.input_shape.contains(&0) {
            return Err(GraphError::Structure(format!(
                "input shape {} has a zero or no dimension",
                fmt_shape(&self.input_shape)
            )));
        }
        if op::numel(&self.input_shape) > MAX_TENSOR_ELEMENTS {
            return Err(GraphError::Structure(format!(
                "input shape {} has more than {MAX_TENSOR_ELEMENTS} elements per image",
                fmt_shape(&self.input_shape)
            )));
        }
        let mut shapes: Vec<Shape> = Vec::with_capacity(self.nodes.len());
        let mut consumers = vec![Vec::new(); self.nodes.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            // Names reach every table and checkpoint: a megabyte of one, padded into each
            // row of a table, made gigabytes of output.
            let len = node.name.chars().count();
            if len > MAX_NAME_CHARS {
                let start: String = node.name.chars().take(24).collect();
                return Err(GraphError::Structure(format!(
                    "a layer's name (`{start}...`) is {len} characters long, more than the \
                     {MAX_NAME_CHARS} a name may have"
                )));
            }
            if i == 0 {
                if !node.inputs.is_empty() {
                    return Err(GraphError::Structure(format!(
                        "the input `{}` reads {} node(s); it reads none",
                        node.name,
                        node.inputs.len()
                    )));
                }
                shapes.push(self.input_shape.clone());
                continue;
            }
            if matches!(node.op, Op::Input) {
                return Err(GraphError::Structure(format!(
                    "layer `{}`: only node 0 may be the input",
                    node.name
                )));
            }
            let (least, most) = node.op.arity();
            if node.inputs.len() < least || node.inputs.len() > most {
                let takes = if least == most {
                    least.to_string()
                } else {
                    format!("at least {least}")
                };
                return Err(GraphError::Structure(format!(
                    "layer `{}` ({}) takes {takes} input(s), got {}",
                    node.name,
                    node.op.type_name(),
                    node.inputs.len()
                )));
            }
            for &inp in &node.inputs {
                if inp >= i {
                    return Err(GraphError::Structure(format!(
                        "layer `{}` reads node {inp}, which does not come before it",
                        node.name
                    )));
                }
                consumers[inp].push(i);
            }
            let ins: Vec<&Shape> = node.inputs.iter().map(|&j| &shapes[j]).collect();
            let out = node
                .op
                .output_shape(&ins)
                .map_err(|m| GraphError::from((node.name.clone(), m)))?;
            let too_big = |what: String, shape: &[usize]| {
                GraphError::from((
                    node.name.clone(),
                    format!(
                        "{what} {} has {} elements, more than the {MAX_TENSOR_ELEMENTS} \
                         a tensor may have",
                        fmt_shape(shape),
                        op::numel(shape)
                    ),
                ))
            };
            if out.contains(&0) {
                return Err(GraphError::from((
                    node.name.clone(),
                    format!("output shape {} has a zero dimension", fmt_shape(&out)),
                )));
            }
            if op::numel(&out) > MAX_TENSOR_ELEMENTS {
                return Err(too_big("output shape (per image)".into(), &out));
            }
            for t in node.op.params().iter().chain(&node.op.buffers()) {
                if t.numel() > MAX_TENSOR_ELEMENTS {
                    return Err(too_big(format!("`{}` of shape", t.name), &t.shape));
                }
            }
            shapes.push(out);
        }
        for &a in &self.aux {
            if a == 0 || a >= self.nodes.len() {
                return Err(GraphError::Structure(format!(
                    "auxiliary output {a} is not a node"
                )));
            }
        }
        if let Some(order) = &self.param_order {
            let mut seen = vec![false; self.nodes.len()];
            for &k in order {
                if k >= seen.len() || std::mem::replace(&mut seen[k], true) {
                    return Err(GraphError::Structure(
                        "the parameter order does not list every node once".into(),
                    ));
                }
            }
            if seen.iter().any(|s| !s) {
                return Err(GraphError::Structure(
                    "the parameter order does not list every node once".into(),
                ));
            }
        }
        // Parameter names must be unique, as they are in a PyTorch state_dict.
        let mut seen = std::collections::HashSet::new();
        for n in &self.nodes {
            let has_state = !n.op.params().is_empty() || !n.op.buffers().is_empty();
            if has_state && !seen.insert(n.name.as_str()) {
                return Err(GraphError::Structure(format!(
                    "two layers with parameters are both named `{}`",
                    n.name
                )));
            }
        }
        // And so must the state_dict's keys: a parameter used as a value is named by its
        // layer (`c.bias`), which can be another layer's parameter's name.
        let mut keys: std::collections::HashMap<String, &str> = Default::default();
        for n in &self.nodes {
            for spec in n.op.params().iter().chain(n.op.buffers().iter()) {
                let key = param_name(n, spec);
                if let Some(other) = keys.insert(key.clone(), n.name.as_str()) {
                    return Err(GraphError::Structure(format!(
                        "two parameters are both named `{key}` (layers `{other}` and `{}`), as \
                         a state_dict cannot hold them",
                        n.name
                    )));
                }
            }
        }
        Ok(Shaped {
            graph: self.clone(),
            shapes,
            consumers,
            named: NamedCache::default(),
        })
    }
}

impl Shaped {
    pub fn nodes(&self) -> &[Node] {
        &self.graph.nodes
    }

    /// The per-sample shape of the last node (the logits).
    pub fn output_shape(&self) -> &Shape {
        self.shapes.last().expect("a graph has at least its input")
    }

    /// Number of classes the model predicts (flat logits).
    pub fn num_classes(&self) -> usize {
        // infer caps every tensor at MAX_TENSOR_ELEMENTS, so this does not saturate.
        usize::try_from(op::numel(self.output_shape())).unwrap_or(usize::MAX)
    }

    /// Per-sample element count of node i's output.
    pub fn numel(&self, i: NodeId) -> u128 {
        op::numel(&self.shapes[i])
    }

    /// All parameters in `model.parameters()` order.
    pub fn params(&self) -> &[NamedTensor] {
        &self.named_all().params
    }

    /// All buffers in `model.buffers()` order.
    pub fn buffers(&self) -> &[NamedTensor] {
        &self.named_all().buffers
    }

    /// Node `i`'s parameters (its op's [`Op::params`], made once).
    pub fn node_params(&self, i: NodeId) -> &[TensorSpec] {
        &self.named_all().node_params[i]
    }

    fn named_all(&self) -> &Named {
        self.named.0.get_or_init(|| {
            let node_params: Vec<Vec<TensorSpec>> =
                self.graph.nodes.iter().map(|n| n.op.params()).collect();
            let mut first_param = vec![0; self.graph.nodes.len()];
            let mut k = 0;
            for i in self.param_nodes() {
                first_param[i] = k;
                k += node_params[i].len();
            }
            Named {
                params: self.named(|op| op.params()),
                buffers: self.named(|op| op.buffers()),
                node_params,
                first_param,
            }
        })
    }

    /// The nodes in `model.parameters()` order.
    pub fn param_nodes(&self) -> Vec<NodeId> {
        match &self.graph.param_order {
            Some(order) => order.clone(),
            None => (0..self.graph.nodes.len()).collect(),
        }
    }

    /// For each node, the index of its first parameter in [`Shaped::params`].
    pub fn first_param_index(&self) -> &[usize] {
        &self.named_all().first_param
    }

    fn named(&self, f: impl Fn(&Op) -> Vec<TensorSpec>) -> Vec<NamedTensor> {
        let mut out = Vec::new();
        for i in self.param_nodes() {
            let n = &self.graph.nodes[i];
            for t in f(&n.op) {
                // A parameter used as a value is named by its node alone.
                let name = if matches!(n.op, Op::Param { .. }) {
                    n.name.clone()
                } else {
                    format!("{}.{}", n.name, t.name)
                };
                out.push(NamedTensor {
                    name,
                    node: i,
                    shape: t.shape,
                    elem_bytes: t.elem_bytes,
                });
            }
        }
        out
    }

    pub fn num_params(&self) -> u128 {
        self.params().iter().map(|p| p.numel()).sum()
    }

    /// Buffer bytes (BatchNorm running statistics).
    pub fn buffer_bytes(&self) -> u128 {
        self.buffers().iter().map(|b| b.bytes()).sum()
    }

    /// Multiply-accumulates of one forward pass per sample.
    pub fn macs(&self) -> u128 {
        (0..self.graph.nodes.len())
            .map(|i| self.graph.nodes[i].op.macs(&self.shapes[i]))
            .sum()
    }
}

/// Options that change a zoo model (`--num-classes`, `--input`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelOptions {
    pub num_classes: Option<usize>,
    pub input_shape: Option<Shape>,
}

/// Whether a model argument names a file rather than a zoo model: it contains a path
/// separator or ends in `.toml`. Nothing else is read from disk, so a file called
/// `resnet18` in the working directory never shadows the zoo's ResNet-18 (write
/// `./resnet18` to read that file).
pub fn names_a_file(name_or_path: &str) -> bool {
    name_or_path.ends_with(".toml")
        || name_or_path.contains('/')
        || name_or_path.contains(std::path::MAIN_SEPARATOR)
}

/// A zoo name or a path to a model file: zoo names win unless the argument looks like
/// a path ([`names_a_file`]).
pub fn load(name_or_path: &str, opts: &ModelOptions) -> Result<Graph, GraphError> {
    let mut g = if names_a_file(name_or_path) {
        model_file::load(std::path::Path::new(name_or_path))?
    } else {
        zoo::build(name_or_path, opts)?
    };
    if let Some(s) = &opts.input_shape {
        g.input_shape = s.clone();
    }
    Ok(g)
}

/// Parses `3x32x32` (or `1x28x28`) into a shape.
pub fn parse_shape(s: &str) -> Result<Shape, String> {
    let dims: Result<Vec<usize>, _> = s
        .split(['x', 'X', ','])
        .map(|d| d.trim().parse::<usize>())
        .collect();
    match dims {
        Ok(d) if d.len() == 3 && d.iter().all(|&v| v > 0) => Ok(d),
        _ => Err(format!(
            "`{s}` is not an image shape: expected CxHxW with positive sizes, e.g. 3x32x32"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_named_like_a_zoo_model_does_not_shadow_it() {
        let dir = std::env::temp_dir().join(format!("vramlab-shadow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("resnet18");
        std::fs::write(&file, "[[layers]]\ntype = \"ReLU\"\n").unwrap();
        // The bare name is the zoo model, whatever the working directory holds...
        let prev = std::env::current_dir().unwrap();
        std::env::set_current_dir(&dir).unwrap();
        let zoo = load("resnet18", &ModelOptions::default());
        let local = load("./resnet18", &ModelOptions::default());
        let unknown = load("resnet18x", &ModelOptions::default()).map(|_| ());
        std::env::set_current_dir(prev).unwrap();
        assert_eq!(zoo.unwrap().infer().unwrap().num_params(), 11_689_512);
        // ...and a path reads the file.
        assert_eq!(local.unwrap().nodes.len(), 2);
        let e = unknown.unwrap_err().to_string();
        assert_eq!(e, "unknown model `resnet18x`: did you mean resnet18?");
        assert!(names_a_file("models/simple_cnn.toml") && names_a_file("net.toml"));
        assert!(!names_a_file("resnet18"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
