//! Where a ggml tensor's values lie in its blocks: the checks and spans `QuantLayout` asks for
//! when its format is [`super::super::Format::Ggml`]. Blocks run along rows of whole blocks (the
//! last dimension), so logical element `e` is in block `e / block_len`, whatever the shape.

use std::ops::Range;

use crate::error::Result;

use super::super::layout::{quant_error, Span};
use super::GgmlType;

/// Refuses a shape whose rows (its last dimension) are not whole blocks of `t`.
pub(crate) fn check_rows(layer: &str, t: GgmlType, shape: &[usize]) -> Result<()> {
    let row = shape.last().copied().unwrap_or(1);
    if row.is_multiple_of(t.block_len()) {
        return Ok(());
    }
    Err(quant_error(
        layer,
        format!(
            "ggml's {t} stores rows of whole blocks of {} values, and this tensor's rows (its \
             last dimension, of shape {shape:?}) hold {row}: reshape it to rows of a multiple of \
             {} or store it as F16",
            t.block_len(),
            t.block_len()
        ),
    ))
}

/// The shape of the codes member: gguf-py's byte shape for quantized types (the last dimension
/// in bytes of whole blocks), the shape itself for F32, F16 and BF16.
pub(crate) fn codes_shape(t: GgmlType, shape: &[usize]) -> Vec<usize> {
    let mut out = shape.to_vec();
    if t.is_quantized() {
        if let Some(last) = out.last_mut() {
            *last = *last / t.block_len() * t.block_bytes();
        }
    }
    out
}

/// The logical shape of stored codes of `codes` shape (the inverse of [`codes_shape`]).
pub(crate) fn values_shape(layer: &str, t: GgmlType, codes: &[usize]) -> Result<Vec<usize>> {
    if !t.is_quantized() {
        return Ok(codes.to_vec());
    }
    let bytes = codes.last().copied().unwrap_or(0);
    if bytes == 0 || !bytes.is_multiple_of(t.block_bytes()) {
        return Err(quant_error(
            layer,
            format!(
                "ggml {t} codes `{layer}.weight` of shape {codes:?} hold rows of {bytes} bytes, \
                 which is not a whole, non-zero number of {}-byte blocks",
                t.block_bytes()
            ),
        ));
    }
    let mut shape = codes.to_vec();
    if let Some(last) = shape.last_mut() {
        *last = bytes / t.block_bytes() * t.block_len();
    }
    Ok(shape)
}

/// The blocks that hold `elements` (already checked to lie in the tensor), rounded out to whole
/// blocks; an empty range gives an empty span.
pub(crate) fn span(t: GgmlType, elements: &Range<u64>) -> Span {
    let (block, bytes) = (t.block_len() as u64, t.block_bytes() as u64);
    let first = elements.start / block;
    let end = if elements.is_empty() {
        first
    } else {
        elements.end.div_ceil(block)
    };
    Span {
        elements: first * block..end * block,
        codes: first * bytes..end * bytes,
        block_scales: 0..0,
    }
}

/// Refuses a write range that does not start and end on blocks.
pub(crate) fn check_write(layer: &str, t: GgmlType, elements: &Range<u64>) -> Result<()> {
    let unit = t.block_len() as u64;
    if elements.start.is_multiple_of(unit) && elements.end.is_multiple_of(unit) {
        return Ok(());
    }
    Err(quant_error(
        layer,
        format!(
            "ggml's {t} encodes whole blocks of {unit} values; element range {elements:?} is not \
             on block boundaries"
        ),
    ))
}
