#!/usr/bin/env bash
# Measures the records of crates/memory/tests/fixtures/mobilenet_v2_cpu.json with real
# PyTorch on the CPU, using the shared oracle (shared/oracle/measure.py, the instruments
# that produced shared/reference). Needs a virtual environment with torch and torchvision,
# outside the repository (never in CI):
#   python3 -m venv ../torch-venv && ../torch-venv/bin/pip install torch torchvision
# Usage: tools/measure_mobilenet_v2_cpu.sh [PYTHON] > crates/memory/tests/fixtures/mobilenet_v2_cpu.json
# (about 4 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-../torch-venv/bin/python}
oracle=../shared/oracle/measure.py
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
n=0
for case in 3x224x224:1:sgd 3x224x224:1:adam 3x224x224:2:sgd 3x224x224:16:sgd 3x224x224:16:adam \
  3x64x64:2:sgd 3x64x64:2:adam 3x96x96:3:sgd_momentum 3x160x128:4:adam; do
  IFS=: read -r input batch opt <<<"$case"
  # one case per process, as the oracle's README asks
  "$py" "$oracle" --model mobilenet_v2 --input "$input" --batch "$batch" --optimizer "$opt" \
    >"$tmp/$(printf %02d $n).json" 2>/dev/null
  n=$((n + 1))
done
# The small ReLU6 model of crates/memory/tests/fixtures/relu6_models.py (relu6net.toml),
# plain and through checkpoint_sequential(3 segments, use_reentrant=False).
models=crates/memory/tests/fixtures/relu6_models.py
for case in relu6net:5:sgd relu6net:3:adam relu6net_checkpointed:5:sgd relu6net_checkpointed:4:adam; do
  IFS=: read -r fn batch opt <<<"$case"
  "$py" "$oracle" --model "$models:$fn" --input 3x20x20 --num-classes 7 --batch "$batch" \
    --optimizer "$opt" >"$tmp/$(printf %02d $n).json" 2>/dev/null
  n=$((n + 1))
done
"$py" - "$tmp" <<'PY'
import glob, json, sys, torchvision
recs = []
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    r = json.load(open(f))
    r["torchvision"] = torchvision.__version__
    if r["model"].endswith(".py:relu6net_checkpointed"):
        r["vramlab_model"], r["checkpoint_segments"] = "relu6net.toml", 3
    elif r["model"].endswith(".py:relu6net"):
        r["vramlab_model"], r["checkpoint_segments"] = "relu6net.toml", 0
    recs.append(r)
print(json.dumps(recs, indent=1))
PY
