//! transformers `CLIPTextModel` / `CLIPTextModelWithProjection` / `T5EncoderModel` ⇄ ComfyUI's
//! text encoders (`clip_l.transformer.…`, `t5xxl.transformer.…`).
//!
//! ComfyUI holds these in Hugging Face naming under `<encoder>.transformer.`, so names only gain or
//! lose that prefix. What differs is what each side carries: ComfyUI's `logit_scale`, its
//! identity `text_projection` where the transformers class has none, diffusers' truncated SD2
//! encoder, and buffers or tied copies some files hold.

use std::collections::BTreeMap;

use super::links::{count, Links};
use super::Created;
use crate::error::{Error, Result};
use crate::model::Dtype;
use crate::model::TensorInfo;
use crate::synthetic::LOGIT_SCALE;

/// CLIP encoder names ComfyUI uses.
pub(super) const CLIP_NAMES: [&str; 3] = ["clip_l", "clip_h", "clip_g"];
/// T5 encoder names ComfyUI uses (Wan's umT5-XXL has T5's names).
pub(super) const T5_NAMES: [&str; 2] = ["t5xxl", "umt5xxl"];

/// The buffer older transformers files carry (`persistent=False` since 4.31).
pub(super) const POSITION_IDS: &str = "text_model.embeddings.position_ids";
/// The tied copy of `shared.weight` some T5 files carry.
pub(super) const T5_TIED: &str = "encoder.embed_tokens.weight";
/// diffusers key of the CLIP text projection.
pub(super) const PROJECTION: &str = "text_projection.weight";

/// Modules of one CLIP encoder layer.
const CLIP_LAYER: [&str; 8] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "layer_norm1",
    "layer_norm2",
    "mlp.fc1",
    "mlp.fc2",
];

/// Weights of one T5 block (T5 has no biases; `wi` is v1.0's ungated feed-forward,
/// `relative_attention_bias` lives in block 0 only but is allowed anywhere).
const T5_BLOCK: [&str; 11] = [
    "layer.0.SelfAttention.q",
    "layer.0.SelfAttention.k",
    "layer.0.SelfAttention.v",
    "layer.0.SelfAttention.o",
    "layer.0.SelfAttention.relative_attention_bias",
    "layer.0.layer_norm",
    "layer.1.DenseReluDense.wi",
    "layer.1.DenseReluDense.wi_0",
    "layer.1.DenseReluDense.wi_1",
    "layer.1.DenseReluDense.wo",
    "layer.1.layer_norm",
];

/// ComfyUI prefix of an encoder's transformers weights.
pub(super) fn prefix(enc: &str) -> String {
    format!("{enc}.transformer.")
}

/// CLIP layers among diffusers keys (`enc: None`) or among encoder `enc`'s ComfyUI keys.
pub(super) fn clip_layers(keys: &BTreeMap<String, TensorInfo>, enc: Option<&str>) -> usize {
    let p = enc.map(prefix).unwrap_or_default();
    count(keys.keys(), &format!("{p}text_model.encoder.layers"))
}

/// T5 blocks among diffusers keys (`enc: None`) or among encoder `enc`'s ComfyUI keys.
pub(super) fn t5_blocks(keys: &BTreeMap<String, TensorInfo>, enc: Option<&str>) -> usize {
    let p = enc.map(prefix).unwrap_or_default();
    count(keys.keys(), &format!("{p}encoder.block"))
}

/// Name pairs of a CLIP text model with `layers` layers.
pub(super) fn clip_links(enc: &str, layers: usize, projection: bool) -> Links {
    let p = prefix(enc);
    let mut l = Links::default();
    for m in ["token_embedding", "position_embedding"] {
        let k = format!("text_model.embeddings.{m}.weight");
        l.same(&k, format!("{p}{k}"));
    }
    l.module(
        "text_model.final_layer_norm",
        &format!("{p}text_model.final_layer_norm"),
    );
    if projection {
        l.same(PROJECTION, format!("{p}{PROJECTION}"));
    }
    for n in 0..layers {
        for m in CLIP_LAYER {
            let k = format!("text_model.encoder.layers.{n}.{m}");
            l.module(&k, &format!("{p}{k}"));
        }
    }
    l
}

/// Name pairs of a T5 encoder with `blocks` blocks.
pub(super) fn t5_links(enc: &str, blocks: usize) -> Links {
    let p = prefix(enc);
    let mut l = Links::default();
    for k in ["shared.weight", "encoder.final_layer_norm.weight"] {
        l.same(k, format!("{p}{k}"));
    }
    for n in 0..blocks {
        for m in T5_BLOCK {
            let k = format!("encoder.block.{n}.{m}.weight");
            l.same(&k, format!("{p}{k}"));
        }
    }
    l
}

/// ComfyUI's `logit_scale`: F32, 0-dim, its default ln(100).
pub(super) fn logit_scale(enc: &str) -> Created {
    Created {
        key: format!("{enc}.logit_scale"),
        info: TensorInfo::new(vec![], Dtype::F32),
        bytes: LOGIT_SCALE.to_le_bytes().to_vec(),
    }
}

/// ComfyUI's text projection of a CLIP without one: the identity, in the encoder's dtype.
pub(super) fn identity_projection(
    enc: &str,
    keys: &BTreeMap<String, TensorInfo>,
) -> Result<Created> {
    let key = format!("{}{PROJECTION}", prefix(enc));
    let norm = "text_model.final_layer_norm.weight";
    let Some(info) = keys.get(norm) else {
        return Err(Error::Conversion {
            key,
            reason: format!(
                "the identity projection takes its width and dtype from `{norm}`, which is missing"
            ),
        });
    };
    let n = info.shape.first().copied().unwrap_or(0);
    let (zero, one): (&[u8], &[u8]) = match info.dtype {
        Dtype::F64 => (&[0; 8], &[0, 0, 0, 0, 0, 0, 0xf0, 0x3f]),
        Dtype::F32 => (&[0; 4], &[0, 0, 0x80, 0x3f]),
        Dtype::F16 => (&[0; 2], &[0, 0x3c]),
        Dtype::BF16 => (&[0; 2], &[0x80, 0x3f]),
        Dtype::F8_E4M3 => (&[0], &[0x38]),
        Dtype::F8_E5M2 => (&[0], &[0x3c]),
        other => {
            return Err(Error::Conversion {
                key,
                reason: format!(
                    "cannot write an identity matrix in {other} (the dtype of `{norm}`)"
                ),
            })
        }
    };
    let mut bytes = Vec::with_capacity(n * n * one.len());
    for r in 0..n {
        for c in 0..n {
            bytes.extend_from_slice(if r == c { one } else { zero });
        }
    }
    Ok(Created {
        key,
        info: TensorInfo::new(vec![n, n], info.dtype),
        bytes,
    })
}
