// Batch optimization on the device: the per-item update of `src/minimize/driver.rs`, in WGSL.
//
// One text for every problem: the sizes, offsets and flags are numbers in the parameter
// block that `src/minimize/gpu.rs` writes (nothing a user types), loaded into private
// variables at the start of each invocation. (As constants they made the software adapter's
// compiler unroll every loop: 20 s to compile one kernel.) Three entry points:
// - `update`: one invocation per stored item; consumes the item's objective, gradient and
//   curvature at its trial point (the plan's outputs, `outs`), runs the line search's verdict,
//   and for an accepted point the convergence test, the next direction and the next trial,
//   which it writes into the plan's input lanes (`inputs`), where the next round reads it.
//   A finished item writes its point and report into `results` (by its index in the block).
// - `select_active`: counts the active items and lists them in `keep` (in no particular
//   order: every item runs the same code on its own state, so the order changes no result).
// - `gather`: moves the kept items of one per-item buffer to the front (compaction).
//
// Every per-item buffer is element-major ("lanes"): element `e` of item slot `t` is at
// `e * count + t`. Item fields are u32 lanes (floats stored as bits). Non-finite values are
// recognized by their bits, never by comparisons a compiler may assume away.

struct Params {
    // Items stored in this block (the lanes' stride).
    count: u32,
    // Invocations per row of the two-dimensional dispatch.
    row: u32,
    max_iter: u32,
    // Items of the block (the results' stride).
    block_items: u32,
    gtol: f32,
    ftol: f32,
    // The variable's entries, the L-BFGS memory, the method (0 Newton, 1 Gauss-Newton,
    // 2 L-BFGS, 3 gradient descent), the variable's first element in the input lanes.
    n: u32,
    memory: u32,
    method: u32,
    var_base: u32,
    // Where the objective and gradient are: in `outs` (per item) or `consts` (shared, 1).
    f_base: u32,
    f_shared: u32,
    g_base: u32,
    g_shared: u32,
    // The curvature: 0 none, 1 per item in `outs`, 2 shared in `consts`; the shared
    // Cholesky factor in `consts` (when `shared_factor` is 1).
    h_kind: u32,
    h_base: u32,
    shared_factor: u32,
    sf_base: u32,
    // Bounds: 0 none, 1 shared in `consts` at the base, 2 per item in `bounds` (lanes 0..n
    // and n..2n).
    lower: u32,
    lb_base: u32,
    upper: u32,
    ub_base: u32,
    // The sides of a variable declared symmetric or spd (0: not declared).
    sym_side: u32,
    spd_side: u32,
    // Offsets of the state's vectors (see `StateLayout` in `src/minimize/gpu.rs`).
    sx: u32,
    sg: u32,
    sd: u32,
    ss: u32,
    sy: u32,
    srho: u32,
    sact: u32,
    sdir: u32,
    salpha: u32,
    scone: u32,
    sfac: u32,
    _pad: u32,
}

var<private> N: u32;
var<private> MEMORY: u32;
var<private> METHOD: u32;
var<private> VAR_BASE: u32;
var<private> F_BASE: u32;
var<private> F_SHARED: bool;
var<private> G_BASE: u32;
var<private> G_SHARED: bool;
var<private> H_KIND: u32;
var<private> H_BASE: u32;
var<private> SHARED_FACTOR: bool;
var<private> SF_BASE: u32;
var<private> LOWER: u32;
var<private> LB_BASE: u32;
var<private> UPPER: u32;
var<private> UB_BASE: u32;
var<private> SYM_SIDE: u32;
var<private> SPD_SIDE: u32;
var<private> SX: u32;
var<private> SG: u32;
var<private> SD: u32;
var<private> SS: u32;
var<private> SY: u32;
var<private> SRHO: u32;
var<private> SACT: u32;
var<private> SDIR: u32;
var<private> SALPHA: u32;
var<private> SCONE: u32;
var<private> SFAC: u32;

fn load_config() {
    N = P.n;
    MEMORY = P.memory;
    METHOD = P.method;
    VAR_BASE = P.var_base;
    F_BASE = P.f_base;
    F_SHARED = P.f_shared != 0u;
    G_BASE = P.g_base;
    G_SHARED = P.g_shared != 0u;
    H_KIND = P.h_kind;
    H_BASE = P.h_base;
    SHARED_FACTOR = P.shared_factor != 0u;
    SF_BASE = P.sf_base;
    LOWER = P.lower;
    LB_BASE = P.lb_base;
    UPPER = P.upper;
    UB_BASE = P.ub_base;
    SYM_SIDE = P.sym_side;
    SPD_SIDE = P.spd_side;
    SX = P.sx;
    SG = P.sg;
    SD = P.sd;
    SS = P.ss;
    SY = P.sy;
    SRHO = P.srho;
    SACT = P.sact;
    SDIR = P.sdir;
    SALPHA = P.salpha;
    SCONE = P.scone;
    SFAC = P.sfac;
}

struct GatherParams {
    old_count: u32,
    new_count: u32,
    len: u32,
    row: u32,
}

@group(0) @binding(0) var<uniform> P: Params;
@group(0) @binding(1) var<storage, read_write> inputs: array<f32>;
@group(0) @binding(2) var<storage, read> outs: array<f32>;
@group(0) @binding(3) var<storage, read> consts: array<f32>;
@group(0) @binding(4) var<storage, read_write> state: array<f32>;
@group(0) @binding(5) var<storage, read_write> items: array<u32>;
@group(0) @binding(6) var<storage, read> bounds: array<f32>;
@group(0) @binding(7) var<storage, read_write> results: array<f32>;

@group(0) @binding(8) var<storage, read_write> counter: array<atomic<u32>>;
@group(0) @binding(9) var<storage, read_write> keep: array<u32>;

@group(0) @binding(10) var<uniform> G: GatherParams;
@group(0) @binding(11) var<storage, read> gather_src: array<u32>;
@group(0) @binding(12) var<storage, read_write> gather_dst: array<u32>;
@group(0) @binding(13) var<storage, read> gather_keep: array<u32>;

// Item fields.
const ID: u32 = 0u;
const STATUS: u32 = 1u;
const PHASE: u32 = 2u;
const ITERS: u32 = 3u;
const TRIALS: u32 = 4u;
const PAIRS: u32 = 5u;
const NEXT: u32 = 6u;
const STALLS: u32 = 7u;
const F: u32 = 8u;
const SLOPE: u32 = 9u;
const STEP: u32 = 10u;
const STEP_LO: u32 = 11u;
const F_LO: u32 = 12u;
const SLOPE_LO: u32 = 13u;
const STEP_HI: u32 = 14u;
const SCALE: u32 = 15u;
const GNORM: u32 = 16u;

// Status codes (those of the report file) and phases.
const CONVERGED: u32 = 0u;
const MAX_ITER: u32 = 1u;
const SEARCH_FAILED: u32 = 2u;
const NOT_FINITE: u32 = 3u;
const ACTIVE: u32 = 255u;
// The line search's verdict that takes the trial.
const TAKE: u32 = 256u;
const START: u32 = 0u;
const SEARCHING: u32 = 1u;

// The driver's constants (see `src/minimize/driver.rs`).
const C1: f32 = 1e-4;
const C2: f32 = 0.9;
const MAX_TRIALS: u32 = 40u;
const WOLFE_TRIALS: u32 = 12u;
const ROUNDING: f32 = 4.0;
const JUMP: f32 = 10.0;
const DAMPING_TRIES: u32 = 30u;
const EPSILON: f32 = 1.1920929e-7;

const NEWTON: u32 = 0u;
const GAUSS_NEWTON: u32 = 1u;
const LBFGS: u32 = 2u;
const GD: u32 = 3u;

var<private> t: u32;
var<private> cnt: u32;

fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

fn infinity() -> f32 {
    return bitcast<f32>(0x7f800000u);
}

fn st(offset: u32) -> f32 {
    return state[offset * cnt + t];
}

fn set_st(offset: u32, v: f32) {
    state[offset * cnt + t] = v;
}

fn field(k: u32) -> u32 {
    return items[k * cnt + t];
}

fn set_field(k: u32, v: u32) {
    items[k * cnt + t] = v;
}

fn ffield(k: u32) -> f32 {
    return bitcast<f32>(items[k * cnt + t]);
}

fn set_ffield(k: u32, v: f32) {
    items[k * cnt + t] = bitcast<u32>(v);
}

fn trial(e: u32) -> f32 {
    return inputs[(VAR_BASE + e) * cnt + t];
}

fn set_trial(e: u32, v: f32) {
    inputs[(VAR_BASE + e) * cnt + t] = v;
}

fn res_f() -> f32 {
    if (F_SHARED) {
        return consts[F_BASE];
    }
    return outs[F_BASE * cnt + t];
}

fn raw_g(e: u32) -> f32 {
    if (G_SHARED) {
        return consts[G_BASE + e];
    }
    return outs[(G_BASE + e) * cnt + t];
}

// The gradient at the trial; for a symmetric variable its symmetric part (see `symmetrize`
// in the driver).
fn res_g(e: u32) -> f32 {
    if (SYM_SIDE > 0u) {
        let i = e / SYM_SIDE;
        let j = e % SYM_SIDE;
        if (i != j) {
            return (raw_g(i * SYM_SIDE + j) + raw_g(j * SYM_SIDE + i)) * 0.5;
        }
    }
    return raw_g(e);
}

fn res_h(i: u32, j: u32) -> f32 {
    if (H_KIND == 2u) {
        return consts[H_BASE + i * N + j];
    }
    return outs[(H_BASE + i * N + j) * cnt + t];
}

fn has_lower() -> bool {
    return LOWER != 0u;
}

fn has_upper() -> bool {
    return UPPER != 0u;
}

fn lower(e: u32) -> f32 {
    if (LOWER == 1u) {
        return consts[LB_BASE + e];
    }
    return bounds[e * cnt + t];
}

fn upper(e: u32) -> f32 {
    if (UPPER == 1u) {
        return consts[UB_BASE + e];
    }
    return bounds[(N + e) * cnt + t];
}

fn project(e: u32, v: f32) -> f32 {
    var p = v;
    if (has_lower() && p < lower(e)) {
        p = lower(e);
    }
    if (has_upper() && p > upper(e)) {
        p = upper(e);
    }
    return p;
}

// `max_e |x_e - P(x_e - g_e)|`; a component no bound clips is `|g_e|` itself (computing it
// as a difference would lose a small gradient next to a large point in float32).
fn projected_gradient_norm() -> f32 {
    var norm = 0.0;
    for (var e = 0u; e < N; e++) {
        let x = st(SX + e);
        let g = st(SG + e);
        let moved = x - g;
        var component = abs(g);
        if (has_lower() && moved < lower(e)) {
            component = abs(x - lower(e));
        } else if (has_upper() && moved > upper(e)) {
            component = abs(x - upper(e));
        }
        if (!finite(component)) {
            return infinity();
        }
        norm = max(norm, component);
    }
    return norm;
}

// Factors the `m`×`m` matrix at state offset `base` in place (lower triangle); false when a
// pivot is not positive and finite. The same arithmetic as `minimize::linalg::cholesky`.
fn cholesky(base: u32, m: u32) -> bool {
    for (var j = 0u; j < m; j++) {
        var pivot = st(base + j * m + j);
        for (var k = 0u; k < j; k++) {
            let l = st(base + j * m + k);
            pivot -= l * l;
        }
        if (!(pivot > 0.0) || !finite(pivot)) {
            return false;
        }
        let root = sqrt(pivot);
        set_st(base + j * m + j, root);
        for (var i = j + 1u; i < m; i++) {
            var v = st(base + i * m + j);
            for (var k = 0u; k < j; k++) {
                v -= st(base + i * m + k) * st(base + j * m + k);
            }
            set_st(base + i * m + j, v / root);
        }
    }
    return true;
}

fn factor_entry(from_consts: bool, index: u32) -> f32 {
    if (from_consts) {
        return consts[SF_BASE + index];
    }
    return st(SFAC + index);
}

// Solves `L*L'*z = dir` in place in the state's `dir`, with the factor of the shared
// curvature or the item's own.
fn cholesky_solve(from_consts: bool) {
    for (var i = 0u; i < N; i++) {
        var v = st(SDIR + i);
        for (var k = 0u; k < i; k++) {
            v -= factor_entry(from_consts, i * N + k) * st(SDIR + k);
        }
        set_st(SDIR + i, v / factor_entry(from_consts, i * N + i));
    }
    for (var r = 0u; r < N; r++) {
        let i = N - 1u - r;
        var v = st(SDIR + i);
        for (var k = i + 1u; k < N; k++) {
            v -= factor_entry(from_consts, k * N + i) * st(SDIR + k);
        }
        set_st(SDIR + i, v / factor_entry(from_consts, i * N + i));
    }
}

// The curvature restricted to the free variables, plus `lambda` on the diagonal, into the
// item's factor.
fn load_reduced(lambda: f32) {
    for (var i = 0u; i < N; i++) {
        for (var j = 0u; j < N; j++) {
            var v = res_h(i, j);
            if (st(SACT + i) != 0.0 || st(SACT + j) != 0.0) {
                v = select(0.0, 1.0, i == j);
            }
            if (i == j) {
                v += lambda;
            }
            set_st(SFAC + i * N + j, v);
        }
    }
}

// Factors the reduced curvature, adding `lambda*I` with a growing `lambda` while that fails
// (Levenberg-Marquardt damping), as `factor_damped` in the driver.
fn factor_damped() -> bool {
    // One call of `cholesky` in the loop (each call is inlined: a compiler's time grows with
    // every copy): try 0 undamped, then damped tries with a growing `lambda`.
    var lambda = 0.0;
    for (var k = 0u; k <= DAMPING_TRIES; k++) {
        if (k == 1u) {
            var largest = 0.0;
            for (var i = 0u; i < N; i++) {
                var v = abs(res_h(i, i));
                if (st(SACT + i) != 0.0) {
                    v = 1.0;
                }
                if (!finite(v)) {
                    return false;
                }
                largest = max(largest, v);
            }
            lambda = 1e-6 * max(largest, 1e-12);
        } else if (k > 1u) {
            lambda *= 10.0;
        }
        load_reduced(lambda);
        if (cholesky(SFAC, N)) {
            return true;
        }
    }
    return false;
}

// Marks in the state's `act` the variables a bound holds and the gradient pushes against
// (Bertsekas' epsilon-active set); returns whether any is.
fn active_set() -> bool {
    for (var e = 0u; e < N; e++) {
        set_st(SACT + e, 0.0);
    }
    if (!has_lower() && !has_upper()) {
        return false;
    }
    var scale = 1.0;
    for (var e = 0u; e < N; e++) {
        scale = max(scale, abs(st(SX + e)));
    }
    let width = min(projected_gradient_norm(), 1e-3 * scale);
    var any = false;
    for (var e = 0u; e < N; e++) {
        let x = st(SX + e);
        let g = st(SG + e);
        let at_lower = has_lower() && x <= lower(e) + width && g > 0.0;
        let at_upper = has_upper() && x >= upper(e) - width && g < 0.0;
        if (at_lower || at_upper) {
            set_st(SACT + e, 1.0);
            any = true;
        }
    }
    return any;
}

// Whether a variable declared `spd(n)` is positive definite at the trial (always true for
// other variables).
fn inside_cone() -> bool {
    if (SPD_SIDE == 0u) {
        return true;
    }
    for (var e = 0u; e < N; e++) {
        set_st(SCONE + e, trial(e));
    }
    return cholesky(SCONE, SPD_SIDE);
}

// Ends the item: its point (the trial if it never had a finite start) and its report.
fn finish(status: u32) {
    set_field(STATUS, status);
    let slot = field(ID);
    let start = field(PHASE) == START;
    for (var e = 0u; e < N; e++) {
        var v = st(SX + e);
        if (start) {
            v = trial(e);
        }
        results[slot * N + e] = v;
    }
    let report = P.block_items * N + slot * 4u;
    results[report] = f32(status);
    results[report + 1u] = f32(field(ITERS));
    results[report + 2u] = ffield(F);
    results[report + 3u] = ffield(GNORM);
}

// Writes `P(x + step*d)` into the trial point.
fn place_trial() {
    let step = ffield(STEP);
    for (var e = 0u; e < N; e++) {
        set_trial(e, project(e, st(SX + e) + step * st(SD + e)));
    }
}

// The search direction at the current point, into `d`, with the slope and the first trial
// step, as `Context::direction` in the driver; false when there is no descent direction.
fn direction() -> bool {
    let any_active = active_set();
    var infinity_norm = 0.0;
    for (var e = 0u; e < N; e++) {
        infinity_norm = max(infinity_norm, abs(st(SG + e)));
        var v = st(SG + e);
        if (st(SACT + e) != 0.0) {
            v = 0.0;
        }
        set_st(SDIR + e, v);
    }
    var first_step = 1.0;
    var fallback = false;
    if (METHOD == NEWTON || METHOD == GAUSS_NEWTON) {
        if (SHARED_FACTOR && !any_active) {
            cholesky_solve(true);
        } else if (H_KIND != 0u) {
            for (var e = 0u; e < N; e++) {
                if (st(SACT + e) != 0.0) {
                    let h = res_h(e, e);
                    var held = 1.0;
                    if (h > 0.0 && finite(h)) {
                        held = 1.0 / h;
                    }
                    set_st(SDIR + e, st(SG + e) * held);
                }
            }
            if (factor_damped()) {
                cholesky_solve(false);
            } else {
                fallback = true;
            }
        } else {
            fallback = true;
        }
    } else if (METHOD == LBFGS) {
        let pairs = field(PAIRS);
        let next = field(NEXT);
        for (var j = 0u; j < pairs; j++) {
            let k = (next + MEMORY - 1u - j) % MEMORY;
            var sd = 0.0;
            for (var e = 0u; e < N; e++) {
                sd += st(SS + k * N + e) * st(SDIR + e);
            }
            let a = st(SRHO + k) * sd;
            set_st(SALPHA + j, a);
            for (var e = 0u; e < N; e++) {
                set_st(SDIR + e, st(SDIR + e) - a * st(SY + k * N + e));
            }
        }
        var gamma = 1.0;
        if (pairs > 0u) {
            gamma = ffield(SCALE);
            for (var e = 0u; e < N; e++) {
                set_st(SDIR + e, st(SDIR + e) * gamma);
            }
        }
        for (var r = 0u; r < pairs; r++) {
            let j = pairs - 1u - r;
            let k = (next + MEMORY - 1u - j) % MEMORY;
            var yd = 0.0;
            for (var e = 0u; e < N; e++) {
                yd += st(SY + k * N + e) * st(SDIR + e);
            }
            let step = st(SALPHA + j) - st(SRHO + k) * yd;
            for (var e = 0u; e < N; e++) {
                set_st(SDIR + e, st(SDIR + e) + step * st(SS + k * N + e));
            }
        }
        for (var e = 0u; e < N; e++) {
            if (st(SACT + e) != 0.0) {
                set_st(SDIR + e, st(SG + e) * gamma);
            }
        }
        if (pairs == 0u) {
            first_step = 1.0 / max(infinity_norm, 1.0);
        }
    } else {
        for (var e = 0u; e < N; e++) {
            set_st(SDIR + e, st(SG + e));
        }
        if (field(ITERS) > 0u) {
            first_step = ffield(SCALE);
        } else {
            first_step = 1.0 / max(infinity_norm, 1.0);
        }
    }
    var slope = 0.0;
    var usable = !fallback;
    for (var e = 0u; e < N; e++) {
        let d = -st(SDIR + e);
        usable = usable && finite(d);
        set_st(SD + e, d);
        slope += st(SG + e) * d;
    }
    if (!usable || !finite(slope) || !(slope < 0.0)) {
        // Not a descent direction (no positive definite model, rounding): the gradient's.
        slope = 0.0;
        for (var e = 0u; e < N; e++) {
            let g = st(SG + e);
            set_st(SD + e, -g);
            slope -= g * g;
        }
        first_step = 1.0 / max(infinity_norm, 1.0);
        set_field(PAIRS, 0u);
    }
    if (!finite(slope) || !(slope < 0.0)) {
        return false;
    }
    set_ffield(SLOPE, slope);
    set_ffield(STEP, first_step);
    set_ffield(STEP_LO, 0.0);
    set_ffield(F_LO, ffield(F));
    set_ffield(SLOPE_LO, slope);
    set_ffield(STEP_HI, -1.0);
    set_field(TRIALS, 0u);
    return true;
}

// Takes the trial as the new point; tests convergence; sets the next direction and trial.
// Returns ACTIVE, or the status the item finished with.
fn accept() -> u32 {
    let first = field(PHASE) == START;
    let f_old = ffield(F);
    if (!first) {
        set_field(ITERS, field(ITERS) + 1u);
        var ss = 0.0;
        var sy = 0.0;
        var yy = 0.0;
        for (var e = 0u; e < N; e++) {
            let s = trial(e) - st(SX + e);
            let y = res_g(e) - st(SG + e);
            ss += s * s;
            sy += s * y;
            yy += y * y;
        }
        if (sy > EPSILON * sqrt(ss * yy) && sy > 0.0) {
            if (METHOD == GD) {
                set_ffield(SCALE, ss / sy);
            } else {
                set_ffield(SCALE, sy / yy);
            }
            if (MEMORY > 0u) {
                let k = field(NEXT);
                for (var e = 0u; e < N; e++) {
                    set_st(SS + k * N + e, trial(e) - st(SX + e));
                    set_st(SY + k * N + e, res_g(e) - st(SG + e));
                }
                set_st(SRHO + k, 1.0 / sy);
                set_field(NEXT, (k + 1u) % MEMORY);
                set_field(PAIRS, min(field(PAIRS) + 1u, MEMORY));
            }
        }
    }
    for (var e = 0u; e < N; e++) {
        set_st(SX + e, trial(e));
        set_st(SG + e, res_g(e));
    }
    let f = res_f();
    set_ffield(F, f);
    set_field(PHASE, SEARCHING);
    let previous_norm = ffield(GNORM);
    let norm = projected_gradient_norm();
    set_ffield(GNORM, norm);
    if (norm <= P.gtol * max(abs(f), 1.0)) {
        return CONVERGED;
    }
    // Stalled: the objective stopped decreasing and the gradient stopped shrinking, in two
    // steps running that the line search took at once.
    let stalled = !first && norm > 0.5 * previous_norm && field(TRIALS) <= 1u
        && f_old - f <= P.ftol * max(abs(f_old), 1.0);
    if (stalled) {
        set_field(STALLS, field(STALLS) + 1u);
    } else {
        set_field(STALLS, 0u);
    }
    if (field(STALLS) >= 2u) {
        return CONVERGED;
    }
    if (field(ITERS) >= P.max_iter) {
        return MAX_ITER;
    }
    if (!direction()) {
        // No descent direction at all: the free gradient is zero.
        return CONVERGED;
    }
    place_trial();
    return ACTIVE;
}

@compute @workgroup_size(64)
fn update(@builtin(global_invocation_id) id: vec3<u32>) {
    t = id.x + id.y * P.row;
    cnt = P.count;
    if (t >= cnt || field(STATUS) != ACTIVE) {
        return;
    }
    load_config();
    // The verdict on the trial, then one call of `accept` and of `finish` (every call is
    // inlined, and a compiler's time grows with every copy).
    var status = line_search();
    if (status == TAKE) {
        status = accept();
    }
    if (status != ACTIVE) {
        finish(status);
    }
}

// The line search's verdict on the trial: TAKE to accept it, a status when the item has
// finished, ACTIVE when its next trial is placed.
fn line_search() -> u32 {
    let rf = res_f();
    var fin = finite(rf);
    for (var e = 0u; e < N; e++) {
        fin = fin && finite(res_g(e));
    }
    fin = fin && inside_cone();
    if (field(PHASE) == START) {
        if (!fin) {
            set_ffield(F, rf);
            return NOT_FINITE;
        }
        return TAKE;
    }
    // g.(trial - x): the first-order change along the (projected) path.
    var decrease = 0.0;
    for (var e = 0u; e < N; e++) {
        decrease += (trial(e) - st(SX + e)) * st(SG + e);
    }
    let f = ffield(F);
    let noise = ROUNDING * EPSILON * max(abs(f), 1.0);
    let armijo = fin && rf <= f + C1 * decrease + noise && rf >= f + JUMP * decrease - noise;
    let trials = field(TRIALS) + 1u;
    set_field(TRIALS, trials);
    let wolfe_search = METHOD == LBFGS && !has_lower() && !has_upper();
    var step = ffield(STEP);
    if (wolfe_search && trials <= WOLFE_TRIALS) {
        var slope_t = 0.0;
        for (var e = 0u; e < N; e++) {
            slope_t += res_g(e) * st(SD + e);
        }
        let step_lo = ffield(STEP_LO);
        var step_hi = ffield(STEP_HI);
        if (!armijo || (step_lo > 0.0 && rf >= ffield(F_LO))) {
            step_hi = step;
        } else {
            if (abs(slope_t) <= -C2 * ffield(SLOPE)) {
                return TAKE;
            }
            if (step_hi >= 0.0 && slope_t * (step_hi - step_lo) >= 0.0) {
                step_hi = step_lo;
            }
            set_ffield(STEP_LO, step);
            set_ffield(F_LO, rf);
            set_ffield(SLOPE_LO, slope_t);
        }
        set_ffield(STEP_HI, step_hi);
        if (step_hi < 0.0) {
            // Extrapolation doubles the step, but moves no entry by more than the point's
            // own scale (a search must not jump across a region where the objective is
            // undefined into another part of its domain).
            var scale = 1.0;
            var reach = 0.0;
            for (var e = 0u; e < N; e++) {
                scale = max(scale, abs(st(SX + e)));
                reach = max(reach, abs(st(SD + e)));
            }
            var grown = step * 2.0;
            if (reach > 0.0) {
                grown = min(grown, scale / reach);
            }
            if (grown <= step) {
                return TAKE;
            }
            step = grown;
        } else {
            step = 0.5 * (ffield(STEP_LO) + step_hi);
        }
    } else if (armijo) {
        return TAKE;
    } else if (trials >= MAX_TRIALS) {
        return SEARCH_FAILED;
    } else {
        // Backtracking by the minimum of the quadratic through f, the slope and f(t), kept
        // within [0.1, 0.5] of the step.
        var next = 0.5 * step;
        if (finite(rf)) {
            let curvature = rf - f - decrease;
            if (curvature > 0.0) {
                next = clamp(-decrease * step / (2.0 * curvature), 0.1 * step, 0.5 * step);
            }
        }
        let step_lo = ffield(STEP_LO);
        if (wolfe_search && step_lo > 0.0) {
            next = min(step_lo, next);
        }
        step = next;
    }
    set_ffield(STEP, step);
    place_trial();
    return ACTIVE;
}

// counter[0]: active items; counter[1]: the most iterations of a stored item; counter[2]:
// items whose start was not finite.
@compute @workgroup_size(64)
fn select_active(@builtin(global_invocation_id) id: vec3<u32>) {
    t = id.x + id.y * P.row;
    cnt = P.count;
    if (t >= cnt) {
        return;
    }
    let status = field(STATUS);
    atomicMax(&counter[1], field(ITERS));
    if (status == ACTIVE) {
        let k = atomicAdd(&counter[0], 1u);
        keep[k] = t;
    } else if (status == NOT_FINITE && field(ITERS) == 0u) {
        atomicAdd(&counter[2], 1u);
    }
}

// One invocation per element of the compacted buffer: element e of new slot k comes from
// element e of old slot keep[k].
@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) id: vec3<u32>) {
    let i = id.x + id.y * G.row;
    if (i >= G.new_count * G.len) {
        return;
    }
    let e = i / G.new_count;
    let k = i % G.new_count;
    gather_dst[i] = gather_src[e * G.old_count + gather_keep[k]];
}
