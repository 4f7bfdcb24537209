#!/usr/bin/env python3
"""cuDNN's convolution workspaces in the recorded GPU traces, beside the planner's estimates.

The allocator traces of `tools/gpu_check.py` (crates/memory/tests/fixtures/gpu/
*-traces.json.gz) hold every malloc and free PyTorch made, cuDNN's workspaces among them:
a request freed right after it was made, around a convolution kernel. This script lines
each case's recorded requests up with the planner's (`vramlab memory ... --gpu CARD --json
--device-trace`, the same model, batch, optimizer, precision and allocator settings) and
lists every recorded transient request (made and freed at once) that the plan does not
match byte for byte: in the CNNs cuDNN's workspaces, elsewhere temporaries the plan sizes
differently. Each comes with the layer and
pass (forward; backward: the input's gradient, then the weight's) it came in, and the
planner's estimate at that point (crates/memory/src/cudnn.rs). It is how that file's
rules were read off; it needs no GPU and no PyTorch, only a built vramlab.

    cargo build --release
    python3 tools/cudnn_workspaces.py                      # every case, a summary per case
    python3 tools/cudnn_workspaces.py --case resnet18      # one case, every workspace
"""

import argparse
import difflib
import gzip
import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "crates", "memory", "tests", "fixtures", "gpu")
ALLOC, FREE_COMPLETED = 0, 2  # ACTIONS in tools/gpu_check.py


def planned(binary, card, case):
    model, inp, batch, opt, prec = case[:5]
    if model == "small_cnn" or (card == "h200" and model == "simple_cnn"):
        model = os.path.join(FIXTURES, "small_cnn.toml")
    args = [binary, "memory", model, "--batch-size", str(batch), "--precision", prec,
            "--gpu", card, "--json", "--device-trace"]
    if not model.endswith(".toml"):
        args += ["--input", inp]
    args += {"sgd": ["--optimizer", "sgd"],
             "sgd_momentum": ["--optimizer", "sgd", "--momentum", "0.9"],
             "adam": ["--optimizer", "adam"],
             "adamw": ["--optimizer", "adamw"]}[opt]
    if len(case) > 5:
        args += ["--alloc-conf", case[5]]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["device"]["trace"]


def recorded(events):
    """(kind, bytes) per request in order, and which ones were freed right after."""
    sizes, seq, transient = {}, [], set()
    ev = [e for e in events if e[0] in (ALLOC, FREE_COMPLETED)]
    for i, (action, addr, size) in enumerate(ev):
        if action == ALLOC:
            sizes[addr] = size
            seq.append(("a", size))
            if i + 1 < len(ev) and ev[i + 1][0] == FREE_COMPLETED and ev[i + 1][1] == addr:
                transient.add(len(seq) - 1)
        else:
            seq.append(("f", sizes.pop(addr)))
    return seq, transient


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vramlab", default=os.path.join(ROOT, "target", "release", "vramlab"))
    ap.add_argument("--case", help="only cases whose name contains this")
    args = ap.parse_args()
    for card in ("h200", "h100"):
        with gzip.open(os.path.join(FIXTURES, f"{card}-torch2.11-traces.json.gz"), "rt") as f:
            traces = json.load(f)
        with open(os.path.join(FIXTURES, f"{card}-torch2.11.json")) as f:
            cases = [c["case"] for c in json.load(f)["cases"]]
        for case in cases:
            name = " ".join(map(str, case))
            if args.case and args.case not in name:
                continue
            real, transient = recorded(traces[name])
            plan = planned(args.vramlab, card, case)
            mine = [("a" if e["action"] == "alloc" else "f", e["bytes"]) for e in plan]
            sm = difflib.SequenceMatcher(None, real, mine, autojunk=False)
            rows = []
            for tag, i1, i2, j1, j2 in sm.get_opcodes():
                if tag == "equal":
                    continue
                # The planner's workspaces in this stretch, in order.
                estimates = [plan[j]["bytes"] for j in range(j1, j2)
                             if plan[j]["action"] == "alloc" and j + 1 < len(plan)
                             and plan[j + 1]["action"] == "free"
                             and plan[j + 1].get("block") == plan[j].get("block")]
                at = plan[j1 - 1] if j1 > 0 else plan[0]
                for i in range(i1, i2):
                    if i in transient:
                        rows.append((at["phase"], at["layer_name"], real[i][1],
                                     estimates.pop(0) if estimates else 0))
            measured = sum(r[2] for r in rows)
            estimated = sum(r[3] for r in rows)
            print(f"{card} {name}: {len(rows)} transient requests unmatched by the plan "
                  f"(cuDNN's workspaces in the CNNs), {measured:,} B recorded; the "
                  f"planner's workspaces at those points {estimated:,} B")
            if args.case:
                for phase, layer, size, est in rows:
                    print(f"  {phase:9} {layer:48} recorded {size:>13,}  estimated {est:>13,}")


if __name__ == "__main__":
    try:
        main()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
