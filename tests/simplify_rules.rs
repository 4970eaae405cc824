//! Each simplification rule of `simplify::FAMILIES`, tested by name: its worked example must
//! simplify to the form the rule table states (written from the identity, not from matgrad's
//! output), the simplification must apply that rule, and the simplified expression must keep
//! the program's value at random points.

use matgrad::diff::{differentiate, Layout, Request};
use matgrad::eval::evaluate;
use matgrad::simplify::{rules::rule, rules_applied, simplify, simplify_traced, FAMILIES};
use matgrad::types::check_program;
use matgrad::verify::{dimension_sizes, random_point, relative_error, TOLERANCE};

fn check_rule(name: &str) {
    let rule = rule(name).unwrap_or_else(|| panic!("no rule named {name}"));
    let (program, expected) = rule.example;
    let mut p = check_program(program).unwrap_or_else(|e| panic!("{}", e.render(program)));
    let (simplified, applied) = simplify_traced(&mut p.graph, p.root);
    let printed = matgrad::print::text(&p.graph, simplified);
    assert_eq!(printed, expected, "rule {name}: {program}");
    assert!(
        applied.contains(&name),
        "rule {name} was not applied to {program}; applied: {applied:?}"
    );
    let sizes = dimension_sizes(&p.graph);
    let mut compared = 0;
    for seed in 1..=5 {
        let env = random_point(&p.graph, &sizes, seed);
        let (Ok(before), Ok(after)) = (
            evaluate(&p.graph, p.root, &env),
            evaluate(&p.graph, simplified, &env),
        ) else {
            continue;
        };
        if !(before.is_finite() && after.is_finite()) {
            continue;
        }
        compared += 1;
        let error = relative_error(&after, &before);
        // Rounding only (det(A^3) and det(A)^3 round apart); a wrong identity is off by far more.
        assert!(
            error < TOLERANCE,
            "rule {name}: relative error {error:.2e} at seed {seed}"
        );
    }
    assert!(compared >= 3, "rule {name}: only {compared} finite points");
}

/// A derivation reports the rules that shaped its printed form, each a rule of the tables;
/// a trace around other traces counts what they saw.
#[test]
fn a_derivation_reports_the_rules_that_shaped_it() {
    let program = check_program("A: matrix; x: vector; b: vector; (A*x+b)'*(A*x+b)").unwrap();
    let d = differentiate(program, "x", &Request::Derivative, Layout::Gradient).unwrap();
    assert_eq!(d.text(), "2*A'*(A*x+b)");
    // (A*x+b)'*A*... + A'*(A*x+b): transposed, collected into 2*..., the 2 and A' pulled out.
    for name in ["like-terms-collect", "common-factor-pulled-out"] {
        assert!(d.simplified_by.contains(&name), "{:?}", d.simplified_by);
    }
    for name in &d.simplified_by {
        assert!(rule(name).is_some(), "{name} is not in the tables");
    }
    let mut p = check_program("x: vector; x + x").unwrap();
    let (inner, outer) = rules_applied(|| {
        let root = p.root;
        let (_, inner) = simplify_traced(&mut p.graph, root);
        let once = p.graph.transpose(root);
        let twice = p.graph.transpose(once);
        simplify(&mut p.graph, twice);
        inner
    });
    assert_eq!(inner, ["like-terms-collect"]);
    assert_eq!(outer, ["like-terms-collect", "transpose-of-a-transpose"]);
}

macro_rules! rule_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(#[test] fn $test() { check_rule($name); })*

        #[test]
        fn every_rule_has_a_test_and_a_unique_name() {
            let tested = [$($name),*];
            let mut names: Vec<&str> = FAMILIES
                .iter()
                .flat_map(|f| f.rules.iter().map(|r| r.name))
                .collect();
            for name in &names {
                assert!(tested.contains(name), "rule {name} has no test");
            }
            let count = names.len();
            names.sort();
            names.dedup();
            assert_eq!(names.len(), count, "rule names are unique");
            // The README's code map states the count.
            let readme = include_str!("../README.md");
            let stated = format!("{count} named rules in {} families", FAMILIES.len());
            assert!(readme.contains(&stated), "README.md should say \"{stated}\"");
        }
    };
}

rule_tests! {
    transpose_of_a_transpose => "transpose-of-a-transpose",
    transpose_of_a_symmetric_matrix => "transpose-of-a-symmetric-matrix",
    transpose_of_a_diagonal => "transpose-of-a-diagonal",
    transpose_of_ones => "transpose-of-ones",
    transpose_of_a_product => "transpose-of-a-product",
    transpose_of_element_wise => "transpose-of-element-wise",
    transpose_of_a_sum => "transpose-of-a-sum",
    scalar_orientation => "scalar-orientation",
    orientation_where_transposes_do_not_count => "orientation-where-transposes-do-not-count",
    identity_is_the_unit => "identity-is-the-unit",
    zero_annihilates => "zero-annihilates",
    scalar_distributes => "scalar-distributes",
    scalar_times_a_long_sum => "scalar-times-a-long-sum",
    matrix_powers_merge => "matrix-powers-merge",
    scalar_powers_merge => "scalar-powers-merge",
    inner_product_is_a_scalar => "inner-product-is-a-scalar",
    diagonals_merge => "diagonals-merge",
    diagonal_times_ones => "diagonal-times-ones",
    diagonal_distributes_where_it_meets_ones => "diagonal-distributes-where-it-meets-ones",
    like_terms_collect => "like-terms-collect",
    exact_fractions => "exact-fractions",
    constants_fold => "constants-fold",
    sum_spelled_out_to_collect => "sum-spelled-out-to-collect",
    common_factor_pulled_out => "common-factor-pulled-out",
    terms_sharing_an_end_grouped => "terms-sharing-an-end-grouped",
    negated_sum_keeps_its_orientation => "negated-sum-keeps-its-orientation",
    terms_in_printed_order => "terms-in-printed-order",
    element_wise_coefficients_out => "element-wise-coefficients-out",
    element_wise_powers_add => "element-wise-powers-add",
    element_wise_product_distributes_where_it_cancels => "element-wise-product-distributes-where-it-cancels",
    inner_product_cancels_a_quotient => "inner-product-cancels-a-quotient",
    element_wise_power_of_a_term => "element-wise-power-of-a-term",
    element_wise_power_by_one_or_zero => "element-wise-power-by-one-or-zero",
    function_of_a_constant => "function-of-a-constant",
    scalar_power_folds => "scalar-power-folds",
    power_of_a_scalar_product => "power-of-a-scalar-product",
    matrix_power_is_a_product => "matrix-power-is-a-product",
    inverse_of_a_product => "inverse-of-a-product",
    reduction_of_a_scalar => "reduction-of-a-scalar",
    reductions_are_linear => "reductions-are-linear",
    trace_rotation => "trace-rotation",
    ones_inner_product_is_a_sum => "ones-inner-product-is-a-sum",
    diagonal_of_a_diagonal_matrix => "diagonal-of-a-diagonal-matrix",
    diagonal_matrix_of_ones => "diagonal-matrix-of-ones",
    diagonal_of_rank_one => "diagonal-of-rank-one",
    diagonal_of_a_product_with_ones => "diagonal-of-a-product-with-ones",
    linear_functions_pull_out_scalars => "linear-functions-pull-out-scalars",
    logistic_without_overflow => "logistic-without-overflow",
    determinant_of_a_power => "determinant-of-a-power",
}
