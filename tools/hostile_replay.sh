#!/usr/bin/env bash
# Kept as a manual check next to the tests that cover each case (crates/*/tests).
# Replays issue 13's hostile cases against a vramlab binary. Prints one line a case:
# OK / BAD with exit code, seconds and the first stderr line.
B=${1:-/work/main/target/release/vramlab}
W=$(mktemp -d /tmp/hostile.XXXX); cd "$W" || exit 1
FM=/usr/share/datasets/fashion-mnist
py() { python3 - "$@"; }
# fixtures
py <<'PY'
import struct, gzip, os
def idx(path, dims, data, gz=False):
    b = struct.pack('>BBBB', 0, 0, 8, len(dims)) + b''.join(struct.pack('>I', d) for d in dims) + data
    open(path, 'wb').write(gzip.compress(b) if gz else b)
os.makedirs('zero', exist_ok=True)
idx('zero/train-images-idx3-ubyte', [5, 0, 0], b'')
idx('zero/train-labels-idx1-ubyte', [5], bytes(5))
idx('zero/t10k-images-idx3-ubyte', [5, 0, 0], b'')
idx('zero/t10k-labels-idx1-ubyte', [5], bytes(5))
os.makedirs('empty', exist_ok=True)
idx('empty/train-images-idx3-ubyte', [0, 28, 28], b'')
idx('empty/train-labels-idx1-ubyte', [0], b'')
idx('empty/t10k-images-idx3-ubyte', [0, 28, 28], b'')
idx('empty/t10k-labels-idx1-ubyte', [0], b'')
os.makedirs('tall', exist_ok=True)
idx('tall/train-images-idx3-ubyte', [1, 1, 4000000], bytes(4000000))
idx('tall/train-labels-idx1-ubyte', [1], bytes(1))
idx('tall/t10k-images-idx3-ubyte', [1, 1, 4000000], bytes(4000000))
idx('tall/t10k-labels-idx1-ubyte', [1], bytes(1))
os.makedirs('bomb', exist_ok=True)
# header says 60000x28x28, body inflates to 2 GiB of zeros (streamed compress)
with gzip.open('bomb/train-images-idx3-ubyte.gz', 'wb', compresslevel=9) as f:
    f.write(struct.pack('>BBBB', 0, 0, 8, 3) + struct.pack('>III', 60000, 28, 28))
    z = bytes(1 << 24)
    for _ in range(128): f.write(z)
idx('bomb/train-labels-idx1-ubyte', [60000], bytes(60000))
idx('bomb/t10k-images-idx3-ubyte', [1, 28, 28], bytes(784))
idx('bomb/t10k-labels-idx1-ubyte', [1], bytes(1))
open('conv0.toml','w').write('name = "c0"\ninput = [1, 28, 28]\nlayers = [\n  { type = "Conv2d", in_channels = 1, out_channels = 0, kernel_size = 3 },\n  { type = "Flatten" },\n  { type = "Linear", in_features = 0, out_features = 10 },\n]\n')
open('lin0.toml','w').write('name = "l0"\ninput = [1, 28, 28]\nlayers = [\n  { type = "Flatten" },\n  { type = "Linear", in_features = 784, out_features = 0 },\n]\n')
open('linhuge.toml','w').write('name = "lh"\ninput = [1, 28, 28]\nlayers = [\n  { type = "Flatten" },\n  { type = "Linear", in_features = 784, out_features = 9223372036854775807 },\n]\n')
open('flatwrap.toml','w').write('name = "fw"\ninput = [1, 16, 1152921504606846977]\nlayers = [\n  { type = "Flatten" },\n  { type = "Linear", in_features = 16, out_features = 10 },\n]\n')
open('bnnan.toml','w').write('name = "bn"\ninput = [1, 28, 28]\nlayers = [\n  { type = "Conv2d", in_channels = 1, out_channels = 4, kernel_size = 3 },\n  { type = "BatchNorm2d", num_features = 4, momentum = nan },\n  { type = "Flatten" },\n  { type = "Linear", in_features = 2704, out_features = 10 },\n]\n')
import json
def row(b): return {"batch_size":b,"lr":0.001,"steps":1,"samples":b,"seconds":1.0,"images_per_s":1.0,"final_train_loss":1.0,"test_accuracy":0.5,"loss_noise":0.0,"measured_peak_bytes":1,"planned_peak_bytes":1,"loss_curve":[[b,1.0]]}
json.dump({"model":"x","dataset":"d","optimizer":"Adam()","scale_lr":"none","rows":[row(9007199254740992),row(9007199254740994)]}, open('sweep2p53.json','w'))
PY
mkdir -p fifo/a && mkfifo fifo/a/1.png
echo "resnet18 is a file" > resnet18
touch afile
case_() { # expect name timeout cmd...
  local expect=$1 name=$2 to=$3; shift 3
  local t0=$(date +%s.%N)
  timeout -s KILL "$to" "$@" >"$W/out" 2>"$W/err" </dev/null; local rc=$?
  local dt=$(printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)")
  local first=$(head -c 300 "$W/err" | head -n1)
  local verdict=OK
  if [ "$expect" = 2 ] && [ $rc -ne 2 ]; then verdict=BAD; fi
  if [ "$expect" = 0 ] && [ $rc -ne 0 ]; then verdict=BAD; fi
  if [ "$expect" = "0|2" ] && [ $rc -ne 0 ] && [ $rc -ne 2 ]; then verdict=BAD; fi
  grep -q "panicked\|RUST_BACKTRACE" "$W/err" && verdict=BAD
  [ "$expect" = 2 ] && [ "$(wc -l <"$W/err")" -gt 2 ] && verdict="BAD(lines)"
  printf '%-5s rc=%-3s %5ss %-28s %s\n' "$verdict" "$rc" "$dt" "$name" "$first"
}
case_ 2 sweep-epochs0 60 $B sweep lenet5 --data fashion-mnist --epochs 0 --batch-sizes 64
case_ 2 stats-0x0 20 $B data stats zero
case_ 2 bench-loader-0x0 20 $B bench loader --data zero
case_ 2 sweep-0-images 20 $B sweep lenet5 --data empty --batch-sizes 64
case_ 2 train-conv0 20 $B train conv0.toml --data fashion-mnist --max-steps 2
case_ 2 memory-conv0 20 $B memory conv0.toml
case_ 2 bench-lin0 20 $B bench train lin0.toml
case_ 2 memory-linhuge 20 $B memory linhuge.toml
case_ 2 memory-flatwrap 20 $B memory flatwrap.toml
case_ 2 bench-huge-batch 20 $B bench train simple_cnn -b 18014398509481984
case_ 2 info-resize-huge 20 $B data info fifo --resize 4294967295
case_ 2 show-scale-tall 20 $B data show tall --index 0 --scale 64 --out tall.png
case_ 2 stats-gzip-bomb 30 $B data stats bomb
case_ 2 fit-target-max 10 $B fit simple_cnn --memory 8GiB --target-batch 18446744073709551615
case_ "0|2" report-sweep-2p53 20 $B report simple_cnn --sweep sweep2p53.json --out r.html
case_ 2 bench-seconds-inf 10 $B bench train simple_cnn --seconds inf
case_ 2 train-threads-100k 20 $B train lenet5 --data fashion-mnist --threads 100000 --max-steps 1
case_ "0|2" fifo-folder 20 $B data info fifo
case_ 2 train-normalize-nan 20 $B train lenet5 --data fashion-mnist --normalize nan,1 --max-steps 1
case_ 2 memory-bn-nan 20 $B memory bnnan.toml
case_ 2 train-momentum-neg 20 $B train lenet5 --data fashion-mnist --optimizer sgd --momentum=-5 --max-steps 1
case_ 2 train-wd-neg 20 $B train lenet5 --data fashion-mnist --weight-decay=-100 --max-steps 1
case_ 2 train-max-steps0 20 $B train lenet5 --data fashion-mnist --max-steps 0
case_ 2 sweep-samples0 20 $B sweep lenet5 --data fashion-mnist --samples 0 --batch-sizes 64
case_ 2 fit-base-batch0 10 $B fit simple_cnn --memory 8GiB --base-batch 0
case_ 2 fit-base-lr-nan 10 $B fit simple_cnn --memory 8GiB --base-lr NaN
case_ 2 fit-memory-6 10 $B fit simple_cnn --memory 6
case_ 2 train-adam-momentum 20 $B train lenet5 --data fashion-mnist --optimizer adam --momentum 0.9 --max-steps 1
case_ 2 train-ckpt-unwritable 20 $B train lenet5 --data fashion-mnist --max-steps 20 --checkpoint /nonexistent/dir/c.safetensors
case_ 2 sweep-plotdir-file 20 $B sweep lenet5 --data fashion-mnist --batch-sizes 64 --samples 256 --plot-dir afile
case_ 0 zoo-not-shadowed 10 $B summary resnet18
case_ 2 did-you-mean 10 $B summary resnet-18
case_ 2 unknown-gpu 10 $B fit resnet50 --gpu rtx-9090
case_ 0 gpu-list 10 $B fit resnet50 --gpu rtx-3060,rtx-4090
case_ 0 fit-inference 10 $B fit resnet50 --gpu t4 --mode inference
grep -q "training with" "$W/out" && echo "BAD   fit --mode inference still says training"
# resume after max-steps
$B train lenet5 --data fashion-mnist --max-steps 50 --checkpoint c.safetensors >/dev/null 2>&1
case_ 0 resume-after-max-steps 120 $B train lenet5 --data fashion-mnist --resume c.safetensors --epochs 1 --json
grep -q '"steps"' "$W/out" && grep -o '"steps_run": *[0-9]*\|"steps": *[0-9]*' "$W/out" | head -2
# closed pipe
$B models --json 2>"$W/err" | head -c 10 >/dev/null; grep -q panicked "$W/err" && echo "BAD   closed pipe panics" || echo "OK    closed pipe"
ls -la "$W" | grep -c "tmp-" | sed 's/^/temp files left: /'
echo "workdir $W"
