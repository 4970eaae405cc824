#!/usr/bin/env bash
# On a machine with a real GPU: build, check the workloads, test the batch optimizer on the
# GPU, time every device on the evaluation and minimize workloads, and time JAX on CUDA
# beside matgrad's GPU path; every raw result lands in one folder.
# Usage: benches/gpu-check.sh [OUT_DIR]   (about 8 minutes; JAX and jaxopt are used when
# installed: the device machines reach no package index)
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu-check-results}"
mkdir -p "$out"
start=$(date +%s)
stamp() { echo "$(( $(date +%s) - start )) s: $*" | tee -a "$out/log.txt"; }
cargo build --release 2>&1 | tail -3
bin=target/release/matgrad
$bin devices --json > "$out/devices.json" 2>&1
stamp built
for w in "A: matrix(64,64); x: vector(64); b: vector(64); (A*x+b)'*(A*x+b)|x" \
         "X: matrix(8,8); logdet(X)|X" \
         "X: matrix(256,64); y: vector(256); w: vector(64); sum(log(vector(1)+exp(-y.*(X*w))))|w"; do
  timeout 120 $bin check "${w%|*}" --wrt "${w#*|}" --batch 64 --json >> "$out/check.jsonl" 2>&1
done
stamp checked
# The batch optimizer against independent answers on this GPU (the suite CI runs on lavapipe).
CI=true timeout 180 cargo test --release --test minimize > "$out/minimize-tests.txt" 2>&1
stamp "minimize tests: exit $?"
timeout 120 $bin bench --workloads --device all --json --samples 10 > "$out/bench-workloads.jsonl" 2>&1
stamp "bench workloads"
timeout 120 $bin bench --minimize-workloads --device all --samples 3 --json > "$out/bench-minimize.jsonl" 2>&1
stamp "bench minimize (cpu and gpu; transfer_bytes per solve in each line)"
if python3 -c "import jax" 2>/dev/null; then
  timeout 60 python3 benches/peers.py --tools jax --jax-device gpu --samples 10 > "$out/peers-jax-gpu.jsonl" 2>&1
  timeout 120 python3 benches/peers_minimize.py --jax-device gpu --tools jax-newton,jaxopt \
    --scale 1 --matgrad "$bin" --matgrad-device gpu > "$out/peers-minimize-gpu.jsonl" 2>&1
  stamp "JAX peers"
else
  stamp "no JAX here: peers not timed"
fi
ls -l "$out"
