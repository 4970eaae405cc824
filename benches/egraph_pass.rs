//! An experiment that decides whether matgrad's simplifier should gain an e-graph pass (issue
//! 18): egg, run after the canonicalizer, on the derivatives of `benches/printed_lengths.rs`.
//!
//! In: a node limit and a time limit per derivative (`cargo bench --bench egraph_pass --
//! [--nodes N] [--seconds S] [--show]`). Out, on stdout, per set (the seed catalog, 500 random
//! gradients, 500 random Hessians): printed characters with the canonicalizer alone and with
//! the e-graph's form wherever that prints shorter, how many got shorter, and the e-graph's
//! time. `--show` prints each shorter form under the canonical one.
//!
//! The e-graph sees sums, products, quotients, negations, transposes and numbers; every other
//! operation is an opaque node whose arguments it still rewrites. Its 34 rules: `+`
//! commutative and associative; products associative (only where the regrouped product is
//! well-shaped: `(x'*y)*A` is a scalar times `A`, but `x'*(y*A)` is ill-shaped); scalars
//! commute; distribution and factoring both ways; transposes of products and sums; negation;
//! like terms with constants folded; quotients. The cost is an estimate of the printed length
//! (egg's costs add up over the tree); the comparison uses the real printed text. Each new
//! form is evaluated against the canonical one at three random points; a mismatch is counted
//! (and shown with `--show`): forms that cancel to 0 differ by rounding alone.
//!
//! Not part of matgrad: egg is a dev-dependency, and CI only compiles this.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use egg::{rewrite as rw, *};
use matgrad::catalog::CASES;
use matgrad::diff::{differentiate, Layout, Request};
use matgrad::eval::evaluate;
use matgrad::expr::{Graph, Id as MId, Node, Shape};
use matgrad::generate::{random_program, Class};
use matgrad::types::check_program;
use matgrad::verify::{dimension_sizes, random_point, relative_error};

/// A number of the e-graph's language: a float64 by its bits (so that it hashes and orders).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct C(u64);
impl fmt::Display for C {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{:?}", f64::from_bits(self.0))
    }
}
impl FromStr for C {
    type Err = ();
    fn from_str(s: &str) -> Result<C, ()> {
        // Leaves are `n<id>` and opaque operations `o<id>`; "inf" and "nan" would parse.
        if s.starts_with('n') || s.starts_with('o') || s.starts_with('i') {
            return Err(());
        }
        s.parse::<f64>().map(|v| C(v.to_bits())).map_err(|_| ())
    }
}

define_language! {
    pub enum M {
        "+" = Add([Id; 2]),
        "*" = Mul([Id; 2]),
        "/" = Div([Id; 2]),
        "neg" = Neg(Id),
        "'" = T(Id),
        Num(C),
        Sym(Symbol),
        Other(Symbol, Vec<Id>),
    }
}

/// What the analysis knows of an e-class: its shape, and its value when it is a number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct D {
    shape: Shape,
    value: Option<f64>,
}

/// The side tables: each leaf's shape and printed length; each opaque operation's template.
#[derive(Default)]
pub struct Info {
    leaf_shape: HashMap<Symbol, Shape>,
    leaf_len: HashMap<Symbol, usize>,
    op_node: HashMap<Symbol, (Node, Shape, Style)>,
}

/// How an opaque operation prints: a named function, or an infix operator of that length.
#[derive(Clone, Copy, Debug)]
enum Style {
    Prefix(usize),
    Infix(usize),
}

impl Analysis<M> for Info {
    type Data = D;
    fn make(egraph: &mut EGraph<M, Info>, enode: &M) -> D {
        let d = |i: &Id| egraph[*i].data;
        match enode {
            M::Num(c) => D {
                shape: Shape::SCALAR,
                value: Some(f64::from_bits(c.0)),
            },
            M::Sym(s) => D {
                shape: egraph.analysis.leaf_shape[s],
                value: None,
            },
            M::Add([a, b]) => D {
                shape: d(a).shape,
                value: d(a).value.zip(d(b).value).map(|(x, y)| x + y),
            },
            M::Mul([a, b]) => {
                let (sa, sb) = (d(a).shape, d(b).shape);
                let shape = if sa.is_scalar() {
                    sb
                } else if sb.is_scalar() {
                    sa
                } else {
                    Shape::new(sa.rows, sb.cols)
                };
                D {
                    shape,
                    value: d(a).value.zip(d(b).value).map(|(x, y)| x * y),
                }
            }
            M::Div([a, b]) => D {
                shape: d(a).shape,
                value: d(a)
                    .value
                    .zip(d(b).value)
                    .filter(|(_, y)| *y != 0.0)
                    .map(|(x, y)| x / y),
            },
            M::Neg(a) => D {
                shape: d(a).shape,
                value: d(a).value.map(|x| -x),
            },
            M::T(a) => D {
                shape: d(a).shape.transposed(),
                value: d(a).value,
            },
            M::Other(tag, _) => D {
                shape: egraph.analysis.op_node[tag].1,
                value: None,
            },
        }
    }
    fn merge(&mut self, a: &mut D, b: D) -> DidMerge {
        if a.value.is_none() && b.value.is_some() {
            a.value = b.value;
            return DidMerge(true, false);
        }
        DidMerge(false, a.value.is_none() && b.value.is_some())
    }
    fn modify(egraph: &mut EGraph<M, Info>, id: Id) {
        if let Some(v) = egraph[id].data.value {
            if v.is_finite() && egraph[id].data.shape.is_scalar() {
                let added = egraph.add(M::Num(C(v.to_bits())));
                egraph.union(id, added);
            }
        }
    }
}

/// Rewrite conditions over the analysis's shapes and values.
fn scalar(var: &str) -> impl Fn(&mut EGraph<M, Info>, Id, &Subst) -> bool {
    let var = var.parse().unwrap();
    move |egraph, _, subst| egraph[subst[var]].data.shape.is_scalar()
}
fn either_scalar(a: &str, b: &str) -> impl Fn(&mut EGraph<M, Info>, Id, &Subst) -> bool {
    let (a, b): (egg::Var, egg::Var) = (a.parse().unwrap(), b.parse().unwrap());
    move |egraph, _, subst| {
        egraph[subst[a]].data.shape.is_scalar() || egraph[subst[b]].data.shape.is_scalar()
    }
}
fn constant(var: &str) -> impl Fn(&mut EGraph<M, Info>, Id, &Subst) -> bool {
    let var = var.parse().unwrap();
    move |egraph, _, subst| egraph[subst[var]].data.value.is_some()
}

/// The shape of `a*b` under matgrad's rules (a 1x1 side scales), or None when ill-shaped.
fn mul_shape(a: Shape, b: Shape) -> Option<Shape> {
    if a.is_scalar() {
        Some(b)
    } else if b.is_scalar() {
        Some(a)
    } else if a.cols == b.rows {
        Some(Shape::new(a.rows, b.cols))
    } else {
        None
    }
}

/// `a*(b*c)` is well-shaped.
fn reassoc_ok(a: &str, b: &str, c: &str) -> impl Fn(&mut EGraph<M, Info>, Id, &Subst) -> bool {
    let (a, b, c): (egg::Var, egg::Var, egg::Var) =
        (a.parse().unwrap(), b.parse().unwrap(), c.parse().unwrap());
    move |egraph, _, subst| {
        let s = |v: egg::Var| egraph[subst[v]].data.shape;
        mul_shape(s(b), s(c))
            .and_then(|bc| mul_shape(s(a), bc))
            .is_some()
    }
}
/// `(a*b)*c` is well-shaped.
fn reassoc_left_ok(a: &str, b: &str, c: &str) -> impl Fn(&mut EGraph<M, Info>, Id, &Subst) -> bool {
    let (a, b, c): (egg::Var, egg::Var, egg::Var) =
        (a.parse().unwrap(), b.parse().unwrap(), c.parse().unwrap());
    move |egraph, _, subst| {
        let s = |v: egg::Var| egraph[subst[v]].data.shape;
        mul_shape(s(a), s(b))
            .and_then(|ab| mul_shape(ab, s(c)))
            .is_some()
    }
}
fn same_shape(a: &str, b: &str) -> impl Fn(&mut EGraph<M, Info>, Id, &Subst) -> bool {
    let (a, b): (egg::Var, egg::Var) = (a.parse().unwrap(), b.parse().unwrap());
    move |egraph, _, subst| egraph[subst[a]].data.shape == egraph[subst[b]].data.shape
}

fn rules() -> Vec<Rewrite<M, Info>> {
    vec![
        rw!("comm-add"; "(+ ?a ?b)" => "(+ ?b ?a)"),
        rw!("assoc-add"; "(+ (+ ?a ?b) ?c)" => "(+ ?a (+ ?b ?c))"),
        rw!("assoc-add-r"; "(+ ?a (+ ?b ?c))" => "(+ (+ ?a ?b) ?c)"),
        rw!("assoc-mul"; "(* (* ?a ?b) ?c)" => "(* ?a (* ?b ?c))" if reassoc_ok("?a", "?b", "?c")),
        rw!("assoc-mul-r"; "(* ?a (* ?b ?c))" => "(* (* ?a ?b) ?c)" if reassoc_left_ok("?a", "?b", "?c")),
        rw!("comm-mul-scalar"; "(* ?a ?b)" => "(* ?b ?a)" if either_scalar("?a", "?b")),
        rw!("dist-l"; "(* ?a (+ ?b ?c))" => "(+ (* ?a ?b) (* ?a ?c))"),
        rw!("dist-r"; "(* (+ ?a ?b) ?c)" => "(+ (* ?a ?c) (* ?b ?c))"),
        rw!("factor-l"; "(+ (* ?a ?b) (* ?a ?c))" => "(* ?a (+ ?b ?c))" if same_shape("?b", "?c")),
        rw!("factor-r"; "(+ (* ?a ?c) (* ?b ?c))" => "(* (+ ?a ?b) ?c)" if same_shape("?a", "?b")),
        rw!("t-mul"; "(' (* ?a ?b))" => "(* (' ?b) (' ?a))"),
        rw!("t-mul-r"; "(* (' ?b) (' ?a))" => "(' (* ?a ?b))" if reassoc_ok("?a", "?b", "?b")),
        rw!("t-add"; "(' (+ ?a ?b))" => "(+ (' ?a) (' ?b))"),
        rw!("t-add-r"; "(+ (' ?a) (' ?b))" => "(' (+ ?a ?b))"),
        rw!("t-t"; "(' (' ?a))" => "?a"),
        rw!("t-scalar"; "(' ?a)" => "?a" if scalar("?a")),
        rw!("t-neg"; "(' (neg ?a))" => "(neg (' ?a))"),
        rw!("neg-mul-l"; "(* (neg ?a) ?b)" => "(neg (* ?a ?b))"),
        rw!("neg-mul-r"; "(* ?a (neg ?b))" => "(neg (* ?a ?b))"),
        rw!("neg-out-l"; "(neg (* ?a ?b))" => "(* (neg ?a) ?b)"),
        rw!("neg-neg"; "(neg (neg ?a))" => "?a"),
        rw!("neg-add"; "(neg (+ ?a ?b))" => "(+ (neg ?a) (neg ?b))"),
        rw!("neg-add-r"; "(+ (neg ?a) (neg ?b))" => "(neg (+ ?a ?b))"),
        rw!("neg-is-times"; "(neg ?a)" => "(* -1.0 ?a)"),
        rw!("times-minus-one"; "(* -1.0 ?a)" => "(neg ?a)"),
        rw!("like-2"; "(+ ?a ?a)" => "(* 2.0 ?a)"),
        rw!("like-k1"; "(+ (* ?k ?a) ?a)" => "(* (+ ?k 1.0) ?a)" if constant("?k")),
        rw!("like-kl"; "(+ (* ?k ?a) (* ?l ?a))" => "(* (+ ?k ?l) ?a)" if constant("?k") if scalar("?l")),
        rw!("one-times"; "(* 1.0 ?a)" => "?a"),
        rw!("div-mul"; "(/ (* ?a ?b) ?s)" => "(* ?a (/ ?b ?s))"),
        rw!("div-mul-r"; "(* ?a (/ ?b ?s))" => "(/ (* ?a ?b) ?s)"),
        rw!("div-add"; "(+ (/ ?a ?s) (/ ?b ?s))" => "(/ (+ ?a ?b) ?s)"),
        rw!("div-add-r"; "(/ (+ ?a ?b) ?s)" => "(+ (/ ?a ?s) (/ ?b ?s))"),
    ]
}

/// An estimate of the printed length: characters, then nodes, with the precedence of the
/// chosen form (0 atom, 1 product, 2 sum) for parentheses.
struct PrintedLength<'a>(&'a Info);
impl CostFunction<M> for PrintedLength<'_> {
    /// (characters, nodes, precedence: 0 atom, 1 product, 2 sum)
    type Cost = (usize, usize, u8);
    fn cost<F>(&mut self, enode: &M, mut costs: F) -> Self::Cost
    where
        F: FnMut(Id) -> Self::Cost,
    {
        let paren = |c: (usize, usize, u8), at: u8| if c.2 >= at { 2 } else { 0 };
        match enode {
            M::Num(c) => {
                let v = f64::from_bits(c.0);
                (matgrad::print::number(v).len(), 1, 0)
            }
            M::Sym(s) => (self.0.leaf_len[s], 1, 0),
            M::Add([a, b]) => {
                let (x, y) = (costs(*a), costs(*b));
                (x.0 + y.0 + 1, x.1 + y.1 + 1, 2)
            }
            M::Mul([a, b]) => {
                let (x, y) = (costs(*a), costs(*b));
                (x.0 + y.0 + 1 + paren(x, 2) + paren(y, 2), x.1 + y.1 + 1, 1)
            }
            M::Div([a, b]) => {
                let (x, y) = (costs(*a), costs(*b));
                (x.0 + y.0 + 1 + paren(x, 2) + paren(y, 1), x.1 + y.1 + 1, 1)
            }
            M::Neg(a) => {
                let x = costs(*a);
                (x.0 + 1 + paren(x, 2), x.1 + 1, 1)
            }
            M::T(a) => {
                let x = costs(*a);
                (x.0 + 1 + paren(x, 1), x.1 + 1, 0)
            }
            M::Other(tag, args) => {
                let cs: Vec<_> = args.iter().map(|a| costs(*a)).collect();
                let inner: usize = cs.iter().map(|c| c.0).sum();
                let nodes: usize = cs.iter().map(|c| c.1).sum::<usize>() + 1;
                match self.0.op_node[tag].2 {
                    Style::Prefix(n) => (n + 2 + inner + args.len().saturating_sub(1), nodes, 0),
                    Style::Infix(n) => {
                        let p: usize = cs.iter().map(|c| paren(*c, 1)).sum();
                        (inner + n + p, nodes, 1)
                    }
                }
            }
        }
    }
}

/// `node` with its arguments replaced by `a`.
fn with_args(node: Node, a: &[MId]) -> Node {
    match node {
        Node::Hadamard(..) => Node::Hadamard(a[0], a[1]),
        Node::ElemDiv(..) => Node::ElemDiv(a[0], a[1]),
        Node::Pow(..) => Node::Pow(a[0], a[1]),
        Node::ElemPow(..) => Node::ElemPow(a[0], a[1]),
        Node::MatPow(_, k) => Node::MatPow(a[0], k),
        Node::Map(f, _) => Node::Map(f, a[0]),
        Node::Sum(_) => Node::Sum(a[0]),
        Node::Norm1(_) => Node::Norm1(a[0]),
        Node::Norm2(_) => Node::Norm2(a[0]),
        Node::Trace(_) => Node::Trace(a[0]),
        Node::Det(_) => Node::Det(a[0]),
        Node::LogDet(_) => Node::LogDet(a[0]),
        Node::Inv(_) => Node::Inv(a[0]),
        Node::Diag(_) => Node::Diag(a[0]),
        Node::DiagPart(_) => Node::DiagPart(a[0]),
        other => panic!("not an opaque operation: {other:?}"),
    }
}

/// The matgrad DAG under `root` as a RecExpr, with its side tables.
fn to_egg(g: &Graph, root: MId, info: &mut Info) -> RecExpr<M> {
    let mut expr = RecExpr::default();
    let mut at: HashMap<MId, Id> = HashMap::new();
    for id in g.topo_order(root) {
        let node = g.node(id);
        let args: Vec<Id> = node.args().iter().map(|a| at[a]).collect();
        let m = match node {
            Node::Var(_) | Node::Fill(..) | Node::Eye(_) => {
                let s = Symbol::from(format!("n{}", id.0));
                info.leaf_shape.insert(s, g.shape(id));
                info.leaf_len.insert(s, matgrad::print::text(g, id).len());
                M::Sym(s)
            }
            Node::Const(c) => M::Num(C(c.get().to_bits())),
            Node::Add(..) => M::Add([args[0], args[1]]),
            Node::MatMul(..) | Node::Scale(..) => M::Mul([args[0], args[1]]),
            Node::Div(..) => M::Div([args[0], args[1]]),
            Node::Neg(_) => M::Neg(args[0]),
            Node::Transpose(_) => M::T(args[0]),
            other => {
                let s = Symbol::from(format!("o{}", id.0));
                let style = match other {
                    Node::Hadamard(..) | Node::ElemDiv(..) | Node::ElemPow(..) => Style::Infix(2),
                    Node::Pow(..) => Style::Infix(1),
                    Node::MatPow(_, k) => Style::Infix(1 + k.to_string().len()),
                    _ => Style::Prefix(other.op_name().len()),
                };
                info.op_node.insert(s, (other, g.shape(id), style));
                M::Other(s, args)
            }
        };
        at.insert(id, expr.add(m));
    }
    expr
}

/// The extracted form as nodes of `g`.
fn from_egg(g: &mut Graph, expr: &RecExpr<M>, info: &Info) -> MId {
    let mut ids: Vec<MId> = Vec::new();
    for node in expr.as_ref() {
        let a = |i: &Id| ids[usize::from(*i)];
        let id = match node {
            M::Num(c) => g.constant(f64::from_bits(c.0)),
            M::Sym(s) => MId(s.as_str()[1..].parse().unwrap()),
            M::Add([x, y]) => g.add(a(x), a(y)),
            M::Mul([x, y]) => g.mul(a(x), a(y)),
            M::Div([x, y]) => g.div(a(x), a(y)),
            M::Neg(x) => g.neg(a(x)),
            M::T(x) => g.transpose(a(x)),
            M::Other(tag, args) => {
                let args: Vec<MId> = args.iter().map(a).collect();
                let node = with_args(info.op_node[tag].0, &args);
                g.push(node)
            }
        };
        ids.push(id);
    }
    *ids.last().unwrap()
}

struct Outcome {
    before: usize,
    after: usize,
    time: Duration,
    saturated: bool,
    mismatch: bool,
}

struct Settings {
    nodes: usize,
    seconds: f64,
    show: bool,
}

/// Derives `source`, runs the e-graph on the result, and compares.
fn run(
    source: &str,
    wrt: &str,
    hessian: bool,
    layout: Layout,
    settings: &Settings,
) -> Option<Outcome> {
    let request = if hessian {
        Request::Hessian
    } else {
        Request::Derivative
    };
    let program = check_program(source).ok()?;
    let mut d = differentiate(program, wrt, &request, layout).ok()?;
    let before_text = d.text();
    let g = &mut d.program.graph;
    let start = Instant::now();
    let mut info = Info::default();
    let expr = to_egg(g, d.node, &mut info);
    let runner = Runner::<M, Info>::new(info)
        .with_expr(&expr)
        .with_node_limit(settings.nodes)
        .with_iter_limit(30)
        .with_time_limit(Duration::from_secs_f64(settings.seconds))
        .run(&rules());
    let saturated = matches!(runner.stop_reason, Some(StopReason::Saturated));
    let root = runner.roots[0];
    let (_, best) =
        Extractor::new(&runner.egraph, PrintedLength(&runner.egraph.analysis)).find_best(root);
    let new_root = from_egg(g, &best, &runner.egraph.analysis);
    let time = start.elapsed();
    let after_text = matgrad::print::text(g, new_root);
    let sizes = dimension_sizes(g);
    let mismatch = (1..=3).any(|seed| {
        let env = random_point(g, &sizes, seed);
        match (evaluate(g, d.node, &env), evaluate(g, new_root, &env)) {
            (Ok(x), Ok(y)) => x.is_finite() && y.is_finite() && relative_error(&y, &x) > 1e-8,
            _ => false,
        }
    });
    let shorter = after_text.len() < before_text.len();
    if settings.show && (shorter || mismatch) {
        let note = if mismatch { " (values differ)" } else { "" };
        println!("d/d{wrt} {source}{note}\n    {before_text}\n -> {after_text}");
    }
    Some(Outcome {
        before: before_text.len(),
        after: after_text.len().min(before_text.len()),
        time,
        saturated,
        mismatch,
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let settings = Settings {
        nodes: value("--nodes").unwrap_or(10_000.0) as usize,
        seconds: value("--seconds").unwrap_or(1.0),
        show: args.iter().any(|a| a == "--show"),
    };
    let mut sets: Vec<(&str, Vec<Outcome>)> = Vec::new();
    let mut catalog = Vec::new();
    for case in CASES {
        let source = format!("{} {}", case.decls, case.function);
        if let Some(o) = run(&source, case.wrt, case.hessian, case.layout, &settings) {
            catalog.push(o);
        }
    }
    sets.push(("catalog", catalog));
    for hessian in [false, true] {
        let mut out = Vec::new();
        let mut seed = 0u64;
        while out.len() < 500 && seed < 100_000 {
            seed += 1;
            let g = random_program(seed, 1 + (seed % 5) as usize, Class::Scalar);
            if let Some(o) = run(&g.source, &g.wrt, hessian, Layout::Gradient, &settings) {
                out.push(o);
            }
        }
        sets.push((
            if hessian {
                "random Hessians"
            } else {
                "random gradients"
            },
            out,
        ));
    }
    for (name, outs) in &sets {
        let before: usize = outs.iter().map(|o| o.before).sum();
        let after: usize = outs.iter().map(|o| o.after).sum();
        let shorter = outs.iter().filter(|o| o.after < o.before).count();
        let mut times: Vec<f64> = outs.iter().map(|o| o.time.as_secs_f64() * 1e3).collect();
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let total: f64 = times.iter().sum();
        let saturated = outs.iter().filter(|o| o.saturated).count();
        let mismatches = outs.iter().filter(|o| o.mismatch).count();
        println!(
            "{name:18} {} derivatives: {before} -> {after} characters ({:+.1}%), {shorter} shorter; \
             e-graph time total {total:.0} ms, median {:.2} ms, max {:.0} ms; {saturated} saturated; \
             {mismatches} values differ",
            outs.len(),
            100.0 * (after as f64 - before as f64) / before as f64,
            times[times.len() / 2],
            times[times.len() - 1]
        );
    }
}
