//! Video autoencoders as ComfyUI builds them: Wan's causal 3-D VAE in its 2.1 layout (flat
//! block lists; also Qwen-Image's VAE) and its 2.2 layout (nested residual groups, a patchified
//! 12-channel input, 48 latent channels; also Qwen-Image 2.1's RGBA image VAE with temporal
//! kernel 1), and HunyuanVideo 1.5's.

use super::expand::Dict;
use super::spec::{Hunyuan15VaeConfig, WanVaeConfig};

/// `CausalConv3d(inp, out, kernel)` with bias.
fn conv3d(d: &mut Dict, p: &str, inp: usize, out: usize, k: [usize; 3]) {
    d.add(format!("{p}.weight"), &[out, inp, k[0], k[1], k[2]]);
    d.add(format!("{p}.bias"), &[out]);
}

/// `nn.Conv2d(inp, out, k)` with bias.
fn conv2d(d: &mut Dict, p: &str, inp: usize, out: usize, k: usize) {
    d.conv(p, inp, out, k);
}

/// `RMS_norm(dim, images=False)`: one gain of shape `[dim, 1, 1, 1]`.
fn rms(d: &mut Dict, p: &str, dim: usize) {
    d.add(format!("{p}.gamma"), &[dim, 1, 1, 1]);
}

/// `ResidualBlock(inp, out)`: norm, conv, norm, conv (indices 0, 2, 3, 6) and a 1×1×1 shortcut
/// when the width changes.
fn residual(d: &mut Dict, p: &str, inp: usize, out: usize, tk: usize) {
    rms(d, &format!("{p}.residual.0"), inp);
    conv3d(d, &format!("{p}.residual.2"), inp, out, [tk, 3, 3]);
    rms(d, &format!("{p}.residual.3"), out);
    conv3d(d, &format!("{p}.residual.6"), out, out, [tk, 3, 3]);
    if inp != out {
        conv3d(d, &format!("{p}.shortcut"), inp, out, [1, 1, 1]);
    }
}

/// `AttentionBlock(dim)`: a 2-D RMS norm and 1×1 convolutions.
fn attention(d: &mut Dict, p: &str, dim: usize) {
    d.add(format!("{p}.norm.gamma"), &[dim, 1, 1]);
    conv2d(d, &format!("{p}.to_qkv"), dim, 3 * dim, 1);
    conv2d(d, &format!("{p}.proj"), dim, dim, 1);
}

/// `Resample(dim, mode)`: a strided (down) or upsampling 2-D convolution, plus a temporal
/// convolution in the 3-D modes. 2.1's upsampling halves the width; 2.2's keeps it.
fn resample(d: &mut Dict, p: &str, dim: usize, up: bool, temporal: bool, cfg: &WanVaeConfig) {
    let out = if up && !cfg.wan22 { dim / 2 } else { dim };
    conv2d(d, &format!("{p}.resample.1"), dim, out, 3);
    if temporal {
        let t_out = if up { 2 * dim } else { dim };
        let tk = cfg.temporal_kernel;
        conv3d(d, &format!("{p}.time_conv"), dim, t_out, [tk, 1, 1]);
    }
}

/// The middle of encoder and decoder: residual, attention, residual.
fn middle(d: &mut Dict, p: &str, dim: usize, tk: usize) {
    residual(d, &format!("{p}.middle.0"), dim, dim, tk);
    attention(d, &format!("{p}.middle.1"), dim);
    residual(d, &format!("{p}.middle.2"), dim, dim, tk);
}

/// `head`: norm, SiLU, convolution to `out` channels.
fn head(d: &mut Dict, p: &str, dim: usize, out: usize, tk: usize) {
    rms(d, &format!("{p}.head.0"), dim);
    conv3d(d, &format!("{p}.head.2"), dim, out, [tk, 3, 3]);
}

/// ComfyUI `wan.vae.WanVAE` / `wan.vae2_2.WanVAE`.
pub(super) fn wan(cfg: &WanVaeConfig, d: &mut Dict) {
    let tk = cfg.temporal_kernel;
    let levels = cfg.dim_mult.len();
    let temporal = |i: usize| cfg.temporal_downsample.get(i).copied().unwrap_or(false);
    // Encoder: widths dim·[1, mult…].
    let dims: Vec<usize> = std::iter::once(1)
        .chain(cfg.dim_mult.iter().copied())
        .map(|u| cfg.dim * u)
        .collect();
    conv3d(d, "encoder.conv1", cfg.image_channels, dims[0], [tk, 3, 3]);
    let mut flat = 0;
    for (i, pair) in dims.windows(2).enumerate() {
        let (mut inp, out) = (pair[0], pair[1]);
        let down = i + 1 != levels;
        for r in 0..cfg.num_res_blocks {
            let p = if cfg.wan22 {
                format!("encoder.downsamples.{i}.downsamples.{r}")
            } else {
                let p = format!("encoder.downsamples.{flat}");
                flat += 1;
                p
            };
            residual(d, &p, inp, out, tk);
            inp = out;
        }
        if down {
            let p = if cfg.wan22 {
                format!("encoder.downsamples.{i}.downsamples.{}", cfg.num_res_blocks)
            } else {
                let p = format!("encoder.downsamples.{flat}");
                flat += 1;
                p
            };
            resample(d, &p, out, false, temporal(i), cfg);
        }
    }
    let top = dims[levels];
    middle(d, "encoder", top, tk);
    head(d, "encoder", top, 2 * cfg.z_dim, tk);
    conv3d(d, "conv1", 2 * cfg.z_dim, 2 * cfg.z_dim, [1, 1, 1]);
    conv3d(d, "conv2", cfg.z_dim, cfg.z_dim, [1, 1, 1]);

    // Decoder: widths dec_dim·[mult[-1], reversed mult…], upsampling in reverse temporal order.
    let dec: Vec<usize> = std::iter::once(cfg.dim_mult[levels - 1])
        .chain(cfg.dim_mult.iter().rev().copied())
        .map(|u| cfg.dec_dim * u)
        .collect();
    // The decoder upsamples in time where the encoder downsampled, in reverse order.
    let n = cfg.temporal_downsample.len();
    let up_temporal = |i: usize| i < n && cfg.temporal_downsample[n - 1 - i];
    conv3d(d, "decoder.conv1", cfg.z_dim, dec[0], [tk, 3, 3]);
    middle(d, "decoder", dec[0], tk);
    let mut flat = 0;
    for (i, pair) in dec.windows(2).enumerate() {
        let (mut inp, out) = (pair[0], pair[1]);
        // 2.1's upsampling convolution halved the width before this level.
        if !cfg.wan22 && (1..=3).contains(&i) {
            inp /= 2;
        }
        let up = i + 1 != levels;
        for r in 0..=cfg.num_res_blocks {
            let p = if cfg.wan22 {
                format!("decoder.upsamples.{i}.upsamples.{r}")
            } else {
                let p = format!("decoder.upsamples.{flat}");
                flat += 1;
                p
            };
            residual(d, &p, inp, out, tk);
            inp = out;
        }
        if up {
            let p = if cfg.wan22 {
                format!("decoder.upsamples.{i}.upsamples.{}", cfg.num_res_blocks + 1)
            } else {
                let p = format!("decoder.upsamples.{flat}");
                flat += 1;
                p
            };
            resample(d, &p, out, true, up_temporal(i), cfg);
        }
    }
    head(d, "decoder", dec[levels], cfg.image_channels, tk);
}

/// `VideoConv3d(inp, out, k)`: the convolution is wrapped (`….conv.weight`).
fn video_conv(d: &mut Dict, p: &str, inp: usize, out: usize, k: usize) {
    conv3d(d, &format!("{p}.conv"), inp, out, [k, k, k]);
}

/// ldm `ResnetBlock` without a time embedding, with RMS norms and causal 3-D convolutions.
fn hunyuan_resblock(d: &mut Dict, p: &str, inp: usize, out: usize) {
    rms(d, &format!("{p}.norm1"), inp);
    video_conv(d, &format!("{p}.conv1"), inp, out, 3);
    rms(d, &format!("{p}.norm2"), out);
    video_conv(d, &format!("{p}.conv2"), out, out, 3);
    if inp != out {
        video_conv(d, &format!("{p}.nin_shortcut"), inp, out, 1);
    }
}

/// The middle: residual, a 1×1×1-convolution attention with an RMS norm, residual.
fn hunyuan_mid(d: &mut Dict, p: &str, ch: usize) {
    hunyuan_resblock(d, &format!("{p}.mid.block_1"), ch, ch);
    rms(d, &format!("{p}.mid.attn_1.norm"), ch);
    for c in ["q", "k", "v", "proj_out"] {
        conv3d(d, &format!("{p}.mid.attn_1.{c}"), ch, ch, [1, 1, 1]);
    }
    hunyuan_resblock(d, &format!("{p}.mid.block_2"), ch, ch);
}

/// ComfyUI `hunyuan_video.vae_refiner.Encoder`/`Decoder` as HunyuanVideo 1.5's VAE uses them:
/// space-to-depth downsampling (`downsample.conv`, output divided by the packing factor) and
/// depth-to-space upsampling (multiplied), 2×2×2 in the temporal levels and 1×2×2 elsewhere.
pub(super) fn hunyuan15(cfg: &Hunyuan15VaeConfig, d: &mut Dict) {
    let chans = cfg.block_out_channels;
    let factor = |temporal: bool| if temporal { 8 } else { 4 };
    video_conv(d, "encoder.conv_in", 3, chans[0], 3);
    let mut ch = chans[0];
    for (i, &tgt) in chans.iter().enumerate() {
        for j in 0..cfg.num_res_blocks {
            let inp = if j == 0 { ch } else { tgt };
            hunyuan_resblock(d, &format!("encoder.down.{i}.block.{j}"), inp, tgt);
        }
        ch = tgt;
        if i < cfg.resample_levels {
            let next = chans.get(i + 1).copied().unwrap_or(ch);
            // The last `temporal_levels` resampling levels also halve time.
            let temporal = i >= cfg.resample_levels - cfg.temporal_levels;
            let p = format!("encoder.down.{i}.downsample.conv");
            video_conv(d, &p, ch, next / factor(temporal), 3);
            ch = next;
        }
    }
    hunyuan_mid(d, "encoder", ch);
    rms(d, "encoder.norm_out", ch);
    video_conv(d, "encoder.conv_out", ch, 2 * cfg.z_channels, 3);

    let rev: Vec<usize> = chans.iter().rev().copied().collect();
    let mut ch = rev[0];
    video_conv(d, "decoder.conv_in", cfg.z_channels, ch, 3);
    hunyuan_mid(d, "decoder", ch);
    for (i, &tgt) in rev.iter().enumerate() {
        for j in 0..=cfg.num_res_blocks {
            let inp = if j == 0 { ch } else { tgt };
            hunyuan_resblock(d, &format!("decoder.up.{i}.block.{j}"), inp, tgt);
        }
        ch = tgt;
        if i < cfg.resample_levels {
            let next = rev.get(i + 1).copied().unwrap_or(ch);
            let temporal = i < cfg.temporal_levels;
            let p = format!("decoder.up.{i}.upsample.conv");
            video_conv(d, &p, ch, next * factor(temporal), 3);
            ch = next;
        }
    }
    rms(d, "decoder.norm_out", ch);
    video_conv(d, "decoder.conv_out", ch, 3, 3);
}
