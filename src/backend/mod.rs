//! The back ends: validated plans evaluated in float32 over whole batches.
//!
//! In: a [`crate::plan::Plan`] and its inputs as float32 batches. Out: the plan's outputs,
//! one batch each. [`cpu`] is the multithreaded CPU path (AVX-512, AVX2 or portable builds of
//! the same code); [`wgsl`] writes the plan's WGSL kernels (it never imports wgpu) and
//! [`gpu`] runs them with wgpu. What the CPU path and the GPU share (the hoisted values of
//! shared steps, the item-major ↔ lanes transposes) is in [`layout`], so neither back end
//! imports the other; [`executor`] chooses the device, decides every fallback, and runs a
//! plan on the reference, the CPU path, a GPU session or all of them. Invariants: every
//! executor's result is compared with the float64 reference in the tests; no user-chosen name
//! reaches WGSL; every generated module is validated by naga before it is used.

pub mod cpu;
pub mod executor;
pub mod gpu;
pub mod layout;
pub mod schedule;
pub mod wgsl;
