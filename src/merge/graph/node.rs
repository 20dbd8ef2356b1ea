//! The node vocabulary of a merge graph: ComfyUI's loaders, merge nodes, LoRA loaders and save
//! nodes, each with the values it takes and gives (`MODEL`, `CLIP`, `VAE`).

use std::fmt;
use std::path::PathBuf;

use crate::merge::{Lora, LoraType};
use crate::model::{Arch, Components};

/// The type of a value flowing along a link, as ComfyUI names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// A denoiser with its patches (ComfyUI's `MODEL`).
    Model,
    /// Text encoders with their patches (`CLIP`).
    Clip,
    /// An autoencoder (`VAE`).
    Vae,
}

impl ValueType {
    /// ComfyUI's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            ValueType::Model => "MODEL",
            ValueType::Clip => "CLIP",
            ValueType::Vae => "VAE",
        }
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One output of a node: the node's index in the graph and the output's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Slot {
    /// Index of the node in the graph (the order nodes were added).
    pub node: usize,
    /// Which of the node's outputs (ComfyUI's output index).
    pub output: usize,
}

/// Where a loader's tensors come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file (single-file checkpoint, component file, shard index) or a diffusers folder, read
    /// where it lies.
    Path(PathBuf),
    /// Tensors already held (candle tensors on any device, or inputs opened by the caller),
    /// under a name for messages and the recipe.
    Memory {
        /// The name the recipe records.
        name: String,
        /// The components; a loader of one component takes that one.
        components: Components,
    },
}

impl Source {
    /// The name the recipe and messages use: the file or folder name, or the given name.
    pub fn name(&self) -> String {
        match self {
            Source::Path(p) => p.file_name().map_or_else(
                || p.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            ),
            Source::Memory { name, .. } => name.clone(),
        }
    }
}

/// Where a LoRA comes from.
#[derive(Debug, Clone)]
pub enum LoraSource {
    /// A LoRA file, read where it lies.
    Path(PathBuf),
    /// A LoRA already opened (or made from candle tensors with [`Lora::from_tensors`]).
    Memory(Lora),
}

/// Where a save node writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// ComfyUI's naming under the output folder: `<prefix>_<counter:05>_.safetensors`, the
    /// counter as ComfyUI's `get_save_image_path` gives it (saves of one graph sharing a prefix
    /// get successive counters, as ComfyUI running them one after another would).
    Prefix(String),
    /// This exact path (never replaced). A text-encoder save of several encoders writes one file
    /// per encoder, `_clip_l`, `_clip_g`, `_t5xxl`… added before the extension, as ComfyUI's
    /// CLIPSave adds them to the prefix.
    File(PathBuf),
}

/// One node of a merge graph. Merges and LoRAs never compute anything themselves: as in ComfyUI,
/// they add patches to a copy of their first input, and each saved tensor is the evaluation of
/// its patch list (see [`crate::model::merged`]).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Node {
    /// CheckpointLoaderSimple: a single-file checkpoint or diffusers folder → MODEL, CLIP, VAE.
    Checkpoint(Source),
    /// UNETLoader: a denoiser file → MODEL.
    DiffusionModel(Source),
    /// CLIPLoader / DualCLIPLoader / TripleCLIPLoader: text-encoder files, in the pipeline's
    /// order → CLIP. `arch` places encoders whose width is not a released model's.
    TextEncoders {
        /// The files (or one [`Source::Memory`] with the clip component).
        sources: Vec<Source>,
        /// The architecture the encoders are for, when known.
        arch: Option<Arch>,
    },
    /// VAELoader: an autoencoder file → VAE.
    Vae(Source),
    /// LoraLoader (with a CLIP) or LoraLoaderModelOnly (without) → MODEL, CLIP.
    Lora {
        /// The model patched.
        model: Slot,
        /// The text encoders patched, if any.
        clip: Option<Slot>,
        /// The LoRA.
        lora: LoraSource,
        /// Strength on the model.
        strength_model: f64,
        /// Strength on the text encoders.
        strength_clip: f64,
    },
    /// ModelMergeSimple: `model1·ratio + model2·(1 − ratio)` (ratio 1 keeps model1).
    ModelMergeSimple {
        /// Patched.
        model1: Slot,
        /// Added.
        model2: Slot,
        /// ComfyUI's ratio.
        ratio: f64,
    },
    /// ModelMergeBlocks and its model-specific variants (ModelMergeSD1 …): ModelMergeSimple
    /// with the ratio of the longest key prefix that matches, and the first entry's for keys
    /// none matches.
    ModelMergeBlocks {
        /// Patched.
        model1: Slot,
        /// Added.
        model2: Slot,
        /// Key prefixes (ComfyUI's denoiser names) and their ratios, in the node's order.
        ratios: Vec<(String, f64)>,
    },
    /// ModelMergeSubtract: `model1·m + model2·(−m)`.
    ModelSubtract {
        /// Patched.
        model1: Slot,
        /// Subtracted.
        model2: Slot,
        /// `m`.
        multiplier: f64,
    },
    /// ModelMergeAdd: `model1 + model2`.
    ModelAdd {
        /// Patched.
        model1: Slot,
        /// Added.
        model2: Slot,
    },
    /// CLIPMergeSimple: as ModelMergeSimple over the text encoders (`position_ids` and
    /// `logit_scale` stay clip1's).
    ClipMergeSimple {
        /// Patched.
        clip1: Slot,
        /// Added.
        clip2: Slot,
        /// ComfyUI's ratio.
        ratio: f64,
    },
    /// CLIPMergeSubtract.
    ClipSubtract {
        /// Patched.
        clip1: Slot,
        /// Subtracted.
        clip2: Slot,
        /// `m`.
        multiplier: f64,
    },
    /// CLIPMergeAdd.
    ClipAdd {
        /// Patched.
        clip1: Slot,
        /// Added.
        clip2: Slot,
    },
    /// A merge method of sd-mecha's over any number of models ([`crate::merge::methods`]):
    /// each denoiser tensor the first model has and every other model has too is the method's
    /// result over them; the others stay the first model's.
    Method {
        /// sd-mecha's name of the method.
        name: String,
        /// The models, in the method's order.
        models: Vec<Slot>,
        /// Named parameters; those not given take the method's defaults.
        params: std::collections::BTreeMap<String, crate::merge::methods::Param>,
    },
    /// The same merge method over the text encoders of any number of models: `position_ids`
    /// and `logit_scale` stay the first's, as ComfyUI's CLIP merge nodes leave them.
    ClipMethod {
        /// sd-mecha's name of the method.
        name: String,
        /// The text encoders, in the method's order.
        clips: Vec<Slot>,
        /// Named parameters; those not given take the method's defaults.
        params: std::collections::BTreeMap<String, crate::merge::methods::Param>,
    },
    /// CheckpointSave: model, text encoders and autoencoder in one checkpoint.
    SaveCheckpoint {
        /// The denoiser.
        model: Slot,
        /// The text encoders.
        clip: Slot,
        /// The autoencoder.
        vae: Slot,
        /// Where.
        target: Target,
    },
    /// ModelSave: the denoiser alone, under the checkpoint's `model.diffusion_model.` keys.
    SaveModel {
        /// The denoiser.
        model: Slot,
        /// Where.
        target: Target,
    },
    /// CLIPSave: one file per text encoder, in transformers names.
    SaveClip {
        /// The text encoders.
        clip: Slot,
        /// Where.
        target: Target,
    },
    /// VAESave: the autoencoder in ComfyUI's names.
    SaveVae {
        /// The autoencoder.
        vae: Slot,
        /// Where.
        target: Target,
    },
    /// LoraSave ("Extract and Save Lora"): the LoRA of a model difference (a
    /// ModelMergeSubtract output) and/or a text-encoder difference (CLIPMergeSubtract), each
    /// weight factored at `rank` (see [`crate::merge::extract_lora_from_difference`]).
    SaveLora {
        /// The denoiser difference (LoraSave's `model_diff`), if any.
        model: Option<Slot>,
        /// The text-encoder difference (`text_encoder_diff`), if any.
        clip: Option<Slot>,
        /// The rank (1 to 4096).
        rank: usize,
        /// `standard` or `full_diff`.
        lora_type: LoraType,
        /// Also 1-D weight (`.diff`) and bias (`.diff_b`) differences.
        bias_diff: bool,
        /// Where (ComfyUI's default prefix: `loras/ComfyUI_extracted_lora`).
        target: Target,
    },
}

impl Node {
    /// The ComfyUI class this node is (the recipe's `class_type`).
    pub fn class(&self) -> &'static str {
        match self {
            Node::Checkpoint(_) => "CheckpointLoaderSimple",
            Node::DiffusionModel(_) => "UNETLoader",
            Node::TextEncoders { sources, .. } => match sources.len() {
                2 => "DualCLIPLoader",
                3 => "TripleCLIPLoader",
                _ => "CLIPLoader",
            },
            Node::Vae(_) => "VAELoader",
            Node::Lora { clip: Some(_), .. } => "LoraLoader",
            Node::Lora { clip: None, .. } => "LoraLoaderModelOnly",
            Node::ModelMergeSimple { .. } => "ModelMergeSimple",
            Node::ModelMergeBlocks { .. } => "ModelMergeBlocks",
            Node::ModelSubtract { .. } => "ModelMergeSubtract",
            Node::ModelAdd { .. } => "ModelMergeAdd",
            Node::ClipMergeSimple { .. } => "CLIPMergeSimple",
            Node::ClipSubtract { .. } => "CLIPMergeSubtract",
            Node::ClipAdd { .. } => "CLIPMergeAdd",
            Node::Method { .. } => "MergeMethod",
            Node::ClipMethod { .. } => "CLIPMergeMethod",
            Node::SaveCheckpoint { .. } => "CheckpointSave",
            Node::SaveModel { .. } => "ModelSave",
            Node::SaveClip { .. } => "CLIPSave",
            Node::SaveVae { .. } => "VAESave",
            Node::SaveLora { .. } => "LoraSave",
        }
    }

    /// The types of the node's outputs, by index.
    pub fn outputs(&self) -> &'static [ValueType] {
        use ValueType::{Clip, Model, Vae};
        match self {
            Node::Checkpoint(_) => &[Model, Clip, Vae],
            Node::DiffusionModel(_)
            | Node::ModelMergeSimple { .. }
            | Node::ModelMergeBlocks { .. }
            | Node::ModelSubtract { .. }
            | Node::ModelAdd { .. }
            | Node::Method { .. } => &[Model],
            Node::TextEncoders { .. }
            | Node::ClipMergeSimple { .. }
            | Node::ClipSubtract { .. }
            | Node::ClipAdd { .. }
            | Node::ClipMethod { .. } => &[Clip],
            Node::Vae(_) => &[Vae],
            Node::Lora { clip: Some(_), .. } => &[Model, Clip],
            Node::Lora { clip: None, .. } => &[Model],
            Node::SaveCheckpoint { .. }
            | Node::SaveModel { .. }
            | Node::SaveClip { .. }
            | Node::SaveVae { .. }
            | Node::SaveLora { .. } => &[],
        }
    }

    /// The node's linked inputs: name, the slot it reads and the type it takes.
    pub fn links(&self) -> Vec<(&'static str, Slot, ValueType)> {
        use ValueType::{Clip, Model, Vae};
        match self {
            Node::Checkpoint(_) | Node::DiffusionModel(_) | Node::TextEncoders { .. } => vec![],
            Node::Vae(_) => vec![],
            Node::Lora { model, clip, .. } => {
                let mut v = vec![("model", *model, Model)];
                v.extend(clip.map(|c| ("clip", c, Clip)));
                v
            }
            Node::ModelMergeSimple { model1, model2, .. }
            | Node::ModelMergeBlocks { model1, model2, .. }
            | Node::ModelSubtract { model1, model2, .. }
            | Node::ModelAdd { model1, model2 } => {
                vec![("model1", *model1, Model), ("model2", *model2, Model)]
            }
            Node::ClipMergeSimple { clip1, clip2, .. }
            | Node::ClipSubtract { clip1, clip2, .. }
            | Node::ClipAdd { clip1, clip2 } => {
                vec![("clip1", *clip1, Clip), ("clip2", *clip2, Clip)]
            }
            Node::SaveCheckpoint {
                model, clip, vae, ..
            } => vec![
                ("model", *model, Model),
                ("clip", *clip, Clip),
                ("vae", *vae, Vae),
            ],
            Node::Method { models, .. } => models.iter().map(|m| ("models", *m, Model)).collect(),
            Node::ClipMethod { clips, .. } => clips.iter().map(|c| ("clips", *c, Clip)).collect(),
            Node::SaveModel { model, .. } => vec![("model", *model, Model)],
            Node::SaveClip { clip, .. } => vec![("clip", *clip, Clip)],
            Node::SaveVae { vae, .. } => vec![("vae", *vae, Vae)],
            Node::SaveLora { model, clip, .. } => {
                let mut v: Vec<_> = model.iter().map(|m| ("model_diff", *m, Model)).collect();
                v.extend(clip.map(|c| ("text_encoder_diff", c, Clip)));
                v
            }
        }
    }

    /// Whether the node writes files.
    pub fn is_save(&self) -> bool {
        self.outputs().is_empty()
    }
}
