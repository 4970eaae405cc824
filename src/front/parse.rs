//! Stage 1: text → syntax tree.
//!
//! In: a program in matrixcalculus.org syntax, optionally preceded by declarations
//! (`A: matrix(m,n); x: vector(n); (A*x+b)'*(A*x+b)`). Out: a [`ProgramAst`] whose every node
//! carries the byte span it came from. Invariants: the parser never panics on any input; every
//! error points at the token where parsing failed; names are not resolved here (that is the
//! type checker's job), so `foo(x)` parses and is rejected later with a span.
//!
//! A `where` clause after the expression names parts of it (`2*s1*x where s1 = x'*x+1`), in
//! order, each definition using only the names before it: that is how large formulas print.
//!
//! Precedence, lowest first: `+ -`; `* / .* ./` (left-associative); unary `-`; `^ .^`
//! (right-associative, so `-x^2` is `-(x^2)` and `a^-1` is allowed); postfix `'`.

use crate::diagnostic::{Diagnostic, Span};

/// Whether `name` is a function of the language ([`crate::expr::Function`], the one table).
pub fn is_function(name: &str) -> bool {
    crate::expr::Function::from_name(name).is_some()
}

/// Words that declare a variable's kind.
pub const KINDS: &[&str] = &["scalar", "vector", "matrix", "symmetric", "spd"];

/// `Err` with the reason when `name` cannot name a new variable: it must read as one name
/// token (a letter or `_`, then letters, digits or `_`) and not be a function or a kind.
pub fn check_variable_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`{}` is not a variable name (a letter or `_`, then letters, digits or `_`)",
            name.escape_debug()
        ));
    }
    if is_function(name) || KINDS.contains(&name) {
        return Err(format!(
            "`{name}` is a word of the language, not a free name"
        ));
    }
    Ok(())
}

#[derive(Clone, Debug, PartialEq)]
pub struct ProgramAst {
    pub decls: Vec<Decl>,
    pub expr: Ast,
    /// `expr where s1 = ..., s2 = ...`: named parts, in order; each may use the names
    /// before it. This is how large formulas print ([`crate::symbolic::names`]).
    pub defs: Vec<Def>,
}

/// `name = expr` in a `where` clause.
#[derive(Clone, Debug, PartialEq)]
pub struct Def {
    pub name: String,
    pub name_span: Span,
    pub expr: Ast,
}

/// `name: kind(dims)`.
#[derive(Clone, Debug, PartialEq)]
pub struct Decl {
    pub name: String,
    pub name_span: Span,
    pub kind: String,
    pub kind_span: Span,
    pub dims: Vec<DimSpec>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DimSpec {
    Named(String, Span),
    Literal(usize, Span),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ast {
    pub kind: AstKind,
    pub span: Span,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    ElemMul,
    ElemDiv,
    Pow,
    ElemPow,
}

impl BinOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::ElemMul => ".*",
            BinOp::ElemDiv => "./",
            BinOp::Pow => "^",
            BinOp::ElemPow => ".^",
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum AstKind {
    Number(f64),
    Name(String),
    Call {
        name: String,
        name_span: Span,
        args: Vec<Ast>,
    },
    Neg(Box<Ast>),
    Transpose(Box<Ast>),
    Binary {
        op: BinOp,
        op_span: Span,
        lhs: Box<Ast>,
        rhs: Box<Ast>,
    },
}

/// Parses a whole program: declarations separated by `;`, then one expression.
pub fn parse_program(source: &str) -> Result<ProgramAst, Diagnostic> {
    let tokens = lex(source)?;
    let mut parser = Parser {
        tokens,
        pos: 0,
        source_len: source.len(),
        depth: 0,
    };
    let mut decls = Vec::new();
    loop {
        parser.skip_semicolons();
        if parser.peek_is_declaration() {
            decls.push(parser.declaration()?);
            if !parser.eat(&Tok::Semi) && !parser.at_end() {
                let span = parser.span();
                return Err(Diagnostic::new("expected `;` after a declaration", span));
            }
        } else {
            break;
        }
    }
    if parser.at_end() {
        return Err(Diagnostic::new(
            "expected an expression",
            Span::new(source.len(), source.len() + 1),
        ));
    }
    let expr = parser.expression()?;
    let defs = parser.where_clause()?;
    parser.skip_semicolons();
    if !parser.at_end() {
        let span = parser.span();
        let found = parser.tokens[parser.pos].0.describe();
        return Err(Diagnostic::new(
            format!("unexpected {found} after the expression"),
            span,
        ));
    }
    Ok(ProgramAst { decls, expr, defs })
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Number(f64),
    Ident(String),
    Op(BinOp),
    Quote,
    LParen,
    RParen,
    Comma,
    Semi,
    Colon,
    Equals,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Number(v) => format!("number `{v}`"),
            Tok::Ident(s) => format!("name `{s}`"),
            Tok::Op(op) => format!("`{}`", op.symbol()),
            Tok::Quote => "`'`".into(),
            Tok::LParen => "`(`".into(),
            Tok::RParen => "`)`".into(),
            Tok::Comma => "`,`".into(),
            Tok::Semi => "`;`".into(),
            Tok::Colon => "`:`".into(),
            Tok::Equals => "`=`".into(),
        }
    }
}

fn lex(source: &str) -> Result<Vec<(Tok, Span)>, Diagnostic> {
    let bytes = source.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        let single = |tok: Tok| (tok, Span::new(start, start + 1));
        match c {
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'0'..=b'9' => {
                let (value, end) = lex_number(source, i)?;
                out.push((Tok::Number(value), Span::new(i, end)));
                i = end;
                continue;
            }
            b'.' => match bytes.get(i + 1) {
                Some(b'*') => out.push((Tok::Op(BinOp::ElemMul), Span::new(i, i + 2))),
                Some(b'/') => out.push((Tok::Op(BinOp::ElemDiv), Span::new(i, i + 2))),
                Some(b'^') => out.push((Tok::Op(BinOp::ElemPow), Span::new(i, i + 2))),
                Some(b'0'..=b'9') => {
                    let (value, end) = lex_number(source, i)?;
                    out.push((Tok::Number(value), Span::new(i, end)));
                    i = end;
                    continue;
                }
                _ => {
                    return Err(Diagnostic::new(
                        "a lone `.`: element-wise operators are `.*`, `./` and `.^`",
                        Span::new(i, i + 1),
                    ))
                }
            },
            b'a'..=b'z' | b'A'..=b'Z' | b'_' => {
                let mut end = i + 1;
                while end < bytes.len()
                    && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_')
                {
                    end += 1;
                }
                out.push((Tok::Ident(source[i..end].to_string()), Span::new(i, end)));
                i = end;
                continue;
            }
            b'+' => out.push(single(Tok::Op(BinOp::Add))),
            b'-' => out.push(single(Tok::Op(BinOp::Sub))),
            b'*' => out.push(single(Tok::Op(BinOp::Mul))),
            b'/' => out.push(single(Tok::Op(BinOp::Div))),
            b'^' => out.push(single(Tok::Op(BinOp::Pow))),
            b'\'' => out.push(single(Tok::Quote)),
            b'(' => out.push(single(Tok::LParen)),
            b')' => out.push(single(Tok::RParen)),
            b',' => out.push(single(Tok::Comma)),
            b';' => out.push(single(Tok::Semi)),
            b':' => out.push(single(Tok::Colon)),
            b'=' => out.push(single(Tok::Equals)),
            _ => {
                let ch = source[i..].chars().next().unwrap_or('?');
                return Err(Diagnostic::new(
                    format!("unexpected character `{ch}`"),
                    Span::new(i, i + ch.len_utf8()),
                ));
            }
        }
        i += match out.last() {
            Some((_, span)) => span.end - span.start,
            None => 1,
        };
    }
    Ok(out)
}

/// Reads `12`, `1.5`, `.5`, `2e-3`; returns the value and the end offset.
fn lex_number(source: &str, start: usize) -> Result<(f64, usize), Diagnostic> {
    let bytes = source.as_bytes();
    let mut end = start;
    while end < bytes.len() && bytes[end].is_ascii_digit() {
        end += 1;
    }
    if end < bytes.len()
        && bytes[end] == b'.'
        && !matches!(bytes.get(end + 1), Some(b'*' | b'/' | b'^'))
    {
        end += 1;
        while end < bytes.len() && bytes[end].is_ascii_digit() {
            end += 1;
        }
    }
    if end < bytes.len() && (bytes[end] == b'e' || bytes[end] == b'E') {
        let mut exp_end = end + 1;
        if exp_end < bytes.len() && (bytes[exp_end] == b'+' || bytes[exp_end] == b'-') {
            exp_end += 1;
        }
        if exp_end < bytes.len() && bytes[exp_end].is_ascii_digit() {
            while exp_end < bytes.len() && bytes[exp_end].is_ascii_digit() {
                exp_end += 1;
            }
            end = exp_end;
        }
    }
    let text = &source[start..end];
    let span = Span::new(start, end);
    let has_digit = |digits: &str| digits.bytes().any(|b| (b'1'..=b'9').contains(&b));
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    match text.parse::<f64>() {
        Ok(v) if !v.is_finite() => Err(Diagnostic::new(
            format!("`{text}` is past float64's range (about 1.8e308)"),
            span,
        )),
        // Underflow is refused like overflow: `1e-999` is not zero, and below 2.2e-308 float64
        // keeps too few digits to be the number written.
        Ok(v) if has_digit(mantissa) && v.abs() < f64::MIN_POSITIVE => Err(Diagnostic::new(
            format!("`{text}` is below float64's normal range (about 2.2e-308)"),
            span,
        )),
        Ok(v) => Ok((v, end)),
        Err(_) => Err(Diagnostic::new(format!("`{text}` is not a number"), span)),
    }
}

/// Nesting deeper than this is refused, so that hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 200;

struct Parser {
    tokens: Vec<(Tok, Span)>,
    pos: usize,
    source_len: usize,
    depth: usize,
}

impl Parser {
    fn at_end(&self) -> bool {
        self.pos >= self.tokens.len()
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|(t, _)| t)
    }

    fn span(&self) -> Span {
        match self.tokens.get(self.pos) {
            Some((_, s)) => *s,
            None => Span::new(self.source_len, self.source_len + 1),
        }
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> Result<Span, Diagnostic> {
        let span = self.span();
        if self.eat(tok) {
            Ok(span)
        } else {
            let found = match self.peek() {
                Some(t) => t.describe(),
                None => "the end of the input".into(),
            };
            Err(Diagnostic::new(
                format!("expected {what}, found {found}"),
                span,
            ))
        }
    }

    /// `where name = expr, name = expr` after the expression, or nothing.
    fn where_clause(&mut self) -> Result<Vec<Def>, Diagnostic> {
        if self.peek() != Some(&Tok::Ident("where".into())) {
            return Ok(Vec::new());
        }
        self.pos += 1;
        let mut defs = Vec::new();
        loop {
            let name_span = self.span();
            let name = match self.peek() {
                Some(Tok::Ident(name)) => name.clone(),
                found => {
                    let found = found.map_or("the end of the input".into(), Tok::describe);
                    return Err(Diagnostic::new(
                        format!("expected a name to define after `where`, found {found}"),
                        name_span,
                    ));
                }
            };
            self.pos += 1;
            self.expect(&Tok::Equals, &format!("`=` after `{name}`"))?;
            let expr = self.expression()?;
            defs.push(Def {
                name,
                name_span,
                expr,
            });
            if !self.eat(&Tok::Comma) {
                return Ok(defs);
            }
        }
    }

    fn skip_semicolons(&mut self) {
        while self.eat(&Tok::Semi) {}
    }

    fn peek_is_declaration(&self) -> bool {
        matches!(self.tokens.get(self.pos), Some((Tok::Ident(_), _)))
            && matches!(self.tokens.get(self.pos + 1), Some((Tok::Colon, _)))
    }

    fn declaration(&mut self) -> Result<Decl, Diagnostic> {
        let (name, name_span) = match self.tokens[self.pos].clone() {
            (Tok::Ident(n), s) => (n, s),
            (_, s) => return Err(Diagnostic::new("expected a variable name", s)),
        };
        self.pos += 2; // name and ':'
        let kind_span = self.span();
        let kind = match self.peek().cloned() {
            Some(Tok::Ident(k)) => {
                self.pos += 1;
                k
            }
            _ => {
                return Err(Diagnostic::new(
                    "expected a kind: scalar, vector(n), matrix(m,n), symmetric(n) or spd(n)",
                    kind_span,
                ))
            }
        };
        let mut dims = Vec::new();
        if self.eat(&Tok::LParen) {
            loop {
                let span = self.span();
                match self.peek().cloned() {
                    Some(Tok::Ident(d)) => dims.push(DimSpec::Named(d, span)),
                    Some(Tok::Number(v)) if v >= 1.0 && v.fract() == 0.0 && v <= 1e9 => {
                        dims.push(DimSpec::Literal(v as usize, span))
                    }
                    _ => {
                        return Err(Diagnostic::new(
                            "expected a dimension: a name or a positive integer",
                            span,
                        ))
                    }
                }
                self.pos += 1;
                if self.eat(&Tok::Comma) {
                    continue;
                }
                self.expect(&Tok::RParen, "`)` or `,`")?;
                break;
            }
        }
        Ok(Decl {
            name,
            name_span,
            kind,
            kind_span,
            dims,
        })
    }

    fn enter(&mut self) -> Result<(), Diagnostic> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Diagnostic::new(
                format!("the expression nests deeper than {MAX_DEPTH} levels"),
                self.span(),
            ));
        }
        Ok(())
    }

    fn expression(&mut self) -> Result<Ast, Diagnostic> {
        self.enter()?;
        let mut lhs = self.term()?;
        while let Some(Tok::Op(op @ (BinOp::Add | BinOp::Sub))) = self.peek().cloned() {
            let op_span = self.span();
            self.pos += 1;
            let rhs = self.term()?;
            lhs = binary(op, op_span, lhs, rhs);
        }
        self.depth -= 1;
        Ok(lhs)
    }

    fn term(&mut self) -> Result<Ast, Diagnostic> {
        let mut lhs = self.unary()?;
        while let Some(Tok::Op(op @ (BinOp::Mul | BinOp::Div | BinOp::ElemMul | BinOp::ElemDiv))) =
            self.peek().cloned()
        {
            let op_span = self.span();
            self.pos += 1;
            let rhs = self.unary()?;
            lhs = binary(op, op_span, lhs, rhs);
        }
        Ok(lhs)
    }

    fn unary(&mut self) -> Result<Ast, Diagnostic> {
        self.enter()?;
        let start = self.span();
        let result = if self.eat(&Tok::Op(BinOp::Sub)) {
            let inner = self.unary()?;
            let span = start.to(inner.span);
            Ast {
                kind: AstKind::Neg(Box::new(inner)),
                span,
            }
        } else if self.eat(&Tok::Op(BinOp::Add)) {
            self.unary()?
        } else {
            self.power()?
        };
        self.depth -= 1;
        Ok(result)
    }

    fn power(&mut self) -> Result<Ast, Diagnostic> {
        let base = self.postfix()?;
        if let Some(Tok::Op(op @ (BinOp::Pow | BinOp::ElemPow))) = self.peek().cloned() {
            let op_span = self.span();
            self.pos += 1;
            let exponent = self.unary()?;
            return Ok(binary(op, op_span, base, exponent));
        }
        Ok(base)
    }

    fn postfix(&mut self) -> Result<Ast, Diagnostic> {
        let mut node = self.primary()?;
        while self.peek() == Some(&Tok::Quote) {
            let quote = self.span();
            self.pos += 1;
            let span = node.span.to(quote);
            node = Ast {
                kind: AstKind::Transpose(Box::new(node)),
                span,
            };
        }
        Ok(node)
    }

    fn primary(&mut self) -> Result<Ast, Diagnostic> {
        let span = self.span();
        match self.peek().cloned() {
            Some(Tok::Number(v)) => {
                self.pos += 1;
                Ok(Ast {
                    kind: AstKind::Number(v),
                    span,
                })
            }
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                if self.peek() == Some(&Tok::LParen) {
                    self.pos += 1;
                    let mut args = Vec::new();
                    if !self.eat(&Tok::RParen) {
                        loop {
                            args.push(self.expression()?);
                            if self.eat(&Tok::Comma) {
                                continue;
                            }
                            self.expect(&Tok::RParen, "`)` or `,`")?;
                            break;
                        }
                    }
                    let end = self.tokens[self.pos - 1].1;
                    Ok(Ast {
                        kind: AstKind::Call {
                            name,
                            name_span: span,
                            args,
                        },
                        span: span.to(end),
                    })
                } else {
                    Ok(Ast {
                        kind: AstKind::Name(name),
                        span,
                    })
                }
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let inner = self.expression()?;
                let close = self.expect(&Tok::RParen, "`)`")?;
                Ok(Ast {
                    kind: inner.kind,
                    span: span.to(close),
                })
            }
            Some(tok) => Err(Diagnostic::new(
                format!("expected an operand, found {}", tok.describe()),
                span,
            )),
            None => Err(Diagnostic::new(
                "expected an operand, found the end of the input",
                span,
            )),
        }
    }
}

fn binary(op: BinOp, op_span: Span, lhs: Ast, rhs: Ast) -> Ast {
    let span = lhs.span.to(rhs.span);
    Ast {
        kind: AstKind::Binary {
            op,
            op_span,
            lhs: Box::new(lhs),
            rhs: Box::new(rhs),
        },
        span,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders the tree in fully parenthesised prefix form.
    fn sexp(ast: &Ast) -> String {
        match &ast.kind {
            AstKind::Number(v) => format!("{v}"),
            AstKind::Name(n) => n.clone(),
            AstKind::Call { name, args, .. } => {
                let args: Vec<_> = args.iter().map(sexp).collect();
                format!("({name} {})", args.join(" "))
            }
            AstKind::Neg(x) => format!("(neg {})", sexp(x)),
            AstKind::Transpose(x) => format!("(T {})", sexp(x)),
            AstKind::Binary { op, lhs, rhs, .. } => {
                format!("({} {} {})", op.symbol(), sexp(lhs), sexp(rhs))
            }
        }
    }

    fn check(input: &str, expected: &str) {
        let program = parse_program(input).unwrap_or_else(|e| panic!("{}", e.render(input)));
        assert_eq!(sexp(&program.expr), expected, "input: {input}");
    }

    fn check_error(input: &str, message_part: &str, caret_at: usize) {
        let err = parse_program(input).expect_err(input);
        assert!(err.message.contains(message_part), "{}", err.message);
        assert_eq!(
            err.span.map(|s| s.start),
            Some(caret_at),
            "{}",
            err.render(input)
        );
    }

    #[test]
    fn precedence_and_associativity() {
        check("(A*x+b)'*(A*x+b)", "(* (T (+ (* A x) b)) (+ (* A x) b))");
        check("-x^2", "(neg (^ x 2))");
        check("a^b^c", "(^ a (^ b c))");
        check("a^-1", "(^ a (neg 1))");
        check("x'*A*x", "(* (* (T x) A) x)");
        check("a.*b*c", "(* (.* a b) c)");
        check("x - y - z", "(- (- x y) z)");
        check("X'^2", "(^ (T X) 2)");
        check("inv(X)'", "(T (inv X))");
        check("vector(1)+exp(x)", "(+ (vector 1) (exp x))");
        check("x.^.5", "(.^ x 0.5)");
        check("2e-3*x", "(* 0.002 x)");
        check("eye", "eye");
    }

    #[test]
    fn declarations() {
        let p = parse_program("A: matrix(m,n); x: vector(3); s: scalar; x'*x").unwrap();
        assert_eq!(p.decls.len(), 3);
        assert_eq!(p.decls[0].dims.len(), 2);
        assert_eq!(
            p.decls[1].dims,
            vec![DimSpec::Literal(3, Span::new(26, 27))]
        );
        assert_eq!(p.decls[2].kind, "scalar");
    }

    #[test]
    fn where_clauses_name_parts_in_order() {
        let p = parse_program("x: vector(3); s2*x where s1 = x'*x+1, s2 = s1^2").unwrap();
        assert_eq!(sexp(&p.expr), "(* s2 x)");
        let defs: Vec<(String, String)> = p
            .defs
            .iter()
            .map(|d| (d.name.clone(), sexp(&d.expr)))
            .collect();
        assert_eq!(
            defs,
            [
                ("s1".to_string(), "(+ (* (T x) x) 1)".to_string()),
                ("s2".to_string(), "(^ s1 2)".to_string())
            ]
        );
        // Across lines, as large formulas print.
        let p = parse_program("2*s1\nwhere s1 = x,\n      s2 = y").unwrap();
        assert_eq!(p.defs.len(), 2);
        check_error("x where", "expected a name to define", 7);
        check_error("x where s1 x", "expected `=` after `s1`", 11);
        check_error("x where s1 = x s2 = y", "unexpected name `s2`", 15);
    }

    #[test]
    fn errors_point_at_the_token() {
        check_error("x + * y", "expected an operand", 4);
        check_error("(x + y", "expected `)`", 6);
        check_error("x # y", "unexpected character", 2);
        check_error("x y", "unexpected name `y`", 2);
        check_error("A: matrix(m,); x", "expected a dimension", 12);
        check_error("x . y", "lone `.`", 2);
        check_error("", "expected an expression", 0);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let input = format!("{}x{}", "(".repeat(5000), ")".repeat(5000));
        let err = parse_program(&input).expect_err("too deep");
        assert!(err.message.contains("nests deeper"));
        let input = format!("{}x", "-".repeat(5000));
        assert!(parse_program(&input).is_err());
    }
}
