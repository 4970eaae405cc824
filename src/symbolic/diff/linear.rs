//! Reads off the matrix of a linear expression: given `e(u)`, linear in the vector variable
//! `u`, finds `M` with `e(u) = M*u`.
//!
//! In: a (simplified) column-vector or scalar expression that is linear in `u`. Out: `M`
//! (k×n for a k-vector `e`, a row for a scalar `e`). Used for Jacobians (`e = grad_x(y'*u)`)
//! and Hessians (`e = grad_x(grad_x(f)'*u)`). Invariant: each rule is an exact identity
//! (`w.*(A*u) = diag(w)*A*u`, `(P*Q)*B = P*(Q*B)`, `s(u)*w = w*r` when `s(u) = r*u`,
//! `tr(M) = sum(diag(M))`, `diag(P*diag(v)*Q) = (P.*Q')*v`);
//! anything that is not of these forms is an error, never a guess.

use crate::expr::{Dim, Graph, Id, Node, Shape};

/// `M` with `e = M*u`.
pub fn extract(g: &mut Graph, e: Id, u: u32) -> Result<Id, String> {
    let shape = g.shape(e);
    if !(shape.is_column() || shape.is_scalar()) {
        return Err(format!(
            "expected a vector or scalar linear form, found a {}",
            g.describe_shape(shape)
        ));
    }
    match linear(g, e, u, 0)? {
        Some(m) => Ok(m),
        None => {
            let n = g.vars[u as usize].shape.rows;
            Ok(g.zero(Shape::new(shape.rows, n)))
        }
    }
}

/// Recursion limit: the rewrites below only ever shrink the part that depends on `u`, so
/// this bounds hostile inputs, not real ones.
const MAX_DEPTH: usize = 400;

fn not_linear(g: &Graph, e: Id) -> String {
    format!(
        "the expression `{}` is not a linear form this extraction understands",
        crate::print::text(g, e)
    )
}

/// `None` when `e` does not depend on `u`.
fn linear(g: &mut Graph, e: Id, u: u32, depth: usize) -> Result<Option<Id>, String> {
    if depth > MAX_DEPTH {
        return Err("the linear form nests too deeply".into());
    }
    if !g.depends_on(e, u) {
        return Ok(None);
    }
    let n = g.vars[u as usize].shape.rows;
    let rec = |g: &mut Graph, x: Id| linear(g, x, u, depth + 1);
    let m = match g.node(e) {
        Node::Var(v) if v == u => g.eye(n),
        Node::Add(a, b) => match (rec(g, a)?, rec(g, b)?) {
            (Some(ma), Some(mb)) => g.add(ma, mb),
            _ => return Err(not_linear(g, e)),
        },
        Node::Neg(a) => {
            let ma = rec(g, a)?.ok_or_else(|| not_linear(g, e))?;
            g.neg(ma)
        }
        Node::Scale(s, a) => {
            if g.depends_on(s, u) {
                if g.depends_on(a, u) {
                    return Err(not_linear(g, e));
                }
                let r = rec(g, s)?.ok_or_else(|| not_linear(g, e))?;
                g.mul(a, r)
            } else {
                let ma = rec(g, a)?.ok_or_else(|| not_linear(g, e))?;
                g.mul(s, ma)
            }
        }
        Node::Div(a, s) => {
            if g.depends_on(s, u) {
                return Err(not_linear(g, e));
            }
            let ma = rec(g, a)?.ok_or_else(|| not_linear(g, e))?;
            g.div(ma, s)
        }
        Node::MatMul(a, b) => {
            let (da, db) = (g.depends_on(a, u), g.depends_on(b, u));
            match (da, db) {
                (true, true) => return Err(not_linear(g, e)),
                (false, true) => {
                    let mb = rec(g, b)?.ok_or_else(|| not_linear(g, e))?;
                    g.mul(a, mb)
                }
                (true, false) => {
                    if g.shape(a).rows == Dim::One {
                        // A row r(u) = (M*u)' times a constant column B: (B'*M)*u.
                        let ma = linear_row(g, a, u, depth + 1)?;
                        let bt = g.transpose(b);
                        g.mul(bt, ma)
                    } else {
                        let rewritten =
                            distribute_right(g, a, b).ok_or_else(|| not_linear(g, e))?;
                        return rec(g, rewritten);
                    }
                }
                (false, false) => return Ok(None),
            }
        }
        Node::Transpose(a) => linear_row(g, a, u, depth + 1)?,
        Node::Hadamard(a, b) => {
            let (w, x) = if g.depends_on(a, u) { (b, a) } else { (a, b) };
            if g.depends_on(w, u) {
                return Err(not_linear(g, e));
            }
            let mx = rec(g, x)?.ok_or_else(|| not_linear(g, e))?;
            let d = g.diag(w);
            g.mul(d, mx)
        }
        Node::ElemDiv(a, b) => {
            if g.depends_on(b, u) {
                return Err(not_linear(g, e));
            }
            let ma = rec(g, a)?.ok_or_else(|| not_linear(g, e))?;
            let ones = g.fill(1.0, g.shape(b));
            let recip = g.elem_div(ones, b);
            let d = g.diag(recip);
            g.mul(d, ma)
        }
        Node::Sum(a) if g.shape(a).is_column() => {
            let ma = rec(g, a)?.ok_or_else(|| not_linear(g, e))?;
            let ones = g.fill(1.0, Shape::new(Dim::One, g.shape(a).rows));
            g.mul(ones, ma)
        }
        Node::Trace(a) => {
            // tr(M) = sum(diag(M))
            let d = g.diag_part(a);
            let s = g.sum(d);
            return rec(g, s);
        }
        Node::DiagPart(a) => {
            let inward = diag_part_inward(g, a).ok_or_else(|| not_linear(g, e))?;
            return rec(g, inward);
        }
        _ => return Err(not_linear(g, e)),
    };
    Ok(Some(m))
}

/// For a row vector `r(u)`, the `M` with `r = (M*u)'`.
fn linear_row(g: &mut Graph, r: Id, u: u32, depth: usize) -> Result<Id, String> {
    let pushed = push_transpose(g, r).ok_or_else(|| not_linear(g, r))?;
    linear(g, pushed, u, depth + 1)?.ok_or_else(|| not_linear(g, r))
}

/// `r'` with the transpose moved one level inward, when `r` has a form that allows it.
fn push_transpose(g: &mut Graph, r: Id) -> Option<Id> {
    match g.node(r) {
        Node::Transpose(c) => Some(c),
        Node::MatMul(p, q) => {
            let (qt, pt) = (g.transpose(q), g.transpose(p));
            Some(g.mul(qt, pt))
        }
        Node::Diag(_) => Some(r),
        _ => inward(g, r, Graph::transpose),
    }
}

/// `f(m)` for an `f` that is linear and commutes with element-wise operations (a transpose,
/// the diagonal of a square matrix), taken through the sum, negation, scaling, quotient by a
/// scalar, or element-wise product or quotient at the top of `m`.
fn inward(g: &mut Graph, m: Id, f: fn(&mut Graph, Id) -> Id) -> Option<Id> {
    Some(match g.node(m) {
        Node::Add(a, b) => {
            let (fa, fb) = (f(g, a), f(g, b));
            g.add(fa, fb)
        }
        Node::Neg(a) => {
            let fa = f(g, a);
            g.neg(fa)
        }
        Node::Scale(s, a) => {
            let fa = f(g, a);
            g.mul(s, fa)
        }
        Node::Div(a, s) => {
            let fa = f(g, a);
            g.div(fa, s)
        }
        Node::Hadamard(a, b) => {
            let (fa, fb) = (f(g, a), f(g, b));
            g.hadamard(fa, fb)
        }
        Node::ElemDiv(a, b) => {
            let (fa, fb) = (f(g, a), f(g, b));
            g.elem_div(fa, fb)
        }
        _ => return None,
    })
}

/// `diag(m)`, the diagonal of a square `m`, with the diagonal taken one level inward, when
/// `m` has a form that allows it: `diag(p*r') = p.*r` for an outer product (the Jacobians of
/// `diag(x)*A*x` give `diag(A*x*u')`), `diag(diag(v)*M) = v.*diag(M)`,
/// `diag(P*diag(v)*Q) = (P.*Q')*v`, `diag(M') = diag(M)`, and [`inward`].
fn diag_part_inward(g: &mut Graph, m: Id) -> Option<Id> {
    Some(match g.node(m) {
        Node::Diag(v) => v,
        Node::Transpose(p) => g.diag_part(p),
        Node::MatMul(..) => {
            let factors = chain_factors(g, m);
            let (first, last) = (factors[0], factors[factors.len() - 1]);
            if let Node::Diag(v) = g.node(first) {
                let rest = product(g, &factors[1..]);
                let dr = g.diag_part(rest);
                g.hadamard(v, dr)
            } else if let Node::Diag(v) = g.node(last) {
                let rest = product(g, &factors[..factors.len() - 1]);
                let dr = g.diag_part(rest);
                g.hadamard(dr, v)
            } else if let Some(split) =
                (1..factors.len()).find(|&i| g.shape(factors[i - 1]).cols == Dim::One)
            {
                // A rank-one chain: a prefix of the factors is a column.
                let column = product(g, &factors[..split]);
                let row = product(g, &factors[split..]);
                let rt = g.transpose(row);
                g.hadamard(column, rt)
            } else {
                // diag(P*diag(v)*Q) = (P.*Q')*v.
                let k = (1..factors.len() - 1)
                    .find(|&k| matches!(g.node(factors[k]), Node::Diag(_)))?;
                let Node::Diag(v) = g.node(factors[k]) else {
                    return None;
                };
                let p = product(g, &factors[..k]);
                let q = product(g, &factors[k + 1..]);
                let qt = g.transpose(q);
                let pq = g.hadamard(p, qt);
                g.mul(pq, v)
            }
        }
        _ => return inward(g, m, Graph::diag_part),
    })
}

/// The factors of a matrix-product chain, left to right (`m` itself when it is no product).
fn chain_factors(g: &Graph, m: Id) -> Vec<Id> {
    match g.node(m) {
        Node::MatMul(a, b) => {
            let mut factors = chain_factors(g, a);
            factors.extend(chain_factors(g, b));
            factors
        }
        _ => vec![m],
    }
}

/// The product of a non-empty chain of factors.
fn product(g: &mut Graph, factors: &[Id]) -> Id {
    let mut acc = factors[0];
    for &f in &factors[1..] {
        acc = g.mul(acc, f);
    }
    acc
}

/// `A*B` rewritten so that the part of `A` that depends on `u` meets `B` first.
fn distribute_right(g: &mut Graph, a: Id, b: Id) -> Option<Id> {
    Some(match g.node(a) {
        Node::MatMul(p, q) => {
            let qb = g.mul(q, b);
            g.mul(p, qb)
        }
        Node::Scale(s, q) => {
            let qb = g.mul(q, b);
            g.mul(s, qb)
        }
        Node::Neg(q) => {
            let qb = g.mul(q, b);
            g.neg(qb)
        }
        Node::Div(q, s) => {
            let qb = g.mul(q, b);
            g.div(qb, s)
        }
        Node::Add(p, q) => {
            let (pb, qb) = (g.mul(p, b), g.mul(q, b));
            g.add(pb, qb)
        }
        Node::Transpose(c) => {
            // `a = c'` with the transpose moved inward (`push_transpose(a)` would be `a'`).
            let pushed = push_transpose(g, c)?;
            if pushed == a {
                return None;
            }
            g.mul(pushed, b)
        }
        Node::Diag(v) => g.hadamard(v, b),
        _ => return None,
    })
}
