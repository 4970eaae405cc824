//! Random well-typed programs over the whole language, for property tests.
//!
//! In: a seed and a depth. Out: a [`Generated`] program (declarations and an expression, as
//! text, so that the parser is exercised too) and a variable it reads. Shapes are random
//! (dimensions of sizes 1 to 5, independently drawn, so square and non-square both occur);
//! every operation of the language appears. Invariants: the text always type-checks; the
//! arguments of `log`, `sqrt`, `arcsin`, `arccos`, `inv`, `det` and `logdet` are built to stay
//! in their domains (`log((v.^2+vector(1)))`, `inv((M*M'+eye))`), so that most random points
//! are usable for finite differences; the same seed gives the same program.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A generated program and a variable to differentiate by.
#[derive(Clone, Debug)]
pub struct Generated {
    pub source: String,
    pub wrt: String,
}

/// The shapes the generator builds, over the two dimensions `n` and `m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    Scalar,
    VecN,
    VecM,
    MatNN,
    MatMN,
    MatNM,
}

impl Class {
    fn transposed(self) -> Option<Class> {
        match self {
            Class::MatMN => Some(Class::MatNM),
            Class::MatNM => Some(Class::MatMN),
            Class::MatNN => Some(Class::MatNN),
            _ => None,
        }
    }

    fn is_vector(self) -> bool {
        matches!(self, Class::VecN | Class::VecM)
    }
}

/// A random program whose expression has `class`, nested up to `depth`.
pub fn random_program(seed: u64, depth: usize, class: Class) -> Generated {
    let mut rng = StdRng::seed_from_u64(seed);
    let n = rng.gen_range(1..=4);
    let m = rng.gen_range(1..=5);
    let decls = format!(
        "a: scalar; b: scalar; x: vector({n}); y: vector({n}); z: vector({m}); \
         A: matrix({m},{n}); B: matrix({n},{n}); C: symmetric({n}); S: spd({n}); X: matrix({n},{m});"
    );
    let mut gen = Gen { rng };
    // A program must read at least one variable; redraw the rare constant ones.
    let expr = loop {
        let e = gen.expr(class, depth);
        if !used_names(&e).is_empty() {
            break e;
        }
    };
    let names = used_names(&expr);
    let wrt = names[gen.rng.gen_range(0..names.len())].clone();
    Generated {
        source: format!("{decls} {expr}"),
        wrt,
    }
}

/// The declared variables that occur in `expr`, in a fixed order.
fn used_names(expr: &str) -> Vec<String> {
    let words: Vec<&str> = expr
        .split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
        .collect();
    ["a", "b", "x", "y", "z", "A", "B", "C", "S", "X"]
        .iter()
        .filter(|v| words.contains(v))
        .map(|v| v.to_string())
        .collect()
}

struct Gen {
    rng: StdRng,
}

impl Gen {
    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.rng.gen_range(0..options.len())]
    }

    fn leaf(&mut self, class: Class) -> String {
        match class {
            Class::Scalar => {
                let c = self.pick(&["a", "b", "a", "b", "2", "0.5", "1.5"]);
                c.to_string()
            }
            Class::VecN => self.pick(&["x", "y", "x"]).into(),
            Class::VecM => "z".into(),
            Class::MatNN => self.pick(&["B", "C", "S", "B"]).into(),
            Class::MatMN => "A".into(),
            Class::MatNM => "X".into(),
        }
    }

    fn expr(&mut self, class: Class, depth: usize) -> String {
        if depth == 0 || self.rng.gen_bool(0.2) {
            let leaf = self.leaf(class);
            // A constant scalar leaf reads no variable; mix one in now and then.
            if class == Class::Scalar && leaf.parse::<f64>().is_ok() && self.rng.gen_bool(0.5) {
                return format!("({leaf}*a)");
            }
            return leaf;
        }
        let d = depth - 1;
        match class {
            Class::Scalar => self.scalar(d),
            c if c.is_vector() => self.vector(c, d),
            c => self.matrix(c, d),
        }
    }

    fn positive(&mut self, class: Class, depth: usize) -> String {
        let e = self.expr(class, depth);
        match class {
            Class::Scalar => format!("({e}^2+0.5)"),
            c if c.is_vector() => format!("({e}.^2+vector(1))"),
            _ => format!("({e}.^2+matrix(1))"),
        }
    }

    fn bounded(&mut self, class: Class, depth: usize) -> String {
        let e = self.expr(class, depth);
        format!("(0.5*tanh({e}))")
    }

    /// A symmetric positive definite n×n expression.
    fn spd(&mut self, depth: usize) -> String {
        match self.rng.gen_range(0..3) {
            0 => "S".into(),
            1 => {
                let mm = self.expr(Class::MatNN, depth);
                format!("({mm}*{mm}'+eye)")
            }
            _ => {
                let mm = self.expr(Class::MatNM, depth);
                format!("({mm}*{mm}'+eye)")
            }
        }
    }

    fn elementwise(&mut self, class: Class, depth: usize) -> String {
        let f = self.pick(&[
            "sin", "cos", "tan", "arcsin", "arccos", "arctan", "exp", "log", "tanh", "abs", "sign",
            "relu", "sqrt",
        ]);
        let arg = match f {
            "log" | "sqrt" => self.positive(class, depth),
            "arcsin" | "arccos" | "tan" | "exp" => self.bounded(class, depth),
            _ => self.expr(class, depth),
        };
        format!("{f}({arg})")
    }

    fn scalar(&mut self, d: usize) -> String {
        match self.rng.gen_range(0..20) {
            0 => format!(
                "({}+{})",
                self.expr(Class::Scalar, d),
                self.expr(Class::Scalar, d)
            ),
            1 => format!(
                "({}-{})",
                self.expr(Class::Scalar, d),
                self.expr(Class::Scalar, d)
            ),
            2 => format!(
                "({}*{})",
                self.expr(Class::Scalar, d),
                self.expr(Class::Scalar, d)
            ),
            3 => format!(
                "({}/{})",
                self.expr(Class::Scalar, d),
                self.positive(Class::Scalar, d)
            ),
            4 => format!("(-{})", self.expr(Class::Scalar, d)),
            5 => format!("({}^2)", self.expr(Class::Scalar, d)),
            6 => format!("({}^1.5)", self.positive(Class::Scalar, d)),
            7 => self.elementwise(Class::Scalar, d),
            8 => {
                let c = self.pick_vector();
                format!("({}'*{})", self.expr(c, d), self.expr(c, d))
            }
            9 => format!(
                "({}'*{}*{})",
                self.expr(Class::VecM, d),
                self.expr(Class::MatMN, d),
                self.expr(Class::VecN, d)
            ),
            10 => format!("sum({})", self.expr_any_nonscalar(d)),
            11 => format!("norm1({})", self.expr_any_nonscalar(d)),
            12 => format!("norm2({})", self.expr_any_nonscalar(d)),
            13 => format!("tr({})", self.expr(Class::MatNN, d)),
            14 => format!("det({})", self.spd(d)),
            15 => format!("logdet({})", self.spd(d)),
            16 => format!(
                "({}^{})",
                self.positive(Class::Scalar, d),
                self.bounded(Class::Scalar, d)
            ),
            17 => format!(
                "tr({}*{})",
                self.expr(Class::MatNM, d),
                self.expr(Class::MatMN, d)
            ),
            18 => format!(
                "({}'*inv({})*{})",
                self.expr(Class::VecN, d),
                self.spd(d),
                self.expr(Class::VecN, d)
            ),
            _ => format!(
                "sum({}.*{})",
                self.expr(Class::MatNN, d),
                self.expr(Class::MatNN, d)
            ),
        }
    }

    fn pick_vector(&mut self) -> Class {
        if self.rng.gen_bool(0.5) {
            Class::VecN
        } else {
            Class::VecM
        }
    }

    fn expr_any_nonscalar(&mut self, d: usize) -> String {
        let c = [
            Class::VecN,
            Class::VecM,
            Class::MatNN,
            Class::MatMN,
            Class::MatNM,
        ][self.rng.gen_range(0..5)];
        self.expr(c, d)
    }

    /// A matrix class whose product with a `cols`-column operand is defined.
    fn vector(&mut self, c: Class, d: usize) -> String {
        let (square, wide) = match c {
            Class::VecN => (Class::MatNN, Class::MatNM),
            _ => (Class::MatMN, Class::MatMN),
        };
        let other = if c == Class::VecN {
            Class::VecM
        } else {
            Class::VecN
        };
        match self.rng.gen_range(0..14) {
            0 => format!("({}+{})", self.expr(c, d), self.expr(c, d)),
            1 => format!("({}-{})", self.expr(c, d), self.expr(c, d)),
            2 => format!("({}*{})", self.expr(Class::Scalar, d), self.expr(c, d)),
            3 => format!("({}/{})", self.expr(c, d), self.positive(Class::Scalar, d)),
            4 => {
                if c == Class::VecN {
                    if self.rng.gen_bool(0.5) {
                        format!("({}*{})", self.expr(square, d), self.expr(Class::VecN, d))
                    } else {
                        format!("({}*{})", self.expr(wide, d), self.expr(Class::VecM, d))
                    }
                } else {
                    format!(
                        "({}*{})",
                        self.expr(Class::MatMN, d),
                        self.expr(Class::VecN, d)
                    )
                }
            }
            5 => format!("({}.*{})", self.expr(c, d), self.expr(c, d)),
            6 => format!("({}./{})", self.expr(c, d), self.positive(c, d)),
            7 => self.elementwise(c, d),
            8 => format!("(-{})", self.expr(c, d)),
            9 => format!("({}.^2)", self.expr(c, d)),
            10 => format!("(vector(1)+{})", self.expr(c, d)),
            11 if c == Class::VecN => format!("diag({})", self.expr(Class::MatNN, d)),
            12 if c == Class::VecN => {
                format!("(inv({})*{})", self.spd(d), self.expr(Class::VecN, d))
            }
            _ => {
                // (w'*v)*u: a scalar times a vector, through another vector shape.
                format!(
                    "(({}'*{})*{})",
                    self.expr(other, d),
                    self.expr(other, d),
                    self.expr(c, d)
                )
            }
        }
    }

    fn matrix(&mut self, c: Class, d: usize) -> String {
        let square = c == Class::MatNN;
        match self.rng.gen_range(0..16) {
            0 => format!("({}+{})", self.expr(c, d), self.expr(c, d)),
            1 => format!("({}-{})", self.expr(c, d), self.expr(c, d)),
            2 => format!("({}*{})", self.expr(Class::Scalar, d), self.expr(c, d)),
            3 => match c.transposed() {
                Some(t) => format!("{}'", self.paren(t, d)),
                None => self.leaf(c),
            },
            4 => format!("({}.*{})", self.expr(c, d), self.expr(c, d)),
            5 => self.elementwise(c, d),
            6 => {
                // A product through the inner dimension n or m.
                let (left, right) = match c {
                    Class::MatNN => {
                        if self.rng.gen_bool(0.5) {
                            (Class::MatNN, Class::MatNN)
                        } else {
                            (Class::MatNM, Class::MatMN)
                        }
                    }
                    Class::MatMN => (Class::MatMN, Class::MatNN),
                    _ => (Class::MatNN, Class::MatNM),
                };
                format!("({}*{})", self.expr(left, d), self.expr(right, d))
            }
            7 => {
                let (u, v) = match c {
                    Class::MatNN => (Class::VecN, Class::VecN),
                    Class::MatMN => (Class::VecM, Class::VecN),
                    _ => (Class::VecN, Class::VecM),
                };
                format!("({}*{}')", self.expr(u, d), self.expr(v, d))
            }
            8 if square => format!("inv({})", self.spd(d)),
            9 if square => format!("({}^2)", self.expr(c, d)),
            10 if square => format!("diag({})", self.expr(Class::VecN, d)),
            11 if square => format!("({}+eye)", self.expr(c, d)),
            12 => format!("({}./{})", self.expr(c, d), self.positive(c, d)),
            13 => format!("(matrix(1)+{})", self.expr(c, d)),
            14 => format!("({}/{})", self.expr(c, d), self.positive(Class::Scalar, d)),
            _ => format!("(-{})", self.expr(c, d)),
        }
    }

    fn paren(&mut self, c: Class, d: usize) -> String {
        let e = self.expr(c, d);
        // Generated composites are wrapped in parentheses already; names need none.
        let atomic = e.chars().all(|ch| ch.is_ascii_alphanumeric());
        if atomic || (e.starts_with('(') && e.ends_with(')')) {
            e
        } else {
            format!("({e})")
        }
    }
}

/// Tokens of the language and near misses (a bad literal, control characters, a lone `:`),
/// for fuzzing with random token sequences and edits.
pub const FUZZ_TOKENS: &[&str] = &[
    "x",
    "y",
    "A",
    "B",
    "a",
    "C",
    "X",
    "(",
    ")",
    "'",
    "+",
    "-",
    "*",
    "/",
    ".*",
    "./",
    "^",
    ".^",
    "2",
    "0.5",
    "-1",
    "1/3",
    "sum(",
    "tr(",
    "inv(",
    "det(",
    "logdet(",
    "exp(",
    "log(",
    "sqrt(",
    "abs(",
    "relu(",
    "sin(",
    "tanh(",
    "sign(",
    "norm1(",
    "norm2(",
    "diag(",
    "eye",
    "vector(1)",
    "matrix(2)",
    ",",
    ";",
    "x: vector(3);",
    "A: matrix(3,3);",
    "C: symmetric(n);",
    "S: spd(2);",
    "B: matrix(m,n);",
    "a: scalar;",
    "x'*x",
    "A*x",
    "X^2",
    "X^0",
    "X^-1",
    "1e309",
    "1e-320",
    ":",
    "\u{1b}",
    "\r",
];

/// `source` with one to three random edits: a character deleted, duplicated or replaced, or
/// one of [`FUZZ_TOKENS`] inserted. Mostly near-valid input, which exercises the errors.
pub fn mutate(source: &str, rng: &mut StdRng) -> String {
    let alphabet: Vec<char> = "xyzAXBab()'+-*/.^;:,2 ".chars().collect();
    let mut chars: Vec<char> = source.chars().collect();
    for _ in 0..rng.gen_range(1..=3) {
        if chars.is_empty() {
            break;
        }
        let i = rng.gen_range(0..chars.len());
        match rng.gen_range(0..4) {
            0 => {
                chars.remove(i);
            }
            1 => chars.insert(i, chars[i]),
            2 => chars[i] = alphabet[rng.gen_range(0..alphabet.len())],
            _ => {
                let token = FUZZ_TOKENS[rng.gen_range(0..FUZZ_TOKENS.len())];
                for (k, c) in token.chars().enumerate() {
                    chars.insert(i + k, c);
                }
            }
        }
    }
    chars.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::check_program;

    #[test]
    fn generated_programs_type_check() {
        for seed in 0..300 {
            for class in [Class::Scalar, Class::VecN, Class::MatMN] {
                let g = random_program(seed, 4, class);
                if let Err(e) = check_program(&g.source) {
                    panic!("seed {seed}: {}", e.render(&g.source));
                }
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_program() {
        let a = random_program(42, 5, Class::Scalar);
        let b = random_program(42, 5, Class::Scalar);
        assert_eq!(a.source, b.source);
    }
}
