//! torchvision modules an importer (`.pt2`, `.onnx`) plans as one layer, told from what
//! the file keeps of them: their parameters' sizes and their first reshape. One place
//! for both readers, so that they cannot disagree about a module.

use crate::op::{Init, Op, WindowAttention};
use crate::{Graph, NodeId, Shape};

/// A parameter used as a value (ViT's class token and position embedding, ConvNeXt's
/// layer scale) of sizes `dims`, next to an operand of per-sample rank `rank`: a leading
/// 1 beyond that rank is the batch dimension. `None` for a size that is not positive.
pub fn param_value(dims: &[i64], rank: usize) -> Option<Op> {
    let shape = dims
        .iter()
        .map(|&d| usize::try_from(d).ok().filter(|&d| d > 0))
        .collect::<Option<Vec<_>>>()?;
    let batch_dim = shape.len() == rank + 1 && shape.first() == Some(&1);
    Some(Op::Param {
        shape,
        batch_dim,
        init: Init::default(),
    })
}

/// MaxViT's `SwapAxes(-2, -3)` right after a window partition makes it a grid
/// partition: node `node` (the graph's last) becomes one, its shape in `shapes`
/// recomputed. False when `node` is no window partition (the swap then belongs to the
/// departition that follows).
pub fn make_grid(graph: &mut Graph, shapes: &mut [Shape], node: NodeId) -> bool {
    if node + 1 != graph.nodes.len() {
        return false;
    }
    match &mut graph.nodes[node].op {
        Op::Partition { grid, .. } if !*grid => *grid = true,
        _ => return false,
    }
    let ins: Vec<&Shape> = graph.nodes[node]
        .inputs
        .iter()
        .filter_map(|&i| shapes.get(i))
        .collect();
    let out = graph.nodes[node].op.output_shape(&ins).unwrap_or_default();
    if let Some(s) = shapes.get_mut(node) {
        *s = out;
    }
    true
}

/// The sizes of the module's parameter (or buffer) whose name ends in `suffix`, among
/// `(name, sizes)` pairs as an importer collected them.
pub fn dims_of(params: &[(String, Vec<i64>)], suffix: &str) -> Option<Vec<i64>> {
    params
        .iter()
        .find(|(f, _)| f.ends_with(suffix))
        .map(|(_, d)| d.clone())
}

/// Sizes as the file says them, `?` where one is computed at run time.
fn sizes(s: &[Option<i64>]) -> String {
    let v: Vec<String> = s
        .iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", v.join(", "))
}

fn size(d: i64) -> Option<usize> {
    usize::try_from(d).ok().filter(|&d| d > 0)
}

/// MaxViT's `RelativePositionalMultiHeadAttention` from the sizes of `to_qkv.weight`
/// (`[3 dim, dim]`) and `relative_position_bias_table` (`[(2 size - 1)^2, heads]`).
pub fn rel_pos_attention(to_qkv: &[i64], table: &[i64]) -> Result<Op, String> {
    let (dim, heads, rows) = match (to_qkv, table) {
        ([_, d], [r, h]) => (size(*d), size(*h), size(*r)),
        _ => (None, None, None),
    };
    let (Some(dim), Some(heads), Some(rows)) = (dim, heads, rows) else {
        return Err(format!(
            "to_qkv.weight {to_qkv:?} and relative_position_bias_table {table:?}"
        ));
    };
    let side = (rows as f64).sqrt().round() as usize;
    if side * side != rows || side.is_multiple_of(2) || !dim.is_multiple_of(heads) {
        return Err(format!(
            "a table of {rows} rows and {heads} heads over {dim} features"
        ));
    }
    Ok(Op::RelPosAttention {
        dim,
        head_dim: dim / heads,
        size: side.div_ceil(2),
    })
}

/// torchvision's `ShiftedWindowAttention(V2)` from the sizes of `qkv.weight` (`[3 C,
/// C]`), its heads (v1: `relative_position_bias_table`'s columns, v2: `logit_scale`'s
/// rows), the entries of `relative_position_index` ((window area)^2), its shift, and the
/// per-sample shape of its input (channels last `[H, W, C]`).
pub fn window_attention(
    qkv: &[i64],
    heads: Option<i64>,
    index_entries: Option<i64>,
    shift: (usize, usize),
    v2: bool,
    input: &[usize],
) -> Result<Op, String> {
    let dim = match qkv {
        [three_c, c] if Some(*three_c) == c.checked_mul(3) => size(*c),
        _ => None,
    }
    .ok_or_else(|| format!("qkv.weight has sizes {qkv:?}"))?;
    let heads = heads
        .and_then(size)
        .ok_or_else(|| "cannot tell the number of heads".to_string())?;
    let area2 = index_entries
        .and_then(size)
        .ok_or_else(|| "no relative_position_index buffer".to_string())?;
    let area = (area2 as f64).sqrt().round() as usize;
    let side = (area as f64).sqrt().round() as usize;
    if area * area != area2 || side * side != area {
        return Err(format!(
            "a window of {area} positions: only square windows are planned"
        ));
    }
    if input.len() != 3 || input[2] != dim {
        return Err(format!(
            "input of per-sample shape {input:?}, expected channels last [H, W, {dim}]"
        ));
    }
    Ok(Op::WindowAttention(WindowAttention {
        dim,
        heads,
        window: (side, side),
        shift,
        v2,
    }))
}

/// MaxViT's `WindowPartition(p)` from its first reshape, `[B, C, H/P, P, W/P, P]`.
pub fn partition(first_reshape: &[Option<i64>]) -> Result<Op, String> {
    match first_reshape {
        [_, _, _, Some(p), _, Some(q)] if p == q && *p > 0 => Ok(Op::Partition {
            p: *p as usize,
            grid: false,
        }),
        s => Err(format!(
            "a first reshape to {}, expected [B, C, H/P, P, W/P, P]",
            sizes(s)
        )),
    }
}

/// MaxViT's `WindowDepartition(p, hp, wp)` from its first reshape, `[B, H/P, W/P, P, P,
/// C]`; `grid` after a `SwapAxes`.
pub fn departition(first_reshape: &[Option<i64>], grid: bool) -> Result<Op, String> {
    match first_reshape {
        [_, Some(gh), Some(gw), Some(p), Some(q), _] if p == q && *p > 0 && *gh > 0 && *gw > 0 => {
            Ok(Op::Departition {
                p: *p as usize,
                grid,
                parts: (*gh as usize, *gw as usize),
            })
        }
        s => Err(format!(
            "a first reshape to {}, expected [B, H/P, W/P, P, P, C]",
            sizes(s)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_come_from_their_sizes_or_say_what_does_not_fit() {
        // maxvit_t's attention: 64 features, 32 per head, 7x7 partitions (13^2 rows).
        assert_eq!(
            rel_pos_attention(&[192, 64], &[169, 2]),
            Ok(Op::RelPosAttention {
                dim: 64,
                head_dim: 32,
                size: 7
            })
        );
        assert!(rel_pos_attention(&[192, 64], &[168, 2]).is_err());
        // swin_t's first block: 96 channels, 3 heads, 7x7 windows (49^2 index entries).
        let w = window_attention(
            &[288, 96],
            Some(3),
            Some(2401),
            (3, 3),
            false,
            &[56, 56, 96],
        );
        assert_eq!(
            w,
            Ok(Op::WindowAttention(WindowAttention {
                dim: 96,
                heads: 3,
                window: (7, 7),
                shift: (3, 3),
                v2: false
            }))
        );
        let e = window_attention(
            &[288, 96],
            Some(3),
            Some(2400),
            (0, 0),
            false,
            &[56, 56, 96],
        );
        assert!(e.unwrap_err().contains("square"));
        let e = window_attention(&[288, 96], None, Some(2401), (0, 0), true, &[56, 56, 96]);
        assert!(e.unwrap_err().contains("heads"));
        assert_eq!(
            partition(&[None, Some(64), Some(8), Some(7), Some(8), Some(7)]),
            Ok(Op::Partition { p: 7, grid: false })
        );
        assert_eq!(
            partition(&[None, Some(64), None, Some(7)]).unwrap_err(),
            "a first reshape to [?, 64, ?, 7], expected [B, C, H/P, P, W/P, P]"
        );
        assert_eq!(
            departition(&[None, Some(8), Some(8), Some(7), Some(7), Some(64)], true),
            Ok(Op::Departition {
                p: 7,
                grid: true,
                parts: (8, 8)
            })
        );
    }
}
