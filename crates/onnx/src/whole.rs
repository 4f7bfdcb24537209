//! torchvision modules planned as one layer from everything an exporter wrote inside
//! them, as the `.pt2` reader does: Swin's `ShiftedWindowAttention(V2)` (padding, rolls,
//! window partitions, the relative position bias and the shifted-window mask, which the
//! exporters spell with dozens of Slice, ScatterND, Where and Reshape nodes) and
//! `PatchMerging(V2)`'s 2x2 gather, MaxViT's `WindowPartition`, `SwapAxes`,
//! `WindowDepartition` and `RelativePositionalMultiHeadAttention`.
//!
//! Which nodes belong to a module: the dynamo exporter records each node's module path
//! and classes in its metadata (`pkg.torch.onnx.name_scopes`,
//! `pkg.torch.onnx.class_hierarchy`); the TorchScript exporter names nodes by module path
//! (`/features/features.1/features.1.0/attn/Pad`), and the module's class is then told by
//! its parameters (`attn.qkv.weight` with `attn.relative_position_bias_table` is a
//! window attention) or, for MaxViT's parameterless partitions, by torchvision's
//! attribute names (`partition_op`, `partition_swap`, `departition_swap`,
//! `departition_op`).

use std::collections::{HashMap, HashSet};

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whole {
    WindowAttention {
        v2: bool,
    },
    /// PatchMerging's own nodes (its `norm` and `reduction` map as layers of their own).
    PatchMerge,
    Partition,
    Swap,
    Departition,
    RelPos,
}

impl Whole {
    /// torchvision's class of the module, as `summary` names it.
    fn class_name(self) -> &'static str {
        match self {
            Whole::WindowAttention { v2: false } => "ShiftedWindowAttention",
            Whole::WindowAttention { v2: true } => "ShiftedWindowAttentionV2",
            Whole::PatchMerge => "PatchMerging",
            Whole::Partition => "WindowPartition",
            Whole::Swap => "SwapAxes",
            Whole::Departition => "WindowDepartition",
            Whole::RelPos => "RelativePositionalMultiHeadAttention",
        }
    }
}

/// A Python list literal of names (`['', 'features', 'features.1']`).
fn list(s: &str) -> Vec<&str> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    s.split(", ")
        .map(|x| x.trim().trim_matches('\'').trim_matches('"'))
        .collect()
}

/// The node's modules, outermost first, with their classes when the file says them.
pub(crate) fn scopes(n: &proto::Node) -> Vec<(String, Option<String>)> {
    if let Some(sc) = &n.name_scopes {
        let paths = list(sc);
        let classes = n.class_hierarchy.as_deref().map(list).unwrap_or_default();
        // The first entry is the root module, the last the op itself.
        return paths
            .iter()
            .enumerate()
            .take(paths.len().saturating_sub(1))
            .skip(1)
            .filter(|(_, p)| !p.is_empty())
            .map(|(i, p)| {
                (
                    p.to_string(),
                    classes
                        .get(i)
                        .filter(|_| classes.len() == paths.len())
                        .map(|c| c.to_string()),
                )
            })
            .collect();
    }
    let Some(path) = module_path(&n.name).filter(|p| !p.is_empty()) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut end = 0;
    for part in path.split('.') {
        end += part.len();
        out.push((path[..end].to_string(), None));
        end += 1;
    }
    out
}

fn by_class(class: &str) -> Option<Whole> {
    Some(match class {
        "torchvision.models.swin_transformer.ShiftedWindowAttention" => {
            Whole::WindowAttention { v2: false }
        }
        "torchvision.models.swin_transformer.ShiftedWindowAttentionV2" => {
            Whole::WindowAttention { v2: true }
        }
        "torchvision.models.swin_transformer.PatchMerging"
        | "torchvision.models.swin_transformer.PatchMergingV2" => Whole::PatchMerge,
        "torchvision.models.maxvit.WindowPartition" => Whole::Partition,
        "torchvision.models.maxvit.SwapAxes" => Whole::Swap,
        "torchvision.models.maxvit.WindowDepartition" => Whole::Departition,
        "torchvision.models.maxvit.RelativePositionalMultiHeadAttention" => Whole::RelPos,
        _ => return None,
    })
}

/// The modules told by their parameters' names (files without class metadata).
pub(crate) fn by_params(inits: &[proto::Tensor]) -> HashMap<String, Whole> {
    let names: HashSet<&str> = inits.iter().map(|t| t.name.as_str()).collect();
    let mut out = HashMap::new();
    for t in inits {
        let n = t.name.as_str();
        if let Some(p) = n.strip_suffix(".relative_position_bias_table") {
            if names.contains(format!("{p}.qkv.weight").as_str()) {
                out.insert(p.to_string(), Whole::WindowAttention { v2: false });
            } else if names.contains(format!("{p}.to_qkv.weight").as_str()) {
                out.insert(p.to_string(), Whole::RelPos);
            }
        } else if let Some(p) = n.strip_suffix(".logit_scale") {
            if names.contains(format!("{p}.qkv.weight").as_str()) {
                out.insert(p.to_string(), Whole::WindowAttention { v2: true });
            }
        } else if let Some(p) = n.strip_suffix(".reduction.weight") {
            if names.contains(format!("{p}.norm.weight").as_str()) {
                out.insert(p.to_string(), Whole::PatchMerge);
            }
        }
    }
    out
}

impl Cx<'_> {
    /// The module `n` belongs to that is planned whole, if any: (path, kind).
    pub(crate) fn whole_of(&self, n: &proto::Node) -> Option<(String, Whole)> {
        let sc = scopes(n);
        let innermost = sc.last().map(|(p, _)| p.clone());
        for (path, class) in &sc {
            let kind = match class {
                Some(c) => by_class(c),
                None => self
                    .wholes
                    .get(path)
                    .copied()
                    .or_else(|| match path.rsplit('.').next() {
                        Some("partition_op") => Some(Whole::Partition),
                        Some("partition_swap" | "departition_swap") => Some(Whole::Swap),
                        Some("departition_op") => Some(Whole::Departition),
                        _ => None,
                    }),
            };
            match kind {
                // PatchMerging's norm and reduction are layers of their own.
                Some(Whole::PatchMerge) if Some(path) != innermost.as_ref() => return None,
                Some(k) => return Some((path.clone(), k)),
                None => {}
            }
        }
        None
    }

    /// Plans the module at `path` from its nodes.
    pub(crate) fn whole(
        &mut self,
        path: &str,
        kind: Whole,
        members: &[&proto::Node],
    ) -> Result<(), OnnxError> {
        let fail = |cx: &Self, msg: String| {
            OnnxError(format!(
                "{}: module `{path}` ({}, opset {}): {msg}",
                cx.file,
                kind.class_name(),
                cx.opset
            ))
        };
        const RENAMED: &str = " (the dynamo exporter's optimiser renames and merges weights: \
                               export with optimize=False, or with the TorchScript exporter)";
        // What the module reads from outside: activations, parameters, buffers. Its own
        // shape arithmetic is evaluated (Partition's reshape sizes); what is computed from
        // the activation is followed.
        let mut derived: HashSet<&str> = HashSet::new();
        let mut inputs: Vec<NodeId> = Vec::new();
        let mut params: Vec<(String, Vec<i64>)> = Vec::new();
        let mut reshapes: Vec<Vec<Option<i64>>> = Vec::new();
        let mut rolled = false;
        let mut swapped = false;
        for m in members {
            let mut reads_flow = false;
            let mut flow_inputs = 0;
            for s in &m.inputs {
                if derived.contains(s.as_str()) {
                    reads_flow = true;
                    flow_inputs += 1;
                    continue;
                }
                match self.vals.get(s) {
                    Some(Val::Act(id) | Val::Swapped(id)) => {
                        swapped |= matches!(self.vals.get(s), Some(Val::Swapped(_)));
                        if !inputs.contains(id) {
                            inputs.push(*id);
                        }
                        reads_flow = true;
                        flow_inputs += 1;
                    }
                    Some(v) if v.is_flow() => {
                        return Err(fail(
                            self,
                            format!("reads `{s}`, halfway through another pattern"),
                        ))
                    }
                    Some(Val::Const { name, dims, .. })
                        if !name.is_empty() && !params.iter().any(|(f, _)| f == name) =>
                    {
                        params.push((name.clone(), dims.clone()))
                    }
                    _ => {}
                }
            }
            if let (true, Some(Val::Swapped(id))) = (
                m.op_type == "Shape",
                m.inputs.first().and_then(|s| self.vals.get(s)),
            ) {
                // SwapAxes(-2, -3) of [G, S, D]: [S, G, D].
                let s = self.shape_of(*id);
                let mut v: Vec<Option<i64>> = vec![None];
                v.extend(s.iter().map(|&d| Some(d as i64)));
                let k = v.len();
                if k >= 3 {
                    v.swap(k - 2, k - 3);
                }
                let v = self.shape_val(m, v);
                if let Some(o) = m.outputs.first() {
                    self.vals.insert(o.clone(), v);
                }
                continue;
            }
            if !reads_flow || m.op_type == "Shape" {
                self.node(m)?;
                continue;
            }
            if m.op_type == "Reshape" {
                reshapes.push(self.int_input(m, 1).unwrap_or_default());
            }
            // torch.roll: the two slices of the activation concatenated.
            if m.op_type == "Concat" && flow_inputs >= 2 {
                rolled = true;
            }
            for o in &m.outputs {
                derived.insert(o.as_str());
            }
        }
        let [x] = inputs[..] else {
            return Err(fail(
                self,
                format!(
                    "reads {} activations; vramlab plans it on one input",
                    inputs.len()
                ),
            ));
        };
        let dims_of = |suffix: &str| vramlab_graph::whole::dims_of(&params, suffix);
        let shape = self.shape_of(x);
        let first_reshape = reshapes.first().cloned().unwrap_or_default();
        let op = match kind {
            Whole::Swap => {
                // After a window partition: a grid partition. Before a departition: the
                // departition says it.
                let out = if vramlab_graph::whole::make_grid(&mut self.graph, &mut self.shapes, x) {
                    Val::Act(x)
                } else {
                    Val::Swapped(x)
                };
                for m in members {
                    for o in &m.outputs {
                        self.vals.insert(o.clone(), out.clone());
                    }
                }
                return Ok(());
            }
            Whole::Partition => {
                vramlab_graph::whole::partition(&first_reshape).map_err(|e| fail(self, e))?
            }
            Whole::Departition => vramlab_graph::whole::departition(&first_reshape, swapped)
                .map_err(|e| fail(self, e))?,
            Whole::RelPos => vramlab_graph::whole::rel_pos_attention(
                &dims_of("to_qkv.weight").unwrap_or_default(),
                &dims_of("relative_position_bias_table").unwrap_or_default(),
            )
            .map_err(|e| fail(self, format!("{e}{RENAMED}")))?,
            Whole::WindowAttention { v2 } => {
                let heads = if v2 {
                    dims_of("logit_scale").and_then(|d| d.first().copied())
                } else {
                    dims_of("relative_position_bias_table").and_then(|d| d.get(1).copied())
                };
                let index = dims_of("relative_position_index").map(|d| d.iter().product::<i64>());
                // torchvision's blocks shift by half a window, and only roll when they do.
                let side = index
                    .map(|a| ((a as f64).sqrt().sqrt().round()) as usize)
                    .unwrap_or(0);
                let shift = if rolled { (side / 2, side / 2) } else { (0, 0) };
                vramlab_graph::whole::window_attention(
                    &dims_of("qkv.weight").unwrap_or_default(),
                    heads,
                    index,
                    shift,
                    v2,
                    &shape,
                )
                .map_err(|e| fail(self, format!("{e}{RENAMED}")))?
            }
            Whole::PatchMerge => {
                if !params.is_empty() {
                    return Err(fail(
                        self,
                        "parameters outside its norm and reduction".into(),
                    ));
                }
                Op::PatchMerge
            }
        };
        // Every weight the module's nodes read is one the planned op has: an extra one
        // (a user's learned scale inside the attention) would vanish from the plan.
        let own: Vec<String> = op
            .params()
            .iter()
            .chain(op.buffers().iter())
            .map(|t| t.name.to_string())
            .collect();
        if let Some((extra, _)) = params.iter().find(|(fqn, _)| {
            !own.iter()
                .any(|o| fqn == o || fqn.ends_with(&format!(".{o}")))
        }) {
            return Err(fail(
                self,
                format!(
                    "reads `{extra}`, which torchvision's module does not have: vramlab plans \
                     the module as torchvision builds it"
                ),
            ));
        }
        let name = match kind {
            Whole::PatchMerge => self.unique(format!("{path}.merge")),
            Whole::WindowAttention { .. }
            | Whole::Partition
            | Whole::Swap
            | Whole::Departition
            | Whole::RelPos => self.unique(path.to_string()),
        };
        let id = self.push(name, op, &[x]);
        for m in members {
            for o in &m.outputs {
                if derived.contains(o.as_str()) {
                    self.vals.insert(o.clone(), Val::Act(id));
                }
            }
        }
        Ok(())
    }
}
