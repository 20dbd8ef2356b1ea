//! Reading = grouping: when a file is opened, the members of each quantized layer become ONE
//! logical tensor ([`QuantTensor`]) under the codes' name, so layout, detection, merges and
//! key conversions see one tensor with its logical shape and its format, and move its
//! companions with it.
//!
//! A layer is quantized when ComfyUI would read it so (`comfy/utils.py` `convert_old_quants`,
//! `comfy/ops.py` `_load_quantized_module`):
//! - the header metadata `_quantization_metadata` describes it (this replaces the layer's
//!   `comfy_quant` tensor, as in ComfyUI);
//! - it has a `<layer>.comfy_quant` description;
//! - it has a `<layer>.scale_weight` under the prefix of a legacy `<prefix>scaled_fp8` marker.
//!
//! Anything else that looks like quantization and says nothing of what its codes mean — scales
//! beside 8-bit codes with no description or marker — is refused by name rather than read as
//! values: the codes alone are not the weights.
//!
//! The logical shape is the stored one: ComfyUI takes it from the model's layer, and a file alone
//! cannot tell padding from data. Where it shows that a block format was padded (a bias with
//! fewer rows than the codes), the column count is unknown too, and the layer is refused.

use std::collections::{BTreeMap, BTreeSet};

use super::files::TensorSet;
use crate::error::{Error, Result};
use crate::model::dtype::Dtype;
use crate::model::{InputTensor, Legacy, QuantTensor};
use crate::quant::{
    parse_quantization_metadata, Format, QuantDescription, ScaledFp8Marker, COMPANIONS,
};

/// Largest `comfy_quant` description read (ComfyUI's are a few dozen bytes).
const MAX_DESCRIPTION: u64 = 64 << 10;

use crate::plan::quant::{METADATA_KEY, SHAPES_KEY};

/// Groups `set`'s quantized layers (see the [module docs](self)).
///
/// # Errors
/// [`Error::Quantized`] naming the layer for members that do not form their format, bad scales,
/// a description that is not valid JSON or names an unknown format; [`Error::InvalidInput`] for
/// bad `_quantization_metadata`; read errors of the descriptions and scales.
pub(crate) fn group(set: &mut TensorSet) -> Result<()> {
    let mut described: BTreeMap<String, QuantDescription> = BTreeMap::new();
    if let Some(text) = set.metadata.get(METADATA_KEY) {
        for (layer, d) in parse_quantization_metadata(text)? {
            described.insert(layer, d);
        }
    }
    for key in set.tensors.keys() {
        let Some(layer) = key.strip_suffix(".comfy_quant") else {
            continue;
        };
        if described.contains_key(layer) {
            continue;
        }
        let bytes = description_bytes(set, key)?;
        described.insert(layer.to_string(), QuantDescription::parse(layer, &bytes)?);
    }
    let mut legacy: BTreeMap<String, Legacy> = BTreeMap::new();
    let mut markers = Vec::new();
    for (key, t) in &set.tensors {
        let prefix = match key.strip_suffix("scaled_fp8") {
            Some(p) if p.is_empty() || p.ends_with('.') => p,
            _ => continue,
        };
        let info = t.info();
        if info.numel() > 2 {
            continue;
        }
        let marker = ScaledFp8Marker::parse(key, info.dtype, &info.shape)?;
        markers.push(key.clone());
        for k in set.tensors.keys() {
            let Some(layer) = k.strip_suffix(".scale_weight") else {
                continue;
            };
            let Some(rest) = k.strip_prefix(prefix) else {
                continue;
            };
            if described.contains_key(layer) {
                continue;
            }
            let relative = format!("{}.weight", &rest[..rest.len() - ".scale_weight".len()]);
            legacy.insert(layer.to_string(), Legacy { marker, relative });
        }
    }
    refuse_undescribed(set, &described, &legacy)?;
    let shapes = recorded_shapes(set)?;
    let layers: BTreeSet<String> = described.keys().chain(legacy.keys()).cloned().collect();
    for layer in layers {
        let mut members = Vec::new();
        for name in std::iter::once("weight").chain(COMPANIONS) {
            if let Some(t) = set.tensors.get(&format!("{layer}.{name}")) {
                members.push((name.to_string(), t.clone()));
            }
        }
        let l = legacy.get(&layer);
        let description = match (described.get(&layer), l) {
            (Some(d), _) => *d,
            (None, Some(l)) => QuantDescription {
                format: Format::ScaledFp8(l.marker.fp8),
                full_precision_matrix_mult: !l.marker.input_scaling,
            },
            (None, None) => continue,
        };
        let logical = shapes.get(&layer);
        if logical.is_none() {
            check_padding(set, &layer, description.format, &members)?;
        }
        let logical = logical.map(Vec::as_slice);
        let mut q = QuantTensor::new(&layer, description, members.clone(), logical)?;
        if let Some(l) = l {
            q = q.with_legacy(l.clone());
        }
        for (name, _) in &members {
            set.tensors.remove(&format!("{layer}.{name}"));
        }
        set.tensors.insert(format!("{layer}.weight"), q.into());
    }
    for key in markers {
        set.tensors.remove(&key);
    }
    Ok(())
}

/// The logical shapes of padded layers this tool recorded in the header metadata.
fn recorded_shapes(set: &TensorSet) -> Result<BTreeMap<String, Vec<usize>>> {
    let Some(text) = set.metadata.get(SHAPES_KEY) else {
        return Ok(BTreeMap::new());
    };
    serde_json::from_str(text).map_err(|e| {
        Error::InvalidInput(format!(
            "the header metadata `{SHAPES_KEY}` is not a JSON object of layer shapes ({e}); the \
             file is damaged: remove that entry"
        ))
    })
}

/// What says that a file holds quantized layers, if anything does: for the readers that load
/// stored tensors as they are, which must not hand codes out as weights.
pub(crate) fn quantization_evidence<'a>(
    names: impl IntoIterator<Item = &'a str>,
    metadata: &BTreeMap<String, String>,
) -> Option<String> {
    if metadata.contains_key(METADATA_KEY) {
        return Some(format!("its header metadata has `{METADATA_KEY}`"));
    }
    names.into_iter().find_map(|k| {
        let marker = k == "scaled_fp8" || k.ends_with(".scaled_fp8");
        (marker || k.ends_with(".comfy_quant") || k.ends_with(".scale_weight"))
            .then(|| format!("it has `{k}`"))
    })
}

/// The bytes of a `comfy_quant` tensor, refused past [`MAX_DESCRIPTION`].
fn description_bytes(set: &TensorSet, key: &str) -> Result<Vec<u8>> {
    let t = &set.tensors[key];
    if t.byte_len() > MAX_DESCRIPTION {
        return Err(Error::Quantized {
            layer: key.trim_end_matches(".comfy_quant").to_string(),
            reason: format!(
                "its `comfy_quant` description is {} bytes, not a short JSON object; the file \
                 is damaged",
                t.byte_len()
            ),
        });
    }
    crate::offload::host_bytes(t)
}

/// Refuses scales beside 8-bit codes whose layer nothing describes.
fn refuse_undescribed(
    set: &TensorSet,
    described: &BTreeMap<String, QuantDescription>,
    legacy: &BTreeMap<String, Legacy>,
) -> Result<()> {
    for key in set.tensors.keys() {
        let Some((layer, name)) = COMPANIONS
            .iter()
            .find_map(|c| Some((key.strip_suffix(&format!(".{c}"))?, *c)))
        else {
            continue;
        };
        if described.contains_key(layer) || legacy.contains_key(layer) {
            continue;
        }
        let Some(codes) = set.tensors.get(&format!("{layer}.weight")) else {
            continue;
        };
        let dtype = codes.info().dtype;
        if matches!(
            dtype,
            Dtype::F8_E4M3 | Dtype::F8_E5M2 | Dtype::I8 | Dtype::U8
        ) {
            return Err(Error::Quantized {
                layer: layer.to_string(),
                reason: format!(
                    "`{layer}.weight` holds {dtype} codes with `{layer}.{name}` beside it, but \
                     nothing says how they are quantized: no `{layer}.comfy_quant`, no \
                     `_quantization_metadata` entry, no `scaled_fp8` marker over it. Their \
                     values cannot be read; the file is damaged or in a layout ComfyUI does \
                     not load"
                ),
            });
        }
    }
    Ok(())
}

/// Refuses a block-format layer whose bias shows that its rows were padded: its column count
/// is then unknown (see the [module docs](self)). Otherwise its stored shape is its shape.
fn check_padding(
    set: &TensorSet,
    layer: &str,
    format: Format,
    members: &[(String, InputTensor)],
) -> Result<()> {
    let Some(pad) = format.padding() else {
        return Ok(());
    };
    let Some(bias) = set.tensors.get(&format!("{layer}.bias")) else {
        return Ok(());
    };
    let Some((_, codes)) = members.iter().find(|(n, _)| n == "weight") else {
        return Ok(());
    };
    let (bias, codes) = (bias.info().shape, codes.info().shape);
    let (Some(&rows), Some(&stored)) = (bias.first(), codes.first()) else {
        return Ok(());
    };
    if bias.len() != 1 || rows == stored {
        return Ok(());
    }
    if rows.next_multiple_of(pad) != stored {
        return Err(Error::Quantized {
            layer: layer.to_string(),
            reason: format!(
                "its bias has {rows} rows and its {format} codes {stored}: they do not belong to \
                 one layer"
            ),
        });
    }
    Err(Error::Quantized {
        layer: layer.to_string(),
        reason: format!(
            "its {format} codes were padded from {rows} rows (its bias) to {stored}, so its \
             columns may be padded too, and the file does not say how many of its {} are the \
             model's: ComfyUI takes the shape from the model's layer. Convert it where the shape \
             is known, or write it unquantized from the original weights",
            codes
                .get(1)
                .map_or(0, |c| if format == Format::Nvfp4 { c * 2 } else { *c })
        ),
    })
}
