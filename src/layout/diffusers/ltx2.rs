//! LTX-2's transformer in diffusers' names (`LTX2VideoTransformer3DModel`), as
//! `loaders/single_file_utils.py` `convert_ltx2_transformer_to_diffusers` renames it.

use super::later::replace_all;

/// `convert_ltx2_transformer_to_diffusers`' rename dict (`LTX_2_0_TRANSFORMER_KEYS_RENAME_DICT`),
/// in its order; `audio_patchify_proj` becomes `audio_proj_in` through the first pair.
const RENAMES: [(&str, &str); 9] = [
    ("patchify_proj", "proj_in"),
    (
        "av_ca_video_scale_shift_adaln_single",
        "av_cross_attn_video_scale_shift",
    ),
    (
        "av_ca_a2v_gate_adaln_single",
        "av_cross_attn_video_a2v_gate",
    ),
    (
        "av_ca_audio_scale_shift_adaln_single",
        "av_cross_attn_audio_scale_shift",
    ),
    (
        "av_ca_v2a_gate_adaln_single",
        "av_cross_attn_audio_v2a_gate",
    ),
    (
        "scale_shift_table_a2v_ca_video",
        "video_a2v_cross_attn_scale_shift_table",
    ),
    (
        "scale_shift_table_a2v_ca_audio",
        "audio_a2v_cross_attn_scale_shift_table",
    ),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
];

/// The first segments of LTX-2's text connectors, which diffusers holds in a model of their own
/// (`connectors/`) and its transformer converter drops.
pub(super) const CONNECTORS: [&str; 2] =
    ["video_embeddings_connector.", "audio_embeddings_connector."];

/// LTX-2's name in diffusers' transformer: the rename dict, then the converter's special case
/// of the two remaining adaLNs (`adaln_single.` → `time_embed.`, `audio_adaln_single.` →
/// `audio_time_embed.`); the connectors have none.
pub(super) fn mapped(c: &str) -> Option<String> {
    if CONNECTORS.iter().any(|p| c.starts_with(p)) {
        return None;
    }
    let d = replace_all(c, &RENAMES);
    let d = if let Some(rest) = d.strip_prefix("adaln_single.") {
        format!("time_embed.{rest}")
    } else if let Some(rest) = d.strip_prefix("audio_adaln_single.") {
        format!("audio_time_embed.{rest}")
    } else {
        d
    };
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::mapped;

    /// Names as diffusers 0.42.1's converter gives them (read off its output in
    /// `tests/fixtures/diffusers/ltx2/`).
    #[test]
    fn names_follow_the_converter() {
        for (comfy, diffusers) in [
            ("patchify_proj.weight", "proj_in.weight"),
            ("audio_patchify_proj.bias", "audio_proj_in.bias"),
            (
                "adaln_single.emb.timestep_embedder.linear_1.bias",
                "time_embed.emb.timestep_embedder.linear_1.bias",
            ),
            (
                "audio_adaln_single.linear.weight",
                "audio_time_embed.linear.weight",
            ),
            (
                "av_ca_a2v_gate_adaln_single.linear.weight",
                "av_cross_attn_video_a2v_gate.linear.weight",
            ),
            (
                "transformer_blocks.3.scale_shift_table_a2v_ca_audio",
                "transformer_blocks.3.audio_a2v_cross_attn_scale_shift_table",
            ),
            (
                "transformer_blocks.0.audio_to_video_attn.k_norm.weight",
                "transformer_blocks.0.audio_to_video_attn.norm_k.weight",
            ),
            (
                "audio_caption_projection.linear_2.bias",
                "audio_caption_projection.linear_2.bias",
            ),
        ] {
            assert_eq!(mapped(comfy).as_deref(), Some(diffusers), "{comfy}");
        }
        assert_eq!(
            mapped("video_embeddings_connector.learnable_registers"),
            None
        );
        assert_eq!(
            mapped("audio_embeddings_connector.transformer_1d_blocks.0.attn1.to_q.weight"),
            None
        );
    }
}
