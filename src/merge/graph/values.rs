//! What flows along a graph's links: per tensor, a base and the patch list ComfyUI's
//! `ModelPatcher` would hold for it, and how merge nodes extend those lists.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Device;

use crate::error::{Error, Result};
use crate::merge::bake::{build, Step};
use crate::model::dtype::is_float;
use crate::model::merged::{Patch, PatchValue};
use crate::model::{Arch, InputMap, InputTensor, Prediction};

/// A component as a patcher holds it: base tensors, and for some of them the steps (patches,
/// and `reshape_weight`'s padding) applied in order when the tensor is written.
#[derive(Debug, Clone)]
pub(super) struct Chains {
    base: Arc<InputMap>,
    steps: BTreeMap<String, Vec<Step>>,
}

impl Chains {
    pub(super) fn new(base: InputMap) -> Chains {
        Chains {
            base: Arc::new(base),
            steps: BTreeMap::new(),
        }
    }

    /// Chains over base tensors shared with other values (two loaders of one file).
    pub(super) fn shared(base: Arc<InputMap>) -> Chains {
        Chains {
            base,
            steps: BTreeMap::new(),
        }
    }

    /// The base tensors (what `get_key_patches` calls the weight).
    pub(super) fn base(&self) -> &InputMap {
        &self.base
    }

    /// The shape of `key` after its steps (a padding may grow it).
    pub(super) fn shape(&self, key: &str) -> Option<Vec<usize>> {
        let mut shape = self.base.get(key)?.info().shape;
        for s in self.steps.get(key).into_iter().flatten() {
            if let Step::Pad(to) = s {
                shape.clone_from(to);
            }
        }
        Some(shape)
    }

    /// Appends steps to `key`'s list.
    pub(super) fn extend(&mut self, key: &str, steps: impl IntoIterator<Item = Step>) {
        let list = self.steps.entry(key.to_string()).or_default();
        list.extend(steps);
        if list.is_empty() {
            self.steps.remove(key);
        }
    }

    /// The tensor `key` as written: its base, or the expression of its base and steps.
    pub(super) fn expr(&self, key: &str, device: Option<&Device>) -> Result<Option<InputTensor>> {
        let Some(base) = self.base.get(key) else {
            return Ok(None);
        };
        match self.steps.get(key) {
            Some(steps) if !steps.is_empty() => {
                // A quantized base is written back with its own scales, as ComfyUI requantizes
                // a patched weight.
                let requantize = crate::quant::Requantize::default();
                Ok(Some(build(
                    key,
                    base.clone(),
                    steps.clone(),
                    device,
                    requantize,
                )?))
            }
            _ => Ok(Some(base.clone())),
        }
    }

    /// Every tensor as written.
    pub(super) fn tensors(&self, device: Option<&Device>) -> Result<InputMap> {
        let mut out = InputMap::new();
        for key in self.base.keys() {
            if let Some(t) = self.expr(key, device)? {
                out.insert(key.clone(), t);
            }
        }
        Ok(out)
    }

    /// Tensors with at least one step.
    pub(super) fn patched(&self) -> usize {
        self.steps.len()
    }
}

/// A `MODEL`: the denoiser's chains, with what the save needs to know about it.
#[derive(Debug, Clone)]
pub(super) struct ModelValue {
    pub(super) chains: Chains,
    pub(super) arch: Arch,
    pub(super) prediction: Option<Prediction>,
    /// The loader it comes from, for messages: `node 1 (CheckpointLoaderSimple) a.safetensors`.
    pub(super) origin: String,
}

/// A `CLIP`: the text encoders' chains.
#[derive(Debug, Clone)]
pub(super) struct ClipValue {
    pub(super) chains: Chains,
    /// The architecture the encoders came with, when the loader said one.
    pub(super) arch: Option<Arch>,
    pub(super) origin: String,
}

/// A `VAE`: the autoencoder's tensors, never patched; with the audio VAE a checkpoint holds
/// beside it (LTX-2's release), which goes where the VAE goes.
#[derive(Debug, Clone)]
pub(super) struct VaeValue {
    pub(super) tensors: Arc<InputMap>,
    pub(super) audio: Option<Arc<InputMap>>,
}

/// A value of any type.
#[derive(Debug, Clone)]
pub(super) enum Value {
    Model(ModelValue),
    Clip(ClipValue),
    Vae(VaeValue),
}

/// How a merge node patches a tensor of its first input with the second's.
pub(super) struct MergeStep<'a> {
    /// `describe()` of the node, for messages.
    pub(super) node: &'a str,
    /// Which keys of the second input are added (CLIP merges leave `position_ids` and
    /// `logit_scale` alone).
    pub(super) takes: &'a dyn Fn(&str) -> bool,
    /// `(strength, strength_model)` of the patch on a key, as Python floats.
    pub(super) coefficients: &'a dyn Fn(&str) -> (f64, f64),
    /// Where merged tensors are computed.
    pub(super) device: Option<&'a Device>,
}

/// What a merge left as it was: keys of the first input the second lacks (they stay the first
/// input's, as in ComfyUI).
#[derive(Debug, Clone, Default)]
pub(super) struct MergeNotes {
    pub(super) not_in_second: Vec<String>,
}

/// ComfyUI's merge: `m = model1.clone(); for k in model2.get_key_patches(): m.add_patches({k:
/// …}, strength, strength_model)`: every key of the second input the first also has gets the
/// patch `(strength, [second's base, *second's patches], strength_model)`, after the first's own.
///
/// # Errors
/// [`Error::BadShape`] for a key whose shapes differ (ComfyUI skips it with "WEIGHT NOT MERGED";
/// this tool refuses, naming both inputs).
pub(super) fn merge_chains(
    first: &Chains,
    first_origin: &str,
    second: &Chains,
    second_origin: &str,
    step: &MergeStep<'_>,
) -> Result<(Chains, MergeNotes)> {
    let mut out = first.clone();
    let mut notes = MergeNotes::default();
    for key in first.base.keys() {
        if (step.takes)(key) && !second.base.contains_key(key) {
            notes.not_in_second.push(key.clone());
        }
    }
    for (key, t2) in second.base.iter() {
        let Some(t1) = first.base.get(key) else {
            // `add_patches` ignores keys the patched model does not have.
            continue;
        };
        if !(step.takes)(key) || !is_float(t1.info().dtype) || !is_float(t2.info().dtype) {
            continue;
        }
        let (strength, strength_model) = (step.coefficients)(key);
        if strength == 0.0 && strength_model == 1.0 {
            // `w *= 1` and `w += 0·v` are both skipped by ComfyUI: nothing to compute.
            continue;
        }
        let (s1, s2) = (first.shape(key), second.shape(key));
        if s1 != s2 {
            return Err(Error::BadShape {
                key: key.clone(),
                shape: s1.unwrap_or_default(),
                reason: format!(
                    "{}: it has this shape in the first input ({first_origin}) and {:?} in the \
                     second ({second_origin}); ComfyUI skips such a key (\"WEIGHT NOT MERGED\"), \
                     this tool refuses: merge models of one architecture and size",
                    step.node,
                    s2.unwrap_or_default()
                ),
            });
        }
        let Some(value) = second.expr(key, step.device)? else {
            continue;
        };
        out.extend(
            key,
            [Step::Patch(Patch {
                strength: strength as f32,
                strength_model: strength_model as f32,
                value: PatchValue::Tensor(value),
            })],
        );
    }
    Ok((out, notes))
}
