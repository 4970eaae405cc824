//! The LU building block of the per-item kernels: `mg_lu_N`, `mg_det_N`, `mg_logdet_N`,
//! `mg_inv_N` for an N×N matrix of the calling invocation's item.
//!
//! In: the size N (an integer the plan computed; nothing a user typed). Out: WGSL text of the
//! four functions. Up to [`UNROLLED_MAX`] the text is written here fully unrolled, on arrays in
//! function memory (pointer arguments): every array index is a constant, the partial pivot is
//! chosen and its row swapped with `select`s instead of indexing rows by a data-dependent
//! pivot, and the inverse's triangular solves are chains of `let` values. Drivers keep arrays
//! indexed only by constants in registers, while one dynamic index puts the whole array in
//! (slow, per-invocation) local memory. Larger matrices use the looped template
//! `shaders/lu.wgsl` on the item's lanes of the `scratch` buffer (base offsets as arguments):
//! their unrolled text would grow as N³, and a dynamically indexed private array of N² floats
//! makes llvmpipe's compile time explode.
//!
//! Invariants: both forms factor with partial pivoting (the first row holding the largest
//! |value| of the column becomes the pivot row, as on the CPU), return the permutation's sign
//! or 0 for a zero or non-finite pivot, and give NaN inverses and -Inf/NaN log-determinants
//! for singular matrices exactly as the template does.

use std::fmt::Write as _;

/// The hand-written looped LU building block, instantiated per matrix size.
const LU_TEMPLATE: &str = include_str!("../../../shaders/lu.wgsl");

/// Largest N written unrolled: the text grows as N³ (about 1 800 lines at N = 8).
pub const UNROLLED_MAX: usize = 8;

/// The building block for N×N matrices: looped on `scratch`, or unrolled in function memory
/// (the hardware budget unrolls up to [`UNROLLED_MAX`]).
pub fn building_block(n: usize, looped: bool) -> String {
    if looped {
        self::looped(n)
    } else {
        unrolled(n)
    }
}

/// The template with its size tokens replaced by integers.
fn looped(n: usize) -> String {
    super::without_comments(LU_TEMPLATE)
        .replace("NNU", &format!("{}u", n * n))
        .replace("NU", &format!("{n}u"))
        .replace("NAME", &n.to_string())
}

/// The four functions with every loop unrolled (writing to a `String` cannot fail).
fn unrolled(n: usize) -> String {
    let mut s = String::new();
    let nn = n * n;
    // Element (r, c) of the matrix behind the pointer `a`.
    let a = |r: usize, c: usize| format!("(*a)[{}u]", r * n + c);

    let _ = writeln!(
        s,
        "fn mg_lu_{n}(a: ptr<function, array<f32, {nn}u>>, perm: ptr<function, array<u32, {n}u>>) -> f32 {{"
    );
    s.push_str("    var sign: f32 = 1.0;\n");
    for i in 0..n {
        let _ = writeln!(s, "    (*perm)[{i}u] = {i}u;");
    }
    for col in 0..n {
        let _ = writeln!(s, "    {{");
        let _ = writeln!(s, "        var best: f32 = abs({});", a(col, col));
        let _ = writeln!(s, "        var pivot: u32 = {col}u;");
        for row in col + 1..n {
            // `>`: the first row of the largest |value| wins, as in the looped form.
            let _ = writeln!(
                s,
                "        {{ let v = abs({}); let t = v > best; best = select(best, v, t); pivot = select(pivot, {row}u, t); }}",
                a(row, col)
            );
        }
        // `best != best` only for NaN; `best > 3.4e38` only for +Inf.
        s.push_str("        if (best == 0.0 || best != best || best > 3.4e38) {\n            return 0.0;\n        }\n");
        for row in col + 1..n {
            let _ = writeln!(s, "        {{");
            let _ = writeln!(s, "            let t = pivot == {row}u;");
            for j in 0..n {
                let (p, q) = (a(col, j), a(row, j));
                let _ = writeln!(
                    s,
                    "            {{ let x = {p}; let y = {q}; {p} = select(x, y, t); {q} = select(y, x, t); }}"
                );
            }
            let _ = writeln!(
                s,
                "            {{ let x = (*perm)[{col}u]; let y = (*perm)[{row}u]; (*perm)[{col}u] = select(x, y, t); (*perm)[{row}u] = select(y, x, t); }}"
            );
            let _ = writeln!(s, "        }}");
        }
        let _ = writeln!(s, "        sign = select(sign, -sign, pivot != {col}u);");
        if col + 1 < n {
            let _ = writeln!(s, "        let r = 1.0 / {};", a(col, col));
        }
        for row in col + 1..n {
            let _ = writeln!(s, "        {{");
            let _ = writeln!(s, "            let f = {} * r;", a(row, col));
            let _ = writeln!(s, "            {} = f;", a(row, col));
            for j in col + 1..n {
                let _ = writeln!(
                    s,
                    "            {} = {} - f * {};",
                    a(row, j),
                    a(row, j),
                    a(col, j)
                );
            }
            let _ = writeln!(s, "        }}");
        }
        let _ = writeln!(s, "    }}");
    }
    s.push_str("    return sign;\n}\n\n");

    let _ = writeln!(
        s,
        "fn mg_det_{n}(a: ptr<function, array<f32, {nn}u>>, sign: f32) -> f32 {{"
    );
    let diagonal: Vec<String> = (0..n).map(|i| a(i, i)).collect();
    let _ = writeln!(s, "    return sign * {};\n}}\n", diagonal.join(" * "));

    let _ = writeln!(
        s,
        "fn mg_logdet_{n}(a: ptr<function, array<f32, {nn}u>>, sign: f32) -> f32 {{"
    );
    s.push_str("    if (sign == 0.0) {\n        // -Inf, made at run time (a constant infinity is not valid WGSL).\n        return -1.0 / (sign * sign);\n    }\n");
    s.push_str("    var s: f32 = sign;\n    var sum: f32 = 0.0;\n");
    for d in &diagonal {
        let _ = writeln!(
            s,
            "    {{ let u = {d}; s = select(s, -s, u < 0.0); sum = sum + log(abs(u)); }}"
        );
    }
    s.push_str(
        "    if (s < 0.0) {\n        return sqrt(-1.0 - sum * 0.0);\n    }\n    return sum;\n}\n\n",
    );

    let _ = writeln!(
        s,
        "fn mg_inv_{n}(a: ptr<function, array<f32, {nn}u>>, perm: ptr<function, array<u32, {n}u>>, sign: f32, out: ptr<function, array<f32, {nn}u>>) {{"
    );
    s.push_str("    let singular = sign == 0.0;\n    let nan = sqrt(-1.0 - sign * 0.0);\n");
    for i in 0..n {
        let _ = writeln!(s, "    let d{i} = 1.0 / {};", a(i, i));
    }
    for col in 0..n {
        // Column `col` of the inverse solves L·U·x = P·e_col: forward with L's unit
        // diagonal into y, then backward with U into x.
        let _ = writeln!(s, "    {{");
        for i in 0..n {
            let mut y = format!("select(0.0, 1.0, (*perm)[{i}u] == {col}u)");
            for p in 0..i {
                y = format!("{y} - {} * y{p}", a(i, p));
            }
            let _ = writeln!(s, "        let y{i} = {y};");
        }
        for i in (0..n).rev() {
            let mut x = format!("y{i}");
            for p in i + 1..n {
                x = format!("{x} - {} * x{p}", a(i, p));
            }
            let _ = writeln!(s, "        let x{i} = ({x}) * d{i};");
        }
        for i in 0..n {
            let _ = writeln!(
                s,
                "        (*out)[{}u] = select(x{i}, nan, singular);",
                i * n + col
            );
        }
        let _ = writeln!(s, "    }}");
    }
    s.push_str("}\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shader that calls all four functions, validated by naga.
    fn module(n: usize, looped: bool) -> String {
        let nn = n * n;
        let (decls, matrix, inverse) = if !looped {
            (
                format!("    var a: array<f32, {nn}u>;\n    var o: array<f32, {nn}u>;\n"),
                "&a".to_string(),
                "&o".to_string(),
            )
        } else {
            (String::new(), "0u, 1u, 0u".to_string(), format!("{nn}u"))
        };
        format!(
            "@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;\n{}\n\
             @compute @workgroup_size(1)\nfn main() {{\n{decls}    var p: array<u32, {n}u>;\n\
             let s = mg_lu_{n}({matrix}, &p);\n\
             let d = mg_det_{n}({matrix}, s) + mg_logdet_{n}({matrix}, s);\n\
             mg_inv_{n}({matrix}, &p, d, {inverse});\n}}\n",
            building_block(n, looped),
        )
    }

    #[test]
    fn both_forms_validate_at_every_size_around_the_switch() {
        for n in 1..=UNROLLED_MAX + 2 {
            for looped in [n > UNROLLED_MAX, true] {
                crate::wgsl::validate(&module(n, looped))
                    .unwrap_or_else(|e| panic!("N = {n}, looped: {looped}: {e}"));
            }
        }
        // Only the looped form indexes by a value computed at run time, and only in `scratch`.
        assert!(!building_block(UNROLLED_MAX, false).contains("pivot * "));
        let looped = building_block(UNROLLED_MAX + 1, true);
        assert!(looped.contains("pivot * ") && !looped.contains("ptr<function, array<f32"));
    }
}
