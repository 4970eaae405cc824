//! Batch optimization on a GPU: the iterations of [`super::driver`], every item's state
//! resident on the device from the first round to the last.
//!
//! In: a prepared run, the options and a [`GpuContext`]. Out: a [`Solution`] whose
//! [`Transfers`] say what crossed between host and device. The inputs, the start and the
//! bounds are uploaded once. Each round is one submission: the plan's kernels evaluate the
//! objective, the gradient and the curvature at every stored item's trial point (the trial
//! points are the variable's lanes among the plan's inputs), then `update`
//! (`shaders/minimize.wgsl`) runs each item's step of the CPU driver's state machine (line
//! search verdict, convergence test, next direction by Cholesky, L-BFGS or the gradient, next
//! trial written back into the inputs' lanes) and `select_active` counts and lists the active
//! items. The host reads back four numbers per block. When an eighth of a block's stored items
//! has finished, the next round first moves its active items to the front of every per-item
//! buffer (`gather`), so a round's cost follows the active items. A batch too large for one
//! binding is split into blocks, each with its own buffers, all submitted in the same rounds.
//!
//! Invariants: after the first upload, the host writes only a block's parameter blocks when
//! its item count changes (compaction); a round reads back 16 bytes per block (the first
//! round also the item states, when a start is not finite, for the domain check); the points
//! and reports are read back once, at the end. An item's arithmetic reads only its own state,
//! its own inputs and the shared ones, so the compaction's order changes no result. Nothing
//! a user types reaches WGSL: the shader is one fixed text, and its parameter block holds
//! sizes, offsets, flags and the tolerances.

use std::sync::Arc;
use std::time::Instant;

use wgpu::util::DeviceExt;

use super::driver::{factor_damped, outside_domain, plan_inputs, project, Layout, Precision};
use super::{ItemReport, Method, MinimizeError, Prepared, Progress, Solution, Status, Transfers};
use crate::backend::layout::items_to_lanes;
use crate::batch::Batch;
use crate::gpu::{GpuContext, GpuError, GpuSession, ResidentPlan, SOFTWARE_LOOP_LIMIT};

/// The kernels (one text for every problem; see the shader's opening comment).
const SHADER: &str = include_str!("../../shaders/minimize.wgsl");
/// u32 lanes per item in the items buffer (see the shader's field list).
const ITEM_FIELDS: usize = 17;
/// The shader's workgroup size.
const WORKGROUP: u64 = 64;
/// The damping tries of a Newton step (as the driver's).
const DAMPING_TRIES: u64 = 30;

/// Offsets of an item's vectors in its state lanes: the CPU driver's row (the point,
/// gradient, direction, L-BFGS pairs and `1/(s'y)`), then what the CPU keeps in a thread's
/// scratch: the active set, the direction being solved, the two-loop's coefficients, the cone
/// test's copy of the trial (`spd` variables) and the Cholesky factor (Newton and
/// Gauss–Newton).
struct StateLayout {
    row: Layout,
    act: usize,
    dir: usize,
    alpha: usize,
    cone: usize,
    fac: usize,
    stride: usize,
}

impl StateLayout {
    fn new(n: usize, memory: usize, spd: bool, factored: bool) -> StateLayout {
        let row = Layout::new(n, memory);
        let act = row.stride;
        let dir = act + n;
        let alpha = dir + n;
        let cone = alpha + memory;
        let fac = cone + if spd { n } else { 0 };
        let stride = fac + if factored { n * n } else { 0 };
        StateLayout {
            row,
            act,
            dir,
            alpha,
            cone,
            fac,
            stride,
        }
    }

    /// The variable's entries (the gradient follows the point).
    fn entries(&self) -> usize {
        self.row.g
    }
}

/// The floats of one item's state on the device (besides its inputs and the plan's outputs),
/// for `explain --minimize`.
pub(super) fn state_floats(n: usize, memory: usize, spd: bool, factored: bool) -> usize {
    StateLayout::new(n, memory, spd, factored).stride + ITEM_FIELDS + n + 4
}

/// Where the update kernel finds each result and bound: in the plan's outputs (per item) or
/// in the constants buffer (shared).
struct Sources {
    var_base: usize,
    f: (usize, bool),
    g: (usize, bool),
    /// 0 none, 1 per item, 2 shared.
    h_kind: u32,
    h_base: usize,
    shared_factor: Option<usize>,
    /// 0 none, 1 shared (base in the constants), 2 per item.
    lower: (u32, usize),
    upper: (u32, usize),
}

/// The update's parameter block (`Params` in the shader): the item counts and tolerances,
/// then the problem's sizes, sources and offsets, all numbers the host computed.
#[allow(clippy::too_many_arguments)]
fn params(
    (count, row, block_items): (usize, u32, usize),
    options: &super::Options,
    (n, memory, method): (usize, usize, Method),
    sources: &Sources,
    layout: &StateLayout,
    (symmetric_side, spd_side): (usize, usize),
) -> [u32; PARAM_WORDS] {
    let method_code = match method {
        Method::Newton => 0,
        Method::GaussNewton => 1,
        Method::Lbfgs => 2,
        Method::GradientDescent | Method::Auto => 3,
    };
    let words = [
        count,
        row as usize,
        options.max_iter as usize,
        block_items,
        (options.gtol as f32).to_bits() as usize,
        (options.ftol as f32).to_bits() as usize,
        n,
        memory,
        method_code,
        sources.var_base,
        sources.f.0,
        sources.f.1 as usize,
        sources.g.0,
        sources.g.1 as usize,
        sources.h_kind as usize,
        sources.h_base,
        sources.shared_factor.is_some() as usize,
        sources.shared_factor.unwrap_or(0),
        sources.lower.0 as usize,
        sources.lower.1,
        sources.upper.0 as usize,
        sources.upper.1,
        symmetric_side,
        spd_side,
        layout.row.x,
        layout.row.g,
        layout.row.d,
        layout.row.s,
        layout.row.y,
        layout.row.rho,
        layout.act,
        layout.dir,
        layout.alpha,
        layout.cone,
        layout.fac,
        0,
    ];
    words.map(|w| w as u32)
}

/// Words in the update's parameter block.
const PARAM_WORDS: usize = 36;

/// The batch optimizer's kernels, for naga's validation in the tests.
pub fn shader_source() -> &'static str {
    SHADER
}

/// The loop iterations one invocation of `update` may run in all: what the software
/// adapter's loop limit is compared with.
fn loop_bound(n: usize, memory: usize, method: Method, spd_side: usize) -> u64 {
    let (n, m) = (n as u64, memory as u64);
    let factor = n * n * n / 6 + 3 * n * n;
    let curvature = match method {
        Method::Newton | Method::GaussNewton => (DAMPING_TRIES + 2) * factor,
        _ => 0,
    };
    let cone = (spd_side as u64).pow(3) / 6 + n;
    curvature + 6 * m * n + cone + 24 * n + 64
}

/// The device's side of one block of items.
struct Block {
    /// The block's first item in the batch, and its items.
    first: usize,
    items: usize,
    /// Items stored now (the lanes' stride) and active after the last round.
    count: usize,
    active: usize,
    compact: bool,
    plan: ResidentPlan,
    item_fields: wgpu::Buffer,
    results: wgpu::Buffer,
    counter: wgpu::Buffer,
    params: wgpu::Buffer,
    spare: wgpu::Buffer,
    /// The per-item buffers compaction gathers.
    gathered: Vec<Gathered>,
    update: wgpu::BindGroup,
    select: wgpu::BindGroup,
}

/// A per-item buffer that compaction gathers: its floats per item, the gather's parameter
/// block and bindings (the buffer as source, the block's spare buffer as destination).
struct Gathered {
    len: usize,
    buffer: wgpu::Buffer,
    params: wgpu::Buffer,
    group: wgpu::BindGroup,
}

/// The rows of a two-dimensional dispatch of `invocations`: (workgroups x, y, invocations per
/// row).
fn fold(invocations: usize, per_dim: u64) -> (u32, u32, u32) {
    let groups = (invocations as u64).div_ceil(WORKGROUP).max(1);
    let x = groups.min(per_dim);
    let y = groups.div_ceil(x);
    (x as u32, y as u32, (x * WORKGROUP) as u32)
}

/// The three pipelines of `shaders/minimize.wgsl`.
struct Kernels {
    update: Arc<wgpu::ComputePipeline>,
    select: Arc<wgpu::ComputePipeline>,
    gather: Arc<wgpu::ComputePipeline>,
}

/// The update's parameter block for a block's item count, two-dimensional row and items.
type Config<'a> = dyn Fn(usize, u32, usize) -> [u32; PARAM_WORDS] + 'a;

/// Solves every item of `prepared` on `ctx`'s GPU (see the module's doc).
pub(super) fn run(
    prepared: Prepared,
    options: &super::Options,
    ctx: &GpuContext,
    progress: &mut dyn FnMut(Progress),
) -> Result<Solution, MinimizeError> {
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
    let memory = method.history(options.memory);
    let factored = matches!(method, Method::Newton | Method::GaussNewton);
    let layout = StateLayout::new(n, memory, spd_side.is_some(), factored);
    if ctx.caps_loops() {
        let needs = loop_bound(n, memory, method, spd_side.unwrap_or(0));
        if needs > SOFTWARE_LOOP_LIMIT {
            return Err(MinimizeError::Gpu(GpuError::LoopLimit {
                adapter: ctx.adapter().name.clone(),
                needs,
            }));
        }
    }
    // The plan's shared inputs, in float32, for the session (its batched ones are uploaded
    // per block).
    let (inputs, var_input) = plan_inputs(&plan, &data, var, 0, |v| v as f32, 0.0);
    let input_data: Vec<&[f32]> = inputs.iter().map(|b| &b.data[..]).collect();
    let session = ctx.session(&plan, &input_data)?;
    let clock = Instant::now();
    let curvature = shared_curvature
        .as_ref()
        .map(|h| <f32 as Precision>::evaluate_shared(h, &data));
    let curvature_output = plan.outputs().len() > 2;
    let shared = SharedValues::new(
        &session,
        (curvature_output, curvature),
        (&lower, &upper),
        var_input,
        n,
    )?;
    let kernels = Kernels {
        update: ctx.entry_pipeline(SHADER, "update")?,
        select: ctx.entry_pipeline(SHADER, "select_active")?,
        gather: ctx.entry_pipeline(SHADER, "gather")?,
    };
    let sides = (symmetric_side.unwrap_or(0), spd_side.unwrap_or(0));
    let config = |count: usize, row: u32, block_items: usize| {
        params(
            (count, row, block_items),
            options,
            (n, memory, method),
            &shared.sources,
            &layout,
            sides,
        )
    };
    let start_of = feasible_starts(&start, start_batched, &shared, n);
    let (mut blocks, uploaded) = upload(
        &session, items, &inputs, var_input, &start_of, &shared, &layout, &kernels, &config,
    )?;
    let domain = |ids: Vec<usize>| outside_domain(ids, items, &data, &start, start_batched, n);
    let traffic = rounds(
        &session,
        &kernels,
        &mut blocks,
        &config,
        &domain,
        items,
        progress,
    )?;
    let (points, reports, downloaded) = read_solutions(ctx, &blocks, items, n)?;
    Ok(Solution {
        method,
        items,
        item_shape,
        points,
        reports,
        rounds: traffic.rounds,
        shared_hessian: shared_curvature.is_some(),
        solve_seconds: clock.elapsed().as_secs_f64(),
        notes,
        transfers: Some(Transfers {
            before_bytes: uploaded,
            rounds_bytes: traffic.bytes,
            round_max_bytes: traffic.most_bytes,
            after_bytes: downloaded,
        }),
    })
}

/// A bound as [`Prepared`] holds it: its values and whether they are one per item.
type Bound = Option<(Vec<f64>, bool)>;

/// Everything every item shares, in one constants buffer, and the per-item bounds.
struct SharedValues {
    /// Where the update kernel finds each value.
    sources: Sources,
    consts: Vec<f32>,
    /// Bounds per item (item-major), when a bound is an array with one per item.
    lower_items: Option<Vec<f32>>,
    upper_items: Option<Vec<f32>>,
    /// Shared bounds, for keeping the start feasible on the host.
    lower_shared: Option<Vec<f32>>,
    upper_shared: Option<Vec<f32>>,
}

impl SharedValues {
    /// The plan's outputs that read no batched input, the shared curvature (with its damped
    /// Cholesky factor when there is one) and the bounds, laid out for the update kernel.
    /// `curvature_output`: whether the plan's third output is the curvature; `curvature`:
    /// the shared curvature's value, evaluated once, when it reads only shared inputs.
    fn new(
        session: &GpuSession,
        (curvature_output, curvature): (bool, Option<Vec<f32>>),
        (lower, upper): (&Bound, &Bound),
        var_input: usize,
        n: usize,
    ) -> Result<SharedValues, MinimizeError> {
        let kernel = session.kernel();
        let mut consts: Vec<f32> = Vec::new();
        let mut push = |values: &[f32]| {
            consts.extend_from_slice(values);
            consts.len() - values.len()
        };
        // A plan output: its base in the output lanes, or in the constants when shared.
        let mut output = |position: usize| -> Result<(usize, bool), MinimizeError> {
            let mut base = 0;
            for &(p, len) in &kernel.batched_outputs {
                if p == position {
                    return Ok((base, false));
                }
                base += len;
            }
            match session.shared_output(position) {
                Some(v) => Ok((push(v), true)),
                None => Err(MinimizeError::Invalid(format!(
                    "the objective's plan has no output {position}"
                ))),
            }
        };
        let f = output(0)?;
        let g = output(1)?;
        let h = if curvature_output {
            Some(output(2)?)
        } else {
            None
        };
        let (h_kind, h_base, shared_factor) = match (h, curvature) {
            (Some((base, false)), _) => (1, base, None),
            (Some((base, true)), _) => (2, base, None),
            (None, Some(matrix)) => {
                let mut factor = matrix.clone();
                let ok = factor_damped(&mut factor, &matrix, n);
                let base = push(&matrix);
                (2, base, ok.then(|| push(&factor)))
            }
            (None, None) => (0, 0, None),
        };
        let to_f32 = |v: &[f64]| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
        let split = |b: &Bound| match b {
            None => (None, None),
            Some((values, false)) => (Some(to_f32(values)), None),
            Some((values, true)) => (None, Some(to_f32(values))),
        };
        let (lower_shared, lower_items) = split(lower);
        let (upper_shared, upper_items) = split(upper);
        let mut source = |shared: &Option<Vec<f32>>, items: &Option<Vec<f32>>| match (shared, items)
        {
            (Some(values), _) => (1, push(values)),
            (None, Some(_)) => (2, 0),
            (None, None) => (0, 0),
        };
        let lower_source = source(&lower_shared, &lower_items);
        let upper_source = source(&upper_shared, &upper_items);
        let mut var_base = None;
        let mut base = 0;
        for &(k, len) in &kernel.batched_inputs {
            if k == var_input {
                var_base = Some(base);
            }
            base += len;
        }
        let var_base = var_base.ok_or_else(|| {
            MinimizeError::Invalid("the objective does not read the variable".into())
        })?;
        Ok(SharedValues {
            sources: Sources {
                var_base,
                f,
                g,
                h_kind,
                h_base,
                shared_factor,
                lower: lower_source,
                upper: upper_source,
            },
            consts,
            lower_items,
            upper_items,
            lower_shared,
            upper_shared,
        })
    }
}

/// Each item's start in float32, kept inside the bounds (as the CPU driver keeps it).
fn feasible_starts<'a>(
    start: &'a [f64],
    start_batched: bool,
    shared: &'a SharedValues,
    n: usize,
) -> impl Fn(usize) -> Vec<f32> + 'a {
    move |item| {
        let from = if start_batched { item * n } else { 0 };
        let mut point: Vec<f32> = start[from..from + n].iter().map(|&v| v as f32).collect();
        let bound = |items: &'a Option<Vec<f32>>, shared: &'a Option<Vec<f32>>| {
            (items.as_ref().map(|b| &b[item * n..(item + 1) * n])).or(shared.as_deref())
        };
        project(
            &mut point,
            bound(&shared.lower_items, &shared.lower_shared),
            bound(&shared.upper_items, &shared.upper_shared),
        );
        point
    }
}

/// Uploads the constants and every block of items (as many items a block as one binding
/// holds); returns the blocks and the bytes uploaded.
#[allow(clippy::too_many_arguments)]
fn upload(
    session: &GpuSession,
    items: usize,
    inputs: &[Batch<f32>],
    var_input: usize,
    start_of: &dyn Fn(usize) -> Vec<f32>,
    shared: &SharedValues,
    layout: &StateLayout,
    kernels: &Kernels,
    config: &Config,
) -> Result<(Vec<Block>, u64), GpuError> {
    let ctx = session.context();
    let kernel = session.kernel();
    let n = layout.entries();
    let per_dim = ctx.workgroups_per_dimension as u64;
    let widest = (layout.stride)
        .max(ITEM_FIELDS)
        .max(n + 4)
        .max(kernel.batched_len());
    let capacity = session
        .resident_capacity(widest)
        .min((per_dim * per_dim * WORKGROUP / widest as u64).max(1) as usize);
    let consts = ctx.scoped("uploading the shared values", || {
        let values: &[f32] = if shared.consts.is_empty() {
            &[0.0]
        } else {
            &shared.consts
        };
        ctx.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("matgrad minimize constants"),
                contents: bytemuck::cast_slice(values),
                usage: wgpu::BufferUsages::STORAGE,
            })
    })?;
    let mut uploaded = 4 * shared.consts.len() as u64;
    let mut blocks = Vec::new();
    let mut first = 0;
    while first < items {
        let count = capacity.min(items - first);
        let data = BlockData {
            first,
            count,
            inputs,
            var_input,
            start_of,
            shared,
            n,
        };
        let (block, sent) = ctx.scoped("allocating a block of items", || {
            make_block(session, &data, layout, kernels, &consts, config)
        })??;
        uploaded += sent;
        blocks.push(block);
        first += count;
    }
    Ok((blocks, uploaded))
}

/// What a block uploads: its items' inputs and starts, and the bounds.
struct BlockData<'a> {
    first: usize,
    count: usize,
    inputs: &'a [Batch<f32>],
    var_input: usize,
    start_of: &'a dyn Fn(usize) -> Vec<f32>,
    shared: &'a SharedValues,
    n: usize,
}

impl BlockData<'_> {
    /// The block's batched inputs in lanes, input after input; the variable's are the start.
    fn input_lanes(&self, kernel: &crate::wgsl::Kernel) -> Vec<f32> {
        let (first, count) = (self.first, self.count);
        let mut lanes = vec![0f32; count * kernel.batched_len()];
        let mut base = 0;
        for &(k, len) in &kernel.batched_inputs {
            let item_major: Vec<f32> = if k == self.var_input {
                (first..first + count).flat_map(self.start_of).collect()
            } else {
                self.inputs[k].data[first * len..(first + count) * len].to_vec()
            };
            let to = &mut lanes[base * count..(base + len) * count];
            items_to_lanes(&item_major, count, len, to);
            base += len;
        }
        lanes
    }

    /// The item fields at the start: the slot, active, at its start, no bracket, scale 1, no
    /// value yet.
    fn fields(&self) -> Vec<u32> {
        let count = self.count;
        let mut fields = vec![0u32; ITEM_FIELDS * count];
        for slot in 0..count {
            fields[slot] = slot as u32;
            fields[count + slot] = 255;
            fields[8 * count + slot] = f32::NAN.to_bits();
            fields[14 * count + slot] = (-1.0f32).to_bits();
            fields[15 * count + slot] = 1.0f32.to_bits();
            fields[16 * count + slot] = f32::NAN.to_bits();
        }
        fields
    }

    /// The per-item bounds in lanes (lower in elements `0..n`, upper in `n..2n`), when a
    /// bound is one per item.
    fn bound_lanes(&self) -> Option<Vec<u32>> {
        let (shared, n) = (self.shared, self.n);
        if shared.lower_items.is_none() && shared.upper_items.is_none() {
            return None;
        }
        let mut item_major = vec![0f32; 2 * n * self.count];
        for slot in 0..self.count {
            let item = self.first + slot;
            let row = &mut item_major[2 * n * slot..2 * n * (slot + 1)];
            if let Some(l) = &shared.lower_items {
                row[..n].copy_from_slice(&l[item * n..(item + 1) * n]);
            }
            if let Some(u) = &shared.upper_items {
                row[n..].copy_from_slice(&u[item * n..(item + 1) * n]);
            }
        }
        let mut lanes = vec![0f32; 2 * n * self.count];
        items_to_lanes(&item_major, self.count, 2 * n, &mut lanes);
        Some(lanes.iter().map(|v| v.to_bits()).collect())
    }
}

/// Makes a block's buffers, uploads its inputs, item fields and bounds, and binds the
/// kernels; returns the block and the bytes uploaded.
fn make_block(
    session: &GpuSession,
    data: &BlockData,
    layout: &StateLayout,
    kernels: &Kernels,
    consts: &wgpu::Buffer,
    config: &Config,
) -> Result<(Block, u64), GpuError> {
    use wgpu::BufferUsages as U;
    let ctx = session.context();
    let device = &ctx.device;
    let kernel = session.kernel();
    let (count, n) = (data.count, data.n);
    let plan = session.resident(count)?;
    let lanes = data.input_lanes(kernel);
    if !lanes.is_empty() {
        ctx.queue
            .write_buffer(plan.input(), 0, bytemuck::cast_slice(&lanes));
    }
    let zeroed = |label: &str, floats: usize, usage: U| zeroed_buffer(device, label, floats, usage);
    let filled = |label: &str, contents: &[u32], usage: U| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(contents),
            usage,
        })
    };
    let gathered_usage = U::STORAGE | U::COPY_SRC | U::COPY_DST;
    let state = zeroed(
        "matgrad minimize state",
        count * layout.stride,
        gathered_usage,
    );
    let fields = data.fields();
    let item_fields = filled("matgrad minimize items", &fields, gathered_usage);
    let bound_lanes = data.bound_lanes();
    let bounds =
        (bound_lanes.as_ref()).map(|b| filled("matgrad minimize bounds", b, gathered_usage));
    let uploaded = 4 * (lanes.len() + fields.len() + bound_lanes.map_or(0, |b| b.len())) as u64;
    let no_bounds = zeroed("matgrad minimize no bounds", 1, U::STORAGE);
    let results = zeroed(
        "matgrad minimize results",
        count * (n + 4),
        U::STORAGE | U::COPY_SRC,
    );
    let counter = zeroed(
        "matgrad minimize counter",
        4,
        U::STORAGE | U::COPY_SRC | U::COPY_DST,
    );
    let keep = zeroed("matgrad minimize keep", count, U::STORAGE);
    let params = zeroed(
        "matgrad minimize params",
        PARAM_WORDS,
        U::UNIFORM | U::COPY_DST,
    );
    // The per-item buffers that compaction gathers, with their floats per item.
    let mut gathered: Vec<(usize, wgpu::Buffer)> = Vec::new();
    if kernel.batched_len() > 0 {
        gathered.push((kernel.batched_len(), plan.input().clone()));
    }
    gathered.push((layout.stride, state.clone()));
    gathered.push((ITEM_FIELDS, item_fields.clone()));
    if let Some(b) = &bounds {
        gathered.push((2 * n, b.clone()));
    }
    let widest = gathered.iter().map(|g| g.0).max().unwrap_or(1);
    let spare = zeroed(
        "matgrad minimize spare",
        count * widest,
        U::STORAGE | U::COPY_SRC,
    );
    let bind = |pipeline, entries: &[(u32, &wgpu::Buffer)]| bind_group(device, pipeline, entries);
    let update = bind(
        &kernels.update,
        &[
            (0, &params),
            (1, plan.input()),
            (2, plan.output()),
            (3, consts),
            (4, &state),
            (5, &item_fields),
            (6, bounds.as_ref().unwrap_or(&no_bounds)),
            (7, &results),
        ],
    );
    let select = bind(
        &kernels.select,
        &[(0, &params), (5, &item_fields), (8, &counter), (9, &keep)],
    );
    let gathered = gather_groups(device, &kernels.gather, gathered, &spare, &keep);
    let block = Block {
        first: data.first,
        items: count,
        count,
        active: count,
        compact: false,
        plan,
        item_fields,
        results,
        counter,
        params,
        spare,
        gathered,
        update,
        select,
    };
    let sent = write_params(ctx, &block, config);
    Ok((block, uploaded + sent))
}

/// A buffer of `floats` zeroed 32-bit words (at least one).
fn zeroed_buffer(
    device: &wgpu::Device,
    label: &str,
    floats: usize,
    usage: wgpu::BufferUsages,
) -> wgpu::Buffer {
    device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: (4 * floats).max(4) as u64,
        usage,
        mapped_at_creation: false,
    })
}

/// The bind group of `pipeline`'s group 0 with each binding's whole buffer.
fn bind_group(
    device: &wgpu::Device,
    pipeline: &wgpu::ComputePipeline,
    entries: &[(u32, &wgpu::Buffer)],
) -> wgpu::BindGroup {
    let entries: Vec<wgpu::BindGroupEntry> = (entries.iter())
        .map(|&(binding, buffer)| wgpu::BindGroupEntry {
            binding,
            resource: buffer.as_entire_binding(),
        })
        .collect();
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some("matgrad minimize"),
        layout: &pipeline.get_bind_group_layout(0),
        entries: &entries,
    })
}

/// For each per-item buffer that compaction gathers (with its floats per item), its own
/// parameter block and its bind group of the `gather` kernel over `spare` and `keep`.
fn gather_groups(
    device: &wgpu::Device,
    gather: &wgpu::ComputePipeline,
    buffers: Vec<(usize, wgpu::Buffer)>,
    spare: &wgpu::Buffer,
    keep: &wgpu::Buffer,
) -> Vec<Gathered> {
    use wgpu::BufferUsages as U;
    (buffers.into_iter())
        .map(|(len, buffer)| {
            let params = zeroed_buffer(
                device,
                "matgrad minimize gather params",
                4,
                U::UNIFORM | U::COPY_DST,
            );
            let group = bind_group(
                device,
                gather,
                &[(10, &params), (11, &buffer), (12, spare), (13, keep)],
            );
            Gathered {
                len,
                buffer,
                params,
                group,
            }
        })
        .collect()
}

/// Records one dispatch of `pipeline` with `group` over `x`×`y` workgroups, in its own pass.
fn dispatch(
    encoder: &mut wgpu::CommandEncoder,
    pipeline: &wgpu::ComputePipeline,
    group: &wgpu::BindGroup,
    (x, y): (u32, u32),
) {
    let mut pass = encoder.begin_compute_pass(&Default::default());
    pass.set_pipeline(pipeline);
    pass.set_bind_group(0, group, &[]);
    pass.dispatch_workgroups(x, y, 1);
}

/// The rounds' count and their traffic between host and device.
struct Traffic {
    rounds: u32,
    bytes: u64,
    most_bytes: u64,
}

/// Runs rounds until no block has an active item: each one submission (every block's
/// compaction if due, the plan's kernels, `update`, the count of active items) and one
/// read-back of the counters. After the first, a start outside the domain is refused
/// (`domain` gets the items that were not finite at their start).
fn rounds(
    session: &GpuSession,
    kernels: &Kernels,
    blocks: &mut [Block],
    config: &Config,
    domain: &dyn Fn(Vec<usize>) -> Result<(), String>,
    items: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<Traffic, MinimizeError> {
    let ctx = session.context();
    let per_dim = ctx.workgroups_per_dimension as u64;
    let counters_bytes = 16 * blocks.len() as u64;
    let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("matgrad minimize counters"),
        size: counters_bytes.max(16),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut traffic = Traffic {
        rounds: 0,
        bytes: 0,
        most_bytes: 0,
    };
    let mut iterations_max = 0u32;
    while blocks.iter().any(|b| b.active > 0) {
        traffic.rounds += 1;
        let mut bytes = 0u64;
        let mut encoder = ctx.device.create_command_encoder(&Default::default());
        for (k, block) in blocks.iter_mut().enumerate() {
            if block.active == 0 {
                continue;
            }
            if block.compact {
                bytes += compact(ctx, &mut encoder, block, &kernels.gather, per_dim, config);
            }
            session.encode_resident(&mut encoder, &mut block.plan, block.count);
            let (x, y, _) = fold(block.count, per_dim);
            dispatch(&mut encoder, &kernels.update, &block.update, (x, y));
            encoder.clear_buffer(&block.counter, 0, None);
            dispatch(&mut encoder, &kernels.select, &block.select, (x, y));
            encoder.copy_buffer_to_buffer(&block.counter, 0, &readback, 16 * k as u64, 16);
        }
        let submission = ctx.scoped("running a round", || {
            ctx.queue.submit(Some(encoder.finish()))
        })?;
        let counters: Vec<u32> = read(ctx, &readback, counters_bytes, submission)?;
        bytes += counters_bytes;
        let mut not_finite_starts = false;
        for (k, block) in blocks.iter_mut().enumerate() {
            if block.active == 0 {
                continue;
            }
            block.active = counters[4 * k] as usize;
            iterations_max = iterations_max.max(counters[4 * k + 1]);
            not_finite_starts |= counters[4 * k + 2] > 0;
            let finished = block.count - block.active;
            block.compact = block.active > 0 && finished > 0 && finished * 8 >= block.count;
        }
        if traffic.rounds == 1 && not_finite_starts {
            let (ids, read_bytes) = not_finite_at_start(ctx, blocks)?;
            bytes += read_bytes;
            domain(ids).map_err(MinimizeError::Invalid)?;
        }
        traffic.bytes += bytes;
        traffic.most_bytes = traffic.most_bytes.max(bytes);
        progress(Progress {
            round: traffic.rounds,
            active: blocks.iter().map(|b| b.active).sum(),
            items,
            iterations_max,
        });
    }
    Ok(traffic)
}

/// The points and reports of every item, read back once; and the bytes read.
fn read_solutions(
    ctx: &GpuContext,
    blocks: &[Block],
    items: usize,
    n: usize,
) -> Result<(Vec<f64>, Vec<ItemReport>, u64), GpuError> {
    let mut points = vec![0.0f64; items * n];
    let mut reports = vec![
        ItemReport {
            status: Status::NotFinite,
            iterations: 0,
            value: f64::NAN,
            gradient_norm: f64::NAN,
        };
        items
    ];
    let mut downloaded = 0u64;
    for block in blocks {
        let floats = block.items * (n + 4);
        let values: Vec<f32> = read_whole(ctx, &block.results, 4 * floats as u64)?;
        downloaded += 4 * floats as u64;
        for slot in 0..block.items {
            let id = block.first + slot;
            for e in 0..n {
                points[id * n + e] = values[slot * n + e] as f64;
            }
            let r = &values[block.items * n + 4 * slot..][..4];
            reports[id] = ItemReport {
                // The shader writes the report file's codes (`shaders/minimize.wgsl`).
                status: Status::from_code(r[0] as i32).unwrap_or(Status::NotFinite),
                iterations: r[1] as u32,
                value: r[2] as f64,
                gradient_norm: r[3] as f64,
            };
        }
    }
    Ok((points, reports, downloaded))
}

/// Writes the update's parameter block for the block's item count; returns the bytes.
fn write_params(ctx: &GpuContext, block: &Block, config: &Config) -> u64 {
    let (_, _, row) = fold(block.count, ctx.workgroups_per_dimension as u64);
    let words = config(block.count, row, block.items);
    ctx.queue
        .write_buffer(&block.params, 0, bytemuck::cast_slice(&words));
    4 * PARAM_WORDS as u64
}

/// Records the compaction of a block: every per-item buffer's active items (listed by the
/// last round's `select_active`) gathered into the spare buffer and copied back, then the
/// update's parameters for the new count. Returns the bytes written to the device.
fn compact(
    ctx: &GpuContext,
    encoder: &mut wgpu::CommandEncoder,
    block: &mut Block,
    gather: &wgpu::ComputePipeline,
    per_dim: u64,
    config: &Config,
) -> u64 {
    let (old, new) = (block.count, block.active);
    let mut bytes = 0;
    for g in &block.gathered {
        let (x, y, row) = fold(new * g.len, per_dim);
        let params: [u32; 4] = [old as u32, new as u32, g.len as u32, row];
        ctx.queue
            .write_buffer(&g.params, 0, bytemuck::cast_slice(&params));
        bytes += 16;
        dispatch(encoder, gather, &g.group, (x, y));
        let size = (4 * new * g.len) as u64;
        if size > 0 {
            encoder.copy_buffer_to_buffer(&block.spare, 0, &g.buffer, 0, size);
        }
    }
    block.count = new;
    block.compact = false;
    // The plan's own parameter blocks are rewritten by `encode_resident` (16 words a stage).
    bytes + write_params(ctx, block, config) + 64 * block.plan.stages() as u64
}

/// Waits for `submission` and reads the first `bytes` of `buffer` (mappable) as `T`s.
fn read<T: bytemuck::Pod>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    bytes: u64,
    submission: wgpu::SubmissionIndex,
) -> Result<Vec<T>, GpuError> {
    let (sender, mapped) = std::sync::mpsc::channel();
    buffer
        .slice(..bytes)
        .map_async(wgpu::MapMode::Read, move |result| {
            let _ = sender.send(result);
        });
    let failed = |why: String| GpuError::Device {
        during: "reading the optimization's state back".into(),
        why,
    };
    ctx.device
        .poll(wgpu::PollType::WaitForSubmissionIndex(submission))
        .map_err(|e| failed(e.to_string()))?;
    ctx.check_lost("reading the optimization's state back")?;
    match mapped.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(failed(e.to_string())),
        Err(_) => return Err(failed("the map callback never ran".into())),
    }
    let values = bytemuck::cast_slice(&buffer.slice(..bytes).get_mapped_range()).to_vec();
    buffer.unmap();
    Ok(values)
}

/// Copies the first `bytes` of a device buffer to the host.
fn read_whole<T: bytemuck::Pod>(
    ctx: &GpuContext,
    buffer: &wgpu::Buffer,
    bytes: u64,
) -> Result<Vec<T>, GpuError> {
    let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("matgrad minimize read-back"),
        size: bytes.max(4),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = ctx.device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(buffer, 0, &staging, 0, bytes.max(4));
    let submission = ctx.scoped("reading the solutions back", || {
        ctx.queue.submit(Some(encoder.finish()))
    })?;
    read(ctx, &staging, bytes.max(4), submission)
}

/// The items (of the batch) that stopped as not finite at their start, read from the item
/// states after the first round; and the bytes read.
fn not_finite_at_start(ctx: &GpuContext, blocks: &[Block]) -> Result<(Vec<usize>, u64), GpuError> {
    let mut ids = Vec::new();
    let mut bytes = 0;
    for block in blocks {
        let count = block.count;
        let size = (4 * ITEM_FIELDS * count) as u64;
        let fields: Vec<u32> = read_whole(ctx, &block.item_fields, size)?;
        bytes += size;
        for slot in 0..count {
            let (id, status, iterations) =
                (fields[slot], fields[count + slot], fields[3 * count + slot]);
            if status == 3 && iterations == 0 {
                ids.push(block.first + id as usize);
            }
        }
    }
    Ok((ids, bytes))
}
