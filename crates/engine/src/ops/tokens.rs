//! `x.flatten(2).transpose(1, 2)`: a feature map `[C, H, W]` as tokens `[HW, C]`.

use std::rc::Rc;

use super::permute::permute;
use super::Ctx;
use crate::tensor::Tensor;

/// ViT's tokens: `[B, C, H, W]` as `[B, H*W, C]`, copied; with `backward`, a gradient
/// `[B, H*W, C]` back to `shape` `[B, C, H, W]`. Allocates the result.
pub(crate) fn tokens(ctx: &Ctx, x: &Tensor, shape: &[usize], backward: bool) -> Tensor {
    let flat = Tensor {
        buf: Rc::clone(&x.buf),
        shape: if backward {
            x.shape.clone()
        } else {
            vec![shape[0], shape[1], shape[2] * shape[3]]
        },
    };
    let mut o = permute(ctx, &flat, &[1, 0]);
    if backward {
        o.shape = shape.to_vec();
    }
    o
}
