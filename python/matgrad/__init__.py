"""matgrad: closed-form matrix-calculus derivatives, evaluated over large batches.

Write a scalar function of vectors and matrices as on matrixcalculus.org, and matgrad derives
its closed form and evaluates it for many inputs at once on the CPU or a GPU::

    import numpy as np, matgrad
    f = matgrad.compile("(A*x+b)'*(A*x+b)", wrt="x")
    f.formula                          # "2*A'*(A*x+b)"
    g = f.grad(A=A, x=xs, b=b)         # xs has one more leading axis: one gradient per item

An input with one more leading axis than its variable is batched (one value per item); the
others are shared by every item. float32 and float64 arrays that are C-contiguous and aligned
(as NumPy makes them) are read in place; anything else ``np.asarray`` accepts (lists, PyTorch
CPU tensors, JAX arrays) is converted once. Results are NumPy arrays, float32 (float64 with ``device="reference"``).

Errors are exceptions: :class:`ProgramError` (the caret diagnostic) and :class:`InputError`
are ``ValueError`` subclasses; :class:`NoGpuError` means ``device="gpu"`` found no adapter.
"""

from __future__ import annotations

import functools
import json
import warnings
from typing import Any

import numpy as np

from . import _native
from ._native import GpuError, InputError, NoGpuError, PlanError, ProgramError

__all__ = [
    "compile",
    "Function",
    "minimize",
    "MinimizeResult",
    "devices",
    "set_threads",
    "ProgramError",
    "InputError",
    "PlanError",
    "NoGpuError",
    "GpuError",
]

_DEVICES = ("auto", "cpu", "gpu", "reference", "all")

#: The report's status codes, as names.
STATUS_NAMES = ("converged", "max-iter", "line search failed", "not finite")


def compile(
    program: str,
    wrt: str,
    device: str = "auto",
    layout: str = "gradient",
    adapter: str | int | None = None,
) -> Function:
    """Derive `program` by the variable `wrt` and prepare it for evaluation.

    device: ``"auto"`` (a GPU when there is one, else the CPU), ``"cpu"``, ``"gpu"`` (an error
    without an adapter), ``"all"`` (every GPU adapter and the CPU path, each batch split among
    them by the throughput each last reached) or ``"reference"`` (float64, item by item: the
    ground truth).
    layout: ``"gradient"`` (a gradient has the variable's shape) or ``"numerator"``.
    adapter: a part of the GPU adapter's name, or its number in :func:`devices`.

    The same arguments in one process give the same compiled function (derived once).
    """
    if device not in _DEVICES:
        raise ValueError(f"device={device!r}: expected one of {', '.join(map(repr, _DEVICES))}")
    return _compiled(program, wrt, device, layout, adapter)


@functools.lru_cache(maxsize=256)
def _compiled(program, wrt, device, layout, adapter):
    return Function(program, wrt, device, layout, adapter)


class Function:
    """A program derived by one variable; call :meth:`grad`, :meth:`value_and_grad`,
    :meth:`hessian` or :meth:`hvp` with the inputs as keyword arguments."""

    def __init__(self, program, wrt, device="auto", layout="gradient", adapter=None):
        self.program = program
        self.wrt = wrt
        self.device = device
        self.layout = layout
        self.adapter = adapter
        self._requests: dict[tuple, Any] = {}
        #: What ran the last call: "reference", "cpu", "gpu" or "all".
        self.executor: str | None = None
        #: The last call's notes: why `auto` took the CPU, which adapters `all` left out.
        self.notes: list[str] = []
        # Derive the gradient now, so that a bad program fails here.
        self._native("derivative")

    def _native(self, compute: str, vector: str | None = None):
        key = (compute, vector)
        native = self._requests.get(key)
        if native is None:
            first = self._requests.get(("derivative", None))
            if first is None:
                native = _native.Compiled(
                    self.program, self.wrt, compute, vector, self.device, self.layout, self.adapter
                )
            else:
                # Another request of the same program: derived anew, on the same GPU device.
                native = first.with_request(compute, vector)
            self._requests[key] = native
        return native

    @property
    def formula(self) -> str:
        """The derivative as text, e.g. ``2*A'*(A*x+b)``."""
        return self._native("derivative").formula("text")

    @property
    def unicode(self) -> str:
        """The derivative with Unicode symbols, e.g. ``2Aᵀ(Ax + b)``."""
        return self._native("derivative").formula("unicode")

    @property
    def latex(self) -> str:
        """The derivative as LaTeX."""
        return self._native("derivative").formula("latex")

    @property
    def inputs(self) -> list[str]:
        """The variables a call needs."""
        return self._native("derivative").input_names()

    @property
    def gpu_adapter(self) -> str | None:
        """The GPU adapter this function runs on, or None."""
        return self._native("derivative").adapter()

    def grad(self, **inputs) -> np.ndarray:
        """The first derivative (gradient, Jacobian, or derivative by a scalar)."""
        return self._call(self._native("derivative"), inputs)[0]

    def value_and_grad(self, **inputs) -> tuple[np.ndarray, np.ndarray]:
        """The program's value and its gradient."""
        value, grad = self._call(self._native("value_and_derivative"), inputs)
        return value, grad

    def hessian(self, **inputs) -> np.ndarray:
        """The Hessian (by a vector or scalar variable)."""
        return self._call(self._native("hessian"), inputs)[0]

    def hvp(self, vector, **inputs) -> np.ndarray:
        """The Hessian times `vector` (the variable's shape, or one per item)."""
        name = "hvp_vector"
        while name in inputs or name in self.inputs:
            name += "_"
        inputs = dict(inputs)
        inputs[name] = vector
        return self._call(self._native("hessian_times", name), inputs)[0]

    def explain(self, batched: list[str] | None = None, dims: dict[str, int] | None = None) -> str:
        """The plan a call runs at these sizes with these batched variables (default: the
        variable alone), its costs and its GPU dispatches."""
        batched = [self.wrt] if batched is None else list(batched)
        return self._native("derivative").explain(dict(dims or {}), batched)

    def _call(self, native, inputs: dict) -> list[np.ndarray]:
        wide = self.device == "reference"
        arrays = [(name, _as_array(name, value, wide)) for name, value in inputs.items()]
        outputs, executor, notes, unused = native.call(arrays)
        self.executor, self.notes = executor, notes
        # `auto` taking the CPU is what it is for; with `all`, an adapter left out is news.
        if self.device != "auto":
            for note in notes:
                warnings.warn(f"matgrad: {note}", RuntimeWarning, stacklevel=3)
        if unused:
            warnings.warn(
                f"matgrad: inputs that name no variable of the program: {', '.join(unused)}",
                RuntimeWarning,
                stacklevel=3,
            )
        return outputs

    def __reduce__(self):
        # Rebuilt from its program and options in the receiving process, derived once there.
        return (compile, (self.program, self.wrt, self.device, self.layout, self.adapter))

    def __repr__(self) -> str:
        return (
            f"matgrad.compile({self.program!r}, wrt={self.wrt!r}, device={self.device!r})"
            f"  # {self.formula}"
        )


def _as_array(name: str, value, wide: bool) -> np.ndarray:
    """`value` as a C-contiguous, aligned float32 or float64 array: in place when it is one,
    else converted once (to float64 for the reference, float32 otherwise)."""
    array = np.asarray(value)
    if array.dtype not in (np.float32, np.float64):
        if array.dtype.kind == "c":
            raise TypeError(f"input `{name}` is complex; matgrad computes with real numbers")
        try:
            array = array.astype(np.float64 if wide else np.float32)
        except (TypeError, ValueError) as e:
            raise TypeError(f"input `{name}` is not numeric ({array.dtype}): {e}") from None
    # Dask hands workers arrays whose buffers may start at any byte: those are copied too.
    return np.require(array, requirements=["C", "A"])


class MinimizeResult:
    """The solutions and, per item, what happened.

    x: the solutions, shape ``(B, *variable shape)``; status: int32 codes (0 converged,
    1 max-iter, 2 line search failed, 3 not finite; names in :data:`STATUS_NAMES`);
    iterations, value, gradient_norm: per item; method: what ran; converged, items: counts;
    solve_seconds: the solve alone; notes: what was assumed; transfer_bytes: on the GPU, the
    bytes between host and device (``before`` the first round, during the ``rounds``, the
    most in one round ``round_max``, ``after`` the last), else ``None``.
    """

    def __init__(self, fields: dict):
        self.x = fields["x"]
        self.status = fields["status"]
        self.iterations = fields["iterations"]
        self.value = fields["value"]
        self.gradient_norm = fields["gradient_norm"]
        self.method = fields["method"]
        self.converged = fields["converged"]
        self.items = fields["items"]
        self.rounds = fields["rounds"]
        self.solve_seconds = fields["solve_seconds"]
        self.notes = fields["notes"]
        self.transfer_bytes = fields.get("transfer_bytes")

    @property
    def success(self) -> bool:
        """Whether every item converged."""
        return self.converged == self.items

    def __repr__(self) -> str:
        return (
            f"<MinimizeResult {self.method}: {self.converged} of {self.items} converged, "
            f"iterations max {int(self.iterations.max()) if self.items else 0}>"
        )


def minimize(
    program: str,
    wrt: str,
    *,
    lower=None,
    upper=None,
    method: str = "auto",
    device: str = "cpu",
    gtol: float | None = None,
    ftol: float | None = None,
    max_iter: int | None = None,
    memory: int | None = None,
    adapter: str | int | None = None,
    **inputs,
) -> MinimizeResult:
    """Minimize the scalar `program` by `wrt`, one independent problem per batch item.

    The other variables are inputs (keyword arguments), shared or batched as for
    :meth:`Function.grad`; an input named like `wrt` is the start (else zero). `lower` and
    `upper` are numbers or arrays of the variable's shape (or one per item). method: ``"auto"``,
    ``"newton"``, ``"lbfgs"``, ``"gauss-newton"`` or ``"gd"``. device: ``"cpu"`` (float32,
    also ``"auto"``), ``"gpu"`` (float32, every item's state on the device; `adapter` is a
    part of its name or its number in :func:`devices`) or ``"reference"`` (float64). Inputs
    are read as float64.
    """
    arrays = [(name, _as_array(name, value, True).astype(np.float64, copy=False)) for name, value in inputs.items()]
    bounds = {}
    for key, bound in (("lower", lower), ("upper", upper)):
        if bound is None or isinstance(bound, (int, float)):
            bounds[key] = None if bound is None else float(bound)
        else:
            bounds[key] = np.ascontiguousarray(np.asarray(bound, dtype=np.float64))
    fields = _native.minimize(
        program,
        wrt,
        arrays,
        bounds["lower"],
        bounds["upper"],
        method,
        device,
        gtol,
        ftol,
        max_iter,
        memory,
        adapter,
    )
    return MinimizeResult(fields)


def devices() -> list[dict]:
    """The GPU adapters, numbered as ``adapter=`` takes them."""
    adapters = json.loads(_native.devices_json())
    for index, adapter in enumerate(adapters):
        adapter["index"] = index
    return adapters


def set_threads(threads: int) -> None:
    """Run this process's calls on `threads` CPU threads (0: all cores)."""
    _native.set_threads(int(threads))
