//! The tools built on the pipeline: checking, benchmarking, explaining, the seed catalog.
//!
//! In: derived formulas and plans. Out: reports ([`check`], [`bench`], [`explain`],
//! [`catalog`]) and the inputs they run on ([`workloads`], random programs from
//! [`generate`]). Invariants: a check that compared nothing fails; throughput figures come
//! from the plan's own counts of operations and bytes.

pub mod bench;
pub mod catalog;
pub mod check;
pub mod explain;
pub mod generate;
pub mod workloads;
