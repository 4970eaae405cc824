//! Benchmarks of the symbolic pipeline (parse, type-check, differentiate, simplify) on the
//! six standard workloads of `shared/workloads.md`, of the whole seed catalog check, and of
//! inputs that grow: a sum over 10 000 variables, the Hessian of a product of 20 factors.
//! Run with `cargo bench --bench symbolic`; CI only compiles them.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use matgrad::diff::{differentiate, Layout, Request};
use matgrad::types::check_program;

const WORKLOADS: &[(&str, &str, &str)] = &[
    (
        "W1 lsq-shared",
        "A: matrix(64,64); x: vector(64); b: vector(64); (A*x+b)'*(A*x+b)",
        "x",
    ),
    (
        "W2 quadform-matrix",
        "C: matrix(16,16); X: matrix(16,16); a: vector(16); a'*X'*C*X*a",
        "X",
    ),
    (
        "W3 lsq-per-item",
        "A: matrix(8,8); x: vector(8); b: vector(8); (A*x+b)'*(A*x+b)",
        "x",
    ),
    ("W4 logdet", "X: matrix(8,8); logdet(X)", "X"),
    (
        "W5 trace",
        "A: matrix(32,32); B: matrix(32,32); X: matrix(32,32); tr(A*X*B*X')",
        "X",
    ),
    (
        "W6 logistic",
        "X: matrix(256,64); y: vector(256); w: vector(64); sum(log(vector(1)+exp(-y.*(X*w))))",
        "w",
    ),
];

fn derive_workloads(c: &mut Criterion) {
    let mut group = c.benchmark_group("derive");
    for &(name, source, wrt) in WORKLOADS {
        group.bench_function(name, |b| {
            b.iter(|| {
                let program = check_program(black_box(source)).expect("workload type-checks");
                differentiate(program, wrt, &Request::Derivative, Layout::Gradient)
                    .expect("derives")
            })
        });
    }
    group.finish();
}

fn hessian_logistic(c: &mut Criterion) {
    let (_, source, wrt) = WORKLOADS[5];
    c.bench_function("hessian W6 logistic", |b| {
        b.iter(|| {
            let program = check_program(black_box(source)).expect("type-checks");
            differentiate(program, wrt, &Request::Hessian, Layout::Gradient).expect("derives")
        })
    });
}

fn catalog(c: &mut Criterion) {
    c.bench_function("catalog (89 variants, 3 points each)", |b| {
        b.iter(|| matgrad::catalog::run(black_box(1)))
    });
}

/// Programs whose derivation was quadratic or exponential in their size (issue 17).
fn growing_inputs(c: &mut Criterion) {
    let terms: Vec<String> = (0..10_000).map(|i| format!("c{i}*sin(x'*x+{i})")).collect();
    let sum = format!("x: vector(3); {}", terms.join("+"));
    let factors: Vec<String> = (1..=20).map(|i| format!("(x'*x+{i})")).collect();
    let product = format!("x: vector(3); {}", factors.join("*"));
    let mut group = c.benchmark_group("growing");
    group.sample_size(10);
    group.bench_function("gradient, 10 000 variables", |b| {
        b.iter(|| {
            let program = check_program(black_box(&sum)).expect("type-checks");
            differentiate(program, "x", &Request::Derivative, Layout::Gradient).expect("derives")
        })
    });
    group.bench_function("hessian, product of 20 factors, printed", |b| {
        b.iter(|| {
            let program = check_program(black_box(&product)).expect("type-checks");
            let d =
                differentiate(program, "x", &Request::Hessian, Layout::Gradient).expect("derives");
            d.text().len()
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    derive_workloads,
    hessian_logistic,
    catalog,
    growing_inputs
);
criterion_main!(benches);
