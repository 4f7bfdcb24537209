"""ONNX fixtures of the modern families (SiLU, squeeze-and-excitation, Hardswish,
concatenation) for crates/onnx/tests/: eval exports of both PyTorch exporters and a
TorchScript training export, weights stripped as in tools/export_onnx_fixtures.py. Run with torch, torchvision, onnx and
onnxscript installed:

    python tools/export_onnx_modern_fixtures.py crates/onnx/tests/fixtures
"""

import json
import os
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_onnx_fixtures import export  # noqa: E402


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "crates/onnx/tests/fixtures"
    tv = torchvision.models
    cases = {
        "efficientnet_b0": tv.efficientnet_b0(weights=None, num_classes=10),
        "mobilenet_v3_small": tv.mobilenet_v3_small(weights=None, num_classes=10),
        "densenet121": tv.densenet121(weights=None, num_classes=10),
    }
    counts = {}
    for name, model in cases.items():
        counts[name] = {
            "params": sum(p.numel() for p in model.parameters()),
            "buffers": sum(b.numel() for b in model.buffers()),
            "input": [3, 64, 64],
        }
        for dynamo, train, tag in (
            (False, False, "torchscript_eval"),
            (True, False, "dynamo_eval"),
            (False, True, "torchscript_train"),
        ):
            path = os.path.join(out, f"{name}_{tag}.onnx")
            try:
                export(model, (3, 64, 64), path, dynamo, train)
                print("wrote", path, os.path.getsize(path))
            except Exception as e:
                print("FAILED", path, type(e).__name__, str(e)[:300])
    with open(os.path.join(out, "params_modern.json"), "w") as f:
        json.dump(counts, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
