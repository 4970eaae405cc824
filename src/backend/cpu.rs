//! The fast CPU executor: float32, multithreaded over blocks of batch items.
//!
//! In: a [`Plan`] and its inputs as float32 batches. Out: every output for every item, as the
//! reference would compute it up to float32 rounding. Method: the shared (hoisted) steps are
//! computed once, in float64, and rounded (the hoisted work is small and this keeps it exact).
//! Then blocks of [`block_items`] items run in parallel (rayon), each block through *every*
//! batched step while its intermediates are in cache, in one of two layouts:
//! - **item-major** ([`rows`]), chosen when the batched work is products with shared factors,
//!   element-wise steps and cheap per-item products ([`rows::chosen`]): inputs are read where
//!   they lie, outputs computed where they go, products with a shared factor are GEMMs over
//!   the block's rows with the factor transposed once per run, and the element-wise steps
//!   after a product are applied to its rows as they are stored;
//! - **lanes** (element-major, see [`kernels`]) otherwise: the block's inputs are transposed
//!   into lanes, each step runs as loops over all the block's items at once (an 8×8 LU 16
//!   items per instruction with AVX-512), and the outputs are transposed back.
//!
//! The blocks are compiled for AVX-512, AVX2 and the portable baseline, and run on the
//! widest the CPU has ([`Isa`]) or the one [`run_cpu_on`] is given. The item-major layout's
//! hand-written micro-kernels sit in one file per instruction set (`avx2.rs`, `avx512.rs`)
//! behind one tile driver in [`rows`], which falls back to the portable GEMM elsewhere.
//!
//! Each thread's buffers are allocated once and reused for every block it runs; nothing is
//! allocated per item. Invariant: results do not depend on the block size or the thread
//! count beyond float32 rounding of independent items (each item is computed by the same code
//! in the same order), nor on whether AVX-512 or AVX2 runs them (the same operations).

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod kernels;
pub mod rows;

use std::borrow::Cow;

use rayon::prelude::*;

use crate::batch::Batch;
use crate::plan::{Plan, Step};
use kernels::{run_step, Arg, Scratch};

use super::layout::transpose;
pub use super::layout::{hoisted_values, items_to_lanes, lanes_to_items};

/// The most items in one block.
pub const MAX_BLOCK: usize = 256;

/// The most items in one item-major block ([`rows`]): larger blocks make taller GEMMs.
pub const MAX_ROW_BLOCK: usize = 1024;

/// Bytes of one block's values that should stay in a core's private cache (L2).
const BLOCK_BYTES: usize = 512 * 1024;

/// Items per block for `plan`: as many as keep a block's batched values within
/// [`BLOCK_BYTES`], a multiple of 16 (whole vectors) between 16 and [`MAX_BLOCK`] in lanes;
/// for item-major blocks only the computed values count (inputs are read in place), up to
/// [`MAX_ROW_BLOCK`].
pub fn block_items(plan: &Plan) -> usize {
    if rows::chosen(plan) {
        let items = BLOCK_BYTES / 4 / rows::floats_per_item(plan).max(1);
        return (items / 16 * 16).clamp(16, MAX_ROW_BLOCK);
    }
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
pub fn run_cpu<I: AsRef<[f32]>>(plan: &Plan, inputs: &[I], batch: usize) -> Vec<Batch<f32>> {
    run_cpu_on(Isa::fastest(), plan, inputs, batch)
}

/// [`run_cpu`] with the blocks compiled for `isa`, one of [`Isa::available`].
pub fn run_cpu_on<I: AsRef<[f32]>>(
    isa: Isa,
    plan: &Plan,
    inputs: &[I],
    batch: usize,
) -> Vec<Batch<f32>> {
    let mut outputs = output_buffers(plan, batch);
    run_cpu_into_on(isa, plan, inputs, batch, &mut outputs);
    outputs
}

/// An instruction set the executor's blocks are compiled for, chosen at run time.
///
/// `Avx512` and `Avx2` give the same bits: their products form every multiply-add with one
/// FMA in the same order, and their element-wise steps form none (the compiler never
/// contracts a multiply and an add). `Portable`, the build for any CPU, rounds its
/// products' multiply-adds separately, so its results may differ from theirs in the last
/// bits of a sum.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// 512-bit vectors (16 floats), FMA.
    Avx512,
    /// 256-bit vectors (8 floats), FMA.
    Avx2,
    /// Whatever the compiler's baseline for the target gives.
    Portable,
}

impl Isa {
    /// Whether this CPU runs `self` (the features are detected once and cached by std).
    pub fn is_available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let vector = has!("avx2") && has!("fma");
            match self {
                Isa::Avx512 => vector && has!("avx512f"),
                Isa::Avx2 => vector,
                Isa::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Portable
        }
    }

    /// The instruction sets this CPU runs, widest first; `Portable` is always last.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The widest of [`Isa::available`]: what [`run_cpu`] uses.
    pub fn fastest() -> Isa {
        Isa::ALL
            .into_iter()
            .find(|i| i.is_available())
            .unwrap_or(Isa::Portable)
    }

    /// Every instruction set, widest first.
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Portable];

    /// The name `matgrad bench --cpu-isa` takes: `avx512`, `avx2`, `portable`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
        }
    }

    /// Whether blocks built for this set fuse `exp`'s and `log`'s multiply-adds
    /// ([`kernels::map_func`]): the two vector builds do, alike; the portable build does not
    /// (without FMA hardware a fused multiply-add is a slow library call).
    pub fn fuses_functions(self) -> bool {
        self != Isa::Portable
    }

    /// The instruction set called `name` ([`Isa::name`]), if any.
    pub fn from_name(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }
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
pub fn run_cpu_into<I: AsRef<[f32]>>(
    plan: &Plan,
    inputs: &[I],
    batch: usize,
    outputs: &mut [Batch<f32>],
) {
    run_cpu_into_on(Isa::fastest(), plan, inputs, batch, outputs)
}

/// [`run_cpu_into`] with the blocks compiled for `isa`.
///
/// # Panics
/// As [`run_cpu_into`], and if `isa` is not one of [`Isa::available`].
pub fn run_cpu_into_on<I: AsRef<[f32]>>(
    isa: Isa,
    plan: &Plan,
    inputs: &[I],
    batch: usize,
    outputs: &mut [Batch<f32>],
) {
    let inputs: Vec<&[f32]> = inputs.iter().map(AsRef::as_ref).collect();
    run_blocks(isa, plan, &inputs, batch, outputs, true)
}

/// [`run_cpu_into_on`], with item-major products' element-wise steps fused into their stores
/// ([`rows::fused_chains`]) or, when `fuse` is false, run on their own (the same bits).
fn run_blocks(
    isa: Isa,
    plan: &Plan,
    inputs: &[&[f32]],
    batch: usize,
    outputs: &mut [Batch<f32>],
    fuse: bool,
) {
    assert!(
        isa.is_available(),
        "run_cpu_into_on: this CPU does not run {isa:?}"
    );
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
    // The layout, chosen once: each has its own job type and block runner.
    if rows::chosen(plan) {
        let job = Job {
            isa,
            steps,
            inputs,
            shared: &shared,
            read_through: rows::transposes_read_in_place(plan),
        };
        let job = rows::RowJob::new(job, plan, fuse);
        rows::run(&job, plan, per_block, items, batch);
        return;
    }
    let job = Job {
        isa,
        steps,
        inputs,
        shared: &shared,
        read_through: read_through_transposes(plan),
    };
    per_block.into_par_iter().enumerate().for_each_init(
        || Block::new(steps, items),
        |block, (b, outs)| {
            let first = b * items;
            block.process(&job, first, items.min(batch - first), outs);
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

/// What every block of one run reads, in either layout (the item-major layout's
/// [`rows::RowJob`] adds its own).
pub(crate) struct Job<'a> {
    /// One of [`Isa::available`].
    isa: Isa,
    steps: &'a [Step],
    inputs: &'a [&'a [f32]],
    shared: &'a [Cow<'a, [f32]>],
    /// Transposes that are never stored: their users read the argument through swapped
    /// indices ([`read_through_transposes`] in lanes, [`rows::transposes_read_in_place`]
    /// item-major).
    read_through: Vec<bool>,
}

/// Batched transposes used only as a factor of products of two batched values (whose loops
/// read any element by its index): those products read the transposed value in place, so
/// `A'*r` for a batched `A` copies nothing.
fn read_through_transposes(plan: &Plan) -> Vec<bool> {
    let steps = plan.steps();
    let mut ok: Vec<bool> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            matches!(s.node, crate::expr::Node::Transpose(_))
                && s.batched
                && !plan.outputs().contains(&i)
        })
        .collect();
    for step in steps {
        let product_of_batched = matches!(step.node, crate::expr::Node::MatMul(..))
            && step.args.iter().all(|&a| steps[a].batched);
        if !product_of_batched {
            for &a in &step.args {
                ok[a] = false;
            }
        }
    }
    ok
}

/// Asks for share `k` of `n` of the lines of `slices` (taken together) to be brought into L2.
#[inline(always)]
fn prefetch_share(slices: &[&[f32]], k: usize, n: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let (from, to) = (total * k / n, total * (k + 1) / n);
        let mut offset = 0;
        for s in slices {
            let (a, b) = (
                from.max(offset) - offset,
                to.min(offset + s.len()).saturating_sub(offset),
            );
            for e in (a..b).step_by(16) {
                // SAFETY: `e < s.len()`; a prefetch never faults and changes no memory.
                unsafe { _mm_prefetch::<_MM_HINT_T1>(s.as_ptr().add(e).cast()) };
            }
            offset += s.len();
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (slices, k, n);
}

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
    #[inline(always)]
    fn load(&mut self, steps: &[Step], inputs: &[&[f32]], first: usize, count: usize) {
        let l = self.items;
        for (i, step) in steps.iter().enumerate() {
            if let (true, Some(k)) = (step.batched, step.input) {
                let len = step.len();
                let src = &inputs[k][first * len..(first + count) * len];
                transpose::<true>(src, count, len, len, &mut self.values[i], l);
            }
        }
    }

    /// Transposes the first `count` lanes of step `o` back to item-major `out`.
    #[inline(always)]
    fn store(&self, o: usize, len: usize, count: usize, out: &mut [f32]) {
        transpose::<false>(&self.values[o], len, count, self.items, out, len);
    }

    /// Loads, runs and stores one block, vectorized for the CPU it runs on.
    fn process(&mut self, job: &Job, first: usize, count: usize, outs: Vec<(usize, &mut [f32])>) {
        // SAFETY (both): `job.isa` is available, so the CPU has the features the function is
        // compiled for.
        match job.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.process_avx512(job, first, count, outs) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.process_avx2(job, first, count, outs) },
            _ => self.process_inline(job, first, count, outs),
        }
    }

    /// The block compiled for AVX2 and FMA (256-bit vectors: 8 items per instruction). The
    /// compiler forms no FMA from separate multiplies and adds (Rust never contracts them):
    /// only `exp` and `log` use FMA, as in the AVX-512 build.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn process_avx2(
        &mut self,
        job: &Job,
        first: usize,
        count: usize,
        outs: Vec<(usize, &mut [f32])>,
    ) {
        self.process_inline(job, first, count, outs)
    }

    /// The block compiled for AVX-512 (16 items per instruction): the same operations as the
    /// AVX2 build, so the same results.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn process_avx512(
        &mut self,
        job: &Job,
        first: usize,
        count: usize,
        outs: Vec<(usize, &mut [f32])>,
    ) {
        self.process_inline(job, first, count, outs)
    }

    #[inline(always)]
    fn process_inline(
        &mut self,
        job: &Job,
        first: usize,
        count: usize,
        outs: Vec<(usize, &mut [f32])>,
    ) {
        self.load(job.steps, job.inputs, first, count);
        // The next block's inputs are fetched into L2 while this one computes: the loads
        // then overlap arithmetic instead of following it.
        let next: Vec<&[f32]> = job
            .steps
            .iter()
            .filter(|s| s.batched)
            .filter_map(|s| {
                let data = job.inputs[s.input?];
                let len = s.len();
                let start = ((first + count) * len).min(data.len());
                Some(&data[start..((first + 2 * count) * len).min(data.len())])
            })
            .collect();
        self.run(job, &next);
        for (o, chunk) in outs {
            self.store(o, job.steps[o].len(), count, chunk);
        }
    }

    /// Every computed batched step, in plan order.
    #[inline(always)]
    fn run(&mut self, job: &Job, next: &[&[f32]]) {
        let (steps, shared, read_through) = (job.steps, job.shared, &job.read_through);
        let fma = job.isa.fuses_functions();
        let l = self.items;
        let computed = (0..steps.len())
            .filter(|&i| steps[i].batched && steps[i].input.is_none() && !read_through[i])
            .count();
        let mut done = 0;
        for (i, step) in steps.iter().enumerate() {
            if !step.batched || step.input.is_some() || read_through[i] {
                continue;
            }
            prefetch_share(next, done, computed);
            done += 1;
            let mut out = std::mem::take(&mut self.values[i]);
            {
                let mut args = [Arg::Shared(&[]); 2];
                let mut shapes = [(0, 0); 2];
                for (k, &a) in step.args.iter().enumerate() {
                    args[k] = match (steps[a].batched, read_through[a]) {
                        (true, true) => Arg::Transposed {
                            data: &self.values[steps[a].args[0]],
                            rows: steps[a].rows,
                            cols: steps[a].cols,
                        },
                        (true, false) => Arg::Lanes(&self.values[a]),
                        (false, _) => Arg::Shared(&shared[a]),
                    };
                    shapes[k] = (steps[a].rows, steps[a].cols);
                }
                let n = step.args.len();
                let (args, shapes) = (&args[..n], &shapes[..n]);
                run_step(step, args, shapes, l, fma, &mut out, &mut self.scratch);
            }
            self.values[i] = out;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_read_in_place_give_the_reference_values() {
        use crate::workloads::{prepare, Workload, WORKLOADS};
        // W3 (item-major): 2*A'*(A*x+b) reads A's rows in place for A'. The derivative of
        // tr(X'*Y*X) by Y (lanes: a product of batched matrices) reads X' through swapped
        // indices.
        let lanes = Workload {
            id: "lanes",
            program: "X: matrix(5,5); Y: matrix(5,5); tr(X'*Y*X)",
            wrt: "Y",
            batched: &["X", "Y"],
            batch: 37,
        };
        for (w, item_major) in [(&WORKLOADS[2], true), (&lanes, false)] {
            let p = prepare(w, 37);
            assert_eq!(rows::chosen(&p.plan), item_major, "{}", w.id);
            let read = if item_major {
                rows::transposes_read_in_place(&p.plan)
            } else {
                read_through_transposes(&p.plan)
            };
            assert!(
                read.iter().any(|&r| r),
                "{}: a transpose is read in place",
                w.id
            );
            let inputs: Vec<Batch<f32>> = p.inputs.iter().map(crate::check::to_f32).collect();
            let refs: Vec<&Batch<f32>> = inputs.iter().collect();
            let got = run_cpu(&p.plan, &refs, 37);
            let exact: Vec<Batch<f64>> = crate::check::round_to_f32(&p.inputs);
            let exact_refs: Vec<&Batch<f64>> = exact.iter().collect();
            let want = crate::batch::run_reference(&p.plan, &exact_refs, 37);
            for (g, w) in got[0].data.iter().zip(&want[0].data) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()),
                    "{g} vs {w}"
                );
            }
        }
    }

    #[test]
    fn block_sizes_are_whole_vectors_within_bounds() {
        for (w, most) in [(2, MAX_ROW_BLOCK), (3, MAX_BLOCK), (5, MAX_ROW_BLOCK)] {
            let p = crate::workloads::prepare(&crate::workloads::WORKLOADS[w], 4);
            let items = block_items(&p.plan);
            assert!(
                items.is_multiple_of(16) && (16..=most).contains(&items),
                "{items}"
            );
        }
    }

    #[test]
    fn fused_steps_give_the_bits_of_the_steps_run_on_their_own() {
        use crate::workloads::{prepare, Workload, WORKLOADS};
        let [w1, w5, w6] = [WORKLOADS[0], WORKLOADS[4], WORKLOADS[5]];
        // (program, wrt, batched, steps fused: counted by hand from the plan)
        let cases: [(&str, &str, &[&str], usize); 9] = [
            // A per-item number and an earlier batched value: t8*t11 + t7.
            (
                "A: matrix(16,16); x: vector(16); (x'*x)*(x'*A*x)",
                "x",
                &["x"],
                3,
            ),
            // A map over stacked rows; an earlier batched value added to X·S.
            (
                "X: matrix(12,16); S: matrix(16,16); sum(X .* exp(X*S))",
                "X",
                &["X"],
                2,
            ),
            // A shared number; a batched input after the product.
            (
                "A: matrix(16,16); x: vector(16); c: scalar; (x'*A*x)/c",
                "x",
                &["x"],
                1,
            ),
            (
                "A: matrix(16,16); x: vector(16); c: scalar; (x'*A*x)/c",
                "x",
                &["x", "c"],
                1,
            ),
            // A sum after a per-item S·X.
            (w5.program, w5.wrt, w5.batched, 1),
            // A quotient with the chain's value second, a map, a negation.
            (w6.program, w6.wrt, w6.batched, 5),
            (w1.program, w1.wrt, w1.batched, 2),
            // After a small S·x (dot products, no GEMM).
            (
                "A: matrix(4,4); x: vector(4); b: vector(4); (A*x+b)'*(A*x+b)",
                "x",
                &["x"],
                2,
            ),
            (
                "A: matrix(16,16); x: vector(16); b: vector(16); sum(exp(A*x) ./ (b+x))",
                "x",
                &["x", "b"],
                1,
            ),
        ];
        for (program, wrt, batched, fused) in cases {
            let w = Workload {
                id: "fused",
                program,
                wrt,
                batched,
                batch: 45,
            };
            let p = prepare(&w, 45);
            let name = format!("{} by {} with {:?} batched", w.program, w.wrt, w.batched);
            assert!(rows::chosen(&p.plan), "{name}: item-major");
            let chains = rows::fused_chains(&p.plan);
            assert_eq!(chains.iter().map(Vec::len).sum::<usize>(), fused, "{name}");
            let inputs: Vec<Batch<f32>> = p.inputs.iter().map(crate::check::to_f32).collect();
            let refs: Vec<&[f32]> = inputs.iter().map(|b| &b.data[..]).collect();
            for isa in Isa::available() {
                let mut bits = Vec::new();
                for fuse in [true, false] {
                    let mut out = output_buffers(&p.plan, 45);
                    run_blocks(isa, &p.plan, &refs, 45, &mut out, fuse);
                    let b: Vec<u32> = out
                        .iter()
                        .flat_map(|o| o.data.iter().map(|x| x.to_bits()))
                        .collect();
                    bits.push(b);
                }
                let differ = bits[0].iter().zip(&bits[1]).position(|(a, b)| a != b);
                assert_eq!(differ, None, "{name} by {isa:?}: fused and not differ at");
            }
            // And the fused run is the reference's values (up to float32 rounding).
            let got = run_cpu(&p.plan, &refs, 45);
            let exact: Vec<Batch<f64>> = crate::check::round_to_f32(&p.inputs);
            let exact_refs: Vec<&Batch<f64>> = exact.iter().collect();
            let want = crate::batch::run_reference(&p.plan, &exact_refs, 45);
            let (g, w) = (&got[0].data, &want[0].data);
            let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            let worst = g
                .iter()
                .zip(w)
                .fold(0.0f64, |m, (g, w)| m.max((*g as f64 - w).abs()));
            assert!(worst <= 1e-4 * scale, "{name}: off by {worst} of {scale}");
        }
    }
}
