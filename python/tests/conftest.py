"""Shared fixtures: the GPU rule (a failure under CI=true, a skip with the reason elsewhere),
seeded data, and the relative error every comparison uses."""

import os
from pathlib import Path

import numpy as np
import pytest

import matgrad

ROOT = Path(__file__).resolve().parents[2]


def relative_error(a, b) -> float:
    """‖a − b‖ / max(‖b‖, 1e-30); a non-finite entry on either side is an infinite error."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def compile_on(device, program, wrt, **kw):
    """matgrad.compile on `device`; a missing GPU fails under CI=true and skips elsewhere."""
    try:
        f = matgrad.compile(program, wrt, device=device, **kw)
    except matgrad.NoGpuError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no GPU adapter: {e}")
        pytest.skip(f"no GPU adapter: {e}")
    if device == "all" and f.gpu_adapter is None:
        # `all` without an adapter is the CPU path alone: the split is what is under test.
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and no GPU adapter for device='all'")
        pytest.skip("no GPU adapter: device='all' would split nothing")
    return f


def minimize_on(device, program, wrt, **kw):
    """matgrad.minimize on `device`, with the GPU rule of :func:`compile_on`."""
    try:
        return matgrad.minimize(program, wrt, device=device, **kw)
    except matgrad.NoGpuError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and no GPU adapter: {e}")
        pytest.skip(f"no GPU adapter: {e}")


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.fixture(scope="session")
def cli():
    """The matgrad command-line binary the README's test command builds."""
    path = ROOT / "target" / "release" / "matgrad"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `cargo build --release` first")
    return path
