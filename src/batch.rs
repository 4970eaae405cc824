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
use crate::expr::{Dim, Graph};
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

/// Binds `arrays` to the variables of `graph` that `reads` lists.
pub fn bind(graph: &Graph, reads: &[u32], arrays: &[NamedArray]) -> Result<Bound, BindError> {
    let mut dim_sizes: Vec<Option<(usize, String)>> = graph
        .dims
        .iter()
        .map(|d| d.size.map(|s| (s, "the declaration".to_string())))
        .collect();
    let mut batched = vec![false; graph.vars.len()];
    let mut values: Vec<Option<Batch<f64>>> = vec![None; graph.vars.len()];
    let mut batch: Option<(usize, String)> = None;
    for &v in reads {
        let var = &graph.vars[v as usize];
        let array = arrays
            .iter()
            .find(|a| a.name == var.name)
            .ok_or_else(|| BindError::Missing(var.name.clone()))?;
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
        values[v as usize] = Some(Batch {
            batch: items,
            rows,
            cols,
            data: array.data.clone(),
        });
    }
    let unused = arrays
        .iter()
        .filter(|a| reads.iter().all(|&v| graph.vars[v as usize].name != a.name))
        .map(|a| a.name.clone())
        .collect();
    // Dimensions no array meets (those of constants such as `eye` in a free context) take
    // the size 1; the type checker has already tied every other one to a variable.
    let dim_sizes = dim_sizes
        .into_iter()
        .map(|d| d.map_or(1, |(s, _)| s))
        .collect();
    Ok(Bound {
        dim_sizes,
        batched,
        values,
        batch: batch.map(|(n, _)| n),
        unused,
    })
}

/// Runs `plan` in float64, item by item. `inputs[k]` is the value of `plan.inputs()[k]`.
/// Returns one batch per output of the plan: `batch` items when any input is batched (an
/// output that depends on shared inputs only is repeated), else one item and no batch axis.
pub fn run_reference(plan: &Plan, inputs: &[&Batch<f64>], batch: usize) -> Vec<Batch<f64>> {
    reference(plan, inputs, batch, false)
}

/// The reference with every intermediate rounded to float32, as any float32 device stores
/// them: where this differs much from [`run_reference`], no float32 evaluation of the formula
/// can be accurate (`1 - tanh(x)^2` once `tanh(x)` is within an ulp of 1).
pub fn run_reference_rounded(plan: &Plan, inputs: &[&Batch<f64>], batch: usize) -> Vec<Batch<f64>> {
    reference(plan, inputs, batch, true)
}

fn reference(plan: &Plan, inputs: &[&Batch<f64>], batch: usize, round: bool) -> Vec<Batch<f64>> {
    let finish = |m: Mat| if round { m.map(|x| x as f32 as f64) } else { m };
    let steps = plan.steps();
    let mut shared: Vec<Option<Mat>> = vec![None; steps.len()];
    for (i, step) in steps.iter().enumerate() {
        if step.batched {
            continue;
        }
        let value = match step.input {
            Some(k) => finish(inputs[k].item_mat(0)),
            None => {
                let args: Vec<&Mat> = step
                    .args
                    .iter()
                    .map(|&a| shared[a].as_ref().expect("shared argument"))
                    .collect();
                finish(apply(&step.node, &args, step.rows, step.cols))
            }
        };
        shared[i] = Some(value);
    }
    let mut outputs: Vec<Batch<f64>> = plan
        .outputs()
        .iter()
        .map(|&o| {
            let step = &steps[o];
            Batch {
                batch: plan.is_batched().then_some(batch),
                rows: step.rows,
                cols: step.cols,
                data: Vec::with_capacity(batch * step.len()),
            }
        })
        .collect();
    if !plan.is_batched() {
        for (out, &o) in outputs.iter_mut().zip(plan.outputs()) {
            out.data
                .extend_from_slice(&shared[o].as_ref().expect("shared output").data);
        }
        return outputs;
    }
    let mut item_values: Vec<Option<Mat>> = vec![None; steps.len()];
    for item in 0..batch {
        for (i, step) in steps.iter().enumerate() {
            if !step.batched {
                continue;
            }
            let value = match step.input {
                Some(k) => finish(inputs[k].item_mat(item)),
                None => {
                    let args: Vec<&Mat> = step
                        .args
                        .iter()
                        .map(|&a| {
                            if steps[a].batched {
                                item_values[a].as_ref().expect("batched argument")
                            } else {
                                shared[a].as_ref().expect("shared argument")
                            }
                        })
                        .collect();
                    finish(apply(&step.node, &args, step.rows, step.cols))
                }
            };
            item_values[i] = Some(value);
        }
        for (out, &o) in outputs.iter_mut().zip(plan.outputs()) {
            // An output that no batched input reaches is the same for every item.
            let value = if steps[o].batched {
                &item_values[o]
            } else {
                &shared[o]
            };
            out.data
                .extend_from_slice(&value.as_ref().expect("output evaluated").data);
        }
    }
    outputs
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
