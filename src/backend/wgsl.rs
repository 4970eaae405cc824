//! Stage 7: evaluation plan → WGSL compute shaders.
//!
//! In: a validated [`Plan`]. Out: a [`Kernel`]: the dispatches that evaluate one chunk of
//! items, in order ([`Stage`]), and the layout of their buffers. A product of a shared matrix
//! of at least [`GEMM_MIN_SHARED`] entries with batched values is a tiled GEMM dispatch
//! (`gemm`); a chain of element-wise steps on its result that reads nothing
//! else computed in the same stage is applied as the GEMM stores its entries (an epilogue:
//! W6's logistic chain, W5's final sum); the other steps between such products are fused
//! into per-item kernels, one invocation per item. Shared steps are not in the shaders: the host computes them once
//! per batch and uploads them with the shared inputs.
//!
//! Bindings (the same five for every dispatch): 0 `hoisted` (read-only storage: shared inputs
//! and hoisted shared steps, each at a fixed offset), 1 `batched` (read-only storage: the
//! chunk's batched inputs), 2 `out` (read-write storage: the batched outputs), 3 `params`
//! (uniform: the chunk's item count and the row length of the 2-D dispatch, or a GEMM's sizes
//! and strides), 4 `scratch` (read-write storage: intermediates too large for registers and
//! values passed between dispatches). Every per-item value in a buffer is element-major
//! ("lanes"): element `e` of a value at base `b` for item `t` is at `(b + e)·chunk + t`, so
//! neighbouring invocations read and write neighbouring addresses, and a shared matrix times
//! every item's value is one matrix product. In a per-item kernel, an element-wise step used
//! once is inlined into its user ([`Storage::Inline`]), small intermediates are arrays in
//! function memory indexed by constants (small loops are unrolled, [`UNROLL_LOOP`]), large
//! ones live in `scratch`, outputs in `out` where they are computed. How much may be private
//! or unrolled is a [`Budget`]: [`Budget::HARDWARE`] for GPUs, [`Budget::SOFTWARE`] (16-float
//! private arrays, 128 unrolled statements, the LU looped in `scratch`) for CPU adapters such
//! as llvmpipe, whose compile time otherwise explodes (29 s for a 16×16 `tr(X*X*X)`).
//!
//! [`generate_within`] runs in named phases: the buffers' layout (`BufferLayout`), the
//! dispatches (`Stages`, on the executors' common [`super::schedule::Schedule`]: GEMM
//! products, their fused epilogues, the per-item runs between them), where each value lives
//! (`Placement`), then each stage's text.
//!
//! Invariants: every module — per-item stages, the GEMM, the LU and power building blocks —
//! is built from one IR ([`ir`]: operators, builtins and generated functions are enums, the
//! bindings one table, identifiers made from step numbers and fixed words; there is no raw
//! text) and printed by its one writer, so no program can inject shader code; a value read by
//! another dispatch is in a buffer; every module is validated by naga ([`validate`]) before
//! anything runs it; this module knows nothing of devices.

use super::schedule::{self, ElementOp};
use crate::expr::{Func, Node};
use crate::plan::{Plan, Step};

mod gemm;
pub mod ir;
mod lu;
mod pow;

pub use ir::{Access, Binding, UNROLL_KERNEL, UNROLL_LOOP};
use ir::{
    BinOp, Builtin, BuiltinInput, Callee, Expr, Field, Function, Ident, Module, Stmt, Ty, Uniform,
};

/// Invocations per workgroup (one item each) for kernels with small intermediates.
pub const WORKGROUP_SIZE: u32 = 64;

/// Function-memory floats a workgroup may hold in all: kernels with large per-item
/// intermediates (32×32 matrices) get smaller workgroups, so that drivers that keep private
/// arrays on a stack (lavapipe) or in scarce registers are not overrun.
const WORKGROUP_FLOATS: usize = 16 * 1024;

/// Intermediates up to this many floats live in function memory (registers), up to
/// [`PRIVATE_BUDGET`] floats per item in all; larger ones in the `scratch` buffer. Drivers
/// fail on large private arrays (the NVIDIA Vulkan driver lost the device compiling a kernel
/// with several 32×32 private matrices).
pub const PRIVATE_MAX: usize = 256;
const PRIVATE_BUDGET: usize = 1024;

/// How much of a kernel may be private arrays and unrolled statements: what keeps a
/// driver's compile time in bounds. [`Budget::HARDWARE`] is for GPUs (their compilers take
/// thousands of unrolled statements and 16×16 private matrices in stride);
/// [`Budget::SOFTWARE`] for a CPU adapter such as llvmpipe, whose compile time grows steeply
/// with both (a 16×16 `tr(X*X*X)` by `X`: 29 s with the hardware budget, 0.2 s with this).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// The largest intermediate (floats) kept in function memory.
    pub private_max: usize,
    /// Function-memory floats per item in all.
    pub private_total: usize,
    /// Statements a kernel may be written as by unrolling loops.
    pub unrolled_statements: usize,
    /// The largest N×N LU block written unrolled in function memory (larger: looped, in
    /// `scratch`; see [`lu`]).
    pub unrolled_lu_max: usize,
}

impl Budget {
    pub const HARDWARE: Budget = Budget {
        private_max: PRIVATE_MAX,
        private_total: PRIVATE_BUDGET,
        unrolled_statements: UNROLL_KERNEL,
        unrolled_lu_max: lu::UNROLLED_MAX,
    };
    pub const SOFTWARE: Budget = Budget {
        private_max: 16,
        private_total: 64,
        unrolled_statements: 128,
        unrolled_lu_max: 0,
    };
}

/// Where a batched step's value lives in the kernel.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Storage {
    /// Not stored: an element-wise step used once, by an element-wise step or a reduction
    /// of the same stage, is computed inside its user's expression (element-wise chains
    /// fused into one loop, no intermediate array).
    Inline,
    Private,
    /// Lanes at this base in `scratch`.
    Scratch(usize),
    /// Lanes at this base in `out` (an output written where it is computed).
    Out(usize),
    /// A GEMM's accumulator (`acc`), read only by the element-wise steps fused into the
    /// GEMM's stores.
    Accumulator,
}

/// The generated shaders of a plan and where its data lives.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// The dispatches of one chunk, in order (one when no product is worth a GEMM).
    pub stages: Vec<Stage>,
    /// For each plan step that is shared, its offset in the `shared` buffer.
    pub shared_offsets: Vec<Option<usize>>,
    /// Length of the `shared` buffer in f32 (at least 1: empty bindings are not allowed).
    pub shared_len: usize,
    /// The plan inputs that are batched, in buffer order, with their per-item length.
    pub batched_inputs: Vec<(usize, usize)>,
    /// The batched outputs (plan output positions), in buffer order, with per-item length.
    pub batched_outputs: Vec<(usize, usize)>,
    /// f32 values per item in the `scratch` buffer.
    pub scratch_len: usize,
}

/// One dispatch of a chunk.
#[derive(Clone, Debug)]
pub struct Stage {
    pub source: String,
    pub kind: StageKind,
    /// At most how many loop iterations one invocation runs, all loops together (loops
    /// written unrolled included, so an upper bound): Mesa's llvmpipe stops a shader's loops
    /// after 65 535 iterations in all, silently (see `gpu::SOFTWARE_LOOP_LIMIT`).
    pub loop_iterations: u64,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum StageKind {
    /// One invocation per item, steps fused (intermediates in registers).
    PerItem { workgroup_size: u32 },
    /// A product of a shared matrix with batched values, as a tiled GEMM over the chunk.
    Gemm(GemmStep),
}

/// A shared×batched or batched×shared product, m×k times k×n per item; the shared operand
/// at `shared` in `hoisted`, the batched one at `b` lanes of its buffer, the result at `c`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmStep {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    /// Whether the shared matrix is the left factor.
    pub shared_left: bool,
    pub shared: usize,
    pub b: usize,
    pub c: usize,
    /// Element-wise steps applied to each entry as it is stored (0: the product itself).
    pub fused: usize,
    /// Rows and columns of C per workgroup.
    pub tile: (usize, usize),
}

impl GemmStep {
    /// The shader's parameter block for a chunk of `chunk` items, and the dispatch size.
    pub fn params(&self, chunk: usize) -> ([u32; 16], [u32; 3]) {
        let (m, k, n, c) = (self.m, self.k, self.n, chunk);
        // (M, N, K, Z) and the strides of A, B, C as base, row, column, z.
        let v: [usize; 16] = if self.shared_left {
            // [C] (m × n·chunk) = S (m×k) · [B] (k × n·chunk).
            [
                m,
                n * c,
                k,
                1,
                self.shared,
                k,
                1,
                0,
                self.b * c,
                n * c,
                1,
                0,
                self.c * c,
                n * c,
                1,
                0,
            ]
        } else {
            // For each row i: [C_i] (n × chunk) = Sᵀ (n×k) · [B_i] (k × chunk).
            [
                n,
                c,
                k,
                m,
                self.shared,
                1,
                n,
                0,
                self.b * c,
                c,
                1,
                k * c,
                self.c * c,
                c,
                1,
                n * c,
            ]
        };
        let groups = [
            v[1].div_ceil(self.tile.1) as u32,
            v[0].div_ceil(self.tile.0) as u32,
            v[3] as u32,
        ];
        (v.map(|x| x as u32), groups)
    }
}

impl Kernel {
    /// f32 values per item in the `batched` buffer.
    pub fn batched_len(&self) -> usize {
        self.batched_inputs.iter().map(|&(_, len)| len).sum()
    }

    /// f32 values per item in the `out` buffer.
    pub fn out_len(&self) -> usize {
        self.batched_outputs.iter().map(|&(_, len)| len).sum()
    }

    /// Every stage's WGSL, in order.
    pub fn source(&self) -> String {
        let parts: Vec<&str> = self.stages.iter().map(|s| s.source.as_str()).collect();
        parts.join("\n// ---- next dispatch ----\n")
    }

    /// The largest per-item workgroup (items per workgroup), for sizing dispatches.
    pub fn workgroup_size(&self) -> u32 {
        self.stages
            .iter()
            .map(|s| match s.kind {
                StageKind::PerItem { workgroup_size } => workgroup_size,
                StageKind::Gemm(_) => WORKGROUP_SIZE,
            })
            .min()
            .unwrap_or(WORKGROUP_SIZE)
    }

    /// Items per chunk the GEMM dispatches allow: `n·chunk / tile columns` workgroups in one
    /// dimension.
    pub fn max_gemm_items(&self, workgroups_per_dimension: usize) -> usize {
        self.stages
            .iter()
            .filter_map(|s| match s.kind {
                StageKind::Gemm(g) => Some(if g.shared_left {
                    workgroups_per_dimension * g.tile.1 / g.n
                } else {
                    workgroups_per_dimension * g.tile.1
                }),
                _ => None,
            })
            .min()
            .unwrap_or(usize::MAX)
    }
}

/// A product runs as a GEMM dispatch when its shared matrix has at least this many entries
/// (below, the per-item loops in registers are faster than a round trip through memory).
pub const GEMM_MIN_SHARED: usize = 1024;

/// Why a generated module is not valid WGSL: a bug in matgrad, reported with the source.
#[derive(Debug, Clone, thiserror::Error)]
#[error("internal error: generated WGSL does not validate: {message}\n--- WGSL ---\n{wgsl}")]
pub struct InvalidShader {
    pub message: String,
    pub wgsl: String,
}

/// The most entries a value, or the values of one item together, may have in a generated
/// kernel: WGSL indexes with 32-bit unsigned integers.
pub const MAX_KERNEL_ENTRIES: usize = u32::MAX as usize;

/// Why a plan has no kernel.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GenerateError {
    #[error(
        "{what} has {entries} entries, past what a GPU kernel can index (WGSL indexes with \
         32-bit integers: at most {MAX_KERNEL_ENTRIES}); use the CPU path (`--device cpu`) or \
         smaller sizes"
    )]
    TooLarge { what: String, entries: usize },
    #[error(transparent)]
    Invalid(#[from] InvalidShader),
}

/// `Err` when a plan's sizes are past what a kernel can index: every value, the shared values
/// together, and one item's batched inputs, outputs and values together.
fn check_sizes(plan: &Plan) -> Result<(), GenerateError> {
    let too_large = |what: String, entries: usize| GenerateError::TooLarge { what, entries };
    let mut shared = 0usize;
    let mut per_item = 0usize;
    for step in plan.steps() {
        let len = step.rows.saturating_mul(step.cols);
        if len > MAX_KERNEL_ENTRIES {
            return Err(too_large(
                format!("a {}x{} value", step.rows, step.cols),
                len,
            ));
        }
        let total = if step.batched {
            &mut per_item
        } else {
            &mut shared
        };
        *total = total.saturating_add(len);
    }
    if shared > MAX_KERNEL_ENTRIES {
        return Err(too_large("the shared values together".into(), shared));
    }
    if per_item > MAX_KERNEL_ENTRIES {
        return Err(too_large("one item's values together".into(), per_item));
    }
    Ok(())
}

/// Parses and validates WGSL with naga.
pub fn validate(source: &str) -> Result<(), InvalidShader> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| InvalidShader {
        message: e.emit_to_string(source),
        wgsl: source.to_string(),
    })?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .map_err(|e| InvalidShader {
        message: format!("{e:?}"),
        wgsl: source.to_string(),
    })?;
    Ok(())
}

/// Generates (and validates) the kernels of a plan.
pub fn generate(plan: &Plan) -> Result<Kernel, GenerateError> {
    generate_within(plan, Budget::HARDWARE)
}

/// [`generate`] within `budget` (the GPU runtime passes [`Budget::SOFTWARE`] for CPU
/// adapters).
pub fn generate_within(plan: &Plan, budget: Budget) -> Result<Kernel, GenerateError> {
    check_sizes(plan)?;
    let layout = BufferLayout::new(plan);
    let dispatches = Stages::new(plan);
    let placement = Placement::new(plan, &layout, &dispatches, budget);
    let steps = plan.steps();
    // A fresh generator for each per-item stage (its own loop counters and building blocks).
    let generator = || Generator {
        steps,
        shared_offsets: &layout.shared_offsets,
        input_base: &layout.input_base,
        storage: &placement.storage,
        power_copy: &placement.power_copy,
        lu_region: &placement.lu_region,
        unrolled_statements: budget.unrolled_statements,
        unrolled_lu_max: budget.unrolled_lu_max,
        loops: 0,
    };
    let mut stages = Vec::new();
    for group in &dispatches.stages {
        if dispatches.is_gemm[group[0]] {
            let i = group[0];
            let gen = generator();
            stages.push(gemm_stage(
                steps,
                i,
                &dispatches,
                &layout,
                &placement,
                &gen,
            )?);
            continue;
        }
        let mut gen = generator();
        let mut body = item_prologue();
        for &i in group {
            gen.step(i, &steps[i], &mut body);
        }
        stages.push(per_item_stage(gen, body)?);
    }

    // Last: outputs that are inputs, or that appear more than once, copied into `out`.
    let mut gen = generator();
    let mut body = item_prologue();
    let prologue_len = body.len();
    for (&(position, len), &base) in layout.batched_outputs.iter().zip(&layout.out_bases) {
        let o = plan.outputs()[position];
        if placement.storage[o] == Storage::Out(base) {
            continue;
        }
        let i = gen.loop_var();
        let target = lanes(Binding::Out, base, Expr::id(i.clone()));
        let value = gen.value(o, Expr::id(i.clone()));
        body.push(Stmt::For(i, len, vec![Stmt::Assign(target, value)]));
    }
    if body.len() > prologue_len {
        stages.push(per_item_stage(gen, body)?);
    }
    Ok(Kernel {
        stages,
        shared_offsets: layout.shared_offsets,
        shared_len: layout.shared_len.max(1),
        batched_inputs: layout.batched_inputs,
        batched_outputs: layout.batched_outputs,
        scratch_len: placement.scratch_len,
    })
}

/// Where the kernel's buffers hold each shared value, batched input and batched output.
struct BufferLayout {
    /// Each shared step's offset in `hoisted`.
    shared_offsets: Vec<Option<usize>>,
    shared_len: usize,
    /// `(input, floats)` of each batched input, in `batched` order.
    batched_inputs: Vec<(usize, usize)>,
    /// Each batched input's first element in `batched`.
    input_base: Vec<usize>,
    /// `(position, floats)` of each batched output, in `out` order, and their bases.
    batched_outputs: Vec<(usize, usize)>,
    out_bases: Vec<usize>,
}

impl BufferLayout {
    fn new(plan: &Plan) -> BufferLayout {
        let steps = plan.steps();
        let mut shared_offsets = vec![None; steps.len()];
        let mut shared_len = 0;
        for (i, step) in steps.iter().enumerate() {
            if !step.batched {
                shared_offsets[i] = Some(shared_len);
                shared_len += step.len();
            }
        }
        let mut batched_inputs = Vec::new();
        let mut input_base = vec![0usize; plan.inputs().len()];
        let mut running = 0;
        for (k, input) in plan.inputs().iter().enumerate() {
            if input.batched {
                input_base[k] = running;
                running += input.rows * input.cols;
                batched_inputs.push((k, input.rows * input.cols));
            }
        }
        let mut batched_outputs = Vec::new();
        let mut out_bases = Vec::new();
        let mut out_base = 0;
        for (position, &o) in plan.outputs().iter().enumerate() {
            if steps[o].batched {
                batched_outputs.push((position, steps[o].len()));
                out_bases.push(out_base);
                out_base += steps[o].len();
            }
        }
        BufferLayout {
            shared_offsets,
            shared_len,
            batched_inputs,
            input_base,
            batched_outputs,
            out_bases,
        }
    }
}

/// Which steps run in which dispatch: the products worth a GEMM, the element-wise chains
/// fused into their stores (epilogues), and the runs of other steps between them; built on
/// the executors' common [`schedule::Schedule`].
struct Stages {
    common: schedule::Schedule,
    is_gemm: Vec<bool>,
    /// A GEMM's epilogue: the chain of element-wise steps of its shape
    /// ([`schedule::Schedule::chain`]) whose other arguments are shared values, batched
    /// inputs, or values that earlier stages left in buffers; applied as the product's entries
    /// are stored.
    epilogue: Vec<Vec<usize>>,
    stage_of: Vec<usize>,
    /// The dispatches, in order: a GEMM alone, or a run of per-item steps.
    stages: Vec<Vec<usize>>,
}

impl Stages {
    fn new(plan: &Plan) -> Stages {
        let steps = plan.steps();
        let common = schedule::Schedule::new(plan);
        let computed = &common.computed;
        // Stages: runs of fused steps, split at products worth a GEMM.
        let is_gemm: Vec<bool> = (0..steps.len())
            .map(|i| computed[i] && gemm_shape(steps, i).is_some())
            .collect();
        let mut epilogue: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
        let mut in_epilogue = vec![false; steps.len()];
        for i in (0..steps.len()).filter(|&i| is_gemm[i]) {
            epilogue[i] = common.chain(plan, i, |u, last| {
                (steps[u].args.iter()).all(|&a| a == last || !steps[a].batched || a < i)
            });
            for &u in &epilogue[i] {
                in_epilogue[u] = true;
            }
        }
        let mut stage_of = vec![usize::MAX; steps.len()];
        let mut stages: Vec<Vec<usize>> = Vec::new();
        let mut open = false;
        for i in (0..steps.len()).filter(|&i| computed[i] && !in_epilogue[i]) {
            if is_gemm[i] {
                stages.push(vec![i]);
                for &u in &epilogue[i] {
                    stage_of[u] = stages.len() - 1;
                }
                open = false;
            } else {
                if !open {
                    stages.push(Vec::new());
                    open = true;
                }
                stages.last_mut().expect("a stage is open").push(i);
            }
            stage_of[i] = stages.len() - 1;
        }
        Stages {
            common,
            is_gemm,
            epilogue,
            stage_of,
            stages,
        }
    }

    /// The step whose value a GEMM stage stores.
    fn stored(&self, i: usize) -> usize {
        self.epilogue[i].last().copied().unwrap_or(i)
    }
}

/// Where each computed value lives ([`Storage`]), the scratch regions of matrix powers'
/// copies and of looped LU blocks, and the scratch floats per item.
struct Placement {
    storage: Vec<Storage>,
    power_copy: Vec<Option<usize>>,
    lu_region: Vec<Option<usize>>,
    scratch_len: usize,
}

impl Placement {
    /// A value read in another stage, by a GEMM, or stored by one lives in a buffer; an output
    /// lives in `out` when it is there once; the rest in function memory, within `budget`.
    fn new(plan: &Plan, layout: &BufferLayout, stages: &Stages, budget: Budget) -> Placement {
        let steps = plan.steps();
        let Stages {
            common,
            is_gemm,
            epilogue,
            stage_of,
            ..
        } = stages;
        let schedule::Schedule {
            computed,
            users,
            elementwise,
            ..
        } = common;
        let mut global = vec![false; steps.len()];
        for i in (0..steps.len()).filter(|&i| is_gemm[i]) {
            global[stages.stored(i)] = true;
        }
        for j in (0..steps.len()).filter(|&j| computed[j]) {
            for &a in &steps[j].args {
                if computed[a] && (stage_of[a] != stage_of[j] || is_gemm[j]) {
                    global[a] = true;
                }
            }
        }
        let mut storage = vec![Storage::Private; steps.len()];
        let mut power_copy: Vec<Option<usize>> = vec![None; steps.len()];
        let mut lu_region: Vec<Option<usize>> = vec![None; steps.len()];
        let (mut private, mut scratch_len) = (0, 0);
        for i in (0..steps.len()).filter(|&i| computed[i]) {
            let len = steps[i].len();
            let positions: Vec<usize> = (layout.batched_outputs.iter())
                .enumerate()
                .filter(|(_, &(p, _))| plan.outputs()[p] == i)
                .map(|(k, _)| k)
                .collect();
            let inline = !global[i]
                && positions.is_empty()
                && elementwise[i].is_some()
                && users[i].len() == 1
                && users[i].iter().all(|&u| {
                    elementwise[u].is_some()
                        || matches!(
                            steps[u].node,
                            Node::Sum(_) | Node::Norm1(_) | Node::Norm2(_)
                        )
                });
            // A matrix power's working copy: in function memory while that has room, else in
            // `scratch` (a large private array indexed by loop variables makes llvmpipe's
            // compile time explode: 5.8 s for one 24×24 copy).
            if matches!(steps[i].node, Node::MatPow(_, k) if k > 1) {
                if len <= budget.private_max && private + len <= budget.private_total {
                    private += len;
                } else {
                    power_copy[i] = Some(scratch_len);
                    scratch_len += len;
                }
            }
            // The looped LU block works on the item's lanes of `scratch`: the factors, and for
            // an inverse the inverse before it is stored.
            if let Node::Det(_) | Node::LogDet(_) | Node::Inv(_) = steps[i].node {
                let n = steps[steps[i].args[0]].rows;
                if n > budget.unrolled_lu_max {
                    lu_region[i] = Some(scratch_len);
                    let copies = if matches!(steps[i].node, Node::Inv(_)) {
                        2
                    } else {
                        1
                    };
                    scratch_len += copies * n * n;
                }
            }
            let fits = len <= budget.private_max && private + len <= budget.private_total;
            storage[i] = if is_gemm[i] && !epilogue[i].is_empty() {
                Storage::Accumulator
            } else if inline {
                Storage::Inline
            } else if !global[i] && positions.is_empty() && fits {
                private += len;
                Storage::Private
            } else if positions.len() == 1 {
                Storage::Out(layout.out_bases[positions[0]])
            } else {
                scratch_len += len;
                Storage::Scratch(scratch_len - len)
            };
        }
        Placement {
            storage,
            power_copy,
            lu_region,
            scratch_len,
        }
    }

    /// The buffer and base of step `i`'s value.
    /// (A GEMM's operands and result, the only values asked for, are in buffers.)
    fn buffer_of(&self, steps: &[Step], layout: &BufferLayout, i: usize) -> (Binding, usize) {
        match (steps[i].input, self.storage[i]) {
            (Some(k), _) => (Binding::Batched, layout.input_base[k]),
            (None, Storage::Scratch(b)) => (Binding::Scratch, b),
            (None, Storage::Out(b)) => (Binding::Out, b),
            (None, Storage::Private | Storage::Inline | Storage::Accumulator) => {
                unreachable!("a value a GEMM reads or stores lives in a buffer (Placement::new)")
            }
        }
    }
}

/// The GEMM dispatch of product step `i`, with its epilogue applied as entries are stored.
fn gemm_stage(
    steps: &[Step],
    i: usize,
    stages: &Stages,
    layout: &BufferLayout,
    placement: &Placement,
    gen: &Generator,
) -> Result<Stage, GenerateError> {
    let (m, k, n, shared_left) = gemm_shape(steps, i).expect("a GEMM step");
    let (s, b) = if shared_left {
        (steps[i].args[0], steps[i].args[1])
    } else {
        (steps[i].args[1], steps[i].args[0])
    };
    let (b_buffer, b_base) = placement.buffer_of(steps, layout, b);
    let (c_buffer, c_base) = placement.buffer_of(steps, layout, stages.stored(i));
    let epilogue = &stages.epilogue[i];
    // The item and entry `e` of the product's value for the entry (i, j) of C in slice z (see
    // `GemmStep::params`): with the shared factor on the left, C has n columns per item,
    // column j is column j / chunk of item j mod chunk; on the right, slice z holds row z of
    // every item, column j is item j.
    let (w, n32) = (Expr::word, Expr::U32(n as u32));
    let (chunk, item, element) = if shared_left {
        (
            Expr::bin(BinOp::Div, Expr::param(Field::N), n32.clone()),
            Expr::bin(BinOp::Rem, w("j"), w("chunk")),
            Expr::bin(
                BinOp::Add,
                Expr::bin(BinOp::Mul, w("i"), n32),
                Expr::bin(BinOp::Div, w("j"), w("chunk")),
            ),
        )
    } else {
        (
            Expr::param(Field::N),
            w("j"),
            Expr::bin(BinOp::Add, Expr::bin(BinOp::Mul, w("z"), n32), w("i")),
        )
    };
    let value = match epilogue.last() {
        Some(&last) => gen
            .elementwise_expr(last, Expr::word("e"))
            .expect("an epilogue step is element-wise"),
        None => Expr::word("acc"),
    };
    // Rows of C per slice: the shared factor's rows, or (on the right) its columns.
    let tile = gemm::tile_for(if shared_left { m } else { n });
    // The epilogue's calls (element-wise only: `mg_pow` at most).
    let blocks = building_blocks(value.callees(), |n| n > gen.unrolled_lu_max);
    let source = gemm::shader(
        tile,
        b_buffer,
        c_buffer,
        blocks,
        gemm::Store {
            chunk,
            item,
            element,
            epilogue: value,
        },
    )
    .to_string();
    validate(&source)?;
    Ok(Stage {
        source,
        // The GEMM: 16-deep panels of k, 16 steps each.
        loop_iterations: k.div_ceil(16) as u64 * 17,
        kind: StageKind::Gemm(GemmStep {
            m,
            k,
            n,
            shared_left,
            shared: layout.shared_offsets[s].unwrap_or(0),
            b: b_base,
            c: c_base,
            fused: epilogue.len(),
            tile,
        }),
    })
}

/// `(m, k, n, shared_left)` when step `i` is a product of a shared matrix with at least
/// [`GEMM_MIN_SHARED`] entries and a batched value.
fn gemm_shape(steps: &[Step], i: usize) -> Option<(usize, usize, usize, bool)> {
    let step = &steps[i];
    if !matches!(step.node, Node::MatMul(..)) {
        return None;
    }
    let (a, b) = (&steps[step.args[0]], &steps[step.args[1]]);
    let (m, k, n) = (a.rows, a.cols, b.cols);
    match (a.batched, b.batched) {
        (false, true) if a.len() >= GEMM_MIN_SHARED => Some((m, k, n, true)),
        (true, false) if b.len() >= GEMM_MIN_SHARED => Some((m, k, n, false)),
        _ => None,
    }
}

/// Entry `idx` of the function-memory array `v`.
fn at(v: &Ident, idx: Expr) -> Expr {
    Expr::index(Expr::id(v.clone()), idx)
}

/// The item index and the guard that every per-item stage starts with.
fn item_prologue() -> Vec<Stmt> {
    vec![
        Stmt::Let(Ident::chunk(), Expr::param(Field::Chunk)),
        Stmt::Let(
            Ident::item(),
            Expr::plus(
                Expr::field(BuiltinInput::GlobalInvocationId.expr(), Field::X),
                Expr::times(
                    Expr::field(BuiltinInput::GlobalInvocationId.expr(), Field::Y),
                    Expr::param(Field::Row),
                ),
            ),
        ),
        Stmt::ReturnIf(Expr::bin(
            BinOp::Ge,
            Expr::id(Ident::item()),
            Expr::id(Ident::chunk()),
        )),
    ]
}

/// Writes a per-item stage: its building blocks (the functions its body calls), its
/// workgroup size, and validates it.
fn per_item_stage(gen: Generator, body: Vec<Stmt>) -> Result<Stage, InvalidShader> {
    let private: usize = body
        .iter()
        .map(|s| match s {
            Stmt::Array(_, len) | Stmt::IndexArray(_, len) => *len,
            _ => 0,
        })
        .sum();
    let mut workgroup_size = WORKGROUP_SIZE;
    while workgroup_size > 1 && workgroup_size as usize * private > WORKGROUP_FLOATS {
        workgroup_size /= 2;
    }
    let looped = |n: usize| n > gen.unrolled_lu_max;
    let module = Module {
        title: "Generated by matgrad from an evaluation plan: one invocation per batch item.",
        uniform: Uniform::Params,
        workgroup: Vec::new(),
        functions: building_blocks(body.iter().flat_map(Stmt::callees), looped),
        workgroup_size: (workgroup_size, 1),
        inputs: vec![BuiltinInput::GlobalInvocationId],
        body,
        unroll_budget: gen.unrolled_statements,
    };
    let source = module.to_string();
    validate(&source)?;
    let lu_iterations = |callee: Callee| match callee {
        // The looped LU block (above the budget's unrolled size): loops three deep over n.
        Callee::Lu(n) | Callee::Det(n) | Callee::LogDet(n) | Callee::Inv(n) if looped(n) => {
            let n = n as u64;
            Some(n * n * n + 4 * n * n)
        }
        _ => None,
    };
    let loop_iterations = (module.body.iter())
        .map(|s| s.iterations(&lu_iterations))
        .sum();
    Ok(Stage {
        source,
        kind: StageKind::PerItem { workgroup_size },
        loop_iterations,
    })
}

/// The generated functions that `callees` name: `mg_pow`, then the LU building block of each
/// size once, smallest first (`looped(n)`: the looped form on `scratch`).
fn building_blocks(
    callees: impl IntoIterator<Item = Callee>,
    looped: impl Fn(usize) -> bool,
) -> Vec<Function> {
    let mut pow = false;
    let mut sizes = Vec::new();
    for callee in callees {
        match callee {
            Callee::Pow => pow = true,
            Callee::Lu(n) | Callee::Det(n) | Callee::LogDet(n) | Callee::Inv(n) => sizes.push(n),
            Callee::Builtin(_) | Callee::StageA | Callee::StageB | Callee::Store => {}
        }
    }
    sizes.sort_unstable();
    sizes.dedup();
    let blocks = sizes
        .into_iter()
        .flat_map(|n| lu::building_block(n, looped(n)));
    pow.then(pow::function).into_iter().chain(blocks).collect()
}

/// Element `idx` of the lanes at `base` of a buffer, for the current item.
fn lanes(buffer: Binding, base: usize, idx: Expr) -> Expr {
    Expr::index(
        Expr::Buffer(buffer),
        Expr::plus(
            Expr::times(
                Expr::id(Ident::chunk()),
                Expr::plus(Expr::U32(base as u32), idx),
            ),
            Expr::id(Ident::item()),
        ),
    )
}

struct Generator<'p> {
    steps: &'p [Step],
    shared_offsets: &'p [Option<usize>],
    input_base: &'p [usize],
    storage: &'p [Storage],
    /// For a matrix power, the `scratch` base of its working copy (`None`: in registers).
    power_copy: &'p [Option<usize>],
    /// For a determinant or inverse by the looped LU block, the `scratch` base of its factors.
    lu_region: &'p [Option<usize>],
    /// [`Budget::unrolled_statements`]: each stage may unroll that many statements.
    unrolled_statements: usize,
    /// [`Budget::unrolled_lu_max`].
    unrolled_lu_max: usize,
    loops: usize,
}

impl Generator<'_> {
    fn loop_var(&mut self) -> Ident {
        self.loops += 1;
        Ident::loop_var(self.loops)
    }

    /// `for k in 0..count { dst(k) = src(k) }` with a fresh loop variable `k`: `assign` gives
    /// the entry written and its value for an index.
    fn entrywise(
        &mut self,
        count: usize,
        assign: impl FnOnce(&Self, Expr) -> (Expr, Expr),
    ) -> Stmt {
        let k = self.loop_var();
        let (dst, src) = assign(self, Expr::id(k.clone()));
        Stmt::For(k, count, vec![Stmt::Assign(dst, src)])
    }

    /// Entry `idx` of step `s` for the current item.
    fn value(&self, s: usize, idx: Expr) -> Expr {
        let step = &self.steps[s];
        match (step.batched, step.input) {
            (false, _) => {
                let off = self.shared_offsets[s].unwrap_or(0);
                Expr::index(
                    Expr::Buffer(Binding::Hoisted),
                    Expr::plus(Expr::U32(off as u32), idx),
                )
            }
            (true, Some(k)) => lanes(Binding::Batched, self.input_base[k], idx),
            (true, None) => self.target(s, idx),
        }
    }

    /// Entry `idx` of an element-wise step, from its arguments' entries (None for the other
    /// operations).
    fn elementwise_expr(&self, s: usize, k: Expr) -> Option<Expr> {
        let step = &self.steps[s];
        let form = schedule::elementwise(step.node)?;
        // Argument `j` at entry `k`, or at entry 0 when it is one number for every entry.
        let arg = |j: usize| {
            let a = step.args[j];
            let at = if form.is_number(j, self.steps[a].len()) {
                Expr::U32(0)
            } else {
                k.clone()
            };
            self.value(a, at)
        };
        Some(match form.op {
            ElementOp::Add => Expr::bin(BinOp::Add, arg(0), arg(1)),
            ElementOp::Mul => Expr::bin(BinOp::Mul, arg(0), arg(1)),
            ElementOp::Div => Expr::bin(BinOp::Div, arg(0), arg(1)),
            ElementOp::Neg => Expr::negative(arg(0)),
            ElementOp::Pow => Expr::Call(Callee::Pow, vec![arg(0), arg(1)]),
            ElementOp::Map(f) => map_call(f, arg(0)),
        })
    }

    /// Where entry `idx` of computed batched step `s` is stored (read or written).
    fn target(&self, s: usize, idx: Expr) -> Expr {
        match self.storage[s] {
            Storage::Inline => self
                .elementwise_expr(s, idx)
                .expect("only element-wise steps are inlined"),
            Storage::Private => Expr::index(Expr::id(Ident::step(s)), idx),
            Storage::Scratch(base) => lanes(Binding::Scratch, base, idx),
            Storage::Out(base) => lanes(Binding::Out, base, idx),
            Storage::Accumulator => Expr::word("acc"),
        }
    }

    /// The statements that compute batched step `i` into `v{i}`.
    fn step(&mut self, i: usize, step: &Step, body: &mut Vec<Stmt>) {
        if self.storage[i] == Storage::Inline {
            return;
        }
        let dst = Ident::step(i);
        let len = step.len();
        if self.storage[i] == Storage::Private {
            body.push(Stmt::Array(dst.clone(), len.max(1)));
        }
        let a = step.args.first().copied().unwrap_or(0);
        let b = step.args.get(1).copied().unwrap_or(0);
        if schedule::elementwise(step.node).is_some() {
            body.push(self.entrywise(len, |g, k| {
                let value = g
                    .elementwise_expr(i, k.clone())
                    .expect("an element-wise step has an element-wise expression");
                (g.target(i, k), value)
            }));
            return;
        }
        match step.node {
            Node::Transpose(_) => {
                let (r, c) = (self.steps[a].rows, self.steps[a].cols);
                let (p, q) = (self.loop_var(), self.loop_var());
                let src = Expr::plus(
                    Expr::times(Expr::id(p.clone()), Expr::U32(c as u32)),
                    Expr::id(q.clone()),
                );
                let target = Expr::plus(
                    Expr::times(Expr::id(q.clone()), Expr::U32(r as u32)),
                    Expr::id(p.clone()),
                );
                let inner = Stmt::For(
                    q,
                    c,
                    vec![Stmt::Assign(self.target(i, target), self.value(a, src))],
                );
                body.push(Stmt::For(p, r, vec![inner]));
            }
            Node::MatMul(..) => {
                let (m, k, n) = (self.steps[a].rows, self.steps[a].cols, self.steps[b].cols);
                let lhs = |g: &Self, r: Expr, p: Expr| {
                    g.value(a, Expr::plus(Expr::times(r, Expr::U32(k as u32)), p))
                };
                let rhs = |g: &Self, p: Expr, c: Expr| {
                    g.value(b, Expr::plus(Expr::times(p, Expr::U32(n as u32)), c))
                };
                self.product(body, i, m, k, n, &lhs, &rhs);
            }
            Node::MatPow(_, power) => self.matrix_power(i, step, power, body),
            Node::Sum(_) | Node::Norm1(_) | Node::Norm2(_) | Node::Trace(_) => {
                self.reduction(i, step, body)
            }
            Node::Det(_) | Node::LogDet(_) | Node::Inv(_) => self.lu(i, step, body),
            Node::Diag(_) => self.diagonal(i, step, body),
            Node::DiagPart(_) => {
                let n = step.rows;
                let p = self.loop_var();
                let src = Expr::times(Expr::id(p.clone()), Expr::U32(n as u32 + 1));
                body.push(Stmt::For(
                    p.clone(),
                    n,
                    vec![Stmt::Assign(
                        self.target(i, Expr::id(p)),
                        self.value(a, src),
                    )],
                ));
            }
            // Inputs and constants are never batched steps computed in the shader; the
            // element-wise steps are written above.
            _ => {}
        }
    }

    /// `X^k`: the item's `X` copied, then multiplied by `X` k−1 times through a working copy
    /// (in function memory, or in `scratch` past the budget: [`Generator::power_copy`]).
    fn matrix_power(&mut self, i: usize, step: &Step, power: u32, body: &mut Vec<Stmt>) {
        let a = step.args.first().copied().unwrap_or(0);
        let len = step.len();
        let n = step.rows;
        let tmp = Ident::scratch(i, "pw");
        let copy = self.power_copy[i];
        let entry = move |k: Expr| match copy {
            Some(base) => lanes(Binding::Scratch, base, k),
            None => at(&tmp, k),
        };
        if copy.is_none() {
            body.push(Stmt::Array(Ident::scratch(i, "pw"), len));
        }
        body.push(self.entrywise(len, |g, k| (g.target(i, k.clone()), g.value(a, k))));
        for _ in 1..power {
            body.push(self.entrywise(len, |g, k| (entry(k.clone()), g.target(i, k))));
            let entry = entry.clone();
            let lhs = move |_: &Self, r: Expr, p: Expr| {
                entry(Expr::plus(Expr::times(r, Expr::U32(n as u32)), p))
            };
            let rhs = |g: &Self, p: Expr, c: Expr| {
                g.value(a, Expr::plus(Expr::times(p, Expr::U32(n as u32)), c))
            };
            self.product(body, i, n, n, n, &lhs, &rhs);
        }
    }

    /// `sum`, `norm1`, `norm2` and `tr`: one accumulator over the argument's entries.
    fn reduction(&mut self, i: usize, step: &Step, body: &mut Vec<Stmt>) {
        let a = step.args.first().copied().unwrap_or(0);
        let acc = Ident::scratch(i, "acc");
        body.push(Stmt::Var(acc.clone(), Ty::F32, Expr::F32(0.0)));
        let k = self.loop_var();
        let (count, term) = match step.node {
            Node::Trace(_) => {
                let n = self.steps[a].rows;
                (
                    n,
                    self.value(a, Expr::times(Expr::id(k.clone()), Expr::U32(n as u32 + 1))),
                )
            }
            Node::Norm1(_) => (
                self.steps[a].len(),
                Expr::call(Builtin::Abs, vec![self.value(a, Expr::id(k.clone()))]),
            ),
            Node::Norm2(_) => {
                let v = self.value(a, Expr::id(k.clone()));
                (self.steps[a].len(), Expr::bin(BinOp::Mul, v.clone(), v))
            }
            _ => (self.steps[a].len(), self.value(a, Expr::id(k.clone()))),
        };
        body.push(Stmt::For(
            k,
            count,
            vec![Stmt::Assign(
                Expr::id(acc.clone()),
                Expr::bin(BinOp::Add, Expr::id(acc.clone()), term),
            )],
        ));
        let result = if matches!(step.node, Node::Norm2(_)) {
            Expr::call(Builtin::Sqrt, vec![Expr::id(acc)])
        } else {
            Expr::id(acc)
        };
        body.push(Stmt::Assign(self.target(i, Expr::U32(0)), result));
    }

    /// `det`, `logdet` and `inv` by the LU building block: the argument copied in, factored,
    /// then reduced or inverted (looped on `scratch` or unrolled in function memory).
    fn lu(&mut self, i: usize, step: &Step, body: &mut Vec<Stmt>) {
        let a = step.args.first().copied().unwrap_or(0);
        let dst = Ident::step(i);
        let n = self.steps[a].rows;
        let (perm, sign) = (Ident::scratch(i, "perm"), Ident::scratch(i, "sign"));
        // The factors: the item's lanes of `scratch` at `base` for the looped block
        // (passed as `base, chunk, item`), else an array in function memory (a pointer).
        let region = self.lu_region[i];
        let lu = Ident::scratch(i, "lu");
        let matrix = match region {
            Some(base) => vec![
                Expr::U32(base as u32),
                Expr::id(Ident::chunk()),
                Expr::id(Ident::item()),
            ],
            None => vec![Expr::AddrOf(lu.clone())],
        };
        let entry = |k: Expr| match region {
            Some(base) => lanes(Binding::Scratch, base, k),
            None => at(&lu, k),
        };
        if region.is_none() {
            body.push(Stmt::Array(lu.clone(), n * n));
        }
        body.push(Stmt::IndexArray(perm.clone(), n));
        body.push(self.entrywise(n * n, |g, k| (entry(k.clone()), g.value(a, k))));
        let with = |mut args: Vec<Expr>, more: Vec<Expr>| {
            args.extend(more);
            args
        };
        body.push(Stmt::Let(
            sign.clone(),
            Expr::Call(
                Callee::Lu(n),
                with(matrix.clone(), vec![Expr::AddrOf(perm.clone())]),
            ),
        ));
        let reduce =
            |callee: Callee| Expr::Call(callee, with(matrix.clone(), vec![Expr::id(sign.clone())]));
        match step.node {
            Node::Det(_) => body.push(Stmt::Assign(
                self.target(i, Expr::U32(0)),
                reduce(Callee::Det(n)),
            )),
            Node::LogDet(_) => body.push(Stmt::Assign(
                self.target(i, Expr::U32(0)),
                reduce(Callee::LogDet(n)),
            )),
            _ => {
                // The building block writes its inverse into the step's own array
                // (function memory), or into a temporary (an array, or lanes of
                // `scratch` after the factors) copied to the step's buffer.
                let own = region.is_none() && self.storage[i] == Storage::Private;
                let tmp = Ident::scratch(i, "inv");
                let (out, read): (Expr, Box<dyn Fn(Expr) -> Expr>) = match region {
                    Some(base) => (
                        Expr::U32((base + n * n) as u32),
                        Box::new(move |k| lanes(Binding::Scratch, base + n * n, k)),
                    ),
                    None if own => (Expr::AddrOf(dst.clone()), Box::new(|k| k)),
                    None => {
                        body.push(Stmt::Array(tmp.clone(), n * n));
                        let t = tmp.clone();
                        (Expr::AddrOf(tmp), Box::new(move |k| at(&t, k)))
                    }
                };
                let args = vec![Expr::AddrOf(perm), Expr::id(sign), out];
                body.push(Stmt::Call(Expr::Call(Callee::Inv(n), with(matrix, args))));
                if !own {
                    body.push(self.entrywise(n * n, |g, k| (g.target(i, k.clone()), read(k))));
                }
            }
        }
    }

    /// `diag` of a vector: the square matrix with it on the diagonal.
    fn diagonal(&mut self, i: usize, step: &Step, body: &mut Vec<Stmt>) {
        let a = step.args.first().copied().unwrap_or(0);
        let len = step.len();
        let n = step.rows;
        body.push(self.entrywise(len, |g, k| (g.target(i, k), Expr::F32(0.0))));
        let p = self.loop_var();
        let target = Expr::times(Expr::id(p.clone()), Expr::U32(n as u32 + 1));
        body.push(Stmt::For(
            p.clone(),
            n,
            vec![Stmt::Assign(
                self.target(i, target),
                self.value(a, Expr::id(p)),
            )],
        ));
    }

    /// Step `dst` = `lhs * rhs` (m×k times k×n) as three loops.
    #[allow(clippy::too_many_arguments)]
    fn product(
        &mut self,
        body: &mut Vec<Stmt>,
        dst: usize,
        m: usize,
        k: usize,
        n: usize,
        lhs: &dyn Fn(&Self, Expr, Expr) -> Expr,
        rhs: &dyn Fn(&Self, Expr, Expr) -> Expr,
    ) {
        let (r, c, p) = (self.loop_var(), self.loop_var(), self.loop_var());
        let acc = Ident::numbered("dot", self.loops);
        let term = Expr::bin(
            BinOp::Mul,
            lhs(self, Expr::id(r.clone()), Expr::id(p.clone())),
            rhs(self, Expr::id(p.clone()), Expr::id(c.clone())),
        );
        let inner = vec![
            Stmt::Var(acc.clone(), Ty::F32, Expr::F32(0.0)),
            Stmt::For(
                p,
                k,
                vec![Stmt::Assign(
                    Expr::id(acc.clone()),
                    Expr::bin(BinOp::Add, Expr::id(acc.clone()), term),
                )],
            ),
            Stmt::Assign(
                self.target(
                    dst,
                    Expr::plus(
                        Expr::times(Expr::id(r.clone()), Expr::U32(n as u32)),
                        Expr::id(c.clone()),
                    ),
                ),
                Expr::id(acc),
            ),
        ];
        body.push(Stmt::For(r, m, vec![Stmt::For(c, n, inner)]));
    }
}

/// An element-wise function as WGSL.
fn map_call(f: Func, x: Expr) -> Expr {
    let builtin = match f {
        Func::Sin => Builtin::Sin,
        Func::Cos => Builtin::Cos,
        Func::Tan => Builtin::Tan,
        Func::Arcsin => Builtin::Asin,
        Func::Arccos => Builtin::Acos,
        Func::Arctan => Builtin::Atan,
        Func::Exp => Builtin::Exp,
        Func::Log => Builtin::Log,
        Func::Tanh => Builtin::Tanh,
        Func::Abs => Builtin::Abs,
        Func::Sign => Builtin::Sign,
        Func::Sqrt => Builtin::Sqrt,
        Func::Relu => return Expr::call(Builtin::Max, vec![x, Expr::F32(0.0)]),
    };
    Expr::call(builtin, vec![x])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{differentiate, Layout, Request};
    use crate::types::check_program;

    fn kernel(source: &str, wrt: &str) -> Kernel {
        kernel_within(source, wrt, Budget::HARDWARE)
    }

    fn kernel_within(source: &str, wrt: &str, budget: Budget) -> Kernel {
        let p = check_program(source).unwrap();
        let d = differentiate(p, wrt, &Request::Derivative, Layout::Gradient).unwrap();
        let g = &d.program.graph;
        let batched: Vec<bool> = g.vars.iter().map(|v| v.name == wrt).collect();
        let plan = Plan::new(g, &[d.node], &crate::verify::dimension_sizes(g), &batched).unwrap();
        generate_within(&plan, budget).unwrap_or_else(|e| panic!("{e}"))
    }

    /// LU blocks of two sizes in one stage (a determinant and an inverse of each size): each
    /// size's four functions are written once, in both forms.
    #[test]
    fn building_blocks_of_two_sizes_are_each_written_once() {
        let source = "A: matrix(3,3); B: matrix(4,4); det(A)*logdet(B) + sum(inv(B)*vector(1))";
        let p = check_program(source).unwrap();
        let d = differentiate(p, "A", &Request::Derivative, Layout::Gradient).unwrap();
        let g = &d.program.graph;
        let batched = vec![true; g.vars.len()];
        let plan = Plan::new(g, &[d.node], &crate::verify::dimension_sizes(g), &batched).unwrap();
        for budget in [Budget::HARDWARE, Budget::SOFTWARE] {
            let k = generate_within(&plan, budget).unwrap_or_else(|e| panic!("{e}"));
            let text = k.source();
            for n in [3, 4] {
                for f in ["mg_lu", "mg_det", "mg_logdet", "mg_inv"] {
                    let defined = text.matches(&format!("fn {f}_{n}(")).count();
                    assert!(defined <= 1, "{f}_{n} defined {defined} times ({budget:?})");
                }
                assert_eq!(
                    text.matches(&format!("fn mg_lu_{n}(")).count(),
                    1,
                    "{budget:?}"
                );
            }
        }
    }

    /// The largest private array and the number of lines of a kernel's per-item stages.
    fn private_and_lines(k: &Kernel) -> (usize, usize) {
        let source = k.source();
        let largest = source
            .split("array<f32, ")
            .skip(1)
            .filter_map(|rest| rest.split('u').next()?.parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        (largest, source.lines().count())
    }

    /// What made llvmpipe's compile time explode (29 s for the 16×16 `tr(X*X*X)`, 34 s for
    /// `det(X)`, a crash at 32×32): large private arrays, unrolled code, and a matrix power's
    /// or LU's copy outside every budget. Within the software budget the largest private
    /// array is 16 floats (or the inverse's one column) and a kernel at most 800 lines, at
    /// every size.
    #[test]
    fn the_software_budget_bounds_private_arrays_and_unrolled_code() {
        for n in [4, 8, 16, 24, 32] {
            for f in ["tr(X*X*X)", "det(X)", "tr(inv(X))", "logdet(X'*X+eye)"] {
                let source = format!("X: matrix({n},{n}); {f}");
                let k = kernel_within(&source, "X", Budget::SOFTWARE);
                let (private, lines) = private_and_lines(&k);
                // 16 floats, or the one column of n the looped inverse solves for.
                let limit = 16.max(n);
                assert!(
                    private <= limit,
                    "{source}: a private array of {private} floats"
                );
                assert!(lines <= 800, "{source}: {lines} lines");
                // The hardware budget keeps every private array within PRIVATE_MAX too.
                let (private, _) = private_and_lines(&kernel(&source, "X"));
                assert!(private <= PRIVATE_MAX, "{source}: {private} private floats");
            }
        }
    }

    #[test]
    fn the_lu_building_block_validates_for_several_sizes() {
        for n in [1, 2, 3, 8] {
            let k = kernel(
                &format!("X: matrix({n},{n}); logdet(X) + det(X) + tr(inv(X))"),
                "X",
            );
            assert!(
                k.source().contains(&format!("fn mg_lu_{n}(")),
                "{}",
                k.source()
            );
        }
    }

    /// W2's outer product (768 statements unrolled, over the per-loop limit) reads its
    /// 16-float vector by the loop's variable: rolled, that vector would live in local
    /// memory, so the loop unrolls within the kernel's budget.
    #[test]
    fn a_loop_that_indexes_a_private_array_by_its_variable_unrolls() {
        let k = kernel(
            "C: matrix(16,16); X: matrix(16,16); a: vector(16); a'*X'*C*X*a",
            "X",
        );
        assert!(!k.source().contains("for ("), "{}", k.source());
        // A loop over a buffer only keeps the per-loop limit: 1024 entries of a sum stay a loop.
        let k = kernel("X: matrix(32,32); sum(exp(X))", "X");
        assert!(k.source().contains("for ("), "{}", k.source());
    }

    #[test]
    fn user_names_never_reach_the_shader() {
        let k = kernel(
            "secret_name: vector(3); sum(exp(secret_name))",
            "secret_name",
        );
        assert!(!k.source().contains("secret_name"));
    }

    /// exp(x) + x/norm2(x): element-wise steps, a reduction, and the output written back.
    #[test]
    fn large_intermediates_live_in_buffers_not_function_memory() {
        // W5's 32×32 per-item products: too large for function memory on real drivers.
        let k = kernel(
            "A: matrix(32,32); B: matrix(32,32); X: matrix(32,32); tr(A*X*B*X')",
            "X",
        );
        assert!(
            k.scratch_len > 0 && k.source().contains("scratch["),
            "{}",
            k.source()
        );
        assert!(!k.source().contains("array<f32, 1024u>"), "{}", k.source());
        // The output is written where it is computed, not copied.
        assert_eq!(k.source().matches("out[").count(), 1, "{}", k.source());
    }

    #[test]
    fn snapshot_of_an_elementwise_kernel() {
        let k = kernel("x: vector(2); sum(exp(x)) + norm2(x)", "x");
        let source = k.source();
        let main = &source[source.find("@compute").unwrap()..];
        let expected = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let chunk = params.chunk;
    let item = (gid.x + (gid.y * params.row));
    if (item >= chunk) {
        return;
    }
    var v2: array<f32, 1u>;
    var acc2: f32 = f32(0.0);
    {
        let idx1 = 0u;
        acc2 = (acc2 + (batched[((chunk * idx1) + item)] * batched[((chunk * idx1) + item)]));
    }
    {
        let idx1 = 1u;
        acc2 = (acc2 + (batched[((chunk * idx1) + item)] * batched[((chunk * idx1) + item)]));
    }
    v2[0u] = sqrt(acc2);
    {
        let idx2 = 0u;
        out[((chunk * idx2) + item)] = (exp(batched[((chunk * idx2) + item)]) + (batched[((chunk * idx2) + item)] / v2[0u]));
    }
    {
        let idx2 = 1u;
        out[((chunk * idx2) + item)] = (exp(batched[((chunk * idx2) + item)]) + (batched[((chunk * idx2) + item)] / v2[0u]));
    }
}
";
        assert_eq!(main, expected);
    }

    /// A snapshot of a small kernel, to keep the generated code readable and stable.
    #[test]
    fn snapshot_of_a_small_kernel() {
        let k = kernel("A: matrix(2,2); x: vector(2); x'*A*x", "x");
        let source = k.source();
        let main = &source[source.find("@compute").unwrap()..];
        // (A+A')*x: the shared sum is hoisted (offset 8, after A and A'); x is batched.
        let expected = "@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let chunk = params.chunk;
    let item = (gid.x + (gid.y * params.row));
    if (item >= chunk) {
        return;
    }
    {
        let idx1 = 0u;
        {
            let idx2 = 0u;
            var dot3: f32 = f32(0.0);
            {
                let idx3 = 0u;
                dot3 = (dot3 + (hoisted[(8u + ((idx1 * 2u) + idx3))] * batched[((chunk * (idx3 + idx2)) + item)]));
            }
            {
                let idx3 = 1u;
                dot3 = (dot3 + (hoisted[(8u + ((idx1 * 2u) + idx3))] * batched[((chunk * (idx3 + idx2)) + item)]));
            }
            out[((chunk * (idx1 + idx2)) + item)] = dot3;
        }
    }
    {
        let idx1 = 1u;
        {
            let idx2 = 0u;
            var dot3: f32 = f32(0.0);
            {
                let idx3 = 0u;
                dot3 = (dot3 + (hoisted[(8u + ((idx1 * 2u) + idx3))] * batched[((chunk * (idx3 + idx2)) + item)]));
            }
            {
                let idx3 = 1u;
                dot3 = (dot3 + (hoisted[(8u + ((idx1 * 2u) + idx3))] * batched[((chunk * (idx3 + idx2)) + item)]));
            }
            out[((chunk * (idx1 + idx2)) + item)] = dot3;
        }
    }
}
";
        assert_eq!(main, expected);
    }
}
