#!/usr/bin/env bash
# On a machine with a real GPU: build, check the six workloads, time every device and the
# minimize workloads, and time JAX on CUDA; every raw result lands in one folder.
# Usage: benches/gpu-check.sh [OUT_DIR]   (about 8 minutes)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check-results}"
mkdir -p "$out"
cargo build --release 2>&1 | tail -3
bin=target/release/matgrad
$bin devices --json > "$out/devices.json" 2>&1
for w in "A: matrix(64,64); x: vector(64); b: vector(64); (A*x+b)'*(A*x+b)|x" \
         "X: matrix(8,8); logdet(X)|X" \
         "X: matrix(256,64); y: vector(256); w: vector(64); sum(log(vector(1)+exp(-y.*(X*w))))|w"; do
  timeout 120 $bin check "${w%|*}" --wrt "${w#*|}" --batch 64 --json >> "$out/check.jsonl" 2>&1
done
timeout 240 $bin bench --workloads --device all --json --samples 10 > "$out/bench-workloads.jsonl" 2>&1
timeout 120 $bin bench --minimize-workloads --samples 3 --json > "$out/bench-minimize.jsonl" 2>&1
if python3 -c "import jax" 2>/dev/null; then
  timeout 120 python3 benches/peers.py --tools jax --jax-device gpu --samples 10 > "$out/peers-jax-gpu.jsonl" 2>&1
  timeout 120 python3 benches/peers_minimize.py --jax-device gpu --tools jax-newton,jaxopt > "$out/peers-minimize-gpu.jsonl" 2>&1
fi
ls -l "$out"
