//! `minimize` against independent solutions: closed forms, an active-set NNLS written here,
//! finite differences of the objective, and the float64 reference; per-item statuses in
//! mixed batches; independence from threads and compaction; the command line's bad input.
//! Every float32 case runs on the CPU path and on the GPU (lavapipe in CI; with `CI=true` a
//! missing adapter is a failure, elsewhere the GPU cases are skipped with a message).

use std::path::PathBuf;
use std::process::Command;

use matgrad::batch::NamedArray;
use matgrad::minimize::{minimize, BoundSpec, Device, Method, Objective, Options, Status};
use matgrad::npy::{write_npz, Column};
use matgrad::types::check_program;
use matgrad::workloads::{minimize_inputs, MINIMIZE_WORKLOADS};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn objective(program: &str, wrt: &str) -> Objective {
    Objective::new(check_program(program).expect("type-checks"), wrt).expect("derives")
}

/// Whether a GPU adapter opens (Mesa's lavapipe in CI). With `CI=true` a missing adapter is
/// a failure; elsewhere the GPU cases are skipped with a message that says so.
fn gpu_available() -> bool {
    match matgrad::gpu::GpuContext::new(&Default::default()) {
        Ok(_) => true,
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and no GPU: {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED: the GPU cases of this test, without an adapter: {e}");
            false
        }
    }
}

/// The float32 devices: the CPU path, and the GPU when there is one.
fn float32_devices() -> Vec<Device> {
    let mut devices = vec![Device::Cpu];
    if gpu_available() {
        devices.push(Device::Gpu);
    }
    devices
}

fn normal(rng: &mut StdRng) -> f64 {
    // Box–Muller, independent of the library's generator.
    let u: f64 = rng.gen_range(1e-12..1.0);
    let v: f64 = rng.gen_range(0.0..1.0);
    (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
}

fn normals(rng: &mut StdRng, count: usize) -> Vec<f64> {
    (0..count).map(|_| normal(rng)).collect()
}

fn array(name: &str, shape: &[usize], data: Vec<f64>) -> NamedArray {
    NamedArray {
        name: name.into(),
        shape: shape.to_vec(),
        data,
    }
}

/// Solves `m*z = r` (n×n, row-major) by Gaussian elimination with partial pivoting.
fn solve(mut m: Vec<f64>, mut r: Vec<f64>) -> Vec<f64> {
    let n = r.len();
    for k in 0..n {
        let p = (k..n)
            .max_by(|&a, &b| m[a * n + k].abs().total_cmp(&m[b * n + k].abs()))
            .unwrap();
        for j in 0..n {
            m.swap(k * n + j, p * n + j);
        }
        r.swap(k, p);
        for i in k + 1..n {
            let f = m[i * n + k] / m[k * n + k];
            for j in k..n {
                m[i * n + j] -= f * m[k * n + j];
            }
            r[i] -= f * r[k];
        }
    }
    for i in (0..n).rev() {
        let s: f64 = (i + 1..n).map(|j| m[i * n + j] * r[j]).sum();
        r[i] = (r[i] - s) / m[i * n + i];
    }
    r
}

/// `A'*A + c*I` and `A'*b` for a row-major m×n `A`.
fn normal_equations(a: &[f64], b: &[f64], m: usize, n: usize, c: f64) -> (Vec<f64>, Vec<f64>) {
    let mut ata = vec![0.0; n * n];
    let mut atb = vec![0.0; n];
    for i in 0..n {
        for j in 0..n {
            ata[i * n + j] = (0..m).map(|k| a[k * n + i] * a[k * n + j]).sum::<f64>();
        }
        ata[i * n + i] += c;
        atb[i] = (0..m).map(|k| a[k * n + i] * b[k]).sum();
    }
    (ata, atb)
}

fn relative_error(got: &[f64], want: &[f64]) -> f64 {
    let diff: f64 = got.iter().zip(want).map(|(g, w)| (g - w).powi(2)).sum();
    let norm: f64 = want.iter().map(|w| w * w).sum();
    assert!(
        got.iter().all(|v| v.is_finite()),
        "non-finite solution {got:?}"
    );
    diff.sqrt() / norm.sqrt().max(1e-30)
}

#[test]
fn ridge_with_a_shared_design_matches_the_closed_form_on_every_device() {
    let (m, n, items) = (12, 5, 37);
    let mut rng = StdRng::seed_from_u64(1);
    let a = normals(&mut rng, m * n);
    let b = normals(&mut rng, items * m);
    let program = "A: matrix(12,5); b: vector(12); x: vector(5); norm2(A*x-b)^2 + 0.1*x'*x";
    let inputs = vec![
        array("A", &[m, n], a.clone()),
        array("b", &[items, m], b.clone()),
    ];
    let mut cases = vec![
        (Device::Reference, Method::Auto, 1e-10),
        (Device::Reference, Method::Lbfgs, 1e-7),
        (Device::Reference, Method::GradientDescent, 1e-5),
    ];
    for device in float32_devices() {
        cases.push((device, Method::Auto, 1e-4));
        cases.push((device, Method::GaussNewton, 1e-4));
        cases.push((device, Method::Lbfgs, 1e-3));
    }
    for (device, method, tolerance) in cases {
        let mut options = Options::for_device(device);
        options.method = method;
        options.gtol = if device == Device::Reference {
            1e-10
        } else {
            1e-4
        };
        options.max_iter = 5000;
        let solution = minimize(&objective(program, "x"), &inputs, &options, device).unwrap();
        assert_eq!(solution.items, items);
        if method == Method::Auto {
            assert_eq!(solution.method, Method::Newton);
            assert!(
                solution.shared_hessian,
                "the Hessian 2*A'*A+0.2*I reads only A"
            );
        }
        for item in 0..items {
            let (ata, atb) = normal_equations(&a, &b[item * m..(item + 1) * m], m, n, 0.1);
            let want = solve(ata, atb);
            let got = &solution.points[item * n..(item + 1) * n];
            let err = relative_error(got, &want);
            assert!(
                err < tolerance,
                "{device:?} {method:?} item {item}: error {err:e}, report {:?}",
                solution.reports[item]
            );
            assert_eq!(solution.reports[item].status, Status::Converged);
        }
    }
}

/// The logistic objective and its gradient in float64, written out here.
fn logistic(x: &[f64], y: &[f64], w: &[f64], m: usize, n: usize) -> f64 {
    let mut f = 0.5 * w.iter().map(|v| v * v).sum::<f64>();
    for r in 0..m {
        let margin: f64 = (0..n).map(|c| x[r * n + c] * w[c]).sum();
        f += (1.0 + (-y[r] * margin).exp()).ln();
    }
    f
}

#[test]
fn logistic_regression_per_item_reaches_a_zero_gradient_by_finite_differences() {
    let (m, n, items) = (20, 4, 33);
    let mut rng = StdRng::seed_from_u64(2);
    let x = normals(&mut rng, items * m * n);
    let y: Vec<f64> = normals(&mut rng, items * m)
        .into_iter()
        .map(|v| if v > 0.0 { 1.0 } else { -1.0 })
        .collect();
    let program = "X: matrix(20,4); y: vector(20); w: vector(4); \
                   sum(log(vector(1)+exp(-y.*(X*w)))) + 0.5*w'*w";
    let inputs = vec![
        array("X", &[items, m, n], x.clone()),
        array("y", &[items, m], y.clone()),
    ];
    let obj = objective(program, "w");
    let mut reference_options = Options::for_device(Device::Reference);
    reference_options.gtol = 1e-10;
    let reference = minimize(&obj, &inputs, &reference_options, Device::Reference).unwrap();
    let mut cpu_options = Options::for_device(Device::Cpu);
    cpu_options.gtol = 1e-4;
    let float32: Vec<(Device, Vec<f64>)> = float32_devices()
        .into_iter()
        .map(|device| {
            let s = minimize(&obj, &inputs, &cpu_options, device).unwrap();
            assert_eq!(s.converged(), items, "{device:?}");
            (device, s.points)
        })
        .collect();
    assert_eq!(reference.method, Method::Newton);
    for item in 0..items {
        let xi = &x[item * m * n..(item + 1) * m * n];
        let yi = &y[item * m..(item + 1) * m];
        let w = &reference.points[item * n..(item + 1) * n];
        let h = 1e-5;
        for c in 0..n {
            let (mut plus, mut minus) = (w.to_vec(), w.to_vec());
            plus[c] += h;
            minus[c] -= h;
            let derivative =
                (logistic(xi, yi, &plus, m, n) - logistic(xi, yi, &minus, m, n)) / (2.0 * h);
            assert!(
                derivative.abs() < 1e-7,
                "item {item}: df/dw{c} = {derivative:e}"
            );
        }
        assert!(
            reference.reports[item].iterations < 10,
            "{:?}",
            reference.reports[item]
        );
        // The float32 solutions: near the reference, and stationary in float64 to the
        // workloads' float32 tolerance.
        for (device, points) in &float32 {
            let wc = &points[item * n..(item + 1) * n];
            let err = relative_error(wc, w);
            assert!(
                err < 1e-2,
                "item {item}: {device:?} against the reference {err:e}"
            );
            let scale = logistic(xi, yi, wc, m, n).abs().max(1.0);
            for c in 0..n {
                let (mut plus, mut minus) = (wc.to_vec(), wc.to_vec());
                plus[c] += h;
                minus[c] -= h;
                let derivative =
                    (logistic(xi, yi, &plus, m, n) - logistic(xi, yi, &minus, m, n)) / (2.0 * h);
                assert!(
                    derivative.abs() < 1e-3 * scale,
                    "item {item}: {device:?} df/dw{c} = {derivative:e}"
                );
            }
        }
    }
}

/// Lawson–Hanson's active-set NNLS, in float64, for `min |A*x - b|` with `x >= 0`.
fn nnls(a: &[f64], b: &[f64], m: usize, n: usize) -> Vec<f64> {
    let mut x = vec![0.0; n];
    let mut passive = vec![false; n];
    let gradient = |x: &[f64]| -> Vec<f64> {
        let r: Vec<f64> = (0..m)
            .map(|i| b[i] - (0..n).map(|j| a[i * n + j] * x[j]).sum::<f64>())
            .collect();
        (0..n)
            .map(|j| (0..m).map(|i| a[i * n + j] * r[i]).sum())
            .collect()
    };
    let solve_passive = |passive: &[bool]| -> Vec<f64> {
        let idx: Vec<usize> = (0..n).filter(|&j| passive[j]).collect();
        let k = idx.len();
        let sub: Vec<f64> = (0..m)
            .flat_map(|i| idx.iter().map(move |&j| a[i * n + j]))
            .collect();
        let (ata, atb) = normal_equations(&sub, b, m, k, 0.0);
        let z = solve(ata, atb);
        let mut full = vec![0.0; n];
        for (t, &j) in idx.iter().enumerate() {
            full[j] = z[t];
        }
        full
    };
    for _ in 0..3 * n {
        let w = gradient(&x);
        let Some(t) = (0..n)
            .filter(|&j| !passive[j] && w[j] > 1e-12)
            .max_by(|&i, &j| w[i].total_cmp(&w[j]))
        else {
            break;
        };
        passive[t] = true;
        loop {
            let z = solve_passive(&passive);
            if (0..n).all(|j| !passive[j] || z[j] > 0.0) {
                x = z;
                break;
            }
            let alpha = (0..n)
                .filter(|&j| passive[j] && z[j] <= 0.0)
                .map(|j| x[j] / (x[j] - z[j]))
                .fold(f64::INFINITY, f64::min);
            for j in 0..n {
                x[j] += alpha * (z[j] - x[j]);
                if passive[j] && x[j] <= 1e-14 {
                    passive[j] = false;
                    x[j] = 0.0;
                }
            }
        }
    }
    x
}

#[test]
fn non_negative_least_squares_matches_an_active_set_solver_and_the_kkt_conditions() {
    let (m, n, items) = (15, 6, 29);
    let mut rng = StdRng::seed_from_u64(3);
    let a: Vec<f64> = normals(&mut rng, m * n).into_iter().map(f64::abs).collect();
    let b: Vec<f64> = normals(&mut rng, items * m);
    let program = "A: matrix(15,6); b: vector(15); x: vector(6); norm2(A*x-b)^2";
    let inputs = vec![
        array("A", &[m, n], a.clone()),
        array("b", &[items, m], b.clone()),
    ];
    let obj = objective(program, "x");
    let mut cases = vec![
        (Device::Reference, Method::Newton, 1e-8),
        (Device::Reference, Method::Lbfgs, 1e-6),
        (Device::Reference, Method::GradientDescent, 1e-5),
    ];
    for device in float32_devices() {
        cases.push((device, Method::Auto, 1e-3));
        // L-BFGS stops at a float32 gradient of 1e-4*|f| (about 2e-3 here), which leaves
        // the point a few 1e-3 from the solution; Newton's last step lands on it.
        cases.push((device, Method::Lbfgs, 5e-3));
    }
    for (device, method, tolerance) in cases {
        let mut options = Options::for_device(device);
        options.method = method;
        options.lower = Some(BoundSpec::Number(0.0));
        options.gtol = if device == Device::Reference {
            1e-10
        } else {
            1e-4
        };
        options.max_iter = 20_000;
        let solution = minimize(&obj, &inputs, &options, device).unwrap();
        let mut active_items = 0;
        for item in 0..items {
            let bi = &b[item * m..(item + 1) * m];
            let want = nnls(&a, bi, m, n);
            let got = &solution.points[item * n..(item + 1) * n];
            assert!(got.iter().all(|&v| v >= 0.0), "infeasible {got:?}");
            let err = relative_error(got, &want);
            assert!(
                err < tolerance,
                "{device:?} {method:?} item {item}: {got:?} vs {want:?} ({err:e}), {:?}",
                solution.reports[item]
            );
            // KKT at the independent solution: gradient 2*A'(Ax-b) >= 0, zero where x > 0.
            let r: Vec<f64> = (0..m)
                .map(|i| (0..n).map(|j| a[i * n + j] * want[j]).sum::<f64>() - bi[i])
                .collect();
            for j in 0..n {
                let g: f64 = 2.0 * (0..m).map(|i| a[i * n + j] * r[i]).sum::<f64>();
                assert!(g > -1e-8, "KKT: gradient {g:e} < 0 at entry {j}");
                if want[j] > 1e-9 {
                    assert!(g.abs() < 1e-8, "KKT: gradient {g:e} on a free entry");
                }
            }
            if want.contains(&0.0) {
                active_items += 1;
            }
        }
        assert!(
            active_items > items / 2,
            "the bound should hold in most items"
        );
    }
}

#[test]
fn a_matrix_variable_reaches_the_inverse_and_stays_in_the_domain() {
    // -logdet(S) + tr(S*C) is smallest at S = inv(C); logdet is NaN outside the SPD cone,
    // so every accepted step stays inside it.
    let (n, items) = (4, 19);
    let mut rng = StdRng::seed_from_u64(4);
    let mut c = Vec::new();
    for _ in 0..items {
        let mm = normals(&mut rng, n * 2 * n);
        for i in 0..n {
            for j in 0..n {
                let v: f64 = (0..2 * n)
                    .map(|k| mm[i * 2 * n + k] * mm[j * 2 * n + k])
                    .sum();
                c.push(v / (2 * n) as f64 + if i == j { 0.1 } else { 0.0 });
            }
        }
    }
    let mut eye = vec![0.0; n * n];
    for i in 0..n {
        eye[i * n + i] = 1.0;
    }
    let inputs = vec![
        array("C", &[items, n, n], c.clone()),
        array("S", &[n, n], eye),
    ];
    // Declared symmetric, the gradient is sym(G) and every iterate exactly symmetric; declared
    // spd, every iterate also positive definite. As a general matrix, inv(C) is a saddle
    // point (antisymmetric directions curve down), which L-BFGS still reaches to 1e-6 before
    // rounding's antisymmetric part grows.
    // On the float32 devices, to their tolerance.
    let mut cases = vec![
        (Device::Reference, "S: symmetric(4)", 1e-10, 1e-7),
        (Device::Reference, "S: spd(4)", 1e-10, 1e-7),
        (Device::Reference, "S: matrix(4,4)", 1e-6, 1e-5),
    ];
    for device in float32_devices() {
        cases.push((device, "S: symmetric(4)", 1e-4, 1e-3));
        cases.push((device, "S: spd(4)", 1e-4, 1e-3));
    }
    for (device, declaration, gtol, tolerance) in cases {
        let program = format!("C: matrix(4,4); {declaration}; -logdet(S) + tr(S*C)");
        let obj = objective(&program, "S");
        let mut options = Options::for_device(device);
        options.gtol = gtol;
        options.max_iter = 1000;
        let solution = minimize(&obj, &inputs, &options, device).unwrap();
        assert_eq!(solution.method, Method::Lbfgs);
        assert_eq!(solution.item_shape, vec![n, n]);
        assert_eq!(solution.converged(), items, "{device:?} {declaration}");
        for item in 0..items {
            let ci = &c[item * n * n..(item + 1) * n * n];
            // inv(C) column by column.
            let mut want = vec![0.0; n * n];
            for col in 0..n {
                let mut e = vec![0.0; n];
                e[col] = 1.0;
                let z = solve(ci.to_vec(), e);
                for row in 0..n {
                    want[row * n + col] = z[row];
                }
            }
            let got = &solution.points[item * n * n..(item + 1) * n * n];
            let err = relative_error(got, &want);
            assert!(
                err < tolerance,
                "{device:?} {declaration} item {item}: {err:e} {:?}",
                solution.reports[item]
            );
        }
    }
}

#[test]
fn a_mixed_batch_reports_each_item_and_the_others_are_unaffected() {
    // Item 0 starts at its solution, item 1 has NaN data, item 2 is badly scaled, the rest
    // are ordinary; the ordinary items equal a batch of them alone.
    let (m, n, items) = (6, 3, 300);
    let mut rng = StdRng::seed_from_u64(5);
    let mut a = normals(&mut rng, items * m * n);
    let b = normals(&mut rng, items * m);
    for v in &mut a[2 * m * n..3 * m * n] {
        *v *= 1e3;
    }
    let mut start = vec![0.0; items * n];
    let (ata, atb) = normal_equations(&a[..m * n], &b[..m], m, n, 1.0);
    start[..n].copy_from_slice(&solve(ata, atb));
    a[m * n] = f64::NAN;
    let program = "A: matrix(6,3); b: vector(6); x: vector(3); norm2(A*x-b)^2 + x'*x";
    let obj = objective(program, "x");
    let inputs = vec![
        array("A", &[items, m, n], a.clone()),
        array("b", &[items, m], b.clone()),
        array("x", &[items, n], start.clone()),
    ];
    let mut cases = vec![
        (Device::Reference, Method::Newton),
        (Device::Reference, Method::Lbfgs),
    ];
    if gpu_available() {
        cases.push((Device::Gpu, Method::Newton));
        cases.push((Device::Gpu, Method::Lbfgs));
    }
    for (device, method) in cases {
        let mut options = Options::for_device(device);
        options.method = method;
        options.gtol = if device == Device::Reference {
            1e-9
        } else {
            1e-4
        };
        options.max_iter = 2000;
        let all = minimize(&obj, &inputs, &options, device).unwrap();
        assert_eq!(all.reports[0].status, Status::Converged);
        assert_eq!(all.reports[0].iterations, 0, "item 0 starts converged");
        assert_eq!(all.reports[1].status, Status::NotFinite);
        assert_eq!(all.reports[2].status, Status::Converged);
        for item in (0..items).filter(|&i| i != 1) {
            assert_eq!(all.reports[item].status, Status::Converged, "item {item}");
        }
        // The ordinary items alone, in a different batch: the same bits.
        let rest = |data: &[f64], len: usize| data[3 * len..].to_vec();
        let alone = vec![
            array("A", &[items - 3, m, n], rest(&a, m * n)),
            array("b", &[items - 3, m], rest(&b, m)),
            array("x", &[items - 3, n], rest(&start, n)),
        ];
        let subset = minimize(&obj, &alone, &options, device).unwrap();
        assert_eq!(
            &all.points[3 * n..],
            &subset.points[..],
            "{device:?} {method:?}"
        );
        assert_eq!(
            &all.reports[3..],
            &subset.reports[..],
            "{device:?} {method:?}"
        );
    }
}

#[test]
fn results_do_not_depend_on_the_thread_count_or_the_batch_around_an_item() {
    let w = &MINIMIZE_WORKLOADS[1];
    let inputs = minimize_inputs(w, 1100);
    let obj = objective(w.program, w.wrt);
    let mut options = Options::for_device(Device::Cpu);
    options.gtol = 1e-3;
    let default = minimize(&obj, &inputs, &options, Device::Cpu).unwrap();
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let single = one_thread.install(|| minimize(&obj, &inputs, &options, Device::Cpu).unwrap());
    assert_eq!(default.points, single.points);
    assert_eq!(default.reports, single.reports);
    assert_eq!(default.converged(), default.items);
    // The first 17 items alone (no compaction partners, a partial block): the same bits.
    let first: Vec<NamedArray> = inputs
        .iter()
        .map(|a| {
            let len: usize = a.shape[1..].iter().product();
            let mut shape = a.shape.clone();
            shape[0] = 17;
            array(&a.name, &shape, a.data[..17 * len].to_vec())
        })
        .collect();
    let few = minimize(&obj, &first, &options, Device::Cpu).unwrap();
    assert_eq!(&default.points[..17 * 16], &few.points[..]);
}

/// On the GPU, a batch split into blocks of 7 items (each compacted on its own as its items
/// finish) gives the same bits as one block, for every method; the host-device traffic per
/// round is the four counters of each block.
#[test]
fn gpu_blocks_and_compaction_change_no_result() {
    if !gpu_available() {
        return;
    }
    use matgrad::gpu::{GpuContext, GpuOptions};
    use matgrad::minimize::minimize_on_gpu;
    let whole = GpuContext::new(&GpuOptions::default()).unwrap();
    let blocks = GpuContext::new(&GpuOptions {
        max_chunk_items: Some(7),
        ..GpuOptions::default()
    })
    .unwrap();
    let w = &MINIMIZE_WORKLOADS[1];
    let inputs = minimize_inputs(w, 60);
    let obj = objective(w.program, w.wrt);
    for method in [Method::Newton, Method::Lbfgs, Method::GradientDescent] {
        let mut options = Options::for_device(Device::Gpu);
        options.method = method;
        options.gtol = 1e-3;
        options.max_iter = 500;
        let mut rounds = Vec::new();
        let one =
            minimize_on_gpu(&obj, &inputs, &options, &whole, &mut |p| rounds.push(p)).unwrap();
        let split = minimize_on_gpu(&obj, &inputs, &options, &blocks, &mut |_| {}).unwrap();
        assert_eq!(one.converged(), one.items, "{method:?}");
        assert_eq!(one.points, split.points, "{method:?}");
        assert_eq!(one.reports, split.reports, "{method:?}");
        // Items finish at different rounds, so the active count falls round by round.
        assert_eq!(rounds.last().map(|p| p.active), Some(0));
        let transfers = one.transfers.expect("the GPU reports its transfers");
        assert_eq!(transfers.round_max_bytes % 16, 0);
        let per_round = (transfers.round_max_bytes as f64) / 16.0;
        assert!(per_round <= 40.0, "{transfers:?}");
        let split_transfers = split.transfers.unwrap();
        assert!(split_transfers.before_bytes >= transfers.before_bytes);
    }
}

#[test]
fn every_workload_converges_on_a_small_batch_on_every_device() {
    let mut devices = float32_devices();
    devices.push(Device::Reference);
    for w in MINIMIZE_WORKLOADS {
        let inputs = minimize_inputs(w, 40);
        let obj = objective(w.program, w.wrt);
        for &device in &devices {
            let mut options = Options::for_device(device);
            // The workloads' tolerances.
            options.gtol = if device == Device::Reference {
                1e-8
            } else {
                1e-3
            };
            options.lower = w.lower.map(BoundSpec::Number);
            let solution = minimize(&obj, &inputs, &options, device).unwrap();
            assert_eq!(
                solution.converged(),
                solution.items,
                "{} on {device:?}: {:?}",
                w.id,
                solution
                    .reports
                    .iter()
                    .find(|r| r.status != Status::Converged)
            );
        }
    }
}

fn matgrad() -> Command {
    Command::new(env!("CARGO_BIN_EXE_matgrad"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("matgrad-minimize-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ridge_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("ridge.npz");
    let mut rng = StdRng::seed_from_u64(6);
    let a = normals(&mut rng, 8 * 3);
    let b = normals(&mut rng, 5 * 8);
    let lower = vec![-0.1; 3];
    write_npz(
        &path,
        &[
            ("A", &[8, 3], Column::F64(&a)),
            ("b", &[5, 8], Column::F64(&b)),
            ("low", &[3], Column::F64(&lower)),
            ("bad_low", &[4], Column::F64(&[0.0; 4])),
        ],
    )
    .unwrap();
    path
}

#[test]
fn the_command_line_writes_solutions_a_report_and_a_json_summary() {
    let dir = scratch("cli");
    let inputs = ridge_file(&dir);
    let out = dir.join("x.npy");
    let report = dir.join("report.npz");
    let result = matgrad()
        .args([
            "minimize",
            "A: matrix(8,3); norm2(A*x-b)^2",
            "--wrt",
            "x",
            "--inputs",
        ])
        .arg(&inputs)
        .arg("--out")
        .arg(&out)
        .arg("--report")
        .arg(&report)
        .args(["--json", "--device", "reference", "--lower", "low"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(0), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&result.stdout).unwrap();
    assert_eq!(summary["items"], 5);
    assert_eq!(summary["converged"], 5);
    assert!(summary["solve_seconds"].as_f64().unwrap() >= 0.0);
    assert!(summary["max_gradient_norm"].as_f64().unwrap() <= 1e-5 * 100.0);
    assert!(stderr.contains("5 of 5 items converged"), "{stderr}");
    let mut archive = npyz::npz::NpzArchive::open(&report).unwrap();
    let status: Vec<i32> = archive
        .by_name("status")
        .unwrap()
        .unwrap()
        .into_vec()
        .unwrap();
    assert_eq!(status, vec![0; 5]);
    let norms: Vec<f64> = archive
        .by_name("gradient_norm")
        .unwrap()
        .unwrap()
        .into_vec()
        .unwrap();
    assert!(norms.iter().all(|&v| v <= 1e-5 * 100.0), "{norms:?}");
    let bytes = std::fs::read(&out).unwrap();
    assert!(bytes.starts_with(b"\x93NUMPY"));
}

#[test]
fn bad_input_exits_2_and_writes_nothing() {
    let dir = scratch("bad");
    let inputs = ridge_file(&dir);
    let out = dir.join("never.npy");
    let cases: &[(&[&str], &str)] = &[
        (&["A: matrix(8,3); A*x-b", "--wrt", "x"], "scalar objective"),
        (
            &["A: matrix(8,3); norm2(A*x-b)^2", "--wrt", "q"],
            "no variable `q`",
        ),
        (
            &[
                "A: matrix(8,3); norm2(A*x-b)^2",
                "--wrt",
                "x",
                "--lower",
                "bad_low",
            ],
            "shape",
        ),
        (
            &[
                "A: matrix(8,3); norm2(A*x-b)^2",
                "--wrt",
                "x",
                "--lower",
                "nope",
            ],
            "no array `nope`",
        ),
        (
            &[
                "A: matrix(8,3); norm2(A*x-b)^2",
                "--wrt",
                "x",
                "--lower",
                "1",
                "--upper",
                "0",
            ],
            "above the upper bound",
        ),
        (&["A: matrix(8,3); -sum(log(A*x))", "--wrt", "x"], "outside"),
        (
            &[
                "A: matrix(8,3); norm2(A*x-b)^2",
                "--wrt",
                "x",
                "--method",
                "newtn",
            ],
            "--method",
        ),
        (
            &[
                "A: matrix(8,3); norm2(A*x-b)^2",
                "--wrt",
                "x",
                "--adapter",
                "0",
            ],
            "`--adapter` chooses the GPU for `--device gpu`",
        ),
        (
            &[
                "A: matrix(8,3); norm2(A*x-b)^2",
                "--wrt",
                "x",
                "--device",
                "gpu",
                "--adapter",
                "no-such-adapter-anywhere",
            ],
            "no-such-adapter-anywhere",
        ),
    ];
    for (args, expected) in cases {
        let result = matgrad()
            .arg("minimize")
            .args(*args)
            .arg("--inputs")
            .arg(&inputs)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&result.stderr);
        assert_eq!(result.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} wrote {}", out.display());
    }
    // An output that would replace the inputs is refused, and the inputs survive.
    let before = std::fs::read(&inputs).unwrap();
    let result = matgrad()
        .args([
            "minimize",
            "A: matrix(8,3); norm2(A*x-b)^2",
            "--wrt",
            "x",
            "--inputs",
        ])
        .arg(&inputs)
        .arg("--out")
        .arg(&inputs)
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(2));
    assert_eq!(std::fs::read(&inputs).unwrap(), before);
}

/// Bounds one per item (lower and upper arrays) and a gradient that reads no batched input
/// (a linear objective in a box, whose solution is the corner against the gradient), on every
/// device; and a start outside the objective's domain is refused on every device.
#[test]
fn per_item_bounds_a_constant_gradient_and_a_start_outside_the_domain() {
    let (n, items) = (5, 23);
    let mut rng = StdRng::seed_from_u64(11);
    let c = normals(&mut rng, n);
    let lower: Vec<f64> = (0..items * n).map(|_| -rng.gen_range(0.5..2.0)).collect();
    let upper: Vec<f64> = (0..items * n).map(|_| rng.gen_range(0.5..2.0)).collect();
    let x0: Vec<f64> = normals(&mut rng, items * n)
        .into_iter()
        .map(|v| 0.1 * v)
        .collect();
    let linear = objective("c: vector(5); x: vector(5); c'*x", "x");
    let inputs = [
        array("c", &[n], c.clone()),
        array("x", &[items, n], x0),
        array("lower", &[items, n], lower.clone()),
        array("upper", &[items, n], upper.clone()),
    ];
    let data = &inputs[..2];
    let mut devices = float32_devices();
    devices.push(Device::Reference);
    for &device in &devices {
        for method in [Method::Newton, Method::Lbfgs, Method::GradientDescent] {
            let mut options = Options::for_device(device);
            options.method = method;
            options.lower = Some(BoundSpec::Array(inputs[2].clone()));
            options.upper = Some(BoundSpec::Array(inputs[3].clone()));
            let s = minimize(&linear, data, &options, device).unwrap();
            assert_eq!(s.converged(), items, "{device:?} {method:?}");
            for item in 0..items {
                for e in 0..n {
                    let want = if c[e] > 0.0 {
                        lower[item * n + e]
                    } else {
                        upper[item * n + e]
                    };
                    let got = s.points[item * n + e];
                    assert!(
                        (got - want).abs() <= 1e-6 * want.abs().max(1.0),
                        "{device:?} {method:?} item {item} entry {e}: {got} vs {want}"
                    );
                }
            }
        }
    }
    // -logdet(S) is not finite at S = -I, whose data are finite: a refusal, not a report.
    let logdet = objective("C: matrix(3,3); S: symmetric(3); -logdet(S) + tr(S*C)", "S");
    let minus_eye: Vec<f64> = (0..9)
        .map(|k| if k % 4 == 0 { -1.0 } else { 0.0 })
        .collect();
    let eye: Vec<f64> = (0..9).map(|k| if k % 4 == 0 { 1.0 } else { 0.0 }).collect();
    let outside = vec![
        array("C", &[2, 3, 3], [eye.clone(), eye].concat()),
        array("S", &[3, 3], minus_eye),
    ];
    for &device in &devices {
        let options = Options::for_device(device);
        let error = minimize(&logdet, &outside, &options, device).unwrap_err();
        assert!(
            error.to_string().contains("outside the objective's domain"),
            "{device:?}: {error}"
        );
    }
}
