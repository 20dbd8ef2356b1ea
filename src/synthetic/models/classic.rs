//! Synthetic models of the architectures up to Flux.1: SD1.x, SD2.x, SDXL, the SDXL refiner,
//! SD3/SD3.5, Flux.1 and Chroma (a Flux derivative).

use super::*;

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
