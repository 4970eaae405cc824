//! The float64 reference evaluator for single items.
//!
//! In: a [`Graph`], a root, and an [`Env`]: a size for every dimension and a value for every
//! variable the root reads. Out: a dense row-major [`Mat`]. Invariants: each node is evaluated
//! once per call (the DAG's sharing is kept); `inv`, `det` and `logdet` use LU with partial
//! pivoting; a singular matrix gives non-finite entries, never a panic; `logdet` of a matrix
//! whose determinant is not positive is NaN (use `log(abs(det(X)))` for the absolute value).

use std::fmt;

use crate::expr::{Dim, Graph, Id, Node, Shape};

/// A dense row-major matrix of f64; scalars are 1×1 and vectors n×1.
#[derive(Clone, PartialEq)]
pub struct Mat {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f64>,
}

impl fmt::Debug for Mat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Mat {}x{} {:?}", self.rows, self.cols, self.data)
    }
}

impl Mat {
    pub fn zeros(rows: usize, cols: usize) -> Mat {
        Mat {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    pub fn filled(rows: usize, cols: usize, value: f64) -> Mat {
        Mat {
            rows,
            cols,
            data: vec![value; rows * cols],
        }
    }

    pub fn scalar(v: f64) -> Mat {
        Mat::filled(1, 1, v)
    }

    pub fn identity(n: usize) -> Mat {
        let mut m = Mat::zeros(n, n);
        for i in 0..n {
            m.data[i * n + i] = 1.0;
        }
        m
    }

    pub fn from_fn(rows: usize, cols: usize, mut f: impl FnMut(usize, usize) -> f64) -> Mat {
        let mut data = Vec::with_capacity(rows * cols);
        for i in 0..rows {
            for j in 0..cols {
                data.push(f(i, j));
            }
        }
        Mat { rows, cols, data }
    }

    pub fn at(&self, i: usize, j: usize) -> f64 {
        self.data[i * self.cols + j]
    }

    pub fn transpose(&self) -> Mat {
        Mat::from_fn(self.cols, self.rows, |i, j| self.at(j, i))
    }

    pub fn matmul(&self, other: &Mat) -> Mat {
        let mut out = Mat::zeros(self.rows, other.cols);
        for i in 0..self.rows {
            for k in 0..self.cols {
                let a = self.at(i, k);
                for j in 0..other.cols {
                    out.data[i * other.cols + j] += a * other.at(k, j);
                }
            }
        }
        out
    }

    pub fn map(&self, f: impl Fn(f64) -> f64) -> Mat {
        Mat {
            rows: self.rows,
            cols: self.cols,
            data: self.data.iter().map(|&x| f(x)).collect(),
        }
    }

    pub fn zip(&self, other: &Mat, f: impl Fn(f64, f64) -> f64) -> Mat {
        Mat {
            rows: self.rows,
            cols: self.cols,
            data: self
                .data
                .iter()
                .zip(&other.data)
                .map(|(&a, &b)| f(a, b))
                .collect(),
        }
    }

    /// The Frobenius norm.
    pub fn norm(&self) -> f64 {
        self.data.iter().map(|x| x * x).sum::<f64>().sqrt()
    }

    pub fn is_finite(&self) -> bool {
        self.data.iter().all(|x| x.is_finite())
    }

    /// The symmetric positive definite `M*M'/n + I` for a square `M`.
    pub fn spd_from(m: &Mat) -> Mat {
        let n = m.rows;
        let mut out = m.matmul(&m.transpose());
        for v in &mut out.data {
            *v /= n as f64;
        }
        for i in 0..n {
            out.data[i * n + i] += 1.0;
        }
        out
    }
}

/// The arithmetic the LU factorization needs, for float64 (the reference) and float32 (the
/// fast path): one algorithm for both.
pub trait Real:
    Copy
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    const ZERO: Self;
    const ONE: Self;
    const NAN: Self;
    const NEG_INFINITY: Self;
    fn abs(self) -> Self;
    fn is_finite(self) -> bool;
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Real for f64 {
    const ZERO: f64 = 0.0;
    const ONE: f64 = 1.0;
    const NAN: f64 = f64::NAN;
    const NEG_INFINITY: f64 = f64::NEG_INFINITY;
    fn abs(self) -> f64 {
        f64::abs(self)
    }
    fn is_finite(self) -> bool {
        f64::is_finite(self)
    }
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> f64 {
        v
    }
}

impl Real for f32 {
    const ZERO: f32 = 0.0;
    const ONE: f32 = 1.0;
    const NAN: f32 = f32::NAN;
    const NEG_INFINITY: f32 = f32::NEG_INFINITY;
    fn abs(self) -> f32 {
        f32::abs(self)
    }
    fn is_finite(self) -> bool {
        f32::is_finite(self)
    }
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> f32 {
        v as f32
    }
}

/// The LU factorization `P*A = L*U` with partial pivoting of an n×n matrix, packed in one
/// buffer; [`Lu::factor`] reuses the buffers, so one `Lu` serves a whole block of items.
pub struct Lu<T: Real> {
    n: usize,
    lu: Vec<T>,
    perm: Vec<usize>,
    sign: T,
    singular: bool,
    column: Vec<T>,
}

impl Lu<f64> {
    /// Factors `a` (float64).
    pub fn new(a: &Mat) -> Lu<f64> {
        let mut lu = Lu::with_size(a.rows);
        lu.factor(&a.data);
        lu
    }

    /// The inverse; all entries are NaN when the matrix is singular.
    pub fn inverse(&mut self) -> Mat {
        let mut out = Mat::zeros(self.n, self.n);
        self.inverse_into(&mut out.data);
        out
    }
}

impl<T: Real> Lu<T> {
    pub fn with_size(n: usize) -> Lu<T> {
        Lu {
            n,
            lu: vec![T::ZERO; n * n],
            perm: (0..n).collect(),
            sign: T::ONE,
            singular: false,
            column: vec![T::ZERO; n],
        }
    }

    /// Factors the row-major n×n matrix `a`.
    pub fn factor(&mut self, a: &[T]) {
        let n = self.n;
        self.lu.copy_from_slice(a);
        self.perm.iter_mut().enumerate().for_each(|(i, p)| *p = i);
        self.sign = T::ONE;
        self.singular = false;
        let lu = &mut self.lu;
        for col in 0..n {
            let (mut pivot, mut best) = (col, lu[col * n + col].abs());
            for row in col + 1..n {
                let v = lu[row * n + col].abs();
                if v > best {
                    best = v;
                    pivot = row;
                }
            }
            if best == T::ZERO || !best.is_finite() {
                self.singular = true;
                continue;
            }
            if pivot != col {
                for j in 0..n {
                    lu.swap(col * n + j, pivot * n + j);
                }
                self.perm.swap(col, pivot);
                self.sign = -self.sign;
            }
            let d = lu[col * n + col];
            for row in col + 1..n {
                let factor = lu[row * n + col] / d;
                lu[row * n + col] = factor;
                for j in col + 1..n {
                    let u = lu[col * n + j];
                    lu[row * n + j] = lu[row * n + j] - factor * u;
                }
            }
        }
    }

    pub fn det(&self) -> T {
        if self.singular {
            return T::ZERO;
        }
        (0..self.n).fold(self.sign, |acc, i| acc * self.lu[i * self.n + i])
    }

    /// `log(det)`, accumulated in float64: NaN when the determinant is not positive.
    pub fn log_det(&self) -> T {
        if self.singular {
            return T::NEG_INFINITY;
        }
        let mut negative = self.sign < T::ZERO;
        let mut sum = 0.0;
        for i in 0..self.n {
            let d = self.lu[i * self.n + i];
            if d < T::ZERO {
                negative = !negative;
            }
            sum += d.abs().to_f64().ln();
        }
        if negative {
            T::NAN
        } else {
            T::from_f64(sum)
        }
    }

    /// Writes the inverse (row-major) into `out`; NaN everywhere when singular.
    pub fn inverse_into(&mut self, out: &mut [T]) {
        let n = self.n;
        if self.singular {
            out.fill(T::NAN);
            return;
        }
        for col in 0..n {
            let x = &mut self.column;
            for (i, xi) in x.iter_mut().enumerate() {
                *xi = if self.perm[i] == col { T::ONE } else { T::ZERO };
            }
            for i in 0..n {
                let row = &self.lu[i * n..i * n + i];
                let s = row
                    .iter()
                    .zip(&x[..i])
                    .fold(T::ZERO, |acc, (&l, &v)| acc + l * v);
                x[i] = x[i] - s;
            }
            for i in (0..n).rev() {
                let row = &self.lu[i * n + i + 1..(i + 1) * n];
                let s = row
                    .iter()
                    .zip(&x[i + 1..])
                    .fold(T::ZERO, |acc, (&u, &v)| acc + u * v);
                x[i] = (x[i] - s) / self.lu[i * n + i];
            }
            for (i, &v) in x.iter().enumerate() {
                out[i * n + col] = v;
            }
        }
    }
}

/// Sizes for the dimensions and values for the variables.
#[derive(Clone, Debug, Default)]
pub struct Env {
    pub dim_sizes: Vec<usize>,
    pub values: Vec<Option<Mat>>,
}

impl Env {
    pub fn size(&self, d: Dim) -> usize {
        match d {
            Dim::One => 1,
            Dim::Sym(i) => self.dim_sizes[i as usize],
        }
    }

    pub fn dims_of(&self, shape: Shape) -> (usize, usize) {
        (self.size(shape.rows), self.size(shape.cols))
    }
}

/// An evaluation that cannot start: a variable has no value, or a value has the wrong size.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error("no value for variable `{0}`")]
    MissingValue(String),
    #[error("variable `{name}` has a {got_rows}x{got_cols} value, expected {rows}x{cols}")]
    WrongSize {
        name: String,
        rows: usize,
        cols: usize,
        got_rows: usize,
        got_cols: usize,
    },
}

/// Evaluates `root` in float64.
pub fn evaluate(graph: &Graph, root: Id, env: &Env) -> Result<Mat, EvalError> {
    let order = graph.topo_order(root);
    let mut values: Vec<Option<Mat>> = vec![None; graph.len()];
    for id in order {
        let (rows, cols) = env.dims_of(graph.shape(id));
        let node = graph.node(id);
        let value = match node {
            Node::Var(v) => variable_value(graph, v, env, rows, cols)?,
            _ => {
                let args: Vec<&Mat> = node
                    .args()
                    .into_iter()
                    .map(|a| {
                        values[a.index()]
                            .as_ref()
                            .expect("argument evaluated first")
                    })
                    .collect();
                apply(&node, &args, rows, cols)
            }
        };
        values[id.index()] = Some(value);
    }
    Ok(values[root.index()]
        .take()
        .unwrap_or_else(|| Mat::scalar(f64::NAN)))
}

fn variable_value(
    graph: &Graph,
    v: u32,
    env: &Env,
    rows: usize,
    cols: usize,
) -> Result<Mat, EvalError> {
    let var = &graph.vars[v as usize];
    let value = env
        .values
        .get(v as usize)
        .and_then(|x| x.as_ref())
        .ok_or_else(|| EvalError::MissingValue(var.name.clone()))?;
    if value.rows != rows || value.cols != cols {
        return Err(EvalError::WrongSize {
            name: var.name.clone(),
            rows,
            cols,
            got_rows: value.rows,
            got_cols: value.cols,
        });
    }
    Ok(value.clone())
}

/// The value of one operation (any node but a variable) from its arguments' values, in
/// float64; `rows`×`cols` is the result's size. The one definition of what each operation
/// computes: the evaluator and the batched reference both call it.
pub fn apply(node: &Node, args: &[&Mat], rows: usize, cols: usize) -> Mat {
    let get = |i: usize| args[i];
    match *node {
        Node::Var(_) => Mat::filled(rows, cols, f64::NAN),
        Node::Const(c) => Mat::scalar(c.get()),
        Node::Fill(c, _) => Mat::filled(rows, cols, c.get()),
        Node::Eye(_) => Mat::identity(rows),
        Node::Add(..) => get(0).zip(get(1), |x, y| x + y),
        Node::Neg(_) => get(0).map(|x| -x),
        Node::MatMul(..) => get(0).matmul(get(1)),
        Node::Scale(..) => {
            let s = get(0).data[0];
            get(1).map(|x| s * x)
        }
        Node::Div(..) => {
            let s = get(1).data[0];
            get(0).map(|x| x / s)
        }
        Node::Hadamard(..) => get(0).zip(get(1), |x, y| x * y),
        Node::ElemDiv(..) => get(0).zip(get(1), |x, y| x / y),
        Node::Pow(..) => Mat::scalar(get(0).data[0].powf(get(1).data[0])),
        Node::ElemPow(..) => {
            let (base, exponent) = (get(0), get(1));
            if exponent.data.len() == 1 {
                let e = exponent.data[0];
                base.map(|x| x.powf(e))
            } else {
                base.zip(exponent, f64::powf)
            }
        }
        Node::MatPow(_, k) => {
            let a = get(0);
            let mut out = a.clone();
            for _ in 1..k {
                out = out.matmul(a);
            }
            out
        }
        Node::Transpose(_) => get(0).transpose(),
        Node::Map(f, _) => get(0).map(|x| f.apply(x)),
        Node::Sum(_) => Mat::scalar(get(0).data.iter().sum()),
        Node::Norm1(_) => Mat::scalar(get(0).data.iter().map(|x| x.abs()).sum()),
        Node::Norm2(_) => Mat::scalar(get(0).norm()),
        Node::Trace(_) => {
            let a = get(0);
            Mat::scalar((0..a.rows).map(|i| a.at(i, i)).sum())
        }
        Node::Det(_) => Mat::scalar(Lu::new(get(0)).det()),
        Node::LogDet(_) => Mat::scalar(Lu::new(get(0)).log_det()),
        Node::Inv(_) => Lu::new(get(0)).inverse(),
        Node::Diag(_) => {
            let a = get(0);
            Mat::from_fn(a.rows, a.rows, |i, j| if i == j { a.data[i] } else { 0.0 })
        }
        Node::DiagPart(_) => {
            let a = get(0);
            Mat::from_fn(a.rows, 1, |i, _| a.at(i, i))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    fn mat(rows: usize, cols: usize, data: &[f64]) -> Mat {
        Mat {
            rows,
            cols,
            data: data.to_vec(),
        }
    }

    #[test]
    fn lu_determinant_and_inverse_of_a_matrix_that_needs_pivoting() {
        // The (0,0) entry is zero, so the factorization must pivot.
        let a = mat(3, 3, &[0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 3.0, 0.0, 1.0]);
        let mut lu = Lu::new(&a);
        // det by cofactor expansion along the first row: 0 - 2*(1-0) + 1*(0-3) = -5.
        assert_relative_eq!(lu.det(), -5.0, max_relative = 1e-14);
        assert!(
            lu.log_det().is_nan(),
            "negative determinant has no real log"
        );
        let product = a.matmul(&lu.inverse());
        for i in 0..3 {
            for j in 0..3 {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((product.at(i, j) - want).abs() < 1e-14);
            }
        }
    }

    #[test]
    fn singular_matrix_gives_non_finite_not_a_panic() {
        let a = mat(2, 2, &[1.0, 2.0, 2.0, 4.0]);
        let mut lu = Lu::new(&a);
        assert_eq!(lu.det(), 0.0);
        assert_eq!(lu.log_det(), f64::NEG_INFINITY);
        assert!(!lu.inverse().is_finite());
    }

    #[test]
    fn log_det_of_spd_matches_log_of_det() {
        let m = mat(3, 3, &[1.0, 0.5, -0.2, 0.3, 2.0, 0.1, -0.7, 0.4, 1.5]);
        let spd = Mat::spd_from(&m);
        let lu = Lu::new(&spd);
        assert_relative_eq!(lu.log_det(), lu.det().ln(), max_relative = 1e-12);
    }
}
