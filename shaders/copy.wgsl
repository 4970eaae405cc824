// Device copy bandwidth: every invocation copies one vec4 (16 bytes read, 16 written).
// The dispatch may be folded into two dimensions; `row` is the invocations per row.
@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;

@compute @workgroup_size(256)
fn main(@builtin(global_invocation_id) id: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = id.x + id.y * groups.x * 256u;
    if (i < arrayLength(&src)) {
        dst[i] = src[i];
    }
}
