//! LTX-2's audio-video DiT as ComfyUI builds it (`lightricks/av_model.py` `LTXAVModel` over
//! `lightricks/model.py` `LTXBaseModel`, the LTX-2 configuration: no gated attention, no
//! cross-attention adaLN, biased feed-forwards): a video and an audio stream of transformer
//! blocks that attend to each other, each with its own patch projection, timestep adaLN,
//! caption projection and output; the four adaLNs of the audio-video cross-attention; and the
//! two text connectors (`Embeddings1DConnector`) the text embeddings pass before the blocks.

use super::expand::Dict;
use super::spec::LtxavConfig;

/// `CrossAttention` from `query` wide to `inner` (heads × head width) over a `context` wide
/// input: RMS norms over all heads on q and k, biased projections.
fn attention(d: &mut Dict, p: &str, query: usize, context: usize, inner: usize) {
    d.add(format!("{p}.q_norm.weight"), &[inner]);
    d.add(format!("{p}.k_norm.weight"), &[inner]);
    d.linear(&format!("{p}.to_q"), query, inner, true);
    d.linear(&format!("{p}.to_k"), context, inner, true);
    d.linear(&format!("{p}.to_v"), context, inner, true);
    d.linear(&format!("{p}.to_out.0"), inner, query, true);
}

/// `FeedForward(dim)`: a tanh-GELU projection to 4·dim and back.
fn feed_forward(d: &mut Dict, p: &str, dim: usize) {
    d.linear(&format!("{p}.net.0.proj"), dim, 4 * dim, true);
    d.linear(&format!("{p}.net.2"), 4 * dim, dim, true);
}

/// `AdaLayerNormSingle(dim, coefficient)`: the timestep MLP and the modulation it feeds.
fn adaln(d: &mut Dict, p: &str, dim: usize, coefficient: usize) {
    d.linear(
        &format!("{p}.emb.timestep_embedder.linear_1"),
        256,
        dim,
        true,
    );
    d.linear(
        &format!("{p}.emb.timestep_embedder.linear_2"),
        dim,
        dim,
        true,
    );
    d.linear(&format!("{p}.linear"), dim, coefficient * dim, true);
}

/// `PixArtAlphaTextProjection(inp, hidden)`.
fn caption_projection(d: &mut Dict, p: &str, inp: usize, hidden: usize) {
    d.linear(&format!("{p}.linear_1"), inp, hidden, true);
    d.linear(&format!("{p}.linear_2"), hidden, hidden, true);
}

/// `Embeddings1DConnector`: self-attention blocks over the text embedding and the learnable
/// registers that pad it.
fn connector(d: &mut Dict, p: &str, cfg: &LtxavConfig) {
    let inner = cfg.connector_heads * cfg.connector_head_dim;
    for i in 0..cfg.connector_layers {
        let b = format!("{p}.transformer_1d_blocks.{i}");
        attention(d, &format!("{b}.attn1"), inner, inner, inner);
        feed_forward(d, &format!("{b}.ff"), inner);
    }
    d.add(
        format!("{p}.learnable_registers"),
        &[cfg.connector_registers, inner],
    );
}

/// Every parameter of `LTXAVModel`.
pub(super) fn ltxav(cfg: &LtxavConfig, d: &mut Dict) {
    let v = &cfg.video;
    let video = v.num_heads * v.head_dim;
    let audio = cfg.audio_num_heads * cfg.audio_head_dim;
    d.linear("patchify_proj", v.in_channels, video, true);
    adaln(d, "adaln_single", video, 6);
    caption_projection(d, "caption_projection", v.caption_channels, video);
    d.linear("audio_patchify_proj", cfg.audio_in_channels, audio, true);
    adaln(d, "audio_adaln_single", audio, 6);
    // The cross-attention between the streams: scale/shift (4) and gate (1) of each side.
    adaln(d, "av_ca_video_scale_shift_adaln_single", video, 4);
    adaln(d, "av_ca_a2v_gate_adaln_single", video, 1);
    adaln(d, "av_ca_audio_scale_shift_adaln_single", audio, 4);
    adaln(d, "av_ca_v2a_gate_adaln_single", audio, 1);
    caption_projection(d, "audio_caption_projection", v.caption_channels, audio);
    connector(d, "audio_embeddings_connector", cfg);
    connector(d, "video_embeddings_connector", cfg);
    for i in 0..v.num_layers {
        let b = format!("transformer_blocks.{i}");
        attention(d, &format!("{b}.attn1"), video, video, video);
        attention(d, &format!("{b}.audio_attn1"), audio, audio, audio);
        attention(
            d,
            &format!("{b}.attn2"),
            video,
            v.cross_attention_dim,
            video,
        );
        attention(
            d,
            &format!("{b}.audio_attn2"),
            audio,
            cfg.audio_cross_attention_dim,
            audio,
        );
        // Both directions use the audio stream's heads.
        attention(d, &format!("{b}.audio_to_video_attn"), video, audio, audio);
        attention(d, &format!("{b}.video_to_audio_attn"), audio, video, audio);
        feed_forward(d, &format!("{b}.ff"), video);
        feed_forward(d, &format!("{b}.audio_ff"), audio);
        d.add(format!("{b}.scale_shift_table"), &[6, video]);
        d.add(format!("{b}.audio_scale_shift_table"), &[6, audio]);
        d.add(format!("{b}.scale_shift_table_a2v_ca_audio"), &[5, audio]);
        d.add(format!("{b}.scale_shift_table_a2v_ca_video"), &[5, video]);
    }
    d.add("scale_shift_table", &[2, video]);
    d.linear("proj_out", video, v.in_channels, true);
    d.add("audio_scale_shift_table", &[2, audio]);
    d.linear("audio_proj_out", audio, cfg.audio_in_channels, true);
}
