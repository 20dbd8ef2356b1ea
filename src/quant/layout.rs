//! A quantized tensor's layout: its format and logical shape, and from them the stored members
//! and the byte ranges that hold any range of its values.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::model::dtype::Dtype;

use super::describe::QuantDescription;
use super::format::Format;
use super::ggml::shapes as ggml_shapes;
use super::numeric::swizzled;

/// Rows that share one contiguous run of block scales in the swizzled layout.
pub const BAND_ROWS: usize = 128;

/// What a stored member of a quantized layer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Role {
    /// The codes (`weight`), streamed range by range.
    Codes,
    /// One f32 scale for the whole tensor (`weight_scale`, `scale_weight`, nvfp4's
    /// `weight_scale_2`).
    TensorScale,
    /// One f32 scale per row (int8 with row scales: `weight_scale` of shape `[rows, 1]`).
    RowScales,
    /// Per-block scales in the swizzled layout (`weight_scale` of mxfp8 and nvfp4), streamed.
    BlockScales,
    /// The activation scale (`input_scale`, legacy `scale_input`): carried, not used by values.
    InputScale,
    /// nvfp4's per-column smoothing factors (`pre_quant_scale`), multiplied into the values.
    PreQuantScale,
    /// The `comfy_quant` description: UTF-8 JSON as a U8 tensor.
    Description,
}

/// One stored tensor of a quantized layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The name relative to the layer (`weight`, `weight_scale`, …): the key is `<layer>.<name>`.
    pub name: &'static str,
    /// What it holds.
    pub role: Role,
    /// Its dtype in the file.
    pub dtype: Dtype,
    /// Its shape in the file, padding included.
    pub shape: Vec<usize>,
}

/// A member as found in a file: its name relative to the layer, dtype and shape.
#[derive(Debug, Clone, Copy)]
pub struct StoredMember<'a> {
    /// The name relative to the layer (`weight`, `weight_scale`, `bias`, …).
    pub name: &'a str,
    /// Its dtype.
    pub dtype: Dtype,
    /// Its shape.
    pub shape: &'a [usize],
}

/// Every member name a quantized layer may have besides `weight`; a reader groups these with the
/// layer's codes (`bias` and other names are the layer's own tensors, not companions).
pub const COMPANIONS: [&str; 7] = [
    "weight_scale",
    "weight_scale_2",
    "input_scale",
    "pre_quant_scale",
    "scale_weight",
    "scale_input",
    "comfy_quant",
];

/// The bytes that hold a range of a tensor's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    /// The logical elements (row-major indices into the logical shape) the span decodes or
    /// encodes: the range asked for, rounded out to whole blocks.
    pub elements: Range<u64>,
    /// Byte range in the codes member (`weight`).
    pub codes: Range<u64>,
    /// Byte range in the block-scale member; empty for formats without block scales.
    pub block_scales: Range<u64>,
}

/// A quantized tensor's format and logical shape, with everything derived from them: the stored
/// members, padding, and which bytes hold which values.
///
/// Build one with [`QuantLayout::new`] to write a tensor, or [`QuantLayout::from_stored`] to read
/// one from the members found in a file (which validates them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuantLayout {
    pub(crate) layer: String,
    pub(crate) format: Format,
    shape: Vec<usize>,
    /// The logical shape seen as rows × columns (a per-tensor format's rows matter only for row
    /// scales; its codes are the flat elements).
    pub(crate) rows: usize,
    pub(crate) cols: usize,
    /// The stored codes as rows × columns of values (padded for block formats).
    pub(crate) stored_rows: usize,
    pub(crate) stored_cols: usize,
    pub(crate) row_scales: bool,
    pub(crate) input_scale: bool,
    pub(crate) pre_quant_scale: bool,
    full_precision_mm: bool,
}

pub(crate) fn quant_error(layer: &str, reason: impl Into<String>) -> Error {
    Error::Quantized {
        layer: layer.to_string(),
        reason: reason.into(),
    }
}

/// `x` rounded up to a multiple; for sizes already bounded by a checked product.
fn round_up(x: usize, multiple: usize) -> usize {
    x.div_ceil(multiple) * multiple
}

impl QuantLayout {
    /// The layout ComfyUI writes for a tensor of `shape` in `format`: block formats padded to
    /// whole blocks in both dimensions, a per-tensor scale (int8: see
    /// [`QuantLayout::with_row_scales`]), no input scale, no pre-quant scale.
    ///
    /// A ggml format takes the shape its blocks run along: rows of the last dimension, which
    /// must be a whole number of blocks (GGUF's first dimension; a tensor stored reshaped keeps
    /// its values in the same order, so its logical shape is a free view of this one).
    ///
    /// # Errors
    /// [`Error::Quantized`] when the tensor has no elements, when a block format (mxfp8, nvfp4)
    /// gets a tensor that is not 2-D, when a ggml format gets rows that are not whole blocks, or
    /// when the sizes overflow.
    pub fn new(layer: &str, format: Format, shape: &[usize]) -> Result<Self> {
        let numel = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| quant_error(layer, format!("shape {shape:?} overflows")))?;
        if numel == 0 {
            return Err(quant_error(
                layer,
                format!("shape {shape:?} has no elements: there is nothing to quantize"),
            ));
        }
        if let Format::Ggml(t) = format {
            ggml_shapes::check_rows(layer, t, shape)?;
        }
        let (rows, cols, stored_rows, stored_cols) = match format.padding() {
            Some(pad) => {
                let [rows, cols] = shape else {
                    return Err(quant_error(
                        layer,
                        format!(
                            "{format} stores 2-D weights (rows × columns in blocks of {}); this \
                             tensor has shape {shape:?}: leave it out of the {format} layers",
                            format.block_len()
                        ),
                    ));
                };
                let overflow = || quant_error(layer, format!("shape {shape:?} overflows"));
                let stored_rows = rows.checked_next_multiple_of(pad).ok_or_else(overflow)?;
                let stored_cols = cols.checked_next_multiple_of(pad).ok_or_else(overflow)?;
                stored_rows
                    .checked_mul(stored_cols)
                    .and_then(|n| n.checked_next_multiple_of(BAND_ROWS * 4))
                    .ok_or_else(overflow)?;
                (*rows, *cols, stored_rows, stored_cols)
            }
            None => {
                let rows = shape.first().copied().unwrap_or(1);
                (rows, numel / rows, rows, numel / rows)
            }
        };
        Ok(QuantLayout {
            layer: layer.to_string(),
            format,
            shape: shape.to_vec(),
            rows,
            cols,
            stored_rows,
            stored_cols,
            row_scales: false,
            input_scale: false,
            pre_quant_scale: false,
            full_precision_mm: false,
        })
    }

    /// The same layout with one int8 scale per row (kitchen's `per_channel=True`, stored as
    /// `weight_scale` of shape `[rows, 1]`) instead of one per tensor.
    ///
    /// # Errors
    /// [`Error::Quantized`] unless the format is `int8_tensorwise` and the tensor 2-D.
    pub fn with_row_scales(mut self) -> Result<Self> {
        if self.format != Format::Int8Tensorwise || self.shape.len() != 2 {
            return Err(quant_error(
                &self.layer,
                format!(
                    "row scales exist for 2-D int8_tensorwise weights only, not {} of shape {:?}",
                    self.format, self.shape
                ),
            ));
        }
        self.row_scales = true;
        Ok(self)
    }

    /// The same layout with ComfyUI's `full_precision_matrix_mult` flag in its description (the
    /// legacy marker's two-element form), which only changes how ComfyUI multiplies.
    pub fn with_full_precision_matrix_mult(mut self, on: bool) -> Self {
        self.full_precision_mm = on;
        self
    }

    /// The layout a requantized copy of this tensor is written in: the same format, logical
    /// shape and members (row scales, input and pre-quant scales, the description's flag),
    /// padded as a fresh tensor of that shape is.
    ///
    /// # Errors
    /// As [`QuantLayout::new`].
    pub fn requantized(&self) -> Result<QuantLayout> {
        let mut l = QuantLayout::new(&self.layer, self.format, &self.shape)?;
        l.row_scales = self.row_scales;
        l.input_scale = self.input_scale;
        l.pre_quant_scale = self.pre_quant_scale;
        l.full_precision_mm = self.full_precision_mm;
        Ok(l)
    }

    /// Whether the stored codes hold padding (a block format whose shape is not a whole number
    /// of blocks): then a file alone cannot tell the logical shape.
    pub fn is_padded(&self) -> bool {
        self.format.has_block_scales()
            && (self.stored_rows, self.stored_cols) != (self.rows, self.cols)
    }

    /// The layer name (the codes' key without `.weight`).
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The logical shape: the tensor the codes stand for, without padding.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Logical elements.
    pub fn numel(&self) -> u64 {
        self.rows as u64 * self.cols as u64
    }

    /// Whether int8 scales are per row.
    pub fn has_row_scales(&self) -> bool {
        self.row_scales
    }

    /// Whether the layer has (or is to carry) an input scale.
    pub fn has_input_scale(&self) -> bool {
        self.input_scale
    }

    /// Whether the layer has an nvfp4 `pre_quant_scale`.
    pub fn has_pre_quant_scale(&self) -> bool {
        self.pre_quant_scale
    }

    /// The `comfy_quant` description of this layer (`None` for the legacy layout).
    pub fn description(&self) -> Option<QuantDescription> {
        self.format.comfy_name()?;
        Some(QuantDescription {
            format: self.format,
            full_precision_matrix_mult: self.full_precision_mm,
        })
    }

    /// Columns of block scales: blocks per stored row, padded to a multiple of 4.
    pub(crate) fn scale_cols(&self) -> usize {
        round_up(self.stored_cols / self.format.block_len(), 4)
    }

    /// Bytes of codes per stored row.
    pub(crate) fn row_bytes(&self) -> u64 {
        match self.format {
            Format::Nvfp4 => self.stored_cols as u64 / 2,
            Format::Ggml(t) => (self.stored_cols / t.block_len()) as u64 * t.block_bytes() as u64,
            _ => self.stored_cols as u64,
        }
    }

    /// Bytes of codes per block.
    pub(crate) fn block_bytes(&self) -> u64 {
        match self.format {
            Format::Nvfp4 => 8,
            Format::Ggml(t) => t.block_bytes() as u64,
            other => other.block_len() as u64,
        }
    }

    /// Bytes of block scales per band of [`BAND_ROWS`] rows.
    fn band_bytes(&self) -> u64 {
        (BAND_ROWS * self.scale_cols()) as u64
    }

    /// Offset of block scale `(row, block)` relative to a span's first band.
    pub(crate) fn scale_offset(&self, span: &Span, row: usize, block: usize) -> usize {
        swizzled(row, block, self.scale_cols()) - span.block_scales.start as usize
    }

    /// Every stored member, in the order ComfyUI's `state_dict` lists them: codes, scales, input
    /// and pre-quant scales when the layer has them, and the description.
    pub fn members(&self) -> Vec<Member> {
        let member = |name, role, dtype, shape: Vec<usize>| Member {
            name,
            role,
            dtype,
            shape,
        };
        let codes_shape = match self.format {
            Format::Nvfp4 => vec![self.stored_rows, self.stored_cols / 2],
            Format::Mxfp8 => vec![self.stored_rows, self.stored_cols],
            Format::Ggml(t) => ggml_shapes::codes_shape(t, &self.shape),
            _ => self.shape.clone(),
        };
        let mut out = vec![member(
            "weight",
            Role::Codes,
            self.format.code_dtype(),
            codes_shape,
        )];
        let block_scales = vec![round_up(self.stored_rows, BAND_ROWS), self.scale_cols()];
        match self.format {
            Format::ScaledFp8(_) => {
                out.push(member(
                    "scale_weight",
                    Role::TensorScale,
                    Dtype::F32,
                    vec![],
                ));
            }
            Format::Float8(_) => {
                out.push(member(
                    "weight_scale",
                    Role::TensorScale,
                    Dtype::F32,
                    vec![],
                ));
            }
            Format::Int8Tensorwise if self.row_scales => {
                let shape = vec![self.rows, 1];
                out.push(member("weight_scale", Role::RowScales, Dtype::F32, shape));
            }
            Format::Int8Tensorwise => {
                out.push(member(
                    "weight_scale",
                    Role::TensorScale,
                    Dtype::F32,
                    vec![],
                ));
            }
            Format::Mxfp8 => {
                let role = Role::BlockScales;
                out.push(member("weight_scale", role, Dtype::F8_E8M0, block_scales));
            }
            Format::Nvfp4 => {
                let role = Role::BlockScales;
                out.push(member("weight_scale", role, Dtype::F8_E4M3, block_scales));
                out.push(member(
                    "weight_scale_2",
                    Role::TensorScale,
                    Dtype::F32,
                    vec![],
                ));
            }
            Format::Ggml(_) => {}
        }
        if self.input_scale {
            let name = match self.format {
                Format::ScaledFp8(_) => "scale_input",
                _ => "input_scale",
            };
            out.push(member(name, Role::InputScale, Dtype::F32, vec![]));
        }
        if self.pre_quant_scale {
            let shape = vec![self.cols];
            out.push(member(
                "pre_quant_scale",
                Role::PreQuantScale,
                Dtype::F32,
                shape,
            ));
        }
        if let Some(description) = self.description() {
            let shape = vec![description.to_json().len()];
            out.push(member("comfy_quant", Role::Description, Dtype::U8, shape));
        }
        out
    }

    fn check_range(&self, elements: &Range<u64>) -> Result<()> {
        if elements.start > elements.end || elements.end > self.numel() {
            return Err(quant_error(
                &self.layer,
                format!(
                    "element range {elements:?} is outside the tensor's {} elements",
                    self.numel()
                ),
            ));
        }
        Ok(())
    }

    /// The bytes that hold logical elements `elements`, rounded out to whole blocks: read the
    /// codes and block-scale ranges it names and [`QuantLayout::decode`] them.
    ///
    /// Block scales come in whole bands of [`BAND_ROWS`] rows, the unit in which the swizzled
    /// layout keeps a row's scales together.
    ///
    /// # Errors
    /// [`Error::Quantized`] when the range is reversed or ends past the tensor.
    pub fn read_span(&self, elements: Range<u64>) -> Result<Span> {
        self.check_range(&elements)?;
        if let Format::Ggml(t) = self.format {
            return Ok(ggml_shapes::span(t, &elements));
        }
        if !self.format.has_block_scales() || elements.is_empty() {
            return Ok(Span {
                codes: elements.clone(),
                elements,
                block_scales: 0..0,
            });
        }
        let (cols, block) = (self.cols as u64, self.format.block_len() as u64);
        let (first_row, first_block) = (elements.start / cols, elements.start % cols / block);
        let last = elements.end - 1;
        let (last_row, last_block) = (last / cols, last % cols / block);
        let band = BAND_ROWS as u64;
        Ok(Span {
            elements: first_row * cols + first_block * block
                ..last_row * cols + ((last_block + 1) * block).min(cols),
            codes: first_row * self.row_bytes() + first_block * self.block_bytes()
                ..last_row * self.row_bytes() + (last_block + 1) * self.block_bytes(),
            block_scales: first_row / band * self.band_bytes()
                ..(last_row / band + 1) * self.band_bytes(),
        })
    }

    /// Elements a write span must start and end on: 1 for per-tensor formats, a whole logical
    /// row for block formats with block scales, a block for ggml formats.
    pub fn write_unit(&self) -> u64 {
        match self.format {
            Format::Ggml(t) => t.block_len() as u64,
            f if f.has_block_scales() => self.cols as u64,
            _ => 1,
        }
    }

    /// The bytes [`QuantLayout::encode`] produces for logical elements `elements`, which must
    /// start and end on [`QuantLayout::write_unit`].
    ///
    /// For block formats the span that ends at the last row also covers the padding rows, and
    /// its block-scale range runs to the end of the member. Block scales come in whole bands of
    /// [`BAND_ROWS`] rows: spans of whole bands (the last one taking the rest) write every byte;
    /// a span that starts or ends inside a band writes only its own rows' scale bytes of that
    /// band, so keep that band's buffer until its other rows are encoded.
    ///
    /// # Errors
    /// [`Error::Quantized`] when the range is outside the tensor or not on whole rows.
    pub fn write_span(&self, elements: Range<u64>) -> Result<Span> {
        self.check_range(&elements)?;
        if let Format::Ggml(t) = self.format {
            ggml_shapes::check_write(&self.layer, t, &elements)?;
            return Ok(ggml_shapes::span(t, &elements));
        }
        if !self.format.has_block_scales() || elements.is_empty() {
            return self.read_span(elements);
        }
        let cols = self.cols as u64;
        if !elements.start.is_multiple_of(cols) || !elements.end.is_multiple_of(cols) {
            return Err(quant_error(
                &self.layer,
                format!(
                    "{} encodes whole rows of {cols} values; element range {elements:?} is not \
                     on row boundaries",
                    self.format
                ),
            ));
        }
        let (first_row, end_row) = (elements.start / cols, elements.end / cols);
        let stored_end = if end_row == self.rows as u64 {
            self.stored_rows as u64
        } else {
            end_row
        };
        let band = BAND_ROWS as u64;
        Ok(Span {
            elements,
            codes: first_row * self.row_bytes()..stored_end * self.row_bytes(),
            block_scales: first_row / band * self.band_bytes()
                ..stored_end.div_ceil(band) * self.band_bytes(),
        })
    }
}
