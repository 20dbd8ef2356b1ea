//! The families up to Flux.1: SD1.x, SD2.x, SDXL, the SDXL refiner, SD3/SD3.5, Flux.1 dev and
//! schnell (their text-encoder conversions live in `layout::clip`).

use super::*;
use crate::family::lora_names as lora;
use crate::family::merge_nodes as nodes;
use crate::synthetic::models as m;

pub(super) const SD15: Family = Family {
    arch: Arch::Sd15,
    name: "sd15",
    aliases: &["sd1", "sd1x"],
    title: "Stable Diffusion 1.x",
    comfy_class: "SD15",
    tells: &[
        Key("input_blocks.0.0.weight"),
        NoKey("label_emb.0.0.weight"),
        NO_VIDEO[0],
        NO_VIDEO[1],
        Blocks("input_blocks.", 12),
        Rank("input_blocks.1.1.proj_in.weight", 4),
    ],
    params: UNET_PARAMS,
    placed: &[],
    variants: &[variant(
        "sd15",
        "Stable Diffusion 1.5",
        &m::SD15,
        &m::SD15_TINY,
    )],
    prefixes: LDM,
    clip_layout: ClipLayout::Sd15,
    optional_encoders: &[],
    vae: VaeKind::Sd,
    prediction: Prediction::Eps,
    modelspec: None,
    diffusers: true,
    block_prefixes: &[nodes::SD1],
    lora: lora::UNET,
    release: None,
};

pub(super) const SD2: Family = Family {
    arch: Arch::Sd2,
    name: "sd2",
    aliases: &["sd20", "sd21", "sd21-768v"],
    title: "Stable Diffusion 2.x",
    comfy_class: "SD20",
    tells: &[
        Key("input_blocks.0.0.weight"),
        NoKey("label_emb.0.0.weight"),
        NO_VIDEO[0],
        NO_VIDEO[1],
        Blocks("input_blocks.", 12),
        Rank("input_blocks.1.1.proj_in.weight", 2),
    ],
    params: UNET_PARAMS,
    placed: &[],
    variants: &[variant(
        "sd2",
        "Stable Diffusion 2.1",
        &m::SD2,
        &m::SD2_TINY,
    )],
    prefixes: LDM,
    clip_layout: ClipLayout::Sd2,
    optional_encoders: &[],
    vae: VaeKind::Sd,
    prediction: Prediction::Eps,
    modelspec: None,
    diffusers: true,
    block_prefixes: &[nodes::SD1],
    lora: lora::UNET,
    release: None,
};

pub(super) const SDXL: Family = Family {
    arch: Arch::Sdxl,
    name: "sdxl",
    aliases: &["sdxl-base"],
    title: "Stable Diffusion XL",
    comfy_class: "SDXL",
    tells: &[
        Key("input_blocks.0.0.weight"),
        Key("label_emb.0.0.weight"),
        NO_VIDEO[0],
        NO_VIDEO[1],
        Blocks("input_blocks.", 9),
    ],
    params: UNET_PARAMS,
    placed: &[],
    variants: &[variant("sdxl", "SDXL 1.0 base", &m::SDXL, &m::SDXL_TINY)],
    prefixes: LDM,
    clip_layout: ClipLayout::Sdxl,
    optional_encoders: &[],
    vae: VaeKind::Sd,
    prediction: Prediction::Eps,
    modelspec: Some("stable-diffusion-xl-v1-base"),
    diffusers: true,
    block_prefixes: &[nodes::SDXL],
    lora: lora::UNET,
    release: None,
};

pub(super) const SDXL_REFINER: Family = Family {
    arch: Arch::SdxlRefiner,
    name: "sdxl-refiner",
    aliases: &["refiner"],
    title: "SDXL refiner",
    comfy_class: "SDXLRefiner",
    tells: &[
        Key("input_blocks.0.0.weight"),
        Key("label_emb.0.0.weight"),
        NO_VIDEO[0],
        NO_VIDEO[1],
        Blocks("input_blocks.", 12),
        NoPrefix("input_blocks.1.1."),
    ],
    params: UNET_PARAMS,
    placed: &[],
    variants: &[variant(
        "sdxl-refiner",
        "SDXL 1.0 refiner",
        &m::SDXL_REFINER,
        &m::SDXL_REFINER_TINY,
    )],
    prefixes: LDM,
    clip_layout: ClipLayout::SdxlRefiner,
    optional_encoders: &[],
    vae: VaeKind::Sd,
    prediction: Prediction::Eps,
    modelspec: Some("stable-diffusion-xl-v1-refiner"),
    diffusers: true,
    block_prefixes: &[],
    lora: lora::UNET,
    release: None,
};

pub(super) const SD3: Family = Family {
    arch: Arch::Sd3,
    name: "sd3",
    aliases: &["sd35"],
    title: "Stable Diffusion 3 / 3.5",
    comfy_class: "SD3",
    tells: &[Key("joint_blocks.0.context_block.attn.qkv.weight")],
    params: &[
        dim("hidden_size", "x_embedder.proj.weight", 0, 1),
        blocks("depth", "joint_blocks."),
        dim("pos_embed_max_size", "pos_embed", 1, 1),
        present("qk_norm", "joint_blocks.0.context_block.attn.ln_q.weight"),
        present(
            "x_block_self_attn",
            "joint_blocks.0.x_block.attn2.qkv.weight",
        ),
    ],
    placed: &[],
    variants: &[
        variant("sd3-medium", "SD3 Medium", &m::SD3_MEDIUM, &m::SD3_TINY),
        variant(
            "sd35-medium",
            "SD3.5 Medium (MMDiT-X)",
            &m::SD35_MEDIUM,
            &m::SD35_MEDIUM_TINY,
        ),
        variant(
            "sd35-large",
            "SD3.5 Large (and Large Turbo)",
            &m::SD35_LARGE,
            &m::SD35_LARGE_TINY,
        ),
    ],
    // SD3 overrides only the text-encoder prefix; its VAE keeps `first_stage_model.`.
    prefixes: Prefixes {
        clip: "text_encoders.",
        ..LDM
    },
    clip_layout: ClipLayout::Prefix,
    optional_encoders: &["t5xxl"],
    vae: VaeKind::Flux,
    prediction: Prediction::Flow,
    modelspec: Some("stable-diffusion-v3-medium"),
    diffusers: true,
    block_prefixes: &[nodes::SD3_2B, nodes::SD35_LARGE],
    lora: lora::SD3,
    release: None,
};

pub(super) const FLUX: Family = Family {
    arch: Arch::Flux,
    name: "flux",
    aliases: &["flux1"],
    title: "Flux.1 dev (and Kontext, Fill)",
    comfy_class: "Flux, FluxInpaint",
    tells: &[
        FLUX_KEY_NORM,
        Key("img_in.weight"),
        NoPrefix("distilled_guidance_layer."),
        NoKey("double_stream_modulation_img.lin.weight"),
        Key("guidance_in.in_layer.weight"),
    ],
    params: FLUX_PARAMS,
    placed: &[],
    variants: &[
        variant("flux-dev", "Flux.1 dev", &m::FLUX, &m::FLUX_TINY_SPEC),
        Variant {
            aliases: &["kontext"],
            ..variant(
                "flux-kontext",
                "Flux.1 Kontext dev (the keys and shapes of Flux.1 dev)",
                &m::FLUX,
                &m::FLUX_TINY_SPEC,
            )
        },
        Variant {
            aliases: &["flux-inpaint"],
            ..variant(
                "flux-fill",
                "Flux.1 Fill dev (96 input channels)",
                &m::FLUX_FILL,
                &m::FLUX_FILL_TINY,
            )
        },
    ],
    prefixes: TE_VAE,
    clip_layout: ClipLayout::Prefix,
    optional_encoders: &[],
    vae: VaeKind::Flux,
    prediction: Prediction::Flow,
    modelspec: None,
    diffusers: true,
    block_prefixes: &[nodes::FLUX1],
    lora: lora::FLUX1,
    release: None,
};

pub(super) const FLUX_SCHNELL: Family = Family {
    arch: Arch::FluxSchnell,
    name: "flux-schnell",
    aliases: &["schnell"],
    title: "Flux.1 schnell",
    comfy_class: "FluxSchnell",
    tells: &[
        FLUX_KEY_NORM,
        Key("img_in.weight"),
        NoPrefix("distilled_guidance_layer."),
        NoKey("double_stream_modulation_img.lin.weight"),
        NoKey("guidance_in.in_layer.weight"),
    ],
    params: FLUX_PARAMS,
    placed: &[],
    variants: &[variant(
        "flux-schnell",
        "Flux.1 schnell",
        &m::FLUX_SCHNELL,
        &m::FLUX_SCHNELL_TINY,
    )],
    prefixes: TE_VAE,
    clip_layout: ClipLayout::Prefix,
    optional_encoders: &[],
    vae: VaeKind::Flux,
    prediction: Prediction::Flow,
    modelspec: None,
    diffusers: true,
    block_prefixes: &[nodes::FLUX1],
    lora: lora::FLUX1,
    release: None,
};
