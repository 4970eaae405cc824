//! The whole seed catalog, as CI runs it: every variant is derived, matgrad's formula agrees
//! with finite differences, nothing is unsupported, and the printed formulas found wrong are
//! exactly the ones worked out by hand:
//! - S29 `tr(X'*A*X)`: the gradient is `(A+A')*X`, not `X'*(A+A')` (which does not even
//!   have the shape of `X` when `X` is not square);
//! - S30 `tr(A*X'*X)`: the gradient is `X*(A+A')`, not `(A+A')*X`;
//! - S39 `det(X'*C*X)` for a general `C`: `(C+C')*X*inv(X'*C*X)` holds only for a symmetric
//!   `C`; in general it is `C*X*inv(X'*C*X) + C'*X*inv(X'*C'*X)`, times the determinant;
//! - S60 (numerator layout) `x'*A*x`: `x'*(A+A')`, not `2*x'*(A+A')`.

use std::collections::BTreeSet;

use matgrad::catalog::{run, Verdict, CASES};

#[test]
fn every_seed_identity_is_decided() {
    let reports = run(1);
    assert_eq!(reports.len(), CASES.len());
    let ids: BTreeSet<&str> = CASES.iter().map(|c| c.id).collect();
    assert_eq!(ids.len(), 70, "S01–S70 all encoded");
    for r in &reports {
        assert!(
            !matches!(
                r.verdict,
                Verdict::MatgradWrong { .. } | Verdict::Unsupported { .. }
            ),
            "{} {} by {}: {:?}",
            r.id,
            r.function,
            r.wrt,
            r.verdict
        );
        assert_eq!(
            r.points,
            matgrad::catalog::POINTS,
            "{}: every point compared",
            r.id
        );
    }
    let wrong: BTreeSet<&str> = reports
        .iter()
        .filter(|r| matches!(r.verdict, Verdict::PrintedFormulaWrong { .. }))
        .map(|r| r.id.as_str())
        .collect();
    let expected: BTreeSet<&str> = ["S29", "S30", "S39", "S60"].into_iter().collect();
    assert_eq!(wrong, expected);
}

#[test]
fn verdicts_do_not_depend_on_the_seed() {
    let a: Vec<&str> = run(2).iter().map(|r| r.verdict.label()).collect();
    let b: Vec<&str> = run(3).iter().map(|r| r.verdict.label()).collect();
    assert_eq!(a, b);
}

#[test]
fn conditional_entries_are_checked_with_and_without_their_condition() {
    // S08 and S16 appear both for a general and for a symmetric C.
    for id in ["S08", "S16"] {
        let conditions: Vec<&str> = CASES
            .iter()
            .filter(|c| c.id == id)
            .map(|c| c.condition)
            .collect();
        assert!(
            conditions.contains(&"") && conditions.contains(&"C symmetric"),
            "{id}"
        );
    }
}
