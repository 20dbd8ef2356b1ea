//! A denoiser alone in one file, as the input of a job (like a GGUF denoiser: one component, the
//! family detected from its tensors):
//!
//! - what ComfyUI's ModelSave node writes: the denoiser under `model.diffusion_model.`, with the
//!   markers of its prediction, and nothing else;
//! - what its UNETLoader reads from `diffusion_models/`, the form most denoisers are shared in
//!   (`flux1-dev.safetensors`, Wan's, Qwen-Image's and HunyuanVideo's releases): ComfyUI's
//!   in-memory names, or diffusers' names of a UNet/transformer file.
//!
//! A job writes what ModelSave writes for it (`crate::cli` routes a denoiser-only input there):
//! a checkpoint layout would need text encoders and an autoencoder the file does not hold.

use std::collections::BTreeMap;

use super::files::TensorSet;
use super::{component_of, single_file, Component, Input, InputLayout};
use crate::error::Result;
use crate::layout::invert::{read_prediction, states_prediction};
use crate::model::{Arch, ComponentKind, Components, InputMap};

/// The prefix of the denoiser's names in a single file.
const MODEL_PREFIX: &str = "model.diffusion_model.";

/// The denoiser of `set` when it holds one and nothing of another component (under the
/// single-file prefix with no other part's prefix, or in a denoiser file's own names): its
/// tensors in ComfyUI's names, with the keys the conversion left out and made. `None` for any
/// other file.
pub(super) fn denoiser_of(set: &TensorSet, other_parts: &[&str]) -> Option<Component> {
    let has = |p: &str| set.tensors.keys().any(|k| k.starts_with(p));
    if other_parts.iter().any(|p| has(p)) {
        return None;
    }
    component_of(ComponentKind::Model, set, None, 0).ok()
}

/// The family of a denoiser's `tensors`: `arch` when given, else detected.
///
/// # Errors
/// [`crate::Error::UnknownArchitecture`] (and the family errors of detection) when the tensors
/// form no known denoiser.
pub(super) fn family(tensors: &InputMap, arch: Option<Arch>) -> Result<Arch> {
    if let Some(a) = arch {
        return Ok(a);
    }
    let infos: BTreeMap<_, _> = tensors.iter().map(|(k, t)| (k.clone(), t.info())).collect();
    crate::layout::detect::detect_model(&infos)
}

/// Whether the denoiser's names carry the single-file prefix (ModelSave's form), which the
/// generic layout reads when the family is unknown.
pub(super) fn is_prefixed(set: &TensorSet) -> bool {
    set.tensors.keys().any(|k| k.starts_with(MODEL_PREFIX))
}

/// The input of a denoiser-only file `set` (see the [module docs](self)) whose denoiser
/// [`denoiser_of`] gave, of the family `arch`.
///
/// # Errors
/// A malformed prediction marker; read errors.
pub(super) fn open(set: TensorSet, denoiser: Component, arch: Arch) -> Result<Input> {
    let (tensors, mut left_out, created) = denoiser;
    // ModelSave writes the prediction's markers beside the denoiser; a shared denoiser file
    // has none and gets its family's default.
    let all = set.infos();
    let (prediction, markers) = read_prediction(
        &set.path,
        &all,
        &set.metadata,
        arch.default_prediction(),
        single_file::sigma_reader(&set),
    )?;
    left_out.retain(|k| !markers.contains(&k.as_str()));
    left_out.extend(set.left_out.iter().cloned());
    left_out.sort();
    let mut components = Components::default();
    components.set_inputs(ComponentKind::Model, tensors);
    Ok(Input {
        components,
        arch: Some(arch),
        prediction: Some(prediction),
        prediction_stated: states_prediction(&all, &set.metadata),
        layout: InputLayout::Components,
        metadata: set.metadata,
        left_out,
        created,
        bytes: set.bytes,
    })
}
