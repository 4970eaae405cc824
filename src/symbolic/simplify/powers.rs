//! Powers and inverses: a scalar to a constant, a matrix to an integer, the inverse of a
//! product.

use super::*;

impl Simplifier<'_> {
    /// A scalar raised to a constant.
    pub(super) fn pow_scalar(&mut self, p: Poly, c: f64) -> Poly {
        if c == 1.0 || c == 0.0 {
            apply(&SCALAR_POWER_FOLDS);
        }
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
                apply(&SCALAR_POWER_FOLDS);
                return self.constant(value);
            }
            let (base, exponent) = (self.g.constant(v), self.g.constant(c));
            let node = self.g.pow(base, exponent);
            return self.atom(node);
        }
        let integer = c.fract() == 0.0;
        if let [t] = p.terms.as_slice() {
            // (k*a*b)^c = k^c*a^c*b^c for an integer c; (k*a)^p = k^p*a^p for k > 0.
            let positive_single =
                t.coef > 0.0 && t.scalars.len() == 1 && t.scalars[0].1.get() == 1.0;
            if integer || positive_single {
                if t.coef != 1.0 || t.scalars.len() > 1 {
                    apply(&POWER_OF_A_SCALAR_PRODUCT);
                }
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
    pub(super) fn pow_int(&mut self, p: Poly, k: i32) -> Poly {
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
        apply(&MATRIX_POWER_IS_A_PRODUCT);
        let mut out = Poly::single(p.shape, Term::unit());
        for _ in 0..k {
            out = self.mul(out, p.clone());
        }
        out
    }

    pub(super) fn invert(&mut self, p: Poly) -> Poly {
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
        if (all_square && t.chain.len() > 1) || t.coef != 1.0 || !t.scalars.is_empty() {
            apply(&INVERSE_OF_A_PRODUCT);
        }
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
}
