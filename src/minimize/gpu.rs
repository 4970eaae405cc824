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
//! a user types reaches WGSL: the prepended constants are sizes, offsets and flags.

use std::time::Instant;

use wgpu::util::DeviceExt;

use super::driver::{factor_damped, outside_domain, plan_inputs, Precision};
use super::{ItemReport, Method, MinimizeError, Prepared, Progress, Solution, Status, Transfers};
use crate::backend::layout::items_to_lanes;
use crate::gpu::{GpuContext, GpuError, GpuSession, ResidentPlan, SOFTWARE_LOOP_LIMIT};

/// The kernels (one text for every problem; see the shader's opening comment).
const SHADER: &str = include_str!("../../shaders/minimize.wgsl");
/// u32 lanes per item in the items buffer (see the shader's field list).
const ITEM_FIELDS: usize = 17;
/// The shader's workgroup size.
const WORKGROUP: u64 = 64;
/// The damping tries of a Newton step (as the driver's).
const DAMPING_TRIES: u64 = 30;

/// Offsets of an item's vectors in its state lanes: the point, gradient, direction, L-BFGS
/// pairs and `1/(s'y)`, the active set, the direction being solved, the two-loop's
/// coefficients, the cone test's copy of the trial (`spd` variables) and the Cholesky factor
/// (Newton and Gauss–Newton).
struct StateLayout {
    x: usize,
    g: usize,
    d: usize,
    s: usize,
    y: usize,
    rho: usize,
    act: usize,
    dir: usize,
    alpha: usize,
    cone: usize,
    fac: usize,
    stride: usize,
}

impl StateLayout {
    fn new(n: usize, memory: usize, spd: bool, factored: bool) -> StateLayout {
        let rho = 3 * n + 2 * memory * n;
        let act = rho + memory;
        let dir = act + n;
        let alpha = dir + n;
        let cone = alpha + memory;
        let fac = cone + if spd { n } else { 0 };
        let stride = fac + if factored { n * n } else { 0 };
        StateLayout {
            x: 0,
            g: n,
            d: 2 * n,
            s: 3 * n,
            y: 3 * n + memory * n,
            rho,
            act,
            dir,
            alpha,
            cone,
            fac,
            stride,
        }
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
    n: usize,
    memory: usize,
    method: Method,
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
        layout.x,
        layout.g,
        layout.d,
        layout.s,
        layout.y,
        layout.rho,
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
    let gpu = |e: GpuError| MinimizeError::Gpu(e);
    let memory = method.history(options.memory);
    let factored = matches!(method, Method::Newton | Method::GaussNewton);
    let layout = StateLayout::new(n, memory, spd_side.is_some(), factored);
    if ctx.caps_loops() {
        let needs = loop_bound(n, memory, method, spd_side.unwrap_or(0));
        if needs > SOFTWARE_LOOP_LIMIT {
            return Err(gpu(GpuError::LoopLimit {
                adapter: ctx.adapter().name.clone(),
                needs,
            }));
        }
    }
    // The plan's shared inputs, in float32, for the session (its batched ones are uploaded
    // per block below).
    let (inputs, var_input) = plan_inputs(&plan, &data, var, 0, |v| v as f32, 0.0);
    let input_data: Vec<&[f32]> = inputs.iter().map(|b| &b.data[..]).collect();
    let session = ctx.session(&plan, &input_data).map_err(gpu)?;
    let kernel = session.kernel();

    // Everything shared goes into one constants buffer; `Sources` says where.
    let mut consts: Vec<f32> = Vec::new();
    let mut push = |values: &[f32]| {
        let base = consts.len();
        consts.extend_from_slice(values);
        base
    };
    let output_source = |position: usize, push: &mut dyn FnMut(&[f32]) -> usize| {
        let mut base = 0;
        for &(p, len) in &kernel.batched_outputs {
            if p == position {
                return Some((base, false));
            }
            base += len;
        }
        session.shared_output(position).map(|v| (push(v), true))
    };
    let missing = || MinimizeError::Invalid("the objective's plan has no such output".into());
    let f = output_source(0, &mut push).ok_or_else(missing)?;
    let g = output_source(1, &mut push).ok_or_else(missing)?;
    let clock = Instant::now();
    let (h_kind, h_base, shared_factor) = match &shared_curvature {
        Some(h_plan) => {
            let matrix = <f32 as Precision>::evaluate_shared(h_plan, &data);
            let mut factor = matrix.clone();
            let ok = factor_damped(&mut factor, &matrix, n);
            let base = push(&matrix);
            (2, base, ok.then(|| push(&factor)))
        }
        None if plan.outputs().len() > 2 => match output_source(2, &mut push) {
            Some((base, false)) => (1, base, None),
            Some((base, true)) => (2, base, None),
            None => return Err(missing()),
        },
        None => (0, 0, None),
    };
    let to_f32 = |v: &[f64]| -> Vec<f32> { v.iter().map(|&x| x as f32).collect() };
    let mut bound_source = |b: &Option<(Vec<f64>, bool)>| match b {
        None => ((0u32, 0usize), None),
        Some((values, false)) => ((1, push(&to_f32(values))), None),
        Some((values, true)) => ((2, 0), Some(to_f32(values))),
    };
    let (lower_source, lower_items) = bound_source(&lower);
    let (upper_source, upper_items) = bound_source(&upper);
    let mut var_base = None;
    let mut base = 0;
    for &(k, len) in &kernel.batched_inputs {
        if k == var_input {
            var_base = Some(base);
        }
        base += len;
    }
    let var_base = var_base
        .ok_or_else(|| MinimizeError::Invalid("the objective does not read the variable".into()))?;
    let sources = Sources {
        var_base,
        f,
        g,
        h_kind,
        h_base,
        shared_factor,
        lower: lower_source,
        upper: upper_source,
    };
    let pipelines = ["update", "select_active", "gather"]
        .map(|entry| ctx.entry_pipeline(SHADER, entry))
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(gpu)?;
    let (update_pipeline, select_pipeline, gather_pipeline) =
        (&*pipelines[0], &*pipelines[1], &*pipelines[2]);
    let config = |count: usize, row: u32, block_items: usize| {
        params(
            (count, row, block_items),
            options,
            n,
            memory,
            method,
            &sources,
            &layout,
            (symmetric_side.unwrap_or(0), spd_side.unwrap_or(0)),
        )
    };

    // The start, kept feasible, per item in float32.
    let shared_bound = |b: &Option<(Vec<f64>, bool)>| match b {
        Some((values, false)) => Some(to_f32(values)),
        _ => None,
    };
    let (lower_shared, upper_shared) = (shared_bound(&lower), shared_bound(&upper));
    let start_of = |item: usize| -> Vec<f32> {
        let from = if start_batched { item * n } else { 0 };
        let mut point = to_f32(&start[from..from + n]);
        for (e, p) in point.iter_mut().enumerate() {
            let lo = lower_items
                .as_ref()
                .map(|l| l[item * n + e])
                .or(lower_shared.as_ref().map(|l| l[e]));
            let hi = upper_items
                .as_ref()
                .map(|u| u[item * n + e])
                .or(upper_shared.as_ref().map(|u| u[e]));
            if let Some(lo) = lo.filter(|&lo| *p < lo) {
                *p = lo;
            }
            if let Some(hi) = hi.filter(|&hi| *p > hi) {
                *p = hi;
            }
        }
        point
    };

    let per_dim = ctx.workgroups_per_dimension as u64;
    let per_item_bounds = lower_items.is_some() || upper_items.is_some();
    let widest = (layout.stride)
        .max(ITEM_FIELDS)
        .max(n + 4)
        .max(kernel.batched_len());
    let capacity = session
        .resident_capacity(widest)
        .min((per_dim * per_dim * WORKGROUP / widest as u64).max(1) as usize);
    let device = &ctx.device;
    let consts_buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("matgrad minimize constants"),
        contents: bytemuck::cast_slice(if consts.is_empty() { &[0f32] } else { &consts }),
        usage: wgpu::BufferUsages::STORAGE,
    });
    let mut uploaded = 4 * consts.len() as u64;
    let mut blocks = Vec::new();
    let mut first = 0;
    while first < items {
        let count = capacity.min(items - first);
        let block = ctx
            .scoped("allocating a block of items", || {
                make_block(
                    &session,
                    (first, count),
                    &inputs,
                    var_input,
                    &start_of,
                    (&lower_items, &upper_items, per_item_bounds),
                    &layout,
                    n,
                    (update_pipeline, select_pipeline, gather_pipeline),
                    &consts_buffer,
                    &config,
                )
            })
            .map_err(gpu)?
            .map_err(gpu)?;
        uploaded += block.1;
        blocks.push(block.0);
        first += count;
    }

    let readback = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("matgrad minimize counters"),
        size: (16 * blocks.len()).max(16) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut round = 0u32;
    let mut iterations_max = 0u32;
    let mut round_bytes = 0u64;
    let mut round_bytes_max = 0u64;
    while blocks.iter().any(|b| b.active > 0) {
        round += 1;
        let mut this_round = 0u64;
        let mut encoder = device.create_command_encoder(&Default::default());
        for (k, block) in blocks.iter_mut().enumerate() {
            if block.active == 0 {
                continue;
            }
            if block.compact {
                this_round += compact(ctx, &mut encoder, block, gather_pipeline, per_dim, &config);
            }
            session.encode_resident(&mut encoder, &mut block.plan, block.count);
            let (x, y, _) = fold(block.count, per_dim);
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(update_pipeline);
                pass.set_bind_group(0, &block.update, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
            encoder.clear_buffer(&block.counter, 0, None);
            {
                let mut pass = encoder.begin_compute_pass(&Default::default());
                pass.set_pipeline(select_pipeline);
                pass.set_bind_group(0, &block.select, &[]);
                pass.dispatch_workgroups(x, y, 1);
            }
            encoder.copy_buffer_to_buffer(&block.counter, 0, &readback, 16 * k as u64, 16);
        }
        let submission = ctx
            .scoped("running a round", || {
                ctx.queue.submit(Some(encoder.finish()))
            })
            .map_err(gpu)?;
        let counters: Vec<u32> =
            read(ctx, &readback, 16 * blocks.len() as u64, submission).map_err(gpu)?;
        this_round += 16 * blocks.len() as u64;
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
        if round == 1 && not_finite_starts {
            let (ids, bytes) = not_finite_at_start(ctx, &blocks).map_err(gpu)?;
            this_round += bytes;
            outside_domain(ids, items, &data, &start, start_batched, n)
                .map_err(MinimizeError::Invalid)?;
        }
        round_bytes += this_round;
        round_bytes_max = round_bytes_max.max(this_round);
        progress(Progress {
            round,
            active: blocks.iter().map(|b| b.active).sum(),
            items,
            iterations_max,
        });
    }

    // The points and reports, read back once.
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
    for block in &blocks {
        let floats = block.items * (n + 4);
        let values: Vec<f32> = read_whole(ctx, &block.results, 4 * floats as u64).map_err(gpu)?;
        downloaded += 4 * floats as u64;
        for slot in 0..block.items {
            let id = block.first + slot;
            for e in 0..n {
                points[id * n + e] = values[slot * n + e] as f64;
            }
            let r = &values[block.items * n + 4 * slot..][..4];
            reports[id] = ItemReport {
                status: match r[0] as u32 {
                    0 => Status::Converged,
                    1 => Status::MaxIter,
                    2 => Status::LineSearchFailed,
                    _ => Status::NotFinite,
                },
                iterations: r[1] as u32,
                value: r[2] as f64,
                gradient_norm: r[3] as f64,
            };
        }
    }
    Ok(Solution {
        method,
        items,
        item_shape,
        points,
        reports,
        rounds: round,
        shared_hessian: shared_curvature.is_some(),
        solve_seconds: clock.elapsed().as_secs_f64(),
        notes,
        transfers: Some(Transfers {
            before_bytes: uploaded,
            rounds_bytes: round_bytes,
            round_max_bytes: round_bytes_max,
            after_bytes: downloaded,
        }),
    })
}

/// Makes a block's buffers for items `first..first+count`, uploads its inputs (the
/// variable's lanes hold the start), its item states and its bounds, and binds the kernels.
/// Returns the block and the bytes uploaded.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn make_block(
    session: &GpuSession,
    (first, count): (usize, usize),
    inputs: &[crate::batch::Batch<f32>],
    var_input: usize,
    start_of: &dyn Fn(usize) -> Vec<f32>,
    (lower_items, upper_items, per_item_bounds): (&Option<Vec<f32>>, &Option<Vec<f32>>, bool),
    layout: &StateLayout,
    n: usize,
    (update, select, gather): (
        &wgpu::ComputePipeline,
        &wgpu::ComputePipeline,
        &wgpu::ComputePipeline,
    ),
    consts: &wgpu::Buffer,
    config: &dyn Fn(usize, u32, usize) -> [u32; PARAM_WORDS],
) -> Result<(Block, u64), GpuError> {
    let ctx = session.context();
    let device = &ctx.device;
    let kernel = session.kernel();
    use wgpu::BufferUsages as U;
    let plan = session.resident(count)?;
    let mut uploaded = 0u64;
    // The batched inputs in lanes; the variable's are the start.
    let mut lanes = vec![0f32; count * kernel.batched_len()];
    let mut base = 0;
    for &(k, len) in &kernel.batched_inputs {
        let item_major: Vec<f32> = if k == var_input {
            (first..first + count).flat_map(start_of).collect()
        } else {
            inputs[k].data[first * len..(first + count) * len].to_vec()
        };
        items_to_lanes(
            &item_major,
            count,
            len,
            &mut lanes[base * count..(base + len) * count],
        );
        base += len;
    }
    if !lanes.is_empty() {
        ctx.queue
            .write_buffer(plan.input(), 0, bytemuck::cast_slice(&lanes));
        uploaded += 4 * lanes.len() as u64;
    }
    let zeroed = |label: &str, floats: usize, usage: U| {
        device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (4 * floats).max(4) as u64,
            usage,
            mapped_at_creation: false,
        })
    };
    let filled = |label: &str, contents: &[u32], usage: U| {
        device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents: bytemuck::cast_slice(if contents.is_empty() {
                &[0u32]
            } else {
                contents
            }),
            usage,
        })
    };
    let gathered_usage = U::STORAGE | U::COPY_SRC | U::COPY_DST;
    let state = zeroed(
        "matgrad minimize state",
        count * layout.stride,
        gathered_usage,
    );
    // Item fields: the slot, active, at its start, no bracket, scale 1, no value yet.
    let mut fields = vec![0u32; ITEM_FIELDS * count];
    for slot in 0..count {
        fields[slot] = slot as u32;
        fields[count + slot] = 255;
        fields[8 * count + slot] = f32::NAN.to_bits();
        fields[14 * count + slot] = (-1.0f32).to_bits();
        fields[15 * count + slot] = 1.0f32.to_bits();
        fields[16 * count + slot] = f32::NAN.to_bits();
    }
    let item_fields = filled("matgrad minimize items", &fields, gathered_usage);
    uploaded += 4 * fields.len() as u64;
    let bounds = if per_item_bounds {
        let mut item_major = vec![0f32; 2 * n * count];
        for slot in 0..count {
            let item = first + slot;
            let row = &mut item_major[2 * n * slot..2 * n * (slot + 1)];
            if let Some(l) = lower_items {
                row[..n].copy_from_slice(&l[item * n..(item + 1) * n]);
            }
            if let Some(u) = upper_items {
                row[n..].copy_from_slice(&u[item * n..(item + 1) * n]);
            }
        }
        let mut lanes = vec![0f32; 2 * n * count];
        items_to_lanes(&item_major, count, 2 * n, &mut lanes);
        uploaded += 4 * lanes.len() as u64;
        let bits: Vec<u32> = lanes.iter().map(|v| v.to_bits()).collect();
        Some(filled("matgrad minimize bounds", &bits, gathered_usage))
    } else {
        None
    };
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
    let mut gathered_buffers: Vec<(usize, wgpu::Buffer)> = Vec::new();
    if kernel.batched_len() > 0 {
        gathered_buffers.push((kernel.batched_len(), plan.input().clone()));
    }
    gathered_buffers.push((layout.stride, state.clone()));
    gathered_buffers.push((ITEM_FIELDS, item_fields.clone()));
    if let Some(b) = &bounds {
        gathered_buffers.push((2 * n, b.clone()));
    }
    let widest = gathered_buffers.iter().map(|g| g.0).max().unwrap_or(1);
    let spare = zeroed(
        "matgrad minimize spare",
        count * widest,
        U::STORAGE | U::COPY_SRC,
    );
    let bind = |pipeline: &wgpu::ComputePipeline, entries: &[(u32, &wgpu::Buffer)]| {
        let entries: Vec<wgpu::BindGroupEntry> = entries
            .iter()
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
    };
    let update_group = bind(
        update,
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
    let select_group = bind(
        select,
        &[(0, &params), (5, &item_fields), (8, &counter), (9, &keep)],
    );
    let gathered = gathered_buffers
        .into_iter()
        .map(|(len, buffer)| {
            let params = zeroed(
                "matgrad minimize gather params",
                4,
                U::UNIFORM | U::COPY_DST,
            );
            let group = bind(
                gather,
                &[(10, &params), (11, &buffer), (12, &spare), (13, &keep)],
            );
            Gathered {
                len,
                buffer,
                params,
                group,
            }
        })
        .collect();
    let block = Block {
        first,
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
        update: update_group,
        select: select_group,
    };
    uploaded += write_params(ctx, &block, config);
    Ok((block, uploaded))
}

/// Writes the update's parameter block for the block's item count; returns the bytes.
fn write_params(
    ctx: &GpuContext,
    block: &Block,
    config: &dyn Fn(usize, u32, usize) -> [u32; PARAM_WORDS],
) -> u64 {
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
    config: &dyn Fn(usize, u32, usize) -> [u32; PARAM_WORDS],
) -> u64 {
    let (old, new) = (block.count, block.active);
    let mut bytes = 0;
    for g in &block.gathered {
        let (x, y, row) = fold(new * g.len, per_dim);
        let params: [u32; 4] = [old as u32, new as u32, g.len as u32, row];
        ctx.queue
            .write_buffer(&g.params, 0, bytemuck::cast_slice(&params));
        bytes += 16;
        {
            let mut pass = encoder.begin_compute_pass(&Default::default());
            pass.set_pipeline(gather);
            pass.set_bind_group(0, &g.group, &[]);
            pass.dispatch_workgroups(x, y, 1);
        }
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
