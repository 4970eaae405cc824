//! Batch optimization: many small, independent problems minimized at once.
//!
//! In: an [`Objective`] (a scalar program, the variable to optimize and its closed-form
//! derivatives), arrays bound to the other variables exactly as `eval` binds them (shared, or
//! batched with one more leading axis), an optional start and box bounds, and [`Options`].
//! Out: a [`Solution`]: one point per item, shape `(B, *variable shape)`, and a per-item
//! [`ItemReport`] (status, iterations, final objective, final projected-gradient norm).
//!
//! Methods ([`Method`]): Newton with the closed-form Hessian (Cholesky per item, damped when
//! the Hessian is not positive definite, Armijo backtracking), Gauss–Newton for sums of
//! squared norms (the closed-form Jacobian's `J'*J`, damped likewise), L-BFGS (strong Wolfe
//! line search; with bounds, a projected search in the style of L-BFGS-B), and projected
//! gradient descent with Barzilai–Borwein steps. With bounds every method keeps its points
//! feasible, fixes the variables the bounds hold (the active set) and searches along the
//! projected path.
//!
//! Invariants: items never influence each other (an item that becomes non-finite stops with
//! its own status); a line search never accepts a non-finite objective or gradient, so
//! domains (`log`, `logdet`, `sqrt`) are respected; finished items stop costing work (the
//! active items are compacted); results do not depend on the number of threads or on how the
//! items are compacted (each item runs the same code on its own state). The float64
//! [`Device::Reference`] is the ground truth; [`Device::Cpu`] is the float32 path.

mod driver;
mod gpu;
pub mod linalg;

pub use gpu::shader_source as gpu_shader_source;

use std::fmt;

use crate::batch::{bind, BindError, NamedArray};
use crate::diagnostic::Diagnostic;
use crate::diff::{differentiate, jacobian, Layout, Request};
use crate::eval::Real;
use crate::expr::{Dim, Graph, Id, Node};
use crate::plan::{Plan, PlanOptions};
use crate::simplify::simplify;
use crate::types::Program;

/// Newton is chosen by [`Method::Auto`] for variables of at most this many entries: its
/// per-item Hessian (n² floats) and factorization (n³/6 multiply-adds) stay small next to the
/// objective's own work.
pub const NEWTON_MAX_ENTRIES: usize = 64;

/// The optimization method.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// Newton for scalar and vector variables of at most [`NEWTON_MAX_ENTRIES`] entries whose
    /// Hessian has a closed form; L-BFGS otherwise.
    Auto,
    Newton,
    Lbfgs,
    GaussNewton,
    GradientDescent,
}

impl Method {
    pub fn from_name(name: &str) -> Option<Method> {
        match name {
            "auto" => Some(Method::Auto),
            "newton" => Some(Method::Newton),
            "lbfgs" => Some(Method::Lbfgs),
            "gauss-newton" => Some(Method::GaussNewton),
            "gd" => Some(Method::GradientDescent),
            _ => None,
        }
    }

    /// The L-BFGS pairs an item keeps: `memory` for L-BFGS, none for the other methods.
    pub fn history(self, memory: usize) -> usize {
        if self == Method::Lbfgs {
            memory
        } else {
            0
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::Auto => "auto",
            Method::Newton => "newton",
            Method::Lbfgs => "lbfgs",
            Method::GaussNewton => "gauss-newton",
            Method::GradientDescent => "gd",
        }
    }
}

/// Where the iterations run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    /// Float32, multithreaded, the fast CPU path of `eval`.
    Cpu,
    /// Float64, the ground truth.
    Reference,
    /// Float32 on a GPU (the adapter [`Options::adapter`] names), every item's state resident
    /// on the device.
    Gpu,
}

/// How an item's iterations ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// The projected gradient's infinity norm reached `gtol * max(1, |f|)`, or the objective
    /// stopped decreasing by more than `ftol * max(1, |f|)`.
    Converged,
    MaxIter,
    LineSearchFailed,
    NotFinite,
}

impl Status {
    /// The code written to a report file: 0 converged, 1 max-iter, 2 line search failed,
    /// 3 not finite.
    pub fn code(self) -> i32 {
        match self {
            Status::Converged => 0,
            Status::MaxIter => 1,
            Status::LineSearchFailed => 2,
            Status::NotFinite => 3,
        }
    }

    /// The status of a report file's code ([`Status::code`]); `None` for any other number.
    pub fn from_code(code: i32) -> Option<Status> {
        [
            Status::Converged,
            Status::MaxIter,
            Status::LineSearchFailed,
            Status::NotFinite,
        ]
        .into_iter()
        .find(|s| s.code() == code)
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Converged => "converged",
            Status::MaxIter => "max-iter",
            Status::LineSearchFailed => "line search failed",
            Status::NotFinite => "not finite",
        }
    }
}

/// One item's outcome.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ItemReport {
    pub status: Status,
    /// Accepted steps.
    pub iterations: u32,
    /// The objective at the returned point.
    pub value: f64,
    /// The infinity norm of the projected gradient at the returned point.
    pub gradient_norm: f64,
}

/// A bound: one number for every entry, or an array of the variable's shape (shared) or with
/// one more leading axis (one per item).
#[derive(Clone, Debug, PartialEq)]
pub enum BoundSpec {
    Number(f64),
    Array(NamedArray),
}

/// Choices of a run; [`Options::for_device`] gives the defaults.
#[derive(Clone, Debug)]
pub struct Options {
    pub method: Method,
    /// Converged when the projected gradient's infinity norm is at most `gtol * max(1, |f|)`.
    pub gtol: f64,
    /// Converged when a step decreases the objective by at most `ftol * max(1, |f|)`, or the
    /// decrease a step predicts is below that.
    pub ftol: f64,
    pub max_iter: u32,
    /// L-BFGS history length.
    pub memory: usize,
    pub lower: Option<BoundSpec>,
    pub upper: Option<BoundSpec>,
    /// The GPU adapter for [`Device::Gpu`] (`None`: `WGPU_ADAPTER_NAME`, else the preferred).
    pub adapter: Option<crate::executor::Adapter>,
}

impl Options {
    /// The defaults: `gtol` 1e-5, `ftol` four units of the device's rounding (the objective
    /// cannot be seen to decrease by less), 200 iterations, memory 10, no bounds.
    pub fn for_device(device: Device) -> Options {
        let epsilon = match device {
            Device::Cpu | Device::Gpu => f32::EPSILON as f64,
            Device::Reference => f64::EPSILON,
        };
        Options {
            method: Method::Auto,
            gtol: 1e-5,
            ftol: 4.0 * epsilon,
            max_iter: 200,
            memory: 10,
            lower: None,
            upper: None,
            adapter: None,
        }
    }
}

/// The solutions and what happened to each item.
#[derive(Clone, Debug)]
pub struct Solution {
    /// The method that ran (what [`Method::Auto`] chose).
    pub method: Method,
    /// Items; 1 when no input is batched.
    pub items: usize,
    /// The variable's item shape: `()`, `(n,)` or `(m, n)`.
    pub item_shape: Vec<usize>,
    /// Row-major, `items × entries`, float64 (float32 values widened on the CPU path).
    pub points: Vec<f64>,
    pub reports: Vec<ItemReport>,
    /// Rounds of evaluation (iterations plus line-search trials of the slowest items).
    pub rounds: u32,
    /// Whether the Hessian reads only shared inputs and was factored once for the batch.
    pub shared_hessian: bool,
    /// Seconds from the inputs bound to the solutions ready (no file reading or writing, no
    /// derivation).
    pub solve_seconds: f64,
    /// Notes for the user (the start that was assumed, a method's fallback).
    pub notes: Vec<String>,
    /// What crossed between host and device ([`Device::Gpu`] only).
    pub transfers: Option<Transfers>,
}

/// Bytes between host and device during a GPU solve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfers {
    /// Uploaded before the first round: the batched inputs, the start, the item states, the
    /// bounds and the shared values.
    pub before_bytes: u64,
    /// Both ways during the rounds: the active counts read back every round, parameters
    /// written when a compaction changes a block's item count.
    pub rounds_bytes: u64,
    /// The most in one round.
    pub round_max_bytes: u64,
    /// Read back after the last round: the points and reports.
    pub after_bytes: u64,
}

impl Solution {
    pub fn converged(&self) -> usize {
        self.reports
            .iter()
            .filter(|r| r.status == Status::Converged)
            .count()
    }
}

/// Why a run could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MinimizeError {
    #[error("{0}")]
    Bind(#[from] BindError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Gpu(#[from] crate::gpu::GpuError),
}

/// A scalar objective with its closed-form derivatives by one variable, in one graph.
#[derive(Clone, Debug)]
pub struct Objective {
    pub program: Program,
    pub var: u32,
    pub gradient: Id,
    /// The Hessian, for scalar and vector variables where it has a closed form.
    pub hessian: Option<Id>,
    /// `2*sum(c*J'*J)` when the objective is a sum of `c*norm2(r)^2` / `c*r'*r` terms.
    pub gauss_newton: Option<Id>,
}

impl Objective {
    /// Derives the gradient (and, where they exist, the Hessian and the Gauss–Newton matrix)
    /// of `program` by the variable named `wrt`.
    pub fn new(program: Program, wrt: &str) -> Result<Objective, Diagnostic> {
        let root_shape = program.graph.shape(program.root);
        if !root_shape.is_scalar() {
            return Err(Diagnostic::without_span(format!(
                "minimize needs a scalar objective, but this one is a {}",
                program.graph.describe_shape(root_shape)
            ))
            .with_help("minimize a scalar of it, e.g. sum(...), norm2(...)^2 or u'*(...)"));
        }
        let derivative = differentiate(program, wrt, &Request::Derivative, Layout::Gradient)?;
        let var = derivative.wrt;
        let gradient = derivative.node;
        let mut program = derivative.program;
        let g = &mut program.graph;
        let var_shape = g.vars[var as usize].shape;
        let hessian = if var_shape.is_scalar() {
            let h = crate::diff::gradient(g, gradient, var);
            Some(simplify(g, h))
        } else if var_shape.is_column() {
            jacobian(g, gradient, var).ok().map(|h| simplify(g, h))
        } else {
            None
        };
        let gauss_newton = if var_shape.is_scalar() || var_shape.is_column() {
            gauss_newton_matrix(g, program.root, var)
        } else {
            None
        };
        Ok(Objective {
            program,
            var,
            gradient,
            hessian,
            gauss_newton,
        })
    }

    pub fn var_name(&self) -> &str {
        &self.program.graph.vars[self.var as usize].name
    }

    /// The method `requested` resolves to for a variable of `entries` entries, and why.
    pub fn choose(&self, requested: Method, entries: usize) -> Result<(Method, String), String> {
        let shape = self.program.graph.vars[self.var as usize].shape;
        let kind = self.program.graph.describe_shape(shape);
        match requested {
            Method::Auto => Ok(if self.hessian.is_some() && entries <= NEWTON_MAX_ENTRIES {
                (
                    Method::Newton,
                    format!(
                        "newton: the variable is a {kind} of {entries} entries (at most \
                         {NEWTON_MAX_ENTRIES}) and its Hessian has a closed form"
                    ),
                )
            } else if self.hessian.is_none() {
                (
                    Method::Lbfgs,
                    format!("lbfgs: the Hessian by a {kind} has no closed form in matgrad"),
                )
            } else {
                (
                    Method::Lbfgs,
                    format!(
                        "lbfgs: the variable has {entries} entries, more than \
                         {NEWTON_MAX_ENTRIES}, so a Hessian per item would cost more than it saves"
                    ),
                )
            }),
            Method::Newton if self.hessian.is_none() => Err(format!(
                "`--method newton` needs the Hessian, and the Hessian by a {kind} is not \
                 supported; use `--method lbfgs`"
            )),
            Method::GaussNewton if self.gauss_newton.is_none() => Err(
                "`--method gauss-newton` needs an objective that is a sum of squared norms \
                 (c*norm2(r)^2, c*r'*r or c*sum(r.^2) with positive constants c) of a vector \
                 or scalar variable"
                    .into(),
            ),
            m => Ok((m, format!("{}: as requested", m.name()))),
        }
    }
}

/// `2*sum_k c_k*J_k'*J_k` (in the gradient layout, `J_k'` is `jacobian(r_k)`) when the
/// objective is a sum of terms `c_k*q(r_k)` with constants `c_k > 0` and `q(r)` one of
/// `norm2(r)^2`, `r'*r`, `sum(r.^2)`; terms that do not depend on the variable are skipped.
fn gauss_newton_matrix(g: &mut Graph, root: Id, var: u32) -> Option<Id> {
    let mut terms = Vec::new();
    collect_terms(g, root, 1.0, &mut terms);
    let mut residuals = Vec::new();
    for (coefficient, term) in terms {
        if !g.depends_on(term, var) {
            continue;
        }
        let (c, r) = squared_norm(g, term)?;
        let c = coefficient * c;
        if c <= 0.0 || !c.is_finite() {
            return None;
        }
        residuals.push((c, r));
    }
    if residuals.is_empty() {
        return None;
    }
    let var_shape = g.vars[var as usize].shape;
    let mut parts = Vec::new();
    for (c, r) in residuals {
        let jt = if g.shape(r).is_scalar() {
            crate::diff::gradient(g, r, var)
        } else if g.shape(r).is_column() {
            jacobian(g, r, var).ok()?
        } else {
            return None;
        };
        let jt = simplify(g, jt);
        let j = g.transpose(jt);
        let jtj = g.mul(jt, j);
        parts.push(g.scale(2.0 * c, jtj));
    }
    let shape = crate::expr::Shape::new(var_shape.rows, var_shape.rows);
    let sum = g.sum_of(&parts, shape);
    Some(simplify(g, sum))
}

/// The terms of a sum with their constant coefficients (`a + 0.1*b - c`).
fn collect_terms(g: &Graph, id: Id, coefficient: f64, out: &mut Vec<(f64, Id)>) {
    match g.node(id) {
        Node::Add(a, b) => {
            collect_terms(g, a, coefficient, out);
            collect_terms(g, b, coefficient, out);
        }
        Node::Neg(a) => collect_terms(g, a, -coefficient, out),
        Node::Scale(c, a) => match g.node(c) {
            Node::Const(v) => collect_terms(g, a, coefficient * v.get(), out),
            _ => out.push((coefficient, id)),
        },
        _ => out.push((coefficient, id)),
    }
}

/// Constant factors peeled off a product: `0.5*x'` is `(0.5, x')`.
fn peel(g: &Graph, id: Id) -> (f64, Id) {
    match g.node(id) {
        Node::Scale(c, a) => match g.node(c) {
            Node::Const(v) => {
                let (inner, core) = peel(g, a);
                (v.get() * inner, core)
            }
            _ => (1.0, id),
        },
        _ => (1.0, id),
    }
}

/// `(c, r)` when `term` is `c*norm2(r)^2`, `c*r'*r` or `c*sum(r.^2)`.
fn squared_norm(g: &Graph, term: Id) -> Option<(f64, Id)> {
    let (c, core) = peel(g, term);
    let is_two = |id: Id| matches!(g.node(id), Node::Const(v) if v.get() == 2.0);
    match g.node(core) {
        Node::Pow(base, exponent) if is_two(exponent) => match g.node(base) {
            Node::Norm2(r) => Some((c, r)),
            _ if g.shape(base).is_scalar() => Some((c, base)),
            _ => None,
        },
        Node::Sum(inner) => match g.node(inner) {
            Node::ElemPow(r, exponent) if is_two(exponent) => Some((c, r)),
            _ => None,
        },
        Node::MatMul(left, right) => {
            let (cl, left) = peel(g, left);
            let (cr, right) = peel(g, right);
            match g.node(left) {
                Node::Transpose(r) if r == right && g.shape(r).is_column() => {
                    Some((c * cl * cr, r))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

/// The float64 check of a solution: for every item, the projected gradient's infinity norm
/// at the returned point divided by `max(1, |f|)`, computed by the reference executor from
/// the inputs (independent of the device that solved). Items whose objective is not finite
/// there give NaN.
pub fn stationarity(
    objective: &Objective,
    inputs: &[NamedArray],
    options: &Options,
    solution: &Solution,
) -> Result<Vec<f64>, MinimizeError> {
    let prepared = prepare(objective, inputs, options)?;
    let n = prepared.entries;
    let g = &objective.program.graph;
    let plan = Plan::with_options(
        g,
        &[objective.program.root, objective.gradient],
        &prepared.dim_sizes,
        &prepared.batched,
        PlanOptions { distribute: false },
    )
    .map_err(|e| invalid(e.to_string()))?;
    let point = crate::batch::Batch {
        batch: Some(solution.items),
        rows: 0,
        cols: 0,
        data: solution.points.clone(),
    };
    let inputs: Vec<crate::batch::Batch<f64>> = plan
        .inputs()
        .iter()
        .map(|i| {
            if i.var == objective.var {
                crate::batch::Batch {
                    rows: i.rows,
                    cols: i.cols,
                    ..point.clone()
                }
            } else {
                prepared.data[i.var as usize]
                    .clone()
                    .expect("bound inputs cover the plan's variables")
            }
        })
        .collect();
    let refs: Vec<&crate::batch::Batch<f64>> = inputs.iter().collect();
    let results = crate::batch::run_reference(&plan, &refs, solution.items);
    let pick = |b: &Option<(Vec<f64>, bool)>, item: usize, e: usize| {
        b.as_ref()
            .map(|(v, batched)| v[if *batched { item * n + e } else { e }])
    };
    Ok((0..solution.items)
        .map(|item| {
            let f = results[0].data[item];
            let mut norm = 0.0f64;
            for e in 0..n {
                let x = solution.points[item * n + e];
                let mut moved = x - results[1].data[item * n + e];
                if let Some(l) = pick(&prepared.lower, item, e) {
                    moved = moved.max(l);
                }
                if let Some(u) = pick(&prepared.upper, item, e) {
                    moved = moved.min(u);
                }
                norm = norm.max((x - moved).abs());
            }
            if f.is_finite() && norm.is_finite() {
                norm / f.abs().max(1.0)
            } else {
                f64::NAN
            }
        })
        .collect())
}

/// Everything a run needs after binding: sizes, start, bounds, plans.
pub(crate) struct Prepared {
    pub var: u32,
    /// The side of a variable declared symmetric: its gradients are symmetrized.
    pub symmetric_side: Option<usize>,
    /// The side of a variable declared `spd(n)`: its points stay positive definite.
    pub spd_side: Option<usize>,
    pub method: Method,
    pub items: usize,
    pub entries: usize,
    pub item_shape: Vec<usize>,
    pub start: Vec<f64>,
    pub start_batched: bool,
    pub lower: Option<(Vec<f64>, bool)>,
    pub upper: Option<(Vec<f64>, bool)>,
    /// Outputs: objective, gradient, and the per-item curvature matrix when one is used.
    pub plan: Plan,
    /// A curvature matrix that reads only shared inputs: evaluated and factored once.
    pub shared_curvature: Option<Plan>,
    pub data: Vec<Option<crate::batch::Batch<f64>>>,
    /// Indexed by variable: batched (the variable always is).
    pub batched: Vec<bool>,
    pub dim_sizes: Vec<usize>,
    pub notes: Vec<String>,
}

/// Solves one problem per item. `inputs` are the arrays of the program's variables (the
/// start, an array named like the variable, is optional: zero when absent).
pub fn minimize(
    objective: &Objective,
    inputs: &[NamedArray],
    options: &Options,
    device: Device,
) -> Result<Solution, MinimizeError> {
    minimize_with_progress(objective, inputs, options, device, &mut |_| {})
}

/// The state of a run after each round, for a progress display.
#[derive(Clone, Copy, Debug)]
pub struct Progress {
    pub round: u32,
    pub active: usize,
    pub items: usize,
    pub iterations_max: u32,
}

/// [`minimize`], calling `progress` after every round.
pub fn minimize_with_progress(
    objective: &Objective,
    inputs: &[NamedArray],
    options: &Options,
    device: Device,
    progress: &mut dyn FnMut(Progress),
) -> Result<Solution, MinimizeError> {
    let prepared = prepare(objective, inputs, options)?;
    match device {
        Device::Gpu => {
            let ctx = crate::gpu::GpuContext::new(&crate::executor::gpu_options(
                options.adapter.as_ref(),
            ))?;
            gpu::run(prepared, options, &ctx, progress)
        }
        Device::Reference => {
            driver::run::<f64>(prepared, options, progress).map_err(MinimizeError::Invalid)
        }
        Device::Cpu => {
            driver::run::<f32>(prepared, options, progress).map_err(MinimizeError::Invalid)
        }
    }
}

/// [`minimize_with_progress`] on the GPU `ctx` (an adapter already opened, or one with
/// [`crate::gpu::GpuOptions`] of its own, such as a block size that tests force).
pub fn minimize_on_gpu(
    objective: &Objective,
    inputs: &[NamedArray],
    options: &Options,
    ctx: &crate::gpu::GpuContext,
    progress: &mut dyn FnMut(Progress),
) -> Result<Solution, MinimizeError> {
    let prepared = prepare(objective, inputs, options)?;
    gpu::run(prepared, options, ctx, progress)
}

fn invalid(message: String) -> MinimizeError {
    MinimizeError::Invalid(message)
}

fn prepare(
    objective: &Objective,
    inputs: &[NamedArray],
    options: &Options,
) -> Result<Prepared, MinimizeError> {
    let g = &objective.program.graph;
    let var = objective.var;
    let name = objective.var_name().to_string();
    if options.gtol.is_nan() || options.ftol.is_nan() || options.gtol < 0.0 || options.ftol < 0.0 {
        return Err(invalid(format!(
            "--gtol and --ftol must be non-negative numbers (got {} and {})",
            options.gtol, options.ftol
        )));
    }
    if options.max_iter == 0 {
        return Err(invalid("--max-iter must be at least 1".into()));
    }
    if options.memory == 0 || options.memory > 1000 {
        return Err(invalid(format!(
            "the L-BFGS memory must be between 1 and 1000 (got {})",
            options.memory
        )));
    }
    let mut notes = Vec::new();
    let has_start = inputs.iter().any(|a| a.name == name);
    let reads: Vec<u32> = g
        .vars_in(objective.program.root)
        .into_iter()
        .filter(|&v| v != var || has_start)
        .collect();
    let bound = bind(g, &reads, inputs)?;
    let shape = g.vars[var as usize].shape;
    for dim in [shape.rows, shape.cols] {
        let Dim::Sym(d) = dim else { continue };
        let known = g.dims[d as usize].size.is_some()
            || has_start
            || reads.iter().any(|&v| {
                let s = g.vars[v as usize].shape;
                s.rows == dim || s.cols == dim
            });
        if !known {
            return Err(invalid(format!(
                "the size of `{name}` is not known: give a start array `{name}` in the inputs \
                 or declare its size (e.g. `{name}: vector(16)`)"
            )));
        }
    }
    let size = |d: Dim| match d {
        Dim::One => 1,
        Dim::Sym(i) => bound.dim_sizes[i as usize],
    };
    let (rows, cols) = (size(shape.rows), size(shape.cols));
    let entries = rows * cols;
    let item_shape = match (shape.rows, shape.cols) {
        (Dim::One, Dim::One) => vec![],
        (_, Dim::One) => vec![rows],
        _ => vec![rows, cols],
    };
    let items = bound.batch.unwrap_or(1);
    let (method, why) = objective.choose(options.method, entries).map_err(invalid)?;
    if options.method == Method::Auto {
        notes.push(format!("method {why}"));
    }
    let (start, start_batched) = match &bound.values[var as usize] {
        Some(b) if has_start => (b.data.clone(), b.batch.is_some()),
        _ => {
            notes.push(format!(
                "no array `{name}` in the inputs: every item starts at zero"
            ));
            (vec![0.0; entries], false)
        }
    };
    let lower = resolve_bound(&options.lower, "lower", &item_shape, entries, items)?;
    let upper = resolve_bound(&options.upper, "upper", &item_shape, entries, items)?;
    if let (Some((l, lb)), Some((u, ub))) = (&lower, &upper) {
        for item in 0..items {
            for e in 0..entries {
                let lo = l[if *lb { item * entries + e } else { e }];
                let hi = u[if *ub { item * entries + e } else { e }];
                if lo > hi {
                    return Err(invalid(format!(
                        "the lower bound is above the upper bound ({lo} > {hi}) at entry {e}{}",
                        if *lb || *ub {
                            format!(" of item {item}")
                        } else {
                            String::new()
                        }
                    )));
                }
            }
        }
    }
    let mut batched = bound.batched.clone();
    batched[var as usize] = true;
    let (plan, shared_curvature) = iteration_plans(objective, method, &bound.dim_sizes, &batched)
        .map_err(|e| invalid(e.to_string()))?;
    // Each round holds the trial points, the states and the L-BFGS histories besides the plan.
    let state_bytes = 8.0 * items as f64 * entries as f64 * (4.0 + 2.0 * options.memory as f64);
    crate::batch::fits_in_memory(
        plan.memory_bytes(items) + state_bytes,
        &format!("minimizing {items} items"),
    )
    .map_err(invalid)?;
    let mut data = bound.values;
    data[var as usize] = None;
    let symmetric_side = (g.vars[var as usize].symmetric && rows == cols).then_some(rows);
    let spd_side = (g.vars[var as usize].positive_definite && rows == cols).then_some(rows);
    Ok(Prepared {
        var,
        symmetric_side,
        spd_side,
        method,
        items,
        entries,
        item_shape,
        start,
        start_batched,
        lower,
        upper,
        plan,
        shared_curvature,
        data,
        batched,
        dim_sizes: bound.dim_sizes,
        notes,
    })
}

/// What one iteration evaluates, for `method` at `dim_sizes` with `batched` flags (the
/// variable batched): the plan of the objective, its gradient and, when it is per item, the
/// curvature matrix (Hessian or Gauss–Newton); and the curvature's own plan when it reads
/// neither the variable nor a batched input, so that it is the same for every item and every
/// iteration: evaluated and factored once per batch.
pub fn iteration_plans(
    objective: &Objective,
    method: Method,
    dim_sizes: &[usize],
    batched: &[bool],
) -> Result<(Plan, Option<Plan>), crate::plan::PlanError> {
    let g = &objective.program.graph;
    let curvature = match method {
        Method::Newton => objective.hessian,
        Method::GaussNewton => objective.gauss_newton,
        _ => None,
    };
    let no_distribute = PlanOptions { distribute: false };
    let shared_curvature = match curvature {
        Some(h)
            if g.vars_in(h)
                .iter()
                .all(|&v| v != objective.var && !batched[v as usize]) =>
        {
            Some(Plan::with_options(
                g,
                &[h],
                dim_sizes,
                batched,
                no_distribute,
            )?)
        }
        _ => None,
    };
    let mut outputs = vec![objective.program.root, objective.gradient];
    if let (Some(h), None) = (curvature, &shared_curvature) {
        outputs.push(h);
    }
    let plan = Plan::with_options(g, &outputs, dim_sizes, batched, no_distribute)?;
    Ok((plan, shared_curvature))
}

/// `matgrad explain --minimize`: the objective and its derivatives, the method `auto` chooses
/// and why, what one iteration evaluates per item and what once per batch (a curvature matrix
/// that reads only shared inputs is evaluated and factored once), and the cost per iteration
/// per item, for the sizes `dim_sizes` and the data flagged in `batched` (the variable is one
/// per item whatever its flag says).
pub fn explain_minimize(
    objective: &Objective,
    dim_sizes: &[usize],
    batched: &[bool],
) -> Result<String, String> {
    use std::fmt::Write as _;
    let g = &objective.program.graph;
    let var = objective.var;
    let shape = g.vars[var as usize].shape;
    let size = |d: Dim| match d {
        Dim::One => 1,
        Dim::Sym(i) => dim_sizes[i as usize],
    };
    let entries = size(shape.rows) * size(shape.cols);
    let mut batched = batched.to_vec();
    batched[var as usize] = true;
    let (method, why) = objective.choose(Method::Auto, entries)?;
    let (plan, shared) =
        iteration_plans(objective, method, dim_sizes, &batched).map_err(|e| e.to_string())?;
    let text = |id: Id| crate::print::text(g, id);
    let mut out = String::new();
    let _ = writeln!(out, "objective: {}", text(objective.program.root));
    let _ = writeln!(
        out,
        "variable: `{}`, a {} of {entries} entries, one per item",
        objective.var_name(),
        g.describe_shape(shape)
    );
    let data: Vec<String> = g
        .vars_in(objective.program.root)
        .into_iter()
        .filter(|&v| v != var)
        .map(|v| {
            let how = if batched[v as usize] {
                "batched"
            } else {
                "shared"
            };
            format!("`{}` {how}", g.vars[v as usize].name)
        })
        .collect();
    if !data.is_empty() {
        let _ = writeln!(out, "data: {}", data.join(", "));
    }
    let _ = writeln!(out, "gradient: {}", text(objective.gradient));
    if let Some(h) = objective.hessian {
        let _ = writeln!(out, "hessian: {}", text(h));
    }
    let _ = writeln!(out, "method (auto): {why}");
    let n = entries as f64;
    let step = match (method, &shared) {
        (Method::Newton | Method::GaussNewton, Some(_)) => {
            let _ = writeln!(
                out,
                "curvature: reads only shared inputs, so it is evaluated and factored (Cholesky, \
                 {entries}×{entries}) once per batch; each step is two triangular solves per item"
            );
            2.0 * n * n
        }
        (Method::Newton | Method::GaussNewton, None) => {
            let _ = writeln!(
                out,
                "curvature: evaluated per item at every iteration, then factored (Cholesky, \
                 {entries}×{entries}) and solved per item"
            );
            n * n * n / 3.0 + 2.0 * n * n
        }
        (Method::Lbfgs, _) => {
            let m = Options::for_device(Device::Cpu).memory as f64;
            let _ = writeln!(
                out,
                "curvature: none; the L-BFGS two-loop recursion over the last {m} steps"
            );
            4.0 * m * n
        }
        _ => {
            let _ = writeln!(out, "curvature: none; steps along the negative gradient");
            n
        }
    };
    let _ = writeln!(
        out,
        "\none iteration, per trial point (objective, gradient{}):",
        if shared.is_none() && matches!(method, Method::Newton | Method::GaussNewton) {
            ", curvature"
        } else {
            ""
        }
    );
    out.push_str(&crate::explain::plan_text(&plan, None));
    let cost = plan.cost();
    let _ = writeln!(
        out,
        "per item per iteration: {:.0} flops to evaluate and about {step:.0} for the step, {:.0} \
         bytes (line searches evaluate again at each trial point)",
        cost.flops_per_item, cost.bytes_per_item
    );
    if let Some(plan) = &shared {
        let _ = writeln!(out, "\nthe curvature, once per batch:");
        out.push_str(&crate::explain::plan_text(plan, None));
    }
    let dispatches = match crate::wgsl::generate(&plan) {
        Ok(kernel) => format!("{} dispatch(es)", kernel.stages.len()),
        Err(e) => format!("none possible here ({e})"),
    };
    let memory = method.history(Options::for_device(Device::Gpu).memory);
    let spd = g.vars[var as usize].positive_definite;
    let factored = matches!(method, Method::Newton | Method::GaussNewton);
    let state = gpu::state_floats(entries, memory, spd, factored);
    let _ = writeln!(
        out,
        "\ngpu (--device gpu): per round, the plan's kernels ({dispatches}), then one `update` \
         invocation per item (shaders/minimize.wgsl: line search, convergence, next direction \
         and trial) and a count of the active items; each item's state ({state} floats besides \
         its inputs) stays on the device, and a round reads back 16 bytes per block of items"
    );
    Ok(out)
}

/// A bound's values and whether they are one per item.
fn resolve_bound(
    spec: &Option<BoundSpec>,
    which: &str,
    item_shape: &[usize],
    entries: usize,
    items: usize,
) -> Result<Option<(Vec<f64>, bool)>, MinimizeError> {
    let array = match spec {
        None => return Ok(None),
        Some(BoundSpec::Number(v)) => {
            if v.is_nan() {
                return Err(invalid(format!("the {which} bound is NaN")));
            }
            return Ok(Some((vec![*v; entries], false)));
        }
        Some(BoundSpec::Array(a)) => a,
    };
    let shown = Shape(item_shape);
    let batched = if array.shape == item_shape {
        false
    } else if array.shape.len() == item_shape.len() + 1 && array.shape[1..] == *item_shape {
        if array.shape[0] != items {
            return Err(invalid(format!(
                "the {which} bound `{}` has {} items, but the batch has {items}",
                array.name, array.shape[0]
            )));
        }
        true
    } else {
        return Err(invalid(format!(
            "the {which} bound `{}` has shape {}, but the variable's shape is {shown} (or \
             ({items}, ...) for one per item)",
            array.name,
            Shape(&array.shape)
        )));
    };
    if array.data.iter().any(|v| v.is_nan()) {
        return Err(invalid(format!(
            "the {which} bound `{}` contains NaN",
            array.name
        )));
    }
    Ok(Some((array.data.clone(), batched)))
}

/// A shape printed as NumPy prints it: `(3,)`, `(2, 3)`, `()`.
struct Shape<'a>(&'a [usize]);

impl fmt::Display for Shape<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => write!(f, "()"),
            [n] => write!(f, "({n},)"),
            dims => {
                let parts: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                write!(f, "({})", parts.join(", "))
            }
        }
    }
}

/// The arithmetic the iterations need, for float32 and float64.
pub trait Float: Real + Send + Sync + std::fmt::Debug + 'static {
    const EPSILON: Self;
    fn sqrt(self) -> Self;
}

impl Float for f32 {
    const EPSILON: f32 = f32::EPSILON;
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
}

impl Float for f64 {
    const EPSILON: f64 = f64::EPSILON;
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
}
