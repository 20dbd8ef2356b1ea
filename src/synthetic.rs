//! Realistic synthetic models, built from a description of each architecture, with no downloads.
//!
//! Tests, benchmarks and demos of the save path need full-size model components with the exact key
//! names, shapes and dtypes ComfyUI holds in memory, but real weights are gigabytes behind licences
//! and network access. This module describes every supported architecture the way ComfyUI/ldm
//! builds its modules (model channels, channel multipliers, transformer depths, hidden sizes, layer
//! counts, VAE channels...) and expands that description into state-dict layouts
//! ([`shapes`]). [`build`] then fills them with seeded pseudo-random values, fast enough to make a
//! full SD1.5 in seconds, and [`shrink`] caps every dimension so "tiny" models keep every key name
//! of the real architecture while costing almost nothing.
//!
//! Values are cheap uniform noise (weights in ±[0.001, 0.05), norm weights near 1.0, CLIP
//! `logit_scale` = ln 100), never zero, and reproducible: each tensor (and each chunk of a large
//! tensor) has its own generator seeded from the model seed, the component and the key, so results
//! do not depend on thread scheduling.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use rayon::prelude::*;

use crate::arch::Arch;
use crate::components::{ComponentKind, ComponentShapes, Components, TensorInfo, TensorMap};
use crate::dtype::{candle_dtype, file_dtype, Dtype};
use crate::error::{Error, Result};

/// The value every CLIP `logit_scale` gets: ln(100), what trained CLIP models converge to.
pub const LOGIT_SCALE: f32 = 4.6055;

/// Elements generated from one RNG stream; large tensors are split so they fill in parallel.
const CHUNK: usize = 1 << 16;

// ---------------------------------------------------------------------------------------------
// Architecture descriptions
// ---------------------------------------------------------------------------------------------

/// ldm `openaimodel.UNetModel` hyper-parameters (the ones that decide keys and shapes).
struct UnetConfig {
    in_channels: usize,
    out_channels: usize,
    model_channels: usize,
    channel_mult: &'static [usize],
    num_res_blocks: usize,
    /// Transformer depth after each input ResBlock (`num_res_blocks` per level); 0 = no attention.
    transformer_depth: &'static [usize],
    /// Transformer depth of the middle block.
    transformer_depth_middle: usize,
    /// Transformer depth after each output ResBlock (`num_res_blocks + 1` per level, deepest
    /// level first, as the output blocks are built).
    transformer_depth_output: &'static [usize],
    context_dim: usize,
    /// Linear (2-D) `proj_in`/`proj_out` instead of 1x1 convolutions.
    use_linear_in_transformer: bool,
    /// Size of the pooled/size conditioning vector (`label_emb`), SDXL only.
    adm_in_channels: Option<usize>,
}

/// HF `CLIPTextModel` configuration, as ComfyUI holds it under `<name>.transformer.`.
struct ClipTextConfig {
    name: &'static str,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    projection_dim: usize,
}

/// HF T5 encoder configuration (gated-GELU feed-forward), as ComfyUI holds it.
struct T5Config {
    name: &'static str,
    d_model: usize,
    d_ff: usize,
    d_kv: usize,
    num_heads: usize,
    num_layers: usize,
    vocab_size: usize,
    relative_attention_num_buckets: usize,
}

/// ldm `AutoencoderKL` configuration.
struct VaeConfig {
    ch: usize,
    ch_mult: &'static [usize],
    num_res_blocks: usize,
    in_channels: usize,
    out_ch: usize,
    z_channels: usize,
    double_z: bool,
    use_quant_conv: bool,
}

/// SD3 MMDiT configuration (ComfyUI `mmdit.MMDiT`).
struct MmditConfig {
    depth: usize,
    /// Width of the joint blocks (64 × depth in every released SD3).
    hidden_size: usize,
    patch_size: usize,
    in_channels: usize,
    out_channels: usize,
    adm_in_channels: usize,
    context_dim: usize,
    pos_embed_max_size: usize,
    mlp_ratio: usize,
}

/// Flux configuration (ComfyUI `flux.model.Flux`).
struct FluxConfig {
    in_channels: usize,
    out_channels: usize,
    patch_size: usize,
    vec_in_dim: usize,
    context_in_dim: usize,
    hidden_size: usize,
    mlp_ratio: usize,
    num_heads: usize,
    depth: usize,
    depth_single_blocks: usize,
    guidance_embed: bool,
}

/// The denoiser of an architecture.
enum Denoiser {
    Unet(UnetConfig),
    Mmdit(MmditConfig),
    Flux(FluxConfig),
}

/// Everything needed to lay out one architecture.
struct ArchConfig {
    model: Denoiser,
    clips: Vec<ClipTextConfig>,
    t5: Option<T5Config>,
    vae: VaeConfig,
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

fn arch_config(arch: Arch) -> ArchConfig {
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
fn tiny_arch_config(arch: Arch) -> ArchConfig {
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

// ---------------------------------------------------------------------------------------------
// Layout expansion
// ---------------------------------------------------------------------------------------------

/// A state dict under construction: key -> shape/dtype, with helpers for common module types.
struct Dict {
    dtype: Dtype,
    map: BTreeMap<String, TensorInfo>,
}

impl Dict {
    fn new(dtype: Dtype) -> Self {
        Self {
            dtype,
            map: BTreeMap::new(),
        }
    }

    fn add(&mut self, key: impl Into<String>, shape: &[usize]) {
        self.add_typed(key, shape, self.dtype);
    }

    fn add_typed(&mut self, key: impl Into<String>, shape: &[usize], dtype: Dtype) {
        self.map
            .insert(key.into(), TensorInfo::new(shape.to_vec(), dtype));
    }

    /// `nn.Linear(inp, out)`.
    fn linear(&mut self, p: &str, inp: usize, out: usize, bias: bool) {
        self.add(format!("{p}.weight"), &[out, inp]);
        if bias {
            self.add(format!("{p}.bias"), &[out]);
        }
    }

    /// `nn.Conv2d(inp, out, k)` with bias.
    fn conv(&mut self, p: &str, inp: usize, out: usize, k: usize) {
        self.add(format!("{p}.weight"), &[out, inp, k, k]);
        self.add(format!("{p}.bias"), &[out]);
    }

    /// A LayerNorm/GroupNorm with affine weight and bias.
    fn norm(&mut self, p: &str, dim: usize) {
        self.add(format!("{p}.weight"), &[dim]);
        self.add(format!("{p}.bias"), &[dim]);
    }
}

/// ldm `ResBlock` (no scale-shift norm): GroupNorm, conv, time embedding, GroupNorm, conv, skip.
fn unet_resblock(d: &mut Dict, p: &str, ch: usize, out: usize, emb: usize) {
    d.norm(&format!("{p}.in_layers.0"), ch);
    d.conv(&format!("{p}.in_layers.2"), ch, out, 3);
    d.linear(&format!("{p}.emb_layers.1"), emb, out, true);
    d.norm(&format!("{p}.out_layers.0"), out);
    d.conv(&format!("{p}.out_layers.3"), out, out, 3);
    if ch != out {
        d.conv(&format!("{p}.skip_connection"), ch, out, 1);
    }
}

/// ldm `SpatialTransformer` with `depth` `BasicTransformerBlock`s (GEGLU feed-forward, ×4).
fn unet_transformer(d: &mut Dict, p: &str, ch: usize, depth: usize, cfg: &UnetConfig) {
    let inner = ch;
    d.norm(&format!("{p}.norm"), ch);
    if cfg.use_linear_in_transformer {
        d.linear(&format!("{p}.proj_in"), ch, inner, true);
        d.linear(&format!("{p}.proj_out"), inner, ch, true);
    } else {
        d.conv(&format!("{p}.proj_in"), ch, inner, 1);
        d.conv(&format!("{p}.proj_out"), inner, ch, 1);
    }
    let ff = inner * 4;
    for i in 0..depth {
        let b = format!("{p}.transformer_blocks.{i}");
        for (attn, ctx) in [("attn1", inner), ("attn2", cfg.context_dim)] {
            d.linear(&format!("{b}.{attn}.to_q"), inner, inner, false);
            d.linear(&format!("{b}.{attn}.to_k"), ctx, inner, false);
            d.linear(&format!("{b}.{attn}.to_v"), ctx, inner, false);
            d.linear(&format!("{b}.{attn}.to_out.0"), inner, inner, true);
        }
        d.linear(&format!("{b}.ff.net.0.proj"), inner, ff * 2, true);
        d.linear(&format!("{b}.ff.net.2"), ff, inner, true);
        for n in ["norm1", "norm2", "norm3"] {
            d.norm(&format!("{b}.{n}"), inner);
        }
    }
}

/// ldm `UNetModel.__init__`, block by block.
fn unet_layout(cfg: &UnetConfig, d: &mut Dict) {
    let mc = cfg.model_channels;
    let emb = mc * 4;
    d.linear("time_embed.0", mc, emb, true);
    d.linear("time_embed.2", emb, emb, true);
    if let Some(adm) = cfg.adm_in_channels {
        d.linear("label_emb.0.0", adm, emb, true);
        d.linear("label_emb.0.2", emb, emb, true);
    }

    d.conv("input_blocks.0.0", cfg.in_channels, mc, 3);
    let mut skip_chans = vec![mc];
    let mut ch = mc;
    let mut block = 1;
    let mut depths = cfg.transformer_depth.iter().copied();
    for (level, &mult) in cfg.channel_mult.iter().enumerate() {
        for _ in 0..cfg.num_res_blocks {
            let out = mult * mc;
            unet_resblock(d, &format!("input_blocks.{block}.0"), ch, out, emb);
            ch = out;
            let depth = depths.next().unwrap_or(0);
            if depth > 0 {
                unet_transformer(d, &format!("input_blocks.{block}.1"), ch, depth, cfg);
            }
            skip_chans.push(ch);
            block += 1;
        }
        if level + 1 != cfg.channel_mult.len() {
            d.conv(&format!("input_blocks.{block}.0.op"), ch, ch, 3);
            skip_chans.push(ch);
            block += 1;
        }
    }

    unet_resblock(d, "middle_block.0", ch, ch, emb);
    if cfg.transformer_depth_middle > 0 {
        unet_transformer(d, "middle_block.1", ch, cfg.transformer_depth_middle, cfg);
        unet_resblock(d, "middle_block.2", ch, ch, emb);
    } else {
        unet_resblock(d, "middle_block.1", ch, ch, emb);
    }

    let mut depths = cfg.transformer_depth_output.iter().copied();
    let mut block = 0;
    for (level, &mult) in cfg.channel_mult.iter().enumerate().rev() {
        for i in 0..=cfg.num_res_blocks {
            let skip = skip_chans.pop().unwrap_or(0);
            let out = mc * mult;
            let p = format!("output_blocks.{block}");
            unet_resblock(d, &format!("{p}.0"), ch + skip, out, emb);
            ch = out;
            let mut layer = 1;
            let depth = depths.next().unwrap_or(0);
            if depth > 0 {
                unet_transformer(d, &format!("{p}.{layer}"), ch, depth, cfg);
                layer += 1;
            }
            if level > 0 && i == cfg.num_res_blocks {
                d.conv(&format!("{p}.{layer}.conv"), ch, ch, 3);
            }
            block += 1;
        }
    }

    d.norm("out.0", ch);
    d.conv("out.2", mc, cfg.out_channels, 3);
}

/// ComfyUI `mmdit.MMDiT` (SD3): the last context block is pre-only.
fn mmdit_layout(cfg: &MmditConfig, d: &mut Dict) {
    let h = cfg.hidden_size;
    let p = cfg.patch_size;
    let n_pos = cfg.pos_embed_max_size * cfg.pos_embed_max_size;
    d.add("pos_embed", &[1, n_pos, h]);
    d.add("x_embedder.proj.weight", &[h, cfg.in_channels, p, p]);
    d.add("x_embedder.proj.bias", &[h]);
    d.linear("t_embedder.mlp.0", 256, h, true);
    d.linear("t_embedder.mlp.2", h, h, true);
    d.linear("y_embedder.mlp.0", cfg.adm_in_channels, h, true);
    d.linear("y_embedder.mlp.2", h, h, true);
    d.linear("context_embedder", cfg.context_dim, h, true);
    let mlp = h * cfg.mlp_ratio;
    for i in 0..cfg.depth {
        for side in ["context_block", "x_block"] {
            let b = format!("joint_blocks.{i}.{side}");
            let pre_only = side == "context_block" && i + 1 == cfg.depth;
            d.linear(&format!("{b}.attn.qkv"), h, 3 * h, true);
            if pre_only {
                d.linear(&format!("{b}.adaLN_modulation.1"), h, 2 * h, true);
            } else {
                d.linear(&format!("{b}.attn.proj"), h, h, true);
                d.linear(&format!("{b}.mlp.fc1"), h, mlp, true);
                d.linear(&format!("{b}.mlp.fc2"), mlp, h, true);
                d.linear(&format!("{b}.adaLN_modulation.1"), h, 6 * h, true);
            }
        }
    }
    d.linear("final_layer.linear", h, p * p * cfg.out_channels, true);
    d.linear("final_layer.adaLN_modulation.1", h, 2 * h, true);
}

/// ComfyUI `flux.model.Flux`: double-stream then single-stream blocks with RMS q/k norms.
fn flux_layout(cfg: &FluxConfig, d: &mut Dict) {
    let h = cfg.hidden_size;
    let head_dim = h / cfg.num_heads;
    let mlp = h * cfg.mlp_ratio;
    let pp = cfg.patch_size * cfg.patch_size;
    d.linear("img_in", cfg.in_channels * pp, h, true);
    d.linear("time_in.in_layer", 256, h, true);
    d.linear("time_in.out_layer", h, h, true);
    d.linear("vector_in.in_layer", cfg.vec_in_dim, h, true);
    d.linear("vector_in.out_layer", h, h, true);
    if cfg.guidance_embed {
        d.linear("guidance_in.in_layer", 256, h, true);
        d.linear("guidance_in.out_layer", h, h, true);
    }
    d.linear("txt_in", cfg.context_in_dim, h, true);
    for i in 0..cfg.depth {
        for s in ["img", "txt"] {
            let b = format!("double_blocks.{i}.{s}");
            d.linear(&format!("{b}_mod.lin"), h, 6 * h, true);
            d.linear(&format!("{b}_attn.qkv"), h, 3 * h, true);
            d.add(format!("{b}_attn.norm.query_norm.scale"), &[head_dim]);
            d.add(format!("{b}_attn.norm.key_norm.scale"), &[head_dim]);
            d.linear(&format!("{b}_attn.proj"), h, h, true);
            d.linear(&format!("{b}_mlp.0"), h, mlp, true);
            d.linear(&format!("{b}_mlp.2"), mlp, h, true);
        }
    }
    for i in 0..cfg.depth_single_blocks {
        let b = format!("single_blocks.{i}");
        d.linear(&format!("{b}.linear1"), h, 3 * h + mlp, true);
        d.linear(&format!("{b}.linear2"), h + mlp, h, true);
        d.add(format!("{b}.norm.query_norm.scale"), &[head_dim]);
        d.add(format!("{b}.norm.key_norm.scale"), &[head_dim]);
        d.linear(&format!("{b}.modulation.lin"), h, 3 * h, true);
    }
    d.linear("final_layer.linear", h, pp * cfg.out_channels, true);
    d.linear("final_layer.adaLN_modulation.1", h, 2 * h, true);
}

/// HF CLIP text model under `<name>.transformer.`, plus the `logit_scale` ComfyUI keeps (F32).
fn clip_layout(cfg: &ClipTextConfig, d: &mut Dict) {
    let n = cfg.name;
    let h = cfg.hidden_size;
    let t = format!("{n}.transformer.text_model");
    d.add_typed(format!("{n}.logit_scale"), &[], Dtype::F32);
    d.add(
        format!("{t}.embeddings.token_embedding.weight"),
        &[cfg.vocab_size, h],
    );
    d.add(
        format!("{t}.embeddings.position_embedding.weight"),
        &[cfg.max_position_embeddings, h],
    );
    for i in 0..cfg.num_hidden_layers {
        let l = format!("{t}.encoder.layers.{i}");
        d.norm(&format!("{l}.layer_norm1"), h);
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            d.linear(&format!("{l}.self_attn.{proj}"), h, h, true);
        }
        d.norm(&format!("{l}.layer_norm2"), h);
        d.linear(&format!("{l}.mlp.fc1"), h, cfg.intermediate_size, true);
        d.linear(&format!("{l}.mlp.fc2"), cfg.intermediate_size, h, true);
    }
    d.norm(&format!("{t}.final_layer_norm"), h);
    d.linear(
        &format!("{n}.transformer.text_projection"),
        h,
        cfg.projection_dim,
        false,
    );
}

/// HF T5 encoder (v1.1: gated GELU, no biases, relative attention bias in the first block only).
fn t5_layout(cfg: &T5Config, d: &mut Dict) {
    let n = cfg.name;
    let dm = cfg.d_model;
    let inner = cfg.num_heads * cfg.d_kv;
    d.add_typed(format!("{n}.logit_scale"), &[], Dtype::F32);
    d.add(
        format!("{n}.transformer.shared.weight"),
        &[cfg.vocab_size, dm],
    );
    for i in 0..cfg.num_layers {
        let b = format!("{n}.transformer.encoder.block.{i}.layer");
        for w in ["q", "k", "v"] {
            d.linear(&format!("{b}.0.SelfAttention.{w}"), dm, inner, false);
        }
        d.linear(&format!("{b}.0.SelfAttention.o"), inner, dm, false);
        if i == 0 {
            d.add(
                format!("{b}.0.SelfAttention.relative_attention_bias.weight"),
                &[cfg.relative_attention_num_buckets, cfg.num_heads],
            );
        }
        d.add(format!("{b}.0.layer_norm.weight"), &[dm]);
        d.linear(&format!("{b}.1.DenseReluDense.wi_0"), dm, cfg.d_ff, false);
        d.linear(&format!("{b}.1.DenseReluDense.wi_1"), dm, cfg.d_ff, false);
        d.linear(&format!("{b}.1.DenseReluDense.wo"), cfg.d_ff, dm, false);
        d.add(format!("{b}.1.layer_norm.weight"), &[dm]);
    }
    d.add(
        format!("{n}.transformer.encoder.final_layer_norm.weight"),
        &[dm],
    );
}

/// ldm `ResnetBlock` of the autoencoder.
fn vae_resblock(d: &mut Dict, p: &str, inp: usize, out: usize) {
    d.norm(&format!("{p}.norm1"), inp);
    d.conv(&format!("{p}.conv1"), inp, out, 3);
    d.norm(&format!("{p}.norm2"), out);
    d.conv(&format!("{p}.conv2"), out, out, 3);
    if inp != out {
        d.conv(&format!("{p}.nin_shortcut"), inp, out, 1);
    }
}

/// ldm `Encoder`/`Decoder` middle: ResnetBlock, single-head 1x1-conv attention, ResnetBlock.
fn vae_mid(d: &mut Dict, p: &str, ch: usize) {
    vae_resblock(d, &format!("{p}.mid.block_1"), ch, ch);
    d.norm(&format!("{p}.mid.attn_1.norm"), ch);
    for c in ["q", "k", "v", "proj_out"] {
        d.conv(&format!("{p}.mid.attn_1.{c}"), ch, ch, 1);
    }
    vae_resblock(d, &format!("{p}.mid.block_2"), ch, ch);
}

/// ldm `AutoencoderKL`: encoder, decoder and (SD/SDXL only) the quant convs.
fn vae_layout(cfg: &VaeConfig, d: &mut Dict) {
    let levels = cfg.ch_mult.len();
    // Encoder.
    d.conv("encoder.conv_in", cfg.in_channels, cfg.ch, 3);
    let mut block_in = cfg.ch;
    for (i, &mult) in cfg.ch_mult.iter().enumerate() {
        let block_out = cfg.ch * mult;
        for b in 0..cfg.num_res_blocks {
            vae_resblock(
                d,
                &format!("encoder.down.{i}.block.{b}"),
                block_in,
                block_out,
            );
            block_in = block_out;
        }
        if i + 1 != levels {
            d.conv(
                &format!("encoder.down.{i}.downsample.conv"),
                block_in,
                block_in,
                3,
            );
        }
    }
    vae_mid(d, "encoder", block_in);
    d.norm("encoder.norm_out", block_in);
    let z_out = if cfg.double_z { 2 } else { 1 } * cfg.z_channels;
    d.conv("encoder.conv_out", block_in, z_out, 3);

    // Decoder.
    let mut block_in = cfg.ch * cfg.ch_mult.last().copied().unwrap_or(1);
    d.conv("decoder.conv_in", cfg.z_channels, block_in, 3);
    vae_mid(d, "decoder", block_in);
    for (i, &mult) in cfg.ch_mult.iter().enumerate().rev() {
        let block_out = cfg.ch * mult;
        for b in 0..=cfg.num_res_blocks {
            vae_resblock(d, &format!("decoder.up.{i}.block.{b}"), block_in, block_out);
            block_in = block_out;
        }
        if i != 0 {
            d.conv(
                &format!("decoder.up.{i}.upsample.conv"),
                block_in,
                block_in,
                3,
            );
        }
    }
    d.norm("decoder.norm_out", block_in);
    d.conv("decoder.conv_out", block_in, cfg.out_ch, 3);

    if cfg.use_quant_conv {
        d.conv("quant_conv", z_out, z_out, 1);
        d.conv("post_quant_conv", cfg.z_channels, cfg.z_channels, 1);
    }
}

/// Every key, shape and dtype of the model, text encoders and VAE of `arch`, exactly as ComfyUI
/// holds them in memory.
///
/// Dtypes are the reference's CPU defaults: denoiser F32, text encoders F16 (except each
/// `*.logit_scale`, F32), VAE F32. [`Arch::FluxSchnell`] is [`Arch::Flux`] without the
/// `guidance_in.*` keys.
pub fn shapes(arch: Arch) -> ComponentShapes {
    expand(&arch_config(arch))
}

/// Every key, shape and dtype of the test-sized model of `arch` (see [`SyntheticOptions::tiny`]):
/// the real model's kinds of keys at a few hundred kilobytes, with consistent shapes.
pub fn tiny_shapes(arch: Arch) -> ComponentShapes {
    expand(&tiny_arch_config(arch))
}

fn expand(cfg: &ArchConfig) -> ComponentShapes {
    let mut model = Dict::new(Dtype::F32);
    match &cfg.model {
        Denoiser::Unet(u) => unet_layout(u, &mut model),
        Denoiser::Mmdit(m) => mmdit_layout(m, &mut model),
        Denoiser::Flux(f) => flux_layout(f, &mut model),
    }
    let mut clip = Dict::new(Dtype::F16);
    for c in &cfg.clips {
        clip_layout(c, &mut clip);
    }
    if let Some(t5) = &cfg.t5 {
        t5_layout(t5, &mut clip);
    }
    let mut vae = Dict::new(Dtype::F32);
    vae_layout(&cfg.vae, &mut vae);

    let mut s = ComponentShapes::default();
    s.set(ComponentKind::Model, model.map);
    s.set(ComponentKind::Clip, clip.map);
    s.set(ComponentKind::Vae, vae.map);
    s
}

/// The same components with every dimension capped at `max_dim`, for fast "tiny" models.
///
/// Every key and every tensor's rank and dtype are kept, so a tiny model exercises exactly the same
/// key handling as the real one. A cap of 0 is treated as 1 so no non-empty tensor becomes empty;
/// a dimension that is already 0 stays 0.
pub fn shrink(shapes: &ComponentShapes, max_dim: usize) -> ComponentShapes {
    let cap = max_dim.max(1);
    let mut out = ComponentShapes::default();
    for kind in ComponentKind::ALL {
        if let Some(map) = shapes.get(kind) {
            out.set(
                kind,
                map.iter()
                    .map(|(k, info)| {
                        let shape = info.shape.iter().map(|&d| d.min(cap)).collect();
                        (k.clone(), TensorInfo::new(shape, info.dtype))
                    })
                    .collect(),
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Value generation
// ---------------------------------------------------------------------------------------------

/// How to build a synthetic model.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticOptions {
    /// The architecture whose key names and shapes are generated.
    pub arch: Arch,
    /// Seed of all values; the same seed gives bit-identical tensors.
    pub seed: u64,
    /// Cap every dimension at this size (see [`shrink`]); `None` builds the full-size model.
    pub max_dim: Option<usize>,
    /// Build the test-sized model ([`tiny_shapes`]) instead of the full-size one.
    pub tiny: bool,
    /// Dtype for every floating-point tensor instead of the reference defaults; integer tensors
    /// keep theirs.
    pub dtype: Option<DType>,
}

impl SyntheticOptions {
    /// Full-size model of `arch`, seed 0, reference dtypes.
    pub fn new(arch: Arch) -> Self {
        Self {
            arch,
            seed: 0,
            max_dim: None,
            tiny: false,
            dtype: None,
        }
    }

    /// Sets the seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The test-sized model: every kind of key of the architecture, consistent shapes, a few
    /// hundred kilobytes ([`tiny_shapes`]).
    pub fn tiny(mut self) -> Self {
        self.tiny = true;
        self
    }

    /// Caps every dimension at `max_dim` (a tiny model with all key names).
    pub fn with_max_dim(mut self, max_dim: usize) -> Self {
        self.max_dim = Some(max_dim);
        self
    }

    /// Overrides the dtype of every floating-point tensor.
    pub fn with_dtype(mut self, dtype: DType) -> Self {
        self.dtype = Some(dtype);
        self
    }
}

/// Builds every tensor of the synthetic model described by `opts` on `device`.
///
/// # Errors
/// [`Error::InvalidInput`] for `max_dim == Some(0)` or a non-float `dtype` override;
/// [`Error::UnsupportedDtype`] for a dtype candle cannot hold; [`Error::Candle`] when a tensor
/// cannot be created on the device (out of memory, say).
pub fn build(opts: &SyntheticOptions, device: &Device) -> Result<Components> {
    let full = if opts.tiny {
        tiny_shapes(opts.arch)
    } else {
        shapes(opts.arch)
    };
    let shapes = match opts.max_dim {
        Some(0) => {
            return Err(Error::InvalidInput(
                "synthetic max_dim must be at least 1".into(),
            ))
        }
        Some(m) => shrink(&full, m),
        None => full,
    };
    build_from_shapes(&shapes, opts.seed, opts.dtype, device)
}

/// Builds tensors for any given layout (see [`build`] for the values and errors).
///
/// `dtype`, when given, replaces the dtype of every floating-point tensor; integer tensors get small
/// positive integers in their own dtype.
pub fn build_from_shapes(
    shapes: &ComponentShapes,
    seed: u64,
    dtype: Option<DType>,
    device: &Device,
) -> Result<Components> {
    if let Some(d) = dtype {
        if !d.is_float() {
            return Err(Error::InvalidInput(format!(
                "synthetic dtype override must be a floating-point dtype, got {d:?}"
            )));
        }
    }
    let jobs: Vec<(ComponentKind, &String, &TensorInfo)> = ComponentKind::ALL
        .into_iter()
        .filter_map(|kind| shapes.get(kind).map(|m| (kind, m)))
        .flat_map(|(kind, m)| m.iter().map(move |(k, info)| (kind, k, info)))
        .collect();
    let tensors: Vec<(ComponentKind, String, Tensor)> = jobs
        .into_par_iter()
        .map(|(kind, key, info)| {
            let t = make_tensor(seed, kind, key, info, dtype, device)?;
            Ok((kind, key.clone(), t))
        })
        .collect::<Result<_>>()?;

    let mut maps: BTreeMap<ComponentKind, TensorMap> = BTreeMap::new();
    for (kind, key, t) in tensors {
        maps.entry(kind).or_default().insert(key, t);
    }
    let mut c = Components::default();
    for kind in ComponentKind::ALL {
        if shapes.get(kind).is_some() {
            c.set(kind, maps.remove(&kind).unwrap_or_default());
        }
    }
    Ok(c)
}

/// What a tensor's values should look like.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Init {
    /// Small noise around 0.
    Weight,
    /// Small noise around 1 (norm gains).
    NormWeight,
    /// The constant [`LOGIT_SCALE`].
    LogitScale,
}

fn init_for(key: &str) -> Init {
    let leaf = key.rsplit('.').next().unwrap_or(key);
    if leaf == "logit_scale" {
        Init::LogitScale
    } else if (key.contains("norm") || key.contains("ln_"))
        && (key.ends_with(".weight") || key.ends_with(".scale"))
    {
        Init::NormWeight
    } else {
        Init::Weight
    }
}

/// FNV-1a over the parts, finished with splitmix64: a stable, well-mixed per-tensor seed.
fn tensor_seed(seed: u64, kind: ComponentKind, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separator so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    eat(&seed.to_le_bytes());
    eat(kind.name().as_bytes());
    eat(key.as_bytes());
    splitmix64(h)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn chunk_rng(tseed: u64, chunk: usize) -> SmallRng {
    SmallRng::seed_from_u64(splitmix64(
        tseed ^ (chunk as u64).wrapping_mul(0xa076_1d64_78bd_642f),
    ))
}

/// A value with magnitude in [0.001, 0.05) and random sign: never zero, even in f16.
#[inline(always)]
fn noise(bits: u32) -> f32 {
    const MIN: f32 = 0.001;
    const SPAN: f32 = 0.049 / (1u32 << 24) as f32;
    let mag = MIN + (bits >> 8) as f32 * SPAN;
    if bits & 1 == 0 {
        mag
    } else {
        -mag
    }
}

/// Fills `out` with values of kind `init` from `rng`.
fn fill_f32(out: &mut [f32], rng: &mut SmallRng, init: Init) {
    let base = match init {
        Init::LogitScale => {
            out.fill(LOGIT_SCALE);
            return;
        }
        Init::NormWeight => 1.0,
        Init::Weight => 0.0,
    };
    let mut pairs = out.chunks_exact_mut(2);
    for pair in &mut pairs {
        let r = rng.next_u64();
        pair[0] = base + noise(r as u32);
        pair[1] = base + noise((r >> 32) as u32);
    }
    for v in pairs.into_remainder() {
        *v = base + noise(rng.next_u32());
    }
}

/// Fills a float buffer chunk by chunk in parallel, converting from f32 with `convert`.
fn gen_float<T, F>(numel: usize, tseed: u64, init: Init, convert: F) -> Vec<T>
where
    T: Copy + Default + Send,
    F: Fn(&mut [T], &[f32]) + Sync,
{
    let mut v = vec![T::default(); numel];
    // One f32 scratch buffer per rayon job, not per chunk (a fresh 256 KiB is an mmap each time).
    v.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each_init(Vec::new, |buf: &mut Vec<f32>, (i, out)| {
            buf.resize(out.len(), 0.0);
            fill_f32(buf, &mut chunk_rng(tseed, i), init);
            convert(out, buf);
        });
    v
}

fn gen_f32(numel: usize, tseed: u64, init: Init) -> Vec<f32> {
    let mut v = vec![0f32; numel];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        fill_f32(out, &mut chunk_rng(tseed, i), init);
    });
    v
}

/// Small positive integers (1..=16) for integer tensors.
fn gen_int<T, F>(numel: usize, tseed: u64, from: F) -> Vec<T>
where
    T: Copy + Default + Send,
    F: Fn(u32) -> T + Sync,
{
    let mut v = vec![T::default(); numel];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(i, out)| {
        let mut rng = chunk_rng(tseed, i);
        for x in out.iter_mut() {
            *x = from(1 + (rng.next_u32() >> 28));
        }
    });
    v
}

fn make_tensor(
    seed: u64,
    kind: ComponentKind,
    key: &str,
    info: &TensorInfo,
    dtype_override: Option<DType>,
    device: &Device,
) -> Result<Tensor> {
    let held = candle_dtype(info.dtype).ok_or_else(|| Error::UnsupportedDtype {
        dtype: info.dtype.to_string(),
        hint: format!(
            "candle cannot hold `{key}` in that dtype; synthetic tensors need one it can"
        ),
    })?;
    let dtype = match dtype_override {
        Some(d) if held.is_float() => d,
        _ => held,
    };
    let tseed = tensor_seed(seed, kind, key);
    let init = init_for(key);
    let n = info.numel();
    let shape = info.shape.clone();
    let t = match dtype {
        DType::F32 => Tensor::from_vec(gen_f32(n, tseed, init), shape, device)?,
        DType::F16 => Tensor::from_vec(
            gen_float(n, tseed, init, |o: &mut [f16], s| o.convert_from_f32_slice(s)),
            shape,
            device,
        )?,
        DType::BF16 => Tensor::from_vec(
            gen_float(n, tseed, init, |o: &mut [bf16], s| {
                o.convert_from_f32_slice(s)
            }),
            shape,
            device,
        )?,
        DType::F64 => Tensor::from_vec(
            gen_float(n, tseed, init, |o: &mut [f64], s| {
                o.iter_mut().zip(s).for_each(|(o, &s)| *o = f64::from(s))
            }),
            shape,
            device,
        )?,
        DType::F8E4M3 => Tensor::from_vec(gen_f32(n, tseed, init), shape, &Device::Cpu)?
            .to_dtype(DType::F8E4M3)?
            .to_device(device)?,
        DType::U8 => Tensor::from_vec(gen_int(n, tseed, |x| x as u8), shape, device)?,
        DType::U32 => Tensor::from_vec(gen_int(n, tseed, |x| x), shape, device)?,
        DType::I16 => Tensor::from_vec(gen_int(n, tseed, |x| x as i16), shape, device)?,
        DType::I32 => Tensor::from_vec(gen_int(n, tseed, |x| x as i32), shape, device)?,
        DType::I64 => Tensor::from_vec(gen_int(n, tseed, i64::from), shape, device)?,
        other => {
            return Err(Error::UnsupportedDtype {
                dtype: file_dtype(other).to_string(),
                hint: format!(
                    "synthetic values for `{key}` can be f32, f16, bf16, f64, f8_e4m3 or an integer type"
                ),
            })
        }
    };
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Human-readable differences between generated and expected layouts (empty when equal).
    fn diff(
        what: &str,
        got: &BTreeMap<String, TensorInfo>,
        want: &BTreeMap<String, TensorInfo>,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (k, w) in want {
            match got.get(k) {
                None => out.push(format!("{what}: missing {k} {:?} {}", w.shape, w.dtype)),
                Some(g) if g != w => out.push(format!(
                    "{what}: {k}: got {:?} {}, want {:?} {}",
                    g.shape, g.dtype, w.shape, w.dtype
                )),
                Some(_) => {}
            }
        }
        for (k, g) in got {
            if !want.contains_key(k) {
                out.push(format!("{what}: extra {k} {:?} {}", g.shape, g.dtype));
            }
        }
        out
    }

    fn params(m: &BTreeMap<String, TensorInfo>) -> u64 {
        m.values().map(|i| i.numel() as u64).sum()
    }

    #[test]
    fn shapes_match_reference_fixtures() {
        let mut problems = Vec::new();
        for (name, arch, _) in crate::testutil::FIXTURES {
            let fx = crate::testutil::expected(&format!("{name}.components"));
            let reference = crate::testutil::component_shapes(name);
            let got = shapes(arch);
            for (field, kind) in [
                ("unet", ComponentKind::Model),
                ("clip", ComponentKind::Clip),
                ("vae", ComponentKind::Vae),
            ] {
                let want = reference.get(kind).cloned().unwrap_or_default();
                let g = got.get(kind).cloned().unwrap_or_default();
                let d = diff(&format!("{name}/{field}"), &g, &want);
                if !d.is_empty() {
                    problems.push(format!(
                        "{name}/{field}: {} difference(s), first ones:",
                        d.len()
                    ));
                    problems.extend(d.into_iter().take(15).map(|l| format!("  {l}")));
                }
                // `<field>_params` is the element count of that fixture list (not the saved
                // file's count in SUMMARY.json, which differs for clip after conversion).
                let want_params = fx[format!("{field}_params")].as_u64().unwrap();
                assert_eq!(params(&want), want_params, "{name}/{field}: fixture count");
                if params(&g) != want_params {
                    problems.push(format!(
                        "{name}/{field}: {} params, reference {want_params}",
                        params(&g)
                    ));
                }
            }
            assert!(got.get(ComponentKind::ClipVision).is_none());
        }
        assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    }

    /// The key with every number replaced by `#`: its kind, whatever the repeat it belongs to.
    fn pattern(key: &str) -> String {
        key.split('.')
            .map(|p| {
                if p.bytes().all(|b| b.is_ascii_digit()) {
                    "#"
                } else {
                    p
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    #[test]
    fn tiny_models_have_every_kind_of_key_and_consistent_shapes() {
        use crate::layout::{self, detect, LayoutKind};
        for arch in Arch::ALL {
            let tiny = tiny_shapes(arch);
            let full = shapes(arch);
            let model = tiny.get(ComponentKind::Model).unwrap();
            assert_eq!(detect::detect_model(model).unwrap(), arch);
            layout::layout(&LayoutKind::Arch(arch), &tiny, arch.default_prediction()).unwrap();
            let mut bytes = 0;
            for kind in ComponentKind::ALL {
                let kinds = |s: &ComponentShapes| -> std::collections::BTreeSet<String> {
                    s.get(kind)
                        .into_iter()
                        .flat_map(|m| m.keys())
                        .map(|k| pattern(k))
                        .collect()
                };
                assert_eq!(kinds(&tiny), kinds(&full), "{arch}/{kind}");
                for (k, info) in tiny.get(kind).into_iter().flatten() {
                    bytes += info.numel() * info.dtype.bitsize() / 8;
                    // Every fused projection splits into equal thirds or more.
                    if k.ends_with("qkv.weight") {
                        assert_eq!(info.shape[0], 3 * info.shape[1], "{k}");
                    }
                }
            }
            assert!(bytes < 2 << 20, "{arch}: {bytes} bytes");
        }
        let flux = tiny_shapes(Arch::Flux);
        let m = flux.get(ComponentKind::Model).unwrap();
        assert_eq!(
            m["single_blocks.0.linear1.weight"].shape,
            vec![3 * 32 + 4 * 32, 32]
        );
        assert_eq!(
            m["double_blocks.0.img_attn.norm.query_norm.scale"].shape,
            vec![16]
        );
    }

    #[test]
    fn schnell_is_flux_without_guidance() {
        let dev = shapes(Arch::Flux);
        let schnell = shapes(Arch::FluxSchnell);
        assert_eq!(
            dev.get(ComponentKind::Clip),
            schnell.get(ComponentKind::Clip)
        );
        assert_eq!(dev.get(ComponentKind::Vae), schnell.get(ComponentKind::Vae));
        let mut expected = dev.get(ComponentKind::Model).cloned().unwrap();
        let removed: Vec<String> = expected
            .keys()
            .filter(|k| k.starts_with("guidance_in."))
            .cloned()
            .collect();
        assert_eq!(removed.len(), 4, "{removed:?}");
        for k in removed {
            expected.remove(&k);
        }
        assert_eq!(schnell.get(ComponentKind::Model), Some(&expected));
    }

    #[test]
    fn shrink_keeps_keys_and_caps_dims() {
        for arch in Arch::ALL {
            let full = shapes(arch);
            let tiny = shrink(&full, 8);
            for kind in ComponentKind::ALL {
                let (Some(f), Some(t)) = (full.get(kind), tiny.get(kind)) else {
                    assert_eq!(full.get(kind).is_some(), tiny.get(kind).is_some());
                    continue;
                };
                assert!(f.keys().eq(t.keys()), "{arch}/{kind}: keys differ");
                for (k, fi) in f {
                    let ti = &t[k];
                    assert_eq!(ti.dtype, fi.dtype, "{k}");
                    assert_eq!(ti.shape.len(), fi.shape.len(), "{k}");
                    for (&a, &b) in ti.shape.iter().zip(&fi.shape) {
                        assert_eq!(a, b.min(8), "{k}: {:?} -> {:?}", fi.shape, ti.shape);
                        assert!(a >= 1, "{k}");
                    }
                }
            }
        }
        // A cap of 0 behaves as 1: no tensor becomes empty.
        let one = shrink(&shapes(Arch::Sd15), 0);
        let m = one.get(ComponentKind::Model).unwrap();
        assert!(m.values().all(|i| i.numel() == 1));
    }

    fn tensor_values(t: &Tensor) -> Vec<f32> {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    fn all_values(c: &Components) -> Vec<(ComponentKind, String, Vec<f32>)> {
        c.iter()
            .flat_map(|(kind, m)| {
                m.iter()
                    .map(move |(k, t)| (kind, k.clone(), tensor_values(t)))
            })
            .collect()
    }

    #[test]
    fn tiny_sd15_builds_fast_with_all_keys_and_no_zero_tensor() {
        let opts = SyntheticOptions::new(Arch::Sd15)
            .with_max_dim(8)
            .with_seed(7);
        let start = Instant::now();
        let c = build(&opts, &Device::Cpu).unwrap();
        let took = start.elapsed();
        assert!(took.as_secs_f64() < 5.0, "tiny sd15 took {took:?}");
        assert_eq!(c.shapes(), shrink(&shapes(Arch::Sd15), 8));
        for (kind, key, vals) in all_values(&c) {
            assert!(vals.iter().any(|&v| v != 0.0), "{kind}/{key} is all zero");
            assert!(vals.iter().all(|v| v.is_finite()), "{kind}/{key}");
            match init_for(&key) {
                Init::LogitScale => assert!(vals.iter().all(|&v| v == LOGIT_SCALE), "{key}"),
                Init::NormWeight => assert!(vals.iter().all(|v| (v - 1.0).abs() <= 0.051), "{key}"),
                Init::Weight => assert!(vals.iter().all(|v| v.abs() <= 0.051), "{key}"),
            }
        }
        let ls = c.tensor(ComponentKind::Clip, "clip_l.logit_scale").unwrap();
        assert_eq!(ls.dims(), &[] as &[usize]);
        assert_eq!(ls.dtype(), DType::F32);
    }

    #[test]
    fn same_seed_same_values_other_seed_other_values() {
        let base = SyntheticOptions::new(Arch::Sdxl).with_max_dim(6);
        let a = all_values(&build(&base.clone().with_seed(1), &Device::Cpu).unwrap());
        let b = all_values(&build(&base.clone().with_seed(1), &Device::Cpu).unwrap());
        let c = all_values(&build(&base.with_seed(2), &Device::Cpu).unwrap());
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.0, y.0);
            assert_eq!(x.1, y.1);
            let (xb, yb): (Vec<u32>, Vec<u32>) = (
                x.2.iter().map(|v| v.to_bits()).collect(),
                y.2.iter().map(|v| v.to_bits()).collect(),
            );
            assert_eq!(xb, yb, "{}: differs for the same seed", x.1);
        }
        let differing = a
            .iter()
            .zip(&c)
            .filter(|(x, y)| !x.1.ends_with("logit_scale") && x.2 != y.2)
            .count();
        let comparable = a.iter().filter(|x| !x.1.ends_with("logit_scale")).count();
        assert_eq!(
            differing, comparable,
            "another seed must change every random tensor"
        );
        // Tensors of one model differ from each other too (the key is part of the seed).
        let q = &a
            .iter()
            .find(|x| x.1.ends_with("attn1.to_q.weight"))
            .unwrap()
            .2;
        let k = &a
            .iter()
            .find(|x| x.1.ends_with("attn1.to_k.weight"))
            .unwrap()
            .2;
        assert_ne!(q, k);
    }

    #[test]
    fn chunked_large_tensor_is_deterministic() {
        let mut m = BTreeMap::new();
        m.insert(
            "big.weight".to_string(),
            TensorInfo::new(vec![3, CHUNK + 17], Dtype::F16),
        );
        let mut s = ComponentShapes::default();
        s.set(ComponentKind::Model, m);
        let a = build_from_shapes(&s, 5, None, &Device::Cpu).unwrap();
        let b = build_from_shapes(&s, 5, None, &Device::Cpu).unwrap();
        assert_eq!(all_values(&a), all_values(&b));
        let v = &all_values(&a)[0].2;
        // Chunks have their own streams: the first and second chunk must not repeat each other.
        assert_ne!(&v[..64], &v[CHUNK..CHUNK + 64]);
        assert!(v.iter().all(|&x| x != 0.0));
    }

    #[test]
    fn dtype_override_applies_to_floats_only() {
        let mut s = shrink(&shapes(Arch::Sd15), 4);
        let mut clip = s.get(ComponentKind::Clip).cloned().unwrap();
        clip.insert(
            "clip_l.transformer.text_model.embeddings.position_ids".into(),
            TensorInfo::new(vec![1, 4], Dtype::I64),
        );
        s.set(ComponentKind::Clip, clip);
        let c = build_from_shapes(&s, 3, Some(DType::BF16), &Device::Cpu).unwrap();
        for (kind, m) in c.iter() {
            for (k, t) in m {
                if k.ends_with("position_ids") {
                    assert_eq!(t.dtype(), DType::I64, "{kind}/{k}");
                    let v = t.flatten_all().unwrap().to_vec1::<i64>().unwrap();
                    assert!(v.iter().all(|&x| (1..=16).contains(&x)), "{v:?}");
                } else {
                    assert_eq!(t.dtype(), DType::BF16, "{kind}/{k}");
                }
            }
        }
        // Through the options too.
        let opts = SyntheticOptions::new(Arch::Sd3)
            .with_max_dim(3)
            .with_dtype(DType::F16);
        let c = build(&opts, &Device::Cpu).unwrap();
        assert!(c
            .iter()
            .all(|(_, m)| m.values().all(|t| t.dtype() == DType::F16)));
    }

    #[test]
    fn bad_options_are_errors() {
        let opts = SyntheticOptions::new(Arch::Sd15).with_max_dim(0);
        assert!(matches!(
            build(&opts, &Device::Cpu),
            Err(Error::InvalidInput(_))
        ));
        let opts = SyntheticOptions::new(Arch::Sd15)
            .with_max_dim(2)
            .with_dtype(DType::U8);
        assert!(matches!(
            build(&opts, &Device::Cpu),
            Err(Error::InvalidInput(_))
        ));
    }

    #[test]
    fn default_options() {
        let o = SyntheticOptions::new(Arch::Flux);
        assert_eq!(o.arch, Arch::Flux);
        assert_eq!(o.seed, 0);
        assert_eq!(o.max_dim, None);
        assert_eq!(o.dtype, None);
    }

    /// Full-size SD1.5 (1.07 B parameters, ~4.3 GB): run with
    /// `cargo test --release --lib synthetic -- --ignored --nocapture`.
    #[test]
    #[ignore = "allocates a full-size model; run explicitly in release mode"]
    fn full_sd15_build_time() {
        let start = Instant::now();
        let c = build(&SyntheticOptions::new(Arch::Sd15), &Device::Cpu).unwrap();
        let took = start.elapsed();
        let params: usize = c
            .iter()
            .flat_map(|(_, m)| m.values())
            .map(|t| t.elem_count())
            .sum();
        println!(
            "full sd15: {params} params, {} bytes, built in {took:?}",
            c.byte_len()
        );
        assert_eq!(params, 859_520_964 + 123_650_305 + 83_653_863);
    }
}
