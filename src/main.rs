//! `checkpoint-save`: the command-line front end of the `checkpoint_save` library.
//!
//! Subcommands: `save` (components from .safetensors files or a synthetic model → one checkpoint),
//! `split` (a checkpoint → one file per component, readable by `save`) and `inspect`.
//!
//! The binary only parses arguments, reads inputs and prints results; every rule about keys,
//! dtypes, names and files lives in the library. Errors are printed as one line with their
//! context chain (`{:#}`), and the exit code says what kind of failure it was (see `EXIT_CODES`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::Value;

use checkpoint_save::arch::{Arch, Prediction};
use checkpoint_save::bench::{self, BenchOptions};
use checkpoint_save::components::{ComponentKind, Components};
use checkpoint_save::dtype::TargetDtype;
use checkpoint_save::error::Error;
use checkpoint_save::layout::GenericPrefixes;
use checkpoint_save::loader;
use checkpoint_save::metadata::MetadataOptions;
use checkpoint_save::plan::ComponentDtypes;
use checkpoint_save::save::{self, LayoutChoice, SaveOptions, Saved, WriterChoice};
use checkpoint_save::synthetic::{self, SyntheticOptions};
use checkpoint_save::writer::{Backend, EngineOptions};

/// Exit code of a successful run.
const EXIT_OK: u8 = 0;
/// Exit code of a failed run (bad input, I/O error, refused save).
const EXIT_ERROR: u8 = 1;
/// Exit code of a run interrupted by Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    error (bad input, unreadable file, refused or failed save); one line on stderr says why
  2    usage error (unknown option or invalid value), reported by the argument parser
  130  interrupted by Ctrl-C; the temporary file was removed and nothing was written";

/// Save diffusion-model components into one ComfyUI-compatible .safetensors checkpoint.
#[derive(Debug, Parser)]
#[command(name = "checkpoint-save", version, about, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Save model, text encoder(s) and VAE as one checkpoint (ComfyUI's Save Checkpoint node).
    ///
    /// Prints the written path on stdout (and nothing else) and a one-line summary on stderr.
    #[command(after_help = EXIT_CODES)]
    Save(Box<SaveArgs>),

    /// Split a checkpoint into model.safetensors, clip.safetensors and vae.safetensors.
    ///
    /// The files hold the in-memory (ComfyUI) key names, so `save --model --clip --vae` reads them
    /// back. Existing files are never overwritten.
    #[command(after_help = EXIT_CODES)]
    Split(SplitArgs),

    /// Show a checkpoint's architecture, prediction, tensors per part, dtypes and metadata.
    #[command(after_help = EXIT_CODES)]
    Inspect(InspectArgs),

    /// Measure save throughput against candle's path and the storage ceiling, in one run.
    ///
    /// Builds a synthetic model in memory, then times (after a warm-up, `--runs` times each,
    /// median): (a) this tool's save, (b) candle's `to_dtype` + `safetensors::save`, (c) raw
    /// writes of the same bytes into the same folder (one stream, and parallel positional
    /// writes), all ending with the same fsync. Prints GB/s, the ratios and peak extra memory.
    #[command(after_help = EXIT_CODES)]
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Architecture of the synthetic model.
    #[arg(long, value_name = "ARCH")]
    synthetic: Arch,

    /// Dtype the checkpoint is saved in (keep, f32, f16, bf16, f8_e4m3, f8_e5m2).
    #[arg(long, value_name = "DTYPE", default_value = "keep")]
    dtype: TargetDtype,

    /// Dtype the synthetic model is built in (f32, f16, bf16); default: the reference's
    /// (F32 denoiser and VAE, F16 text encoders).
    #[arg(long, value_name = "DTYPE")]
    model_dtype: Option<TargetDtype>,

    /// Folder written into; put it on the storage you want to measure.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,

    /// Timed runs of each measurement after one warm-up.
    #[arg(long, value_name = "N", default_value_t = 3)]
    runs: usize,

    /// Cap every dimension of the synthetic model (quick runs).
    #[arg(long, value_name = "N")]
    max_dim: Option<usize>,

    /// Device the model lives on: cpu, cuda:N or metal:N.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    device: String,

    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,

    #[command(flatten)]
    engine: EngineArgs,
}

/// Settings of the parallel writer.
#[derive(Debug, Args)]
struct EngineArgs {
    /// Writer threads [default: one per core]
    #[arg(long, value_name = "N", help_heading = "Writer")]
    threads: Option<usize>,

    /// Host memory for staging, in MiB.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 256,
        help_heading = "Writer"
    )]
    staging_mib: u64,

    /// Unit of work between writer threads, in MiB.
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 32,
        help_heading = "Writer"
    )]
    chunk_mib: u64,

    /// How chunks reach the file: auto, pwrite or mmap.
    #[arg(
        long,
        value_name = "B",
        default_value = "auto",
        help_heading = "Writer"
    )]
    backend: Backend,

    /// Write with the simple sequential writer instead of the parallel engine.
    #[arg(long, help_heading = "Writer")]
    sequential: bool,
}

impl EngineArgs {
    fn options(&self) -> EngineOptions {
        EngineOptions {
            chunk_size: self.chunk_mib << 20,
            staging_budget: self.staging_mib << 20,
            threads: self.threads.unwrap_or(0),
            backend: self.backend,
        }
    }

    fn writer(&self) -> WriterChoice {
        if self.sequential {
            WriterChoice::Sequential
        } else {
            WriterChoice::Parallel(self.options())
        }
    }
}

#[derive(Debug, Args)]
struct SplitArgs {
    /// The checkpoint to split.
    #[arg(value_name = "CKPT")]
    checkpoint: PathBuf,

    /// Folder for the component files (created if missing).
    #[arg(long, value_name = "DIR")]
    output_dir: PathBuf,

    /// The checkpoint's architecture; default: detected from its keys.
    #[arg(long, value_name = "ARCH")]
    arch: Option<Arch>,

    /// Print nothing on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Debug, Args)]
struct InspectArgs {
    /// The checkpoint to inspect (only its header is read).
    #[arg(value_name = "CKPT")]
    checkpoint: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// The `--arch` value: detection, one architecture, or the generic prefix layout.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ArchArg {
    Auto,
    Arch(Arch),
    Generic,
}

fn parse_arch_arg(s: &str) -> std::result::Result<ArchArg, String> {
    match s.to_ascii_lowercase().as_str() {
        "auto" => Ok(ArchArg::Auto),
        "generic" => Ok(ArchArg::Generic),
        _ => s
            .parse::<Arch>()
            .map(ArchArg::Arch)
            .map_err(|_| format!("choose auto, generic or one of {}", Arch::known_names())),
    }
}

#[derive(Debug, Args)]
struct SaveArgs {
    /// The denoiser (UNet/DiT) as a .safetensors file with in-memory key names.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "synthetic",
        conflicts_with = "synthetic",
        help_heading = "Inputs"
    )]
    model: Option<PathBuf>,

    /// The text encoder(s) as a .safetensors file (`clip_l.…`, `clip_g.…`, `t5xxl.…` keys).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "synthetic",
        conflicts_with = "synthetic",
        help_heading = "Inputs"
    )]
    clip: Option<PathBuf>,

    /// The autoencoder as a .safetensors file (`encoder.…`, `decoder.…` keys).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "synthetic",
        conflicts_with = "synthetic",
        help_heading = "Inputs"
    )]
    vae: Option<PathBuf>,

    /// Build a synthetic model of this architecture in memory instead of reading files
    /// (sd15, sd2, sdxl, sdxl-refiner, sd3, flux, flux-schnell).
    #[arg(long, value_name = "ARCH", help_heading = "Inputs")]
    synthetic: Option<Arch>,

    /// Seed of the synthetic model's values.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "synthetic",
        help_heading = "Inputs"
    )]
    seed: u64,

    /// Cap every dimension of the synthetic model (a tiny model with every key name).
    #[arg(
        long,
        value_name = "N",
        requires = "synthetic",
        help_heading = "Inputs"
    )]
    max_dim: Option<usize>,

    /// Build the test-sized synthetic model: every kind of key, consistent shapes, under 2 MB.
    #[arg(
        long,
        requires = "synthetic",
        conflicts_with = "max_dim",
        help_heading = "Inputs"
    )]
    tiny: bool,

    /// Key layout: auto (detect), an architecture, or generic (prefixes only, no conversion).
    #[arg(
        long,
        value_name = "ARCH",
        default_value = "auto",
        value_parser = parse_arch_arg,
        help_heading = "Layout"
    )]
    arch: ArchArg,

    /// Prefix of denoiser keys (generic layout) [default: model.diffusion_model.]
    #[arg(long, value_name = "P", help_heading = "Layout")]
    model_prefix: Option<String>,

    /// Prefix of text-encoder keys (generic layout) [default: text_encoders.]
    #[arg(long, value_name = "P", help_heading = "Layout")]
    clip_prefix: Option<String>,

    /// Prefix of VAE keys (generic layout) [default: vae.]
    #[arg(long, value_name = "P", help_heading = "Layout")]
    vae_prefix: Option<String>,

    /// Prediction type (eps, v, v-zsnr, edm-v, flow); default: the architecture's own.
    #[arg(long, value_name = "TYPE", help_heading = "Layout")]
    prediction: Option<Prediction>,

    /// Largest sigma of an edm-v schedule [default: 120]
    #[arg(long, value_name = "X", help_heading = "Layout")]
    sigma_max: Option<f64>,

    /// Smallest sigma of an edm-v schedule [default: 0.002]
    #[arg(long, value_name = "X", help_heading = "Layout")]
    sigma_min: Option<f64>,

    /// Dtype of every component (keep, f32, f16, bf16, f8_e4m3, f8_e5m2).
    #[arg(
        long,
        value_name = "DTYPE",
        default_value = "keep",
        help_heading = "Dtypes"
    )]
    dtype: TargetDtype,

    /// Dtype of the denoiser, overriding --dtype.
    #[arg(long, value_name = "DTYPE", help_heading = "Dtypes")]
    model_dtype: Option<TargetDtype>,

    /// Dtype of the text encoder(s), overriding --dtype.
    #[arg(long, value_name = "DTYPE", help_heading = "Dtypes")]
    clip_dtype: Option<TargetDtype>,

    /// Dtype of the VAE, overriding --dtype.
    #[arg(long, value_name = "DTYPE", help_heading = "Dtypes")]
    vae_dtype: Option<TargetDtype>,

    /// Output root; the checkpoint never leaves it (ComfyUI's output folder).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "output",
        help_heading = "Output"
    )]
    output_dir: PathBuf,

    /// File-name prefix: `<prefix>_<counter:05>_.safetensors`; `%year%`… tokens are expanded,
    /// a trailing `/` names a folder.
    #[arg(
        long,
        value_name = "P",
        default_value = "checkpoints/ComfyUI",
        help_heading = "Output"
    )]
    prefix: String,

    /// JSON file written as the `prompt` metadata (ComfyUI's API-format prompt).
    #[arg(long, value_name = "FILE", help_heading = "Metadata")]
    prompt: Option<PathBuf>,

    /// JSON file written as the `workflow` metadata (ComfyUI's UI graph).
    #[arg(long, value_name = "FILE", help_heading = "Metadata")]
    workflow: Option<PathBuf>,

    /// Leave out `prompt` and `workflow` (like ComfyUI's --disable-metadata).
    #[arg(long, help_heading = "Metadata")]
    disable_metadata: bool,

    /// Refuse to write a checkpoint holding NaN/Inf values (default: warn only).
    #[arg(long, help_heading = "Checks")]
    check_finite: bool,

    /// Print only the written path: no progress bar, no summary, no warnings.
    #[arg(long, short, help_heading = "Output")]
    quiet: bool,

    #[command(flatten)]
    engine: EngineArgs,
}

fn main() -> ExitCode {
    // Past a file-size limit (`ulimit -f`), let the write fail with EFBIG, reported and cleaned
    // up like any other error, instead of the default SIGXFSZ killing the process mid-save.
    // SAFETY: setting a signal's disposition to "ignore" at start-up, before any thread exists.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = Cli::parse();
    let cancel = Arc::new(AtomicBool::new(false));
    if let Err(e) = install_ctrlc(&cancel) {
        // Saving still works without the handler; Ctrl-C then just kills the process.
        eprintln!("warning: {e:#}");
    }
    match run(cli, &cancel) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(e) => {
            eprintln!("error: {}", one_line(&message(&e)));
            let cancelled = matches!(e.downcast_ref::<Error>(), Some(Error::Cancelled))
                || cancel.load(Ordering::Relaxed);
            ExitCode::from(if cancelled {
                EXIT_INTERRUPTED
            } else {
                EXIT_ERROR
            })
        }
    }
}

/// Ctrl-C sets `cancel`; the writer sees it, removes its temporary file and returns an error.
fn install_ctrlc(cancel: &Arc<AtomicBool>) -> Result<()> {
    let flag = Arc::clone(cancel);
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .context("cannot install the Ctrl-C handler")
}

/// The error and its causes, like `{:#}`, without repeating a cause whose text the error before it
/// already includes (library I/O errors print their source themselves).
fn message(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Writes to stdout; a closed pipe (`… | head`) is not an error worth reporting.
fn print_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// Joins a multi-line message (the reference's sandbox error has four lines) into one line.
fn one_line(msg: &str) -> String {
    msg.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn run(cli: Cli, cancel: &Arc<AtomicBool>) -> Result<()> {
    match cli.command {
        Command::Save(args) => run_save(&args, cancel),
        Command::Split(args) => run_split(&args, cancel),
        Command::Inspect(args) => run_inspect(&args),
        Command::Bench(args) => run_bench(&args),
    }
}

fn run_save(args: &SaveArgs, cancel: &Arc<AtomicBool>) -> Result<()> {
    let opts = save_options(args, cancel)?;
    let components = load_components(args)?;
    let saved = save::save(&components, &opts)?;
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
        writer: args.engine.writer(),
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
            let (tensors, _) = loader::read_tensors(path, &Device::Cpu)
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

fn run_split(args: &SplitArgs, cancel: &Arc<AtomicBool>) -> Result<()> {
    let loaded = loader::load_checkpoint(&args.checkpoint, &Device::Cpu, args.arch)
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
        let part = Components::new(tensors.clone());
        let path = args.output_dir.join(split_file_name(kind));
        let saved = save::save_to_path(&part, &path, &opts)
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

fn run_inspect(args: &InspectArgs) -> Result<()> {
    let inspection = loader::inspect(&args.checkpoint)
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

fn run_bench(args: &BenchArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let model_dtype = match args.model_dtype {
        None | Some(TargetDtype::Keep) => None,
        Some(d) => Some(
            d.file_dtype()
                .and_then(checkpoint_save::dtype::candle_dtype)
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
