//! The five batch-optimization workloads O1–O5 (`shared/workloads.md`) solved on the float32
//! CPU path: one measurement is a whole solve of the batch, from inputs bound to solutions
//! ready, until every item has converged (gtol 5e-4, as `matgrad bench --minimize-workloads`
//! uses); the float64 reference solves 1/64 of each batch as the baseline. Each workload's
//! answer is checked once before timing: the worst item's projected gradient, in float64,
//! within 1e-3. Batches are 1/16 of the workloads' own so that a run takes minutes on two
//! cores (`matgrad bench --minimize-workloads` runs the full sizes). On a hardware GPU (not a
//! software adapter such as lavapipe, which is for correctness) the same 1/16 batches are
//! solved on the GPU path too, on one context opened before the timing.
//! Run with `cargo bench --bench minimize`; CI only compiles it.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use matgrad::batch::NamedArray;
use matgrad::gpu::GpuContext;
use matgrad::minimize::{
    minimize, minimize_on_gpu, stationarity, BoundSpec, Device, MinimizeError, Objective, Options,
    Solution,
};
use matgrad::types::check_program;
use matgrad::workloads::{minimize_inputs, MINIMIZE_WORKLOADS};

fn options(device: Device, lower: Option<f64>) -> Options {
    let mut options = Options::for_device(device);
    options.gtol = 5e-4;
    options.lower = lower.map(BoundSpec::Number);
    options
}

/// A hardware GPU, if one opens.
fn hardware_gpu() -> Option<GpuContext> {
    match GpuContext::new(&Default::default()) {
        Ok(ctx) if ctx.adapter().device_type != "Cpu" => Some(ctx),
        Ok(ctx) => {
            eprintln!(
                "minimize gpu: left out, `{}` is a software adapter",
                ctx.adapter().name
            );
            None
        }
        Err(e) => {
            eprintln!("minimize gpu: left out, {e}");
            None
        }
    }
}

/// One solve on `device` (the GPU's on the context opened once).
fn solve(
    gpu: Option<&GpuContext>,
    objective: &Objective,
    inputs: &[NamedArray],
    options: &Options,
    device: Device,
) -> Result<Solution, MinimizeError> {
    match (gpu, device) {
        (Some(ctx), Device::Gpu) => minimize_on_gpu(objective, inputs, options, ctx, &mut |_| {}),
        _ => minimize(objective, inputs, options, device),
    }
}

fn solves(c: &mut Criterion) {
    let gpu = hardware_gpu();
    let mut devices = vec![
        (Device::Cpu, "cpu", 16),
        (Device::Reference, "reference", 1024),
    ];
    if gpu.is_some() {
        devices.push((Device::Gpu, "gpu", 16));
    }
    for (device, name, fraction) in devices {
        let mut group = c.benchmark_group(format!("minimize {name}"));
        group.sample_size(10);
        for w in MINIMIZE_WORKLOADS {
            let batch = (w.batch / fraction).max(1);
            let inputs = minimize_inputs(w, batch);
            let objective = check_program(w.program)
                .and_then(|p| Objective::new(p, w.wrt))
                .expect("the workloads derive");
            let options = options(device, w.lower);
            let solution =
                solve(gpu.as_ref(), &objective, &inputs, &options, device).expect("solves");
            let worst = stationarity(&objective, &inputs, &options, &solution)
                .expect("evaluates")
                .into_iter()
                .fold(0.0f64, |a, b| if b.is_nan() || b > a { b } else { a });
            assert!(
                worst <= 1e-3,
                "{} on {name}: worst stationarity {worst:e}",
                w.id
            );
            group.bench_function(format!("{} B={batch}", w.id), |b| {
                b.iter(|| {
                    solve(
                        gpu.as_ref(),
                        black_box(&objective),
                        &inputs,
                        &options,
                        device,
                    )
                    .expect("solves")
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, solves);
criterion_main!(benches);
