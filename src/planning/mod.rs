//! Planning and batches: a derived formula with concrete sizes, and the arrays it runs on.
//!
//! In: a graph, the nodes to compute, NumPy files or arrays bound to the program's variables.
//! Out: a validated [`plan::Plan`] (steps with sizes and shared/batched flags, hoisting, cost
//! counts), [`batch::Bound`] inputs, and the float64 reference executor. Invariants: a plan
//! is validated once, when built; a step is batched exactly when a batched input reaches it;
//! no output file is ever left half-written ([`npy`]).

pub mod batch;
pub mod npy;
pub mod plan;
