#!/usr/bin/env bash
# Runs the speed benchmarks of docs/PERFORMANCE.md on this machine and prints the
# figures beside PyTorch's (shared/reference/pytorch-cpu-perf.json, same kind of
# machine). Usage: tools/bench.sh [runs]   (default 2 runs of each)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-2}
cargo build --release -q
B=target/release/vramlab
echo "machine: $(nproc) cores; load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "== bench train simple_cnn 3x32x32, Adam, 2 threads (PyTorch: 3,576 / 5,610 / 9,487 images/s)"
for b in 16 64 256; do
  for r in $(seq "$runs"); do
    $B bench train simple_cnn --batch-size "$b" --threads 2 --seconds 3 --json \
      | python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"batch {d['batch_size']:>4}: {d['images_per_s']:>8.0f} images/s, {d['ms_per_step']:.2f} ms/step\")"
  done
done
echo
echo "== bench loader fashion-mnist, batch 64 (torchvision: 6,834 images/s with 0 workers, 7,511 with 2)"
for w in 0 2; do
  for r in $(seq "$runs"); do
    $B bench loader --data fashion-mnist --batch-size 64 --workers "$w" --json \
      | python3 -c "import json,sys; d=json.load(sys.stdin); print(f\"workers {d['workers']}: {d['images_per_s']:>10.0f} images/s\")"
  done
done
echo
echo "== fit resnet50 3x224x224 --gpu h100, end to end (20 runs)"
python3 - "$B" <<'PY'
import subprocess, sys, time
b = sys.argv[1]
t = []
for _ in range(20):
    s = time.perf_counter()
    subprocess.run([b, "fit", "resnet50", "--input", "3x224x224", "--gpu", "h100"], stdout=subprocess.DEVNULL, check=True)
    t.append((time.perf_counter() - s) * 1e3)
t.sort()
print(f"median {t[10]:.1f} ms, min {t[0]:.1f} ms, max {t[-1]:.1f} ms")
PY
