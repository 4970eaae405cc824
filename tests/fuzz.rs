//! No input may panic: random strings and random token sequences go through the parser, the
//! type checker, the differentiator (by every variable) and every printer. Each must return a
//! value or an error.

use matgrad::diff::{differentiate, Layout, Request};
use matgrad::print::{render, Format};
use matgrad::types::check_program;
use proptest::prelude::*;

/// Runs the whole pipeline on `source`; returns whether it type-checked.
fn pipeline(source: &str) -> bool {
    let Ok(program) = check_program(source) else {
        return false;
    };
    let names: Vec<String> = program.graph.vars.iter().map(|v| v.name.clone()).collect();
    for name in names
        .iter()
        .chain(std::iter::once(&"nonexistent".to_string()))
    {
        for request in [Request::Derivative, Request::Hessian] {
            for layout in [Layout::Gradient, Layout::Numerator] {
                if let Ok(d) = differentiate(program.clone(), name, &request, layout) {
                    for format in [Format::Text, Format::Unicode, Format::Latex, Format::Json] {
                        let _ = render(&d.program.graph, d.node, format);
                    }
                }
            }
        }
    }
    true
}

use matgrad::generate::FUZZ_TOKENS as TOKENS;

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, .. ProptestConfig::default() })]

    #[test]
    fn random_strings_never_panic(source in "[xyAaBC0-9()'+*/.^; :,eytrsumvinldgx-]{0,40}") {
        pipeline(&source);
    }

    #[test]
    fn random_token_sequences_never_panic(tokens in proptest::collection::vec(proptest::sample::select(TOKENS), 0..24)) {
        pipeline(&tokens.concat());
        pipeline(&tokens.join(" "));
    }
}

/// Sanity check that the fuzzers reach the interesting paths: a good share of token
/// sequences built from whole expressions type-check and are differentiated.
#[test]
fn well_formed_sequences_reach_the_differentiator() {
    let sources = [
        "x: vector(3); A: matrix(3,3); x'*A*x",
        "sum(exp(x)) + tr(inv(X))",
        "a: scalar; logdet(X^2) * a",
        "norm2(diag(x)*x) ./ 2",
    ];
    for s in sources {
        assert!(pipeline(s), "{s} should type-check");
    }
}

/// Generated programs with a few random edits (a character deleted, duplicated or replaced,
/// a token swapped in): mostly near-valid input, which exercises the type checker's errors.
#[test]
fn mutated_programs_never_panic() {
    use rand::SeedableRng;
    let mut type_checked = 0;
    for seed in 0..1500u64 {
        let class = [
            matgrad::generate::Class::Scalar,
            matgrad::generate::Class::VecN,
        ][seed as usize % 2];
        let program = matgrad::generate::random_program(seed, 3, class);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let source = matgrad::generate::mutate(&program.source, &mut rng);
        if pipeline(&source) {
            type_checked += 1;
        }
    }
    assert!(
        type_checked > 100,
        "only {type_checked} mutants type-checked"
    );
}
