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

    /// The sum `id` = `a + b` of `shape`; a chain of more than [`LONG_SUM`] sums in one pass
    /// (level by level, every prefix would be collected and memoized again: quadratic in the
    /// chain's length).
    fn sum(&mut self, id: Id, a: Id, b: Id, shape: Shape) -> Poly {
        if let Some(operands) = self.long_sum(id) {
            let mut terms = Vec::new();
            for o in operands {
                terms.extend(self.poly(o).terms);
            }
            let terms = collect(terms);
            return Poly {
                shape,
                terms: self.flatten_sums_that_collect(terms),
            };
        }
        let (pa, pb) = (self.poly(a), self.poly(b));
        self.add(pa, pb)
    }

    /// The operands of the chain of sums `id` heads (`((a+b)+c)+d`: `a, b, c, d`), stopping
    /// at a sum already simplified, when there are more than [`LONG_SUM`]; `None` otherwise.
    fn long_sum(&self, id: Id) -> Option<Vec<Id>> {
        let mut operands = Vec::new();
        let mut left = id;
        while let Node::Add(l, r) = self.g.node(left) {
            if left != id && self.polys.contains_key(&left) {
                break;
            }
            operands.push(r);
            left = l;
        }
        operands.push(left);
        if operands.len() <= LONG_SUM {
            return None;
        }
        operands.reverse();
        Some(operands)
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
        v.is_finite().then_some(v)
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
            Node::Eye(_) => Poly::single(shape, Term::unit()),
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
                    return pa;
                }
                self.linear_scalar(pa, Reduction::Sum)
            }
            Node::Trace(a) => {
                let pa = self.poly(a);
                if pa.shape.is_scalar() {
                    return pa;
                }
                self.linear_scalar(pa, Reduction::Trace)
            }
            Node::Norm1(a) | Node::Norm2(a) => {
                let pa = self.poly(a);
                if pa.shape.is_scalar() {
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
                    Node::Fill(c, s) if c.get() == 1.0 => g.eye(s.rows),
                    _ => g.diag(v),
                })
            }
            Node::DiagPart(a) => self.diagonal_part(a, shape),
        }
    }

    /// `det` or (`is_log`) `logdet` of the normal form of `a`: of a scalar, itself (or its
    /// log); `det(A^k)` as `det(A)^k`; else of the orientation that reads best.
    fn determinant(&mut self, a: Id, is_log: bool) -> Poly {
        let pa = self.poly(a);
        if pa.shape.is_scalar() {
            return if is_log { self.map(Func::Log, pa) } else { pa };
        }
        // det(A^k) = det(A)^k: exact, and far better conditioned in float32 than
        // the determinant of the power.
        if let (false, [t]) = (is_log, pa.terms.as_slice()) {
            if let ([f], 1.0, true) = (t.chain.as_slice(), t.coef, t.scalars.is_empty()) {
                if f.power != 1 {
                    let (base, power) = (f.base, f.power);
                    let det_base = self.g.det(base);
                    let p = self.atom(det_base);
                    return self.pow_scalar(p, power as f64);
                }
            }
        }
        let arg = self.best_orientation(pa);
        let node = if is_log {
            Node::LogDet(arg)
        } else {
            Node::Det(arg)
        };
        let d = self.g.push(node);
        self.atom(d)
    }

    /// `diag(X)` of the normal form of `a`, a vector of `shape`: of `diag(v)`, `v`; of a
    /// rank-one chain `p*r'`, `p.*r`; of products with ones, sums; else pulled through the
    /// terms.
    fn diagonal_part(&mut self, a: Id, shape: Shape) -> Poly {
        let pa = self.poly(a);
        if let [t] = pa.terms.as_slice() {
            if let [f] = t.chain.as_slice() {
                if let (Node::Diag(v), 1) = (self.g.node(f.base), f.power) {
                    let mut pv = self.poly(v);
                    times(&mut pv, t.coef, &t.scalars);
                    return pv;
                }
            }
        }
        if let [t] = pa.terms.as_slice() {
            // diag(p*r') = p.*r for a rank-one chain: a prefix of it is a column.
            let split =
                (1..t.chain.len()).find(|&k| self.shape(t.chain[k - 1].base).cols == Dim::One);
            if let Some(k) = split {
                let (n, one) = (shape.rows, Dim::One);
                let unit = |chain: &[Factor], shape| {
                    let term = Term {
                        chain: chain.to_vec(),
                        ..Term::unit()
                    };
                    Poly::single(shape, term)
                };
                let column = unit(&t.chain[..k], Shape::new(n, one));
                let row = unit(&t.chain[k..], Shape::new(one, n));
                let row_t = self.transpose(row);
                let mut h = self.hadamard(column, row_t);
                times(&mut h, t.coef, &t.scalars);
                return h;
            }
        }
        if let Some(sums) = self.diag_of_ones_product(&pa, shape) {
            return sums;
        }
        let oriented = self.orient_single(pa);
        self.pull_out(oriented, shape, |g, v| g.diag_part(v))
    }

    /// `diag(P*J) = P*vector(1)` and `diag(J*P) = P'*vector(1)` for a matrix of ones `J`:
    /// the row (column) sums of `P`, for a single-term `p`; `None` for other forms.
    fn diag_of_ones_product(&mut self, p: &Poly, shape: Shape) -> Option<Poly> {
        if p.terms.len() > 1 {
            // diag is linear: the terms of this form one by one, the others under one diag.
            let mut done = Poly::zero(shape);
            let mut others = Poly::zero(p.shape);
            for t in &p.terms {
                let single = Poly::single(p.shape, t.clone());
                match self.diag_of_ones_product(&single, shape) {
                    Some(d) => done = self.add(done, d),
                    None => others = self.add(others, single),
                }
            }
            if done.terms.is_empty() {
                return None;
            }
            if !others.terms.is_empty() {
                let oriented = self.orient_single(others);
                let rest = self.pull_out(oriented, shape, |g, v| g.diag_part(v));
                done = self.add(done, rest);
            }
            return Some(done);
        }
        let [t] = p.terms.as_slice() else {
            return None;
        };
        let ones_at = |i: usize| {
            t.chain
                .get(i)
                .filter(|f| f.power == 1 && self.is_ones(f.base))
                .map(|f| self.shape(f.base))
        };
        let last = t.chain.len().checked_sub(1)?;
        let (rest, k, transposed) = if let Some(j) = ones_at(last) {
            (&t.chain[..last], j.rows, false)
        } else if let Some(j) = ones_at(0) {
            (&t.chain[1..], j.cols, true)
        } else {
            return None;
        };
        let rest_shape = if transposed {
            Shape::new(k, shape.rows)
        } else {
            Shape::new(shape.rows, k)
        };
        let mut factor = Poly::single(
            rest_shape,
            Term {
                chain: rest.to_vec(),
                ..t.clone()
            },
        );
        if transposed {
            factor = self.transpose(factor);
        }
        let ones = self.ones(Shape::new(k, Dim::One));
        Some(self.mul(factor, ones))
    }

    // ----- sums and products -----

    fn add(&mut self, a: Poly, b: Poly) -> Poly {
        let mut terms = a.terms;
        terms.extend(b.terms);
        let terms = collect(terms);
        Poly {
            shape: a.shape,
            terms: self.flatten_sums_that_collect(terms),
        }
    }

    /// Terms that are a sum and nothing else but a number and scalars (`2*(u+v)`, left by a
    /// product that kept its sum whole) are spelled out when that lets their terms collect
    /// with the others: `A'*D + (A'*D+D*A) + D*A` → `2*A'*D + 2*D*A`. Otherwise they stay
    /// whole, as written. This spells out no more terms than the input wrote.
    fn flatten_sums_that_collect(&mut self, terms: Vec<Term>) -> Vec<Term> {
        let mut kept = Vec::new();
        let mut spelled = Vec::new();
        let mut lone = 0;
        for t in &terms {
            match self.lone_sum(t) {
                Some(sum) => {
                    let mut p = self.poly(sum);
                    // The sum's own factor is what is spelled out: only the other scalars
                    // multiply its terms (for a scalar sum, that is none of them).
                    let others: Vec<(Id, Num)> =
                        t.scalars.iter().filter(|s| s.0 != sum).copied().collect();
                    times(&mut p, t.coef, &others);
                    spelled.extend(p.terms);
                    lone += 1;
                }
                None => kept.push(t.clone()),
            }
        }
        if lone == 0 {
            return terms;
        }
        let spelled_out = spelled.len();
        kept.extend(spelled);
        let flat = collect(kept);
        if flat.len() < terms.len() - lone + spelled_out {
            flat
        } else {
            terms
        }
    }

    /// The sum `t` is, but for its number and scalars: its one matrix factor, or for a
    /// scalar its one scalar factor, when that is a sum to the first power.
    fn lone_sum(&self, t: &Term) -> Option<Id> {
        let base = match (t.chain.as_slice(), t.scalars.as_slice()) {
            ([f], _) if f.power == 1 => f.base,
            ([], [(s, e)]) if e.get() == 1.0 => *s,
            _ => return None,
        };
        matches!(self.g.node(base), Node::Add(..)).then_some(base)
    }

    fn mul(&mut self, a: Poly, b: Poly) -> Poly {
        let shape = if a.shape.is_scalar() {
            b.shape
        } else if b.shape.is_scalar() {
            a.shape
        } else {
            Shape::new(a.shape.rows, b.shape.cols)
        };
        if a.terms.is_empty() || b.terms.is_empty() {
            return Poly::zero(shape);
        }
        if a.shape.is_scalar() || b.shape.is_scalar() {
            let (s, m) = if a.shape.is_scalar() { (a, b) } else { (b, a) };
            let (coef, scalars) = self.as_scalar_factor(s);
            if m.terms.len() > MAX_DISTRIBUTED_TERMS && !scalars.is_empty() {
                // A long sum stays one factor: distributed, products of such factors over
                // sums of them multiply the terms at every level (exponential in the depth).
                let t = if m.shape.is_scalar() {
                    let (c, sc) = self.as_scalar_factor(m);
                    Term {
                        coef: c,
                        scalars: sc,
                        chain: vec![],
                    }
                } else {
                    self.as_term(m)
                };
                let term = Term {
                    coef: product(t.coef, coef),
                    scalars: merge_scalars(&t.scalars, &scalars),
                    chain: t.chain,
                };
                return Poly::single(shape, term);
            }
            let terms = m
                .terms
                .into_iter()
                .map(|t| Term {
                    coef: product(t.coef, coef),
                    scalars: merge_scalars(&t.scalars, &scalars),
                    chain: t.chain,
                })
                .collect();
            return Poly {
                shape,
                terms: collect(terms),
            };
        }
        if let Some(p) = self.distribute_diagonal_meeting_ones(&a, &b, shape) {
            return p;
        }
        let ta = self.as_term(a);
        let tb = self.as_term(b);
        let mut chain = ta.chain;
        for f in tb.chain {
            self.push_factor_merging_diagonals(&mut chain, f);
        }
        let term = Term {
            coef: product(ta.coef, tb.coef),
            scalars: merge_scalars(&ta.scalars, &tb.scalars),
            chain,
        };
        let term = self.normalize_term(term, shape);
        Poly {
            shape,
            terms: collect(vec![term]),
        }
    }

    /// `a*b` with the one term of `a` (or `b`) distributed over the other's terms, when that
    /// meets a diagonal matrix with ones and so turns a product into a vector:
    /// `diag(u)*(eye/s - vector(1)*u'/t)` → `diag(u)/s - u*u'/t` (the Hessian of
    /// `log(sum(exp(x)))` as the cookbook writes it). Otherwise `None`, and the sum stays
    /// whole (distributing `diag(u)` over `diag(v) + B`, or `inv(X)` over `X + B`, mostly
    /// reads worse). The result has as many terms as the sum.
    fn distribute_diagonal_meeting_ones(
        &mut self,
        a: &Poly,
        b: &Poly,
        shape: Shape,
    ) -> Option<Poly> {
        let single_left = match (a.terms.len(), b.terms.len()) {
            (1, n) if n >= 2 => true,
            (n, 1) if n >= 2 => false,
            _ => return None,
        };
        let (one, sum) = if single_left { (a, b) } else { (b, a) };
        // The `u` of a `diag(u)` that meets ones where the one term meets `t`.
        let meets_ones = |me: &Self, t: &Term| -> Option<Id> {
            let (left, right) = if single_left {
                (one.terms[0].chain.last(), t.chain.first())
            } else {
                (t.chain.last(), one.terms[0].chain.first())
            };
            let (l, r) = (left?, right?);
            let ones = |id: Id, column: bool| {
                let shape = me.shape(id);
                let dim = if column { shape.cols } else { shape.rows };
                me.is_ones(id) && dim == Dim::One
            };
            if l.power != 1 || r.power != 1 {
                return None;
            }
            match (me.g.node(l.base), me.g.node(r.base)) {
                (Node::Diag(u), _) if ones(r.base, true) => Some(u),
                (_, Node::Diag(u)) if ones(l.base, false) => Some(u),
                _ => None,
            }
        };
        // As `push_factor_merging_diagonals` merges them: only a product fits in a chain.
        let merges = |me: &mut Self, t: &Term| match meets_ones(me, t) {
            Some(u) => {
                let pu = me.poly(u);
                matches!(pu.terms.as_slice(), [t] if t.coef == 1.0 && t.scalars.is_empty())
            }
            None => false,
        };
        if !sum.terms.iter().any(|t| merges(self, t)) {
            return None;
        }
        Some(self.each_term(sum, shape, |me, t| {
            if single_left {
                me.mul(one.clone(), t)
            } else {
                me.mul(t, one.clone())
            }
        }))
    }

    /// The sum over `sum`'s terms of `product(term)`, a poly of `shape`: a product distributed
    /// over a sum.
    fn each_term(
        &mut self,
        sum: &Poly,
        shape: Shape,
        mut product: impl FnMut(&mut Self, Poly) -> Poly,
    ) -> Poly {
        let mut out = Poly::zero(shape);
        for t in &sum.terms {
            let p = product(self, Poly::single(sum.shape, t.clone()));
            out = self.add(out, p);
        }
        out
    }

    /// [`push_factor`], except that a diagonal matrix after a diagonal matrix becomes one:
    /// `diag(u)*diag(v) = diag(u.*v)` and `diag(u)*diag(u) = diag(u.^2)`, with the Hadamard
    /// product in its canonical order, so `diag(u)*diag(v) + diag(v)*diag(u)` is
    /// `2*diag(u.*v)`; a diagonal matrix times ones is its vector, `diag(u)*vector(1) = u`,
    /// `vector(1)'*diag(u) = u'`; and an inner product whose element-wise product cancels a
    /// quotient is a sum, `u'*(v./u) = vector(1)'*v`.
    fn push_factor_merging_diagonals(&mut self, chain: &mut Vec<Factor>, f: Factor) {
        let last = chain.last().copied();
        // u'*(v./u) = vector(1)'*(u.*(v./u)) = vector(1)'*v, and (v./u)'*u likewise: an inner
        // product whose element-wise product cancels a factor.
        if let Some(l) = last.filter(|l| l.power == 1 && f.power == 1) {
            let column = self.shape(f.base);
            if column.cols == Dim::One
                && !column.is_scalar()
                && self.shape(l.base) == column.transposed()
            {
                if let Some(mut parts) = self.row_as_column_factors(l.base) {
                    let mut others = Vec::new();
                    self.elementwise_factors(f.base, 1.0, &mut others);
                    if factors_cancel(&parts, &others) {
                        parts.push((f.base, 1.0));
                        let rest = self.elementwise_monomial(&parts, column);
                        let ones = self.g.fill(1.0, column.transposed());
                        chain.pop();
                        push_factor(
                            chain,
                            Factor {
                                base: ones,
                                power: 1,
                            },
                        );
                        push_factor(
                            chain,
                            Factor {
                                base: rest,
                                power: 1,
                            },
                        );
                        return;
                    }
                }
            }
        }
        // diag(u)*vector(1) = u and vector(1)'*diag(u) = u'
        if let Some(last) = last.filter(|l| l.power == 1 && f.power == 1) {
            let ones = |me: &Self, id: Id, column: bool| {
                let shape = me.shape(id);
                me.is_ones(id)
                    && if column {
                        shape.cols == Dim::One
                    } else {
                        shape.rows == Dim::One
                    }
            };
            let vector = match (self.g.node(last.base), self.g.node(f.base)) {
                (Node::Diag(u), _) if ones(self, f.base, true) => Some(self.poly(u)),
                (_, Node::Diag(u)) if ones(self, last.base, false) => {
                    let pu = self.poly(u);
                    Some(self.transpose(pu))
                }
                _ => None,
            };
            // Only a product fits in a chain; `diag(A*x+b)*vector(1)` stays as it is rather
            // than become a sum that products cannot distribute over.
            if let Some([t]) = vector.as_ref().map(|pu| pu.terms.as_slice()) {
                if t.coef == 1.0 && t.scalars.is_empty() {
                    chain.pop();
                    for &factor in &t.chain.clone() {
                        self.push_factor_merging_diagonals(chain, factor);
                    }
                    return;
                }
            }
        }
        if let (Some(last), Node::Diag(v)) = (last, self.g.node(f.base)) {
            if let (Node::Diag(u), 1, 1) = (self.g.node(last.base), last.power, f.power) {
                let (pu, pv) = (self.poly(u), self.poly(v));
                let product = self.hadamard(pu, pv);
                let inner = self.build(&product);
                let base = self.g.diag(inner);
                chain.pop();
                push_factor(chain, Factor { base, power: 1 });
                return;
            }
        }
        push_factor(chain, f);
    }

    /// Moves every 1×1 segment of the chain (a row vector times … times a column vector)
    /// into the scalars, in its best orientation.
    fn normalize_term(&mut self, mut term: Term, shape: Shape) -> Term {
        loop {
            let mut segment = None;
            'search: for i in 0..term.chain.len() {
                if self.shape(term.chain[i].base).rows != Dim::One {
                    continue;
                }
                for j in i..term.chain.len() {
                    if self.shape(term.chain[j].base).cols == Dim::One {
                        segment = Some((i, j));
                        break 'search;
                    }
                }
            }
            let Some((i, j)) = segment else { break };
            if i == 0 && j + 1 == term.chain.len() && !shape.is_scalar() {
                break;
            }
            let inner: Vec<Factor> = term.chain.drain(i..=j).collect();
            let atom = self.scalar_chain_atom(inner);
            match self.fold_constant(atom) {
                Some(v) => term.coef = product(term.coef, v),
                None => term.scalars = merge_scalars(&term.scalars, &[(atom, Num::new(1.0))]),
            }
        }
        term
    }

    /// The node for a 1×1 chain, oriented so that it has the fewest transposes.
    fn scalar_chain_atom(&mut self, chain: Vec<Factor>) -> Id {
        if let Some(sum) = self.sum_of_ones_product(&chain) {
            return sum;
        }
        let shape = Shape::SCALAR;
        let direct = self.build_chain(&chain, shape);
        let as_poly = Poly::single(
            shape,
            Term {
                chain,
                ..Term::unit()
            },
        );
        let transposed = self.transpose_chain_only(as_poly);
        match transposed {
            Some(t) => {
                let flipped = self.build_chain(&t, shape);
                self.better(direct, flipped)
            }
            None => direct,
        }
    }

    /// `vector(1)'*u` and `u'*vector(1)` as `sum(u)`, the atom a written `sum(u)` gives, so
    /// that the two cancel (`1/sum(e) - (vector(1)'*e)/sum(e)^2` is 0); `None` for other
    /// chains.
    fn sum_of_ones_product(&mut self, chain: &[Factor]) -> Option<Id> {
        let ones_vector = |me: &Self, f: &Factor| f.power == 1 && me.is_ones(f.base);
        let rest = match chain {
            [first, rest @ ..] if !rest.is_empty() && ones_vector(self, first) => rest,
            [rest @ .., last] if !rest.is_empty() && ones_vector(self, last) => rest,
            _ => return None,
        };
        let rest_shape = match (rest.first(), rest.last()) {
            (Some(f), Some(l)) => Shape::new(self.shape(f.base).rows, self.shape(l.base).cols),
            _ => return None,
        };
        let sum = self.reduce_chain(rest, rest_shape, Reduction::Sum);
        match sum.terms.as_slice() {
            [t] if t.coef == 1.0 && t.chain.is_empty() => match t.scalars.as_slice() {
                [(atom, e)] if e.get() == 1.0 => Some(*atom),
                _ => None,
            },
            _ => None,
        }
    }

    /// The chain of the transpose of a single-factor-chain term, when it stays a chain.
    fn transpose_chain_only(&mut self, p: Poly) -> Option<Vec<Factor>> {
        let [term] = p.terms.as_slice() else {
            return None;
        };
        let mut out = Vec::new();
        for f in term.chain.iter().rev() {
            let tp = self.transpose_factor(*f);
            match tp.terms.as_slice() {
                [t] if t.coef == 1.0 && t.scalars.is_empty() => {
                    for g in &t.chain {
                        push_factor(&mut out, *g);
                    }
                }
                _ => return None,
            }
        }
        Some(out)
    }

    /// Of two equal nodes, the one with fewer transposes, then the first by [`Key`].
    fn better(&mut self, a: Id, b: Id) -> Id {
        if a == b {
            return a;
        }
        let ka = (self.count_transposes(a), self.key(a));
        let kb = (self.count_transposes(b), self.key(b));
        if kb < ka {
            b
        } else {
            a
        }
    }

    fn count_transposes(&self, id: Id) -> usize {
        self.g
            .topo_order(id)
            .into_iter()
            .filter(|&n| matches!(self.g.node(n), Node::Transpose(_)))
            .count()
    }

    /// A scalar poly as a coefficient and scalar factors (a sum becomes one factor).
    fn as_scalar_factor(&mut self, s: Poly) -> (f64, Vec<(Id, Num)>) {
        if let [t] = s.terms.as_slice() {
            return (t.coef, t.scalars.clone());
        }
        match self.factor_out(&s) {
            Some(f) => {
                let (sign, inner) = self.sum_factor(&f.rest);
                let scalars = merge_scalars(&f.scalars, &[(inner, Num::new(1.0))]);
                (sign * f.coef, scalars)
            }
            None => {
                let (sign, inner) = self.sum_factor(&s);
                (sign, vec![(inner, Num::new(1.0))])
            }
        }
    }

    /// A non-scalar poly as one term (a sum becomes one factor, after factoring).
    fn as_term(&mut self, p: Poly) -> Term {
        if p.terms.len() == 1 {
            return p.terms.into_iter().next().unwrap_or_else(Term::unit);
        }
        match self.factor_out(&p) {
            Some(f) => self.factored_term(f),
            None => {
                let (sign, inner) = self.sum_factor(&p);
                Term {
                    coef: sign,
                    chain: vec![Factor {
                        base: inner,
                        power: 1,
                    }],
                    ..Term::unit()
                }
            }
        }
    }

    /// `coef * scalars * prefix * (rest) * suffix` as one term, the rest as a sum factor.
    fn factored_term(&mut self, f: Factored) -> Term {
        let (sign, inner) = self.sum_factor(&f.rest);
        let mut chain = f.prefix;
        chain.push(Factor {
            base: inner,
            power: 1,
        });
        chain.extend(f.suffix);
        Term {
            coef: sign * f.coef,
            scalars: f.scalars,
            chain,
        }
    }

    /// A sum that becomes one factor, as `(sign, node)` with `sign * node` equal to `p`: the
    /// node is `p`'s sum, or its negation when only that is written in the program
    /// ([`Graph::is_written`]). So a sum the input wrote keeps its orientation when it comes
    /// back negated: `-(x-a)*(x-a)'`, not `(a-x)*(x-a)'`.
    fn sum_factor(&mut self, p: &Poly) -> (f64, Id) {
        let sum = self.build_inner_sum(p);
        if self.g.is_written(sum) {
            return (1.0, sum);
        }
        let mut negated = p.clone();
        scale_poly(&mut negated, -1.0);
        let other = self.build_inner_sum(&negated);
        if self.g.is_written(other) {
            (-1.0, other)
        } else {
            (1.0, sum)
        }
    }

    /// Pulls out what every term of a sum shares.
    fn factor_out(&mut self, p: &Poly) -> Option<Factored> {
        if p.terms.len() < 2 {
            return None;
        }
        let coefs: Vec<f64> = p.terms.iter().map(|t| t.coef).collect();
        let coef = common_coefficient(&coefs);
        let scalars: Vec<(Id, Num)> = p.terms[0]
            .scalars
            .iter()
            .filter(|s| p.terms.iter().all(|t| t.scalars.contains(s)))
            .copied()
            .collect();
        let min_len = p.terms.iter().map(|t| t.chain.len()).min().unwrap_or(0);
        let mut prefix_len = 0;
        while prefix_len + 1 < min_len
            && p.terms
                .iter()
                .all(|t| t.chain[prefix_len] == p.terms[0].chain[prefix_len])
        {
            prefix_len += 1;
        }
        let mut suffix_len = 0;
        while prefix_len + suffix_len + 1 < min_len
            && p.terms.iter().all(|t| {
                t.chain[t.chain.len() - 1 - suffix_len]
                    == p.terms[0].chain[p.terms[0].chain.len() - 1 - suffix_len]
            })
        {
            suffix_len += 1;
        }
        if coef == 1.0 && scalars.is_empty() && prefix_len == 0 && suffix_len == 0 {
            return None;
        }
        let first = &p.terms[0].chain;
        let prefix: Vec<Factor> = first[..prefix_len].to_vec();
        let suffix: Vec<Factor> = first[first.len() - suffix_len..].to_vec();
        let rows = match prefix.last() {
            Some(f) => self.shape(f.base).cols,
            None => p.shape.rows,
        };
        let cols = match suffix.first() {
            Some(f) => self.shape(f.base).rows,
            None => p.shape.cols,
        };
        let rest_terms = p
            .terms
            .iter()
            .map(|t| Term {
                coef: t.coef / coef,
                scalars: t
                    .scalars
                    .iter()
                    .filter(|s| !scalars.contains(s))
                    .copied()
                    .collect(),
                chain: t.chain[prefix_len..t.chain.len() - suffix_len].to_vec(),
            })
            .collect();
        Some(Factored {
            coef,
            scalars,
            prefix,
            rest: Poly {
                shape: Shape::new(rows, cols),
                terms: rest_terms,
            },
            suffix,
        })
    }

    // ----- powers and inverses -----

    /// A scalar raised to a constant.
    fn pow_scalar(&mut self, p: Poly, c: f64) -> Poly {
        if c == 1.0 {
            return p;
        }
        if c == 0.0 {
            return self.constant(1.0);
        }
        if let Some(v) = p.constant() {
            // `4^0.5` is 2, but `4.5^1.5` stays as written, not as its digits.
            let value = v.powf(c);
            if folds(value) {
                return self.constant(value);
            }
            let (base, exponent) = (self.g.constant(v), self.g.constant(c));
            let node = self.g.pow(base, exponent);
            return self.atom(node);
        }
        let integer = c.fract() == 0.0;
        if let [t] = p.terms.as_slice() {
            if integer {
                return Poly::single(
                    Shape::SCALAR,
                    Term {
                        coef: t.coef.powf(c),
                        scalars: t
                            .scalars
                            .iter()
                            .map(|&(s, e)| (s, Num::new(e.get() * c)))
                            .collect(),
                        chain: vec![],
                    },
                );
            }
            if t.coef > 0.0 && t.scalars.len() == 1 && t.scalars[0].1.get() == 1.0 {
                return Poly::single(
                    Shape::SCALAR,
                    Term {
                        coef: t.coef.powf(c),
                        scalars: vec![(t.scalars[0].0, Num::new(c))],
                        chain: vec![],
                    },
                );
            }
        }
        let base = self.build(&p);
        Poly::single(
            Shape::SCALAR,
            Term {
                coef: 1.0,
                scalars: vec![(base, Num::new(c))],
                chain: vec![],
            },
        )
    }

    /// A square matrix (or scalar) raised to an integer power; negative means inverse.
    fn pow_int(&mut self, p: Poly, k: i32) -> Poly {
        if p.shape.is_scalar() {
            return self.pow_scalar(p, k as f64);
        }
        if k == 1 {
            return p;
        }
        if k < 0 {
            let inverse = self.invert(p);
            return self.pow_int(inverse, -k);
        }
        let mut out = Poly::single(p.shape, Term::unit());
        for _ in 0..k {
            out = self.mul(out, p.clone());
        }
        out
    }

    fn invert(&mut self, p: Poly) -> Poly {
        let shape = p.shape;
        if p.terms.is_empty() {
            // inv of a zero matrix: an opaque factor (its value is inf or NaN, as evaluated).
            // Simplifying the node `inv(0)` again would come back here without end.
            let z = self.build(&p);
            return Poly::single(
                shape,
                Term {
                    chain: vec![Factor { base: z, power: -1 }],
                    ..Term::unit()
                },
            );
        }
        let t = self.as_term(p);
        let all_square = t.chain.iter().all(|f| self.shape(f.base).is_square());
        let chain = if all_square {
            let mut out = Vec::new();
            for f in t.chain.iter().rev() {
                push_factor(
                    &mut out,
                    Factor {
                        base: f.base,
                        power: -f.power,
                    },
                );
            }
            out
        } else {
            let base = self.build_chain(&t.chain, shape);
            vec![Factor { base, power: -1 }]
        };
        Poly::single(
            shape,
            Term {
                coef: 1.0 / t.coef,
                scalars: t
                    .scalars
                    .iter()
                    .map(|&(s, e)| (s, Num::new(-e.get())))
                    .collect(),
                chain,
            },
        )
    }

    // ----- transposes -----

    fn transpose(&mut self, p: Poly) -> Poly {
        if p.shape.is_scalar() {
            return p;
        }
        if p.terms.len() < 2 {
            return self.transpose_terms(p);
        }
        // A transposed sum reads better as `(A*x+b)'` than as `b'+x'*A'`, unless the sum
        // is symmetric (`(C+C')' = C+C'`) or pushing the transpose in removes transposes.
        let sum = self.build(&p);
        let pushed = self.transpose_terms(p);
        if !matches!(self.g.node(sum), Node::Add(..)) {
            return pushed;
        }
        let pushed_node = self.build(&pushed);
        let wrapped = self.g.transpose(sum);
        if self.better(pushed_node, wrapped) == wrapped {
            self.atom(wrapped)
        } else {
            pushed
        }
    }

    /// The transpose, term by term, with every factor transposed in reverse order.
    fn transpose_terms(&mut self, p: Poly) -> Poly {
        let shape = p.shape.transposed();
        let mut out = Poly::zero(shape);
        for term in p.terms {
            let mut acc = Poly::single(
                Shape::SCALAR,
                Term {
                    coef: term.coef,
                    scalars: term.scalars,
                    chain: vec![],
                },
            );
            if term.chain.is_empty() {
                acc = self.mul(acc, Poly::single(shape, Term::unit()));
            }
            for f in term.chain.iter().rev() {
                let tf = self.transpose_factor(*f);
                acc = self.mul(acc, tf);
            }
            out = self.add(out, acc);
        }
        out
    }

    fn transpose_factor(&mut self, f: Factor) -> Poly {
        let base = self.transpose_base(f.base);
        self.pow_int(base, f.power)
    }

    fn transpose_base(&mut self, base: Id) -> Poly {
        let shape = self.shape(base).transposed();
        match self.g.node(base) {
            Node::Var(v) if self.g.vars[v as usize].symmetric => self.atom(base),
            Node::Transpose(x) => self.poly(x),
            Node::Fill(c, _) => {
                let f = self.g.fill(c.get(), shape);
                self.atom(f)
            }
            Node::Diag(_) | Node::Eye(_) => self.atom(base),
            Node::Map(func, x) => {
                let px = self.poly(x);
                let tx = self.transpose(px);
                self.map(func, tx)
            }
            Node::Hadamard(a, b) | Node::ElemDiv(a, b) | Node::ElemPow(a, b) => {
                let (pa, pb) = (self.poly(a), self.poly(b));
                let ta = self.transpose(pa);
                let tb = self.transpose(pb);
                match self.g.node(base) {
                    Node::Hadamard(..) => self.hadamard(ta, tb),
                    Node::ElemDiv(..) => self.elem_div(ta, tb),
                    _ => self.elem_pow(ta, tb, shape),
                }
            }
            Node::Add(..)
            | Node::Neg(_)
            | Node::MatMul(..)
            | Node::Scale(..)
            | Node::Div(..)
            | Node::MatPow(..)
            | Node::Inv(_) => {
                let p = self.poly(base);
                self.transpose(p)
            }
            _ => {
                let t = self.g.transpose(base);
                self.atom(t)
            }
        }
    }

    /// A single-term poly turned around when that has fewer transposes (for functions
    /// that do not see a transpose: `det`, `sum`, norms, the diagonal).
    fn orient_single(&mut self, p: Poly) -> Poly {
        if p.terms.len() != 1 || p.shape.is_scalar() || !p.shape.is_square() {
            return p;
        }
        let direct = self.build(&p);
        let tp = self.transpose(p.clone());
        let flipped = self.build(&tp);
        if self.better(direct, flipped) == direct {
            p
        } else {
            tp
        }
    }

    fn best_orientation(&mut self, p: Poly) -> Id {
        let direct = self.build(&p);
        let tp = self.transpose(p);
        let flipped = self.build(&tp);
        self.better(direct, flipped)
    }

    // ----- element-wise operations -----

    fn hadamard(&mut self, a: Poly, b: Poly) -> Poly {
        if a.shape.is_scalar() || b.shape.is_scalar() {
            return self.mul(a, b);
        }
        let shape = a.shape;
        if a.terms.is_empty() || b.terms.is_empty() {
            return Poly::zero(shape);
        }
        if let Some(p) = self.distribute_hadamard_where_it_cancels(&a, &b, shape) {
            return p;
        }
        let ta = self.as_term(a);
        let tb = self.as_term(b);
        let coef = product(ta.coef, tb.coef);
        let scalars = merge_scalars(&ta.scalars, &tb.scalars);
        let na = self.build_chain(&ta.chain, shape);
        let nb = self.build_chain(&tb.chain, shape);
        let node = self.elementwise_monomial(&[(na, 1.0), (nb, 1.0)], shape);
        let mut p = self.poly_of_unit(node);
        times(&mut p, coef, &scalars);
        p
    }

    /// `a.*b` with the one term of `a` (or `b`) distributed over the other's terms, when
    /// that cancels a factor of some term: `u.*(v./u - w)` → `v - u.*w` (the softmax
    /// cross-entropy's gradient). Otherwise `None`, and the sum stays whole. The result has
    /// as many terms as the sum.
    fn distribute_hadamard_where_it_cancels(
        &mut self,
        a: &Poly,
        b: &Poly,
        shape: Shape,
    ) -> Option<Poly> {
        let (one, sum) = match (a.terms.len(), b.terms.len()) {
            (1, n) if n >= 2 => (a, b),
            (n, 1) if n >= 2 => (b, a),
            _ => return None,
        };
        let single = self.build_chain(&one.terms[0].chain, shape);
        let mut single_factors = Vec::new();
        self.elementwise_factors(single, 1.0, &mut single_factors);
        let cancels = |me: &mut Self, t: &Term| {
            let node = me.build_chain(&t.chain, shape);
            let mut factors = Vec::new();
            me.elementwise_factors(node, 1.0, &mut factors);
            factors_cancel(&single_factors, &factors)
        };
        if !sum.terms.iter().any(|t| cancels(self, t)) {
            return None;
        }
        Some(self.each_term(sum, shape, |me, t| me.hadamard(one.clone(), t)))
    }

    /// The element-wise factors of the row vector `row`, each as the column it transposes
    /// (`y'./exp(x')` → `[(y, 1), (exp(x), -1)]`); `None` when some factor is not a transpose,
    /// a function of one, or ones.
    fn row_as_column_factors(&mut self, row: Id) -> Option<Vec<(Id, f64)>> {
        let mut factors = Vec::new();
        self.elementwise_factors(row, 1.0, &mut factors);
        factors
            .into_iter()
            .map(|(id, e)| self.column_of(id).map(|c| (c, e)))
            .collect()
    }

    /// The column whose transpose `row` is, when `row` is written as a transpose, a function
    /// of one, or ones.
    fn column_of(&mut self, row: Id) -> Option<Id> {
        match self.g.node(row) {
            Node::Transpose(z) => Some(z),
            Node::Map(func, z) => {
                let column = self.column_of(z)?;
                Some(self.g.push(Node::Map(func, column)))
            }
            Node::Fill(v, shape) => Some(self.g.fill(v.get(), shape.transposed())),
            _ => None,
        }
    }

    /// The poly of a node built from unit operands, without recursing into it again.
    fn poly_of_unit(&mut self, node: Id) -> Poly {
        match self.g.node(node) {
            Node::Hadamard(..) | Node::ElemDiv(..) | Node::ElemPow(..) => self.atom(node),
            _ => self.poly(node),
        }
    }

    fn is_ones(&self, id: Id) -> bool {
        matches!(self.g.node(id), Node::Fill(c, _) if c.get() == 1.0)
    }

    /// The element-wise product of `parts` raised to their exponents (`x.*y` is `[(x, 1),
    /// (y, 1)]`, `x./y` is `[(x, 1), (y, -1)]`), as one node: the factors of every part
    /// (through `.*`, `./` and `.^` by a number) with their exponents added, so `x.*log(x)`
    /// by `x` gives `x./x = vector(1)` and `x.^3./x` gives `x.^2`; then the factors with
    /// positive exponents over those with negative ones, each product in handle order.
    /// Cancelling is exact wherever the operands are finite and nonzero, as in any algebra
    /// system.
    fn elementwise_monomial(&mut self, parts: &[(Id, f64)], shape: Shape) -> Id {
        let mut factors: Vec<(Id, f64)> = Vec::new();
        for &(id, exponent) in parts {
            self.elementwise_factors(id, exponent, &mut factors);
        }
        let merged = self.logistic_powers_without_overflow(merge_powers(factors), shape);
        let product = |g: &mut Graph, sign: f64| {
            let mut acc: Option<Id> = None;
            for &(base, exponent) in merged.iter().filter(|f| f.1 * sign > 0.0) {
                let e = exponent * sign;
                let f = if e == 1.0 {
                    base
                } else {
                    let c = g.constant(e);
                    g.push(Node::ElemPow(base, c))
                };
                acc = Some(match acc {
                    None => f,
                    Some(a) if a <= f => g.push(Node::Hadamard(a, f)),
                    Some(a) => g.push(Node::Hadamard(f, a)),
                });
            }
            acc
        };
        let numerator = product(self.g, 1.0);
        let denominator = product(self.g, -1.0);
        match (numerator, denominator) {
            (Some(n), None) => n,
            (n, Some(d)) => {
                let n = n.unwrap_or_else(|| self.g.fill(1.0, shape));
                self.g.push(Node::ElemDiv(n, d))
            }
            (None, None) => self.g.fill(1.0, shape),
        }
    }

    /// Factors `exp(u)^p` and `(exp(u)+1)^-q` with `0 < p <= q` (either order of the sum) as
    /// `(exp(-u)+1)^-p` and `(exp(u)+1)^-(q-p)`: the same value, and no inf/inf where
    /// `exp(u)` overflows (float32 past u = 88). The logistic Hessian's
    /// `exp(z)./(exp(z)+1).^2` becomes `1./((exp(-z)+1).*(exp(z)+1))`, which is 0 there, not
    /// NaN; with `p = q = 1`, the logistic gradient's `exp(u)./(exp(u)+1)` becomes
    /// `1./(exp(-u)+1)`. `factors` are sorted by handle with no repeats, and so is the result.
    fn logistic_powers_without_overflow(
        &mut self,
        mut factors: Vec<(Id, f64)>,
        shape: Shape,
    ) -> Vec<(Id, f64)> {
        let mut changed = false;
        for i in 0..factors.len() {
            let (e, p) = factors[i];
            let Node::Map(Func::Exp, u) = self.g.node(e) else {
                continue;
            };
            if p <= 0.0 {
                continue;
            }
            let sum = factors.iter().position(|&(d, q)| {
                -q >= p
                    && matches!(self.g.node(d), Node::Add(x, y)
                        if (x == e && self.is_ones(y)) || (y == e && self.is_ones(x)))
            });
            let Some(j) = sum else {
                continue;
            };
            let mut minus_u = self.poly(u);
            scale_poly(&mut minus_u, -1.0);
            let flipped = self.map(Func::Exp, minus_u);
            let ones = self.ones(shape);
            let denominator = self.add(ones, flipped);
            let denominator = self.build(&denominator);
            factors[i] = (denominator, -p);
            factors[j].1 += p;
            changed = true;
        }
        if changed {
            merge_powers(factors)
        } else {
            factors
        }
    }

    /// Appends the factors of the unit node `id`, raised to `exponent`, to `out`.
    fn elementwise_factors(&self, id: Id, exponent: f64, out: &mut Vec<(Id, f64)>) {
        match self.g.node(id) {
            Node::Fill(c, _) if c.get() == 1.0 => {}
            Node::Hadamard(x, y) => {
                self.elementwise_factors(x, exponent, out);
                self.elementwise_factors(y, exponent, out);
            }
            Node::ElemDiv(n, d) => {
                self.elementwise_factors(n, exponent, out);
                self.elementwise_factors(d, -exponent, out);
            }
            Node::ElemPow(x, c) => match self.g.node(c) {
                Node::Const(k) => self.elementwise_factors(x, exponent * k.get(), out),
                _ => out.push((id, exponent)),
            },
            _ => out.push((id, exponent)),
        }
    }

    fn elem_div(&mut self, a: Poly, b: Poly) -> Poly {
        if b.shape.is_scalar() {
            let inv = self.pow_scalar(b, -1.0);
            return self.mul(a, inv);
        }
        let shape = a.shape;
        if a.terms.is_empty() {
            return Poly::zero(shape);
        }
        let ta = self.as_term(a);
        let tb = self.as_term(b);
        let coef = ta.coef / tb.coef;
        let inverted: Vec<(Id, Num)> = tb
            .scalars
            .iter()
            .map(|&(s, e)| (s, Num::new(-e.get())))
            .collect();
        let scalars = merge_scalars(&ta.scalars, &inverted);
        let na = self.build_chain(&ta.chain, shape);
        let nb = self.build_chain(&tb.chain, shape);
        let node = self.elementwise_monomial(&[(na, 1.0), (nb, -1.0)], shape);
        let mut p = self.poly_of_unit(node);
        times(&mut p, coef, &scalars);
        p
    }

    fn elem_pow(&mut self, a: Poly, b: Poly, shape: Shape) -> Poly {
        if a.shape.is_scalar() && b.shape.is_scalar() {
            return match b.constant() {
                Some(c) => self.pow_scalar(a, c),
                None => {
                    let (na, nb) = (self.build(&a), self.build(&b));
                    let p = self.g.pow(na, nb);
                    self.atom(p)
                }
            };
        }
        if let Some(c) = b.constant().filter(|_| b.shape.is_scalar()) {
            if c == 1.0 {
                return a;
            }
            if c == 0.0 {
                return self.ones(shape);
            }
            // 0.^c = 0 for c > 0 (`vector(0).^2` is the zero vector).
            if c > 0.0 && a.terms.is_empty() {
                return Poly::zero(shape);
            }
            if c.fract() == 0.0 && a.terms.len() == 1 {
                // (k*s*A).^c = k^c * s^c * A.^c for an integer c.
                let t = self.as_term(a);
                let na = self.build_chain(&t.chain, shape);
                let nc = self.g.constant(c);
                let node = if self.is_ones(na) {
                    na
                } else {
                    self.g.push(Node::ElemPow(na, nc))
                };
                let mut p = self.poly_of_unit(node);
                for term in &mut p.terms {
                    term.coef = product(term.coef, power(t.coef, c));
                    let powered: Vec<(Id, Num)> = t
                        .scalars
                        .iter()
                        .map(|&(s, e)| (s, Num::new(e.get() * c)))
                        .collect();
                    term.scalars = merge_scalars(&term.scalars, &powered);
                }
                return p;
            }
        }
        let na = self.build(&a);
        let nb = self.build(&b);
        let node = self.g.push(Node::ElemPow(na, nb));
        self.atom(node)
    }

    fn map(&mut self, f: Func, p: Poly) -> Poly {
        if let Some(c) = p.constant() {
            let v = f.apply(c);
            // `exp` of a finite number is never 0 in exact arithmetic: 0 or a subnormal is an
            // underflow, as for products.
            if f == Func::Exp && c.is_finite() && v.abs() < f64::MIN_POSITIVE {
                UNDERFLOW.with(|u| u.set(u.get().or(Some(Underflow::Exp(c)))));
            }
            // `exp(0)` is 1, but `log(2)` stays `log(2)`.
            if folds(v) {
                return self.constant(v);
            }
            let arg = self.g.constant(c);
            let node = self.g.map(f, arg);
            return self.atom(node);
        }
        // A constant matrix (zero, or c times ones) maps to a constant matrix.
        let fill_value = match p.terms.as_slice() {
            [] => Some(0.0),
            [t] if t.scalars.is_empty()
                && t.chain.len() == 1
                && t.chain[0].power == 1
                && self.is_ones(t.chain[0].base) =>
            {
                Some(t.coef)
            }
            _ => None,
        };
        if let Some(c) = fill_value {
            let mut ones = self.ones(p.shape);
            let v = f.apply(c);
            if folds(v) {
                scale_poly(&mut ones, v);
                return ones;
            }
            // `log(2*vector(1))` is `log(2)*vector(1)`, the scalar kept as written.
            let scalar = self.map(f, self.constant(c));
            return self.mul(scalar, ones);
        }
        let arg = self.build(&p);
        let node = self.g.map(f, arg);
        self.atom(node)
    }

    // ----- reductions -----

    /// `sum` or `tr` of a poly: linear, so term by term.
    fn linear_scalar(&mut self, p: Poly, reduction: Reduction) -> Poly {
        let mut out = Poly::zero(Shape::SCALAR);
        for term in p.terms {
            let reduced = self.reduce_chain(&term.chain, p.shape, reduction);
            let piece = Poly::single(
                Shape::SCALAR,
                Term {
                    coef: term.coef,
                    scalars: term.scalars,
                    chain: vec![],
                },
            );
            let piece = self.mul(piece, reduced);
            out = self.add(out, piece);
        }
        out
    }

    fn reduce_chain(&mut self, chain: &[Factor], shape: Shape, reduction: Reduction) -> Poly {
        let as_poly = Poly::single(
            shape,
            Term {
                chain: chain.to_vec(),
                ..Term::unit()
            },
        );
        let mut candidates = vec![chain.to_vec()];
        if let Some(t) = self.transpose_chain_only(as_poly) {
            candidates.push(t);
        }
        if reduction == Reduction::Trace {
            let mut rotations = Vec::new();
            for c in &candidates {
                for r in 1..c.len() {
                    let mut rotated = c[r..].to_vec();
                    rotated.extend_from_slice(&c[..r]);
                    // Rotation may bring equal atoms together: merge them.
                    let mut merged = Vec::new();
                    for f in rotated {
                        push_factor(&mut merged, f);
                    }
                    rotations.push(merged);
                }
            }
            candidates.extend(rotations);
        }
        let mut best: Option<((bool, usize, Key), Poly)> = None;
        for c in candidates {
            let first_is_row = c
                .first()
                .is_some_and(|f| self.shape(f.base).rows == Dim::One);
            let (node, is_scalar) = if reduction == Reduction::Trace && first_is_row {
                (self.scalar_chain_atom(c), true)
            } else {
                let inner_shape = match (c.first(), c.last()) {
                    (Some(f), Some(l)) => {
                        Shape::new(self.shape(f.base).rows, self.shape(l.base).cols)
                    }
                    _ => shape,
                };
                let inner = self.build_chain(&c, inner_shape);
                let node = match reduction {
                    Reduction::Trace => self.g.trace(inner),
                    Reduction::Sum => self.g.sum(inner),
                };
                (node, false)
            };
            let key = (!is_scalar, self.count_transposes(node), self.key(node));
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                let poly = self.atom(node);
                best = Some((key, poly));
            }
        }
        best.map(|(_, p)| p)
            .unwrap_or_else(|| Poly::zero(Shape::SCALAR))
    }

    fn norm(&mut self, p: Poly, norm1: bool) -> Poly {
        if p.terms.is_empty() {
            return Poly::zero(Shape::SCALAR);
        }
        let mut coef = 1.0;
        let mut inner = p;
        if let [t] = inner.terms.as_mut_slice() {
            coef = t.coef.abs();
            t.coef = t.coef.signum();
        }
        let inner = self.orient_single(inner);
        let arg = self.build(&inner);
        let node = if norm1 {
            self.g.push(Node::Norm1(arg))
        } else {
            self.g.push(Node::Norm2(arg))
        };
        let mut out = self.atom(node);
        scale_poly(&mut out, coef);
        out
    }

    /// `f(c*s*A) = c*s*f(A)` for the linear `diag` and its inverse.
    fn pull_out(&mut self, p: Poly, shape: Shape, f: impl Fn(&mut Graph, Id) -> Id) -> Poly {
        if p.terms.is_empty() {
            return Poly::zero(shape);
        }
        let t = self.as_term(p.clone());
        let unit = Poly::single(
            p.shape,
            Term {
                chain: t.chain,
                ..Term::unit()
            },
        );
        let arg = self.build(&unit);
        let node = f(self.g, arg);
        let mut out = match self.g.node(node) {
            // The identity is the empty chain, not an atom, so products drop it.
            Node::Eye(_) => Poly::single(shape, Term::unit()),
            _ => self.atom(node),
        };
        times(&mut out, t.coef, &t.scalars);
        out
    }

    // ----- rebuilding nodes -----

    fn build(&mut self, p: &Poly) -> Id {
        match p.terms.len() {
            0 => self.g.zero(p.shape),
            1 => self.build_term(&p.terms[0], p.shape),
            _ => match self.factor_out(p) {
                Some(f) => {
                    let term = self.factored_term(f);
                    self.build_term(&term, p.shape)
                }
                None => match self.group_partially(p) {
                    Some(grouped) => self.build_sum(&grouped),
                    None => self.build_sum(p),
                },
            },
        }
    }

    /// Merges the terms that share a last (else a first) factor, when no factor is shared
    /// by all: `A*x*x' + A'*x*x' + s*eye` → `(A+A')*x*x' + s*eye`.
    fn group_partially(&mut self, p: &Poly) -> Option<Poly> {
        self.group_by_ends(p, &[true, false])
    }

    /// A sum inside a product, its terms that share a last factor merged
    /// (`A/s + b*r'*A - A*x*r'*A` → `A/s + (b-A*x)*r'*A`). Only last factors: a Hessian's
    /// sums are simplified once with the direction `u` it is read off by as their last
    /// factor, and grouping there by first factors would split what shares that `u`.
    fn build_inner_sum(&mut self, p: &Poly) -> Id {
        match self.group_by_ends(p, &[true]) {
            Some(grouped) => self.build_sum(&grouped),
            None => self.build_sum(p),
        }
    }

    /// [`Self::group_partially`] by last factors (`true`) or first ones (`false`), tried in
    /// the order given.
    fn group_by_ends(&mut self, p: &Poly, ends: &[bool]) -> Option<Poly> {
        for &from_end in ends {
            let mut groups: Vec<(Factor, Vec<usize>)> = Vec::new();
            for (i, t) in p.terms.iter().enumerate() {
                if t.chain.len() < 2 {
                    continue;
                }
                let key = if from_end {
                    t.chain[t.chain.len() - 1]
                } else {
                    t.chain[0]
                };
                match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, members)) => members.push(i),
                    None => groups.push((key, vec![i])),
                }
            }
            groups.retain(|(_, members)| members.len() >= 2);
            if groups.is_empty() {
                continue;
            }
            let mut grouped = vec![false; p.terms.len()];
            let mut terms = Vec::new();
            for (_, members) in groups {
                let sub = Poly {
                    shape: p.shape,
                    terms: members.iter().map(|&i| p.terms[i].clone()).collect(),
                };
                members.iter().for_each(|&i| grouped[i] = true);
                terms.push(self.as_term(sub));
            }
            terms.extend(
                p.terms
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !grouped[*i])
                    .map(|(_, t)| t.clone()),
            );
            return Some(Poly {
                shape: p.shape,
                terms,
            });
        }
        None
    }

    fn build_sum(&mut self, p: &Poly) -> Id {
        if p.terms.len() < 2 {
            return self.build(p);
        }
        let mut keyed = Vec::new();
        for t in &p.terms {
            let positive = Term {
                coef: t.coef.abs(),
                ..t.clone()
            };
            let unit = Term {
                coef: 1.0,
                ..t.clone()
            };
            let node = self.build_term(&positive, p.shape);
            let unit_node = self.build_term(&unit, p.shape);
            let key = (t.coef < 0.0, self.key(unit_node));
            keyed.push((key, node, t.coef < 0.0));
        }
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        let mut acc: Option<Id> = None;
        for (_, node, negative) in keyed {
            acc = Some(match (acc, negative) {
                (None, false) => node,
                (None, true) => self.g.neg(node),
                (Some(a), false) => self.g.add(a, node),
                (Some(a), true) => self.g.sub(a, node),
            });
        }
        acc.unwrap_or_else(|| self.g.zero(p.shape))
    }

    fn build_term(&mut self, t: &Term, shape: Shape) -> Id {
        let chain_shape = shape;
        let chain = if t.chain.is_empty() {
            if shape.is_scalar() {
                None
            } else {
                Some(self.g.eye(shape.rows))
            }
        } else {
            Some(self.build_chain(&t.chain, chain_shape))
        };
        let mut numerators = Vec::new();
        let mut denominators = Vec::new();
        for &(s, e) in &t.scalars {
            let e = e.get();
            let target = if e > 0.0 {
                &mut numerators
            } else {
                &mut denominators
            };
            target.push((s, e.abs()));
        }
        let mut acc: Option<Id> = None;
        if t.coef.abs() != 1.0 || (numerators.is_empty() && chain.is_none()) {
            acc = Some(self.g.constant(t.coef.abs()));
        }
        for node in self.powers_sorted(numerators) {
            acc = Some(match acc {
                Some(a) => self.g.mul(a, node),
                None => node,
            });
        }
        let mut result = match (acc, chain) {
            (Some(a), Some(c)) => self.g.mul(a, c),
            (None, Some(c)) => c,
            (Some(a), None) => a,
            (None, None) => self.g.constant(1.0),
        };
        let dens = self.powers_sorted(denominators);
        if let Some((&first, rest)) = dens.split_first() {
            let den = rest.iter().fold(first, |a, &b| self.g.mul(a, b));
            result = self.g.div(result, den);
        }
        if t.coef < 0.0 {
            result = self.g.neg(result);
        }
        result
    }

    /// Scalar powers as nodes, in the order of their printed text.
    fn powers_sorted(&mut self, powers: Vec<(Id, f64)>) -> Vec<Id> {
        let mut nodes: Vec<(Key, Id)> = Vec::new();
        for (s, e) in powers {
            let node = if e == 1.0 {
                s
            } else {
                let c = self.g.constant(e);
                self.g.pow(s, c)
            };
            let key = self.key(node);
            nodes.push((key, node));
        }
        nodes.sort();
        nodes.into_iter().map(|(_, n)| n).collect()
    }

    fn build_chain(&mut self, chain: &[Factor], shape: Shape) -> Id {
        if chain.is_empty() {
            return self.g.eye(shape.rows);
        }
        let mut acc: Option<Id> = None;
        for f in chain {
            let node = match f.power {
                1 => f.base,
                p if p > 1 => self.g.mat_pow(f.base, p as u32),
                -1 => self.g.inv(f.base),
                p => {
                    let inv = self.g.inv(f.base);
                    self.g.mat_pow(inv, (-p) as u32)
                }
            };
            acc = Some(match acc {
                Some(a) => self.g.mul(a, node),
                None => node,
            });
        }
        acc.unwrap_or_else(|| self.g.eye(shape.rows))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Reduction {
    Sum,
    Trace,
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
            Some(entry) => entry.1 = Num::new(entry.1.get() + e.get()),
            None => out.push((s, e)),
        }
    }
    out.retain(|(_, e)| e.get() != 0.0);
    out.sort();
    out
}

/// `a + b`, exact for fractions with small denominators: float64's `2/3 - 1` is
/// -0.33333333333333337, one rounding off `-1/3`, which then neither prints as `-1/3` nor
/// equals it. When both are `p/q` with `q` at most 16 ([`crate::print::fraction`]), the sum is
/// the one rounding of the exact rational; otherwise the float64 sum.
fn exact_add(a: f64, b: f64) -> f64 {
    match (crate::print::fraction(a), crate::print::fraction(b)) {
        (Some((pa, qa)), Some((pb, qb))) if (qa, qb) != (1, 1) => {
            let numerator = pa.checked_mul(qb).zip(pb.checked_mul(qa));
            match numerator.and_then(|(x, y)| x.checked_add(y)) {
                Some(n) if n.unsigned_abs() < 1 << 53 => n as f64 / (qa * qb) as f64,
                _ => a + b,
            }
        }
        _ => a + b,
    }
}

/// Element-wise factors with the exponents of each base added up, sorted by handle; those
/// whose exponents cancel to 0 are left out.
fn merge_powers(mut factors: Vec<(Id, f64)>) -> Vec<(Id, f64)> {
    factors.sort_by_key(|&(id, _)| id);
    let mut merged: Vec<(Id, f64)> = Vec::new();
    for (id, exponent) in factors {
        match merged.last_mut() {
            Some(last) if last.0 == id => last.1 = exact_add(last.1, exponent),
            _ => merged.push((id, exponent)),
        }
    }
    merged.retain(|&(_, exponent)| exponent != 0.0);
    merged
}

/// Whether multiplying element-wise factors `a` by `b` cancels one that one side divides by
/// and the other multiplies by (`u` and `v./u`).
fn factors_cancel(a: &[(Id, f64)], b: &[(Id, f64)]) -> bool {
    let power =
        |fs: &[(Id, f64)], id: Id| -> f64 { fs.iter().filter(|f| f.0 == id).map(|f| f.1).sum() };
    a.iter().any(|&(id, _)| {
        let (pa, pb) = (power(a, id), power(b, id));
        pa != 0.0 && pb != 0.0 && pa + pb == 0.0
    })
}

/// What makes terms like: their scalars and their chain.
type TermKey = (Vec<(Id, Num)>, Vec<Factor>);

/// Adds up like terms (same scalars and chain); drops zero terms; keeps first-seen order.
fn collect(terms: Vec<Term>) -> Vec<Term> {
    let mut out: Vec<Term> = Vec::new();
    // Where each distinct (scalars, chain) went in `out`: linear, not quadratic, in the terms.
    let mut at: HashMap<TermKey, usize> = HashMap::new();
    for t in terms {
        match at.entry((t.scalars.clone(), t.chain.clone())) {
            Entry::Occupied(e) => {
                let o = &mut out[*e.get()];
                o.coef = exact_add(o.coef, t.coef);
            }
            Entry::Vacant(e) => {
                e.insert(out.len());
                out.push(t);
            }
        }
    }
    out.retain(|t| t.coef != 0.0);
    out
}

/// What every coefficient shares: their common magnitude, or the gcd of integers, with the
/// sign when all are negative; 1 when nothing is shared.
fn common_coefficient(coefs: &[f64]) -> f64 {
    let all_negative = coefs.iter().all(|&c| c < 0.0);
    let sign = if all_negative { -1.0 } else { 1.0 };
    let first = coefs[0].abs();
    if coefs.iter().all(|c| c.abs() == first) {
        return sign * first;
    }
    if coefs.iter().all(|c| c.fract() == 0.0 && c.abs() < 1e15) {
        let g = coefs.iter().fold(0u64, |acc, &c| gcd(acc, c.abs() as u64));
        if g > 1 {
            return sign * g as f64;
        }
    }
    sign
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
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
