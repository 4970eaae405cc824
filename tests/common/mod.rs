//! Helpers shared by the pipeline tests.

#![allow(dead_code)]

use matgrad::diff::{differentiate, Derivative, Layout, Request};
use matgrad::eval::{evaluate, Env, Mat};
use matgrad::types::{check_program, check_program_with_shape};
use matgrad::verify::{
    compare, dimension_sizes, random_point, relative_error, translate_env, Comparison,
};

/// Derives `wrt` of `source`, panicking with the rendered error.
pub fn derive(source: &str, wrt: &str, request: Request, layout: Layout) -> Derivative {
    let program = check_program(source).unwrap_or_else(|e| panic!("{}", e.render(source)));
    differentiate(program, wrt, &request, layout)
        .unwrap_or_else(|e| panic!("d/d{wrt} of {source}: {}", e.render(source)))
}

/// The first usable random point (seeds `seed`, `seed+1`, …) and the comparison there.
pub fn first_usable(d: &Derivative, seed: u64, tries: u64) -> Option<(Env, Comparison)> {
    let sizes = dimension_sizes(&d.program.graph);
    (0..tries).find_map(|k| {
        let env = random_point(&d.program.graph, &sizes, seed.wrapping_add(k));
        compare(d, &env).ok().map(|c| (env, c))
    })
}

/// Parses `text` with the declarations of `source` and the derivative's shape, and
/// evaluates it at `env`.
pub fn evaluate_printed(
    d: &Derivative,
    source: &str,
    text: &str,
    env: &Env,
) -> Result<Mat, String> {
    let decls: String = match source.rfind(';') {
        Some(i) => source[..=i].to_string(),
        None => String::new(),
    };
    let full = format!("{decls} {text}");
    let g = &d.program.graph;
    let p = check_program_with_shape(&full, Some((g, d.shape()))).map_err(|e| e.render(&full))?;
    let penv = translate_env(g, env, &p.graph).ok_or("the point does not translate")?;
    evaluate(&p.graph, p.root, &penv).map_err(|e| e.to_string())
}

/// `‖a − b‖ / max(‖b‖, 1e-8)`.
pub fn rel(a: &Mat, b: &Mat) -> f64 {
    relative_error(a, b)
}

/// The request for a derivative or a Hessian, derived (gradient layout), panicking with the
/// rendered error.
pub fn derive_for(source: &str, wrt: &str, hessian: bool) -> Derivative {
    let request = if hessian {
        Request::Hessian
    } else {
        Request::Derivative
    };
    derive(source, wrt, request, Layout::Gradient)
}

/// Per-item points for `plan`: batched variables drawn per item, shared ones from one base
/// point.
pub fn points(d: &Derivative, plan: &matgrad::plan::Plan, batch: usize, seed: u64) -> Vec<Env> {
    let g = &d.program.graph;
    let sizes = dimension_sizes(g);
    let base = random_point(g, &sizes, seed);
    let mut batched = vec![false; g.vars.len()];
    for input in plan.inputs() {
        batched[input.var as usize] = input.batched;
    }
    (0..batch)
        .map(|i| {
            let mut env = random_point(g, &sizes, seed * 10_007 + i as u64 + 1);
            for (v, value) in env.values.iter_mut().enumerate() {
                if !batched[v] {
                    value.clone_from(&base.values[v]);
                }
            }
            env
        })
        .collect()
}

/// A random program derived by its variable, with a random shared/batched assignment taken
/// from the seed's bits (the variable is always batched); `None` when the derivative is a
/// higher-order tensor.
pub fn random_case(
    seed: u64,
    offset: u64,
) -> Option<(matgrad::generate::Generated, Derivative, Vec<bool>)> {
    use matgrad::generate::{random_program, Class};
    let class = [Class::Scalar, Class::Scalar, Class::VecN][seed as usize % 3];
    let generated = random_program(seed + offset, 1 + (seed % 4) as usize, class);
    let p = check_program(&generated.source).unwrap();
    let d = differentiate(p, &generated.wrt, &Request::Derivative, Layout::Gradient).ok()?;
    let batched = (0..d.program.graph.vars.len())
        .map(|v| (seed >> (v % 8)) & 1 == 1 || v as u32 == d.wrt)
        .collect();
    Some((generated, d, batched))
}

/// A generated program (`random_program`) with its dimensions n and m declared anew: its
/// declarations end with `X: matrix(n,m);` and the expression follows.
#[allow(dead_code)]
pub fn with_dimensions(source: &str, n: usize, m: usize) -> String {
    let at = source
        .find("X: matrix(")
        .expect("the generator declares X last");
    let end = at + source[at..].find(';').expect("a declaration ends with ;") + 1;
    format!(
        "a: scalar; b: scalar; x: vector({n}); y: vector({n}); z: vector({m}); \
         A: matrix({m},{n}); B: matrix({n},{n}); C: symmetric({n}); S: spd({n}); X: matrix({n},{m}); {}",
        &source[end..]
    )
}

/// A GPU context with `options`, or `None` with a loud message: with `CI=true` a missing
/// adapter is a failure, elsewhere the GPU part of a test is skipped and says why.
pub fn gpu_or_skip(options: &matgrad::gpu::GpuOptions) -> Option<matgrad::gpu::GpuContext> {
    match matgrad::gpu::GpuContext::new(options) {
        Ok(ctx) => Some(ctx),
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and no GPU: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: the GPU part of this test, without an adapter: {e}");
            None
        }
    }
}
