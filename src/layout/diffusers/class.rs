//! The diffusers/transformers model classes this crate maps, and how each is told from its keys.

use std::collections::BTreeMap;

use super::text;
use crate::error::{Error, Result};
use crate::model::{ComponentKind, TensorInfo};

/// The diffusers/transformers model classes, recognised from keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelClass {
    /// diffusers `UNet2DConditionModel` (SD1, SD2, SDXL).
    Unet,
    /// diffusers `AutoencoderKL`.
    Vae,
    /// transformers `CLIPTextModel`.
    ClipText,
    /// transformers `CLIPTextModelWithProjection`.
    ClipTextWithProjection,
    /// transformers `T5EncoderModel`.
    T5Encoder,
    /// transformers `UMT5EncoderModel` (Wan's umT5-XXL: T5's names, a relative attention bias
    /// in every block).
    Umt5Encoder,
    /// diffusers `SD3Transformer2DModel`.
    Sd3Transformer,
    /// diffusers `FluxTransformer2DModel`.
    FluxTransformer,
    /// diffusers `WanTransformer3DModel` (Wan 2.1 and 2.2).
    WanTransformer,
    /// diffusers `AutoencoderKLWan` (Wan 2.1's VAE).
    WanVae,
    /// diffusers `AutoencoderKLQwenImage` (Qwen-Image's VAE: Wan 2.1's, with its names).
    QwenImageVae,
    /// diffusers `QwenImageTransformer2DModel`.
    QwenImageTransformer,
    /// diffusers `HiDreamImageTransformer2DModel`.
    HiDreamTransformer,
    /// diffusers `LTXVideoTransformer3DModel`.
    LtxTransformer,
    /// diffusers `LTX2VideoTransformer3DModel` (LTX-2's audio-video transformer, without the
    /// text connectors diffusers keeps in a model of their own).
    Ltx2Transformer,
    /// diffusers `HunyuanVideoTransformer3DModel`.
    HunyuanVideoTransformer,
    /// diffusers `Lumina2Transformer2DModel`.
    Lumina2Transformer,
    /// diffusers `ChromaTransformer2DModel`.
    ChromaTransformer,
    /// diffusers `Flux2Transformer2DModel`.
    Flux2Transformer,
    /// diffusers `ZImageTransformer2DModel`.
    ZImageTransformer,
}

impl ModelClass {
    /// The Python class name (`_class_name` / `architectures` in its config).
    pub fn name(self) -> &'static str {
        match self {
            ModelClass::Unet => "UNet2DConditionModel",
            ModelClass::Vae => "AutoencoderKL",
            ModelClass::ClipText => "CLIPTextModel",
            ModelClass::ClipTextWithProjection => "CLIPTextModelWithProjection",
            ModelClass::T5Encoder => "T5EncoderModel",
            ModelClass::Umt5Encoder => "UMT5EncoderModel",
            ModelClass::Sd3Transformer => "SD3Transformer2DModel",
            ModelClass::FluxTransformer => "FluxTransformer2DModel",
            ModelClass::WanTransformer => "WanTransformer3DModel",
            ModelClass::WanVae => "AutoencoderKLWan",
            ModelClass::QwenImageVae => "AutoencoderKLQwenImage",
            ModelClass::QwenImageTransformer => "QwenImageTransformer2DModel",
            ModelClass::HiDreamTransformer => "HiDreamImageTransformer2DModel",
            ModelClass::LtxTransformer => "LTXVideoTransformer3DModel",
            ModelClass::Ltx2Transformer => "LTX2VideoTransformer3DModel",
            ModelClass::HunyuanVideoTransformer => "HunyuanVideoTransformer3DModel",
            ModelClass::Lumina2Transformer => "Lumina2Transformer2DModel",
            ModelClass::ChromaTransformer => "ChromaTransformer2DModel",
            ModelClass::Flux2Transformer => "Flux2Transformer2DModel",
            ModelClass::ZImageTransformer => "ZImageTransformer2DModel",
        }
    }

    /// The Python library that defines it, as `model_index.json` names it.
    pub fn library(self) -> &'static str {
        match self {
            ModelClass::ClipText
            | ModelClass::ClipTextWithProjection
            | ModelClass::T5Encoder
            | ModelClass::Umt5Encoder => "transformers",
            _ => "diffusers",
        }
    }

    /// The ComfyUI component its tensors belong to.
    pub fn kind(self) -> ComponentKind {
        match self {
            ModelClass::Vae | ModelClass::WanVae | ModelClass::QwenImageVae => ComponentKind::Vae,
            ModelClass::ClipText
            | ModelClass::ClipTextWithProjection
            | ModelClass::T5Encoder
            | ModelClass::Umt5Encoder => ComponentKind::Clip,
            _ => ComponentKind::Model,
        }
    }

    /// The weights file `save_pretrained` writes in its folder (unsharded).
    pub fn weights_file(self) -> &'static str {
        match self.library() {
            "transformers" => "model.safetensors",
            _ => "diffusion_pytorch_model.safetensors",
        }
    }
}

/// What tells each class, for messages.
const TELLS: &str = "UNet2DConditionModel (`conv_in.weight`, `down_blocks.…`), AutoencoderKL \
    (`encoder.conv_in.weight`), AutoencoderKLWan (`decoder.mid_block.resnets.0.norm1.gamma`), \
    CLIPTextModel[WithProjection] (`text_model.embeddings.token_embedding.weight`), \
    T5EncoderModel / UMT5EncoderModel (`shared.weight`, `encoder.block.…`), the transformers of \
    SD3 (`pos_embed.proj.weight`), Flux (`x_embedder.weight`, `transformer_blocks.…`), Flux 2 \
    (`double_stream_modulation_img.linear.weight`), Chroma \
    (`distilled_guidance_layer.in_proj.weight`), Wan (`condition_embedder.time_embedder.…`), \
    Qwen-Image (`txt_norm.weight`, `img_in.weight`), HiDream \
    (`caption_projection.0.linear.weight`), LTX-Video (`time_embed.emb.…`, `proj_in.weight`), \
    LTX-2 (LTX-Video's and `audio_proj_in.weight`), \
    HunyuanVideo (`context_embedder.token_refiner.…`), Lumina 2 \
    (`time_caption_embed.caption_embedder.0.weight`) or Z-Image (`all_x_embedder.2-1.weight`)";

/// Recognises the model class of one model's diffusers keys.
///
/// # Errors
/// [`Error::InvalidInput`] when the keys fit no class, saying what was found and what each class
/// is recognised by (with a hint when they are single-file or ComfyUI names instead).
pub fn identify(keys: &BTreeMap<String, TensorInfo>) -> Result<ModelClass> {
    let has = |k: &str| keys.contains_key(k);
    let any = |p: &str| keys.keys().any(|k| k.starts_with(p));
    use ModelClass::*;
    let class = if has("condition_embedder.time_embedder.linear_1.weight") {
        Some(WanTransformer)
    } else if has("double_stream_modulation_img.linear.weight") {
        Some(Flux2Transformer)
    } else if has("distilled_guidance_layer.in_proj.weight") && has("x_embedder.weight") {
        Some(ChromaTransformer)
    } else if has("x_embedder.weight") && any("transformer_blocks.") {
        Some(FluxTransformer)
    } else if any("context_embedder.token_refiner.") {
        Some(HunyuanVideoTransformer)
    } else if has("time_embed.emb.timestep_embedder.linear_1.weight")
        && has("proj_in.weight")
        && has("audio_proj_in.weight")
    {
        Some(Ltx2Transformer)
    } else if has("time_embed.emb.timestep_embedder.linear_1.weight") && has("proj_in.weight") {
        Some(LtxTransformer)
    } else if has("time_caption_embed.caption_embedder.0.weight") {
        Some(Lumina2Transformer)
    } else if has("all_x_embedder.2-1.weight") {
        Some(ZImageTransformer)
    } else if has("txt_norm.weight") && has("img_in.weight") {
        Some(QwenImageTransformer)
    } else if has("caption_projection.0.linear.weight") && any("double_stream_blocks.") {
        Some(HiDreamTransformer)
    } else if has("pos_embed.proj.weight") && any("transformer_blocks.") {
        Some(Sd3Transformer)
    } else if has("conv_in.weight") && any("down_blocks.") {
        Some(Unet)
    } else if has("decoder.mid_block.resnets.0.norm1.gamma") {
        Some(WanVae)
    } else if has("encoder.conv_in.weight") || has("decoder.conv_in.weight") {
        Some(Vae)
    } else if has("text_model.embeddings.token_embedding.weight") {
        Some(match has(text::PROJECTION) {
            true => ClipTextWithProjection,
            false => ClipText,
        })
    } else if has("shared.weight") || any("encoder.block.") {
        // umT5 has a relative attention bias in every block, T5 only in the first.
        Some(
            match has("encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight") {
                true => Umt5Encoder,
                false => T5Encoder,
            },
        )
    } else {
        None
    };
    if let Some(c) = class {
        return Ok(c);
    }
    let first: Vec<&str> = keys.keys().take(3).map(String::as_str).collect();
    let hint = if [
        "model.diffusion_model.",
        "first_stage_model.",
        "cond_stage_model.",
        "conditioner.",
        "text_encoders.",
    ]
    .iter()
    .any(|p| any(p))
    {
        " These are single-file checkpoint names; split the file into components first."
    } else if [
        "input_blocks.",
        "joint_blocks.",
        "double_blocks.",
        "encoder.down.",
        "clip_l.",
        "clip_g.",
        "clip_h.",
        "t5xxl.",
    ]
    .iter()
    .any(|p| any(p))
    {
        " These are ComfyUI names; use from_comfy for them."
    } else {
        ""
    };
    Err(Error::InvalidInput(format!(
        "cannot tell which diffusers/transformers model {} tensor(s) belong to (first: {}); \
         expected {TELLS}.{hint}",
        keys.len(),
        if first.is_empty() {
            "none".to_string()
        } else {
            format!("`{}`", first.join("`, `"))
        },
    )))
}
