//! `matgrad bench` and `matgrad devices --measure`: the command-line side of [`matgrad::bench`].
//!
//! In: a program (or `--workloads`), batch sizes, devices. Out: one line (or one JSON
//! object) per device and batch size, an optional SVG chart of the sweep, a progress bar on
//! stderr while it runs. Exit status 2 for bad input or a GPU that was asked for and is not
//! there.

use std::collections::HashMap;
use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressStyle};

use matgrad::batch::Batch;
use matgrad::bench::{
    bench_cpu, bench_gpu, measure_cpu, measure_gpu, svg_plot, BenchConfig, Ceilings, Measurement,
};
use matgrad::check::{batched_flags, sizes_with, to_f32};
use matgrad::cpu::Isa;
use matgrad::executor::gpu_options;
use matgrad::gpu::{list_adapters, GpuContext, GpuOptions};
use matgrad::plan::PlanError;
use matgrad::workloads::{prepare_derivative, try_prepare, Prepared, WORKLOADS};

/// Which devices `bench` measures.
#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum BenchDevice {
    Cpu,
    Gpu,
    /// The CPU and, when there is an adapter, the GPU.
    All,
}

/// What `matgrad bench` was asked.
pub struct BenchArgs {
    pub program: Option<String>,
    pub wrt: Option<String>,
    pub dims: HashMap<String, usize>,
    pub batches: Vec<usize>,
    pub batched: Vec<String>,
    pub device: BenchDevice,
    pub json: bool,
    pub plot: Option<PathBuf>,
    pub workloads: bool,
    /// With `workloads`: the ids to run (all when empty).
    pub only: Vec<String>,
    pub config: BenchConfig,
    pub adapter: Option<String>,
    pub ceilings: bool,
    /// The CPU's instruction set, by [`Isa::name`] (the widest it has when `None`).
    pub cpu_isa: Option<String>,
}

/// One program to measure: a label, and a way to prepare it for a batch size.
struct Case {
    label: String,
    batches: Vec<usize>,
    prepare: Box<dyn Fn(usize) -> Result<Prepared, PlanError>>,
}

/// `matgrad bench`, from its arguments to the exit status: the sampling limits checked, then
/// the optimization workloads, or the program or evaluation workloads.
pub fn bench(args: crate::BenchCommand) -> u8 {
    if let Err(message) = matgrad::bench::check_sampling(args.samples, args.min_time) {
        errorln!("{message}");
        return 2;
    }
    if args.minimize_workloads {
        if args.batch.len() > 1 {
            errorln!("--minimize-workloads takes one --batch size");
            return 2;
        }
        return super::minimize::bench_minimize(super::minimize::MinimizeBenchArgs {
            only: args.only,
            batch: args.batch.first().copied(),
            samples: args.samples,
            json: args.json,
            device: args.device,
            adapter: args.adapter,
        });
    }
    if !args.only.is_empty() && !args.workloads {
        errorln!("`--only` needs --workloads or --minimize-workloads");
        return 2;
    }
    let dims = match super::parse_dims(&args.dims) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let batched = match &args.wrt {
        Some(w) => super::batched_or_wrt(args.batched, w),
        None => args.batched,
    };
    run_bench(BenchArgs {
        program: args.program,
        wrt: args.wrt,
        dims,
        batches: args.batch,
        batched,
        device: args.device,
        json: args.json,
        plot: args.plot,
        workloads: args.workloads,
        only: args.only,
        config: matgrad::bench::BenchConfig {
            samples: args.samples,
            min_seconds: args.min_time,
        },
        adapter: args.adapter,
        ceilings: !args.no_ceilings,
        cpu_isa: args.cpu_isa,
    })
}

pub fn run_bench(args: BenchArgs) -> u8 {
    let isa = match cpu_isa(args.cpu_isa.as_deref()) {
        Ok(isa) => isa,
        Err(message) => {
            errorln!("{message}");
            return 2;
        }
    };
    let cases = match cases(&args) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let gpu = match args.device {
        BenchDevice::Cpu => None,
        BenchDevice::Gpu | BenchDevice::All => {
            match GpuContext::new(&gpu_options(
                super::adapter_choice(args.adapter.clone()).as_ref(),
            )) {
                Ok(ctx) => Some(ctx),
                Err(e) if args.device == BenchDevice::Gpu => {
                    errorln!("{e}");
                    return 2;
                }
                Err(e) => {
                    eprintln!("note: {e}; measuring the CPU only");
                    None
                }
            }
        }
    };
    let cpu = args.device != BenchDevice::Gpu;
    let (cpu_ceilings, gpu_ceilings) = if args.ceilings {
        eprintln!("measuring the devices' ceilings (copy bandwidth, float32 multiply-add rate)…");
        let c = cpu.then(|| measure_cpu(isa));
        let g = match &gpu {
            Some(ctx) => match measure_gpu(ctx) {
                Ok(c) => Some(c),
                Err(e) => {
                    errorln!("{e}");
                    return 2;
                }
            },
            None => None,
        };
        for c in c.iter().chain(&g) {
            if !args.json {
                print_ceilings(c);
            }
        }
        (c, g)
    } else {
        (None, None)
    };
    let devices = usize::from(cpu) + usize::from(gpu.is_some());
    let total: usize = cases.iter().map(|c| c.batches.len() * devices).sum();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut all = Vec::new();
    for case in &cases {
        for &batch in &case.batches {
            // A batch (or a size) too large for memory is refused before its inputs are made.
            let prepared = match (case.prepare)(batch) {
                Ok(prepared) => prepared,
                Err(e) => {
                    bar.finish_and_clear();
                    errorln!("{} at batch {batch}: {e}", case.label);
                    return 2;
                }
            };
            let inputs: Vec<Batch<f32>> = prepared.inputs.iter().map(to_f32).collect();
            let refs: Vec<&Batch<f32>> = inputs.iter().collect();
            let plan = &prepared.plan;
            let mut results = Vec::new();
            if cpu {
                bar.set_message(format!("{} cpu batch {batch}", case.label));
                let m = bench_cpu(
                    &case.label,
                    isa,
                    plan,
                    &refs,
                    batch,
                    &args.config,
                    cpu_ceilings.as_ref(),
                );
                results.push(m);
                bar.inc(1);
            }
            if let Some(ctx) = &gpu {
                bar.set_message(format!("{} gpu batch {batch}", case.label));
                match bench_gpu(
                    &case.label,
                    ctx,
                    plan,
                    &refs,
                    batch,
                    &args.config,
                    gpu_ceilings.as_ref(),
                ) {
                    Ok(m) => results.push(m),
                    Err(e) => {
                        bar.finish_and_clear();
                        errorln!("{} at batch {batch}: {e}", case.label);
                        return 2;
                    }
                }
                bar.inc(1);
            }
            for m in &results {
                bar.suspend(|| print_measurement(m, args.json));
            }
            all.extend(results);
        }
    }
    bar.finish_and_clear();
    if let Some(path) = &args.plot {
        let title = if args.workloads {
            "matgrad standard workloads".to_string()
        } else {
            cases.first().map(|c| c.label.clone()).unwrap_or_default()
        };
        if let Err(e) = std::fs::write(path, svg_plot(&title, &all)) {
            errorln!("cannot write `{}`: {e}", path.display());
            return 2;
        }
        eprintln!("wrote {}", path.display());
    }
    0
}

/// The programs to measure: the six workloads, or the one on the command line.
fn cases(args: &BenchArgs) -> Result<Vec<Case>, u8> {
    if args.workloads {
        if args.program.is_some() {
            errorln!("give either a program or --workloads, not both");
            return Err(2);
        }
        if let Some(unknown) = args
            .only
            .iter()
            .find(|id| !WORKLOADS.iter().any(|w| w.short_id() == id.as_str()))
        {
            let ids: Vec<&str> = WORKLOADS.iter().map(|w| w.short_id()).collect();
            errorln!(
                "`--only`: no workload `{unknown}` (the workloads are {})",
                ids.join(", ")
            );
            return Err(2);
        }
        return Ok(WORKLOADS
            .iter()
            .filter(|w| args.only.is_empty() || args.only.iter().any(|id| id == w.short_id()))
            .map(|w| Case {
                label: w.id.to_string(),
                batches: if args.batches.is_empty() {
                    vec![w.batch]
                } else {
                    args.batches.clone()
                },
                prepare: Box::new(move |batch| try_prepare(w, batch)),
            })
            .collect());
    }
    let (Some(program), Some(wrt)) = (&args.program, &args.wrt) else {
        errorln!("give a program and --wrt VAR, or --workloads");
        return Err(2);
    };
    if args.batches.contains(&0) {
        errorln!("`--batch`: batch sizes must be at least 1");
        return Err(2);
    }
    let derivative = super::derive_or_report(program, wrt, false, matgrad::diff::Layout::Gradient)?;
    let g = &derivative.program.graph;
    let report = |e: matgrad::diagnostic::Diagnostic| crate::report(&e, program);
    let sizes = sizes_with(g, &args.dims).map_err(report)?;
    let batched = batched_flags(g, &args.batched).map_err(report)?;
    // Plan once now, so that an unsized dimension is reported before any measuring.
    if let Err(e) = prepare_derivative(derivative.clone(), &sizes, &batched, 1, |_, m| m) {
        errorln!("{e}");
        return Err(2);
    }
    let batches = if args.batches.is_empty() {
        vec![65_536]
    } else {
        args.batches.clone()
    };
    Ok(vec![Case {
        label: derivative.text(),
        batches,
        prepare: Box::new(move |batch| {
            prepare_derivative(derivative.clone(), &sizes, &batched, batch, |_, m| m)
        }),
    }])
}

fn print_ceilings(c: &Ceilings) {
    outln!(
        "{}: copy {:.1} GB/s, float32 {:.1} GFLOP/s ({})",
        c.device,
        c.copy_bytes_per_s / 1e9,
        c.flops_per_s / 1e9,
        c.how
    );
}

fn print_measurement(m: &Measurement, json: bool) {
    if json {
        outln!("{}", serde_json::to_string(m).unwrap_or_default());
        return;
    }
    let of = |f: Option<f64>| {
        f.map(|f| format!(" ({:.0}%)", 100.0 * f))
            .unwrap_or_default()
    };
    outln!(
        "{:<20} {:<26} batch {:>8}  median {:>9}  end-to-end {:>9}  {:>7.2e} items/s  {:>7.1} GFLOP/s{}  {:>6.1} GB/s{}",
        m.label,
        m.device,
        m.batch,
        seconds(m.median_s),
        seconds(m.end_to_end_median_s),
        m.items_per_s,
        m.gflop_per_s,
        of(m.fraction_of_flops),
        m.gb_per_s,
        of(m.fraction_of_copy),
    );
}

fn seconds(s: f64) -> String {
    if s >= 1.0 {
        format!("{s:.3} s")
    } else if s >= 1e-3 {
        format!("{:.3} ms", s * 1e3)
    } else {
        format!("{:.1} µs", s * 1e6)
    }
}

/// The instruction set `--cpu-isa` names, or the widest this CPU runs; an error names the
/// ones it does run.
fn cpu_isa(name: Option<&str>) -> Result<Isa, String> {
    let Some(name) = name else {
        return Ok(Isa::fastest());
    };
    let names = |isas: &[Isa]| isas.iter().map(|i| i.name()).collect::<Vec<_>>().join(", ");
    match Isa::from_name(name) {
        Some(isa) if isa.is_available() => Ok(isa),
        Some(_) => Err(format!(
            "--cpu-isa {name}: this CPU does not run it; it runs {}",
            names(&Isa::available())
        )),
        None => Err(format!(
            "--cpu-isa {name}: unknown; the instruction sets are {}",
            names(&Isa::ALL)
        )),
    }
}

/// `matgrad devices --measure`: the CPU's and every adapter's ceilings.
pub fn measure_devices(json: bool, adapter: Option<String>) -> u8 {
    let mut all = vec![measure_cpu(Isa::fastest())];
    let names: Vec<String> = match adapter {
        Some(a) => vec![a],
        None => list_adapters().into_iter().map(|a| a.name).collect(),
    };
    let mut failed = false;
    for name in names {
        let measured = GpuContext::new(&GpuOptions {
            adapter: Some(name.clone()),
            ..GpuOptions::default()
        })
        .and_then(|ctx| measure_gpu(&ctx));
        match measured {
            Ok(c) => all.push(c),
            Err(e) => {
                errorln!("{name}: {e}");
                failed = true;
            }
        }
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&all).unwrap_or_default());
    } else {
        all.iter().for_each(print_ceilings);
    }
    if failed {
        2
    } else {
        0
    }
}
