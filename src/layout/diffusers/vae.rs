//! AutoencoderKL (diffusers) ⇄ LDM `AutoencoderKL` (ComfyUI) names.
//!
//! Levels keep their index in the encoder but are numbered the other way round in the decoder
//! (diffusers' `up_blocks.0` is LDM's deepest `up.{L-1}`). The middle attention is a linear layer in
//! diffusers and a 1×1 convolution in LDM: same bytes, other shape.

use std::collections::BTreeMap;

use super::links::{count, Links, Op};
use crate::error::{Error, Result};
use crate::model::TensorInfo;

/// ResnetBlock leaves: diffusers name, LDM name.
const RESNET: [(&str, &str); 5] = [
    ("norm1", "norm1"),
    ("conv1", "conv1"),
    ("norm2", "norm2"),
    ("conv2", "conv2"),
    ("conv_shortcut", "nin_shortcut"),
];

/// Middle attention projections: current diffusers name, pre-0.14 diffusers name, LDM name.
const ATTENTION: [(&str, &str, &str); 4] = [
    ("to_q", "query", "q"),
    ("to_k", "key", "k"),
    ("to_v", "value", "v"),
    ("to_out.0", "proj_attn", "proj_out"),
];

/// Level and ResBlock counts, as far as names depend on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Structure {
    /// Decoder levels (the index reversal depends on it).
    pub levels: usize,
    /// Most ResBlocks in any level (every level gets links for that many).
    pub resnets: usize,
}

impl Structure {
    /// Reads the counts off diffusers keys.
    pub fn from_diffusers(keys: &BTreeMap<String, TensorInfo>) -> Result<Self> {
        Self::read(keys, "down_blocks", "up_blocks", |side, i| {
            format!("{side}.{i}.resnets")
        })
    }

    /// Reads the counts off ComfyUI keys.
    pub fn from_comfy(keys: &BTreeMap<String, TensorInfo>) -> Result<Self> {
        Self::read(keys, "down", "up", |side, i| format!("{side}.{i}.block"))
    }

    fn read(
        keys: &BTreeMap<String, TensorInfo>,
        down: &str,
        up: &str,
        blocks: impl Fn(&str, usize) -> String,
    ) -> Result<Self> {
        let enc = format!("encoder.{down}");
        let dec = format!("decoder.{up}");
        let (enc_levels, dec_levels) = (count(keys.keys(), &enc), count(keys.keys(), &dec));
        let levels = dec_levels.max(enc_levels);
        if levels == 0 {
            return Err(Error::InvalidInput(format!(
                "an autoencoder needs `{enc}.N` or `{dec}.N` keys; found none"
            )));
        }
        let resnets = (0..levels)
            .flat_map(|i| [blocks(&enc, i), blocks(&dec, i)])
            .map(|p| count(keys.keys(), &p))
            .max()
            .unwrap_or(0);
        Ok(Self { levels, resnets })
    }

    /// Every name pair of an autoencoder of this structure (a superset).
    pub fn links(&self) -> Links {
        let mut l = Links::default();
        for side in ["encoder", "decoder"] {
            for m in ["conv_in", "conv_out"] {
                l.module(&format!("{side}.{m}"), &format!("{side}.{m}"));
            }
            l.module(
                &format!("{side}.conv_norm_out"),
                &format!("{side}.norm_out"),
            );
            resnet(
                &mut l,
                &format!("{side}.mid_block.resnets.0"),
                &format!("{side}.mid.block_1"),
            );
            resnet(
                &mut l,
                &format!("{side}.mid_block.resnets.1"),
                &format!("{side}.mid.block_2"),
            );
            let (d, c) = (
                format!("{side}.mid_block.attentions.0"),
                format!("{side}.mid.attn_1"),
            );
            l.module(&format!("{d}.group_norm"), &format!("{c}.norm"));
            for (new, old, ldm) in ATTENTION {
                l.op(
                    format!("{d}.{new}.weight"),
                    format!("{c}.{ldm}.weight"),
                    Op::Conv1x1,
                );
                l.same(format!("{d}.{new}.bias"), format!("{c}.{ldm}.bias"));
                l.legacy(
                    format!("{d}.{old}.weight"),
                    format!("{c}.{ldm}.weight"),
                    Op::Conv1x1,
                );
                l.legacy(
                    format!("{d}.{old}.bias"),
                    format!("{c}.{ldm}.bias"),
                    Op::Same,
                );
            }
        }
        for i in 0..self.levels {
            let r = self.levels - 1 - i;
            for j in 0..self.resnets {
                resnet(
                    &mut l,
                    &format!("encoder.down_blocks.{i}.resnets.{j}"),
                    &format!("encoder.down.{i}.block.{j}"),
                );
                resnet(
                    &mut l,
                    &format!("decoder.up_blocks.{r}.resnets.{j}"),
                    &format!("decoder.up.{i}.block.{j}"),
                );
            }
            l.module(
                &format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
                &format!("encoder.down.{i}.downsample.conv"),
            );
            l.module(
                &format!("decoder.up_blocks.{r}.upsamplers.0.conv"),
                &format!("decoder.up.{i}.upsample.conv"),
            );
        }
        for m in ["quant_conv", "post_quant_conv"] {
            l.module(m, m);
        }
        l
    }
}

fn resnet(l: &mut Links, d: &str, c: &str) {
    for (dm, cm) in RESNET {
        l.module(&format!("{d}.{dm}"), &format!("{c}.{cm}"));
    }
}
