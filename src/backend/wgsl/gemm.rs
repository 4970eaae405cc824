//! The tiled GEMM dispatch: `shaders/gemm.wgsl` with its tile shape and epilogue filled in.
//!
//! In: the product's effective row count M (rows of C per slice), the buffers holding B and
//! C, and the expressions of the store (the chunk stride, the item and entry of each stored
//! value, and the epilogue), all made by `wgsl.rs` from step numbers, sizes and offsets.
//! Out: WGSL text. Every workgroup is 16×16 invocations of 16 outputs each; the tile is
//! 64×64, or 32×128 or 16×256 for products of at most 32 or 16 rows, so that no workgroup
//! computes rows beyond M (W5's 32-row products filled only half of a 64×64 tile).
//! Invariants: the accumulators, tile loads, multiply-adds and stores are written unrolled
//! with constant names and indices (registers, not arrays); the template's comments, which
//! name the tokens, are dropped before the tokens are replaced.

/// The hand-written template.
const TEMPLATE: &str = include_str!("../../../shaders/gemm.wgsl");

/// Rows and columns of C per workgroup, for a product with `m` rows per slice.
pub fn tile_for(m: usize) -> (usize, usize) {
    match m {
        0..=16 => (16, 256),
        17..=32 => (32, 128),
        _ => (64, 64),
    }
}

/// What the store of each entry computes (see the template's `store`).
pub struct Store<'a> {
    pub chunk: &'a str,
    pub item: &'a str,
    pub element: &'a str,
    pub epilogue: &'a str,
}

/// The shader for tiles of `(rows, cols)` reading B from `b_buffer` and writing C to
/// `c_buffer` (fixed buffer names).
pub fn shader(
    (rows, cols): (usize, usize),
    b_buffer: &str,
    c_buffer: &str,
    store: &Store,
) -> String {
    let (per_row, per_col) = (rows / 16, cols / 16);
    let outputs: Vec<(usize, usize)> = (0..per_row)
        .flat_map(|r| (0..per_col).map(move |c| (r, c)))
        .collect();
    let indent = |depth: usize, lines: Vec<String>| -> String {
        let pad = "    ".repeat(depth);
        lines
            .iter()
            .map(|l| format!("{pad}{l}"))
            .collect::<Vec<_>>()
            .join("\n")
            .trim_start()
            .to_string()
    };
    let accumulators = outputs
        .iter()
        .map(|(r, c)| format!("var c{r}_{c} = 0.0;"))
        .collect();
    let staging = (0..rows * 16 / 256)
        .map(|q| format!("stage_a(tid + {}u, row0, k0, a0);", 256 * q))
        .chain((0..cols * 16 / 256).map(|q| format!("stage_b(tid + {}u, col0, k0, b0);", 256 * q)))
        .collect();
    let products = (0..per_row)
        .map(|r| format!("let a{r} = tile_a[p * {rows}u + ty + {}u];", 16 * r))
        .chain((0..per_col).map(|c| format!("let b{c} = tile_b[p * {cols}u + tx + {}u];", 16 * c)))
        .chain(
            outputs
                .iter()
                .map(|(r, c)| format!("c{r}_{c} = c{r}_{c} + a{r} * b{c};")),
        )
        .collect();
    let stores = outputs
        .iter()
        .map(|(r, c)| {
            format!(
                "store(row0 + ty + {}u, col0 + tx + {}u, wg.z, c0, c{r}_{c});",
                16 * r,
                16 * c
            )
        })
        .collect();
    super::without_comments(TEMPLATE)
        .replace("ACCUMULATORS", &indent(1, accumulators))
        .replace("STAGING", &indent(2, staging))
        .replace("PRODUCTS", &indent(3, products))
        .replace("STORES", &indent(1, stores))
        .replace("A_TILE_LEN", &format!("{}u", rows * 16))
        .replace("B_TILE_LEN", &format!("{}u", cols * 16))
        .replace("ROWS_PER_TILE", &format!("{rows}u"))
        .replace("COLS_PER_TILE", &format!("{cols}u"))
        .replace("BBUF", b_buffer)
        .replace("CBUF", c_buffer)
        .replace("CHUNK", store.chunk)
        .replace("ITEM", store.item)
        .replace("ELEMENT", store.element)
        .replace("EPILOGUE", store.epilogue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tile_shape_validates_and_covers_its_tile() {
        let store = Store {
            chunk: "g.n",
            item: "j",
            element: "i",
            epilogue: "acc",
        };
        for m in [1, 16, 17, 32, 33, 64, 300] {
            let tile = tile_for(m);
            assert!(
                tile.0 >= m.min(64) && tile.0 * tile.1 == 4096,
                "{m}: {tile:?}"
            );
            let source = shader(tile, "batched", "out", &store);
            crate::wgsl::validate(&source).unwrap_or_else(|e| panic!("{m}: {e}"));
            // 16 accumulators per invocation × 256 invocations: the whole tile.
            assert_eq!(source.matches("store(row0").count(), 16, "{source}");
        }
    }
}
