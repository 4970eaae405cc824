//! The `matgrad` command line: the argument types, and how results and errors become output
//! and exit codes. Each subcommand's work is in its own file under `src/cli/` (`grad.rs` for
//! `grad` and `hessian`, `eval.rs`, `check.rs`, `explain.rs`, `devices.rs`, `bench.rs`,
//! `minimize.rs`, `catalog.rs`).
//!
//! Exit status: 0 success, 1 a check failed, 2 bad input or usage or output that cannot be
//! written, 141 when standard output's reader went away. Errors in a program are printed with
//! the program and a caret under the offending span. Results go to standard output through
//! `outln!`/`out!` ([`write_stdout`]), never `println!`, which panics when it cannot write.

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

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use matgrad::diagnostic::Diagnostic;
use matgrad::diff::Layout;
use matgrad::print::Format;

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
    Eval(EvalArgs),
    /// Check a derivative on random batches: every device against the float64 reference,
    /// and the reference against finite differences.
    Check(CheckArgs),
    /// Show the derived formula, the plan the cost model chose (once per batch and per
    /// item), its operations and bytes, and the GPU kernel.
    Explain(ExplainArgs),
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
    Bench(BenchCommand),
    /// Minimize a scalar objective for every item of a batch: one independent problem per
    /// item, with closed-form Newton steps, L-BFGS, Gauss-Newton or gradient descent.
    Minimize(MinimizeArgs),
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

/// What `matgrad minimize` is given.
#[derive(clap::Args)]
struct MinimizeArgs {
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
    /// The most iterations per item; an item that reaches it ends as max-iter.
    #[arg(long, default_value_t = 200)]
    max_iter: u32,
    /// L-BFGS history length.
    #[arg(long, default_value_t = 10)]
    memory: usize,
    /// auto (the CPU path), cpu (float32), gpu (float32, every item's state on the
    /// device) or reference (float64).
    #[arg(long, default_value = "auto")]
    device: String,
    /// With --device gpu: a part of the adapter's name, or its number, as `matgrad
    /// devices` lists them.
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
    /// Per-item status (0 converged, 1 max-iter, 2 line search failed, 3 not finite),
    /// iterations, final objective and projected-gradient norm, as an .npz.
    #[arg(long, value_name = "FILE.npz")]
    report: Option<PathBuf>,
    /// Print the summary as one JSON object on standard output.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct EvalArgs {
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
    /// A part of the GPU adapter's name, or its number, as `matgrad devices` lists them.
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
}

#[derive(clap::Args)]
struct CheckArgs {
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
    /// A part of the GPU adapter's name, or its number, as `matgrad devices` lists them.
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
}

#[derive(clap::Args)]
struct ExplainArgs {
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
    /// What `matgrad minimize` runs for this objective and variable: the method auto chooses
    /// and why, one iteration's plan per item, what is evaluated once per batch, and the cost
    /// per iteration (`--batched` names the data that is one per item).
    #[arg(long, conflicts_with_all = ["hessian", "wgsl"])]
    minimize: bool,
}

#[derive(clap::Args)]
struct BenchCommand {
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
    /// A part of the GPU adapter's name, or its number, as `matgrad devices` lists them.
    #[arg(long, value_name = "NAME")]
    adapter: Option<String>,
    /// Skip measuring the devices' ceilings (no fractions of peak).
    #[arg(long)]
    no_ceilings: bool,
    /// The CPU path's instruction set: avx512, avx2 or portable (default: the widest this
    /// CPU runs), for studies of what the vector width gives.
    #[arg(long, value_name = "ISA")]
    cpu_isa: Option<String>,
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
    /// Every GPU adapter and the CPU path, the batch split by their measured throughput.
    All,
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

impl LayoutArg {
    fn layout(self) -> Layout {
        match self {
            LayoutArg::Gradient => Layout::Gradient,
            LayoutArg::Numerator => Layout::Numerator,
        }
    }
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
        } => cli::grad::grad(&program, &wrt, layout.layout(), format.format()),
        Command::Hessian {
            program,
            wrt,
            times,
            format,
        } => cli::grad::hessian(&program, &wrt, times, format.format()),
        Command::Eval(args) => cli::eval::eval(args),
        Command::Check(args) => cli::check::check(args),
        Command::Catalog { json, seed } => cli::catalog::catalog(json, seed),
        Command::Minimize(args) => cli::minimize::run_minimize(args, report),
        Command::Devices {
            json,
            measure: true,
            adapter,
        } => cli_bench::measure_devices(json, adapter),
        Command::Devices { json, .. } => cli::devices::list_devices(json),
        Command::Bench(args) => cli_bench::bench(args),
        Command::Explain(args) => cli::explain::explain(args),
    }
}

/// A program's error, printed with the program and a caret: exit status 2.
fn report(e: &Diagnostic, source: &str) -> u8 {
    eprint!("{}", e.render(source));
    2
}
