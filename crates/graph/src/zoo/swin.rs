//! torchvision's Swin Transformers (`swin_t`, `swin_s`, `swin_b`) and Swin V2
//! (`swin_v2_t`, `swin_v2_s`, `swin_v2_b`): a patchify stem, stages of shifted-window
//! attention blocks on channels-last maps, patch merging between stages.

use crate::op::{Conv2d, LayerNorm, Linear, Op, WindowAttention};
use crate::{Activation, Graph, GraphBuilder, NodeId};

/// A `SwinTransformer`'s sizes (torchvision's constructor arguments; dropout 0, MLP
/// ratio 4, LayerNorm eps 1e-5).
pub struct Swin {
    pub patch: usize,
    pub embed_dim: usize,
    pub depths: Vec<usize>,
    pub heads: Vec<usize>,
    pub window: usize,
    pub stochastic_depth: f64,
    /// `SwinTransformerBlockV2`, `ShiftedWindowAttentionV2` and `PatchMergingV2`.
    pub v2: bool,
    pub classes: usize,
}

pub(super) fn swin(name: &str, input: Vec<usize>, classes: usize) -> Graph {
    let v2 = name.starts_with("swin_v2_");
    let size = name
        .trim_start_matches("swin_v2_")
        .trim_start_matches("swin_");
    let (embed_dim, depths, heads, sd) = match size {
        "t" => (96, vec![2, 2, 6, 2], vec![3, 6, 12, 24], 0.2),
        "s" => (96, vec![2, 2, 18, 2], vec![3, 6, 12, 24], 0.3),
        "b" => (128, vec![2, 2, 18, 2], vec![4, 8, 16, 32], 0.5),
        other => unreachable!("zoo ENTRIES lists no swin size {other}"),
    };
    transformer(
        name,
        input,
        &Swin {
            patch: 4,
            embed_dim,
            depths,
            heads,
            window: if v2 { 8 } else { 7 },
            stochastic_depth: sd,
            v2,
            classes,
        },
    )
}

/// torchvision's `SwinTransformer` for any sizes.
pub fn transformer(name: &str, input: Vec<usize>, s: &Swin) -> Graph {
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    // Nodes in PyTorch's registration order (parameters and buffers follow it): V1's
    // PatchMerging registers `reduction` before the `norm` it runs first, and V2's
    // blocks register `norm1` before the attention they run first.
    let mut order: Vec<NodeId> = vec![b.input()];
    let mut x = b.input();
    let ln = |c: usize| Op::LayerNorm(LayerNorm::new(c));
    let mut stem = Conv2d::new(in_ch, s.embed_dim, s.patch).stride(s.patch);
    stem.bias = true;
    x = b.then("features.0.0", Op::Conv2d(stem), x);
    order.push(x);
    x = b.then(
        "features.0.1",
        Op::Permute {
            dims: vec![1, 2, 0],
        },
        x,
    );
    order.push(x);
    x = b.then("features.0.2", ln(s.embed_dim), x);
    order.push(x);
    let total: usize = s.depths.iter().sum();
    let mut block_id = 0usize;
    let mut dim = s.embed_dim;
    let mut feature = 1;
    for (si, (&depth, &heads)) in s.depths.iter().zip(&s.heads).enumerate() {
        for j in 0..depth {
            let p = format!("features.{feature}.{j}");
            let prob = if total > 1 {
                s.stochastic_depth * block_id as f64 / (total as f64 - 1.0)
            } else {
                0.0
            };
            block_id += 1;
            let half = s.window / 2;
            let attn = Op::WindowAttention(WindowAttention {
                dim,
                heads,
                window: (s.window, s.window),
                shift: if j % 2 == 0 { (0, 0) } else { (half, half) },
                v2: s.v2,
            });
            let sd = Op::StochasticDepth { p: prob, row: true };
            let input = x;
            // V1 is pre-norm (x + sd(attn(norm1(x)))), V2 res-post-norm
            // (x + sd(norm1(attn(x)))); likewise the MLP with norm2.
            let (norm1, a, y) = if s.v2 {
                let a = b.then(format!("{p}.attn"), attn, input);
                let n = b.then(format!("{p}.norm1"), ln(dim), a);
                (n, a, n)
            } else {
                let n = b.then(format!("{p}.norm1"), ln(dim), input);
                let a = b.then(format!("{p}.attn"), attn, n);
                (n, a, a)
            };
            let sd1 = b.then(format!("{p}.stochastic_depth"), sd.clone(), y);
            let x1 = b.add(
                format!("{p}.add_1"),
                Op::Add { inplace: false },
                &[input, sd1],
            );
            let mut mlp = Vec::new();
            let mut m = x1;
            let mut norm2 = None;
            if !s.v2 {
                m = b.then(format!("{p}.norm2"), ln(dim), m);
                norm2 = Some(m);
            }
            m = b.then(
                format!("{p}.mlp.0"),
                Op::Linear(Linear::new(dim, 4 * dim)),
                m,
            );
            mlp.push(m);
            m = b.then(format!("{p}.mlp.1"), Op::act(Activation::Gelu, false), m);
            mlp.push(m);
            m = b.then(
                format!("{p}.mlp.3"),
                Op::Linear(Linear::new(4 * dim, dim)),
                m,
            );
            mlp.push(m);
            if s.v2 {
                m = b.then(format!("{p}.norm2"), ln(dim), m);
                norm2 = Some(m);
            }
            let sd2 = b.then(format!("{p}.stochastic_depth_2"), sd, m);
            x = b.add(format!("{p}.add_2"), Op::Add { inplace: false }, &[x1, sd2]);
            // Registration: norm1, attn, norm2, mlp.
            order.extend([norm1, a, sd1, x1]);
            order.extend(norm2);
            order.extend(mlp);
            order.extend([sd2, x]);
        }
        feature += 1;
        if si + 1 < s.depths.len() {
            let p = format!("features.{feature}");
            let merged = b.then(format!("{p}.merge"), Op::PatchMerge, x);
            let reduction = Op::Linear(Linear {
                in_features: 4 * dim,
                out_features: 2 * dim,
                bias: false,
            });
            let (norm, red);
            if s.v2 {
                red = b.then(format!("{p}.reduction"), reduction, merged);
                norm = b.then(format!("{p}.norm"), ln(2 * dim), red);
                x = norm;
            } else {
                norm = b.then(format!("{p}.norm"), ln(4 * dim), merged);
                red = b.then(format!("{p}.reduction"), reduction, norm);
                x = red;
            }
            order.extend([merged, red, norm]);
            dim *= 2;
            feature += 1;
        }
    }
    x = b.then("norm", ln(dim), x);
    order.push(x);
    x = b.then(
        "permute",
        Op::Permute {
            dims: vec![2, 0, 1],
        },
        x,
    );
    order.push(x);
    x = b.then(
        "avgpool",
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        x,
    );
    order.push(x);
    x = b.then("flatten", Op::Flatten, x);
    order.push(x);
    x = b.then("head", Op::Linear(Linear::new(dim, s.classes)), x);
    order.push(x);
    b.param_order(order);
    b.build()
}
