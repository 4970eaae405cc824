//! The symbolic core: derivatives, simplification, printing and float64 evaluation.
//!
//! In: a typed program (from [`crate::front`]) and the variable to differentiate by. Out: a
//! simplified derivative in the same hash-consed graph ([`expr`]), printed in every format
//! ([`print`]), evaluated in float64 ([`eval`]) and compared with central finite differences
//! ([`verify`]). Invariants: every derivative rule is an exact identity; simplification
//! preserves shape and value; the text format parses back to the same value.

pub mod diff;
pub mod eval;
pub mod expr;
pub mod names;
pub mod print;
pub mod simplify;
pub mod verify;
