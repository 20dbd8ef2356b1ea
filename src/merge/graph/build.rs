//! Building a graph from Rust with typed handles: a [`ModelOut`] only goes where a `MODEL` is
//! taken, so a graph built this way has no link of the wrong type.

use super::{Graph, LoraSource, Node, Slot, Source, Target};
use crate::error::Result;
use crate::merge::LoraType;
use crate::model::Arch;

/// A `MODEL` output of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelOut(pub Slot);

/// A `CLIP` output of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClipOut(pub Slot);

/// A `VAE` output of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeOut(pub Slot);

/// The three outputs of a checkpoint loader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The denoiser.
    pub model: ModelOut,
    /// The text encoders.
    pub clip: ClipOut,
    /// The autoencoder.
    pub vae: VaeOut,
}

fn out(node: usize, output: usize) -> Slot {
    Slot { node, output }
}

impl Graph {
    /// CheckpointLoaderSimple.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn checkpoint(&mut self, source: Source) -> Result<Checkpoint> {
        let n = self.add(Node::Checkpoint(source))?;
        Ok(Checkpoint {
            model: ModelOut(out(n, 0)),
            clip: ClipOut(out(n, 1)),
            vae: VaeOut(out(n, 2)),
        })
    }

    /// UNETLoader.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn diffusion_model(&mut self, source: Source) -> Result<ModelOut> {
        Ok(ModelOut(out(self.add(Node::DiffusionModel(source))?, 0)))
    }

    /// CLIPLoader, DualCLIPLoader or TripleCLIPLoader (by the number of sources).
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn text_encoders(&mut self, sources: Vec<Source>, arch: Option<Arch>) -> Result<ClipOut> {
        Ok(ClipOut(out(
            self.add(Node::TextEncoders { sources, arch })?,
            0,
        )))
    }

    /// VAELoader.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn vae(&mut self, source: Source) -> Result<VaeOut> {
        Ok(VaeOut(out(self.add(Node::Vae(source))?, 0)))
    }

    /// LoraLoader (with `clip`) or LoraLoaderModelOnly (without): the patched model, and the
    /// patched text encoders when `clip` was given.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn lora(
        &mut self,
        model: ModelOut,
        clip: Option<ClipOut>,
        lora: LoraSource,
        strength_model: f64,
        strength_clip: f64,
    ) -> Result<(ModelOut, Option<ClipOut>)> {
        let has_clip = clip.is_some();
        let n = self.add(Node::Lora {
            model: model.0,
            clip: clip.map(|c| c.0),
            lora,
            strength_model,
            strength_clip,
        })?;
        Ok((ModelOut(out(n, 0)), has_clip.then(|| ClipOut(out(n, 1)))))
    }

    /// ModelMergeSimple: `model1·ratio + model2·(1 − ratio)`.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn model_merge_simple(
        &mut self,
        model1: ModelOut,
        model2: ModelOut,
        ratio: f64,
    ) -> Result<ModelOut> {
        let n = self.add(Node::ModelMergeSimple {
            model1: model1.0,
            model2: model2.0,
            ratio,
        })?;
        Ok(ModelOut(out(n, 0)))
    }

    /// ModelMergeBlocks (or a model-specific variant): ratios by key prefix, in the node's
    /// order; keys no prefix matches take the first ratio.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn model_merge_blocks(
        &mut self,
        model1: ModelOut,
        model2: ModelOut,
        ratios: Vec<(String, f64)>,
    ) -> Result<ModelOut> {
        let n = self.add(Node::ModelMergeBlocks {
            model1: model1.0,
            model2: model2.0,
            ratios,
        })?;
        Ok(ModelOut(out(n, 0)))
    }

    /// ModelMergeSubtract: `model1·m + model2·(−m)`.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn model_subtract(
        &mut self,
        model1: ModelOut,
        model2: ModelOut,
        multiplier: f64,
    ) -> Result<ModelOut> {
        let n = self.add(Node::ModelSubtract {
            model1: model1.0,
            model2: model2.0,
            multiplier,
        })?;
        Ok(ModelOut(out(n, 0)))
    }

    /// ModelMergeAdd: `model1 + model2`.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn model_add(&mut self, model1: ModelOut, model2: ModelOut) -> Result<ModelOut> {
        let n = self.add(Node::ModelAdd {
            model1: model1.0,
            model2: model2.0,
        })?;
        Ok(ModelOut(out(n, 0)))
    }

    /// A merge method of sd-mecha's over `models` (in the method's order) with named
    /// `params` ([`crate::merge::methods::KNOWN`] lists them with their defaults).
    ///
    /// # Errors
    /// As [`Graph::add`]; [`crate::Error::InvalidInput`] for an unknown method, a number of
    /// models it does not take, an unknown parameter or a value out of range (see
    /// [`crate::merge::methods::method`]).
    pub fn method(
        &mut self,
        name: &str,
        models: &[ModelOut],
        params: &std::collections::BTreeMap<String, crate::merge::methods::Param>,
    ) -> Result<ModelOut> {
        let n = self.add(Node::Method {
            name: name.to_string(),
            models: models.iter().map(|m| m.0).collect(),
            params: params.clone(),
        })?;
        Ok(ModelOut(out(n, 0)))
    }

    /// The merge method `name` over the text encoders `clips` (as [`Graph::method`] over
    /// denoisers).
    ///
    /// # Errors
    /// As [`Graph::method`].
    pub fn clip_method(
        &mut self,
        name: &str,
        clips: &[ClipOut],
        params: &std::collections::BTreeMap<String, crate::merge::methods::Param>,
    ) -> Result<ClipOut> {
        let n = self.add(Node::ClipMethod {
            name: name.to_string(),
            clips: clips.iter().map(|c| c.0).collect(),
            params: params.clone(),
        })?;
        Ok(ClipOut(out(n, 0)))
    }

    /// CLIPMergeSimple.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn clip_merge_simple(
        &mut self,
        clip1: ClipOut,
        clip2: ClipOut,
        ratio: f64,
    ) -> Result<ClipOut> {
        let n = self.add(Node::ClipMergeSimple {
            clip1: clip1.0,
            clip2: clip2.0,
            ratio,
        })?;
        Ok(ClipOut(out(n, 0)))
    }

    /// CLIPMergeSubtract.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn clip_subtract(
        &mut self,
        clip1: ClipOut,
        clip2: ClipOut,
        multiplier: f64,
    ) -> Result<ClipOut> {
        let n = self.add(Node::ClipSubtract {
            clip1: clip1.0,
            clip2: clip2.0,
            multiplier,
        })?;
        Ok(ClipOut(out(n, 0)))
    }

    /// CLIPMergeAdd.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn clip_add(&mut self, clip1: ClipOut, clip2: ClipOut) -> Result<ClipOut> {
        let n = self.add(Node::ClipAdd {
            clip1: clip1.0,
            clip2: clip2.0,
        })?;
        Ok(ClipOut(out(n, 0)))
    }

    /// CheckpointSave; returns the node's index.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn save_checkpoint(
        &mut self,
        model: ModelOut,
        clip: ClipOut,
        vae: VaeOut,
        target: Target,
    ) -> Result<usize> {
        self.add(Node::SaveCheckpoint {
            model: model.0,
            clip: clip.0,
            vae: vae.0,
            target,
        })
    }

    /// ModelSave; returns the node's index.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn save_model(&mut self, model: ModelOut, target: Target) -> Result<usize> {
        self.add(Node::SaveModel {
            model: model.0,
            target,
        })
    }

    /// CLIPSave; returns the node's index.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn save_clip(&mut self, clip: ClipOut, target: Target) -> Result<usize> {
        self.add(Node::SaveClip {
            clip: clip.0,
            target,
        })
    }

    /// VAESave; returns the node's index.
    ///
    /// # Errors
    /// As [`Graph::add`].
    pub fn save_vae(&mut self, vae: VaeOut, target: Target) -> Result<usize> {
        self.add(Node::SaveVae { vae: vae.0, target })
    }

    /// LoraSave ("Extract and Save Lora"): the LoRA of a model difference (`model_diff`, a
    /// ModelMergeSubtract output) and/or a text-encoder difference (`text_encoder_diff`,
    /// CLIPMergeSubtract), factored at `rank`; returns the node's index.
    ///
    /// # Errors
    /// As [`Graph::add`]; when run: neither difference given, a rank outside 1..=4096, and the
    /// extraction's errors.
    pub fn save_lora(
        &mut self,
        model_diff: Option<ModelOut>,
        text_encoder_diff: Option<ClipOut>,
        rank: usize,
        lora_type: LoraType,
        bias_diff: bool,
        target: Target,
    ) -> Result<usize> {
        self.add(Node::SaveLora {
            model: model_diff.map(|m| m.0),
            clip: text_encoder_diff.map(|c| c.0),
            rank,
            lora_type,
            bias_diff,
            target,
        })
    }
}
