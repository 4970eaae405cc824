//! `matgrad check`: random batches through every device, compared with the float64
//! reference, and the reference with finite differences; the report and its exit status.

use matgrad::check::{run_check, CheckConfig, DeviceReport};
use matgrad::diff::Derivative;
use matgrad::print;
use serde_json::json;

use super::{batched_or_wrt, derive_at_sizes, gpu_if_any};
use crate::CheckArgs;

/// `matgrad check`, from its arguments to the exit status (1 when a device fails).
pub fn check(args: CheckArgs) -> u8 {
    let (derivative, sizes) =
        match derive_at_sizes(&args.program, &args.wrt, args.hessian, &args.dims) {
            Ok(both) => both,
            Err(code) => return code,
        };
    if args.batch == 0 {
        errorln!("`--batch 0`: a batch has at least one item");
        return 2;
    }
    let batched = batched_or_wrt(args.batched, &args.wrt);
    let config = CheckConfig {
        dims: sizes,
        batch: args.batch,
        batched,
        seed: args.seed,
    };
    let gpu = gpu_if_any(args.adapter);
    match run_check(&derivative, &config, gpu.as_ref()) {
        Ok(checked) => {
            if let Some(sizes) = &checked.other_sizes {
                eprintln!(
                    "note: no random point was inside the function's domain at the \
                     default sizes; checked at {sizes}"
                );
            }
            if let Some(how) = &checked.draw_note {
                eprintln!("note: {how}");
            }
            if let Some(how) = &checked.probe_note {
                eprintln!("note: {how}");
            }
            if let Some(why) = &checked.gpu_skipped {
                eprintln!("note: the GPU is not compared: {why}");
            }
            print_check(&derivative, &checked.reports, args.json)
        }
        Err(e) => crate::report(&e, &args.program),
    }
}

fn print_check(d: &Derivative, reports: &[DeviceReport], json: bool) -> u8 {
    // Nothing compared proves nothing: the check fails (a device with no item to compare
    // against a reference that has none is not "ok").
    let passed = reports.iter().all(|r| r.passed && r.items_compared > 0);
    if json {
        let value = json!({"derivative": d.text(), "passed": passed, "devices": reports});
        outln!("{}", print::pretty_json(&value));
    } else {
        outln!("derivative: {}", d.text());
        for r in reports {
            let mut skipped = String::new();
            if r.items_cancelled > 0 {
                skipped += &format!(
                    ", {} cancelled to float32 noise and held to it",
                    r.items_cancelled
                );
            }
            if r.items_ill_conditioned > 0 {
                skipped += &format!(
                    ", {} ill-conditioned in float32 left out",
                    r.items_ill_conditioned
                );
            }
            if r.items_compared == 0 {
                outln!(
                    "{:<10} vs {:<19} nothing compared (0 items{skipped}): FAILED",
                    r.device,
                    r.against
                );
                continue;
            }
            outln!(
                "{:<10} vs {:<19} max relative error {:.3e} (tolerance {:.0e}, {} items{skipped}): {}",
                r.device,
                r.against,
                r.max_rel_error,
                r.tolerance,
                r.items_compared,
                if r.passed { "ok" } else { "FAILED" }
            );
        }
        if reports.first().is_some_and(|r| r.items_compared == 0) {
            errorln!(
                "no random point gave a finite value, derivative and finite differences \
                 (a `log`, `logdet` or `inv` outside its domain at every point?); tried \
                 standard normal inputs, positive inputs (|z|/2+0.1), and mixes of the two \
                 input by input, each with the shared inputs redrawn\n\
                 help: other sizes (`--dims`) or another `--seed` may give points inside it"
            );
        }
    }
    u8::from(!passed)
}
