// Device float32 multiply-add rate: four independent chains of vec4 fma per invocation, so
// that the arithmetic units, not latency or memory, bound the time. Flops per invocation:
// ITERATIONS * 4 chains * 4 lanes * 2.
const ITERATIONS: u32 = 512u;

@group(0) @binding(0) var<storage, read_write> sink: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>) {
    var a = vec4<f32>(f32(id.x) * 1e-7);
    var b = a + vec4<f32>(0.5);
    var c = a + vec4<f32>(0.25);
    var d = a + vec4<f32>(0.125);
    let m = vec4<f32>(0.9999);
    let k = vec4<f32>(1e-6);
    for (var i = 0u; i < ITERATIONS; i++) {
        a = fma(a, m, k);
        b = fma(b, m, k);
        c = fma(c, m, k);
        d = fma(d, m, k);
    }
    // Written only where it cannot happen, so the chains stay live but nothing is stored.
    if (a.x + b.x + c.x + d.x == 12345.678) {
        sink[id.x % arrayLength(&sink)] = a + b + c + d;
    }
}
