//! The families after Flux.1: Wan 2.1 and 2.2, Qwen-Image, HiDream, Chroma, Lumina 2, Flux 2,
//! Z-Image, HunyuanVideo (and 1.5), LTX-Video, LTX-2 and Qwen-Image 2.1. Everything here is laid out by prefix.

use super::*;
use crate::family::lora_names as lora;
use crate::family::merge_nodes as nodes;
use crate::synthetic::models as m;

pub(super) const WAN21: Family = Family {
    diffusers: true,
    block_prefixes: &[nodes::WAN2_1],
    ..dit(
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
        lora::WAN,
    )
};

pub(super) const WAN22: Family = Family {
    diffusers: true,
    block_prefixes: &[nodes::WAN2_1],
    ..dit(
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
        lora::WAN,
    )
};

pub(super) const QWEN_IMAGE: Family = Family {
    diffusers: true,
    block_prefixes: &[nodes::QWEN_IMAGE],
    ..dit(
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
            variant(
                "qwen-image",
                "Qwen-Image 20B",
                &m::QWEN_IMAGE,
                &m::QWEN_IMAGE_TINY,
            ),
            variant(
                "qwen-image-edit",
                "Qwen-Image-Edit (the keys and shapes of Qwen-Image)",
                &m::QWEN_IMAGE,
                &m::QWEN_IMAGE_TINY,
            ),
        ],
        VaeKind::Wan21,
        lora::QWEN_IMAGE,
    )
};

pub(super) const HIDREAM: Family = Family {
    diffusers: true,
    ..dit(
        Arch::HiDream,
        "hidream",
        &[],
        "HiDream-I1 (full, dev and fast: the same keys)",
        "HiDream",
        &[Key("caption_projection.0.linear.weight")],
        &[
            blocks("num_layers", "double_stream_blocks."),
            blocks("num_single_layers", "single_stream_blocks."),
            blocks(
                "num_routed_experts",
                "double_stream_blocks.0.block.ff_i.experts.",
            ),
        ],
        &["num_layers", "num_single_layers"],
        &[variant(
            "hidream-i1",
            "HiDream-I1 17B",
            &m::HIDREAM_I1,
            &m::HIDREAM_I1_TINY,
        )],
        VaeKind::Flux,
        lora::HIDREAM,
    )
};

pub(super) const CHROMA: Family = Family {
    diffusers: true,
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
        &[variant(
            "chroma",
            "Chroma (8.9B)",
            &m::CHROMA,
            &m::CHROMA_TINY,
        )],
        VaeKind::Flux,
        lora::FLUX,
    )
};

pub(super) const LUMINA2: Family = Family {
    diffusers: true,
    ..dit(
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
        &[variant(
            "lumina2",
            "Lumina Image 2.0 (2.6B)",
            &m::LUMINA2,
            &m::LUMINA2_TINY,
        )],
        VaeKind::Flux,
        lora::LUMINA,
    )
};

pub(super) const FLUX2: Family = Family {
    diffusers: true,
    ..dit(
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
            variant(
                "flux2-dev",
                "Flux 2 dev (32B; Mistral Small 3 24B)",
                &m::FLUX2_DEV,
                &m::FLUX2_DEV_TINY,
            ),
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
        lora::FLUX,
    )
};

pub(super) const Z_IMAGE: Family = Family {
    diffusers: true,
    ..dit(
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
        &[variant(
            "z-image-6b",
            "Z-Image 6B (Turbo and Base)",
            &m::Z_IMAGE,
            &m::Z_IMAGE_TINY,
        )],
        VaeKind::Flux,
        lora::LUMINA,
    )
};

pub(super) const HUNYUAN_VIDEO: Family = Family {
    diffusers: true,
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
            variant(
                "hunyuan-video",
                "HunyuanVideo text-to-video 13B",
                &m::HUNYUAN_VIDEO,
                &m::HUNYUAN_VIDEO_TINY,
            ),
            variant(
                "hunyuan-video-i2v",
                "HunyuanVideo image-to-video (33 input channels)",
                &m::HUNYUAN_VIDEO_I2V,
                &m::HUNYUAN_VIDEO_I2V_TINY,
            ),
        ],
        VaeKind::HunyuanVideo,
        lora::HUNYUAN_VIDEO,
    )
};

pub(super) const HUNYUAN_VIDEO_15: Family = Family {
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
        lora::HUNYUAN_VIDEO,
    )
};

pub(super) const LTXV: Family = Family {
    diffusers: true,
    block_prefixes: &[nodes::LTXV],
    ..dit(
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
            dim(
                "attention_head_dim",
                "transformer_blocks.0.attn2.to_k.weight",
                0,
                32,
            ),
            dim(
                "cross_attention_dim",
                "transformer_blocks.0.attn2.to_k.weight",
                1,
                1,
            ),
        ],
        &["num_layers"],
        &[
            variant(
                "ltxv-2b",
                "LTX-Video 2B (0.9.x)",
                &m::LTXV_2B,
                &m::LTXV_2B_TINY,
            ),
            variant(
                "ltxv-13b",
                "LTX-Video 13B (0.9.7 and later)",
                &m::LTXV_13B,
                &m::LTXV_13B_TINY,
            ),
        ],
        VaeKind::Ltx,
        lora::LTXV,
    )
};

/// LTX-2: ComfyUI's LTX branch of `detect_unet_config` with the audio stream's adaLN
/// (`image_model: ltxav`); `supported_models.LTXAV` (an `LTXV` config: `text_encoders.`,
/// `vae.`, no save-time conversions). The text encoder is `LTXAVTEModel` (`text_encoders/lt.py`:
/// `gemma3_12b` and `text_embedding_projection`), the VAE LTX-Video's class. ComfyUI has no
/// `ModelMergeLTXAV` node; its LoRA names for `LTXAV` are the generic ones and the bare own
/// names (`comfy/lora.py`). Its release
/// holds the audio VAE, the vocoder and the projection beside the denoiser and the video VAE
/// ([`crate::family::release::LTX2`]).
pub(super) const LTX2: Family = Family {
    diffusers: true,
    release: Some(&crate::family::release::LTX2),
    ..dit(
        Arch::Ltx2,
        "ltx2",
        &["ltx-2", "ltxav"],
        "LTX-2 (audio-video)",
        "LTXAV",
        &[
            Key("adaln_single.emb.timestep_embedder.linear_1.bias"),
            Key("audio_adaln_single.linear.weight"),
            NoKey("pos_embed.proj.bias"),
        ],
        &[
            blocks("num_layers", "transformer_blocks."),
            dim(
                "attention_head_dim",
                "transformer_blocks.0.attn2.to_k.weight",
                0,
                32,
            ),
            dim(
                "cross_attention_dim",
                "transformer_blocks.0.attn2.to_k.weight",
                1,
                1,
            ),
        ],
        &["num_layers"],
        &[
            variant(
                "ltx2-19b",
                "LTX-2 19B (dev and distilled)",
                &m::LTX2_19B,
                &m::LTX2_19B_TINY,
            ),
            variant(
                "ltx2-19b-release",
                "LTX-2 19B as Lightricks releases the file (with the audio VAE and vocoder, the \
             text projection, no Gemma)",
                &m::LTX2_19B_RELEASE,
                &m::LTX2_19B_RELEASE_TINY,
            ),
        ],
        VaeKind::Ltx,
        lora::LTX2,
    )
};

/// Qwen-Image 2.1: ComfyUI's `qwen_image21` branch of `detect_unet_config` (all of
/// `txt_in.text_norm`, `modulation.1`, `attn.norm_q`, `img_in`, `proj_out`, and a feed-forward
/// fused as `img_mlp.gate_up` or split as `img_mlp.proj`); `supported_models.QwenImage21`
/// (`text_encoders.` holding `qwen3vl_8b`, `vae.`, no save-time conversions). The VAE is the one
/// `comfy/sd.py` builds from Wan 2.2's layout with temporal kernel 1 (RGBA, 64 latent channels).
/// `model_base.QwenImage21` subclasses `QwenImage`, so `comfy/lora.py` gives it Qwen-Image's
/// LoRA names; ComfyUI has no `ModelMergeQwenImage21` node.
pub(super) const QWEN_IMAGE21: Family = dit(
    Arch::QwenImage21,
    "qwen-image-21",
    &["qwen-image-2.1", "qwen_image21"],
    "Qwen-Image 2.1",
    "QwenImage21",
    &[
        Key("txt_in.text_norm.weight"),
        Key("modulation.1.weight"),
        Key("transformer_blocks.0.attn.norm_q.weight"),
        Key("img_in.weight"),
        Key("proj_out.weight"),
        Either(&[
            "transformer_blocks.0.img_mlp.gate_up.weight",
            "transformer_blocks.0.img_mlp.proj.weight",
        ]),
    ],
    &[
        blocks("num_layers", "transformer_blocks."),
        dim(
            "attention_head_dim",
            "transformer_blocks.0.attn.norm_q.weight",
            0,
            1,
        ),
        dim("in_channels", "img_in.weight", 1, 1),
        dim("out_channels", "proj_out.weight", 0, 1),
        dim("context_in_dim", "txt_in.text_norm.weight", 0, 1),
        present("fused_mlp", "transformer_blocks.0.img_mlp.gate_up.weight"),
    ],
    &["num_layers"],
    &[variant(
        "qwen-image-21",
        "Qwen-Image 2.1",
        &m::QWEN_IMAGE21,
        &m::QWEN_IMAGE21_TINY,
    )],
    VaeKind::QwenImage21,
    lora::QWEN_IMAGE,
);
