//! matgrad: closed-form matrix-calculus derivatives, checked by computation.
//!
//! The pipeline, one module per stage:
//! [`parse`] (text → syntax tree) → [`types`] (shapes inferred, typed DAG in an arena) →
//! [`diff`] (reverse- and forward-mode symbolic derivatives) → [`simplify`] (canonical,
//! cookbook-like forms) → [`print`] (text, unicode, LaTeX, JSON). [`eval`] evaluates any
//! expression in float64; [`verify`] compares derivatives with central finite differences;
//! [`catalog`] decides every seed identity; [`generate`] makes random well-typed programs for
//! property tests. [`plan`] → [`cpu`] / [`wgsl`] + [`gpu`] evaluate derivatives over batches;
//! [`bench`] measures them.
//!
//! ```
//! use matgrad::diff::{differentiate, Layout, Request};
//! use matgrad::types::check_program;
//!
//! let program = check_program("(A*x+b)'*(A*x+b)").expect("type-checks");
//! let gradient = differentiate(program, "x", &Request::Derivative, Layout::Gradient).expect("derives");
//! assert_eq!(gradient.text(), "2*A'*(A*x+b)");
//! ```

pub mod batch;
pub mod bench;
pub mod catalog;
pub mod check;
pub mod cpu;
pub mod diagnostic;
pub mod diff;
pub mod eval;
pub mod explain;
pub mod expr;
pub mod generate;
pub mod gpu;
pub mod npy;
pub mod parse;
pub mod plan;
pub mod print;
pub mod simplify;
pub mod types;
pub mod verify;
pub mod wgsl;
pub mod workloads;
