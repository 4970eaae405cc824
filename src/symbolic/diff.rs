//! Stage 3: expression → derivative expression.
//!
//! In: a [`Program`] and the name of the variable to differentiate by. Out: a
//! [`Derivative`]: a node of the program's graph, simplified, with its layout. The
//! differentiation rules are one table, [`RULES`]: for each operation a reverse-mode rule
//! (the adjoint `G` of the output is pulled back to each argument) and a forward-mode rule
//! (tangents pushed through), each with a worked example that the tests check by name.
//!
//! What is supported, and how:
//! - scalar by scalar, vector or matrix: reverse mode, the gradient has the variable's shape;
//! - vector (or row vector) by vector: the Jacobian, as the matrix `M` with
//!   `grad_x(y'*u) = M*u` for a fresh vector `u` (extracted by [`linear`]);
//! - anything by a scalar: forward mode, the derivative has the expression's shape;
//! - Hessian of a scalar by a vector: the Jacobian of the gradient; Hessian-vector products
//!   as `grad_x(grad_x(f)'*v)`.
//!
//! Invariants: the raw derivative is exact (no rule approximates); every derivative is passed
//! through [`simplify`](crate::simplify::simplify) before it is returned; what cannot be
//! expressed in closed form (a matrix by a matrix, a Hessian by a matrix) is a typed error.

pub mod linear;

use std::collections::HashMap;

use crate::diagnostic::Diagnostic;
use crate::expr::{Dim, Func, Graph, Id, Node, Shape, Var};
use crate::simplify::simplify;
use crate::types::{Program, LETTER_RULE};

/// The layout convention of a derivative.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// The derivative of a scalar by `X` has the shape of `X`; the Jacobian of `y` by `x`
    /// has entry `(i,j) = dy_j/dx_i` (denominator layout).
    Gradient,
    /// The transpose of the above: a scalar by a column vector is a row; `d(A*x)/dx = A`.
    Numerator,
}

impl Layout {
    pub fn from_name(name: &str) -> Option<Layout> {
        match name {
            "gradient" | "denominator" => Some(Layout::Gradient),
            "numerator" => Some(Layout::Numerator),
            _ => None,
        }
    }
}

/// What to compute.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The first derivative (gradient, Jacobian or derivative by a scalar, by shapes).
    Derivative,
    /// The Hessian of a scalar by a vector or scalar variable.
    Hessian,
    /// The Hessian times a new vector variable of this name.
    HessianTimes(String),
}

/// Which first derivative a program and a variable call for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gradient,
    Jacobian,
    ByScalar,
    Hessian,
    HessianVector,
}

/// A derived formula: a simplified node of the program's graph.
#[derive(Clone, Debug)]
pub struct Derivative {
    pub program: Program,
    pub node: Id,
    pub wrt: u32,
    pub kind: Kind,
    pub layout: Layout,
    /// The simplifier's rules ([`crate::simplify::FAMILIES`]) that shaped the printed form,
    /// in the order of their first application.
    pub simplified_by: Vec<&'static str>,
}

impl Derivative {
    pub fn shape(&self) -> Shape {
        self.program.graph.shape(self.node)
    }

    pub fn text(&self) -> String {
        crate::print::text(&self.program.graph, self.node)
    }
}

/// When the program's result is not a scalar and some of its variables took their kinds from
/// their first letters (`a'*X*b`: `a` and `b` are scalars there), says so and how to declare
/// them, since that, not the formula, is the usual reason; `None` when no variable did.
fn letter_kinds_help(g: &Graph, typed_by_letter: &[bool], source: &str) -> Option<String> {
    let by_letter: Vec<&Var> = g
        .vars
        .iter()
        .zip(typed_by_letter)
        .filter_map(|(v, &by_letter)| by_letter.then_some(v))
        .collect();
    if by_letter.is_empty() {
        return None;
    }
    let list = |names: &[String]| match names {
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
        [] => String::new(),
    };
    let named: Vec<String> = by_letter
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let verb = if i == 0 { "is " } else { "" };
            format!("`{}` {verb}a {}", v.name, g.describe_shape(v.shape))
        })
        .collect();
    // Scalars by letter are usually vectors meant (`a'*X*b`): the example declares them so.
    let scalars: Vec<String> = by_letter
        .iter()
        .filter(|v| v.shape.is_scalar())
        .map(|v| format!("{}: vector; ", v.name))
        .collect();
    let example = if scalars.is_empty() {
        String::new()
    } else {
        format!(", e.g. `{}{}`", scalars.concat(), source.trim())
    };
    Some(format!(
        "by first letter ({LETTER_RULE}), {}; declare what they are{example}",
        list(&named)
    ))
}

/// Differentiates a checked program by the variable named `wrt`.
pub fn differentiate(
    program: Program,
    wrt: &str,
    request: &Request,
    layout: Layout,
) -> Result<Derivative, Diagnostic> {
    let (derived, simplified_by) =
        crate::simplify::rules_applied(|| derive(program, wrt, request, layout));
    derived.map(|d| Derivative { simplified_by, ..d })
}

/// [`differentiate`], but for the rules it applied.
fn derive(
    mut program: Program,
    wrt: &str,
    request: &Request,
    layout: Layout,
) -> Result<Derivative, Diagnostic> {
    let var = find_var(&program, wrt)?;
    let g = &mut program.graph;
    let root = program.root;
    let var_shape = g.vars[var as usize].shape;
    let root_shape = g.shape(root);
    let (raw, kind) = match request {
        Request::Derivative => {
            if root_shape.is_scalar() {
                (gradient(g, root, var), Kind::Gradient)
            } else if var_shape.is_scalar() {
                (tangent(g, root, var), Kind::ByScalar)
            } else if (root_shape.is_column() || root_shape.is_row()) && var_shape.is_column() {
                let j = jacobian(g, root, var).map_err(|e| unsupported(&e))?;
                (j, Kind::Jacobian)
            } else {
                let help = letter_kinds_help(g, &program.typed_by_letter, &program.source)
                    .unwrap_or_else(|| {
                        "differentiate a scalar (e.g. sum(...), tr(...) or u'*(...)) instead".into()
                    });
                return Err(Diagnostic::without_span(format!(
                    "the derivative of a {} by a {} is a higher-order tensor, which matgrad does not support",
                    g.describe_shape(root_shape),
                    g.describe_shape(var_shape)
                ))
                .with_help(help));
            }
        }
        Request::Hessian | Request::HessianTimes(_) => {
            if !root_shape.is_scalar() {
                let error = Diagnostic::without_span(format!(
                    "a Hessian needs a scalar expression, but this one is a {}",
                    g.describe_shape(root_shape)
                ));
                return Err(
                    match letter_kinds_help(g, &program.typed_by_letter, &program.source) {
                        Some(help) => error.with_help(help),
                        None => error,
                    },
                );
            }
            if !(var_shape.is_column() || var_shape.is_scalar()) {
                return Err(Diagnostic::without_span(format!(
                    "a Hessian by a {} is a 4-tensor, which matgrad does not support; differentiate by a vector or a scalar",
                    g.describe_shape(var_shape)
                )));
            }
            let grad = gradient(g, root, var);
            let grad = simplify(g, grad);
            match request {
                Request::HessianTimes(name) => {
                    crate::parse::check_variable_name(name).map_err(Diagnostic::without_span)?;
                    if g.dims.iter().any(|d| d.name == *name) {
                        return Err(Diagnostic::without_span(format!(
                            "`{name}` is a dimension of the program; name a new vector for the Hessian-vector product"
                        )));
                    }
                    if g.var_by_name(name).is_some() {
                        return Err(Diagnostic::without_span(format!(
                            "`{name}` is already a variable of the program; name a new vector for the Hessian-vector product"
                        )));
                    }
                    let v = g.add_var(Var {
                        name: name.clone(),
                        shape: var_shape,
                        symmetric: false,
                        positive_definite: false,
                    });
                    let v_node = g.var(v);
                    let gt = g.transpose(grad);
                    let inner = g.mul(gt, v_node);
                    (gradient(g, inner, var), Kind::HessianVector)
                }
                _ => {
                    let h = if var_shape.is_scalar() {
                        gradient(g, grad, var)
                    } else {
                        jacobian(g, grad, var).map_err(|e| unsupported(&e))?
                    };
                    (h, Kind::Hessian)
                }
            }
        }
    };
    let mut node = simplify(g, raw);
    if g.vars[var as usize].symmetric && kind == Kind::Gradient {
        // The gradient on the space of symmetric matrices: sym(G) = (G + G')/2.
        let t = g.transpose(node);
        let s = g.add(node, t);
        let half = g.scale(0.5, s);
        node = simplify(g, half);
    }
    let transposes = layout == Layout::Numerator
        && matches!(kind, Kind::Gradient | Kind::Jacobian | Kind::HessianVector);
    if transposes {
        let t = g.transpose(node);
        node = simplify(g, t);
    }
    if let Some(u) = g.underflow {
        return Err(Diagnostic::without_span(format!(
            "the derivative's constants underflow: {u}, below float64's normal range \
             (about 2.2e-308), so a term would silently be zero; rescale the program's constants"
        )));
    }
    if let Some(v) = g.non_finite_constant(node) {
        return Err(Diagnostic::without_span(format!(
            "the derivative has a constant {v}, past float64's range (about 1.8e308); \
             rescale the program's constants"
        )));
    }
    Ok(Derivative {
        program,
        node,
        wrt: var,
        kind,
        layout,
        simplified_by: Vec::new(),
    })
}

fn unsupported(reason: &str) -> Diagnostic {
    Diagnostic::without_span(format!("no closed form: {reason}"))
}

fn find_var(program: &Program, wrt: &str) -> Result<u32, Diagnostic> {
    let names: Vec<String> = program.graph.vars.iter().map(|v| v.name.clone()).collect();
    let Some(var) = program.var_index(wrt) else {
        let help = if names.is_empty() {
            "the expression has no variables: it is a constant".to_string()
        } else {
            format!("the variables are: {}", names.join(", "))
        };
        return Err(Diagnostic::without_span(format!(
            "`--wrt {wrt}`: there is no variable `{wrt}` in the expression"
        ))
        .with_help(help));
    };
    // A declared variable the expression does not depend on is differentiated like any
    // other: its derivative is zero, of the derivative's shape.
    Ok(var)
}

/// One differentiation rule: the operation, its reverse- and forward-mode rules in words,
/// and an example whose derivative the tests check against finite differences and this text.
pub struct Rule {
    pub name: &'static str,
    pub operation: &'static str,
    /// With `G` the adjoint of the output `Y`: what each argument receives.
    pub reverse: &'static str,
    /// With `dA` the tangent of each argument: the output's tangent.
    pub forward: &'static str,
    /// (program, variable, expected derivative in gradient layout).
    pub example: (&'static str, &'static str, &'static str),
}

/// Every rule, one per operation of [`Node`].
pub static RULES: &[Rule] = &[
    Rule {
        name: "add",
        operation: "A + B",
        reverse: "A += G; B += G",
        forward: "dA + dB",
        example: ("x: vector; y: vector; x'*(x + y)", "y", "x"),
    },
    Rule {
        name: "neg",
        operation: "-A",
        reverse: "A += -G",
        forward: "-dA",
        example: ("x: vector; a: vector; -(a'*x)", "x", "-a"),
    },
    Rule {
        name: "matmul",
        operation: "A*B",
        reverse: "A += G*B'; B += A'*G",
        forward: "dA*B + A*dB",
        example: ("a: vector; b: vector; a'*X*b", "X", "a*b'"),
    },
    Rule {
        name: "scale",
        operation: "s*A (s scalar)",
        reverse: "s += <G, A>; A += s*G",
        forward: "ds*A + s*dA",
        example: ("s: scalar; x: vector; a: vector; s*(a'*x)", "s", "a'*x"),
    },
    Rule {
        name: "div",
        operation: "A/s",
        reverse: "A += G/s; s += -<G, A>/s^2",
        forward: "dA/s - A*ds/s^2",
        example: ("s: scalar; t: scalar; s/t", "t", "-s/t^2"),
    },
    Rule {
        name: "hadamard",
        operation: "A.*B",
        reverse: "A += G.*B; B += G.*A",
        forward: "dA.*B + A.*dB",
        example: ("x: vector; y: vector; sum(x.*y)", "x", "y"),
    },
    Rule {
        name: "elemdiv",
        operation: "A./B",
        reverse: "A += G./B; B += -G.*A./B.^2",
        forward: "dA./B - A.*dB./B.^2",
        example: ("x: vector; y: vector; sum(x./y)", "x", "1./y"),
    },
    Rule {
        name: "pow",
        operation: "a^b (scalars)",
        reverse: "a += G*b*a^(b-1); b += G*a^b*log(a)",
        forward: "b*a^(b-1)*da + a^b*log(a)*db",
        example: ("s: scalar; s^3", "s", "3*s^2"),
    },
    Rule {
        name: "elempow",
        operation: "A.^B",
        reverse: "A += G.*B.*A.^(B-1); B += G.*A.^B.*log(A)",
        forward: "B.*A.^(B-1).*dA + A.^B.*log(A).*dB",
        example: ("x: vector; sum(x.^3)", "x", "3*x.^2"),
    },
    Rule {
        name: "matpow",
        operation: "A^k",
        reverse: "A += sum_r (A')^r*G*(A')^(k-1-r)",
        forward: "sum_r A^r*dA*A^(k-1-r)",
        example: ("X: matrix(n,n); tr(X^3)", "X", "3*X'^2"),
    },
    Rule {
        name: "transpose",
        operation: "A'",
        reverse: "A += G'",
        forward: "dA'",
        example: ("a: vector; b: vector; a'*X'*b", "X", "b*a'"),
    },
    Rule {
        name: "map",
        operation: "f(A) element-wise",
        reverse: "A += G.*f'(A)",
        forward: "f'(A).*dA",
        example: ("x: vector; sum(exp(x))", "x", "exp(x)"),
    },
    Rule {
        name: "sum",
        operation: "sum(A)",
        reverse: "A += G*ones",
        forward: "sum(dA)",
        example: ("x: vector; sum(x)", "x", "vector(1)"),
    },
    Rule {
        name: "norm1",
        operation: "norm1(A)",
        reverse: "A += G*sign(A)",
        forward: "sum(sign(A).*dA)",
        example: ("x: vector; norm1(x)", "x", "sign(x)"),
    },
    Rule {
        name: "norm2",
        operation: "norm2(A)",
        reverse: "A += G*A/norm2(A)",
        forward: "<A, dA>/norm2(A)",
        example: ("x: vector; norm2(x)", "x", "x/norm2(x)"),
    },
    Rule {
        name: "tr",
        operation: "tr(A)",
        reverse: "A += G*I",
        forward: "tr(dA)",
        example: ("X: matrix(n,n); tr(X)", "X", "eye"),
    },
    Rule {
        name: "det",
        operation: "det(A)",
        reverse: "A += G*det(A)*inv(A)'",
        forward: "det(A)*tr(inv(A)*dA)",
        example: ("X: matrix(n,n); det(X)", "X", "det(X)*inv(X)'"),
    },
    Rule {
        name: "logdet",
        operation: "logdet(A)",
        reverse: "A += G*inv(A)'",
        forward: "tr(inv(A)*dA)",
        example: ("X: matrix(n,n); logdet(X)", "X", "inv(X)'"),
    },
    Rule {
        name: "inv",
        operation: "inv(A)",
        reverse: "A += -inv(A)'*G*inv(A)'",
        forward: "-inv(A)*dA*inv(A)",
        example: (
            "A: matrix(n,n); B: matrix(n,n); t: scalar; inv(A+t*B)",
            "t",
            "-inv(A+t*B)*B*inv(A+t*B)",
        ),
    },
    Rule {
        name: "diag",
        operation: "diag(v) (vector to matrix)",
        reverse: "v += diag(G)",
        forward: "diag(dv)",
        example: ("x: vector; y: vector; sum(diag(x)*y)", "x", "y"),
    },
    Rule {
        name: "diagpart",
        operation: "diag(A) (matrix to vector)",
        reverse: "A += diag(G)",
        forward: "diag(dA)",
        example: ("X: matrix(n,n); y: vector(n); y'*diag(X)", "X", "diag(y)"),
    },
];

/// The name of the rule that differentiates `node`.
pub fn rule_name(node: &Node) -> Option<&'static str> {
    match node {
        Node::Var(_) | Node::Const(_) | Node::Fill(..) | Node::Eye(_) => None,
        _ => Some(node.op_name()),
    }
}

/// The element-wise derivative `f'(x)`, in the shape of `x`.
pub fn func_derivative(g: &mut Graph, f: Func, x: Id) -> Id {
    let shape = g.shape(x);
    let one = g.fill(1.0, shape);
    let two = g.constant(2.0);
    match f {
        Func::Sin => g.map(Func::Cos, x),
        Func::Cos => {
            let s = g.map(Func::Sin, x);
            g.neg(s)
        }
        Func::Tan => {
            let t = g.map(Func::Tan, x);
            let t2 = g.elem_pow(t, two);
            g.add(one, t2)
        }
        Func::Arcsin | Func::Arccos => {
            let x2 = g.elem_pow(x, two);
            let d = g.sub(one, x2);
            let r = g.map(Func::Sqrt, d);
            let q = g.elem_div(one, r);
            if f == Func::Arcsin {
                q
            } else {
                g.neg(q)
            }
        }
        Func::Arctan => {
            let x2 = g.elem_pow(x, two);
            let d = g.add(one, x2);
            g.elem_div(one, d)
        }
        Func::Exp => g.map(Func::Exp, x),
        Func::Log => g.elem_div(one, x),
        Func::Tanh => {
            let t = g.map(Func::Tanh, x);
            let t2 = g.elem_pow(t, two);
            g.sub(one, t2)
        }
        Func::Abs => g.map(Func::Sign, x),
        Func::Sign => g.zero(shape),
        Func::Relu => {
            let r = g.map(Func::Relu, x);
            g.map(Func::Sign, r)
        }
        Func::Sqrt => {
            let r = g.map(Func::Sqrt, x);
            let half = g.fill(0.5, shape);
            g.elem_div(half, r)
        }
    }
}

/// `<G, A>`: the sum of the element-wise product, written the way the cookbook would.
fn inner(g: &mut Graph, a: Id, b: Id) -> Id {
    let shape = g.shape(a);
    if shape.is_scalar() {
        g.mul(a, b)
    } else if shape.is_column() {
        let at = g.transpose(a);
        g.mul(at, b)
    } else if shape.is_row() {
        let bt = g.transpose(b);
        g.mul(a, bt)
    } else {
        let at = g.transpose(a);
        let p = g.mul(at, b);
        g.trace(p)
    }
}

/// Reverse mode: the gradient of the scalar `root` by variable `var` (raw, unsimplified).
pub fn gradient(g: &mut Graph, root: Id, var: u32) -> Id {
    let var_shape = g.vars[var as usize].shape;
    let order = g.topo_order(root);
    let mut depends = HashMap::new();
    for &id in &order {
        g.depends_memo(id, var, &mut depends);
    }
    let mut adjoints: HashMap<Id, Vec<Id>> = HashMap::new();
    let one = g.constant(1.0);
    adjoints.insert(root, vec![one]);
    let mut result = None;
    for &id in order.iter().rev() {
        if !depends[&id] {
            continue;
        }
        let Some(parts) = adjoints.remove(&id) else {
            continue;
        };
        let shape = g.shape(id);
        let adj = g.sum_of(&parts, shape);
        if let Node::Var(v) = g.node(id) {
            if v == var {
                result = Some(adj);
            }
            continue;
        }
        let node = g.node(id);
        let args = node.args();
        let needs: Vec<bool> = args.iter().map(|a| depends[a]).collect();
        let pulled = pullback(g, id, adj, &needs);
        for (arg, contribution) in args.into_iter().zip(pulled) {
            if let Some(c) = contribution {
                adjoints.entry(arg).or_default().push(c);
            }
        }
    }
    result.unwrap_or_else(|| g.zero(var_shape))
}

/// The reverse-mode rules: what each argument of node `id` receives from its adjoint `adj`.
/// `needs[i]` says whether argument `i` depends on the variable (no work is done otherwise).
fn pullback(g: &mut Graph, id: Id, adj: Id, needs: &[bool]) -> Vec<Option<Id>> {
    let need = |i: usize| needs.get(i).copied().unwrap_or(false);
    let node = g.node(id);
    match node {
        Node::Var(_) | Node::Const(_) | Node::Fill(..) | Node::Eye(_) => vec![],
        Node::Add(_, _) => vec![Some(adj), Some(adj)],
        Node::Neg(_) => vec![Some(g.neg(adj))],
        Node::MatMul(a, b) => {
            let da = need(0).then(|| {
                let bt = g.transpose(b);
                g.mul(adj, bt)
            });
            let db = need(1).then(|| {
                let at = g.transpose(a);
                g.mul(at, adj)
            });
            vec![da, db]
        }
        Node::Scale(s, a) => {
            let ds = need(0).then(|| inner(g, adj, a));
            let da = need(1).then(|| g.mul(s, adj));
            vec![ds, da]
        }
        Node::Div(a, s) => {
            let da = need(0).then(|| g.div(adj, s));
            let ds = need(1).then(|| {
                let i = inner(g, adj, a);
                let two = g.constant(2.0);
                let s2 = g.pow(s, two);
                let q = g.div(i, s2);
                g.neg(q)
            });
            vec![da, ds]
        }
        Node::Hadamard(a, b) => {
            let da = need(0).then(|| g.hadamard(adj, b));
            let db = need(1).then(|| g.hadamard(adj, a));
            vec![da, db]
        }
        Node::ElemDiv(a, b) => {
            let da = need(0).then(|| g.elem_div(adj, b));
            let db = need(1).then(|| {
                let ga = g.hadamard(adj, a);
                let two = g.constant(2.0);
                let b2 = g.elem_pow(b, two);
                let q = g.elem_div(ga, b2);
                g.neg(q)
            });
            vec![da, db]
        }
        Node::Pow(a, b) => {
            let da = need(0).then(|| {
                let one = g.constant(1.0);
                let bm1 = g.sub(b, one);
                let p = g.pow(a, bm1);
                let bp = g.mul(b, p);
                g.mul(adj, bp)
            });
            let db = need(1).then(|| {
                let l = g.map(Func::Log, a);
                let yl = g.mul(id, l);
                g.mul(adj, yl)
            });
            vec![da, db]
        }
        Node::ElemPow(a, b) => {
            let da = need(0).then(|| {
                let ones = g.fill(1.0, g.shape(b));
                let bm1 = g.sub(b, ones);
                let p = g.elem_pow(a, bm1);
                let bp = g.hadamard(b, p);
                g.hadamard(adj, bp)
            });
            let db = need(1).then(|| {
                let l = g.map(Func::Log, a);
                let yl = g.hadamard(id, l);
                if g.shape(b).is_scalar() {
                    inner(g, adj, yl)
                } else {
                    g.hadamard(adj, yl)
                }
            });
            vec![da, db]
        }
        Node::MatPow(a, k) => {
            let at = g.transpose(a);
            let mut terms = Vec::new();
            for r in 0..k {
                let left = g.mat_pow(at, r);
                let right = g.mat_pow(at, k - 1 - r);
                let lg = g.mul(left, adj);
                terms.push(g.mul(lg, right));
            }
            let shape = g.shape(a);
            vec![Some(g.sum_of(&terms, shape))]
        }
        Node::Transpose(_) => vec![Some(g.transpose(adj))],
        Node::Map(f, a) => {
            let d = func_derivative(g, f, a);
            vec![Some(g.hadamard(adj, d))]
        }
        Node::Sum(a) => {
            let ones = g.fill(1.0, g.shape(a));
            vec![Some(g.mul(adj, ones))]
        }
        Node::Norm1(a) => {
            let s = g.map(Func::Sign, a);
            vec![Some(g.mul(adj, s))]
        }
        Node::Norm2(a) => {
            let q = g.div(adj, id);
            vec![Some(g.mul(q, a))]
        }
        Node::Trace(a) => {
            let e = g.eye(g.shape(a).rows);
            vec![Some(g.mul(adj, e))]
        }
        Node::Det(a) => {
            let inv = g.inv(a);
            let it = g.transpose(inv);
            let gy = g.mul(adj, id);
            vec![Some(g.mul(gy, it))]
        }
        Node::LogDet(a) => {
            let inv = g.inv(a);
            let it = g.transpose(inv);
            vec![Some(g.mul(adj, it))]
        }
        Node::Inv(_) => {
            let yt = g.transpose(id);
            let left = g.mul(yt, adj);
            let p = g.mul(left, yt);
            vec![Some(g.neg(p))]
        }
        Node::Diag(_) => vec![Some(g.diag_part(adj))],
        Node::DiagPart(_) => vec![Some(g.diag(adj))],
    }
}

/// Forward mode: the derivative of `root` (any shape) by the scalar variable `var`.
pub fn tangent(g: &mut Graph, root: Id, var: u32) -> Id {
    let order = g.topo_order(root);
    let mut tangents: HashMap<Id, Id> = HashMap::new();
    for id in order {
        let node = g.node(id);
        if let Node::Var(v) = node {
            if v == var {
                let one = g.constant(1.0);
                tangents.insert(id, one);
            }
            continue;
        }
        let args = node.args();
        let ds: Vec<Option<Id>> = args.iter().map(|a| tangents.get(a).copied()).collect();
        if ds.iter().all(Option::is_none) {
            continue;
        }
        if let Some(t) = pushforward(g, id, &ds) {
            tangents.insert(id, t);
        }
    }
    match tangents.get(&root) {
        Some(&t) => t,
        None => g.zero(g.shape(root)),
    }
}

/// The forward-mode rules: the tangent of node `id` from its arguments' tangents.
fn pushforward(g: &mut Graph, id: Id, ds: &[Option<Id>]) -> Option<Id> {
    let d = |i: usize| ds.get(i).copied().flatten();
    let shape = g.shape(id);
    let mut terms: Vec<Id> = Vec::new();
    match g.node(id) {
        Node::Var(_) | Node::Const(_) | Node::Fill(..) | Node::Eye(_) => return None,
        Node::Add(..) => terms.extend([d(0), d(1)].into_iter().flatten()),
        Node::Neg(_) => terms.push(g.neg(d(0)?)),
        Node::MatMul(a, b) | Node::Scale(a, b) => {
            if let Some(da) = d(0) {
                terms.push(g.mul(da, b));
            }
            if let Some(db) = d(1) {
                terms.push(g.mul(a, db));
            }
        }
        Node::Div(a, s) => {
            if let Some(da) = d(0) {
                terms.push(g.div(da, s));
            }
            if let Some(dsv) = d(1) {
                let yd = g.mul(dsv, id);
                let q = g.div(yd, s);
                terms.push(g.neg(q));
            }
            let _ = a;
        }
        Node::Hadamard(a, b) => {
            if let Some(da) = d(0) {
                terms.push(g.hadamard(da, b));
            }
            if let Some(db) = d(1) {
                terms.push(g.hadamard(a, db));
            }
        }
        Node::ElemDiv(_, b) => {
            if let Some(da) = d(0) {
                terms.push(g.elem_div(da, b));
            }
            if let Some(db) = d(1) {
                let yd = g.hadamard(id, db);
                let q = g.elem_div(yd, b);
                terms.push(g.neg(q));
            }
        }
        Node::Pow(a, b) | Node::ElemPow(a, b) => {
            let elementwise = matches!(g.node(id), Node::ElemPow(..));
            if let Some(da) = d(0) {
                let ones = g.fill(1.0, g.shape(b));
                let bm1 = g.sub(b, ones);
                let p = if elementwise {
                    g.elem_pow(a, bm1)
                } else {
                    g.pow(a, bm1)
                };
                let bp = g.hadamard(b, p);
                terms.push(g.hadamard(bp, da));
            }
            if let Some(db) = d(1) {
                let l = g.map(Func::Log, a);
                let yl = g.hadamard(id, l);
                terms.push(g.hadamard(yl, db));
            }
        }
        Node::MatPow(a, k) => {
            let da = d(0)?;
            for r in 0..k {
                let left = g.mat_pow(a, r);
                let right = g.mat_pow(a, k - 1 - r);
                let ld = g.mul(left, da);
                terms.push(g.mul(ld, right));
            }
        }
        Node::Transpose(_) => terms.push(g.transpose(d(0)?)),
        Node::Map(f, a) => {
            let fd = func_derivative(g, f, a);
            terms.push(g.hadamard(fd, d(0)?));
        }
        Node::Sum(_) => terms.push(g.sum(d(0)?)),
        Node::Norm1(a) => {
            let s = g.map(Func::Sign, a);
            let p = g.hadamard(s, d(0)?);
            terms.push(g.sum(p));
        }
        Node::Norm2(a) => {
            let i = inner(g, a, d(0)?);
            terms.push(g.div(i, id));
        }
        Node::Trace(_) => terms.push(g.trace(d(0)?)),
        Node::Det(a) | Node::LogDet(a) => {
            let inv = g.inv(a);
            let p = g.mul(inv, d(0)?);
            let t = g.trace(p);
            terms.push(if matches!(g.node(id), Node::Det(_)) {
                g.mul(id, t)
            } else {
                t
            });
        }
        Node::Inv(_) => {
            let l = g.mul(id, d(0)?);
            let p = g.mul(l, id);
            terms.push(g.neg(p));
        }
        Node::Diag(_) => terms.push(g.diag(d(0)?)),
        Node::DiagPart(_) => terms.push(g.diag_part(d(0)?)),
    }
    if terms.is_empty() {
        return None;
    }
    Some(g.sum_of(&terms, shape))
}

/// The Jacobian of the vector (or row vector) `root` by the vector `var`, in gradient
/// layout: `M` with `grad_x(y'*u) = M*u` for a fresh vector `u`.
pub fn jacobian(g: &mut Graph, root: Id, var: u32) -> Result<Id, String> {
    let root_shape = g.shape(root);
    let n_out = if root_shape.is_row() {
        root_shape.cols
    } else {
        root_shape.rows
    };
    let u = g.add_var(Var {
        name: "__u".into(),
        shape: Shape::new(n_out, Dim::One),
        symmetric: false,
        positive_definite: false,
    });
    let u_node = g.var(u);
    let column = if root_shape.is_row() {
        g.transpose(root)
    } else {
        root
    };
    let yt = g.transpose(column);
    let paired = g.mul(yt, u_node);
    let grad = gradient(g, paired, var);
    let grad = simplify(g, grad);
    let m = linear::extract(g, grad, u)?;
    if g.depends_on(m, u) {
        return Err("the Jacobian could not be separated from its direction".into());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::check_program;

    /// Derives and prints (gradient layout).
    fn check(source: &str, wrt: &str, request: Request, expected: &str) {
        let program = check_program(source).unwrap_or_else(|e| panic!("{}", e.render(source)));
        let d = differentiate(program, wrt, &request, Layout::Gradient)
            .unwrap_or_else(|e| panic!("{source}: {}", e.message));
        assert_eq!(d.text(), expected, "d/d{wrt} {source}");
    }

    #[test]
    fn every_node_kind_has_a_rule_with_an_example() {
        let names: Vec<&str> = RULES.iter().map(|r| r.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "rule names are unique");
        let program =
            check_program("X: matrix(n,n); x: vector(n); s: scalar; tr(X) + sum(x) + s").unwrap();
        let g = &program.graph;
        for i in 0..g.len() {
            if let Some(name) = rule_name(&g.node(crate::expr::Id(i as u32))) {
                assert!(names.contains(&name), "no rule named {name}");
            }
        }
    }

    #[test]
    fn the_issue_examples_read_like_the_cookbook() {
        check("(A*x+b)'*(A*x+b)", "x", Request::Derivative, "2*A'*(A*x+b)");
        check(
            "a: vector; C: matrix; a'*X'*C*X*a",
            "X",
            Request::Derivative,
            "(C+C')*X*a*a'",
        );
        check(
            "a: vector; C: symmetric; a'*X'*C*X*a",
            "X",
            Request::Derivative,
            "2*C*X*a*a'",
        );
        check("x'*x", "x", Request::Derivative, "2*x");
        check("logdet(X)", "X", Request::Derivative, "inv(X)'");
    }

    #[test]
    fn hessians_and_jacobians() {
        check(
            "A: matrix; (A*x+b)'*(A*x+b)",
            "x",
            Request::Hessian,
            "2*A'*A",
        );
        check("x'*C*x", "x", Request::Hessian, "C + C'");
        check("A*x", "x", Request::Derivative, "A'");
        check("x'", "x", Request::Derivative, "eye");
        check("exp(x)", "x", Request::Derivative, "diag(exp(x))");
        check(
            "A: matrix; x'*A*x",
            "x",
            Request::HessianTimes("v".into()),
            "(A+A')*v",
        );
    }

    #[test]
    fn unsupported_kinds_are_errors() {
        let p = check_program("X*Y").unwrap();
        let e = differentiate(p, "X", &Request::Derivative, Layout::Gradient).unwrap_err();
        assert!(e.message.contains("higher-order tensor"), "{}", e.message);
        let p = check_program("tr(X)").unwrap();
        let e = differentiate(p, "X", &Request::Hessian, Layout::Gradient).unwrap_err();
        assert!(e.message.contains("4-tensor"), "{}", e.message);
        let p = check_program("x'*x").unwrap();
        let e = differentiate(p, "z", &Request::Derivative, Layout::Gradient).unwrap_err();
        assert!(e.message.contains("no variable `z`"), "{}", e.message);
    }

    #[test]
    fn by_a_declared_variable_that_does_not_occur_the_derivative_is_zero_of_its_shape() {
        let cases = [
            (
                "x: vector(n); i: scalar; sin(x)",
                "i",
                Request::Derivative,
                "vector(0)",
                (3, 1),
            ),
            (
                "x: vector(n); z: vector(n); x'*x",
                "z",
                Request::Derivative,
                "vector(0)",
                (3, 1),
            ),
            (
                "x: vector(n); Z: matrix(n,n); x'*x",
                "Z",
                Request::Derivative,
                "matrix(0)",
                (3, 3),
            ),
            (
                "x: vector(n); z: vector(n); sin(x)",
                "z",
                Request::Derivative,
                "matrix(0)",
                (3, 3),
            ),
            (
                "x: scalar; y: scalar; x^2",
                "y",
                Request::Derivative,
                "0",
                (1, 1),
            ),
            (
                "x: vector(n); z: vector(n); x'*x",
                "z",
                Request::Hessian,
                "matrix(0)",
                (3, 3),
            ),
        ];
        for (program, wrt, request, text, (rows, cols)) in cases {
            let p = check_program(program).unwrap();
            let d = differentiate(p, wrt, &request, Layout::Gradient)
                .unwrap_or_else(|e| panic!("{program} by {wrt}: {}", e.message));
            assert_eq!(d.text(), text, "{program} by {wrt}");
            let g = &d.program.graph;
            let env = crate::verify::random_point(g, &vec![3; g.dims.len()], 1);
            let value = crate::eval::evaluate(g, d.node, &env).unwrap();
            assert_eq!((value.rows, value.cols), (rows, cols), "{program} by {wrt}");
            assert!(value.data.iter().all(|&v| v == 0.0), "{program} by {wrt}");
        }
    }

    #[test]
    fn a_result_made_non_scalar_by_letter_kinds_says_so() {
        // `a` and `b` are scalars by their first letters, so `a'*X*b` is a matrix.
        for request in [Request::Derivative, Request::Hessian] {
            let p = check_program("a'*X*b").unwrap();
            let e = differentiate(p, "X", &request, Layout::Gradient).unwrap_err();
            let help = e.help.unwrap_or_default();
            assert!(
                help.contains("`a` is a scalar")
                    && help.contains("`b` a scalar")
                    && help.contains("`a: vector; b: vector; a'*X*b`"),
                "{help}"
            );
            // Declared, the suggestion is right: the result is a scalar.
            let p = check_program("a: vector; b: vector; a'*X*b").unwrap();
            assert!(differentiate(p, "X", &Request::Derivative, Layout::Gradient).is_ok());
        }
        // Only variables typed by letter are named; none here, so the general advice stays.
        let p = check_program("A: matrix; x: vector; A*x*x'").unwrap();
        let e = differentiate(p, "x", &Request::Derivative, Layout::Gradient).unwrap_err();
        assert!(e
            .help
            .unwrap_or_default()
            .contains("differentiate a scalar"));
    }
}
