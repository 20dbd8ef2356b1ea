//! Which layers a save quantizes: the denoiser's linear weights, less the layers each
//! architecture keeps in high precision, changed by include and exclude patterns; and how merged
//! quantized tensors are requantized.
//!
//! # The default rule
//! A candidate is a 2-D floating-point `….weight` (a linear layer: ComfyUI's mixed-precision
//! operations quantize `Linear` layers, never convolutions, norms or biases) of the denoiser.
//! Of those, the layers the architecture's table ([`high_precision`]) names stay in high
//! precision, as Comfy-Org's quantized releases and the community's conversion tools keep them:
//! the input and output projections, the timestep, text and guidance embeddings, and the
//! modulation (adaLN) linears. Text encoders and the VAE are left as they are unless an include
//! pattern names their layers.

use std::fmt;

use regex::Regex;

use crate::error::{Error, Result};
use crate::model::dtype::{is_float, TensorInfo};
use crate::model::{Arch, ComponentKind};

use super::format::Format;

/// How a merged or baked tensor whose base is quantized is written back in its format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Requantize {
    /// The existing scales (tensor, per-row), the values rounded to the format's grid (round to
    /// nearest even; block scales of mxfp8 and nvfp4 follow the values, as the format defines).
    #[default]
    Existing,
    /// New scales computed from the new values (the reduction stage), as a fresh quantization.
    Fresh,
}

impl std::str::FromStr for Requantize {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "existing" | "keep" => Ok(Requantize::Existing),
            "fresh" | "recalculate" => Ok(Requantize::Fresh),
            _ => Err(Error::InvalidInput(format!(
                "unknown requantization `{s}`: choose existing or fresh"
            ))),
        }
    }
}

impl fmt::Display for Requantize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Requantize::Existing => "existing",
            Requantize::Fresh => "fresh",
        })
    }
}

/// A pattern over one component's in-memory keys (`model:double_blocks\.0\.`, `clip:t5xxl\.`):
/// an unanchored regular expression, matched anywhere in the key.
#[derive(Debug, Clone)]
pub struct LayerPattern {
    /// The component whose keys it matches.
    pub component: ComponentKind,
    /// The expression.
    pub regex: Regex,
}

impl LayerPattern {
    /// Parses `[COMPONENT:]REGEX` (component `model`, `clip` or `vae`; `model` when absent).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an expression that does not compile, saying why.
    pub fn parse(spec: &str) -> Result<LayerPattern> {
        let (component, expr) = match spec.split_once(':') {
            Some(("model", rest)) => (ComponentKind::Model, rest),
            Some(("clip", rest)) => (ComponentKind::Clip, rest),
            Some(("vae", rest)) => (ComponentKind::Vae, rest),
            _ => (ComponentKind::Model, spec),
        };
        let regex = Regex::new(expr).map_err(|e| {
            Error::InvalidInput(format!(
                "the layer pattern `{spec}` is not a regular expression: {e}"
            ))
        })?;
        Ok(LayerPattern { component, regex })
    }

    fn matches(&self, component: ComponentKind, key: &str) -> bool {
        self.component == component && self.regex.is_match(key)
    }
}

/// What a save quantizes, and into which format (see the README's Quantized checkpoints).
#[derive(Debug, Clone)]
pub struct Quantize {
    /// The format written.
    pub format: Format,
    /// Layers quantized although the default rule keeps them (any component's 2-D weights).
    pub include: Vec<LayerPattern>,
    /// Layers kept in high precision although the default rule quantizes them; wins over
    /// `include`.
    pub exclude: Vec<LayerPattern>,
    /// The family whose high-precision layers the default rule keeps when the save's layout
    /// names none (a denoiser saved alone, in the generic layout under its family's prefix).
    pub family: Option<Arch>,
}

impl Quantize {
    /// The denoiser's linear weights in `format`, by the default rule.
    pub fn new(format: Format) -> Quantize {
        Quantize {
            format,
            include: Vec::new(),
            exclude: Vec::new(),
            family: None,
        }
    }

    /// The default rule of `family` where the layout names no architecture (see
    /// [`Quantize::family`]).
    pub fn for_family(mut self, family: Option<Arch>) -> Quantize {
        self.family = family;
        self
    }

    /// Adds an include pattern (`[COMPONENT:]REGEX`).
    ///
    /// # Errors
    /// As [`LayerPattern::parse`].
    pub fn including(mut self, spec: &str) -> Result<Quantize> {
        self.include.push(LayerPattern::parse(spec)?);
        Ok(self)
    }

    /// Adds an exclude pattern (`[COMPONENT:]REGEX`).
    ///
    /// # Errors
    /// As [`LayerPattern::parse`].
    pub fn excluding(mut self, spec: &str) -> Result<Quantize> {
        self.exclude.push(LayerPattern::parse(spec)?);
        Ok(self)
    }

    /// Whether component `kind`'s tensor `key` of an `arch` model is quantized.
    ///
    /// # Errors
    /// [`Error::Quantized`] when an include pattern names a tensor that cannot be quantized (not
    /// a 2-D floating-point `….weight`): the pattern asks for the impossible.
    pub fn selects(
        &self,
        arch: Option<Arch>,
        kind: ComponentKind,
        key: &str,
        info: &TensorInfo,
    ) -> Result<bool> {
        if self.exclude.iter().any(|p| p.matches(kind, key)) {
            return Ok(false);
        }
        let candidate = key.ends_with(".weight") && info.shape.len() == 2;
        let float = info.quant.is_some() || is_float(info.dtype);
        if let Some(p) = self.include.iter().find(|p| p.matches(kind, key)) {
            if !candidate || !float {
                let layer = key.strip_suffix(".weight").unwrap_or(key);
                return Err(Error::Quantized {
                    layer: layer.to_string(),
                    reason: format!(
                        "--quantize-include `{}` names `{key}` ({} {:?}), but only 2-D \
                         floating-point `.weight` tensors (linear layers) can be quantized; \
                         narrow the pattern",
                        p.regex, info.dtype, info.shape
                    ),
                });
            }
            return Ok(true);
        }
        Ok(kind == ComponentKind::Model
            && candidate
            && float
            && !high_precision(arch.or(self.family))
                .iter()
                .any(|k| key.contains(k)))
    }
}

/// Key fragments of the denoiser layers an architecture keeps in high precision (see the
/// README's Quantized checkpoints); architectures without an entry, and the generic layout,
/// keep the union of the usual names.
pub fn high_precision(arch: Option<Arch>) -> &'static [&'static str] {
    match arch {
        Some(Arch::Sd15 | Arch::Sd2 | Arch::Sdxl | Arch::SdxlRefiner) => {
            &["time_embed.", "label_emb."]
        }
        Some(Arch::Sd3) => &[
            "x_embedder.",
            "context_embedder.",
            "t_embedder.",
            "y_embedder.",
            "final_layer.",
            "adaLN_modulation.",
        ],
        Some(Arch::Flux | Arch::FluxSchnell | Arch::Chroma) => &[
            "img_in.",
            "txt_in.",
            "time_in.",
            "vector_in.",
            "guidance_in.",
            "final_layer.",
            "_mod.",
            ".modulation.",
            "distilled_guidance_layer.",
        ],
        Some(Arch::Flux2) => &[
            "img_in.",
            "txt_in.",
            "time_in.",
            "guidance_in.",
            "final_layer.",
            "_modulation",
        ],
        Some(Arch::Wan21 | Arch::Wan22) => &[
            "patch_embedding.",
            "text_embedding.",
            "time_embedding.",
            "time_projection.",
            "img_emb.",
            "head.",
        ],
        Some(Arch::QwenImage) => &[
            "img_in.",
            "txt_in.",
            "time_text_embed.",
            "norm_out.",
            "proj_out.",
            "img_mod.",
            "txt_mod.",
        ],
        Some(Arch::HiDream) => &[
            "x_embedder.",
            "t_embedder.",
            "p_embedder.",
            "caption_projection.",
            "final_layer.",
            "adaLN_modulation.",
        ],
        Some(Arch::Lumina2 | Arch::ZImage) => &[
            "x_embedder.",
            "t_embedder.",
            "cap_embedder.",
            "final_layer.",
            "adaLN_modulation.",
        ],
        Some(Arch::HunyuanVideo | Arch::HunyuanVideo15) => &[
            "img_in.",
            "txt_in.",
            "time_in.",
            "vector_in.",
            "guidance_in.",
            "byt5_in.",
            "vision_in.",
            "cond_type_embedding.",
            "final_layer.",
            "_mod.",
            ".modulation.",
        ],
        // LTX-2's audio and audio-video counterparts contain these fragments
        // (`audio_patchify_proj.`, `av_ca_…_adaln_single.`, `audio_proj_out.`).
        Some(Arch::Ltxv | Arch::Ltx2) => &[
            "patchify_proj.",
            "adaln_single.",
            "caption_projection.",
            "proj_out.",
        ],
        #[allow(unreachable_patterns)]
        _ => &[
            "embed",
            "img_in.",
            "txt_in.",
            "time_in.",
            "guidance_in.",
            "final_layer.",
            "adaLN_modulation.",
            "_mod.",
            ".modulation.",
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dtype;

    fn linear() -> TensorInfo {
        TensorInfo::new(vec![64, 32], Dtype::BF16)
    }

    #[test]
    fn the_default_rule_takes_the_denoisers_linear_weights_but_the_architectures_own() {
        let q = Quantize::new(Format::Nvfp4);
        let m = ComponentKind::Model;
        let flux = Some(Arch::Flux);
        let yes = |k: &str| q.selects(flux, m, k, &linear()).unwrap();
        assert!(yes("double_blocks.0.img_attn.qkv.weight"));
        assert!(yes("single_blocks.3.linear1.weight"));
        for kept in [
            "img_in.weight",
            "txt_in.weight",
            "time_in.in_layer.weight",
            "final_layer.linear.weight",
            "double_blocks.0.img_mod.lin.weight",
            "single_blocks.0.modulation.lin.weight",
        ] {
            assert!(!yes(kept), "{kept}");
        }
        // Biases, convolutions, norms and other components are never candidates by default.
        assert!(!q
            .selects(flux, m, "double_blocks.0.img_attn.qkv.bias", &linear())
            .unwrap());
        let conv = TensorInfo::new(vec![8, 4, 3, 3], Dtype::BF16);
        assert!(!q.selects(flux, m, "x.weight", &conv).unwrap());
        let clip = ComponentKind::Clip;
        assert!(!q.selects(flux, clip, "t5xxl.q.weight", &linear()).unwrap());
        let ints = TensorInfo::new(vec![4, 4], Dtype::I64);
        assert!(!q.selects(flux, m, "blocks.0.weight", &ints).unwrap());
        let sd = Some(Arch::Sd15);
        assert!(!q.selects(sd, m, "time_embed.0.weight", &linear()).unwrap());
        assert!(q
            .selects(
                sd,
                m,
                "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
                &linear()
            )
            .unwrap());
    }

    #[test]
    fn include_and_exclude_patterns_change_the_rule_and_exclude_wins() {
        let q = Quantize::new(Format::Float8(super::super::Fp8::E4M3))
            .including("img_in")
            .unwrap()
            .including("clip:t5xxl\\..*\\.q\\.")
            .unwrap()
            .excluding("double_blocks\\.0\\.")
            .unwrap()
            .excluding("img_in")
            .unwrap();
        let f = Some(Arch::Flux);
        let (m, c) = (ComponentKind::Model, ComponentKind::Clip);
        assert!(!q.selects(f, m, "img_in.weight", &linear()).unwrap());
        assert!(!q
            .selects(f, m, "double_blocks.0.img_attn.qkv.weight", &linear())
            .unwrap());
        assert!(q
            .selects(f, m, "double_blocks.1.img_attn.qkv.weight", &linear())
            .unwrap());
        assert!(q
            .selects(
                f,
                c,
                "t5xxl.encoder.block.0.layer.0.SelfAttention.q.weight",
                &linear()
            )
            .unwrap());
        assert!(!q
            .selects(
                f,
                c,
                "t5xxl.encoder.block.0.layer.0.SelfAttention.k.weight",
                &linear()
            )
            .unwrap());
    }

    #[test]
    fn an_include_naming_what_cannot_be_quantized_is_refused() {
        let q = Quantize::new(Format::Int8Tensorwise)
            .including("position_ids|norm")
            .unwrap();
        let ints = TensorInfo::new(vec![1, 77], Dtype::I64);
        let e = q
            .selects(None, ComponentKind::Model, "a.norm.weight", &ints)
            .unwrap_err();
        assert!(matches!(e, Error::Quantized { .. }), "{e}");
        assert!(e.to_string().contains("floating-point"), "{e}");
        let e = LayerPattern::parse("clip:(").unwrap_err().to_string();
        assert!(e.contains("regular expression"), "{e}");
        assert_eq!(
            LayerPattern::parse("vae:x").unwrap().component,
            ComponentKind::Vae
        );
        assert_eq!("fresh".parse::<Requantize>().unwrap(), Requantize::Fresh);
        assert!("later".parse::<Requantize>().is_err());
    }
}
