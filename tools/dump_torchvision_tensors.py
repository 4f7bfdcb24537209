#!/usr/bin/env python3
"""Dump every torchvision classifier's parameter and buffer names/shapes.

Writes crates/graph/tests/fixtures/torchvision_tensors.json (compact JSON,
sorted by model name) so the Rust zoo can be checked against PyTorch's own
tensor layout.

Per model:
  params           [[name, [shape...]], ...] in model.named_parameters() order
  buffers          [[name, [shape...], dtype], ...] in model.named_buffers() order
  num_params       total parameter elements
  num_buffer_elems total buffer elements
  params_no_aux    (googlenet, inception_v3 only) parameter count with aux_logits=False
  default_input    crop size from the DEFAULT weights' transforms, when available

Models are built on the "meta" device (no memory, no init cost); any model
whose meta build fails is built normally on CPU (with torchvision 0.29.2 that
is the 15 regnet_* models: "Cannot copy out of meta tensor"). Meta and real
builds were checked to give identical names/shapes for resnet18,
mobilenet_v3_small, squeezenet1_0, googlenet and densenet121. googlenet/inception_v3 are
built with aux_logits=True, init_weights=False (init only changes values).

Usage: /work/torch-venv/bin/python tools/dump_torchvision_tensors.py [--verify-meta]
"""
import argparse
import json
import os
import sys

import torch
import torchvision
from torchvision.models import get_model, get_model_weights, list_models

AUX_MODELS = ("googlenet", "inception_v3")
OUT = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..", "crates", "graph", "tests", "fixtures", "torchvision_tensors.json",
)


def kwargs_for(name, aux=True):
    kw = {"weights": None}
    if name in AUX_MODELS:
        kw["aux_logits"] = aux
        kw["init_weights"] = False
    return kw


def build(name, meta=True, aux=True):
    kw = kwargs_for(name, aux)
    if meta:
        with torch.device("meta"):
            return get_model(name, **kw)
    return get_model(name, **kw)


def describe(m):
    params = [[n, list(p.shape)] for n, p in m.named_parameters()]
    buffers = [[n, list(b.shape), str(b.dtype).replace("torch.", "")]
               for n, b in m.named_buffers()]
    return {
        "params": params,
        "buffers": buffers,
        "num_params": sum(p.numel() for _, p in m.named_parameters()),
        "num_buffer_elems": sum(b.numel() for _, b in m.named_buffers()),
    }


def default_input(name):
    try:
        t = get_model_weights(name).DEFAULT.transforms()
        cs = t.crop_size
        if isinstance(cs, (list, tuple)):
            cs = cs[0]
        return int(cs)
    except Exception:
        return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--verify-meta", nargs="*", default=None,
                    help="compare meta vs real builds for these models and exit")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)

    if args.verify_meta is not None:
        names = args.verify_meta or ["resnet18", "mobilenet_v3_small", "squeezenet1_0"]
        ok = True
        for n in names:
            a = describe(build(n, meta=True))
            b = describe(build(n, meta=False))
            same = a == b
            ok &= same
            print(f"{n}: meta==real {same}")
        sys.exit(0 if ok else 1)

    out = {}
    special = []
    for name in sorted(list_models(module=torchvision.models)):
        try:
            m = build(name, meta=True)
        except Exception as e:  # fall back to a real build
            special.append(f"{name}: meta build failed ({e!r}), built on CPU")
            m = build(name, meta=False)
        rec = describe(m)
        del m
        if name in AUX_MODELS:
            try:
                m2 = build(name, meta=True, aux=False)
            except Exception:
                m2 = build(name, meta=False, aux=False)
            rec["params_no_aux"] = sum(p.numel() for p in m2.parameters())
            del m2
        di = default_input(name)
        if di is not None:
            rec["default_input"] = di
        out[name] = rec
        print(f"{name}: {rec['num_params']} params, {len(rec['params'])} tensors,"
              f" {len(rec['buffers'])} buffers, input {di}", flush=True)

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, separators=(",", ":"), sort_keys=True)
        f.write("\n")
    print(f"wrote {len(out)} models to {args.out} ({os.path.getsize(args.out)} bytes)")
    for s in special:
        print("special:", s)


if __name__ == "__main__":
    main()
