"""ONNX fixtures of the transformer-era families for crates/onnx/tests/: the scaled-down
ViT, ConvNeXt, ShuffleNetV2, Swin (v1, v2) and MaxViT of tools/export_pt2_transformers.py
and its own AttnNet,
exported in training mode by both PyTorch exporters (TorchScript opset 17; dynamo opset
20, with and without its optimisation), weights stripped as in
tools/export_onnx_fixtures.py (the dynamo exporter's module scopes and classes kept in the
nodes' metadata, as in the files it writes). Run with torch, torchvision, onnx and onnxscript:

    python tools/export_onnx_transformers.py crates/onnx/tests/fixtures

`params_transformers.json` records PyTorch's parameter and buffer counts of each model.
"""

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_onnx_fixtures import export  # noqa: E402
from export_pt2_transformers import MODELS  # noqa: E402

# The optimised dynamo exports of Swin V2 and MaxViT are refused like Swin's (their
# weights renamed): one such fixture is enough.
NOT_KEPT = {("tiny_swin_v2", "dynamo_train"), ("tiny_maxvit", "dynamo_train")}
NAMES = ["tiny_vit", "tiny_convnext", "shufflenet_v2_x0_5", "attn_net", "tiny_swin", "tiny_swin_v2", "tiny_maxvit"]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "crates/onnx/tests/fixtures"
    only = sys.argv[2:] or NAMES
    counts_path = os.path.join(out, "params_transformers.json")
    counts = json.load(open(counts_path)) if os.path.exists(counts_path) else {}
    for name in only:
        build, shape = MODELS[name]
        torch.manual_seed(0)
        model = build()
        counts[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "buffers": sum(b.numel() for b in model.buffers()),
            "input": list(shape),
        }
        for dynamo, optimize, tag in ((False, True, "torchscript_train"), (True, True, "dynamo_train"),
                                      (True, False, "dynamo_train_noopt")):
            if (name, tag) in NOT_KEPT:
                continue
            path = os.path.join(out, f"{name}_{tag}.onnx")
            try:
                export(model, shape, path, dynamo, True, optimize=optimize, keep_scopes=True)
                print("wrote", path, os.path.getsize(path))
            except Exception as e:  # one failed export does not stop the others
                print("FAILED", path, type(e).__name__, str(e)[:300])
    with open(counts_path, "w") as f:
        json.dump(counts, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
