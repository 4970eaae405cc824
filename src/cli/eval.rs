//! `matgrad eval`: read the inputs, bind them, plan, run on the chosen device, write the
//! outputs (all of them or none).

use std::path::Path;

use matgrad::batch::{bind, non_finite_items, run_reference, Batch};
use matgrad::check::to_f32;
use matgrad::cpu::run_cpu;
use matgrad::diff::Derivative;
use matgrad::gpu::{run_gpu, GpuContext, GpuError, GpuOptions};
use matgrad::npy::read_npz;
use matgrad::plan::Plan;

use super::{derive_or_report, gpu_if_any};
use crate::{DeviceArg, EvalArgs};

/// `matgrad eval`, from its arguments to the exit status.
pub fn eval(args: EvalArgs) -> u8 {
    let derivative =
        match derive_or_report(&args.program, &args.wrt, args.hessian, args.layout.layout()) {
            Ok(d) => d,
            Err(code) => return code,
        };
    let gpu = match args.device {
        DeviceArg::Gpu => match GpuContext::new(&GpuOptions {
            adapter: args.adapter,
            ..GpuOptions::default()
        }) {
            Ok(ctx) => Some(ctx),
            Err(e) => {
                errorln!("{e}");
                return 2;
            }
        },
        DeviceArg::Auto => gpu_if_any(args.adapter),
        _ => None,
    };
    match run_eval(
        &derivative,
        &args.inputs,
        &args.out,
        args.device,
        gpu.as_ref(),
        args.value_out.as_deref(),
    ) {
        Ok(()) => 0,
        Err(message) => {
            errorln!("{message}");
            2
        }
    }
}

/// `matgrad eval`: read, bind, plan, run, write.
fn run_eval(
    d: &Derivative,
    inputs: &Path,
    out: &Path,
    device: DeviceArg,
    gpu: Option<&GpuContext>,
    value_out: Option<&Path>,
) -> Result<(), String> {
    let g = &d.program.graph;
    let mut outputs = vec![("--out", out)];
    outputs.extend(value_out.map(|v| ("--value-out", v)));
    super::refuse_overwrites(inputs, &outputs)?;
    let arrays = read_npz(inputs).map_err(|e| e.to_string())?;
    let reads = g.vars_in(d.program.root);
    let bound = bind(g, &reads, &arrays).map_err(|e| format!("{e} (in `{}`)", inputs.display()))?;
    super::warn_unused(&bound.unused, inputs);
    let mut outputs = vec![d.node];
    if value_out.is_some() {
        outputs.push(d.program.root);
    }
    let plan =
        Plan::new(g, &outputs, &bound.dim_sizes, &bound.batched).map_err(|e| e.to_string())?;
    let batch = bound.batch.unwrap_or(1);
    plan.fits_batch(batch, &format!("evaluating {batch} items"))
        .map_err(|e| e.to_string())?;
    let values: Vec<&Batch<f64>> = plan
        .inputs()
        .iter()
        .map(|i| {
            bound.values[i.var as usize]
                .as_ref()
                .expect("bound inputs cover the plan's variables")
        })
        .collect();
    let targets: Vec<&Path> = std::iter::once(out).chain(value_out).collect();
    // Every output is staged before the first is renamed into place: all are written or none.
    let staged = match device {
        DeviceArg::Reference => {
            let results = run_reference(&plan, &values, batch);
            results
                .iter()
                .zip(targets)
                .map(|(result, path)| stage_batch(result, bound.batch, path))
                .collect::<Result<Vec<_>, _>>()?
        }
        DeviceArg::Cpu | DeviceArg::Gpu | DeviceArg::Auto => {
            super::warn_float32_range(&arrays, inputs);
            let values32: Vec<Batch<f32>> = values.iter().map(|b| to_f32(b)).collect();
            let refs: Vec<&Batch<f32>> = values32.iter().collect();
            let results = match gpu.map(|ctx| run_gpu(ctx, &plan, &refs, batch)) {
                Some(Ok(results)) => results,
                // `auto` chose the GPU; one that cannot run this plan hands it to the CPU.
                Some(Err(e @ GpuError::LoopLimit { .. })) if device == DeviceArg::Auto => {
                    eprintln!("note: {e}; using the CPU path");
                    run_cpu(&plan, &refs, batch)
                }
                Some(Err(e)) => return Err(e.to_string()),
                None => run_cpu(&plan, &refs, batch),
            };
            results
                .iter()
                .zip(targets)
                .map(|(result, path)| stage_batch(result, bound.batch, path))
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    for output in staged {
        output.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Stages a result with shape `(B, item axes...)` whenever the inputs have a batch axis (a
/// result that reads no batched input is repeated), after reporting non-finite items.
fn stage_batch<T: matgrad::npy::Element + Into<f64>>(
    b: &Batch<T>,
    batch: Option<usize>,
    path: &Path,
) -> Result<matgrad::npy::Staged, String> {
    let repeated;
    let b = match (batch, b.batch) {
        (Some(n), None) => {
            repeated = Batch {
                batch: Some(n),
                rows: b.rows,
                cols: b.cols,
                data: b.data.repeat(n),
            };
            &repeated
        }
        _ => b,
    };
    let mut shape: Vec<usize> = b.batch.into_iter().collect();
    shape.extend(item_shape(b.rows, b.cols));
    report_non_finite(&non_finite_items(b), b.items(), path);
    matgrad::npy::stage_npy(path, &shape, &b.data).map_err(|e| e.to_string())
}

/// The axes of one item: () for a scalar, (n,) for a column, (1, n) for a row, (m, n).
fn item_shape(rows: usize, cols: usize) -> Vec<usize> {
    match (rows, cols) {
        (1, 1) => vec![],
        (r, 1) => vec![r],
        (r, c) => vec![r, c],
    }
}

fn report_non_finite(items: &[usize], total: usize, path: &Path) {
    if items.is_empty() {
        return;
    }
    let first: Vec<String> = items.iter().take(5).map(|i| i.to_string()).collect();
    eprintln!(
        "warning: {} of {total} items of `{}` are not finite (first: {})",
        items.len(),
        path.display(),
        first.join(", ")
    );
}
