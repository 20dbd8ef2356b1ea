//! Merges and LoRA bakes as one more source of the plan: the components a save takes, whose
//! tensors are [`Merged`] expressions over the inputs' tensors, computed range by range when the
//! checkpoint is written (see [`crate::model::merged`] for the arithmetic and how it matches
//! ComfyUI's, and `offload` for its evaluation). Nothing is loaded: inputs stay in their files
//! (or on their device), and memory stays at the staging budget and a few tensors.
//!
//! [`Recipe`] says what to compute; [`merge`] turns inputs (A, B, C in ComfyUI's names, from
//! [`crate::open_input`] or candle tensors) and LoRAs into components plus a [`MergeReport`].

mod bake;
mod blocks;
mod extract;
pub mod graph;
mod lora;
mod lora_keys;
pub mod methods;
mod recipe;

use std::sync::Arc;

use candle_core::Device;

use crate::error::{Error, Result};
use crate::layout::detect::detect_model;
use crate::model::merged::{Merged, Patch, PatchValue};
use crate::model::{Arch, ComponentKind, Components, InputMap, InputTensor};
pub use bake::LoraReport;
use bake::{build, lora_patches, Step};
pub use blocks::BlockRatios;
pub use extract::{
    extract_lora, extract_lora_from_difference, ExtractOptions, ExtractReport, KeyFormat, LoraType,
    CLAMP_QUANTILE,
};
pub use lora::Lora;
pub use recipe::{InputRecord, RECIPE_KEY};

/// What a merge computes for each tensor of the merged components. Ratios and multipliers are
/// ComfyUI's (`ratio` 1 keeps A); A1111's and sd-mecha's `alpha` is `1 − ratio`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Operation {
    /// Only A (with the LoRAs baked in).
    None,
    /// ModelMergeSimple / CLIPMergeSimple: `A·ratio + B·(1 − ratio)`.
    WeightedSum {
        /// 1 gives A, 0 gives B.
        ratio: f64,
    },
    /// Add difference, as ModelSubtract(B, C) into ModelAdd(A): `A + (B·m + C·(−m))`.
    AddDifference {
        /// `m`.
        multiplier: f64,
    },
    /// ModelSubtract(A, B): `A·m + B·(−m)`.
    Subtract {
        /// `m`.
        multiplier: f64,
    },
    /// ModelAdd(A, B): `A + B`.
    Add,
}

impl Operation {
    /// How many inputs the operation takes (A, B, C).
    pub fn inputs(self) -> usize {
        match self {
            Operation::None => 1,
            Operation::WeightedSum { .. } | Operation::Subtract { .. } | Operation::Add => 2,
            Operation::AddDifference { .. } => 3,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Operation::None => "none",
            Operation::WeightedSum { .. } => "weighted_sum",
            Operation::AddDifference { .. } => "add_difference",
            Operation::Subtract { .. } => "subtract",
            Operation::Add => "add",
        }
    }

    /// The same operation with its ratio or multiplier replaced (block ratios, the clip's).
    fn with(self, v: f64) -> Operation {
        match self {
            Operation::WeightedSum { .. } => Operation::WeightedSum { ratio: v },
            Operation::AddDifference { .. } => Operation::AddDifference { multiplier: v },
            Operation::Subtract { .. } => Operation::Subtract { multiplier: v },
            other => other,
        }
    }

    fn value(self) -> Option<f64> {
        match self {
            Operation::WeightedSum { ratio } => Some(ratio),
            Operation::AddDifference { multiplier } | Operation::Subtract { multiplier } => {
                Some(multiplier)
            }
            Operation::None | Operation::Add => None,
        }
    }
}

/// Which family the inputs are merged as (`--arch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MergeArch {
    /// Detected from each input's denoiser; inputs of two families are refused.
    #[default]
    Detect,
    /// This family, as the caller says (an input that detects as another is refused).
    Family(Arch),
    /// No family (one this tool does not know): keys and shapes are matched, LoRAs take
    /// ComfyUI's generic names, block ratios are key prefixes.
    Generic,
}

/// A LoRA to bake, with ComfyUI's LoraLoader strengths.
#[derive(Debug, Clone)]
pub struct LoraBake {
    /// The LoRA.
    pub lora: Lora,
    /// Strength on the denoiser.
    pub strength_model: f64,
    /// Strength on the text encoders.
    pub strength_clip: f64,
}

/// What to compute.
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The operation on the denoiser.
    pub operation: Operation,
    /// Per-block ratios of the denoiser, as ModelMergeBlocks: when there are entries, every
    /// denoiser key takes a block's value in place of the operation's (the longest matching
    /// prefix's, or the first entry's where none matches), so the operation's own ratio or
    /// multiplier is not used for the denoiser.
    pub blocks: BlockRatios,
    /// The text encoders: merged with the operation and this value (as CLIPMergeSimple,
    /// `position_ids` and `logit_scale` stay A's), or `None` to take A's.
    pub clip: Option<f64>,
    /// Which input's autoencoder is written (0: A, 1: B), unmerged, as Save Checkpoint does.
    pub vae_from: usize,
    /// LoRAs baked in after the merge, in order.
    pub loras: Vec<LoraBake>,
    /// Keys B or C lack are taken from A instead of refusing the merge.
    pub allow_missing: bool,
    /// Refuse a LoRA any of whose keys is not applied ([`LoraReport::not_applied`]: a name that
    /// matches no tensor, or a form ComfyUI leaves out there) instead of reporting them.
    pub strict: bool,
    /// Where merged tensors are computed (`None`: the host, or the GPU every operand is on).
    pub device: Option<Device>,
    /// Which family the inputs are merged as.
    pub arch: MergeArch,
    /// How a merged or baked tensor whose A is quantized is written back in A's format when the
    /// save keeps it (`--dtype keep`): with A's scales (the default, as ComfyUI requantizes a
    /// patched weight) or fresh ones. What the save quantizes anew is [`crate::SaveOptions`]'s.
    pub requantize: crate::quant::Requantize,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            operation: Operation::None,
            blocks: BlockRatios::default(),
            clip: None,
            vae_from: 0,
            loras: Vec::new(),
            allow_missing: false,
            strict: false,
            device: None,
            arch: MergeArch::Detect,
            requantize: crate::quant::Requantize::default(),
        }
    }
}

/// What a merge did, for the summary and the recipe.
#[derive(Debug, Clone, Default)]
pub struct MergeReport {
    /// The family of the inputs (`None`: merged as [`MergeArch::Generic`]).
    pub arch: Option<Arch>,
    /// Tensors computed (merged, patched or both).
    pub merged: usize,
    /// Tensors copied from A (or the VAE's input) as they are.
    pub copied: usize,
    /// Keys B or C lacked that were taken from A (`allow_missing`).
    pub missing: Vec<String>,
    /// Per LoRA, in order: what was applied, and what was not.
    pub loras: Vec<LoraReport>,
    /// The recipe, as written into the checkpoint's metadata under [`RECIPE_KEY`].
    pub recipe: String,
}

/// Merges `inputs` (A, B, C as `recipe.operation` needs; `records` describe them for the recipe)
/// and bakes the recipe's LoRAs, into components ready to save.
///
/// # Errors
/// [`Error::InvalidInput`] for the wrong number of inputs, inputs of different architectures
/// (naming both), keys B or C lack (listed; see [`Recipe::allow_missing`]), block ratios with
/// an operation that has no ratio, a LoRA that matches nothing (or leaves keys out, with
/// [`Recipe::strict`]), two modules of one LoRA on one weight; [`Error::BadShape`] for a key
/// whose shapes differ (naming both), LoRA factors or differences that do not fit their tensor
/// (rank 0 included), or a `reshape_weight` that would shrink it;
/// [`Error::UnknownArchitecture`] when A's architecture cannot be told (and
/// [`Recipe::arch`] does not say it); [`Error::InvalidInput`] for a bare list of block ratios
/// that fits none of the family's merge nodes.
pub fn merge(
    inputs: &[&Components],
    records: &[InputRecord],
    recipe: &Recipe,
) -> Result<(Components, MergeReport)> {
    let op = recipe.operation;
    if inputs.len() != op.inputs() {
        return Err(Error::InvalidInput(format!(
            "{} takes {} input(s), {} given",
            op.name(),
            op.inputs(),
            inputs.len()
        )));
    }
    if op == Operation::None && recipe.loras.is_empty() {
        return Err(Error::InvalidInput(
            "nothing to do: give a second input and an operation, or a LoRA to bake".into(),
        ));
    }
    if !recipe.blocks.is_empty() && op.value().is_none() {
        return Err(Error::InvalidInput(format!(
            "block ratios need an operation with a ratio or multiplier (weighted sum, add \
             difference, subtract), not {}",
            op.name()
        )));
    }
    refuse_non_finite(recipe)?;
    if recipe.vae_from >= inputs.len() {
        return Err(Error::InvalidInput(format!(
            "the VAE cannot come from input {} of {}",
            recipe.vae_from + 1,
            inputs.len()
        )));
    }
    let arch = match recipe.arch {
        MergeArch::Detect => Some(same_arch(inputs, None)?),
        MergeArch::Family(a) => Some(same_arch(inputs, Some(a))?),
        MergeArch::Generic => None,
    };
    let blocks = recipe.blocks.placed(arch.map(Arch::family))?;
    let a = inputs[0];
    let mut report = MergeReport {
        arch,
        ..Default::default()
    };
    let mut loras = lora_patches(arch, a, recipe, &mut report)?;
    let mut out = Components::default();
    let mut missing = Vec::new();
    let made_up: &[String] = records.first().map_or(&[], |r| &r.defaults);
    for (kind, map) in a.iter() {
        let source = match kind {
            // The audio VAE goes with the VAE: from the VAE's input where it has one, else A's.
            ComponentKind::Vae | ComponentKind::AudioVae => {
                inputs[recipe.vae_from].get(kind).unwrap_or(map)
            }
            _ => map,
        };
        let mut merged = InputMap::new();
        for (key, t) in source {
            let patches = match (kind, op) {
                (ComponentKind::Model, _) => {
                    let op = blocks.ratio(key).map_or(op, |v| op.with(v));
                    patches_of(op, kind, key, t, inputs, made_up, &mut missing)?
                }
                (ComponentKind::Clip, _) if !keeps_clip_key(key) => match recipe.clip {
                    Some(v) => patches_of(op.with(v), kind, key, t, inputs, made_up, &mut missing)?,
                    None => Vec::new(),
                },
                _ => Vec::new(),
            };
            let mut steps: Vec<Step> = patches.into_iter().map(Step::Patch).collect();
            if !matches!(kind, ComponentKind::Vae | ComponentKind::AudioVae) {
                steps.extend(loras.remove(&(kind, key.clone())).unwrap_or_default());
            }
            if steps.is_empty() {
                report.copied += 1;
                merged.insert(key.clone(), t.clone());
                continue;
            }
            report.merged += 1;
            merged.insert(
                key.clone(),
                build(
                    key,
                    t.clone(),
                    steps,
                    recipe.device.as_ref(),
                    recipe.requantize,
                )?,
            );
        }
        out.set_inputs(kind, merged);
    }
    // An audio VAE only the VAE's input has goes with its VAE too.
    if let (None, Some(audio)) = (
        out.get(ComponentKind::AudioVae),
        inputs[recipe.vae_from].get(ComponentKind::AudioVae),
    ) {
        report.copied += audio.len();
        out.set_inputs(ComponentKind::AudioVae, audio.clone());
    }
    if !missing.is_empty() && !recipe.allow_missing {
        let shown: Vec<&str> = missing.iter().take(8).map(String::as_str).collect();
        return Err(Error::InvalidInput(format!(
            "{} key(s) of A are missing from {}: {}{}; give --allow-missing (Recipe::allow_missing) to keep A's tensors \
             there",
            missing.len(),
            if op.inputs() == 3 { "B or C" } else { "B" },
            shown.join(", "),
            if missing.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        )));
    }
    report.missing = missing;
    report.recipe = recipe::describe(recipe, &blocks, arch, records, &report);
    Ok((out, report))
}

/// Keys CLIPMergeSimple leaves as A has them.
/// Every number of `recipe` is finite: a NaN or infinite ratio, multiplier or strength would
/// write NaN into every tensor it touches.
fn refuse_non_finite(recipe: &Recipe) -> Result<()> {
    let op = recipe.operation;
    let mut numbers: Vec<(String, f64)> = Vec::new();
    if let Some(v) = op.value() {
        numbers.push((format!("the {}'s value", op.name()), v));
    }
    if let Some(c) = recipe.clip {
        numbers.push(("the text encoders' ratio".into(), c));
    }
    for (block, r) in recipe.blocks.entries() {
        numbers.push((format!("the ratio of block `{block}`"), *r));
    }
    for l in &recipe.loras {
        numbers.push(("a LoRA's model strength".into(), l.strength_model));
        numbers.push(("a LoRA's clip strength".into(), l.strength_clip));
    }
    match numbers.into_iter().find(|(_, v)| !v.is_finite()) {
        Some((what, v)) => Err(Error::InvalidInput(format!(
            "{what} is {v}, not a finite number"
        ))),
        None => Ok(()),
    }
}

fn keeps_clip_key(key: &str) -> bool {
    key.ends_with("position_ids") || key.ends_with("logit_scale")
}

/// The architecture every input's denoiser detects as; with `given` (the caller's `--arch`),
/// that one, refusing an input detected as another (one detection cannot place is taken as
/// `given`).
fn same_arch(inputs: &[&Components], given: Option<Arch>) -> Result<Arch> {
    let detect = |c: &Components, i: usize| -> Result<Option<Arch>> {
        let shapes = c.shapes();
        let model = shapes.get(ComponentKind::Model).ok_or_else(|| {
            Error::InvalidInput(format!("input {} has no denoiser to merge", role(i)))
        })?;
        match (detect_model(model), given) {
            (Ok(a), _) => Ok(Some(a)),
            (Err(_), Some(_)) => Ok(None),
            (Err(e), None) => Err(e),
        }
    };
    let mut first: Option<(Arch, usize)> = given.map(|g| (g, usize::MAX));
    for (i, c) in inputs.iter().enumerate() {
        let Some(other) = detect(c, i)? else {
            continue;
        };
        match first {
            None => first = Some((other, i)),
            Some((a, _)) if a == other => {}
            Some((a, usize::MAX)) => {
                return Err(Error::InvalidInput(format!(
                    "{} is {other}, not {a} as --arch says: models of different architectures \
                     cannot be merged",
                    role(i)
                )))
            }
            Some((a, j)) => {
                return Err(Error::InvalidInput(format!(
                    "{} is {a} and {} is {other}: models of different architectures cannot be \
                     merged",
                    role(j),
                    role(i)
                )))
            }
        }
    }
    first.map(|(a, _)| a).ok_or_else(|| {
        Error::InvalidInput("no input has a denoiser whose family can be told".into())
    })
}

fn role(i: usize) -> &'static str {
    ["A", "B", "C"].get(i).copied().unwrap_or("an input")
}

/// The patches `op` puts on A's tensor `key` (none for tensors that are not floating point).
fn patches_of(
    op: Operation,
    kind: ComponentKind,
    key: &str,
    a: &InputTensor,
    inputs: &[&Components],
    made_up: &[String],
    missing: &mut Vec<String>,
) -> Result<Vec<Patch>> {
    let dtype = a.info().dtype;
    if !crate::model::dtype::is_float(dtype) || op.inputs() < 2 {
        return Ok(Vec::new());
    }
    if !crate::model::dtype::can_decode(dtype) {
        return Err(Error::Conversion {
            key: key.to_string(),
            reason: format!("A's {kind} tensor is {dtype}, which cannot be merged"),
        });
    }
    let mut others = Vec::new();
    for (i, input) in inputs.iter().enumerate().skip(1) {
        let Some(t) = input.tensor(kind, key) else {
            // A tensor A's conversion made up (a diffusers CLIP's identity projection) is not
            // asked of the others.
            if !made_up.iter().any(|k| k == key) {
                missing.push(format!("{kind}:{key}"));
            }
            return Ok(Vec::new());
        };
        if t.info().shape != a.info().shape {
            return Err(Error::BadShape {
                key: key.to_string(),
                shape: a.info().shape,
                reason: format!(
                    "A's {kind} tensor has this shape and {}'s has {:?}; they cannot be merged",
                    role(i),
                    t.info().shape
                ),
            });
        }
        others.push(t.clone());
    }
    // `w · strength_model + strength · t`, coefficients computed in f64 as Python does.
    let patch = |strength: f64, strength_model: f64, t: InputTensor| Patch {
        strength: strength as f32,
        strength_model: strength_model as f32,
        value: PatchValue::Tensor(t),
    };
    Ok(match op {
        Operation::WeightedSum { ratio: 1.0 } => Vec::new(),
        Operation::WeightedSum { ratio } => vec![patch(1.0 - ratio, ratio, others[0].clone())],
        Operation::Subtract { multiplier: m } => vec![patch(-m, m, others[0].clone())],
        Operation::Add => vec![patch(1.0, 1.0, others[0].clone())],
        Operation::AddDifference { multiplier: m } => {
            let diff = Merged::new(
                key,
                others[0].clone(),
                vec![patch(-m, m, others[1].clone())],
            )?;
            vec![patch(1.0, 1.0, InputTensor::Merged(Arc::new(diff)))]
        }
        Operation::None => Vec::new(),
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_families;
#[cfg(test)]
mod tests_forms;
#[cfg(test)]
mod tests_refused;
