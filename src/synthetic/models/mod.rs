//! The shape description of every synthetic model: one [`Spec`] per variant at full size, as the
//! released checkpoints have it (hyper-parameters from ComfyUI's model detection and the
//! reference fixtures), and one at test size ("tiny": every kind of key of the real model,
//! narrow layers, fewer repeats, a small vocabulary, shapes consistent with each other).
//!
//! The family table ([`crate::family`]) points each variant at its pair of specs. This file
//! holds the text encoders and autoencoders the families share; `classic` the models up to
//! Flux.1, `later` the families after them.

mod classic;
mod flux2;
mod later;
mod ltx2;

use super::spec::*;
pub(crate) use classic::*;
pub(crate) use flux2::*;
pub(crate) use later::*;
pub(crate) use ltx2::*;

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
    vision: Some(Vision::Qwen(QwenVisionConfig {
        hidden_size: 1280,
        intermediate_size: 3420,
        depth: 32,
        patch_size: 14,
        temporal_patch_size: 2,
        spatial_merge_size: 2,
        out_hidden_size: 3584,
    })),
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

pub(super) const VOCAB: usize = 1000;

pub(super) const fn tiny_clip(name: &'static str, hidden: usize, layers: usize) -> ClipTextConfig {
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

pub(super) const TINY_CLIP_L: ClipTextConfig = tiny_clip("clip_l", 32, 2);
pub(super) const TINY_CLIP_H: ClipTextConfig = tiny_clip("clip_h", 48, 3);
pub(super) const TINY_CLIP_G: ClipTextConfig = tiny_clip("clip_g", 64, 3);

pub(super) const TINY_T5: T5Config = T5Config {
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

pub(super) const TINY_UMT5: T5Config = T5Config {
    name: "umt5xxl",
    bias_every_layer: true,
    ..TINY_T5
};

pub(super) const fn tiny_llm(name: &'static str, full: LlmConfig) -> LlmConfig {
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
            Some(Vision::Qwen(_)) => Some(Vision::Qwen(QwenVisionConfig {
                hidden_size: 16,
                intermediate_size: 24,
                depth: 2,
                patch_size: 2,
                temporal_patch_size: 2,
                spatial_merge_size: 2,
                out_hidden_size: 32,
            })),
            Some(Vision::Qwen3(_)) => Some(Vision::Qwen3(Qwen3VisionConfig {
                hidden_size: 16,
                intermediate_size: 24,
                depth: 2,
                patch_size: 2,
                temporal_patch_size: 2,
                spatial_merge_size: 2,
                num_position_embeddings: 16,
                deepstack_mergers: 1,
                out_hidden_size: 32,
            })),
            Some(Vision::Siglip(_)) => Some(Vision::Siglip(SiglipConfig {
                hidden_size: 16,
                intermediate_size: 24,
                num_layers: 2,
                patch_size: 2,
                image_size: 8,
            })),
            None => None,
        },
        ..full
    }
}

/// [`tiny_llm`] for an encoder written as a `llama` text-encoder GGUF (Llama, Mistral 3): the 32
/// query and 8 key/value heads ComfyUI-GGUF's loader undoes llama.cpp's permutation of the
/// projections with, so `split --gguf` works on the test-size model too.
pub(super) const fn tiny_llama(name: &'static str, full: LlmConfig) -> LlmConfig {
    LlmConfig {
        num_heads: 32,
        num_kv_heads: 8,
        head_dim: 4,
        ..tiny_llm(name, full)
    }
}

pub(super) const TINY_SPIECE: Encoder = Encoder::Tokenizer {
    key: "spiece_model",
    bytes: 64,
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

/// Qwen3-VL 8B (Qwen-Image 2.1; ComfyUI `qwen3vl_8b`): Qwen3 8B's language model without the
/// output head ComfyUI's `Llama2_` does not hold, and the vision tower of `QWEN3VL_VISION`.
pub(crate) const QWEN3VL_8B: LlmConfig = LlmConfig {
    name: "qwen3vl_8b",
    lm_head: false,
    vision: Some(Vision::Qwen3(Qwen3VisionConfig {
        hidden_size: 1152,
        intermediate_size: 4304,
        depth: 27,
        patch_size: 16,
        temporal_patch_size: 2,
        spatial_merge_size: 2,
        num_position_embeddings: 2304,
        deepstack_mergers: 3,
        out_hidden_size: 4096,
    })),
    ..QWEN3_8B
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

pub(super) const TINY_BYT5: T5Config = T5Config {
    name: "byt5_small",
    ..TINY_T5
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

pub(super) const fn tiny_vae(z_channels: usize, use_quant_conv: bool) -> VaeConfig {
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
    temporal_kernel: 3,
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

// The released layout (four levels, two residual blocks each, both kinds of resample, the
// decoder's shortcut) at 4 channels, 8 latent channels: diffusers' Wan VAE converter numbers
// the decoder's blocks for exactly that layout.
pub(super) const TINY_VAE_WAN21: WanVaeConfig = WanVaeConfig {
    dim: 4,
    dec_dim: 4,
    z_dim: 8,
    ..VAE_WAN21
};

pub(super) const TINY_VAE_WAN22: WanVaeConfig = WanVaeConfig {
    dim: 4,
    dec_dim: 8,
    dim_mult: &[1, 2, 2],
    num_res_blocks: 1,
    temporal_downsample: &[false, true],
    ..VAE_WAN22
};
