#!/usr/bin/env python3
"""Times matgrad's Python package: its call overhead, and its gradients against JAX.

1. Overhead (W3's program, 8×8 per item, at batches 1, 64 and 65 536): the Python call
   `f.grad(...)` (data in NumPy, result a new NumPy array) against the Rust executor alone
   (`matgrad bench --batch B`: the plan run on resident data) and against the command line
   (`matgrad eval`, a whole process: start, `.npz` read, `.npy` written).
2. The six workloads (shared/workloads.md, batches divided by --scale): `f.grad` against
   `jax.jit(jax.vmap(jax.grad(f)))` (benches/peers.py's) in the same Python process,
   interleaved --rounds times, each answer checked against the NumPy closed form first.

Prints one JSON object per line. Medians of --samples timed calls after one warm-up.
Usage: python benches/python_calls.py --matgrad target/release/matgrad [--scale 16]
       [--samples 20] [--rounds 3] [--device cpu] [--skip-jax]
Optional; not run by CI. Needs the matgrad package (pip install ./python), and jax.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (the workloads' inputs, closed forms and JAX gradients)

import matgrad  # noqa: E402

PROGRAMS = {
    "W1 lsq-shared": ("A: matrix(64,64); x: vector(64); b: vector(64); (A*x+b)'*(A*x+b)", "x"),
    "W2 quadform-matrix": ("C: matrix(16,16); X: matrix(16,16); a: vector(16); a'*X'*C*X*a", "X"),
    "W3 lsq-per-item": ("A: matrix(8,8); x: vector(8); b: vector(8); (A*x+b)'*(A*x+b)", "x"),
    "W4 logdet": ("X: matrix(8,8); logdet(X)", "X"),
    "W5 trace": ("A: matrix(32,32); B: matrix(32,32); X: matrix(32,32); tr(A*X*B*X')", "X"),
    "W6 logistic": (
        "X: matrix(256,64); y: vector(256); w: vector(64); sum(log(vector(1)+exp(-y.*(X*w))))",
        "w",
    ),
}


def relative_error(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def overhead(binary, device, samples):
    program, wrt = PROGRAMS["W3 lsq-per-item"]
    f = matgrad.compile(program, wrt, device=device)
    for batch in (1, 64, 65536):
        data = peers.inputs("W3 lsq-per-item", batch)
        python_s = peers.median_seconds(lambda: f.grad(**data), samples)
        out = subprocess.run(
            [binary, "bench", program, "--wrt", wrt, "--batch", str(batch), "--batched", "A,x,b",
             "--device", device, "--json", "--samples", str(samples), "--no-ceilings"],
            check=True, capture_output=True, text=True,
        ).stdout
        rust_s = json.loads(out.splitlines()[0])["median_s"]
        with tempfile.TemporaryDirectory() as tmp:
            npz = os.path.join(tmp, "in.npz")
            np.savez(npz, **data)
            command = [binary, "eval", program, "--wrt", wrt, "--inputs", npz,
                       "--out", os.path.join(tmp, "g.npy"), "--device", device]
            cli_s = peers.median_seconds(
                lambda: subprocess.run(command, check=True, capture_output=True), max(3, samples // 4)
            )
        print(json.dumps(dict(part="overhead", batch=batch, device=device, python_call_s=python_s,
                              rust_executor_s=rust_s, cli_eval_s=cli_s,
                              python_over_rust_s=python_s - rust_s)), flush=True)


def workloads(device, scale, samples, rounds, jax_too):
    medians = {}
    for _ in range(rounds):
        for workload, (program, wrt) in PROGRAMS.items():
            batch = max(1, peers.BATCH[workload] // scale)
            data = peers.inputs(workload, batch)
            f = matgrad.compile(program, wrt, device=device)
            expected = peers.numpy_closed_form(workload)(**{k: v.astype(np.float64) for k, v in data.items()})
            error = relative_error(f.grad(**data), expected)
            if error > 1e-3:
                raise SystemExit(f"{workload}: matgrad's gradient is off by {error:.2e}")
            ours = peers.median_seconds(lambda: f.grad(**data), samples)
            medians.setdefault((workload, "matgrad"), []).append(ours)
            row = dict(part="workload", workload=workload, batch=batch, device=device, matgrad_s=ours)
            if jax_too:
                import jax

                g = peers.jax_gradient(workload)
                on_device = [jax.device_put(v) for v in data.values()]
                error = relative_error(np.asarray(g(*on_device)), expected)
                if error > 1e-3:
                    raise SystemExit(f"{workload}: JAX's gradient is off by {error:.2e}")
                theirs = peers.median_seconds(lambda: g(*on_device).block_until_ready(), samples)
                medians.setdefault((workload, "jax"), []).append(theirs)
                row["jax_s"] = theirs
            print(json.dumps(row), flush=True)
    for workload in PROGRAMS:
        ours = statistics.median(medians[(workload, "matgrad")])
        summary = dict(summary=workload, rounds=rounds, matgrad_s=ours)
        if jax_too:
            theirs = statistics.median(medians[(workload, "jax")])
            summary.update(jax_s=theirs, speed_up_over_jax=theirs / ours)
        print(json.dumps(summary), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--matgrad", required=True, help="the matgrad binary (for bench and eval)")
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--scale", type=int, default=16)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--skip-jax", action="store_true")
    args = p.parse_args()
    overhead(args.matgrad, args.device, args.samples)
    workloads(args.device, args.scale, args.samples, args.rounds, not args.skip_jax)


if __name__ == "__main__":
    t = time.time()
    main()
    print(json.dumps(dict(total_s=time.time() - t)))
