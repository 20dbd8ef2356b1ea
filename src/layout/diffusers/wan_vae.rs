//! AutoencoderKLWan (diffusers; also AutoencoderKLQwenImage, the same names) ⇄ Wan 2.1's VAE as
//! ComfyUI holds it, as `convert_wan_vae_to_diffusers` renames it: residual blocks' `residual.N`
//! leaves become `norm1`/`conv1`/`norm2`/`conv2`, the decoder's flat list of 15 entries becomes
//! four up blocks of three resnets and an upsampler (the released layout: four levels of two
//! residual blocks and one more in the decoder), the middle and head get diffusers' names.

/// Leaves of a residual block: ComfyUI, diffusers.
const RESIDUAL: [(&str, &str); 8] = [
    ("residual.0.gamma", "norm1.gamma"),
    ("residual.2.bias", "conv1.bias"),
    ("residual.2.weight", "conv1.weight"),
    ("residual.3.gamma", "norm2.gamma"),
    ("residual.6.bias", "conv2.bias"),
    ("residual.6.weight", "conv2.weight"),
    ("shortcut.bias", "conv_shortcut.bias"),
    ("shortcut.weight", "conv_shortcut.weight"),
];

/// Names outside the up and down blocks: ComfyUI, diffusers.
const FIXED: [(&str, &str); 10] = [
    ("middle.1.norm.gamma", "mid_block.attentions.0.norm.gamma"),
    (
        "middle.1.to_qkv.weight",
        "mid_block.attentions.0.to_qkv.weight",
    ),
    ("middle.1.to_qkv.bias", "mid_block.attentions.0.to_qkv.bias"),
    ("middle.1.proj.weight", "mid_block.attentions.0.proj.weight"),
    ("middle.1.proj.bias", "mid_block.attentions.0.proj.bias"),
    ("head.0.gamma", "norm_out.gamma"),
    ("head.2.bias", "conv_out.bias"),
    ("head.2.weight", "conv_out.weight"),
    ("conv1.weight", "conv_in.weight"),
    ("conv1.bias", "conv_in.bias"),
];

/// The middle's residual blocks.
const MIDDLE: [(&str, &str); 2] = [
    ("middle.0.", "mid_block.resnets.0."),
    ("middle.2.", "mid_block.resnets.1."),
];

/// The top-level quantisation convolutions.
const QUANT: [(&str, &str); 4] = [
    ("conv1.weight", "quant_conv.weight"),
    ("conv1.bias", "quant_conv.bias"),
    ("conv2.weight", "post_quant_conv.weight"),
    ("conv2.bias", "post_quant_conv.bias"),
];

fn residual(rest: &str) -> Option<&'static str> {
    RESIDUAL.iter().find(|(c, _)| *c == rest).map(|(_, d)| *d)
}

/// The diffusers name of ComfyUI's Wan 2.1 VAE tensor `c`; `None` for a name of no Wan VAE.
pub(super) fn mapped(c: &str) -> Option<String> {
    if let Some((_, d)) = QUANT.iter().find(|(q, _)| *q == c) {
        return Some((*d).to_string());
    }
    let (side, rest) = c.split_once('.')?;
    if !matches!(side, "encoder" | "decoder") {
        return None;
    }
    for (from, to) in &FIXED {
        if rest == *from {
            return Some(format!("{side}.{to}"));
        }
    }
    for (from, to) in &MIDDLE {
        if let Some(leaf) = rest.strip_prefix(from) {
            return Some(format!("{side}.{to}{}", residual(leaf)?));
        }
    }
    let (index, leaf) = match (side, rest.split_once('.')) {
        ("encoder", Some(("downsamples", tail))) => {
            let (n, leaf) = tail.split_once('.')?;
            let leaf = residual(leaf).map_or(leaf.to_string(), str::to_string);
            return Some(format!("encoder.down_blocks.{n}.{leaf}"));
        }
        ("decoder", Some(("upsamples", tail))) => {
            let (n, leaf) = tail.split_once('.')?;
            (n.parse::<usize>().ok()?, leaf)
        }
        _ => return None,
    };
    // Three resnets and an upsampler per level, as the converter groups them.
    let (level, place) = (index / 4, index % 4);
    if leaf.starts_with("residual.") {
        // Outside the released groups the converter keeps the name.
        if place == 3 || index > 14 {
            return Some(c.to_string());
        }
        return Some(format!(
            "decoder.up_blocks.{level}.resnets.{place}.{}",
            residual(leaf)?
        ));
    }
    if let Some(s) = leaf.strip_prefix("shortcut.") {
        return Some(match index {
            4 => format!("decoder.up_blocks.1.resnets.0.conv_shortcut.{s}"),
            _ => format!("decoder.up_blocks.{index}.conv_shortcut.{s}"),
        });
    }
    if (leaf.starts_with("resample.") || leaf.starts_with("time_conv.")) && place == 3 && level < 3
    {
        return Some(format!("decoder.up_blocks.{level}.upsamplers.0.{leaf}"));
    }
    Some(format!("decoder.up_blocks.{index}.{leaf}"))
}
