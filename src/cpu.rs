//! The fast CPU executor: float32, multithreaded over blocks of batch items.
//!
//! In: a [`Plan`] and its inputs as float32 batches. Out: every output for every item, as the
//! reference would compute it up to float32 rounding. Method: steps run in plan order; a
//! shared step is computed once, in float64, and rounded (the hoisted work is small and this
//! keeps it exact); then blocks of [`BLOCK`] items run in parallel (rayon), each block
//! through every batched step while its intermediates are in cache, with its scratch
//! allocated once per block, never per item. Products of a shared matrix
//! with a batched vector, and of a batched matrix with a shared one, are one GEMM per block
//! (matrixmultiply); other per-item work is tight loops over small matrices.
//! Invariant: results do not depend on the block size or the thread count beyond float32
//! rounding of independent items (each item is computed by the same code in the same order).

use std::borrow::Cow;

use rayon::prelude::*;

use crate::batch::Batch;
use crate::eval::{apply, Lu, Mat};
use crate::expr::{Func, Node};
use crate::plan::{Plan, Step};

/// Items per parallel block.
pub const BLOCK: usize = 256;

/// Runs `plan`; `inputs[k]` is the value of `plan.inputs()[k]`. Outputs are shaped as
/// [`run_reference`](crate::batch::run_reference)'s.
///
/// Shared steps run first, once. Then each block of items runs *every* batched step before
/// the next block starts, so a block's intermediates stay in cache and only inputs and
/// outputs travel through memory.
pub fn run_cpu(plan: &Plan, inputs: &[&Batch<f32>], batch: usize) -> Vec<Batch<f32>> {
    let steps = plan.steps();
    let shared = hoisted_values(plan, inputs);
    let batched_outputs: Vec<usize> = plan
        .outputs()
        .iter()
        .copied()
        .filter(|&o| steps[o].batched)
        .collect();
    let blocks = if plan.is_batched() {
        batch.div_ceil(BLOCK)
    } else {
        0
    };
    let per_block: Vec<Vec<Vec<f32>>> = (0..blocks)
        .into_par_iter()
        .map(|b| {
            let first = b * BLOCK;
            let count = BLOCK.min(batch - first);
            run_items(steps, inputs, &shared, first, count, &batched_outputs)
        })
        .collect();
    plan.outputs()
        .iter()
        .map(|&o| {
            let step = &steps[o];
            let data = if step.batched {
                let k = batched_outputs.iter().position(|&b| b == o).unwrap_or(0);
                let mut data = Vec::with_capacity(batch * step.len());
                for block in &per_block {
                    data.extend_from_slice(&block[k]);
                }
                data
            } else if plan.is_batched() {
                // The same for every item: repeated, so every output has the batch axis.
                shared[o].repeat(batch)
            } else {
                shared[o].to_vec()
            };
            Batch {
                batch: plan.is_batched().then_some(batch),
                rows: step.rows,
                cols: step.cols,
                data,
            }
        })
        .collect()
}

/// Every batched step for the items `first..first+count`; returns the batched outputs.
fn run_items(
    steps: &[Step],
    inputs: &[&Batch<f32>],
    shared: &[Cow<[f32]>],
    first: usize,
    count: usize,
    outputs: &[usize],
) -> Vec<Vec<f32>> {
    let mut local: Vec<Vec<f32>> = vec![Vec::new(); steps.len()];
    let input_block = |k: usize, len: usize| &inputs[k].data[first * len..(first + count) * len];
    for (i, step) in steps.iter().enumerate() {
        if !step.batched || step.input.is_some() {
            continue;
        }
        let out = {
            let views: Vec<View> = step
                .args
                .iter()
                .map(|&a| {
                    let arg = &steps[a];
                    let data: &[f32] = match (arg.batched, arg.input) {
                        (false, _) => &shared[a],
                        (true, Some(k)) => input_block(k, arg.len()),
                        (true, None) => &local[a],
                    };
                    View {
                        data,
                        len: arg.len(),
                        batched: arg.batched,
                        rows: arg.rows,
                        cols: arg.cols,
                    }
                })
                .collect();
            let mut out = vec![0f32; count * step.len()];
            run_block(step, &views, count, &mut out);
            out
        };
        local[i] = out;
    }
    outputs
        .iter()
        .map(|&o| match steps[o].input {
            Some(k) => input_block(k, steps[o].len()).to_vec(),
            None => std::mem::take(&mut local[o]),
        })
        .collect()
}

/// The value of every shared step (empty for batched steps): shared inputs as given, the
/// hoisted steps computed once in float64 and rounded. The GPU back end uploads these.
pub fn hoisted_values<'a>(plan: &Plan, inputs: &[&'a Batch<f32>]) -> Vec<Cow<'a, [f32]>> {
    let steps = plan.steps();
    let mut shared: Vec<Cow<[f32]>> = Vec::with_capacity(steps.len());
    for step in steps {
        let value = match (step.batched, step.input) {
            (true, _) => Cow::Borrowed(&[][..]),
            (false, Some(k)) => Cow::Borrowed(inputs[k].data.as_slice()),
            (false, None) => Cow::Owned(shared_step(step, &shared, steps)),
        };
        shared.push(value);
    }
    shared
}

/// A shared step: once, in float64.
fn shared_step(step: &Step, buffers: &[Cow<[f32]>], steps: &[Step]) -> Vec<f32> {
    let args: Vec<Mat> = step
        .args
        .iter()
        .map(|&a| Mat {
            rows: steps[a].rows,
            cols: steps[a].cols,
            data: buffers[a].iter().map(|&x| x as f64).collect(),
        })
        .collect();
    let refs: Vec<&Mat> = args.iter().collect();
    apply(&step.node, &refs, step.rows, step.cols)
        .data
        .into_iter()
        .map(|x| x as f32)
        .collect()
}

/// An argument as a kernel sees it: one value for all items, or one per item.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    len: usize,
    batched: bool,
    rows: usize,
    cols: usize,
}

impl<'a> View<'a> {
    fn item(&self, i: usize) -> &'a [f32] {
        if self.batched {
            &self.data[i * self.len..(i + 1) * self.len]
        } else {
            &self.data[..self.len]
        }
    }

    /// The first `count` items (batched views only).
    fn block(&self, count: usize) -> &'a [f32] {
        &self.data[..count * self.len]
    }
}

/// One step for a block of `count` items; views index items from the block's start.
fn run_block(step: &Step, args: &[View], count: usize, out: &mut [f32]) {
    let len = step.len();
    let per_item = |out: &mut [f32], f: &mut dyn FnMut(usize, &mut [f32])| {
        for (k, o) in out.chunks_mut(len.max(1)).enumerate() {
            f(k, o);
        }
    };
    match step.node {
        Node::Add(..) => per_item(out, &mut |i, o| {
            zip_into(o, args[0].item(i), args[1].item(i), |x, y| x + y)
        }),
        Node::Hadamard(..) => per_item(out, &mut |i, o| {
            zip_into(o, args[0].item(i), args[1].item(i), |x, y| x * y)
        }),
        Node::ElemDiv(..) => per_item(out, &mut |i, o| {
            zip_into(o, args[0].item(i), args[1].item(i), |x, y| x / y)
        }),
        Node::Neg(_) => per_item(out, &mut |i, o| map_into(o, args[0].item(i), |x| -x)),
        Node::Map(f, _) => per_item(out, &mut |i, o| {
            map_into(o, args[0].item(i), |x| apply_f32(f, x))
        }),
        Node::Scale(..) => per_item(out, &mut |i, o| {
            let s = args[0].item(i)[0];
            map_into(o, args[1].item(i), |x| s * x)
        }),
        Node::Div(..) => per_item(out, &mut |i, o| {
            let s = args[1].item(i)[0];
            map_into(o, args[0].item(i), |x| x / s)
        }),
        Node::Pow(..) => per_item(out, &mut |i, o| {
            o[0] = args[0].item(i)[0].powf(args[1].item(i)[0])
        }),
        Node::ElemPow(..) => per_item(out, &mut |i, o| {
            let (base, exponent) = (args[0].item(i), args[1].item(i));
            if exponent.len() == 1 {
                let e = exponent[0];
                map_into(o, base, |x| x.powf(e))
            } else {
                zip_into(o, base, exponent, f32::powf)
            }
        }),
        Node::Transpose(_) => {
            let (r, c) = (args[0].rows, args[0].cols);
            per_item(out, &mut |i, o| {
                let a = args[0].item(i);
                for p in 0..r {
                    for q in 0..c {
                        o[q * r + p] = a[p * c + q];
                    }
                }
            })
        }
        Node::MatMul(..) => matmul_block(args[0], args[1], count, out),
        Node::MatPow(_, k) => {
            let n = step.rows;
            let mut scratch = vec![0f32; n * n];
            per_item(out, &mut |i, o| {
                let a = args[0].item(i);
                o.copy_from_slice(a);
                for _ in 1..k {
                    scratch.copy_from_slice(o);
                    gemm(n, n, n, &scratch, n, 1, a, n, 1, o, n);
                }
            })
        }
        Node::Sum(_) => per_item(out, &mut |i, o| {
            o[0] = args[0].item(i).iter().map(|&x| x as f64).sum::<f64>() as f32
        }),
        Node::Norm1(_) => per_item(out, &mut |i, o| {
            o[0] = args[0].item(i).iter().map(|&x| x.abs() as f64).sum::<f64>() as f32
        }),
        Node::Norm2(_) => per_item(out, &mut |i, o| {
            o[0] = args[0]
                .item(i)
                .iter()
                .map(|&x| (x as f64) * (x as f64))
                .sum::<f64>()
                .sqrt() as f32
        }),
        Node::Trace(_) => {
            let n = args[0].rows;
            per_item(out, &mut |i, o| {
                let a = args[0].item(i);
                o[0] = (0..n).map(|p| a[p * n + p]).sum()
            })
        }
        Node::Det(_) | Node::LogDet(_) | Node::Inv(_) => {
            let n = args[0].rows;
            let mut lu = Lu::<f32>::with_size(n);
            let node = step.node;
            per_item(out, &mut |i, o| {
                lu.factor(args[0].item(i));
                match node {
                    Node::Det(_) => o[0] = lu.det(),
                    Node::LogDet(_) => o[0] = lu.log_det(),
                    _ => lu.inverse_into(o),
                }
            })
        }
        Node::Diag(_) => {
            let n = step.rows;
            per_item(out, &mut |i, o| {
                o.fill(0.0);
                for (p, &v) in args[0].item(i).iter().enumerate() {
                    o[p * n + p] = v;
                }
            })
        }
        Node::DiagPart(_) => {
            let n = step.rows;
            per_item(out, &mut |i, o| {
                let a = args[0].item(i);
                for p in 0..n {
                    o[p] = a[p * n + p];
                }
            })
        }
        // Inputs and constants are never batched steps.
        Node::Var(_) | Node::Const(_) | Node::Fill(..) | Node::Eye(_) => out.fill(f32::NAN),
    }
}

fn zip_into(out: &mut [f32], a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) {
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = f(x, y);
    }
}

fn map_into(out: &mut [f32], a: &[f32], f: impl Fn(f32) -> f32) {
    for (o, &x) in out.iter_mut().zip(a) {
        *o = f(x);
    }
}

/// The element-wise functions in float32, evaluated in float64 and rounded: the one
/// definition in [`Func::apply`], correctly rounded where float32 libm would not be.
pub fn apply_f32(f: Func, x: f32) -> f32 {
    f.apply(x as f64) as f32
}

/// `C = A*B` for row-major `A` (m×k, row stride `rsa`, column stride `csa`), `B` (k×n) and
/// `C` (m×n, contiguous rows of stride `rsc`).
#[allow(clippy::too_many_arguments)]
fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    c: &mut [f32],
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The last element each operand is read or written at must be inside its slice.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows - 1) * rs + cols.saturating_sub(1) * cs
    };
    assert!(
        k == 0 || last(m, k, rsa, csa) < a.len(),
        "gemm: A out of bounds"
    );
    assert!(
        k == 0 || last(k, n, rsb, csb) < b.len(),
        "gemm: B out of bounds"
    );
    assert!(last(m, n, rsc, 1) < c.len(), "gemm: C out of bounds");
    // SAFETY: the asserts above keep every access of the strided operands inside the slices.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            0.0,
            c.as_mut_ptr(),
            rsc as isize,
            1,
        );
    }
}

/// The product step for a block: one GEMM for shared×batched-vector and batched×shared,
/// a small GEMM per item otherwise.
fn matmul_block(a: View, b: View, count: usize, out: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    match (a.batched, b.batched) {
        (false, true) if n == 1 => {
            // Y (count×m) = X (count×k) · Aᵀ: items are the rows of one product.
            gemm(count, k, m, b.block(count), k, 1, a.data, 1, k, out, m);
        }
        (true, false) => {
            // Stack the items' rows: (count·m × k) · (k × n).
            gemm(count * m, k, n, a.block(count), k, 1, b.data, n, 1, out, n);
        }
        _ if m * k * n <= SMALL_PRODUCT => {
            for (i, o) in out.chunks_mut(m * n).enumerate() {
                small_matmul(m, k, n, a.item(i), b.item(i), o);
            }
        }
        _ => {
            for (i, o) in out.chunks_mut(m * n).enumerate() {
                gemm(m, k, n, a.item(i), k, 1, b.item(i), n, 1, o, n);
            }
        }
    }
}

/// Below this many multiply-adds a per-item product is faster as plain loops than as a
/// GEMM call (whose packing and dispatch cost more than the arithmetic).
const SMALL_PRODUCT: usize = 4096;

/// `c = a*b` for small row-major matrices, as plain loops the compiler vectorizes.
fn small_matmul(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    c.fill(0.0);
    for i in 0..m {
        let row = &mut c[i * n..(i + 1) * n];
        for (p, &aip) in a[i * k..(i + 1) * k].iter().enumerate() {
            for (cij, &bpj) in row.iter_mut().zip(&b[p * n..(p + 1) * n]) {
                *cij += aip * bpj;
            }
        }
    }
}
