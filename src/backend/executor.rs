//! The device choice and the executors behind one type.
//!
//! In: a [`Device`] (auto, CPU, GPU or the float64 reference) and, for the GPU, an
//! [`Adapter`] choice; then a validated [`Plan`] with its inputs. Out: an [`Executor`] made once
//! for the plan (on the GPU a session with the shared inputs resident) that runs batches, and
//! the note to show when a choice fell back. Invariants: every fallback is decided here and
//! nowhere else: `auto` without an adapter runs on the CPU, `auto` on a software adapter that
//! cannot run the plan's loops runs on the CPU, an explicit `gpu` never falls back (its error is
//! returned); `cpu` and `reference` never open a GPU.

use std::borrow::Cow;

use crate::batch::{run_reference, Batch};
use crate::cpu::run_cpu;
use crate::gpu::{GpuContext, GpuError, GpuOptions, GpuSession};
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
}

impl Device {
    pub fn from_name(name: &str) -> Option<Device> {
        match name {
            "auto" => Some(Device::Auto),
            "cpu" => Some(Device::Cpu),
            "gpu" => Some(Device::Gpu),
            "reference" => Some(Device::Reference),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Device::Auto => "auto",
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
            Device::Reference => "reference",
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

/// Opens the GPU that `device` asks for: `Ok(None)` for `cpu` and `reference`, and for `auto`
/// when no adapter can be had (with the note saying why); `gpu` without one is an error.
pub fn open_gpu(
    device: Device,
    adapter: Option<&Adapter>,
) -> Result<(Option<GpuContext>, Option<String>), GpuError> {
    if matches!(device, Device::Cpu | Device::Reference) {
        return Ok((None, None));
    }
    match GpuContext::new(&gpu_options(adapter)) {
        Ok(ctx) => Ok((Some(ctx), None)),
        Err(e) if device == Device::Auto => Ok((None, Some(format!("{e}; using the CPU path")))),
        Err(e) => Err(e),
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

/// A plan's executor, made once and run on many batches.
pub enum Executor {
    Reference,
    Cpu,
    Gpu(Box<GpuSession>),
}

impl Executor {
    /// The executor for `plan` on `device`, given the GPU [`open_gpu`] opened (if any) and the
    /// plan's inputs (the shared ones are uploaded to a GPU session). The note says why `auto`
    /// did not take the GPU it had.
    pub fn prepare<I: AsRef<[f32]>>(
        device: Device,
        gpu: Option<&GpuContext>,
        plan: &Plan,
        inputs: &[I],
    ) -> Result<(Executor, Option<String>), GpuError> {
        match (device, gpu) {
            (Device::Reference, _) => Ok((Executor::Reference, None)),
            (Device::Cpu, _) | (Device::Auto, None) => Ok((Executor::Cpu, None)),
            (Device::Gpu, None) => Err(GpuError::NoAdapter(String::new())),
            (Device::Gpu, Some(ctx)) => {
                Ok((Executor::Gpu(Box::new(ctx.session(plan, inputs)?)), None))
            }
            (Device::Auto, Some(ctx)) => match ctx.session(plan, inputs) {
                Ok(session) => Ok((Executor::Gpu(Box::new(session)), None)),
                // A software adapter that would stop the plan's loops early hands it to the CPU.
                Err(e @ GpuError::LoopLimit { .. }) => {
                    Ok((Executor::Cpu, Some(format!("{e}; using the CPU path"))))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Whether this executor computes in float64.
    pub fn is_reference(&self) -> bool {
        matches!(self, Executor::Reference)
    }

    /// The name of what runs: `reference`, `cpu` or `gpu`.
    pub fn name(&self) -> &'static str {
        match self {
            Executor::Reference => "reference",
            Executor::Cpu => "cpu",
            Executor::Gpu(_) => "gpu",
        }
    }

    /// Runs `batch` items; `inputs[k]` holds `plan.inputs()[k]`'s values. Inputs already in the
    /// executor's precision are read where they are; the others are converted once.
    pub fn run(&self, plan: &Plan, inputs: &[Data<'_>], batch: usize) -> Result<Results, GpuError> {
        if self.is_reference() {
            let wide: Vec<Cow<[f64]>> = inputs.iter().map(Data::to_f64).collect();
            return Ok(Results::F64(run_reference(plan, &wide, batch)));
        }
        let narrow: Vec<Cow<[f32]>> = inputs.iter().map(Data::to_f32).collect();
        match self {
            Executor::Gpu(session) => session.run(&narrow, batch).map(Results::F32),
            _ => Ok(Results::F32(run_cpu(plan, &narrow, batch))),
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

/// An executor's outputs, one batch per plan output, in its precision.
#[derive(Clone, Debug, PartialEq)]
pub enum Results {
    F32(Vec<Batch<f32>>),
    F64(Vec<Batch<f64>>),
}
