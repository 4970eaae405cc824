//! `matgrad explain`: the derived formula, the plan for the given sizes and batched
//! variables, its costs and its GPU kernel; with `--minimize`, what a solve runs.

use matgrad::check::{batched_flags, sizes_with};
use matgrad::minimize::Objective;
use matgrad::types::check_program;

use super::{batched_or_wrt, derive_at_sizes};
use crate::ExplainArgs;

/// `matgrad explain`, from its arguments to the exit status.
pub fn explain(args: ExplainArgs) -> u8 {
    if args.minimize {
        return explain_minimize(&args);
    }
    let (derivative, sizes) =
        match derive_at_sizes(&args.program, &args.wrt, args.hessian, &args.dims) {
            Ok(both) => both,
            Err(code) => return code,
        };
    let batched = batched_or_wrt(args.batched, &args.wrt);
    match matgrad::explain::explain_at_sizes(&derivative, &sizes, &batched, args.wgsl) {
        Ok((text, note)) => {
            if let Some(note) = note {
                eprintln!("note: {note}");
            }
            out!("{text}");
            0
        }
        Err(e) => crate::report(&e, &args.program),
    }
}

/// `matgrad explain --minimize`: see [`matgrad::minimize::explain_minimize`].
fn explain_minimize(args: &ExplainArgs) -> u8 {
    let objective = match check_program(&args.program).and_then(|p| Objective::new(p, &args.wrt)) {
        Ok(o) => o,
        Err(e) => return crate::report(&e, &args.program),
    };
    let dims = match super::parse_dims(&args.dims) {
        Ok(d) => d,
        Err(code) => return code,
    };
    let g = &objective.program.graph;
    let described = sizes_with(g, &dims)
        .and_then(|sizes| Ok((sizes, batched_flags(g, &args.batched)?)))
        .map_err(|e| e.message)
        .and_then(|(sizes, flags)| matgrad::minimize::explain_minimize(&objective, &sizes, &flags));
    match described {
        Ok(text) => {
            out!("{text}");
            0
        }
        Err(message) => {
            errorln!("{message}");
            2
        }
    }
}
