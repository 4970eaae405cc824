//! `matgrad eval`: read the inputs, compile the program with the library's façade
//! ([`matgrad::function`]), run it on the chosen device, write the outputs (all of them or
//! none).

use std::path::Path;

use matgrad::executor::{Data, Device};
use matgrad::function::{compile, Array, Compute, Error, Input, Options, Values};
use matgrad::npy::read_npz;

use super::adapter_choice;
use crate::{DeviceArg, EvalArgs};

/// `matgrad eval`, from its arguments to the exit status.
pub fn eval(args: EvalArgs) -> u8 {
    let device = args.device.device();
    let options = Options {
        layout: args.layout.layout(),
        device,
        adapter: adapter_choice(args.adapter),
    };
    let compute = match (args.hessian, args.value_out.is_some()) {
        (false, false) => Compute::Derivative,
        (false, true) => Compute::ValueAndDerivative,
        (true, false) => Compute::Hessian,
        (true, true) => Compute::ValueAndHessian,
    };
    let function = match compile(&args.program, &args.wrt, compute, options) {
        Ok(f) => f,
        Err(Error::Program { diagnostic, .. }) => return crate::report(&diagnostic, &args.program),
        Err(e) => {
            errorln!("{e}");
            return 2;
        }
    };
    if let (Some(ctx), DeviceArg::Auto) = (function.gpu(), args.device) {
        let a = ctx.adapter();
        eprintln!(
            "note: using GPU adapter `{}` ({}, {})",
            a.name, a.backend, a.device_type
        );
    }
    match run_eval(
        &function,
        &args.inputs,
        &args.out,
        args.value_out.as_deref(),
    ) {
        Ok(()) => 0,
        Err(message) => {
            errorln!("{message}");
            2
        }
    }
}

impl DeviceArg {
    pub fn device(self) -> Device {
        match self {
            DeviceArg::Reference => Device::Reference,
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Gpu => Device::Gpu,
            DeviceArg::Auto => Device::Auto,
            DeviceArg::All => Device::All,
        }
    }
}

/// `matgrad eval`: read, call, write.
fn run_eval(
    function: &matgrad::Function,
    inputs: &Path,
    out: &Path,
    value_out: Option<&Path>,
) -> Result<(), String> {
    let mut outputs = vec![("--out", out)];
    outputs.extend(value_out.map(|v| ("--value-out", v)));
    super::refuse_overwrites(inputs, &outputs)?;
    let arrays = read_npz(inputs).map_err(|e| e.to_string())?;
    let named: Vec<Input> = (arrays.iter())
        .map(|a| Input {
            name: &a.name,
            shape: &a.shape,
            data: Data::F64(&a.data),
        })
        .collect();
    let context = |e: Error| match e {
        Error::Bind(e) => format!("{e} (in `{}`)", inputs.display()),
        e => e.to_string(),
    };
    let evaluation = function.call(&named).map_err(context)?;
    super::warn_unused(&evaluation.unused, inputs);
    if evaluation.executor != "reference" {
        super::warn_float32_range(&arrays, inputs);
    }
    for note in &evaluation.notes {
        eprintln!("note: {note}");
    }
    // The derivative is the last output; the value, when asked for, comes first.
    let mut results = evaluation.outputs;
    let derivative = results.pop().expect("a function returns its derivative");
    let value_array = results.pop();
    // Every output is staged before the first is renamed into place: all are written or none.
    let mut staged = vec![stage(&derivative, out)?];
    if let (Some(array), Some(path)) = (&value_array, value_out) {
        staged.push(stage(array, path)?);
    }
    for output in staged {
        output.commit().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Stages an array as `.npy`, after reporting its non-finite items.
fn stage(array: &Array, path: &Path) -> Result<matgrad::npy::Staged, String> {
    let staged = match &array.values {
        Values::F32(v) => stage_values(&array.shape, array.batch, v, path),
        Values::F64(v) => stage_values(&array.shape, array.batch, v, path),
    };
    staged.map_err(|e| e.to_string())
}

fn stage_values<T: matgrad::npy::Element + Into<f64> + Copy>(
    shape: &[usize],
    batch: Option<usize>,
    values: &[T],
    path: &Path,
) -> Result<matgrad::npy::Staged, matgrad::npy::NpyError> {
    let items = batch.unwrap_or(1);
    let per_item = (values.len() / items.max(1)).max(1);
    let flagged: Vec<usize> = (values.chunks(per_item).enumerate())
        .filter(|(_, item)| item.iter().any(|&x| !x.into().is_finite()))
        .map(|(i, _)| i)
        .collect();
    report_non_finite(&flagged, items, path);
    matgrad::npy::stage_npy(path, shape, values)
}

fn report_non_finite(items: &[usize], total: usize, path: &Path) {
    if items.is_empty() {
        return;
    }
    let first: Vec<String> = items.iter().take(5).map(|i| i.to_string()).collect();
    eprintln!(
        "warning: {} of {total} items of `{}` are not finite (first: {})",
        items.len(),
        path.display(),
        first.join(", ")
    );
}
