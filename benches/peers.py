#!/usr/bin/env python3
"""Times the peers on the six standard workloads (shared/workloads.md), float32.

JAX: jax.jit(jax.vmap(jax.grad(f))) with the shared inputs broadcast (in_axes None).
NumPy: the closed form, vectorized over the batch (batched matmul / einsum).

Prints one JSON object per line: workload, tool, device, batch, median_s (seconds per whole
batch, data resident, after warm-up; JAX waits with block_until_ready). Compare with
`matgrad bench --workloads --json`, run on the same machine in the same session.

With --matgrad PATH, matgrad's own `bench` of the same workload runs beside the peers,
interleaved (workload by workload, --rounds times: a shared, noisy machine then slows every
tool alike), and a summary gives each tool's median over the rounds and matgrad's speed-up
over the faster peer.

Usage: python3 benches/peers.py [--tools jax,numpy] [--jax-device cpu|gpu] [--samples 20]
                                [--workloads W1,W3] [--matgrad target/release/matgrad
                                [--matgrad-device cpu|gpu] [--rounds 3]]
Optional; not run by CI. Needs numpy, and jax for the JAX rows.
"""

import argparse
import json
import statistics
import subprocess
import time

import numpy as np

WORKLOADS = ["W1 lsq-shared", "W2 quadform-matrix", "W3 lsq-per-item", "W4 logdet",
             "W5 trace", "W6 logistic"]
BATCH = {"W1 lsq-shared": 65536, "W2 quadform-matrix": 65536, "W3 lsq-per-item": 1048576,
         "W4 logdet": 262144, "W5 trace": 8192, "W6 logistic": 16384}


def matgrad_seconds(binary, workload, device, samples):
    """matgrad's median (compute only) for `workload`, from `matgrad bench --workloads`."""
    out = subprocess.run([binary, "bench", "--workloads", "--only", workload.split()[0],
                          "--device", device, "--json", "--samples", str(samples),
                          "--no-ceilings"], check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[0])["median_s"]


def inputs(workload, batch, seed=20261122):
    """Standard normal entries; W4's X = M M'/8 + I; W6's y in {-1, +1}."""
    rng = np.random.default_rng(seed)
    n = lambda *shape: rng.standard_normal(shape).astype(np.float32)
    if workload == "W1 lsq-shared":
        return dict(x=n(batch, 64), A=n(64, 64), b=n(64))
    if workload == "W2 quadform-matrix":
        return dict(X=n(batch, 16, 16), C=n(16, 16), a=n(16))
    if workload == "W3 lsq-per-item":
        return dict(x=n(batch, 8), A=n(batch, 8, 8), b=n(batch, 8))
    if workload == "W4 logdet":
        m = n(batch, 8, 8)
        return dict(X=(m @ m.transpose(0, 2, 1) / 8 + np.eye(8, dtype=np.float32)))
    if workload == "W5 trace":
        return dict(X=n(batch, 32, 32), A=n(32, 32), B=n(32, 32))
    if workload == "W6 logistic":
        return dict(w=n(batch, 64), X=n(256, 64), y=np.sign(n(256)) + (n(256) == 0))
    raise ValueError(workload)


def numpy_closed_form(workload):
    if workload == "W1 lsq-shared":
        return lambda x, A, b: 2 * (x @ A.T + b) @ A
    if workload == "W2 quadform-matrix":
        def g(X, C, a):
            v = (X @ a) @ (C + C.T).T
            return v[:, :, None] * a[None, None, :]
        return g
    if workload == "W3 lsq-per-item":
        def g(x, A, b):
            r = np.einsum("bij,bj->bi", A, x) + b
            return 2 * np.einsum("bij,bi->bj", A, r)
        return g
    if workload == "W4 logdet":
        return lambda X: np.linalg.inv(X).transpose(0, 2, 1)
    if workload == "W5 trace":
        return lambda X, A, B: A.T @ X @ B.T + A @ X @ B
    if workload == "W6 logistic":
        def g(w, X, y):
            z = w @ X.T
            return -(y / (1 + np.exp(y * z))) @ X
        return g
    raise ValueError(workload)


def jax_gradient(workload):
    import jax
    import jax.numpy as jnp

    if workload == "W1 lsq-shared":
        f, axes = (lambda x, A, b: jnp.sum((A @ x + b) ** 2)), (0, None, None)
    elif workload == "W2 quadform-matrix":
        f, axes = (lambda X, C, a: a @ X.T @ C @ X @ a), (0, None, None)
    elif workload == "W3 lsq-per-item":
        f, axes = (lambda x, A, b: jnp.sum((A @ x + b) ** 2)), (0, 0, 0)
    elif workload == "W4 logdet":
        f, axes = (lambda X: jnp.linalg.slogdet(X)[1]), (0,)
    elif workload == "W5 trace":
        f, axes = (lambda X, A, B: jnp.trace(A @ X @ B @ X.T)), (0, None, None)
    elif workload == "W6 logistic":
        f, axes = (lambda w, X, y: jnp.sum(jnp.log(1 + jnp.exp(-y * (X @ w))))), (0, None, None)
    else:
        raise ValueError(workload)
    return jax.jit(jax.vmap(jax.grad(f), in_axes=axes))


def median_seconds(run, samples):
    run()  # warm-up (and, for JAX, compilation)
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tools", default="jax,numpy")
    p.add_argument("--jax-device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--workloads", default=",".join(w.split()[0] for w in WORKLOADS),
                   help="ids, e.g. W1,W4")
    p.add_argument("--matgrad", help="path of the matgrad binary to time beside the peers")
    p.add_argument("--matgrad-device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--rounds", type=int, default=1)
    args = p.parse_args()
    wanted = set(args.workloads.split(","))
    tools = args.tools.split(",")
    seen = {}  # (workload, tool) -> medians, one per round

    def report(workload, tool, device, batch, s):
        seen.setdefault((workload, tool), []).append(s)
        print(json.dumps(dict(workload=workload, tool=tool, device=device, batch=batch,
                              median_s=s)), flush=True)

    for _ in range(args.rounds):
        for workload in WORKLOADS:
            if workload.split()[0] not in wanted:
                continue
            batch = BATCH[workload]
            data = inputs(workload, batch)
            if args.matgrad:
                s = matgrad_seconds(args.matgrad, workload, args.matgrad_device, args.samples)
                report(workload, "matgrad", args.matgrad_device, batch, s)
            if "numpy" in tools:
                g = numpy_closed_form(workload)
                s = median_seconds(lambda: g(**data), args.samples)
                report(workload, "numpy closed form", "cpu", batch, s)
            if "jax" in tools:
                import jax
                device = jax.devices(args.jax_device)[0]
                g = jax_gradient(workload)
                # Positional, in the order of the function's parameters (vmap's in_axes).
                on_device = [jax.device_put(v, device) for v in data.values()]
                s = median_seconds(lambda: g(*on_device).block_until_ready(), args.samples)
                report(workload, "jax jit(vmap(grad))", str(device), batch, s)
    if args.matgrad:
        for workload in WORKLOADS:
            if (workload, "matgrad") not in seen:
                continue
            medians = {tool: statistics.median(v) for (w, tool), v in seen.items()
                       if w == workload}
            ours = medians.pop("matgrad")
            best_tool = min(medians, key=medians.get) if medians else None
            summary = dict(summary=workload, rounds=args.rounds, matgrad_s=ours,
                           **{f"{t}_s": v for t, v in medians.items()})
            if best_tool:
                summary["speed_up_over_faster_peer"] = medians[best_tool] / ours
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
