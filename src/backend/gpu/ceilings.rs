//! The GPU's measured ceilings: copy bandwidth and float32 multiply-add rate.
//!
//! In: a [`GpuContext`]. Out: [`Ceilings`] from two microbenchmarks (`shaders/copy.wgsl`, a
//! buffer-to-buffer copy by a kernel; `shaders/fma.wgsl`, independent chains of `fma` in
//! registers), each the median of several timed dispatches, sized up until one dispatch takes
//! long enough to time. Timed by timestamp queries where the adapter has them, else by the
//! host around each submission. `matgrad bench` divides by these to report the fraction of
//! the device's peak.

use std::time::Instant;

use crate::bench::Ceilings;

use super::{GpuContext, GpuError};

const COPY_SHADER: &str = include_str!("../../../shaders/copy.wgsl");
const FMA_SHADER: &str = include_str!("../../../shaders/fma.wgsl");
/// Must match `ITERATIONS` and the chains of `shaders/fma.wgsl`.
const FMA_FLOPS_PER_INVOCATION: f64 = 512.0 * 4.0 * 4.0 * 2.0;
const WORKGROUP: u64 = 256;
/// A dispatch shorter than this is doubled before it is timed.
const MIN_SECONDS: f64 = 0.005;
const REPEATS: usize = 5;

/// Measures `ctx`'s device.
pub fn measure(ctx: &GpuContext) -> Result<Ceilings, GpuError> {
    let copy = copy_bandwidth(ctx)?;
    let fma = fma_rate(ctx)?;
    Ok(Ceilings {
        device: format!("gpu: {}", ctx.adapter.name),
        copy_bytes_per_s: copy,
        flops_per_s: fma,
        how: if ctx.timestamps {
            "timestamp queries".into()
        } else {
            "host timer".into()
        },
    })
}

/// Seconds of one dispatch of `groups` workgroups (folded into two dimensions).
fn time_dispatch(
    ctx: &GpuContext,
    pipeline: &wgpu::ComputePipeline,
    bind_group: &wgpu::BindGroup,
    groups: u64,
) -> Result<f64, GpuError> {
    let per_dim = ctx.workgroups_per_dimension as u64;
    let x = groups.min(per_dim);
    let y = groups.div_ceil(x);
    let started = Instant::now();
    let (submission, queries) = ctx.scoped("running a microbenchmark", || {
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None });
        let queries = ctx.timestamp_queries();
        {
            let timestamp_writes = queries.as_ref().and_then(|q| q.writes(true, true));
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes,
            });
            pass.set_pipeline(pipeline);
            pass.set_bind_group(0, bind_group, &[]);
            pass.dispatch_workgroups(x as u32, y as u32, 1);
        }
        if let Some(q) = &queries {
            q.resolve(&mut encoder);
        }
        (
            ctx.queue.submit(Some(encoder.finish())),
            queries.map(|q| q.read),
        )
    })?;
    ctx.device
        .poll(wgpu::PollType::WaitForSubmissionIndex(submission.clone()))
        .map_err(|e| GpuError::Device {
            during: "waiting for a microbenchmark".into(),
            why: e.to_string(),
        })?;
    let host = started.elapsed().as_secs_f64();
    Ok(queries
        .and_then(|read| super::read_timestamps(ctx, &read, submission))
        .filter(|&s| s > 0.0)
        .unwrap_or(host))
}

/// Doubles the workgroups until one dispatch takes [`MIN_SECONDS`] (or `max_groups` is
/// reached), then returns (workgroups, median seconds of [`REPEATS`] dispatches).
fn timed(
    ctx: &GpuContext,
    pipeline: &wgpu::ComputePipeline,
    bind_group: &wgpu::BindGroup,
    mut groups: u64,
    max_groups: u64,
) -> Result<(u64, f64), GpuError> {
    loop {
        let seconds = time_dispatch(ctx, pipeline, bind_group, groups)?;
        if seconds >= MIN_SECONDS || groups >= max_groups {
            break;
        }
        groups = (groups * 2).min(max_groups);
    }
    let mut samples = Vec::with_capacity(REPEATS);
    for _ in 0..REPEATS {
        samples.push(time_dispatch(ctx, pipeline, bind_group, groups)?);
    }
    Ok((groups, crate::bench::median(&mut samples)))
}

/// Bytes read plus bytes written per second by a copy kernel over two large buffers.
fn copy_bandwidth(ctx: &GpuContext) -> Result<f64, GpuError> {
    let limit = (ctx.limits.max_storage_buffer_binding_size as u64).min(ctx.limits.max_buffer_size);
    let bytes = limit.min(512 << 20) / 16 * 16;
    let pipeline = ctx.compile(COPY_SHADER, "main", None)?;
    let bind_group = ctx.scoped("allocating copy buffers", || {
        let buffer = |usage| {
            ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("matgrad copy benchmark"),
                size: bytes,
                usage,
                mapped_at_creation: false,
            })
        };
        let src = buffer(wgpu::BufferUsages::STORAGE);
        let dst = buffer(wgpu::BufferUsages::STORAGE);
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: src.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: dst.as_entire_binding(),
                },
            ],
        })
    })?;
    let groups = (bytes / 16).div_ceil(WORKGROUP);
    let (_, seconds) = timed(ctx, &pipeline, &bind_group, groups, groups)?;
    Ok(2.0 * bytes as f64 / seconds)
}

/// Float32 operations per second (a multiply-add counts two).
fn fma_rate(ctx: &GpuContext) -> Result<f64, GpuError> {
    let pipeline = ctx.compile(FMA_SHADER, "main", None)?;
    let bind_group = ctx.scoped("allocating the multiply-add benchmark", || {
        let sink = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("matgrad fma sink"),
            size: 16 * 256,
            usage: wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        });
        ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: sink.as_entire_binding(),
            }],
        })
    })?;
    let max_groups = ctx.workgroups_per_dimension as u64;
    let (groups, seconds) = timed(ctx, &pipeline, &bind_group, 64, max_groups)?;
    Ok(groups as f64 * WORKGROUP as f64 * FMA_FLOPS_PER_INVOCATION / seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written ceilings shaders are valid WGSL, checked by naga with no GPU.
    #[test]
    fn the_ceiling_shaders_validate() {
        for (name, source) in [("copy.wgsl", COPY_SHADER), ("fma.wgsl", FMA_SHADER)] {
            crate::wgsl::validate(source).unwrap_or_else(|e| panic!("shaders/{name}: {e}"));
        }
    }
}
