//! Each differentiation rule of `diff::RULES`, tested by name: its worked example must derive
//! to the formula the rule table states (written from the mathematics, not from matgrad's
//! output) and agree with finite differences; and the element-wise derivative of every
//! function agrees with finite differences.

mod common;

use common::{derive, first_usable};
use matgrad::diff::{Layout, Request, RULES};
use matgrad::expr::Func;
use matgrad::verify::TOLERANCE;

fn check_rule(name: &str) {
    let rule = RULES
        .iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no rule named {name}"));
    let (program, wrt, expected) = rule.example;
    let d = derive(program, wrt, Request::Derivative, Layout::Gradient);
    assert_eq!(d.text(), expected, "rule {name}: d/d{wrt} of {program}");
    let (_, c) = first_usable(&d, 11, 10).unwrap_or_else(|| panic!("rule {name}: no usable point"));
    assert!(
        c.rel_error < TOLERANCE,
        "rule {name}: relative error {:.2e}",
        c.rel_error
    );
}

macro_rules! rule_tests {
    ($($test:ident => $name:literal),* $(,)?) => {
        $(#[test] fn $test() { check_rule($name); })*

        #[test]
        fn every_rule_has_a_test() {
            let tested = [$($name),*];
            for rule in RULES {
                assert!(tested.contains(&rule.name), "rule {} has no test", rule.name);
            }
        }
    };
}

rule_tests! {
    rule_add => "add",
    rule_neg => "neg",
    rule_matmul => "matmul",
    rule_scale => "scale",
    rule_div => "div",
    rule_hadamard => "hadamard",
    rule_elemdiv => "elemdiv",
    rule_pow => "pow",
    rule_elempow => "elempow",
    rule_matpow => "matpow",
    rule_transpose => "transpose",
    rule_map => "map",
    rule_sum => "sum",
    rule_norm1 => "norm1",
    rule_norm2 => "norm2",
    rule_trace => "tr",
    rule_det => "det",
    rule_logdet => "logdet",
    rule_inv => "inv",
    rule_diag => "diag",
    rule_diagpart => "diagpart",
}

/// Every element-wise function's derivative, by finite differences, on inputs inside its
/// domain (`arcsin` and `arccos` on (-1, 1), `log` and `sqrt` on positive numbers).
#[test]
fn every_elementwise_derivative_agrees_with_finite_differences() {
    for f in Func::ALL {
        let arg = match f {
            Func::Arcsin | Func::Arccos => "0.5*tanh(x)",
            Func::Log | Func::Sqrt => "(x.^2+vector(1))",
            _ => "x",
        };
        let program = format!("x: vector(4); a: vector(4); a'*{}({arg})", f.name());
        let d = derive(&program, "x", Request::Derivative, Layout::Gradient);
        let (_, c) =
            first_usable(&d, 3, 20).unwrap_or_else(|| panic!("{}: no usable point", f.name()));
        assert!(
            c.rel_error < TOLERANCE,
            "{}: {} has relative error {:.2e}",
            f.name(),
            d.text(),
            c.rel_error
        );
    }
}
