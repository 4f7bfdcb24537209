#!/usr/bin/env python3
"""Hold vramlab's CUDA caching-allocator simulation (issue 10) against a real GPU.

Each case trains three steps in a fresh process (so the allocator starts empty, as the
simulation does) and records, per step after torch.cuda.reset_peak_memory_stats():
max_memory_allocated, max_memory_reserved, the process's used memory in nvidia-smi,
and at the end a summary of torch.cuda.memory._snapshot()'s segments. Beside them, the
`device` section of `vramlab memory --json` for the same case. Then the OOM boundary:
under torch.cuda.set_per_process_memory_fraction(F), the batch `vramlab fit` says runs,
and one more. Targets (issue 10): allocated within 1 %, reserved within 3 %, the
boundary batch equal.

    cargo build --release
    python3 tools/gpu_alloc_check.py --out gpu_alloc.json     # about 2 minutes on an H100
    python3 tools/gpu_alloc_check.py --plan-only              # no GPU: vramlab's side

Not in vramlab's zoo, so not here: vit_b_16, efficientnet_b0, convnext_tiny. AMP cases
use torch.autocast("cuda", float16) without a GradScaler.
"""

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (model, input CxHxW, batch, optimizer, precision)
CASES = [
    ("resnet50", "3x224x224", 32, "sgd", "fp32"),
    ("resnet50", "3x224x224", 64, "adam", "fp32"),
    ("resnet50", "3x224x224", 64, "adam", "amp-fp16"),
    ("resnet18", "3x224x224", 64, "sgd_momentum", "fp32"),
    ("mobilenet_v2", "3x224x224", 64, "adam", "fp32"),
    ("mobilenet_v2", "3x224x224", 64, "sgd", "amp-fp16"),
    ("vgg11", "3x224x224", 32, "sgd", "fp32"),
    ("simple_cnn", "3x32x32", 256, "adam", "fp32"),
    ("simple_cnn", "3x32x32", 256, "sgd", "amp-fp16"),
    ("lenet5", "1x28x28", 512, "adam", "fp32"),
]
# The OOM boundary: (model, input, optimizer, precision, fraction of the card).
BOUNDARY = ("resnet50", "3x224x224", "adam", "fp32", 0.25)


def opt_args(opt):
    return {
        "sgd": ["--optimizer", "sgd"],
        "sgd_momentum": ["--optimizer", "sgd", "--momentum", "0.9"],
        "adam": ["--optimizer", "adam"],
    }[opt]


def vramlab(binary, args):
    out = subprocess.run([binary] + args, capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip()
    return json.loads(out.stdout), None


def planned(binary, case, extra):
    model, inp, batch, opt, prec = case
    r, err = vramlab(binary, ["memory", model, "--input", inp, "--batch-size", str(batch),
                              "--precision", prec, "--json"] + opt_args(opt) + extra)
    return (r["device"] if r else None), err


def build(model, inp):
    import torch.nn as nn

    c, h, w = (int(d) for d in inp.split("x"))
    if model == "simple_cnn":
        return nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(),
            nn.Linear(128, 10))
    if model == "lenet5":
        return nn.Sequential(
            nn.Conv2d(c, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
            nn.Linear(84, 10))
    import torchvision

    return getattr(torchvision.models, model)(weights=None)


def used_by_this_process():
    """nvidia-smi's used memory of this process, in bytes (None if not listed)."""
    q = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                        "--format=csv,noheader,nounits"], capture_output=True, text=True)
    for line in q.stdout.splitlines():
        pid, mib = (x.strip() for x in line.split(","))
        if pid == str(os.getpid()):
            return int(mib) << 20
    return None


def measure(model_name, inp, batch, opt_name, prec, fraction=None, steps=3):
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    if fraction:
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
    torch.manual_seed(0)
    model = build(model_name, inp).to(dev)
    params = model.parameters()
    opt = {
        "sgd": lambda: torch.optim.SGD(params, lr=0.01),
        "sgd_momentum": lambda: torch.optim.SGD(params, lr=0.01, momentum=0.9),
        "adam": lambda: torch.optim.Adam(params, lr=1e-3),
    }[opt_name]()
    x = torch.randn([batch] + [int(d) for d in inp.split("x")], device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    rows = []
    for _ in range(steps):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        opt.zero_grad(set_to_none=True)
        if prec == "amp-fp16":
            with torch.autocast("cuda", dtype=torch.float16):
                out = model(x)
                loss = F.cross_entropy(out, y)
        else:
            out = model(x)
            loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        loss.item()
        del out, loss
        torch.cuda.synchronize()
        rows.append({
            "allocated": torch.cuda.max_memory_allocated(),
            "reserved": torch.cuda.max_memory_reserved(),
            "nvidia_smi_used": used_by_this_process(),
            "num_alloc_retries": torch.cuda.memory_stats().get("num_alloc_retries", 0),
        })
    snap = torch.cuda.memory._snapshot()
    segments = sorted(s["total_size"] for s in snap["segments"])
    return {"steps": rows, "segments": segments,
            "total_memory": torch.cuda.get_device_properties(0).total_memory}


def child(args):
    """One case in this fresh process; prints its JSON (an OOM is a result)."""
    import torch

    spec = json.loads(args.one)
    try:
        print(json.dumps({"ok": measure(**spec)}))
    except torch.cuda.OutOfMemoryError as e:
        print(json.dumps({"oom": str(e).splitlines()[0]}))


def run_child(spec):
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", json.dumps(spec)],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def pct(p, m):
    return f"{100.0 * (p - m) / m:+.2f}" if (p is not None and m) else "-"


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vramlab", default=os.path.join(ROOT, "target", "release", "vramlab"))
    ap.add_argument("--out", help="write every figure as JSON here (the fixture to commit)")
    ap.add_argument("--plan-only", action="store_true", help="no GPU: vramlab's side only")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return child(args)
    if not os.path.exists(args.vramlab):
        sys.exit(f"{args.vramlab} not found: run `cargo build --release` or pass --vramlab")
    result = {"cases": [], "boundary": None}
    # PyTorch's cuBLAS workspace is 32 MiB on Hopper and newer (compute capability 9+).
    extra = []
    if not args.plan_only:
        import torch

        if torch.cuda.get_device_capability(0)[0] >= 9:
            extra = ["--cublas-workspace", "32MiB"]
    print(f"{'case':<44}{'step':>5}{'alloc meas':>14}{'alloc plan':>14}{'%':>7}"
          f"{'resv meas':>14}{'resv plan':>14}{'%':>7}")
    for case in CASES:
        label = " ".join(str(c) for c in case)
        plan, err = planned(args.vramlab, case, extra)
        meas = None
        if not args.plan_only:
            model, inp, batch, opt, prec = case
            meas = run_child({"model_name": model, "inp": inp, "batch": batch,
                              "opt_name": opt, "prec": prec})
        for i in range(3):
            p = plan["steps"][i] if plan else {}
            m = (meas or {}).get("ok", {}).get("steps", [{}] * 3)[i]
            pa, pr = p.get("allocated_peak_bytes"), p.get("reserved_peak_bytes")
            ma, mr = m.get("allocated"), m.get("reserved")
            print(f"{label:<44}{i + 1:>5}{ma or '-':>14}{pa or '-':>14}{pct(pa, ma):>7}"
                  f"{mr or '-':>14}{pr or '-':>14}{pct(pr, mr):>7}")
        result["cases"].append({"case": case, "planned": plan, "measured": meas, "error": err})
    if not args.plan_only:
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        model, inp, opt, prec, frac = BOUNDARY
        fit, err = vramlab(args.vramlab, ["fit", model, "--input", inp, "--memory", f"{total}B",
                                          "--fraction", str(frac), "--precision", prec,
                                          "--json"] + opt_args(opt) + extra)
        b = fit["device"]["max_batch_size"] if fit else None
        runs = {}
        for batch in ([b, b + 1] if b else []):
            runs[batch] = run_child({"model_name": model, "inp": inp, "batch": batch,
                                     "opt_name": opt, "prec": prec, "fraction": frac})
        verdict = {k: ("runs" if "ok" in v else "OOM" if "oom" in v else "error")
                   for k, v in runs.items()}
        print(f"boundary {BOUNDARY}: vramlab says {b} runs and {b and b + 1} fails; "
              f"measured {verdict} {err or ''}")
        result["boundary"] = {"spec": BOUNDARY, "total_memory": total, "predicted": b,
                              "runs": runs, "fit": fit and fit["device"]}
        result["gpu"] = torch.cuda.get_device_name(0)
        result["torch"] = torch.__version__
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
