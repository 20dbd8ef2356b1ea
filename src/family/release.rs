//! The parts a family's official single-file release holds beyond what ComfyUI's checkpoint save
//! writes: LTX-2's (Lightricks' `ltx-2-19b-*.safetensors`) audio autoencoder with its vocoder,
//! and its text projection at the top level in place of a text encoder.
//!
//! Facts from ComfyUI: `comfy_extras/nodes_lt_audio.py` `LTXVAudioVAELoader` reads the
//! `audio_vae.` and `vocoder.` keys of a `vae/` or `checkpoints/` file into one `AudioVAE` as
//! `autoencoder.…` and `vocoder.…`, and `comfy/sd.py` `VAE` (the `vocoder.resblocks.0.convs1.0.weight`
//! branch) does the same for any VAE file; both need the file's `config` metadata (its
//! `audio_vae` and `vocoder` sections, `comfy/ldm/lightricks/vae/audio_vae.py`).
//! `text_encoders/lt.py` `LTXAVTEModel.load_sd` reads the checkpoint's
//! `text_embedding_projection.aggregate_embed.weight` as `text_embedding_projection.weight`
//! (and LTX-2.3's dual projection under its own names). ComfyUI's checkpoint save writes none of
//! these; this tool carries them through every job under the release's names.

use std::collections::BTreeMap;

/// What a family's release holds beyond ComfyUI's save, and the names it holds it under.
#[derive(Debug)]
pub struct Release {
    /// (in-memory prefix, file prefix) of the audio component's parts, as ComfyUI's loader maps
    /// them.
    pub audio: &'static [(&'static str, &'static str)],
    /// The first segment of the clip component's layer held beside the text encoder
    /// (`text_embedding_projection`): a clip component of nothing else is laid out as the
    /// release has it, at the top level.
    pub projection: &'static str,
    /// (in-memory key, file key) of the projection tensors the release names otherwise.
    pub projection_renames: &'static [(&'static str, &'static str)],
    /// Header metadata the release's loaders read beside the audio parts.
    pub metadata: &'static [&'static str],
}

/// LTX-2's release (`ltx-2-19b-dev.safetensors`, `…-distilled…`).
pub const LTX2: Release = Release {
    audio: &[("autoencoder.", "audio_vae."), ("vocoder.", "vocoder.")],
    projection: "text_embedding_projection",
    projection_renames: &[(
        "text_embedding_projection.weight",
        "text_embedding_projection.aggregate_embed.weight",
    )],
    metadata: &["config"],
};

impl Release {
    /// The file key of an audio component key (`autoencoder.x` → `audio_vae.x`), if it is one.
    pub fn audio_file_key(&self, key: &str) -> Option<String> {
        self.audio
            .iter()
            .find_map(|(mem, file)| key.strip_prefix(mem).map(|rest| format!("{file}{rest}")))
    }

    /// The audio component key of a file key (`audio_vae.x` → `autoencoder.x`), if it is one.
    pub fn audio_memory_key(&self, key: &str) -> Option<String> {
        self.audio
            .iter()
            .find_map(|(mem, file)| key.strip_prefix(file).map(|rest| format!("{mem}{rest}")))
    }

    /// Whether a clip component is the release's: only the projection, no text encoder.
    pub fn is_release_clip<'a>(&self, mut keys: impl Iterator<Item = &'a String>) -> bool {
        let mut any = false;
        let all = keys.all(|k| {
            any = true;
            self.is_projection(k)
        });
        any && all
    }

    fn is_projection(&self, key: &str) -> bool {
        key.strip_prefix(self.projection)
            .is_some_and(|rest| rest.starts_with('.'))
    }

    /// The release's key of a projection tensor (in-memory name).
    pub fn projection_file_key(&self, key: &str) -> String {
        self.projection_renames
            .iter()
            .find(|(mem, _)| *mem == key)
            .map_or_else(|| key.to_string(), |(_, file)| file.to_string())
    }

    /// The in-memory name of a release key of the projection, if it is one.
    pub fn projection_memory_key(&self, key: &str) -> Option<String> {
        if !self.is_projection(key) {
            return None;
        }
        Some(
            self.projection_renames
                .iter()
                .find(|(_, file)| *file == key)
                .map_or_else(|| key.to_string(), |(mem, _)| mem.to_string()),
        )
    }

    /// The metadata of `from` the release's loaders read beside the audio parts.
    pub fn carried_metadata(&self, from: &BTreeMap<String, String>) -> BTreeMap<String, String> {
        self.metadata
            .iter()
            .filter_map(|k| from.get(*k).map(|v| (k.to_string(), v.clone())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_names_follow_comfyuis_loader_both_ways() {
        let r = &LTX2;
        for (mem, file) in [
            (
                "autoencoder.decoder.conv_in.conv.weight",
                "audio_vae.decoder.conv_in.conv.weight",
            ),
            (
                "autoencoder.per_channel_statistics.mean-of-means",
                "audio_vae.per_channel_statistics.mean-of-means",
            ),
            (
                "vocoder.resblocks.0.convs1.0.weight",
                "vocoder.resblocks.0.convs1.0.weight",
            ),
        ] {
            assert_eq!(r.audio_file_key(mem).as_deref(), Some(file));
            assert_eq!(r.audio_memory_key(file).as_deref(), Some(mem));
        }
        assert_eq!(r.audio_file_key("decoder.conv_in.weight"), None);
        assert_eq!(r.audio_memory_key("vae.decoder.conv_in.weight"), None);
    }

    #[test]
    fn the_projection_is_renamed_as_lt_py_reads_it() {
        let r = &LTX2;
        assert_eq!(
            r.projection_file_key("text_embedding_projection.weight"),
            "text_embedding_projection.aggregate_embed.weight"
        );
        assert_eq!(
            r.projection_memory_key("text_embedding_projection.aggregate_embed.weight")
                .as_deref(),
            Some("text_embedding_projection.weight")
        );
        // LTX-2.3's dual projection keeps its names.
        let dual = "text_embedding_projection.video_aggregate_embed.bias";
        assert_eq!(r.projection_file_key(dual), dual);
        assert_eq!(r.projection_memory_key(dual).as_deref(), Some(dual));
        assert_eq!(
            r.projection_memory_key("text_embedding_projectionx.w"),
            None
        );
        let only = ["text_embedding_projection.weight".to_string()];
        assert!(r.is_release_clip(only.iter()));
        let with_gemma = [
            "gemma3_12b.logit_scale".to_string(),
            "text_embedding_projection.weight".to_string(),
        ];
        assert!(!r.is_release_clip(with_gemma.iter()));
        assert!(!r.is_release_clip([].iter()));
    }
}
