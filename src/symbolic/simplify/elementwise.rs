//! Element-wise algebra: `.*`, `./`, `.^` and the functions, as monomials of element-wise
//! factors whose exponents add and cancel.

use super::*;

impl Simplifier<'_> {
    pub(super) fn hadamard(&mut self, a: Poly, b: Poly) -> Poly {
        if a.shape.is_scalar() || b.shape.is_scalar() {
            return self.mul(a, b);
        }
        let shape = a.shape;
        if a.terms.is_empty() || b.terms.is_empty() {
            apply(&ZERO_ANNIHILATES);
            return Poly::zero(shape);
        }
        if let Some(p) = self.distribute_hadamard_where_it_cancels(&a, &b, shape) {
            return p;
        }
        let ta = self.as_term(a);
        let tb = self.as_term(b);
        let coef = product(ta.coef, tb.coef);
        let scalars = merge_scalars(&ta.scalars, &tb.scalars);
        if coef != 1.0 || !scalars.is_empty() {
            apply(&ELEMENT_WISE_COEFFICIENTS_OUT);
        }
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
    pub(super) fn distribute_hadamard_where_it_cancels(
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
        apply(&ELEMENT_WISE_PRODUCT_DISTRIBUTES_WHERE_IT_CANCELS);
        Some(self.each_term(sum, shape, |me, t| me.hadamard(one.clone(), t)))
    }

    /// The element-wise factors of the row vector `row`, each as the column it transposes
    /// (`y'./exp(x')` → `[(y, 1), (exp(x), -1)]`); `None` when some factor is not a transpose,
    /// a function of one, or ones.
    pub(super) fn row_as_column_factors(&mut self, row: Id) -> Option<Vec<(Id, f64)>> {
        let mut factors = Vec::new();
        self.elementwise_factors(row, 1.0, &mut factors);
        factors
            .into_iter()
            .map(|(id, e)| self.column_of(id).map(|c| (c, e)))
            .collect()
    }

    /// The column whose transpose `row` is, when `row` is written as a transpose, a function
    /// of one, or ones.
    pub(super) fn column_of(&mut self, row: Id) -> Option<Id> {
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
    pub(super) fn poly_of_unit(&mut self, node: Id) -> Poly {
        match self.g.node(node) {
            Node::Hadamard(..) | Node::ElemDiv(..) | Node::ElemPow(..) => self.atom(node),
            _ => self.poly(node),
        }
    }

    pub(super) fn is_ones(&self, id: Id) -> bool {
        matches!(self.g.node(id), Node::Fill(c, _) if c.get() == 1.0)
    }

    /// The element-wise product of `parts` raised to their exponents (`x.*y` is `[(x, 1),
    /// (y, 1)]`, `x./y` is `[(x, 1), (y, -1)]`), as one node: the factors of every part
    /// (through `.*`, `./` and `.^` by a number) with their exponents added, so `x.*log(x)`
    /// by `x` gives `x./x = vector(1)` and `x.^3./x` gives `x.^2`; then the factors with
    /// positive exponents over those with negative ones, each product in handle order.
    /// Cancelling is exact wherever the operands are finite and nonzero, as in any algebra
    /// system.
    pub(super) fn elementwise_monomial(&mut self, parts: &[(Id, f64)], shape: Shape) -> Id {
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
    pub(super) fn logistic_powers_without_overflow(
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
            apply(&LOGISTIC_WITHOUT_OVERFLOW);
            changed = true;
        }
        if changed {
            merge_powers(factors)
        } else {
            factors
        }
    }

    /// Appends the factors of the unit node `id`, raised to `exponent`, to `out`.
    pub(super) fn elementwise_factors(&self, id: Id, exponent: f64, out: &mut Vec<(Id, f64)>) {
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

    pub(super) fn elem_div(&mut self, a: Poly, b: Poly) -> Poly {
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
        if coef != 1.0 || !scalars.is_empty() {
            apply(&ELEMENT_WISE_COEFFICIENTS_OUT);
        }
        let na = self.build_chain(&ta.chain, shape);
        let nb = self.build_chain(&tb.chain, shape);
        let node = self.elementwise_monomial(&[(na, 1.0), (nb, -1.0)], shape);
        let mut p = self.poly_of_unit(node);
        times(&mut p, coef, &scalars);
        p
    }

    pub(super) fn elem_pow(&mut self, a: Poly, b: Poly, shape: Shape) -> Poly {
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
            // 0.^c = 0 for c > 0 (`vector(0).^2` is the zero vector).
            if c == 1.0 || c == 0.0 || (c > 0.0 && a.terms.is_empty()) {
                apply(&ELEMENT_WISE_POWER_BY_ONE_OR_ZERO);
            }
            if c == 1.0 {
                return a;
            }
            if c == 0.0 {
                return self.ones(shape);
            }
            if c > 0.0 && a.terms.is_empty() {
                return Poly::zero(shape);
            }
            if c.fract() == 0.0 && a.terms.len() == 1 {
                // (k*s*A).^c = k^c * s^c * A.^c for an integer c.
                let t = self.as_term(a);
                if t.coef != 1.0 || !t.scalars.is_empty() {
                    apply(&ELEMENT_WISE_POWER_OF_A_TERM);
                }
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

    pub(super) fn map(&mut self, f: Func, p: Poly) -> Poly {
        if let Some(c) = p.constant() {
            let v = f.apply(c);
            // `exp` of a finite number is never 0 in exact arithmetic: 0 or a subnormal is an
            // underflow, as for products.
            if f == Func::Exp && c.is_finite() && v.abs() < f64::MIN_POSITIVE {
                UNDERFLOW.with(|u| u.set(u.get().or(Some(Underflow::Exp(c)))));
            }
            // `exp(0)` is 1, but `log(2)` stays `log(2)`.
            if folds(v) {
                apply(&FUNCTION_OF_A_CONSTANT);
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
            apply(&FUNCTION_OF_A_CONSTANT);
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
}

/// Element-wise factors with the exponents of each base added up, sorted by handle; those
/// whose exponents cancel to 0 are left out.
pub(super) fn merge_powers(mut factors: Vec<(Id, f64)>) -> Vec<(Id, f64)> {
    factors.sort_by_key(|&(id, _)| id);
    let mut merged: Vec<(Id, f64)> = Vec::new();
    for (id, exponent) in factors {
        match merged.last_mut() {
            Some(last) if last.0 == id => {
                apply(&ELEMENT_WISE_POWERS_ADD);
                last.1 = exact_add(last.1, exponent);
            }
            _ => merged.push((id, exponent)),
        }
    }
    merged.retain(|&(_, exponent)| exponent != 0.0);
    merged
}

/// Whether multiplying element-wise factors `a` by `b` cancels one that one side divides by
/// and the other multiplies by (`u` and `v./u`).
pub(super) fn factors_cancel(a: &[(Id, f64)], b: &[(Id, f64)]) -> bool {
    let power =
        |fs: &[(Id, f64)], id: Id| -> f64 { fs.iter().filter(|f| f.0 == id).map(|f| f.1).sum() };
    a.iter().any(|&(id, _)| {
        let (pa, pb) = (power(a, id), power(b, id));
        pa != 0.0 && pb != 0.0 && pa + pb == 0.0
    })
}
