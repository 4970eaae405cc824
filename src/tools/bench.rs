//! Measuring evaluation speed: what `matgrad bench` and `matgrad devices --measure` report.
//!
//! In: a prepared plan with its inputs, a device (the fast CPU path or a [`GpuContext`]), a
//! batch size. Out: a [`Measurement`]: the median seconds of one whole-batch evaluation with
//! the data resident (compute only) and end to end (with uploads and read-back on a GPU),
//! items per second, and effective GB/s and GFLOP/s from the plan's own counts of bytes and
//! operations ([`Plan::cost`]), with the fraction of the device's measured [`Ceilings`].
//! Invariants: every measurement runs warm (one evaluation before timing) and reports a
//! median of at least [`BenchConfig::samples`] timed runs; throughput figures are derived from
//! the plan's counts, never from the hardware's, so the same plan reports the same work on
//! every device.

use std::time::Instant;

use rayon::prelude::*;
use serde::Serialize;

use crate::batch::Batch;
use crate::cpu::{output_buffers, run_cpu_into_on, Isa};
use crate::gpu::{GpuContext, GpuError};
use crate::plan::Plan;

/// A device's measured limits.
#[derive(Clone, Debug, Serialize)]
pub struct Ceilings {
    pub device: String,
    /// Bytes read plus bytes written per second by a large copy.
    pub copy_bytes_per_s: f64,
    /// Float32 operations per second: a parallel GEMM on the CPU (what its kernels can
    /// reach), chains of `fma` in registers on a GPU (a multiply-add counts two).
    pub flops_per_s: f64,
    /// How the time was taken.
    pub how: String,
}

/// How long to measure.
#[derive(Clone, Copy, Debug)]
pub struct BenchConfig {
    /// Timed runs at least.
    pub samples: usize,
    /// Keep sampling until this many seconds have passed (up to 1000 runs).
    pub min_seconds: f64,
}

impl Default for BenchConfig {
    fn default() -> Self {
        BenchConfig {
            samples: 10,
            min_seconds: 0.5,
        }
    }
}

/// One device at one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub label: String,
    pub device: String,
    pub batch: usize,
    /// Median seconds per batch, data resident (GPU: the kernels, by timestamp queries where
    /// the adapter has them).
    pub median_s: f64,
    /// Median seconds per batch with uploads of the batched inputs and read-back.
    pub end_to_end_median_s: f64,
    pub samples: usize,
    pub items_per_s: f64,
    /// The plan's operations and bytes for the whole batch.
    pub flops: f64,
    pub bytes: f64,
    pub gflop_per_s: f64,
    pub gb_per_s: f64,
    /// Of the device's measured copy bandwidth and multiply-add rate, where measured.
    pub fraction_of_copy: Option<f64>,
    pub fraction_of_flops: Option<f64>,
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(samples: &mut [f64]) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let n = samples.len();
    if n % 2 == 1 {
        samples[n / 2]
    } else {
        0.5 * (samples[n / 2 - 1] + samples[n / 2])
    }
}

/// The most samples one measurement takes, and the longest `--min-time`.
pub const MAX_SAMPLES: usize = 1000;
pub const MAX_MIN_SECONDS: f64 = 3600.0;

/// After this long (or `min_seconds`, if longer), a measurement stops at the samples it has,
/// at least [`MIN_SAMPLES_WHEN_SLOW`], so that a slow case cannot hold a run without end; the
/// count it reports says how many it took.
pub const MAX_SAMPLING_SECONDS: f64 = 120.0;
pub const MIN_SAMPLES_WHEN_SLOW: usize = 3;

/// `Err` with a message for a sample count or a minimum time that cannot be honoured.
pub fn check_sampling(samples: usize, min_seconds: f64) -> Result<(), String> {
    if !(1..=MAX_SAMPLES).contains(&samples) {
        return Err(format!(
            "`--samples {samples}`: between 1 and {MAX_SAMPLES} (a measurement also stops \
             after {MAX_SAMPLING_SECONDS} s with the samples it has)"
        ));
    }
    if !(min_seconds.is_finite() && (0.0..=MAX_MIN_SECONDS).contains(&min_seconds)) {
        return Err(format!(
            "`--min-time {min_seconds}`: a number of seconds between 0 and {MAX_MIN_SECONDS}"
        ));
    }
    Ok(())
}

/// Runs `f` (which returns its compute and end-to-end seconds) warm, then until both
/// `config`'s sample count and time are reached, or [`MAX_SAMPLING_SECONDS`] have passed;
/// returns the two medians and the count.
pub fn sample<E>(
    config: &BenchConfig,
    mut f: impl FnMut() -> Result<(f64, f64), E>,
) -> Result<(f64, f64, usize), E> {
    f()?;
    let started = Instant::now();
    let (mut compute, mut total) = (Vec::new(), Vec::new());
    let deadline = config.min_seconds.max(MAX_SAMPLING_SECONDS);
    while compute.len() < config.samples.max(1)
        || (started.elapsed().as_secs_f64() < config.min_seconds && compute.len() < MAX_SAMPLES)
    {
        if compute.len() >= MIN_SAMPLES_WHEN_SLOW && started.elapsed().as_secs_f64() > deadline {
            break;
        }
        let (c, t) = f()?;
        compute.push(c);
        total.push(t);
    }
    let n = compute.len();
    Ok((median(&mut compute), median(&mut total), n))
}

fn measurement(
    label: &str,
    device: String,
    plan: &Plan,
    batch: usize,
    (median_s, end_to_end_median_s, samples): (f64, f64, usize),
    ceilings: Option<&Ceilings>,
) -> Measurement {
    let cost = plan.cost();
    let (flops, bytes) = (cost.flops(batch), cost.bytes(batch));
    let gflop_per_s = flops / median_s / 1e9;
    let gb_per_s = bytes / median_s / 1e9;
    Measurement {
        label: label.to_string(),
        device,
        batch,
        median_s,
        end_to_end_median_s,
        samples,
        items_per_s: batch as f64 / median_s,
        flops,
        bytes,
        gflop_per_s,
        gb_per_s,
        fraction_of_copy: ceilings.map(|c| gb_per_s * 1e9 / c.copy_bytes_per_s),
        fraction_of_flops: ceilings.map(|c| gflop_per_s * 1e9 / c.flops_per_s),
    }
}

/// The fast CPU path on `inputs` (outputs written into buffers allocated once).
///
/// # Panics
/// If `isa` is not one of [`Isa::available`].
pub fn bench_cpu(
    label: &str,
    isa: Isa,
    plan: &Plan,
    inputs: &[&Batch<f32>],
    batch: usize,
    config: &BenchConfig,
    ceilings: Option<&Ceilings>,
) -> Measurement {
    let mut outputs = output_buffers(plan, batch);
    let timing = sample::<std::convert::Infallible>(config, || {
        let started = Instant::now();
        run_cpu_into_on(isa, plan, inputs, batch, &mut outputs);
        let s = started.elapsed().as_secs_f64();
        Ok((s, s))
    });
    let Ok(timing) = timing;
    measurement(label, cpu_device(isa), plan, batch, timing, ceilings)
}

/// How the CPU is named in measurements: threads and instruction set.
fn cpu_device(isa: Isa) -> String {
    format!(
        "cpu ({} threads, {})",
        rayon::current_num_threads(),
        isa.name()
    )
}

/// The GPU: the pipeline and shared inputs resident, batched inputs streamed each run.
pub fn bench_gpu(
    label: &str,
    ctx: &GpuContext,
    plan: &Plan,
    inputs: &[&Batch<f32>],
    batch: usize,
    config: &BenchConfig,
    ceilings: Option<&Ceilings>,
) -> Result<Measurement, GpuError> {
    let session = ctx.session(plan, inputs)?;
    let timing = sample(config, || {
        session
            .run_timed(inputs, batch)
            .map(|(_, t)| (t.kernel_seconds, t.end_to_end_seconds))
    })?;
    let device = format!("gpu: {}", ctx.adapter().name);
    Ok(measurement(label, device, plan, batch, timing, ceilings))
}

/// Measures this machine's CPU: a parallel copy of two 256 MiB buffers and a parallel
/// float32 GEMM: 1024³ (matrixmultiply, the lanes path's GEMM) and the item-major path's
/// kernel on cache-resident operands, the faster of the two; medians of five runs each.
///
/// # Panics
/// If `isa` is not one of [`Isa::available`].
pub fn measure_cpu(isa: Isa) -> Ceilings {
    let len = 64 << 20;
    let src = vec![1.0f32; len];
    let mut dst = vec![0.0f32; len];
    let chunk = len / rayon::current_num_threads().max(1) / 8;
    let copy_seconds = median_of_five(|| {
        dst.par_chunks_mut(chunk)
            .zip(src.par_chunks(chunk))
            .for_each(|(d, s)| d.copy_from_slice(s))
    });

    let n = 1024;
    let a: Vec<f32> = (0..n * n).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..n * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut c = vec![0.0f32; n * n];
    let threads = rayon::current_num_threads().max(1);
    let rows = n.div_ceil(threads);
    let gemm_seconds = median_of_five(|| {
        c.par_chunks_mut(rows * n)
            .enumerate()
            .for_each(|(i, block)| {
                let m = block.len() / n;
                crate::cpu::kernels::gemm(m, n, n, &a[i * rows * n..], n, 1, &b, n, 1, block, n);
            })
    });
    // The item-major path's register-tile kernel on operands that stay in cache (per thread:
    // 192 rows × 128 by 128 × 256, forty times): its rate, where higher, is the ceiling.
    let (rows, k, cols, repeats) = (192, 128, 256, 40);
    let x: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let f: Vec<f32> = (0..k * cols).map(|i| (i % 5) as f32 * 0.1).collect();
    let f = crate::cpu::rows::pack(k, cols, &f);
    let mut outs = vec![vec![0.0f32; rows * cols]; threads];
    let tile_seconds = median_of_five(|| {
        outs.par_iter_mut().for_each(|out| {
            for _ in 0..repeats {
                crate::cpu::rows::gemm_rows_for(isa, rows, k, cols, &x, &f, out);
            }
        })
    });
    let tile_flops = (2 * rows * k * cols * repeats * threads) as f64 / tile_seconds;
    Ceilings {
        device: cpu_device(isa),
        copy_bytes_per_s: 2.0 * 4.0 * len as f64 / copy_seconds,
        flops_per_s: (2.0 * (n as f64).powi(3) / gemm_seconds).max(tile_flops),
        how: "host timer".into(),
    }
}

/// Median seconds of five runs of `f` after one untimed warm-up run.
fn median_of_five(mut f: impl FnMut()) -> f64 {
    f();
    let mut seconds: Vec<f64> = (0..5)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed().as_secs_f64()
        })
        .collect();
    median(&mut seconds)
}

/// The GPU's ceilings (see [`crate::gpu::measure_ceilings`]).
pub fn measure_gpu(ctx: &GpuContext) -> Result<Ceilings, GpuError> {
    crate::gpu::measure_ceilings(ctx)
}

/// An SVG chart of items per second against batch size, log–log, one line per device and
/// label: the sweep `matgrad bench --plot` writes.
pub fn svg_plot(title: &str, measurements: &[Measurement]) -> String {
    const W: f64 = 760.0;
    const H: f64 = 460.0;
    const LEFT: f64 = 80.0;
    const RIGHT: f64 = 220.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 60.0;
    let finite = |v: f64| v.is_finite() && v > 0.0;
    let points: Vec<&Measurement> = measurements
        .iter()
        .filter(|m| finite(m.items_per_s))
        .collect();
    let range = |f: &dyn Fn(&Measurement) -> f64| {
        let lo = points.iter().map(|m| f(m)).fold(f64::INFINITY, f64::min);
        let hi = points.iter().map(|m| f(m)).fold(0.0, f64::max);
        if points.is_empty() {
            (0.0, 1.0)
        } else {
            let (lo, hi) = (lo.log10().floor(), hi.log10().ceil());
            (lo, if hi > lo { hi } else { lo + 1.0 })
        }
    };
    let (x0, x1) = range(&|m| m.batch as f64);
    let (y0, y1) = range(&|m| m.items_per_s);
    let px = |v: f64| LEFT + (v.log10() - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |v: f64| H - BOTTOM - (v.log10() - y0) / (y1 - y0) * (H - TOP - BOTTOM);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"22\" text-anchor=\"middle\" font-size=\"14\">{}</text>\n",
        (W - RIGHT + LEFT) / 2.0,
        escape(title)
    );
    for e in x0 as i32..=x1 as i32 {
        let x = px(10f64.powi(e));
        svg += &format!(
            "<line x1=\"{x:.1}\" y1=\"{TOP}\" x2=\"{x:.1}\" y2=\"{}\" stroke=\"#ddd\"/>\
             <text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">1e{e}</text>\n",
            H - BOTTOM,
            H - BOTTOM + 18.0
        );
    }
    for e in y0 as i32..=y1 as i32 {
        let y = py(10f64.powi(e));
        svg += &format!(
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">1e{e}</text>\n",
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    svg += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">batch size (items)</text>\n\
         <text x=\"18\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 18 {})\">items per second (compute, median)</text>\n",
        (W - RIGHT + LEFT) / 2.0,
        H - 16.0,
        (H - BOTTOM + TOP) / 2.0,
        (H - BOTTOM + TOP) / 2.0
    );
    let colors = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
    ];
    let mut series: Vec<(String, Vec<&Measurement>)> = Vec::new();
    for m in &points {
        let key = if m.label.is_empty() {
            m.device.clone()
        } else {
            format!("{} — {}", m.label, m.device)
        };
        match series.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(m),
            None => series.push((key, vec![m])),
        }
    }
    for (i, (key, mut ms)) in series.into_iter().enumerate() {
        ms.sort_by_key(|m| m.batch);
        let color = colors[i % colors.len()];
        let path: Vec<String> = ms
            .iter()
            .map(|m| format!("{:.1},{:.1}", px(m.batch as f64), py(m.items_per_s)))
            .collect();
        svg += &format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"2\" points=\"{}\"/>\n",
            path.join(" ")
        );
        for m in &ms {
            svg += &format!(
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>\n",
                px(m.batch as f64),
                py(m.items_per_s)
            );
        }
        let y = TOP + 10.0 + 18.0 * i as f64;
        svg += &format!(
            "<line x1=\"{}\" y1=\"{y}\" x2=\"{}\" y2=\"{y}\" stroke=\"{color}\" stroke-width=\"2\"/>\
             <text x=\"{}\" y=\"{}\">{}</text>\n",
            W - RIGHT + 10.0,
            W - RIGHT + 30.0,
            W - RIGHT + 36.0,
            y + 4.0,
            escape(&key)
        );
    }
    svg += "</svg>\n";
    svg
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn plot_has_one_line_per_device_and_escapes_labels() {
        let m = |device: &str, batch: usize, items_per_s: f64| Measurement {
            label: "a<b".into(),
            device: device.into(),
            batch,
            median_s: batch as f64 / items_per_s,
            end_to_end_median_s: 0.0,
            samples: 10,
            items_per_s,
            flops: 0.0,
            bytes: 0.0,
            gflop_per_s: 0.0,
            gb_per_s: 0.0,
            fraction_of_copy: None,
            fraction_of_flops: None,
        };
        let svg = svg_plot(
            "t",
            &[
                m("cpu", 10, 1e3),
                m("cpu", 1000, 1e5),
                m("gpu", 10, 1e2),
                m("gpu", 1000, 1e6),
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert_eq!(svg.matches("<circle").count(), 4);
        assert!(svg.contains("a&lt;b") && !svg.contains("a<b"));
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
