//! The layout read backwards: which component tensor each key of a single-file checkpoint
//! comes from (checkpoint-format.md §8, §10).
//!
//! The inverse is not a second hand-written table of every key. Each checkpoint key is mapped back
//! by the layout's prefixes (plus [`openclip::openclip_to_hf`] for the OpenCLIP encoders), and then
//! [`layout`] is run again on the recovered shapes: it must reproduce exactly the keys and shapes
//! found in the file. A file in a layout we do not know therefore fails with a clear error instead
//! of loading into silently wrong names, and the loader cannot drift from the save rules. Tensors
//! the save creates (SDXL's `position_ids`, the prediction markers) are recognised the same way,
//! from the layout's own [`Source`]s, and are not handed back as component tensors.
//!
//! Pure: names and shapes in, moves out; reading the bytes is the caller's job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::openclip::{self, Unconverted};
use super::{layout, GenericPrefixes, LayoutKind, Source, UNET_PREFIX};
use crate::error::{Error, Result};
use crate::family::{self, ClipLayout, Detection, Family};
use crate::model::{Arch, ComponentKind, ComponentShapes, Dtype, Prediction, TensorInfo};

/// The `v_pred` marker (§4).
pub(crate) const V_PRED: &str = "v_pred";
/// The `ztsnr` marker, only meaningful together with `v_pred`.
pub(crate) const ZTSNR: &str = "ztsnr";
/// The EDM v-prediction sigma markers.
pub(crate) const SIGMA_MAX: &str = "edm_vpred.sigma_max";
pub(crate) const SIGMA_MIN: &str = "edm_vpred.sigma_min";
/// ComfyUI's sigma_min when a file has only `edm_vpred.sigma_max`.
pub(crate) const DEFAULT_SIGMA_MIN: f64 = 0.002;
/// Header metadata key holding the prediction type.
pub(crate) const PREDICT_KEY: &str = "modelspec.predict_key";

/// The denoiser prefix of a checkpoint's keys: of the families' model prefixes
/// (`model.diffusion_model.`, HunyuanVideo's `model.model.`), the one most keys have, as
/// ComfyUI's loader picks it.
pub(crate) fn model_prefix(infos: &BTreeMap<String, TensorInfo>) -> &'static str {
    let mut best = (UNET_PREFIX, 0);
    for f in Family::all() {
        let p = f.prefixes.model;
        let n = infos.keys().filter(|k| k.starts_with(p)).count();
        if n > best.1 {
            best = (p, n);
        }
    }
    best.0
}

/// The denoiser's keys (prefix stripped) and what they detect as.
pub(crate) fn detect_file(infos: &BTreeMap<String, TensorInfo>) -> Result<Detection> {
    let prefix = model_prefix(infos);
    let model: BTreeMap<String, TensorInfo> = infos
        .iter()
        .filter_map(|(k, i)| Some((k.strip_prefix(prefix)?.to_string(), i.clone())))
        .collect();
    family::detect(&model)
}

/// The architecture the denoiser's keys (prefix stripped) detect as.
pub(crate) fn detect_arch(infos: &BTreeMap<String, TensorInfo>) -> Result<Arch> {
    detect_file(infos).map(|d| d.arch)
}

/// The prediction type from the markers (§4, §10.2), then `modelspec.predict_key`, then `default`.
///
/// Returns the marker keys it consumed. `sigma` reads the F32 value of an `edm_vpred.*` scalar.
pub(crate) fn read_prediction(
    path: &Path,
    infos: &BTreeMap<String, TensorInfo>,
    metadata: &BTreeMap<String, String>,
    default: Prediction,
    mut sigma: impl FnMut(&str) -> Result<f32>,
) -> Result<(Prediction, Vec<&'static str>)> {
    let mut scalar = |key: &'static str| -> Result<Option<f64>> {
        let Some(info) = infos.get(key) else {
            return Ok(None);
        };
        if info.dtype != Dtype::F32 || info.numel() != 1 {
            return Err(Error::InvalidCheckpoint {
                path: path.to_path_buf(),
                reason: format!(
                    "marker `{key}` must hold one F32 value, found {} of shape {:?}",
                    info.dtype, info.shape
                ),
            });
        }
        Ok(Some(f64::from(sigma(key)?)))
    };
    if let Some(sigma_max) = scalar(SIGMA_MAX)? {
        let min = scalar(SIGMA_MIN)?;
        let mut used = vec![SIGMA_MAX];
        if min.is_some() {
            used.push(SIGMA_MIN);
        }
        let prediction = Prediction::EdmV {
            sigma_max,
            sigma_min: min.unwrap_or(DEFAULT_SIGMA_MIN),
        };
        return Ok((prediction, used));
    }
    if infos.contains_key(V_PRED) {
        return Ok(if infos.contains_key(ZTSNR) {
            (Prediction::VZsnr, vec![V_PRED, ZTSNR])
        } else {
            (Prediction::V, vec![V_PRED])
        });
    }
    let prediction = match metadata.get(PREDICT_KEY).map(String::as_str) {
        Some("epsilon") => Prediction::Eps,
        Some("v") => Prediction::V,
        _ => default,
    };
    Ok((prediction, Vec::new()))
}

/// Whether a file states its prediction type (a marker or `modelspec.predict_key`) rather than
/// leaving it to the architecture's default.
pub(crate) fn states_prediction(
    infos: &BTreeMap<String, TensorInfo>,
    metadata: &BTreeMap<String, String>,
) -> bool {
    [V_PRED, SIGMA_MAX].iter().any(|k| infos.contains_key(*k))
        || matches!(
            metadata.get(PREDICT_KEY).map(String::as_str),
            Some("epsilon" | "v")
        )
}

/// What happens to one checkpoint tensor on load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Move {
    /// Becomes this in-memory key unchanged.
    Copy(String),
    /// Transposed back into this key (OpenCLIP `text_projection`).
    Transpose(String),
    /// Split into three equal row blocks: q, k, v (OpenCLIP `in_proj_*`).
    Split([String; 3]),
}

/// The inverse of one layout over a file's keys.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inversion {
    pub prediction: Prediction,
    /// (checkpoint key, component, what it becomes).
    pub moves: Vec<(String, ComponentKind, Move)>,
    /// Keys no rule claims.
    pub leftover: Vec<String>,
}

/// One text-encoder rule of an architecture's layout, read backwards: (prefix in the checkpoint,
/// in-memory prefix it came from, whether the save converted the keys to OpenCLIP naming).
type ClipRule = (&'static str, &'static str, bool);

/// The text-encoder prefixes of §8.2–§8.6 (the layout's `clip_layout`, backwards).
fn clip_rules(arch: Arch) -> Vec<ClipRule> {
    let family = arch.family();
    match family.clip_layout {
        ClipLayout::Sd15 => vec![("cond_stage_model.", "clip_l.", false)],
        ClipLayout::Sd2 => vec![("cond_stage_model.model.", "clip_h.", true)],
        ClipLayout::Sdxl => vec![
            ("conditioner.embedders.1.model.", "clip_g.", true),
            ("conditioner.embedders.0.", "clip_l.", false),
        ],
        ClipLayout::SdxlRefiner => vec![("conditioner.embedders.0.model.", "clip_g.", true)],
        ClipLayout::Prefix => vec![(family.prefixes.clip, "", false)],
    }
}

/// Which component a checkpoint key belongs to under `kind`, and what it becomes.
pub(crate) fn claim(kind: &LayoutKind, key: &str) -> Option<(ComponentKind, Move)> {
    match kind {
        LayoutKind::Generic(p) => ComponentKind::ALL
            .into_iter()
            .filter(|c| *c != ComponentKind::AudioVae)
            .find_map(|c| {
                let rest = key.strip_prefix(p.get(c))?;
                Some((c, Move::Copy(rest.to_string())))
            })
            .or_else(|| {
                let k = crate::family::release::LTX2.audio_memory_key(key)?;
                Some((ComponentKind::AudioVae, Move::Copy(k)))
            }),
        LayoutKind::Arch(arch) => {
            let prefixes = arch.family().prefixes;
            if let Some(rest) = key.strip_prefix(prefixes.model) {
                return Some((ComponentKind::Model, Move::Copy(rest.to_string())));
            }
            if let Some(rest) = key.strip_prefix(prefixes.vae) {
                return Some((ComponentKind::Vae, Move::Copy(rest.to_string())));
            }
            // The parts of the family's release ComfyUI's save does not write.
            if let Some(r) = arch.family().release {
                if let Some(k) = r.audio_memory_key(key) {
                    return Some((ComponentKind::AudioVae, Move::Copy(k)));
                }
                if let Some(k) = r.projection_memory_key(key) {
                    return Some((ComponentKind::Clip, Move::Copy(k)));
                }
            }
            clip_rules(*arch)
                .into_iter()
                .find_map(|(file, m, openclip)| {
                    let rest = key.strip_prefix(file)?;
                    let mv = if !openclip {
                        Move::Copy(format!("{m}{rest}"))
                    } else {
                        match openclip::openclip_to_hf(rest) {
                            Unconverted::Renamed(k) => Move::Copy(format!("{m}{k}")),
                            Unconverted::Transposed(k) => Move::Transpose(format!("{m}{k}")),
                            Unconverted::Split(ks) => Move::Split(ks.map(|k| format!("{m}{k}"))),
                        }
                    };
                    Some((ComponentKind::Clip, mv))
                })
        }
    }
}

/// Inverts `kind` over the file's keys and self-checks the result against [`layout::layout`].
pub(crate) fn invert(
    path: &Path,
    kind: &LayoutKind,
    infos: &BTreeMap<String, TensorInfo>,
    prediction: Prediction,
    markers: &[&str],
) -> Result<Inversion> {
    let name = match kind {
        LayoutKind::Arch(a) => format!("the {a} layout"),
        LayoutKind::Generic(_) => "the generic layout".to_string(),
    };
    let bad = |reason: String| Error::InvalidCheckpoint {
        path: path.to_path_buf(),
        reason: format!("its keys do not form {name}: {reason}"),
    };
    let mut moves = Vec::new();
    let mut leftover = Vec::new();
    let mut recovered: BTreeMap<ComponentKind, BTreeMap<String, TensorInfo>> = BTreeMap::new();
    for (key, info) in infos {
        if markers.contains(&key.as_str()) {
            continue;
        }
        let Some((component, mv)) = claim(kind, key) else {
            leftover.push(key.clone());
            continue;
        };
        let parts = recovered_infos(key, info, &mv).map_err(&bad)?;
        let map = recovered.entry(component).or_default();
        for (k, i) in parts {
            if map.insert(k.clone(), i).is_some() {
                return Err(bad(format!(
                    "two checkpoint keys map to the {component} tensor `{k}` (the second is `{key}`)"
                )));
            }
        }
        moves.push((key.clone(), component, mv));
    }
    let shapes = |recovered: &BTreeMap<ComponentKind, BTreeMap<String, TensorInfo>>| {
        let mut s = ComponentShapes::default();
        for (k, m) in recovered {
            s.set(*k, m.clone());
        }
        s
    };
    // Tensors the save creates (SDXL's position_ids) are in the file but not in memory.
    // Keys no rule claims explain a layout that fails (a released LTX-2 file's audio VAE beside
    // a missing text encoder): name them with the failure.
    let unclaimed = |e: Error| match leftover.first() {
        Some(first) => bad(format!(
            "{e}; the file also holds {} key(s) no component of this layout takes (first: \
             `{first}`)",
            leftover.len()
        )),
        None => bad(e.to_string()),
    };
    let first = layout(kind, &shapes(&recovered), prediction).map_err(unclaimed)?;
    for e in &first.entries {
        if matches!(e.source, Source::PositionIds { .. }) {
            if let Some(i) = moves.iter().position(|(k, _, _)| *k == e.key) {
                let (_, component, mv) = moves.remove(i);
                if let (Some(map), Move::Copy(k)) = (recovered.get_mut(&component), &mv) {
                    map.remove(k);
                }
            }
        }
    }
    let again = layout(kind, &shapes(&recovered), prediction).map_err(|e| bad(e.to_string()))?;
    let want: BTreeMap<&str, &[usize]> = again
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.shape.as_slice()))
        .collect();
    let claimed: BTreeSet<&str> = infos
        .keys()
        .map(String::as_str)
        .filter(|k| !leftover.iter().any(|l| l == k))
        .collect();
    for k in &claimed {
        match (want.get(k), infos.get(*k)) {
            (None, _) => {
                return Err(bad(format!(
                    "`{k}` would not be written by a save of the recovered components"
                )))
            }
            (Some(shape), Some(info)) if *shape != info.shape.as_slice() => {
                return Err(bad(format!(
                    "`{k}` has shape {:?} but a save of the recovered components writes {shape:?}",
                    info.shape
                )))
            }
            _ => {}
        }
    }
    if let Some(missing) = want.keys().find(|k| !claimed.contains(*k)) {
        return Err(bad(format!(
            "a save of the recovered components would also write `{missing}`, which the file lacks"
        )));
    }
    Ok(Inversion {
        prediction,
        moves,
        leftover,
    })
}

/// The in-memory keys and infos one checkpoint tensor becomes.
pub(crate) fn recovered_infos(
    key: &str,
    info: &TensorInfo,
    mv: &Move,
) -> std::result::Result<Vec<(String, TensorInfo)>, String> {
    Ok(match mv {
        Move::Copy(k) => vec![(k.clone(), info.clone())],
        Move::Transpose(k) => {
            let [rows, cols] = info.shape[..] else {
                return Err(format!(
                    "the text projection `{key}` must be 2-D, found shape {:?}",
                    info.shape
                ));
            };
            vec![(k.clone(), TensorInfo::new(vec![cols, rows], info.dtype))]
        }
        Move::Split(keys) => {
            let rank_ok = matches!(info.shape.len(), 1 | 2);
            if !rank_ok || !info.shape[0].is_multiple_of(3) {
                return Err(format!(
                    "the fused q/k/v `{key}` must be 1-D or 2-D with a multiple of 3 rows, found shape {:?}",
                    info.shape
                ));
            }
            let mut shape = info.shape.clone();
            shape[0] /= 3;
            keys.iter()
                .map(|k| (k.clone(), TensorInfo::new(shape.clone(), info.dtype)))
                .collect()
        }
    })
}

/// Which layout a file's keys form — `arch` when given, else the detected architecture, else the
/// generic layout when it claims every key — and how each key goes back to a component.
/// `sigma` reads the F32 value of an `edm_vpred.*` scalar. `path` only names the file in errors.
///
/// # Errors
/// [`Error::UnknownArchitecture`] when no architecture is given, none is detected and the file is
/// not in the generic layout; [`Error::InvalidCheckpoint`] when the keys do not form the layout of
/// the (given or detected) architecture, or a marker is malformed.
pub(crate) fn invert_file(
    path: &Path,
    infos: &BTreeMap<String, TensorInfo>,
    metadata: &BTreeMap<String, String>,
    arch: Option<Arch>,
    mut sigma: impl FnMut(&str) -> Result<f32>,
) -> Result<(Option<Arch>, Inversion)> {
    let mut attempt = |kind: &LayoutKind| -> Result<Inversion> {
        let default = match kind {
            LayoutKind::Arch(a) => a.default_prediction(),
            LayoutKind::Generic(_) => Prediction::Unknown,
        };
        let (prediction, markers) = read_prediction(path, infos, metadata, default, &mut sigma)?;
        invert(path, kind, infos, prediction, &markers)
    };
    if let Some(a) = arch {
        return Ok((Some(a), attempt(&LayoutKind::Arch(a))?));
    }
    let first_error = match detect_arch(infos) {
        Ok(a) => match attempt(&LayoutKind::Arch(a)) {
            Ok(inv) => return Ok((Some(a), inv)),
            Err(e) => e,
        },
        Err(e) => e,
    };
    match attempt(&LayoutKind::Generic(GenericPrefixes::default())) {
        Ok(inv) if inv.leftover.is_empty() => Ok((None, inv)),
        _ => Err(first_error),
    }
}

#[cfg(test)]
mod tests;
