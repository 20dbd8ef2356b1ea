//! The small scales of a quantized tensor (per tensor, per row, per column), how they are read
//! from and written to their members, the whole-tensor reductions an encoder needs, and the
//! fresh-scale rules that turn those reductions into scales.

use std::ops::Range;

use crate::error::Result;
use crate::model::dtype::Dtype;

use super::format::{Format, Precision, Reduction};
use super::layout::{quant_error, Member, QuantLayout, Role};
use super::numeric::abs_max;

/// A quantized tensor's scales other than its block scales (which are streamed with the codes):
/// the tensor scale (`weight_scale`, `scale_weight`, nvfp4's `weight_scale_2`), int8 row scales,
/// nvfp4's per-column `pre_quant_scale`, and the activation scale the layer carries.
///
/// Every scale held is finite and positive: the constructors and readers refuse the others.
#[derive(Debug, Clone, PartialEq)]
pub struct Scales {
    pub(crate) tensor: Option<f32>,
    pub(crate) rows: Option<Vec<f32>>,
    pub(crate) pre_quant: Option<Vec<f32>>,
    pub(crate) input: Option<f32>,
}

fn check_scale(layer: &str, what: &str, value: f32) -> Result<f32> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(quant_error(
            layer,
            format!(
                "{what} is {value:e}: a scale must be finite and positive (a zero, negative, NaN \
                 or infinite scale means a damaged file or a tensor that cannot be quantized)"
            ),
        ))
    }
}

impl Scales {
    /// No scales besides block scales (mxfp8).
    pub fn none() -> Self {
        Scales {
            tensor: None,
            rows: None,
            pre_quant: None,
            input: None,
        }
    }

    /// One scale for the whole tensor (fp8, int8, nvfp4's `weight_scale_2`), as when requantizing
    /// with an existing scale.
    ///
    /// # Errors
    /// [`crate::Error::Quantized`] when the scale is zero, negative or not finite.
    pub fn tensor(layer: &str, scale: f32) -> Result<Self> {
        Ok(Scales {
            tensor: Some(check_scale(layer, "the tensor scale", scale)?),
            ..Scales::none()
        })
    }

    /// One int8 scale per row.
    ///
    /// # Errors
    /// [`crate::Error::Quantized`] when a scale is zero, negative or not finite.
    pub fn rows(layer: &str, scales: Vec<f32>) -> Result<Self> {
        for (row, &s) in scales.iter().enumerate() {
            check_scale(layer, &format!("the scale of row {row}"), s)?;
        }
        Ok(Scales {
            rows: Some(scales),
            ..Scales::none()
        })
    }

    /// The same scales carrying an activation scale (`input_scale`, legacy `scale_input`).
    ///
    /// # Errors
    /// [`crate::Error::Quantized`] when the scale is zero, negative or not finite.
    pub fn with_input_scale(mut self, layer: &str, scale: f32) -> Result<Self> {
        self.input = Some(check_scale(layer, "the input scale", scale)?);
        Ok(self)
    }

    /// The tensor scale, if the format has one.
    pub fn tensor_scale(&self) -> Option<f32> {
        self.tensor
    }

    /// The row scales, if the tensor has them.
    pub fn row_scales(&self) -> Option<&[f32]> {
        self.rows.as_deref()
    }

    /// The activation scale the layer carries, if any.
    pub fn input_scale(&self) -> Option<f32> {
        self.input
    }
}

/// Whole-tensor facts computed before a tensor is encoded (see [`QuantLayout::reductions`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// `max(|x|)` over the tensor, NaN if it holds a NaN ([`Reduction::AbsMax`]).
    pub abs_max: Option<f32>,
    /// `max(|x|)` of each row ([`Reduction::RowAbsMax`]).
    pub row_abs_max: Option<Vec<f32>>,
}

/// Computes a tensor's [`Facts`] range by range, in any order, from its values as f32.
#[derive(Debug, Clone)]
pub struct Reducer {
    cols: u64,
    abs_max: Option<f32>,
    rows: Option<Vec<f32>>,
}

impl Reducer {
    /// Folds in the values of logical elements `elements` (`values.len()` of them).
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] when `values` does not hold as many values as `elements`
    /// names, or the range is outside the tensor.
    pub fn update(&mut self, elements: Range<u64>, values: &[f32]) -> Result<()> {
        let len = elements.end.checked_sub(elements.start);
        let rows_len = self
            .rows
            .as_ref()
            .map_or(u64::MAX, |r| r.len() as u64 * self.cols);
        if len != Some(values.len() as u64) || (self.rows.is_some() && elements.end > rows_len) {
            return Err(crate::Error::InvalidInput(format!(
                "reduction over elements {elements:?} got {} values",
                values.len()
            )));
        }
        if let Some(max) = &mut self.abs_max {
            *max = nan_max(*max, abs_max(values));
        }
        if let Some(rows) = &mut self.rows {
            let mut e = elements.start;
            let mut rest = values;
            while !rest.is_empty() {
                let row = (e / self.cols) as usize;
                let n = ((row as u64 + 1) * self.cols - e).min(rest.len() as u64) as usize;
                rows[row] = nan_max(rows[row], abs_max(&rest[..n]));
                rest = &rest[n..];
                e += n as u64;
            }
        }
        Ok(())
    }

    /// The facts, once every element was folded in.
    pub fn finish(self) -> Facts {
        Facts {
            abs_max: self.abs_max,
            row_abs_max: self.rows,
        }
    }
}

fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// A stored member's value bytes, for [`QuantLayout::read_scales`].
#[derive(Debug, Clone, Copy)]
pub struct MemberData<'a> {
    /// The name relative to the layer.
    pub name: &'a str,
    /// Its dtype.
    pub dtype: Dtype,
    /// Its little-endian bytes.
    pub bytes: &'a [u8],
}

/// Little-endian floats of a scale dtype, as f32 (ComfyUI's `.to(float32)`).
fn floats(dtype: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    Some(match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        _ => return None,
    })
}

impl QuantLayout {
    /// The reductions an encoder needs before its first block: the absolute maximum for a fresh
    /// tensor scale (fp8, int8, nvfp4), the maximum of each row for int8 row scales, none for
    /// mxfp8 (each block carries its own scale).
    pub fn reductions(&self) -> &'static [Reduction] {
        match self.format {
            Format::Mxfp8 | Format::Ggml(_) => &[],
            Format::Int8Tensorwise if self.row_scales => &[Reduction::RowAbsMax],
            _ => &[Reduction::AbsMax],
        }
    }

    /// A [`Reducer`] for this tensor's [`QuantLayout::reductions`].
    pub fn reducer(&self) -> Reducer {
        let wants = |r| self.reductions().contains(&r);
        Reducer {
            cols: self.cols as u64,
            abs_max: wants(Reduction::AbsMax).then_some(0.0),
            rows: wants(Reduction::RowAbsMax).then(|| vec![0.0; self.rows]),
        }
    }

    /// Fresh scales from a tensor's facts, as ComfyUI's layouts compute them with
    /// `scale="recalculate"` for a tensor quantized in `precision`:
    /// - fp8 (comfy_quant and legacy): `amax / fp8_max` in f32; for f16 tensors
    ///   `1 / clamp(1 / scale, -65504, 65504)`, so that the f16 reciprocal stays finite;
    /// - int8: `max(amax / 127, 1e-30)` in f32, per tensor or per row;
    /// - nvfp4: `amax / (448 · 6)` computed in `precision` (torch divides the tensor's own dtype),
    ///   then widened to f32;
    /// - mxfp8: no tensor scale.
    ///
    /// For fp8 this is ComfyUI's own layout (`comfy/quant_ops.py`), which ComfyUI registers in
    /// place of comfy-kitchen's: kitchen's `TensorCoreFP8Layout.quantize` divides `amax / max`
    /// in the tensor's dtype, so for a bf16 tensor its scale is rounded to bf16. Any scale can be
    /// given instead ([`Scales::tensor`]); the codes then follow kitchen's quantizer exactly.
    ///
    /// # Errors
    /// [`crate::Error::Quantized`] when a needed fact is missing, or the scale comes out zero
    /// (an all-zero tensor: keep it unquantized), negative or not finite (NaN or Inf values).
    pub fn fresh_scales(&self, facts: &Facts, precision: Precision) -> Result<Scales> {
        let layer = &self.layer;
        let need = |reduction: Reduction| {
            quant_error(
                layer,
                format!("the {reduction:?} of the tensor is needed to compute its scale"),
            )
        };
        if matches!(self.format, Format::Mxfp8 | Format::Ggml(_)) {
            return Ok(Scales::none());
        }
        if self.row_scales {
            let rows = facts
                .row_abs_max
                .as_ref()
                .filter(|r| r.len() == self.rows)
                .ok_or_else(|| need(Reduction::RowAbsMax))?;
            return Scales::rows(layer, rows.iter().map(|&a| int8_scale(a)).collect());
        }
        let amax = facts.abs_max.ok_or_else(|| need(Reduction::AbsMax))?;
        let scale = match self.format {
            Format::ScaledFp8(fp8) | Format::Float8(fp8) => {
                let scale = amax / fp8.max();
                if precision == Precision::F16 {
                    1.0 / (1.0 / scale).clamp(-65504.0, 65504.0)
                } else {
                    scale
                }
            }
            Format::Int8Tensorwise => int8_scale(amax),
            _ => precision.round(amax / 2688.0),
        };
        Scales::tensor(layer, scale).map_err(|_| {
            quant_error(
                layer,
                format!(
                    "the tensor's absolute maximum is {amax:e}, which gives the {} scale \
                     {scale:e}; a tensor that is all zeros or holds NaN/Inf cannot be quantized: \
                     keep this layer unquantized",
                    self.format
                ),
            )
        })
    }

    /// Reads the scales of a stored layer from its small members (everything but the codes and
    /// block scales), which [`QuantLayout::from_stored`] has checked for dtype and shape.
    ///
    /// # Errors
    /// [`crate::Error::Quantized`] when a member the layout has is missing from `members`, holds
    /// the wrong number of bytes, or holds a zero, negative or non-finite scale.
    pub fn read_scales(&self, members: &[MemberData<'_>]) -> Result<Scales> {
        let layer = &self.layer;
        let mut scales = Scales::none();
        for member in self.members() {
            let role = member.role;
            if !matches!(
                role,
                Role::TensorScale | Role::RowScales | Role::InputScale | Role::PreQuantScale
            ) {
                continue;
            }
            let key = format!("{layer}.{}", member.name);
            let data = members
                .iter()
                .find(|m| m.name == member.name)
                .ok_or_else(|| quant_error(layer, format!("the bytes of `{key}` are missing")))?;
            let numel: usize = member.shape.iter().product();
            let values = floats(data.dtype, data.bytes)
                .filter(|v| {
                    v.len() == numel && data.bytes.len() * 8 == numel * data.dtype.bitsize()
                })
                .ok_or_else(|| {
                    quant_error(
                        layer,
                        format!(
                            "`{key}` ({} bytes of {}) does not hold {numel} float value(s)",
                            data.bytes.len(),
                            data.dtype
                        ),
                    )
                })?;
            match role {
                Role::TensorScale => {
                    scales.tensor = Some(check_scale(layer, &format!("`{key}`"), values[0])?)
                }
                Role::InputScale => {
                    scales.input = Some(check_scale(layer, &format!("`{key}`"), values[0])?)
                }
                _ => {
                    for (i, &v) in values.iter().enumerate() {
                        check_scale(layer, &format!("`{key}`[{i}]"), v)?;
                    }
                    if role == Role::RowScales {
                        scales.rows = Some(values);
                    } else {
                        scales.pre_quant = Some(values);
                    }
                }
            }
        }
        Ok(scales)
    }

    /// The bytes of every member except the codes and block scales, for writing: scales as f32
    /// little-endian, and the `comfy_quant` description as ComfyUI writes it.
    ///
    /// # Errors
    /// [`crate::Error::Quantized`] when `scales` lacks a scale the layout stores.
    pub fn small_members(&self, scales: &Scales) -> Result<Vec<(Member, Vec<u8>)>> {
        let layer = &self.layer;
        let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let missing = |name: &str| quant_error(layer, format!("no value for `{layer}.{name}`"));
        let mut out = Vec::new();
        for member in self.members() {
            let bytes = match member.role {
                Role::Codes | Role::BlockScales => continue,
                Role::TensorScale => {
                    f32_bytes(&[scales.tensor.ok_or_else(|| missing(member.name))?])
                }
                Role::InputScale => {
                    f32_bytes(&[scales.input.ok_or_else(|| missing(member.name))?])
                }
                Role::RowScales => {
                    f32_bytes(scales.rows.as_deref().ok_or_else(|| missing(member.name))?)
                }
                Role::PreQuantScale => f32_bytes(
                    scales
                        .pre_quant
                        .as_deref()
                        .ok_or_else(|| missing(member.name))?,
                ),
                Role::Description => match self.description() {
                    Some(d) => d.to_json().into_bytes(),
                    None => continue,
                },
            };
            out.push((member, bytes));
        }
        Ok(out)
    }
}

/// kitchen's int8 scale: `(amax.float() / 127).clamp(min=1e-30)`; NaN stays NaN.
fn int8_scale(amax: f32) -> f32 {
    let s = amax / 127.0;
    if s < 1e-30 {
        1e-30
    } else {
        s
    }
}
