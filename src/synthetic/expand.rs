//! Expands an architecture description into its state-dict layout: every key, shape and dtype
//! ComfyUI holds in memory.

use std::collections::BTreeMap;

use super::spec::{
    ClipTextConfig, Denoiser, Encoder, FluxConfig, MmditConfig, Spec, T5Config, UnetConfig, Vae,
    VaeConfig,
};
use super::{audio_vae, dit, ltx_vae, ltxav, text, video_vae};
use crate::model::{Arch, ComponentKind, ComponentShapes, Dtype, TensorInfo};

/// A state dict under construction: key -> shape/dtype, with helpers for common module types.
pub(super) struct Dict {
    dtype: Dtype,
    pub(super) map: BTreeMap<String, TensorInfo>,
}

impl Dict {
    pub(super) fn new(dtype: Dtype) -> Self {
        Self {
            dtype,
            map: BTreeMap::new(),
        }
    }

    pub(super) fn add(&mut self, key: impl Into<String>, shape: &[usize]) {
        self.add_typed(key, shape, self.dtype);
    }

    pub(super) fn add_typed(&mut self, key: impl Into<String>, shape: &[usize], dtype: Dtype) {
        self.map
            .insert(key.into(), TensorInfo::new(shape.to_vec(), dtype));
    }

    /// `nn.Linear(inp, out)`.
    pub(super) fn linear(&mut self, p: &str, inp: usize, out: usize, bias: bool) {
        self.add(format!("{p}.weight"), &[out, inp]);
        if bias {
            self.add(format!("{p}.bias"), &[out]);
        }
    }

    /// `nn.Conv2d(inp, out, k)` with bias.
    pub(super) fn conv(&mut self, p: &str, inp: usize, out: usize, k: usize) {
        self.add(format!("{p}.weight"), &[out, inp, k, k]);
        self.add(format!("{p}.bias"), &[out]);
    }

    /// A LayerNorm/GroupNorm with affine weight and bias.
    pub(super) fn norm(&mut self, p: &str, dim: usize) {
        self.add(format!("{p}.weight"), &[dim]);
        self.add(format!("{p}.bias"), &[dim]);
    }

    /// `layers` pre-norm transformer blocks of HF CLIP's (and SigLIP's) encoder under
    /// `<p>.encoder.layers.N`: biased q/k/v/out projections and a two-layer MLP.
    pub(super) fn clip_layers(&mut self, p: &str, layers: usize, h: usize, inter: usize) {
        for i in 0..layers {
            let l = format!("{p}.encoder.layers.{i}");
            self.norm(&format!("{l}.layer_norm1"), h);
            for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                self.linear(&format!("{l}.self_attn.{proj}"), h, h, true);
            }
            self.norm(&format!("{l}.layer_norm2"), h);
            self.linear(&format!("{l}.mlp.fc1"), h, inter, true);
            self.linear(&format!("{l}.mlp.fc2"), inter, h, true);
        }
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
    // One head per block of depth: head_dim = hidden / depth (64 in every release).
    let head_dim = h / cfg.depth.max(1);
    for i in 0..cfg.depth {
        for side in ["context_block", "x_block"] {
            let b = format!("joint_blocks.{i}.{side}");
            let pre_only = side == "context_block" && i + 1 == cfg.depth;
            let attn2 = side == "x_block" && i < cfg.x_self_attn_layers;
            let attns: &[&str] = if attn2 { &["attn", "attn2"] } else { &["attn"] };
            for a in attns {
                d.linear(&format!("{b}.{a}.qkv"), h, 3 * h, true);
                if cfg.qk_norm {
                    d.add(format!("{b}.{a}.ln_q.weight"), &[head_dim]);
                    d.add(format!("{b}.{a}.ln_k.weight"), &[head_dim]);
                }
            }
            if pre_only {
                d.linear(&format!("{b}.adaLN_modulation.1"), h, 2 * h, true);
            } else {
                for a in attns {
                    d.linear(&format!("{b}.{a}.proj"), h, h, true);
                }
                d.linear(&format!("{b}.mlp.fc1"), h, mlp, true);
                d.linear(&format!("{b}.mlp.fc2"), mlp, h, true);
                let mods = if attn2 { 9 } else { 6 };
                d.linear(&format!("{b}.adaLN_modulation.1"), h, mods * h, true);
            }
        }
    }
    d.linear("final_layer.linear", h, p * p * cfg.out_channels, true);
    d.linear("final_layer.adaLN_modulation.1", h, 2 * h, true);
}

/// ComfyUI `flux.model.Flux`: double-stream then single-stream blocks with RMS q/k norms. Chroma
/// (`distilled_guidance`) takes its modulation from one approximator instead of per-block layers
/// and has no time, vector or guidance embedders; Flux 2 shares one modulation per stream kind
/// across the blocks, gates its feed-forwards and has no biases.
fn flux_layout(cfg: &FluxConfig, d: &mut Dict) {
    let h = cfg.hidden_size;
    let head_dim = h / cfg.num_heads;
    let mlp = h * cfg.mlp_ratio;
    // Flux 2's gated SiLU feed-forward projects to twice the hidden width.
    let mlp_in = if cfg.flux2 { 2 * mlp } else { mlp };
    let pp = cfg.patch_size * cfg.patch_size;
    let per_block_mod = cfg.distilled_guidance.is_none() && !cfg.flux2;
    let bias = !cfg.flux2;
    d.linear("img_in", cfg.in_channels * pp, h, bias);
    if let Some(width) = cfg.distilled_guidance {
        // Approximator input: 16 timestep + 16 guidance + 32 modulation-index frequencies.
        d.linear("distilled_guidance_layer.in_proj", 64, width, true);
        for l in 0..5 {
            let p = format!("distilled_guidance_layer.layers.{l}");
            d.linear(&format!("{p}.in_layer"), width, width, true);
            d.linear(&format!("{p}.out_layer"), width, width, true);
            d.add(
                format!("distilled_guidance_layer.norms.{l}.scale"),
                &[width],
            );
        }
        d.linear("distilled_guidance_layer.out_proj", width, h, true);
    } else {
        d.linear("time_in.in_layer", 256, h, bias);
        d.linear("time_in.out_layer", h, h, bias);
    }
    if let Some(vec_in) = cfg.vec_in_dim {
        d.linear("vector_in.in_layer", vec_in, h, true);
        d.linear("vector_in.out_layer", h, h, true);
    }
    if cfg.guidance_embed {
        d.linear("guidance_in.in_layer", 256, h, bias);
        d.linear("guidance_in.out_layer", h, h, bias);
    }
    d.linear("txt_in", cfg.context_in_dim, h, bias);
    for i in 0..cfg.depth {
        for s in ["img", "txt"] {
            let b = format!("double_blocks.{i}.{s}");
            if per_block_mod {
                d.linear(&format!("{b}_mod.lin"), h, 6 * h, true);
            }
            d.linear(&format!("{b}_attn.qkv"), h, 3 * h, bias);
            d.add(format!("{b}_attn.norm.query_norm.scale"), &[head_dim]);
            d.add(format!("{b}_attn.norm.key_norm.scale"), &[head_dim]);
            d.linear(&format!("{b}_attn.proj"), h, h, bias);
            d.linear(&format!("{b}_mlp.0"), h, mlp_in, bias);
            d.linear(&format!("{b}_mlp.2"), mlp, h, bias);
        }
    }
    for i in 0..cfg.depth_single_blocks {
        let b = format!("single_blocks.{i}");
        d.linear(&format!("{b}.linear1"), h, 3 * h + mlp_in, bias);
        d.linear(&format!("{b}.linear2"), h + mlp, h, bias);
        d.add(format!("{b}.norm.query_norm.scale"), &[head_dim]);
        d.add(format!("{b}.norm.key_norm.scale"), &[head_dim]);
        if per_block_mod {
            d.linear(&format!("{b}.modulation.lin"), h, 3 * h, true);
        }
    }
    d.linear("final_layer.linear", h, pp * cfg.out_channels, bias);
    if cfg.distilled_guidance.is_none() {
        d.linear("final_layer.adaLN_modulation.1", h, 2 * h, bias);
    }
    if cfg.flux2 {
        d.linear("double_stream_modulation_img.lin", h, 6 * h, false);
        d.linear("double_stream_modulation_txt.lin", h, 6 * h, false);
        d.linear("single_stream_modulation.lin", h, 3 * h, false);
    }
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
    d.clip_layers(&t, cfg.num_hidden_layers, h, cfg.intermediate_size);
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
        if i == 0 || cfg.bias_every_layer {
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

/// A convolution of the autoencoder: 2-D, or HunyuanVideo's causal 3-D one (`VideoConv3d`, which
/// wraps the convolution: `….conv.weight`).
fn vae_conv(d: &mut Dict, cfg: &VaeConfig, p: &str, inp: usize, out: usize, k: usize) {
    if cfg.conv3d {
        d.add(format!("{p}.conv.weight"), &[out, inp, k, k, k]);
        d.add(format!("{p}.conv.bias"), &[out]);
    } else {
        d.conv(p, inp, out, k);
    }
}

/// A 1×1 convolution that stays unwrapped (attention, quant convs): 2-D or 3-D.
fn vae_pointwise(d: &mut Dict, cfg: &VaeConfig, p: &str, inp: usize, out: usize) {
    if cfg.conv3d {
        d.add(format!("{p}.weight"), &[out, inp, 1, 1, 1]);
        d.add(format!("{p}.bias"), &[out]);
    } else {
        d.conv(p, inp, out, 1);
    }
}

/// ldm `ResnetBlock` of the autoencoder.
fn vae_resblock(d: &mut Dict, cfg: &VaeConfig, p: &str, inp: usize, out: usize) {
    d.norm(&format!("{p}.norm1"), inp);
    vae_conv(d, cfg, &format!("{p}.conv1"), inp, out, 3);
    d.norm(&format!("{p}.norm2"), out);
    vae_conv(d, cfg, &format!("{p}.conv2"), out, out, 3);
    if inp != out {
        vae_conv(d, cfg, &format!("{p}.nin_shortcut"), inp, out, 1);
    }
}

/// ldm `Encoder`/`Decoder` middle: ResnetBlock, single-head 1x1-conv attention, ResnetBlock.
fn vae_mid(d: &mut Dict, cfg: &VaeConfig, p: &str, ch: usize) {
    vae_resblock(d, cfg, &format!("{p}.mid.block_1"), ch, ch);
    d.norm(&format!("{p}.mid.attn_1.norm"), ch);
    for c in ["q", "k", "v", "proj_out"] {
        vae_pointwise(d, cfg, &format!("{p}.mid.attn_1.{c}"), ch, ch);
    }
    vae_resblock(d, cfg, &format!("{p}.mid.block_2"), ch, ch);
}

/// ldm `AutoencoderKL`: encoder, decoder, the quant convs (SD/SDXL, HunyuanVideo, Flux 2) and
/// Flux 2's latent batch norm.
fn vae_layout(cfg: &VaeConfig, d: &mut Dict) {
    let levels = cfg.ch_mult.len();
    // Encoder.
    vae_conv(d, cfg, "encoder.conv_in", cfg.in_channels, cfg.ch, 3);
    let mut block_in = cfg.ch;
    for (i, &mult) in cfg.ch_mult.iter().enumerate() {
        let block_out = cfg.ch * mult;
        for b in 0..cfg.num_res_blocks {
            let p = format!("encoder.down.{i}.block.{b}");
            vae_resblock(d, cfg, &p, block_in, block_out);
            block_in = block_out;
        }
        if i + 1 != levels {
            let p = format!("encoder.down.{i}.downsample.conv");
            vae_conv(d, cfg, &p, block_in, block_in, 3);
        }
    }
    vae_mid(d, cfg, "encoder", block_in);
    d.norm("encoder.norm_out", block_in);
    let z_out = if cfg.double_z { 2 } else { 1 } * cfg.z_channels;
    vae_conv(d, cfg, "encoder.conv_out", block_in, z_out, 3);

    // Decoder.
    let mut block_in = cfg.ch * cfg.ch_mult.last().copied().unwrap_or(1);
    vae_conv(d, cfg, "decoder.conv_in", cfg.z_channels, block_in, 3);
    vae_mid(d, cfg, "decoder", block_in);
    for (i, &mult) in cfg.ch_mult.iter().enumerate().rev() {
        let block_out = cfg.ch * mult;
        for b in 0..=cfg.num_res_blocks {
            let p = format!("decoder.up.{i}.block.{b}");
            vae_resblock(d, cfg, &p, block_in, block_out);
            block_in = block_out;
        }
        if i != 0 {
            let p = format!("decoder.up.{i}.upsample.conv");
            vae_conv(d, cfg, &p, block_in, block_in, 3);
        }
    }
    d.norm("decoder.norm_out", block_in);
    vae_conv(d, cfg, "decoder.conv_out", block_in, cfg.out_ch, 3);

    if cfg.use_quant_conv {
        vae_pointwise(d, cfg, "quant_conv", z_out, z_out);
        vae_pointwise(d, cfg, "post_quant_conv", cfg.z_channels, cfg.z_channels);
    }
    if cfg.batch_norm_latent {
        // Over the 2×2-packed latent: 4 × z channels, statistics only.
        d.add("bn.running_mean", &[4 * cfg.z_channels]);
        d.add("bn.running_var", &[4 * cfg.z_channels]);
        d.add_typed("bn.num_batches_tracked", &[], Dtype::I64);
    }
}

/// Every key, shape and dtype of the model, text encoders and VAE of `arch`'s default variant,
/// exactly as ComfyUI holds them in memory.
///
/// Dtypes are the reference's CPU defaults: denoiser F32, text encoders F16 (except each
/// `*.logit_scale`, F32, and tokenizer blobs, U8), VAE F32. [`Arch::FluxSchnell`] is
/// [`Arch::Flux`] without the `guidance_in.*` keys.
pub fn shapes(arch: Arch) -> ComponentShapes {
    expand(arch.family().default_variant().full)
}

/// Every key, shape and dtype of the test-sized model of `arch`'s default variant (see
/// [`super::SyntheticOptions::tiny`]): the real model's kinds of keys at a few hundred kilobytes,
/// with consistent shapes.
pub fn tiny_shapes(arch: Arch) -> ComponentShapes {
    expand(arch.family().default_variant().tiny)
}

/// Every key, shape and dtype of one model description.
pub(crate) fn expand(spec: &Spec) -> ComponentShapes {
    let mut model = Dict::new(Dtype::F32);
    match &spec.model {
        Denoiser::Unet(u) => unet_layout(u, &mut model),
        Denoiser::Mmdit(m) => mmdit_layout(m, &mut model),
        Denoiser::Flux(f) => flux_layout(f, &mut model),
        Denoiser::Wan(w) => dit::wan(w, &mut model),
        Denoiser::QwenImage(q) => dit::qwen_image(q, &mut model),
        Denoiser::QwenImage21(q) => dit::qwen_image21(q, &mut model),
        Denoiser::HiDream(h) => dit::hidream(h, &mut model),
        Denoiser::Lumina(l) => dit::lumina(l, &mut model),
        Denoiser::HunyuanVideo(h) => dit::hunyuan_video(h, &mut model),
        Denoiser::Ltxv(l) => dit::ltxv(l, &mut model),
        Denoiser::Ltxav(l) => ltxav::ltxav(l, &mut model),
    }
    let mut clip = Dict::new(Dtype::F16);
    for e in spec.encoders {
        match e {
            Encoder::Clip(c) => clip_layout(c, &mut clip),
            Encoder::T5(t) => t5_layout(t, &mut clip),
            Encoder::Llm(l) => text::llm(l, &mut clip),
            Encoder::Tokenizer { key, bytes } => clip.add_typed(*key, &[*bytes], Dtype::U8),
            Encoder::Projection {
                key,
                in_features,
                out_features,
            } => clip.linear(key, *in_features, *out_features, false),
        }
    }
    let mut vae = Dict::new(Dtype::F32);
    match &spec.vae {
        Vae::Ldm(v) => vae_layout(v, &mut vae),
        Vae::Wan(w) => video_vae::wan(w, &mut vae),
        Vae::Hunyuan15(h) => video_vae::hunyuan15(h, &mut vae),
        Vae::Ltx(l) => ltx_vae::ltx(l, &mut vae),
        Vae::LtxAv(l, _, _) => ltx_vae::ltx(l, &mut vae),
    }

    let mut s = ComponentShapes::default();
    s.set(ComponentKind::Model, model.map);
    s.set(ComponentKind::Clip, clip.map);
    s.set(ComponentKind::Vae, vae.map);
    if let Vae::LtxAv(_, a, v) = &spec.vae {
        let mut audio = Dict::new(Dtype::F32);
        audio_vae::autoencoder(a, &mut audio);
        audio_vae::vocoder(v, &mut audio);
        s.set(ComponentKind::AudioVae, audio.map);
    }
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
