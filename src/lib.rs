//! matgrad: closed-form matrix-calculus derivatives, checked by computation.
//!
//! The folders are the pipeline:
//! [`front`] (text → syntax tree → typed DAG: [`parse`], [`types`], [`diagnostic`]) →
//! [`symbolic`] (derivatives [`diff`], [`simplify`], [`print`], the float64 evaluator
//! [`eval`], finite differences [`verify`], all on the IR of [`expr`]) → [`planning`] (a
//! validated [`plan`] with sizes and shared/batched flags, arrays bound to it in [`batch`],
//! NumPy files in [`npy`]) → [`backend`] (the float32 [`cpu`] path, [`wgsl`] kernels run by
//! [`gpu`]) → [`tools`] ([`check`], [`bench`], [`explain`], the seed [`catalog`], the
//! standard [`workloads`], random programs from [`generate`]). Every stage module is also
//! re-exported at the crate root under its own name (`matgrad::diff`, `matgrad::cpu`).
//!
//! The front door is [`compile`]: derive once, then call the [`Function`] with named inputs
//! as borrowed slices with shapes (one more leading axis than the variable's rank is a
//! batch), on the CPU path, a GPU, all of them, or the float64 reference:
//!
//! ```
//! use matgrad::executor::{Data, Device};
//! use matgrad::function::{compile, Compute, Input, Options, Values};
//!
//! let options = Options { device: Device::Cpu, ..Options::default() };
//! let f = compile("(A*x+b)'*(A*x+b)", "x", Compute::Derivative, options).expect("derives");
//! let (a, b) = ([1.0f32, 0.0, 0.0, 1.0], [1.0f32, 2.0]);
//! let xs = [0.0f32, 0.0, 1.0, 1.0]; // two items of x
//! let out = f
//!     .call(&[
//!         Input { name: "A", shape: &[2, 2], data: Data::F32(&a) },
//!         Input { name: "b", shape: &[2], data: Data::F32(&b) },
//!         Input { name: "x", shape: &[2, 2], data: Data::F32(&xs) },
//!     ])
//!     .expect("evaluates");
//! assert_eq!(out.outputs[0].shape, vec![2, 2]); // 2*A'*(A*x+b) for each item
//! assert_eq!(out.outputs[0].values, Values::F32(vec![2.0, 4.0, 4.0, 6.0]));
//! ```
//!
//! The stages are also there to use one by one:
//!
//! ```
//! use matgrad::diff::{differentiate, Layout, Request};
//! use matgrad::types::check_program;
//!
//! let program = check_program("(A*x+b)'*(A*x+b)").expect("type-checks");
//! let gradient = differentiate(program, "x", &Request::Derivative, Layout::Gradient).expect("derives");
//! assert_eq!(gradient.text(), "2*A'*(A*x+b)");
//! ```

pub mod backend;
pub mod front;
pub mod function;
pub mod minimize;
pub mod planning;
pub mod symbolic;
pub mod tools;

// The stages by their own names, as before the folders: `matgrad::diff`, `matgrad::cpu`, ...
pub use backend::{cpu, executor, gpu, wgsl};
pub use front::{diagnostic, parse, types};
pub use function::{compile, Compute, Function};
pub use planning::{batch, npy, plan};
pub use symbolic::{diff, eval, expr, names, print, simplify, verify};
pub use tools::{bench, catalog, check, explain, generate, workloads};
