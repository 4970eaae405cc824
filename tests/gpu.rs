//! The GPU back end on whatever adapter the machine has (Mesa's lavapipe in CI): what only
//! the GPU has (the catalog and random programs run on every executor in
//! `tests/executors.rs`): random programs large enough for GEMM dispatches, the workloads at
//! reduced batch sizes, a program with every operation, powers, GEMM tiles and fused
//! epilogues, the LU blocks at every size, the software adapter's loop limit; chunked and
//! folded runs equal plain ones. With `CI=true` a missing adapter fails these tests; elsewhere they say loudly that
//! they were skipped and why.

mod common;

use common::{derive_for as derive, points, random_case, with_dimensions};
use matgrad::batch::{batches_from_points, run_reference, Batch};
use matgrad::check::{
    device_against_reference, round_to_f32, to_f32, Float32Resolution, F32_TOLERANCE,
};
use matgrad::diff::Derivative;
use matgrad::expr::Node;
use matgrad::gpu::{run_gpu, GpuContext, GpuError, GpuOptions};
use matgrad::plan::Plan;
use matgrad::verify::dimension_sizes;
use matgrad::wgsl::Budget;
use matgrad::workloads::{prepare, WORKLOADS};

/// GPU tests run one at a time: a software adapter on a 2-core machine gains nothing from
/// concurrent kernels, and its compiler is safest alone.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The adapter, or `None` with a loud message (a failure under `CI=true`).
fn context(options: GpuOptions) -> Option<GpuContext> {
    common::gpu_or_skip(&options)
}

/// The default adapter and a second context on it with `options` (to compare a run under
/// forced chunking or folding with a plain one), or `None` as [`context`] says.
fn context_pair(options: GpuOptions) -> Option<(GpuContext, GpuContext)> {
    Some((context(GpuOptions::default())?, context(options)?))
}

/// Options that cut batches into chunks of at most `items` items.
fn chunks_of(items: usize) -> GpuOptions {
    GpuOptions {
        max_chunk_items: Some(items),
        ..GpuOptions::default()
    }
}

/// Fails with every collected failure, one per line.
fn assert_none_failed(failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The derivative of `source` by `wrt` and its plan with the variable `batched` batched (the
/// others shared), computing the function value too when `with_value`.
fn plan_of(source: &str, wrt: &str, batched: &str, with_value: bool) -> (Derivative, Plan) {
    let d = derive(source, wrt, false);
    let g = &d.program.graph;
    let flags: Vec<bool> = g.vars.iter().map(|v| v.name == batched).collect();
    let outputs = if with_value {
        vec![d.node, d.program.root]
    } else {
        vec![d.node]
    };
    let plan = Plan::new(g, &outputs, &dimension_sizes(g), &flags).unwrap();
    (d, plan)
}

/// Inputs for `batch` items (shared variables from one point), rounded to float32.
fn inputs(d: &Derivative, plan: &Plan, batch: usize, seed: u64) -> Vec<Batch<f64>> {
    round_to_f32(&batches_from_points(plan, &points(d, plan, batch, seed)))
}

/// GPU against the reference on one plan; returns the largest error.
fn gpu_error(
    ctx: &GpuContext,
    plan: &Plan,
    values: &[Batch<f64>],
    batch: usize,
    what: &str,
) -> f64 {
    let refs: Vec<&Batch<f64>> = values.iter().collect();
    let reference = run_reference(plan, &refs, batch);
    let resolution = Float32Resolution::new(plan, values, batch);
    let values32: Vec<Batch<f32>> = values.iter().map(to_f32).collect();
    let refs32: Vec<&Batch<f32>> = values32.iter().collect();
    let gpu = run_gpu(ctx, plan, &refs32, batch).unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut worst: f64 = 0.0;
    for (k, (g, r)) in gpu.iter().zip(&reference).enumerate() {
        assert_eq!(
            (g.batch, g.rows, g.cols),
            (r.batch, r.rows, r.cols),
            "{what}"
        );
        let report = device_against_reference("gpu", g, r, resolution.output(k));
        worst = worst.max(report.max_rel_error);
    }
    worst
}

/// Random programs with every dimension 32 or 33, so that shared matrices have over 1024
/// entries and their products run as GEMM dispatches, with element-wise steps fused into
/// them wherever the generator's chains allow; the plans with a GEMM run in two chunks of
/// at most 3 items.
#[test]
fn gpu_matches_reference_on_random_programs_with_large_dimensions() {
    let _serial = serial();
    let Some(ctx) = context(chunks_of(3)) else {
        return;
    };
    let (mut compared, mut gemms, mut fused) = (0, 0, 0);
    let mut tiles = std::collections::BTreeSet::new();
    let mut failures = Vec::new();
    for seed in 1..=600u64 {
        let Some((generated, _, _)) = random_case(seed, 70_000) else {
            continue;
        };
        let source = with_dimensions(&generated.source, 32, 33);
        let (d, plan) = plan_of(&source, &generated.wrt, &generated.wrt, false);
        // Not 32×32 factorizations: per item they are the looped LU in function memory
        // (seconds each on a software adapter; the LU is tested at every size up to 10
        // below), and determinants of this size leave the float32 range.
        if plan
            .steps()
            .iter()
            .any(|s| matches!(s.node, Node::Inv(_) | Node::Det(_) | Node::LogDet(_)))
        {
            continue;
        }
        // Only plans with a GEMM: the others are the random programs above at other sizes
        // (and a software adapter takes a second or more to compile each large kernel).
        let kernel = matgrad::wgsl::generate(&plan).unwrap();
        let before = gemms;
        for stage in &kernel.stages {
            if let matgrad::wgsl::StageKind::Gemm(g) = stage.kind {
                gemms += 1;
                fused += g.fused;
                tiles.insert(g.tile);
            }
        }
        if gemms == before {
            continue;
        }
        let values = inputs(&d, &plan, 5, seed);
        let what = format!("seed {seed}: d/d{} of `{source}`", generated.wrt);
        let err = gpu_error(&ctx, &plan, &values, 5, &what);
        compared += 1;
        if err > F32_TOLERANCE {
            failures.push(format!("{what}: {err:.2e}\n  {}", d.text()));
        }
    }
    eprintln!("{compared} compared, {gemms} GEMMs, {fused} fused steps");
    // 18 of the 600 seeds give GEMM plans (chains of diagonal matrices, which used to be
    // GEMMs, are element-wise since diag(u)*diag(v) simplifies to diag(u.*v)).
    assert!(compared >= 15, "only {compared} compared");
    assert!(
        gemms >= 20 && fused >= 5,
        "{gemms} GEMMs, {fused} fused steps"
    );
    assert_none_failed(&failures);
}

#[test]
fn chunked_runs_equal_unchunked_runs() {
    let _serial = serial();
    let Some((whole, tiny)) = context_pair(chunks_of(7)) else {
        return;
    };
    let (d, plan) = plan_of(
        "A: matrix(4,3); x: vector(3); b: vector(4); (A*x+b)'*(A*x+b)",
        "x",
        "x",
        true,
    );
    let values: Vec<Batch<f32>> = inputs(&d, &plan, 100, 3).iter().map(to_f32).collect();
    let refs: Vec<&Batch<f32>> = values.iter().collect();
    let a = run_gpu(&whole, &plan, &refs, 100).unwrap();
    let b = run_gpu(&tiny, &plan, &refs, 100).unwrap();
    assert_eq!(a, b, "15 chunks of 7 items give the bits of one chunk");
}

#[test]
fn workloads_at_reduced_batch_sizes_match_the_reference() {
    let _serial = serial();
    let Some(ctx) = context(GpuOptions::default()) else {
        return;
    };
    for w in WORKLOADS {
        let batch = 16.min(w.batch);
        let p = prepare(w, batch);
        let values = round_to_f32(&p.inputs);
        let err = gpu_error(&ctx, &p.plan, &values, batch, w.id);
        assert!(err < F32_TOLERANCE, "{}: gpu error {err:.2e}", w.id);
    }
}

#[test]
fn every_operation_runs() {
    let _serial = serial();
    let Some(ctx) = context(GpuOptions::default()) else {
        return;
    };
    let source = "a: scalar; b: scalar; x: vector(3); y: vector(3); A: matrix(3,3); S: spd(3); \
     sum(sin(x)+cos(x)+tan(0.5*tanh(x))+arcsin(0.5*tanh(y))+arccos(0.5*tanh(y))+arctan(x)) \
     + sum(exp(0.5*tanh(x)).*log(x.^2+vector(1))./sqrt(y.*y+vector(1))) \
     + sum(abs(x)+sign(y)+relu(x)) + norm1(A*x) + norm2(A'*A) + tr(A^3) + det(S) + logdet(S) \
     + x'*inv(S)*y + a^2/(b^2+1) + sum(diag(x)*y) + sum(diag(A)) + (a-b)^3 + sum(matrix(2).*A) + sum(eye*x)";
    for wrt in ["x", "A", "S", "a"] {
        let d = derive(source, wrt, false);
        let g = &d.program.graph;
        let batched = vec![true; g.vars.len()];
        let plan = Plan::new(g, &[d.node, d.program.root], &dimension_sizes(g), &batched).unwrap();
        let values = inputs(&d, &plan, 9, 5);
        let err = gpu_error(&ctx, &plan, &values, 9, wrt);
        assert!(err < F32_TOLERANCE, "by {wrt}: gpu error {err:.2e}");
    }
}

/// `x.^k` entry by entry against float64's `powf`: powers ±1 to ±4 as products (at most two
/// roundings: `x.^2` is `x*x` rounded once, bit for bit), negative bases with the sign of odd
/// powers, `0.^-1` infinite, larger and fractional powers by WGSL's `pow`.
#[test]
fn powers_are_accurate_and_small_ones_exact() {
    let _serial = serial();
    let Some(ctx) = context(GpuOptions::default()) else {
        return;
    };
    // Zero, ±1, and sixteen others between -9 and 9 (few: each entry of each power is
    // inlined into the kernel, and lavapipe's compiler is slow).
    let bases: Vec<f32> = (0..19)
        .map(|i| match i {
            0 => 0.0,
            1 => -1.0,
            2 => 1.0,
            _ => (i as f32 * 0.77).sin() * 9.0 * (i as f32 / 19.0),
        })
        .collect();
    // One program, one dispatch: every power is an output of the same plan.
    let exponents = ["-4", "-3", "-2", "-1", "2", "3", "4", "5", "-6", "0.5"];
    let terms: Vec<String> = exponents.iter().map(|k| format!("x.^{k}")).collect();
    let source = format!("x: vector({}); {}", bases.len(), terms.join(" + "));
    let program = matgrad::types::check_program(&source).unwrap();
    let g = &program.graph;
    let powers: Vec<matgrad::expr::Id> = (0..g.len() as u32)
        .map(matgrad::expr::Id)
        .filter(|&id| matches!(g.node(id), Node::ElemPow(..)))
        .collect();
    assert_eq!(
        powers.len(),
        exponents.len(),
        "one node per power, in source order"
    );
    let plan = Plan::new(g, &powers, &dimension_sizes(g), &[true]).unwrap();
    let x = Batch {
        batch: Some(1),
        rows: bases.len(),
        cols: 1,
        data: bases.clone(),
    };
    let outputs = run_gpu(&ctx, &plan, &[&x], 1).unwrap();
    for (k, got) in exponents.iter().zip(&outputs) {
        let e: f64 = k.parse().unwrap();
        // Products round at most three times (with the reciprocal); pow errs by several ulps.
        // The GPU may flush subnormal results to zero.
        let ulps = if e.abs() <= 4.0 && e.fract() == 0.0 {
            2.0
        } else {
            64.0
        };
        for (&b, &g) in bases.iter().zip(&got.data) {
            let want = (b as f64).powf(e);
            let what = format!("{b}.^{k}: gpu {g}, float64 {want}");
            if want.is_nan() {
                assert!(g.is_nan(), "{what}");
            } else if want.is_infinite() {
                assert_eq!(g as f64, want, "{what}");
            } else {
                let error = (g as f64 - want).abs();
                let bound = ulps * f32::EPSILON as f64 * want.abs() + f32::MIN_POSITIVE as f64;
                assert!(error <= bound, "{what}");
            }
            if *k == "2" {
                assert_eq!(g.to_bits(), (b * b).to_bits(), "{what}: not x*x");
            }
        }
    }
}

#[test]
fn an_adapter_that_is_not_there_is_a_clear_error() {
    let _serial = serial();
    if context(GpuOptions::default()).is_none() {
        return;
    }
    match GpuContext::new(&GpuOptions {
        adapter: Some("no-such-adapter-anywhere".into()),
        ..GpuOptions::default()
    }) {
        Err(GpuError::NoMatchingAdapter { wanted, available }) => {
            assert_eq!(wanted, "no-such-adapter-anywhere");
            assert!(!available.is_empty());
        }
        other => panic!("expected NoMatchingAdapter, got {:?}", other.err()),
    }
}

/// A session keeps the pipeline and the shared inputs resident: running it on two different
/// batches gives what two one-shot runs give, and it reports timings.
#[test]
fn a_resident_session_streams_batches() {
    let _serial = serial();
    let Some(ctx) = context(GpuOptions::default()) else {
        return;
    };
    let (d, plan) = plan_of(
        "A: matrix(4,3); x: vector(3); b: vector(4); (A*x+b)'*(A*x+b)",
        "x",
        "x",
        false,
    );
    let first: Vec<Batch<f32>> = inputs(&d, &plan, 10, 1).iter().map(to_f32).collect();
    let mut second = first.clone();
    for b in &mut second {
        if b.batch.is_some() {
            b.data.iter_mut().for_each(|v| *v = -2.0 * *v + 1.0);
        }
    }
    let (r1, r2): (Vec<&Batch<f32>>, Vec<&Batch<f32>>) =
        (first.iter().collect(), second.iter().collect());
    let session = ctx.session(&plan, &r1).unwrap();
    let (a, timing) = session.run_timed(&r1, 10).unwrap();
    let b = session.run(&r2, 10).unwrap();
    assert_eq!(a, run_gpu(&ctx, &plan, &r1, 10).unwrap());
    assert_eq!(b, run_gpu(&ctx, &plan, &r2, 10).unwrap());
    assert_ne!(a, b);
    // A larger batch outgrows the session's buffers, a smaller one reuses the larger ones
    // (new batched inputs, the session's shared ones).
    for batch in [37, 3] {
        let values: Vec<Batch<f32>> = inputs(&d, &plan, batch, batch as u64)
            .iter()
            .zip(&first)
            .map(|(new, old)| match new.batch {
                Some(_) => to_f32(new),
                None => old.clone(),
            })
            .collect();
        let refs: Vec<&Batch<f32>> = values.iter().collect();
        assert_eq!(
            session.run(&refs, batch).unwrap(),
            run_gpu(&ctx, &plan, &refs, batch).unwrap(),
            "batch {batch}"
        );
    }
    assert!(
        timing.kernel_seconds > 0.0 && timing.kernel_seconds <= timing.end_to_end_seconds,
        "{timing:?}"
    );
}

/// A dispatch of more workgroups than one dimension allows is folded into two dimensions;
/// the results are the bits of the unfolded dispatch.
#[test]
fn folded_dispatches_equal_flat_ones() {
    let _serial = serial();
    let Some((flat, folded)) = context_pair(GpuOptions {
        max_workgroups_per_dimension: Some(2),
        ..GpuOptions::default()
    }) else {
        return;
    };
    let (d, plan) = plan_of("X: matrix(3,3); logdet(X)", "X", "X", false);
    // 300 items in workgroups of 64 are 5 groups: a 2×3 grid with at most 2 per dimension.
    let values: Vec<Batch<f32>> = inputs(&d, &plan, 300, 8).iter().map(to_f32).collect();
    let refs: Vec<&Batch<f32>> = values.iter().collect();
    assert_eq!(
        run_gpu(&flat, &plan, &refs, 300).unwrap(),
        run_gpu(&folded, &plan, &refs, 300).unwrap()
    );
}

#[test]
fn tiled_products_match_the_reference_across_partial_tiles_and_chunks() {
    // Shared 40×40 and 35×35 matrices: both products run as GEMM dispatches (shared on the
    // left and on the right), with tiles cut by 40 and 35 rows and by odd chunk sizes.
    let _serial = serial();
    let Some((whole, tiny)) = context_pair(chunks_of(33)) else {
        return;
    };
    let (d, plan) = plan_of(
        "A: matrix(40,40); C: matrix(35,35); X: matrix(40,35); tr(A*X*C*X')",
        "X",
        "X",
        false,
    );
    let kernel = matgrad::wgsl::generate(&plan).unwrap();
    let gemms: Vec<_> = kernel
        .stages
        .iter()
        .filter_map(|s| match s.kind {
            matgrad::wgsl::StageKind::Gemm(g) => Some(g),
            _ => None,
        })
        .collect();
    assert!(gemms.len() >= 2, "{}", kernel.source());
    // The sum of the two terms is stored by the last product, reading the other term (a
    // batched value an earlier dispatch left in scratch) entry by entry.
    assert_eq!(gemms.last().unwrap().fused, 1, "{}", kernel.source());
    assert_eq!(kernel.stages.len(), gemms.len(), "{}", kernel.source());
    let values = inputs(&d, &plan, 70, 11);
    for ctx in [&whole, &tiny] {
        let err = gpu_error(ctx, &plan, &values, 70, "tr(A*X*C*X')");
        assert!(err < F32_TOLERANCE, "gpu error {err:.2e}");
    }
}

/// Element-wise steps fused into a GEMM's stores (the product's entries never stored): on
/// a matrix-vector product (W6's logistic chain, then a negation fused into the second
/// product), on shared×batched matrices (entries of one item spread over N = 3·chunk
/// columns) and batched×shared ones, both reading a shared matrix entry by entry, and
/// through `mg_pow`; partial tiles of every shape, odd chunks.
#[test]
fn element_wise_steps_fused_into_products_match_the_reference() {
    let _serial = serial();
    let Some((whole, tiny)) = context_pair(chunks_of(33)) else {
        return;
    };
    let cases = [
        (
            "X: matrix(40,35); y: vector(40); w: vector(35); sum(log(vector(1)+exp(-y.*(X*w))))",
            "w",
        ),
        (
            "A: matrix(40,40); C: matrix(40,3); X: matrix(40,3); sum(exp(0.1*(A*X)).*C)",
            "X",
        ),
        (
            "B: matrix(40,40); C: matrix(3,40); X: matrix(3,40); sum(exp(0.1*(X*B)).*C)",
            "X",
        ),
        ("A: matrix(40,40); X: matrix(40,3); sum((A*X).^3)", "X"),
        // 12-row products: 16×256 tiles.
        (
            "A: matrix(12,90); c: vector(12); x: vector(90); sum(exp(0.1*(A*x)).*c)",
            "x",
        ),
        (
            "B: matrix(90,12); X: matrix(3,90); sum(exp(0.1*(X*B)))",
            "X",
        ),
    ];
    let mut tiles = std::collections::BTreeSet::new();
    for (source, wrt) in cases {
        let (d, plan) = plan_of(source, wrt, wrt, false);
        let kernel = matgrad::wgsl::generate(&plan).unwrap();
        let fused: usize = kernel
            .stages
            .iter()
            .map(|s| match s.kind {
                matgrad::wgsl::StageKind::Gemm(g) => {
                    tiles.insert(g.tile);
                    g.fused
                }
                _ => 0,
            })
            .sum();
        assert!(fused > 0, "{source}: nothing fused\n{}", kernel.source());
        let values = inputs(&d, &plan, 70, 12);
        for ctx in [&whole, &tiny] {
            let err = gpu_error(ctx, &plan, &values, 70, source);
            assert!(err < F32_TOLERANCE, "{source}: gpu error {err:.2e}");
        }
    }
    // 64×64 tiles, and 16×256 for the 12-row products (32×128: the random programs at
    // dimension 32).
    assert!(
        tiles.contains(&(64, 64)) && tiles.contains(&(16, 256)),
        "{tiles:?}"
    );
}

/// The LU building block at every size around the switch from the unrolled form (constant
/// indices, pivots by `select`) to the looped one: log-determinants and inverses of normal
/// matrices, which need row exchanges, against the reference; an exactly singular item (a
/// zero row) gives -Inf and an all-NaN inverse on the GPU and spoils no other item. Both
/// forms run on every adapter: the adapter's own budget, then the hardware budget (which a
/// software adapter would not choose: its unrolled blocks up to 8×8 run there too).
#[test]
fn lu_building_blocks_match_the_reference_at_every_size() {
    let _serial = serial();
    let Some(ctx) = context(GpuOptions::default()) else {
        return;
    };
    let Some(hardware) = context(GpuOptions {
        kernel_budget: Some(Budget::HARDWARE),
        ..GpuOptions::default()
    }) else {
        return;
    };
    for (ctx, sizes) in [
        (&ctx, 1..=10),
        (&hardware, 1..=Budget::HARDWARE.unrolled_lu_max),
    ] {
        lu_blocks_match_the_reference(ctx, sizes);
    }
}

fn lu_blocks_match_the_reference(ctx: &GpuContext, sizes: std::ops::RangeInclusive<usize>) {
    let budget = ctx.kernel_budget();
    let batch = 40;
    for n in sizes {
        let (d, plan) = plan_of(&format!("X: matrix({n},{n}); logdet(X)"), "X", "X", true);
        let mut values = inputs(&d, &plan, batch, n as u64);
        let x = values.iter_mut().find(|b| b.batch.is_some()).unwrap();
        x.data[3 * n * n..3 * n * n + n].fill(0.0);
        let what = format!("n = {n}, {budget:?}");
        let err = gpu_error(ctx, &plan, &values, batch, &what);
        assert!(err < F32_TOLERANCE, "{what}: gpu error {err:.2e}");

        let values32: Vec<Batch<f32>> = values.iter().map(to_f32).collect();
        let refs: Vec<&Batch<f32>> = values32.iter().collect();
        let out = run_gpu(ctx, &plan, &refs, batch).unwrap();
        let (inverse, logdet) = (&out[0], &out[1]);
        assert!(inverse.item(3).iter().all(|v| v.is_nan()), "{what}");
        assert_eq!(logdet.item(3)[0], f32::NEG_INFINITY, "{what}");
        let finite = (0..batch)
            .filter(|&i| inverse.item(i).iter().all(|v| v.is_finite()))
            .count();
        assert_eq!(finite, batch - 1, "{what}");
    }
}

/// A per-item loop longer than llvmpipe's cap on a shader's loop iterations (65 535, all
/// loops together) gives an error there, never the zeros it wrote past entry 65 535; on any
/// other adapter it runs and matches the reference.
#[test]
fn loops_past_the_software_adapters_cap_are_refused_there() {
    let _one = serial();
    let Some(ctx) = context(GpuOptions::default()) else {
        return;
    };
    let (d, plan) = plan_of("x: vector(70000); x'*x", "x", "x", false);
    let values = inputs(&d, &plan, 2, 5);
    if ctx.caps_loops() {
        let values32: Vec<Batch<f32>> = values.iter().map(to_f32).collect();
        let refs32: Vec<&Batch<f32>> = values32.iter().collect();
        match run_gpu(&ctx, &plan, &refs32, 2) {
            Err(GpuError::LoopLimit { needs, .. }) => assert!(needs >= 70_000, "{needs}"),
            other => panic!("expected the loop-limit error, got {:?}", other.map(|_| ())),
        }
    } else {
        let error = gpu_error(&ctx, &plan, &values, 2, "x'*x over 70000");
        assert!(error <= F32_TOLERANCE, "{error}");
    }
    // Below the cap the same kernel runs on every adapter.
    let (d, plan) = plan_of("x: vector(5000); x'*x", "x", "x", false);
    let values = inputs(&d, &plan, 2, 5);
    let error = gpu_error(&ctx, &plan, &values, 2, "x'*x over 5000");
    assert!(error <= F32_TOLERANCE, "{error}");
}
