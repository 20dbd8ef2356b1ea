//! Architecture detection from the denoiser's keys and shapes (checkpoint-format.md §10.1).
//!
//! The tells are the reference loader's, preferring ones that survive shrinking every dimension
//! (key presence, block counts, tensor ranks) over exact widths, so shrunk test models are
//! detected like full-size ones.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::model::{Arch, TensorInfo};

/// Detects the architecture from the denoiser's in-memory keys (no prefix).
///
/// # Errors
/// [`Error::UnknownArchitecture`] with what was looked for when no known family matches,
/// including families the reference knows but this crate does not lay out (SVD, unCLIP, Chroma…).
pub fn detect_model(model: &BTreeMap<String, TensorInfo>) -> Result<Arch> {
    let has = |k: &str| model.contains_key(k);
    let unknown = |reason: String| Error::UnknownArchitecture {
        reason,
        known: Arch::known_names(),
    };
    if has("joint_blocks.0.context_block.attn.qkv.weight") {
        return Ok(Arch::Sd3);
    }
    if has("double_blocks.0.img_attn.norm.key_norm.scale") && has("img_in.weight") {
        if model
            .keys()
            .any(|k| k.starts_with("distilled_guidance_layer."))
        {
            return Err(unknown(
                "this is a Chroma model, which is not supported".into(),
            ));
        }
        return Ok(if has("guidance_in.in_layer.weight") {
            Arch::Flux
        } else {
            Arch::FluxSchnell
        });
    }
    if !has("input_blocks.0.0.weight") {
        return Err(unknown(
            "the model has none of `input_blocks.0.0.weight` (UNet), `joint_blocks.0.context_block.attn.qkv.weight` (SD3) or `double_blocks.0.img_attn.norm.key_norm.scale` (Flux)".into(),
        ));
    }
    if model
        .keys()
        .any(|k| k.contains(".time_stack.") || k.contains("time_mix_blocks"))
    {
        return Err(unknown(
            "this is a video UNet (SVD family), which is not supported".into(),
        ));
    }
    let input_blocks = model
        .keys()
        .filter_map(|k| {
            k.strip_prefix("input_blocks.")?
                .split('.')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max()
        .map_or(1, |m| m.saturating_add(1));
    let attn_at_level0 = model.keys().any(|k| k.starts_with("input_blocks.1.1."));
    if has("label_emb.0.0.weight") {
        return match (input_blocks, attn_at_level0) {
            (9, _) => Ok(Arch::Sdxl),
            (12, false) => Ok(Arch::SdxlRefiner),
            _ => Err(unknown(format!(
                "a class-conditioned UNet with {input_blocks} input blocks (unCLIP or another variant), which is not supported"
            ))),
        };
    }
    if input_blocks != 12 {
        return Err(unknown(format!(
            "a UNet with {input_blocks} input blocks and no class embedding matches neither SD1.x nor SD2.x (12 blocks)"
        )));
    }
    match model.get("input_blocks.1.1.proj_in.weight").map(|i| i.shape.len()) {
        Some(4) => Ok(Arch::Sd15),
        Some(2) => Ok(Arch::Sd2),
        _ => Err(unknown(
            "`input_blocks.1.1.proj_in.weight` is missing or neither a 1x1 conv (SD1.x) nor a linear layer (SD2.x)".into(),
        )),
    }
}
