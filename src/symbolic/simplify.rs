//! Stage 4: any expression → an equal expression that reads like the Matrix Cookbook.
//!
//! In: a node of a [`Graph`] (typically a raw reverse-mode derivative, full of `1*`, `x''`
//! and repeated terms). Out: a node of the same graph with the same shape and, for every input,
//! the same value. Method: a hand-written canonicalizer, one bottom-up pass. Each node becomes
//! a [`Poly`], a sum of terms `coef * scalars * F1*F2*...*Fk`, where the scalars commute and
//! the matrix chain does not; each factor is an atom raised to an integer power (`inv(X)` is
//! `X^-1`, so `X*inv(X)` cancels). Transposes are pushed to the atoms (`(A*B)' = B'*A'`,
//! `C' = C` for a symmetric `C`); like terms are collected, also with the terms of a sum that a
//! product left whole (`A'*D + (A'*D+D*A)` → `2*A'*D + D*A`); a 1×1 chain becomes a scalar in
//! the orientation with fewer transposes (`x'*a` and `a'*x` are one term); `tr` takes the
//! rotation that reads best. Sums are *not* expanded, so `A'*(A*x+b)` keeps its factor (two
//! exceptions, where distributing cancels: a `diag(u)` that would meet ones, since
//! `diag(u)*vector(1)` is `u`: `diag(u)*(eye/s-vector(1)*u'/t)` → `diag(u)/s - u*u'/t`; and an
//! element-wise product that cancels a quotient, `u.*(v./u-w)` → `v - u.*w`; likewise
//! `u'*(v./u)` is `sum(v)`); when a sum is rebuilt, its common coefficient, scalars, left
//! factors and right factors are pulled out (`C'*X*a*a' + C*X*a*a'` → `(C+C')*X*a*a'`); inside
//! a product, the terms that share a last factor are merged; and a sum that comes back
//! negated keeps the orientation the program wrote (`-(x-a)*(x-a)'`, not `(a-x)*(x-a)'`).
//!
//! Every rewrite is a named rule of [`rules::FAMILIES`], with its identity and an example
//! tested by name; the code marks where each applies. The code is one file per family:
//! `transposes`, `products` (and chains), `sums` (and collection), `elementwise`, `powers`
//! (and inverses), `reductions` (traces, determinants, sums, norms, diagonals); `build` turns
//! a normal form back into nodes. This file holds the normal form's types and the dispatch
//! by node (`Simplifier::compute_poly`).
//!
//! Invariants: value and shape are preserved (a property test checks this on random
//! programs); the pass visits each node once and no rule applies to its own output, so time
//! and size are bounded by a polynomial in the input's size: a scalar factor is distributed
//! only over sums of at most [`MAX_DISTRIBUTED_TERMS`] terms, a long chain of sums is
//! collected once ([`LONG_SUM`]), and sort keys cost the DAG, not the printed tree
//! (`tests/sizes.rs` states and tests the bound); the result is deterministic (terms are
//! ordered by their printed text, past [`TEXT_KEY_NODES`] nodes by a structural hash). A
//! product or power of numbers that underflows is noted in [`Graph::underflow`].

use std::cell::Cell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::rc::Rc;

use crate::expr::{Dim, Func, Graph, Id, Node, Num, Shape, Underflow};

mod build;
mod elementwise;
mod powers;
mod products;
mod reductions;
pub mod rules;
mod sums;
mod transposes;

use elementwise::*;
use reductions::Reduction;
use rules::*;
pub use rules::{rules_applied, Family, Rule, FAMILIES};
use sums::*;

/// Simplifies `root`; returns the simplified node (in the same graph).
pub fn simplify(graph: &mut Graph, root: Id) -> Id {
    UNDERFLOW.with(|u| u.set(None));
    let mut s = Simplifier {
        g: graph,
        polys: HashMap::new(),
        keys: HashMap::new(),
        sizes: HashMap::new(),
        hashes: HashMap::new(),
    };
    let p = s.poly(root);
    let node = s.build(&p);
    if let Some(factors) = UNDERFLOW.with(|u| u.get()) {
        graph.underflow.get_or_insert(factors);
    }
    node
}

/// [`simplify`], with the names of the rules of [`FAMILIES`] it applied, in the order of
/// their first application.
pub fn simplify_traced(graph: &mut Graph, root: Id) -> (Id, Vec<&'static str>) {
    rules_applied(|| simplify(graph, root))
}

thread_local! {
    /// The first product of two numbers (or power) that fell below float64's normal range
    /// while simplifying, reset by [`simplify`] and kept in [`Graph::underflow`].
    static UNDERFLOW: Cell<Option<Underflow>> = const { Cell::new(None) };
}

/// `a * b`, noting an underflow: non-zero finite numbers whose product is below float64's
/// normal range (`1e-200 * 1e-200` is 0), which would silently turn a term into zero.
fn product(a: f64, b: f64) -> f64 {
    let p = a * b;
    if a != 0.0 && b != 0.0 && a.is_finite() && b.is_finite() && p.abs() < f64::MIN_POSITIVE {
        UNDERFLOW.with(|u| u.set(u.get().or(Some(Underflow::Product(a, b)))));
    }
    p
}

/// `a^c`, noting an underflow as [`product`] does (`(1e-200)^2`).
fn power(a: f64, c: f64) -> f64 {
    let p = a.powf(c);
    if a != 0.0 && a.is_finite() && c.is_finite() && p.abs() < f64::MIN_POSITIVE {
        UNDERFLOW.with(|u| u.set(u.get().or(Some(Underflow::Power(a, c)))));
    }
    p
}

/// A matrix factor: an atom raised to a non-zero integer power (negative: inverse).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Factor {
    base: Id,
    power: i32,
}

/// `coef * Π scalar^exponent * chain`; for a scalar-shaped poly the chain is empty.
#[derive(Clone, Debug, PartialEq)]
struct Term {
    coef: f64,
    /// Scalar atoms with exponents, sorted by handle, no zero exponents.
    scalars: Vec<(Id, Num)>,
    chain: Vec<Factor>,
}

impl Term {
    fn unit() -> Term {
        Term {
            coef: 1.0,
            scalars: vec![],
            chain: vec![],
        }
    }
}

/// A sum of terms of one shape; no terms is zero, one term with nothing in it is the
/// identity (or 1 for scalars).
#[derive(Clone, Debug, PartialEq)]
struct Poly {
    shape: Shape,
    terms: Vec<Term>,
}

impl Poly {
    fn zero(shape: Shape) -> Poly {
        Poly {
            shape,
            terms: vec![],
        }
    }

    fn single(shape: Shape, term: Term) -> Poly {
        Poly {
            shape,
            terms: vec![term],
        }
    }

    /// The value of a constant scalar.
    fn constant(&self) -> Option<f64> {
        if !self.shape.is_scalar() {
            return None;
        }
        match self.terms.as_slice() {
            [] => Some(0.0),
            [t] if t.scalars.is_empty() && t.chain.is_empty() && self.shape.is_scalar() => {
                Some(t.coef)
            }
            _ => None,
        }
    }
}

struct Simplifier<'g> {
    g: &'g mut Graph,
    polys: HashMap<Id, Poly>,
    keys: HashMap<Id, Key>,
    sizes: HashMap<Id, u64>,
    hashes: HashMap<Id, u64>,
}

/// How terms and factors are ordered: by their printed text while that is short, so that
/// output reads alphabetically; a node whose tree is larger than [`TEXT_KEY_NODES`] sorts
/// after every short one by its structural hash, so that keys cost time and memory
/// proportional to the DAG, not to the (possibly exponential) printed tree.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Text(Rc<str>),
    Large(u64),
}

/// The most terms a sum may have for a product with a non-constant scalar to be distributed
/// over it (`c*(u+v)` → `c*u + c*v`); a longer sum stays one factor, which bounds the terms
/// of every normal form by the number of the input's sums times this.
const MAX_DISTRIBUTED_TERMS: usize = 8;

/// A chain of more sums than this is simplified in one pass ([`Simplifier::long_sum`]);
/// shorter ones level by level, as they always were.
const LONG_SUM: usize = 64;

/// The largest tree (in nodes) whose printed text is a sort key.
const TEXT_KEY_NODES: u64 = 400;

/// Terms that share the parts factored out of a sum.
struct Factored {
    coef: f64,
    scalars: Vec<(Id, Num)>,
    prefix: Vec<Factor>,
    rest: Poly,
    suffix: Vec<Factor>,
}

impl<'g> Simplifier<'g> {
    fn key(&mut self, id: Id) -> Key {
        if let Some(k) = self.keys.get(&id) {
            return k.clone();
        }
        let k = if self.g.tree_size(id, &mut self.sizes) <= TEXT_KEY_NODES {
            Key::Text(crate::print::text_in_place(self.g, id).into())
        } else {
            Key::Large(self.g.structural_hash(id, &mut self.hashes))
        };
        self.keys.insert(id, k.clone());
        k
    }

    fn shape(&self, id: Id) -> Shape {
        self.g.shape(id)
    }

    /// The normal form of a node, memoized.
    fn poly(&mut self, id: Id) -> Poly {
        if let Some(p) = self.polys.get(&id) {
            return p.clone();
        }
        let p = self.compute_poly(id);
        self.polys.insert(id, p.clone());
        p
    }

    fn atom(&mut self, id: Id) -> Poly {
        let shape = self.shape(id);
        if let Node::Const(c) = self.g.node(id) {
            return self.constant(c.get());
        }
        if let Some(v) = self.fold_constant(id) {
            return self.constant(v);
        }
        if shape.is_scalar() {
            Poly::single(
                shape,
                Term {
                    coef: 1.0,
                    scalars: vec![(id, Num::new(1.0))],
                    chain: vec![],
                },
            )
        } else {
            Poly::single(
                shape,
                Term {
                    coef: 1.0,
                    scalars: vec![],
                    chain: vec![Factor { base: id, power: 1 }],
                },
            )
        }
    }

    /// The value of a scalar that reads no variable and whose sizes are all declared
    /// (`sum(matrix(1))` with `matrix(3,4)` context is 12). Folding it keeps printed text
    /// exact: printed alone, `sum(matrix(1))` would lose the sizes its context gave it.
    fn fold_constant(&self, id: Id) -> Option<f64> {
        if !self.shape(id).is_scalar() || matches!(self.g.node(id), Node::Var(_)) {
            return None;
        }
        let order = self.g.topo_order(id);
        let mut env = crate::eval::Env {
            dim_sizes: vec![0; self.g.dims.len()],
            values: vec![],
        };
        for &n in &order {
            if let Node::Var(_) = self.g.node(n) {
                return None;
            }
            let shape = self.shape(n);
            for d in [shape.rows, shape.cols] {
                if let Dim::Sym(i) = d {
                    env.dim_sizes[i as usize] = self.g.dims[i as usize].size?;
                }
            }
        }
        let v = crate::eval::evaluate(self.g, id, &env).ok()?.data[0];
        // `log(2)` and `sqrt(2)` stay as written: their digits are no way to print them.
        // Arithmetic on numbers folds (`2*3`, `1/3`), and so does a function whose value is
        // a simple fraction (`exp(0)`, `sqrt(4)`).
        let transcendental = order.iter().any(|&n| {
            matches!(
                self.g.node(n),
                Node::Map(..) | Node::Pow(..) | Node::ElemPow(..) | Node::Norm2(_)
            )
        });
        if transcendental && !folds(v) {
            return None;
        }
        let value = v.is_finite().then_some(v);
        if value.is_some() {
            apply(&CONSTANTS_FOLD);
        }
        value
    }

    fn constant(&self, c: f64) -> Poly {
        if c == 0.0 {
            Poly::zero(Shape::SCALAR)
        } else {
            Poly::single(
                Shape::SCALAR,
                Term {
                    coef: c,
                    ..Term::unit()
                },
            )
        }
    }

    fn ones(&mut self, shape: Shape) -> Poly {
        if shape.is_scalar() {
            return self.constant(1.0);
        }
        let f = self.g.fill(1.0, shape);
        self.atom(f)
    }

    fn compute_poly(&mut self, id: Id) -> Poly {
        let shape = self.shape(id);
        match self.g.node(id) {
            Node::Var(_) => self.atom(id),
            Node::Const(c) => self.constant(c.get()),
            Node::Fill(c, _) => {
                let mut p = self.ones(shape);
                scale_poly(&mut p, c.get());
                p
            }
            Node::Eye(_) => {
                apply(&IDENTITY_IS_THE_UNIT);
                Poly::single(shape, Term::unit())
            }
            Node::Add(a, b) => self.sum(id, a, b, shape),
            Node::Neg(a) => {
                let mut p = self.poly(a);
                scale_poly(&mut p, -1.0);
                p
            }
            Node::MatMul(a, b) | Node::Scale(a, b) => {
                let (pa, pb) = (self.poly(a), self.poly(b));
                self.mul(pa, pb)
            }
            Node::Div(a, s) => {
                let pa = self.poly(a);
                let ps = self.poly(s);
                let inv = self.pow_scalar(ps, -1.0);
                self.mul(pa, inv)
            }
            Node::Hadamard(a, b) => {
                let (pa, pb) = (self.poly(a), self.poly(b));
                self.hadamard(pa, pb)
            }
            Node::ElemDiv(a, b) => {
                let (pa, pb) = (self.poly(a), self.poly(b));
                self.elem_div(pa, pb)
            }
            Node::Pow(a, b) => {
                let pa = self.poly(a);
                let pb = self.poly(b);
                match pb.constant() {
                    Some(c) => self.pow_scalar(pa, c),
                    None => {
                        let (na, nb) = (self.build(&pa), self.build(&pb));
                        let p = self.g.pow(na, nb);
                        self.atom(p)
                    }
                }
            }
            Node::ElemPow(a, b) => {
                let pa = self.poly(a);
                let pb = self.poly(b);
                self.elem_pow(pa, pb, shape)
            }
            Node::MatPow(a, k) => {
                let pa = self.poly(a);
                self.pow_int(pa, k as i32)
            }
            Node::Transpose(a) => {
                let pa = self.poly(a);
                self.transpose(pa)
            }
            Node::Map(f, a) => {
                let pa = self.poly(a);
                self.map(f, pa)
            }
            Node::Sum(a) => {
                let pa = self.poly(a);
                if pa.shape.is_scalar() {
                    apply(&REDUCTION_OF_A_SCALAR);
                    return pa;
                }
                self.linear_scalar(pa, Reduction::Sum)
            }
            Node::Trace(a) => {
                let pa = self.poly(a);
                if pa.shape.is_scalar() {
                    apply(&REDUCTION_OF_A_SCALAR);
                    return pa;
                }
                self.linear_scalar(pa, Reduction::Trace)
            }
            Node::Norm1(a) | Node::Norm2(a) => {
                let pa = self.poly(a);
                if pa.shape.is_scalar() {
                    apply(&REDUCTION_OF_A_SCALAR);
                    return self.map(Func::Abs, pa);
                }
                let norm1 = matches!(self.g.node(id), Node::Norm1(_));
                self.norm(pa, norm1)
            }
            Node::Det(a) => self.determinant(a, false),
            Node::LogDet(a) => self.determinant(a, true),

            Node::Inv(a) => {
                let pa = self.poly(a);
                self.pow_int(pa, -1)
            }
            Node::Diag(a) => {
                let pa = self.poly(a);
                // diag(vector(1)) = eye
                self.pull_out(pa, shape, |g, v| match g.node(v) {
                    Node::Fill(c, s) if c.get() == 1.0 => {
                        apply(&DIAGONAL_MATRIX_OF_ONES);
                        g.eye(s.rows)
                    }
                    _ => g.diag(v),
                })
            }
            Node::DiagPart(a) => self.diagonal_part(a, shape),
        }
    }
}

/// Every term of `p` times `coef` and the scalar atoms `scalars` (a term's own factors
/// pulled back onto what was computed from its chain).
fn times(p: &mut Poly, coef: f64, scalars: &[(Id, Num)]) {
    for term in &mut p.terms {
        term.coef = product(term.coef, coef);
        term.scalars = merge_scalars(&term.scalars, scalars);
    }
}

fn scale_poly(p: &mut Poly, c: f64) {
    if c == 0.0 {
        p.terms.clear();
    }
    for t in &mut p.terms {
        t.coef = product(t.coef, c);
    }
}

/// Appends a factor, merging powers of the same atom and cancelling `X^k * X^-k`.
/// Whether a function or power of numbers with value `v` becomes that number: when it is a
/// simple fraction (`exp(0)`, `sqrt(4)`, `4^0.5`; see [`crate::print::fraction`]) or not
/// finite. Otherwise (`log(2)`, `4.5^1.5`) it stays as written, since its digits are no way
/// to print it.
fn folds(v: f64) -> bool {
    crate::print::fraction(v).is_some() || !v.is_finite()
}

fn push_factor(chain: &mut Vec<Factor>, f: Factor) {
    if let Some(last) = chain.last_mut() {
        if last.base == f.base {
            apply(&MATRIX_POWERS_MERGE);
            last.power += f.power;
            if last.power == 0 {
                chain.pop();
            }
            return;
        }
    }
    chain.push(f);
}

/// The product of two scalar lists: exponents of the same atom add; zeros vanish.
fn merge_scalars(a: &[(Id, Num)], b: &[(Id, Num)]) -> Vec<(Id, Num)> {
    let mut out: Vec<(Id, Num)> = a.to_vec();
    for &(s, e) in b {
        match out.iter_mut().find(|(t, _)| *t == s) {
            Some(entry) => {
                apply(&SCALAR_POWERS_MERGE);
                entry.1 = Num::new(entry.1.get() + e.get());
            }
            None => out.push((s, e)),
        }
    }
    out.retain(|(_, e)| e.get() != 0.0);
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::check_program;

    /// Simplifies a program's expression and prints it.
    fn check(source: &str, expected: &str) {
        let mut p = check_program(source).unwrap_or_else(|e| panic!("{}", e.render(source)));
        let s = simplify(&mut p.graph, p.root);
        assert_eq!(
            crate::print::text(&p.graph, s),
            expected,
            "program: {source}"
        );
    }

    #[test]
    fn identities_and_zeros_vanish() {
        check("x: vector; 1*x + 0*x", "x");
        check("x: vector; x - x", "vector(0)");
        check("A: matrix(n,n); A*eye", "A");
        check("x: vector; x''", "x");
        check("a: scalar; a^1 + 0", "a");
    }

    #[test]
    fn like_terms_and_orientation() {
        check("x: vector; x + x", "2*x");
        check("x: vector; a: vector; x'*a + a'*x", "2*a'*x");
        check("x: vector; A: matrix; x'*A'*x", "x'*A*x");
        check("A: matrix(n,n); A*A*A", "A^3");
        check("X: matrix(n,n); X*inv(X)", "eye");
        check("X: matrix(n,n); inv(X')", "inv(X)'");
    }

    /// [`check`] for each `(expression, expected)` after the declarations `decl`.
    fn check_after(decl: &str, cases: &[(&str, &str)]) {
        for (expression, expected) in cases {
            check(&format!("{decl} {expression}"), expected);
        }
    }

    #[test]
    fn a_sum_left_whole_by_a_product_collects_with_its_neighbours() {
        let cases = [
            ("A + (A+B)*eye + B", "2*(A+B)"),
            ("A - (A+B)*eye", "-B"),
            // Nothing to collect: the sum stays whole, as written.
            ("C - (A+B)*eye", "C - (A+B)"),
            ("C + 2*(A+B)*eye", "2*(A+B) + C"),
        ];
        check_after("A: matrix(n,n); B: matrix(n,n); C: matrix(n,n);", &cases);
    }

    #[test]
    fn a_negated_sum_keeps_the_orientation_the_input_gave_it() {
        let cases = [
            ("-(x-a)*2", "-2*(x-a)"),
            // No orientation written: the terms' own order.
            ("-x*2 + a*2", "2*(a-x)"),
            // Both written: each as it is.
            ("(x-a)*(a-x)'", "(x-a)*(a-x)'"),
            // Terms that share a last factor, merged around a sum the input wrote.
            ("A*x*(x-a)'*2 - A*a*(x-a)'*2 + A", "A + 2*A*(x-a)*(x-a)'"),
        ];
        check_after("x: vector; a: vector; A: matrix;", &cases);
    }

    #[test]
    fn a_diagonal_distributes_over_a_sum_where_it_meets_ones() {
        let cases = [
            ("diag(u)*(eye/s - vector(1)*u'/t)", "diag(u)/s - u*u'/t"),
            ("(eye/s - u*vector(1)'/t)*diag(u)", "diag(u)/s - u*u'/t"),
            // Nothing becomes a vector: the sum stays whole.
            ("diag(u)*(diag(v)+B)", "diag(u)*(B+diag(v))"),
            (
                "diag(A*u+u)*(vector(1)*u'+B)",
                "diag(A*u+u)*(B+vector(1)*u')",
            ),
        ];
        check_after(
            "u: vector; v: vector; s: scalar; t: scalar; A: matrix; B: matrix;",
            &cases,
        );
    }

    #[test]
    fn element_wise_quotients_cancel_through_sums_and_inner_products() {
        let cases = [
            ("u.*(v./u - w)", "v - u.*w"),
            ("u'*(v./u)", "sum(v)"),
            ("(v./u)'*u", "sum(v)"),
            ("exp(u)'*(v./exp(u))", "sum(v)"),
            // Nothing cancels: the sum stays whole.
            ("u.*(v./w - w)", "u.*(v./w-w)"),
        ];
        check_after("u: vector; v: vector; w: vector;", &cases);
    }

    #[test]
    fn transposes_move_to_the_atoms() {
        check("A: matrix; B: matrix; (A*B)'", "B'*A'");
        check("C: symmetric(n); X: matrix(n,n); (C*X)'", "X'*C");
        check("C: matrix(n,n); (C+C')'", "C + C'");
        check(
            "A: matrix; x: vector; b: vector; (A*x+b)'*(A*x+b)",
            "(A*x+b)'*(A*x+b)",
        );
    }

    #[test]
    fn common_factors_are_pulled_out_of_sums() {
        check(
            "C: matrix(n,n); X: matrix(n,n); a: vector(n); C'*X*a*a' + C*X*a*a'",
            "(C+C')*X*a*a'",
        );
        check(
            "A: matrix; x: vector; b: vector; 2*A'*A*x + 2*A'*b",
            "2*A'*(A*x+b)",
        );
    }

    #[test]
    fn a_scalar_sum_spelled_out_to_collect_is_not_multiplied_by_itself() {
        // The common factor (1+a) leaves (3+a) + c; spelling out (3+a) once multiplied its
        // terms by (3+a) again: (1+a)*(3+4*a+c), and the gradient of (a+1)*(a+2)*(a+3)
        // came out as 11*a^2+28*a+23.
        check("a: scalar; c: scalar; (1+a)*(3+a)+(1+a)*c", "(1+a)*(3+a+c)");
        check(
            "a: scalar; b: scalar; c: scalar; (1+a)*b+(1+a)*c",
            "(1+a)*(b+c)",
        );
    }

    /// The derivatives of products of k scalar sums, `(s+1)*(s+2)*...*(s+k)` with `s = x'*x`,
    /// against finite differences at a point, gradient and Hessian: the family that exposed a
    /// simplifier rule multiplying a spelled-out sum by itself.
    #[test]
    fn products_of_scalar_sums_differentiate_correctly() {
        use crate::diff::{differentiate, Layout, Request};
        use crate::verify::{compare, random_point, TOLERANCE};
        for k in 2..=7 {
            let factors: Vec<String> = (1..=k).map(|i| format!("(x'*x+{i})")).collect();
            let scalar: Vec<String> = (1..=k).map(|i| format!("(a+{i})")).collect();
            for (source, wrt) in [
                (format!("x: vector(3); {}", factors.join("*")), "x"),
                (format!("a: scalar; {}", scalar.join("*")), "a"),
            ] {
                for request in [Request::Derivative, Request::Hessian] {
                    let program = crate::types::check_program(&source).unwrap();
                    let d = differentiate(program, wrt, &request, Layout::Gradient).unwrap();
                    let env = random_point(&d.program.graph, &[3], 7);
                    // Keep s small so that the product stays well scaled.
                    let env = crate::eval::Env {
                        values: env
                            .values
                            .into_iter()
                            .map(|v| v.map(|m| m.map(|z| 0.3 * z)))
                            .collect(),
                        ..env
                    };
                    let c = compare(&d, &env).unwrap();
                    assert!(
                        c.rel_error < TOLERANCE,
                        "{source} ({request:?}): {}: {c:?}",
                        d.text()
                    );
                }
            }
        }
    }

    #[test]
    fn norms_drop_the_sign_and_rows_of_ones_count_as_transposes() {
        // norm(-u) = norm(u): the two terms are one.
        check("u: vector; norm1(-u) + norm1(u)", "2*norm1(u)");
        check("u: vector; norm2(-2*u)", "2*norm2(u)");
        // A row of ones prints with a transpose, so sum(vector(1)) is not turned into one.
        check("x: vector(3); sum(vector(1))*x", "sum(vector(1))*x");
    }

    #[test]
    fn trace_rotations() {
        check("x: vector; a: vector; tr(x*a')", "a'*x");
        check("A: matrix(n,n); B: matrix(n,n); tr(B*A) - tr(A*B)", "0");
    }

    #[test]
    fn powers_of_zero_fold() {
        check("x: vector; vector(0).^2 + x", "x");
        check(
            "x: vector; vector(1)./(vector(0).^3+vector(1)) + x",
            "vector(1) + x",
        );
        // Not for a negative power (infinite) or a variable one.
        check("vector(0).^(-1)", "vector(0).^(-1)");
    }

    #[test]
    fn logistic_ratios_are_built_without_overflow() {
        // exp(u)./(exp(u)+1) overflows to inf/inf in float32 past u = 88; 1./(1+exp(-u)) not.
        check("exp(x)./(exp(x)+vector(1))", "1./(exp(-x)+vector(1))");
        check("exp(x)./(vector(1)+exp(x))", "1./(exp(-x)+vector(1))");
        // Not the pattern: left alone.
        check("exp(x)./(exp(x)+vector(2))", "exp(x)./(exp(x)+2*vector(1))");
        // Powers: exp(u)^p ./ (exp(u)+1)^q for p <= q; the logistic Hessian's weight.
        check(
            "x: vector; exp(x)./(exp(x)+vector(1)).^2",
            "1./((exp(x)+vector(1)).*(exp(-x)+vector(1)))",
        );
        check(
            "x: vector; y: vector; exp(x).*y./(exp(x)+vector(1)).^2",
            "y./((exp(x)+vector(1)).*(exp(-x)+vector(1)))",
        );
        check(
            "x: vector; exp(x).^2./(vector(1)+exp(x)).^3",
            "1./((exp(x)+vector(1)).*(exp(-x)+vector(1)).^2)",
        );
        // p > q: nothing to gain, left alone.
        check(
            "x: vector; exp(x).^2./(exp(x)+vector(1))",
            "exp(x).^2./(exp(x)+vector(1))",
        );
        // The workload's gradient is the cookbook's stable form.
        let source =
            "X: matrix(3,2); y: vector(3); w: vector(2); sum(log(vector(1)+exp(-y.*(X*w))))";
        let p = check_program(source).unwrap();
        let d = crate::diff::differentiate(
            p,
            "w",
            &crate::diff::Request::Derivative,
            crate::diff::Layout::Gradient,
        )
        .unwrap();
        assert_eq!(d.text(), "-X'*(y./(exp(y.*(X*w))+vector(1)))");
    }
}
