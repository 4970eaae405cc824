//! Reductions: `sum`, `tr`, `det`, `logdet`, norms and the diagonal.

use super::*;

impl Simplifier<'_> {
    /// `det` or (`is_log`) `logdet` of the normal form of `a`: of a scalar, itself (or its
    /// log); `det(A^k)` as `det(A)^k`; else of the orientation that reads best.
    pub(super) fn determinant(&mut self, a: Id, is_log: bool) -> Poly {
        let pa = self.poly(a);
        if pa.shape.is_scalar() {
            apply(&REDUCTION_OF_A_SCALAR);
            return if is_log { self.map(Func::Log, pa) } else { pa };
        }
        // det(A^k) = det(A)^k: exact, and far better conditioned in float32 than
        // the determinant of the power.
        if let (false, [t]) = (is_log, pa.terms.as_slice()) {
            if let ([f], 1.0, true) = (t.chain.as_slice(), t.coef, t.scalars.is_empty()) {
                if f.power != 1 {
                    apply(&DETERMINANT_OF_A_POWER);
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
    pub(super) fn diagonal_part(&mut self, a: Id, shape: Shape) -> Poly {
        let pa = self.poly(a);
        if let [t] = pa.terms.as_slice() {
            if let [f] = t.chain.as_slice() {
                if let (Node::Diag(v), 1) = (self.g.node(f.base), f.power) {
                    apply(&DIAGONAL_OF_A_DIAGONAL_MATRIX);
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
                apply(&DIAGONAL_OF_RANK_ONE);
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
    pub(super) fn diag_of_ones_product(&mut self, p: &Poly, shape: Shape) -> Option<Poly> {
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
        apply(&DIAGONAL_OF_A_PRODUCT_WITH_ONES);
        let ones = self.ones(Shape::new(k, Dim::One));
        Some(self.mul(factor, ones))
    }

    /// `sum` or `tr` of a poly: linear, so term by term.
    pub(super) fn linear_scalar(&mut self, p: Poly, reduction: Reduction) -> Poly {
        let scaled = |t: &Term| t.coef != 1.0 || !t.scalars.is_empty();
        if p.terms.len() > 1 || p.terms.iter().any(scaled) {
            apply(&REDUCTIONS_ARE_LINEAR);
        }
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

    pub(super) fn reduce_chain(
        &mut self,
        chain: &[Factor],
        shape: Shape,
        reduction: Reduction,
    ) -> Poly {
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
        let mut best: Option<((bool, usize, Key), Poly, usize)> = None;
        for (index, c) in candidates.into_iter().enumerate() {
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
            if best.as_ref().is_none_or(|(k, _, _)| key < *k) {
                let poly = self.atom(node);
                best = Some((key, poly, index));
            }
        }
        // The first candidate is the chain as it came; any other is turned or rotated.
        match best {
            Some((_, p, index)) => {
                if index > 0 {
                    apply(match reduction {
                        Reduction::Trace => &TRACE_ROTATION,
                        Reduction::Sum => &ORIENTATION_WHERE_TRANSPOSES_DO_NOT_COUNT,
                    });
                }
                p
            }
            None => Poly::zero(Shape::SCALAR),
        }
    }

    pub(super) fn norm(&mut self, p: Poly, norm1: bool) -> Poly {
        if p.terms.is_empty() {
            return Poly::zero(Shape::SCALAR);
        }
        let mut coef = 1.0;
        let mut inner = p;
        if let [t] = inner.terms.as_mut_slice() {
            if t.coef != 1.0 {
                apply(&LINEAR_FUNCTIONS_PULL_OUT_SCALARS);
            }
            // Every norm is absolutely homogeneous: norm(k*A) = |k|*norm(A), -1 included.
            coef = t.coef.abs();
            t.coef = 1.0;
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
    pub(super) fn pull_out(
        &mut self,
        p: Poly,
        shape: Shape,
        f: impl Fn(&mut Graph, Id) -> Id,
    ) -> Poly {
        if p.terms.is_empty() {
            return Poly::zero(shape);
        }
        let t = self.as_term(p.clone());
        if t.coef != 1.0 || !t.scalars.is_empty() {
            apply(&LINEAR_FUNCTIONS_PULL_OUT_SCALARS);
        }
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
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Reduction {
    Sum,
    Trace,
}
