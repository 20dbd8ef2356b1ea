//! The HF ⇄ OpenCLIP key conversion of ComfyUI's `convert_text_enc_state_dict_v20` and its inverse.
//!
//! ComfyUI holds every CLIP text encoder in Hugging Face naming; SD2's OpenCLIP-H and SDXL's
//! OpenCLIP-G are written back in the original OpenCLIP naming, with q/k/v fused into `in_proj_*`
//! and the text projection transposed. The renames are plain substring rewrites applied in one
//! left-to-right pass, exactly like the reference's regex alternation, so unusual keys are renamed
//! the same way the reference would rename them.

/// (HF substring, OpenCLIP replacement), in the reference's alternation order.
const HF_TO_OPENCLIP: [(&str, &str); 9] = [
    ("text_model.encoder.layers.", "resblocks."),
    ("layer_norm1", "ln_1"),
    ("layer_norm2", "ln_2"),
    (".fc1.", ".c_fc."),
    (".fc2.", ".c_proj."),
    (".self_attn", ".attn"),
    ("transformer.text_model.final_layer_norm.", "ln_final."),
    (
        "transformer.text_model.embeddings.token_embedding.weight",
        "token_embedding.weight",
    ),
    (
        "transformer.text_model.embeddings.position_embedding.weight",
        "positional_embedding",
    ),
];

/// HF suffix of the projection that is stored transposed.
pub const HF_TEXT_PROJECTION: &str = "transformer.text_projection.weight";
/// OpenCLIP name of the transposed projection.
pub const OPENCLIP_TEXT_PROJECTION: &str = "text_projection";

/// What a key becomes in OpenCLIP layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Converted {
    /// Renamed, data unchanged.
    Renamed(String),
    /// The projection: renamed and transposed.
    Transposed(String),
    /// One of q/k/v (`index` 0, 1, 2) of a fused `in_proj_weight`/`in_proj_bias` named `fused`.
    Fused {
        /// The fused key.
        fused: String,
        /// 0 for q, 1 for k, 2 for v.
        index: usize,
    },
}

/// One left-to-right pass of substring rewrites; at each position the first pattern that matches wins.
fn rewrite(key: &str, table: &[(&str, &str)], reverse: bool) -> String {
    let mut out = String::with_capacity(key.len() + 16);
    let mut i = 0;
    'scan: while i < key.len() {
        for &(a, b) in table {
            let (from, to) = if reverse { (b, a) } else { (a, b) };
            if key[i..].starts_with(from) {
                out.push_str(to);
                i += from.len();
                continue 'scan;
            }
        }
        // Keys are ASCII in practice; step over a whole char to stay on a boundary regardless.
        let ch = key[i..].chars().next().unwrap_or(' ');
        out.push(ch);
        i += ch.len_utf8().max(1);
    }
    out
}

/// Converts one HF-named key the way `convert_text_enc_state_dict_v20` does.
pub fn hf_to_openclip(key: &str) -> Converted {
    for (i, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        for (suffix, fused) in [("weight", "in_proj_weight"), ("bias", "in_proj_bias")] {
            let tail = format!(".self_attn.{proj}.{suffix}");
            if let Some(stem) = key.strip_suffix(&tail) {
                let stem = rewrite(&format!("{stem}.self_attn"), &HF_TO_OPENCLIP, false);
                return Converted::Fused {
                    fused: format!("{stem}.{fused}"),
                    index: i,
                };
            }
        }
    }
    if key.ends_with(HF_TEXT_PROJECTION) {
        return Converted::Transposed(key.replace(HF_TEXT_PROJECTION, OPENCLIP_TEXT_PROJECTION));
    }
    Converted::Renamed(rewrite(key, &HF_TO_OPENCLIP, false))
}

/// What an OpenCLIP key becomes in HF naming (the loader's direction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unconverted {
    /// Renamed, data unchanged.
    Renamed(String),
    /// The projection: renamed and transposed back.
    Transposed(String),
    /// A fused `in_proj_*`: split into three equal row chunks named q, k, v.
    Split([String; 3]),
}

/// Inverts [`hf_to_openclip`] for one key.
pub fn openclip_to_hf(key: &str) -> Unconverted {
    for (suffix, hf) in [("in_proj_weight", "weight"), ("in_proj_bias", "bias")] {
        if let Some(stem) = key.strip_suffix(&format!(".attn.{suffix}")) {
            let stem = rewrite(&format!("{stem}.attn"), &HF_TO_OPENCLIP, true);
            return Unconverted::Split(
                ["q_proj", "k_proj", "v_proj"].map(|p| format!("{stem}.{p}.{hf}")),
            );
        }
    }
    if let Some(stem) = key.strip_suffix(OPENCLIP_TEXT_PROJECTION) {
        if stem.is_empty() || stem.ends_with('.') {
            return Unconverted::Transposed(format!("{stem}{HF_TEXT_PROJECTION}"));
        }
    }
    Unconverted::Renamed(rewrite(key, &HF_TO_OPENCLIP, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "clip_g.transformer.text_model.";

    #[test]
    fn worked_examples_of_the_reference() {
        let r = |k: &str| hf_to_openclip(k);
        assert_eq!(
            r(&format!("{P}encoder.layers.0.self_attn.q_proj.weight")),
            Converted::Fused {
                fused: "clip_g.transformer.resblocks.0.attn.in_proj_weight".into(),
                index: 0
            }
        );
        assert_eq!(
            r(&format!("{P}encoder.layers.3.self_attn.v_proj.bias")),
            Converted::Fused {
                fused: "clip_g.transformer.resblocks.3.attn.in_proj_bias".into(),
                index: 2
            }
        );
        let renamed = [
            (
                "encoder.layers.0.self_attn.out_proj.weight",
                "clip_g.transformer.resblocks.0.attn.out_proj.weight",
            ),
            (
                "encoder.layers.0.layer_norm1.bias",
                "clip_g.transformer.resblocks.0.ln_1.bias",
            ),
            (
                "encoder.layers.0.layer_norm2.weight",
                "clip_g.transformer.resblocks.0.ln_2.weight",
            ),
            (
                "encoder.layers.0.mlp.fc1.weight",
                "clip_g.transformer.resblocks.0.mlp.c_fc.weight",
            ),
            (
                "encoder.layers.0.mlp.fc2.bias",
                "clip_g.transformer.resblocks.0.mlp.c_proj.bias",
            ),
            ("final_layer_norm.weight", "clip_g.ln_final.weight"),
            (
                "embeddings.token_embedding.weight",
                "clip_g.token_embedding.weight",
            ),
            (
                "embeddings.position_embedding.weight",
                "clip_g.positional_embedding",
            ),
        ];
        for (hf, oc) in renamed {
            assert_eq!(
                r(&format!("{P}{hf}")),
                Converted::Renamed(oc.into()),
                "{hf}"
            );
            assert_eq!(
                openclip_to_hf(oc),
                Unconverted::Renamed(format!("{P}{hf}")),
                "{oc}"
            );
        }
        assert_eq!(
            r("clip_g.transformer.text_projection.weight"),
            Converted::Transposed("clip_g.text_projection".into())
        );
        assert_eq!(
            r("clip_g.logit_scale"),
            Converted::Renamed("clip_g.logit_scale".into())
        );
    }

    #[test]
    fn inverse_of_fusion_and_projection() {
        assert_eq!(
            openclip_to_hf("m.transformer.resblocks.7.attn.in_proj_weight"),
            Unconverted::Split([
                "m.transformer.text_model.encoder.layers.7.self_attn.q_proj.weight".into(),
                "m.transformer.text_model.encoder.layers.7.self_attn.k_proj.weight".into(),
                "m.transformer.text_model.encoder.layers.7.self_attn.v_proj.weight".into(),
            ])
        );
        assert_eq!(
            openclip_to_hf("m.text_projection"),
            Unconverted::Transposed("m.transformer.text_projection.weight".into())
        );
        assert_eq!(
            openclip_to_hf("m.logit_scale"),
            Unconverted::Renamed("m.logit_scale".into())
        );
    }
}
