"""Type stubs of the matgrad Python package (see the module docstring for the guide)."""

from typing import Any, Literal, Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

Device = Literal["auto", "cpu", "gpu", "reference", "all"]
Layout = Literal["gradient", "numerator"]
Method = Literal["auto", "newton", "lbfgs", "gauss-newton", "gd"]

STATUS_NAMES: tuple[str, str, str, str]

class ProgramError(ValueError):
    """The program does not parse, type-check or differentiate; the message is the caret diagnostic."""

class InputError(ValueError):
    """The inputs do not fit the program's variables."""

class PlanError(ValueError):
    """The sizes are too large for memory or for a back end's indexing."""

class NoGpuError(RuntimeError):
    """device='gpu' and no GPU adapter can be had."""

class GpuError(RuntimeError):
    """The GPU failed while compiling or running a kernel."""

class Function:
    """A program derived by one variable, ready to evaluate over batches."""

    program: str
    wrt: str
    device: Device
    layout: Layout
    adapter: str | int | None
    executor: str | None
    notes: list[str]
    @property
    def formula(self) -> str: ...
    @property
    def unicode(self) -> str: ...
    @property
    def latex(self) -> str: ...
    @property
    def inputs(self) -> list[str]: ...
    @property
    def gpu_adapter(self) -> str | None: ...
    def grad(self, **inputs: ArrayLike) -> NDArray[np.floating[Any]]: ...
    def value_and_grad(
        self, **inputs: ArrayLike
    ) -> tuple[NDArray[np.floating[Any]], NDArray[np.floating[Any]]]: ...
    def hessian(self, **inputs: ArrayLike) -> NDArray[np.floating[Any]]: ...
    def hvp(self, vector: ArrayLike, **inputs: ArrayLike) -> NDArray[np.floating[Any]]: ...
    def explain(
        self, batched: Sequence[str] | None = None, dims: dict[str, int] | None = None
    ) -> str: ...

def compile(
    program: str,
    wrt: str,
    device: Device = "auto",
    layout: Layout = "gradient",
    adapter: str | int | None = None,
) -> Function:
    """Derive `program` by `wrt` and prepare it for evaluation on `device`."""

class MinimizeResult:
    x: NDArray[np.float64]
    status: NDArray[np.int32]
    iterations: NDArray[np.int32]
    value: NDArray[np.float64]
    gradient_norm: NDArray[np.float64]
    method: str
    converged: int
    items: int
    rounds: int
    solve_seconds: float
    notes: list[str]
    transfer_bytes: dict[str, int] | None
    @property
    def success(self) -> bool: ...

def minimize(
    program: str,
    wrt: str,
    *,
    lower: float | ArrayLike | None = None,
    upper: float | ArrayLike | None = None,
    method: Method = "auto",
    device: Literal["auto", "cpu", "gpu", "reference"] = "cpu",
    gtol: float | None = None,
    ftol: float | None = None,
    max_iter: int | None = None,
    memory: int | None = None,
    adapter: str | int | None = None,
    **inputs: ArrayLike,
) -> MinimizeResult:
    """Minimize the scalar `program` by `wrt`, one problem per batch item."""

def devices() -> list[dict[str, Any]]:
    """The GPU adapters, numbered as `adapter=` takes them."""

def set_threads(threads: int) -> None:
    """Run this process's calls on `threads` CPU threads (0: all cores)."""
