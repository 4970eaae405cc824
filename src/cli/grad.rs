//! `matgrad grad` and `matgrad hessian`: derive, print in the chosen format.

use matgrad::diff::{differentiate, Derivative, Kind, Layout, Request};
use matgrad::print::{self, Format};
use matgrad::types::check_program;
use serde_json::json;

/// `matgrad grad`: the first derivative in `layout`.
pub fn grad(program: &str, wrt: &str, layout: Layout, format: Format) -> u8 {
    derive_and_print(program, wrt, &Request::Derivative, layout, format)
}

/// `matgrad hessian`: the Hessian, or with `times` the Hessian-vector product.
pub fn hessian(program: &str, wrt: &str, times: Option<String>, format: Format) -> u8 {
    let request = match times {
        Some(name) => Request::HessianTimes(name),
        None => Request::Hessian,
    };
    derive_and_print(program, wrt, &request, Layout::Gradient, format)
}

fn derive_and_print(
    source: &str,
    wrt: &str,
    request: &Request,
    layout: Layout,
    format: Format,
) -> u8 {
    let derivative = check_program(source).and_then(|p| differentiate(p, wrt, request, layout));
    match derivative {
        Ok(d) => {
            outln!("{}", render(&d, format));
            0
        }
        Err(e) => crate::report(&e, source),
    }
}

fn render(d: &Derivative, format: Format) -> String {
    let g = &d.program.graph;
    if format != Format::Json {
        return print::render(g, d.node, format);
    }
    let kind = match d.kind {
        Kind::Gradient => "gradient",
        Kind::Jacobian => "jacobian",
        Kind::ByScalar => "derivative by a scalar",
        Kind::Hessian => "hessian",
        Kind::HessianVector => "hessian-vector product",
    };
    let formats = print::all_formats(g, d.node);
    let value = json!({
        "wrt": g.vars[d.wrt as usize].name,
        "kind": kind,
        "layout": match d.layout { Layout::Gradient => "gradient", Layout::Numerator => "numerator" },
        "shape": g.describe_shape(d.shape()),
        "text": formats.text,
        "unicode": formats.unicode,
        "latex": formats.latex,
        "tree": formats.tree,
    });
    print::pretty_json(&value)
}
