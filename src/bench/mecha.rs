//! sd-mecha's side of `bench merge --method`: the same method over the same input files, as a
//! user runs it today (`sd_mecha.merge` of the recipe, its defaults: f32 arithmetic on the CPU,
//! its own thread pool), timed beside ours.
//!
//! The recipe merges the denoiser alone and takes the rest from the first input (sd-mecha's
//! `pick_component(…, "diffuser")` with `fallback_model`), as our job does. It runs where a Python
//! that imports `sd_mecha` is found (`CHECKPOINT_SAVE_PYTHON`, else `python3`), for the families
//! sd-mecha has a configuration of and the methods it takes models (not deltas) for; otherwise
//! the benchmark says why it was skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::python::run_program;
use super::BenchMethod;
use crate::error::Result;
use crate::merge::methods::Param;
use crate::model::{Arch, TargetDtype};

/// The program: `python3 - OUT CONFIG METHOD PARAMS.json DTYPE INPUT…` with this on stdin.
const PROGRAM: &str = r#"
import json, os, sys
import torch, sd_mecha
out, config, name, params, dtype, *paths = sys.argv[1:]
models = [sd_mecha.model(os.path.abspath(p), config) for p in paths]
params = json.loads(params)
if name == "add_difference_ties":
    # sd-mecha 1.1.8's wrapper of that name fails on models (its merge-space test) and takes
    # no vote_sgn: its graph, written out.
    from sd_mecha.extensions.merge_methods import resolve
    base, alpha = models[0], params.pop("alpha", 1.0)
    deltas = [sd_mecha.subtract(m, base) for m in models[1:]]
    recipe = resolve("add_difference")(base, sd_mecha.ties_sum(*deltas, **params), alpha=alpha)
else:
    recipe = getattr(sd_mecha, name)(*models, **params)
recipe = sd_mecha.pick_component(recipe, "diffuser")
dtypes = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
sd_mecha.merge(recipe, output=out, fallback_model=models[0], output_dtype=dtypes[dtype])
fd = os.open(out, os.O_RDONLY)
os.fsync(fd)
os.close(fd)
"#;

/// The methods whose sd-mecha function takes the same models ours does (the others take
/// deltas: `ties_sum`, `model_stock`; or sd-mecha has none: mergekit's `della`, `dare`).
const SAME_INPUTS: &[&str] = &[
    "weighted_sum",
    "n_average",
    "slerp",
    "add_perpendicular",
    "add_difference_ties",
    "add_ties_with_dare",
    "n_model_stock",
    "geometric_median",
    "clamp",
];

/// sd-mecha's configuration of `arch`'s single-file layout.
fn config(arch: Arch) -> Option<&'static str> {
    match arch {
        Arch::Sd15 => Some("sd1-ldm"),
        Arch::Sdxl => Some("sdxl-sgm"),
        _ => None,
    }
}

/// A job sd-mecha can run for `method` on `arch` into `dtype`, or why there is none.
#[derive(Debug, Clone)]
pub(super) struct MechaJob {
    python: PathBuf,
    config: &'static str,
    name: String,
    params: String,
    dtype: &'static str,
}

impl MechaJob {
    /// The job, or why it is skipped (no Python with sd-mecha, a family or method sd-mecha
    /// does not have).
    pub(super) fn find(
        method: &BenchMethod,
        arch: Arch,
        dtype: TargetDtype,
    ) -> std::result::Result<Self, String> {
        let config =
            config(arch).ok_or_else(|| format!("sd-mecha 1.x has no configuration of {arch}"))?;
        if !SAME_INPUTS.contains(&method.name.as_str()) {
            return Err(format!(
                "sd-mecha's {} takes other inputs than ours (deltas, or no such method); time \
                 one of {}",
                method.name,
                SAME_INPUTS.join(", ")
            ));
        }
        let dtype = match dtype {
            TargetDtype::F16 | TargetDtype::Keep => "f16",
            TargetDtype::BF16 => "bf16",
            TargetDtype::F32 => "f32",
            other => return Err(format!("sd-mecha does not write {other}")),
        };
        let python = std::env::var_os("CHECKPOINT_SAVE_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("python3"));
        match Command::new(&python)
            .args(["-c", "import torch, sd_mecha"])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(_) => {
                return Err(format!(
                    "{} cannot import torch and sd_mecha; set CHECKPOINT_SAVE_PYTHON to an \
                     interpreter that can",
                    python.display()
                ))
            }
            Err(e) => {
                return Err(format!(
                    "no Python found ({}: {e}); set CHECKPOINT_SAVE_PYTHON",
                    python.display()
                ))
            }
        }
        Ok(Self {
            python,
            config,
            name: method.name.clone(),
            params: params_json(method),
            dtype,
        })
    }

    /// Runs the recipe over `inputs` into `out`.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] when sd-mecha fails (its last line of stderr); I/O errors.
    pub(super) fn run(&self, inputs: &[&Path], out: &Path) -> Result<()> {
        let mut args: Vec<&std::ffi::OsStr> = vec![
            out.as_os_str(),
            self.config.as_ref(),
            self.name.as_ref(),
            self.params.as_ref(),
            self.dtype.as_ref(),
        ];
        args.extend(inputs.iter().map(|p| p.as_os_str()));
        run_program(&self.python, PROGRAM, &args, "sd-mecha merge")
    }
}

/// The method's parameters as sd-mecha's keyword arguments (a text parameter as the literal it
/// spells).
fn params_json(method: &BenchMethod) -> String {
    let map: serde_json::Map<String, serde_json::Value> = method
        .params
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Param::Float(x) => serde_json::json!(x),
                Param::Int(x) => serde_json::json!(x),
                Param::Bool(x) => serde_json::json!(x),
                Param::Str(s) => match (s.as_str(), s.parse::<i64>(), s.parse::<f64>()) {
                    ("true", _, _) => serde_json::json!(true),
                    ("false", _, _) => serde_json::json!(false),
                    (_, Ok(i), _) => serde_json::json!(i),
                    (_, _, Ok(f)) => serde_json::json!(f),
                    _ => serde_json::json!(s),
                },
            };
            (k.clone(), v)
        })
        .collect();
    serde_json::Value::Object(map).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(name: &str, params: &[(&str, Param)]) -> BenchMethod {
        BenchMethod {
            name: name.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn parameters_become_sd_mecha_keywords() {
        let m = method(
            "add_difference_ties",
            &[
                ("k", Param::Str("0.2".into())),
                ("vote_sgn", Param::Str("true".into())),
                ("alpha", Param::Float(0.5)),
                ("seed", Param::Str("7".into())),
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&params_json(&m)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"k": 0.2, "vote_sgn": true, "alpha": 0.5, "seed": 7})
        );
    }

    #[test]
    fn skips_say_why() {
        let slerp = method("slerp", &[]);
        let e = MechaJob::find(&slerp, Arch::Flux, TargetDtype::F16).unwrap_err();
        assert!(e.contains("no configuration of"), "{e}");
        let ties = method("ties_sum", &[]);
        let e = MechaJob::find(&ties, Arch::Sd15, TargetDtype::F16).unwrap_err();
        assert!(e.contains("add_difference_ties"), "{e}");
        let e = MechaJob::find(&slerp, Arch::Sd15, TargetDtype::F8E4M3).unwrap_err();
        assert!(e.contains("does not write"), "{e}");
    }
}
