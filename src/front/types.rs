//! Stage 2: syntax tree → typed expression DAG.
//!
//! In: a [`ProgramAst`]. Out: a [`Program`]: a [`Graph`] with every variable's shape and the
//! root expression. Shapes are inferred by unification over *slots*: each side of a shape is a
//! slot that is unknown, the structural 1 of scalars and vectors, or a named dimension. Kinds
//! that usage leaves open fall back to the first letter of the name, as on
//! matrixcalculus.org (`a`–`g` scalar, `h`–`z` vector, `A`–`Z` matrix), applied one variable
//! at a time in order of appearance, so `(A*x+b)'*(A*x+b)` makes `b` a vector because `A*x`
//! is one. `where` definitions are checked in order before the expression and lowered once,
//! so every use of a name is the same node. Invariants: a program that type-checks lowers to
//! a graph whose every node is well-shaped; every error carries the span of the operator or
//! name at fault and names the shapes that do not fit; nothing here panics on any input.

use std::collections::HashMap;

use crate::diagnostic::{Diagnostic, Span};
use crate::expr::{Dim, DimInfo, Function, Graph, Id, Shape, Var};
use crate::parse::{parse_program, Ast, AstKind, BinOp, DimSpec, ProgramAst};

/// A type-checked program: the graph, its root, and where each variable was introduced.
#[derive(Clone, Debug)]
pub struct Program {
    pub source: String,
    pub graph: Graph,
    pub root: Id,
    /// For each variable, the span of its declaration or first use.
    pub var_spans: Vec<Span>,
    /// For each variable, whether its kind came from its first letter (usage left it open).
    pub typed_by_letter: Vec<bool>,
}

impl Program {
    pub fn var_index(&self, name: &str) -> Option<u32> {
        self.graph.var_by_name(name)
    }
}

/// Parses and type-checks a program. A shape error that declaring one variable whose kind
/// came from its first letter would fix gets that declaration as its help (every such
/// variable, names of several letters before single letters; else every such pair).
pub fn check_program(source: &str) -> Result<Program, Diagnostic> {
    let error = match check_program_with_shape(source, None) {
        Ok(program) => return Ok(program),
        Err(error) => error,
    };
    let Ok(ast) = parse_program(source) else {
        return Err(error);
    };
    // The lowercase names nothing declares, in order of first use, longer names first (a
    // `lambda` or `mu` is more likely a scalar the letter rule missed than `x` a scalar).
    let mut names = program_names(&ast);
    names.sort_by_key(|name| name.chars().count() == 1);
    let declared: Vec<&str> = ast.decls.iter().map(|d| d.name.as_str()).collect();
    let mut candidates: Vec<String> = Vec::new();
    for name in names {
        let lowercase = name.starts_with(|c: char| c.is_ascii_lowercase());
        let reserved =
            crate::parse::is_function(&name) || crate::parse::KINDS.contains(&name.as_str());
        if lowercase
            && !reserved
            && !declared.contains(&name.as_str())
            && !candidates.contains(&name)
        {
            candidates.push(name);
        }
    }
    let other_kind = |name: &str| match letter_default(name) {
        "scalar" => "vector",
        _ => "scalar",
    };
    // Each name declared the other way, then (when no single one does it) each pair of the
    // first eight scalars by letter declared vectors: `(a'*x)*(b'*x)+1` needs both `a` and
    // `b` to be vectors. (Pairs of vectors made scalars would check almost anything.)
    let mut repairs = Vec::new();
    let singles = candidates.iter().map(|n| vec![n.as_str()]);
    let scalars: Vec<&String> = (candidates.iter())
        .filter(|n| letter_default(n) == "scalar")
        .collect();
    let first = &scalars[..scalars.len().min(8)];
    let pairs = (0..first.len()).flat_map(|i| {
        (i + 1..first.len()).map(move |j| vec![first[i].as_str(), first[j].as_str()])
    });
    for group in singles.chain(pairs) {
        if group.len() == 2 && !repairs.is_empty() {
            break;
        }
        let declarations: Vec<String> = (group.iter())
            .map(|n| format!("{n}: {}", other_kind(n)))
            .collect();
        let repaired = format!("{}; {source}", declarations.join("; "));
        if check_program_with_shape(&repaired, None).is_ok() {
            let what: Vec<String> = (group.iter())
                .map(|n| format!("`{n}` is a {} by its first letter", letter_default(n)))
                .collect();
            let as_other: Vec<String> = (group.iter())
                .map(|n| format!("a {}", other_kind(n)))
                .collect();
            repairs.push(format!(
                "{}; declared {}, the program checks: `{}`",
                what.join(" and "),
                as_other.join(" and "),
                repaired.trim()
            ));
        }
    }
    if repairs.is_empty() {
        return Err(error);
    }
    // A help the error already had (`use .^ for an element-wise power`) stays first.
    let mut help: Vec<String> = error.help.iter().cloned().collect();
    let lead = if help.is_empty() { "" } else { "or: " };
    help.push(format!("{lead}{}", repairs.join("; or ")));
    help.push(format!("the letter rule: {LETTER_RULE}"));
    Err(error.with_help(help.join("\nhelp: ")))
}

/// Like [`check_program`], but the result must have `expected` shape (given with the graph
/// whose dimensions it names); free dimensions of constants such as `eye` are taken from it.
/// Used to read back a printed derivative in the context of the program it came from.
pub fn check_program_with_shape(
    source: &str,
    expected: Option<(&Graph, Shape)>,
) -> Result<Program, Diagnostic> {
    let ast = parse_program(source)?;
    let mut taken_names = program_names(&ast);
    taken_names.extend(ast.defs.iter().map(|d| d.name.clone()));
    let mut checker = Checker {
        taken_names,
        ..Checker::default()
    };
    for decl in &ast.decls {
        checker.taken_names.push(decl.name.clone());
        for d in &decl.dims {
            if let DimSpec::Named(n, _) = d {
                checker.taken_names.push(n.clone());
            }
        }
    }
    checker.declare(&ast)?;
    checker.define(&ast)?;
    let root_ty = checker.infer(&ast.expr)?;
    if let Some((graph, shape)) = expected {
        let slots = [shape.rows, shape.cols].map(|d| match d {
            Dim::One => checker.new_slot(Slot::One),
            Dim::Sym(i) => {
                let info = &graph.dims[i as usize];
                checker.named_dim(&info.name, info.size)
            }
        });
        let ty = Ty {
            rows: slots[0],
            cols: slots[1],
        };
        checker.unify_ty(root_ty, ty, ast.expr.span, "the result")?;
    }
    checker.solve()?;
    checker.name_all_dims();
    let mut lowering = Lowering::new(&checker);
    for def in &ast.defs {
        let id = lowering.lower(&def.expr)?;
        lowering.def_ids.insert(def.name.clone(), id);
    }
    let root = lowering.lower(&ast.expr)?;
    if let Some(v) = lowering.graph.non_finite_constant(root) {
        return Err(Diagnostic::new(
            format!("the constants here multiply to {v}, past float64's range (about 1.8e308)"),
            ast.expr.span,
        ));
    }
    lowering.graph.mark_written();
    let var_spans = checker.vars.iter().map(|v| v.span).collect();
    let typed_by_letter = checker.vars.iter().map(|v| v.by_letter).collect();
    Ok(Program {
        source: source.to_string(),
        graph: lowering.graph,
        root,
        var_spans,
        typed_by_letter,
    })
}

type SlotId = usize;

#[derive(Clone, Debug, PartialEq)]
enum Slot {
    Unknown,
    One,
    Dim {
        name: Option<String>,
        size: Option<usize>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq)]
struct Ty {
    rows: SlotId,
    cols: SlotId,
}

#[derive(Clone, Debug)]
struct VarEntry {
    name: String,
    ty: Ty,
    span: Span,
    symmetric: bool,
    positive_definite: bool,
    /// The kind came from [`letter_default`].
    by_letter: bool,
}

/// How an overloaded operator was resolved once the operand kinds were known.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Resolved {
    /// `*`, `.*`: the left operand is a scalar.
    ScaleLeft,
    /// `*`, `.*`, `/`, `./`: the right operand is a scalar.
    ScaleRight,
    MatMul,
    ElementWise,
    ScalarPow,
    MatrixPow,
    /// `diag` of a vector.
    DiagOfVector,
    /// `diag` of a square matrix.
    DiagOfMatrix,
}

#[derive(Clone, Debug)]
enum Pending {
    /// An operator whose meaning depends on whether its operands are scalars: `*` (scaling
    /// or matrix product), `^` (scalar or matrix power), and the element-wise `.* ./ .^`
    /// (a scalar operand broadcasts).
    Binary {
        op: BinOp,
        at: Span,
        lhs: Ty,
        rhs: Ty,
        out: Ty,
    },
    Diag {
        at: Span,
        arg: Ty,
        out: Ty,
    },
}

impl Pending {
    fn at(&self) -> Span {
        match self {
            Pending::Binary { at, .. } | Pending::Diag { at, .. } => *at,
        }
    }
}

#[derive(Default)]
struct Checker {
    parent: Vec<SlotId>,
    slots: Vec<Slot>,
    vars: Vec<VarEntry>,
    var_index: HashMap<String, usize>,
    named_dims: HashMap<String, SlotId>,
    /// Type of each AST node, keyed by its span start/end and a discriminating counter.
    types: HashMap<(usize, usize, u8), Ty>,
    pending: Vec<(Pending, (usize, usize, u8))>,
    resolved: HashMap<(usize, usize, u8), Resolved>,
    /// Names given to unnamed dimensions, by root slot, the first time one is shown.
    auto_names: HashMap<SlotId, (usize, String)>,
    /// Names an automatic dimension name must not take (the program's own names).
    taken_names: Vec<String>,
    /// The `where` definitions checked so far, by name, and every name the clause defines.
    defs: HashMap<String, Ty>,
    def_names: Vec<String>,
    next_auto: usize,
}

/// A key for an AST node: spans are unique per node except for parenthesised duplicates,
/// which are the same node anyway; the tag separates nodes that share a span.
fn key(ast: &Ast) -> (usize, usize, u8) {
    let tag = match &ast.kind {
        AstKind::Number(_) => 0,
        AstKind::Name(_) => 1,
        AstKind::Call { .. } => 2,
        AstKind::Neg(_) => 3,
        AstKind::Transpose(_) => 4,
        AstKind::Binary { .. } => 5,
    };
    (ast.span.start, ast.span.end, tag)
}

/// The kinds undeclared names take when usage leaves them open, as [`letter_default`] says.
pub const LETTER_RULE: &str = "a–g scalar, h–z vector, A–Z matrix";

fn letter_default(name: &str) -> &'static str {
    match name.chars().next() {
        Some('a'..='g') => "scalar",
        Some(c) if c.is_ascii_uppercase() => "matrix",
        _ => "vector",
    }
}

impl Checker {
    fn new_slot(&mut self, slot: Slot) -> SlotId {
        self.parent.push(self.parent.len());
        self.slots.push(slot);
        self.parent.len() - 1
    }

    fn fresh_dim(&mut self) -> SlotId {
        self.new_slot(Slot::Dim {
            name: None,
            size: None,
        })
    }

    fn find(&mut self, mut s: SlotId) -> SlotId {
        while self.parent[s] != s {
            self.parent[s] = self.parent[self.parent[s]];
            s = self.parent[s];
        }
        s
    }

    fn slot(&mut self, s: SlotId) -> Slot {
        let r = self.find(s);
        self.slots[r].clone()
    }

    fn named_dim(&mut self, name: &str, size: Option<usize>) -> SlotId {
        if let Some(&s) = self.named_dims.get(name) {
            return s;
        }
        let s = self.new_slot(Slot::Dim {
            name: Some(name.to_string()),
            size,
        });
        self.named_dims.insert(name.to_string(), s);
        s
    }

    fn literal_dim(&mut self, size: usize) -> SlotId {
        self.new_slot(Slot::Dim {
            name: None,
            size: Some(size),
        })
    }

    /// Merges two slots; `Err` holds nothing: the caller reports with both shapes.
    fn unify(&mut self, a: SlotId, b: SlotId) -> Result<(), ()> {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra == rb {
            return Ok(());
        }
        let merged = match (self.slots[ra].clone(), self.slots[rb].clone()) {
            (Slot::Unknown, other) | (other, Slot::Unknown) => other,
            (Slot::One, Slot::One) => Slot::One,
            (Slot::One, Slot::Dim { .. }) | (Slot::Dim { .. }, Slot::One) => return Err(()),
            (
                Slot::Dim {
                    name: name_a,
                    size: size_a,
                },
                Slot::Dim {
                    name: name_b,
                    size: size_b,
                },
            ) => {
                let size = match (size_a, size_b) {
                    (Some(x), Some(y)) if x != y => return Err(()),
                    (x, y) => x.or(y),
                };
                // Two declared names are two dimensions, even when the sizes happen to agree.
                if name_a.is_some() && name_b.is_some() && name_a != name_b {
                    return Err(());
                }
                Slot::Dim {
                    name: name_a.or(name_b),
                    size,
                }
            }
        };
        self.parent[rb] = ra;
        self.slots[ra] = merged;
        // Of two automatic names, the one given first stays (`A` is `matrix(m,n)` however
        // its dimensions were merged).
        if let Some(name) = self.auto_names.remove(&rb) {
            let keep = match self.auto_names.remove(&ra) {
                Some(other) if other.0 < name.0 => other,
                _ => name,
            };
            self.auto_names.insert(ra, keep);
        }
        Ok(())
    }

    fn describe(&mut self, ty: Ty) -> String {
        let r = self.slot(ty.rows);
        let c = self.slot(ty.cols);
        match (&r, &c) {
            (Slot::One, Slot::One) => "scalar".into(),
            (Slot::One, Slot::Dim { .. }) => format!("row vector({})", self.dim_name(ty.cols)),
            (Slot::Dim { .. }, Slot::One) => format!("vector({})", self.dim_name(ty.rows)),
            (Slot::Dim { .. }, Slot::Dim { .. }) => {
                format!(
                    "matrix({},{})",
                    self.dim_name(ty.rows),
                    self.dim_name(ty.cols)
                )
            }
            _ => "a value of unknown shape".into(),
        }
    }

    /// The dimension's declared name, its size, or an automatic name given on first use.
    fn dim_name(&mut self, s: SlotId) -> String {
        let root = self.find(s);
        match &self.slots[root] {
            Slot::Dim { name: Some(n), .. } => return n.clone(),
            Slot::Dim { size: Some(k), .. } => return k.to_string(),
            _ => {}
        }
        if let Some((_, n)) = self.auto_names.get(&root) {
            return n.clone();
        }
        let name = loop {
            const POOL: [&str; 7] = ["m", "n", "p", "q", "r", "k", "l"];
            let candidate = match POOL.get(self.next_auto) {
                Some(n) => n.to_string(),
                None => format!("d{}", self.next_auto - POOL.len() + 1),
            };
            self.next_auto += 1;
            if !self.taken_names.contains(&candidate) {
                break candidate;
            }
        };
        self.auto_names.insert(root, (self.next_auto, name.clone()));
        name
    }

    /// Names every dimension, variables' dimensions first in order of appearance.
    fn name_all_dims(&mut self) {
        let var_slots: Vec<SlotId> = self
            .vars
            .iter()
            .flat_map(|v| [v.ty.rows, v.ty.cols])
            .collect();
        for s in var_slots.into_iter().chain(0..self.slots.len()) {
            if matches!(self.slot(s), Slot::Dim { .. }) {
                self.dim_name(s);
            }
        }
    }

    fn unify_ty(&mut self, a: Ty, b: Ty, at: Span, what: &str) -> Result<(), Diagnostic> {
        let before = (self.describe(a), self.describe(b));
        if self.unify(a.rows, b.rows).is_err() || self.unify(a.cols, b.cols).is_err() {
            return Err(Diagnostic::new(
                format!("shape mismatch in {what}: {} and {}", before.0, before.1),
                at,
            ));
        }
        Ok(())
    }

    fn scalar_ty(&mut self) -> Ty {
        let one = self.new_slot(Slot::One);
        Ty {
            rows: one,
            cols: one,
        }
    }

    fn unknown_ty(&mut self) -> Ty {
        Ty {
            rows: self.new_slot(Slot::Unknown),
            cols: self.new_slot(Slot::Unknown),
        }
    }

    /// `Some(true)` scalar, `Some(false)` not a scalar, `None` not known yet.
    fn is_scalar(&mut self, ty: Ty) -> Option<bool> {
        match (self.slot(ty.rows), self.slot(ty.cols)) {
            (Slot::One, Slot::One) => Some(true),
            (Slot::Dim { .. }, _) | (_, Slot::Dim { .. }) => Some(false),
            _ => None,
        }
    }

    /// Checks the `where` definitions in order: each name is new (not a variable, dimension,
    /// function, kind or earlier definition), and each definition uses only names before it.
    fn define(&mut self, ast: &ProgramAst) -> Result<(), Diagnostic> {
        self.def_names = ast.defs.iter().map(|d| d.name.clone()).collect();
        for def in &ast.defs {
            let name = def.name.as_str();
            let clash = if crate::parse::is_function(name) || crate::parse::KINDS.contains(&name) {
                Some("a word of the language")
            } else if self.var_index.contains_key(name) {
                Some("a declared variable")
            } else if self.named_dims.contains_key(name) {
                Some("a dimension")
            } else if self.defs.contains_key(name) {
                Some("defined twice")
            } else {
                None
            };
            if let Some(what) = clash {
                return Err(Diagnostic::new(
                    format!("`{name}` is {what}; a `where` clause defines new names"),
                    def.name_span,
                ));
            }
            let ty = self.infer(&def.expr)?;
            self.defs.insert(def.name.clone(), ty);
        }
        Ok(())
    }

    fn declare(&mut self, ast: &ProgramAst) -> Result<(), Diagnostic> {
        for decl in &ast.decls {
            if crate::parse::is_function(&decl.name) {
                return Err(Diagnostic::new(
                    format!(
                        "`{}` is a function name and cannot be a variable",
                        decl.name
                    ),
                    decl.name_span,
                ));
            }
            if self.var_index.contains_key(&decl.name) {
                return Err(Diagnostic::new(
                    format!("`{}` is declared twice", decl.name),
                    decl.name_span,
                ));
            }
            let mut dims = Vec::new();
            for d in &decl.dims {
                dims.push(match d {
                    DimSpec::Named(n, _) => self.named_dim(n, None),
                    DimSpec::Literal(k, _) => self.literal_dim(*k),
                });
            }
            let arity_error = |want: &str| {
                Diagnostic::new(format!("`{}` takes {want}", decl.kind), decl.kind_span)
            };
            let (ty, symmetric, positive_definite) = match decl.kind.as_str() {
                "scalar" => {
                    if !dims.is_empty() {
                        return Err(arity_error("no dimensions"));
                    }
                    (self.scalar_ty(), false, false)
                }
                "vector" => {
                    let n = match dims.as_slice() {
                        [] => self.fresh_dim(),
                        [n] => *n,
                        _ => return Err(arity_error("one dimension: vector(n)")),
                    };
                    let one = self.new_slot(Slot::One);
                    (Ty { rows: n, cols: one }, false, false)
                }
                "matrix" => match dims.as_slice() {
                    [] => (
                        Ty {
                            rows: self.fresh_dim(),
                            cols: self.fresh_dim(),
                        },
                        false,
                        false,
                    ),
                    [m, n] => (Ty { rows: *m, cols: *n }, false, false),
                    _ => return Err(arity_error("two dimensions: matrix(m,n)")),
                },
                "symmetric" | "spd" => {
                    let n = match dims.as_slice() {
                        [] => self.fresh_dim(),
                        [n] => *n,
                        _ => return Err(arity_error("one dimension: symmetric(n)")),
                    };
                    (Ty { rows: n, cols: n }, true, decl.kind == "spd")
                }
                other => {
                    return Err(
                        Diagnostic::new(format!("unknown kind `{other}`"), decl.kind_span)
                            .with_help(
                                "kinds are scalar, vector(n), matrix(m,n), symmetric(n), spd(n)",
                            ),
                    )
                }
            };
            self.var_index.insert(decl.name.clone(), self.vars.len());
            self.vars.push(VarEntry {
                name: decl.name.clone(),
                ty,
                span: decl.name_span,
                symmetric,
                positive_definite,
                by_letter: false,
            });
        }
        Ok(())
    }

    fn infer(&mut self, ast: &Ast) -> Result<Ty, Diagnostic> {
        let ty = self.infer_inner(ast)?;
        self.types.insert(key(ast), ty);
        Ok(ty)
    }

    fn infer_inner(&mut self, ast: &Ast) -> Result<Ty, Diagnostic> {
        match &ast.kind {
            AstKind::Number(_) => Ok(self.scalar_ty()),
            AstKind::Name(name) => self.name_type(name, ast.span),
            AstKind::Neg(inner) => self.infer(inner),
            AstKind::Transpose(inner) => {
                let t = self.infer(inner)?;
                Ok(Ty {
                    rows: t.cols,
                    cols: t.rows,
                })
            }
            AstKind::Call {
                name,
                name_span,
                args,
            } => self.call_type(name, *name_span, args, ast),
            AstKind::Binary {
                op,
                op_span,
                lhs,
                rhs,
            } => {
                let (l, r) = (self.infer(lhs)?, self.infer(rhs)?);
                let at = *op_span;
                let k = key(ast);
                match op {
                    BinOp::Add | BinOp::Sub => {
                        let before = (self.describe(l), self.describe(r));
                        if self.unify(l.rows, r.rows).is_err()
                            || self.unify(l.cols, r.cols).is_err()
                        {
                            let verb = if *op == BinOp::Add { "add" } else { "subtract" };
                            let mut d = Diagnostic::new(
                                format!(
                                    "shape mismatch: cannot {verb} {} and {}",
                                    before.0, before.1
                                ),
                                at,
                            );
                            if before.0 == "scalar" || before.1 == "scalar" {
                                d = d.with_help(
                                    "a scalar does not broadcast; write vector(c) or matrix(c) for a constant of the other shape",
                                );
                            }
                            return Err(d);
                        }
                        Ok(l)
                    }
                    BinOp::Div => {
                        let before = (self.describe(l), self.describe(r));
                        let s = self.scalar_ty();
                        if self.unify(r.rows, s.rows).is_err()
                            || self.unify(r.cols, s.cols).is_err()
                        {
                            return Err(Diagnostic::new(
                                format!("cannot divide {} by {}: the divisor must be a scalar", before.0, before.1),
                                at,
                            )
                            .with_help("use ./ for element-wise division, or inv(...) for a matrix inverse"));
                        }
                        self.resolved.insert(k, Resolved::ScaleRight);
                        Ok(l)
                    }
                    BinOp::Mul | BinOp::ElemMul | BinOp::ElemDiv | BinOp::Pow | BinOp::ElemPow => {
                        let out = self.unknown_ty();
                        let pending = Pending::Binary {
                            op: *op,
                            at,
                            lhs: l,
                            rhs: r,
                            out,
                        };
                        self.pending.push((pending, k));
                        Ok(out)
                    }
                }
            }
        }
    }

    fn name_type(&mut self, name: &str, span: Span) -> Result<Ty, Diagnostic> {
        if name == "eye" {
            let d = self.fresh_dim();
            return Ok(Ty { rows: d, cols: d });
        }
        if crate::parse::is_function(name) {
            return Err(Diagnostic::new(
                format!("`{name}` is a function: write {name}(...)"),
                span,
            ));
        }
        if crate::parse::KINDS.contains(&name) {
            return Err(Diagnostic::new(
                format!("`{name}` is a kind; declare a variable with `x: {name}(...)` before the expression"),
                span,
            ));
        }
        if let Some(&i) = self.var_index.get(name) {
            return Ok(self.vars[i].ty);
        }
        if let Some(&ty) = self.defs.get(name) {
            return Ok(ty);
        }
        if self.def_names.iter().any(|d| d == name) {
            return Err(Diagnostic::new(
                format!("`{name}` is used before its definition; a `where` definition may use only the names defined before it"),
                span,
            ));
        }
        let ty = self.unknown_ty();
        self.var_index.insert(name.to_string(), self.vars.len());
        self.vars.push(VarEntry {
            name: name.to_string(),
            ty,
            span,
            symmetric: false,
            positive_definite: false,
            by_letter: false,
        });
        Ok(ty)
    }

    fn call_type(
        &mut self,
        name: &str,
        name_span: Span,
        args: &[Ast],
        ast: &Ast,
    ) -> Result<Ty, Diagnostic> {
        let want = |n: usize| -> Result<(), Diagnostic> {
            if args.len() != n {
                Err(Diagnostic::new(
                    format!(
                        "`{name}` takes {n} argument{}, found {}",
                        if n == 1 { "" } else { "s" },
                        args.len()
                    ),
                    ast.span,
                ))
            } else {
                Ok(())
            }
        };
        let Some(function) = Function::from_name(name) else {
            let known = Function::names().join(", ");
            return Err(
                Diagnostic::new(format!("unknown function `{name}`"), name_span)
                    .with_help(format!("the functions are {known}")),
            );
        };
        match function {
            Function::Vector | Function::Matrix => {
                want(1)?;
                if constant_value(&args[0]).is_none() {
                    return Err(Diagnostic::new(
                        format!("`{name}(c)` takes a numeric constant"),
                        args[0].span,
                    ));
                }
                let rows = self.fresh_dim();
                let cols = if function == Function::Vector {
                    self.new_slot(Slot::One)
                } else {
                    self.fresh_dim()
                };
                Ok(Ty { rows, cols })
            }
            Function::Eye => {
                want(0)?;
                let d = self.fresh_dim();
                Ok(Ty { rows: d, cols: d })
            }
            Function::Map(_) => {
                want(1)?;
                self.infer(&args[0])
            }
            Function::Sum | Function::Norm1 | Function::Norm2 => {
                want(1)?;
                self.infer(&args[0])?;
                Ok(self.scalar_ty())
            }
            Function::Trace | Function::Det | Function::LogDet | Function::Inv => {
                want(1)?;
                let t = self.infer(&args[0])?;
                let shape = self.describe(t);
                if self.unify(t.rows, t.cols).is_err() {
                    return Err(Diagnostic::new(
                        format!("`{name}` needs a square matrix, found {shape}"),
                        args[0].span,
                    ));
                }
                Ok(if function == Function::Inv {
                    t
                } else {
                    self.scalar_ty()
                })
            }
            Function::Diag => {
                want(1)?;
                let arg = self.infer(&args[0])?;
                let out = self.unknown_ty();
                self.pending.push((
                    Pending::Diag {
                        at: name_span,
                        arg,
                        out,
                    },
                    key(ast),
                ));
                Ok(out)
            }
        }
    }

    /// Resolves pending operators; when stuck, applies one variable's letter default.
    fn solve(&mut self) -> Result<(), Diagnostic> {
        loop {
            let mut progress = true;
            while progress {
                progress = false;
                let pending = std::mem::take(&mut self.pending);
                for (p, k) in pending {
                    match self.try_resolve(&p)? {
                        Some(r) => {
                            self.resolved.insert(k, r);
                            progress = true;
                        }
                        None => self.pending.push((p, k)),
                    }
                }
            }
            if self.apply_next_default() {
                continue;
            }
            // Only constants and intermediate results are undecided: take them as non-scalar.
            let Some((p, _)) = self.pending.first().cloned() else {
                break;
            };
            let tys = match p {
                Pending::Binary { lhs, rhs, .. } => vec![lhs, rhs],
                Pending::Diag { arg, .. } => vec![arg],
            };
            let mut changed = false;
            for t in tys {
                for s in [t.rows, t.cols] {
                    if self.slot(s) == Slot::Unknown {
                        let d = self.fresh_dim();
                        let _ = self.unify(s, d);
                        changed = true;
                    }
                }
            }
            if !changed {
                return Err(Diagnostic::new(
                    "cannot infer the shapes around this operator",
                    p.at(),
                ));
            }
        }
        // Whatever is still open becomes a dimension of its own.
        for s in 0..self.slots.len() {
            if self.slot(s) == Slot::Unknown {
                let d = self.fresh_dim();
                let _ = self.unify(s, d);
            }
        }
        Ok(())
    }

    fn apply_next_default(&mut self) -> bool {
        for i in 0..self.vars.len() {
            let ty = self.vars[i].ty;
            let (r, c) = (self.slot(ty.rows), self.slot(ty.cols));
            if r != Slot::Unknown && c != Slot::Unknown {
                continue;
            }
            let kind = letter_default(&self.vars[i].name);
            self.vars[i].by_letter = true;
            let (want_r, want_c) = match kind {
                "scalar" => (Slot::One, Slot::One),
                "vector" => (
                    Slot::Dim {
                        name: None,
                        size: None,
                    },
                    Slot::One,
                ),
                _ => (
                    Slot::Dim {
                        name: None,
                        size: None,
                    },
                    Slot::Dim {
                        name: None,
                        size: None,
                    },
                ),
            };
            for (slot, want) in [(ty.rows, want_r), (ty.cols, want_c)] {
                if self.slot(slot) != Slot::Unknown {
                    continue;
                }
                let target = self.new_slot(want);
                if self.unify(slot, target).is_err() {
                    let d = self.fresh_dim();
                    let _ = self.unify(slot, d);
                }
            }
            // A scalar default that clashes with a bound side falls back to a dimension.
            let (r, c) = (self.slot(ty.rows), self.slot(ty.cols));
            if (r == Slot::One) != (c == Slot::One) && kind == "scalar" {
                // Mixed (row or column vector): leave as is, it is what usage asked for.
            }
            return true;
        }
        false
    }

    /// `*`: a scalar on either side scales the other; else the matrix product.
    fn resolve_product(
        &mut self,
        at: Span,
        lhs: Ty,
        rhs: Ty,
        out: Ty,
    ) -> Result<Option<Resolved>, Diagnostic> {
        match (self.is_scalar(lhs), self.is_scalar(rhs)) {
            (Some(true), _) => {
                self.unify_ty(out, rhs, at, "a product")?;
                Ok(Some(Resolved::ScaleLeft))
            }
            (_, Some(true)) => {
                self.unify_ty(out, lhs, at, "a product")?;
                Ok(Some(Resolved::ScaleRight))
            }
            (Some(false), Some(false)) => {
                let before = (self.describe(lhs), self.describe(rhs));
                if self.unify(lhs.cols, rhs.rows).is_err() {
                    let mut d = Diagnostic::new(
                        format!(
                            "shape mismatch: cannot multiply {} by {}",
                            before.0, before.1
                        ),
                        at,
                    );
                    if before.0.starts_with("vector") && before.1.starts_with("vector") {
                        d = d.with_help(
                            "for the inner product write x'*y; for the element-wise product x.*y",
                        );
                    }
                    return Err(d);
                }
                let o = Ty {
                    rows: lhs.rows,
                    cols: rhs.cols,
                };
                self.unify_ty(out, o, at, "a product")?;
                Ok(Some(Resolved::MatMul))
            }
            _ => Ok(None),
        }
    }

    /// `.* ./ .^`: a scalar on either side broadcasts; else the shapes must agree.
    fn resolve_elementwise(
        &mut self,
        op: BinOp,
        at: Span,
        lhs: Ty,
        rhs: Ty,
        out: Ty,
    ) -> Result<Option<Resolved>, Diagnostic> {
        match (self.is_scalar(lhs), self.is_scalar(rhs)) {
            (Some(true), _) => {
                self.unify_ty(out, rhs, at, "an element-wise operation")?;
                Ok(Some(Resolved::ScaleLeft))
            }
            (_, Some(true)) => {
                self.unify_ty(out, lhs, at, "an element-wise operation")?;
                Ok(Some(Resolved::ScaleRight))
            }
            (Some(false), Some(false)) => {
                let before = (self.describe(lhs), self.describe(rhs));
                if self.unify(lhs.rows, rhs.rows).is_err()
                    || self.unify(lhs.cols, rhs.cols).is_err()
                {
                    let what = match op {
                        BinOp::ElemMul => "product",
                        BinOp::ElemDiv => "quotient",
                        _ => "power",
                    };
                    return Err(Diagnostic::new(
                        format!(
                            "shape mismatch: element-wise {what} of {} and {}",
                            before.0, before.1
                        ),
                        at,
                    ));
                }
                self.unify_ty(out, lhs, at, "an element-wise operation")?;
                Ok(Some(Resolved::ElementWise))
            }
            _ => Ok(None),
        }
    }

    /// `^`: the scalar power, or the matrix power of a square matrix.
    fn resolve_power(
        &mut self,
        at: Span,
        lhs: Ty,
        rhs: Ty,
        out: Ty,
    ) -> Result<Option<Resolved>, Diagnostic> {
        match self.is_scalar(lhs) {
            Some(true) => {
                let before = self.describe(rhs);
                let s = self.scalar_ty();
                if self.unify(rhs.rows, s.rows).is_err() || self.unify(rhs.cols, s.cols).is_err() {
                    return Err(Diagnostic::new(
                        format!("the exponent of a scalar power must be a scalar, found {before}"),
                        at,
                    )
                    .with_help("use .^ for an element-wise power"));
                }
                self.unify_ty(out, s, at, "a power")?;
                Ok(Some(Resolved::ScalarPow))
            }
            Some(false) => {
                let before = self.describe(lhs);
                if self.unify(lhs.rows, lhs.cols).is_err() {
                    return Err(Diagnostic::new(
                        format!("`^` on {before}: a matrix power needs a square matrix"),
                        at,
                    )
                    .with_help("use .^ for an element-wise power"));
                }
                let s = self.scalar_ty();
                let _ = self.unify(rhs.rows, s.rows);
                let _ = self.unify(rhs.cols, s.cols);
                self.unify_ty(out, lhs, at, "a power")?;
                Ok(Some(Resolved::MatrixPow))
            }
            None => Ok(None),
        }
    }

    fn try_resolve(&mut self, p: &Pending) -> Result<Option<Resolved>, Diagnostic> {
        match *p {
            Pending::Binary {
                op,
                at,
                lhs,
                rhs,
                out,
            } => match op {
                BinOp::Pow => self.resolve_power(at, lhs, rhs, out),
                BinOp::Mul => self.resolve_product(at, lhs, rhs, out),
                _ => self.resolve_elementwise(op, at, lhs, rhs, out),
            },
            Pending::Diag { at, arg, out } => {
                let (r, c) = (self.slot(arg.rows), self.slot(arg.cols));
                match (r, c) {
                    (Slot::Dim { .. }, Slot::One) => {
                        let o = Ty {
                            rows: arg.rows,
                            cols: arg.rows,
                        };
                        self.unify_ty(out, o, at, "diag")?;
                        Ok(Some(Resolved::DiagOfVector))
                    }
                    (Slot::Dim { .. }, Slot::Dim { .. }) => {
                        let before = self.describe(arg);
                        if self.unify(arg.rows, arg.cols).is_err() {
                            return Err(Diagnostic::new(
                                format!("`diag` takes a vector or a square matrix, found {before}"),
                                at,
                            ));
                        }
                        let one = self.new_slot(Slot::One);
                        self.unify_ty(
                            out,
                            Ty {
                                rows: arg.rows,
                                cols: one,
                            },
                            at,
                            "diag",
                        )?;
                        Ok(Some(Resolved::DiagOfMatrix))
                    }
                    (Slot::One, _) => {
                        let before = self.describe(arg);
                        Err(Diagnostic::new(
                            format!("`diag` takes a vector or a square matrix, found {before}"),
                            at,
                        ))
                    }
                    _ => Ok(None),
                }
            }
        }
    }
}

/// The value of a numeric literal, possibly negated.
fn constant_value(ast: &Ast) -> Option<f64> {
    match &ast.kind {
        AstKind::Number(v) => Some(*v),
        AstKind::Neg(inner) => constant_value(inner).map(|v| -v),
        _ => None,
    }
}

/// Builds the graph once every slot is resolved.
struct Lowering<'c> {
    checker: &'c Checker,
    graph: Graph,
    dims: HashMap<SlotId, Dim>,
    var_ids: HashMap<String, u32>,
    /// The lowered `where` definitions, by name.
    def_ids: HashMap<String, Id>,
}

impl<'c> Lowering<'c> {
    fn new(checker: &'c Checker) -> Lowering<'c> {
        let mut lowering = Lowering {
            checker,
            graph: Graph::default(),
            dims: HashMap::new(),
            var_ids: HashMap::new(),
            def_ids: HashMap::new(),
        };
        let roots = checker
            .vars
            .iter()
            .flat_map(|v| [v.ty.rows, v.ty.cols])
            .chain(0..checker.slots.len())
            .map(|s| root_of(checker, s));
        for r in roots {
            if lowering.dims.contains_key(&r) {
                continue;
            }
            let dim = match &checker.slots[r] {
                Slot::One => Dim::One,
                Slot::Dim { name, size } => {
                    let name = match (name, size, checker.auto_names.get(&r)) {
                        (Some(n), _, _) => n.clone(),
                        (None, Some(k), _) => k.to_string(),
                        (None, None, Some((_, auto))) => auto.clone(),
                        (None, None, None) => format!("d{r}"),
                    };
                    lowering.graph.add_dim(DimInfo { name, size: *size })
                }
                Slot::Unknown => lowering.graph.add_dim(DimInfo {
                    name: format!("d{r}"),
                    size: None,
                }),
            };
            lowering.dims.insert(r, dim);
        }
        for v in &checker.vars {
            let shape = lowering.shape(v.ty);
            let id = lowering.graph.add_var(Var {
                name: v.name.clone(),
                shape,
                symmetric: v.symmetric,
                positive_definite: v.positive_definite,
            });
            lowering.var_ids.insert(v.name.clone(), id);
        }
        lowering
    }

    fn shape(&self, ty: Ty) -> Shape {
        let d = |s: SlotId| self.dims[&root_of(self.checker, s)];
        Shape::new(d(ty.rows), d(ty.cols))
    }

    fn ty(&self, ast: &Ast) -> Ty {
        self.checker.types[&key(ast)]
    }

    fn lower(&mut self, ast: &Ast) -> Result<Id, Diagnostic> {
        Ok(match &ast.kind {
            AstKind::Number(v) => self.graph.constant(*v),
            AstKind::Name(name) if name == "eye" => {
                let shape = self.shape(self.ty(ast));
                self.graph.eye(shape.rows)
            }
            AstKind::Name(name) => match self.def_ids.get(name) {
                Some(&id) => id,
                None => {
                    let v = self.var_ids[name];
                    self.graph.var(v)
                }
            },
            AstKind::Neg(inner) => match inner.kind {
                AstKind::Number(v) => self.graph.constant(-v),
                _ => {
                    let a = self.lower(inner)?;
                    self.graph.neg(a)
                }
            },
            AstKind::Transpose(inner) => {
                let a = self.lower(inner)?;
                self.graph.transpose(a)
            }
            AstKind::Call { name, args, .. } => {
                let shape = self.shape(self.ty(ast));
                let Some(function) = Function::from_name(name) else {
                    return unreachable_function(name, ast.span);
                };
                match function {
                    Function::Vector | Function::Matrix => {
                        let c = constant_value(&args[0]).unwrap_or(0.0);
                        self.graph.fill(c, shape)
                    }
                    Function::Eye => self.graph.eye(shape.rows),
                    _ => {
                        let a = self.lower(&args[0])?;
                        let g = &mut self.graph;
                        match function {
                            Function::Sum => g.sum(a),
                            Function::Norm1 => g.push(crate::expr::Node::Norm1(a)),
                            Function::Norm2 => g.push(crate::expr::Node::Norm2(a)),
                            Function::Trace => g.trace(a),
                            Function::Det => g.det(a),
                            Function::LogDet => g.push(crate::expr::Node::LogDet(a)),
                            Function::Inv => g.inv(a),
                            Function::Diag => match self.checker.resolved.get(&key(ast)) {
                                Some(Resolved::DiagOfMatrix) => g.diag_part(a),
                                _ => g.diag(a),
                            },
                            Function::Map(func) => g.map(func, a),
                            Function::Vector | Function::Matrix | Function::Eye => {
                                unreachable!("constructors are lowered above")
                            }
                        }
                    }
                }
            }
            AstKind::Binary { op, lhs, rhs, .. } => {
                let resolved = self.checker.resolved.get(&key(ast)).copied();
                if matches!(resolved, Some(Resolved::MatrixPow)) {
                    let k = match constant_value(rhs) {
                        Some(k) if k >= 1.0 && k.fract() == 0.0 && k <= 64.0 => k as u32,
                        _ => return Err(Diagnostic::new(
                            "a matrix power needs a positive integer literal exponent (at most 64)",
                            rhs.span,
                        )
                        .with_help("use inv(X) for the inverse and .^ for an element-wise power")),
                    };
                    let a = self.lower(lhs)?;
                    return Ok(self.graph.mat_pow(a, k));
                }
                let a = self.lower(lhs)?;
                let b = self.lower(rhs)?;
                let g = &mut self.graph;
                match op {
                    BinOp::Add => g.add(a, b),
                    BinOp::Sub => g.sub(a, b),
                    BinOp::Mul => g.mul(a, b),
                    BinOp::ElemMul => g.hadamard(a, b),
                    BinOp::Div => g.div(a, b),
                    BinOp::ElemDiv => g.elem_div(a, b),
                    BinOp::Pow => g.pow(a, b),
                    BinOp::ElemPow => g.elem_pow(a, b),
                }
            }
        })
    }
}

fn unreachable_function(name: &str, span: Span) -> Result<Id, Diagnostic> {
    Err(Diagnostic::new(format!("unknown function `{name}`"), span))
}

/// Every name the program's expression and definitions mention (variables and functions
/// alike), except the names its `where` clause defines.
fn program_names(ast: &ProgramAst) -> Vec<String> {
    let mut names = Vec::new();
    collect_names(&ast.expr, &mut names);
    for def in &ast.defs {
        collect_names(&def.expr, &mut names);
    }
    names.retain(|n| ast.defs.iter().all(|d| d.name != *n));
    names
}

/// Every name the expression mentions (variables and functions alike).
fn collect_names(ast: &Ast, out: &mut Vec<String>) {
    match &ast.kind {
        AstKind::Number(_) => {}
        AstKind::Name(n) => out.push(n.clone()),
        AstKind::Call { args, .. } => args.iter().for_each(|a| collect_names(a, out)),
        AstKind::Neg(x) | AstKind::Transpose(x) => collect_names(x, out),
        AstKind::Binary { lhs, rhs, .. } => {
            collect_names(lhs, out);
            collect_names(rhs, out);
        }
    }
}

fn root_of(checker: &Checker, mut s: SlotId) -> SlotId {
    while checker.parent[s] != s {
        s = checker.parent[s];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks the program and renders the root's shape, or the error with its caret column.
    fn check(source: &str, expected: &str) {
        let got = match check_program(source) {
            Ok(p) => p.graph.describe_shape(p.graph.shape(p.root)),
            Err(e) => format!("error at {}: {}", e.span.map_or(0, |s| s.start), e.message),
        };
        assert_eq!(got, expected, "program: {source}");
    }

    fn var_shape(source: &str, var: &str) -> String {
        let p = check_program(source).unwrap();
        let v = p.var_index(var).unwrap();
        p.graph.describe_shape(p.graph.vars[v as usize].shape)
    }

    #[test]
    fn where_definitions_are_checked_in_order() {
        check(
            "x: vector(3); s2*x where s1 = x'*x+1, s2 = s1^2",
            "vector(3)",
        );
        check("x: vector(3); s1 where s1 = x*x'", "matrix(3,3)");
        check(
            "x: vector(3); s1 where s1 = s2*x, s2 = x'*x",
            "error at 28: `s2` is used before its definition; a `where` definition may use only the names defined before it",
        );
        check(
            "x: vector(3); s1 where s1 = s1",
            "error at 28: `s1` is used before its definition; a `where` definition may use only the names defined before it",
        );
        check(
            "x: vector(3); x where x = 1",
            "error at 22: `x` is a declared variable; a `where` clause defines new names",
        );
        check(
            "x: vector(n); x where n = 1",
            "error at 22: `n` is a dimension; a `where` clause defines new names",
        );
        check(
            "x: vector(3); s1 where s1 = x, s1 = x",
            "error at 31: `s1` is defined twice; a `where` clause defines new names",
        );
        check(
            "x: vector(3); x where exp = 1",
            "error at 22: `exp` is a word of the language; a `where` clause defines new names",
        );
        // A definition is a value, lowered once: both uses are the same node.
        let p = check_program("x: vector(3); s1*s1 where s1 = x'*x+1").unwrap();
        let direct = check_program("x: vector(3); (x'*x+1)*(x'*x+1)").unwrap();
        assert_eq!(p.graph.len(), direct.graph.len());
    }

    #[test]
    fn kinds_follow_usage_then_the_first_letter() {
        check("(A*x+b)'*(A*x+b)", "scalar");
        assert!(var_shape("(A*x+b)'*(A*x+b)", "b").starts_with("vector"));
        check("a*x", "vector(m)");
        assert_eq!(var_shape("a*x", "a"), "scalar");
        check("x'*A*x", "scalar");
        // `a`–`g` are scalars unless usage or a declaration says otherwise.
        check("a'*X*b", "matrix(m,n)");
        check("a: vector; b: vector; a'*X*b", "scalar");
        check("sin(X)", "matrix(m,n)");
        check("vector(1)+exp(x)", "vector(m)");
    }

    #[test]
    fn a_mismatch_that_one_declaration_fixes_suggests_it() {
        // `lambda` is a vector by its letter, so `lambda*x'*x` is a vector added to a scalar.
        let source = "(A*x+b)'*(A*x+b)+lambda*x'*x";
        let e = check_program(source).unwrap_err();
        let help = e.help.expect("a help");
        let suggested = format!("lambda: scalar; {source}");
        assert!(help.contains(&format!("`{suggested}`")), "{help}");
        assert!(check_program(&suggested).is_ok());
        // No single declaration fixes a scalar added to a vector: no suggestion.
        let e = check_program("sum(log(1+exp(-y.*(A*w))))").unwrap_err();
        assert_eq!(e.help, None);
        // Declared names and function names are never suggested.
        let e = check_program("lambda: vector; x: vector; lambda*x'*x + x'*x").unwrap_err();
        assert_eq!(e.help, None, "{}", e.message);
    }

    #[test]
    fn declarations_give_dimensions() {
        check("A: matrix(m,n); x: vector(n); A*x", "vector(m)");
        check("C: symmetric(k); C", "matrix(k,k)");
        check("s: scalar; s*eye", "matrix(m,m)");
    }

    #[test]
    fn mismatches_point_at_the_operator() {
        check(
            "A: matrix(3,4); x: vector(5); A*x",
            "error at 31: shape mismatch: cannot multiply matrix(3,4) by vector(5)",
        );
        check(
            "x: vector(n); x*x",
            "error at 15: shape mismatch: cannot multiply vector(n) by vector(n)",
        );
        check(
            "a: scalar; x: vector(m); a + x",
            "error at 27: shape mismatch: cannot add scalar and vector(m)",
        );
        check(
            "x: vector(m); y: vector(n); x / y",
            "error at 30: cannot divide vector(m) by vector(n): the divisor must be a scalar",
        );
        check("foo(x)", "error at 0: unknown function `foo`");
        check("sin(x, y)", "error at 0: `sin` takes 1 argument, found 2");
        check(
            "A: matrix(m,n); det(A)",
            "error at 20: `det` needs a square matrix, found matrix(m,n)",
        );
        check(
            "X^a",
            "error at 2: a matrix power needs a positive integer literal exponent (at most 64)",
        );
        check(
            "x^2",
            "error at 1: `^` on vector(m): a matrix power needs a square matrix",
        );
        check(
            "x: vector(n); x: scalar; x",
            "error at 14: `x` is declared twice",
        );
        check("A: tensor(3); A", "error at 3: unknown kind `tensor`");
    }
}
