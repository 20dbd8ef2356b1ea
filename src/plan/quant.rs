//! Planning quantized tensors: a layout entry whose tensor is (or becomes) quantized turns into
//! the members of its layer under the output's key names.
//!
//! - **Kept** (`--dtype keep`, nothing changes it): every member copied byte for byte.
//! - **Encoded**: a tensor the save quantizes (`--quantize`), a quantized tensor turned into
//!   another format, or a merged tensor whose base is quantized, written back in its format
//!   (requantized with its scales, or fresh ones): codes and scales are reserved here and
//!   encoded when written ([`QuantTarget`]).
//!
//! Legacy scaled-fp8 layers keep their layout, with the marker `<prefix>scaled_fp8` where the
//! output key's prefix is, as long as every layer can place it and no `comfy_quant` layer is
//! written beside them; otherwise they are written as ComfyUI's `convert_old_quants` reads them
//! (`weight_scale`, `input_scale` unless 1.0, a `float8` description). Layers with descriptions
//! are also listed in the header metadata `_quantization_metadata`.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::target::QuantTarget;
use super::{runs, HostBytes, Pending, PieceSource, PlanOptions};
use crate::error::{Error, Result};
use crate::layout::{Entry, Source};
use crate::model::dtype::{Dtype, TargetDtype};
use crate::model::{ComponentKind, Components, InputTensor, QuantTensor};
use crate::quant::{
    quantization_metadata, Format, Fp8, QuantDescription, QuantLayout, Requantize, Role,
    ScaledFp8Marker, Scales,
};

/// The metadata key ComfyUI reads layer descriptions from.
pub(crate) const METADATA_KEY: &str = "_quantization_metadata";

/// The metadata key of this tool's record of the logical shapes of padded block-format layers
/// (`{layer: [rows, columns]}`), which a file alone cannot tell; ComfyUI takes them from its
/// model and ignores the entry.
pub(crate) const SHAPES_KEY: &str = "checkpoint_save.quantized_shapes";

/// One planned tensor before its place in the file is known.
pub(super) struct Planned {
    pub key: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub sources: Vec<Pending>,
}

/// A member of a layer being planned: its name relative to the layer and its planned tensor.
struct Member {
    name: String,
    planned: Planned,
}

/// A legacy scaled-fp8 layer, written once it is known whether its marker can be placed.
struct LegacyLayer {
    /// The output layer name (codes key without `.weight`).
    layer: String,
    marker: ScaledFp8Marker,
    /// The marker's key, when the output key keeps the input's key after the marker's prefix.
    marker_key: Option<String>,
    fp8: Fp8,
    /// The activation scale, for ComfyUI's rule that an `input_scale` of 1.0 is dropped.
    input_scale: Option<f32>,
    members: Vec<Member>,
}

/// What the plan of quantized tensors collects (see the [module docs](self)).
pub(super) struct Collector<'a> {
    opts: &'a PlanOptions,
    legacy: Vec<LegacyLayer>,
    described: Vec<(String, QuantDescription)>,
    targets: Vec<Arc<QuantTarget>>,
    /// Padded layers' logical shapes, by output layer.
    shapes: BTreeMap<String, Vec<usize>>,
}

/// What [`Collector::finish`] returns: the planned members, the encoded targets and the header
/// metadata.
pub(super) type Finished = (
    Vec<Planned>,
    Vec<Arc<QuantTarget>>,
    BTreeMap<String, String>,
);

/// How one layout entry is written.
enum Form {
    /// The plain path: bytes or values in the component's dtype.
    Plain,
    /// A quantized input's members, byte for byte.
    Keep(Arc<QuantTensor>),
    /// Encoded when written (boxed: far larger than the other forms).
    Encode(Box<Encode>),
}

/// An encoded output: layout, source, scales and what it carries over.
struct Encode {
    layout: QuantLayout,
    source: InputTensor,
    given: Option<Scales>,
    input_scale: Option<f32>,
    /// Whether a `comfy_quant` tensor is written (a fresh layer, or a base that had one).
    describe: bool,
    /// The legacy marker of a legacy output and the key it is relative to.
    legacy: Option<(ScaledFp8Marker, String)>,
}

impl<'a> Collector<'a> {
    pub(super) fn new(opts: &'a PlanOptions) -> Self {
        Collector {
            opts,
            legacy: Vec::new(),
            described: Vec::new(),
            targets: Vec::new(),
            shapes: BTreeMap::new(),
        }
    }

    /// The planned tensors of `entry` when it is written quantized, `None` for the plain path.
    ///
    /// # Errors
    /// [`Error::Quantized`] for a layer that cannot be written as asked; planning errors.
    pub(super) fn plan(
        &mut self,
        entry: &Entry,
        components: &Components,
    ) -> Result<Option<Vec<Planned>>> {
        let Source::Copy { component, key } = &entry.source else {
            return Ok(None);
        };
        let Some(t) = components.tensor(*component, key) else {
            return Ok(None);
        };
        let Some(layer) = entry.key.strip_suffix(".weight") else {
            // An include pattern naming it asks for the impossible: said, not skipped.
            if let Some(q) = &self.opts.quantize {
                q.selects(self.opts.arch, *component, key, &t.info())?;
            }
            return Ok(None);
        };
        let out = match self.form(*component, key, t)? {
            Form::Plain => return Ok(None),
            Form::Keep(q) => self.keep(layer, &entry.key, &q)?,
            Form::Encode(e) => self.encode(layer, &entry.key, *e)?,
        };
        Ok(Some(out))
    }

    /// How component `kind`'s tensor `key` is written.
    fn form(&self, kind: ComponentKind, key: &str, t: &InputTensor) -> Result<Form> {
        let info = t.info();
        let selected = match &self.opts.quantize {
            Some(q) if q.selects(self.opts.arch, kind, key, &info)? => Some(q.format),
            _ => None,
        };
        let keep = self.opts.dtypes.get(kind) == TargetDtype::Keep;
        let fresh = |format: Format| -> Result<Form> {
            Ok(Form::Encode(Box::new(Encode {
                layout: QuantLayout::new(
                    key.strip_suffix(".weight").unwrap_or(key),
                    format,
                    &info.shape,
                )?,
                source: t.clone(),
                given: None,
                input_scale: None,
                describe: true,
                legacy: (format == Format::ScaledFp8(Fp8::E4M3)
                    || format == Format::ScaledFp8(Fp8::E5M2))
                .then(|| {
                    let fp8 = match format {
                        Format::ScaledFp8(f) => f,
                        _ => Fp8::E4M3,
                    };
                    (
                        ScaledFp8Marker {
                            fp8,
                            input_scaling: true,
                        },
                        key.to_string(),
                    )
                }),
            })))
        };
        if let Some(Format::ScaledFp8(_)) = selected {
            if kind != ComponentKind::Model {
                return Err(Error::Quantized {
                    layer: key.to_string(),
                    reason: "the legacy scaled-fp8 layout is written for the denoiser only (its \
                             marker is the model's); quantize text encoders with fp8 \
                             (comfy_quant) instead"
                        .into(),
                });
            }
        }
        match t {
            InputTensor::Quantized(q) => match selected {
                Some(f) if f == q.format() => Ok(Form::Keep(Arc::clone(q))),
                Some(f) => fresh(f),
                None if keep && in_safetensors(q.format()) => Ok(Form::Keep(Arc::clone(q))),
                None => Ok(Form::Plain),
            },
            InputTensor::Merged(m) if info.quant.is_some() => {
                let Some(q) = m.quantized_base() else {
                    return Ok(Form::Plain);
                };
                if selected.is_none() && !in_safetensors(q.format()) {
                    return Ok(Form::Plain);
                }
                match selected {
                    Some(f) if f != q.format() => fresh(f),
                    None if !keep => Ok(Form::Plain),
                    _ => requantize(q, m.requantize(), t, &info.shape)
                        .map(|e| Form::Encode(Box::new(e))),
                }
            }
            _ => match selected {
                Some(f) => fresh(f),
                None => Ok(Form::Plain),
            },
        }
    }

    /// A quantized input's members under the output layer's names.
    fn keep(&mut self, layer: &str, key: &str, q: &Arc<QuantTensor>) -> Result<Vec<Planned>> {
        if q.layout().is_padded() {
            self.shapes
                .insert(layer.to_string(), q.layout().shape().to_vec());
        }
        let mut members = Vec::new();
        let block_scales = q.member_of(Role::BlockScales);
        for (name, t) in q.members() {
            let info = t.info();
            let sources = match block_scales {
                // Checked on the way: a negative or NaN block scale is a damaged file.
                Some(b) if std::ptr::eq(b, t) => {
                    let bytes = t.byte_len() as usize;
                    let source = PieceSource::BlockScales {
                        tensor: Arc::clone(q),
                        offset: 0,
                    };
                    vec![(source, info.dtype, bytes)]
                }
                _ => runs(key, t)?,
            };
            members.push(Member {
                name: name.clone(),
                planned: Planned {
                    key: format!("{layer}.{name}"),
                    dtype: info.dtype,
                    shape: info.shape,
                    sources,
                },
            });
        }
        if let Some(l) = q.legacy() {
            let fp8 = match q.format() {
                Format::ScaledFp8(f) => f,
                _ => l.marker.fp8,
            };
            self.legacy.push(LegacyLayer {
                layer: layer.to_string(),
                marker: l.marker,
                marker_key: marker_key(key, &l.relative),
                fp8,
                input_scale: q.scales().input_scale(),
                members,
            });
            return Ok(Vec::new());
        }
        if let Some(d) = q.layout().description() {
            self.described.push((layer.to_string(), d));
        }
        Ok(members.into_iter().map(|m| m.planned).collect())
    }

    /// The members of an encoded output, reserved now and encoded when written.
    fn encode(&mut self, layer: &str, key: &str, e: Encode) -> Result<Vec<Planned>> {
        if e.layout.is_padded() {
            self.shapes
                .insert(layer.to_string(), e.layout.shape().to_vec());
        }
        let given = e.given.clone();
        let target = Arc::new(QuantTarget::new(
            key,
            e.layout.clone(),
            e.source,
            e.given,
            e.input_scale,
        )?);
        self.targets.push(Arc::clone(&target));
        let host = |bytes: Vec<u8>, dtype: Dtype, units: usize| -> Vec<Pending> {
            let bytes: HostBytes = Arc::new(bytes);
            vec![(PieceSource::Host { bytes, offset: 0 }, dtype, units)]
        };
        let f32s = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let mut members = Vec::new();
        for m in e.layout.members() {
            let units: usize = m.shape.iter().product();
            let encoded = |role: Role| {
                let source = PieceSource::Encoded {
                    target: Arc::clone(&target),
                    role,
                    offset: 0,
                };
                vec![(source, m.dtype, units)]
            };
            let sources = match m.role {
                Role::Codes | Role::BlockScales => encoded(m.role),
                Role::TensorScale => match given.as_ref().and_then(Scales::tensor_scale) {
                    Some(s) => host(f32s(&[s]), Dtype::F32, 1),
                    None => encoded(Role::TensorScale),
                },
                Role::RowScales => match given.as_ref().and_then(Scales::row_scales) {
                    Some(r) => host(f32s(r), Dtype::F32, units),
                    None => encoded(Role::RowScales),
                },
                Role::InputScale => match e.input_scale {
                    Some(s) => host(f32s(&[s]), Dtype::F32, 1),
                    None => continue,
                },
                Role::Description if e.describe => {
                    let d = e
                        .layout
                        .description()
                        .map(|d| d.to_json())
                        .unwrap_or_default();
                    host(d.into_bytes(), Dtype::U8, units)
                }
                Role::Description | Role::PreQuantScale => continue,
            };
            members.push(Member {
                name: m.name.to_string(),
                planned: Planned {
                    key: if m.role == Role::Codes {
                        key.to_string()
                    } else {
                        format!("{layer}.{}", m.name)
                    },
                    dtype: m.dtype,
                    shape: m.shape,
                    sources,
                },
            });
        }
        if let Some((marker, relative)) = e.legacy {
            let fp8 = match e.layout.format() {
                Format::ScaledFp8(f) => f,
                _ => marker.fp8,
            };
            self.legacy.push(LegacyLayer {
                layer: layer.to_string(),
                marker,
                marker_key: marker_key(key, &relative),
                fp8,
                input_scale: target.input_scale(),
                members,
            });
            return Ok(Vec::new());
        }
        if let Some(d) = e.layout.description() {
            self.described.push((layer.to_string(), d));
        }
        Ok(members.into_iter().map(|m| m.planned).collect())
    }

    /// The legacy layers and their markers (or their comfy_quant form), the targets, and the
    /// header metadata with `_quantization_metadata` when a layer is described.
    pub(super) fn finish(mut self, metadata: &BTreeMap<String, String>) -> Result<Finished> {
        let mut out = Vec::new();
        let mut markers: BTreeMap<String, ScaledFp8Marker> = BTreeMap::new();
        let mut placeable = self.described.is_empty();
        for l in &self.legacy {
            match &l.marker_key {
                Some(k) if markers.get(k).is_none_or(|m| *m == l.marker) => {
                    markers.insert(k.clone(), l.marker);
                }
                _ => placeable = false,
            }
        }
        for l in std::mem::take(&mut self.legacy) {
            if placeable {
                out.extend(l.members.into_iter().map(|m| m.planned));
                continue;
            }
            // ComfyUI's `convert_old_quants`: the same bytes under the comfy_quant names.
            let description = l.marker.description(l.fp8);
            for mut m in l.members {
                let name = match m.name.as_str() {
                    "scale_weight" => "weight_scale",
                    "scale_input" if l.input_scale == Some(1.0) => continue,
                    "scale_input" => "input_scale",
                    other => other,
                };
                m.planned.key = format!("{}.{name}", l.layer);
                out.push(m.planned);
            }
            let json = description.to_json().into_bytes();
            let len = json.len();
            let bytes: HostBytes = Arc::new(json);
            out.push(Planned {
                key: format!("{}.comfy_quant", l.layer),
                dtype: Dtype::U8,
                shape: vec![len],
                sources: vec![(PieceSource::Host { bytes, offset: 0 }, Dtype::U8, len)],
            });
            self.described.push((l.layer, description));
        }
        if placeable {
            for (key, marker) in markers {
                let (dtype, shape) = marker.tensor();
                let len: usize = shape.iter().product();
                let bytes: HostBytes = Arc::new(vec![0u8; len]);
                out.push(Planned {
                    key,
                    dtype,
                    shape,
                    sources: vec![(PieceSource::Host { bytes, offset: 0 }, dtype, len)],
                });
            }
        }
        let mut metadata = metadata.clone();
        if !self.described.is_empty() {
            self.described.sort_by(|a, b| a.0.cmp(&b.0));
            metadata.insert(
                METADATA_KEY.to_string(),
                quantization_metadata(&self.described),
            );
        } else if metadata.contains_key(METADATA_KEY) {
            // A stale description (from metadata the caller passed) would mislead ComfyUI.
            metadata.remove(METADATA_KEY);
        }
        metadata.remove(SHAPES_KEY);
        if !self.shapes.is_empty() {
            let shapes = serde_json::to_string(&self.shapes)
                .map_err(|e| Error::InvalidInput(format!("cannot record the shapes: {e}")))?;
            metadata.insert(SHAPES_KEY.to_string(), shapes);
        }
        Ok((out, self.targets, metadata))
    }
}

/// A merged tensor whose base `q` is quantized, written back in its format: the base's layout
/// (members, flags), its scales or fresh ones, its input scale and legacy marker.
/// Whether ComfyUI reads `format` from a safetensors file. ggml's block types it reads only
/// from GGUF files (ComfyUI-GGUF), so a safetensors target writes their values: in f32 under
/// `--dtype keep` (exactly the values), in the dtype asked otherwise.
fn in_safetensors(format: Format) -> bool {
    !matches!(format, Format::Ggml(_))
}

fn requantize(
    q: &QuantTensor,
    how: Requantize,
    merged: &InputTensor,
    shape: &[usize],
) -> Result<Encode> {
    let base = q.layout();
    let layout = if base.shape() == shape {
        base.requantized()?
    } else {
        QuantLayout::new(base.layer(), base.format(), shape)?
    };
    let layer = base.layer();
    let given = match how {
        Requantize::Fresh => None,
        Requantize::Existing => Some(match (layout.format(), q.scales()) {
            (Format::Mxfp8, _) => Scales::none(),
            (_, s) if layout.has_row_scales() => {
                Scales::rows(layer, s.row_scales().unwrap_or_default().to_vec())?
            }
            (_, s) => Scales::tensor(layer, s.tensor_scale().unwrap_or(f32::NAN))?,
        }),
    };
    Ok(Encode {
        source: merged.clone(),
        given,
        input_scale: q.scales().input_scale(),
        describe: q.member("comfy_quant").is_some(),
        legacy: q.legacy().map(|l| (l.marker, l.relative.clone())),
        layout,
    })
}

/// Where a legacy layer's marker goes for output key `key`: the key's prefix before the part it
/// shares with the input (`relative`), then `scaled_fp8`; `None` when the key changed more
/// than its prefix.
fn marker_key(key: &str, relative: &str) -> Option<String> {
    key.strip_suffix(relative)
        .map(|prefix| format!("{prefix}scaled_fp8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_follow_the_prefix_of_the_output_key() {
        let rel = "input_blocks.1.1.proj_in.weight";
        assert_eq!(
            marker_key("model.diffusion_model.input_blocks.1.1.proj_in.weight", rel).as_deref(),
            Some("model.diffusion_model.scaled_fp8")
        );
        assert_eq!(marker_key(rel, rel).as_deref(), Some("scaled_fp8"));
        assert_eq!(marker_key("down_blocks.0.proj_in.weight", rel), None);
    }
}
