"""The Python package on one process: values against NumPy closed forms and the CLI, every
error path, input layouts and dtypes, pickling, the GIL, devices and minimize."""

import pickle
import subprocess
import threading
import time

import numpy as np
import pytest

import matgrad
from conftest import compile_on, minimize_on, relative_error

LSQ = "A: matrix(m,n); x: vector(n); b: vector(m); (A*x+b)'*(A*x+b)"
DEVICES = ["reference", "cpu", "gpu", "all"]


def lsq_data(rng, m=12, n=5, items=37):
    A = rng.standard_normal((m, n))
    b = rng.standard_normal(m)
    xs = rng.standard_normal((items, n))
    return A, b, xs


def lsq_grad(A, b, xs):
    return 2 * (A.T @ (xs @ A.T + b).T).T


def tolerance(device):
    return 1e-12 if device == "reference" else 2e-5


def test_formulas_print_as_a_person_would():
    f = matgrad.compile("(A*x+b)'*(A*x+b)", wrt="x")
    assert f.formula == "2*A'*(A*x+b)"
    assert "ᵀ" in f.unicode
    assert "\\top" in f.latex or "^T" in f.latex or "'" in f.latex
    assert sorted(f.inputs) == ["A", "b", "x"]
    g = matgrad.compile("a: vector; C: matrix; a'*X'*C*X*a", wrt="X")
    assert g.formula == "(C+C')*X*a*a'"


@pytest.mark.parametrize("device", DEVICES)
def test_grad_matches_the_closed_form(device, rng):
    f = compile_on(device, LSQ, "x")
    A, b, xs = lsq_data(rng)
    for dtype in (np.float32, np.float64):
        # The reference computes exactly on what it is given: float32 inputs, rounded.
        A_, b_, xs_ = (v.astype(dtype) for v in (A, b, xs))
        expected = lsq_grad(*(v.astype(np.float64) for v in (A_, b_, xs_)))
        g = f.grad(A=A_, x=xs_, b=b_)
        assert g.shape == (37, 5)
        assert g.dtype == (np.float64 if device == "reference" else np.float32)
        assert relative_error(g, expected) < tolerance(device)


@pytest.mark.parametrize("device", DEVICES)
def test_value_hessian_and_hessian_vector_products(device, rng):
    f = compile_on(device, LSQ, "x")
    A, b, xs = lsq_data(rng, 9, 4, 11)
    value, g = f.value_and_grad(A=A, x=xs, b=b)
    residual = xs @ A.T + b
    assert value.shape == (11,)
    assert relative_error(value, (residual**2).sum(axis=1)) < tolerance(device)
    assert relative_error(g, lsq_grad(A, b, xs)) < tolerance(device)
    H = f.hessian(A=A, x=xs, b=b)
    assert H.shape == (11, 4, 4)
    assert relative_error(H, np.broadcast_to(2 * A.T @ A, (11, 4, 4))) < tolerance(device)
    v = rng.standard_normal((11, 4))
    assert relative_error(f.hvp(v, A=A, x=xs, b=b), v @ (2 * A.T @ A)) < tolerance(device)


def test_the_logistic_gradient_matches_numpy(rng):
    program = "X: matrix(32,8); y: vector(32); w: vector(8); sum(log(vector(1)+exp(-y.*(X*w))))"
    f = matgrad.compile(program, wrt="w", device="cpu")
    X = rng.standard_normal((32, 8))
    y = np.sign(rng.standard_normal(32))
    ws = rng.standard_normal((100, 8))
    margins = y * (ws @ X.T)
    expected = -(y / (1 + np.exp(margins))) @ X
    assert relative_error(f.grad(X=X, y=y, w=ws), expected) < 2e-5


def test_results_agree_with_the_command_line(rng, tmp_path, cli):
    A, b, xs = lsq_data(rng, 6, 3, 9)
    inputs = tmp_path / "in.npz"
    np.savez(inputs, A=A, b=b, x=xs)
    out = tmp_path / "grad.npy"
    subprocess.run(
        [cli, "eval", LSQ, "--wrt", "x", "--inputs", inputs, "--out", out, "--device", "cpu"],
        check=True,
        capture_output=True,
    )
    from_cli = np.load(out)
    from_python = matgrad.compile(LSQ, "x", device="cpu").grad(A=A, x=xs, b=b)
    assert from_cli.shape == from_python.shape
    assert relative_error(from_python, from_cli) < 1e-6


def test_layouts_dtypes_and_array_likes_give_the_same_result(rng):
    f = matgrad.compile(LSQ, "x", device="cpu")
    A, b, xs = lsq_data(rng, 8, 6, 20)
    expected = lsq_grad(A, b, xs)
    variants = {
        "float32": dict(A=A.astype(np.float32), x=xs.astype(np.float32), b=b.astype(np.float32)),
        "fortran": dict(A=np.asfortranarray(A), x=np.asfortranarray(xs), b=b),
        "strided": dict(A=np.repeat(A, 2, axis=1)[:, ::2], x=np.repeat(xs, 3, axis=0)[::3], b=b),
        "lists": dict(A=A.tolist(), x=xs.tolist(), b=b.tolist()),
        "ints": dict(A=np.round(A * 4).astype(np.int64), x=xs, b=b),
    }
    for name, inputs in variants.items():
        g = f.grad(**inputs)
        want = expected if name != "ints" else lsq_grad(np.round(A * 4), b, xs)
        assert relative_error(g, want) < 2e-5, name

    class HostArray:
        """Anything with __array__ (a PyTorch CPU tensor, a JAX array on the host)."""

        def __init__(self, a):
            self.a = a

        def __array__(self, dtype=None, copy=None):
            return self.a

    g = f.grad(A=HostArray(A), x=HostArray(xs), b=HostArray(b))
    assert relative_error(g, expected) < 2e-5


def test_the_executor_and_its_notes_are_kept(rng):
    A, b, xs = lsq_data(rng, 4, 3, 6)
    f = matgrad.compile(LSQ, "x", device="cpu")
    f.grad(A=A, x=xs, b=b)
    assert f.executor == "cpu" and f.notes == []
    g = matgrad.compile(LSQ, "x", device="auto", adapter=999)  # no such adapter: the CPU
    g.grad(A=A, x=xs, b=b)
    assert g.executor == "cpu"
    assert any("CPU path" in n for n in g.notes), g.notes


def test_a_batch_of_one_and_shared_inputs_alone(rng):
    f = matgrad.compile(LSQ, "x", device="cpu")
    A, b, xs = lsq_data(rng, 5, 2, 1)
    assert f.grad(A=A, x=xs, b=b).shape == (1, 2)
    single = f.grad(A=A, x=xs[0], b=b)
    assert single.shape == (2,)
    assert relative_error(single, lsq_grad(A, b, xs)[0]) < 2e-5


def test_errors_are_exceptions_that_point_at_the_problem(rng):
    assert issubclass(matgrad.ProgramError, ValueError)
    assert issubclass(matgrad.InputError, ValueError)
    with pytest.raises(matgrad.ProgramError) as e:
        matgrad.compile("(A*x+b)'*(A*x+", wrt="x")
    assert "^" in str(e.value)
    with pytest.raises(matgrad.ProgramError, match="y"):
        matgrad.compile(LSQ, wrt="y")
    f = matgrad.compile(LSQ, "x", device="cpu")
    A, b, xs = lsq_data(rng, 4, 3, 2)
    with pytest.raises(matgrad.InputError, match="`b`"):
        f.grad(A=A, x=xs, b=b[:3])
    with pytest.raises(matgrad.InputError, match="no array for variable `b`"):
        f.grad(A=A, x=xs)
    with pytest.raises(matgrad.InputError, match="batch size"):
        g = matgrad.compile(LSQ, "x", device="cpu")
        g.grad(A=np.stack([A] * 3), x=xs, b=b)
    with pytest.raises(TypeError, match="complex"):
        f.grad(A=A.astype(complex), x=xs, b=b)
    with pytest.raises(TypeError, match="not numeric"):
        f.grad(A=np.array([["a"] * 3] * 4), x=xs, b=b)
    with pytest.raises(ValueError, match="device"):
        matgrad.compile(LSQ, "x", device="tpu")
    with pytest.raises(matgrad.NoGpuError):
        matgrad.compile(LSQ, "x", device="gpu", adapter=999)
    with pytest.warns(RuntimeWarning, match="name no variable"):
        f.grad(A=A, x=xs, b=b, z=b)


def test_sizes_past_memory_are_refused_and_jacobians_come_with_values():
    # A 200 000-entry x is 0.8 MB, its Hessian 320 GB: refused before anything is allocated.
    f = matgrad.compile("x: vector(n); (x'*x)^2", "x", device="cpu")
    assert issubclass(matgrad.PlanError, ValueError)
    with pytest.raises(matgrad.PlanError, match="GB"):
        f.hessian(x=np.zeros(200_000, dtype=np.float32))
    jacobian = matgrad.compile("A: matrix(3,2); A*x", "x", device="cpu")
    A = np.arange(6.0).reshape(3, 2)
    J = jacobian.grad(A=A, x=np.ones(2))
    assert J.shape == (2, 3) and np.array_equal(J, A.T)  # the gradient layout: dy_j/dx_i
    value, J = jacobian.value_and_grad(A=A, x=np.ones((4, 2)))
    assert value.shape == (4, 3) and np.array_equal(value[0], A @ np.ones(2))
    assert J.shape == (4, 2, 3)


def test_functions_pickle_and_compile_once_per_process(rng):
    f = matgrad.compile(LSQ, "x", device="cpu")
    g = pickle.loads(pickle.dumps(f))
    assert g is f  # the same arguments in one process: derived once
    A, b, xs = lsq_data(rng, 6, 3, 4)
    assert np.array_equal(g.grad(A=A, x=xs, b=b), f.grad(A=A, x=xs, b=b))
    state = pickle.dumps(matgrad.compile(LSQ, "x", device="reference"))
    h = pickle.loads(state)
    assert h.device == "reference" and h.formula == "2*A'*(A*x+b)"


def test_a_call_releases_the_gil(rng):
    """While one thread is inside a long call, another thread keeps running Python."""
    matgrad.set_threads(1)
    try:
        f = matgrad.compile(
            "A: matrix(64,64); x: vector(64); b: vector(64); (A*x+b)'*(A*x+b)", "x", device="reference"
        )
        A = rng.standard_normal((64, 64))
        b = rng.standard_normal(64)
        xs = rng.standard_normal((40000, 64))
        stamps = []
        inside = threading.Event()
        done = threading.Event()
        timing = {}

        def work():
            inside.set()
            start = time.perf_counter()
            f.grad(A=A, x=xs, b=b)
            timing["seconds"] = time.perf_counter() - start
            timing["window"] = (start, time.perf_counter())
            done.set()

        worker = threading.Thread(target=work)
        worker.start()
        inside.wait()
        while not done.is_set():
            stamps.append(time.perf_counter())
        worker.join()
        lo, hi = timing["window"]
        during = [t for t in stamps if lo <= t <= hi]
        assert timing["seconds"] > 0.2, "the call is too short to tell"
        gaps = np.diff([lo] + during + [hi])
        # Holding the GIL would leave one gap as long as the call.
        assert gaps.max() < 0.5 * timing["seconds"], (gaps.max(), timing["seconds"])
    finally:
        matgrad.set_threads(0)


def test_devices_are_listed_with_their_numbers():
    adapters = matgrad.devices()
    assert isinstance(adapters, list)
    for k, a in enumerate(adapters):
        assert a["index"] == k and isinstance(a["name"], str)


def test_explain_describes_the_plan():
    f = matgrad.compile(LSQ, "x")
    text = f.explain(batched=["x"], dims={"m": 64, "n": 16})
    assert "derivative: 2*A'*(A*x+b)" in text
    with pytest.raises(matgrad.ProgramError, match="no dimension"):
        f.explain(dims={"q": 3})


@pytest.mark.parametrize("device", ["reference", "cpu", "gpu"])
def test_minimize_ridge_matches_the_closed_form(rng, device):
    program = "A: matrix(32,8); b: vector(32); x: vector(8); norm2(A*x-b)^2 + 0.1*x'*x"
    A = rng.standard_normal((32, 8))
    bs = rng.standard_normal((50, 32))
    expected = np.linalg.solve(A.T @ A + 0.1 * np.eye(8), A.T @ bs.T).T
    tol = 1e-8 if device == "reference" else 1e-3
    r = minimize_on(device, program, "x", A=A, b=bs)
    assert r.success and r.x.shape == (50, 8)
    assert relative_error(r.x, expected) < tol, device
    assert (r.status == 0).all() and r.iterations.max() <= 3
    # Only the GPU moves data between host and device, and per round only its counters.
    if device == "gpu":
        assert r.transfer_bytes["round_max"] <= 16 + 4 * 16 + 4 * 36 + 64 * 8, r.transfer_bytes
    else:
        assert r.transfer_bytes is None


def test_minimize_with_bounds_satisfies_kkt(rng):
    program = "A: matrix(24,6); b: vector(24); x: vector(6); norm2(A*x-b)^2"
    A = np.abs(rng.standard_normal((24, 6)))
    bs = rng.standard_normal((20, 24)) + 1
    r = matgrad.minimize(program, "x", A=A, b=bs, lower=0.0, device="reference")
    assert r.success
    x = r.x
    grad = 2 * ((x @ A.T - bs) @ A)
    assert (x >= 0).all()
    # KKT: zero gradient where free, non-negative where held at the bound.
    free = x > 1e-9
    assert np.abs(grad[free]).max() < 1e-6
    assert grad[~free].min() > -1e-6


def test_minimize_errors_are_exceptions(rng):
    with pytest.raises(matgrad.ProgramError, match="scalar"):
        matgrad.minimize("x: vector(3); x", "x", x=np.zeros(3))
    with pytest.raises(matgrad.InputError):
        matgrad.minimize(
            "x: vector(3); x'*x", "x", x=np.zeros(3), lower=np.ones(3), upper=np.zeros(3)
        )
    with pytest.raises(matgrad.NoGpuError, match="no-such-adapter"):
        matgrad.minimize(
            "x: vector(3); x'*x", "x", x=np.zeros(3), device="gpu", adapter="no-such-adapter"
        )
    with pytest.raises(ValueError, match="adapter"):
        matgrad.minimize("x: vector(3); x'*x", "x", x=np.zeros(3), device="cpu", adapter=0)
