//! What every executor shares: a plan's shared steps computed once, and the transposes
//! between the two layouts of a batch.
//!
//! In: a [`Plan`] and its inputs (float32, `AsRef<[f32]>` each), or a batch of items. Out: the
//! value of every shared step ([`hoisted_values`]: inputs borrowed, hoisted steps computed in
//! float64 and rounded), and batches moved between item-major (`[t*len + e]`, the layout of
//! inputs and outputs) and lanes (`[e*count + t]`, element-major: the GPU's buffers and the
//! CPU path's lanes blocks). Invariants: the CPU path and the GPU upload the same hoisted
//! values, so a shared step has one value on every float32 device; the transposes move every
//! value exactly once and touch nothing outside the items given.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::eval::{apply, Mat};
use crate::plan::{Plan, Step};

/// The value of every shared step (empty for batched steps): shared inputs as given, the
/// hoisted steps computed once in float64 and rounded. The GPU back end uploads these.
pub fn hoisted_values<'a, I: AsRef<[f32]>>(plan: &Plan, inputs: &'a [I]) -> Vec<Cow<'a, [f32]>> {
    let steps = plan.steps();
    let mut shared: Vec<Cow<[f32]>> = Vec::with_capacity(steps.len());
    for step in steps {
        let value = match (step.batched, step.input) {
            (true, _) => Cow::Borrowed(&[][..]),
            (false, Some(k)) => Cow::Borrowed(inputs[k].as_ref()),
            (false, None) => {
                let args: Vec<(&[f32], usize, usize)> = step
                    .args
                    .iter()
                    .map(|&a| (&shared[a][..], steps[a].rows, steps[a].cols))
                    .collect();
                Cow::Owned(shared_step(step, &args))
            }
        };
        shared.push(value);
    }
    shared
}

/// `count` items of `len` floats, item-major, into lanes (`dst[e*count + t]`), in parallel:
/// the GPU back end's upload layout. Each task transposes 16 elements of every item (one
/// 64-byte line per item).
pub fn items_to_lanes(src: &[f32], count: usize, len: usize, dst: &mut [f32]) {
    const GROUP: usize = 16;
    assert!(src.len() >= count * len && dst.len() >= count * len);
    dst[..count * len]
        .par_chunks_mut((GROUP * count).max(1))
        .enumerate()
        .for_each(|(g, rows)| {
            let e0 = g * GROUP;
            let width = GROUP.min(len - e0);
            transpose::<false>(&src[e0..], count, width, len, rows, count);
        });
}

/// The inverse of [`items_to_lanes`]: lanes of `count` items back to item-major, in parallel
/// over blocks of items.
pub fn lanes_to_items(src: &[f32], len: usize, count: usize, dst: &mut [f32]) {
    const ITEMS: usize = 1024;
    assert!(src.len() >= count * len && dst.len() >= count * len);
    dst[..count * len]
        .par_chunks_mut((ITEMS * len).max(1))
        .enumerate()
        .for_each(|(b, items)| {
            let t0 = b * ITEMS;
            transpose::<false>(&src[t0..], len, items.len() / len.max(1), count, items, len);
        });
}

/// `dst[j*ds + i] = src[i*ss + j]` for `i < rows`, `j < cols`: by 8×8 tiles (eight
/// 32-byte reads, eight 32-byte writes, shuffled in registers), the edges element by element.
/// With `COLUMNS_OUTER` the tiles go down the source's rows first, so the writes advance
/// through eight destination rows (the order for item-major → lanes: many destination rows a
/// block apart would otherwise fall into the same L1 sets); otherwise along the source rows.
#[inline(always)]
pub(crate) fn transpose<const COLUMNS_OUTER: bool>(
    src: &[f32],
    rows: usize,
    cols: usize,
    ss: usize,
    dst: &mut [f32],
    ds: usize,
) {
    const T: usize = 8;
    let (full_rows, full_cols) = (rows / T * T, cols / T * T);
    if COLUMNS_OUTER {
        for j0 in (0..full_cols).step_by(T) {
            for i0 in (0..full_rows).step_by(T) {
                tile(src, ss, dst, ds, i0, j0);
            }
        }
    } else {
        for i0 in (0..full_rows).step_by(T) {
            for j0 in (0..full_cols).step_by(T) {
                tile(src, ss, dst, ds, i0, j0);
            }
        }
    }
    let edge = |i: usize, j: usize, dst: &mut [f32]| dst[j * ds + i] = src[i * ss + j];
    for i in 0..full_rows {
        for j in full_cols..cols {
            edge(i, j, dst);
        }
    }
    for i in full_rows..rows {
        for j in 0..cols {
            edge(i, j, dst);
        }
    }
}

/// The 8×8 tile at (`i0`, `j0`) of [`transpose`].
#[inline(always)]
fn tile(src: &[f32], ss: usize, dst: &mut [f32], ds: usize, i0: usize, j0: usize) {
    const T: usize = 8;
    // The last element of the tile in each buffer, checked once for the tile.
    assert!((i0 + T - 1) * ss + j0 + T <= src.len() && (j0 + T - 1) * ds + i0 + T <= dst.len());
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU has AVX; the assert above keeps all 64 reads and 64 writes
            // inside the slices.
            unsafe {
                tile8_avx(
                    src.as_ptr().add(i0 * ss + j0),
                    ss,
                    dst.as_mut_ptr().add(j0 * ds + i0),
                    ds,
                )
            };
            return;
        }
    }
    for j in 0..T {
        for i in 0..T {
            dst[(j0 + j) * ds + i0 + i] = src[(i0 + i) * ss + j0 + j];
        }
    }
}

/// One 8×8 transpose in AVX registers: `dst[j*ds + i] = src[i*ss + j]`.
///
/// # Safety
/// The CPU must have AVX, and `src[i*ss + j]`, `dst[j*ds + i]` must be valid for
/// `i, j < 8`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
#[inline]
unsafe fn tile8_avx(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    let out = [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ];
    for (j, v) in out.into_iter().enumerate() {
        _mm256_storeu_ps(dst.add(j * ds), v);
    }
}

/// A shared step: once per batch, in float64, rounded to float32.
fn shared_step(step: &Step, args: &[(&[f32], usize, usize)]) -> Vec<f32> {
    let args: Vec<Mat> = args
        .iter()
        .map(|&(data, rows, cols)| Mat {
            rows,
            cols,
            data: data.iter().map(|&x| x as f64).collect(),
        })
        .collect();
    let refs: Vec<&Mat> = args.iter().collect();
    apply(&step.node, &refs, step.rows, step.cols)
        .data
        .into_iter()
        .map(|x| x as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_matches_the_definition_for_every_edge_case() {
        for (rows, cols) in [(1, 1), (3, 5), (8, 8), (9, 17), (16, 24), (23, 8), (8, 31)] {
            let (ss, ds) = (cols + 3, rows + 5);
            let src: Vec<f32> = (0..rows * ss).map(|v| v as f32).collect();
            let mut dst = vec![-1.0f32; cols * ds];
            transpose::<false>(&src, rows, cols, ss, &mut dst, ds);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        dst[j * ds + i],
                        src[i * ss + j],
                        "{rows}×{cols} at ({i}, {j})"
                    );
                }
            }
            // Padding between rows of `dst` is untouched.
            for j in 0..cols {
                assert!(dst[j * ds + rows..(j + 1) * ds].iter().all(|&v| v == -1.0));
            }
        }
    }

    #[test]
    fn items_to_lanes_and_back_is_the_identity() {
        for (count, len) in [(1, 1), (5, 3), (1000, 17), (2100, 64), (33, 256)] {
            let items: Vec<f32> = (0..count * len).map(|v| v as f32).collect();
            let mut lanes = vec![0.0; count * len];
            items_to_lanes(&items, count, len, &mut lanes);
            for t in 0..count {
                for e in 0..len {
                    assert_eq!(lanes[e * count + t], items[t * len + e]);
                }
            }
            let mut back = vec![0.0; count * len];
            lanes_to_items(&lanes, len, count, &mut back);
            assert_eq!(back, items, "{count} items of {len}");
        }
    }
}
