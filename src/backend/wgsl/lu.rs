//! The LU building block of the per-item kernels: `mg_lu_N`, `mg_det_N`, `mg_logdet_N`,
//! `mg_inv_N` for an N×N matrix of the calling invocation's item.
//!
//! In: the size N (an integer the plan computed; nothing a user typed). Out: the four
//! functions as IR ([`super::ir::Function`]). Up to [`UNROLLED_MAX`] they are fully unrolled, on arrays in
//! function memory (pointer arguments): every array index is a constant, the partial pivot is
//! chosen and its row swapped with `select`s instead of indexing rows by a data-dependent
//! pivot, and the inverse's triangular solves are chains of `let` values. Drivers keep arrays
//! indexed only by constants in registers, while one dynamic index puts the whole array in
//! (slow, per-invocation) local memory. Larger matrices use the looped form on the item's
//! lanes of the `scratch` buffer (entry e of the matrix at base `ab` is
//! `scratch[chunk * (ab + e) + item]`; base offsets as arguments): the unrolled text would grow
//! as N³, and a dynamically indexed private array of N² floats makes llvmpipe's compile time
//! explode (34 s for one 16×16 determinant's derivative). Only the permutation and one column
//! of the inverse are in function memory there.
//!
//! Invariants: both forms factor with partial pivoting (the first row holding the largest
//! |value| of the column becomes the pivot row, as on the CPU), return the permutation's sign
//! or 0 for a zero or non-finite pivot, and give NaN inverses and -Inf/NaN log-determinants
//! for singular matrices in both forms.

use super::ir::{BinOp, Binding, Builtin, Callee, Expr, Function, Ident, Stmt, Ty};

/// Largest N written unrolled: the text grows as N³ (about 1 800 lines at N = 8).
pub const UNROLLED_MAX: usize = 8;

/// The building block for N×N matrices: looped on `scratch`, or unrolled in function memory
/// (the hardware budget unrolls up to [`UNROLLED_MAX`]).
pub fn building_block(n: usize, looped: bool) -> Vec<Function> {
    if looped {
        Looped { n }.functions()
    } else {
        Unrolled { n }.functions()
    }
}

fn f(v: f32) -> Expr {
    Expr::F32(v)
}
fn u(v: usize) -> Expr {
    Expr::U32(v as u32)
}
fn w(word: &'static str) -> Expr {
    Expr::word(word)
}
fn id(word: &'static str) -> Ident {
    Ident::word(word)
}
fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
    Expr::bin(op, a, b)
}
/// `(*p)[i]`.
fn deref_at(p: &'static str, i: Expr) -> Expr {
    Expr::index(Expr::Deref(id(p)), i)
}

/// `best == 0.0 || best != best || best > 3.4e38`: a zero or non-finite pivot (`best != best`
/// only for NaN; `best > 3.4e38` only for +Inf).
fn bad_pivot() -> Expr {
    let best = || w("best");
    bin(
        BinOp::Or,
        bin(
            BinOp::Or,
            bin(BinOp::Eq, best(), f(0.0)),
            bin(BinOp::Ne, best(), best()),
        ),
        bin(BinOp::Gt, best(), f(3.4e38)),
    )
}

/// NaN made at run time from `x` (a constant NaN is not valid WGSL): `sqrt(-1 - x*0)`.
fn nan_from(x: Expr) -> Expr {
    Expr::call(
        Builtin::Sqrt,
        vec![bin(BinOp::Sub, f(-1.0), bin(BinOp::Mul, x, f(0.0)))],
    )
}

/// `mg_logdet`'s opening: -Inf for a singular matrix, made at run time (a constant infinity
/// is not valid WGSL), and the running sign and sum.
fn logdet_opening() -> Vec<Stmt> {
    let sign = || w("sign");
    vec![
        Stmt::If(
            bin(BinOp::Eq, sign(), f(0.0)),
            vec![Stmt::Return(Some(bin(
                BinOp::Div,
                f(-1.0),
                bin(BinOp::Mul, sign(), sign()),
            )))],
        ),
        Stmt::Var(id("s"), Ty::F32, sign()),
        Stmt::Var(id("sum"), Ty::F32, f(0.0)),
    ]
}

/// One diagonal entry `u` of U into log|det| and its sign.
fn logdet_term(entry: Expr) -> Vec<Stmt> {
    vec![
        Stmt::Let(id("u"), entry),
        Stmt::Assign(
            w("s"),
            Expr::select(
                w("s"),
                Expr::negative(w("s")),
                bin(BinOp::Lt, w("u"), f(0.0)),
            ),
        ),
        Stmt::Assign(
            w("sum"),
            bin(
                BinOp::Add,
                w("sum"),
                Expr::call(Builtin::Log, vec![Expr::call(Builtin::Abs, vec![w("u")])]),
            ),
        ),
    ]
}

/// `mg_logdet`'s close: NaN when the determinant is negative, else the sum.
fn logdet_close() -> Vec<Stmt> {
    vec![
        Stmt::If(
            bin(BinOp::Lt, w("s"), f(0.0)),
            vec![Stmt::Return(Some(nan_from(w("sum"))))],
        ),
        Stmt::Return(Some(w("sum"))),
    ]
}

/// The four functions with every loop unrolled, on arrays in function memory.
struct Unrolled {
    n: usize,
}

impl Unrolled {
    /// Element (r, c) of the matrix behind the pointer `a`.
    fn a(&self, r: usize, c: usize) -> Expr {
        deref_at("a", u(r * self.n + c))
    }

    fn matrix(&self) -> Ty {
        Ty::ptr(Ty::array(Ty::F32, self.n * self.n))
    }

    fn functions(&self) -> Vec<Function> {
        let n = self.n;
        let matrix = (id("a"), self.matrix());
        let perm = (id("perm"), Ty::ptr(Ty::array(Ty::U32, n)));
        let sign = (id("sign"), Ty::F32);
        vec![
            Function {
                name: Callee::Lu(n),
                params: vec![matrix.clone(), perm.clone()],
                result: Some(Ty::F32),
                body: self.lu(),
            },
            Function {
                name: Callee::Det(n),
                params: vec![matrix.clone(), sign.clone()],
                result: Some(Ty::F32),
                body: vec![Stmt::Return(Some(
                    (0..n).fold(w("sign"), |p, i| bin(BinOp::Mul, p, self.a(i, i))),
                ))],
            },
            Function {
                name: Callee::LogDet(n),
                params: vec![matrix.clone(), sign.clone()],
                result: Some(Ty::F32),
                body: [
                    logdet_opening(),
                    (0..n)
                        .map(|i| Stmt::Block(logdet_term(self.a(i, i))))
                        .collect(),
                    logdet_close(),
                ]
                .concat(),
            },
            Function {
                name: Callee::Inv(n),
                params: vec![matrix, perm, sign, (id("out"), self.matrix())],
                result: None,
                body: self.inverse(),
            },
        ]
    }

    /// Partial pivoting by `select`s: no index depends on the data.
    fn lu(&self) -> Vec<Stmt> {
        let n = self.n;
        let a = |r, c| self.a(r, c);
        let mut body = vec![Stmt::Var(id("sign"), Ty::F32, f(1.0))];
        for i in 0..n {
            body.push(Stmt::Assign(deref_at("perm", u(i)), u(i)));
        }
        // `{ let x = p; let y = q; p = select(x, y, t); q = select(y, x, t); }`
        let swap = |p: Expr, q: Expr| {
            Stmt::Block(vec![
                Stmt::Let(id("x"), p.clone()),
                Stmt::Let(id("y"), q.clone()),
                Stmt::Assign(p, Expr::select(w("x"), w("y"), w("t"))),
                Stmt::Assign(q, Expr::select(w("y"), w("x"), w("t"))),
            ])
        };
        for col in 0..n {
            let mut step = vec![
                Stmt::Var(
                    id("best"),
                    Ty::F32,
                    Expr::call(Builtin::Abs, vec![a(col, col)]),
                ),
                Stmt::Var(id("pivot"), Ty::U32, u(col)),
            ];
            for row in col + 1..n {
                // `>`: the first row of the largest |value| wins, as in the looped form.
                step.push(Stmt::Block(vec![
                    Stmt::Let(id("v"), Expr::call(Builtin::Abs, vec![a(row, col)])),
                    Stmt::Let(id("t"), bin(BinOp::Gt, w("v"), w("best"))),
                    Stmt::Assign(w("best"), Expr::select(w("best"), w("v"), w("t"))),
                    Stmt::Assign(w("pivot"), Expr::select(w("pivot"), u(row), w("t"))),
                ]));
            }
            step.push(Stmt::If(bad_pivot(), vec![Stmt::Return(Some(f(0.0)))]));
            for row in col + 1..n {
                let mut exchange = vec![Stmt::Let(id("t"), bin(BinOp::Eq, w("pivot"), u(row)))];
                exchange.extend((0..n).map(|j| swap(a(col, j), a(row, j))));
                exchange.push(swap(deref_at("perm", u(col)), deref_at("perm", u(row))));
                step.push(Stmt::Block(exchange));
            }
            step.push(Stmt::Assign(
                w("sign"),
                Expr::select(
                    w("sign"),
                    Expr::negative(w("sign")),
                    bin(BinOp::Ne, w("pivot"), u(col)),
                ),
            ));
            if col + 1 < n {
                step.push(Stmt::Let(id("r"), bin(BinOp::Div, f(1.0), a(col, col))));
            }
            for row in col + 1..n {
                let mut eliminate = vec![
                    Stmt::Let(id("f"), bin(BinOp::Mul, a(row, col), w("r"))),
                    Stmt::Assign(a(row, col), w("f")),
                ];
                eliminate.extend((col + 1..n).map(|j| {
                    Stmt::Assign(
                        a(row, j),
                        bin(BinOp::Sub, a(row, j), bin(BinOp::Mul, w("f"), a(col, j))),
                    )
                }));
                step.push(Stmt::Block(eliminate));
            }
            body.push(Stmt::Block(step));
        }
        body.push(Stmt::Return(Some(w("sign"))));
        body
    }

    /// Column `col` of the inverse solves L·U·x = P·e_col: forward with L's unit diagonal
    /// into `y`, then backward with U into `x`; chains of `let` values.
    fn inverse(&self) -> Vec<Stmt> {
        let n = self.n;
        let a = |r, c| self.a(r, c);
        let mut body = vec![
            Stmt::Let(id("singular"), bin(BinOp::Eq, w("sign"), f(0.0))),
            Stmt::Let(id("nan"), nan_from(w("sign"))),
        ];
        let d = |i| Ident::numbered("d", i);
        let (y, x) = (|i| Ident::numbered("y", i), |i| Ident::numbered("x", i));
        for i in 0..n {
            body.push(Stmt::Let(d(i), bin(BinOp::Div, f(1.0), a(i, i))));
        }
        for col in 0..n {
            let mut column = Vec::new();
            for i in 0..n {
                let unit = Expr::select(
                    f(0.0),
                    f(1.0),
                    bin(BinOp::Eq, deref_at("perm", u(i)), u(col)),
                );
                let value = (0..i).fold(unit, |v, p| {
                    bin(BinOp::Sub, v, bin(BinOp::Mul, a(i, p), Expr::id(y(p))))
                });
                column.push(Stmt::Let(y(i), value));
            }
            for i in (0..n).rev() {
                let value = (i + 1..n).fold(Expr::id(y(i)), |v, p| {
                    bin(BinOp::Sub, v, bin(BinOp::Mul, a(i, p), Expr::id(x(p))))
                });
                column.push(Stmt::Let(x(i), bin(BinOp::Mul, value, Expr::id(d(i)))));
            }
            for i in 0..n {
                column.push(Stmt::Assign(
                    deref_at("out", u(i * n + col)),
                    Expr::select(Expr::id(x(i)), w("nan"), w("singular")),
                ));
            }
            body.push(Stmt::Block(column));
        }
        body
    }
}

/// The four functions looped, on the calling item's lanes of `scratch`.
struct Looped {
    n: usize,
}

impl Looped {
    /// Entry (row, col) of the N×N matrix at `base` of the item's lanes.
    fn at(&self, base: &'static str, row: Expr, col: Expr) -> Expr {
        let e = bin(
            BinOp::Add,
            w(base),
            bin(BinOp::Add, bin(BinOp::Mul, row, u(self.n)), col),
        );
        Expr::index(
            Expr::Buffer(Binding::Scratch),
            bin(BinOp::Add, bin(BinOp::Mul, w("chunk"), e), w("item")),
        )
    }

    /// Entry (row, col) of the factored matrix.
    fn m(&self, row: Expr, col: Expr) -> Expr {
        self.at("ab", row, col)
    }

    /// `for (var v: u32 = from; v < N; v = v + 1u) { body }`, or up to `to`.
    fn up_to(var: &'static str, from: Expr, to: Expr, body: Vec<Stmt>) -> Stmt {
        Stmt::Loop {
            var: id(var),
            from,
            to,
            step: 1,
            body,
        }
    }

    fn functions(&self) -> Vec<Function> {
        let n = self.n;
        let item = vec![
            (id("ab"), Ty::U32),
            (id("chunk"), Ty::U32),
            (id("item"), Ty::U32),
        ];
        let perm = (id("perm"), Ty::ptr(Ty::array(Ty::U32, n)));
        let sign = (id("sign"), Ty::F32);
        let with = |more: Vec<(Ident, Ty)>| [item.clone(), more].concat();
        let diagonal = |i: &'static str| self.m(w(i), w(i));
        vec![
            Function {
                name: Callee::Lu(n),
                params: with(vec![perm.clone()]),
                result: Some(Ty::F32),
                body: self.lu(),
            },
            Function {
                name: Callee::Det(n),
                params: with(vec![sign.clone()]),
                result: Some(Ty::F32),
                body: vec![
                    Stmt::Var(id("d"), Ty::F32, w("sign")),
                    Self::up_to(
                        "i",
                        u(0),
                        u(n),
                        vec![Stmt::Assign(w("d"), bin(BinOp::Mul, w("d"), diagonal("i")))],
                    ),
                    Stmt::Return(Some(w("d"))),
                ],
            },
            Function {
                name: Callee::LogDet(n),
                params: with(vec![sign.clone()]),
                result: Some(Ty::F32),
                body: [
                    logdet_opening(),
                    vec![Self::up_to("i", u(0), u(n), logdet_term(diagonal("i")))],
                    logdet_close(),
                ]
                .concat(),
            },
            Function {
                name: Callee::Inv(n),
                params: with(vec![perm, sign, (id("ob"), Ty::U32)]),
                result: None,
                body: self.inverse(),
            },
        ]
    }

    /// Factors the matrix at `ab` in place (L below the diagonal with unit diagonal, U on
    /// and above), records the row permutation in `perm`, returns its sign or 0.
    fn lu(&self) -> Vec<Stmt> {
        let n = self.n;
        let m = |r: &'static str, c: &'static str| self.m(w(r), w(c));
        let perm = |i: &'static str| deref_at("perm", w(i));
        let after = |v: &'static str| bin(BinOp::Add, w(v), u(1));
        let search = Self::up_to(
            "row",
            after("col"),
            u(n),
            vec![
                Stmt::Let(id("v"), Expr::call(Builtin::Abs, vec![m("row", "col")])),
                Stmt::If(
                    bin(BinOp::Gt, w("v"), w("best")),
                    vec![
                        Stmt::Assign(w("best"), w("v")),
                        Stmt::Assign(w("pivot"), w("row")),
                    ],
                ),
            ],
        );
        let exchange = Stmt::If(
            bin(BinOp::Ne, w("pivot"), w("col")),
            vec![
                Self::up_to(
                    "j",
                    u(0),
                    u(n),
                    vec![
                        Stmt::Let(id("t"), m("col", "j")),
                        Stmt::Assign(m("col", "j"), m("pivot", "j")),
                        Stmt::Assign(m("pivot", "j"), w("t")),
                    ],
                ),
                Stmt::Let(id("p"), perm("col")),
                Stmt::Assign(perm("col"), perm("pivot")),
                Stmt::Assign(perm("pivot"), w("p")),
                Stmt::Assign(w("sign"), Expr::negative(w("sign"))),
            ],
        );
        let eliminate = Self::up_to(
            "row",
            after("col"),
            u(n),
            vec![
                Stmt::Let(id("factor"), bin(BinOp::Div, m("row", "col"), w("d"))),
                Stmt::Assign(m("row", "col"), w("factor")),
                Self::up_to(
                    "j",
                    after("col"),
                    u(n),
                    vec![Stmt::Assign(
                        m("row", "j"),
                        bin(
                            BinOp::Sub,
                            m("row", "j"),
                            bin(BinOp::Mul, w("factor"), m("col", "j")),
                        ),
                    )],
                ),
            ],
        );
        vec![
            Stmt::Var(id("sign"), Ty::F32, f(1.0)),
            Self::up_to("i", u(0), u(n), vec![Stmt::Assign(perm("i"), w("i"))]),
            Self::up_to(
                "col",
                u(0),
                u(n),
                vec![
                    Stmt::Var(id("pivot"), Ty::U32, w("col")),
                    Stmt::Var(
                        id("best"),
                        Ty::F32,
                        Expr::call(Builtin::Abs, vec![m("col", "col")]),
                    ),
                    search,
                    Stmt::If(bad_pivot(), vec![Stmt::Return(Some(f(0.0)))]),
                    exchange,
                    Stmt::Let(id("d"), m("col", "col")),
                    eliminate,
                ],
            ),
            Stmt::Return(Some(w("sign"))),
        ]
    }

    /// The inverse into entries `ob..ob+N*N` (row-major), NaN everywhere when singular: per
    /// column, forward and backward substitution in one private column `x`.
    fn inverse(&self) -> Vec<Stmt> {
        let n = self.n;
        let m = |r: &'static str, c: &'static str| self.m(w(r), w(c));
        let x = |i: &'static str| Expr::index(w("x"), w(i));
        let minus_products = |to_from: (Expr, Expr)| {
            Self::up_to(
                "p",
                to_from.1,
                to_from.0,
                vec![Stmt::Assign(
                    w("v"),
                    bin(BinOp::Sub, w("v"), bin(BinOp::Mul, m("i", "p"), x("p"))),
                )],
            )
        };
        let column = vec![
            Stmt::Array(id("x"), n),
            Self::up_to(
                "i",
                u(0),
                u(n),
                vec![Stmt::Assign(
                    x("i"),
                    Expr::select(
                        f(0.0),
                        f(1.0),
                        bin(BinOp::Eq, deref_at("perm", w("i")), w("col")),
                    ),
                )],
            ),
            Self::up_to(
                "i",
                u(0),
                u(n),
                vec![
                    Stmt::Var(id("v"), Ty::F32, x("i")),
                    minus_products((w("i"), u(0))),
                    Stmt::Assign(x("i"), w("v")),
                ],
            ),
            Self::up_to(
                "k",
                u(0),
                u(n),
                vec![
                    Stmt::Let(
                        id("i"),
                        bin(BinOp::Sub, bin(BinOp::Sub, u(n), u(1)), w("k")),
                    ),
                    Stmt::Var(id("v"), Ty::F32, x("i")),
                    minus_products((u(n), bin(BinOp::Add, w("i"), u(1)))),
                    Stmt::Assign(x("i"), bin(BinOp::Div, w("v"), m("i", "i"))),
                ],
            ),
            Self::up_to(
                "i",
                u(0),
                u(n),
                vec![Stmt::Assign(
                    self.at("ob", w("i"), w("col")),
                    Expr::select(x("i"), nan_from(x("i")), bin(BinOp::Eq, w("sign"), f(0.0))),
                )],
            ),
        ];
        vec![Self::up_to("col", u(0), u(n), column)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shader that calls all four functions, validated by naga.
    fn module(n: usize, looped: bool) -> String {
        let mut functions = String::new();
        for f in building_block(n, looped) {
            let _ = f.write(&mut functions);
        }
        let nn = n * n;
        let (decls, matrix, inverse) = if !looped {
            (
                format!("    var a: array<f32, {nn}u>;\n    var o: array<f32, {nn}u>;\n"),
                "&a".to_string(),
                "&o".to_string(),
            )
        } else {
            (String::new(), "0u, 1u, 0u".to_string(), format!("{nn}u"))
        };
        format!(
            "@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;\n{}\n\
             @compute @workgroup_size(1)\nfn main() {{\n{decls}    var p: array<u32, {n}u>;\n\
             let s = mg_lu_{n}({matrix}, &p);\n\
             let d = mg_det_{n}({matrix}, s) + mg_logdet_{n}({matrix}, s);\n\
             mg_inv_{n}({matrix}, &p, d, {inverse});\n}}\n",
            functions,
        )
    }

    #[test]
    fn both_forms_validate_at_every_size_around_the_switch() {
        for n in 1..=UNROLLED_MAX + 2 {
            for looped in [n > UNROLLED_MAX, true] {
                crate::wgsl::validate(&module(n, looped))
                    .unwrap_or_else(|e| panic!("N = {n}, looped: {looped}: {e}"));
            }
        }
        // Only the looped form indexes by a value computed at run time, and only in `scratch`.
        assert!(!module(UNROLLED_MAX, false).contains("(pivot * "));
        let looped = module(UNROLLED_MAX + 1, true);
        assert!(looped.contains("(pivot * ") && !looped.contains("ptr<function, array<f32"));
    }
}
