//! The library façade's call (`Function::call`: binding by shapes, the cached plan and
//! executor, a new output array) against the executor alone (`run_cpu_into` on resident data
//! into reused buffers), on W3's program (8×8 per item) at batches of 1, 64 and 65 536, float32
//! inputs on the CPU path. The difference is what the façade costs per call; the Python
//! package adds its own on top (`benches/python_calls.py`).
//! Run with `cargo bench --bench facade`; CI only compiles it.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use matgrad::batch::Batch;
use matgrad::check::to_f32;
use matgrad::cpu::{output_buffers, run_cpu_into};
use matgrad::executor::{Data, Device};
use matgrad::function::{compile, Compute, Input, Options};
use matgrad::workloads::{prepare, WORKLOADS};

fn facade(c: &mut Criterion) {
    let w = WORKLOADS
        .iter()
        .find(|w| w.id.starts_with("W3"))
        .expect("W3 is a workload");
    let options = Options {
        device: Device::Cpu,
        ..Options::default()
    };
    let f = compile(w.program, w.wrt, Compute::Derivative, options).expect("W3 compiles");
    let mut group = c.benchmark_group("facade W3");
    for batch in [1usize, 64, 65_536] {
        let p = prepare(w, batch);
        let inputs: Vec<Batch<f32>> = p.inputs.iter().map(to_f32).collect();
        let refs: Vec<&Batch<f32>> = inputs.iter().collect();
        let mut outputs = output_buffers(&p.plan, batch);
        group.bench_function(format!("executor B={batch}"), |b| {
            b.iter(|| run_cpu_into(black_box(&p.plan), black_box(&refs), batch, &mut outputs))
        });
        let shapes: Vec<Vec<usize>> = (p.plan.inputs().iter())
            .map(|i| match i.cols {
                1 => vec![batch, i.rows],
                _ => vec![batch, i.rows, i.cols],
            })
            .collect();
        let named: Vec<Input> = (p.plan.inputs().iter().zip(&inputs).zip(&shapes))
            .map(|((i, values), shape)| Input {
                name: &i.name,
                shape,
                data: Data::F32(&values.data),
            })
            .collect();
        f.call(&named).expect("the inputs fit");
        group.bench_function(format!("Function::call B={batch}"), |b| {
            b.iter(|| f.call(black_box(&named)).expect("the inputs fit"))
        });
    }
    group.finish();
}

criterion_group!(benches, facade);
criterion_main!(benches);
