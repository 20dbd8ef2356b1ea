//! `merge`'s flags.

use std::path::PathBuf;

use clap::Args;

use checkpoint_save::quant::Requantize;

use super::SaveFlags;

/// Which input's autoencoder a merge writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum VaeFrom {
    /// A's.
    A,
    /// B's.
    B,
}

/// `merge`'s inputs, operation and LoRAs, and the save flags.
#[derive(Debug, Args)]
pub(crate) struct MergeArgs {
    /// A, then B (and C for --add-difference, or any number with --weights): single-file
    /// checkpoints or diffusers folders.
    #[arg(value_name = "INPUT", required = true, num_args = 1..)]
    pub(crate) inputs: Vec<PathBuf>,

    /// A weighted sum of all inputs, one weight each: normalized (divided by their sum, so
    /// 4,3,2,1 is 0.4,0.3,0.2,0.1), computed as the chain of ModelMergeSimple nodes ComfyUI
    /// would run for it, in one pass.
    #[arg(
        long,
        value_name = "W,W,…",
        group = "operation",
        value_delimiter = ',',
        help_heading = "Merge"
    )]
    pub(crate) weights: Option<Vec<f64>>,

    /// A merge method of sd-mecha's over the inputs, in its order (`slerp A B`,
    /// `add_difference_ties BASE M1 M2 …`): weighted_sum, n_average, add_difference, slerp,
    /// add_perpendicular, train_difference, ties_sum, add_difference_ties, ties_sum_extended,
    /// add_difference_ties_extended, add_ties_with_dare (dare; with della_eps, sd-mecha's DELLA),
    /// dropout, della (mergekit's), model_stock, n_model_stock, geometric_median, clamp. It merges
    /// the denoiser;
    /// the text encoders are A's unless --clip-method.
    #[arg(long, value_name = "NAME", group = "operation", help_heading = "Merge")]
    pub(crate) method: Option<String>,

    /// With --method: merge the text encoders with the method too, as sd-mecha merges every key
    /// (default: A's text encoders, as ComfyUI's model merge nodes leave CLIP).
    #[arg(long, help_heading = "Merge")]
    pub(crate) clip_method: bool,

    /// A parameter of --method, NAME=VALUE (repeatable): `--param alpha=0.3 --param k=0.2`.
    #[arg(
        long = "param",
        value_name = "NAME=VALUE",
        requires = "method",
        help_heading = "Merge"
    )]
    pub(crate) params: Vec<String>,

    /// With --weights: the text encoders merged too, with these weights (CLIPMergeSimple's
    /// chain; `position_ids` and `logit_scale` stay A's).
    #[arg(
        long,
        value_name = "W,W,…",
        requires = "weights",
        value_delimiter = ',',
        help_heading = "Merge"
    )]
    pub(crate) clip_weights: Option<Vec<f64>>,

    /// Weighted sum, ComfyUI's convention: A·R + B·(1 − R) (1 keeps A; A1111's M is 1 − R).
    #[arg(
        long,
        value_name = "R",
        group = "operation",
        allow_negative_numbers = true,
        help_heading = "Merge"
    )]
    pub(crate) ratio: Option<f64>,

    /// Add difference: A + (B − C)·M (three inputs).
    #[arg(
        long,
        value_name = "M",
        group = "operation",
        allow_negative_numbers = true,
        help_heading = "Merge"
    )]
    pub(crate) add_difference: Option<f64>,

    /// ComfyUI's ModelSubtract: A·M − B·M.
    #[arg(
        long,
        value_name = "M",
        group = "operation",
        allow_negative_numbers = true,
        help_heading = "Merge"
    )]
    pub(crate) subtract: Option<f64>,

    /// ComfyUI's ModelAdd: A + B.
    #[arg(long, group = "operation", help_heading = "Merge")]
    pub(crate) add: bool,

    /// Merge the text encoders too, with this ratio (or multiplier) in the same operation
    /// (`position_ids` and `logit_scale` stay A's, as CLIPMergeSimple keeps them).
    #[arg(
        long,
        value_name = "R",
        allow_negative_numbers = true,
        help_heading = "Merge"
    )]
    pub(crate) clip_ratio: Option<f64>,

    /// Whose VAE is written, unmerged.
    #[arg(
        long,
        value_name = "INPUT",
        default_value = "a",
        help_heading = "Merge"
    )]
    pub(crate) vae: VaeFrom,

    /// ComfyUI's ModelMergeBlocks: `input=R,middle=R,out=R`, `IN00=R,…,M00=R,OUT11=R`, key
    /// prefixes (`time_embed.=R,joint_blocks.3.=R`), or a list of 25 (SD1/SD2) or 19 (SDXL)
    /// ratios. A key takes the longest matching prefix's ratio, and keys no entry matches
    /// (`time_embed.`, `label_emb.`…) the FIRST entry's, as the node does. Replaces --ratio:
    /// two inputs make the weighted sum, three the add difference (values as multipliers).
    #[arg(long, value_name = "SPEC", help_heading = "Merge")]
    pub(crate) block_ratios: Option<String>,

    /// A LoRA to bake, with its model and clip strengths (default 1; the clip's defaults to the
    /// model's). Repeatable; applied in order, after the merge.
    #[arg(long, value_name = "FILE[:MODEL[:CLIP]]", help_heading = "Merge")]
    pub(crate) lora: Vec<String>,

    /// Keys B or C lack are taken from A instead of refusing the merge.
    #[arg(long, help_heading = "Merge")]
    pub(crate) allow_missing: bool,

    /// Refuse a LoRA any of whose keys is not applied (a name that matches no tensor of the
    /// model, or a form ComfyUI leaves out there); without it they are listed in the summary.
    #[arg(long, help_heading = "Merge")]
    pub(crate) strict: bool,

    /// How a merged or baked tensor of a quantized A is written back in A's format (with
    /// --dtype keep): existing (A's scales, values rounded to the format's grid) or fresh (new
    /// scales from the new values).
    #[arg(
        long,
        value_name = "HOW",
        default_value = "existing",
        help_heading = "Merge"
    )]
    pub(crate) requantize: Requantize,

    /// Where merged tensors are computed: cpu (fused into the write), cuda:N or metal:N.
    #[arg(
        long,
        value_name = "DEVICE",
        default_value = "cpu",
        help_heading = "Merge"
    )]
    pub(crate) device: String,

    #[command(flatten)]
    pub(crate) out: SaveFlags,
}
