//! Descriptions of quantized layers: the per-layer `comfy_quant` JSON, the header metadata
//! `_quantization_metadata` that collects them, and the legacy model-level `scaled_fp8` marker.
//!
//! Reading follows ComfyUI (`comfy/ops.py` `_load_quantized_module`, `comfy/utils.py`
//! `convert_old_quants`): keys it ignores are ignored; keys that change what the codes mean and
//! that this crate does not implement are refused by name. Writing produces ComfyUI's bytes:
//! `json.dumps` with its default `", "` and `": "` separators and ASCII escapes.

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::model::dtype::Dtype;

use super::format::{Format, Fp8, UNSUPPORTED};
use super::layout::quant_error;

/// A layer's quantization description: what a `comfy_quant` tensor (or one entry of
/// `_quantization_metadata`) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QuantDescription {
    /// The format (never [`Format::ScaledFp8`], which has no description).
    pub format: Format,
    /// ComfyUI's `full_precision_matrix_mult`: multiply in the compute dtype instead of fp8
    /// (the two-element legacy marker's meaning); it does not change the values.
    pub full_precision_matrix_mult: bool,
}

impl QuantDescription {
    /// The description of a fresh layer in `format`.
    pub fn new(format: Format) -> Self {
        QuantDescription {
            format,
            full_precision_matrix_mult: false,
        }
    }

    /// Parses the bytes of a `<layer>.comfy_quant` tensor.
    ///
    /// # Errors
    /// [`Error::Quantized`] naming the layer when the bytes are not UTF-8 JSON, not an object,
    /// name no format, name a format that is unknown or not supported (named, with the formats
    /// that are), or ask for something this crate does not implement (int8 `convrot` rotation,
    /// `num_experts` expert banks, a `group_size` other than the format's).
    pub fn parse(layer: &str, bytes: &[u8]) -> Result<Self> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            quant_error(
                layer,
                format!(
                    "its `comfy_quant` description is not valid JSON ({e}); the file is damaged"
                ),
            )
        })?;
        Self::from_value(layer, &value)
    }

    /// Parses one layer's entry of `_quantization_metadata` (or a parsed `comfy_quant`).
    fn from_value(layer: &str, value: &Value) -> Result<Self> {
        let bad = |reason: String| quant_error(layer, reason);
        let Some(conf) = value.as_object() else {
            return Err(bad(format!(
                "its quantization description is {value}, not a JSON object like \
                 {{\"format\": \"nvfp4\"}}"
            )));
        };
        let name = match conf.get("format") {
            Some(Value::String(name)) => name.as_str(),
            Some(other) => {
                return Err(bad(format!(
                    "its quantization format is {other}, not a name"
                )))
            }
            None => {
                return Err(bad(format!(
                    "its quantization description names no format (`{value}`)"
                )))
            }
        };
        let format = Format::from_comfy_name(name).ok_or_else(|| {
            match UNSUPPORTED.iter().find(|(known, _)| *known == name) {
                Some((_, why)) => bad(format!(
                    "ComfyUI format `{name}` is not supported ({why}); supported formats: {}",
                    Format::COMFY_NAMES
                )),
                None => bad(format!(
                    "unknown quantization format `{name}`; known formats: {}",
                    Format::COMFY_NAMES
                )),
            }
        })?;
        let full_precision_matrix_mult = match conf.get("full_precision_matrix_mult") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(bad(format!(
                    "`full_precision_matrix_mult` is {other}, not true or false"
                )))
            }
        };
        let params = conf.get("params").and_then(Value::as_object);
        let convrot = conf
            .get("convrot")
            .or_else(|| params.and_then(|p| p.get("convrot")))
            .is_some_and(truthy);
        if format == Format::Int8Tensorwise && convrot {
            return Err(bad(
                "int8_tensorwise with `convrot` (weights stored after a Hadamard rotation) is not \
                 supported: their values need a matrix product per group to read"
                    .into(),
            ));
        }
        if conf.contains_key("num_experts") {
            return Err(bad(format!(
                "{format} expert banks (`num_experts`) are not supported"
            )));
        }
        if let Some(size) = conf.get("group_size") {
            let block = format.block_len();
            if format.has_block_scales() && size.as_u64() != Some(block as u64) {
                return Err(bad(format!(
                    "`group_size` is {size}, but {format} has blocks of {block}"
                )));
            }
        }
        Ok(QuantDescription {
            format,
            full_precision_matrix_mult,
        })
    }

    fn to_value(self) -> Value {
        let mut conf = Map::new();
        let name = match self.format {
            Format::ScaledFp8(fp8) => fp8.comfy_name(),
            other => other.comfy_name().unwrap_or_default(),
        };
        conf.insert("format".into(), Value::String(name.into()));
        if self.full_precision_matrix_mult {
            conf.insert("full_precision_matrix_mult".into(), Value::Bool(true));
        }
        Value::Object(conf)
    }

    /// The JSON ComfyUI writes into `<layer>.comfy_quant` (`json.dumps(quant_conf)`), for example
    /// `{"format": "nvfp4"}` or `{"format": "float8_e4m3fn", "full_precision_matrix_mult": true}`.
    /// A legacy format is described as the comfy_quant fp8 format of its codes.
    pub fn to_json(self) -> String {
        python_json(&self.to_value())
    }
}

/// Python's truthiness of a JSON value.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Parses the header metadata `_quantization_metadata`: `{"format_version": "1.0", "layers":
/// {layer: description, …}}`, layers in file order. ComfyUI reads only `layers`; when the entry
/// exists it replaces any `comfy_quant` tensors of those layers.
///
/// # Errors
/// [`Error::InvalidInput`] when the text is not a JSON object with a `layers` object;
/// [`Error::Quantized`] naming the layer for a bad entry (see [`QuantDescription::parse`]).
pub fn parse_quantization_metadata(text: &str) -> Result<Vec<(String, QuantDescription)>> {
    let invalid = |reason: String| {
        Error::InvalidInput(format!(
            "the header metadata `_quantization_metadata` {reason}; the file is damaged: remove \
             that entry or fix it"
        ))
    };
    let value: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("is not valid JSON ({e})")))?;
    let layers = value
        .get("layers")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid("has no `layers` object".into()))?;
    layers
        .iter()
        .map(|(layer, conf)| Ok((layer.clone(), QuantDescription::from_value(layer, conf)?)))
        .collect()
}

/// The header metadata `_quantization_metadata` for these layers, as ComfyUI's quantization
/// guide (`QUANTIZATION.md`) defines it and Comfy-Org's releases carry it:
/// `{"format_version": "1.0", "layers": {layer: description, …}}`, in `json.dumps` spacing.
pub fn quantization_metadata(layers: &[(String, QuantDescription)]) -> String {
    let mut by_layer = Map::new();
    for (layer, description) in layers {
        by_layer.insert(layer.clone(), description.to_value());
    }
    let mut root = Map::new();
    root.insert("format_version".into(), Value::String("1.0".into()));
    root.insert("layers".into(), Value::Object(by_layer));
    python_json(&Value::Object(root))
}

/// `json.dumps(value)` with Python's defaults: `", "` and `": "` separators, non-ASCII and
/// control characters escaped as `\uXXXX`.
fn python_json(value: &Value) -> String {
    let mut out = String::new();
    write_json(value, &mut out);
    out
}

fn write_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            out.push('{');
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(k, out);
                out.push_str(": ");
                write_json(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_json(v, out);
            }
            out.push(']');
        }
        Value::String(s) => write_string(s, out),
        other => out.push_str(&other.to_string()),
    }
}

/// `s` as a JSON string the way Python's `json.dumps` writes it by default (`ensure_ascii`:
/// everything outside space…tilde escaped, lowercase hex, surrogate pairs beyond the BMP).
pub(crate) fn write_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// The legacy model-level marker `<denoiser prefix>scaled_fp8` (ComfyUI
/// `comfy/model_detection.py`): an empty tensor whose dtype names the fp8 type of the scaled
/// layers (F32 meaning e4m3fn), with two elements when input scaling is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ScaledFp8Marker {
    /// The fp8 type the marker names.
    pub fp8: Fp8,
    /// Whether ComfyUI multiplies in fp8 with `scale_input` (one-element-less marker); `false`
    /// for the two-element marker, which ComfyUI reads as `full_precision_matrix_mult`.
    pub input_scaling: bool,
}

impl ScaledFp8Marker {
    /// Reads a marker tensor's dtype and shape.
    ///
    /// # Errors
    /// [`Error::Quantized`] (naming `key`) when the dtype names no fp8 type.
    pub fn parse(key: &str, dtype: Dtype, shape: &[usize]) -> Result<Self> {
        let fp8 = match dtype {
            Dtype::F32 | Dtype::F8_E4M3 => Fp8::E4M3,
            Dtype::F8_E5M2 => Fp8::E5M2,
            other => {
                return Err(quant_error(
                    key,
                    format!(
                        "the scaled_fp8 marker is {other}; ComfyUI reads its dtype as the fp8 \
                         type of the scaled layers (F8_E4M3, F8_E5M2, or F32 for e4m3fn)"
                    ),
                ))
            }
        };
        Ok(ScaledFp8Marker {
            fp8,
            input_scaling: shape.iter().product::<usize>() != 2,
        })
    }

    /// The marker's dtype and shape as ComfyUI writes it (`torch.tensor([], dtype=fp8)`, or two
    /// elements when input scaling is off); its bytes are zeros.
    pub fn tensor(self) -> (Dtype, Vec<usize>) {
        (
            self.fp8.dtype(),
            vec![if self.input_scaling { 0 } else { 2 }],
        )
    }

    /// The comfy_quant description ComfyUI's `convert_old_quants` gives each scaled layer, except
    /// that the format is that of the codes (`fp8`): ComfyUI writes `float8_e4m3fn` whatever
    /// the marker says and then converts e5m2 codes to e4m3fn by value.
    pub fn description(self, fp8: Fp8) -> QuantDescription {
        QuantDescription {
            format: Format::Float8(fp8),
            full_precision_matrix_mult: !self.input_scaling,
        }
    }
}
