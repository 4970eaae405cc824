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

/// The LU factorization `P*A = L*U` with partial pivoting, packed in one matrix.
pub struct Lu {
    n: usize,
    lu: Vec<f64>,
    perm: Vec<usize>,
    sign: f64,
    singular: bool,
}

impl Lu {
    pub fn new(a: &Mat) -> Lu {
        let n = a.rows;
        let mut lu = a.data.clone();
        let mut perm: Vec<usize> = (0..n).collect();
        let mut sign = 1.0;
        let mut singular = false;
        for k in 0..n {
            let mut pivot = k;
            let mut best = lu[k * n + k].abs();
            for i in k + 1..n {
                let v = lu[i * n + k].abs();
                if v > best {
                    best = v;
                    pivot = i;
                }
            }
            if best == 0.0 || !best.is_finite() {
                singular = true;
                continue;
            }
            if pivot != k {
                for j in 0..n {
                    lu.swap(k * n + j, pivot * n + j);
                }
                perm.swap(k, pivot);
                sign = -sign;
            }
            let d = lu[k * n + k];
            for i in k + 1..n {
                let factor = lu[i * n + k] / d;
                lu[i * n + k] = factor;
                for j in k + 1..n {
                    lu[i * n + j] -= factor * lu[k * n + j];
                }
            }
        }
        Lu {
            n,
            lu,
            perm,
            sign,
            singular,
        }
    }

    pub fn det(&self) -> f64 {
        if self.singular {
            return 0.0;
        }
        (0..self.n)
            .map(|i| self.lu[i * self.n + i])
            .product::<f64>()
            * self.sign
    }

    /// `log(det)`: NaN when the determinant is not positive.
    pub fn log_det(&self) -> f64 {
        if self.singular {
            return f64::NEG_INFINITY;
        }
        let mut sum = 0.0;
        let mut sign = self.sign;
        for i in 0..self.n {
            let d = self.lu[i * self.n + i];
            if d < 0.0 {
                sign = -sign;
            }
            sum += d.abs().ln();
        }
        if sign > 0.0 {
            sum
        } else {
            f64::NAN
        }
    }

    /// The inverse; all entries are infinite or NaN when the matrix is singular.
    pub fn inverse(&self) -> Mat {
        let n = self.n;
        if self.singular {
            return Mat::filled(n, n, f64::NAN);
        }
        let mut inv = Mat::zeros(n, n);
        for col in 0..n {
            let mut x: Vec<f64> = (0..n)
                .map(|i| if self.perm[i] == col { 1.0 } else { 0.0 })
                .collect();
            for i in 0..n {
                for k in 0..i {
                    x[i] -= self.lu[i * n + k] * x[k];
                }
            }
            for i in (0..n).rev() {
                for k in i + 1..n {
                    x[i] -= self.lu[i * n + k] * x[k];
                }
                x[i] /= self.lu[i * n + i];
            }
            for (i, value) in x.into_iter().enumerate() {
                inv.data[i * n + col] = value;
            }
        }
        inv
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
        let lu = Lu::new(&a);
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
        let lu = Lu::new(&a);
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
