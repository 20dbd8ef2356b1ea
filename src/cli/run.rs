//! `run`: a ComfyUI workflow (API or UI format, or a ComfyUI output that embeds one) or an
//! sd-mecha recipe (`.mecha`) executed as one merge graph: every save of it written in one
//! streamed pass, published all or none.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;

use crate::args::EngineArgs;
use crate::commands::parse_device;
use crate::print_stdout;
use checkpoint_save::mecha::{is_recipe, Recipe, TranslateOptions};
use checkpoint_save::merge::graph::{plan, run as run_graph, Graph, GraphPlan, RunOptions, Target};
use checkpoint_save::workflow::{ModelFolders, Workflow, WorkflowFormat};
use checkpoint_save::{ComponentDtypes, GgufTarget, GgufType, TargetDtype};

/// `run`'s workflow, model folders and output settings.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The workflow: a `.json` file in the API format ("Export (API)") or the UI format
    /// ("Save"), or a ComfyUI output (`.png`, `.safetensors`) whose metadata holds one; or an
    /// sd-mecha recipe (a `.mecha` file, or any file starting with `version `).
    #[arg(value_name = "WORKFLOW")]
    pub(crate) workflow: PathBuf,

    /// ComfyUI's models folder: names are looked up in its checkpoints/, loras/, vae/,
    /// text_encoders/ and clip/, diffusion_models/ and unet/ folders. For a recipe: the folder
    /// relative model paths are looked up in first (sd-mecha's model_dirs; then the working
    /// directory); repeatable.
    #[arg(long, value_name = "DIR")]
    pub(crate) models_dir: Vec<PathBuf>,

    /// For a recipe: the output file (never replaced), as sd-mecha's `merge(…, output=FILE)`;
    /// default `<output-dir>/<recipe name>.safetensors`.
    #[arg(long, short, value_name = "FILE", conflicts_with = "output_dir")]
    pub(crate) output: Option<PathBuf>,

    /// An extra_model_paths.yaml adding model folders, as ComfyUI's option of the same name.
    #[arg(long, value_name = "FILE")]
    pub(crate) extra_model_paths_config: Vec<PathBuf>,

    /// Output root (ComfyUI's output folder); every save's prefix is resolved under it.
    #[arg(long, value_name = "DIR", default_value = "output")]
    pub(crate) output_dir: PathBuf,

    /// Print the plan (inputs and bytes to read, the files and their sizes, the nodes not run)
    /// and write nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Dtype of every saved tensor (keep, f32, f16, bf16, f8_e4m3, f8_e5m2); `keep` writes a
    /// merged tensor in its model1's dtype, as ComfyUI does. Default: keep for a workflow, f16
    /// for a recipe (sd-mecha's output_dtype).
    #[arg(long, value_name = "DTYPE")]
    pub(crate) dtype: Option<TargetDtype>,

    /// Dtype of denoisers, overriding --dtype.
    #[arg(long, value_name = "DTYPE")]
    pub(crate) model_dtype: Option<TargetDtype>,

    /// Dtype of text encoders, overriding --dtype.
    #[arg(long, value_name = "DTYPE")]
    pub(crate) clip_dtype: Option<TargetDtype>,

    /// Dtype of VAEs, overriding --dtype.
    #[arg(long, value_name = "DTYPE")]
    pub(crate) vae_dtype: Option<TargetDtype>,

    /// Leave out `prompt` and `workflow` (like ComfyUI's --disable-metadata).
    #[arg(long)]
    pub(crate) disable_metadata: bool,

    /// Refuse to write anything when a file would hold NaN/Inf values.
    #[arg(long)]
    pub(crate) check_finite: bool,

    /// Refuse a LoRA any of whose keys is not applied (ComfyUI leaves them with a warning).
    #[arg(long)]
    pub(crate) strict: bool,

    /// Where merged tensors are computed: cpu (fused into the write), cuda:N or metal:N.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub(crate) device: String,

    /// Write each save's denoiser alone as a GGUF file of TYPE (`.gguf`, as `convert --gguf`;
    /// text-encoder and VAE saves stay safetensors): F16, BF16, or a llama-quantize type
    /// (Q8_0, Q6_K, Q5_K_M, Q4_K_M, Q4_0, Q3_K_M, Q2_K, …; see the README).
    #[arg(long, value_name = "TYPE")]
    pub(crate) gguf: Option<GgufType>,

    /// With --gguf: quantize the tensors this regular expression matches, whatever the rules
    /// say, where their rows are whole blocks. Repeatable.
    #[arg(long, value_name = "REGEX", requires = "gguf")]
    pub(crate) gguf_include: Vec<String>,

    /// With --gguf: keep the tensors this regular expression matches in high precision.
    /// Repeatable.
    #[arg(long, value_name = "REGEX", requires = "gguf")]
    pub(crate) gguf_exclude: Vec<String>,

    /// Print only the written paths.
    #[arg(long, short)]
    pub(crate) quiet: bool,

    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

/// `run`: the workflow's (or recipe's) saves, written in one run.
pub(crate) fn run(args: &RunArgs, cancel: &Arc<AtomicBool>) -> Result<()> {
    if is_recipe(&args.workflow) {
        return run_recipe(args, cancel);
    }
    if args.output.is_some() {
        bail!("--output is for a recipe (.mecha); a workflow's save nodes name their files");
    }
    // The library's errors name the file already.
    let workflow = Workflow::open(&args.workflow)?;
    let models_dir = match args.models_dir.as_slice() {
        [] => PathBuf::from("models"),
        [one] => one.clone(),
        _ => {
            bail!("a workflow takes one --models-dir (add folders with --extra-model-paths-config)")
        }
    };
    let mut models = ModelFolders::new(&models_dir);
    for f in &args.extra_model_paths_config {
        models.add_extra_config(f)?;
    }
    let translated = workflow.to_graph(&models)?;
    let mut opts = options(args, TargetDtype::Keep, cancel)?;
    opts.metadata = workflow.metadata();
    opts.metadata.disable = args.disable_metadata;
    let format = match workflow.format {
        WorkflowFormat::Api => "API",
        WorkflowFormat::Ui => "UI",
    };
    let what = Kind {
        header: format!("workflow: {format} format"),
        noun: format!("a {format}-format workflow"),
    };
    execute(
        &translated.graph,
        &opts,
        &translated.skipped,
        &[],
        &what,
        args.quiet,
        args.dry_run,
    )
}

/// An sd-mecha recipe: translated into a graph of one checkpoint save, written where sd-mecha's
/// `merge(…, output=…)` would write it, with its `mecha_recipe` metadata.
fn run_recipe(args: &RunArgs, cancel: &Arc<AtomicBool>) -> Result<()> {
    if !args.extra_model_paths_config.is_empty() {
        bail!(
            "--extra-model-paths-config is for workflows; give a recipe's folders as --models-dir"
        );
    }
    let recipe = Recipe::open(&args.workflow)?;
    let output = match &args.output {
        Some(o) => {
            let gguf_name = o
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
            match (args.gguf.is_some(), gguf_name) {
                (true, false) => bail!(
                    "--gguf writes a GGUF file, and --output {} does not end in .gguf; name it \
                     `.gguf`",
                    o.display()
                ),
                (false, true) => bail!(
                    "--output {} ends in .gguf, but without --gguf TYPE the recipe is written as \
                     safetensors; add --gguf TYPE, or name a .safetensors file",
                    o.display()
                ),
                _ => o.clone(),
            }
        }
        None => {
            // `with_extension` would cut a stem with dots (`a.b.mecha` → `a.safetensors`).
            let stem = args.workflow.file_stem().unwrap_or_default();
            let ext = if args.gguf.is_some() {
                "gguf"
            } else {
                "safetensors"
            };
            args.output_dir
                .join(format!("{}.{ext}", stem.to_string_lossy()))
        }
    };
    let translated = recipe.to_graph(&TranslateOptions {
        models_dirs: args.models_dir.clone(),
        target: Target::File(output),
    })?;
    // sd-mecha's default output dtype.
    let mut opts = options(args, TargetDtype::F16, cancel)?;
    if !args.disable_metadata {
        opts.metadata
            .extra
            .insert("mecha_recipe".into(), recipe.text().to_string());
    }
    execute(
        &translated.graph,
        &opts,
        &[],
        &translated.notes,
        &Kind {
            header: format!(
                "recipe: sd-mecha, format {}",
                checkpoint_save::mecha::FORMAT_VERSION
            ),
            noun: "an sd-mecha recipe".into(),
        },
        args.quiet,
        args.dry_run,
    )
}

/// The run options both kinds share; `dtype` when --dtype is not given.
fn options(args: &RunArgs, dtype: TargetDtype, cancel: &Arc<AtomicBool>) -> Result<RunOptions> {
    let dtype = args.dtype.unwrap_or(dtype);
    let mut opts = RunOptions::new(&args.output_dir);
    opts.dtypes = ComponentDtypes {
        model: args.model_dtype.unwrap_or(dtype),
        clip: args.clip_dtype.unwrap_or(dtype),
        vae: args.vae_dtype.unwrap_or(dtype),
        clip_vision: dtype,
        audio_vae: args.vae_dtype.unwrap_or(dtype),
    };
    opts.metadata.disable = args.disable_metadata;
    opts.check_finite = args.check_finite;
    opts.progress = !args.quiet;
    opts.cancel = Some(Arc::clone(cancel));
    opts.writer = args.engine.options();
    opts.strict = args.strict;
    if let Some(ty) = args.gguf {
        if args.dtype.is_some() || args.model_dtype.is_some() {
            bail!("--gguf sets the types of the GGUF files; leave out --dtype and --model-dtype");
        }
        opts.gguf = Some(GgufTarget::new(ty, &args.gguf_include, &args.gguf_exclude)?);
    }
    opts.device = match parse_device(&args.device)? {
        d if d.is_cpu() => None,
        d => Some(d),
    };
    Ok(opts)
}

/// What is run, for the dry run's first line and the summary.
struct Kind {
    header: String,
    noun: String,
}

/// Plans (dry run) or runs a translated graph and reports it.
fn execute(
    graph: &Graph,
    opts: &RunOptions,
    skipped: &[String],
    notes_in: &[String],
    what: &Kind,
    quiet: bool,
    dry_run: bool,
) -> Result<()> {
    if dry_run {
        let mut p = plan(graph, opts)?;
        p.notes.extend(notes_in.iter().cloned());
        print_stdout(&describe(&p, skipped, &what.header))?;
        return Ok(());
    }
    let mut report = run_graph(graph, opts)?;
    report.plan.notes.extend(notes_in.iter().cloned());
    for w in &report.written {
        print_stdout(&w.path.display().to_string())?;
    }
    if !quiet {
        let secs = report.elapsed.as_secs_f64().max(1e-9);
        let bytes: u64 = report.written.iter().map(|w| w.bytes).sum();
        eprintln!(
            "ran {}: {} file(s), {bytes} bytes in {secs:.2} s ({:.2} GB/s); \
             read {} bytes of {} input(s); {} tensor(s) merged",
            what.noun,
            report.written.len(),
            bytes as f64 / secs / 1e9,
            report.plan.read_bytes(),
            report.plan.inputs.len(),
            report.plan.merged,
        );
        notes(&report.plan, skipped);
        for w in &report.written {
            for (name, count) in &w.non_finite {
                eprintln!(
                    "warning: tensor `{name}` of {} holds {count} NaN/Inf value(s)",
                    w.path.display()
                );
            }
        }
    }
    Ok(())
}

/// The notes of a run on stderr: nodes not run, merge notes, LoRA keys not applied.
fn notes(p: &GraphPlan, skipped: &[String]) {
    if !skipped.is_empty() {
        eprintln!(
            "skipped {} node(s) no save reads: {}",
            skipped.len(),
            skipped.join(", ")
        );
    }
    for n in &p.notes {
        eprintln!("note: {n}");
    }
    for (node, l) in &p.loras {
        let mut line = format!(
            "node {node}: LoRA {}: {} module(s) applied",
            l.name, l.matched
        );
        if let Some(first) = l.not_applied.first() {
            line.push_str(&format!(
                ", {} key(s) not applied (first: {first}; --strict refuses them)",
                l.not_applied.len()
            ));
        }
        eprintln!("{line}");
    }
}

/// The dry run's plan, for stdout.
fn describe(p: &GraphPlan, skipped: &[String], header: &str) -> String {
    let mut out = vec![header.to_string()];
    out.push(format!(
        "inputs: {} ({} bytes to read)",
        p.inputs.len(),
        p.read_bytes()
    ));
    for i in &p.inputs {
        let arch = i.arch.map(|a| format!(", {a}")).unwrap_or_default();
        out.push(format!(
            "  node {} ({}): {} ({} bytes{arch})",
            i.node, i.class, i.name, i.bytes
        ));
    }
    out.push(format!("outputs: {}", p.files.len()));
    for f in &p.files {
        out.push(format!(
            "  node {} ({}): {} ({} bytes, {} tensors)",
            f.node,
            f.class,
            f.path.display(),
            f.bytes,
            f.tensors
        ));
    }
    out.push(format!("merged tensors: {}", p.merged));
    if !skipped.is_empty() {
        out.push(format!(
            "skipped (no save reads them): {}",
            skipped.join(", ")
        ));
    }
    for n in &p.notes {
        out.push(format!("note: {n}"));
    }
    out.join("\n")
}
