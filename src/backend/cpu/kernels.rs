//! The per-step kernels of the fast CPU path, on blocks of items laid out *by lanes*.
//!
//! In: one plan step, its arguments for a block of `l` items and an output buffer. A batched
//! value of `len` elements is stored element-major ("structure of arrays"): element `e` of
//! item `t` at `[e*l + t]`, so that every kernel's inner loop runs over `l` items at once,
//! contiguous, and the compiler vectorizes it whatever the matrix sizes are (an 8×8 LU runs
//! 8 or 16 items per instruction instead of one). A shared value is stored once, row-major.
//! Out: the step's value for every lane. Invariants: every lane is computed by the same
//! operations in the same order as every other (results never depend on the lane count or on
//! the CPU's vector width: no fused multiply-add is ever formed implicitly); lanes past the
//! block's last item hold finite leftovers and are computed and never read.
//!
//! Shared×batched products are one GEMM per block (`S · [B lanes]` is an ordinary matrix
//! product of `S` with a `k × (n·l)` matrix); batched×shared ones are one GEMM per row.

use crate::backend::schedule::{elementwise, ElementOp};
use crate::expr::{Func, Node};
use crate::plan::Step;

/// An argument of a step for one block.
#[derive(Clone, Copy)]
pub enum Arg<'a> {
    /// Batched: element-major lanes.
    Lanes(&'a [f32]),
    /// Shared: one value, row-major.
    Shared(&'a [f32]),
    /// Batched, read through a transpose: the `rows×cols` transpose of the lanes in `data`
    /// (which hold a `cols×rows` value). Only products of two batched values receive it.
    Transposed {
        data: &'a [f32],
        rows: usize,
        cols: usize,
    },
}

/// One element of an argument: `l` lanes, or one value broadcast to every lane.
#[derive(Clone, Copy)]
enum Elem<'a> {
    Lanes(&'a [f32]),
    Value(f32),
}

impl<'a> Arg<'a> {
    #[inline(always)]
    fn elem(self, e: usize, l: usize) -> Elem<'a> {
        match self {
            Arg::Lanes(d) => Elem::Lanes(&d[e * l..(e + 1) * l]),
            Arg::Shared(d) => Elem::Value(d[e]),
            Arg::Transposed { data, rows, cols } => {
                let (i, j) = (e / cols, e % cols);
                let source = j * rows + i;
                Elem::Lanes(&data[source * l..(source + 1) * l])
            }
        }
    }

    /// The lanes of a batched argument: the plan guarantees a batched unary step has one.
    #[inline(always)]
    fn lanes(self) -> &'a [f32] {
        match self {
            Arg::Lanes(d) => d,
            _ => panic!("internal error: a batched step's only argument is not in lanes"),
        }
    }
}

/// Scratch a thread reuses for every block (grown on first use, never per item).
#[derive(Default)]
pub struct Scratch {
    lu: Vec<f32>,
    perm: Vec<u32>,
    piv: Vec<u32>,
    best: Vec<f32>,
    skip: Vec<bool>,
    singular: Vec<bool>,
    sign: Vec<f32>,
    x: Vec<f32>,
    acc: Vec<f64>,
    power: Vec<f32>,
    reciprocal: Vec<f32>,
}

fn grow<T: Clone + Default>(v: &mut Vec<T>, len: usize) -> &mut [T] {
    if v.len() < len {
        v.resize(len, T::default());
    }
    &mut v[..len]
}

/// One batched step for a block of `l` lanes. `shapes[k]` is the (rows, cols) of `args[k]`;
/// `fma` fuses `exp`'s and `log`'s multiply-adds ([`map_func`]).
#[inline(always)]
pub fn run_step(
    step: &Step,
    args: &[Arg],
    shapes: &[(usize, usize)],
    l: usize,
    fma: bool,
    out: &mut [f32],
    scratch: &mut Scratch,
) {
    let n = step.len();
    if let Some(form) = elementwise(step.node) {
        let number = |k: usize| form.is_number(k, shapes[k].0 * shapes[k].1);
        let (a, b) = (args[0], args.get(1).copied().unwrap_or(args[0]));
        // A macro, not a closure taking `fn`s: each operation's loop is compiled with it inlined.
        macro_rules! binary {
            ($f:expr) => {
                zip(out, n, l, a, number(0), b, number(1), $f)
            };
        }
        return match form.op {
            ElementOp::Add => binary!(|x, y| x + y),
            ElementOp::Mul => binary!(|x, y| x * y),
            ElementOp::Div => binary!(|x, y| x / y),
            ElementOp::Pow => match (a, b) {
                (Arg::Lanes(x), Arg::Shared(y)) if number(1) => pow_map(out, x, y[0]),
                _ => binary!(pow_f32),
            },
            ElementOp::Neg => map(out, a.lanes(), |x| -x),
            ElementOp::Map(f) => map_func(f, fma, out, a.lanes()),
        };
    }
    match step.node {
        Node::Transpose(_) => {
            let (r, c) = shapes[0];
            let a = args[0].lanes();
            for p in 0..r {
                for q in 0..c {
                    out[(q * r + p) * l..(q * r + p + 1) * l]
                        .copy_from_slice(&a[(p * c + q) * l..(p * c + q + 1) * l]);
                }
            }
        }
        Node::MatMul(..) => {
            let (m, k) = shapes[0];
            matmul(args[0], args[1], m, k, shapes[1].1, l, out)
        }
        Node::MatPow(_, power) => {
            let m = step.rows;
            let a = args[0].lanes();
            out.copy_from_slice(&a[..m * m * l]);
            let previous = grow(&mut scratch.power, m * m * l);
            for _ in 1..power {
                previous.copy_from_slice(out);
                matmul(Arg::Lanes(previous), Arg::Lanes(a), m, m, m, l, out);
            }
        }
        Node::Sum(_) => reduce(out, args[0].lanes(), l, &mut scratch.acc, |x| x, |s| s),
        Node::Norm1(_) => reduce(out, args[0].lanes(), l, &mut scratch.acc, f64::abs, |s| s),
        Node::Norm2(_) => reduce(
            out,
            args[0].lanes(),
            l,
            &mut scratch.acc,
            |x| x * x,
            f64::sqrt,
        ),
        Node::Trace(_) => {
            let m = shapes[0].0;
            let a = args[0].lanes();
            out[..l].fill(0.0);
            for p in 0..m {
                add_assign(&mut out[..l], &a[(p * m + p) * l..(p * m + p + 1) * l]);
            }
        }
        Node::Det(_) | Node::LogDet(_) | Node::Inv(_) => {
            let m = shapes[0].0;
            lu_factor(m, args[0].lanes(), l, scratch);
            match step.node {
                Node::Det(_) => lu_det(m, l, scratch, out),
                Node::LogDet(_) => lu_log_det(m, l, scratch, out),
                _ => lu_inverse(m, l, scratch, out),
            }
        }
        Node::Diag(_) => {
            let m = step.rows;
            let v = args[0].lanes();
            out.fill(0.0);
            for p in 0..m {
                out[(p * m + p) * l..(p * m + p + 1) * l].copy_from_slice(&v[p * l..(p + 1) * l]);
            }
        }
        Node::DiagPart(_) => {
            let m = step.rows;
            let a = args[0].lanes();
            for p in 0..m {
                out[p * l..(p + 1) * l].copy_from_slice(&a[(p * m + p) * l..(p * m + p + 1) * l]);
            }
        }
        // Inputs and constants are never computed batched steps; element-wise steps are
        // computed above.
        _ => out.fill(f32::NAN),
    }
}

/// `out[e] = f(a[e], b[e])` for `n` elements; an argument marked `scalar` has one element,
/// used for every `e`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn zip(
    out: &mut [f32],
    n: usize,
    l: usize,
    a: Arg,
    a_scalar: bool,
    b: Arg,
    b_scalar: bool,
    f: impl Fn(f32, f32) -> f32,
) {
    for e in 0..n {
        let o = &mut out[e * l..(e + 1) * l];
        let x = a.elem(if a_scalar { 0 } else { e }, l);
        let y = b.elem(if b_scalar { 0 } else { e }, l);
        match (x, y) {
            (Elem::Lanes(x), Elem::Lanes(y)) => {
                for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                    *o = f(x, y);
                }
            }
            (Elem::Lanes(x), Elem::Value(y)) => {
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = f(x, y);
                }
            }
            (Elem::Value(x), Elem::Lanes(y)) => {
                for (o, &y) in o.iter_mut().zip(y) {
                    *o = f(x, y);
                }
            }
            (Elem::Value(x), Elem::Value(y)) => o.fill(f(x, y)),
        }
    }
}

#[inline(always)]
pub fn map(out: &mut [f32], a: &[f32], f: impl Fn(f32) -> f32) {
    for (o, &x) in out.iter_mut().zip(a) {
        *o = f(x);
    }
}

#[inline(always)]
fn add_assign(out: &mut [f32], a: &[f32]) {
    for (o, &x) in out.iter_mut().zip(a) {
        *o += x;
    }
}

/// An element-wise function over lanes. `exp` and `log` are branch-free float32 versions that
/// vectorize (within 2 ulp; see [`exp_f32`]), with their multiply-adds fused when `fma` (the
/// vector builds); the rest are exact float32 operations or, for the trigonometric family,
/// float64 evaluated and rounded.
#[inline(always)]
pub fn map_func(f: Func, fma: bool, out: &mut [f32], a: &[f32]) {
    match f {
        Func::Exp if fma => map(out, a, exp_f32_fma),
        Func::Log if fma => map(out, a, ln_f32_fma),
        Func::Exp => map(out, a, exp_f32),
        Func::Log => map(out, a, ln_f32),
        Func::Abs => map(out, a, f32::abs),
        Func::Sqrt => map(out, a, f32::sqrt),
        Func::Relu => map(out, a, |x| if x < 0.0 { 0.0 } else { x }),
        Func::Sign => map(out, a, |x| {
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                x * 0.0
            }
        }),
        _ => map(out, a, |x| f.apply(x as f64) as f32),
    }
}

/// `x^y` with the meaning of `powf`, but the integer powers −4 to 4 (the ones derivatives
/// are full of) as products in float64, rounded once to float32 (within half an ulp but for a
/// rare double rounding; `x.^2` is exactly `x*x`): the C library's `powf` is no more exact,
/// and `3*z.^2` over 16 384 × 256 took 24 times as long with it (18 ms; it does not
/// vectorize). The GPU's `mg_pow` forms the same products in float32.
#[inline(always)]
pub fn pow_f32(x: f32, y: f32) -> f32 {
    match small_power(y) {
        Some(k) => int_pow(x, k),
        None => x.powf(y),
    }
}

/// `y` as an integer from −4 to 4, if it is one.
#[inline(always)]
fn small_power(y: f32) -> Option<i32> {
    (y == y.trunc() && y.abs() <= 4.0).then_some(y as i32)
}

/// `x^k` for `k` from −4 to 4 as a product in float64, rounded once.
#[inline(always)]
fn int_pow(x: f32, k: i32) -> f32 {
    let x = x as f64;
    let x2 = x * x;
    let r = match k.unsigned_abs() {
        0 => 1.0,
        1 => x,
        2 => x2,
        3 => x2 * x,
        _ => x2 * x2,
    };
    (if k < 0 { 1.0 / r } else { r }) as f32
}

/// `out[e] = pow_f32(a[e], y)` for one exponent `y`, chosen once so that the loop vectorizes
/// (each arm's `k` is a constant, so [`int_pow`] folds to its one product).
#[inline(always)]
pub fn pow_map(out: &mut [f32], a: &[f32], y: f32) {
    match small_power(y) {
        Some(0) => map(out, a, |x| int_pow(x, 0)),
        Some(1) => map(out, a, |x| int_pow(x, 1)),
        Some(2) => map(out, a, |x| int_pow(x, 2)),
        Some(3) => map(out, a, |x| int_pow(x, 3)),
        Some(4) => map(out, a, |x| int_pow(x, 4)),
        Some(-1) => map(out, a, |x| int_pow(x, -1)),
        Some(-2) => map(out, a, |x| int_pow(x, -2)),
        Some(-3) => map(out, a, |x| int_pow(x, -3)),
        Some(-4) => map(out, a, |x| int_pow(x, -4)),
        _ => map(out, a, |x| x.powf(y)),
    }
}

/// [`map_func`] with `o` its own argument (through a copy of 64 elements at a time).
#[inline(always)]
pub fn map_func_in_place(f: Func, fma: bool, o: &mut [f32]) {
    let mut copy = [0.0f32; 64];
    for chunk in o.chunks_mut(64) {
        let copy = &mut copy[..chunk.len()];
        copy.copy_from_slice(chunk);
        map_func(f, fma, chunk, copy);
    }
}

/// Per lane: `finish(Σ term(a[e]))` over all elements, accumulated in float64.
#[inline(always)]
fn reduce(
    out: &mut [f32],
    a: &[f32],
    l: usize,
    acc: &mut Vec<f64>,
    term: impl Fn(f64) -> f64,
    finish: impl Fn(f64) -> f64,
) {
    let acc = grow(acc, l);
    acc.fill(0.0);
    for chunk in a.chunks_exact(l) {
        for (s, &x) in acc.iter_mut().zip(chunk) {
            *s += term(x as f64);
        }
    }
    for (o, &s) in out[..l].iter_mut().zip(acc.iter()) {
        *o = finish(s) as f32;
    }
}

/// Below these sizes a product is plain loops over lanes; above, a GEMM call (whose packing
/// costs more than the arithmetic of a very thin product).
const GEMM_MIN_ROWS: usize = 8;
const GEMM_MIN_INNER: usize = 4;

/// `out = a*b` for an m×k by k×n product in lanes.
#[inline(always)]
fn matmul(a: Arg, b: Arg, m: usize, k: usize, n: usize, l: usize, out: &mut [f32]) {
    match (a, b) {
        (Arg::Shared(s), Arg::Lanes(b)) if m >= GEMM_MIN_ROWS && k >= GEMM_MIN_INNER => {
            // [out] (m × n·l) = S (m×k) · [b] (k × n·l).
            gemm(m, k, n * l, s, k, 1, b, n * l, 1, out, n * l);
        }
        (Arg::Lanes(a), Arg::Shared(s)) if n >= GEMM_MIN_ROWS && k >= GEMM_MIN_INNER => {
            // Row i: [out_i] (n × l) = Sᵀ (n×k) · [a_i] (k × l).
            for i in 0..m {
                let a_i = &a[i * k * l..(i + 1) * k * l];
                let out_i = &mut out[i * n * l..(i + 1) * n * l];
                gemm(n, k, l, s, 1, n, a_i, l, 1, out_i, l);
            }
        }
        // Thin products: each output element accumulated in registers, a chunk of lanes at a
        // time (block sizes are multiples of 16).
        _ if l.is_multiple_of(64) => small_matmul::<64>(a, b, m, k, n, l, out),
        _ if l.is_multiple_of(32) => small_matmul::<32>(a, b, m, k, n, l, out),
        _ if l.is_multiple_of(16) => small_matmul::<16>(a, b, m, k, n, l, out),
        _ => small_matmul::<1>(a, b, m, k, n, l, out),
    }
}

/// `out = a*b` by loops over lanes, `C` lanes at a time: every output element's sum over `k`
/// runs in `C` accumulators (registers) from 0 in the order `p = 0, 1, …`, so each lane's
/// result is the same whatever `C` is.
#[inline(always)]
fn small_matmul<const C: usize>(
    a: Arg,
    b: Arg,
    m: usize,
    k: usize,
    n: usize,
    l: usize,
    out: &mut [f32],
) {
    for i in 0..m {
        for j in 0..n {
            let o = &mut out[(i * n + j) * l..(i * n + j + 1) * l];
            for (c, o) in o.chunks_exact_mut(C).enumerate() {
                let lanes = c * C..(c + 1) * C;
                let mut acc = [0.0f32; C];
                for p in 0..k {
                    match (a.elem(i * k + p, l), b.elem(p * n + j, l)) {
                        (Elem::Lanes(x), Elem::Lanes(y)) => {
                            let (x, y) = (&x[lanes.clone()], &y[lanes.clone()]);
                            for t in 0..C {
                                acc[t] += x[t] * y[t];
                            }
                        }
                        (Elem::Value(v), Elem::Lanes(y)) | (Elem::Lanes(y), Elem::Value(v)) => {
                            let y = &y[lanes.clone()];
                            for t in 0..C {
                                acc[t] += v * y[t];
                            }
                        }
                        (Elem::Value(x), Elem::Value(y)) => {
                            for v in acc.iter_mut() {
                                *v += x * y;
                            }
                        }
                    }
                }
                o.copy_from_slice(&acc);
            }
        }
    }
}

/// `C = A*B` for row-major `A` (m×k, row stride `rsa`, column stride `csa`), `B` (k×n) and
/// `C` (m×n, contiguous rows of stride `rsc`).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    rsa: usize,
    csa: usize,
    b: &[f32],
    rsb: usize,
    csb: usize,
    c: &mut [f32],
    rsc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // The last element each operand is read or written at must be inside its slice.
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| {
        (rows - 1) * rs + cols.saturating_sub(1) * cs
    };
    assert!(
        k == 0 || last(m, k, rsa, csa) < a.len(),
        "gemm: A out of bounds"
    );
    assert!(
        k == 0 || last(k, n, rsb, csb) < b.len(),
        "gemm: B out of bounds"
    );
    assert!(last(m, n, rsc, 1) < c.len(), "gemm: C out of bounds");
    // SAFETY: the asserts above keep every access of the strided operands inside the slices.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa as isize,
            csa as isize,
            b.as_ptr(),
            rsb as isize,
            csb as isize,
            0.0,
            c.as_mut_ptr(),
            rsc as isize,
            1,
        );
    }
}

/// LU with partial pivoting of an m×m matrix in every lane, into `scratch` (`lu`, `perm`,
/// `sign`, `singular`): the same algorithm, comparisons and operation order as
/// [`crate::eval::Lu::factor`], so each lane gets what the per-item factorization gets. A
/// column whose best pivot is zero or not finite marks its lane singular and is skipped.
#[inline(always)]
fn lu_factor(m: usize, a: &[f32], l: usize, s: &mut Scratch) {
    let lu = grow(&mut s.lu, m * m * l);
    lu.copy_from_slice(&a[..m * m * l]);
    let perm = grow(&mut s.perm, m * l);
    for (i, row) in perm.chunks_exact_mut(l).enumerate() {
        row.fill(i as u32);
    }
    let sign = grow(&mut s.sign, l);
    sign.fill(1.0);
    let singular = grow(&mut s.singular, l);
    singular.fill(false);
    let piv = grow(&mut s.piv, l);
    let best = grow(&mut s.best, l);
    let skip = grow(&mut s.skip, l);
    let at = |row: usize, col: usize| (row * m + col) * l;
    for col in 0..m {
        piv.fill(col as u32);
        for (b, &x) in best.iter_mut().zip(&lu[at(col, col)..at(col, col) + l]) {
            *b = x.abs();
        }
        for row in col + 1..m {
            let column = &lu[at(row, col)..at(row, col) + l];
            for ((b, p), &x) in best.iter_mut().zip(piv.iter_mut()).zip(column) {
                let v = x.abs();
                if v > *b {
                    *b = v;
                    *p = row as u32;
                }
            }
        }
        for ((k, s), &b) in skip.iter_mut().zip(singular.iter_mut()).zip(best.iter()) {
            *k = !(b != 0.0 && b.is_finite());
            *s |= *k;
        }
        // Row swaps differ by lane: element by element (at most m per lane and column).
        for t in 0..l {
            let p = piv[t] as usize;
            if p != col && !skip[t] {
                for j in 0..m {
                    lu.swap(at(col, j) + t, at(p, j) + t);
                }
                perm.swap(col * l + t, p * l + t);
                sign[t] = -sign[t];
            }
        }
        let (top, bottom) = lu.split_at_mut(at(col + 1, 0));
        let pivot_row = &top[at(col, 0)..];
        let d = &pivot_row[col * l..(col + 1) * l];
        for row in bottom.chunks_exact_mut(m * l) {
            let (head, tail) = row.split_at_mut((col + 1) * l);
            let factor = &mut head[col * l..];
            for ((f, &d), &k) in factor.iter_mut().zip(d).zip(skip.iter()) {
                *f = if k { *f } else { *f / d };
            }
            for (j, target) in tail.chunks_exact_mut(l).enumerate() {
                let u = &pivot_row[(col + 1 + j) * l..(col + 2 + j) * l];
                for (((x, &f), &u), &k) in target.iter_mut().zip(&*factor).zip(u).zip(skip.iter()) {
                    *x = if k { *x } else { *x - f * u };
                }
            }
        }
    }
}

fn lu_det(m: usize, l: usize, s: &Scratch, out: &mut [f32]) {
    for (t, o) in out[..l].iter_mut().enumerate() {
        *o = if s.singular[t] {
            0.0
        } else {
            (0..m).fold(s.sign[t], |acc, i| acc * s.lu[(i * m + i) * l + t])
        };
    }
}

/// `log(det)` per lane, accumulated in float64 (products of up to 8 float32 pivots cannot
/// overflow a float64, so one logarithm per 8 pivots): NaN when the determinant is negative.
fn lu_log_det(m: usize, l: usize, s: &Scratch, out: &mut [f32]) {
    for (t, o) in out[..l].iter_mut().enumerate() {
        if s.singular[t] {
            *o = f32::NEG_INFINITY;
            continue;
        }
        let mut negative = s.sign[t] < 0.0;
        let mut sum = 0.0f64;
        let mut product = 1.0f64;
        for i in 0..m {
            let d = s.lu[(i * m + i) * l + t];
            negative ^= d < 0.0;
            product *= d.abs() as f64;
            if i % 8 == 7 {
                sum += product.ln();
                product = 1.0;
            }
        }
        sum += product.ln();
        *o = if negative { f32::NAN } else { sum as f32 };
    }
}

/// The inverse from the factorization, column by column (forward then back substitution on
/// the permuted identity), the method of [`crate::eval::Lu::inverse_into`] except that back
/// substitution multiplies by each pivot's reciprocal instead of dividing; NaN where singular.
#[inline(always)]
fn lu_inverse(m: usize, l: usize, s: &mut Scratch, out: &mut [f32]) {
    let x = grow(&mut s.x, m * l);
    let lu = &s.lu[..m * m * l];
    let at = |row: usize, col: usize| (row * m + col) * l;
    // One division per pivot, not one per pivot and column: back substitution multiplies
    // by the pivots' reciprocals (within an ulp of dividing; divisions are the slowest
    // vector operation, and there would be m² of them per item).
    let reciprocal = grow(&mut s.reciprocal, m * l);
    for (i, r) in reciprocal.chunks_exact_mut(l).enumerate() {
        for (r, &d) in r.iter_mut().zip(&lu[at(i, i)..at(i, i) + l]) {
            *r = 1.0 / d;
        }
    }
    for col in 0..m {
        for (xi, &p) in x.iter_mut().zip(&s.perm[..m * l]) {
            *xi = if p as usize == col { 1.0 } else { 0.0 };
        }
        for i in 0..m {
            let (done, rest) = x.split_at_mut(i * l);
            let xi = &mut rest[..l];
            for j in 0..i {
                let lij = &lu[at(i, j)..at(i, j) + l];
                for ((v, &a), &y) in xi.iter_mut().zip(lij).zip(&done[j * l..(j + 1) * l]) {
                    *v -= a * y;
                }
            }
        }
        for i in (0..m).rev() {
            let (head, solved) = x.split_at_mut((i + 1) * l);
            let xi = &mut head[i * l..];
            for j in i + 1..m {
                let uij = &lu[at(i, j)..at(i, j) + l];
                let xj = &solved[(j - i - 1) * l..(j - i) * l];
                for ((v, &u), &y) in xi.iter_mut().zip(uij).zip(xj) {
                    *v -= u * y;
                }
            }
            for (v, &r) in xi.iter_mut().zip(&reciprocal[i * l..(i + 1) * l]) {
                *v *= r;
            }
        }
        for i in 0..m {
            let o = &mut out[at(i, col)..at(i, col) + l];
            for ((o, &v), &singular) in o
                .iter_mut()
                .zip(&x[i * l..(i + 1) * l])
                .zip(&s.singular[..l])
            {
                *o = if singular { f32::NAN } else { v };
            }
        }
    }
}

/// `exp(x)` in float32 without branches, so that loops over it vectorize: `x = n·ln2 + r`
/// with `|r| ≤ ln2/2` (ln2 split in two for an exact reduction), a degree-6 polynomial for
/// `exp(r)` (Cephes' `expf`), and `2^n` built from exponent bits in two halves so that results
/// near overflow and in the subnormal range come out right. Within 2 ulp of the exact value
/// on the whole range (tested); `inf` above 88.72…, `0` far below −87, NaN for NaN. Separate
/// multiplies and adds: the portable build's; [`exp_f32_fma`] is the vector builds'.
#[inline(always)]
pub fn exp_f32(x: f32) -> f32 {
    exp_with::<false>(x)
}

/// [`exp_f32`] with its multiply-adds fused (a third fewer operations; on a CPU without FMA,
/// a slow library call).
#[inline(always)]
pub fn exp_f32_fma(x: f32) -> f32 {
    exp_with::<true>(x)
}

/// `a·b + c`, fused (one rounding) when `FMA`.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
fn exp_with<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding and subtracting 1.5·2^23 rounds to the nearest integer (|v| < 2^22 here).
    const ROUND: f32 = 12_582_912.0;
    let xc = x.clamp(-104.0, 89.0);
    let shifted = madd::<FMA>(xc, LOG2E, ROUND);
    let n = shifted - ROUND;
    // The integer n from the rounded value's low mantissa bits (a float-to-int cast would
    // not vectorize: its saturating NaN and overflow cases are handled lane by lane).
    let ni = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    // x - n·ln2 in two steps (n·LN2_HI is exact: LN2_HI has 12 significant bits).
    let r = madd::<FMA>(n, -LN2_LO, madd::<FMA>(n, -LN2_HI, xc));
    let mut p = 1.987_569_1e-4f32;
    p = madd::<FMA>(p, r, 1.398_199_9e-3);
    p = madd::<FMA>(p, r, 8.333_452e-3);
    p = madd::<FMA>(p, r, 4.166_579_6e-2);
    p = madd::<FMA>(p, r, 1.666_666_5e-1);
    p = madd::<FMA>(p, r, 5e-1);
    let y = madd::<FMA>(p, r * r, r) + 1.0;
    let n1 = ni >> 1;
    let n2 = ni - n1;
    let scale1 = f32::from_bits(((n1 + 127) as u32) << 23);
    let scale2 = f32::from_bits(((n2 + 127) as u32) << 23);
    y * scale1 * scale2
}

/// `ln(x)` in float32 without branches (Cephes' `logf`): `x = m·2^e` with `m` in
/// `[√½, √2)`, a degree-9 polynomial in `m − 1`, `e·ln2` added in two parts. Subnormal inputs
/// are scaled up first. Within 2 ulp (tested); `-inf` at 0, NaN below 0 and for NaN, `inf` at
/// `inf`. Separate multiplies and adds: the portable build's; [`ln_f32_fma`] is the vector
/// builds'.
#[inline(always)]
pub fn ln_f32(x: f32) -> f32 {
    ln_with::<false>(x)
}

/// [`ln_f32`] with its multiply-adds fused.
#[inline(always)]
pub fn ln_f32_fma(x: f32) -> f32 {
    ln_with::<true>(x)
}

#[inline(always)]
fn ln_with<const FMA: bool>(x: f32) -> f32 {
    let subnormal = x < f32::MIN_POSITIVE;
    let xs = if subnormal { x * 8_388_608.0 } else { x };
    let bits = xs.to_bits();
    let e = ((bits >> 23) & 0xff) as i32 - 126 - if subnormal { 23 } else { 0 };
    let m = f32::from_bits((bits & 0x007f_ffff) | 0x3f00_0000);
    let small = m < std::f32::consts::FRAC_1_SQRT_2;
    let e = if small { e - 1 } else { e };
    let f = if small { m + m - 1.0 } else { m - 1.0 };
    let z = f * f;
    let mut y = 7.037_683_6e-2f32;
    y = madd::<FMA>(y, f, -1.151_461e-1);
    y = madd::<FMA>(y, f, 1.167_699_9e-1);
    y = madd::<FMA>(y, f, -1.242_014_1e-1);
    y = madd::<FMA>(y, f, 1.424_932_3e-1);
    y = madd::<FMA>(y, f, -1.666_805_8e-1);
    y = madd::<FMA>(y, f, 2.000_071_4e-1);
    y = madd::<FMA>(y, f, -2.499_999_4e-1);
    y = madd::<FMA>(y, f, 3.333_333e-1);
    y = y * f * z;
    let ef = e as f32;
    y = madd::<FMA>(-2.121_944_4e-4, ef, y);
    y = madd::<FMA>(-0.5, z, y);
    let r = madd::<FMA>(0.693_359_4, ef, f + y);
    if x == 0.0 {
        f32::NEG_INFINITY
    } else if x == f32::INFINITY {
        f32::INFINITY
    } else if x >= 0.0 {
        r
    } else {
        f32::NAN
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between a float32 result and the exact value.
    fn ulps(got: f32, exact: f64) -> f64 {
        let rounded = exact as f32;
        if got == rounded || (got.is_nan() && rounded.is_nan()) {
            return 0.0;
        }
        let ulp = (f32::from_bits(rounded.abs().to_bits() + 1) - rounded.abs()) as f64;
        ((got as f64) - exact).abs() / ulp
    }

    fn sweep() -> impl Iterator<Item = f32> {
        // Every 997th float32 bit pattern: all magnitudes, both signs, subnormals included.
        (0..u32::MAX / 997).map(|i| f32::from_bits(i * 997))
    }

    #[test]
    fn exp_is_within_two_ulp() {
        for (name, exp) in [
            ("exp_f32", exp_f32 as fn(f32) -> f32),
            ("exp_f32_fma", exp_f32_fma),
        ] {
            let mut worst = 0.0f64;
            for x in sweep().filter(|x| x.is_finite() && x.abs() < 120.0) {
                let exact = (x as f64).exp();
                if exact < f32::MIN_POSITIVE as f64 {
                    // Subnormal results: absolute error within one subnormal step.
                    assert!(
                        (exp(x) as f64 - exact).abs() <= 2.0 * 1.4e-45,
                        "{name}({x})"
                    );
                    continue;
                }
                worst = worst.max(ulps(exp(x), exact));
            }
            assert!(worst <= 2.0, "worst {name} error {worst} ulp");
            assert_eq!(exp(f32::INFINITY), f32::INFINITY);
            assert_eq!(exp(f32::NEG_INFINITY), 0.0);
            assert_eq!(exp(100.0), f32::INFINITY);
            assert!(exp(f32::NAN).is_nan());
            assert_eq!(exp(0.0), 1.0, "{name}");
        }
    }

    #[test]
    fn small_powers_are_products_and_the_rest_powf() {
        let bases = [
            0.0f32,
            -0.0,
            1.0,
            -1.0,
            0.3,
            -2.7,
            1.0e-20,
            3.0e15,
            f32::INFINITY,
            f32::NAN,
        ];
        let exponents = [
            -5.0f32, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 0.5, -2.5,
        ];
        for &y in &exponents {
            let mut mapped = vec![0.0; bases.len()];
            pow_map(&mut mapped, &bases, y);
            for (&x, &m) in bases.iter().zip(&mapped) {
                let got = pow_f32(x, y);
                assert_eq!(got.to_bits(), m.to_bits(), "pow_map and pow_f32 at {x}^{y}");
                let exact = (x as f64).powf(y as f64);
                let close = if exact.is_nan() {
                    got.is_nan()
                } else if exact.is_infinite() || exact.abs() > f32::MAX as f64 {
                    got as f64 == exact
                        || got.is_infinite() && got.signum() as f64 == exact.signum()
                } else if exact.abs() < f32::MIN_POSITIVE as f64 {
                    (got as f64 - exact).abs() <= f32::MIN_POSITIVE as f64
                } else {
                    ulps(got, exact) <= if small_power(y).is_some() { 0.51 } else { 1.0 }
                };
                assert!(close, "{x}^{y}: {got} vs {exact}");
            }
        }
        // Squares round once: x*x, bit for bit.
        for x in sweep().filter(|x| x.is_finite()) {
            assert_eq!(pow_f32(x, 2.0).to_bits(), (x * x).to_bits(), "{x}^2");
        }
    }

    #[test]
    fn ln_is_within_two_ulp() {
        for (name, ln) in [
            ("ln_f32", ln_f32 as fn(f32) -> f32),
            ("ln_f32_fma", ln_f32_fma),
        ] {
            let mut worst = 0.0f64;
            for x in sweep().filter(|&x| x > 0.0 && x.is_finite()) {
                worst = worst.max(ulps(ln(x), (x as f64).ln()));
            }
            assert!(worst <= 2.0, "worst {name} error {worst} ulp");
            assert_eq!(ln(0.0), f32::NEG_INFINITY);
            assert_eq!(ln(f32::INFINITY), f32::INFINITY);
            assert!(ln(-1.0).is_nan() && ln(f32::NAN).is_nan());
            assert_eq!(ln(1.0), 0.0, "{name}");
        }
    }
}
