//! The layer types of the graph, with PyTorch's constructor arguments and defaults, and
//! what each layer answers about itself: output shape, parameters, buffers and MACs.

use serde::{Deserialize, Serialize};

use crate::act::Activation;
use crate::GraphError;

/// A per-sample shape: `[C, H, W]` for images, `[F]` for features (no batch dimension).
pub type Shape = Vec<usize>;

/// A learnable tensor or a buffer that a layer owns, with its PyTorch name suffix.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TensorSpec {
    /// `weight`, `bias`, `running_mean`, ...
    pub name: &'static str,
    pub shape: Vec<usize>,
    /// Bytes per element in fp32 training (int64 for `num_batches_tracked`).
    pub elem_bytes: usize,
    /// How PyTorch initialises it (the engine draws it so; the planner ignores it).
    pub init: Init,
}

/// A parameter's initialisation as PyTorch's modules do it.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub enum Init {
    /// `kaiming_uniform_(a=sqrt(5))` for a weight and `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`
    /// for a bias, both a uniform bound of `1/sqrt(fan_in)`: Conv2d's and Linear's.
    #[default]
    FanInUniform,
    /// The same bound for a module inside the layer with its own fan-in (Swin V2's
    /// `cpb_mlp` Linears).
    FanInOf(usize),
    /// `U(-bound, bound)` (EfficientNet's and MNASNet's classifiers, SqueezeNet's
    /// `kaiming_uniform_` convolutions).
    Uniform {
        bound: f64,
    },
    Ones,
    Zeros,
    /// `xavier_uniform_` (`nn.MultiheadAttention`'s `in_proj_weight`).
    Xavier {
        fan_in: usize,
        fan_out: usize,
    },
    /// `normal_(std=...)` (ViT's `pos_embedding`: 0.02).
    Normal {
        std: f64,
    },
    /// A constant (ConvNeXt's `layer_scale`: 1e-6).
    Constant(f64),
}

impl TensorSpec {
    fn f32(name: &'static str, shape: Vec<usize>) -> Self {
        TensorSpec {
            name,
            shape,
            elem_bytes: 4,
            init: Init::FanInUniform,
        }
    }

    fn init(mut self, init: Init) -> Self {
        self.init = init;
        self
    }

    /// Element count (saturating at `u128::MAX`; the graph refuses anything above
    /// [`MAX_TENSOR_ELEMENTS`]).
    pub fn numel(&self) -> u128 {
        numel(&self.shape)
    }

    pub fn bytes(&self) -> u128 {
        self.numel().saturating_mul(self.elem_bytes as u128)
    }
}

/// `torch.nn.Conv2d`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conv2d {
    pub in_channels: usize,
    pub out_channels: usize,
    pub kernel_size: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub groups: usize,
    pub bias: bool,
}

impl Conv2d {
    /// `Conv2d(in, out, k)` with PyTorch's defaults: stride 1, padding 0, bias.
    pub fn new(in_channels: usize, out_channels: usize, k: usize) -> Self {
        Conv2d {
            in_channels,
            out_channels,
            kernel_size: (k, k),
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
            bias: true,
        }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = (s, s);
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = (p, p);
        self
    }
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
    pub fn no_bias(mut self) -> Self {
        self.bias = false;
        self
    }
}

/// `torch.nn.BatchNorm2d`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchNorm2d {
    pub num_features: usize,
    pub eps: f64,
    pub momentum: f64,
    pub affine: bool,
    pub track_running_stats: bool,
}

impl BatchNorm2d {
    pub fn new(num_features: usize) -> Self {
        BatchNorm2d {
            num_features,
            eps: 1e-5,
            momentum: 0.1,
            affine: true,
            track_running_stats: true,
        }
    }
}

/// `torch.nn.MaxPool2d` (and `AvgPool2d`, which shares the window arithmetic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool2d {
    pub kernel_size: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
    pub ceil_mode: bool,
    /// AvgPool2d only: whether zero padding counts in the average.
    pub count_include_pad: bool,
}

impl Pool2d {
    /// `MaxPool2d(k)` / `AvgPool2d(k)`: stride defaults to the kernel size.
    pub fn new(k: usize) -> Self {
        Pool2d {
            kernel_size: (k, k),
            stride: (k, k),
            padding: (0, 0),
            dilation: (1, 1),
            ceil_mode: false,
            count_include_pad: true,
        }
    }
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = (s, s);
        self
    }
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = (p, p);
        self
    }
}

/// `torch.nn.Linear`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    pub in_features: usize,
    pub out_features: usize,
    pub bias: bool,
}

impl Linear {
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Linear {
            in_features,
            out_features,
            bias: true,
        }
    }
}

/// One operation of the graph. Every op has one tensor output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Op {
    /// The image batch.
    Input,
    Conv2d(Conv2d),
    BatchNorm2d(BatchNorm2d),
    /// An elementwise activation ([`Activation`]: ReLU, ReLU6, SiLU, GELU, ...).
    Act {
        kind: Activation,
        inplace: bool,
    },
    MaxPool2d(Pool2d),
    AvgPool2d(Pool2d),
    AdaptiveAvgPool2d {
        output_size: (usize, usize),
    },
    /// `torch.flatten(x, 1)` or `x.view(B, -1)`: a view, no copy.
    Flatten,
    Linear(Linear),
    Dropout {
        p: f64,
        inplace: bool,
    },
    /// Residual add of two inputs: `out += identity` when `inplace`, else `a + b`.
    Add {
        inplace: bool,
    },
    /// `a * b` with broadcasting (squeeze-and-excitation's `scale * input`): either
    /// input may have size 1 where the other does not.
    Mul,
    /// `torch.cat(inputs, dim=1)`: channels of every input, in order.
    Concat,
    /// torchvision's `StochasticDepth(p, mode)`: in training, `input * noise` with noise
    /// of shape `[B, 1, 1, 1]` (row) or `[1, 1, 1, 1]` (batch), Bernoulli(1 - p) / (1 - p).
    StochasticDepth {
        p: f64,
        row: bool,
    },
    /// Channels `start..start+len` of the input: one part of `x.chunk(n, dim=1)`, a view.
    Narrow {
        start: usize,
        len: usize,
    },
    /// torchvision's `channel_shuffle(x, groups)`: view, transpose, contiguous copy.
    ChannelShuffle {
        groups: usize,
    },
    /// A learnable tensor used as a value (ViT's `class_token` and `pos_embedding`,
    /// ConvNeXt's `layer_scale`): no input; the node's name is the parameter's full
    /// name. `shape` is PyTorch's; with `batch_dim` its leading 1 is the batch
    /// dimension it broadcasts over, and the per-sample shape is the rest.
    Param {
        shape: Vec<usize>,
        batch_dim: bool,
        /// How it starts (a class token zeros, a position embedding normal(0.02), a
        /// layer scale 1e-6).
        #[serde(default)]
        init: Init,
    },
    /// `nn.LayerNorm(normalized_shape)` over the last dimension.
    LayerNorm(LayerNorm),
    /// `nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)` as
    /// self-attention (`attn(x, x, x, need_weights=False)`), dropout 0, as torchvision's
    /// ViT runs it: tokens `[T, E]` in and out.
    MultiheadAttention {
        embed_dim: usize,
        num_heads: usize,
    },
    /// `x[:, index]`: one position of the first per-sample dimension, which goes
    /// (ViT's class token before the head): a view.
    Select {
        index: usize,
    },
    /// `x.reshape(C, H * W).permute(1, 0)`: an image's positions as tokens `[H*W, C]`
    /// (ViT's `_process_input`), a view.
    Tokens,
    /// `x.permute(dims)` of the per-sample dimensions (ConvNeXt's channels-last
    /// blocks): a view.
    Permute {
        dims: Vec<usize>,
    },
    /// torchvision's `ShiftedWindowAttention` (or `ShiftedWindowAttentionV2`) on a
    /// channels-last map `[H, W, C]`: pad to whole windows, roll by the shift, attention
    /// inside each window with a relative position bias, roll back, crop.
    WindowAttention(WindowAttention),
    /// Swin's `PatchMerging` gather: pad H and W to even, concatenate the four 2x2
    /// neighbours on the channels: `[H, W, C]` to `[H/2, W/2, 4C]` (a copy).
    PatchMerge,
    /// MaxViT's `WindowPartition(p)` of `[C, H, W]` into `[(H/p)(W/p), p*p, C]` (a copy),
    /// followed for a grid partition by `SwapAxes(-2, -3)` (a view).
    Partition {
        p: usize,
        grid: bool,
    },
    /// MaxViT's `SwapAxes(-2, -3)` (grid) and `WindowDepartition(p, hp, wp)`: back to
    /// `[C, hp*p, wp*p]` (a copy).
    Departition {
        p: usize,
        grid: bool,
        parts: (usize, usize),
    },
    /// MaxViT's `RelativePositionalMultiHeadAttention(dim, head_dim, size*size)` on
    /// `[G, S, D]`.
    RelPosAttention {
        dim: usize,
        head_dim: usize,
        size: usize,
    },
}

/// The arguments of torchvision's `ShiftedWindowAttention(V2)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WindowAttention {
    pub dim: usize,
    pub heads: usize,
    /// `window_size` (height, width).
    pub window: (usize, usize),
    /// `shift_size` (height, width): 0 or half the window in torchvision's blocks.
    pub shift: (usize, usize),
    /// `ShiftedWindowAttentionV2`: cosine attention with a learned `logit_scale` and a
    /// continuous position bias MLP (`cpb_mlp`).
    pub v2: bool,
}

impl WindowAttention {
    /// Rows of v1's `relative_position_bias_table` (and of v2's coordinates table).
    pub fn table_len(&self) -> usize {
        (2 * self.window.0).saturating_sub(1) * (2 * self.window.1).saturating_sub(1)
    }
}

/// `torch.nn.LayerNorm` over the last dimension.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LayerNorm {
    pub normalized_shape: usize,
    pub eps: f64,
    pub elementwise_affine: bool,
    pub bias: bool,
}

impl LayerNorm {
    pub fn new(normalized_shape: usize) -> Self {
        LayerNorm {
            normalized_shape,
            eps: 1e-5,
            elementwise_affine: true,
            bias: true,
        }
    }
    pub fn eps(mut self, eps: f64) -> Self {
        self.eps = eps;
        self
    }
}

impl Op {
    /// The PyTorch class name shown in summaries.
    pub fn type_name(&self) -> &'static str {
        match self {
            Op::Input => "Input",
            Op::Conv2d(_) => "Conv2d",
            Op::BatchNorm2d(_) => "BatchNorm2d",
            Op::Act { kind, .. } => kind.class_name(),
            Op::MaxPool2d(_) => "MaxPool2d",
            Op::AvgPool2d(_) => "AvgPool2d",
            Op::AdaptiveAvgPool2d { .. } => "AdaptiveAvgPool2d",
            Op::Flatten => "Flatten",
            Op::Linear(_) => "Linear",
            Op::Dropout { .. } => "Dropout",
            Op::Add { .. } => "Add",
            Op::Mul => "Mul",
            Op::Concat => "Concat",
            Op::StochasticDepth { .. } => "StochasticDepth",
            Op::Narrow { .. } => "Narrow",
            Op::ChannelShuffle { .. } => "ChannelShuffle",
            Op::Param { .. } => "Parameter",
            Op::LayerNorm(_) => "LayerNorm",
            Op::MultiheadAttention { .. } => "MultiheadAttention",
            Op::Select { .. } => "Select",
            Op::Tokens => "Tokens",
            Op::Permute { .. } => "Permute",
            Op::WindowAttention(w) if w.v2 => "ShiftedWindowAttentionV2",
            Op::WindowAttention(_) => "ShiftedWindowAttention",
            Op::PatchMerge => "PatchMerging",
            Op::Partition { .. } => "WindowPartition",
            Op::Departition { .. } => "WindowDepartition",
            Op::RelPosAttention { .. } => "RelativePositionalMultiHeadAttention",
        }
    }

    /// `nn.ReLU(inplace)`.
    pub const fn relu(inplace: bool) -> Op {
        Op::Act {
            kind: Activation::Relu,
            inplace,
        }
    }

    /// `nn.ReLU6(inplace)`.
    pub const fn relu6(inplace: bool) -> Op {
        Op::Act {
            kind: Activation::Relu6,
            inplace,
        }
    }

    /// An activation module.
    pub const fn act(kind: Activation, inplace: bool) -> Op {
        Op::Act { kind, inplace }
    }

    /// How many inputs the op takes: the least and the most.
    pub fn arity(&self) -> (usize, usize) {
        match self {
            Op::Input | Op::Param { .. } => (0, 0),
            Op::Add { .. } | Op::Mul => (2, 2),
            Op::Concat => (1, usize::MAX),
            Op::Conv2d(_)
            | Op::BatchNorm2d(_)
            | Op::Act { .. }
            | Op::StochasticDepth { .. }
            | Op::Narrow { .. }
            | Op::ChannelShuffle { .. }
            | Op::LayerNorm(_)
            | Op::MultiheadAttention { .. }
            | Op::Select { .. }
            | Op::Tokens
            | Op::Permute { .. }
            | Op::WindowAttention(_)
            | Op::PatchMerge
            | Op::Partition { .. }
            | Op::Departition { .. }
            | Op::RelPosAttention { .. }
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::AdaptiveAvgPool2d { .. }
            | Op::Flatten
            | Op::Linear(_)
            | Op::Dropout { .. } => (1, 1),
        }
    }

    /// The window `(height, width)` of an attention's relative position bias (the
    /// `relative_position_index` buffer torchvision registers), if it has one.
    pub fn relative_position_window(&self) -> Option<(usize, usize)> {
        match self {
            Op::WindowAttention(w) => Some(w.window),
            Op::RelPosAttention { size, .. } => Some((*size, *size)),
            Op::Param { .. }
            | Op::LayerNorm(_)
            | Op::MultiheadAttention { .. }
            | Op::Select { .. }
            | Op::Tokens
            | Op::Permute { .. }
            | Op::Input
            | Op::Conv2d(_)
            | Op::BatchNorm2d(_)
            | Op::Act { .. }
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::AdaptiveAvgPool2d { .. }
            | Op::Flatten
            | Op::Linear(_)
            | Op::Dropout { .. }
            | Op::Add { .. }
            | Op::Mul
            | Op::Concat
            | Op::StochasticDepth { .. }
            | Op::Narrow { .. }
            | Op::ChannelShuffle { .. }
            | Op::PatchMerge
            | Op::Partition { .. }
            | Op::Departition { .. } => None,
        }
    }

    /// Whether the op writes its result into its input's storage.
    pub fn is_inplace(&self) -> bool {
        matches!(
            self,
            Op::Act { inplace: true, .. }
                | Op::Dropout { inplace: true, .. }
                | Op::Add { inplace: true }
        )
    }

    /// Learnable parameters, in PyTorch's registration order.
    pub fn params(&self) -> Vec<TensorSpec> {
        match self {
            Op::Conv2d(c) => {
                let mut v = vec![TensorSpec::f32(
                    "weight",
                    vec![
                        c.out_channels,
                        c.in_channels / c.groups.max(1),
                        c.kernel_size.0,
                        c.kernel_size.1,
                    ],
                )];
                if c.bias {
                    v.push(TensorSpec::f32("bias", vec![c.out_channels]));
                }
                v
            }
            Op::BatchNorm2d(b) if b.affine => vec![
                TensorSpec::f32("weight", vec![b.num_features]).init(Init::Ones),
                TensorSpec::f32("bias", vec![b.num_features]).init(Init::Zeros),
            ],
            Op::Linear(l) => {
                let mut v = vec![TensorSpec::f32(
                    "weight",
                    vec![l.out_features, l.in_features],
                )];
                if l.bias {
                    v.push(TensorSpec::f32("bias", vec![l.out_features]));
                }
                v
            }
            Op::Param { shape, init, .. } => {
                vec![TensorSpec::f32("param", shape.clone()).init(*init)]
            }
            Op::LayerNorm(l) => {
                let mut v = Vec::new();
                if l.elementwise_affine {
                    v.push(TensorSpec::f32("weight", vec![l.normalized_shape]).init(Init::Ones));
                    if l.bias {
                        v.push(TensorSpec::f32("bias", vec![l.normalized_shape]).init(Init::Zeros));
                    }
                }
                v
            }
            // `_reset_parameters`: xavier for the packed projection, zero biases; the
            // out-projection's weight keeps Linear's own.
            Op::MultiheadAttention { embed_dim: e, .. } => vec![
                TensorSpec::f32("in_proj_weight", vec![3 * e, *e]).init(Init::Xavier {
                    fan_in: *e,
                    fan_out: 3 * e,
                }),
                TensorSpec::f32("in_proj_bias", vec![3 * e]).init(Init::Zeros),
                TensorSpec::f32("out_proj.weight", vec![*e, *e]),
                TensorSpec::f32("out_proj.bias", vec![*e]).init(Init::Zeros),
            ],
            Op::WindowAttention(w) => {
                let (d, h) = (w.dim, w.heads);
                let qkv_proj = [
                    TensorSpec::f32("qkv.weight", vec![3 * d, d]),
                    TensorSpec::f32("qkv.bias", vec![3 * d]),
                    TensorSpec::f32("proj.weight", vec![d, d]),
                    TensorSpec::f32("proj.bias", vec![d]),
                ];
                if w.v2 {
                    // log(10 * ones), and the MLP's Linears with their own fan-ins.
                    let mut v = vec![TensorSpec::f32("logit_scale", vec![h, 1, 1])
                        .init(Init::Constant(10f64.ln()))];
                    v.extend(qkv_proj);
                    v.push(
                        TensorSpec::f32("cpb_mlp.0.weight", vec![512, 2]).init(Init::FanInOf(2)),
                    );
                    v.push(TensorSpec::f32("cpb_mlp.0.bias", vec![512]).init(Init::FanInOf(2)));
                    v.push(
                        TensorSpec::f32("cpb_mlp.2.weight", vec![h, 512]).init(Init::FanInOf(512)),
                    );
                    v
                } else {
                    // trunc_normal_(std=0.02), whose cut at +-2 is 100 std away.
                    let mut v = vec![TensorSpec::f32(
                        "relative_position_bias_table",
                        vec![w.table_len(), h],
                    )
                    .init(Init::Normal { std: 0.02 })];
                    v.extend(qkv_proj);
                    v
                }
            }
            Op::RelPosAttention {
                dim,
                head_dim,
                size,
            } => {
                let heads = dim / head_dim.max(&1);
                let inner = heads * head_dim;
                let side = (2 * size).saturating_sub(1);
                vec![
                    TensorSpec::f32("relative_position_bias_table", vec![side * side, heads])
                        .init(Init::Normal { std: 0.02 }),
                    TensorSpec::f32("to_qkv.weight", vec![3 * inner, *dim]),
                    TensorSpec::f32("to_qkv.bias", vec![3 * inner]),
                    TensorSpec::f32("merge.weight", vec![*dim, inner]),
                    TensorSpec::f32("merge.bias", vec![*dim]),
                ]
            }
            Op::BatchNorm2d(_)
            | Op::PatchMerge
            | Op::Partition { .. }
            | Op::Departition { .. }
            | Op::Select { .. }
            | Op::Tokens
            | Op::Permute { .. }
            | Op::Input
            | Op::Act { .. }
            | Op::Mul
            | Op::Concat
            | Op::StochasticDepth { .. }
            | Op::Narrow { .. }
            | Op::ChannelShuffle { .. }
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::AdaptiveAvgPool2d { .. }
            | Op::Flatten
            | Op::Dropout { .. }
            | Op::Add { .. } => Vec::new(),
        }
    }

    /// Buffers (state that is not learned): BatchNorm's running statistics.
    pub fn buffers(&self) -> Vec<TensorSpec> {
        match self {
            Op::BatchNorm2d(b) if b.track_running_stats => vec![
                TensorSpec::f32("running_mean", vec![b.num_features]),
                TensorSpec::f32("running_var", vec![b.num_features]),
                TensorSpec {
                    name: "num_batches_tracked",
                    shape: vec![],
                    elem_bytes: 8,
                    init: Init::Zeros,
                },
            ],
            Op::WindowAttention(w) => {
                let n = w.window.0 * w.window.1;
                let index = TensorSpec {
                    name: "relative_position_index",
                    shape: vec![n * n],
                    elem_bytes: 8,
                    init: Init::Zeros,
                };
                if w.v2 {
                    let table = TensorSpec::f32(
                        "relative_coords_table",
                        vec![
                            1,
                            (2 * w.window.0).saturating_sub(1),
                            (2 * w.window.1).saturating_sub(1),
                            2,
                        ],
                    );
                    vec![table, index]
                } else {
                    vec![index]
                }
            }
            Op::RelPosAttention { size, .. } => vec![TensorSpec {
                name: "relative_position_index",
                shape: vec![size * size, size * size],
                elem_bytes: 8,
                init: Init::Zeros,
            }],
            Op::BatchNorm2d(_)
            | Op::PatchMerge
            | Op::Partition { .. }
            | Op::Departition { .. }
            | Op::Input
            | Op::Conv2d(_)
            | Op::Param { .. }
            | Op::LayerNorm(_)
            | Op::MultiheadAttention { .. }
            | Op::Select { .. }
            | Op::Tokens
            | Op::Permute { .. }
            | Op::Act { .. }
            | Op::Mul
            | Op::Concat
            | Op::StochasticDepth { .. }
            | Op::Narrow { .. }
            | Op::ChannelShuffle { .. }
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::AdaptiveAvgPool2d { .. }
            | Op::Flatten
            | Op::Linear(_)
            | Op::Dropout { .. }
            | Op::Add { .. } => Vec::new(),
        }
    }

    /// Checks the layer's own arguments as PyTorch's constructor and its kernels do
    /// (with PyTorch's words where it has them), before any shape is known.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |what: &str, v: usize| {
            if v == 0 {
                Err(format!("{what} must be a positive integer, got 0"))
            } else {
                Ok(())
            }
        };
        match self {
            Op::Conv2d(c) => {
                positive("in_channels", c.in_channels)?;
                positive("out_channels", c.out_channels)?;
                if c.groups == 0 {
                    return Err("groups must be a positive integer".into());
                }
                if c.in_channels % c.groups != 0 {
                    return Err(format!(
                        "in_channels must be divisible by groups (in_channels={}, groups={})",
                        c.in_channels, c.groups
                    ));
                }
                if c.out_channels % c.groups != 0 {
                    return Err(format!(
                        "out_channels must be divisible by groups (out_channels={}, groups={})",
                        c.out_channels, c.groups
                    ));
                }
                window_args(c.kernel_size, c.stride, c.dilation)
            }
            Op::BatchNorm2d(b) => {
                positive("num_features", b.num_features)?;
                if !(b.eps.is_finite() && b.eps > 0.0) {
                    return Err(format!(
                        "eps must be a positive finite number, got {}",
                        b.eps
                    ));
                }
                if !(b.momentum.is_finite() && (0.0..=1.0).contains(&b.momentum)) {
                    return Err(format!(
                        "momentum must be a number between 0 and 1, got {}",
                        b.momentum
                    ));
                }
                Ok(())
            }
            Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
                window_args(p.kernel_size, p.stride, p.dilation)?;
                if p.padding.0 > p.kernel_size.0 / 2 || p.padding.1 > p.kernel_size.1 / 2 {
                    return Err(format!(
                        "pad should be smaller than or equal to half of kernel size, but got \
                         padH = {}, padW = {}, kH = {}, kW = {}",
                        p.padding.0, p.padding.1, p.kernel_size.0, p.kernel_size.1
                    ));
                }
                Ok(())
            }
            Op::AdaptiveAvgPool2d { output_size } => {
                if output_size.0 == 0 || output_size.1 == 0 {
                    return Err(format!(
                        "output_size must be at least 1x1, got {}x{}",
                        output_size.0, output_size.1
                    ));
                }
                Ok(())
            }
            Op::Linear(l) => {
                positive("in_features", l.in_features)?;
                positive("out_features", l.out_features)
            }
            Op::Dropout { p, .. } => {
                if !(0.0..=1.0).contains(p) {
                    return Err(format!(
                        "dropout probability has to be between 0 and 1, but got {p}"
                    ));
                }
                Ok(())
            }
            Op::Act { kind, inplace } => {
                if *inplace && !kind.has_inplace() {
                    return Err(format!(
                        "{} takes no `inplace` argument (PyTorch's {} has none)",
                        kind.class_name(),
                        kind.class_name()
                    ));
                }
                Ok(())
            }
            Op::StochasticDepth { p, .. } => {
                if !(0.0..=1.0).contains(p) {
                    return Err(format!(
                        "drop probability has to be between 0 and 1, but got {p}"
                    ));
                }
                Ok(())
            }
            Op::Narrow { len, .. } => positive("len", *len),
            Op::ChannelShuffle { groups } => positive("groups", *groups),
            Op::Param {
                shape, batch_dim, ..
            } => {
                if shape.contains(&0) || (*batch_dim && shape.first() != Some(&1)) {
                    return Err(format!(
                        "a parameter of shape {} is not valid here",
                        fmt_shape(shape)
                    ));
                }
                Ok(())
            }
            Op::LayerNorm(l) => {
                positive("normalized_shape", l.normalized_shape)?;
                if !(l.eps.is_finite() && l.eps > 0.0) {
                    return Err(format!(
                        "eps must be a positive finite number, got {}",
                        l.eps
                    ));
                }
                Ok(())
            }
            Op::MultiheadAttention {
                embed_dim,
                num_heads,
            } => {
                positive("embed_dim", *embed_dim)?;
                positive("num_heads", *num_heads)?;
                if embed_dim % num_heads != 0 {
                    return Err("embed_dim must be divisible by num_heads".into());
                }
                Ok(())
            }
            Op::Permute { dims } => {
                let mut seen = dims.clone();
                seen.sort_unstable();
                if seen != (0..dims.len()).collect::<Vec<_>>() {
                    return Err(format!(
                        "permute: {dims:?} is not a permutation of the dimensions"
                    ));
                }
                Ok(())
            }
            Op::WindowAttention(w) => {
                positive("dim", w.dim)?;
                positive("num_heads", w.heads)?;
                positive("window_size", w.window.0.min(w.window.1))?;
                if w.dim % w.heads != 0 {
                    return Err(format!(
                        "dim {} must be divisible by num_heads {}",
                        w.dim, w.heads
                    ));
                }
                // torchvision divides V2's coordinates table by `window - 1`: a window of
                // one makes its position bias NaN.
                if w.v2 && w.window.0.min(w.window.1) < 2 {
                    return Err(format!(
                        "ShiftedWindowAttentionV2 needs a window of at least 2 on each side, got \
                         {:?}: torchvision's relative_coords_table divides by window_size - 1 \
                         and its position bias would be NaN",
                        w.window
                    ));
                }
                if w.shift.0 >= w.window.0 || w.shift.1 >= w.window.1 {
                    return Err(format!(
                        "shift_size {:?} must be smaller than window_size {:?}",
                        w.shift, w.window
                    ));
                }
                Ok(())
            }
            Op::Partition { p, .. } => positive("partition size", *p),
            Op::Departition { p, parts, .. } => {
                positive("partition size", *p)?;
                positive("partitions", parts.0.min(parts.1))
            }
            Op::RelPosAttention {
                dim,
                head_dim,
                size,
            } => {
                positive("feat_dim", *dim)?;
                positive("head_dim", *head_dim)?;
                positive("max_seq_len", *size)?;
                if dim % head_dim != 0 {
                    return Err(format!(
                        "feat_dim: {dim} must be divisible by head_dim: {head_dim}"
                    ));
                }
                Ok(())
            }
            Op::Input
            | Op::PatchMerge
            | Op::Flatten
            | Op::Add { .. }
            | Op::Mul
            | Op::Concat
            | Op::Select { .. }
            | Op::Tokens => Ok(()),
        }
    }

    /// Output shape for the given input shapes, or what is wrong (without the layer
    /// name, which the graph adds). Arguments are checked first ([`Op::validate`]); the
    /// arithmetic is checked, so absurd sizes are an error, never a wrapped number.
    pub fn output_shape(&self, inputs: &[&Shape]) -> Result<Shape, String> {
        self.validate()?;
        let x = inputs.first().copied();
        match self {
            Op::Input => Err("Input has no inputs".into()),
            Op::Conv2d(c) => {
                let (ch, h, w) = chw(x, "Conv2d")?;
                if ch != c.in_channels {
                    return Err(format!(
                        "expected input with {} channels, got {} (input shape {})",
                        c.in_channels,
                        ch,
                        fmt_shape(x.expect("chw checked it"))
                    ));
                }
                // The convolution reads a zero-padded copy of its input (im2col, or the
                // engine's padded plane): that copy must be a tensor that can exist.
                let padded = |n: usize, p: usize| n as u128 + 2 * p as u128;
                let padded_numel = (ch as u128)
                    .checked_mul(padded(h, c.padding.0))
                    .and_then(|v| v.checked_mul(padded(w, c.padding.1)));
                if padded_numel.is_none_or(|v| v > MAX_TENSOR_ELEMENTS) {
                    // The count itself, or that it passes 2^128 (no saturated number).
                    let count =
                        padded_numel.map_or("more than 2^128".to_string(), |v| v.to_string());
                    return Err(format!(
                        "padding {}x{} makes a padded input of {count} elements per image, more \
                         than the {} a tensor may have",
                        c.padding.0, c.padding.1, MAX_TENSOR_ELEMENTS
                    ));
                }
                let ho = window_out(
                    h,
                    c.kernel_size.0,
                    c.stride.0,
                    c.padding.0,
                    c.dilation.0,
                    false,
                );
                let wo = window_out(
                    w,
                    c.kernel_size.1,
                    c.stride.1,
                    c.padding.1,
                    c.dilation.1,
                    false,
                );
                match (ho, wo) {
                    (Some(ho), Some(wo)) => Ok(vec![c.out_channels, ho, wo]),
                    _ => Err(format!(
                        "kernel {}x{} (dilation {}x{}, padding {}x{}) is larger than the padded input {}x{}",
                        c.kernel_size.0, c.kernel_size.1, c.dilation.0, c.dilation.1,
                        c.padding.0, c.padding.1, h, w
                    )),
                }
            }
            Op::BatchNorm2d(b) => {
                let (ch, _, _) = chw(x, "BatchNorm2d")?;
                if ch != b.num_features {
                    return Err(format!(
                        "expected {} channels (num_features), got {}",
                        b.num_features, ch
                    ));
                }
                Ok(x.expect("chw checked it").clone())
            }
            Op::Act { .. } | Op::Dropout { .. } | Op::StochasticDepth { .. } => {
                Ok(x.ok_or("missing input")?.clone())
            }
            Op::Mul => match inputs {
                [a, b] => broadcast(a, b),
                _ => Err(format!("Mul takes 2 inputs, got {}", inputs.len())),
            },
            Op::Concat => {
                let first = x.ok_or("missing input")?;
                let mut channels: u128 = 0;
                for (k, s) in inputs.iter().enumerate() {
                    if s.len() != first.len() || s.is_empty() {
                        return Err(format!(
                            "Tensors must have same number of dimensions: got {} and {}",
                            first.len() + 1,
                            s.len() + 1
                        ));
                    }
                    for d in 1..s.len() {
                        if s[d] != first[d] {
                            return Err(format!(
                                "Sizes of tensors must match except in dimension 1. Expected \
                                 size {} but got size {} for tensor number {k} in the list.",
                                first[d], s[d]
                            ));
                        }
                    }
                    channels += s[0] as u128;
                }
                let mut out = first.clone();
                out[0] = usize::try_from(channels).map_err(|_| "too many channels")?;
                Ok(out)
            }
            Op::Narrow { start, len } => {
                let x = x.ok_or("missing input")?;
                let end = (*start as u128) + (*len as u128);
                if x.is_empty() || end > x[0] as u128 {
                    return Err(format!(
                        "channels {start}..{end} are outside the input's {} channels",
                        x.first().copied().unwrap_or(0)
                    ));
                }
                let mut out = x.clone();
                out[0] = *len;
                Ok(out)
            }
            Op::Param {
                shape, batch_dim, ..
            } => Ok(if *batch_dim {
                shape[1..].to_vec()
            } else {
                shape.clone()
            }),
            Op::LayerNorm(l) => {
                let x = x.ok_or("missing input")?;
                if x.last() != Some(&l.normalized_shape) {
                    return Err(format!(
                        "Given normalized_shape=[{}], expected input with shape [*, {}], but got \
                         input of size {}",
                        l.normalized_shape,
                        l.normalized_shape,
                        fmt_shape(x)
                    ));
                }
                Ok(x.clone())
            }
            Op::MultiheadAttention { embed_dim, .. } => {
                let x = x.ok_or("missing input")?;
                if x.len() != 2 || x[1] != *embed_dim {
                    return Err(format!(
                        "expected tokens of shape [T, {embed_dim}], got {}",
                        fmt_shape(x)
                    ));
                }
                Ok(x.clone())
            }
            Op::Select { index } => {
                let x = x.ok_or("missing input")?;
                if x.len() < 2 || *index >= x[0] {
                    return Err(format!(
                        "index {index} is out of bounds for a dimension of size {} (shape {})",
                        x.first().copied().unwrap_or(0),
                        fmt_shape(x)
                    ));
                }
                Ok(x[1..].to_vec())
            }
            Op::Tokens => {
                let (ch, h, w) = chw(x, "Tokens")?;
                Ok(vec![h * w, ch])
            }
            Op::Permute { dims } => {
                let x = x.ok_or("missing input")?;
                if dims.len() != x.len() {
                    return Err(format!(
                        "permute: number of dimensions in the tensor input does not match the \
                         length of the desired ordering of dimensions i.e. input.dim() = {} is \
                         not equal to len(dims) = {}",
                        x.len() + 1,
                        dims.len() + 1
                    ));
                }
                Ok(dims.iter().map(|&d| x[d]).collect())
            }
            Op::WindowAttention(w) => {
                let x = x.ok_or("missing input")?;
                if x.len() != 3 || x[2] != w.dim {
                    return Err(format!(
                        "expected a channels-last map [H, W, {}], got {}",
                        w.dim,
                        fmt_shape(x)
                    ));
                }
                // The padded copy to whole windows must be a tensor that can exist.
                let padded = (x[0].div_ceil(w.window.0) as u128 * w.window.0 as u128)
                    .saturating_mul(x[1].div_ceil(w.window.1) as u128 * w.window.1 as u128)
                    .saturating_mul(3 * w.dim as u128);
                if padded > MAX_TENSOR_ELEMENTS {
                    return Err(format!(
                        "padding {} to whole {}x{} windows gives more than the {} elements a \
                         tensor may have",
                        fmt_shape(x),
                        w.window.0,
                        w.window.1,
                        MAX_TENSOR_ELEMENTS
                    ));
                }
                Ok(x.clone())
            }
            Op::PatchMerge => {
                let x = x.ok_or("missing input")?;
                if x.len() != 3 {
                    return Err(format!(
                        "expected a channels-last map [H, W, C], got {}",
                        fmt_shape(x)
                    ));
                }
                Ok(vec![
                    x[0].div_ceil(2),
                    x[1].div_ceil(2),
                    x[2].saturating_mul(4),
                ])
            }
            Op::Partition { p, grid } => {
                let (c, h, w) = chw(x, "WindowPartition")?;
                if h % p != 0 || w % p != 0 {
                    return Err(format!(
                        "shape '[B, {c}, {}, {p}, {}, {p}]' is invalid for input of size \
                         B*{} (a {h}x{w} map does not split into {p}x{p} partitions)",
                        h / p,
                        w / p,
                        numel(&[c, h, w])
                    ));
                }
                let (groups, size) = ((h / p) * (w / p), p * p);
                Ok(if *grid {
                    vec![size, groups, c]
                } else {
                    vec![groups, size, c]
                })
            }
            Op::Departition { p, grid, parts } => {
                let x = x.ok_or("missing input")?;
                let (groups, size) = if *grid {
                    (x.get(1), x.first())
                } else {
                    (x.first(), x.get(1))
                };
                // Checked: sizes from a file must not wrap into ones that match.
                let fits = x.len() == 3
                    && parts
                        .0
                        .checked_mul(parts.1)
                        .is_some_and(|g| groups == Some(&g))
                    && p.checked_mul(*p).is_some_and(|s| size == Some(&s));
                if !fits {
                    return Err(format!(
                        "shape '[B, {}, {}, {p}, {p}, {}]' is invalid for input of size B*{}",
                        parts.0,
                        parts.1,
                        x.last().copied().unwrap_or(0),
                        numel(x)
                    ));
                }
                Ok(vec![x[2], parts.0 * p, parts.1 * p])
            }
            Op::RelPosAttention { dim, size, .. } => {
                let x = x.ok_or("missing input")?;
                if x.len() != 3 || x[2] != *dim {
                    return Err(format!(
                        "expected partitions [G, P, {dim}], got {}",
                        fmt_shape(x)
                    ));
                }
                if x[1] != size * size {
                    return Err(format!(
                        "The size of tensor a ({}) must match the size of tensor b ({}) at \
                         non-singleton dimension 4",
                        x[1],
                        size * size
                    ));
                }
                Ok(x.clone())
            }
            Op::ChannelShuffle { groups } => {
                let (ch, _, _) = chw(x, "ChannelShuffle")?;
                if ch % groups != 0 {
                    return Err(format!("{ch} channels do not split into {groups} groups"));
                }
                Ok(x.expect("chw checked it").clone())
            }
            Op::MaxPool2d(p) | Op::AvgPool2d(p) => {
                let (ch, h, w) = chw(x, self.type_name())?;
                let ho = window_out(
                    h,
                    p.kernel_size.0,
                    p.stride.0,
                    p.padding.0,
                    p.dilation.0,
                    p.ceil_mode,
                );
                let wo = window_out(
                    w,
                    p.kernel_size.1,
                    p.stride.1,
                    p.padding.1,
                    p.dilation.1,
                    p.ceil_mode,
                );
                match (ho, wo) {
                    (Some(ho), Some(wo)) if ho > 0 && wo > 0 => Ok(vec![ch, ho, wo]),
                    _ => Err(format!(
                        "window {}x{} does not fit the input {}x{}: output size would be zero",
                        p.kernel_size.0, p.kernel_size.1, h, w
                    )),
                }
            }
            Op::AdaptiveAvgPool2d { output_size } => {
                let (ch, _, _) = chw(x, "AdaptiveAvgPool2d")?;
                Ok(vec![ch, output_size.0, output_size.1])
            }
            Op::Flatten => {
                let x = x.ok_or("missing input")?;
                let n = numel(x);
                if n > MAX_TENSOR_ELEMENTS {
                    return Err(format!(
                        "flattening {} gives {n} features, more than the {} a tensor may have",
                        fmt_shape(x),
                        MAX_TENSOR_ELEMENTS
                    ));
                }
                Ok(vec![usize::try_from(n).map_err(|_| "too many features")?])
            }
            Op::Linear(l) => {
                // Linear acts on the last dimension (tokens [T, F], channels-last maps).
                let x = x.ok_or("missing input")?;
                let last = *x.last().ok_or("missing input")?;
                if last != l.in_features {
                    if x.len() > 1 && x.len() != 2 {
                        return Err(format!(
                            "expected a flat input of {} features, got shape {} (add a Flatten \
                             first)",
                            l.in_features,
                            fmt_shape(x)
                        ));
                    }
                    return Err(format!(
                        "expected {} input features (in_features), got {}",
                        l.in_features, last
                    ));
                }
                let mut out = x.clone();
                *out.last_mut().expect("not empty") = l.out_features;
                Ok(out)
            }
            Op::Add { .. } => {
                let (a, b) = match inputs {
                    [a, b] => (a, b),
                    _ => return Err(format!("Add takes 2 inputs, got {}", inputs.len())),
                };
                if a != b {
                    return Err(format!(
                        "the two branches of the residual add differ: {} vs {}",
                        fmt_shape(a),
                        fmt_shape(b)
                    ));
                }
                Ok((*a).clone())
            }
        }
    }

    /// Multiply-accumulates per sample for the given output shape.
    pub fn macs(&self, out: &Shape) -> u128 {
        let numel = numel(out);
        match self {
            Op::Conv2d(c) => numel
                .saturating_mul((c.in_channels / c.groups.max(1)) as u128)
                .saturating_mul(c.kernel_size.0 as u128)
                .saturating_mul(c.kernel_size.1 as u128),
            Op::Linear(l) => (numel / l.out_features.max(1) as u128)
                .saturating_mul(l.in_features as u128)
                .saturating_mul(l.out_features as u128),
            // The projections, then QK^T and attention x V.
            Op::MultiheadAttention { embed_dim, .. } => {
                let t = out.first().copied().unwrap_or(0) as u128;
                let e = *embed_dim as u128;
                (4 * t * e * e).saturating_add(2 * t * t * e)
            }
            // qkv and proj on the padded windows, then QK^T and attention x V in each.
            Op::WindowAttention(w) => {
                let (h, wd) = (
                    out.first().copied().unwrap_or(0),
                    out.get(1).copied().unwrap_or(0),
                );
                let tokens = (h.div_ceil(w.window.0) * w.window.0) as u128
                    * (wd.div_ceil(w.window.1) * w.window.1) as u128;
                let d = w.dim as u128;
                let win = (w.window.0 * w.window.1) as u128;
                tokens
                    .saturating_mul(4 * d * d)
                    .saturating_add(tokens.saturating_mul(2 * win * d))
            }
            Op::RelPosAttention { dim, .. } => {
                let s = out.get(1).copied().unwrap_or(0) as u128;
                let d = *dim as u128;
                numel
                    .saturating_mul(4 * d)
                    .saturating_add(numel.saturating_mul(2 * s))
            }
            Op::Input
            | Op::PatchMerge
            | Op::Partition { .. }
            | Op::Departition { .. }
            | Op::BatchNorm2d(_)
            | Op::Act { .. }
            | Op::Mul
            | Op::Concat
            | Op::StochasticDepth { .. }
            | Op::Narrow { .. }
            | Op::ChannelShuffle { .. }
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::AdaptiveAvgPool2d { .. }
            | Op::Flatten
            | Op::Dropout { .. }
            | Op::Param { .. }
            | Op::LayerNorm(_)
            | Op::Select { .. }
            | Op::Tokens
            | Op::Permute { .. }
            | Op::Add { .. } => 0,
        }
    }

    /// The fan-in of PyTorch's default initialisation (`kaiming_uniform_(a=sqrt(5))` and
    /// the bias bound `1/sqrt(fan_in)`): inputs per output of a weight; 1 where the layer
    /// has no such weight.
    pub fn fan_in(&self) -> usize {
        match self {
            Op::Conv2d(c) => c.in_channels / c.groups.max(1) * c.kernel_size.0 * c.kernel_size.1,
            Op::Linear(l) => l.in_features,
            Op::MultiheadAttention { embed_dim, .. } => *embed_dim,
            Op::WindowAttention(w) => w.dim,
            Op::RelPosAttention { dim, .. } => *dim,
            Op::Input
            | Op::PatchMerge
            | Op::Partition { .. }
            | Op::Departition { .. }
            | Op::BatchNorm2d(_)
            | Op::Act { .. }
            | Op::Mul
            | Op::Concat
            | Op::StochasticDepth { .. }
            | Op::Narrow { .. }
            | Op::ChannelShuffle { .. }
            | Op::MaxPool2d(_)
            | Op::AvgPool2d(_)
            | Op::AdaptiveAvgPool2d { .. }
            | Op::Flatten
            | Op::Dropout { .. }
            | Op::Param { .. }
            | Op::LayerNorm(_)
            | Op::Select { .. }
            | Op::Tokens
            | Op::Permute { .. }
            | Op::Add { .. } => 1,
        }
    }
}

/// NumPy/PyTorch broadcasting of two per-sample shapes of the same rank (the batch
/// dimension is shared), with PyTorch's words when they do not broadcast.
fn broadcast(a: &Shape, b: &Shape) -> Result<Shape, String> {
    if a.len() != b.len() {
        return Err(format!(
            "cannot multiply shapes {} and {}: they differ in rank",
            fmt_shape(a),
            fmt_shape(b)
        ));
    }
    a.iter()
        .zip(b)
        .enumerate()
        .map(|(d, (&x, &y))| match (x, y) {
            _ if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => Err(format!(
                "The size of tensor a ({x}) must match the size of tensor b ({y}) at \
                 non-singleton dimension {}",
                d + 1
            )),
        })
        .collect()
}

fn chw(x: Option<&Shape>, what: &str) -> Result<(usize, usize, usize), String> {
    match x {
        Some(s) if s.len() == 3 => Ok((s[0], s[1], s[2])),
        Some(s) => Err(format!(
            "{what} expects a CxHxW input, got shape {}",
            fmt_shape(s)
        )),
        None => Err("missing input".into()),
    }
}

/// Checks a sliding window's kernel, stride and dilation as ATen does.
fn window_args(
    kernel: (usize, usize),
    stride: (usize, usize),
    dilation: (usize, usize),
) -> Result<(), String> {
    if kernel.0 == 0 || kernel.1 == 0 {
        return Err(format!(
            "kernel size should be greater than zero, but got kH: {} kW: {}",
            kernel.0, kernel.1
        ));
    }
    if stride.0 == 0 || stride.1 == 0 {
        return Err(format!(
            "non-positive stride is not supported, got stride {}x{}",
            stride.0, stride.1
        ));
    }
    if dilation.0 == 0 || dilation.1 == 0 {
        return Err(format!(
            "dilation should be greater than zero, but got dilationH: {} dilationW: {}",
            dilation.0, dilation.1
        ));
    }
    Ok(())
}

/// The largest number of elements one tensor may have per image (2^40, 4 TiB of
/// float32): far above anything a GPU holds, and small enough that every byte count the
/// planner derives from it (times a batch of up to 2^64, times 8 bytes, summed over the
/// graph) stays exact in `u128`.
pub const MAX_TENSOR_ELEMENTS: u128 = 1 << 40;

/// Element count of a shape, exact (a shape of up to 4 dimensions below 2^64 each
/// cannot overflow `u128` once each step is checked against the cap).
pub fn numel(shape: &[usize]) -> u128 {
    shape
        .iter()
        .try_fold(1u128, |acc, &d| acc.checked_mul(d as u128))
        .unwrap_or(u128::MAX)
}

/// PyTorch's output size of a sliding window (convolution and pooling), including
/// `ceil_mode`'s rule that the last window must start inside the padded input. `None`
/// when the window does not fit, or for arguments no layer accepts (zero kernel or
/// stride); computed in `u128`, so no argument can overflow it.
pub fn window_out(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
    ceil_mode: bool,
) -> Option<usize> {
    if kernel == 0 || stride == 0 {
        return None;
    }
    let (input, kernel, stride, padding, dilation) = (
        input as u128,
        kernel as u128,
        stride as u128,
        padding as u128,
        dilation as u128,
    );
    let padded = input + 2 * padding;
    let span = dilation * (kernel - 1) + 1;
    if span > padded {
        return None;
    }
    let room = padded - span;
    let mut out = if ceil_mode {
        room.div_ceil(stride) + 1
    } else {
        room / stride + 1
    };
    if ceil_mode && (out - 1) * stride >= input + padding {
        out -= 1;
    }
    usize::try_from(out).ok()
}

/// `3x32x32`, `[400]` style.
pub fn fmt_shape(s: &[usize]) -> String {
    s.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("x")
}

impl From<(String, String)> for GraphError {
    fn from((layer, message): (String, String)) -> Self {
        GraphError::Shape { layer, message }
    }
}
