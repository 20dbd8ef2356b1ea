//! UNet2DConditionModel (diffusers) ⇄ LDM/SGM `UNetModel` (ComfyUI) names, for SD1, SD2, SDXL
//! and the SDXL refiner.
//!
//! diffusers groups the UNet into resolution levels (`down_blocks.x.resnets.j`); LDM numbers its
//! blocks flat (`input_blocks.n.0`), with the resampler as a block of its own on the way down and a
//! sub-module of the level's last block on the way up. The index arithmetic is derived from the
//! [`Structure`] read off either side's keys, so any level count, ResBlocks per level or choice of
//! levels with attention works, not only the released models.

use std::collections::BTreeMap;

use super::links::{count, Links};
use crate::error::{Error, Result};
use crate::model::TensorInfo;

/// ResBlock leaves: diffusers name, LDM name.
const RESNET: [(&str, &str); 6] = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

/// Modules of a SpatialTransformer / Transformer2DModel outside its blocks (same names on both sides).
const ATTENTION: [&str; 3] = ["norm", "proj_in", "proj_out"];

/// Modules of one BasicTransformerBlock (same names on both sides).
const BLOCK: [&str; 13] = [
    "norm1",
    "norm2",
    "norm3",
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
];

/// Modules outside the blocks: diffusers name, LDM name.
const BASIC: [(&str, &str); 7] = [
    ("conv_in", "input_blocks.0.0"),
    ("time_embedding.linear_1", "time_embed.0"),
    ("time_embedding.linear_2", "time_embed.2"),
    ("add_embedding.linear_1", "label_emb.0.0"),
    ("add_embedding.linear_2", "label_emb.0.2"),
    ("conv_norm_out", "out.0"),
    ("conv_out", "out.2"),
];

/// One resolution level: which of its ResBlocks carry a transformer, and whether it ends in a
/// resampler (downsampler on the way down, upsampler on the way up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Level {
    pub attentions: Vec<bool>,
    pub sampler: bool,
}

/// The shape of a UNet, as far as names depend on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Structure {
    pub down: Vec<Level>,
    pub mid_attention: bool,
    /// Deepest level first, as both namings number them.
    pub up: Vec<Level>,
    /// Most transformer blocks in any attention (every attention gets links for that many).
    pub depth: usize,
}

/// Whether any key starts with `prefix`.
fn has(keys: &BTreeMap<String, TensorInfo>, prefix: &str) -> bool {
    keys.range(prefix.to_string()..)
        .next()
        .is_some_and(|(k, _)| k.starts_with(prefix))
}

/// Largest `N + 1` over keys containing `.transformer_blocks.N.`.
fn depth(keys: &BTreeMap<String, TensorInfo>) -> usize {
    keys.keys()
        .filter_map(|k| k.split_once(".transformer_blocks.").map(|(_, r)| r))
        .filter_map(|r| r.split('.').next()?.parse::<usize>().ok())
        .map(|n| n + 1)
        .max()
        .unwrap_or(0)
}

impl Structure {
    /// Reads the structure off diffusers keys.
    pub fn from_diffusers(keys: &BTreeMap<String, TensorInfo>) -> Result<Self> {
        let levels = |side: &str, sampler: &str| -> Vec<Level> {
            (0..count(keys.keys(), side))
                .map(|x| Level {
                    attentions: (0..count(keys.keys(), &format!("{side}.{x}.resnets")))
                        .map(|j| has(keys, &format!("{side}.{x}.attentions.{j}.")))
                        .collect(),
                    sampler: has(keys, &format!("{side}.{x}.{sampler}.0.")),
                })
                .collect()
        };
        let s = Self {
            down: levels("down_blocks", "downsamplers"),
            mid_attention: has(keys, "mid_block.attentions.0."),
            up: levels("up_blocks", "upsamplers"),
            depth: depth(keys),
        };
        s.check("down_blocks / up_blocks")
    }

    /// Reads the structure off ComfyUI (LDM) keys: a level ends at its resampler.
    pub fn from_comfy(keys: &BTreeMap<String, TensorInfo>) -> Result<Self> {
        let mut down = Vec::new();
        let mut level = Level {
            attentions: Vec::new(),
            sampler: false,
        };
        for n in 1..count(keys.keys(), "input_blocks") {
            if has(keys, &format!("input_blocks.{n}.0.op.")) {
                level.sampler = true;
                down.push(std::mem::replace(
                    &mut level,
                    Level {
                        attentions: Vec::new(),
                        sampler: false,
                    },
                ));
            } else {
                level
                    .attentions
                    .push(has(keys, &format!("input_blocks.{n}.1.")));
            }
        }
        if !level.attentions.is_empty() {
            down.push(level);
        }
        let mut up = Vec::new();
        let mut level = Level {
            attentions: Vec::new(),
            sampler: false,
        };
        for n in 0..count(keys.keys(), "output_blocks") {
            let upsample = [1, 2]
                .iter()
                .any(|c| has(keys, &format!("output_blocks.{n}.{c}.conv.")));
            let attention = has(keys, &format!("output_blocks.{n}.1."))
                && !has(keys, &format!("output_blocks.{n}.1.conv."));
            level.attentions.push(attention);
            if upsample {
                level.sampler = true;
                up.push(std::mem::replace(
                    &mut level,
                    Level {
                        attentions: Vec::new(),
                        sampler: false,
                    },
                ));
            }
        }
        if !level.attentions.is_empty() {
            up.push(level);
        }
        let s = Self {
            down,
            mid_attention: has(keys, "middle_block.2."),
            up,
            depth: depth(keys),
        };
        s.check("input_blocks / output_blocks")
    }

    fn check(self, what: &str) -> Result<Self> {
        if self.down.is_empty() || self.up.is_empty() {
            return Err(Error::InvalidInput(format!(
                "a UNet needs {what} keys; found {} down and {} up levels",
                self.down.len(),
                self.up.len()
            )));
        }
        Ok(self)
    }

    /// LDM `input_blocks` index of each ResBlock, per level (the resampler follows the last).
    pub fn input_blocks(&self) -> Vec<Vec<usize>> {
        let mut n = 1;
        self.down
            .iter()
            .map(|level| {
                let blocks: Vec<usize> = (n..n + level.attentions.len()).collect();
                n += level.attentions.len() + usize::from(level.sampler);
                blocks
            })
            .collect()
    }

    /// LDM `output_blocks` index of each ResBlock, per level.
    pub fn output_blocks(&self) -> Vec<Vec<usize>> {
        let mut n = 0;
        self.up
            .iter()
            .map(|level| {
                let blocks: Vec<usize> = (n..n + level.attentions.len()).collect();
                n += level.attentions.len();
                blocks
            })
            .collect()
    }

    /// Every name pair of a UNet of this structure (a superset: optional leaves such as
    /// `conv_shortcut` are listed wherever they could occur).
    pub fn links(&self) -> Links {
        let mut l = Links::default();
        for (d, c) in BASIC {
            l.module(d, c);
        }
        for (x, (level, blocks)) in self.down.iter().zip(self.input_blocks()).enumerate() {
            for (j, n) in blocks.iter().enumerate() {
                resnet(
                    &mut l,
                    &format!("down_blocks.{x}.resnets.{j}"),
                    &format!("input_blocks.{n}.0"),
                );
                self.attention(
                    &mut l,
                    &format!("down_blocks.{x}.attentions.{j}"),
                    &format!("input_blocks.{n}.1"),
                );
            }
            if level.sampler {
                let n = blocks.last().map_or(1, |n| n + 1);
                l.module(
                    &format!("down_blocks.{x}.downsamplers.0.conv"),
                    &format!("input_blocks.{n}.0.op"),
                );
            }
        }
        resnet(&mut l, "mid_block.resnets.0", "middle_block.0");
        if self.mid_attention {
            self.attention(&mut l, "mid_block.attentions.0", "middle_block.1");
            resnet(&mut l, "mid_block.resnets.1", "middle_block.2");
        } else {
            resnet(&mut l, "mid_block.resnets.1", "middle_block.1");
        }
        for (x, (level, blocks)) in self.up.iter().zip(self.output_blocks()).enumerate() {
            for (i, n) in blocks.iter().enumerate() {
                resnet(
                    &mut l,
                    &format!("up_blocks.{x}.resnets.{i}"),
                    &format!("output_blocks.{n}.0"),
                );
                self.attention(
                    &mut l,
                    &format!("up_blocks.{x}.attentions.{i}"),
                    &format!("output_blocks.{n}.1"),
                );
                if level.sampler && i + 1 == blocks.len() {
                    // The upsampler follows the ResBlock and, if there is one, its transformer.
                    let c = 1 + usize::from(level.attentions[i]);
                    l.module(
                        &format!("up_blocks.{x}.upsamplers.0.conv"),
                        &format!("output_blocks.{n}.{c}.conv"),
                    );
                }
            }
        }
        l
    }

    fn attention(&self, l: &mut Links, d: &str, c: &str) {
        for m in ATTENTION {
            l.module(&format!("{d}.{m}"), &format!("{c}.{m}"));
        }
        for k in 0..self.depth {
            for m in BLOCK {
                l.module(
                    &format!("{d}.transformer_blocks.{k}.{m}"),
                    &format!("{c}.transformer_blocks.{k}.{m}"),
                );
            }
        }
    }
}

fn resnet(l: &mut Links, d: &str, c: &str) {
    for (dm, cm) in RESNET {
        l.module(&format!("{d}.{dm}"), &format!("{c}.{cm}"));
    }
}
