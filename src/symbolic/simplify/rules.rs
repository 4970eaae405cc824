//! What the simplifier knows, as data: every rewrite it makes, named, with its identity and
//! a worked example, one table per family ([`FAMILIES`]).
//!
//! In: nothing; the canonicalizer's code marks the place where each rule rewrites with
//! [`apply`]. Out: the tables, and ([`rules_applied`]) the names of the rules that the
//! simplifications inside a call applied: `simplify_traced` and every derivation
//! (`Derivative::simplified_by`, shown by `matgrad explain`) use it. Invariants: every rule is in exactly one family and its name is
//! unique; each example simplifies to the form written beside it, applies the rule, and keeps
//! its value (`tests/simplify_rules.rs` checks all three, by name); the expected forms are
//! written from the identity, not copied from matgrad's output; the README states their
//! count. Marking a rule costs one thread-local read and, while tracing, a search of the
//! rules seen so far (+0.3% instructions over a derivation).
//!
//! Not here: what the graph's constructors already do to every node they build, so that no
//! program reaches the simplifier with it: a scalar's transpose is the scalar (`s' = s`), and
//! an element-wise product or quotient with a scalar is a product or quotient (`s.*A = s*A`,
//! `A./s = A/s`).

use std::cell::RefCell;

/// One rewrite of the simplifier.
#[derive(Debug)]
pub struct Rule {
    /// The name tests and traces use.
    pub name: &'static str,
    /// The identity in the language's syntax, with the conditions under which it is applied.
    pub identity: &'static str,
    /// A program (declarations and an expression) and the expression it simplifies to.
    pub example: (&'static str, &'static str),
}

/// The rules of one family.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub rules: &'static [&'static Rule],
}

/// Every rule, by family.
pub static FAMILIES: &[Family] = &[
    Family {
        name: "transposes",
        rules: &[
            &TRANSPOSE_OF_A_TRANSPOSE,
            &TRANSPOSE_OF_A_SYMMETRIC_MATRIX,
            &TRANSPOSE_OF_A_DIAGONAL,
            &TRANSPOSE_OF_ONES,
            &TRANSPOSE_OF_A_PRODUCT,
            &TRANSPOSE_OF_ELEMENT_WISE,
            &TRANSPOSE_OF_A_SUM,
            &SCALAR_ORIENTATION,
            &ORIENTATION_WHERE_TRANSPOSES_DO_NOT_COUNT,
        ],
    },
    Family {
        name: "products and chains",
        rules: &[
            &IDENTITY_IS_THE_UNIT,
            &ZERO_ANNIHILATES,
            &SCALAR_DISTRIBUTES,
            &SCALAR_TIMES_A_LONG_SUM,
            &MATRIX_POWERS_MERGE,
            &SCALAR_POWERS_MERGE,
            &INNER_PRODUCT_IS_A_SCALAR,
            &DIAGONALS_MERGE,
            &DIAGONAL_TIMES_ONES,
            &DIAGONAL_DISTRIBUTES_WHERE_IT_MEETS_ONES,
        ],
    },
    Family {
        name: "sums and collection",
        rules: &[
            &LIKE_TERMS_COLLECT,
            &EXACT_FRACTIONS,
            &CONSTANTS_FOLD,
            &SUM_SPELLED_OUT_TO_COLLECT,
            &COMMON_FACTOR_PULLED_OUT,
            &TERMS_SHARING_AN_END_GROUPED,
            &NEGATED_SUM_KEEPS_ITS_ORIENTATION,
            &TERMS_IN_PRINTED_ORDER,
        ],
    },
    Family {
        name: "element-wise algebra",
        rules: &[
            &ELEMENT_WISE_COEFFICIENTS_OUT,
            &ELEMENT_WISE_POWERS_ADD,
            &ELEMENT_WISE_PRODUCT_DISTRIBUTES_WHERE_IT_CANCELS,
            &INNER_PRODUCT_CANCELS_A_QUOTIENT,
            &ELEMENT_WISE_POWER_OF_A_TERM,
            &ELEMENT_WISE_POWER_BY_ONE_OR_ZERO,
            &FUNCTION_OF_A_CONSTANT,
        ],
    },
    Family {
        name: "powers and inverses",
        rules: &[
            &SCALAR_POWER_FOLDS,
            &POWER_OF_A_SCALAR_PRODUCT,
            &MATRIX_POWER_IS_A_PRODUCT,
            &INVERSE_OF_A_PRODUCT,
        ],
    },
    Family {
        name: "traces, determinants, sums, norms and diagonals",
        rules: &[
            &REDUCTION_OF_A_SCALAR,
            &REDUCTIONS_ARE_LINEAR,
            &TRACE_ROTATION,
            &ONES_INNER_PRODUCT_IS_A_SUM,
            &DIAGONAL_OF_A_DIAGONAL_MATRIX,
            &DIAGONAL_MATRIX_OF_ONES,
            &DIAGONAL_OF_RANK_ONE,
            &DIAGONAL_OF_A_PRODUCT_WITH_ONES,
            &LINEAR_FUNCTIONS_PULL_OUT_SCALARS,
        ],
    },
    Family {
        name: "numerically stable forms",
        rules: &[&LOGISTIC_WITHOUT_OVERFLOW, &DETERMINANT_OF_A_POWER],
    },
];

/// The rule named `name`.
pub fn rule(name: &str) -> Option<&'static Rule> {
    FAMILIES
        .iter()
        .flat_map(|f| f.rules.iter().copied())
        .find(|r| r.name == name)
}

// ----- transposes -----

pub static TRANSPOSE_OF_A_TRANSPOSE: Rule = Rule {
    name: "transpose-of-a-transpose",
    identity: "(A')' = A",
    example: ("x: vector; x''", "x"),
};

pub static TRANSPOSE_OF_A_SYMMETRIC_MATRIX: Rule = Rule {
    name: "transpose-of-a-symmetric-matrix",
    identity: "C' = C for a C declared symmetric",
    example: ("C: symmetric(n); X: matrix(n,n); (C*X)'", "X'*C"),
};

pub static TRANSPOSE_OF_A_DIAGONAL: Rule = Rule {
    name: "transpose-of-a-diagonal",
    identity: "diag(u)' = diag(u); eye' = eye",
    example: ("u: vector; A: matrix; (A*diag(u))'", "diag(u)*A'"),
};

pub static TRANSPOSE_OF_ONES: Rule = Rule {
    name: "transpose-of-ones",
    identity: "vector(c)' is the row of c's; matrix(c)' is matrix(c) of the transposed shape",
    example: ("x: vector; (vector(1)*x')'", "x*vector(1)'"),
};

pub static TRANSPOSE_OF_A_PRODUCT: Rule = Rule {
    name: "transpose-of-a-product",
    identity: "(A*B)' = B'*A'",
    example: ("A: matrix; B: matrix; (A*B)'", "B'*A'"),
};

pub static TRANSPOSE_OF_ELEMENT_WISE: Rule = Rule {
    name: "transpose-of-element-wise",
    identity: "(A.*B)' = A'.*B', likewise ./ and .^; f(A)' = f(A')",
    example: ("x: vector; y: vector; exp(x'.*y')'", "exp(x.*y)"),
};

pub static TRANSPOSE_OF_A_SUM: Rule = Rule {
    name: "transpose-of-a-sum",
    identity: "(A+B)' = A'+B', applied only where that has fewer transposes than (A+B)' \
               (so (A*x+b)' stays whole)",
    example: ("C: matrix(n,n); (C+C')'", "C + C'"),
};

pub static SCALAR_ORIENTATION: Rule = Rule {
    name: "scalar-orientation",
    identity: "a 1x1 product equals its transpose, x'*A'*y = y'*A*x: the orientation with \
               fewer transposes, then the first in printed order",
    example: ("x: vector; A: matrix; x'*A'*x", "x'*A*x"),
};

pub static ORIENTATION_WHERE_TRANSPOSES_DO_NOT_COUNT: Rule = Rule {
    name: "orientation-where-transposes-do-not-count",
    identity: "det(A') = det(A), logdet, sum, the norms and diag likewise: the argument's \
               orientation with fewer transposes",
    example: ("A: matrix(n,n); B: matrix(n,n); det(A'*B')", "det(B*A)"),
};

// ----- products and chains -----

pub static IDENTITY_IS_THE_UNIT: Rule = Rule {
    name: "identity-is-the-unit",
    identity: "A*eye = eye*A = A",
    example: ("A: matrix(n,n); eye*A*eye", "A"),
};

pub static ZERO_ANNIHILATES: Rule = Rule {
    name: "zero-annihilates",
    identity: "A*0 = 0*A = 0; A.*0 = 0",
    example: ("A: matrix; x: vector; A*(0*x) + x", "x"),
};

pub static SCALAR_DISTRIBUTES: Rule = Rule {
    name: "scalar-distributes",
    identity: "s*(A+B) = s*A + s*B, for sums of at most 8 terms",
    example: ("x: vector; y: vector; s: scalar; s*(x+y) - s*x", "s*y"),
};

pub static SCALAR_TIMES_A_LONG_SUM: Rule = Rule {
    name: "scalar-times-a-long-sum",
    identity: "s*(A1+...+Ak) stays one product for k > 8 and a scalar s that is not a number \
               (distributed, nested sums would multiply their terms at every level)",
    example: (
        "a: vector; b: vector; c: vector; d: vector; e: vector; f: vector; g: vector; \
         h: vector; k: vector; s: scalar; s*(a+b+c+d+e+f+g+h+k)",
        "s*(a+b+c+d+e+f+g+h+k)",
    ),
};

pub static MATRIX_POWERS_MERGE: Rule = Rule {
    name: "matrix-powers-merge",
    identity: "A^j*A^k = A^(j+k), so X*inv(X) = eye",
    example: ("A: matrix(n,n); X: matrix(n,n); A*A*X*inv(X)", "A^2"),
};

pub static SCALAR_POWERS_MERGE: Rule = Rule {
    name: "scalar-powers-merge",
    identity: "a^j*a^k = a^(j+k), so a*b/a = b",
    example: ("a: scalar; b: scalar; a*b/a*b", "b^2"),
};

pub static INNER_PRODUCT_IS_A_SCALAR: Rule = Rule {
    name: "inner-product-is-a-scalar",
    identity: "a 1x1 part of a chain commutes like a scalar: A*x*(y'*z) = (y'*z)*A*x",
    example: ("A: matrix; x: vector; y: vector; A*x*x'*y", "(x'*y)*A*x"),
};

pub static DIAGONALS_MERGE: Rule = Rule {
    name: "diagonals-merge",
    identity: "diag(u)*diag(v) = diag(u.*v)",
    example: (
        "u: vector; v: vector; diag(u)*diag(v) + diag(v)*diag(u)",
        "2*diag(u.*v)",
    ),
};

pub static DIAGONAL_TIMES_ONES: Rule = Rule {
    name: "diagonal-times-ones",
    identity: "diag(u)*vector(1) = u; vector(1)'*diag(u) = u'",
    example: ("u: vector; A: matrix; A*diag(u)*vector(1)", "A*u"),
};

pub static DIAGONAL_DISTRIBUTES_WHERE_IT_MEETS_ONES: Rule = Rule {
    name: "diagonal-distributes-where-it-meets-ones",
    identity: "diag(u)*(B + vector(1)*r') = diag(u)*B + u*r', distributed only where a \
               term meets ones (the Hessian of log(sum(exp(x))) as the cookbook writes it)",
    example: (
        "u: vector; s: scalar; t: scalar; diag(u)*(eye/s - vector(1)*u'/t)",
        "diag(u)/s - u*u'/t",
    ),
};

// ----- sums and collection -----

pub static LIKE_TERMS_COLLECT: Rule = Rule {
    name: "like-terms-collect",
    identity: "a*T + b*T = (a+b)*T; a term with coefficient 0 vanishes",
    example: ("x: vector; y: vector; 2*x + y - x", "x + y"),
};

pub static EXACT_FRACTIONS: Rule = Rule {
    name: "exact-fractions",
    identity: "coefficients that are fractions with small denominators add exactly: \
               2/3 - 1 = -1/3, not float64's -0.33333333333333337",
    example: ("x: vector; 2/3*x - x", "-1/3*x"),
};

pub static CONSTANTS_FOLD: Rule = Rule {
    name: "constants-fold",
    identity: "a scalar that reads no variable and whose sizes are declared is its value: \
               sum(matrix(1)) = 12 for a matrix(1) of 3x4",
    example: ("A: matrix(3,4); sum(A + matrix(1)) - sum(A)", "12"),
};

pub static SUM_SPELLED_OUT_TO_COLLECT: Rule = Rule {
    name: "sum-spelled-out-to-collect",
    identity: "a sum kept whole inside a term is spelled out where its terms then collect: \
               A + (A+B) + B = 2*(A+B)",
    example: (
        "A: matrix(n,n); B: matrix(n,n); A + (A+B)*eye + B",
        "2*(A+B)",
    ),
};

pub static COMMON_FACTOR_PULLED_OUT: Rule = Rule {
    name: "common-factor-pulled-out",
    identity: "P*A*S + P*B*S = P*(A+B)*S, with the coefficients' common factor and the \
               shared scalars",
    example: (
        "C: matrix(n,n); X: matrix(n,n); a: vector(n); C'*X*a*a' + C*X*a*a'",
        "(C+C')*X*a*a'",
    ),
};

pub static TERMS_SHARING_AN_END_GROUPED: Rule = Rule {
    name: "terms-sharing-an-end-grouped",
    identity: "A*S + B*S + T = (A+B)*S + T where no factor is shared by all terms (last \
               factors first, then first ones)",
    example: (
        "A: matrix(n,n); x: vector(n); s: scalar; A*x*x' + A'*x*x' + s*eye",
        "(A+A')*x*x' + s*eye",
    ),
};

pub static NEGATED_SUM_KEEPS_ITS_ORIENTATION: Rule = Rule {
    name: "negated-sum-keeps-its-orientation",
    identity: "-(a-b) = (b-a), but a sum the program wrote keeps its orientation: \
               -2*(x-a), not 2*(a-x)",
    example: ("x: vector; a: vector; -(x-a)*2", "-2*(x-a)"),
};

pub static TERMS_IN_PRINTED_ORDER: Rule = Rule {
    name: "terms-in-printed-order",
    identity: "a sum's terms commute: positive terms first, each group in printed order",
    example: ("x: vector; a: vector; -x + a", "a - x"),
};

// ----- element-wise algebra -----

pub static ELEMENT_WISE_COEFFICIENTS_OUT: Rule = Rule {
    name: "element-wise-coefficients-out",
    identity: "(a*A).*(b*B) = a*b*(A.*B); (a*A)./(b*B) = a/b*(A./B) for scalars a, b",
    example: (
        "u: vector; v: vector; s: scalar; (2*u).*(s*v)",
        "2*s*(u.*v)",
    ),
};

pub static ELEMENT_WISE_POWERS_ADD: Rule = Rule {
    name: "element-wise-powers-add",
    identity: "A.^j.*A.^k = A.^(j+k), through .*, ./ and .^ by a number: x.*x = x.^2, \
               x.^3./x = x.^2, x./x = vector(1)",
    example: ("x: vector; x.^3./x", "x.^2"),
};

pub static ELEMENT_WISE_PRODUCT_DISTRIBUTES_WHERE_IT_CANCELS: Rule = Rule {
    name: "element-wise-product-distributes-where-it-cancels",
    identity: "u.*(v./u - w) = v - u.*w: distributed only where a quotient cancels (the \
               softmax cross-entropy's gradient)",
    example: ("u: vector; v: vector; w: vector; u.*(v./u - w)", "v - u.*w"),
};

pub static INNER_PRODUCT_CANCELS_A_QUOTIENT: Rule = Rule {
    name: "inner-product-cancels-a-quotient",
    identity: "u'*(v./u) = sum(v); (v./u)'*u = sum(v)",
    example: ("u: vector; v: vector; exp(u)'*(v./exp(u))", "sum(v)"),
};

pub static ELEMENT_WISE_POWER_OF_A_TERM: Rule = Rule {
    name: "element-wise-power-of-a-term",
    identity: "(k*s*A).^c = k^c*s^c*A.^c for an integer c",
    example: ("x: vector; s: scalar; (2*s*x).^2", "4*s^2*x.^2"),
};

pub static ELEMENT_WISE_POWER_BY_ONE_OR_ZERO: Rule = Rule {
    name: "element-wise-power-by-one-or-zero",
    identity: "A.^1 = A; A.^0 = matrix(1); matrix(0).^c = matrix(0) for c > 0",
    example: (
        "x: vector; y: vector; vector(0).^2 + x.^1 + y.^0",
        "vector(1) + x",
    ),
};

pub static FUNCTION_OF_A_CONSTANT: Rule = Rule {
    name: "function-of-a-constant",
    identity: "f(c) is its value where that is a simple fraction (exp(0) = 1, sqrt(4) = 2; \
               log(2) stays); f(c*matrix(1)) = f(c)*matrix(1)",
    example: (
        "x: vector; exp(0)*x + exp(vector(0)) + log(2*vector(1))",
        "log(2)*vector(1) + vector(1) + x",
    ),
};

// ----- powers and inverses -----

pub static SCALAR_POWER_FOLDS: Rule = Rule {
    name: "scalar-power-folds",
    identity: "a^1 = a; a^0 = 1; c^p is its value where that is a simple fraction (4^0.5 = 2; \
               4.5^1.5 stays)",
    example: ("a: scalar; 4^0.5*a^1 + a^0", "1 + 2*a"),
};

pub static POWER_OF_A_SCALAR_PRODUCT: Rule = Rule {
    name: "power-of-a-scalar-product",
    identity: "(k*a*b)^c = k^c*a^c*b^c for an integer c; (k*a)^p = k^p*a^p for k > 0",
    example: ("a: scalar; b: scalar; (2*a*b)^2", "4*a^2*b^2"),
};

pub static MATRIX_POWER_IS_A_PRODUCT: Rule = Rule {
    name: "matrix-power-is-a-product",
    identity: "A^k = A*...*A (k factors), so its factors merge with their neighbours",
    example: ("A: matrix(n,n); B: matrix(n,n); (A*B)^2*inv(B)", "A*B*A"),
};

pub static INVERSE_OF_A_PRODUCT: Rule = Rule {
    name: "inverse-of-a-product",
    identity: "inv(k*s*A*B) = inv(B)*inv(A)/(k*s) for square A and B",
    example: (
        "A: matrix(n,n); B: matrix(n,n); s: scalar; inv(s*A*B)*A",
        "inv(B)/s",
    ),
};

// ----- traces, determinants, sums, norms and diagonals -----

pub static REDUCTION_OF_A_SCALAR: Rule = Rule {
    name: "reduction-of-a-scalar",
    identity: "sum(s) = tr(s) = det(s) = s; logdet(s) = log(s); norm1(s) = norm2(s) = abs(s)",
    example: ("s: scalar; sum(s) + tr(s) + det(s)", "3*s"),
};

pub static REDUCTIONS_ARE_LINEAR: Rule = Rule {
    name: "reductions-are-linear",
    identity: "sum(a*A + B) = a*sum(A) + sum(B); tr likewise",
    example: (
        "A: matrix(n,n); B: matrix(n,n); tr(2*A+B) - tr(B)",
        "2*tr(A)",
    ),
};

pub static TRACE_ROTATION: Rule = Rule {
    name: "trace-rotation",
    identity: "tr(A*B) = tr(B*A), and tr(A) = tr(A'): the rotation with fewest transposes, \
               a scalar where one is a row (tr(x*a') = a'*x)",
    example: (
        "A: matrix(n,n); B: matrix(n,n); tr(B*A) - tr(A*B) + tr(A'*B')",
        "tr(A*B)",
    ),
};

pub static ONES_INNER_PRODUCT_IS_A_SUM: Rule = Rule {
    name: "ones-inner-product-is-a-sum",
    identity: "vector(1)'*u = u'*vector(1) = sum(u)",
    example: ("u: vector; vector(1)'*u - sum(u)", "0"),
};

pub static DIAGONAL_OF_A_DIAGONAL_MATRIX: Rule = Rule {
    name: "diagonal-of-a-diagonal-matrix",
    identity: "diag(diag(u)) = u for a vector u",
    example: ("u: vector; s: scalar; diag(s*diag(u))", "s*u"),
};

pub static DIAGONAL_MATRIX_OF_ONES: Rule = Rule {
    name: "diagonal-matrix-of-ones",
    identity: "diag(vector(1)) = eye",
    example: ("A: matrix(n,n); diag(vector(1))*A", "A"),
};

pub static DIAGONAL_OF_RANK_ONE: Rule = Rule {
    name: "diagonal-of-rank-one",
    identity: "diag(p*r') = p.*r for column vectors p and r",
    example: ("u: vector; v: vector; diag(u*v')", "u.*v"),
};

pub static DIAGONAL_OF_A_PRODUCT_WITH_ONES: Rule = Rule {
    name: "diagonal-of-a-product-with-ones",
    identity: "diag(P*matrix(1)) = P*vector(1); diag(matrix(1)*P) = P'*vector(1)",
    example: ("A: matrix(n,n); diag(A*matrix(1))", "A*vector(1)"),
};

pub static LINEAR_FUNCTIONS_PULL_OUT_SCALARS: Rule = Rule {
    name: "linear-functions-pull-out-scalars",
    identity: "diag(a*A) = a*diag(A) for a scalar a; norm(k*A) = |k|*norm(A) for a number k",
    example: (
        "u: vector; s: scalar; diag(2*s*u) + norm2(-3*u)*eye",
        "3*norm2(u)*eye + 2*s*diag(u)",
    ),
};

// ----- numerically stable forms -----

pub static LOGISTIC_WITHOUT_OVERFLOW: Rule = Rule {
    name: "logistic-without-overflow",
    identity: "exp(u).^p./(exp(u)+1).^q = 1./((exp(-u)+1).^p.*(exp(u)+1).^(q-p)) for \
               0 < p <= q: no inf/inf where exp(u) overflows (float32 past u = 88)",
    example: (
        "x: vector; exp(x)./(exp(x)+vector(1))",
        "1./(exp(-x)+vector(1))",
    ),
};

pub static DETERMINANT_OF_A_POWER: Rule = Rule {
    name: "determinant-of-a-power",
    identity: "det(A^k) = det(A)^k: far better conditioned in float32 than the determinant \
               of the power",
    example: ("A: matrix(n,n); det(A^3)", "det(A)^3"),
};

thread_local! {
    /// The rules applied since the innermost [`rules_applied`] began, in the order of their
    /// first application; `None` when nothing traces.
    static TRACE: RefCell<Option<Vec<&'static Rule>>> = const { RefCell::new(None) };
}

/// Marks the place where `rule` rewrites.
pub(super) fn apply(rule: &'static Rule) {
    TRACE.with(|t| {
        if let Some(applied) = t.borrow_mut().as_mut() {
            if !applied.iter().any(|r| std::ptr::eq(*r, rule)) {
                applied.push(rule);
            }
        }
    });
}

/// Runs `f`; returns its result and the names of the rules that the simplifications inside
/// it applied, in the order of their first application. Calls nest: an outer call also
/// counts what an inner one saw.
pub fn rules_applied<R>(f: impl FnOnce() -> R) -> (R, Vec<&'static str>) {
    let outer = TRACE.with(|t| t.replace(Some(Vec::new())));
    let result = f();
    let inner = TRACE.with(|t| t.replace(outer)).unwrap_or_default();
    inner.iter().for_each(|rule| apply(rule));
    (result, inner.iter().map(|r| r.name).collect())
}
