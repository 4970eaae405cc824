//! The `matgrad` binary as a user runs it: outputs, error messages with carets, exit codes.

use std::process::Command;

fn matgrad(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_matgrad"))
        .args(args)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn quick_start_prints_the_cookbook_gradient() {
    let (code, out, _) = matgrad(&["grad", "(A*x+b)'*(A*x+b)", "--wrt", "x"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "2*A'*(A*x+b)");
}

#[test]
fn formats() {
    let run = |f: &str| matgrad(&["grad", "(A*x+b)'*(A*x+b)", "--wrt", "x", "--format", f]).1;
    assert_eq!(run("unicode").trim(), "2Aᵀ(Ax + b)");
    assert_eq!(run("latex").trim(), "2 A^\\top \\left(A x + b\\right)");
    let json: serde_json::Value = serde_json::from_str(&run("json")).expect("valid JSON");
    assert_eq!(json["text"], "2*A'*(A*x+b)");
    assert_eq!(json["kind"], "gradient");
    assert_eq!(json["tree"]["op"], "scale");
}

#[test]
fn layouts() {
    let (_, out, _) = matgrad(&["grad", "x'*A*x", "--wrt", "x", "--layout", "numerator"]);
    assert_eq!(out.trim(), "x'*(A+A')");
    let (_, out, _) = matgrad(&["grad", "A*x", "--wrt", "x"]);
    assert_eq!(out.trim(), "A'");
    let (_, out, _) = matgrad(&["grad", "A*x", "--wrt", "x", "--layout", "numerator"]);
    assert_eq!(out.trim(), "A");
}

#[test]
fn hessians() {
    let (code, out, _) = matgrad(&["hessian", "(A*x+b)'*(A*x+b)", "--wrt", "x"]);
    assert_eq!((code, out.trim()), (0, "2*A'*A"));
    let (code, out, _) = matgrad(&["hessian", "x'*A*x", "--wrt", "x", "--times", "v"]);
    assert_eq!((code, out.trim()), (0, "(A+A')*v"));
}

#[test]
fn syntax_errors_point_at_the_token() {
    let (code, _, err) = matgrad(&["grad", "x'*(A*x + ", "--wrt", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("expected an operand"), "{err}");
    assert!(err.contains("  | x'*(A*x + \n  |           ^"), "{err}");
}

#[test]
fn shape_errors_name_both_shapes_and_point_at_the_operator() {
    let (code, _, err) = matgrad(&["grad", "A: matrix(3,4); x: vector(5); x'*A*x", "--wrt", "x"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("cannot multiply row vector(5) by matrix(3,4)"),
        "{err}"
    );
    assert!(
        err.contains("\n  |                                 ^\n"),
        "{err}"
    );
}

#[test]
fn unknown_function_and_arity() {
    let (code, _, err) = matgrad(&["grad", "sum(foo(x))", "--wrt", "x"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unknown function `foo`") && err.contains("    ^^^"),
        "{err}"
    );
    let (code, _, err) = matgrad(&["grad", "tr(X, X)", "--wrt", "X"]);
    assert_eq!(code, 2);
    assert!(err.contains("`tr` takes 1 argument, found 2"), "{err}");
}

#[test]
fn bad_wrt_and_unsupported_kinds_exit_2() {
    let (code, _, err) = matgrad(&["grad", "x'*x", "--wrt", "y"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no variable `y`") && err.contains("the variables are: x"),
        "{err}"
    );
    let (code, _, err) = matgrad(&["grad", "X*Y", "--wrt", "X"]);
    assert_eq!(code, 2);
    assert!(err.contains("higher-order tensor"), "{err}");
    let (code, _, err) = matgrad(&["hessian", "tr(X)", "--wrt", "X"]);
    assert_eq!(code, 2);
    assert!(err.contains("4-tensor"), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    let (code, _, _) = matgrad(&["grad", "x'*x"]);
    assert_eq!(code, 2);
    let (code, _, _) = matgrad(&["grad", "x'*x", "--wrt", "x", "--format", "pdf"]);
    assert_eq!(code, 2);
}

#[test]
fn catalog_reports_every_entry() {
    let (code, out, _) = matgrad(&["catalog"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("70 entries"), "{out}");
    assert!(out.contains("0 unsupported, 0 matgrad wrong"), "{out}");
    assert!(
        out.contains("entries printed wrongly: S29, S30, S39, S60"),
        "{out}"
    );
    let (code, out, _) = matgrad(&["catalog", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
    let rows = v.as_array().expect("an array");
    assert_eq!(rows.len(), matgrad::catalog::CASES.len());
    assert!(rows
        .iter()
        .all(|r| r["verdict"].is_string() && r["id"].is_string()));
}

#[test]
fn explain_shows_the_chosen_order_and_what_is_hoisted() {
    let (code, out, err) = matgrad(&[
        "explain",
        "C: matrix(16,16); X: matrix(16,16); a: vector(16); a'*X'*C*X*a",
        "--wrt",
        "X",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("derivative: (C+C')*X*a*a'"), "{out}");
    // C+C' once per batch; X*a (not (C+C')*X) per item: 2*16*16 operations.
    let once = &out[out.find("once per batch:").unwrap()..out.find("per item:").unwrap()];
    assert!(once.contains("t0 + t1") || once.contains("+"), "{out}");
    let per_item = &out[out.find("per item:").unwrap()..];
    assert!(
        per_item.contains("16×1") && per_item.contains("512 flops"),
        "{out}"
    );
    assert!(
        !per_item.contains("8192 flops"),
        "a 16×16×16 product per item: {out}"
    );
    assert!(out.contains("1536 flops and 2048 bytes per item"), "{out}");
    let (code, out, _) = matgrad(&["explain", "x'*A*x", "--wrt", "x", "--wgsl"]);
    assert_eq!(code, 0);
    assert!(out.contains("@compute"), "{out}");
}
