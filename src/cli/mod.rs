//! The command line's subcommands, one file each (the binary's own modules; `main.rs` holds
//! the argument types and turns errors into exit codes), and what several of them share:
//! `--dims` and `--batched` parsing, deriving or reporting, the GPU when there is one,
//! refusing outputs that would destroy a file, and the warnings about the inputs.

use std::collections::HashMap;
use std::path::Path;

use matgrad::diff::{differentiate, Derivative, Layout, Request};
use matgrad::executor::{open_gpus, Device};
use matgrad::gpu::GpuContext;
use matgrad::types::check_program;

pub mod bench;
pub mod catalog;
pub mod check;
pub mod devices;
pub mod eval;
pub mod explain;
pub mod grad;
pub mod minimize;

/// `NAME=SIZE` pairs from `--dims`; a malformed one is reported, giving the exit status.
pub fn parse_dims(dims: &[String]) -> Result<HashMap<String, usize>, u8> {
    let mut sizes = HashMap::new();
    for entry in dims {
        match entry
            .split_once('=')
            .map(|(k, v)| (k.trim(), v.trim().parse::<usize>()))
        {
            Some((name, Ok(size))) => {
                if let Some(earlier) = sizes.insert(name.to_string(), size) {
                    errorln!(
                        "`--dims`: `{name}` is given twice ({name}={earlier} and \
                         {name}={size})"
                    );
                    return Err(2);
                }
            }
            _ => {
                errorln!("`--dims {entry}`: expected NAME=SIZE, e.g. m=4");
                return Err(2);
            }
        }
    }
    Ok(sizes)
}

/// Checks and differentiates a program; a bad one is reported, giving the exit status.
pub fn derive_or_report(
    program: &str,
    wrt: &str,
    hessian: bool,
    layout: Layout,
) -> Result<Derivative, u8> {
    let request = if hessian {
        Request::Hessian
    } else {
        Request::Derivative
    };
    check_program(program)
        .and_then(|p| differentiate(p, wrt, &request, layout))
        .map_err(|e| crate::report(&e, program))
}

/// The derivative (gradient layout) and the `--dims` sizes, or the exit status of the error
/// reported (`check` and `explain`).
pub fn derive_at_sizes(
    program: &str,
    wrt: &str,
    hessian: bool,
    dims: &[String],
) -> Result<(Derivative, HashMap<String, usize>), u8> {
    let derivative = derive_or_report(program, wrt, hessian, Layout::Gradient)?;
    Ok((derivative, parse_dims(dims)?))
}

/// The batched variables `--batched` names, by default the `--wrt` variable alone.
pub fn batched_or_wrt(batched: Vec<String>, wrt: &str) -> Vec<String> {
    if batched.is_empty() {
        vec![wrt.to_string()]
    } else {
        batched
    }
}

/// The adapter `--adapter` names: a number is its position in `matgrad devices`' list (two
/// identical cards share a name), anything else a part of its name.
pub fn adapter_choice(adapter: Option<String>) -> Option<matgrad::executor::Adapter> {
    use matgrad::executor::Adapter;
    adapter.map(|a| match a.trim().parse::<usize>() {
        Ok(index) => Adapter::Index(index),
        Err(_) => Adapter::Name(a),
    })
}

/// The GPU when an adapter exists (saying on stderr which), else `None` with a note.
pub fn gpu_if_any(adapter: Option<String>) -> Option<GpuContext> {
    let choice = adapter_choice(adapter);
    match open_gpus(Device::Auto, choice.as_ref()) {
        Ok((mut gpus, notes)) => {
            for note in notes {
                eprintln!("note: {note}");
            }
            let ctx = gpus.pop()?;
            let a = ctx.adapter();
            eprintln!(
                "note: using GPU adapter `{}` ({}, {})",
                a.name, a.backend, a.device_type
            );
            Some(ctx)
        }
        Err(e) => {
            eprintln!("note: {e}; using the CPU path");
            None
        }
    }
}

/// Refuses outputs that would replace the inputs or one another: `outputs` are `(option,
/// path)` pairs such as `("--out", out)`. Paths are compared after resolving links and `..`
/// where they exist.
pub fn refuse_overwrites(inputs: &Path, outputs: &[(&str, &Path)]) -> Result<(), String> {
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    for (i, &(option, path)) in outputs.iter().enumerate() {
        if same(path, inputs) {
            return Err(format!(
                "`{option} {}` is the inputs file: writing it would destroy the inputs",
                path.display()
            ));
        }
        if let Some(&(other, _)) = outputs[..i].iter().find(|(_, p)| same(p, path)) {
            return Err(format!(
                "`{other}` and `{option}` are the same file `{}`: one would replace the other",
                path.display()
            ));
        }
    }
    Ok(())
}

/// A warning for each array with finite values that float32 cannot hold (magnitudes above
/// 3.4e38 become ±inf; nonzero ones below 1.2e-38 lose digits or become 0), before a float32
/// device reads them: such items come out non-finite or inexact, and the reference does not.
pub fn warn_float32_range(arrays: &[matgrad::batch::NamedArray], inputs: &Path) {
    let mut names: Vec<&matgrad::batch::NamedArray> = arrays.iter().collect();
    names.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    for array in names {
        let over = (array.data.iter())
            .filter(|v| v.is_finite() && v.abs() > f32::MAX as f64)
            .count();
        let under = (array.data.iter())
            .filter(|&&v| v != 0.0 && v.abs() < f32::MIN_POSITIVE as f64)
            .count();
        if over + under > 0 {
            eprintln!(
                "warning: array `{}` in `{}` has {over} values beyond float32's range (above \
                 3.4e38, they become inf) and {under} below it (under 1.2e-38, they lose digits \
                 or become 0) on this float32 device; `--device reference` computes in float64",
                array.name.escape_debug(),
                inputs.display()
            );
        }
    }
}

/// At most this many unused arrays are named in the warning; the rest are counted.
const UNUSED_NAMED: usize = 5;

/// One warning, sorted, for the arrays of `inputs` that name no variable the program reads.
pub fn warn_unused(unused: &[String], inputs: &Path) {
    if unused.is_empty() {
        return;
    }
    let mut names: Vec<&str> = unused.iter().map(String::as_str).collect();
    names.sort_unstable();
    let shown: Vec<String> = names
        .iter()
        .take(UNUSED_NAMED)
        .map(|n| format!("`{}`", n.escape_debug()))
        .collect();
    let rest = names.len().saturating_sub(UNUSED_NAMED);
    let more = if rest > 0 {
        format!(" and {rest} more")
    } else {
        String::new()
    };
    let (noun, verb) = if names.len() == 1 {
        ("array", "is not read")
    } else {
        ("arrays", "are not read")
    };
    eprintln!(
        "warning: {noun} {}{more} in `{}` {verb} by the program; ignored",
        shown.join(", "),
        inputs.display()
    );
}
