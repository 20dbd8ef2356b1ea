//! The command line: subcommands and their flags (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

mod bench;
mod merge;
pub(crate) use bench::{BenchArgs, BenchJob};
pub(crate) use merge::{MergeArgs, VaeFrom};

use checkpoint_save::quant::Format;
use checkpoint_save::{
    Arch, Backend, EngineOptions, GgufType, Prediction, SplitTarget, TargetDtype,
};

/// Exit codes, as the help texts list them.
pub(crate) const EXIT_CODES: &str = "\
Exit codes:
  0    success
  1    error (bad input, unreadable file, refused or failed save); one line on stderr says why
  2    usage error (unknown option or invalid value), reported by the argument parser
  130  interrupted by Ctrl-C, SIGTERM or SIGHUP (kill, timeout, docker stop, a closed terminal);
       the temporary file was removed and nothing was written (a second Ctrl-C exits at
       once; the next save into that folder removes a temporary file it leaves)";

/// Save diffusion-model components into one ComfyUI-compatible .safetensors checkpoint.
#[derive(Debug, Parser)]
#[command(name = "checkpoint-save", version, about, after_help = EXIT_CODES)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Save model, text encoder(s) and VAE as one checkpoint (ComfyUI's Save Checkpoint node).
    ///
    /// Prints the written path on stdout (and nothing else) and a one-line summary on stderr.
    #[command(after_help = EXIT_CODES)]
    Save(Box<SaveArgs>),

    /// Convert a single-file checkpoint or a diffusers pipeline folder into a ComfyUI checkpoint.
    ///
    /// Streams: every tensor is read where it lies in the input, cast on the way, and written;
    /// nothing is loaded whole. Prints the written path on stdout and a summary on stderr.
    #[command(after_help = EXIT_CODES)]
    Convert(Box<ConvertArgs>),

    /// Split a checkpoint into component files, or into a diffusers pipeline folder.
    ///
    /// `--to comfyui` (the default) writes model.safetensors, clip.safetensors and vae.safetensors
    /// in ComfyUI's in-memory key names, which `save --model --clip --vae` reads back; `--to
    /// diffusers` writes a pipeline folder (model_index.json, scheduler, unet/ or transformer/,
    /// vae/, text_encoder*/) as diffusers and candle-transformers load it. The output folder must
    /// be new or empty; nothing is overwritten.
    #[command(after_help = EXIT_CODES)]
    Split(SplitArgs),

    /// Merge checkpoints and bake LoRAs, streamed into one checkpoint (ComfyUI's merge nodes and
    /// LoraLoader, then Save Checkpoint).
    ///
    /// `merge A B --ratio R` is ModelMergeSimple (A·R + B·(1−R): 1 keeps A); `merge A B C
    /// --add-difference M` is A + (B − C)·M; `--subtract M` (A·M − B·M) and `--add` (A + B) are
    /// ModelSubtract and ModelAdd. The text encoders are A's unless --clip-ratio is given, the
    /// VAE is A's unless --vae b. `--lora FILE[:MODEL[:CLIP]]` (repeatable) bakes LoRAs into
    /// the result; with one input it only bakes. Inputs are single files or diffusers folders.
    /// Every tensor is computed in f32 as it is written and rounded once; the recipe is recorded
    /// in the metadata (`checkpoint_save.recipe`).
    #[command(after_help = EXIT_CODES)]
    Merge(Box<MergeArgs>),

    /// Run a ComfyUI workflow's merges and saves (API or UI format, or a ComfyUI output that
    /// embeds one) in one streamed pass.
    ///
    /// Loaders, LoRA loaders, the model and CLIP merge nodes (ModelMergeSimple, ModelMergeBlocks
    /// and the model-specific block nodes, subtract, add) and CheckpointSave, ModelSave,
    /// CLIPSave and VAESave are run; other nodes are skipped and listed. An sd-mecha recipe
    /// (`.mecha`) is run as sd-mecha's `merge(recipe, output=…)` runs it. Prints each written
    /// path; with --dry-run, the plan.
    #[command(after_help = EXIT_CODES)]
    Run(Box<crate::run::RunArgs>),

    /// Show a checkpoint's architecture, prediction, tensors per part, dtypes and metadata.
    #[command(after_help = EXIT_CODES)]
    Inspect(InspectArgs),

    /// Extract a LoRA from a fine-tuned model and its base (ComfyUI's ModelMergeSubtract into
    /// "Extract and Save Lora"), with a truncated SVD per weight.
    ///
    /// Each weight's difference TUNED − BASE becomes `lora_up`/`lora_down` factors of the given
    /// rank (U·S and Vᵀ, clamped at the 0.99 quantile of their entries, as ComfyUI does), in f16,
    /// under ComfyUI's names (`diffusion_model.…`, `text_encoders.…`) or kohya's. Writes
    /// `loras/ComfyUI_extracted_lora_00001_.safetensors` under --output-dir (ComfyUI's naming)
    /// and prints its path; `merge BASE --lora FILE` bakes it back.
    #[command(name = "extract-lora", after_help = EXIT_CODES)]
    ExtractLora(ExtractArgs),

    /// Measure save throughput against candle's path and the storage ceiling, in one run.
    ///
    /// Builds a synthetic model in memory, then times (after a warm-up, `--runs` times each,
    /// median): (a) this tool's save, (b) candle's `to_dtype` + `safetensors::save`, (c) raw
    /// writes of the same bytes into the same folder (one stream, and parallel positional
    /// writes), all ending with the same fsync. Prints GB/s, the ratios and peak extra memory.
    #[command(after_help = EXIT_CODES)]
    Bench(BenchArgs),
}

/// The most `--threads` accepts: more only adds switching (thousands of threads with a small
/// `--chunk-mib` made a 300 MB convert take minutes); the library caps workers the same way.
const MAX_THREADS: i64 = checkpoint_save::MAX_WRITER_THREADS as i64;
/// The largest `--chunk-mib` (4 GiB units), so `<< 20` cannot overflow.
const MAX_CHUNK_MIB: u64 = 4096;
/// The largest `--staging-mib` (1 TiB), so `<< 20` cannot overflow.
const MAX_STAGING_MIB: u64 = 1 << 20;

/// Settings of the parallel writer.
#[derive(Debug, Args)]
pub(crate) struct EngineArgs {
    /// Writer threads, 0 to 256 (0: the default) [default: one per core; two per core through
    /// direct I/O; never more than 8 per core]
    #[arg(
        long,
        value_name = "N",
        help_heading = "Writer",
        value_parser = clap::value_parser!(u16).range(0..=MAX_THREADS)
    )]
    pub(crate) threads: Option<u16>,

    /// Host memory for staging, in MiB (1 to 1048576).
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 256,
        help_heading = "Writer",
        value_parser = clap::value_parser!(u64).range(1..=MAX_STAGING_MIB)
    )]
    pub(crate) staging_mib: u64,

    /// Unit of work between writer threads, in MiB (1 to 4096).
    #[arg(
        long,
        value_name = "MIB",
        default_value_t = 32,
        help_heading = "Writer",
        value_parser = clap::value_parser!(u64).range(1..=MAX_CHUNK_MIB)
    )]
    pub(crate) chunk_mib: u64,

    /// How chunks reach the file: auto, pwrite, mmap or direct.
    #[arg(
        long,
        value_name = "B",
        default_value = "auto",
        help_heading = "Writer"
    )]
    pub(crate) backend: Backend,
}

impl EngineArgs {
    /// The writer settings these flags ask for.
    pub(crate) fn options(&self) -> EngineOptions {
        EngineOptions {
            // In range (the value parsers above), so the shifts cannot overflow.
            chunk_size: self.chunk_mib << 20,
            staging_budget: self.staging_mib << 20,
            threads: usize::from(self.threads.unwrap_or(0)),
            backend: self.backend,
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct SplitArgs {
    /// The checkpoint to split (or a diffusers pipeline folder, to split into component files).
    #[arg(value_name = "CKPT")]
    pub(crate) checkpoint: PathBuf,

    /// Folder for the parts (created; must be new or empty).
    #[arg(long, value_name = "DIR")]
    pub(crate) output_dir: PathBuf,

    /// What to write: comfyui (model, clip and vae files in ComfyUI's in-memory names), nodes
    /// (the files of ComfyUI's ModelSave, CLIPSave and VAESave nodes) or diffusers (a pipeline
    /// folder). Default: comfyui (nodes with --gguf).
    #[arg(long, value_name = "TARGET")]
    pub(crate) to: Option<SplitTarget>,

    /// The checkpoint's architecture; default: detected from its keys.
    #[arg(long, value_name = "ARCH")]
    pub(crate) arch: Option<Arch>,

    /// Write ComfyUI's node files (as --to nodes) with the denoiser
    /// (diffusion_models/…gguf) and the text encoders ComfyUI-GGUF reads (text_encoders/…gguf)
    /// as GGUF files of TYPE (see `convert --gguf`).
    #[arg(long, value_name = "TYPE")]
    pub(crate) gguf: Option<GgufType>,

    /// Print nothing on stderr.
    #[arg(long, short)]
    pub(crate) quiet: bool,

    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ExtractArgs {
    /// The fine-tuned model: a single-file checkpoint or a diffusers folder.
    #[arg(value_name = "TUNED")]
    pub(crate) tuned: PathBuf,

    /// The model it was tuned from.
    #[arg(value_name = "BASE")]
    pub(crate) base: PathBuf,

    /// Rank of the factors (1 to 4096; capped by each weight's smaller dimension; default 8).
    /// Not with --lora-type full_diff, which writes whole differences.
    #[arg(long, value_name = "R")]
    pub(crate) rank: Option<usize>,

    /// Also the text encoders (LoraSave's `text_encoder_diff`, fed by CLIPMergeSubtract).
    #[arg(long)]
    pub(crate) clip: bool,

    /// Write 1-D weight differences (`.diff`) and bias differences (`.diff_b`) too (LoraSave's
    /// `bias_diff`, which ComfyUI turns on by default).
    #[arg(long)]
    pub(crate) bias_diff: bool,

    /// `standard`: low-rank factors; `full_diff`: every weight's whole difference (`.diff`).
    #[arg(long, value_name = "TYPE", default_value = "standard", value_parser = ["standard", "full_diff"])]
    pub(crate) lora_type: String,

    /// Key names: `comfy` (`diffusion_model.…`) or `kohya` (`lora_unet_…`, `lora_te_…`, with
    /// `alpha` = rank).
    #[arg(long, value_name = "NAMES", default_value = "comfy", value_parser = ["comfy", "kohya"])]
    pub(crate) format: String,

    /// Where the SVD's products run: cpu, cuda:N, metal:N.
    #[arg(long, default_value = "cpu")]
    pub(crate) device: String,

    /// Output root; the file goes to `<DIR>/<prefix>_<counter>_.safetensors`.
    #[arg(long, value_name = "DIR", default_value = "output")]
    pub(crate) output_dir: PathBuf,

    /// File-name prefix (LoraSave's `filename_prefix`).
    #[arg(long, value_name = "P", default_value = "loras/ComfyUI_extracted_lora")]
    pub(crate) prefix: String,

    /// Architecture of both inputs (`auto` detects it).
    #[arg(long, value_name = "ARCH", default_value = "auto", value_parser = parse_arch_arg)]
    pub(crate) arch: ArchArg,

    /// Only the path: no summary.
    #[arg(long, short)]
    pub(crate) quiet: bool,
}

#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The checkpoint to inspect (only its header is read).
    #[arg(value_name = "CKPT")]
    pub(crate) checkpoint: PathBuf,

    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

/// The `--arch` value: detection, one architecture, or the generic prefix layout.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ArchArg {
    Auto,
    Arch(Arch),
    Generic,
}

pub(crate) fn parse_arch_arg(s: &str) -> std::result::Result<ArchArg, String> {
    match s.to_ascii_lowercase().as_str() {
        "auto" => Ok(ArchArg::Auto),
        "generic" => Ok(ArchArg::Generic),
        _ => s
            .parse::<Arch>()
            .map(ArchArg::Arch)
            .map_err(|_| format!("choose auto, generic or one of {}", Arch::known_names())),
    }
}

/// A family's or a known model's name, as `--synthetic` takes it.
pub(crate) fn parse_model_name(s: &str) -> std::result::Result<String, String> {
    checkpoint_save::family::variant_named(s)
        .map(|(_, v)| v.name.to_string())
        .map_err(|_| {
            format!(
                "choose a family ({}) or one of its models ({})",
                Arch::known_names(),
                checkpoint_save::family::variant_names()
            )
        })
}

#[derive(Debug, Args)]
pub(crate) struct SaveArgs {
    /// The denoiser (UNet/DiT): a .safetensors file (or diffusers model folder, or shard index)
    /// in ComfyUI's in-memory names, diffusers names or a single file's `model.diffusion_model.`.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "synthetic",
        conflicts_with = "synthetic",
        help_heading = "Inputs"
    )]
    pub(crate) model: Option<PathBuf>,

    /// The text encoder(s): one file with all (`clip_l.…`, `clip_g.…`, `t5xxl.…` keys) or one
    /// file per encoder in transformers names, repeated in the pipeline's text_encoder order.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "synthetic",
        conflicts_with = "synthetic",
        help_heading = "Inputs"
    )]
    pub(crate) clip: Vec<PathBuf>,

    /// The autoencoder: LDM names (`encoder.down.…`), diffusers names, or a single file's
    /// `first_stage_model.`/`vae.`.
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "synthetic",
        conflicts_with = "synthetic",
        help_heading = "Inputs"
    )]
    pub(crate) vae: Option<PathBuf>,

    /// An audio autoencoder with its vocoder (LTX-2's): a file as ComfyUI's audio VAE loaders
    /// read it (`audio_vae.…`, `vocoder.…`), or in ComfyUI's in-memory names
    /// (`autoencoder.…`, `vocoder.…`).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "synthetic",
        help_heading = "Inputs"
    )]
    pub(crate) audio_vae: Option<PathBuf>,

    /// Build a synthetic model in memory instead of reading files: a family (its default
    /// model) or a known model of one (`wan21-14b`, `flux-fill`, `sd35-large`, …; see the README).
    #[arg(long, value_name = "MODEL", value_parser = parse_model_name, help_heading = "Inputs")]
    pub(crate) synthetic: Option<String>,

    /// Seed of the synthetic model's values.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "synthetic",
        help_heading = "Inputs"
    )]
    pub(crate) seed: u64,

    /// Cap every dimension of the synthetic model (a tiny model with every key name).
    #[arg(
        long,
        value_name = "N",
        requires = "synthetic",
        help_heading = "Inputs"
    )]
    pub(crate) max_dim: Option<usize>,

    /// Build the test-sized synthetic model: every kind of key, consistent shapes, under 2 MB.
    #[arg(
        long,
        requires = "synthetic",
        conflicts_with = "max_dim",
        help_heading = "Inputs"
    )]
    pub(crate) tiny: bool,

    #[command(flatten)]
    pub(crate) out: SaveFlags,
}

/// `convert`'s input and the save flags.
#[derive(Debug, Args)]
pub(crate) struct ConvertArgs {
    /// A single-file checkpoint (ComfyUI, A1111/Forge, kohya), or a diffusers pipeline folder.
    #[arg(value_name = "INPUT")]
    pub(crate) input: PathBuf,

    #[command(flatten)]
    pub(crate) out: SaveFlags,
}

/// What every job that writes a checkpoint is told: layout, prediction, dtypes, naming,
/// metadata, checks and the writer.
#[derive(Debug, Args)]
pub(crate) struct SaveFlags {
    /// Key layout: auto (detect), an architecture, or generic (prefixes only, no conversion).
    #[arg(
        long,
        value_name = "ARCH",
        default_value = "auto",
        value_parser = parse_arch_arg,
        help_heading = "Layout"
    )]
    pub(crate) arch: ArchArg,

    /// Prefix of denoiser keys (generic layout) [default: model.diffusion_model.]
    #[arg(long, value_name = "P", help_heading = "Layout")]
    pub(crate) model_prefix: Option<String>,

    /// Prefix of text-encoder keys (generic layout) [default: text_encoders.]
    #[arg(long, value_name = "P", help_heading = "Layout")]
    pub(crate) clip_prefix: Option<String>,

    /// Prefix of VAE keys (generic layout) [default: vae.]
    #[arg(long, value_name = "P", help_heading = "Layout")]
    pub(crate) vae_prefix: Option<String>,

    /// Prediction type (eps, v, v-zsnr, edm-v, flow, unknown); default: the architecture's own
    /// (generic layout: what the input states, else unknown).
    #[arg(long, value_name = "TYPE", help_heading = "Layout")]
    pub(crate) prediction: Option<Prediction>,

    /// Largest sigma of an edm-v schedule [default: 120]
    #[arg(long, value_name = "X", help_heading = "Layout")]
    pub(crate) sigma_max: Option<f64>,

    /// Smallest sigma of an edm-v schedule [default: 0.002]
    #[arg(long, value_name = "X", help_heading = "Layout")]
    pub(crate) sigma_min: Option<f64>,

    /// Dtype of every component (keep, f32, f16, bf16, f8_e4m3, f8_e5m2).
    #[arg(
        long,
        value_name = "DTYPE",
        default_value = "keep",
        help_heading = "Dtypes"
    )]
    pub(crate) dtype: TargetDtype,

    /// Dtype of the denoiser, overriding --dtype.
    #[arg(long, value_name = "DTYPE", help_heading = "Dtypes")]
    pub(crate) model_dtype: Option<TargetDtype>,

    /// Dtype of the text encoder(s), overriding --dtype.
    #[arg(long, value_name = "DTYPE", help_heading = "Dtypes")]
    pub(crate) clip_dtype: Option<TargetDtype>,

    /// Dtype of the VAE (and of an audio VAE beside it), overriding --dtype.
    #[arg(long, value_name = "DTYPE", help_heading = "Dtypes")]
    pub(crate) vae_dtype: Option<TargetDtype>,

    /// Quantize the denoiser's linear weights into FORMAT: scaled-fp8 (ComfyUI's legacy
    /// layout), fp8, fp8-e5m2, int8, mxfp8 or nvfp4 (comfy_quant). The layers each architecture
    /// keeps in high precision (embeddings, input/output projections, modulation) follow
    /// --dtype, as does everything else; see the README.
    #[arg(long, value_name = "FORMAT", help_heading = "Quantization")]
    pub(crate) quantize: Option<Format>,

    /// Write the denoiser alone as a GGUF file of TYPE, into diffusion_models/ unless --prefix
    /// says otherwise: F16 or BF16 as ComfyUI-GGUF's convert.py writes it; Q8_0, Q6_K, Q5_K_M
    /// (Q5_K), Q5_K_S, Q5_1, Q5_0, Q4_K_M (Q4_K), Q4_K_S, Q4_1, Q4_0, Q3_K_L, Q3_K_M (Q3_K),
    /// Q3_K_S or Q2_K as llama-quantize (with ComfyUI-GGUF's lcpp.patch) quantizes that file.
    /// `convert` of a text-encoder file writes each encoder as the GGUF ComfyUI-GGUF's CLIP
    /// loaders read (T5/umT5, Llama, Qwen), into text_encoders/.
    #[arg(
        long,
        value_name = "TYPE",
        conflicts_with_all = ["quantize", "dry_run"],
        help_heading = "Output"
    )]
    pub(crate) gguf: Option<GgufType>,

    /// Quantize the GGUF tensors whose keys this regular expression matches, whatever the
    /// rules say, where their rows are whole blocks. Repeatable.
    #[arg(long, value_name = "REGEX", requires = "gguf", help_heading = "Output")]
    pub(crate) gguf_include: Vec<String>,

    /// Keep the GGUF tensors whose keys this regular expression matches in high precision
    /// (convert.py's F32/F16/BF16; wins over --gguf-include). Repeatable.
    #[arg(long, value_name = "REGEX", requires = "gguf", help_heading = "Output")]
    pub(crate) gguf_exclude: Vec<String>,

    /// Also quantize the layers this pattern names: `[model:|clip:|vae:]REGEX`, matched anywhere
    /// in the component's in-memory keys (`clip:t5xxl\.` quantizes T5's linear weights).
    /// Repeatable.
    #[arg(
        long,
        value_name = "[COMPONENT:]REGEX",
        requires = "quantize",
        help_heading = "Quantization"
    )]
    pub(crate) quantize_include: Vec<String>,

    /// Keep the layers this pattern names in high precision (wins over --quantize-include).
    /// Repeatable.
    #[arg(
        long,
        value_name = "[COMPONENT:]REGEX",
        requires = "quantize",
        help_heading = "Quantization"
    )]
    pub(crate) quantize_exclude: Vec<String>,

    /// Output root; the checkpoint never leaves it (ComfyUI's output folder).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "output",
        help_heading = "Output"
    )]
    pub(crate) output_dir: PathBuf,

    /// File-name prefix: `<prefix>_<counter:05>_.safetensors`; `%year%`… tokens are expanded,
    /// a trailing `/` names a folder.
    #[arg(
        long,
        value_name = "P",
        default_value = "checkpoints/ComfyUI",
        help_heading = "Output"
    )]
    pub(crate) prefix: String,

    /// JSON file written as the `prompt` metadata (ComfyUI's API-format prompt).
    #[arg(long, value_name = "FILE", help_heading = "Metadata")]
    pub(crate) prompt: Option<PathBuf>,

    /// JSON file written as the `workflow` metadata (ComfyUI's UI graph).
    #[arg(long, value_name = "FILE", help_heading = "Metadata")]
    pub(crate) workflow: Option<PathBuf>,

    /// Leave out `prompt` and `workflow` (like ComfyUI's --disable-metadata).
    #[arg(long, help_heading = "Metadata")]
    pub(crate) disable_metadata: bool,

    /// Refuse to write a checkpoint holding NaN/Inf values (default: warn only).
    #[arg(long, help_heading = "Checks")]
    pub(crate) check_finite: bool,

    /// Print only the written path: no progress bar, no summary, no warnings.
    #[arg(long, short, help_heading = "Output")]
    pub(crate) quiet: bool,

    /// Plan the job and print what it would write — every key, shape and dtype, the metadata,
    /// the family with its evidence, the file name and the bytes to read and write — and write
    /// nothing (not even the output folder).
    #[arg(long, help_heading = "Output")]
    pub(crate) dry_run: bool,

    /// With --dry-run: print the plan as one JSON object.
    #[arg(long, requires = "dry_run", help_heading = "Output")]
    pub(crate) json: bool,

    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}
