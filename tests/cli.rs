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
fn a_program_may_start_with_a_minus() {
    // A negative log-likelihood is a natural first character, not a flag.
    let (code, out, err) = matgrad(&["grad", "-sum(log(x))", "--wrt", "x"]);
    assert_eq!((code, out.trim()), (0, "-1./x"), "{err}");
    let (code, out, err) = matgrad(&["hessian", "--wrt", "x", "-x'*x"]);
    assert_eq!((code, out.trim()), (0, "-2*eye"), "{err}");
}

#[test]
fn a_letter_rule_repair_is_suggested_and_works() {
    // By the letter rule t is a vector and a a scalar; the help quotes each declaration that
    // makes the program check, after the error's own help, and each quoted program derives.
    for (program, wrt, repair, own_help) in [
        ("tr(inv(A+t*B))", "t", "t: scalar; tr(inv(A+t*B))", None),
        ("log(t^2+1)", "t", "t: scalar; log(t^2+1)", Some("use .^")),
        ("(x'*a)^2", "x", "a: vector; (x'*a)^2", Some("use .^")),
        // No one name does it; the pair does.
        (
            "x: vector; (a'*x)*(b'*x)+1",
            "x",
            "a: vector; b: vector; x: vector; (a'*x)*(b'*x)+1",
            None,
        ),
    ] {
        let (code, _, err) = matgrad(&["grad", program, "--wrt", wrt]);
        assert_eq!(code, 2, "{program}: {err}");
        assert!(err.contains(&format!("`{repair}`")), "{program}: {err}");
        if let Some(own) = own_help {
            let (own_at, repair_at) = (err.find(own), err.find(repair));
            assert!(own_at.is_some() && own_at < repair_at, "{program}: {err}");
        }
        let (code, out, err) = matgrad(&["grad", repair, "--wrt", wrt]);
        assert_eq!(code, 0, "{repair}: {out}{err}");
    }
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
    // The rules that shaped it: (X*a)' = a'*X', and C'*X*a*a' + C*X*a*a' = (C+C')*X*a*a'.
    let rules = out.lines().find_map(|l| l.strip_prefix("simplified by: "));
    let rules: Vec<&str> = rules.expect(&out).split(", ").collect();
    assert!(rules.contains(&"transpose-of-a-product"), "{out}");
    assert!(rules.contains(&"common-factor-pulled-out"), "{out}");
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
    // W2 needs no per-item products of batched values: its CPU blocks are item-major.
    assert!(out.contains("cpu: item-major blocks of"), "{out}");
    // And it says which instruction set the blocks run on here.
    let isa = matgrad::cpu::Isa::fastest().name();
    assert!(out.contains(&format!("compiled for {isa}\n")), "{out}");
    let (code, out, _) = matgrad(&["explain", "x'*A*x", "--wrt", "x", "--wgsl"]);
    assert_eq!(code, 0);
    assert!(out.contains("@compute"), "{out}");
}

#[test]
fn bench_sweeps_print_one_json_object_per_measurement_and_plot() {
    let dir = std::env::temp_dir().join(format!("matgrad-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plot = dir.join("sweep.svg");
    let (code, out, err) = matgrad(&[
        "bench",
        "A: matrix(8,8); x: vector(8); b: vector(8); (A*x+b)'*(A*x+b)",
        "--wrt",
        "x",
        "--batched",
        "A,x,b",
        "--batch",
        "16,300",
        "--device",
        "cpu",
        "--json",
        "--samples",
        "3",
        "--min-time",
        "0",
        "--no-ceilings",
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    for (row, batch) in rows.iter().zip([16.0, 300.0]) {
        assert_eq!(row["batch"].as_f64(), Some(batch));
        let median = row["median_s"].as_f64().expect("median_s");
        assert!(median > 0.0 && median.is_finite());
        // Items per second and GFLOP/s follow from the plan's counts and the median.
        let items = row["items_per_s"].as_f64().unwrap();
        assert!((items * median / batch - 1.0).abs() < 1e-9);
        let flops = row["flops"].as_f64().unwrap();
        // 2*A'*(A*x+b) per item: two 8×8 products, an addition and a scaling.
        assert_eq!(flops, batch * (2.0 * 128.0 + 8.0 + 8.0));
        assert!(row["samples"].as_f64().unwrap() >= 3.0);
    }
    let svg = std::fs::read_to_string(&plot).expect("the plot is written");
    assert!(
        svg.starts_with("<svg") && svg.contains("<polyline"),
        "{svg}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bench_only_runs_the_chosen_workloads() {
    let (code, out, err) = matgrad(&[
        "bench",
        "--workloads",
        "--only",
        "W4,W1",
        "--batch",
        "40",
        "--device",
        "cpu",
        "--json",
        "--samples",
        "2",
        "--min-time",
        "0",
        "--no-ceilings",
    ]);
    assert_eq!(code, 0, "{err}");
    let labels: Vec<String> = out
        .lines()
        .map(|l| {
            let row: serde_json::Value = serde_json::from_str(l).expect("JSON");
            row["label"].as_str().unwrap().to_string()
        })
        .collect();
    // In the workloads' own order, whatever the order asked.
    assert_eq!(labels, ["W1 lsq-shared", "W4 logdet"], "{out}");
    let (code, _, err) = matgrad(&["bench", "--workloads", "--only", "W7"]);
    assert_eq!(code, 2);
    assert!(err.contains("W7") && err.contains("W1, W2"), "{err}");
}

#[test]
fn bench_runs_the_cpu_on_the_instruction_set_asked_for() {
    for isa in ["portable", "avx2", "avx512"] {
        let (code, out, err) = matgrad(&[
            "bench",
            "--workloads",
            "--only",
            "W6",
            "--batch",
            "20",
            "--device",
            "cpu",
            "--json",
            "--samples",
            "1",
            "--min-time",
            "0",
            "--no-ceilings",
            "--cpu-isa",
            isa,
        ]);
        // Which exist depends on the CPU; portable always does.
        if code == 2 && isa != "portable" {
            assert!(
                err.contains("does not run it") && err.contains("portable"),
                "{err}"
            );
            continue;
        }
        assert_eq!(code, 0, "{isa}: {err}");
        let row: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
        let device = row["device"].as_str().unwrap();
        assert!(
            device.starts_with("cpu (") && device.ends_with(&format!(", {isa})")),
            "{device}"
        );
    }
    let (code, _, err) = matgrad(&["bench", "--workloads", "--cpu-isa", "sse"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("sse") && err.contains("avx512, avx2, portable"),
        "{err}"
    );
}

#[test]
fn bench_bad_input_is_reported() {
    let (code, _, err) = matgrad(&["bench", "x'*x", "--batch", "0", "--wrt", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("at least 1"), "{err}");
    let (code, _, err) = matgrad(&["bench", "--wrt", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--workloads"), "{err}");
    let (code, _, err) = matgrad(&["bench", "x'*A*", "--wrt", "x"]);
    assert_eq!(code, 2);
    assert!(err.contains('^'), "{err}");
}

#[test]
fn devices_measure_reports_the_cpu_ceilings() {
    let (code, out, err) = matgrad(&["devices", "--measure", "--json"]);
    // Exit 2 only when an adapter fails to measure; the CPU is always there.
    assert!(code == 0 || code == 2, "{err}");
    let all: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let cpu = &all[0];
    assert!(cpu["device"].as_str().unwrap().starts_with("cpu"));
    assert!(cpu["copy_bytes_per_s"].as_f64().unwrap() > 1e8);
    assert!(cpu["flops_per_s"].as_f64().unwrap() > 1e8);
}

#[test]
fn logistic_gradients_stay_finite_in_float32_at_large_margins() {
    // Margins of a 64×128 logistic regression reach |u| > 88, where exp(u) overflows float32:
    // the gradient must be built as y./(exp(u)+1), not exp(-u)./(exp(-u)+1) (inf/inf).
    let (code, out, err) = matgrad(&[
        "check",
        "X: matrix(64,128); y: vector(64); w: vector(128); sum(log(vector(1)+exp(-y.*(X*w))))",
        "--wrt",
        "w",
        "--batch",
        "300",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("-X'*(y./(exp(y.*(X*w))+vector(1)))"), "{out}");
}

#[test]
fn check_passes_a_derivative_that_is_zero_by_cancellation() {
    // (x.*y)'*(x./y) = x'*x: by y the derivative is exactly 0, computed as the difference of
    // two equal terms; finite differences of the function give only its rounding.
    let (code, out, err) = matgrad(&["check", "(x.*y)'*(x./y)", "--wrt", "y", "--batch", "16"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("vs finite differences") && !out.contains("FAILED"),
        "{out}"
    );
}

#[test]
fn check_holds_a_derivative_that_cancels_to_float32_noise() {
    // exp(log(x))./x - 1 is 0 up to rounding of terms of size 1: float32 gives noise of 1e-7
    // there, which is right, and the check says so rather than reporting a relative error of
    // 1e7 against the reference's 1e-16.
    let (code, out, err) = matgrad(&["check", "sum(exp(log(x))-x)", "--wrt", "x"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cancelled to float32 noise"), "{out}");
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
fn check_resolves_a_small_derivative_of_a_large_value() {
    // Rounding 1e8 puts noise of 1e-4 into each difference quotient: no kink, just a large
    // value (as a sum over 20 000 entries has), and the smoothness test allows for it.
    let (code, out, err) = matgrad(&["check", "sum(x.^2)+1e8", "--wrt", "x"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("FAILED"), "{out}");
}

#[test]
fn check_with_no_point_inside_the_domain_fails_and_says_why() {
    // X'*X is a singular 5×5 matrix for every 2×5 X: logdet is -inf everywhere.
    let (code, out, err) = matgrad(&[
        "check",
        "X: matrix(2,5); logdet(X'*X)",
        "--wrt",
        "X",
        "--batch",
        "4",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("nothing compared") && !out.contains(": ok"),
        "{out}"
    );
    assert!(
        err.contains("no random point") && err.contains("--seed"),
        "{err}"
    );
}

#[test]
fn check_moves_to_sizes_where_the_function_has_a_domain() {
    // At the default sizes X is 3×4 and X'*X a singular 4×4 (logdet -inf everywhere); at
    // 4×3 it is invertible. Sizes the user fixes are kept (the test above).
    let (code, out, err) = matgrad(&["check", "logdet(X'*X)", "--wrt", "X", "--batch", "4"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(!out.contains("FAILED"), "{out}");
    assert!(
        err.contains("no random point was inside the function's domain at the default sizes"),
        "{err}"
    );
    assert!(err.contains("checked at n=4, m=3"), "{err}");
}

/// Runs `matgrad catalog` with its standard output going to `stdout`.
fn catalog_into(stdout: std::process::Stdio) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_matgrad"))
        .arg("catalog")
        .stdout(stdout)
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    // `matgrad catalog | head -1`: a pipe whose reader is already closed, so the first write
    // fails however fast the process is.
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    let (code, err) = catalog_into(writer.into());
    assert_eq!(code, 141, "{err}");
    assert!(err.is_empty(), "no panic, no message: {err}");
}

#[test]
fn output_that_cannot_be_written_is_an_error() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("SKIPPED: no /dev/full on this system");
        return;
    };
    let (code, err) = catalog_into(full.into());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("error: cannot write to standard output"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_batch_larger_than_memory_is_an_error_not_an_abort() {
    if !std::path::Path::new("/proc/meminfo").exists() {
        eprintln!("SKIPPED: no /proc/meminfo to read the available memory from");
        return;
    }
    for args in [
        &["check", "x'*x", "--wrt", "x", "--batch", "1000000000000"][..],
        &[
            "bench",
            "x'*x",
            "--wrt",
            "x",
            "--batch",
            "100000000000000",
            "--device",
            "cpu",
            "--no-ceilings",
        ][..],
    ] {
        let (code, _, err) = matgrad(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("GB available; use a smaller batch") && !err.contains("panicked"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn a_dimension_too_large_for_memory_or_a_kernel_is_an_error_naming_the_size() {
    let huge_dims = [
        &[
            "bench",
            "x: vector(n); x'*x",
            "--wrt",
            "x",
            "--dims",
            "n=4000000000",
            "--batch",
            "1",
        ][..],
        &[
            "check",
            "x: vector(n); x'*x",
            "--wrt",
            "x",
            "--dims",
            "n=4000000000",
        ][..],
        &[
            "check",
            "X: matrix(n,n); tr(X)",
            "--wrt",
            "X",
            "--dims",
            "n=100000000",
        ][..],
    ];
    for args in huge_dims {
        let (code, _, err) = matgrad(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("GB available"), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("memory allocation"),
            "{err}"
        );
    }
    // A size past a 64-bit count, and one past what WGSL indexes: explain still explains the
    // CPU plan, and says why there is no GPU kernel; asked for the WGSL, it is an error.
    let (code, _, err) = matgrad(&[
        "explain",
        "x: vector(n); x'*x",
        "--wrt",
        "x",
        "--dims",
        "n=9000000000000000000",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("more entries than this machine can address"),
        "{err}"
    );
    let explain = [
        "explain",
        "x: vector(n); x'*x",
        "--wrt",
        "x",
        "--dims",
        "n=5000000000",
    ];
    let (code, out, err) = matgrad(&explain);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("per item"), "{out}");
    assert!(
        err.contains("5000000000 entries") && err.contains("4294967295"),
        "{err}"
    );
    let (code, _, err) = matgrad(&[&explain[..], &["--wgsl"]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("past what a GPU kernel can index"), "{err}");
    assert!(!err.contains("internal error"), "{err}");
}

#[test]
fn a_hessian_larger_than_memory_from_a_small_file_is_refused_before_it_is_allocated() {
    use npyz::WriterBuilder;
    use std::io::Write;
    let dir = std::env::temp_dir().join(format!("matgrad-cli-{}-hessian", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // 200 000 entries of x (1.6 MB) make a 200 000 x 200 000 Hessian (320 GB in float64).
    let n = 200_000u64;
    let path = dir.join("x.npz");
    let mut zip = npyz::zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    zip.start_file("x.npy", npyz::zip::write::FileOptions::default())
        .unwrap();
    let mut npy = Vec::new();
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[n])
        .writer(&mut npy)
        .begin_nd()
        .unwrap();
    writer.extend((0..n).map(|i| i as f64)).unwrap();
    writer.finish().unwrap();
    zip.write_all(&npy).unwrap();
    zip.finish().unwrap();
    let out = dir.join("h.npy");
    for device in ["cpu", "reference"] {
        let (code, _, err) = matgrad(&[
            "eval",
            "x: vector(n); (x'*x)^2",
            "--wrt",
            "x",
            "--hessian",
            "--device",
            device,
            "--inputs",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{device}: {err}");
        assert!(err.contains("GB available"), "{device}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn sample_counts_and_times_that_cannot_be_honoured_are_refused() {
    for bad in [
        &["--samples", "0"][..],
        &["--samples", "1000000000"][..],
        &["--min-time", "nan"][..],
        &["--min-time", "-1"][..],
        &["--min-time", "inf"][..],
    ] {
        for base in [
            &[
                "bench",
                "--workloads",
                "--only",
                "W1",
                "--device",
                "cpu",
                "--no-ceilings",
            ][..],
            &["bench", "--minimize-workloads", "--only", "O1"][..],
        ] {
            let args = [base, bad].concat();
            let (code, _, err) = matgrad(&args);
            assert_eq!(code, 2, "{args:?}: {err}");
            assert!(err.contains(bad[0]), "{args:?}: {err}");
        }
    }
}

#[test]
fn a_dimension_given_twice_is_refused() {
    let (code, _, err) = matgrad(&[
        "explain",
        "x: vector(n); x'*x",
        "--wrt",
        "x",
        "--dims",
        "n=3,n=4",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("`n` is given twice (n=3 and n=4)"), "{err}");
}

#[test]
fn the_hessian_vector_product_needs_a_new_variable_name() {
    for (times, message) in [
        ("y+z", "is not a variable name"),
        ("", "is not a variable name"),
        ("1", "is not a variable name"),
        ("exp", "is a word of the language"),
        ("vector", "is a word of the language"),
        ("x", "is already a variable"),
        ("n", "is a dimension of the program"),
    ] {
        let (code, out, err) = matgrad(&[
            "hessian",
            "x: vector(n); x'*x",
            "--wrt",
            "x",
            "--times",
            times,
        ]);
        assert_eq!(code, 2, "--times {times:?}: {out}{err}");
        assert!(err.contains(message), "--times {times:?}: {err}");
    }
    let (code, out, err) = matgrad(&[
        "hessian",
        "x: vector(n); x'*x",
        "--wrt",
        "x",
        "--times",
        "v",
    ]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "2*v");
}

#[test]
fn errors_show_control_characters_escaped() {
    for args in [
        &["grad", "x\u{1b}[31m + )", "--wrt", "x"][..],
        &["grad", "x +\r )", "--wrt", "x"][..],
        &["grad", "x", "--wrt", "\u{1b}[2Jq"][..],
        &[
            "eval",
            "x",
            "--wrt",
            "x",
            "--inputs",
            "/nonexistent/\u{1b}[31m.npz",
            "--out",
            "/tmp/o.npy",
        ][..],
    ] {
        let (code, _, err) = matgrad(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            !err.chars().any(|c| c.is_control() && c != '\n'),
            "{args:?}: raw control character in {err:?}"
        );
        assert!(
            err.contains("\\u{1b}") || err.contains("\\r"),
            "{args:?}: {err}"
        );
    }
}

#[test]
fn closed_standard_output_is_an_error_not_a_silent_success() {
    let bin = env!("CARGO_BIN_EXE_matgrad");
    for command in ["\"$0\" catalog >&-", "\"$0\" grad \"x'*x\" --wrt x >&-"] {
        let out = Command::new("sh")
            .arg("-c")
            .arg(command)
            .arg(bin)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command}: {err}");
        assert!(
            err.contains("standard output: it is closed"),
            "{command}: {err}"
        );
    }
    // Output sent to /dev/null on purpose is not an error.
    let out = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" grad \"x'*x\" --wrt x >/dev/null")
        .arg(bin)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn check_finds_points_in_narrow_domains_and_accepts_exact_zeros() {
    for (program, wrt, note) in [
        // x.^i needs x > 0 for a non-integer i, and x is shared.
        (
            "x: vector(n); i: scalar; x.^i",
            "i",
            Some("drew x, i positive"),
        ),
        (
            "a: vector; b: vector; a'*log(sin(X))*b",
            "X",
            Some("positive"),
        ),
        (
            "a: vector; b: vector; a'*log(A*sin(X)*B)*b",
            "X",
            Some("positive"),
        ),
        // Constant through ill-conditioned operations: the derivative is exactly zero.
        (
            "X: matrix(n,n); C: matrix(n,n); B: matrix(n,n); tr(inv(X'*C*X)*(X'*B*X))",
            "X",
            None,
        ),
        ("X: matrix(n,n); det(X)*det(inv(X))", "X", None),
    ] {
        for seed in ["1", "2", "3"] {
            let (code, out, err) = matgrad(&["check", program, "--wrt", wrt, "--seed", seed]);
            assert_eq!(code, 0, "{program} by {wrt}, seed {seed}: {out}{err}");
            assert!(out.contains("reference  vs finite differences"), "{out}");
            if let Some(note) = note {
                assert!(err.contains(note), "{program}: {err}");
            }
        }
    }
    // A function with no point in its domain anywhere still fails, and says what was tried.
    let (code, _, err) = matgrad(&[
        "check",
        "x: vector(n); sum(log(-x.*x-vector(1)))",
        "--wrt",
        "x",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("positive inputs") && err.contains("input by input"),
        "{err}"
    );
}

#[test]
fn constants_past_float64s_range_are_errors_and_never_print_as_inf() {
    for (program, message) in [
        ("x: vector(3); 1e999*sum(x)", "past float64's range"),
        (
            "x: vector(3); 1e-999*sum(x)",
            "below float64's normal range",
        ),
        (
            "x: vector(3); 1e-320*sum(x)",
            "below float64's normal range",
        ),
        ("x: vector(3); 1e308*1e308*sum(x)", "past float64's range"),
        ("x: scalar; exp(1000)*x", "past float64's range"),
        // Folded constants that underflow, however the factors are grouped.
        ("x: vector(3); 1e-200*1e-200*sum(x)", "1e-200 times 1e-200"),
        ("x: vector(3); sum(x)*1e-200*1e-200", "underflow"),
        ("x: vector(3); (1e-200*x)'*(1e-200*x)", "underflow"),
        ("x: scalar; exp(-800)*x", "exp(-800) is 0e0"),
    ] {
        let (code, out, err) = matgrad(&["grad", program, "--wrt", "x"]);
        assert_eq!(code, 2, "{program}: {out}{err}");
        assert!(err.contains(message), "{program}: {err}");
        assert!(!out.contains("inf"), "{program}: {out}");
    }
    // Zero written with a large exponent is zero; a small normal number is kept.
    let (code, out, _) = matgrad(&["grad", "x: scalar; 0e-999*x + 2.5e-308*x", "--wrt", "x"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "2.5e-308");
    // Small products inside the normal range are kept.
    let (code, out, err) = matgrad(&["grad", "x: scalar; 1e-150*1e-150*x", "--wrt", "x"]);
    assert_eq!((code, out.trim()), (0, "1e-300"), "{err}");
}

#[test]
fn fractional_exponents_print_as_fractions_in_every_format() {
    for (program, format, expected) in [
        ("sum(x.^(2/3))", "text", "2/3*x.^(-1/3)"),
        (
            "sum(x.^(2/3))",
            "latex",
            "\\frac{2}{3} x^{\\circ -\\frac{1}{3}}",
        ),
        (
            "a: vector; c: vector; b: vector; (a'*c*b'*x)^(1/3)",
            "text",
            "1/3*(a'*c)*b/(a'*c*b'*x)^(2/3)",
        ),
        // Short decimals stay decimals, as for coefficients.
        ("sum(x.^(5/4))", "text", "1.25*x.^0.25"),
    ] {
        let (code, out, err) = matgrad(&["grad", program, "--wrt", "x", "--format", format]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.trim(), expected, "{program} ({format})");
    }
    let (_, out, _) = matgrad(&["hessian", "sum(x.^(2/3))", "--wrt", "x"]);
    assert_eq!(out.trim(), "-2/9*diag(x.^(-4/3))");
}

#[test]
fn the_inverse_of_a_zero_matrix_is_a_value_not_an_endless_simplification() {
    // Found by the fuzzing campaign: simplifying inv(0) rebuilt inv(0) and recursed until the
    // stack overflowed (an abort, in every subcommand that derives).
    for (program, wrt) in [
        ("y: vector(2); X: matrix(2,2); y'*inv(X-X)*y", "y"),
        ("y: vector(2); X: matrix(2,2); tr(inv(X-X)*X)", "X"),
        ("X: matrix(2,2); det(X-X)*tr(X)", "X"),
        ("X: matrix(2,2); logdet(0*X)", "X"),
    ] {
        for command in ["grad", "explain"] {
            let (code, out, err) = matgrad(&[command, program, "--wrt", wrt]);
            assert_eq!(code, 0, "{command} {program}: {out}{err}");
        }
    }
}

#[test]
fn jacobians_through_transposes_and_dimensions_of_size_one_are_well_shaped() {
    // Found by the fuzzing campaign: extracting the linear map of `a*b` with `a = c'` used
    // `c` for `a` (an ill-shaped product, a panic, whenever a dimension of size 1 made the
    // shapes differ).
    let program = "x: vector(1); z: vector(3); A: matrix(3,1); norm2(z*x'+A)";
    let (code, out, err) = matgrad(&["hessian", program, "--wrt", "x"]);
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    let (code, out, err) = matgrad(&["check", program, "--wrt", "x", "--hessian"]);
    assert_eq!(code, 0, "{out}{err}");
    let fuzzed = "a: scalar; b: scalar; x: vector(1); y: vector(1); z: vector(3); A: matrix(3,1); \
                  B: matrix(1,1); C: symmetric(1); S: spd(1); X: matrix(1,3); \
                  norm2((tr(((B+eye)-inv((B*B'+eye))))*(-((z*x')+(-A)))))";
    for wrt in ["a", "b", "x", "y", "z", "A", "B"] {
        for command in ["grad", "hessian"] {
            let (code, _, err) = matgrad(&[command, fuzzed, "--wrt", wrt]);
            assert!(code == 0 || code == 2, "{command} by {wrt}: {code} {err}");
            assert!(!err.contains("internal error"), "{command} by {wrt}: {err}");
        }
    }
}

#[test]
fn check_witnesses_a_large_variable_along_random_directions() {
    // Entry by entry, the differences of a 20 000-entry gradient took two minutes.
    let (code, out, err) = matgrad(&[
        "check",
        "x: vector(20000); x'*x",
        "--wrt",
        "x",
        "--batch",
        "2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("along 32 random directions"), "{err}");
    assert!(out.contains("reference  vs finite differences"), "{out}");
}

#[test]
fn explain_minimize_says_the_method_and_what_is_shared() {
    let explain = |program: &str, wrt: &str, batched: &str| {
        let mut args = vec!["explain", program, "--wrt", wrt, "--minimize"];
        if !batched.is_empty() {
            args.extend(["--batched", batched]);
        }
        matgrad(&args)
    };
    let ridge = "A: matrix(64,16); b: vector(64); x: vector(16); norm2(A*x-b)^2 + 0.1*x'*x";
    // O1: the Hessian 2*A'*A+0.2*eye reads only the shared A: factored once per batch.
    let (code, out, err) = explain(ridge, "x", "b");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("method (auto): newton"), "{out}");
    assert!(out.contains("hessian: 2*A'*A + 0.2*eye"), "{out}");
    assert!(
        out.contains("factored (Cholesky, 16×16) once per batch"),
        "{out}"
    );
    assert!(out.contains("the curvature, once per batch:"), "{out}");
    assert!(out.contains("data: `A` shared, `b` batched"), "{out}");
    // With A batched too, the same Hessian is one per item.
    let (code, out, _) = explain(ridge, "x", "A,b");
    assert_eq!(code, 0);
    assert!(
        out.contains("evaluated per item at every iteration"),
        "{out}"
    );
    assert!(!out.contains("the curvature, once per batch"), "{out}");
    // A matrix variable has no closed-form Hessian: L-BFGS, and why.
    let (code, out, _) = explain(
        "C: matrix(8,8); S: matrix(8,8); -logdet(S) + tr(S*C)",
        "S",
        "",
    );
    assert_eq!(code, 0);
    assert!(
        out.contains("method (auto): lbfgs: the Hessian by a matrix(8,8)"),
        "{out}"
    );
    // Not a scalar objective: an error, exit 2.
    let (code, _, err) = explain("x: vector(3); 2*x", "x", "");
    assert_eq!(code, 2);
    assert!(err.contains("minimize needs a scalar objective"), "{err}");
}
