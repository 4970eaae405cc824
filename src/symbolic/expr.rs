//! The expression DAG that every later stage reads and writes.
//!
//! In: nodes built by the type checker, the differentiator and the simplifier. Out: a
//! [`Graph`], an arena of hash-consed [`Node`]s addressed by [`Id`], each with its [`Shape`].
//! Invariants: a node is stored once (building the same node twice returns the same `Id`, so
//! common subexpressions are shared for free); every node's shape is computed from its
//! arguments' shapes when it is built and never changes; scalars are exactly the nodes of shape
//! `(One, One)`, and `*` between a scalar and anything is [`Node::Scale`], never
//! [`Node::MatMul`]. Building an ill-shaped node is a bug in matgrad, never the user's input
//! (the type checker rejects that first), and panics with the two shapes.

use std::collections::HashMap;
use std::fmt;

/// A handle to a node in a [`Graph`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub u32);

impl Id {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// One side of a shape: the structural 1 of scalars and vectors, or a named dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dim {
    One,
    Sym(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Shape {
    pub rows: Dim,
    pub cols: Dim,
}

impl Shape {
    pub const SCALAR: Shape = Shape {
        rows: Dim::One,
        cols: Dim::One,
    };

    pub fn new(rows: Dim, cols: Dim) -> Shape {
        Shape { rows, cols }
    }

    pub fn is_scalar(self) -> bool {
        self == Shape::SCALAR
    }

    pub fn is_square(self) -> bool {
        self.rows == self.cols
    }

    pub fn transposed(self) -> Shape {
        Shape::new(self.cols, self.rows)
    }

    /// A column vector (n×1), not a scalar.
    pub fn is_column(self) -> bool {
        self.cols == Dim::One && self.rows != Dim::One
    }

    /// A row vector (1×n), not a scalar.
    pub fn is_row(self) -> bool {
        self.rows == Dim::One && self.cols != Dim::One
    }
}

/// A dimension of the program: its name and, when declared as a number, its size.
#[derive(Clone, Debug, PartialEq)]
pub struct DimInfo {
    pub name: String,
    pub size: Option<usize>,
}

/// A variable of the program.
#[derive(Clone, Debug, PartialEq)]
pub struct Var {
    pub name: String,
    pub shape: Shape,
    /// Declared `symmetric(n)` or `spd(n)`: the simplifier may use `X' = X`.
    pub symmetric: bool,
    /// Declared `spd(n)`: inputs are generated symmetric positive definite.
    pub positive_definite: bool,
}

/// The element-wise functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Func {
    Sin,
    Cos,
    Tan,
    Arcsin,
    Arccos,
    Arctan,
    Exp,
    Log,
    Tanh,
    Abs,
    Sign,
    Relu,
    Sqrt,
}

impl Func {
    pub const ALL: [Func; 13] = [
        Func::Sin,
        Func::Cos,
        Func::Tan,
        Func::Arcsin,
        Func::Arccos,
        Func::Arctan,
        Func::Exp,
        Func::Log,
        Func::Tanh,
        Func::Abs,
        Func::Sign,
        Func::Relu,
        Func::Sqrt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Func::Sin => "sin",
            Func::Cos => "cos",
            Func::Tan => "tan",
            Func::Arcsin => "arcsin",
            Func::Arccos => "arccos",
            Func::Arctan => "arctan",
            Func::Exp => "exp",
            Func::Log => "log",
            Func::Tanh => "tanh",
            Func::Abs => "abs",
            Func::Sign => "sign",
            Func::Relu => "relu",
            Func::Sqrt => "sqrt",
        }
    }

    pub fn from_name(name: &str) -> Option<Func> {
        Func::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn apply(self, x: f64) -> f64 {
        match self {
            Func::Sin => x.sin(),
            Func::Cos => x.cos(),
            Func::Tan => x.tan(),
            Func::Arcsin => x.asin(),
            Func::Arccos => x.acos(),
            Func::Arctan => x.atan(),
            Func::Exp => x.exp(),
            Func::Log => x.ln(),
            Func::Tanh => x.tanh(),
            Func::Abs => x.abs(),
            Func::Sign => {
                if x.is_nan() {
                    f64::NAN
                } else if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            Func::Relu => {
                if x.is_nan() {
                    f64::NAN
                } else {
                    x.max(0.0)
                }
            }
            Func::Sqrt => x.sqrt(),
        }
    }
}

/// The language's named functions: the one table of their names, read by the parser (which
/// words are functions), the type checker (their types), the lowering (their nodes), the
/// printers and the derivative rules' names ([`Node::op_name`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Function {
    /// An element-wise function ([`Func`]).
    Map(Func),
    Sum,
    Norm1,
    Norm2,
    Trace,
    Det,
    LogDet,
    Inv,
    /// A vector's diagonal matrix, or a square matrix's diagonal.
    Diag,
    /// `vector(c)`, `matrix(c)`: every entry `c`.
    Vector,
    Matrix,
    /// The identity matrix (also usable without parentheses).
    Eye,
}

impl Function {
    /// Every function that is not element-wise, in the order the help text lists them.
    const OTHERS: [Function; 11] = [
        Function::Sum,
        Function::Norm1,
        Function::Norm2,
        Function::Trace,
        Function::Det,
        Function::LogDet,
        Function::Inv,
        Function::Diag,
        Function::Vector,
        Function::Matrix,
        Function::Eye,
    ];

    /// Every function: the element-wise ones first.
    pub fn all() -> impl Iterator<Item = Function> {
        (Func::ALL.into_iter().map(Function::Map)).chain(Function::OTHERS)
    }

    /// The source name.
    pub fn name(self) -> &'static str {
        match self {
            Function::Map(f) => f.name(),
            Function::Sum => "sum",
            Function::Norm1 => "norm1",
            Function::Norm2 => "norm2",
            Function::Trace => "tr",
            Function::Det => "det",
            Function::LogDet => "logdet",
            Function::Inv => "inv",
            Function::Diag => "diag",
            Function::Vector => "vector",
            Function::Matrix => "matrix",
            Function::Eye => "eye",
        }
    }

    pub fn from_name(name: &str) -> Option<Function> {
        Function::all().find(|f| f.name() == name)
    }

    /// Every source name, in table order.
    pub fn names() -> Vec<&'static str> {
        Function::all().map(Function::name).collect()
    }
}

/// An `f64` that can be hashed and compared by its bits (`-0.0` is stored as `0.0`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Num(u64);

impl Num {
    pub fn new(v: f64) -> Num {
        Num(if v == 0.0 {
            0.0f64.to_bits()
        } else {
            v.to_bits()
        })
    }

    pub fn get(self) -> f64 {
        f64::from_bits(self.0)
    }
}

impl fmt::Debug for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.get())
    }
}

/// The operations of the language, plus the few that derivatives need (`Diag`, `DiagPart`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    Var(u32),
    /// A scalar literal.
    Const(Num),
    /// `vector(c)` / `matrix(c)`: every entry `c`; with `c = 0` the zero of any shape.
    Fill(Num, Shape),
    /// The identity matrix of a dimension.
    Eye(Dim),
    Add(Id, Id),
    Neg(Id),
    /// The matrix product of two non-scalars.
    MatMul(Id, Id),
    /// A scalar (first) times anything (second).
    Scale(Id, Id),
    /// Anything divided by a scalar.
    Div(Id, Id),
    Hadamard(Id, Id),
    ElemDiv(Id, Id),
    /// Scalar power `a^b`.
    Pow(Id, Id),
    /// Element-wise power; the exponent has the base's shape or is a scalar.
    ElemPow(Id, Id),
    /// Matrix power with a positive integer exponent.
    MatPow(Id, u32),
    Transpose(Id),
    Map(Func, Id),
    Sum(Id),
    Norm1(Id),
    Norm2(Id),
    Trace(Id),
    Det(Id),
    LogDet(Id),
    Inv(Id),
    /// A vector's diagonal matrix.
    Diag(Id),
    /// A square matrix's diagonal, as a vector.
    DiagPart(Id),
}

impl Node {
    /// The operation's name: the one table that `--json`'s `op` fields and the derivative
    /// rules' names ([`crate::diff::rule_name`]) read; a named function's is its source name.
    pub fn op_name(&self) -> &'static str {
        let function = match self {
            Node::Var(_) => return "var",
            Node::Const(_) => return "const",
            Node::Fill(..) => return "fill",
            Node::Eye(_) => return "eye",
            Node::Add(..) => return "add",
            Node::Neg(_) => return "neg",
            Node::MatMul(..) => return "matmul",
            Node::Scale(..) => return "scale",
            Node::Div(..) => return "div",
            Node::Hadamard(..) => return "hadamard",
            Node::ElemDiv(..) => return "elemdiv",
            Node::Pow(..) => return "pow",
            Node::ElemPow(..) => return "elempow",
            Node::MatPow(..) => return "matpow",
            Node::Transpose(_) => return "transpose",
            Node::Map(..) => return "map",
            Node::DiagPart(_) => return "diagpart",
            Node::Sum(_) => Function::Sum,
            Node::Norm1(_) => Function::Norm1,
            Node::Norm2(_) => Function::Norm2,
            Node::Trace(_) => Function::Trace,
            Node::Det(_) => Function::Det,
            Node::LogDet(_) => Function::LogDet,
            Node::Inv(_) => Function::Inv,
            Node::Diag(_) => Function::Diag,
        };
        function.name()
    }

    /// The node's arguments, in order.
    pub fn args(&self) -> Vec<Id> {
        match *self {
            Node::Var(_) | Node::Const(_) | Node::Fill(..) | Node::Eye(_) => vec![],
            Node::Add(a, b)
            | Node::MatMul(a, b)
            | Node::Scale(a, b)
            | Node::Div(a, b)
            | Node::Hadamard(a, b)
            | Node::ElemDiv(a, b)
            | Node::Pow(a, b)
            | Node::ElemPow(a, b) => vec![a, b],
            Node::Neg(a)
            | Node::MatPow(a, _)
            | Node::Transpose(a)
            | Node::Map(_, a)
            | Node::Sum(a)
            | Node::Norm1(a)
            | Node::Norm2(a)
            | Node::Trace(a)
            | Node::Det(a)
            | Node::LogDet(a)
            | Node::Inv(a)
            | Node::Diag(a)
            | Node::DiagPart(a) => vec![a],
        }
    }
}

impl Node {
    /// The same operation on other arguments (`args` as many as [`Node::args`] gives).
    pub fn with_args(&self, args: &[Id]) -> Node {
        let a = |k: usize| args[k];
        match *self {
            Node::Var(_) | Node::Const(_) | Node::Fill(..) | Node::Eye(_) => *self,
            Node::Add(..) => Node::Add(a(0), a(1)),
            Node::MatMul(..) => Node::MatMul(a(0), a(1)),
            Node::Scale(..) => Node::Scale(a(0), a(1)),
            Node::Div(..) => Node::Div(a(0), a(1)),
            Node::Hadamard(..) => Node::Hadamard(a(0), a(1)),
            Node::ElemDiv(..) => Node::ElemDiv(a(0), a(1)),
            Node::Pow(..) => Node::Pow(a(0), a(1)),
            Node::ElemPow(..) => Node::ElemPow(a(0), a(1)),
            Node::Neg(_) => Node::Neg(a(0)),
            Node::MatPow(_, k) => Node::MatPow(a(0), k),
            Node::Transpose(_) => Node::Transpose(a(0)),
            Node::Map(f, _) => Node::Map(f, a(0)),
            Node::Sum(_) => Node::Sum(a(0)),
            Node::Norm1(_) => Node::Norm1(a(0)),
            Node::Norm2(_) => Node::Norm2(a(0)),
            Node::Trace(_) => Node::Trace(a(0)),
            Node::Det(_) => Node::Det(a(0)),
            Node::LogDet(_) => Node::LogDet(a(0)),
            Node::Inv(_) => Node::Inv(a(0)),
            Node::Diag(_) => Node::Diag(a(0)),
            Node::DiagPart(_) => Node::DiagPart(a(0)),
        }
    }
}

/// Numbers whose product or power fell below float64's normal range (about 2.2e-308).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Underflow {
    Product(f64, f64),
    Power(f64, f64),
    Exp(f64),
}

impl fmt::Display for Underflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Underflow::Product(a, b) => write!(f, "{a:e} times {b:e} is {:e}", a * b),
            Underflow::Power(a, c) => write!(f, "{a:e} to the power {c} is {:e}", a.powf(c)),
            Underflow::Exp(a) => write!(f, "exp({a}) is {:e}", a.exp()),
        }
    }
}

/// The arena: nodes, their shapes, and the program's variables and dimensions.
#[derive(Clone, Debug, Default)]
pub struct Graph {
    nodes: Vec<Node>,
    shapes: Vec<Shape>,
    index: HashMap<Node, Id>,
    pub vars: Vec<Var>,
    pub dims: Vec<DimInfo>,
    /// The first constant that simplification computed below float64's normal range (a
    /// term that would silently become zero), if any: the derivative is then refused.
    pub underflow: Option<Underflow>,
    /// Nodes `0..written` are the program as its source wrote it ([`Graph::mark_written`]);
    /// later ones were derived (0 until marked: nothing counts as written).
    written: usize,
}

impl Graph {
    /// Marks every node so far as the program's own: done once the source is lowered.
    pub fn mark_written(&mut self) {
        self.written = self.nodes.len();
    }

    /// Whether `id` is a node of the program as written (see [`Graph::mark_written`]).
    pub fn is_written(&self, id: Id) -> bool {
        id.index() < self.written
    }

    pub fn node(&self, id: Id) -> Node {
        self.nodes[id.index()]
    }

    pub fn shape(&self, id: Id) -> Shape {
        self.shapes[id.index()]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn var_by_name(&self, name: &str) -> Option<u32> {
        self.vars
            .iter()
            .position(|v| v.name == name)
            .map(|i| i as u32)
    }

    pub fn dim_name(&self, dim: Dim) -> String {
        match dim {
            Dim::One => "1".into(),
            Dim::Sym(i) => self.dims[i as usize].name.clone(),
        }
    }

    /// `scalar`, `vector(n)`, `row vector(n)` or `matrix(m,n)`.
    pub fn describe_shape(&self, shape: Shape) -> String {
        match (shape.rows, shape.cols) {
            (Dim::One, Dim::One) => "scalar".into(),
            (r, Dim::One) => format!("vector({})", self.dim_name(r)),
            (Dim::One, c) => format!("row vector({})", self.dim_name(c)),
            (r, c) => format!("matrix({},{})", self.dim_name(r), self.dim_name(c)),
        }
    }

    /// Adds a variable and returns its index.
    pub fn add_var(&mut self, var: Var) -> u32 {
        self.vars.push(var);
        (self.vars.len() - 1) as u32
    }

    /// Adds a dimension and returns it.
    pub fn add_dim(&mut self, info: DimInfo) -> Dim {
        self.dims.push(info);
        Dim::Sym((self.dims.len() - 1) as u32)
    }

    /// Stores `node` (or finds it) and returns its handle.
    pub fn push(&mut self, node: Node) -> Id {
        if let Some(&id) = self.index.get(&node) {
            return id;
        }
        let shape = self.infer_shape(&node);
        let id = Id(self.nodes.len() as u32);
        self.nodes.push(node);
        self.shapes.push(shape);
        self.index.insert(node, id);
        id
    }

    fn infer_shape(&self, node: &Node) -> Shape {
        let s = |id: Id| self.shape(id);
        let fail = |what: &str, a: Shape, b: Shape| -> ! {
            panic!(
                "internal error: ill-shaped {what}: {} and {}",
                self.describe_shape(a),
                self.describe_shape(b)
            )
        };
        match *node {
            Node::Var(v) => self.vars[v as usize].shape,
            Node::Const(_) => Shape::SCALAR,
            Node::Fill(_, shape) => shape,
            Node::Eye(d) => Shape::new(d, d),
            Node::Add(a, b) | Node::Hadamard(a, b) | Node::ElemDiv(a, b) => {
                if s(a) != s(b) {
                    fail("element-wise operation", s(a), s(b));
                }
                s(a)
            }
            Node::Neg(a) | Node::Map(_, a) => s(a),
            Node::MatMul(a, b) => {
                if s(a).cols != s(b).rows || s(a).is_scalar() || s(b).is_scalar() {
                    fail("matrix product", s(a), s(b));
                }
                Shape::new(s(a).rows, s(b).cols)
            }
            Node::Scale(a, b) => {
                if !s(a).is_scalar() {
                    fail("scaling", s(a), s(b));
                }
                s(b)
            }
            Node::Div(a, b) => {
                if !s(b).is_scalar() {
                    fail("division", s(a), s(b));
                }
                s(a)
            }
            Node::Pow(a, b) => {
                if !s(a).is_scalar() || !s(b).is_scalar() {
                    fail("scalar power", s(a), s(b));
                }
                Shape::SCALAR
            }
            Node::ElemPow(a, b) => {
                if s(a) != s(b) && !s(b).is_scalar() {
                    fail("element-wise power", s(a), s(b));
                }
                s(a)
            }
            Node::MatPow(a, _) | Node::Inv(a) => {
                if !s(a).is_square() {
                    fail("square-matrix operation", s(a), s(a));
                }
                s(a)
            }
            Node::Transpose(a) => s(a).transposed(),
            Node::Sum(_) | Node::Norm1(_) | Node::Norm2(_) => Shape::SCALAR,
            Node::Trace(a) | Node::Det(a) | Node::LogDet(a) => {
                if !s(a).is_square() {
                    fail("square-matrix function", s(a), s(a));
                }
                Shape::SCALAR
            }
            Node::Diag(a) => {
                if s(a).cols != Dim::One {
                    fail("diag of a non-vector", s(a), s(a));
                }
                Shape::new(s(a).rows, s(a).rows)
            }
            Node::DiagPart(a) => {
                if !s(a).is_square() {
                    fail("diagonal of a non-square matrix", s(a), s(a));
                }
                Shape::new(s(a).rows, Dim::One)
            }
        }
    }

    // Builders: one per node kind, so that call sites read like the mathematics.

    pub fn var(&mut self, v: u32) -> Id {
        self.push(Node::Var(v))
    }
    /// The first constant reachable from `root` that is not a finite float64 (a product of
    /// literals that overflowed, such as `1e308*1e308`): no such formula reads back.
    pub fn non_finite_constant(&self, root: Id) -> Option<f64> {
        self.topo_order(root)
            .into_iter()
            .find_map(|id| match self.node(id) {
                Node::Const(v) | Node::Fill(v, _) if !v.get().is_finite() => Some(v.get()),
                _ => None,
            })
    }

    pub fn constant(&mut self, v: f64) -> Id {
        self.push(Node::Const(Num::new(v)))
    }
    /// The constant `value` in `shape` (a literal for scalars).
    pub fn fill(&mut self, value: f64, shape: Shape) -> Id {
        if shape.is_scalar() {
            self.constant(value)
        } else {
            self.push(Node::Fill(Num::new(value), shape))
        }
    }
    pub fn zero(&mut self, shape: Shape) -> Id {
        self.fill(0.0, shape)
    }
    pub fn eye(&mut self, d: Dim) -> Id {
        if d == Dim::One {
            self.constant(1.0)
        } else {
            self.push(Node::Eye(d))
        }
    }
    pub fn add(&mut self, a: Id, b: Id) -> Id {
        self.push(Node::Add(a, b))
    }
    pub fn sub(&mut self, a: Id, b: Id) -> Id {
        let nb = self.neg(b);
        self.add(a, nb)
    }
    pub fn neg(&mut self, a: Id) -> Id {
        self.push(Node::Neg(a))
    }
    /// `a*b` with the scalar rule: a scalar on either side scales the other.
    pub fn mul(&mut self, a: Id, b: Id) -> Id {
        if self.shape(a).is_scalar() {
            self.push(Node::Scale(a, b))
        } else if self.shape(b).is_scalar() {
            self.push(Node::Scale(b, a))
        } else {
            self.push(Node::MatMul(a, b))
        }
    }
    pub fn scale(&mut self, factor: f64, a: Id) -> Id {
        let c = self.constant(factor);
        self.push(Node::Scale(c, a))
    }
    pub fn div(&mut self, a: Id, b: Id) -> Id {
        self.push(Node::Div(a, b))
    }
    /// Element-wise product; a scalar on either side scales the other.
    pub fn hadamard(&mut self, a: Id, b: Id) -> Id {
        if self.shape(a).is_scalar() || self.shape(b).is_scalar() {
            self.mul(a, b)
        } else {
            self.push(Node::Hadamard(a, b))
        }
    }
    /// Element-wise quotient; a scalar divisor divides.
    pub fn elem_div(&mut self, a: Id, b: Id) -> Id {
        if self.shape(b).is_scalar() {
            self.div(a, b)
        } else if self.shape(a).is_scalar() {
            let ones = self.fill(1.0, self.shape(b));
            let q = self.push(Node::ElemDiv(ones, b));
            self.mul(a, q)
        } else {
            self.push(Node::ElemDiv(a, b))
        }
    }
    pub fn pow(&mut self, a: Id, b: Id) -> Id {
        self.push(Node::Pow(a, b))
    }
    /// Element-wise power (scalar power when the base is a scalar).
    pub fn elem_pow(&mut self, a: Id, b: Id) -> Id {
        if self.shape(a).is_scalar() && self.shape(b).is_scalar() {
            self.pow(a, b)
        } else if self.shape(a).is_scalar() {
            let ones = self.fill(1.0, self.shape(b));
            let base = self.mul(a, ones);
            self.push(Node::ElemPow(base, b))
        } else {
            self.push(Node::ElemPow(a, b))
        }
    }
    pub fn mat_pow(&mut self, a: Id, k: u32) -> Id {
        match k {
            0 => self.eye(self.shape(a).rows),
            1 => a,
            _ => self.push(Node::MatPow(a, k)),
        }
    }
    pub fn transpose(&mut self, a: Id) -> Id {
        if self.shape(a).is_scalar() {
            a
        } else {
            self.push(Node::Transpose(a))
        }
    }
    pub fn map(&mut self, f: Func, a: Id) -> Id {
        self.push(Node::Map(f, a))
    }
    pub fn sum(&mut self, a: Id) -> Id {
        self.push(Node::Sum(a))
    }
    pub fn trace(&mut self, a: Id) -> Id {
        self.push(Node::Trace(a))
    }
    pub fn det(&mut self, a: Id) -> Id {
        self.push(Node::Det(a))
    }
    pub fn inv(&mut self, a: Id) -> Id {
        self.push(Node::Inv(a))
    }
    pub fn diag(&mut self, a: Id) -> Id {
        self.push(Node::Diag(a))
    }
    pub fn diag_part(&mut self, a: Id) -> Id {
        self.push(Node::DiagPart(a))
    }

    /// Sums a list of same-shaped terms (the zero of `shape` when empty).
    pub fn sum_of(&mut self, terms: &[Id], shape: Shape) -> Id {
        match terms.split_first() {
            None => self.zero(shape),
            Some((&first, rest)) => rest.iter().fold(first, |acc, &t| self.add(acc, t)),
        }
    }

    /// Whether the expression `id` reads variable `var`.
    pub fn depends_on(&self, id: Id, var: u32) -> bool {
        let mut memo = HashMap::new();
        self.depends_memo(id, var, &mut memo)
    }

    pub fn depends_memo(&self, id: Id, var: u32, memo: &mut HashMap<Id, bool>) -> bool {
        if let Some(&d) = memo.get(&id) {
            return d;
        }
        let d = match self.node(id) {
            Node::Var(v) => v == var,
            node => node
                .args()
                .into_iter()
                .any(|a| self.depends_memo(a, var, memo)),
        };
        memo.insert(id, d);
        d
    }

    /// A value per node computed bottom-up, `f(node, its arguments' values)`, once per node of
    /// the DAG under `root` that `memo` does not hold yet (no recursion, so any depth works).
    pub fn fold<T: Clone>(
        &self,
        root: Id,
        memo: &mut HashMap<Id, T>,
        f: impl Fn(&Node, &[T]) -> T,
    ) -> T {
        let mut stack = vec![(root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if memo.contains_key(&id) {
                continue;
            }
            let node = self.node(id);
            if expanded {
                let args: Vec<T> = node.args().iter().map(|a| memo[a].clone()).collect();
                memo.insert(id, f(&node, &args));
                continue;
            }
            stack.push((id, true));
            for a in node.args().into_iter().rev() {
                if !memo.contains_key(&a) {
                    stack.push((a, false));
                }
            }
        }
        memo[&root].clone()
    }

    /// How many nodes `id` has when its DAG is written out as a tree (saturating): what
    /// printing it without names costs, which can be exponential in [`Graph::len`].
    pub fn tree_size(&self, id: Id, memo: &mut HashMap<Id, u64>) -> u64 {
        self.fold(id, memo, |_, args| {
            args.iter().fold(1u64, |acc, &a| acc.saturating_add(a))
        })
    }

    /// A hash of the tree `id` stands for: equal trees hash alike whatever order their nodes
    /// were built in (unlike their `Id`s), in every run of one build.
    pub fn structural_hash(&self, id: Id, memo: &mut HashMap<Id, u64>) -> u64 {
        use std::hash::{Hash, Hasher};
        self.fold(id, memo, |node, args| {
            // `DefaultHasher::new` has fixed keys: the value is reproducible (Rust may change
            // the algorithm between releases, which would only reorder very large sums).
            let mut h = std::hash::DefaultHasher::new();
            node.with_args(&vec![Id(0); args.len()]).hash(&mut h);
            args.hash(&mut h);
            h.finish()
        })
    }

    /// The nodes reachable from `root`, each after its arguments (a topological order).
    pub fn topo_order(&self, root: Id) -> Vec<Id> {
        let mut order = Vec::new();
        let mut seen = vec![false; self.len()];
        let mut stack = vec![(root, false)];
        while let Some((id, expanded)) = stack.pop() {
            if expanded {
                order.push(id);
                continue;
            }
            if seen[id.index()] {
                continue;
            }
            seen[id.index()] = true;
            stack.push((id, true));
            for a in self.node(id).args().into_iter().rev() {
                if !seen[a.index()] {
                    stack.push((a, false));
                }
            }
        }
        order
    }

    /// The variables that `root` reads, in order of first appearance.
    pub fn vars_in(&self, root: Id) -> Vec<u32> {
        let mut out = Vec::new();
        for id in self.topo_order(root) {
            if let Node::Var(v) = self.node(id) {
                if !out.contains(&v) {
                    out.push(v);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::check_program;

    #[test]
    fn every_function_name_is_one_word_of_the_language_and_round_trips() {
        let names = Function::names();
        assert_eq!(names.len(), Func::ALL.len() + 11);
        for f in Function::all() {
            assert_eq!(Function::from_name(f.name()), Some(f));
            assert_eq!(names.iter().filter(|&&n| n == f.name()).count(), 1);
            assert!(crate::parse::is_function(f.name()));
            // A function's name cannot name a variable.
            assert!(crate::parse::check_variable_name(f.name()).is_err());
        }
        assert!(!crate::parse::is_function("foo"));
    }

    #[test]
    fn a_function_nodes_operation_name_is_its_source_name() {
        // Each function lowered from source has that name as its node's operation name.
        for name in ["sum", "norm1", "norm2", "tr", "det", "logdet", "inv"] {
            let p = check_program(&format!("X: matrix(3,3); {name}(X)")).unwrap();
            let node = (0..p.graph.nodes.len())
                .map(|i| p.graph.node(Id(i as u32)))
                .find(|n| !matches!(n, Node::Var(_)))
                .unwrap();
            assert_eq!(node.op_name(), name, "{node:?}");
        }
        let p = check_program("x: vector(3); diag(x)").unwrap();
        assert_eq!(p.graph.node(p.root).op_name(), "diag");
        let p = check_program("x: vector(3); exp(x)").unwrap();
        assert_eq!(p.graph.node(p.root).op_name(), "map");
    }
}
