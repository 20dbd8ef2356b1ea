//! The text encoders' part of each architecture's layout (checkpoint-format.md §8.2–§8.6): the
//! classic layouts' prefixes, the keys the reference drops, SDXL's created `position_ids`, and
//! the OpenCLIP conversion (q/k/v fused into `in_proj_*`, the projection transposed); every
//! later family only prefixes its keys ([`ClipLayout::Prefix`]).

use std::collections::BTreeMap;

use super::openclip::{self, Converted};
use super::{Builder, Entry, Source, CLIP_CONTEXT};
use crate::error::{Error, Result};
use crate::family::ClipLayout;
use crate::model::{Arch, ComponentKind, Dtype, TensorInfo};

pub(super) fn clip_layout(
    b: &mut Builder,
    arch: Arch,
    clip: &BTreeMap<String, TensorInfo>,
) -> Result<()> {
    let c = ComponentKind::Clip;
    match arch.family().clip_layout {
        ClipLayout::Sd15 => {
            for (k, info) in clip {
                if k == "clip_l.transformer.text_projection.weight" || k == "clip_l.logit_scale" {
                    b.dropped.push((c, k.clone()));
                    continue;
                }
                let key = match k.strip_prefix("clip_l.") {
                    Some(rest) => format!("cond_stage_model.{rest}"),
                    None => k.clone(),
                };
                b.copy(c, k, info, key)?;
            }
        }
        ClipLayout::Sd2 => {
            let renamed = clip.iter().map(|(k, i)| {
                (
                    replace_prefix(k, "clip_h", "cond_stage_model.model"),
                    (k, i),
                )
            });
            openclip_convert(b, renamed)?;
        }
        ClipLayout::Sdxl => {
            let g = clip
                .iter()
                .filter(|(k, _)| k.starts_with("clip_g"))
                .map(|(k, i)| (k.clone(), (k, i)));
            openclip_convert_then(b, g, |k| {
                replace_prefix(k, "clip_g", "conditioner.embedders.1.model")
            })?;
            for (k, info) in clip {
                if k.starts_with("clip_g") {
                    continue;
                }
                if !k.starts_with("clip_l") {
                    b.dropped.push((c, k.clone()));
                    continue;
                }
                if k == "clip_l.transformer.text_projection.weight"
                    || k == "clip_l.logit_scale"
                    || k == "clip_l.transformer.text_model.embeddings.position_ids"
                {
                    b.dropped.push((c, k.clone()));
                    continue;
                }
                b.copy(
                    c,
                    k,
                    info,
                    replace_prefix(k, "clip_l", "conditioner.embedders.0"),
                )?;
            }
            b.push(Entry {
                key: "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"
                    .into(),
                source: Source::PositionIds { len: CLIP_CONTEXT },
                shape: vec![1, CLIP_CONTEXT],
                dtype: Dtype::I64,
            })?;
        }
        ClipLayout::SdxlRefiner => {
            for (k, _) in clip.iter().filter(|(k, _)| !k.starts_with("clip_g")) {
                b.dropped.push((c, k.clone()));
            }
            let g = clip
                .iter()
                .filter(|(k, _)| {
                    k.starts_with("clip_g")
                        && *k != "clip_g.transformer.text_model.embeddings.position_ids"
                })
                .map(|(k, i)| (k.clone(), (k, i)));
            openclip_convert_then(b, g, |k| {
                replace_prefix(k, "clip_g", "conditioner.embedders.0.model")
            })?;
        }
        ClipLayout::Prefix => {
            b.prefix_all(c, clip, arch.family().prefixes.clip)?;
        }
    }
    Ok(())
}

/// `state_dict_prefix_replace` for one key: a key starting with `old` gets `new` instead.
fn replace_prefix(key: &str, old: &str, new: &str) -> String {
    match key.strip_prefix(old) {
        Some(rest) => format!("{new}{rest}"),
        None => key.to_string(),
    }
}

fn openclip_convert<'a>(
    b: &mut Builder,
    keys: impl Iterator<Item = (String, (&'a String, &'a TensorInfo))>,
) -> Result<()> {
    openclip_convert_then(b, keys, |k| k.to_string())
}

/// Runs the OpenCLIP conversion over `(name to convert, (in-memory key, info))` pairs, then maps
/// each resulting key through `rename`.
fn openclip_convert_then<'a>(
    b: &mut Builder,
    keys: impl Iterator<Item = (String, (&'a String, &'a TensorInfo))>,
    rename: impl Fn(&str) -> String,
) -> Result<()> {
    let c = ComponentKind::Clip;
    // Fused keys are appended after all others, like the reference.
    let mut fused: BTreeMap<String, [Option<(&String, &TensorInfo)>; 3]> = BTreeMap::new();
    for (name, (k, info)) in keys {
        match openclip::hf_to_openclip(&name) {
            Converted::Renamed(new) => b.copy(c, k, info, rename(&new))?,
            Converted::Transposed(new) => {
                let key = rename(&new);
                let [rows, cols] = info.shape[..] else {
                    return Err(Error::Conversion {
                        key,
                        reason: format!(
                            "the text projection `{k}` must be 2-D, found shape {:?}",
                            info.shape
                        ),
                    });
                };
                b.push(Entry {
                    key,
                    source: Source::Transpose {
                        component: c,
                        key: k.clone(),
                    },
                    shape: vec![cols, rows],
                    dtype: info.dtype,
                })?;
            }
            Converted::Fused { fused: f, index } => {
                fused.entry(f).or_default()[index] = Some((k, info));
            }
        }
    }
    for (f, parts) in fused {
        let key = rename(&f);
        let names = ["q", "k", "v"];
        let mut got = Vec::with_capacity(3);
        for (i, p) in parts.iter().enumerate() {
            match p {
                Some(p) => got.push(*p),
                None => {
                    return Err(Error::Conversion {
                        key,
                        reason: format!(
                            "the {} projection is missing (CORRUPTED MODEL: one of the q-k-v values for the text encoder was missing); every layer needs q_proj, k_proj and v_proj",
                            names[i]
                        ),
                    })
                }
            }
        }
        let first = got[0].1;
        for (i, (k, info)) in got.iter().enumerate().skip(1) {
            if info.shape != first.shape || info.dtype != first.dtype {
                return Err(Error::Conversion {
                    key,
                    reason: format!(
                        "q is {:?} {} but {} (`{k}`) is {:?} {}; q, k and v must have the same shape and dtype",
                        first.shape, first.dtype, names[i], info.shape, info.dtype
                    ),
                });
            }
        }
        if first.shape.is_empty() || first.shape.len() > 2 {
            return Err(Error::Conversion {
                key,
                reason: format!(
                    "q/k/v must be 1-D (bias) or 2-D (weight), found shape {:?}",
                    first.shape
                ),
            });
        }
        let mut shape = first.shape.clone();
        shape[0] *= 3;
        b.push(Entry {
            key,
            source: Source::FuseQkv {
                component: c,
                keys: [got[0].0.clone(), got[1].0.clone(), got[2].0.clone()],
            },
            shape,
            dtype: first.dtype,
        })?;
    }
    Ok(())
}
