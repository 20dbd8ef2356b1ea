//! Model families as a table: each family is one [`Family`] entry — how to tell it from the
//! denoiser's keys and shapes ([`Tell`]s) and the configuration values it derives from them
//! ([`Param`]s), the checkpoint prefix of each component, how the text encoders are laid out,
//! which text encoders and autoencoder it uses, its prediction type and metadata, its known
//! configurations ([`Variant`]s, each with the shape description of its synthetic model), its
//! diffusers names, ComfyUI's block-merge nodes for it and the LoRA names ComfyUI maps onto it.
//!
//! A new family is a table entry in `table` and its tests, not a new module of logic: layout,
//! loading, detection, component files and synthetic models all read the entry. The facts come
//! from ComfyUI (`comfy/model_detection.py`, `comfy/supported_models.py`, `comfy/sd.py`,
//! `comfy/text_encoders/`); the README lists each family's detection keys.

pub mod detect;
pub mod lora_names;
pub mod merge_nodes;
pub(crate) mod parts;
pub mod release;
mod table;

use crate::error::{Error, Result};
use crate::model::{Arch, Prediction};
use crate::synthetic::spec::Spec;
pub use detect::{detect, Detection};
pub use lora_names::LoraNames;
pub use merge_nodes::{BlockInput, MergeNode};
pub use parts::VaeKind;
pub use release::Release;

/// One family: everything the tool knows about a model class ComfyUI saves one way.
#[derive(Debug)]
pub struct Family {
    /// The architecture value naming this family.
    pub arch: Arch,
    /// The command-line name (`--arch`, `--synthetic`).
    pub name: &'static str,
    /// Other accepted names.
    pub aliases: &'static [&'static str],
    /// What it is, for people.
    pub title: &'static str,
    /// ComfyUI's model config class(es) (`comfy/supported_models.py`).
    pub comfy_class: &'static str,
    /// What the denoiser's keys (no prefix) must show; all must hold.
    pub tells: &'static [Tell],
    /// Configuration values derived from the denoiser's keys and shapes.
    pub params: &'static [Param],
    /// The params a denoiser must match a known variant on (detection refuses other values).
    pub placed: &'static [&'static str],
    /// Known configurations; the first is the default synthetic model.
    pub variants: &'static [Variant],
    /// Checkpoint prefix of each component.
    pub prefixes: Prefixes,
    /// How the clip component's keys become checkpoint keys.
    pub clip_layout: ClipLayout,
    /// Text encoders the clip component may hold only optionally (SD3's T5).
    pub optional_encoders: &'static [&'static str],
    /// The autoencoder ComfyUI builds for this family (`comfy/sd.py`, by its keys).
    pub vae: VaeKind,
    /// What the denoiser predicts unless markers or the user say otherwise.
    pub prediction: Prediction,
    /// `modelspec.architecture`, for the families the reference writes it for.
    pub modelspec: Option<&'static str>,
    /// Whether diffusers/transformers names are mapped for this family (`split --to
    /// diffusers`, diffusers inputs, LoRA names in diffusers form).
    pub diffusers: bool,
    /// ComfyUI's per-block merge nodes for this family (`ModelMerge<Arch>`, their key
    /// prefixes in order); empty where ComfyUI has none.
    pub block_prefixes: &'static [MergeNode],
    /// The LoRA names ComfyUI maps onto this family's denoiser beyond the generic ones
    /// (`comfy/lora.py`).
    pub lora: LoraNames,
    /// The parts its official single-file release holds beyond ComfyUI's save (LTX-2's audio
    /// VAE and vocoder, its text projection at the top level); `None` for the others.
    pub release: Option<&'static Release>,
}

/// One known configuration of a family, with its synthetic model.
#[derive(Debug)]
pub struct Variant {
    /// The `--synthetic` name (`wan21-14b`).
    pub name: &'static str,
    /// Other accepted names.
    pub aliases: &'static [&'static str],
    /// What it is (`Wan 2.1 text-to-video 14B`).
    pub title: &'static str,
    pub(crate) full: &'static Spec,
    pub(crate) tiny: &'static Spec,
}

/// Checkpoint prefixes of the three components.
#[derive(Debug, Clone, Copy)]
pub struct Prefixes {
    /// Denoiser keys (`model.diffusion_model.`; HunyuanVideo: `model.model.`).
    pub model: &'static str,
    /// Text-encoder keys of families laid out by prefix (`text_encoders.`, Chroma
    /// `cond_stage_model.`); the classic layouts have their own.
    pub clip: &'static str,
    /// Autoencoder keys (`first_stage_model.` or `vae.`).
    pub vae: &'static str,
}

/// How the clip component's keys become checkpoint keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipLayout {
    /// SD1.x: `clip_l.` → `cond_stage_model.`, projection and logit scale dropped.
    Sd15,
    /// SD2.x: OpenCLIP-H converted under `cond_stage_model.model.`.
    Sd2,
    /// SDXL: CLIP-L under `conditioner.embedders.0.`, OpenCLIP-G converted under `.1.model.`.
    Sdxl,
    /// SDXL refiner: OpenCLIP-G converted under `conditioner.embedders.0.model.`.
    SdxlRefiner,
    /// Every key with the family's clip prefix, unchanged.
    Prefix,
}

/// One fact about the denoiser's keys (no prefix) that a family needs.
#[derive(Debug, Clone, Copy)]
pub enum Tell {
    /// This key is present.
    Key(&'static str),
    /// One of these keys is present (ComfyUI accepts either suffix, e.g. `.scale`/`.weight`).
    Either(&'static [&'static str]),
    /// This key is absent.
    NoKey(&'static str),
    /// No key starts with this.
    NoPrefix(&'static str),
    /// No key contains this.
    NoContains(&'static str),
    /// `prefix{n}.` exists for exactly n = 0..count (ComfyUI's `count_blocks`).
    Blocks(&'static str, usize),
    /// This key is present with this many dimensions.
    Rank(&'static str, usize),
    /// This key's dimension `axis` has this size.
    Dim(&'static str, usize, usize),
    /// This key is absent, or its dimension `axis` does not have this size.
    NotDim(&'static str, usize, usize),
}

/// A configuration value derived from the denoiser's keys.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Its name, as ComfyUI's `unet_config` calls it.
    pub name: &'static str,
    /// How it is read.
    pub from: Derive,
}

/// How a [`Param`] is read.
#[derive(Debug, Clone, Copy)]
pub enum Derive {
    /// Dimension `axis` of `key`, divided by `div`.
    Dim {
        /// The key.
        key: &'static str,
        /// The axis.
        axis: usize,
        /// The divisor (a patch size, say).
        div: usize,
    },
    /// ComfyUI's `count_blocks`: how many `prefix{n}.` exist from 0 on.
    Blocks(&'static str),
    /// 1 when the key is present, else 0.
    Present(&'static str),
}

impl Family {
    /// Every family, in [`Arch::ALL`] order.
    pub fn all() -> &'static [Family] {
        &table::FAMILIES
    }

    /// The default variant (the first).
    pub fn default_variant(&self) -> &'static Variant {
        &self.variants[0]
    }

    /// The text encoders (clip component prefixes) a checkpoint of this family holds.
    pub fn encoders(&self) -> Vec<&'static str> {
        let mut out: Vec<&'static str> = Vec::new();
        for v in self.variants {
            for e in v.encoder_names() {
                if !out.contains(&e) {
                    out.push(e);
                }
            }
        }
        out
    }

    /// Top-level clip keys that are tokenizer data ComfyUI saves with the encoders.
    pub fn tokenizer_keys(&self) -> Vec<&'static str> {
        self.clip_extras(|e| match e {
            crate::synthetic::spec::Encoder::Tokenizer { key, .. } => Some(*key),
            _ => None,
        })
    }

    /// The first segments of the clip keys that belong to no text encoder: the tokenizer data
    /// and the layers the text-encoder model holds beside its encoders (LTX-2's
    /// `text_embedding_projection`).
    pub fn clip_top_level(&self) -> Vec<&'static str> {
        self.clip_extras(|e| match e {
            crate::synthetic::spec::Encoder::Tokenizer { key, .. }
            | crate::synthetic::spec::Encoder::Projection { key, .. } => Some(*key),
            _ => None,
        })
    }

    /// The top-level layers of the clip component every variant's text-encoder model holds
    /// beside its encoders (LTX-2's `text_embedding_projection`).
    pub fn projections(&self) -> Vec<&'static str> {
        self.clip_extras(|e| match e {
            crate::synthetic::spec::Encoder::Projection { key, .. } => Some(*key),
            _ => None,
        })
    }

    fn clip_extras(
        &self,
        pick: impl Fn(&crate::synthetic::spec::Encoder) -> Option<&'static str>,
    ) -> Vec<&'static str> {
        let mut out = Vec::new();
        for v in self.variants {
            for key in v.full.encoders.iter().filter_map(&pick) {
                if !out.contains(&key) {
                    out.push(key);
                }
            }
        }
        out
    }
}

impl Variant {
    /// Whether two variants have the same denoiser for this tool (Flux.1 Kontext has Flux.1
    /// dev's keys and shapes; LTX-2's release holds LTX-2's): detection places both as the
    /// first.
    pub fn same_model_as(&self, other: &Variant) -> bool {
        use crate::model::ComponentKind;
        let model = |v: &Variant| {
            crate::synthetic::expand::expand(v.full)
                .get(ComponentKind::Model)
                .cloned()
        };
        std::ptr::eq(self.full, other.full) || model(self) == model(other)
    }

    /// The text encoders (clip component prefixes) of this variant.
    pub fn encoder_names(&self) -> Vec<&'static str> {
        use crate::synthetic::spec::Encoder;
        self.full
            .encoders
            .iter()
            .filter_map(|e| match e {
                Encoder::Clip(c) => Some(c.name),
                Encoder::T5(t) => Some(t.name),
                Encoder::Llm(l) => Some(l.name),
                Encoder::Tokenizer { .. } | Encoder::Projection { .. } => None,
            })
            .collect()
    }
}

/// `s` lower-cased without separators, so `Wan2.1_14B`, `wan21-14b` and `wan2114b` compare equal.
fn normalise(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '-' | '_' | '.' | ' '))
        .flat_map(char::to_lowercase)
        .collect()
}

/// The family a name (a family's, an alias or a variant's) names.
///
/// # Errors
/// [`Error::UnknownArchitecture`] listing the known names.
pub fn family_named(name: &str) -> Result<&'static Family> {
    let n = normalise(name);
    for f in Family::all() {
        let names = std::iter::once(f.name).chain(f.aliases.iter().copied());
        let variants = f
            .variants
            .iter()
            .flat_map(|v| std::iter::once(v.name).chain(v.aliases.iter().copied()));
        if names.chain(variants).any(|x| normalise(x) == n) {
            return Ok(f);
        }
    }
    Err(Error::UnknownArchitecture {
        reason: format!("`{name}` is not an architecture name"),
        known: Arch::known_names(),
    })
}

/// The variant a name names: a variant's name (or alias), or a family's (its default variant).
///
/// # Errors
/// [`Error::UnknownArchitecture`] listing the known names.
pub fn variant_named(name: &str) -> Result<(Arch, &'static Variant)> {
    let n = normalise(name);
    for f in Family::all() {
        for v in f.variants {
            if std::iter::once(v.name)
                .chain(v.aliases.iter().copied())
                .any(|x| normalise(x) == n)
            {
                return Ok((f.arch, v));
            }
        }
    }
    let f = family_named(name).map_err(|_| Error::UnknownArchitecture {
        reason: format!("`{name}` is not a model name"),
        known: variant_names(),
    })?;
    Ok((f.arch, f.default_variant()))
}

/// Every variant's name, comma-separated, for messages and help texts.
pub fn variant_names() -> String {
    Family::all()
        .iter()
        .flat_map(|f| f.variants.iter().map(|v| v.name))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
