//! The seed catalog: every identity of `shared/seed-identities.md`, decided by computation.
//!
//! In: [`CASES`], one row per variant of each entry S01–S70: the function (with declarations
//! that state the entry's conditions and give non-square shapes wherever the entry allows
//! them), the variable, the layout and the derivative *as printed in the seed*. Out: a
//! [`CaseReport`] per variant: matgrad's derivation is compared with central finite
//! differences, and so is the printed formula, at several random points. Invariants: a
//! printed formula is never trusted (it is parsed and evaluated like any user input); the
//! verdict `agrees` or `printed formula wrong` is only given when matgrad's own formula agrees
//! with finite differences, else the case is reported as a matgrad failure.

use serde::Serialize;

use crate::diff::{differentiate, Derivative, Layout, Request};
use crate::eval::evaluate;
use crate::types::{check_program, check_program_with_shape};
use crate::verify::{compare, dimension_sizes, random_point, translate_env, TOLERANCE};

/// One variant of one seed identity.
#[derive(Clone, Copy, Debug)]
pub struct Case {
    pub id: &'static str,
    /// Declarations: the kinds, the shapes and the entry's conditions (`symmetric`).
    pub decls: &'static str,
    pub function: &'static str,
    pub wrt: &'static str,
    pub hessian: bool,
    pub layout: Layout,
    /// The derivative as the seed prints it, in matgrad syntax.
    pub printed: &'static str,
    /// The condition the seed attaches, in words ("" when none).
    pub condition: &'static str,
}

const fn grad(
    id: &'static str,
    decls: &'static str,
    function: &'static str,
    wrt: &'static str,
    printed: &'static str,
) -> Case {
    Case {
        id,
        decls,
        function,
        wrt,
        hessian: false,
        layout: Layout::Gradient,
        printed,
        condition: "",
    }
}

const fn when(mut case: Case, condition: &'static str) -> Case {
    case.condition = condition;
    case
}

const fn hess(
    id: &'static str,
    decls: &'static str,
    function: &'static str,
    printed: &'static str,
) -> Case {
    Case {
        id,
        decls,
        function,
        wrt: "x",
        hessian: true,
        layout: Layout::Gradient,
        printed,
        condition: "",
    }
}

const fn numer(
    id: &'static str,
    decls: &'static str,
    function: &'static str,
    printed: &'static str,
) -> Case {
    Case {
        id,
        decls,
        function,
        wrt: "x",
        hessian: false,
        layout: Layout::Numerator,
        printed,
        condition: "",
    }
}

const VEC: &str = "a: vector(n); x: vector(n);";
const AXB: &str = "A: matrix(m,n); x: vector(n); b: vector(m);";
const QUAD: &str =
    "A: matrix(m,n); b: vector(m); C: matrix(m,p); D: matrix(p,n); e: vector(p); x: vector(n);";
const SQ: &str = "A: matrix(n,n); B: matrix(n,n); X: matrix(n,n);";

/// Every variant of every seed entry. Shapes use distinct dimensions where the entry allows.
pub static CASES: &[Case] = &[
    grad("S01", VEC, "x'*a", "x", "a"),
    grad("S01", VEC, "a'*x", "x", "a"),
    grad(
        "S02",
        "a: vector(m); b: vector(n); X: matrix(m,n);",
        "a'*X*b",
        "X",
        "a*b'",
    ),
    grad(
        "S03",
        "a: vector(n); X: matrix(n,n);",
        "a'*X*a",
        "X",
        "a*a'",
    ),
    grad(
        "S03",
        "a: vector(n); X: matrix(n,n);",
        "a'*X'*a",
        "X",
        "a*a'",
    ),
    grad(
        "S04",
        "a: vector(n); b: vector(m); X: matrix(m,n);",
        "a'*X'*b",
        "X",
        "b*a'",
    ),
    grad("S05", "A: matrix(n,m); x: vector(n);", "x'*A", "x", "A"),
    grad("S06", "x: vector(n);", "x'", "x", "eye"),
    grad(
        "S07",
        QUAD,
        "(A*x+b)'*C*(D*x+e)",
        "x",
        "A'*C*(D*x+e) + D'*C'*(A*x+b)",
    ),
    grad(
        "S08",
        "C: matrix(n,n); x: vector(n);",
        "x'*C*x",
        "x",
        "(C+C')*x",
    ),
    when(
        grad(
            "S08",
            "C: symmetric(n); x: vector(n);",
            "x'*C*x",
            "x",
            "2*C*x",
        ),
        "C symmetric",
    ),
    grad("S09", "x: vector(n);", "x'*x", "x", "2*x"),
    grad(
        "S10",
        "A: matrix(m,n); b: vector(m); D: matrix(m,n); e: vector(m); x: vector(n);",
        "(A*x+b)'*(D*x+e)",
        "x",
        "A'*(D*x+e) + D'*(A*x+b)",
    ),
    grad("S11", AXB, "(A*x+b)'*(A*x+b)", "x", "2*A'*(A*x+b)"),
    when(
        grad(
            "S12",
            "A: matrix(m,n); x: vector(n); b: vector(m); C: symmetric(m);",
            "(A*x+b)'*C*(A*x+b)",
            "x",
            "2*A'*C*(A*x+b)",
        ),
        "C symmetric",
    ),
    grad(
        "S13",
        "a: vector(n); b: vector(n); X: matrix(m,n);",
        "a'*X'*X*b",
        "X",
        "X*(a*b' + b*a')",
    ),
    grad(
        "S14",
        "a: vector(n); X: matrix(m,n);",
        "a'*X'*X*a",
        "X",
        "2*X*a*a'",
    ),
    grad(
        "S15",
        "a: vector(n); b: vector(n); X: matrix(m,n); C: matrix(m,m);",
        "a'*X'*C*X*b",
        "X",
        "C'*X*a*b' + C*X*b*a'",
    ),
    grad(
        "S16",
        "a: vector(n); X: matrix(m,n); C: matrix(m,m);",
        "a'*X'*C*X*a",
        "X",
        "(C+C')*X*a*a'",
    ),
    when(
        grad(
            "S16",
            "a: vector(n); X: matrix(m,n); C: symmetric(m);",
            "a'*X'*C*X*a",
            "X",
            "2*C*X*a*a'",
        ),
        "C symmetric",
    ),
    grad(
        "S17",
        "a: vector(n); b: vector(m); X: matrix(m,n); C: matrix(m,m);",
        "(X*a+b)'*C*(X*a+b)",
        "X",
        "(C+C')*(X*a+b)*a'",
    ),
    grad(
        "S18",
        "A: matrix(n,n); x: vector(n);",
        "x'*A*x*x'",
        "x",
        "(A+A')*x*x' + (x'*A*x)*eye",
    ),
    grad(
        "S19",
        "A: matrix(n,n); B: matrix(n,n); t: scalar;",
        "inv(A+t*B)",
        "t",
        "-inv(A+t*B)*B*inv(A+t*B)",
    ),
    grad("S20", "X: matrix(n,n);", "tr(X)", "X", "eye"),
    grad("S21", "X: matrix(n,n);", "tr(X^2)", "X", "2*(X^1)'"),
    grad("S21", "X: matrix(n,n);", "tr(X^3)", "X", "3*(X^2)'"),
    grad(
        "S22",
        "A: matrix(n,n); X: matrix(n,n);",
        "tr(A*X^3)",
        "X",
        "(A*X^2)' + (X*A*X)' + (X^2*A)'",
    ),
    grad(
        "S23",
        "A: matrix(m,n); X: matrix(n,n); B: matrix(n,m);",
        "tr(A*inv(X)*B)",
        "X",
        "-(inv(X)*B*A*inv(X))'",
    ),
    grad(
        "S24",
        "A: matrix(n,n); X: matrix(n,n);",
        "tr(A*inv(X))",
        "X",
        "-inv(X)'*A'*inv(X)'",
    ),
    grad(
        "S24",
        "A: matrix(n,n); X: matrix(n,n);",
        "tr(inv(X)*A)",
        "X",
        "-inv(X)'*A'*inv(X)'",
    ),
    grad(
        "S25",
        "A: matrix(m,p); X: matrix(m,n); B: matrix(p,n);",
        "tr(A'*X*B')",
        "X",
        "A*B",
    ),
    grad(
        "S25",
        "A: matrix(m,p); X: matrix(m,n); B: matrix(p,n);",
        "tr(B*X'*A)",
        "X",
        "A*B",
    ),
    grad(
        "S26",
        "A: matrix(m,n); X: matrix(m,n);",
        "tr(X*A')",
        "X",
        "A",
    ),
    grad(
        "S26",
        "A: matrix(m,n); X: matrix(m,n);",
        "tr(A'*X)",
        "X",
        "A",
    ),
    grad(
        "S26",
        "A: matrix(m,n); X: matrix(m,n);",
        "tr(X'*A)",
        "X",
        "A",
    ),
    grad(
        "S26",
        "A: matrix(m,n); X: matrix(m,n);",
        "tr(A*X')",
        "X",
        "A",
    ),
    grad(
        "S27",
        "A: matrix(m,m); X: matrix(m,n); B: matrix(n,n);",
        "tr(A*X*B*X')",
        "X",
        "A'*X*B' + A*X*B",
    ),
    grad(
        "S28",
        "A: matrix(n,n); X: matrix(m,n);",
        "tr(X*A*X')",
        "X",
        "X*(A+A')",
    ),
    grad(
        "S29",
        "A: matrix(m,m); X: matrix(m,n);",
        "tr(X'*A*X)",
        "X",
        "X'*(A+A')",
    ),
    grad(
        "S29",
        "A: matrix(n,n); X: matrix(n,n);",
        "tr(X'*A*X)",
        "X",
        "X'*(A+A')",
    ),
    grad(
        "S30",
        "A: matrix(n,n); X: matrix(m,n);",
        "tr(A*X'*X)",
        "X",
        "(A+A')*X",
    ),
    grad(
        "S30",
        "A: matrix(n,n); X: matrix(n,n);",
        "tr(A*X'*X)",
        "X",
        "(A+A')*X",
    ),
    grad(
        "S31",
        "A: matrix(n,m); B: matrix(n,m); X: matrix(m,n);",
        "tr(A*X*B*X)",
        "X",
        "A'*X'*B' + B'*X'*A'",
    ),
    when(
        grad(
            "S32",
            "X: matrix(5,3); C: symmetric(5); A: matrix(3,3);",
            "tr(inv(X'*C*X)*A)",
            "X",
            "-(C*X*inv(X'*C*X))*(A+A')*inv(X'*C*X)",
        ),
        "C symmetric",
    ),
    when(
        grad(
            "S32",
            "X: matrix(5,3); C: symmetric(5); A: matrix(3,3);",
            "tr(A*inv(X'*C*X))",
            "X",
            "-(C*X*inv(X'*C*X))*(A+A')*inv(X'*C*X)",
        ),
        "C symmetric",
    ),
    when(
        grad(
            "S33",
            "X: matrix(5,3); B: symmetric(5); C: symmetric(5);",
            "tr(inv(X'*C*X)*(X'*B*X))",
            "X",
            "-2*(C*X*inv(X'*C*X))*X'*B*X*inv(X'*C*X) + 2*B*X*inv(X'*C*X)",
        ),
        "B, C symmetric",
    ),
    when(
        grad(
            "S33",
            "X: matrix(5,3); B: symmetric(5); C: symmetric(5);",
            "tr((X'*B*X)*inv(X'*C*X))",
            "X",
            "-2*(C*X*inv(X'*C*X))*X'*B*X*inv(X'*C*X) + 2*B*X*inv(X'*C*X)",
        ),
        "B, C symmetric",
    ),
    grad("S34", "X: matrix(n,n);", "det(X)", "X", "det(X)*inv(X)'"),
    grad("S34", "X: matrix(n,n);", "det(X')", "X", "det(X)*inv(X)'"),
    grad("S35", SQ, "det(A*X*B)", "X", "det(A*X*B)*inv(X)'"),
    grad("S36", SQ, "log(det(A*X*B))", "X", "inv(X)'"),
    grad(
        "S37",
        "X: matrix(n,n);",
        "det(X^2)",
        "X",
        "2*det(X^2)*inv(X)'",
    ),
    grad(
        "S37",
        "X: matrix(n,n);",
        "det(X^3)",
        "X",
        "3*det(X^3)*inv(X)'",
    ),
    grad("S38", "X: matrix(n,n);", "log(det(X^2))", "X", "2*inv(X)'"),
    grad("S38", "X: matrix(n,n);", "log(det(X^3))", "X", "3*inv(X)'"),
    when(
        grad(
            "S39",
            "X: matrix(5,3); C: matrix(5,5);",
            "det(X'*C*X)",
            "X",
            "det(X'*C*X)*(C+C')*X*inv(X'*C*X)",
        ),
        "C real",
    ),
    when(
        grad(
            "S40",
            "X: matrix(5,3); C: symmetric(5);",
            "det(X'*C*X)",
            "X",
            "2*det(X'*C*X)*C*X*inv(X'*C*X)",
        ),
        "C real, symmetric",
    ),
    when(
        grad(
            "S41",
            "X: matrix(5,3); C: symmetric(5);",
            "log(det(X'*C*X))",
            "X",
            "2*C*X*inv(X'*C*X)",
        ),
        "C real, symmetric",
    ),
    hess("S42", VEC, "a'*x", "matrix(0)"),
    hess("S43", QUAD, "(A*x+b)'*C*(D*x+e)", "A'*C*D + D'*C'*A"),
    hess("S44", "C: matrix(n,n); x: vector(n);", "x'*C*x", "C + C'"),
    hess("S45", "x: vector(n);", "x'*x", "2*eye"),
    hess(
        "S46",
        "A: matrix(m,n); b: vector(m); D: matrix(m,n); e: vector(m); x: vector(n);",
        "(A*x+b)'*(D*x+e)",
        "A'*D + D'*A",
    ),
    hess("S47", AXB, "(A*x+b)'*(A*x+b)", "2*A'*A"),
    when(
        hess(
            "S48",
            "A: matrix(m,n); x: vector(n); b: vector(m); C: symmetric(m);",
            "(A*x+b)'*C*(A*x+b)",
            "2*A'*C*A",
        ),
        "C symmetric",
    ),
    grad("S49", "A: matrix(m,n); x: vector(n);", "A*x", "x", "A'"),
    grad("S50", "A: matrix(n,m); x: vector(n);", "x'*A", "x", "A"),
    grad(
        "S51",
        "U: vector(m); V: vector(n); X: matrix(m,n);",
        "U'*X*V",
        "X",
        "U*V'",
    ),
    grad(
        "S52",
        "U: vector(n); V: vector(m); X: matrix(m,n);",
        "U'*X'*V",
        "X",
        "V*U'",
    ),
    grad(
        "S53",
        "A: matrix(n,n); x: vector(n);",
        "x'*A*x",
        "x",
        "A*x + A'*x",
    ),
    grad(
        "S54",
        "U: vector(n); X: matrix(m,n);",
        "U'*X'*X*U",
        "X",
        "2*X*U*U'",
    ),
    grad(
        "S55",
        "U: vector(n); V: vector(m); X: matrix(m,n);",
        "(X*U-V)'*(X*U-V)",
        "X",
        "2*(X*U-V)*U'",
    ),
    numer("S56", VEC, "a'*x", "a'"),
    numer("S56", VEC, "x'*a", "a'"),
    numer("S57", VEC, "(x'*a)^2", "2*x'*a*a'"),
    numer("S58", "x: vector(n);", "x'*x", "2*x'"),
    numer("S59", "A: matrix(m,n); x: vector(n);", "A*x", "A"),
    numer(
        "S60",
        "A: matrix(n,n); x: vector(n);",
        "x'*A*x",
        "2*x'*(A+A')",
    ),
    grad("S61", VEC, "x'*a", "x", "a"),
    grad("S61", VEC, "a'*x", "x", "a"),
    grad("S62", "x: vector(n);", "x'*x", "x", "2*x"),
    grad(
        "S63",
        "A: matrix(n,n); x: vector(n);",
        "x'*A*x",
        "x",
        "A*x + A'*x",
    ),
    grad(
        "S64",
        "a: vector(n); b: vector(n); x: vector(n);",
        "a'*x*x'*b",
        "x",
        "a*b'*x + b*a'*x",
    ),
    grad(
        "S65",
        "a: vector(m); b: vector(n); X: matrix(m,n);",
        "a'*X*b",
        "X",
        "a*b'",
    ),
    grad(
        "S66",
        "a: vector(n); b: vector(m); X: matrix(m,n);",
        "a'*X'*b",
        "X",
        "b*a'",
    ),
    grad(
        "S67",
        "a: vector(m); b: vector(m); X: matrix(m,n);",
        "a'*X*X'*b",
        "X",
        "a*b'*X + b*a'*X",
    ),
    grad(
        "S68",
        "a: vector(n); b: vector(n); X: matrix(m,n);",
        "a'*X'*X*b",
        "X",
        "X*b*a' + X*a*b'",
    ),
    grad("S69", "A: vector(n); x: vector(n);", "A'*x", "x", "A"),
    grad(
        "S70",
        "A: matrix(n,n); x: vector(n);",
        "x'*A*x",
        "x",
        "(A+A')*x",
    ),
];

/// The verdict on one variant.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// matgrad, the printed formula and finite differences agree.
    Agrees,
    /// matgrad agrees with finite differences; the printed formula does not.
    PrintedFormulaWrong { why: String },
    /// matgrad could not derive it.
    Unsupported { why: String },
    /// matgrad's own formula disagrees with finite differences: a bug in matgrad.
    MatgradWrong { why: String },
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Agrees => "agrees",
            Verdict::PrintedFormulaWrong { .. } => "printed formula wrong",
            Verdict::Unsupported { .. } => "unsupported",
            Verdict::MatgradWrong { .. } => "matgrad wrong",
        }
    }
}

/// The outcome of one variant.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    pub id: String,
    pub function: String,
    pub wrt: String,
    pub condition: String,
    pub layout: String,
    pub kind: String,
    pub printed: String,
    /// matgrad's formula (empty when unsupported).
    pub derived: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The largest relative error of matgrad's formula against finite differences.
    pub derived_error: Option<f64>,
    /// The largest relative error of the printed formula against finite differences.
    pub printed_error: Option<f64>,
    /// How many random points were compared.
    pub points: usize,
}

/// Random points compared per variant.
pub const POINTS: usize = 3;

/// Checks every variant with the given base seed.
pub fn run(seed: u64) -> Vec<CaseReport> {
    CASES.iter().map(|c| check_case(c, seed)).collect()
}

/// Checks one variant at [`POINTS`] random points.
pub fn check_case(case: &Case, seed: u64) -> CaseReport {
    let mut report = CaseReport {
        id: case.id.into(),
        function: case.function.into(),
        wrt: case.wrt.into(),
        condition: case.condition.into(),
        layout: match case.layout {
            Layout::Gradient => "gradient".into(),
            Layout::Numerator => "numerator".into(),
        },
        kind: if case.hessian {
            "hessian".into()
        } else {
            "derivative".into()
        },
        printed: case.printed.into(),
        derived: String::new(),
        verdict: Verdict::Agrees,
        derived_error: None,
        printed_error: None,
        points: 0,
    };
    let source = format!("{} {}", case.decls, case.function);
    let derivative = match derive(case, &source) {
        Ok(d) => d,
        Err(why) => {
            report.verdict = Verdict::Unsupported { why };
            return report;
        }
    };
    report.derived = derivative.text();
    let g = &derivative.program.graph;
    let printed_source = format!("{} {}", case.decls, case.printed);
    let printed = check_program_with_shape(&printed_source, Some((g, derivative.shape())));
    let sizes = dimension_sizes(g);
    let mut derived_error: f64 = 0.0;
    let mut printed_error: f64 = 0.0;
    let mut attempt = 0u64;
    while report.points < POINTS && attempt < 40 {
        let env = random_point(g, &sizes, seed.wrapping_mul(1000).wrapping_add(attempt));
        attempt += 1;
        let Ok(c) = compare(&derivative, &env) else {
            continue;
        };
        derived_error = derived_error.max(c.rel_error);
        if let Ok(p) = &printed {
            let value = translate_env(g, &env, &p.graph)
                .and_then(|penv| evaluate(&p.graph, p.root, &penv).ok());
            let err = match value {
                Some(v) => c.error_of(&v),
                None => f64::INFINITY,
            };
            printed_error = printed_error.max(err);
        }
        report.points += 1;
    }
    report.derived_error = Some(derived_error);
    report.verdict = if report.points == 0 {
        Verdict::MatgradWrong {
            why: "no random point inside the function's domain was found".into(),
        }
    } else if derived_error > TOLERANCE {
        Verdict::MatgradWrong {
            why: format!("relative error {derived_error:.2e} against finite differences"),
        }
    } else {
        match &printed {
            Err(e) => Verdict::PrintedFormulaWrong {
                why: format!("it does not fit the shapes: {}", e.message),
            },
            Ok(_) => {
                report.printed_error = Some(printed_error);
                if printed_error > TOLERANCE {
                    Verdict::PrintedFormulaWrong {
                        why: format!(
                            "relative error {printed_error:.2e} against finite differences"
                        ),
                    }
                } else {
                    Verdict::Agrees
                }
            }
        }
    };
    report
}

fn derive(case: &Case, source: &str) -> Result<Derivative, String> {
    let program = check_program(source).map_err(|e| e.message)?;
    let request = if case.hessian {
        Request::Hessian
    } else {
        Request::Derivative
    };
    differentiate(program, case.wrt, &request, case.layout).map_err(|e| e.message)
}
