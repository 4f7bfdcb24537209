#!/usr/bin/env bash
# Made crates/memory/tests/fixtures/pytorch-cpu-amp-bf16-transformers.json: Vision
# Transformers (nn.MultiheadAttention), MaxViTs (relative-position attention) and Swin V1s
# and V2s (shifted windows) under PyTorch's CPU autocast (bfloat16), measured
# with the oracle, one record per case. Needs the PyTorch venv of ../shared/oracle/README.md
# (PY=/path/to/venv/bin/python).
set -euo pipefail
PY=${PY:-python3}
M=${ORACLE:-../shared/oracle}/measure.py
out=$(mktemp -d)
for spec in "tools/cpu_amp_models.py:vit_1x2 3x32x32 2 sgd" "tools/cpu_amp_models.py:vit_1x2 3x32x32 2 adam" \
            "tools/cpu_amp_models.py:vit_1x2 3x32x32 8 sgd" "tools/cpu_amp_models.py:vit_1x2 3x32x32 8 adam" \
            "tools/cpu_amp_models.py:vit_2x4 3x32x32 4 sgd_momentum" "tools/cpu_amp_models.py:vit_2x4 3x32x32 4 adamw" \
            "vit_b_16 3x224x224 1 sgd" \
            "tools/cpu_amp_models.py:maxvit_32 3x32x32 2 sgd" "tools/cpu_amp_models.py:maxvit_32 3x32x32 2 adam" \
            "tools/cpu_amp_models.py:maxvit_64 3x64x64 2 adamw" "maxvit_t 3x224x224 1 sgd" \
            "tools/cpu_amp_models.py:swin_v1 3x32x32 2 sgd" "tools/cpu_amp_models.py:swin_v1 3x40x40 2 adam" \
            "tools/cpu_amp_models.py:swin_v2 3x32x32 2 sgd" "tools/cpu_amp_models.py:swin_v2 3x40x40 2 adam" \
            "swin_v2_t 3x224x224 1 sgd"; do
  set -- $spec
  "$PY" "$M" --model "$1" --input "$2" --num-classes 10 --batch "$3" --optimizer "$4" \
    --amp bf16 > "$out/$(basename "${1/:/_}")_$3_$4.json"
done
"$PY" -c "import json,glob,sys; json.dump([json.load(open(f)) for f in sorted(glob.glob(sys.argv[1]+'/*.json'))], sys.stdout, indent=1)" "$out" \
  > crates/memory/tests/fixtures/pytorch-cpu-amp-bf16-transformers.json
