//! FluxTransformer2DModel (diffusers) ⇄ Flux (ComfyUI) names, for Flux.1 dev and schnell.
//!
//! diffusers splits the fused projections: the double blocks' `qkv`, and the single blocks'
//! `linear1`, which is q, k, v (`hidden` rows each) followed by the MLP input projection. The final
//! AdaLayerNormContinuous stores `[scale; shift]` where Flux has `[shift; scale]`.

use std::collections::BTreeMap;

use super::links::{count, Links, Op};
use crate::error::{Error, Result};
use crate::model::TensorInfo;

/// Modules of one double block renamed one to one: diffusers name, Flux name.
const DOUBLE: [(&str, &str); 8] = [
    ("attn.to_out.0", "img_attn.proj"),
    ("attn.to_add_out", "txt_attn.proj"),
    ("norm1.linear", "img_mod.lin"),
    ("norm1_context.linear", "txt_mod.lin"),
    ("ff.net.0.proj", "img_mlp.0"),
    ("ff.net.2", "img_mlp.2"),
    ("ff_context.net.0.proj", "txt_mlp.0"),
    ("ff_context.net.2", "txt_mlp.2"),
];

/// RMS q/k norms of a double block (a weight in diffusers, a `scale` in Flux).
const DOUBLE_NORMS: [(&str, &str); 4] = [
    ("attn.norm_q", "img_attn.norm.query_norm"),
    ("attn.norm_k", "img_attn.norm.key_norm"),
    ("attn.norm_added_q", "txt_attn.norm.query_norm"),
    ("attn.norm_added_k", "txt_attn.norm.key_norm"),
];

/// Modules outside the blocks: diffusers name, Flux name.
const BASIC: [(&str, &str); 9] = [
    ("x_embedder", "img_in"),
    ("context_embedder", "txt_in"),
    (
        "time_text_embed.timestep_embedder.linear_1",
        "time_in.in_layer",
    ),
    (
        "time_text_embed.timestep_embedder.linear_2",
        "time_in.out_layer",
    ),
    (
        "time_text_embed.text_embedder.linear_1",
        "vector_in.in_layer",
    ),
    (
        "time_text_embed.text_embedder.linear_2",
        "vector_in.out_layer",
    ),
    (
        "time_text_embed.guidance_embedder.linear_1",
        "guidance_in.in_layer",
    ),
    (
        "time_text_embed.guidance_embedder.linear_2",
        "guidance_in.out_layer",
    ),
    ("proj_out", "final_layer.linear"),
];

/// Block counts and width, as far as names and splits depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Structure {
    pub double: usize,
    pub single: usize,
    /// Width of the stream: the rows of each of q, k, v in `linear1`.
    pub hidden: usize,
}

impl Structure {
    /// Reads the structure off diffusers keys.
    pub fn from_diffusers(keys: &BTreeMap<String, TensorInfo>) -> Result<Self> {
        Self::read(
            keys,
            "transformer_blocks",
            "single_transformer_blocks",
            "x_embedder.weight",
        )
    }

    /// Reads the structure off ComfyUI keys.
    pub fn from_comfy(keys: &BTreeMap<String, TensorInfo>) -> Result<Self> {
        Self::read(keys, "double_blocks", "single_blocks", "img_in.weight")
    }

    fn read(
        keys: &BTreeMap<String, TensorInfo>,
        double: &str,
        single: &str,
        embedder: &str,
    ) -> Result<Self> {
        let hidden = match keys.get(embedder).map(|i| &i.shape[..]) {
            Some(&[h, _]) => h,
            Some(shape) => {
                return Err(Error::BadShape {
                    key: embedder.into(),
                    shape: shape.to_vec(),
                    reason: "the image embedder is a linear layer [hidden, in]".into(),
                })
            }
            None => {
                return Err(Error::InvalidInput(format!(
                    "a Flux transformer needs `{embedder}` (its width splits the fused projections); it is missing"
                )))
            }
        };
        Ok(Self {
            double: count(keys.keys(), double),
            single: count(keys.keys(), single),
            hidden,
        })
    }

    /// Every name pair of a Flux transformer of this structure (a superset).
    pub fn links(&self) -> Links {
        let mut l = Links::default();
        for (d, c) in BASIC {
            l.module(d, c);
        }
        for leaf in ["weight", "bias"] {
            l.op(
                format!("norm_out.linear.{leaf}"),
                format!("final_layer.adaLN_modulation.1.{leaf}"),
                Op::Swapped,
            );
        }
        for i in 0..self.double {
            let (d, c) = (
                format!("transformer_blocks.{i}"),
                format!("double_blocks.{i}"),
            );
            let parts = |names: [&str; 3]| names.map(|n| format!("{d}.attn.{n}"));
            l.fused(
                &parts(["to_q", "to_k", "to_v"]),
                &format!("{c}.img_attn.qkv"),
                None,
            );
            l.fused(
                &parts(["add_q_proj", "add_k_proj", "add_v_proj"]),
                &format!("{c}.txt_attn.qkv"),
                None,
            );
            for (dm, cm) in DOUBLE {
                l.module(&format!("{d}.{dm}"), &format!("{c}.{cm}"));
            }
            for (dm, cm) in DOUBLE_NORMS {
                l.same(format!("{d}.{dm}.weight"), format!("{c}.{cm}.scale"));
            }
        }
        for i in 0..self.single {
            let (d, c) = (
                format!("single_transformer_blocks.{i}"),
                format!("single_blocks.{i}"),
            );
            let parts =
                ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"].map(|n| format!("{d}.{n}"));
            l.fused(&parts, &format!("{c}.linear1"), Some(self.hidden));
            l.module(&format!("{d}.proj_out"), &format!("{c}.linear2"));
            l.module(&format!("{d}.norm.linear"), &format!("{c}.modulation.lin"));
            l.same(
                format!("{d}.attn.norm_q.weight"),
                format!("{c}.norm.query_norm.scale"),
            );
            l.same(
                format!("{d}.attn.norm_k.weight"),
                format!("{c}.norm.key_norm.scale"),
            );
        }
        l
    }
}
