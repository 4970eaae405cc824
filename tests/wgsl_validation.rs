//! Every generated WGSL module is parsed and validated by naga, with no GPU needed: the
//! whole seed catalog (with the variable batched, and with everything batched), 200+ random
//! programs, and one program that uses every operation of the language, each within the
//! hardware and the software kernel budgets.

use matgrad::catalog::CASES;
use matgrad::diff::{differentiate, Derivative, Layout, Request};
use matgrad::generate::{random_program, Class};
// Scalar programs differentiate by anything; vector programs by vectors and scalars.
use matgrad::plan::Plan;
use matgrad::types::check_program;
use matgrad::verify::dimension_sizes;
use matgrad::wgsl::{generate_within, Budget};

fn validate_all_assignments(d: &Derivative, what: &str) {
    let g = &d.program.graph;
    let only: Vec<bool> = (0..g.vars.len()).map(|v| v as u32 == d.wrt).collect();
    let all: Vec<bool> = vec![true; g.vars.len()];
    for batched in [only, all] {
        let plan = Plan::new(g, &[d.node, d.program.root], &dimension_sizes(g), &batched).unwrap();
        for budget in [Budget::HARDWARE, Budget::SOFTWARE] {
            if let Err(e) = generate_within(&plan, budget) {
                panic!("{what} ({budget:?}): {e}");
            }
        }
    }
}

#[test]
fn catalog_kernels_validate() {
    for case in CASES {
        let source = format!("{} {}", case.decls, case.function);
        let p = check_program(&source).unwrap();
        let request = if case.hessian {
            Request::Hessian
        } else {
            Request::Derivative
        };
        let d = differentiate(p, case.wrt, &request, case.layout).unwrap();
        validate_all_assignments(&d, &format!("{} {}", case.id, case.function));
    }
}

#[test]
fn random_program_kernels_validate() {
    let mut validated = 0;
    for seed in 1..=300u64 {
        let class = [Class::Scalar, Class::Scalar, Class::VecN][seed as usize % 3];
        let g = random_program(seed + 70_000, 1 + (seed % 5) as usize, class);
        let p = check_program(&g.source).unwrap();
        let Ok(d) = differentiate(p, &g.wrt, &Request::Derivative, Layout::Gradient) else {
            continue;
        };
        validate_all_assignments(&d, &format!("seed {seed}: {}", g.source));
        validated += 1;
    }
    assert!(validated >= 200, "only {validated} programs validated");
}

/// Every operation of the language (and diag both ways) in one program.
pub const EVERY_OPERATION: &str =
    "a: scalar; b: scalar; x: vector(3); y: vector(3); A: matrix(3,3); S: spd(3); \
     sum(sin(x)+cos(x)+tan(0.5*tanh(x))+arcsin(0.5*tanh(y))+arccos(0.5*tanh(y))+arctan(x)) \
     + sum(exp(0.5*tanh(x)).*log(x.^2+vector(1))./sqrt(y.*y+vector(1))) \
     + sum(abs(x)+sign(y)+relu(x)) + norm1(A*x) + norm2(A'*A) + tr(A^3) + det(S) + logdet(S) \
     + x'*inv(S)*y + a^2/(b^2+1) + sum(diag(x)*y) + sum(diag(A)) + (a-b)^3 + sum(matrix(2).*A) \
     + sum(eye*x) - (x'*y)^0.5^2";

#[test]
fn every_operation_validates() {
    let p =
        check_program(EVERY_OPERATION).unwrap_or_else(|e| panic!("{}", e.render(EVERY_OPERATION)));
    for wrt in ["x", "y", "A", "S", "a", "b"] {
        let d = differentiate(p.clone(), wrt, &Request::Derivative, Layout::Gradient).unwrap();
        validate_all_assignments(&d, wrt);
    }
}

/// The batch optimizer's kernels (`shaders/minimize.wgsl`, one text for every problem) are
/// valid WGSL.
#[test]
fn minimize_kernels_validate() {
    if let Err(e) = matgrad::wgsl::validate(matgrad::minimize::gpu_shader_source()) {
        panic!("shaders/minimize.wgsl: {}", e.message);
    }
}
