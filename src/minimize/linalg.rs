//! Small dense linear algebra for one item: Cholesky factorization and its solves.
//!
//! In: a symmetric n×n matrix, row-major, in a caller's buffer. Out: its lower Cholesky
//! factor in place, or `false` when the matrix is not (numerically) positive definite.
//! Invariants: nothing allocates; a non-finite entry makes the factorization fail rather
//! than produce a non-finite factor.

use super::Float;

/// Factors `a = L*L'` in place (the lower triangle holds `L`, the upper is left as it was).
/// Returns `false` when a pivot is not positive and finite.
pub fn cholesky<T: Float>(a: &mut [T], n: usize) -> bool {
    for j in 0..n {
        let mut pivot = a[j * n + j];
        for k in 0..j {
            pivot = pivot - a[j * n + k] * a[j * n + k];
        }
        if pivot <= T::ZERO || !pivot.is_finite() {
            return false;
        }
        let root = pivot.sqrt();
        a[j * n + j] = root;
        for i in j + 1..n {
            let mut v = a[i * n + j];
            for k in 0..j {
                v = v - a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = v / root;
        }
    }
    true
}

/// Solves `L*L'*z = r` in place (`r` becomes `z`) with the factor [`cholesky`] left in `l`.
pub fn cholesky_solve<T: Float>(l: &[T], n: usize, r: &mut [T]) {
    for i in 0..n {
        let mut v = r[i];
        for k in 0..i {
            v = v - l[i * n + k] * r[k];
        }
        r[i] = v / l[i * n + i];
    }
    for i in (0..n).rev() {
        let mut v = r[i];
        for k in i + 1..n {
            v = v - l[k * n + i] * r[k];
        }
        r[i] = v / l[i * n + i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_solves_a_positive_definite_system() {
        // A = M*M' + I for M = [[1,2,0],[0,1,3],[2,0,1]]; A*z = r checked by multiplying back.
        let m = [[1.0, 2.0, 0.0], [0.0, 1.0, 3.0], [2.0, 0.0, 1.0]];
        let mut a = vec![0.0f64; 9];
        for i in 0..3 {
            for j in 0..3 {
                a[i * 3 + j] = (0..3).map(|k| m[i][k] * m[j][k]).sum::<f64>();
            }
            a[i * 3 + i] += 1.0;
        }
        let original = a.clone();
        assert!(cholesky(&mut a, 3));
        let r = [1.0, -2.0, 0.5];
        let mut z = r;
        cholesky_solve(&a, 3, &mut z);
        for i in 0..3 {
            let back: f64 = (0..3).map(|j| original[i * 3 + j] * z[j]).sum();
            assert!((back - r[i]).abs() < 1e-12, "row {i}: {back} vs {}", r[i]);
        }
    }

    #[test]
    fn cholesky_refuses_indefinite_and_non_finite_matrices() {
        let mut indefinite = vec![1.0f64, 2.0, 2.0, 1.0];
        assert!(!cholesky(&mut indefinite, 2));
        let mut nan = vec![f32::NAN, 0.0, 0.0, 1.0];
        assert!(!cholesky(&mut nan, 2));
    }
}
