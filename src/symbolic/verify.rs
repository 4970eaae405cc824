//! The independent witness: derivatives compared with central finite differences in f64.
//!
//! In: a [`Derivative`] and a point (an [`Env`]). Out: a [`Comparison`] of the derived value
//! with a finite-difference estimate arranged in the same layout, or a reason the point is not
//! usable (outside the function's domain, or at a kink where differences disagree with
//! themselves). Invariants: the estimate never reads the derived formula, except for the
//! Hessian, which is estimated from differences of the derived *gradient* (itself checked
//! against differences of the function); steps are Richardson-extrapolated central
//! differences (error O(h⁴)); a point is usable only when two step sizes agree to 1e-8, so a
//! kink or pole cannot pass for a wrong formula or hide a right one. A variable of more than
//! [`PROBED_ENTRIES`] entries is differenced along [`PROBES`] random unit directions instead of
//! entry by entry (a gradient is compared as `<G, v>`, a Jacobian as `J v`, a Hessian as
//! `H v`), so a check costs a bounded number of evaluations at any size.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::diff::{Derivative, Kind, Layout};
use crate::eval::{evaluate, Env, Mat};
use crate::expr::{Graph, Id, Shape};

/// The tolerance on the relative error between a derivative and finite differences.
///
/// Richardson-extrapolated central differences with step 1e-3 have truncation error about
/// 1e-12 relative to the function's scale, and rounding error up to a few 1e-12 of it (the
/// function's rounding, about 2e-16 of its size, divided by the finest step, 1.25e-4, and
/// amplified by the extrapolation), so 1e-6 leaves six orders of magnitude for conditioning
/// (an `inv` of a matrix with condition number 1e3 loses three) while any wrong factor, sign
/// or transpose shows up as an error of order 1. A derivative smaller than 1e-5 times the
/// function's value is measured against that floor (errors then below 1e-11 of the value
/// pass), since differences cannot resolve it more finely: `(x.*y)'*(x./y)` by `y` is
/// exactly 0, and its differences are that rounding, 6e-12 of the value.
pub const TOLERANCE: f64 = 1e-6;

/// A derived value next to its finite-difference estimate.
#[derive(Clone, Debug)]
pub struct Comparison {
    pub derived: Mat,
    pub estimate: Mat,
    pub rel_error: f64,
    /// The smallest norm errors are measured against here (1e-5 of the function's value:
    /// see [`TOLERANCE`] for why): any other value compared with
    /// `estimate` uses it too, through [`relative_error_above`].
    pub floor: f64,
    /// The derived value is exactly zero and the differences are within the function's own
    /// rounding (see [`compare`]): a zero compared with it is exact.
    pub zero_within_noise: bool,
    /// For a variable of more than [`PROBED_ENTRIES`] entries: the directions along which
    /// `derived` and `estimate` were projected (see [`Comparison::error_of`]).
    pub probes: Option<Probes>,
}

impl Comparison {
    /// The relative error of `value` (a full derivative in `d`'s layout, such as another
    /// device's or a printed formula's) against the estimate, projected as the estimate was.
    pub fn error_of(&self, value: &Mat) -> f64 {
        match &self.probes {
            Some(p) => relative_error_above(&p.project(value), &self.estimate, self.floor),
            None => relative_error_above(value, &self.estimate, self.floor),
        }
    }
}

/// Variables with more entries than this are compared along [`PROBES`] random directions
/// instead of entry by entry: per entry, differences cost eight evaluations of the function,
/// so a 20 000-entry gradient took two minutes to check.
pub const PROBED_ENTRIES: usize = 1024;

/// Random unit directions a large variable is probed along.
pub const PROBES: usize = 32;

/// Directions in a variable's space, and how a derivative is projected on them: a gradient
/// `G` to `<G, v>`, a Jacobian to `J v`, a Hessian to `H v`, one row per direction. A wrong
/// entry shows in almost every random direction, so 32 of them witness what every entry
/// would, at the cost of 32 directional differences.
#[derive(Clone, Debug)]
pub struct Probes {
    directions: Vec<Mat>,
    kind: Kind,
    /// The derivative is in numerator layout (transposed from the gradient layout).
    transposed: bool,
}

impl Probes {
    /// The projections of `value` (in the derivative's layout), one row per direction.
    pub fn project(&self, value: &Mat) -> Mat {
        let d = if self.transposed {
            value.transpose()
        } else {
            value.clone()
        };
        let rows: Vec<Vec<f64>> = self
            .directions
            .iter()
            .map(|v| match self.kind {
                Kind::Jacobian => (0..d.cols)
                    .map(|j| {
                        v.data
                            .iter()
                            .enumerate()
                            .map(|(k, vk)| vk * d.at(k, j))
                            .sum()
                    })
                    .collect(),
                Kind::Hessian => (0..d.rows)
                    .map(|i| {
                        v.data
                            .iter()
                            .enumerate()
                            .map(|(k, vk)| d.at(i, k) * vk)
                            .sum()
                    })
                    .collect(),
                _ => vec![v.data.iter().zip(&d.data).map(|(a, b)| a * b).sum()],
            })
            .collect();
        let width = rows.first().map_or(0, Vec::len);
        Mat::from_fn(rows.len(), width, |i, j| rows[i][j])
    }
}

/// Why a point could not be used.
#[derive(Clone, Debug, PartialEq)]
pub enum Unusable {
    /// The function or its derivative is not finite there.
    OutOfDomain,
    /// Two step sizes disagree: a kink or a pole is within a step.
    NotSmooth,
}

/// The sizes of a graph's dimensions: declared sizes, else `3, 4, 2, 5, 6, …` in order, so
/// that different dimensions get different sizes and nothing is accidentally square.
pub fn dimension_sizes(graph: &Graph) -> Vec<usize> {
    const SIZES: [usize; 8] = [3, 4, 2, 5, 6, 7, 8, 9];
    let mut next = 0;
    graph
        .dims
        .iter()
        .map(|d| match d.size {
            Some(s) => s,
            None => {
                let s = SIZES[next % SIZES.len()];
                next += 1;
                s
            }
        })
        .collect()
}

/// A standard normal sample (Box–Muller).
pub fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.gen_range(f64::EPSILON..1.0);
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Random values for every variable: standard normal entries, symmetric for `symmetric(n)`,
/// `M*M'/n + I` for `spd(n)`.
pub fn random_point(graph: &Graph, dim_sizes: &[usize], seed: u64) -> Env {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut env = Env {
        dim_sizes: dim_sizes.to_vec(),
        values: Vec::new(),
    };
    for var in &graph.vars {
        let (rows, cols) = env.dims_of(var.shape);
        let m = Mat::from_fn(rows, cols, |_, _| normal(&mut rng));
        let value = if var.positive_definite {
            Mat::spd_from(&m)
        } else if var.symmetric {
            m.zip(&m.transpose(), |a, b| 0.5 * (a + b))
        } else {
            m
        };
        env.values.push(Some(value));
    }
    env
}

/// `‖a − b‖ / max(‖b‖, 1e-8)` in the Frobenius norm; infinite when shapes differ or any
/// entry of `a` is not finite while `b` is.
pub fn relative_error(a: &Mat, b: &Mat) -> f64 {
    relative_error_above(a, b, 1e-8)
}

/// `‖a − b‖ / max(‖b‖, floor)`; see [`relative_error`].
pub fn relative_error_above(a: &Mat, b: &Mat, floor: f64) -> f64 {
    if a.rows != b.rows || a.cols != b.cols || (!a.is_finite() && b.is_finite()) {
        return f64::INFINITY;
    }
    let diff = a.zip(b, |x, y| x - y).norm();
    if diff.is_nan() {
        return f64::INFINITY;
    }
    diff / b.norm().max(floor)
}

/// Compares a derivative with finite differences at `env`.
pub fn compare(d: &Derivative, env: &Env) -> Result<Comparison, Unusable> {
    let g = &d.program.graph;
    let derived = evaluate(g, d.node, env).map_err(|_| Unusable::OutOfDomain)?;
    let entries = env.values[d.wrt as usize]
        .as_ref()
        .map_or(0, |v| v.data.len());
    let probed = entries > PROBED_ENTRIES
        && matches!(d.kind, Kind::Gradient | Kind::Jacobian | Kind::Hessian);
    let (derived, estimate, probes) = if probed {
        let (estimate, probes) = estimate_probed(d, env)?;
        (probes.project(&derived), estimate, Some(probes))
    } else {
        (derived, estimate(d, env)?, None)
    };
    if !estimate.is_finite() {
        return Err(Unusable::OutOfDomain);
    }
    // Differences carry an absolute error of up to a few 1e-12 of the function's size (see
    // TOLERANCE), so a derivative much smaller than the function is compared against a floor.
    let value = evaluate(g, d.program.root, env).map_err(|_| Unusable::OutOfDomain)?;
    let floor = 1e-5 * value.norm().max(1.0);
    let mut rel_error = relative_error_above(&derived, &estimate, floor);
    let mut zero_within_noise = false;
    // A derivative that is exactly zero (`tr(inv(X'*C*X)*(X'*B*X))` by a square `X` is
    // constant) has nothing to be relative to: its differences are the function's rounding
    // divided by the step, and that rounding can be far above 2e-16 of the value when the
    // function goes through an ill-conditioned `inv` or `det`. It passes when the differences
    // are within what the function's observed rounding explains.
    if derived.data.iter().all(|&v| v == 0.0) {
        let noise = observed_rounding(g, d.program.root, env, &value)?;
        if estimate.norm() <= ZERO_DERIVATIVE_NOISE_FACTOR * noise {
            rel_error = 0.0;
            zero_within_noise = true;
        }
    }
    Ok(Comparison {
        derived,
        estimate,
        rel_error,
        floor,
        zero_within_noise,
        probes,
    })
}

/// The differences of `d` along [`PROBES`] random unit directions (symmetric for a symmetric
/// variable), one row per direction, and the directions to project other values on.
fn estimate_probed(d: &Derivative, env: &Env) -> Result<(Mat, Probes), Unusable> {
    let g = &d.program.graph;
    let var = &g.vars[d.wrt as usize];
    let base = env.values[d.wrt as usize]
        .clone()
        .ok_or(Unusable::OutOfDomain)?;
    let mut rng = StdRng::seed_from_u64(0x0b5e_55ed);
    let directions: Vec<Mat> = (0..PROBES)
        .map(|_| {
            let r = Mat::from_fn(base.rows, base.cols, |_, _| normal(&mut rng));
            let v = if var.symmetric {
                r.zip(&r.transpose(), |a, b| (a + b) / 2.0)
            } else {
                r
            };
            // Unit length, as a coordinate direction: the step moves the point as far, so a
            // function of `A*x` with a long row moves no faster than along one entry.
            let norm = v.norm().max(f64::MIN_POSITIVE);
            v.zip(&v, |a, _| a / norm)
        })
        .collect();
    // A Hessian's columns are differences of the exact, unsimplified gradient.
    let mut extended = g.clone();
    let root = match d.kind {
        Kind::Hessian => crate::diff::gradient(&mut extended, d.program.root, d.wrt),
        _ => d.program.root,
    };
    let noise = rounding_noise(&extended, root, env)?;
    let rows = directions
        .iter()
        .map(|v| directional(&extended, root, d.wrt, env, v, noise))
        .collect::<Result<Vec<Mat>, Unusable>>()?;
    let width = rows.first().map_or(0, |r| r.data.len());
    let estimate = Mat::from_fn(rows.len(), width, |i, j| rows[i].data[j]);
    let transposed =
        d.layout == Layout::Numerator && matches!(d.kind, Kind::Gradient | Kind::Jacobian);
    let probes = Probes {
        directions,
        kind: d.kind,
        transposed,
    };
    Ok((estimate, probes))
}

/// How far finite differences of a function whose derivative is zero may be from zero, in units
/// of the function's observed rounding: the differences divide it by steps down to 1.25e-4
/// (8e3), Richardson extrapolation amplifies it a few times, and the observed spread is
/// itself a sample, so a factor of 100 on top.
const ZERO_DERIVATIVE_NOISE_FACTOR: f64 = 8e5;

/// The spread of the function's value when every input moves by a few units of float64
/// rounding (relative 1e-15, random signs, eight draws): what its evaluation's rounding
/// amounts to at `env`, however ill-conditioned the operations on the way.
fn observed_rounding(g: &Graph, root: Id, env: &Env, value: &Mat) -> Result<f64, Unusable> {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let mut spread = 0.0f64;
    for _ in 0..8 {
        let mut moved = env.clone();
        for m in moved.values.iter_mut().flatten() {
            *m = Mat::from_fn(m.rows, m.cols, |i, j| {
                m.at(i, j) * (1.0 + 1e-15 * rng.gen_range(-1.0..1.0))
            });
        }
        let v = evaluate(g, root, &moved).map_err(|_| Unusable::OutOfDomain)?;
        if !v.is_finite() {
            return Err(Unusable::OutOfDomain);
        }
        spread = spread.max(v.zip(value, |a, b| a - b).norm());
    }
    Ok(spread.max(2.2e-16 * value.norm()))
}

/// The finite-difference estimate of `d`, arranged in `d`'s layout.
pub fn estimate(d: &Derivative, env: &Env) -> Result<Mat, Unusable> {
    let g = &d.program.graph;
    let root = d.program.root;
    let value = evaluate(g, root, env).map_err(|_| Unusable::OutOfDomain)?;
    if !value.is_finite() {
        return Err(Unusable::OutOfDomain);
    }
    let var = &g.vars[d.wrt as usize];
    let estimate = match d.kind {
        Kind::Gradient if var.symmetric => symmetric_gradient(g, root, d.wrt, env)?,
        Kind::Gradient => {
            let columns = differences(g, root, d.wrt, env)?;
            let (r, c) = env.dims_of(var.shape);
            Mat::from_fn(r, c, |i, j| columns[i * c + j].data[0])
        }
        Kind::Jacobian => {
            let columns = differences(g, root, d.wrt, env)?;
            let m = columns.first().map_or(0, |c| c.data.len());
            Mat::from_fn(columns.len(), m, |i, j| columns[i].data[j])
        }
        Kind::ByScalar => differences(g, root, d.wrt, env)?.remove(0),
        Kind::Hessian | Kind::HessianVector => {
            // The exact, unsimplified gradient, built in a copy of the graph.
            let mut extended = g.clone();
            let grad = crate::diff::gradient(&mut extended, root, d.wrt);
            if d.kind == Kind::Hessian {
                let columns = differences(&extended, grad, d.wrt, env)?;
                let n = columns.len();
                Mat::from_fn(n, n, |i, k| columns[k].data[i])
            } else {
                // `H v` is the gradient's derivative along `v`: one directional difference.
                let v = hessian_direction(d, env).ok_or(Unusable::OutOfDomain)?;
                let noise = rounding_noise(&extended, grad, env)?;
                directional(&extended, grad, d.wrt, env, &v, noise)?
            }
        }
    };
    let transposed = d.layout == Layout::Numerator
        && matches!(
            d.kind,
            Kind::Gradient | Kind::Jacobian | Kind::HessianVector
        );
    Ok(if transposed {
        estimate.transpose()
    } else {
        estimate
    })
}

/// The direction `v` of a Hessian-vector product: the variable added last.
fn hessian_direction(d: &Derivative, env: &Env) -> Option<Mat> {
    let v = d.program.graph.vars.len().checked_sub(1)?;
    env.values.get(v)?.clone()
}

/// For each entry of `var` (row-major), the derivative of `root` along it.
fn differences(g: &Graph, root: Id, var: u32, env: &Env) -> Result<Vec<Mat>, Unusable> {
    let base = env.values[var as usize]
        .clone()
        .ok_or(Unusable::OutOfDomain)?;
    let noise = rounding_noise(g, root, env)?;
    let mut columns = Vec::with_capacity(base.data.len());
    for k in 0..base.data.len() {
        let mut direction = Mat::zeros(base.rows, base.cols);
        direction.data[k] = 1.0;
        columns.push(directional(g, root, var, env, &direction, noise)?);
    }
    Ok(columns)
}

/// `<S, D>` along every symmetric basis direction, turned back into `S` (symmetric).
fn symmetric_gradient(g: &Graph, root: Id, var: u32, env: &Env) -> Result<Mat, Unusable> {
    let n = env.dims_of(g.vars[var as usize].shape).0;
    let noise = rounding_noise(g, root, env)?;
    let mut s = Mat::zeros(n, n);
    for i in 0..n {
        for j in i..n {
            let mut direction = Mat::zeros(n, n);
            direction.data[i * n + j] = 1.0;
            direction.data[j * n + i] = 1.0;
            let d = directional(g, root, var, env, &direction, noise)?.data[0];
            // Along E_ij + E_ji the derivative is S_ij + S_ji = 2 S_ij off the diagonal.
            let value = if i == j { d } else { d / 2.0 };
            s.data[i * n + j] = value;
            s.data[j * n + i] = value;
        }
    }
    Ok(s)
}

/// How far two difference estimates of `root` at `env` may differ by rounding alone: the
/// rounding of its value (2e-16 of it, summed over many terms), divided by the finest step,
/// is a few 1e-12 of the value in each estimate; a long sum such as `x'*x` over 20 000
/// entries differs by that much without any kink.
fn rounding_noise(g: &Graph, root: Id, env: &Env) -> Result<f64, Unusable> {
    let value = evaluate(g, root, env).map_err(|_| Unusable::OutOfDomain)?;
    if !value.is_finite() {
        return Err(Unusable::OutOfDomain);
    }
    Ok(1e-9 * value.norm())
}

/// The derivative of `root` at `env` along `direction` in variable `var`; `noise` is
/// [`rounding_noise`] at `env`.
fn directional(
    g: &Graph,
    root: Id,
    var: u32,
    env: &Env,
    direction: &Mat,
    noise: f64,
) -> Result<Mat, Unusable> {
    let base = env.values[var as usize]
        .clone()
        .ok_or(Unusable::OutOfDomain)?;
    let scale = base
        .data
        .iter()
        .zip(&direction.data)
        .filter(|(_, d)| **d != 0.0)
        .map(|(x, _)| x.abs())
        .fold(1.0f64, f64::max);
    let at = |h: f64| -> Result<Mat, Unusable> {
        let mut shifted = env.clone();
        shifted.values[var as usize] = Some(base.zip(direction, |x, d| x + h * d));
        let v = evaluate(g, root, &shifted).map_err(|_| Unusable::OutOfDomain)?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(Unusable::OutOfDomain)
        }
    };
    let central = |h: f64| -> Result<Mat, Unusable> {
        let (plus, minus) = (at(h)?, at(-h)?);
        Ok(plus.zip(&minus, |p, m| (p - m) / (2.0 * h)))
    };
    let richardson = |h: f64| -> Result<Mat, Unusable> {
        let (coarse, fine) = (central(h)?, central(h / 2.0)?);
        Ok(fine.zip(&coarse, |f, c| (4.0 * f - c) / 3.0))
    };
    let h = 1e-3 * scale;
    let first = richardson(h)?;
    let second = richardson(h / 4.0)?;
    let spread = first.zip(&second, |a, b| a - b).norm();
    if spread > 1e-8 * first.norm().max(1.0) + noise {
        return Err(Unusable::NotSmooth);
    }
    Ok(second)
}

/// The point `env` of `source`, re-expressed for the graph `other` by variable and
/// dimension names (for a formula that was parsed separately, such as a printed one).
pub fn translate_env(source: &Graph, env: &Env, other: &Graph) -> Option<Env> {
    let dim_sizes = other
        .dims
        .iter()
        .map(|d| {
            source
                .dims
                .iter()
                .position(|s| s.name == d.name)
                .map(|i| env.dim_sizes[i])
                .or(d.size)
        })
        .collect::<Option<Vec<usize>>>()?;
    let values = other
        .vars
        .iter()
        .map(|v| {
            source
                .var_by_name(&v.name)
                .and_then(|i| env.values.get(i as usize).cloned().flatten())
        })
        .collect();
    Some(Env { dim_sizes, values })
}

/// The shape of a derivative's value for given dimension sizes.
pub fn concrete_shape(env: &Env, shape: Shape) -> (usize, usize) {
    env.dims_of(shape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::{differentiate, Request};
    use crate::types::check_program;

    /// A random point with every dimension of size `n`.
    fn point(g: &Graph, n: usize, seed: u64) -> Env {
        random_point(g, &vec![n; g.dims.len()], seed)
    }

    /// Above PROBED_ENTRIES entries a derivative is compared along random directions: the
    /// right one passes, one wrong by 1e-4 in every entry (or in one entry) fails, for a
    /// gradient, a Jacobian and a Hessian, in both layouts.
    #[test]
    fn large_variables_are_probed_and_a_wrong_derivative_still_fails() {
        for (program, request) in [
            ("x: vector(n); sum(x.^3)", Request::Derivative),
            (
                "x: vector(n); A: matrix(3,n); exp(A*x)",
                Request::Derivative,
            ),
            ("x: vector(n); sum(exp(x))*sum(x)", Request::Hessian),
        ] {
            for layout in [Layout::Gradient, Layout::Numerator] {
                let d =
                    differentiate(check_program(program).unwrap(), "x", &request, layout).unwrap();
                let env = point(&d.program.graph, PROBED_ENTRIES + 1, 5);
                let c = compare(&d, &env).unwrap();
                assert!(c.probes.is_some(), "{program}: not probed");
                assert!(c.rel_error < TOLERANCE, "{program}: {:e}", c.rel_error);
                // The same value, perturbed: every entry by 1e-4 of itself (alternating
                // signs), or the largest entry by a thirtieth of the whole norm.
                let mut everywhere = evaluate(&d.program.graph, d.node, &env).unwrap();
                let mut one = everywhere.clone();
                for (k, v) in everywhere.data.iter_mut().enumerate() {
                    *v *= 1.0 + if k % 2 == 0 { 1e-4 } else { -1e-4 };
                }
                let largest = (0..one.data.len())
                    .max_by(|&a, &b| one.data[a].abs().total_cmp(&one.data[b].abs()))
                    .unwrap_or(0);
                one.data[largest] += one.norm() / 30.0;
                for wrong in [everywhere, one] {
                    let error = c.error_of(&wrong);
                    assert!(
                        error > 10.0 * TOLERANCE,
                        "{program}: a wrong value gave {error:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_exact_zero_is_compared_with_the_functions_rounding_not_relatively() {
        // Constant functions through ill-conditioned operations: their differences are
        // rounding of up to ~1e-5 of the value, and their derivative is exactly zero.
        for program in [
            "X: matrix(n,n); C: matrix(n,n); B: matrix(n,n); tr(inv(X'*C*X)*(X'*B*X))",
            "X: matrix(n,n); det(X)*det(inv(X))",
        ] {
            let d = differentiate(
                check_program(program).unwrap(),
                "X",
                &Request::Derivative,
                Layout::Gradient,
            )
            .unwrap();
            assert_eq!(d.text(), "matrix(0)");
            let mut compared = 0;
            for seed in 0..16 {
                if let Ok(c) = compare(&d, &point(&d.program.graph, 3, seed)) {
                    assert_eq!(c.rel_error, 0.0, "{program}, seed {seed}: {c:?}");
                    assert!(c.zero_within_noise);
                    compared += 1;
                }
            }
            assert!(compared >= 8, "{program}: {compared} points");
        }
        // A zero claimed for a derivative that is small but not zero is still caught: the
        // derivative of x'*x + 1e-6*z'*z by z is 2e-6*z, far above the function's rounding.
        let mut d = differentiate(
            check_program("x: vector(n); z: vector(n); x'*x + 1e-6*z'*z").unwrap(),
            "z",
            &Request::Derivative,
            Layout::Gradient,
        )
        .unwrap();
        let shape = d.program.graph.shape(d.node);
        d.node = d.program.graph.zero(shape);
        let c = compare(&d, &point(&d.program.graph, 3, 1)).unwrap();
        assert!(!c.zero_within_noise && c.rel_error > TOLERANCE, "{c:?}");
    }

    fn derive(source: &str, wrt: &str, request: Request) -> Derivative {
        let p = check_program(source).unwrap();
        differentiate(p, wrt, &request, Layout::Gradient).unwrap()
    }

    #[test]
    fn finite_differences_agree_with_a_known_gradient() {
        let d = derive(
            "A: matrix(m,n); b: vector(m); (A*x+b)'*(A*x+b)",
            "x",
            Request::Derivative,
        );
        let sizes = dimension_sizes(&d.program.graph);
        let env = random_point(&d.program.graph, &sizes, 7);
        let c = compare(&d, &env).unwrap();
        assert!(c.rel_error < 1e-9, "{c:?}");
    }

    #[test]
    fn a_wrong_formula_is_caught() {
        let mut d = derive("x'*A*x", "x", Request::Derivative);
        // Replace the derivative by the classic mistake 2*A*x (right only for symmetric A).
        let g = &mut d.program.graph;
        let a = g.var(g.var_by_name("A").unwrap());
        let x = g.var(g.var_by_name("x").unwrap());
        let ax = g.mul(a, x);
        d.node = g.scale(2.0, ax);
        let env = random_point(&d.program.graph, &dimension_sizes(&d.program.graph), 3);
        assert!(compare(&d, &env).unwrap().rel_error > 0.01);
    }

    #[test]
    fn kinks_are_reported_not_compared() {
        let d = derive("x: vector(2); sum(abs(x))", "x", Request::Derivative);
        let mut env = random_point(&d.program.graph, &[2], 1);
        env.values[0] = Some(Mat::from_fn(2, 1, |i, _| if i == 0 { 1e-5 } else { 1.0 }));
        assert_eq!(compare(&d, &env).unwrap_err(), Unusable::NotSmooth);
    }

    #[test]
    fn hessian_estimate_from_the_gradient() {
        let d = derive("x: vector(n); sum(exp(x)) + x'*x", "x", Request::Hessian);
        let env = random_point(&d.program.graph, &[4], 5);
        let c = compare(&d, &env).unwrap();
        assert!(c.rel_error < 1e-8, "{c:?}");
    }
}
