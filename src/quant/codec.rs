//! Decoding and encoding spans: argument checks, then the format's block loops
//! ([`super::tensorwise`], [`super::blocks`]).

use crate::error::Result;

use super::blocks;
use super::format::{Format, Precision};
use super::ggml;
use super::layout::{quant_error, QuantLayout, Span};
use super::scales::Scales;
use super::tensorwise;

fn len(range: &std::ops::Range<u64>) -> usize {
    (range.end - range.start) as usize
}

impl QuantLayout {
    fn check_buffers(
        &self,
        span: &Span,
        codes: usize,
        block_scales: usize,
        values: usize,
    ) -> Result<()> {
        if codes != len(&span.codes)
            || block_scales != len(&span.block_scales)
            || values != len(&span.elements)
        {
            return Err(quant_error(
                &self.layer,
                format!(
                    "buffers of {codes} code bytes, {block_scales} block-scale bytes and {values} \
                     values do not fit span {span:?}"
                ),
            ));
        }
        Ok(())
    }

    fn check_scales(&self, scales: &Scales) -> Result<()> {
        let missing = match self.format {
            Format::Mxfp8 | Format::Ggml(_) => None,
            Format::Int8Tensorwise if self.row_scales => match &scales.rows {
                Some(rows) if rows.len() == self.rows => None,
                _ => Some(format!("{} row scales", self.rows)),
            },
            _ => scales
                .tensor
                .is_none()
                .then(|| "a tensor scale".to_string()),
        };
        let missing = missing.or_else(|| match &scales.pre_quant {
            Some(f) if self.pre_quant_scale && f.len() == self.cols => None,
            None if !self.pre_quant_scale => None,
            _ => Some(format!("{} pre-quant factors", self.cols)),
        });
        match missing {
            Some(what) => Err(quant_error(
                &self.layer,
                format!("{} needs {what} to decode or encode it", self.format),
            )),
            None => Ok(()),
        }
    }

    /// Decodes the span `span` (from [`QuantLayout::read_span`]) into `out`, one f32 per logical
    /// element of `span.elements`: the values comfy-kitchen's eager dequantize returns for output
    /// dtype `precision` (see [`Precision`]), times the column's `pre_quant_scale` where the layer
    /// has one (ComfyUI multiplies the input by it, so the weight it applies is the product).
    ///
    /// `codes` are the bytes of `span.codes` of the `weight` member, `block_scales` those of
    /// `span.block_scales` of the block-scale member (empty for per-tensor formats).
    ///
    /// ggml formats decode to gguf-py's f32 values, then round them to `precision` (what a cast
    /// of gguf-py's output to bf16 or f16 gives); they need no scales ([`Scales::none`]).
    ///
    /// # Errors
    /// [`crate::Error::Quantized`] when the buffers do not fit the span, the span is not this
    /// layout's, `scales` lack what the format needs, or a block scale is NaN or negative.
    pub fn decode(
        &self,
        scales: &Scales,
        precision: Precision,
        span: &Span,
        codes: &[u8],
        block_scales: &[u8],
        out: &mut [f32],
    ) -> Result<()> {
        self.check_buffers(span, codes.len(), block_scales.len(), out.len())?;
        if *span != self.read_span(span.elements.clone())? {
            return Err(quant_error(
                &self.layer,
                format!("span {span:?} is not a read span of this tensor"),
            ));
        }
        self.check_scales(scales)?;
        match self.format {
            Format::ScaledFp8(fp8) | Format::Float8(fp8) => {
                tensorwise::decode_fp8(fp8, scales.tensor.unwrap_or(1.0), precision, codes, out)
            }
            Format::Int8Tensorwise => match &scales.rows {
                Some(rows) if self.row_scales => {
                    let first = span.elements.start;
                    tensorwise::decode_int8_rows(rows, self.cols, first, precision, codes, out)
                }
                _ => tensorwise::decode_int8(scales.tensor.unwrap_or(1.0), precision, codes, out),
            },
            Format::Mxfp8 | Format::Nvfp4 => {
                return blocks::decode(self, scales, precision, span, codes, block_scales, out)
            }
            Format::Ggml(t) => {
                ggml::decode(t, codes, out);
                if precision != Precision::F32 {
                    for o in out.iter_mut() {
                        *o = precision.round(*o);
                    }
                }
            }
        }
        Ok(())
    }

    /// Encodes the values of the span `span` (from [`QuantLayout::write_span`]) into `codes` (the
    /// bytes of `span.codes`) and `block_scales` (the bytes of `span.block_scales`), bit for bit
    /// as comfy-kitchen's eager quantizers do with these scales.
    ///
    /// `values` are the logical elements of `span.elements` as f32, exactly as the source holds
    /// them; `precision` is the source's dtype ([`Precision::of_source`]), in which kitchen does
    /// the fp8 and int8 arithmetic. Padding (columns to whole blocks, and rows when the span ends
    /// at the last row) is encoded as zeros, as kitchen pads.
    ///
    /// ggml formats encode as ggml's reference quantizers do from f32 values (`precision` plays
    /// no part: an f16 or bf16 source is exact in f32) and need no scales ([`Scales::none`]).
    ///
    /// # Errors
    /// [`crate::Error::Quantized`] when the buffers do not fit the span, the span is not this
    /// layout's, `scales` lack what the format needs, or the layer has a `pre_quant_scale`
    /// (requantizing smoothed weights is not supported: write them unquantized).
    pub fn encode(
        &self,
        scales: &Scales,
        precision: Precision,
        span: &Span,
        values: &[f32],
        codes: &mut [u8],
        block_scales: &mut [u8],
    ) -> Result<()> {
        self.check_buffers(span, codes.len(), block_scales.len(), values.len())?;
        if *span != self.write_span(span.elements.clone())? {
            return Err(quant_error(
                &self.layer,
                format!("span {span:?} is not a write span of this tensor"),
            ));
        }
        if self.pre_quant_scale {
            return Err(quant_error(
                &self.layer,
                "weights smoothed by a pre_quant_scale (ModelOpt AWQ) cannot be requantized: \
                 write this layer unquantized",
            ));
        }
        self.check_scales(scales)?;
        let tensor = scales.tensor.unwrap_or(1.0);
        match self.format {
            Format::ScaledFp8(fp8) | Format::Float8(fp8) => {
                tensorwise::encode_fp8(fp8, tensor, precision, values, codes)
            }
            Format::Int8Tensorwise => match &scales.rows {
                Some(rows) if self.row_scales => {
                    let first = span.elements.start;
                    tensorwise::encode_int8_rows(rows, self.cols, first, precision, values, codes)
                }
                _ => tensorwise::encode_int8(tensor, precision, values, codes),
            },
            Format::Mxfp8 | Format::Nvfp4 => {
                return blocks::encode(self, scales, span, values, Some(codes), block_scales)
            }
            Format::Ggml(t) => ggml::encode(t, values, codes),
        }
        Ok(())
    }

    /// The block scales [`QuantLayout::encode`] writes for the span `span`, without the codes:
    /// what a writer needs to produce the block-scale member apart from the codes (each block's
    /// scale is a function of its maximum and the tensor scale alone). Per-tensor formats have
    /// no block scales (`block_scales` must be empty).
    ///
    /// # Errors
    /// As [`QuantLayout::encode`] (the codes' buffer is not asked for).
    pub fn encode_block_scales(
        &self,
        scales: &Scales,
        span: &Span,
        values: &[f32],
        block_scales: &mut [u8],
    ) -> Result<()> {
        let codes = len(&span.codes);
        self.check_buffers(span, codes, block_scales.len(), values.len())?;
        if *span != self.write_span(span.elements.clone())? {
            return Err(quant_error(
                &self.layer,
                format!("span {span:?} is not a write span of this tensor"),
            ));
        }
        self.check_scales(scales)?;
        if !self.format.has_block_scales() {
            return Ok(());
        }
        blocks::encode(self, scales, span, values, None, block_scales)
    }

    /// Checks all of a tensor's block scales (the whole block-scale member) before anything is
    /// written: no NaN, and no negative nvfp4 scale. Per-tensor formats have none (always Ok).
    ///
    /// # Errors
    /// [`crate::Error::Quantized`] naming the first bad byte.
    pub fn check_block_scales(&self, bytes: &[u8]) -> Result<()> {
        if !self.format.has_block_scales() {
            return Ok(());
        }
        blocks::check_block_scales(self, bytes)
    }
}
