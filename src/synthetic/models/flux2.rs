//! Synthetic Flux 2 models (dev with Mistral Small 3 and its tekken tokenizer, Klein 4B and 9B
//! with Qwen3), full size and tiny.

use super::*;

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
    encoders: &[Encoder::Llm(MISTRAL3_24B), TEKKEN],
    vae: Vae::Ldm(VAE_FLUX2),
};

/// Mistral 3's tokenizer as ComfyUI saves it beside the encoder (`tekken_model`, U8): a
/// synthetic tekken file of the real one's layout (`crate::synthetic::tekken`).
const TEKKEN: Encoder = Encoder::Tokenizer {
    key: "tekken_model",
    bytes: crate::synthetic::tekken::BYTES,
};

const TINY_TEKKEN: Encoder = Encoder::Tokenizer {
    key: "tekken_model",
    bytes: crate::synthetic::tekken::TINY_BYTES,
};

/// Mistral 3 at test size (written as a `llama` text-encoder GGUF).
const TINY_MISTRAL3: LlmConfig = tiny_llama("mistral3_24b", MISTRAL3_24B);

pub(crate) const FLUX2_DEV_TINY: Spec = Spec {
    model: Denoiser::Flux(FLUX2_TINY_DIT),
    encoders: &[Encoder::Llm(TINY_MISTRAL3), TINY_TEKKEN],
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
