//! A fuzzing campaign as long as asked: `cargo bench --bench fuzz_campaign -- [--cases N]
//! [--seconds S] [--seed K] [--threads T] [--case-seconds L] [--case-megabytes M] [--trace]`;
//! `-- --show K` prints case K's program.
//!
//! In: a case count or a time budget. Each case is a program — generated (well typed), a
//! generated one with random edits, or a random token sequence — run in process through the
//! whole pipeline: parse and type check, the derivative and the Hessian by every variable,
//! every printer, the printed text parsed back, planning at small sizes, WGSL generation and
//! naga validation, and the float32 CPU path and the float64 reference on a batch of three.
//! Out: one JSON line: cases, panics, cases over the time or memory limit, the slowest case
//! and the one that allocated most, each with its source. Exit status 1 when any case
//! panicked or went over a limit.
//!
//! Invariants: a case is judged by its own thread's allocations (a counting allocator keeps
//! per-thread current and peak bytes) and its own wall time; a case that runs past ten times
//! its limit is reported and the campaign stops (a hang would otherwise never end it). Cases
//! are numbered from the seed, so a failure reruns alone with `--seed K --cases 1`.

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use matgrad::batch::Batch;
use matgrad::diff::{differentiate, Layout, Request};
use matgrad::generate::{mutate, random_program, Class, FUZZ_TOKENS};
use matgrad::plan::Plan;
use matgrad::print::{render, Format};
use matgrad::types::check_program;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Counts each thread's live and peak heap bytes.
struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let _ = LIVE.try_with(|live| {
                let now = live.get() + layout.size();
                live.set(now);
                let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
            });
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        unsafe { System.dealloc(ptr, layout) };
        let _ = LIVE.try_with(|live| live.set(live.get().saturating_sub(layout.size())));
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CLASSES: [Class; 6] = [
    Class::Scalar,
    Class::VecN,
    Class::VecM,
    Class::MatNN,
    Class::MatMN,
    Class::MatNM,
];

/// Case `index`'s program text.
fn case_source(index: u64) -> String {
    let mut rng = StdRng::seed_from_u64(index ^ 0x6d61_7467_7261_6400);
    match index % 4 {
        // Well typed: the scalar class is the common one (gradients and Hessians).
        0 | 1 => {
            let class = if index.is_multiple_of(4) {
                Class::Scalar
            } else {
                CLASSES[rng.gen_range(0..CLASSES.len())]
            };
            random_program(index, rng.gen_range(1..=5), class).source
        }
        // Near-valid: a generated program with a few edits.
        2 => {
            let program = random_program(index, rng.gen_range(1..=4), Class::Scalar).source;
            mutate(&program, &mut rng)
        }
        // Token soup.
        _ => {
            let count = rng.gen_range(0..24);
            let tokens: Vec<&str> = (0..count)
                .map(|_| FUZZ_TOKENS[rng.gen_range(0..FUZZ_TOKENS.len())])
                .collect();
            if rng.gen_bool(0.5) {
                tokens.concat()
            } else {
                tokens.join(" ")
            }
        }
    }
}

/// How far a case went: type-checked, derivatives taken, plans built, batches evaluated.
#[derive(Clone, Copy, Default)]
struct Reached {
    checked: u64,
    derived: u64,
    planned: u64,
    evaluated: u64,
}

/// Runs one program through every stage; panics are the caller's to catch.
fn run_case(source: &str, seed: u64) -> Reached {
    let mut reached = Reached::default();
    let Ok(program) = check_program(source) else {
        return reached;
    };
    reached.checked = 1;
    let names: Vec<String> = program.graph.vars.iter().map(|v| v.name.clone()).collect();
    for name in names.iter().take(3) {
        for request in [Request::Derivative, Request::Hessian] {
            let Ok(d) = differentiate(program.clone(), name, &request, Layout::Gradient) else {
                continue;
            };
            reached.derived += 1;
            let g = &d.program.graph;
            for format in [Format::Text, Format::Unicode, Format::Latex, Format::Json] {
                let _ = render(g, d.node, format);
            }
            // The text reads back with the program's declarations.
            let _ = matgrad::types::check_program_with_shape(
                &format!("{}{}", declarations(&d.program), d.text()),
                None,
            );
            let sizes: Vec<usize> = g.dims.iter().map(|d| d.size.unwrap_or(2).min(4)).collect();
            let batched: Vec<bool> = g.vars.iter().map(|v| v.name == *name).collect();
            let Ok(plan) = Plan::new(g, &[d.node, d.program.root], &sizes, &batched) else {
                continue;
            };
            if plan.memory_bytes(3) > 64e6 {
                continue;
            }
            reached.planned += 1;
            let _ = matgrad::wgsl::generate(&plan);
            let mut rng = StdRng::seed_from_u64(seed);
            let batch = 3;
            let inputs64: Vec<Batch<f64>> = plan
                .inputs()
                .iter()
                .map(|input| {
                    let items = if input.batched { batch } else { 1 };
                    Batch {
                        batch: input.batched.then_some(batch),
                        rows: input.rows,
                        cols: input.cols,
                        data: (0..items * input.rows * input.cols)
                            .map(|_| rng.gen_range(-2.0..2.0))
                            .collect(),
                    }
                })
                .collect();
            let refs: Vec<&Batch<f64>> = inputs64.iter().collect();
            let _ = matgrad::batch::run_reference(&plan, &refs, batch);
            let inputs32: Vec<Batch<f32>> = inputs64
                .iter()
                .map(|b| Batch {
                    batch: b.batch,
                    rows: b.rows,
                    cols: b.cols,
                    data: b.data.iter().map(|&v| v as f32).collect(),
                })
                .collect();
            let refs32: Vec<&Batch<f32>> = inputs32.iter().collect();
            let _ = matgrad::cpu::run_cpu(&plan, &refs32, batch);
            reached.evaluated += 1;
        }
    }
    reached
}

/// The program's declarations, for reading a printed formula back.
fn declarations(program: &matgrad::types::Program) -> String {
    program
        .source
        .rsplit_once(';')
        .map(|(decls, _)| format!("{decls};"))
        .unwrap_or_default()
}

#[derive(Default)]
struct Tally {
    cases: u64,
    panics: Vec<(u64, String)>,
    over_time: Vec<(u64, String, f64)>,
    over_memory: Vec<(u64, String, usize)>,
    reached: Reached,
    slowest: (f64, u64, String),
    largest: (usize, u64, String),
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str) -> Option<T> {
    let i = args.iter().position(|a| a == name)?;
    args.get(i + 1)?.parse().ok()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // `cargo bench` passes `--bench`; with no count or time asked, a short smoke run.
    let cases: u64 = arg(&args, "--cases").unwrap_or(if arg::<f64>(&args, "--seconds").is_some() {
        u64::MAX
    } else {
        2000
    });
    let seconds: f64 = arg(&args, "--seconds").unwrap_or(f64::INFINITY);
    let seed: u64 = arg(&args, "--seed").unwrap_or(0);
    let threads: usize = arg(&args, "--threads")
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let case_seconds: f64 = arg(&args, "--case-seconds").unwrap_or(2.0);
    let case_bytes = arg::<usize>(&args, "--case-megabytes").unwrap_or(256) << 20;
    // `--trace`: each case's number on stderr before it runs, so that a case that aborts the
    // process (a stack overflow cannot be caught) is the last one written.
    let trace = args.iter().any(|a| a == "--trace");
    if let Some(index) = arg::<u64>(&args, "--show") {
        println!("{}", case_source(index));
        return;
    }

    std::panic::set_hook(Box::new(|_| {})); // panics are counted, not printed one by one
    let next = Arc::new(AtomicU64::new(seed));
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    // Each worker's current case and when it began (ms since start; u64::MAX when idle).
    let running: Arc<Vec<(AtomicU64, AtomicU64)>> = Arc::new(
        (0..threads)
            .map(|_| (AtomicU64::new(u64::MAX), AtomicU64::new(0)))
            .collect(),
    );
    let workers: Vec<_> = (0..threads)
        .map(|w| {
            let (next, stop, tally, running) =
                (next.clone(), stop.clone(), tally.clone(), running.clone());
            std::thread::Builder::new()
                .stack_size(256 << 20)
                .spawn(move || loop {
                    if stop.load(Ordering::Relaxed) || started.elapsed().as_secs_f64() > seconds {
                        break;
                    }
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index.wrapping_sub(seed) >= cases {
                        break;
                    }
                    let source = case_source(index);
                    if trace {
                        eprintln!("worker {w} starts case {index}");
                    }
                    running[w]
                        .1
                        .store(started.elapsed().as_millis() as u64, Ordering::Relaxed);
                    running[w].0.store(index, Ordering::Relaxed);
                    let base = LIVE.with(Cell::get);
                    PEAK.with(|p| p.set(base));
                    let t = Instant::now();
                    let outcome = catch_unwind(AssertUnwindSafe(|| run_case(&source, index)));
                    let elapsed = t.elapsed().as_secs_f64();
                    if trace {
                        eprintln!("worker {w} ends case {index}");
                    }
                    let peak = PEAK.with(Cell::get).saturating_sub(base);
                    running[w].0.store(u64::MAX, Ordering::Relaxed);
                    let mut t = tally.lock().unwrap();
                    t.cases += 1;
                    match outcome {
                        Ok(r) => {
                            t.reached.checked += r.checked;
                            t.reached.derived += r.derived;
                            t.reached.planned += r.planned;
                            t.reached.evaluated += r.evaluated;
                        }
                        Err(_) => t.panics.push((index, source.clone())),
                    }
                    if elapsed > case_seconds {
                        t.over_time.push((index, source.clone(), elapsed));
                    }
                    if peak > case_bytes {
                        t.over_memory.push((index, source.clone(), peak));
                    }
                    if elapsed > t.slowest.0 {
                        t.slowest = (elapsed, index, source.clone());
                    }
                    if peak > t.largest.0 {
                        t.largest = (peak, index, source);
                    }
                })
                .expect("a worker thread starts")
        })
        .collect();
    // The watchdog: a case past ten times its limit is a hang; report it and stop.
    let mut hung = None;
    while workers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_millis(200));
        let now = started.elapsed().as_millis() as u64;
        for (index, since) in running.iter() {
            let index = index.load(Ordering::Relaxed);
            let since = since.load(Ordering::Relaxed);
            if index != u64::MAX && (now.saturating_sub(since) as f64) > 10_000.0 * case_seconds {
                hung = Some(index);
            }
        }
        if let Some(index) = hung {
            stop.store(true, Ordering::Relaxed);
            let t = tally.lock().unwrap();
            println!(
                "{}",
                serde_json::json!({
                    "cases": t.cases,
                    "hung_case": index,
                    "hung_source": case_source(index),
                })
            );
            std::process::exit(1);
        }
    }
    let t = tally.lock().unwrap();
    let failed = !t.panics.is_empty() || !t.over_time.is_empty() || !t.over_memory.is_empty();
    println!(
        "{}",
        serde_json::json!({
            "cases": t.cases,
            "seconds": started.elapsed().as_secs_f64(),
            "threads": threads,
            "seed": seed,
            "case_limit_seconds": case_seconds,
            "case_limit_megabytes": case_bytes >> 20,
            "type_checked": t.reached.checked,
            "derivatives": t.reached.derived,
            "plans_generated_and_validated": t.reached.planned,
            "batches_evaluated": t.reached.evaluated,
            "panics": t.panics.len(),
            "over_time": t.over_time.len(),
            "over_memory": t.over_memory.len(),
            "first_panics": t.panics.iter().take(5).collect::<Vec<_>>(),
            "first_over_time": t.over_time.iter().take(5).collect::<Vec<_>>(),
            "first_over_memory": t.over_memory.iter().take(5).collect::<Vec<_>>(),
            "slowest": {"seconds": t.slowest.0, "case": t.slowest.1, "source": t.slowest.2},
            "largest": {"megabytes": t.largest.0 as f64 / 1048576.0, "case": t.largest.1, "source": t.largest.2},
        })
    );
    if failed {
        std::process::exit(1);
    }
}
