//! The iteration driver: rounds of batch evaluation and per-item updates.
//!
//! In: a prepared run (plans, bound data, start, bounds) and the options. Out: a
//! [`Solution`]. Each round evaluates the objective, the gradient and (Newton, Gauss–Newton)
//! the curvature matrix at every active item's trial point in one batch, then every item
//! consumes its own results in parallel: a line search accepts or rejects its trial, an
//! accepted point is tested for convergence and gets a new direction and a first trial. So an
//! item in its line search and an item starting its next iteration share a round, and a
//! round's cost follows the number of active items. Finished items are written out and, once
//! they are an eighth of the stored ones, removed from every per-item array (compaction).
//! Invariants: an item's arithmetic reads only its own state, its own inputs and the shared
//! ones, so neither the thread count nor the compaction changes its result; every buffer is
//! allocated before the first round (the evaluator's outputs included).

use std::time::Instant;

use rayon::prelude::*;

use super::linalg::{cholesky, cholesky_solve};
use super::{Float, ItemReport, Method, Prepared, Progress, Solution, Status};
use crate::batch::{run_reference, Batch};
use crate::cpu::{output_buffers, run_cpu_into};
use crate::plan::Plan;

/// Armijo's sufficient-decrease constant.
const C1: f64 = 1e-4;
/// The strong Wolfe curvature constant (L-BFGS).
const C2: f64 = 0.9;
/// Trials of one line search before it fails.
const MAX_TRIALS: u32 = 40;
/// Trials of the Wolfe search before it settles for sufficient decrease alone.
const WOLFE_TRIALS: u32 = 12;
/// Units of rounding of the objective within which a trial counts as no increase.
const ROUNDING: f64 = 4.0;
/// A trial that decreases the objective by more than this many times the first-order
/// prediction is refused (see [`Context::update`]).
const JUMP: f64 = 10.0;
/// Damping tries before a Newton step falls back to the gradient.
const DAMPING_TRIES: u32 = 30;

/// Evaluates the plan at a batch of points.
pub(super) trait Evaluator<T: Float> {
    /// Evaluates at `points` (`count` items of `entries` values), keeping the results.
    fn evaluate(&mut self, points: &[T], count: usize);
    /// The last results: objectives, gradients, curvature matrices (when the plan has them).
    fn results(&self) -> (&[T], &[T], Option<&[T]>);
    /// The last gradients, to be made symmetric in place.
    fn gradients_mut(&mut self) -> &mut [T];
    /// Keeps only the stored items `keep` (increasing), in that order.
    fn retain(&mut self, keep: &[usize]);
}

/// Replaces each item's `side`×`side` gradient by its symmetric part. For a variable declared
/// symmetric the gradient is symmetric in exact arithmetic, but a float `inv(S)` is not quite,
/// and the difference would grow along the antisymmetric directions (where `-logdet` curves
/// down): so the iterates stay exactly symmetric.
fn symmetrize<T: Float>(gradients: &mut [T], side: usize) {
    let half = T::from_f64(0.5);
    gradients.par_chunks_mut(side * side).for_each(|g| {
        for i in 0..side {
            for j in i + 1..side {
                let v = (g[i * side + j] + g[j * side + i]) * half;
                g[i * side + j] = v;
                g[j * side + i] = v;
            }
        }
    });
}

/// The plan over the stored items: the CPU path in float32, or the float64 reference
/// ([`Precision::run_plan`]); the plan's inputs in buffers reused for every round.
struct PlanEvaluator<T> {
    plan: Plan,
    inputs: Vec<Batch<T>>,
    var_input: usize,
    outputs: Vec<Batch<T>>,
}

impl<T: Precision> Evaluator<T> for PlanEvaluator<T> {
    fn evaluate(&mut self, points: &[T], count: usize) {
        let var = &mut self.inputs[self.var_input];
        var.data.clear();
        var.data
            .extend_from_slice(&points[..count * var.rows * var.cols]);
        var.batch = Some(count);
        let refs: Vec<&Batch<T>> = self.inputs.iter().collect();
        T::run_plan(&self.plan, &refs, count, &mut self.outputs);
    }

    fn results(&self) -> (&[T], &[T], Option<&[T]>) {
        let o = &self.outputs;
        (&o[0].data, &o[1].data, o.get(2).map(|b| &b.data[..]))
    }

    fn gradients_mut(&mut self) -> &mut [T] {
        &mut self.outputs[1].data
    }

    fn retain(&mut self, keep: &[usize]) {
        for (k, input) in self.inputs.iter_mut().enumerate() {
            if k != self.var_input {
                retain_items(input, keep);
            }
        }
    }
}

/// Keeps the items `keep` of a batched value, in place; a shared value is left alone.
fn retain_items<T: Copy>(b: &mut Batch<T>, keep: &[usize]) {
    if b.batch.is_none() {
        return;
    }
    let len = b.rows * b.cols;
    retain_rows(&mut b.data, len, keep);
    b.batch = Some(keep.len());
}

/// Keeps the rows `keep` (increasing) of `data`, rows of `len` values, in place.
fn retain_rows<T: Copy>(data: &mut Vec<T>, len: usize, keep: &[usize]) {
    for (to, &from) in keep.iter().enumerate() {
        if to != from {
            data.copy_within(from * len..(from + 1) * len, to * len);
        }
    }
    data.truncate(keep.len() * len);
}

/// The numbers for [`run`]'s two precisions.
pub(super) trait Precision: Float {
    /// Evaluates `plan` for `count` items into `outputs` (reused where the executor can).
    fn run_plan(plan: &Plan, inputs: &[&Batch<Self>], count: usize, outputs: &mut Vec<Batch<Self>>);

    /// The plan's evaluator, with the bound data in this precision and room for `items`
    /// points.
    fn evaluator(
        plan: &Plan,
        data: &[Option<Batch<f64>>],
        var: u32,
        items: usize,
    ) -> Box<dyn Evaluator<Self>> {
        let (inputs, var_input) = plan_inputs(plan, data, var, items, Self::from_f64, Self::ZERO);
        Box::new(PlanEvaluator {
            plan: plan.clone(),
            inputs,
            var_input,
            outputs: Vec::new(),
        })
    }

    /// The shared curvature matrix, evaluated once.
    fn evaluate_shared(plan: &Plan, data: &[Option<Batch<f64>>]) -> Vec<Self>;
}

pub(super) fn plan_inputs<T: Copy>(
    plan: &Plan,
    data: &[Option<Batch<f64>>],
    var: u32,
    items: usize,
    convert: impl Fn(f64) -> T,
    zero: T,
) -> (Vec<Batch<T>>, usize) {
    let mut var_input = usize::MAX;
    let inputs = plan
        .inputs()
        .iter()
        .enumerate()
        .map(|(k, input)| {
            if input.var == var {
                var_input = k;
                return Batch {
                    batch: Some(items),
                    rows: input.rows,
                    cols: input.cols,
                    data: vec![zero; items * input.rows * input.cols],
                };
            }
            let b = data[input.var as usize]
                .as_ref()
                .expect("bound inputs cover the plan's variables");
            Batch {
                batch: b.batch,
                rows: b.rows,
                cols: b.cols,
                data: b.data.iter().map(|&v| convert(v)).collect(),
            }
        })
        .collect();
    (inputs, var_input)
}

impl Precision for f32 {
    fn run_plan(plan: &Plan, inputs: &[&Batch<f32>], count: usize, outputs: &mut Vec<Batch<f32>>) {
        if outputs.is_empty() {
            *outputs = output_buffers(plan, count);
        }
        for out in outputs.iter_mut() {
            out.data.truncate(count * out.rows * out.cols);
            out.batch = Some(count);
        }
        run_cpu_into(plan, inputs, count, outputs);
    }

    fn evaluate_shared(plan: &Plan, data: &[Option<Batch<f64>>]) -> Vec<f32> {
        // Computed in float64 and rounded once, as the CPU path computes its shared steps.
        f64::evaluate_shared(plan, data)
            .into_iter()
            .map(|v| v as f32)
            .collect()
    }
}

impl Precision for f64 {
    fn run_plan(plan: &Plan, inputs: &[&Batch<f64>], count: usize, outputs: &mut Vec<Batch<f64>>) {
        *outputs = run_reference(plan, inputs, count);
    }

    fn evaluate_shared(plan: &Plan, data: &[Option<Batch<f64>>]) -> Vec<f64> {
        let inputs: Vec<&Batch<f64>> = plan
            .inputs()
            .iter()
            .map(|i| {
                data[i.var as usize]
                    .as_ref()
                    .expect("bound inputs cover the plan's variables")
            })
            .collect();
        run_reference(plan, &inputs, 1).swap_remove(0).data
    }
}

/// Where an item is in its iteration.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// The trial is the start.
    Start,
    /// The trial is a step along the direction.
    Search,
}

/// An item's scalars; its vectors live in its row of the state array.
#[derive(Clone, Copy, Debug)]
struct Item {
    /// The item's index in the batch.
    id: usize,
    status: Option<Status>,
    phase: Phase,
    iterations: u32,
    /// The objective at the current point.
    f: f64,
    /// The gradient's component along the direction at the current point.
    slope: f64,
    /// The trial step, and the Wolfe search's bracket.
    step: f64,
    step_lo: f64,
    f_lo: f64,
    slope_lo: f64,
    step_hi: f64,
    trials: u32,
    /// Gradient descent's Barzilai–Borwein step, L-BFGS's initial scaling.
    scale: f64,
    /// L-BFGS pairs stored and the next slot to write.
    pairs: usize,
    next_pair: usize,
    gradient_norm: f64,
    /// Steps running in which the objective and the gradient stalled.
    stalls: u32,
    /// Whether the finished item's point and report are written out.
    written: bool,
}

impl Item {
    /// Item `id` before its first evaluation.
    fn new(id: usize) -> Item {
        Item {
            id,
            status: None,
            phase: Phase::Start,
            iterations: 0,
            f: f64::NAN,
            slope: 0.0,
            step: 0.0,
            step_lo: 0.0,
            f_lo: 0.0,
            slope_lo: 0.0,
            step_hi: f64::NAN,
            trials: 0,
            scale: 1.0,
            pairs: 0,
            next_pair: 0,
            gradient_norm: f64::NAN,
            stalls: 0,
            written: false,
        }
    }
}

/// The solve's answer, filled in as items finish: each item's point (in float64) and report,
/// and the most iterations any finished item took.
struct Answers {
    points: Vec<f64>,
    reports: Vec<ItemReport>,
    iterations_max: u32,
}

impl Answers {
    fn new(items: usize, n: usize) -> Answers {
        let unfinished = ItemReport {
            status: Status::NotFinite,
            iterations: 0,
            value: f64::NAN,
            gradient_norm: f64::NAN,
        };
        Answers {
            points: vec![0.0; items * n],
            reports: vec![unfinished; items],
            iterations_max: 0,
        }
    }

    /// Writes out the stored items that finished since the last call (`points` and `state`
    /// in slot order); returns how many stored items have finished in all.
    fn collect<T: Precision>(
        &mut self,
        stored: &mut [Item],
        points: &[T],
        state: &[T],
        layout: &Layout,
        n: usize,
    ) -> usize {
        let mut finished = 0;
        for (slot, item) in stored.iter_mut().enumerate() {
            let Some(status) = item.status else { continue };
            finished += 1;
            if item.written {
                continue;
            }
            item.written = true;
            // An item that never had a finite start returns the start itself.
            let point = if item.phase == Phase::Start {
                &points[slot * n..(slot + 1) * n]
            } else {
                &state[slot * layout.stride + layout.x..][..n]
            };
            let to = &mut self.points[item.id * n..(item.id + 1) * n];
            for (to, from) in to.iter_mut().zip(point) {
                *to = from.to_f64();
            }
            self.reports[item.id] = ItemReport {
                status,
                iterations: item.iterations,
                value: item.f,
                gradient_norm: item.gradient_norm,
            };
            self.iterations_max = self.iterations_max.max(item.iterations);
        }
        finished
    }
}

/// What every item shares: sizes, method, tolerances, bounds and the shared factor.
struct Context<T> {
    method: Method,
    n: usize,
    memory: usize,
    gtol: f64,
    ftol: f64,
    max_iter: u32,
    /// Shared bounds (or `None`); per-item bounds live in [`PerItem`].
    lower: Option<Vec<T>>,
    upper: Option<Vec<T>>,
    bounded: bool,
    /// The Cholesky factor of a curvature matrix shared by every item, when there is one
    /// (`None` inside when it is not positive definite even after damping).
    shared_factor: Option<Vec<T>>,
    shared_matrix: Option<Vec<T>>,
    /// The side of a variable declared `spd(n)`, whose points must stay positive definite.
    spd_side: Option<usize>,
}

impl<T> Context<T> {
    /// The context of a solve with shared bounds `lower` and `upper`, and per-item ones when
    /// `per_item_bounds`; the shared curvature is set once it is evaluated.
    fn new(
        method: Method,
        n: usize,
        options: &super::Options,
        (lower, upper): (Option<Vec<T>>, Option<Vec<T>>),
        per_item_bounds: bool,
        spd_side: Option<usize>,
    ) -> Context<T> {
        Context {
            method,
            n,
            memory: method.history(options.memory),
            gtol: options.gtol,
            ftol: options.ftol,
            max_iter: options.max_iter,
            bounded: per_item_bounds || lower.is_some() || upper.is_some(),
            lower,
            upper,
            shared_factor: None,
            shared_matrix: None,
            spd_side,
        }
    }

    /// The floats of scratch an item's update needs: the active set and the direction, then
    /// the curvature's factor and the matrix it is damped from (Newton, Gauss–Newton) or the
    /// L-BFGS coefficients. (`inside_cone`'s copy of an spd point, `n` floats, fits too.)
    fn scratch_len(&self) -> usize {
        let n = self.n;
        2 * n
            + match self.method {
                Method::Newton | Method::GaussNewton => 2 * n * n,
                _ => self.memory,
            }
    }
}

/// Offsets in an item's row of the state array (the GPU's state lanes start with the same).
pub(super) struct Layout {
    pub(super) x: usize,
    pub(super) g: usize,
    pub(super) d: usize,
    pub(super) s: usize,
    pub(super) y: usize,
    pub(super) rho: usize,
    pub(super) stride: usize,
}

impl Layout {
    pub(super) fn new(n: usize, memory: usize) -> Layout {
        Layout {
            x: 0,
            g: n,
            d: 2 * n,
            s: 3 * n,
            y: 3 * n + memory * n,
            rho: 3 * n + 2 * memory * n,
            stride: 3 * n + 2 * memory * n + memory,
        }
    }
}

pub(super) fn run<T: Precision>(
    prepared: Prepared,
    options: &super::Options,
    progress: &mut dyn FnMut(Progress),
) -> Result<Solution, String> {
    let Prepared {
        var,
        symmetric_side,
        spd_side,
        method,
        items,
        entries: n,
        item_shape,
        start,
        start_batched,
        lower,
        upper,
        plan,
        shared_curvature,
        data,
        notes,
        ..
    } = prepared;
    let convert = |v: &[f64]| -> Vec<T> { v.iter().map(|&x| T::from_f64(x)).collect() };
    let split = |b: Option<(Vec<f64>, bool)>| match b {
        None => (None, None),
        Some((values, false)) => (Some(convert(&values)), None),
        Some((values, true)) => (None, Some(convert(&values))),
    };
    let (lower_shared, mut lower_items) = split(lower);
    let (upper_shared, mut upper_items) = split(upper);
    let per_item_bounds = lower_items.is_some() || upper_items.is_some();
    let shared_bounds = (lower_shared, upper_shared);
    let mut context = Context::new(method, n, options, shared_bounds, per_item_bounds, spd_side);
    let layout = Layout::new(n, context.memory);
    let shared_hessian = shared_curvature.is_some();
    // The inputs in the device's precision, every per-item buffer: the binding, before the
    // clock starts.
    let mut evaluator = T::evaluator(&plan, &data, var, items);
    let mut state = vec![T::ZERO; items * layout.stride];
    let mut points = vec![T::ZERO; items * n];
    let clock = Instant::now();
    if let Some(h_plan) = &shared_curvature {
        let matrix = T::evaluate_shared(h_plan, &data);
        let mut factor = matrix.clone();
        if factor_damped(&mut factor, &matrix, n) {
            context.shared_factor = Some(factor);
        }
        context.shared_matrix = Some(matrix);
    }

    // The stored items: slot k holds item `stored[k].id`; every per-item array is in slot
    // order.
    for item in 0..items {
        let from = if start_batched { item * n } else { 0 };
        points[item * n..(item + 1) * n].copy_from_slice(&convert(&start[from..from + n]));
    }
    let mut stored: Vec<Item> = (0..items).map(Item::new).collect();
    project_all(&mut points, &context, (&lower_items, &upper_items));

    let mut answers = Answers::new(items, n);
    let mut round = 0u32;
    while !stored.is_empty() {
        round += 1;
        evaluator.evaluate(&points, stored.len());
        if let Some(side) = symmetric_side {
            symmetrize(evaluator.gradients_mut(), side);
        }
        let per_item = PerItem {
            state: &mut state,
            stored: &mut stored,
            points: &mut points,
            bounds: (&lower_items, &upper_items),
        };
        update_all(&context, &layout, per_item, evaluator.results());
        if round == 1 {
            let not_finite_at_start = stored
                .iter()
                .filter(|i| i.status == Some(Status::NotFinite) && i.iterations == 0)
                .map(|i| i.id)
                .collect();
            outside_domain(not_finite_at_start, items, &data, &start, start_batched, n)?;
        }
        // Finished items are written out; once they are an eighth of the stored ones, they
        // are removed from every per-item array.
        let finished = answers.collect(&mut stored, &points, &state, &layout, n);
        if finished > 0 && finished * 8 >= stored.len() {
            let keep: Vec<usize> = (0..stored.len())
                .filter(|&k| stored[k].status.is_none())
                .collect();
            retain_rows(&mut state, layout.stride, &keep);
            retain_rows(&mut stored, 1, &keep);
            for rows in [
                Some(&mut points),
                lower_items.as_mut(),
                upper_items.as_mut(),
            ] {
                rows.into_iter().for_each(|r| retain_rows(r, n, &keep));
            }
            evaluator.retain(&keep);
        }
        let active = stored.iter().filter(|i| i.status.is_none()).count();
        let iterations_now = stored
            .iter()
            .map(|i| i.iterations)
            .max()
            .unwrap_or(0)
            .max(answers.iterations_max);
        progress(Progress {
            round,
            active,
            items,
            iterations_max: iterations_now,
        });
        if active == 0 {
            break;
        }
    }
    Ok(Solution {
        method,
        items,
        item_shape,
        points: answers.points,
        reports: answers.reports,
        rounds: round,
        shared_hessian,
        solve_seconds: clock.elapsed().as_secs_f64(),
        notes,
        transfers: None,
    })
}

/// Projects every stored item's point into its bounds: the start is kept feasible.
fn project_all<T: Float>(
    points: &mut [T],
    context: &Context<T>,
    (lower_items, upper_items): (&Option<Vec<T>>, &Option<Vec<T>>),
) {
    let n = context.n;
    points
        .par_chunks_mut(n)
        .enumerate()
        .for_each(|(slot, point)| {
            let (lo, hi) = bounds_of(context, lower_items, upper_items, slot, n);
            project(point, lo, hi);
        });
}

/// The stored items' per-item arrays, in slot order: their state rows, scalars, trial points
/// and per-item bounds.
struct PerItem<'a, T> {
    state: &'a mut [T],
    stored: &'a mut [Item],
    points: &'a mut [T],
    bounds: (&'a Option<Vec<T>>, &'a Option<Vec<T>>),
}

/// One round's updates, in parallel: every active stored item's next trial point from its
/// objective, gradient and curvature at the last one (`results`, in slot order).
fn update_all<T: Precision>(
    context: &Context<T>,
    layout: &Layout,
    items: PerItem<T>,
    (values, gradients, curvatures): (&[T], &[T], Option<&[T]>),
) {
    let n = context.n;
    let scratch_len = context.scratch_len();
    let (lower_items, upper_items) = items.bounds;
    (items.state.par_chunks_mut(layout.stride))
        .zip(items.stored.par_iter_mut())
        .zip(items.points.par_chunks_mut(n))
        .enumerate()
        .for_each_init(
            || vec![T::ZERO; scratch_len],
            |scratch, (slot, ((row, item), trial))| {
                if item.status.is_some() {
                    return;
                }
                let (lo, hi) = bounds_of(context, lower_items, upper_items, slot, n);
                let results = Results {
                    f: values[slot].to_f64(),
                    g: &gradients[slot * n..(slot + 1) * n],
                    h: curvatures.map(|h| &h[slot * n * n..(slot + 1) * n * n]),
                };
                context.update(item, row, trial, &results, (lo, hi), layout, scratch);
            },
        );
}

/// Refuses a start outside the objective's domain: an item whose inputs are all finite but
/// whose objective or gradient is not finite at the start. `not_finite_at_start` are the items
/// (of `items`) that stopped as not finite at their start; an item whose own data is not
/// finite only stops, as not finite.
pub(super) fn outside_domain(
    not_finite_at_start: Vec<usize>,
    items: usize,
    data: &[Option<Batch<f64>>],
    start: &[f64],
    start_batched: bool,
    n: usize,
) -> Result<(), String> {
    let finite_inputs = |id: usize| {
        let start_item = if start_batched {
            &start[id * n..(id + 1) * n]
        } else {
            &start[..n]
        };
        start_item.iter().all(|v| v.is_finite())
            && data.iter().flatten().all(|b| {
                let item = if b.batch.is_some() { id } else { 0 };
                b.item(item).iter().all(|v| v.is_finite())
            })
    };
    let mut outside: Vec<usize> = (not_finite_at_start.into_iter())
        .filter(|&id| finite_inputs(id))
        .collect();
    outside.sort_unstable();
    if outside.is_empty() {
        return Ok(());
    }
    let first: Vec<String> = outside.iter().take(5).map(|i| i.to_string()).collect();
    Err(format!(
        "the start is outside the objective's domain: the objective or its gradient is not \
         finite there for {} of {} items (first: {}), whose inputs are finite; give a start \
         inside the domain (an array named like the variable)",
        outside.len(),
        items,
        first.join(", ")
    ))
}

/// The bounds of stored item `slot`: its own, else the shared ones.
fn bounds_of<'a, T>(
    context: &'a Context<T>,
    lower_items: &'a Option<Vec<T>>,
    upper_items: &'a Option<Vec<T>>,
    slot: usize,
    n: usize,
) -> (Option<&'a [T]>, Option<&'a [T]>) {
    let pick = |items: &'a Option<Vec<T>>, shared: &'a Option<Vec<T>>| match items {
        Some(v) => Some(&v[slot * n..(slot + 1) * n]),
        None => shared.as_deref(),
    };
    (
        pick(lower_items, &context.lower),
        pick(upper_items, &context.upper),
    )
}

/// One item's evaluation at its trial point.
struct Results<'a, T> {
    f: f64,
    g: &'a [T],
    h: Option<&'a [T]>,
}

type Bounds<'a, T> = (Option<&'a [T]>, Option<&'a [T]>);

pub(super) fn project<T: Float>(point: &mut [T], lower: Option<&[T]>, upper: Option<&[T]>) {
    if let Some(lo) = lower {
        for (p, &l) in point.iter_mut().zip(lo) {
            if *p < l {
                *p = l;
            }
        }
    }
    if let Some(hi) = upper {
        for (p, &u) in point.iter_mut().zip(hi) {
            if *p > u {
                *p = u;
            }
        }
    }
}

fn dot<T: Float>(a: &[T], b: &[T]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| x.to_f64() * y.to_f64())
        .sum()
}

/// Factors `matrix` into `factor`, adding `lambda*I` with a growing `lambda` while the
/// factorization fails (Levenberg–Marquardt damping). `false` when even that fails.
pub(super) fn factor_damped<T: Float>(factor: &mut [T], matrix: &[T], n: usize) -> bool {
    if cholesky(factor, n) {
        return true;
    }
    let largest = (0..n)
        .map(|i| matrix[i * n + i].to_f64().abs())
        .fold(0.0f64, f64::max);
    if !largest.is_finite() {
        return false;
    }
    let mut lambda = 1e-6 * largest.max(1e-12);
    for _ in 0..DAMPING_TRIES {
        factor.copy_from_slice(matrix);
        for i in 0..n {
            factor[i * n + i] = factor[i * n + i] + T::from_f64(lambda);
        }
        if cholesky(factor, n) {
            return true;
        }
        lambda *= 10.0;
    }
    false
}

impl<T: Float> Context<T> {
    /// Consumes an item's results at its trial point: the line search's verdict, then, for
    /// an accepted point, the convergence test and the next direction and trial.
    #[allow(clippy::too_many_arguments)]
    fn update(
        &self,
        item: &mut Item,
        row: &mut [T],
        trial: &mut [T],
        results: &Results<'_, T>,
        bounds: Bounds<'_, T>,
        layout: &Layout,
        scratch: &mut [T],
    ) {
        let n = self.n;
        let finite = results.f.is_finite()
            && results.g.iter().all(|v| v.is_finite())
            && self.inside_cone(trial, scratch);
        if item.phase == Phase::Start {
            if !finite {
                item.status = Some(Status::NotFinite);
                item.f = results.f;
                return;
            }
            self.accept(item, row, trial, results, bounds, layout, scratch);
            return;
        }
        let decrease = {
            // g·(trial - x): the first-order change along the (projected) path.
            let (x, g) = (&row[layout.x..layout.x + n], &row[layout.g..layout.g + n]);
            trial
                .iter()
                .zip(x)
                .zip(g)
                .map(|((&t, &x), &g)| (t.to_f64() - x.to_f64()) * g.to_f64())
                .sum::<f64>()
        };
        // Sufficient decrease, judged within the rounding of f (near a minimum the decrease
        // a step predicts is below what f resolves, and the gradient, not f, shows progress).
        // A decrease of more than ten times the first-order prediction is refused too: a
        // convex function never falls below its tangent, so such a trial has jumped across a
        // region where the objective is undefined (a `logdet` whose matrix passed through
        // singularity) into another part of its domain.
        let noise = ROUNDING * T::EPSILON.to_f64() * item.f.abs().max(1.0);
        let armijo = finite
            && results.f <= item.f + C1 * decrease + noise
            && results.f >= item.f + JUMP * decrease - noise;
        item.trials += 1;
        let wolfe_search = self.method == Method::Lbfgs && !self.bounded;
        if wolfe_search && item.trials <= WOLFE_TRIALS {
            let slope_t = dot(results.g, &row[layout.d..layout.d + n]);
            if !armijo || (item.step_lo > 0.0 && results.f >= item.f_lo) {
                item.step_hi = item.step;
            } else {
                if slope_t.abs() <= -C2 * item.slope {
                    self.accept(item, row, trial, results, bounds, layout, scratch);
                    return;
                }
                if !item.step_hi.is_nan() && slope_t * (item.step_hi - item.step_lo) >= 0.0 {
                    item.step_hi = item.step_lo;
                }
                item.step_lo = item.step;
                item.f_lo = results.f;
                item.slope_lo = slope_t;
            }
            item.step = if item.step_hi.is_nan() {
                // Extrapolation doubles the step, but moves no entry by more than the point's
                // own scale, so that a search cannot jump across a region where the objective
                // is undefined (`logdet` of a matrix that passed through singularity) into
                // another part of its domain.
                let x = &row[layout.x..layout.x + n];
                let d = &row[layout.d..layout.d + n];
                let scale = x.iter().map(|v| v.to_f64().abs()).fold(1.0, f64::max);
                let reach = d.iter().map(|v| v.to_f64().abs()).fold(0.0, f64::max);
                let limit = if reach > 0.0 {
                    scale / reach
                } else {
                    f64::INFINITY
                };
                let grown = (item.step * 2.0).min(limit);
                if grown <= item.step {
                    // The step cannot grow: settle for the sufficient decrease it has.
                    self.accept(item, row, trial, results, bounds, layout, scratch);
                    return;
                }
                grown
            } else {
                0.5 * (item.step_lo + item.step_hi)
            };
        } else if armijo {
            self.accept(item, row, trial, results, bounds, layout, scratch);
            return;
        } else if item.trials >= MAX_TRIALS {
            item.status = Some(Status::LineSearchFailed);
            return;
        } else {
            // Backtracking by the minimum of the quadratic through f, the slope and f(t),
            // kept within [0.1, 0.5] of the step.
            // The first-order change is `decrease`, measured along the projected path (not
            // the slope times the step: a held variable's clipped move changes nothing).
            let t = item.step;
            let mut next = 0.5 * t;
            if results.f.is_finite() {
                let curvature = results.f - item.f - decrease;
                if curvature > 0.0 {
                    next = (-decrease * t / (2.0 * curvature)).clamp(0.1 * t, 0.5 * t);
                }
            }
            if wolfe_search && item.step_lo > 0.0 {
                // After the Wolfe search, the sufficient decrease it already found.
                next = item.step_lo.min(next);
            }
            item.step = next;
        }
        self.place_trial(item, row, trial, bounds, layout);
    }

    /// Takes the trial as the new point; tests convergence; sets the next direction.
    #[allow(clippy::too_many_arguments)]
    fn accept(
        &self,
        item: &mut Item,
        row: &mut [T],
        trial: &mut [T],
        results: &Results<'_, T>,
        bounds: Bounds<'_, T>,
        layout: &Layout,
        scratch: &mut [T],
    ) {
        let n = self.n;
        let first = item.phase == Phase::Start;
        let f_old = item.f;
        if !first {
            item.iterations += 1;
            // s = trial - x, y = g_new - g: L-BFGS's pair, gradient descent's step length.
            let (mut ss, mut sy, mut yy) = (0.0, 0.0, 0.0);
            for e in 0..n {
                let s = trial[e].to_f64() - row[layout.x + e].to_f64();
                let y = results.g[e].to_f64() - row[layout.g + e].to_f64();
                ss += s * s;
                sy += s * y;
                yy += y * y;
            }
            if sy > f64::EPSILON * (ss * yy).sqrt() && sy > 0.0 {
                item.scale = match self.method {
                    Method::GradientDescent => ss / sy,
                    _ => sy / yy,
                };
                if self.memory > 0 {
                    let k = item.next_pair;
                    for e in 0..n {
                        row[layout.s + k * n + e] = trial[e] - row[layout.x + e];
                        row[layout.y + k * n + e] = results.g[e] - row[layout.g + e];
                    }
                    row[layout.rho + k] = T::from_f64(1.0 / sy);
                    item.next_pair = (k + 1) % self.memory;
                    item.pairs = (item.pairs + 1).min(self.memory);
                }
            }
        }
        row[layout.x..layout.x + n].copy_from_slice(trial);
        row[layout.g..layout.g + n].copy_from_slice(results.g);
        item.f = results.f;
        item.phase = Phase::Search;
        let (x, g) = (&row[layout.x..layout.x + n], &row[layout.g..layout.g + n]);
        let previous_norm = item.gradient_norm;
        item.gradient_norm = projected_gradient_norm(x, g, bounds);
        let scale = item.f.abs().max(1.0);
        if item.gradient_norm <= self.gtol * scale {
            item.status = Some(Status::Converged);
            return;
        }
        // Stalled: the objective stopped decreasing and the gradient stopped shrinking, in
        // two steps running that the line search took at once (while the gradient still
        // halves, as in Newton's last steps, or once the active set changes, as in a bound's
        // last steps, the iterations go on; a shortened step tells nothing).
        let stalled = item.gradient_norm > 0.5 * previous_norm
            && item.trials <= 1
            && f_old - item.f <= self.ftol * f_old.abs().max(1.0);
        item.stalls = if !first && stalled {
            item.stalls + 1
        } else {
            0
        };
        if item.stalls >= 2 {
            item.status = Some(Status::Converged);
            return;
        }
        if item.iterations >= self.max_iter {
            item.status = Some(Status::MaxIter);
            return;
        }
        self.direction(item, row, results.h, bounds, layout, scratch);
        if item.status.is_some() {
            return;
        }
        self.place_trial(item, row, trial, bounds, layout);
    }

    /// The search direction at the current point, into the row's `d`, with the slope and the
    /// first trial step.
    fn direction(
        &self,
        item: &mut Item,
        row: &mut [T],
        curvature: Option<&[T]>,
        bounds: Bounds<'_, T>,
        layout: &Layout,
        scratch: &mut [T],
    ) {
        let n = self.n;
        let (active, rest) = scratch.split_at_mut(n);
        let (dir, rest) = rest.split_at_mut(n);
        let x = &row[layout.x..layout.x + n];
        let g = &row[layout.g..layout.g + n];
        let any_active = self.active_set(x, g, bounds, active);
        let free = |e: usize| active[e] == T::ZERO;
        let infinity_norm = g.iter().map(|v| v.to_f64().abs()).fold(0.0, f64::max);
        let mut first_step = 1.0;
        // `dir` is first the free part of the gradient, then what the method makes of it.
        // A variable a bound holds moves by its own gradient component, scaled as the method
        // scales (by its diagonal curvature in Newton), and the projection clips it to the
        // bound (Bertsekas' projected Newton).
        for e in 0..n {
            dir[e] = if free(e) { g[e] } else { T::ZERO };
        }
        match self.method {
            Method::Newton | Method::GaussNewton => {
                let work = &mut rest[..2 * n * n];
                if !self.newton_direction(dir, g, active, any_active, curvature, work) {
                    // No positive definite model: the gradient's direction (below).
                    dir.iter_mut().for_each(|v| *v = T::NAN);
                }
            }
            Method::Lbfgs => {
                let alpha = &mut rest[..self.memory];
                self.lbfgs_direction(item, row, layout, dir, active, alpha);
                if item.pairs == 0 {
                    first_step = 1.0 / infinity_norm.max(1.0);
                }
            }
            Method::GradientDescent | Method::Auto => {
                dir.copy_from_slice(g);
                first_step = if item.iterations > 0 {
                    item.scale
                } else {
                    1.0 / infinity_norm.max(1.0)
                };
            }
        }
        let (head, tail) = row.split_at_mut(layout.d);
        let g = &head[layout.g..layout.g + n];
        let d = &mut tail[..n];
        for e in 0..n {
            d[e] = -dir[e];
        }
        let mut slope = dot(g, d);
        if !d.iter().all(|v| v.is_finite()) || slope.is_nan() || slope >= 0.0 {
            // Not a descent direction (no positive definite model, rounding): the gradient's.
            for e in 0..n {
                d[e] = -g[e];
            }
            slope = dot(g, d);
            first_step = 1.0 / infinity_norm.max(1.0);
            item.pairs = 0;
        }
        if slope.is_nan() || slope >= 0.0 {
            // No descent direction at all: the free gradient is zero.
            item.status = Some(Status::Converged);
            return;
        }
        item.slope = slope;
        item.step = first_step;
        item.step_lo = 0.0;
        item.f_lo = item.f;
        item.slope_lo = slope;
        item.step_hi = f64::NAN;
        item.trials = 0;
    }

    /// The Newton (or Gauss–Newton) direction, in place of the free gradient in `dir`: the
    /// shared factor's solve when no bound holds a variable, else the damped Cholesky
    /// factorization of the curvature reduced to the free variables (in `work`'s first n²
    /// floats, damped from its copy in the next n²). A variable a bound holds moves by its
    /// gradient component over its diagonal curvature. `false` when there is no positive
    /// definite model.
    fn newton_direction(
        &self,
        dir: &mut [T],
        g: &[T],
        active: &[T],
        any_active: bool,
        curvature: Option<&[T]>,
        work: &mut [T],
    ) -> bool {
        let n = self.n;
        let (factor, matrix) = work.split_at_mut(n * n);
        if let (Some(shared), false) = (&self.shared_factor, any_active) {
            cholesky_solve(shared, n, dir);
            return true;
        }
        let Some(h) = curvature.or(self.shared_matrix.as_deref()) else {
            return false;
        };
        for e in (0..n).filter(|&e| active[e] != T::ZERO) {
            let diagonal = h[e * n + e].to_f64();
            let scale = if diagonal > 0.0 && diagonal.is_finite() {
                T::from_f64(1.0 / diagonal)
            } else {
                T::ONE
            };
            dir[e] = g[e] * scale;
        }
        factor.copy_from_slice(h);
        if any_active {
            reduce(factor, active, n);
        }
        matrix.copy_from_slice(factor);
        let ok = factor_damped(factor, matrix, n);
        if ok {
            cholesky_solve(factor, n, dir);
        }
        ok
    }

    /// The L-BFGS direction, in place of the free gradient in `dir`: the two-loop recursion
    /// over the item's stored pairs, newest first, scaled by `item.scale` once there are
    /// pairs (`alpha` holds the first loop's coefficients). A variable a bound holds moves by
    /// its gradient component, scaled alike.
    fn lbfgs_direction(
        &self,
        item: &Item,
        row: &[T],
        layout: &Layout,
        dir: &mut [T],
        active: &[T],
        alpha: &mut [T],
    ) {
        let (n, m) = (self.n, self.memory);
        let g = &row[layout.g..layout.g + n];
        let s = |k: usize| &row[layout.s + k * n..layout.s + (k + 1) * n];
        let y = |k: usize| &row[layout.y + k * n..layout.y + (k + 1) * n];
        let rho = |k: usize| row[layout.rho + k].to_f64();
        for (j, alpha_j) in alpha.iter_mut().enumerate().take(item.pairs) {
            let k = (item.next_pair + m - 1 - j) % m;
            let a = T::from_f64(rho(k) * dot(s(k), dir));
            *alpha_j = a;
            for (v, &yk) in dir.iter_mut().zip(y(k)) {
                *v = *v - a * yk;
            }
        }
        let gamma = if item.pairs > 0 {
            T::from_f64(item.scale)
        } else {
            T::ONE
        };
        if item.pairs > 0 {
            dir.iter_mut().for_each(|v| *v = *v * gamma);
        }
        for j in (0..item.pairs).rev() {
            let k = (item.next_pair + m - 1 - j) % m;
            let b = rho(k) * dot(y(k), dir);
            let step = T::from_f64(alpha[j].to_f64() - b);
            for (v, &sk) in dir.iter_mut().zip(s(k)) {
                *v = *v + step * sk;
            }
        }
        for e in (0..n).filter(|&e| active[e] != T::ZERO) {
            dir[e] = g[e] * gamma;
        }
    }

    /// For a variable declared `spd(n)`, whether the point is positive definite (its
    /// Cholesky factorization exists): the domain the declaration states, which a line search
    /// could otherwise step across (`-logdet(S) + tr(S*C)` is finite again, and unbounded
    /// below, where two eigenvalues are negative). Always true for other variables.
    fn inside_cone(&self, point: &[T], scratch: &mut [T]) -> bool {
        let Some(side) = self.spd_side else {
            return true;
        };
        let copy = &mut scratch[..side * side];
        copy.copy_from_slice(point);
        cholesky(copy, side)
    }

    /// Writes `P(x + step*d)` into the trial point.
    fn place_trial(
        &self,
        item: &Item,
        row: &[T],
        trial: &mut [T],
        bounds: Bounds<'_, T>,
        layout: &Layout,
    ) {
        let n = self.n;
        let t = T::from_f64(item.step);
        for e in 0..n {
            trial[e] = row[layout.x + e] + t * row[layout.d + e];
        }
        project(trial, bounds.0, bounds.1);
    }

    /// Marks in `active` (1 or 0) the variables a bound holds and the gradient pushes
    /// against (Bertsekas' ε-active set); returns whether any is.
    fn active_set(&self, x: &[T], g: &[T], bounds: Bounds<'_, T>, active: &mut [T]) -> bool {
        active.iter_mut().for_each(|a| *a = T::ZERO);
        if !self.bounded {
            return false;
        }
        // Bertsekas' width: the projected gradient's norm, at most a thousandth of the
        // point's scale (a wider band holds variables that still have far to go).
        let scale = x.iter().map(|v| v.to_f64().abs()).fold(1.0, f64::max);
        let width = projected_gradient_norm(x, g, bounds).min(1e-3 * scale);
        let mut any = false;
        for e in 0..self.n {
            let (xe, ge) = (x[e].to_f64(), g[e].to_f64());
            let at_lower = bounds.0.is_some_and(|l| xe <= l[e].to_f64() + width) && ge > 0.0;
            let at_upper = bounds.1.is_some_and(|u| xe >= u[e].to_f64() - width) && ge < 0.0;
            if at_lower || at_upper {
                active[e] = T::ONE;
                any = true;
            }
        }
        any
    }
}

/// The Hessian restricted to the free variables: an active variable's row and column are
/// zero and its diagonal one.
fn reduce<T: Float>(matrix: &mut [T], active: &[T], n: usize) {
    for i in 0..n {
        for j in 0..n {
            if active[i] != T::ZERO || active[j] != T::ZERO {
                matrix[i * n + j] = if i == j { T::ONE } else { T::ZERO };
            }
        }
    }
}

/// `max_e |x_e - P(x_e - g_e)|`: the gradient's infinity norm where no bound holds.
fn projected_gradient_norm<T: Float>(x: &[T], g: &[T], bounds: Bounds<'_, T>) -> f64 {
    let mut norm = 0.0f64;
    for e in 0..x.len() {
        let (xe, ge) = (x[e].to_f64(), g[e].to_f64());
        let mut moved = xe - ge;
        if let Some(l) = bounds.0 {
            moved = moved.max(l[e].to_f64());
        }
        if let Some(u) = bounds.1 {
            moved = moved.min(u[e].to_f64());
        }
        let component = (xe - moved).abs();
        if !component.is_finite() {
            return f64::INFINITY;
        }
        norm = norm.max(component);
    }
    norm
}
