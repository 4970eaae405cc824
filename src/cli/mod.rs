//! The command line's subcommands that need more than a few lines (the binary's own modules),
//! and what several of them share: refusing outputs that would destroy a file, and the warning
//! for arrays no variable reads.

use std::path::Path;

pub mod bench;
pub mod minimize;

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
