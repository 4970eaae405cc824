//! Rebuilding nodes: a poly back to graph nodes, with common factors pulled out, terms that
//! share an end grouped, and terms in their printed order.

use super::*;

impl Simplifier<'_> {
    pub(super) fn build(&mut self, p: &Poly) -> Id {
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
    pub(super) fn group_partially(&mut self, p: &Poly) -> Option<Poly> {
        self.group_by_ends(p, &[true, false])
    }

    /// A sum inside a product, its terms that share a last factor merged
    /// (`A/s + b*r'*A - A*x*r'*A` → `A/s + (b-A*x)*r'*A`). Only last factors: a Hessian's
    /// sums are simplified once with the direction `u` it is read off by as their last
    /// factor, and grouping there by first factors would split what shares that `u`.
    pub(super) fn build_inner_sum(&mut self, p: &Poly) -> Id {
        match self.group_by_ends(p, &[true]) {
            Some(grouped) => self.build_sum(&grouped),
            None => self.build_sum(p),
        }
    }

    /// [`Self::group_partially`] by last factors (`true`) or first ones (`false`), tried in
    /// the order given.
    pub(super) fn group_by_ends(&mut self, p: &Poly, ends: &[bool]) -> Option<Poly> {
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
            apply(&TERMS_SHARING_AN_END_GROUPED);
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

    pub(super) fn build_sum(&mut self, p: &Poly) -> Id {
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
        if !keyed.is_sorted_by(|a, b| a.0 <= b.0) {
            apply(&TERMS_IN_PRINTED_ORDER);
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

    pub(super) fn build_term(&mut self, t: &Term, shape: Shape) -> Id {
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
    pub(super) fn powers_sorted(&mut self, powers: Vec<(Id, f64)>) -> Vec<Id> {
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

    pub(super) fn build_chain(&mut self, chain: &[Factor], shape: Shape) -> Id {
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
