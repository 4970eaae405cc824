//! The AVX2 + FMA micro-kernels of the item-major layout, behind the tile driver
//! `rows::gemm_rows_on` and `rows::matvec`.
//!
//! In: raw row-major operands the driver has bounds-checked, on a CPU the driver has checked
//! has AVX2 and FMA. Out: the products, written in place (a tile of 6 rows × 16 columns in
//! registers; eight matrix rows at a time for `M·v`). Invariants: every output element is
//! `fma(x[r][k-1], f[k-1][j], … fma(x[r][0], f[0][j], 0))` in the order of its inner index,
//! as in the AVX-512 kernels ([`super::avx512`]), so the two give the same bits; the caller
//! upholds each function's `# Safety`.

use super::rows::{Epilogue, Factor, PANEL};

/// Prefetches rows `from..to` (clipped to `rows`) of the `k`-wide row-major `x`: the tile
/// kernels ask for the rows two tiles ahead, since the first tile of a block comes from
/// memory, not cache.
#[inline(always)]
pub(super) unsafe fn prefetch_rows(x: *const f32, from: usize, to: usize, rows: usize, k: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
    for e in ((from * k).min(rows * k)..(to * k).min(rows * k)).step_by(16) {
        _mm_prefetch::<_MM_HINT_T0>(x.add(e).cast());
    }
}

#[target_feature(enable = "avx2,fma")]
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
    const R: usize = 6;
    let (panels, rest) = (n / PANEL, n % PANEL);
    let (step, stride, tail, tail_stride) = factor.layout(k, n);
    let (x, f, o) = (x.as_ptr(), f.as_ptr(), out.as_mut_ptr());
    let last = f.add(tail);
    let mut r0 = 0;
    while r0 < rows {
        let r = R.min(rows - r0);
        prefetch_rows(x, r0 + 2 * R, r0 + 3 * R, rows, k);
        let (xr, or) = (x.add(r0 * k), o.add(r0 * n));
        for c in 0..panels {
            tile_of_rows::<2>(r, k, xr, f.add(c * step), stride, or.add(c * PANEL), n);
        }
        let mut j = 0;
        if j + 8 <= rest {
            tile_of_rows::<1>(r, k, xr, last, tail_stride, or.add(panels * PANEL), n);
            j += 8;
        }
        for i in 0..r {
            for j in j..rest {
                let mut acc = 0.0f32;
                for p in 0..k {
                    acc = (*xr.add(i * k + p)).mul_add(*last.add(p * tail_stride + j), acc);
                }
                *or.add(i * n + panels * PANEL + j) = acc;
            }
        }
        then.apply_to_rows(at + r0 * n, r, n, or);
        r0 += r;
    }
}

/// [`tile`] for `r` (1 to 6) rows, the row count made a constant.
#[inline(always)]
unsafe fn tile_of_rows<const V: usize>(
    r: usize,
    k: usize,
    x: *const f32,
    f: *const f32,
    fs: usize,
    out: *mut f32,
    n: usize,
) {
    match r {
        6 => tile::<6, V>(k, x, f, fs, out, n),
        5 => tile::<5, V>(k, x, f, fs, out, n),
        4 => tile::<4, V>(k, x, f, fs, out, n),
        3 => tile::<3, V>(k, x, f, fs, out, n),
        2 => tile::<2, V>(k, x, f, fs, out, n),
        _ => tile::<1, V>(k, x, f, fs, out, n),
    }
}

/// `R` rows × `8V` columns of `out = x · f`: `x` rows `k` apart, `f` rows `fs` apart, `out`
/// rows `n` apart.
#[inline(always)]
unsafe fn tile<const R: usize, const V: usize>(
    k: usize,
    x: *const f32,
    f: *const f32,
    fs: usize,
    out: *mut f32,
    n: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    for p in 0..k {
        let b: [__m256; V] = std::array::from_fn(|v| _mm256_loadu_ps(f.add(p * fs + 8 * v)));
        for (i, acc) in acc.iter_mut().enumerate() {
            let a = _mm256_broadcast_ss(&*x.add(i * k + p));
            for v in 0..V {
                acc[v] = _mm256_fmadd_ps(a, b[v], acc[v]);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (v, &acc) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(i * n + 8 * v), acc);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn matvec(
    count: usize,
    m: usize,
    k: usize,
    a: &[f32],
    v: &[f32],
    out: &mut [f32],
) {
    // Rows of one or two vectors (W3's 8×8) with the row loop unrolled: the loop's own
    // bookkeeping cost as much as its arithmetic.
    match k {
        8 => matvec_fma_rows::<8>(count, m, k, a, v, out),
        16 => matvec_fma_rows::<16>(count, m, k, a, v, out),
        _ => matvec_fma_rows::<0>(count, m, k, a, v, out),
    }
}

/// [`matvec`] for rows of `K` elements, or of `k` when `K` is 0.
#[inline(always)]
unsafe fn matvec_fma_rows<const K: usize>(
    count: usize,
    m: usize,
    k: usize,
    a: &[f32],
    v: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k = if K > 0 { K } else { k };
    for t in 0..count {
        // The matrix eight items ahead: the matrices stream from memory, one pass each.
        if t + 8 < count {
            let ahead = a.as_ptr().add((t + 8) * m * k);
            for e in (0..m * k).step_by(16) {
                _mm_prefetch::<_MM_HINT_T0>(ahead.add(e).cast());
            }
        }
        let (a, v, o) = (
            a.as_ptr().add(t * m * k),
            v.as_ptr().add(t * k),
            out.as_mut_ptr().add(t * m),
        );
        let partial = |r: usize| {
            let mut acc = _mm256_setzero_ps();
            for c in (0..k).step_by(8) {
                acc = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.add(r * k + c)),
                    _mm256_loadu_ps(v.add(c)),
                    acc,
                );
            }
            acc
        };
        let mut r0 = 0;
        while r0 + 8 <= m {
            let sums: [__m256; 8] = std::array::from_fn(|r| partial(r0 + r));
            _mm256_storeu_ps(o.add(r0), sum_lanes8(sums));
            r0 += 8;
        }
        for r in r0..m {
            let one = sum_lanes8([partial(r); 8]);
            *o.add(r) = _mm256_cvtss_f32(one);
        }
    }
}

/// Lane `r` of the result is the sum of `a[r]`'s eight lanes, as
/// `((a0+a1)+(a2+a3)) + ((a4+a5)+(a6+a7))`.
#[target_feature(enable = "avx2")]
unsafe fn sum_lanes8(a: [std::arch::x86_64::__m256; 8]) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // hadd(x, y) = [x0+x1, x2+x3, y0+y1, y2+y3 | x4+x5, x6+x7, y4+y5, y6+y7].
    let s01 = _mm256_hadd_ps(a[0], a[1]);
    let s23 = _mm256_hadd_ps(a[2], a[3]);
    let s45 = _mm256_hadd_ps(a[4], a[5]);
    let s67 = _mm256_hadd_ps(a[6], a[7]);
    // [a0 0..3, a1 0..3, a2 0..3, a3 0..3 | a0 4..7, a1 4..7, a2 4..7, a3 4..7], and a4..a7.
    let s0123 = _mm256_hadd_ps(s01, s23);
    let s4567 = _mm256_hadd_ps(s45, s67);
    let low = _mm256_permute2f128_ps::<0x20>(s0123, s4567);
    let high = _mm256_permute2f128_ps::<0x31>(s0123, s4567);
    _mm256_add_ps(low, high)
}
