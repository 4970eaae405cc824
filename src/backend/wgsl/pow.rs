//! The power building block `mg_pow(x, y)`: `x` to the power `y` with the meaning of
//! `f64::powf` for the cases a derivative meets.
//!
//! In: nothing (one function for every module that uses `^` or `.^`). Out: the function as
//! IR. WGSL's `pow` is `exp2(y*log2(x))`, undefined for `x < 0`, so an integer exponent is
//! handled through `|x|` with the sign restored for odd powers, a negative one as a
//! reciprocal. Powers ±1 to ±4, the ones derivatives are full of, are products instead (at
//! most two roundings, where `exp2(y*log2(x))` errs by several ulps; `x.^2` is then `x.*x`
//! rounded once, as on the CPU), so that terms which cancel in the float64 reference cancel
//! here too. A negative power is the reciprocal of the positive one: `pow(0, y < 0)` is
//! undefined in WGSL (lavapipe gives 0), `1/pow(0, -y)` is the infinity `powf` gives.
//!
//! Invariants: straight-line code with no loop (a kernel inlines it once per element); no
//! bindings.

use super::ir::{BinOp, Builtin, Callee, Expr, Function, Ident, Stmt, Ty};

/// `mg_pow(x: f32, y: f32) -> f32`.
pub fn function() -> Function {
    let (x, y) = (Expr::word("x"), Expr::word("y"));
    let n = Expr::word("n");
    let (r, x2) = (Expr::word("r"), Expr::word("x2"));
    let f = Expr::F32;
    let eq = |a: Expr, b: Expr| Expr::bin(BinOp::Eq, a, b);
    let mul = |a: Expr, b: Expr| Expr::bin(BinOp::Mul, a, b);
    let reciprocal_if_negative = || {
        Stmt::Return(Some(Expr::select(
            r.clone(),
            Expr::bin(BinOp::Div, f(1.0), r.clone()),
            Expr::bin(BinOp::Lt, y.clone(), f(0.0)),
        )))
    };
    // select(select(select(x, x2, n == 2), x2*x, n == 3), x2*x2, n == 4)
    let product = Expr::select(
        Expr::select(
            Expr::select(x.clone(), x2.clone(), eq(n.clone(), f(2.0))),
            mul(x2.clone(), x.clone()),
            eq(n.clone(), f(3.0)),
        ),
        mul(x2.clone(), x2.clone()),
        eq(n.clone(), f(4.0)),
    );
    let integer = vec![
        Stmt::Let(Ident::word("n"), Expr::call(Builtin::Abs, vec![y.clone()])),
        Stmt::If(
            Expr::bin(BinOp::Le, n.clone(), f(4.0)),
            vec![
                Stmt::Let(Ident::word("x2"), mul(x.clone(), x.clone())),
                Stmt::Let(Ident::word("r"), product),
                reciprocal_if_negative(),
            ],
        ),
        Stmt::Var(
            Ident::word("r"),
            Ty::F32,
            Expr::call(
                Builtin::Pow,
                vec![Expr::call(Builtin::Abs, vec![x.clone()]), n.clone()],
            ),
        ),
        Stmt::If(
            Expr::bin(
                BinOp::And,
                Expr::bin(BinOp::Lt, x.clone(), f(0.0)),
                eq(Expr::bin(BinOp::Rem, n.clone(), f(2.0)), f(1.0)),
            ),
            vec![Stmt::Assign(r.clone(), Expr::negative(r.clone()))],
        ),
        reciprocal_if_negative(),
    ];
    Function {
        name: Callee::Pow,
        params: vec![(Ident::word("x"), Ty::F32), (Ident::word("y"), Ty::F32)],
        result: Some(Ty::F32),
        body: vec![
            Stmt::If(eq(y.clone(), f(0.0)), vec![Stmt::Return(Some(f(1.0)))]),
            Stmt::If(
                eq(y.clone(), Expr::call(Builtin::Round, vec![y.clone()])),
                integer,
            ),
            Stmt::Return(Some(Expr::call(Builtin::Pow, vec![x, y]))),
        ],
    }
}
