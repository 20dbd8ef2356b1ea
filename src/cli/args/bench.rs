//! `bench`'s flags.

use std::path::PathBuf;

use clap::Args;

use checkpoint_save::quant::Format;
use checkpoint_save::{GgufType, TargetDtype};

use super::EngineArgs;

/// What `bench` times, on which synthetic model, against which references.
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// What to time: `save` (a model in memory, or with --from-file a file-to-file convert) or
    /// `merge` (a weighted sum of two f32 checkpoints on disk, ratio 0.3, text encoders too).
    #[arg(value_name = "JOB", default_value = "save")]
    pub(crate) job: BenchJob,

    /// The synthetic model: a family's name (its default model) or a variant's (`wan21-14b`).
    #[arg(long, value_name = "MODEL", required_unless_present = "input")]
    pub(crate) synthetic: Option<String>,

    /// Time a file-to-file convert of this checkpoint instead of a synthetic model's (one
    /// larger than memory, say); it is read, never changed or removed. Its architecture is
    /// detected (or --synthetic names it).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["max_dim", "model_dtype", "input_dir"])]
    pub(crate) input: Option<PathBuf>,

    /// Dtype the checkpoint is saved in (keep, f32, f16, bf16, f8_e4m3, f8_e5m2).
    #[arg(long, value_name = "DTYPE", default_value = "keep")]
    pub(crate) dtype: TargetDtype,

    /// Dtype the synthetic model is built in (f32, f16, bf16); default: the reference's
    /// (F32 denoiser and VAE, F16 text encoders).
    #[arg(long, value_name = "DTYPE")]
    pub(crate) model_dtype: Option<TargetDtype>,

    /// Folder written into; put it on the storage you want to measure.
    #[arg(long, value_name = "DIR")]
    pub(crate) output_dir: Option<PathBuf>,

    /// Timed runs of each measurement after one warm-up.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub(crate) runs: usize,

    /// Cap every dimension of the synthetic model (quick runs).
    #[arg(long, value_name = "N")]
    pub(crate) max_dim: Option<usize>,

    /// Device the model lives on: cpu, cuda:N or metal:N.
    #[arg(long, value_name = "DEVICE", default_value = "cpu")]
    pub(crate) device: String,

    /// Time a file-to-file convert instead of a save from memory: the model is first written
    /// as an f32 (or --model-dtype) single-file checkpoint into the folder, untimed.
    #[arg(long)]
    pub(crate) from_file: bool,

    /// Folder the input files of --from-file and `merge` are written into (default:
    /// --output-dir), e.g. a disk folder when the output folder is a tmpfs too small for both.
    #[arg(long, value_name = "DIR")]
    pub(crate) input_dir: Option<PathBuf>,

    /// With `merge`: also time baking a rank-R LoRA (every attention and convolution weight)
    /// into A, beside a plain convert of A.
    #[arg(long, value_name = "R")]
    pub(crate) lora_rank: Option<usize>,

    /// With `run`: how many checkpoints the chain merges (default 4).
    #[arg(long, value_name = "N")]
    pub(crate) chain: Option<usize>,

    /// Quantize the denoiser's linear weights into FORMAT (scaled-fp8, fp8, fp8-e5m2, int8,
    /// mxfp8, nvfp4), and time the Python program a user writes for it (safetensors +
    /// comfy-kitchen, with CHECKPOINT_SAVE_PYTHON or python3) beside ours.
    #[arg(long, value_name = "FORMAT")]
    pub(crate) quantize: Option<Format>,

    /// Write the denoiser as a GGUF file of TYPE (as `--gguf` of a save) and time the Python
    /// program a user writes for it (convert.py's rules with gguf-py's quantizer: F16, BF16,
    /// Q8_0, Q5_1, Q5_0, Q4_1, Q4_0) beside ours.
    #[arg(long, value_name = "TYPE", conflicts_with = "quantize")]
    pub(crate) gguf: Option<GgufType>,

    /// With `merge`: time this merge method (sd-mecha's name: slerp, ties_sum, …) over two
    /// checkpoints (three for methods that take more) instead of a weighted sum, against the
    /// storage ceiling.
    #[arg(long, value_name = "NAME")]
    pub(crate) method: Option<String>,

    /// A parameter of --method, NAME=VALUE (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE", requires = "method")]
    pub(crate) params: Vec<String>,

    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub(crate) json: bool,

    #[command(flatten)]
    pub(crate) engine: EngineArgs,
}

/// The jobs `bench` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BenchJob {
    /// A save (from memory, or with --from-file from a file).
    Save,
    /// A weighted-sum merge of two checkpoints on disk.
    Merge,
    /// A merge graph: a chain of ModelMergeSimple nodes over --chain checkpoints (f16).
    Run,
}
