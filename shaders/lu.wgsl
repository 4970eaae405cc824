// LU factorization with partial pivoting of one N×N matrix held in the `scratch` buffer, and
// what is computed from it: the determinant, log|det| with the sign, and the inverse.
//
// Instantiated by src/backend/wgsl/lu.rs for each size N above its unrolled form: `NNU`
// becomes the u32 literal N*N, `NU` the u32 literal N and `NAME` the number N in function
// names (integers the generator computes; nothing a user typed reaches this text). The matrix
// is entries `ab..ab+N*N` of the calling item's lanes in `scratch` (entry e of item `item` at
// `scratch[chunk * (ab + e) + item]`, the kernels' element-major layout), so each batch item
// factors its own matrix; it is not a private array because llvmpipe's compile time grows
// steeply with dynamically indexed private arrays (34 s for one 16×16 determinant's
// derivative). Only the permutation and one column of the inverse are in function memory.
//
// mg_lu_NAME factors the matrix at `ab` in place (L below the diagonal with unit diagonal, U on and above) and
// records the row permutation in `perm`; it returns the permutation's sign, or 0 when a pivot
// is zero or not finite (the matrix is singular or holds NaN/Inf).

fn mg_lu_NAME(ab: u32, chunk: u32, item: u32, perm: ptr<function, array<u32, NU>>) -> f32 {
    var sign: f32 = 1.0;
    for (var i: u32 = 0u; i < NU; i = i + 1u) {
        (*perm)[i] = i;
    }
    for (var col: u32 = 0u; col < NU; col = col + 1u) {
        var pivot: u32 = col;
        var best: f32 = abs(scratch[chunk * (ab + col * NU + col) + item]);
        for (var row: u32 = col + 1u; row < NU; row = row + 1u) {
            let v = abs(scratch[chunk * (ab + row * NU + col) + item]);
            if (v > best) {
                best = v;
                pivot = row;
            }
        }
        // `best != best` is true only for NaN; `best > 3.4e38` only for +Inf.
        if (best == 0.0 || best != best || best > 3.4e38) {
            return 0.0;
        }
        if (pivot != col) {
            for (var j: u32 = 0u; j < NU; j = j + 1u) {
                let t = scratch[chunk * (ab + col * NU + j) + item];
                scratch[chunk * (ab + col * NU + j) + item] = scratch[chunk * (ab + pivot * NU + j) + item];
                scratch[chunk * (ab + pivot * NU + j) + item] = t;
            }
            let p = (*perm)[col];
            (*perm)[col] = (*perm)[pivot];
            (*perm)[pivot] = p;
            sign = -sign;
        }
        let d = scratch[chunk * (ab + col * NU + col) + item];
        for (var row: u32 = col + 1u; row < NU; row = row + 1u) {
            let factor = scratch[chunk * (ab + row * NU + col) + item] / d;
            scratch[chunk * (ab + row * NU + col) + item] = factor;
            for (var j: u32 = col + 1u; j < NU; j = j + 1u) {
                scratch[chunk * (ab + row * NU + j) + item] = scratch[chunk * (ab + row * NU + j) + item] - factor * scratch[chunk * (ab + col * NU + j) + item];
            }
        }
    }
    return sign;
}

// det from a factorization whose sign is `sign` (0 when singular).
fn mg_det_NAME(ab: u32, chunk: u32, item: u32, sign: f32) -> f32 {
    var d: f32 = sign;
    for (var i: u32 = 0u; i < NU; i = i + 1u) {
        d = d * scratch[chunk * (ab + i * NU + i) + item];
    }
    return d;
}

// log(det): NaN when the determinant is negative, -Inf when singular.
fn mg_logdet_NAME(ab: u32, chunk: u32, item: u32, sign: f32) -> f32 {
    if (sign == 0.0) {
        // -Inf, made at run time (a constant infinity is not valid WGSL).
        return -1.0 / (sign * sign);
    }
    var s: f32 = sign;
    var sum: f32 = 0.0;
    for (var i: u32 = 0u; i < NU; i = i + 1u) {
        let u = scratch[chunk * (ab + i * NU + i) + item];
        if (u < 0.0) {
            s = -s;
        }
        sum = sum + log(abs(u));
    }
    if (s < 0.0) {
        return sqrt(-1.0 - sum * 0.0);
    }
    return sum;
}

// The inverse into entries `ob..ob+N*N` (row-major), NaN everywhere when singular.
fn mg_inv_NAME(ab: u32, chunk: u32, item: u32, perm: ptr<function, array<u32, NU>>, sign: f32, ob: u32) {
    for (var col: u32 = 0u; col < NU; col = col + 1u) {
        var x: array<f32, NU>;
        for (var i: u32 = 0u; i < NU; i = i + 1u) {
            x[i] = select(0.0, 1.0, (*perm)[i] == col);
        }
        for (var i: u32 = 0u; i < NU; i = i + 1u) {
            var v: f32 = x[i];
            for (var p: u32 = 0u; p < i; p = p + 1u) {
                v = v - scratch[chunk * (ab + i * NU + p) + item] * x[p];
            }
            x[i] = v;
        }
        for (var k: u32 = 0u; k < NU; k = k + 1u) {
            let i = NU - 1u - k;
            var v: f32 = x[i];
            for (var p: u32 = i + 1u; p < NU; p = p + 1u) {
                v = v - scratch[chunk * (ab + i * NU + p) + item] * x[p];
            }
            x[i] = v / scratch[chunk * (ab + i * NU + i) + item];
        }
        for (var i: u32 = 0u; i < NU; i = i + 1u) {
            scratch[chunk * (ob + i * NU + col) + item] = select(x[i], sqrt(-1.0 - x[i] * 0.0), sign == 0.0);
        }
    }
}
