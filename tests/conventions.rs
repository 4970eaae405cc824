//! The conventions users meet: layouts, symmetric declarations, and the gradient by a
//! symmetric matrix variable.

mod common;

use common::{derive, first_usable};
use matgrad::diff::{Layout, Request};
use matgrad::eval::Mat;
use matgrad::verify::{dimension_sizes, estimate, random_point, relative_error, TOLERANCE};

#[test]
fn numerator_layout_is_the_transpose() {
    for (program, wrt) in [
        ("x'*A*x", "x"),
        ("a: vector; b: vector; a'*X*b", "X"),
        ("A*x", "x"),
        ("x'*A", "x"),
    ] {
        let g = derive(program, wrt, Request::Derivative, Layout::Gradient);
        let n = derive(program, wrt, Request::Derivative, Layout::Numerator);
        let (env, cg) = first_usable(&g, 5, 5).expect("usable point");
        let cn = matgrad::verify::compare(&n, &env).expect("same point is usable");
        assert!(
            cg.rel_error < TOLERANCE && cn.rel_error < TOLERANCE,
            "{program}"
        );
        assert!(
            relative_error(&cn.derived, &cg.derived.transpose()) < 1e-12,
            "{program}"
        );
    }
}

#[test]
fn a_symmetric_constant_is_used_by_the_simplifier() {
    let d = derive(
        "a: vector; C: symmetric; a'*X'*C*X*a",
        "X",
        Request::Derivative,
        Layout::Gradient,
    );
    assert_eq!(d.text(), "2*C*X*a*a'");
    let d = derive(
        "C: symmetric; x'*C*x",
        "x",
        Request::Derivative,
        Layout::Gradient,
    );
    assert_eq!(d.text(), "2*C*x");
}

/// Each program's derivative by `wrt` prints as expected and agrees with finite differences
/// (at the first usable of ten points from `seed`).
fn assert_prints(cases: &[(&str, &str)], wrt: &str, request: Request, seed: u64) {
    for &(program, expected) in cases {
        let d = derive(program, wrt, request.clone(), Layout::Gradient);
        assert_eq!(d.text(), expected, "{program}");
        let (_, c) = first_usable(&d, seed, 10).expect("usable point");
        assert!(c.rel_error < TOLERANCE, "{program}: {:.2e}", c.rel_error);
    }
}

/// By a symmetric variable, matgrad returns sym(G) = (G+G')/2: the symmetric matrix S with
/// f(X+tD) = f(X) + t<S,D> + o(t) for every symmetric direction D.
#[test]
fn gradient_by_a_symmetric_variable_is_sym_g() {
    let cases = [
        ("X: symmetric(n); logdet(X)", "inv(X)"),
        ("X: symmetric(n); A: matrix(n,n); tr(A*X)", "0.5*(A+A')"),
        ("X: spd(n); a: vector(n); a'*X*X*a", "X*a*a' + a*a'*X"),
    ];
    assert_prints(&cases, "X", Request::Derivative, 9);
}

/// The other convention in the literature, G + G' - G∘I, is not what finite differences
/// along symmetric directions measure: the check can tell the two apart.
#[test]
fn the_other_symmetric_convention_fails_the_check() {
    let d = derive(
        "X: symmetric(n); A: matrix(n,n); tr(A*X)",
        "X",
        Request::Derivative,
        Layout::Gradient,
    );
    let g = &d.program.graph;
    let env = random_point(g, &dimension_sizes(g), 4);
    let a = env.values[g.var_by_name("A").unwrap() as usize]
        .clone()
        .unwrap();
    let other = Mat::from_fn(a.rows, a.cols, |i, j| {
        if i == j {
            a.at(i, i)
        } else {
            a.at(i, j) + a.at(j, i)
        }
    });
    let fd = estimate(&d, &env).unwrap();
    assert!(relative_error(&other, &fd) > 0.1);
}

/// Constants print as a person writes them: a fraction whose decimals run on as `2/3`, a
/// short decimal as it is, `log(2)` or `sqrt(2)` by name rather than by their digits, a
/// number broadcast as `2.^x` or `1./x`; each formula is checked against finite differences.
#[test]
fn constants_print_as_written() {
    let cases = [
        ("x'*x/3", "2/3*x"),
        ("x'*x/(-3)", "-2/3*x"),
        ("x'*x/4", "0.5*x"),
        ("sqrt(2)*x'*x", "2*sqrt(2)*x"),
        ("2^x", "2^x*log(2)"),
        ("sum(x)/log(3)", "vector(1)/log(3)"),
        ("exp(0)*x'*x", "2*x"),
        ("sqrt(4)*sum(x)", "2*vector(1)"),
        ("sum(2.^x)", "log(2)*2.^x"),
        ("sum(vector(0.5).^x)", "log(0.5)*0.5.^x"),
        ("sum(log(x))", "1./x"),
        ("2^0.5*x'*x", "2*2^0.5*x"),
        ("(2^2+0.5)^1.5*sum(x)", "4.5^1.5*vector(1)"),
        ("4^0.5*x'*x", "4*x"),
        ("sum(1.5./x)", "-1.5./x.^2"),
        ("sum(sqrt(x))", "0.5./sqrt(x)"),
        // An element-wise function of a transpose prints as the transpose of the function.
        ("x'*x*sin(x)'*y", "2*(sin(x)'*y)*x + (x'*x)*(y.*cos(x))"),
    ];
    assert_prints(&cases, "x", Request::Derivative, 3);
    let d = derive("x'*x/3", "x", Request::Derivative, Layout::Gradient);
    let render = |format| matgrad::print::render(&d.program.graph, d.node, format);
    assert_eq!(render(matgrad::print::Format::Unicode), "(2/3)x");
    assert_eq!(render(matgrad::print::Format::Latex), "\\frac{2}{3} x");
    // As an exponent: one pair of parentheses in every format.
    let d = derive("y'*(x.^(1/3))", "y", Request::Derivative, Layout::Gradient);
    let render = |format| matgrad::print::render(&d.program.graph, d.node, format);
    assert_eq!(d.text(), "x.^(1/3)");
    assert_eq!(render(matgrad::print::Format::Unicode), "x^∘(1/3)");
    assert_eq!(
        render(matgrad::print::Format::Latex),
        "x^{\\circ \\frac{1}{3}}"
    );
}

/// Element-wise products and quotients of the same factor combine their exponents, as a
/// person cancels them: `x.*log(x)` by `x` is `log(x) + x./x = log(x) + 1`.
#[test]
fn elementwise_powers_of_one_factor_combine() {
    let cases = [
        ("sum(x.*log(x))", "log(x) + vector(1)"),
        ("sum(x.^3./x)", "2*x"),
        ("sum(exp(x)./exp(x).*x)", "vector(1)"),
        ("sum(x.*x.^(-1))", "vector(0)"),
        ("sum(log(x).*x.^2)", "x + 2*(x.*log(x))"),
    ];
    assert_prints(&cases, "x", Request::Derivative, 5);
}

/// Products of diagonal matrices are one diagonal matrix, `diag(u)*diag(v) = diag(u.*v)`, so
/// Hessians of element-wise functions come out as a person writes them (and are evaluated
/// element-wise, not as products of n×n matrices); each is checked against differences.
#[test]
fn products_of_diagonal_matrices_merge() {
    let cases = [
        ("sin(x)'*cos(x)", "-4*diag(sin(x).*cos(x))"),
        ("exp(x)'*exp(x)", "4*diag(exp(x).^2)"),
        ("x'*diag(y)*diag(z)*x", "2*diag(y.*z)"),
        // Like terms collect across a sum that a product left whole.
        ("x'*diag(x)*A*x", "2*(A'*diag(x)+diag(A*x)+diag(x)*A)"),
    ];
    assert_prints(&cases, "x", Request::Hessian, 4);
}

/// Hessians of norms of residuals read as the Matrix Cookbook writes them: the residual as
/// the input wrote it, its outer product one term (`(I - r r'/|r|²)/|r|` for `r = x-a`); and
/// log-sum-exp's as `diag(p) - p p'`.
#[test]
fn hessians_of_norms_and_log_sum_exp_read_as_the_cookbook_writes_them() {
    let cases = [
        (
            "a: vector; norm2(x-a)",
            "eye/norm2(x-a) - (x-a)*(x-a)'/norm2(x-a)^3",
        ),
        (
            "norm2(A*x-b)",
            "A'*(A/norm2(A*x-b)-(A*x-b)*(A*x-b)'*A/norm2(A*x-b)^3)",
        ),
        (
            "a: vector; log(norm2(x-a))",
            "eye/norm2(x-a)^2 - 2*(x-a)*(x-a)'/norm2(x-a)^4",
        ),
        // log-sum-exp: diag(p) - p*p' for the softmax p, written with exp(x).
        (
            "log(sum(exp(x)))",
            "diag(exp(x))/sum(exp(x)) - exp(x)*exp(x)'/sum(exp(x))^2",
        ),
        // The softmax cross-entropy: sum(y) times log-sum-exp's.
        (
            "y: vector; -y'*log(exp(x)/sum(exp(x)))",
            "sum(y)*(diag(exp(x))/sum(exp(x))-exp(x)*exp(x)'/sum(exp(x))^2)",
        ),
    ];
    assert_prints(&cases, "x", Request::Hessian, 5);
}

/// Diagonals of products: `diag(x)*A*x` is `x.*(A*x)`, whose Jacobian (gradient layout, the
/// transpose) is `diag(A*x) + A'*diag(x)`; `diag(P*diag(x)*Q) = (P.*Q')*x`, so its gradient
/// layout is `Q.*P'`; `tr(M)` and `diag(M)` of a scalar times a matrix. Each formula is the
/// mathematics above, checked against differences.
#[test]
fn diagonals_of_products_have_closed_forms() {
    let cases = [
        ("diag(x)*A*x", "A'*diag(x) + diag(A*x)"),
        ("diag(A*diag(x)*B)", "B.*A'"),
        ("diag(x'*x*A)", "2*x*diag(A)'"),
        ("tr(A*diag(x))*x", "diag(A)*x' + tr(A*diag(x))*eye"),
    ];
    assert_prints(&cases, "x", Request::Derivative, 7);
    // diag of a rank-one chain, diag(A*x*x'*t) = t*(A*x).*x, by the scalar t.
    let cases = [("t: scalar; diag(A*x*x'*t)", "x.*(A*x)")];
    assert_prints(&cases, "t", Request::Derivative, 7);
}

/// Sums over diagonal products read as row or column sums: `sum(diag(x)*A) = x'*A*1`,
/// `sum(diag(x)*A*diag(x)) = x'*A*x`, `sum(diag(X)) = tr(X)`.
#[test]
fn sums_of_diagonal_products_are_row_sums() {
    let cases = [
        ("sum(diag(x)*A)", "A*vector(1)"),
        ("sum(A*diag(x))", "A'*vector(1)"),
        ("sum(diag(x)*A*diag(x))", "(A+A')*x"),
        ("sum(diag(A*diag(x)*B))", "diag(B*A)"),
        ("diag(x'*x*A)'*vector(1)", "2*tr(A)*x"),
    ];
    assert_prints(&cases, "x", Request::Derivative, 8);
    assert_prints(&[("sum(diag(X))", "eye")], "X", Request::Derivative, 8);
}

/// `vector(1)'*u` is `sum(u)`, the same atom, so a softmax sums to one symbolically: its
/// gradient is exactly 0, not the float32 noise of `1/s - s/s^2`.
#[test]
fn a_product_with_ones_is_a_sum() {
    let cases = [
        ("sum(exp(x)/sum(exp(x)))", "vector(0)"),
        ("sum(exp(x)/(vector(1)'*exp(x)))", "vector(0)"),
        ("(vector(1)'*x)^2", "2*sum(x)*vector(1)"),
    ];
    assert_prints(&cases, "x", Request::Derivative, 6);
}

/// The softmax cross-entropy's gradient, `softmax(x)*sum(y) - y`: the quotients by
/// `exp(x)` its derivative takes cancel.
#[test]
fn the_softmax_cross_entropy_gradient_is_softmax_minus_the_labels() {
    let cases = [(
        "y: vector; -y'*log(exp(x)/sum(exp(x)))",
        "sum(y)*exp(x)/sum(exp(x)) - y",
    )];
    assert_prints(&cases, "x", Request::Derivative, 7);
}

/// The logistic loss's Hessian weighs each row by `exp(z)./(exp(z)+1).^2`, which is inf/inf
/// where `exp(z)` overflows; matgrad's form is finite for every margin (float64 overflows
/// past z = 709), and agrees with finite differences where both are defined.
#[test]
fn the_logistic_hessian_is_finite_at_any_margin() {
    let source = "X: matrix(3,2); y: vector(3); w: vector(2); sum(log(vector(1)+exp(-y.*(X*w))))";
    let cases = [(
        source,
        "X'*diag(y.^2./((exp(-y.*(X*w))+vector(1)).*(exp(y.*(X*w))+vector(1))))*X",
    )];
    assert_prints(&cases, "w", Request::Hessian, 6);
    let d = derive(source, "w", Request::Hessian, Layout::Gradient);
    let g = &d.program.graph;
    let mut env = random_point(g, &dimension_sizes(g), 3);
    // Margins of about ±1000: exp overflows to inf in float64 for half of them.
    let var = |name: &str| g.vars.iter().position(|v| v.name == name).unwrap();
    env.values[var("X")] = Some(Mat::from_fn(3, 2, |i, j| {
        [[400.0, -300.0], [-500.0, 250.0], [1.0, 2.0]][i][j]
    }));
    env.values[var("y")] = Some(Mat::from_fn(3, 1, |i, _| [1.0, -1.0, 1.0][i]));
    env.values[var("w")] = Some(Mat::from_fn(2, 1, |i, _| [2.0, -1.0][i]));
    let h = matgrad::eval::evaluate(g, d.node, &env).expect("evaluates");
    assert!(h.is_finite(), "Hessian at large margins: {h:?}");
    // Rows 1 and 2 have margins of 1100 and 1250: their weights are e^-1100 and e^-1250,
    // 0 in float64. Row 3 (margin 0) alone gives x3*x3'*s(1-s) with s = 1/(1+e^0) = 1/2.
    let want = Mat::from_fn(2, 2, |i, j| [1.0, 2.0][i] * [1.0, 2.0][j] * 0.25);
    assert!(relative_error(&h, &want) < 1e-12, "{h:?} vs {want:?}");
}
