// mg_pow(x, y): x to the power y with the meaning of f64::powf for the cases a derivative
// meets: WGSL's pow is exp2(y*log2(x)) and undefined for x < 0, so an integer exponent is
// handled through |x| with the sign restored for odd powers. No bindings; instantiated once
// per module that uses `^` or `.^`.

fn mg_pow(x: f32, y: f32) -> f32 {
    if (y == 0.0) {
        return 1.0;
    }
    if (y == round(y)) {
        let r = pow(abs(x), y);
        if (x < 0.0 && abs(y % 2.0) == 1.0) {
            return -r;
        }
        return r;
    }
    return pow(x, y);
}
