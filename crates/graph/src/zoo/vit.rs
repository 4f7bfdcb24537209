//! torchvision's Vision Transformers (`vit_b_16`, `vit_b_32`, `vit_l_16`, `vit_l_32`,
//! `vit_h_14`): patch embedding by a strided convolution, a class token, a learned
//! position embedding, pre-norm encoder blocks of `nn.MultiheadAttention` and an MLP.

use crate::op::{Conv2d, Init, LayerNorm, Linear, Op};
use crate::{Activation, Graph, GraphBuilder, GraphError};

/// (patch, layers, heads, hidden, mlp) of each builder; all take 224x224 images.
fn config(name: &str) -> (usize, usize, usize, usize, usize) {
    match name {
        "vit_b_16" => (16, 12, 12, 768, 3072),
        "vit_b_32" => (32, 12, 12, 768, 3072),
        "vit_l_16" => (16, 24, 16, 1024, 4096),
        "vit_l_32" => (32, 24, 16, 1024, 4096),
        "vit_h_14" => (14, 32, 16, 1280, 5120),
        other => unreachable!("zoo ENTRIES lists no {other}"),
    }
}

/// The image size the builders fix (`image_size=224`).
pub(super) const IMAGE_SIZE: usize = 224;

pub(super) fn vit(name: &str, input: Vec<usize>, classes: usize) -> Result<Graph, GraphError> {
    let (patch, layers, heads, hidden, mlp) = config(name);
    // VisionTransformer._process_input's checks, in PyTorch's words.
    for (what, got) in [("height", input[1]), ("width", input[2])] {
        if got != IMAGE_SIZE {
            return Err(GraphError::Shape {
                layer: "conv_proj".into(),
                message: format!("Wrong image {what}! Expected {IMAGE_SIZE} but got {got}!"),
            });
        }
    }
    Ok(transformer(
        name,
        input,
        Vit {
            patch,
            layers,
            heads,
            hidden,
            mlp,
            classes,
        },
    ))
}

/// `vit_tiny`: issue 8's small ViT for 28x28 grayscale images (patch 4, width 64, depth
/// 4, 4 heads, MLP 128), built as torchvision's `VisionTransformer` with those sizes.
pub(super) fn tiny(input: Vec<usize>, classes: usize) -> Graph {
    transformer(
        "vit_tiny",
        input,
        Vit {
            patch: 4,
            layers: 4,
            heads: 4,
            hidden: 64,
            mlp: 128,
            classes,
        },
    )
}

/// A VisionTransformer's sizes.
pub struct Vit {
    pub patch: usize,
    pub layers: usize,
    pub heads: usize,
    pub hidden: usize,
    pub mlp: usize,
    pub classes: usize,
}

/// torchvision's `VisionTransformer` for any sizes (LayerNorm eps 1e-6, dropout 0).
pub fn transformer(name: &str, input: Vec<usize>, v: Vit) -> Graph {
    let in_ch = input[0];
    // Saturating: an absurd input is refused by shape inference, naming a layer.
    let tokens = (input[1] / v.patch)
        .saturating_mul(input[2] / v.patch)
        .saturating_add(1);
    let e = v.hidden;
    let mut b = GraphBuilder::new(name, input);
    let x = b.input();
    let class_token = b.add(
        "class_token",
        Op::Param {
            shape: vec![1, 1, e],
            batch_dim: true,
            init: Init::Zeros,
        },
        &[],
    );
    let mut conv = Conv2d::new(in_ch, e, v.patch).stride(v.patch);
    conv.bias = true;
    let mut y = b.then("conv_proj", Op::Conv2d(conv), x);
    y = b.then("tokens", Op::Tokens, y);
    y = b.add("cat", Op::Concat, &[class_token, y]);
    let pos = b.add(
        "encoder.pos_embedding",
        Op::Param {
            shape: vec![1, tokens, e],
            batch_dim: true,
            init: Init::Normal { std: 0.02 },
        },
        &[],
    );
    y = b.add("encoder.add", Op::Add { inplace: false }, &[y, pos]);
    let ln = || Op::LayerNorm(LayerNorm::new(e).eps(1e-6));
    for i in 0..v.layers {
        let p = format!("encoder.layers.encoder_layer_{i}");
        let input = y;
        let mut h = b.then(format!("{p}.ln_1"), ln(), input);
        h = b.then(
            format!("{p}.self_attention"),
            Op::MultiheadAttention {
                embed_dim: e,
                num_heads: v.heads,
            },
            h,
        );
        let x1 = b.add(
            format!("{p}.add_1"),
            Op::Add { inplace: false },
            &[h, input],
        );
        let mut m = b.then(format!("{p}.ln_2"), ln(), x1);
        m = b.then(format!("{p}.mlp.0"), Op::Linear(Linear::new(e, v.mlp)), m);
        m = b.then(format!("{p}.mlp.1"), Op::act(Activation::Gelu, false), m);
        m = b.then(format!("{p}.mlp.3"), Op::Linear(Linear::new(v.mlp, e)), m);
        y = b.add(format!("{p}.add_2"), Op::Add { inplace: false }, &[x1, m]);
    }
    y = b.then("encoder.ln", ln(), y);
    y = b.then("class_token_out", Op::Select { index: 0 }, y);
    b.then("heads.head", Op::Linear(Linear::new(e, v.classes)), y);
    b.build()
}
