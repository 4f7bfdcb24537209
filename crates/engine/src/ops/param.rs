//! A learnable leaf used as a value (class token, position embedding, layer scale).

use super::{column_sums, Ctx};
use crate::tensor::Tensor;

/// A learnable leaf's value: the parameter broadcast over the batch (`shape`, batch
/// first), one copy per sample. Allocates the value.
pub(crate) fn forward(ctx: &Ctx, p: &Tensor, shape: &[usize]) -> Tensor {
    let o = ctx.zeros(shape);
    {
        let pd = p.data();
        let mut od = o.data_mut();
        for s in od.chunks_mut(pd.len()) {
            s.copy_from_slice(&pd);
        }
    }
    o
}

/// A learnable leaf's gradient: `g` summed over the batch. Allocates the gradient
/// (category gradients) in the parameter's shape.
pub(crate) fn backward(ctx: &Ctx, g: &Tensor, p_shape: &[usize]) -> Tensor {
    let gp = ctx.grad(p_shape);
    {
        let n = gp.numel();
        column_sums(&g.data(), n, &mut gp.data_mut());
    }
    gp
}
