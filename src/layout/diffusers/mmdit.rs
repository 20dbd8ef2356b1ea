//! SD3Transformer2DModel (diffusers) ⇄ MMDiT (ComfyUI) names, for SD3 and SD3.5 (q/k RMS norms,
//! and the second x-attention of SD3.5 medium's first blocks).
//!
//! diffusers splits the fused `qkv` projections, and stores the AdaLayerNormContinuous
//! modulations as `[scale; shift]` where MMDiT has `[shift; scale]`: the final layer's and, because
//! diffusers builds the pre-only last context block with that norm, its `norm1_context` too.

use std::collections::BTreeMap;

use super::links::{count, Links, Op};
use crate::error::{Error, Result};
use crate::model::TensorInfo;

/// Modules of one joint block renamed one to one: diffusers name, MMDiT name.
const BLOCK: [(&str, &str); 14] = [
    ("attn.to_out.0", "x_block.attn.proj"),
    ("attn.to_add_out", "context_block.attn.proj"),
    ("attn2.to_out.0", "x_block.attn2.proj"),
    ("norm1.linear", "x_block.adaLN_modulation.1"),
    ("ff.net.0.proj", "x_block.mlp.fc1"),
    ("ff.net.2", "x_block.mlp.fc2"),
    ("ff_context.net.0.proj", "context_block.mlp.fc1"),
    ("ff_context.net.2", "context_block.mlp.fc2"),
    // The RMS q/k norms of SD3.5 (weight only; a bias link is never matched).
    ("attn.norm_q", "x_block.attn.ln_q"),
    ("attn.norm_k", "x_block.attn.ln_k"),
    ("attn2.norm_q", "x_block.attn2.ln_q"),
    ("attn2.norm_k", "x_block.attn2.ln_k"),
    ("attn.norm_added_q", "context_block.attn.ln_q"),
    ("attn.norm_added_k", "context_block.attn.ln_k"),
];

/// Modules outside the blocks: diffusers name, MMDiT name.
const BASIC: [(&str, &str); 7] = [
    ("pos_embed.proj", "x_embedder.proj"),
    (
        "time_text_embed.timestep_embedder.linear_1",
        "t_embedder.mlp.0",
    ),
    (
        "time_text_embed.timestep_embedder.linear_2",
        "t_embedder.mlp.2",
    ),
    ("time_text_embed.text_embedder.linear_1", "y_embedder.mlp.0"),
    ("time_text_embed.text_embedder.linear_2", "y_embedder.mlp.2"),
    ("context_embedder", "context_embedder"),
    ("proj_out", "final_layer.linear"),
];

/// Number of joint blocks among diffusers keys.
pub(super) fn depth_diffusers(keys: &BTreeMap<String, TensorInfo>) -> Result<usize> {
    nonzero(
        count(keys.keys(), "transformer_blocks"),
        "transformer_blocks",
    )
}

/// Number of joint blocks among ComfyUI keys.
pub(super) fn depth_comfy(keys: &BTreeMap<String, TensorInfo>) -> Result<usize> {
    nonzero(count(keys.keys(), "joint_blocks"), "joint_blocks")
}

fn nonzero(n: usize, what: &str) -> Result<usize> {
    if n == 0 {
        return Err(Error::InvalidInput(format!(
            "an SD3 transformer needs `{what}.N` keys; found none"
        )));
    }
    Ok(n)
}

/// Every name pair of an MMDiT with `depth` joint blocks (a superset).
pub(super) fn links(depth: usize) -> Links {
    let mut l = Links::default();
    for (d, c) in BASIC {
        l.module(d, c);
    }
    l.same("pos_embed.pos_embed", "pos_embed");
    for leaf in ["weight", "bias"] {
        l.op(
            format!("norm_out.linear.{leaf}"),
            format!("final_layer.adaLN_modulation.1.{leaf}"),
            Op::Swapped,
        );
    }
    for i in 0..depth {
        let (d, c) = (
            format!("transformer_blocks.{i}"),
            format!("joint_blocks.{i}"),
        );
        let qkv = |names: [&str; 3]| names.map(|n| format!("{d}.{n}"));
        l.fused(
            &qkv(["attn.to_q", "attn.to_k", "attn.to_v"]),
            &format!("{c}.x_block.attn.qkv"),
            None,
        );
        l.fused(
            &qkv(["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"]),
            &format!("{c}.context_block.attn.qkv"),
            None,
        );
        l.fused(
            &qkv(["attn2.to_q", "attn2.to_k", "attn2.to_v"]),
            &format!("{c}.x_block.attn2.qkv"),
            None,
        );
        for (dm, cm) in BLOCK {
            l.module(&format!("{d}.{dm}"), &format!("{c}.{cm}"));
        }
        let op = if i + 1 == depth {
            Op::Swapped
        } else {
            Op::Same
        };
        for leaf in ["weight", "bias"] {
            l.op(
                format!("{d}.norm1_context.linear.{leaf}"),
                format!("{c}.context_block.adaLN_modulation.1.{leaf}"),
                op,
            );
        }
    }
    l
}
