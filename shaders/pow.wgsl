// mg_pow(x, y): x to the power y with the meaning of f64::powf for the cases a derivative
// meets: WGSL's pow is exp2(y*log2(x)) and undefined for x < 0, so an integer exponent is
// handled through |x| with the sign restored for odd powers, a negative one as a reciprocal. Powers ±1 to ±4, the ones
// derivatives are full of, are products instead (at most two roundings, where
// exp2(y*log2(x)) errs by several ulps; `x.^2` is then `x.*x` rounded once, as on the CPU),
// so that terms which cancel in the float64 reference cancel here too. Straight-line code,
// no loop: a kernel inlines this once per element. No bindings; instantiated once per module
// that uses `^` or `.^`.

fn mg_pow(x: f32, y: f32) -> f32 {
    if (y == 0.0) {
        return 1.0;
    }
    if (y == round(y)) {
        let n = abs(y);
        if (n <= 4.0) {
            let x2 = x * x;
            let r = select(select(select(x, x2, n == 2.0), x2 * x, n == 3.0), x2 * x2, n == 4.0);
            return select(r, 1.0 / r, y < 0.0);
        }
        // A negative power as the reciprocal of the positive one: pow(0, y < 0) is
        // undefined in WGSL (lavapipe gives 0), 1/pow(0, -y) is the infinity powf gives.
        var r = pow(abs(x), n);
        if (x < 0.0 && n % 2.0 == 1.0) {
            r = -r;
        }
        return select(r, 1.0 / r, y < 0.0);
    }
    return pow(x, y);
}
