//! torchvision's MaxViT (`maxvit_t`): a convolutional stem, then blocks of MaxViT
//! layers, each an MBConv with squeeze-and-excitation, window attention and grid
//! attention (both with a relative position bias), and a LayerNorm-Tanh classifier.

use super::{squeeze_excitation, Norm};
use crate::op::{BatchNorm2d, Conv2d, LayerNorm, Linear, Op, Pool2d};
use crate::{Activation, Graph, GraphBuilder, NodeId};

/// A `MaxVit`'s sizes (torchvision's constructor arguments; squeeze ratio 0.25,
/// expansion 4, MLP ratio 4, dropout 0, GELU, BatchNorm eps 1e-3 momentum 0.01).
pub struct MaxVit {
    /// `input_size`: the image size the partitions are laid out for.
    pub input_size: (usize, usize),
    pub stem_channels: usize,
    pub partition_size: usize,
    pub block_channels: Vec<usize>,
    pub block_layers: Vec<usize>,
    pub head_dim: usize,
    pub stochastic_depth: f64,
    pub classes: usize,
}

/// torchvision's `maxvit_t` (laid out for 224x224 images, as `maxvit_t()` builds it).
pub(super) fn maxvit_t(input: Vec<usize>, classes: usize) -> Graph {
    body(
        "maxvit_t",
        input,
        &MaxVit {
            input_size: (224, 224),
            stem_channels: 64,
            partition_size: 7,
            block_channels: vec![64, 128, 256, 512],
            block_layers: vec![2, 2, 5, 2],
            head_dim: 32,
            stochastic_depth: 0.2,
            classes,
        },
    )
}

const NORM: Norm = Norm {
    eps: 1e-3,
    momentum: 0.01,
};

fn bn(c: usize) -> Op {
    let mut b = BatchNorm2d::new(c);
    b.eps = NORM.eps;
    b.momentum = NORM.momentum;
    Op::BatchNorm2d(b)
}

/// `(n + 2 - 3) / 2 + 1`: a 3x3 stride-2 convolution with padding 1.
fn halve(n: usize) -> usize {
    (n + 2).saturating_sub(3) / 2 + 1
}

/// torchvision's `Conv2dNormActivation(..., inplace=None)` with GELU: conv (no bias),
/// BatchNorm, GELU (which has no in-place form).
fn conv_bn_gelu(b: &mut GraphBuilder, p: &str, conv: Conv2d, x: NodeId) -> NodeId {
    let k = conv.kernel_size.0;
    let out = conv.out_channels;
    let x = b.then(
        format!("{p}.0"),
        Op::Conv2d(conv.padding((k - 1) / 2).no_bias()),
        x,
    );
    let x = b.then(format!("{p}.1"), bn(out), x);
    b.then(format!("{p}.2"), Op::act(Activation::Gelu, false), x)
}

/// torchvision's `MaxVit` for any sizes. The partitions are laid out for
/// `m.input_size`; another image size fails where PyTorch's reshape does.
pub fn body(name: &str, input: Vec<usize>, m: &MaxVit) -> Graph {
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    let mut c = m.stem_channels;
    x = conv_bn_gelu(&mut b, "stem.0", Conv2d::new(in_ch, c, 3).stride(2), x);
    x = b.then("stem.1.0", Op::Conv2d(Conv2d::new(c, c, 3).padding(1)), x);
    let mut grid = (halve(m.input_size.0), halve(m.input_size.1));
    let total: usize = m.block_layers.iter().sum();
    let mut layer_id = 0usize;
    let ps = m.partition_size;
    for (bi, (&out, &layers)) in m.block_channels.iter().zip(&m.block_layers).enumerate() {
        grid = (halve(grid.0), halve(grid.1));
        for li in 0..layers {
            // np.linspace(0, stochastic_depth_prob, total).
            let prob = if total > 1 {
                m.stochastic_depth * layer_id as f64 / (total as f64 - 1.0)
            } else {
                0.0
            };
            layer_id += 1;
            let p = format!("blocks.{bi}.layers.{li}.layers");
            let stride = if li == 0 { 2 } else { 1 };
            x = mbconv(&mut b, &format!("{p}.MBconv"), c, out, stride, prob, x);
            c = out;
            for (kind, is_grid) in [("window_attention", false), ("grid_attention", true)] {
                x = partition_attention(
                    &mut b,
                    &format!("{p}.{kind}"),
                    c,
                    m.head_dim,
                    ps,
                    is_grid,
                    grid,
                    prob,
                    x,
                );
            }
        }
    }
    x = b.then(
        "classifier.0",
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        x,
    );
    x = b.then("classifier.1", Op::Flatten, x);
    x = b.then("classifier.2", Op::LayerNorm(LayerNorm::new(c)), x);
    x = b.then("classifier.3", Op::Linear(Linear::new(c, c)), x);
    x = b.then("classifier.4", Op::act(Activation::Tanh, false), x);
    b.then(
        "classifier.5",
        Op::Linear(Linear {
            in_features: c,
            out_features: m.classes,
            bias: false,
        }),
        x,
    );
    b.build()
}

/// torchvision's MaxViT `MBConv` as `{p}`: `proj(x) + stochastic_depth(layers(x))`.
fn mbconv(
    b: &mut GraphBuilder,
    p: &str,
    cin: usize,
    out: usize,
    stride: usize,
    prob: f64,
    x: NodeId,
) -> NodeId {
    let res = if stride == 2 {
        let r = b.then(
            format!("{p}.proj.0"),
            Op::AvgPool2d(Pool2d::new(3).stride(2).padding(1)),
            x,
        );
        b.then(
            format!("{p}.proj.1"),
            Op::Conv2d(Conv2d::new(cin, out, 1)),
            r,
        )
    } else if cin != out {
        b.then(
            format!("{p}.proj.0"),
            Op::Conv2d(Conv2d::new(cin, out, 1)),
            x,
        )
    } else {
        x
    };
    let mid = out * 4;
    let sqz = out / 4;
    let l = format!("{p}.layers");
    let mut y = b.then(format!("{l}.pre_norm"), bn(cin), x);
    y = conv_bn_gelu(b, &format!("{l}.conv_a"), Conv2d::new(cin, mid, 1), y);
    y = conv_bn_gelu(
        b,
        &format!("{l}.conv_b"),
        Conv2d::new(mid, mid, 3).stride(stride).groups(mid),
        y,
    );
    y = squeeze_excitation(
        b,
        &format!("{l}.squeeze_excitation"),
        mid,
        sqz,
        Op::act(Activation::Silu, false),
        Op::act(Activation::Sigmoid, false),
        y,
    );
    y = b.then(
        format!("{l}.conv_c"),
        Op::Conv2d(Conv2d::new(mid, out, 1)),
        y,
    );
    if prob > 0.0 {
        y = b.then(
            format!("{p}.stochastic_depth"),
            Op::StochasticDepth { p: prob, row: true },
            y,
        );
    }
    b.add(format!("{p}.add"), Op::Add { inplace: false }, &[res, y])
}

/// torchvision's `PartitionAttentionLayer` as `{p}`: partition (and swap, for a grid),
/// `x + sd(attn_layer(x))`, `x + sd(mlp_layer(x))`, swap back and departition.
#[allow(clippy::too_many_arguments)]
fn partition_attention(
    b: &mut GraphBuilder,
    p: &str,
    c: usize,
    head_dim: usize,
    partition_size: usize,
    grid: bool,
    grid_size: (usize, usize),
    prob: f64,
    x: NodeId,
) -> NodeId {
    let n_partitions = grid_size.0 / partition_size;
    let part = if grid { n_partitions } else { partition_size };
    let parts = (grid_size.0 / part.max(1), grid_size.1 / part.max(1));
    let sd = Op::StochasticDepth { p: prob, row: true };
    let x = b.then(
        format!("{p}.partition_op"),
        Op::Partition { p: part, grid },
        x,
    );
    let mut y = b.then(
        format!("{p}.attn_layer.0"),
        Op::LayerNorm(LayerNorm::new(c)),
        x,
    );
    y = b.then(
        format!("{p}.attn_layer.1"),
        Op::RelPosAttention {
            dim: c,
            head_dim,
            size: partition_size,
        },
        y,
    );
    y = b.then(format!("{p}.stochastic_dropout"), sd.clone(), y);
    let x = b.add(format!("{p}.add_1"), Op::Add { inplace: false }, &[x, y]);
    let mut m = b.then(
        format!("{p}.mlp_layer.0"),
        Op::LayerNorm(LayerNorm::new(c)),
        x,
    );
    m = b.then(
        format!("{p}.mlp_layer.1"),
        Op::Linear(Linear::new(c, 4 * c)),
        m,
    );
    m = b.then(
        format!("{p}.mlp_layer.2"),
        Op::act(Activation::Gelu, false),
        m,
    );
    m = b.then(
        format!("{p}.mlp_layer.3"),
        Op::Linear(Linear::new(4 * c, c)),
        m,
    );
    m = b.then(format!("{p}.stochastic_dropout_2"), sd, m);
    let x = b.add(format!("{p}.add_2"), Op::Add { inplace: false }, &[x, m]);
    b.then(
        format!("{p}.departition_op"),
        Op::Departition {
            p: part,
            grid,
            parts,
        },
        x,
    )
}
