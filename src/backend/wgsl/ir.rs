//! The WGSL IR: every generated kernel (per-item stages, the GEMM, the LU and power building
//! blocks) is a [`Module`] of typed instructions, printed by one writer.
//!
//! In: instructions built by the generator: identifiers made from numbers and fixed words,
//! operators, builtins and generated functions as enums, buffers from the one binding table
//! ([`Binding`], which the GPU runtime's bind group layout also reads). Out: WGSL text
//! (`Module`'s `Display`). There is no operator string and no raw text: nothing a user typed
//! can reach the text, and every construct prints one way.
//!
//! Invariants: a [`Stmt::For`] with a constant count is written unrolled when its unrolled
//! statements fit [`UNROLL_LOOP`] (or [`UNROLL_KERNEL`] when it indexes a function-memory
//! array by its variable) and what is left of the kernel's unroll budget; every other loop
//! and every statement prints as written; binary operations print parenthesized.

use std::fmt::{self, Write as _};

/// The buffers every kernel binds, in binding order: the one table that the generated
/// headers and the GPU runtime's bind group layout (`gpu.rs`) read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// Shared values, computed once on the host.
    Hoisted,
    /// The chunk's batched inputs, in lanes.
    Batched,
    /// The chunk's batched outputs, in lanes.
    Out,
    /// The stage's parameter block (a uniform).
    Params,
    /// Per-item intermediates too large for function memory.
    Scratch,
}

/// How a kernel accesses a binding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    ReadWrite,
    Uniform,
}

impl Binding {
    pub const ALL: [Binding; 5] = [
        Binding::Hoisted,
        Binding::Batched,
        Binding::Out,
        Binding::Params,
        Binding::Scratch,
    ];

    pub fn index(self) -> u32 {
        Binding::ALL
            .iter()
            .position(|&b| b == self)
            .expect("every binding is in ALL") as u32
    }

    pub fn name(self) -> &'static str {
        match self {
            Binding::Hoisted => "hoisted",
            Binding::Batched => "batched",
            Binding::Out => "out",
            Binding::Params => "params",
            Binding::Scratch => "scratch",
        }
    }

    pub fn access(self) -> Access {
        match self {
            Binding::Hoisted | Binding::Batched => Access::Read,
            Binding::Out | Binding::Scratch => Access::ReadWrite,
            Binding::Params => Access::Uniform,
        }
    }
}

/// The parameter block's layout: a per-item stage's, or the GEMM's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Uniform {
    /// `chunk` (items in the chunk) and `row` (invocations per row of the 2-D grid).
    Params,
    /// The product's sizes and its operands' bases and strides ([`super::GemmStep::params`]).
    Gemm,
}

impl Uniform {
    fn type_name(self) -> &'static str {
        match self {
            Uniform::Params => "Params",
            Uniform::Gemm => "Gemm",
        }
    }

    fn fields(self) -> &'static [Field] {
        use Field::*;
        match self {
            Uniform::Params => &[Chunk, Row, Pad0, Pad1],
            Uniform::Gemm => &[
                M, N, K, Z, ABase, ARs, ACs, AZs, BBase, BRs, BCs, BZs, CBase, CRs, CCs, CZs,
            ],
        }
    }
}

/// A field of the parameter block or a component of a builtin vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    Chunk,
    Row,
    Pad0,
    Pad1,
    M,
    N,
    K,
    Z,
    ABase,
    ARs,
    ACs,
    AZs,
    BBase,
    BRs,
    BCs,
    BZs,
    CBase,
    CRs,
    CCs,
    CZs,
    /// Components of a `vec3<u32>`.
    X,
    Y,
    ZComponent,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Field::Chunk => "chunk",
            Field::Row => "row",
            Field::Pad0 => "pad0",
            Field::Pad1 => "pad1",
            Field::M => "m",
            Field::N => "n",
            Field::K => "k",
            Field::Z => "z",
            Field::ABase => "a_base",
            Field::ARs => "a_rs",
            Field::ACs => "a_cs",
            Field::AZs => "a_zs",
            Field::BBase => "b_base",
            Field::BRs => "b_rs",
            Field::BCs => "b_cs",
            Field::BZs => "b_zs",
            Field::CBase => "c_base",
            Field::CRs => "c_rs",
            Field::CCs => "c_cs",
            Field::CZs => "c_zs",
            Field::X => "x",
            Field::Y => "y",
            Field::ZComponent => "z",
        }
    }
}

/// A generated identifier: built from numbers and fixed words only.
#[derive(Clone, Debug, PartialEq)]
pub struct Ident(String);

impl Ident {
    /// The value of plan step `i`.
    pub fn step(i: usize) -> Ident {
        Ident(format!("v{i}"))
    }
    /// A helper of step `i`; `what` is one of the generator's fixed words.
    pub fn scratch(i: usize, what: &'static str) -> Ident {
        Ident::numbered(what, i)
    }
    /// A loop variable.
    pub fn loop_var(n: usize) -> Ident {
        Ident(format!("idx{n}"))
    }
    /// A fixed word of the generator (`item`, `acc`, `tile_a`, ...), or one with a number.
    pub fn word(word: &'static str) -> Ident {
        Ident(word.to_string())
    }
    pub fn numbered(word: &'static str, n: usize) -> Ident {
        Ident(format!("{word}{n}"))
    }
    /// `{word}{a}_{b}`.
    pub fn pair(word: &'static str, a: usize, b: usize) -> Ident {
        Ident(format!("{word}{a}_{b}"))
    }
    pub fn item() -> Ident {
        Ident::word("item")
    }
    /// Items in the chunk: the stride of the lanes layout.
    pub fn chunk() -> Ident {
        Ident::word("chunk")
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A WGSL type.
#[derive(Clone, Debug, PartialEq)]
pub enum Ty {
    F32,
    U32,
    /// `array<T, len>` of `f32` or `u32`.
    Array(Box<Ty>, usize),
    /// `ptr<function, T>`.
    Ptr(Box<Ty>),
    /// `vec3<u32>` (builtins).
    Vec3U32,
}

impl Ty {
    pub fn array(of: Ty, len: usize) -> Ty {
        Ty::Array(Box::new(of), len)
    }
    pub fn ptr(to: Ty) -> Ty {
        Ty::Ptr(Box::new(to))
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::F32 => f.write_str("f32"),
            Ty::U32 => f.write_str("u32"),
            Ty::Array(t, len) => write!(f, "array<{t}, {len}u>"),
            Ty::Ptr(t) => write!(f, "ptr<function, {t}>"),
            Ty::Vec3U32 => f.write_str("vec3<u32>"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
    And,
    Or,
}

impl BinOp {
    fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::And => "&&",
            BinOp::Or => "||",
        }
    }
}

/// WGSL's builtin functions that kernels call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Builtin {
    Sin,
    Cos,
    Tan,
    Asin,
    Acos,
    Atan,
    Exp,
    Log,
    Tanh,
    Abs,
    Sign,
    Sqrt,
    Max,
    Pow,
    Round,
    /// `select(if_false, if_true, condition)`.
    Select,
}

impl Builtin {
    fn name(self) -> &'static str {
        match self {
            Builtin::Sin => "sin",
            Builtin::Cos => "cos",
            Builtin::Tan => "tan",
            Builtin::Asin => "asin",
            Builtin::Acos => "acos",
            Builtin::Atan => "atan",
            Builtin::Exp => "exp",
            Builtin::Log => "log",
            Builtin::Tanh => "tanh",
            Builtin::Abs => "abs",
            Builtin::Sign => "sign",
            Builtin::Sqrt => "sqrt",
            Builtin::Max => "max",
            Builtin::Pow => "pow",
            Builtin::Round => "round",
            Builtin::Select => "select",
        }
    }
}

/// What a call calls: a builtin, or a function the generator writes into the module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Callee {
    Builtin(Builtin),
    /// `mg_pow(x, y)` (`pow.rs`).
    Pow,
    /// The LU building block for N×N matrices (`lu.rs`).
    Lu(usize),
    Det(usize),
    LogDet(usize),
    Inv(usize),
    /// The GEMM's helpers (`gemm.rs`).
    StageA,
    StageB,
    Store,
}

impl fmt::Display for Callee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Callee::Builtin(b) => f.write_str(b.name()),
            Callee::Pow => f.write_str("mg_pow"),
            Callee::Lu(n) => write!(f, "mg_lu_{n}"),
            Callee::Det(n) => write!(f, "mg_det_{n}"),
            Callee::LogDet(n) => write!(f, "mg_logdet_{n}"),
            Callee::Inv(n) => write!(f, "mg_inv_{n}"),
            Callee::StageA => f.write_str("stage_a"),
            Callee::StageB => f.write_str("stage_b"),
            Callee::Store => f.write_str("store"),
        }
    }
}

/// A WGSL expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    F32(f32),
    U32(u32),
    Id(Ident),
    /// A bound buffer.
    Buffer(Binding),
    /// `base.field`.
    Field(Box<Expr>, Field),
    Index(Box<Expr>, Box<Expr>),
    Binary(BinOp, Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Call(Callee, Vec<Expr>),
    AddrOf(Ident),
    /// `(*p)`: what a pointer parameter points to.
    Deref(Ident),
}

impl Expr {
    pub fn id(i: Ident) -> Expr {
        Expr::Id(i)
    }
    pub fn word(w: &'static str) -> Expr {
        Expr::Id(Ident::word(w))
    }
    pub fn index(base: Expr, i: Expr) -> Expr {
        Expr::Index(Box::new(base), Box::new(i))
    }
    pub fn bin(op: BinOp, a: Expr, b: Expr) -> Expr {
        Expr::Binary(op, Box::new(a), Box::new(b))
    }
    pub fn negative(a: Expr) -> Expr {
        Expr::Neg(Box::new(a))
    }
    pub fn call(b: Builtin, args: Vec<Expr>) -> Expr {
        Expr::Call(Callee::Builtin(b), args)
    }
    /// `select(if_false, if_true, condition)`.
    pub fn select(if_false: Expr, if_true: Expr, condition: Expr) -> Expr {
        Expr::call(Builtin::Select, vec![if_false, if_true, condition])
    }
    pub fn field(base: Expr, field: Field) -> Expr {
        Expr::Field(Box::new(base), field)
    }
    /// A field of the stage's parameter block.
    pub fn param(field: Field) -> Expr {
        Expr::field(Expr::Buffer(Binding::Params), field)
    }
    /// `a + b`, folding a zero.
    pub fn plus(a: Expr, b: Expr) -> Expr {
        match (&a, &b) {
            (Expr::U32(0), _) => b,
            (_, Expr::U32(0)) => a,
            _ => Expr::bin(BinOp::Add, a, b),
        }
    }
    /// `a * b`, folding a zero or a one.
    pub fn times(a: Expr, b: Expr) -> Expr {
        match (&a, &b) {
            (Expr::U32(0), _) | (_, Expr::U32(0)) => Expr::U32(0),
            (Expr::U32(1), _) => b,
            (_, Expr::U32(1)) => a,
            _ => Expr::bin(BinOp::Mul, a, b),
        }
    }

    /// The direct subexpressions.
    fn children(&self) -> Vec<&Expr> {
        match self {
            Expr::Index(a, b) | Expr::Binary(_, a, b) => vec![a, b],
            Expr::Neg(a) | Expr::Field(a, _) => vec![a],
            Expr::Call(_, args) => args.iter().collect(),
            Expr::F32(_)
            | Expr::U32(_)
            | Expr::Id(_)
            | Expr::Buffer(_)
            | Expr::AddrOf(_)
            | Expr::Deref(_) => Vec::new(),
        }
    }

    /// Whether an array in function memory (an identifier, not a buffer) is indexed here by
    /// an expression that reads `var`.
    fn indexes_arrays_by(&self, var: &Ident) -> bool {
        let own = matches!(self, Expr::Index(base, idx)
            if matches!(**base, Expr::Id(_) | Expr::Deref(_)) && idx.reads(var));
        own || self.children().iter().any(|e| e.indexes_arrays_by(var))
    }

    /// Loop iterations of the generated functions the expression calls (see
    /// [`Stmt::iterations`]).
    fn iterations(&self, call: &dyn Fn(Callee) -> Option<u64>) -> u64 {
        let own = match self {
            Expr::Call(callee, _) => call(*callee).unwrap_or(0),
            _ => 0,
        };
        own + self
            .children()
            .iter()
            .map(|e| e.iterations(call))
            .sum::<u64>()
    }

    /// Whether the expression reads the identifier `var`.
    pub fn reads(&self, var: &Ident) -> bool {
        match self {
            Expr::Id(i) | Expr::AddrOf(i) | Expr::Deref(i) => i == var,
            _ => self.children().iter().any(|e| e.reads(var)),
        }
    }

    /// Every function the expression calls, once per call.
    pub fn callees(&self) -> Vec<Callee> {
        let mut out = Vec::new();
        self.collect_callees(&mut out);
        out
    }

    fn collect_callees(&self, out: &mut Vec<Callee>) {
        if let Expr::Call(c, _) = self {
            out.push(*c);
        }
        for e in self.children() {
            e.collect_callees(out);
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::F32(v) => {
                if v.is_finite() {
                    // `{:?}` prints the shortest digits that round-trip, always with `.` or `e`.
                    write!(f, "f32({v:?})")
                } else {
                    // Non-finite constants are not WGSL; they never reach here (the
                    // simplifier folds only finite constants), but stay well-formed.
                    write!(f, "f32(0.0)")
                }
            }
            Expr::U32(v) => write!(f, "{v}u"),
            Expr::Id(i) => write!(f, "{i}"),
            Expr::Buffer(b) => f.write_str(b.name()),
            Expr::Field(base, field) => write!(f, "{base}.{}", field.name()),
            Expr::Index(b, i) => write!(f, "{b}[{i}]"),
            Expr::Binary(op, a, b) => write!(f, "({a} {} {b})", op.symbol()),
            Expr::Neg(a) => write!(f, "(-{a})"),
            Expr::Call(callee, args) => {
                write!(f, "{callee}(")?;
                for (k, a) in args.iter().enumerate() {
                    if k > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{a}")?;
                }
                f.write_str(")")
            }
            Expr::AddrOf(i) => write!(f, "&{i}"),
            Expr::Deref(i) => write!(f, "(*{i})"),
        }
    }
}

/// A WGSL statement.
#[derive(Clone, Debug, PartialEq)]
pub enum Stmt {
    /// `var name: array<f32, len>;`
    Array(Ident, usize),
    /// `var name: array<u32, len>;`
    IndexArray(Ident, usize),
    /// `var name: T = value;`
    Var(Ident, Ty, Expr),
    Let(Ident, Expr),
    Assign(Expr, Expr),
    /// `for (var i: u32 = 0u; i < count; i = i + 1u) { body }`, unrolled where it fits.
    For(Ident, usize, Vec<Stmt>),
    /// `for (var i: u32 = from; i < to; i = i + step) { body }`, never unrolled.
    Loop {
        var: Ident,
        from: Expr,
        to: Expr,
        step: u32,
        body: Vec<Stmt>,
    },
    If(Expr, Vec<Stmt>),
    Return(Option<Expr>),
    /// `if c { return; }`
    ReturnIf(Expr),
    /// A call whose value is not used.
    Call(Expr),
    /// `{ ... }`: a scope.
    Block(Vec<Stmt>),
    /// `workgroupBarrier();`
    Barrier,
}

/// A loop whose unrolled body would be at most this many statements is written unrolled
/// (each iteration a block that binds the loop variable to a constant), so that drivers see
/// constant indices and keep small per-item arrays in registers instead of local memory; a
/// loop that indexes such an array by its variable unrolls up to the kernel's budget (rolled,
/// it would put the whole array in local memory: W2's outer product, 768 statements,
/// read its 16-float vector that way)...
pub const UNROLL_LOOP: usize = 512;
/// ...while the kernel's unrolled statements stay within this many (naga's validation time
/// grows faster than linearly with a function's length).
pub const UNROLL_KERNEL: usize = 2048;

impl Stmt {
    /// The statements directly inside this one.
    fn inner(&self) -> Vec<&Stmt> {
        match self {
            Stmt::For(_, _, body)
            | Stmt::Loop { body, .. }
            | Stmt::If(_, body)
            | Stmt::Block(body) => body.iter().collect(),
            _ => Vec::new(),
        }
    }

    /// The expressions directly in this statement.
    fn exprs(&self) -> Vec<&Expr> {
        match self {
            Stmt::Var(_, _, x)
            | Stmt::Let(_, x)
            | Stmt::ReturnIf(x)
            | Stmt::Call(x)
            | Stmt::Return(Some(x))
            | Stmt::If(x, _) => vec![x],
            Stmt::Assign(t, x) => vec![t, x],
            Stmt::Loop { from, to, .. } => vec![from, to],
            _ => Vec::new(),
        }
    }

    /// Statements this one is written as when every loop within its limit unrolls.
    pub fn size(&self) -> usize {
        match (self, self.unrolled_size()) {
            (_, Some(n)) if n <= self.unroll_limit() => n,
            _ => 1 + self.inner().iter().map(|s| s.size()).sum::<usize>(),
        }
    }

    /// The most statements this loop is unrolled into (see [`UNROLL_LOOP`]).
    fn unroll_limit(&self) -> usize {
        match self {
            Stmt::For(i, _, body) if body.iter().any(|s| s.indexes_arrays_by(i)) => UNROLL_KERNEL,
            _ => UNROLL_LOOP,
        }
    }

    /// Whether an array in function memory is indexed by an expression that reads `var`.
    fn indexes_arrays_by(&self, var: &Ident) -> bool {
        self.exprs().iter().any(|e| e.indexes_arrays_by(var))
            || self.inner().iter().any(|s| s.indexes_arrays_by(var))
    }

    /// At most how many loop iterations running the statement takes, with `call(callee)`
    /// those of a generated function that loops (a [`Stmt::Loop`] counts only its body).
    pub fn iterations(&self, call: &dyn Fn(Callee) -> Option<u64>) -> u64 {
        let own: u64 = self.exprs().iter().map(|e| e.iterations(call)).sum();
        let inner: u64 = self.inner().iter().map(|s| s.iterations(call)).sum();
        match self {
            Stmt::For(_, count, _) => *count as u64 * (1 + inner),
            _ => own + inner,
        }
    }

    /// For a counted loop, its statements if it were unrolled.
    fn unrolled_size(&self) -> Option<usize> {
        match self {
            Stmt::For(_, count, body) => Some(count * body.iter().map(Stmt::size).sum::<usize>()),
            _ => None,
        }
    }

    /// Every function the statement calls, once per call.
    pub fn callees(&self) -> Vec<Callee> {
        let mut out = Vec::new();
        self.collect_callees(&mut out);
        out
    }

    fn collect_callees(&self, out: &mut Vec<Callee>) {
        for e in self.exprs() {
            e.collect_callees(out);
        }
        for s in self.inner() {
            s.collect_callees(out);
        }
    }

    /// Writes the statement; `budget` is what is left of the kernel's unrolled statements.
    pub fn write(&self, out: &mut String, depth: usize, budget: &mut usize) -> fmt::Result {
        let pad = "    ".repeat(depth);
        let block = |out: &mut String, body: &[Stmt], budget: &mut usize| -> fmt::Result {
            for s in body {
                s.write(out, depth + 1, budget)?;
            }
            Ok(())
        };
        match self {
            Stmt::For(i, count, body)
                if self
                    .unrolled_size()
                    .is_some_and(|n| n <= self.unroll_limit().min(*budget)) =>
            {
                *budget -= self.size();
                // Inside, every loop unrolls as `size` counted it.
                let mut unlimited = usize::MAX;
                for k in 0..*count {
                    writeln!(out, "{pad}{{")?;
                    writeln!(out, "{pad}    let {i} = {k}u;")?;
                    block(out, body, &mut unlimited)?;
                    writeln!(out, "{pad}}}")?;
                }
                Ok(())
            }
            Stmt::Array(n, len) => writeln!(out, "{pad}var {n}: {};", Ty::array(Ty::F32, *len)),
            Stmt::IndexArray(n, len) => {
                writeln!(out, "{pad}var {n}: {};", Ty::array(Ty::U32, *len))
            }
            Stmt::Var(n, t, v) => writeln!(out, "{pad}var {n}: {t} = {v};"),
            Stmt::Let(n, v) => writeln!(out, "{pad}let {n} = {v};"),
            Stmt::Assign(t, v) => writeln!(out, "{pad}{t} = {v};"),
            Stmt::For(i, count, body) => {
                writeln!(
                    out,
                    "{pad}for (var {i}: u32 = 0u; {i} < {count}u; {i} = {i} + 1u) {{"
                )?;
                block(out, body, budget)?;
                writeln!(out, "{pad}}}")
            }
            Stmt::Loop {
                var,
                from,
                to,
                step,
                body,
            } => {
                writeln!(
                    out,
                    "{pad}for (var {var}: u32 = {from}; {var} < {to}; {var} = {var} + {step}u) {{"
                )?;
                block(out, body, budget)?;
                writeln!(out, "{pad}}}")
            }
            Stmt::If(c, body) => {
                writeln!(out, "{pad}if {c} {{")?;
                block(out, body, budget)?;
                writeln!(out, "{pad}}}")
            }
            Stmt::Return(None) => writeln!(out, "{pad}return;"),
            Stmt::Return(Some(v)) => writeln!(out, "{pad}return {v};"),
            Stmt::ReturnIf(c) => writeln!(out, "{pad}if {c} {{\n{pad}    return;\n{pad}}}"),
            Stmt::Call(c) => writeln!(out, "{pad}{c};"),
            Stmt::Block(body) => {
                writeln!(out, "{pad}{{")?;
                block(out, body, budget)?;
                writeln!(out, "{pad}}}")
            }
            Stmt::Barrier => writeln!(out, "{pad}workgroupBarrier();"),
        }
    }
}

/// A function the generator writes into a module.
#[derive(Clone, Debug, PartialEq)]
pub struct Function {
    pub name: Callee,
    pub params: Vec<(Ident, Ty)>,
    pub result: Option<Ty>,
    pub body: Vec<Stmt>,
}

impl Function {
    pub fn write(&self, out: &mut String) -> fmt::Result {
        write!(out, "fn {}(", self.name)?;
        for (k, (name, ty)) in self.params.iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            write!(out, "{name}: {ty}")?;
        }
        out.push(')');
        if let Some(t) = &self.result {
            write!(out, " -> {t}")?;
        }
        out.push_str(" {\n");
        let mut unlimited = usize::MAX;
        for s in &self.body {
            s.write(out, 1, &mut unlimited)?;
        }
        out.push_str("}\n\n");
        Ok(())
    }
}

/// The builtin inputs an entry point reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltinInput {
    /// `gid`
    GlobalInvocationId,
    /// `wg`
    WorkgroupId,
    /// `lid`
    LocalInvocationId,
}

impl BuiltinInput {
    fn names(self) -> (&'static str, &'static str) {
        match self {
            BuiltinInput::GlobalInvocationId => ("global_invocation_id", "gid"),
            BuiltinInput::WorkgroupId => ("workgroup_id", "wg"),
            BuiltinInput::LocalInvocationId => ("local_invocation_id", "lid"),
        }
    }

    /// The parameter as an expression.
    pub fn expr(self) -> Expr {
        Expr::word(self.names().1)
    }
}

/// A compute shader: the bindings, the parameter block, workgroup arrays, the generated
/// functions and the entry point `main`.
#[derive(Clone, Debug, PartialEq)]
pub struct Module {
    /// The first line's comment (fixed text of the generator).
    pub title: &'static str,
    pub uniform: Uniform,
    /// `var<workgroup> name: array<f32, len>;`
    pub workgroup: Vec<(Ident, usize)>,
    pub functions: Vec<Function>,
    pub workgroup_size: (u32, u32),
    pub inputs: Vec<BuiltinInput>,
    pub body: Vec<Stmt>,
    /// Statements the entry point may be unrolled into.
    pub unroll_budget: usize,
}

impl fmt::Display for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        writeln!(out, "// {}", self.title)?;
        writeln!(out, "struct {} {{", self.uniform.type_name())?;
        for field in self.uniform.fields() {
            writeln!(out, "    {}: u32,", field.name())?;
        }
        out.push_str("}\n");
        for b in Binding::ALL {
            let space = match b.access() {
                Access::Read => "storage, read",
                Access::ReadWrite => "storage, read_write",
                Access::Uniform => "uniform",
            };
            let ty = match b.access() {
                Access::Uniform => self.uniform.type_name(),
                _ => "array<f32>",
            };
            writeln!(
                out,
                "@group(0) @binding({}) var<{space}> {}: {ty};",
                b.index(),
                b.name()
            )?;
        }
        out.push('\n');
        for (name, len) in &self.workgroup {
            writeln!(out, "var<workgroup> {name}: {};", Ty::array(Ty::F32, *len))?;
        }
        if !self.workgroup.is_empty() {
            out.push('\n');
        }
        for function in &self.functions {
            function.write(&mut out)?;
        }
        let (x, y) = self.workgroup_size;
        if y == 1 {
            writeln!(out, "@compute @workgroup_size({x})")?;
        } else {
            writeln!(out, "@compute @workgroup_size({x}, {y})")?;
        }
        out.push_str("fn main(");
        for (k, input) in self.inputs.iter().enumerate() {
            if k > 0 {
                out.push_str(", ");
            }
            let (builtin, name) = input.names();
            write!(out, "@builtin({builtin}) {name}: {}", Ty::Vec3U32)?;
        }
        out.push_str(") {\n");
        let mut budget = self.unroll_budget;
        for s in &self.body {
            s.write(&mut out, 1, &mut budget)?;
        }
        out.push_str("}\n");
        f.write_str(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binding_table_is_in_binding_order_and_prints_as_the_header() {
        let m = Module {
            title: "test",
            uniform: Uniform::Params,
            workgroup: Vec::new(),
            functions: Vec::new(),
            workgroup_size: (64, 1),
            inputs: vec![BuiltinInput::GlobalInvocationId],
            body: vec![Stmt::Assign(
                Expr::index(Expr::Buffer(Binding::Out), Expr::U32(0)),
                Expr::index(Expr::Buffer(Binding::Hoisted), Expr::U32(0)),
            )],
            unroll_budget: 0,
        };
        let text = m.to_string();
        for (k, b) in Binding::ALL.iter().enumerate() {
            assert_eq!(b.index() as usize, k);
            assert!(text.contains(&format!("@binding({k}) var<")), "{text}");
        }
        assert!(text.contains("var<uniform> params: Params;"), "{text}");
        super::super::validate(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }

    #[test]
    fn small_counted_loops_unroll_and_dynamic_ones_never_do() {
        let i = Ident::loop_var(1);
        let body = vec![Stmt::Assign(
            Expr::index(Expr::word("a"), Expr::id(i.clone())),
            Expr::F32(1.0),
        )];
        let mut out = String::new();
        Stmt::For(i.clone(), 3, body.clone())
            .write(&mut out, 0, &mut 100)
            .unwrap();
        assert_eq!(out.matches("let idx1 = ").count(), 3, "{out}");
        let mut out = String::new();
        let dynamic = Stmt::Loop {
            var: i,
            from: Expr::U32(0),
            to: Expr::U32(3),
            step: 1,
            body,
        };
        dynamic.write(&mut out, 0, &mut 100).unwrap();
        assert!(out.starts_with("for (var idx1: u32 = 0u; idx1 < 3u; idx1 = idx1 + 1u) {"));
    }
}
