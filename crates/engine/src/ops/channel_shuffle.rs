//! torchvision's channel shuffle (ShuffleNetV2) and its inverse.

use super::Ctx;
use crate::tensor::Tensor;

/// torchvision's channel shuffle: output channel `j * groups + i` is input channel
/// `i * (C / groups) + j`; backward is the inverse permutation.
pub(crate) fn shuffle(ctx: &Ctx, x: &Tensor, groups: usize, inverse: bool) -> Tensor {
    let (batch, c) = (x.shape[0], x.shape[1]);
    let plane: usize = x.shape[2..].iter().product();
    let per_group = c / groups;
    let o = ctx.zeros(&x.shape);
    {
        let (xd, mut od) = (x.data(), o.data_mut());
        for s in 0..batch {
            for i in 0..groups {
                for j in 0..per_group {
                    let (src, dst) = (i * per_group + j, j * groups + i);
                    let (src, dst) = if inverse { (dst, src) } else { (src, dst) };
                    let (from, to) = ((s * c + src) * plane, (s * c + dst) * plane);
                    od[to..to + plane].copy_from_slice(&xd[from..from + plane]);
                }
            }
        }
    }
    o
}
