//! `matgrad explain`: what a derivative costs and how it will run.
//!
//! In: a [`Derivative`], dimension sizes and which variables are batched. Out: a report of
//! the derived formula, the plan the cost model chose (each step, once per batch or per item,
//! with its operations), the totals per batch and per item, and the generated kernel.
//! Invariant: everything shown is read off the same [`Plan`] and [`Kernel`] the executors
//! run, never recomputed by hand.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::check::{batched_flags, sizes_with};
use crate::diagnostic::Diagnostic;
use crate::diff::Derivative;
use crate::expr::Node;
use crate::plan::{Plan, Step};
use crate::wgsl::{GenerateError, Kernel, StageKind};

/// The report, as text.
pub fn explain(d: &Derivative, plan: &Plan, kernel: Option<&Kernel>) -> String {
    let g = &d.program.graph;
    let mut out = String::new();
    let _ = writeln!(out, "derivative: {}", d.text());
    let _ = writeln!(out, "shape: {}", g.describe_shape(d.shape()));
    let rules = match d.simplified_by.as_slice() {
        [] => "none".to_string(),
        names => names.join(", "),
    };
    let _ = writeln!(out, "simplified by: {rules}");
    out.push_str(&plan_text(plan, kernel));
    out
}

/// The report for `dims` (sizes by dimension name; the others declared or defaulted) with the
/// variables `batched` batched, and with `wgsl` the generated kernel's source after it. The
/// note, when there is one, says why there is no GPU kernel (sizes past what it indexes).
pub fn explain_at_sizes(
    d: &Derivative,
    dims: &HashMap<String, usize>,
    batched: &[String],
    wgsl: bool,
) -> Result<(String, Option<String>), Diagnostic> {
    let g = &d.program.graph;
    let sizes = sizes_with(g, dims)?;
    let flags = batched_flags(g, batched)?;
    let plan = Plan::new(g, &[d.node], &sizes, &flags)
        .map_err(|e| Diagnostic::without_span(e.to_string()))?;
    // Sizes past what a GPU kernel indexes still have a CPU plan to explain.
    let (kernel, note) = match crate::wgsl::generate(&plan) {
        Ok(kernel) => (Some(kernel), None),
        Err(e @ GenerateError::TooLarge { .. }) if !wgsl => {
            (None, Some(format!("no GPU kernel: {e}")))
        }
        Err(e) => return Err(Diagnostic::without_span(e.to_string())),
    };
    let mut text = explain(d, &plan, kernel.as_ref());
    if let (true, Some(kernel)) = (wgsl, &kernel) {
        text.push('\n');
        text.push_str(&kernel.source());
    }
    Ok((text, note))
}

/// A plan in words: the form it evaluates, its steps once per batch and per item with their
/// operations, its costs, how the CPU path blocks it, and the GPU dispatches of `kernel`.
pub fn plan_text(plan: &Plan, kernel: Option<&Kernel>) -> String {
    let mut out = String::new();
    match plan.rewritten() {
        Some(form) => {
            let _ = writeln!(
                out,
                "evaluated as: {form}   (fewer operations per batch: shared factors distributed)"
            );
        }
        None => {
            let _ = writeln!(out, "evaluated as: the derivative's own form");
        }
    }
    let steps = plan.steps();
    let shared = steps.iter().filter(|s| !s.batched).count();
    let _ = writeln!(
        out,
        "plan: {} steps, {} once per batch, {} per item",
        steps.len(),
        shared,
        steps.len() - shared
    );
    for (title, batched) in [("once per batch:", false), ("per item:", true)] {
        let _ = writeln!(out, "  {title}");
        for (i, step) in steps
            .iter()
            .enumerate()
            .filter(|(_, s)| s.batched == batched)
        {
            let name = step
                .input
                .map(|k| plan.inputs()[k].name.clone())
                .unwrap_or_default();
            let what = describe(step, &name);
            let flops = crate::plan::step_flops(plan, step);
            let marker = if plan.outputs().contains(&i) {
                "  (output)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "    t{i:<3} = {what:<28} {:>5}×{:<5} {:>10} flops{marker}",
                step.rows, step.cols, flops
            );
        }
    }
    let cost = plan.cost();
    let _ = writeln!(
        out,
        "cost: {} flops and {} bytes once per batch; {} flops and {} bytes per item",
        cost.flops_shared, cost.bytes_shared, cost.flops_per_item, cost.bytes_per_item
    );
    if plan.is_batched() {
        let items = crate::cpu::block_items(plan);
        let isa = crate::cpu::Isa::fastest().name();
        let _ = if crate::cpu::rows::chosen(plan) {
            let fused: usize = crate::cpu::rows::fused_chains(plan)
                .iter()
                .map(Vec::len)
                .sum();
            let fused = match fused {
                0 => String::new(),
                1 => ", 1 element-wise step applied as a product's rows are stored".into(),
                n => format!(", {n} element-wise steps applied as products' rows are stored"),
            };
            writeln!(
                out,
                "cpu: item-major blocks of {items} items (inputs read and outputs written in place, products with shared factors as GEMMs over the block's rows{fused}), compiled for {isa}"
            )
        } else {
            writeln!(
                out,
                "cpu: blocks of {items} items in lanes (element-major, transposed in and out; per-item matrix work vectorized across items), compiled for {isa}"
            )
        };
    }
    if let Some(k) = kernel {
        let _ = writeln!(
            out,
            "gpu: {} dispatch(es) per chunk, {} floats in and {} out per item (element-major), {} floats of scratch per item",
            k.stages.len(),
            k.batched_len(),
            k.out_len(),
            k.scratch_len
        );
        for stage in &k.stages {
            let _ = match stage.kind {
                StageKind::PerItem { workgroup_size } => writeln!(
                    out,
                    "  per-item kernel: {} lines of WGSL, one invocation per item, workgroup size {workgroup_size}",
                    stage.source.lines().count()
                ),
                StageKind::Gemm(g) => {
                    let (first, second) = if g.shared_left {
                        ("shared", "batched")
                    } else {
                        ("batched", "shared")
                    };
                    let fused = match g.fused {
                        0 => String::new(),
                        1 => ", 1 element-wise step fused into its stores".to_string(),
                        f => format!(", {f} element-wise steps fused into its stores"),
                    };
                    writeln!(
                        out,
                        "  tiled GEMM: {first} {}×{} times {second} {}×{} for every item ({}×{} tiles){fused}",
                        g.m, g.k, g.k, g.n, g.tile.0, g.tile.1
                    )
                }
            };
        }
    }
    out
}

/// One step in words: `t2 * t5`, `exp(t3)`, `input x`.
fn describe(step: &Step, input_name: &str) -> String {
    let a = |k: usize| format!("t{}", step.args[k]);
    match step.node {
        Node::Var(_) => format!("input {input_name}"),
        Node::Const(c) => crate::print::number(c.get()),
        Node::Fill(c, _) => format!("fill {}", crate::print::number(c.get())),
        Node::Eye(_) => "eye".into(),
        Node::Add(..) => format!("{} + {}", a(0), a(1)),
        Node::Neg(_) => format!("-{}", a(0)),
        Node::MatMul(..) => format!("{} * {}", a(0), a(1)),
        Node::Scale(..) => format!("{} * {} (scale)", a(0), a(1)),
        Node::Div(..) => format!("{} / {}", a(0), a(1)),
        Node::Hadamard(..) => format!("{} .* {}", a(0), a(1)),
        Node::ElemDiv(..) => format!("{} ./ {}", a(0), a(1)),
        Node::Pow(..) => format!("{} ^ {}", a(0), a(1)),
        Node::ElemPow(..) => format!("{} .^ {}", a(0), a(1)),
        Node::MatPow(_, k) => format!("{}^{k}", a(0)),
        Node::Transpose(_) => format!("{}'", a(0)),
        Node::Map(f, _) => format!("{}({})", f.name(), a(0)),
        Node::Sum(_) => format!("sum({})", a(0)),
        Node::Norm1(_) => format!("norm1({})", a(0)),
        Node::Norm2(_) => format!("norm2({})", a(0)),
        Node::Trace(_) => format!("tr({})", a(0)),
        Node::Det(_) => format!("det({})", a(0)),
        Node::LogDet(_) => format!("logdet({})", a(0)),
        Node::Inv(_) => format!("inv({})", a(0)),
        Node::Diag(_) | Node::DiagPart(_) => format!("diag({})", a(0)),
    }
}
