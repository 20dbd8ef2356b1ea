//! Descriptions of each architecture as ComfyUI/ldm builds its modules: the hyper-parameters
//! that decide every key and shape, at full size and at test size.

use crate::model::Arch;

/// ldm `openaimodel.UNetModel` hyper-parameters (the ones that decide keys and shapes).
pub(super) struct UnetConfig {
    pub(super) in_channels: usize,
    pub(super) out_channels: usize,
    pub(super) model_channels: usize,
    pub(super) channel_mult: &'static [usize],
    pub(super) num_res_blocks: usize,
    /// Transformer depth after each input ResBlock (`num_res_blocks` per level); 0 = no attention.
    pub(super) transformer_depth: &'static [usize],
    /// Transformer depth of the middle block.
    pub(super) transformer_depth_middle: usize,
    /// Transformer depth after each output ResBlock (`num_res_blocks + 1` per level, deepest
    /// level first, as the output blocks are built).
    pub(super) transformer_depth_output: &'static [usize],
    pub(super) context_dim: usize,
    /// Linear (2-D) `proj_in`/`proj_out` instead of 1x1 convolutions.
    pub(super) use_linear_in_transformer: bool,
    /// Size of the pooled/size conditioning vector (`label_emb`), SDXL only.
    pub(super) adm_in_channels: Option<usize>,
}

/// HF `CLIPTextModel` configuration, as ComfyUI holds it under `<name>.transformer.`.
pub(super) struct ClipTextConfig {
    pub(super) name: &'static str,
    pub(super) hidden_size: usize,
    pub(super) intermediate_size: usize,
    pub(super) num_hidden_layers: usize,
    pub(super) vocab_size: usize,
    pub(super) max_position_embeddings: usize,
    pub(super) projection_dim: usize,
}

/// HF T5 encoder configuration (gated-GELU feed-forward), as ComfyUI holds it.
pub(super) struct T5Config {
    pub(super) name: &'static str,
    pub(super) d_model: usize,
    pub(super) d_ff: usize,
    pub(super) d_kv: usize,
    pub(super) num_heads: usize,
    pub(super) num_layers: usize,
    pub(super) vocab_size: usize,
    pub(super) relative_attention_num_buckets: usize,
}

/// ldm `AutoencoderKL` configuration.
pub(super) struct VaeConfig {
    pub(super) ch: usize,
    pub(super) ch_mult: &'static [usize],
    pub(super) num_res_blocks: usize,
    pub(super) in_channels: usize,
    pub(super) out_ch: usize,
    pub(super) z_channels: usize,
    pub(super) double_z: bool,
    pub(super) use_quant_conv: bool,
}

/// SD3 MMDiT configuration (ComfyUI `mmdit.MMDiT`).
pub(super) struct MmditConfig {
    pub(super) depth: usize,
    /// Width of the joint blocks (64 × depth in every released SD3).
    pub(super) hidden_size: usize,
    pub(super) patch_size: usize,
    pub(super) in_channels: usize,
    pub(super) out_channels: usize,
    pub(super) adm_in_channels: usize,
    pub(super) context_dim: usize,
    pub(super) pos_embed_max_size: usize,
    pub(super) mlp_ratio: usize,
}

/// Flux configuration (ComfyUI `flux.model.Flux`).
pub(super) struct FluxConfig {
    pub(super) in_channels: usize,
    pub(super) out_channels: usize,
    pub(super) patch_size: usize,
    pub(super) vec_in_dim: usize,
    pub(super) context_in_dim: usize,
    pub(super) hidden_size: usize,
    pub(super) mlp_ratio: usize,
    pub(super) num_heads: usize,
    pub(super) depth: usize,
    pub(super) depth_single_blocks: usize,
    pub(super) guidance_embed: bool,
}

/// The denoiser of an architecture.
pub(super) enum Denoiser {
    Unet(UnetConfig),
    Mmdit(MmditConfig),
    Flux(FluxConfig),
}

/// Everything needed to lay out one architecture.
pub(super) struct ArchConfig {
    pub(super) model: Denoiser,
    pub(super) clips: Vec<ClipTextConfig>,
    pub(super) t5: Option<T5Config>,
    pub(super) vae: VaeConfig,
}

const CLIP_L: ClipTextConfig = ClipTextConfig {
    name: "clip_l",
    hidden_size: 768,
    intermediate_size: 3072,
    num_hidden_layers: 12,
    vocab_size: 49408,
    max_position_embeddings: 77,
    projection_dim: 768,
};

const CLIP_H: ClipTextConfig = ClipTextConfig {
    name: "clip_h",
    hidden_size: 1024,
    intermediate_size: 4096,
    num_hidden_layers: 24,
    vocab_size: 49408,
    max_position_embeddings: 77,
    projection_dim: 1024,
};

const CLIP_G: ClipTextConfig = ClipTextConfig {
    name: "clip_g",
    hidden_size: 1280,
    intermediate_size: 5120,
    num_hidden_layers: 32,
    vocab_size: 49408,
    max_position_embeddings: 77,
    projection_dim: 1280,
};

const T5_XXL: T5Config = T5Config {
    name: "t5xxl",
    d_model: 4096,
    d_ff: 10240,
    d_kv: 64,
    num_heads: 64,
    num_layers: 24,
    vocab_size: 32128,
    relative_attention_num_buckets: 32,
};

/// The SD/SDXL autoencoder (4 latent channels, with quant convs).
const VAE_SD: VaeConfig = VaeConfig {
    ch: 128,
    ch_mult: &[1, 2, 4, 4],
    num_res_blocks: 2,
    in_channels: 3,
    out_ch: 3,
    z_channels: 4,
    double_z: true,
    use_quant_conv: true,
};

/// The SD3/Flux autoencoder (16 latent channels, no quant convs).
const VAE_16CH: VaeConfig = VaeConfig {
    z_channels: 16,
    use_quant_conv: false,
    ..VAE_SD
};

fn sd15_unet(context_dim: usize, use_linear: bool) -> UnetConfig {
    UnetConfig {
        in_channels: 4,
        out_channels: 4,
        model_channels: 320,
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

pub(super) fn arch_config(arch: Arch) -> ArchConfig {
    match arch {
        Arch::Sd15 => ArchConfig {
            model: Denoiser::Unet(sd15_unet(768, false)),
            clips: vec![CLIP_L],
            t5: None,
            vae: VAE_SD,
        },
        Arch::Sd2 => ArchConfig {
            model: Denoiser::Unet(sd15_unet(1024, true)),
            clips: vec![CLIP_H],
            t5: None,
            vae: VAE_SD,
        },
        Arch::Sdxl => ArchConfig {
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
            clips: vec![CLIP_L, CLIP_G],
            t5: None,
            vae: VAE_SD,
        },
        Arch::SdxlRefiner => ArchConfig {
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
            clips: vec![CLIP_G],
            t5: None,
            vae: VAE_SD,
        },
        Arch::Sd3 => ArchConfig {
            model: Denoiser::Mmdit(MmditConfig {
                depth: 24,
                hidden_size: 64 * 24,
                patch_size: 2,
                in_channels: 16,
                out_channels: 16,
                adm_in_channels: 2048,
                context_dim: 4096,
                pos_embed_max_size: 192,
                mlp_ratio: 4,
            }),
            clips: vec![CLIP_L, CLIP_G],
            t5: Some(T5_XXL),
            vae: VAE_16CH,
        },
        Arch::Flux | Arch::FluxSchnell => ArchConfig {
            model: Denoiser::Flux(FluxConfig {
                in_channels: 16,
                out_channels: 16,
                patch_size: 2,
                vec_in_dim: 768,
                context_in_dim: 4096,
                hidden_size: 3072,
                mlp_ratio: 4,
                num_heads: 24,
                depth: 19,
                depth_single_blocks: 38,
                guidance_embed: arch == Arch::Flux,
            }),
            clips: vec![CLIP_L],
            t5: Some(T5_XXL),
            vae: VAE_16CH,
        },
    }
}

/// The same architectures at a size that fits in a test: every kind of key and conversion of the
/// real model, but narrow layers, fewer repeats and a small vocabulary. Unlike [`shrink`], the
/// shapes stay consistent with each other (q/k/v fuse into a `3·d` projection, heads divide the
/// width, a UNet's `adm_in_channels` is the pooled text width plus the size embeddings), so
/// other implementations' converters (diffusers, ComfyUI) accept them.
pub(super) fn tiny_arch_config(arch: Arch) -> ArchConfig {
    const VOCAB: usize = 1000;
    let clip = |name, hidden: usize, layers| ClipTextConfig {
        name,
        hidden_size: hidden,
        intermediate_size: hidden * 2,
        num_hidden_layers: layers,
        vocab_size: VOCAB,
        max_position_embeddings: 77,
        projection_dim: hidden,
    };
    let (clip_l, clip_h, clip_g) = (
        clip("clip_l", 32, 2),
        clip("clip_h", 48, 3),
        clip("clip_g", 64, 3),
    );
    let t5 = T5Config {
        name: "t5xxl",
        d_model: 32,
        d_ff: 64,
        d_kv: 8,
        num_heads: 4,
        num_layers: 2,
        vocab_size: VOCAB,
        relative_attention_num_buckets: 32,
    };
    let vae = |z_channels, use_quant_conv| VaeConfig {
        ch: 8,
        ch_mult: &[1, 2],
        num_res_blocks: 1,
        in_channels: 3,
        out_ch: 3,
        z_channels,
        double_z: true,
        use_quant_conv,
    };
    // SD1/SD2 keep four levels of two ResBlocks: the block count is what tells them apart.
    let sd_unet = |context_dim, use_linear| UnetConfig {
        model_channels: 4,
        context_dim,
        use_linear_in_transformer: use_linear,
        ..sd15_unet(context_dim, use_linear)
    };
    // SDXL's pooled input: the OpenCLIP-G projection plus six 256-wide size embeddings; the
    // refiner has five (no crop embedding pair, an aesthetic score instead).
    match arch {
        Arch::Sd15 => ArchConfig {
            model: Denoiser::Unet(sd_unet(clip_l.hidden_size, false)),
            clips: vec![clip_l],
            t5: None,
            vae: vae(4, true),
        },
        Arch::Sd2 => ArchConfig {
            model: Denoiser::Unet(sd_unet(clip_h.hidden_size, true)),
            clips: vec![clip_h],
            t5: None,
            vae: vae(4, true),
        },
        Arch::Sdxl => ArchConfig {
            model: Denoiser::Unet(UnetConfig {
                in_channels: 4,
                out_channels: 4,
                model_channels: 4,
                channel_mult: &[1, 2, 4],
                num_res_blocks: 2,
                transformer_depth: &[0, 0, 1, 1, 2, 2],
                transformer_depth_middle: 2,
                transformer_depth_output: &[2, 2, 2, 1, 1, 1, 0, 0, 0],
                context_dim: clip_l.hidden_size + clip_g.hidden_size,
                use_linear_in_transformer: true,
                adm_in_channels: Some(clip_g.projection_dim + 6 * 256),
            }),
            clips: vec![clip_l, clip_g],
            t5: None,
            vae: vae(4, true),
        },
        Arch::SdxlRefiner => ArchConfig {
            model: Denoiser::Unet(UnetConfig {
                in_channels: 4,
                out_channels: 4,
                model_channels: 4,
                channel_mult: &[1, 2, 4, 4],
                num_res_blocks: 2,
                transformer_depth: &[0, 0, 1, 1, 1, 1, 0, 0],
                transformer_depth_middle: 1,
                transformer_depth_output: &[0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                context_dim: clip_g.hidden_size,
                use_linear_in_transformer: true,
                adm_in_channels: Some(clip_g.projection_dim + 5 * 256),
            }),
            clips: vec![clip_g],
            t5: None,
            vae: vae(4, true),
        },
        Arch::Sd3 => ArchConfig {
            model: Denoiser::Mmdit(MmditConfig {
                depth: 2,
                hidden_size: 32,
                patch_size: 2,
                in_channels: 16,
                out_channels: 16,
                adm_in_channels: clip_l.projection_dim + clip_g.projection_dim,
                context_dim: t5.d_model,
                pos_embed_max_size: 8,
                mlp_ratio: 4,
            }),
            clips: vec![clip_l, clip_g],
            t5: Some(t5),
            vae: vae(16, false),
        },
        Arch::Flux | Arch::FluxSchnell => ArchConfig {
            model: Denoiser::Flux(FluxConfig {
                in_channels: 16,
                out_channels: 16,
                patch_size: 2,
                vec_in_dim: clip_l.hidden_size,
                context_in_dim: t5.d_model,
                hidden_size: 32,
                mlp_ratio: 4,
                num_heads: 2,
                depth: 2,
                depth_single_blocks: 2,
                guidance_embed: arch == Arch::Flux,
            }),
            clips: vec![clip_l],
            t5: Some(t5),
            vae: vae(16, false),
        },
    }
}
