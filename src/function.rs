//! The library's front door: a program compiled once into a [`Function`], called many times.
//!
//! In: the program text, the variable, what to compute ([`Compute`]) and [`Options`] (layout,
//! device, adapter). Out: a [`Function`] holding the derived formula; each [`Function::call`]
//! takes named inputs as borrowed float32 or float64 slices with their shapes (an array with one
//! more leading axis than its variable is batched, exactly as in `matgrad eval`) and returns one
//! [`Array`] per output, shaped `(B, *item axes)` when any input is batched.
//!
//! Invariants: the formula is derived once, in [`compile`]; for each set of input shapes and
//! shared/batched flags the plan and its executor (on a GPU, a session with the shared inputs
//! resident) are made once and reused, and a GPU session is remade only when the shared inputs'
//! values change; inputs already in the executor's precision (float32, or float64 on the
//! reference) are read in place, never copied on the way in; outputs are handed over without
//! a copy; user input never panics: every problem is an [`Error`]. A `Function` is `Send` and
//! `Sync`: threads may call one at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::batch::{bind_shapes, ArrayShape, BindError, Binding};
use crate::diagnostic::Diagnostic;
use crate::diff::{differentiate, Derivative, Layout, Request};
use crate::executor::{open_gpus, Adapter, Data, Device, Executor, Results};
use crate::expr::Id;
use crate::gpu::{GpuContext, GpuError};
use crate::plan::{Plan, PlanError};
use crate::print::{render, Format};
use crate::types::check_program;

/// What a [`Function`] computes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Compute {
    /// The first derivative: gradient, Jacobian, or derivative by a scalar (by the shapes).
    Derivative,
    /// The objective's value, then its first derivative.
    ValueAndDerivative,
    /// The Hessian of a scalar by a vector or scalar variable.
    Hessian,
    /// The objective's value, then its Hessian.
    ValueAndHessian,
    /// The Hessian times a vector, a new input variable of this name (the variable's shape).
    HessianTimes(String),
}

impl Compute {
    fn request(&self) -> Request {
        match self {
            Compute::Derivative | Compute::ValueAndDerivative => Request::Derivative,
            Compute::Hessian | Compute::ValueAndHessian => Request::Hessian,
            Compute::HessianTimes(name) => Request::HessianTimes(name.clone()),
        }
    }

    /// Whether the program's value is the first output.
    pub fn with_value(&self) -> bool {
        matches!(self, Compute::ValueAndDerivative | Compute::ValueAndHessian)
    }
}

/// How to compile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    pub layout: Layout,
    pub device: Device,
    /// Which GPU adapter; `None`: `WGPU_ADAPTER_NAME`, else the preferred one.
    pub adapter: Option<Adapter>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            layout: Layout::Gradient,
            device: Device::Auto,
            adapter: None,
        }
    }
}

/// One named input: its shape (NumPy's axes; one more leading axis means batched) and its
/// values in C order, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub data: Data<'a>,
}

impl ArrayShape for Input<'_> {
    fn name(&self) -> &str {
        self.name
    }

    fn shape(&self) -> &[usize] {
        self.shape
    }
}

/// One output: its shape and its values in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    /// `(B, *item axes)` when `batch` is `Some(B)`, else the item axes.
    pub shape: Vec<usize>,
    pub batch: Option<usize>,
    pub values: Values,
}

/// Output values in the precision of the executor that made them.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values in float64 (float32 ones widened).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Values::F32(v) => v.iter().map(|&x| f64::from(x)).collect(),
            Values::F64(v) => v.clone(),
        }
    }
}

/// A call's results.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// One per output: the value first when [`Compute::with_value`], then the derivative.
    pub outputs: Vec<Array>,
    /// What ran: `reference`, `cpu`, `gpu`, or `all` (split across the CPU path and the GPUs).
    pub executor: &'static str,
    /// How many items each executor computed, in item order (`all`: the CPU path's share,
    /// then each GPU's, in proportion to the throughput each reached on its last share).
    pub shares: Vec<(&'static str, usize)>,
    /// Notes for the user: why `auto` did not take the GPU.
    pub notes: Vec<String>,
    /// Inputs that name no variable of the program.
    pub unused: Vec<String>,
}

/// Why compiling or calling failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The program does not parse or type-check, or cannot be differentiated as asked.
    #[error("{}", .diagnostic.render(.source_text))]
    Program {
        diagnostic: Diagnostic,
        source_text: String,
    },
    /// An input's values do not fill its shape, or an input is named twice.
    #[error("{0}")]
    Input(String),
    /// The inputs do not fit the program's variables.
    #[error(transparent)]
    Bind(#[from] BindError),
    /// The sizes cannot be planned (too large for memory or for a back end's indexing).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// `device: gpu` and no adapter can be had.
    #[error(transparent)]
    NoGpu(GpuError),
    /// The GPU failed while preparing or running.
    #[error(transparent)]
    Gpu(GpuError),
}

impl From<GpuError> for Error {
    fn from(e: GpuError) -> Error {
        match e {
            GpuError::NoAdapter(_)
            | GpuError::NoMatchingAdapter { .. }
            | GpuError::NoAdapterAtIndex { .. } => Error::NoGpu(e),
            e => Error::Gpu(e),
        }
    }
}

/// Checks `program`, derives what `compute` asks for by the variable `wrt` and, for the GPU
/// (`gpu`, or `auto` when an adapter exists), opens the device.
pub fn compile(
    program: &str,
    wrt: &str,
    compute: Compute,
    options: Options,
) -> Result<Function, Error> {
    let (gpus, open_notes) = open_gpus(options.device, options.adapter.as_ref())?;
    derive(program, wrt, compute, options, gpus, open_notes)
}

/// A compiled program: the derived formula and, per set of input shapes, a plan and its
/// executor.
pub struct Function {
    source: String,
    derivative: Derivative,
    compute: Compute,
    options: Options,
    /// The graph nodes the call returns, in order.
    outputs: Vec<Id>,
    /// The program's variables (the inputs a call needs), sorted.
    reads: Vec<u32>,
    /// The GPUs it may run on: none, one, or for `all` every adapter that opened.
    gpus: Vec<GpuContext>,
    /// Why `auto` has no GPU, or which adapters `all` left out.
    open_notes: Vec<String>,
    prepared: Mutex<HashMap<ShapeKey, Arc<Prepared>>>,
}

/// What makes a plan: the dimension sizes and which variables are batched.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ShapeKey {
    dim_sizes: Vec<usize>,
    batched: Vec<bool>,
}

/// A plan with its executor; for a GPU session, the shared inputs it holds.
struct Prepared {
    plan: Plan,
    executor: Executor,
    /// The float32 shared inputs uploaded to a GPU session (in the plan's input order,
    /// batched ones empty); empty for other executors, which read them at every call.
    resident: Vec<Vec<f32>>,
    notes: Vec<String>,
}

impl Function {
    /// The program text it was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The derived formula.
    pub fn derivative(&self) -> &Derivative {
        &self.derivative
    }

    pub fn compute(&self) -> &Compute {
        &self.compute
    }

    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The same program, variable and options for another request, derived anew, on the
    /// GPUs this function already opened (no second device).
    pub fn with_compute(&self, compute: Compute) -> Result<Function, Error> {
        let graph = &self.derivative.program.graph;
        let wrt = graph.vars[self.derivative.wrt as usize].name.clone();
        let (gpus, notes) = (self.gpus.clone(), self.open_notes.clone());
        derive(
            &self.source,
            &wrt,
            compute,
            self.options.clone(),
            gpus,
            notes,
        )
    }

    /// The derived formula printed in `format`.
    pub fn formula(&self, format: Format) -> String {
        render(&self.derivative.program.graph, self.derivative.node, format)
    }

    /// The names of the variables a call reads, in declaration order.
    pub fn input_names(&self) -> Vec<&str> {
        let g = &self.derivative.program.graph;
        self.reads
            .iter()
            .map(|&v| g.vars[v as usize].name.as_str())
            .collect()
    }

    /// The GPU this function runs on, if it has one (for `all`, the first).
    pub fn gpu(&self) -> Option<&GpuContext> {
        self.gpus.first()
    }

    /// The GPUs this function may run on.
    pub fn gpus(&self) -> &[GpuContext] {
        &self.gpus
    }

    /// What a call with these sizes (by dimension name; the others declared or defaulted) and
    /// these batched variables runs: see [`crate::explain::explain_at_sizes`].
    pub fn explain(
        &self,
        dims: &HashMap<String, usize>,
        batched: &[String],
    ) -> Result<String, Error> {
        crate::explain::explain_at_sizes(&self.derivative, dims, batched, false)
            .map(|(text, note)| match note {
                Some(note) => format!("{text}note: {note}\n"),
                None => text,
            })
            .map_err(|diagnostic| Error::Program {
                diagnostic,
                source_text: self.source.clone(),
            })
    }

    /// Evaluates the outputs at `inputs`.
    pub fn call(&self, inputs: &[Input<'_>]) -> Result<Evaluation, Error> {
        check_inputs(inputs)?;
        let graph = &self.derivative.program.graph;
        let binding = bind_shapes(graph, &self.reads, inputs)?;
        let key = ShapeKey {
            dim_sizes: binding.dim_sizes.clone(),
            batched: binding.batched.clone(),
        };
        let cached = self.cached(&key);
        let fresh;
        let plan = match &cached {
            Some(prepared) => &prepared.plan,
            None => {
                fresh = Plan::new(graph, &self.outputs, &key.dim_sizes, &key.batched)?;
                &fresh
            }
        };
        let batch = binding.batch.unwrap_or(1);
        plan.fits_batch(batch, &format!("evaluating {batch} items"))?;
        let data: Vec<Data> = (plan.inputs().iter())
            .map(|i| {
                let bound = binding.arrays[i.var as usize].expect("the plan reads bound variables");
                inputs[bound.array].data
            })
            .collect();
        let prepared = match cached {
            Some(p) if p.holds(&data) => p,
            _ => {
                let plan = plan.clone();
                self.prepare(key, plan, &data)?
            }
        };
        let run = prepared.executor.run(&prepared.plan, &data, batch)?;
        let mut notes = self.open_notes.clone();
        notes.extend(prepared.notes.iter().cloned());
        Ok(Evaluation {
            outputs: arrays(run.results, &binding),
            executor: prepared.executor.name(),
            shares: run.shares,
            notes,
            unused: binding.unused,
        })
    }

    fn cached(&self, key: &ShapeKey) -> Option<Arc<Prepared>> {
        let map = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        map.get(key).cloned()
    }

    /// Makes the executor for `plan` and keeps it for later calls with the same shapes. Only
    /// the shared inputs are read here (a GPU session uploads them), so only they are narrowed.
    fn prepare(&self, key: ShapeKey, plan: Plan, data: &[Data]) -> Result<Arc<Prepared>, Error> {
        let narrow: Vec<std::borrow::Cow<[f32]>> = (plan.inputs().iter().zip(data))
            .map(|(input, values)| match input.batched {
                true => std::borrow::Cow::Borrowed(&[][..]),
                false => values.to_f32(),
            })
            .collect();
        let (executor, notes) = Executor::prepare(self.options.device, &self.gpus, &plan, &narrow)?;
        let resident = match executor.holds_shared_inputs() {
            true => (plan.inputs().iter().zip(&narrow))
                .map(|(input, values)| match input.batched {
                    true => Vec::new(),
                    false => values.to_vec(),
                })
                .collect(),
            false => Vec::new(),
        };
        let prepared = Arc::new(Prepared {
            plan,
            executor,
            resident,
            notes,
        });
        let mut map = self.prepared.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(key, prepared.clone());
        Ok(prepared)
    }
}

impl Prepared {
    /// Whether this executor can run on `data`: a GPU session only while the shared inputs
    /// are the ones it uploaded (compared as float32, bit for bit).
    fn holds(&self, data: &[Data]) -> bool {
        if !self.executor.holds_shared_inputs() {
            return true;
        }
        (self.plan.inputs().iter().zip(data).zip(&self.resident))
            .filter(|((input, _), _)| !input.batched)
            .all(|((_, values), resident)| {
                let now = values.to_f32();
                now.len() == resident.len()
                    && now
                        .iter()
                        .zip(resident)
                        .all(|(a, b)| a.to_bits() == b.to_bits())
            })
    }
}

/// Derives `compute` of `program` by `wrt` for a function on the GPUs already opened.
fn derive(
    program: &str,
    wrt: &str,
    compute: Compute,
    options: Options,
    gpus: Vec<GpuContext>,
    open_notes: Vec<String>,
) -> Result<Function, Error> {
    let program_error = |diagnostic| Error::Program {
        diagnostic,
        source_text: program.to_string(),
    };
    let checked = check_program(program).map_err(program_error)?;
    let derivative =
        differentiate(checked, wrt, &compute.request(), options.layout).map_err(program_error)?;
    let mut outputs = vec![derivative.node];
    if compute.with_value() {
        // The program's value, whatever its shape (a vector function's, beside its Jacobian).
        outputs.insert(0, derivative.program.root);
    }
    let graph = &derivative.program.graph;
    // Every variable of the program is an input (as in `eval`): it fixes the sizes and the
    // batch even where the derivative no longer reads it (`2*A'*A` of a least-squares loss).
    let mut reads: Vec<u32> = (outputs.iter().chain([&derivative.program.root]))
        .flat_map(|&o| graph.vars_in(o))
        .collect();
    reads.sort_unstable();
    reads.dedup();
    Ok(Function {
        source: program.to_string(),
        derivative,
        compute,
        options,
        outputs,
        reads,
        gpus,
        open_notes,
        prepared: Mutex::new(HashMap::new()),
    })
}

/// Every input's values fill its shape, and no name comes twice.
fn check_inputs(inputs: &[Input<'_>]) -> Result<(), Error> {
    for (k, input) in inputs.iter().enumerate() {
        if inputs[..k].iter().any(|earlier| earlier.name == input.name) {
            return Err(Error::Input(format!(
                "input `{}` is given twice",
                input.name
            )));
        }
        let entries = (input.shape.iter()).try_fold(1usize, |n, &axis| n.checked_mul(axis));
        if entries != Some(input.data.len()) {
            return Err(Error::Input(format!(
                "input `{}` has shape {:?} but {} values",
                input.name,
                input.shape,
                input.data.len()
            )));
        }
    }
    Ok(())
}

/// The executor's batches as arrays: `(B, *item axes)` when any input is batched (an output
/// that reads no batched input repeated), else the item axes alone.
fn arrays(results: Results, binding: &Binding) -> Vec<Array> {
    fn shaped<T: Copy>(
        b: crate::batch::Batch<T>,
        batch: Option<usize>,
        wrap: fn(Vec<T>) -> Values,
    ) -> Array {
        let data = match (batch, b.batch) {
            (Some(n), None) => b.data.repeat(n),
            _ => b.data,
        };
        let mut shape: Vec<usize> = batch.into_iter().collect();
        shape.extend(item_shape(b.rows, b.cols));
        Array {
            shape,
            batch,
            values: wrap(data),
        }
    }
    match results {
        Results::F32(batches) => (batches.into_iter())
            .map(|b| shaped(b, binding.batch, Values::F32))
            .collect(),
        Results::F64(batches) => (batches.into_iter())
            .map(|b| shaped(b, binding.batch, Values::F64))
            .collect(),
    }
}

/// The axes of one item: `()` for a scalar, `(n,)` for a column, `(m, n)` otherwise (a row
/// is `(1, n)`).
pub fn item_shape(rows: usize, cols: usize) -> Vec<usize> {
    match (rows, cols) {
        (1, 1) => vec![],
        (r, 1) => vec![r],
        (r, c) => vec![r, c],
    }
}
