//! `matgrad eval` and `matgrad check` on NumPy files written by NumPy
//! (`tests/fixtures/make_fixtures.py`), against expected outputs computed by NumPy from the
//! closed forms; and every bad-file case: exit status 2, a message naming the array and the
//! shapes, and no output file left behind.

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn out_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("matgrad-test-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn matgrad(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_matgrad"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `matgrad eval PROGRAM --wrt x --device DEVICE --inputs INPUTS --out OUT`: (status, stderr).
fn eval_x(program: &str, device: &str, inputs: &Path, out: &Path) -> (i32, String) {
    let (code, _, err) = matgrad(&[
        "eval",
        program,
        "--wrt",
        "x",
        "--device",
        device,
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    (code, err)
}

/// Reads a .npy written by NumPy or matgrad: (shape, values as f64, dtype descriptor).
fn load(path: &Path) -> (Vec<usize>, Vec<f64>, String) {
    let bytes = std::fs::read(path).unwrap();
    let npy = npyz::NpyFile::new(&bytes[..]).unwrap();
    let shape = npy.shape().iter().map(|&d| d as usize).collect();
    let descr = npy.dtype().descr();
    let data = if descr.contains("f4") {
        npy.into_vec::<f32>()
            .unwrap()
            .into_iter()
            .map(f64::from)
            .collect()
    } else {
        npy.into_vec::<f64>().unwrap()
    };
    (shape, data, descr)
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() / scale))
}

fn eval(
    program: &str,
    wrt: &str,
    inputs: &str,
    dir: &Path,
    extra: &[&str],
) -> (i32, String, PathBuf) {
    let out = dir.join("out.npy");
    let inputs = fixture(inputs);
    let mut args = vec![
        "eval",
        program,
        "--wrt",
        wrt,
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let (code, _, err) = matgrad(&args);
    (code, err, out)
}

#[test]
fn least_squares_batch_matches_numpy() {
    let dir = out_dir("lsq");
    let value = dir.join("value.npy");
    let (code, err, out) = eval(
        "(A*x+b)'*(A*x+b)",
        "x",
        "lsq.npz",
        &dir,
        &["--value-out", value.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let (shape, got, descr) = load(&out);
    let (want_shape, want, _) = load(&fixture("lsq_expected_grad.npy"));
    assert_eq!(
        (shape, descr.contains("f4")),
        (want_shape, true),
        "float32 (B, n) from the cpu path"
    );
    assert!(max_rel(&got, &want) < 1e-5);
    let (vshape, vgot, _) = load(&value);
    let (_, vwant, _) = load(&fixture("lsq_expected_value.npy"));
    assert_eq!(vshape, vec![5]);
    assert!(max_rel(&vgot, &vwant) < 1e-5);
}

#[test]
fn every_device_and_an_adapter_by_number_match_numpy() {
    let on_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let has_gpu = !matgrad::gpu::list_adapters().is_empty();
    if !has_gpu && on_ci {
        panic!("CI=true and no GPU adapter");
    }
    let dir = out_dir("all-devices");
    let (_, want, _) = load(&fixture("lsq_expected_grad.npy"));
    let mut runs = vec![vec!["--device", "all"], vec!["--device", "cpu"]];
    if has_gpu {
        runs.push(vec!["--device", "gpu", "--adapter", "0"]);
    } else {
        eprintln!("SKIPPED: --adapter 0 without a GPU adapter");
    }
    for extra in runs {
        let (code, err, out) = eval("(A*x+b)'*(A*x+b)", "x", "lsq.npz", &dir, &extra);
        assert_eq!(code, 0, "{extra:?}: {err}");
        let (shape, got, descr) = load(&out);
        assert_eq!(shape, vec![5, 3], "{extra:?}");
        assert!(descr.contains("f4"), "{extra:?}");
        assert!(max_rel(&got, &want) < 1e-5, "{extra:?}");
    }
    let (code, err, _) = eval(
        "(A*x+b)'*(A*x+b)",
        "x",
        "lsq.npz",
        &dir,
        &["--device", "gpu", "--adapter", "99"],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("99") || err.contains("no GPU adapter"),
        "{err}"
    );
}

#[test]
fn a_vector_function_writes_its_values_beside_its_jacobian() {
    let dir = out_dir("vector-value");
    let value = dir.join("value.npy");
    let (code, err, out) = eval(
        "A*x+b",
        "x",
        "lsq.npz",
        &dir,
        &[
            "--device",
            "reference",
            "--value-out",
            value.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let arrays = matgrad::npy::read_npz(&fixture("lsq.npz")).unwrap();
    let get = |name: &str| arrays.iter().find(|a| a.name == name).unwrap();
    let (a, b, x) = (get("A"), get("b"), get("x"));
    let (m, n, items) = (a.shape[0], a.shape[1], x.shape[0]);
    let (vshape, got, _) = load(&value);
    assert_eq!(vshape, vec![items, m]);
    for t in 0..items {
        for i in 0..m {
            let want: f64 = b.data[i]
                + (0..n)
                    .map(|j| a.data[i * n + j] * x.data[t * n + j])
                    .sum::<f64>();
            assert!(
                (got[t * m + i] - want).abs() <= 1e-12 * want.abs().max(1.0),
                "item {t}, row {i}"
            );
        }
    }
    let (jshape, jacobian, _) = load(&out);
    assert_eq!(jshape, vec![items, n, m]);
    // The gradient layout: entry (j, i) is d(A*x+b)_i / dx_j = A[i, j], for every item.
    for t in 0..items {
        for j in 0..n {
            for i in 0..m {
                assert_eq!(jacobian[(t * n + j) * m + i], a.data[i * n + j]);
            }
        }
    }
}

#[test]
fn reference_device_writes_float64() {
    let dir = out_dir("reference");
    let (code, err, out) = eval(
        "(A*x+b)'*(A*x+b)",
        "x",
        "lsq.npz",
        &dir,
        &["--device", "reference"],
    );
    assert_eq!(code, 0, "{err}");
    let (_, got, descr) = load(&out);
    let (_, want, _) = load(&fixture("lsq_expected_grad.npy"));
    assert!(descr.contains("f8"));
    assert!(max_rel(&got, &want) < 1e-12);
}

#[test]
fn fortran_order_and_compressed_archives() {
    let dir = out_dir("fortran");
    let (code, err, out) = eval(
        "logdet(X)",
        "X",
        "logdet_fortran.npz",
        &dir,
        &["--device", "reference"],
    );
    assert_eq!(code, 0, "{err}");
    let (shape, got, _) = load(&out);
    let (_, want, _) = load(&fixture("logdet_expected.npy"));
    assert_eq!(shape, vec![3, 4, 4]);
    assert!(max_rel(&got, &want) < 1e-12);

    let (code, err, out) = eval(
        "a: vector; a'*X'*C*X*a",
        "X",
        "quadform_compressed.npz",
        &dir,
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let (shape, got, _) = load(&out);
    let (_, want, _) = load(&fixture("quadform_expected.npy"));
    assert_eq!(shape, vec![2, 3, 3]);
    assert!(max_rel(&got, &want) < 1e-5);
}

#[test]
fn bad_files_exit_2_with_a_clear_message_and_no_output() {
    let cases = [
        ("int_dtype.npz", "array `x` in"),
        (
            "int_dtype.npz",
            "has dtype int64: expected float32 or float64",
        ),
        (
            "batch_mismatch.npz",
            "batched arrays must agree on the batch size",
        ),
        (
            "wrong_rank.npz",
            "array `x` has shape [2, 5, 3], but `x` is a vector",
        ),
        (
            "wrong_size.npz",
            "array `b` has shape [5]: its dimension `m` is 5, but array `A` makes `m` 4",
        ),
        ("missing.npz", "no array for variable `b`"),
        ("does_not_exist.npz", "cannot open"),
    ];
    for (file, message) in cases {
        let dir = out_dir(&format!("bad-{}", file.replace('.', "-")));
        let (code, err, out) = eval("(A*x+b)'*(A*x+b)", "x", file, &dir, &[]);
        assert_eq!(code, 2, "{file}: {err}");
        assert!(err.contains(message), "{file}: {err}");
        assert!(!out.exists(), "{file}: no output file");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "{file}: nothing half-written"
        );
    }
}

#[test]
fn corrupt_and_truncated_archives_exit_2() {
    let dir = out_dir("corrupt");
    let bytes = std::fs::read(fixture("lsq.npz")).unwrap();
    for (name, content) in [
        ("truncated.npz", bytes[..bytes.len() / 2].to_vec()),
        ("garbage.npz", b"this is not a zip archive".to_vec()),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        let out = dir.join("out.npy");
        let (code, _, err) = matgrad(&[
            "eval",
            "(A*x+b)'*(A*x+b)",
            "--wrt",
            "x",
            "--inputs",
            path.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(err.contains("corrupt or truncated"), "{name}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn extra_arrays_are_a_warning() {
    let dir = out_dir("extra");
    let (code, err, out) = eval("(A*x+b)'*(A*x+b)", "x", "extra.npz", &dir, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: array `unused`"), "{err}");
    assert!(out.exists());
}

#[test]
fn non_finite_items_are_reported_and_the_rest_are_exact() {
    let dir = out_dir("nonfinite");
    let (code, err, out) = eval(
        "(A*x+b)'*(A*x+b)",
        "x",
        "non_finite.npz",
        &dir,
        &["--device", "reference"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("2 of 5 items") && err.contains("(first: 2, 4)"),
        "{err}"
    );
    let (_, got, _) = load(&out);
    let (_, want, _) = load(&fixture("lsq_expected_grad.npy"));
    for item in [0, 1, 3] {
        let r = item * 3..item * 3 + 3;
        assert!(max_rel(&got[r.clone()], &want[r]) < 1e-12, "item {item}");
    }
    let (code, err, _) = eval("logdet(X)", "X", "singular.npz", &dir, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("1 of 3 items") && err.contains("(first: 1)"),
        "{err}"
    );
}

#[test]
fn check_command_passes_and_rejects_unknown_dimensions() {
    let (code, out, err) = matgrad(&[
        "check",
        "A: matrix(8,8); x: vector(8); b: vector(8); (A*x+b)'*(A*x+b)",
        "--wrt",
        "x",
        "--batch",
        "9",
        "--batched",
        "A,x,b",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("cpu") && out.contains("reference"), "{out}");
    let (code, out, _) = matgrad(&[
        "check",
        "X: matrix(4,4); logdet(X)",
        "--wrt",
        "X",
        "--batch",
        "5",
        "--json",
    ]);
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["passed"], true);
    let devices = v["devices"].as_array().unwrap();
    assert!(
        devices.len() >= 2,
        "reference and cpu, and gpu when there is an adapter"
    );
    assert!(devices.iter().all(|d| d["passed"] == true));
    let (code, _, err) = matgrad(&["check", "x'*x", "--wrt", "x", "--dims", "q=3"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no dimension `q`"), "{err}");
}

#[test]
fn outputs_keep_the_batch_axis_even_when_constant_over_the_batch() {
    // The Hessian 2*A'*A does not depend on the batched x, yet one is written per item.
    let dir = out_dir("hessian");
    let (code, err, out) = eval(
        "(A*x+b)'*(A*x+b)",
        "x",
        "lsq.npz",
        &dir,
        &["--hessian", "--device", "reference"],
    );
    assert_eq!(code, 0, "{err}");
    let (shape, got, _) = load(&out);
    assert_eq!(shape, vec![5, 3, 3]);
    let arrays = matgrad::npy::read_npz(&fixture("lsq.npz")).unwrap();
    let a = arrays.iter().find(|a| a.name == "A").unwrap();
    let (m, n) = (a.shape[0], a.shape[1]);
    for item in 0..5 {
        for i in 0..n {
            for j in 0..n {
                let want: f64 = (0..m)
                    .map(|k| 2.0 * a.data[k * n + i] * a.data[k * n + j])
                    .sum();
                let g = got[item * n * n + i * n + j];
                assert!(
                    (g - want).abs() < 1e-12 * want.abs().max(1.0),
                    "item {item} ({i},{j})"
                );
            }
        }
    }
}

#[test]
fn automatic_dimension_names_follow_the_cookbook() {
    // x'*A*x: one dimension, named m (the first automatic name), usable in --dims.
    let (code, out, err) = matgrad(&[
        "check", "x'*A*x", "--wrt", "x", "--dims", "m=5", "--batch", "3",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = matgrad(&["check", "x'*A*x", "--wrt", "x", "--batch", "0"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn gpu_device_matches_numpy() {
    let (_, listing, _) = matgrad(&["devices", "--json"]);
    let adapters: serde_json::Value = serde_json::from_str(&listing).unwrap();
    if adapters.as_array().is_none_or(|a| a.is_empty()) {
        assert!(
            std::env::var("CI").map_or(true, |v| v != "true"),
            "CI=true and no GPU adapter"
        );
        eprintln!("SKIPPED: no GPU adapter for `eval --device gpu`");
        return;
    }
    let dir = out_dir("gpu");
    let (code, err, out) = eval(
        "(A*x+b)'*(A*x+b)",
        "x",
        "lsq.npz",
        &dir,
        &["--device", "gpu"],
    );
    assert_eq!(code, 0, "{err}");
    let (shape, got, descr) = load(&out);
    let (_, want, _) = load(&fixture("lsq_expected_grad.npy"));
    assert_eq!((shape, descr.contains("f4")), (vec![5, 3], true));
    assert!(max_rel(&got, &want) < 1e-5);
    let (code, err, _) = eval(
        "(A*x+b)'*(A*x+b)",
        "x",
        "lsq.npz",
        &dir,
        &["--device", "gpu", "--adapter", "no-such-adapter"],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("no adapter's name contains `no-such-adapter`"),
        "{err}"
    );
}

/// An `.npz` with one array `x` whose `.npy` header is written by hand: a shape the data does
/// not back, as a hostile or damaged file would claim.
fn hand_written_npz(path: &Path, shape: &str, data: &[u8], method: npyz::zip::CompressionMethod) {
    use std::io::Write;
    let mut dict = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}");
    while (dict.len() + 11) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    npy.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    npy.extend_from_slice(dict.as_bytes());
    npy.extend_from_slice(data);
    let mut zip = npyz::zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = npyz::zip::write::FileOptions::default().compression_method(method);
    zip.start_file("x.npy", options).unwrap();
    zip.write_all(&npy).unwrap();
    zip.finish().unwrap();
}

#[test]
fn a_header_that_claims_more_than_the_file_holds_is_an_error_before_any_allocation() {
    use npyz::zip::CompressionMethod::{Deflated, Stored};
    let dir = out_dir("hostile-shapes");
    let four = [0u8; 32];
    let cases = [
        // The element count overflows 64 bits.
        (
            "(9223372036854775807, 9223372036854775807)",
            "more elements than this machine can address",
        ),
        (
            "(4611686018427387904, 4)",
            "more elements than this machine can address",
        ),
        // Counts that fit but bytes that overflow, or are simply not in the archive.
        (
            "(4611686018427387903,)",
            "more bytes than this machine can address",
        ),
        ("(1000000, 1000)", "needs 8000000000 bytes of data"),
        (
            "(5,)",
            "needs 40 bytes of data and the archive holds only 32",
        ),
        ("(3, x)", "`x` is not a dimension"),
        ("3", "malformed header"),
    ];
    for (i, (shape, message)) in cases.iter().enumerate() {
        for method in [Stored, Deflated] {
            let path = dir.join(format!("case{i}-{method:?}.npz"));
            hand_written_npz(&path, shape, &four, method);
            let out = dir.join("out.npy");
            for command in [
                vec![
                    "eval",
                    "x: vector(n); x'*x",
                    "--wrt",
                    "x",
                    "--device",
                    "cpu",
                ],
                vec!["minimize", "x: vector(n); x'*x", "--wrt", "x"],
            ] {
                let mut args = command.clone();
                args.extend([
                    "--inputs",
                    path.to_str().unwrap(),
                    "--out",
                    out.to_str().unwrap(),
                ]);
                let (code, _, err) = matgrad(&args);
                assert_eq!(code, 2, "{shape} ({method:?}, {}): {err}", command[0]);
                assert!(err.contains("array `x`"), "{shape}: {err}");
                assert!(err.contains(message), "{shape} ({method:?}): {err}");
                assert!(!err.contains("panicked"), "{shape}: {err}");
                assert!(!out.exists());
            }
        }
    }
    // The same hand-written header with its data present reads as NumPy would.
    let path = dir.join("fine.npz");
    let values: Vec<u8> = [1.0f64, 2.0, 3.0, 4.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    hand_written_npz(&path, "(4,)", &values, Deflated);
    let out = dir.join("out.npy");
    let (code, err) = eval_x("x: vector(n); x'*x", "reference", &path, &out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(load(&out).1, vec![2.0, 4.0, 6.0, 8.0]);
}

#[test]
fn outputs_that_would_destroy_a_file_are_refused_and_outputs_are_all_or_none() {
    let dir = out_dir("destroy");
    let inputs = dir.join("in.npz");
    std::fs::copy(fixture("lsq.npz"), &inputs).unwrap();
    let original = std::fs::read(&inputs).unwrap();
    let run = |out: &Path, value_out: Option<&Path>| {
        let mut args = vec![
            "eval".to_string(),
            "(A*x+b)'*(A*x+b)".into(),
            "--wrt".into(),
            "x".into(),
            "--device".into(),
            "cpu".into(),
            "--inputs".into(),
            inputs.to_str().unwrap().into(),
            "--out".into(),
            out.to_str().unwrap().into(),
        ];
        if let Some(v) = value_out {
            args.extend(["--value-out".into(), v.to_str().unwrap().into()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        matgrad(&args)
    };
    let a = dir.join("a.npy");
    // The inputs, reached by another spelling of the same path.
    let respelled = dir.join(".").join("in.npz");
    let device = Path::new("/dev/null");
    let cases: [(&Path, Option<&Path>, &str); 6] = [
        (&inputs, None, "is the inputs file"),
        (&respelled, None, "is the inputs file"),
        (&a, Some(&inputs), "`--value-out"),
        (&a, Some(&a), "`--out` and `--value-out` are the same file"),
        (&dir, None, "it is a directory"),
        (device, None, "not a regular file"),
    ];
    for (out, value_out, message) in cases {
        let (code, _, err) = run(out, value_out);
        assert_eq!(code, 2, "{out:?} {value_out:?}: {err}");
        assert!(err.contains(message), "{out:?} {value_out:?}: {err}");
        assert_eq!(
            std::fs::read(&inputs).unwrap(),
            original,
            "the inputs are intact"
        );
        assert!(!a.exists(), "nothing written for {out:?} {value_out:?}");
    }
    assert!(
        device.exists() && !device.is_file(),
        "/dev/null is still a device"
    );
    // A second output that cannot be written leaves no first output behind, and the message
    // names the directory that refused it.
    let missing = dir.join("no-such-dir").join("v.npy");
    let (code, _, err) = run(&a, Some(&missing));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot create a file in"), "{err}");
    assert!(err.contains("no-such-dir"), "{err}");
    assert!(!a.exists(), "all outputs or none");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        1,
        "only the inputs remain"
    );
}

#[test]
fn many_unused_arrays_are_one_sorted_warning() {
    use npyz::WriterBuilder;
    use std::io::Write;
    let dir = out_dir("unused");
    let path = dir.join("many.npz");
    let mut zip = npyz::zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let mut put = |name: &str, values: &[f64]| {
        zip.start_file(
            format!("{name}.npy"),
            npyz::zip::write::FileOptions::default(),
        )
        .unwrap();
        let mut npy = Vec::new();
        let mut writer = npyz::WriteOptions::new()
            .default_dtype()
            .shape(&[values.len() as u64])
            .writer(&mut npy)
            .begin_nd()
            .unwrap();
        writer.extend(values.iter().copied()).unwrap();
        writer.finish().unwrap();
        zip.write_all(&npy).unwrap();
    };
    put("x", &[1.0, 2.0]);
    for i in (0..1000).rev() {
        put(&format!("extra{i:04}"), &[0.0]);
    }
    zip.finish().unwrap();
    let out = dir.join("out.npy");
    let (code, err) = eval_x("x: vector(n); x'*x", "reference", &path, &out);
    assert_eq!(code, 0, "{err}");
    assert_eq!(err.matches("warning").count(), 1, "{err}");
    assert!(
        err.contains("warning: arrays `extra0000`, `extra0001`, `extra0002`, `extra0003`, `extra0004` and 995 more in"),
        "{err}"
    );
}

#[test]
fn inputs_beyond_float32s_range_are_named_on_the_float32_devices() {
    let dir = out_dir("f32-range");
    let path = dir.join("wide.npz");
    let values: Vec<u8> = [1e39f64, 1e-40, 2.0, 3.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    hand_written_npz(&path, "(4,)", &values, npyz::zip::CompressionMethod::Stored);
    let out = dir.join("out.npy");
    let run = |device: &str| eval_x("x: vector(n); sum(x)", device, &path, &out);
    let (code, err) = run("cpu");
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("array `x`") && err.contains("1 values beyond float32's range"),
        "{err}"
    );
    assert!(err.contains("and 1 below it"), "{err}");
    let (code, err) = run("reference");
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("float32's range"), "{err}");
}
