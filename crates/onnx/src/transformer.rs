//! The exporters' spellings of the transformer-era layers, mapped back to PyTorch's:
//!
//! - `nn.MultiheadAttention` (batch first, self-attention, as torchvision's ViT and a
//!   user's own block call it): a transpose of the tokens to `[T, B, E]`, the packed input
//!   projection (`MatMul` by `in_proj_weight` transposed, `Add` of its bias), the head
//!   reshapes, `MatMul`-`Softmax`-`MatMul` (with the scale, dropout and casts between),
//!   the output projection, the transpose back. Everything between the first transpose
//!   and the last is one attention; the heads are read off the reshape to `head_dim`.
//! - the erf form of GELU: `x * 0.5 * (1 + erf(x / sqrt(2)))` (TorchScript) next to
//!   the `Gelu` op (dynamo, opset 20);
//! - `LayerNormalization`; `Transpose` as `permute` (ConvNeXt's channels-last blocks);
//!   `Reshape` + `Transpose` of a feature map into tokens (ViT's `_process_input`);
//!   `Reshape`-`Transpose`-`Reshape` as `channel_shuffle`; `Slice`, `Split` and
//!   `SplitToSequence` of the channels as `chunk`;
//! - parameters used as values: ViT's `class_token` (`Expand` then `Concat`) and
//!   `pos_embedding` (`Add`), ConvNeXt's `layer_scale` (`Mul`);
//! - torchvision's `StochasticDepth` in training: a `[B, 1, 1, 1]` noise drawn by
//!   `RandomUniformLike`, `Less` than the survival rate, divided by it, times the input;
//! - `Dropout` with ratio 0 is nothing (PyTorch returns the input itself).

use super::*;
use vramlab_graph::op::LayerNorm;

/// Inside an `nn.MultiheadAttention`: what has been read of it so far.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AttnVal {
    /// The tokens `[T, E]` the attention reads.
    x: NodeId,
    embed: usize,
    heads: Option<usize>,
    stage: AttnStage,
    /// The module's name, from `<name>.in_proj_weight` or `<name>.out_proj.weight`.
    name: Option<String>,
    /// This tensor's full shape, batch included, where known.
    shape: Vec<Option<i64>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AttnStage {
    /// The tokens transposed to `[T, B, E]`.
    Input,
    /// After the packed input projection: queries, keys, values and their products.
    Projected,
    /// After the output projection, before the transpose back.
    Out,
}

/// Where an erf-form GELU has got to (`x / sqrt(2)`, `erf`, `+ 1`, `x * (...)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErfStage {
    Div,
    Erf,
    Plus,
    Times,
}

const MHA: &str = "inside nn.MultiheadAttention";

fn perm_of(n: &proto::Node) -> Vec<i64> {
    n.attr("perm").map(|a| a.ints.clone()).unwrap_or_default()
}

/// `v` rounded to 6 decimals (an f32 constant read as the f64 PyTorch was given).
fn round6(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

impl Cx<'_> {
    /// A name for a layer without parameters (a view, a product): `<module>.<what>`, so
    /// that the module's own layer keeps `<module>` for its parameters.
    fn aux_name(&mut self, n: &proto::Node, what: &str) -> String {
        let base = match module_path(&n.name) {
            Some(m) if !m.is_empty() => format!("{m}.{what}"),
            _ if n.name.is_empty() => what.to_string(),
            _ => n.name.clone(),
        };
        self.unique(base)
    }

    /// The first float value of a constant input, if it is one.
    fn scalar(&self, name: &str) -> Option<f64> {
        match self.vals.get(name) {
            Some(Val::Const {
                values: Some(v), ..
            }) => floats_of(v).first().copied(),
            Some(Val::Ints(v)) => v.first().copied().flatten().map(|i| i as f64),
            _ => None,
        }
    }

    /// An integer vector input (shape arithmetic or a constant), `None` entries unknown.
    pub(crate) fn int_input(&self, n: &proto::Node, i: usize) -> Option<Vec<Option<i64>>> {
        match n.inputs.get(i).and_then(|s| self.vals.get(s)) {
            Some(Val::Ints(v)) => Some(v.clone()),
            Some(Val::Const {
                values: Some(v), ..
            }) => Some(ints_of(v).into_iter().map(Some).collect()),
            _ => None,
        }
    }

    /// A named initializer input that is no layer's weight: a parameter used as a value.
    fn named_param(&self, s: &str) -> Option<(String, Vec<i64>)> {
        match self.vals.get(s) {
            Some(Val::Const { name, dims, .. })
                if !name.is_empty()
                    && dims.iter().product::<i64>() > 1
                    && !self.pending_matmul.contains_key(s) =>
            {
                Some((name.clone(), dims.clone()))
            }
            _ => None,
        }
    }

    /// A parameter as a graph node (`Op::Param`), once per parameter.
    fn param_value(
        &mut self,
        n: &proto::Node,
        name: &str,
        dims: &[i64],
        rank: usize,
    ) -> Result<NodeId, OnnxError> {
        if let Some(&id) = self.param_nodes.get(name) {
            return Ok(id);
        }
        let op = vramlab_graph::whole::param_value(dims, rank)
            .ok_or_else(|| self.fail(n, format!("`{name}` has dims {dims:?}")))?;
        let id = self.push(name.to_string(), op, &[]);
        self.names.insert(name.to_string(), 1);
        self.param_nodes.insert(name.to_string(), id);
        Ok(id)
    }

    /// Integer arithmetic on shape vectors (`Div`, `Mul`, `Add`, `Sub`, `Mod`, `Slice`):
    /// what the TorchScript exporter computes `head_dim` and chunk bounds with.
    fn int_ops(&self, n: &proto::Node) -> Option<Val> {
        let ints_in = n
            .inputs
            .iter()
            .any(|s| matches!(self.vals.get(s), Some(Val::Ints(_))));
        let all_int_consts = n.inputs.iter().all(|s| {
            matches!(
                self.vals.get(s),
                Some(Val::Ints(_))
                    | Some(Val::Const {
                        values: Some(Values::Ints(_)),
                        ..
                    })
            )
        });
        if !ints_in && !all_int_consts {
            return None;
        }
        let op = n.op_type.as_str();
        if op == "Slice" {
            let data = self.int_input(n, 0)?;
            let start = self.int_input(n, 1)?.first().copied().flatten()?;
            let end = self.int_input(n, 2)?.first().copied().flatten()?;
            let len = data.len() as i64;
            let clamp = |i: i64| (if i < 0 { i + len } else { i }).clamp(0, len) as usize;
            let (s, e) = (clamp(start), clamp(end));
            return Some(Val::Ints(if s < e {
                data[s..e].to_vec()
            } else {
                Vec::new()
            }));
        }
        let a = self.int_input(n, 0)?;
        let b = self.int_input(n, 1)?;
        let len = a.len().max(b.len());
        if len > proto::MAX_DIMS
            || (a.len() != len && a.len() != 1)
            || (b.len() != len && b.len() != 1)
        {
            return None;
        }
        let at = |v: &[Option<i64>], i: usize| if v.len() == 1 { v[0] } else { v[i] };
        let out = (0..len)
            .map(|i| {
                let (x, y) = (at(&a, i)?, at(&b, i)?);
                match op {
                    "Add" => x.checked_add(y),
                    "Sub" => x.checked_sub(y),
                    "Mul" => x.checked_mul(y),
                    "Div" => x.checked_div(y),
                    "Mod" => x.checked_rem_euclid(y),
                    _ => None,
                }
            })
            .collect();
        Some(Val::Ints(out))
    }

    /// torch's decomposition of `adaptive_avg_pool2d` whose windows do not divide the map
    /// (GoogLeNet's aux heads, 14 -> 4, by the dynamo exporter): the map transposed to
    /// `[H, W, B, C]`, every window gathered by computed indices (`GatherND`), the window
    /// dimensions moved last (`[B, C, oh, ow, kh, kw]`), their mean. Read as
    /// `AdaptiveAvgPool2d((oh, ow))` when the file declares those shapes and PyTorch's
    /// windows for them are all `kh x kw` (uneven windows decompose with masks: refused).
    fn adaptive_windows(
        &mut self,
        n: &proto::Node,
        first: &Option<Val>,
    ) -> Result<Option<bool>, OnnxError> {
        let op = n.op_type.as_str();
        let v = match (op, first) {
            ("Transpose", Some(Val::Act(x)))
                if perm_of(n) == [2, 3, 0, 1] && self.shape_of(*x).len() == 3 =>
            {
                Val::Windows {
                    x: *x,
                    gathered: false,
                    moved: false,
                }
            }
            (
                "GatherND",
                Some(Val::Windows {
                    x, gathered: false, ..
                }),
            ) => Val::Windows {
                x: *x,
                gathered: true,
                moved: false,
            },
            (
                "Transpose",
                Some(Val::Windows {
                    x,
                    gathered: true,
                    moved: false,
                }),
            ) if perm_of(n) == [4, 5, 0, 1, 2, 3] => Val::Windows {
                x: *x,
                gathered: true,
                moved: true,
            },
            ("ReduceMean", Some(Val::Windows { x, moved: true, .. })) => {
                let x = *x;
                let dims = |name: Option<&String>| -> Option<Vec<i64>> {
                    let d = self.declared.get(name?)?;
                    d.iter()
                        .skip(1)
                        .map(|d| match d {
                            proto::Dim::Value(v) => Some(*v),
                            proto::Dim::Param(_) | proto::Dim::Unknown => None,
                        })
                        .collect()
                };
                let (Some(win), Some(out)) = (dims(n.inputs.first()), dims(n.outputs.first()))
                else {
                    return Err(self.unsupported(
                        n,
                        "as the decomposition of adaptive_avg_pool2d needs the shapes of its \
                         windows declared in the file (value_info)",
                    ));
                };
                let shape = self.shape_of(x);
                // An adaptive pool has at most one window per position: a declared size
                // past the map's is refused before its windows are walked.
                let fits = |i: usize, input: usize, output: usize, k: usize| {
                    output <= input
                        && k <= input
                        && (0..output).all(|o| {
                            let (s, e) = ((o * input) / output, ((o + 1) * input).div_ceil(output));
                            e - s == k
                        })
                        && i == input
                };
                let ok = match (&win[..], &out[..]) {
                    ([c, oh, ow, kh, kw], [c2, oh2, ow2])
                        if c == c2
                            && oh == oh2
                            && ow == ow2
                            && [*oh, *ow, *kh, *kw].iter().all(|&v| v > 0) =>
                    {
                        let (oh, ow, kh, kw) =
                            (*oh as usize, *ow as usize, *kh as usize, *kw as usize);
                        (fits(shape[1], shape[1], oh, kh) && fits(shape[2], shape[2], ow, kw))
                            .then_some((oh, ow))
                    }
                    _ => None,
                };
                let Some(output_size) = ok else {
                    return Err(self.unsupported(
                        n,
                        &format!(
                            "as the decomposition of adaptive_avg_pool2d: windows {win:?} of a \
                             {} map are not PyTorch's even adaptive windows",
                            vramlab_graph::fmt_shape(&shape)
                        ),
                    ));
                };
                let name = self.aux_name(n, "adaptive_avg_pool2d");
                self.add_op(n, name, Op::AdaptiveAvgPool2d { output_size }, &[x]);
                return Ok(Some(true));
            }
            _ => return Ok(None),
        };
        self.set_out(n, v);
        Ok(Some(true))
    }

    /// The patterns of this module. `Ok(true)`: `n` was mapped here.
    pub(crate) fn pattern(&mut self, n: &proto::Node, has_act: bool) -> Result<bool, OnnxError> {
        let op = n.op_type.as_str();
        let first = n.inputs.first().and_then(|s| self.vals.get(s)).cloned();
        // Inside an attention, everything is the attention's.
        let attn: Vec<AttnVal> = n
            .inputs
            .iter()
            .filter_map(|s| match self.vals.get(s) {
                Some(Val::Attn(a)) => Some((**a).clone()),
                _ => None,
            })
            .collect();
        if !attn.is_empty() {
            self.attention(n, attn)?;
            return Ok(true);
        }
        if let Some(done) = self.adaptive_windows(n, &first)? {
            return Ok(done);
        }
        if !has_act {
            let v = match op {
                // A weight transposed for a MatMul (TorchScript's Linear on tokens).
                "Transpose" => match &first {
                    Some(Val::Const { name, dims, .. })
                        if !name.is_empty() && dims.len() == 2 && perm_of(n) == [1, 0] =>
                    {
                        Some(Val::Const {
                            name: name.clone(),
                            dims: vec![dims[1], dims[0]],
                            values: None,
                        })
                    }
                    _ => None,
                },
                // Stochastic depth's noise: `[B, 1, 1, 1]` (row) or all ones (batch).
                "ConstantOfShape" | "Expand" => {
                    let shape = self.int_input(n, if op == "Expand" { 1 } else { 0 });
                    match (&first, shape) {
                        (Some(Val::Const { name, dims, .. }), _)
                            if op == "Expand"
                                && !name.is_empty()
                                && dims.iter().product::<i64>() > 1 =>
                        {
                            // `class_token.expand(B, -1, -1)`.
                            Some(Val::Expanded {
                                name: name.clone(),
                                dims: dims.clone(),
                            })
                        }
                        (_, Some(s)) if s.len() >= 2 && s[1..].iter().all(|d| *d == Some(1)) => {
                            Some(Val::Noise {
                                row: s[0] != Some(1),
                                keep: None,
                            })
                        }
                        _ => None,
                    }
                }
                "RandomUniformLike" | "Bernoulli" | "Cast" => match &first {
                    Some(v @ Val::Noise { .. }) => Some(v.clone()),
                    _ => None,
                },
                "Less" => match (&first, n.inputs.get(1).and_then(|s| self.scalar(s))) {
                    (Some(Val::Noise { row, .. }), Some(keep)) => Some(Val::Noise {
                        row: *row,
                        keep: Some(keep),
                    }),
                    _ => None,
                },
                "Div" if matches!(first, Some(Val::Noise { .. })) => first.clone(),
                "Div" | "Mul" | "Add" | "Sub" | "Mod" | "Slice" => self.int_ops(n),
                _ => None,
            };
            return Ok(match v {
                Some(v) => {
                    self.set_out(n, v);
                    true
                }
                None => false,
            });
        }
        match op {
            "Transpose" => self.transpose(n, first),
            "Reshape" => self.reshape(n, first),
            "LayerNormalization" => {
                let x = self.act(n, 0)?;
                let axis = self.int_attr(n, "axis", -1);
                let rank = self.shape_of(x).len() as i64;
                if axis != -1 && axis != rank {
                    return Err(self.unsupported(
                        n,
                        &format!("over axis {axis} is not supported (only the last dimension)"),
                    ));
                }
                let (wname, w) = match self.konst(n, 1)? {
                    Some((name, dims, _)) if dims.len() == 1 && dims[0] > 0 => {
                        (name, dims[0] as usize)
                    }
                    _ => return Err(self.fail(n, "the scale is not a 1-D weight")),
                };
                let eps = n.attr("epsilon").and_then(|a| a.f).unwrap_or(1e-5) as f64;
                let ln = LayerNorm {
                    normalized_shape: w,
                    eps: (eps * 1e9).round() / 1e9,
                    elementwise_affine: !wname.is_empty(),
                    bias: self.param(n, 2).is_some(),
                };
                let name = self.layer_name(
                    n,
                    Some(&wname).filter(|w| !w.is_empty()).map(|s| s.as_str()),
                );
                self.add_op(n, name, Op::LayerNorm(ln), &[x]);
                Ok(true)
            }
            "Div" | "Erf" | "Add" | "Mul" => self.erf_gelu(n, first),
            "Gather" if matches!(first, Some(Val::Strided(_))) => {
                // The dynamo exporter's `as_strided` of a contiguous tensor to its own
                // shape (torchvision's AdaptiveAvgPool2d(1) under decomposition): a view.
                if let Some(Val::Strided(x)) = first {
                    self.set_out(n, Val::Act(x));
                }
                Ok(true)
            }
            "Gather" => {
                let x = self.act(n, 0)?;
                let axis = self.int_attr(n, "axis", 0);
                let idx = self.int_input(n, 1);
                let dims = n
                    .inputs
                    .get(1)
                    .and_then(|s| match self.vals.get(s) {
                        Some(Val::Const { dims, .. }) => Some(dims.len()),
                        _ => None,
                    })
                    .unwrap_or(1);
                let shape = self.shape_of(x);
                match (axis, idx.as_deref(), dims) {
                    (1, Some([Some(i)]), 0) if shape.len() == 2 && *i >= 0 => {
                        let name = self.aux_name(n, "select");
                        self.add_op(n, name, Op::Select { index: *i as usize }, &[x]);
                        Ok(true)
                    }
                    _ => Err(self.unsupported(
                        n,
                        "is supported only as `x[:, i]` of a token sequence (the class token)",
                    )),
                }
            }
            "Dropout" => {
                let ratio = n.inputs.get(1).and_then(|s| self.scalar(s));
                if ratio == Some(0.0) {
                    let x = self.act(n, 0)?;
                    self.notes.dropout_training += 1;
                    self.set_out(n, Val::Act(x));
                    return Ok(true);
                }
                Ok(false)
            }
            "Concat"
                if n.inputs
                    .iter()
                    .any(|s| matches!(self.vals.get(s), Some(Val::Expanded { .. }))) =>
            {
                let axis = self.int_attr(n, "axis", 0);
                let mut xs = Vec::new();
                let mut rank = 0;
                for s in &n.inputs {
                    if let Some(Val::Act(id)) = self.vals.get(s) {
                        rank = self.shape_of(*id).len();
                    }
                }
                if axis != 1 {
                    return Err(self.unsupported(
                        n,
                        &format!("along axis {axis} is not supported (only axis 1)"),
                    ));
                }
                for (i, s) in n.inputs.iter().enumerate() {
                    match self.vals.get(s).cloned() {
                        Some(Val::Expanded { name, dims }) => {
                            xs.push(self.param_value(n, &name, &dims, rank)?)
                        }
                        _ => xs.push(self.act(n, i)?),
                    }
                }
                let name = self.aux_name(n, "cat");
                self.add_op(n, name, Op::Concat, &xs);
                Ok(true)
            }
            "Slice" => self.slice(n),
            "Split" | "SplitToSequence" => self.split(n),
            "SequenceAt" => {
                let Some(Val::Seq { parts }) = first else {
                    return Err(self.unsupported(n, "of anything but a split is not supported"));
                };
                let i = n
                    .inputs
                    .get(1)
                    .and_then(|s| self.scalar(s))
                    .map(|i| i as i64)
                    .ok_or_else(|| self.fail(n, "the position is not a constant"))?;
                let i = if i < 0 { i + parts.len() as i64 } else { i };
                let (x, start, len) = usize::try_from(i)
                    .ok()
                    .and_then(|i| parts.get(i).copied())
                    .ok_or_else(|| {
                        self.fail(n, format!("position {i} of {} parts", parts.len()))
                    })?;
                let name = self.aux_name(n, "narrow");
                self.add_op(n, name, Op::Narrow { start, len }, &[x]);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn transpose(&mut self, n: &proto::Node, x: Option<Val>) -> Result<bool, OnnxError> {
        let perm = perm_of(n);
        match x {
            Some(Val::Act(x)) => {
                let shape = self.shape_of(x);
                if perm.first() == Some(&0) && perm.len() == shape.len() + 1 {
                    let dims: Option<Vec<usize>> = perm[1..]
                        .iter()
                        .map(|&p| usize::try_from(p - 1).ok())
                        .collect();
                    let Some(dims) = dims.filter(|d| {
                        let mut s = d.clone();
                        s.sort_unstable();
                        s.iter().enumerate().all(|(i, &v)| i == v)
                    }) else {
                        return Err(self.fail(n, format!("perm {perm:?} is not a permutation")));
                    };
                    let name = self.aux_name(n, "permute");
                    self.add_op(n, name, Op::Permute { dims }, &[x]);
                    return Ok(true);
                }
                if perm == [1, 0, 2] && shape.len() == 2 {
                    // nn.MultiheadAttention(batch_first=True) turns the tokens to
                    // [T, B, E] before its projections.
                    let (t, e) = (shape[0] as i64, shape[1]);
                    self.set_out(
                        n,
                        Val::Attn(Box::new(AttnVal {
                            x,
                            embed: e,
                            heads: None,
                            stage: AttnStage::Input,
                            name: None,
                            shape: vec![Some(t), None, Some(e as i64)],
                        })),
                    );
                    return Ok(true);
                }
                Err(self.unsupported(
                    n,
                    &format!(
                        "with perm {perm:?} moves the batch dimension: only permutations of the \
                         per-sample dimensions, and nn.MultiheadAttention's own, are supported"
                    ),
                ))
            }
            Some(Val::Flat(x)) if perm == [0, 2, 1] => {
                let name = self.aux_name(n, "tokens");
                self.add_op(n, name, Op::Tokens, &[x]);
                Ok(true)
            }
            Some(Val::Shuffle {
                x,
                groups,
                transposed: false,
            }) if perm == [0, 2, 1, 3, 4] => {
                self.set_out(
                    n,
                    Val::Shuffle {
                        x,
                        groups,
                        transposed: true,
                    },
                );
                Ok(true)
            }
            _ => Err(self.unsupported(n, "of this tensor is not supported")),
        }
    }

    fn reshape(&mut self, n: &proto::Node, x: Option<Val>) -> Result<bool, OnnxError> {
        let target = self.int_input(n, 1);
        match (x, target.as_deref()) {
            (Some(Val::Act(x)), Some(t)) => {
                let s: Vec<i64> = self.shape_of(x).iter().map(|&d| d as i64).collect();
                match (s.as_slice(), t) {
                    (_, [Some(-1)])
                        if self
                            .uses
                            .get(&n.outputs[0])
                            .is_some_and(|u| u.iter().all(|o| o == "Gather")) =>
                    {
                        self.set_out(n, Val::Strided(x));
                        Ok(true)
                    }
                    // ViT's x.reshape(n, hidden, h * w).
                    ([c, h, w], [_, tc, thw])
                        if *tc == Some(*c) && (*thw == Some(h * w) || *thw == Some(-1)) =>
                    {
                        self.set_out(n, Val::Flat(x));
                        Ok(true)
                    }
                    // channel_shuffle's x.view(B, groups, C / groups, H, W).
                    ([c, h, w], [_, Some(g), Some(cg), th, tw])
                        if *g > 0 && g * cg == *c && *th == Some(*h) && *tw == Some(*w) =>
                    {
                        self.set_out(
                            n,
                            Val::Shuffle {
                                x,
                                groups: *g as usize,
                                transposed: false,
                            },
                        );
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            }
            (
                Some(Val::Shuffle {
                    x,
                    groups,
                    transposed: true,
                }),
                Some(t),
            ) if t.len() == 4 => {
                let name = self.aux_name(n, "shuffle");
                self.add_op(n, name, Op::ChannelShuffle { groups }, &[x]);
                Ok(true)
            }
            (Some(Val::Flat(_) | Val::Shuffle { .. }), _) => {
                Err(self.unsupported(n, "of this tensor is not supported"))
            }
            _ => Ok(false),
        }
    }

    /// `x * 0.5 * (1 + erf(x / sqrt(2)))`, op by op; also ConvNeXt's and ViT's
    /// parameters used as values, and stochastic depth's product.
    fn erf_gelu(&mut self, n: &proto::Node, first: Option<Val>) -> Result<bool, OnnxError> {
        let op = n.op_type.as_str();
        let second = n.inputs.get(1).and_then(|s| self.vals.get(s)).cloned();
        let c2 = n.inputs.get(1).and_then(|s| self.scalar(s));
        let erf = |x, stage, input: &str| Val::Erf {
            x,
            stage,
            input: input.to_string(),
        };
        match (op, &first, &second) {
            ("Div", Some(Val::Act(x)), _)
                if c2.is_some_and(|c| (c - std::f64::consts::SQRT_2).abs() < 1e-4) =>
            {
                let v = erf(*x, ErfStage::Div, &n.inputs[0]);
                self.set_out(n, v);
                Ok(true)
            }
            (
                "Erf",
                Some(Val::Erf {
                    x,
                    stage: ErfStage::Div,
                    input,
                }),
                _,
            ) => {
                let v = erf(*x, ErfStage::Erf, input);
                self.set_out(n, v);
                Ok(true)
            }
            (
                "Add",
                Some(Val::Erf {
                    x,
                    stage: ErfStage::Erf,
                    input,
                }),
                _,
            )
            | (
                "Add",
                _,
                Some(Val::Erf {
                    x,
                    stage: ErfStage::Erf,
                    input,
                }),
            ) => {
                let one = n.inputs.iter().filter_map(|s| self.scalar(s)).next();
                if one != Some(1.0) {
                    return Err(self.unsupported(n, "of erf(x) and this is not GELU's"));
                }
                let v = erf(*x, ErfStage::Plus, input);
                self.set_out(n, v);
                Ok(true)
            }
            (
                "Mul",
                Some(Val::Act(a)),
                Some(Val::Erf {
                    x,
                    stage: ErfStage::Plus,
                    input,
                }),
            )
            | (
                "Mul",
                Some(Val::Erf {
                    x,
                    stage: ErfStage::Plus,
                    input,
                }),
                Some(Val::Act(a)),
            ) if a == x => {
                let v = erf(*x, ErfStage::Times, input);
                self.set_out(n, v);
                Ok(true)
            }
            (
                "Mul",
                Some(Val::Erf {
                    x,
                    stage: ErfStage::Times,
                    ..
                }),
                _,
            )
            | (
                "Mul",
                _,
                Some(Val::Erf {
                    x,
                    stage: ErfStage::Times,
                    ..
                }),
            ) => {
                let half = n.inputs.iter().filter_map(|s| self.scalar(s)).next();
                if half != Some(0.5) {
                    return Err(
                        self.unsupported(n, "of x * (1 + erf(x / sqrt(2))) by this is not GELU's")
                    );
                }
                let x = *x;
                let name = self.layer_name(n, None);
                self.add_op(n, name, Op::act(Activation::Gelu, false), &[x]);
                Ok(true)
            }
            (_, Some(Val::Erf { .. }), _) | (_, _, Some(Val::Erf { .. })) => {
                Err(self.unsupported(n, "inside x * 0.5 * (1 + erf(x / sqrt(2))) is not GELU's"))
            }
            // Stochastic depth: input * noise.
            ("Mul", Some(Val::Act(x)), Some(Val::Noise { row, keep }))
            | ("Mul", Some(Val::Noise { row, keep }), Some(Val::Act(x))) => {
                let keep = keep.ok_or_else(|| {
                    self.unsupported(n, "of an activation by random noise with no survival rate")
                })?;
                let (x, row) = (*x, *row);
                let name = self.layer_name(n, None);
                self.add_op(
                    n,
                    name,
                    Op::StochasticDepth {
                        p: round6(1.0 - keep),
                        row,
                    },
                    &[x],
                );
                Ok(true)
            }
            // A parameter as a value: `x + pos_embedding`, `layer_scale * x`.
            ("Add" | "Mul", Some(Val::Act(_)), Some(Val::Const { .. }))
            | ("Add" | "Mul", Some(Val::Const { .. }), Some(Val::Act(_))) => {
                let (pi, ai) = if matches!(first, Some(Val::Act(_))) {
                    (1, 0)
                } else {
                    (0, 1)
                };
                let Some((pname, dims)) = self.named_param(&n.inputs[pi]) else {
                    return Ok(false);
                };
                if op == "Add" && dims.len() == 1 && self.pending_matmul.contains_key(&n.inputs[ai])
                {
                    return Ok(false);
                }
                let x = self.act(n, ai)?;
                let rank = self.shape_of(x).len();
                let p = self.param_value(n, &pname, &dims, rank)?;
                let ins = if pi == 0 { [p, x] } else { [x, p] };
                let name = self.aux_name(n, if op == "Add" { "add" } else { "mul" });
                let layer = if op == "Add" {
                    Op::Add { inplace: false }
                } else {
                    Op::Mul
                };
                self.add_op(n, name, layer, &ins);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// `x[:, a:b]` of the channels: one part of `chunk`.
    fn slice(&mut self, n: &proto::Node) -> Result<bool, OnnxError> {
        let x = self.act(n, 0)?;
        let shape = self.shape_of(x);
        let one = |i: usize| {
            self.int_input(n, i)
                .and_then(|v| v.first().copied().flatten())
        };
        let axes = self.int_input(n, 3);
        let steps = self.int_input(n, 4);
        let rank = shape.len() as i64 + 1;
        let axis_ok = match axes.as_deref() {
            Some([Some(a)]) => *a == 1 || *a == 1 - rank,
            _ => false,
        };
        let step_ok = matches!(steps.as_deref(), None | Some([Some(1)]));
        let (Some(start), Some(end), true, true) = (one(1), one(2), axis_ok, step_ok) else {
            return Err(self.unsupported(
                n,
                "is supported only as a constant range of the channels (`chunk`)",
            ));
        };
        let c = shape.first().copied().unwrap_or(0) as i64;
        let clamp = |i: i64| (if i < 0 { i + c } else { i }).clamp(0, c) as usize;
        let (s, e) = (clamp(start), clamp(end));
        if s >= e {
            return Err(self.fail(n, format!("an empty range {start}..{end} of {c} channels")));
        }
        let name = self.aux_name(n, "narrow");
        self.add_op(
            n,
            name,
            Op::Narrow {
                start: s,
                len: e - s,
            },
            &[x],
        );
        Ok(true)
    }

    /// `Split` and `SplitToSequence` of the channels.
    fn split(&mut self, n: &proto::Node) -> Result<bool, OnnxError> {
        let x = self.act(n, 0)?;
        let shape = self.shape_of(x);
        let rank = shape.len() as i64 + 1;
        let axis = self.int_attr(n, "axis", 0);
        if axis != 1 && axis != 1 - rank {
            return Err(self.unsupported(
                n,
                &format!("along axis {axis} is not supported (only channels)"),
            ));
        }
        let c = shape.first().copied().unwrap_or(0);
        let seq = n.op_type == "SplitToSequence";
        let sizes: Vec<usize> = match self.int_input(n, 1) {
            Some(v) if !v.is_empty() => {
                let v: Option<Vec<usize>> = v
                    .iter()
                    .map(|d| d.and_then(|d| usize::try_from(d).ok()).filter(|&d| d > 0))
                    .collect();
                let v = v.ok_or_else(|| self.fail(n, "split sizes are not positive constants"))?;
                if seq && v.len() == 1 {
                    // A scalar: parts of that size, the last smaller (as many as a
                    // node may have outputs at most: each part is one).
                    let k = v[0];
                    let count = c.div_ceil(k);
                    if count > proto::MAX_IO {
                        return Err(self.fail(
                            n,
                            format!(
                                "splits {c} channels into {count} parts of {k}, more than the \
                                 {} a model maps",
                                proto::MAX_IO
                            ),
                        ));
                    }
                    (0..count).map(|i| k.min(c - i * k)).collect()
                } else {
                    v
                }
            }
            _ => {
                let parts = n
                    .attr("num_outputs")
                    .and_then(|a| a.i)
                    .and_then(|k| usize::try_from(k).ok())
                    .or_else(|| n.attr("split").map(|a| a.ints.len()))
                    .unwrap_or(n.outputs.len())
                    .max(1);
                // One part per output: a count from the file is held to the node's
                // outputs before any part is made.
                if parts != n.outputs.len() && !seq {
                    return Err(self.fail(
                        n,
                        format!(
                            "num_outputs {parts} but the node has {} outputs",
                            n.outputs.len()
                        ),
                    ));
                }
                if parts > proto::MAX_IO {
                    return Err(self.fail(
                        n,
                        format!(
                            "{parts} parts, more than the {} a model maps",
                            proto::MAX_IO
                        ),
                    ));
                }
                match n.attr("split") {
                    Some(a) if !a.ints.is_empty() => {
                        a.ints.iter().map(|&d| d.max(0) as usize).collect()
                    }
                    _ => (0..parts)
                        .map(|i| {
                            c.div_ceil(parts)
                                .min(c.saturating_sub(i * c.div_ceil(parts)))
                        })
                        .collect(),
                }
            }
        };
        if sizes.iter().sum::<usize>() != c {
            return Err(self.fail(
                n,
                format!("split sizes {sizes:?} do not add up to {c} channels"),
            ));
        }
        let mut parts = Vec::with_capacity(sizes.len());
        let mut start = 0;
        for &len in &sizes {
            parts.push((x, start, len));
            start += len;
        }
        if seq {
            self.set_out(n, Val::Seq { parts });
            return Ok(true);
        }
        if parts.len() != n.outputs.len() {
            return Err(self.fail(
                n,
                format!(
                    "{} split sizes for {} outputs",
                    parts.len(),
                    n.outputs.len()
                ),
            ));
        }
        for (o, &(x, start, len)) in n.outputs.iter().zip(&parts) {
            if self.readers(o) == 0 {
                self.vals.insert(o.clone(), Val::Other);
                continue;
            }
            let name = self.aux_name(n, "narrow");
            let id = self.push(name, Op::Narrow { start, len }, &[x]);
            self.vals.insert(o.clone(), Val::Act(id));
        }
        Ok(true)
    }

    /// One node inside an `nn.MultiheadAttention`.
    fn attention(&mut self, n: &proto::Node, ins: Vec<AttnVal>) -> Result<(), OnnxError> {
        let op = n.op_type.as_str();
        let mut a = ins[0].clone();
        let e = a.embed as i64;
        let fail = |cx: &Self, why: &str| cx.unsupported(n, &format!("{MHA}: {why}"));
        let weight = |cx: &Self| -> Option<(String, Vec<i64>)> {
            n.inputs.get(1).and_then(|s| match cx.vals.get(s) {
                Some(Val::Const { name, dims, .. }) if dims.len() == 2 => {
                    Some((name.clone(), dims.clone()))
                }
                _ => None,
            })
        };
        match op {
            "Shape" => {
                let len = a.shape.len() as i64 + 1;
                let clamp =
                    |i: i64| (if i < 0 { i + len - 1 } else { i }).clamp(0, len - 1) as usize;
                let s = clamp(self.int_attr(n, "start", 0));
                let t = clamp(self.int_attr(n, "end", len - 1));
                let v = if s < t {
                    a.shape[s..t].to_vec()
                } else {
                    Vec::new()
                };
                self.set_out(n, Val::Ints(v));
                return Ok(());
            }
            "Transpose" => {
                let perm = perm_of(n);
                if perm.len() != a.shape.len() {
                    return Err(fail(
                        self,
                        &format!("perm {perm:?} of a {}-D tensor", a.shape.len()),
                    ));
                }
                if a.stage == AttnStage::Out && perm == [1, 0, 2] {
                    return self.emit_attention(n, a);
                }
                a.shape = perm
                    .iter()
                    .map(|&p| {
                        usize::try_from(p)
                            .ok()
                            .and_then(|p| a.shape.get(p).copied())
                            .flatten()
                    })
                    .collect();
            }
            "MatMul" | "Gemm" if ins.len() == 1 => {
                let Some((wname, dims)) = weight(self) else {
                    return Err(fail(self, "a product with something that is no weight"));
                };
                let (k, m) = if op == "Gemm" && self.int_attr(n, "transB", 0) != 0 {
                    (dims[1], dims[0])
                } else {
                    (dims[0], dims[1])
                };
                match a.stage {
                    AttnStage::Input if k == e && m == 3 * e => {
                        a.stage = AttnStage::Projected;
                        a.name = wname.strip_suffix(".in_proj_weight").map(str::to_string);
                    }
                    AttnStage::Projected if k == e && m == e => {
                        a.stage = AttnStage::Out;
                        if let Some(p) = wname.strip_suffix(".out_proj.weight") {
                            a.name = Some(p.to_string());
                        }
                    }
                    _ => {
                        return Err(fail(
                            self,
                            &format!(
                                "a projection of {dims:?}: expected the packed in_proj_weight \
                                 [{}, {e}] (query, key and value the same tensor) or out_proj [{e}, {e}]",
                                3 * e
                            ),
                        ))
                    }
                }
                if let Some(l) = a.shape.last_mut() {
                    *l = Some(m);
                }
                if op == "Gemm" {
                    a.shape = vec![a.shape.first().copied().flatten(), Some(m)];
                }
            }
            "MatMul" => {
                let b = &ins[1];
                if a.stage != AttnStage::Projected || b.stage != AttnStage::Projected || a.x != b.x
                {
                    return Err(fail(
                        self,
                        "a product of tensors of two different attentions",
                    ));
                }
                a.heads = a.heads.or(b.heads);
                let last = b.shape.last().copied().flatten();
                if let Some(l) = a.shape.last_mut() {
                    *l = last;
                }
            }
            "Reshape" => {
                let t = self
                    .int_input(n, 1)
                    .ok_or_else(|| fail(self, "a reshape to an unknown shape"))?;
                let numel =
                    |s: &[Option<i64>]| s.iter().try_fold(1i64, |p, d| p.checked_mul((*d)?));
                let known = numel(&a.shape);
                let mut shape: Vec<Option<i64>> = t
                    .iter()
                    .enumerate()
                    .map(|(i, d)| match d {
                        Some(0) if self.int_attr(n, "allowzero", 0) == 0 => {
                            a.shape.get(i).copied().flatten()
                        }
                        Some(-1) => None,
                        d => *d,
                    })
                    .collect();
                if let (Some(total), Some(pos)) = (known, t.iter().position(|d| *d == Some(-1))) {
                    let rest: Option<i64> = shape
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| i != pos)
                        .try_fold(1i64, |p, (_, d)| p.checked_mul((*d)?));
                    shape[pos] = rest.filter(|&r| r > 0).map(|r| total / r);
                }
                if a.stage == AttnStage::Projected && a.heads.is_none() && shape.len() >= 3 {
                    if let Some(Some(d)) = shape.last() {
                        if *d > 0 && *d < e && e % d == 0 {
                            a.heads = Some((e / d) as usize);
                        }
                    }
                }
                a.shape = shape;
            }
            "Unsqueeze" | "Squeeze" => {
                let axes = if self.opset >= 13 {
                    self.int_input(n, 1).unwrap_or_default()
                } else {
                    n.attr("axes")
                        .map(|x| x.ints.iter().map(|&i| Some(i)).collect())
                        .unwrap_or_default()
                };
                let mut axes: Vec<i64> = axes.into_iter().flatten().collect();
                if op == "Unsqueeze" {
                    let rank = (a.shape.len() + axes.len()) as i64;
                    let mut ax: Vec<usize> = axes
                        .iter()
                        .map(|&x| (if x < 0 { x + rank } else { x }).max(0) as usize)
                        .collect();
                    ax.sort_unstable();
                    for x in ax {
                        let x = x.min(a.shape.len());
                        a.shape.insert(x, Some(1));
                    }
                } else {
                    let rank = a.shape.len() as i64;
                    if axes.is_empty() {
                        a.shape.retain(|d| *d != Some(1));
                    } else {
                        for x in axes.iter_mut() {
                            if *x < 0 {
                                *x += rank;
                            }
                        }
                        a.shape = a
                            .shape
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| !axes.contains(&(*i as i64)))
                            .map(|(_, d)| *d)
                            .collect();
                    }
                }
            }
            "Gather" => {
                let axis = self.int_attr(n, "axis", 0);
                let rank = a.shape.len() as i64;
                let axis = if axis < 0 { axis + rank } else { axis };
                let scalar = n.inputs.get(1).is_some_and(|s| matches!(self.vals.get(s), Some(Val::Const { dims, .. }) if dims.is_empty()));
                if let Ok(ax) = usize::try_from(axis) {
                    if ax < a.shape.len() {
                        if scalar {
                            a.shape.remove(ax);
                        } else {
                            a.shape[ax] = None;
                        }
                    }
                }
            }
            "Slice" | "Split" => {
                for d in a.shape.iter_mut() {
                    *d = None;
                }
            }
            "Add" | "Mul" | "Div" | "Sub" | "Softmax" | "Dropout" | "Cast" | "Identity"
            | "Sqrt" | "CastLike" => {}
            _ => return Err(fail(self, "this op is not part of PyTorch's attention")),
        }
        for o in &n.outputs {
            self.vals.insert(o.clone(), Val::Attn(Box::new(a.clone())));
        }
        Ok(())
    }

    fn emit_attention(&mut self, n: &proto::Node, a: AttnVal) -> Result<(), OnnxError> {
        let Some(heads) = a.heads else {
            return Err(self.unsupported(
                n,
                &format!("{MHA}: no reshape to the heads' dimension was found"),
            ));
        };
        let name = match a.name {
            Some(p) => {
                let count = self.names.entry(p.clone()).or_insert(0);
                *count += 1;
                p
            }
            None => self.layer_name(n, None),
        };
        self.add_op(
            n,
            name,
            Op::MultiheadAttention {
                embed_dim: a.embed,
                num_heads: heads,
            },
            &[a.x],
        );
        Ok(())
    }
}
