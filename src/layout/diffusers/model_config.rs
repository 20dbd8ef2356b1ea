//! `config.json` of one diffusers/transformers model, read off its tensors' shapes in diffusers
//! naming, so the values fit the weights whatever their size.
//!
//! What shapes do not carry (head counts, activations, latent scaling) takes the released models'
//! values; where a test-sized width does not fit those (64-wide heads, 32 norm groups), a divisor
//! of the width is used instead, so the configs stay loadable for any consistent shapes.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::links::count;
use super::unet::{Level, Structure};
use super::{encoder_folders, FolderPlan};
use crate::error::{Error, Result};
use crate::model::Dtype;
use crate::model::TensorInfo;
use crate::model::{Arch, Prediction};

/// `_diffusers_version` written into diffusers configs.
pub(super) const DIFFUSERS_VERSION: &str = "0.32.0";
/// `transformers_version` written into transformers configs.
const TRANSFORMERS_VERSION: &str = "4.46.0";

/// One model's tensors in diffusers naming.
pub(super) type Keys = BTreeMap<String, TensorInfo>;

/// Dimension `i` of tensor `key`, which a config value is read from.
pub(super) fn dim(keys: &Keys, key: &str, i: usize) -> Result<usize> {
    keys.get(key)
        .and_then(|t| t.shape.get(i).copied())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "the config is read from `{key}` (dim {i}), which is missing or too small"
            ))
        })
}

/// Greatest common divisor.
fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Groups of a GroupNorm over all of `channels`: 32 as released, or a divisor of every width.
fn groups(channels: &[usize]) -> usize {
    channels.iter().fold(32, |g, &c| gcd(g, c)).max(1)
}

/// Heads of 64 channels as released, or a divisor of the width up to 8 when 64 does not divide it.
fn heads(width: usize) -> usize {
    if width.is_multiple_of(64) {
        width / 64
    } else {
        gcd(width, 8).max(1)
    }
}

/// An int when all values are equal (the form released configs use), else the list.
fn int_or_list(v: &[usize]) -> Value {
    match v.first() {
        Some(&f) if v.iter().all(|&x| x == f) => json!(f),
        _ => json!(v),
    }
}

/// transformers' `torch_dtype` of the weights.
fn torch_dtype(d: Option<Dtype>) -> Value {
    match d {
        Some(Dtype::F16) => json!("float16"),
        Some(Dtype::BF16) => json!("bfloat16"),
        Some(Dtype::F64) => json!("float64"),
        _ => json!("float32"),
    }
}

pub(super) fn unet(arch: Arch, keys: &Keys, prediction: Prediction) -> Result<Value> {
    let s = Structure::from_diffusers(keys)?;
    let mut channels = Vec::new();
    let mut depths = Vec::new();
    for x in 0..s.down.len() {
        channels.push(dim(
            keys,
            &format!("down_blocks.{x}.resnets.0.conv1.weight"),
            0,
        )?);
        let p = format!("down_blocks.{x}.attentions.0.transformer_blocks");
        depths.push(count(keys.keys(), &p));
    }
    let mid_depth = count(keys.keys(), "mid_block.attentions.0.transformer_blocks");
    // Levels without attention ignore their value, but the mid block reads the last one. Written
    // as the released configs have it: one depth for all when the attentions agree (SD1, SD2, the
    // refiner), else 1 below the attention levels and the mid depth above (SDXL's [1, 2, 10]).
    let attn_depths: Vec<usize> = depths.iter().copied().filter(|&d| d > 0).collect();
    let last_attn = depths.iter().rposition(|&d| d > 0);
    let layers: Vec<usize> = match attn_depths.first() {
        Some(&d) if attn_depths.iter().all(|&x| x == d) && (mid_depth == d || mid_depth == 0) => {
            vec![d; depths.len()]
        }
        _ => depths
            .iter()
            .enumerate()
            .map(|(i, &d)| match d {
                0 if last_attn.is_none_or(|l| i > l) => mid_depth.max(1),
                0 => 1,
                d => d,
            })
            .collect(),
    };
    let attn_channels: Vec<usize> = channels
        .iter()
        .zip(&depths)
        .filter(|(_, &d)| d > 0)
        .map(|(&c, _)| c)
        .collect();
    let head_dim = if arch == Arch::Sd15 {
        // SD1 has 8 heads at every level (diffusers calls the head count `attention_head_dim`).
        json!(attn_channels.iter().fold(8, |h, &c| gcd(h, c)).max(1))
    } else {
        json!(channels.iter().map(|&c| heads(c)).collect::<Vec<_>>())
    };
    let attention = |l: &Level| l.attentions.iter().any(|&a| a);
    let down_types: Vec<&str> = s
        .down
        .iter()
        .map(|l| {
            if attention(l) {
                "CrossAttnDownBlock2D"
            } else {
                "DownBlock2D"
            }
        })
        .collect();
    let up_types: Vec<&str> =
        s.up.iter()
            .map(|l| {
                if attention(l) {
                    "CrossAttnUpBlock2D"
                } else {
                    "UpBlock2D"
                }
            })
            .collect();
    let cross = keys
        .iter()
        .find(|(k, _)| k.ends_with(".attn2.to_k.weight"))
        .and_then(|(_, i)| i.shape.get(1).copied());
    let linear = keys
        .iter()
        .any(|(k, i)| k.ends_with(".proj_in.weight") && i.shape.len() == 2);
    let v_pred = matches!(prediction, Prediction::V | Prediction::VZsnr);
    let mut v = json!({
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "attention_head_dim": head_dim,
        "block_out_channels": channels,
        "center_input_sample": false,
        "cross_attention_dim": cross,
        "down_block_types": down_types,
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": dim(keys, "conv_in.weight", 1)?,
        "layers_per_block": int_or_list(&s.down.iter().map(|l| l.attentions.len()).collect::<Vec<_>>()),
        "mid_block_scale_factor": 1,
        "mid_block_type": if s.mid_attention { "UNetMidBlock2DCrossAttn" } else { "UNetMidBlock2D" },
        "norm_eps": 1e-5,
        "norm_num_groups": groups(&channels),
        "out_channels": dim(keys, "conv_out.weight", 0)?,
        "sample_size": match arch {
            Arch::Sd2 if v_pred => 96,
            Arch::Sdxl | Arch::SdxlRefiner => 128,
            _ => 64,
        },
        "transformer_layers_per_block": int_or_list(&layers),
        "up_block_types": up_types,
        "upcast_attention": arch == Arch::Sd2 && v_pred,
        "use_linear_projection": linear,
    });
    if keys.contains_key("add_embedding.linear_1.weight") {
        v["addition_embed_type"] = json!("text_time");
        v["addition_embed_type_num_heads"] = json!(64);
        v["addition_time_embed_dim"] = json!(256);
        v["projection_class_embeddings_input_dim"] =
            json!(dim(keys, "add_embedding.linear_1.weight", 1)?);
    }
    // diffusers assumes each up level mirrors its down level; say so when it does not.
    let n = s.up.len();
    let reverse: Vec<Vec<usize>> = (0..n)
        .map(|x| {
            (0..s.up[x].attentions.len())
                .map(|i| {
                    count(
                        keys.keys(),
                        &format!("up_blocks.{x}.attentions.{i}.transformer_blocks"),
                    )
                })
                .map(|d| d.max(1))
                .collect()
        })
        .collect();
    let mirrored = reverse.iter().enumerate().all(|(x, r)| {
        n != layers.len()
            || s.up[x]
                .attentions
                .iter()
                .zip(r)
                .all(|(&a, &d)| !a || d == layers[n - 1 - x])
    });
    if !mirrored {
        v["reverse_transformer_layers_per_block"] = json!(reverse);
    }
    Ok(v)
}

pub(super) fn vae(arch: Arch, keys: &Keys) -> Result<Value> {
    let levels = count(keys.keys(), "encoder.down_blocks");
    let channels = (0..levels)
        .map(|i| {
            dim(
                keys,
                &format!("encoder.down_blocks.{i}.resnets.0.conv1.weight"),
                0,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    let (scaling, shift) = match arch {
        Arch::Sd15 | Arch::Sd2 => (0.18215, None),
        Arch::Sdxl | Arch::SdxlRefiner => (0.13025, None),
        Arch::Sd3 => (1.5305, Some(0.0609)),
        Arch::Flux | Arch::FluxSchnell => (0.3611, Some(0.1159)),
        // `configs` refuses the families without diffusers names before this is asked.
        _ => (1.0, None),
    };
    Ok(json!({
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": channels,
        "down_block_types": vec!["DownEncoderBlock2D"; levels],
        "force_upcast": true,
        "in_channels": dim(keys, "encoder.conv_in.weight", 1)?,
        "latent_channels": dim(keys, "decoder.conv_in.weight", 1)?,
        "latents_mean": null,
        "latents_std": null,
        "layers_per_block": count(keys.keys(), "encoder.down_blocks.0.resnets"),
        "mid_block_add_attention": true,
        "norm_num_groups": groups(&channels),
        "out_channels": dim(keys, "decoder.conv_out.weight", 0)?,
        "sample_size": match arch { Arch::Sd15 => 512, Arch::Sd2 => 768, _ => 1024 },
        "scaling_factor": scaling,
        "shift_factor": shift,
        "up_block_types": vec!["UpDecoderBlock2D"; levels],
        "use_post_quant_conv": keys.contains_key("post_quant_conv.weight"),
        "use_quant_conv": keys.contains_key("quant_conv.weight"),
    }))
}

pub(super) fn clip(arch: Arch, plan: &FolderPlan, keys: &Keys) -> Result<Value> {
    let tok = "text_model.embeddings.token_embedding.weight";
    let hidden = dim(keys, tok, 1)?;
    let enc = encoder_folders(arch)
        .iter()
        .find(|(f, _)| *f == plan.folder)
        .map_or("", |(_, e)| e);
    Ok(json!({
        "architectures": [plan.class.name()],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        // OpenAI's CLIP-L uses quick GELU; the OpenCLIP H and bigG encoders plain GELU.
        "hidden_act": if enc == "clip_l" { "quick_gelu" } else { "gelu" },
        "hidden_size": hidden,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": dim(keys, "text_model.encoder.layers.0.mlp.fc1.weight", 0)?,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": dim(keys, "text_model.embeddings.position_embedding.weight", 0)?,
        "model_type": "clip_text_model",
        "num_attention_heads": heads(hidden),
        "num_hidden_layers": count(keys.keys(), "text_model.encoder.layers"),
        "pad_token_id": 1,
        "projection_dim": keys.get(super::text::PROJECTION).map_or(hidden, |i| i.shape[0]),
        "torch_dtype": torch_dtype(keys.get(tok).map(|i| i.dtype)),
        "transformers_version": TRANSFORMERS_VERSION,
        "vocab_size": dim(keys, tok, 0)?,
    }))
}

pub(super) fn t5(keys: &Keys) -> Result<Value> {
    let bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
    let num_heads = dim(keys, bias, 1)?;
    let q = dim(keys, "encoder.block.0.layer.0.SelfAttention.q.weight", 0)?;
    let gated = keys.contains_key("encoder.block.0.layer.1.DenseReluDense.wi_0.weight");
    let wi = if gated { "wi_0" } else { "wi" };
    let layers = count(keys.keys(), "encoder.block");
    Ok(json!({
        "architectures": ["T5EncoderModel"],
        "classifier_dropout": 0.0,
        "d_ff": dim(keys, &format!("encoder.block.0.layer.1.DenseReluDense.{wi}.weight"), 0)?,
        "d_kv": q / num_heads.max(1),
        "d_model": dim(keys, "shared.weight", 1)?,
        "decoder_start_token_id": 0,
        "dense_act_fn": if gated { "gelu_new" } else { "relu" },
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": if gated { "gated-gelu" } else { "relu" },
        "initializer_factor": 1.0,
        "is_encoder_decoder": true,
        "is_gated_act": gated,
        "layer_norm_epsilon": 1e-6,
        "model_type": "t5",
        "num_decoder_layers": layers,
        "num_heads": num_heads,
        "num_layers": layers,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": dim(keys, bias, 0)?,
        "tie_word_embeddings": false,
        "torch_dtype": torch_dtype(keys.get("shared.weight").map(|i| i.dtype)),
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": true,
        "vocab_size": dim(keys, "shared.weight", 0)?,
    }))
}

pub(super) fn sd3(keys: &Keys) -> Result<Value> {
    let proj = "pos_embed.proj.weight";
    let (hidden, patch) = (dim(keys, proj, 0)?, dim(keys, proj, 2)?);
    let head_dim = match keys.get("transformer_blocks.0.attn.norm_q.weight") {
        Some(i) => i.shape[0],
        None => hidden / heads(hidden),
    };
    let max_size = (dim(keys, "pos_embed.pos_embed", 1)? as f64).sqrt().round() as usize;
    let layers = count(keys.keys(), "transformer_blocks");
    let dual: Vec<usize> = (0..layers)
        .filter(|i| keys.contains_key(&format!("transformer_blocks.{i}.attn2.to_q.weight")))
        .collect();
    Ok(json!({
        "_class_name": "SD3Transformer2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "attention_head_dim": head_dim,
        "caption_projection_dim": dim(keys, "context_embedder.weight", 0)?,
        "dual_attention_layers": dual,
        "in_channels": dim(keys, proj, 1)?,
        "joint_attention_dim": dim(keys, "context_embedder.weight", 1)?,
        "num_attention_heads": hidden / head_dim.max(1),
        "num_layers": layers,
        "out_channels": dim(keys, "proj_out.weight", 0)? / (patch * patch).max(1),
        "patch_size": patch,
        "pooled_projection_dim": dim(keys, "time_text_embed.text_embedder.linear_1.weight", 1)?,
        "pos_embed_max_size": max_size,
        "qk_norm": if keys.contains_key("transformer_blocks.0.attn.norm_q.weight") { json!("rms_norm") } else { Value::Null },
        "sample_size": (max_size * patch).min(128),
    }))
}

pub(super) fn flux(keys: &Keys) -> Result<Value> {
    let hidden = dim(keys, "x_embedder.weight", 0)?;
    let head_dim = dim(keys, "transformer_blocks.0.attn.norm_q.weight", 0)
        .or_else(|_| dim(keys, "single_transformer_blocks.0.attn.norm_q.weight", 0))?;
    // Rotary axes: (time, height, width) summing to the head width; Flux.1 has [16, 56, 56].
    let e = head_dim * 7 / 32 * 2;
    Ok(json!({
        "_class_name": "FluxTransformer2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "attention_head_dim": head_dim,
        "axes_dims_rope": [head_dim - 2 * e, e, e],
        "guidance_embeds": keys.contains_key("time_text_embed.guidance_embedder.linear_1.weight"),
        "in_channels": dim(keys, "x_embedder.weight", 1)?,
        "joint_attention_dim": dim(keys, "context_embedder.weight", 1)?,
        "num_attention_heads": hidden / head_dim.max(1),
        "num_layers": count(keys.keys(), "transformer_blocks"),
        "num_single_layers": count(keys.keys(), "single_transformer_blocks"),
        "out_channels": dim(keys, "proj_out.weight", 0)?,
        "patch_size": 1,
        "pooled_projection_dim": dim(keys, "time_text_embed.text_embedder.linear_1.weight", 1)?,
    }))
}
