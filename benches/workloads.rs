//! The six standard workloads (`shared/workloads.md`) on the float32 CPU path, data resident,
//! one gradient evaluation of the whole batch per iteration; on the GPU when there is an
//! adapter (the kernels and transfers of one whole batch; a software adapter runs 1/64 of each
//! batch, it is for correctness, not speed); and the float64 reference on a 1/64 slice of each
//! batch as the baseline (its time per item, scaled, gives the ratio).
//! Run with `cargo bench --bench workloads`; CI only compiles it.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use matgrad::batch::{run_reference, Batch};
use matgrad::check::to_f32;
use matgrad::cpu::{output_buffers, run_cpu_into};
use matgrad::gpu::{GpuContext, GpuOptions};
use matgrad::workloads::{prepare, WORKLOADS};

fn workloads(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpu");
    group.sample_size(10);
    for w in WORKLOADS {
        let p = prepare(w, w.batch);
        let inputs: Vec<Batch<f32>> = p.inputs.iter().map(to_f32).collect();
        let refs: Vec<&Batch<f32>> = inputs.iter().collect();
        let cost = p.plan.cost();
        eprintln!(
            "{}: {:.3} GFLOP and {:.1} MB per batch of {}",
            w.id,
            cost.flops(w.batch) / 1e9,
            cost.bytes(w.batch) / 1e6,
            w.batch
        );
        let mut outputs = output_buffers(&p.plan, w.batch);
        group.bench_function(w.id, |b| {
            b.iter(|| run_cpu_into(black_box(&p.plan), black_box(&refs), w.batch, &mut outputs))
        });
    }
    group.finish();

    match GpuContext::new(&GpuOptions::default()) {
        Ok(ctx) => {
            let software = ctx.adapter().device_type == "Cpu";
            let mut group = c.benchmark_group(format!("gpu ({})", ctx.adapter().name));
            group.sample_size(10);
            for w in WORKLOADS {
                let batch = if software { w.batch / 64 } else { w.batch };
                let p = prepare(w, batch);
                let inputs: Vec<Batch<f32>> = p.inputs.iter().map(to_f32).collect();
                let refs: Vec<&Batch<f32>> = inputs.iter().collect();
                let session = ctx
                    .session(&p.plan, &refs)
                    .expect("the workload's kernels compile");
                group.bench_function(w.id, |b| {
                    b.iter(|| session.run(black_box(&refs), batch).expect("the GPU runs"))
                });
            }
            group.finish();
        }
        Err(e) => eprintln!("gpu benchmarks skipped: {e}"),
    }

    let mut group = c.benchmark_group("reference (1/64 of the batch)");
    group.sample_size(10);
    for w in WORKLOADS {
        let slice = (w.batch / 64).max(1);
        let p = prepare(w, slice);
        let refs: Vec<&Batch<f64>> = p.inputs.iter().collect();
        group.bench_function(w.id, |b| {
            b.iter(|| run_reference(black_box(&p.plan), black_box(&refs), slice))
        });
    }
    group.finish();
}

criterion_group!(benches, workloads);
criterion_main!(benches);
