//! Transposes: pushed to the atoms, a transposed sum kept whole where that reads better, and
//! the orientation with fewer transposes where a function cannot see one.

use super::*;

impl Simplifier<'_> {
    pub(super) fn transpose(&mut self, p: Poly) -> Poly {
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
            apply(&TRANSPOSE_OF_A_SUM);
            return pushed;
        }
        let pushed_node = self.build(&pushed);
        let wrapped = self.g.transpose(sum);
        if self.better(pushed_node, wrapped) == wrapped {
            self.atom(wrapped)
        } else {
            apply(&TRANSPOSE_OF_A_SUM);
            pushed
        }
    }

    /// The transpose, term by term, with every factor transposed in reverse order.
    pub(super) fn transpose_terms(&mut self, p: Poly) -> Poly {
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
            if term.chain.len() > 1 {
                apply(&TRANSPOSE_OF_A_PRODUCT);
            }
            for f in term.chain.iter().rev() {
                let tf = self.transpose_factor(*f);
                acc = self.mul(acc, tf);
            }
            out = self.add(out, acc);
        }
        out
    }

    pub(super) fn transpose_factor(&mut self, f: Factor) -> Poly {
        let base = self.transpose_base(f.base);
        self.pow_int(base, f.power)
    }

    pub(super) fn transpose_base(&mut self, base: Id) -> Poly {
        let shape = self.shape(base).transposed();
        match self.g.node(base) {
            Node::Var(v) if self.g.vars[v as usize].symmetric => {
                apply(&TRANSPOSE_OF_A_SYMMETRIC_MATRIX);
                self.atom(base)
            }
            Node::Transpose(x) => {
                apply(&TRANSPOSE_OF_A_TRANSPOSE);
                self.poly(x)
            }
            Node::Fill(c, _) => {
                apply(&TRANSPOSE_OF_ONES);
                let f = self.g.fill(c.get(), shape);
                self.atom(f)
            }
            Node::Diag(_) | Node::Eye(_) => {
                apply(&TRANSPOSE_OF_A_DIAGONAL);
                self.atom(base)
            }
            Node::Map(func, x) => {
                apply(&TRANSPOSE_OF_ELEMENT_WISE);
                let px = self.poly(x);
                let tx = self.transpose(px);
                self.map(func, tx)
            }
            Node::Hadamard(a, b) | Node::ElemDiv(a, b) | Node::ElemPow(a, b) => {
                apply(&TRANSPOSE_OF_ELEMENT_WISE);
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
    pub(super) fn orient_single(&mut self, p: Poly) -> Poly {
        if p.terms.len() != 1 || p.shape.is_scalar() || !p.shape.is_square() {
            return p;
        }
        let direct = self.build(&p);
        let tp = self.transpose(p.clone());
        let flipped = self.build(&tp);
        if self.better(direct, flipped) == direct {
            p
        } else {
            apply(&ORIENTATION_WHERE_TRANSPOSES_DO_NOT_COUNT);
            tp
        }
    }

    pub(super) fn best_orientation(&mut self, p: Poly) -> Id {
        let direct = self.build(&p);
        let tp = self.transpose(p);
        let flipped = self.build(&tp);
        let best = self.better(direct, flipped);
        if best != direct {
            apply(&ORIENTATION_WHERE_TRANSPOSES_DO_NOT_COUNT);
        }
        best
    }

    /// Of two equal nodes, the one with fewer transposes, then the first by [`Key`].
    pub(super) fn better(&mut self, a: Id, b: Id) -> Id {
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

    /// The transposes `id` prints with: its transpose nodes, and its rows of ones (a row
    /// prints as the transposed column, `vector(1)'`).
    pub(super) fn count_transposes(&self, id: Id) -> usize {
        self.g
            .topo_order(id)
            .into_iter()
            .filter(|&n| match self.g.node(n) {
                Node::Transpose(_) => true,
                Node::Fill(_, shape) => shape.is_row(),
                _ => false,
            })
            .count()
    }

    /// The chain of the transpose of a single-factor-chain term, when it stays a chain.
    pub(super) fn transpose_chain_only(&mut self, p: Poly) -> Option<Vec<Factor>> {
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
}
