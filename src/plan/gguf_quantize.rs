//! What `llama-quantize` (llama.cpp tag b3962, the one ComfyUI-GGUF's `tools/README.md` checks
//! out, with its `tools/lcpp.patch`) decides for each tensor of the F16/BF16 file convert.py
//! wrote, when asked for a quantized [`GgufType`]:
//!
//! - **whether** a tensor is quantized: its name ends with `weight`, it is not a `_norm.weight`
//!   (nor one of llama.cpp's own exclusions), it is not on its architecture's never-quantize list
//!   (lcpp.patch: Flux's `img_in.`, `txt_in.`, `final_layer.`…; SD's `time_embed.`, `label_emb.`,
//!   `input_blocks.0.0.weight`, `out.2.weight`…; Wan's `patch_embedding.`, `head.`…), and it has
//!   two dimensions once ggml drops the leading ones (`ggml_n_dims == 2`: no 1-D, 3-D or 4-D
//!   tensors, the SD convolutions reshaped to rows of 256 included);
//! - **which type**: the file type's default ([`GgufType::ggml`]), bumped by lcpp.patch's
//!   `img_tensor_get_type` for attention values (`.to_v.weight`, `.v.weight`, `attn_v.weight`…),
//!   fused qkv (`attn.qkv.weight`…) and feed-forward outputs (`.ff.net.2.weight`, `.ffn.2.weight`,
//!   `.mlp.layer2.weight`…), in file order for the "first N" rules; a K-quant whose rows are not
//!   a multiple of 256 falls back to F16, as the patch does;
//! - a tensor left as it is keeps convert.py's type (F32, F16 or BF16);
//! - the shape: ggml writes `ggml_n_dims` dimensions, dropping leading ones (`[1, 6, 1536]`
//!   becomes `[6, 1536]`) except where the patch puts them back (SD3's `pos_embed`, AuraFlow's
//!   `positional_encoding` and `register_tokens`, Wan's `.modulation` and `img_emb.emb_pos`).
//!
//! Where llama-quantize aborts instead (a Q8_0…Q4_0 tensor whose rows are not whole 32-value
//! blocks: ggml asserts), this tool falls back to F16 like the K-quants. Architectures the patch
//! does not know (`qwen_image`) get the rules every image model shares, without a list.
//!
//! `--gguf-include` and `--gguf-exclude` ([`GgufTarget`]) override the first decision: an
//! excluded tensor keeps convert.py's type; an included one is quantized (then bumped as any)
//! where its rows are whole blocks of its type, and kept as it is otherwise.

use regex::Regex;

use super::gguf_type::GgufType;
use crate::error::{Error, Result};
use crate::model::Arch;
use crate::quant::GgmlType;

/// A GGUF target: its type and the tensors moved between it and high precision.
#[derive(Debug, Clone)]
pub struct GgufTarget {
    /// The file type.
    pub ty: GgufType,
    /// Tensors quantized whatever the rules say (where their rows allow), matched anywhere in
    /// the key.
    pub include: Vec<Regex>,
    /// Tensors kept in convert.py's type (F32, F16, BF16); wins over `include`.
    pub exclude: Vec<Regex>,
}

impl From<GgufType> for GgufTarget {
    fn from(ty: GgufType) -> Self {
        GgufTarget {
            ty,
            include: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

impl GgufTarget {
    /// `ty` with the patterns `include` and `exclude` (regular expressions, matched anywhere in
    /// a tensor's key).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a pattern that does not parse, or patterns given with F16 or
    /// BF16 (which quantize nothing).
    pub fn new(ty: GgufType, include: &[String], exclude: &[String]) -> Result<GgufTarget> {
        let patterns = !(include.is_empty() && exclude.is_empty());
        if !ty.is_quantized() && patterns {
            return Err(Error::InvalidInput(format!(
                "--gguf-include/--gguf-exclude move tensors between a quantized type and high \
                 precision; a {ty} file quantizes nothing: choose a quantized type ({})",
                GgufType::NAMES
            )));
        }
        let parse = |flag: &str, list: &[String]| -> Result<Vec<Regex>> {
            list.iter()
                .map(|p| {
                    Regex::new(p).map_err(|e| {
                        Error::InvalidInput(format!(
                            "--gguf-{flag} `{p}` is not a regular expression: {e}"
                        ))
                    })
                })
                .collect()
        };
        Ok(GgufTarget {
            ty,
            include: parse("include", include)?,
            exclude: parse("exclude", exclude)?,
        })
    }
}

/// llama-quantize's decisions over one file, tensor by tensor in file order (the counter of
/// attention values is its `qs.i_attention_wv`).
pub(crate) struct Quantizer<'a> {
    target: &'a GgufTarget,
    arch: Arch,
    attention_values: usize,
}

impl<'a> Quantizer<'a> {
    pub(crate) fn new(target: &'a GgufTarget, arch: Arch) -> Self {
        Quantizer {
            target,
            arch,
            attention_values: 0,
        }
    }

    /// The type of tensor `name`, stored by convert.py in `base` with `shape`.
    pub(crate) fn decide(&mut self, name: &str, base: GgmlType, shape: &[usize]) -> GgmlType {
        let ty = self.target.ty;
        if !ty.is_quantized() || self.target.exclude.iter().any(|r| r.is_match(name)) {
            return base;
        }
        let forced = self.target.include.iter().any(|r| r.is_match(name));
        let row = shape.last().copied().unwrap_or(1);
        if forced && !row.is_multiple_of(ty.ggml().block_len()) {
            return base;
        }
        if !forced && !quantizable(self.arch, name, shape) {
            return base;
        }
        let mut new = self.bump(name, ty.ggml());
        if !row.is_multiple_of(new.block_len()) {
            new = GgmlType::F16;
        }
        new
    }

    /// lcpp.patch's `img_tensor_get_type` (before its row check).
    fn bump(&mut self, name: &str, default: GgmlType) -> GgmlType {
        use GgmlType as G;
        use GgufType as T;
        let ty = self.target.ty;
        let has = |s: &str| name.contains(s);
        if [
            "attn_v.weight",
            ".to_v.weight",
            ".v.weight",
            ".attn.w1v.weight",
            ".attn.w2v.weight",
            "_attn.v_proj.weight",
        ]
        .iter()
        .any(|s| has(s))
        {
            let i = self.attention_values;
            self.attention_values += 1;
            return match ty {
                T::Q2_K => G::Q3_K,
                T::Q3_K_M if i < 2 => G::Q5_K,
                T::Q3_K_M => G::Q4_K,
                T::Q3_K_L => G::Q5_K,
                T::Q4_K_M | T::Q5_K_M => G::Q6_K,
                T::Q4_K_S if i < 4 => G::Q5_K,
                _ => default,
            };
        }
        if ["attn_qkv.weight", "attn.qkv.weight", "attention.qkv.weight"]
            .iter()
            .any(|s| has(s))
        {
            return match ty {
                T::Q3_K_M | T::Q3_K_L => G::Q4_K,
                T::Q4_K_M => G::Q5_K,
                T::Q5_K_M => G::Q6_K,
                _ => default,
            };
        }
        let ffn_down = has("ffn_down")
            || (has("experts.") && has(".w2.weight"))
            || [
                ".ffn.2.weight",
                ".ff.net.2.weight",
                ".mlp.layer2.weight",
                ".adaln_modulation_mlp.2.weight",
                ".feed_forward.w2.weight",
            ]
            .iter()
            .any(|s| has(s));
        if ffn_down {
            return match ty {
                T::Q3_K_M => G::Q4_K,
                T::Q3_K_L | T::Q4_K_S => G::Q5_K,
                T::Q4_K_M | T::Q5_K_M => G::Q6_K,
                T::Q4_0 => G::Q4_1,
                T::Q5_0 => G::Q5_1,
                _ => default,
            };
        }
        default
    }
}

/// llama-quantize's `quantize` flag for an image model (before `img_tensor_get_type`).
fn quantizable(arch: Arch, name: &str, shape: &[usize]) -> bool {
    // `name.rfind("weight") == name.size() - 6`: also true for a 5-byte name without `weight`
    // (npos equals size − 6 wrapped around).
    let weight = name.ends_with("weight") || (name.len() == 5 && !name.contains("weight"));
    const LLAMA: [&str; 9] = [
        "_norm.weight",
        "ffn_gate_inp.weight",
        "ssm_conv1d.weight",
        "time_mix_first.weight",
        "time_mix_w1.weight",
        "time_mix_w2.weight",
        "time_mix_decay_w1.weight",
        "time_mix_decay_w2.weight",
        "attn_rel_b.weight",
    ];
    let (contains, equals) = never_quantized(arch);
    weight
        && !LLAMA.iter().any(|s| name.contains(s))
        && !contains.iter().any(|s| name.contains(s))
        && !equals.contains(&name)
        && ggml_dims(shape).len() == 2
}

/// lcpp.patch's never-quantize lists of `arch`: substrings, and whole names.
fn never_quantized(arch: Arch) -> (&'static [&'static str], &'static [&'static str]) {
    const FLUX: &[&str] = &[
        "txt_in.",
        "img_in.",
        "time_in.",
        "vector_in.",
        "guidance_in.",
        "final_layer.",
    ];
    match arch {
        Arch::Flux | Arch::FluxSchnell | Arch::Chroma | Arch::Flux2 => (FLUX, &[]),
        Arch::HunyuanVideo | Arch::HunyuanVideo15 => (FLUX, &[]),
        Arch::Sd15 | Arch::Sd2 | Arch::Sdxl | Arch::SdxlRefiner => (
            &[
                "class_embedding.",
                "time_embedding.",
                "add_embedding.",
                "time_embed.",
                "label_emb.",
                "conv_in.",
                "conv_out.",
            ],
            &["input_blocks.0.0.weight", "out.2.weight"],
        ),
        Arch::Sd3 => (
            &[
                "final_layer.",
                "time_text_embed.",
                "context_embedder.",
                "t_embedder.",
                "y_embedder.",
                "x_embedder.",
            ],
            &["proj_out.weight", "pos_embed"],
        ),
        // LTX-2's video stream keeps LTX-Video's names; its audio stream's copies
        // (`audio_adaln_single.`, `audio_proj_out.`...) contain them.
        Arch::Ltxv | Arch::Ltx2 => (
            &[
                "adaln_single.",
                "caption_projection.",
                "patchify_proj.",
                "proj_out.",
                "scale_shift_table",
            ],
            &[],
        ),
        Arch::Wan21 | Arch::Wan22 => (
            &[
                "modulation.",
                "patch_embedding.",
                "text_embedding.",
                "time_projection.",
                "time_embedding.",
                "img_emb.",
                "head.",
            ],
            &[],
        ),
        Arch::HiDream => (
            &[
                "p_embedder.",
                "t_embedder.",
                "x_embedder.",
                "final_layer.",
                ".ff_i.gate.weight",
                "caption_projection.",
            ],
            &[],
        ),
        Arch::Lumina2 | Arch::ZImage => (
            &[
                "t_embedder.",
                "x_embedder.",
                "final_layer.",
                "cap_embedder.",
                "context_refiner.",
                "noise_refiner.",
            ],
            &[],
        ),
        Arch::QwenImage => (&[], &[]),
    }
}

/// The dimensions ggml keeps (`ggml_n_dims`): leading ones dropped, at least one left.
fn ggml_dims(shape: &[usize]) -> &[usize] {
    let first = shape.iter().position(|&d| d != 1);
    match first {
        Some(i) => &shape[i..],
        None => &shape[shape.len().saturating_sub(1)..],
    }
}

/// The shape llama-quantize writes for a tensor convert.py stored as `shape` (see the
/// [module docs](self)).
pub(crate) fn written_shape(arch: Arch, name: &str, shape: &[usize]) -> Vec<usize> {
    let kept = ggml_dims(shape);
    // The patch's `gguf_set_tensor_ndim(…, 3)` where ggml's third dimension is 1.
    let third_is_one = shape.len() >= 3 && shape[shape.len() - 3] == 1;
    let three = match arch {
        Arch::Sd3 => name == "pos_embed" && third_is_one,
        Arch::Wan21 | Arch::Wan22 => {
            (name.contains(".modulation") && third_is_one) || name == "img_emb.emb_pos"
        }
        _ => false,
    };
    if three && kept.len() < 3 {
        let mut out = vec![1; 3 - kept.len().min(3)];
        out.extend_from_slice(kept);
        return out;
    }
    kept.to_vec()
}

#[cfg(test)]
mod tests;
