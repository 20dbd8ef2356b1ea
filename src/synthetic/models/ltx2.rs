//! LTX-2 (Lightricks' audio-video model, ComfyUI `LTXAV`): the 19B DiT with its text
//! connectors, the Gemma 3 12B text encoder (with its SigLIP tower) and the text-embedding
//! projection ComfyUI's `LTXAVTEModel` holds beside it, and LTX-Video's causal video VAE class
//! in LTX-2's configuration (diffusers' `convert_ltx2_to_diffusers.py`, version 2.0: LTX-Video
//! 0.9.5's stages and widths, no timestep conditioning).
//! The audio VAE and vocoder are loaded by their own node and are not part of the checkpoint
//! ComfyUI saves; the release (`ltx2-19b-release`, as Lightricks publishes the file) holds them
//! beside the denoiser and the video VAE, with the text projection and no Gemma.

use super::*;

/// Gemma 3 12B as ComfyUI's `Gemma3_12B` holds it (`text_encoders/llama.py`
/// `Gemma3_12B_Config`, `GEMMA3_VISION_CONFIG`).
pub(crate) const GEMMA3_12B: LlmConfig = LlmConfig {
    name: "gemma3_12b",
    vocab_size: 262_208,
    hidden_size: 3840,
    intermediate_size: 15360,
    num_layers: 48,
    num_heads: 16,
    num_kv_heads: 8,
    head_dim: 256,
    qkv_bias: false,
    qk_norm: true,
    sandwich_norms: true,
    lm_head: false,
    vision: Some(Vision::Siglip(SiglipConfig {
        hidden_size: 1152,
        intermediate_size: 4304,
        num_layers: 27,
        patch_size: 14,
        image_size: 896,
    })),
};

/// `LTXAVTEModel.text_embedding_projection`: every Gemma layer's hidden state and the
/// embedding's (49 × 3840) projected to 3840, no bias.
const TEXT_PROJECTION: Encoder = Encoder::Projection {
    key: "text_embedding_projection",
    in_features: 3840 * 49,
    out_features: 3840,
};

/// `LTXAVModel`'s defaults (the 19B release): video 32 × 128, audio 32 × 64, Gemma's width
/// into two 2-layer connectors of 30 × 128 with 128 registers.
const LTX2_19B_DIT: LtxavConfig = LtxavConfig {
    video: LtxvConfig {
        num_layers: 48,
        num_heads: 32,
        head_dim: 128,
        in_channels: 128,
        caption_channels: 3840,
        cross_attention_dim: 4096,
    },
    audio_num_heads: 32,
    audio_head_dim: 64,
    audio_in_channels: 128,
    audio_cross_attention_dim: 2048,
    connector_heads: 30,
    connector_head_dim: 128,
    connector_layers: 2,
    connector_registers: 128,
};

/// LTX-2's video VAE: LTX-Video 0.9.5's without the timestep-conditioned decoder.
const VAE_LTX2: LtxVaeConfig = LtxVaeConfig {
    timestep_conditioning: false,
    ..VAE_LTX
};

/// LTX-2 19B (dev and distilled: the same keys).
pub(crate) const LTX2_19B: Spec = Spec {
    model: Denoiser::Ltxav(LTX2_19B_DIT),
    encoders: &[Encoder::Llm(GEMMA3_12B), TEXT_PROJECTION, SPIECE],
    vae: Vae::Ltx(VAE_LTX2),
};

const TINY_GEMMA3: LlmConfig = tiny_llm("gemma3_12b", GEMMA3_12B);

pub(crate) const LTX2_19B_TINY: Spec = Spec {
    model: Denoiser::Ltxav(LtxavConfig {
        // 32 heads: detection reads the head width as `attn2.to_k` rows / 32, as ComfyUI does.
        video: LtxvConfig {
            num_layers: 2,
            num_heads: 32,
            head_dim: 1,
            in_channels: 8,
            caption_channels: TINY_GEMMA3.hidden_size,
            cross_attention_dim: 32,
        },
        audio_num_heads: 2,
        audio_head_dim: 4,
        audio_in_channels: 8,
        audio_cross_attention_dim: 8,
        connector_heads: 4,
        connector_head_dim: 8,
        connector_layers: 1,
        connector_registers: 4,
    }),
    encoders: &[
        Encoder::Llm(TINY_GEMMA3),
        Encoder::Projection {
            key: "text_embedding_projection",
            in_features: TINY_GEMMA3.hidden_size * (TINY_GEMMA3.num_layers + 1),
            out_features: TINY_GEMMA3.hidden_size,
        },
        TINY_SPIECE,
    ],
    vae: Vae::Ltx(LtxVaeConfig {
        timestep_conditioning: false,
        ..TINY_VAE_LTX
    }),
};

/// LTX-2's audio autoencoder: ComfyUI's `CausalAudioAutoencoder` defaults (2 mel channels in
/// and out, 8 latent channels, ch 128 × 1-2-4, two blocks per level).
const AUDIO_VAE: AudioVaeConfig = AudioVaeConfig {
    ch: 128,
    ch_mult: &[1, 2, 4],
    num_res_blocks: 2,
    in_channels: 2,
    out_ch: 2,
    z_channels: 8,
    statistics: 128,
};

/// LTX-2's vocoder: a stereo HiFi-GAN from 1024 channels whose upsampling (6·5·2·2·2 = 240)
/// turns the 16 kHz mel at hop 160 into 24 kHz audio; ComfyUI's default kernel sizes.
const VOCODER: VocoderConfig = VocoderConfig {
    upsample_initial_channel: 1024,
    upsample_rates: &[6, 5, 2, 2, 2],
    upsample_kernel_sizes: &[16, 15, 8, 4, 4],
    resblock_kernel_sizes: &[3, 7, 11],
    stereo: true,
};

/// LTX-2 19B as Lightricks releases the single file: the denoiser, the text projection (no
/// Gemma: it ships apart), the video VAE, the audio VAE and the vocoder.
pub(crate) const LTX2_19B_RELEASE: Spec = Spec {
    model: LTX2_19B.model,
    encoders: &[TEXT_PROJECTION],
    vae: Vae::LtxAv(VAE_LTX2, AUDIO_VAE, VOCODER),
};

pub(crate) const LTX2_19B_RELEASE_TINY: Spec = Spec {
    model: LTX2_19B_TINY.model,
    encoders: &[Encoder::Projection {
        key: "text_embedding_projection",
        in_features: TINY_GEMMA3.hidden_size * (TINY_GEMMA3.num_layers + 1),
        out_features: TINY_GEMMA3.hidden_size,
    }],
    vae: Vae::LtxAv(
        LtxVaeConfig {
            timestep_conditioning: false,
            ..TINY_VAE_LTX
        },
        AudioVaeConfig {
            ch: 4,
            ch_mult: &[1, 2],
            num_res_blocks: 1,
            in_channels: 2,
            out_ch: 2,
            z_channels: 2,
            statistics: 4,
        },
        VocoderConfig {
            upsample_initial_channel: 8,
            upsample_rates: &[2, 2],
            upsample_kernel_sizes: &[4, 4],
            resblock_kernel_sizes: &[3],
            stereo: true,
        },
    ),
};
