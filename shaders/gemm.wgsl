// Tiled matrix product for the products of a shared matrix with batched values:
// C[z] (M×N) = A[z] (M×K) · B[z] (K×N), every operand addressed by base + z·zs + row·rs +
// col·cs (the host fills `g` for each chunk: the batched operands are in lanes, so a shared
// matrix times every item's vector is one product with N = items, see src/wgsl.rs).
//
// A is always in `hoisted`; src/wgsl.rs replaces the tokens BBUF and CBUF with the names of the
// buffers that hold B and C (`batched`, `scratch` or `out`: names the generator chooses,
// nothing a user typed). Each workgroup of 16×16 invocations computes a 64×64 tile of C,
// each invocation 4×4 outputs (rows ty + 16r, columns tx + 16c, so that neighbouring
// invocations store neighbouring columns), stepping through K by 16 with both operand tiles
// in workgroup memory.

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
    var acc: array<f32, 16>;
    for (var r = 0u; r < 16u; r++) {
        acc[r] = 0.0;
    }
    for (var k0 = 0u; k0 < g.k; k0 += 16u) {
        for (var r = 0u; r < 4u; r++) {
            let e = tid + 256u * r;
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
        workgroupBarrier();
        for (var p = 0u; p < 16u; p++) {
            var a: array<f32, 4>;
            var b: array<f32, 4>;
            for (var r = 0u; r < 4u; r++) {
                a[r] = tile_a[p * 64u + ty + 16u * r];
                b[r] = tile_b[p * 64u + tx + 16u * r];
            }
            for (var r = 0u; r < 4u; r++) {
                for (var c = 0u; c < 4u; c++) {
                    acc[r * 4u + c] = acc[r * 4u + c] + a[r] * b[c];
                }
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < 4u; r++) {
        for (var c = 0u; c < 4u; c++) {
            let i = row0 + ty + 16u * r;
            let j = col0 + tx + 16u * c;
            if (i < g.m && j < g.n) {
                CBUF[c0 + i * g.c_rs + j * g.c_cs] = acc[r * 4u + c];
            }
        }
    }
}
