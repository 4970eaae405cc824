//! Stage 5: expression → text, unicode, LaTeX or JSON.
//!
//! In: a node of a [`Graph`]. Out: a string. One precedence-aware writer serves the three
//! textual formats; they differ only in their tokens ([`Style`]). Invariants: the `text`
//! format is the input language itself, so what it prints parses back (with the program's
//! declarations) to an expression of the same value; parentheses appear only where
//! precedence or readability needs them (`2*A'*(A*x+b)`, `(x'*a)*b`); a sum at the top
//! level is spaced (`A'*C*(D*x+e) + D'*C'*(A*x+b)`), nested sums are not. A formula whose
//! tree is large prints with its shared parts named ([`crate::names`]: `... where s1 = ...`,
//! in JSON `ref` nodes and a `where` list), so every format is linear in the DAG's size.

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::expr::{Dim, Func, Function, Graph, Id, Node, Shape};
use crate::symbolic::names::{self, Named};

/// The output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Unicode,
    Latex,
    Json,
}

impl Format {
    pub fn from_name(name: &str) -> Option<Format> {
        match name {
            "text" => Some(Format::Text),
            "unicode" => Some(Format::Unicode),
            "latex" => Some(Format::Latex),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Prints `id` in `format` (JSON pretty-printed). A tree larger than
/// [`names::NAMING_NODES`] prints with its shared parts named ([`names::name_shared`]):
/// `body` then `where s1 = ..., s2 = ...`, which the parser reads back.
pub fn render(graph: &Graph, id: Id, format: Format) -> String {
    match format {
        Format::Text => text(graph, id),
        Format::Unicode => with_names(graph, id, Style::Unicode),
        Format::Latex => with_names(graph, id, Style::Latex),
        Format::Json => pretty_json(&json_tree(graph, id)),
    }
}

/// JSON indented like `serde_json::to_string_pretty` down to [`INDENTED_LEVELS`] levels and
/// compact below, so that a deep tree (a sum of a thousand terms nests a thousand levels)
/// prints in size linear in its nodes instead of quadratic in its depth.
pub fn pretty_json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, Indented::default());
    match value.serialize(&mut ser) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// How many levels of a JSON document [`pretty_json`] indents.
pub const INDENTED_LEVELS: usize = 16;

/// serde_json's pretty formatter above [`INDENTED_LEVELS`], its compact one below.
#[derive(Default)]
struct Indented {
    depth: usize,
    pretty: serde_json::ser::PrettyFormatter<'static>,
}

impl Indented {
    fn indents(&self) -> bool {
        self.depth <= INDENTED_LEVELS
    }
}

impl serde_json::ser::Formatter for Indented {
    fn begin_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        match self.indents() {
            true => self.pretty.begin_array(w),
            false => w.write_all(b"["),
        }
    }

    fn end_array<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        let r = match self.indents() {
            true => self.pretty.end_array(w),
            false => w.write_all(b"]"),
        };
        self.depth -= 1;
        r
    }

    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        match (self.indents(), first) {
            (true, _) => self.pretty.begin_array_value(w, first),
            (false, true) => Ok(()),
            (false, false) => w.write_all(b","),
        }
    }

    fn end_array_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        match self.indents() {
            true => self.pretty.end_array_value(w),
            false => Ok(()),
        }
    }

    fn begin_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        self.depth += 1;
        match self.indents() {
            true => self.pretty.begin_object(w),
            false => w.write_all(b"{"),
        }
    }

    fn end_object<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        let r = match self.indents() {
            true => self.pretty.end_object(w),
            false => w.write_all(b"}"),
        };
        self.depth -= 1;
        r
    }

    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        match (self.indents(), first) {
            (true, _) => self.pretty.begin_object_key(w, first),
            (false, true) => Ok(()),
            (false, false) => w.write_all(b","),
        }
    }

    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        match self.indents() {
            true => self.pretty.begin_object_value(w),
            false => w.write_all(b":"),
        }
    }

    fn end_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        match self.indents() {
            true => self.pretty.end_object_value(w),
            false => Ok(()),
        }
    }
}

/// The input language's syntax, with names for shared parts when the tree is large.
pub fn text(graph: &Graph, id: Id) -> String {
    with_names(graph, id, Style::Text)
}

/// The input language's syntax with every shared part written out where it is used: the
/// tree as it is, whatever its size (the caller bounds it).
pub fn text_in_place(graph: &Graph, id: Id) -> String {
    Writer::new(graph, Style::Text).top(id)
}

fn with_names(graph: &Graph, id: Id, style: Style) -> String {
    named_text(graph, id, names::name_shared(graph, id).as_ref(), style)
}

/// `id` in `style`, written with the names of `named` when it has them.
fn named_text(graph: &Graph, id: Id, named: Option<&Named>, style: Style) -> String {
    let Some(named) = named else {
        return Writer::new(graph, style).top(id);
    };
    let w = Writer::new(&named.graph, style);
    let body = w.top(named.body);
    let defs: Vec<String> = named
        .defs
        .iter()
        .map(|(name, def)| format!("{} = {}", w.name(name), w.top(*def)))
        .collect();
    match style {
        Style::Text | Style::Unicode => format!("{body}\nwhere {}", defs.join(",\n      ")),
        Style::Latex => format!("{body} \\\\ \\text{{where }} {}", defs.join(", \\\\ ")),
    }
}

/// Every format of one formula, its shared parts named once for all of them.
pub struct AllFormats {
    pub text: String,
    pub unicode: String,
    pub latex: String,
    pub tree: Value,
}

/// [`text`], [`render`] in unicode and LaTeX, and [`json_tree`] of `id`, with one
/// [`names::name_shared`] between them (it copies the graph).
pub fn all_formats(graph: &Graph, id: Id) -> AllFormats {
    let named = names::name_shared(graph, id);
    let named = named.as_ref();
    AllFormats {
        text: named_text(graph, id, named, Style::Text),
        unicode: named_text(graph, id, named, Style::Unicode),
        latex: named_text(graph, id, named, Style::Latex),
        tree: named_json(graph, id, named),
    }
}

/// The expression tree with every node's shape. A tree larger than [`names::NAMING_NODES`]
/// shares its repeated parts: they appear as `{"op": "ref", "name": "s1"}`, and the root
/// object's `"where"` lists each name with its shape and tree, in order (each tree refers
/// only to names before it).
pub fn json_tree(graph: &Graph, id: Id) -> Value {
    named_json(graph, id, names::name_shared(graph, id).as_ref())
}

/// The JSON tree of `id`, sharing the parts `named` names when it has them.
fn named_json(graph: &Graph, id: Id, named: Option<&Named>) -> Value {
    let Some(named) = named else {
        return json_node(graph, id, &HashSet::new());
    };
    let refs: HashSet<&str> = named.defs.iter().map(|(n, _)| n.as_str()).collect();
    let g = &named.graph;
    let mut root = json_node(g, named.body, &refs);
    let defs: Vec<Value> = named
        .defs
        .iter()
        .map(|(name, def)| {
            json!({"name": name, "shape": shape_json(g, g.shape(*def)), "tree": json_node(g, *def, &refs)})
        })
        .collect();
    root["where"] = Value::Array(defs);
    root
}

/// One node and its arguments as JSON; variables named in `refs` are references.
fn json_node(graph: &Graph, id: Id, refs: &HashSet<&str>) -> Value {
    let shape = shape_json(graph, graph.shape(id));
    let args: Vec<Value> = graph
        .node(id)
        .args()
        .into_iter()
        .map(|a| json_node(graph, a, refs))
        .collect();
    let node = graph.node(id);
    let mut obj = match node {
        Node::Var(v) if refs.contains(graph.vars[v as usize].name.as_str()) => {
            json!({"op": "ref", "name": graph.vars[v as usize].name})
        }
        Node::Var(v) => json!({"op": "var", "name": graph.vars[v as usize].name}),
        Node::Const(c) | Node::Fill(c, _) => json!({"op": node.op_name(), "value": c.get()}),
        Node::MatPow(_, k) => json!({"op": "matpow", "power": k}),
        Node::Map(f, _) => json!({"op": "map", "func": f.name()}),
        _ => json!({"op": node.op_name()}),
    };
    obj["shape"] = shape;
    if !args.is_empty() {
        obj["args"] = Value::Array(args);
    }
    obj
}

fn shape_json(graph: &Graph, shape: Shape) -> Value {
    let dim = |d: Dim| match d {
        Dim::One => json!(1),
        Dim::Sym(i) => match &graph.dims[i as usize] {
            info if info.size.is_some() => json!(info.size),
            info => json!(info.name),
        },
    };
    json!([dim(shape.rows), dim(shape.cols)])
}

/// Formats a number so that it reads back exactly (`2`, `0.5`, `-1`, `1e-60`): the
/// shortest digits that round-trip, in scientific notation when very small or very large.
pub fn number(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else if v != 0.0 && (v.abs() < 1e-4 || v.abs() >= 1e15) {
        format!("{v:e}")
    } else {
        format!("{v}")
    }
}

/// `v` as `(p, q)` with `v == p / q` exactly in float64, for a denominator `q` from 1 to 16
/// (the smallest), when there is one: `2/3`, `-5/4`, `7`.
pub fn fraction(v: f64) -> Option<(i64, i64)> {
    if !v.is_finite() || v.abs() >= 1e15 {
        return None;
    }
    (1..=16i64).find_map(|q| {
        let p = (v * q as f64).round();
        (p / q as f64 == v).then_some((p as i64, q))
    })
}

/// The number every entry of `id` is, when `id` is a filled constant: `vector(2)`,
/// `2*vector(1)`, `-vector(2)`.
fn filled_with(g: &Graph, id: Id) -> Option<f64> {
    match g.node(id) {
        Node::Fill(c, _) => Some(c.get()),
        Node::Neg(a) => filled_with(g, a).map(|c| -c),
        Node::Scale(k, a) => match g.node(k) {
            Node::Const(k) => filled_with(g, a).map(|c| k.get() * c),
            _ => None,
        },
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    Text,
    Unicode,
    Latex,
}

/// Binding strength, loosest first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Prec {
    Sum = 1,
    Product = 2,
    Unary = 3,
    Power = 4,
    Postfix = 5,
    Atom = 6,
}

struct Writer<'g> {
    g: &'g Graph,
    style: Style,
}

impl<'g> Writer<'g> {
    fn new(g: &'g Graph, style: Style) -> Writer<'g> {
        Writer { g, style }
    }

    fn top(&self, id: Id) -> String {
        self.expr(id, true, false).0
    }

    fn paren(&self, s: String) -> String {
        match self.style {
            Style::Latex => format!("\\left({s}\\right)"),
            _ => format!("({s})"),
        }
    }

    /// Prints `id` so that it binds at least as tightly as `min`.
    fn operand(&self, id: Id, min: Prec, scalar_prefix: bool) -> String {
        let (s, p) = self.expr(id, false, scalar_prefix);
        if p < min {
            self.paren(s)
        } else {
            s
        }
    }

    /// A node is negative-looking when it prints with a leading minus.
    fn is_negative(&self, id: Id) -> bool {
        match self.g.node(id) {
            Node::Neg(_) => true,
            Node::Const(c) => c.get() < 0.0,
            _ => false,
        }
    }

    fn expr(&self, id: Id, spaced: bool, scalar_prefix: bool) -> (String, Prec) {
        let g = self.g;
        let text = self.style == Style::Text;
        match g.node(id) {
            Node::Var(v) => (self.name(&g.vars[v as usize].name), Prec::Atom),
            Node::Const(c) => self.constant(c.get()),
            Node::Fill(c, shape) => self.fill(c.get(), shape),
            Node::Eye(_) => (if text { "eye".into() } else { "I".into() }, Prec::Atom),
            Node::Add(a, b) => {
                let left = self.operand_sum(a, spaced);
                let (op, right_id) = match g.node(b) {
                    Node::Neg(inner) => (self.minus(spaced), inner),
                    _ => (self.plus(spaced), b),
                };
                let right = self.operand(right_id, Prec::Product, false);
                (format!("{left}{op}{right}"), Prec::Sum)
            }
            Node::Neg(a) => {
                let inner = self.operand(a, Prec::Product, false);
                let minus = if self.style == Style::Unicode {
                    "−"
                } else {
                    "-"
                };
                (format!("{minus}{inner}"), Prec::Unary)
            }
            Node::MatMul(a, b) | Node::Scale(a, b) => self.product(id, a, b, scalar_prefix),
            Node::Div(a, b) => {
                if self.style == Style::Latex {
                    let num = self.expr(a, false, false).0;
                    let den = self.expr(b, false, false).0;
                    return (format!("\\frac{{{num}}}{{{den}}}"), Prec::Atom);
                }
                let left = self.product_operand(a, true, false);
                let right = self.operand(b, Prec::Unary, false);
                let right = if self.is_negative(b) || self.expr(b, false, false).1 <= Prec::Product
                {
                    self.paren(self.expr(b, false, false).0)
                } else {
                    right
                };
                (format!("{left}/{right}"), Prec::Product)
            }
            Node::Hadamard(a, b) | Node::ElemDiv(a, b) => {
                let op = match (g.node(id), self.style) {
                    (Node::Hadamard(..), Style::Text) => ".*",
                    (Node::Hadamard(..), Style::Unicode) => " ∘ ",
                    (Node::Hadamard(..), Style::Latex) => " \\odot ",
                    (_, Style::Text) => "./",
                    (_, Style::Unicode) => " ⊘ ",
                    (_, Style::Latex) => " \\oslash ",
                };
                // `1./x`, not `vector(1)./x`.
                let divide = matches!(g.node(id), Node::ElemDiv(..));
                let left = divide
                    .then(|| self.broadcast_number(a, b, id))
                    .flatten()
                    .unwrap_or_else(|| self.product_operand(a, true, false));
                let right = self.strict_right(b);
                (format!("{left}{op}{right}"), Prec::Product)
            }
            Node::Pow(a, b) | Node::ElemPow(a, b) => {
                let elementwise = matches!(g.node(id), Node::ElemPow(..));
                // `2.^x`, not `(2*vector(1)).^x`.
                let base = elementwise
                    .then(|| self.broadcast_number(a, b, id))
                    .flatten()
                    .unwrap_or_else(|| self.operand(a, Prec::Postfix, false));
                let exponent = self.expr(b, false, false);
                let exponent_value = match g.node(b) {
                    Node::Const(c) => Some(c.get()),
                    _ => None,
                };
                (
                    self.power(&base, exponent, exponent_value, elementwise),
                    Prec::Power,
                )
            }
            Node::MatPow(a, k) => {
                let base = self.operand(a, Prec::Postfix, false);
                let k = k as f64;
                (
                    self.power(&base, (number(k), Prec::Atom), Some(k), false),
                    Prec::Power,
                )
            }
            Node::Transpose(a)
                if self.style != Style::Text && matches!(g.node(a), Node::Inv(_)) =>
            {
                let inv = g.node(a).args()[0];
                let base = self.operand(inv, Prec::Atom, false);
                let mark = if self.style == Style::Unicode {
                    "⁻ᵀ"
                } else {
                    "^{-\\top}"
                };
                (format!("{base}{mark}"), Prec::Postfix)
            }
            Node::Transpose(a) => {
                let base = self.operand(a, Prec::Postfix, false);
                (format!("{base}{}", self.transpose_mark()), Prec::Postfix)
            }
            Node::Inv(a) => self.inverse(a),
            // `sin(x)'`, as people write it, for `sin(x')` (the same for element-wise maps).
            Node::Map(f, a) if matches!(g.node(a), Node::Transpose(_)) => {
                let inner = g.node(a).args()[0];
                let mark = self.transpose_mark();
                (format!("{}{mark}", self.map(f, inner)), Prec::Postfix)
            }
            Node::Map(f, a) => (self.map(f, a), Prec::Atom),
            Node::Sum(a) => (self.call(Function::Sum.name(), a), Prec::Atom),
            Node::Trace(a) => (self.call(Function::Trace.name(), a), Prec::Atom),
            Node::Det(a) => (self.call(Function::Det.name(), a), Prec::Atom),
            Node::LogDet(a) => (self.call(Function::LogDet.name(), a), Prec::Atom),
            Node::Diag(a) | Node::DiagPart(a) => (self.call(Function::Diag.name(), a), Prec::Atom),
            Node::Norm1(a) | Node::Norm2(a) => (self.norm(id, a), Prec::Atom),
        }
    }

    /// A number: a short fraction where it reads back as the same float64 (`2/3`, binding as
    /// a quotient), else its decimal digits (`0.5`, `1.25`).
    fn constant(&self, v: f64) -> (String, Prec) {
        match fraction(v) {
            Some((p, q)) if q > 1 && number(v).len() > 6 => match self.style {
                Style::Latex => {
                    let sign = if p < 0 { "-" } else { "" };
                    let frac = format!("{sign}\\frac{{{}}}{{{q}}}", p.abs());
                    (frac, if p < 0 { Prec::Unary } else { Prec::Atom })
                }
                // Juxtaposed, `2/3x` would read as 2/(3x).
                Style::Unicode => (format!("({p}/{q})"), Prec::Atom),
                Style::Text => (format!("{p}/{q}"), Prec::Product),
            },
            _ => {
                let p = if v < 0.0 { Prec::Unary } else { Prec::Atom };
                (number(v), p)
            }
        }
    }

    /// `a*b` (a matrix product or a scale), or `c./x` for a number over a value.
    fn product(&self, id: Id, a: Id, b: Id, scalar_prefix: bool) -> (String, Prec) {
        let g = self.g;
        // `0.5./sqrt(x)`, not `0.5*(1./sqrt(x))`.
        if let Some((c, over)) = self.number_over(id) {
            return (format!("{c}./{}", self.strict_right(over)), Prec::Product);
        }
        let in_prefix = matches!(g.node(id), Node::Scale(..)) && !g.shape(b).is_scalar();
        let prefix_flag = scalar_prefix || in_prefix;
        let left = self.product_operand(a, true, prefix_flag && g.shape(a).is_scalar());
        let right = self.product_operand(b, false, scalar_prefix && g.shape(b).is_scalar());
        if scalar_prefix && matches!(g.node(id), Node::MatMul(..)) {
            // A 1×1 product among scalar factors: keep it visibly one factor.
            let joined = self.join_product(&left, &right);
            return (self.paren(joined), Prec::Atom);
        }
        (self.join_product(&left, &right), Prec::Product)
    }

    /// The transpose's mark in this style.
    fn transpose_mark(&self) -> &'static str {
        match self.style {
            Style::Text => "'",
            Style::Unicode => "ᵀ",
            Style::Latex => "^\\top",
        }
    }

    /// `norm1(a)`, `norm2(a)`; `‖a‖₁`, `‖a‖₂` (a vector), `‖a‖_F` (a matrix).
    fn norm(&self, id: Id, a: Id) -> String {
        let g = self.g;
        let one = matches!(g.node(id), Node::Norm1(_));
        let vector = g.shape(a).is_column() || g.shape(a).is_row();
        let arg = self.expr(a, false, false).0;
        let (sub, latex_sub) = match (one, vector) {
            (true, _) => ("₁", "1"),
            (false, true) => ("₂", "2"),
            (false, false) => ("_F", "F"),
        };
        match self.style {
            Style::Text => format!("{}({arg})", g.node(id).op_name()),
            Style::Unicode => format!("‖{arg}‖{sub}"),
            Style::Latex => format!("\\left\\|{arg}\\right\\|_{latex_sub}"),
        }
    }

    fn operand_sum(&self, id: Id, spaced: bool) -> String {
        let (s, p) = self.expr(id, spaced, false);
        if p < Prec::Sum {
            self.paren(s)
        } else {
            s
        }
    }

    fn plus(&self, spaced: bool) -> &'static str {
        match (self.style, spaced) {
            (Style::Text, false) => "+",
            _ => " + ",
        }
    }

    fn minus(&self, spaced: bool) -> &'static str {
        match (self.style, spaced) {
            (Style::Text, false) => "-",
            (Style::Unicode, _) => " − ",
            _ => " - ",
        }
    }

    /// An operand of `*`: products chain freely (they are associative), anything looser
    /// or negative is parenthesised.
    fn product_operand(&self, id: Id, left: bool, scalar_prefix: bool) -> String {
        let (s, p) = self.expr(id, false, scalar_prefix);
        let is_product = matches!(self.g.node(id), Node::MatMul(..) | Node::Scale(..));
        let needs = p < Prec::Product
            || (!left && (self.is_negative(id) || (p == Prec::Product && !is_product)));
        if needs {
            self.paren(s)
        } else {
            s
        }
    }

    /// The right operand of a non-associative product-level operator.
    fn strict_right(&self, id: Id) -> String {
        let (s, p) = self.expr(id, false, false);
        if p <= Prec::Product || self.is_negative(id) {
            self.paren(s)
        } else {
            s
        }
    }

    fn join_product(&self, left: &str, right: &str) -> String {
        match self.style {
            Style::Text => format!("{left}*{right}"),
            Style::Latex => format!("{left} {right}"),
            Style::Unicode => {
                let sep = juxtaposition(left, right);
                format!("{left}{sep}{right}")
            }
        }
    }

    fn power(
        &self,
        base: &str,
        exponent: (String, Prec),
        value: Option<f64>,
        elementwise: bool,
    ) -> String {
        match self.style {
            Style::Text => {
                let op = if elementwise { ".^" } else { "^" };
                let e = if exponent.1 < Prec::Power
                    && !(exponent.1 == Prec::Unary && value.is_some())
                {
                    format!("({})", exponent.0)
                } else {
                    exponent.0
                };
                format!("{base}{op}{e}")
            }
            Style::Unicode => {
                let circle = if elementwise { "∘" } else { "" };
                match value.filter(|v| v.fract() == 0.0 && v.abs() < 1e6) {
                    Some(v) => format!("{base}{circle}{}", superscript(&number(v))),
                    // An atom that is already parenthesized (a fraction) keeps its own.
                    None if exponent.1 == Prec::Atom && exponent.0.starts_with('(') => {
                        format!("{base}^{circle}{}", exponent.0)
                    }
                    None => format!("{base}^{circle}({})", exponent.0),
                }
            }
            Style::Latex => {
                let circle = if elementwise { "\\circ " } else { "" };
                format!("{base}^{{{circle}{}}}", exponent.0)
            }
        }
    }

    fn inverse(&self, a: Id) -> (String, Prec) {
        let (inner, transposed) = match self.g.node(a) {
            Node::Transpose(x) => (x, true),
            _ => (a, false),
        };
        match self.style {
            Style::Text => {
                let s = format!("inv({})", self.expr(inner, false, false).0);
                if transposed {
                    (format!("{s}'"), Prec::Postfix)
                } else {
                    (s, Prec::Atom)
                }
            }
            Style::Unicode | Style::Latex => {
                let base = self.operand(inner, Prec::Atom, false);
                let mark = match (self.style, transposed) {
                    (Style::Unicode, false) => "⁻¹",
                    (Style::Unicode, true) => "⁻ᵀ",
                    (_, false) => "^{-1}",
                    (_, true) => "^{-\\top}",
                };
                (format!("{base}{mark}"), Prec::Postfix)
            }
        }
    }

    fn call(&self, name: &str, a: Id) -> String {
        let arg = self.expr(a, false, false).0;
        match self.style {
            Style::Text => format!("{name}({arg})"),
            Style::Unicode => {
                let name = if name == "logdet" { "log det" } else { name };
                format!("{name}({arg})")
            }
            Style::Latex => {
                let name = match name {
                    "det" => "\\det".to_string(),
                    "logdet" => "\\log\\det".to_string(),
                    other => format!("\\operatorname{{{other}}}"),
                };
                format!("{name}\\left({arg}\\right)")
            }
        }
    }

    /// The left operand `a` of the element-wise `id = a op b` as the bare number it is filled
    /// with, when that number broadcasts to `b`'s shape, which is the result's (`1./x`,
    /// `2.^x`); a negative one in parentheses. Text only: juxtaposed in the other styles, a
    /// bare number would run into the factor before it.
    fn broadcast_number(&self, a: Id, b: Id, id: Id) -> Option<String> {
        if self.style != Style::Text || self.g.shape(b) != self.g.shape(id) {
            return None;
        }
        let c = filled_with(self.g, a)?;
        Some(if c < 0.0 {
            format!("({})", number(c))
        } else {
            number(c)
        })
    }

    /// For `id = k*(1./b)` with `k` a positive number that prints as a plain decimal, its
    /// text and `b`: printed `k./b` (text only, like [`Self::broadcast_number`]).
    fn number_over(&self, id: Id) -> Option<(String, Id)> {
        let Node::Scale(k, x) = self.g.node(id) else {
            return None;
        };
        let (Node::Const(_), Node::ElemDiv(a, b)) = (self.g.node(k), self.g.node(x)) else {
            return None;
        };
        // Positive and not printed as a fraction: an atom.
        let (c, prec) = self.expr(k, false, false);
        let ok = self.style == Style::Text && prec == Prec::Atom;
        let ok = ok && filled_with(self.g, a) == Some(1.0) && self.g.shape(b) == self.g.shape(x);
        ok.then_some((c, b))
    }

    fn map(&self, f: Func, a: Id) -> String {
        let arg = self.expr(a, false, false).0;
        match (self.style, f) {
            (Style::Text, _) => format!("{}({arg})", f.name()),
            (Style::Unicode, Func::Abs) => format!("|{arg}|"),
            (Style::Unicode, Func::Sqrt) => format!("√({arg})"),
            (Style::Unicode, _) => format!("{}({arg})", f.name()),
            (Style::Latex, Func::Abs) => format!("\\left|{arg}\\right|"),
            (Style::Latex, Func::Sqrt) => format!("\\sqrt{{{arg}}}"),
            (Style::Latex, Func::Sign | Func::Relu) => {
                format!("\\operatorname{{{}}}\\left({arg}\\right)", f.name())
            }
            (Style::Latex, _) => format!("\\{}\\left({arg}\\right)", f.name()),
        }
    }

    fn fill(&self, c: f64, shape: Shape) -> (String, Prec) {
        let row = shape.is_row();
        let s = match self.style {
            Style::Text => {
                let kind = if shape.is_column() || row {
                    "vector"
                } else {
                    "matrix"
                };
                let s = format!("{kind}({})", number(c));
                if row {
                    return (format!("{s}'"), Prec::Postfix);
                }
                s
            }
            Style::Unicode => {
                let ones = if row { "𝟏ᵀ" } else { "𝟏" };
                match c {
                    0.0 => "0".into(),
                    1.0 => ones.into(),
                    _ => format!("{}{ones}", number(c)),
                }
            }
            Style::Latex => {
                let ones = if row {
                    "\\mathbf{1}^\\top"
                } else {
                    "\\mathbf{1}"
                };
                match c {
                    0.0 => "0".into(),
                    1.0 => ones.into(),
                    _ => format!("{} {ones}", number(c)),
                }
            }
        };
        (s, Prec::Atom)
    }

    fn name(&self, name: &str) -> String {
        match self.style {
            Style::Latex if name.len() > 1 => format!("\\mathit{{{}}}", name.replace('_', "\\_")),
            _ => name.to_string(),
        }
    }
}

/// The separator between two juxtaposed factors in unicode: nothing when single letters,
/// parentheses or a leading number make the product unambiguous, else a middle dot.
fn juxtaposition(left: &str, right: &str) -> &'static str {
    let trailing: String = left
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    let leading: String = right
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect();
    if trailing.is_empty() || leading.is_empty() {
        return "";
    }
    let left_number = trailing.chars().all(|c| c.is_ascii_digit());
    let right_number = leading.chars().all(|c| c.is_ascii_digit());
    match (left_number, right_number) {
        (true, true) => "·",
        (true, false) => {
            if leading.len() == 1 {
                ""
            } else {
                "·"
            }
        }
        (false, _) => {
            if trailing.len() == 1 && leading.len() == 1 && !right_number {
                ""
            } else {
                "·"
            }
        }
    }
}

fn superscript(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '0' => '⁰',
            '1' => '¹',
            '2' => '²',
            '3' => '³',
            '4' => '⁴',
            '5' => '⁵',
            '6' => '⁶',
            '7' => '⁷',
            '8' => '⁸',
            '9' => '⁹',
            '-' => '⁻',
            other => other,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::check_program;

    #[test]
    fn json_is_indented_like_serde_above_the_cap_and_compact_below() {
        let shallow = json!({"op": "add", "args": [{"op": "var", "name": "x"}, [1, 2]]});
        assert_eq!(
            pretty_json(&shallow),
            serde_json::to_string_pretty(&shallow).unwrap()
        );
        // 60 levels of an object in an array (serde_json reads back 128): the full
        // indentation grows quadratically.
        let mut deep = json!(0);
        for _ in 0..60 {
            deep = json!({ "args": [deep] });
        }
        let printed = pretty_json(&deep);
        let full = serde_json::to_string_pretty(&deep).unwrap();
        assert!(
            printed.len() * 10 < full.len(),
            "{} of {} bytes",
            printed.len(),
            full.len()
        );
        let back: Value = serde_json::from_str(&printed).expect("valid JSON");
        let mut v = &back;
        let mut depth = 0;
        while let Some(inner) = v.get("args") {
            v = &inner[0];
            depth += 1;
        }
        assert_eq!((depth, v), (60, &json!(0)));
    }

    fn check(source: &str, format: Format, expected: &str) {
        let p = check_program(source).unwrap_or_else(|e| panic!("{}", e.render(source)));
        assert_eq!(
            render(&p.graph, p.root, format),
            expected,
            "program: {source}"
        );
    }

    #[test]
    fn text_keeps_only_needed_parentheses() {
        check("(A*x+b)'*(A*x+b)", Format::Text, "(A*x+b)'*(A*x+b)");
        check("x: vector; a: vector; (x'*a)*a", Format::Text, "(x'*a)*a");
        check("A.*(B*C)", Format::Text, "A.*(B*C)");
        check("x - (y - z)", Format::Text, "x - (y-z)");
        check("inv(X')", Format::Text, "inv(X)'");
        check("(X^2)'", Format::Text, "(X^2)'");
        check("a^-1", Format::Text, "a^-1");
        check("1e-60*a + 2.5e20*b", Format::Text, "1e-60*a + 2.5e20*b");
        check("vector(1)+exp(x)", Format::Text, "vector(1) + exp(x)");
    }

    #[test]
    fn unicode_and_latex() {
        check("2*A'*(A*x+b)", Format::Unicode, "2Aᵀ(Ax + b)");
        check(
            "2*A'*(A*x+b)",
            Format::Latex,
            "2 A^\\top \\left(A x + b\\right)",
        );
        check("inv(X)'", Format::Unicode, "X⁻ᵀ");
        check("tr(X^3)", Format::Unicode, "tr(X³)");
        check(
            "norm2(x)/2",
            Format::Latex,
            "\\frac{\\left\\|x\\right\\|_2}{2}",
        );
        check(
            "x1: vector(n); A: matrix(n,n); A*x1",
            Format::Unicode,
            "A·x1",
        );
    }

    #[test]
    fn json_has_shapes() {
        let p = check_program("A: matrix(m,n); x: vector(n); A*x").unwrap();
        let v = json_tree(&p.graph, p.root);
        assert_eq!(v["op"], "matmul");
        assert_eq!(v["shape"], json!(["m", 1]));
        assert_eq!(v["args"][0]["name"], "A");
    }
}
