"""Past one machine: matgrad's calls over Dask arrays, block by block on the workers.

Batched inputs are Dask arrays chunked along the batch axis (other axes are made one chunk);
shared inputs are NumPy arrays, put in the graph once as one key each, so that every worker
fetches each of them once, not once per block. Each block is one matgrad call on a worker;
the compiled function travels by pickle and is derived once per worker process. A worker
runs matgrad on as many CPU threads as it was given (``nthreads``), not on every core.

    import dask.array as da, matgrad, matgrad.dask
    f = matgrad.compile("(A*x+b)'*(A*x+b)", wrt="x", device="cpu")
    xs = da.from_array(big_x, chunks=(65536, 64))
    g = matgrad.dask.grad(f, A=A, x=xs, b=b)      # a Dask array, (B, 64)
    g.compute()

Shapes are checked in the client before anything is scheduled (a call on one item of
zeros), so bad input raises the same exception there as the single-process call.
"""

from __future__ import annotations

import numpy as np

from . import Function, _as_array, _native
from . import minimize as _minimize

__all__ = ["grad", "value_and_grad", "hessian", "minimize"]


def grad(f: Function, **inputs):
    """`f.grad` over Dask arrays: a Dask array, chunked like the batched inputs."""
    return _blockwise(f, "grad", inputs)[0]


def value_and_grad(f: Function, **inputs):
    """`f.value_and_grad` over Dask arrays: two Dask arrays."""
    return tuple(_blockwise(f, "value_and_grad", inputs))


def hessian(f: Function, **inputs):
    """`f.hessian` over Dask arrays."""
    return _blockwise(f, "hessian", inputs)[0]


def minimize(program: str, wrt: str, **kwargs):
    """`matgrad.minimize` over Dask arrays: a dict of Dask arrays ``x``, ``status``,
    ``iterations``, ``value`` and ``gradient_norm``, one row per item. Options (``lower``,
    ``upper``, ``method``, ``device``, ``gtol``, ``ftol``, ``max_iter``, ``memory``) are
    passed through; bounds given as arrays must be shared (NumPy)."""
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in _MINIMIZE_OPTIONS}
    return _blockwise(_Minimizer(program, wrt, options), "minimize", kwargs)


_MINIMIZE_OPTIONS = ("lower", "upper", "method", "device", "gtol", "ftol", "max_iter", "memory")


class _Minimizer:
    """A minimize problem as the unit that blocks run (pickles by its fields)."""

    def __init__(self, program, wrt, options):
        self.program = program
        self.wrt = wrt
        self.options = options

    def run(self, inputs):
        r = _minimize(self.program, self.wrt, **self.options, **inputs)
        return [r.x, r.status, r.iterations, r.value, r.gradient_norm]


def _outputs(f, request: str, inputs: dict) -> list[np.ndarray]:
    """One matgrad call on NumPy inputs."""
    if request == "minimize":
        return f.run(inputs)
    if request == "grad":
        return [f.grad(**inputs)]
    if request == "hessian":
        return [f.hessian(**inputs)]
    return list(f.value_and_grad(**inputs))


def _blockwise(f, request: str, inputs: dict):
    """The outputs of `request` as Dask arrays, one block per chunk of the batched inputs."""
    import dask
    import dask.array as da

    batched = {k: v for k, v in inputs.items() if isinstance(v, da.Array)}
    if not batched:
        raise TypeError("matgrad.dask needs at least one batched input as a Dask array")
    shared = {k: v for k, v in inputs.items() if k not in batched}
    wide = getattr(f, "device", None) == "reference" or request == "minimize"
    shared = {k: _as_array(k, v, wide) for k, v in shared.items()}
    first = next(iter(batched.values()))
    for name, array in batched.items():
        if array.ndim == 0 or array.shape[0] != first.shape[0]:
            raise _native.InputError(
                f"array `{name}` has {array.shape[0] if array.ndim else 0} items, but "
                f"`{next(iter(batched))}` has {first.shape[0]}: batched arrays must agree on the batch size"
            )
    rows = first.chunks[0]
    batched = {
        k: v.rechunk({0: rows, **{axis: -1 for axis in range(1, v.ndim)}}) for k, v in batched.items()
    }
    # Checked in the client on one item of zeros: shapes, names, the output shapes.
    probe = {k: np.zeros((1,) + v.shape[1:], dtype=_float_dtype(v.dtype)) for k, v in batched.items()}
    samples = _outputs(f, request, {**shared, **probe})
    item_shapes = [s.shape[1:] for s in samples]
    dtypes = [s.dtype for s in samples]
    widths = [int(np.prod(s, dtype=np.int64)) for s in item_shapes]
    # The shared arrays as one graph key each, fetched once per worker.
    shared_keys = {k: dask.delayed(v, pure=True) for k, v in shared.items()}
    names = list(batched)
    packed = _map_packed(f, request, batched, names, shared_keys, widths, np.result_type(*dtypes))
    results = []
    start = 0
    for shape, width, dtype in zip(item_shapes, widths, dtypes):
        part = packed[:, start : start + width].astype(dtype)
        results.append(part.reshape((first.shape[0],) + tuple(shape)))
        start += width
    return results


def _float_dtype(dtype):
    return dtype if dtype in (np.float32, np.float64) else np.float32


def _map_packed(f, request, batched, names, shared_keys, widths, dtype):
    """A Dask array `(B, sum(widths))`: each block's outputs flattened per item and side by
    side, so that one call per block serves several outputs."""
    import dask.array as da

    arrays = [batched[k] for k in names]
    pairs = []
    for array in arrays:
        pairs += [array, tuple(["i"] + [f"a{id(array)}_{axis}" for axis in range(1, array.ndim)])]
    return da.blockwise(
        _block,
        "ij",
        *pairs,
        f=f,
        request=request,
        names=names,
        shared=shared_keys,
        widths=widths,
        new_axes={"j": sum(widths)},
        concatenate=True,
        dtype=dtype,
        meta=np.empty((0, 0), dtype=dtype),
    )


_THREADS_SET = False


def _limit_threads() -> None:
    """On a Dask worker, run matgrad on the threads the worker was given (once per process)."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    _THREADS_SET = True
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    state = getattr(worker, "state", worker)
    threads = getattr(state, "nthreads", None) or getattr(worker, "nthreads", None)
    if threads:
        _native.set_threads(int(threads))


def _block(*arrays, f, request, names, shared, widths):
    _limit_threads()
    inputs = dict(shared)
    inputs.update(zip(names, arrays))
    outputs = _outputs(f, request, inputs)
    count = arrays[0].shape[0]
    flat = [np.asarray(o).reshape(count, w) for o, w in zip(outputs, widths)]
    return np.concatenate(flat, axis=1) if len(flat) > 1 else flat[0]
