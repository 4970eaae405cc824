//! Batches: named arrays bound to a program's variables, and the float64 reference executor.
//!
//! In: arrays by name (from `.npz` files or generated), a checked program. Out: the sizes of
//! its dimensions, which variables are batched, the batch size ([`bind`]); and, for a
//! [`Plan`], every output for every item ([`run_reference`]). Invariants: an array with as
//! many axes as its variable's rank (0 scalar, 1 vector, 2 matrix) is shared, one more
//! leading axis means batched; every batched array has the same batch size; a dimension
//! gets one size from all arrays that meet it; every error names the variable and the shapes.
//! The reference is the ground truth: float64, item by item, each operation by
//! [`eval::apply`](crate::eval::apply), shared steps computed once.

use crate::eval::{apply, Mat};
use crate::expr::{Dim, Func, Graph, Node};
use crate::plan::Plan;

/// A batch of values of one shape: `data` holds `batch` (or 1) row-major items back to back.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch<T> {
    /// `None` for a shared value (one item, no leading axis).
    pub batch: Option<usize>,
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<T>,
}

impl<T: Copy> Batch<T> {
    pub fn items(&self) -> usize {
        self.batch.unwrap_or(1)
    }

    pub fn item(&self, i: usize) -> &[T] {
        let n = self.rows * self.cols;
        if self.batch.is_none() {
            &self.data[..n]
        } else {
            &self.data[i * n..(i + 1) * n]
        }
    }
}

/// The values, so that executors take owned batches and borrowed slices alike (their
/// shapes come from the plan).
impl<T> AsRef<[T]> for Batch<T> {
    fn as_ref(&self) -> &[T] {
        &self.data
    }
}

impl Batch<f64> {
    pub fn item_mat(&self, i: usize) -> Mat {
        Mat {
            rows: self.rows,
            cols: self.cols,
            data: self.item(i).to_vec(),
        }
    }
}

/// An array as read from a file: its shape (axes) and its values in C order.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedArray {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// Arrays bound to a program's variables.
#[derive(Clone, Debug)]
pub struct Bound {
    pub dim_sizes: Vec<usize>,
    /// Indexed by variable.
    pub batched: Vec<bool>,
    /// Indexed by variable; `None` for variables the program declares but never reads.
    pub values: Vec<Option<Batch<f64>>>,
    /// The batch size, `None` when every input is shared.
    pub batch: Option<usize>,
    /// Arrays that name no variable of the program.
    pub unused: Vec<String>,
}

/// Why arrays do not fit a program.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BindError {
    #[error("no array for variable `{0}`")]
    Missing(String),
    #[error("array `{name}` has shape {shape:?}, but `{name}` is a {kind}: expected {expected}")]
    WrongRank {
        name: String,
        shape: Vec<usize>,
        kind: String,
        expected: String,
    },
    #[error("array `{name}` has shape {shape:?}: its dimension `{dim}` is {got}, but {source_desc} makes `{dim}` {size}")]
    WrongSize {
        name: String,
        shape: Vec<usize>,
        dim: String,
        got: usize,
        size: usize,
        source_desc: String,
    },
    #[error("array `{name}` has {got} items, but `{other}` has {size}: batched arrays must agree on the batch size")]
    BatchSize {
        name: String,
        got: usize,
        other: String,
        size: usize,
    },
    #[error("array `{name}` has a zero-length axis (shape {shape:?})")]
    Empty { name: String, shape: Vec<usize> },
}

/// An array's name and shape, all that binding reads (the values stay where they are).
pub trait ArrayShape {
    fn name(&self) -> &str;
    fn shape(&self) -> &[usize];
}

impl ArrayShape for NamedArray {
    fn name(&self) -> &str {
        &self.name
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }
}

/// Where one variable's values are: which array, the shape of one item, and the number of
/// items (`None` when the array is shared).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VarArray {
    pub array: usize,
    pub rows: usize,
    pub cols: usize,
    pub items: Option<usize>,
}

/// Arrays bound to a program's variables by their shapes alone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub dim_sizes: Vec<usize>,
    /// Indexed by variable.
    pub batched: Vec<bool>,
    /// Indexed by variable; `None` for variables the program declares but never reads.
    pub arrays: Vec<Option<VarArray>>,
    /// The batch size, `None` when every input is shared.
    pub batch: Option<usize>,
    /// Arrays that name no variable of the program.
    pub unused: Vec<String>,
}

/// Binds `arrays` to the variables of `graph` that `reads` lists, copying their values.
pub fn bind(graph: &Graph, reads: &[u32], arrays: &[NamedArray]) -> Result<Bound, BindError> {
    let binding = bind_shapes(graph, reads, arrays)?;
    let values = (binding.arrays.iter())
        .map(|a| {
            a.map(|a| Batch {
                batch: a.items,
                rows: a.rows,
                cols: a.cols,
                data: arrays[a.array].data.clone(),
            })
        })
        .collect();
    Ok(Bound {
        dim_sizes: binding.dim_sizes,
        batched: binding.batched,
        values,
        batch: binding.batch,
        unused: binding.unused,
    })
}

/// Binds arrays to the variables of `graph` that `reads` lists by their names and shapes: the
/// sizes of the dimensions, which variables are batched, the batch size. Errors as [`bind`].
pub fn bind_shapes<A: ArrayShape>(
    graph: &Graph,
    reads: &[u32],
    arrays: &[A],
) -> Result<Binding, BindError> {
    let mut dim_sizes: Vec<Option<(usize, String)>> = graph
        .dims
        .iter()
        .map(|d| d.size.map(|s| (s, "the declaration".to_string())))
        .collect();
    let mut batched = vec![false; graph.vars.len()];
    let mut bound: Vec<Option<VarArray>> = vec![None; graph.vars.len()];
    let mut batch: Option<(usize, String)> = None;
    for &v in reads {
        let var = &graph.vars[v as usize];
        let index = (arrays.iter())
            .position(|a| a.name() == var.name)
            .ok_or_else(|| BindError::Missing(var.name.clone()))?;
        let array = NamedShape {
            name: arrays[index].name().to_string(),
            shape: arrays[index].shape().to_vec(),
        };
        if array.shape.contains(&0) {
            return Err(BindError::Empty {
                name: array.name.clone(),
                shape: array.shape.clone(),
            });
        }
        let axes: Vec<Dim> = [var.shape.rows, var.shape.cols]
            .into_iter()
            .filter(|d| *d != Dim::One)
            .collect();
        let (kind, expected) = match axes.len() {
            0 => ("scalar", "0 axes, or 1 for a batch".to_string()),
            1 => ("vector", "1 axis, or 2 for a batch".to_string()),
            _ => ("matrix", "2 axes, or 3 for a batch".to_string()),
        };
        let (item_shape, items) = if array.shape.len() == axes.len() {
            (&array.shape[..], None)
        } else if array.shape.len() == axes.len() + 1 {
            (&array.shape[1..], Some(array.shape[0]))
        } else {
            return Err(BindError::WrongRank {
                name: array.name.clone(),
                shape: array.shape.clone(),
                kind: kind.into(),
                expected,
            });
        };
        for (axis, &dim) in axes.iter().enumerate() {
            let Dim::Sym(d) = dim else { continue };
            let got = item_shape[axis];
            match &dim_sizes[d as usize] {
                Some((size, source)) if *size != got => {
                    return Err(BindError::WrongSize {
                        name: array.name.clone(),
                        shape: array.shape.clone(),
                        dim: graph.dims[d as usize].name.clone(),
                        got,
                        size: *size,
                        source_desc: source.clone(),
                    })
                }
                Some(_) => {}
                None => dim_sizes[d as usize] = Some((got, format!("array `{}`", array.name))),
            }
        }
        if let Some(n) = items {
            match &batch {
                Some((size, other)) if *size != n => {
                    return Err(BindError::BatchSize {
                        name: array.name.clone(),
                        got: n,
                        other: other.clone(),
                        size: *size,
                    })
                }
                Some(_) => {}
                None => batch = Some((n, array.name.clone())),
            }
        }
        batched[v as usize] = items.is_some();
        let (rows, cols) = match axes.len() {
            0 => (1, 1),
            1 => (item_shape[0], 1),
            _ => (item_shape[0], item_shape[1]),
        };
        bound[v as usize] = Some(VarArray {
            array: index,
            rows,
            cols,
            items,
        });
    }
    let unused = arrays
        .iter()
        .filter(|a| {
            reads
                .iter()
                .all(|&v| graph.vars[v as usize].name != a.name())
        })
        .map(|a| a.name().to_string())
        .collect();
    // Dimensions no array meets (those of constants such as `eye` in a free context) take
    // the size 1; the type checker has already tied every other one to a variable.
    let dim_sizes = dim_sizes
        .into_iter()
        .map(|d| d.map_or(1, |(s, _)| s))
        .collect();
    Ok(Binding {
        dim_sizes,
        batched,
        arrays: bound,
        batch: batch.map(|(n, _)| n),
        unused,
    })
}

/// One array's name and shape, owned, for the error messages.
struct NamedShape {
    name: String,
    shape: Vec<usize>,
}

/// Runs `plan` in float64, item by item. `inputs[k]` is the value of `plan.inputs()[k]`.
/// Returns one batch per output of the plan: `batch` items when any input is batched (an
/// output that depends on shared inputs only is repeated), else one item and no batch axis.
pub fn run_reference<I: AsRef<[f64]>>(plan: &Plan, inputs: &[I], batch: usize) -> Vec<Batch<f64>> {
    let mut outputs = empty_outputs(plan, batch);
    walk(
        plan,
        batch,
        |i, args: &[&Mat], item| {
            let step = &plan.steps()[i];
            match step.input {
                Some(k) => {
                    let len = step.len();
                    let at = if step.batched { item * len } else { 0 };
                    Mat {
                        rows: step.rows,
                        cols: step.cols,
                        data: inputs[k].as_ref()[at..at + len].to_vec(),
                    }
                }
                None => apply(&step.node, args, step.rows, step.cols),
            }
        },
        |_, values| append_outputs(plan, &mut outputs, values),
    );
    outputs
}

/// Whether float32 rounds the result of `node` (a sum, a product, a function); a negation,
/// a transpose, a diagonal, `abs`, `sign`, `relu`, a constant or an input it does not.
fn rounds(node: &Node) -> bool {
    !matches!(
        node,
        Node::Var(_)
            | Node::Const(_)
            | Node::Fill(..)
            | Node::Eye(_)
            | Node::Neg(_)
            | Node::Transpose(_)
            | Node::Diag(_)
            | Node::DiagPart(_)
            | Node::Map(Func::Abs | Func::Sign | Func::Relu, _)
    )
}

/// One empty batch per output of `plan`, with room for `batch` items (one when the plan is
/// not batched).
fn empty_outputs(plan: &Plan, batch: usize) -> Vec<Batch<f64>> {
    let items = if plan.is_batched() { batch } else { 1 };
    (plan.outputs().iter())
        .map(|&o| {
            let step = &plan.steps()[o];
            Batch {
                batch: plan.is_batched().then_some(batch),
                rows: step.rows,
                cols: step.cols,
                data: Vec::with_capacity(items * step.len()),
            }
        })
        .collect()
}

/// Appends one item's output values (`values[i]` is step `i`'s) to `outputs`.
fn append_outputs(plan: &Plan, outputs: &mut [Batch<f64>], values: &[&Mat]) {
    for (out, &o) in outputs.iter_mut().zip(plan.outputs()) {
        out.data.extend_from_slice(&values[o].data);
    }
}

/// `m` rounded to float32, and when `inexact` (an operation float32 rounds) each entry that is
/// not an integer moved by half a float32 ulp, up or down by a pattern of `step` and entry.
/// Integers stay: float32 holds them exactly, and an exponent of 2 moved off 2 would make a
/// negative base's power NaN.
fn rounded(mut m: Mat, step: usize, inexact: bool) -> Mat {
    let half_ulp = f64::from(f32::EPSILON) / 2.0;
    for (k, x) in m.data.iter_mut().enumerate() {
        *x = f64::from(*x as f32);
        if !inexact || (x.fract() == 0.0 && x.abs() < 16_777_216.0) {
            continue;
        }
        let up = ((step.wrapping_mul(0x9E37_79B1) ^ k.wrapping_mul(0x85EB_CA77)) >> 7) & 1;
        *x *= if up == 1 {
            1.0 + half_ulp
        } else {
            1.0 - half_ulp
        };
    }
    m
}

/// What float32 can resolve of the reference on `inputs`, in one pass that evaluates each
/// step twice: exactly, and on `moved` inputs with every intermediate rounded to float32 (as
/// any float32 device stores them) and each one an operation rounds (see `rounds`) that is not
/// an integer moved by half a float32 ulp up or down, in a pattern that differs from step to
/// step and entry to entry, as independent roundings would.
///
/// Returns the outputs of that rounded run (where they differ much from [`run_reference`],
/// no float32 evaluation of the formula can be accurate: `1 - tanh(x)^2` once `tanh(x)` is
/// within an ulp of 1; `exp(log(x))./x - 1`, which rounding alone would leave exactly 0 here)
/// and, for each item (one when the plan is not batched), the largest finite magnitude among
/// the values float32 resolves: those the rounded run keeps within a relative 1e-4. It is the
/// scale of the numbers a result is computed from: `exp(log(x))./x - 1` is 0 while its terms
/// are 1, and an `inv` of a nearly singular matrix, which float32 does not resolve, does not
/// count.
pub fn float32_resolution(
    plan: &Plan,
    inputs: &[&Batch<f64>],
    moved: &[&Batch<f64>],
    batch: usize,
) -> (Vec<Batch<f64>>, Vec<f64>) {
    let steps = plan.steps();
    let mut rounded_outputs = empty_outputs(plan, batch);
    let mut magnitudes = Vec::new();
    walk(
        plan,
        batch,
        |i, args: &[&(Mat, Mat)], item| {
            let step = &steps[i];
            match step.input {
                Some(k) => (
                    inputs[k].item_mat(item),
                    rounded(moved[k].item_mat(item), i, false),
                ),
                None => {
                    let exact: Vec<&Mat> = args.iter().map(|(e, _)| e).collect();
                    let perturbed: Vec<&Mat> = args.iter().map(|(_, p)| p).collect();
                    let (r, c) = (step.rows, step.cols);
                    (
                        apply(&step.node, &exact, r, c),
                        rounded(apply(&step.node, &perturbed, r, c), i, rounds(&step.node)),
                    )
                }
            }
        },
        |_, values| {
            let perturbed: Vec<&Mat> = values.iter().map(|(_, p)| p).collect();
            append_outputs(plan, &mut rounded_outputs, &perturbed);
            let magnitude = (values.iter())
                .filter(|(exact, perturbed)| {
                    let moved = perturbed.zip(exact, |a, b| a - b).norm();
                    moved <= 1e-4 * exact.norm()
                })
                .map(|(exact, _)| {
                    (exact.data.iter())
                        .filter(|x| x.is_finite())
                        .fold(0.0f64, |a, x| a.max(x.abs()))
                })
                .fold(0.0, f64::max);
            magnitudes.push(magnitude);
        },
    );
    (rounded_outputs, magnitudes)
}

/// Evaluates `plan` over a batch: `value(i, args, item)` gives step `i`'s value for `item`
/// from its arguments' values (none for an input), shared steps once with `item` 0; then
/// `done(item, values)` sees every step's value for each item (`values[i]`, shared ones
/// included), once with item 0 when the plan is not batched.
fn walk<V>(
    plan: &Plan,
    batch: usize,
    mut value: impl FnMut(usize, &[&V], usize) -> V,
    mut done: impl FnMut(usize, &[&V]),
) {
    let steps = plan.steps();
    let mut shared: Vec<Option<V>> = (0..steps.len()).map(|_| None).collect();
    for (i, step) in steps.iter().enumerate() {
        if step.batched {
            continue;
        }
        let args: Vec<&V> = (step.args.iter())
            .map(|&a| shared[a].as_ref().expect("shared argument"))
            .collect();
        let v = value(i, &args, 0);
        shared[i] = Some(v);
    }
    if !plan.is_batched() {
        let values: Vec<&V> = (shared.iter())
            .map(|v| v.as_ref().expect("every step evaluated"))
            .collect();
        done(0, &values);
        return;
    }
    let mut item_values: Vec<Option<V>> = (0..steps.len()).map(|_| None).collect();
    for item in 0..batch {
        for (i, step) in steps.iter().enumerate() {
            if !step.batched {
                continue;
            }
            let args: Vec<&V> = (step.args.iter())
                .map(|&a| evaluated(steps, &shared, &item_values, a))
                .collect();
            let v = value(i, &args, item);
            item_values[i] = Some(v);
        }
        let values: Vec<&V> = (0..steps.len())
            .map(|i| evaluated(steps, &shared, &item_values, i))
            .collect();
        done(item, &values);
    }
}

/// Step `i`'s value in [`walk`]: the item's when the step is batched, else the shared one.
fn evaluated<'a, V>(
    steps: &[crate::plan::Step],
    shared: &'a [Option<V>],
    item: &'a [Option<V>],
    i: usize,
) -> &'a V {
    let values = if steps[i].batched { item } else { shared };
    values[i].as_ref().expect("steps are evaluated in order")
}

/// Sizes below this are never refused by [`fits_in_memory`].
const ALWAYS_FITS_BYTES: f64 = 64.0 * 1024.0 * 1024.0;

/// `Err` with a message when `bytes` are more than this machine's available memory
/// (`MemAvailable` of `/proc/meminfo`; where that cannot be read, nothing is refused): a batch
/// too large for memory is an error before anything is allocated, not an abort mid-way.
pub fn fits_in_memory(bytes: f64, what: &str) -> Result<(), String> {
    // Reading /proc/meminfo costs ~15 µs, most of a small call's time through the library;
    // a size this small is not what the check is for (sizes that would abort an allocation).
    if bytes < ALWAYS_FITS_BYTES {
        return Ok(());
    }
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024.0)
        });
    match available {
        Some(available) if bytes > available => Err(format!(
            "{what} needs about {:.1} GB and this machine has {:.1} GB available; use a \
             smaller batch or smaller sizes",
            bytes / 1e9,
            available / 1e9
        )),
        _ => Ok(()),
    }
}

/// The plan's inputs as batches built from per-item points (`items[i]` holds item `i`'s
/// variables; a shared input is read from item 0).
pub fn batches_from_points(plan: &Plan, items: &[crate::eval::Env]) -> Vec<Batch<f64>> {
    plan.inputs()
        .iter()
        .map(|input| {
            let count = if input.batched { items.len() } else { 1 };
            let data = items[..count]
                .iter()
                .flat_map(|env| {
                    env.values[input.var as usize]
                        .as_ref()
                        .map(|m| m.data.clone())
                        .unwrap_or_default()
                })
                .collect();
            Batch {
                batch: input.batched.then_some(items.len()),
                rows: input.rows,
                cols: input.cols,
                data,
            }
        })
        .collect()
}

/// Writes the batches' values back into the per-item points, the inverse of
/// [`batches_from_points`], so that single-item checks read the same numbers as the batch.
pub fn set_points(plan: &Plan, batches: &[Batch<f64>], items: &mut [crate::eval::Env]) {
    for (input, values) in plan.inputs().iter().zip(batches) {
        for (i, env) in items.iter_mut().enumerate() {
            let k = if input.batched { i } else { 0 };
            env.values[input.var as usize] = Some(values.item_mat(k));
        }
    }
}

/// The items whose values are not all finite.
pub fn non_finite_items<T: Copy + Into<f64>>(b: &Batch<T>) -> Vec<usize> {
    (0..b.items())
        .filter(|&i| b.item(i).iter().any(|&x| !x.into().is_finite()))
        .collect()
}
