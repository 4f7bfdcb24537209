"""The Python package with real torch: capture parity and PyTorch's own measurement.

    /work/torch-venv/bin/python tools/check_python_torch.py [--quick]
    /work/torch-venv/bin/python tools/check_python_torch.py --every-zoo-model

(with the vramlab package importable: `pip install .` in that environment, or PYTHONPATH at a
folder holding vramlab/ with its built _native module). Writes python/tests/torch_check.json:

1. For torchvision classifiers, `vramlab.memory(module, ...)` (the live module captured with
   torch.export in train() mode) against the zoo model of the same name: parameter count and
   the step-1 and step-2 peaks under pytorch-cpu and pytorch-cuda (fp32, Adam, batch 16).
2. Two models of our own (a small CNN with BatchNorm, Dropout and a residual; AttnNet of
   tools/export_pt2_transformers.py, with nn.MultiheadAttention): parameters against PyTorch's count and the captured plan (pytorch-cpu)
   against real PyTorch trained on the CPU (../shared/oracle's tracker, Adam, batches 8, 64).
3. A torch.optim.AdamW instance read like its options.
CI does not run this (no torch there); python/tests holds the torch-free checks.
"""

import json
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import vramlab

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from export_pt2_transformers import AttnNet  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "python", "tests", "torch_check.json")

ZOO = [
    "resnet50", "mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "densenet121",
    "shufflenet_v2_x1_0", "regnet_y_400mf", "squeezenet1_1", "convnext_tiny", "vit_b_16", "swin_t",
]
QUICK = ["resnet50", "efficientnet_b0", "vit_b_16"]


class SmallNet(nn.Module):
    """A user's own CNN: BatchNorm, Dropout, a residual, in-place ReLU."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.25)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        x = F.relu(x + y)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(self.drop(x))


class BranchyNet(nn.Module):
    """Data-dependent control flow: torch.export refuses it, so vramlab falls back to the
    ONNX exporter (F.relu, `x + y`: nothing in place, hence onnx_inplace="none")."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        if x.sum() > 0:
            x = x + F.relu(self.conv2(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


OWN = {
    "small_net": (SmallNet, (3, 32, 32), {}),
    "attn_net": (AttnNet, (3, 16, 16), {}),
    "branchy_net": (BranchyNet, (3, 32, 32), {"onnx_inplace": "none"}),
}


def peaks(r):
    return [s["peak_bytes"] for s in r.steps]


def attempt(f):
    try:
        return f(), None
    except Exception as e:  # record what failed, whatever torch or vramlab raised
        return None, "%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else "")


def zoo_parity(names):
    rows = []
    for name in names:
        t = time.time()
        m = getattr(torchvision.models, name)()
        chw = (3, 224, 224)
        row = {"model": name, "torch_params": sum(p.numel() for p in m.parameters())}
        for profile in ["pytorch-cpu", "pytorch-cuda"]:
            cap, err = attempt(lambda: vramlab.memory(m, input_size=chw, batch_size=16, profile=profile))
            zoo = vramlab.memory(name, batch_size=16, profile=profile)
            if err:
                row[profile] = {"error": err}
                continue
            row["captured_params"] = cap.num_params
            row[profile] = {"captured": peaks(cap), "zoo": peaks(zoo), "equal": peaks(cap) == peaks(zoo)}
        row["seconds"] = round(time.time() - t, 1)
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def own_models():
    sys.path.insert(0, os.path.join(HERE, "..", "..", "shared", "oracle"))
    import torch_memory_oracle as oracle

    torch.set_num_threads(2)
    rows = []
    for name, (ctor, chw, extra) in OWN.items():
        torch.manual_seed(0)
        m = ctor()
        row = {"model": name, "torch_params": sum(p.numel() for p in m.parameters()), "batches": {}}
        oracle.MODELS[name] = (ctor, chw, 10, [8, 64])
        for bs in [8, 64]:
            cap, err = attempt(lambda: vramlab.memory(m, input_size=chw, batch_size=bs, profile="pytorch-cpu", **extra))
            r = oracle.run_case(name, bs, "adam", use_memtracker=False)
            measured = [r["step1"]["tracker_peak"], r["step2"]["tracker_peak"]]
            if err:
                row["batches"][str(bs)] = {"pytorch": measured, "error": err}
                continue
            row["captured_params"] = cap.num_params
            row["notes"] = cap.notes
            row["batches"][str(bs)] = {"pytorch": measured, "vramlab": peaks(cap), "equal": peaks(cap) == measured}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def optimizer_instance():
    m = torchvision.models.resnet18()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.05, amsgrad=True, foreach=True)
    a = vramlab.memory(m, input_size=(3, 64, 64), batch_size=8, optimizer=opt)
    b = vramlab.memory("resnet18", input_size=(3, 64, 64), batch_size=8, optimizer="adamw",
                       weight_decay=0.05, amsgrad=True, optimizer_impl="foreach")
    row = {"optimizer": a["optimizer"], "peaks": peaks(a), "by_options": peaks(b), "equal": peaks(a) == peaks(b)}
    print(json.dumps(row), flush=True)
    return row


def every_zoo_model(out_path):
    """Every torchvision classifier of vramlab's zoo, written by vramlab.export (no
    weights) at the zoo's input and 1000 classes, planned from the archive and by name
    (pytorch-cpu and pytorch-cuda, Adam, batch 8, both steps)."""
    import tempfile

    rows = []
    names = [m["name"] for m in vramlab.models()]
    for name in names:
        if not hasattr(torchvision.models, name):
            continue
        t = time.time()
        zoo_cpu = vramlab.memory(name, batch_size=8, profile="pytorch-cpu")
        chw = tuple(zoo_cpu["input_shape"])
        row = {"model": name, "input": list(chw)}
        try:
            kw = {"aux_logits": False, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
            try:
                # On the meta device: no weights are made (vit_h_14 has 632M).
                with torch.device("meta"):
                    m = getattr(torchvision.models, name)(**kw)
            except NotImplementedError:
                # RegNet's constructor reads its weights (init by data).
                m = getattr(torchvision.models, name)(**kw)
            row["torch_params"] = sum(p.numel() for p in m.parameters())
            with tempfile.TemporaryDirectory() as d:
                path = os.path.join(d, name + ".pt2")
                vramlab.export(m, path, chw)
                for profile in ["pytorch-cpu", "pytorch-cuda"]:
                    extra = {"no_aux": True} if name in ("googlenet", "inception_v3") else {}
                    got = vramlab.memory(path, batch_size=8, profile=profile)
                    want = vramlab.memory(name, batch_size=8, profile=profile, **extra)
                    row["pt2_params"] = got.num_params
                    row[profile] = {"pt2": peaks(got), "zoo": peaks(want), "equal": peaks(got) == peaks(want)}
        except Exception as e:  # record what failed, whatever torch or vramlab raised
            row["error"] = "%s: %s" % (type(e).__name__, str(e).strip().splitlines()[0][:300] if str(e).strip() else "")
        row["seconds"] = round(time.time() - t, 1)
        print(json.dumps(row)[:300], flush=True)
        rows.append(row)
    record = {"torch": torch.__version__, "torchvision": torchvision.__version__, "models": rows}
    with open(out_path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print("wrote", out_path)


def readme_blocks():
    """The README's python blocks that import torch, run as written."""
    with open(os.path.join(HERE, "..", "README.md")) as f:
        text = f.read()
    blocks = [b.split("```")[0] for b in text.split("```python\n")[1:]]
    ran = 0
    for b in blocks:
        if "import torch" in b:
            exec(compile(b, "README.md", "exec"), {})
            ran += 1
    print("README python blocks with torch run:", ran, flush=True)
    return ran


def main():
    if "--every-zoo-model" in sys.argv[1:]:
        every_zoo_model(os.path.join(HERE, "..", "python", "tests", "torch_zoo_parity.json"))
        return
    quick = "--quick" in sys.argv[1:]
    record = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "vramlab": vramlab.__version__,
        "zoo_parity": zoo_parity(QUICK if quick else ZOO),
        "own_models": own_models(),
        "optimizer_instance": optimizer_instance(),
        "readme_torch_blocks_run": readme_blocks(),
    }
    if not quick:
        with open(OUT, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")
        print("wrote", OUT)


if __name__ == "__main__":
    main()
