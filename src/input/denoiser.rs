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
use super::{component_of, single_file, Input, InputLayout};
use crate::error::Result;
use crate::layout::invert::{read_prediction, states_prediction};
use crate::model::{Arch, ComponentKind, Components};

/// The prefix of the denoiser's names in a single file.
const MODEL_PREFIX: &str = "model.diffusion_model.";

/// Whether `set` holds a denoiser and nothing of another component: under the single-file
/// prefix with no other part's prefix, or in a denoiser file's own names.
pub(super) fn is_denoiser_file(set: &TensorSet, other_parts: &[&str]) -> bool {
    let has = |p: &str| set.tensors.keys().any(|k| k.starts_with(p));
    if other_parts.iter().any(|p| has(p)) {
        return false;
    }
    is_prefixed(set) || component_of(ComponentKind::Model, set, None, 0).is_ok()
}

/// The family of a denoiser-only file's tensors: `arch` when given, else detected.
///
/// # Errors
/// [`crate::Error::UnknownArchitecture`] (and the family errors of detection) when the tensors
/// form no known denoiser.
pub(super) fn family(set: &TensorSet, arch: Option<Arch>) -> Result<Arch> {
    if let Some(a) = arch {
        return Ok(a);
    }
    let (tensors, _, _) = component_of(ComponentKind::Model, set, None, 0)?;
    let infos: BTreeMap<_, _> = tensors.iter().map(|(k, t)| (k.clone(), t.info())).collect();
    crate::layout::detect::detect_model(&infos)
}

/// Whether the denoiser's names carry the single-file prefix (ModelSave's form), which the
/// generic layout reads when the family is unknown.
pub(super) fn is_prefixed(set: &TensorSet) -> bool {
    set.tensors.keys().any(|k| k.starts_with(MODEL_PREFIX))
}

/// Reads a denoiser-only file (see the [module docs](self)) of the family `arch`.
///
/// # Errors
/// A malformed prediction marker; conversion errors of diffusers names; read errors.
pub(super) fn open(set: TensorSet, arch: Arch) -> Result<Input> {
    let (tensors, mut left_out, created) = component_of(ComponentKind::Model, &set, Some(arch), 0)?;
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
