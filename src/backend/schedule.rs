//! One schedule of a validated plan, computed once for every executor.
//!
//! In: a [`Plan`]. Out: a [`Schedule`]: which steps are computed per item, each step's users,
//! which steps are outputs, each step's element-wise form ([`elementwise`], the one table of
//! element-wise operations that the CPU kernels, the item-major blocks and the WGSL generator
//! read), and the chains of element-wise steps that follow a product ([`Schedule::chain`]),
//! walked by one rule; each executor adds only what it can fuse (the GPU: into a GEMM's
//! store; the CPU: into a tile of rows while it is in L1). The GPU's stages and storage
//! (`wgsl::Placement`) and the CPU's unstored steps are built on it.
//!
//! Invariants: `users[a]` lists `j` once per use of `a` by a computed step `j`, in step order;
//! a chain starts at its head's only user, each step of it is the only user of the one before
//! (which is not an output), is element-wise, batched and of the head's length.

use crate::expr::{Func, Node};
use crate::plan::Plan;

/// What an element-wise step computes for each entry `e`: `a[e] op b[e]`, or `op(a[e])`,
/// where an argument marked in [`Elementwise::numbers`] is one number, read for every `e`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementOp {
    Add,
    Mul,
    Div,
    Neg,
    /// `a[e]^b[e]`.
    Pow,
    Map(Func),
}

/// A plan step's element-wise form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elementwise {
    pub op: ElementOp,
    /// The arguments that are one number for every entry: a scale's factor, a quotient's
    /// divisor. A power's exponent is one number when it has one entry
    /// ([`Elementwise::is_number`]; a scalar power has one entry in all).
    pub numbers: [bool; 2],
}

impl Elementwise {
    /// Whether argument `k`, of `len` entries, is one number for every entry.
    pub fn is_number(&self, k: usize, len: usize) -> bool {
        self.numbers[k] || (self.op == ElementOp::Pow && k == 1 && len == 1)
    }
}

/// The one table of element-wise operations: `None` for every other node.
pub fn elementwise(node: Node) -> Option<Elementwise> {
    let (op, numbers) = match node {
        Node::Add(..) => (ElementOp::Add, [false, false]),
        Node::Hadamard(..) => (ElementOp::Mul, [false, false]),
        Node::Scale(..) => (ElementOp::Mul, [true, false]),
        Node::ElemDiv(..) => (ElementOp::Div, [false, false]),
        Node::Div(..) => (ElementOp::Div, [false, true]),
        Node::Neg(_) => (ElementOp::Neg, [false, false]),
        Node::Pow(..) | Node::ElemPow(..) => (ElementOp::Pow, [false, false]),
        Node::Map(f, _) => (ElementOp::Map(f), [false, false]),
        _ => return None,
    };
    Some(Elementwise { op, numbers })
}

/// What every executor needs to know about a plan's steps, computed once.
pub struct Schedule {
    /// Steps computed per item (batched, not inputs).
    pub computed: Vec<bool>,
    /// Each step's users among the computed steps (one entry per use).
    pub users: Vec<Vec<usize>>,
    /// Whether each step is one of the plan's outputs.
    pub output: Vec<bool>,
    /// Each step's element-wise form ([`elementwise`]).
    pub elementwise: Vec<Option<Elementwise>>,
}

impl Schedule {
    pub fn new(plan: &Plan) -> Schedule {
        let steps = plan.steps();
        let computed: Vec<bool> = (steps.iter())
            .map(|s| s.batched && s.input.is_none())
            .collect();
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
        for j in (0..steps.len()).filter(|&j| computed[j]) {
            for &a in &steps[j].args {
                users[a].push(j);
            }
        }
        let mut output = vec![false; steps.len()];
        for &o in plan.outputs() {
            output[o] = true;
        }
        Schedule {
            computed,
            users,
            output,
            elementwise: steps.iter().map(|s| elementwise(s.node)).collect(),
        }
    }

    /// The element-wise steps that follow step `head` (a product) and can be applied to its
    /// entries as they are stored: while the last value has one user and is not an output,
    /// that user joins when it is element-wise, computed, of the head's length, and `admits`
    /// it (the executor's own rule: what it can compute there; `admits(u, last)`).
    pub fn chain(
        &self,
        plan: &Plan,
        head: usize,
        admits: impl Fn(usize, usize) -> bool,
    ) -> Vec<usize> {
        let steps = plan.steps();
        let mut chain = Vec::new();
        let mut last = head;
        while let [u] = self.users[last][..] {
            let joins = !self.output[last]
                && self.elementwise[u].is_some()
                && self.computed[u]
                && steps[u].len() == steps[head].len()
                && admits(u, last);
            if !joins {
                break;
            }
            chain.push(u);
            last = u;
        }
        chain
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::Id;
    use crate::types::check_program;

    /// The plan of `source` with `x` batched, its output the program's value.
    fn plan(source: &str) -> Plan {
        let p = check_program(source).unwrap();
        let g = &p.graph;
        let batched: Vec<bool> = g.vars.iter().map(|v| v.name == "x").collect();
        Plan::new(g, &[p.root], &crate::verify::dimension_sizes(g), &batched).unwrap()
    }

    /// The operation of each step of a plan, by its element-wise form.
    fn ops(plan: &Plan) -> Vec<Option<ElementOp>> {
        (plan.steps().iter())
            .map(|s| elementwise(s.node).map(|e| e.op))
            .collect()
    }

    #[test]
    fn the_table_has_each_elementwise_node_and_no_other() {
        let p = plan(
            "x: vector(3); y: vector(3); a: scalar; \
             sum(relu(-(a*x + y).*x./y/a).^2) + a^a + norm2(x)",
        );
        let found: Vec<ElementOp> = ops(&p).into_iter().flatten().collect();
        for op in [
            ElementOp::Add,
            ElementOp::Mul,
            ElementOp::Div,
            ElementOp::Neg,
            ElementOp::Pow,
            ElementOp::Map(Func::Relu),
        ] {
            assert!(found.contains(&op), "{op:?} missing from {found:?}");
        }
        for s in p.steps() {
            let reduction = matches!(s.node, Node::Sum(_) | Node::Norm2(_) | Node::Var(_));
            assert!(
                !(reduction && elementwise(s.node).is_some()),
                "{:?}",
                s.node
            );
        }
        // A scale's factor and a quotient's divisor are numbers; a power's exponent is one
        // when it has one entry.
        let scale = elementwise(Node::Scale(Id(0), Id(0))).unwrap();
        assert_eq!((scale.op, scale.numbers), (ElementOp::Mul, [true, false]));
        let div = elementwise(Node::Div(Id(0), Id(0))).unwrap();
        assert_eq!((div.op, div.numbers), (ElementOp::Div, [false, true]));
        let pow = elementwise(Node::ElemPow(Id(0), Id(0))).unwrap();
        assert!(pow.is_number(1, 1) && !pow.is_number(1, 3) && !pow.is_number(0, 1));
    }

    #[test]
    fn a_chain_follows_single_users_of_the_products_length_and_stops_at_a_reduction() {
        let p = plan("x: vector(3); S: matrix(3,3); c: vector(3); sum(exp(-(2*(S*x + c))))");
        let s = Schedule::new(&p);
        let head = (p.steps().iter())
            .position(|s| matches!(s.node, Node::MatMul(..)))
            .unwrap();
        let chain = s.chain(&p, head, |_, _| true);
        let chain_ops: Vec<ElementOp> = chain
            .iter()
            .map(|&u| s.elementwise[u].unwrap().op)
            .collect();
        assert_eq!(
            chain_ops,
            [
                ElementOp::Add,
                ElementOp::Mul,
                ElementOp::Neg,
                ElementOp::Map(Func::Exp)
            ]
        );
        // The executor's own rule stops it where it refuses a step.
        let no_maps = s.chain(&p, head, |u, _| {
            !matches!(s.elementwise[u].unwrap().op, ElementOp::Map(_))
        });
        assert_eq!(no_maps, chain[..3]);
        // A value with a second user, or an output, ends the chain after it.
        let mut users = s.users.clone();
        users[chain[1]].push(chain[2]);
        let two_users = Schedule { users, ..s };
        assert_eq!(two_users.chain(&p, head, |_, _| true), chain[..2]);
        let mut output = two_users.output.clone();
        output[chain[0]] = true;
        let users = Schedule::new(&p).users;
        let an_output = Schedule {
            output,
            users,
            ..two_users
        };
        assert_eq!(an_output.chain(&p, head, |_, _| true), chain[..1]);
    }
}
