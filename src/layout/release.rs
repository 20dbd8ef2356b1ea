//! The parts of a family's release that ComfyUI's save does not write (see
//! [`crate::family::release`]): the audio component under the names its loaders read, and a
//! clip component of only the text projection at the top level, as the release holds it.

use std::collections::BTreeMap;

use super::Builder;
use crate::error::{Error, Result};
use crate::family::Release;
use crate::model::{Arch, ComponentKind, TensorInfo};

/// The audio component's keys under the release's names (`autoencoder.` → `audio_vae.`,
/// `vocoder.` kept).
pub(super) fn audio_layout(
    b: &mut Builder,
    release: &Release,
    audio: &BTreeMap<String, TensorInfo>,
) -> Result<()> {
    for (k, info) in audio {
        let file = release.audio_file_key(k).ok_or_else(|| Error::Conversion {
            key: k.clone(),
            reason: format!(
                "an audio VAE tensor is named `{}` (ComfyUI's AudioVAE names); give the audio \
                 VAE file its loader reads (`audio_vae.…`, `vocoder.…`)",
                release
                    .audio
                    .iter()
                    .map(|(m, _)| format!("{m}…"))
                    .collect::<Vec<_>>()
                    .join("` or `")
            ),
        })?;
        b.copy(ComponentKind::AudioVae, k, info, file)?;
    }
    Ok(())
}

/// A clip component of only the projection, at the top level under the release's names.
pub(super) fn projection_layout(
    b: &mut Builder,
    release: &Release,
    clip: &BTreeMap<String, TensorInfo>,
) -> Result<()> {
    for (k, info) in clip {
        b.copy(ComponentKind::Clip, k, info, release.projection_file_key(k))?;
    }
    Ok(())
}

/// The refusal of an audio component beside a family whose models have none.
pub(super) fn no_audio(arch: Arch, audio: &BTreeMap<String, TensorInfo>) -> Error {
    let with_audio: Vec<&str> = crate::family::Family::all()
        .iter()
        .filter(|f| f.release.is_some())
        .map(|f| f.name)
        .collect();
    Error::FamilyMismatch {
        reason: format!(
            "an audio VAE ({} tensor(s), first `{}`) was given with a {arch} model, which has \
             none (audio VAEs belong to {}); leave it out, or give the model it belongs to",
            audio.len(),
            audio.keys().next().map_or("", String::as_str),
            with_audio.join(", ")
        ),
    }
}
