//! The `matgrad` command line: turns library results and errors into output and exit codes.
//!
//! Exit status: 0 success, 1 a check failed, 2 bad input or usage or output that cannot be
//! written, 141 when standard output's reader went away. Errors in a program are printed with
//! the program and a caret under the offending span. Results go to standard output through
//! `outln!`/`out!` ([`write_stdout`]), never `println!`, which panics when it cannot write.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// `println!` for this binary's results: see [`write_stdout`].
macro_rules! outln {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*), true) };
}

/// `print!` for this binary's results: see [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*), false) };
}

/// `eprintln!("error: ...")` with control characters shown escaped: an error often quotes what
/// the user typed (a name, a path, a bound), and raw escape sequences must not reach the
/// terminal.
macro_rules! errorln {
    ($($arg:tt)*) => {
        eprintln!("error: {}", matgrad::diagnostic::escape_controls(&format!($($arg)*)))
    };
}

mod cli;
use cli::bench as cli_bench;
use serde_json::json;

use std::path::Path;

use matgrad::batch::{bind, non_finite_items, run_reference, Batch};
use matgrad::catalog::{self, Verdict};
use matgrad::check::{batched_flags, run_check, sizes_with, to_f32, CheckConfig, DeviceReport};
use matgrad::cpu::run_cpu;
use matgrad::diagnostic::Diagnostic;
use matgrad::diff::{differentiate, Derivative, Kind, Layout, Request};
use matgrad::gpu::{list_adapters, run_gpu, GpuContext, GpuError, GpuOptions};
use matgrad::npy::read_npz;
use matgrad::plan::Plan;
use matgrad::print::{self, Format};
use matgrad::types::check_program;

#[derive(Parser)]
#[command(
    name = "matgrad",
    version,
    about = "Closed-form matrix-calculus derivatives, checked by computation"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Derivative of an expression: gradient (scalar by anything), Jacobian (vector by
    /// vector) or derivative by a scalar.
    Grad {
        /// The program: optional declarations, then the expression, e.g.
        /// "A: matrix(m,n); x: vector(n); (A*x+b)'*(A*x+b)".
        #[arg(allow_hyphen_values = true)]
        program: String,
        /// The variable to differentiate by.
        #[arg(long)]
        wrt: String,
        #[arg(long, value_enum, default_value_t = LayoutArg::Gradient)]
        layout: LayoutArg,
        #[arg(long, value_enum, default_value_t = FormatArg::Text)]
        format: FormatArg,
    },
    /// Hessian of a scalar expression by a vector (or scalar) variable.
    Hessian {
        /// The program: optional declarations, then the expression.
        #[arg(allow_hyphen_values = true)]
        program: String,
        /// The variable to differentiate by.
        #[arg(long)]
        wrt: String,
        /// Print the Hessian-vector product with a new vector of this name instead.
        #[arg(long, value_name = "NAME")]
        times: Option<String>,
        #[arg(long, value_enum, default_value_t = FormatArg::Text)]
        format: FormatArg,
    },
    /// Evaluate a derivative for a whole batch of inputs from a NumPy .npz file.
    Eval {
        /// The program: optional declarations, then the expression.
        #[arg(allow_hyphen_values = true)]
        program: String,
        /// The variable to differentiate by.
        #[arg(long)]
        wrt: String,
        /// One array per variable; one more leading axis than the variable's rank = batched.
        #[arg(long, value_name = "FILE.npz")]
        inputs: PathBuf,
        /// The derivative, shape (B, ...) when any input is batched.
        #[arg(long, value_name = "FILE.npy")]
        out: PathBuf,
        #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
        device: DeviceArg,
        /// A part of the GPU adapter's name (see `matgrad devices`).
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
        /// The Hessian instead of the first derivative.
        #[arg(long)]
        hessian: bool,
        #[arg(long, value_enum, default_value_t = LayoutArg::Gradient)]
        layout: LayoutArg,
        /// Also write the function values.
        #[arg(long, value_name = "FILE.npy")]
        value_out: Option<PathBuf>,
    },
    /// Check a derivative on random batches: every device against the float64 reference,
    /// and the reference against finite differences.
    Check {
        /// The program: optional declarations, then the expression.
        #[arg(allow_hyphen_values = true)]
        program: String,
        /// The variable to differentiate by.
        #[arg(long)]
        wrt: String,
        /// Dimension sizes, e.g. m=4,n=3 (declared sizes are kept).
        #[arg(long, value_delimiter = ',', value_name = "NAME=SIZE")]
        dims: Vec<String>,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Batched variables (default: the --wrt variable); the others are shared.
        #[arg(long, value_delimiter = ',', value_name = "VAR")]
        batched: Vec<String>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        hessian: bool,
        #[arg(long)]
        json: bool,
        /// A part of the GPU adapter's name (see `matgrad devices`).
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
    },
    /// Show the derived formula, the plan the cost model chose (once per batch and per
    /// item), its operations and bytes, and the GPU kernel.
    Explain {
        /// The program: optional declarations, then the expression.
        #[arg(allow_hyphen_values = true)]
        program: String,
        /// The variable to differentiate by.
        #[arg(long)]
        wrt: String,
        /// Dimension sizes, e.g. m=4,n=3 (declared sizes are kept; the rest default to 3, 4, 2, …).
        #[arg(long, value_delimiter = ',', value_name = "NAME=SIZE")]
        dims: Vec<String>,
        /// Batched variables (default: the --wrt variable); the others are shared.
        #[arg(long, value_delimiter = ',', value_name = "VAR")]
        batched: Vec<String>,
        #[arg(long)]
        hessian: bool,
        /// Also print the generated WGSL.
        #[arg(long)]
        wgsl: bool,
    },
    /// List the GPU adapters with their type and the limits that matter.
    Devices {
        #[arg(long)]
        json: bool,
        /// Measure the CPU's and each adapter's copy bandwidth and float32 multiply-add rate.
        #[arg(long)]
        measure: bool,
        /// With --measure: only the adapter whose name contains NAME.
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
    },
    /// Time evaluations of a derivative over whole batches: median seconds per batch (data
    /// resident, and end to end), items/s, GFLOP/s and GB/s from the plan's counts, and the
    /// fraction of the device's measured ceilings.
    Bench {
        /// The program (omit with --workloads).
        #[arg(allow_hyphen_values = true)]
        program: Option<String>,
        /// The variable to differentiate by.
        #[arg(long)]
        wrt: Option<String>,
        /// Dimension sizes, e.g. m=4,n=3 (declared sizes are kept; the rest default to 3, 4, 2, …).
        #[arg(long, value_delimiter = ',', value_name = "NAME=SIZE")]
        dims: Vec<String>,
        /// Batch sizes; several make a sweep (default 65536, or each workload's own).
        #[arg(long, value_delimiter = ',', value_name = "B")]
        batch: Vec<usize>,
        /// Batched variables (default: the --wrt variable); the others are shared.
        #[arg(long, value_delimiter = ',', value_name = "VAR")]
        batched: Vec<String>,
        #[arg(long, value_enum, default_value_t = cli_bench::BenchDevice::All)]
        device: cli_bench::BenchDevice,
        /// One JSON object per measurement (`median_s` is compute only, in seconds).
        #[arg(long)]
        json: bool,
        /// Write an SVG chart of items/s against batch size.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
        /// The six standard workloads of shared/workloads.md.
        #[arg(long)]
        workloads: bool,
        /// The five batch-optimization workloads (O1–O5) on the CPU path: time until every
        /// item has converged, each answer checked in float64.
        #[arg(long, conflicts_with_all = ["workloads", "program"])]
        minimize_workloads: bool,
        /// With --workloads or --minimize-workloads: only these, by id (e.g. W1,W6 or O2).
        #[arg(long, value_delimiter = ',', value_name = "ID")]
        only: Vec<String>,
        /// Timed runs per measurement, at least.
        #[arg(long, default_value_t = 10)]
        samples: usize,
        /// Keep timing until this many seconds have passed (at most 1000 runs).
        #[arg(long, default_value_t = 0.5, value_name = "SECONDS")]
        min_time: f64,
        /// A part of the GPU adapter's name (see `matgrad devices`).
        #[arg(long, value_name = "NAME")]
        adapter: Option<String>,
        /// Skip measuring the devices' ceilings (no fractions of peak).
        #[arg(long)]
        no_ceilings: bool,
        /// The CPU path's instruction set: avx512, avx2 or portable (default: the widest this
        /// CPU runs), for studies of what the vector width gives.
        #[arg(long, value_name = "ISA")]
        cpu_isa: Option<String>,
    },
    /// Minimize a scalar objective for every item of a batch: one independent problem per
    /// item, with closed-form Newton steps, L-BFGS, Gauss-Newton or gradient descent.
    Minimize {
        /// The program: optional declarations, then the scalar objective.
        #[arg(allow_hyphen_values = true)]
        program: String,
        /// The variable to optimize; the others are data, shared or batched as for `eval`.
        #[arg(long)]
        wrt: String,
        /// The data, and optionally the start (an array named like the variable; default 0).
        #[arg(long, value_name = "FILE.npz")]
        inputs: PathBuf,
        /// The solutions, shape (B, *variable shape).
        #[arg(long, value_name = "FILE.npy")]
        out: PathBuf,
        /// auto, newton, lbfgs, gauss-newton or gd.
        #[arg(long, default_value = "auto")]
        method: String,
        /// A lower bound: a number, or the name of an array in the inputs.
        #[arg(long, value_name = "L", allow_hyphen_values = true)]
        lower: Option<String>,
        /// An upper bound: a number, or the name of an array in the inputs.
        #[arg(long, value_name = "U", allow_hyphen_values = true)]
        upper: Option<String>,
        /// Converged when the projected gradient's infinity norm is at most gtol*max(1,|f|).
        #[arg(long, default_value_t = 1e-5)]
        gtol: f64,
        /// Converged when a step decreases f by at most ftol*max(1,|f|) (default: four units
        /// of the device's rounding).
        #[arg(long)]
        ftol: Option<f64>,
        #[arg(long, default_value_t = 200)]
        max_iter: u32,
        /// L-BFGS history length.
        #[arg(long, default_value_t = 10)]
        memory: usize,
        /// auto, cpu (float32), reference (float64); gpu is not available for minimize yet.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Per-item status (0 converged, 1 max-iter, 2 line search failed, 3 not finite),
        /// iterations, final objective and projected-gradient norm, as an .npz.
        #[arg(long, value_name = "FILE.npz")]
        report: Option<PathBuf>,
        /// Print the summary as one JSON object on standard output.
        #[arg(long)]
        json: bool,
    },
    /// Decide every seed identity by computation.
    Catalog {
        /// One JSON object per variant, as a JSON array.
        #[arg(long)]
        json: bool,
        /// The base seed of the random points.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum DeviceArg {
    /// float64, item by item: the ground truth.
    Reference,
    /// float32, multithreaded.
    Cpu,
    /// float32, WGSL compute shaders through wgpu.
    Gpu,
    /// The GPU when an adapter exists, else the CPU path.
    Auto,
}

#[derive(Clone, Copy, ValueEnum)]
enum LayoutArg {
    Gradient,
    Numerator,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Unicode,
    Latex,
    Json,
}

impl FormatArg {
    fn format(self) -> Format {
        match self {
            FormatArg::Text => Format::Text,
            FormatArg::Unicode => Format::Unicode,
            FormatArg::Latex => Format::Latex,
            FormatArg::Json => Format::Json,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Deeply nested programs recurse deeply; give the work a generous stack.
    let worker = std::thread::Builder::new()
        .stack_size(256 * 1024 * 1024)
        .spawn(move || run(cli));
    match worker.map(|handle| handle.join()) {
        Ok(Ok(code)) => ExitCode::from(code),
        _ => {
            errorln!("internal error in matgrad (this is a bug; please report the input)");
            ExitCode::from(101)
        }
    }
}

/// Standard output closed at start (`matgrad catalog >&-`): Rust's runtime puts `/dev/null`
/// on the closed descriptor (read-write, which no shell redirection `>` does), so that writes
/// would vanish and the command would report success. That case is recognised on Linux and
/// [`write_stdout`] reports it as an error instead. Looked at once, on the first write: the
/// descriptor does not change while matgrad runs, and commands that print nothing never ask.
fn stdout_closed() -> bool {
    static CLOSED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CLOSED.get_or_init(started_with_stdout_closed)
}

fn started_with_stdout_closed() -> bool {
    let to_null = std::fs::read_link("/proc/self/fd/1").is_ok_and(|p| p == Path::new("/dev/null"));
    let read_write = std::fs::read_to_string("/proc/self/fdinfo/1").is_ok_and(|info| {
        info.lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .is_some_and(|flags| flags & 0o3 == 0o2)
    });
    to_null && read_write
}

/// Writes to standard output. `println!` panics when it cannot; here a reader that went away
/// (`matgrad catalog | head -3`) ends the process quietly with the status a shell gives a
/// process killed by SIGPIPE (141), and any other failure (a full disk) ends it with a
/// message and status 2: a result that could not be written is never reported as success.
fn write_stdout(args: std::fmt::Arguments<'_>, newline: bool) {
    use std::io::Write;
    if stdout_closed() {
        errorln!("cannot write to standard output: it is closed");
        std::process::exit(2)
    }
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                stdout.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| stdout.flush());
    match written {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(141),
        Err(e) => {
            errorln!("cannot write to standard output: {e}");
            std::process::exit(2)
        }
    }
}

fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::Grad {
            program,
            wrt,
            layout,
            format,
        } => {
            let layout = match layout {
                LayoutArg::Gradient => Layout::Gradient,
                LayoutArg::Numerator => Layout::Numerator,
            };
            derive_and_print(
                &program,
                &wrt,
                &Request::Derivative,
                layout,
                format.format(),
            )
        }
        Command::Hessian {
            program,
            wrt,
            times,
            format,
        } => {
            let request = match times {
                Some(name) => Request::HessianTimes(name),
                None => Request::Hessian,
            };
            derive_and_print(&program, &wrt, &request, Layout::Gradient, format.format())
        }
        Command::Eval {
            program,
            wrt,
            inputs,
            out,
            device,
            adapter,
            hessian,
            layout,
            value_out,
        } => {
            let layout = match layout {
                LayoutArg::Gradient => Layout::Gradient,
                LayoutArg::Numerator => Layout::Numerator,
            };
            let derivative = match derive_or_report(&program, &wrt, hessian, layout) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let gpu = match device {
                DeviceArg::Gpu => match GpuContext::new(&GpuOptions {
                    adapter,
                    ..GpuOptions::default()
                }) {
                    Ok(ctx) => Some(ctx),
                    Err(e) => {
                        errorln!("{e}");
                        return 2;
                    }
                },
                DeviceArg::Auto => gpu_if_any(adapter),
                _ => None,
            };
            match run_eval(
                &derivative,
                &inputs,
                &out,
                device,
                gpu.as_ref(),
                value_out.as_deref(),
            ) {
                Ok(()) => 0,
                Err(message) => {
                    errorln!("{message}");
                    2
                }
            }
        }
        Command::Check {
            program,
            wrt,
            dims,
            batch,
            batched,
            seed,
            hessian,
            json,
            adapter,
        } => {
            let derivative = match derive_or_report(&program, &wrt, hessian, Layout::Gradient) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let sizes = match parse_dims(&dims) {
                Ok(sizes) => sizes,
                Err(code) => return code,
            };
            if batch == 0 {
                errorln!("`--batch 0`: a batch has at least one item");
                return 2;
            }
            let batched = batched_or_wrt(batched, &wrt);
            let config = CheckConfig {
                dims: sizes,
                batch,
                batched,
                seed,
            };
            let gpu = gpu_if_any(adapter);
            match run_check(&derivative, &config, gpu.as_ref()) {
                Ok(checked) => {
                    if let Some(sizes) = &checked.other_sizes {
                        eprintln!(
                            "note: no random point was inside the function's domain at the \
                             default sizes; checked at {sizes}"
                        );
                    }
                    if let Some(how) = &checked.draw_note {
                        eprintln!("note: {how}");
                    }
                    if let Some(how) = &checked.probe_note {
                        eprintln!("note: {how}");
                    }
                    if let Some(why) = &checked.gpu_skipped {
                        eprintln!("note: the GPU is not compared: {why}");
                    }
                    print_check(&derivative, &checked.reports, json)
                }
                Err(e) => report(&e, &program),
            }
        }
        Command::Catalog { json, seed } => run_catalog(json, seed),
        Command::Minimize {
            program,
            wrt,
            inputs,
            out,
            method,
            lower,
            upper,
            gtol,
            ftol,
            max_iter,
            memory,
            device,
            report: report_path,
            json,
        } => cli::minimize::run_minimize(
            cli::minimize::MinimizeArgs {
                program,
                wrt,
                inputs,
                out,
                method,
                lower,
                upper,
                gtol,
                ftol,
                max_iter,
                memory,
                device,
                report: report_path,
                json,
            },
            report,
        ),
        Command::Devices {
            json,
            measure: true,
            adapter,
        } => cli_bench::measure_devices(json, adapter),
        Command::Devices { json, .. } => list_devices(json),
        Command::Bench {
            program,
            wrt,
            dims,
            batch,
            batched,
            device,
            json,
            plot,
            workloads,
            minimize_workloads,
            only,
            samples,
            min_time,
            adapter,
            no_ceilings,
            cpu_isa,
        } => {
            if let Err(message) = matgrad::bench::check_sampling(samples, min_time) {
                errorln!("{message}");
                return 2;
            }
            if minimize_workloads {
                if batch.len() > 1 {
                    errorln!("--minimize-workloads takes one --batch size");
                    return 2;
                }
                return cli::minimize::bench_minimize(cli::minimize::MinimizeBenchArgs {
                    only,
                    batch: batch.first().copied(),
                    samples,
                    json,
                });
            }
            if !only.is_empty() && !workloads {
                errorln!("`--only` needs --workloads or --minimize-workloads");
                return 2;
            }
            let dims = match parse_dims(&dims) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let batched = match &wrt {
                Some(w) => batched_or_wrt(batched, w),
                None => batched,
            };
            cli_bench::run_bench(cli_bench::BenchArgs {
                program,
                wrt,
                dims,
                batches: batch,
                batched,
                device,
                json,
                plot,
                workloads,
                only,
                config: matgrad::bench::BenchConfig {
                    samples,
                    min_seconds: min_time,
                },
                adapter,
                ceilings: !no_ceilings,
                cpu_isa,
            })
        }
        Command::Explain {
            program,
            wrt,
            dims,
            batched,
            hessian,
            wgsl,
        } => {
            let derivative = match derive_or_report(&program, &wrt, hessian, Layout::Gradient) {
                Ok(d) => d,
                Err(code) => return code,
            };
            let sizes = match parse_dims(&dims) {
                Ok(sizes) => sizes,
                Err(code) => return code,
            };
            let batched = batched_or_wrt(batched, &wrt);
            match explain_plan(&derivative, &sizes, &batched, wgsl) {
                Ok(text) => {
                    out!("{text}");
                    0
                }
                Err(e) => report(&e, &program),
            }
        }
    }
}

/// `matgrad explain`: the plan for the given sizes and batched variables, and its kernel.
fn explain_plan(
    d: &Derivative,
    dims: &HashMap<String, usize>,
    batched: &[String],
    wgsl: bool,
) -> Result<String, Diagnostic> {
    let g = &d.program.graph;
    let sizes = sizes_with(g, dims)?;
    let flags = batched_flags(g, batched)?;
    let plan = Plan::new(g, &[d.node], &sizes, &flags)
        .map_err(|e| Diagnostic::without_span(e.to_string()))?;
    // Sizes past what a GPU kernel indexes still have a CPU plan to explain.
    let kernel = match matgrad::wgsl::generate(&plan) {
        Ok(kernel) => Some(kernel),
        Err(e @ matgrad::wgsl::GenerateError::TooLarge { .. }) if !wgsl => {
            eprintln!("note: no GPU kernel: {e}");
            None
        }
        Err(e) => return Err(Diagnostic::without_span(e.to_string())),
    };
    let mut text = matgrad::explain::explain(d, &plan, kernel.as_ref());
    if let (true, Some(kernel)) = (wgsl, &kernel) {
        text.push('\n');
        text.push_str(&kernel.source());
    }
    Ok(text)
}

/// `NAME=SIZE` pairs from `--dims`; a malformed one is reported, giving the exit status.
fn parse_dims(dims: &[String]) -> Result<HashMap<String, usize>, u8> {
    let mut sizes = HashMap::new();
    for entry in dims {
        match entry
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim().parse::<usize>()))
        {
            Some((name, Ok(size))) => {
                if let Some(earlier) = sizes.insert(name.to_string(), size) {
                    errorln!(
                        "`--dims`: `{name}` is given twice ({name}={earlier} and \
                         {name}={size})"
                    );
                    return Err(2);
                }
            }
            _ => {
                errorln!("`--dims {entry}`: expected NAME=SIZE, e.g. m=4");
                return Err(2);
            }
        }
    }
    Ok(sizes)
}

/// Checks and differentiates a program; a bad one is reported, giving the exit status.
fn derive_or_report(
    program: &str,
    wrt: &str,
    hessian: bool,
    layout: Layout,
) -> Result<Derivative, u8> {
    let request = if hessian {
        Request::Hessian
    } else {
        Request::Derivative
    };
    check_program(program)
        .and_then(|p| differentiate(p, wrt, &request, layout))
        .map_err(|e| report(&e, program))
}

/// The batched variables `--batched` names, by default the `--wrt` variable alone.
fn batched_or_wrt(batched: Vec<String>, wrt: &str) -> Vec<String> {
    if batched.is_empty() {
        vec![wrt.to_string()]
    } else {
        batched
    }
}

/// The GPU when an adapter exists (saying on stderr which), else `None` with a note.
fn gpu_if_any(adapter: Option<String>) -> Option<GpuContext> {
    match GpuContext::new(&GpuOptions {
        adapter,
        ..GpuOptions::default()
    }) {
        Ok(ctx) => {
            let a = ctx.adapter();
            eprintln!(
                "note: using GPU adapter `{}` ({}, {})",
                a.name, a.backend, a.device_type
            );
            Some(ctx)
        }
        Err(e) => {
            eprintln!("note: {e}; using the CPU path");
            None
        }
    }
}

fn list_devices(json: bool) -> u8 {
    let adapters = list_adapters();
    if json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&adapters).unwrap_or_default()
        );
        return 0;
    }
    if adapters.is_empty() {
        outln!("no GPU adapters; for a software Vulkan adapter install Mesa's lavapipe (apt-get install mesa-vulkan-drivers libvulkan1)");
    }
    for a in &adapters {
        outln!("{} ({}, {})", a.name, a.backend, a.device_type);
        outln!("    driver: {}", a.driver);
        outln!(
            "    max storage binding {} MiB, max buffer {} MiB, {} workgroups per dimension, {} invocations per workgroup, timestamp queries: {}",
            a.max_storage_buffer_binding_size >> 20,
            a.max_buffer_size >> 20,
            a.max_compute_workgroups_per_dimension,
            a.max_compute_invocations_per_workgroup,
            if a.timestamp_queries { "yes" } else { "no" }
        );
    }
    0
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
    cli::refuse_overwrites(inputs, &outputs)?;
    let arrays = read_npz(inputs).map_err(|e| e.to_string())?;
    let reads = g.vars_in(d.program.root);
    let bound = bind(g, &reads, &arrays).map_err(|e| format!("{e} (in `{}`)", inputs.display()))?;
    cli::warn_unused(&bound.unused, inputs);
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
            cli::warn_float32_range(&arrays, inputs);
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

fn print_check(d: &Derivative, reports: &[DeviceReport], json: bool) -> u8 {
    // Nothing compared proves nothing: the check fails (a device with no item to compare
    // against a reference that has none is not "ok").
    let passed = reports.iter().all(|r| r.passed && r.items_compared > 0);
    if json {
        let value = json!({"derivative": d.text(), "passed": passed, "devices": reports});
        outln!("{}", print::pretty_json(&value));
    } else {
        outln!("derivative: {}", d.text());
        for r in reports {
            let mut skipped = String::new();
            if r.items_cancelled > 0 {
                skipped += &format!(
                    ", {} cancelled to float32 noise and held to it",
                    r.items_cancelled
                );
            }
            if r.items_ill_conditioned > 0 {
                skipped += &format!(
                    ", {} ill-conditioned in float32 left out",
                    r.items_ill_conditioned
                );
            }
            if r.items_compared == 0 {
                outln!(
                    "{:<10} vs {:<19} nothing compared (0 items{skipped}): FAILED",
                    r.device,
                    r.against
                );
                continue;
            }
            outln!(
                "{:<10} vs {:<19} max relative error {:.3e} (tolerance {:.0e}, {} items{skipped}): {}",
                r.device,
                r.against,
                r.max_rel_error,
                r.tolerance,
                r.items_compared,
                if r.passed { "ok" } else { "FAILED" }
            );
        }
        if reports.first().is_some_and(|r| r.items_compared == 0) {
            errorln!(
                "no random point gave a finite value, derivative and finite differences \
                 (a `log`, `logdet` or `inv` outside its domain at every point?); tried \
                 standard normal inputs, positive inputs (|z|/2+0.1), and mixes of the two \
                 input by input, each with the shared inputs redrawn\n\
                 help: other sizes (`--dims`) or another `--seed` may give points inside it"
            );
        }
    }
    u8::from(!passed)
}

fn derive_and_print(
    source: &str,
    wrt: &str,
    request: &Request,
    layout: Layout,
    format: Format,
) -> u8 {
    let derivative = check_program(source).and_then(|p| differentiate(p, wrt, request, layout));
    match derivative {
        Ok(d) => {
            outln!("{}", render(&d, format));
            0
        }
        Err(e) => report(&e, source),
    }
}

fn render(d: &Derivative, format: Format) -> String {
    let g = &d.program.graph;
    if format != Format::Json {
        return print::render(g, d.node, format);
    }
    let kind = match d.kind {
        Kind::Gradient => "gradient",
        Kind::Jacobian => "jacobian",
        Kind::ByScalar => "derivative by a scalar",
        Kind::Hessian => "hessian",
        Kind::HessianVector => "hessian-vector product",
    };
    let value = json!({
        "wrt": g.vars[d.wrt as usize].name,
        "kind": kind,
        "layout": match d.layout { Layout::Gradient => "gradient", Layout::Numerator => "numerator" },
        "shape": g.describe_shape(d.shape()),
        "text": print::text(g, d.node),
        "unicode": print::render(g, d.node, Format::Unicode),
        "latex": print::render(g, d.node, Format::Latex),
        "tree": print::json_tree(g, d.node),
    });
    print::pretty_json(&value)
}

fn report(e: &Diagnostic, source: &str) -> u8 {
    eprint!("{}", e.render(source));
    2
}

fn run_catalog(json: bool, seed: u64) -> u8 {
    let reports = catalog::run(seed);
    let failed = reports.iter().any(|r| {
        matches!(
            r.verdict,
            Verdict::MatgradWrong { .. } | Verdict::Unsupported { .. }
        )
    });
    if json {
        outln!("{}", print::pretty_json(&reports));
        return u8::from(failed);
    }
    for r in &reports {
        let condition = if r.condition.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.condition)
        };
        let kind = if r.kind == "hessian" {
            "Hessian of "
        } else {
            ""
        };
        let layout = if r.layout == "numerator" {
            " (numerator layout)"
        } else {
            ""
        };
        outln!(
            "{:<4} {kind}{} by {}{condition}{layout}: {}",
            r.id,
            r.function,
            r.wrt,
            r.verdict.label()
        );
        match &r.verdict {
            Verdict::Agrees => outln!("       {}", r.derived),
            Verdict::PrintedFormulaWrong { why } => {
                outln!("       printed: {}   ({why})", r.printed);
                outln!("       correct: {}", r.derived);
            }
            Verdict::Unsupported { why } | Verdict::MatgradWrong { why } => {
                outln!("       {why}")
            }
        }
    }
    let count = |label: &str| {
        reports
            .iter()
            .filter(|r| r.verdict.label() == label)
            .count()
    };
    let mut entries: Vec<&str> = reports.iter().map(|r| r.id.as_str()).collect();
    entries.dedup();
    let mut wrong: Vec<&str> = reports
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::PrintedFormulaWrong { .. }))
        .map(|r| r.id.as_str())
        .collect();
    wrong.dedup();
    outln!(
        "\n{} entries, {} variants: {} agree, {} printed formula wrong, {} unsupported, {} matgrad wrong",
        entries.len(),
        reports.len(),
        count("agrees"),
        count("printed formula wrong"),
        count("unsupported"),
        count("matgrad wrong")
    );
    outln!("entries printed wrongly: {}", wrong.join(", "));
    u8::from(failed)
}
