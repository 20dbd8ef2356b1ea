//! The families: one entry per model class, in [`Arch::ALL`] order.
//!
//! Facts from ComfyUI: detection tells and derived values from `comfy/model_detection.py`
//! (`detect_unet_config`), prefixes from `comfy/supported_models.py` (`text_encoder_key_prefix`,
//! `vae_key_prefix`, `process_*_state_dict_for_saving`), autoencoders from `comfy/sd.py`. The
//! fixtures in `tests/fixtures/layouts/` (ComfyUI a125cd84, 2025-10-12) prove the entries they
//! cover; the others were read at ComfyUI e3c35527 (`supported_models.py`), 0b61ce5b
//! (`model_detection.py`), 033046cc (`sd.py`: VAE classes, `detect_te_model`), a125cd84 (the
//! HunyuanVideo, LTX-Video and Wan model and VAE modules) and the newest `text_encoders/llama.py`
//! and `ldm/flux`/`ldm/lumina` the search tool served.

mod classic;
mod later;

use super::parts::VaeKind;
use super::Tell::*;
use super::{ClipLayout, Derive, Family, LoraNames, Param, Prefixes, Tell, Variant};
use crate::model::{Arch, Prediction};

const LDM: Prefixes = Prefixes {
    model: "model.diffusion_model.",
    clip: "cond_stage_model.",
    vae: "first_stage_model.",
};

/// Families laid out like SD3 and Flux: `text_encoders.` and `vae.`.
const TE_VAE: Prefixes = Prefixes {
    model: "model.diffusion_model.",
    clip: "text_encoders.",
    vae: "vae.",
};

/// HunyuanVideo's save path prefixes the denoiser with `model.model.`
/// (`process_unet_state_dict_for_saving`).
const HUNYUAN: Prefixes = Prefixes {
    model: "model.model.",
    ..TE_VAE
};

const HUNYUAN_PARAMS: &[Param] = &[
    dim("hidden_size", "img_in.proj.weight", 0, 1),
    dim("in_channels", "img_in.proj.weight", 1, 1),
    blocks("depth", "double_blocks."),
    blocks("depth_single_blocks", "single_blocks."),
    present("guidance_embed", "guidance_in.in_layer.weight"),
];

const NO_VIDEO: [Tell; 2] = [NoContains(".time_stack."), NoContains("time_mix_blocks")];

const fn variant(
    name: &'static str,
    title: &'static str,
    full: &'static crate::synthetic::spec::Spec,
    tiny: &'static crate::synthetic::spec::Spec,
) -> Variant {
    Variant {
        name,
        aliases: &[],
        title,
        full,
        tiny,
    }
}

const fn dim(name: &'static str, key: &'static str, axis: usize, div: usize) -> Param {
    Param {
        name,
        from: Derive::Dim { key, axis, div },
    }
}

const fn blocks(name: &'static str, prefix: &'static str) -> Param {
    Param {
        name,
        from: Derive::Blocks(prefix),
    }
}

const fn present(name: &'static str, key: &'static str) -> Param {
    Param {
        name,
        from: Derive::Present(key),
    }
}

/// A family laid out by prefix with no metadata of its own (everything after SDXL but SD3).
#[allow(clippy::too_many_arguments)]
const fn dit(
    arch: Arch,
    name: &'static str,
    aliases: &'static [&'static str],
    title: &'static str,
    comfy_class: &'static str,
    tells: &'static [Tell],
    params: &'static [Param],
    placed: &'static [&'static str],
    variants: &'static [Variant],
    vae: VaeKind,
    lora: LoraNames,
) -> Family {
    Family {
        arch,
        name,
        aliases,
        title,
        comfy_class,
        tells,
        params,
        placed,
        variants,
        prefixes: TE_VAE,
        clip_layout: ClipLayout::Prefix,
        optional_encoders: &[],
        vae,
        prediction: Prediction::Flow,
        modelspec: None,
        diffusers: false,
        block_prefixes: &[],
        lora,
        release: None,
    }
}

const UNET_PARAMS: &[Param] = &[
    dim("model_channels", "input_blocks.0.0.weight", 0, 1),
    dim("in_channels", "input_blocks.0.0.weight", 1, 1),
    blocks("input_blocks", "input_blocks."),
];

const FLUX_KEY_NORM: Tell = Either(&[
    "double_blocks.0.img_attn.norm.key_norm.scale",
    "double_blocks.0.img_attn.norm.key_norm.weight",
]);

const FLUX_PARAMS: &[Param] = &[
    dim("hidden_size", "img_in.weight", 0, 1),
    dim("in_channels", "img_in.weight", 1, 4),
    blocks("depth", "double_blocks."),
    blocks("depth_single_blocks", "single_blocks."),
];

const WAN_PARAMS: &[Param] = &[
    dim("dim", "head.modulation", 2, 1),
    blocks("num_layers", "blocks."),
    dim("in_dim", "patch_embedding.weight", 1, 1),
    dim("out_dim", "head.head.weight", 0, 4),
    dim("ffn_dim", "blocks.0.ffn.0.weight", 0, 1),
    present("img_emb", "img_emb.proj.0.bias"),
];
/// Every family, in [`Arch::ALL`] order.
pub(in crate::family) static FAMILIES: [Family; 20] = [
    classic::SD15,
    classic::SD2,
    classic::SDXL,
    classic::SDXL_REFINER,
    classic::SD3,
    classic::FLUX,
    classic::FLUX_SCHNELL,
    later::WAN21,
    later::WAN22,
    later::QWEN_IMAGE,
    later::HIDREAM,
    later::CHROMA,
    later::LUMINA2,
    later::FLUX2,
    later::Z_IMAGE,
    later::HUNYUAN_VIDEO,
    later::HUNYUAN_VIDEO_15,
    later::LTXV,
    later::LTX2,
    later::QWEN_IMAGE21,
];
