//! `matgrad._native`: the CPython extension under the `matgrad` Python package.
//!
//! In: program text and options from Python; NumPy arrays (float32 or float64, C-contiguous and
//! aligned: the pure-Python layer converts anything else once). Out: NumPy arrays that own the vectors
//! matgrad wrote (no copy), and Python exceptions for every error. Invariants: the GIL is
//! released while matgrad computes; float32 and float64 arrays are read in place; every
//! library error becomes one of the exception types below (parse and shape errors subclass
//! `ValueError`, a missing GPU is `NoGpuError`); nothing a user passes can panic here. The
//! work runs on this process's pool of [`set_threads`] threads, else on rayon's global pool.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use matgrad::batch::NamedArray;
use matgrad::executor::{Adapter, Data, Device};
use matgrad::function::{compile, Compute, Error, Function, Input, Options, Values};
use matgrad::gpu::GpuError as GpuFailure;
use matgrad::minimize::{self as solve, BoundSpec, MinimizeError, Objective};
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

create_exception!(matgrad, ProgramError, PyValueError, "The program does not parse, type-check or differentiate as asked; the message is the caret diagnostic.");
create_exception!(matgrad, InputError, PyValueError, "The inputs do not fit the program: a missing or extra axis, a size that disagrees, a batch size that differs, values that do not fill a shape.");
create_exception!(
    matgrad,
    PlanError,
    PyValueError,
    "The sizes cannot be evaluated: too large for memory or for a back end's indexing."
);
create_exception!(
    matgrad,
    NoGpuError,
    PyRuntimeError,
    "device='gpu' and no GPU adapter can be had."
);
create_exception!(
    matgrad,
    GpuError,
    PyRuntimeError,
    "The GPU failed while compiling or running a kernel."
);

/// The pool calls run on, when [`set_threads`] set one.
static POOL: Mutex<Option<Arc<rayon::ThreadPool>>> = Mutex::new(None);

fn with_pool<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    let pool = POOL.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match pool {
        Some(pool) => pool.install(work),
        None => work(),
    }
}

/// `adapter=`: a number (its position in `devices()`) or a part of its name.
fn adapter_named(adapter: Option<Bound<'_, PyAny>>) -> PyResult<Option<Adapter>> {
    let Some(a) = adapter else { return Ok(None) };
    match a.extract::<usize>() {
        Ok(index) => Ok(Some(Adapter::Index(index))),
        Err(_) => Ok(Some(Adapter::Name(a.extract::<String>().map_err(
            |_| PyTypeError::new_err("adapter must be a name (str) or a number (int)"),
        )?))),
    }
}

fn to_py(e: Error) -> PyErr {
    let message = e.to_string();
    match e {
        Error::Program { .. } => ProgramError::new_err(message),
        Error::Input(_) | Error::Bind(_) => InputError::new_err(message),
        Error::Plan(_) => PlanError::new_err(message),
        Error::NoGpu(_) => NoGpuError::new_err(message),
        Error::Gpu(_) => GpuError::new_err(message),
    }
}

/// An input array held borrowed for the length of a call.
enum Held<'py> {
    F32(PyReadonlyArrayDyn<'py, f32>),
    F64(PyReadonlyArrayDyn<'py, f64>),
}

impl<'py> Held<'py> {
    fn new(name: &str, array: &Bound<'py, PyAny>) -> PyResult<Held<'py>> {
        if let Ok(a) = array.extract::<PyReadonlyArrayDyn<f32>>() {
            return Ok(Held::F32(a));
        }
        if let Ok(a) = array.extract::<PyReadonlyArrayDyn<f64>>() {
            return Ok(Held::F64(a));
        }
        Err(PyTypeError::new_err(format!(
            "input `{name}` must be a float32 or float64 NumPy array"
        )))
    }

    fn shape(&self) -> &[usize] {
        match self {
            Held::F32(a) => a.shape(),
            Held::F64(a) => a.shape(),
        }
    }

    fn data(&self, name: &str) -> PyResult<Data<'_>> {
        let not_contiguous =
            |_| PyValueError::new_err(format!("input `{name}` is not C-contiguous and aligned"));
        Ok(match self {
            Held::F32(a) => Data::F32(a.as_slice().map_err(not_contiguous)?),
            Held::F64(a) => Data::F64(a.as_slice().map_err(not_contiguous)?),
        })
    }
}

/// A NumPy array of `shape` that owns `values` (no copy).
fn to_numpy<'py, T: numpy::Element>(
    py: Python<'py>,
    values: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyAny>> {
    Ok(PyArray1::from_vec(py, values)
        .reshape(shape.to_vec())?
        .into_any())
}

fn request_named(compute: &str, vector: Option<String>) -> PyResult<Compute> {
    Ok(match (compute, vector) {
        ("derivative", None) => Compute::Derivative,
        ("value_and_derivative", None) => Compute::ValueAndDerivative,
        ("hessian", None) => Compute::Hessian,
        ("value_and_hessian", None) => Compute::ValueAndHessian,
        ("hessian_times", Some(v)) => Compute::HessianTimes(v),
        (other, _) => return Err(PyValueError::new_err(format!("unknown request {other:?}"))),
    })
}

fn device_named(name: &str) -> PyResult<Device> {
    Device::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "device={name:?}: expected 'auto', 'cpu', 'gpu', 'reference' or 'all'"
        ))
    })
}

/// A call's outputs, the executor that ran, the notes and the unused input names.
type CallResult<'py> = (
    Vec<Bound<'py, PyAny>>,
    &'static str,
    Vec<String>,
    Vec<String>,
);

/// A program compiled for one request (see `matgrad.compile` for the Python face).
#[pyclass(frozen, module = "matgrad._native")]
struct Compiled {
    function: Function,
}

#[pymethods]
impl Compiled {
    #[new]
    // The arguments are the Python constructor's keywords.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (program, wrt, compute, vector=None, device="auto", layout="gradient", adapter=None))]
    fn new(
        py: Python<'_>,
        program: &str,
        wrt: &str,
        compute: &str,
        vector: Option<String>,
        device: &str,
        layout: &str,
        adapter: Option<Bound<'_, PyAny>>,
    ) -> PyResult<Compiled> {
        let compute = request_named(compute, vector)?;
        let layout = matgrad::diff::Layout::from_name(layout).ok_or_else(|| {
            PyValueError::new_err(format!(
                "layout={layout:?}: expected 'gradient' or 'numerator'"
            ))
        })?;
        let adapter = adapter_named(adapter)?;
        let options = Options {
            layout,
            device: device_named(device)?,
            adapter,
        };
        let function = py
            .detach(|| compile(program, wrt, compute, options))
            .map_err(to_py)?;
        Ok(Compiled { function })
    }

    /// The same program and options for another request, on the GPUs this one opened.
    #[pyo3(signature = (compute, vector=None))]
    fn with_request(
        &self,
        py: Python<'_>,
        compute: &str,
        vector: Option<String>,
    ) -> PyResult<Compiled> {
        let compute = request_named(compute, vector)?;
        let function = py
            .detach(|| self.function.with_compute(compute))
            .map_err(to_py)?;
        Ok(Compiled { function })
    }

    /// The derived formula in `format`: 'text', 'unicode', 'latex' or 'json'.
    fn formula(&self, format: &str) -> PyResult<String> {
        let format = matgrad::print::Format::from_name(format).ok_or_else(|| {
            PyValueError::new_err(format!(
                "format={format:?}: expected 'text', 'unicode', 'latex' or 'json'"
            ))
        })?;
        Ok(self.function.formula(format))
    }

    /// The variables a call needs, in declaration order.
    fn input_names(&self) -> Vec<String> {
        self.function
            .input_names()
            .into_iter()
            .map(String::from)
            .collect()
    }

    /// The GPU adapter's name, when the function runs on one.
    fn adapter(&self) -> Option<String> {
        self.function.gpu().map(|g| g.adapter().name.clone())
    }

    fn explain(&self, dims: HashMap<String, usize>, batched: Vec<String>) -> PyResult<String> {
        self.function.explain(&dims, &batched).map_err(to_py)
    }

    /// Evaluates at `inputs` (name, array) pairs; returns the outputs, the executor that ran and
    /// the notes.
    fn call<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<(String, Bound<'py, PyAny>)>,
    ) -> PyResult<CallResult<'py>> {
        let held = (inputs.iter())
            .map(|(name, array)| Held::new(name, array))
            .collect::<PyResult<Vec<_>>>()?;
        let named = (inputs.iter().zip(&held))
            .map(|((name, _), h)| {
                Ok(Input {
                    name,
                    shape: h.shape(),
                    data: h.data(name)?,
                })
            })
            .collect::<PyResult<Vec<_>>>()?;
        let function = &self.function;
        let evaluation = py
            .detach(|| with_pool(|| function.call(&named)))
            .map_err(to_py)?;
        let outputs = (evaluation.outputs.into_iter())
            .map(|array| match array.values {
                Values::F32(v) => to_numpy(py, v, &array.shape),
                Values::F64(v) => to_numpy(py, v, &array.shape),
            })
            .collect::<PyResult<Vec<_>>>()?;
        Ok((
            outputs,
            evaluation.executor,
            evaluation.notes,
            evaluation.unused,
        ))
    }

    /// The arguments that rebuild this function (for pickling).
    fn source(&self) -> String {
        self.function.source().to_string()
    }
}

/// A bound given as a number or an array of the variable's shape (or one per item).
fn bound_spec(name: &str, value: Option<Bound<'_, PyAny>>) -> PyResult<Option<BoundSpec>> {
    let Some(value) = value else { return Ok(None) };
    if let Ok(number) = value.extract::<f64>() {
        return Ok(Some(BoundSpec::Number(number)));
    }
    let array = value
        .extract::<PyReadonlyArrayDyn<f64>>()
        .map_err(|_| PyTypeError::new_err(format!("{name} must be a number or a float64 array")))?;
    Ok(Some(BoundSpec::Array(NamedArray {
        name: name.to_string(),
        shape: array.shape().to_vec(),
        data: array.as_array().iter().copied().collect(),
    })))
}

/// Solves one problem per item (see `matgrad.minimize`). Returns a dict.
#[pyfunction]
#[pyo3(signature = (program, wrt, inputs, lower=None, upper=None, method="auto", device="cpu", gtol=None, ftol=None, max_iter=None, memory=None, adapter=None))]
#[allow(clippy::too_many_arguments)]
fn minimize<'py>(
    py: Python<'py>,
    program: &str,
    wrt: &str,
    inputs: Vec<(String, PyReadonlyArrayDyn<'py, f64>)>,
    lower: Option<Bound<'py, PyAny>>,
    upper: Option<Bound<'py, PyAny>>,
    method: &str,
    device: &str,
    gtol: Option<f64>,
    ftol: Option<f64>,
    max_iter: Option<u32>,
    memory: Option<usize>,
    adapter: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
    let device = match device {
        // `auto` is the CPU path, as on the command line (README, *Batch optimization*).
        "cpu" | "auto" => solve::Device::Cpu,
        "gpu" => solve::Device::Gpu,
        "reference" => solve::Device::Reference,
        other => {
            return Err(PyValueError::new_err(format!(
                "device={other:?}: expected 'auto', 'cpu', 'gpu' or 'reference'"
            )))
        }
    };
    let method = solve::Method::from_name(method).ok_or_else(|| {
        PyValueError::new_err(format!(
            "method={method:?}: expected 'auto', 'newton', 'lbfgs', 'gauss-newton' or 'gd'"
        ))
    })?;
    let mut options = solve::Options::for_device(device);
    options.method = method;
    options.gtol = gtol.unwrap_or(options.gtol);
    options.ftol = ftol.unwrap_or(options.ftol);
    options.max_iter = max_iter.unwrap_or(options.max_iter);
    options.memory = memory.unwrap_or(options.memory);
    options.lower = bound_spec("lower", lower)?;
    options.upper = bound_spec("upper", upper)?;
    options.adapter = adapter_named(adapter)?;
    if options.adapter.is_some() && device != solve::Device::Gpu {
        return Err(PyValueError::new_err(
            "adapter= chooses the GPU for device='gpu'",
        ));
    }
    let arrays: Vec<NamedArray> = (inputs.iter())
        .map(|(name, a)| NamedArray {
            name: name.clone(),
            shape: a.shape().to_vec(),
            data: a.as_array().iter().copied().collect(),
        })
        .collect();
    let program_error =
        |d: matgrad::diagnostic::Diagnostic| ProgramError::new_err(d.render(program));
    let solution = py.detach(|| {
        let objective = matgrad::types::check_program(program)
            .and_then(|p| Objective::new(p, wrt))
            .map_err(Err)?;
        with_pool(|| solve::minimize(&objective, &arrays, &options, device)).map_err(Ok)
    });
    let solution = match solution {
        Ok(s) => s,
        Err(Err(diagnostic)) => return Err(program_error(diagnostic)),
        Err(Ok(MinimizeError::Bind(e))) => return Err(InputError::new_err(e.to_string())),
        Err(Ok(MinimizeError::Invalid(m))) => return Err(InputError::new_err(m)),
        Err(Ok(MinimizeError::Gpu(e @ GpuFailure::NoAdapter(_))))
        | Err(Ok(MinimizeError::Gpu(e @ GpuFailure::NoMatchingAdapter { .. })))
        | Err(Ok(MinimizeError::Gpu(e @ GpuFailure::NoAdapterAtIndex { .. }))) => {
            return Err(NoGpuError::new_err(e.to_string()))
        }
        Err(Ok(MinimizeError::Gpu(e))) => return Err(GpuError::new_err(e.to_string())),
    };
    let mut shape = vec![solution.items];
    shape.extend(&solution.item_shape);
    let result = pyo3::types::PyDict::new(py);
    let reports = &solution.reports;
    result.set_item("x", to_numpy(py, solution.points.clone(), &shape)?)?;
    let status: Vec<i32> = reports.iter().map(|r| r.status.code()).collect();
    result.set_item("status", to_numpy(py, status, &[reports.len()])?)?;
    let iterations: Vec<i32> = reports.iter().map(|r| r.iterations as i32).collect();
    result.set_item("iterations", to_numpy(py, iterations, &[reports.len()])?)?;
    let values: Vec<f64> = reports.iter().map(|r| r.value).collect();
    result.set_item("value", to_numpy(py, values, &[reports.len()])?)?;
    let norms: Vec<f64> = reports.iter().map(|r| r.gradient_norm).collect();
    result.set_item("gradient_norm", to_numpy(py, norms, &[reports.len()])?)?;
    result.set_item("method", solution.method.name())?;
    result.set_item("converged", solution.converged())?;
    result.set_item("items", solution.items)?;
    result.set_item("rounds", solution.rounds)?;
    result.set_item("solve_seconds", solution.solve_seconds)?;
    result.set_item("notes", solution.notes.clone())?;
    if let Some(t) = solution.transfers {
        let transfers = pyo3::types::PyDict::new(py);
        transfers.set_item("before", t.before_bytes)?;
        transfers.set_item("rounds", t.rounds_bytes)?;
        transfers.set_item("round_max", t.round_max_bytes)?;
        transfers.set_item("after", t.after_bytes)?;
        result.set_item("transfer_bytes", transfers)?;
    }
    Ok(result)
}

/// The GPU adapters, as JSON (`matgrad devices --json`).
#[pyfunction]
fn devices_json(py: Python<'_>) -> String {
    py.detach(|| matgrad::print::pretty_json(&matgrad::gpu::list_adapters()))
}

/// Runs this process's calls on a pool of `threads` threads (a Dask worker sets it to the
/// threads it was given); 0 returns to rayon's global pool.
#[pyfunction]
fn set_threads(threads: usize) -> PyResult<()> {
    let pool = match threads {
        0 => None,
        n => Some(Arc::new(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| PyRuntimeError::new_err(e.to_string()))?,
        )),
    };
    *POOL.lock().unwrap_or_else(|p| p.into_inner()) = pool;
    Ok(())
}

/// The threads a call may use: the pool's, or rayon's global count.
#[pyfunction]
fn threads() -> usize {
    match POOL.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some(pool) => pool.current_num_threads(),
        None => rayon::current_num_threads(),
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Compiled>()?;
    m.add_function(wrap_pyfunction!(minimize, m)?)?;
    m.add_function(wrap_pyfunction!(devices_json, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_function(wrap_pyfunction!(threads, m)?)?;
    m.add("ProgramError", py.get_type::<ProgramError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("PlanError", py.get_type::<PlanError>())?;
    m.add("NoGpuError", py.get_type::<NoGpuError>())?;
    m.add("GpuError", py.get_type::<GpuError>())?;
    Ok(())
}
