// Tiled matrix product for the products of a shared matrix with batched values:
// C[z] (M×N) = A[z] (M×K) · B[z] (K×N), every operand addressed by base + z·zs + row·rs +
// col·cs (the host fills `g` for each chunk: the batched operands are in lanes, so a shared
// matrix times every item's vector is one product with N = items, see src/wgsl.rs).
//
// A is always in `hoisted`; src/wgsl.rs replaces the tokens BBUF and CBUF with the names of the
// buffers that hold B and C (`batched`, `scratch` or `out`: names the generator chooses,
// nothing a user typed), and the tokens of `store` with expressions it generates from step
// numbers, sizes and offsets. Each workgroup of 16×16 invocations computes a 64×64 tile of C,
// each invocation 4×4 outputs (rows ty + 16r, columns tx + 16c, so that neighbouring
// invocations store neighbouring columns) in sixteen scalar accumulators (written out, not an
// array, so that drivers keep them in registers), stepping through K by 16 with both operand
// tiles in workgroup memory.

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

var<workgroup> tile_a: array<f32, 1024>; // [16][64]: tile_a[p * 64 + i]
var<workgroup> tile_b: array<f32, 1024>; // [16][64]: tile_b[p * 64 + j]

// One element of each operand tile: element e of the 64×16 A tile and of the 16×64 B tile
// (zero outside the matrices).
fn stage_tiles(e: u32, row0: u32, col0: u32, k0: u32, a0: u32, b0: u32) {
    let i = e / 16u;
    let p = e % 16u;
    var va = 0.0;
    if (row0 + i < g.m && k0 + p < g.k) {
        va = hoisted[a0 + (row0 + i) * g.a_rs + (k0 + p) * g.a_cs];
    }
    tile_a[p * 64u + i] = va;
    let pb = e / 64u;
    let j = e % 64u;
    var vb = 0.0;
    if (k0 + pb < g.k && col0 + j < g.n) {
        vb = BBUF[b0 + (k0 + pb) * g.b_rs + (col0 + j) * g.b_cs];
    }
    tile_b[pb * 64u + j] = vb;
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
    let row0 = wg.y * 64u;
    let col0 = wg.x * 64u;
    let a0 = g.a_base + wg.z * g.a_zs;
    let b0 = g.b_base + wg.z * g.b_zs;
    let c0 = g.c_base + wg.z * g.c_zs;
    var c00 = 0.0;
    var c01 = 0.0;
    var c02 = 0.0;
    var c03 = 0.0;
    var c10 = 0.0;
    var c11 = 0.0;
    var c12 = 0.0;
    var c13 = 0.0;
    var c20 = 0.0;
    var c21 = 0.0;
    var c22 = 0.0;
    var c23 = 0.0;
    var c30 = 0.0;
    var c31 = 0.0;
    var c32 = 0.0;
    var c33 = 0.0;
    for (var k0 = 0u; k0 < g.k; k0 += 16u) {
        stage_tiles(tid + 0u, row0, col0, k0, a0, b0);
        stage_tiles(tid + 256u, row0, col0, k0, a0, b0);
        stage_tiles(tid + 512u, row0, col0, k0, a0, b0);
        stage_tiles(tid + 768u, row0, col0, k0, a0, b0);
        workgroupBarrier();
        for (var p = 0u; p < 16u; p++) {
            let a0 = tile_a[p * 64u + ty + 0u];
            let a1 = tile_a[p * 64u + ty + 16u];
            let a2 = tile_a[p * 64u + ty + 32u];
            let a3 = tile_a[p * 64u + ty + 48u];
            let b0 = tile_b[p * 64u + tx + 0u];
            let b1 = tile_b[p * 64u + tx + 16u];
            let b2 = tile_b[p * 64u + tx + 32u];
            let b3 = tile_b[p * 64u + tx + 48u];
            c00 = c00 + a0 * b0;
            c01 = c01 + a0 * b1;
            c02 = c02 + a0 * b2;
            c03 = c03 + a0 * b3;
            c10 = c10 + a1 * b0;
            c11 = c11 + a1 * b1;
            c12 = c12 + a1 * b2;
            c13 = c13 + a1 * b3;
            c20 = c20 + a2 * b0;
            c21 = c21 + a2 * b1;
            c22 = c22 + a2 * b2;
            c23 = c23 + a2 * b3;
            c30 = c30 + a3 * b0;
            c31 = c31 + a3 * b1;
            c32 = c32 + a3 * b2;
            c33 = c33 + a3 * b3;
        }
        workgroupBarrier();
    }
    store(row0 + ty + 0u, col0 + tx + 0u, wg.z, c0, c00);
    store(row0 + ty + 0u, col0 + tx + 16u, wg.z, c0, c01);
    store(row0 + ty + 0u, col0 + tx + 32u, wg.z, c0, c02);
    store(row0 + ty + 0u, col0 + tx + 48u, wg.z, c0, c03);
    store(row0 + ty + 16u, col0 + tx + 0u, wg.z, c0, c10);
    store(row0 + ty + 16u, col0 + tx + 16u, wg.z, c0, c11);
    store(row0 + ty + 16u, col0 + tx + 32u, wg.z, c0, c12);
    store(row0 + ty + 16u, col0 + tx + 48u, wg.z, c0, c13);
    store(row0 + ty + 32u, col0 + tx + 0u, wg.z, c0, c20);
    store(row0 + ty + 32u, col0 + tx + 16u, wg.z, c0, c21);
    store(row0 + ty + 32u, col0 + tx + 32u, wg.z, c0, c22);
    store(row0 + ty + 32u, col0 + tx + 48u, wg.z, c0, c23);
    store(row0 + ty + 48u, col0 + tx + 0u, wg.z, c0, c30);
    store(row0 + ty + 48u, col0 + tx + 16u, wg.z, c0, c31);
    store(row0 + ty + 48u, col0 + tx + 32u, wg.z, c0, c32);
    store(row0 + ty + 48u, col0 + tx + 48u, wg.z, c0, c33);
}
