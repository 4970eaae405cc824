//! The AVX-512 micro-kernels of the item-major layout, behind the tile driver
//! `rows::gemm_rows_on`.
//!
//! In: raw row-major operands the driver has bounds-checked, on a CPU the driver has checked
//! has AVX-512F. Out: the products, written in place (a tile of 8 rows × 32 columns in
//! registers, the last columns under a mask). Invariants: every output element is the same
//! chain of FMAs over the inner index as in the AVX2 kernels ([`super::avx2`]), so the two
//! give the same bits; the caller upholds each function's `# Safety`.

use super::avx2::prefetch_rows;
use super::rows::{Epilogue, Factor, PANEL};

#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn gemm_rows(
    rows: usize,
    k: usize,
    n: usize,
    x: &[f32],
    f: &[f32],
    factor: Factor,
    (then, at): (&Epilogue, usize),
    out: &mut [f32],
) {
    const R: usize = 8;
    let (panels, rest) = (n / PANEL, n % PANEL);
    let (step, stride, tail, tail_stride) = factor.layout(k, n);
    let (x, f, o) = (x.as_ptr(), f.as_ptr(), out.as_mut_ptr());
    let mut r0 = 0;
    while r0 < rows {
        let r = R.min(rows - r0);
        prefetch_rows(x, r0 + 2 * R, r0 + 3 * R, rows, k);
        let (xr, or) = (x.add(r0 * k), o.add(r0 * n));
        let mut c = 0;
        while c + 2 <= panels {
            let panel = [f.add(c * step), f.add((c + 1) * step)];
            tile512_of_rows::<2>(r, k, xr, panel, stride, or.add(c * PANEL), n, u16::MAX);
            c += 2;
        }
        if c < panels {
            let panel = [f.add(c * step)];
            tile512_of_rows::<1>(r, k, xr, panel, stride, or.add(c * PANEL), n, u16::MAX);
        }
        if rest > 0 {
            let (last, mask) = ([f.add(tail)], (1u16 << rest) - 1);
            let o = or.add(panels * PANEL);
            tile512_of_rows::<1>(r, k, xr, last, tail_stride, o, n, mask);
        }
        then.apply_to_rows(at + r0 * n, r, n, or);
        r0 += r;
    }
}

/// [`tile512`] for `r` (1 to 8) rows, the row count made a constant.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile512_of_rows<const V: usize>(
    r: usize,
    k: usize,
    x: *const f32,
    f: [*const f32; V],
    fs: usize,
    out: *mut f32,
    n: usize,
    mask: u16,
) {
    match r {
        8 => tile512::<8, V>(k, x, f, fs, out, n, mask),
        7 => tile512::<7, V>(k, x, f, fs, out, n, mask),
        6 => tile512::<6, V>(k, x, f, fs, out, n, mask),
        5 => tile512::<5, V>(k, x, f, fs, out, n, mask),
        4 => tile512::<4, V>(k, x, f, fs, out, n, mask),
        3 => tile512::<3, V>(k, x, f, fs, out, n, mask),
        2 => tile512::<2, V>(k, x, f, fs, out, n, mask),
        _ => tile512::<1, V>(k, x, f, fs, out, n, mask),
    }
}

/// `R` rows × `16V` columns of `out = x · f`: `x` rows `k` apart, the `V` panels of `f` at
/// `f[v]` with rows `fs` apart, `out` rows `n` apart. Only the columns in `mask` are read
/// and written (the last `n mod 16` columns; all 16 elsewhere).
#[inline(always)]
unsafe fn tile512<const R: usize, const V: usize>(
    k: usize,
    x: *const f32,
    f: [*const f32; V],
    fs: usize,
    out: *mut f32,
    n: usize,
    mask: u16,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); V]; R];
    for p in 0..k {
        let b: [__m512; V] = std::array::from_fn(|v| _mm512_maskz_loadu_ps(mask, f[v].add(p * fs)));
        for (i, acc) in acc.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*x.add(i * k + p));
            for v in 0..V {
                acc[v] = _mm512_fmadd_ps(a, b[v], acc[v]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            _mm512_mask_storeu_ps(out.add(i * n + 16 * v), mask, acc);
        }
    }
}
