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
