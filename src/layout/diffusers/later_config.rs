//! `config.json` of the later families' diffusers models, read off their tensors' shapes in
//! diffusers naming, as `model_config` does for the classic ones. Head counts, which shapes do
//! not carry, take the released models' head width (128 for the transformers) where it divides
//! the width, and a divisor of it otherwise, so test-sized models load too.

use serde_json::{json, Value};

use super::links::count;
use super::model_config::{dim, Keys, DIFFUSERS_VERSION};
use super::ModelClass;
use crate::error::Result;

/// Attention heads of `head` channels where they divide `width`, else the largest divisor of
/// the width up to 8 (test-sized models).
fn heads_of(width: usize, head: usize) -> (usize, usize) {
    if width.is_multiple_of(head) {
        return (width / head, head);
    }
    let n = (1..=8)
        .rev()
        .find(|n| width.is_multiple_of(*n))
        .unwrap_or(1);
    (n, width / n)
}

/// The config of a later family's transformer or VAE of `class`.
pub(super) fn config(class: ModelClass, keys: &Keys) -> Result<Value> {
    let mut v = match class {
        ModelClass::WanTransformer => wan(keys)?,
        ModelClass::QwenImageTransformer => qwen(keys)?,
        ModelClass::HiDreamTransformer => hidream(keys)?,
        ModelClass::LtxTransformer => ltx(keys)?,
        ModelClass::Ltx2Transformer => ltx2(keys)?,
        ModelClass::HunyuanVideoTransformer => hunyuan(keys)?,
        ModelClass::Lumina2Transformer => lumina2(keys)?,
        ModelClass::ChromaTransformer => chroma(keys)?,
        ModelClass::Flux2Transformer => flux2(keys)?,
        ModelClass::ZImageTransformer => z_image(keys)?,
        ModelClass::WanVae | ModelClass::QwenImageVae => wan_vae(keys)?,
        _ => json!({}),
    };
    v["_class_name"] = json!(class.name());
    v["_diffusers_version"] = json!(DIFFUSERS_VERSION);
    Ok(v)
}

fn wan(keys: &Keys) -> Result<Value> {
    let p = "patch_embedding.weight";
    let dim_ = dim(keys, p, 0)?;
    let patch = [dim(keys, p, 2)?, dim(keys, p, 3)?, dim(keys, p, 4)?];
    let (heads, head_dim) = heads_of(dim_, 128);
    let image = keys.contains_key("condition_embedder.image_embedder.norm1.weight");
    Ok(json!({
        "patch_size": patch,
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "in_channels": dim(keys, p, 1)?,
        "out_channels": dim(keys, "proj_out.weight", 0)? / patch.iter().product::<usize>().max(1),
        "text_dim": dim(keys, "condition_embedder.text_embedder.linear_1.weight", 1)?,
        "freq_dim": dim(keys, "condition_embedder.time_embedder.linear_1.weight", 1)?,
        "ffn_dim": dim(keys, "blocks.0.ffn.net.0.proj.weight", 0)?,
        "num_layers": count(keys.keys(), "blocks"),
        "cross_attn_norm": keys.contains_key("blocks.0.norm2.weight"),
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
        "image_dim": if image { json!(dim(keys, "condition_embedder.image_embedder.norm1.weight", 0)?) } else { Value::Null },
        "added_kv_proj_dim": if image { json!(dim_) } else { Value::Null },
        "rope_max_seq_len": 1024,
        "pos_embed_seq_len": Value::Null,
    }))
}

fn qwen(keys: &Keys) -> Result<Value> {
    let inner = dim(keys, "img_in.weight", 0)?;
    let head = dim(keys, "transformer_blocks.0.attn.norm_q.weight", 0)?;
    Ok(json!({
        "patch_size": 2,
        "in_channels": dim(keys, "img_in.weight", 1)?,
        "out_channels": dim(keys, "proj_out.weight", 0)? / 4,
        "num_layers": count(keys.keys(), "transformer_blocks"),
        "attention_head_dim": head,
        "num_attention_heads": inner / head.max(1),
        "joint_attention_dim": dim(keys, "txt_norm.weight", 0)?,
        "guidance_embeds": false,
        "axes_dims_rope": rope3(head),
    }))
}

/// Rotary axes (time, height, width) summing to the head width, in the released 16:56:56
/// proportion where it fits.
fn rope3(head: usize) -> [usize; 3] {
    let e = head * 7 / 32 * 2;
    [head - 2 * e, e, e]
}

fn hidream(keys: &Keys) -> Result<Value> {
    let inner = dim(keys, "x_embedder.proj.weight", 0)?;
    let head = dim(
        keys,
        "double_stream_blocks.0.block.attn1.q_rms_norm.weight",
        0,
    )?;
    let (heads, head_dim) = heads_of(head, 128);
    let patch = ((dim(keys, "x_embedder.proj.weight", 1)? / 16) as f64).sqrt() as usize;
    let captions = count(keys.keys(), "caption_projection");
    Ok(json!({
        "patch_size": patch.max(1),
        "in_channels": 16,
        "out_channels": dim(keys, "final_layer.linear.weight", 0)? / (patch * patch).max(1),
        "num_layers": count(keys.keys(), "double_stream_blocks"),
        "num_single_layers": count(keys.keys(), "single_stream_blocks"),
        "attention_head_dim": head_dim,
        "num_attention_heads": heads.max(inner / head_dim.max(1)),
        "caption_channels": [dim(keys, "caption_projection.0.linear.weight", 1)?, dim(keys, &format!("caption_projection.{}.linear.weight", captions.saturating_sub(1)), 1)?],
        "text_emb_dim": dim(keys, "p_embedder.pooled_embedder.linear_1.weight", 1)?,
        "num_routed_experts": count(keys.keys(), "double_stream_blocks.0.block.ff_i.experts"),
        "num_activated_experts": 2,
        "axes_dims_rope": [head_dim / 2, head_dim / 2],
        "max_resolution": [128, 128],
        "llama_layers": (0..captions.saturating_sub(1)).collect::<Vec<_>>(),
    }))
}

fn ltx(keys: &Keys) -> Result<Value> {
    let inner = dim(keys, "proj_in.weight", 0)?;
    let (heads, head_dim) = heads_of(inner, 64);
    Ok(json!({
        "in_channels": dim(keys, "proj_in.weight", 1)?,
        "out_channels": dim(keys, "proj_out.weight", 0)?,
        "patch_size": 1,
        "patch_size_t": 1,
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "cross_attention_dim": dim(keys, "transformer_blocks.0.attn2.to_k.weight", 1)?,
        "num_layers": count(keys.keys(), "transformer_blocks"),
        "caption_channels": dim(keys, "caption_projection.linear_1.weight", 1)?,
        "qk_norm": "rms_norm_across_heads",
    }))
}

/// `LTX2VideoTransformer3DModel`: LTX-2.0's (no gated attention, no prompt adaLN); the heads
/// as detection reads them (32 video heads), the audio stream's of 64 channels.
fn ltx2(keys: &Keys) -> Result<Value> {
    let inner = dim(keys, "proj_in.weight", 0)?;
    let audio = dim(keys, "audio_proj_in.weight", 0)?;
    let (heads, head_dim) = heads_of(inner, inner.div_ceil(32).max(1));
    let (audio_heads, audio_head_dim) = heads_of(audio, 64);
    Ok(json!({
        "in_channels": dim(keys, "proj_in.weight", 1)?,
        "out_channels": dim(keys, "proj_out.weight", 0)?,
        "patch_size": 1,
        "patch_size_t": 1,
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "cross_attention_dim": dim(keys, "transformer_blocks.0.attn2.to_k.weight", 1)?,
        "audio_in_channels": dim(keys, "audio_proj_in.weight", 1)?,
        "audio_out_channels": dim(keys, "audio_proj_out.weight", 0)?,
        "audio_num_attention_heads": audio_heads,
        "audio_attention_head_dim": audio_head_dim,
        "audio_cross_attention_dim": dim(keys, "transformer_blocks.0.audio_attn2.to_k.weight", 1)?,
        "num_layers": count(keys.keys(), "transformer_blocks"),
        "caption_channels": dim(keys, "caption_projection.linear_1.weight", 1)?,
        "qk_norm": "rms_norm_across_heads",
        "use_prompt_adaln_single": false,
    }))
}

fn hunyuan(keys: &Keys) -> Result<Value> {
    let p = "x_embedder.proj.weight";
    let inner = dim(keys, p, 0)?;
    let head = dim(keys, "transformer_blocks.0.attn.norm_q.weight", 0)?;
    Ok(json!({
        "in_channels": dim(keys, p, 1)?,
        "out_channels": dim(keys, "proj_out.weight", 0)? / (dim(keys, p, 3)? * dim(keys, p, 4)? * dim(keys, p, 2)?).max(1),
        "num_attention_heads": inner / head.max(1),
        "attention_head_dim": head,
        "num_layers": count(keys.keys(), "transformer_blocks"),
        "num_single_layers": count(keys.keys(), "single_transformer_blocks"),
        "num_refiner_layers": count(keys.keys(), "context_embedder.token_refiner.refiner_blocks"),
        "mlp_ratio": dim(keys, "transformer_blocks.0.ff.net.0.proj.weight", 0)? as f64 / inner as f64,
        "patch_size": dim(keys, p, 3)?,
        "patch_size_t": dim(keys, p, 2)?,
        "qk_norm": "rms_norm",
        "guidance_embeds": keys.contains_key("time_text_embed.guidance_embedder.linear_1.weight"),
        "text_embed_dim": dim(keys, "context_embedder.proj_in.weight", 1)?,
        "pooled_projection_dim": dim(keys, "time_text_embed.text_embedder.linear_1.weight", 1)?,
        "rope_theta": 256.0,
        "rope_axes_dim": rope3(head),
    }))
}

fn lumina2(keys: &Keys) -> Result<Value> {
    let hidden = dim(keys, "x_embedder.weight", 0)?;
    let head = dim(keys, "layers.0.attn.norm_q.weight", 0)?;
    let kv = dim(keys, "layers.0.attn.to_k.weight", 0)?;
    let ffn = dim(keys, "layers.0.feed_forward.linear_1.weight", 0)?;
    let released_ffn = ffn == (4 * hidden).div_ceil(256) * 256;
    let axis = head / 3 / 2 * 2;
    Ok(json!({
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": dim(keys, "x_embedder.weight", 1)? / 4,
        "hidden_size": hidden,
        "num_layers": count(keys.keys(), "layers"),
        "num_refiner_layers": count(keys.keys(), "noise_refiner"),
        "num_attention_heads": hidden / head.max(1),
        "num_kv_heads": kv / head.max(1),
        // The feed-forward width is `4·hidden·multiplier` rounded up to `multiple_of`: the
        // released (256, none) where that gives it, else exact.
        "multiple_of": if released_ffn { 256 } else { 1 },
        "ffn_dim_multiplier": if released_ffn { Value::Null } else { json!((ffn as f64 + 0.5) / (4 * hidden) as f64) },
        "norm_eps": 1e-5,
        "scaling_factor": 1.0,
        "axes_dim_rope": [head - 2 * axis, axis, axis],
        "axes_lens": [300, 512, 512],
        "cap_feat_dim": dim(keys, "time_caption_embed.caption_embedder.0.weight", 0)?,
    }))
}

fn chroma(keys: &Keys) -> Result<Value> {
    let inner = dim(keys, "x_embedder.weight", 0)?;
    let head = dim(keys, "transformer_blocks.0.attn.norm_q.weight", 0)?;
    Ok(json!({
        "patch_size": 1,
        "in_channels": dim(keys, "x_embedder.weight", 1)?,
        "out_channels": dim(keys, "proj_out.weight", 0)?,
        "num_layers": count(keys.keys(), "transformer_blocks"),
        "num_single_layers": count(keys.keys(), "single_transformer_blocks"),
        "attention_head_dim": head,
        "num_attention_heads": inner / head.max(1),
        "joint_attention_dim": dim(keys, "context_embedder.weight", 1)?,
        "axes_dims_rope": rope3(head),
        "approximator_num_channels": dim(keys, "distilled_guidance_layer.in_proj.weight", 1)?,
        "approximator_hidden_dim": dim(keys, "distilled_guidance_layer.in_proj.weight", 0)?,
        "approximator_layers": count(keys.keys(), "distilled_guidance_layer.layers"),
    }))
}

fn flux2(keys: &Keys) -> Result<Value> {
    let inner = dim(keys, "x_embedder.weight", 0)?;
    let head = dim(keys, "transformer_blocks.0.attn.norm_q.weight", 0)?;
    let mlp = dim(keys, "transformer_blocks.0.ff.linear_in.weight", 0)? / 2;
    Ok(json!({
        "patch_size": 1,
        "in_channels": dim(keys, "x_embedder.weight", 1)?,
        "out_channels": dim(keys, "proj_out.weight", 0)?,
        "num_layers": count(keys.keys(), "transformer_blocks"),
        "num_single_layers": count(keys.keys(), "single_transformer_blocks"),
        "attention_head_dim": head,
        "num_attention_heads": inner / head.max(1),
        "joint_attention_dim": dim(keys, "context_embedder.weight", 1)?,
        "timestep_guidance_channels": dim(keys, "time_guidance_embed.timestep_embedder.linear_1.weight", 1)?,
        "mlp_ratio": mlp as f64 / inner as f64,
        "axes_dims_rope": vec![head / 4; 4],
        "rope_theta": 2000,
        "eps": 1e-6,
        "guidance_embeds": keys.contains_key("time_guidance_embed.guidance_embedder.linear_1.weight"),
    }))
}

fn z_image(keys: &Keys) -> Result<Value> {
    let d = dim(keys, "all_x_embedder.2-1.weight", 0)?;
    let head = dim(keys, "layers.0.attention.norm_q.weight", 0)?;
    let axis = head * 3 / 8 / 2 * 2;
    Ok(json!({
        "all_patch_size": [2],
        "all_f_patch_size": [1],
        "in_channels": dim(keys, "all_x_embedder.2-1.weight", 1)? / 4,
        "dim": d,
        "n_layers": count(keys.keys(), "layers"),
        "n_refiner_layers": count(keys.keys(), "noise_refiner"),
        "n_heads": d / head.max(1),
        "n_kv_heads": dim(keys, "layers.0.attention.to_k.weight", 0)? / head.max(1),
        "norm_eps": 1e-5,
        "qk_norm": true,
        "cap_feat_dim": dim(keys, "cap_embedder.0.weight", 0)?,
        "rope_theta": 256.0,
        "t_scale": 1000.0,
        "axes_dims": [head - 2 * axis, axis, axis],
        "axes_lens": [1024, 512, 512],
    }))
}

fn wan_vae(keys: &Keys) -> Result<Value> {
    let base = dim(keys, "encoder.conv_in.weight", 0)?;
    let z = dim(keys, "post_quant_conv.weight", 0)?;
    let levels = count(keys.keys(), "decoder.up_blocks");
    let mult: Vec<usize> = (0..levels)
        .map(|i| {
            let first = count(keys.keys(), "encoder.down_blocks").min(i * 3);
            dim(
                keys,
                &format!("encoder.down_blocks.{first}.conv1.weight"),
                0,
            )
            .map(|c| c / base.max(1))
        })
        .collect::<Result<_>>()?;
    Ok(json!({
        "base_dim": base,
        "z_dim": z,
        "dim_mult": mult,
        "num_res_blocks": 2,
        "attn_scales": [],
        "temperal_downsample": [false, true, true],
        "dropout": 0.0,
    }))
}
