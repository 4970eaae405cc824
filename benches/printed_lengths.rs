//! How long the simplifier's results print: the measurement that decides a change to the
//! simplifier (issue 18), run on two builds and compared.
//!
//! In: nothing (the seed catalog and the random program generator are built in). Out, on
//! stdout: for each set, how many derivatives, their total and longest printed length in
//! characters, and the time the derivations took (one pass, not a benchmark: criterion's
//! `cargo bench --bench symbolic` is the timing). With `--dump FILE`, every printed
//! derivative, one per line after its label, so that two builds can be compared with `diff`.
//!
//! The sets: every variant of the seed catalog (gradients and Hessians as the catalog states
//! them); the gradients of the first 500 random scalar programs; the Hessians of the first 500
//! random scalar programs by a vector variable. The random programs are the property tests'
//! generator, so the same seeds give the same programs on every build.
//!
//! Run with `cargo bench --bench printed_lengths [-- --dump FILE]`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use matgrad::catalog::CASES;
use matgrad::diff::{differentiate, Layout, Request};
use matgrad::generate::{random_program, Class};
use matgrad::types::check_program;

/// The printed derivatives of one set, with their labels.
struct Set {
    name: &'static str,
    texts: Vec<(String, String)>,
    time: Duration,
}

impl Set {
    fn new(name: &'static str) -> Set {
        Set {
            name,
            texts: Vec::new(),
            time: Duration::ZERO,
        }
    }

    /// Derives `source` by `wrt`; `false` when that is not possible (the program is skipped).
    fn derive(
        &mut self,
        label: String,
        source: &str,
        wrt: &str,
        hessian: bool,
        layout: Layout,
    ) -> bool {
        let request = if hessian {
            Request::Hessian
        } else {
            Request::Derivative
        };
        let start = Instant::now();
        let Ok(program) = check_program(source) else {
            return false;
        };
        let Ok(d) = differentiate(program, wrt, &request, layout) else {
            return false;
        };
        let text = d.text();
        self.time += start.elapsed();
        self.texts.push((label, text));
        true
    }

    fn summary(&self) -> String {
        let lengths: Vec<usize> = self.texts.iter().map(|(_, t)| t.chars().count()).collect();
        let total: usize = lengths.iter().sum();
        let longest = lengths.iter().max().copied().unwrap_or(0);
        format!(
            "{:<28} {:>4} derivatives, {:>8} characters in all, longest {:>6}, derived in {:>8.1} ms",
            self.name,
            lengths.len(),
            total,
            longest,
            self.time.as_secs_f64() * 1e3
        )
    }
}

fn catalog() -> Set {
    let mut set = Set::new("seed catalog");
    for case in CASES {
        let source = format!("{} {}", case.decls, case.function);
        let label = format!("{} d/d{} {}", case.id, case.wrt, case.function);
        set.derive(label, &source, case.wrt, case.hessian, case.layout);
    }
    set
}

/// The first `count` random scalar programs that derive (by any variable for gradients, by a
/// vector variable for Hessians).
fn random(count: usize, hessian: bool) -> Set {
    let mut set = Set::new(if hessian {
        "random Hessians"
    } else {
        "random gradients"
    });
    let mut seed = 0u64;
    while set.texts.len() < count && seed < 100_000 {
        seed += 1;
        let g = random_program(seed, 1 + (seed % 5) as usize, Class::Scalar);
        let label = format!("seed {seed} d/d{} {}", g.wrt, g.source);
        set.derive(label, &g.source, &g.wrt, hessian, Layout::Gradient);
    }
    set
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dump = args
        .iter()
        .position(|a| a == "--dump")
        .and_then(|i| args.get(i + 1));
    let sets = [catalog(), random(500, false), random(500, true)];
    let mut out = String::new();
    for set in &sets {
        println!("{}", set.summary());
        for (index, (label, text)) in set.texts.iter().enumerate() {
            let _ = writeln!(out, "{} {index}: {label}\n    {text}", set.name);
        }
    }
    if let Some(path) = dump {
        if let Err(e) = std::fs::write(path, out) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(2);
        }
    }
}
