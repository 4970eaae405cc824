//! The six standard workloads of `shared/workloads.md`, as data, with their inputs.
//!
//! In: a workload and a batch size. Out: its derivative, a validated [`Plan`] and inputs made
//! as the workloads page says (standard normal entries from a fixed seed; `M*M'/8 + I` for
//! W4's `X`; `y` in {-1, +1} for W6). Used by the benchmarks, so that every measurement runs
//! the same programs on the same data.

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::batch::{Batch, NamedArray};
use crate::diff::{differentiate, Derivative, Layout, Request};
use crate::eval::Mat;
use crate::plan::{Plan, PlanError};
use crate::types::check_program;
use crate::verify::normal;

/// One workload.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    pub id: &'static str,
    pub program: &'static str,
    pub wrt: &'static str,
    pub batched: &'static [&'static str],
    pub batch: usize,
}

impl Workload {
    /// The id's first word, as `bench --only` takes it: "W1" for "W1 lsq-shared".
    pub fn short_id(&self) -> &'static str {
        self.id.split(' ').next().unwrap_or(self.id)
    }
}

pub static WORKLOADS: &[Workload] = &[
    Workload {
        id: "W1 lsq-shared",
        program: "A: matrix(64,64); x: vector(64); b: vector(64); (A*x+b)'*(A*x+b)",
        wrt: "x",
        batched: &["x"],
        batch: 65_536,
    },
    Workload {
        id: "W2 quadform-matrix",
        program: "C: matrix(16,16); X: matrix(16,16); a: vector(16); a'*X'*C*X*a",
        wrt: "X",
        batched: &["X"],
        batch: 65_536,
    },
    Workload {
        id: "W3 lsq-per-item",
        program: "A: matrix(8,8); x: vector(8); b: vector(8); (A*x+b)'*(A*x+b)",
        wrt: "x",
        batched: &["A", "x", "b"],
        batch: 1_048_576,
    },
    Workload {
        id: "W4 logdet",
        program: "X: matrix(8,8); logdet(X)",
        wrt: "X",
        batched: &["X"],
        batch: 262_144,
    },
    Workload {
        id: "W5 trace",
        program: "A: matrix(32,32); B: matrix(32,32); X: matrix(32,32); tr(A*X*B*X')",
        wrt: "X",
        batched: &["X"],
        batch: 8_192,
    },
    Workload {
        id: "W6 logistic",
        program:
            "X: matrix(256,64); y: vector(256); w: vector(64); sum(log(vector(1)+exp(-y.*(X*w))))",
        wrt: "w",
        batched: &["w"],
        batch: 16_384,
    },
];

/// A workload made ready to run: derivative, plan, inputs in the plan's order.
pub struct Prepared {
    pub derivative: Derivative,
    pub plan: Plan,
    pub inputs: Vec<Batch<f64>>,
    pub batch: usize,
}

/// Derives, plans and makes inputs for `batch` items (seed fixed by the workload page).
/// Panics when the batch does not fit in memory; [`try_prepare`] says so instead.
pub fn prepare(w: &Workload, batch: usize) -> Prepared {
    try_prepare(w, batch).expect("workload plans validate")
}

/// [`prepare`], with a batch too large for this machine's memory an error.
pub fn try_prepare(w: &Workload, batch: usize) -> Result<Prepared, PlanError> {
    let program = check_program(w.program).expect("workloads type-check");
    let derivative = differentiate(program, w.wrt, &Request::Derivative, Layout::Gradient)
        .expect("workloads derive");
    let g = &derivative.program.graph;
    let batched: Vec<bool> = g
        .vars
        .iter()
        .map(|v| w.batched.contains(&v.name.as_str()))
        .collect();
    let sizes: Vec<usize> = g
        .dims
        .iter()
        .map(|d| d.size.expect("workload sizes are declared"))
        .collect();
    prepare_derivative(derivative, &sizes, &batched, batch, |name, m| {
        match (w.id, name) {
            ("W4 logdet", "X") => Mat::spd_from(&m),
            ("W6 logistic", "y") => m.map(|v| if v >= 0.0 { 1.0 } else { -1.0 }),
            _ => m,
        }
    })
}

/// Plans `derivative` for the given dimension sizes and batched variables and makes inputs
/// for `batch` items: standard normal entries from the workloads' fixed seed, each item's
/// value of a variable passed through `shape_input(name, value)` (e.g. to make it positive
/// definite).
pub fn prepare_derivative(
    derivative: Derivative,
    sizes: &[usize],
    batched: &[bool],
    batch: usize,
    shape_input: impl Fn(&str, Mat) -> Mat,
) -> Result<Prepared, PlanError> {
    let g = &derivative.program.graph;
    let plan = Plan::new(g, &[derivative.node], sizes, batched)?;
    plan.fits_batch(batch, &format!("a batch of {batch}"))?;
    let mut rng = StdRng::seed_from_u64(20_261_122);
    let inputs = plan
        .inputs()
        .iter()
        .map(|input| {
            let items = if input.batched { batch } else { 1 };
            let mut data = Vec::with_capacity(items * input.rows * input.cols);
            for _ in 0..items {
                let m = Mat::from_fn(input.rows, input.cols, |_, _| normal(&mut rng));
                data.extend(shape_input(&input.name, m).data);
            }
            Batch {
                batch: input.batched.then_some(batch),
                rows: input.rows,
                cols: input.cols,
                data,
            }
        })
        .collect();
    Ok(Prepared {
        derivative,
        plan,
        inputs,
        batch,
    })
}

/// One batch-optimization workload (O1–O5 of `shared/workloads.md`).
#[derive(Clone, Copy, Debug)]
pub struct MinimizeWorkload {
    pub id: &'static str,
    pub program: &'static str,
    pub wrt: &'static str,
    /// A lower bound on every entry (O4's `x >= 0`).
    pub lower: Option<f64>,
    pub batch: usize,
}

impl MinimizeWorkload {
    /// The id's first word: "O1" for "O1 ridge-shared".
    pub fn short_id(&self) -> &'static str {
        self.id.split(' ').next().unwrap_or(self.id)
    }
}

pub static MINIMIZE_WORKLOADS: &[MinimizeWorkload] = &[
    MinimizeWorkload {
        id: "O1 ridge-shared",
        program: "A: matrix(64,16); b: vector(64); x: vector(16); norm2(A*x-b)^2 + 0.1*x'*x",
        wrt: "x",
        lower: None,
        batch: 65_536,
    },
    MinimizeWorkload {
        id: "O2 logistic-per-item",
        program: "X: matrix(64,16); y: vector(64); w: vector(16); \
                  sum(log(vector(1)+exp(-y.*(X*w)))) + 0.5*w'*w",
        wrt: "w",
        lower: None,
        batch: 65_536,
    },
    MinimizeWorkload {
        id: "O3 robust-fit",
        program: "A: matrix(64,8); b: vector(64); x: vector(8); sum(sqrt((A*x-b).^2+vector(1)))",
        wrt: "x",
        lower: None,
        batch: 262_144,
    },
    MinimizeWorkload {
        id: "O4 nnls",
        program: "A: matrix(64,16); b: vector(64); x: vector(16); norm2(A*x-b)^2",
        wrt: "x",
        lower: Some(0.0),
        batch: 65_536,
    },
    MinimizeWorkload {
        id: "O5 precision-mle",
        // `S` is declared `spd(8)`, where the workloads page writes `matrix(8,8)`: over general
        // matrices inv(C) is a saddle point of this objective (antisymmetric directions curve
        // down, and rounding's antisymmetric part grows until the iterates leave for a region
        // where it is unbounded below), and over symmetric ones it is finite and unbounded
        // below again where two eigenvalues are negative. The problem the page means,
        // "answer inv(C)", is the one on the positive definite cone, which the declaration
        // states: the iterates stay exactly symmetric and positive definite.
        program: "C: matrix(8,8); S: spd(8); -logdet(S) + tr(S*C)",
        wrt: "S",
        lower: None,
        batch: 65_536,
    },
];

/// The inputs of `w` for `batch` items, as the workloads page makes them (fixed seed):
/// standard normal entries; O2's `y = sign(X*w_true + 0.5*noise)` with a normal `w_true` per
/// item; O3's `b` times 3; O4's `A` the absolute values of a normal matrix and `b` normal
/// plus 1; O5's `C = M*M'/16 + 0.1*I` for a normal 8×16 `M` per item, and its start `S = I`.
/// Shared arrays have the variable's shape, batched ones a leading axis of `batch`.
pub fn minimize_inputs(w: &MinimizeWorkload, batch: usize) -> Vec<NamedArray> {
    let mut rng = StdRng::seed_from_u64(20_261_203);
    let mut normals = |count: usize| -> Vec<f64> { (0..count).map(|_| normal(&mut rng)).collect() };
    let array = |name: &str, shape: Vec<usize>, data: Vec<f64>| NamedArray {
        name: name.into(),
        shape,
        data,
    };
    match w.short_id() {
        "O1" => vec![
            array("A", vec![64, 16], normals(64 * 16)),
            array("b", vec![batch, 64], normals(batch * 64)),
        ],
        "O2" => {
            let x = normals(batch * 64 * 16);
            let w_true = normals(batch * 16);
            let noise = normals(batch * 64);
            let mut y = vec![0.0; batch * 64];
            for item in 0..batch {
                for r in 0..64 {
                    let margin: f64 = (0..16)
                        .map(|c| x[(item * 64 + r) * 16 + c] * w_true[item * 16 + c])
                        .sum();
                    let v = margin + 0.5 * noise[item * 64 + r];
                    y[item * 64 + r] = if v >= 0.0 { 1.0 } else { -1.0 };
                }
            }
            vec![
                array("X", vec![batch, 64, 16], x),
                array("y", vec![batch, 64], y),
            ]
        }
        "O3" => vec![
            array("A", vec![64, 8], normals(64 * 8)),
            array(
                "b",
                vec![batch, 64],
                normals(batch * 64).into_iter().map(|v| 3.0 * v).collect(),
            ),
        ],
        "O4" => vec![
            array(
                "A",
                vec![64, 16],
                normals(64 * 16).into_iter().map(f64::abs).collect(),
            ),
            array(
                "b",
                vec![batch, 64],
                normals(batch * 64).into_iter().map(|v| v + 1.0).collect(),
            ),
        ],
        _ => {
            let mut c = Vec::with_capacity(batch * 64);
            for _ in 0..batch {
                let m = normals(8 * 16);
                for i in 0..8 {
                    for j in 0..8 {
                        let dot: f64 = (0..16).map(|k| m[i * 16 + k] * m[j * 16 + k]).sum();
                        c.push(dot / 16.0 + if i == j { 0.1 } else { 0.0 });
                    }
                }
            }
            let identity = Mat::identity(8).data;
            vec![
                array("C", vec![batch, 8, 8], c),
                array("S", vec![8, 8], identity),
            ]
        }
    }
}
