//! LTX-2's audio autoencoder and vocoder in ComfyUI's in-memory names (`AudioVAE`:
//! `autoencoder.…`, `vocoder.…`), as `comfy/ldm/lightricks/vae/causal_audio_autoencoder.py` and
//! `comfy/ldm/lightricks/vocoders/vocoder.py` build them: causal 2-D convolutions wrapped as
//! `….conv.weight` (the downsamplers' plain), pixel norms and no time embedding (no parameters),
//! 1x1 shortcuts where a block changes width; a HiFi-GAN of transposed-convolution upsamplers,
//! residual blocks of three dilated and three plain 1-D convolutions per kernel size.

use super::expand::Dict;
use super::spec::{AudioVaeConfig, VocoderConfig};

/// `CausalConv2d(inp, out, k)`.
fn causal(d: &mut Dict, p: &str, inp: usize, out: usize, k: usize) {
    d.add(format!("{p}.conv.weight"), &[out, inp, k, k]);
    d.add(format!("{p}.conv.bias"), &[out]);
}

/// `ResnetBlock(inp → out)` with pixel norms and no time embedding.
fn resblock(d: &mut Dict, p: &str, inp: usize, out: usize) {
    causal(d, &format!("{p}.conv1"), inp, out, 3);
    causal(d, &format!("{p}.conv2"), out, out, 3);
    if inp != out {
        causal(d, &format!("{p}.nin_shortcut"), inp, out, 1);
    }
}

/// `CausalAudioAutoencoder` under `autoencoder.`: encoder, decoder, per-channel statistics.
pub(super) fn autoencoder(cfg: &AudioVaeConfig, d: &mut Dict) {
    let p = "autoencoder";
    let levels = cfg.ch_mult.len();
    let e = format!("{p}.encoder");
    causal(d, &format!("{e}.conv_in"), cfg.in_channels, cfg.ch, 3);
    let mut block_in = cfg.ch;
    for (i, m) in cfg.ch_mult.iter().enumerate() {
        let block_out = cfg.ch * m;
        for j in 0..cfg.num_res_blocks {
            resblock(d, &format!("{e}.down.{i}.block.{j}"), block_in, block_out);
            block_in = block_out;
        }
        if i + 1 != levels {
            d.conv(
                &format!("{e}.down.{i}.downsample.conv"),
                block_in,
                block_in,
                3,
            );
        }
    }
    resblock(d, &format!("{e}.mid.block_1"), block_in, block_in);
    resblock(d, &format!("{e}.mid.block_2"), block_in, block_in);
    causal(d, &format!("{e}.conv_out"), block_in, 2 * cfg.z_channels, 3);

    let dec = format!("{p}.decoder");
    let mut block_in = cfg.ch * cfg.ch_mult[levels - 1];
    causal(d, &format!("{dec}.conv_in"), cfg.z_channels, block_in, 3);
    resblock(d, &format!("{dec}.mid.block_1"), block_in, block_in);
    resblock(d, &format!("{dec}.mid.block_2"), block_in, block_in);
    for i in (0..levels).rev() {
        let block_out = cfg.ch * cfg.ch_mult[i];
        for j in 0..=cfg.num_res_blocks {
            resblock(d, &format!("{dec}.up.{i}.block.{j}"), block_in, block_out);
            block_in = block_out;
        }
        if i != 0 {
            causal(
                d,
                &format!("{dec}.up.{i}.upsample.conv"),
                block_in,
                block_in,
                3,
            );
        }
    }
    causal(d, &format!("{dec}.conv_out"), block_in, cfg.out_ch, 3);
    for s in ["std-of-means", "mean-of-means"] {
        d.add(format!("{p}.per_channel_statistics.{s}"), &[cfg.statistics]);
    }
}

/// `Vocoder` (residual blocks "1") under `vocoder.`.
pub(super) fn vocoder(cfg: &VocoderConfig, d: &mut Dict) {
    let p = "vocoder";
    let conv1d = |d: &mut Dict, name: String, inp: usize, out: usize, k: usize| {
        d.add(format!("{name}.weight"), &[out, inp, k]);
        d.add(format!("{name}.bias"), &[out]);
    };
    let uic = cfg.upsample_initial_channel;
    let mel = if cfg.stereo { 128 } else { 64 };
    conv1d(d, format!("{p}.conv_pre"), mel, uic, 7);
    let mut ch = uic;
    for (i, k) in cfg.upsample_kernel_sizes.iter().enumerate() {
        // ConvTranspose1d's weight is [in, out, k].
        d.add(format!("{p}.ups.{i}.weight"), &[ch, ch / 2, *k]);
        d.add(format!("{p}.ups.{i}.bias"), &[ch / 2]);
        ch /= 2;
        let kinds = cfg.resblock_kernel_sizes.len();
        for (j, rk) in cfg.resblock_kernel_sizes.iter().enumerate() {
            let r = format!("{p}.resblocks.{}", i * kinds + j);
            for convs in ["convs1", "convs2"] {
                for c in 0..3 {
                    conv1d(d, format!("{r}.{convs}.{c}"), ch, ch, *rk);
                }
            }
        }
    }
    debug_assert_eq!(cfg.upsample_rates.len(), cfg.upsample_kernel_sizes.len());
    conv1d(
        d,
        format!("{p}.conv_post"),
        ch,
        if cfg.stereo { 2 } else { 1 },
        7,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Dtype;

    /// ComfyUI's default `CausalAudioAutoencoder` (ch 128, ch_mult 1-2-4, two blocks) and a
    /// five-stage HiFi-GAN, counted by hand: encoder 44 keys (conv_in 2; level 0: two blocks
    /// of 4 and a downsampler of 2; level 1: a widening block of 6, one of 4, a downsampler;
    /// level 2: 6 + 4; the middle 8; conv_out 2), decoder 56 (conv_in 2, middle 8; level 2:
    /// three blocks of 4 and an upsampler of 2; levels 1 and 0: 6 + 4 + 4, the first with an
    /// upsampler; conv_out 2), the statistics 2; the vocoder 2 + 5 × 2 + 15 × 12 + 2.
    #[test]
    fn key_counts_and_shapes_follow_comfyuis_modules() {
        let mut d = Dict::new(Dtype::F32);
        autoencoder(
            &AudioVaeConfig {
                ch: 128,
                ch_mult: &[1, 2, 4],
                num_res_blocks: 2,
                in_channels: 2,
                out_ch: 2,
                z_channels: 8,
                statistics: 128,
            },
            &mut d,
        );
        let under = |d: &Dict, p: &str| d.map.keys().filter(|k| k.starts_with(p)).count();
        assert_eq!(under(&d, "autoencoder.encoder."), 44);
        assert_eq!(under(&d, "autoencoder.decoder."), 56);
        assert_eq!(d.map.len(), 102);
        let shape = |d: &Dict, k: &str| d.map[k].shape.clone();
        assert_eq!(
            shape(&d, "autoencoder.encoder.conv_out.conv.weight"),
            [16, 512, 3, 3]
        );
        assert_eq!(
            shape(
                &d,
                "autoencoder.encoder.down.1.block.0.nin_shortcut.conv.weight"
            ),
            [256, 128, 1, 1]
        );
        assert_eq!(
            shape(&d, "autoencoder.encoder.down.0.downsample.conv.weight"),
            [128, 128, 3, 3]
        );
        assert_eq!(
            shape(&d, "autoencoder.decoder.up.2.upsample.conv.conv.weight"),
            [512, 512, 3, 3]
        );
        assert_eq!(
            shape(&d, "autoencoder.decoder.conv_out.conv.weight"),
            [2, 128, 3, 3]
        );
        let mut v = Dict::new(Dtype::F32);
        vocoder(
            &VocoderConfig {
                upsample_initial_channel: 1024,
                upsample_rates: &[6, 5, 2, 2, 2],
                upsample_kernel_sizes: &[16, 15, 8, 4, 4],
                resblock_kernel_sizes: &[3, 7, 11],
                stereo: true,
            },
            &mut v,
        );
        assert_eq!(v.map.len(), 2 + 5 * 2 + 15 * 12 + 2);
        assert_eq!(shape(&v, "vocoder.conv_pre.weight"), [1024, 128, 7]);
        assert_eq!(shape(&v, "vocoder.ups.1.weight"), [512, 256, 15]);
        assert_eq!(
            shape(&v, "vocoder.resblocks.14.convs2.2.weight"),
            [32, 32, 11]
        );
        assert_eq!(shape(&v, "vocoder.conv_post.weight"), [2, 32, 7]);
    }
}
