//! The library façade (`matgrad::compile`, `Function::call`) on every device: values against
//! closed forms computed here in float64, shapes, the cache of plans and GPU sessions, typed
//! errors, and calls from several threads. With `CI=true` a missing GPU adapter fails the GPU
//! cases; elsewhere they say loudly that they were skipped.

use matgrad::executor::{Adapter, Data, Device};
use matgrad::function::{compile, Array, Compute, Error, Function, Input, Options, Values};
use rand::{rngs::StdRng, Rng, SeedableRng};

const LSQ: &str = "A: matrix(m,n); x: vector(n); b: vector(m); (A*x+b)'*(A*x+b)";

/// Standard-normal-ish values (uniform in [-1, 1]) from a seed.
fn values(len: usize, seed: u64) -> Vec<f64> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// `A*x` for row-major `A` (m×n).
fn matvec(a: &[f64], x: &[f64], m: usize, n: usize) -> Vec<f64> {
    (0..m)
        .map(|i| (0..n).map(|j| a[i * n + j] * x[j]).sum())
        .collect()
}

/// `A'*y` for row-major `A` (m×n).
fn matvec_t(a: &[f64], y: &[f64], m: usize, n: usize) -> Vec<f64> {
    (0..n)
        .map(|j| (0..m).map(|i| a[i * n + j] * y[i]).sum())
        .collect()
}

/// `‖a − b‖ / max(‖b‖, 1e-30)`, with a non-finite entry on either side an infinite error.
fn relative_error(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    if a.iter().chain(b).any(|x| !x.is_finite()) {
        return f64::INFINITY;
    }
    let diff: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().sqrt();
    diff / norm.max(1e-30)
}

/// The function on `device`, or `None` (loudly; a failure under `CI=true`) when that is the
/// GPU and there is none.
fn compiled(program: &str, wrt: &str, compute: Compute, device: Device) -> Option<Function> {
    let options = Options {
        device,
        ..Options::default()
    };
    match compile(program, wrt, compute, options) {
        Ok(f) => Some(f),
        Err(Error::NoGpu(e)) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true and no GPU: {e}")
        }
        Err(Error::NoGpu(e)) => {
            eprintln!("SKIPPED: façade GPU case without an adapter: {e}");
            None
        }
        Err(e) => panic!("compile failed: {e}"),
    }
}

/// A least-squares problem: shared `A` (m×n) and `b`, `items` batched points `x`.
#[derive(Clone)]
struct Lsq {
    m: usize,
    n: usize,
    items: usize,
    a: Vec<f64>,
    b: Vec<f64>,
    x: Vec<f64>,
    /// The values rounded to float32, as float32 callers pass them.
    narrow: [Vec<f32>; 3],
    /// The shapes of `A`, `b`, the batch of `x`, and one `x` (shared).
    shapes: ([usize; 2], [usize; 1], [usize; 2], [usize; 1]),
}

impl Lsq {
    fn new(m: usize, n: usize, items: usize, seed: u64) -> Lsq {
        Lsq::with_values(
            m,
            n,
            items,
            values(m * n, seed),
            values(m, seed + 1),
            values(items * n, seed + 2),
        )
    }

    fn with_values(m: usize, n: usize, items: usize, a: Vec<f64>, b: Vec<f64>, x: Vec<f64>) -> Lsq {
        Lsq {
            m,
            n,
            items,
            narrow: [narrow(&a), narrow(&b), narrow(&x)],
            shapes: ([m, n], [m], [items, n], [n]),
            a,
            b,
            x,
        }
    }

    /// The named inputs: float64 when `wide`, else float32; `x` batched unless `x_shared`
    /// (then its first item alone).
    fn inputs(&self, wide: bool, x_shared: bool) -> Vec<Input<'_>> {
        let x_len = if x_shared { self.n } else { self.x.len() };
        let [a, b, x] = match wide {
            true => [
                Data::F64(&self.a),
                Data::F64(&self.b),
                Data::F64(&self.x[..x_len]),
            ],
            false => {
                let [a, b, x] = &self.narrow;
                [Data::F32(a), Data::F32(b), Data::F32(&x[..x_len])]
            }
        };
        let (sa, sb, sx, sx_one) = &self.shapes;
        let x_shape: &[usize] = if x_shared { sx_one } else { sx };
        vec![
            Input {
                name: "A",
                shape: sa,
                data: a,
            },
            Input {
                name: "b",
                shape: sb,
                data: b,
            },
            Input {
                name: "x",
                shape: x_shape,
                data: x,
            },
        ]
    }

    /// The same problem with every value rounded to float32: what a float32 call computes on.
    fn rounded(&self) -> Lsq {
        let round = |v: &[f64]| v.iter().map(|&x| f64::from(x as f32)).collect();
        let (a, b, x) = (round(&self.a), round(&self.b), round(&self.x));
        Lsq::with_values(self.m, self.n, self.items, a, b, x)
    }

    /// The problem as [`call`] passes it: rounded to float32 unless `wide`.
    fn as_passed(&self, wide: bool) -> Lsq {
        if wide {
            self.clone()
        } else {
            self.rounded()
        }
    }

    /// The residual `A*x_i+b` of item `i`.
    fn residual(&self, i: usize) -> Vec<f64> {
        let x = &self.x[i * self.n..(i + 1) * self.n];
        let ax = matvec(&self.a, x, self.m, self.n);
        ax.iter().zip(&self.b).map(|(p, q)| p + q).collect()
    }

    /// `2*A'*(A*x_i+b)` for every item, back to back.
    fn gradients(&self) -> Vec<f64> {
        (0..self.items)
            .flat_map(|i| {
                let r = self.residual(i);
                matvec_t(&self.a, &r, self.m, self.n)
                    .into_iter()
                    .map(|v| 2.0 * v)
            })
            .collect()
    }

    fn values(&self) -> Vec<f64> {
        (0..self.items)
            .map(|i| self.residual(i).iter().map(|r| r * r).sum())
            .collect()
    }

    /// `2*A'*A`, row-major n×n.
    fn hessian(&self) -> Vec<f64> {
        let (m, n) = (self.m, self.n);
        let mut h = vec![0.0; n * n];
        for j in 0..n {
            for k in 0..n {
                h[j * n + k] = 2.0
                    * (0..m)
                        .map(|i| self.a[i * n + j] * self.a[i * n + k])
                        .sum::<f64>();
            }
        }
        h
    }
}

/// Calls `f` with the problem's inputs in float32 (`wide` false) or float64.
fn call(f: &Function, p: &Lsq, wide: bool) -> Result<Vec<Array>, Error> {
    f.call(&p.inputs(wide, false)).map(|e| e.outputs)
}

/// The tolerance of an executor: float32 paths to 1e-5 relative, the reference to 1e-12.
fn tolerance(f: &Function) -> f64 {
    if f.options().device == Device::Reference {
        1e-12
    } else {
        1e-5
    }
}

const DEVICES: [Device; 3] = [Device::Reference, Device::Cpu, Device::Gpu];

#[test]
fn gradients_match_the_closed_form_on_every_device_in_both_precisions() {
    let p = Lsq::new(12, 5, 37, 1);
    for device in DEVICES {
        let Some(f) = compiled(LSQ, "x", Compute::Derivative, device) else {
            continue;
        };
        assert_eq!(f.formula(matgrad::print::Format::Text), "2*A'*(A*x+b)");
        for wide in [false, true] {
            let out = call(&f, &p, wide).expect("the call succeeds");
            assert_eq!(out.len(), 1);
            assert_eq!(out[0].shape, vec![37, 5], "{device:?}");
            assert_eq!(out[0].batch, Some(37));
            match (&out[0].values, device) {
                (Values::F64(_), Device::Reference)
                | (Values::F32(_), Device::Cpu | Device::Gpu) => {}
                (v, d) => panic!("{d:?} returned the wrong precision: {}", v.len()),
            }
            let expected = p.as_passed(wide).gradients();
            let error = relative_error(&out[0].values.to_f64(), &expected);
            assert!(
                error < tolerance(&f),
                "{device:?} wide={wide}: relative error {error:e}"
            );
        }
    }
}

#[test]
fn value_and_gradient_come_in_that_order() {
    let p = Lsq::new(9, 4, 11, 2);
    for device in DEVICES {
        let Some(f) = compiled(LSQ, "x", Compute::ValueAndDerivative, device) else {
            continue;
        };
        let out = call(&f, &p, false).unwrap();
        let q = p.rounded();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].shape, vec![11], "{device:?}: one value per item");
        assert!(relative_error(&out[0].values.to_f64(), &q.values()) < tolerance(&f));
        assert!(relative_error(&out[1].values.to_f64(), &q.gradients()) < tolerance(&f));
    }
}

#[test]
fn a_hessian_that_reads_only_shared_inputs_is_repeated_for_every_item() {
    let p = Lsq::new(7, 3, 5, 3);
    let one = p.rounded().hessian();
    let expected: Vec<f64> = (0..p.items).flat_map(|_| one.clone()).collect();
    for device in DEVICES {
        let Some(f) = compiled(LSQ, "x", Compute::Hessian, device) else {
            continue;
        };
        let out = call(&f, &p, false).unwrap();
        assert_eq!(out[0].shape, vec![5, 3, 3], "{device:?}");
        assert!(relative_error(&out[0].values.to_f64(), &expected) < tolerance(&f));
    }
}

#[test]
fn hessian_vector_products_match_the_hessian_times_the_vector() {
    let p = Lsq::new(6, 4, 9, 4);
    let h = p.hessian();
    let v = values(p.items * p.n, 99);
    let expected: Vec<f64> = (0..p.items)
        .flat_map(|i| matvec(&h, &v[i * p.n..(i + 1) * p.n], p.n, p.n))
        .collect();
    for device in DEVICES {
        let Some(f) = compiled(LSQ, "x", Compute::HessianTimes("v".into()), device) else {
            continue;
        };
        let mut inputs = p.inputs(true, false);
        inputs.push(Input {
            name: "v",
            shape: &p.shapes.2,
            data: Data::F64(&v),
        });
        let out = f.call(&inputs).unwrap().outputs;
        assert_eq!(out[0].shape, vec![9, 4]);
        assert!(relative_error(&out[0].values.to_f64(), &expected) < tolerance(&f));
    }
}

#[test]
fn new_shared_values_and_new_shapes_are_not_served_from_the_cache() {
    for device in DEVICES {
        let Some(f) = compiled(LSQ, "x", Compute::Derivative, device) else {
            continue;
        };
        // Same shapes, new shared A and b: the plan is reused, a GPU session remade.
        for seed in [10, 20, 20, 30] {
            let p = Lsq::new(8, 3, 6, seed);
            let out = call(&f, &p, false).unwrap();
            let error = relative_error(&out[0].values.to_f64(), &p.rounded().gradients());
            assert!(error < tolerance(&f), "{device:?} seed {seed}: {error:e}");
        }
        // New sizes and a batch of one.
        let p = Lsq::new(5, 2, 1, 40);
        let out = call(&f, &p, false).unwrap();
        assert_eq!(out[0].shape, vec![1, 2]);
        assert!(relative_error(&out[0].values.to_f64(), &p.rounded().gradients()) < tolerance(&f));
    }
}

#[test]
fn shared_inputs_alone_give_one_unbatched_result() {
    let p = Lsq::new(4, 3, 1, 5);
    let f = compiled(LSQ, "x", Compute::Derivative, Device::Cpu).unwrap();
    let inputs = p.inputs(true, true);
    let out = f.call(&inputs).unwrap().outputs;
    assert_eq!(out[0].shape, vec![3]);
    assert_eq!(out[0].batch, None);
    assert!(relative_error(&out[0].values.to_f64(), &p.gradients()) < 1e-5);
}

#[test]
fn errors_are_typed_and_point_at_the_problem() {
    let options = Options {
        device: Device::Cpu,
        ..Options::default()
    };
    match compile("(A*x+b)'*(A*x+", "x", Compute::Derivative, options.clone()) {
        Err(e @ Error::Program { .. }) => {
            let text = e.to_string();
            assert!(text.contains('^'), "a caret diagnostic: {text}");
        }
        other => panic!("expected a program error, got {:?}", other.err()),
    }
    match compile(LSQ, "y", Compute::Derivative, options.clone()) {
        Err(Error::Program { diagnostic, .. }) => assert!(diagnostic.message.contains('y')),
        other => panic!("expected a program error, got {:?}", other.err()),
    }
    let f = compile(LSQ, "x", Compute::Derivative, options).unwrap();
    let a = vec![0.0f32; 12];
    let b = vec![0.0f32; 4];
    let x = vec![0.0f32; 6];
    let call = |inputs: &[Input]| f.call(inputs).err().map(|e| e.to_string());
    // Values that do not fill the shape.
    let message = call(&[
        Input {
            name: "A",
            shape: &[4, 3],
            data: Data::F32(&a[..11]),
        },
        Input {
            name: "b",
            shape: &[4],
            data: Data::F32(&b),
        },
        Input {
            name: "x",
            shape: &[2, 3],
            data: Data::F32(&x),
        },
    ])
    .expect("an error");
    assert!(
        message.contains("`A`") && message.contains("11"),
        "{message}"
    );
    // A dimension that disagrees.
    let message = call(&[
        Input {
            name: "A",
            shape: &[4, 3],
            data: Data::F32(&a),
        },
        Input {
            name: "b",
            shape: &[3],
            data: Data::F32(&b[..3]),
        },
        Input {
            name: "x",
            shape: &[2, 3],
            data: Data::F32(&x),
        },
    ])
    .expect("an error");
    assert!(message.contains("`b`"), "{message}");
    // A missing input, and one given twice.
    let message = call(&[Input {
        name: "A",
        shape: &[4, 3],
        data: Data::F32(&a),
    }])
    .expect("an error");
    assert!(message.contains("no array for variable"), "{message}");
    let twice = Input {
        name: "b",
        shape: &[4],
        data: Data::F32(&b),
    };
    let message = call(&[twice, twice]).expect("an error");
    assert!(message.contains("twice"), "{message}");
    // A shape whose size overflows is an error, not an abort.
    let message = call(&[Input {
        name: "A",
        shape: &[usize::MAX, 3],
        data: Data::F32(&a),
    }])
    .expect("an error");
    assert!(message.contains("`A`"), "{message}");
}

#[test]
fn sizes_past_memory_are_a_plan_error_before_any_allocation() {
    let f = compiled("x: vector(n); (x'*x)^2", "x", Compute::Hessian, Device::Cpu).unwrap();
    let x = vec![0.0f32; 200_000];
    match f.call(&[Input {
        name: "x",
        shape: &[200_000],
        data: Data::F32(&x),
    }]) {
        Err(Error::Plan(e)) => assert!(e.to_string().contains("GB"), "{e}"),
        other => panic!("expected a plan error, got {:?}", other.map(|e| e.executor)),
    }
}

#[test]
fn an_adapter_that_does_not_exist_is_a_missing_gpu() {
    let options = Options {
        device: Device::Gpu,
        adapter: Some(Adapter::Index(999)),
        ..Options::default()
    };
    match compile(LSQ, "x", Compute::Derivative, options) {
        Err(Error::NoGpu(e)) => {
            let text = e.to_string();
            // Without any adapter the message says so; with one, it names the bad number.
            assert!(
                text.contains("999") || text.contains("no GPU adapter"),
                "{text}"
            );
        }
        other => panic!("expected NoGpu, got {:?}", other.err()),
    }
    // `auto` falls back to the CPU and says why.
    let options = Options {
        device: Device::Auto,
        adapter: Some(Adapter::Index(999)),
        ..Options::default()
    };
    let f = compile(LSQ, "x", Compute::Derivative, options).expect("auto falls back");
    let p = Lsq::new(3, 2, 2, 6);
    let e = f.call(&p.inputs(true, false)).unwrap();
    assert_eq!(e.executor, "cpu");
    assert!(
        e.notes.iter().any(|n| n.contains("CPU path")),
        "{:?}",
        e.notes
    );
}

#[test]
fn threads_share_one_function() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Function>();
    let f = compiled(LSQ, "x", Compute::Derivative, Device::Cpu).unwrap();
    let problems: Vec<Lsq> = (0..4)
        .map(|k| Lsq::new(16, 8, 200 + k, 50 + k as u64))
        .collect();
    std::thread::scope(|scope| {
        for p in &problems {
            let f = &f;
            scope.spawn(move || {
                for _ in 0..5 {
                    let out = call(f, p, false).unwrap();
                    assert!(relative_error(&out[0].values.to_f64(), &p.gradients()) < 1e-5);
                }
            });
        }
    });
}

#[test]
fn float32_inputs_are_read_in_place() {
    let x = [1.0f32, 2.0];
    assert!(matches!(
        Data::F32(&x).to_f32(),
        std::borrow::Cow::Borrowed(_)
    ));
    let y = [1.0f64, 2.0];
    assert!(matches!(
        Data::F64(&y).to_f64(),
        std::borrow::Cow::Borrowed(_)
    ));
    assert!(matches!(Data::F64(&y).to_f32(), std::borrow::Cow::Owned(_)));
}

#[test]
fn all_splits_a_batch_across_the_cpu_and_every_gpu_in_item_order() {
    let options = Options {
        device: Device::All,
        ..Options::default()
    };
    let f = compile(LSQ, "x", Compute::Derivative, options).expect("all compiles");
    if f.gpus().is_empty() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and no GPU adapter for device all");
        }
        eprintln!("SKIPPED: device all without a GPU adapter splits nothing");
        return;
    }
    let p = Lsq::new(16, 6, 1001, 60);
    let expected = p.gradients();
    let inputs = p.inputs(true, false);
    for round in 0..3 {
        let e = f.call(&inputs).expect("the split call succeeds");
        assert_eq!(e.executor, "all");
        assert_eq!(e.shares.len(), 1 + f.gpus().len(), "{:?}", e.shares);
        assert_eq!(e.shares[0].0, "cpu");
        assert!(e.shares[1..].iter().all(|(name, _)| *name == "gpu"));
        assert_eq!(e.shares.iter().map(|(_, n)| n).sum::<usize>(), 1001);
        if round == 0 {
            // Before any measurement every executor takes an equal share.
            assert!(
                e.shares.iter().all(|&(_, n)| n >= 1001 / e.shares.len()),
                "{:?}",
                e.shares
            );
        }
        assert_eq!(e.outputs[0].shape, vec![1001, 6]);
        let error = relative_error(&e.outputs[0].values.to_f64(), &expected);
        assert!(
            error < 1e-5,
            "round {round}: {error:e} with shares {:?}",
            e.shares
        );
    }
}

#[test]
fn another_request_of_a_function_shares_its_devices() {
    let p = Lsq::new(7, 3, 5, 70);
    for device in DEVICES {
        let Some(f) = compiled(LSQ, "x", Compute::Derivative, device) else {
            continue;
        };
        let h = f
            .with_compute(Compute::Hessian)
            .expect("the Hessian derives");
        assert_eq!(h.gpus().len(), f.gpus().len(), "{device:?}");
        assert_eq!(h.options(), f.options());
        let one = p.rounded().hessian();
        let expected: Vec<f64> = (0..p.items).flat_map(|_| one.clone()).collect();
        let out = call(&h, &p, false).unwrap();
        assert!(
            relative_error(&out[0].values.to_f64(), &expected) < tolerance(&h),
            "{device:?}"
        );
    }
}
