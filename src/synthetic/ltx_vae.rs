//! LTX-Video's causal video autoencoder as ComfyUI builds it
//! (`lightricks/vae/causal_video_autoencoder.py`, the configuration of LTX-Video 0.9.5 and
//! later): causal 3-D convolutions (`….conv.weight`), pixel norms (no parameters), residual
//! space-to-depth downsampling between encoder stages, depth-to-space upsampling and a timestep
//! conditioning in the decoder, and the latent's per-channel statistics.

use super::expand::Dict;
use super::spec::LtxVaeConfig;
use crate::model::Dtype;

/// `CausalConv3d(inp, out, k)`: the convolution is wrapped (`….conv.weight`).
fn causal(d: &mut Dict, p: &str, inp: usize, out: usize, k: usize) {
    d.add(format!("{p}.conv.weight"), &[out, inp, k, k, k]);
    d.add(format!("{p}.conv.bias"), &[out]);
}

/// `PixArtAlphaCombinedTimestepSizeEmbeddings(dim)`: the timestep MLP.
fn time_embedder(d: &mut Dict, p: &str, dim: usize) {
    d.linear(&format!("{p}.timestep_embedder.linear_1"), 256, dim, true);
    d.linear(&format!("{p}.timestep_embedder.linear_2"), dim, dim, true);
}

/// `UNetMidBlock3D` of `layers` `ResnetBlock3D`s of width `ch` (pixel norms; a scale/shift
/// table per block and a time embedder when timestep-conditioned).
fn res_stage(d: &mut Dict, p: &str, ch: usize, layers: usize, timestep: bool) {
    if timestep {
        time_embedder(d, &format!("{p}.time_embedder"), 4 * ch);
    }
    for l in 0..layers {
        let b = format!("{p}.res_blocks.{l}");
        causal(d, &format!("{b}.conv1"), ch, ch, 3);
        causal(d, &format!("{b}.conv2"), ch, ch, 3);
        if timestep {
            d.add(format!("{b}.scale_shift_table"), &[4, ch]);
        }
    }
}

/// ComfyUI `VideoVAE` with the 0.9.5+ configuration (LTX-2's: the same without the timestep
/// conditioning).
pub(super) fn ltx(cfg: &LtxVaeConfig, d: &mut Dict) {
    let pp = cfg.patch_size * cfg.patch_size;
    let mut ch = cfg.base_channels;
    causal(d, "encoder.conv_in", 3 * pp, ch, 3);
    // Stages alternate: residual stage, then a 2× downsampler that doubles the width. The
    // downsamplers pack (1,2,2), (2,1,1), then (2,2,2) blocks into channels.
    let strides = [4, 2, 8, 8, 8, 8];
    let mut index = 0;
    for (s, &layers) in cfg.encoder_layers.iter().enumerate() {
        res_stage(
            d,
            &format!("encoder.down_blocks.{index}"),
            ch,
            layers,
            false,
        );
        index += 1;
        if s + 1 < cfg.encoder_layers.len() {
            let out = 2 * ch;
            let packed = strides.get(s).copied().unwrap_or(8);
            causal(
                d,
                &format!("encoder.down_blocks.{index}.conv"),
                ch,
                out / packed,
                3,
            );
            ch = out;
            index += 1;
        }
    }
    // Uniform log-variance: one channel beside the means.
    causal(d, "encoder.conv_out", ch, cfg.latent_channels + 1, 3);

    // The decoder starts at the width the upsamplers halve down to the base.
    let ups = cfg.decoder_layers.len().saturating_sub(1);
    let mut ch = cfg.base_channels << ups;
    causal(d, "decoder.conv_in", cfg.latent_channels, ch, 3);
    let mut index = 0;
    for (s, &layers) in cfg.decoder_layers.iter().enumerate() {
        res_stage(
            d,
            &format!("decoder.up_blocks.{index}"),
            ch,
            layers,
            cfg.timestep_conditioning,
        );
        index += 1;
        if s + 1 < cfg.decoder_layers.len() {
            // Depth-to-space (2,2,2) with the width halved: 8·ch/2 channels before unpacking.
            causal(d, &format!("decoder.up_blocks.{index}.conv"), ch, 4 * ch, 3);
            ch /= 2;
            index += 1;
        }
    }
    causal(d, "decoder.conv_out", ch, 3 * pp, 3);
    if cfg.timestep_conditioning {
        d.add_typed("decoder.timestep_scale_multiplier", &[], Dtype::F32);
        time_embedder(d, "decoder.last_time_embedder", 2 * ch);
        d.add("decoder.last_scale_shift_table", &[2, ch]);
    }
    for stat in [
        "std-of-means",
        "mean-of-means",
        "mean-of-stds",
        "mean-of-stds_over_std-of-means",
        "channel",
    ] {
        d.add(
            format!("per_channel_statistics.{stat}"),
            &[cfg.latent_channels],
        );
    }
}
