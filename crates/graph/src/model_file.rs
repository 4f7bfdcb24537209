//! TOML model files: a model outside the zoo, written the way `nn.Sequential` reads.
//! The format is documented in docs/MODEL_FILES.md.
//!
//! ```toml
//! name = "tiny"
//! input = [1, 28, 28]
//! [[layers]]
//! type = "Conv2d"
//! in_channels = 1
//! out_channels = 8
//! kernel_size = 3
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::op::{BatchNorm2d, Conv2d, LayerNorm, Linear, Op, Pool2d};
use crate::Activation;
use crate::{Graph, GraphBuilder, GraphError, NodeId};

/// `3` or `[3, 5]`, as PyTorch accepts for kernel sizes, strides and paddings. Kept as
/// written (TOML integers are signed) so that a negative value is refused with the
/// field's name rather than a serde message.
#[derive(Debug, Clone, Copy)]
enum Pair {
    One(i64),
    Two([i64; 2]),
}

impl<'de> Deserialize<'de> for Pair {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Pair;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an integer or a pair of integers [h, w]")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Pair, E> {
                Ok(Pair::One(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Pair, E> {
                i64::try_from(v)
                    .map(Pair::One)
                    .map_err(|_| E::custom(format!("{v} is too large")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Pair, A::Error> {
                let mut two = [0i64; 2];
                for (i, slot) in two.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| serde::de::Error::invalid_length(i, &self))?;
                }
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(serde::de::Error::invalid_length(3, &self));
                }
                Ok(Pair::Two(two))
            }
        }
        d.deserialize_any(V)
    }
}

impl Pair {
    /// Both sizes as `usize`, refusing negative ones with `negative`'s words.
    fn get(self, field: &str) -> Result<(usize, usize), String> {
        let (a, b) = match self {
            Pair::One(v) => (v, v),
            Pair::Two([a, b]) => (a, b),
        };
        Ok((count(field, a)?, count(field, b)?))
    }
}

/// A size field as `usize`: negative values are refused here, zero by the layer's own
/// checks ([`Op::validate`]), which know PyTorch's rule for each field.
fn count(field: &str, v: i64) -> Result<usize, String> {
    if v < 0 {
        return Err(match field {
            "padding" => format!("negative padding is not supported, got {v}"),
            // Zero is a shift too (none): the words of a size that may be 0.
            "shift_size" => format!("{field} must be 0 or more, got {v}"),
            _ => format!("{field} must be a positive integer, got {v}"),
        });
    }
    usize::try_from(v).map_err(|_| format!("{field} = {v} is too large"))
}

fn one() -> Pair {
    Pair::One(1)
}
fn zero() -> Pair {
    Pair::One(0)
}
fn yes() -> bool {
    true
}
fn one_int() -> i64 {
    1
}
fn half() -> f64 {
    0.5
}
fn bn_eps() -> f64 {
    1e-5
}
fn bn_momentum() -> f64 {
    0.1
}
fn relu_name() -> String {
    "ReLU".into()
}
fn sigmoid_name() -> String {
    "Sigmoid".into()
}

/// An activation named in a block's arguments (`activation = "SiLU"`), not in place.
fn activation_named(field: &str, name: &str) -> Result<Op, String> {
    Activation::ALL
        .iter()
        .find(|a| a.class_name() == name && **a != Activation::GeluTanh)
        .map(|&a| Op::act(a, false))
        .ok_or_else(|| {
            format!(
                "`{field}` must be one of ReLU, ReLU6, SiLU, Sigmoid, Hardswish, Hardsigmoid, \
                 GELU, Tanh, got {name:?}"
            )
        })
}

/// One layer of a file; fields and defaults are PyTorch's constructor arguments.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum LayerSpec {
    Conv2d {
        in_channels: i64,
        out_channels: i64,
        kernel_size: Pair,
        #[serde(default = "one")]
        stride: Pair,
        #[serde(default = "zero")]
        padding: Pair,
        #[serde(default = "one")]
        dilation: Pair,
        #[serde(default = "one_int")]
        groups: i64,
        #[serde(default = "yes")]
        bias: bool,
    },
    BatchNorm2d {
        num_features: i64,
        #[serde(default = "bn_eps")]
        eps: f64,
        #[serde(default = "bn_momentum")]
        momentum: f64,
        #[serde(default = "yes")]
        affine: bool,
        #[serde(default = "yes")]
        track_running_stats: bool,
    },
    ReLU {
        #[serde(default)]
        inplace: bool,
    },
    ReLU6 {
        #[serde(default)]
        inplace: bool,
    },
    SiLU {
        #[serde(default)]
        inplace: bool,
    },
    Sigmoid {},
    Hardswish {
        #[serde(default)]
        inplace: bool,
    },
    Hardsigmoid {
        #[serde(default)]
        inplace: bool,
    },
    /// `approximate = "none"` (default) or `"tanh"`.
    #[serde(rename = "GELU")]
    Gelu {
        #[serde(default)]
        approximate: Option<String>,
    },
    Tanh {},
    /// torchvision's `StochasticDepth(p, mode)`, mode `"row"` or `"batch"`.
    StochasticDepth {
        p: f64,
        mode: String,
    },
    /// torchvision's `channel_shuffle(x, groups)`.
    ChannelShuffle {
        groups: i64,
    },
    /// `x.narrow(1, start, length)`: a slice of the channels.
    Narrow {
        start: i64,
        length: i64,
    },
    /// torchvision's `SqueezeExcitation`: `scale * x` with the scale from an average
    /// pool, `fc1`, `activation`, `fc2`, `scale_activation`.
    SqueezeExcitation {
        input_channels: i64,
        squeeze_channels: i64,
        #[serde(default = "relu_name")]
        activation: String,
        #[serde(default = "sigmoid_name")]
        scale_activation: String,
    },
    /// `torch.cat([branch(x) for branch in branches], dim=1)`; a branch without
    /// layers is `x` itself.
    Concat {
        branches: Vec<toml::Table>,
    },
    MaxPool2d {
        kernel_size: Pair,
        stride: Option<Pair>,
        #[serde(default = "zero")]
        padding: Pair,
        #[serde(default = "one")]
        dilation: Pair,
        #[serde(default)]
        ceil_mode: bool,
    },
    AvgPool2d {
        kernel_size: Pair,
        stride: Option<Pair>,
        #[serde(default = "zero")]
        padding: Pair,
        #[serde(default)]
        ceil_mode: bool,
        #[serde(default = "yes")]
        count_include_pad: bool,
    },
    AdaptiveAvgPool2d {
        output_size: Pair,
    },
    Flatten {},
    /// `nn.LayerNorm(normalized_shape)` over the last dimension.
    LayerNorm {
        normalized_shape: i64,
        #[serde(default = "bn_eps")]
        eps: f64,
        #[serde(default = "yes")]
        elementwise_affine: bool,
        #[serde(default = "yes")]
        bias: bool,
    },
    /// `x.permute(dims)` with PyTorch's dims, the batch first (`[0, 2, 3, 1]`).
    Permute {
        dims: Vec<i64>,
    },
    /// `x.flatten(2).transpose(1, 2)`: an image's positions as tokens `[H*W, C]`.
    Tokens {},
    /// `x[:, index]`: one token (ViT's class token before the head).
    Select {
        #[serde(default)]
        index: i64,
    },
    /// `nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)` as
    /// self-attention, `attn(x, x, x, need_weights=False)`.
    MultiheadAttention {
        embed_dim: i64,
        num_heads: i64,
    },
    /// torchvision's `ShiftedWindowAttention(dim, window_size, shift_size, num_heads)` on
    /// a channels-last map `[H, W, C]` (Swin's blocks; pad, roll, window partition,
    /// attention with a relative position bias, and back).
    ShiftedWindowAttention {
        dim: i64,
        window_size: Pair,
        #[serde(default = "zero")]
        shift_size: Pair,
        num_heads: i64,
    },
    /// `ShiftedWindowAttentionV2`: cosine attention with a learned logit scale and a
    /// continuous position bias MLP.
    ShiftedWindowAttentionV2 {
        dim: i64,
        window_size: Pair,
        #[serde(default = "zero")]
        shift_size: Pair,
        num_heads: i64,
    },
    /// torchvision's `_patch_merging_pad`: a channels-last `[H, W, C]` map to
    /// `[H/2, W/2, 4C]` (padded to even sizes); `PatchMerging` is this, a LayerNorm and a
    /// `Linear(4C, 2C, bias=False)`.
    PatchMergingPad {},
    /// MaxViT's `WindowPartition` of a `[C, H, W]` map into `[partitions, p*p, C]` (a
    /// copy); `swap = true` follows it with `SwapAxes(-2, -3)` as a grid partition does.
    WindowPartition {
        partition_size: i64,
        #[serde(default)]
        swap: bool,
    },
    /// MaxViT's `WindowDepartition(p, h_partitions, w_partitions)` back to `[C, H, W]`
    /// (a copy), after `SwapAxes(-2, -3)` when `swap = true`.
    WindowDepartition {
        partition_size: i64,
        h_partitions: i64,
        w_partitions: i64,
        #[serde(default)]
        swap: bool,
    },
    /// MaxViT's `RelativePositionalMultiHeadAttention(feat_dim, head_dim, max_seq_len)`
    /// on `[partitions, tokens, feat_dim]`; `max_seq_len` is the partition's p*p.
    RelativePositionalMultiHeadAttention {
        feat_dim: i64,
        head_dim: i64,
        max_seq_len: i64,
    },
    /// A learned class token (`[1, 1, embed_dim]`, named by the layer) put before the
    /// tokens: `torch.cat([token.expand(B, -1, -1), x], dim=1)`.
    ClassToken {
        embed_dim: i64,
    },
    /// ConvNeXt's layer scale: a learned `[channels, 1, 1]` tensor (named by the layer)
    /// times the input.
    LayerScale {
        channels: i64,
    },
    /// A learned position embedding (`[1, tokens, embed_dim]`, named by the layer) added
    /// to the tokens.
    PositionEmbedding {
        tokens: i64,
        embed_dim: i64,
    },
    Linear {
        in_features: i64,
        out_features: i64,
        #[serde(default = "yes")]
        bias: bool,
    },
    Dropout {
        #[serde(default = "half")]
        p: f64,
        #[serde(default)]
        inplace: bool,
    },
    /// `out = body(x) + shortcut(x)`; an empty shortcut is the identity.
    Residual {
        body: Vec<toml::Table>,
        #[serde(default)]
        shortcut: Vec<toml::Table>,
        /// `out += identity` as torchvision's blocks do (true) or `out = a + b`.
        #[serde(default = "yes")]
        inplace: bool,
        /// The shortcut runs before the body and is the sum's first term
        /// (`res = proj(x); return res + body(x)`, as MaxViT's MBConv); by default the
        /// body runs first (`out = body(x); out += shortcut(x)`, as ResNet's blocks).
        #[serde(default)]
        shortcut_first: bool,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSpec {
    name: Option<String>,
    input: Option<Vec<i64>>,
    layers: Vec<toml::Table>,
}

/// A model file larger than this is refused before it is read whole (the largest zoo
/// model written out is a few KiB).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// How deep `Residual` blocks may nest (torchvision's deepest is 2).
pub const MAX_NESTING: usize = 16;

/// Reads a model file from disk (at most [`MAX_FILE_BYTES`], and only a regular file, so
/// that a FIFO or a device never blocks or fills memory).
pub fn load(path: &Path) -> Result<Graph, GraphError> {
    use std::io::Read;
    let err = |message: String| GraphError::ModelFile {
        path: path.display().to_string(),
        message,
    };
    let meta =
        std::fs::metadata(path).map_err(|e| err(format!("cannot read the model file: {e}")))?;
    if !meta.is_file() {
        return Err(err("not a regular file: expected a .toml model file".into()));
    }
    let file =
        std::fs::File::open(path).map_err(|e| err(format!("cannot read the model file: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| err(format!("cannot read the model file: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(err(format!(
            "the model file is larger than {} MiB: not a model description",
            MAX_FILE_BYTES >> 20
        )));
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| err("the model file is not UTF-8 text (TOML is)".into()))?;
    parse(&text, &path.display().to_string())
}

/// Parses a model file's text; `origin` names it in errors. Every layer argument is
/// checked as PyTorch checks it, and every shape is inferred, so a graph that parses
/// is one the planner and the engine can take once [`Graph::infer`](crate::Graph::infer)
/// accepts its shapes.
pub fn parse(text: &str, origin: &str) -> Result<Graph, GraphError> {
    let err = |message: String| GraphError::ModelFile {
        path: origin.to_string(),
        message,
    };
    let spec: FileSpec = toml::from_str(text).map_err(|e| err(toml_error(&e, text)))?;
    if let Some(name) = &spec.name {
        crate::text::check_printable(name, "`name`").map_err(err)?;
    }
    let input = match spec.input {
        None => vec![3, 32, 32],
        Some(dims) if dims.len() == 3 && dims.iter().all(|&d| d > 0) => dims
            .iter()
            .map(|&d| usize::try_from(d).expect("positive i64 fits usize on 64-bit targets"))
            .collect(),
        Some(dims) => {
            return Err(err(format!(
                "`input` must be [C, H, W] with positive sizes, got {dims:?}"
            )))
        }
    };
    if spec.layers.is_empty() {
        return Err(err("the model has no [[layers]]".into()));
    }
    let name = spec.name.unwrap_or_else(|| {
        Path::new(origin)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into())
    });
    let mut b = GraphBuilder::new(&name, input);
    let x = b.input();
    sequence(&mut b, &spec.layers, "", x, 0).map_err(err)?;
    // Shapes are inferred by the caller, after `--input` may have replaced `input`.
    Ok(b.build())
}

/// A TOML error on one line, `line L, column C: message`: the parser's own text quotes
/// the offending line, which in a hostile file is megabytes long or holds control
/// characters.
fn toml_error(e: &toml::de::Error, text: &str) -> String {
    let message: String = e
        .message()
        .trim()
        .lines()
        .collect::<Vec<_>>()
        .join("; ")
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .take(300)
        .collect();
    match e.span() {
        Some(span) => {
            let mut start = span.start.min(text.len());
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// Adds a list of layers after `x`, naming unnamed ones by their index as
/// `nn.Sequential` does; returns the last node.
fn sequence(
    b: &mut GraphBuilder,
    layers: &[toml::Table],
    prefix: &str,
    mut x: NodeId,
    depth: usize,
) -> Result<NodeId, String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "layer `{prefix}`: Residual blocks nest more than {MAX_NESTING} deep"
        ));
    }
    for (i, table) in layers.iter().enumerate() {
        let mut table = table.clone();
        let name = match table.remove("name") {
            Some(toml::Value::String(s)) => {
                // The name reaches the terminal and the checkpoint's tensor names.
                crate::text::check_printable(&s, &format!("layer {prefix}{i}: `name`"))?;
                if s.split('.').any(str::is_empty) {
                    return Err(format!(
                        "layer {prefix}{i}: `name` {s:?} has an empty part: a name is one or \
                         more words joined by dots, as `features.0`"
                    ));
                }
                format!("{prefix}{s}")
            }
            Some(other) => {
                return Err(format!(
                    "layer {prefix}{i}: `name` must be a string, got {other:?}"
                ))
            }
            None => format!("{prefix}{i}"),
        };
        let type_name = table
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or("?")
            .to_string();
        let spec: LayerSpec =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    format!("layer `{name}` ({type_name}): {}", e.message().trim())
                })?;
        x = match spec {
            LayerSpec::Residual {
                body,
                shortcut,
                inplace,
                shortcut_first,
            } => {
                if body.is_empty() {
                    return Err(format!("layer `{name}` (Residual): `body` has no layers"));
                }
                let short = |b: &mut GraphBuilder| {
                    if shortcut.is_empty() {
                        Ok(x)
                    } else {
                        sequence(b, &shortcut, &format!("{name}.shortcut."), x, depth + 1)
                    }
                };
                if shortcut_first {
                    let s = short(b)?;
                    let y = sequence(b, &body, &format!("{name}.body."), x, depth + 1)?;
                    b.add(name, Op::Add { inplace }, &[s, y])
                } else {
                    let y = sequence(b, &body, &format!("{name}.body."), x, depth + 1)?;
                    let s = short(b)?;
                    b.add(name, Op::Add { inplace }, &[y, s])
                }
            }
            LayerSpec::ClassToken { embed_dim } => {
                let e = count("embed_dim", embed_dim)
                    .map_err(|m| format!("layer `{name}` (ClassToken): {m}"))?;
                let t = b.add(
                    name.clone(),
                    Op::Param {
                        shape: vec![1, 1, e],
                        batch_dim: true,
                        init: crate::op::Init::Zeros,
                    },
                    &[],
                );
                b.add(format!("{name}.cat"), Op::Concat, &[t, x])
            }
            LayerSpec::LayerScale { channels } => {
                let c = count("channels", channels)
                    .map_err(|m| format!("layer `{name}` (LayerScale): {m}"))?;
                let p = b.add(
                    name.clone(),
                    Op::Param {
                        shape: vec![c, 1, 1],
                        batch_dim: false,
                        init: crate::op::Init::Constant(1e-6),
                    },
                    &[],
                );
                b.add(format!("{name}.mul"), Op::Mul, &[p, x])
            }
            LayerSpec::PositionEmbedding { tokens, embed_dim } => {
                let at = |m: String| format!("layer `{name}` (PositionEmbedding): {m}");
                let t = count("tokens", tokens).map_err(at)?;
                let e = count("embed_dim", embed_dim).map_err(at)?;
                let p = b.add(
                    name.clone(),
                    Op::Param {
                        shape: vec![1, t, e],
                        batch_dim: true,
                        init: crate::op::Init::Normal { std: 0.02 },
                    },
                    &[],
                );
                b.add(format!("{name}.add"), Op::Add { inplace: false }, &[x, p])
            }
            LayerSpec::Concat { branches } => {
                if branches.is_empty() {
                    return Err(format!("layer `{name}` (Concat): `branches` is empty"));
                }
                let mut outs = Vec::with_capacity(branches.len());
                for (k, branch) in branches.iter().enumerate() {
                    let mut branch = branch.clone();
                    let bname = match branch.remove("name") {
                        Some(toml::Value::String(s)) => {
                            crate::text::check_printable(
                                &s,
                                &format!("layer `{name}` branch {k}"),
                            )?;
                            // A module name: one or more words joined by dots.
                            if s.split('.').any(str::is_empty) {
                                return Err(format!(
                                    "layer `{name}` (Concat): branch {k}: `name` {s:?} has an \
                                     empty part: a name is one or more words joined by dots"
                                ));
                            }
                            s
                        }
                        Some(_) => {
                            return Err(format!(
                                "layer `{name}` (Concat): branch {k}: `name` must be a string"
                            ))
                        }
                        None => k.to_string(),
                    };
                    let layers = match branch.remove("layers") {
                        None => Vec::new(),
                        Some(toml::Value::Array(items)) => items
                            .into_iter()
                            .map(|v| match v {
                                toml::Value::Table(t) => Ok(t),
                                _ => Err(format!(
                                    "layer `{name}` (Concat): branch {k}: `layers` must hold tables"
                                )),
                            })
                            .collect::<Result<Vec<_>, _>>()?,
                        Some(_) => {
                            return Err(format!(
                                "layer `{name}` (Concat): branch {k}: `layers` must be a list of \
                                 [[...layers]] tables"
                            ))
                        }
                    };
                    if let Some(extra) = branch.keys().next() {
                        return Err(format!(
                            "layer `{name}` (Concat): branch {k}: unknown field `{extra}`, expected \
                             `name` or `layers`"
                        ));
                    }
                    outs.push(sequence(
                        b,
                        &layers,
                        &format!("{name}.{bname}."),
                        x,
                        depth + 1,
                    )?);
                }
                b.add(name, Op::Concat, &outs)
            }
            LayerSpec::SqueezeExcitation {
                input_channels,
                squeeze_channels,
                activation,
                scale_activation,
            } => {
                let at = |m: String| format!("layer `{name}` (SqueezeExcitation): {m}");
                let c = count("input_channels", input_channels).map_err(at)?;
                let s = count("squeeze_channels", squeeze_channels).map_err(at)?;
                let act = activation_named("activation", &activation).map_err(at)?;
                let scale = activation_named("scale_activation", &scale_activation).map_err(at)?;
                for v in [c, s] {
                    Op::Conv2d(Conv2d::new(v, v, 1)).validate().map_err(at)?;
                }
                crate::zoo::squeeze_excitation(b, &name, c, s, act, scale, x)
            }
            spec => {
                let op = op_of(spec).map_err(|m| format!("layer `{name}` ({type_name}): {m}"))?;
                b.then(name, op, x)
            }
        };
    }
    Ok(x)
}

/// A Swin attention layer's op from its model-file arguments.
fn window_attention(
    dim: i64,
    window_size: Pair,
    shift_size: Pair,
    num_heads: i64,
    v2: bool,
) -> Result<Op, String> {
    Ok(Op::WindowAttention(crate::op::WindowAttention {
        dim: count("dim", dim)?,
        heads: count("num_heads", num_heads)?,
        window: window_size.get("window_size")?,
        shift: shift_size.get("shift_size")?,
        v2,
    }))
}

/// The op of one (non-Residual) layer, its arguments checked as PyTorch checks them.
fn op_of(spec: LayerSpec) -> Result<Op, String> {
    let op = match spec {
        LayerSpec::Conv2d {
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
        } => Op::Conv2d(Conv2d {
            in_channels: count("in_channels", in_channels)?,
            out_channels: count("out_channels", out_channels)?,
            kernel_size: kernel_size.get("kernel_size")?,
            stride: stride.get("stride")?,
            padding: padding.get("padding")?,
            dilation: dilation.get("dilation")?,
            groups: count("groups", groups)?,
            bias,
        }),
        LayerSpec::BatchNorm2d {
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
        } => Op::BatchNorm2d(BatchNorm2d {
            num_features: count("num_features", num_features)?,
            eps,
            momentum,
            affine,
            track_running_stats,
        }),
        LayerSpec::ReLU { inplace } => Op::relu(inplace),
        LayerSpec::ReLU6 { inplace } => Op::relu6(inplace),
        LayerSpec::MaxPool2d {
            kernel_size,
            stride,
            padding,
            dilation,
            ceil_mode,
        } => Op::MaxPool2d(Pool2d {
            kernel_size: kernel_size.get("kernel_size")?,
            stride: stride.unwrap_or(kernel_size).get("stride")?,
            padding: padding.get("padding")?,
            dilation: dilation.get("dilation")?,
            ceil_mode,
            count_include_pad: true,
        }),
        LayerSpec::AvgPool2d {
            kernel_size,
            stride,
            padding,
            ceil_mode,
            count_include_pad,
        } => Op::AvgPool2d(Pool2d {
            kernel_size: kernel_size.get("kernel_size")?,
            stride: stride.unwrap_or(kernel_size).get("stride")?,
            padding: padding.get("padding")?,
            dilation: (1, 1),
            ceil_mode,
            count_include_pad,
        }),
        LayerSpec::AdaptiveAvgPool2d { output_size } => Op::AdaptiveAvgPool2d {
            output_size: output_size.get("output_size")?,
        },
        LayerSpec::Flatten {} => Op::Flatten,
        LayerSpec::LayerNorm {
            normalized_shape,
            eps,
            elementwise_affine,
            bias,
        } => Op::LayerNorm(LayerNorm {
            normalized_shape: count("normalized_shape", normalized_shape)?,
            eps,
            elementwise_affine,
            bias,
        }),
        LayerSpec::Permute { dims } => {
            // PyTorch's dims keep the batch first; the graph's are per sample.
            if dims.first() != Some(&0) || dims.len() > 8 {
                return Err(format!(
                    "dims {dims:?}: the batch dimension must stay first (dims[0] = 0)"
                ));
            }
            let per: Result<Vec<usize>, String> = dims[1..]
                .iter()
                .map(|&d| {
                    usize::try_from(d - 1)
                        .map_err(|_| format!("dims {dims:?}: dimension {d} moves the batch"))
                })
                .collect();
            Op::Permute { dims: per? }
        }
        LayerSpec::Tokens {} => Op::Tokens,
        LayerSpec::ShiftedWindowAttention {
            dim,
            window_size,
            shift_size,
            num_heads,
        } => window_attention(dim, window_size, shift_size, num_heads, false)?,
        LayerSpec::ShiftedWindowAttentionV2 {
            dim,
            window_size,
            shift_size,
            num_heads,
        } => window_attention(dim, window_size, shift_size, num_heads, true)?,
        LayerSpec::PatchMergingPad {} => Op::PatchMerge,
        LayerSpec::WindowPartition {
            partition_size,
            swap,
        } => Op::Partition {
            p: count("partition_size", partition_size)?,
            grid: swap,
        },
        LayerSpec::WindowDepartition {
            partition_size,
            h_partitions,
            w_partitions,
            swap,
        } => Op::Departition {
            p: count("partition_size", partition_size)?,
            grid: swap,
            parts: (
                count("h_partitions", h_partitions)?,
                count("w_partitions", w_partitions)?,
            ),
        },
        LayerSpec::RelativePositionalMultiHeadAttention {
            feat_dim,
            head_dim,
            max_seq_len,
        } => {
            let len = count("max_seq_len", max_seq_len)?;
            // torchvision lays the bias table out for a square partition.
            let root = (len as f64).sqrt() as usize;
            let size = (root.saturating_sub(1)..=root.saturating_add(1))
                .find(|s| s.checked_mul(*s) == Some(len))
                .unwrap_or(0);
            if size == 0 {
                return Err(format!(
                    "max_seq_len {len} is not a square partition's tokens (p * p)"
                ));
            }
            Op::RelPosAttention {
                dim: count("feat_dim", feat_dim)?,
                head_dim: count("head_dim", head_dim)?,
                size,
            }
        }
        LayerSpec::Select { index } => Op::Select {
            index: usize::try_from(index)
                .map_err(|_| format!("index must be at least 0, got {index}"))?,
        },
        LayerSpec::MultiheadAttention {
            embed_dim,
            num_heads,
        } => Op::MultiheadAttention {
            embed_dim: count("embed_dim", embed_dim)?,
            num_heads: count("num_heads", num_heads)?,
        },
        LayerSpec::Linear {
            in_features,
            out_features,
            bias,
        } => Op::Linear(Linear {
            in_features: count("in_features", in_features)?,
            out_features: count("out_features", out_features)?,
            bias,
        }),
        LayerSpec::Dropout { p, inplace } => Op::Dropout { p, inplace },
        LayerSpec::SiLU { inplace } => Op::act(Activation::Silu, inplace),
        LayerSpec::Sigmoid {} => Op::act(Activation::Sigmoid, false),
        LayerSpec::Hardswish { inplace } => Op::act(Activation::Hardswish, inplace),
        LayerSpec::Hardsigmoid { inplace } => Op::act(Activation::Hardsigmoid, inplace),
        LayerSpec::Gelu { approximate } => match approximate.as_deref() {
            None | Some("none") => Op::act(Activation::Gelu, false),
            Some("tanh") => Op::act(Activation::GeluTanh, false),
            Some(other) => {
                return Err(format!(
                    "approximate argument must be either none or tanh, got {other:?}"
                ))
            }
        },
        LayerSpec::Tanh {} => Op::act(Activation::Tanh, false),
        LayerSpec::StochasticDepth { p, mode } => Op::StochasticDepth {
            p,
            row: match mode.as_str() {
                "row" => true,
                "batch" => false,
                other => {
                    return Err(format!(
                        "mode has to be either 'batch' or 'row', but got {other}"
                    ))
                }
            },
        },
        LayerSpec::ChannelShuffle { groups } => Op::ChannelShuffle {
            groups: count("groups", groups)?,
        },
        LayerSpec::Narrow { start, length } => Op::Narrow {
            start: usize::try_from(start)
                .map_err(|_| format!("start must be at least 0, got {start}"))?,
            len: count("length", length)?,
        },
        LayerSpec::Residual { .. }
        | LayerSpec::Concat { .. }
        | LayerSpec::SqueezeExcitation { .. }
        | LayerSpec::ClassToken { .. }
        | LayerSpec::LayerScale { .. }
        | LayerSpec::PositionEmbedding { .. } => return Err("a block is not one layer".into()),
    };
    op.validate()?;
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIMPLE_CNN: &str = include_str!("../../../models/simple_cnn.toml");

    #[test]
    fn the_documented_simple_cnn_file_equals_the_zoo_model() {
        let file = parse(SIMPLE_CNN, "simple_cnn.toml")
            .unwrap()
            .infer()
            .unwrap();
        let zoo = crate::zoo::build("simple_cnn", &Default::default())
            .unwrap()
            .infer()
            .unwrap();
        assert_eq!(file.num_params(), 62_006);
        assert_eq!(file.shapes, zoo.shapes);
        let names = |s: &crate::Shaped| {
            s.params()
                .iter()
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&file), names(&zoo));
    }

    #[test]
    fn a_toml_error_is_one_line_however_long_the_line() {
        // The parser's text quoted the whole offending line: 200 KB of brackets.
        let text = format!(
            "input = [1, 28, 28]\nx = {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let e = parse(&text, "deep.toml").unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e}");
        assert!(e.len() < 400, "{} bytes", e.len());
        assert!(e.starts_with("deep.toml: line 2, column "), "{e}");
        let e = parse("name = \"x\"\nlayers = [1]\n", "m.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "m.toml: line 2, column 11: invalid type: integer `1`, expected a map"
        );
    }

    #[test]
    fn names_that_drive_the_terminal_or_are_empty_are_refused() {
        // `name` is given as TOML text: "\u001B" is TOML's escape of ESC.
        let layer = |name: &str| {
            format!(
                "input = [1, 4, 4]\n[[layers]]\ntype = \"Flatten\"\nname = {name}\n\
                 [[layers]]\ntype = \"Linear\"\nin_features = 16\nout_features = 2\n"
            )
        };
        let e = parse(&layer(r#""\u001B[2Jred""#), "m.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(r#"layer 0: `name` "\u{1b}[2Jred" contains the character U+001B"#),
            "{e}"
        );
        let e = parse(&layer(r#""a\u202Eb""#), "m.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("U+202E"), "{e}");
        for empty in [r#""""#, r#""a..b""#, r#"".a""#, r#""a.""#] {
            let e = parse(&layer(empty), "m.toml").unwrap_err().to_string();
            assert!(e.contains("has an empty part"), "{empty}: {e}");
        }
        let e = parse(
            "name = \"\\u0007\"\n[[layers]]\ntype = \"Flatten\"\n",
            "m.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(r#"`name` "\u{7}" contains the character U+0007"#),
            "{e}"
        );
        assert!(parse(&layer(r#""features.0""#), "m.toml").is_ok());
        assert!(parse(&layer(r#""卷积""#), "m.toml").is_ok());
    }

    #[test]
    fn residual_blocks_name_their_children_and_add() {
        let text = r#"
            input = [8, 16, 16]
            [[layers]]
            type = "Residual"
            name = "block"
            [[layers.body]]
            type = "Conv2d"
            in_channels = 8
            out_channels = 8
            kernel_size = 3
            padding = 1
            [[layers.body]]
            type = "BatchNorm2d"
            num_features = 8
        "#;
        let g = parse(text, "r.toml").unwrap().infer().unwrap();
        let names: Vec<&str> = g.nodes().iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["input", "block.body.0", "block.body.1", "block"]);
        assert_eq!(g.nodes()[3].inputs, vec![2, 0]);
    }

    #[test]
    fn a_misspelt_field_names_the_layer_and_the_field() {
        let text =
            "[[layers]]\ntype = \"Conv2d\"\nin_channels = 3\nout_chanels = 6\nkernel_size = 5\n";
        let e = parse(text, "bad.toml").unwrap_err().to_string();
        assert!(
            e.starts_with("bad.toml: layer `0` (Conv2d): unknown field `out_chanels`"),
            "{e}"
        );
    }

    #[test]
    fn an_unknown_layer_type_is_an_error() {
        let text = "[[layers]]\ntype = \"Conv3d\"\n";
        let e = parse(text, "bad.toml").unwrap_err().to_string();
        assert!(e.contains("unknown variant `Conv3d`"), "{e}");
    }

    #[test]
    fn broken_toml_is_an_error_with_the_file_name() {
        let e = parse("layers = [", "broken.toml").unwrap_err().to_string();
        assert!(e.starts_with("broken.toml: "), "{e}");
    }

    /// Parses a one-layer file after `input` and infers its shapes: the message of the
    /// first error, as a user sees it.
    fn error_of(input: &str, layer: &str) -> String {
        let text = format!("input = {input}\n[[layers]]\n{layer}\n");
        match parse(&text, "m.toml").and_then(|g| g.infer().map(|_| ())) {
            Ok(()) => panic!("accepted: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn conv2d_arguments_are_checked_as_pytorch_does() {
        let conv = |extra: &str| {
            error_of(
                "[3, 8, 8]",
                &format!("type = \"Conv2d\"\nin_channels = 3\nkernel_size = 3\n{extra}"),
            )
        };
        assert_eq!(
            conv("out_channels = 0"),
            "m.toml: layer `0` (Conv2d): out_channels must be a positive integer, got 0"
        );
        assert_eq!(
            conv("out_channels = -4"),
            "m.toml: layer `0` (Conv2d): out_channels must be a positive integer, got -4"
        );
        assert_eq!(
            conv("out_channels = 4\ngroups = 2"),
            "m.toml: layer `0` (Conv2d): in_channels must be divisible by groups (in_channels=3, groups=2)"
        );
        assert_eq!(
            conv("out_channels = 4\ngroups = 0"),
            "m.toml: layer `0` (Conv2d): groups must be a positive integer"
        );
        assert_eq!(
            conv("out_channels = 4\npadding = -1"),
            "m.toml: layer `0` (Conv2d): negative padding is not supported, got -1"
        );
        assert_eq!(
            conv("out_channels = 4\nstride = [1, 0]"),
            "m.toml: layer `0` (Conv2d): non-positive stride is not supported, got stride 1x0"
        );
        assert_eq!(
            conv("out_channels = 4\ndilation = 0"),
            "m.toml: layer `0` (Conv2d): dilation should be greater than zero, but got dilationH: 0 dilationW: 0"
        );
        let e = conv("out_channels = 4\nstride = \"two\"");
        assert!(
            e.contains("layer `0` (Conv2d)") && e.contains("an integer or a pair of integers"),
            "{e}"
        );
        let e = conv("out_channels = 4\nstride = [1, 2, 3]");
        assert!(e.contains("an integer or a pair of integers"), "{e}");
        let e = error_of(
            "[3, 8, 8]",
            "type = \"Conv2d\"\nin_channels = 3\nout_channels = 4\nkernel_size = 0",
        );
        assert!(
            e.ends_with("kernel size should be greater than zero, but got kH: 0 kW: 0"),
            "{e}"
        );
    }

    #[test]
    fn linear_and_batchnorm_and_dropout_arguments_are_checked() {
        assert_eq!(
            error_of(
                "[1, 4, 4]",
                "type = \"Linear\"\nin_features = 16\nout_features = 0"
            ),
            "m.toml: layer `0` (Linear): out_features must be a positive integer, got 0"
        );
        for (field, value, message) in [
            (
                "momentum",
                "nan",
                "momentum must be a number between 0 and 1, got NaN",
            ),
            (
                "momentum",
                "1.5",
                "momentum must be a number between 0 and 1, got 1.5",
            ),
            (
                "momentum",
                "inf",
                "momentum must be a number between 0 and 1, got inf",
            ),
            ("eps", "0.0", "eps must be a positive finite number, got 0"),
            (
                "eps",
                "-1e-5",
                "eps must be a positive finite number, got -0.00001",
            ),
            (
                "eps",
                "nan",
                "eps must be a positive finite number, got NaN",
            ),
        ] {
            let e = error_of(
                "[1, 4, 4]",
                &format!("type = \"BatchNorm2d\"\nnum_features = 1\n{field} = {value}"),
            );
            assert_eq!(e, format!("m.toml: layer `0` (BatchNorm2d): {message}"));
        }
        for p in ["nan", "1.5", "-0.1"] {
            let e = error_of("[1, 4, 4]", &format!("type = \"Dropout\"\np = {p}"));
            assert!(
                e.contains("dropout probability has to be between 0 and 1, but got"),
                "{e}"
            );
        }
    }

    #[test]
    fn pool_arguments_are_checked_as_aten_does() {
        let e = error_of(
            "[1, 8, 8]",
            "type = \"MaxPool2d\"\nkernel_size = 3\npadding = 2",
        );
        assert_eq!(
            e,
            "m.toml: layer `0` (MaxPool2d): pad should be smaller than or equal to half of kernel size, but got padH = 2, padW = 2, kH = 3, kW = 3"
        );
        let e = error_of(
            "[1, 8, 8]",
            "type = \"AvgPool2d\"\nkernel_size = 2\nstride = 0",
        );
        assert!(e.contains("non-positive stride is not supported"), "{e}");
        let e = error_of(
            "[1, 8, 8]",
            "type = \"AdaptiveAvgPool2d\"\noutput_size = [0, 1]",
        );
        assert!(
            e.contains("output_size must be at least 1x1, got 0x1"),
            "{e}"
        );
    }

    #[test]
    fn a_huge_linear_is_an_error_naming_the_layer_not_an_abort() {
        let text = "input = [1, 28, 28]\n[[layers]]\ntype = \"Flatten\"\n[[layers]]\n\
                    type = \"Linear\"\nname = \"fc\"\nin_features = 784\n\
                    out_features = 9223372036854775807\n";
        let e = parse(text, "m.toml")
            .unwrap()
            .infer()
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("layer `fc`: output shape (per image) 9223372036854775807 has"),
            "{e}"
        );
        assert!(
            e.contains("more than the 1099511627776 a tensor may have"),
            "{e}"
        );
    }

    #[test]
    fn an_input_whose_size_would_wrap_is_refused() {
        let text = "input = [1, 16, 1152921504606846977]\n[[layers]]\ntype = \"Flatten\"\n";
        let e = parse(text, "m.toml")
            .unwrap()
            .infer()
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 1099511627776 elements"), "{e}");
        // The same input given as the shape of a Flatten's input, bypassing the input
        // check: the op itself refuses, where it used to wrap to 16.
        let x = vec![16usize, (1 << 60) + 1, 1];
        let e = Op::Flatten.output_shape(&[&x]).unwrap_err();
        assert!(e.contains("more than the 1099511627776"), "{e}");
    }

    #[test]
    fn absurd_window_arguments_are_errors_never_overflows() {
        let max = i64::MAX;
        for (k, s, p, d) in [
            (1, max, max, 1),
            (max, 1, 0, max),
            (3, 1, max, 1),
            (2, max, 1, max),
        ] {
            for ty in ["Conv2d\"\nin_channels = 1\nout_channels = 1", "MaxPool2d"] {
                let layer = format!(
                    "type = \"{ty}\"\nkernel_size = {k}\nstride = {s}\npadding = {p}\ndilation = {d}"
                );
                let text = format!("input = [1, 8, 8]\n[[layers]]\n{layer}\n");
                // Either outcome is fine; neither may panic, and a success is a real shape.
                if let Ok(g) = parse(&text, "m.toml").and_then(|g| g.infer()) {
                    assert!(g.numel(1) <= crate::MAX_TENSOR_ELEMENTS);
                }
            }
        }
        assert_eq!(
            crate::op::window_out(usize::MAX, usize::MAX, usize::MAX, usize::MAX, 2, true),
            Some(2)
        );
        assert_eq!(crate::op::window_out(5, 0, 1, 0, 1, false), None);
    }

    #[test]
    fn residual_blocks_may_not_nest_without_end() {
        let mut text = String::from("input = [1, 4, 4]\n");
        let mut key = String::from("layers");
        for _ in 0..(MAX_NESTING + 3) {
            text.push_str(&format!("[[{key}]]\ntype = \"Residual\"\n"));
            key.push_str(".body");
        }
        text.push_str(&format!("[[{key}]]\ntype = \"ReLU\"\n"));
        let e = parse(&text, "deep.toml").unwrap_err().to_string();
        assert!(e.contains("nest more than 16 deep"), "{e}");
    }

    #[test]
    fn only_regular_files_of_a_sane_size_are_read() {
        let dir = std::env::temp_dir().join(format!("vramlab-mf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = load(&dir).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let big = dir.join("big.toml");
        let mut text = "# padding\n".repeat((MAX_FILE_BYTES / 10) as usize + 1);
        text.push_str(SIMPLE_CNN);
        std::fs::write(&big, text).unwrap();
        let e = load(&big).unwrap_err().to_string();
        assert!(e.contains("larger than 4 MiB"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_modern_examples_parse_with_their_parameter_counts() {
        for (text, name, params) in [
            (
                include_str!("../../../models/mbconv_tiny.toml"),
                "mbconv_tiny",
                4126,
            ),
            (
                include_str!("../../../models/dense_tiny.toml"),
                "dense_tiny",
                1626,
            ),
            (
                include_str!("../../../models/shuffle_tiny.toml"),
                "shuffle_tiny",
                1402,
            ),
        ] {
            let g = parse(text, name).unwrap().infer().unwrap();
            assert_eq!(g.num_params(), params, "{name}");
            assert_eq!(g.output_shape(), &vec![10], "{name}");
        }
        let g = parse(include_str!("../../../models/mbconv_tiny.toml"), "m")
            .unwrap()
            .infer()
            .unwrap();
        let names: Vec<String> = g.params().iter().map(|p| p.name.clone()).collect();
        assert!(
            names.contains(&"mbconv.body.6.fc1.weight".to_string()),
            "{names:?}"
        );
        let g = parse(include_str!("../../../models/dense_tiny.toml"), "d")
            .unwrap()
            .infer()
            .unwrap();
        let names: Vec<String> = g.params().iter().map(|p| p.name.clone()).collect();
        assert!(
            names.contains(&"dense1.layer.2.weight".to_string()),
            "{names:?}"
        );
    }

    #[test]
    fn modern_layer_arguments_are_checked_as_pytorch_does() {
        let one = |layer: &str| {
            let text = format!("input = [4, 8, 8]\n[[layers]]\n{layer}\n");
            parse(&text, "m.toml")
                .and_then(|g| g.infer().map(|_| ()))
                .unwrap_err()
                .to_string()
        };
        assert!(one("type = \"GELU\"\napproximate = \"fast\"")
            .contains("approximate argument must be either none or tanh"));
        assert!(one("type = \"StochasticDepth\"\np = 0.1\nmode = \"col\"")
            .contains("mode has to be either 'batch' or 'row'"));
        assert!(one("type = \"StochasticDepth\"\np = 1.5\nmode = \"row\"")
            .contains("drop probability has to be between 0 and 1"));
        assert!(one("type = \"Sigmoid\"\ninplace = true").contains("unknown field `inplace`"));
        assert!(one("type = \"ChannelShuffle\"\ngroups = 3").contains("do not split into 3 groups"));
        assert!(one("type = \"Narrow\"\nstart = 2\nlength = 3")
            .contains("channels 2..5 are outside the input's 4 channels"));
        assert!(one(
            "type = \"SqueezeExcitation\"\ninput_channels = 4\nsqueeze_channels = 2\nactivation = \"Swish\""
        )
        .contains("`activation` must be one of"));
        assert!(one("type = \"Concat\"\nbranches = []").contains("`branches` is empty"));
        assert!(one("type = \"Concat\"\n[[layers.branches]]\nlayer = []")
            .contains("unknown field `layer`"));
        // Branches whose heights differ cannot be concatenated: PyTorch's words.
        let text = "input = [4, 8, 8]\n[[layers]]\ntype = \"Concat\"\n[[layers.branches]]\n\
                    [[layers.branches]]\n[[layers.branches.layers]]\ntype = \"MaxPool2d\"\nkernel_size = 2\n";
        let e = parse(text, "m.toml")
            .unwrap()
            .infer()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Sizes of tensors must match except in dimension 1"),
            "{e}"
        );
    }

    #[test]
    fn transformer_layers_are_checked() {
        let one = |layer: &str| {
            let text = format!("input = [4, 8, 8]\n[[layers]]\n{layer}\n");
            parse(&text, "m.toml")
                .and_then(|g| g.infer().map(|_| ()))
                .unwrap_err()
                .to_string()
        };
        assert!(one("type = \"Permute\"\ndims = [1, 0, 2, 3]")
            .contains("the batch dimension must stay first"));
        assert!(
            one("type = \"MultiheadAttention\"\nembed_dim = 6\nnum_heads = 4")
                .contains("embed_dim must be divisible by num_heads")
        );
        assert!(one("type = \"LayerNorm\"\nnormalized_shape = 5")
            .contains("expected input with shape [*, 5], but got input of size 4x8x8"));
        assert!(one("type = \"Select\"\nindex = 9").contains("index 9 is out of bounds"));
        // Swin's layers on a channels-last [H, W, C] map.
        let swin = |layer: &str| {
            let text = format!(
                "input = [3, 8, 8]\n[[layers]]\ntype = \"Permute\"\ndims = [0, 2, 3, 1]\n[[layers]]\n{layer}\n"
            );
            parse(&text, "m.toml").and_then(|g| g.infer().map(|g| g.output_shape().clone()))
        };
        let e = swin("type = \"ShiftedWindowAttention\"\ndim = 3\nwindow_size = 4\nnum_heads = 2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("dim 3 must be divisible by num_heads 2"), "{e}");
        let e =
            swin("type = \"ShiftedWindowAttentionV2\"\ndim = 3\nwindow_size = 0\nnum_heads = 1")
                .unwrap_err()
                .to_string();
        assert!(e.contains("window_size"), "{e}");
        assert_eq!(
            swin("type = \"ShiftedWindowAttention\"\ndim = 3\nwindow_size = 4\nshift_size = 2\nnum_heads = 1")
                .unwrap(),
            vec![8, 8, 3]
        );
        let e = swin(
            "type = \"ShiftedWindowAttention\"\ndim = 3\nwindow_size = 4\nshift_size = -1\nnum_heads = 1",
        )
        .unwrap_err()
        .to_string();
        assert!(e.ends_with("shift_size must be 0 or more, got -1"), "{e}");
        assert_eq!(swin("type = \"PatchMergingPad\"").unwrap(), vec![4, 4, 12]);
        // MaxViT's layers on a [C, H, W] map.
        let maxvit = |layers: &str| {
            let text = format!("input = [4, 8, 8]\n{layers}\n");
            parse(&text, "m.toml").and_then(|g| g.infer().map(|g| g.output_shape().clone()))
        };
        let part = "[[layers]]\ntype = \"WindowPartition\"\npartition_size = 2\n";
        assert_eq!(maxvit(part).unwrap(), vec![16, 4, 4]);
        let attn = |len: i64| {
            format!(
                "{part}[[layers]]\ntype = \"RelativePositionalMultiHeadAttention\"\nfeat_dim = 4\nhead_dim = 2\nmax_seq_len = {len}\n"
            )
        };
        assert_eq!(maxvit(&attn(4)).unwrap(), vec![16, 4, 4]);
        let e = maxvit(&attn(5)).unwrap_err().to_string();
        assert!(e.contains("max_seq_len 5 is not a square"), "{e}");
        let e = maxvit(&attn(i64::MAX)).unwrap_err().to_string();
        assert!(e.contains("is not a square"), "{e}");
        let back = "[[layers]]\ntype = \"WindowDepartition\"\npartition_size = 2\nh_partitions = 4\nw_partitions = 4\n";
        assert_eq!(maxvit(&format!("{part}{back}")).unwrap(), vec![4, 8, 8]);
        let e = maxvit("[[layers]]\ntype = \"WindowPartition\"\npartition_size = 3\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not split into 3x3 partitions"), "{e}");
        let g = parse(
            include_str!("../../../models/vit_tiny.toml"),
            "vit_tiny.toml",
        )
        .unwrap()
        .infer()
        .unwrap();
        assert_eq!(g.output_shape(), &vec![10]);
        let names: Vec<String> = g.params().iter().map(|p| p.name.clone()).collect();
        assert!(names.contains(&"class_token".to_string()), "{names:?}");
        assert!(
            names.contains(&"layer0.attention.body.self_attention.in_proj_weight".to_string()),
            "{names:?}"
        );
    }
}
