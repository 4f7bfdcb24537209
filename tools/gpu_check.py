#!/usr/bin/env python3
"""Measure real CUDA training memory, for the pytorch-cuda profile and the allocator simulation.

One prepared run on a machine with a GPU and PyTorch (issue 10). Each case trains three steps
in a fresh process (so the caching allocator starts empty, as vramlab's simulation does), the
oracle's step (../shared/oracle/torch_memory_oracle.py): zero_grad(set_to_none=True), forward,
cross_entropy, backward, step; `out` is deleted after the step, `loss` lives until the next one.
Per step: max_memory_allocated, max_memory_reserved, the allocated bytes before the step,
nvidia-smi's used memory of the process and of the card. At the end: the segments of
torch.cuda.memory._snapshot() (every block's size and state) and the allocator's whole event
history (alloc, free, segment_alloc, ...: action, address, size), so the simulation can be
replayed against it here. Then the context probe (nvidia-smi used after CUDA init, after the
first cuBLAS call and after the first cuDNN convolution, minus reserved), and the OOM boundary
under torch.cuda.set_per_process_memory_fraction: the batch `vramlab fit` predicts, and its
neighbours, until the real boundary is found.

    cargo build --release
    python3 tools/gpu_check.py --out DIR               # writes DIR/gpu_check.json
    python3 tools/gpu_check.py --out DIR --quick       # two cases, to try the script
    python3 tools/gpu_check.py --out DIR --third       # where cudnn.rs was not fitted
    python3 tools/gpu_check.py --out DIR --ops         # op by op, OP_TRACES (one step)
    python3 tools/gpu_check.py --ops-dry-run           # the same on the CPU, to try it

Without a GPU nothing here runs; the committed fixture
(crates/memory/tests/fixtures/gpu-<card>.json) is what `cargo test -p vramlab-memory`
holds the planner and the simulator to.
"""

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (model, input CxHxW, batch, optimizer, precision[, PYTORCH_CUDA_ALLOC_CONF])
CASES = [
    ("simple_cnn", "3x32x32", 4, "sgd", "fp32"),
    ("simple_cnn", "3x32x32", 256, "adam", "fp32"),
    ("simple_cnn", "3x32x32", 256, "sgd", "amp-fp16"),
    ("resnet50", "3x224x224", 32, "sgd", "fp32"),
    ("resnet50", "3x224x224", 64, "adam", "fp32"),
    ("resnet50", "3x224x224", 64, "adam", "amp-fp16"),
    ("vit_b_16", "3x224x224", 32, "adam", "fp32"),
    ("vit_b_16", "3x224x224", 32, "adam", "amp-fp16"),
    ("efficientnet_b0", "3x224x224", 64, "sgd_momentum", "fp32"),
    ("efficientnet_b0", "3x224x224", 64, "adam", "amp-fp16"),
    ("convnext_tiny", "3x224x224", 32, "adam", "fp32"),
    ("convnext_tiny", "3x224x224", 32, "sgd", "amp-bf16"),
    ("resnet18", "3x224x224", 64, "sgd_momentum", "fp32"),
    ("mobilenet_v2", "3x224x224", 64, "adam", "fp32"),
    ("vgg11", "3x224x224", 32, "sgd", "fp32"),
    ("densenet121", "3x224x224", 32, "adam", "fp32"),
    ("resnet50", "3x224x224", 64, "adam", "fp32", "expandable_segments:True"),
    ("resnet50", "3x224x224", 64, "adam", "fp32", "max_split_size_mb:128"),
]
# The second run (2026-11-28, an H100): the lesson's SimpleCNN, Swin and MaxViT, a larger
# ViT batch, and boundaries of other families.
CASES2 = [
    ("simple_cnn", "3x32x32", 64, "adam", "fp32"),
    ("simple_cnn", "3x32x32", 256, "sgd_momentum", "amp-fp16"),
    ("vit_b_16", "3x224x224", 64, "adam", "fp32"),
    ("resnet50", "3x224x224", 32, "sgd", "fp32"),
    ("swin_t", "3x224x224", 32, "adam", "fp32"),
    ("swin_t", "3x224x224", 32, "adamw", "amp-bf16"),
    ("maxvit_t", "3x224x224", 16, "adam", "fp32"),
]
BOUNDARIES2 = [
    ("vit_b_16", "3x224x224", "adam", "amp-fp16", 0.07),
    ("convnext_tiny", "3x224x224", "sgd", "amp-bf16", 0.1),
    ("efficientnet_b0", "3x224x224", "sgd_momentum", "fp32", 0.1),
]
# The third run (prepared in session 9, not run yet): cases the cuDNN workspace estimate
# (crates/memory/src/cudnn.rs) was not read off, to test it where it was not fitted: other
# batch sizes of the same families, and models it has not seen (resnet34, vgg16); and
# three more boundaries.
CASES3 = [
    ("resnet50", "3x224x224", 16, "sgd", "fp32"),
    ("resnet50", "3x224x224", 128, "sgd", "fp32"),
    ("resnet50", "3x224x224", 128, "sgd", "amp-fp16"),
    ("resnet18", "3x224x224", 32, "adam", "fp32"),
    ("resnet18", "3x224x224", 128, "sgd", "fp32"),
    ("resnet34", "3x224x224", 64, "sgd", "fp32"),
    ("vgg11", "3x224x224", 64, "sgd", "fp32"),
    ("vgg16", "3x224x224", 16, "sgd", "fp32"),
    ("densenet121", "3x224x224", 64, "sgd", "fp32"),
    ("convnext_tiny", "3x224x224", 64, "sgd", "amp-bf16"),
    ("efficientnet_b0", "3x224x224", 128, "sgd", "fp32"),
    ("mobilenet_v2", "3x224x224", 128, "sgd", "amp-fp16"),
]
BOUNDARIES3 = [
    ("resnet18", "3x224x224", "sgd", "fp32", 0.05),
    ("vgg11", "3x224x224", "sgd", "fp32", 0.05),
    ("densenet121", "3x224x224", "adam", "amp-fp16", 0.05),
]
# The OOM boundary: (model, input, optimizer, precision, fraction of the card).
BOUNDARIES = [
    ("resnet50", "3x224x224", "adam", "fp32", 0.07),
    ("vit_b_16", "3x224x224", "adam", "amp-fp16", 0.07),
]
NUM_CLASSES = {"simple_cnn": 10, "small_cnn": 10}
ACTIONS = ["alloc", "free_requested", "free_completed", "segment_alloc", "segment_free",
           "segment_map", "segment_unmap", "snapshot", "oom"]


def opt_args(opt):
    return {
        "sgd": ["--optimizer", "sgd"],
        "sgd_momentum": ["--optimizer", "sgd", "--momentum", "0.9"],
        "adam": ["--optimizer", "adam"],
        "adamw": ["--optimizer", "adamw"],
    }[opt]


def build(model, inp):
    import torch.nn as nn

    c, h, w = (int(d) for d in inp.split("x"))
    if model == "simple_cnn":
        # The lesson's SimpleCNN (vramlab's zoo `simple_cnn`, the oracle's SimpleCNN).
        class SimpleCNN(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(c, 6, 5)
                self.pool = nn.MaxPool2d(2, 2)
                self.conv2 = nn.Conv2d(6, 16, 5)
                self.fc1 = nn.Linear(16 * 5 * 5, 120)
                self.fc2 = nn.Linear(120, 84)
                self.fc3 = nn.Linear(84, 10)

            def forward(self, x):
                F = nn.functional
                x = self.pool(F.relu(self.conv1(x)))
                x = self.pool(F.relu(self.conv2(x)))
                x = x.flatten(1)
                return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))

        return SimpleCNN()
    if model == "small_cnn":
        # crates/memory/tests/fixtures/gpu/small_cnn.toml (the H200 run of 2026-11-28
        # measured it under the name simple_cnn).
        return nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), 128), nn.ReLU(),
            nn.Linear(128, 10))
    import torchvision

    return getattr(torchvision.models, model)(weights=None)


def smi():
    """(this process's used bytes or None, the card's used bytes, the card's total bytes)."""
    own = None
    q = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory",
                        "--format=csv,noheader,nounits"], capture_output=True, text=True)
    for line in q.stdout.splitlines():
        parts = [x.strip() for x in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()) and parts[1].isdigit():
            own = int(parts[1]) << 20
    g = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total",
                        "--format=csv,noheader,nounits"], capture_output=True, text=True)
    used, total = (int(x.strip()) << 20 for x in g.stdout.splitlines()[0].split(","))
    return own, used, total


def measure(model_name, inp, batch, opt_name, prec, fraction=None, steps=3, history=True):
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda")
    if history:
        torch.cuda.memory._record_memory_history(max_entries=3_000_000, context=None,
                                                 stacks="python")
    if fraction:
        torch.cuda.set_per_process_memory_fraction(fraction, 0)
    torch.manual_seed(0)
    ncls = NUM_CLASSES.get(model_name, 1000)
    model = build(model_name, inp).to(dev).train()
    params = model.parameters()
    opt = {
        "sgd": lambda: torch.optim.SGD(params, lr=0.01),
        "sgd_momentum": lambda: torch.optim.SGD(params, lr=0.01, momentum=0.9),
        "adam": lambda: torch.optim.Adam(params, lr=1e-3),
        "adamw": lambda: torch.optim.AdamW(params, lr=1e-3),
    }[opt_name]()
    x = torch.randn([batch] + [int(d) for d in inp.split("x")], device=dev)
    y = torch.randint(0, ncls, (batch,), device=dev)
    dtype = {"amp-fp16": torch.float16, "amp-bf16": torch.bfloat16}.get(prec)
    rows = []
    loss = None
    for _ in range(steps):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        reserved_before = torch.cuda.memory_reserved()
        opt.zero_grad(set_to_none=True)
        if dtype is not None:
            with torch.autocast("cuda", dtype=dtype):
                out = model(x)
                loss = F.cross_entropy(out, y)
        else:
            out = model(x)
            loss = F.cross_entropy(out, y)
        loss.backward()
        opt.step()
        del out
        torch.cuda.synchronize()
        own, used, _ = smi()
        stats = torch.cuda.memory_stats()
        rows.append({
            "allocated_before": before,
            "reserved_before": reserved_before,
            "allocated": torch.cuda.max_memory_allocated(),
            "reserved": torch.cuda.max_memory_reserved(),
            "allocated_after": torch.cuda.memory_allocated(),
            "reserved_after": torch.cuda.memory_reserved(),
            "nvidia_smi_process_used": own,
            "nvidia_smi_card_used": used,
            "num_alloc_retries": stats.get("num_alloc_retries", 0),
            "num_ooms": stats.get("num_ooms", 0),
            "loss": loss.item(),
        })
    snap = torch.cuda.memory._snapshot()
    segments = [{"size": s["total_size"], "pool": s.get("segment_type"),
                 "blocks": [[b["size"], b.get("requested_size", 0), b["state"]]
                            for b in s["blocks"]]} for s in snap["segments"]]
    trace = []
    if history:
        for ev in (snap.get("device_traces") or [[]])[0]:
            a = ev["action"]
            trace.append([ACTIONS.index(a) if a in ACTIONS else a, ev["addr"], ev["size"]])
        torch.cuda.memory._record_memory_history(enabled=None)
    props = torch.cuda.get_device_properties(0)
    return {"steps": rows, "segments": segments, "trace": trace,
            "total_memory": props.total_memory,
            "cudnn": torch.backends.cudnn.version()}


def probe():
    """nvidia-smi used memory of a process at stages of CUDA's initialisation."""
    import torch

    out = {}
    own, used, total = smi()
    out["card_used_before"] = used
    torch.cuda.init()
    a = torch.empty(1, device="cuda")
    torch.cuda.synchronize()
    out["after_init"] = smi()[:2] + (torch.cuda.memory_reserved(),)
    b = torch.randn(256, 256, device="cuda")
    (b @ b).sum().item()
    out["after_cublas"] = smi()[:2] + (torch.cuda.memory_reserved(),)
    out["allocated_after_cublas"] = torch.cuda.memory_allocated()
    c = torch.randn(8, 3, 32, 32, device="cuda")
    conv = torch.nn.Conv2d(3, 8, 3).cuda()
    conv(c).sum().backward()
    torch.cuda.synchronize()
    out["after_cudnn"] = smi()[:2] + (torch.cuda.memory_reserved(),)
    out["allocated_after_cudnn"] = torch.cuda.memory_allocated()
    out["nvidia_smi_total"] = total
    p = torch.cuda.get_device_properties(0)
    out["total_memory"] = p.total_memory
    out["name"] = p.name
    out["capability"] = list(torch.cuda.get_device_capability(0))
    out["torch"] = torch.__version__
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version()
    out["mem_get_info"] = list(torch.cuda.mem_get_info())
    drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                         capture_output=True, text=True)
    out["driver"] = drv.stdout.strip()
    del a
    return out


# Op by op (`--ops`): what each aten op of one step allocated, to settle what the
# allocator traces alone cannot say (which op made a request: the loss under CUDA
# autocast allocates one half-size tensor more than the plan; a stem's weight-gradient
# workspace). (model, input, batch, optimizer, precision).
OP_TRACES = [
    ("small_cnn", "3x32x32", 256, "sgd", "amp-fp16"),
    ("resnet18", "3x224x224", 16, "sgd", "fp32"),
    ("resnet50", "3x224x224", 8, "adam", "amp-fp16"),
]


def op_trace(model_name, inp, batch, opt_name, prec, device="cuda"):
    """One training step (after a first one) under a dispatch mode: per aten op its
    phase, name, the bytes allocated when it returned and the most while it ran (CUDA:
    memory_allocated and max_memory_allocated; `device="cpu"` only tries the script,
    counting the outputs' bytes) and its outputs' shapes and dtypes."""
    import torch
    import torch.nn.functional as F
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    dev = torch.device(device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    ncls = NUM_CLASSES.get(model_name, 1000)
    model = build(model_name, inp).to(dev).train()
    opt = {"sgd": lambda p: torch.optim.SGD(p, lr=0.01),
           "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
           "adam": lambda p: torch.optim.Adam(p, lr=1e-3),
           "adamw": lambda p: torch.optim.AdamW(p, lr=1e-3)}[opt_name](model.parameters())
    x = torch.randn([batch] + [int(d) for d in inp.split("x")], device=dev)
    y = torch.randint(0, ncls, (batch,), device=dev)
    dtype = {"amp-fp16": torch.float16, "amp-bf16": torch.bfloat16}.get(prec)
    rows, phase, counted = [], ["forward"], [0]

    class Ops(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            out = func(*args, **(kwargs or {}))
            outs = [o for o in tree_flatten(out)[0] if isinstance(o, torch.Tensor)]
            if cuda:
                # The peak inside the op shows its transient requests (cuDNN's
                # workspaces, which it frees before returning).
                now, peak = torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()
            else:
                counted[0] += sum(o.untyped_storage().nbytes() for o in outs)
                now = peak = counted[0]
            rows.append([phase[0], str(func), now, peak,
                         [[list(o.shape), str(o.dtype)[6:]] for o in outs]])
            return out

    def step(record):
        opt.zero_grad(set_to_none=True)
        phase[0] = "forward"
        with (Ops() if record else contextlib.nullcontext()):
            with (torch.autocast(dev.type, dtype=dtype) if dtype else contextlib.nullcontext()):
                out = model(x)
                loss = F.cross_entropy(out, y)
            phase[0] = "backward"
            loss.backward()
            phase[0] = "optimizer"
            opt.step()
        return loss.item()

    step(False)
    start = torch.cuda.memory_allocated() if cuda else 0
    step(True)
    return {"allocated_before": start, "ops": rows}


def child(spec):
    import torch

    try:
        if spec.get("probe"):
            return {"ok": probe()}
        if spec.get("ops"):
            return {"ok": op_trace(*spec["ops"], device=spec.get("device", "cuda"))}
        return {"ok": measure(**spec)}
    except torch.cuda.OutOfMemoryError as e:
        return {"oom": str(e).splitlines()[0]}


def run_child(spec, timeout=180, alloc_conf=None):
    env = dict(os.environ)
    env.pop("PYTORCH_ALLOC_CONF", None)
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    if alloc_conf:
        env["PYTORCH_CUDA_ALLOC_CONF"] = alloc_conf
    try:
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--one", json.dumps(spec)],
                             capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-800:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def find_boundary(trial, start, late, max_trials=8):
    """The largest batch that runs and the smallest that fails, walking from `start`:
    one up or down, then steps doubling, then bisection."""
    lo = hi = None
    batch, step = start, 1
    for _ in range(max_trials):
        if late():
            break
        if trial(batch):
            lo = batch if lo is None else max(lo, batch)
        else:
            hi = batch if hi is None else min(hi, batch)
        if lo is not None and hi is not None:
            if hi - lo <= 1:
                break
            batch = (lo + hi) // 2
        elif lo is not None:
            batch, step = batch + step, step * 2
        elif batch == 1:
            break
        else:
            batch, step = max(1, batch - step), step * 2
    return lo, hi


def vramlab(binary, args):
    if not binary or not os.path.exists(binary):
        return None, "no vramlab binary"
    out = subprocess.run([binary] + args, capture_output=True, text=True)
    if out.returncode != 0:
        return None, out.stderr.strip()
    return json.loads(out.stdout), None


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vramlab", default=os.path.join(ROOT, "target", "release", "vramlab"))
    ap.add_argument("--out", help="a folder: gpu_check.json is written there after every case")
    ap.add_argument("--quick", action="store_true", help="two cases and no boundary")
    ap.add_argument("--second", action="store_true",
                    help="the second run's cases and boundaries (CASES2, BOUNDARIES2)")
    ap.add_argument("--ops", action="store_true",
                    help="only the op-by-op traces of OP_TRACES (one step each)")
    ap.add_argument("--ops-dry-run", action="store_true",
                    help="run --ops on the CPU (counting outputs' bytes) to try the script")
    ap.add_argument("--third", action="store_true",
                    help="the third run's cases and boundaries (CASES3, BOUNDARIES3): the "
                         "cuDNN workspace estimate where it was not fitted")
    ap.add_argument("--deadline", type=float, default=400.0,
                    help="seconds after which no new case starts (default 400)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(child(json.loads(args.one))))
        return
    t0 = time.time()
    if args.ops or args.ops_dry_run:
        device = "cpu" if args.ops_dry_run else "cuda"
        traces = {}
        for case in OP_TRACES:
            r = run_child({"ops": list(case), "device": device})
            traces[" ".join(map(str, case))] = r
            print(" ".join(map(str, case)), "ops" if "ok" in r else r,
                  len(r.get("ok", {}).get("ops", [])), flush=True)
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "gpu_op_traces.json"), "w") as f:
                json.dump(traces, f, separators=(",", ":"))
        return
    result = {"cases": [], "boundaries": []}

    traces = {}

    def save():
        if args.out:
            os.makedirs(args.out, exist_ok=True)
        if args.out and traces:
            import gzip

            with gzip.open(os.path.join(args.out, "gpu_traces.json.gz"), "wt") as f:
                json.dump(traces, f, separators=(",", ":"))
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            tmp = os.path.join(args.out, "gpu_check.json.tmp")
            with open(tmp, "w") as f:
                json.dump(result, f, separators=(",", ":"))
            os.replace(tmp, os.path.join(args.out, "gpu_check.json"))

    result["probe"] = run_child({"probe": True})
    print("probe", json.dumps(result["probe"])[:600], flush=True)
    save()
    cases, boundaries = ((CASES3, BOUNDARIES3) if args.third
                         else (CASES2, BOUNDARIES2) if args.second else (CASES, BOUNDARIES))
    for case in (cases[:2] if args.quick else cases):
        if time.time() - t0 > args.deadline:
            print("deadline: stopped before", case, flush=True)
            break
        model, inp, batch, opt, prec = case[:5]
        s = time.time()
        meas = run_child({"model_name": model, "inp": inp, "batch": batch, "opt_name": opt,
                          "prec": prec}, alloc_conf=case[5] if len(case) > 5 else None)
        trace = meas.get("ok", {}).pop("trace", None)
        if trace:
            traces[" ".join(map(str, case))] = trace
        result["cases"].append({"case": list(case), "measured": meas})
        steps = meas.get("ok", {}).get("steps", [])
        print(f"{' '.join(map(str, case)):<44} {time.time() - s:5.1f}s",
              [(r["allocated"], r["reserved"], r["nvidia_smi_process_used"]) for r in steps]
              or meas, flush=True)
        save()
    if not args.quick:
        import torch

        total = torch.cuda.get_device_properties(0).total_memory
        extra = ["--cublas-workspace", "32MiB", "--cuda-context", "760MiB"] \
            if torch.cuda.get_device_capability(0)[0] >= 9 else []
        for (model, inp, opt, prec, frac) in boundaries:
            if time.time() - t0 > args.deadline:
                print("deadline: no boundary", model, flush=True)
                break
            fit, err = vramlab(args.vramlab, ["fit", model, "--input", inp, "--memory",
                                              f"{total}B", "--fraction", str(frac),
                                              "--precision", prec, "--json"]
                               + opt_args(opt) + extra)
            b = fit["device"]["max_batch_size"] if fit else None
            runs = {}

            def trial(batch):
                r = run_child({"model_name": model, "inp": inp, "batch": batch, "opt_name": opt,
                               "prec": prec, "fraction": frac, "history": False})
                runs[batch] = {"runs": "ok" in r, "oom": r.get("oom"), "error": r.get("error"),
                               "steps": r.get("ok", {}).get("steps")}
                print("boundary", model, prec, batch, "runs" if "ok" in r else r, flush=True)
                return "ok" in r

            lo, hi = find_boundary(trial, b or 64, lambda: time.time() - t0 > args.deadline + 90)
            result["boundaries"].append({"spec": [model, inp, opt, prec, frac],
                                         "total_memory": total, "predicted": b,
                                         "predict_error": err, "largest_that_runs": lo,
                                         "smallest_that_fails": hi, "runs": runs})
            save()
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
