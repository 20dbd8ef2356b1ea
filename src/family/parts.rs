//! The other components of a family: which autoencoder a VAE's keys are (as `comfy/sd.py` tells
//! them), which text encoders a clip component holds, and the checks that refuse a component of
//! one family saved with another's denoiser.

use std::collections::{BTreeMap, BTreeSet};

use super::{ClipLayout, Family};
use crate::error::{Error, Result};
use crate::model::TensorInfo;

/// The autoencoders ComfyUI builds, told apart by their keys (`comfy/sd.py`, `VAE.__init__`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum VaeKind {
    /// The SD1.x/SD2.x/SDXL `AutoencoderKL`: 4 latent channels, with `quant_conv`.
    Sd,
    /// The SD3/Flux autoencoder: 16 latent channels, no `quant_conv` (also Chroma, HiDream,
    /// Lumina 2, Z-Image).
    Flux,
    /// Wan 2.1's causal 3-D VAE (also Qwen-Image's): `decoder.middle.0.residual.0.gamma`.
    Wan21,
    /// Wan 2.2's 48-channel VAE: Wan 2.1's tell plus nested `decoder.upsamples.N.upsamples.`.
    Wan22,
    /// Flux 2's autoencoder: 32 latent channels, quant convs and a latent batch norm (`bn.`).
    Flux2,
    /// HunyuanVideo's causal 3-D `AutoencoderKL` (`decoder.conv_in.conv.weight`).
    HunyuanVideo,
    /// HunyuanVideo 1.5's VAE: causal 3-D convolutions with RMS norms (`decoder.norm_out.gamma`).
    HunyuanVideo15,
    /// LTX-Video's causal video autoencoder (`decoder.up_blocks.0.res_blocks.0.conv1.conv.weight`).
    Ltx,
    /// Qwen-Image 2.1's image VAE: Wan 2.2's layout with a temporal kernel of 1
    /// (`decoder.head.2.weight` 1 frame deep), RGBA, 64 latent channels.
    QwenImage21,
}

impl VaeKind {
    /// What it is, for messages.
    pub fn title(self) -> &'static str {
        match self {
            VaeKind::Sd => "the SD/SDXL autoencoder (4 latent channels)",
            VaeKind::Flux => "the SD3/Flux autoencoder (16 latent channels)",
            VaeKind::Wan21 => "the Wan 2.1 video VAE",
            VaeKind::Wan22 => "the Wan 2.2 video VAE (48 latent channels)",
            VaeKind::Flux2 => "the Flux 2 autoencoder (32 latent channels)",
            VaeKind::HunyuanVideo => "the HunyuanVideo video VAE",
            VaeKind::HunyuanVideo15 => "the HunyuanVideo 1.5 video VAE",
            VaeKind::Ltx => "the LTX-Video video VAE",
            VaeKind::QwenImage21 => "the Qwen-Image 2.1 VAE (RGBA, 64 latent channels)",
        }
    }

    /// The key that told it.
    fn tell(self) -> &'static str {
        match self {
            VaeKind::Sd => "post_quant_conv.weight",
            VaeKind::Flux => "decoder.conv_in.weight",
            VaeKind::Wan21 => "decoder.middle.0.residual.0.gamma",
            VaeKind::Wan22 => "decoder.upsamples.0.upsamples.0.residual.2.weight",
            VaeKind::Flux2 => "bn.running_mean",
            VaeKind::HunyuanVideo => "decoder.conv_in.conv.weight",
            VaeKind::HunyuanVideo15 => "decoder.norm_out.gamma",
            VaeKind::Ltx => "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight",
            VaeKind::QwenImage21 => "decoder.head.2.weight",
        }
    }
}

/// The autoencoder a VAE's in-memory keys are, if one this tool knows.
pub fn vae_kind(vae: &BTreeMap<String, TensorInfo>) -> Option<VaeKind> {
    let has = |k: &str| vae.contains_key(k);
    if has("decoder.middle.0.residual.0.gamma") {
        if !has("decoder.upsamples.0.upsamples.0.residual.2.weight") {
            return Some(VaeKind::Wan21);
        }
        // `comfy/sd.py`: a 5-D head one frame deep is Qwen-Image 2.1's image VAE.
        let one_frame = vae
            .get("decoder.head.2.weight")
            .is_some_and(|t| t.shape.len() == 5 && t.shape[2] == 1);
        return Some(if one_frame {
            VaeKind::QwenImage21
        } else {
            VaeKind::Wan22
        });
    }
    if has("decoder.up_blocks.0.res_blocks.0.conv1.conv.weight") {
        return Some(VaeKind::Ltx);
    }
    if has("decoder.conv_in.conv.weight") {
        return Some(if has("decoder.norm_out.gamma") {
            VaeKind::HunyuanVideo15
        } else {
            VaeKind::HunyuanVideo
        });
    }
    if has("decoder.conv_in.weight") {
        if has("bn.running_mean") {
            return Some(VaeKind::Flux2);
        }
        if has("post_quant_conv.weight") || has("decoder.post_quant_conv.weight") {
            return Some(VaeKind::Sd);
        }
        return Some(VaeKind::Flux);
    }
    None
}

/// The text encoders a clip component holds: the first segment of every key with one
/// (`umt5xxl` of `umt5xxl.transformer.…`), and the top-level keys (`spiece_model`).
fn clip_names(clip: &BTreeMap<String, TensorInfo>) -> BTreeSet<&str> {
    clip.keys()
        .map(|k| k.split_once('.').map_or(k.as_str(), |(first, _)| first))
        .collect()
}

/// The families that use text encoder `name`.
fn users_of(name: &str) -> Vec<&'static str> {
    Family::all()
        .iter()
        .filter(|f| f.encoders().contains(&name))
        .map(|f| f.name)
        .collect()
}

/// Refuses a clip component that lacks the family's text encoders, or (for families laid out by
/// prefix) holds another family's.
///
/// # Errors
/// [`Error::MissingComponent`] naming the missing encoder; [`Error::FamilyMismatch`] naming the
/// foreign encoder and the families it belongs to.
pub(crate) fn check_clip(family: &Family, clip: &BTreeMap<String, TensorInfo>) -> Result<()> {
    // The release's clip: only the projection, its text encoder shipped apart.
    if family
        .release
        .is_some_and(|r| r.is_release_clip(clip.keys()))
    {
        return Ok(());
    }
    let found = clip_names(clip);
    let required: Vec<&str> = family
        .default_variant()
        .encoder_names()
        .into_iter()
        .filter(|e| !family.optional_encoders.contains(e))
        .collect();
    // A family whose variants use different encoders (Flux 2) needs one variant's set; a
    // release without a text encoder (LTX-2's) is laid out apart and places no clip here.
    let satisfied = family.variants.iter().any(|v| {
        let names = v.encoder_names();
        !names.is_empty()
            && names
                .iter()
                .filter(|e| !family.optional_encoders.contains(e))
                .all(|e| found.contains(e))
    });
    if !satisfied {
        let missing = required
            .iter()
            .find(|e| !found.contains(*e))
            .copied()
            .unwrap_or_default();
        return Err(Error::MissingComponent {
            component: "clip",
            hint: format!(
                "{} needs text encoder `{missing}` (keys `{missing}.…`) in the clip component; found: {}",
                family.arch,
                if found.is_empty() {
                    "nothing".to_string()
                } else {
                    found.iter().copied().collect::<Vec<_>>().join(", ")
                }
            ),
        });
    }
    // The layers the text-encoder model holds beside its encoders (LTX-2's projection): ComfyUI's
    // save always writes them, and the encoder is of no use without them.
    for key in family.projections() {
        if !found.contains(key) {
            return Err(Error::MissingComponent {
                component: "clip",
                hint: format!(
                    "{} needs `{key}.weight` beside its text encoder in the clip component \
                     (ComfyUI's text-encoder model holds it; LTX-2 releases keep it in the \
                     checkpoint): give the clip component ComfyUI's CLIPSave wrote",
                    family.arch
                ),
            });
        }
    }
    if family.clip_layout != ClipLayout::Prefix {
        return Ok(());
    }
    let own = family.encoders();
    let top_level = family.clip_top_level();
    for name in found {
        let allowed = own.contains(&name)
            || family.optional_encoders.contains(&name)
            || top_level.contains(&name);
        let users = users_of(name);
        if !allowed && !users.is_empty() {
            return Err(Error::FamilyMismatch {
                reason: format!(
                    "the clip component holds `{name}.…`, the text encoder of {}, which {} does \
                     not use (its text encoders: {}); give the text encoders of the same model",
                    users.join(", "),
                    family.name,
                    own.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// Refuses an autoencoder of a kind the family does not use.
///
/// # Errors
/// [`Error::FamilyMismatch`] naming both kinds and the key that told the given one.
pub(crate) fn check_vae(family: &Family, vae: &BTreeMap<String, TensorInfo>) -> Result<()> {
    match vae_kind(vae) {
        Some(kind) if kind != family.vae => Err(Error::FamilyMismatch {
            reason: format!(
                "the vae component is {} (`{}`), but {} uses {}; give the autoencoder of the \
                 same model",
                kind.title(),
                kind.tell(),
                family.name,
                family.vae.title()
            ),
        }),
        _ => Ok(()),
    }
}
