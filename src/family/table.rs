//! The families: one entry per model class, in [`Arch::ALL`] order.
//!
//! Facts from ComfyUI: detection tells and derived values from `comfy/model_detection.py`
//! (`detect_unet_config`), prefixes from `comfy/supported_models.py` (`text_encoder_key_prefix`,
//! `vae_key_prefix`, `process_*_state_dict_for_saving`), autoencoders from `comfy/sd.py`. The
//! fixtures in `tests/fixtures/layouts/` (ComfyUI a125cd84, 2025-10-12) prove the entries they
//! cover; the others were read at ComfyUI e3c35527 (supported_models.py) and 0b61ce5b
//! (model_detection.py), as the search tool served them.

use super::parts::VaeKind;
use super::Tell::*;
use super::{ClipLayout, Derive, Family, Param, Prefixes, Tell, Variant};
use crate::model::{Arch, Prediction};
use crate::synthetic::models as m;

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
        lora_prefixes: &[],
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

pub(super) static FAMILIES: [Family; 18] = [
    Family {
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
        variants: &[variant("sd15", "Stable Diffusion 1.5", &m::SD15, &m::SD15_TINY)],
        prefixes: LDM,
        clip_layout: ClipLayout::Sd15,
        optional_encoders: &[],
        vae: VaeKind::Sd,
        prediction: Prediction::Eps,
        modelspec: None,
        diffusers: true,
        block_prefixes: &[],
        lora_prefixes: &[],
    },
    Family {
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
        variants: &[variant("sd2", "Stable Diffusion 2.1", &m::SD2, &m::SD2_TINY)],
        prefixes: LDM,
        clip_layout: ClipLayout::Sd2,
        optional_encoders: &[],
        vae: VaeKind::Sd,
        prediction: Prediction::Eps,
        modelspec: None,
        diffusers: true,
        block_prefixes: &[],
        lora_prefixes: &[],
    },
    Family {
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
        block_prefixes: &[],
        lora_prefixes: &[],
    },
    Family {
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
        lora_prefixes: &[],
    },
    Family {
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
            present("x_block_self_attn", "joint_blocks.0.x_block.attn2.qkv.weight"),
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
            variant("sd35-large", "SD3.5 Large (and Large Turbo)", &m::SD35_LARGE, &m::SD35_LARGE_TINY),
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
        block_prefixes: &[],
        lora_prefixes: &[],
    },
    Family {
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
        block_prefixes: &[],
        lora_prefixes: &[],
    },
    Family {
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
        block_prefixes: &[],
        lora_prefixes: &[],
    },
    dit(
        Arch::Wan21,
        "wan21",
        &["wan", "wan22-a14b"],
        "Wan 2.1 (and Wan 2.2 A14B: the same keys)",
        "WAN21_T2V, WAN21_I2V",
        &[Key("head.modulation"), NotDim("head.head.weight", 0, 192)],
        WAN_PARAMS,
        &["dim", "num_layers"],
        &[
            variant(
                "wan21-1.3b",
                "Wan 2.1 text-to-video 1.3B",
                &m::WAN21_1_3B,
                &m::WAN21_TINY,
            ),
            Variant {
                aliases: &["wan22-14b", "wan22-t2v-14b"],
                ..variant(
                    "wan21-14b",
                    "Wan 2.1 text-to-video 14B (also either expert of Wan 2.2 T2V A14B)",
                    &m::WAN21_14B,
                    &m::WAN21_14B_TINY,
                )
            },
            variant(
                "wan21-i2v-14b",
                "Wan 2.1 image-to-video 14B (CLIP-vision image embedding)",
                &m::WAN21_I2V_14B,
                &m::WAN21_I2V_TINY,
            ),
            variant(
                "wan22-i2v-14b",
                "Wan 2.2 image-to-video A14B, high- or low-noise expert (36 input channels, no image embedding)",
                &m::WAN22_I2V_14B,
                &m::WAN22_I2V_TINY,
            ),
        ],
        VaeKind::Wan21,
    ),
    dit(
        Arch::Wan22,
        "wan22",
        &["wan22-ti2v"],
        "Wan 2.2 TI2V 5B (48-channel latents)",
        "WAN22_T2V",
        &[Key("head.modulation"), Dim("head.head.weight", 0, 192)],
        WAN_PARAMS,
        &["dim", "num_layers"],
        &[Variant {
            aliases: &["wan22-ti2v-5b"],
            ..variant(
                "wan22-5b",
                "Wan 2.2 text/image-to-video 5B",
                &m::WAN22_5B,
                &m::WAN22_5B_TINY,
            )
        }],
        VaeKind::Wan22,
    ),
    dit(
        Arch::QwenImage,
        "qwen-image",
        &["qwen"],
        "Qwen-Image (and Qwen-Image-Edit: the same keys)",
        "QwenImage",
        &[
            Key("txt_norm.weight"),
            Key("transformer_blocks.0.img_mlp.net.0.proj.weight"),
            NoKey("txt_in.text_norm.weight"),
        ],
        &[
            blocks("num_layers", "transformer_blocks."),
            dim("in_channels", "img_in.weight", 1, 1),
            dim("joint_attention_dim", "txt_norm.weight", 0, 1),
        ],
        &["num_layers"],
        &[
            variant("qwen-image", "Qwen-Image 20B", &m::QWEN_IMAGE, &m::QWEN_IMAGE_TINY),
            variant(
                "qwen-image-edit",
                "Qwen-Image-Edit (the keys and shapes of Qwen-Image)",
                &m::QWEN_IMAGE,
                &m::QWEN_IMAGE_TINY,
            ),
        ],
        VaeKind::Wan21,
    ),
    dit(
        Arch::HiDream,
        "hidream",
        &[],
        "HiDream-I1 (full, dev and fast: the same keys)",
        "HiDream",
        &[Key("caption_projection.0.linear.weight")],
        &[
            blocks("num_layers", "double_stream_blocks."),
            blocks("num_single_layers", "single_stream_blocks."),
            blocks("num_routed_experts", "double_stream_blocks.0.block.ff_i.experts."),
        ],
        &["num_layers", "num_single_layers"],
        &[variant("hidream-i1", "HiDream-I1 17B", &m::HIDREAM_I1, &m::HIDREAM_I1_TINY)],
        VaeKind::Flux,
    ),
    Family {
        prefixes: LDM,
        ..dit(
            Arch::Chroma,
            "chroma",
            &[],
            "Chroma",
            "Chroma",
            &[
                FLUX_KEY_NORM,
                Key("img_in.weight"),
                Either(&[
                    "distilled_guidance_layer.norms.0.scale",
                    "distilled_guidance_layer.norms.0.weight",
                ]),
            ],
            &[
                blocks("depth", "double_blocks."),
                blocks("depth_single_blocks", "single_blocks."),
                dim("hidden_size", "img_in.weight", 0, 1),
            ],
            &["depth", "depth_single_blocks"],
            &[variant("chroma", "Chroma (8.9B)", &m::CHROMA, &m::CHROMA_TINY)],
            VaeKind::Flux,
        )
    },
    dit(
        Arch::Lumina2,
        "lumina2",
        &["lumina", "lumina-image-2"],
        "Lumina Image 2.0",
        "Lumina2",
        &[
            Key("cap_embedder.1.weight"),
            Key("noise_refiner.0.attention.k_norm.weight"),
            NoKey("cap_pad_token"),
        ],
        &[
            dim("dim", "cap_embedder.1.weight", 0, 1),
            dim("cap_feat_dim", "cap_embedder.1.weight", 1, 1),
            blocks("n_layers", "layers."),
        ],
        &["n_layers"],
        &[variant("lumina2", "Lumina Image 2.0 (2.6B)", &m::LUMINA2, &m::LUMINA2_TINY)],
        VaeKind::Flux,
    ),
    dit(
        Arch::Flux2,
        "flux2",
        &["flux.2"],
        "Flux 2 (dev and Klein)",
        "Flux2",
        &[
            FLUX_KEY_NORM,
            Key("img_in.weight"),
            Key("double_stream_modulation_img.lin.weight"),
        ],
        &[
            dim("hidden_size", "img_in.weight", 0, 1),
            dim("in_channels", "img_in.weight", 1, 1),
            dim("context_in_dim", "txt_in.weight", 1, 1),
            blocks("depth", "double_blocks."),
            blocks("depth_single_blocks", "single_blocks."),
            present("guidance_embed", "guidance_in.in_layer.weight"),
        ],
        &["depth", "depth_single_blocks"],
        &[
            variant("flux2-dev", "Flux 2 dev (32B; Mistral Small 3 24B)", &m::FLUX2_DEV, &m::FLUX2_DEV_TINY),
            variant(
                "flux2-klein-4b",
                "Flux 2 Klein 4B (Qwen3 4B)",
                &m::FLUX2_KLEIN_4B,
                &m::FLUX2_KLEIN_4B_TINY,
            ),
            variant(
                "flux2-klein-9b",
                "Flux 2 Klein 9B (Qwen3 8B)",
                &m::FLUX2_KLEIN_9B,
                &m::FLUX2_KLEIN_9B_TINY,
            ),
        ],
        VaeKind::Flux2,
    ),
    dit(
        Arch::ZImage,
        "z-image",
        &["zimage", "z-image-turbo"],
        "Z-Image (Lumina 2's NextDiT at 3840 wide; Qwen3 4B)",
        "ZImage",
        &[
            Key("cap_embedder.1.weight"),
            Key("noise_refiner.0.attention.k_norm.weight"),
            Key("cap_pad_token"),
            NoKey("dec_net.cond_embed.weight"),
        ],
        &[
            dim("dim", "cap_embedder.1.weight", 0, 1),
            dim("cap_feat_dim", "cap_embedder.1.weight", 1, 1),
            blocks("n_layers", "layers."),
        ],
        &["n_layers"],
        &[variant("z-image-6b", "Z-Image 6B (Turbo and Base)", &m::Z_IMAGE, &m::Z_IMAGE_TINY)],
        VaeKind::Flux,
    ),
    Family {
        prefixes: HUNYUAN,
        ..dit(
            Arch::HunyuanVideo,
            "hunyuan-video",
            &["hunyuanvideo", "hunyuan"],
            "HunyuanVideo (text- and image-to-video)",
            "HunyuanVideo, HunyuanVideoI2V",
            &[
                Key("txt_in.individual_token_refiner.blocks.0.norm1.weight"),
                Key("vector_in.in_layer.weight"),
                NoKey("vision_in.proj.0.weight"),
            ],
            HUNYUAN_PARAMS,
            &["depth", "depth_single_blocks"],
            &[
                variant("hunyuan-video", "HunyuanVideo text-to-video 13B", &m::HUNYUAN_VIDEO, &m::HUNYUAN_VIDEO_TINY),
                variant(
                    "hunyuan-video-i2v",
                    "HunyuanVideo image-to-video (33 input channels)",
                    &m::HUNYUAN_VIDEO_I2V,
                    &m::HUNYUAN_VIDEO_I2V_TINY,
                ),
            ],
            VaeKind::HunyuanVideo,
        )
    },
    Family {
        prefixes: HUNYUAN,
        ..dit(
            Arch::HunyuanVideo15,
            "hunyuan-video-1.5",
            &["hunyuanvideo1.5", "hv15"],
            "HunyuanVideo 1.5 (Qwen2.5-VL 7B and ByT5)",
            "HunyuanVideo15",
            &[
                Key("txt_in.individual_token_refiner.blocks.0.norm1.weight"),
                Key("vision_in.proj.0.weight"),
            ],
            HUNYUAN_PARAMS,
            &["depth", "depth_single_blocks"],
            &[Variant {
                aliases: &["hunyuan-video-1.5-8b"],
                ..variant(
                    "hunyuan-video-1.5",
                    "HunyuanVideo 1.5 8.3B",
                    &m::HUNYUAN_VIDEO_15,
                    &m::HUNYUAN_VIDEO_15_TINY,
                )
            }],
            VaeKind::HunyuanVideo15,
        )
    },
    dit(
        Arch::Ltxv,
        "ltxv",
        &["ltx-video", "ltx"],
        "LTX-Video",
        "LTXV",
        &[
            Key("adaln_single.emb.timestep_embedder.linear_1.bias"),
            NoKey("pos_embed.proj.bias"),
            NoKey("audio_adaln_single.linear.weight"),
        ],
        &[
            blocks("num_layers", "transformer_blocks."),
            dim("attention_head_dim", "transformer_blocks.0.attn2.to_k.weight", 0, 32),
            dim("cross_attention_dim", "transformer_blocks.0.attn2.to_k.weight", 1, 1),
        ],
        &["num_layers"],
        &[
            variant("ltxv-2b", "LTX-Video 2B (0.9.x)", &m::LTXV_2B, &m::LTXV_2B_TINY),
            variant("ltxv-13b", "LTX-Video 13B (0.9.7 and later)", &m::LTXV_13B, &m::LTXV_13B_TINY),
        ],
        VaeKind::Ltx,
    ),
];
