#!/usr/bin/env python3
"""Times the peers on the batch-optimization workloads O1-O5 (shared/workloads.md), float32.

Peers, as a user would otherwise pick them:
- JAX Newton: jit(vmap(k full Newton steps)), jax.hessian plus a solve, with k the smallest of
  1, 2, 3, 4, 6, 8, 12, 16, 24, 32 whose answer passes the check (O1, O2, O3, O5);
- jaxopt.LBFGS under vmap (O1, O2, O3, O5; its own stopping rule, tol 1e-4);
- SciPy's L-BFGS-B (float64, bounds for O4) looped over a sample of items, extrapolated.
Every answer is checked first: the worst item's projected gradient, computed in float64 from
the closed form, must be at most 1e-3 * max(1, |f|); a peer that fails is reported with
"converged": false and its time does not count. matgrad runs beside them at the same batch
size (`matgrad bench --minimize-workloads --json`), with its own float64 check.

The data are drawn as the workloads page says, with NumPy's generator: the same distributions
as matgrad's inputs, not the same numbers.

Usage: python3 benches/peers_minimize.py [--scale 16] [--samples 3] [--workloads O1,O2]
                                         [--matgrad target/release/matgrad]
                                         [--matgrad-device cpu|gpu]
                                         [--jax-device cpu|gpu] [--scipy-items 256]
Optional; not run by CI. Needs numpy, scipy, jax and jaxopt.
"""

import argparse
import json
import subprocess
import time

import numpy as np

BATCH = {"O1": 65536, "O2": 65536, "O3": 262144, "O4": 65536, "O5": 65536}
NAMES = {"O1": "O1 ridge-shared", "O2": "O2 logistic-per-item", "O3": "O3 robust-fit",
         "O4": "O4 nnls", "O5": "O5 precision-mle"}
NEWTON_STEPS = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32]


def inputs(w, batch, rng):
    n = lambda *shape: rng.standard_normal(shape)
    if w == "O1":
        return dict(A=n(64, 16), b=n(batch, 64)), "x", 16
    if w == "O2":
        X = n(batch, 64, 16)
        y = np.sign(np.einsum("bij,bj->bi", X, n(batch, 16)) + 0.5 * n(batch, 64))
        return dict(X=X, y=np.where(y == 0, 1.0, y)), "w", 16
    if w == "O3":
        return dict(A=n(64, 8), b=3 * n(batch, 64)), "x", 8
    if w == "O4":
        return dict(A=np.abs(n(64, 16)), b=n(batch, 64) + 1), "x", 16
    M = n(batch, 8, 16)
    return dict(C=M @ M.transpose(0, 2, 1) / 16 + 0.1 * np.eye(8)), "S", 64


def value_and_gradient64(w, x, d):
    """f and the projected gradient per item, float64, from the closed forms."""
    x = np.asarray(x, dtype=np.float64)
    if w in ("O1", "O4"):
        r = x @ d["A"].T - d["b"]
        f = np.sum(r * r, axis=1)
        g = 2 * r @ d["A"]
        if w == "O1":
            f, g = f + 0.1 * np.sum(x * x, axis=1), g + 0.2 * x
        else:
            g = x - np.maximum(x - g, 0.0)
        return f, g
    if w == "O2":
        m = np.einsum("bij,bj->bi", d["X"], x) * d["y"]
        f = np.sum(np.logaddexp(0, -m), axis=1) + 0.5 * np.sum(x * x, axis=1)
        g = -np.einsum("bij,bi->bj", d["X"], d["y"] / (1 + np.exp(m))) + x
        return f, g
    if w == "O3":
        r = x @ d["A"].T - d["b"]
        s = np.sqrt(r * r + 1)
        return np.sum(s, axis=1), (r / s) @ d["A"]
    S = x.reshape(-1, 8, 8)
    S = (S + S.transpose(0, 2, 1)) / 2
    sign, logdet = np.linalg.slogdet(S)
    f = np.where(sign > 0, -logdet, np.inf) + np.einsum("bij,bji->b", S, d["C"])
    g = d["C"] - np.linalg.inv(S)
    return f, g.reshape(len(S), -1)


def worst(w, x, d):
    f, g = value_and_gradient64(w, x, d)
    r = np.max(np.abs(g), axis=1) / np.maximum(1.0, np.abs(f))
    return float(np.max(np.where(np.isfinite(r), r, np.inf)))


def jax_objective(w):
    import jax.numpy as jnp
    if w == "O1":
        return lambda x, A, b: jnp.sum((A @ x - b) ** 2) + 0.1 * x @ x, ("A", "b"), (None, 0)
    if w == "O2":
        return (lambda x, X, y: jnp.sum(jnp.logaddexp(0.0, -y * (X @ x))) + 0.5 * x @ x,
                ("X", "y"), (0, 0))
    if w == "O3":
        return lambda x, A, b: jnp.sum(jnp.sqrt((A @ x - b) ** 2 + 1)), ("A", "b"), (None, 0)
    def f(s, C):
        # Outside the positive definite cone the objective is +inf, as a user writes a
        # domain for a solver (slogdet's |det| alone is finite there, and unbounded below).
        sign, logdet = jnp.linalg.slogdet(s.reshape(8, 8))
        return jnp.where(sign > 0, -logdet + jnp.trace(s.reshape(8, 8) @ C), jnp.inf)
    return f, ("C",), (0,)


def start(w, batch, n):
    if w == "O5":
        return np.tile(np.eye(8, dtype=np.float32).reshape(1, 64), (batch, 1))
    return np.zeros((batch, n), dtype=np.float32)


def median_seconds(run, samples):
    run()
    times = []
    for _ in range(samples):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def jax_newton(w, d, n, batch, samples, device):
    import jax
    import jax.numpy as jnp
    f, names, axes = jax_objective(w)
    data = [jax.device_put(d[k].astype(np.float32), device) for k in names]
    x0 = jax.device_put(start(w, batch, n), device)
    for k in NEWTON_STEPS:
        def solve(x, *args, k=k):
            def step(_, x):
                g = jax.grad(f)(x, *args)
                return x - jnp.linalg.solve(jax.hessian(f)(x, *args), g)
            return jax.lax.fori_loop(0, k, step, x)
        run = jax.jit(jax.vmap(solve, in_axes=(0, *axes)))
        x = run(x0, *data).block_until_ready()
        if worst(w, np.asarray(x), d) <= 1e-3:
            s = median_seconds(lambda: run(x0, *data).block_until_ready(), samples)
            return dict(seconds=s, converged=True, steps=k)
    return dict(seconds=None, converged=False, steps=NEWTON_STEPS[-1])


def jaxopt_lbfgs(w, d, n, batch, samples, device):
    import jax
    import jaxopt
    f, names, axes = jax_objective(w)
    data = [jax.device_put(d[k].astype(np.float32), device) for k in names]
    x0 = jax.device_put(start(w, batch, n), device)
    solver = jaxopt.LBFGS(fun=f, maxiter=500, tol=1e-4)
    run = jax.jit(jax.vmap(lambda x, *args: solver.run(x, *args).params, in_axes=(0, *axes)))
    x = run(x0, *data).block_until_ready()
    ok = worst(w, np.asarray(x), d) <= 1e-3
    s = median_seconds(lambda: run(x0, *data).block_until_ready(), samples) if ok else None
    return dict(seconds=s, converged=ok)


def scipy_lbfgsb(w, d, n, batch, items):
    from scipy.optimize import minimize
    items = min(items, batch)
    xs = np.zeros((items, n))
    t = time.perf_counter()
    for i in range(items):
        one = {k: (v[i:i + 1] if v.shape[0] == batch else v) for k, v in d.items()}
        fg = lambda x: (lambda f, g: (f[0], g[0]))(*value_and_gradient64(w, x[None], one))
        if w == "O4":
            # The plain gradient for the solver (its own projection handles the bound).
            def fg(x, one=one):
                r = one["A"] @ x - one["b"][0]
                return r @ r, 2 * one["A"].T @ r
        x0 = start(w, 1, n)[0].astype(np.float64)
        bounds = [(0, None)] * n if w == "O4" else None
        xs[i] = minimize(fg, x0, jac=True, method="L-BFGS-B", bounds=bounds,
                         options=dict(maxiter=1000, gtol=1e-9, ftol=1e-12)).x
    seconds = (time.perf_counter() - t) * batch / items
    sample = {k: (v[:items] if v.shape[0] == batch else v) for k, v in d.items()}
    ok = worst(w, xs, sample) <= 1e-3
    return dict(seconds=seconds if ok else None, converged=ok, items_timed=items)


def matgrad_run(binary, w, batch, samples, device):
    out = subprocess.run([binary, "bench", "--minimize-workloads", "--only", w, "--batch",
                          str(batch), "--samples", str(samples), "--json", "--device", device],
                         capture_output=True, text=True).stdout
    line = json.loads(out.splitlines()[0])
    return dict(seconds=line["median_s"] if line["answer_checked"] else None,
                converged=line["answer_checked"], iterations_max=line["iterations_max"])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scale", type=int, default=16, help="batch sizes divided by this")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--workloads", default="O1,O2,O3,O4,O5")
    p.add_argument("--matgrad")
    p.add_argument("--matgrad-device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--jax-device", default="cpu", choices=["cpu", "gpu"])
    p.add_argument("--scipy-items", type=int, default=256)
    p.add_argument("--tools", default="jax-newton,jaxopt,scipy")
    args = p.parse_args()
    tools = args.tools.split(",")
    rng = np.random.default_rng(20261203)
    for w in args.workloads.split(","):
        batch = BATCH[w] // args.scale
        d, var, n = inputs(w, batch, rng)
        rows = {}
        ours = f"matgrad {args.matgrad_device}"
        if args.matgrad:
            rows[ours] = matgrad_run(args.matgrad, w, batch, args.samples, args.matgrad_device)
        if w != "O4" and ("jax-newton" in tools or "jaxopt" in tools):
            import jax
            device = jax.devices(args.jax_device)[0]
            if "jax-newton" in tools:
                rows["jax newton"] = jax_newton(w, d, n, batch, args.samples, device)
            if "jaxopt" in tools:
                rows["jaxopt lbfgs"] = jaxopt_lbfgs(w, d, n, batch, args.samples, device)
        if "scipy" in tools:
            rows["scipy l-bfgs-b"] = scipy_lbfgsb(w, d, n, batch, args.scipy_items)
        for tool, row in rows.items():
            print(json.dumps(dict(workload=NAMES[w], tool=tool, batch=batch, **row)), flush=True)
        timed = {t: r["seconds"] for t, r in rows.items() if r["seconds"] is not None}
        if ours in timed and len(timed) > 1:
            peers = {t: s for t, s in timed.items() if t != ours}
            best = min(peers, key=peers.get)
            print(json.dumps(dict(summary=NAMES[w], batch=batch, matgrad=ours, fastest_peer=best,
                                  speed_up=peers[best] / timed[ours])), flush=True)


if __name__ == "__main__":
    main()
