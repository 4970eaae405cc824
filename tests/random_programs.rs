//! Property tests over random well-typed programs: derived gradients, Hessians and
//! Jacobians against finite differences; simplification and printing preserve values.
//! Failures print the program, the variable and the seed.

mod common;

use common::{derive, evaluate_printed, first_usable, rel};
use matgrad::diff::{differentiate, gradient, Layout, Request};
use matgrad::eval::evaluate;
use matgrad::generate::{random_program, Class};
use matgrad::simplify::simplify;
use matgrad::types::check_program;
use matgrad::verify::TOLERANCE;

/// Gradients of at least 500 random scalar programs agree with finite differences to 1e-6.
#[test]
fn gradients_of_random_programs_agree_with_finite_differences() {
    let mut compared = 0;
    let mut unusable = 0;
    let mut failures = Vec::new();
    let mut seed = 0u64;
    while compared < 520 && seed < 3000 {
        seed += 1;
        let g = random_program(seed, 1 + (seed % 5) as usize, Class::Scalar);
        let d = derive(&g.source, &g.wrt, Request::Derivative, Layout::Gradient);
        match first_usable(&d, seed * 100, 8) {
            Some((_, c)) => {
                compared += 1;
                if c.rel_error > TOLERANCE {
                    failures.push(format!(
                        "seed {seed}: d/d{} of `{}`\n  derived {}\n  rel error {:.3e}",
                        g.wrt,
                        g.source,
                        d.text(),
                        c.rel_error
                    ));
                }
            }
            None => unusable += 1,
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        compared >= 500,
        "only {compared} programs compared ({unusable} had no usable point)"
    );
}

/// Hessians (by vector variables) and Jacobians (of vector programs) of random programs.
#[test]
fn hessians_and_jacobians_of_random_programs_agree_with_finite_differences() {
    let mut compared = 0;
    let mut unsupported = Vec::new();
    let mut failures = Vec::new();
    for seed in 1..=240u64 {
        let (class, request) = if seed % 2 == 0 {
            (Class::Scalar, Request::Hessian)
        } else {
            (Class::VecN, Request::Derivative)
        };
        let g = random_program(seed + 10_000, 1 + (seed % 4) as usize, class);
        let program = check_program(&g.source).expect("generated programs type-check");
        let wrt = if g.wrt.chars().all(|c| c.is_ascii_lowercase())
            && !["a", "b"].contains(&g.wrt.as_str())
        {
            g.wrt.clone()
        } else {
            continue;
        };
        let d = match differentiate(program, &wrt, &request, Layout::Gradient) {
            Ok(d) => d,
            Err(e) => {
                unsupported.push(format!("seed {seed}: {} ({})", g.source, e.message));
                continue;
            }
        };
        if let Some((_, c)) = first_usable(&d, seed * 7, 8) {
            compared += 1;
            if c.rel_error > TOLERANCE {
                failures.push(format!(
                    "seed {seed}: {request:?} by {wrt} of `{}`\n  derived {}\n  rel error {:.3e}",
                    g.source,
                    d.text(),
                    c.rel_error
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        compared >= 60,
        "only {compared} compared; unsupported: {unsupported:#?}"
    );
    // Closed forms exist for every Jacobian and Hessian the generator makes.
    assert!(
        unsupported.is_empty(),
        "unsupported:\n{}",
        unsupported.join("\n")
    );
}

/// The simplifier never changes a value: raw reverse-mode derivative vs simplified, and the
/// program itself vs its simplified form.
#[test]
fn simplification_preserves_values() {
    let mut compared = 0;
    for seed in 1..=400u64 {
        let g = random_program(seed + 20_000, 1 + (seed % 5) as usize, Class::Scalar);
        let mut p = check_program(&g.source).unwrap();
        let var = p.var_index(&g.wrt).unwrap();
        let raw = gradient(&mut p.graph, p.root, var);
        let simple = simplify(&mut p.graph, raw);
        let simple_f = simplify(&mut p.graph, p.root);
        let sizes = matgrad::verify::dimension_sizes(&p.graph);
        let env = matgrad::verify::random_point(&p.graph, &sizes, seed);
        let values =
            [raw, simple, p.root, simple_f].map(|id| evaluate(&p.graph, id, &env).unwrap());
        if !values.iter().all(|v| v.is_finite()) {
            continue;
        }
        compared += 1;
        let (e1, e2) = (rel(&values[1], &values[0]), rel(&values[3], &values[2]));
        assert!(
            e1 < 1e-9 && e2 < 1e-9,
            "seed {seed}: `{}` by {}: gradient {e1:.2e}, value {e2:.2e}\n raw: {}\n simplified: {}",
            g.source,
            g.wrt,
            matgrad::print::text(&p.graph, raw),
            matgrad::print::text(&p.graph, simple)
        );
    }
    assert!(compared >= 300, "only {compared} points were finite");
}

/// What `text` prints parses back, with the program's declarations, to the same value.
#[test]
fn printed_text_round_trips() {
    let mut compared = 0;
    for seed in 1..=400u64 {
        let class = [Class::Scalar, Class::VecN, Class::MatMN][seed as usize % 3];
        let g = random_program(seed + 30_000, 1 + (seed % 5) as usize, class);
        let request = if class == Class::Scalar || g.wrt == "a" || g.wrt == "b" {
            Request::Derivative
        } else {
            continue;
        };
        let d = derive(&g.source, &g.wrt, request, Layout::Gradient);
        let Some((env, c)) = first_usable(&d, seed, 4) else {
            continue;
        };
        let text = d.text();
        let value = evaluate_printed(&d, &g.source, &text, &env)
            .unwrap_or_else(|e| panic!("seed {seed}: `{text}` does not read back:\n{e}"));
        compared += 1;
        assert!(
            rel(&value, &c.derived) < 1e-12,
            "seed {seed}: `{text}` reads back to a different value"
        );
    }
    assert!(compared >= 100, "only {compared} compared");
}
