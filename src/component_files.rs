//! ComfyUI's separate save nodes and loaders: the files ModelSave, CLIPSave and VAESave write
//! from a model's components (`diffusion_models/`, `clip/`, `vae/`), and those files read back
//! into components.
//!
//! - ModelSave writes the denoiser under its family's checkpoint prefix, with the markers and
//!   metadata Save Checkpoint writes.
//! - CLIPSave splits the text encoders by the prefixes it knows ([`CLIPSAVE_ENCODERS`], in that
//!   order), one file per encoder found (`<prefix>_<encoder>`), taking `<encoder>.` and then
//!   `transformer.` off the names; everything else goes into one more file with only a leading
//!   `transformer.` taken off (so Qwen2.5-VL keeps `qwen25_7b.…`, and `spiece_model` lies alone).
//!   Metadata `format: pt`.
//! - VAESave writes the autoencoder's keys as they are.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::family::Family;
use crate::model::{Arch, InputMap, TensorInfo};

/// The encoder prefixes CLIPSave splits by, in its order (`comfy_extras/nodes_model_merging.py`).
pub const CLIPSAVE_ENCODERS: [&str; 11] = [
    "clip_l",
    "clip_g",
    "clip_h",
    "t5xxl",
    "pile_t5xl",
    "mt5xl",
    "umt5xxl",
    "t5base",
    "gemma2_2b",
    "llama",
    "hydit_clip",
];

/// CLIPSave's files from a clip component: `(encoder, tensors in the file's names)`, the encoder
/// `None` for the file of everything under no known prefix.
pub fn clipsave_files(clip: &InputMap) -> Vec<(Option<&'static str>, InputMap)> {
    let mut rest = clip.clone();
    let mut out = Vec::new();
    for enc in CLIPSAVE_ENCODERS {
        let p = format!("{enc}.");
        let keys: Vec<String> = rest.keys().filter(|k| k.starts_with(&p)).cloned().collect();
        if keys.is_empty() {
            continue;
        }
        let mut file = InputMap::new();
        for k in keys {
            if let Some(t) = rest.remove(&k) {
                let name = &k[p.len()..];
                let name = name.strip_prefix("transformer.").unwrap_or(name);
                file.insert(name.to_string(), t);
            }
        }
        out.push((Some(enc), file));
    }
    if !rest.is_empty() {
        let file = rest
            .into_iter()
            .map(|(k, t)| match k.strip_prefix("transformer.") {
                Some(n) => (n.to_string(), t),
                None => (k, t),
            })
            .collect();
        out.push((None, file));
    }
    out
}

/// A CLIPSave file's name back in the clip component: `logit_scale` → `<enc>.logit_scale`, the
/// rest under `<enc>.transformer.`.
pub(crate) fn from_clipsave_name(enc: &str, name: &str) -> String {
    if name == "logit_scale" {
        format!("{enc}.logit_scale")
    } else {
        format!("{enc}.transformer.{name}")
    }
}

/// Whether a file's names are one text encoder as CLIPSave writes it: a top-level
/// `logit_scale` (every ComfyUI encoder carries one) beside the encoder's own names.
pub(crate) fn is_clipsave_file(infos: &BTreeMap<String, TensorInfo>) -> bool {
    infos.contains_key("logit_scale")
        && infos.keys().any(|k| {
            k.starts_with("text_model.")
                || k.starts_with("encoder.block.")
                || k.starts_with("model.layers.")
        })
}

/// Which encoder a CLIPSave file holds, as ComfyUI's text-encoder loader tells it
/// (`comfy/sd.py`, `detect_te_model`), narrowed to the encoders of `arch` when it is known; the
/// file's place among the `--clip` files decides between encoders of one kind that the shapes
/// cannot (test-sized models).
///
/// # Errors
/// [`Error::InvalidInput`] when the names fit no encoder CLIPSave strips, or `arch` uses no
/// encoder of that kind.
pub(crate) fn clipsave_encoder(
    infos: &BTreeMap<String, TensorInfo>,
    arch: Option<Arch>,
    position: usize,
) -> Result<&'static str> {
    let has = |k: &str| infos.contains_key(k);
    let any = |p: &str| infos.keys().any(|k| k.starts_with(p));
    let kind: &[&'static str] = if any("text_model.") {
        &["clip_l", "clip_g", "clip_h"]
    } else if any("encoder.block.") {
        &["t5xxl", "umt5xxl"]
    } else if has("model.layers.0.post_feedforward_layernorm.weight") {
        &["gemma2_2b"]
    } else if any("model.layers.") {
        &["llama"]
    } else {
        return Err(Error::InvalidInput(
            "the text-encoder file has a `logit_scale` but no CLIP, T5 or LLM names".into(),
        ));
    };
    // ComfyUI's own rule, by depth and vocabulary (a shallow CLIP is only CLIP-L at its width:
    // test-sized encoders of any kind are shallow).
    let width = infos
        .get("text_model.embeddings.token_embedding.weight")
        .and_then(|i| i.shape.get(1).copied());
    let by_shape = if any("text_model.") {
        if has("text_model.encoder.layers.30.mlp.fc1.weight") {
            Some("clip_g")
        } else if has("text_model.encoder.layers.22.mlp.fc1.weight") {
            Some("clip_h")
        } else if width == Some(768) {
            Some("clip_l")
        } else {
            None
        }
    } else if any("encoder.block.") {
        let vocab = infos
            .get("shared.weight")
            .and_then(|i| i.shape.first().copied());
        Some(if vocab == Some(256_384) {
            "umt5xxl"
        } else {
            "t5xxl"
        })
    } else {
        kind.first().copied()
    };
    let Some(arch) = arch else {
        return by_shape.ok_or_else(|| Error::InvalidInput("cannot tell the text encoder".into()));
    };
    let family: &Family = arch.family();
    let own: Vec<&'static str> = family.encoders();
    let fits: Vec<&'static str> = own.iter().copied().filter(|e| kind.contains(e)).collect();
    match fits.as_slice() {
        [] => Err(Error::FamilyMismatch {
            reason: format!(
                "the text-encoder file holds a {} encoder, which {arch} does not use (its text \
                 encoders: {})",
                kind.join("/"),
                own.join(", ")
            ),
        }),
        [one] => Ok(*one),
        several => {
            if let Some(e) = by_shape.filter(|e| several.contains(e)) {
                return Ok(e);
            }
            own.get(position)
                .copied()
                .filter(|e| several.contains(e))
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "cannot tell which of {} the text-encoder file number {} is; give the \
                         --clip files in the order {}",
                        several.join(", "),
                        position + 1,
                        own.join(", ")
                    ))
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Dtype, InputTensor};
    use candle_core::{Device, Tensor};

    fn map(keys: &[&str]) -> InputMap {
        keys.iter()
            .map(|k| {
                let t = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu).unwrap();
                (k.to_string(), InputTensor::Candle(t))
            })
            .collect()
    }

    #[test]
    fn clipsave_splits_by_its_prefixes_in_order() {
        let clip = map(&[
            "umt5xxl.logit_scale",
            "umt5xxl.transformer.shared.weight",
            "spiece_model",
            "qwen25_7b.transformer.model.norm.weight",
            "clip_l.transformer.text_model.final_layer_norm.weight",
        ]);
        let files = clipsave_files(&clip);
        let names: Vec<(Option<&str>, Vec<&str>)> = files
            .iter()
            .map(|(e, m)| (*e, m.keys().map(String::as_str).collect()))
            .collect();
        assert_eq!(
            names,
            vec![
                (Some("clip_l"), vec!["text_model.final_layer_norm.weight"]),
                (Some("umt5xxl"), vec!["logit_scale", "shared.weight"]),
                (
                    None,
                    vec!["qwen25_7b.transformer.model.norm.weight", "spiece_model"]
                ),
            ]
        );
        for (enc, file) in &files {
            if let Some(enc) = enc {
                for k in file.keys() {
                    assert!(clip.contains_key(&from_clipsave_name(enc, k)), "{k}");
                }
            }
        }
    }

    #[test]
    fn encoders_are_told_like_comfyui_and_by_family() {
        let infos = |keys: &[(&str, &[usize])]| -> BTreeMap<String, TensorInfo> {
            keys.iter()
                .map(|(k, s)| (k.to_string(), TensorInfo::new(s.to_vec(), Dtype::F16)))
                .collect()
        };
        let t5 = infos(&[
            ("logit_scale", &[]),
            ("shared.weight", &[256_384, 8]),
            ("encoder.block.0.layer.0.SelfAttention.q.weight", &[8, 8]),
        ]);
        assert_eq!(clipsave_encoder(&t5, None, 0).unwrap(), "umt5xxl");
        assert_eq!(
            clipsave_encoder(&t5, Some(Arch::Chroma), 0).unwrap(),
            "t5xxl"
        );
        assert_eq!(
            clipsave_encoder(&t5, Some(Arch::Wan21), 0).unwrap(),
            "umt5xxl"
        );
        let clip = infos(&[
            ("logit_scale", &[]),
            ("text_model.encoder.layers.0.mlp.fc1.weight", &[8, 8]),
        ]);
        // HiDream has CLIP-L and CLIP-G: a shallow (test-sized) CLIP is placed by its position.
        assert_eq!(
            clipsave_encoder(&clip, Some(Arch::HiDream), 1).unwrap(),
            "clip_g"
        );
        assert_eq!(
            clipsave_encoder(&clip, Some(Arch::HiDream), 0).unwrap(),
            "clip_l"
        );
        let e = clipsave_encoder(&clip, Some(Arch::Wan21), 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("wan21 does not use") && e.contains("umt5xxl"),
            "{e}"
        );
        let gemma = infos(&[
            ("logit_scale", &[]),
            ("model.layers.0.post_feedforward_layernorm.weight", &[8]),
        ]);
        assert_eq!(
            clipsave_encoder(&gemma, Some(Arch::Lumina2), 0).unwrap(),
            "gemma2_2b"
        );
    }
}
