"""How torchvision initialises each parameter of one model per family, for the zoo's
init rules (crates/graph/tests/init.rs).

Writes crates/graph/tests/fixtures/torchvision_init.json: per model, per parameter in
`named_parameters()` order, [numel, mean, std, max |v|] of a fresh model (seed 0).
Run with the oracle environment:

    /work/torch-venv/bin/python tools/measure_init.py
"""

import json
import pathlib

import torch
import torchvision

MODELS = [
    "alexnet", "vgg11_bn", "resnet18", "resnext50_32x4d", "wide_resnet50_2",
    "densenet121", "googlenet", "inception_v3", "mobilenet_v2", "mobilenet_v3_small",
    "efficientnet_b0", "efficientnet_v2_s", "mnasnet0_5", "regnet_x_400mf",
    "regnet_y_400mf", "shufflenet_v2_x0_5", "squeezenet1_0", "squeezenet1_1",
    "convnext_tiny", "vit_b_16", "swin_t", "swin_v2_t", "maxvit_t",
]

out = {"torch": torch.__version__, "torchvision": torchvision.__version__, "models": {}}
for name in MODELS:
    torch.manual_seed(0)
    kw = {"aux_logits": True, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    m = torchvision.models.get_model(name, weights=None, **kw)
    rows = []
    for n, p in m.named_parameters():
        v = p.detach().double().reshape(-1)
        std = float(v.std()) if v.numel() > 1 else 0.0
        rows.append([n, v.numel(), float(v.mean()), std, float(v.abs().max())])
    out["models"][name] = rows
    print(name, len(rows))
path = pathlib.Path(__file__).resolve().parent.parent / "crates/graph/tests/fixtures/torchvision_init.json"
path.write_text(json.dumps(out))
print(path, path.stat().st_size)
