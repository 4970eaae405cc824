//! The fast CPU executor: float32, multithreaded over blocks of batch items, vectorized
//! across the items of a block.
//!
//! In: a [`Plan`] and its inputs as float32 batches. Out: every output for every item, as the
//! reference would compute it up to float32 rounding. Method: the shared (hoisted) steps are
//! computed once, in float64, and rounded (the hoisted work is small and this keeps it exact).
//! Then blocks of [`block_items`] items run in parallel (rayon), each block through *every*
//! batched step while its intermediates are in cache: its inputs are transposed into lanes
//! (element-major, see [`kernels`]), each step runs as loops over all the block's items at
//! once, and the outputs are transposed back into the caller's buffers. Each thread's
//! buffers are allocated once and reused for every block it runs; nothing is allocated per
//! item or per step. Products of a shared matrix with batched values are GEMM calls.
//! Invariant: results do not depend on the block size or the thread count beyond float32
//! rounding of independent items (each item is computed by the same code in the same order).

pub mod kernels;

use std::borrow::Cow;

use rayon::prelude::*;

use crate::batch::Batch;
use crate::plan::{Plan, Step};
use kernels::{run_step, shared_step, Arg, Scratch};

/// The most items in one block.
pub const MAX_BLOCK: usize = 256;

/// Bytes of one block's values that should stay in a core's private cache (L2).
const BLOCK_BYTES: usize = 512 * 1024;

/// Items per block for `plan`: as many as keep a block's batched values within
/// [`BLOCK_BYTES`], a multiple of 16 (whole vectors) between 16 and [`MAX_BLOCK`].
pub fn block_items(plan: &Plan) -> usize {
    let floats_per_item: usize = plan
        .steps()
        .iter()
        .filter(|s| s.batched)
        .map(|s| s.len())
        .sum::<usize>()
        .max(1);
    let items = BLOCK_BYTES / 4 / floats_per_item;
    (items / 16 * 16).clamp(16, MAX_BLOCK)
}

/// Runs `plan`; `inputs[k]` is the value of `plan.inputs()[k]`. Outputs are shaped as
/// [`run_reference`](crate::batch::run_reference)'s.
pub fn run_cpu(plan: &Plan, inputs: &[&Batch<f32>], batch: usize) -> Vec<Batch<f32>> {
    let mut outputs = output_buffers(plan, batch);
    run_cpu_into(plan, inputs, batch, &mut outputs);
    outputs
}

/// Zeroed output buffers for `plan` and `batch` items, in the shapes [`run_cpu`] returns.
pub fn output_buffers(plan: &Plan, batch: usize) -> Vec<Batch<f32>> {
    let items = if plan.is_batched() { batch } else { 1 };
    plan.outputs()
        .iter()
        .map(|&o| {
            let step = &plan.steps()[o];
            Batch {
                batch: plan.is_batched().then_some(batch),
                rows: step.rows,
                cols: step.cols,
                data: vec![0.0; items * step.len()],
            }
        })
        .collect()
}

/// [`run_cpu`] into buffers made by [`output_buffers`] for the same plan and batch (so that
/// repeated evaluations, a benchmark's or an optimizer's, allocate nothing).
///
/// # Panics
/// If `outputs` does not have the shapes [`output_buffers`] gives.
pub fn run_cpu_into(plan: &Plan, inputs: &[&Batch<f32>], batch: usize, outputs: &mut [Batch<f32>]) {
    let steps = plan.steps();
    let expected = output_buffers_shape(plan, batch);
    assert!(
        outputs.len() == expected.len()
            && outputs
                .iter()
                .zip(&expected)
                .all(|(o, &e)| o.data.len() == e),
        "run_cpu_into: output buffers do not fit the plan"
    );
    let shared = hoisted_values(plan, inputs);
    if !plan.is_batched() {
        for (out, &o) in outputs.iter_mut().zip(plan.outputs()) {
            out.data.copy_from_slice(&shared[o]);
        }
        return;
    }
    let items = block_items(plan);
    let blocks = batch.div_ceil(items);
    // Each block's slice of every batched output: (step, items of this block × step length).
    let mut per_block: Vec<Vec<(usize, &mut [f32])>> = (0..blocks).map(|_| Vec::new()).collect();
    for (out, &o) in outputs.iter_mut().zip(plan.outputs()) {
        let len = steps[o].len();
        if steps[o].batched {
            for (b, chunk) in out.data.chunks_mut(items * len).enumerate() {
                per_block[b].push((o, chunk));
            }
        } else {
            // The same for every item: repeated, so every output has the batch axis.
            for chunk in out.data.chunks_mut(len) {
                chunk.copy_from_slice(&shared[o]);
            }
        }
    }
    per_block.into_par_iter().enumerate().for_each_init(
        || Block::new(steps, items),
        |block, (b, outs)| {
            let first = b * items;
            let count = items.min(batch - first);
            block.load(steps, inputs, first, count);
            block.run(steps, &shared);
            for (o, chunk) in outs {
                block.store(o, steps[o].len(), count, chunk);
            }
        },
    );
}

fn output_buffers_shape(plan: &Plan, batch: usize) -> Vec<usize> {
    let items = if plan.is_batched() { batch } else { 1 };
    plan.outputs()
        .iter()
        .map(|&o| items * plan.steps()[o].len())
        .collect()
}

/// Items transposed together between item-major and lanes.
const TILE: usize = 8;

/// One thread's buffers: every batched step's value for a block, in lanes.
struct Block {
    items: usize,
    values: Vec<Vec<f32>>,
    scratch: Scratch,
}

impl Block {
    fn new(steps: &[Step], items: usize) -> Block {
        let values = steps
            .iter()
            .map(|s| {
                if s.batched {
                    vec![0.0; s.len() * items]
                } else {
                    Vec::new()
                }
            })
            .collect();
        Block {
            items,
            values,
            scratch: Scratch::default(),
        }
    }

    /// Transposes the block's items of every batched input into lanes. Lanes past `count`
    /// keep the previous block's (finite) values.
    fn load(&mut self, steps: &[Step], inputs: &[&Batch<f32>], first: usize, count: usize) {
        let l = self.items;
        for (i, step) in steps.iter().enumerate() {
            if let (true, Some(k)) = (step.batched, step.input) {
                let len = step.len();
                let src = &inputs[k].data[first * len..(first + count) * len];
                let dst = &mut self.values[i];
                // Eight items at a time: eight read streams, 32-byte writes (one item at a
                // time would write with a power-of-two stride that thrashes the cache).
                for (g, group) in src.chunks(TILE * len).enumerate() {
                    for e in 0..len {
                        let row = &mut dst[e * l + g * TILE..];
                        for (d, item) in row.iter_mut().zip(group.chunks_exact(len)) {
                            *d = item[e];
                        }
                    }
                }
            }
        }
    }

    /// Transposes the first `count` lanes of step `o` back to item-major `out`.
    fn store(&self, o: usize, len: usize, count: usize, out: &mut [f32]) {
        let l = self.items;
        let src = &self.values[o];
        let out = &mut out[..count * len];
        for (g, group) in out.chunks_mut(TILE * len).enumerate() {
            for e in 0..len {
                let row = &src[e * l + g * TILE..];
                for (item, &v) in group.chunks_exact_mut(len).zip(row) {
                    item[e] = v;
                }
            }
        }
    }

    /// Every computed batched step, in plan order, vectorized for the CPU it runs on.
    fn run(&mut self, steps: &[Step], shared: &[Cow<[f32]>]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has the feature the function is compiled for.
                unsafe { self.run_avx2(steps, shared) };
                return;
            }
        }
        self.run_portable(steps, shared)
    }

    /// The steps compiled for AVX2 (256-bit vectors: 8 items per instruction). No FMA is
    /// enabled, so the arithmetic, and the results, are those of the portable build.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn run_avx2(&mut self, steps: &[Step], shared: &[Cow<[f32]>]) {
        self.run_inline(steps, shared)
    }

    fn run_portable(&mut self, steps: &[Step], shared: &[Cow<[f32]>]) {
        self.run_inline(steps, shared)
    }

    #[inline(always)]
    fn run_inline(&mut self, steps: &[Step], shared: &[Cow<[f32]>]) {
        let l = self.items;
        for (i, step) in steps.iter().enumerate() {
            if !step.batched || step.input.is_some() {
                continue;
            }
            let mut out = std::mem::take(&mut self.values[i]);
            {
                let mut args = [Arg::Shared(&[]); 2];
                let mut shapes = [(0, 0); 2];
                for (k, &a) in step.args.iter().enumerate() {
                    args[k] = if steps[a].batched {
                        Arg::Lanes(&self.values[a])
                    } else {
                        Arg::Shared(&shared[a])
                    };
                    shapes[k] = (steps[a].rows, steps[a].cols);
                }
                let n = step.args.len();
                run_step(
                    step,
                    &args[..n],
                    &shapes[..n],
                    l,
                    &mut out,
                    &mut self.scratch,
                );
            }
            self.values[i] = out;
        }
    }
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
            (false, None) => {
                let args: Vec<(&[f32], usize, usize)> = step
                    .args
                    .iter()
                    .map(|&a| (&shared[a][..], steps[a].rows, steps[a].cols))
                    .collect();
                Cow::Owned(shared_step(step, &args))
            }
        };
        shared.push(value);
    }
    shared
}
