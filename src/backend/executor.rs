//! The device choice and the executors behind one type.
//!
//! In: a [`Device`] (auto, CPU, GPU, all of them, or the float64 reference) and, for the GPU,
//! an [`Adapter`] choice; then a validated [`Plan`] with its inputs. Out: an [`Executor`] made
//! once for the plan (on the GPU a session with the shared inputs resident; for `all`, a
//! [`Split`] over every GPU and the CPU path) that runs batches, and the notes to show when a
//! choice fell back. Invariants: every fallback is decided here and nowhere else: `auto`
//! without an adapter runs on the CPU, `auto` on a software adapter that cannot run the plan's
//! loops runs on the CPU, `all` leaves out (with a note) a GPU that cannot run the plan, an
//! explicit `gpu` never falls back (its error is returned); `cpu` and `reference` never open a
//! GPU. A split batch comes back in item order, each item computed whole by one executor.

use std::borrow::Cow;
use std::sync::Mutex;
use std::time::Instant;

use crate::batch::{run_reference, Batch};
use crate::cpu::run_cpu;
use crate::gpu::{list_adapters, GpuContext, GpuError, GpuOptions, GpuSession};
use crate::plan::Plan;

/// Where to evaluate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    /// The GPU when an adapter exists and can run the plan, else the CPU path.
    Auto,
    /// The float32 CPU path.
    Cpu,
    /// The GPU; an error when there is none.
    Gpu,
    /// The float64 reference, item by item: the ground truth.
    Reference,
    /// Every GPU adapter and the CPU path, each batch split among them in proportion to
    /// the throughput each reached on its last share.
    All,
}

impl Device {
    pub fn from_name(name: &str) -> Option<Device> {
        match name {
            "auto" => Some(Device::Auto),
            "cpu" => Some(Device::Cpu),
            "gpu" => Some(Device::Gpu),
            "reference" => Some(Device::Reference),
            "all" => Some(Device::All),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
            Device::Reference => "reference",
            Device::All => "all",
        }
    }
}

/// Which GPU adapter.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Adapter {
    /// A case-insensitive part of the adapter's name.
    Name(String),
    /// The position in [`crate::gpu::list_adapters`] (two identical cards share a name).
    Index(usize),
}

/// Opens the GPUs that `device` asks for: none for `cpu` and `reference`, and none for `auto`
/// when no adapter can be had (with the note saying why); every adapter that opens for `all`
/// (a note for each that does not); `gpu` without one is an error.
pub fn open_gpus(
    device: Device,
    adapter: Option<&Adapter>,
) -> Result<(Vec<GpuContext>, Vec<String>), GpuError> {
    match device {
        Device::Cpu | Device::Reference => Ok((Vec::new(), Vec::new())),
        Device::All => Ok(open_all_gpus()),
        Device::Auto | Device::Gpu => match GpuContext::new(&gpu_options(adapter)) {
            Ok(ctx) => Ok((vec![ctx], Vec::new())),
            Err(e) if device == Device::Auto => {
                Ok((Vec::new(), vec![format!("{e}; using the CPU path")]))
            }
            Err(e) => Err(e),
        },
    }
}

/// The [`GpuOptions`] that choose `adapter` (`None`: `WGPU_ADAPTER_NAME`, else the preferred).
pub fn gpu_options(adapter: Option<&Adapter>) -> GpuOptions {
    GpuOptions {
        adapter: match adapter {
            Some(Adapter::Name(name)) => Some(name.clone()),
            _ => None,
        },
        adapter_index: match adapter {
            Some(Adapter::Index(index)) => Some(*index),
            _ => None,
        },
        ..GpuOptions::default()
    }
}

/// Every GPU adapter that opens (for [`Device::All`]), with a note for each that does not.
fn open_all_gpus() -> (Vec<GpuContext>, Vec<String>) {
    let mut opened = Vec::new();
    let mut notes = Vec::new();
    for (index, adapter) in list_adapters().iter().enumerate() {
        match GpuContext::new(&gpu_options(Some(&Adapter::Index(index)))) {
            Ok(ctx) => opened.push(ctx),
            Err(e) => notes.push(format!(
                "leaving out adapter {index} `{}`: {e}",
                adapter.name
            )),
        }
    }
    (opened, notes)
}

/// A plan's executor, made once and run on many batches.
pub enum Executor {
    Reference,
    Cpu,
    Gpu(Box<GpuSession>),
    /// Several float32 executors sharing each batch ([`Device::All`]).
    Split(Box<Split>),
}

impl Executor {
    /// The executor for `plan` on `device`, given the GPUs [`open_gpus`] opened and the plan's
    /// inputs (the shared ones are uploaded to GPU sessions). The notes say what `auto` or
    /// `all` left out and why.
    pub fn prepare<I: AsRef<[f32]>>(
        device: Device,
        gpus: &[GpuContext],
        plan: &Plan,
        inputs: &[I],
    ) -> Result<(Executor, Vec<String>), GpuError> {
        match (device, gpus.first()) {
            (Device::Reference, _) => Ok((Executor::Reference, Vec::new())),
            (Device::All, _) => Ok(Executor::split(gpus, plan, inputs)),
            (Device::Cpu, _) | (Device::Auto, None) => Ok((Executor::Cpu, Vec::new())),
            (Device::Gpu, None) => Err(GpuError::NoAdapter(String::new())),
            (Device::Gpu, Some(ctx)) => Ok((
                Executor::Gpu(Box::new(ctx.session(plan, inputs)?)),
                Vec::new(),
            )),
            (Device::Auto, Some(ctx)) => match ctx.session(plan, inputs) {
                Ok(session) => Ok((Executor::Gpu(Box::new(session)), Vec::new())),
                // A software adapter that would stop the plan's loops early hands it to the CPU.
                Err(e @ GpuError::LoopLimit { .. }) => {
                    Ok((Executor::Cpu, vec![format!("{e}; using the CPU path")]))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// The executors for [`Device::All`]: the CPU path and a session on each of `gpus` that can
    /// run the plan (the others are left out, each with a note).
    fn split<I: AsRef<[f32]>>(
        gpus: &[GpuContext],
        plan: &Plan,
        inputs: &[I],
    ) -> (Executor, Vec<String>) {
        let mut parts = vec![Executor::Cpu];
        let mut notes = Vec::new();
        for ctx in gpus {
            match ctx.session(plan, inputs) {
                Ok(session) => parts.push(Executor::Gpu(Box::new(session))),
                Err(e) => notes.push(format!("leaving out `{}`: {e}", ctx.adapter().name)),
            }
        }
        let throughput = Mutex::new(vec![1.0; parts.len()]);
        (
            Executor::Split(Box::new(Split { parts, throughput })),
            notes,
        )
    }

    /// Whether a GPU session holds the plan's shared inputs (so new values need a new one).
    pub fn holds_shared_inputs(&self) -> bool {
        match self {
            Executor::Gpu(_) => true,
            Executor::Split(split) => split.parts.iter().any(Executor::holds_shared_inputs),
            _ => false,
        }
    }

    /// Whether this executor computes in float64.
    pub fn is_reference(&self) -> bool {
        matches!(self, Executor::Reference)
    }

    /// The name of what runs: `reference`, `cpu`, `gpu`, or `all` for a split.
    pub fn name(&self) -> &'static str {
        match self {
            Executor::Reference => "reference",
            Executor::Cpu => "cpu",
            Executor::Gpu(_) => "gpu",
            Executor::Split(_) => "all",
        }
    }

    /// Runs `batch` items; `inputs[k]` holds `plan.inputs()[k]`'s values. Inputs already in the
    /// executor's precision are read where they are; the others are converted once.
    pub fn run(&self, plan: &Plan, inputs: &[Data<'_>], batch: usize) -> Result<Run, GpuError> {
        let whole = |results| Run {
            results,
            shares: vec![(self.name(), batch)],
        };
        if self.is_reference() {
            let wide: Vec<Cow<[f64]>> = inputs.iter().map(Data::to_f64).collect();
            return Ok(whole(Results::F64(run_reference(plan, &wide, batch))));
        }
        let narrow: Vec<Cow<[f32]>> = inputs.iter().map(Data::to_f32).collect();
        match self {
            Executor::Split(split) => {
                let (outputs, shares) = split.run(plan, &narrow, batch)?;
                Ok(Run {
                    results: Results::F32(outputs),
                    shares,
                })
            }
            _ => self
                .run_f32(plan, &narrow, batch)
                .map(Results::F32)
                .map(whole),
        }
    }
}

/// Float32 executors that share each batch: contiguous runs of items, in proportion to the
/// items per second each reached on its last share (equal shares the first time).
pub struct Split {
    parts: Vec<Executor>,
    throughput: Mutex<Vec<f64>>,
}

impl Split {
    /// The names of the executors that share the batches: `cpu`, then `gpu` for each adapter.
    pub fn names(&self) -> Vec<&'static str> {
        self.parts.iter().map(Executor::name).collect()
    }

    /// How many items each part takes of `batch`: proportional to its throughput, the
    /// remainders to the largest fractions, every item to exactly one part.
    pub fn shares(&self, batch: usize) -> Vec<usize> {
        let rates = self
            .throughput
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        proportional_shares(&rates, batch)
    }

    /// Runs the parts on their shares at once; the outputs in item order, and the shares.
    #[allow(clippy::type_complexity)]
    fn run<I: AsRef<[f32]> + Sync>(
        &self,
        plan: &Plan,
        inputs: &[I],
        batch: usize,
    ) -> Result<(Vec<Batch<f32>>, Vec<(&'static str, usize)>), GpuError> {
        if !plan.is_batched() || self.parts.len() == 1 {
            let outputs = self.parts[0].run_f32(plan, inputs, batch)?;
            return Ok((outputs, vec![(self.parts[0].name(), batch)]));
        }
        let shares = self.shares(batch);
        let mut first = 0;
        let ranges: Vec<(usize, usize)> = (shares.iter())
            .map(|&count| {
                first += count;
                (first - count, count)
            })
            .collect();
        let timed = std::thread::scope(|scope| {
            let handles: Vec<_> = (self.parts.iter().zip(&ranges))
                .filter(|(_, &(_, count))| count > 0)
                .map(|(part, &(first, count))| {
                    scope.spawn(move || {
                        let items: Vec<&[f32]> = (plan.inputs().iter().zip(inputs))
                            .map(|(input, values)| match input.batched {
                                true => {
                                    let len = input.rows * input.cols;
                                    &values.as_ref()[first * len..(first + count) * len]
                                }
                                false => values.as_ref(),
                            })
                            .collect();
                        let started = Instant::now();
                        let result = part.run_f32(plan, &items, count);
                        (result, count, started.elapsed().as_secs_f64())
                    })
                })
                .collect();
            (handles.into_iter())
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect::<Vec<_>>()
        });
        let mut rates = self.throughput.lock().unwrap_or_else(|p| p.into_inner());
        let mut measured = (shares.iter().enumerate()).filter(|(_, &count)| count > 0);
        let mut outputs: Option<Vec<Batch<f32>>> = None;
        for (result, count, seconds) in timed {
            let (k, _) = measured.next().expect("one result per part that ran");
            rates[k] = count as f64 / seconds.max(1e-9);
            let part = result?;
            match &mut outputs {
                None => outputs = Some(part),
                Some(all) => {
                    for (whole, piece) in all.iter_mut().zip(part) {
                        whole.data.extend_from_slice(&piece.data);
                    }
                }
            }
        }
        let mut outputs = outputs.expect("a batched plan has items");
        for out in &mut outputs {
            out.batch = Some(batch);
        }
        Ok((outputs, self.names().into_iter().zip(shares).collect()))
    }
}

impl Executor {
    /// Runs a float32 executor (the CPU path, a GPU session, a split) on float32 inputs.
    fn run_f32<I: AsRef<[f32]> + Sync>(
        &self,
        plan: &Plan,
        inputs: &[I],
        batch: usize,
    ) -> Result<Vec<Batch<f32>>, GpuError> {
        match self {
            Executor::Gpu(session) => session.run(inputs, batch),
            Executor::Split(split) => split.run(plan, inputs, batch).map(|(outputs, _)| outputs),
            _ => Ok(run_cpu(plan, inputs, batch)),
        }
    }
}

/// `batch` items in proportion to `rates` (positive), by largest remainders.
fn proportional_shares(rates: &[f64], batch: usize) -> Vec<usize> {
    let total: f64 = rates.iter().sum();
    let exact: Vec<f64> = rates.iter().map(|r| r / total * batch as f64).collect();
    let mut shares: Vec<usize> = exact.iter().map(|e| e.floor() as usize).collect();
    let mut order: Vec<usize> = (0..rates.len()).collect();
    order.sort_by(|&a, &b| (exact[b] - exact[b].floor()).total_cmp(&(exact[a] - exact[a].floor())));
    let missing = batch - shares.iter().sum::<usize>();
    for &k in order.iter().cycle().take(missing) {
        shares[k] += 1;
    }
    shares
}

#[cfg(test)]
mod tests {
    use super::proportional_shares;

    #[test]
    fn shares_are_proportional_and_cover_the_batch() {
        assert_eq!(proportional_shares(&[1.0, 1.0], 7), vec![4, 3]);
        assert_eq!(proportional_shares(&[3.0, 1.0], 100), vec![75, 25]);
        assert_eq!(proportional_shares(&[1.0, 1.0, 1.0], 1), vec![1, 0, 0]);
        assert_eq!(proportional_shares(&[1e-9, 1.0], 10), vec![0, 10]);
        for batch in [0, 1, 2, 5, 1000] {
            let s = proportional_shares(&[0.3, 2.0, 0.7], batch);
            assert_eq!(s.iter().sum::<usize>(), batch);
        }
    }
}

/// Values in either precision, borrowed.
#[derive(Clone, Copy, Debug)]
pub enum Data<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
}

impl<'a> Data<'a> {
    pub fn len(&self) -> usize {
        match self {
            Data::F32(d) => d.len(),
            Data::F64(d) => d.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Float32 values: borrowed when they are, else rounded once.
    pub fn to_f32(&self) -> Cow<'a, [f32]> {
        match *self {
            Data::F32(d) => Cow::Borrowed(d),
            Data::F64(d) => Cow::Owned(d.iter().map(|&x| x as f32).collect()),
        }
    }

    /// Float64 values: borrowed when they are, else widened once.
    pub fn to_f64(&self) -> Cow<'a, [f64]> {
        match *self {
            Data::F64(d) => Cow::Borrowed(d),
            Data::F32(d) => Cow::Owned(d.iter().map(|&x| f64::from(x)).collect()),
        }
    }
}

/// A run's outputs, and how many items each executor computed (one entry, or for a split the
/// CPU path's and each GPU's share, in item order).
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub results: Results,
    pub shares: Vec<(&'static str, usize)>,
}

/// An executor's outputs, one batch per plan output, in its precision.
#[derive(Clone, Debug, PartialEq)]
pub enum Results {
    F32(Vec<Batch<f32>>),
    F64(Vec<Batch<f64>>),
}
