"""Forward values of torchvision's Swin and MaxViT layers for the engine's tests.

Writes crates/engine/tests/fixtures/window_layers.json: for each case the input, every
parameter in `named_parameters()` order, and PyTorch's output, all flat float32 lists.
Run with the oracle environment (PyTorch 2.15, torchvision 0.29):

    /work/torch-venv/bin/python tools/window_layers_forward.py
"""

import json
import pathlib

import torch
from torchvision.models.maxvit import (
    RelativePositionalMultiHeadAttention,
    SwapAxes,
    WindowDepartition,
    WindowPartition,
)
from torchvision.models.swin_transformer import (
    ShiftedWindowAttention,
    ShiftedWindowAttentionV2,
    _patch_merging_pad,
)

torch.manual_seed(0)


def flat(t):
    return [float(v) for v in t.detach().reshape(-1)]


def params(m):
    # Nonzero everywhere (torchvision starts some biases at zero and the table at 0.02).
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return [{"name": n, "shape": list(p.shape), "data": flat(p)} for n, p in m.named_parameters()]


cases = []

# Shifted windows on a padded map: 6x6x4 in 4x4 windows shifted by 2 (pads to 8x8).
for name, hw, window, shift, heads in [
    ("swin_shifted_padded", (6, 6), 4, 2, 2),
    ("swin_unshifted", (4, 8), 2, 0, 1),
    ("swin_shift_one_side", (4, 8), 4, 2, 2),
]:
    m = ShiftedWindowAttention(4, [window, window], [shift, shift], heads)
    ps = params(m)
    x = torch.randn(2, hw[0], hw[1], 4)
    cases.append(
        {
            "name": name,
            "input": list(x.shape[1:]),
            "op": {"window": window, "shift": shift, "heads": heads, "dim": 4},
            "x": flat(x),
            "params": ps,
            "y": flat(m(x)),
        }
    )

# Swin V2: cosine attention, logit scale, the position bias MLP (qkv's k bias unused).
for name, hw, window, shift, heads in [
    ("swin_v2_shifted_padded", (6, 6), 4, 2, 2),
    ("swin_v2_shift_one_side", (4, 8), 4, 2, 2),
]:
    m = ShiftedWindowAttentionV2(4, [window, window], [shift, shift], heads)
    ps = params(m)
    x = torch.randn(2, hw[0], hw[1], 4)
    cases.append(
        {
            "name": name,
            "input": list(x.shape[1:]),
            "op": {"window": window, "shift": shift, "heads": heads, "dim": 4, "v2": True},
            "x": flat(x),
            "params": ps,
            "coords": flat(m.relative_coords_table),
            "y": flat(m(x)),
        }
    )

# Patch merging of an odd map.
x = torch.randn(2, 5, 3, 2)
cases.append({"name": "patch_merge", "input": [5, 3, 2], "x": flat(x), "params": [], "y": flat(_patch_merging_pad(x))})

# MaxViT: partition, relative-position attention, departition (window and grid).
for grid in [False, True]:
    c, h, w, p = 4, 4, 6, 2
    attn = RelativePositionalMultiHeadAttention(c, 2, (h // p) * (w // p) if grid else p * p)
    ps = params(attn)
    x = torch.randn(2, c, h, w)
    # MaxViT's PartitionAttentionLayer: a grid partitions by the number of partitions.
    pp = (h // 2) if grid else p
    if grid:
        # Grid partitions need a square number of groups: use a 4x4 map, 2x2 grid.
        h = w = 4
        x = torch.randn(2, c, h, w)
        pp = 2
        attn = RelativePositionalMultiHeadAttention(c, 2, (h // pp) * (w // pp))
        ps = params(attn)
    part = WindowPartition()(x, pp)
    if grid:
        part = SwapAxes(-2, -3)(part)
    y = attn(part)
    if grid:
        y = SwapAxes(-2, -3)(y)
    y = WindowDepartition()(y, pp, h // pp, w // pp)
    cases.append(
        {
            "name": "maxvit_grid" if grid else "maxvit_window",
            "input": [c, h, w],
            "op": {"p": pp, "grid": grid, "parts": [h // pp, w // pp], "dim": c, "head_dim": 2,
                   "size": int(round(((h // pp) * (w // pp) if grid else pp * pp) ** 0.5))},
            "x": flat(x),
            "params": ps,
            "y": flat(y),
        }
    )

out = pathlib.Path(__file__).resolve().parent.parent / "crates/engine/tests/fixtures/window_layers.json"
out.write_text(json.dumps({"torch": torch.__version__, "cases": cases}))
print(out, len(cases), "cases")
