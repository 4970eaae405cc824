//! Stage 6: derived formula → evaluation plan, the IR that every executor runs.
//!
//! In: a [`Graph`], the nodes to compute (the derivative, optionally the function value),
//! a size for every dimension and, for every variable, whether it is *shared* (one value for
//! the whole batch) or *batched* (one value per item). Out: a [`Plan`]: the steps in
//! topological order, each an operation of the graph with concrete sizes and a `batched`
//! flag. Invariants, checked once by [`Plan::new`] (a `Plan` cannot be built any other way):
//! every argument comes before its step; sizes fit the operation; a step is batched exactly
//! when one of its arguments (or, for an input, its variable) is; so everything that depends
//! only on shared inputs is computed once per batch (hoisting). Common subexpressions are
//! shared because the graph is hash-consed: a node is one step however often it is used.
//! Chains of matrix products are re-associated for the fewest operations per batch, counting
//! shared-only products once ([`order_chain`]): the value is the same, the rounding may differ
//! in the last bits. Batch-aware algebra: a product of a shared factor with a batched sum is
//! also tried distributed (`A'*(A*x+b)` → `A'*A*x + A'*b`, whose `A'*A` and `A'*b` are
//! computed once per batch), and the form with the fewest weighted operations is kept
//! ([`Plan::rewritten`] says which). Distributing can lose accuracy where the terms cancel
//! (a least-squares gradient near its optimum): [`Plan::with_options`] turns it off.

use std::collections::HashMap;

use crate::expr::{Graph, Id, Node};

/// One variable the plan reads.
#[derive(Clone, Debug, PartialEq)]
pub struct PlanInput {
    pub name: String,
    pub var: u32,
    pub rows: usize,
    pub cols: usize,
    pub batched: bool,
}

/// One operation of the plan; `args` index earlier steps.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// The graph node (its own argument handles are not used: see `args`).
    pub node: Node,
    pub args: Vec<usize>,
    pub rows: usize,
    pub cols: usize,
    pub batched: bool,
    /// For a `Var` node, its index in [`Plan::inputs`].
    pub input: Option<usize>,
}

impl Step {
    pub fn len(&self) -> usize {
        self.rows * self.cols
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A validated evaluation plan.
#[derive(Clone, Debug)]
pub struct Plan {
    steps: Vec<Step>,
    inputs: Vec<PlanInput>,
    outputs: Vec<usize>,
    rewritten: Option<String>,
}

/// Choices [`Plan::with_options`] leaves to the caller.
#[derive(Clone, Copy, Debug)]
pub struct PlanOptions {
    /// Try distributing shared factors over batched sums (see the module documentation).
    pub distribute: bool,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions { distribute: true }
    }
}

/// The block of items whose batched intermediate values [`Plan::memory_bytes`] counts as held at
/// once (the executors work through the batch a block at a time).
const MEMORY_BLOCK_ITEMS: usize = 4096;

/// At most this many products are tried distributed one by one (all subsets); past it, all
/// of them or none.
const MAX_SITES_ONE_BY_ONE: usize = 4;

/// Why a plan could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("dimension `{0}` has no size")]
    UnsizedDimension(String),
    #[error("step {step}: {why}")]
    Invalid { step: usize, why: String },
    /// A value with more entries than can be addressed, or a batch that does not fit in the
    /// machine's memory.
    #[error("{0}")]
    TooLarge(String),
}

/// Floating-point operations and the bytes a plan must move at least, for one batch.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Cost {
    /// Operations done once per batch (the hoisted, shared-only work).
    pub flops_shared: f64,
    /// Operations done for each item.
    pub flops_per_item: f64,
    /// Bytes of shared inputs read once (f32).
    pub bytes_shared: f64,
    /// Bytes of batched inputs read and outputs written per item (f32).
    pub bytes_per_item: f64,
}

impl Cost {
    pub fn flops(&self, batch: usize) -> f64 {
        self.flops_shared + self.flops_per_item * batch as f64
    }

    pub fn bytes(&self, batch: usize) -> f64 {
        self.bytes_shared + self.bytes_per_item * batch as f64
    }

    /// What the planner minimizes: operations, those per item weighted as for a large batch.
    pub fn weighted(&self) -> f64 {
        self.flops_shared + PER_ITEM_WEIGHT * self.flops_per_item
    }
}

impl Plan {
    /// Lowers `outputs` of `graph`, with `dim_sizes[i]` the size of dimension `i` and
    /// `batched[v]` whether variable `v` is batched, and validates the result.
    pub fn new(
        graph: &Graph,
        outputs: &[Id],
        dim_sizes: &[usize],
        batched: &[bool],
    ) -> Result<Plan, PlanError> {
        Plan::with_options(graph, outputs, dim_sizes, batched, PlanOptions::default())
    }

    /// [`Plan::new`] with the algebraic rewrites chosen by `options`.
    pub fn with_options(
        graph: &Graph,
        outputs: &[Id],
        dim_sizes: &[usize],
        batched: &[bool],
        options: PlanOptions,
    ) -> Result<Plan, PlanError> {
        let scaled = scale_diagonals(graph, outputs);
        let (graph, outputs) = match &scaled {
            Some((g, roots)) => (g, &roots[..]),
            None => (graph, outputs),
        };
        let mut best = Plan::lower(graph, outputs, dim_sizes, batched)?;
        if !options.distribute {
            return Ok(best);
        }
        let sites = distributable(graph, outputs, batched);
        if sites.is_empty() {
            return Ok(best);
        }
        let subsets: Vec<Vec<(Id, bool)>> = if sites.len() <= MAX_SITES_ONE_BY_ONE {
            (1..1usize << sites.len())
                .map(|mask| {
                    (0..sites.len())
                        .filter(|i| mask >> i & 1 == 1)
                        .map(|i| sites[i])
                        .collect()
                })
                .collect()
        } else {
            vec![sites]
        };
        for subset in subsets {
            let mut g = graph.clone();
            let mut memo = HashMap::new();
            let roots: Vec<Id> = outputs
                .iter()
                .map(|&o| distribute(&mut g, o, &subset, &mut memo))
                .collect();
            let mut candidate = Plan::lower(&g, &roots, dim_sizes, batched)?;
            if candidate.cost().weighted() < best.cost().weighted() {
                candidate.rewritten = Some(crate::print::text(&g, roots[0]));
                best = candidate;
            }
        }
        Ok(best)
    }

    /// The printed form of the first output when the cost model chose a rewritten form.
    pub fn rewritten(&self) -> Option<&str> {
        self.rewritten.as_deref()
    }

    fn lower(
        graph: &Graph,
        outputs: &[Id],
        dim_sizes: &[usize],
        batched: &[bool],
    ) -> Result<Plan, PlanError> {
        for (i, d) in graph.dims.iter().enumerate() {
            if dim_sizes.get(i).is_none_or(|&s| s == 0) {
                return Err(PlanError::UnsizedDimension(d.name.clone()));
            }
        }
        let env = crate::eval::Env {
            dim_sizes: dim_sizes.to_vec(),
            values: vec![],
        };
        let mut index: HashMap<Id, usize> = HashMap::new();
        let mut steps: Vec<Step> = Vec::new();
        let mut inputs: Vec<PlanInput> = Vec::new();
        let interior = chain_interiors(graph, outputs);
        for &root in outputs {
            for id in graph.topo_order(root) {
                if index.contains_key(&id) || interior.contains(&id) {
                    continue;
                }
                let node = graph.node(id);
                let (rows, cols) = env.dims_of(graph.shape(id));
                if rows
                    .checked_mul(cols)
                    .and_then(|n| n.checked_mul(8))
                    .is_none()
                {
                    return Err(PlanError::TooLarge(format!(
                        "a {rows}x{cols} value has more entries than this machine can address"
                    )));
                }
                if let Node::MatMul(..) = node {
                    let mut factors = Vec::new();
                    chain_factors(graph, id, &interior, &mut factors);
                    let factor_steps: Vec<usize> = factors.iter().map(|f| index[f]).collect();
                    let step = order_chain(&mut steps, node, &factor_steps);
                    index.insert(id, step);
                    continue;
                }
                let args: Vec<usize> = node.args().into_iter().map(|a| index[&a]).collect();
                let (is_batched, input) = match node {
                    Node::Var(v) => {
                        let var = &graph.vars[v as usize];
                        let b = batched.get(v as usize).copied().unwrap_or(false);
                        inputs.push(PlanInput {
                            name: var.name.clone(),
                            var: v,
                            rows,
                            cols,
                            batched: b,
                        });
                        (b, Some(inputs.len() - 1))
                    }
                    _ => (args.iter().any(|&a| steps[a].batched), None),
                };
                index.insert(id, steps.len());
                steps.push(Step {
                    node,
                    args,
                    rows,
                    cols,
                    batched: is_batched,
                    input,
                });
            }
        }
        let outputs = outputs.iter().map(|o| index[o]).collect();
        let plan = Plan {
            steps,
            inputs,
            outputs,
            rewritten: None,
        };
        plan.validate()?;
        Ok(plan)
    }

    pub fn steps(&self) -> &[Step] {
        &self.steps
    }

    /// About how many bytes evaluating `batch` items holds at once, on the widest executor:
    /// the inputs in float64 and float32, the outputs in float64, every shared value, and the
    /// batched values of one block of items. An estimate for refusing what cannot fit, not an
    /// accounting.
    pub fn memory_bytes(&self, batch: usize) -> f64 {
        let items = |batched: bool| if batched { batch as f64 } else { 1.0 };
        let entries = |rows: usize, cols: usize| rows as f64 * cols as f64;
        let inputs: f64 = self
            .inputs
            .iter()
            .map(|i| 12.0 * entries(i.rows, i.cols) * items(i.batched))
            .sum();
        let outputs: f64 = self
            .outputs
            .iter()
            .map(|&o| {
                8.0 * entries(self.steps[o].rows, self.steps[o].cols) * items(self.steps[o].batched)
            })
            .sum();
        let block = batch.min(MEMORY_BLOCK_ITEMS) as f64;
        let values: f64 = self
            .steps
            .iter()
            .map(|s| 8.0 * entries(s.rows, s.cols) * if s.batched { block } else { 1.0 })
            .sum();
        inputs + outputs + values
    }

    /// `Err` when [`Plan::memory_bytes`] for `batch` items exceeds the memory this machine has
    /// available: a size too large for memory (a dimension or the batch) is an error before
    /// anything is allocated, not an abort mid-way.
    pub fn fits_batch(&self, batch: usize, what: &str) -> Result<(), PlanError> {
        crate::batch::fits_in_memory(self.memory_bytes(batch), what).map_err(PlanError::TooLarge)
    }

    pub fn inputs(&self) -> &[PlanInput] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[usize] {
        &self.outputs
    }

    /// Whether any input is batched (else the batch is one item with no leading axis).
    pub fn is_batched(&self) -> bool {
        self.inputs.iter().any(|i| i.batched)
    }

    fn validate(&self) -> Result<(), PlanError> {
        for (i, step) in self.steps.iter().enumerate() {
            let fail = |why: String| Err(PlanError::Invalid { step: i, why });
            if step.args.iter().any(|&a| a >= i) {
                return fail("an argument does not come before its step".into());
            }
            let arg = |k: usize| &self.steps[step.args[k]];
            let size = |k: usize| (arg(k).rows, arg(k).cols);
            let (r, c) = (step.rows, step.cols);
            let ok = match step.node {
                Node::Var(_) => step.input.is_some_and(|k| {
                    let input = &self.inputs[k];
                    (input.rows, input.cols, input.batched) == (r, c, step.batched)
                }),
                Node::Const(_) => (r, c) == (1, 1),
                Node::Fill(..) => true,
                Node::Eye(_) => r == c,
                Node::Add(..) | Node::Hadamard(..) | Node::ElemDiv(..) => {
                    size(0) == (r, c) && size(1) == (r, c)
                }
                Node::Neg(_) | Node::Map(..) => size(0) == (r, c),
                Node::MatMul(..) => size(0).0 == r && size(1).1 == c && size(0).1 == size(1).0,
                Node::Scale(..) => size(0) == (1, 1) && size(1) == (r, c),
                Node::Div(..) => size(1) == (1, 1) && size(0) == (r, c),
                Node::Pow(..) => size(0) == (1, 1) && size(1) == (1, 1) && (r, c) == (1, 1),
                Node::ElemPow(..) => size(0) == (r, c) && (size(1) == (r, c) || size(1) == (1, 1)),
                Node::MatPow(..) | Node::Inv(_) => size(0) == (r, c) && r == c,
                Node::Transpose(_) => size(0) == (c, r),
                Node::Sum(_) | Node::Norm1(_) | Node::Norm2(_) => (r, c) == (1, 1),
                Node::Trace(_) | Node::Det(_) | Node::LogDet(_) => {
                    (r, c) == (1, 1) && size(0).0 == size(0).1
                }
                Node::Diag(_) => size(0) == (r, 1) && r == c,
                Node::DiagPart(_) => size(0) == (r, r) && c == 1,
            };
            if !ok {
                return fail(format!("sizes do not fit {:?}", step.node));
            }
            let expected_batched = match step.node {
                Node::Var(_) => step.batched,
                _ => step.args.iter().any(|&a| self.steps[a].batched),
            };
            if expected_batched != step.batched {
                return fail("batched flag does not follow the arguments".into());
            }
        }
        if self.outputs.iter().any(|&o| o >= self.steps.len()) {
            return Err(PlanError::Invalid {
                step: self.steps.len(),
                why: "an output is not a step".into(),
            });
        }
        Ok(())
    }

    /// The operations and bytes of one batch.
    pub fn cost(&self) -> Cost {
        let mut cost = Cost::default();
        for step in &self.steps {
            let flops = step_flops(self, step);
            if step.batched {
                cost.flops_per_item += flops;
            } else {
                cost.flops_shared += flops;
            }
        }
        for input in &self.inputs {
            let bytes = 4.0 * (input.rows * input.cols) as f64;
            if input.batched {
                cost.bytes_per_item += bytes;
            } else {
                cost.bytes_shared += bytes;
            }
        }
        for &o in &self.outputs {
            let step = &self.steps[o];
            let bytes = 4.0 * step.len() as f64;
            if step.batched {
                cost.bytes_per_item += bytes;
            } else {
                cost.bytes_shared += bytes;
            }
        }
        cost
    }
}

/// Products of a shared factor with a batched sum, reachable from `outputs`: (product,
/// whether the sum is the right factor).
fn distributable(graph: &Graph, outputs: &[Id], batched: &[bool]) -> Vec<(Id, bool)> {
    let mut is_batched: HashMap<Id, bool> = HashMap::new();
    let mut sites = Vec::new();
    for &root in outputs {
        for id in graph.topo_order(root) {
            if is_batched.contains_key(&id) {
                continue;
            }
            let node = graph.node(id);
            let b = match node {
                Node::Var(v) => batched.get(v as usize).copied().unwrap_or(false),
                _ => node.args().iter().any(|a| is_batched[a]),
            };
            is_batched.insert(id, b);
            if let Node::MatMul(l, r) = node {
                let sum_side = |sum: Id, other: Id| {
                    matches!(graph.node(sum), Node::Add(..))
                        && is_batched[&sum]
                        && !is_batched[&other]
                };
                if sum_side(r, l) {
                    sites.push((id, true));
                } else if sum_side(l, r) {
                    sites.push((id, false));
                }
            }
        }
    }
    sites
}

/// The terms of a (nested) sum.
fn sum_terms(graph: &Graph, id: Id, out: &mut Vec<Id>) {
    match graph.node(id) {
        Node::Add(a, b) => {
            sum_terms(graph, a, out);
            sum_terms(graph, b, out);
        }
        _ => out.push(id),
    }
}

/// `id` rebuilt with each product in `sites` distributed over its sum:
/// `L*(T1+T2)` → `L*T1 + L*T2`, `(T1+T2)*R` → `T1*R + T2*R`.
fn distribute(graph: &mut Graph, id: Id, sites: &[(Id, bool)], memo: &mut HashMap<Id, Id>) -> Id {
    if let Some(&done) = memo.get(&id) {
        return done;
    }
    let node = graph.node(id);
    let args: Vec<Id> = node
        .args()
        .into_iter()
        .map(|a| distribute(graph, a, sites, memo))
        .collect();
    let original_args = node.args();
    let rebuilt = match node {
        Node::MatMul(..) if sites.iter().any(|&(s, _)| s == id) => {
            let sum_on_right = sites.iter().any(|&(s, right)| s == id && right);
            let mut terms = Vec::new();
            let sum = if sum_on_right { args[1] } else { args[0] };
            sum_terms(graph, sum, &mut terms);
            let products: Vec<Id> = terms
                .into_iter()
                .map(|t| {
                    if sum_on_right {
                        graph.push(Node::MatMul(args[0], t))
                    } else {
                        graph.push(Node::MatMul(t, args[1]))
                    }
                })
                .collect();
            products
                .into_iter()
                .reduce(|a, b| graph.push(Node::Add(a, b)))
                .unwrap_or(id)
        }
        _ if args == original_args => id,
        _ => graph.push(node.with_args(&args)),
    };
    memo.insert(id, rebuilt);
    rebuilt
}

/// Products with a diagonal matrix as scalings: `diag(v)*B` becomes `(v*ones(1,n)).*B` and
/// `A*diag(v)` becomes `A.*(ones(m,1)*v')`, m·n multiplications instead of the m·m·n of a
/// dense product with a mostly zero matrix (a logistic Hessian `X'*diag(w)*X` with 64×16
/// `X`: 18 thousand instead of 164 thousand per item), and no `0*inf` terms. `None` when no
/// product has a diagonal factor.
fn scale_diagonals(graph: &Graph, outputs: &[Id]) -> Option<(Graph, Vec<Id>)> {
    let has_diagonal_factor = outputs.iter().any(|&root| {
        graph
            .topo_order(root)
            .into_iter()
            .any(|id| match graph.node(id) {
                Node::MatMul(a, b) => {
                    matches!(graph.node(a), Node::Diag(_)) || matches!(graph.node(b), Node::Diag(_))
                }
                _ => false,
            })
    });
    if !has_diagonal_factor {
        return None;
    }
    let mut g = graph.clone();
    let mut memo = HashMap::new();
    let roots = outputs
        .iter()
        .map(|&o| scale_diagonals_at(&mut g, o, &mut memo))
        .collect();
    Some((g, roots))
}

fn scale_diagonals_at(g: &mut Graph, id: Id, memo: &mut HashMap<Id, Id>) -> Id {
    if let Some(&done) = memo.get(&id) {
        return done;
    }
    let node = g.node(id);
    let original = node.args();
    let args: Vec<Id> = original
        .iter()
        .map(|&a| scale_diagonals_at(g, a, memo))
        .collect();
    let rebuilt = match node {
        Node::MatMul(..) => match (g.node(args[0]), g.node(args[1])) {
            (Node::Diag(v), _) => {
                let cols = g.shape(args[1]).cols;
                let ones = g.fill(1.0, crate::expr::Shape::new(crate::expr::Dim::One, cols));
                let spread = g.mul(v, ones);
                g.hadamard(spread, args[1])
            }
            (_, Node::Diag(v)) => {
                let rows = g.shape(args[0]).rows;
                let ones = g.fill(1.0, crate::expr::Shape::new(rows, crate::expr::Dim::One));
                let row = g.transpose(v);
                let spread = g.mul(ones, row);
                g.hadamard(args[0], spread)
            }
            _ => g.push(node.with_args(&args)),
        },
        _ if args == original => id,
        _ => g.push(node.with_args(&args)),
    };
    memo.insert(id, rebuilt);
    rebuilt
}

/// Matrix products used only as an operand of another matrix product (and not an output):
/// they dissolve into the enclosing chain, which [`order_chain`] re-associates.
fn chain_interiors(graph: &Graph, outputs: &[Id]) -> std::collections::HashSet<Id> {
    let mut uses: HashMap<Id, usize> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for &root in outputs {
        *uses.entry(root).or_default() += 1;
        for id in graph.topo_order(root) {
            if seen.insert(id) {
                for a in graph.node(id).args() {
                    *uses.entry(a).or_default() += 1;
                }
            }
        }
    }
    let mut interior = std::collections::HashSet::new();
    for &id in &seen {
        if let Node::MatMul(a, b) = graph.node(id) {
            for child in [a, b] {
                if matches!(graph.node(child), Node::MatMul(..)) && uses.get(&child) == Some(&1) {
                    interior.insert(child);
                }
            }
        }
    }
    interior
}

/// The operands of the product chain rooted at `id`, left to right.
fn chain_factors(
    graph: &Graph,
    id: Id,
    interior: &std::collections::HashSet<Id>,
    out: &mut Vec<Id>,
) {
    match graph.node(id) {
        Node::MatMul(a, b) => {
            for child in [a, b] {
                if interior.contains(&child) {
                    chain_factors(graph, child, interior, out);
                } else {
                    out.push(child);
                }
            }
        }
        _ => out.push(id),
    }
}

/// Weight of a product done for every item against one done once per batch, when choosing
/// the order of a chain: any batch worth a plan is large, so a hoisted product is nearly free.
const PER_ITEM_WEIGHT: f64 = 1024.0;

/// Appends the product of `factors` (step indices) in the order with the fewest weighted
/// operations (the classic matrix-chain dynamic programme, counting products of shared
/// factors once per batch and the others once per item); returns the result's step. So
/// `(C+C')*X*a*a'` with `X` batched computes `X*a` per item and `a*a'`… never `(C+C')*X`.
fn order_chain(steps: &mut Vec<Step>, node: Node, factors: &[usize]) -> usize {
    let n = factors.len();
    if n == 1 {
        return factors[0];
    }
    let dims: Vec<usize> = std::iter::once(steps[factors[0]].rows)
        .chain(factors.iter().map(|&f| steps[f].cols))
        .collect();
    let batched: Vec<bool> = factors.iter().map(|&f| steps[f].batched).collect();
    // cost[i][j], split[i][j] for the sub-chain i..=j.
    let mut cost = vec![vec![0.0f64; n]; n];
    let mut split = vec![vec![0usize; n]; n];
    for len in 2..=n {
        for i in 0..=n - len {
            let j = i + len - 1;
            let weight = if batched[i..=j].iter().any(|&b| b) {
                PER_ITEM_WEIGHT
            } else {
                1.0
            };
            cost[i][j] = f64::INFINITY;
            for k in i..j {
                let c = cost[i][k]
                    + cost[k + 1][j]
                    + weight * (dims[i] * dims[k + 1] * dims[j + 1]) as f64;
                if c < cost[i][j] {
                    cost[i][j] = c;
                    split[i][j] = k;
                }
            }
        }
    }
    build_chain(steps, node, factors, &split, 0, n - 1)
}

fn build_chain(
    steps: &mut Vec<Step>,
    node: Node,
    factors: &[usize],
    split: &[Vec<usize>],
    i: usize,
    j: usize,
) -> usize {
    if i == j {
        return factors[i];
    }
    let k = split[i][j];
    let left = build_chain(steps, node, factors, split, i, k);
    let right = build_chain(steps, node, factors, split, k + 1, j);
    let (rows, cols) = (steps[left].rows, steps[right].cols);
    let batched = steps[left].batched || steps[right].batched;
    // A 1×1 sub-product (a row times a column) stays a product: the executors multiply a
    // 1×1 operand like any other, with the same result as scaling.
    let args = vec![left, right];
    steps.push(Step {
        node,
        args,
        rows,
        cols,
        batched,
        input: None,
    });
    steps.len() - 1
}

/// The floating-point operations of one evaluation of a step (per item if batched).
pub fn step_flops(plan: &Plan, step: &Step) -> f64 {
    let n = step.len() as f64;
    let arg = |k: usize| &plan.steps[step.args[k]];
    match step.node {
        Node::Var(_) | Node::Const(_) | Node::Fill(..) | Node::Eye(_) => 0.0,
        Node::Transpose(_) | Node::Diag(_) | Node::DiagPart(_) => 0.0,
        Node::MatMul(..) => 2.0 * (step.rows * arg(0).cols * step.cols) as f64,
        Node::MatPow(_, k) => 2.0 * (k.saturating_sub(1) as f64) * (step.rows as f64).powi(3),
        Node::Sum(_) | Node::Norm1(_) => arg(0).len() as f64,
        Node::Norm2(_) => 2.0 * arg(0).len() as f64,
        Node::Trace(_) => arg(0).rows as f64,
        Node::Det(_) | Node::LogDet(_) => 2.0 / 3.0 * (arg(0).rows as f64).powi(3),
        Node::Inv(_) => 2.0 * (step.rows as f64).powi(3),
        _ => n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{differentiate, Layout, Request};
    use crate::types::check_program;

    /// The plan of `source`'s gradient by `wrt` (with the function value when `with_value`),
    /// the variables in `batched` batched, planned with `options`.
    fn plan_of(
        source: &str,
        wrt: &str,
        batched: &[&str],
        with_value: bool,
        options: PlanOptions,
    ) -> Plan {
        let p = check_program(source).unwrap();
        let d = differentiate(p, wrt, &Request::Derivative, Layout::Gradient).unwrap();
        let g = &d.program.graph;
        let flags: Vec<bool> = g
            .vars
            .iter()
            .map(|v| batched.contains(&v.name.as_str()))
            .collect();
        let sizes = crate::verify::dimension_sizes(g);
        let outputs = if with_value {
            vec![d.node, d.program.root]
        } else {
            vec![d.node]
        };
        Plan::with_options(g, &outputs, &sizes, &flags, options).unwrap()
    }

    /// The gradient and the function value, planned as `Plan::new` plans them.
    fn gradient_plan(source: &str, wrt: &str, batched: &[&str]) -> Plan {
        plan_of(source, wrt, batched, true, PlanOptions::default())
    }

    #[test]
    fn products_with_a_diagonal_factor_are_planned_as_scalings() {
        // The gradient of x'*diag(d)*A*x by x reads diag(d)*A and A'*diag(d): no step may be
        // a dense product with a diagonal matrix, and the values are the reference's.
        let source = "A: matrix(5,5); d: vector(5); x: vector(5); x'*diag(d)*A*x";
        let plan = gradient_plan(source, "x", &["x", "d"]);
        for step in plan.steps() {
            if let Node::MatMul(..) = step.node {
                for &arg in &step.args {
                    assert!(
                        !matches!(plan.steps()[arg].node, Node::Diag(_)),
                        "a dense product with diag(...) in {:?}",
                        plan.steps()
                    );
                }
            }
        }
        let p = check_program(source).unwrap();
        let d = differentiate(p, "x", &Request::Derivative, Layout::Gradient).unwrap();
        let g = &d.program.graph;
        let env = crate::eval::Env {
            dim_sizes: crate::verify::dimension_sizes(g),
            values: g
                .vars
                .iter()
                .enumerate()
                .map(|(k, v)| {
                    let (r, c) = (
                        if v.shape.rows == crate::expr::Dim::One {
                            1
                        } else {
                            5
                        },
                        if v.shape.cols == crate::expr::Dim::One {
                            1
                        } else {
                            5
                        },
                    );
                    Some(crate::eval::Mat::from_fn(r, c, |i, j| {
                        ((k * 7 + i * 3 + j) as f64).sin()
                    }))
                })
                .collect(),
        };
        let want = crate::eval::evaluate(g, d.node, &env).unwrap();
        let inputs: Vec<crate::batch::Batch<f64>> = plan
            .inputs()
            .iter()
            .map(|i| {
                let m = env.values[i.var as usize].as_ref().unwrap();
                crate::batch::Batch {
                    batch: i.batched.then_some(1),
                    rows: m.rows,
                    cols: m.cols,
                    data: m.data.clone(),
                }
            })
            .collect();
        let refs: Vec<&crate::batch::Batch<f64>> = inputs.iter().collect();
        let got = crate::batch::run_reference(&plan, &refs, 1);
        let err: f64 = got[0]
            .data
            .iter()
            .zip(&want.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(err < 1e-12, "{err:e}");
    }

    #[test]
    fn shared_work_is_hoisted() {
        // (C+C')*X*a*a' with C and a shared: C+C' and a*a' are computed once per batch.
        let plan = gradient_plan(
            "C: matrix(4,4); X: matrix(4,4); a: vector(4); a'*X'*C*X*a",
            "X",
            &["X"],
        );
        let shared_sums = plan
            .steps()
            .iter()
            .filter(|s| matches!(s.node, Node::Add(..)) && !s.batched)
            .count();
        assert_eq!(shared_sums, 1, "C+C' is one shared step");
        let cost = plan.cost();
        assert!(cost.flops_shared > 0.0 && cost.flops_per_item > 0.0);
    }

    #[test]
    fn common_subexpressions_are_one_step() {
        let plan = gradient_plan(
            "A: matrix(3,2); x: vector(2); b: vector(3); (A*x+b)'*(A*x+b)",
            "x",
            &["x"],
        );
        let products = plan
            .steps()
            .iter()
            .filter(|s| matches!(s.node, Node::MatMul(..)) && s.rows == 3 && s.cols == 1)
            .count();
        assert_eq!(
            products, 1,
            "A*x is computed once for the value and the gradient"
        );
    }

    #[test]
    fn cost_counts_matrix_products() {
        let plan = gradient_plan(
            "A: matrix(64,64); x: vector(64); b: vector(64); (A*x+b)'*(A*x+b)",
            "x",
            &["x"],
        );
        let cost = plan.cost();
        // At least A*x and A'*(...) per item: 2 * 2*64*64 operations.
        assert!(cost.flops_per_item >= 4.0 * 64.0 * 64.0, "{cost:?}");
        // x in, gradient out per item; A and b shared.
        assert_eq!(cost.bytes_per_item, 4.0 * (64.0 + 64.0 + 1.0));
        assert_eq!(cost.bytes_shared, 4.0 * (64.0 * 64.0 + 64.0));
    }

    /// The gradient by `x` alone (no function value), planned with `options`.
    fn gradient_only(source: &str, batched: &[&str], options: PlanOptions) -> Plan {
        plan_of(source, "x", batched, false, options)
    }

    #[test]
    fn shared_factors_are_distributed_only_when_cheaper() {
        let source = "A: matrix(16,16); x: vector(16); b: vector(16); (A*x+b)'*(A*x+b)";
        let shared = gradient_only(source, &["x"], PlanOptions::default());
        assert!(shared.rewritten().is_some(), "A'*A and A'*b once per batch");
        // One 16×16 product per item instead of two.
        assert_eq!(shared.cost().flops_per_item, 2.0 * 256.0 + 16.0 + 16.0);
        let per_item = gradient_only(source, &["A", "x", "b"], PlanOptions::default());
        assert!(per_item.rewritten().is_none(), "A'*A per item costs more");
        // With the function value also wanted, A*x+b is computed anyway: not distributed.
        assert!(gradient_plan(source, "x", &["x"]).rewritten().is_none());

        // The rewritten plan computes the same values (float64, both forms).
        let plain = gradient_only(source, &["x"], PlanOptions { distribute: false });
        assert!(plain.rewritten().is_none());
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
        let inputs: Vec<crate::batch::Batch<f64>> = shared
            .inputs()
            .iter()
            .map(|i| {
                let items = if i.batched { 7 } else { 1 };
                crate::batch::Batch {
                    batch: i.batched.then_some(7),
                    rows: i.rows,
                    cols: i.cols,
                    data: (0..items * i.rows * i.cols)
                        .map(|_| crate::verify::normal(&mut rng))
                        .collect(),
                }
            })
            .collect();
        let refs: Vec<&crate::batch::Batch<f64>> = inputs.iter().collect();
        let a = crate::batch::run_reference(&shared, &refs, 7);
        let b = crate::batch::run_reference(&plain, &refs, 7);
        assert_eq!(a[0].data.len(), 7 * 16);
        for (x, y) in a[0].data.iter().zip(&b[0].data) {
            assert!((x - y).abs() <= 1e-9 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}
