//! Synthetic models of the families after Flux.1: Wan 2.1/2.2, Qwen-Image (and 2.1), HiDream, Lumina 2,
//! Z-Image, HunyuanVideo (and 1.5) and LTX-Video.

use super::*;

// ---- Wan ---------------------------------------------------------------------------------------

const WAN_1_3B: WanConfig = WanConfig {
    dim: 1536,
    ffn_dim: 8960,
    num_layers: 30,
    in_dim: 16,
    out_dim: 16,
    text_dim: 4096,
    freq_dim: 256,
    img_dim: None,
};

const WAN_14B: WanConfig = WanConfig {
    dim: 5120,
    ffn_dim: 13824,
    num_layers: 40,
    ..WAN_1_3B
};

const WAN_TINY: WanConfig = WanConfig {
    dim: 32,
    ffn_dim: 64,
    num_layers: 2,
    text_dim: TINY_UMT5.d_model,
    ..WAN_1_3B
};

const WAN_ENCODERS: &[Encoder] = &[Encoder::T5(UMT5_XXL), SPIECE];
const WAN_TINY_ENCODERS: &[Encoder] = &[Encoder::T5(TINY_UMT5), TINY_SPIECE];

pub(crate) const WAN21_1_3B: Spec = Spec {
    model: Denoiser::Wan(WAN_1_3B),
    encoders: WAN_ENCODERS,
    vae: Vae::Wan(VAE_WAN21),
};

pub(crate) const WAN21_TINY: Spec = Spec {
    model: Denoiser::Wan(WAN_TINY),
    encoders: WAN_TINY_ENCODERS,
    vae: Vae::Wan(TINY_VAE_WAN21),
};

pub(crate) const WAN21_14B: Spec = Spec {
    model: Denoiser::Wan(WAN_14B),
    ..WAN21_1_3B
};

pub(crate) const WAN21_14B_TINY: Spec = Spec {
    model: Denoiser::Wan(WanConfig {
        num_layers: 3,
        ..WAN_TINY
    }),
    ..WAN21_TINY
};

/// Wan 2.1 image-to-video 14B: 36 input channels (noise, the image latent, its mask) and the
/// CLIP-vision image embedding (`img_emb`, `k_img`/`v_img`).
pub(crate) const WAN21_I2V_14B: Spec = Spec {
    model: Denoiser::Wan(WanConfig {
        in_dim: 36,
        img_dim: Some(1280),
        ..WAN_14B
    }),
    ..WAN21_1_3B
};

pub(crate) const WAN21_I2V_TINY: Spec = Spec {
    model: Denoiser::Wan(WanConfig {
        num_layers: 3,
        in_dim: 36,
        img_dim: Some(16),
        ..WAN_TINY
    }),
    ..WAN21_TINY
};

/// Wan 2.2 image-to-video A14B (either expert): 36 input channels, no image embedding.
pub(crate) const WAN22_I2V_14B: Spec = Spec {
    model: Denoiser::Wan(WanConfig {
        in_dim: 36,
        ..WAN_14B
    }),
    ..WAN21_1_3B
};

pub(crate) const WAN22_I2V_TINY: Spec = Spec {
    model: Denoiser::Wan(WanConfig {
        num_layers: 3,
        in_dim: 36,
        ..WAN_TINY
    }),
    ..WAN21_TINY
};

/// Wan 2.2 TI2V 5B: 48 latent channels in and out (its own VAE).
pub(crate) const WAN22_5B: Spec = Spec {
    model: Denoiser::Wan(WanConfig {
        dim: 3072,
        ffn_dim: 14336,
        num_layers: 30,
        in_dim: 48,
        out_dim: 48,
        ..WAN_1_3B
    }),
    encoders: WAN_ENCODERS,
    vae: Vae::Wan(VAE_WAN22),
};

pub(crate) const WAN22_5B_TINY: Spec = Spec {
    model: Denoiser::Wan(WanConfig {
        in_dim: 48,
        out_dim: 48,
        ..WAN_TINY
    }),
    encoders: WAN_TINY_ENCODERS,
    vae: Vae::Wan(TINY_VAE_WAN22),
};

// ---- Qwen-Image -------------------------------------------------------------------------------

pub(crate) const QWEN_IMAGE: Spec = Spec {
    model: Denoiser::QwenImage(QwenImageConfig {
        num_layers: 60,
        num_heads: 24,
        head_dim: 128,
        in_channels: 64,
        out_channels: 16,
        patch_size: 2,
        joint_attention_dim: 3584,
    }),
    encoders: &[Encoder::Llm(QWEN25_7B)],
    vae: Vae::Wan(VAE_WAN21),
};

pub(crate) const QWEN_IMAGE_TINY: Spec = Spec {
    model: Denoiser::QwenImage(QwenImageConfig {
        num_layers: 2,
        num_heads: 2,
        head_dim: 16,
        in_channels: 64,
        out_channels: 16,
        patch_size: 2,
        joint_attention_dim: 32,
    }),
    encoders: &[Encoder::Llm(tiny_llm("qwen25_7b", QWEN25_7B))],
    vae: Vae::Wan(TINY_VAE_WAN21),
};

// ---- Qwen-Image 2.1 ---------------------------------------------------------------------------

/// Qwen-Image 2.1's VAE (`comfy/sd.py`: Wan 2.2's layout at dim 96, decoder 144, five levels,
/// temporal kernel 1, no patchify, 4 image channels (RGBA), 64 latent channels).
const VAE_QWEN_IMAGE21: WanVaeConfig = WanVaeConfig {
    dim: 96,
    dec_dim: 144,
    z_dim: 64,
    dim_mult: &[1, 2, 4, 8, 8],
    num_res_blocks: 2,
    temporal_downsample: &[false, true, true, true],
    image_channels: 4,
    wan22: true,
    temporal_kernel: 1,
};

const TINY_VAE_QWEN_IMAGE21: WanVaeConfig = WanVaeConfig {
    dim: 4,
    dec_dim: 6,
    z_dim: 8,
    dim_mult: &[1, 2, 2],
    num_res_blocks: 1,
    temporal_downsample: &[false, true],
    ..VAE_QWEN_IMAGE21
};

/// Qwen-Image 2.1 (ComfyUI's defaults of `QwenImage21Transformer2DModel`: 32 layers of 32 heads
/// of 128, 64 latent channels, Qwen3-VL 8B's 4096-wide features, feed-forward 3× wide).
pub(crate) const QWEN_IMAGE21: Spec = Spec {
    model: Denoiser::QwenImage21(QwenImage21Config {
        num_layers: 32,
        num_heads: 32,
        head_dim: 128,
        in_channels: 64,
        out_channels: 64,
        context_in_dim: 4096,
        mlp_ratio: 3,
    }),
    encoders: &[Encoder::Llm(QWEN3VL_8B)],
    vae: Vae::Wan(VAE_QWEN_IMAGE21),
};

pub(crate) const QWEN_IMAGE21_TINY: Spec = Spec {
    model: Denoiser::QwenImage21(QwenImage21Config {
        num_layers: 2,
        num_heads: 2,
        head_dim: 16,
        in_channels: 64,
        out_channels: 64,
        context_in_dim: 32,
        mlp_ratio: 3,
    }),
    encoders: &[Encoder::Llm(tiny_llm("qwen3vl_8b", QWEN3VL_8B))],
    vae: Vae::Wan(TINY_VAE_QWEN_IMAGE21),
};

// ---- HiDream ------------------------------------------------------------------------------------

pub(crate) const HIDREAM_I1: Spec = Spec {
    model: Denoiser::HiDream(HiDreamConfig {
        num_layers: 16,
        num_single_layers: 32,
        num_heads: 20,
        head_dim: 128,
        in_channels: 16,
        out_channels: 16,
        patch_size: 2,
        text_emb_dim: 2048,
        caption_channels: 4096,
        num_routed_experts: 4,
        expert_dim: 6912,
        shared_dim: 3584,
    }),
    encoders: &[
        Encoder::Clip(CLIP_L),
        Encoder::Clip(CLIP_G),
        Encoder::T5(T5_XXL),
        Encoder::Llm(LLAMA_8B),
    ],
    vae: Vae::Ldm(VAE_16CH),
};

pub(crate) const HIDREAM_I1_TINY: Spec = Spec {
    model: Denoiser::HiDream(HiDreamConfig {
        num_layers: 2,
        num_single_layers: 2,
        num_heads: 2,
        head_dim: 16,
        in_channels: 16,
        out_channels: 16,
        patch_size: 2,
        text_emb_dim: TINY_CLIP_L.projection_dim + TINY_CLIP_G.projection_dim,
        caption_channels: 32,
        num_routed_experts: 2,
        expert_dim: 48,
        shared_dim: 24,
    }),
    encoders: &[
        Encoder::Clip(TINY_CLIP_L),
        Encoder::Clip(TINY_CLIP_G),
        Encoder::T5(TINY_T5),
        Encoder::Llm(tiny_llama("llama", LLAMA_8B)),
    ],
    vae: Vae::Ldm(tiny_vae(16, false)),
};

// ---- Lumina 2 ----------------------------------------------------------------------------------

pub(crate) const LUMINA2: Spec = Spec {
    model: Denoiser::Lumina(LuminaConfig {
        dim: 2304,
        n_layers: 26,
        n_refiner_layers: 2,
        n_heads: 24,
        n_kv_heads: 8,
        ffn_dim: 9216,
        in_channels: 16,
        patch_size: 2,
        cap_feat_dim: 2304,
        adaln_dim: 1024,
        z_image: false,
    }),
    encoders: &[Encoder::Llm(GEMMA2_2B), SPIECE],
    vae: Vae::Ldm(VAE_16CH),
};

// Grouped-query attention as released (2 k/v heads for 4 q heads); the modulation input is
// min(dim, 1024), as the released models and diffusers' class have it.
pub(crate) const LUMINA2_TINY: Spec = Spec {
    model: Denoiser::Lumina(LuminaConfig {
        dim: 32,
        n_layers: 2,
        n_refiner_layers: 1,
        n_heads: 4,
        n_kv_heads: 2,
        ffn_dim: 64,
        in_channels: 16,
        patch_size: 2,
        cap_feat_dim: 32,
        adaln_dim: 32,
        z_image: false,
    }),
    encoders: &[Encoder::Llm(tiny_llm("gemma2_2b", GEMMA2_2B)), TINY_SPIECE],
    vae: Vae::Ldm(tiny_vae(16, false)),
};

// ---- Z-Image ----------------------------------------------------------------------------------

/// Z-Image (6B; Qwen3 4B, the Flux autoencoder).
pub(crate) const Z_IMAGE: Spec = Spec {
    model: Denoiser::Lumina(LuminaConfig {
        dim: 3840,
        n_layers: 30,
        n_refiner_layers: 2,
        n_heads: 30,
        n_kv_heads: 30,
        ffn_dim: 10240,
        in_channels: 16,
        patch_size: 2,
        cap_feat_dim: 2560,
        adaln_dim: 256,
        z_image: true,
    }),
    encoders: &[Encoder::Llm(QWEN3_4B)],
    vae: Vae::Ldm(VAE_16CH),
};

// The feed-forward width is int(dim / 3 · 8) and the modulation input min(dim, 256), as the
// released 6B model (3840 → 10240, 256) and diffusers' class have them.
pub(crate) const Z_IMAGE_TINY: Spec = Spec {
    model: Denoiser::Lumina(LuminaConfig {
        dim: 32,
        n_layers: 2,
        n_refiner_layers: 1,
        n_heads: 4,
        n_kv_heads: 4,
        ffn_dim: 85,
        in_channels: 16,
        patch_size: 2,
        cap_feat_dim: 32,
        adaln_dim: 32,
        z_image: true,
    }),
    encoders: &[Encoder::Llm(tiny_llm("qwen3_4b", QWEN3_4B))],
    vae: Vae::Ldm(tiny_vae(16, false)),
};

// ---- HunyuanVideo -------------------------------------------------------------------------------

/// HunyuanVideo's causal 3-D autoencoder (16 latent channels, 4× in time).
pub(crate) const VAE_HUNYUAN: VaeConfig = VaeConfig {
    z_channels: 16,
    conv3d: true,
    ..VAE_SD
};

const TINY_VAE_HUNYUAN: VaeConfig = VaeConfig {
    conv3d: true,
    ..tiny_vae(16, true)
};

const HUNYUAN_DIT: HunyuanVideoConfig = HunyuanVideoConfig {
    hidden_size: 3072,
    num_heads: 24,
    depth: 20,
    depth_single_blocks: 40,
    in_channels: 16,
    out_channels: 16,
    patch_size: [1, 2, 2],
    vec_in_dim: Some(768),
    context_in_dim: 4096,
    guidance_embed: true,
    v15: None,
};

const HUNYUAN_TINY_DIT: HunyuanVideoConfig = HunyuanVideoConfig {
    hidden_size: 32,
    num_heads: 2,
    depth: 2,
    depth_single_blocks: 2,
    vec_in_dim: Some(TINY_CLIP_L.hidden_size),
    context_in_dim: 32,
    ..HUNYUAN_DIT
};

const HUNYUAN_ENCODERS: &[Encoder] = &[Encoder::Clip(CLIP_L), Encoder::Llm(LLAMA_HUNYUAN)];
const HUNYUAN_TINY_ENCODERS: &[Encoder] = &[
    Encoder::Clip(TINY_CLIP_L),
    Encoder::Llm(tiny_llama("llama", LLAMA_HUNYUAN)),
];

/// HunyuanVideo text-to-video (13B).
pub(crate) const HUNYUAN_VIDEO: Spec = Spec {
    model: Denoiser::HunyuanVideo(HUNYUAN_DIT),
    encoders: HUNYUAN_ENCODERS,
    vae: Vae::Ldm(VAE_HUNYUAN),
};

pub(crate) const HUNYUAN_VIDEO_TINY: Spec = Spec {
    model: Denoiser::HunyuanVideo(HUNYUAN_TINY_DIT),
    encoders: HUNYUAN_TINY_ENCODERS,
    vae: Vae::Ldm(TINY_VAE_HUNYUAN),
};

/// HunyuanVideo image-to-video: 33 input channels (noise, image latent, mask).
pub(crate) const HUNYUAN_VIDEO_I2V: Spec = Spec {
    model: Denoiser::HunyuanVideo(HunyuanVideoConfig {
        in_channels: 33,
        ..HUNYUAN_DIT
    }),
    ..HUNYUAN_VIDEO
};

pub(crate) const HUNYUAN_VIDEO_I2V_TINY: Spec = Spec {
    model: Denoiser::HunyuanVideo(HunyuanVideoConfig {
        in_channels: 33,
        depth: 3,
        ..HUNYUAN_TINY_DIT
    }),
    ..HUNYUAN_VIDEO_TINY
};

/// HunyuanVideo 1.5's VAE: 32 latent channels, 16× in space and 4× in time.
const VAE_HUNYUAN15: Hunyuan15VaeConfig = Hunyuan15VaeConfig {
    block_out_channels: &[128, 256, 512, 1024, 1024],
    num_res_blocks: 2,
    z_channels: 32,
    resample_levels: 4,
    temporal_levels: 2,
};

/// HunyuanVideo 1.5 (8.3B; Qwen2.5-VL 7B and ByT5-small).
pub(crate) const HUNYUAN_VIDEO_15: Spec = Spec {
    model: Denoiser::HunyuanVideo(HunyuanVideoConfig {
        hidden_size: 2048,
        num_heads: 16,
        depth: 54,
        depth_single_blocks: 0,
        in_channels: 65,
        out_channels: 32,
        patch_size: [1, 1, 1],
        vec_in_dim: None,
        context_in_dim: 3584,
        guidance_embed: false,
        v15: Some((1152, 1472, 2048)),
    }),
    encoders: &[Encoder::Llm(QWEN25_7B), Encoder::T5(BYT5_SMALL)],
    vae: Vae::Hunyuan15(VAE_HUNYUAN15),
};

pub(crate) const HUNYUAN_VIDEO_15_TINY: Spec = Spec {
    model: Denoiser::HunyuanVideo(HunyuanVideoConfig {
        hidden_size: 32,
        num_heads: 2,
        depth: 2,
        depth_single_blocks: 0,
        in_channels: 65,
        out_channels: 32,
        patch_size: [1, 1, 1],
        vec_in_dim: None,
        context_in_dim: 32,
        guidance_embed: false,
        v15: Some((16, 24, 16)),
    }),
    encoders: &[
        Encoder::Llm(tiny_llm("qwen25_7b", QWEN25_7B)),
        Encoder::T5(TINY_BYT5),
    ],
    vae: Vae::Hunyuan15(Hunyuan15VaeConfig {
        block_out_channels: &[4, 8, 8],
        num_res_blocks: 1,
        z_channels: 32,
        resample_levels: 2,
        temporal_levels: 1,
    }),
};

// ---- LTX-Video ---------------------------------------------------------------------------------

/// LTX-Video's VAE (0.9.5 and later).
pub(super) const VAE_LTX: LtxVaeConfig = LtxVaeConfig {
    base_channels: 128,
    latent_channels: 128,
    patch_size: 4,
    encoder_layers: &[4, 6, 6, 2, 2],
    decoder_layers: &[5, 5, 5, 5],
    timestep_conditioning: true,
};

pub(super) const TINY_VAE_LTX: LtxVaeConfig = LtxVaeConfig {
    base_channels: 2,
    latent_channels: 8,
    patch_size: 4,
    encoder_layers: &[1, 1, 1, 1, 1],
    decoder_layers: &[1, 1, 1, 1],
    timestep_conditioning: true,
};

const LTXV_2B_DIT: LtxvConfig = LtxvConfig {
    num_layers: 28,
    num_heads: 32,
    head_dim: 64,
    in_channels: 128,
    caption_channels: 4096,
    cross_attention_dim: 2048,
};

/// LTX-Video 2B (0.9.x).
pub(crate) const LTXV_2B: Spec = Spec {
    model: Denoiser::Ltxv(LTXV_2B_DIT),
    encoders: &[Encoder::T5(T5_XXL)],
    vae: Vae::Ltx(VAE_LTX),
};

pub(crate) const LTXV_2B_TINY: Spec = Spec {
    model: Denoiser::Ltxv(LtxvConfig {
        num_layers: 2,
        num_heads: 32,
        head_dim: 1,
        in_channels: 8,
        caption_channels: TINY_T5.d_model,
        cross_attention_dim: 32,
    }),
    encoders: &[Encoder::T5(TINY_T5)],
    vae: Vae::Ltx(TINY_VAE_LTX),
};

/// LTX-Video 13B (0.9.7 and later).
pub(crate) const LTXV_13B: Spec = Spec {
    model: Denoiser::Ltxv(LtxvConfig {
        num_layers: 48,
        head_dim: 128,
        cross_attention_dim: 4096,
        ..LTXV_2B_DIT
    }),
    ..LTXV_2B
};

pub(crate) const LTXV_13B_TINY: Spec = Spec {
    model: Denoiser::Ltxv(LtxvConfig {
        num_layers: 3,
        num_heads: 32,
        head_dim: 1,
        in_channels: 8,
        caption_channels: TINY_T5.d_model,
        cross_attention_dim: 32,
    }),
    ..LTXV_2B_TINY
};
