//! Sums and collection: adding polys, collecting like terms, spelling out a sum where that
//! collects, pulling out what a sum's terms share, and a sum as one factor.

use super::*;

impl Simplifier<'_> {
    /// The sum `id` = `a + b` of `shape`; a chain of more than [`LONG_SUM`] sums in one pass
    /// (level by level, every prefix would be collected and memoized again: quadratic in the
    /// chain's length).
    pub(super) fn sum(&mut self, id: Id, a: Id, b: Id, shape: Shape) -> Poly {
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
    pub(super) fn long_sum(&self, id: Id) -> Option<Vec<Id>> {
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

    pub(super) fn add(&mut self, a: Poly, b: Poly) -> Poly {
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
    pub(super) fn flatten_sums_that_collect(&mut self, terms: Vec<Term>) -> Vec<Term> {
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
            apply(&SUM_SPELLED_OUT_TO_COLLECT);
            flat
        } else {
            terms
        }
    }

    /// The sum `t` is, but for its number and scalars: its one matrix factor, or for a
    /// scalar its one scalar factor, when that is a sum to the first power.
    pub(super) fn lone_sum(&self, t: &Term) -> Option<Id> {
        let base = match (t.chain.as_slice(), t.scalars.as_slice()) {
            ([f], _) if f.power == 1 => f.base,
            ([], [(s, e)]) if e.get() == 1.0 => *s,
            _ => return None,
        };
        matches!(self.g.node(base), Node::Add(..)).then_some(base)
    }

    /// A scalar poly as a coefficient and scalar factors (a sum becomes one factor).
    pub(super) fn as_scalar_factor(&mut self, s: Poly) -> (f64, Vec<(Id, Num)>) {
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
    pub(super) fn as_term(&mut self, p: Poly) -> Term {
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
    pub(super) fn factored_term(&mut self, f: Factored) -> Term {
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
    pub(super) fn sum_factor(&mut self, p: &Poly) -> (f64, Id) {
        let sum = self.build_inner_sum(p);
        if self.g.is_written(sum) {
            return (1.0, sum);
        }
        let mut negated = p.clone();
        scale_poly(&mut negated, -1.0);
        let other = self.build_inner_sum(&negated);
        if self.g.is_written(other) {
            apply(&NEGATED_SUM_KEEPS_ITS_ORIENTATION);
            (-1.0, other)
        } else {
            (1.0, sum)
        }
    }

    /// Pulls out what every term of a sum shares.
    pub(super) fn factor_out(&mut self, p: &Poly) -> Option<Factored> {
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
        apply(&COMMON_FACTOR_PULLED_OUT);
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
}

/// What makes terms like: their scalars and their chain.
pub(super) type TermKey = (Vec<(Id, Num)>, Vec<Factor>);

/// Adds up like terms (same scalars and chain); drops zero terms; keeps first-seen order.
pub(super) fn collect(terms: Vec<Term>) -> Vec<Term> {
    let mut out: Vec<Term> = Vec::new();
    // Where each distinct (scalars, chain) went in `out`: linear, not quadratic, in the terms.
    let mut at: HashMap<TermKey, usize> = HashMap::new();
    for t in terms {
        match at.entry((t.scalars.clone(), t.chain.clone())) {
            Entry::Occupied(e) => {
                apply(&LIKE_TERMS_COLLECT);
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

/// `a + b`, exact for fractions with small denominators: float64's `2/3 - 1` is
/// -0.33333333333333337, one rounding off `-1/3`, which then neither prints as `-1/3` nor
/// equals it. When both are `p/q` with `q` at most 16 ([`crate::print::fraction`]), the sum is
/// the one rounding of the exact rational; otherwise the float64 sum.
pub(super) fn exact_add(a: f64, b: f64) -> f64 {
    match (crate::print::fraction(a), crate::print::fraction(b)) {
        (Some((pa, qa)), Some((pb, qb))) if (qa, qb) != (1, 1) => {
            let numerator = pa.checked_mul(qb).zip(pb.checked_mul(qa));
            match numerator.and_then(|(x, y)| x.checked_add(y)) {
                Some(n) if n.unsigned_abs() < 1 << 53 => {
                    apply(&EXACT_FRACTIONS);
                    n as f64 / (qa * qb) as f64
                }
                _ => a + b,
            }
        }
        _ => a + b,
    }
}

/// What every coefficient shares: their common magnitude, or the gcd of integers, with the
/// sign when all are negative; 1 when nothing is shared.
pub(super) fn common_coefficient(coefs: &[f64]) -> f64 {
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

pub(super) fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}
