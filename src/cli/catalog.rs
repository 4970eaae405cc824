//! `matgrad catalog`: every seed identity decided by computation, as text or JSON.

use matgrad::catalog::{self, Verdict};
use matgrad::print;

/// `matgrad catalog`: exit status 1 when matgrad is wrong on an entry or cannot derive it.
pub fn catalog(json: bool, seed: u64) -> u8 {
    let reports = catalog::run(seed);
    let failed = reports.iter().any(|r| {
        matches!(
            r.verdict,
            Verdict::MatgradWrong { .. } | Verdict::Unsupported { .. }
        )
    });
    if json {
        outln!("{}", print::pretty_json(&reports));
        return u8::from(failed);
    }
    for r in &reports {
        let condition = if r.condition.is_empty() {
            String::new()
        } else {
            format!(" [{}]", r.condition)
        };
        let kind = if r.kind == "hessian" {
            "Hessian of "
        } else {
            ""
        };
        let layout = if r.layout == "numerator" {
            " (numerator layout)"
        } else {
            ""
        };
        outln!(
            "{:<4} {kind}{} by {}{condition}{layout}: {}",
            r.id,
            r.function,
            r.wrt,
            r.verdict.label()
        );
        match &r.verdict {
            Verdict::Agrees => outln!("       {}", r.derived),
            Verdict::PrintedFormulaWrong { why } => {
                outln!("       printed: {}   ({why})", r.printed);
                outln!("       correct: {}", r.derived);
            }
            Verdict::Unsupported { why } | Verdict::MatgradWrong { why } => {
                outln!("       {why}")
            }
        }
    }
    let count = |label: &str| {
        reports
            .iter()
            .filter(|r| r.verdict.label() == label)
            .count()
    };
    let mut entries: Vec<&str> = reports.iter().map(|r| r.id.as_str()).collect();
    entries.dedup();
    let mut wrong: Vec<&str> = reports
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::PrintedFormulaWrong { .. }))
        .map(|r| r.id.as_str())
        .collect();
    wrong.dedup();
    outln!(
        "\n{} entries, {} variants: {} agree, {} printed formula wrong, {} unsupported, {} matgrad wrong",
        entries.len(),
        reports.len(),
        count("agrees"),
        count("printed formula wrong"),
        count("unsupported"),
        count("matgrad wrong")
    );
    outln!("entries printed wrongly: {}", wrong.join(", "));
    u8::from(failed)
}
