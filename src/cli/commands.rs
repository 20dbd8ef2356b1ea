//! What each subcommand does, on top of the library.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::CommandFactory;
use serde_json::Value;

use crate::args::{ArchArg, BenchArgs, Cli, InspectArgs, SaveArgs, SplitArgs};
use crate::print_stdout;
use checkpoint_save::bench::{self, BenchOptions};
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::{
    load_checkpoint, load_tensors, save_to_path, ComponentDtypes, ComponentKind, Components,
    GenericPrefixes, LayoutChoice, MetadataOptions, Prediction, SaveOptions, Saved, TargetDtype,
};

/// `save`: components from files or a synthetic model, saved under ComfyUI's naming.
pub(crate) fn save(args: &SaveArgs, cancel: &Arc<AtomicBool>) -> Result<()> {
    let opts = save_options(args, cancel)?;
    let components = load_components(args)?;
    let saved = checkpoint_save::save(&components, &opts)?;
    print_stdout(&saved.path.display().to_string())?;
    if !args.quiet {
        report(&saved);
    }
    Ok(())
}

/// Everything but the components, validated before any input is read.
fn save_options(args: &SaveArgs, cancel: &Arc<AtomicBool>) -> Result<SaveOptions> {
    let layout = match args.arch {
        ArchArg::Auto => LayoutChoice::Auto,
        ArchArg::Arch(a) => LayoutChoice::Arch(a),
        ArchArg::Generic => {
            let d = GenericPrefixes::default();
            LayoutChoice::Generic(GenericPrefixes {
                model: args.model_prefix.clone().unwrap_or(d.model),
                clip: args.clip_prefix.clone().unwrap_or(d.clip),
                vae: args.vae_prefix.clone().unwrap_or(d.vae),
                clip_vision: d.clip_vision,
            })
        }
    };
    let prefixes_given =
        args.model_prefix.is_some() || args.clip_prefix.is_some() || args.vae_prefix.is_some();
    if prefixes_given && args.arch != ArchArg::Generic {
        usage_error("--model-prefix, --clip-prefix and --vae-prefix need --arch generic");
    }
    let prediction = match (args.prediction, args.sigma_max, args.sigma_min) {
        (
            Some(Prediction::EdmV {
                sigma_max,
                sigma_min,
            }),
            max,
            min,
        ) => Some(Prediction::EdmV {
            sigma_max: max.unwrap_or(sigma_max),
            sigma_min: min.unwrap_or(sigma_min),
        }),
        (p, None, None) => p,
        _ => usage_error("--sigma-max and --sigma-min need --prediction edm-v"),
    };
    let dtypes = ComponentDtypes {
        model: args.model_dtype.unwrap_or(args.dtype),
        clip: args.clip_dtype.unwrap_or(args.dtype),
        vae: args.vae_dtype.unwrap_or(args.dtype),
        clip_vision: args.dtype,
    };
    let extra_pnginfo = args
        .workflow
        .as_deref()
        .map(|p| read_json(p, "workflow"))
        .transpose()?
        .map(|w| serde_json::Map::from_iter([("workflow".to_string(), w)]));
    let metadata = MetadataOptions {
        prompt: args
            .prompt
            .as_deref()
            .map(|p| read_json(p, "prompt"))
            .transpose()?,
        extra_pnginfo,
        disable: args.disable_metadata,
        ..MetadataOptions::default()
    };
    Ok(SaveOptions {
        layout,
        prediction,
        dtypes,
        output_dir: args.output_dir.clone(),
        prefix: args.prefix.clone(),
        metadata,
        check_finite: args.check_finite,
        progress: !args.quiet,
        cancel: Some(Arc::clone(cancel)),
        writer: args.engine.options(),
    })
}

/// Reports a usage error the way clap does (message, usage line, exit code 2).
fn usage_error(msg: &str) -> ! {
    Cli::command()
        .error(clap::error::ErrorKind::ArgumentConflict, msg)
        .exit()
}

fn read_json(path: &Path, what: &str) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the {what} file {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("the {what} file {} is not valid JSON", path.display()))
}

fn load_components(args: &SaveArgs) -> Result<Components> {
    if let Some(arch) = args.synthetic {
        let mut opts = SyntheticOptions::new(arch).with_seed(args.seed);
        if let Some(m) = args.max_dim {
            opts = opts.with_max_dim(m);
        }
        if args.tiny {
            opts = opts.tiny();
        }
        return synthetic::build(&opts, &Device::Cpu)
            .with_context(|| format!("cannot build the synthetic {arch} model"));
    }
    let mut components = Components::default();
    for (kind, path) in [
        (ComponentKind::Model, &args.model),
        (ComponentKind::Clip, &args.clip),
        (ComponentKind::Vae, &args.vae),
    ] {
        // clap guarantees all three without --synthetic; a missing one is reported by the layout.
        if let Some(path) = path {
            let tensors = load_tensors(path, &Device::Cpu)
                .with_context(|| format!("cannot read the {kind} component (--{kind})"))?;
            components.set(kind, tensors);
        }
    }
    Ok(components)
}

/// The file `split` writes for one component.
fn split_file_name(kind: ComponentKind) -> String {
    format!("{}.safetensors", kind.name())
}

/// `split`: a checkpoint into one file per component, in ComfyUI's in-memory names.
pub(crate) fn split(args: &SplitArgs, cancel: &Arc<AtomicBool>) -> Result<()> {
    let loaded = load_checkpoint(&args.checkpoint, &Device::Cpu, args.arch)
        .with_context(|| format!("cannot split {}", args.checkpoint.display()))?;
    let kinds: Vec<ComponentKind> = loaded.components.iter().map(|(k, _)| k).collect();
    for kind in &kinds {
        let path = args.output_dir.join(split_file_name(*kind));
        if path.exists() {
            anyhow::bail!(
                "{} already exists; split never overwrites, choose an empty --output-dir",
                path.display()
            );
        }
    }
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("cannot create {}", args.output_dir.display()))?;
    let empty = GenericPrefixes {
        model: String::new(),
        clip: String::new(),
        vae: String::new(),
        clip_vision: String::new(),
    };
    let opts = SaveOptions {
        layout: LayoutChoice::Generic(empty),
        metadata: MetadataOptions {
            disable: true,
            provenance: false,
            ..MetadataOptions::default()
        },
        cancel: Some(Arc::clone(cancel)),
        ..SaveOptions::default()
    };
    for kind in kinds {
        let Some(tensors) = loaded.components.get(kind) else {
            continue;
        };
        let mut part = Components::default();
        part.set_inputs(ComponentKind::Model, tensors.clone());
        let path = args.output_dir.join(split_file_name(kind));
        let saved = save_to_path(&part, &path, &opts)
            .with_context(|| format!("cannot write {}", path.display()))?;
        print_stdout(&saved.path.display().to_string())?;
    }
    if !args.quiet {
        let arch = loaded.arch.map_or("generic".to_string(), |a| a.to_string());
        eprintln!(
            "split {arch} ({}) checkpoint; save it back with --arch {arch} --prediction {}",
            loaded.prediction,
            prediction_arg(loaded.prediction)
        );
        if !loaded.leftover.is_empty() {
            eprintln!(
                "warning: {} key(s) belong to no component and were not written (first: `{}`)",
                loaded.leftover.len(),
                loaded.leftover[0]
            );
        }
    }
    Ok(())
}

/// The `--prediction` (and sigma) arguments that reproduce `p`.
fn prediction_arg(p: Prediction) -> String {
    match p {
        Prediction::EdmV {
            sigma_max,
            sigma_min,
        } => format!("edm-v --sigma-max {sigma_max} --sigma-min {sigma_min}"),
        other => other.to_string(),
    }
}

/// `inspect`: what a checkpoint's header says.
pub(crate) fn inspect(args: &InspectArgs) -> Result<()> {
    let inspection = checkpoint_save::inspect(&args.checkpoint)
        .with_context(|| format!("cannot inspect {}", args.checkpoint.display()))?;
    if args.json {
        let json = serde_json::to_string_pretty(&inspection)
            .context("cannot serialise the inspection as JSON")?;
        print_stdout(&json)
    } else {
        print_stdout(inspection.to_string().trim_end())
    }
}

/// One summary line on stderr, then one warning per tensor holding NaN/Inf values.
fn report(saved: &Saved) {
    let arch = saved.arch.map_or("generic".to_string(), |a| a.to_string());
    let mut line = format!(
        "saved {arch} ({}) checkpoint: {} tensors, {} bytes in {:.2} s ({:.2} GB/s)",
        saved.prediction,
        saved.tensors,
        saved.bytes,
        saved.elapsed.as_secs_f64(),
        saved.bytes_per_sec() / 1e9,
    );
    if !saved.dropped.is_empty() {
        line.push_str(&format!(
            "; {} key(s) dropped as the reference does",
            saved.dropped.len()
        ));
    }
    if !saved.non_finite.is_empty() {
        line.push_str(&format!(
            "; {} tensor(s) hold NaN/Inf",
            saved.non_finite.len()
        ));
    }
    eprintln!("{line}");
    for (name, count) in &saved.non_finite {
        eprintln!("warning: tensor `{name}` holds {count} NaN/Inf value(s)");
    }
}

fn parse_device(s: &str) -> Result<Device> {
    let ordinal = |rest: &str| -> Result<usize> {
        rest.parse()
            .with_context(|| format!("`{s}`: the device number after `:` must be a whole number"))
    };
    match s.split_once(':') {
        None if s == "cpu" => Ok(Device::Cpu),
        None if s == "cuda" => Ok(Device::new_cuda(0)?),
        Some(("cuda", n)) => Ok(Device::new_cuda(ordinal(n)?)?),
        None if s == "metal" => Ok(Device::new_metal(0)?),
        Some(("metal", n)) => Ok(Device::new_metal(ordinal(n)?)?),
        _ => anyhow::bail!("unknown device `{s}`; use cpu, cuda:N or metal:N"),
    }
}

/// `bench`: our save against candle's and the storage ceiling, in one run.
pub(crate) fn bench(args: &BenchArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let model_dtype = match args.model_dtype {
        None | Some(TargetDtype::Keep) => None,
        Some(d) => Some(
            d.file_dtype()
                .and_then(checkpoint_save::model::dtype::candle_dtype)
                .with_context(|| format!("a synthetic model cannot be built in {d}"))?,
        ),
    };
    let opts = BenchOptions {
        arch: args.synthetic,
        dtype: args.dtype,
        model_dtype,
        output_dir: args
            .output_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("checkpoint-save-bench")),
        runs: args.runs,
        engine: args.engine.options(),
        max_dim: args.max_dim,
        device,
    };
    let report = bench::run(&opts)?;
    if args.json {
        print_stdout(&serde_json::to_string(&report).context("cannot encode the report")?)
    } else {
        print_stdout(&report.to_string())
    }
}
