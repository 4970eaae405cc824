//! One correctness suite over every executor: the float64 reference equals the per-item
//! loop for every shared/batched assignment (to 1e-12: product chains are re-associated per
//! assignment), and every float32 executor matches the reference: the CPU path on every
//! instruction set the CPU runs (the vector builds bit for bit alike) and, on the whole
//! catalog and on random programs, the GPU (chunks of 64 items) and the split of each batch
//! across the CPU path and the GPU (`--device all`). Batch sizes 1, odd sizes and sizes that
//! cross a CPU block and a GPU chunk. The GPU is whatever adapter the machine has (lavapipe
//! in CI); with `CI=true` a missing adapter fails, elsewhere the GPU part is skipped with a
//! message. (`tests/gpu.rs` keeps what only the GPU has: chunking and folding, GEMM tiles,
//! the LU blocks, the software adapter's limits.)

mod common;

use common::{derive_for as derive, points, random_case, with_dimensions};
use matgrad::batch::{batches_from_points, non_finite_items, run_reference, set_points, Batch};
use matgrad::catalog::CASES;
use matgrad::check::{
    device_against_reference, round_to_f32, to_f32, Float32Resolution, F32_TOLERANCE,
};
use matgrad::cpu::{rows, run_cpu, run_cpu_on, Isa, MAX_BLOCK};
use matgrad::diff::Derivative;
use matgrad::eval::evaluate;
use matgrad::executor::{Data, Device, Executor, Results};
use matgrad::gpu::{run_gpu, GpuContext, GpuError, GpuOptions};
use matgrad::plan::Plan;
use matgrad::verify::{dimension_sizes, relative_error};

fn plan_for(d: &Derivative, batched: &[bool]) -> Plan {
    let g = &d.program.graph;
    Plan::new(g, &[d.node, d.program.root], &dimension_sizes(g), batched).unwrap()
}

/// The GPU for the suite, in chunks of 64 items; `None` with a message when there is no
/// adapter (a failure under `CI=true`).
fn gpu() -> Option<GpuContext> {
    let options = GpuOptions {
        max_chunk_items: Some(64),
        ..GpuOptions::default()
    };
    common::gpu_or_skip(&options)
}

/// The GPU's and the split's outputs for `plan`, or none where the software adapter's loop
/// limit refuses the plan (the executors choose the CPU path there, which is checked anyway).
fn gpu_runs(
    ctx: &GpuContext,
    plan: &Plan,
    values32: &[Batch<f32>],
    batch: usize,
    what: &str,
) -> Vec<(&'static str, Vec<Batch<f32>>)> {
    let refs32: Vec<&Batch<f32>> = values32.iter().collect();
    let gpu = match run_gpu(ctx, plan, &refs32, batch) {
        Ok(outputs) => outputs,
        Err(GpuError::LoopLimit { .. }) => return Vec::new(),
        Err(e) => panic!("{what}: gpu: {e}"),
    };
    let inputs: Vec<&[f32]> = values32.iter().map(|b| &b.data[..]).collect();
    let (split, _) = Executor::prepare(Device::All, std::slice::from_ref(ctx), plan, &inputs)
        .unwrap_or_else(|e| panic!("{what}: split: {e}"));
    let data: Vec<Data> = inputs.iter().map(|d| Data::F32(d)).collect();
    let run = split
        .run(plan, &data, batch)
        .unwrap_or_else(|e| panic!("{what}: split: {e}"));
    let Results::F32(split) = run.results else {
        panic!("{what}: the split ran in float64")
    };
    vec![("gpu", gpu), ("all", split)]
}

/// Runs the reference and every float32 executor on `d` with the given batched flags (the
/// GPU and the split when `gpu` is given); checks the reference against the per-item
/// evaluator and every executor against the reference. Returns the largest error and the
/// executor it came from.
fn check_batched(
    d: &Derivative,
    batched: &[bool],
    batch: usize,
    seed: u64,
    what: &str,
    gpu: Option<&GpuContext>,
) -> (f64, &'static str) {
    let g = &d.program.graph;
    let plan = plan_for(d, batched);
    let mut items = points(d, &plan, batch, seed);
    let values = round_to_f32(&batches_from_points(&plan, &items));
    set_points(&plan, &values, &mut items);
    let refs: Vec<&Batch<f64>> = values.iter().collect();
    let n = if plan.is_batched() { batch } else { 1 };
    let outputs = run_reference(&plan, &refs, n);
    for (out, root) in outputs.iter().zip([d.node, d.program.root]) {
        assert_eq!(
            out.batch.is_some(),
            batched
                .iter()
                .enumerate()
                .any(|(v, &b)| b && g.depends_on(d.program.root, v as u32)),
            "{what}"
        );
        for (i, item) in items.iter().enumerate().take(out.items()) {
            let want = evaluate(g, root, item).unwrap();
            let got = out.item_mat(i);
            // Equal up to the rounding of re-associated product chains; NaN where NaN.
            let scale =
                want.data.iter().fold(
                    1.0f64,
                    |m, x| if x.is_finite() { m.max(x.abs()) } else { m },
                );
            let same = got.data.iter().zip(&want.data).all(|(a, b)| {
                a == b || (a.is_nan() && b.is_nan()) || (a - b).abs() <= 1e-12 * scale
            });
            assert!(
                same,
                "{what}: item {i} of the batch differs from the per-item evaluation: {:?} vs {:?}",
                got.data, want.data
            );
        }
    }
    let values32: Vec<Batch<f32>> = values.iter().map(to_f32).collect();
    let refs32: Vec<&Batch<f32>> = values32.iter().collect();
    let cpu = run_cpu(&plan, &refs32, n);
    // The other instruction sets: the vector builds give the fastest one's bits; the
    // portable build is checked against the reference as it is.
    let mut runs = vec![("cpu", cpu)];
    for isa in Isa::available().into_iter().skip(1) {
        let other = run_cpu_on(isa, &plan, &refs32, n);
        if isa == Isa::Portable {
            runs.push(("cpu", other));
            continue;
        }
        for (o, c) in other.iter().zip(&runs[0].1) {
            let same = o
                .data
                .iter()
                .zip(&c.data)
                .all(|(a, b)| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()));
            assert!(same, "{what}: {isa:?} differs from {:?}", Isa::fastest());
        }
    }
    if let Some(ctx) = gpu {
        runs.extend(gpu_runs(ctx, &plan, &values32, n, what));
    }
    let resolution = Float32Resolution::new(&plan, &values, n);
    let mut worst = (0.0f64, "cpu");
    let pairs = runs.iter().flat_map(|(name, run)| {
        run.iter()
            .zip(&outputs)
            .enumerate()
            .map(move |(k, pair)| (*name, k, pair))
    });
    for (name, k, (c, r)) in pairs {
        assert_eq!(
            (c.batch, c.rows, c.cols),
            (r.batch, r.rows, r.cols),
            "{what}: {name}"
        );
        let report = device_against_reference(name, c, r, resolution.output(k));
        assert!(
            report.items_ill_conditioned * 4 <= r.items().max(4),
            "{what}: {name}: {} of {} items ill-conditioned",
            report.items_ill_conditioned,
            r.items()
        );
        if report.max_rel_error > worst.0 || report.max_rel_error.is_nan() {
            worst = (report.max_rel_error, name);
        }
    }
    worst
}

#[test]
fn every_shared_batched_assignment_equals_the_per_item_loop() {
    let programs = [
        (
            "A: matrix(4,3); x: vector(3); b: vector(4); (A*x+b)'*(A*x+b)",
            "x",
            false,
        ),
        (
            "C: matrix(3,3); X: matrix(3,3); a: vector(3); a'*X'*C*X*a",
            "X",
            false,
        ),
        ("X: spd(3); logdet(X)", "X", false),
        (
            "A: matrix(3,3); B: matrix(3,3); X: matrix(3,3); tr(A*X*B*X')",
            "X",
            false,
        ),
        (
            "X: matrix(5,3); y: vector(5); w: vector(3); sum(log(vector(1)+exp(-y.*(X*w))))",
            "w",
            false,
        ),
        (
            "X: matrix(5,3); y: vector(5); w: vector(3); sum(log(vector(1)+exp(-y.*(X*w))))",
            "w",
            true,
        ),
        (
            "A: matrix(3,3); B: matrix(3,3); t: scalar; inv(A+t*B)",
            "t",
            false,
        ),
    ];
    for (source, wrt, hessian) in programs {
        let d = derive(source, wrt, hessian);
        let vars = d.program.graph.vars_in(d.program.root);
        for mask in 0..(1u32 << vars.len()) {
            let mut batched = vec![false; d.program.graph.vars.len()];
            for (k, &v) in vars.iter().enumerate() {
                batched[v as usize] = mask & (1 << k) != 0;
            }
            for batch in [1, 3] {
                let what = format!("{source} by {wrt}, batched mask {mask:b}, batch {batch}");
                let (err, on) = check_batched(&d, &batched, batch, 7 + mask as u64, &what, None);
                assert!(err < F32_TOLERANCE, "{what}: {on} error {err:.2e}");
            }
        }
    }
}

#[test]
fn every_executor_matches_the_reference_on_the_whole_catalog() {
    let gpu = gpu();
    for (k, case) in CASES.iter().enumerate() {
        let source = format!("{} {}", case.decls, case.function);
        let d = derive(&source, case.wrt, case.hessian);
        let g = &d.program.graph;
        // Alternate: only the variable batched; everything batched.
        let all: Vec<bool> = (0..g.vars.len())
            .map(|v| g.depends_on(d.program.root, v as u32))
            .collect();
        let only: Vec<bool> = (0..g.vars.len()).map(|v| v as u32 == d.wrt).collect();
        for (batched, batch) in [(only, 5), (all, 1)] {
            let what = format!("{} {} by {}", case.id, case.function, case.wrt);
            let (err, on) = check_batched(&d, &batched, batch, 100 + k as u64, &what, gpu.as_ref());
            assert!(err < F32_TOLERANCE, "{what}: {on} error {err:.2e}");
        }
    }
}

/// The executors against the reference on random programs `seeds` (from `offset`), with
/// their dimensions redeclared as `dimensions` (n, m) if given, on batches of `sizes` in
/// turn (the GPU and the split too when `gpu` is given). Asserts that at least `least` were
/// compared, that each CPU layout ran at least `each` of them, and that none failed.
fn random_programs(
    seeds: std::ops::RangeInclusive<u64>,
    offset: u64,
    dimensions: Option<(usize, usize)>,
    sizes: &[usize],
    (least, each): (usize, usize),
    gpu: Option<&GpuContext>,
) {
    let (mut compared, mut item_major) = (0, 0);
    let mut failures = Vec::new();
    for seed in seeds {
        let Some((generated, d, batched)) = random_case(seed, offset) else {
            continue;
        };
        let (source, d) = match dimensions {
            Some((n, m)) => {
                let source = with_dimensions(&generated.source, n, m);
                let d = derive(&source, &generated.wrt, false);
                (source, d)
            }
            None => (generated.source.clone(), d),
        };
        let batch = sizes[seed as usize % sizes.len()];
        let what = format!(
            "seed {seed}: d/d{} of `{source}` (batch {batch})",
            generated.wrt
        );
        let (err, on) = check_batched(&d, &batched, batch, seed, &what, gpu);
        compared += 1;
        item_major += usize::from(rows::chosen(&plan_for(&d, &batched)));
        if err > F32_TOLERANCE {
            failures.push(format!(
                "{what}: {on} relative error {err:.2e}\n  derivative {}",
                d.text()
            ));
        }
    }
    assert!(compared >= least, "only {compared} programs compared");
    // Both CPU layouts are exercised.
    assert!(
        (each..compared - each).contains(&item_major),
        "{item_major} of {compared} plans in item-major blocks"
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Batches of 65 and more cross a GPU chunk (64 items); `MAX_BLOCK + 3` a CPU block.
#[test]
fn every_executor_matches_the_reference_on_random_programs() {
    random_programs(
        1..=380,
        50_000,
        None,
        &[1, 2, 5, 17, 65, MAX_BLOCK + 3],
        (300, 50),
        gpu().as_ref(),
    );
}

/// Random programs with dimensions 16 and 17 and random batched variables, so that the
/// CPU's GEMM and FMA kernels (8 rows or more, rows of whole vectors) run, on batches that
/// cross blocks of both layouts.
#[test]
fn cpu_matches_reference_on_random_programs_with_larger_dimensions() {
    random_programs(
        1..=150,
        60_000,
        Some((16, 17)),
        &[1, 7, 300],
        (120, 30),
        None,
    );
}

#[test]
fn non_finite_items_do_not_spoil_the_others() {
    let d = derive("X: matrix(3,3); logdet(X)", "X", false);
    let g = &d.program.graph;
    let batched = vec![true];
    let plan = Plan::new(g, &[d.node], &dimension_sizes(g), &batched).unwrap();
    let mut items = points(&d, &plan, 4, 3);
    // Item 1 singular, item 2 with a NaN.
    items[1].values[0] = Some(matgrad::eval::Mat::from_fn(3, 3, |i, j| {
        ((i + 1) * (j + 1)) as f64
    }));
    items[2].values[0].as_mut().unwrap().data[4] = f64::NAN;
    let values = batches_from_points(&plan, &items);
    let refs: Vec<&Batch<f64>> = values.iter().collect();
    let reference = run_reference(&plan, &refs, 4).remove(0);
    assert_eq!(non_finite_items(&reference), vec![1, 2]);
    let values32: Vec<Batch<f32>> = values.iter().map(to_f32).collect();
    let refs32: Vec<&Batch<f32>> = values32.iter().collect();
    let cpu = run_cpu(&plan, &refs32, 4).remove(0);
    assert_eq!(non_finite_items(&cpu), vec![1, 2]);
    for i in [0, 3] {
        let want = evaluate(g, d.node, &items[i]).unwrap();
        assert!(relative_error(&reference.item_mat(i), &want) == 0.0);
    }
}

#[test]
fn item_major_blocks_match_the_reference_across_a_block_boundary() {
    // Each uses the item-major layout: shared·batched products (by GEMM and by loops),
    // batched·shared products (stacked GEMM, dot products, outer products), element-wise
    // steps with shared, per-item scalar and batched operands, functions and reductions.
    let programs = [
        (
            "A: matrix(12,10); x: vector(10); b: vector(12); (A*x+b)'*(A*x+b)",
            "x",
            &["x"][..],
        ),
        (
            "C: matrix(9,9); X: matrix(9,9); a: vector(9); a'*X'*C*X*a",
            "X",
            &["X"],
        ),
        (
            "X: matrix(20,9); y: vector(20); w: vector(9); sum(log(vector(1)+exp(-y.*(X*w))))",
            "w",
            &["w"],
        ),
        (
            "A: matrix(9,9); x: vector(9); t: scalar; t*norm2(A*x) + norm1(x)/t",
            "x",
            &["x", "t"],
        ),
        ("A: matrix(3,2); x: vector(2); sum((A*x).^3)", "x", &["x"]),
        ("B: matrix(10,16); x: vector(10); x'*B*B'*x", "x", &["x"]),
        // Shared matrices times batched matrices: a small GEMM per item (as in W5).
        (
            "A: matrix(9,7); B: matrix(11,10); X: matrix(7,11); sum((A*X*B).^2)",
            "X",
            &["X"],
        ),
        // Per-item products of batched values: M·v by vectors of rows (8-row groups and
        // the rows left over), Mᵀ·v reading M in place (8-column groups and the rest).
        (
            "A: matrix(8,8); x: vector(8); b: vector(8); (A*x+b)'*(A*x+b)",
            "x",
            &["A", "x", "b"],
        ),
        (
            "A: matrix(11,16); x: vector(16); b: vector(11); (A*x+b)'*(A*x+b)",
            "x",
            &["A", "x", "b"],
        ),
        (
            "A: matrix(5,24); x: vector(24); b: vector(5); (A*x+b)'*(A*x+b)",
            "x",
            &["A", "x"],
        ),
    ];
    for (source, wrt, batched_vars) in programs {
        let d = derive(source, wrt, false);
        let g = &d.program.graph;
        let batched: Vec<bool> = g
            .vars
            .iter()
            .map(|v| batched_vars.contains(&v.name.as_str()))
            .collect();
        let plan = plan_for(&d, &batched);
        assert!(rows::chosen(&plan), "{source}: not item-major");
        let batch = matgrad::cpu::block_items(&plan) + 5;
        let what = format!("{source} by {wrt}, batch {batch}");
        let (err, on) = check_batched(&d, &batched, batch, 11, &what, None);
        assert!(err < F32_TOLERANCE, "{what}: {on} error {err:.2e}");
    }
}
