//! The `matgrad` command line: turns library results and errors into output and exit codes.
//!
//! Exit status: 0 success, 1 a check failed, 2 bad input or usage. Errors in a program are
//! printed with the program and a caret under the offending span.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;

use matgrad::catalog::{self, Verdict};
use matgrad::diagnostic::Diagnostic;
use matgrad::diff::{differentiate, Derivative, Kind, Layout, Request};
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
        program: String,
        #[arg(long)]
        wrt: String,
        /// Print the Hessian-vector product with a new vector of this name instead.
        #[arg(long, value_name = "NAME")]
        times: Option<String>,
        #[arg(long, value_enum, default_value_t = FormatArg::Text)]
        format: FormatArg,
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
            eprintln!("error: internal error in matgrad (this is a bug; please report the input)");
            ExitCode::from(101)
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
        Command::Catalog { json, seed } => run_catalog(json, seed),
    }
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
            println!("{}", render(&d, format));
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
    serde_json::to_string_pretty(&value).unwrap_or_default()
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
        println!(
            "{}",
            serde_json::to_string_pretty(&reports).unwrap_or_default()
        );
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
        println!(
            "{:<4} {kind}{} by {}{condition}{layout}: {}",
            r.id,
            r.function,
            r.wrt,
            r.verdict.label()
        );
        match &r.verdict {
            Verdict::Agrees => println!("       {}", r.derived),
            Verdict::PrintedFormulaWrong { why } => {
                println!("       printed: {}   ({why})", r.printed);
                println!("       correct: {}", r.derived);
            }
            Verdict::Unsupported { why } | Verdict::MatgradWrong { why } => {
                println!("       {why}")
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
    println!(
        "\n{} entries, {} variants: {} agree, {} printed formula wrong, {} unsupported, {} matgrad wrong",
        entries.len(),
        reports.len(),
        count("agrees"),
        count("printed formula wrong"),
        count("unsupported"),
        count("matgrad wrong")
    );
    println!("entries printed wrongly: {}", wrong.join(", "));
    u8::from(failed)
}
