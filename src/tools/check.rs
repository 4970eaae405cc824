//! `matgrad check`: random batches in each function's domain, every device against the
//! float64 reference, and the reference against finite differences.
//!
//! In: a [`Derivative`] and a [`CheckConfig`] (dimension sizes, batch size, which variables
//! are batched, a seed). Out: a [`Checked`]: one [`DeviceReport`] per device with the largest
//! relative error over the items and its tolerance, and the sizes when not the defaults.
//!
//! Invariants: shared inputs are one value for the whole batch, batched inputs one per item.
//! An item's inputs are redrawn (up to 20 times) until the function and its finite
//! differences are finite there, so a `log` or `logdet` outside its domain is avoided
//! rather than reported; when no first item is, the shared inputs are redrawn too, and other
//! ways of drawing are tried (every input positive, then input by input); when no point at
//! the default sizes is inside (`logdet(X'*X)` with a wide `X`), other sizes for the
//! dimensions the user left free are tried ([`size_candidates`]).
//! The reference is compared with finite differences on up to [`FD_ITEMS`] items, each
//! device with the reference on every item that float32 resolves
//! ([`device_against_reference`]).

use std::collections::HashMap;

use serde::Serialize;

use crate::batch::{batches_from_points, float32_resolution, run_reference, set_points, Batch};
use crate::cpu::run_cpu;
use crate::diagnostic::Diagnostic;
use crate::diff::Derivative;
use crate::eval::Env;
use crate::plan::Plan;
use crate::verify::{compare, dimension_sizes, random_point, PROBES, TOLERANCE};

/// The largest relative error (Frobenius norm, per item) allowed between a float32 device
/// and the float64 reference. Float32 rounds at 6e-8; a derivative is tens of operations deep
/// and `inv`/`logdet` of a matrix with condition number 1e2 amplify that by 1e2, so 1e-3
/// leaves room for well-conditioned inputs while a wrong kernel gives errors of order 1.
pub const F32_TOLERANCE: f64 = 1e-3;

/// Items on which the reference is also compared with finite differences.
pub const FD_ITEMS: usize = 16;

/// What to check.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Sizes by dimension name (declared sizes win; the rest default to 3, 4, 2, 5, …).
    pub dims: HashMap<String, usize>,
    pub batch: usize,
    /// Batched variables by name; the others are shared.
    pub batched: Vec<String>,
    pub seed: u64,
}

/// One device's result.
#[derive(Clone, Debug, Serialize)]
pub struct DeviceReport {
    pub device: String,
    /// What it is compared against.
    pub against: String,
    pub max_rel_error: f64,
    pub tolerance: f64,
    pub items_compared: usize,
    /// Of the items compared, those whose result cancelled to float32's rounding noise, and
    /// are held to it (see [`device_against_reference`]).
    pub items_cancelled: usize,
    /// Items left out because float32 cannot resolve them (see [`device_against_reference`]).
    pub items_ill_conditioned: usize,
    pub passed: bool,
}

/// A check's reports and the sizes it ran at.
#[derive(Clone, Debug)]
pub struct Checked {
    pub reports: Vec<DeviceReport>,
    /// `m=3, n=4` when these are not the default sizes: no random point was inside the
    /// domain at those (see [`size_candidates`]), and the check moved on to these.
    pub other_sizes: Option<String>,
    /// Why the GPU was not compared although there is one: an adapter that cannot run this
    /// plan's kernels correctly (see [`crate::gpu::GpuError::LoopLimit`]).
    pub gpu_skipped: Option<String>,
    /// How the inputs were drawn when standard normal values gave no point in the domain.
    pub draw_note: Option<String>,
    /// How finite differences witnessed a variable too large to difference entry by entry
    /// (see [`crate::verify::PROBED_ENTRIES`]).
    pub probe_note: Option<String>,
}

/// Runs the check. Errors name the variable or dimension at fault.
pub fn run_check(
    d: &Derivative,
    config: &CheckConfig,
    gpu: Option<&crate::gpu::GpuContext>,
) -> Result<Checked, Diagnostic> {
    let g = &d.program.graph;
    let batched = batched_flags(g, &config.batched)?;
    let batch = config.batch.max(1);
    // The first sizes that give the function a point in its domain, else the defaults.
    let candidates = size_candidates(g, &config.dims)?;
    let mut sizes = &candidates[0];
    // Every item holds all variables (shared ones copied) in float64, several times over.
    let probe = Plan::new(g, &[d.node], sizes, &batched)
        .map_err(|e| Diagnostic::without_span(e.to_string()))?;
    let values: f64 = probe
        .inputs()
        .iter()
        .map(|i| i.rows as f64 * i.cols as f64)
        .sum();
    let points = 8.0 * 3.0 * values * batch as f64;
    crate::batch::fits_in_memory(
        points + 2.0 * probe.memory_bytes(batch),
        &format!("`--batch {batch}`"),
    )
    .map_err(Diagnostic::without_span)?;
    let (mut items, mut usable, mut draw_note) = draw_items(d, sizes, &batched, batch, config.seed);
    let mut other_sizes = None;
    for next in &candidates[1..] {
        if usable {
            break;
        }
        let (next_items, next_usable, next_note) =
            draw_items(d, next, &batched, batch, config.seed);
        if next_usable {
            (sizes, items, usable, draw_note) = (next, next_items, true, next_note);
            let named: Vec<String> = (g.dims.iter().zip(next))
                .map(|(dim, size)| format!("{}={size}", dim.name))
                .collect();
            other_sizes = Some(named.join(", "));
        }
    }
    let plan = Plan::new(g, &[d.node], sizes, &batched)
        .map_err(|e| Diagnostic::without_span(e.to_string()))?;

    // Every device and the finite-difference points read the same float32-rounded numbers.
    let inputs64 = round_to_f32(&batches_from_points(&plan, &items));
    set_points(&plan, &inputs64, &mut items);
    let refs: Vec<&Batch<f64>> = inputs64.iter().collect();
    let reference = run_reference(&plan, &refs, batch).remove(0);
    let resolution = Float32Resolution::new(&plan, &inputs64, batch);
    let noise = resolution.output(0);

    // The reference against finite differences.
    let mut fd_error: f64 = 0.0;
    let mut fd_items = 0;
    let mut probe_note = None;
    for (i, env) in items.iter().enumerate().take(FD_ITEMS) {
        if let Ok(c) = compare(d, env) {
            if c.probes.is_some() {
                let entries = env.values[d.wrt as usize]
                    .as_ref()
                    .map_or(0, |v| v.data.len());
                probe_note = Some(format!(
                    "`{}` has {entries} entries: the reference is compared with finite \
                     differences along {PROBES} random directions (the derivative projected on \
                     them), not entry by entry",
                    g.vars[d.wrt as usize].name
                ));
            }
            let value = reference.item_mat(if plan.is_batched() { i } else { 0 });
            let error = if c.zero_within_noise && value.data.iter().all(|&v| v == 0.0) {
                0.0
            } else {
                c.error_of(&value)
            };
            fd_error = fd_error.max(error.max(c.rel_error));
            fd_items += 1;
        }
    }
    let mut reports = vec![DeviceReport {
        device: "reference".into(),
        against: "finite differences".into(),
        max_rel_error: fd_error,
        tolerance: TOLERANCE,
        items_compared: fd_items,
        items_cancelled: 0,
        items_ill_conditioned: 0,
        passed: fd_items > 0 && fd_error <= TOLERANCE,
    }];

    // The float32 CPU path against the reference.
    let inputs32: Vec<Batch<f32>> = inputs64.iter().map(to_f32).collect();
    let refs32: Vec<&Batch<f32>> = inputs32.iter().collect();
    let cpu = run_cpu(&plan, &refs32, batch).remove(0);
    reports.push(device_against_reference("cpu", &cpu, &reference, noise));
    let mut gpu_skipped = None;
    if let Some(ctx) = gpu {
        match crate::gpu::run_gpu(ctx, &plan, &refs32, batch) {
            Ok(mut results) => {
                let result = results.remove(0);
                reports.push(device_against_reference("gpu", &result, &reference, noise));
            }
            Err(e @ crate::gpu::GpuError::LoopLimit { .. }) => gpu_skipped = Some(e.to_string()),
            Err(e) => return Err(Diagnostic::without_span(format!("the GPU failed: {e}"))),
        }
    }
    Ok(Checked {
        reports,
        gpu_skipped,
        other_sizes,
        draw_note,
        probe_note,
    })
}

/// How one input's random values are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Draw {
    /// Standard normal entries (a positive definite or symmetric matrix made from them).
    Normal,
    /// Positive entries, `|z|/2 + 0.1` for a standard normal `z`: the domain of `log`, `sqrt`,
    /// `x.^p` with a non-integer `p`, and of `log(sin(X))` (entries below π).
    Positive,
}

/// The draws tried for the inputs, in order: all normal, all positive, then mixes, input by
/// input (`attempt` picks which inputs are positive, pseudo-randomly but reproducibly).
fn draws_for(attempt: usize, vars: usize) -> Vec<Draw> {
    match attempt {
        0 => vec![Draw::Normal; vars],
        1 => vec![Draw::Positive; vars],
        _ => (0..vars)
            .map(|v| {
                let bits = (attempt as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (v % 61);
                if bits & 1 == 1 {
                    Draw::Positive
                } else {
                    Draw::Normal
                }
            })
            .collect(),
    }
}

/// [`random_point`] with each input drawn as `draws` says.
fn point_with(g: &crate::expr::Graph, sizes: &[usize], seed: u64, draws: &[Draw]) -> Env {
    let mut env = random_point(g, sizes, seed);
    for (v, value) in env.values.iter_mut().enumerate() {
        if let (Some(m), Draw::Positive) = (value.as_mut(), draws[v]) {
            let var = &g.vars[v];
            if var.positive_definite {
                continue; // already in its domain
            }
            *m = m.map(|z| 0.5 * z.abs() + 0.1);
            if var.symmetric {
                *m = m.zip(&m.transpose(), |a, b| 0.5 * (a + b));
            }
        }
    }
    env
}

/// How many ways of drawing the inputs are tried before a check gives up on a size.
const DRAW_STRATEGIES: usize = 8;
/// How many times one item is redrawn under one strategy.
const ITEM_ATTEMPTS: u64 = 20;

/// A batch of points at `sizes`: shared values from one point, each item redrawn (up to 20
/// times) until the function and its finite differences are finite there.
/// When no first item is, the shared values are redrawn too, under other strategies (all
/// inputs positive, then input by input: [`draws_for`]). Also says whether any item is usable
/// and, when the inputs had to be drawn positive, which.
fn draw_items(
    d: &Derivative,
    sizes: &[usize],
    batched: &[bool],
    batch: usize,
    seed: u64,
) -> (Vec<Env>, bool, Option<String>) {
    let g = &d.program.graph;
    let item_seed = |item: usize, attempt: u64, strategy: usize| {
        seed.wrapping_mul(7919)
            .wrapping_add((item as u64) * 1000 + attempt + 1)
            .wrapping_add((strategy as u64) << 40)
    };
    let draw_item = |base: &Env, item: usize, strategy: usize, draws: &[Draw]| {
        let mut last = None;
        for attempt in 0..ITEM_ATTEMPTS {
            let mut env = point_with(g, sizes, item_seed(item, attempt, strategy), draws);
            for (v, value) in env.values.iter_mut().enumerate() {
                if !batched[v] {
                    value.clone_from(&base.values[v]);
                }
            }
            let usable = compare(d, &env).is_ok();
            last = Some(env);
            if usable {
                return (last, true);
            }
        }
        (last, false)
    };
    let mut fallback = None;
    for strategy in 0..DRAW_STRATEGIES {
        let draws = draws_for(strategy, g.vars.len());
        let base_seed = seed.wrapping_add((strategy as u64) << 32);
        let base = point_with(g, sizes, base_seed, &draws);
        let (first, usable) = draw_item(&base, 0, strategy, &draws);
        if !usable {
            if fallback.is_none() {
                fallback = Some((base, draws));
            }
            continue;
        }
        let mut items: Vec<Env> = Vec::with_capacity(batch);
        items.extend(first);
        for item in 1..batch {
            items.extend(draw_item(&base, item, strategy, &draws).0);
        }
        let positive: Vec<&str> = (g.vars.iter().zip(&draws))
            .filter(|(v, &draw)| draw == Draw::Positive && !v.positive_definite)
            .map(|(v, _)| v.name.as_str())
            .collect();
        let note = (!positive.is_empty()).then(|| {
            format!(
                "standard normal inputs gave no point inside the domain; drew {} positive",
                positive.join(", ")
            )
        });
        return (items, true, note);
    }
    // Nothing usable: the first strategy's batch, reported as out of the domain.
    let (base, draws) = fallback.expect("at least one strategy ran");
    let items = (0..batch)
        .filter_map(|item| draw_item(&base, item, 0, &draws).0)
        .collect();
    (items, false, None)
}

/// The sizes a check tries, in order: [`sizes_with`]'s, then, when some dimensions are
/// neither declared nor given, other sizes for those: the defaults in reverse order, all
/// equal to 3, all equal to 2. A function may have no point in its domain at the defaults
/// (`logdet(X'*X)` with `X` 3×4 is `log 0` everywhere) and points at others (4×3).
pub fn size_candidates(
    g: &crate::expr::Graph,
    overrides: &HashMap<String, usize>,
) -> Result<Vec<Vec<usize>>, Diagnostic> {
    let first = sizes_with(g, overrides)?;
    let free: Vec<usize> = (0..g.dims.len())
        .filter(|&i| g.dims[i].size.is_none() && !overrides.contains_key(&g.dims[i].name))
        .collect();
    let with = |values: &mut dyn Iterator<Item = usize>| {
        let mut sizes = first.clone();
        for (&i, v) in free.iter().zip(values) {
            sizes[i] = v;
        }
        sizes
    };
    let defaults: Vec<usize> = free.iter().map(|&i| first[i]).collect();
    let mut candidates = vec![first.clone()];
    for sizes in [
        with(&mut defaults.iter().rev().copied()),
        with(&mut std::iter::repeat(3)),
        with(&mut std::iter::repeat(2)),
    ] {
        if !candidates.contains(&sizes) {
            candidates.push(sizes);
        }
    }
    Ok(candidates)
}

/// Dimension sizes: declared sizes, then `overrides` by name, then 3, 4, 2, 5, … Errors name
/// the dimension that does not exist, disagrees with its declaration, or is 0.
pub fn sizes_with(
    g: &crate::expr::Graph,
    overrides: &HashMap<String, usize>,
) -> Result<Vec<usize>, Diagnostic> {
    let mut sizes = dimension_sizes(g);
    for (name, &size) in overrides {
        let Some(i) = g.dims.iter().position(|dim| &dim.name == name) else {
            let names: Vec<&str> = g.dims.iter().map(|dim| dim.name.as_str()).collect();
            return Err(Diagnostic::without_span(format!(
                "`--dims {name}={size}`: the program has no dimension `{name}`"
            ))
            .with_help(format!("its dimensions are: {}", names.join(", "))));
        };
        if let Some(declared) = g.dims[i].size.filter(|&s| s != size) {
            return Err(Diagnostic::without_span(format!(
                "`--dims {name}={size}`: `{name}` is declared as {declared}"
            )));
        }
        if size == 0 {
            return Err(Diagnostic::without_span(format!(
                "`--dims {name}=0`: sizes must be positive"
            )));
        }
        sizes[i] = size;
    }
    Ok(sizes)
}

/// For each variable, whether `names` makes it batched. Errors name a variable that does
/// not exist.
pub fn batched_flags(g: &crate::expr::Graph, names: &[String]) -> Result<Vec<bool>, Diagnostic> {
    let mut batched = vec![false; g.vars.len()];
    for name in names {
        let v = g.var_by_name(name).ok_or_else(|| {
            Diagnostic::without_span(format!("`--batched {name}`: there is no variable `{name}`"))
        })?;
        batched[v as usize] = true;
    }
    Ok(batched)
}

/// How many times float32's own rounding noise a result that cancelled may be off by (see
/// [`device_against_reference`]): a device's float32 sums of many terms round more often than
/// the one half-ulp per step of the perturbed reference.
pub const NOISE_ALLOWANCE: f64 = 100.0;

/// What float32 can resolve of a plan's reference on some inputs: the reference recomputed
/// with float32 rounding on [`perturb`]ed inputs and, per item, the largest magnitude the
/// computation reaches that float32 resolves ([`float32_resolution`]).
#[derive(Clone, Debug)]
pub struct Float32Resolution {
    perturbed: Vec<Batch<f64>>,
    magnitudes: Vec<f64>,
}

impl Float32Resolution {
    pub fn new(plan: &Plan, inputs: &[Batch<f64>], batch: usize) -> Float32Resolution {
        let refs: Vec<&Batch<f64>> = inputs.iter().collect();
        let moved = perturb(inputs);
        let moved_refs: Vec<&Batch<f64>> = moved.iter().collect();
        let (perturbed, magnitudes) = float32_resolution(plan, &refs, &moved_refs, batch);
        Float32Resolution {
            perturbed,
            magnitudes,
        }
    }

    /// For the plan's output `k`.
    pub fn output(&self, k: usize) -> Float32Noise<'_> {
        Float32Noise {
            perturbed: &self.perturbed[k],
            magnitudes: &self.magnitudes,
        }
    }
}

/// [`Float32Resolution`] for one output.
#[derive(Clone, Copy, Debug)]
pub struct Float32Noise<'a> {
    perturbed: &'a Batch<f64>,
    magnitudes: &'a [f64],
}

/// The largest per-item error of a float32 result against the reference, over the items
/// float32 can resolve.
///
/// An item's error is `‖got − want‖ / (‖want‖ + 1e-3·M)`, with `M` the largest `‖want‖` in
/// the batch: relative for items of ordinary size, absolute at float32's resolution of the
/// batch's scale for items that are tiny because terms cancelled (`1 - tanh(x)^2` is exactly 0
/// in float32 once `tanh(x)` rounds to 1, while the reference keeps 1e-7). An item whose
/// reference moves by more than a tenth of the tolerance under float32 rounding (`noise`) is
/// one of two kinds:
/// - the result and the movement are both small next to the largest magnitude the item's
///   computation reaches that float32 resolves: the result cancelled (`exp(log(x)) - x` is 0 up to rounding, and so
///   is its derivative), and the item is held to [`NOISE_ALLOWANCE`] times that movement (a
///   wrong kernel is off by the size of the terms, far more);
/// - otherwise the computation itself is lost in float32 (an `inv` of a nearly singular
///   matrix): no float32 method can be accurate, and the item is counted, not compared.
pub fn device_against_reference(
    device: &str,
    result: &Batch<f32>,
    reference: &Batch<f64>,
    noise: Float32Noise<'_>,
) -> DeviceReport {
    let scale = (0..reference.items())
        .map(|i| reference.item_mat(i).norm())
        .filter(|x| x.is_finite())
        .fold(0.0f64, f64::max);
    let mut worst: f64 = 0.0;
    let mut compared = 0;
    let mut cancelled = 0;
    let mut ill_conditioned = 0;
    for i in 0..reference.items() {
        let want = reference.item_mat(i);
        if !want.is_finite() {
            continue;
        }
        let mut floor = want.norm() + 1e-3 * scale;
        let moved = noise.perturbed.item_mat(i).zip(&want, |a, b| a - b).norm();
        let resolved = moved <= F32_TOLERANCE / 10.0 * floor;
        if !resolved {
            // Cancelled: far smaller than the numbers it is computed from, which float32
            // does resolve.
            let magnitude = noise.magnitudes.get(i).copied().unwrap_or(0.0);
            let small = want.norm() <= F32_TOLERANCE * magnitude;
            if !(small && moved <= F32_TOLERANCE / 10.0 * magnitude) {
                ill_conditioned += 1;
                continue;
            }
            cancelled += 1;
            floor += NOISE_ALLOWANCE * moved / F32_TOLERANCE;
        }
        let got = crate::eval::Mat {
            rows: result.rows,
            cols: result.cols,
            data: result.item(i).iter().map(|&x| x as f64).collect(),
        };
        let diff = got.zip(&want, |a, b| a - b).norm();
        let error = if diff.is_nan() {
            f64::INFINITY
        } else {
            diff / floor.max(f64::MIN_POSITIVE)
        };
        worst = worst.max(error);
        compared += 1;
    }
    DeviceReport {
        device: device.into(),
        against: "reference".into(),
        max_rel_error: worst,
        tolerance: F32_TOLERANCE,
        items_compared: compared,
        items_cancelled: cancelled,
        items_ill_conditioned: ill_conditioned,
        passed: worst <= F32_TOLERANCE,
    }
}

/// Inputs moved by one float32 rounding, alternately up and down, entry by entry.
pub fn perturb(inputs: &[Batch<f64>]) -> Vec<Batch<f64>> {
    let step = f32::EPSILON as f64;
    inputs
        .iter()
        .map(|b| Batch {
            data: b
                .data
                .iter()
                .enumerate()
                .map(|(k, &x)| x * if k % 2 == 0 { 1.0 + step } else { 1.0 - step })
                .collect(),
            ..b.clone()
        })
        .collect()
}

/// Each value rounded to float32 and back, so that every device reads the same numbers.
pub fn round_to_f32(inputs: &[Batch<f64>]) -> Vec<Batch<f64>> {
    inputs
        .iter()
        .map(|b| Batch {
            data: b.data.iter().map(|&x| x as f32 as f64).collect(),
            ..b.clone()
        })
        .collect()
}

/// The same batch in float32.
pub fn to_f32(b: &Batch<f64>) -> Batch<f32> {
    Batch {
        batch: b.batch,
        rows: b.rows,
        cols: b.cols,
        data: b.data.iter().map(|&x| x as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column<T>(data: Vec<T>) -> Batch<T> {
        Batch {
            batch: Some(data.len()),
            rows: 1,
            cols: 1,
            data,
        }
    }

    /// Three items whose exact result is 0 by cancellation of terms of size 1 (float32 noise
    /// 1e-7 one rounding away), and one whose computation float32 does not resolve at all.
    #[test]
    fn cancelled_items_are_held_to_noise_and_lost_ones_left_out() {
        let reference = column(vec![0.0, 0.0, 1e-17, 2e-4]);
        let perturbed = column(vec![1e-7, -1e-7, 1e-7, 2.0]);
        let magnitudes = [1.0, 1.0, 1.0, 1e-3];
        let noise = Float32Noise {
            perturbed: &perturbed,
            magnitudes: &magnitudes,
        };
        let at_noise = column(vec![3e-7f32, 0.0, -2e-7, 1.5]);
        let report = device_against_reference("cpu", &at_noise, &reference, noise);
        assert_eq!(
            (report.items_compared, report.items_cancelled),
            (3, 3),
            "{report:?}"
        );
        assert_eq!(report.items_ill_conditioned, 1, "{report:?}");
        assert!(report.passed, "{report:?}");
        // Off by the size of the terms on one cancelled item: a wrong kernel.
        let wrong = column(vec![3e-7f32, 1.0, -2e-7, 1.5]);
        let report = device_against_reference("cpu", &wrong, &reference, noise);
        assert!(!report.passed, "{report:?}");
    }
}
