//! Products and chains: multiplying polys, merging diagonals and ones inside a chain, a
//! 1×1 segment of a chain as a scalar.

use super::*;

impl Simplifier<'_> {
    pub(super) fn mul(&mut self, a: Poly, b: Poly) -> Poly {
        let shape = if a.shape.is_scalar() {
            b.shape
        } else if b.shape.is_scalar() {
            a.shape
        } else {
            Shape::new(a.shape.rows, b.shape.cols)
        };
        if a.terms.is_empty() || b.terms.is_empty() {
            apply(&ZERO_ANNIHILATES);
            return Poly::zero(shape);
        }
        if a.shape.is_scalar() || b.shape.is_scalar() {
            let (s, m) = if a.shape.is_scalar() { (a, b) } else { (b, a) };
            let (coef, scalars) = self.as_scalar_factor(s);
            if m.terms.len() > MAX_DISTRIBUTED_TERMS && !scalars.is_empty() {
                apply(&SCALAR_TIMES_A_LONG_SUM);
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
            if m.terms.len() > 1 {
                apply(&SCALAR_DISTRIBUTES);
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
    pub(super) fn distribute_diagonal_meeting_ones(
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
        apply(&DIAGONAL_DISTRIBUTES_WHERE_IT_MEETS_ONES);
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
    pub(super) fn each_term(
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
    pub(super) fn push_factor_merging_diagonals(&mut self, chain: &mut Vec<Factor>, f: Factor) {
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
                        apply(&INNER_PRODUCT_CANCELS_A_QUOTIENT);
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
                    apply(&DIAGONAL_TIMES_ONES);
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
                apply(&DIAGONALS_MERGE);
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
    pub(super) fn normalize_term(&mut self, mut term: Term, shape: Shape) -> Term {
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
            if i > 0 || j + 1 < term.chain.len() {
                apply(&INNER_PRODUCT_IS_A_SCALAR);
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
    pub(super) fn scalar_chain_atom(&mut self, chain: Vec<Factor>) -> Id {
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
                let best = self.better(direct, flipped);
                if best != direct {
                    apply(&SCALAR_ORIENTATION);
                }
                best
            }
            None => direct,
        }
    }

    /// `vector(1)'*u` and `u'*vector(1)` as `sum(u)`, the atom a written `sum(u)` gives, so
    /// that the two cancel (`1/sum(e) - (vector(1)'*e)/sum(e)^2` is 0); `None` for other
    /// chains.
    pub(super) fn sum_of_ones_product(&mut self, chain: &[Factor]) -> Option<Id> {
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
                [(atom, e)] if e.get() == 1.0 => {
                    apply(&ONES_INNER_PRODUCT_IS_A_SUM);
                    Some(*atom)
                }
                _ => None,
            },
            _ => None,
        }
    }
}
