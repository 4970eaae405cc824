//! The front end: program text → a typed expression DAG.
//!
//! In: the program as the user typed it (declarations, then one expression). Out: a
//! [`types::Program`] (the graph of [`crate::expr`], its root and the variables' kinds) or a
//! [`diagnostic::Diagnostic`] with the span of the problem. Invariants: nothing here panics on
//! any input; every error carries a span or says why none applies; a program that type-checks
//! lowers to a graph whose every node is well-shaped.

pub mod diagnostic;
pub mod parse;
pub mod types;
