//! Item-major blocks: the CPU layout for plans whose batched work needs no transposes.
//!
//! In: a plan that [`chosen`] accepts, a block of `count` consecutive items, and the caller's
//! item-major buffers (`[t*len + e]`, the layout of inputs and outputs). Out: the block's
//! outputs, written in place. Such a plan's batched steps are products of a shared matrix
//! with batched vectors (`S·x`, one GEMM per block: `[x rows] · Sᵀ`, `Sᵀ` made once per run by
//! [`right_factors`]), products of batched values with a shared right factor (`X·S`, one GEMM
//! over the block's stacked rows), shared matrices times batched matrices (`S·X`, a small
//! GEMM per item by the same kernel), a shared row times batched matrices, per-item
//! matrix-vector products of batched values (when cheaper than the transposes they save),
//! element-wise steps and reductions, all of which read and write each item's elements
//! contiguously. Inputs are read where they lie and outputs computed where they go, so the
//! block does none of the transposes the lanes layout ([`super::kernels`]) needs — for W1,
//! W2 and W6 those cost as much memory traffic as the arithmetic. A product's chain of
//! element-wise steps ([`fused_chains`]) is applied to each tile of its rows as soon as the
//! tile is stored, into the chain's last value: W1's gradient is one GEMM that writes the
//! output. `cpu::run_blocks` chooses the layout once; this layout's `RowJob` (the common
//! job plus the packed right factors and the fused chains) and `run` are its side.
//!
//! Invariants: every item is computed by the same operations in the same order (a GEMM row's
//! sums run over the inner index in the same order wherever the row falls in the block), so
//! results do not depend on the block size or the thread count. The GEMM kernel uses FMA
//! explicitly, and so do `exp` and `log` in the vector builds ([`map_func`]); other
//! element-wise steps never form one. Fused into a product or not, a step does the same
//! operations on the same values: the same bits.

use super::kernels::{gemm, map, map_func, map_func_in_place, pow_f32, pow_map};
use rayon::prelude::*;

use super::{Isa, Job};
use crate::backend::schedule::{elementwise, ElementOp, Schedule};
use crate::expr::Node;
use crate::plan::{Plan, Step};

/// Whether the CPU runs `plan` in item-major blocks: every batched step is one this layout
/// computes ([`supports`]), and its per-item products of two batched values cost fewer
/// multiply-adds (an eighth for those that run eight to an instruction here: `M·v` with rows
/// of whole vectors, `Mᵀ·v` along `M`'s rows) than the lanes layout's transposes of the
/// batched inputs and outputs move floats. W1, W2, W3, W5 and W6 run item-major; W4 (LU) in
/// lanes.
pub fn chosen(plan: &Plan) -> bool {
    let steps = plan.steps();
    let in_place = transposes_read_in_place(plan);
    let products: usize = steps
        .iter()
        .filter(|s| s.batched && matches!(s.node, Node::MatMul(..)))
        .filter(|s| s.args.iter().all(|&a| steps[a].batched))
        .map(|s| {
            let k = steps[s.args[0]].cols;
            // Vectorized: M·v with rows of whole vectors, Mᵀ·v along M's rows.
            let vectorized = k.is_multiple_of(8) || in_place[s.args[0]];
            s.rows * k * s.cols / if vectorized { 8 } else { 1 }
        })
        .sum();
    let transposed: usize = steps
        .iter()
        .enumerate()
        .filter(|(i, s)| s.batched && (s.input.is_some() || plan.outputs().contains(i)))
        .map(|(_, s)| s.len())
        .sum();
    supports(plan) && products <= transposed
}

/// Batched transposes that are never stored: each is used only as the left factor of
/// products with batched vectors, which read the transposed matrix's rows in place
/// (`Mᵀ·v = Σᵢ vᵢ·(row i of M)`), so `2*A'*(A*x+b)` copies nothing.
pub fn transposes_read_in_place(plan: &Plan) -> Vec<bool> {
    let steps = plan.steps();
    let mut ok: Vec<bool> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            matches!(s.node, Node::Transpose(_)) && s.batched && !plan.outputs().contains(&i)
        })
        .collect();
    for step in steps {
        let left_of_batched_vector = matches!(step.node, Node::MatMul(..))
            && step.batched
            && steps[step.args[1]].batched
            && step.cols == 1;
        for (k, &a) in step.args.iter().enumerate() {
            if !(left_of_batched_vector && k == 0) {
                ok[a] = false;
            }
        }
    }
    ok
}

/// For each batched product, the element-wise steps applied to its rows as they are stored
/// (empty for every other step): the chain of steps of the product's length, each the only
/// user of the one before (which is not an output), whose other argument is shared or a
/// batched value stored before the product, a whole value or one number per item. Sums,
/// products, quotients, negations and functions: W1's `2*(S*x + c)` is one GEMM that writes
/// the output (the two extra passes over the block cost a third of W1's time), and W6's
/// `y./(vector(1)+exp(y.*(X*w)))` runs on each tile of rows while it is in L1. The fused
/// steps are the same operations on the same values as unfused: the same bits.
pub fn fused_chains(plan: &Plan) -> Vec<Vec<usize>> {
    let steps = plan.steps();
    let schedule = Schedule::new(plan);
    let in_place = transposes_read_in_place(plan);
    (0..steps.len())
        .map(|head| {
            let product = &steps[head];
            if !(product.batched && matches!(product.node, Node::MatMul(..))) {
                return Vec::new();
            }
            let n = product.len();
            // Available while the product runs: shared, a batched input, or batched and
            // stored before it.
            let ready = |a: usize| {
                let s = &steps[a];
                !s.batched || s.input.is_some() || (a < head && !in_place[a])
            };
            // Every element-wise operation but powers, with operands of the product's length
            // or one number.
            schedule.chain(plan, head, |u, last| {
                let form = schedule.elementwise[u].expect("a chain's steps are element-wise");
                form.op != ElementOp::Pow
                    && steps[u].args.iter().enumerate().all(|(k, &a)| {
                        let len = if form.numbers[k] { 1 } else { n };
                        steps[a].len() == len && (a == last || ready(a))
                    })
            })
        })
        .collect()
}

/// Batched steps an item-major block never stores: the transposes read in place (`in_place`,
/// [`transposes_read_in_place`]), and products and steps whose values only the next step of
/// a chain in `fused` reads ([`fused_chains`]: all but the chain's last).
pub fn unstored(in_place: &[bool], fused: &[Vec<usize>]) -> Vec<bool> {
    let mut skip = in_place.to_vec();
    for (head, chain) in fused.iter().enumerate() {
        if let Some((_, inner)) = chain.split_last() {
            skip[head] = true;
            for &u in inner {
                skip[u] = true;
            }
        }
    }
    skip
}

/// Whether every batched step of `plan` is one this layout computes without transposes.
pub fn supports(plan: &Plan) -> bool {
    let steps = plan.steps();
    steps.iter().all(|s| {
        if !s.batched || s.input.is_some() {
            return true;
        }
        if elementwise(s.node).is_some() {
            return true;
        }
        match s.node {
            Node::Sum(_) | Node::Norm1(_) | Node::Norm2(_) => true,
            Node::Transpose(_) => true,
            Node::MatMul(..) => {
                let (a, b) = (&steps[s.args[0]], &steps[s.args[1]]);
                match (a.batched, b.batched) {
                    // S·x, u'·X, and S·X item by item.
                    (false, true) => true,
                    (true, false) => true,
                    // Matrix-vector and inner products of two batched values: per item.
                    _ => b.cols == 1,
                }
            }
            _ => false,
        }
    })
}

/// For each product step with a shared factor, that factor as the `k × n` right factor of
/// `[item rows] · F`, [`pack`]ed for [`gemm_rows`]: `Sᵀ` for `S·x` (transposed once per run,
/// not per block), `S` itself for `X·S`. Empty for every other step.
pub fn right_factors(plan: &Plan, shared: &[std::borrow::Cow<[f32]>]) -> Vec<Packed> {
    let steps = plan.steps();
    steps
        .iter()
        .map(|s| match s.node {
            Node::MatMul(..) if s.batched => {
                let (a, b) = (s.args[0], s.args[1]);
                if !steps[a].batched && s.cols == 1 {
                    let (m, k) = (steps[a].rows, steps[a].cols);
                    let mut t = vec![0.0; m * k];
                    for i in 0..m {
                        for p in 0..k {
                            t[p * m + i] = shared[a][i * k + p];
                        }
                    }
                    pack(k, m, &t)
                } else if !steps[b].batched && steps[a].batched {
                    pack(steps[b].rows, steps[b].cols, &shared[b])
                } else {
                    Packed::default()
                }
            }
            _ => Packed::default(),
        })
        .collect()
}

/// Floats of one item's stored batched values (inputs are read in place, and the
/// [`unstored`] steps are never stored).
pub fn floats_per_item(plan: &Plan) -> usize {
    let unstored = unstored(&transposes_read_in_place(plan), &fused_chains(plan));
    plan.steps()
        .iter()
        .enumerate()
        .filter(|&(i, s)| s.batched && s.input.is_none() && !unstored[i])
        .map(|(_, s)| s.len())
        .sum()
}

/// A step's argument for one block.
#[derive(Clone, Copy)]
enum RowArg<'a> {
    /// Batched: `count` items of the step's length, item-major.
    Batched(&'a [f32]),
    /// Shared: one value, row-major.
    Shared(&'a [f32]),
    /// Batched and read through a transpose: `count` items of `M`, meaning `Mᵀ`
    /// ([`transposes_read_in_place`]).
    Transposed(&'a [f32]),
}

impl<'a> RowArg<'a> {
    /// Item `t`'s elements (a shared value's, whatever `t` is); `len` is the value's length.
    #[inline(always)]
    fn item(self, t: usize, len: usize) -> &'a [f32] {
        match self {
            RowArg::Batched(d) | RowArg::Transposed(d) => &d[t * len..(t + 1) * len],
            RowArg::Shared(d) => &d[..len],
        }
    }
}

/// One thread's buffers: each computed batched step's value for a block (those computed
/// straight into an output stay empty).
pub(crate) struct Buffers {
    values: Vec<Vec<f32>>,
}

impl Buffers {
    /// Buffers for blocks of `items` items; `unstored[i]` marks steps never stored
    /// ([`unstored`]).
    pub(crate) fn new(
        steps: &[Step],
        items: usize,
        outputs: &[usize],
        unstored: &[bool],
    ) -> Buffers {
        let values = steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if s.batched && s.input.is_none() && !outputs.contains(&i) && !unstored[i] {
                    vec![0.0; s.len() * items]
                } else {
                    Vec::new()
                }
            })
            .collect();
        Buffers { values }
    }
}

/// What item-major blocks read: the common [`Job`], each product's shared factor as the right
/// factor of a product with the items' rows, and the element-wise chains fused into products.
pub(crate) struct RowJob<'a> {
    job: Job<'a>,
    /// Each product step's shared factor, packed ([`right_factors`]); empty for other steps.
    right_factors: Vec<Packed>,
    /// The steps fused into each product ([`fused_chains`]).
    fused: Vec<Vec<usize>>,
    /// The steps in `fused`'s chains (computed with their product, not on their own).
    fused_into: Vec<bool>,
}

impl<'a> std::ops::Deref for RowJob<'a> {
    type Target = Job<'a>;

    fn deref(&self) -> &Job<'a> {
        &self.job
    }
}

impl<'a> RowJob<'a> {
    /// The item-major job of `plan`, with element-wise chains fused into their products'
    /// stores when `fuse` (else run on their own: the same bits).
    pub(crate) fn new(job: Job<'a>, plan: &Plan, fuse: bool) -> RowJob<'a> {
        let steps = plan.steps();
        let fused = if fuse {
            fused_chains(plan)
        } else {
            vec![Vec::new(); steps.len()]
        };
        let mut fused_into = vec![false; steps.len()];
        for &u in fused.iter().flatten() {
            fused_into[u] = true;
        }
        RowJob {
            right_factors: right_factors(plan, job.shared),
            job,
            fused,
            fused_into,
        }
    }
}

/// Runs the blocks of `batch` items, `items` a block, on the threads: `per_block` holds each
/// block's slices of the batched outputs.
pub(crate) fn run(
    job: &RowJob,
    plan: &Plan,
    per_block: Vec<Vec<(usize, &mut [f32])>>,
    items: usize,
    batch: usize,
) {
    let unstored = unstored(&job.read_through, &job.fused);
    per_block.into_par_iter().enumerate().for_each_init(
        || Buffers::new(job.steps, items, plan.outputs(), &unstored),
        |buffers, (b, outs)| {
            let first = b * items;
            process(job, buffers, first, items.min(batch - first), outs);
        },
    );
}

/// Runs every batched step for items `first..first + count`; `outs` are the block's slices
/// of the batched outputs, `(step, count × step length)`. Compiled for `job.isa` (as the
/// lanes layout's blocks: AVX-512, AVX2 or portable; the two vector builds do the same
/// operations, so they give the same bits).
fn process(
    job: &RowJob,
    buffers: &mut Buffers,
    first: usize,
    count: usize,
    outs: Vec<(usize, &mut [f32])>,
) {
    // SAFETY (both): `job.isa` is available, so the CPU has the features the function is
    // compiled for.
    match job.isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { process_avx512(job, buffers, first, count, outs) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { process_avx2(job, buffers, first, count, outs) },
        _ => process_inline(job, buffers, first, count, outs),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn process_avx2(
    job: &RowJob,
    buffers: &mut Buffers,
    first: usize,
    count: usize,
    outs: Vec<(usize, &mut [f32])>,
) {
    process_inline(job, buffers, first, count, outs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn process_avx512(
    job: &RowJob,
    buffers: &mut Buffers,
    first: usize,
    count: usize,
    outs: Vec<(usize, &mut [f32])>,
) {
    process_inline(job, buffers, first, count, outs)
}

#[inline(always)]
fn process_inline(
    job: &RowJob,
    buffers: &mut Buffers,
    first: usize,
    count: usize,
    mut outs: Vec<(usize, &mut [f32])>,
) {
    let steps = job.steps;
    let values = &mut buffers.values;
    let mut computed_into = vec![None; outs.len()];
    for (i, step) in steps.iter().enumerate() {
        if !step.batched || step.input.is_some() || job.read_through[i] || job.fused_into[i] {
            continue;
        }
        let len = step.len();
        // A product with a fused chain stores the chain's last value.
        let stored = job.fused[i].last().copied().unwrap_or(i);
        match outs.iter().position(|&(o, _)| o == stored) {
            Some(j) => {
                let dst = std::mem::take(&mut outs[j].1);
                let args = arguments(job, step, values, &outs, first, count);
                let then = epilogue(job, i, values, &outs, first, count);
                run_step(job, i, &args, &then, count, &mut dst[..count * len]);
                outs[j].1 = dst;
                computed_into[j] = Some(stored);
            }
            None => {
                let mut dst = std::mem::take(&mut values[stored]);
                let args = arguments(job, step, values, &outs, first, count);
                let then = epilogue(job, i, values, &outs, first, count);
                run_step(job, i, &args, &then, count, &mut dst[..count * len]);
                values[stored] = dst;
            }
        }
    }
    // Outputs that are batched inputs, or the same step as an earlier output: copied.
    for j in 0..outs.len() {
        let o = outs[j].0;
        if computed_into[j] == Some(o) {
            continue;
        }
        let len = steps[o].len();
        // Taken out while it is written: its source is an input or an earlier output.
        let dst = std::mem::take(&mut outs[j].1);
        match value(job, o, values, &outs, first, count) {
            RowArg::Batched(d) => dst[..count * len].copy_from_slice(&d[..count * len]),
            _ => unreachable!("outputs are batched and stored"),
        }
        outs[j].1 = dst;
    }
}

/// The arguments of `step` for this block (a step has at most two; unused ones are empty).
#[inline(always)]
fn arguments<'b>(
    job: &'b RowJob,
    step: &Step,
    values: &'b [Vec<f32>],
    outs: &'b [(usize, &mut [f32])],
    first: usize,
    count: usize,
) -> [RowArg<'b>; 2] {
    let mut args = [RowArg::Shared(&[]); 2];
    for (arg, &a) in args.iter_mut().zip(&step.args) {
        *arg = value(job, a, values, outs, first, count);
    }
    args
}

/// Where step `a`'s value for this block lies: a shared value, the caller's input, an output
/// already computed, or this thread's buffer.
#[inline(always)]
fn value<'b>(
    job: &'b RowJob,
    a: usize,
    values: &'b [Vec<f32>],
    outs: &'b [(usize, &mut [f32])],
    first: usize,
    count: usize,
) -> RowArg<'b> {
    let s = &job.steps[a];
    if !s.batched {
        return RowArg::Shared(&job.shared[a]);
    }
    if job.read_through[a] {
        return match value(job, s.args[0], values, outs, first, count) {
            RowArg::Batched(m) => RowArg::Transposed(m),
            _ => unreachable!("a transpose read in place has a stored batched argument"),
        };
    }
    let len = s.len();
    if let Some(k) = s.input {
        return RowArg::Batched(&job.inputs[k][first * len..(first + count) * len]);
    }
    match outs.iter().find(|(o, _)| *o == a) {
        Some((_, out)) => RowArg::Batched(&out[..count * len]),
        None => RowArg::Batched(&values[a][..count * len]),
    }
}

/// The steps fused into product `head` ([`fused_chains`]) with their other arguments for
/// this block.
#[inline(always)]
fn epilogue<'b>(
    job: &'b RowJob,
    head: usize,
    values: &'b [Vec<f32>],
    outs: &'b [(usize, &mut [f32])],
    first: usize,
    count: usize,
) -> Epilogue<'b> {
    let steps = job.steps;
    let (chain, len) = (&job.fused[head], steps[head].len());
    let mut then = Vec::with_capacity(chain.len());
    let mut last = head;
    for &u in chain {
        let s = &steps[u];
        // The chain's value is the argument the step before computed (never both: it has one
        // user); the other one, if any, is the operand.
        let value_first = s.args[0] == last;
        let other = s.args.iter().position(|&a| a != last);
        let operand = match other.map(|k| s.args[k]) {
            None => Operand::None,
            Some(a) => {
                let number = steps[a].len() == 1 && len > 1;
                match value(job, a, values, outs, first, count) {
                    RowArg::Shared(d) if number => Operand::Number(d[0]),
                    RowArg::Shared(d) => Operand::Shared(d),
                    RowArg::Batched(d) if number => Operand::PerItem(d),
                    RowArg::Batched(d) => Operand::Batched(d),
                    RowArg::Transposed(_) => {
                        unreachable!("fused chains read no transpose in place")
                    }
                }
            }
        };
        let op = match elementwise(s.node).map(|e| e.op) {
            Some(ElementOp::Pow) | None => unreachable!("fused_chains admits no {:?}", s.node),
            Some(op) => op,
        };
        then.push(Then {
            op,
            value_first,
            operand,
        });
        last = u;
    }
    let fma = job.isa.fuses_functions();
    Epilogue { then, fma, len }
}

/// The element-wise steps fused into a product ([`fused_chains`]) for one block, applied to
/// the product's values where they are stored, a tile of rows at a time, while it is in L1.
pub(crate) struct Epilogue<'a> {
    then: Vec<Then<'a>>,
    /// Whether functions fuse their multiply-adds ([`map_func`]: the vector builds).
    fma: bool,
    /// The product's length per item (every step of the chain has it).
    len: usize,
}

/// One fused step: `value op operand`, or `operand op value` when `value_first` is false.
#[derive(Clone, Copy)]
struct Then<'a> {
    /// Never a power ([`fused_chains`]).
    op: ElementOp,
    value_first: bool,
    operand: Operand<'a>,
}

/// A fused step's other argument.
#[derive(Clone, Copy)]
enum Operand<'a> {
    /// The step has none.
    None,
    /// One number for every item.
    Number(f32),
    /// A shared value of the product's length: element `e` for every item.
    Shared(&'a [f32]),
    /// The block's items of a batched value of the product's length, item-major.
    Batched(&'a [f32]),
    /// One number per item of the block.
    PerItem(&'a [f32]),
}

impl Epilogue<'_> {
    /// No steps.
    pub(crate) fn none() -> Self {
        Epilogue {
            then: Vec::new(),
            fma: false,
            len: 1,
        }
    }

    /// Applies the steps to `o`, the product's elements from block index `at` (`item·len +
    /// element`) on: each step's kind of operand is matched once for the whole run (a tile
    /// of rows), then its loops run over the items it spans.
    #[inline(always)]
    fn apply(&self, at: usize, o: &mut [f32]) {
        for then in &self.then {
            let first = then.value_first;
            match then.op {
                ElementOp::Add => self.binary(then.operand, first, at, o, |x, y| x + y),
                ElementOp::Mul => self.binary(then.operand, first, at, o, |x, y| x * y),
                ElementOp::Div => self.binary(then.operand, first, at, o, |x, y| x / y),
                ElementOp::Neg => o.iter_mut().for_each(|x| *x = -*x),
                ElementOp::Map(f) => map_func_in_place(f, self.fma, o),
                ElementOp::Pow => unreachable!("fused_chains admits no powers"),
            }
        }
    }

    /// One binary step of [`Self::apply`].
    #[inline(always)]
    fn binary(
        &self,
        operand: Operand,
        value_first: bool,
        at: usize,
        o: &mut [f32],
        f: impl Fn(f32, f32) -> f32,
    ) {
        let whole = match operand {
            Operand::Number(y) => Some(Resolved::Number(y)),
            Operand::Batched(d) => Some(Resolved::Slice(&d[at..at + o.len()])),
            _ => None,
        };
        if let Some(y) = whole {
            return combine(o, y, value_first, f);
        }
        // Item `t`'s run of elements from `e` on, item by item.
        let (mut t, mut e, mut rest) = (at / self.len, at % self.len, o);
        while !rest.is_empty() {
            let (run, tail) = rest.split_at_mut((self.len - e).min(rest.len()));
            let y = match operand {
                Operand::Shared(d) => Resolved::Slice(&d[e..e + run.len()]),
                Operand::PerItem(d) => Resolved::Number(d[t]),
                _ => unreachable!("a binary step has an operand"),
            };
            combine(run, y, value_first, &f);
            (t, e, rest) = (t + 1, 0, tail);
        }
    }

    /// [`Self::apply`] to a whole step's values for the block.
    #[inline(always)]
    fn apply_to_items(&self, out: &mut [f32]) {
        if !self.then.is_empty() {
            self.apply(0, out);
        }
    }

    /// [`Self::apply`] to `rows` stored rows of `n` elements from block index `at` on.
    ///
    /// # Safety
    /// `out` holds the `rows · n` elements.
    #[inline(always)]
    pub(super) unsafe fn apply_to_rows(&self, at: usize, rows: usize, n: usize, out: *mut f32) {
        if !self.then.is_empty() {
            // SAFETY: as the caller guarantees.
            self.apply(at, unsafe { std::slice::from_raw_parts_mut(out, rows * n) });
        }
    }
}

/// A fused step's operand for one run of elements.
#[derive(Clone, Copy)]
enum Resolved<'a> {
    Number(f32),
    Slice(&'a [f32]),
}

/// `o[e] = f(o[e], y[e])`, or `f(y[e], o[e])` when `value_first` is false.
#[inline(always)]
fn combine(o: &mut [f32], y: Resolved, value_first: bool, f: impl Fn(f32, f32) -> f32) {
    match (y, value_first) {
        (Resolved::Number(y), true) => o.iter_mut().for_each(|x| *x = f(*x, y)),
        (Resolved::Number(y), false) => o.iter_mut().for_each(|x| *x = f(y, *x)),
        (Resolved::Slice(y), true) => o.iter_mut().zip(y).for_each(|(x, &y)| *x = f(*x, y)),
        (Resolved::Slice(y), false) => o.iter_mut().zip(y).for_each(|(x, &y)| *x = f(y, *x)),
    }
}

/// One batched step for `count` items into `out` (`count × step length`).
#[inline(always)]
fn run_step(
    job: &RowJob,
    i: usize,
    args: &[RowArg],
    then: &Epilogue,
    count: usize,
    out: &mut [f32],
) {
    let (steps, step) = (job.steps, &job.steps[i]);
    let n = step.len();
    let len = |k: usize| steps[step.args[k]].len();
    if let Some(form) = elementwise(step.node) {
        let number = |k: usize| form.is_number(k, len(k));
        let (a, b) = (args[0], args.get(1).copied().unwrap_or(args[0]));
        // A macro, not a closure taking `fn`s: each operation's loop is compiled with it inlined.
        macro_rules! binary {
            ($f:expr) => {
                zip(out, n, a, number(0), b, number(1), $f)
            };
        }
        match form.op {
            ElementOp::Add => binary!(|x, y| x + y),
            ElementOp::Mul => binary!(|x, y| x * y),
            ElementOp::Div => binary!(|x, y| x / y),
            ElementOp::Pow => match (a, b) {
                (RowArg::Batched(x), RowArg::Shared(y)) if number(1) => pow_map(out, x, y[0]),
                _ => binary!(pow_f32),
            },
            ElementOp::Neg => map(out, batched(a), |x| -x),
            ElementOp::Map(f) => map_func(f, job.isa.fuses_functions(), out, batched(a)),
        }
        // Only products have fused steps; a step fused into nothing has none.
        return then.apply_to_items(out);
    }
    match step.node {
        Node::Transpose(_) => {
            let (r, c) = (steps[step.args[0]].rows, steps[step.args[0]].cols);
            let a = batched(args[0]);
            if r == 1 || c == 1 {
                // A vector and its transpose: the same elements in the same order.
                out.copy_from_slice(&a[..out.len()]);
            } else {
                for (o, a) in out.chunks_exact_mut(n).zip(a.chunks_exact(n)) {
                    for p in 0..r {
                        for q in 0..c {
                            o[q * r + p] = a[p * c + q];
                        }
                    }
                }
            }
        }
        Node::Sum(_) => reduce(out, batched(args[0]), len(0), |x| x, |s| s),
        Node::Norm1(_) => reduce(out, batched(args[0]), len(0), f64::abs, |s| s),
        Node::Norm2(_) => reduce(out, batched(args[0]), len(0), |x| x * x, f64::sqrt),
        Node::MatMul(..) => {
            let (a, b) = (&steps[step.args[0]], &steps[step.args[1]]);
            let f = &job.right_factors[i];
            let isa = job.isa;
            let shape = (a.rows, a.cols, b.cols);
            return matmul(isa, args[0], args[1], shape, count, f, then, out);
        }
        _ => unreachable!("rows::supports admits no {:?}", step.node),
    }
    // Only products have fused steps; a step fused into nothing has none.
    then.apply_to_items(out);
}

/// The data of an argument the plan guarantees is batched.
#[inline(always)]
fn batched(a: RowArg<'_>) -> &[f32] {
    match a {
        RowArg::Batched(d) => d,
        _ => unreachable!("a batched unary step's argument is batched and stored"),
    }
}

/// `out[t*n + e] = f(a(t, e), b(t, e))`; an argument marked `scalar` has one element per
/// item (or one in all, shared), used for every `e`.
#[inline(always)]
fn zip(
    out: &mut [f32],
    n: usize,
    a: RowArg,
    a_scalar: bool,
    b: RowArg,
    b_scalar: bool,
    f: impl Fn(f32, f32) -> f32,
) {
    match (a, b, a_scalar, b_scalar) {
        // Same shapes, both batched: one flat loop over the block.
        (RowArg::Batched(x), RowArg::Batched(y), false, false) => {
            for ((o, &x), &y) in out.iter_mut().zip(x).zip(y) {
                *o = f(x, y);
            }
            return;
        }
        // A shared scalar and a batched value (`2*g`): one flat loop too.
        (RowArg::Shared(s), RowArg::Batched(y), true, false) => {
            for (o, &y) in out.iter_mut().zip(y) {
                *o = f(s[0], y);
            }
            return;
        }
        (RowArg::Batched(x), RowArg::Shared(s), false, true) => {
            for (o, &x) in out.iter_mut().zip(x) {
                *o = f(x, s[0]);
            }
            return;
        }
        _ => {}
    }
    let (na, nb) = (if a_scalar { 1 } else { n }, if b_scalar { 1 } else { n });
    for (t, o) in out.chunks_exact_mut(n).enumerate() {
        let (x, y) = (a.item(t, na), b.item(t, nb));
        match (a_scalar, b_scalar) {
            (false, false) => {
                for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                    *o = f(x, y);
                }
            }
            (true, false) => {
                for (o, &y) in o.iter_mut().zip(y) {
                    *o = f(x[0], y);
                }
            }
            (false, true) => {
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = f(x, y[0]);
                }
            }
            (true, true) => o.fill(f(x[0], y[0])),
        }
    }
}

/// Per item: `finish(Σ term(a[e]))` over its `len` elements, accumulated in float64.
#[inline(always)]
fn reduce(
    out: &mut [f32],
    a: &[f32],
    len: usize,
    term: impl Fn(f64) -> f64,
    finish: impl Fn(f64) -> f64,
) {
    for (o, item) in out.iter_mut().zip(a.chunks_exact(len)) {
        *o = finish(item.iter().map(|&x| term(x as f64)).sum()) as f32;
    }
}

/// Below these sizes a product is plain loops; above, [`gemm_rows`].
const GEMM_MIN_WIDTH: usize = 8;
const GEMM_MIN_INNER: usize = 4;

/// `out = a*b` for an `m×k` by `k×n` product (`shape`), one factor shared, then the steps
/// fused into it; `f` is the shared factor as a right factor ([`right_factors`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn matmul(
    isa: Isa,
    a: RowArg,
    b: RowArg,
    (m, k, n): (usize, usize, usize),
    count: usize,
    f: &[f32],
    then: &Epilogue,
    out: &mut [f32],
) {
    match (a, b) {
        // S·X for batched matrices X: one small GEMM per item, S's rows times X's.
        (RowArg::Shared(s), RowArg::Batched(x)) if n > 1 && m > 1 => {
            let items = out.chunks_exact_mut(m * n).zip(x.chunks_exact(k * n));
            for (t, (o, x)) in items.enumerate() {
                gemm_rows_on(isa, m, k, n, s, x, Factor::Plain, (then, t * m * n), o);
            }
            return;
        }
        // S·x for a vector x: [out rows] (count × m) = [x rows] (count × k) · Sᵀ.
        (RowArg::Shared(_), RowArg::Batched(x))
            if n == 1 && m >= GEMM_MIN_WIDTH && k >= GEMM_MIN_INNER =>
        {
            return gemm_rows_on(isa, count, k, m, x, f, Factor::Packed, (then, 0), out);
        }
        // X·S: the block's items stacked, (count·m × k) · S (k × n).
        (RowArg::Batched(x), RowArg::Shared(_)) if n >= GEMM_MIN_WIDTH && k >= GEMM_MIN_INNER => {
            let rows = count * m;
            return gemm_rows_on(isa, rows, k, n, x, f, Factor::Packed, (then, 0), out);
        }
        // u'·X for a shared row u': per item, the rows of X weighted by u.
        (RowArg::Shared(u), RowArg::Batched(x)) if n > 1 => {
            for (o, x) in out.chunks_exact_mut(n).zip(x.chunks_exact(k * n)) {
                weighted_rows(o, &u[..k], x);
            }
        }
        // S·x for a small S.
        (RowArg::Shared(s), RowArg::Batched(x)) => {
            for (o, x) in out.chunks_exact_mut(m).zip(x.chunks_exact(k)) {
                for (o, s) in o.iter_mut().zip(s.chunks_exact(k)) {
                    *o = dot(s, x);
                }
            }
        }
        // X·S for a narrow or thin S.
        (RowArg::Batched(x), RowArg::Shared(s)) => {
            let rows = count * m;
            if n == 1 {
                // X·s for a shared vector s: the block's rows as one tall matrix times s.
                matvec(isa, 1, rows, k, x, s, out);
            } else {
                for (o, x) in out.chunks_exact_mut(n).zip(x.chunks_exact(k)) {
                    weighted_rows(o, x, s);
                }
            }
        }
        // M·v for batched M and vector v: per item, a dot product per row.
        (RowArg::Batched(a), RowArg::Batched(v)) => matvec(isa, count, m, k, a, v, out),
        // Mᵀ·v for batched M (k×m) read in place: per item, M's rows weighted by v.
        // Eight columns at a time in registers, the sum over rows from 0 in row order.
        (RowArg::Transposed(mt), RowArg::Batched(v)) => {
            let items = out.chunks_exact_mut(m).zip(mt.chunks_exact(k * m));
            for ((o, mt), v) in items.zip(v.chunks_exact(k)) {
                let mut columns = o.chunks_exact_mut(8);
                for (c, o) in columns.by_ref().enumerate() {
                    let mut acc = [0.0f32; 8];
                    for (&v, row) in v.iter().zip(mt.chunks_exact(m)) {
                        let x: &[f32; 8] = row[8 * c..8 * c + 8].try_into().unwrap();
                        for l in 0..8 {
                            acc[l] += v * x[l];
                        }
                    }
                    o.copy_from_slice(&acc);
                }
                let tail = columns.into_remainder();
                let j0 = m - tail.len();
                for (j, o) in tail.iter_mut().enumerate() {
                    *o = v
                        .iter()
                        .zip(mt.chunks_exact(m))
                        .fold(0.0, |acc, (&v, row)| acc + v * row[j0 + j]);
                }
            }
        }
        _ => unreachable!("a batched product has a batched factor"),
    }
    then.apply_to_items(out);
}

/// Columns per panel of a packed right factor ([`pack`]): one register tile's width.
pub(super) const PANEL: usize = 16;

/// A `k × n` row-major right factor rearranged for [`gemm_rows`]: whole panels of
/// [`PANEL`] columns, each `k` contiguous rows of 16, then the last `n mod 16` columns as a
/// `k × (n mod 16)` row-major block. Done once per run: the kernel then reads the factor as
/// one sequential stream per panel instead of one 64-byte line every `4n` bytes (W6's
/// 256×64 factor ran about a sixth faster in a single-thread test).
pub fn pack(k: usize, n: usize, f: &[f32]) -> Packed {
    let panels = n / PANEL;
    let mut lines = vec![Line([0.0; PANEL]); (k * n).div_ceil(PANEL)];
    let out = &mut bytemuck::cast_slice_mut::<Line, f32>(&mut lines)[..k * n];
    let mut at = 0;
    let mut put = |row: &[f32]| {
        out[at..at + row.len()].copy_from_slice(row);
        at += row.len();
    };
    for c in 0..panels {
        for p in 0..k {
            put(&f[p * n + c * PANEL..p * n + (c + 1) * PANEL]);
        }
    }
    for p in 0..k {
        put(&f[p * n + panels * PANEL..(p + 1) * n]);
    }
    Packed { lines, len: k * n }
}

/// A [`pack`]ed factor whose first float is on a 64-byte boundary, so that each row of a
/// panel (16 floats) is one cache line and no vector load of the kernels straddles two (W6
/// about 6% and W1 3–4% faster than from a `Vec<f32>`'s 16-byte alignment, interleaved
/// medians).
#[derive(Default)]
pub struct Packed {
    lines: Vec<Line>,
    len: usize,
}

/// One cache line of floats.
#[repr(C, align(64))]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Line([f32; PANEL]);

impl std::ops::Deref for Packed {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &bytemuck::cast_slice::<Line, f32>(&self.lines)[..self.len]
    }
}

/// `out (rows × n) = x (rows × k) · f (k × n)`, `x` and `out` row-major and contiguous, `f`
/// shared by every call and given [`pack`]ed. With AVX-512: tiles of 8 rows × 32 columns in
/// registers; with AVX2 and FMA: 6 rows × 16. Either reads `f`'s panel rows as vectors and
/// broadcasts `x`'s elements (the rows stream from the caller's buffer once, never packed or
/// transposed), and computes every output element as
/// `fma(x[r][k-1], f[k-1][j], … fma(x[r][0], f[0][j], 0))`, whatever tile it falls in, so the
/// two give the same bits (the kernels: `avx512.rs`, `avx2.rs`, behind the one tile driver
/// `gemm_rows_on`). Elsewhere: the general GEMM, panel by panel.
pub fn gemm_rows(rows: usize, k: usize, n: usize, x: &[f32], f: &[f32], out: &mut [f32]) {
    gemm_rows_for(Isa::fastest(), rows, k, n, x, f, out)
}

/// [`gemm_rows`] by the kernel for `isa`.
///
/// # Panics
/// If `isa` is not one of [`Isa::available`].
pub fn gemm_rows_for(
    isa: Isa,
    rows: usize,
    k: usize,
    n: usize,
    x: &[f32],
    f: &[f32],
    out: &mut [f32],
) {
    assert!(
        isa.is_available(),
        "gemm_rows_for: this CPU does not run {isa:?}"
    );
    let none = (&Epilogue::none(), 0);
    gemm_rows_on(isa, rows, k, n, x, f, Factor::Packed, none, out)
}

/// How [`gemm_rows_on`] finds the right factor's elements.
#[derive(Clone, Copy)]
pub(super) enum Factor {
    /// [`pack`]ed.
    Packed,
    /// Row-major, rows `n` apart (a batched item's matrix, used once).
    Plain,
}

impl Factor {
    /// (offset of panel `c`, its row stride, offset of the last columns, their row stride).
    pub(super) fn layout(self, k: usize, n: usize) -> (usize, usize, usize, usize) {
        let panels = n / PANEL;
        match self {
            Factor::Packed => (k * PANEL, PANEL, panels * k * PANEL, n % PANEL),
            Factor::Plain => (PANEL, n, panels * PANEL, n),
        }
    }
}

/// [`gemm_rows`] by the kernel for `isa`, one of [`Isa::available`], with the right factor
/// laid out as `factor` says, and `then`'s steps applied to each tile of rows once it is
/// stored (`out` starts at block index `at`: [`Epilogue::apply`]).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn gemm_rows_on(
    isa: Isa,
    rows: usize,
    k: usize,
    n: usize,
    x: &[f32],
    f: &[f32],
    factor: Factor,
    (then, at): (&Epilogue, usize),
    out: &mut [f32],
) {
    assert!(x.len() >= rows * k && f.len() >= k * n && out.len() >= rows * n);
    match isa {
        // SAFETY (both): the CPU has the features (`isa` is available); the assert above
        // bounds every access (the layouts address exactly the k·n elements of `f`).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            super::avx512::gemm_rows(rows, k, n, x, f, factor, (then, at), out)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { super::avx2::gemm_rows(rows, k, n, x, f, factor, (then, at), out) },
        _ => {
            gemm_rows_general(rows, k, n, x, f, factor, out);
            // SAFETY: `out` holds the `rows` rows of `n` (the assert above).
            unsafe { then.apply_to_rows(at, rows, n, out.as_mut_ptr()) };
        }
    }
}

/// [`gemm_rows_on`] by the general GEMM, one call per panel and one for the last columns.
fn gemm_rows_general(
    rows: usize,
    k: usize,
    n: usize,
    x: &[f32],
    f: &[f32],
    factor: Factor,
    out: &mut [f32],
) {
    if rows == 0 {
        return;
    }
    let (panels, rest) = (n / PANEL, n % PANEL);
    let (step, stride, tail, tail_stride) = factor.layout(k, n);
    // (first output column, width, where the factor's columns start, their row stride).
    let pieces = (0..panels)
        .map(|c| (c * PANEL, PANEL, c * step, stride))
        .chain((rest > 0).then_some((panels * PANEL, rest, tail, tail_stride)));
    for (j0, width, start, fs) in pieces {
        let o = &mut out[j0..];
        gemm(rows, k, width, x, k, 1, &f[start..], fs, 1, o, n);
    }
}

/// `out = M·v` per item for batched `M` (m×k) and `v` (k): with AVX2 and FMA and rows of
/// whole vectors (`k` a multiple of 8), eight rows at a time, their eight partial-sum vectors
/// reduced together by a tree of horizontal adds; otherwise a [`dot`] per row.
#[inline(always)]
fn matvec(isa: Isa, count: usize, m: usize, k: usize, a: &[f32], v: &[f32], out: &mut [f32]) {
    assert!(a.len() >= count * m * k && v.len() >= count * k && out.len() >= count * m);
    #[cfg(target_arch = "x86_64")]
    {
        if k.is_multiple_of(8) && matches!(isa, Isa::Avx512 | Isa::Avx2) {
            // SAFETY: both have AVX2 and FMA; the assert above bounds every access.
            unsafe { super::avx2::matvec(count, m, k, a, v, out) };
            return;
        }
    }
    let _ = isa;
    let items = out.chunks_exact_mut(m).zip(a.chunks_exact(m * k));
    for ((o, a), v) in items.zip(v.chunks_exact(k)) {
        for (o, row) in o.iter_mut().zip(a.chunks_exact(k)) {
            *o = dot(row, v);
        }
    }
}

/// `out = Σ_p w[p] · (row p of rows)`, rows of `out.len()` elements, summed in row order
/// (vectorized along the row).
#[inline(always)]
fn weighted_rows(out: &mut [f32], w: &[f32], rows: &[f32]) {
    let mut terms = w.iter().zip(rows.chunks_exact(out.len()));
    // The first row's term written, not added to zeros: an outer product (one row) then
    // writes its output once instead of clearing it and reading it back.
    match terms.next() {
        Some((&w, row)) => {
            for (o, &x) in out.iter_mut().zip(row) {
                *o = w * x;
            }
        }
        None => out.fill(0.0),
    }
    for (&w, row) in terms {
        for (o, &x) in out.iter_mut().zip(row) {
            *o += w * x;
        }
    }
}

/// `Σ a[p]·b[p]` in eight interleaved partial sums (so that it vectorizes), the same order
/// for every call of the same length.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(0.0, |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gemm_rows_matches_the_definition_at_every_tile_edge() {
        for (rows, k, n) in [
            (1, 1, 1),
            (5, 4, 8),
            (6, 7, 16),
            (13, 9, 27),
            (7, 64, 40),
            (20, 3, 9),
            (17, 5, 48),
            (9, 8, 33),
        ] {
            let x: Vec<f32> = (0..rows * k).map(|v| ((v * 7 % 11) as f32) - 5.0).collect();
            let f: Vec<f32> = (0..k * n)
                .map(|v| ((v * 5 % 13) as f32) * 0.25 - 1.5)
                .collect();
            let mut out = vec![f32::NAN; rows * n];
            let packed = pack(k, n, &f);
            assert_eq!(packed.len(), k * n);
            assert_eq!(
                packed.as_ptr() as usize % 64,
                0,
                "a packed factor starts a cache line"
            );
            gemm_rows(rows, k, n, &x, &packed, &mut out);
            for r in 0..rows {
                for j in 0..n {
                    // Small integers and quarters: every product and sum is exact in f32.
                    let want: f64 = (0..k)
                        .map(|p| x[r * k + p] as f64 * f[p * n + j] as f64)
                        .sum();
                    assert_eq!(out[r * n + j] as f64, want, "{rows}×{k}×{n} at ({r}, {j})");
                }
            }
            // Every kernel this CPU has, on either layout of the factor, gives the same bits.
            for isa in Isa::available() {
                for (factor, f) in [(Factor::Packed, &packed[..]), (Factor::Plain, &f[..])] {
                    let mut other = vec![f32::NAN; rows * n];
                    let none = (&Epilogue::none(), 0);
                    gemm_rows_on(isa, rows, k, n, &x, f, factor, none, &mut other);
                    assert_eq!(other, out, "{rows}×{k}×{n} by {isa:?}");
                }
            }
            // Each row's rounded result does not depend on which rows are computed with it.
            let x: Vec<f32> = (0..rows * k).map(|v| (v as f32 * 0.37).sin()).collect();
            gemm_rows(rows, k, n, &x, &packed, &mut out);
            for first in 0..rows {
                let mut one = vec![0.0; n];
                gemm_rows(1, k, n, &x[first * k..], &packed, &mut one);
                assert_eq!(one, out[first * n..(first + 1) * n], "row {first} alone");
            }
            // The vector kernels round alike where the sums are not exact too.
            for isa in Isa::available().into_iter().filter(|&i| i != Isa::Portable) {
                let mut other = vec![f32::NAN; rows * n];
                let none = (&Epilogue::none(), 0);
                gemm_rows_on(
                    isa,
                    rows,
                    k,
                    n,
                    &x,
                    &packed,
                    Factor::Packed,
                    none,
                    &mut other,
                );
                assert_eq!(other, out, "{rows}×{k}×{n} by {isa:?}, inexact sums");
            }
        }
    }
}
