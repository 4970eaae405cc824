//! `matgrad minimize`: reads the inputs, solves every item, writes the solutions and the
//! report, prints the summary.
//!
//! In: the parsed arguments. Out: the exit status: 0 when every item converged, 1 when some
//! did not (the solutions are still written), 2 for bad input or an output that cannot be
//! written. Invariants: the solutions and the report are both written or neither is; an
//! output path that would overwrite the inputs, or the other output, is refused before
//! anything is computed.

use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use matgrad::diagnostic::Diagnostic;
use matgrad::minimize::{
    minimize_with_progress, BoundSpec, Device, Method, Objective, Options, Solution, Status,
};
use matgrad::npy::{read_npz, stage_npy, stage_npz, Column};
use matgrad::types::check_program;

use crate::MinimizeArgs;

pub fn run_minimize(args: MinimizeArgs, report_diagnostic: impl Fn(&Diagnostic, &str) -> u8) -> u8 {
    match solve_and_write(&args, &report_diagnostic) {
        Ok(code) => code,
        Err(message) => {
            errorln!("{message}");
            2
        }
    }
}

fn solve_and_write(
    args: &MinimizeArgs,
    report_diagnostic: &dyn Fn(&Diagnostic, &str) -> u8,
) -> Result<u8, String> {
    let device = match args.device.as_str() {
        "cpu" => Device::Cpu,
        "reference" => Device::Reference,
        // The GPU path's speed against the CPU path has not been measured on a hardware GPU
        // yet (README, *Batch optimization*), so `auto` does not guess it.
        "auto" => Device::Cpu,
        "gpu" => Device::Gpu,
        other => {
            return Err(format!(
                "`--device {other}`: expected auto, cpu, gpu or reference"
            ))
        }
    };
    let method = Method::from_name(&args.method).ok_or_else(|| {
        format!(
            "`--method {}`: expected auto, newton, lbfgs, gauss-newton or gd",
            args.method
        )
    })?;
    refuse_overwrites(args)?;
    let objective = match check_program(&args.program).and_then(|p| Objective::new(p, &args.wrt)) {
        Ok(objective) => objective,
        Err(e) => return Ok(report_diagnostic(&e, &args.program)),
    };
    let arrays = read_npz(&args.inputs).map_err(|e| e.to_string())?;
    if device != Device::Reference {
        super::warn_float32_range(&arrays, &args.inputs);
    }
    let bound_spec = |text: &Option<String>, which: &str| -> Result<Option<BoundSpec>, String> {
        let Some(text) = text else { return Ok(None) };
        if let Ok(v) = text.trim().parse::<f64>() {
            if v.is_nan() {
                return Err(format!(
                    "`--{which} {text}`: a bound is a number or an array's name, not NaN"
                ));
            }
            return Ok(Some(BoundSpec::Number(v)));
        }
        match arrays.iter().find(|a| a.name == *text) {
            Some(a) => Ok(Some(BoundSpec::Array(a.clone()))),
            None => Err(format!(
                "`--{which} {text}`: not a number, and `{}` has no array `{text}`",
                args.inputs.display()
            )),
        }
    };
    let lower = bound_spec(&args.lower, "lower")?;
    let upper = bound_spec(&args.upper, "upper")?;
    let bound_names: Vec<&str> = [&args.lower, &args.upper]
        .into_iter()
        .flatten()
        .map(|s| s.as_str())
        .collect();
    let program_arrays: Vec<_> = arrays
        .iter()
        .filter(|a| !bound_names.contains(&a.name.as_str()))
        .cloned()
        .collect();
    let mut options = Options::for_device(device);
    options.method = method;
    options.gtol = args.gtol;
    if let Some(ftol) = args.ftol {
        options.ftol = ftol;
    }
    options.max_iter = args.max_iter;
    options.memory = args.memory;
    options.lower = lower;
    options.upper = upper;
    options.adapter = super::adapter_choice(args.adapter.clone());
    if args.adapter.is_some() && device != Device::Gpu {
        return Err("`--adapter` chooses the GPU for `--device gpu`".into());
    }

    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} items done {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut show = |p: matgrad::minimize::Progress| {
        bar.set_length(p.items as u64);
        bar.set_position((p.items - p.active) as u64);
        bar.set_message(format!(
            "(round {}, iteration {}, {} active)",
            p.round, p.iterations_max, p.active
        ));
    };
    let solved = minimize_with_progress(&objective, &program_arrays, &options, device, &mut show);
    bar.finish_and_clear();
    let solution = solved.map_err(|e| format!("{e} (in `{}`)", args.inputs.display()))?;
    for note in &solution.notes {
        eprintln!("note: {note}");
    }
    write_outputs(&solution, args, device)?;
    let summary = summarize(&solution, device);
    eprintln!("{}", summary.text);
    if args.json {
        crate::write_stdout(format_args!("{}", summary.json), true);
    }
    Ok(if solution.converged() == solution.items {
        0
    } else {
        1
    })
}

/// Refuses outputs that would replace the inputs or each other.
fn refuse_overwrites(args: &MinimizeArgs) -> Result<(), String> {
    let mut outputs = vec![("--out", args.out.as_path())];
    outputs.extend(args.report.as_deref().map(|r| ("--report", r)));
    super::refuse_overwrites(&args.inputs, &outputs)
}

/// Writes the solutions (float32 from the CPU path and the GPU, float64 from the reference)
/// and the report, both or neither.
fn write_outputs(solution: &Solution, args: &MinimizeArgs, device: Device) -> Result<(), String> {
    let mut shape = vec![solution.items];
    shape.extend(&solution.item_shape);
    let staged_solution = match device {
        Device::Cpu | Device::Gpu => {
            let points: Vec<f32> = solution.points.iter().map(|&v| v as f32).collect();
            stage_npy(&args.out, &shape, &points)
        }
        Device::Reference => stage_npy(&args.out, &shape, &solution.points),
    }
    .map_err(|e| e.to_string())?;
    let staged_report = match &args.report {
        Some(path) => {
            let status: Vec<i32> = solution.reports.iter().map(|r| r.status.code()).collect();
            let iterations: Vec<i32> = solution
                .reports
                .iter()
                .map(|r| r.iterations as i32)
                .collect();
            let value: Vec<f64> = solution.reports.iter().map(|r| r.value).collect();
            let norm: Vec<f64> = solution.reports.iter().map(|r| r.gradient_norm).collect();
            let items = [solution.items];
            Some(
                stage_npz(
                    path,
                    &[
                        ("status", &items, Column::I32(&status)),
                        ("iterations", &items, Column::I32(&iterations)),
                        ("value", &items, Column::F64(&value)),
                        ("gradient_norm", &items, Column::F64(&norm)),
                    ],
                )
                .map_err(|e| e.to_string())?,
            )
        }
        None => None,
    };
    staged_solution.commit().map_err(|e| e.to_string())?;
    if let Some(report) = staged_report {
        report.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

struct Summary {
    text: String,
    json: String,
}

fn summarize(solution: &Solution, device: Device) -> Summary {
    let mut iterations: Vec<u32> = solution.reports.iter().map(|r| r.iterations).collect();
    iterations.sort_unstable();
    let median = iterations[iterations.len() / 2];
    let (min, max) = (iterations[0], iterations[iterations.len() - 1]);
    let worst = solution
        .reports
        .iter()
        .map(|r| r.gradient_norm)
        .fold(0.0f64, |a, b| if b.is_nan() || b > a { b } else { a });
    let count = |s: Status| solution.reports.iter().filter(|r| r.status == s).count();
    let device_name = match device {
        Device::Cpu => "cpu",
        Device::Gpu => "gpu",
        Device::Reference => "reference",
    };
    let mut text = format!(
        "minimize ({}, {device_name}): {} of {} items converged; worst gradient norm {worst:.3e}; \
         iterations min/median/max {min}/{median}/{max}; {} rounds; {:.3} s",
        solution.method.name(),
        solution.converged(),
        solution.items,
        solution.rounds,
        solution.solve_seconds
    );
    if let Some(t) = &solution.transfers {
        text += &format!(
            "\n  host<->device: {} bytes before the first round, {} per round at most ({} in \
             {} rounds), {} after",
            t.before_bytes, t.round_max_bytes, t.rounds_bytes, solution.rounds, t.after_bytes
        );
    }
    for status in [Status::MaxIter, Status::LineSearchFailed, Status::NotFinite] {
        let n = count(status);
        if n > 0 {
            let first: Vec<String> = solution
                .reports
                .iter()
                .enumerate()
                .filter(|(_, r)| r.status == status)
                .take(5)
                .map(|(i, _)| i.to_string())
                .collect();
            text += &format!(
                "\n  {n} items: {} (first: {})",
                status.name(),
                first.join(", ")
            );
        }
    }
    let json = json!({
        "method": solution.method.name(),
        "device": device_name,
        "items": solution.items,
        "converged": solution.converged(),
        "max_iter": count(Status::MaxIter),
        "line_search_failed": count(Status::LineSearchFailed),
        "not_finite": count(Status::NotFinite),
        "max_gradient_norm": worst,
        "iterations_min": min,
        "iterations_median": median,
        "iterations_max": max,
        "rounds": solution.rounds,
        "shared_hessian": solution.shared_hessian,
        "solve_seconds": solution.solve_seconds,
        "transfer_bytes": solution.transfers.map(|t| json!({
            "before": t.before_bytes,
            "rounds": t.rounds_bytes,
            "round_max": t.round_max_bytes,
            "after": t.after_bytes,
        })),
    })
    .to_string();
    Summary { text, json }
}

/// What `matgrad bench --minimize-workloads` was asked.
pub struct MinimizeBenchArgs {
    /// The workloads by id (all when empty).
    pub only: Vec<String>,
    /// The batch size (each workload's own when `None`).
    pub batch: Option<usize>,
    pub samples: usize,
    pub json: bool,
    /// `cpu`, `gpu`, or `all`: the CPU path and a hardware GPU when one opens (a software
    /// adapter such as lavapipe only with `gpu`: it is for correctness, not speed).
    pub device: super::bench::BenchDevice,
    pub adapter: Option<String>,
}

/// The devices `bench --minimize-workloads` times (the GPU's context opened once, so that
/// its kernels are compiled once), or the exit status when `--device gpu` finds no adapter.
fn bench_devices(
    args: &MinimizeBenchArgs,
) -> Result<Vec<(Device, Option<matgrad::gpu::GpuContext>)>, u8> {
    use super::bench::BenchDevice;
    let mut devices = Vec::new();
    if args.device != BenchDevice::Gpu {
        devices.push((Device::Cpu, None));
    }
    if args.device != BenchDevice::Cpu {
        let choice = super::adapter_choice(args.adapter.clone());
        match matgrad::gpu::GpuContext::new(&matgrad::executor::gpu_options(choice.as_ref())) {
            Ok(ctx) if args.device == BenchDevice::All && ctx.adapter().device_type == "Cpu" => {
                eprintln!(
                    "note: leaving out the software adapter `{}` (for correctness, not speed; \
                     `--device gpu` times it)",
                    ctx.adapter().name
                );
            }
            Ok(ctx) => devices.push((Device::Gpu, Some(ctx))),
            Err(e) if args.device == BenchDevice::Gpu => {
                errorln!("{e}");
                return Err(2);
            }
            Err(e) => eprintln!("note: {e}; timing the CPU path only"),
        }
    }
    Ok(devices)
}

/// Times O1–O5 on the CPU path and the GPU: the median of `samples` solves after one
/// warm-up, each solve's answer checked in float64 first (the worst item's projected
/// gradient within the workloads' tolerance, 1e-3 relative) so that only a converged solve's
/// time counts. The solver itself stops at half that (5e-4, in float32), so that its own
/// rounding does not put an item just over the line in the float64 check.
pub fn bench_minimize(args: MinimizeBenchArgs) -> u8 {
    use matgrad::workloads::{minimize_inputs, MINIMIZE_WORKLOADS};
    let known: Vec<&str> = MINIMIZE_WORKLOADS.iter().map(|w| w.short_id()).collect();
    if let Some(unknown) = args.only.iter().find(|id| !known.contains(&id.as_str())) {
        errorln!(
            "`--only`: no workload `{unknown}` (the minimize workloads are {})",
            known.join(", ")
        );
        return 2;
    }

    let devices = match bench_devices(&args) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let mut failed = false;
    for (w, (device, gpu)) in MINIMIZE_WORKLOADS
        .iter()
        .filter(|w| args.only.is_empty() || args.only.iter().any(|id| id == w.short_id()))
        .flat_map(|w| devices.iter().map(move |d| (w, d)))
    {
        let device = *device;
        let batch = args.batch.unwrap_or(w.batch);
        let bytes = batch as f64 * 64.0 * 16.0 * 8.0 * 3.0;
        if let Err(message) = matgrad::batch::fits_in_memory(bytes, "this batch") {
            errorln!("{message}");
            return 2;
        }
        let inputs = minimize_inputs(w, batch);
        let objective = check_program(w.program)
            .and_then(|p| Objective::new(p, w.wrt))
            .expect("workloads derive");
        let mut options = Options::for_device(device);
        options.gtol = 5e-4;
        options.lower = w.lower.map(BoundSpec::Number);

        // One warm-up solve, then the samples, by the rule every benchmark uses.
        let config = matgrad::bench::BenchConfig {
            samples: args.samples,
            min_seconds: 0.0,
        };
        let mut last = None;
        let sampled = matgrad::bench::sample(&config, || {
            let s = match gpu {
                Some(ctx) => matgrad::minimize::minimize_on_gpu(
                    &objective,
                    &inputs,
                    &options,
                    ctx,
                    &mut |_| {},
                )?,
                None => matgrad::minimize::minimize(&objective, &inputs, &options, device)?,
            };
            let seconds = s.solve_seconds;
            last = Some(s);
            Ok::<_, matgrad::minimize::MinimizeError>((seconds, seconds))
        });
        let (median, samples) = match sampled {
            Ok((median, _, samples)) => (median, samples),
            Err(e) => {
                errorln!("{}: {e}", w.id);
                return 2;
            }
        };
        let solution = last.expect("at least one solve");
        let worst = matgrad::minimize::stationarity(&objective, &inputs, &options, &solution)
            .map(|v| {
                v.into_iter()
                    .fold(0.0f64, |a, b| if b.is_nan() || b > a { b } else { a })
            })
            .unwrap_or(f64::NAN);
        let converged = worst <= 1e-3;
        failed |= !converged;
        let summary = summarize(&solution, device);
        if args.json {
            let mut value: serde_json::Value =
                serde_json::from_str(&summary.json).unwrap_or_default();
            value["workload"] = json!(w.id);
            value["median_s"] = json!(median);
            value["samples"] = json!(samples);
            value["float64_worst_stationarity"] = json!(worst);
            value["answer_checked"] = json!(converged);
            crate::write_stdout(format_args!("{value}"), true);
        } else {
            crate::write_stdout(
                format_args!(
                    "{:<22} B={batch:<7} {:>9.4} s median of {}  ({:.3e} items/s)  {}  float64 check {worst:.1e} {}",
                    w.id,
                    median,
                    samples,
                    batch as f64 / median,
                    summary.text.lines().next().unwrap_or(""),
                    if converged { "ok" } else { "FAILED (time does not count)" }
                ),
                true,
            );
        }
    }
    u8::from(failed)
}
