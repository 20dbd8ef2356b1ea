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

#[cfg(test)]
mod tests {
    use super::super::{layout, LayoutKind};
    use crate::model::{Arch, ComponentKind, Prediction};
    use crate::synthetic::expand::expand;
    use crate::synthetic::models::{LTX2_19B_RELEASE_TINY, WAN21_TINY};

    /// An audio VAE beside a model whose family has none is refused naming both, nothing
    /// laid out; beside LTX-2's it takes the release's names.
    #[test]
    fn an_audio_vae_goes_only_with_a_family_that_has_one() {
        let release = expand(&LTX2_19B_RELEASE_TINY);
        let audio = release.get(ComponentKind::AudioVae).unwrap().clone();
        let mut wan = expand(&WAN21_TINY);
        wan.set(ComponentKind::AudioVae, audio.clone());
        let e = layout(&LayoutKind::Arch(Arch::Wan21), &wan, Prediction::Flow)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("audio VAE") && e.contains("wan21") && e.contains("ltx2"),
            "{e}"
        );
        let l = layout(&LayoutKind::Arch(Arch::Ltx2), &release, Prediction::Flow).unwrap();
        let audio_keys: Vec<&str> = l
            .entries
            .iter()
            .filter(|e| e.source.component() == Some(ComponentKind::AudioVae))
            .map(|e| e.key.as_str())
            .collect();
        assert_eq!(audio_keys.len(), audio.len());
        assert!(audio_keys
            .iter()
            .all(|k| k.starts_with("audio_vae.") || k.starts_with("vocoder.")));
        // A tensor that is no part of ComfyUI's AudioVAE is refused by name.
        let mut bad = release.clone();
        let mut a = audio;
        a.insert(
            "decoder.conv_in.weight".into(),
            a.values().next().unwrap().clone(),
        );
        bad.set(ComponentKind::AudioVae, a);
        let e = layout(&LayoutKind::Arch(Arch::Ltx2), &bad, Prediction::Flow)
            .unwrap_err()
            .to_string();
        assert!(e.contains("decoder.conv_in.weight"), "{e}");
    }
}
