//! Layout: which checkpoint key each component tensor gets (checkpoint-format.md §4, §8).
//!
//! Pure functions over key names and shapes: no I/O and no device work, so every rule can be
//! checked against the reference fixtures on full-size shapes without allocating a tensor.
//! Conversions that change data (q/k/v fusion, the transposed projection) and tensors the save
//! creates (`position_ids`, markers) are described by a [`Source`]; the offload stage executes them.

mod clip;
pub mod detect;
pub mod diffusers;
pub(crate) mod invert;
pub mod openclip;
mod release;

use std::collections::{BTreeMap, HashMap};

use crate::error::{Error, Result};
use crate::family::parts::{check_clip, check_vae};
use crate::model::{Arch, ComponentKind, ComponentShapes, Dtype, Prediction, TensorInfo};
use clip::clip_layout;

/// Prefix of every denoiser key in the classic LDM/SGM layouts.
pub const UNET_PREFIX: &str = "model.diffusion_model.";

/// Length of CLIP's token window, and so of SDXL's `position_ids`.
pub const CLIP_CONTEXT: usize = 77;

/// How keys are laid out: one of the known architectures, or prefixes the user chooses.
#[derive(Debug, Clone, PartialEq)]
pub enum LayoutKind {
    /// The reference layout of one architecture.
    Arch(Arch),
    /// Every key of each component gets the given prefix; nothing is converted.
    Generic(GenericPrefixes),
}

/// Prefixes of the generic layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericPrefixes {
    /// Prefix of denoiser keys (default `model.diffusion_model.`).
    pub model: String,
    /// Prefix of text-encoder keys (default `text_encoders.`).
    pub clip: String,
    /// Prefix of autoencoder keys (default `vae.`).
    pub vae: String,
    /// Prefix of image-encoder keys (default `clip_vision.`).
    pub clip_vision: String,
}

impl Default for GenericPrefixes {
    fn default() -> Self {
        Self {
            model: UNET_PREFIX.into(),
            clip: "text_encoders.".into(),
            vae: "vae.".into(),
            clip_vision: "clip_vision.".into(),
        }
    }
}

impl GenericPrefixes {
    /// The prefix of one component's keys.
    pub(crate) fn get(&self, kind: ComponentKind) -> &str {
        match kind {
            ComponentKind::Model => &self.model,
            ComponentKind::Clip => &self.clip,
            ComponentKind::Vae => &self.vae,
            ComponentKind::ClipVision => &self.clip_vision,
            // Never a prefix: the audio parts keep the names their loaders read.
            ComponentKind::AudioVae => "",
        }
    }
}

/// Where the bytes of one checkpoint tensor come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A component tensor, unchanged (only renamed).
    Copy {
        /// Its component.
        component: ComponentKind,
        /// Its in-memory key.
        key: String,
    },
    /// q, k and v concatenated along dim 0 (OpenCLIP `in_proj_weight` / `in_proj_bias`).
    FuseQkv {
        /// Their component.
        component: ComponentKind,
        /// In-memory keys of q, k, v, in that order.
        keys: [String; 3],
    },
    /// A 2-D tensor transposed (OpenCLIP `text_projection`).
    Transpose {
        /// Its component.
        component: ComponentKind,
        /// Its in-memory key.
        key: String,
    },
    /// `0..len` as I64, shape `[1, len]` (SDXL's CLIP-L `position_ids`).
    PositionIds {
        /// Number of positions.
        len: usize,
    },
    /// An empty F32 tensor of shape `[0]` (`v_pred`, `ztsnr`).
    EmptyMarker,
    /// An F32 0-dim scalar (`edm_vpred.sigma_max`, `edm_vpred.sigma_min`).
    ScalarF32(f32),
}

impl Source {
    /// The component whose dtype choice applies, `None` for tensors the save creates.
    pub fn component(&self) -> Option<ComponentKind> {
        match self {
            Source::Copy { component, .. }
            | Source::FuseQkv { component, .. }
            | Source::Transpose { component, .. } => Some(*component),
            Source::PositionIds { .. } | Source::EmptyMarker | Source::ScalarF32(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Source::Copy { component, key } | Source::Transpose { component, key } => {
                format!("{component} tensor `{key}`")
            }
            Source::FuseQkv { component, keys } => format!("{component} tensors `{}`…", keys[0]),
            Source::PositionIds { .. } => "the created position_ids".into(),
            Source::EmptyMarker | Source::ScalarF32(_) => "a marker tensor".into(),
        }
    }
}

/// One tensor of the checkpoint: its key, where it comes from, its shape and held dtype.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Checkpoint key.
    pub key: String,
    /// Source of the bytes.
    pub source: Source,
    /// Shape in the file.
    pub shape: Vec<usize>,
    /// Dtype of the source (before any cast the plan applies).
    pub dtype: Dtype,
}

/// The checkpoint's tensors in the order the reference hands them to the writer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Layout {
    /// Every tensor of the file.
    pub entries: Vec<Entry>,
    /// Component keys the reference drops on save (e.g. SD1's `clip_l.logit_scale`).
    pub dropped: Vec<(ComponentKind, String)>,
}

impl Layout {
    /// The entry with this checkpoint key.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.key == key)
    }
}

/// Builds the layout of a checkpoint.
///
/// # Errors
/// - [`Error::MissingComponent`] when the denoiser is absent, or an architecture layout lacks the
///   text encoders or autoencoder it needs;
/// - [`Error::FamilyMismatch`] when the text encoders or the autoencoder are another family's;
/// - [`Error::Conversion`] when q/k/v of a fusion are missing or mismatched, or a projection is not 2-D;
/// - [`Error::DuplicateKey`] when two sources map to one checkpoint key.
pub fn layout(
    kind: &LayoutKind,
    shapes: &ComponentShapes,
    prediction: Prediction,
) -> Result<Layout> {
    let mut b = Builder::default();
    let model = shapes
        .get(ComponentKind::Model)
        .ok_or_else(|| Error::MissingComponent {
            component: "model",
            hint: "the denoiser (UNet/DiT) is required in every checkpoint".into(),
        })?;
    match kind {
        LayoutKind::Generic(prefixes) => {
            for kind in ComponentKind::ALL {
                match shapes.get(kind) {
                    // The audio parts have the names their loaders read, whatever the prefixes.
                    Some(map) if kind == ComponentKind::AudioVae => {
                        release::audio_layout(&mut b, &crate::family::release::LTX2, map)?;
                    }
                    Some(map) => b.prefix_all(kind, map, prefixes.get(kind))?,
                    None => {}
                }
            }
        }
        LayoutKind::Arch(arch) => {
            let family = arch.family();
            b.prefix_all(ComponentKind::Model, model, family.prefixes.model)?;
            let clip = required(shapes, ComponentKind::Clip, *arch)?;
            let vae = required(shapes, ComponentKind::Vae, *arch)?;
            check_clip(family, clip)?;
            check_vae(family, vae)?;
            let release_clip = family.release.filter(|r| r.is_release_clip(clip.keys()));
            match release_clip {
                Some(r) => release::projection_layout(&mut b, r, clip)?,
                None => clip_layout(&mut b, *arch, clip)?,
            }
            b.prefix_all(ComponentKind::Vae, vae, family.prefixes.vae)?;
            if let Some(audio) = shapes.get(ComponentKind::AudioVae) {
                let r = family
                    .release
                    .ok_or_else(|| release::no_audio(*arch, audio))?;
                release::audio_layout(&mut b, r, audio)?;
            }
        }
    }
    markers(&mut b, prediction)?;
    Ok(b.finish())
}

fn required(
    shapes: &ComponentShapes,
    kind: ComponentKind,
    arch: Arch,
) -> Result<&BTreeMap<String, TensorInfo>> {
    shapes.get(kind).ok_or_else(|| Error::MissingComponent {
        component: kind.name(),
        hint: format!(
            "a {arch} checkpoint holds model, clip and vae; pass the {kind} component, or use the generic layout (--arch generic; LayoutChoice::Generic) to save a partial checkpoint"
        ),
    })
}

/// The marker tensors of §4 for a prediction type.
fn markers(b: &mut Builder, prediction: Prediction) -> Result<()> {
    let empty = |key: &str| Entry {
        key: key.into(),
        source: Source::EmptyMarker,
        shape: vec![0],
        dtype: Dtype::F32,
    };
    match prediction {
        Prediction::V => b.push(empty("v_pred"))?,
        Prediction::VZsnr => {
            b.push(empty("v_pred"))?;
            b.push(empty("ztsnr"))?;
        }
        Prediction::EdmV {
            sigma_max,
            sigma_min,
        } => {
            for (key, v) in [
                ("edm_vpred.sigma_max", sigma_max),
                ("edm_vpred.sigma_min", sigma_min),
            ] {
                b.push(Entry {
                    key: key.into(),
                    source: Source::ScalarF32(edm_sigma(v)),
                    shape: vec![],
                    dtype: Dtype::F32,
                })?;
            }
        }
        Prediction::Eps | Prediction::Flow | Prediction::Unknown => {}
    }
    Ok(())
}

/// The float32 end-point of ComfyUI's sigma table `exp(linspace(log(min), log(max)))`.
fn edm_sigma(v: f64) -> f32 {
    (v as f32).ln().exp()
}

/// The layout under construction: entries in order, with a check for duplicate keys.
#[derive(Default)]
struct Builder {
    entries: Vec<Entry>,
    index: HashMap<String, usize>,
    pub(super) dropped: Vec<(ComponentKind, String)>,
}

impl Builder {
    pub(super) fn push(&mut self, e: Entry) -> Result<()> {
        if let Some(&i) = self.index.get(&e.key) {
            return Err(Error::DuplicateKey {
                key: e.key.clone(),
                first: self.entries[i].source.describe(),
                second: e.source.describe(),
            });
        }
        self.index.insert(e.key.clone(), self.entries.len());
        self.entries.push(e);
        Ok(())
    }

    pub(super) fn copy(
        &mut self,
        component: ComponentKind,
        key: &str,
        info: &TensorInfo,
        new: String,
    ) -> Result<()> {
        self.push(Entry {
            key: new,
            source: Source::Copy {
                component,
                key: key.to_string(),
            },
            shape: info.shape.clone(),
            dtype: info.dtype,
        })
    }

    pub(super) fn prefix_all(
        &mut self,
        component: ComponentKind,
        map: &BTreeMap<String, TensorInfo>,
        prefix: &str,
    ) -> Result<()> {
        for (k, info) in map {
            self.copy(component, k, info, format!("{prefix}{k}"))?;
        }
        Ok(())
    }

    fn finish(self) -> Layout {
        Layout {
            entries: self.entries,
            dropped: self.dropped,
        }
    }
}

#[cfg(test)]
mod tests;
