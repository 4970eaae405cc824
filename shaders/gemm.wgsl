// Tiled matrix product for the products of a shared matrix with batched values:
// C[z] (M×N) = A[z] (M×K) · B[z] (K×N), every operand addressed by base + z·zs + row·rs +
// col·cs (the host fills `g` for each chunk: the batched operands are in lanes, so a shared
// matrix times every item's vector is one product with N = items, see src/wgsl.rs).
//
// A is always in `hoisted`; src/wgsl.rs replaces the tokens BBUF and CBUF with the names of the
// buffers that hold B and C (`batched`, `scratch` or `out`: names the generator chooses,
// nothing a user typed), and the tokens of `store` with expressions it generates from step
// numbers, sizes and offsets. Each workgroup of 16×16 invocations computes a tile of C of
// ROWS_PER_TILE × COLS_PER_TILE entries (64×64, or 32×128 and 16×256 when M is that small, so that no half-empty tiles are
// computed), each invocation 16 outputs (rows ty + 16r, columns tx + 16c, so that
// neighbouring invocations store neighbouring columns) in sixteen scalar accumulators
// (written out, not an array, so that drivers keep them in registers), stepping through K by
// 16 with both operand tiles in workgroup memory. The lines marked GENERATED are written by
// src/wgsl.rs for the tile shape: the accumulators, the tile loads, the multiply-adds and
// the stores, each unrolled.

struct Gemm {
    m: u32, n: u32, k: u32, z: u32,
    a_base: u32, a_rs: u32, a_cs: u32, a_zs: u32,
    b_base: u32, b_rs: u32, b_cs: u32, b_zs: u32,
    c_base: u32, c_rs: u32, c_cs: u32, c_zs: u32,
}

@group(0) @binding(0) var<storage, read> hoisted: array<f32>;
@group(0) @binding(1) var<storage, read> batched: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@group(0) @binding(3) var<uniform> g: Gemm;
@group(0) @binding(4) var<storage, read_write> scratch: array<f32>;

// tile_a[p * ROWS_PER_TILE + i] and tile_b[p * COLS_PER_TILE + j], p < 16.
var<workgroup> tile_a: array<f32, A_TILE_LEN>;
var<workgroup> tile_b: array<f32, B_TILE_LEN>;

// Element e of the ROWS_PER_TILE×16 A tile (zero outside the matrix).
fn stage_a(e: u32, row0: u32, k0: u32, a0: u32) {
    let i = e / 16u;
    let p = e % 16u;
    var va = 0.0;
    if (row0 + i < g.m && k0 + p < g.k) {
        va = hoisted[a0 + (row0 + i) * g.a_rs + (k0 + p) * g.a_cs];
    }
    tile_a[p * ROWS_PER_TILE + i] = va;
}

// Element e of the 16×COLS_PER_TILE B tile (zero outside the matrix).
fn stage_b(e: u32, col0: u32, k0: u32, b0: u32) {
    let p = e / COLS_PER_TILE;
    let j = e % COLS_PER_TILE;
    var vb = 0.0;
    if (k0 + p < g.k && col0 + j < g.n) {
        vb = BBUF[b0 + (k0 + p) * g.b_rs + (col0 + j) * g.b_cs];
    }
    tile_b[p * COLS_PER_TILE + j] = vb;
}

// Stores entry (i, j) of C in slice z: the product `acc`, or the element-wise steps fused
// into the product, computed from `acc` and entry `e` of the item `item` of the values they
// read (the lanes layout's stride is `chunk`).
fn store(i: u32, j: u32, z: u32, c0: u32, acc: f32) {
    if (i < g.m && j < g.n) {
        let chunk = CHUNK;
        let item = ITEM;
        let e = ELEMENT;
        CBUF[c0 + i * g.c_rs + j * g.c_cs] = EPILOGUE;
    }
}

@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>) {
    let tx = lid.x;
    let ty = lid.y;
    let tid = ty * 16u + tx;
    let row0 = wg.y * ROWS_PER_TILE;
    let col0 = wg.x * COLS_PER_TILE;
    let a0 = g.a_base + wg.z * g.a_zs;
    let b0 = g.b_base + wg.z * g.b_zs;
    let c0 = g.c_base + wg.z * g.c_zs;
    // GENERATED: var cRC = 0.0; for each of the invocation's outputs.
    ACCUMULATORS
    for (var k0 = 0u; k0 < g.k; k0 += 16u) {
        // GENERATED: stage_a(tid + 256u * q, ...) and stage_b(tid + 256u * q, ...) for the
        // tiles' elements, 256 at a time.
        STAGING
        workgroupBarrier();
        for (var p = 0u; p < 16u; p++) {
            // GENERATED: let aR = tile_a[p * ROWS_PER_TILE + ty + 16R]; and
            // let bC = tile_b[p * COLS_PER_TILE + tx + 16C]; then cRC = cRC + aR * bC; for
            // every output.
            PRODUCTS
        }
        workgroupBarrier();
    }
    // GENERATED: store(row0 + ty + 16R, col0 + tx + 16C, wg.z, c0, cRC); for every output.
    STORES
}
