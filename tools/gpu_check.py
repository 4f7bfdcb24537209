#!/usr/bin/env python3
"""Hold vramlab's pytorch-cuda profile against a real GPU.

On a machine with CUDA and PyTorch (torchvision optional, for vgg11/resnet18), this
trains the same cases the planner predicts and compares, per step,
torch.cuda.max_memory_allocated() with `vramlab memory --profile pytorch-cuda --json`
(its peak minus the CUDA context, which PyTorch's counters do not see).

    cargo build --release
    python3 tools/gpu_check.py                     # all cases, a table
    python3 tools/gpu_check.py --out gpu.json      # and the raw figures
    python3 tools/gpu_check.py --plan-only         # no GPU: the planner's side only

A training step is the reference one:
    opt.zero_grad(set_to_none=True); out = model(x); loss = F.cross_entropy(out, y)
    loss.backward(); opt.step()
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (model, input CxHxW, num_classes or None, batch, optimizer)
CASES = [
    (m, inp, nc, b, o)
    for (m, inp, nc) in [
        ("simple_cnn", "3x32x32", None),
        ("lenet5", "1x28x28", None),
        ("vgg11", "3x32x32", 10),
        ("resnet18", "3x32x32", 10),
    ]
    for b in (4, 64, 256)
    for o in ("sgd", "sgd_momentum", "adam", "adam_for_loop")
]


def vramlab_args(model, inp, nc, batch, opt):
    a = ["memory", model, "--input", inp, "--batch-size", str(batch),
         "--profile", "pytorch-cuda", "--json"]
    if nc:
        a += ["--num-classes", str(nc)]
    if opt == "sgd":
        a += ["--optimizer", "sgd"]
    elif opt == "sgd_momentum":
        a += ["--optimizer", "sgd", "--momentum", "0.9"]
    elif opt == "adam":
        a += ["--optimizer", "adam"]
    elif opt == "adam_for_loop":
        a += ["--optimizer", "adam", "--optimizer-impl", "for-loop"]
    return a


def planned(binary, case):
    out = subprocess.run([binary] + vramlab_args(*case), capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip()
    r = json.loads(out.stdout)
    ctx = r["context_bytes"]
    return [s["peak_bytes"] - ctx for s in r["steps"]], None


def build(model, inp, nc):
    import torch.nn as nn
    import torch.nn.functional as F

    c = int(inp.split("x")[0])

    class SimpleCNN(nn.Module):
        def __init__(self, in_ch, pad):
            super().__init__()
            self.conv1 = nn.Conv2d(in_ch, 6, 5, padding=pad)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(400, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), 2)
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = x.view(-1, 400)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            return self.fc3(x)

    if model == "simple_cnn":
        return SimpleCNN(c, 0)
    if model == "lenet5":
        return SimpleCNN(c, 2)
    import torchvision

    return getattr(torchvision.models, model)(weights=None, num_classes=nc)


def measure(case):
    import torch
    import torch.nn.functional as F

    model_name, inp, nc, batch, opt_name = case
    dev = torch.device("cuda")
    torch.manual_seed(0)
    # Warm cuBLAS and cuDNN handles first so their workspaces are in the baseline.
    a = torch.randn(64, 64, device=dev)
    (a @ a).sum().item()
    del a
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    model = build(model_name, inp, nc).to(dev)
    params = model.parameters()
    if opt_name == "sgd":
        opt = torch.optim.SGD(params, lr=0.01)
    elif opt_name == "sgd_momentum":
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    elif opt_name == "adam":
        opt = torch.optim.Adam(params, lr=1e-3)
    else:
        opt = torch.optim.Adam(params, lr=1e-3, foreach=False)
    shape = [batch] + [int(d) for d in inp.split("x")]
    x = torch.randn(shape, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        return loss

    peaks = []
    for _ in range(2):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step().item()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - base)
    del model, opt, x, y
    torch.cuda.empty_cache()
    return peaks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vramlab", default=os.path.join(ROOT, "target", "release", "vramlab"))
    ap.add_argument("--out", help="write the figures as JSON here")
    ap.add_argument("--plan-only", action="store_true", help="no GPU: print the planner's side")
    ap.add_argument("--cases", type=int, default=len(CASES), help="only the first N cases")
    args = ap.parse_args()
    if not os.path.exists(args.vramlab):
        sys.exit(f"{args.vramlab} not found: run `cargo build --release` first or pass --vramlab")
    gpu = None
    if not args.plan_only:
        try:
            import torch

            if not torch.cuda.is_available():
                sys.exit("CUDA is not available; use --plan-only")
            gpu = torch.cuda.get_device_name(0)
            print(f"torch {torch.__version__} on {gpu}")
        except ImportError:
            sys.exit("PyTorch is not installed; use --plan-only")
    rows = []
    print(f"{'case':<40} {'step':>4} {'measured':>14} {'planned':>14} {'diff %':>8}")
    for case in CASES[: args.cases]:
        label = f"{case[0]} {case[1]} b{case[3]} {case[4]}"
        plan, err = planned(args.vramlab, case)
        meas = None
        if not args.plan_only:
            try:
                meas = measure(case)
            except Exception as e:  # a real PyTorch failure is a result too
                meas, err = None, f"{type(e).__name__}: {e}"
        for i in range(2):
            p = plan[i] if plan else None
            m = meas[i] if meas else None
            diff = f"{100.0 * (p - m) / m:+.2f}" if (p is not None and m) else "-"
            print(f"{label:<40} {i + 1:>4} {m if m is not None else '-':>14} {p if p is not None else '-':>14} {diff:>8}")
            rows.append({"case": label, "step": i + 1, "measured": m, "planned": p, "error": err})
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": gpu, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
