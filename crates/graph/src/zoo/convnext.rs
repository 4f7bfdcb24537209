//! torchvision's ConvNeXt (`convnext_tiny`, `_small`, `_base`, `_large`): a patchify
//! stem, stages of CNBlocks (7x7 depthwise convolution, channels-last LayerNorm and MLP
//! through permutes, a learned layer scale, stochastic depth), LayerNorm2d downsampling.

use crate::op::{Conv2d, Init, LayerNorm, Linear, Op};
use crate::{Activation, Graph, GraphBuilder, NodeId};

/// torchvision's `LayerNorm2d` as `{p}`: permute to channels-last, LayerNorm over the
/// channels (eps 1e-6), permute back.
fn layer_norm_2d(b: &mut GraphBuilder, p: &str, c: usize, x: NodeId) -> NodeId {
    let x = b.then(
        format!("{p}.permute_in"),
        Op::Permute {
            dims: vec![1, 2, 0],
        },
        x,
    );
    let x = b.then(p.to_string(), Op::LayerNorm(LayerNorm::new(c).eps(1e-6)), x);
    b.then(
        format!("{p}.permute_out"),
        Op::Permute {
            dims: vec![2, 0, 1],
        },
        x,
    )
}

pub(super) fn convnext(name: &str, input: Vec<usize>, classes: usize) -> Graph {
    let (dims, depths, sd): ([usize; 4], [usize; 4], f64) = match name {
        "convnext_tiny" => ([96, 192, 384, 768], [3, 3, 9, 3], 0.1),
        "convnext_small" => ([96, 192, 384, 768], [3, 3, 27, 3], 0.4),
        "convnext_base" => ([128, 256, 512, 1024], [3, 3, 27, 3], 0.5),
        "convnext_large" => ([192, 384, 768, 1536], [3, 3, 27, 3], 0.5),
        other => unreachable!("zoo ENTRIES lists no {other}"),
    };
    body(name, input, &dims, &depths, sd, classes)
}

/// torchvision's `ConvNeXt` module with stages of `dims` channels and `depths` blocks,
/// stochastic depth rising linearly to `sd`.
pub fn body(
    name: &str,
    input: Vec<usize>,
    dims: &[usize],
    depths: &[usize],
    sd: f64,
    classes: usize,
) -> Graph {
    let in_ch = input[0];
    let mut b = GraphBuilder::new(name, input);
    let mut x = b.input();
    let mut stem = Conv2d::new(in_ch, dims[0], 4).stride(4);
    stem.bias = true;
    x = b.then("features.0.0", Op::Conv2d(stem), x);
    x = layer_norm_2d(&mut b, "features.0.1", dims[0], x);
    let total: usize = depths.iter().sum();
    let mut block_id = 0;
    for (si, (&dim, &depth)) in dims.iter().zip(depths).enumerate() {
        for j in 0..depth {
            let p = format!("features.{}.{j}", 2 * si + 1);
            let prob = sd * block_id as f64 / (total as f64 - 1.0);
            block_id += 1;
            let scale = b.add(
                format!("{p}.layer_scale"),
                Op::Param {
                    shape: vec![dim, 1, 1],
                    batch_dim: false,
                    init: Init::Constant(1e-6),
                },
                &[],
            );
            let mut dw = Conv2d::new(dim, dim, 7).padding(3).groups(dim);
            dw.bias = true;
            let mut y = b.then(format!("{p}.block.0"), Op::Conv2d(dw), x);
            y = b.then(
                format!("{p}.block.1"),
                Op::Permute {
                    dims: vec![1, 2, 0],
                },
                y,
            );
            y = b.then(
                format!("{p}.block.2"),
                Op::LayerNorm(LayerNorm::new(dim).eps(1e-6)),
                y,
            );
            y = b.then(
                format!("{p}.block.3"),
                Op::Linear(Linear::new(dim, 4 * dim)),
                y,
            );
            y = b.then(format!("{p}.block.4"), Op::act(Activation::Gelu, false), y);
            y = b.then(
                format!("{p}.block.5"),
                Op::Linear(Linear::new(4 * dim, dim)),
                y,
            );
            y = b.then(
                format!("{p}.block.6"),
                Op::Permute {
                    dims: vec![2, 0, 1],
                },
                y,
            );
            y = b.add(format!("{p}.scale"), Op::Mul, &[scale, y]);
            y = b.then(
                format!("{p}.stochastic_depth"),
                Op::StochasticDepth { p: prob, row: true },
                y,
            );
            x = b.add(format!("{p}.add"), Op::Add { inplace: true }, &[y, x]);
        }
        if si + 1 < dims.len() {
            let p = format!("features.{}", 2 * si + 2);
            x = layer_norm_2d(&mut b, &format!("{p}.0"), dim, x);
            let mut down = Conv2d::new(dim, dims[si + 1], 2).stride(2);
            down.bias = true;
            x = b.then(format!("{p}.1"), Op::Conv2d(down), x);
        }
    }
    x = b.then(
        "avgpool",
        Op::AdaptiveAvgPool2d {
            output_size: (1, 1),
        },
        x,
    );
    let last = dims[dims.len() - 1];
    x = layer_norm_2d(&mut b, "classifier.0", last, x);
    x = b.then("classifier.1", Op::Flatten, x);
    b.then("classifier.2", Op::Linear(Linear::new(last, classes)), x);
    b.build()
}
