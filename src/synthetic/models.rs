//! The shape description of every synthetic model: one [`Spec`] per variant at full size, as the
//! released checkpoints have it (hyper-parameters from ComfyUI's model detection and the
//! reference fixtures), and one at test size ("tiny": every kind of key of the real model,
//! narrow layers, fewer repeats, a small vocabulary, shapes consistent with each other).
//!
//! The family table ([`crate::family`]) points each variant at its pair of specs.

use super::spec::*;

// ---- text encoders at full size -------------------------------------------------------------

pub(crate) const CLIP_L: ClipTextConfig = ClipTextConfig {
    name: "clip_l",
    hidden_size: 768,
    intermediate_size: 3072,
    num_hidden_layers: 12,
    vocab_size: 49408,
    max_position_embeddings: 77,
    projection_dim: 768,
};

pub(crate) const CLIP_H: ClipTextConfig = ClipTextConfig {
    name: "clip_h",
    hidden_size: 1024,
    intermediate_size: 4096,
    num_hidden_layers: 24,
    projection_dim: 1024,
    ..CLIP_L
};

pub(crate) const CLIP_G: ClipTextConfig = ClipTextConfig {
    name: "clip_g",
    hidden_size: 1280,
    intermediate_size: 5120,
    num_hidden_layers: 32,
    projection_dim: 1280,
    ..CLIP_L
};

pub(crate) const T5_XXL: T5Config = T5Config {
    name: "t5xxl",
    d_model: 4096,
    d_ff: 10240,
    d_kv: 64,
    num_heads: 64,
    num_layers: 24,
    vocab_size: 32128,
    relative_attention_num_buckets: 32,
    bias_every_layer: false,
};

/// umT5-XXL (Wan): T5-XXL's shapes, a 256k vocabulary, a relative bias in every block.
pub(crate) const UMT5_XXL: T5Config = T5Config {
    name: "umt5xxl",
    vocab_size: 256384,
    bias_every_layer: true,
    ..T5_XXL
};

/// Qwen2.5-VL 7B, language model and vision tower (Qwen-Image).
pub(crate) const QWEN25_7B: LlmConfig = LlmConfig {
    name: "qwen25_7b",
    vocab_size: 152064,
    hidden_size: 3584,
    intermediate_size: 18944,
    num_layers: 28,
    num_heads: 28,
    num_kv_heads: 4,
    head_dim: 128,
    qkv_bias: true,
    qk_norm: false,
    sandwich_norms: false,
    lm_head: false,
    vision: Some(QwenVisionConfig {
        hidden_size: 1280,
        intermediate_size: 3420,
        depth: 32,
        patch_size: 14,
        temporal_patch_size: 2,
        spatial_merge_size: 2,
        out_hidden_size: 3584,
    }),
};

/// Llama 3.1 8B (HiDream).
pub(crate) const LLAMA_8B: LlmConfig = LlmConfig {
    name: "llama",
    vocab_size: 128256,
    hidden_size: 4096,
    intermediate_size: 14336,
    num_layers: 32,
    num_heads: 32,
    num_kv_heads: 8,
    head_dim: 128,
    qkv_bias: false,
    qk_norm: false,
    sandwich_norms: false,
    lm_head: false,
    vision: None,
};

/// Gemma 2 2B (Lumina 2).
pub(crate) const GEMMA2_2B: LlmConfig = LlmConfig {
    name: "gemma2_2b",
    vocab_size: 256000,
    hidden_size: 2304,
    intermediate_size: 9216,
    num_layers: 26,
    num_heads: 8,
    num_kv_heads: 4,
    head_dim: 256,
    sandwich_norms: true,
    ..LLAMA_8B
};

/// The SentencePiece model ComfyUI saves beside umT5 and Gemma 2 (`spiece_model`, U8). Its
/// length is the tokenizer file's; this one is the reference fixtures' stand-in.
pub(crate) const SPIECE: Encoder = Encoder::Tokenizer {
    key: "spiece_model",
    bytes: 499_723,
};

// ---- text encoders at test size -------------------------------------------------------------

const VOCAB: usize = 1000;

const fn tiny_clip(name: &'static str, hidden: usize, layers: usize) -> ClipTextConfig {
    ClipTextConfig {
        name,
        hidden_size: hidden,
        intermediate_size: hidden * 2,
        num_hidden_layers: layers,
        vocab_size: VOCAB,
        max_position_embeddings: 77,
        projection_dim: hidden,
    }
}

const TINY_CLIP_L: ClipTextConfig = tiny_clip("clip_l", 32, 2);
const TINY_CLIP_H: ClipTextConfig = tiny_clip("clip_h", 48, 3);
const TINY_CLIP_G: ClipTextConfig = tiny_clip("clip_g", 64, 3);

const TINY_T5: T5Config = T5Config {
    name: "t5xxl",
    d_model: 32,
    d_ff: 64,
    d_kv: 8,
    num_heads: 4,
    num_layers: 2,
    vocab_size: VOCAB,
    relative_attention_num_buckets: 32,
    bias_every_layer: false,
};

const TINY_UMT5: T5Config = T5Config {
    name: "umt5xxl",
    bias_every_layer: true,
    ..TINY_T5
};

const fn tiny_llm(name: &'static str, full: LlmConfig) -> LlmConfig {
    LlmConfig {
        name,
        vocab_size: VOCAB,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        vision: match full.vision {
            Some(_) => Some(QwenVisionConfig {
                hidden_size: 16,
                intermediate_size: 24,
                depth: 2,
                patch_size: 2,
                temporal_patch_size: 2,
                spatial_merge_size: 2,
                out_hidden_size: 32,
            }),
            None => None,
        },
        ..full
    }
}

const TINY_SPIECE: Encoder = Encoder::Tokenizer {
    key: "spiece_model",
    bytes: 64,
};

// ---- autoencoders ---------------------------------------------------------------------------

/// The SD/SDXL autoencoder (4 latent channels, with quant convs).
pub(crate) const VAE_SD: VaeConfig = VaeConfig {
    ch: 128,
    ch_mult: &[1, 2, 4, 4],
    num_res_blocks: 2,
    in_channels: 3,
    out_ch: 3,
    z_channels: 4,
    double_z: true,
    use_quant_conv: true,
    conv3d: false,
    batch_norm_latent: false,
};

/// The SD3/Flux autoencoder (16 latent channels, no quant convs).
pub(crate) const VAE_16CH: VaeConfig = VaeConfig {
    z_channels: 16,
    use_quant_conv: false,
    ..VAE_SD
};

const fn tiny_vae(z_channels: usize, use_quant_conv: bool) -> VaeConfig {
    VaeConfig {
        ch: 8,
        ch_mult: &[1, 2],
        num_res_blocks: 1,
        in_channels: 3,
        out_ch: 3,
        z_channels,
        double_z: true,
        use_quant_conv,
        conv3d: false,
        batch_norm_latent: false,
    }
}

/// Wan 2.1's VAE (also Qwen-Image's).
pub(crate) const VAE_WAN21: WanVaeConfig = WanVaeConfig {
    dim: 96,
    dec_dim: 96,
    z_dim: 16,
    dim_mult: &[1, 2, 4, 4],
    num_res_blocks: 2,
    temporal_downsample: &[false, true, true],
    image_channels: 3,
    wan22: false,
};

/// Wan 2.2's VAE (48 latent channels, 2×2-patchified RGB).
pub(crate) const VAE_WAN22: WanVaeConfig = WanVaeConfig {
    dim: 160,
    dec_dim: 256,
    z_dim: 48,
    image_channels: 12,
    wan22: true,
    ..VAE_WAN21
};

// Three levels keep every kind of block: a 2-D and a 3-D resample each way, and a shortcut
// in the decoder where the width halved by upsampling grows again.
const TINY_VAE_WAN21: WanVaeConfig = WanVaeConfig {
    dim: 4,
    dec_dim: 4,
    dim_mult: &[1, 2, 2],
    num_res_blocks: 1,
    temporal_downsample: &[false, true],
    ..VAE_WAN21
};

const TINY_VAE_WAN22: WanVaeConfig = WanVaeConfig {
    dim: 4,
    dec_dim: 8,
    dim_mult: &[1, 2, 2],
    num_res_blocks: 1,
    temporal_downsample: &[false, true],
    ..VAE_WAN22
};

// ---- SD1.x, SD2.x, SDXL, SDXL refiner -------------------------------------------------------

const fn sd15_unet(context_dim: usize, use_linear: bool, model_channels: usize) -> UnetConfig {
    UnetConfig {
        in_channels: 4,
        out_channels: 4,
        model_channels,
        channel_mult: &[1, 2, 4, 4],
        num_res_blocks: 2,
        transformer_depth: &[1, 1, 1, 1, 1, 1, 0, 0],
        transformer_depth_middle: 1,
        transformer_depth_output: &[0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        context_dim,
        use_linear_in_transformer: use_linear,
        adm_in_channels: None,
    }
}

pub(crate) const SD15: Spec = Spec {
    model: Denoiser::Unet(sd15_unet(768, false, 320)),
    encoders: &[Encoder::Clip(CLIP_L)],
    vae: Vae::Ldm(VAE_SD),
};

// SD1/SD2 keep four levels of two ResBlocks at test size: the block count tells them apart.
pub(crate) const SD15_TINY: Spec = Spec {
    model: Denoiser::Unet(sd15_unet(TINY_CLIP_L.hidden_size, false, 4)),
    encoders: &[Encoder::Clip(TINY_CLIP_L)],
    vae: Vae::Ldm(tiny_vae(4, true)),
};

pub(crate) const SD2: Spec = Spec {
    model: Denoiser::Unet(sd15_unet(1024, true, 320)),
    encoders: &[Encoder::Clip(CLIP_H)],
    vae: Vae::Ldm(VAE_SD),
};

pub(crate) const SD2_TINY: Spec = Spec {
    model: Denoiser::Unet(sd15_unet(TINY_CLIP_H.hidden_size, true, 4)),
    encoders: &[Encoder::Clip(TINY_CLIP_H)],
    vae: Vae::Ldm(tiny_vae(4, true)),
};

pub(crate) const SDXL: Spec = Spec {
    model: Denoiser::Unet(UnetConfig {
        in_channels: 4,
        out_channels: 4,
        model_channels: 320,
        channel_mult: &[1, 2, 4],
        num_res_blocks: 2,
        transformer_depth: &[0, 0, 2, 2, 10, 10],
        transformer_depth_middle: 10,
        transformer_depth_output: &[10, 10, 10, 2, 2, 2, 0, 0, 0],
        context_dim: 2048,
        use_linear_in_transformer: true,
        adm_in_channels: Some(2816),
    }),
    encoders: &[Encoder::Clip(CLIP_L), Encoder::Clip(CLIP_G)],
    vae: Vae::Ldm(VAE_SD),
};

// SDXL's pooled input: the OpenCLIP-G projection plus six 256-wide size embeddings; the refiner
// has five (no crop embedding pair, an aesthetic score instead).
pub(crate) const SDXL_TINY: Spec = Spec {
    model: Denoiser::Unet(UnetConfig {
        in_channels: 4,
        out_channels: 4,
        model_channels: 4,
        channel_mult: &[1, 2, 4],
        num_res_blocks: 2,
        transformer_depth: &[0, 0, 1, 1, 2, 2],
        transformer_depth_middle: 2,
        transformer_depth_output: &[2, 2, 2, 1, 1, 1, 0, 0, 0],
        context_dim: TINY_CLIP_L.hidden_size + TINY_CLIP_G.hidden_size,
        use_linear_in_transformer: true,
        adm_in_channels: Some(TINY_CLIP_G.projection_dim + 6 * 256),
    }),
    encoders: &[Encoder::Clip(TINY_CLIP_L), Encoder::Clip(TINY_CLIP_G)],
    vae: Vae::Ldm(tiny_vae(4, true)),
};

pub(crate) const SDXL_REFINER: Spec = Spec {
    model: Denoiser::Unet(UnetConfig {
        in_channels: 4,
        out_channels: 4,
        model_channels: 384,
        channel_mult: &[1, 2, 4, 4],
        num_res_blocks: 2,
        transformer_depth: &[0, 0, 4, 4, 4, 4, 0, 0],
        transformer_depth_middle: 4,
        transformer_depth_output: &[0, 0, 0, 4, 4, 4, 4, 4, 4, 0, 0, 0],
        context_dim: 1280,
        use_linear_in_transformer: true,
        adm_in_channels: Some(2560),
    }),
    encoders: &[Encoder::Clip(CLIP_G)],
    vae: Vae::Ldm(VAE_SD),
};

pub(crate) const SDXL_REFINER_TINY: Spec = Spec {
    model: Denoiser::Unet(UnetConfig {
        in_channels: 4,
        out_channels: 4,
        model_channels: 4,
        channel_mult: &[1, 2, 4, 4],
        num_res_blocks: 2,
        transformer_depth: &[0, 0, 1, 1, 1, 1, 0, 0],
        transformer_depth_middle: 1,
        transformer_depth_output: &[0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        context_dim: TINY_CLIP_G.hidden_size,
        use_linear_in_transformer: true,
        adm_in_channels: Some(TINY_CLIP_G.projection_dim + 5 * 256),
    }),
    encoders: &[Encoder::Clip(TINY_CLIP_G)],
    vae: Vae::Ldm(tiny_vae(4, true)),
};

// ---- SD3 / SD3.5 -------------------------------------------------------------------------------

const SD3_ENCODERS: &[Encoder] = &[
    Encoder::Clip(CLIP_L),
    Encoder::Clip(CLIP_G),
    Encoder::T5(T5_XXL),
];
const SD3_TINY_ENCODERS: &[Encoder] = &[
    Encoder::Clip(TINY_CLIP_L),
    Encoder::Clip(TINY_CLIP_G),
    Encoder::T5(TINY_T5),
];

const MMDIT_SD3: MmditConfig = MmditConfig {
    depth: 24,
    hidden_size: 64 * 24,
    patch_size: 2,
    in_channels: 16,
    out_channels: 16,
    adm_in_channels: 2048,
    context_dim: 4096,
    pos_embed_max_size: 192,
    mlp_ratio: 4,
    qk_norm: false,
    x_self_attn_layers: 0,
};

const MMDIT_TINY: MmditConfig = MmditConfig {
    depth: 2,
    hidden_size: 32,
    pos_embed_max_size: 8,
    adm_in_channels: TINY_CLIP_L.projection_dim + TINY_CLIP_G.projection_dim,
    context_dim: TINY_T5.d_model,
    ..MMDIT_SD3
};

pub(crate) const SD3_MEDIUM: Spec = Spec {
    model: Denoiser::Mmdit(MMDIT_SD3),
    encoders: SD3_ENCODERS,
    vae: Vae::Ldm(VAE_16CH),
};

pub(crate) const SD3_TINY: Spec = Spec {
    model: Denoiser::Mmdit(MMDIT_TINY),
    encoders: SD3_TINY_ENCODERS,
    vae: Vae::Ldm(tiny_vae(16, false)),
};

/// SD3.5 Medium (MMDiT-X: q/k RMS norms, a second self-attention in the first 13 x blocks).
pub(crate) const SD35_MEDIUM: Spec = Spec {
    model: Denoiser::Mmdit(MmditConfig {
        pos_embed_max_size: 384,
        qk_norm: true,
        x_self_attn_layers: 13,
        ..MMDIT_SD3
    }),
    ..SD3_MEDIUM
};

pub(crate) const SD35_MEDIUM_TINY: Spec = Spec {
    model: Denoiser::Mmdit(MmditConfig {
        qk_norm: true,
        x_self_attn_layers: 1,
        ..MMDIT_TINY
    }),
    ..SD3_TINY
};

/// SD3.5 Large (38 blocks, q/k RMS norms).
pub(crate) const SD35_LARGE: Spec = Spec {
    model: Denoiser::Mmdit(MmditConfig {
        depth: 38,
        hidden_size: 64 * 38,
        qk_norm: true,
        ..MMDIT_SD3
    }),
    ..SD3_MEDIUM
};

pub(crate) const SD35_LARGE_TINY: Spec = Spec {
    model: Denoiser::Mmdit(MmditConfig {
        depth: 3,
        qk_norm: true,
        ..MMDIT_TINY
    }),
    ..SD3_TINY
};

// ---- Flux.1 and Chroma ------------------------------------------------------------------------

const FLUX_DEV: FluxConfig = FluxConfig {
    in_channels: 16,
    out_channels: 16,
    patch_size: 2,
    vec_in_dim: Some(768),
    context_in_dim: 4096,
    hidden_size: 3072,
    mlp_ratio: 4,
    num_heads: 24,
    depth: 19,
    depth_single_blocks: 38,
    guidance_embed: true,
    distilled_guidance: None,
    flux2: false,
};

const FLUX_TINY: FluxConfig = FluxConfig {
    vec_in_dim: Some(TINY_CLIP_L.hidden_size),
    context_in_dim: TINY_T5.d_model,
    hidden_size: 32,
    num_heads: 2,
    depth: 2,
    depth_single_blocks: 2,
    ..FLUX_DEV
};

const FLUX_ENCODERS: &[Encoder] = &[Encoder::Clip(CLIP_L), Encoder::T5(T5_XXL)];
const FLUX_TINY_ENCODERS: &[Encoder] = &[Encoder::Clip(TINY_CLIP_L), Encoder::T5(TINY_T5)];

pub(crate) const FLUX: Spec = Spec {
    model: Denoiser::Flux(FLUX_DEV),
    encoders: FLUX_ENCODERS,
    vae: Vae::Ldm(VAE_16CH),
};

pub(crate) const FLUX_TINY_SPEC: Spec = Spec {
    model: Denoiser::Flux(FLUX_TINY),
    encoders: FLUX_TINY_ENCODERS,
    vae: Vae::Ldm(tiny_vae(16, false)),
};

pub(crate) const FLUX_SCHNELL: Spec = Spec {
    model: Denoiser::Flux(FluxConfig {
        guidance_embed: false,
        ..FLUX_DEV
    }),
    ..FLUX
};

pub(crate) const FLUX_SCHNELL_TINY: Spec = Spec {
    model: Denoiser::Flux(FluxConfig {
        guidance_embed: false,
        ..FLUX_TINY
    }),
    ..FLUX_TINY_SPEC
};

/// Flux.1 Fill: the image, the masked image and the 8×8-packed mask (16 + 16 + 64 channels).
pub(crate) const FLUX_FILL: Spec = Spec {
    model: Denoiser::Flux(FluxConfig {
        in_channels: 96,
        ..FLUX_DEV
    }),
    ..FLUX
};

pub(crate) const FLUX_FILL_TINY: Spec = Spec {
    model: Denoiser::Flux(FluxConfig {
        in_channels: 96,
        ..FLUX_TINY
    }),
    ..FLUX_TINY_SPEC
};

pub(crate) const CHROMA: Spec = Spec {
    model: Denoiser::Flux(FluxConfig {
        vec_in_dim: None,
        guidance_embed: false,
        distilled_guidance: Some(5120),
        ..FLUX_DEV
    }),
    encoders: &[Encoder::T5(T5_XXL)],
    vae: Vae::Ldm(VAE_16CH),
};

pub(crate) const CHROMA_TINY: Spec = Spec {
    model: Denoiser::Flux(FluxConfig {
        vec_in_dim: None,
        guidance_embed: false,
        distilled_guidance: Some(48),
        ..FLUX_TINY
    }),
    encoders: &[Encoder::T5(TINY_T5)],
    vae: Vae::Ldm(tiny_vae(16, false)),
};

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
        Encoder::Llm(tiny_llm("llama", LLAMA_8B)),
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

pub(crate) const LUMINA2_TINY: Spec = Spec {
    model: Denoiser::Lumina(LuminaConfig {
        dim: 32,
        n_layers: 2,
        n_refiner_layers: 1,
        n_heads: 4,
        n_kv_heads: 4,
        ffn_dim: 64,
        in_channels: 16,
        patch_size: 2,
        cap_feat_dim: 32,
        adaln_dim: 16,
        z_image: false,
    }),
    encoders: &[Encoder::Llm(tiny_llm("gemma2_2b", GEMMA2_2B)), TINY_SPIECE],
    vae: Vae::Ldm(tiny_vae(16, false)),
};

// ---- the later language models used as text encoders ------------------------------------------

/// Mistral Small 3 24B (Flux 2 dev), text only.
pub(crate) const MISTRAL3_24B: LlmConfig = LlmConfig {
    name: "mistral3_24b",
    vocab_size: 131_072,
    hidden_size: 5120,
    intermediate_size: 32768,
    num_layers: 40,
    num_heads: 32,
    num_kv_heads: 8,
    ..LLAMA_8B
};

/// Qwen3 4B (Z-Image, Flux 2 Klein 4B).
pub(crate) const QWEN3_4B: LlmConfig = LlmConfig {
    name: "qwen3_4b",
    vocab_size: 151_936,
    hidden_size: 2560,
    intermediate_size: 9728,
    num_layers: 36,
    num_heads: 32,
    num_kv_heads: 8,
    qk_norm: true,
    ..LLAMA_8B
};

/// Qwen3 8B (Flux 2 Klein 9B), which keeps its output head.
pub(crate) const QWEN3_8B: LlmConfig = LlmConfig {
    name: "qwen3_8b",
    hidden_size: 4096,
    intermediate_size: 12288,
    lm_head: true,
    ..QWEN3_4B
};

/// LLaVA-LLaMA-3 8B as HunyuanVideo's ComfyUI text encoder holds it (128,320 tokens).
pub(crate) const LLAMA_HUNYUAN: LlmConfig = LlmConfig {
    vocab_size: 128_320,
    ..LLAMA_8B
};

/// ByT5-small (HunyuanVideo 1.5's glyph encoder).
pub(crate) const BYT5_SMALL: T5Config = T5Config {
    name: "byt5_small",
    d_model: 1472,
    d_ff: 3584,
    d_kv: 64,
    num_heads: 6,
    num_layers: 12,
    vocab_size: 384,
    relative_attention_num_buckets: 32,
    bias_every_layer: false,
};

const TINY_BYT5: T5Config = T5Config {
    name: "byt5_small",
    ..TINY_T5
};

// ---- Flux 2 ------------------------------------------------------------------------------------

/// Flux 2's autoencoder: 32 latent channels, quant convs, a batch norm over the packed latent.
pub(crate) const VAE_FLUX2: VaeConfig = VaeConfig {
    z_channels: 32,
    use_quant_conv: true,
    batch_norm_latent: true,
    ..VAE_SD
};

const TINY_VAE_FLUX2: VaeConfig = VaeConfig {
    batch_norm_latent: true,
    ..tiny_vae(32, true)
};

const FLUX2_DEV_DIT: FluxConfig = FluxConfig {
    in_channels: 128,
    out_channels: 128,
    patch_size: 1,
    vec_in_dim: None,
    context_in_dim: 15360,
    hidden_size: 6144,
    mlp_ratio: 3,
    num_heads: 48,
    depth: 8,
    depth_single_blocks: 48,
    guidance_embed: true,
    distilled_guidance: None,
    flux2: true,
};

const FLUX2_TINY_DIT: FluxConfig = FluxConfig {
    context_in_dim: 3 * 32,
    hidden_size: 32,
    num_heads: 2,
    depth: 2,
    depth_single_blocks: 2,
    ..FLUX2_DEV_DIT
};

/// Flux 2 dev (32B; Mistral Small 3 24B).
pub(crate) const FLUX2_DEV: Spec = Spec {
    model: Denoiser::Flux(FLUX2_DEV_DIT),
    encoders: &[Encoder::Llm(MISTRAL3_24B)],
    vae: Vae::Ldm(VAE_FLUX2),
};

pub(crate) const FLUX2_DEV_TINY: Spec = Spec {
    model: Denoiser::Flux(FLUX2_TINY_DIT),
    encoders: &[Encoder::Llm(tiny_llm("mistral3_24b", MISTRAL3_24B))],
    vae: Vae::Ldm(TINY_VAE_FLUX2),
};

/// Flux 2 Klein 4B (step-distilled, no guidance embedder; Qwen3 4B).
pub(crate) const FLUX2_KLEIN_4B: Spec = Spec {
    model: Denoiser::Flux(FluxConfig {
        context_in_dim: 3 * 2560,
        hidden_size: 3072,
        num_heads: 24,
        depth: 5,
        depth_single_blocks: 20,
        guidance_embed: false,
        ..FLUX2_DEV_DIT
    }),
    encoders: &[Encoder::Llm(QWEN3_4B)],
    vae: Vae::Ldm(VAE_FLUX2),
};

pub(crate) const FLUX2_KLEIN_4B_TINY: Spec = Spec {
    model: Denoiser::Flux(FluxConfig {
        depth: 1,
        depth_single_blocks: 3,
        guidance_embed: false,
        ..FLUX2_TINY_DIT
    }),
    encoders: &[Encoder::Llm(tiny_llm("qwen3_4b", QWEN3_4B))],
    vae: Vae::Ldm(TINY_VAE_FLUX2),
};

/// Flux 2 Klein 9B (Qwen3 8B).
pub(crate) const FLUX2_KLEIN_9B: Spec = Spec {
    model: Denoiser::Flux(FluxConfig {
        context_in_dim: 3 * 4096,
        hidden_size: 4096,
        num_heads: 32,
        depth: 8,
        depth_single_blocks: 24,
        guidance_embed: false,
        ..FLUX2_DEV_DIT
    }),
    encoders: &[Encoder::Llm(QWEN3_8B)],
    vae: Vae::Ldm(VAE_FLUX2),
};

pub(crate) const FLUX2_KLEIN_9B_TINY: Spec = Spec {
    model: Denoiser::Flux(FluxConfig {
        depth: 2,
        depth_single_blocks: 3,
        guidance_embed: false,
        ..FLUX2_TINY_DIT
    }),
    encoders: &[Encoder::Llm(tiny_llm("qwen3_8b", QWEN3_8B))],
    vae: Vae::Ldm(TINY_VAE_FLUX2),
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

pub(crate) const Z_IMAGE_TINY: Spec = Spec {
    model: Denoiser::Lumina(LuminaConfig {
        dim: 32,
        n_layers: 2,
        n_refiner_layers: 1,
        n_heads: 4,
        n_kv_heads: 4,
        ffn_dim: 64,
        in_channels: 16,
        patch_size: 2,
        cap_feat_dim: 32,
        adaln_dim: 16,
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
    Encoder::Llm(tiny_llm("llama", LLAMA_HUNYUAN)),
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
const VAE_LTX: LtxVaeConfig = LtxVaeConfig {
    base_channels: 128,
    latent_channels: 128,
    patch_size: 4,
    encoder_layers: &[4, 6, 6, 2, 2],
    decoder_layers: &[5, 5, 5, 5],
};

const TINY_VAE_LTX: LtxVaeConfig = LtxVaeConfig {
    base_channels: 2,
    latent_channels: 8,
    patch_size: 4,
    encoder_layers: &[1, 1, 1, 1, 1],
    decoder_layers: &[1, 1, 1, 1],
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
