#!/usr/bin/env python3
"""Write down what vramlab predicts for gpu_check.py's third run before it is measured.

`tools/gpu_check.py --third` measures cases the cuDNN workspace estimate
(crates/memory/src/cudnn.rs) was not read off. This script records, for the H100 and
the H200 the earlier runs measured (PyTorch's totals as measured there), what vramlab
predicts for each: per step `max_memory_allocated` and `max_memory_reserved`, and the
largest batch under each boundary's memory fraction, asked exactly as gpu_check.py asks
it. Committed before any GPU ran them, the file lets the next run say how the estimate
does where it was not fitted. No GPU or PyTorch needed.

    cargo build --release
    python3 tools/gpu_predictions.py > docs/measurements/gpu_predictions_third.json
"""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import gpu_check  # noqa: E402  (its case lists; it imports torch only when measuring)

# torch.cuda.get_device_properties(0).total_memory on the lent cards
# (crates/memory/tests/fixtures/gpu/*-torch2.11.json).
CARDS = {"h100": 85_017_493_504, "h200": 150_109_880_320}


def vramlab(args):
    binary = os.path.join(ROOT, "target", "release", "vramlab")
    out = subprocess.run([binary] + args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main():
    result = {"commit": subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT,
                                       capture_output=True, text=True).stdout.strip(),
              "cases": [], "boundaries": []}
    for card, total in CARDS.items():
        for case in gpu_check.CASES3:
            model, inp, batch, opt, prec = case[:5]
            args = ["memory", model, "--input", inp, "--batch-size", str(batch),
                    "--precision", prec, "--gpu", card, "--json"] + gpu_check.opt_args(opt)
            d = vramlab(args)["device"]
            result["cases"].append({
                "card": card, "case": list(case),
                "steps": [{"allocated": s["allocated_peak_bytes"],
                           "reserved": s["reserved_peak_bytes"]} for s in d["steps"]]})
        for (model, inp, opt, prec, frac) in gpu_check.BOUNDARIES3:
            fit = vramlab(["fit", model, "--input", inp, "--memory", f"{total}B",
                           "--fraction", str(frac), "--precision", prec, "--json",
                           "--cublas-workspace", "32MiB", "--cuda-context", "760MiB"]
                          + gpu_check.opt_args(opt))
            result["boundaries"].append({"card": card, "spec": [model, inp, opt, prec, frac],
                                         "predicted": fit["device"]["max_batch_size"]})
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
