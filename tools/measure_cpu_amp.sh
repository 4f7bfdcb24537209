#!/usr/bin/env bash
# Made crates/memory/tests/fixtures/pytorch-cpu-amp-bf16.json: PyTorch's CPU autocast
# (bfloat16) measured with the oracle, one record per case, then gathered into a list.
# Needs the PyTorch venv of ../shared/oracle/README.md (PY=/path/to/venv/bin/python).
set -euo pipefail
PY=${PY:-python3}
M=${ORACLE:-../shared/oracle}/measure.py
out=$(mktemp -d)
for spec in "simple_cnn 3x32x32 8 sgd" "simple_cnn 3x32x32 8 adam" \
            "resnet18 3x32x32 8 sgd" "resnet18 3x32x32 8 adam" "resnet18 3x32x32 8 sgd_momentum" \
            "mobilenet_v2 3x64x64 4 sgd" "convnext_tiny 3x64x64 2 adamw_foreach_wd" \
            "efficientnet_b0 3x64x64 2 sgd" "densenet121 3x64x64 2 adam" "shufflenet_v2_x0_5 3x64x64 4 sgd" \
            "resnext50_32x4d 3x64x64 2 sgd" "regnet_y_400mf 3x64x64 2 sgd" "wide_resnet50_2 3x64x64 2 sgd" \
            "efficientnet_v2_s 3x64x64 2 sgd" "convnext_small 3x64x64 2 sgd"; do
  set -- $spec
  "$PY" "$M" --model "$1" --input "$2" --num-classes 10 --batch "$3" --optimizer "$4" \
    --amp bf16 > "$out/$1_$3_$4.json"
done
"$PY" -c "import json,glob,sys; json.dump([json.load(open(f)) for f in sorted(glob.glob(sys.argv[1]+'/*.json'))], sys.stdout, indent=1)" "$out" \
  > crates/memory/tests/fixtures/pytorch-cpu-amp-bf16.json
