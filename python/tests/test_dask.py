"""matgrad over Dask on a LocalCluster of two worker processes on loopback: results equal to
the single-process call, a worker killed mid-computation survived, bad input raised in the
client, and each worker's matgrad limited to the threads it was given."""

import os
import signal
import time

import numpy as np
import pytest

import matgrad
import matgrad.dask as mdask
from conftest import relative_error

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")

LSQ = "A: matrix(m,n); x: vector(n); b: vector(m); (A*x+b)'*(A*x+b)"


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
        silence_logs=40,
    )
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_gradients_equal_the_single_process_call(client):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((16, 8))
    b = rng.standard_normal(16)
    xs = rng.standard_normal((1000, 8)).astype(np.float32)
    f = matgrad.compile(LSQ, "x", device="cpu")
    lazy = mdask.grad(f, A=A, x=da.from_array(xs, chunks=(137, 8)), b=b)
    assert lazy.shape == (1000, 8) and lazy.chunks[0][0] == 137
    assert np.array_equal(lazy.compute(), f.grad(A=A, x=xs, b=b))
    value, grad = mdask.value_and_grad(f, A=A, x=da.from_array(xs, chunks=250), b=b)
    v1, g1 = f.value_and_grad(A=A, x=xs, b=b)
    assert np.array_equal(value.compute(), v1) and np.array_equal(grad.compute(), g1)
    H = mdask.hessian(f, A=A, x=da.from_array(xs, chunks=300), b=b).compute()
    assert H.shape == (1000, 8, 8)
    assert relative_error(H, np.broadcast_to(2 * A.T @ A, H.shape)) < 1e-5
    # Each worker ran matgrad on the one thread it was given.
    assert set(client.run(matgrad._native.threads).values()) == {1}


def test_minimize_on_the_cluster_matches_the_closed_form(client):
    rng = np.random.default_rng(4)
    program = "A: matrix(32,8); b: vector(32); x: vector(8); norm2(A*x-b)^2 + 0.1*x'*x"
    A = rng.standard_normal((32, 8))
    bs = rng.standard_normal((400, 32))
    result = mdask.minimize(program, "x", A=A, b=da.from_array(bs, chunks=100), device="reference")
    x, status = result[0].compute(), result[1].compute()
    expected = np.linalg.solve(A.T @ A + 0.1 * np.eye(8), A.T @ bs.T).T
    assert (status == 0).all()
    assert relative_error(x, expected) < 1e-8


def test_a_killed_worker_is_survived(client):
    rng = np.random.default_rng(5)
    program = "A: matrix(64,64); x: vector(64); b: vector(64); (A*x+b)'*(A*x+b)"
    A = rng.standard_normal((64, 64))
    b = rng.standard_normal(64)
    # Generated on the workers, so that the graph stays small.
    lazy_xs = da.random.default_rng(6).standard_normal((48000, 64), chunks=(1000, 64))
    xs = lazy_xs.compute()
    # The float64 reference is slow enough that blocks are still running when one worker dies.
    f = matgrad.compile(program, "x", device="reference")
    future = client.compute(mdask.grad(f, A=A, x=lazy_xs, b=b))
    deadline = time.time() + 60
    while not any(client.processing().values()):
        assert time.time() < deadline, "no block started"
        time.sleep(0.01)
    busy = next(w for w, tasks in client.processing().items() if tasks)
    pid = client.run(os.getpid, workers=[busy])[busy]
    os.kill(pid, signal.SIGKILL)
    assert not future.done(), "the computation ended before the worker was killed"
    result = future.result(timeout=300)
    assert np.array_equal(result, f.grad(A=A, x=xs, b=b))


def test_bad_input_raises_in_the_client(client):
    f = matgrad.compile(LSQ, "x", device="cpu")
    A = np.ones((16, 8))
    xs = da.ones((100, 8), chunks=50)
    with pytest.raises(matgrad.InputError, match="`b`"):
        mdask.grad(f, A=A, x=xs, b=np.ones(15))
    with pytest.raises(matgrad.InputError, match="batch size"):
        mdask.grad(f, A=A, x=xs, b=da.ones((99, 16), chunks=50))
    with pytest.raises(TypeError, match="Dask array"):
        mdask.grad(f, A=A, x=np.ones((100, 8)), b=np.ones(16))


def test_shared_inputs_are_one_graph_key_each():
    """A shared array is put in the graph once (each worker fetches it once), not into every
    block's task."""
    import pickle

    A = np.random.default_rng(8).standard_normal((64, 64))
    f = matgrad.compile(LSQ, "x", device="cpu")
    lazy = mdask.grad(f, A=A, x=da.ones((1000, 64), chunks=100), b=np.ones(64))
    graph = dict(lazy.__dask_graph__())
    holding = [k for k, task in graph.items() if len(pickle.dumps(task)) >= A.nbytes]
    assert len(holding) == 1, holding
    assert lazy.numblocks[0] == 10
