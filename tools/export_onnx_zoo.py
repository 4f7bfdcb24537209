"""Exports every torchvision image classifier (torchvision.models.list_models(module=
torchvision.models)) to ONNX with PyTorch's TorchScript exporter, in training mode,
weights stripped, one model at a time, each in its own subprocess (a model the
TorchScript exporter refuses, GoogLeNet with its auxiliary heads, is exported by the
dynamo exporter with optimize=False instead):

    python tools/export_onnx_zoo.py [--out DIR] [--budget-min 70] [NAME ...]
    cargo run --release -p vramlab-onnx --example zoo_parity -- DIR

Reuses `export` of tools/export_onnx_fixtures.py (opset 17, symbolic batch,
initializers keep dims and dtype, bytes point at a `weights.data` that is not written).
Records go to {out}/zoo_onnx.json, rewritten after each model; a model whose .onnx
exists with a record is skipped, so a run can be resumed. Models run smallest-first by
parameter count.
"""

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
PY = sys.executable
TIMEOUT_S = 600


def input_shape(name):
    return (3, 299, 299) if name == "inception_v3" else (3, 224, 224)


def onnx_name(name):
    return f"{name}_torchscript_train.onnx"


def worker(name, out):
    """Runs in the subprocess: build, count, export into a private folder, move the file
    out. Prints one JSON line prefixed with RESULT."""
    import torch
    import torchvision
    import onnx

    sys.path.insert(0, os.path.dirname(HERE))
    from export_onnx_fixtures import export

    rec = {"input": list(input_shape(name)), "file": onnx_name(name)}
    t0 = time.time()
    tmp = os.path.join(out, f".tmp_{name}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        torch.manual_seed(0)
        model = getattr(torchvision.models, name)(weights=None)
        rec["params"] = sum(p.numel() for p in model.parameters())
        rec["buffers"] = sum(b.numel() for b in model.buffers())
        path = os.path.join(tmp, onnx_name(name))
        try:
            export(model, input_shape(name), path, dynamo=False, train=True)
        except Exception as e:
            rec["torchscript_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            rec["file"] = f"{name}_dynamo_train_noopt.onnx"
            path = os.path.join(tmp, rec["file"])
            export(model, input_shape(name), path, dynamo=True, train=True, optimize=False)
        final = os.path.join(out, rec["file"])
        os.replace(path, final)
        rec["bytes"] = os.path.getsize(final)
        g = onnx.load(final, load_external_data=False).graph
        rec["outputs"] = len(g.output)
        rec["output_names"] = [o.name for o in g.output]
        rec["nodes"] = len(g.node)
        rec["initializers"] = len(g.initializer)
    except Exception as e:  # reported to the parent
        rec["error"] = f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rec["seconds"] = round(time.time() - t0, 1)
    print("RESULT " + json.dumps(rec), flush=True)


def count_worker(names):
    """Parameter counts on the meta device; a builder that computes with tensors at
    construction (regnet) is built on the CPU instead."""
    import torch
    import torchvision

    counts = {}
    for n in names:
        b = getattr(torchvision.models, n)
        try:
            with torch.device("meta"):
                m = b(weights=None)
        except Exception:
            m = b(weights=None)
        counts[n] = sum(p.numel() for p in m.parameters())
        del m
    print("COUNTS " + json.dumps(counts), flush=True)


def run_sub(args, timeout):
    """Runs this file with args in a new session; returns (rc, stdout, stderr, timed_out)."""
    p = subprocess.Popen([PY, HERE] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        so, se = p.communicate(timeout=timeout)
        return p.returncode, so, se, False
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        so, se = p.communicate()
        return p.returncode, so, se, True


def cleanup(out, name=None):
    for f in os.listdir(out):
        full = os.path.join(out, f)
        if f.endswith(".data"):
            os.remove(full)
        elif f.startswith(".tmp_") and (name is None or f == f".tmp_{name}"):
            shutil.rmtree(full, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*")
    ap.add_argument("--out", default=os.path.dirname(HERE))
    ap.add_argument("--budget-min", type=float, default=70.0,
                    help="start no export after this many minutes")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    out = os.path.abspath(a.out)
    if a.worker:
        return worker(a.worker, out)
    if a.count:
        return count_worker(a.names)

    t_start = time.time()
    os.makedirs(out, exist_ok=True)
    import torchvision  # the list only

    zoo = torchvision.models.list_models(module=torchvision.models)
    names = a.names or zoo
    for n in names:
        if n not in zoo:
            sys.exit(f"unknown model {n}")
    jpath = os.path.join(out, "zoo_onnx.json")
    records = {}
    if os.path.exists(jpath):
        with open(jpath) as f:
            records = json.load(f)

    def save():
        with open(jpath + ".tmp", "w") as f:
            json.dump(records, f, indent=1, sort_keys=True)
        os.replace(jpath + ".tmp", jpath)

    todo = [n for n in names
            if not (n in records and os.path.exists(os.path.join(out, onnx_name(n))))]
    skipped = [n for n in names if n not in todo]
    if skipped:
        print(f"skipping {len(skipped)} already done: {' '.join(skipped)}", flush=True)
    rc, so, se, _ = run_sub(["--count"] + todo, TIMEOUT_S)
    line = [l for l in so.splitlines() if l.startswith("COUNTS ")]
    if not line:
        sys.exit(f"parameter count failed: {se[-2000:]}")
    counts = json.loads(line[0][7:])
    todo.sort(key=lambda n: (counts[n], n))

    cleanup(out)
    not_started = []
    for i, n in enumerate(todo):
        if time.time() - t_start > a.budget_min * 60:
            not_started = todo[i:]
            break
        print(f"[{i + 1}/{len(todo)}] {n} ({counts[n]:,} params) ...", flush=True)
        t0 = time.time()
        rc, so, se, timed_out = run_sub(["--worker", n, "--out", out], TIMEOUT_S)
        line = [l for l in so.splitlines() if l.startswith("RESULT ")]
        if line:
            rec = json.loads(line[-1][7:])
        else:
            rec = {"input": list(input_shape(n)), "file": onnx_name(n), "params": counts[n],
                   "seconds": round(time.time() - t0, 1)}
            if timed_out:
                rec["error"] = f"TimeoutExpired: no result after {TIMEOUT_S} s"
            else:
                tail = se.strip().splitlines()[-1] if se.strip() else ""
                kind = "Killed" if rc == -9 else f"ExitCode{rc}"
                rec["error"] = f"{kind}: {tail[:300]}"
        cleanup(out, n)
        if "error" in rec:
            p = os.path.join(out, onnx_name(n))
            if os.path.exists(p) and "bytes" not in rec:
                os.remove(p)
        records[n] = rec
        save()
        print(f"    {'FAILED ' + rec['error'] if 'error' in rec else 'ok'}"
              f" {rec.get('bytes', '')} bytes, {rec.get('outputs', '')} outputs,"
              f" {rec['seconds']} s (elapsed {(time.time() - t_start) / 60:.1f} min)", flush=True)
    if not_started:
        print(f"NOT STARTED (budget spent): {' '.join(not_started)}", flush=True)
    failed = [n for n in names if n in records and "error" in records[n]]
    print(f"done: {sum(1 for n in names if n in records and 'error' not in records[n])} exported,"
          f" {len(failed)} failed: {' '.join(failed)}", flush=True)


if __name__ == "__main__":
    main()
