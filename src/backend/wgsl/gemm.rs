//! The tiled GEMM dispatch: a module of IR with its tile shape and epilogue filled in.
//!
//! In: the product's effective row count M (rows of C per slice), the buffers holding B and
//! C, and the expressions of the store (the chunk stride, the item and entry of each stored
//! value, and the epilogue), all made by `wgsl.rs` from step numbers, sizes and offsets.
//! Out: a [`Module`]. It computes C[z] (M×N) = A[z] (M×K) · B[z] (K×N), every operand
//! addressed by base + z·zs + row·rs + col·cs (the host fills the parameter block for each
//! chunk: the batched operands are in lanes, so a shared matrix times every item's vector is
//! one product with N = items). A is always in `hoisted`. Every workgroup is 16×16
//! invocations of 16 outputs each (rows ty + 16r, columns tx + 16c, so that neighbouring
//! invocations store neighbouring columns), stepping through K by 16 with both operand tiles
//! in workgroup memory. The tile is 64×64, or 32×128 or 16×256 for products of at most 32 or
//! 16 rows, so that no workgroup computes rows beyond M (W5's 32-row products filled only
//! half of a 64×64 tile).
//! Invariants: the accumulators, tile loads, multiply-adds and stores are written unrolled
//! with constant names and indices (sixteen scalars, not an array, so that drivers keep them
//! in registers); entries outside the matrices load as zero and are never stored.

use super::ir::{
    BinOp, Binding, BuiltinInput, Callee, Expr, Field, Function, Ident, Module, Stmt, Ty, Uniform,
};

/// Rows and columns of C per workgroup, for a product with `m` rows per slice.
pub fn tile_for(m: usize) -> (usize, usize) {
    match m {
        0..=16 => (16, 256),
        17..=32 => (32, 128),
        _ => (64, 64),
    }
}

/// What the store of each entry computes: the product `acc`, or the element-wise steps fused
/// into the product, computed from `acc` and entry `e` of the item `item` of the values they
/// read (the lanes layout's stride is `chunk`). Each is an expression of `i`, `j` and `z`.
pub struct Store {
    pub chunk: Expr,
    pub item: Expr,
    pub element: Expr,
    pub epilogue: Expr,
}

fn w(word: &'static str) -> Expr {
    Expr::word(word)
}
fn u(v: usize) -> Expr {
    Expr::U32(v as u32)
}
fn add(a: Expr, b: Expr) -> Expr {
    Expr::bin(BinOp::Add, a, b)
}
fn mul(a: Expr, b: Expr) -> Expr {
    Expr::bin(BinOp::Mul, a, b)
}
fn lt(a: Expr, b: Expr) -> Expr {
    Expr::bin(BinOp::Lt, a, b)
}
fn and(a: Expr, b: Expr) -> Expr {
    Expr::bin(BinOp::And, a, b)
}
fn param(f: Field) -> Expr {
    Expr::param(f)
}
fn u32_params(names: [&'static str; 4]) -> Vec<(Ident, Ty)> {
    names.iter().map(|&n| (Ident::word(n), Ty::U32)).collect()
}

/// The shader for tiles of `(rows, cols)` reading B from `b_buffer` and writing C to
/// `c_buffer`, with `blocks`, the generated functions the epilogue calls.
pub fn shader(
    (rows, cols): (usize, usize),
    b_buffer: Binding,
    c_buffer: Binding,
    blocks: Vec<Function>,
    store: Store,
) -> Module {
    let (per_row, per_col) = (rows / 16, cols / 16);
    let outputs: Vec<(usize, usize)> = (0..per_row)
        .flat_map(|r| (0..per_col).map(move |c| (r, c)))
        .collect();
    let acc = |r: usize, c: usize| Ident::pair("c", r, c);
    let (wg, lid) = (
        BuiltinInput::WorkgroupId.expr(),
        BuiltinInput::LocalInvocationId.expr(),
    );
    let let_ = |name: &'static str, value: Expr| Stmt::Let(Ident::word(name), value);
    let call = |callee: Callee, args: Vec<Expr>| Stmt::Call(Expr::Call(callee, args));
    let mut body = vec![
        let_("tx", Expr::field(lid.clone(), Field::X)),
        let_("ty", Expr::field(lid, Field::Y)),
        let_("tid", add(mul(w("ty"), u(16)), w("tx"))),
        let_("row0", mul(Expr::field(wg.clone(), Field::Y), u(rows))),
        let_("col0", mul(Expr::field(wg.clone(), Field::X), u(cols))),
    ];
    for (name, base, zs) in [
        ("a0", Field::ABase, Field::AZs),
        ("b0", Field::BBase, Field::BZs),
        ("c0", Field::CBase, Field::CZs),
    ] {
        let z = Expr::field(wg.clone(), Field::ZComponent);
        body.push(let_(name, add(param(base), mul(z, param(zs)))));
    }
    body.extend((outputs.iter()).map(|&(r, c)| Stmt::Var(acc(r, c), Ty::F32, Expr::F32(0.0))));
    // The tiles' elements, 256 at a time; then the multiply-adds of one 16-deep panel.
    let mut panel: Vec<Stmt> = (0..rows * 16 / 256)
        .map(|q| {
            let e = add(w("tid"), u(256 * q));
            call(Callee::StageA, vec![e, w("row0"), w("k0"), w("a0")])
        })
        .chain((0..cols * 16 / 256).map(|q| {
            let e = add(w("tid"), u(256 * q));
            call(Callee::StageB, vec![e, w("col0"), w("k0"), w("b0")])
        }))
        .collect();
    panel.push(Stmt::Barrier);
    let tile = |name: &'static str, width: usize, at: &'static str, k: usize| {
        Expr::index(w(name), add(add(mul(w("p"), u(width)), w(at)), u(16 * k)))
    };
    let products: Vec<Stmt> = (0..per_row)
        .map(|r| Stmt::Let(Ident::numbered("a", r), tile("tile_a", rows, "ty", r)))
        .chain(
            (0..per_col).map(|c| Stmt::Let(Ident::numbered("b", c), tile("tile_b", cols, "tx", c))),
        )
        .chain(outputs.iter().map(|&(r, c)| {
            let term = mul(
                Expr::id(Ident::numbered("a", r)),
                Expr::id(Ident::numbered("b", c)),
            );
            Stmt::Assign(Expr::id(acc(r, c)), add(Expr::id(acc(r, c)), term))
        }))
        .collect();
    panel.push(Stmt::Loop {
        var: Ident::word("p"),
        from: u(0),
        to: u(16),
        step: 1,
        body: products,
    });
    panel.push(Stmt::Barrier);
    body.push(Stmt::Loop {
        var: Ident::word("k0"),
        from: u(0),
        to: param(Field::K),
        step: 16,
        body: panel,
    });
    body.extend(outputs.iter().map(|&(r, c)| {
        let i = add(add(w("row0"), w("ty")), u(16 * r));
        let j = add(add(w("col0"), w("tx")), u(16 * c));
        let z = Expr::field(BuiltinInput::WorkgroupId.expr(), Field::ZComponent);
        call(Callee::Store, vec![i, j, z, w("c0"), Expr::id(acc(r, c))])
    }));
    let mut functions = blocks;
    functions.extend([
        stage(Operand::A, rows, Binding::Hoisted),
        stage(Operand::B, cols, b_buffer),
        store_function(c_buffer, store),
    ]);
    Module {
        title:
            "Tiled matrix product of a shared matrix with batched values (generated by matgrad).",
        uniform: Uniform::Gemm,
        workgroup: vec![
            (Ident::word("tile_a"), rows * 16),
            (Ident::word("tile_b"), cols * 16),
        ],
        functions,
        workgroup_size: (16, 16),
        inputs: vec![BuiltinInput::WorkgroupId, BuiltinInput::LocalInvocationId],
        body,
        unroll_budget: 0,
    }
}

/// The two tiles' loaders: `stage_a(e, row0, k0, a0)` stores element `e` of the
/// `width`×16 A tile (row `i = e / 16`, depth `p = e % 16`) at `tile_a[p * width + i]`;
/// `stage_b(e, col0, k0, b0)` element `e` of the 16×`width` B tile (depth `p = e / width`,
/// column `j = e % width`) at `tile_b[p * width + j]`; zero outside the matrix.
enum Operand {
    A,
    B,
}

fn stage(operand: Operand, width: usize, buffer: Binding) -> Function {
    // The function, its tile, the tile's first row (A) or column (B) and the operand's base
    // offset (its parameters besides `e` and `k0`), the loaded value's name; `e`'s quotient
    // and remainder by `divisor`, and which of them is the entry's place along the tile's
    // width; the entry's row and column in the matrix, its limits and its strides.
    let (name, tile, start, base, value) = match operand {
        Operand::A => (Callee::StageA, "tile_a", "row0", "a0", "va"),
        Operand::B => (Callee::StageB, "tile_b", "col0", "b0", "vb"),
    };
    let ((quotient, remainder, divisor), at) = match operand {
        Operand::A => (("i", "p", 16), "i"),
        Operand::B => (("p", "j", width), "j"),
    };
    let (row, col, limits, strides) = match operand {
        Operand::A => (
            add(w(start), w(at)),
            add(w("k0"), w("p")),
            (Field::M, Field::K),
            (Field::ARs, Field::ACs),
        ),
        Operand::B => (
            add(w("k0"), w("p")),
            add(w(start), w(at)),
            (Field::K, Field::N),
            (Field::BRs, Field::BCs),
        ),
    };
    let inside = and(
        lt(row.clone(), param(limits.0)),
        lt(col.clone(), param(limits.1)),
    );
    let load = Expr::index(
        Expr::Buffer(buffer),
        add(
            add(w(base), mul(row, param(strides.0))),
            mul(col, param(strides.1)),
        ),
    );
    Function {
        name,
        params: u32_params(["e", start, "k0", base]),
        result: None,
        body: vec![
            Stmt::Let(
                Ident::word(quotient),
                Expr::bin(BinOp::Div, w("e"), u(divisor)),
            ),
            Stmt::Let(
                Ident::word(remainder),
                Expr::bin(BinOp::Rem, w("e"), u(divisor)),
            ),
            Stmt::Var(Ident::word(value), Ty::F32, Expr::F32(0.0)),
            Stmt::If(inside, vec![Stmt::Assign(w(value), load)]),
            Stmt::Assign(
                Expr::index(w(tile), add(mul(w("p"), u(width)), w(at))),
                w(value),
            ),
        ],
    }
}

/// `store(i, j, z, c0, acc)`: entry (i, j) of C in slice z, through the epilogue.
fn store_function(c_buffer: Binding, store: Store) -> Function {
    let mut params = u32_params(["i", "j", "z", "c0"]);
    params.push((Ident::word("acc"), Ty::F32));
    let target = Expr::index(
        Expr::Buffer(c_buffer),
        add(
            add(w("c0"), mul(w("i"), param(Field::CRs))),
            mul(w("j"), param(Field::CCs)),
        ),
    );
    Function {
        name: Callee::Store,
        params,
        result: None,
        body: vec![Stmt::If(
            and(lt(w("i"), param(Field::M)), lt(w("j"), param(Field::N))),
            vec![
                Stmt::Let(Ident::chunk(), store.chunk),
                Stmt::Let(Ident::item(), store.item),
                Stmt::Let(Ident::word("e"), store.element),
                Stmt::Assign(target, store.epilogue),
            ],
        )],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tile_shape_validates_and_covers_its_tile() {
        let store = || Store {
            chunk: Expr::param(Field::N),
            item: w("j"),
            element: w("i"),
            epilogue: w("acc"),
        };
        for m in [1, 16, 17, 32, 33, 64, 300] {
            let tile = tile_for(m);
            assert!(
                tile.0 >= m.min(64) && tile.0 * tile.1 == 4096,
                "{m}: {tile:?}"
            );
            let source =
                shader(tile, Binding::Batched, Binding::Out, Vec::new(), store()).to_string();
            crate::wgsl::validate(&source).unwrap_or_else(|e| panic!("{m}: {e}"));
            // 16 accumulators per invocation × 256 invocations: the whole tile.
            assert_eq!(source.matches("store(((row0 + ty)").count(), 16, "{source}");
        }
    }
}
